//! The one domain error. Every layer returns it; the HTTP edge maps it to
//! `application/problem+json` in exactly one place (`http::problem`).

use std::fmt;

/// Which kind of stored thing an error is about; part of stable error details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Runner,
    Execution,
    Shard,
    Rule,
    AlertRule,
    Token,
    Route,
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entity::Runner => "runner",
            Entity::Execution => "execution",
            Entity::Shard => "shard",
            Entity::Rule => "load-balancing rule",
            Entity::AlertRule => "alert rule",
            Entity::Token => "token",
            Entity::Route => "route",
        })
    }
}

/// Everything that can go wrong in TMS, split into what the caller did wrong
/// (4xx) and what went wrong inside (5xx).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    Validation { field: String, reason: String },
    #[error("request body is not acceptable JSON: {0}")]
    InvalidJson(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this token may not {0}")]
    Forbidden(&'static str),
    #[error("{entity} {id} not found")]
    NotFound { entity: Entity, id: String },
    #[error("{entity} cannot go from {from} to {to}")]
    InvalidTransition {
        entity: Entity,
        from: String,
        to: String,
    },
    #[error("lease {presented} is not the current lease of shard {shard}")]
    StaleLease { shard: u32, presented: String },
    #[error("{entity} {id} was changed concurrently; retry")]
    Conflict { entity: Entity, id: String },
    #[error("Idempotency-Key was already used with a different request body")]
    IdempotencyMismatch,
    /// Too many requests from this client or token (`tms serve`'s limits).
    #[error("too many {what}; retry after {retry_after_secs} s")]
    RateLimited {
        what: &'static str,
        retry_after_secs: u64,
    },
    /// The server is at its limit of requests or request bytes in flight.
    #[error("the server is busy ({what}); retry after {retry_after_secs} s")]
    Overloaded {
        what: &'static str,
        retry_after_secs: u64,
    },
    #[error("storage failure: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for a validation failure on one input field.
    pub fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(entity: Entity, id: impl fmt::Display) -> Self {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// A failure of the storage layer underneath (database, AWS SDK, codec).
    pub fn storage(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Storage(Box::new(e))
    }

    pub fn conflict(entity: Entity, id: impl fmt::Display) -> Self {
        Error::Conflict {
            entity,
            id: id.to_string(),
        }
    }

    pub fn transition(entity: Entity, from: impl fmt::Debug, to: impl fmt::Debug) -> Self {
        Error::InvalidTransition {
            entity,
            from: snake(&format!("{from:?}")),
            to: snake(&format!("{to:?}")),
        }
    }

    /// True when the failure came from a lost race and the same work may be tried again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
}

/// `TimedOut` -> `timed_out`, so transition errors use the same words as the API.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
