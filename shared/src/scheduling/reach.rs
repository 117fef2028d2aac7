//! Whether any registered runner could ever run an execution, whatever it
//! is doing now, and if none could, why: work that needs a label, a runner
//! type or a size no runner has is told at queue time and while it waits,
//! instead of waiting in silence until it times out.

use super::planner::eligible_for;
use crate::domain::rule::select_rule;
use crate::domain::{Execution, LoadBalancingRule, Mode, RunnerStatus, RunnerWithLoad};

/// `None` when some registered runner (active, paused or unhealthy: each
/// may take work again) is eligible for `e` under its rule, or when no
/// runner needs to be (a `by_index` execution is claimed by the CI's own
/// jobs); else the need no runner meets, the most specific first.
pub fn unrunnable_reason(
    e: &Execution,
    runners: &[RunnerWithLoad],
    rules: &[LoadBalancingRule],
) -> Option<String> {
    if e.mode == Mode::ByIndex {
        return None;
    }
    let registered: Vec<&RunnerWithLoad> = runners
        .iter()
        .filter(|r| r.runner.status != RunnerStatus::Deregistered)
        .collect();
    let rule = select_rule(rules, e);
    if registered.iter().any(|r| eligible_for(r, e, rule)) {
        return None;
    }
    if registered.is_empty() {
        return Some("no runner is registered".into());
    }
    let req = &e.requirements;
    if !registered
        .iter()
        .any(|r| r.runner.labels.is_superset(&req.labels))
    {
        let labels: Vec<&str> = req.labels.iter().map(String::as_str).collect();
        return Some(format!(
            "no registered runner has labels [{}]",
            labels.join(", ")
        ));
    }
    if !req.runner_types.is_empty()
        && !registered
            .iter()
            .any(|r| req.runner_types.contains(&r.runner.runner_type))
    {
        // As the API spells them (`github-actions`).
        let types: Vec<String> = req
            .runner_types
            .iter()
            .filter_map(|t| serde_json::to_value(t).ok())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        return Some(format!(
            "no registered runner is of type [{}]",
            types.join(", ")
        ));
    }
    if let Some(a) = &req.affinity {
        if !registered.iter().any(|r| r.runner.scope.takes(a)) {
            let project = a
                .project
                .as_ref()
                .map(|p| format!(" or project {p:?}"))
                .unwrap_or_default();
            return Some(format!(
                "no registered runner serves suite {:?}{project} (an agent declares it with \
                 --suite, or takes any unlabelled work with --any-suite)",
                a.suite
            ));
        }
    }
    let need = req.per_shard();
    if !registered.iter().any(|r| r.runner.capacity.covers(&need)) {
        return Some(format!(
            "no registered runner has room for one shard ({} millicores, {} MB)",
            need.cpu_millis, need.memory_mb
        ));
    }
    Some(match rule {
        Some(rule) => format!(
            "no registered runner in load-balancing rule {:?}'s pool meets its labels, type and size",
            rule.name
        ),
        None => "no registered runner meets its labels, type, suite and size together".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Resources, RunnerType};
    use crate::fixtures::{execution, runner};

    fn registered(labels: &[&str], slots: u32) -> RunnerWithLoad {
        let mut r = runner("r", slots);
        r.labels = labels.iter().map(|l| l.to_string()).collect();
        RunnerWithLoad {
            runner: r,
            allocated: Resources::default(),
        }
    }

    #[test]
    fn work_a_registered_runner_fits_is_runnable_even_if_that_runner_is_busy_or_paused() {
        let mut e = execution(1);
        e.requirements.labels.insert("gpu".into());
        let mut busy = registered(&["gpu", "linux"], 1);
        busy.allocated = busy.runner.capacity;
        busy.runner.status = RunnerStatus::Paused;
        assert_eq!(unrunnable_reason(&e, &[busy], &[]), None);
    }

    #[test]
    fn the_reason_names_the_need_no_runner_meets() {
        let mut e = execution(1);
        assert_eq!(
            unrunnable_reason(&e, &[], &[]).as_deref(),
            Some("no runner is registered")
        );
        e.requirements.labels.insert("gpu".into());
        let linux = registered(&["linux"], 2);
        assert_eq!(
            unrunnable_reason(&e, std::slice::from_ref(&linux), &[]).as_deref(),
            Some("no registered runner has labels [gpu]")
        );
        e.requirements.labels.clear();
        e.requirements.runner_types = vec![RunnerType::Jenkins];
        let reason = unrunnable_reason(&e, std::slice::from_ref(&linux), &[]).unwrap();
        assert!(reason.contains("of type [jenkins]"), "{reason}");
        e.requirements.runner_types.clear();
        e.requirements.memory_mb = 1 << 30;
        let reason = unrunnable_reason(&e, std::slice::from_ref(&linux), &[]).unwrap();
        assert!(reason.contains("room for one shard"), "{reason}");
        // A deregistered runner is no runner at all.
        let mut gone = registered(&[], 2);
        gone.runner.status = RunnerStatus::Deregistered;
        e.requirements.memory_mb = 1;
        assert_eq!(
            unrunnable_reason(&e, &[gone], &[]).as_deref(),
            Some("no runner is registered")
        );
    }
}
