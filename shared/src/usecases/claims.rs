//! Claims: work that is taken rather than assigned.
//!
//! - CI-native parallelism (execution mode `by_index`): each parallel job of
//!   a CI build claims the shard of its own index. A retried job claims the
//!   same index again and gets the same tests under a new lease; the earlier
//!   lease is fenced off, and the new run's results supersede the old ones.
//! - Dynamic mode: registered runners claim batches until the tests run out
//!   (Knapsack's queue mode, sorry-cypress), each claim a lease that
//!   heartbeats extend and the timeout sweep reclaims.

/// Most claimable executions on one page.
pub const MAX_CLAIMABLE_PAGE: u32 = 100;

/// Tests of a dynamic execution waiting to be claimed: not handed out yet,
/// or in a batch waiting to be claimed again (counted as one test each when
/// only the batch is known).
fn waiting_tests(e: &crate::domain::Execution) -> u32 {
    let fresh = e
        .dispenser
        .as_ref()
        .map_or(0, |d| d.undispensed(e.test_count));
    fresh + e.returned.len() as u32
}

use super::{retry_on_conflict, Assignment, Orchestrator};
use crate::auth::Principal;
use crate::domain::{Allocation, Mode, Shard, ShardStatus};
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, LeaseId, RunnerId};
use crate::ports::{ClaimWrite, Ports, Store};
use crate::scheduling::dynamic::{batch_len, batch_target, busy_until};
use crate::scheduling::{may_claim, may_join};
use crate::time::Clock;
use serde::Serialize;
use utoipa::ToSchema;

impl<P: Ports> Orchestrator<P> {
    /// Claims shard `index` of a `by_index` execution for the calling CI
    /// job (authenticated with the execution's webhook token, or an API
    /// token). The answer carries the lease to report with.
    pub async fn claim_shard(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        index: u32,
    ) -> Result<Assignment> {
        match caller {
            Principal::Webhook(exec) if exec == id => {}
            Principal::Admin | Principal::Ci => {}
            _ => return Err(Error::Forbidden("claim this execution's shards")),
        }
        let now = self.clock.now();
        retry_on_conflict(|| async {
            let (mut execution, mut shard) = self.load_shard(id, index).await?;
            if execution.mode != Mode::ByIndex {
                return Err(Error::validation(
                    "mode",
                    "this execution's shards are assigned to runners; only a by_index \
                     execution's shards are claimed by CI jobs",
                ));
            }
            let read_as = (shard.version, shard.status);
            let deadline = now.plus_secs(execution.shard_timeout_seconds);
            shard.claim_by_index(LeaseId::generate(), now, deadline)?;
            // The execution first: if the shard's write then loses a race,
            // the retry finds the execution already running. A crash between
            // the two leaves a running execution of finished shards, which
            // the timeout sweep's re-aggregation finishes again.
            let version = execution.version;
            let mut changed = execution.reopen_for_claim(now)?;
            changed |= execution.mark_running(now)?;
            if changed {
                self.write_execution(&mut execution, version).await?;
            }
            self.save_shard(&execution, shard.clone(), read_as, None)
                .await?;
            Assignment::of(shard)
                .ok_or_else(|| Error::Internal("a claimed shard has no lease".into()))
        })
        .await
    }
}

/// The answer to a runner's claim on a dynamic execution.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ClaimOutcome {
    /// The batch to run now, or none: nothing is left to claim now.
    pub assignment: Option<Assignment>,
    /// Tests waiting to be claimed after this batch: those not handed out
    /// yet and those of batches waiting to be claimed again. A runner that
    /// got nothing while batches are held elsewhere may claim again later:
    /// a lost one comes back.
    pub queued_tests: u32,
    /// True when the execution is finished: stop claiming.
    pub finished: bool,
}

/// What a claim comes to, decided from one read of the execution.
pub(crate) enum ClaimPlan {
    /// Nothing to take now (the answer says why: finished, or all handed out).
    Nothing(ClaimOutcome),
    /// The write that takes the next batch, and the answer once it stands.
    Take {
        write: Box<ClaimWrite>,
        outcome: ClaimOutcome,
    },
}

/// A dynamic execution a runner may claim batches of.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Claimable {
    #[schema(value_type = String)]
    pub execution_id: ExecutionId,
    pub suite: String,
    pub priority: i32,
}

/// One page of [`Claimable`] executions.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ClaimablePage {
    pub items: Vec<Claimable>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Tests read at a time when a batch is cut: a batch that needs more reads
