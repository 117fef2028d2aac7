//! Executions: one queued run of a suite, split into shards, and the fold of
//! its shards' results into one status.

use super::resources::Resources;
use super::runner::RunnerType;
use super::shard::{Shard, ShardStatus};
use crate::error::{Entity, Error, Result};
use crate::ids::ExecutionId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// Webhook tokens kept per execution: one per queue call, and with CI
/// keying every parallel job of a build queues (and gets a token).
const MAX_WEBHOOK_TOKENS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Queued,
    Running,
    Passed,
    Failed,
    Errored,
    Cancelled,
    TimedOut,
}

impl ExecutionStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, ExecutionStatus::Queued | ExecutionStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Queued => "queued",
            ExecutionStatus::Running => "running",
            ExecutionStatus::Passed => "passed",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Errored => "errored",
            ExecutionStatus::Cancelled => "cancelled",
            ExecutionStatus::TimedOut => "timed_out",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            ExecutionStatus::Queued,
            ExecutionStatus::Running,
            ExecutionStatus::Passed,
            ExecutionStatus::Failed,
            ExecutionStatus::Errored,
            ExecutionStatus::Cancelled,
            ExecutionStatus::TimedOut,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

/// Automatic retries of failed tests: each failed test runs again on
/// another runner, at most `per_test` times, and at most `total` test runs
/// again in the whole execution. Off (zeros) unless the execution or a
/// load-balancing rule asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default)]
    #[schema(maximum = 5)]
    pub per_test: u32,
    #[serde(default)]
    #[schema(maximum = 10000)]
    pub total: u32,
}

impl RetryPolicy {
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.per_test > 5 || self.total > 10_000 {
            return Err(Error::validation(
                field,
                "per_test at most 5, total at most 10000",
            ));
        }
        Ok(())
    }
}

/// How an execution's shards reach the machines that run them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// TMS assigns shards to registered runners (pull or push).
    #[default]
    Static,
    /// The CI's own parallel jobs (a GitHub Actions matrix, GitLab
    /// `parallel:`, CircleCI parallelism) each claim the shard of their
    /// index; a retried job gets the same shard again.
    ByIndex,
    /// Runners claim batches (`POST /executions/{id}/claims`) until the
    /// tests run out; batches shrink as the queue drains, longest first.
    Dynamic,
}

impl Mode {
    /// TMS's scheduler assigns the shards.
    pub fn is_static(&self) -> bool {
        *self == Mode::Static
    }
}

/// The kind of tests, which sets default resource needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestType {
    #[default]
    Unit,
    Integration,
    E2e,
    Performance,
}

/// A test to run, with an optional expected duration used to balance shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSpec {
    pub name: String,
    pub duration_hint_ms: Option<u64>,
}

/// What each shard of an execution needs from a runner (resolved: defaults applied).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Requirements {
    pub labels: BTreeSet<String>,
    /// Empty means any runner type.
    pub runner_types: Vec<RunnerType>,
    pub cpu_millis: u32,
    pub memory_mb: u32,
    /// Whose work an execution that requires no label is: a runner takes
    /// it only if it declares its suite or project, or takes any
    /// unlabelled work ([`super::runner::Scope`]). None when labels are
    /// required (they decide), and for executions queued before runners
    /// declared what they serve (any runner takes them, as then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// The suite, and the repository or project of the CI build, an
/// unlabelled execution belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Affinity {
    pub suite: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl Requirements {
    /// One slot plus the CPU and memory of one shard.
    pub fn per_shard(&self) -> Resources {
        Resources::new(1, self.cpu_millis, self.memory_mb)
    }

    /// The requirement class: executions of one class need the same of a
    /// runner (labels, runner types, size), so the same runners can take
    /// them. Queued work is indexed by class, and a scheduling pass reads
    /// only the classes some free runner fits. A digest, to be a short key.
    pub fn class(&self) -> String {
        // Stored as index keys: the digest of the same requirements must
        // stay the same from release to release.
        use sha2::Digest;
        // Each type by its name in the API, which never changes.
        let mut types: Vec<String> = self
            .runner_types
            .iter()
            .filter_map(|t| serde_json::to_string(t).ok())
            .collect();
        types.sort_unstable();
        let mut digest = sha2::Sha256::new();
        for label in &self.labels {
            digest.update(label.as_bytes());
            digest.update([0]);
        }
        digest.update([1]);
        for t in types {
            digest.update(t.as_bytes());
            digest.update([0]);
        }
        digest.update(self.cpu_millis.to_be_bytes());
        digest.update(self.memory_mb.to_be_bytes());
        // Unlabelled work of different suites or projects is taken by
        // different runners: a class each.
        if let Some(a) = &self.affinity {
            digest.update([2]);
            digest.update(a.suite.as_bytes());
            digest.update([0]);
            if let Some(p) = &a.project {
                digest.update(p.as_bytes());
            }
        }
        hex::encode(&digest.finalize()[..12])
    }
}

