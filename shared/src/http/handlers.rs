//! Route handlers: authorize, call one use case, shape the answer.

use super::extract::{parse_json, ApiJson, ApiQuery, Caller, RawBody};
use super::views::*;
use super::AppState;
use crate::auth::Principal;
use crate::domain::{ExecutionStatus, LoadBalancingRule};
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, LeaseId, RuleId, RunnerId};
use crate::ports::{ExecutionFilter, Ports};
use crate::usecases::{
    Assignment, ClaimOutcome, ClaimablePage, DurationsFile, FlakyTests, ImportedTimings,
    JunitReport, NewExecution, NewRule, NewRunner, NewToken, NextBatch, ReportOutcome,
    ReportStatus, ShardReport, SystemHealth, Utilization, MAX_CLAIMABLE_PAGE,
};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::IntoParams;

fn require_api(caller: &Principal) -> Result<()> {
    if caller.is_api() {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "use this endpoint; it needs an admin or ci token",
        ))
    }
}

fn require_admin(caller: &Principal) -> Result<()> {
    if *caller == Principal::Admin {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "use this endpoint; it needs an admin token",
        ))
    }
}

/// The runner itself, or an admin.
fn require_runner_or_admin(caller: &Principal, id: &RunnerId) -> Result<()> {
    match caller {
        Principal::Admin => Ok(()),
        Principal::Runner(own) if own == id => Ok(()),
        _ => Err(Error::Forbidden("act for another runner")),
    }
}

pub async fn not_found(uri: axum::http::Uri) -> Error {
    Error::not_found(crate::Entity::Route, uri.path())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size, default 100.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExecutionQuery {
    /// queued, running, passed, failed, errored, cancelled or timed_out.
    pub status: Option<String>,
    pub suite: Option<String>,
    /// Page size, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub usage: Option<crate::domain::Usage>,
}

#[utoipa::path(post, path = "/runners/register", tag = "runners", request_body = NewRunner,
    responses((status = 201, body = RegisteredRunnerView), (status = 400, body = super::Problem),
        (status = 403, body = super::Problem, description = "a ci token registering a runner with `dispatch`"),
        (status = 422, body = super::Problem)), security(("bearer" = [])))]
pub async fn register_runner<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<NewRunner>,
) -> Result<(StatusCode, Json<RegisteredRunnerView>)> {
    require_api(&caller)?;
    // A push-mode runner makes TMS send a credential somewhere on every
    // assignment: only an admin decides that. CI tokens register pull runners.
    if body.dispatch.is_some() && caller != Principal::Admin {
        return Err(Error::Forbidden(
            "register a push-mode runner (one with `dispatch`); that needs an admin token",
        ));
    }
    let registered = app.register_runner(body).await?;
    Ok((
        StatusCode::CREATED,
        Json(RegisteredRunnerView {
            runner: registered.runner.into(),
            token: registered.token,
            heartbeat_interval_seconds: app.config.heartbeat_interval_secs,
        }),
    ))
}

#[utoipa::path(get, path = "/runners", tag = "runners", params(PageQuery),
    responses((status = 200, body = RunnerPage)), security(("bearer" = [])))]
pub async fn list_runners<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<RunnerPage>> {
    require_api(&caller)?;
    let page = app
        .list_runners(q.limit.unwrap_or(100), q.cursor.as_deref())
        .await?;
    Ok(Json(RunnerPage {
        items: page.items.into_iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/runners/{id}", tag = "runners",
    responses((status = 200, body = RunnerView), (status = 404, body = super::Problem)), security(("bearer" = [])))]
pub async fn get_runner<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RunnerView>> {
    let id = RunnerId::parse(&id)?;
    if !caller.is_api() {
        require_runner_or_admin(&caller, &id)?;
    }
    Ok(Json(app.runner(&id).await?.into()))
}

/// A runner claims the next batch of a dynamic execution (runner token
/// only). Nothing left to claim gives `assignment: null`; `finished` says
/// the execution is over, `queued_tests` what still waits for a claim
/// (work other runners hold may come back). A claim that loses a race
/// reads again and takes the next batch: never a 409.
#[utoipa::path(post, path = "/executions/{id}/claims", tag = "runners",
    responses((status = 200, body = ClaimOutcome),
        (status = 403, body = super::Problem, description = "not a runner's token"),
        (status = 404, body = super::Problem, description = "no such execution or runner"),
        (status = 422, body = super::Problem, description = "not a dynamic execution, or the runner cannot take a batch now")),
    security(("bearer" = [])))]
