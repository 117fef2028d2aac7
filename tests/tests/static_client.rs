//! The CI client as CI machines get it: `tms-cli` built without its
//! `server` feature, static (musl), by `scripts/client-build` (which
//! `scripts/test` runs and names in `TMS_CLIENT_BIN`). It is one static
//! file with every client command and no server; the README's token
//! one-liner works with it as written; and as agent and gate it runs a
//! suite against a real `tms serve` with the verdicts' exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use tms_tests::{Server, ADMIN_TOKEN};

/// The full `tms` (the server).
const SERVER_BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");
const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/agent/fake_suite.py");

fn client() -> PathBuf {
    let path = std::env::var("TMS_CLIENT_BIN").unwrap_or_else(|_| {
        panic!(
            "TMS_CLIENT_BIN is not set: run eval \"$(scripts/client-build)\" (scripts/test does)"
        )
    });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

/// Whether an ELF file asks for a program interpreter (the dynamic
/// loader): a static executable has no `PT_INTERP` program header.
fn needs_a_loader(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!(elf[4], 2, "64-bit");
    assert_eq!(elf[5], 1, "little-endian");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[at..at + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes([elf[at], elf[at + 1], elf[at + 2], elf[at + 3]]) == 3
    })
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run the client")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_client_is_one_static_file_without_the_server() {
    let bin = client();
    let elf = std::fs::read(&bin).unwrap();
    assert!(
        !needs_a_loader(&elf),
        "{} is linked statically",
        bin.display()
    );
    // The server's own binary, built the usual way, does need one: the
    // check tells the two apart.
    assert!(needs_a_loader(&std::fs::read(SERVER_BIN).unwrap()));

    let help = run(Command::new(&bin).arg("--help"));
    let help = text(&help);
    for command in [
        "queue", "status", "agent", "runners", "token", "report", "retry",
    ] {
        assert!(help.contains(command), "{command}: {help}");
    }
    assert!(
        !help.contains("\n  serve"),
        "no server in the client: {help}"
    );
    let serve = run(Command::new(&bin).args(["serve", "--listen", "127.0.0.1:0"]));
    assert_eq!(serve.status.code(), Some(64), "{}", text(&serve));
}

/// The README's two lines that make a CI token, with `tms` on PATH.
fn readme_token_lines(url: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let first = readme
        .lines()
        .find(|l| l.starts_with("export TMS_URL=http://127.0.0.1:8080 TMS_ADMIN_TOKEN="))
        .expect("README sets TMS_URL and the admin token");
    let second = readme
        .lines()
        .find(|l| l.starts_with("export TMS_TOKEN=$(tms token create"))
        .expect("README makes the CI token");
    format!(
        "{}\n{second}\n",
        first
            .replace("http://127.0.0.1:8080", url)
            .replace("<the admin token>", ADMIN_TOKEN)
    )
}

/// `tms` on PATH is the static client.
fn path_with(bin: &Path, dir: &Path) -> String {
    std::os::unix::fs::symlink(bin, dir.join("tms")).unwrap();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn the_static_client_makes_a_token_as_the_readme_says_and_runs_a_suite_as_agent_and_gate() {
    let bin = client();
    let (data, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = Server::start(SERVER_BIN, data.path(), Some(ADMIN_TOKEN));
    let path = path_with(&bin, work.path());

    // The README's lines, as written, in a shell.
    let script = format!(
        "{}printf '%s' \"$TMS_TOKEN\"\n",
        readme_token_lines(&server.url)
    );
    let made = run(Command::new("sh")
        .args(["-eu", "-c", &script])
        .env("PATH", &path)
        .env_remove("TMS_URL")
        .env_remove("TMS_TOKEN"));
    assert_eq!(made.status.code(), Some(0), "{}", text(&made));
    let ci_token = String::from_utf8(made.stdout).unwrap();
    assert!(
        ci_token.starts_with("tms_"),
        "a token alone on stdout: {ci_token:?}"
    );

    let junit = work.path().join("{shard}.xml");
    let mut agent = Command::new(&bin)
        .args([
            "agent",
            "--name",
            "static",
            "--suite",
            "fake",
            "--poll-ms",
            "100",
        ])
        .arg("--state-file")
        .arg(work.path().join("agent.json"))
        .arg("--junit")
        .arg(&junit)
        .args(["--", "python3", SUITE])
        .arg(&junit)
        .arg("{tests}")
        .env("TMS_URL", &server.url)
        .env("TMS_TOKEN", ADMIN_TOKEN)
        .env("FAKE_MARKER", work.path().join("marker"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let gate = |tests: &[&str]| {
        run(
            tms_tests::tms_command(bin.to_str().unwrap(), &server.url, &ci_token)
                .args([
                    "queue",
                    "--suite",
                    "fake",
                    "--parallelism",
                    "2",
                    "--wait",
                    "--poll-ms",
                    "100",
                ])
                .args(tests),
        )
    };
    let passed = gate(&["test_a", "test_b"]);
    let failed = gate(&["test_ok", "test_bad"]);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(passed.status.code(), Some(0), "{}", text(&passed));
    assert!(text(&passed).contains("2 passed"), "{}", text(&passed));
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(
        text(&failed).contains("test_bad"),
        "the failing test named: {}",
        text(&failed)
    );
}