/// Where an execution came from in CI.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CiMetadata {
    pub provider: Option<String>,
    pub build_id: Option<String>,
    pub job: Option<String>,
    pub commit: Option<String>,
    pub branch: Option<String>,
    pub url: Option<String>,
    /// The build's attempt (GitHub's run attempt, Azure's job attempt):
    /// a later attempt of a build whose execution did not pass runs its
    /// failed shards again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The repository or project the build is of (GitHub's
    /// `GITHUB_REPOSITORY`, GitLab's `CI_PROJECT_PATH`, Azure's
    /// `BUILD_REPOSITORY_NAME`, Jenkins' `GIT_URL`): agents that declare it
    /// take the build's unlabelled work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Test and shard counts folded from the shards' reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub passed: u32,
    /// Failures not superseded by a passing retry.
    pub failed: u32,
    pub skipped: u32,
    /// Tests that failed and then passed: on an automatic retry, or on a
    /// retry of the test tool's own within the shard's run.
    #[serde(default)]
    pub flaky: u32,
    pub shards_done: u32,
    pub shards_failed: u32,
    pub shards_errored: u32,
    /// Shards judged by their command's exit status alone: their runner
    /// had no per-test results (an agent without `--junit`), so their
    /// tests are in none of the counts above.
    #[serde(default, skip_serializing_if = "super::shard::is_zero")]
    pub shards_by_exit_status: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub id: ExecutionId,
    pub suite: String,
    pub status: ExecutionStatus,
    pub status_reason: Option<String>,
    pub priority: i32,
    pub requirements: Requirements,
    pub test_type: TestType,
    pub timeout_seconds: u64,
    pub shard_timeout_seconds: u64,
    pub max_attempts: u32,
    pub ci: Option<CiMetadata>,
    #[serde(default)]
    pub mode: Mode,
    /// Its own retry policy; `None`: the matching rule's, read when a test
    /// fails (so queueing costs no read of the rules).
    #[serde(default)]
    pub retries: Option<RetryPolicy>,
    /// Test runs already spent on automatic retries.
    #[serde(default)]
    pub retries_used: u32,
    /// A flaky test (failed, then passed on a retry) fails the execution.
    #[serde(default)]
    pub strict: bool,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// When the whole execution times out.
    pub deadline: Timestamp,
    pub shard_count: u32,
    pub test_count: u32,
    pub totals: Totals,
    /// Hashes of the webhook tokens issued for this execution (one per
    /// queue call that created or replayed it).
    pub webhook_token_hashes: Vec<String>,
    /// Whether the execution's first finish is in the metrics rollups: a
    /// reopened execution that finishes again is not counted twice.
    #[serde(default)]
    pub counted: bool,
    /// Dynamic mode: where the next batch starts and what is known of the
    /// runners taking them. Batches are cut when they are claimed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispenser: Option<Dispenser>,
    /// Dynamic mode: batches waiting to be claimed again (lost by their
    /// runner, or an automatic retry of failed tests), lowest index first.
    /// Kept by the store from the shards' states, not written with the
    /// record.
    #[serde(skip)]
    pub returned: Vec<u32>,
    pub version: u64,
}

