//! Every endpoint with no token, a wrong token and a token of the wrong scope.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tms_tests::{client, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");

struct Fixture {
    ci: String,
    runner: String,
    runner_token: String,
    execution: String,
    webhook: String,
    rule: String,
}

async fn post(base: &str, path: &str, token: &str, body: Value) -> Value {
    let resp = client()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn fixture(base: &str) -> Fixture {
    let ci = post(
        base,
        "/tokens",
        ADMIN_TOKEN,
        json!({"name": "pipeline", "scope": "ci"}),
    )
    .await;
    let runner = post(base, "/runners/register", ADMIN_TOKEN,
        json!({"name": "r", "type": "docker", "capacity": {"slots": 1, "cpu_millis": 1000, "memory_mb": 1024}})).await;
    let exec = post(
        base,
        "/executions/queue",
        ADMIN_TOKEN,
        json!({"suite": "s", "tests": ["a"]}),
    )
    .await;
    let rule = post(
        base,
        "/load-balancing-rules",
        ADMIN_TOKEN,
        json!({"name": "r", "strategy": "round_robin"}),
    )
    .await;
    let s = |v: &Value, k: &str| v[k].as_str().unwrap().to_owned();
    Fixture {
        ci: s(&ci, "token"),
        runner: s(&runner, "id"),
        runner_token: s(&runner, "token"),
        execution: s(&exec, "id"),
        webhook: s(&exec, "webhook_token"),
        rule: s(&rule, "id"),
    }
}

/// Which token of the wrong kind to try on an endpoint.
enum Wrong {
    Runner,
    Ci,
    Webhook,
}

#[tokio::test]
async fn every_endpoint_refuses_no_token_a_wrong_token_and_the_wrong_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let base = server.base.clone();
    let f = fixture(&base).await;
    let (r, e, rule) = (&f.runner, &f.execution, &f.rule);
    let runner_body = json!({"name": "x", "type": "custom", "capacity": {"slots": 1, "cpu_millis": 1, "memory_mb": 1}});
    let report =
        json!({"shard_index": 0, "lease_id": "lse01ARZ3NDEKTSV4RRFFQ69G5FAV", "status": "started"});
    let endpoints: Vec<(Method, String, Option<Value>, Wrong)> = vec![
        (
            Method::POST,
            "/runners/register".into(),
            Some(runner_body),
            Wrong::Runner,
        ),
        (Method::GET, "/runners".into(), None, Wrong::Runner),
        (Method::GET, format!("/runners/{r}"), None, Wrong::Webhook),
        (
            Method::POST,
            format!("/runners/{r}/heartbeat"),
            Some(json!({})),
            Wrong::Ci,
        ),
        (
            Method::GET,
            format!("/runners/{r}/claimable"),
            None,
            Wrong::Ci,
        ),
        (Method::POST, format!("/runners/{r}/pause"), None, Wrong::Ci),
        (
            Method::POST,
            format!("/runners/{r}/resume"),
            None,
            Wrong::Ci,
        ),
        (
            Method::POST,
            format!("/runners/{r}/deregister"),
            None,
            Wrong::Ci,
        ),
        (
            Method::GET,
            format!("/runners/{r}/health"),
            None,
            Wrong::Runner,
        ),
        (
            Method::POST,
            "/executions/queue".into(),
            Some(json!({"suite": "s", "tests": ["a"]})),
            Wrong::Runner,
        ),
        (Method::GET, "/executions".into(), None, Wrong::Runner),
        (
            Method::GET,
            format!("/executions/{e}/status"),
            None,
            Wrong::Webhook,
        ),
        (
            Method::GET,
            format!("/executions/{e}/report"),
            None,
            Wrong::Webhook,
        ),
        (
            Method::POST,
            format!("/executions/{e}/cancel"),
            None,
            Wrong::Runner,
        ),
        (
            Method::POST,
            format!("/executions/{e}/retry"),
            None,
            Wrong::Webhook,
        ),
        (
            Method::POST,
            "/suites/s/timings".into(),
            Some(json!({"t": 1.0})),
            Wrong::Runner,
        ),
        (Method::GET, "/suites/s/flaky".into(), None, Wrong::Webhook),
        (
            Method::POST,
            "/load-balancing-rules".into(),
            Some(json!({"name": "n", "strategy": "priority"})),
            Wrong::Ci,
        ),
        (
            Method::GET,
            "/load-balancing-rules".into(),
            None,
            Wrong::Runner,
        ),
        (
            Method::DELETE,
            format!("/load-balancing-rules/{rule}"),
            None,
            Wrong::Ci,
        ),
        (
            Method::POST,
            format!("/webhooks/parallel-execution/{e}"),
            Some(report),
            Wrong::Ci,
        ),
        (
            Method::GET,
            format!("/webhooks/parallel-execution/{e}/shards/0"),
            None,
            Wrong::Runner,
        ),
        (
            Method::POST,
            format!("/webhooks/parallel-execution/{e}/shards/0/claim"),
            None,
            Wrong::Runner,
        ),
        (
            Method::POST,
            format!("/executions/{e}/claims"),
            None,
            Wrong::Ci,
        ),
        (
            Method::GET,
            "/resources/utilization".into(),
            None,
            Wrong::Webhook,
        ),
        (Method::GET, "/metrics".into(), None, Wrong::Runner),
        (
            Method::POST,
            "/alert-rules".into(),
            Some(json!({"name": "n", "metric": "queue_depth", "threshold": 1.0})),
            Wrong::Ci,
        ),
        (Method::GET, "/alert-rules".into(), None, Wrong::Runner),
        (
            Method::DELETE,
            "/alert-rules/alr01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            None,
            Wrong::Ci,
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "n", "scope": "ci"})),
            Wrong::Ci,
        ),
    ];
    let http = client();
    let forged_runner = format!("tms_{r}_{}", "0".repeat(48));
    let forged_job = format!("tms_{e}.0_{}", "0".repeat(48));
    for (method, path, body, wrong) in &endpoints {
        let wrong_scope = match wrong {
            Wrong::Runner => &f.runner_token,
            Wrong::Ci => &f.ci,
            Wrong::Webhook => &f.webhook,
        };
        let attempts: [(Option<&str>, StatusCode, &str); 5] = [
            (None, StatusCode::UNAUTHORIZED, "no token"),
            (
                Some("not-a-token"),
                StatusCode::UNAUTHORIZED,
                "garbage token",
            ),
            (
                Some(&forged_runner),
                StatusCode::UNAUTHORIZED,
                "forged runner token",
            ),
            (
                Some(&forged_job),
                StatusCode::UNAUTHORIZED,
                "forged dispatched-job token",
            ),
            (Some(wrong_scope), StatusCode::FORBIDDEN, "wrong scope"),
        ];
        for (token, want, what) in attempts {
            let mut req = http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), want, "{method} {path} with {what}");
            let problem: Value = resp.json().await.unwrap();
            assert_eq!(problem["status"], want.as_u16());
        }
    }
    // The ci token does what a pipeline needs.
    let resp = http
        .get(format!("{base}/executions/{e}/status"))
        .bearer_auth(&f.ci)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Health stays open for load balancers.
    let resp = http
        .get(format!("{base}/system/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
