//! `tms serve`'s limits against abusive or runaway clients: failed
//! authentications per client address and requests per token (token
//! buckets, 429 with `Retry-After`), and requests and request-body bytes in
//! flight (503 with `Retry-After`, refused before the body is read). On AWS,
//! API Gateway's throttling and Lambda's concurrency do this job, so the
//! guard is an extension the local server adds to the router: without it
//! nothing is limited here.

use crate::error::{Error, Result};
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

/// A sustained rate with a burst allowance; zero turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub const OFF: Rate = Rate {
        per_second: 0.0,
        burst: 0.0,
    };

    /// `n` a minute, all of them at once if need be.
    pub fn per_minute(n: u32) -> Rate {
        Rate {
            per_second: f64::from(n) / 60.0,
            burst: f64::from(n),
        }
    }

    /// `n` a second, with twice that as a burst.
    pub fn per_second(n: u32) -> Rate {
        Rate {
            per_second: f64::from(n),
            burst: 2.0 * f64::from(n),
        }
    }

    fn is_off(&self) -> bool {
        self.per_second <= 0.0 || self.burst < 1.0
    }
}

/// What `tms serve` allows; the defaults are generous for CI fleets (a
/// runner polls a few times a second, a pipeline queues a few times a
/// minute) and small for guessing tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Failed authentications per client address.
    pub failed_auth_per_client: Rate,
    /// Requests per token that authenticated.
    pub per_token: Rate,
    /// Requests being handled at once; more are refused, not queued.
    pub max_in_flight: usize,
    /// Request-body bytes being read or handled at once, by their
    /// declared length (the body limit for a body of unknown length).
    pub body_bytes_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            failed_auth_per_client: Rate::per_minute(600),
            per_token: Rate::per_second(1000),
            max_in_flight: 512,
            body_bytes_in_flight: 32 * 1024 * 1024,
        }
    }
}

/// Entries a bucket map keeps before it forgets the full ones.
const MAX_KEYS: usize = 100_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key.
struct Buckets<K> {
    rate: Rate,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq> Buckets<K> {
    fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` (0 only checks) from `key`'s bucket, or says how many
    /// whole seconds until it could.
    fn take(&self, key: K, cost: f64, now: Instant) -> std::result::Result<(), u64> {
        if self.rate.is_off() {
            return Ok(());
        }
        let rate = self.rate;
        // Buckets are independent; a map poisoned by a panic is still valid.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second < rate.burst
            });
            // Every bucket still in use (a flood from that many keys):
            // start over rather than scan this map again on each call.
            if map.len() >= MAX_KEYS / 2 {
                map.clear();
            }
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * rate.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(rate.burst);
        bucket.at = now;
        let need = cost.max(1.0);
        if bucket.tokens >= need {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(((need - bucket.tokens) / rate.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The limits' state, shared by every connection of one server.
pub struct Guard {
    limits: Limits,
    failures: Buckets<IpAddr>,
    tokens: Buckets<String>,
    in_flight: Arc<Semaphore>,
    body_bytes: Arc<Semaphore>,
}

impl Guard {
    pub fn new(limits: Limits) -> Arc<Guard> {
        Arc::new(Guard {
            limits,
            failures: Buckets::new(limits.failed_auth_per_client),
            tokens: Buckets::new(limits.per_token),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            body_bytes: Arc::new(Semaphore::new(
                limits
                    .body_bytes_in_flight
                    .clamp(super::BODY_LIMIT, u32::MAX as usize),
            )),
        })
    }

    /// Before a token is checked: a client that used up its failed
    /// authentications waits, whatever it presents now (else a right guess
    /// would stand out from the refusals).
    pub(super) fn before_auth(&self, client: Option<IpAddr>) -> Result<()> {
        let Some(client) = client else { return Ok(()) };
        self.failures
            .take(client, 0.0, Instant::now())
            .map_err(|secs| rate_limited("failed authentications from this address", secs))
    }

    /// After a token was refused.
    pub(super) fn failed_auth(&self, client: Option<IpAddr>) {
        if let Some(client) = client {
            let _ = self.failures.take(client, 1.0, Instant::now());
        }
    }

    /// After a token was accepted: one request of its allowance. `token`
    /// is the token's hash, never the token.
    pub(super) fn authenticated(&self, token: String) -> Result<()> {
        self.tokens
            .take(token, 1.0, Instant::now())
            .map_err(|secs| rate_limited("requests with this token", secs))
    }
}

fn rate_limited(what: &'static str, retry_after_secs: u64) -> Error {
    Error::RateLimited {
        what,
        retry_after_secs,
    }
}

/// Middleware: admits a request only while the server has a request slot
/// and room for its body, and holds both until the response is made. A
/// refused request's body is never read.
pub async fn admit(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let Ok(slot) = guard.in_flight.clone().try_acquire_owned() else {
        return busy("requests in flight");
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let has_body = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    );
    let bytes = match declared {
        // Over the limit: let the body limit refuse it (413) unread.
        Some(n) if n > super::BODY_LIMIT => 0,
        Some(n) => n,
        None if has_body => super::BODY_LIMIT,
        None => 0,
    };
    let room = match u32::try_from(bytes) {
        Ok(0) => None,
        Ok(n) => match guard.body_bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => Some(permit),
            Err(_) => return busy("request bytes in flight"),
        },
        Err(_) => return busy("request bytes in flight"),
    };
    let response = next.run(request).await;
    drop((slot, room));
    response
}

fn busy(what: &'static str) -> Response {
    Error::Overloaded {
        what,
        retry_after_secs: 1,
    }
    .into_response()
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let buckets = Buckets::new(Rate {
            per_second: 2.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(buckets.take("a", 1.0, t0), Ok(()));
        }
        assert_eq!(buckets.take("a", 1.0, t0), Err(1));
        // Another key has its own allowance.
        assert_eq!(buckets.take("b", 1.0, t0), Ok(()));
        // Half a second refills one.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(buckets.take("a", 1.0, later), Ok(()));
        assert!(buckets.take("a", 1.0, later).is_err());
        // Never more than the burst, however long it waited.
        let much_later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(buckets.take("a", 1.0, much_later), Ok(()));
        }
        assert!(buckets.take("a", 1.0, much_later).is_err());
    }

    #[test]
    fn checking_costs_nothing_and_an_off_rate_never_refuses() {
        let buckets = Buckets::new(Rate::per_minute(1));
        let t0 = Instant::now();
        assert_eq!(buckets.take(1, 0.0, t0), Ok(()));
        assert_eq!(buckets.take(1, 0.0, t0), Ok(()));
        assert_eq!(buckets.take(1, 1.0, t0), Ok(()));
        assert_eq!(buckets.take(1, 0.0, t0), Err(60));
        let off = Buckets::new(Rate::OFF);
        for _ in 0..1000 {
            assert_eq!(off.take(1, 1.0, t0), Ok(()));
        }
    }
}
