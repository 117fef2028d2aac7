//! API function: queueing, status, listing, cancel, retry and reports (`/executions/...`).

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_api(env!("CARGO_BIN_NAME")).await
}
