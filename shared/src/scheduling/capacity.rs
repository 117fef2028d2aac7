//! What a scheduling pass can hand out, runner by runner, so that the
//! stores read only queued work some free runner can run.
//!
//! Why: a pass reads a bounded head of the queue. Counted against the total
//! of free slots, work nobody free can take (labels no runner has, a size
//! no runner offers) used up that head and runnable work behind it waited
//! until the blockers timed out. Walking the queue through a
//! [`FreeCapacity`] skips such work without counting it, and reserves each
//! runnable execution's shards on the runners that fit it, so the walk
//! stops once every free slot is spoken for.

use super::planner::eligible_for;
use crate::domain::rule::select_rule;
use crate::domain::{
    Execution, LoadBalancingRule, Requirements, Resources, RunnerStatus, RunnerWithLoad,
};

/// The free capacity of the active runners, with the rules that restrict
/// which of them an execution may use. Cloned once per queue order walked.
#[derive(Debug, Clone)]
pub struct FreeCapacity {
    runners: Vec<(RunnerWithLoad, Resources)>,
    rules: Vec<LoadBalancingRule>,
}

impl FreeCapacity {
    /// The active runners with room for at least one more shard.
    pub fn new(runners: &[RunnerWithLoad], rules: &[LoadBalancingRule]) -> Self {
        FreeCapacity {
            runners: runners
                .iter()
                .filter(|r| r.runner.status == RunnerStatus::Active && r.free().slots > 0)
                .map(|r| (r.clone(), r.free()))
                .collect(),
            rules: rules.to_vec(),
        }
    }

    /// Whether some free runner has the labels, type, scope and room that work of
    /// requirement class `req` needs (rules aside): the classes a pass
    /// reads. Work of any other class could not be assigned now, so it is
    /// not read at all.
    pub fn could_serve(&self, req: &Requirements) -> bool {
        let need = req.per_shard();
        self.runners
            .iter()
            .any(|(r, left)| r.runner.meets(req) && left.slots > 0 && left.covers(&need))
    }

    /// Free slots left to reserve, over every runner.
    pub fn slots(&self) -> u32 {
        self.runners.iter().map(|(_, left)| left.slots).sum()
    }

    /// Nothing is left to reserve: reading more of the queue cannot assign
    /// more in this pass.
    pub fn is_exhausted(&self) -> bool {
        self.slots() == 0
    }

    /// Reserves up to `waiting` shards of `e` on the runners that may run
    /// it and still have room; whether any was reserved (the execution is
    /// worth reading for this pass).
    pub fn reserve(&mut self, e: &Execution, waiting: u32) -> bool {
        let rule = select_rule(&self.rules, e);
        let need = e.requirements.per_shard();
        let mut left_to_place = waiting;
        for (runner, left) in &mut self.runners {
            if left_to_place == 0 {
                break;
            }
            if !eligible_for(runner, e, rule) {
                continue;
            }
            while left_to_place > 0 && left.slots > 0 && left.covers(&need) {
                *left = left.minus(&need);
                left_to_place -= 1;
            }
        }
        left_to_place < waiting
    }

