//! The `tms` binary; everything lives in the library so tests can run it too.

fn main() -> std::process::ExitCode {
    tms_cli::main()
}
