//! The HTTP API: axum routes under `/api/enhanced-orchestration`, bearer
//! auth, strict JSON bodies and problem+json errors. The same router serves
//! `tms serve` and (later) the API Lambda functions.

mod extract;
mod handlers;
mod openapi;
mod problem;
pub mod views;

pub use extract::{parse_json, ApiJson, ApiQuery, Caller, RawBody, BODY_LIMIT};
pub use openapi::ApiDoc;
pub use problem::Problem;

use crate::ports::Ports;
use crate::usecases::Orchestrator;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use std::sync::Arc;

/// Base path of the API, from the original TMS design.
pub const BASE_PATH: &str = "/api/enhanced-orchestration";

pub type AppState<P> = Arc<Orchestrator<P>>;

/// The whole API.
pub fn router<P: Ports>(app: AppState<P>) -> Router {
    use handlers::*;
    let api = Router::new()
        .route("/runners/register", post(register_runner::<P>))
        .route("/runners", get(list_runners::<P>))
        .route("/runners/{id}", get(get_runner::<P>))
        .route("/runners/{id}/heartbeat", post(heartbeat::<P>))
        .route("/runners/{id}/pause", post(pause_runner::<P>))
        .route("/runners/{id}/resume", post(resume_runner::<P>))
        .route("/runners/{id}/deregister", post(deregister_runner::<P>))
        .route("/runners/{id}/health", get(runner_health::<P>))
        .route("/executions/queue", post(queue_execution::<P>))
        .route("/executions", get(list_executions::<P>))
        .route("/executions/{id}/status", get(execution_status::<P>))
        .route("/executions/{id}/report", get(execution_report::<P>))
        .route("/executions/{id}/cancel", post(cancel_execution::<P>))
        .route("/executions/{id}/retry", post(retry_execution::<P>))
        .route(
            "/load-balancing-rules",
            post(create_rule::<P>).get(list_rules::<P>),
        )
        .route("/load-balancing-rules/{id}", delete(delete_rule::<P>))
        .route(
            "/webhooks/parallel-execution/{id}",
            post(shard_webhook::<P>),
        )
        .route("/system/health", get(system_health::<P>))
        .route("/resources/utilization", get(utilization::<P>))
        .route("/tokens", post(create_token::<P>))
        .fallback(not_found);
    Router::new()
        .nest(BASE_PATH, api)
        .route("/openapi.json", get(openapi::serve))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}
