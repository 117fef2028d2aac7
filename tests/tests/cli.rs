//! The `tms` CI commands end to end: a real `tms serve` on a free port, the
//! `tms` binary as a CI step would run it, and a runner played by the test
//! over HTTP. `tms queue --wait` exits 0 passed, 1 tests failed, 2 errored /
//! timed out / cancelled; status, report (merged JUnit), cancel, retry,
//! runners and token creation work and fail in one readable line.

use serde_json::{json, Value};
use std::process::{Command, Output};
use std::time::Duration;
use tms_tests::{client, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");

/// Runs `tms ARGS` against `server` with `token`, off the async runtime.
async fn tms(server: &Server, token: &str, args: &[&str]) -> Output {
    let (url, token) = (server.url.clone(), token.to_owned());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        tms_tests::tms_command(BIN, &url, &token)
            .args(&args)
            .output()
            .expect("run tms")
    })
    .await
    .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A runner over HTTP: registers, then for `rounds` heartbeats reports each
/// shard it is given, failing the tests named in `failing`.
async fn play_runner(base: String, failing: Vec<&'static str>, rounds: usize) {
    let http = client();
    let reg: Value = http
        .post(format!("{base}/runners/register"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "ci-runner", "type": "custom", "labels": [], "capacity": {"slots": 4, "cpu_millis": 8000, "memory_mb": 8192}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, token) = (
        reg["id"].as_str().unwrap().to_owned(),
        reg["token"].as_str().unwrap().to_owned(),
    );
    for _ in 0..rounds {
        let beat: Value = http
            .post(format!("{base}/runners/{id}/heartbeat"))
            .bearer_auth(&token)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for a in beat["assignments"].as_array().unwrap() {
            if a["status"] != "assigned" {
                continue;
            }
            let tests: Vec<Value> = a["tests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let bad = failing.contains(&t.as_str().unwrap());
                    json!({"name": t, "status": if bad { "failed" } else { "passed" }, "duration_ms": 5})
                })
                .collect();
            let failed = tests.iter().filter(|t| t["status"] == "failed").count();
            let body = json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"],
                "status": if failed > 0 { "failed" } else { "passed" },
                "results": {"passed": tests.len() - failed, "failed": failed, "skipped": 0, "tests": tests}});
            http.post(format!(
                "{base}/webhooks/parallel-execution/{}",
                a["execution_id"].as_str().unwrap()
            ))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn queue_wait_exits_0_for_a_passing_suite_and_1_for_a_failing_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let runner = tokio::spawn(play_runner(server.base.clone(), vec!["t_bad"], 200));

    let ok = tms(
        &server,
        ADMIN_TOKEN,
        &[
            "queue",
            "--suite",
            "api",
            "--parallelism",
            "2",
            "--wait",
            "--poll-ms",
            "100",
            "t1",
            "t2",
            "t3",
        ],
    )
    .await;
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let line = text(&ok.stdout);
    assert!(
        line.contains("passed — 2/2 shards, 3 passed, 0 failed"),
        "{line}"
    );

    let dir2 = tempfile::tempdir().unwrap();
    let tests_file = dir2.path().join("tests.txt");
    std::fs::write(&tests_file, "# the suite\nt_good\nt_bad\n").unwrap();
    let failed = tms(
        &server,
        ADMIN_TOKEN,
        &[
            "queue",
            "--suite",
            "api",
            "--tests-file",
            tests_file.to_str().unwrap(),
            "--wait",
            "--json",
            "--poll-ms",
            "100",
        ],
    )
    .await;
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed.stderr));
    let done: Value =
        serde_json::from_slice(&failed.stdout).expect("--json prints the final status");
    assert_eq!(done["status"], "failed");
    assert_eq!(done["totals"]["failed"], 1);
    let id = done["id"].as_str().unwrap().to_owned();

    // The merged JUnit report of that run, as CI would archive it.
    let report = dir2.path().join("junit.xml");
    let out = tms(
        &server,
        ADMIN_TOKEN,
        &["report", &id, "--junit", report.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let xml = std::fs::read_to_string(&report).unwrap();
    tms_tests::assert_valid_junit(&xml);
    assert!(
        xml.contains(r#"name="t_bad""#) && xml.contains("<failure"),
        "{xml}"
    );

    // Status of a finished execution exits like its verdict.
    let st = tms(&server, ADMIN_TOKEN, &["status", &id]).await;
    assert_eq!(st.status.code(), Some(1));
    assert!(
        text(&st.stdout).contains("shard   0 failed"),
        "{}",
        text(&st.stdout)
    );

    // Runners are listed.
    let runners = tms(&server, ADMIN_TOKEN, &["runners"]).await;
    assert!(
        text(&runners.stdout).contains("ci-runner"),
        "{}",
        text(&runners.stdout)
    );
    runner.abort();
}

#[tokio::test]
async fn queue_with_no_tests_is_refused_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    // A pipeline whose test discovery found nothing must not run the
    // whole suite or pass green: no names, and an empty tests file.
    let empty = dir.path().join("tests.txt");
    std::fs::write(&empty, "# nothing selected\n\n").unwrap();
    let empty = empty.to_string_lossy().into_owned();
    for args in [
        vec!["queue", "--suite", "x"],
        vec!["queue", "--suite", "x", "--tests-file", &empty],
    ] {
        let out = tms(&server, ADMIN_TOKEN, &args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("nothing to queue"), "{err}");
        assert!(err.contains("--tests-file"), "{err}");
    }
    let listed = client()
        .get(format!("{}/executions", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]), "{listed}");
}

