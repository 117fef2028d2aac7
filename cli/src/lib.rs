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

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tms::config::{Config, ResourceDefaults};
use tms::domain::{AllowedHosts, Strategy, TestType};
use tms::http::guard::Rate;
use tms::server::{serve, Backend, ServeOptions};

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
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the state lives.
        #[arg(long, value_enum, default_value_t = BackendArg::Embedded)]
        backend: BackendArg,
        /// Where the embedded database lives; created if missing.
        #[arg(long, default_value = "./tms-data")]
        data_dir: PathBuf,
        /// AWS backend: the endpoint of an emulator (moto, LocalStack);
        /// without it, AWS itself (region and credentials from the usual chain).
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint_url: Option<String>,
        /// AWS backend: the template's stage, part of every resource name.
        #[arg(long, default_value = "dev")]
        stage: String,
        /// AWS backend: create the table, queues, bus, rule and secret of
        /// template.yaml when they are missing.
        #[arg(long)]
        create_resources: bool,
        /// Admin bearer token; when unset one is created on first start and printed once.
        #[arg(long, env = "TMS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Seconds between runner heartbeats, for runners that do not say
        /// their own (a runner silent for 3 of its intervals is unhealthy);
        /// also how often the health sweep runs.
        #[arg(long, default_value_t = 30)]
        heartbeat_interval: u64,
        /// Seconds a runner may stay unhealthy (silent) before it is
        /// removed: deregistered, its history kept.
        #[arg(long, default_value_t = 24 * 3600)]
        runner_retention: u64,
        /// Seconds between timeout sweeps.
        #[arg(long, default_value_t = 5)]
        sweep_interval: u64,
        /// Strategy for executions no load-balancing rule matches.
        #[arg(long, value_enum, default_value_t = StrategyArg::ResourceBased)]
        default_strategy: StrategyArg,
        /// Per-shard CPU and memory for a test type, e.g. `e2e=3000:4096`
        /// (millicores:MB). Repeat for several types.
        #[arg(long = "resources", value_name = "TYPE=CPU:MEM", value_parser = parse_resources)]
        resources: Vec<(TestType, ResourceDefaults)>,
        /// A host (or host:port) besides the platforms' own public APIs
        /// that push-mode dispatch may send credentials to: a GitHub
        /// Enterprise Server, a self-managed GitLab, Jenkins, an Azure
        /// DevOps Server or a webhook receiver. Repeat, or separate with
        /// commas in the variable.
        #[arg(
            long = "dispatch-allow-host",
            value_name = "HOST[:PORT]",
            env = "TMS_DISPATCH_ALLOW_HOSTS",
            value_delimiter = ','
        )]
        dispatch_allow_hosts: Vec<String>,
        /// A browser origin (`https://ci.example.com`) whose pages may call
        /// the API. None by default: the dashboard is same-origin. Repeat,
        /// or separate with commas in the variable.
        #[arg(
            long = "cors-origin",
            value_name = "ORIGIN",
            env = "TMS_CORS_ORIGINS",
            value_delimiter = ','
        )]
        cors_origins: Vec<String>,
        /// Seconds a connection may take to send a request's headers, and
        /// may sit idle between requests, before it is closed.
        #[arg(long, value_name = "SECS", default_value_t = 15)]
        header_read_timeout: u64,
        /// Failed authentications a client address may make per minute;
        /// past it every request from there is answered 429 until the
        /// allowance refills. 0: no limit.
        #[arg(long, value_name = "N", default_value_t = 600)]
        auth_failure_limit: u32,
        /// Requests per second one token may make (twice that in a burst);
        /// past it, 429 with Retry-After. 0: no limit.
        #[arg(
            long,
            value_name = "N",
            env = "TMS_TOKEN_RATE_LIMIT",
            default_value_t = 1000
        )]
        token_rate_limit: u32,
        /// Requests handled at once; more are answered 503 with Retry-After.
        #[arg(long, value_name = "N", default_value_t = 512)]
        max_in_flight: usize,
        /// Megabytes of request bodies held at once (each body counted by
        /// its Content-Length, or the 8 MB body limit without one); more
        /// are answered 503 before they are read.
        #[arg(long, value_name = "MB", default_value_t = 32)]
        body_budget_mb: usize,
    },
    /// Create the table, queues, bus, rule and admin token secret of
    /// template.yaml on an AWS endpoint (moto, LocalStack, an account) where
    /// they are missing, and print the functions' environment as shell
    /// `export` lines (for `cargo lambda watch`).
    CreateResources {
        /// The emulator's endpoint; without it, AWS itself.
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint_url: Option<String>,
        /// The template's stage, part of every resource name.
        #[arg(long, default_value = "dev")]
        stage: String,
        /// Also print the admin token from its secret (on stderr).
        #[arg(long)]
        show_admin_token: bool,
    },
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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendArg {
    /// SQLite under --data-dir.
    Embedded,
    /// The serverless stack's DynamoDB table, SQS queues and EventBridge bus.
    Aws,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StrategyArg {
    RoundRobin,
    Priority,
    ResourceBased,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::Priority => Strategy::Priority,
            StrategyArg::ResourceBased => Strategy::ResourceBased,
        }
    }
}

