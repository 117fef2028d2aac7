//! Dynamic mode's batches, cut when a runner claims rather than when the
//! execution is queued.
//!
//! Why at claim time: a plan cut at queue time guesses how the run will go.
//! Its last batches were all the floor's size, so runners finished spread
//! over that window, and the runner that had drawn the longest test could
//! still take one more. At claim time the server knows what is left and
//! when each runner holding a batch is expected to be free (the time it
//! claimed plus its batch's estimate). The runner claiming now fills up to
//! the level where all runners would end together, so it never takes work
//! that would make it end after the others.
//!
//! The rule (guided self-scheduling over the whole outstanding work, with a
//! floor that never crosses the balanced end): the *level* is when every
//! runner would be done if the work not yet handed out were poured onto the
//! runners, each from the time it is expected to be free. A batch is half
//! of what this runner can take before the level, or, when that is less
//! than the floor, the floor, but never more than the level itself, and at
//! least one test. Early batches are large (few claims); near the end they
//! shrink to single tests that fill the gaps while the others finish.

use crate::domain::{Dispenser, TestSpec};
use crate::ids::RunnerId;
use crate::time::Timestamp;

/// The most test-name bytes one batch carries: a batch is a shard item,
/// and DynamoDB items hold at most 400 KB.
pub const MAX_BATCH_NAME_BYTES: usize = 256 * 1024;

/// When every runner would be done (ms from now) if `left` ms of work were
/// poured onto `runners` runners that are free after `busy` ms each (the
/// runners not listed are free now): the water level.
pub fn level(left: u64, runners: usize, busy: &[u64]) -> u64 {
    let mut loads: Vec<u64> = busy.to_vec();
    loads.resize(runners.max(busy.len()).max(1), 0);
    loads.sort_unstable();
    // Fill the k least loaded runners up to one level; the level is right
    // once it is no higher than the next runner's load.
    let mut sum = 0u64;
    for k in 1..=loads.len() {
        sum += loads[k - 1];
        let level = (left + sum).div_ceil(k as u64);
        if k == loads.len() || level <= loads[k] {
            return level;
        }
    }
    left
}

/// A batch is at least this many times what one batch costs besides its
/// tests (the claim's round trip, starting the test process, collecting
/// tests), so that cost stays a tenth of the work or less, except at the
/// very end, where a smaller batch ends sooner.
pub const BATCH_COST_FACTOR: u64 = 10;

/// How much estimated work (ms) the batch of a runner claiming `now`
/// should hold (see the module docs). `default_overhead_ms` is what a
/// batch is assumed to cost besides its tests until the execution's
/// reports have measured it.
pub fn batch_target(
    dispenser: &Dispenser,
    claimer: &RunnerId,
    now: Timestamp,
    default_overhead_ms: u64,
    forget_after_ms: i64,
) -> u64 {
    // The others' expected free times; runners silent past the limit are
    // gone, and a runner whose batch should have ended is about to claim.
    let busy: Vec<u64> = dispenser
        .busy
        .iter()
        .filter(|b| &b.runner != claimer && now.since(b.until) <= forget_after_ms)
        .map(|b| b.until.since(now).max(0) as u64)
        .collect();
    let runners = (dispenser.runners as usize).max(busy.len() + 1);
    let horizon = level(dispenser.left_ms, runners, &busy);
    let floor = if dispenser.hinted {
        BATCH_COST_FACTOR * dispenser.overhead_ms.unwrap_or(default_overhead_ms)
    } else {
        1
    };
    (horizon / 2).max(floor.min(horizon)).max(1)
}

/// How many of `next` (the tests from the cursor on, in claim order,
/// with their weights) make the batch: filled up to `target` ms (short of
/// it by less than one test), at least one test, at most `max_tests` and
/// [`MAX_BATCH_NAME_BYTES`] of names. Returns the count and their weight.
pub fn batch_len<'a>(
    next: impl IntoIterator<Item = &'a TestSpec>,
    target: u64,
    max_tests: Option<u32>,
) -> (usize, u64) {
    let max_tests = max_tests.map_or(usize::MAX, |m| m.max(1) as usize);
    let (mut count, mut load, mut bytes) = (0usize, 0u64, 0usize);
    for t in next {
        let w = t.duration_hint_ms.unwrap_or(1);
        if count > 0
            && (load + w > target
                || count >= max_tests
                || bytes + t.name.len() > MAX_BATCH_NAME_BYTES)
        {
            break;
        }
        count += 1;
        load += w;
        bytes += t.name.len();
    }
    (count, load)
}

