//! Authentication of bearer tokens and issuing API tokens.

use super::Orchestrator;
use crate::auth::{self, ApiToken, Principal, Scope, TokenOwner};
use crate::domain::RunnerStatus;
use crate::error::{Error, Result};
use crate::ids::TokenId;
use crate::ports::{Ports, Store};
use crate::time::{Clock, Timestamp};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use utoipa::ToSchema;

/// Body of `POST /tokens`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    pub scope: Scope,
}

impl<P: Ports> Orchestrator<P> {
    /// Resolves a bearer token to who is calling; anything unknown, revoked
    /// or malformed is `Unauthorized`, with no hint which. A token verified in
    /// the last few seconds is answered from memory.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let presented = auth::hash(token);
        if auth::hashes_match(&presented, &self.admin_token_hash) {
            return Ok(Principal::Admin);
        }
        let now = self.clock.now();
        if let Some(principal) = self.tokens.get(&presented, now) {
            return Ok(principal);
        }
        let principal = self
            .resolve(token, &presented)
            .await?
            .ok_or(Error::Unauthorized)?;
        self.tokens.put(presented, principal.clone(), now);
        Ok(principal)
    }

    async fn resolve(&self, token: &str, presented: &str) -> Result<Option<Principal>> {
        let matches = |stored: &str| auth::hashes_match(presented, stored);
        Ok(match auth::owner_of(token) {
            TokenOwner::Api(id) => self
                .store
                .get_token(&id)
                .await?
                .filter(|t| matches(&t.hash))
                .map(|t| match t.scope {
                    Scope::Admin => Principal::Admin,
                    Scope::Ci => Principal::Ci,
                }),
            TokenOwner::Runner(id) => self
                .store
                .get_runner(&id)
                .await?
                .filter(|r| {
                    r.runner.status != RunnerStatus::Deregistered && matches(&r.runner.token_hash)
                })
                .map(|_| Principal::Runner(id)),
            TokenOwner::Webhook(id) => self
                .store
                .get_execution(&id)
                .await?
                .filter(|e| e.webhook_token_hashes.iter().any(|h| matches(h)))
                .map(|_| Principal::Webhook(id)),
            // A shard's dispatch record goes with its lease (a new lease
            // clears it), so a job token matches only while its lease is
            // current; the principal keeps that lease for the calls to check.
            TokenOwner::Shard(id, index) => {
                self.store
                    .load_shard(&id, index)
                    .await?
                    .and_then(|(_, shard)| {
                        let dispatched = shard
                            .dispatch
                            .as_ref()
                            .is_some_and(|d| matches(&d.token_hash));
                        let lease = shard.lease_id.filter(|_| dispatched)?;
                        Some(Principal::Job {
                            execution: id,
                            shard: index,
                            lease,
                        })
                    })
            }
            TokenOwner::Other => None,
        })
    }

    /// Creates an API token; the token itself is returned once and only its hash is kept.
    pub async fn create_token(&self, new: NewToken) -> Result<(ApiToken, String)> {
        let name = new.name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(Error::validation("name", "must be 1 to 128 characters"));
        }
        let id = TokenId::generate();
        let issued = auth::issue(Some(id.as_str()));
        let token = ApiToken {
            id,
            name: name.to_owned(),
            scope: new.scope,
            hash: issued.hash,
            created_at: self.clock.now(),
        };
        self.store.put_token(&token).await?;
        Ok((token, issued.token))
    }
}

/// How long a verified token is trusted without asking the store. A runner
/// deregistered through this process is forgotten at once; on another
/// instance (a Lambda) its token keeps working for at most this long.
const TOKEN_TTL_MS: i64 = 5_000;
/// Entries kept before the cache starts over.
const TOKEN_CACHE_MAX: usize = 10_000;

/// Recently verified tokens, keyed by their hash (never the token itself),
/// so an agent polling several times a second costs no store read to
/// authenticate.
#[derive(Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<String, (Principal, Timestamp)>>,
}

impl TokenCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Principal, Timestamp)>> {
        // Entries are independent; a map poisoned by a panic is still valid.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, hash: &str, now: Timestamp) -> Option<Principal> {
        let entries = self.lock();
        let (principal, at) = entries.get(hash)?;
        (now.since(*at) < TOKEN_TTL_MS).then(|| principal.clone())
    }

    fn put(&self, hash: String, principal: Principal, now: Timestamp) {
        let mut entries = self.lock();
        if entries.len() >= TOKEN_CACHE_MAX {
            entries.clear();
        }
        entries.insert(hash, (principal, now));
    }

    /// Drops every entry of `principal`, whose token was just revoked.
    pub(crate) fn forget(&self, principal: &Principal) {
        self.lock().retain(|_, (p, _)| p != principal);
    }
}
