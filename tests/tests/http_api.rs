//! End-to-end tests over real HTTP against `tms serve` processes on free ports.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tms_tests::{client, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(server: &Server) -> Self {
        Api {
            http: client(),
            base: server.base.clone(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, Some(token), body).await;
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn register(&self, name: &str, slots: u32) -> (String, String) {
        let body = json!({"name": name, "type": "custom", "labels": ["linux"], "capacity": {"slots": slots, "cpu_millis": 8000, "memory_mb": 16384}});
        let v = self
            .ok(Method::POST, "/runners/register", ADMIN_TOKEN, Some(body))
            .await;
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn queue(&self, suite: &str, tests: usize, parallelism: u32) -> (String, String) {
        let tests: Vec<String> = (0..tests).map(|i| format!("t{i}")).collect();
        let body = json!({"suite": suite, "tests": tests, "parallelism": parallelism});
        let v = self
            .ok(Method::POST, "/executions/queue", ADMIN_TOKEN, Some(body))
            .await;
        (
            v["id"].as_str().unwrap().to_owned(),
            v["webhook_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn heartbeat(&self, runner: &str, token: &str) -> Vec<Value> {
        let v = self
            .ok(
                Method::POST,
                &format!("/runners/{runner}/heartbeat"),
                token,
                Some(json!({})),
            )
            .await;
        v["assignments"].as_array().unwrap().clone()
    }

    /// Heartbeats until the scheduler (woken by the queue call) has assigned `n` shards.
    async fn wait_for_assignments(&self, runner: &str, token: &str, n: usize) -> Vec<Value> {
        eventually(|| async {
            let a = self.heartbeat(runner, token).await;
            (a.len() >= n).then_some(a)
        })
        .await
    }

    async fn status(&self, id: &str) -> Value {
        self.ok(
            Method::GET,
            &format!("/executions/{id}/status"),
            ADMIN_TOKEN,
            None,
        )
        .await
    }

    /// A runner holding the one shard of suite `shop`'s test file
    /// `tests/test_shop.py` (what `fixtures/junit/pytest-xunit2.xml`
    /// reports): the execution, its webhook token and the assignment.
    async fn shop_file_assigned(&self) -> (String, String, Value) {
        let (runner, runner_token) = self.register("agent-1", 2).await;
        let body = json!({"suite": "shop", "tests": ["tests/test_shop.py"], "parallelism": 1});
        let queued = self
            .ok(Method::POST, "/executions/queue", ADMIN_TOKEN, Some(body))
            .await;
        let shard = self.wait_for_assignments(&runner, &runner_token, 1).await[0].clone();
        let text = |key: &str| queued[key].as_str().unwrap().to_owned();
        (text("id"), text("webhook_token"), shard)
    }

    async fn wait_for_status(&self, id: &str, want: &str) -> Value {
        eventually(|| async {
            let s = self.status(id).await;
            (s["status"] == want).then_some(s)
        })
        .await
    }
}

/// Polls until `f` yields a value; the server works asynchronously (scheduler,
/// aggregator), so a bounded wait for its result is the honest check.
async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "condition not reached in 15s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(shard: &Value, status: &str, passed: u32, failed: u32) -> Value {
    json!({"shard_index": shard["shard_index"], "lease_id": shard["lease_id"], "status": status,
           "results": {"passed": passed, "failed": failed, "skipped": 0}})
}

#[tokio::test]
async fn a_suite_is_queued_split_run_reported_and_passes_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let (runner, runner_token) = api.register("agent-1", 4).await;
    let (exec, webhook) = api.queue("api", 7, 3).await;

    let work = api.wait_for_assignments(&runner, &runner_token, 3).await;
    for shard in &work {
        let n = shard["tests"].as_array().unwrap().len() as u32;
        api.ok(Method::POST, &format!("/webhooks/parallel-execution/{exec}"), &webhook,
            Some(json!({"shard_index": shard["shard_index"], "lease_id": shard["lease_id"], "status": "started"}))).await;
        let tests: Vec<Value> = shard["tests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| json!({"name": t, "status": "passed", "duration_ms": 12}))
            .collect();
        let body = json!({"shard_index": shard["shard_index"], "lease_id": shard["lease_id"], "status": "passed",
            "results": {"passed": n, "failed": 0, "skipped": 0, "tests": tests}});
        api.ok(
            Method::POST,
            &format!("/webhooks/parallel-execution/{exec}"),
            &webhook,
            Some(body),
        )
        .await;
    }
    let done = api.wait_for_status(&exec, "passed").await;
    assert_eq!(done["totals"]["passed"], 7);
    assert_eq!(done["progress"]["percent"], 100);
    assert_eq!(done["shards"].as_array().unwrap().len(), 3);

    let report = api
        .ok(
            Method::GET,
            &format!("/executions/{exec}/report"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(report["tests"].as_array().unwrap().len(), 7);
    let util = api
        .ok(Method::GET, "/resources/utilization", ADMIN_TOKEN, None)
        .await;
    assert_eq!(util["total_allocated"]["slots"], 0);
    let list = api
        .ok(
            Method::GET,
            "/executions?status=passed&limit=10",
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(list["items"][0]["id"], exec.as_str());
}

#[tokio::test]
async fn reports_with_a_stale_lease_get_409_and_duplicates_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let (runner, runner_token) = api.register("agent", 1).await;
    let (exec, webhook) = api.queue("api", 2, 1).await;
    let shard = api
        .wait_for_assignments(&runner, &runner_token, 1)
        .await
        .remove(0);
    let path = format!("/webhooks/parallel-execution/{exec}");

    let mut stale = report(&shard, "passed", 2, 0);
    stale["lease_id"] = json!("lse01ARZ3NDEKTSV4RRFFQ69G5FAV");
    let (status, problem) = api
        .call(Method::POST, &path, Some(&webhook), Some(stale))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], "stale_lease");

    let first = api
        .ok(
            Method::POST,
            &path,
            &runner_token,
            Some(report(&shard, "passed", 2, 0)),
        )
        .await;
    let again = api
        .ok(
            Method::POST,
            &path,
            &webhook,
            Some(report(&shard, "passed", 2, 0)),
        )
        .await;
    assert_eq!(
        (first["duplicate"].as_bool(), again["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    let done = api.wait_for_status(&exec, "passed").await;
    assert_eq!(done["totals"]["passed"], 2);
}

#[tokio::test]
async fn bad_input_gets_a_problem_document_with_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let cases = [
        (
            json!({"suite": "x", "tests": ["a"], "surprise": true}),
            "invalid_json",
        ),
        (
            json!({"suite": "x", "tests": ["a"], "parallelism": 0}),
            "validation_failed",
        ),
        (json!({"suite": "", "tests": ["a"]}), "validation_failed"),
        (
            json!({"suite": "x", "tests": ["a", "a"]}),
            "validation_failed",
        ),
        (
            json!({"suite": "x", "tests": ["a"], "priority": 101}),
            "validation_failed",
        ),
        (
            json!({"suite": "x", "tests": [{"name": "a", "duration_hint_ms": -1}]}),
            "invalid_json",
        ),
        (json!({"suite": "x", "tests": ["a", 42]}), "invalid_json"),
        (
            json!({"suite": "x", "tests": [{"name": "a", "weight": 3}]}),
            "invalid_json",
        ),
        // Nothing to run: refused rather than handed to a runner whose
        // command, with nothing substituted, would run the whole suite.
        (json!({"suite": "x", "tests": []}), "validation_failed"),
        (json!({"suite": "x"}), "validation_failed"),
    ];
    for (body, code) in cases {
        let resp = api
            .http
            .post(format!("{}/executions/queue", api.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        // A body that does not parse is 400; a parsed one refused is 422.
        let expected = match code {
            "invalid_json" => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        assert_eq!(resp.status(), expected, "{body}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], code, "{body}: {problem}");
        assert_eq!(problem["status"], expected.as_u16());
    }
    // Names and timed tests mix in one list; a wrong kind of entry is
    // named in the problem's detail.
    let (status, queued) = api
        .call(
            Method::POST,
            "/executions/queue",
            Some(ADMIN_TOKEN),
            Some(json!({"suite": "x", "tests": ["a", {"name": "b", "duration_hint_ms": 5}, {"name": "c"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["test_count"], 3, "{queued}");
    let (_, problem) = api
        .call(
            Method::POST,
            "/executions/queue",
            Some(ADMIN_TOKEN),
            Some(json!({"suite": "x", "tests": [true]})),
        )
        .await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("a test name or"),
        "{problem}"
    );
    let raw = api
        .http
        .post(format!("{}/executions/queue", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let huge = "x".repeat(9 * 1024 * 1024);
    // Its own client: the server closes a connection whose body it refused.
    let big = client()
        .post(format!("{}/executions/queue", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (status, problem) = api
        .call(
            Method::GET,
            "/executions/exe01ARZ3NDEKTSV4RRFFQ69G5FAV/status",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _) = api
        .call(
            Method::GET,
            "/executions/..%2F..%2Fetc/status",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing stored was harmed: the store still answers.
    let (status, health) = api.call(Method::GET, "/system/health", None, None).await;
    assert_eq!(
        (status, health["store"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_execution_and_refuses_another_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let send = |body: Value| {
        api.http
            .post(format!("{}/executions/queue", api.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("Idempotency-Key", "gha-run-991-attempt-1")
            .json(&body)
            .send()
    };
    let body = json!({"suite": "api", "tests": ["a", "b"], "parallelism": 2});
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    // Same content, different key order: the same request.
    let reordered = json!({"parallelism": 2, "tests": ["a", "b"], "suite": "api"});
    let again = send(reordered).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(again["replayed"], true);
    let other = send(json!({"suite": "api", "tests": ["a"]})).await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn pause_resume_cancel_retry_and_rules_work_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let (runner, token) = api.register("r", 2).await;
    let paused = api
        .ok(
            Method::POST,
            &format!("/runners/{runner}/pause"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(paused["status"], "paused");
    let (exec, webhook) = api.queue("api", 2, 2).await;
    // Paused: heartbeats keep coming back empty while the work waits.
    for _ in 0..5 {
        assert!(api.heartbeat(&runner, &token).await.is_empty());
    }
    api.ok(
        Method::POST,
        &format!("/runners/{runner}/resume"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    let work = api.wait_for_assignments(&runner, &token, 2).await;
    let path = format!("/webhooks/parallel-execution/{exec}");
    api.ok(
        Method::POST,
        &path,
        &webhook,
        Some(report(&work[0], "passed", 1, 0)),
    )
    .await;
    api.ok(
        Method::POST,
        &path,
        &webhook,
        Some(report(&work[1], "failed", 0, 1)),
    )
    .await;
    let failed = api.wait_for_status(&exec, "failed").await;
    assert_eq!(failed["totals"]["failed"], 1);
    let retried = api
        .ok(
            Method::POST,
            &format!("/executions/{exec}/retry"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(retried["status"], "running");
    let again = api.wait_for_assignments(&runner, &token, 1).await;
    assert_eq!(again[0]["attempt"], 2);

    let cancelled = api
        .ok(
            Method::POST,
            &format!("/executions/{exec}/cancel"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    let (status, problem) = api
        .call(
            Method::POST,
            &format!("/executions/{exec}/cancel"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_transition"))
    );
    // What a cancel stopped runs again on retry, as `tms retry` says.
    let again = api
        .ok(
            Method::POST,
            &format!("/executions/{exec}/retry"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(again["status"], "running", "{again}");

    let rule = api.ok(Method::POST, "/load-balancing-rules", ADMIN_TOKEN,
        Some(json!({"name": "gpu", "suite_pattern": "ml-*", "strategy": "priority", "pool": {"labels": ["gpu"]}}))).await;
    let rules = api
        .ok(Method::GET, "/load-balancing-rules", ADMIN_TOKEN, None)
        .await;
    assert_eq!(rules["items"].as_array().unwrap().len(), 1);
    let id = rule["id"].as_str().unwrap();
    // Deleting twice: the second time there is nothing to delete.
    for want in [StatusCode::NO_CONTENT, StatusCode::NOT_FOUND] {
        let path = format!("/load-balancing-rules/{id}");
        let (status, _) = api
            .call(Method::DELETE, &path, Some(ADMIN_TOKEN), None)
            .await;
        assert_eq!(status, want);
    }

    let gone = api
        .ok(
            Method::POST,
            &format!("/runners/{runner}/deregister"),
            &token,
            None,
        )
        .await;
    assert_eq!(gone["status"], "deregistered");
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/runners/{runner}/heartbeat"),
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deregistered runner's token is revoked"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let doc: Value = client()
        .get(format!("{}/openapi.json", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/runners/register",
        "/runners",
        "/runners/{id}",
        "/runners/{id}/heartbeat",
        "/runners/{id}/claimable",
        "/runners/{id}/pause",
        "/runners/{id}/resume",
        "/runners/{id}/deregister",
        "/runners/{id}/health",
        "/executions/queue",
        "/executions",
        "/executions/{id}/status",
        "/executions/{id}/report",
        "/executions/{id}/cancel",
        "/executions/{id}/retry",
        "/load-balancing-rules",
        "/load-balancing-rules/{id}",
        "/webhooks/parallel-execution/{id}",
        "/system/health",
        "/resources/utilization",
        "/tokens",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(doc["components"]["schemas"]["NewExecution"].is_object());
}

#[tokio::test]
async fn serve_flags_override_the_resource_defaults_of_a_test_type() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &["--resources", "e2e=3000:4096"],
    );
    let api = Api::new(&server);
    let body = json!({"suite": "web", "tests": ["login"], "test_type": "e2e"});
    let e2e = api
        .ok(Method::POST, "/executions/queue", ADMIN_TOKEN, Some(body))
        .await;
    assert_eq!(
        (
            e2e["requirements"]["cpu_millis"].as_u64(),
            e2e["requirements"]["memory_mb"].as_u64()
        ),
        (Some(3000), Some(4096))
    );
    let body = json!({"suite": "web", "tests": ["login"], "test_type": "unit", "requirements": {"cpu_millis": 250}});
    let unit = api
        .ok(Method::POST, "/executions/queue", ADMIN_TOKEN, Some(body))
        .await;
    assert_eq!(
        (
            unit["requirements"]["cpu_millis"].as_u64(),
            unit["requirements"]["memory_mb"].as_u64()
        ),
        (Some(250), Some(512))
    );
}

#[tokio::test]
async fn executions_and_runners_are_listed_in_cursor_pages_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(
            api.queue(if i % 2 == 0 { "even" } else { "odd" }, 1, 1)
                .await
                .0,
        );
    }
    for i in 0..3 {
        api.register(&format!("r{i}"), 1).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/executions?limit=2&cursor={c}"),
            None => "/executions?limit=2".to_owned(),
        };
        let page = api.ok(Method::GET, &path, ADMIN_TOKEN, None).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected = queued.clone();
    expected.sort();
    expected.reverse();
    assert_eq!(seen, expected, "every execution once, newest first");
    let even = api
        .ok(Method::GET, "/executions?suite=even", ADMIN_TOKEN, None)
        .await;
    assert_eq!(even["items"].as_array().unwrap().len(), 3);
    let (status, problem) = api
        .call(
            Method::GET,
            "/executions?status=done",
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("status"))
    );
    let first = api
        .ok(Method::GET, "/runners?limit=2", ADMIN_TOKEN, None)
        .await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = api
        .ok(
            Method::GET,
            &format!("/runners?limit=2&cursor={cursor}"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    assert_eq!(
        first["items"].as_array().unwrap().len() + rest["items"].as_array().unwrap().len(),
        3
    );
    assert!(rest["next_cursor"].is_null());
}

/// `tms serve` dispatches a push-mode runner's shards itself: the webhook
/// secret comes from the server's environment (`TMS_SECRET_<NAME>`), the job is told to report
/// to the address the server listens on, and reports with its own token.
#[tokio::test]
async fn tms_serve_dispatches_push_mode_shards_and_the_job_reports_with_its_token() {
    let platform =
        tms_tests::recorder::Recorder::start(tms_tests::recorder::Answer::status(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with_env(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &["--dispatch-allow-host", "127.0.0.1"],
        &[("TMS_SECRET_HOOK_KEY", "k3y")],
    );
    let api = Api::new(&server);
    let runner = json!({"name": "hook", "type": "docker",
        "capacity": {"slots": 1, "cpu_millis": 8000, "memory_mb": 8192},
        "dispatch": {"platform": "webhook", "url": format!("{}/hook", platform.url),
            "signing_secret": "HOOK_KEY"}});
    api.ok(Method::POST, "/runners/register", ADMIN_TOKEN, Some(runner))
        .await;
    let (execution, _) = api.queue("api", 3, 1).await;

    let job = eventually(|| async { platform.requests().first().map(|r| r.json()) }).await;
    assert_eq!(job["execution_id"], execution.as_str());
    assert_eq!(
        job["webhook_url"],
        format!("{}/webhooks/parallel-execution/{execution}", server.base)
    );
    let token = job["webhook_token"].as_str().unwrap();
    let shard_url = job["shard_url"].as_str().unwrap();
    let work: Value = api
        .http
        .get(shard_url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(work["tests"], json!(["t0", "t1", "t2"]));
    let path = format!("/webhooks/parallel-execution/{execution}");
    api.ok(
        Method::POST,
        &path,
        token,
        Some(report(&work, "passed", 3, 0)),
    )
    .await;
    api.wait_for_status(&execution, "passed").await;
    // The token was for this execution only.
    let (status, _) = api
        .call(Method::GET, "/executions", Some(token), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A suite's durations imported from pytest-split's `.test_durations` (the
/// real file of Clinical-Genomics/scout) split the first execution by time;
/// a malformed file changes nothing and says why.
#[tokio::test]
async fn imported_pytest_split_durations_balance_the_first_execution() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let recorded: Value = serde_json::from_str(include_str!(
        "../fixtures/durations/Clinical-Genomics__scout__pytest-split.json"
    ))
    .unwrap();
    let durations = recorded["durations"].as_object().unwrap();
    let v = api
        .ok(
            Method::POST,
            "/suites/scout/timings",
            ADMIN_TOKEN,
            Some(recorded["durations"].clone()),
        )
        .await;
    assert_eq!(v["imported"], durations.len());

    // The slowest test and nine fast ones, sent without hints.
    let mut by_time: Vec<(&String, f64)> = durations
        .iter()
        .map(|(k, v)| (k, v.as_f64().unwrap()))
        .collect();
    by_time.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest = by_time[0];
    let mut tests: Vec<&str> = by_time[by_time.len() - 9..]
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    tests.push(slowest.0);
    let body = json!({"suite": "scout", "tests": tests, "parallelism": 2});
    let queued = api
        .ok(Method::POST, "/executions/queue", ADMIN_TOKEN, Some(body))
        .await;
    let status = api.status(queued["id"].as_str().unwrap()).await;
    let shards = status["shards"].as_array().unwrap();
    let alone = shards
        .iter()
        .find(|s| {
            s["tests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == slowest.0)
        })
        .unwrap();
    assert_eq!(alone["tests"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(
        alone["estimated_ms"].as_u64().unwrap(),
        (slowest.1 * 1000.0).round() as u64
    );

    // The older list-of-pairs format is read too; nonsense is refused.
    let pairs = json!([
        ["tests/test_x.py::test_a", 1.5],
        ["tests/test_x.py::test_b", 0.25]
    ]);
    let v = api
        .ok(
            Method::POST,
            "/suites/other/timings",
            ADMIN_TOKEN,
            Some(pairs),
        )
        .await;
    assert_eq!(v["imported"], 2);
    let (status, problem) = api
        .call(
            Method::POST,
            "/suites/other/timings",
            Some(ADMIN_TOKEN),
            Some(json!({"tests/test_x.py::test_a": -3})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
}

/// `tms import-timings` sends a durations file (here the real Knapsack
/// report, wrapped with its source) to a running server; a wrong token or an
/// unreachable server is a one-line error and a non-zero exit.
#[tokio::test]
async fn tms_import_timings_sends_a_knapsack_report_and_explains_failures() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/durations/DFE-Digital__early-careers-framework__knapsack.json"
    );
    let run = |url: String, token: &'static str| {
        std::process::Command::new(BIN)
            .args(["import-timings", "--suite", "ecf rspec/unit", file])
            .env("TMS_URL", url)
            .env("TMS_TOKEN", token)
            .output()
            .expect("run tms import-timings")
    };
    let url = server.url.clone();
    let ok = tokio::task::spawn_blocking(move || run(url, ADMIN_TOKEN))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "imported 759 test durations into suite ecf rspec/unit"
    );

    let url = server.url.clone();
    let denied = tokio::task::spawn_blocking(move || run(url, "wrong"))
        .await
        .unwrap();
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // A JUnit report goes as XML, named as its tool names tests.
    let url = server.url.clone();
    let junit = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["import-timings", "--suite", "shop", "--names", "pytest"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/junit/pytest-xunit1.xml"
            ))
            .env("TMS_URL", url)
            .env("TMS_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        junit.status.success(),
        "{}",
        String::from_utf8_lossy(&junit.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&junit.stdout).trim(),
        "imported 4 test durations into suite shop"
    );

    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let unreachable = tokio::task::spawn_blocking(move || run(gone, ADMIN_TOKEN))
        .await
        .unwrap();
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("cannot reach the TMS server"), "{stderr}");
}

/// A JUnit report from pytest (both of its XML families) imports its
/// durations under pytest's node ids, so a suite queued with those ids is
/// split by them; skipped tests teach nothing.
#[tokio::test]
async fn a_pytest_junit_report_imports_durations_under_pytest_node_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    for (suite, report) in [
        (
            "xunit1",
            include_str!("../fixtures/junit/pytest-xunit1.xml"),
        ),
        (
            "xunit2",
            include_str!("../fixtures/junit/pytest-xunit2.xml"),
        ),
    ] {
        let response = api
            .http
            .post(format!("{}/suites/{suite}/timings?names=pytest", api.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/xml")
            .body(report)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let v: Value = response.json().await.unwrap();
        assert_eq!(v["imported"], 4, "{suite}: five cases, one skipped");

        let tests = [
            "tests/test_shop.py::test_checkout_total",
            "tests/test_shop.py::test_refund_rounding",
            "tests/test_shop.py::TestCart::test_add_item",
            "tests/test_shop.py::TestCart::test_remove_item",
        ];
        let body = json!({"suite": suite, "tests": tests, "parallelism": 2});
        let queued = api
            .ok(Method::POST, "/executions/queue", ADMIN_TOKEN, Some(body))
            .await;
        let status = api.status(queued["id"].as_str().unwrap()).await;
        let slow = status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["tests"][0] == "tests/test_shop.py::test_checkout_total")
            .unwrap_or_else(|| panic!("{suite}: the slowest test leads a shard: {status}"));
        assert_eq!(slow["tests"].as_array().unwrap().len(), 1, "{status}");
        assert!(
            (150..300).contains(&slow["estimated_ms"].as_u64().unwrap()),
            "{status}"
        );
    }
    // Not XML at all: a 400 with a reason.
    let response = api
        .http
        .post(format!("{}/suites/x/timings", api.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/xml")
        .body("<testsuite><testcase name='a'>")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_body_that_is_not_a_report_is_refused_and_the_shard_still_takes_its_real_report() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let (exec, webhook, shard) = api.shop_file_assigned().await;
    let (exec, webhook) = (exec.as_str(), webhook.as_str());
    let url = format!(
        "{}/webhooks/parallel-execution/{exec}?shard_index={}&lease_id={}&names=pytest",
        api.base,
        shard["shard_index"],
        shard["lease_id"].as_str().unwrap()
    );
    let real = include_str!("../fixtures/junit/pytest-xunit2.xml");
    // What a broken CI step really sends: nothing, a JSON summary under the
    // XML type, a proxy's error page, the file cut off by a full disk after
    // a complete case, an entity-laden DOCTYPE, nesting 100,000 deep.
    let cut = real.find("</testcase>").unwrap() + "</testcase>".len();
    let deep = format!("<testsuites>{}</testsuites>", "<testsuite>".repeat(100_000));
    let refused = [
        ("", "empty"),
        (r#"{"status": "passed", "tests": []}"#, "application/json"),
        ("<html><body>502 Bad Gateway</body></html>", "<html>"),
        (&real[..cut], "truncated"),
        (
            "<!DOCTYPE r [<!ENTITY a 'x'>]><testsuite><testcase name='&a;'/></testsuite>",
            "DOCTYPE",
        ),
        (&deep, "deeper than"),
    ];
    for (body, says) in refused {
        let reply = api
            .http
            .post(&url)
            .bearer_auth(webhook)
            .header("content-type", "application/xml")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::UNPROCESSABLE_ENTITY, "{says}");
        assert!(reply.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"));
        let problem: Value = reply.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed", "{problem}");
        assert_eq!(problem["field"], "junit", "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{says}: {problem}"
        );
    }
    // Nothing was recorded and the lease is still the shard's.
    let running = api.status(exec).await;
    assert_eq!(running["status"], "running", "{running}");
    let reply = api
        .http
        .post(&url)
        .bearer_auth(webhook)
        .header("content-type", "application/xml")
        .body(real)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let done = api.wait_for_status(exec, "failed").await;
    assert_eq!(done["totals"]["passed"], 2, "{done}");
    assert_eq!(done["totals"]["failed"], 2, "{done}");
    assert_eq!(done["totals"]["skipped"], 1, "{done}");
}

#[tokio::test]
async fn a_shard_reports_its_junit_file_and_the_execution_report_is_one_valid_junit_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let (exec, webhook, shard) = api.shop_file_assigned().await;
    let (exec, webhook) = (exec.as_str(), webhook.as_str());
    let url = format!("{}/webhooks/parallel-execution/{exec}", api.base);
    let upload = |query: String, content_type: &'static str| {
        api.http
            .post(format!("{url}{query}"))
            .bearer_auth(webhook)
            .header("content-type", content_type)
            .body(include_str!("../fixtures/junit/pytest-xunit2.xml"))
            .send()
    };
    // A JUnit file needs the shard and lease in the query.
    let missing = upload(String::new(), "application/xml").await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let query = format!(
        "?shard_index={}&lease_id={}&names=pytest",
        shard["shard_index"],
        shard["lease_id"].as_str().unwrap()
    );
    let reply = upload(query, "application/xml").await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let outcome: Value = reply.json().await.unwrap();
    assert_eq!(outcome["shard_status"], "failed");
    let done = api.wait_for_status(exec, "failed").await;
    assert_eq!(done["totals"]["passed"], 2);
    assert_eq!(done["totals"]["failed"], 2);
    assert_eq!(done["totals"]["skipped"], 1);

    let json_report = api
        .ok(
            Method::GET,
            &format!("/executions/{exec}/report"),
            ADMIN_TOKEN,
            None,
        )
        .await;
    let names: Vec<&str> = json_report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"tests/test_shop.py::TestCart::test_add_item"),
        "{names:?}"
    );

    let junit = api
        .http
        .get(format!(
            "{}/executions/{exec}/report?format=junit",
            api.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(junit.status(), StatusCode::OK);
    assert!(junit.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/xml"));
    let xml = junit.text().await.unwrap();
    tms_tests::assert_valid_junit(&xml);
    // The case as pytest wrote it (CI test-history views key on it), while
    // the JSON report names it by its node id.
    assert!(
        xml.contains(r#"<testcase classname="tests.test_shop.TestCart" name="test_add_item""#),
        "{xml}"
    );
    let (status, problem) = api
        .call(
            Method::GET,
            &format!("/executions/{exec}/report?format=html"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
}

#[tokio::test]
async fn dynamic_batches_and_ci_jobs_claims_work_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let api = Api::new(&server);
    let (runner, runner_token) = api.register("agent-1", 1).await;

    // Dynamic: the runner claims until nothing is left.
    let tests: Vec<Value> = (0..12)
        .map(|i| json!({"name": format!("spec_{i:02}"), "duration_hint_ms": (12 - i) * 4000}))
        .collect();
    let queued = api
        .ok(
            Method::POST,
            "/executions/queue",
            ADMIN_TOKEN,
            Some(json!({"suite": "e2e", "tests": tests, "parallelism": 2, "mode": "dynamic"})),
        )
        .await;
    let exec = queued["id"].as_str().unwrap().to_owned();
    assert_eq!(queued["shards"], json!([]), "batches are cut when claimed");
    let (mut ran, mut claims, mut brought) = (0, 0, 0);
    let mut next: Option<Value> = None;
    loop {
        // The first batch is claimed; each report asks for the next one.
        let claim = match next.take() {
            Some(claim) => {
                brought += 1;
                claim
            }
            None => {
                claims += 1;
                api.ok(
                    Method::POST,
                    &format!("/executions/{exec}/claims"),
                    &runner_token,
                    None,
                )
                .await
            }
        };
        let Some(batch) = claim["assignment"].as_object() else {
            assert_eq!(claim["queued_tests"], 0);
            break;
        };
        let n = batch["tests"].as_array().unwrap().len();
        ran += n;
        let answer = api.ok(Method::POST, &format!("/webhooks/parallel-execution/{exec}?next=true"), &runner_token,
            Some(json!({"shard_index": batch["shard_index"], "lease_id": batch["lease_id"], "status": "passed",
                "results": {"passed": n, "failed": 0, "skipped": 0}})))
            .await;
        assert_eq!(answer["shard_status"], "passed");
        next = Some(answer["next"].clone()).filter(|n| !n.is_null());
        if next.is_none() {
            break;
        }
    }
    assert_eq!(ran, 12);
    assert_eq!(claims, 1, "one claim; every later batch came with a report");
    // `next` is true, false or any; anything else is refused before the
    // report is read.
    let (status, problem) = api
        .call(
            Method::POST,
            &format!("/webhooks/parallel-execution/{exec}?next=yes"),
            Some(&runner_token),
            Some(json!({"shard_index": 0, "lease_id": "lease_x", "status": "passed"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["field"], "query", "{problem}");
    assert!(brought >= 2, "{brought} batches brought by reports");
    let done = api.wait_for_status(&exec, "passed").await;
    assert_eq!(done["mode"], "dynamic");
    let (status, problem) = api
        .call(
            Method::POST,
            &format!("/executions/{exec}/claims"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only runners claim: {problem}"
    );

    // CI jobs: two jobs of one build share the execution and claim by index.
    let body = |job: &str| {
        json!({"suite": "api", "tests": ["a", "b", "c", "d"], "parallelism": 2,
        "mode": "by_index", "ci": {"provider": "gitlab", "build_id": "9001", "job": job}})
    };
    let first = api
        .ok(
            Method::POST,
            "/executions/queue",
            ADMIN_TOKEN,
            Some(body("rspec 1/2")),
        )
        .await;
    let second = api
        .ok(
            Method::POST,
            "/executions/queue",
            ADMIN_TOKEN,
            Some(body("rspec 2/2")),
        )
        .await;
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["replayed"], true);
    let exec = first["id"].as_str().unwrap().to_owned();
    for (k, queued) in [(0, &first), (1, &second)] {
        let token = queued["webhook_token"].as_str().unwrap();
        let shard = api
            .ok(
                Method::POST,
                &format!("/webhooks/parallel-execution/{exec}/shards/{k}/claim"),
                token,
                None,
            )
            .await;
        let n = shard["tests"].as_array().unwrap().len();
        api.ok(
            Method::POST,
            &format!("/webhooks/parallel-execution/{exec}"),
            token,
            Some(
                json!({"shard_index": k, "lease_id": shard["lease_id"], "status": "passed",
                "results": {"passed": n, "failed": 0, "skipped": 0}}),
            ),
        )
        .await;
    }
    let done = api.wait_for_status(&exec, "passed").await;
    assert_eq!(done["totals"]["passed"], 4);
    // The runner registered above never got any of it.
    assert!(api.heartbeat(&runner, &runner_token).await.is_empty());
}
