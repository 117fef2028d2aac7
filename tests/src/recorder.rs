//! A stand-in for a CI platform's API: an HTTP server on 127.0.0.1 and a
//! free port that records every request and answers from a script (then
//! with a default answer), so dispatch tests can check each platform's
//! request exactly as its documentation describes it.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One request as the platform saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// The body's `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
}

/// An answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// How long the platform takes to answer (after recording the request).
    pub delay: std::time::Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: std::time::Duration::ZERO,
        }
    }

    /// The same answer, sent only after `delay`.
    pub fn after(mut self, delay: std::time::Duration) -> Answer {
        self.delay = delay;
        self
    }

    pub fn with_body(mut self, body: &str) -> Answer {
        self.body = body.into();
        self
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    script: VecDeque<Answer>,
    default: Option<Answer>,
}

/// The recording server; stops when dropped.
pub struct Recorder {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Answers `default` to everything not scripted.
    pub async fn start(default: Answer) -> Recorder {
        let state = Arc::new(Mutex::new(State {
            default: Some(default),
            ..State::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move {
                    let (delay, response) = answer(&state, method, uri, headers, body);
                    tokio::time::sleep(delay).await;
                    response
                }
            },
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Recorder { url, state, task }
    }

    /// The next answers, in order, before the default.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(
    state: &Mutex<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (std::time::Duration, Response) {
    let mut state = state.lock().unwrap();
    state.requests.push(Recorded {
        method: method.to_string(),
        uri: uri.to_string(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let a = state
        .script
        .pop_front()
        .or_else(|| state.default.clone())
        .unwrap_or_else(|| Answer::status(500));
    let mut response = (
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        a.body,
    )
        .into_response();
    for (name, value) in a.headers {
        response
            .headers_mut()
            .append(name, value.parse().expect("a header value"));
    }
    (a.delay, response)
}
