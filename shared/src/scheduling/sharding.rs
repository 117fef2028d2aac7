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
pub(super) fn longest_first(tests: &[TestSpec]) -> (bool, Vec<(u64, &str)>) {
    let hinted = tests.iter().any(|t| t.duration_hint_ms.is_some());
    let fallback = median_hint(tests).unwrap_or(1);
    let mut weighted: Vec<(u64, &str)> = tests
        .iter()
        .map(|t| (t.duration_hint_ms.unwrap_or(fallback), t.name.as_str()))
        .collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    (hinted, weighted)
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
}
