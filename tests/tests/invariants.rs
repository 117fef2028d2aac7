//! Random sequences of orchestrator operations (with time moving by hand),
//! checking after every step the invariants everything else relies on:
//! capacity accounting, one holder per shard, the queued-shard counter, and
//! no silent pass; and after every scheduling sweep, liveness: no free
//! runner stays idle while queued work it can run exists (runners and work
//! carry random labels and runners random scopes, so some work fits only
//! some runners and some none).
//! Bounded: a fixed number of cases and steps.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use tms::auth::Principal;
use tms::domain::{ExecutionStatus, Resources, RunnerType, Scope, ShardResult, ShardStatus};
use tms::ids::{ExecutionId, RunnerId};
use tms::ports::{ExecutionFilter, Store};
use tms::usecases::{NewExecution, NewRunner, ReportStatus, ShardReport, TestInput};
use tms_tests::Harness;

#[derive(Debug, Clone)]
enum Op {
    Register {
        slots: u32,
        /// Which of the labels `x` and `y` it has (bits).
        labels: u8,
        /// What unlabelled work it takes: 0 any (no scope given), 1 suite
        /// `a`, 2 suite `b`, 3 none.
        scope: u8,
    },
    Queue {
        tests: usize,
        parallelism: u32,
        shard_timeout: u64,
        /// Which of the labels `x`, `y` and `z` its shards need (bits);
        /// no runner has `z`.
        labels: u8,
        /// Its suite: `a` or `b`.
        suite_b: bool,
    },
    Schedule,
    /// Runner `runner` reports on its `pick`-th assignment.
    Report {
        runner: usize,
        pick: usize,
        outcome: u8,
    },
    Heartbeat {
        runner: usize,
    },
    Advance {
        secs: u64,
    },
    HealthSweep,
    TimeoutSweep,
    Cancel {
        execution: usize,
    },
    Retry {
        execution: usize,
    },
    Pause {
        runner: usize,
    },
    Resume {
        runner: usize,
    },
    Deregister {
        runner: usize,
    },
    DeliverEvents,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u32..4, 0u8..4, 0u8..4).prop_map(|(slots, labels, scope)| Op::Register { slots, labels, scope }),
        3 => (1usize..6, 1u32..4, prop_oneof![Just(30u64), Just(120)], prop_oneof![3 => Just(0u8), 3 => 1u8..4, 1 => 4u8..8], any::<bool>())
            .prop_map(|(tests, parallelism, shard_timeout, labels, suite_b)| Op::Queue { tests, parallelism, shard_timeout, labels, suite_b }),
        4 => Just(Op::Schedule),
        6 => (0usize..6, 0usize..4, 0u8..4).prop_map(|(runner, pick, outcome)| Op::Report { runner, pick, outcome }),
        2 => (0usize..6).prop_map(|runner| Op::Heartbeat { runner }),
        2 => (1u64..60).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::HealthSweep),
        2 => Just(Op::TimeoutSweep),
        1 => (0usize..6).prop_map(|execution| Op::Cancel { execution }),
        1 => (0usize..6).prop_map(|execution| Op::Retry { execution }),
        1 => (0usize..6).prop_map(|runner| Op::Pause { runner }),
        1 => (0usize..6).prop_map(|runner| Op::Resume { runner }),
        1 => (0usize..6).prop_map(|runner| Op::Deregister { runner }),
        2 => Just(Op::DeliverEvents),
    ]
}

struct World {
    h: Harness,
    runners: Vec<RunnerId>,
    executions: Vec<ExecutionId>,
    /// The last operation was a scheduling sweep: liveness must hold.
    just_scheduled: bool,
}

/// The labels of `bits` over `x`, `y`, `z`.
fn labels(bits: u8) -> BTreeSet<String> {
    ["x", "y", "z"]
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, l)| (*l).to_owned())
        .collect()
}

