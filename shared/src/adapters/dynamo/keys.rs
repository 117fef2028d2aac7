//! Every key of the single table, built in one place (`docs/data-model.md`).
//!
//! Numbers inside sort keys are zero-padded so that string order is numeric
//! order, and priority is inverted so that a forward query yields the highest
//! priority first.

use crate::time::Timestamp;

/// Partition and sort key attribute names of the table and its indexes.
pub const PK: &str = "pk";
pub const SK: &str = "sk";
/// `(index name, partition attribute, sort attribute)` of the six GSIs.
pub const GSI: [(&str, &str, &str); 6] = [
    ("gsi1", "gsi1pk", "gsi1sk"),
    ("gsi2", "gsi2pk", "gsi2sk"),
    ("gsi3", "gsi3pk", "gsi3sk"),
    ("gsi4", "gsi4pk", "gsi4sk"),
    ("gsi5", "gsi5pk", "gsi5sk"),
    ("gsi6", "gsi6pk", "gsi6sk"),
];
/// The TTL attribute (seconds since the epoch, as DynamoDB's TTL requires).
pub const EXPIRES_AT: &str = "expires_at";

pub const META: &str = "META";
/// The pending index of executions queued before it was split by
/// requirement class; still read, so none of them is left behind.
pub const PENDING: &str = "PENDING";
/// GSI2 partition of the requirement classes queued work has.
pub const CLASSES: &str = "CLASSES";
pub const LEASE: &str = "LEASE";
pub const ACTIVE: &str = "ACTIVE";
/// GSI1 partition of the unfinished dynamic executions, where runners look
/// for batches to claim.
pub const DYNAMIC: &str = "DYNAMIC";
pub const EXECS: &str = "EXECS";
pub const RUNNERS: &str = "RUNNERS";
pub const RULES: &str = "RULES";
pub const ALERT_RULES: &str = "ALERTRULES";
pub const RR_CURSORS: &str = "RRCURSORS";
pub const VIOLATIONS: &str = "VIOLATIONS";
pub const ALLOC_PREFIX: &str = "ALLOC#";
pub const SHARD_PREFIX: &str = "SHARD#";
pub const HEALTH_PREFIX: &str = "HEALTH#";

/// A timestamp as 13 digits (milliseconds; good until the year 2286).
pub fn ts(t: Timestamp) -> String {
    format!("{:013}", t.0.max(0))
}

pub fn runner(id: &str) -> String {
    format!("RUNNER#{id}")
}

/// Health records and violations live beside, not inside, the runner's item
/// collection, so the heartbeat's query of `RUNNER#<id>` reads only the runner
/// and its allocations however long its history grows.
pub fn runner_log(id: &str) -> String {
    format!("RUNNERLOG#{id}")
}

pub fn runners_with_status(status: &str) -> String {
    format!("{RUNNERS}#{status}")
}

pub fn allocation(execution: &str, index: u32) -> String {
    format!("{ALLOC_PREFIX}{execution}#{index:04}")
}

pub fn execution(id: &str) -> String {
    format!("EXEC#{id}")
}

pub fn shard(index: u32) -> String {
    format!("{SHARD_PREFIX}{index:04}")
}

pub fn execs_with_status(status: &str) -> String {
    format!("{EXECS}#{status}")
}

pub fn suite(suite: &str) -> String {
    format!("SUITE#{suite}")
}

/// GSI1 and GSI2 partition of the executions of one requirement class
/// with shards waiting for the scheduler.
pub fn pending(class: &str) -> String {
    format!("{PENDING}#{class}")
}

/// A requirement class's item: what its executions need of a runner.
pub fn class(class: &str) -> String {
    format!("CLASS#{class}")
}

/// GSI1 `PENDING#<class>` and `DYNAMIC`: highest priority first, then oldest
/// (also the dynamic listing's cursor).
pub fn pending_by_priority(priority: i32, created: Timestamp, id: &str) -> String {
    crate::ports::cursors::priority_key(priority, created, id)
}

/// GSI2 `PENDING#<class>`: oldest first (aging).
pub fn pending_by_age(created: Timestamp, id: &str) -> String {
    format!("{}#{id}", ts(created))
}

pub fn lease(deadline: Timestamp, execution: &str, index: u32) -> String {
    format!("{}#{execution}#{index:04}", ts(deadline))
}

pub fn rule(id: &str) -> String {
    format!("RULE#{id}")
}

pub fn rr_cursor(pool: &str) -> String {
    format!("RRCURSOR#{pool}")
}

pub fn token(id: &str) -> String {
    format!("TOKEN#{id}")
}

pub fn idempotency(key: &str) -> String {
    format!("IDEMP#{key}")
}

/// A suite's learned test durations: one item per test.
pub fn timings(suite: &str) -> String {
    format!("TIMING#{suite}")
}

/// A test's item in its suite's timings. Test names can be longer than a
/// sort key may be, so the key is a digest of the name (the name is in the
/// item).
pub fn timing_test(test: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(test.as_bytes());
    format!("TEST#{}", hex::encode(&digest[..16]))
}

/// An execution's per-test results, beside (not inside) its item
/// collection, so loading the execution never reads them.
pub fn results(execution: &str) -> String {
    format!("RESULTS#{execution}")
}

/// A dynamic execution's tests in claim order, beside its item collection
/// (loading the execution never reads them), in chunks of
/// [`TESTS_PER_CHUNK`].
pub fn test_queue(execution: &str) -> String {
    format!("TESTQ#{execution}")
}

pub fn test_queue_chunk(chunk: u32) -> String {
    format!("{chunk:06}")
}

/// Tests in one chunk of a test queue: at most 1 KB of name each, so a
/// chunk stays well under DynamoDB's 400 KB item.
pub const TESTS_PER_CHUNK: u32 = 256;

/// One chunk of one run's results: shard, then lease, then chunk order.
pub fn result_chunk(index: u32, lease: &str, chunk: u32) -> String {
    format!("{}{chunk:04}", result_run(index, lease))
}

/// The prefix of every chunk of one run's results.
pub fn result_run(index: u32, lease: &str) -> String {
    format!("{index:04}#{lease}#")
}

/// The partition of the metrics rollups: one item per hour and suite,
/// hour first so a range of hours is one query.
pub const METRICS: &str = "METRICS";

pub fn metric_rollup(hour: Timestamp, suite: &str) -> String {
    format!("{}#{suite}", ts(hour))
}

pub fn alert_rule(id: &str) -> String {
    format!("ALERTRULE#{id}")
}

pub fn setting(key: &str) -> String {
    format!("SETTING#{key}")
}

pub fn health(at: Timestamp, unique: &str) -> String {
    format!("{HEALTH_PREFIX}{}#{unique}", ts(at))
}

pub fn violation(at: Timestamp, unique: &str) -> String {
    format!("VIOLATION#{}#{unique}", ts(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_sorts_first_and_older_breaks_ties() {
        let a = pending_by_priority(90, Timestamp(5), "b");
        let b = pending_by_priority(10, Timestamp(1), "a");
        let c = pending_by_priority(90, Timestamp(7), "a");
        assert!(a < b && a < c && c < b);
    }

    #[test]
    fn timestamps_sort_numerically_and_a_lease_sorts_before_the_next_millisecond() {
        assert!(ts(Timestamp(999)) < ts(Timestamp(1_000)));
        assert!(lease(Timestamp(41), "exe_x", 3) < ts(Timestamp(42)));
        assert!(lease(Timestamp(42), "exe_x", 3) > ts(Timestamp(42)));
    }
}
