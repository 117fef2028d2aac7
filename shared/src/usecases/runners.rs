//! Runner registration, heartbeats and operator controls.

use super::sweeps::TakenBack;
use super::{retry_on_conflict, Orchestrator};
use crate::auth::{self, Principal};
use crate::domain::{
    HealthRecord, Resources, Runner, RunnerStatus, RunnerType, RunnerWithLoad, Scope, Shard, Usage,
    Violation,
};
use crate::error::{Entity, Error, Result};
use crate::ids::{ExecutionId, LeaseId, RunnerId};
use crate::ports::{Nudges, Page, Ports, Store};
use crate::time::{Clock, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// Body of `POST /runners/register`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRunner {
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    #[serde(rename = "type")]
    pub runner_type: RunnerType,
    #[serde(default)]
    pub labels: BTreeSet<String>,
    pub capacity: Resources,
    #[serde(default)]
    pub priority: i32,
    /// Push mode: how to start each assigned shard on the runner's CI
    /// platform. Without it the runner pulls work with heartbeats.
    #[serde(default)]
    pub dispatch: Option<crate::domain::DispatchTarget>,
    /// How often it heartbeats (seconds, 1 to 3600; default the server's
    /// interval). Silence is judged against it: a runner silent for the
    /// server's number of missed heartbeats of its own interval is
    /// unhealthy, so the work of an agent that polls every second moves
    /// within seconds when it dies.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub heartbeat_interval_seconds: Option<u64>,
    /// Which executions that require no label it takes: of the suites and
    /// projects it declares, or with `any`, all. Without it, all (`tms
    /// agent` always says, and takes any only when told `--any-suite`).
    #[serde(default)]
    pub scope: Option<Scope>,
}

/// A newly registered runner and its token (shown only now).
pub struct RegisteredRunner {
    pub runner: RunnerWithLoad,
    pub token: String,
}

/// A shard a runner holds, as its heartbeat returns it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Assignment {
    #[schema(value_type = String)]
    pub execution_id: ExecutionId,
    pub suite: String,
    pub shard_index: u32,
    #[schema(value_type = String)]
    pub lease_id: LeaseId,
    pub attempt: u32,
    /// `assigned` until the runner reports `started`, then `running`; a
    /// batch a runner claimed is `running` from its claim (its `started`
    /// report changes nothing).
    pub status: crate::domain::ShardStatus,
    /// Shared with the shard (see `Shard::tests`).
    #[schema(value_type = Vec<String>)]
    pub tests: std::sync::Arc<[String]>,
    /// When the lease runs out (ms since epoch).
    #[schema(value_type = Option<i64>)]
    pub deadline: Option<Timestamp>,
}

/// A list of runner types names each at most once: there are six.
pub(crate) fn validate_runner_types(
    types: &[crate::domain::RunnerType],
    field: &str,
) -> Result<()> {
    let distinct: BTreeSet<_> = types.iter().collect();
    if distinct.len() != types.len() {
        return Err(Error::validation(field, "a runner type is listed twice"));
    }
    Ok(())
}

pub(crate) fn validate_labels(labels: &BTreeSet<String>, field: &str) -> Result<()> {
    if labels.len() > 32 {
        return Err(Error::validation(field, "at most 32 labels"));
    }
    if let Some(bad) = labels
        .iter()
        .find(|l| l.is_empty() || l.len() > 64 || l.chars().any(char::is_whitespace))
    {
        return Err(Error::validation(
            field,
            format!("label {bad:?} must be 1-64 characters without spaces"),
        ));
    }
    Ok(())
}

