//! `tms serve`: the whole orchestrator in one process — the API router, the
//! scheduler woken by nudges, the aggregator fed by the in-process bus, and
//! the sweeps on intervals — over the embedded SQLite store.

use crate::adapters::{ChannelEvents, NotifyNudges, SqliteStore};
use crate::auth;
use crate::config::Config;
use crate::error::Result;
use crate::http;
use crate::ports::{Ports, Store};
use crate::time::SystemClock;
use crate::usecases::{Orchestrator, SweepReport};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The adapters of the local server.
pub struct LocalPorts;

impl Ports for LocalPorts {
    type Store = SqliteStore;
    type Clock = SystemClock;
    type Nudges = NotifyNudges;
    type Events = ChannelEvents;
}

pub struct ServeOptions {
    pub data_dir: PathBuf,
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
async fn admin_token_hash(
    store: &SqliteStore,
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

/// Runs until `shutdown` resolves. Prints `listening on http://ADDR` once bound.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = SqliteStore::open_dir(&options.data_dir)?;
    let (hash, created) = admin_token_hash(&store, options.admin_token.as_deref()).await?;
    if let Some(token) = created {
        println!("created admin token (shown only once; set TMS_ADMIN_TOKEN to choose your own): {token}");
    }
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

    let mut tasks = tokio::task::JoinSet::new();
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
    let sweeper = app.clone();
    tasks.spawn(every(sweep_every, "timeout sweep", move || {
        let app = sweeper.clone();
        async move { app.timeout_sweep().await }
    }));
    let health = app.clone();
    let health_every = Duration::from_secs(options.config.heartbeat_interval_secs.max(1));
    tasks.spawn(every(health_every, "health sweep", move || {
        let app = health.clone();
        async move { app.health_sweep().await }
    }));

    let addr = listener
        .local_addr()
        .map_err(|e| crate::Error::Internal(format!("cannot read the listening address: {e}")))?;
    println!("listening on http://{addr}");
    let served = axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown)
        .await;
    tasks.shutdown().await;
    served.map_err(|e| crate::Error::Internal(format!("server stopped: {e}")))
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
