//! Ready-made domain records for tests: this crate's unit tests and, with
//! the `test-support` feature, the integration tests.

use crate::domain::{
    Execution, ExecutionStatus, Requirements, Resources, Runner, RunnerStatus, RunnerType, Shard,
    TestType, Totals,
};
use crate::ids::{ExecutionId, RunnerId};
use crate::time::Timestamp;

/// An active custom runner with `slots` slots, 8 CPUs and 16 GB.
pub fn runner(name: &str, slots: u32) -> Runner {
    Runner {
        id: RunnerId::generate(),
        name: name.into(),
        runner_type: RunnerType::Custom,
        labels: Default::default(),
        capacity: Resources::new(slots, 8000, 16384),
        priority: 0,
        status: RunnerStatus::Active,
        status_reason: None,
        registered_at: Timestamp(0),
        last_heartbeat: Timestamp(0),
        last_usage: None,
        dispatch: None,
        silence_limit_ms: None,
        scope: crate::domain::Scope::any(),
        token_hash: String::new(),
        version: 1,
    }
}

/// A queued unit-test execution of suite `s` with `shards` shards, created at 0.
pub fn execution(shards: u32) -> Execution {
    Execution {
        id: ExecutionId::generate(),
        suite: "s".into(),
        status: ExecutionStatus::Queued,
        status_reason: None,
        priority: 50,
        requirements: Requirements::default(),
        test_type: TestType::Unit,
        timeout_seconds: 600,
        shard_timeout_seconds: 600,
        max_attempts: 3,
        ci: None,
        mode: Default::default(),
        retries: None,
        retries_used: 0,
        strict: false,
        metadata: Default::default(),
        created_at: Timestamp(0),
        updated_at: Timestamp(0),
        started_at: None,
        finished_at: None,
        deadline: Timestamp(600_000),
        shard_count: shards,
        test_count: shards,
        totals: Totals::default(),
        webhook_token_hashes: vec![],
        counted: false,
        dispenser: None,
        returned: Vec::new(),
        version: 1,
    }
}

/// The execution's queued shards, one test (`t<index>`) each.
pub fn shards(execution: &Execution) -> Vec<Shard> {
    (0..execution.shard_count)
        .map(|i| {
            Shard::new(
                execution.id.clone(),
                &execution.suite,
                i,
                vec![format!("t{i}")],
                None,
            )
        })
        .collect()
}
