//! Shard reports from runners and the aggregator that folds them into the
//! execution.

use super::claims::ClaimPlan;
use super::timings::LearnedRun;
use super::{retry_on_conflict, Orchestrator};
use crate::auth::Principal;
use crate::domain::results;
use crate::domain::shard::{Applied, EarlierAttempt, JunitName};
use crate::domain::{
    Execution, ResultChunk, ShardOutcome, ShardResult, ShardStatus, TestResult, TestStatus,
};
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, LeaseId};
use crate::junit::{self, CaseOutcome, NameFormat};
use crate::ports::{Event, Events, Nudges, Ports, Store};
use crate::time::Clock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    Started,
    Passed,
    Failed,
    Errored,
}

/// Body of `POST /webhooks/parallel-execution/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardReport {
    pub shard_index: u32,
    #[schema(value_type = String)]
    pub lease_id: LeaseId,
    pub status: ReportStatus,
    pub results: Option<ShardResult>,
}

/// What a report did to its shard.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReportOutcome {
    pub shard_index: u32,
    /// The shard's status after the report (a passed report may be judged errored or failed).
    pub shard_status: ShardStatus,
    /// True when this exact report had already been applied.
    pub duplicate: bool,
    /// Asked for with `?next=true` by the runner that ran a dynamic batch:
    /// its claim of the next batch of the same execution, made with the
    /// report (one round trip a batch instead of two); with `?next=any`,
    /// of another execution once this one has none for the runner (the
    /// assignment names it). Absent when not asked for, or when the runner
    /// may not claim now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<super::ClaimOutcome>,
    /// What the batch cost besides its tests: from its claim to this
    /// report, less the time its tests took (with per-test results).
    #[serde(skip)]
    pub(crate) overhead_ms: Option<u64>,
}

const MAX_RESULTS: usize = 20_000;
/// Earlier attempts kept of one test retried by its own tool.
const MAX_EARLIER_ATTEMPTS: usize = 16;
/// Longest test name accepted in a report (the queue's limit too).
const MAX_TEST_NAME: usize = 1024;

/// A shard's JUnit XML report, read but its cases not yet named: which
/// test id a case is depends on the tests its shard was given
/// ([`crate::naming`]), unless `names` says how the tool names tests.
#[derive(Debug, Clone)]
pub struct JunitReport {
    pub shard_index: u32,
    pub lease_id: LeaseId,
    /// Without one, the shard failed if any case failed or errored, else
    /// passed.
    pub status: Option<ReportStatus>,
    pub names: Option<NameFormat>,
    cases: Vec<junit::JunitCase>,
}

impl JunitReport {
    /// Reads the report; a body that is not a whole JUnit report is
    /// refused here, before any shard is touched.
    pub fn parse(
        shard_index: u32,
        lease_id: LeaseId,
        status: Option<ReportStatus>,
        xml: &str,
        names: Option<NameFormat>,
    ) -> Result<Self> {
        if status == Some(ReportStatus::Started) {
            return Err(Error::validation(
                "status",
                "a JUnit report is a final report: passed, failed or errored",
            ));
        }
        Ok(JunitReport {
            shard_index,
            lease_id,
            status,
            names,
            cases: junit::parse(xml)?,
        })
    }

    /// The report of a shard given `given`: every case a test result under
    /// the id it matches.
    pub fn for_tests(&self, given: &[String]) -> ShardReport {
        let given = crate::naming::Given::new(given);
        let tests: Vec<TestResult> = self
            .cases
            .iter()
            .map(|c| TestResult {
                name: crate::naming::resolve(c, &given, self.names),
                status: test_status(c.outcome),
                duration_ms: c.time_ms.unwrap_or(0),
                message: c.message.clone(),
                earlier: c
                    .earlier
                    .iter()
                    .take(MAX_EARLIER_ATTEMPTS)
                    .map(|a| EarlierAttempt {
                        status: match a.outcome {
                            CaseOutcome::Errored => TestStatus::Errored,
                            _ => TestStatus::Failed,
                        },
                        message: a.message.clone(),
                    })
                    .collect(),
                junit: Some(JunitName {
                    classname: c.classname.clone(),
                    name: c.name.clone(),
                }),
            })
            .collect();
        let results = ShardResult::of(tests);
        let status = self.status.unwrap_or(if results.failed > 0 {
            ReportStatus::Failed
        } else {
            ReportStatus::Passed
        });
        ShardReport {
            shard_index: self.shard_index,
            lease_id: self.lease_id.clone(),
            status,
            results: Some(results),
        }
    }
}

