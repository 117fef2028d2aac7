//! Push-mode dispatch: a shard assigned to a runner that has a
//! [`DispatchTarget`](crate::domain::DispatchTarget) is started as a job on
//! that runner's CI platform.
//!
//! The scheduler sends a [`DispatchOrder`] after the assignment committed;
//! this use case (the dispatcher function on AWS, a task in `tms serve`)
//! re-reads the shard, gives the lease a job token, and plays the
//! platform's exchange from [`crate::dispatch`]. One call is one attempt:
//! the caller owns the waiting between attempts (SQS visibility on AWS, a
//! timer locally), so nothing here sleeps.
//!
//! A lease starts at most one CI job. The shard is marked (a conditional
//! write) before the platform is asked; a later attempt for the same lease
//! finds the mark and asks no more, unless the platform answered that it
//! did not start the job, which removes the mark. So a redelivered message
//! after the dispatcher was stopped mid-call (its timeout) does not start a
//! second job; the attempt's budget ([`crate::config::Config`]'s
//! `dispatch_attempt_budget_ms`) keeps an attempt inside that timeout.

use super::{retry_on_conflict, Orchestrator};
use crate::auth;
use crate::dispatch::{next_step, DispatchJob, Step, Verdict};
use crate::domain::{RunnerStatus, RunnerWithLoad, ShardStatus};
use crate::error::Result;
use crate::ports::{DispatchOrder, HttpClient, Ports, Secrets, Store};
use crate::time::Clock;
use std::time::Duration;

/// What one dispatch attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchOutcome {
    /// The platform accepted the job.
    Dispatched { platform: &'static str, status: u16 },
    /// The order is out of date (the lease moved on, the shard started or
    /// ended, the runner no longer dispatches): nothing to do.
    Stale,
    /// An earlier attempt already handed this lease to the platform (or
    /// died while doing so): a lease starts at most one job.
    AlreadyDispatched,
    /// The attempt ran out of its budget while the platform was being
    /// asked. The job may have started, so the lease is not dispatched
    /// again; if no job reports, the lease's deadline requeues the shard.
    Unconfirmed { reason: String },
    /// The platform is busy or down: attempt again after `after`.
    Retry { after: Duration, reason: String },
    /// Out of dispatch attempts: the shard went back to the queue for
    /// another runner (or failed, out of shard attempts).
    Exhausted { reason: String },
    /// The platform refused for good (bad credentials, no such workflow):
    /// the runner is paused until someone fixes it, and the shard went back
    /// to the queue as with `Exhausted`.
    Refused { reason: String },
}

/// Most HTTP requests one attempt may send (Jenkins' crumb dance is three).
const MAX_EXCHANGES: usize = 4;

/// Whether this attempt may hand the lease to the platform.
enum Marked {
    Now(Box<crate::domain::Shard>),
    Stale,
    Already,
}

