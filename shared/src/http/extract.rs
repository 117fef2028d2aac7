//! Request extractors whose failures are domain errors (so they render as
//! problem+json like everything else).

use super::guard::Guard;
use super::AppState;
use crate::auth::Principal;
use crate::error::Error;
use crate::ports::Ports;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The authenticated caller.
pub struct Caller(pub Principal);

impl<P: Ports> FromRequestParts<AppState<P>> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState<P>) -> Result<Self, Error> {
        // `tms serve` adds its guard and each request's peer; a Lambda
        // has neither (API Gateway throttles there).
        let guard = parts.extensions.get::<Arc<Guard>>().cloned();
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(guard) = &guard {
            guard.before_auth(client)?;
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256);
        let outcome = match token {
            Some(token) => state.authenticate(token).await,
            None => Err(Error::Unauthorized),
        };
        if let Some(guard) = &guard {
            match (&outcome, token) {
                (Ok(_), Some(token)) => guard.authenticated(crate::auth::hash(token))?,
                (Err(Error::Unauthorized), _) => guard.failed_auth(client),
                _ => {}
            }
        }
        outcome.map(Caller)
    }
}

/// Query parameters, strictly parsed (unknown parameters are errors).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection| Error::validation("query", rejection.body_text()))
    }
}

/// A JSON body, strictly parsed (unknown fields are errors).
pub struct ApiJson<T>(pub T);

/// The raw body, for handlers that also need its bytes (idempotency hashing).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge { limit: BODY_LIMIT }
                } else {
                    Error::InvalidJson(rejection.body_text())
                }
            })
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a body; an empty body reads as `{}` so bodiless POSTs work.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut parser).map_err(|e| {
        // A bounded field over its bound is well-formed JSON with a value
        // out of bounds: a validation failure on that field.
        // Only the start of the message: serde quotes a caller's value in
        // its own errors ("invalid type: string \"…\""), and that value
        // could spell the marker.
        let message = e.inner().to_string();
        match message.strip_prefix(crate::domain::bounded::OVER_BOUND) {
            Some(rest) => {
                let bound = rest.split(" at line ").next().unwrap_or_default();
                Error::validation(e.path().to_string(), format!("must be at most {bound}"))
            }
            None => Error::InvalidJson(e.to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Bounded;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: Bounded<4>,
        count: Option<u32>,
    }

    #[test]
    fn a_field_over_its_bound_is_a_validation_failure_naming_the_field() {
        let err = parse_json::<Body>(br#"{"name": "abcde"}"#).unwrap_err();
        assert!(
            matches!(&err, Error::Validation { field, reason }
                if field == "name" && reason == "must be at most 4 bytes"),
            "{err:?}"
        );
    }

    #[test]
    fn a_caller_cannot_pass_a_type_error_off_as_a_bound() {
        let body = br#"{"name": "ok", "count": "longer than its bound: at most 1 bytes"}"#;
        let err = parse_json::<Body>(body).unwrap_err();
        assert!(matches!(err, Error::InvalidJson(_)), "{err:?}");
    }
}
