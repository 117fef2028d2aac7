//! Scheduled function: the health sweep: silent runners become unhealthy and their shards are requeued.

#[tokio::main]
async fn main() -> Result<(), tms_functions::HandlerError> {
    tms_functions::run_sweep(tms_functions::Sweep::Health).await
}
