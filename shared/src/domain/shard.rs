//! Shards: a slice of an execution's tests, the unit that is assigned,
//! leased, run, reported and retried.
//!
//! ```text
//! queued -> assigned -> running -> passed | failed | errored
//!    ^         |           |
//!    +---------+-----------+  requeue (lost runner, deadline passed, manual retry)
//! any non-terminal -> cancelled
//! ```

use super::execution::Mode;
use crate::error::{Entity, Error, Result};
use crate::ids::{ExecutionId, LeaseId, RunnerId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShardStatus {
    Queued,
    Assigned,
    Running,
    Passed,
    Failed,
    Errored,
    Cancelled,
}

impl ShardStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ShardStatus::Passed
                | ShardStatus::Failed
                | ShardStatus::Errored
                | ShardStatus::Cancelled
        )
    }

    /// Holding a lease and capacity on a runner.
    pub fn is_in_flight(self) -> bool {
        matches!(self, ShardStatus::Assigned | ShardStatus::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShardStatus::Queued => "queued",
            ShardStatus::Assigned => "assigned",
            ShardStatus::Running => "running",
            ShardStatus::Passed => "passed",
            ShardStatus::Failed => "failed",
            ShardStatus::Errored => "errored",
            ShardStatus::Cancelled => "cancelled",
        }
    }
}

/// The final word a runner gives about a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShardOutcome {
    Passed,
    Failed,
    Errored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    Passed,
    Failed,
    Skipped,
    Errored,
}

/// One test's result as reported by a runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestResult {
    pub name: String,
    pub status: TestStatus,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed attempts before this result, oldest first, when the test tool
    /// retried the test within the run (pytest-rerunfailures, nextest,
    /// Surefire, vitest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierAttempt>,
    /// The case's `classname` and `name` as the tool's JUnit report wrote
    /// them: the merged JUnit gives them back unchanged, so CI test-history
    /// views (which key on them) see the same tests as in the tool's own
    /// report. None for results reported as JSON without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit: Option<JunitName>,
}

impl TestResult {
    /// A result reported as JSON by name alone: no message, no earlier
    /// attempts, no JUnit names (what most runners and `tms agent` send).
    pub fn new(name: &str, status: TestStatus, duration_ms: u64) -> TestResult {
        TestResult {
            name: name.to_owned(),
            status,
            duration_ms,
            message: None,
            earlier: Vec::new(),
            junit: None,
        }
    }
}

/// A test case's name in JUnit terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JunitName {
    pub classname: String,
    pub name: String,
}

/// A failed attempt of a test that its own tool retried within one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EarlierAttempt {
    /// `failed` or `errored`.
    pub status: TestStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Counts (and optionally per-test results) of one shard run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardResult {
    #[serde(default)]
    pub passed: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub skipped: u32,
    /// Of the passed, those that failed first and passed on a retry of the
    /// test tool's own (`earlier` attempts in their results). Derived from
    /// the per-test results when they are given.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flaky: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestResult>,
    /// The command's exit status, when that is all the runner knew of the
    /// run (no JUnit report): the shard was judged by it, its tests not
    /// counted one by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl ShardResult {
    /// A run known only by its command's exit status.
    pub fn exit_status(code: i32) -> ShardResult {
        ShardResult {
            exit_code: Some(code),
            ..ShardResult::default()
        }
    }

    /// Per-test results with their counts.
    pub fn of(tests: Vec<TestResult>) -> ShardResult {
        let counts = ShardResult::tally(&tests);
        ShardResult { tests, ..counts }
    }

    /// The counts of per-test results (failed counts errored tests too),
    /// without the results.
    fn tally(tests: &[TestResult]) -> ShardResult {
        let count =
            |s: &[TestStatus]| tests.iter().filter(|t| s.contains(&t.status)).count() as u32;
        ShardResult {
            passed: count(&[TestStatus::Passed]),
            failed: count(&[TestStatus::Failed, TestStatus::Errored]),
            skipped: count(&[TestStatus::Skipped]),
            flaky: tests
                .iter()
                .filter(|t| t.status == TestStatus::Passed && !t.earlier.is_empty())
                .count() as u32,
            tests: Vec::new(),
            exit_code: None,
        }
    }

    /// Whether the counts are those the per-test results give (always, with
    /// none), and no more tests are flaky than passed.
    pub fn is_consistent(&self) -> bool {
        if self.tests.is_empty() {
            return self.flaky <= self.passed;
        }
        let counts = self.counts();
        (self.passed, self.failed, self.skipped) == (counts.passed, counts.failed, counts.skipped)
    }

    /// Tests that actually ran (skipped ones did not).
    pub fn executed(&self) -> u32 {
        self.passed + self.failed
    }

    /// The counts alone: what the shard record keeps (per-test results are
    /// stored apart, in chunks, see `domain::results`).
    pub fn counts(&self) -> ShardResult {
        if self.tests.is_empty() {
            self.clone()
        } else {
            ShardResult::tally(&self.tests)
        }
    }
}

