//! The pure domain: entities, their state machines and the rules that derive
//! one state from another. Nothing here does I/O or reads the clock; callers
//! pass `now` in.

pub mod alert;
pub mod allocation;
pub mod bounded;
pub mod dispatch;
pub mod execution;
pub mod health;
pub mod metrics;
pub mod resources;
pub mod results;
pub mod rule;
pub mod runner;
pub mod shard;
pub mod timing;

pub use alert::{AlertMetric, AlertRule, AlertState, AlertTransition, AlertWebhook};
pub use allocation::Allocation;
pub use bounded::Bounded;
pub use dispatch::{AllowedHosts, DispatchTarget, SecretName, SECRET_ENV_PREFIX};
pub use execution::{
    Affinity, Busy, CiMetadata, Dispenser, Execution, ExecutionStatus, Mode, Requirements,
    RetryPolicy, TestSpec, TestType, Totals,
};
pub use health::{HealthRecord, Usage, Violation};
pub use metrics::{Metrics, Rollup};
pub use resources::Resources;
pub use results::{MergedTest, ResultChunk, TestAttempt};
pub use rule::{LoadBalancingRule, RunnerPool, Strategy};
pub use runner::{Runner, RunnerStatus, RunnerType, RunnerWithLoad, Scope};
pub use shard::{
    AttemptRecord, JunitName, Shard, ShardOutcome, ShardResult, ShardStatus, TestResult, TestStatus,
};
pub use timing::TestTiming;