impl NewRunner {
    fn validate(&self, allowed_hosts: &crate::domain::AllowedHosts) -> Result<()> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(Error::validation("name", "must be 1 to 128 characters"));
        }
        validate_labels(&self.labels, "labels")?;
        if let Some(scope) = &self.scope {
            for (field, names) in [
                ("scope.suites", &scope.suites),
                ("scope.projects", &scope.projects),
            ] {
                if names.len() > 32 || names.iter().any(|n| n.is_empty() || n.len() > 256) {
                    return Err(Error::validation(
                        field,
                        "at most 32 names, each 1 to 256 bytes",
                    ));
                }
            }
        }
        if self
            .heartbeat_interval_seconds
            .is_some_and(|s| !(1..=3600).contains(&s))
        {
            return Err(Error::validation(
                "heartbeat_interval_seconds",
                "must be between 1 and 3600",
            ));
        }
        if self.capacity.slots == 0 || self.capacity.slots > 1024 {
            return Err(Error::validation(
                "capacity.slots",
                "must be between 1 and 1024",
            ));
        }
        if let Some(target) = &self.dispatch {
            target.validate(self.runner_type, allowed_hosts)?;
        }
        Ok(())
    }
}

impl Assignment {
    /// The assignment a held shard stands for (`None` if it holds no lease).
    pub(crate) fn of(shard: Shard) -> Option<Assignment> {
        Some(Assignment {
            lease_id: shard.lease_id?,
            suite: shard.suite,
            execution_id: shard.execution_id,
            shard_index: shard.index,
            attempt: shard.attempt,
            status: shard.status,
            tests: shard.tests,
            deadline: shard.deadline,
        })
    }
}

