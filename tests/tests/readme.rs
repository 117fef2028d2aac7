//! The README's walkthrough works exactly as written.

use std::process::Command;
use tms_tests::{Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");

fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find("<!-- walkthrough:start -->")
        .expect("start marker");
    let end = readme.find("<!-- walkthrough:end -->").expect("end marker");
    let block = &readme[start..end];
    let code = block.split("```sh").nth(1).expect("sh block");
    code.split("```").next().unwrap().to_owned()
}

#[test]
fn the_readme_walkthrough_ends_with_a_passed_execution() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &walkthrough()])
        .env("TMS_URL", &server.url)
        .env("TMS_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run bash (the walkthrough needs curl and jq)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walkthrough failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout.rfind("\n{\n").expect("final JSON object") + 1;
    let last: serde_json::Value = serde_json::from_str(&stdout[start..]).unwrap();
    assert_eq!(last["status"], "passed");
    assert_eq!(last["totals"]["passed"], 4);
    assert_eq!(last["shards"][0]["tests"], serde_json::json!(["test_cart"]));
}

/// The README's block of one command line per test tool.
fn tools_block() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("<!-- tools:start -->").expect("start marker");
    let end = readme.find("<!-- tools:end -->").expect("end marker");
    readme[start..end]
        .lines()
        .filter(|l| !(l.is_empty() || l.starts_with("```") || l.starts_with("<!--")))
        .map(str::to_owned)
        .collect()
}

/// Each tool's `tms agent` and `tms queue` lines parse as the CLI defines
/// them, and are the lines `scripts/try-tools` ran with the real tools:
/// `docs/tools-run.txt` records each (after `$ `) and a verdict for every
/// tool, each tool's flaky and failing tests counted as the tool counted
/// them. A line edited here and not run again fails this.
#[test]
fn each_tools_command_lines_parse_and_are_the_ones_run_with_the_real_tool() {
    let lines = tools_block();
    let run = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/tools-run.txt"
    ))
    .unwrap();
    let tools: Vec<&String> = lines.iter().filter(|l| l.starts_with("# ")).collect();
    assert_eq!(
        tools.len(),
        8,
        "pytest, nextest, jest, vitest, mocha, Playwright, gotestsum, PHPUnit"
    );
    for line in &lines {
        if let Some(tool) = line.strip_prefix("# ") {
            assert!(run.contains(&format!("=== {tool}")), "{line}");
            continue;
        }
        assert!(
            run.lines().any(|l| l == format!("$ {line}")),
            "not what scripts/try-tools ran: {line}"
        );
        if !line.starts_with("tms ") {
            continue;
        }
        let mut args = shlex::split(line).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
        args.splice(
            2..2,
            ["--url", "http://127.0.0.1:8080", "--token", "t"].map(String::from),
        );
        if let Err(e) = tms_cli::parse_command_line(&args) {
            panic!("`{line}` is not a valid tms command: {e}");
        }
    }
    // The verdicts the tools printed for the fixtures' sources (their
    // console output is in tests/fixtures/junit/), a flaky test counted
    // where the tool's report records it (pytest-rerunfailures, nextest,
    // gotestsum).
    for verdict in [
        "failed — 2/2 shards, 4 passed, 3 failed, 2 skipped, 1 flaky",
        "failed — 1/1 shards, 2 passed, 1 failed, 0 skipped, 1 flaky",
        "failed — 1/1 shards, 3 passed, 1 failed, 1 skipped",
        "failed — 1/1 shards, 2 passed, 1 failed, 1 skipped",
        "failed — 1/1 shards, 1 passed, 1 failed, 2 skipped",
        "failed — 1/1 shards, 2 passed, 1 failed, 1 skipped, 1 flaky",
        "failed — 1/1 shards, 1 passed, 2 failed, 1 skipped",
    ] {
        assert!(run.contains(verdict), "{verdict}");
    }
    assert_eq!(
        run.matches("\nexit 1\n").count(),
        8,
        "each suite has failing tests, exit 1"
    );
    // An errored verdict (a report refused or unmatched) reads
    // "<suite> <id>: errored — …"; an errored test in a summary is fine.
    assert!(
        !run.contains(": errored —"),
        "no shard's report was refused or unmatched"
    );
}
