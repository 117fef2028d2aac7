//! Scheduled function: the timeout sweep: expired leases, executions past their timeout, and a re-fold of open executions.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_sweep(tms_functions::Sweep::Timeout).await
}