impl World {
    async fn apply(&mut self, op: &Op) {
        let app = &self.h.app;
        // Operations may be refused (a paused runner cannot be paused, a
        // passed execution cannot be retried); refusals are part of the game,
        // but a refusal must never be an internal error.
        self.just_scheduled = matches!(op, Op::Schedule);
        let outcome: tms::Result<()> = match op {
            Op::Register {
                slots,
                labels: bits,
                scope,
            } => {
                let suites = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect();
                let scope = match scope {
                    0 => None,
                    1 => Some(Scope {
                        suites: suites(&["a"]),
                        ..Default::default()
                    }),
                    2 => Some(Scope {
                        suites: suites(&["b"]),
                        ..Default::default()
                    }),
                    _ => Some(Scope::default()),
                };
                let new = NewRunner {
                    name: format!("r{}", self.runners.len()),
                    runner_type: RunnerType::Custom,
                    labels: labels(*bits),
                    capacity: Resources::new(*slots, 4000, 8192),
                    priority: 0,
                    dispatch: None,
                    heartbeat_interval_seconds: None,
                    scope,
                };
                app.register_runner(new)
                    .await
                    .map(|r| self.runners.push(r.runner.runner.id))
            }
            Op::Queue {
                tests,
                parallelism,
                shard_timeout,
                labels: bits,
                suite_b,
            } => {
                let new = NewExecution {
                    suite: if *suite_b { "b" } else { "a" }.into(),
                    tests: (0..*tests)
                        .map(|i| TestInput::Name(format!("t{i}")))
                        .collect(),
                    parallelism: *parallelism,
                    priority: None,
                    requirements: Some(tms::usecases::RequirementsInput {
                        labels: labels(*bits),
                        ..Default::default()
                    }),
                    test_type: Default::default(),
                    timeout_seconds: Some(600),
                    shard_timeout_seconds: Some(*shard_timeout),
                    max_attempts: Some(2),
                    ci: None,
                    mode: Default::default(),
                    max_batch_tests: None,
                    retries: None,
                    strict: false,
                    metadata: Default::default(),
                    require_runner: false,
                };
                app.queue_execution(new, None)
                    .await
                    .map(|q| self.executions.push(q.execution.id))
            }
            Op::Schedule => app.schedule_sweep().await.map(|_| ()),
            Op::Report {
                runner,
                pick,
                outcome,
            } => {
                let Some(id) = self.runners.get(*runner) else {
                    return;
                };
                let Ok(work) = app.heartbeat(id, None).await else {
                    return;
                };
                let Some(a) = work.get(*pick) else { return };
                let n = a.tests.len().max(1) as u32;
                let (status, results) = match outcome {
                    0 => (ReportStatus::Started, None),
                    1 => (
                        ReportStatus::Passed,
                        Some(ShardResult {
                            passed: n,
                            ..Default::default()
                        }),
                    ),
                    2 => (
                        ReportStatus::Failed,
                        Some(ShardResult {
                            passed: n - 1,
                            failed: 1,
                            ..Default::default()
                        }),
                    ),
                    _ => (ReportStatus::Errored, None),
                };
                let report = ShardReport {
                    shard_index: a.shard_index,
                    lease_id: a.lease_id.clone(),
                    status,
                    results,
                };
                app.report_shard(&Principal::Runner(id.clone()), &a.execution_id, report)
                    .await
                    .map(|_| ())
            }
            Op::Heartbeat { runner } => match self.runners.get(*runner) {
                Some(id) => app.heartbeat(id, None).await.map(|_| ()),
                None => Ok(()),
            },
            Op::Advance { secs } => {
                self.h.clock.advance_secs(*secs);
                Ok(())
            }
            Op::HealthSweep => app.health_sweep().await.map(|_| ()),
            Op::TimeoutSweep => app.timeout_sweep().await.map(|_| ()),
            Op::Cancel { execution } => match self.executions.get(*execution) {
                Some(id) => app.cancel_execution(id).await.map(|_| ()),
                None => Ok(()),
            },
            Op::Retry { execution } => match self.executions.get(*execution) {
                Some(id) => app.retry_execution(id).await.map(|_| ()),
                None => Ok(()),
            },
            Op::Pause { runner } => match self.runners.get(*runner) {
                Some(id) => app.pause_runner(id).await.map(|_| ()),
                None => Ok(()),
            },
            Op::Resume { runner } => match self.runners.get(*runner) {
                Some(id) => app.resume_runner(id).await.map(|_| ()),
                None => Ok(()),
            },
            Op::Deregister { runner } => match self.runners.get(*runner) {
                Some(id) => app.deregister_runner(id).await.map(|_| ()),
                None => Ok(()),
            },
            Op::DeliverEvents => {
                self.h.deliver_events().await;
                Ok(())
            }
        };
        if let Err(e) = outcome {
            let (status, _, _) = e.classify();
            assert!(status.is_client_error(), "{op:?} failed inside: {e}");
        }
    }