impl<P: Ports> Orchestrator<P> {
    /// Attempt number `attempt` (1-based) at dispatching `order`.
    pub async fn dispatch_shard(
        &self,
        order: &DispatchOrder,
        attempt: u32,
    ) -> Result<DispatchOutcome> {
        let Some((execution, shard)) = self
            .store
            .load_shard(&order.execution_id, order.shard_index)
            .await?
        else {
            return Ok(DispatchOutcome::Stale);
        };
        if !holds(&shard, order) {
            return Ok(DispatchOutcome::Stale);
        }
        let Some(runner) = match &shard.runner_id {
            Some(id) => self.store.get_runner(id).await?,
            None => None,
        }
        .filter(|r| r.runner.status != RunnerStatus::Deregistered) else {
            return Ok(DispatchOutcome::Stale);
        };
        let Some(target) = runner.runner.dispatch.clone() else {
            // A pull-mode runner picks the shard up with its heartbeat.
            return Ok(DispatchOutcome::Stale);
        };
        let Some(public_url) = self.config.public_url.clone() else {
            let reason =
                "TMS has no public URL for dispatched jobs to report to (set TMS_PUBLIC_URL)";
            return self.refused(order, &runner, reason.into()).await;
        };
        // Checked again here: the operator may have narrowed the allowed
        // hosts since the runner registered.
        if let Err(e) = target.check_hosts(&self.config.dispatch_allowed_hosts) {
            return self.refused(order, &runner, e.to_string()).await;
        }
        let secret = match self.secrets.secret(target.secret()).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                let reason = format!("secret {} is not set", target.secret());
                return self.refused(order, &runner, reason).await;
            }
            Err(e) => {
                let reason = format!("cannot read secret {}: {e}", target.secret());
                return self.retry_later(order, attempt, None, reason).await;
            }
        };

        let now = self.clock.now();
        let owner = format!("{}.{}", order.execution_id, order.shard_index);
        let issued = auth::issue(Some(&owner));
        // The first try writes over what was read above; a lost race re-reads.
        let mut first_read = Some((execution, shard));
        let marked = retry_on_conflict(|| {
            let read = first_read.take();
            async {
                let (execution, mut shard) = match read {
                    Some(read) => read,
                    None => {
                        self.load_shard(&order.execution_id, order.shard_index)
                            .await?
                    }
                };
                if !holds(&shard, order) {
                    return Ok(Marked::Stale);
                }
                let read_as = (shard.version, shard.status);
                if !shard.mark_dispatched(&order.lease_id, issued.hash.clone(), now)? {
                    return Ok(Marked::Already);
                }
                self.save_shard(&execution, shard.clone(), read_as, None)
                    .await?;
                Ok(Marked::Now(Box::new(shard)))
            }
        })
        .await?;
        let shard = match marked {
            Marked::Now(shard) => shard,
            Marked::Stale => return Ok(DispatchOutcome::Stale),
            Marked::Already => {
                tracing::warn!(execution = %order.execution_id, shard = order.shard_index,
                    "this lease was already handed to the platform; not starting a second job");
                return Ok(DispatchOutcome::AlreadyDispatched);
            }
        };

        let webhook_url = format!(
            "{}{}/webhooks/parallel-execution/{}",
            public_url.trim_end_matches('/'),
            crate::http::BASE_PATH,
            order.execution_id
        );
        let job = DispatchJob {
            execution_id: order.execution_id.clone(),
            suite: shard.suite.clone(),
            shard_index: shard.index,
            lease_id: order.lease_id.clone(),
            attempt: shard.attempt,
            tests: shard.tests.to_vec(),
            shard_url: format!("{webhook_url}/shards/{}", shard.index),
            webhook_url,
            webhook_token: issued.token,
        };
        let exchange = async {
            let mut exchanges = Vec::new();
            loop {
                let step = next_step(&target, &job, &secret, now, &exchanges);
                match step {
                    Step::Done(verdict) => break verdict,
                    Step::Send(_) if exchanges.len() >= MAX_EXCHANGES => {
                        break Verdict::Rejected {
                            reason: "the platform kept asking for more requests".into(),
                        }
                    }
                    Step::Send(request) => match self.http.send(&request).await {
                        Ok(response) => exchanges.push((request, response)),
                        Err(e) => {
                            break Verdict::Retry {
                                after: None,
                                reason: format!("no answer: {e}"),
                            }
                        }
                    },
                }
            }
        };
        let budget = Duration::from_millis(self.config.dispatch_attempt_budget_ms);
        let platform = target.platform();
        let Ok(verdict) = tokio::time::timeout(budget, exchange).await else {
            // The platform may have started the job before the attempt gave
            // up: the mark stays, so no retry starts a second one. A job
            // that never began is found by the lease's deadline.
            let reason = format!(
                "{platform} did not answer within the dispatch attempt's {} ms",
                budget.as_millis()
            );
            tracing::warn!(execution = %order.execution_id, shard = order.shard_index, %reason,
                "dispatch unconfirmed; the lease's deadline requeues the shard if no job reports");
            return Ok(DispatchOutcome::Unconfirmed { reason });
        };
        if matches!(verdict, Verdict::Retry { .. }) {
            // The platform answered that it did not start the job: the next
            // attempt may hand the lease over again.
            retry_on_conflict(|| async {
                let (execution, mut shard) = self
                    .load_shard(&order.execution_id, order.shard_index)
                    .await?;
                let read_as = (shard.version, shard.status);
                if shard.undo_dispatch(&order.lease_id, &issued.hash) {
                    self.save_shard(&execution, shard, read_as, None).await?;
                }
                Ok(())
            })
            .await?;
        }
        match verdict {
            Verdict::Dispatched { status } => {
                tracing::info!(execution = %order.execution_id, shard = order.shard_index,
                    runner = %runner.runner.id, platform, status, "shard dispatched");
                Ok(DispatchOutcome::Dispatched { platform, status })
            }
            Verdict::Retry { after, reason } => {
                let reason = format!("{platform} dispatch failed: {reason}");
                self.retry_later(order, attempt, after, reason).await
            }
            Verdict::Rejected { reason } => {
                let reason = format!("{platform} refused the dispatch: {reason}");
                self.refused(order, &runner, reason).await
            }
        }
    }

    /// A failure worth retrying: later, while attempts remain; then the
    /// shard goes to another runner.
    async fn retry_later(
        &self,
        order: &DispatchOrder,
        attempt: u32,
        after: Option<Duration>,
        reason: String,
    ) -> Result<DispatchOutcome> {
        if attempt < self.config.dispatch_max_attempts {
            let backoff = self.config.dispatch_backoff(attempt);
            let after = after.map_or(backoff, |a| a.clamp(backoff, Duration::from_secs(900)));
            tracing::warn!(execution = %order.execution_id, shard = order.shard_index,
                attempt, retry_in_ms = after.as_millis() as u64, %reason, "dispatch will be retried");
            return Ok(DispatchOutcome::Retry { after, reason });
        }
        let reason = format!("{reason} (gave up after {attempt} dispatch attempts)");
        self.give_back(order, &reason).await?;
        Ok(DispatchOutcome::Exhausted { reason })
    }

    /// The platform will not take jobs as configured: the runner is paused
    /// (an operator fixes its settings and resumes it) and the shard goes
    /// to another runner.
    async fn refused(
        &self,
        order: &DispatchOrder,
        runner: &RunnerWithLoad,
        reason: String,
    ) -> Result<DispatchOutcome> {
        let id = &runner.runner.id;
        let paused = retry_on_conflict(|| async {
            let Some(mut loaded) = self.store.get_runner(id).await? else {
                return Ok(false);
            };
            let version = loaded.runner.version;
            if !loaded.runner.pause_for(reason.clone())? {
                return Ok(false);
            }
            self.store.update_runner(&loaded.runner, version).await?;
            Ok(true)
        })
        .await;
        match paused {
            Ok(true) => {
                self.record_health(id, self.clock.now(), RunnerStatus::Paused, reason.clone())
                    .await?
            }
            Ok(false) => {}
            // Deregistered meanwhile: nothing to pause.
            Err(crate::Error::InvalidTransition { .. }) => {}
            Err(e) => return Err(e),
        }
        self.give_back(order, &reason).await?;
        Ok(DispatchOutcome::Refused { reason })
    }

    async fn give_back(&self, order: &DispatchOrder, reason: &str) -> Result<()> {
        tracing::error!(execution = %order.execution_id, shard = order.shard_index,
            %reason, "dispatch given up; the shard goes to another runner");
        self.take_back(
            &order.execution_id,
            order.shard_index,
            &order.lease_id,
            reason,
        )
        .await?;
        Ok(())
    }
}

/// The shard is still assigned under the order's lease and not started.
fn holds(shard: &crate::domain::Shard, order: &DispatchOrder) -> bool {
    shard.lease_id.as_ref() == Some(&order.lease_id) && shard.status == ShardStatus::Assigned
}
