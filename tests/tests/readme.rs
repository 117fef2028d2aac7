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
