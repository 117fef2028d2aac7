//! The API client the CI-side commands share: the server's URL and a bearer
//! token (flags or `TMS_URL` / `TMS_TOKEN`), JSON in and out, and errors a
//! person can act on in one line.

use serde_json::Value;

/// Where the server mounts its API (`tms::http::BASE_PATH`; the client
/// builds without the server, and a test holds the two equal).
pub const API_BASE_PATH: &str = "/api/enhanced-orchestration";

/// Where the TMS API is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The TMS server (`tms serve`, or the deployed API's base URL).
    #[arg(long, env = "TMS_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An API token (admin or ci scope).
    #[arg(long, env = "TMS_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the TMS server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the server refused the token (401): check --token or TMS_TOKEN")]
    Unauthorized,
    #[error("{status} {code}: {detail}")]
    Problem {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("unexpected answer from the server ({status}): {body}")]
    Unexpected { status: u16, body: String },
}

impl ClientError {
    /// Worth asking again in a while: the server did not answer, was
    /// restarting or busy (5xx, 429), rather than refusing the call.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Problem { status, .. } | ClientError::Unexpected { status, .. } => {
                *status == 429 || *status >= 500
            }
            ClientError::Unauthorized => false,
        }
    }
}

/// A connection to one TMS API.
pub struct Client {
    http: reqwest::Client,
    api: String,
    token: String,
}

impl Client {
    pub fn new(args: &ServerArgs) -> Client {
        let base = args.url.trim_end_matches('/');
        // Accept the server's root or the API's base path alike.
        let api = if base.ends_with(API_BASE_PATH) {
            base.to_owned()
        } else {
            format!("{base}{API_BASE_PATH}")
        };
        Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                // Below `tms serve`'s idle cut-off (15 s by default), so a
                // pooled connection is dropped here before the server
                // closes it under a request.
                .pool_idle_timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            api,
            token: args.token.clone(),
        }
    }

    /// POSTs `body` to an API path (below the base path) and returns the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.post_raw(path, "application/json", body.to_string())
            .await
    }

    /// POSTs a body of any content type and returns the JSON answer.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> Result<Value, ClientError> {
        let request = self
            .http
            .post(format!("{}{path}", self.api))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let text = self.send(request).await?;
        self.json(text)
    }

    /// GETs an API path and returns the JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let text = self.get_text(path).await?;
        self.json(text)
    }

    /// GETs an API path and returns the body as text (a JUnit report).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        self.send(self.http.get(format!("{}{path}", self.api)))
            .await
    }

    fn json(&self, text: String) -> Result<Value, ClientError> {
        serde_json::from_str(&text).map_err(|_| ClientError::Unexpected {
            status: 200,
            body: text.chars().take(200).collect(),
        })
    }

    /// Sends with the token; a 2xx body comes back as text, anything else
    /// as a one-line error.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<String, ClientError> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|e| {
            ClientError::Unreachable {
                url: self.api.clone(),
                reason: root_cause(&e),
            }
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let json: Option<Value> = serde_json::from_str(&text).ok();
        match (status, json) {
            (401, _) => Err(ClientError::Unauthorized),
            (_, Some(p)) if p.get("code").is_some() => Err(ClientError::Problem {
                status,
                code: p["code"].as_str().unwrap_or_default().to_owned(),
                detail: p["detail"]
                    .as_str()
                    .or(p["title"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            }),
            _ => Err(ClientError::Unexpected {
                status,
                body: text.chars().take(200).collect(),
            }),
        }
    }
}

/// The innermost cause of a request failure ("connection refused"), which
/// says more than reqwest's outer "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A path segment with everything but unreserved characters percent-encoded
/// (a suite named `web/e2e` stays one segment).
pub fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
