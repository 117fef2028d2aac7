//! Adapters of push-mode dispatch: an HTTP client for the CI platforms'
//! APIs, and where the credentials they need come from — environment
//! variables in `tms serve`, Secrets Manager on AWS.

use crate::dispatch::{HttpRequest, HttpResponse, Method};
use crate::domain::SecretName;
use crate::error::{Error, Result};
use crate::ports::{HttpClient, Secrets};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a platform may take to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// HTTPS to the platforms (rustls, webpki roots), with a timeout.
#[derive(Clone)]
pub struct ReqwestHttp(reqwest::Client);

impl ReqwestHttp {
    pub fn new() -> Result<Self> {
        reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map(ReqwestHttp)
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))
    }
}

impl HttpClient for ReqwestHttp {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse> {
        let mut builder = match request.method {
            Method::Get => self.0.get(&request.url),
            Method::Post => self.0.post(&request.url),
        };
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await.map_err(Error::storage)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        // Only the start of a body is ever looked at (a crumb, an error message).
        let body = response.text().await.unwrap_or_default();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// Secret name `N` is the environment variable `TMS_SECRET_N` of `tms
/// serve`'s process, and nothing else: the admin token, cloud credentials
/// and every other variable stay out of reach of whoever names a secret.
#[derive(Clone, Default)]
pub struct EnvSecrets;

impl EnvSecrets {
    /// The variable a secret name resolves to.
    pub fn variable(name: &SecretName) -> String {
        format!("{}{}", crate::domain::SECRET_ENV_PREFIX, name.as_str())
    }
}

impl Secrets for EnvSecrets {
    async fn secret(&self, name: &SecretName) -> Result<Option<String>> {
        Ok(std::env::var(Self::variable(name))
            .ok()
            .filter(|v| !v.is_empty()))
    }
}

/// How long a secret read from Secrets Manager is reused by a warm function.
const SECRET_CACHE: Duration = Duration::from_secs(300);

/// Secrets Manager: secret name `N` is the secret `<prefix>N`
/// (`tms/<stage>/dispatch/N`; the template grants read on that prefix only).
/// Values are cached for a few minutes so a burst of dispatches is one read.
#[derive(Clone)]
pub struct SecretsManagerSecrets {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
    cache: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl SecretsManagerSecrets {
    pub fn new(client: aws_sdk_secretsmanager::Client, prefix: impl Into<String>) -> Self {
        SecretsManagerSecrets {
            client,
            prefix: prefix.into(),
            cache: Arc::default(),
        }
    }

    /// The secret prefix a stage's dispatch credentials live under.
    pub fn stage_prefix(stage: &str) -> String {
        format!("tms/{stage}/dispatch/")
    }
}

impl Secrets for SecretsManagerSecrets {
    async fn secret(&self, name: &SecretName) -> Result<Option<String>> {
        let id = format!("{}{}", self.prefix, name);
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((value, at)) = cache.get(&id) {
                if at.elapsed() < SECRET_CACHE {
                    return Ok(Some(value.clone()));
                }
            }
        }
        let value = match self.client.get_secret_value().secret_id(&id).send().await {
            Ok(out) => out.secret_string,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                None
            }
            Err(e) => return Err(Error::storage(e)),
        };
        if let Some(v) = &value {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, (v.clone(), Instant::now()));
        }
        Ok(value)
    }
}
