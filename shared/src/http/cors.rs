//! Cross-origin access for browser pages of other origins, off unless the
//! operator names the origins (`tms serve --cors-origin`; on AWS the
//! template's `CorsAllowOrigins`, answered by API Gateway).

use crate::error::{Error, Result};
use axum::http::{header, HeaderName, HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Checks one origin as a browser sends it in `Origin`: scheme, host and
/// an optional port, nothing else. A wildcard is refused: it would let any
/// page use a token it got hold of.
pub fn parse_origin(origin: &str) -> Result<String> {
    let bad = |why: &str| Error::validation("cors_origin", format!("{origin:?}: {why}"));
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| bad("an origin starts with https:// or http://"))?;
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    if rest
        .chars()
        .any(|c| matches!(c, '/' | '?' | '#' | '*' | '@') || c.is_whitespace())
    {
        return Err(bad(
            "an origin is scheme://host[:port], without a path or a wildcard",
        ));
    }
    HeaderValue::from_str(origin).map_err(|_| bad("not a valid header value"))?;
    Ok(origin.to_ascii_lowercase())
}

/// The CORS layer for `origins` (already checked), or none when there are
/// none: preflights then get no `Access-Control-Allow-Origin` and browsers
/// keep other origins out.
pub(super) fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([header::RETRY_AFTER, header::LOCATION])
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_a_scheme_host_and_port_only() {
        assert_eq!(
            parse_origin("https://CI.example.com:8443").unwrap(),
            "https://ci.example.com:8443"
        );
        assert!(parse_origin("http://127.0.0.1:3000").is_ok());
        for bad in [
            "*",
            "ci.example.com",
            "https://",
            "https://*.example.com",
            "https://ci.example.com/",
            "https://ci.example.com/path",
            "https://user@ci.example.com",
            "ftp://ci.example.com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
