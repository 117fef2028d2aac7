//! The scheduling pass: read the queue and the runners, plan in memory, then
//! apply each assignment as one atomic conditional step.

use super::Orchestrator;
use crate::domain::Allocation;
use crate::error::Result;
use crate::ids::LeaseId;
use crate::ports::{AssignmentWrite, DispatchOrder, Nudges, Ports, Store};
use crate::scheduling::{plan, FreeCapacity, SchedulingPass};
use crate::time::Clock;

impl<P: Ports> Orchestrator<P> {
    /// Assigns what can be assigned now; returns how many shards were assigned.
    /// Safe to run concurrently with itself: a lost race is skipped and left
    /// for the next pass.
    pub async fn schedule_pass(&self) -> Result<usize> {
        let runners = self.store.schedulable_runners().await?;
        let rules = self.store.list_rules().await?;
        // The store reads only work some free runner can take, and no more
        // of it than the free runners can hold: a pass is bounded by free
        // capacity, and unrunnable work ahead in the queue blocks nothing.
        let free = FreeCapacity::new(&runners, &rules);
        if free.is_exhausted() {
            return Ok(0);
        }
        let mut pending = self
            .store
            .pending_executions(&free, self.config.sweep_batch)
            .await?;
        // CI jobs and runners claim the shards of by_index and dynamic
        // executions themselves (the stores keep them out of the pending
        // index; this makes sure).
        pending.retain(|(e, _)| e.mode.is_static());
        if pending.is_empty() {
            return Ok(0);
        }
        let cursors = self.store.round_robin_cursors().await?;
        let now = self.clock.now();
        let planned = plan(&SchedulingPass {
            pending: &pending,
            runners: &runners,
            rules: &rules,
            cursors: &cursors,
            default_strategy: self.config.default_strategy,
            now,
            aging_step_ms: self.config.aging_step_ms,
        });
        let mut writes = Vec::with_capacity(planned.len());
        for p in planned {
            let Some((execution, shards)) = pending.iter().find(|(e, _)| e.id == p.execution_id)
            else {
                continue;
            };
            let Some(mut shard) = shards.iter().find(|s| s.index == p.shard_index).cloned() else {
                continue;
            };
            let lease = LeaseId::generate();
            let deadline = now.plus_secs(execution.shard_timeout_seconds);
            shard.assign(p.runner_id.clone(), lease.clone(), now, deadline)?;
            let Some(runner) = runners.iter().find(|r| r.runner.id == p.runner_id) else {
                continue;
            };
            // What to tell a push-mode runner's CI platform (it starts the job).
            let push = runner.runner.dispatch.is_some().then(|| DispatchOrder {
                execution_id: p.execution_id.clone(),
                shard_index: p.shard_index,
                lease_id: lease.clone(),
            });
            let write = AssignmentWrite {
                runner_capacity: runner.runner.capacity,
                shard,
                expected_shard_version: p.shard_version,
                allocation: Allocation {
                    runner_id: p.runner_id,
                    execution_id: p.execution_id,
                    shard_index: p.shard_index,
                    lease_id: lease,
                    resources: p.resources,
                    allocated_at: now,
                },
                cursor: p.cursor,
                now,
            };
            writes.push((write, push));
        }
        // Each assignment is its own atomic, conditional step; issuing them
        // together lets the store commit them as a group.
        let results = futures::future::join_all(
            writes
                .into_iter()
                .map(|(write, push)| async { (self.store.assign(write).await, push) }),
        )
        .await;
        let mut assigned = 0;
        for (result, push) in results {
            match result {
                Ok(()) => {
                    assigned += 1;
                    if let Some(order) = push {
                        self.nudges.dispatch(order).await;
                    }
                }
                Err(e) if e.is_conflict() => {
                    tracing::debug!(error = %e, "assignment lost a race; next pass retries")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(assigned)
    }
}
