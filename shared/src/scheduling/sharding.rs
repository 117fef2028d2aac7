//! Splitting an execution's tests into shards: longest-processing-time first,
//! so shards finish close together instead of one long tail.

use crate::domain::TestSpec;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One shard of a plan: its tests (longest first) and expected duration when
/// durations were known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedShard {
    pub tests: Vec<String>,
    pub estimated_ms: Option<u64>,
}

/// Splits `tests` into at most `parallelism` non-empty shards. Tests without a
/// duration hint weigh the median of the hinted ones (or 1 when none is
/// hinted, which makes this a balanced split by count). An empty test list
/// gives one shard that runs the whole suite.
pub fn split_tests(tests: &[TestSpec], parallelism: u32) -> Vec<PlannedShard> {
    if tests.is_empty() {
        return vec![PlannedShard {
            tests: vec![],
            estimated_ms: None,
        }];
    }
    let (hinted, weighted) = longest_first(tests);
    let shard_count = (parallelism.max(1) as usize).min(tests.len());
    let mut shards = vec![(0u64, Vec::new()); shard_count];
    // Min-heap of (load, index): the least loaded shard takes the next longest test.
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> =
        (0..shard_count).map(|i| Reverse((0, i))).collect();
    for (weight, name) in weighted {
        let Some(Reverse((load, i))) = heap.pop() else {
            break;
        };
        shards[i].0 = load + weight;
        shards[i].1.push(name.to_owned());
        heap.push(Reverse((load + weight, i)));
    }
    shards
        .into_iter()
        .map(|(load, tests)| PlannedShard {
            tests,
            estimated_ms: hinted.then_some(load),
        })
        .collect()
}

/// Whether any duration is known, and the tests with their weights, longest
/// first (ties by name, so a plan is deterministic). Tests without a hint
/// weigh the median of the hinted ones, or 1 when none is hinted.
fn longest_first(tests: &[TestSpec]) -> (bool, Vec<(u64, &str)>) {
    let hinted = tests.iter().any(|t| t.duration_hint_ms.is_some());
    let fallback = median_hint(tests).unwrap_or(1);
    let mut weighted: Vec<(u64, &str)> = tests
        .iter()
        .map(|t| (t.duration_hint_ms.unwrap_or(fallback), t.name.as_str()))
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    (hinted, weighted)
}

/// Most batches of a dynamic execution. Every claim reads the execution's
/// batches to pick the next, so their number bounds a claim's cost.
pub const MAX_BATCHES: usize = 512;

/// The batches of a dynamic execution, in the order runners claim them:
/// longest tests first, each batch about `1 / (2 * runners)` of the work
/// still left when it is cut (guided self-scheduling, Polychronopoulos and
/// Kuck, 1987). Early batches are large (few claims while there is plenty
/// to do); they shrink as the queue drains, so the last ones are single
/// short tests that fill the gaps while slower runners finish: no runner
/// is left holding a large batch at the end, whatever the estimates got
/// wrong. `runners` is how many runners are expected to claim.
///
/// Batches of known duration are filled up to `min_batch_ms` of work
/// (short of it by less than one test; always at least one test): each batch costs a claim and a test-process
/// start, so tiny batches cost more than they even out. At most
/// `max_batches` batches: when the plan would have more, the floor doubles
/// until it fits.
///
/// Why a share of `2 * runners` and a floor of about ten times the cost of
/// a batch: `split-bench` runs each plan with ±30 % noise on every test's
/// duration and on every runner's speed, at 500 ms per batch. A share of
/// `runners` (classic GSS) left the first round's large batches to
/// straggle; floors relative to the work (an eighth or a sixteenth of a
/// runner's share) made the last batches too coarse; no floor paid the
/// per-batch cost hundreds of times; 2 s and 10 s floors did worse than
/// 5 s (tables in `docs/performance.md`).
pub fn plan_batches(
    tests: &[TestSpec],
    runners: u32,
    max_batches: usize,
    min_batch_ms: u64,
) -> Vec<PlannedShard> {
    if tests.is_empty() {
        return split_tests(tests, 1);
    }
    let (hinted, weighted) = longest_first(tests);
    let total: u64 = weighted.iter().map(|(w, _)| w).sum();
    let mut floor = if hinted { min_batch_ms.max(1) } else { 1 };
    loop {
        let batches = guided(&weighted, hinted, runners, floor);
        if batches.len() <= max_batches.max(1) || floor >= total {
            return batches;
        }
        floor *= 2;
    }
}

/// Guided self-scheduling with batches of at least `floor` (but always at
/// least one test).
fn guided(weighted: &[(u64, &str)], hinted: bool, runners: u32, floor: u64) -> Vec<PlannedShard> {
    let share = 2 * u64::from(runners.max(1));
    let mut remaining: u64 = weighted.iter().map(|(w, _)| w).sum();
    let mut batches = Vec::new();
    let mut next = weighted.iter().copied().peekable();
    while next.peek().is_some() {
        let target = remaining.div_ceil(share).max(floor);
        let mut load = 0;
        let mut names = Vec::new();
        while let Some((w, _)) = next.peek() {
            if !names.is_empty() && load + w > target {
                break;
            }
            let (w, name) = next.next().unwrap_or_default();
            load += w;
            names.push(name.to_owned());
        }
        remaining -= load;
        batches.push(PlannedShard {
            tests: names,
            estimated_ms: hinted.then_some(load),
        });
    }
    batches
}

