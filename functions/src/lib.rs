//! The Lambda functions of TMS. Each binary in `src/bin` only wires: it
//! reads its typed settings at cold start (failing there, not on the first
//! request), builds the orchestrator on the AWS adapters and hands one of
//! the handlers below to the Lambda runtime. The handlers are plain async
//! functions so the emulator test drives them in-process with recorded
//! event payloads.

pub mod emf;
pub mod env;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use std::sync::Arc;
use tms::adapters::aws::{redeliver_after, settle_dispatch, Settled};
use tms::adapters::AwsPorts;
use tms::ports::{Event, Ports};
use tms::usecases::{Orchestrator, SweepReport};

pub use env::{FunctionEnv, SettingsError};

/// The orchestrator a function runs, shared by its invocations.
pub type App = Arc<Orchestrator<AwsPorts>>;

/// The error a handler gives the runtime (it logs it and fails the invocation).
pub type HandlerError = lambda_runtime::Error;

/// Structured JSON logs on stdout (CloudWatch), filtered by `RUST_LOG`,
/// and the metrics events as CloudWatch EMF lines (not also as logs).
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{}=off", tms::usecases::METRICS_TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_filter(filter);
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(emf::EmfLayer::new(|line| println!("{line}")))
        .try_init();
}

/// Cold start: settings from the environment, then the orchestrator.
pub async fn cold_start(needs_admin_token: bool) -> Result<App, SettingsError> {
    if let Ok(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        println!("{}", emf::cold_start(now, &function));
    }
    let env = FunctionEnv::from_process(needs_admin_token)?;
    env.app().await
}

/// Every message of a batch reported as failed, so SQS redelivers them
/// (and, after `maxReceiveCount`, moves them to the DLQ).
fn fail_all(event: &SqsEvent) -> SqsBatchResponse {
    failures(event.records.iter().filter_map(|m| m.message_id.clone()))
}

