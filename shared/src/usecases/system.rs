//! System health and resource utilization.

use super::Orchestrator;
use crate::domain::metrics::{hour_of, parse_since, MAX_RANGE_MS};
use crate::domain::Metrics;
use crate::domain::{ExecutionStatus, Resources, RunnerStatus, RunnerWithLoad, Violation};
use crate::error::{Error, Result};
use crate::ports::{ExecutionFilter, Ports, Store};
use crate::time::Clock;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct RunnerCounts {
    pub active: u32,
    pub paused: u32,
    pub unhealthy: u32,
    pub deregistered: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct QueueHealth {
    pub queued_shards: u64,
    pub in_flight_shards: u64,
    pub active_executions: u64,
    /// Age of the oldest execution still waiting for a runner, in ms.
    pub oldest_queued_age_ms: Option<i64>,
    /// Queued executions no registered runner could ever run (their
    /// status says why), counted over the newest 1,000 queued.
    pub unrunnable_executions: u64,
}

/// `GET /system/health`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SystemHealth {
    /// `ok`, or `degraded` when the store fails or no runner is active while work waits.
    pub status: String,
    pub store: String,
    pub queue: Option<QueueHealth>,
    pub runners: Option<RunnerCounts>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RunnerUtilization {
    pub runner_id: String,
    pub name: String,
    pub status: RunnerStatus,
    pub capacity: Resources,
    pub allocated: Resources,
    /// Allocated / capacity per dimension, 0-100.
    pub slots_pct: f64,
    pub cpu_pct: f64,
    pub memory_pct: f64,
}

/// `GET /resources/utilization`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Utilization {
    pub runners: Vec<RunnerUtilization>,
    /// Over runners that can take work (active and paused).
    pub total_capacity: Resources,
    pub total_allocated: Resources,
    /// Limit violations in the last 24 hours, newest first.
    pub violations: Vec<Violation>,
}

/// How far back `GET /resources/utilization` lists limit violations.
const VIOLATION_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Upper bound on runners walked for the summaries (pages of 500).
const MAX_SUMMARY_PAGES: usize = 20;

fn pct(used: u32, cap: u32) -> f64 {
    if cap == 0 {
        0.0
    } else {
        (f64::from(used) * 1000.0 / f64::from(cap)).round() / 10.0
    }
}

/// Queued executions looked at when counting unrunnable ones.
const UNRUNNABLE_SCAN: u32 = 1_000;

impl<P: Ports> Orchestrator<P> {
    /// How many queued executions no registered runner in `runners` could
    /// ever run.
    pub(crate) async fn unrunnable_executions(&self, runners: &[RunnerWithLoad]) -> Result<u64> {
        let rules = self.store.list_rules().await?;
        let mut count = 0;
        let mut cursor: Option<String> = None;
        for _ in 0..UNRUNNABLE_SCAN / 200 {
            let filter = ExecutionFilter {
                status: Some(ExecutionStatus::Queued),
                suite: None,
                limit: 200,
                cursor: cursor.take(),
            };
            let page = self.store.list_executions(&filter).await?;
            count += page
                .items
                .iter()
                .filter(|e| crate::scheduling::unrunnable_reason(e, runners, &rules).is_some())
                .count() as u64;
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(count)
    }

    pub(crate) async fn all_runners(&self) -> Result<Vec<RunnerWithLoad>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_SUMMARY_PAGES {
            let page = self.store.list_runners(500, cursor.as_deref()).await?;
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(out)
    }

    pub async fn system_health(&self) -> SystemHealth {
        let now = self.clock.now();
        let checked = async {
            self.store.ping().await?;
            let stats = self.store.queue_stats().await?;
            let mut counts = RunnerCounts::default();
            let runners = self.all_runners().await?;
            let unrunnable = self.unrunnable_executions(&runners).await?;
            for r in runners {
                match r.runner.status {
                    RunnerStatus::Active => counts.active += 1,
                    RunnerStatus::Paused => counts.paused += 1,
                    RunnerStatus::Unhealthy => counts.unhealthy += 1,
                    RunnerStatus::Deregistered => counts.deregistered += 1,
                }
            }
            Ok::<_, crate::Error>((stats, counts, unrunnable))
        }
        .await;
        match checked {
            Ok((stats, counts, unrunnable)) => {
                let starving = stats.queued_shards > 0 && counts.active == 0;
                SystemHealth {
                    status: if starving { "degraded" } else { "ok" }.into(),
                    store: "ok".into(),
                    queue: Some(QueueHealth {
                        queued_shards: stats.queued_shards,
                        in_flight_shards: stats.in_flight_shards,
                        active_executions: stats.active_executions,
                        oldest_queued_age_ms: stats.oldest_queued_at.map(|t| now.since(t)),
                        unrunnable_executions: unrunnable,
                    }),
                    runners: Some(counts),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "health check failed");
                SystemHealth {
                    status: "degraded".into(),
                    store: "unavailable".into(),
                    queue: None,
                    runners: None,
                }
            }
        }
    }

    pub async fn utilization(&self) -> Result<Utilization> {
        let now = self.clock.now();
        let mut total_capacity = Resources::default();
        let mut total_allocated = Resources::default();
        let mut runners = Vec::new();
        for r in self.all_runners().await? {
            if r.runner.status == RunnerStatus::Deregistered {
                continue;
            }
            if matches!(r.runner.status, RunnerStatus::Active | RunnerStatus::Paused) {
                total_capacity = total_capacity.plus(&r.runner.capacity);
            }
            total_allocated = total_allocated.plus(&r.allocated);
            let (cap, used) = (r.runner.capacity, r.allocated);
            runners.push(RunnerUtilization {
                runner_id: r.runner.id.to_string(),
                name: r.runner.name,
                status: r.runner.status,
                capacity: cap,
                allocated: used,
                slots_pct: pct(used.slots, cap.slots),
                cpu_pct: pct(used.cpu_millis, cap.cpu_millis),
                memory_pct: pct(used.memory_mb, cap.memory_mb),
            });
        }
        let violations = self
            .store
            .recent_violations(now.plus_ms(-VIOLATION_WINDOW_MS), 100)
            .await?;
        Ok(Utilization {
            runners,
            total_capacity,
            total_allocated,
            violations,
        })
    }
}

impl<P: Ports> Orchestrator<P> {
    /// `GET /metrics`: finished executions' figures per suite and per hour
    /// since `since` (`24h`, `7d` or ms since the epoch; a day by default,
    /// at most 31 days), for one suite or all.
    pub async fn metrics(&self, suite: Option<&str>, since: Option<&str>) -> Result<Metrics> {
        let now = self.clock.now();
        let since = match since {
            None => now.plus_ms(-24 * crate::domain::metrics::HOUR_MS),
            Some(raw) => parse_since(raw, now).ok_or_else(|| {
                Error::validation(
                    "since",
                    "hours or days back (24h, 7d) or ms since the epoch",
                )
            })?,
        };
        if since > now || now.since(since) > MAX_RANGE_MS {
            return Err(Error::validation(
                "since",
                "must be in the past, at most 31 days back",
            ));
        }
        let rows = self
            .store
            .metric_rollups(hour_of(since), hour_of(now))
            .await?;
        Ok(Metrics::summarize(&rows, since, now, suite))
    }
}