/// One finished or lost run of a shard: kept so the report can show every
/// attempt (a retried test's earlier failures, flaky tests) and so per-test
/// results are read only for runs the shard really recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptRecord {
    pub attempt: u32,
    #[schema(value_type = String)]
    pub lease_id: LeaseId,
    #[schema(value_type = Option<String>)]
    pub runner_id: Option<RunnerId>,
    /// How the run ended: passed, failed or errored (lost runners, deadlines
    /// and refused dispatches are errored runs).
    pub status: ShardStatus,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    /// How many chunks of per-test results the run stored (0: counts only).
    #[serde(default)]
    pub result_chunks: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[schema(value_type = u64)]
    pub finished_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub execution_id: ExecutionId,
    /// The execution's suite, copied so a runner's assignments need no other read.
    #[serde(default)]
    pub suite: String,
    pub index: u32,
    /// Empty for a single-shard execution that runs the whole suite.
    /// Shared: the list never changes after the split, and a shard is
    /// copied on every read and write (copying the list was about a fifth
    /// of the server's time per request at 50 tests per shard). The embedded
    /// store keeps it out of the document it rewrites (absent: empty).
    #[serde(default)]
    pub tests: Arc<[String]>,
    pub estimated_ms: Option<u64>,
    pub status: ShardStatus,
    /// How many times this shard has been assigned.
    pub attempt: u32,
    pub lease_id: Option<LeaseId>,
    pub runner_id: Option<RunnerId>,
    pub assigned_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// When the current lease runs out.
    pub deadline: Option<Timestamp>,
    /// Runners that lost this shard before; the scheduler prefers others.
    pub avoid_runners: Vec<RunnerId>,
    pub result: Option<ShardResult>,
    pub error: Option<String>,
    /// Push mode: when the current lease was handed to the runner's CI
    /// platform, and the hash of the token the started job reports with
    /// (valid only while this lease is current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch: Option<ShardDispatch>,
    /// The execution's mode. Shards of `by_index` and `dynamic` executions
    /// are claimed (by CI jobs, by runners): never assigned by the
    /// scheduler, never counted as waiting for it.
    #[serde(default, skip_serializing_if = "Mode::is_static")]
    pub mode: Mode,
    /// Dynamic mode: the latest a lease may be extended to (the claim plus
    /// the execution's shard timeout); heartbeats extend up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deadline: Option<Timestamp>,
    /// An automatic retry: re-runs the tests that failed in this shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<u32>,
    /// How many times these tests have run before (0: a first run).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub test_attempt: u32,
    /// Every run that ended, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    pub version: u64,
}

pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A lease's dispatch to a CI platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardDispatch {
    pub token_hash: String,
    pub at: Timestamp,
}

/// What a completion report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The shard changed state.
    Changed,
    /// The same report was already applied; nothing changed.
    Duplicate,
}

/// The runner and lease a shard held before it was taken back.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    pub runner_id: RunnerId,
    pub lease_id: LeaseId,
}

impl Shard {
    pub fn new(
        execution_id: ExecutionId,
        suite: &str,
        index: u32,
        tests: Vec<String>,
        estimated_ms: Option<u64>,
    ) -> Self {
        Shard {
            execution_id,
            suite: suite.to_owned(),
            index,
            tests: tests.into(),
            estimated_ms,
            status: ShardStatus::Queued,
            attempt: 0,
            lease_id: None,
            runner_id: None,
            assigned_at: None,
            started_at: None,
            finished_at: None,
            deadline: None,
            avoid_runners: Vec::new(),
            result: None,
            error: None,
            dispatch: None,
            mode: Mode::Static,
            max_deadline: None,
            retry_of: None,
            test_attempt: 0,
            attempts: Vec::new(),
            version: 1,
        }
    }

