//! The aggregator: consumes the aggregate queue, which an EventBridge rule
//! feeds with `ShardCompleted` events, and folds them into executions.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_sqs(|app, event| async move { tms_functions::aggregate(&app, event).await })
        .await
}