fn test_status(outcome: CaseOutcome) -> TestStatus {
    match outcome {
        CaseOutcome::Passed => TestStatus::Passed,
        CaseOutcome::Failed => TestStatus::Failed,
        CaseOutcome::Errored => TestStatus::Errored,
        CaseOutcome::Skipped => TestStatus::Skipped,
    }
}

impl ShardReport {
    fn validate(&self) -> Result<()> {
        let Some(r) = &self.results else {
            return Ok(());
        };
        if self.status == ReportStatus::Started {
            return Err(Error::validation(
                "results",
                "a started report carries no results",
            ));
        }
        if r.tests.len() > MAX_RESULTS {
            return Err(Error::validation(
                "results.tests",
                format!("at most {MAX_RESULTS} results"),
            ));
        }
        if let Some(t) = r
            .tests
            .iter()
            .find(|t| t.name.is_empty() || t.name.len() > MAX_TEST_NAME)
        {
            return Err(Error::validation(
                "results.tests.name",
                format!(
                    "a test name must have 1 to {MAX_TEST_NAME} bytes (got {})",
                    t.name.len()
                ),
            ));
        }
        if let Some(t) = r.tests.iter().find(|t| {
            t.junit
                .as_ref()
                .is_some_and(|j| j.classname.len().max(j.name.len()) > MAX_TEST_NAME)
        }) {
            return Err(Error::validation(
                "results.tests.junit",
                format!(
                    "{}: a JUnit classname or name has at most {MAX_TEST_NAME} bytes",
                    t.name
                ),
            ));
        }
        if let Some(code) = r.exit_code {
            if !r.tests.is_empty() || r.passed + r.failed + r.skipped + r.flaky > 0 {
                return Err(Error::validation(
                    "results.exit_code",
                    "an exit code is reported alone, for a run without per-test results or counts",
                ));
            }
            let agrees = match self.status {
                ReportStatus::Passed => code == 0,
                ReportStatus::Failed => code != 0,
                _ => false,
            };
            if !agrees {
                return Err(Error::validation(
                    "results.exit_code",
                    format!(
                        "exit code {code} does not agree with the status: \
                         0 is passed, any other code failed"
                    ),
                ));
            }
        }
        if !r.is_consistent() {
            return Err(Error::validation(
                "results",
                "passed/failed/skipped do not match the per-test results \
                 (or more tests are flaky than passed)",
            ));
        }
        Ok(())
    }
}

/// A report ready to apply: valid, its per-test results cut into the
/// chunks they are stored in.
struct Prepared {
    report: ShardReport,
    chunks: Vec<String>,
}

impl Prepared {
    fn of(report: ShardReport) -> Result<Self> {
        report.validate()?;
        let chunks = match &report.results {
            Some(r) if report.status != ReportStatus::Started => {
                results::chunk(&r.tests, results::MAX_CHUNK_BYTES)?
            }
            _ => Vec::new(),
        };
        Ok(Prepared { report, chunks })
    }
}

/// A report as it arrives: ready (JSON names its tests), or a JUnit
/// report whose cases are named once the shard's tests are read.
enum Incoming {
    Ready(Prepared),
    Junit(JunitReport),
}

