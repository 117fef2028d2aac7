//! Pure scheduling: queue order with aging, runner matching, the free
//! capacity a pass walks the queue with, whether any runner could ever
//! take an execution, the three
//! load-balancing strategies, the planner that combines them for one pass,
//! and shard planning (splitting tests into balanced shards).

pub mod capacity;
pub mod dynamic;
pub mod planner;
pub mod queue;
pub mod reach;
pub mod sharding;
pub mod strategy;

pub use capacity::FreeCapacity;
pub use planner::{claim_order, may_claim, may_join, plan, PlannedAssignment, SchedulingPass};
pub use reach::unrunnable_reason;
pub use sharding::{split_tests, PlannedShard};