pub async fn claim_batch<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ClaimOutcome>> {
    let id = ExecutionId::parse(&id)?;
    let Principal::Runner(runner) = &caller else {
        return Err(Error::Forbidden("claim batches: only a runner's token may"));
    };
    Ok(Json(app.claim_batch(runner, &id).await?))
}

/// The dynamic executions this runner may claim batches of (its own token
/// only), highest priority first, then oldest: where an agent with a free
/// slot goes next. Paged: a page may hold fewer than `limit` (even none)
/// while `next_cursor` is given, since executions the runner does not fit
/// are passed over.
#[utoipa::path(get, path = "/runners/{id}/claimable", tag = "runners", params(PageQuery),
    responses((status = 200, body = ClaimablePage),
        (status = 403, body = super::Problem, description = "not this runner's token"),
        (status = 404, body = super::Problem, description = "no such runner"),
        (status = 422, body = super::Problem, description = "a cursor not of this listing, or a limit out of range")),
    security(("bearer" = [])))]
pub async fn claimable<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<ClaimablePage>> {
    let id = RunnerId::parse(&id)?;
    if caller != Principal::Runner(id.clone()) {
        return Err(Error::Forbidden(
            "list claimable work for a runner other than the token's own",
        ));
    }
    let limit = q.limit.unwrap_or(MAX_CLAIMABLE_PAGE);
    if !(1..=MAX_CLAIMABLE_PAGE).contains(&limit) {
        return Err(Error::validation(
            "limit",
            format!("must be between 1 and {MAX_CLAIMABLE_PAGE}"),
        ));
    }
    Ok(Json(app.claimable(&id, q.cursor.as_deref(), limit).await?))
}

#[utoipa::path(post, path = "/runners/{id}/heartbeat", tag = "runners", request_body = HeartbeatBody,
    responses((status = 200, body = HeartbeatView)), security(("bearer" = [])))]
pub async fn heartbeat<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<HeartbeatBody>,
) -> Result<Json<HeartbeatView>> {
    let id = RunnerId::parse(&id)?;
    if caller != Principal::Runner(id.clone()) {
        return Err(Error::Forbidden(
            "heartbeat for a runner other than the token's own",
        ));
    }
    let assignments = app.heartbeat(&id, body.usage).await?;
    Ok(Json(HeartbeatView {
        assignments,
        heartbeat_interval_seconds: app.config.heartbeat_interval_secs,
    }))
}

/// An admin, or the runner itself: an agent draining on SIGTERM pauses
/// itself so nothing new is assigned to it, and resumes when it starts
/// again.
#[utoipa::path(post, path = "/runners/{id}/pause", tag = "runners",
    responses((status = 200, body = RunnerView), (status = 409, body = super::Problem)), security(("bearer" = [])))]
pub async fn pause_runner<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RunnerView>> {
    let id = RunnerId::parse(&id)?;
    require_runner_or_admin(&caller, &id)?;
    Ok(Json(app.pause_runner(&id).await?.into()))
}

#[utoipa::path(post, path = "/runners/{id}/resume", tag = "runners",
    responses((status = 200, body = RunnerView), (status = 409, body = super::Problem)), security(("bearer" = [])))]
pub async fn resume_runner<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RunnerView>> {
    let id = RunnerId::parse(&id)?;
    require_runner_or_admin(&caller, &id)?;
    Ok(Json(app.resume_runner(&id).await?.into()))
}

/// An admin, or the runner itself (an agent shutting down).
#[utoipa::path(post, path = "/runners/{id}/deregister", tag = "runners",
    responses((status = 200, body = RunnerView), (status = 409, body = super::Problem)), security(("bearer" = [])))]
pub async fn deregister_runner<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<RunnerView>> {
    let id = RunnerId::parse(&id)?;
    require_runner_or_admin(&caller, &id)?;
    Ok(Json(app.deregister_runner(&id).await?.into()))
}

#[utoipa::path(get, path = "/runners/{id}/health", tag = "runners",
    responses((status = 200, body = HealthHistory)), security(("bearer" = [])))]