    fn refuse(&self, to: ShardStatus) -> Error {
        Error::transition(Entity::Shard, self.status, to)
    }

    fn stale(&self, presented: &LeaseId) -> Error {
        Error::StaleLease {
            shard: self.index,
            presented: presented.to_string(),
        }
    }

    /// The runner currently holding this shard, if any.
    pub fn holder(&self) -> Option<Released> {
        match (&self.runner_id, &self.lease_id) {
            (Some(r), Some(l)) if self.status.is_in_flight() => Some(Released {
                runner_id: r.clone(),
                lease_id: l.clone(),
            }),
            _ => None,
        }
    }

    pub fn assign(
        &mut self,
        runner: RunnerId,
        lease: LeaseId,
        now: Timestamp,
        deadline: Timestamp,
    ) -> Result<()> {
        if self.status != ShardStatus::Queued {
            return Err(self.refuse(ShardStatus::Assigned));
        }
        self.assign_lease(Some(runner), lease, now, deadline);
        Ok(())
    }

    /// A runner's claim on a dynamic batch. The runner asked for the batch
    /// to run it at once, so it is running from the claim: there is no
    /// hand-over to wait for, as there is for work the scheduler assigns
    /// (and a CI platform may start, or not). The runner's `started`
    /// report is then a repeat, acknowledged without a write.
    pub fn claim(
        &mut self,
        runner: RunnerId,
        lease: LeaseId,
        now: Timestamp,
        deadline: Timestamp,
    ) -> Result<()> {
        self.assign(runner, lease, now, deadline)?;
        self.status = ShardStatus::Running;
        self.started_at = Some(now);
        Ok(())
    }

    fn assign_lease(
        &mut self,
        runner: Option<RunnerId>,
        lease: LeaseId,
        now: Timestamp,
        deadline: Timestamp,
    ) {
        self.status = ShardStatus::Assigned;
        self.attempt += 1;
        self.runner_id = runner;
        self.lease_id = Some(lease);
        self.assigned_at = Some(now);
        self.started_at = None;
        self.finished_at = None;
        self.deadline = Some(deadline);
        self.result = None;
        self.error = None;
        self.dispatch = None;
        self.version += 1;
    }

    /// A CI job claims this shard by its index (execution mode `by_index`):
    /// a new lease, held by the job rather than a runner. Whatever the shard
    /// was doing, the claim wins: a CI job asking for shard k again is the
    /// retry of the job that ran it (that job is gone, or its results are to
    /// be superseded), so an earlier lease is fenced off and recorded as a
    /// lost run, and a finished shard runs again. Only a cancelled shard is
    /// refused.
    pub fn claim_by_index(
        &mut self,
        lease: LeaseId,
        now: Timestamp,
        deadline: Timestamp,
    ) -> Result<()> {
        if self.mode != Mode::ByIndex {
            return Err(Error::validation(
                "mode",
                "only shards of a by_index execution are claimed by index; \
                 the scheduler assigns the others",
            ));
        }
        match self.status {
            ShardStatus::Cancelled => return Err(self.refuse(ShardStatus::Assigned)),
            s if s.is_in_flight() => {
                self.record_lost_run("claimed again by a retried CI job", now);
            }
            _ => {}
        }
        self.status = ShardStatus::Queued;
        self.runner_id = None;
        self.assign_lease(None, lease, now, deadline);
        Ok(())
    }

    /// The assigned lease is about to be handed to the runner's CI platform;
    /// the job will report with a token of this hash. `false` when a
    /// dispatch of this lease already began: it may have started a job (an
    /// attempt that died mid-call leaves no answer), so a lease is handed
    /// to the platform at most once unless [`Self::undo_dispatch`] says
    /// the platform refused it.
    pub fn mark_dispatched(
        &mut self,
        lease: &LeaseId,
        token_hash: String,
        now: Timestamp,
    ) -> Result<bool> {
        self.require_current_lease(lease)?;
        if self.status != ShardStatus::Assigned {
            return Err(self.refuse(ShardStatus::Assigned));
        }
        if self.dispatch.is_some() {
            return Ok(false);
        }
        self.dispatch = Some(ShardDispatch {
            token_hash,
            at: now,
        });
        self.version += 1;
        Ok(true)
    }

