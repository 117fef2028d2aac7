//! Runners: the machines (or CI jobs) that run shards, and their lifecycle.

use super::health::Usage;
use super::resources::Resources;
use crate::error::{Entity, Error, Result};
use crate::ids::RunnerId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// The CI platform or agent kind behind a runner.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerType {
    GithubActions,
    AzureDevops,
    Jenkins,
    Gitlab,
    Docker,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStatus {
    /// Takes new work.
    Active,
    /// Finishes what it has, takes nothing new (an operator's choice).
    Paused,
    /// Missed its heartbeats; its work went elsewhere. A heartbeat brings it back.
    Unhealthy,
    /// Gone for good; its token no longer works.
    Deregistered,
}

impl RunnerStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunnerStatus::Active => "active",
            RunnerStatus::Paused => "paused",
            RunnerStatus::Unhealthy => "unhealthy",
            RunnerStatus::Deregistered => "deregistered",
        }
    }
}

/// A registered runner. Its allocated capacity lives beside it (see
/// [`RunnerWithLoad`]) because capacity is changed by assignments with atomic
/// counters, while this record is changed by versioned writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runner {
    pub id: RunnerId,
    pub name: String,
    pub runner_type: RunnerType,
    pub labels: BTreeSet<String>,
    pub capacity: Resources,
    /// Higher is preferred by the priority strategy.
    pub priority: i32,
    pub status: RunnerStatus,
    pub status_reason: Option<String>,
    pub registered_at: Timestamp,
    pub last_heartbeat: Timestamp,
    pub last_usage: Option<Usage>,
    /// Push mode: where its shards are started. Such a runner is a pool of
    /// CI jobs, not a machine, and sends no heartbeats.
    #[serde(default)]
    pub dispatch: Option<super::DispatchTarget>,
    /// How long it may stay silent before it is unhealthy (ms): its own
    /// heartbeat interval (the agent's poll) times the missed heartbeats
    /// allowed, set when it registers. Runners registered before it was
    /// kept have [`DEFAULT_SILENCE_LIMIT_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_limit_ms: Option<i64>,
    /// Which executions that require no label it takes. Runners
    /// registered before it was kept take any.
    #[serde(default = "Scope::any")]
    pub scope: Scope,
    pub token_hash: String,
    pub version: u64,
}

/// Which executions requiring no label a runner takes (labelled ones go by
/// labels): those of the suites and projects it declares, or, opted into,
/// any. On a server several teams or checkouts share, an agent so takes
/// only the work it is meant for, and its results decide no other
/// project's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
// Named apart from a token's scope in the OpenAPI document.
#[schema(as = RunnerScope)]
pub struct Scope {
    /// Takes unlabelled work of any suite and project.
    #[serde(default)]
    pub any: bool,
    /// Suites whose unlabelled executions it takes.
    #[serde(default)]
    pub suites: BTreeSet<String>,
    /// Repositories or projects (the queue call's `ci.project`) whose
    /// unlabelled executions it takes.
    #[serde(default)]
    pub projects: BTreeSet<String>,
}

impl Scope {
    /// Any unlabelled work.
    pub fn any() -> Scope {
        Scope {
            any: true,
            ..Scope::default()
        }
    }

    /// Whether it takes the unlabelled work of `a`.
    pub fn takes(&self, a: &super::Affinity) -> bool {
        self.any
            || self.suites.contains(&a.suite)
            || a.project
                .as_ref()
                .is_some_and(|p| self.projects.contains(p))
    }
}

/// The silence limit of a runner that registered none: three heartbeats of
/// the default interval (30 s).
pub const DEFAULT_SILENCE_LIMIT_MS: i64 = 90_000;

/// A runner together with what is currently allocated on it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerWithLoad {
    pub runner: Runner,
    pub allocated: Resources,
}

impl RunnerWithLoad {
    pub fn free(&self) -> Resources {
        self.runner.capacity.minus(&self.allocated)
    }
}

impl Runner {
    /// Whether it can run work that needs `req` (its size aside): the
    /// labels, a runner type asked for, and, for unlabelled work, a suite
    /// or project it serves.
    pub fn meets(&self, req: &super::Requirements) -> bool {
        self.labels.is_superset(&req.labels)
            && (req.runner_types.is_empty() || req.runner_types.contains(&self.runner_type))
            && req.affinity.as_ref().is_none_or(|a| self.scope.takes(a))
    }

    /// Pull-mode runners heartbeat and go unhealthy when they stop; a
    /// push-mode runner is a CI platform TMS calls, judged by its dispatches.
    pub fn expects_heartbeats(&self) -> bool {
        self.dispatch.is_none()
    }