/// A dynamic execution's claims: its tests are handed out in claim order
/// (longest first) from `next` on, each batch sized when it is claimed
/// ([`crate::scheduling::dynamic`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dispenser {
    /// Tests handed out so far: the next batch starts at this position.
    pub next: u32,
    /// Estimated work of the tests not handed out yet (ms; test counts
    /// when none had a duration).
    pub left_ms: u64,
    /// Runners expected to claim (the queue call's parallelism).
    pub runners: u32,
    /// Whether the weights are durations (else test counts).
    pub hinted: bool,
    /// The most tests in one batch, if the queue call set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_tests: Option<u32>,
    /// What a batch costs besides its tests (the claim's round trip,
    /// starting the test process, collecting), as this execution's reports
    /// measured it: smoothed over the batches reported so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead_ms: Option<u64>,
    /// When each runner that claimed is expected to be free: its last
    /// claim's time plus that batch's estimate. At most [`MAX_BUSY`], the
    /// most recent.
    #[serde(default)]
    pub busy: Vec<Busy>,
}

/// Runners remembered in a dispenser: more than any execution's parallelism.
pub const MAX_BUSY: usize = 128;

/// A runner's expected free time, as its last claim left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    pub runner: crate::ids::RunnerId,
    pub until: Timestamp,
}

impl Dispenser {
    /// Tests of `total` not handed out yet.
    pub fn undispensed(&self, total: u32) -> u32 {
        total.saturating_sub(self.next)
    }

    /// Hands out `count` tests of `weight` to `runner`, claiming at `now`
    /// and expected free at `until`.
    pub fn hand_out(
        &mut self,
        count: u32,
        weight: u64,
        runner: &crate::ids::RunnerId,
        until: Timestamp,
    ) {
        self.next += count;
        self.left_ms = self.left_ms.saturating_sub(weight);
        self.expect(runner, until);
    }

    /// Learns from one batch's overhead: the time from its claim to its
    /// report less the time its tests took.
    pub fn observe_overhead(&mut self, sample_ms: u64) {
        self.overhead_ms = Some(match self.overhead_ms {
            Some(known) => (3 * known + sample_ms).div_ceil(4),
            None => sample_ms,
        });
    }

    /// Remembers when `runner` is expected to be free.
    pub fn expect(&mut self, runner: &crate::ids::RunnerId, until: Timestamp) {
        self.busy.retain(|b| &b.runner != runner);
        if self.busy.len() >= MAX_BUSY {
            self.busy.remove(0);
        }
        self.busy.push(Busy {
            runner: runner.clone(),
            until,
        });
    }
}

impl Execution {
    /// The rollup its write is due to add: on its first finish only, which
    /// this marks (the write is conditional on the version, so the mark
    /// and the counters land together or not at all).
    pub fn take_rollup(&mut self) -> Option<super::Rollup> {
        if self.counted {
            return None;
        }
        let rollup = super::Rollup::of_finished(self)?;
        self.counted = true;
        Some(rollup)
    }

    fn refuse(&self, to: ExecutionStatus) -> Error {
        Error::transition(Entity::Execution, self.status, to)
    }

    fn touch(&mut self, now: Timestamp) {
        self.updated_at = now;
        self.version += 1;
    }

    fn finish(&mut self, status: ExecutionStatus, reason: Option<String>, now: Timestamp) {
        self.status = status;
        self.status_reason = reason;
        self.finished_at = Some(now);
        self.touch(now);
    }

    /// Accepts another webhook token (one is issued per queue call, including
    /// idempotent replays); only the newest few stay valid.
    pub fn add_webhook_token(&mut self, hash: String, now: Timestamp) {
        if self.webhook_token_hashes.len() >= MAX_WEBHOOK_TOKENS {
            self.webhook_token_hashes.remove(0);
        }
        self.webhook_token_hashes.push(hash);
        self.touch(now);
    }

    /// The first shard went to a runner.
    pub fn mark_running(&mut self, now: Timestamp) -> Result<bool> {
        match self.status {
            ExecutionStatus::Queued => {
                self.status = ExecutionStatus::Running;
                self.started_at.get_or_insert(now);
                self.touch(now);
                Ok(true)
            }
            ExecutionStatus::Running => Ok(false),
            _ => Err(self.refuse(ExecutionStatus::Running)),
        }
    }

    /// A runner claimed a batch of this dynamic execution: the dispenser
    /// as the claim left it (none for an execution whose batches were all
    /// cut when it was queued), one more batch when it was cut now (not
    /// taken back out), and running from the first claim on.
    pub fn record_claim(
        &mut self,
        dispenser: Option<Dispenser>,
        new_batch: bool,
        now: Timestamp,
    ) -> Result<()> {
        if self.status.is_terminal() {
            return Err(self.refuse(ExecutionStatus::Running));
        }
        if self.status == ExecutionStatus::Queued {
            self.status = ExecutionStatus::Running;
            self.started_at.get_or_insert(now);
        }
        self.dispenser = dispenser;
        self.shard_count += u32::from(new_batch);
        self.touch(now);
        Ok(())
    }