pub async fn runner_health<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<HealthHistory>> {
    require_api(&caller)?;
    let id = RunnerId::parse(&id)?;
    app.runner(&id).await?;
    Ok(Json(HealthHistory {
        items: app.store_health_history(&id).await?,
    }))
}

/// Queues an execution. Send `Idempotency-Key` to make retries safe.
#[utoipa::path(post, path = "/executions/queue", tag = "executions", request_body = NewExecution,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body return the same execution")),
    responses((status = 202, body = QueuedView), (status = 200, body = QueuedView, description = "idempotent replay"),
        (status = 400, body = super::Problem), (status = 422, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn queue_execution<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<QueuedView>)> {
    require_api(&caller)?;
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::validation("Idempotency-Key", "must be visible ASCII"))?,
        ),
        None => None,
    };
    let (new, idempotency): (NewExecution, _) = match key {
        // Straight into the request type: no intermediate tree to build.
        None => (parse_json(&body)?, None),
        Some(k) => {
            // Hash the canonical form (object keys sorted) so formatting
            // differences do not matter.
            let value: serde_json::Value = parse_json(&body)?;
            let hash = hex::encode(Sha256::digest(value.to_string().as_bytes()));
            let new =
                serde_json::from_value(value).map_err(|e| Error::InvalidJson(e.to_string()))?;
            (new, Some((k.to_owned(), hash)))
        }
    };
    let queued = app.queue_execution(new, idempotency).await?;
    let status = if queued.replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(QueuedView {
            execution: ExecutionView::new(&queued.execution, &queued.shards),
            webhook_token: queued.webhook_token,
            replayed: queued.replayed,
            warnings: queued.warnings,
        }),
    ))
}

#[utoipa::path(get, path = "/executions", tag = "executions", params(ExecutionQuery),
    responses((status = 200, body = ExecutionPage)), security(("bearer" = [])))]
pub async fn list_executions<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    ApiQuery(q): ApiQuery<ExecutionQuery>,
) -> Result<Json<ExecutionPage>> {
    require_api(&caller)?;
    let status = match q.status.as_deref() {
        Some(s) => Some(
            ExecutionStatus::parse(s)
                .ok_or_else(|| Error::validation("status", format!("unknown status {s:?}")))?,
        ),
        None => None,
    };
    let filter = ExecutionFilter {
        status,
        suite: q.suite,
        limit: q.limit.unwrap_or(50),
        cursor: q.cursor,
    };
    let page = app.list_executions(filter).await?;
    Ok(Json(ExecutionPage {
        items: page.items.iter().map(Into::into).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(get, path = "/executions/{id}/status", tag = "executions",
    responses((status = 200, body = ExecutionView), (status = 404, body = super::Problem)), security(("bearer" = [])))]
pub async fn execution_status<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ExecutionView>> {
    require_api(&caller)?;
    let (e, shards) = app.execution_status(&ExecutionId::parse(&id)?).await?;
    Ok(Json(ExecutionView::new(&e, &shards)))
}

/// Query of `GET /executions/{id}/report`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `json` (the default) or `junit`: one merged JUnit XML file.
    #[param(inline)]
    pub format: Option<ReportFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    #[default]
    Json,
    Junit,
}

/// Every shard's results in one document: JSON, or with `format=junit` one
/// merged JUnit XML report (a test suite per shard, flaky tests and earlier
/// attempts marked as Surefire marks them).
#[utoipa::path(get, path = "/executions/{id}/report", tag = "executions", params(ReportQuery),
    responses((status = 200, description = "the report: JSON, or JUnit XML with format=junit",
        content((ExecutionReport = "application/json"), (String = "application/xml")))),
    security(("bearer" = [])))]
pub async fn execution_report<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    require_api(&caller)?;
    let (e, shards, tests) = app.execution_report(&ExecutionId::parse(&id)?).await?;
    Ok(match q.format.unwrap_or_default() {
        ReportFormat::Json => Json(ExecutionReport::new(&e, &shards, tests)).into_response(),
        ReportFormat::Junit => {
            let xml = crate::junit::merged_report(&e, &shards, &tests)?;
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/xml; charset=utf-8",
                )],
                xml,
            )
                .into_response()
        }
    })
}

#[utoipa::path(post, path = "/executions/{id}/cancel", tag = "executions",
    responses((status = 200, body = ExecutionSummary), (status = 409, body = super::Problem)), security(("bearer" = [])))]
