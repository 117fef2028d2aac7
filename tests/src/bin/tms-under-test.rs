//! The `tms` command, built inside the test crate so end-to-end tests can
//! start it as a real process (`CARGO_BIN_EXE_tms-under-test`).

fn main() -> std::process::ExitCode {
    tms_cli::main()
}
