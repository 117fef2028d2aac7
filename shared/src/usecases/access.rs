//! Authentication of bearer tokens and issuing API tokens.

use super::Orchestrator;
use crate::auth::{self, ApiToken, Principal, Scope, TokenOwner};
use crate::domain::RunnerStatus;
use crate::error::{Error, Result};
use crate::ids::TokenId;
use crate::ports::{Ports, Store};
use crate::time::Clock;
use serde::Deserialize;
use utoipa::ToSchema;

/// Body of `POST /tokens`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    pub scope: Scope,
}

impl<P: Ports> Orchestrator<P> {
    /// Resolves a bearer token to who is calling; anything unknown, revoked
    /// or malformed is `Unauthorized`, with no hint which.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        if auth::verify(token, &self.admin_token_hash) {
            return Ok(Principal::Admin);
        }
        let principal = match auth::owner_of(token) {
            TokenOwner::Api(id) => self
                .store
                .get_token(&id)
                .await?
                .filter(|t| auth::verify(token, &t.hash))
                .map(|t| match t.scope {
                    Scope::Admin => Principal::Admin,
                    Scope::Ci => Principal::Ci,
                }),
            TokenOwner::Runner(id) => self
                .store
                .get_runner(&id)
                .await?
                .filter(|r| {
                    r.runner.status != RunnerStatus::Deregistered
                        && auth::verify(token, &r.runner.token_hash)
                })
                .map(|_| Principal::Runner(id)),
            TokenOwner::Webhook(id) => self
                .store
                .get_execution(&id)
                .await?
                .filter(|e| {
                    e.webhook_token_hashes
                        .iter()
                        .any(|h| auth::verify(token, h))
                })
                .map(|_| Principal::Webhook(id)),
            TokenOwner::Other => None,
        };
        principal.ok_or(Error::Unauthorized)
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
