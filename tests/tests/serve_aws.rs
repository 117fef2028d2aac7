//! `tms serve --backend aws`: the local server on DynamoDB, SQS and
//! EventBridge (moto), its schedule and aggregate work arriving through the
//! real queues and the bus's rule, exactly as on Lambda.

use reqwest::Method;
use serde_json::{json, Value};
use std::process::Command;
use tms_tests::{client, eventually, moto, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");
const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
];

async fn call(base: &str, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
    let mut request = client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_aws_backend_runs_an_execution_through_the_queues_and_bus() {
    let dir = tempfile::tempdir().unwrap();
    let stage = moto::unique_name("serve");
    let endpoint = moto::endpoint();
    let (server, _) = Server::start_with_env(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &[
            "--backend",
            "aws",
            "--endpoint-url",
            &endpoint,
            "--stage",
            &stage,
            "--create-resources",
        ],
        &AWS_ENV,
    );
    let base = server.base.clone();
    let runner = call(&base, Method::POST, "/runners/register", ADMIN_TOKEN, Some(json!({
        "name": "r", "type": "custom", "capacity": {"slots": 2, "cpu_millis": 8000, "memory_mb": 16384}})))
    .await;
    let (runner_id, runner_token) = (
        runner["id"].as_str().unwrap(),
        runner["token"].as_str().unwrap(),
    );
    let queued = call(
        &base,
        Method::POST,
        "/executions/queue",
        ADMIN_TOKEN,
        Some(json!({"suite": "aws", "tests": ["a", "b", "c"], "parallelism": 2})),
    )
    .await;
    let (execution, webhook) = (
        queued["id"].as_str().unwrap(),
        queued["webhook_token"].as_str().unwrap(),
    );

    let heartbeat = format!("/runners/{runner_id}/heartbeat");
    let work = eventually("assignment through the schedule queue", || async {
        let beat = call(
            &base,
            Method::POST,
            &heartbeat,
            runner_token,
            Some(json!({})),
        )
        .await;
        let work = beat["assignments"].as_array().cloned().unwrap_or_default();
        (work.len() == 2).then_some(Value::Array(work))
    })
    .await;
    for a in work.as_array().unwrap() {
        let n = a["tests"].as_array().unwrap().len();
        call(&base, Method::POST, &format!("/webhooks/parallel-execution/{execution}"), webhook,
            Some(json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"], "status": "passed",
                "results": {"passed": n, "failed": 0, "skipped": 0}}))).await;
    }
    let status_path = format!("/executions/{execution}/status");
    let done = eventually(
        "aggregation through the bus and the aggregate queue",
        || async {
            let status = call(&base, Method::GET, &status_path, ADMIN_TOKEN, None).await;
            (status["status"] == "passed").then_some(status)
        },
    )
    .await;
    assert_eq!(done["totals"]["passed"], 3, "{done}");
}

#[tokio::test]
async fn serve_on_the_aws_backend_names_a_missing_resource_instead_of_creating_it() {
    let dir = tempfile::tempdir().unwrap();
    let stage = moto::unique_name("absent");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "aws",
            "--stage",
            &stage,
        ])
        .args(["--endpoint-url", &moto::endpoint(), "--data-dir"])
        .arg(dir.path())
        .envs(AWS_ENV)
        .env("TMS_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("tms-{stage}")) && stderr.contains("--create-resources"),
        "{stderr}"
    );
}
