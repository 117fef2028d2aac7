//! The one place where domain errors become HTTP responses:
//! `application/problem+json` (RFC 9457) with a stable `code`.

use crate::error::Error;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:tms:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `validation_failed`, `stale_lease`.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Error {
    /// Status, stable code and title of this error.
    pub fn classify(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            // Well-formed but not acceptable: 422, as GitHub's and most
            // CI platforms' APIs answer; 400 is for bodies that do not parse.
            Error::Validation { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Invalid request",
            ),
            Error::InvalidJson(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "Malformed request body",
            ),
            Error::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Request too large",
            ),
            Error::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", "Not found"),
            Error::InvalidTransition { .. } => (
                StatusCode::CONFLICT,
                "invalid_transition",
                "Invalid state change",
            ),
            Error::StaleLease { .. } => (StatusCode::CONFLICT, "stale_lease", "Stale lease"),
            Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict", "Concurrent change"),
            Error::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency-Key reused",
            ),
            Error::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            ),
            Error::Overloaded { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Server busy")
            }
            Error::Storage(_) | Error::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl Error {
    /// Seconds a refused client should wait (`Retry-After`).
    fn retry_after(&self) -> Option<u64> {
        match self {
            Error::RateLimited {
                retry_after_secs, ..
            }
            | Error::Overloaded {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code, title) = self.classify();
        let retry_after = self.retry_after();
        let detail = if status.is_server_error() && retry_after.is_none() {
            // Log the whole cause chain here; never send internals to the client.
            let mut chain = self.to_string();
            let mut source = std::error::Error::source(&self);
            while let Some(s) = source {
                chain.push_str(": ");
                chain.push_str(&s.to_string());
                source = s.source();
            }
            tracing::error!(error = %chain, "request failed");
            "the server could not complete the request".to_owned()
        } else {
            self.to_string()
        };
        let field = match &self {
            Error::Validation { field, .. } => Some(field.clone()),
            _ => None,
        };
        let body = Problem {
            problem_type: format!("urn:tms:problem:{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
            field,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