/// The tests of a dynamic execution in the order runners take them:
/// longest first (ties by name), each with its weight: its hint, else the
/// median of the hinted ones, else 1 when none is hinted (a split by
/// count). Whether any was hinted.
pub fn claim_order(tests: &[TestSpec]) -> (bool, Vec<TestSpec>) {
    let (hinted, weighted) = super::sharding::longest_first(tests);
    let ordered = weighted
        .into_iter()
        .map(|(w, name)| TestSpec {
            name: name.to_owned(),
            duration_hint_ms: Some(w),
        })
        .collect();
    (hinted, ordered)
}

/// The expected free time of a runner that claims `weight` ms of work now.
pub fn busy_until(now: Timestamp, weight: u64, hinted: bool) -> Timestamp {
    // Without durations the weights are test counts: nothing is known of
    // when the runner is done.
    if hinted {
        now.plus_ms(weight as i64)
    } else {
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Busy;
    use proptest::prelude::*;

    fn dispenser(left_ms: u64, runners: u32, busy: &[(&RunnerId, i64)]) -> Dispenser {
        Dispenser {
            next: 0,
            left_ms,
            runners,
            hinted: true,
            max_batch_tests: None,
            overhead_ms: None,
            busy: busy
                .iter()
                .map(|(r, until)| Busy {
                    runner: (*r).clone(),
                    until: Timestamp(*until),
                })
                .collect(),
        }
    }

    #[test]
    fn the_level_fills_the_least_loaded_runners_first() {
        assert_eq!(level(100, 4, &[]), 25);
        // One runner busy far beyond the level takes no share.
        assert_eq!(level(30, 4, &[1_000]), 10);
        assert_eq!(level(30, 2, &[10]), 20);
        assert_eq!(level(0, 3, &[5, 7]), 0);
    }

    #[test]
    fn early_batches_are_large_and_the_first_round_gets_equal_shares() {
        let me = RunnerId::generate();
        let first = batch_target(
            &dispenser(1_600_000, 8, &[]),
            &me,
            Timestamp(0),
            500,
            90_000,
        );
        assert_eq!(first, 100_000, "half of an eighth of the work");
        // The second runner of the round, the first one's batch held.
        let other = RunnerId::generate();
        let second = batch_target(
            &dispenser(1_500_000, 8, &[(&other, 100_000)]),
            &me,
            Timestamp(0),
            500,
            90_000,
        );
        assert_eq!(second, first);
    }

    #[test]
    fn near_the_end_a_batch_never_outlasts_the_others() {
        let me = RunnerId::generate();
        let (a, b) = (RunnerId::generate(), RunnerId::generate());
        // 3 s left, two others busy for 8 s and 9 s: the level is 3 s
        // (this runner and the fourth, idle one share it), under the floor.
        let d = dispenser(6_000, 4, &[(&a, 8_000), (&b, 9_000)]);
        assert_eq!(batch_target(&d, &me, Timestamp(0), 500, 90_000), 3_000);
        // Nothing left: one test.
        let d = dispenser(0, 4, &[(&a, 8_000)]);
        assert_eq!(batch_target(&d, &me, Timestamp(0), 500, 90_000), 1);
    }

    #[test]
    fn runners_silent_past_the_limit_are_not_waited_for() {
        let me = RunnerId::generate();
        let gone = RunnerId::generate();
        let d = dispenser(100_000, 1, &[(&gone, 0)]);
        let now = Timestamp(200_000);
        assert_eq!(batch_target(&d, &me, now, 500, 90_000), 50_000);
    }

    #[test]
    fn a_batch_fills_up_to_its_target_with_at_least_one_test() {
        let specs: Vec<TestSpec> = [40, 30, 20, 10, 10]
            .iter()
            .enumerate()
            .map(|(i, ms)| TestSpec {
                name: format!("t{i}"),
                duration_hint_ms: Some(*ms),
            })
            .collect();
        assert_eq!(batch_len(&specs, 75, None), (2, 70));
        assert_eq!(batch_len(&specs, 5, None), (1, 40));
        assert_eq!(batch_len(&specs, 1_000, Some(3)), (3, 90));
        assert_eq!(batch_len(&specs[..0], 100, None), (0, 0));
    }

    proptest! {
        #[test]
        fn the_level_is_the_balanced_end(
            left in 0u64..1_000_000,
            busy in proptest::collection::vec(0u64..100_000, 0..8),
            extra in 0usize..8,
        ) {
            let runners = busy.len() + extra;
            let l = level(left, runners, &busy);
            let mut loads = busy.clone();
            loads.resize(runners.max(1), 0);
            // Pouring up to the level holds all the work, and one less does not.
            let room = |at: u64| loads.iter().map(|b| at.saturating_sub(*b)).sum::<u64>();
            prop_assert!(room(l) >= left);
            prop_assert!(l == 0 || room(l - 1) < left || l <= *loads.iter().min().unwrap());
        }
    }
}
