//! Every operation of the OpenAPI document, called by every kind of
//! principal, against a real `tms serve`: no token, a garbage token, an
//! admin and a ci token, the runner the path names and another runner, the
//! execution's webhook token and another execution's, the dispatched job of
//! the shard the path names and the job of another shard of the same
//! execution. Each answer must be what the matrix below (and README's
//! endpoint table) says: allowed (anything but 401, 403 and 429) or
//! refused (401 without a valid token, 403 with one). A route the document
//! has and the matrix does not, or the other way round, fails the test.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use tms_tests::recorder::{Answer, Recorder};
use tms_tests::{client, eventually, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");

/// The kinds of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Nobody,
    Garbage,
    Admin,
    Ci,
    /// The runner `{id}` names (runner routes), or any runner elsewhere.
    RunnerOwn,
    RunnerOther,
    /// The webhook token of the execution `{id}` names, and another's.
    WebhookOwn,
    WebhookOther,
    /// The dispatched job of shard `{index}` (0), and of shard 1.
    JobOwn,
    JobOther,
}

const EVERYONE: [Who; 10] = [
    Who::Nobody,
    Who::Garbage,
    Who::Admin,
    Who::Ci,
    Who::RunnerOwn,
    Who::RunnerOther,
    Who::WebhookOwn,
    Who::WebhookOther,
    Who::JobOwn,
    Who::JobOther,
];

/// One operation: who may call it, and the body a caller sends (valid, so
/// a refusal cannot hide behind a parse error). In the order the allowed
/// calls run: ones that change what later calls need come last.
struct Op {
    method: Method,
    path: &'static str,
    allowed: &'static [Who],
    body: fn(&Fixture) -> Option<Value>,
}

use Who::*;

fn none(_: &Fixture) -> Option<Value> {
    None
}

fn matrix() -> Vec<Op> {
    let op = |method: Method,
              path: &'static str,
              allowed: &'static [Who],
              body: fn(&Fixture) -> Option<Value>| Op {
        method,
        path,
        allowed,
        body,
    };
    vec![
        op(Method::GET, "/system/health", &EVERYONE, none),
        op(Method::POST, "/runners/register", &[Admin, Ci], |_| {
            Some(json!({"name": "m", "type": "custom",
                "capacity": {"slots": 1, "cpu_millis": 1000, "memory_mb": 1024}}))
        }),
        op(Method::GET, "/runners", &[Admin, Ci], none),
        op(Method::GET, "/runners/{id}", &[Admin, Ci, RunnerOwn], none),
        op(
            Method::POST,
            "/runners/{id}/heartbeat",
            &[RunnerOwn],
            |_| Some(json!({})),
        ),
        op(Method::GET, "/runners/{id}/claimable", &[RunnerOwn], none),
        op(Method::GET, "/runners/{id}/health", &[Admin, Ci], none),
        op(
            Method::POST,
            "/executions/{id}/claims",
            &[RunnerOwn, RunnerOther],
            |_| Some(json!({})),
        ),
        op(Method::POST, "/executions/queue", &[Admin, Ci], |_| {
            Some(json!({"suite": "m", "tests": ["a"], "requirements": {"labels": ["nobody"]}}))
        }),
        op(Method::GET, "/executions", &[Admin, Ci], none),
        op(Method::GET, "/executions/{id}/status", &[Admin, Ci], none),
        op(Method::GET, "/executions/{id}/report", &[Admin, Ci], none),
        op(
            Method::POST,
            "/suites/{suite}/timings",
            &[Admin, Ci],
            |_| Some(json!({"t1": 1.5})),
        ),
        op(Method::GET, "/suites/{suite}/flaky", &[Admin, Ci], none),
        op(Method::POST, "/load-balancing-rules", &[Admin], |_| {
            Some(json!({"name": "m", "strategy": "priority"}))
        }),
        op(Method::GET, "/load-balancing-rules", &[Admin, Ci], none),
        op(Method::POST, "/alert-rules", &[Admin], |_| {
            Some(json!({"name": "m", "metric": "queue_depth", "threshold": 100.0}))
        }),
        op(Method::GET, "/alert-rules", &[Admin, Ci], none),
        op(Method::GET, "/resources/utilization", &[Admin, Ci], none),
        op(Method::GET, "/metrics", &[Admin, Ci], none),
        op(Method::POST, "/tokens", &[Admin], |_| {
            Some(json!({"name": "m", "scope": "ci"}))
        }),
        op(
            Method::GET,
            "/webhooks/parallel-execution/{id}/shards/{index}",
            &[Admin, Ci, WebhookOwn, JobOwn],
            none,
        ),
        op(
            Method::POST,
            "/webhooks/parallel-execution/{id}/shards/{index}/claim",
            &[Admin, Ci, WebhookOwn],
            none,
        ),
        op(
            Method::POST,
            "/webhooks/parallel-execution/{id}",
            &[Admin, WebhookOwn, JobOwn],
            |f| Some(json!({"shard_index": 0, "lease_id": f.lease0, "status": "started"})),
        ),
        op(
            Method::POST,
            "/runners/{id}/pause",
            &[Admin, RunnerOwn],
            |_| Some(json!({})),
        ),
        op(
            Method::POST,
            "/runners/{id}/resume",
            &[Admin, RunnerOwn],
            |_| Some(json!({})),
        ),
        op(Method::POST, "/executions/{id}/retry", &[Admin, Ci], none),
        op(Method::POST, "/executions/{id}/cancel", &[Admin, Ci], none),
        op(Method::DELETE, "/load-balancing-rules/{id}", &[Admin], none),
        op(Method::DELETE, "/alert-rules/{id}", &[Admin], none),
        op(
            Method::POST,
            "/runners/{id}/deregister",
            &[RunnerOwn, Admin],
            none,
        ),
    ]
}

