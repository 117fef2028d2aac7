//! Response bodies. Domain records are shown through these views so that
//! secrets (token hashes) and storage details never reach a client.

use crate::domain::{
    CiMetadata, Execution, ExecutionStatus, LoadBalancingRule, Requirements, Resources,
    RunnerStatus, RunnerType, RunnerWithLoad, Shard, ShardStatus, TestType, Totals, Usage,
};
use serde::Serialize;
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// Times are milliseconds since the Unix epoch.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub runner_type: RunnerType,
    pub labels: BTreeSet<String>,
    pub capacity: Resources,
    pub allocated: Resources,
    pub free: Resources,
    pub priority: i32,
    pub status: RunnerStatus,
    pub status_reason: Option<String>,
    pub registered_at: i64,
    pub last_heartbeat: i64,
    pub last_usage: Option<Usage>,
    pub dispatch: Option<crate::domain::DispatchTarget>,
    /// Which executions requiring no label it takes.
    pub scope: crate::domain::Scope,
}

impl From<RunnerWithLoad> for RunnerView {
    fn from(r: RunnerWithLoad) -> Self {
        let free = r.free();
        let RunnerWithLoad { runner, allocated } = r;
        RunnerView {
            id: runner.id.to_string(),
            name: runner.name,
            runner_type: runner.runner_type,
            labels: runner.labels,
            capacity: runner.capacity,
            allocated,
            free,
            priority: runner.priority,
            status: runner.status,
            status_reason: runner.status_reason,
            registered_at: runner.registered_at.0,
            last_heartbeat: runner.last_heartbeat.0,
            last_usage: runner.last_usage,
            dispatch: runner.dispatch,
            scope: runner.scope,
        }
    }
}

