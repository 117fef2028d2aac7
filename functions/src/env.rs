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
use tms::domain::AllowedHosts;
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
/// The dispatch queue's URL (`!Ref DispatchQueue`): the scheduler sends
/// dispatch orders there for push-mode runners.
pub const DISPATCH_QUEUE_URL: &str = "TMS_DISPATCH_QUEUE_URL";
/// The Secrets Manager prefix of dispatch credentials (`tms/<stage>/dispatch/`).
pub const DISPATCH_SECRET_PREFIX: &str = "TMS_DISPATCH_SECRET_PREFIX";
/// The API's public URL, which dispatched CI jobs report to (dispatcher only).
pub const PUBLIC_URL: &str = "TMS_PUBLIC_URL";
/// Dispatch attempts per lease: the dispatch queue's `maxReceiveCount`.
pub const DISPATCH_MAX_ATTEMPTS: &str = "TMS_DISPATCH_MAX_ATTEMPTS";
/// Hosts besides the platforms' own that dispatch credentials may go to,
/// comma-separated (`DispatchAllowedHosts`; optional, none by default).
pub const DISPATCH_ALLOWED_HOSTS: &str = "TMS_DISPATCH_ALLOWED_HOSTS";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("environment variable {0} is missing or empty")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("cannot read the admin token secret: {0}")]
    AdminSecret(String),
    #[error("cannot start: {0}")]
    Start(#[from] tms::Error),
}

/// A function's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionEnv {
    pub resources: AwsResources,
    /// Set for the API functions, which authenticate callers.
    pub admin_token_secret_arn: Option<String>,
    pub heartbeat_interval_secs: Option<u64>,
    pub public_url: Option<String>,
    pub dispatch_max_attempts: Option<u32>,
    pub dispatch_allowed_hosts: AllowedHosts,
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
        let optional = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        let positive = |name: &'static str| {
            optional(name)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| SettingsError::Invalid {
                            name,
                            reason: format!("{v:?} is not a positive number"),
                        })
                })
                .transpose()
        };
        let public_url = optional(PUBLIC_URL)
            .map(|v| {
                let v = v.trim().trim_end_matches('/').to_owned();
                if v.starts_with("https://") || v.starts_with("http://") {
                    Ok(v)
                } else {
                    Err(SettingsError::Invalid {
                        name: PUBLIC_URL,
                        reason: format!("{v:?} is not an http(s) URL"),
                    })
                }
            })
            .transpose()?;
        let dispatch_allowed_hosts = AllowedHosts::parse(
            optional(DISPATCH_ALLOWED_HOSTS)
                .as_deref()
                .unwrap_or("")
                .split(','),
        )
        .map_err(|e| SettingsError::Invalid {
            name: DISPATCH_ALLOWED_HOSTS,
            reason: e.to_string(),
        })?;
        Ok(FunctionEnv {
            resources: AwsResources {
                table: required(TABLE)?,
                schedule_queue_url: required(SCHEDULE_QUEUE_URL)?,
                dispatch_queue_url: required(DISPATCH_QUEUE_URL)?,
                event_bus: required(EVENT_BUS)?,
                secret_prefix: required(DISPATCH_SECRET_PREFIX)?,
            },
            admin_token_secret_arn: if needs_admin_token {
                Some(required(ADMIN_TOKEN_SECRET_ARN)?)
            } else {
                None
            },
            heartbeat_interval_secs: positive(HEARTBEAT_INTERVAL)?.map(u64::from),
            public_url,
            dispatch_max_attempts: positive(DISPATCH_MAX_ATTEMPTS)?,
            dispatch_allowed_hosts,
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
        if let Some(n) = self.dispatch_max_attempts {
            config.dispatch_max_attempts = n;
        }
        config.public_url = self.public_url.clone();
        config.dispatch_allowed_hosts = self.dispatch_allowed_hosts.clone();
        Ok(Arc::new(
            self.resources
                .orchestrator(clients, clock, config, admin_hash)?,
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

    const BASE: [(&str, &str); 5] = [
        (TABLE, "tms-dev"),
        (SCHEDULE_QUEUE_URL, "http://sqs/q"),
        (DISPATCH_QUEUE_URL, "http://sqs/d"),
        (DISPATCH_SECRET_PREFIX, "tms/dev/dispatch/"),
        (EVENT_BUS, "tms-dev"),
    ];

    #[test]
    fn a_missing_variable_fails_with_its_name() {
        let err = FunctionEnv::from_lookup(false, vars(&BASE[..4])).unwrap_err();
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
    fn bad_numbers_and_urls_are_refused_with_their_names() {
        for (name, value) in [
            (HEARTBEAT_INTERVAL, "soon"),
            (DISPATCH_MAX_ATTEMPTS, "0"),
            (PUBLIC_URL, "tms.example.com"),
            (DISPATCH_ALLOWED_HOSTS, "https://ghe.example.com/api"),
        ] {
            let mut pairs = BASE.to_vec();
            pairs.push((name, value));
            assert!(
                matches!(
                    FunctionEnv::from_lookup(false, vars(&pairs)),
                    Err(SettingsError::Invalid { name: n, .. }) if n == name
                ),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn the_dispatcher_settings_are_read() {
        let mut pairs = BASE.to_vec();
        pairs.push((
            PUBLIC_URL,
            "https://abc.execute-api.us-east-1.amazonaws.com/",
        ));
        pairs.push((DISPATCH_MAX_ATTEMPTS, "5"));
        pairs.push((
            DISPATCH_ALLOWED_HOSTS,
            "ghe.example.com, jenkins.example.com:8443",
        ));
        let env = FunctionEnv::from_lookup(false, vars(&pairs)).unwrap();
        assert_eq!(
            env.dispatch_allowed_hosts.iter().collect::<Vec<_>>(),
            ["ghe.example.com", "jenkins.example.com:8443"]
        );
        assert_eq!(
            env.public_url.as_deref(),
            Some("https://abc.execute-api.us-east-1.amazonaws.com")
        );
        assert_eq!(env.dispatch_max_attempts, Some(5));
        assert_eq!(env.resources.secret_prefix, "tms/dev/dispatch/");
    }
}
