//! Ports: what the use cases need from the outside world. Every store
//! operation is shaped to be one DynamoDB request or one transaction on the
//! single table of `docs/data-model.md`; the embedded adapter implements the
//! same operations with the same conditions.

use crate::auth::ApiToken;
use crate::domain::AlertRule;
use crate::domain::{
    Allocation, Execution, ExecutionStatus, HealthRecord, LoadBalancingRule, Resources, Runner,
    RunnerWithLoad, Shard, ShardStatus, TestSpec, Violation,
};
use crate::error::Result;
use crate::ids::{AlertRuleId, ExecutionId, LeaseId, RuleId, RunnerId, TokenId};
use crate::scheduling::FreeCapacity;
use crate::time::{Clock, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;

/// One page of a listing and the opaque cursor of the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Listings fetch one item more than `limit` to learn whether another
    /// page exists: trims it and returns the cursor of the next page.
    pub fn cursor_after(
        items: &mut Vec<T>,
        limit: u32,
        key: impl Fn(&T) -> String,
    ) -> Option<String> {
        if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(key)
        } else {
            None
        }
    }

    /// Cuts the page after the items whose `size` adds up to `max_bytes`
    /// (keeping at least one), pointing the cursor at the rest. A listing
    /// bounded in items can still be large when its items are.
    pub fn cut_to_bytes(
        &mut self,
        max_bytes: usize,
        size: impl Fn(&T) -> usize,
        key: impl Fn(&T) -> String,
    ) {
        let mut total = 0;
        for (i, item) in self.items.iter().enumerate() {
            total += size(item);
            if total > max_bytes && i > 0 {
                self.items.truncate(i);
                self.next_cursor = self.items.last().map(key);
                return;
            }
        }
    }
}

/// Filters for listing executions, newest first.
#[derive(Debug, Clone)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    pub suite: Option<String>,
    pub limit: u32,
    pub cursor: Option<String>,
}

impl Default for ExecutionFilter {
    /// Everything, in pages of 50.
    fn default() -> Self {
        ExecutionFilter {
            status: None,
            suite: None,
            limit: 50,
            cursor: None,
        }
    }
}

/// Remembers which execution an `Idempotency-Key` created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub key: String,
    pub body_hash: String,
    pub execution_id: ExecutionId,
    pub expires_at: Timestamp,
}

/// Queue-level figures for the health endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueueStats {
    pub queued_shards: u64,
    pub in_flight_shards: u64,
    pub active_executions: u64,
    pub oldest_queued_at: Option<Timestamp>,
}

/// Capacity to give back to a runner when a shard stops holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub runner_id: RunnerId,
    pub lease_id: LeaseId,
    pub resources: Resources,
}

/// The atomic assignment step: the shard goes queued -> assigned (if still at
/// `expected_shard_version`), the runner's capacity is taken (if it is active
/// and has room), the allocation is written, the execution is marked running
/// (if not finished) and the pool's round-robin cursor moves — all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentWrite {
    pub shard: Shard,
    /// The runner's capacity as the plan saw it; the write is refused if it
    /// changed (so the store can check room without reading the runner).
    pub runner_capacity: Resources,
    pub expected_shard_version: u64,
    pub allocation: Allocation,
    pub cursor: Option<String>,
    pub now: Timestamp,
}

/// A claim of a dynamic execution's batch, all or nothing: the
/// execution's record moves on (its dispenser: where the next batch starts,
/// the work left, the claimer's expected free time; running) if it is still
/// at `expected_execution_version`; the batch goes to the runner, whose
/// capacity is taken (if it is active and has room, as for an
/// assignment), and the allocation is written. The batch is either cut now
/// (a new shard: `expected_shard_version` is `None` and no shard of that
/// index may exist) or one waiting to be claimed again (still queued at
/// `expected_shard_version`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimWrite {
    pub execution: Execution,
    pub expected_execution_version: u64,
    pub shard: Shard,
    pub expected_shard_version: Option<u64>,
    /// The runner's capacity as the claim saw it (see [`AssignmentWrite`]).
    pub runner_capacity: Resources,
    pub allocation: Allocation,
    pub now: Timestamp,
}

