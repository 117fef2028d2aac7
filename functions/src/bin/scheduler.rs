//! The scheduler: consumes the schedule queue (nudges, batched) and runs
//! scheduling passes; a failed pass reports the batch's messages as failed.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_sqs(|app, event| async move { tms_functions::schedule(&app, event).await })
        .await
}
