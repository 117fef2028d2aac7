//! The three load-balancing strategies. Each picks one runner among
//! candidates that already fit the shard; none of them does I/O.

use crate::domain::{Resources, RunnerWithLoad, Strategy};
use crate::ids::RunnerId;
use std::cmp::Ordering;

/// Picks a runner for a shard needing `need`. `cursor` is the round-robin
/// position of the pool (the last runner it picked).
pub fn pick<'a>(
    strategy: Strategy,
    candidates: &[&'a RunnerWithLoad],
    need: &Resources,
    cursor: Option<&RunnerId>,
) -> Option<&'a RunnerWithLoad> {
    match strategy {
        Strategy::RoundRobin => round_robin(candidates, cursor),
        Strategy::Priority => candidates.iter().copied().min_by(|a, b| {
            b.runner
                .priority
                .cmp(&a.runner.priority)
                .then_with(|| load_cmp(a, b))
                .then_with(|| a.runner.id.cmp(&b.runner.id))
        }),
        Strategy::ResourceBased => candidates.iter().copied().min_by(|a, b| {
            leftover(a, need)
                .total_cmp(&leftover(b, need))
                .then_with(|| a.runner.id.cmp(&b.runner.id))
        }),
    }
}

/// The next runner after the cursor in id order, wrapping around.
fn round_robin<'a>(
    candidates: &[&'a RunnerWithLoad],
    cursor: Option<&RunnerId>,
) -> Option<&'a RunnerWithLoad> {
    let mut sorted: Vec<&RunnerWithLoad> = candidates.to_vec();
    sorted.sort_by(|a, b| a.runner.id.cmp(&b.runner.id));
    let after = cursor.and_then(|c| sorted.iter().find(|r| &r.runner.id > c).copied());
    after.or_else(|| sorted.first().copied())
}

/// Compares allocated/capacity slot ratios without floating point.
fn load_cmp(a: &RunnerWithLoad, b: &RunnerWithLoad) -> Ordering {
    let lhs = u64::from(a.allocated.slots) * u64::from(b.runner.capacity.slots.max(1));
    let rhs = u64::from(b.allocated.slots) * u64::from(a.runner.capacity.slots.max(1));
    lhs.cmp(&rhs)
}

/// Spare capacity left after placing `need`, as fractions of capacity summed
/// over slots, CPU and memory. Smaller is a tighter fit.
fn leftover(r: &RunnerWithLoad, need: &Resources) -> f64 {
    let free = r.free();
    let cap = r.runner.capacity;
    let frac = |free: u32, need: u32, cap: u32| {
        f64::from(free.saturating_sub(need)) / f64::from(cap.max(1))
    };
    frac(free.slots, need.slots, cap.slots)
        + frac(free.cpu_millis, need.cpu_millis, cap.cpu_millis)
        + frac(free.memory_mb, need.memory_mb, cap.memory_mb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::runner;

    fn loaded(name: &str, slots: u32, used: u32, priority: i32) -> RunnerWithLoad {
        let mut r = runner(name, slots);
        r.priority = priority;
        RunnerWithLoad {
            runner: r,
            allocated: Resources::new(used, 0, 0),
        }
    }

    #[test]
    fn round_robin_takes_each_runner_in_turn_and_wraps() {
        let rs = [
            loaded("a", 4, 0, 0),
            loaded("b", 4, 0, 0),
            loaded("c", 4, 0, 0),
        ];
        let cands: Vec<&RunnerWithLoad> = rs.iter().collect();
        let need = Resources::new(1, 0, 0);
        let mut cursor = None;
        let mut picked = vec![];
        for _ in 0..4 {
            let r = pick(Strategy::RoundRobin, &cands, &need, cursor.as_ref()).unwrap();
            cursor = Some(r.runner.id.clone());
            picked.push(r.runner.name.clone());
        }
        let first_round: std::collections::BTreeSet<_> = picked[..3].iter().collect();
        assert_eq!(
            first_round.len(),
            3,
            "every runner once before any twice: {picked:?}"
        );
        assert_eq!(picked[3], picked[0]);
    }

    #[test]
    fn priority_prefers_the_highest_priority_then_the_least_loaded() {
        let rs = [
            loaded("low", 4, 0, 1),
            loaded("busy", 4, 3, 5),
            loaded("idle", 4, 1, 5),
        ];
        let cands: Vec<&RunnerWithLoad> = rs.iter().collect();
        let r = pick(Strategy::Priority, &cands, &Resources::new(1, 0, 0), None).unwrap();
        assert_eq!(r.runner.name, "idle");
    }

    #[test]
    fn resource_based_picks_the_tightest_fit() {
        let rs = [loaded("big", 16, 0, 0), loaded("snug", 4, 3, 0)];
        let cands: Vec<&RunnerWithLoad> = rs.iter().collect();
        let r = pick(
            Strategy::ResourceBased,
            &cands,
            &Resources::new(1, 0, 0),
            None,
        )
        .unwrap();
        assert_eq!(r.runner.name, "snug");
    }
}
