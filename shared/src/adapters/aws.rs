//! The AWS messaging adapters: nudges as SQS messages, domain events on an
//! EventBridge bus, and the SDK settings every AWS adapter shares.
//!
//! Messages are nudges, not state: a lost one only delays work until a sweep
//! finds it in the table, so a failed send is logged, not surfaced to the
//! caller whose write already succeeded.

use crate::error::{Error, Result};
use crate::ports::{DispatchOrder, Event, Events, Nudges};
use aws_config::{BehaviorVersion, SdkConfig};
use serde::Deserialize;

/// `source` of every event TMS puts on its bus.
pub const EVENT_SOURCE: &str = "tms";

/// SDK settings from the environment's default chain (region, credentials),
/// pointed at `endpoint` when given (moto, LocalStack) instead of AWS.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// "Look at the queue now": a message on the schedule queue, which the
/// scheduler function consumes (batched, so a burst becomes one pass); and
/// dispatch orders on the dispatch queue, one message per lease.
#[derive(Clone)]
pub struct SqsNudges {
    client: aws_sdk_sqs::Client,
    schedule_queue_url: String,
    dispatch_queue_url: String,
}

impl SqsNudges {
    pub fn new(
        client: aws_sdk_sqs::Client,
        schedule_queue_url: impl Into<String>,
        dispatch_queue_url: impl Into<String>,
    ) -> Self {
        SqsNudges {
            client,
            schedule_queue_url: schedule_queue_url.into(),
            dispatch_queue_url: dispatch_queue_url.into(),
        }
    }
}

/// The body of a schedule nudge.
pub const SCHEDULE_NUDGE: &str = r#"{"type":"schedule"}"#;

impl Nudges for SqsNudges {
    async fn schedule(&self) {
        let sent = self
            .client
            .send_message()
            .queue_url(&self.schedule_queue_url)
            .message_body(SCHEDULE_NUDGE)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                "schedule nudge not sent; the schedule sweep will find the work");
        }
    }

    async fn dispatch(&self, order: DispatchOrder) {
        let body = match serde_json::to_string(&order) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "dispatch order not encoded");
                return;
            }
        };
        let sent = self
            .client
            .send_message()
            .queue_url(&self.dispatch_queue_url)
            .message_body(body)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                execution = %order.execution_id, shard = order.shard_index,
                "dispatch order not sent; the timeout sweep will take the lease back");
        }
    }
}

/// What became of one dispatch-queue message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Done with (dispatched, out of date, or refused and handed back): delete it.
    Done,
    /// Deliver it again after this long (SQS visibility timeout).
    RetryAfter(std::time::Duration),
    /// Leave it to SQS: it comes back after the visibility timeout and,
    /// past `maxReceiveCount`, moves to the dead-letter queue.
    Failed,
}

/// Runs dispatch attempt `receive_count` for a dispatch-queue message body:
/// what the dispatcher function and `tms serve --backend aws` both do.
pub async fn settle_dispatch<P: crate::ports::Ports>(
    app: &crate::usecases::Orchestrator<P>,
    body: &str,
    receive_count: u32,
) -> Settled {
    use crate::usecases::DispatchOutcome;
    let order: DispatchOrder = match serde_json::from_str(body) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "unreadable dispatch order; it will be dead-lettered");
            return Settled::Failed;
        }
    };
    match app.dispatch_shard(&order, receive_count.max(1)).await {
        Ok(DispatchOutcome::Retry { after, .. }) => Settled::RetryAfter(after),
        // Handed back after the last attempt: the message goes on to the
        // dead-letter queue, as a record of the platform's failure.
        Ok(DispatchOutcome::Exhausted { .. }) => Settled::Failed,
        Ok(_) => Settled::Done,
        Err(e) => {
            tracing::error!(error = %e, execution = %order.execution_id,
                shard = order.shard_index, "dispatch attempt failed");
            Settled::Failed
        }
    }
}

/// Asks SQS to deliver a message again after `after` (at most 12 hours).
pub async fn redeliver_after(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    receipt_handle: &str,
    after: std::time::Duration,
) {
    let seconds = i32::try_from(after.as_secs().clamp(1, 43_200)).unwrap_or(43_200);
    if let Err(e) = sqs
        .change_message_visibility()
        .queue_url(queue_url)
        .receipt_handle(receipt_handle)
        .visibility_timeout(seconds)
        .send()
        .await
    {
        tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
            "could not delay the message; it comes back after the queue's visibility timeout");
    }
}