#[tokio::test]
async fn a_cancelled_run_exits_2_and_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    // No runner: the execution waits in the queue until cancelled.
    let queued = tms(
        &server,
        ADMIN_TOKEN,
        &["queue", "--suite", "slow", "--json", "t1"],
    )
    .await;
    assert!(queued.status.success(), "{}", text(&queued.stderr));
    let id = serde_json::from_slice::<Value>(&queued.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancel = tms(&server, ADMIN_TOKEN, &["cancel", &id]).await;
    assert!(cancel.status.success(), "{}", text(&cancel.stderr));
    assert!(text(&cancel.stdout).contains("cancelled"));
    let st = tms(&server, ADMIN_TOKEN, &["status", &id]).await;
    assert_eq!(st.status.code(), Some(2));

    // A CI token made with the CLI queues; it may not create tokens.
    let made = tms(
        &server,
        ADMIN_TOKEN,
        &["token", "create", "--scope", "ci", "--name", "pipeline"],
    )
    .await;
    assert!(made.status.success(), "{}", text(&made.stderr));
    let ci_token = text(&made.stdout).trim().to_owned();
    let with_ci = tms(&server, &ci_token, &["queue", "--suite", "x", "t1"]).await;
    assert!(with_ci.status.success(), "{}", text(&with_ci.stderr));
    let denied = tms(&server, &ci_token, &["token", "create"]).await;
    assert_eq!(denied.status.code(), Some(1));
    let err = text(&denied.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("403"), "{err}");

    // Wrong token, unreachable server, unknown execution: one line each.
    let wrong = tms(&server, "nope", &["status", &id]).await;
    assert!(text(&wrong.stderr).contains("401"));
    let missing = tms(
        &server,
        ADMIN_TOKEN,
        &["status", "exe01ARZ3NDEKTSV4RRFFQ69G5FAV"],
    )
    .await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("404"),
        "{}",
        text(&missing.stderr)
    );
    drop(server);
    let gone = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["status", "exe01ARZ3NDEKTSV4RRFFQ69G5FAV"])
            .env("TMS_URL", "http://127.0.0.1:9")
            .env("TMS_TOKEN", "t")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = text(&gone.stderr);
    assert!(err.contains("cannot reach the TMS server"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
