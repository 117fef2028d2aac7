//! API function: load-balancing rules (`/load-balancing-rules...`).

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_api(tms::http::Routes::Rules).await
}