    /// Tests of a dynamic execution not handed out to any runner yet.
    pub fn undispensed(&self) -> u32 {
        self.dispenser
            .as_ref()
            .map_or(0, |d| d.undispensed(self.test_count))
    }

    pub fn cancel(&mut self, reason: String, now: Timestamp) -> Result<()> {
        if self.status.is_terminal() {
            return Err(self.refuse(ExecutionStatus::Cancelled));
        }
        self.finish(ExecutionStatus::Cancelled, Some(reason), now);
        Ok(())
    }

    pub fn time_out(&mut self, now: Timestamp) -> Result<()> {
        if self.status.is_terminal() {
            return Err(self.refuse(ExecutionStatus::TimedOut));
        }
        let reason = format!(
            "execution exceeded its timeout of {}s",
            self.timeout_seconds
        );
        self.finish(ExecutionStatus::TimedOut, Some(reason), now);
        Ok(())
    }

    /// A queue call of the same CI build came with `attempt`: whether it
    /// is a later attempt (a re-run) of a build whose execution did not
    /// pass, which then runs its failed work again (a `by_index`
    /// execution's jobs claim their shards themselves). The newest attempt
    /// is recorded either way.
    pub fn rerun_for_attempt(&mut self, attempt: Option<u32>, now: Timestamp) -> Result<bool> {
        let Some(attempt) = attempt else {
            return Ok(false);
        };
        let ci = self.ci.get_or_insert_with(Default::default);
        if attempt <= ci.attempt.unwrap_or(1) {
            return Ok(false);
        }
        ci.attempt = Some(attempt);
        let failed = matches!(
            self.status,
            ExecutionStatus::Failed
                | ExecutionStatus::Errored
                | ExecutionStatus::TimedOut
                | ExecutionStatus::Cancelled
        );
        if failed && self.mode != Mode::ByIndex {
            self.reopen(now)?;
            self.status_reason = Some(format!("CI attempt {attempt}: running failed work again"));
            return Ok(true);
        }
        self.touch(now);
        Ok(false)
    }

    /// A CI job of a `by_index` execution claimed a shard: a finished
    /// execution runs again (its results will be re-derived from the
    /// shards, the claimed one's new run superseding its old).
    pub fn reopen_for_claim(&mut self, now: Timestamp) -> Result<bool> {
        match self.status {
            ExecutionStatus::Queued | ExecutionStatus::Running => Ok(false),
            ExecutionStatus::Cancelled => Err(self.refuse(ExecutionStatus::Running)),
            _ => {
                self.status = ExecutionStatus::Running;
                self.status_reason = Some("a CI job is running a shard again".into());
                self.finished_at = None;
                self.deadline = self.deadline.max(now.plus_secs(self.timeout_seconds));
                self.touch(now);
                Ok(true)
            }
        }
    }

    /// Plans an automatic retry of `failed` tests of shard `of` (which ran
    /// them for the `test_attempt`-th time) under `policy` (the
    /// execution's, or its rule's): the new shard, on another
    /// runner if one can take it, or `None` when the policy or its budget
    /// does not allow it. All of a shard's failures are retried or none:
    /// a retry decides the fate of every failure it re-runs.
    pub fn plan_retry(
        &mut self,
        policy: RetryPolicy,
        of: &Shard,
        failed: Vec<String>,
        now: Timestamp,
    ) -> Option<Shard> {
        let room = policy.total.saturating_sub(self.retries_used);
        if failed.is_empty()
            || self.status.is_terminal()
            || self.mode == Mode::ByIndex
            || of.test_attempt >= policy.per_test
            || failed.len() as u32 > room
        {
            return None;
        }
        let mut retry = Shard::new(self.id.clone(), &self.suite, self.shard_count, failed, None);
        retry.mode = of.mode;
        retry.retry_of = Some(of.index);
        retry.test_attempt = of.test_attempt + 1;
        retry.avoid_runners = of.avoid_runners.clone();
        if let Some(r) = &of.runner_id {
            if !retry.avoid_runners.contains(r) {
                retry.avoid_runners.push(r.clone());
            }
        }
        self.retries_used += retry.tests.len() as u32;
        self.shard_count += 1;
        self.touch(now);
        Some(retry)
    }

