//! A real open-source project's pytest suite (more-itertools 10.5.0,
//! vendored from its PyPI sdist: `tests/fixtures/real-suite`) run through
//! `tms serve` and two `tms agent`s, split statically and in dynamic mode:
//! the merged JUnit report `tms queue --wait --junit` writes has exactly
//! the cases of pytest's own report of the same suite — each classname and
//! name as pytest wrote it, and each outcome.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use tms::junit::CaseOutcome;
use tms_tests::junit_cases as cases;
use tms_tests::{Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");
const PROJECT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/real-suite/more-itertools-10.5.0"
);

/// The Python with pytest that `scripts/pytest-venv` made.
fn python() -> String {
    std::env::var("TMS_PYTEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "TMS_PYTEST_PYTHON is not set: run eval \"$(scripts/pytest-venv)\" (scripts/test does)"
        )
    })
}

/// pytest in the project's directory, writing nothing into it.
fn pytest(args: &[&str]) -> Command {
    let mut command = Command::new(python());
    command
        .current_dir(PROJECT)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "pytest", "-p", "no:cacheprovider"])
        .args(args);
    command
}

/// An agent working in the project's checkout; killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(server: &Server, work: &Path, name: &str) -> Agent {
    let junit = work.join(format!("{name}-{{shard}}.xml"));
    let child = Command::new(BIN)
        .current_dir(PROJECT)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TMS_URL", &server.url)
        .env("TMS_TOKEN", ADMIN_TOKEN)
        .args([
            "agent",
            "--name",
            name,
            "--suite",
            "more-itertools",
            "--poll-ms",
            "100",
        ])
        .arg("--state-file")
        .arg(work.join(format!("{name}.json")))
        .arg("--junit")
        .arg(&junit)
        .args([
            "--",
            &python(),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
        ])
        .arg(format!("--junitxml={}", junit.display()))
        .arg("{tests}")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join(format!("{name}.log"))).unwrap())
        .spawn()
        .expect("start tms agent");
    Agent(child)
}

fn queue(server: &Server, args: &[&str]) -> Output {
    tms_tests::tms_command(BIN, &server.url, ADMIN_TOKEN)
        .args(["queue", "--suite", "more-itertools", "--parallelism", "2"])
        .args(args)
        .args(["--wait", "--json", "--poll-ms", "200"])
        .output()
        .unwrap()
}

#[test]
fn a_real_projects_pytest_suite_through_two_agents_gives_pytests_own_report_case_for_case() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // pytest's own run: the report TMS is to give back.
    let own_xml = dir.join("pytest.xml");
    let own_run = pytest(&["-q", &format!("--junitxml={}", own_xml.display()), "tests"])
        .output()
        .unwrap();
    assert_eq!(
        own_run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&own_run.stdout)
    );
    let own = cases(&std::fs::read_to_string(&own_xml).unwrap());
    assert_eq!(own.len(), 664, "the suite as recorded in its README");
    assert!(own.iter().any(|c| c.2 == CaseOutcome::Skipped));

    // The CI job's test list: pytest's node ids.
    let listed = pytest(&["--collect-only", "-q", "tests"]).output().unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.contains("::"))
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), own.len());
    let tests_file = dir.join("tests.txt");
    std::fs::write(&tests_file, ids.join("\n")).unwrap();

    let data = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, data.path(), Some(ADMIN_TOKEN));
    let _agents = [agent(&server, dir, "a1"), agent(&server, dir, "a2")];
    for mode in ["static", "dynamic"] {
        let merged = dir.join(format!("merged-{mode}.xml"));
        let out = queue(
            &server,
            &[
                "--mode",
                mode,
                "--tests-file",
                tests_file.to_str().unwrap(),
                "--junit",
                merged.to_str().unwrap(),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mode}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let done: Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &done["totals"];
        assert_eq!(
            (
                t["passed"].as_u64(),
                t["failed"].as_u64(),
                t["skipped"].as_u64()
            ),
            (Some(663), Some(0), Some(1)),
            "{mode}"
        );
        let runners: BTreeSet<&str> = done["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["runner_id"].as_str())
            .collect();
        assert_eq!(runners.len(), 2, "{mode}: both agents worked: {runners:?}");
        let xml = std::fs::read_to_string(&merged).unwrap();
        tms_tests::assert_valid_junit(&xml);
        assert_eq!(
            cases(&xml),
            own,
            "{mode}: pytest's own cases, case for case"
        );
    }
}
