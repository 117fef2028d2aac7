//! Scheduled function: the schedule sweep, the backstop for lost nudges.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_sweep(tms_functions::Sweep::Schedule).await
}