/// What the runs of `shards` that stored per-test results teach their
/// suite's histories, from those results (`chunks`, any runs' in store
/// order): each test's duration, and the tests that were flaky (passed on
/// an automatic retry, or after their own tool's retries failed first).
/// Skipped tests (no real duration) are left out.
fn learned_runs(
    execution: &Execution,
    shards: &[crate::domain::Shard],
    chunks: &[crate::domain::ResultChunk],
) -> Result<Vec<LearnedRun>> {
    let mut by_run: HashMap<(u32, &str), Vec<&crate::domain::ResultChunk>> = HashMap::new();
    for chunk in chunks {
        by_run
            .entry((chunk.shard_index, chunk.lease_id.as_str()))
            .or_default()
            .push(chunk);
    }
    let mut runs = Vec::new();
    for shard in shards {
        let retry = shard.retry_of.is_some();
        for run in shard.attempts.iter().filter(|a| a.result_chunks > 0) {
            let mut learned = LearnedRun {
                suite: execution.suite.clone(),
                lease: run.lease_id.clone(),
                finished_at: run.finished_at,
                ran: Vec::new(),
                flaky: Vec::new(),
            };
            let own = by_run.remove(&(shard.index, run.lease_id.as_str()));
            for chunk in own.into_iter().flatten() {
                for t in chunk.tests()? {
                    if t.status == TestStatus::Passed && (retry || !t.earlier.is_empty()) {
                        learned.flaky.push(t.name.clone());
                    }
                    if t.status != TestStatus::Skipped && t.duration_ms > 0 {
                        learned.ran.push((t.name, t.duration_ms));
                    }
                }
            }
            if !learned.ran.is_empty() || !learned.flaky.is_empty() {
                runs.push(learned);
            }
        }
    }
    Ok(runs)
}

/// Whether `caller` may report on shard `index` of `id` under `lease`
/// (a runner's hold on the shard is checked against the shard itself).
fn may_report(caller: &Principal, id: &ExecutionId, index: u32, lease: &LeaseId) -> Result<()> {
    match caller {
        Principal::Webhook(exec) if exec == id => Ok(()),
        Principal::Job {
            execution,
            shard,
            lease: own,
        } if execution == id && *shard == index => {
            // Its own lease only: one read elsewhere is not its to use.
            if own == lease {
                Ok(())
            } else {
                Err(Error::Forbidden("report under another job's lease"))
            }
        }
        Principal::Runner(_) | Principal::Admin => Ok(()),
        _ => Err(Error::Forbidden("report for this shard")),
    }
}

/// The claim a report asked for (`?next=true`), as the report's write left it.
enum Asked {
    /// Answered with the report: the next batch, nothing to take now, or
    /// (`None`) the runner may not claim now.
    Answered(Option<super::ClaimOutcome>),
    /// Refused in a race: made again on its own after the report.
    Again,
}

/// An execution as a fold left it, with the shards it read.
struct Folded {
    execution: Execution,
    shards: Vec<crate::domain::Shard>,
    /// This fold finished a dynamic execution and learned its batches.
    learned_whole: bool,
}

/// Executions a report asking `?next=any` looks at for the runner's next
/// batch. The front of the claimable order is the executions being worked
/// on (a few of them out of batches to hand out, their last ones running),
/// then the next ones; a larger page cost a copy of each execution read
/// on every such report (a full page of 100 was 4 % of the server's work
/// with 50 tests per execution).
const ELSEWHERE_PAGE: u32 = 8;

/// Where the next batch a final report on a dynamic batch asks for may
/// come from (`?next=true` or `?next=any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextBatch {
    /// The same execution only (an agent given one execution).
    SameExecution,
    /// The same execution, or else the next one the runner may claim.
    Anywhere,
}

/// A report that finished its shard, as the steps after its write need it.
struct Finished {
    /// The shard, if it failed (its failed tests may be retried).
    failed: Option<crate::domain::Shard>,
    /// The execution was open with tests still to hand out (dynamic
    /// mode): it cannot finish by this completion.
    tests_waiting: bool,
}

impl<P: Ports> Orchestrator<P> {
    /// A shard's current assignment (its lease and tests), for the CI job a
    /// dispatch started: it knows the execution, the shard and the token,
    /// and reads its work here.
    pub async fn shard_assignment(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        index: u32,
    ) -> Result<super::Assignment> {
        match caller {
            Principal::Webhook(exec) if exec == id => {}
            Principal::Job {
                execution, shard, ..
            } if execution == id && *shard == index => {}
            Principal::Admin | Principal::Ci => {}
            _ => return Err(Error::Forbidden("read this shard")),
        }
        let (_, shard) = self.load_shard(id, index).await?;
        if let Principal::Job { lease, .. } = caller {
            // Requeued since the job started: it is to drop the work.
            shard.require_current_lease(lease)?;
        }
        // No current assignment: nothing to work on, as if there were no such shard.
        super::Assignment::of(shard).ok_or_else(|| {
            Error::not_found(crate::Entity::Shard, format!("{id}/{index} assignment"))
        })
    }

