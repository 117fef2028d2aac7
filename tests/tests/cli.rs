//! The `tms` CI commands end to end: a real `tms serve` on a free port, the
//! `tms` binary as a CI step would run it, and a runner played by the test
//! over HTTP. `tms queue --wait` exits 0 passed, 1 tests failed, 2 errored /
//! timed out / cancelled, 3 no verdict from TMS (unreachable past its
//! patience, a refused call), 64 a wrong command line; it rides out a
//! server restart, speaks at least once per keep-alive while it waits, and
//! cancels its execution when it is stopped; status, report (merged
//! JUnit), cancel, retry, runners and token creation work and fail in one
//! readable line.

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
    assert!(
        text(&st.stdout).contains("ci-runner"),
        "runners by name: {}",
        text(&st.stdout)
    );

    // Runners are listed, and removed by name's id; removed ones only with --all.
    let runners = tms(&server, ADMIN_TOKEN, &["runners", "--json"]).await;
    let listed: Value = serde_json::from_slice(&runners.stdout).unwrap();
    let ci_runner = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ci-runner")
        .unwrap_or_else(|| panic!("{listed}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    runner.abort();
    let removed = tms(&server, ADMIN_TOKEN, &["runners", "rm", &ci_runner]).await;
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert!(text(&removed.stdout).contains("removed runner ci-runner"));
    let runners = tms(&server, ADMIN_TOKEN, &["runners"]).await;
    assert!(
        !text(&runners.stdout).contains("ci-runner"),
        "{}",
        text(&runners.stdout)
    );
    let all = tms(&server, ADMIN_TOKEN, &["runners", "--all"]).await;
    assert!(
        text(&all.stdout).contains("deregistered"),
        "{}",
        text(&all.stdout)
    );
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
        assert_eq!(out.status.code(), Some(3), "{args:?}");
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
    assert_eq!(
        denied.status.code(),
        Some(3),
        "a refused call is not a test failure"
    );
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
    assert_eq!(missing.status.code(), Some(3));
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
    assert_eq!(gone.status.code(), Some(3), "no verdict: {err}");
    // A wrong command line is neither a verdict nor TMS's refusal.
    let usage = Command::new(BIN).args(["queue", "t1"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(64), "{}", text(&usage.stderr));
}

/// Output for a pipe or a file is plain text, and a reader that goes away
/// early (`tms status ID | head -1`) ends the command quietly.
#[tokio::test]
async fn output_to_pipes_and_files_is_plain_and_a_closed_pipe_is_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut serve = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env("TMS_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logged = tms_tests::eventually("the server logs", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (!text.is_empty()).then_some(text)
    })
    .await;
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        !logged.contains('\u{1b}'),
        "colour codes in a file: {logged:?}"
    );

    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let mut reader = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args(["runners"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command writes anything.
    drop(reader.stdout.take());
    let out = tokio::task::spawn_blocking(move || reader.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

/// SIGTERM, as a CI system stops a cancelled job's step.
fn terminate(child: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Starts `tms queue --wait ARGS` in the background against `url`.
fn spawn_wait(url: &str, args: &[&str]) -> std::process::Child {
    tms_tests::tms_command(BIN, url, ADMIN_TOKEN)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tms queue --wait")
}

/// The executions the server lists, newest first.
async fn listed(base: &str) -> Vec<Value> {
    let page: Value = client()
        .get(format!("{base}/executions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn queue_wait_rides_out_a_server_restart_and_cancels_its_execution_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let url = server.url.clone();
    let waiter = spawn_wait(
        &url,
        &[
            "queue",
            "--suite",
            "api",
            "--wait",
            "--poll-ms",
            "100",
            "--keep-alive",
            "1",
            "--patience",
            "60",
            "t1",
            "t_bad",
        ],
    );
    tms_tests::eventually("the execution queued", || async {
        (!listed(&server.base).await.is_empty()).then_some(())
    })
    .await;
    // Nothing moves for a while: the wait still says so every second.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    // The server dies under the wait and comes back on the same address.
    server.kill_hard();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let server = Server::restart_at(BIN, &url, dir.path(), Some(ADMIN_TOKEN));
    let runner = tokio::spawn(play_runner(server.base.clone(), vec!["t_bad"], 200));
    let out = tokio::task::spawn_blocking(move || waiter.wait_with_output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "the tests failed: {stderr}");
    assert!(stderr.contains("trying again"), "{stderr}");
    assert!(stderr.contains("the server answers again"), "{stderr}");
    let waiting = stderr
        .lines()
        .filter(|l| l.contains("queued: 0/1 shards"))
        .count();
    assert!(
        waiting >= 2,
        "a keep-alive line while nothing moved: {stderr}"
    );
    // The summary names the failing test with its message's first line.
    assert!(stdout.contains("1 failing test:"), "{stdout}");
    assert!(stdout.contains("  t_bad (failed)"), "{stdout}");
    runner.abort();

    // A stopped wait (the CI job was cancelled) cancels its execution...
    let waiter = spawn_wait(
        &url,
        &[
            "queue",
            "--suite",
            "idle",
            "--wait",
            "--poll-ms",
            "100",
            "t9",
        ],
    );
    let id = tms_tests::eventually("the second execution queued", || async {
        listed(&server.base)
            .await
            .into_iter()
            .find(|e| e["suite"] == "idle")
            .and_then(|e| e["id"].as_str().map(str::to_owned))
    })
    .await;
    terminate(&waiter);
    let out = tokio::task::spawn_blocking(move || waiter.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let st = tms(&server, ADMIN_TOKEN, &["status", &id, "--json"]).await;
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["status"], "cancelled", "{st}");
    // ...unless it was told to leave it running.
    let waiter = spawn_wait(
        &url,
        &[
            "queue",
            "--suite",
            "kept",
            "--wait",
            "--leave-running",
            "--poll-ms",
            "100",
            "t8",
        ],
    );
    let id = tms_tests::eventually("the third execution queued", || async {
        listed(&server.base)
            .await
            .into_iter()
            .find(|e| e["suite"] == "kept")
            .and_then(|e| e["id"].as_str().map(str::to_owned))
    })
    .await;
    terminate(&waiter);
    tokio::task::spawn_blocking(move || waiter.wait_with_output().unwrap())
        .await
        .unwrap();
    let st = tms(&server, ADMIN_TOKEN, &["status", &id, "--json"]).await;
    let st: Value = serde_json::from_slice(&st.stdout).unwrap();
    // Queued, or already handed to the runner registered above.
    assert!(
        matches!(st["status"].as_str(), Some("queued" | "running")),
        "{st}"
    );
}

/// The client, built without the server, names the API's base path itself:
/// it is the server's.
#[test]
fn the_clients_api_base_path_is_the_servers() {
    assert_eq!(tms_cli::client::API_BASE_PATH, tms::http::BASE_PATH);
}
