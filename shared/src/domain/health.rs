//! Runner health history and resource-limit violations.

use super::resources::Resources;
use super::runner::RunnerStatus;
use crate::ids::RunnerId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a runner says it actually uses, reported with a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub cpu_millis: u32,
    pub memory_mb: u32,
}

/// One change in a runner's health, kept as history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthRecord {
    #[schema(value_type = String)]
    pub runner_id: RunnerId,
    #[schema(value_type = i64)]
    pub at: Timestamp,
    pub status: RunnerStatus,
    pub reason: String,
}

/// A runner used more than TMS allocated on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Violation {
    #[schema(value_type = String)]
    pub runner_id: RunnerId,
    #[schema(value_type = i64)]
    pub at: Timestamp,
    pub allocated: Resources,
    pub used: Usage,
    /// Which dimensions were exceeded: `cpu`, `memory`.
    pub exceeded: Vec<String>,
}

impl Violation {
    /// Compares reported usage with the allocation; `None` when within limits.
    pub fn check(
        runner_id: &RunnerId,
        at: Timestamp,
        allocated: Resources,
        used: Usage,
    ) -> Option<Violation> {
        let mut exceeded = Vec::new();
        if used.cpu_millis > allocated.cpu_millis {
            exceeded.push("cpu".to_owned());
        }
        if used.memory_mb > allocated.memory_mb {
            exceeded.push("memory".to_owned());
        }
        (!exceeded.is_empty()).then(|| Violation {
            runner_id: runner_id.clone(),
            at,
            allocated,
            used,
            exceeded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_over_the_allocation_names_each_exceeded_dimension() {
        let id = RunnerId::generate();
        let alloc = Resources::new(1, 1000, 1024);
        let v = Violation::check(
            &id,
            Timestamp(1),
            alloc,
            Usage {
                cpu_millis: 1500,
                memory_mb: 2048,
            },
        )
        .unwrap();
        assert_eq!(v.exceeded, vec!["cpu", "memory"]);
        assert!(Violation::check(
            &id,
            Timestamp(1),
            alloc,
            Usage {
                cpu_millis: 1000,
                memory_mb: 10
            }
        )
        .is_none());
    }
}