    /// The items of `order` (a queue order) worth reading for this pass:
    /// those some runner can run, until their waiting shards use up the
    /// capacity or `max` are taken. `of` gives an item's execution and its
    /// number of waiting shards.
    pub fn walk<'e, T>(
        mut self,
        order: impl IntoIterator<Item = T>,
        max: usize,
        of: impl Fn(&T) -> Option<(&'e Execution, u32)>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for item in order {
            if self.is_exhausted() || out.len() >= max {
                break;
            }
            if of(&item).is_some_and(|(e, waiting)| self.reserve(e, waiting)) {
                out.push(item);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Shard, ShardStatus, Strategy};
    use crate::fixtures::{execution, runner, shards};
    use crate::scheduling::{plan, SchedulingPass};
    use crate::time::Timestamp;
    use proptest::prelude::{prop_assert, proptest};
    use std::collections::BTreeMap;

    fn free(id: &str, slots: u32, labels: &[&str]) -> RunnerWithLoad {
        let mut r = runner(id, slots);
        r.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        RunnerWithLoad {
            runner: r,
            allocated: Resources::default(),
        }
    }

    fn needing(shards: u32, labels: &[&str]) -> Execution {
        let mut e = execution(shards);
        e.requirements.labels = labels.iter().map(|l| (*l).to_owned()).collect();
        e
    }

    #[test]
    fn work_no_free_runner_fits_reserves_nothing() {
        let mut free = FreeCapacity::new(&[free("a", 2, &["a"])], &[]);
        assert!(!free.reserve(&needing(2, &["nobody"]), 2));
        assert_eq!(free.slots(), 2, "the blocker used up no capacity");
        assert!(free.reserve(&needing(1, &["a"]), 1));
        assert_eq!(free.slots(), 1);
    }

    #[test]
    fn reservations_stop_at_each_runners_own_room() {
        let mut free = FreeCapacity::new(&[free("a", 2, &["a"]), free("b", 2, &["b"])], &[]);
        assert!(free.reserve(&needing(4, &["a"]), 4));
        assert_eq!(free.slots(), 2, "only runner a's two slots were taken");
        assert!(free.reserve(&needing(1, &["b"]), 1));
        assert!(free.reserve(&needing(5, &[]), 5));
        assert!(free.is_exhausted());
    }

    /// Runs passes as the scheduler does (walk both queue orders through
    /// the free capacity, plan, apply) until one assigns nothing.
    fn schedule_until_quiet(runners: &mut [RunnerWithLoad], queue: &mut [(Execution, Vec<Shard>)]) {
        for _ in 0..64 {
            let free = FreeCapacity::new(runners, &[]);
            let waiting = |i: &usize| {
                let (e, shards) = &queue[*i];
                let n = shards
                    .iter()
                    .filter(|s| s.status == ShardStatus::Queued)
                    .count();
                (n > 0).then_some((e, n as u32))
            };
            let mut by_priority: Vec<usize> = (0..queue.len()).collect();
            by_priority.sort_by_key(|&i| (std::cmp::Reverse(queue[i].0.priority), i));
            let mut picked = free.clone().walk(by_priority, usize::MAX, waiting);
            for i in free.walk(0..queue.len(), usize::MAX, waiting) {
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            let pending: Vec<_> = picked.iter().map(|&i| queue[i].clone()).collect();
            let planned = plan(&SchedulingPass {
                pending: &pending,
                runners,
                rules: &[],
                cursors: &BTreeMap::new(),
                default_strategy: Strategy::ResourceBased,
                now: Timestamp(0),
                aging_step_ms: 30_000,
            });
            if planned.is_empty() {
                return;
            }
            for p in planned {
                let r = runners
                    .iter_mut()
                    .find(|r| r.runner.id == p.runner_id)
                    .unwrap();
                r.allocated = r.allocated.plus(&p.resources);
                let (_, shards) = queue
                    .iter_mut()
                    .find(|(e, _)| e.id == p.execution_id)
                    .unwrap();
                shards[p.shard_index as usize].status = ShardStatus::Assigned;
            }
        }
        panic!("scheduling never settled");
    }

    fn labels(bits: u8) -> Vec<&'static str> {
        ["x", "y"]
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, l)| l)
            .collect()
    }

    proptest! {
        #[test]
        fn no_free_runner_stays_idle_while_queued_work_it_can_run_exists(
            runners in proptest::collection::vec((0u32..3, 0u8..4, 0u8..5), 1..5),
            work in proptest::collection::vec((1u32..4, 0u8..4, 0i32..3), 0..8),
        ) {
            let mut runners: Vec<RunnerWithLoad> = runners
                .iter()
                .enumerate()
                .map(|(i, &(slots, bits, busy))| {
                    let mut r = free(&format!("r{i}"), slots + u32::from(busy), &labels(bits));
                    // Some runners start with part of their capacity taken.
                    r.allocated = Resources::new(u32::from(busy), 0, 0);
                    r
                })
                .collect();
            let mut queue: Vec<(Execution, Vec<Shard>)> = work
                .iter()
                .map(|&(n, bits, priority)| {
                    let mut e = needing(n, &labels(bits));
                    e.priority = priority;
                    let s = shards(&e);
                    (e, s)
                })
                .collect();
            schedule_until_quiet(&mut runners, &mut queue);
            for (e, shards) in &queue {
                if !shards.iter().any(|s| s.status == ShardStatus::Queued) {
                    continue;
                }
                let need = e.requirements.per_shard();
                for r in &runners {
                    prop_assert!(
                        !(eligible_for(r, e, None) && r.free().covers(&need)),
                        "runner {} sits idle beside queued work it can run", r.runner.name
                    );
                }
            }
        }
    }

    #[test]
    fn only_classes_some_free_runner_fits_are_worth_reading() {
        let mut busy = free("busy", 1, &["gpu"]);
        busy.allocated = Resources::new(1, 0, 0);
        let free = FreeCapacity::new(&[free("a", 2, &["a"]), busy], &[]);
        assert!(free.could_serve(&needing(1, &["a"]).requirements));
        assert!(free.could_serve(&needing(1, &[]).requirements));
        assert!(
            !free.could_serve(&needing(1, &["gpu"]).requirements),
            "its runner is full"
        );
        assert!(!free.could_serve(&needing(1, &["nobody"]).requirements));
    }

    #[test]
    fn busy_and_paused_runners_offer_nothing() {
        let mut busy = free("busy", 1, &[]);
        busy.allocated = Resources::new(1, 0, 0);
        let mut paused = free("paused", 3, &[]);
        paused.runner.status = RunnerStatus::Paused;
        let free = FreeCapacity::new(&[busy, paused], &[]);
        assert!(free.is_exhausted());
    }
}