/// What the calls act on, made as an operator would.
struct Fixture {
    base: String,
    ci: String,
    runner_own: (String, String),
    runner_other: String,
    /// Dispatched to two jobs: the webhook routes' execution.
    dispatched: String,
    webhook_own: String,
    webhook_other: String,
    job0: String,
    job1: String,
    lease0: String,
    /// Queued, never runnable: the execution routes' execution.
    waiting: String,
    rule: String,
    alert: String,
}

async fn send(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn made(base: &str, path: &str, body: Value) -> Value {
    let (status, v) = send(base, Method::POST, path, Some(ADMIN_TOKEN), Some(body)).await;
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

async fn fixture(server: &Server, platform: &Recorder) -> Fixture {
    let base = server.base.clone();
    let ci = made(&base, "/tokens", json!({"name": "ci", "scope": "ci"})).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let runner = |name: &str| {
        json!({"name": name, "type": "custom", "labels": [name],
            "capacity": {"slots": 1, "cpu_millis": 1000, "memory_mb": 1024}})
    };
    let own = made(&base, "/runners/register", runner("own")).await;
    let other = made(&base, "/runners/register", runner("other")).await;
    made(
        &base,
        "/runners/register",
        json!({"name": "push", "type": "custom", "labels": ["push"],
            "capacity": {"slots": 2, "cpu_millis": 8000, "memory_mb": 8192},
            "dispatch": {"platform": "webhook", "url": format!("{}/hook", platform.url),
                "signing_secret": "HOOK_KEY"}}),
    )
    .await;
    let dispatched = made(
        &base,
        "/executions/queue",
        json!({"suite": "d", "tests": ["t1", "t2"], "parallelism": 2,
            "requirements": {"labels": ["push"]}}),
    )
    .await;
    let jobs = eventually("both shards dispatched", || async {
        let jobs: Vec<Value> = platform.requests().iter().map(|r| r.json()).collect();
        (jobs.len() == 2).then_some(jobs)
    })
    .await;
    let job = |index: u64| {
        jobs.iter()
            .find(|j| j["shard_index"] == index)
            .unwrap()
            .clone()
    };
    let waiting_body =
        json!({"suite": "w", "tests": ["x"], "requirements": {"labels": ["nobody"]}});
    let waiting = made(&base, "/executions/queue", waiting_body.clone()).await;
    let other_execution = made(
        &base,
        "/executions/queue",
        json!({"suite": "o", "tests": ["y"], "requirements": {"labels": ["nobody"]}}),
    )
    .await;
    let rule = made(
        &base,
        "/load-balancing-rules",
        json!({"name": "r", "strategy": "priority"}),
    )
    .await;
    let alert = made(
        &base,
        "/alert-rules",
        json!({"name": "a", "metric": "queue_depth", "threshold": 100.0}),
    )
    .await;
    let text = |v: &Value, key: &str| v[key].as_str().unwrap().to_owned();
    Fixture {
        base,
        ci,
        runner_own: (text(&own, "id"), text(&own, "token")),
        runner_other: text(&other, "token"),
        dispatched: text(&dispatched, "id"),
        webhook_own: text(&dispatched, "webhook_token"),
        webhook_other: text(&other_execution, "webhook_token"),
        job0: text(&job(0), "webhook_token"),
        job1: text(&job(1), "webhook_token"),
        lease0: text(&job(0), "lease_id"),
        waiting: text(&waiting, "id"),
        rule: text(&rule, "id"),
        alert: text(&alert, "id"),
    }
}

impl Fixture {
    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Nobody => None,
            Garbage => Some("tms_not-a-token"),
            Admin => Some(ADMIN_TOKEN),
            Ci => Some(&self.ci),
            RunnerOwn => Some(&self.runner_own.1),
            RunnerOther => Some(&self.runner_other),
            WebhookOwn => Some(&self.webhook_own),
            WebhookOther => Some(&self.webhook_other),
            JobOwn => Some(&self.job0),
            JobOther => Some(&self.job1),
        }
    }

    /// `path` with its parameters filled in for what it acts on.
    fn path(&self, path: &str) -> String {
        let id = if path.starts_with("/runners/") {
            self.runner_own.0.as_str()
        } else if path.starts_with("/webhooks/") {
            self.dispatched.as_str()
        } else if path.starts_with("/load-balancing-rules/") {
            self.rule.as_str()
        } else if path.starts_with("/alert-rules/") {
            self.alert.as_str()
        } else {
            self.waiting.as_str()
        };
        path.replace("{id}", id)
            .replace("{index}", "0")
            .replace("{suite}", "d")
    }
}

