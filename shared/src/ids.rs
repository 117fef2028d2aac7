//! Identifier newtypes. ULIDs sort by creation time, which gives stable
//! cursor pagination and readable DynamoDB keys.
//!
//! An id is shared, not copied: records carry the ids of their execution,
//! runner and lease, and the embedded store's mirror hands out copies of
//! records on every read, so a copy of an id is a reference count rather
//! than an allocation.

use crate::error::{Entity, Error};
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $entity:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                $name(format!(concat!($prefix, "{}"), ulid::Ulid::new()).into())
            }

            /// Accepts an id from the outside world; anything that could not
            /// have been issued here is simply not found, so ids are always safe
            /// inside keys and paths.
            pub fn parse(raw: &str) -> crate::Result<Self> {
                let ok = raw.len() <= 64
                    && raw.len() > $prefix.len()
                    && raw.starts_with($prefix)
                    && raw.bytes().all(|b| b.is_ascii_alphanumeric());
                if ok {
                    Ok($name(raw.into()))
                } else {
                    Err(Error::not_found($entity, raw))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A registered runner.
    RunnerId, "run", Entity::Runner
);
id_type!(
    /// A queued execution.
    ExecutionId, "exe", Entity::Execution
);
id_type!(
    /// A load-balancing rule.
    RuleId, "rul", Entity::Rule
);
id_type!(
    /// An alert rule.
    AlertRuleId, "alr", Entity::AlertRule
);
id_type!(
    /// An API token (the part of the token that is not secret).
    TokenId, "tok", Entity::Token
);
id_type!(
    /// One assignment of a shard to a runner; reports must carry the current one.
    LeaseId, "lse", Entity::Shard
);