/// `POST /runners/register` answer: the runner and its token (shown once).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredRunnerView {
    #[serde(flatten)]
    pub runner: RunnerView,
    /// Bearer token for this runner's heartbeats and reports. Not retrievable later.
    pub token: String,
    /// Heartbeat at least this often or the runner is marked unhealthy after three misses.
    pub heartbeat_interval_seconds: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerPage {
    pub items: Vec<RunnerView>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShardResultCounts {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    /// The command's exit status, when the shard was judged by it alone
    /// (its runner had no per-test results, and counted none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ShardView {
    pub index: u32,
    pub status: ShardStatus,
    pub runner_id: Option<String>,
    pub attempt: u32,
    pub test_count: usize,
    #[schema(value_type = Vec<String>)]
    pub tests: std::sync::Arc<[String]>,
    pub estimated_ms: Option<u64>,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// When the current attempt's lease runs out.
    pub deadline: Option<i64>,
    pub error: Option<String>,
    pub results: Option<ShardResultCounts>,
    /// Every run of the shard that ended, oldest first.
    pub attempts: Vec<crate::domain::AttemptRecord>,
    /// An automatic retry: the shard whose failed tests this one re-runs.
    pub retry_of: Option<u32>,
}

impl From<&Shard> for ShardView {
    fn from(s: &Shard) -> Self {
        ShardView {
            index: s.index,
            status: s.status,
            runner_id: s.runner_id.as_ref().map(ToString::to_string),
            attempt: s.attempt,
            test_count: s.tests.len(),
            tests: s.tests.clone(),
            estimated_ms: s.estimated_ms,
            assigned_at: s.assigned_at.map(|t| t.0),
            started_at: s.started_at.map(|t| t.0),
            finished_at: s.finished_at.map(|t| t.0),
            deadline: s.deadline.map(|t| t.0),
            error: s.error.clone(),
            results: s.result.as_ref().map(|r| ShardResultCounts {
                passed: r.passed,
                failed: r.failed,
                skipped: r.skipped,
                exit_code: r.exit_code,
            }),
            attempts: s.attempts.clone(),
            retry_of: s.retry_of,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    pub shards_done: u32,
    pub shards_total: u32,
    pub percent: u32,
}

/// An execution without its shards (list entries).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionSummary {
    pub id: String,
    pub suite: String,
    pub status: ExecutionStatus,
    /// Why the execution is in this status (failures, errors, timeouts).
    pub status_reason: Option<String>,
    pub priority: i32,
    pub test_type: TestType,
    pub requirements: Requirements,
    pub parallelism: u32,
    pub test_count: u32,
    pub timeout_seconds: u64,
    pub shard_timeout_seconds: u64,
    pub max_attempts: u32,
    pub totals: Totals,
    pub progress: Progress,
    pub ci: Option<CiMetadata>,
    pub mode: crate::domain::Mode,
    /// Its own retry policy (`null`: the matching rule's, if any).
    pub retries: Option<crate::domain::RetryPolicy>,
    pub retries_used: u32,
    pub strict: bool,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub deadline: i64,
}

impl From<&Execution> for ExecutionSummary {
    fn from(e: &Execution) -> Self {
        let total = e.shard_count.max(1);
        ExecutionSummary {
            id: e.id.to_string(),
            suite: e.suite.clone(),
            status: e.status,
            status_reason: e.status_reason.clone(),
            priority: e.priority,
            test_type: e.test_type,
            requirements: e.requirements.clone(),
            parallelism: e.shard_count,
            test_count: e.test_count,
            timeout_seconds: e.timeout_seconds,
            shard_timeout_seconds: e.shard_timeout_seconds,
            max_attempts: e.max_attempts,
            totals: e.totals,
            progress: Progress {
                shards_done: e.totals.shards_done,
                shards_total: e.shard_count,
                percent: e.totals.shards_done * 100 / total,
            },
            ci: e.ci.clone(),
            mode: e.mode,
            retries: e.retries,
            retries_used: e.retries_used,
            strict: e.strict,
            metadata: e.metadata.clone(),
            created_at: e.created_at.0,
            started_at: e.started_at.map(|t| t.0),
            finished_at: e.finished_at.map(|t| t.0),
            deadline: e.deadline.0,
        }
    }
}

/// `GET /executions/{id}/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    #[serde(flatten)]
    pub execution: ExecutionSummary,
    pub shards: Vec<ShardView>,
}

impl ExecutionView {
    pub fn new(e: &Execution, shards: &[Shard]) -> Self {
        let mut summary = ExecutionSummary::from(e);
        // Totals and progress from the shards themselves, so they are current
        // while the execution runs (the record keeps them at status changes).
        summary.totals = crate::domain::Totals::from_shards(shards);
        let done = summary.totals.shards_done;
        summary.progress.shards_done = done;
        summary.progress.percent = done * 100 / e.shard_count.max(1);
        ExecutionView {
            execution: summary,
            shards: shards.iter().map(ShardView::from).collect(),
        }
    }
}

/// `POST /executions/queue` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedView {
    #[serde(flatten)]
    pub execution: ExecutionView,
    /// Bearer token for this execution's webhook. Shown once per queue call.
    pub webhook_token: String,
    /// True when this answer replays an earlier call with the same Idempotency-Key.
    pub replayed: bool,
    /// E.g. that no registered runner could run it (it waits until one
    /// registers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionPage {
    pub items: Vec<ExecutionSummary>,
    pub next_cursor: Option<String>,
}

/// `GET /executions/{id}/report`: every shard and every test of the
/// execution in one document, attempts merged (a test's result is its
/// newest attempt's; `flaky` when an earlier attempt failed).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionReport {
    pub execution: ExecutionSummary,
    pub shards: Vec<ShardView>,
    pub tests: Vec<crate::domain::MergedTest>,
    /// Names of the tests that failed and then passed.
    pub flaky: Vec<String>,
}

impl ExecutionReport {
    pub fn new(e: &Execution, shards: &[Shard], tests: Vec<crate::domain::MergedTest>) -> Self {
        let view = ExecutionView::new(e, shards);
        ExecutionReport {
            execution: view.execution,
            shards: view.shards,
            flaky: tests
                .iter()
                .filter(|t| t.flaky)
                .map(|t| t.name.clone())
                .collect(),
            tests,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    pub items: Vec<LoadBalancingRule>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertRuleList {
    pub items: Vec<crate::domain::AlertRule>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatView {
    pub assignments: Vec<crate::usecases::Assignment>,
    pub heartbeat_interval_seconds: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthHistory {
    pub items: Vec<crate::domain::HealthRecord>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub scope: crate::auth::Scope,
    /// The bearer token. Shown once.
    pub token: String,
}
