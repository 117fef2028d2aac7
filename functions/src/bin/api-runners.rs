//! API function: registration, listing and the operator's controls of runners (`/runners/...`).

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_api(env!("CARGO_BIN_NAME")).await
}