    /// Applies a shard's JUnit report, each case named after the test of
    /// the shard's it matches ([`crate::naming`]), from the same read of
    /// the shard that applies it.
    pub async fn report_junit(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        report: JunitReport,
    ) -> Result<ReportOutcome> {
        self.junit_report(caller, id, report, None).await
    }

    /// [`Self::report_junit`] asking for the runner's next batch
    /// (`?next=true`, see [`Self::report_shard_then_claim`]).
    pub async fn report_junit_then_claim(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        report: JunitReport,
        from: NextBatch,
    ) -> Result<ReportOutcome> {
        self.junit_report(caller, id, report, Some(from)).await
    }

    async fn junit_report(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        report: JunitReport,
        next: Option<NextBatch>,
    ) -> Result<ReportOutcome> {
        may_report(caller, id, report.shard_index, &report.lease_id)?;
        let (index, lease) = (report.shard_index, report.lease_id.clone());
        self.apply_report(caller, id, index, lease, Incoming::Junit(report), next)
            .await
    }

    /// Applies a runner's report to its shard. Only the current lease counts;
    /// the same final report twice is acknowledged once.
    pub async fn report_shard(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        report: ShardReport,
    ) -> Result<ReportOutcome> {
        self.json_report(caller, id, report, None).await
    }

    /// [`Self::report_shard`] by the runner of a dynamic batch asking for
    /// its next batch (`?next=true`: of the same execution; `?next=any`:
    /// of another it may claim once that one has none for it): the
    /// answer's `next` carries it, so a batch costs one round trip. A
    /// report that finishes its batch is written together with the claim
    /// of the same execution (one commit on the embedded store); the claim
    /// stands only if the report does. `next` is absent when the caller is
    /// not a runner, the shard is not finished, or the runner may not
    /// claim now (paused, not a dynamic execution): it then claims as usual.
    pub async fn report_shard_then_claim(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        report: ShardReport,
        from: NextBatch,
    ) -> Result<ReportOutcome> {
        self.json_report(caller, id, report, Some(from)).await
    }

    async fn json_report(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        report: ShardReport,
        next: Option<NextBatch>,
    ) -> Result<ReportOutcome> {
        let prepared = Prepared::of(report)?;
        let (index, lease) = (
            prepared.report.shard_index,
            prepared.report.lease_id.clone(),
        );
        may_report(caller, id, index, &lease)?;
        self.apply_report(caller, id, index, lease, Incoming::Ready(prepared), next)
            .await
    }