impl std::fmt::Debug for RegisteredRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredRunner")
            .field("runner", &self.runner.runner.id)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl<P: Ports> Orchestrator<P> {
    pub async fn register_runner(&self, new: NewRunner) -> Result<RegisteredRunner> {
        new.validate(&self.config.dispatch_allowed_hosts)?;
        let now = self.clock.now();
        let id = RunnerId::generate();
        let issued = auth::issue(Some(id.as_str()));
        let runner = Runner {
            id,
            name: new.name.trim().to_owned(),
            runner_type: new.runner_type,
            labels: new.labels,
            capacity: new.capacity,
            priority: new.priority,
            status: RunnerStatus::Active,
            status_reason: None,
            registered_at: now,
            last_heartbeat: now,
            last_usage: None,
            dispatch: new.dispatch,
            silence_limit_ms: Some(
                (new.heartbeat_interval_seconds
                    .unwrap_or(self.config.heartbeat_interval_secs)
                    * u64::from(self.config.missed_heartbeats)
                    * 1000) as i64,
            ),
            scope: new.scope.unwrap_or_else(Scope::any),
            token_hash: issued.hash,
            version: 1,
        };
        self.store.insert_runner(&runner).await?;
        self.nudges.schedule().await;
        Ok(RegisteredRunner {
            runner: RunnerWithLoad {
                runner,
                allocated: Resources::default(),
            },
            token: issued.token,
        })
    }

    pub async fn runner(&self, id: &RunnerId) -> Result<RunnerWithLoad> {
        self.store
            .get_runner(id)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Runner, id))
    }

    pub async fn list_runners(
        &self,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<RunnerWithLoad>> {
        if !(1..=500).contains(&limit) {
            return Err(Error::validation("limit", "must be between 1 and 500"));
        }
        self.store.list_runners(limit, cursor).await
    }

    /// Records a heartbeat (and any reported usage) and returns the shards the
    /// runner should be working on.
    pub async fn heartbeat(&self, id: &RunnerId, usage: Option<Usage>) -> Result<Vec<Assignment>> {
        let now = self.clock.now();
        let (revived, allocated, shards, runner) = retry_on_conflict(|| async {
            let (mut loaded, shards) = self
                .store
                .runner_with_shards(id)
                .await?
                .ok_or_else(|| Error::not_found(Entity::Runner, id))?;
            let version = loaded.runner.version;
            let previous = loaded.runner.last_heartbeat;
            let revived = loaded.runner.heartbeat(now, usage)?;
            // Silence is judged over the runner's own limit, so recording a
            // heartbeat at most every tenth of it loses nothing and keeps a
            // busy agent's polling from turning into one write per call.
            let stale = now.since(previous) >= loaded.runner.silence_limit_ms() / 10;
            if revived || usage.is_some() {
                self.store.update_runner(&loaded.runner, version).await?;
            } else if stale {
                self.store.record_heartbeat(&loaded.runner, version).await?;
            }
            Ok((revived, loaded.allocated, shards, loaded.runner))
        })
        .await?;
        if revived {
            self.record_health(
                id,
                now,
                RunnerStatus::Active,
                "heartbeat received again".into(),
            )
            .await?;
            self.nudges.schedule().await;
        }
        if let Some(v) = usage.and_then(|u| Violation::check(id, now, allocated, u)) {
            self.store.add_violation(&v).await?;
        }
        let mut shards = shards;
        self.extend_leases(&runner, &mut shards).await;
        Ok(shards.into_iter().filter_map(Assignment::of).collect())
    }

    pub async fn pause_runner(&self, id: &RunnerId) -> Result<RunnerWithLoad> {
        self.change_runner(id, |r| r.pause().map(|_| ())).await
    }

    pub async fn resume_runner(&self, id: &RunnerId) -> Result<RunnerWithLoad> {
        let r = self.change_runner(id, |r| r.resume().map(|_| ())).await?;
        self.nudges.schedule().await;
        Ok(r)
    }

    /// Deregisters the runner and sends its in-flight shards to other runners.
    pub async fn deregister_runner(&self, id: &RunnerId) -> Result<RunnerWithLoad> {
        self.remove_runner(id, Runner::deregister, "deregistered")
            .await
    }

    /// Removes a runner unhealthy and silent since before `since` (the
    /// health sweep's clean-up); `None` when it came back meanwhile.
    pub(crate) async fn remove_silent_runner(
        &self,
        id: &RunnerId,
        since: crate::time::Timestamp,
        reason: &str,
    ) -> Result<Option<RunnerWithLoad>> {
        let still_gone = |r: &mut Runner| {
            if r.status != RunnerStatus::Unhealthy || r.silence_key() >= since {
                return Err(Error::conflict(crate::Entity::Runner, &r.id));
            }
            r.deregister()
        };
        match self.remove_runner(id, still_gone, reason).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deregisters a runner by `change`: its token stops working, the
    /// removal goes into its health history with `reason`, and whatever it
    /// held goes to other runners.
    async fn remove_runner(
        &self,
        id: &RunnerId,
        change: impl Fn(&mut Runner) -> Result<()>,
        reason: &str,
    ) -> Result<RunnerWithLoad> {
        let r = self.change_runner(id, change).await?;
        self.tokens.forget(&Principal::Runner(id.clone()));
        let now = self.clock.now();
        self.record_health(id, now, RunnerStatus::Deregistered, reason.into())
            .await?;
        self.take_back_runner_work(id, "runner deregistered")
            .await?;
        Ok(r)
    }

    async fn change_runner(
        &self,
        id: &RunnerId,
        change: impl Fn(&mut Runner) -> Result<()>,
    ) -> Result<RunnerWithLoad> {
        retry_on_conflict(|| async {
            let mut loaded = self.runner(id).await?;
            let version = loaded.runner.version;
            change(&mut loaded.runner)?;
            if loaded.runner.version != version {
                self.store.update_runner(&loaded.runner, version).await?;
            }
            Ok(loaded)
        })
        .await
    }

    /// A runner's health changes, newest first.
    pub async fn store_health_history(&self, id: &RunnerId) -> Result<Vec<HealthRecord>> {
        self.store.health_history(id, 100).await
    }

    pub(crate) async fn record_health(
        &self,
        id: &RunnerId,
        at: Timestamp,
        status: RunnerStatus,
        reason: String,
    ) -> Result<()> {
        self.store
            .add_health_record(&HealthRecord {
                runner_id: id.clone(),
                at,
                status,
                reason,
            })
            .await
    }

    /// Requeues (or, out of attempts, fails) every shard the runner holds.
    pub(crate) async fn take_back_runner_work(&self, id: &RunnerId, reason: &str) -> Result<usize> {
        let shards: Vec<Shard> = self.store.runner_shards(id).await?;
        let mut moved = 0;
        for shard in shards {
            if let Some(lease) = shard.lease_id.clone() {
                let taken = self
                    .take_back(&shard.execution_id, shard.index, &lease, reason)
                    .await?;
                if taken == TakenBack::Requeued {
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }
}
