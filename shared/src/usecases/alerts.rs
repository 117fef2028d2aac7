//! Alert rules: created and listed over the API, evaluated by the health
//! sweep. Each evaluation is one conditional write of the rule; the write
//! that fires (or resolves) an episode is the one that announces it, so a
//! webhook hears of each episode once even when sweeps overlap. A notice
//! the webhook did not take is sent again by the next sweeps until it is.

use super::Orchestrator;
use crate::dispatch::{
    sign, HttpRequest, Method, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use crate::domain::metrics::{hour_of, HOUR_MS};
use crate::domain::{
    AlertMetric, AlertRule, AlertState, AlertTransition, AlertWebhook, Bounded, Metrics, Rollup,
};
use crate::error::{Entity, Error, Result};
use crate::ids::AlertRuleId;
use crate::ports::{HttpClient, Ports, Secrets, Store};
use crate::time::{Clock, Timestamp};
use serde::Deserialize;
use utoipa::ToSchema;

/// `POST /alert-rules`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAlertRule {
    pub name: Bounded<100>,
    pub metric: AlertMetric,
    /// Fires when the value is above this (a share for `failure_rate`).
    pub threshold: f64,
    /// `failure_rate`: hours looked back over, 1 to 24 (default 1).
    pub window_hours: Option<u32>,
    /// `failure_rate`: fewer finished runs is no signal (default 5).
    pub min_runs: Option<u32>,
    /// `failure_rate`: one suite (all suites by default).
    pub suite: Option<Bounded<256>>,
    pub webhook: Option<AlertWebhook>,
}

/// What the sweep measured once for every rule.
struct Readings {
    now: Timestamp,
    queued_shards: u64,
    oldest_queued_age_ms: Option<i64>,
    unhealthy_runners: u64,
    unrunnable_executions: u64,
    rollups: Vec<Rollup>,
}

impl Readings {
    fn value(&self, rule: &AlertRule) -> Option<f64> {
        match rule.metric {
            AlertMetric::QueueDepth => Some(self.queued_shards as f64),
            AlertMetric::OldestQueuedAgeSeconds => {
                Some(self.oldest_queued_age_ms.unwrap_or(0) as f64 / 1000.0)
            }
            AlertMetric::UnhealthyRunners => Some(self.unhealthy_runners as f64),
            AlertMetric::UnrunnableExecutions => Some(self.unrunnable_executions as f64),
            AlertMetric::FailureRate => {
                // The current hour and the whole hours before it.
                let first =
                    Timestamp(hour_of(self.now).0 - (i64::from(rule.window_hours) - 1) * HOUR_MS);
                let rows: Vec<Rollup> = self
                    .rollups
                    .iter()
                    .filter(|r| r.hour >= first)
                    .cloned()
                    .collect();
                let f = Metrics::summarize(&rows, first, self.now, rule.suite.as_deref())
                    .total
                    .figures;
                let judged = f.passed + f.failed + f.errored + f.timed_out;
                (judged >= u64::from(rule.min_runs.max(1)))
                    .then(|| (judged - f.passed) as f64 / judged as f64)
            }
        }
    }
}

impl<P: Ports> Orchestrator<P> {
    pub async fn create_alert_rule(&self, new: NewAlertRule) -> Result<AlertRule> {
        let rule = AlertRule {
            id: AlertRuleId::generate(),
            name: new.name.into(),
            metric: new.metric,
            threshold: new.threshold,
            window_hours: new.window_hours.unwrap_or(1),
            min_runs: new.min_runs.unwrap_or(5),
            suite: new.suite.map(Into::into),
            webhook: new.webhook,
            // Nothing to announce before the first episode.
            state: AlertState {
                delivered: true,
                ..AlertState::default()
            },
            created_at: self.clock.now(),
            version: 1,
        };
        rule.validate()?;
        self.store.insert_alert_rule(&rule).await?;
        Ok(rule)
    }

    /// Every rule with its state: firing or not, since when, the value.
    pub async fn alert_rules(&self) -> Result<Vec<AlertRule>> {
        self.store.list_alert_rules().await
    }

    pub async fn delete_alert_rule(&self, id: &AlertRuleId) -> Result<()> {
        if self.store.delete_alert_rule(id).await? {
            Ok(())
        } else {
            Err(Error::not_found(Entity::AlertRule, id))
        }
    }

