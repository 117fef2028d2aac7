//! `tms agent` end to end: `tms serve`, real agent processes running a
//! stand-in test tool (`tests/fixtures/agent/fake_suite.py`, which writes a
//! JUnit report), and `tms queue --wait` deciding the CI step's exit code.
//! An agent killed mid-shard has its shard finished by another.

use serde_json::Value;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tms_tests::{Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");
const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/agent/fake_suite.py");

/// An agent process; killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tms serve` on a fresh data directory (kept alive by the first value)
/// and a work directory for the agents' files.
fn start() -> (tempfile::TempDir, Server, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, data.path(), Some(ADMIN_TOKEN));
    (data, server, tempfile::tempdir().unwrap())
}

fn three_agents(server: &Server, dir: &std::path::Path) -> Vec<Agent> {
    ["a1", "a2", "a3"]
        .iter()
        .map(|n| agent(server, dir, n))
        .collect()
}

fn agent(server: &Server, dir: &std::path::Path, name: &str) -> Agent {
    agent_with(server, dir, name, |c| c)
}

/// An agent, with `more` adding flags (and environment) to its command.
fn agent_with(
    server: &Server,
    dir: &std::path::Path,
    name: &str,
    more: impl FnOnce(&mut Command) -> &mut Command,
) -> Agent {
    agent_at(&server.url, dir, name, more)
}

/// [`agent_with`] for the server at `url` (which may not be there yet).
fn agent_at(
    url: &str,
    dir: &std::path::Path,
    name: &str,
    more: impl FnOnce(&mut Command) -> &mut Command,
) -> Agent {
    spawn_agent(url, dir, name, more, true)
}

/// The suites the tests here queue: what their agents declare.
const SUITES: [&str; 2] = ["--suite", "fake,split"];