#[tokio::test]
async fn every_operation_answers_every_kind_of_caller_as_documented() {
    let platform = Recorder::start(Answer::status(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with_env(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        // Many refusals come from one address: no lockout here (its own
        // test is in security.rs).
        &[
            "--dispatch-allow-host",
            "127.0.0.1",
            "--auth-failure-limit",
            "0",
        ],
        &[("TMS_SECRET_HOOK_KEY", "k")],
    );
    let matrix = matrix();

    // The matrix covers exactly the document's operations.
    let (_, doc) = send(&server.url, Method::GET, "/openapi.json", None, None).await;
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let covered: BTreeSet<(String, String)> = matrix
        .iter()
        .map(|op| (op.method.to_string(), op.path.to_owned()))
        .collect();
    assert_eq!(
        documented, covered,
        "every documented operation needs a row in the access matrix, and every row a route"
    );

    let f = fixture(&server, &platform).await;
    let mut wrong = BTreeMap::new();
    // Refusals first: they change nothing. Then the allowed calls, in the
    // matrix's order.
    for allowed_pass in [false, true] {
        for op in &matrix {
            // Allowed callers in the row's order (the runner deregisters
            // itself before an admin removes it again).
            let callers: Vec<Who> = if allowed_pass {
                op.allowed.to_vec()
            } else {
                EVERYONE
                    .into_iter()
                    .filter(|w| !op.allowed.contains(w))
                    .collect()
            };
            for who in callers {
                let path = f.path(op.path);
                let (status, answer) = send(
                    &f.base,
                    op.method.clone(),
                    &path,
                    f.token(who),
                    (op.body)(&f),
                )
                .await;
                let ok = if allowed_pass {
                    ![
                        StatusCode::UNAUTHORIZED,
                        StatusCode::FORBIDDEN,
                        StatusCode::TOO_MANY_REQUESTS,
                    ]
                    .contains(&status)
                } else if matches!(who, Nobody | Garbage) {
                    status == StatusCode::UNAUTHORIZED
                } else {
                    status == StatusCode::FORBIDDEN
                };
                if !ok {
                    wrong.insert(
                        format!("{} {} as {who:?}", op.method, op.path),
                        format!("{status} {answer}"),
                    );
                }
            }
        }
    }
    assert!(wrong.is_empty(), "answers not as documented: {wrong:#?}");
}