    /// Opens a finished execution that did not pass again, to run its
    /// failed, errored or cancelled work once more, with a fresh timeout.
    pub fn reopen(&mut self, now: Timestamp) -> Result<()> {
        match self.status {
            ExecutionStatus::Failed
            | ExecutionStatus::Errored
            | ExecutionStatus::TimedOut
            | ExecutionStatus::Cancelled => {
                self.status = ExecutionStatus::Running;
                self.status_reason = Some("retrying failed shards".into());
                self.finished_at = None;
                self.deadline = now.plus_secs(self.timeout_seconds);
                self.touch(now);
                Ok(())
            }
            _ => Err(self.refuse(ExecutionStatus::Running)),
        }
    }

    /// Folds the shards into totals and status. Deriving from the shards (the
    /// source of truth) rather than adding each report makes this idempotent:
    /// the same completion delivered twice counts once. Returns true if
    /// anything changed.
    pub fn aggregate(&mut self, shards: &[Shard], now: Timestamp) -> bool {
        let totals = Totals::from_shards(shards);
        if matches!(
            self.status,
            ExecutionStatus::Cancelled | ExecutionStatus::TimedOut
        ) {
            // Final verdicts an operator or the clock gave; late results still count.
            let changed = totals != self.totals;
            if changed {
                self.totals = totals;
                self.touch(now);
            }
            return changed;
        }
        let waiting = self.undispensed() > 0;
        let (status, reason) = derive_status(self.status, shards, waiting, &totals, self.strict);
        if status == self.status
            && reason == self.status_reason
            && (!status.is_terminal() || totals == self.totals)
        {
            // While it runs, totals are derived from the shards whenever they
            // are read; the record is rewritten only when the verdict moves,
            // so folding each report costs a write only when it matters.
            return false;
        }
        self.totals = totals;
        if status.is_terminal() {
            self.finish(status, reason, now);
        } else {
            if status == ExecutionStatus::Running {
                self.started_at.get_or_insert(now);
            }
            self.status = status;
            self.status_reason = reason;
            self.touch(now);
        }
        true
    }
}

impl Totals {
    /// Sums the shards' reports; the source of every total shown.
    pub fn from_shards(shards: &[Shard]) -> Totals {
        fold_totals(shards)
    }
}

/// The indexes of the shards whose failed tests another shard re-runs:
/// collected once, so a fold stays linear in the shards (a dynamic
/// execution has one per batch).
fn retried(shards: &[Shard]) -> std::collections::HashSet<u32> {
    shards.iter().filter_map(|s| s.retry_of).collect()
}

fn fold_totals(shards: &[Shard]) -> Totals {
    let mut t = Totals::default();
    let retried_ones = retried(shards);
    for s in shards {
        // A retried shard's failures are decided by its retry; its passes
        // and skips stand.
        let retried = retried_ones.contains(&s.index);
        if let Some(r) = &s.result {
            if r.exit_code.is_some() {
                t.shards_by_exit_status += 1;
            }
            t.passed += r.passed;
            t.skipped += r.skipped;
            if !retried {
                t.failed += r.failed;
            }
            // A retry's passes are flaky (they failed in the shard it
            // retries); elsewhere, tests the tool itself retried to a pass.
            t.flaky += if s.retry_of.is_some() {
                r.passed
            } else {
                r.flaky
            };
        }
        if s.status.is_terminal() {
            t.shards_done += 1;
        }
        match s.status {
            ShardStatus::Failed if !retried => t.shards_failed += 1,
            ShardStatus::Errored | ShardStatus::Cancelled => t.shards_errored += 1,
            _ => {}
        }
    }
    t
}

