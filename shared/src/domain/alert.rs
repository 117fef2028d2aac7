//! Alert rules: a threshold on a metric or on health, evaluated by the
//! health sweep. A rule fires when its value goes above the threshold and
//! resolves when it comes back; each of those is one conditional write of
//! the rule (its version), so an episode is announced once however many
//! sweeps run, or run at once.

use super::SecretName;
use crate::error::{Error, Result};
use crate::ids::AlertRuleId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertMetric {
    /// Shards waiting for a runner.
    QueueDepth,
    /// Seconds the oldest waiting execution has waited.
    OldestQueuedAgeSeconds,
    /// Runners that stopped heartbeating.
    UnhealthyRunners,
    /// Queued executions no registered runner could ever run (labels,
    /// runner type or size no runner has).
    UnrunnableExecutions,
    /// Share (0 to 1) of finished executions that did not pass, over
    /// `window_hours` (of one suite, or all); none below `min_runs` runs.
    FailureRate,
}

/// Where a firing or resolved alert is POSTed: JSON signed with
/// HMAC-SHA256 (`X-TMS-Signature-256`) when a secret is named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhook {
    pub url: String,
    /// The signing secret's name (an environment variable locally, a
    /// Secrets Manager secret on AWS).
    #[schema(value_type = Option<String>)]
    pub secret: Option<SecretName>,
}

/// A rule's current state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertState {
    pub firing: bool,
    /// When the current episode (firing or not) began.
    #[schema(value_type = Option<i64>)]
    pub since: Option<Timestamp>,
    /// The value at the last evaluation (none: not enough data).
    pub value: Option<f64>,
    #[schema(value_type = Option<i64>)]
    pub evaluated_at: Option<Timestamp>,
    /// Episodes fired so far; the current one's number while firing.
    pub episodes: u32,
    /// Whether the webhook took the current episode's last notice.
    pub delivered: bool,
    /// Why the last delivery failed.
    pub delivery_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertRule {
    #[schema(value_type = String)]
    pub id: AlertRuleId,
    pub name: String,
    pub metric: AlertMetric,
    /// Fires when the value is above this.
    pub threshold: f64,
    /// `failure_rate` only: the hours looked back over (1 to 24).
    pub window_hours: u32,
    /// `failure_rate` only: fewer finished runs than this is no signal.
    pub min_runs: u32,
    /// `failure_rate` only: one suite's runs (all suites when absent).
    pub suite: Option<String>,
    pub webhook: Option<AlertWebhook>,
    pub state: AlertState,
    #[schema(value_type = i64)]
    pub created_at: Timestamp,
    pub version: u64,
}

/// What an evaluation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertTransition {
    Fired,
    Resolved,
}

impl AlertTransition {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertTransition::Fired => "fired",
            AlertTransition::Resolved => "resolved",
        }
    }
}

impl AlertRule {
    /// Checks a new rule's fields.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return Err(Error::validation("name", "1 to 100 characters"));
        }
        if self.suite.as_ref().is_some_and(|s| s.len() > 256) {
            return Err(Error::validation("suite", "at most 256 characters"));
        }
        if !self.threshold.is_finite() || self.threshold < 0.0 {
            return Err(Error::validation("threshold", "a number of at least 0"));
        }
        if self.metric == AlertMetric::FailureRate && self.threshold >= 1.0 {
            return Err(Error::validation(
                "threshold",
                "a failure rate is a share below 1 (0.2 = 20 %)",
            ));
        }
        if !(1..=24).contains(&self.window_hours) {
            return Err(Error::validation("window_hours", "1 to 24"));
        }
        if let Some(w) = &self.webhook {
            let ok = (w.url.starts_with("https://") || w.url.starts_with("http://"))
                && w.url.len() <= 2048
                && url::Url::parse(&w.url).is_ok();
            if !ok {
                return Err(Error::validation(
                    "webhook.url",
                    "an http(s) URL of at most 2048 characters",
                ));
            }
            if let Some(secret) = &w.secret {
                secret.check_namespace("webhook.secret")?;
            }
        }
        Ok(())
    }

    /// Records an evaluation; says whether it fired or resolved the alert.
    /// No value (not enough data) counts as not above the threshold.
    pub fn observe(&mut self, value: Option<f64>, now: Timestamp) -> Option<AlertTransition> {
        let above = value.is_some_and(|v| v > self.threshold);
        let s = &mut self.state;
        s.value = value;
        s.evaluated_at = Some(now);
        let transition = match (s.firing, above) {
            (false, true) => {
                s.episodes += 1;
                Some(AlertTransition::Fired)
            }
            (true, false) => Some(AlertTransition::Resolved),
            _ => None,
        };
        if transition.is_some() {
            s.firing = above;
            s.since = Some(now);
            s.delivered = self.webhook.is_none();
            s.delivery_error = None;
        }
        self.version += 1;
        transition
    }

    /// The JSON a webhook receives about the current episode.
    pub fn notice(
        &self,
        transition: AlertTransition,
        dashboard: Option<&str>,
    ) -> serde_json::Value {
        serde_json::json!({
            "type": format!("alert.{}", transition.as_str()),
            "rule": {
                "id": self.id,
                "name": self.name,
                "metric": self.metric,
                "threshold": self.threshold,
                "suite": self.suite,
            },
            "value": self.state.value,
            "episode": self.state.episodes,
            "since": self.state.since.map(|t| t.0),
            "since_rfc3339": self.state.since.map(|t| t.to_rfc3339()),
            "dashboard": dashboard,
        })
    }

    /// Unique per episode and transition: a receiver drops duplicates by it.
    pub fn delivery_id(&self, transition: AlertTransition) -> String {
        format!(
            "{}.{}.{}",
            self.id,
            self.state.episodes,
            transition.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: f64) -> AlertRule {
        AlertRule {
            id: AlertRuleId::generate(),
            name: "queue".into(),
            metric: AlertMetric::QueueDepth,
            threshold,
            window_hours: 1,
            min_runs: 5,
            suite: None,
            webhook: None,
            state: AlertState::default(),
            created_at: Timestamp(0),
            version: 1,
        }
    }

    #[test]
    fn an_alert_fires_once_per_episode_and_resolves_once() {
        let mut r = rule(10.0);
        let seen: Vec<_> = [5.0, 11.0, 12.0, 30.0, 10.0, 9.0, 11.0]
            .iter()
            .enumerate()
            .map(|(i, v)| r.observe(Some(*v), Timestamp(i as i64)))
            .collect();
        use AlertTransition::*;
        assert_eq!(
            seen,
            vec![
                None,
                Some(Fired),
                None,
                None,
                Some(Resolved),
                None,
                Some(Fired)
            ]
        );
        assert_eq!(r.state.episodes, 2);
        assert_eq!(r.state.since, Some(Timestamp(6)));
    }

    #[test]
    fn no_data_resolves_and_never_fires() {
        let mut r = rule(0.0);
        assert_eq!(r.observe(None, Timestamp(1)), None);
        assert_eq!(
            r.observe(Some(1.0), Timestamp(2)),
            Some(AlertTransition::Fired)
        );
        assert_eq!(
            r.observe(None, Timestamp(3)),
            Some(AlertTransition::Resolved)
        );
    }

    #[test]
    fn a_failure_rate_threshold_is_a_share() {
        let mut r = rule(1.5);
        r.metric = AlertMetric::FailureRate;
        assert!(r.validate().is_err());
        r.threshold = 0.2;
        assert!(r.validate().is_ok());
        r.webhook = Some(AlertWebhook {
            url: "ftp://x".into(),
            secret: None,
        });
        assert!(r.validate().is_err());
    }
}
