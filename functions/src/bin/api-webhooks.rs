//! API function: shard reports from runners (`/webhooks/parallel-execution/{id}`).

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_api(env!("CARGO_BIN_NAME")).await
}