fn failures(ids: impl Iterator<Item = String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = ids
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

/// The scheduler: a batch of schedule nudges (however many) is one
/// scheduling pass, repeated while passes make progress.
pub async fn schedule<P: Ports>(
    app: &Arc<Orchestrator<P>>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, HandlerError> {
    match app.schedule_sweep().await {
        Ok(report) => {
            tracing::info!(assigned = report.shards_assigned, "scheduled");
            Ok(SqsBatchResponse::default())
        }
        Err(e) => {
            tracing::error!(error = %e, "scheduling failed; the nudges will be redelivered");
            Ok(fail_all(&event.payload))
        }
    }
}

/// The aggregator: folds a batch of `ShardCompleted` events delivered by
/// the EventBridge rule; a message that cannot be read or folded is
/// reported failed alone.
pub async fn aggregate<P: Ports>(
    app: &Arc<Orchestrator<P>>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, HandlerError> {
    let mut events = Vec::new();
    let mut failed = Vec::new();
    for message in &event.payload.records {
        let id = message.message_id.clone().unwrap_or_default();
        match Event::from_envelope(message.body.as_deref().unwrap_or_default()) {
            Ok(e) => events.push((id, e)),
            Err(e) => {
                tracing::error!(error = %e, message = %id, "unreadable event");
                failed.push(id);
            }
        }
    }
    let batch: Vec<Event> = events.iter().map(|(_, e)| e.clone()).collect();
    let results = app.handle_events(&batch).await;
    for ((id, _), result) in events.into_iter().zip(results) {
        if result.is_err() {
            failed.push(id);
        }
    }
    Ok(failures(failed.into_iter()))
}

/// The queue a dispatcher consumes, to delay messages that must wait.
#[derive(Clone, Debug)]
pub struct DispatchQueue {
    pub sqs: aws_sdk_sqs::Client,
    pub url: String,
}

/// The dispatcher: one dispatch attempt per message, the message's receive
/// count being the attempt number. A platform that is busy or down gets
/// the message back after the attempt's backoff (its visibility is set to
/// it); after the last attempt the shard goes to another runner and the
/// message, reported failed, moves on to the dead-letter queue.
pub async fn dispatch<P: Ports>(
    app: &Arc<Orchestrator<P>>,
    queue: &DispatchQueue,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, HandlerError> {
    let attempts = event.payload.records.iter().map(|message| async move {
        let receive_count = message
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(1);
        let body = message.body.as_deref().unwrap_or_default();
        let settled = settle_dispatch(app, body, receive_count).await;
        if let (Settled::RetryAfter(after), Some(receipt)) =
            (settled, message.receipt_handle.as_deref())
        {
            redeliver_after(&queue.sqs, &queue.url, receipt, after).await;
        }
        (message.message_id.clone().unwrap_or_default(), settled)
    });
    let settled = futures::future::join_all(attempts).await;
    Ok(failures(
        settled
            .into_iter()
            .filter(|(_, s)| *s != Settled::Done)
            .map(|(id, _)| id),
    ))
}

/// Runs the dispatcher function.
pub async fn run_dispatcher() -> Result<(), HandlerError> {
    init_logging();
    let env = FunctionEnv::from_process(false)?;
    let clients = tms::adapters::AwsClients::new(&tms::adapters::aws::sdk_config(None).await);
    let app = env.orchestrator(&clients, tms::time::SystemClock).await?;
    let queue = DispatchQueue {
        sqs: clients.sqs.clone(),
        url: env.resources.dispatch_queue_url.clone(),
    };
    lambda_runtime::run(lambda_runtime::service_fn(|event| {
        let (app, queue) = (app.clone(), queue.clone());
        async move { dispatch(&app, &queue, event).await }
    }))
    .await
}

/// Which sweep a scheduled function runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// The backstop for lost schedule nudges.
    Schedule,
    /// Silent runners become unhealthy and their shards are requeued.
    Health,
    /// Expired leases and executions past their timeout.
    Timeout,
}

/// A scheduled sweep (an EventBridge schedule invokes it).
pub async fn sweep<P: Ports>(
    app: &Arc<Orchestrator<P>>,
    which: Sweep,
    _event: LambdaEvent<EventBridgeEvent>,
) -> Result<SweepReport, HandlerError> {
    let report = match which {
        Sweep::Schedule => app.schedule_sweep().await?,
        Sweep::Health => app.health_sweep().await?,
        Sweep::Timeout => app.timeout_sweep().await?,
    };
    tracing::info!(sweep = ?which, report = ?report, "sweep done");
    Ok(report)
}

/// Each API function's binary (template.yaml's `BuildProperties.Binary`)
/// and the group of routes it serves.
pub const API_FUNCTIONS: [(&str, tms::http::Routes); 6] = [
    ("tms-api-runners", tms::http::Routes::Runners),
    ("tms-api-runner-polls", tms::http::Routes::RunnerPolls),
    ("tms-api-executions", tms::http::Routes::Executions),
    ("tms-api-webhooks", tms::http::Routes::Webhooks),
    ("tms-api-rules", tms::http::Routes::Rules),
    ("tms-api-system", tms::http::Routes::System),
];

/// The routes the API function built as `binary` serves.
pub fn api_routes(binary: &str) -> Option<tms::http::Routes> {
    API_FUNCTIONS
        .iter()
        .find(|(name, _)| *name == binary)
        .map(|(_, routes)| *routes)
}

/// Runs the API function built as `binary`, behind API Gateway.
pub async fn run_api(binary: &str) -> Result<(), HandlerError> {
    init_logging();
    let routes =
        api_routes(binary).ok_or_else(|| format!("{binary} is not one of the API functions"))?;
    let app = cold_start(true).await?;
    lambda_http::run(tms::http::router_for(app, routes)).await
}

/// Runs a function that consumes an SQS queue with `handler`.
pub async fn run_sqs<F, Fut>(handler: F) -> Result<(), HandlerError>
where
    F: Fn(App, LambdaEvent<SqsEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<SqsBatchResponse, HandlerError>>,
{
    init_logging();
    let app = cold_start(false).await?;
    lambda_runtime::run(lambda_runtime::service_fn(|event| {
        handler(app.clone(), event)
    }))
    .await
}

/// Runs a scheduled sweep function.
pub async fn run_sweep(which: Sweep) -> Result<(), HandlerError> {
    init_logging();
    let app = cold_start(false).await?;
    lambda_runtime::run(lambda_runtime::service_fn(|event| {
        let app = app.clone();
        async move { sweep(&app, which, event).await }
    }))
    .await
}
