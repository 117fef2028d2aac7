//! Orchestrator settings with the defaults a CI user would expect.

use crate::domain::{AllowedHosts, Strategy, TestType};

/// Default CPU and memory per shard for one test type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDefaults {
    pub cpu_millis: u32,
    pub memory_mb: u32,
}

/// [`Config::dispatch_attempt_budget_ms`]'s default: 20 s, inside the
/// dispatcher function's 30 s timeout with room for its reads and writes.
pub const DISPATCH_ATTEMPT_BUDGET_MS: u64 = 20_000;

#[derive(Debug, Clone)]
pub struct Config {
    /// How often runners are expected to heartbeat.
    pub heartbeat_interval_secs: u64,
    /// A runner silent for this many of its heartbeat intervals is
    /// unhealthy.
    pub missed_heartbeats: u32,
    /// A runner unhealthy (silent) this long is removed (deregistered, its
    /// history kept): stopped agents do not stay listed, or count in
    /// capacity and the dashboard's banner, for ever.
    pub runner_retention_secs: u64,
    /// One point of priority is added per this much waiting.
    pub aging_step_ms: i64,
    pub default_strategy: Strategy,
    pub default_priority: i32,
    pub default_timeout_secs: u64,
    pub default_max_attempts: u32,
    pub max_parallelism: u32,
    pub max_tests: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl_secs: u64,
    /// How long the jobs of one CI build (and their retries) find the
    /// execution the build queued (CI platforms let a run be re-run for
    /// weeks: GitHub Actions for 30 days).
    pub ci_key_ttl_secs: u64,
    /// Dynamic mode: what a batch is taken to cost besides its tests (a
    /// claim and a test-process start) until an execution's reports have
    /// measured it; batches hold at least ten times that
    /// ([`crate::scheduling::dynamic`]).
    pub dynamic_batch_overhead_ms: u64,
    /// Batch size of each sweep query.
    pub sweep_batch: u32,
    /// The API's public base URL (`https://tms.example.com`), which
    /// dispatched CI jobs report to. Push-mode dispatch needs it.
    pub public_url: Option<String>,
    /// Hosts besides the platforms' own that dispatch credentials may go
    /// to (GitHub Enterprise, self-managed GitLab, Jenkins, webhooks).
    pub dispatch_allowed_hosts: AllowedHosts,
    /// Browser origins (`https://ci.example.com`) allowed to call the API
    /// from their pages. None by default: the dashboard is served from the
    /// API's own origin and needs no CORS, and a token in a page of another
    /// origin is that origin's to leak.
    pub cors_origins: Vec<String>,
    /// Attempts at dispatching one lease before the shard goes to another
    /// runner (on AWS: the dispatch queue's `maxReceiveCount`).
    pub dispatch_max_attempts: u32,
    /// The first retry's delay; each next one doubles, up to 5 minutes.
    pub dispatch_backoff_ms: u64,
    /// The most one dispatch attempt spends asking the platform, all its
    /// requests together; it must end well inside the dispatcher
    /// function's timeout (template.yaml), or Lambda stops the attempt with
    /// no record of how far it got.
    pub dispatch_attempt_budget_ms: u64,
    pub unit: ResourceDefaults,
    pub integration: ResourceDefaults,
    pub e2e: ResourceDefaults,
    pub performance: ResourceDefaults,
}

impl Config {
    pub fn resource_defaults(&self, test_type: TestType) -> ResourceDefaults {
        match test_type {
            TestType::Unit => self.unit,
            TestType::Integration => self.integration,
            TestType::E2e => self.e2e,
            TestType::Performance => self.performance,
        }
    }

    pub fn resource_defaults_mut(&mut self, test_type: TestType) -> &mut ResourceDefaults {
        match test_type {
            TestType::Unit => &mut self.unit,
            TestType::Integration => &mut self.integration,
            TestType::E2e => &mut self.e2e,
            TestType::Performance => &mut self.performance,
        }
    }

    /// How long to wait before dispatch attempt `attempt + 1`.
    pub fn dispatch_backoff(&self, attempt: u32) -> std::time::Duration {
        let ms = self
            .dispatch_backoff_ms
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        std::time::Duration::from_millis(ms.min(300_000))
    }

    /// Milliseconds of silence after which a runner is unhealthy.
    pub fn silence_limit_ms(&self) -> i64 {
        (self.heartbeat_interval_secs * u64::from(self.missed_heartbeats) * 1000) as i64
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval_secs: 30,
            missed_heartbeats: 3,
            runner_retention_secs: 24 * 3600,
            aging_step_ms: 30_000,
            default_strategy: Strategy::ResourceBased,
            default_priority: 50,
            default_timeout_secs: 3600,
            default_max_attempts: 3,
            max_parallelism: 64,
            max_tests: 20_000,
            idempotency_ttl_secs: 24 * 3600,
            ci_key_ttl_secs: 30 * 24 * 3600,
            dynamic_batch_overhead_ms: 500,
            sweep_batch: 100,
            public_url: None,
            dispatch_allowed_hosts: AllowedHosts::default(),
            cors_origins: Vec::new(),
            dispatch_max_attempts: 5,
            dispatch_backoff_ms: 5_000,
            dispatch_attempt_budget_ms: DISPATCH_ATTEMPT_BUDGET_MS,
            unit: ResourceDefaults {
                cpu_millis: 500,
                memory_mb: 512,
            },
            integration: ResourceDefaults {
                cpu_millis: 1000,
                memory_mb: 1024,
            },
            e2e: ResourceDefaults {
                cpu_millis: 2000,
                memory_mb: 2048,
            },
            performance: ResourceDefaults {
                cpu_millis: 4000,
                memory_mb: 4096,
            },
        }
    }
}
