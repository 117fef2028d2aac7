//! `tms serve`: the whole orchestrator in one process — the API router, the
//! scheduler, the aggregator and the sweeps on intervals.
//!
//! On the embedded backend the scheduler is woken by in-process nudges and
//! the aggregator fed by an in-process bus, over SQLite. On the AWS backend
//! (DynamoDB, SQS, EventBridge on moto, LocalStack or an account) the same
//! process long-polls the schedule and aggregate queues and runs exactly
//! what the scheduler and aggregator functions run.

use crate::adapters::aws::{sdk_config, AwsClients, AwsPorts};
use crate::adapters::stack::{self, Template};
use crate::adapters::{ChannelEvents, NotifyNudges, SqliteStore};
use crate::auth;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http;
use crate::ports::{Event, Ports, Store};
use crate::time::SystemClock;
use crate::usecases::{Orchestrator, SweepReport};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The adapters of the local server on the embedded store.
pub struct LocalPorts;

impl Ports for LocalPorts {
    type Store = SqliteStore;
    type Clock = SystemClock;
    type Nudges = NotifyNudges;
    type Events = ChannelEvents;
}

/// Where `tms serve` keeps its state.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite under this directory; created if missing.
    Embedded { data_dir: PathBuf },
    /// The serverless resources of `template.yaml` for `stage`, on
    /// `endpoint_url` (moto, LocalStack) or on AWS when it is `None`.
    Aws {
        endpoint_url: Option<String>,
        stage: String,
        /// Create the table, queues, bus, rule and secret when missing.
        create_resources: bool,
    },
}

pub struct ServeOptions {
    pub backend: Backend,
    /// `TMS_ADMIN_TOKEN`; when absent a token is created on first start.
    pub admin_token: Option<String>,
    /// How often the timeout sweep (and the schedule sweep backstop) run.
    pub sweep_interval: Duration,
    pub config: Config,
}

/// How long the scheduler waits after a nudge before it runs a pass.
const SCHEDULER_COALESCE: Duration = Duration::from_millis(2);

/// Most completion events folded per aggregator round.
const AGGREGATE_BATCH: usize = 256;

const ADMIN_HASH_SETTING: &str = "admin_token_hash";

/// The admin token's hash: from the environment, or created once and kept.
/// Returns the new token when one was created, to be shown exactly once.
async fn admin_token_hash<S: Store>(
    store: &S,
    from_env: Option<&str>,
) -> Result<(String, Option<String>)> {
    if let Some(token) = from_env {
        return Ok((auth::hash(token), None));
    }
    if let Some(hash) = store.get_setting(ADMIN_HASH_SETTING).await? {
        return Ok((hash, None));
    }
    let issued = auth::issue(None);
    let stored = store.init_setting(ADMIN_HASH_SETTING, &issued.hash).await?;
    let shown = (stored == issued.hash).then_some(issued.token);
    Ok((stored, shown))
}

fn announce_admin_token(created: Option<String>) {
    if let Some(token) = created {
        println!("created admin token (shown only once; set TMS_ADMIN_TOKEN to choose your own): {token}");
    }
}

/// Runs until `shutdown` resolves. Prints `listening on http://ADDR` once bound.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    match options.backend.clone() {
        Backend::Embedded { data_dir } => {
            serve_embedded(listener, data_dir, options, shutdown).await
        }
        Backend::Aws {
            endpoint_url,
            stage,
            create_resources,
        } => {
            let sdk = sdk_config(endpoint_url.as_deref()).await;
            let template = Template::builtin()?;
            let params = [("Stage", stage.as_str())];
            let deployed = if create_resources {
                stack::create(&template, &params, &sdk).await?
            } else {
                stack::find(&template, &params, &sdk).await?
            };
            serve_aws(
                listener,
                &deployed,
                AwsClients::new(&sdk),
                options,
                shutdown,
            )
            .await
        }
    }
}

async fn serve_embedded(
    listener: TcpListener,
    data_dir: PathBuf,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = SqliteStore::open_dir(&data_dir)?;
    let (hash, created) = admin_token_hash(&store, options.admin_token.as_deref()).await?;
    announce_admin_token(created);
    let nudges = NotifyNudges::default();
    let (events, mut inbox) = ChannelEvents::new();
    let app: Arc<Orchestrator<LocalPorts>> = Arc::new(Orchestrator::new(
        store,
        SystemClock,
        nudges.clone(),
        events,
        options.config.clone(),
        hash,
    ));

    let mut tasks = JoinSet::new();
    let scheduler = app.clone();
    let wake = nudges.0.clone();
    let sweep_every = options.sweep_interval;
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(sweep_every);
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tick.tick() => {}
            }
            // Let a burst of nudges (completions arrive in bursts) settle into
            // one pass: a pass reads every active runner, so passes per
            // completion, not latency, is what limits throughput.
            tokio::time::sleep(SCHEDULER_COALESCE).await;
            // Keep going while passes make progress (a pass handles one batch).
            if let Err(e) = scheduler.schedule_sweep().await {
                tracing::error!(error = %e, "schedule pass failed");
            }
        }
    });
    let aggregator = app.clone();
    tasks.spawn(async move {
        let mut batch = Vec::with_capacity(AGGREGATE_BATCH);
        while inbox.recv_many(&mut batch, AGGREGATE_BATCH).await > 0 {
            // Failures are logged by the use case; the timeout sweep folds them later.
            aggregator.handle_events(&batch).await;
            batch.clear();
        }
    });
    spawn_sweeps(&mut tasks, &app, &options);
    run_http(listener, app, tasks, shutdown).await
}

