//! Allocations: the resources one shard holds on one runner while it runs.

use super::resources::Resources;
use crate::ids::{ExecutionId, LeaseId, RunnerId};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Written in the same atomic step as the assignment and deleted in the same
/// step as the release, so the sum of a runner's allocations always equals its
/// allocated capacity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub runner_id: RunnerId,
    pub execution_id: ExecutionId,
    pub shard_index: u32,
    pub lease_id: LeaseId,
    pub resources: Resources,
    pub allocated_at: Timestamp,
}
