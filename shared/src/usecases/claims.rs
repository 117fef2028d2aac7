//! Claims: work that is taken rather than assigned.
//!
//! - CI-native parallelism (execution mode `by_index`): each parallel job of
//!   a CI build claims the shard of its own index. A retried job claims the
//!   same index again and gets the same tests under a new lease; the earlier
//!   lease is fenced off, and the new run's results supersede the old ones.
//! - Dynamic mode: registered runners claim batches until the tests run out
//!   (Knapsack's queue mode, sorry-cypress), each claim a lease that
//!   heartbeats extend and the timeout sweep reclaims.

use super::{retry_on_conflict, Assignment, Orchestrator};
use crate::auth::Principal;
use crate::domain::{Allocation, Mode, ShardStatus};
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, LeaseId, RunnerId};
use crate::ports::{AssignmentWrite, Ports, Store};
use crate::scheduling::{claim_order, may_claim, may_join};
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
    /// The batch to run now, or none: nothing is left to claim.
    pub assignment: Option<Assignment>,
    /// Batches waiting to be claimed after this one.
    pub queued_batches: u32,
    /// Batches other runners hold now. A runner that got nothing while some
    /// are held may claim again later: a lost one comes back to the queue.
    pub held_batches: u32,
    /// True when the execution is finished: stop claiming.
    pub finished: bool,
}

/// What one read's claims came to.
enum Claimed {
    /// A batch, or none left to claim: the answer.
    Done(ClaimOutcome),
    /// Others took what this read saw (or the runner or execution changed
    /// under it): worth reading again.
    Raced(ClaimOutcome),
}

/// A dynamic execution a runner may claim batches of.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Claimable {
    #[schema(value_type = String)]
    pub execution_id: ExecutionId,
    pub suite: String,
    pub priority: i32,
}

impl<P: Ports> Orchestrator<P> {
    /// The unfinished dynamic executions whose labels, type and size the
    /// runner fits, highest priority first, then oldest: where an agent
    /// with a free slot goes claiming. A runner that is not active gets
    /// none. Looks at the `sweep_batch` unfinished executions nearest their
    /// deadline, as the timeout sweep does.
    pub async fn claimable(&self, runner_id: &RunnerId) -> Result<Vec<Claimable>> {
        let runner = self
            .store
            .get_runner(runner_id)
            .await?
            .ok_or_else(|| Error::not_found(crate::Entity::Runner, runner_id))?;
        if runner.runner.status != crate::domain::RunnerStatus::Active {
            return Ok(Vec::new());
        }
        let mut found: Vec<_> = self
            .store
            .active_executions(self.config.sweep_batch)
            .await?
            .into_iter()
            .filter(|e| e.mode == Mode::Dynamic && !e.status.is_terminal())
            .filter(|e| may_join(&runner, e))
            .collect();
        found.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.created_at.cmp(&b.created_at))
        });
        Ok(found
            .into_iter()
            .map(|e| Claimable {
                execution_id: e.id,
                suite: e.suite,
                priority: e.priority,
            })
            .collect())
    }

    /// A runner claims the next batch of a dynamic execution: the first in
    /// claim order (longest tests first, batches shrinking) that did not
    /// slip from this runner before. The claim is a lease like any
    /// assignment, taken in one conditional step with the runner's capacity;
    /// heartbeats extend it, and when it lapses the timeout sweep hands the
    /// batch to the queue again.
    ///
    /// Claimers race for the same next batch. One that loses it (the batch
    /// changed since it was read) takes the next one read, without reading
    /// again; when every batch it read went to others, it reads again. Each
    /// lost race is another claimer's win, so this ends: with a batch, or
    /// with none left to claim. A lost race is never the answer.
    pub async fn claim_batch(
        &self,
        runner_id: &RunnerId,
        id: &ExecutionId,
    ) -> Result<ClaimOutcome> {
        // A read is repeated only when others took every batch it saw, or
        // the runner's load or the execution changed under the claim;
        // bounded all the same.
        const MAX_READS: u32 = 64;
        for _ in 1..MAX_READS {
            if let Claimed::Done(outcome) = self.claim_from_one_read(runner_id, id).await? {
                return Ok(outcome);
            }
        }
        // Still racing at the last read: nothing claimed this time, and
        // the counts say batches remain.
        match self.claim_from_one_read(runner_id, id).await? {
            Claimed::Done(outcome) | Claimed::Raced(outcome) => Ok(outcome),
        }
    }

    /// One read of the execution, and a claim of each batch it shows in
    /// claim order until one is taken.
    async fn claim_from_one_read(&self, runner_id: &RunnerId, id: &ExecutionId) -> Result<Claimed> {
        let now = self.clock.now();
        let (execution, shards) = self.load(id).await?;
        if execution.mode != Mode::Dynamic {
            return Err(Error::validation(
                "mode",
                "only a dynamic execution's batches are claimed by runners",
            ));
        }
        let count = |f: &dyn Fn(&crate::domain::Shard) -> bool| {
            shards.iter().filter(|s| f(s)).count() as u32
        };
        let queued = count(&|s| s.status == ShardStatus::Queued);
        let held = count(&|s| s.status.is_in_flight());
        let nothing = |finished| ClaimOutcome {
            assignment: None,
            queued_batches: queued,
            held_batches: held,
            finished,
        };
        if execution.status.is_terminal() {
            return Ok(Claimed::Done(nothing(true)));
        }
        let batches = claim_order(&shards, runner_id);
        if batches.is_empty() {
            return Ok(Claimed::Done(nothing(false)));
        }
        let runner = self
            .store
            .get_runner(runner_id)
            .await?
            .ok_or_else(|| Error::not_found(crate::Entity::Runner, runner_id))?;
        may_claim(&runner, &execution).map_err(|why| Error::validation("runner", why))?;
        let cap = now.plus_secs(execution.shard_timeout_seconds);
        let deadline = now.plus_ms(self.config.silence_limit_ms()).min(cap);
        for (taken, batch) in batches.into_iter().enumerate() {
            let lease = LeaseId::generate();
            let mut shard = batch.clone();
            let version = shard.version;
            shard.assign(runner_id.clone(), lease.clone(), now, deadline)?;
            shard.max_deadline = Some(cap);
            let write = AssignmentWrite {
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
                expected_shard_version: version,
                cursor: None,
                now,
            };
            let assignment = Assignment::of(write.shard.clone());
            match self.store.assign(write).await {
                Ok(()) => {
                    return Ok(Claimed::Done(ClaimOutcome {
                        assignment,
                        // The batches lost to others are gone too.
                        queued_batches: queued.saturating_sub(taken as u32 + 1),
                        held_batches: held + taken as u32,
                        finished: false,
                    }));
                }
                // Another claimer took it: the next one.
                Err(Error::Conflict {
                    entity: crate::Entity::Shard,
                    ..
                }) => continue,
                // The runner's load or the execution changed: read again.
                Err(e) if e.is_conflict() => return Ok(Claimed::Raced(nothing(false))),
                Err(e) => return Err(e),
            }
        }
        Ok(Claimed::Raced(nothing(false)))
    }

    /// Extends the leases of the dynamic batches a heartbeating runner
    /// holds, up to each batch's cap. Written only when the lease has run
    /// half its length, so a runner polling often costs no extra writes.
    /// A lost race (the batch was reported or taken back meanwhile) is fine.
    pub(crate) async fn extend_leases(&self, shards: &mut [crate::domain::Shard]) {
        let now = self.clock.now();
        let length = self.config.silence_limit_ms();
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
