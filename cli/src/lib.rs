//! The `tms` command as a library, so the binary and the end-to-end tests run
//! exactly the same code: `tms serve` (the whole orchestrator in one
//! process, on an embedded store or on the AWS resources of the template),
//! the CI client and the runner agent.

/// `println!` for a command's output: when its reader has gone away
/// (`tms status ID | head -1`) the command ends quietly, as command-line
/// tools do, instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::emit(format_args!($($arg)*))
    };
}

pub mod agent;
pub mod ci;
pub mod client;
#[cfg(feature = "server")]
mod server;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tms",
    version,
    about = "TMS: test-execution orchestrator for CI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, scheduler, aggregator and sweeps in one process, on an
    /// embedded durable store (default) or on DynamoDB, SQS and EventBridge.
    #[cfg(feature = "server")]
    Serve(server::ServeArgs),
    /// Create the table, queues, bus, rule and admin token secret of
    /// template.yaml on an AWS endpoint (moto, LocalStack, an account) where
    /// they are missing, and print the functions' environment as shell
    /// `export` lines (for `cargo lambda watch`).
    #[cfg(feature = "server")]
    CreateResources(server::CreateResourcesArgs),
    /// Import test durations other tools recorded into a suite's history,
    /// so its next execution is split by time: pytest-split's
    /// `.test_durations`, a Knapsack JSON report (test names to seconds), or
    /// a JUnit XML report.
    ImportTimings {
        /// The suite the durations belong to (as executions are queued).
        #[arg(long)]
        suite: String,
        /// The durations file or JUnit report.
        file: PathBuf,
        /// JUnit only: how the tool names tests (`classname`: Class.test,
        /// `pytest`: node ids, `name`: the bare name); by default the id
        /// its tool knows it by (a node id for pytest, else Class.test).
        #[arg(long)]
        names: Option<String>,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Queue a suite; with --wait, follow it and exit 0 passed, 1 tests
    /// failed, 2 errored / timed out / cancelled, 3 no verdict from TMS
    /// (unreachable, refused), 64 a wrong command line. CI metadata (provider,
    /// build, job, commit, branch, URL) is read from GitHub Actions, GitLab
    /// CI, Jenkins or Azure Pipelines variables.
    Queue(ci::QueueArgs),
    /// An execution's status and shards (exit code as for `queue --wait`
    /// once it is finished).
    Status {
        id: String,
        #[arg(long)]
        json: bool,
        /// Wait for the verdict first (as `queue --wait` does).
        #[arg(long)]
        wait: bool,
        /// How often --wait polls, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        poll_ms: u64,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Cancel an execution: its shards stop, their capacity is freed.
    Cancel {
        id: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Run the failed, errored or cancelled shards of an execution that
    /// finished without passing (failed, errored, timed out or cancelled)
    /// again; its passed shards stand. (A CI re-run of the same build does
    /// this by itself: see `tms queue`.)
    Retry {
        id: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// An execution's report: JSON on stdout, or one merged JUnit XML file.
    Report {
        id: String,
        /// Write the merged JUnit XML report here.
        #[arg(long)]
        junit: Option<PathBuf>,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// The registered runners.
    #[command(args_conflicts_with_subcommands = true)]
    Runners {
        #[command(subcommand)]
        action: Option<RunnersCommand>,
        #[arg(long)]
        json: bool,
        /// Removed (deregistered) runners too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// API tokens (admin only).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Run as a pull-mode runner: register, heartbeat, run each assigned
    /// shard's tests with COMMAND, report its JUnit file.
    Agent(agent::AgentArgs),
}

#[derive(Subcommand)]
enum RunnersCommand {
    /// Remove a runner (admin, or the runner itself): its token stops
    /// working, what it held goes to other runners, its history stays.
    /// Runners silent for a day are removed by themselves.
    Rm {
        id: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once (on stdout, alone, for scripts).
    Create {
        /// `ci`: queue and read executions; `admin`: everything.
        #[arg(long, value_parser = ["ci", "admin"], default_value = "ci")]
        scope: String,
        #[arg(long, default_value = "ci")]
        name: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
}

/// Writes one line of a command's output (see `say!`).
pub(crate) fn emit(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// Parses the command line, runs the command and returns the process exit code.
/// Whether `args` (starting with the program's name) is a valid `tms`
/// command line: the check the example CI files are held to.
pub fn parse_command_line<I, T>(args: I) -> Result<(), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args).map(|_| ())
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a redirected log stays text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and --version are answers, not errors.
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(ci::exit::USAGE),
            };
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tms: cannot start the async runtime: {e}");
            return ExitCode::from(ci::exit::NO_VERDICT);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if e.is::<UsageError>() => {
            eprintln!("tms: {e}");
            ExitCode::from(ci::exit::USAGE)
        }
        Err(e) => {
            eprintln!("tms: {e}");
            // Not 1: nothing says a test failed.
            ExitCode::from(ci::exit::NO_VERDICT)
        }
    }
}

/// A command line that parses but cannot work as given (exit 64, as a
/// parse error): flags that leave an agent nothing to take.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

async fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Queue(args) => ci::queue(args).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Status {
            id,
            json,
            wait,
            poll_ms,
            server,
        } => {
            let every = wait.then(|| std::time::Duration::from_millis(poll_ms.max(100)));
            ci::status(&id, json, every, &server).await
        }
        Command::Cancel { id, server } => ci::act(&id, "cancel", &server).await,
        Command::Retry { id, server } => ci::act(&id, "retry", &server).await,
        Command::Report { id, junit, server } => ci::report(&id, junit, &server).await,
        Command::Runners {
            action: Some(RunnersCommand::Rm { id, server }),
            ..
        } => ci::remove_runner(&id, &server).await,
        Command::Runners {
            action: None,
            json,
            all,
            server,
        } => ci::runners(json, all, &server).await,
        Command::Token(TokenCommand::Create {
            scope,
            name,
            server,
        }) => ci::create_token(&name, &scope, &server).await,
        #[cfg(feature = "server")]
        Command::Serve(args) => server::serve(args).await,
        Command::ImportTimings {
            suite,
            file,
            names,
            server,
        } => import_timings(&suite, &file, names.as_deref(), &server)
            .await
            .map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "server")]
        Command::CreateResources(args) => server::create_resources(args).await,
    }
}

/// Reads a durations file and sends it to the suite's timings. A file
/// wrapped as `{"durations": {…}}` (how `tests/fixtures/durations` keeps
/// them, with their source) is unwrapped.
async fn import_timings(
    suite: &str,
    file: &std::path::Path,
    names: Option<&str>,
    server: &client::ServerArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let path = format!("/suites/{}/timings", client::segment(suite));
    let client = client::Client::new(server);
    let answer = if text.trim_start().starts_with('<') {
        let path = match names {
            Some(names) => format!("{path}?names={}", client::segment(names)),
            None => path,
        };
        client.post_raw(&path, "application/xml", text).await?
    } else {
        let mut body: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is neither JSON nor XML: {e}", file.display()))?;
        if let Some(inner) = body.get_mut("durations").filter(|d| d.is_object()) {
            body = inner.take();
        }
        client.post(&path, &body).await?
    };
    say!(
        "imported {} test durations into suite {suite}",
        answer["imported"]
    );
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    stop_signals().await
}

/// Ctrl-C (SIGINT) or SIGTERM, listened for from the moment this is
/// called, not from the first poll: a signal that comes while the caller
/// still does something else is not lost.
pub(crate) fn stop_signals() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = int => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
