//! Report ingestion on the serverless deployment (moto): one shard of 200
//! test files whose report holds n test cases, reported through the webhook function's handler, then folded by
//! the aggregator's. Prints, per size, each function's wall time and its
//! DynamoDB requests, as the markdown table in `docs/performance.md`.
//! Needs the moto server (`eval "$(scripts/moto start)"`).
//!
//! `report-bench [SIZES...]` (default 1000 5000 20000).

use serde_json::json;
use std::time::Instant;
use tms_tests::serverless::Deployment;

struct Row {
    tests: usize,
    body_kb: usize,
    webhook_ms: u128,
    webhook_requests: u64,
    aggregator_ms: u128,
    aggregator_requests: u64,
}

async fn measure(tests: usize) -> Row {
    let d = Deployment::start().await;
    let runner = d.register_with_slots("bench", 1).await;
    // Queued by file, as pytest suites usually are; the report names cases.
    let files: Vec<String> = (0..200)
        .map(|f| format!("tests/test_module_{f:03}.py"))
        .collect();
    let names: Vec<String> = (0..tests)
        .map(|i| format!("{}::test_case_{i}", files[i % 200]))
        .collect();
    let (execution, token) = d
        .queue(json!({"suite": "bench", "tests": files, "parallelism": 1}))
        .await;
    d.run_scheduler().await;
    let work = d.heartbeat(&runner).await;
    let a = &work[0];
    let results: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"name": n, "status": "passed", "duration_ms": 5 + (i % 900) as u64}))
        .collect();
    let body = json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"],
        "status": "passed",
        "results": {"passed": tests, "failed": 0, "skipped": 0, "tests": results}});
    let body_kb = body.to_string().len() / 1024;

    let before = d.meter.usage();
    let started = Instant::now();
    let (status, answer) = d.report(&execution, &token, body).await;
    let webhook_ms = started.elapsed().as_millis();
    assert!(status < 300, "{status} {answer}");
    let after_webhook = d.meter.usage();

    let started = Instant::now();
    assert_eq!(d.run_aggregator().await, 1);
    let aggregator_ms = started.elapsed().as_millis();
    let after_aggregator = d.meter.usage();
    let done = d.status(&execution).await;
    assert_eq!(done["status"], "passed", "{done}");
    assert_eq!(done["totals"]["passed"], tests as u64, "{done}");

    Row {
        tests,
        body_kb,
        webhook_ms,
        webhook_requests: after_webhook.minus(&before).count("DynamoDB."),
        aggregator_ms,
        aggregator_requests: after_aggregator.minus(&after_webhook).count("DynamoDB."),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number of tests"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 5_000, 20_000]
    } else {
        sizes
    };
    println!("| tests | report | webhook function | its DynamoDB requests | aggregator function | its DynamoDB requests |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let r = measure(n).await;
        println!(
            "| {} | {} KB | {} ms | {} | {} ms | {} |",
            r.tests,
            r.body_kb,
            r.webhook_ms,
            r.webhook_requests,
            r.aggregator_ms,
            r.aggregator_requests
        );
    }
}
