//! `tms serve` and `tms create-resources`: the orchestrator itself, on the
//! embedded store or the AWS resources of the template. Built with the
//! `server` feature (the default); without it the `tms` binary is the CI
//! client and runner agent alone, with no AWS SDK to compile.

use crate::shutdown_signal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tms::config::{Config, ResourceDefaults};
use tms::domain::{AllowedHosts, Strategy, TestType};
use tms::http::guard::Rate;
use tms::server::{Backend, ServeOptions};

/// What a server command ends with.
type Outcome = Result<ExitCode, Box<dyn std::error::Error>>;

/// `tms serve`'s flags.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the state lives.
    #[arg(long, value_enum, default_value_t = BackendArg::Embedded)]
    pub backend: BackendArg,
    /// Where the embedded database lives; created if missing.
    #[arg(long, default_value = "./tms-data")]
    pub data_dir: PathBuf,
    /// AWS backend: the endpoint of an emulator (moto, LocalStack);
    /// without it, AWS itself (region and credentials from the usual chain).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS backend: the template's stage, part of every resource name.
    #[arg(long, default_value = "dev")]
    pub stage: String,
    /// AWS backend: create the table, queues, bus, rule and secret of
    /// template.yaml when they are missing.
    #[arg(long)]
    pub create_resources: bool,
    /// Admin bearer token; when unset one is created on first start and printed once.
    #[arg(long, env = "TMS_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Seconds between runner heartbeats, for runners that do not say
    /// their own (a runner silent for 3 of its intervals is unhealthy);
    /// also how often the health sweep runs.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_interval: u64,
    /// Seconds a runner may stay unhealthy (silent) before it is
    /// removed: deregistered, its history kept.
    #[arg(long, default_value_t = 24 * 3600)]
    pub runner_retention: u64,
    /// Seconds between timeout sweeps.
    #[arg(long, default_value_t = 5)]
    pub sweep_interval: u64,
    /// Strategy for executions no load-balancing rule matches.
    #[arg(long, value_enum, default_value_t = StrategyArg::ResourceBased)]
    pub default_strategy: StrategyArg,
    /// Per-shard CPU and memory for a test type, e.g. `e2e=3000:4096`
    /// (millicores:MB). Repeat for several types.
    #[arg(long = "resources", value_name = "TYPE=CPU:MEM", value_parser = parse_resources)]
    pub resources: Vec<(TestType, ResourceDefaults)>,
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
    pub dispatch_allow_hosts: Vec<String>,
    /// A browser origin (`https://ci.example.com`) whose pages may call
    /// the API. None by default: the dashboard is same-origin. Repeat,
    /// or separate with commas in the variable.
    #[arg(
        long = "cors-origin",
        value_name = "ORIGIN",
        env = "TMS_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Seconds a connection may take to send a request's headers, and
    /// may sit idle between requests, before it is closed.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub header_read_timeout: u64,
    /// Failed authentications a client address may make per minute;
    /// past it every request from there is answered 429 until the
    /// allowance refills. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 600)]
    pub auth_failure_limit: u32,
    /// Requests per second one token may make (twice that in a burst);
    /// past it, 429 with Retry-After. 0: no limit.
    #[arg(
        long,
        value_name = "N",
        env = "TMS_TOKEN_RATE_LIMIT",
        default_value_t = 1000
    )]
    pub token_rate_limit: u32,
    /// Requests handled at once; more are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_in_flight: usize,
    /// Megabytes of request bodies held at once (each body counted by
    /// its Content-Length, or the 8 MB body limit without one); more
    /// are answered 503 before they are read.
    #[arg(long, value_name = "MB", default_value_t = 32)]
    pub body_budget_mb: usize,
}

/// `tms create-resources`' flags.
#[derive(clap::Args)]
pub struct CreateResourcesArgs {
    /// The emulator's endpoint; without it, AWS itself.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// The template's stage, part of every resource name.
    #[arg(long, default_value = "dev")]
    pub stage: String,
    /// Also print the admin token from its secret (on stderr).
    #[arg(long)]
    pub show_admin_token: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// SQLite under --data-dir.
    Embedded,
    /// The serverless stack's DynamoDB table, SQS queues and EventBridge bus.
    Aws,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StrategyArg {
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

/// `tms serve`.
pub async fn serve(args: ServeArgs) -> Outcome {
    let ServeArgs {
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
    } = args;
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
    tms::server::serve(listener, options, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `tms create-resources`.
pub async fn create_resources(args: CreateResourcesArgs) -> Outcome {
    let CreateResourcesArgs {
        endpoint_url,
        stage,
        show_admin_token,
    } = args;
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

/// Quotes a value for a POSIX shell.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}
