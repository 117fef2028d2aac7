//! Capacity arithmetic shared by runners, requirements and allocations.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Slots, CPU (millicores) and memory (MB): what a runner offers or a shard takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub slots: u32,
    pub cpu_millis: u32,
    pub memory_mb: u32,
}

impl Resources {
    pub const fn new(slots: u32, cpu_millis: u32, memory_mb: u32) -> Self {
        Resources {
            slots,
            cpu_millis,
            memory_mb,
        }
    }

    /// True when `need` fits inside `self` on every dimension.
    pub fn covers(&self, need: &Resources) -> bool {
        self.slots >= need.slots
            && self.cpu_millis >= need.cpu_millis
            && self.memory_mb >= need.memory_mb
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            slots: self.slots.saturating_add(other.slots),
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
        }
    }

    /// Never below zero: releasing more than was taken is clamped, not wrapped.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            slots: self.slots.saturating_sub(other.slots),
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn res() -> impl Strategy<Value = Resources> {
        (0u32..64, 0u32..64_000, 0u32..128_000).prop_map(|(s, c, m)| Resources::new(s, c, m))
    }

    proptest! {
        #[test]
        fn taking_then_releasing_the_same_resources_restores_the_start(a in res(), b in res()) {
            prop_assert_eq!(a.plus(&b).minus(&b), a);
        }

        #[test]
        fn what_is_left_after_taking_a_fitting_need_is_never_negative(cap in res(), need in res()) {
            if cap.covers(&need) {
                prop_assert!(cap.minus(&need).plus(&need) == cap);
            }
        }
    }
}