    async fn check(&self) {
        let app = &self.h.app;
        let mut held: BTreeMap<RunnerId, u32> = BTreeMap::new();
        let mut queued = 0u64;
        let page = app
            .list_executions(ExecutionFilter {
                limit: 200,
                ..Default::default()
            })
            .await
            .unwrap();
        let runners: Vec<_> = app.store.schedulable_runners().await.unwrap();
        for e in &page.items {
            let (execution, shards) = app.execution_status(&e.id).await.unwrap();
            if self.just_scheduled && !execution.status.is_terminal() {
                // Liveness: a sweep leaves no free runner idle beside queued
                // work it can run (a runner that lost a shard is offered it
                // only when no other runner could take it: not counted).
                let need = execution.requirements.per_shard();
                for s in shards.iter().filter(|s| s.status == ShardStatus::Queued) {
                    for r in &runners {
                        // Labelled work goes by labels; unlabelled work
                        // to runners taking any or declaring its suite.
                        let req = &execution.requirements;
                        let scope = &r.runner.scope;
                        let serves = !req.labels.is_empty()
                            || scope.any
                            || scope.suites.contains(&execution.suite);
                        let fits = r.runner.labels.is_superset(&req.labels)
                            && serves
                            && r.free().covers(&need)
                            && !s.avoid_runners.contains(&r.runner.id);
                        assert!(
                            !fits,
                            "runner {} sits idle beside queued shard {} of {}",
                            r.runner.name, s.index, execution.id
                        );
                    }
                }
            }
            for s in &shards {
                if s.status.is_in_flight() {
                    let runner = s
                        .runner_id
                        .clone()
                        .expect("an in-flight shard has a runner");
                    assert!(s.lease_id.is_some(), "an in-flight shard has a lease");
                    *held.entry(runner).or_default() += 1;
                }
                queued +=
                    u64::from(s.status == ShardStatus::Queued && !execution.status.is_terminal());
            }
            if execution.status == ExecutionStatus::Passed {
                assert!(
                    shards.iter().all(|s| s.status == ShardStatus::Passed),
                    "passed means every shard passed"
                );
                assert!(execution.totals.passed > 0, "passed means some test ran");
            }
        }
        for id in &self.runners {
            let r = app.runner(id).await.unwrap();
            let holds = held.get(id).copied().unwrap_or(0);
            assert_eq!(
                r.allocated.slots, holds,
                "allocated slots of {id} equal the shards it holds"
            );
            assert!(
                r.runner.capacity.covers(&r.allocated),
                "never over capacity"
            );
            assert_eq!(
                app.store.runner_shards(id).await.unwrap().len() as u32,
                holds
            );
        }
        assert_eq!(
            app.store.queue_stats().await.unwrap().queued_shards,
            queued,
            "queued counter matches"
        ); // The embedded store's in-memory hot set is exactly what its
           // database holds.
        app.store.verify_mirror().await.unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_operations_keeps_the_books_straight(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut world = World { h: Harness::new(), runners: vec![], executions: vec![], just_scheduled: false };
            for op in &ops {
                world.apply(op).await;
                world.check().await;
            }
        });
    }
}