/// again from where the last read ended.
const TESTS_PER_READ: u32 = 256;

impl<P: Ports> Orchestrator<P> {
    /// The unfinished dynamic executions whose labels, type and size the
    /// runner fits, highest priority first, then oldest: where an agent
    /// with a free slot goes claiming. A runner that is not active gets
    /// none. Paged: `cursor` is a previous page's `next_cursor`; a page
    /// holds at most `limit` executions and may hold fewer (even none)
    /// while a next cursor remains, since the executions the runner does
    /// not fit are read and passed over.
    pub async fn claimable(
        &self,
        runner_id: &RunnerId,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<ClaimablePage> {
        let runner = self
            .store
            .get_runner(runner_id)
            .await?
            .ok_or_else(|| Error::not_found(crate::Entity::Runner, runner_id))?;
        if cursor.is_some_and(|c| crate::ports::cursors::parse_by_priority(c).is_none()) {
            return Err(Error::validation("cursor", "not a cursor of this listing"));
        }
        if runner.runner.status != crate::domain::RunnerStatus::Active {
            return Ok(ClaimablePage {
                items: Vec::new(),
                next_cursor: None,
            });
        }
        let page = self
            .store
            .dynamic_executions(cursor, limit.clamp(1, MAX_CLAIMABLE_PAGE))
            .await?;
        Ok(ClaimablePage {
            items: page
                .items
                .into_iter()
                .filter(|e| e.mode == Mode::Dynamic && !e.status.is_terminal())
                .filter(|e| may_join(&runner, e))
                .map(|e| Claimable {
                    execution_id: e.id,
                    suite: e.suite,
                    priority: e.priority,
                })
                .collect(),
            next_cursor: page.next_cursor,
        })
    }

    /// A runner claims the next batch of a dynamic execution. A batch lost
    /// by its runner (or an automatic retry of failed tests) goes out again
    /// first, to a runner that did not lose it when one can take it;
    /// otherwise the batch is cut now from the tests not yet handed out,
    /// sized from the work left and the other runners' expected free times
    /// ([`crate::scheduling::dynamic`]). The claim is a lease like any
    /// assignment, taken in one conditional step with the runner's
    /// capacity and the execution's record; heartbeats extend it, and when
    /// it lapses the timeout sweep hands the batch to the queue again.
    ///
    /// What a claim reads does not grow with the execution: its record, the
    /// runner and the tests the batch is cut from. Claimers that race all
    /// change the execution's record, so one wins and the others read again
    /// and cut the next batch; each lost race is another claimer's win, so
    /// this ends, and a lost race is never the answer.
    pub async fn claim_batch(
        &self,
        runner_id: &RunnerId,
        id: &ExecutionId,
    ) -> Result<ClaimOutcome> {
        self.claim_measured(runner_id, id, None).await
    }

    /// [`Self::claim_batch`], learning from `overhead_ms` what a batch of
    /// the execution costs besides its tests (measured by the report of
    /// the runner's last batch).
    pub(crate) async fn claim_measured(
        &self,
        runner_id: &RunnerId,
        id: &ExecutionId,
        overhead_ms: Option<u64>,
    ) -> Result<ClaimOutcome> {
        // Bounded all the same; past it the answer is "nothing this time".
        const MAX_TRIES: u32 = 64;
        let mut last = None;
        for _ in 0..MAX_TRIES {
            match self.try_claim(runner_id, id, overhead_ms).await {
                Err(e) if e.is_conflict() => last = Some(e),
                other => return other,
            }
        }
        tracing::warn!(error = ?last, execution = %id, "a claim kept losing races");
        let execution = self
            .store
            .get_execution(id)
            .await?
            .ok_or_else(|| Error::not_found(crate::Entity::Execution, id))?;
        Ok(ClaimOutcome {
            assignment: None,
            queued_tests: waiting_tests(&execution),
            finished: execution.status.is_terminal(),
        })
    }

    /// One read of the execution and one conditional claim.
    async fn try_claim(
        &self,
        runner_id: &RunnerId,
        id: &ExecutionId,
        overhead_ms: Option<u64>,
    ) -> Result<ClaimOutcome> {
        let turn = self.claim_turns.take(id).await;
        let read = self
            .store
            .get_execution(id)
            .await?
            .ok_or_else(|| Error::not_found(crate::Entity::Execution, id))?;
        match self
            .plan_claim(runner_id, turn.base(read), overhead_ms, None)
            .await?
        {
            ClaimPlan::Nothing(outcome) => Ok(outcome),
            ClaimPlan::Take { write, outcome } => {
                turn.write(*write, |w| self.store.claim(w), Result::is_ok)
                    .await?;
                Ok(outcome)
            }
        }
    }

    /// What a claim of the runner's on `execution` (as read) comes to:
    /// nothing to take now, or the conditional write that takes the next
    /// batch, which fails as a conflict if the execution changed since.
    /// `releasing`: what the write before the claim gives back of the
    /// runner's (the batch a report finishes), counted as free.
    pub(crate) async fn plan_claim(
        &self,
        runner_id: &RunnerId,
        mut execution: crate::domain::Execution,
        overhead_ms: Option<u64>,
        releasing: Option<crate::domain::Resources>,
    ) -> Result<ClaimPlan> {
        let now = self.clock.now();
        let id = execution.id.clone();
        let id = &id;
        if execution.mode != Mode::Dynamic {
            return Err(Error::validation(
                "mode",
                "only a dynamic execution's batches are claimed by runners",
            ));
        }
        let nothing = |e: &crate::domain::Execution| ClaimOutcome {
            assignment: None,
            queued_tests: waiting_tests(e),
            finished: e.status.is_terminal(),
        };
        // Queued before batches were cut at claim time: all its batches
        // were cut then, and are found among its shards.
        let legacy = execution.dispenser.is_none();
        if legacy && execution.returned.is_empty() && !execution.status.is_terminal() {
            let (_, shards) = self.load(id).await?;
            execution.returned = shards
                .iter()
                .filter(|s| s.status == ShardStatus::Queued)
                .map(|s| s.index)
                .collect();
        }
        let mut dispenser = execution
            .dispenser
            .clone()
            .unwrap_or(crate::domain::Dispenser {
                next: execution.test_count,
                runners: 1,
                hinted: true,
                ..Default::default()
            });
        if let Some(sample) = overhead_ms {
            dispenser.observe_overhead(sample);
        }
        let fresh = dispenser.undispensed(execution.test_count);
        if execution.status.is_terminal() || (fresh == 0 && execution.returned.is_empty()) {
            return Ok(ClaimPlan::Nothing(nothing(&execution)));
        }
        let mut runner = self
            .store
            .get_runner(runner_id)
            .await?
            .ok_or_else(|| Error::not_found(crate::Entity::Runner, runner_id))?;
        if let Some(freed) = releasing {
            runner.allocated = runner.allocated.minus(&freed);
        }
        may_claim(&runner, &execution).map_err(|why| Error::validation("runner", why))?;
        // The lease lasts as long as the runner may be silent: its
        // heartbeats extend it, and silence lets it lapse.
        let cap = now.plus_secs(execution.shard_timeout_seconds);
        let deadline = now.plus_ms(runner.runner.silence_limit_ms()).min(cap);
        let lease = LeaseId::generate();
        let (mut shard, expected_shard_version) = match self
            .returned_batch(&execution, runner_id, fresh > 0)
            .await?
        {
            Some(back) => {
                let version = back.version;
                let until = busy_until(now, back.estimated_ms.unwrap_or(0), dispenser.hinted);
                dispenser.expect(runner_id, until);
                (back, Some(version))
            }
            None => {
                let target = batch_target(
                    &dispenser,
                    runner_id,
                    now,
                    self.config.dynamic_batch_overhead_ms,
                    self.config.silence_limit_ms(),
                );
                let (tests, weight) = self.cut(id, fresh, target, &dispenser).await?;
                let until = busy_until(now, weight, dispenser.hinted);
                dispenser.hand_out(tests.len() as u32, weight, runner_id, until);
                let mut batch = Shard::new(
                    id.clone(),
                    &execution.suite,
                    execution.shard_count,
                    tests,
                    dispenser.hinted.then_some(weight),
                );
                batch.mode = Mode::Dynamic;
                (batch, None)
            }
        };
        shard.claim(runner_id.clone(), lease.clone(), now, deadline)?;
        shard.max_deadline = Some(cap);
        let expected_execution_version = execution.version;
        execution.record_claim(
            (!legacy).then_some(dispenser),
            expected_shard_version.is_none(),
            now,
        )?;
        let write = ClaimWrite {
            runner_capacity: runner.runner.capacity,
            allocation: Allocation {
                runner_id: runner_id.clone(),
                execution_id: id.clone(),
                shard_index: shard.index,
                lease_id: lease,
                resources: execution.requirements.per_shard(),
                allocated_at: now,
            },
            shard,
            expected_shard_version,
            expected_execution_version,
            execution,
            now,
        };
        let assignment = Assignment::of(write.shard.clone());
        // The batch taken back out is no longer waiting.
        let queued_tests =
            waiting_tests(&write.execution) - u32::from(write.expected_shard_version.is_some());
        Ok(ClaimPlan::Take {
            write: Box::new(write),
            outcome: ClaimOutcome {
                assignment,
                queued_tests,
                finished: false,
            },
        })
    }

    /// The batch waiting to be claimed again that this claim takes: the
    /// first one this runner did not lose, or, when no fresh tests are
    /// left, the first one at all (avoiding a runner is a preference,
    /// better than leaving a batch).
    async fn returned_batch(
        &self,
        execution: &crate::domain::Execution,
        runner: &RunnerId,
        fresh_left: bool,
    ) -> Result<Option<Shard>> {
        let mut first = None;
        for &index in &execution.returned {
            let (_, shard) = self.load_shard(&execution.id, index).await?;
            if shard.status != ShardStatus::Queued {
                // Claimed meanwhile: the claim's condition would fail.
                return Err(Error::conflict(
                    crate::Entity::Shard,
                    format!("{}#{index}", execution.id),
                ));
            }
            if !shard.avoid_runners.contains(runner) {
                return Ok(Some(shard));
            }
            first.get_or_insert(shard);
        }
        Ok(if fresh_left { None } else { first })
    }

    /// The tests of the next batch, cut from position `from` (`fresh`
    /// tests are left from there) up to `target` ms of expected work, and
    /// their weight. Reads only as far as the batch may reach.
    async fn cut(
        &self,
        id: &ExecutionId,
        fresh: u32,
        target: u64,
        dispenser: &crate::domain::Dispenser,
    ) -> Result<(Vec<String>, u64)> {
        let cap = dispenser.max_batch_tests.map_or(u32::MAX, |m| m.max(1));
        // As many as the target needs at the average weight of what is
        // left, twice over: the tests left are in longest-first order, so
        // the next ones weigh at least the average. A tail's single test
        // reads one, and a read is seldom repeated.
        let average = (dispenser.left_ms / u64::from(fresh.max(1))).max(1);
        let needed = (2 * target)
            .div_ceil(average)
            .clamp(1, u64::from(TESTS_PER_READ)) as u32;
        let mut ask = needed.min(cap);
        let mut read: Vec<crate::domain::TestSpec> = Vec::new();
        let mut weight = 0u64;
        loop {
            let at = dispenser.next + read.len() as u32;
            let page = self.store.queued_tests(id, at, ask).await?;
            let end = (page.len() as u32) < ask;
            weight += page
                .iter()
                .map(|t| t.duration_hint_ms.unwrap_or(1))
                .sum::<u64>();
            read.extend(page);
            if end || weight >= target || read.len() as u32 >= cap {
                break;
            }
            ask = TESTS_PER_READ.min(cap - read.len() as u32);
        }
        let (count, weight) = batch_len(&read, target, dispenser.max_batch_tests);
        read.truncate(count);
        Ok((read.into_iter().map(|t| t.name).collect(), weight))
    }

    /// Extends the leases of the dynamic batches a heartbeating runner
    /// holds, up to each batch's cap. Written only when the lease has run
    /// half its length, so a runner polling often costs no extra writes.
    /// A lost race (the batch was reported or taken back meanwhile) is fine.
    pub(crate) async fn extend_leases(
        &self,
        runner: &crate::domain::Runner,
        shards: &mut [crate::domain::Shard],
    ) {
        let now = self.clock.now();
        let length = runner.silence_limit_ms();
        for shard in shards.iter_mut() {
            let (Some(deadline), Some(cap)) = (shard.deadline, shard.max_deadline) else {
                continue;
            };
            if shard.mode != Mode::Dynamic
                || !shard.status.is_in_flight()
                || deadline.since(now) > length / 2
            {
                continue;
            }
            let extended = now.plus_ms(length).min(cap);
            if extended <= deadline {
                continue;
            }
            let mut next = shard.clone();
            let read_as = (next.version, next.status);
            next.deadline = Some(extended);
            next.version += 1;
            let update = crate::ports::ShardUpdate {
                shard: next.clone(),
                expected_version: read_as.0,
                expected_status: read_as.1,
                release: None,
            };
            match self.store.update_shard(update).await {
                Ok(()) => *shard = next,
                Err(e) if e.is_conflict() => {}
                Err(e) => tracing::warn!(error = %e, "lease not extended"),
            }
        }
    }
}