pub async fn cancel_execution<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ExecutionSummary>> {
    require_api(&caller)?;
    let e = app.cancel_execution(&ExecutionId::parse(&id)?).await?;
    Ok(Json((&e).into()))
}

/// Runs the failed, errored or cancelled shards of a finished execution again.
#[utoipa::path(post, path = "/executions/{id}/retry", tag = "executions",
    responses((status = 200, body = ExecutionSummary), (status = 409, body = super::Problem)), security(("bearer" = [])))]
pub async fn retry_execution<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ExecutionSummary>> {
    require_api(&caller)?;
    let e = app.retry_execution(&ExecutionId::parse(&id)?).await?;
    Ok(Json((&e).into()))
}

#[utoipa::path(post, path = "/load-balancing-rules", tag = "rules", request_body = NewRule,
    responses((status = 201, body = LoadBalancingRule)), security(("bearer" = [])))]
pub async fn create_rule<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<NewRule>,
) -> Result<(StatusCode, Json<LoadBalancingRule>)> {
    require_admin(&caller)?;
    Ok((StatusCode::CREATED, Json(app.create_rule(body).await?)))
}

#[utoipa::path(get, path = "/load-balancing-rules", tag = "rules",
    responses((status = 200, body = RuleList)), security(("bearer" = [])))]
pub async fn list_rules<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
) -> Result<Json<RuleList>> {
    require_api(&caller)?;
    Ok(Json(RuleList {
        items: app.list_rules().await?,
    }))
}

#[utoipa::path(delete, path = "/load-balancing-rules/{id}", tag = "rules",
    responses((status = 204), (status = 404, body = super::Problem)), security(("bearer" = [])))]
pub async fn delete_rule<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    require_admin(&caller)?;
    app.delete_rule(&RuleId::parse(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates an alert rule, evaluated by every health sweep; its webhook hears
/// of each episode once (fired, then resolved).
#[utoipa::path(post, path = "/alert-rules", tag = "alerts", request_body = crate::usecases::NewAlertRule,
    responses((status = 201, body = crate::domain::AlertRule)), security(("bearer" = [])))]
pub async fn create_alert_rule<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<crate::usecases::NewAlertRule>,
) -> Result<(StatusCode, Json<crate::domain::AlertRule>)> {
    require_admin(&caller)?;
    Ok((
        StatusCode::CREATED,
        Json(app.create_alert_rule(body).await?),
    ))
}

/// Every alert rule with its state: firing or not, since when, the last value.
#[utoipa::path(get, path = "/alert-rules", tag = "alerts",
    responses((status = 200, body = AlertRuleList)), security(("bearer" = [])))]
pub async fn list_alert_rules<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
) -> Result<Json<AlertRuleList>> {
    require_api(&caller)?;
    Ok(Json(AlertRuleList {
        items: app.alert_rules().await?,
    }))
}

#[utoipa::path(delete, path = "/alert-rules/{id}", tag = "alerts",
    responses((status = 204), (status = 404, body = super::Problem)), security(("bearer" = [])))]
pub async fn delete_alert_rule<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    require_admin(&caller)?;
    app.delete_alert_rule(&crate::ids::AlertRuleId::parse(&id)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `POST /webhooks/parallel-execution/{id}`: only with a JUnit XML
/// body, which carries no shard or lease of its own.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WebhookQuery {
    /// JUnit body: the shard reported on.
    pub shard_index: Option<u32>,
    /// JUnit body: the lease the shard was run under.
    pub lease_id: Option<String>,
    /// JUnit body: `passed`, `failed` or `errored`; by default failed if any
    /// case failed or errored, else passed.
    #[param(inline)]
    pub status: Option<ReportStatus>,
    /// JUnit body: name every case one way (`classname`, `pytest`, `name`)
    /// instead of matching it to the shard's tests under every convention.
    #[param(inline)]
    pub names: Option<crate::junit::NameFormat>,
    /// A runner's final report on a dynamic batch: claim its next batch
    /// too, and the answer carries it as `next`: `true`, of the same
    /// execution; `any`, of the same execution or, when it has none for
    /// the runner, of the next dynamic execution the runner may claim
    /// (the assignment names its execution).
    #[param(inline)]
    pub next: Option<NextParam>,
}