fn median_hint(tests: &[TestSpec]) -> Option<u64> {
    let mut hints: Vec<u64> = tests.iter().filter_map(|t| t.duration_hint_ms).collect();
    if hints.is_empty() {
        return None;
    }
    hints.sort_unstable();
    Some(hints[hints.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn specs(durations: &[Option<u64>]) -> Vec<TestSpec> {
        durations
            .iter()
            .enumerate()
            .map(|(i, d)| TestSpec {
                name: format!("t{i:03}"),
                duration_hint_ms: *d,
            })
            .collect()
    }

    #[test]
    fn without_hints_tests_are_split_evenly_by_count() {
        let plan = split_tests(&specs(&[None; 10]), 3);
        let sizes: Vec<usize> = plan.iter().map(|s| s.tests.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        assert!(plan.iter().all(|s| s.estimated_ms.is_none()));
    }

    #[test]
    fn one_long_test_gets_a_shard_of_its_own() {
        let plan = split_tests(
            &specs(&[Some(100), Some(10), Some(10), Some(10), Some(10)]),
            2,
        );
        let long = plan
            .iter()
            .find(|s| s.tests.contains(&"t000".to_string()))
            .unwrap();
        assert_eq!(long.tests.len(), 1);
        assert_eq!(long.estimated_ms, Some(100));
    }

    #[test]
    fn more_parallelism_than_tests_gives_one_shard_per_test() {
        assert_eq!(split_tests(&specs(&[None; 3]), 8).len(), 3);
    }

    proptest! {
        #[test]
        fn every_test_lands_in_exactly_one_non_empty_shard(
            durations in proptest::collection::vec(proptest::option::of(1u64..10_000), 1..200),
            parallelism in 1u32..40,
        ) {
            let tests = specs(&durations);
            let plan = split_tests(&tests, parallelism);
            prop_assert_eq!(plan.len(), (parallelism as usize).min(tests.len()));
            prop_assert!(plan.iter().all(|s| !s.tests.is_empty()));
            let mut seen = BTreeSet::new();
            for s in &plan { for t in &s.tests { prop_assert!(seen.insert(t.clone())); } }
            prop_assert_eq!(seen.len(), tests.len());
        }

        #[test]
        fn the_longest_shard_is_within_the_greedy_bound(
            durations in proptest::collection::vec(1u64..10_000, 1..200),
            parallelism in 1u32..40,
        ) {
            let tests = specs(&durations.iter().map(|d| Some(*d)).collect::<Vec<_>>());
            let plan = split_tests(&tests, parallelism);
            let total: u64 = durations.iter().sum();
            let longest = *durations.iter().max().unwrap();
            let makespan = plan.iter().filter_map(|s| s.estimated_ms).max().unwrap();
            prop_assert!(makespan <= total / plan.len() as u64 + longest);
        }
    }

    proptest! {
        #[test]
        fn batches_hold_every_test_once_longest_first_and_shrink(
            durations in proptest::collection::vec(1u64..100_000, 1..300),
            runners in 1u32..16,
        ) {
            let tests = specs(&durations.iter().map(|d| Some(*d)).collect::<Vec<_>>());
            let batches = plan_batches(&tests, runners, usize::MAX, 1);
            let names: Vec<&String> = batches.iter().flat_map(|b| &b.tests).collect();
            let unique: BTreeSet<&String> = names.iter().copied().collect();
            prop_assert_eq!(names.len(), tests.len());
            prop_assert_eq!(unique.len(), tests.len());
            // Claimed in order, the longest test comes first.
            let longest = durations.iter().max().unwrap();
            let first = &batches[0].tests[0];
            let first_weight = tests.iter().find(|t| &t.name == first).unwrap().duration_hint_ms;
            prop_assert_eq!(first_weight, Some(*longest));
            // A batch of several tests never outweighs the share of what was
            // left when it was cut, so late batches are small.
            let mut left: u64 = durations.iter().sum();
            for b in &batches {
                let load = b.estimated_ms.unwrap();
                if b.tests.len() > 1 {
                    prop_assert!(load <= left.div_ceil(2 * u64::from(runners)).max(1));
                }
                left -= load;
            }
        }
    }

    #[test]
    fn the_last_batches_of_a_dynamic_plan_are_single_tests() {
        let tests = specs(&[Some(100); 64]);
        let batches = plan_batches(&tests, 4, 96, 1);
        assert!(batches[0].tests.len() >= 8, "{:?}", batches[0]);
        assert_eq!(batches.last().unwrap().tests.len(), 1);
        assert!(batches.len() < 64, "fewer claims than tests");
    }

    #[test]
    fn a_dynamic_plan_keeps_to_its_batch_limit() {
        let tests = specs(&[Some(10); 5000]);
        let batches = plan_batches(&tests, 64, 96, 1);
        assert!(batches.len() <= 96, "{}", batches.len());
        assert_eq!(batches.iter().map(|b| b.tests.len()).sum::<usize>(), 5000);
    }
}

#[cfg(test)]
mod floor_tests {
    use super::*;

    #[test]
    fn batches_of_known_duration_fill_up_to_the_floor() {
        let tests: Vec<TestSpec> = (0..100)
            .map(|i| TestSpec {
                name: format!("t{i}"),
                duration_hint_ms: Some(400),
            })
            .collect();
        let batches = plan_batches(&tests, 8, MAX_BATCHES, 5_000);
        let (last, rest) = batches.split_last().unwrap();
        // Filled up to the floor: short of it by less than one more test.
        assert!(
            rest.iter().all(|b| b.estimated_ms > Some(5_000 - 400)),
            "{batches:?}"
        );
        assert!(last.estimated_ms.unwrap() > 0);
    }
}
