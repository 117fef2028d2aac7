//! API function: the runners' hot path — heartbeats, claimable listings and
//! claims of dynamic batches.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_api(env!("CARGO_BIN_NAME")).await
}