fn parse_resources(raw: &str) -> Result<(TestType, ResourceDefaults), String> {
    let (kind, amounts) = raw.split_once('=').ok_or("expected TYPE=CPU:MEM")?;
    let test_type = match kind {
        "unit" => TestType::Unit,
        "integration" => TestType::Integration,
        "e2e" => TestType::E2e,
        "performance" => TestType::Performance,
        other => {
            return Err(format!(
                "unknown test type {other:?} (unit, integration, e2e, performance)"
            ))
        }
    };
    let (cpu, mem) = amounts
        .split_once(':')
        .ok_or("expected CPU:MEM after '='")?;
    let cpu_millis = cpu
        .parse()
        .map_err(|_| format!("CPU {cpu:?} is not a number of millicores"))?;
    let memory_mb = mem
        .parse()
        .map_err(|_| format!("memory {mem:?} is not a number of MB"))?;
    Ok((
        test_type,
        ResourceDefaults {
            cpu_millis,
            memory_mb,
        },
    ))
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
        Command::Serve {
            listen,
            backend,
            data_dir,
            endpoint_url,
            stage,
            create_resources,
            admin_token,
            heartbeat_interval,
            runner_retention,
            sweep_interval,
            default_strategy,
            resources,
            dispatch_allow_hosts,
            cors_origins,
            header_read_timeout,
            auth_failure_limit,
            token_rate_limit,
            max_in_flight,
            body_budget_mb,
        } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            let dispatch_allowed_hosts =
                AllowedHosts::parse(dispatch_allow_hosts.iter().map(String::as_str))
                    .map_err(|e| format!("--dispatch-allow-host: {e}"))?;
            let cors_origins = cors_origins
                .iter()
                .map(|o| tms::http::parse_origin(o.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--cors-origin: {e}"))?;
            let mut config = Config {
                heartbeat_interval_secs: heartbeat_interval.max(1),
                runner_retention_secs: runner_retention,
                default_strategy: default_strategy.into(),
                dispatch_allowed_hosts,
                cors_origins,
                ..Config::default()
            };
            for (test_type, defaults) in resources {
                *config.resource_defaults_mut(test_type) = defaults;
            }
            let backend = match backend {
                BackendArg::Embedded => Backend::Embedded { data_dir },
                BackendArg::Aws => Backend::Aws {
                    endpoint_url: endpoint_url.filter(|u| !u.is_empty()),
                    stage,
                    create_resources,
                },
            };
            let options = ServeOptions {
                backend,
                admin_token: admin_token.filter(|t| !t.is_empty()),
                sweep_interval: Duration::from_secs(sweep_interval.max(1)),
                config,
                connections: tms::http::listener::ConnectionLimits {
                    header_read_timeout: Duration::from_secs(header_read_timeout.max(1)),
                },
                limits: tms::http::guard::Limits {
                    failed_auth_per_client: Rate::per_minute(auth_failure_limit),
                    per_token: Rate::per_second(token_rate_limit),
                    max_in_flight: max_in_flight.max(1),
                    body_bytes_in_flight: body_budget_mb.saturating_mul(1024 * 1024),
                },
            };
            serve(listener, options, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportTimings {
            suite,
            file,
            names,
            server,
        } => import_timings(&suite, &file, names.as_deref(), &server)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::CreateResources {
            endpoint_url,
            stage,
            show_admin_token,
        } => {
            let sdk = tms::adapters::aws::sdk_config(endpoint_url.as_deref()).await;
            let template = tms::adapters::stack::Template::builtin()?;
            let stack = tms::adapters::stack::create(&template, &[("Stage", &stage)], &sdk).await?;
            // Every API function gets the globals plus the admin token secret.
            let env = stack.function_env(&template, "ApiSystemFunction")?;
            for (name, value) in &env {
                say!("export {name}={}", shell_quote(value));
            }
            if show_admin_token {
                let secret = env
                    .get("TMS_ADMIN_TOKEN_SECRET_ARN")
                    .ok_or("no admin token secret")?;
                let token = aws_sdk_secretsmanager::Client::new(&sdk)
                    .get_secret_value()
                    .secret_id(secret)
                    .send()
                    .await?
                    .secret_string
                    .unwrap_or_default();
                eprintln!("admin token: {token}");
            }
            Ok(ExitCode::SUCCESS)
        }
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

/// Quotes a value for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
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