/// `?next=` of a report (see [`WebhookQuery::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub enum NextParam {
    #[serde(rename = "false")]
    No,
    #[serde(rename = "true")]
    SameExecution,
    #[serde(rename = "any")]
    Any,
}

impl NextParam {
    /// Where the next batch may come from; `None`: no next batch asked.
    fn asked(q: Option<NextParam>) -> Option<NextBatch> {
        match q? {
            NextParam::No => None,
            NextParam::SameExecution => Some(NextBatch::SameExecution),
            NextParam::Any => Some(NextBatch::Anywhere),
        }
    }
}

/// Whether the body is XML by its `Content-Type`.
fn is_xml(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("xml"))
}

fn utf8(body: &[u8]) -> Result<&str> {
    std::str::from_utf8(body).map_err(|_| Error::validation("junit", "the report is not UTF-8"))
}

/// A shard reports started / passed / failed / errored, as JSON, or as the
/// JUnit XML file its test tool wrote (`Content-Type: application/xml`, with
/// `shard_index` and `lease_id` in the query). Authenticated with the
/// execution's webhook token or the token of the runner holding the shard.
#[utoipa::path(post, path = "/webhooks/parallel-execution/{id}", tag = "webhooks",
    params(WebhookQuery),
    request_body(content((ShardReport = "application/json"), (String = "application/xml"))),
    responses((status = 200, body = ReportOutcome), (status = 409, body = super::Problem, description = "stale lease")),
    security(("bearer" = [])))]
pub async fn shard_webhook<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WebhookQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<ReportOutcome>> {
    let id = ExecutionId::parse(&id)?;
    if is_xml(&headers) {
        let shard_index = q.shard_index.ok_or_else(|| {
            Error::validation("shard_index", "a JUnit report needs ?shard_index=")
        })?;
        let lease = q
            .lease_id
            .ok_or_else(|| Error::validation("lease_id", "a JUnit report needs ?lease_id="))?;
        let report = JunitReport::parse(
            shard_index,
            LeaseId::parse(&lease)?,
            q.status,
            utf8(&body)?,
            q.names,
        )?;
        let outcome = if let Some(from) = NextParam::asked(q.next) {
            app.report_junit_then_claim(&caller, &id, report, from)
                .await?
        } else {
            app.report_junit(&caller, &id, report).await?
        };
        return Ok(Json(outcome));
    }
    let report = {
        if q.shard_index.is_some()
            || q.lease_id.is_some()
            || q.status.is_some()
            || q.names.is_some()
        {
            return Err(Error::validation(
                "query",
                "query parameters go with a JUnit XML body; a JSON report carries them itself",
            ));
        }
        parse_json(&body)?
    };
    let outcome = if let Some(from) = NextParam::asked(q.next) {
        app.report_shard_then_claim(&caller, &id, report, from)
            .await?
    } else {
        app.report_shard(&caller, &id, report).await?
    };
    Ok(Json(outcome))
}

/// The execution id and shard index of a `…/{id}/shards/{index}` path; an
/// index that is not a number names no shard (404, like a missing one).
fn shard_path(id: &str, index: &str) -> Result<(ExecutionId, u32)> {
    let id = ExecutionId::parse(id)?;
    let index = index
        .parse::<u32>()
        .map_err(|_| Error::not_found(crate::Entity::Shard, index))?;
    Ok((id, index))
}

/// A shard's current assignment — lease and tests — for the CI job that a
/// push-mode dispatch started (with the token the dispatch gave it).
#[utoipa::path(get, path = "/webhooks/parallel-execution/{id}/shards/{index}", tag = "webhooks",
    responses((status = 200, body = Assignment), (status = 404, body = super::Problem, description = "no such shard, or not assigned now")),
    security(("bearer" = [])))]
pub async fn shard_assignment<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path((id, index)): Path<(String, String)>,
) -> Result<Json<Assignment>> {
    let (id, index) = shard_path(&id, &index)?;
    Ok(Json(app.shard_assignment(&caller, &id, index).await?))
}

