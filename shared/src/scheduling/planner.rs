//! One scheduling pass, planned in memory: walk the queue in order and give
//! each queued shard a runner that matches and has room. The plan is applied
//! afterwards, one atomic assignment at a time; an assignment that loses a
//! race simply fails and the next pass tries again.

use super::{queue, strategy};
use crate::domain::rule::select_rule;
use crate::domain::{
    Execution, LoadBalancingRule, Resources, RunnerStatus, RunnerWithLoad, Shard, ShardStatus,
    Strategy,
};
use crate::ids::{ExecutionId, RunnerId};
use crate::time::Timestamp;
use std::collections::BTreeMap;

/// The cursor key of the default pool (no rule matched).
pub const DEFAULT_POOL: &str = "default";

/// Everything one pass needs to know, read from the store beforehand.
pub struct SchedulingPass<'a> {
    pub pending: &'a [(Execution, Vec<Shard>)],
    pub runners: &'a [RunnerWithLoad],
    pub rules: &'a [LoadBalancingRule],
    pub cursors: &'a BTreeMap<String, RunnerId>,
    pub default_strategy: Strategy,
    pub now: Timestamp,
    pub aging_step_ms: i64,
}

/// A shard to hand to a runner.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAssignment {
    pub execution_id: ExecutionId,
    pub shard_index: u32,
    pub shard_version: u64,
    pub runner_id: RunnerId,
    pub resources: Resources,
    /// Round-robin cursor to advance with this assignment, if any.
    pub cursor: Option<String>,
}

/// Plans assignments for as many queued shards as current capacity allows.
pub fn plan(pass: &SchedulingPass<'_>) -> Vec<PlannedAssignment> {
    let mut runners: Vec<RunnerWithLoad> = pass
        .runners
        .iter()
        .filter(|r| r.runner.status == RunnerStatus::Active)
        .cloned()
        .collect();
    let mut cursors = pass.cursors.clone();
    let mut order: Vec<&(Execution, Vec<Shard>)> = pass
        .pending
        .iter()
        .filter(|(e, _)| !e.status.is_terminal())
        .collect();
    queue::order(&mut order, |(e, _)| e, pass.now, pass.aging_step_ms);

    let mut out = Vec::new();
    for (execution, shards) in order {
        let rule = select_rule(pass.rules, execution);
        let (strategy, pool_key) = match rule {
            Some(r) => (r.strategy, r.pool_key()),
            None => (pass.default_strategy, DEFAULT_POOL.to_owned()),
        };
        let need = execution.requirements.per_shard();
        // Labels, type, pool and size: the same for every shard of the
        // execution all pass long (only loads change).
        let eligible: Vec<usize> = (0..runners.len())
            .filter(|&i| eligible_for(&runners[i], execution, rule))
            .collect();
        for shard in shards.iter().filter(|s| s.status == ShardStatus::Queued) {
            let preferred: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| !shard.avoid_runners.contains(&runners[i].runner.id))
                .collect();
            // Avoid runners that lost this shard, unless no other runner could ever take it.
            let pool = if preferred.is_empty() {
                &eligible
            } else {
                &preferred
            };
            let fitting: Vec<&RunnerWithLoad> = pool
                .iter()
                .map(|&i| &runners[i])
                .filter(|r| r.free().covers(&need))
                .collect();
            let Some(chosen) = strategy::pick(strategy, &fitting, &need, cursors.get(&pool_key))
            else {
                continue;
            };
            let chosen_id = chosen.runner.id.clone();
            let round_robin = strategy == Strategy::RoundRobin;
            if round_robin {
                cursors.insert(pool_key.clone(), chosen_id.clone());
            }
            if let Some(r) = runners.iter_mut().find(|r| r.runner.id == chosen_id) {
                r.allocated = r.allocated.plus(&need);
            }
            out.push(PlannedAssignment {
                execution_id: execution.id.clone(),
                shard_index: shard.index,
                shard_version: shard.version,
                runner_id: chosen_id,
                resources: need,
                cursor: round_robin.then(|| pool_key.clone()),
            });
        }
    }
    out
}

/// Whether `r` may claim a batch of `e` now (dynamic mode): active, the
/// labels and type the execution requires, and room for one batch.
pub fn may_claim(r: &RunnerWithLoad, e: &Execution) -> std::result::Result<(), &'static str> {
    if r.runner.status != RunnerStatus::Active {
        return Err("the runner is not active");
    }
    if !may_join(r, e) {
        return Err("the runner lacks the labels, type or size this execution requires");
    }
    if !r.free().covers(&e.requirements.per_shard()) {
        return Err("the runner has no free slot for another batch");
    }
    Ok(())
}