/// A versioned shard change, optionally giving back the capacity it held
/// (deleting the allocation if it still carries `release.lease_id`).
/// `expected_status` is the status read at `expected_version`: it tells the
/// store whether the shard leaves or enters the queue without reading the
/// shard again (DynamoDB moves the execution's `queued_shards` by it; the
/// embedded store's mirror counts waiting shards from the shards).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardUpdate {
    pub shard: Shard,
    pub expected_version: u64,
    pub expected_status: ShardStatus,
    pub release: Option<Release>,
}

/// The source of truth.
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness probe.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;

    // Runners
    fn insert_runner(&self, runner: &Runner) -> impl Future<Output = Result<()>> + Send;
    fn get_runner(
        &self,
        id: &RunnerId,
    ) -> impl Future<Output = Result<Option<RunnerWithLoad>>> + Send;
    fn list_runners(
        &self,
        limit: u32,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page<RunnerWithLoad>>> + Send;
    /// Writes the runner's own fields if its stored version is `expected_version`;
    /// never touches allocated capacity.
    fn update_runner(
        &self,
        runner: &Runner,
        expected_version: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// [`Store::update_runner`] for a heartbeat that moves nothing but the
    /// liveness time (`runner` is the heartbeat applied to the version read).
    /// A store may make it durable after returning and apply it to the
    /// runner as stored then (the embedded store sends it with the next group
    /// commit and does not wait): a crash loses at most one write gap of
    /// liveness, which the silence limit allows for. The heartbeat then never
    /// waits on a write.
    fn record_heartbeat(
        &self,
        runner: &Runner,
        expected_version: u64,
    ) -> impl Future<Output = Result<()>> + Send {
        self.update_runner(runner, expected_version)
    }
    /// Waits until every write the store took without waiting (see
    /// [`Store::record_heartbeat`]) is durable.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Active runners, for a scheduling pass.
    fn schedulable_runners(&self) -> impl Future<Output = Result<Vec<RunnerWithLoad>>> + Send;
    /// Runners in one of `statuses` that are silent at `before`: whose
    /// last heartbeat plus their own silence limit
    /// ([`Runner::silence_key`]) is before it, the longest silent first.
    fn silent_runners(
        &self,
        statuses: &[crate::domain::RunnerStatus],
        before: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Runner>>> + Send;
    /// Shards a runner holds (assigned or running), via its allocations.
    fn runner_shards(&self, id: &RunnerId) -> impl Future<Output = Result<Vec<Shard>>> + Send;
    /// A runner and the shards it holds, read together (the runner's item
    /// collection: META and its allocations), for heartbeats.
    fn runner_with_shards(
        &self,
        id: &RunnerId,
    ) -> impl Future<Output = Result<Option<(RunnerWithLoad, Vec<Shard>)>>> + Send;

    // Executions and shards
    /// Writes the execution, its shards (or, for a dynamic execution, its
    /// tests in claim order, `queue`) and the idempotency record at once;
    /// `Conflict` if the idempotency key was taken meanwhile.
    fn create_execution(
        &self,
        execution: &Execution,
        shards: &[Shard],
        queue: &[TestSpec],
        idempotency: Option<&IdempotencyRecord>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A dynamic execution's tests in claim order from position `from`, at
    /// most `limit` of them (fewer at the end): where its next batch is
    /// cut from. Costs what it reads, not the execution's size.
    fn queued_tests(
        &self,
        id: &ExecutionId,
        from: u32,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<TestSpec>>> + Send;
    /// The claim of a dynamic execution's batch ([`ClaimWrite`]). A store
    /// that can queue the write when it is called (before the future is
    /// polled) does, so claims made one after the other reach it in that
    /// order (see `usecases::turns`).
    fn claim(&self, write: ClaimWrite) -> impl Future<Output = Result<()>> + Send;
    /// Unfinished dynamic executions, highest priority first, then oldest,
    /// after `cursor` (a previous page's `next_cursor`): where runners look
    /// for batches to claim.
    fn dynamic_executions(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Page<Execution>>> + Send;
    fn get_idempotency(
        &self,
        key: &str,
        now: Timestamp,
    ) -> impl Future<Output = Result<Option<IdempotencyRecord>>> + Send;
    fn get_execution(
        &self,
        id: &ExecutionId,
    ) -> impl Future<Output = Result<Option<Execution>>> + Send;
    /// The execution with all its shards (one item collection).
    fn load_execution(
        &self,
        id: &ExecutionId,
    ) -> impl Future<Output = Result<Option<(Execution, Vec<Shard>)>>> + Send;
    /// An execution and one of its shards (one BatchGetItem), for the hot
    /// paths that change a single shard.
    fn load_shard(
        &self,
        id: &ExecutionId,
        index: u32,
    ) -> impl Future<Output = Result<Option<(Execution, Shard)>>> + Send;
    fn list_executions(
        &self,
        filter: &ExecutionFilter,
    ) -> impl Future<Output = Result<Page<Execution>>> + Send;
    /// Writes the execution if its version is still `expected_version`;
    /// with a `rollup` (its first finish), adds the rollup's counters in
    /// the same atomic step.
    fn update_execution(
        &self,
        execution: &Execution,
        expected_version: u64,
        rollup: Option<&crate::domain::Rollup>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Adds a rollup's counters (a utilization sample) on its own.
    fn add_rollup(&self, rollup: &crate::domain::Rollup)
        -> impl Future<Output = Result<()>> + Send;
    /// The metrics rollups of the hours from `since` to `until`, every suite.
    fn metric_rollups(
        &self,
        since: Timestamp,
        until: Timestamp,
    ) -> impl Future<Output = Result<Vec<crate::domain::Rollup>>> + Send;
    /// Unfinished executions that have queued shards some free runner can
    /// run, with their queued shards: the highest priority ones and, for
    /// aging, the oldest ones. Each order is walked with its own copy of
    /// `free`, skipping (without counting) work no free runner fits, until
    /// every free slot is reserved or `max_executions` executions are found.
    fn pending_executions(
        &self,
        free: &FreeCapacity,
        max_executions: u32,
    ) -> impl Future<Output = Result<Vec<(Execution, Vec<Shard>)>>> + Send;
    /// Unfinished executions, earliest deadline first, after `cursor` (a
    /// previous page's `next_cursor`).
    fn active_executions(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = Result<Page<Execution>>> + Send;
    /// In-flight shards whose lease deadline is before `now`.
    fn expired_shards(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Shard>>> + Send;
    /// Taken by value, like [`Store::update_shard`]'s update: the embedded
    /// store moves it to its database thread instead of copying it.
    fn assign(&self, write: AssignmentWrite) -> impl Future<Output = Result<()>> + Send;
    /// Adds a shard to a running execution (an automatic retry of failed
    /// tests) and writes the execution if its stored version is
    /// `expected_version`, atomically; the shard must not exist yet.
    fn add_shard(
        &self,
        execution: &Execution,
        expected_version: u64,
        shard: &Shard,
    ) -> impl Future<Output = Result<()>> + Send;
    fn update_shard(&self, update: ShardUpdate) -> impl Future<Output = Result<()>> + Send;
    /// [`Store::update_shard`] of a shard that records a finished run, with
    /// that run's result chunks, which must be stored no later than the
    /// shard records the run (readers merge only recorded runs). By
    /// default the chunks go first (on DynamoDB they may not fit one
    /// transaction); the embedded store writes both in one transaction.
    fn finish_shard(
        &self,
        update: ShardUpdate,
        results: Vec<crate::domain::ResultChunk>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            if !results.is_empty() {
                self.put_results(&update.shard.execution_id, &results)
                    .await?;
            }
            self.update_shard(update).await
        }
    }
    /// [`Store::finish_shard`] and then the claim of the reporting
    /// runner's next batch (a report with `?next=true`). The claim stands
    /// only if the report's write did: the outer error is the report's, the
    /// inner result the claim's (a claim that lost a race is made again on
    /// its own). By default one write after the other; the embedded store
    /// queues both when called and commits them at once.
    fn finish_shard_and_claim(
        &self,
        update: ShardUpdate,
        results: Vec<crate::domain::ResultChunk>,
        claim: ClaimWrite,
    ) -> impl Future<Output = Result<Result<()>>> + Send {
        async move {
            self.finish_shard(update, results).await?;
            Ok(self.claim(claim).await)
        }
    }
    fn queue_stats(&self) -> impl Future<Output = Result<QueueStats>> + Send;

    // Rules and round-robin cursors
    fn put_rule(&self, rule: &LoadBalancingRule) -> impl Future<Output = Result<()>> + Send;
    fn list_rules(&self) -> impl Future<Output = Result<Vec<LoadBalancingRule>>> + Send;
    /// False when there was no such rule.
    fn delete_rule(&self, id: &RuleId) -> impl Future<Output = Result<bool>> + Send;
    fn insert_alert_rule(&self, rule: &AlertRule) -> impl Future<Output = Result<()>> + Send;
    fn list_alert_rules(&self) -> impl Future<Output = Result<Vec<AlertRule>>> + Send;
    /// Rewrites the rule if its version is still `expected_version`
    /// (conflict otherwise, or when it was deleted).
    fn update_alert_rule(
        &self,
        rule: &AlertRule,
        expected_version: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    fn delete_alert_rule(&self, id: &AlertRuleId) -> impl Future<Output = Result<bool>> + Send;
    fn round_robin_cursors(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, RunnerId>>> + Send;

    // Health history and limit violations
    fn add_health_record(&self, record: &HealthRecord) -> impl Future<Output = Result<()>> + Send;
    fn health_history(
        &self,
        id: &RunnerId,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<HealthRecord>>> + Send;
    fn add_violation(&self, violation: &Violation) -> impl Future<Output = Result<()>> + Send;
    fn recent_violations(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Violation>>> + Send;

    // Learned test durations (statistics, not state: last writer wins)
    /// The stored timings of these tests of `suite` (missing ones are left out).
    fn test_timings(
        &self,
        suite: &str,
        tests: &[String],
    ) -> impl Future<Output = Result<Vec<crate::domain::TestTiming>>> + Send;
    /// Every stored timing of `suite` (its per-test history: durations and
    /// flaky runs).
    fn suite_timings(
        &self,
        suite: &str,
    ) -> impl Future<Output = Result<Vec<crate::domain::TestTiming>>> + Send;
    /// Writes these timings over the stored ones.
    fn put_test_timings(
        &self,
        timings: &[crate::domain::TestTiming],
    ) -> impl Future<Output = Result<()>> + Send;

    // Per-test results, in chunks under the item size limit
    /// Stores the chunks of one run's results (keyed by shard, lease and
    /// chunk number, so writing them again is harmless). Written before the
    /// shard records the run; chunks of a run the shard never recorded are
    /// ignored by readers.
    fn put_results(
        &self,
        execution: &ExecutionId,
        chunks: &[crate::domain::ResultChunk],
    ) -> impl Future<Output = Result<()>> + Send;
    /// The stored chunks of the execution's results: every run's, or only
    /// the run of `run` (a shard index and its lease), in order.
    fn results(
        &self,
        execution: &ExecutionId,
        run: Option<(u32, &LeaseId)>,
    ) -> impl Future<Output = Result<Vec<crate::domain::ResultChunk>>> + Send;

    // Tokens and settings
    fn put_token(&self, token: &ApiToken) -> impl Future<Output = Result<()>> + Send;
    fn get_token(&self, id: &TokenId) -> impl Future<Output = Result<Option<ApiToken>>> + Send;
    fn get_setting(&self, key: &str) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Sets a setting, whatever it was (for bookkeeping such as a sweep's
    /// cursor, where the last writer may win).
    fn put_setting(&self, key: &str, value: &str) -> impl Future<Output = Result<()>> + Send;
    /// Sets a setting only if it is not set; returns the value now stored.
    fn init_setting(&self, key: &str, value: &str) -> impl Future<Output = Result<String>> + Send;
}

/// "Dispatch this lease": a shard was assigned to a push-mode runner and
/// its CI platform has to start the job. The shard in the store says
/// whether that is still wanted, so an old or repeated order is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchOrder {
    pub execution_id: ExecutionId,
    pub shard_index: u32,
    pub lease_id: LeaseId,
}

/// "Look now" signals. Losing one only delays work until the next sweep
/// (a lost dispatch order: until the timeout sweep takes the lease back).
pub trait Nudges: Send + Sync + 'static {
    fn schedule(&self) -> impl Future<Output = ()> + Send;
    fn dispatch(&self, order: DispatchOrder) -> impl Future<Output = ()> + Send;
}

/// Credentials named by dispatch targets: environment variables in
/// `tms serve`, Secrets Manager on AWS. `Ok(None)` means there is no such
/// secret (a configuration error), `Err` that it could not be read now.
pub trait Secrets: Send + Sync + 'static {
    fn secret(
        &self,
        name: &crate::domain::SecretName,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
}

/// Sends one HTTP request to a CI platform. `Err` means no response
/// (connection refused, timeout), which is worth retrying.
pub trait HttpClient: Send + Sync + 'static {
    fn send(
        &self,
        request: &crate::dispatch::HttpRequest,
    ) -> impl Future<Output = Result<crate::dispatch::HttpResponse>> + Send;
}

/// Domain events, for fan-in (aggregation) and anyone else listening.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    ShardCompleted {
        execution_id: ExecutionId,
        shard_index: u32,
        lease_id: Option<LeaseId>,
        status: String,
    },
}

pub trait Events: Send + Sync + 'static {
    fn publish(&self, event: Event) -> impl Future<Output = Result<()>> + Send;
}

/// The set of adapters one deployment wires together.
pub trait Ports: Send + Sync + 'static {
    type Store: Store;
    type Clock: Clock;
    type Nudges: Nudges;
    type Events: Events;
    type Secrets: Secrets;
    type Http: HttpClient;
}

/// Cursors of the listings that walk an index order, in one form for every
/// store: the sort keys of the DynamoDB indexes that serve them.
pub mod cursors {
    use crate::domain::Execution;
    use crate::time::Timestamp;

    /// Earliest deadline first: `<deadline:013>#<id>`.
    pub fn deadline_key(deadline: Timestamp, id: &str) -> String {
        format!("{:013}#{id}", deadline.0.max(0))
    }

    /// Highest priority first, then oldest: `<100 - priority:03>#<created:013>#<id>`.
    pub fn priority_key(priority: i32, created: Timestamp, id: &str) -> String {
        format!(
            "{:03}#{:013}#{id}",
            100 - priority.clamp(0, 100),
            created.0.max(0)
        )
    }

    pub fn by_deadline(e: &Execution) -> String {
        deadline_key(e.deadline, e.id.as_str())
    }

    pub fn by_priority(e: &Execution) -> String {
        priority_key(e.priority, e.created_at, e.id.as_str())
    }

    /// The deadline and id of a [`by_deadline`] cursor.
    pub fn parse_by_deadline(cursor: &str) -> Option<(i64, String)> {
        let (deadline, id) = cursor.split_once('#')?;
        Some((deadline.parse().ok()?, id.to_owned()))
    }

    /// The priority, creation time and id of a [`by_priority`] cursor.
    pub fn parse_by_priority(cursor: &str) -> Option<(i32, i64, String)> {
        let mut parts = cursor.splitn(3, '#');
        let inverted: i32 = parts.next()?.parse().ok()?;
        let created: i64 = parts.next()?.parse().ok()?;
        Some((100 - inverted, created, parts.next()?.to_owned()))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_cursor_reads_back_as_what_it_was_made_of() {
            let c = priority_key(90, Timestamp(12), "exe_a");
            assert_eq!(parse_by_priority(&c), Some((90, 12, "exe_a".into())));
            let c = deadline_key(Timestamp(99), "exe_b");
            assert_eq!(parse_by_deadline(&c), Some((99, "exe_b".into())));
            assert_eq!(parse_by_priority("nonsense"), None);
        }
    }
}