    async fn apply_report(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        index: u32,
        lease: LeaseId,
        incoming: Incoming,
        from: Option<NextBatch>,
    ) -> Result<ReportOutcome> {
        let next = from.is_some();
        let now = self.clock.now();
        // A JUnit report's cases are named from the shard's tests, known at
        // the first read; the conflict retries reuse it.
        let (ready, junit) = match incoming {
            Incoming::Ready(p) => (std::sync::OnceLock::from(p), None),
            Incoming::Junit(j) => (std::sync::OnceLock::new(), Some(j)),
        };
        let (mut outcome, finished, claim_again) = retry_on_conflict(|| async {
            let (execution, mut shard) = self.load_shard(id, index).await?;
            if let Principal::Runner(runner) = caller {
                // A runner that lost the shard hears that its lease is stale
                // (409, drop the work), not that it may not report (403).
                if shard.lease_id.as_ref() != Some(&lease) {
                    return Err(Error::StaleLease {
                        shard: shard.index,
                        presented: lease.to_string(),
                    });
                }
                if shard.runner_id.as_ref() != Some(runner) {
                    return Err(Error::Forbidden("report on a shard held by another runner"));
                }
            }
            let Prepared { report, chunks } = match (ready.get(), &junit) {
                (Some(ready), _) => ready,
                (None, Some(junit)) => {
                    let named = Prepared::of(junit.for_tests(&shard.tests))?;
                    ready.get_or_init(|| named)
                }
                (None, None) => return Err(Error::Internal("a report with no results".into())),
            };
            let read_as = (shard.version, shard.status);
            let held = shard.holder();
            let applied = match report.status {
                ReportStatus::Started => shard.start(&report.lease_id, now)?,
                done => {
                    let outcome = match done {
                        ReportStatus::Passed => ShardOutcome::Passed,
                        ReportStatus::Failed => ShardOutcome::Failed,
                        _ => ShardOutcome::Errored,
                    };
                    shard.complete(
                        &report.lease_id,
                        outcome,
                        report.results.as_ref().unwrap_or(&ShardResult::default()),
                        chunks.len() as u32,
                        now,
                    )?
                }
            };
            let finished = applied == Applied::Changed && shard.status.is_terminal();
            // Stored with the shard's write, no later: a reader sees the
            // run only once its results are all there.
            let stored: Vec<ResultChunk> = if finished {
                chunks
                    .iter()
                    .enumerate()
                    .map(|(i, body)| ResultChunk {
                        shard_index: shard.index,
                        lease_id: report.lease_id.clone(),
                        chunk: i as u32,
                        body: body.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let overhead_ms = match (&report.results, shard.assigned_at) {
                (Some(r), Some(claimed)) if finished && !r.tests.is_empty() => {
                    let ran: u64 = r.tests.iter().map(|t| t.duration_ms).sum();
                    Some((now.since(claimed).max(0) as u64).saturating_sub(ran))
                }
                _ => None,
            };
            let mut outcome = ReportOutcome {
                shard_index: shard.index,
                shard_status: shard.status,
                duplicate: applied == Applied::Duplicate,
                next: None,
                overhead_ms,
            };
            // What the steps after the write need of a finished shard (the
            // whole shard only to retry its failed tests): the write takes
            // the shard itself, a copy of which was a share of every report.
            let after = finished.then(|| Finished {
                failed: (shard.status == ShardStatus::Failed).then(|| shard.clone()),
                tests_waiting: execution.undispensed() > 0 && !execution.status.is_terminal(),
            });
            // A claim asked for and not made with the report (a repeated
            // report, or one refused in a race) is made on its own after it.
            let mut claim_again = next;
            if applied == Applied::Changed {
                let released = held.filter(|_| finished);
                let update = self.shard_update(&execution, shard, read_as, released);
                match caller {
                    Principal::Runner(runner) if next && finished => {
                        match self
                            .finish_then_claim(runner, execution, update, stored, overhead_ms)
                            .await?
                        {
                            Asked::Answered(answer) => {
                                outcome.next = answer;
                                claim_again = false;
                            }
                            Asked::Again => {}
                        }
                    }
                    _ => self.store.finish_shard(update, stored).await?,
                }
            }
            Ok((outcome, after, claim_again))
        })
        .await?;
        let results = ready.into_inner().and_then(|p| p.report.results);
        let waiting = finished.as_ref().is_some_and(|f| f.tests_waiting);
        let finished = match finished {
            Some(after) => {
                if let Some(results) = &results {
                    if let Some(shard) = &after.failed {
                        // Before the completion is published, so the fold
                        // sees the retry open rather than a failed run.
                        if let Err(e) = self.retry_failed_tests(shard, &results.tests).await {
                            tracing::warn!(error = %e, execution = %id, "failed tests not retried");
                        }
                    }
                }
                true
            }
            None => false,
        };
        // A dynamic execution with tests still to hand out cannot finish
        // by this completion and learns its batches when it finishes, so
        // the aggregator has nothing to do for it: no event.
        if finished && !waiting {
            let event = Event::ShardCompleted {
                execution_id: id.clone(),
                shard_index: outcome.shard_index,
                lease_id: Some(lease.clone()),
                status: outcome.shard_status.as_str().to_owned(),
            };
            // The store already holds the result; a lost event only delays the
            // fold until the timeout sweep re-aggregates open executions.
            if let Err(e) = self.events.publish(event).await {
                tracing::warn!(error = %e, execution = %id, "could not publish ShardCompleted");
            }
        }
        if finished {
            // The shard's slot is free for queued work.
            self.nudges.schedule().await;
        }
        if claim_again {
            outcome.next = self.next_batch_after(caller, id, &outcome).await;
        }
        let none_here = outcome.next.as_ref().is_none_or(|n| n.assignment.is_none());
        let slot_free = outcome.shard_status.is_terminal();
        if from == Some(NextBatch::Anywhere) && slot_free && none_here {
            if let Some(elsewhere) = self.claim_elsewhere(caller, id).await {
                outcome.next = Some(elsewhere);
            }
        }
        Ok(outcome)
    }

    /// Writes the report that finished a runner's batch together with the
    /// runner's claim of its next batch of `execution`, planned in the
    /// claims' turn (see `turns`). The error is the report's.
    async fn finish_then_claim(
        &self,
        runner: &crate::ids::RunnerId,
        execution: Execution,
        update: crate::ports::ShardUpdate,
        stored: Vec<ResultChunk>,
        overhead_ms: Option<u64>,
    ) -> Result<Asked> {
        let turn = self.claim_turns.take(&execution.id).await;
        let base = turn.base(execution);
        let freed = update.release.as_ref().map(|r| r.resources);
        let plan = self.plan_claim(runner, base, overhead_ms, freed).await;
        let Ok(ClaimPlan::Take { write, outcome }) = plan else {
            drop(turn);
            self.store.finish_shard(update, stored).await?;
            return Ok(match plan {
                Ok(ClaimPlan::Nothing(none)) => Asked::Answered(Some(none)),
                // A batch waiting to be claimed again was taken meanwhile.
                Err(e) if e.is_conflict() => Asked::Again,
                // The runner may not claim now (paused, not a dynamic
                // execution): claiming again would say the same.
                _ => Asked::Answered(None),
            });
        };
        let send = |w| self.store.finish_shard_and_claim(update, stored, w);
        let claimed = turn
            .write(*write, send, |answer| matches!(answer, Ok(Ok(()))))
            .await?;
        Ok(match claimed {
            Ok(()) => Asked::Answered(Some(outcome)),
            Err(e) => {
                tracing::debug!(error = %e, "the claim made with a report was refused");
                Asked::Again
            }
        })
    }

    /// The runner's next batch of the same dynamic execution, claimed right
    /// after its report of the last one finished it: the report's answer
    /// carries it, so a batch costs one round trip. The report measured
    /// what a batch costs besides its tests, which sizes the batches of
    /// the execution's tail. `None` when the caller is not a runner, the
    /// shard is not finished, or the runner may not claim now (paused, not
    /// a dynamic execution): it then claims as usual.
    pub async fn next_batch_after(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        report: &ReportOutcome,
    ) -> Option<super::ClaimOutcome> {
        let Principal::Runner(runner) = caller else {
            return None;
        };
        if !report.shard_status.is_terminal() {
            return None;
        }
        match self.claim_measured(runner, id, report.overhead_ms).await {
            Ok(next) => Some(next),
            Err(e) => {
                tracing::debug!(error = %e, execution = %id, "no next batch with the report");
                None
            }
        }
    }

    /// The runner's next batch from another dynamic execution, for a
    /// report asking `?next=any` whose own execution had none for it: the
    /// first execution of its `claimable` listing's first
    /// [`ELSEWHERE_PAGE`] with a batch for it (a runner that ends one
    /// execution starts on the next at once, instead of at its next poll).
    /// `None` when none has: the runner then looks further as usual.
    async fn claim_elsewhere(
        &self,
        caller: &Principal,
        done: &ExecutionId,
    ) -> Option<super::ClaimOutcome> {
        let Principal::Runner(runner) = caller else {
            return None;
        };
        let page = match self.claimable(runner, None, ELSEWHERE_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, runner = %runner, "no claimable listing for ?next=any");
                return None;
            }
        };
        for other in page.items.iter().filter(|e| &e.execution_id != done) {
            match self.claim_batch(runner, &other.execution_id).await {
                Ok(outcome) if outcome.assignment.is_some() => return Some(outcome),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, execution = %other.execution_id, "no batch here")
                }
            }
        }
        None
    }

    /// Runs a failed shard's failed tests again on another runner, if the
    /// execution's retry policy and budget allow (`Execution::plan_retry`).
    async fn retry_failed_tests(
        &self,
        shard: &crate::domain::Shard,
        tests: &[TestResult],
    ) -> Result<()> {
        let mut failed: Vec<String> = tests
            .iter()
            .filter(|t| matches!(t.status, TestStatus::Failed | TestStatus::Errored))
            .map(|t| t.name.clone())
            .collect();
        failed.sort();
        failed.dedup();
        if failed.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let added = retry_on_conflict(|| async {
            let (mut execution, shards) = self.load(&shard.execution_id).await?;
            if shards.iter().any(|s| s.retry_of == Some(shard.index)) {
                return Ok(false);
            }
            let policy = match execution.retries {
                Some(own) => own,
                None => {
                    let rules = self.store.list_rules().await?;
                    crate::domain::rule::select_rule(&rules, &execution)
                        .and_then(|r| r.test_retries)
                        .unwrap_or_default()
                }
            };
            let version = execution.version;
            let Some(retry) = execution.plan_retry(policy, shard, failed.clone(), now) else {
                return Ok(false);
            };
            self.store.add_shard(&execution, version, &retry).await?;
            Ok(true)
        })
        .await?;
        if added {
            self.nudges.schedule().await;
        }
        Ok(())
    }

    /// What one finished run (`lease` of shard `index`) teaches its suite's
    /// histories ([`learned_runs`]). The aggregator learns, not
    /// the report: a report of 20,000 tests would otherwise spend its
    /// request on a thousand timing writes. A completion delivered twice
    /// learns nothing the second time
    /// ([`TestTiming::learns_from`](crate::domain::TestTiming::learns_from)).
    async fn run_to_learn(
        &self,
        execution: &Execution,
        shards: &[crate::domain::Shard],
        index: u32,
        lease: &LeaseId,
    ) -> Result<Option<LearnedRun>> {
        let Some(shard) = shards.iter().find(|s| s.index == index) else {
            return Ok(None);
        };
        if !shard
            .attempts
            .iter()
            .any(|a| &a.lease_id == lease && a.result_chunks > 0)
        {
            return Ok(None);
        }
        let chunks = self
            .store
            .results(&execution.id, Some((index, lease)))
            .await?;
        Ok(
            learned_runs(execution, std::slice::from_ref(shard), &chunks)?
                .into_iter()
                .next(),
        )
    }

    /// What every batch of a dynamic execution teaches, from one read of
    /// all its results. A dynamic execution hands out its tests a few at a
    /// time, so learning each batch as it finished cost a read of its
    /// results and a write of its tests' histories per batch (a fifth of
    /// the server's work with one test a batch); it is learned once, as a
    /// whole, when it finishes.
    async fn batches_to_learn(
        &self,
        execution: &Execution,
        shards: &[crate::domain::Shard],
    ) -> Result<Vec<LearnedRun>> {
        if !shards
            .iter()
            .any(|s| s.attempts.iter().any(|a| a.result_chunks > 0))
        {
            return Ok(Vec::new());
        }
        let chunks = self.store.results(&execution.id, None).await?;
        learned_runs(execution, shards, &chunks)
    }

    /// Learns a dynamic execution's batches once it has finished (see
    /// [`Self::batches_to_learn`]); a static execution's shards are
    /// learned as each completes.
    pub(crate) async fn learn_finished(
        &self,
        execution: &Execution,
        shards: &[crate::domain::Shard],
    ) {
        if execution.mode != crate::domain::Mode::Dynamic || !execution.status.is_terminal() {
            return;
        }
        match self.batches_to_learn(execution, shards).await {
            Ok(runs) => self.learn(runs).await,
            Err(e) => {
                tracing::warn!(error = %e, execution = %execution.id, "test durations not read")
            }
        }
    }

    /// Learns the runs of a batch of completions together (each suite's
    /// histories read and written once). Timings are statistics: a failure
    /// is logged, and the folds stand.
    async fn learn(&self, runs: Vec<LearnedRun>) {
        if runs.is_empty() {
            return;
        }
        if let Err(e) = self.learn_runs(runs).await {
            tracing::warn!(error = %e, "test durations not recorded");
        }
    }

    /// The aggregator: folds the shards into the execution's totals and final
    /// status. Idempotent — it derives from the shards every time.
    pub async fn aggregate(&self, id: &ExecutionId) -> Result<Execution> {
        self.fold(id).await.map(|f| f.execution)
    }

    /// [`Self::aggregate`], answering the shards it folded too. The fold
    /// that finishes a dynamic execution learns its batches.
    async fn fold(&self, id: &ExecutionId) -> Result<Folded> {
        let folded = retry_on_conflict(|| async {
            let (mut execution, shards) = self.load(id).await?;
            let version = execution.version;
            let was_open = !execution.status.is_terminal();
            if execution.aggregate(&shards, self.clock.now()) {
                self.write_execution(&mut execution, version).await?;
            }
            let learned_whole = was_open
                && execution.status.is_terminal()
                && execution.mode == crate::domain::Mode::Dynamic;
            Ok(Folded {
                execution,
                shards,
                learned_whole,
            })
        })
        .await?;
        if folded.learned_whole {
            self.learn_finished(&folded.execution, &folded.shards).await;
        }
        Ok(folded)
    }

    /// Folds an execution an operator or the clock has just finished
    /// (cancelled, timed out, or its last batch given up) and learns what
    /// its dynamic batches ran.
    pub(crate) async fn fold_finished(&self, id: &ExecutionId) -> Result<Execution> {
        let folded = self.fold(id).await?;
        if !folded.learned_whole {
            self.learn_finished(&folded.execution, &folded.shards).await;
        }
        Ok(folded.execution)
    }

    /// Handles a batch of events (an SQS batch on AWS, a channel drain
    /// locally). Events about the same execution are folded once, since the
    /// fold reads the shards anyway. A static shard's completion learns its
    /// run's timings from those shards; a dynamic execution is learned whole
    /// by the fold that finishes it. Results line up with `events`.
    pub async fn handle_events(&self, events: &[Event]) -> Vec<Result<()>> {
        let mut folded: Vec<(ExecutionId, Option<Folded>)> = Vec::new();
        let mut results = Vec::with_capacity(events.len());
        let mut runs = Vec::new();
        for event in events {
            let Event::ShardCompleted {
                execution_id,
                shard_index,
                lease_id,
                ..
            } = event;
            let known = folded.iter().position(|(id, _)| id == execution_id);
            let at = match known {
                Some(at) => at,
                None => {
                    let outcome = match self.fold(execution_id).await {
                        Ok(done) => Some(done),
                        Err(e) => {
                            tracing::error!(error = %e, execution = %execution_id, "aggregation failed");
                            None
                        }
                    };
                    folded.push((execution_id.clone(), outcome));
                    folded.len() - 1
                }
            };
            results.push(match &folded[at].1 {
                Some(Folded {
                    execution,
                    shards,
                    learned_whole,
                }) => {
                    // A dynamic execution is learned whole by the fold that
                    // finishes it; a batch reported after that (late, to a
                    // cancelled or timed-out execution) on its own.
                    let own_run = execution.mode != crate::domain::Mode::Dynamic
                        || (execution.status.is_terminal() && !learned_whole);
                    if let (true, Some(lease)) = (own_run, lease_id) {
                        match self
                            .run_to_learn(execution, shards, *shard_index, lease)
                            .await
                        {
                            Ok(run) => runs.extend(run),
                            Err(e) => tracing::warn!(error = %e, execution = %execution_id,
                                "test durations not read"),
                        }
                    }
                    Ok(())
                }
                None => Err(Error::Internal(format!(
                    "aggregation of {execution_id} failed"
                ))),
            });
        }
        self.learn(runs).await;
        results
    }

    /// Handles one event from the bus (the aggregator function's body).
    pub async fn handle_event(&self, event: &Event) -> Result<()> {
        self.handle_events(std::slice::from_ref(event))
            .await
            .into_iter()
            .next()
            .unwrap_or(Ok(()))
    }
}