/// The batches a runner may claim, the one to take first first: queued
/// ones in claim order (requeued batches keep their place, so a lost large
/// batch goes out again first), those that did not slip from this runner
/// before ahead of those that did (avoidance is a preference: better than
/// leaving a batch). A claimer that loses the race for one takes the next.
pub fn claim_order<'a>(shards: &'a [Shard], runner: &RunnerId) -> Vec<&'a Shard> {
    let (fresh, slipped): (Vec<&Shard>, Vec<&Shard>) = shards
        .iter()
        .filter(|s| s.status == ShardStatus::Queued)
        .partition(|s| !s.avoid_runners.contains(runner));
    fresh.into_iter().chain(slipped).collect()
}

/// Whether the runner could ever take a batch of the execution: its
/// labels, type and size fit (free capacity aside, which changes).
pub fn may_join(r: &RunnerWithLoad, e: &Execution) -> bool {
    eligible_for(r, e, None)
}

/// Labels, types, the runner's scope and pool — everything but current
/// free capacity.
pub(super) fn eligible_for(
    r: &RunnerWithLoad,
    e: &Execution,
    rule: Option<&LoadBalancingRule>,
) -> bool {
    let req = &e.requirements;
    r.runner.meets(req)
        && rule.is_none_or(|rule| rule.pool.admits(&r.runner))
        && r.runner.capacity.covers(&req.per_shard())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RunnerPool;
    use crate::fixtures::{execution, runner, shards};
    use crate::ids::RuleId;
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    fn pending(e: Execution) -> (Execution, Vec<Shard>) {
        let shards = shards(&e);
        (e, shards)
    }

    fn free(slots: u32) -> RunnerWithLoad {
        RunnerWithLoad {
            runner: runner("r", slots),
            allocated: Resources::default(),
        }
    }

    fn run(
        pending: &[(Execution, Vec<Shard>)],
        runners: &[RunnerWithLoad],
        rules: &[LoadBalancingRule],
    ) -> Vec<PlannedAssignment> {
        plan(&SchedulingPass {
            pending,
            runners,
            rules,
            cursors: &BTreeMap::new(),
            default_strategy: Strategy::ResourceBased,
            now: Timestamp(0),
            aging_step_ms: 30_000,
        })
    }

    #[test]
    fn a_runner_without_the_required_labels_gets_nothing() {
        let mut e = execution(2);
        e.requirements.labels.insert("gpu".into());
        assert!(run(&[pending(e)], &[free(4)], &[]).is_empty());
    }

    #[test]
    fn paused_runners_are_skipped() {
        let mut r = free(4);
        r.runner.status = RunnerStatus::Paused;
        assert!(run(&[pending(execution(1))], &[r], &[]).is_empty());
    }

    #[test]
    fn a_requeued_shard_goes_to_another_runner_when_one_exists() {
        let (e, mut shards) = pending(execution(1));
        let (a, b) = (free(4), free(4));
        shards[0].avoid_runners.push(a.runner.id.clone());
        let plan = run(&[(e, shards)], &[a, b.clone()], &[]);
        assert_eq!(plan[0].runner_id, b.runner.id);
    }

    #[test]
    fn a_rule_restricts_the_pool_to_its_runners() {
        let mut gh = free(4);
        gh.runner.runner_type = crate::domain::RunnerType::GithubActions;
        let other = free(8);
        let e = execution(3);
        let rule = LoadBalancingRule {
            id: RuleId::generate(),
            name: "gh only".into(),
            suite_pattern: "*".into(),
            labels: Default::default(),
            min_priority: None,
            max_priority: None,
            strategy: Strategy::RoundRobin,
            pool: RunnerPool {
                labels: Default::default(),
                types: vec![crate::domain::RunnerType::GithubActions],
            },
            precedence: 0,
            test_retries: None,
            created_at: Timestamp(0),
        };
        let plan = run(&[pending(e)], &[gh.clone(), other], &[rule]);
        assert_eq!(plan.len(), 3);
        assert!(plan.iter().all(|a| a.runner_id == gh.runner.id));
        assert!(plan.iter().all(|a| a.cursor.is_some()));
    }

    proptest! {
        #[test]
        fn a_plan_never_overcommits_any_runner(
            slots in proptest::collection::vec(0u32..4, 1..6),
            shard_counts in proptest::collection::vec(1u32..6, 1..6),
        ) {
            let runners: Vec<RunnerWithLoad> = slots.iter().map(|s| free(*s)).collect();
            let pending: Vec<_> = shard_counts.iter().map(|n| pending(execution(*n))).collect();
            let plan = run(&pending, &runners, &[]);
            for r in &runners {
                let taken = plan.iter().filter(|a| a.runner_id == r.runner.id).count() as u32;
                prop_assert!(taken <= r.runner.capacity.slots);
            }
            let total_slots: u32 = slots.iter().sum();
            let total_shards: u32 = shard_counts.iter().sum();
            prop_assert_eq!(plan.len() as u32, total_slots.min(total_shards));
        }
    }
}
