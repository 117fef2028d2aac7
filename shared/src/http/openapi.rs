//! The OpenAPI document, generated from the handlers' annotations and the
//! body types, so it cannot drift from the code.

use super::handlers;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "TMS orchestrator API", description = "Queue test executions, split them into shards, run them on registered runners and collect one report."),
    servers((url = "/api/enhanced-orchestration")),
    paths(
        handlers::register_runner, handlers::list_runners, handlers::get_runner, handlers::heartbeat,
        handlers::pause_runner, handlers::resume_runner, handlers::deregister_runner, handlers::runner_health,
        handlers::queue_execution, handlers::list_executions, handlers::execution_status, handlers::execution_report,
        handlers::cancel_execution, handlers::retry_execution, handlers::create_rule, handlers::list_rules,
        handlers::delete_rule, handlers::shard_webhook, handlers::system_health, handlers::utilization,
        handlers::create_token,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
