//! The `tms` binary; everything lives in the library so tests can run it too.

/// The server allocates and frees many small buffers per request (request
/// and response bodies, decoded documents); mimalloc's thread-local free
/// lists cost less than glibc's malloc there (see docs/performance.md).
#[cfg(feature = "server")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tms_cli::main()
}