    /// How long it may stay silent before it is unhealthy.
    pub fn silence_limit_ms(&self) -> i64 {
        self.silence_limit_ms.unwrap_or(DEFAULT_SILENCE_LIMIT_MS)
    }

    /// When it is silent for good if no heartbeat comes: its last
    /// heartbeat plus its own silence limit (so one index, "silent at",
    /// serves runners of every heartbeat interval), or for a runner that
    /// sends none, a time that never comes (push-mode runners are never
    /// listed as silent).
    pub fn silence_key(&self) -> Timestamp {
        if self.expects_heartbeats() {
            self.last_heartbeat.plus_ms(self.silence_limit_ms())
        } else {
            Timestamp(i64::MAX)
        }
    }

    /// Whether it has been silent past its limit at `now`.
    pub fn is_silent(&self, now: Timestamp) -> bool {
        self.silence_key() < now
    }

    fn set_status(&mut self, to: RunnerStatus, reason: Option<String>) {
        self.status = to;
        self.status_reason = reason;
        self.version += 1;
    }

    /// Stop handing out new work. Returns false if it was already paused.
    pub fn pause(&mut self) -> Result<bool> {
        self.pause_for("paused by operator".into())
    }

    /// Stop handing out new work, saying why (an operator's pause, or a CI
    /// platform that refuses dispatches until someone fixes its settings).
    pub fn pause_for(&mut self, reason: String) -> Result<bool> {
        match self.status {
            RunnerStatus::Paused => Ok(false),
            RunnerStatus::Active | RunnerStatus::Unhealthy => {
                self.set_status(RunnerStatus::Paused, Some(reason));
                Ok(true)
            }
            RunnerStatus::Deregistered => Err(self.refuse(RunnerStatus::Paused)),
        }
    }

    /// Take new work again. Returns false if it was already active.
    pub fn resume(&mut self) -> Result<bool> {
        match self.status {
            RunnerStatus::Active => Ok(false),
            RunnerStatus::Paused => {
                self.set_status(RunnerStatus::Active, None);
                Ok(true)
            }
            RunnerStatus::Unhealthy | RunnerStatus::Deregistered => {
                Err(self.refuse(RunnerStatus::Active))
            }
        }
    }

    /// The health sweep's verdict after missed heartbeats.
    pub fn mark_unhealthy(&mut self, reason: String) -> Result<()> {
        match self.status {
            RunnerStatus::Active | RunnerStatus::Paused => {
                self.set_status(RunnerStatus::Unhealthy, Some(reason));
                Ok(())
            }
            _ => Err(self.refuse(RunnerStatus::Unhealthy)),
        }
    }

    /// Records a heartbeat. Returns true when this heartbeat revived an
    /// unhealthy runner (worth a health record).
    pub fn heartbeat(&mut self, now: Timestamp, usage: Option<Usage>) -> Result<bool> {
        if self.status == RunnerStatus::Deregistered {
            return Err(self.refuse(RunnerStatus::Active));
        }
        self.last_heartbeat = now;
        if usage.is_some() {
            self.last_usage = usage;
        }
        self.version += 1;
        if self.status == RunnerStatus::Unhealthy {
            self.status = RunnerStatus::Active;
            self.status_reason = None;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn deregister(&mut self) -> Result<()> {
        if self.status == RunnerStatus::Deregistered {
            return Err(self.refuse(RunnerStatus::Deregistered));
        }
        self.set_status(RunnerStatus::Deregistered, Some("deregistered".into()));
        Ok(())
    }

    fn refuse(&self, to: RunnerStatus) -> Error {
        Error::transition(Entity::Runner, self.status, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::runner;

    #[test]
    fn a_deregistered_runner_cannot_be_resumed_or_paused() {
        let mut r = runner("a", 1);
        r.deregister().unwrap();
        assert!(matches!(r.pause(), Err(Error::InvalidTransition { .. })));
        assert!(matches!(r.resume(), Err(Error::InvalidTransition { .. })));
        assert!(r.heartbeat(Timestamp(5), None).is_err());
    }

    #[test]
    fn a_heartbeat_revives_an_unhealthy_runner_and_bumps_the_version() {
        let mut r = runner("a", 1);
        r.mark_unhealthy("silent".into()).unwrap();
        let v = r.version;
        assert!(r.heartbeat(Timestamp(10), None).unwrap());
        assert_eq!(r.status, RunnerStatus::Active);
        assert!(r.version > v);
    }

    #[test]
    fn pausing_twice_is_a_no_op_not_an_error() {
        let mut r = runner("a", 1);
        assert!(r.pause().unwrap());
        assert!(!r.pause().unwrap());
    }
}
