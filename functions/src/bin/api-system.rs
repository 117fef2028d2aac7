//! API function: system health, utilization, tokens and the OpenAPI document.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_api(env!("CARGO_BIN_NAME")).await
}