/// "1 test", "3 tests": counts in reasons a person reads.
fn counted(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// No silent pass: an execution is `passed` only when every shard passed and
/// it reported at least one test; one whose every test was skipped passes,
/// as the test tool's own run would, and says so in its reason. Tests not
/// handed out yet (`waiting`, dynamic mode) keep it open like open shards.
fn derive_status(
    current: ExecutionStatus,
    shards: &[Shard],
    waiting: bool,
    totals: &Totals,
    strict: bool,
) -> (ExecutionStatus, Option<String>) {
    let open = shards.iter().filter(|s| !s.status.is_terminal()).count();
    if open > 0 || waiting {
        let started = current != ExecutionStatus::Queued || shards.iter().any(|s| s.attempt > 0);
        let status = if started {
            ExecutionStatus::Running
        } else {
            ExecutionStatus::Queued
        };
        return (status, None);
    }
    if let Some(bad) = shards
        .iter()
        .find(|s| matches!(s.status, ShardStatus::Errored | ShardStatus::Cancelled))
    {
        let why = bad
            .error
            .clone()
            .unwrap_or_else(|| bad.status.as_str().to_owned());
        return (
            ExecutionStatus::Errored,
            Some(format!(
                "shard {} {}: {why}",
                bad.index,
                bad.status.as_str()
            )),
        );
    }
    if totals.failed > 0 || totals.shards_failed > 0 {
        let why = if totals.failed > 0 {
            format!("{} failed", counted(totals.failed, "test"))
        } else {
            // Failed shards with no failed test: their commands' exit
            // status said so, or their runner did.
            let retried = retried(shards);
            let failed = shards
                .iter()
                .find(|s| s.status == ShardStatus::Failed && !retried.contains(&s.index));
            match failed.and_then(|s| Some((s.index, s.error.clone()?))) {
                Some((index, error)) => format!("shard {index} failed: {error}"),
                None => format!("{} failed", counted(totals.shards_failed, "shard")),
            }
        };
        return (ExecutionStatus::Failed, Some(why));
    }
    let by_exit_status = (totals.shards_by_exit_status > 0).then(|| {
        format!(
            "{} judged by exit status alone (no per-test results)",
            counted(totals.shards_by_exit_status, "shard")
        )
    });
    if totals.passed == 0 && totals.skipped == 0 && by_exit_status.is_some() {
        return (ExecutionStatus::Passed, by_exit_status);
    }
    if totals.passed == 0 && totals.skipped == 0 {
        return (
            ExecutionStatus::Errored,
            Some("no tests were executed".into()),
        );
    }
    if totals.passed == 0 {
        // What the test tool itself says of such a run: nothing failed.
        return (
            ExecutionStatus::Passed,
            Some(match totals.skipped {
                1 => "its one test skipped".to_owned(),
                n => format!("all {n} tests skipped"),
            }),
        );
    }
    if totals.flaky > 0 {
        return if strict {
            (
                ExecutionStatus::Failed,
                Some(format!(
                    "{} (failed, then passed on a retry); strict",
                    counted(totals.flaky, "flaky test")
                )),
            )
        } else {
            (
                ExecutionStatus::Passed,
                Some(format!(
                    "{} passed on a retry",
                    counted(totals.flaky, "flaky test")
                )),
            )
        };
    }
    (ExecutionStatus::Passed, by_exit_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::shard::{ShardOutcome, ShardResult};
    use crate::fixtures::execution;
    use crate::ids::{LeaseId, RunnerId};
    use proptest::prelude::*;

    fn finished(e: &Execution, index: u32, outcome: ShardOutcome, result: ShardResult) -> Shard {
        let mut s = Shard::new(
            e.id.clone(),
            &e.suite,
            index,
            vec![format!("t{index}")],
            None,
        );
        let lease = LeaseId::generate();
        s.assign(
            RunnerId::generate(),
            lease.clone(),
            Timestamp(1),
            Timestamp(100),
        )
        .unwrap();
        s.complete(&lease, outcome, &result, 0, Timestamp(2))
            .unwrap();
        s
    }

    #[test]
    fn a_requirement_class_names_what_work_needs_whatever_the_order_it_was_given_in() {
        use crate::domain::RunnerType;
        let need = |labels: &[&str], types: &[RunnerType], cpu| Requirements {
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            runner_types: types.to_vec(),
            cpu_millis: cpu,
            memory_mb: 512,
            affinity: None,
        };
        let a = need(
            &["linux", "gpu"],
            &[RunnerType::Docker, RunnerType::Gitlab],
            500,
        );
        let b = need(
            &["gpu", "linux"],
            &[RunnerType::Gitlab, RunnerType::Docker],
            500,
        );
        assert_eq!(a.class(), b.class());
        assert_ne!(
            a.class(),
            need(&["gpu", "linux"], &[RunnerType::Gitlab], 500).class()
        );
        assert_ne!(
            a.class(),
            need(
                &["gpu", "linux"],
                &[RunnerType::Docker, RunnerType::Gitlab],
                1000
            )
            .class()
        );
        // A stored key (DynamoDB's PENDING partitions): the same
        // requirements must keep the same class from release to release.
        assert_eq!(
            need(&["gpu"], &[RunnerType::GithubActions], 500).class(),
            "5502de9dc7108b1d24fe3c34"
        );
        // Unlabelled work of another suite or project is another class;
        // without an affinity (queued before there was one) the key stays.
        let of = |suite: &str, project: Option<&str>| Requirements {
            affinity: Some(super::Affinity {
                suite: suite.into(),
                project: project.map(Into::into),
            }),
            ..need(&[], &[], 500)
        };
        let classes: std::collections::BTreeSet<String> = [
            need(&[], &[], 500),
            of("api", None),
            of("web", None),
            of("api", Some("acme/shop")),
            of("api", Some("acme/shelf")),
        ]
        .iter()
        .map(Requirements::class)
        .collect();
        assert_eq!(classes.len(), 5);
    }

    #[test]
    fn all_shards_passing_with_tests_run_passes() {
        let mut e = execution(2);
        let ok = ShardResult {
            passed: 2,
            ..Default::default()
        };
        let shards = [
            finished(&e, 0, ShardOutcome::Passed, ok.clone()),
            finished(&e, 1, ShardOutcome::Passed, ok),
        ];
        assert!(e.aggregate(&shards, Timestamp(3)));
        assert_eq!(e.status, ExecutionStatus::Passed);
        assert_eq!(e.totals.passed, 4);
        assert!(
            !e.aggregate(&shards, Timestamp(4)),
            "folding the same shards again changes nothing"
        );
    }

    #[test]
    fn one_errored_shard_makes_the_execution_errored_not_passed() {
        let mut e = execution(2);
        let shards = [
            finished(
                &e,
                0,
                ShardOutcome::Passed,
                ShardResult {
                    passed: 5,
                    ..Default::default()
                },
            ),
            finished(&e, 1, ShardOutcome::Errored, ShardResult::default()),
        ];
        e.aggregate(&shards, Timestamp(3));
        assert_eq!(e.status, ExecutionStatus::Errored);
    }

    #[test]
    fn a_cancelled_execution_stays_cancelled_when_late_results_arrive() {
        let mut e = execution(1);
        e.cancel("user".into(), Timestamp(1)).unwrap();
        let shards = [finished(
            &e,
            0,
            ShardOutcome::Passed,
            ShardResult {
                passed: 1,
                ..Default::default()
            },
        )];
        e.aggregate(&shards, Timestamp(3));
        assert_eq!(e.status, ExecutionStatus::Cancelled);
    }

    fn outcome() -> impl Strategy<Value = (ShardOutcome, u32, u32, u32)> {
        (
            prop_oneof![
                Just(ShardOutcome::Passed),
                Just(ShardOutcome::Failed),
                Just(ShardOutcome::Errored)
            ],
            0u32..5,
            0u32..3,
            0u32..3,
        )
    }

    proptest! {
        #[test]
        fn an_execution_is_passed_only_if_every_shard_passed_and_it_reported_a_test(
            outcomes in proptest::collection::vec(outcome(), 1..8)
        ) {
            let mut e = execution(outcomes.len() as u32);
            let shards: Vec<Shard> = outcomes.iter().enumerate().map(|(i, (o, p, f, s))| {
                finished(&e, i as u32, *o, ShardResult { passed: *p, failed: *f, skipped: *s, flaky: 0, tests: vec![], exit_code: None })
            }).collect();
            e.aggregate(&shards, Timestamp(9));
            let all_passed = shards.iter().all(|s| s.status == ShardStatus::Passed);
            // Passed or skipped: a run whose every test was skipped passes.
            let reported: u32 = shards
                .iter()
                .map(|s| s.result.as_ref().map_or(0, |r| r.passed + r.skipped))
                .sum();
            prop_assert_eq!(e.status == ExecutionStatus::Passed, all_passed && reported > 0);
            prop_assert!(e.status.is_terminal());
        }
    }
}
