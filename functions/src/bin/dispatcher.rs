//! The dispatcher: consumes the dispatch queue and starts each shard
//! assigned to a push-mode runner as a job on the runner's CI platform.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_dispatcher().await
}