/// Domain events on a custom EventBridge bus; a rule routes
/// `ShardCompleted` to the aggregate queue.
#[derive(Clone)]
pub struct EventBridgeEvents {
    client: aws_sdk_eventbridge::Client,
    bus: String,
}

impl EventBridgeEvents {
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>) -> Self {
        EventBridgeEvents {
            client,
            bus: bus.into(),
        }
    }
}

impl Event {
    /// The event's EventBridge `detail-type`.
    pub fn detail_type(&self) -> &'static str {
        match self {
            Event::ShardCompleted { .. } => "ShardCompleted",
        }
    }

    /// Reads an event back from the EventBridge envelope that a rule
    /// delivers (for example as the body of an SQS message).
    pub fn from_envelope(body: &str) -> Result<Event> {
        #[derive(Deserialize)]
        struct Envelope {
            detail: Event,
        }
        serde_json::from_str::<Envelope>(body)
            .map(|e| e.detail)
            .map_err(|e| Error::Internal(format!("not a TMS event envelope: {e}")))
    }
}

impl Events for EventBridgeEvents {
    async fn publish(&self, event: Event) -> Result<()> {
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(EVENT_SOURCE)
            .detail_type(event.detail_type())
            .detail(serde_json::to_string(&event).map_err(Error::storage)?)
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(Error::storage)?;
        if out.failed_entry_count > 0 {
            let reason = out
                .entries()
                .iter()
                .filter_map(|e| e.error_message())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::Internal(format!(
                "EventBridge refused the event: {reason}"
            )));
        }
        Ok(())
    }
}

/// The adapters of a deployment on AWS: DynamoDB, SQS, EventBridge, and a
/// clock (the system's, or a manual one in tests).
pub struct AwsPorts<C = crate::time::SystemClock>(std::marker::PhantomData<C>);

impl<C: crate::time::Clock> crate::ports::Ports for AwsPorts<C> {
    type Store = crate::adapters::DynamoStore;
    type Clock = C;
    type Nudges = SqsNudges;
    type Events = EventBridgeEvents;
    type Secrets = crate::adapters::SecretsManagerSecrets;
    type Http = crate::adapters::ReqwestHttp;
}

/// The SDK clients of one deployment (built from one [`SdkConfig`], or
/// with interceptors, as the request-cost measurement does).
#[derive(Clone, Debug)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl AwsClients {
    pub fn new(sdk: &SdkConfig) -> Self {
        AwsClients {
            dynamodb: crate::adapters::dynamo::retry::client(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            eventbridge: aws_sdk_eventbridge::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
        }
    }
}

/// Where the AWS resources of one deployment are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsResources {
    pub table: String,
    pub schedule_queue_url: String,
    pub dispatch_queue_url: String,
    pub event_bus: String,
    /// Where dispatch credentials are looked up in Secrets Manager.
    pub secret_prefix: String,
}

impl AwsResources {
    /// An orchestrator on these resources.
    pub fn orchestrator<C: crate::time::Clock>(
        &self,
        clients: &AwsClients,
        clock: C,
        config: crate::config::Config,
        admin_token_hash: String,
    ) -> Result<crate::usecases::Orchestrator<AwsPorts<C>>> {
        Ok(crate::usecases::Orchestrator::new(
            crate::usecases::Adapters {
                store: crate::adapters::DynamoStore::new(clients.dynamodb.clone(), &self.table),
                clock,
                nudges: SqsNudges::new(
                    clients.sqs.clone(),
                    &self.schedule_queue_url,
                    &self.dispatch_queue_url,
                ),
                events: EventBridgeEvents::new(clients.eventbridge.clone(), &self.event_bus),
                secrets: crate::adapters::SecretsManagerSecrets::new(
                    clients.secrets.clone(),
                    &self.secret_prefix,
                ),
                http: crate::adapters::ReqwestHttp::new()?,
            },
            config,
            admin_token_hash,
        ))
    }
}