async fn serve_aws(
    listener: TcpListener,
    deployed: &stack::Stack,
    clients: AwsClients,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let resources = deployed.aws_resources()?;
    let store = crate::adapters::DynamoStore::new(clients.dynamodb.clone(), &resources.table);
    let (hash, created) = admin_token_hash(&store, options.admin_token.as_deref()).await?;
    announce_admin_token(created);
    let app: Arc<Orchestrator<AwsPorts>> =
        Arc::new(resources.orchestrator(&clients, SystemClock, options.config.clone(), hash));
    let queue = |id: &str| {
        deployed
            .physical(id)
            .map(str::to_owned)
            .ok_or_else(|| Error::Internal(format!("the stack has no {id}")))
    };

    let mut tasks = JoinSet::new();
    // The scheduler function's work: a batch of nudges is one sweep.
    let scheduler = app.clone();
    tasks.spawn(poll_queue(
        clients.sqs.clone(),
        queue("ScheduleQueue")?,
        move |bodies| {
            let app = scheduler.clone();
            async move {
                let ok = app.schedule_sweep().await.is_ok();
                vec![ok; bodies.len()]
            }
        },
    ));
    // The aggregator function's work: fold the events the rule delivered.
    let aggregator = app.clone();
    tasks.spawn(poll_queue(
        clients.sqs.clone(),
        queue("AggregateQueue")?,
        move |bodies| {
            let app = aggregator.clone();
            async move {
                let events: Vec<Option<Event>> = bodies
                    .iter()
                    .map(|b| Event::from_envelope(b).ok())
                    .collect();
                let readable: Vec<Event> = events.iter().flatten().cloned().collect();
                let mut folded = app.handle_events(&readable).await.into_iter();
                events
                    .iter()
                    .map(|e| e.is_some() && folded.next().is_some_and(|r| r.is_ok()))
                    .collect()
            }
        },
    ));
    let backstop = app.clone();
    tasks.spawn(every(options.sweep_interval, "schedule sweep", move || {
        let app = backstop.clone();
        async move { app.schedule_sweep().await }
    }));
    spawn_sweeps(&mut tasks, &app, &options);
    run_http(listener, app, tasks, shutdown).await
}

/// Long-polls an SQS queue like a Lambda event source mapping: hands each
/// batch of bodies to `handle`, deletes the messages it says succeeded and
/// leaves the others to be redelivered (and, in the end, dead-lettered).
async fn poll_queue<F, Fut>(sqs: aws_sdk_sqs::Client, url: String, handle: F)
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Vec<bool>>,
{
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), queue = %url, "receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let bodies = messages
            .iter()
            .map(|m| m.body.clone().unwrap_or_default())
            .collect();
        let outcomes = handle(bodies).await;
        for (message, ok) in messages.iter().zip(outcomes) {
            let Some(receipt) = message.receipt_handle.as_deref().filter(|_| ok) else {
                continue;
            };
            if let Err(e) = sqs
                .delete_message()
                .queue_url(&url)
                .receipt_handle(receipt)
                .send()
                .await
            {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "delete failed; the message comes back");
            }
        }
    }
}

/// The timeout and health sweeps on their intervals.
fn spawn_sweeps<P: Ports>(
    tasks: &mut JoinSet<()>,
    app: &Arc<Orchestrator<P>>,
    options: &ServeOptions,
) {
    let sweeper = app.clone();
    tasks.spawn(every(options.sweep_interval, "timeout sweep", move || {
        let app = sweeper.clone();
        async move { app.timeout_sweep().await }
    }));
    let health = app.clone();
    let health_every = Duration::from_secs(options.config.heartbeat_interval_secs.max(1));
    tasks.spawn(every(health_every, "health sweep", move || {
        let app = health.clone();
        async move { app.health_sweep().await }
    }));
}

/// Serves the API until `shutdown`, then stops the background tasks.
async fn run_http<P: Ports>(
    listener: TcpListener,
    app: Arc<Orchestrator<P>>,
    mut tasks: JoinSet<()>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read the listening address: {e}")))?;
    println!("listening on http://{addr}");
    let served = axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown)
        .await;
    tasks.shutdown().await;
    served.map_err(|e| Error::Internal(format!("server stopped: {e}")))
}

/// Runs a sweep on an interval forever, logging what it did and any failure
/// (the next round tries again).
async fn every<F, Fut>(interval: Duration, name: &'static str, sweep: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<SweepReport>>,
{
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match sweep().await {
            Ok(r) if r != SweepReport::default() => tracing::info!(report = ?r, "{name}"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "{name} failed"),
        }
    }
}