    /// Evaluates every rule (from the health sweep, which counted the
    /// `unhealthy` runners); returns how many fired or resolved.
    pub async fn evaluate_alerts(&self, unhealthy: u64) -> Result<u32> {
        let rules = self.store.list_alert_rules().await?;
        if rules.is_empty() {
            return Ok(0);
        }
        let readings = self.readings(&rules, unhealthy).await?;
        let mut transitions = 0;
        for rule in rules {
            let mut next = rule.clone();
            let transition = next.observe(readings.value(&rule), readings.now);
            match self.store.update_alert_rule(&next, rule.version).await {
                Ok(()) => {}
                // Another sweep evaluated it meanwhile (and announced what
                // there was to announce), or it was deleted.
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
            transitions += u32::from(transition.is_some());
            if next.state.delivered || next.webhook.is_none() {
                continue;
            }
            let due = if next.state.firing {
                AlertTransition::Fired
            } else {
                AlertTransition::Resolved
            };
            let outcome = self.deliver(&next, due, readings.now).await;
            let version = next.version;
            next.state.delivered = outcome.is_ok();
            next.state.delivery_error = outcome.err();
            next.version += 1;
            if let Err(e) = self.store.update_alert_rule(&next, version).await {
                if !e.is_conflict() {
                    return Err(e);
                }
            }
        }
        Ok(transitions)
    }

    async fn readings(&self, rules: &[AlertRule], unhealthy: u64) -> Result<Readings> {
        let now = self.clock.now();
        let stats = self.store.queue_stats().await?;
        let rollups = match rules
            .iter()
            .filter(|r| r.metric == AlertMetric::FailureRate)
            .map(|r| r.window_hours)
            .max()
        {
            Some(hours) => {
                let from = Timestamp(hour_of(now).0 - (i64::from(hours) - 1) * HOUR_MS);
                self.store.metric_rollups(from, hour_of(now)).await?
            }
            None => Vec::new(),
        };
        // Read only when a rule asks: it lists runners and queued work.
        let unrunnable_executions = if rules
            .iter()
            .any(|r| r.metric == AlertMetric::UnrunnableExecutions)
        {
            let runners = self.all_runners().await?;
            self.unrunnable_executions(&runners).await?
        } else {
            0
        };
        Ok(Readings {
            now,
            unrunnable_executions,
            queued_shards: stats.queued_shards,
            oldest_queued_age_ms: stats.oldest_queued_at.map(|t| now.since(t)),
            unhealthy_runners: unhealthy,
            rollups,
        })
    }

    /// POSTs the rule's notice to its webhook, signed when it names a
    /// secret. Why it failed, if it did.
    async fn deliver(
        &self,
        rule: &AlertRule,
        transition: AlertTransition,
        now: Timestamp,
    ) -> std::result::Result<(), String> {
        let Some(hook) = &rule.webhook else {
            return Ok(());
        };
        let dashboard = self.config.public_url.as_ref().map(|u| {
            format!(
                "{}{}",
                u.trim_end_matches('/'),
                crate::http::dashboard::PATH
            )
        });
        let body = rule.notice(transition, dashboard.as_deref()).to_string();
        let timestamp = (now.0 / 1000).to_string();
        let mut headers = vec![
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (DELIVERY_HEADER.to_owned(), rule.delivery_id(transition)),
            (TIMESTAMP_HEADER.to_owned(), timestamp.clone()),
        ];
        if let Some(name) = &hook.secret {
            let secret = match self.secrets.secret(name).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(format!("the secret {} is not set", name.as_str())),
                Err(e) => return Err(format!("reading the secret {}: {e}", name.as_str())),
            };
            headers.push((
                SIGNATURE_HEADER.to_owned(),
                sign(&secret, &timestamp, &body),
            ));
        }
        let request = HttpRequest {
            method: Method::Post,
            url: hook.url.clone(),
            headers,
            body: Some(body),
        };
        match self.http.send(&request).await {
            Ok(resp) if (200..300).contains(&resp.status) => Ok(()),
            Ok(resp) => Err(format!("the webhook answered {}", resp.status)),
            Err(e) => Err(format!("the webhook could not be reached: {e}")),
        }
    }
}
