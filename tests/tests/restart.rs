//! Durability: acknowledged writes survive `kill -9` of `tms serve`.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tms_tests::{client, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");

async fn send(method: reqwest::Method, url: String, token: &str, body: Option<Value>) -> Value {
    let mut req = client().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.json().await.unwrap()
}

#[tokio::test]
async fn every_acknowledged_write_is_there_after_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let base = server.base.clone();
    let runner = send(reqwest::Method::POST, format!("{base}/runners/register"), ADMIN_TOKEN,
        Some(json!({"name": "r", "type": "gitlab", "capacity": {"slots": 50, "cpu_millis": 100000, "memory_mb": 100000}}))).await;
    let (rid, rtoken) = (
        runner["id"].as_str().unwrap().to_owned(),
        runner["token"].as_str().unwrap().to_owned(),
    );
    let mut executions = Vec::new();
    for i in 0..30 {
        let e = send(
            reqwest::Method::POST,
            format!("{base}/executions/queue"),
            ADMIN_TOKEN,
            Some(json!({"suite": format!("s{i}"), "tests": ["a", "b"], "parallelism": 1})),
        )
        .await;
        executions.push((
            e["id"].as_str().unwrap().to_owned(),
            e["webhook_token"].as_str().unwrap().to_owned(),
        ));
    }
    // Finish the first ten; each acknowledged report must survive.
    let start = Instant::now();
    let mut finished = Vec::new();
    while finished.len() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "assignments did not arrive"
        );
        let hb = send(
            reqwest::Method::POST,
            format!("{base}/runners/{rid}/heartbeat"),
            &rtoken,
            Some(json!({})),
        )
        .await;
        for a in hb["assignments"].as_array().unwrap() {
            if finished.len() == 10 {
                break;
            }
            let exec = a["execution_id"].as_str().unwrap().to_owned();
            let body = json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"], "status": "passed",
                "results": {"passed": 2, "failed": 0, "skipped": 0}});
            send(
                reqwest::Method::POST,
                format!("{base}/webhooks/parallel-execution/{exec}"),
                &rtoken,
                Some(body),
            )
            .await;
            finished.push(exec);
        }
    }
    server.kill_hard();

    let server = start_server(dir.path());
    let base = server.base.clone();
    let runner = send(
        reqwest::Method::GET,
        format!("{base}/runners/{rid}"),
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(runner["name"], "r");
    for (id, _) in &executions {
        let s = send(
            reqwest::Method::GET,
            format!("{base}/executions/{id}/status"),
            ADMIN_TOKEN,
            None,
        )
        .await;
        assert_eq!(s["id"], id.as_str());
        if finished.contains(id) {
            assert_eq!(
                s["shards"][0]["status"], "passed",
                "acknowledged report of {id} survived"
            );
        }
    }
    // Executions whose fold was cut off by the kill are completed by the sweep.
    let start = Instant::now();
    loop {
        let mut passed = 0;
        for id in &finished {
            let s = send(
                reqwest::Method::GET,
                format!("{base}/executions/{id}/status"),
                ADMIN_TOKEN,
                None,
            )
            .await;
            passed += usize::from(s["status"] == "passed");
        }
        if passed == finished.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "only {passed} of {} passed",
            finished.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The runner's token still works after the restart.
    send(
        reqwest::Method::POST,
        format!("{base}/runners/{rid}/heartbeat"),
        &rtoken,
        Some(json!({})),
    )
    .await;
}

#[tokio::test]
async fn without_an_admin_token_one_is_created_once_printed_once_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (server, printed) = Server::start_with(BIN, dir.path(), None, &[]);
    let line = printed
        .iter()
        .find(|l| l.contains("admin token"))
        .expect("token printed on first start");
    let token = line.rsplit(' ').next().unwrap().to_owned();
    assert!(admits(&server, &token).await);
    server.kill_hard();
    let (server, printed) = Server::start_with(BIN, dir.path(), None, &[]);
    assert!(
        printed.iter().all(|l| !l.contains("admin token")),
        "shown only once"
    );
    assert!(admits(&server, &token).await);
}

/// Whether the server accepts `token` for an admin call.
async fn admits(server: &Server, token: &str) -> bool {
    let url = format!("{}/runners", server.base);
    let resp = client().get(&url).bearer_auth(token).send().await.unwrap();
    resp.status().is_success()
}

/// `tms serve` on `dir`, sweeping every second so a restart catches up fast.
fn start_server(dir: &std::path::Path) -> Server {
    Server::start_with(BIN, dir, Some(ADMIN_TOKEN), &["--sweep-interval", "1"]).0
}

#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let _first = start_server(dir.path());
    let second = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("TMS_ADMIN_TOKEN", "t")
        .output()
        .expect("run a second tms serve");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another tms serve"),
        "a clear reason, not a storage failure: {stderr}"
    );
}
