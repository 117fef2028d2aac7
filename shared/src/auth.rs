//! Bearer tokens. A token names what it belongs to (`tms_<id>_<secret>`), so
//! checking it is one key lookup; only a SHA-256 hash of it is ever stored,
//! and hashes are compared in constant time.

use crate::ids::{ExecutionId, LeaseId, RunnerId, TokenId};
use crate::time::Timestamp;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Everything, including rules, tokens and runner control.
    Admin,
    /// What a CI pipeline needs: queue, watch, cancel and retry executions, register runners.
    Ci,
}

/// A stored API token (its hash, never the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: TokenId,
    pub name: String,
    pub scope: Scope,
    pub hash: String,
    pub created_at: Timestamp,
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Ci,
    Runner(RunnerId),
    /// The execution's webhook token: every shard of that one execution.
    Webhook(ExecutionId),
    /// A dispatched CI job: the one shard it was started for, under the
    /// lease it was dispatched with. Another shard of the same execution,
    /// or its own shard once the lease moved on, is out of its reach.
    Job {
        execution: ExecutionId,
        shard: u32,
        lease: LeaseId,
    },
}

impl Principal {
    /// Admin or CI tokens (what pipelines and people use).
    pub fn is_api(&self) -> bool {
        matches!(self, Principal::Admin | Principal::Ci)
    }
}

/// The owner a token names, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    Api(TokenId),
    Runner(RunnerId),
    Webhook(ExecutionId),
    /// A token handed to a dispatched CI job (`tms_<execution>.<shard>_…`):
    /// valid for that execution's webhook while the shard's lease is the
    /// one it was dispatched with.
    Shard(ExecutionId, u32),
    /// Not in TMS's format: only the configured admin token can match it.
    Other,
}

/// A token just issued: shown once to its owner, stored as `hash`.
pub struct Issued {
    pub token: String,
    pub hash: String,
}

/// Issues a new secret token for the owner id (`run…`, `exe…`, `tok…`) or,
/// with `None`, a bootstrap admin token.
pub fn issue(owner: Option<&str>) -> Issued {
    let mut secret = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut secret);
    let token = match owner {
        Some(id) => format!("tms_{id}_{}", hex::encode(secret)),
        None => format!("tms_admin_{}", hex::encode(secret)),
    };
    let hash = hash(&token);
    Issued { token, hash }
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of two token hashes.
pub fn hashes_match(presented_hash: &str, stored_hash: &str) -> bool {
    presented_hash
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// Reads which owner a token claims to belong to.
pub fn owner_of(token: &str) -> TokenOwner {
    let Some(rest) = token.strip_prefix("tms_") else {
        return TokenOwner::Other;
    };
    let Some((id, _secret)) = rest.split_once('_') else {
        return TokenOwner::Other;
    };
    if let Some((execution, shard)) = id.split_once('.') {
        return match (ExecutionId::parse(execution), shard.parse::<u32>()) {
            (Ok(e), Ok(index)) => TokenOwner::Shard(e, index),
            _ => TokenOwner::Other,
        };
    }
    if let Ok(id) = RunnerId::parse(id) {
        TokenOwner::Runner(id)
    } else if let Ok(id) = ExecutionId::parse(id) {
        TokenOwner::Webhook(id)
    } else if let Ok(id) = TokenId::parse(id) {
        TokenOwner::Api(id)
    } else {
        TokenOwner::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_verifies_against_its_hash_and_names_its_owner() {
        let id = RunnerId::generate();
        let issued = issue(Some(id.as_str()));
        assert!(hashes_match(&hash(&issued.token), &issued.hash));
        assert!(!hashes_match(
            &hash(&format!("{}x", issued.token)),
            &issued.hash
        ));
        assert_eq!(owner_of(&issued.token), TokenOwner::Runner(id));
        assert_eq!(owner_of("hello"), TokenOwner::Other);
        assert_eq!(owner_of(&issue(None).token), TokenOwner::Other);
        let e = ExecutionId::generate();
        let shard = issue(Some(&format!("{e}.3")));
        assert_eq!(owner_of(&shard.token), TokenOwner::Shard(e.clone(), 3));
        assert_eq!(owner_of(&format!("tms_{e}.x_abc")), TokenOwner::Other);
    }
}
