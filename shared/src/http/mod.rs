//! The HTTP API: axum routes under `/api/enhanced-orchestration`, bearer
//! auth, strict JSON bodies and problem+json errors. The same router serves
//! `tms serve` and, one route group each, the API Lambda functions.

mod cors;
pub mod dashboard;
mod extract;
pub mod guard;
mod handlers;
pub mod listener;
mod openapi;
mod problem;
pub mod views;

pub use cors::parse_origin;
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

/// The API's routes in groups: one group per API function on AWS (so each
/// function's IAM policy grants only what its routes need); `tms serve`
/// serves them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    All,
    /// Registration, listing and the operator's controls of runners.
    Runners,
    /// The runners' hot path: heartbeats, claimable listings and claims of
    /// dynamic batches — most of the API's traffic, in a function of its
    /// own so its concurrency is reserved and capped apart from the rest.
    RunnerPolls,
    Executions,
    Webhooks,
    Rules,
    /// Health, utilization, tokens and the OpenAPI document.
    System,
}

/// The whole API.
pub fn router<P: Ports>(app: AppState<P>) -> Router {
    router_for(app, Routes::All)
}

/// The whole API behind `guard`'s limits, as `tms serve` runs it.
pub fn guarded_router<P: Ports>(app: AppState<P>, guard: Arc<guard::Guard>) -> Router {
    router(app)
        .layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            guard::admit,
        ))
        .layer(axum::Extension(guard))
}

/// The routes of one group; any other path is a problem+json 404.
pub fn router_for<P: Ports>(app: AppState<P>, routes: Routes) -> Router {
    use handlers::*;
    let wanted = |group: Routes| routes == Routes::All || routes == group;
    let mut api = Router::new();
    if wanted(Routes::Runners) {
        api = api
            .route("/runners/register", post(register_runner::<P>))
            .route("/runners", get(list_runners::<P>))
            .route("/runners/{id}", get(get_runner::<P>))
            .route("/runners/{id}/pause", post(pause_runner::<P>))
            .route("/runners/{id}/resume", post(resume_runner::<P>))
            .route("/runners/{id}/deregister", post(deregister_runner::<P>))
            .route("/runners/{id}/health", get(runner_health::<P>));
    }
    if wanted(Routes::RunnerPolls) {
        api = api
            .route("/runners/{id}/heartbeat", post(heartbeat::<P>))
            .route("/runners/{id}/claimable", get(claimable::<P>))
            .route("/executions/{id}/claims", post(claim_batch::<P>));
    }
    if wanted(Routes::Executions) {
        api = api
            .route("/executions/queue", post(queue_execution::<P>))
            .route("/executions", get(list_executions::<P>))
            .route("/executions/{id}/status", get(execution_status::<P>))
            .route("/executions/{id}/report", get(execution_report::<P>))
            .route("/executions/{id}/cancel", post(cancel_execution::<P>))
            .route("/executions/{id}/retry", post(retry_execution::<P>))
            .route("/suites/{suite}/timings", post(import_timings::<P>))
            .route("/suites/{suite}/flaky", get(flaky_tests::<P>));
    }
    if wanted(Routes::Rules) {
        api = api
            .route(
                "/load-balancing-rules",
                post(create_rule::<P>).get(list_rules::<P>),
            )
            .route("/load-balancing-rules/{id}", delete(delete_rule::<P>))
            .route(
                "/alert-rules",
                post(create_alert_rule::<P>).get(list_alert_rules::<P>),
            )
            .route("/alert-rules/{id}", delete(delete_alert_rule::<P>));
    }
    if wanted(Routes::Webhooks) {
        api = api
            .route(
                "/webhooks/parallel-execution/{id}",
                post(shard_webhook::<P>),
            )
            .route(
                "/webhooks/parallel-execution/{id}/shards/{index}",
                get(shard_assignment::<P>),
            )
            .route(
                "/webhooks/parallel-execution/{id}/shards/{index}/claim",
                post(claim_shard::<P>),
            );
    }
    let cors = cors::layer(&app.config.cors_origins);
    let mut root = Router::new();
    if wanted(Routes::System) {
        api = api
            .route("/system/health", get(system_health::<P>))
            .route("/resources/utilization", get(utilization::<P>))
            .route("/metrics", get(metrics::<P>))
            .route("/tokens", post(create_token::<P>));
        root = root
            .route("/openapi.json", get(openapi::serve))
            .route(dashboard::PATH, get(dashboard::page))
            .route(
                &format!("{}/{{asset}}", dashboard::PATH),
                get(dashboard::asset),
            );
    }
    let router = root
        .nest(BASE_PATH, api.fallback(not_found))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}
