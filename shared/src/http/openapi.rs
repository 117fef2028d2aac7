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
        handlers::register_runner, handlers::list_runners, handlers::get_runner, handlers::heartbeat, handlers::claimable,
        handlers::pause_runner, handlers::resume_runner, handlers::deregister_runner, handlers::runner_health,
        handlers::queue_execution, handlers::list_executions, handlers::execution_status, handlers::execution_report,
        handlers::cancel_execution, handlers::retry_execution, handlers::import_timings, handlers::create_rule, handlers::list_rules,
        handlers::delete_rule, handlers::create_alert_rule, handlers::list_alert_rules, handlers::delete_alert_rule, handlers::shard_webhook, handlers::shard_assignment, handlers::claim_shard, handlers::claim_batch, handlers::flaky_tests, handlers::system_health, handlers::utilization, handlers::metrics,
        handlers::create_token,
    ),
    modifiers(&BearerAuth, &ProblemResponses)
)]
pub struct ApiDoc;

/// Documents the errors every authenticated operation can answer with, all
/// as `application/problem+json`, and gives the explicitly listed error
/// responses that content type too.
struct ProblemResponses;

const PROBLEM_STATUSES: [(&str, &str); 10] = [
    ("400", "the body does not parse (`invalid_json`)"),
    ("401", "missing or invalid bearer token"),
    ("403", "the token may not do this"),
    ("404", "no such resource"),
    (
        "409",
        "invalid state change, stale lease or concurrent change",
    ),
    ("413", "request body too large"),
    (
        "422",
        "a field or parameter is not acceptable (`validation_failed`, with `field`), \
         or an Idempotency-Key reused with another body",
    ),
    (
        "429",
        "too many requests from this client or token (`rate_limited`, with `Retry-After`)",
    ),
    ("500", "internal error"),
    (
        "503",
        "busy: too many requests or request bytes in flight (`overloaded`, with `Retry-After`)",
    ),
];

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path == "/system/health" {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                for (status, description) in PROBLEM_STATUSES {
                    let documented = ResponseBuilder::new()
                        .description(description)
                        .content("application/problem+json", problem())
                        .build();
                    match responses.get_mut(status) {
                        Some(RefOr::T(existing)) => {
                            existing.content.clear();
                            existing
                                .content
                                .insert("application/problem+json".into(), problem());
                        }
                        Some(RefOr::Ref(_)) => {}
                        None => {
                            responses.insert(status.into(), RefOr::T(documented));
                        }
                    }
                }
            }
        }
    }
}

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