    /// The platform answered that it did not start the job (busy, down):
    /// the lease may be dispatched again. `false` when there is nothing of
    /// this dispatch to undo (the lease moved on, the job already began, or
    /// another attempt's token is in place).
    pub fn undo_dispatch(&mut self, lease: &LeaseId, token_hash: &str) -> bool {
        let ours = self
            .dispatch
            .as_ref()
            .is_some_and(|d| d.token_hash == token_hash);
        if self.lease_id.as_ref() != Some(lease) || self.status != ShardStatus::Assigned || !ours {
            return false;
        }
        self.dispatch = None;
        self.version += 1;
        true
    }

    /// `stale_lease` unless `lease` is the shard's current one.
    pub(crate) fn require_current_lease(&self, lease: &LeaseId) -> Result<()> {
        if self.lease_id.as_ref() == Some(lease) {
            Ok(())
        } else {
            Err(self.stale(lease))
        }
    }

    /// The runner began work. Repeating it is harmless.
    pub fn start(&mut self, lease: &LeaseId, now: Timestamp) -> Result<Applied> {
        self.require_current_lease(lease)?;
        match self.status {
            ShardStatus::Assigned => {
                self.status = ShardStatus::Running;
                self.started_at = Some(now);
                self.version += 1;
                Ok(Applied::Changed)
            }
            ShardStatus::Running => Ok(Applied::Duplicate),
            _ => Err(self.refuse(ShardStatus::Running)),
        }
    }

    /// Applies a final report. A report that passed without running any test,
    /// or passed with failures in it, is not taken at its word.
    ///
    /// The record keeps the counts; `result_chunks` says how many chunks of
    /// per-test results the caller stores for this lease.
    pub fn complete(
        &mut self,
        lease: &LeaseId,
        outcome: ShardOutcome,
        result: &ShardResult,
        result_chunks: u32,
        now: Timestamp,
    ) -> Result<Applied> {
        self.require_current_lease(lease)?;
        let (status, error) = judge(outcome, result, &self.tests);
        let counts = result.counts();
        if self.status.is_terminal() {
            return if self.status == status && self.result.as_ref() == Some(&counts) {
                Ok(Applied::Duplicate)
            } else {
                Err(self.refuse(status))
            };
        }
        if !self.status.is_in_flight() {
            return Err(self.refuse(status));
        }
        self.attempts.push(AttemptRecord {
            attempt: self.attempt,
            lease_id: lease.clone(),
            runner_id: self.runner_id.clone(),
            status,
            passed: counts.passed,
            failed: counts.failed,
            skipped: counts.skipped,
            result_chunks,
            error: error.clone(),
            finished_at: now,
        });
        self.status = status;
        self.error = error;
        self.result = Some(counts);
        self.finished_at = Some(now);
        self.deadline = None;
        self.version += 1;
        Ok(Applied::Changed)
    }

    /// Records that the current run ended without results (its runner was
    /// lost, its deadline passed, its dispatch failed).
    fn record_lost_run(&mut self, reason: &str, now: Timestamp) {
        let Some(lease_id) = self.lease_id.clone() else {
            return;
        };
        self.attempts.push(AttemptRecord {
            attempt: self.attempt,
            lease_id,
            runner_id: self.runner_id.clone(),
            status: ShardStatus::Errored,
            passed: 0,
            failed: 0,
            skipped: 0,
            result_chunks: 0,
            error: Some(reason.to_owned()),
            finished_at: now,
        });
    }

    /// Takes the shard back from its runner so another can run it.
    pub fn requeue(&mut self, reason: &str, now: Timestamp) -> Result<Option<Released>> {
        if !self.status.is_in_flight() {
            return Err(self.refuse(ShardStatus::Queued));
        }
        let held = self.holder();
        self.record_lost_run(reason, now);
        if let Some(h) = &held {
            if !self.avoid_runners.contains(&h.runner_id) {
                self.avoid_runners.push(h.runner_id.clone());
            }
        }
        self.status = ShardStatus::Queued;
        self.lease_id = None;
        self.runner_id = None;
        self.deadline = None;
        self.started_at = None;
        self.dispatch = None;
        self.error = Some(reason.to_owned());
        self.version += 1;
        Ok(held)
    }

