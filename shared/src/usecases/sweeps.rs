//! The sweeps: scheduled passes that find every piece of pending work in the
//! store, so that a lost nudge or event never loses work.

use super::{retry_on_conflict, Orchestrator};
use crate::domain::{Rollup, RunnerStatus};
use crate::error::Result;
use crate::ids::{ExecutionId, LeaseId};
use crate::ports::{Nudges, Ports, Store};
use crate::time::Clock;
use serde::Serialize;
use utoipa::ToSchema;

/// The setting that keeps where the timeout sweep's re-fold goes on.
const REFOLD_CURSOR: &str = "timeout_sweep.refold_cursor";

/// What taking a shard back from its runner did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakenBack {
    /// Queued again for another runner.
    Requeued,
    /// Out of attempts (or its execution ended): errored.
    GaveUp,
    /// The lease was no longer current; nothing changed.
    NotHeld,
}

/// What one sweep did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct SweepReport {
    pub shards_assigned: u32,
    pub runners_marked_unhealthy: u32,
    /// Runners removed after `runner_retention_secs` of silence.
    #[serde(default)]
    pub runners_removed: u32,
    pub shards_requeued: u32,
    pub shards_failed: u32,
    pub executions_timed_out: u32,
    pub executions_aggregated: u32,
    /// Alerts that fired or resolved.
    pub alerts_changed: u32,
}

