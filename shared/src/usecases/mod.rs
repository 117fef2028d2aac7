//! Use cases: every operation of the orchestrator, generic over the ports so
//! the same code runs in `tms serve` (SQLite, channels) and, later, in the
//! Lambda functions (DynamoDB, SQS, EventBridge).

mod access;
mod alerts;
mod claims;
mod completion;
mod dispatch;
mod executions;
mod rules;
mod runners;
mod scheduler;
mod sweeps;
mod system;
mod timings;
mod turns;

pub use access::NewToken;

/// The tracing target of the events that carry metrics (an execution's
/// first finish), for whatever turns them into metrics.
pub const METRICS_TARGET: &str = "tms::metrics";
pub use alerts::NewAlertRule;
pub use claims::{ClaimOutcome, Claimable, ClaimablePage, MAX_CLAIMABLE_PAGE};
pub use completion::{JunitReport, NextBatch, ReportOutcome, ReportStatus, ShardReport};
pub use dispatch::DispatchOutcome;
pub use executions::{
    CiInput, NewExecution, QueuedExecution, RequirementsInput, TestInput, TimedTest, MAX_PAGE_BYTES,
};
pub use rules::NewRule;
pub use runners::{Assignment, NewRunner, RegisteredRunner};
pub use sweeps::SweepReport;
pub use system::{QueueHealth, RunnerCounts, RunnerUtilization, SystemHealth, Utilization};
pub use timings::{DurationsFile, FlakyTest, FlakyTests, ImportedTimings};

use crate::config::Config;
use crate::domain::shard::Released;
use crate::domain::{Execution, Shard, ShardStatus};
use crate::error::Result;
use crate::ports::{Ports, Release, ShardUpdate, Store};
use std::future::Future;

/// One deployment's adapters, one per port.
pub struct Adapters<P: Ports> {
    pub store: P::Store,
    pub clock: P::Clock,
    pub nudges: P::Nudges,
    pub events: P::Events,
    pub secrets: P::Secrets,
    pub http: P::Http,
}

/// The orchestrator: ports plus settings. Cheap to share behind an `Arc`.
pub struct Orchestrator<P: Ports> {
    pub store: P::Store,
    pub clock: P::Clock,
    pub nudges: P::Nudges,
    pub events: P::Events,
    pub secrets: P::Secrets,
    pub http: P::Http,
    pub config: Config,
    admin_token_hash: String,
    tokens: access::TokenCache,
    claim_turns: turns::Turns,
}

impl<P: Ports> Orchestrator<P> {
    /// `admin_token_hash` is the SHA-256 (hex) of the admin token, see [`crate::auth::hash`].
    pub fn new(adapters: Adapters<P>, config: Config, admin_token_hash: String) -> Self {
        let Adapters {
            store,
            clock,
            nudges,
            events,
            secrets,
            http,
        } = adapters;
        Orchestrator {
            store,
            clock,
            nudges,
            events,
            secrets,
            http,
            config,
            admin_token_hash,
            tokens: access::TokenCache::default(),
            claim_turns: turns::Turns::default(),
        }
    }
}

impl<P: Ports> Orchestrator<P> {
    /// Writes a changed execution if its version is still
    /// `expected_version`. Its first finish adds its metrics rollup in the
    /// same atomic step, so it is counted exactly once.
    pub(crate) async fn write_execution(
        &self,
        execution: &mut Execution,
        expected_version: u64,
    ) -> Result<()> {
        let rollup = execution.take_rollup();
        self.store
            .update_execution(execution, expected_version, rollup.as_ref())
            .await?;
        if rollup.is_some() {
            let (wait, run) = crate::domain::metrics::waited_and_ran(execution);
            let passed = execution.status == crate::domain::ExecutionStatus::Passed;
            // The Lambda functions turn this into a CloudWatch EMF line.
            tracing::info!(
                target: METRICS_TARGET,
                execution_id = %execution.id,
                suite = %execution.suite,
                status = execution.status.as_str(),
                queue_wait_ms = wait,
                run_ms = run,
                shards = u64::from(execution.shard_count),
                tests_passed = u64::from(execution.totals.passed),
                tests_failed = u64::from(execution.totals.failed),
                passed = u64::from(passed),
                not_passed = u64::from(!passed && execution.status != crate::domain::ExecutionStatus::Cancelled),
                "execution finished"
            );
        }
        Ok(())
    }

    /// Writes a shard changed from what was read (`expected`: its version
    /// and status then), giving back the capacity of the lease it
    /// `released`, if any, in the same step.
    pub(crate) async fn save_shard(
        &self,
        execution: &Execution,
        shard: Shard,
        read_as: (u64, ShardStatus),
        released: Option<Released>,
    ) -> Result<()> {
        let update = self.shard_update(execution, shard, read_as, released);
        self.store.update_shard(update).await
    }

    /// The store's write of a shard changed from what was read.
    pub(crate) fn shard_update(
        &self,
        execution: &Execution,
        shard: Shard,
        (expected_version, expected_status): (u64, ShardStatus),
        released: Option<Released>,
    ) -> ShardUpdate {
        let release = released.map(|h| Release {
            runner_id: h.runner_id,
            lease_id: h.lease_id,
            resources: execution.requirements.per_shard(),
        });
        ShardUpdate {
            shard,
            expected_version,
            expected_status,
            release,
        }
    }
}

/// Runs a read-decide-conditional-write step again when it lost a race.
/// Losing many times in a row means heavy contention; the last error is returned.
pub(crate) async fn retry_on_conflict<T, F, Fut>(mut step: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempts = 0;
    loop {
        match step().await {
            Err(e) if e.is_conflict() && attempts < 8 => attempts += 1,
            other => return other,
        }
    }
}