    /// Gives up on the shard (out of attempts). Returns what it held, if anything.
    pub fn give_up(&mut self, reason: String, now: Timestamp) -> Result<Option<Released>> {
        if self.status.is_terminal() {
            return Err(self.refuse(ShardStatus::Errored));
        }
        let held = self.holder();
        if self.status.is_in_flight() {
            self.record_lost_run(&reason, now);
        }
        self.status = ShardStatus::Errored;
        self.error = Some(reason);
        self.finished_at = Some(now);
        self.deadline = None;
        self.version += 1;
        Ok(held)
    }

    /// Stops the shard because its execution ended. Returns what it held.
    pub fn cancel(&mut self, reason: &str, now: Timestamp) -> Result<Option<Released>> {
        if self.status.is_terminal() {
            return Err(self.refuse(ShardStatus::Cancelled));
        }
        let held = self.holder();
        self.status = ShardStatus::Cancelled;
        self.error = Some(reason.to_owned());
        self.finished_at = Some(now);
        self.deadline = None;
        self.version += 1;
        Ok(held)
    }

    /// Manual retry of a shard that did not pass.
    pub fn retry(&mut self) -> Result<()> {
        match self.status {
            ShardStatus::Failed | ShardStatus::Errored | ShardStatus::Cancelled => {
                if let Some(r) = self.runner_id.take() {
                    if !self.avoid_runners.contains(&r) {
                        self.avoid_runners.push(r);
                    }
                }
                self.status = ShardStatus::Queued;
                self.lease_id = None;
                self.deadline = None;
                self.result = None;
                self.error = None;
                self.finished_at = None;
                self.version += 1;
                Ok(())
            }
            _ => Err(self.refuse(ShardStatus::Queued)),
        }
    }
}