impl<P: Ports> Orchestrator<P> {
    /// Scheduling passes until one assigns nothing: what a nudge triggers,
    /// and on a timer the backstop for nudges that were lost.
    pub async fn schedule_sweep(&self) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        loop {
            match self.schedule_pass().await? {
                0 => return Ok(report),
                n => {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    report.shards_assigned = report.shards_assigned.saturating_add(n);
                }
            }
        }
    }

    /// Runners silent past their own limit (missed heartbeats of their own
    /// interval) become unhealthy and their shards go to other runners;
    /// runners unhealthy for `runner_retention_secs` are removed
    /// (deregistered: their history stays); then the alert rules are
    /// evaluated.
    pub async fn health_sweep(&self) -> Result<SweepReport> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        let live = [RunnerStatus::Active, RunnerStatus::Paused];
        for mut runner in self
            .store
            .silent_runners(&live, now, self.config.sweep_batch)
            .await?
        {
            // The index may hold a key written before runners kept their
            // own limit: the runner itself decides.
            if !runner.is_silent(now) {
                continue;
            }
            let version = runner.version;
            let silent_s = now.since(runner.last_heartbeat) / 1000;
            let reason = format!("no heartbeat for {silent_s}s");
            runner.mark_unhealthy(reason.clone())?;
            match self.store.update_runner(&runner, version).await {
                Ok(()) => {}
                // It heartbeated (or changed) meanwhile: it is not silent after all.
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
            report.runners_marked_unhealthy += 1;
            self.record_health(&runner.id, now, RunnerStatus::Unhealthy, reason)
                .await?;
            let moved = self
                .take_back_runner_work(&runner.id, "runner became unhealthy")
                .await?;
            report.shards_requeued += moved as u32;
        }
        let retention = i64::try_from(self.config.runner_retention_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let long_gone = now.plus_ms(-retention);
        for runner in self
            .store
            .silent_runners(
                &[RunnerStatus::Unhealthy],
                long_gone,
                self.config.sweep_batch,
            )
            .await?
        {
            let silent_h = now.since(runner.last_heartbeat) / 3_600_000;
            let reason = format!("removed after {silent_h} h without a heartbeat");
            if self
                .remove_silent_runner(&runner.id, long_gone, &reason)
                .await?
                .is_some()
            {
                report.runners_removed += 1;
            }
        }
        // Health first, so the sample and the alerts see this sweep's count.
        let runners = self.all_runners().await?;
        let (mut used, mut capacity, mut unhealthy) = (0u64, 0u64, 0u64);
        // Capacity is what live runners offer: an unhealthy runner's slots
        // are not there to be used.
        for r in &runners {
            match r.runner.status {
                RunnerStatus::Active | RunnerStatus::Paused => {
                    used += u64::from(r.allocated.slots);
                    capacity += u64::from(r.runner.capacity.slots);
                }
                RunnerStatus::Unhealthy => unhealthy += 1,
                RunnerStatus::Deregistered => {}
            }
        }
        self.store
            .add_rollup(&Rollup::utilization_sample(now, used, capacity))
            .await?;
        report.alerts_changed = self.evaluate_alerts(unhealthy).await?;
        Ok(report)
    }

    /// Shards past their lease deadline are retried elsewhere (or fail when
    /// out of attempts); executions past their timeout are timed out; open
    /// executions whose shards are all done are folded (a lost event's backstop).
    pub async fn timeout_sweep(&self) -> Result<SweepReport> {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        for shard in self
            .store
            .expired_shards(now, self.config.sweep_batch)
            .await?
        {
            let Some(lease) = shard.lease_id.clone() else {
                continue;
            };
            let reason = "shard deadline passed";
            match self
                .take_back(&shard.execution_id, shard.index, &lease, reason)
                .await?
            {
                TakenBack::Requeued => report.shards_requeued += 1,
                TakenBack::GaveUp => report.shards_failed += 1,
                // Reported or moved meanwhile: nothing was taken back.
                TakenBack::NotHeld => {}
            }
        }
        for execution in self.executions_to_refold().await? {
            if execution.deadline < now {
                if self.time_out_execution(&execution.id).await? {
                    report.executions_timed_out += 1;
                }
            } else {
                let before = execution.status;
                if self.aggregate(&execution.id).await?.status != before {
                    report.executions_aggregated += 1;
                }
            }
        }
        Ok(report)
    }

    /// The open executions one timeout sweep looks at: those nearest their
    /// deadline (the ones to time out come first), and the page after the
    /// cursor the last sweep left, so that over successive sweeps the
    /// re-fold (a lost event's backstop) reaches every open execution
    /// however many there are. The cursor goes back to the start after the
    /// last page. Two sweeps at once may both move it: one page is then
    /// looked at twice or a lap later, and nothing is lost.
    async fn executions_to_refold(&self) -> Result<Vec<crate::domain::Execution>> {
        let batch = self.config.sweep_batch;
        let first = self.store.active_executions(None, batch).await?;
        let kept = self.store.get_setting(REFOLD_CURSOR).await?;
        let (more, next) = match kept.as_deref().filter(|c| !c.is_empty()) {
            Some(cursor) => match self.store.active_executions(Some(cursor), batch).await {
                Ok(page) => (page.items, page.next_cursor),
                // A cursor no store would write: start over.
                Err(crate::Error::Validation { .. }) => (Vec::new(), first.next_cursor.clone()),
                Err(e) => return Err(e),
            },
            None => (Vec::new(), first.next_cursor.clone()),
        };
        let next = next.unwrap_or_default();
        if kept.unwrap_or_default() != next {
            self.store.put_setting(REFOLD_CURSOR, &next).await?;
        }
        let mut all = first.items;
        for e in more {
            if !all.iter().any(|a| a.id == e.id) {
                all.push(e);
            }
        }
        Ok(all)
    }

    async fn time_out_execution(&self, id: &ExecutionId) -> Result<bool> {
        let now = self.clock.now();
        let timed_out = retry_on_conflict(|| async {
            let (mut e, _) = self.load(id).await?;
            if e.status.is_terminal() {
                return Ok(false);
            }
            let version = e.version;
            e.time_out(now)?;
            self.write_execution(&mut e, version).await?;
            Ok(true)
        })
        .await?;
        if timed_out {
            self.stop_open_shards(id, "execution timed out").await?;
            self.fold_finished(id).await?;
        }
        Ok(timed_out)
    }

    /// Takes a shard back from the runner holding `lease`: requeued while it
    /// has attempts left, else errored. Does nothing if that lease is no
    /// longer current.
    pub(crate) async fn take_back(
        &self,
        id: &ExecutionId,
        index: u32,
        lease: &LeaseId,
        reason: &str,
    ) -> Result<TakenBack> {
        let now = self.clock.now();
        let requeued = retry_on_conflict(|| async {
            let (execution, mut shard) = self.load_shard(id, index).await?;
            if shard.lease_id.as_ref() != Some(lease) || !shard.status.is_in_flight() {
                return Ok(None);
            }
            let read_as = (shard.version, shard.status);
            let retry = shard.attempt < execution.max_attempts && !execution.status.is_terminal();
            let held = if retry {
                shard.requeue(reason, now)?
            } else {
                let why = format!(
                    "{reason}; gave up after {} of {} attempts",
                    shard.attempt, execution.max_attempts
                );
                shard.give_up(why, now)?
            };
            self.save_shard(&execution, shard, read_as, held).await?;
            Ok(Some(retry))
        })
        .await?;
        match requeued {
            Some(true) => {
                self.nudges.schedule().await;
                Ok(TakenBack::Requeued)
            }
            Some(false) => {
                self.aggregate(id).await?;
                self.nudges.schedule().await;
                Ok(TakenBack::GaveUp)
            }
            None => Ok(TakenBack::NotHeld),
        }
    }
}
