//! API function: registration, heartbeats and runner controls (`/runners/...`).

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_api(tms::http::Routes::Runners).await
}