/// A CI job of a `by_index` execution claims the shard of its index: the
/// tests to run and the lease to report with. A retried job claiming the
/// same index gets the same tests under a new lease (the old one is fenced
/// off; the new results supersede the old). Authenticated with the
/// execution's webhook token (every job's queue call returns one) or an API
/// token.
#[utoipa::path(post, path = "/webhooks/parallel-execution/{id}/shards/{index}/claim", tag = "webhooks",
    responses((status = 200, body = Assignment),
        (status = 422, body = super::Problem, description = "not a by_index execution"),
        (status = 404, body = super::Problem, description = "no such shard"),
        (status = 409, body = super::Problem, description = "the execution or shard was cancelled")),
    security(("bearer" = [])))]
pub async fn claim_shard<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path((id, index)): Path<(String, String)>,
) -> Result<Json<Assignment>> {
    let (id, index) = shard_path(&id, &index)?;
    Ok(Json(app.claim_shard(&caller, &id, index).await?))
}

/// Query of `POST /suites/{suite}/timings`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// JUnit XML only: how the tool names tests (`classname`, `pytest`, `name`).
    #[param(inline)]
    pub names: Option<crate::junit::NameFormat>,
}

/// Imports a suite's test durations from another tool's output, so the next
/// execution is split by time even before TMS has run the suite: JSON from
/// pytest-split's `.test_durations` or a Knapsack report (test names to
/// seconds), or a JUnit XML report (`Content-Type: application/xml`).
#[utoipa::path(post, path = "/suites/{suite}/timings", tag = "executions", request_body = DurationsFile,
    params(ImportQuery),
    responses((status = 200, body = ImportedTimings), (status = 400, body = super::Problem)),
    security(("bearer" = [])))]
pub async fn import_timings<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(suite): Path<String>,
    ApiQuery(q): ApiQuery<ImportQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<ImportedTimings>> {
    require_api(&caller)?;
    let imported = if is_xml(&headers) {
        app.import_junit(&suite, utf8(&body)?, q.names).await?
    } else {
        app.import_timings(&suite, parse_json(&body)?).await?
    };
    Ok(Json(imported))
}

/// The suite's flaky tests (failed, then passed on an automatic retry),
/// most often flaky first.
#[utoipa::path(get, path = "/suites/{suite}/flaky", tag = "executions",
    responses((status = 200, body = FlakyTests)), security(("bearer" = [])))]
pub async fn flaky_tests<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    Path(suite): Path<String>,
) -> Result<Json<FlakyTests>> {
    require_api(&caller)?;
    Ok(Json(app.flaky_tests(&suite).await?))
}

/// Unauthenticated, for load balancers and uptime checks.
#[utoipa::path(get, path = "/system/health", tag = "system",
    responses((status = 200, body = SystemHealth), (status = 503, body = SystemHealth)))]
pub async fn system_health<P: Ports>(
    State(app): State<AppState<P>>,
) -> (StatusCode, Json<SystemHealth>) {
    let health = app.system_health().await;
    let status = if health.store == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// One suite's figures (all suites by default).
    pub suite: Option<String>,
    /// How far back: `24h`, `7d`, or ms since the epoch. Default `24h`,
    /// at most 31 days.
    pub since: Option<String>,
}

/// Finished executions' figures from the per-suite, per-hour rollups:
/// throughput, pass rate, p50/p95 queue wait and run time.
#[utoipa::path(get, path = "/metrics", tag = "system", params(MetricsQuery),
    responses((status = 200, body = crate::domain::Metrics)), security(("bearer" = [])))]
pub async fn metrics<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    ApiQuery(q): ApiQuery<MetricsQuery>,
) -> Result<Json<crate::domain::Metrics>> {
    require_api(&caller)?;
    Ok(Json(
        app.metrics(q.suite.as_deref(), q.since.as_deref()).await?,
    ))
}

#[utoipa::path(get, path = "/resources/utilization", tag = "system",
    responses((status = 200, body = Utilization)), security(("bearer" = [])))]
pub async fn utilization<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
) -> Result<Json<Utilization>> {
    require_api(&caller)?;
    Ok(Json(app.utilization().await?))
}

#[utoipa::path(post, path = "/tokens", tag = "system", request_body = NewToken,
    responses((status = 201, body = TokenView)), security(("bearer" = [])))]
pub async fn create_token<P: Ports>(
    State(app): State<AppState<P>>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<TokenView>)> {
    require_admin(&caller)?;
    let (token, secret) = app.create_token(body).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenView {
            id: token.id.to_string(),
            name: token.name,
            scope: token.scope,
            token: secret,
        }),
    ))
}
