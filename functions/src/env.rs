//! Each function's settings, read from the environment the template gives
//! it, once, at cold start. A missing or empty variable fails the cold start
//! with its name, instead of failing requests later.
//!
//! The SDK's own variables (`AWS_REGION`, credentials, and `AWS_ENDPOINT_URL`
//! for moto or LocalStack) are read by the SDK's default chain.

use crate::App;

use std::sync::Arc;
use tms::adapters::aws::{sdk_config, AwsClients, AwsPorts, AwsResources};
use tms::config::Config;
use tms::time::{Clock, SystemClock};
use tms::usecases::Orchestrator;

/// The DynamoDB table (`!Ref Table`).
pub const TABLE: &str = "TMS_TABLE";
/// The schedule queue's URL (`!Ref ScheduleQueue`).
pub const SCHEDULE_QUEUE_URL: &str = "TMS_SCHEDULE_QUEUE_URL";
/// The event bus's name (`!Ref EventBus`).
pub const EVENT_BUS: &str = "TMS_EVENT_BUS";
/// The Secrets Manager secret holding the admin token (API functions only).
pub const ADMIN_TOKEN_SECRET_ARN: &str = "TMS_ADMIN_TOKEN_SECRET_ARN";
/// Seconds between runner heartbeats (optional; the default otherwise).
pub const HEARTBEAT_INTERVAL: &str = "TMS_HEARTBEAT_INTERVAL_SECONDS";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("environment variable {0} is missing or empty")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("cannot read the admin token secret: {0}")]
    AdminSecret(String),
}

/// A function's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionEnv {
    pub resources: AwsResources,
    /// Set for the API functions, which authenticate callers.
    pub admin_token_secret_arn: Option<String>,
    pub heartbeat_interval_secs: Option<u64>,
}

impl FunctionEnv {
    /// From the process environment.
    pub fn from_process(needs_admin_token: bool) -> Result<Self, SettingsError> {
        Self::from_lookup(needs_admin_token, |name| std::env::var(name).ok())
    }

    /// From any source of variables (the emulator test passes the template's).
    pub fn from_lookup(
        needs_admin_token: bool,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(SettingsError::Missing(name))
        };
        let heartbeat_interval_secs = lookup(HEARTBEAT_INTERVAL)
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| SettingsError::Invalid {
                        name: HEARTBEAT_INTERVAL,
                        reason: format!("{v:?} is not a positive number of seconds"),
                    })
            })
            .transpose()?;
        Ok(FunctionEnv {
            resources: AwsResources {
                table: required(TABLE)?,
                schedule_queue_url: required(SCHEDULE_QUEUE_URL)?,
                event_bus: required(EVENT_BUS)?,
            },
            admin_token_secret_arn: if needs_admin_token {
                Some(required(ADMIN_TOKEN_SECRET_ARN)?)
            } else {
                None
            },
            heartbeat_interval_secs,
        })
    }

    /// The orchestrator on these settings, on AWS as the environment's SDK
    /// settings point to, with the system clock.
    pub async fn app(&self) -> Result<App, SettingsError> {
        let clients = AwsClients::new(&sdk_config(None).await);
        self.orchestrator(&clients, SystemClock).await
    }

    /// The orchestrator on these settings with the given clients and clock.
    /// The admin token is read from Secrets Manager once, and only its hash
    /// is kept.
    pub async fn orchestrator<C: Clock>(
        &self,
        clients: &AwsClients,
        clock: C,
    ) -> Result<Arc<Orchestrator<AwsPorts<C>>>, SettingsError> {
        let admin_hash = match &self.admin_token_secret_arn {
            Some(arn) => {
                let secret = clients
                    .secrets
                    .get_secret_value()
                    .secret_id(arn)
                    .send()
                    .await
                    .map_err(|e| {
                        SettingsError::AdminSecret(
                            aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
                        )
                    })?;
                let token = secret
                    .secret_string()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| SettingsError::AdminSecret(format!("{arn} holds no token")))?;
                tms::auth::hash(token)
            }
            // Functions that authenticate nobody get a hash no token has.
            None => String::new(),
        };
        let mut config = Config::default();
        if let Some(secs) = self.heartbeat_interval_secs {
            config.heartbeat_interval_secs = secs;
        }
        Ok(Arc::new(
            self.resources
                .orchestrator(clients, clock, config, admin_hash),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const BASE: [(&str, &str); 3] = [
        (TABLE, "tms-dev"),
        (SCHEDULE_QUEUE_URL, "http://sqs/q"),
        (EVENT_BUS, "tms-dev"),
    ];

    #[test]
    fn a_missing_variable_fails_with_its_name() {
        let err = FunctionEnv::from_lookup(false, vars(&BASE[..2])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable TMS_EVENT_BUS is missing or empty"
        );
    }

    #[test]
    fn api_functions_need_the_admin_token_secret() {
        assert!(matches!(
            FunctionEnv::from_lookup(true, vars(&BASE)),
            Err(SettingsError::Missing(ADMIN_TOKEN_SECRET_ARN))
        ));
        let env = FunctionEnv::from_lookup(false, vars(&BASE)).unwrap();
        assert_eq!(env.resources.table, "tms-dev");
        assert_eq!(env.admin_token_secret_arn, None);
    }

    #[test]
    fn a_bad_heartbeat_interval_is_refused() {
        let mut pairs = BASE.to_vec();
        pairs.push((HEARTBEAT_INTERVAL, "soon"));
        assert!(matches!(
            FunctionEnv::from_lookup(false, vars(&pairs)),
            Err(SettingsError::Invalid { .. })
        ));
    }
}