/// An agent of the stand-in tool, told where its JUnit report is when
/// `read_junit`; without, it has the tool's exit status alone. It declares
/// [`SUITES`] unless `more` declares what it takes.
fn spawn_agent(
    url: &str,
    dir: &std::path::Path,
    name: &str,
    more: impl FnOnce(&mut Command) -> &mut Command,
    read_junit: bool,
) -> Agent {
    let junit = dir.join("{shard}.xml");
    let mut command = Command::new(BIN);
    command.env("FAKE_MARKER", dir.join("once.marker"));
    command.args(["agent", "--name", name, "--slots", "1", "--poll-ms", "100"]);
    more(&mut command);
    let declared = command.get_args().any(|a| {
        [
            "--suite",
            "--project",
            "--any-suite",
            "--labels",
            "--execution",
        ]
        .iter()
        .any(|flag| a.to_str().is_some_and(|a| a.starts_with(flag)))
    });
    if !declared {
        command.args(SUITES);
    }
    if read_junit {
        command.arg("--junit").arg(&junit);
    }
    let child = command
        .arg("--state-file")
        .arg(dir.join(format!("{name}.json")))
        .args(["--", "python3", SUITE])
        .arg(junit.to_str().unwrap())
        .arg("{tests}")
        .env("TMS_URL", url)
        .env("TMS_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        // What the agent says goes to `<name>.log` beside its state file.
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("start tms agent");
    Agent(child)
}

/// The command ended with exit code `code` (its stderr shown if not).
fn exits(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn queue(server: &Server, args: &[&str]) -> Output {
    queue_at(server.url.clone(), args).await
}

/// `tms queue ARGS --wait --json` against the server at `url`.
async fn queue_at(url: String, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        tms_tests::tms_command(BIN, &url, ADMIN_TOKEN)
            .arg("queue")
            .args(&args)
            .args(["--wait", "--json", "--poll-ms", "100"])
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// An agent started before its server (or during a restart) waits for it,
/// asking again with backoff, instead of exiting; once the server is up it
/// registers and works.
#[tokio::test]
async fn an_agent_started_before_its_server_waits_for_it() {
    let (data, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A free port with nothing listening on it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let _agent = agent_at(&url, work.path(), "early", |c| c);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let server = Server::restart_at(BIN, &url, data.path(), Some(ADMIN_TOKEN));
    let out = queue(&server, &["--suite", "fake", "test_1"]).await;
    exits(&out, 0);
    let log = std::fs::read_to_string(work.path().join("early.log")).unwrap();
    assert!(log.contains("cannot reach the TMS server"), "{log}");
    assert!(log.contains("trying again"), "{log}");
}

#[tokio::test]
async fn agents_run_a_suite_in_parallel_and_queue_wait_exits_by_the_verdict() {
    let (_data, server, work) = start();
    let _agents = three_agents(&server, work.path());

    let tests: Vec<String> = (0..9).map(|i| format!("test_{i}")).collect();
    let mut args = vec!["--suite", "fake", "--parallelism", "3"];
    args.extend(tests.iter().map(String::as_str));
    let ok = queue(&server, &args).await;
    exits(&ok, 0);
    let done: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(done["totals"]["passed"], 9);
    let runners: std::collections::BTreeSet<&str> = done["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["runner_id"].as_str())
        .collect();
    assert_eq!(runners.len(), 3, "three agents shared the work: {done}");

    let merged = work.path().join("merged.xml");
    let bad = queue(
        &server,
        &[
            "--suite",
            "fake",
            "--parallelism",
            "2",
            "--junit",
            merged.to_str().unwrap(),
            "test_ok",
            "test_bad",
        ],
    )
    .await;
    exits(&bad, 1);
    let done: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(
        (
            done["totals"]["passed"].as_u64(),
            done["totals"]["failed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // The gate step also wrote the merged report for the CI's test view.
    let xml = std::fs::read_to_string(&merged).unwrap();
    tms_tests::assert_valid_junit(&xml);
    assert!(
        xml.contains("test_bad") && xml.contains("<failure"),
        "{xml}"
    );
}

#[tokio::test]
async fn a_shard_past_its_deadline_is_killed_and_the_run_is_not_passed() {
    let (_data, server, work) = start();
    let _a = agent(&server, work.path(), "a1");
    let started = std::time::Instant::now();
    let out = queue(
        &server,
        &[
            "--suite",
            "fake",
            "--timeout",
            "30",
            "--max-attempts-is-not-a-flag-so",
            "x",
        ],
    )
    .await;
    // An unknown flag is a usage error (64), not a run.
    assert_eq!(out.status.code(), Some(64));
    let out = queue(&server, &["--suite", "fake", "--timeout", "3", "test_slow"]).await;
    exits(&out, 2);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the 60 s test was not waited for"
    );
}

#[tokio::test]
async fn an_agent_killed_mid_shard_has_its_shard_finished_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &["--heartbeat-interval", "1", "--sweep-interval", "1"],
    );
    let work = tempfile::tempdir().unwrap();
    let first = agent(&server, work.path(), "a1");
    let url = server.url.clone();
    let waiting =
        tokio::spawn(
            async move { queue_at(url, &["--suite", "fake", "test_once", "test_fine"]).await },
        );
    // a1 is inside the long test: kill it (and its test) hard.
    let marker = work.path().join("once.marker");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "a1 never started the shard"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(first);
    let _second = agent(&server, work.path(), "a2");
    let out = waiting.await.unwrap();
    exits(&out, 0);
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["totals"]["passed"], 2);
    assert_eq!(done["shards"][0]["attempt"], 2, "{done}");
}

#[tokio::test]
async fn agents_claim_the_batches_of_a_dynamic_execution_until_the_tests_run_out() {
    let (_data, server, work) = start();
    let _agents = three_agents(&server, work.path());
    // Hints of 6 s each make every test a batch of its own (at least 5 s
    // of work per batch); the tests themselves take 20 ms.
    let durations: serde_json::Map<String, Value> = (0..12)
        .map(|i| (format!("test_{i}"), serde_json::json!(6.0)))
        .collect();
    let file = work.path().join("durations.json");
    std::fs::write(&file, Value::Object(durations).to_string()).unwrap();
    let out = queue(
        &server,
        &[
            "--suite",
            "fake",
            "--mode",
            "dynamic",
            "--parallelism",
            "3",
            "--tests-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    exits(&out, 0);
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["totals"]["passed"], 12, "{done}");
    let batches = done["shards"].as_array().unwrap();
    assert!(batches.len() > 3, "planned as batches, not shards: {done}");
    let runners: std::collections::BTreeSet<&str> = batches
        .iter()
        .filter_map(|s| s["runner_id"].as_str())
        .collect();
    assert!(runners.len() >= 2, "more than one agent claimed: {done}");
}

#[tokio::test]
async fn with_the_docker_executor_each_shard_runs_in_a_container_killed_by_name_at_its_deadline() {
    let (_data, server, work) = start();
    // A stand-in `docker` first on PATH: a committed executable, not one
    // written here, which a concurrently forked test process could hold
    // open for writing ("text file busy").
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/agent/bin");
    let log = work.path().join("docker.log");
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap());
    let _agent = agent_with(&server, work.path(), "boxed", |c| {
        c.env("PATH", &path)
            .env("FAKE_DOCKER_LOG", &log)
            .env("FAKE_DOCKER_IMAGE", "python:3.12-slim")
            .args(["--executor", "docker", "--image", "python:3.12-slim"])
            .arg("--docker-arg=--network=host")
    });

    let ok = queue(&server, &["--suite", "fake", "test_a", "test_b"]).await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}\nagent: {}\ndocker calls: {}",
        String::from_utf8_lossy(&ok.stdout),
        std::fs::read_to_string(work.path().join("boxed.log")).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let done: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(done["totals"]["passed"], 2, "{done}");
    let calls = |log: &std::path::Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let run = calls(&log).remove(0);
    let at = run.iter().position(|a| a == "python:3.12-slim").unwrap();
    assert_eq!(&run[..4], ["run", "--rm", "--init", "--name"]);
    assert!(run[4].starts_with("tms-"), "{run:?}");
    assert!(run[..at].contains(&"--network=host".to_string()), "{run:?}");
    let workdir = std::env::current_dir().unwrap();
    assert!(
        run.windows(2)
            .any(|w| w[0] == "-w" && w[1] == workdir.to_str().unwrap()),
        "{run:?}"
    );
    assert_eq!(&run[at + 1..at + 3], ["python3", SUITE], "{run:?}");
    assert_eq!(&run[at + 4..], ["test_a", "test_b"], "{run:?}");

    let out = queue(&server, &["--suite", "fake", "--timeout", "3", "test_slow"]).await;
    assert_eq!(out.status.code(), Some(2));
    // The agent kills the run's container by name before it reports.
    let calls = calls(&log);
    let name = calls
        .iter()
        .rev()
        .find(|c| c[0] == "run")
        .map(|c| c[4].clone())
        .unwrap();
    assert!(
        calls.contains(&vec!["kill".to_string(), name]),
        "the container was not killed: {calls:?}"
    );
}

#[tokio::test]
async fn agents_started_as_a_builds_parallel_jobs_work_one_execution_and_exit_with_its_verdict() {
    let (_data, server, work) = start();
    // The build's first job queues (no --wait) and hands the id on.
    let queued = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args([
            "queue",
            "--suite",
            "fake",
            "--mode",
            "dynamic",
            "--parallelism",
            "2",
        ])
        .args(["--quiet", "test_1", "test_2", "test_bad", "test_4"])
        .output()
        .unwrap();
    assert!(queued.status.success(), "{queued:?}");
    let id = String::from_utf8(queued.stdout).unwrap().trim().to_owned();
    assert!(id.starts_with("exe"), "only the id is printed: {id}");
    let mut jobs: Vec<Agent> = ["job-1", "job-2"]
        .iter()
        .map(|n| agent_with(&server, work.path(), n, |c| c.args(["--execution", &id])))
        .collect();
    // The gate job waits for the verdict.
    let gate = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args(["status", &id, "--wait", "--poll-ms", "100", "--json"])
        .output()
        .unwrap();
    assert_eq!(gate.status.code(), Some(1), "{gate:?}");
    let done: Value = serde_json::from_slice(&gate.stdout).unwrap();
    assert_eq!(done["totals"]["passed"], 3, "{done}");
    assert_eq!(done["totals"]["failed"], 1, "{done}");
    // Each job exits by itself with the same verdict, its runner gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for job in &mut jobs {
        let code = loop {
            if let Some(status) = job.0.try_wait().unwrap() {
                break status.code();
            }
            assert!(std::time::Instant::now() < deadline, "a job kept running");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(code, Some(1));
    }
    // Gone from the fleet; still in the record (`--all`).
    let runners = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args(["runners", "--json"])
        .output()
        .unwrap();
    let live: Value = serde_json::from_slice(&runners.stdout).unwrap();
    assert_eq!(live, serde_json::json!([]), "{live}");
    let runners = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args(["runners", "--json", "--all"])
        .output()
        .unwrap();
    let runners: Value = serde_json::from_slice(&runners.stdout).unwrap();
    let items = runners.as_array().unwrap();
    assert_eq!(items.len(), 2, "{runners}");
    assert!(
        items.iter().all(|r| r["status"] == "deregistered"),
        "{runners}"
    );
}

#[tokio::test]
async fn on_sigterm_an_agent_finishes_its_running_shard_takes_no_more_and_exits() {
    let (_data, server, work) = start();
    let mut a1 = agent(&server, work.path(), "a1");
    let queue_only = |tests: &[&str]| {
        let out = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
            .args(["queue", "--suite", "fake", "--quiet"])
            .args(tests)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let status = |id: &str| -> Value {
        let out = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
            .args(["status", id, "--json"])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let first = queue_only(&["test_nap"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status(&first)["shards"][0]["status"] != "running" {
        assert!(std::time::Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = a1.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let second = queue_only(&["test_later"]);
    let code = loop {
        if let Some(s) = a1.0.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent kept running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
    let done = status(&first);
    assert_eq!(
        done["status"], "passed",
        "the running shard finished: {done}"
    );
    let later = status(&second);
    assert_eq!(
        later["shards"][0]["status"], "queued",
        "no work taken after SIGTERM: {later}"
    );
    // Started again, the same runner resumes and takes the work.
    drop(a1);
    let _again = agent(&server, work.path(), "a1");
    let out = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args(["status", &second, "--wait", "--json", "--poll-ms", "100"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        done["shards"][0]["runner_id"],
        status(&first)["shards"][0]["runner_id"],
        "the same runner: {done}"
    );
}

/// A tool that writes a JUnit file per class (Surefire) or per project
/// (Playwright): `--junit` takes a glob, and the shard's report is every
/// file it matches, stale ones from an earlier run removed first.
#[tokio::test]
async fn an_agent_sends_every_junit_file_its_glob_matches_as_one_report() {
    let (_data, server, work) = start();
    let dir = work.path();
    let prefix = dir.join("{shard}");
    let child = Command::new(BIN)
        .env("FAKE_SPLIT", "1")
        .args([
            "agent",
            "--name",
            "split",
            "--slots",
            "1",
            "--poll-ms",
            "100",
        ])
        .args(SUITES)
        .arg("--junit")
        .arg(format!("{}-*.xml", prefix.to_str().unwrap()))
        .arg("--state-file")
        .arg(dir.join("split.json"))
        .args(["--", "python3", SUITE])
        .arg(prefix.to_str().unwrap())
        .arg("{tests}")
        .env("TMS_URL", &server.url)
        .env("TMS_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("split.log")).unwrap())
        .spawn()
        .expect("start tms agent");
    let _agent = Agent(child);
    let out = queue(
        &server,
        &[
            "--suite",
            "split",
            "--parallelism",
            "1",
            "test_a",
            "test_b",
            "test_bad",
            "test_c",
        ],
    )
    .await;
    let done: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{done}");
    assert_eq!(done["totals"]["passed"], 3, "{done}");
    assert_eq!(done["totals"]["failed"], 1, "{done}");
    assert_eq!(done["status"], "failed", "every test accounted for: {done}");
}

/// An agent told of no JUnit report has its command's exit status alone:
/// that is the batch's verdict, marked as such, and no test is counted as
/// passed or failed on its strength.
#[tokio::test]
async fn an_agent_without_junit_reports_its_commands_exit_status_as_a_whole() {
    let (_data, server, work) = start();
    let _a = spawn_agent(&server.url, work.path(), "plain", |c| c, false);
    let ok = queue(&server, &["--suite", "fake", "test_a", "test_b"]).await;
    exits(&ok, 0);
    let done: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(done["status"], "passed", "{done}");
    assert_eq!(done["totals"]["passed"], 0, "no test counted: {done}");
    assert_eq!(done["totals"]["shards_by_exit_status"], 1, "{done}");
    assert_eq!(
        done["status_reason"], "1 shard judged by exit status alone (no per-test results)",
        "{done}"
    );
    assert_eq!(done["shards"][0]["results"]["exit_code"], 0, "{done}");

    let bad = queue(&server, &["--suite", "fake", "test_ok", "test_bad"]).await;
    exits(&bad, 1);
    let done: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        done["status_reason"],
        "shard 0 failed: its command exited with status 1 (no per-test results)",
        "{done}"
    );
    assert_eq!(
        (
            done["totals"]["passed"].as_u64(),
            done["totals"]["failed"].as_u64()
        ),
        (Some(0), Some(0)),
        "{done}"
    );
}

/// `tms queue` with the environment a GitHub Actions job of `repository`
/// has (no CI at all with `None`), waiting for the verdict unless `args`
/// says otherwise.
async fn queue_from(server: &Server, repository: Option<&str>, args: &[&str]) -> Output {
    let mut command = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN);
    command
        .arg("queue")
        .args(args)
        .args(["--json", "--poll-ms", "100"]);
    if let Some(repository) = repository {
        // Each call a build of its own.
        static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(4242);
        let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        command.envs([
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", repository),
            ("GITHUB_RUN_ID", &run.to_string()),
        ]);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// The agent names that ran an execution's shards.
fn ran_by(server_runners: &Value, done: &Value) -> std::collections::BTreeSet<String> {
    let names: std::collections::BTreeMap<&str, &str> = server_runners
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    done["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["runner_id"].as_str())
        .map(|id| names[id].to_owned())
        .collect()
}

/// A server two checkouts share: an agent takes unlabelled work only of
/// the suites it declares or of its CI job's repository; work nobody
/// declared waits, saying so, instead of being run by whoever is free; an
/// agent declaring nothing at all is refused at start (exit 64); taking
/// any unlabelled work is `--any-suite`.
#[tokio::test]
async fn on_a_shared_server_each_agent_takes_only_the_work_it_is_meant_for() {
    let (_data, server, work) = start();
    let nothing = tokio::task::spawn_blocking({
        let (url, dir) = (server.url.clone(), work.path().to_owned());
        move || {
            tms_tests::tms_command(BIN, &url, ADMIN_TOKEN)
                .args(["agent", "--name", "idle", "--state-file"])
                .arg(dir.join("idle.json"))
                .args(["--", "true"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(nothing.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("would take no work"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );

    // The shop's agent runs in its CI job (its repository declared by the
    // job's environment); the shelf's serves the suite it names.
    let _shop = agent_with(&server, work.path(), "shop-agent", |c| {
        c.envs([
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "acme/shop"),
        ])
    });
    let _shelf = agent_with(&server, work.path(), "shelf-agent", |c| {
        c.args(["--suite", "shelf-unit"])
    });
    let shop = queue_from(
        &server,
        Some("acme/shop"),
        &[
            "--suite",
            "unit",
            "--parallelism",
            "2",
            "--wait",
            "test_1",
            "test_2",
        ],
    )
    .await;
    let shelf = queue_from(
        &server,
        None,
        &[
            "--suite",
            "shelf-unit",
            "--parallelism",
            "2",
            "--wait",
            "test_3",
            "test_4",
        ],
    )
    .await;
    for out in [&shop, &shelf] {
        exits(out, 0);
    }
    let runners = runners_now(&server);
    let shop: Value = serde_json::from_slice(&shop.stdout).unwrap();
    let shelf: Value = serde_json::from_slice(&shelf.stdout).unwrap();
    assert_eq!(ran_by(&runners, &shop), ["shop-agent".to_owned()].into());
    assert_eq!(ran_by(&runners, &shelf), ["shelf-agent".to_owned()].into());

    // Another repository's unlabelled work is nobody's here: it waits and
    // says why, and --require-runner refuses it.
    let other = queue_from(&server, Some("acme/other"), &["--suite", "unit", "test_5"]).await;
    exits(&other, 0);
    let warned = String::from_utf8_lossy(&other.stderr);
    assert!(
        warned.contains("no registered runner serves suite \"unit\" or project \"acme/other\""),
        "{warned}"
    );
    let refused = queue_from(
        &server,
        None,
        &["--suite", "web", "--require-runner", "test_6"],
    )
    .await;
    exits(&refused, 3);

    // An agent that takes any unlabelled work takes it.
    let queued: Value = serde_json::from_slice(&other.stdout).unwrap();
    let id = queued["id"].as_str().unwrap().to_owned();
    let _any = agent_with(&server, work.path(), "any-agent", |c| c.arg("--any-suite"));
    let done = tokio::task::spawn_blocking({
        let url = server.url.clone();
        move || {
            tms_tests::tms_command(BIN, &url, ADMIN_TOKEN)
                .args(["status", &id, "--wait", "--json", "--poll-ms", "100"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    exits(&done, 0);
    let done: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(
        ran_by(&runners_now(&server), &done),
        ["any-agent".to_owned()].into()
    );
    // `tms runners` says what each agent takes of unlabelled work.
    let table = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .arg("runners")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name}: {table}"))
            .to_owned()
    };
    assert!(row("shop-agent").ends_with("projects acme/shop"), "{table}");
    assert!(row("shelf-agent").ends_with("suites shelf-unit"), "{table}");
    assert!(row("any-agent").ends_with("any suite"), "{table}");
}

fn runners_now(server: &Server) -> Value {
    let out = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args(["runners", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An agent started again with the same state file but other suites does
/// not keep serving the old ones: its old runner is removed and a new one
/// registers with what it declares now.
#[tokio::test]
async fn an_agent_restarted_with_other_suites_registers_anew() {
    let (_data, server, work) = start();
    // The active runners of that name, each with its id and suites.
    let registered = |server: &Server| -> Vec<(String, Value)> {
        let all = tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
            .args(["runners", "--json", "--all"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&all.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] == "again" && r["status"] != "deregistered")
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_owned(),
                    r["scope"]["suites"].clone(),
                )
            })
            .collect()
    };
    let first = agent_with(&server, work.path(), "again", |c| {
        c.args(["--suite", "api"])
    });
    let old = tms_tests::eventually("the first registration", || async {
        registered(&server)
            .pop()
            .filter(|(_, s)| s == &serde_json::json!(["api"]))
    })
    .await;
    drop(first);
    let _second = agent_with(&server, work.path(), "again", |c| {
        c.args(["--suite", "web"])
    });
    let new = tms_tests::eventually("the second registration", || async {
        let now = registered(&server);
        (now.len() == 1 && now[0].1 == serde_json::json!(["web"])).then(|| now[0].clone())
    })
    .await;
    assert_ne!(new.0, old.0, "a new runner, the old one removed");
}
