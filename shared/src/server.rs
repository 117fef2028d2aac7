//! `tms serve`: the whole orchestrator in one process — the API router, the
//! scheduler, the aggregator and the sweeps on intervals.
//!
//! On the embedded backend the scheduler is woken by in-process nudges and
//! the aggregator fed by an in-process bus, over SQLite. On the AWS backend
//! (DynamoDB, SQS, EventBridge on moto, LocalStack or an account) the same
//! process long-polls the schedule and aggregate queues and runs exactly
//! what the scheduler and aggregator functions run.

use crate::adapters::aws::{self, sdk_config, AwsClients, AwsPorts, Settled};
use crate::adapters::stack::{self, Template};
use crate::adapters::{ChannelEvents, EnvSecrets, LocalNudges, ReqwestHttp, SqliteStore};
use crate::auth;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::http;
use crate::ports::{DispatchOrder, Event, Ports, Store};
use crate::time::SystemClock;
use crate::usecases::{Adapters, DispatchOutcome, Orchestrator, SweepReport};
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
    type Nudges = LocalNudges;
    type Events = ChannelEvents;
    type Secrets = EnvSecrets;
    type Http = ReqwestHttp;
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
    /// Timeouts of the API's connections.
    pub connections: http::listener::ConnectionLimits,
    /// Rate, concurrency and body-memory limits of the API.
    pub limits: http::guard::Limits,
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
    let (nudges, mut orders) = LocalNudges::new();
    let (events, mut inbox) = ChannelEvents::new();
    let wake = nudges.wake.clone();
    let app: Arc<Orchestrator<LocalPorts>> = Arc::new(Orchestrator::new(
        Adapters {
            store,
            clock: SystemClock,
            nudges,
            events,
            secrets: EnvSecrets,
            http: ReqwestHttp::new()?,
        },
        config_for(&listener, &options)?,
        hash,
    ));

    let mut tasks = JoinSet::new();
    let scheduler = app.clone();
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
    // The dispatcher function's work; each order retries on its own timer.
    let dispatcher = app.clone();
    tasks.spawn(async move {
        let mut running = JoinSet::new();
        while let Some(order) = orders.recv().await {
            running.spawn(dispatch_until_settled(dispatcher.clone(), order));
            while running.try_join_next().is_some() {}
        }
    });
    spawn_sweeps(&mut tasks, &app, &options);
    run_http(listener, app, tasks, &options, shutdown).await
}

/// The settings, with the public URL dispatched jobs report to defaulting
/// to the address this server listens on.
fn config_for(listener: &TcpListener, options: &ServeOptions) -> Result<Config> {
    let mut config = options.config.clone();
    if config.public_url.is_none() {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Internal(format!("cannot read the listening address: {e}")))?;
        config.public_url = Some(format!("http://{addr}"));
    }
    Ok(config)
}

/// Dispatch attempts for one order until one settles it, waiting as each
/// failed attempt asks — what SQS redelivery does for the function.
async fn dispatch_until_settled<P: Ports>(app: Arc<Orchestrator<P>>, order: DispatchOrder) {
    for attempt in 1..=app.config.dispatch_max_attempts.max(1) {
        match app.dispatch_shard(&order, attempt).await {
            Ok(DispatchOutcome::Retry { after, .. }) => tokio::time::sleep(after).await,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, execution = %order.execution_id,
                    shard = order.shard_index, "dispatch attempt failed");
                tokio::time::sleep(app.config.dispatch_backoff(attempt)).await;
            }
        }
    }
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
    let app: Arc<Orchestrator<AwsPorts>> = Arc::new(resources.orchestrator(
        &clients,
        SystemClock,
        config_for(&listener, &options)?,
        hash,
    )?);
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
                vec![settled(ok); bodies.len()]
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
                    .map(|(b, _)| Event::from_envelope(b).ok())
                    .collect();
                let readable: Vec<Event> = events.iter().flatten().cloned().collect();
                let mut folded = app.handle_events(&readable).await.into_iter();
                events
                    .iter()
                    .map(|e| settled(e.is_some() && folded.next().is_some_and(|r| r.is_ok())))
                    .collect()
            }
        },
    ));
    // The dispatcher function's work: one attempt per delivery.
    let dispatcher = app.clone();
    tasks.spawn(poll_queue(
        clients.sqs.clone(),
        queue("DispatchQueue")?,
        move |batch| {
            let app = dispatcher.clone();
            async move {
                let attempts = batch
                    .iter()
                    .map(|(body, count)| aws::settle_dispatch(&app, body, *count));
                futures::future::join_all(attempts).await
            }
        },
    ));
    let backstop = app.clone();
    tasks.spawn(every(options.sweep_interval, "schedule sweep", move || {
        let app = backstop.clone();
        async move { app.schedule_sweep().await }
    }));
    spawn_sweeps(&mut tasks, &app, &options);
    run_http(listener, app, tasks, &options, shutdown).await
}

/// Long-polls an SQS queue like a Lambda event source mapping: hands each
/// batch of messages (body, receive count) to `handle`, deletes the ones it
/// settled, delays the ones it wants again later, and leaves the others to
/// be redelivered (and, in the end, dead-lettered).
async fn poll_queue<F, Fut>(sqs: aws_sdk_sqs::Client, url: String, handle: F)
where
    F: Fn(Vec<(String, u32)>) -> Fut,
    Fut: Future<Output = Vec<Settled>>,
{
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
            )
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
        let batch = messages
            .iter()
            .map(|m| {
                let count = m
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                    })
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                (m.body.clone().unwrap_or_default(), count)
            })
            .collect();
        let outcomes = handle(batch).await;
        for (message, settled) in messages.iter().zip(outcomes) {
            let Some(receipt) = message.receipt_handle.as_deref() else {
                continue;
            };
            match settled {
                Settled::Done => {
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
                Settled::RetryAfter(after) => {
                    aws::redeliver_after(&sqs, &url, receipt, after).await
                }
                Settled::Failed => {}
            }
        }
    }
}

/// `Done` for true, `Failed` for false.
fn settled(ok: bool) -> Settled {
    if ok {
        Settled::Done
    } else {
        Settled::Failed
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
    options: &ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("cannot read the listening address: {e}")))?;
    println!("listening on http://{addr}");
    // The line above is for scripts; this one for the server's log.
    tracing::info!(%addr, "serving the API and the dashboard");
    let router = http::guarded_router(app, http::guard::Guard::new(options.limits));
    http::listener::serve(listener, router, options.connections, shutdown).await;
    tasks.shutdown().await;
    Ok(())
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