/// No silent pass: the reported outcome is checked against the counts, and
/// the tests reported against the tests the shard was given.
fn judge(
    outcome: ShardOutcome,
    result: &ShardResult,
    given: &[String],
) -> (ShardStatus, Option<String>) {
    if let (Some(code), false) = (result.exit_code, outcome == ShardOutcome::Errored) {
        // The command's exit status is all that is known of the run: it
        // is the verdict, and the given tests cannot be checked one by one.
        return if code == 0 && outcome == ShardOutcome::Passed {
            (ShardStatus::Passed, None)
        } else {
            (
                ShardStatus::Failed,
                Some(format!(
                    "its command exited with status {code} (no per-test results)"
                )),
            )
        };
    }
    let gap = super::results::coverage_gap(given, result);
    match (outcome, gap) {
        (ShardOutcome::Errored, _) => (
            ShardStatus::Errored,
            Some("runner reported an error".into()),
        ),
        // Skips are a result (the tool decided not to run them); a pass
        // that reports nothing at all is not.
        (ShardOutcome::Passed, _) if result.executed() == 0 && result.skipped == 0 => (
            ShardStatus::Errored,
            Some("shard reported zero tests".into()),
        ),
        // A report that does not account for the shard's tests is no
        // verdict on them, whether or not others failed: the ones missing
        // may be the ones that broke. The missing tests are named first.
        (_, Some(gap)) => (
            ShardStatus::Errored,
            Some(match result.failed {
                0 => gap,
                1 => format!("{gap}; 1 reported test failed"),
                failed => format!("{gap}; {failed} reported tests failed"),
            }),
        ),
        (ShardOutcome::Failed, None) => (ShardStatus::Failed, None),
        (ShardOutcome::Passed, None) if result.failed > 0 => (
            ShardStatus::Failed,
            Some(format!(
                "reported passed with {} failed tests",
                result.failed
            )),
        ),
        (ShardOutcome::Passed, None) => (ShardStatus::Passed, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned() -> (Shard, LeaseId) {
        assigned_with(&["t1"])
    }

    fn assigned_with(tests: &[&str]) -> (Shard, LeaseId) {
        let tests = tests.iter().map(|t| t.to_string()).collect();
        let mut s = Shard::new(ExecutionId::generate(), "s", 0, tests, None);
        let lease = LeaseId::generate();
        s.assign(
            RunnerId::generate(),
            lease.clone(),
            Timestamp(0),
            Timestamp(1000),
        )
        .unwrap();
        (s, lease)
    }

    fn passing() -> ShardResult {
        ShardResult {
            passed: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_report_with_an_old_lease_is_rejected_as_stale() {
        let (mut s, _) = assigned();
        let err = s
            .complete(
                &LeaseId::generate(),
                ShardOutcome::Passed,
                &passing(),
                0,
                Timestamp(5),
            )
            .unwrap_err();
        assert!(matches!(err, Error::StaleLease { .. }));
    }

    #[test]
    fn the_same_final_report_twice_is_a_duplicate_not_a_change() {
        let (mut s, lease) = assigned();
        assert_eq!(
            s.complete(&lease, ShardOutcome::Passed, &passing(), 0, Timestamp(5))
                .unwrap(),
            Applied::Changed
        );
        assert_eq!(
            s.complete(&lease, ShardOutcome::Passed, &passing(), 0, Timestamp(6))
                .unwrap(),
            Applied::Duplicate
        );
        assert!(s
            .complete(&lease, ShardOutcome::Failed, &passing(), 0, Timestamp(6))
            .is_err());
    }

    #[test]
    fn a_pass_where_every_test_was_skipped_passes_with_the_skips_counted() {
        let (mut s, lease) = assigned();
        let skipped = ShardResult {
            skipped: 3,
            ..Default::default()
        };
        s.complete(&lease, ShardOutcome::Passed, &skipped, 0, Timestamp(5))
            .unwrap();
        assert_eq!(s.status, ShardStatus::Passed);
        assert_eq!(s.result.as_ref().map(|r| r.skipped), Some(3));
    }

    #[test]
    fn a_pass_that_reported_no_tests_at_all_is_recorded_as_errored() {
        let (mut s, lease) = assigned();
        s.complete(
            &lease,
            ShardOutcome::Passed,
            &ShardResult::default(),
            0,
            Timestamp(5),
        )
        .unwrap();
        assert_eq!(s.status, ShardStatus::Errored);
        assert_eq!(s.error.as_deref(), Some("shard reported zero tests"));
    }

    #[test]
    fn a_pass_with_failures_is_recorded_as_failed() {
        let (mut s, lease) = assigned();
        s.complete(
            &lease,
            ShardOutcome::Passed,
            &ShardResult {
                passed: 1,
                failed: 1,
                ..Default::default()
            },
            0,
            Timestamp(5),
        )
        .unwrap();
        assert_eq!(s.status, ShardStatus::Failed);
    }

    #[test]
    fn a_report_missing_given_tests_is_errored_even_when_others_failed() {
        let (mut s, lease) = assigned_with(&["t1", "t2"]);
        let failing_t1 = ShardResult {
            failed: 1,
            tests: vec![TestResult {
                name: "t1".into(),
                status: TestStatus::Failed,
                duration_ms: 3,
                message: None,
                earlier: Vec::new(),
                junit: None,
            }],
            ..Default::default()
        };
        s.complete(&lease, ShardOutcome::Failed, &failing_t1, 0, Timestamp(5))
            .unwrap();
        assert_eq!(s.status, ShardStatus::Errored);
        let why = s.error.clone().unwrap();
        assert!(why.contains("t2"), "{why}");
        assert!(
            why.find("t2") < why.find("failed"),
            "missing tests first: {why}"
        );
    }

    #[test]
    fn a_requeued_shard_remembers_to_avoid_the_runner_that_lost_it_and_fences_its_lease() {
        let (mut s, lease) = assigned();
        let held = s.requeue("runner lost", Timestamp(2)).unwrap().unwrap();
        assert_eq!(s.status, ShardStatus::Queued);
        assert_eq!(s.avoid_runners, vec![held.runner_id]);
        assert!(matches!(
            s.start(&lease, Timestamp(3)),
            Err(Error::StaleLease { .. })
        ));
    }

    #[test]
    fn a_queued_shard_cannot_be_requeued_and_a_finished_one_cannot_be_cancelled() {
        let mut s = Shard::new(ExecutionId::generate(), "s", 0, vec![], None);
        assert!(s.requeue("x", Timestamp(2)).is_err());
        let (mut done, lease) = assigned();
        done.complete(&lease, ShardOutcome::Passed, &passing(), 0, Timestamp(1))
            .unwrap();
        assert!(done.cancel("x", Timestamp(2)).is_err());
    }
}
