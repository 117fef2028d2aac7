//! Use-case tests with a manual clock: the orchestrator's behaviour without
//! HTTP and without sleeping. A conformance suite: every test runs on the
//! embedded store and on DynamoDB (moto).

use std::collections::BTreeSet;
use tms::auth::Principal;
use tms::domain::{
    ExecutionStatus, Resources, RunnerStatus, RunnerType, ShardResult, ShardStatus, Strategy,
    TestResult, TestStatus, Usage,
};
use tms::ids::{ExecutionId, RunnerId};
use tms::ports::Store;
use tms::time::Clock;
use tms::usecases::{Assignment, NewExecution, NewRule, NewRunner, ReportStatus, ShardReport};
use tms::Error;
use tms_tests::{Backend, Harness};

fn runner(name: &str, slots: u32) -> NewRunner {
    NewRunner {
        name: name.into(),
        runner_type: RunnerType::Custom,
        labels: BTreeSet::new(),
        capacity: Resources::new(slots, 16_000, 32_768),
        priority: 0,
        dispatch: None,
        heartbeat_interval_seconds: None,
        scope: None,
    }
}

fn execution(suite: &str, tests: usize, parallelism: u32) -> NewExecution {
    tms_tests::new_execution(suite, (0..tests).map(|i| format!("test_{i}")), parallelism)
}

async fn register<B: Backend>(h: &Harness<B>, name: &str, slots: u32) -> RunnerId {
    h.app
        .register_runner(runner(name, slots))
        .await
        .unwrap()
        .runner
        .runner
        .id
}

async fn queue<B: Backend>(h: &Harness<B>, new: NewExecution) -> ExecutionId {
    h.app.queue_execution(new, None).await.unwrap().execution.id
}

async fn assignments<B: Backend>(h: &Harness<B>, id: &RunnerId) -> Vec<Assignment> {
    h.app.heartbeat(id, None).await.unwrap()
}

fn passed(n: u32) -> Option<ShardResult> {
    Some(ShardResult {
        passed: n,
        ..Default::default()
    })
}

async fn report<B: Backend>(
    h: &Harness<B>,
    runner: &RunnerId,
    a: &Assignment,
    status: ReportStatus,
    results: Option<ShardResult>,
) -> tms::Result<ShardStatus> {
    let report = ShardReport {
        shard_index: a.shard_index,
        lease_id: a.lease_id.clone(),
        status,
        results,
    };
    let caller = Principal::Runner(runner.clone());
    Ok(h.app
        .report_shard(&caller, &a.execution_id, report)
        .await?
        .shard_status)
}

async fn status<B: Backend>(h: &Harness<B>, id: &ExecutionId) -> ExecutionStatus {
    h.app.execution_status(id).await.unwrap().0.status
}

async fn allocated<B: Backend>(h: &Harness<B>, id: &RunnerId) -> Resources {
    h.app.runner(id).await.unwrap().allocated
}

async fn a_parallel_execution_runs_to_passed_and_gives_all_capacity_back<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r1", 4).await;
    let e = queue(&h, execution("api", 10, 3)).await;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 3);
    assert_eq!(status(&h, &e).await, ExecutionStatus::Running);
    assert_eq!(allocated(&h, &r).await.slots, 3);

    let work = assignments(&h, &r).await;
    assert_eq!(work.len(), 3);
    let all_tests: BTreeSet<String> = work.iter().flat_map(|a| a.tests.to_vec()).collect();
    assert_eq!(all_tests.len(), 10, "every test is in exactly one shard");
    for a in &work {
        report(&h, &r, a, ReportStatus::Started, None)
            .await
            .unwrap();
        report(
            &h,
            &r,
            a,
            ReportStatus::Passed,
            passed(a.tests.len() as u32),
        )
        .await
        .unwrap();
    }
    h.deliver_events().await;
    let (exec, _) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.status, ExecutionStatus::Passed);
    assert_eq!(exec.totals.passed, 10);
    assert_eq!(allocated(&h, &r).await, Resources::default());
}

async fn when_runner_misses_heartbeats_its_shards_are_requeued_to_another_runner<B: Backend>() {
    let h = Harness::<B>::start().await;
    let dead = register(&h, "dead", 1).await;
    let e = queue(&h, execution("api", 1, 1)).await;
    h.app.schedule_pass().await.unwrap();
    let lost = assignments(&h, &dead).await.remove(0);
    let alive = register(&h, "alive", 1).await;

    // Two intervals of silence are tolerated; three are not.
    h.clock.advance_secs(60);
    h.app.heartbeat(&alive, None).await.unwrap();
    assert_eq!(
        h.app.health_sweep().await.unwrap().runners_marked_unhealthy,
        0
    );
    h.clock.advance_secs(31);
    h.app.heartbeat(&alive, None).await.unwrap();
    let swept = h.app.health_sweep().await.unwrap();
    assert_eq!(swept.runners_marked_unhealthy, 1);
    assert_eq!(swept.shards_requeued, 1);
    assert_eq!(
        h.app.runner(&dead).await.unwrap().runner.status,
        RunnerStatus::Unhealthy
    );
    assert_eq!(allocated(&h, &dead).await.slots, 0);
    let history = h.app.store_health_history(&dead).await.unwrap();
    assert_eq!(history[0].status, RunnerStatus::Unhealthy);

    h.app.schedule_pass().await.unwrap();
    let moved = assignments(&h, &alive).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].attempt, 2);
    // The dead runner's late report is fenced out.
    let late = report(&h, &dead, &lost, ReportStatus::Passed, passed(1))
        .await
        .unwrap_err();
    assert!(matches!(late, Error::StaleLease { .. }), "{late:?}");
    report(&h, &alive, &moved[0], ReportStatus::Passed, passed(1))
        .await
        .unwrap();
    h.deliver_events().await;
    assert_eq!(status(&h, &e).await, ExecutionStatus::Passed);
}

async fn a_revived_runner_is_active_again_and_its_recovery_is_recorded<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "flaky", 1).await;
    h.clock.advance_secs(91);
    h.app.health_sweep().await.unwrap();
    h.app.heartbeat(&r, None).await.unwrap();
    assert_eq!(
        h.app.runner(&r).await.unwrap().runner.status,
        RunnerStatus::Active
    );
    let history = h.app.store_health_history(&r).await.unwrap();
    assert_eq!(
        history.iter().map(|x| x.status).collect::<Vec<_>>(),
        vec![RunnerStatus::Active, RunnerStatus::Unhealthy]
    );
}

async fn a_shard_past_its_deadline_is_retried_on_another_runner<B: Backend>() {
    let h = Harness::<B>::start().await;
    let slow = register(&h, "slow", 1).await;
    let mut new = execution("api", 1, 1);
    new.shard_timeout_seconds = Some(60);
    let e = queue(&h, new).await;
    h.app.schedule_pass().await.unwrap();
    let first = assignments(&h, &slow).await.remove(0);
    let other = register(&h, "other", 1).await;

    h.clock.advance_secs(61);
    let swept = h.app.timeout_sweep().await.unwrap();
    assert_eq!(swept.shards_requeued, 1);
    h.app.schedule_pass().await.unwrap();
    assert!(
        assignments(&h, &slow).await.is_empty(),
        "the runner that timed out is avoided"
    );
    let second = assignments(&h, &other).await.remove(0);
    assert_eq!(second.attempt, 2);
    let stale = report(&h, &slow, &first, ReportStatus::Passed, passed(1))
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::StaleLease { .. }), "{stale:?}");
    assert_eq!(status(&h, &e).await, ExecutionStatus::Running);
}

async fn a_shard_out_of_attempts_is_errored_and_the_execution_is_not_passed<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "only", 1).await;
    let mut new = execution("api", 1, 1);
    new.shard_timeout_seconds = Some(10);
    new.max_attempts = Some(2);
    let e = queue(&h, new).await;
    let mut sweeps = Vec::new();
    for _ in 0..2 {
        h.app.schedule_pass().await.unwrap();
        assert_eq!(
            assignments(&h, &r).await.len(),
            1,
            "with no other runner, the same one retries"
        );
        h.clock.advance_secs(11);
        sweeps.push(h.app.timeout_sweep().await.unwrap());
    }
    assert_eq!((sweeps[0].shards_requeued, sweeps[0].shards_failed), (1, 0));
    assert_eq!((sweeps[1].shards_requeued, sweeps[1].shards_failed), (0, 1));
    let idle = h.app.timeout_sweep().await.unwrap();
    assert_eq!(idle.shards_failed, 0, "nothing held, nothing counted");
    let (exec, shards) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(shards[0].status, ShardStatus::Errored);
    assert_eq!(shards[0].attempt, 2);
    assert_eq!(exec.status, ExecutionStatus::Errored);
    assert!(exec
        .status_reason
        .unwrap()
        .contains("gave up after 2 of 2 attempts"));
    assert_eq!(allocated(&h, &r).await.slots, 0);
}

async fn an_execution_past_its_timeout_is_timed_out_and_its_capacity_released<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 2).await;
    let mut new = execution("api", 4, 4);
    new.timeout_seconds = Some(120);
    let e = queue(&h, new).await;
    h.app.schedule_pass().await.unwrap();
    assert_eq!(allocated(&h, &r).await.slots, 2);
    h.clock.advance_secs(121);
    let swept = h.app.timeout_sweep().await.unwrap();
    assert_eq!(swept.executions_timed_out, 1);
    let (exec, shards) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.status, ExecutionStatus::TimedOut);
    assert!(shards.iter().all(|s| s.status == ShardStatus::Cancelled));
    assert_eq!(allocated(&h, &r).await, Resources::default());
    assert!(assignments(&h, &r).await.is_empty());
}

async fn cancelling_an_execution_cancels_its_shards_and_frees_runner_capacity<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 2).await;
    let e = queue(&h, execution("api", 3, 3)).await;
    h.app.schedule_pass().await.unwrap();
    let held = assignments(&h, &r).await;
    let exec = h.app.cancel_execution(&e).await.unwrap();
    assert_eq!(exec.status, ExecutionStatus::Cancelled);
    assert_eq!(allocated(&h, &r).await, Resources::default());
    let late = report(&h, &r, &held[0], ReportStatus::Passed, passed(1))
        .await
        .unwrap_err();
    assert!(matches!(late, Error::InvalidTransition { .. }), "{late:?}");
    assert!(matches!(
        h.app.cancel_execution(&e).await,
        Err(Error::InvalidTransition { .. })
    ));
    h.app.schedule_pass().await.unwrap();
    assert!(assignments(&h, &r).await.is_empty());
}

async fn a_paused_runner_gets_no_new_work_until_resumed<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 2).await;
    h.app.pause_runner(&r).await.unwrap();
    queue(&h, execution("api", 2, 2)).await;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 0);
    h.app.resume_runner(&r).await.unwrap();
    assert_eq!(h.app.schedule_pass().await.unwrap(), 2);
}

async fn deregistering_a_runner_requeues_its_work_and_revokes_its_token<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = h.app.register_runner(runner("leaving", 1)).await.unwrap();
    let id = r.runner.runner.id.clone();
    queue(&h, execution("api", 1, 1)).await;
    h.app.schedule_pass().await.unwrap();
    assert_eq!(assignments(&h, &id).await.len(), 1);
    assert_eq!(
        h.app.authenticate(&r.token).await.unwrap(),
        Principal::Runner(id.clone())
    );
    h.app.deregister_runner(&id).await.unwrap();
    assert!(matches!(
        h.app.authenticate(&r.token).await,
        Err(Error::Unauthorized)
    ));
    let next = register(&h, "next", 1).await;
    h.app.schedule_pass().await.unwrap();
    assert_eq!(assignments(&h, &next).await.len(), 1);
}

async fn the_same_idempotency_key_and_body_return_the_same_execution<B: Backend>() {
    let h = Harness::<B>::start().await;
    let key = ("build-42".to_string(), "hash-a".to_string());
    let first = h
        .app
        .queue_execution(execution("api", 2, 1), Some(key.clone()))
        .await
        .unwrap();
    let again = h
        .app
        .queue_execution(execution("api", 2, 1), Some(key))
        .await
        .unwrap();
    assert_eq!(first.execution.id, again.execution.id);
    assert!(again.replayed);
    // Both callers' webhook tokens work.
    for token in [&first.webhook_token, &again.webhook_token] {
        assert_eq!(
            h.app.authenticate(token).await.unwrap(),
            Principal::Webhook(first.execution.id.clone())
        );
    }
    let listed = h.app.list_executions(Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
}

async fn a_listing_page_is_bounded_in_bytes_and_its_cursor_leads_to_the_rest<B: Backend>() {
    let h = Harness::<B>::start().await;
    // Each execution carries about 15 KiB of metadata: 150 of them are
    // over a page's byte bound, though under its 200 items.
    let mut queued = BTreeSet::new();
    for i in 0..150 {
        let mut new = execution("api", 1, 1);
        new.metadata
            .insert("notes".into(), serde_json::json!("n".repeat(15 * 1024)));
        new.metadata.insert("i".into(), serde_json::json!(i));
        queued.insert(queue(&h, new).await);
    }
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    let mut cursor = None;
    loop {
        let filter = tms::ports::ExecutionFilter {
            limit: 200,
            cursor: cursor.take(),
            ..Default::default()
        };
        let page = h.app.list_executions(filter).await.unwrap();
        pages += 1;
        let bytes: usize = page
            .items
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap().len())
            .sum();
        assert!(bytes <= tms::usecases::MAX_PAGE_BYTES, "{bytes} bytes");
        for e in &page.items {
            assert!(seen.insert(e.id.clone()), "listed twice: {}", e.id);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert!(pages >= 2, "one page held all of it");
    assert_eq!(seen, queued);
}

async fn the_same_idempotency_key_with_another_body_is_refused<B: Backend>() {
    let h = Harness::<B>::start().await;
    h.app
        .queue_execution(execution("api", 2, 1), Some(("k".into(), "hash-a".into())))
        .await
        .unwrap();
    let err = h
        .app
        .queue_execution(execution("api", 3, 1), Some(("k".into(), "hash-b".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdempotencyMismatch));
}

async fn a_duplicate_final_report_counts_once<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 1).await;
    let e = queue(&h, execution("api", 3, 1)).await;
    h.app.schedule_pass().await.unwrap();
    let a = assignments(&h, &r).await.remove(0);
    report(&h, &r, &a, ReportStatus::Passed, passed(3))
        .await
        .unwrap();
    report(&h, &r, &a, ReportStatus::Passed, passed(3))
        .await
        .unwrap();
    // The bus may deliver the completion twice as well.
    let events = h.events.take();
    assert_eq!(events.len(), 1, "a duplicate report publishes nothing");
    for ev in events.iter().chain(events.iter()) {
        h.app.handle_event(ev).await.unwrap();
    }
    let (exec, _) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.totals.passed, 3);
    assert_eq!(exec.status, ExecutionStatus::Passed);
}

/// Two aggregator instances (two concurrent tasks: the aggregator keeps no
/// state between events) folding the same completions at once.
async fn two_aggregators_on_the_same_event_never_double_count<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 4).await;
    let e = queue(&h, execution("s", 8, 4)).await;
    h.app.schedule_pass().await.unwrap();
    for a in assignments(&h, &r).await {
        report(
            &h,
            &r,
            &a,
            ReportStatus::Passed,
            passed(a.tests.len() as u32),
        )
        .await
        .unwrap();
    }
    let events = h.events.take();
    assert_eq!(events.len(), 4);
    let fold = |events: Vec<tms::ports::Event>| {
        let app = h.app.clone();
        tokio::spawn(async move { app.handle_events(&events).await })
    };
    let (first, second) = (fold(events.clone()), fold(events));
    for outcome in first
        .await
        .unwrap()
        .into_iter()
        .chain(second.await.unwrap())
    {
        outcome.unwrap();
    }
    let (exec, _) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.totals.passed, 8, "each shard's results count once");
    assert_eq!(exec.status, ExecutionStatus::Passed);
}

async fn a_webhook_token_only_reports_for_its_own_execution<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 2).await;
    let mine = h
        .app
        .queue_execution(execution("a", 1, 1), None)
        .await
        .unwrap();
    let other = queue(&h, execution("b", 1, 1)).await;
    h.app.schedule_pass().await.unwrap();
    let a = assignments(&h, &r)
        .await
        .into_iter()
        .find(|a| a.execution_id == other)
        .unwrap();
    let caller = h.app.authenticate(&mine.webhook_token).await.unwrap();
    let report = ShardReport {
        shard_index: 0,
        lease_id: a.lease_id,
        status: ReportStatus::Started,
        results: None,
    };
    assert!(matches!(
        h.app.report_shard(&caller, &other, report).await,
        Err(Error::Forbidden(_))
    ));
}

async fn an_execution_whose_shards_reported_no_tests_is_errored_not_passed<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 1).await;
    let e = queue(&h, execution("api", 2, 1)).await;
    h.app.schedule_pass().await.unwrap();
    let a = assignments(&h, &r).await.remove(0);
    let judged = report(
        &h,
        &r,
        &a,
        ReportStatus::Passed,
        Some(ShardResult::default()),
    )
    .await
    .unwrap();
    assert_eq!(judged, ShardStatus::Errored);
    h.deliver_events().await;
    let (exec, _) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.status, ExecutionStatus::Errored);
    assert!(exec.status_reason.unwrap().contains("zero tests"));
}

async fn an_execution_whose_every_test_was_skipped_passes_and_says_so<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 2).await;
    let e = queue(&h, execution("api", 4, 2)).await;
    h.app.schedule_pass().await.unwrap();
    for a in assignments(&h, &r).await {
        let skipped = Some(ShardResult {
            skipped: a.tests.len() as u32,
            ..Default::default()
        });
        let judged = report(&h, &r, &a, ReportStatus::Passed, skipped)
            .await
            .unwrap();
        assert_eq!(judged, ShardStatus::Passed);
    }
    h.deliver_events().await;
    let (exec, _) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.status, ExecutionStatus::Passed);
    assert_eq!(exec.totals.skipped, 4);
    assert_eq!(exec.status_reason.as_deref(), Some("all 4 tests skipped"));
}

async fn a_skip_only_shard_beside_passing_ones_leaves_the_execution_passed<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 2).await;
    let e = queue(&h, execution("api", 4, 2)).await;
    h.app.schedule_pass().await.unwrap();
    let work = assignments(&h, &r).await;
    let n = |a: &Assignment| a.tests.len() as u32;
    let skipped = Some(ShardResult {
        skipped: n(&work[0]),
        ..Default::default()
    });
    report(&h, &r, &work[0], ReportStatus::Passed, skipped)
        .await
        .unwrap();
    report(&h, &r, &work[1], ReportStatus::Passed, passed(n(&work[1])))
        .await
        .unwrap();
    h.deliver_events().await;
    let (exec, _) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.status, ExecutionStatus::Passed);
    assert_eq!((exec.totals.passed, exec.totals.skipped), (2, 2));
}

async fn a_lost_completion_event_is_folded_by_the_timeout_sweep<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 1).await;
    let e = queue(&h, execution("api", 1, 1)).await;
    h.app.schedule_pass().await.unwrap();
    let a = assignments(&h, &r).await.remove(0);
    report(&h, &r, &a, ReportStatus::Passed, passed(1))
        .await
        .unwrap();
    h.events.take(); // lost
    assert_eq!(status(&h, &e).await, ExecutionStatus::Running);
    h.app.timeout_sweep().await.unwrap();
    assert_eq!(status(&h, &e).await, ExecutionStatus::Passed);
}

/// However many open executions sit nearer their deadline, each finished
/// one whose completion event was lost is folded within a few timeout
/// sweeps: the sweep reads the executions to time out first, then the
/// page after a cursor it keeps, so its re-fold walks every open execution.
async fn every_open_execution_is_refolded_over_successive_timeout_sweeps<B: Backend>() {
    let h = Harness::<B>::start_with(tms::config::Config {
        sweep_batch: 2,
        ..Default::default()
    })
    .await;
    // Three executions that stay open, nearest their deadline: no runner
    // fits them.
    for _ in 0..3 {
        let mut open = execution("open", 1, 1);
        open.timeout_seconds = Some(600);
        open.requirements = Some(tms::usecases::RequirementsInput {
            labels: ["nobody".to_string()].into_iter().collect(),
            ..Default::default()
        });
        queue(&h, open).await;
    }
    // Four that finish, their completion events lost.
    let r = register(&h, "r", 4).await;
    let mut done = Vec::new();
    for _ in 0..4 {
        let mut later = execution("done", 1, 1);
        later.timeout_seconds = Some(3600);
        done.push(queue(&h, later).await);
    }
    // Passes of two executions each (the sweep batch), until all are out.
    h.app.schedule_sweep().await.unwrap();
    for a in assignments(&h, &r).await {
        report(&h, &r, &a, ReportStatus::Passed, passed(1))
            .await
            .unwrap();
    }
    h.events.take(); // lost
    for id in &done {
        assert_eq!(status(&h, id).await, ExecutionStatus::Running);
    }
    // Two a sweep beyond the three that stay ahead of them: within five.
    for _ in 0..5 {
        h.app.timeout_sweep().await.unwrap();
    }
    for id in &done {
        assert_eq!(status(&h, id).await, ExecutionStatus::Passed, "{id}");
    }
}

/// Silence is judged against each runner's own heartbeat interval: one that
/// said it heartbeats every second is unhealthy after three silent seconds
/// and its work moves at once, while a runner of the default interval (30
/// s) is left alone. A day of silence later it is removed, its history
/// kept, and it no longer counts as the fleet's.
async fn a_runner_is_judged_by_its_own_interval_and_removed_after_a_day_of_silence<B: Backend>() {
    let h = Harness::<B>::start().await;
    let mut quick = runner("quick", 1);
    quick.heartbeat_interval_seconds = Some(1);
    let quick = h.app.register_runner(quick).await.unwrap().runner.runner.id;
    let slow = register(&h, "slow", 1).await;
    let e = queue(&h, execution("api", 2, 2)).await;
    h.app.schedule_pass().await.unwrap();
    assert_eq!(assignments(&h, &quick).await.len(), 1);
    h.clock.advance_secs(4);
    let swept = h.app.health_sweep().await.unwrap();
    assert_eq!(swept.runners_marked_unhealthy, 1, "{swept:?}");
    assert_eq!(swept.shards_requeued, 1, "{swept:?}");
    assert_eq!(
        h.app.runner(&quick).await.unwrap().runner.status,
        RunnerStatus::Unhealthy
    );
    assert_eq!(
        h.app.runner(&slow).await.unwrap().runner.status,
        RunnerStatus::Active
    );
    // Not yet a day: still listed as unhealthy.
    h.clock.advance_secs(12 * 3600);
    assert_eq!(h.app.health_sweep().await.unwrap().runners_removed, 0);
    h.clock.advance_secs(12 * 3600 + 5);
    let swept = h.app.health_sweep().await.unwrap();
    assert_eq!(swept.runners_removed, 1, "{swept:?}");
    assert_eq!(
        h.app.runner(&quick).await.unwrap().runner.status,
        RunnerStatus::Deregistered
    );
    let history = h.app.store_health_history(&quick).await.unwrap();
    assert!(
        history
            .iter()
            .any(|r| r.reason.contains("removed after 24 h")),
        "{history:?}"
    );
    let health = h.app.system_health().await;
    let runners = health.runners.unwrap();
    assert_eq!(
        (runners.active, runners.deregistered),
        (0, 1),
        "{runners:?}"
    );
    let _ = e;
}

async fn low_priority_work_is_not_starved_by_a_stream_of_high_priority_work<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "single", 1).await;
    let mut low = execution("low", 1, 1);
    low.priority = Some(0);
    let low = queue(&h, low).await;
    let mut started_low_at = None;
    for round in 0..200 {
        let mut high = execution("high", 1, 1);
        high.priority = Some(100);
        queue(&h, high).await;
        h.app.schedule_pass().await.unwrap();
        let a = assignments(&h, &r).await.remove(0);
        if a.execution_id == low {
            started_low_at = Some(round);
            break;
        }
        report(&h, &r, &a, ReportStatus::Passed, passed(1))
            .await
            .unwrap();
        h.clock.advance_secs(30);
    }
    let round = started_low_at.expect("low priority work eventually ran");
    assert!(
        round > 50 && round < 150,
        "aging lets it through after about 100 steps, took {round}"
    );
}

async fn work_no_runner_can_take_at_the_head_of_the_queue_does_not_block_runnable_work<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let mut a = runner("a", 2);
    a.labels.insert("a".into());
    let a = h.app.register_runner(a).await.unwrap().runner.runner.id;
    let needing = |label: &str, priority: i32| {
        let mut e = execution(label, 2, 2);
        e.priority = Some(priority);
        e.requirements = Some(tms::usecases::RequirementsInput {
            labels: BTreeSet::from([label.to_owned()]),
            ..Default::default()
        });
        e
    };
    // Ahead in priority and in age, and between them exactly as many
    // shards as the runner has free slots.
    queue(&h, needing("nobody", 90)).await;
    queue(&h, needing("nobody", 80)).await;
    let runnable = queue(&h, needing("a", 10)).await;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 2);
    let work = assignments(&h, &a).await;
    assert_eq!(work.len(), 2);
    assert!(work.iter().all(|w| w.execution_id == runnable));
    assert_eq!(status(&h, &runnable).await, ExecutionStatus::Running);
}

async fn work_no_registered_runner_could_run_is_told_at_queue_time_and_while_it_waits<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let mut linux = runner("linux", 2);
    linux.labels.insert("linux".into());
    h.app.register_runner(linux).await.unwrap();
    let needing_gpu = |require_runner: bool| {
        let mut e = execution("ml", 2, 1);
        e.requirements = Some(tms::usecases::RequirementsInput {
            labels: BTreeSet::from(["gpu".to_owned()]),
            ..Default::default()
        });
        e.require_runner = require_runner;
        e
    };
    let refused = h.app.queue_execution(needing_gpu(true), None).await;
    assert!(
        matches!(&refused, Err(Error::Validation { field, reason })
            if field == "requirements" && reason.contains("labels [gpu]")),
        "{refused:?}"
    );
    let listed = h.app.list_executions(Default::default()).await.unwrap();
    assert!(
        listed.items.is_empty(),
        "a refused queue call stores nothing"
    );

    let queued = h
        .app
        .queue_execution(needing_gpu(false), None)
        .await
        .unwrap();
    assert_eq!(
        queued.warnings,
        ["no registered runner has labels [gpu]".to_owned()]
    );
    let id = queued.execution.id;
    let (waiting, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(waiting.status, ExecutionStatus::Queued);
    assert_eq!(
        waiting.status_reason.as_deref(),
        Some("no registered runner has labels [gpu]")
    );
    // A runner that fits registers: the reason goes, the work runs.
    let mut gpu = runner("gpu", 2);
    gpu.labels.insert("gpu".into());
    h.app.register_runner(gpu).await.unwrap();
    let (waiting, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(waiting.status_reason, None);
    assert_eq!(h.app.schedule_pass().await.unwrap(), 1);
    // Runnable work queues without a warning.
    let plain = h
        .app
        .queue_execution(execution("api", 2, 1), None)
        .await
        .unwrap();
    assert!(plain.warnings.is_empty(), "{:?}", plain.warnings);
}

/// A runner that declares suites or projects takes the unlabelled work of
/// those alone, statically assigned or claimed; work nobody declares waits
/// saying who would take it, and a runner taking any takes it. The class
/// index keeps a scope's work apart: a free runner of one suite does not
/// stall behind the other suite's queue.
async fn unlabelled_work_goes_only_to_runners_that_declare_its_suite_or_project<B: Backend>() {
    let h = Harness::<B>::start().await;
    let scoped = |name: &str, suites: &[&str], projects: &[&str]| {
        let mut r = runner(name, 4);
        r.scope = Some(tms::domain::Scope {
            any: false,
            suites: suites.iter().map(|s| (*s).to_owned()).collect(),
            projects: projects.iter().map(|s| (*s).to_owned()).collect(),
        });
        r
    };
    let web = h
        .app
        .register_runner(scoped("web", &["web"], &[]))
        .await
        .unwrap();
    let web = web.runner.runner.id;
    let shop = h
        .app
        .register_runner(scoped("shop", &[], &["acme/shop"]))
        .await
        .unwrap()
        .runner
        .runner
        .id;
    // Four api executions ahead of the web one: not web's to take.
    for _ in 0..4 {
        queue(&h, execution("api", 2, 2)).await;
    }
    let w = queue(&h, execution("web", 2, 2)).await;
    let mut from_shop = execution("api", 2, 1);
    from_shop.ci = Some(tms::usecases::CiInput {
        project: tms::domain::Bounded::new("acme/shop"),
        ..Default::default()
    });
    let s = queue(&h, from_shop).await;
    h.app.schedule_pass().await.unwrap();
    let took = |work: Vec<Assignment>| -> BTreeSet<ExecutionId> {
        work.into_iter().map(|a| a.execution_id).collect()
    };
    assert_eq!(took(assignments(&h, &web).await), [w.clone()].into());
    assert_eq!(took(assignments(&h, &shop).await), [s].into());

    let (waiting, _) = h
        .app
        .execution_status(&queue(&h, execution("api", 1, 1)).await)
        .await
        .unwrap();
    assert_eq!(waiting.status, ExecutionStatus::Queued);
    assert!(
        waiting
            .status_reason
            .as_deref()
            .is_some_and(|r| r.contains("no registered runner serves suite \"api\"")),
        "{:?}",
        waiting.status_reason
    );

    // Dynamic work: listed and claimable only by the runner it is for.
    let mut dynamic = execution("api", 4, 2);
    dynamic.mode = tms::domain::Mode::Dynamic;
    let d = queue(&h, dynamic).await;
    let listed = h.app.claimable(&web, None, 100).await.unwrap();
    assert!(
        listed.items.iter().all(|c| c.execution_id != d),
        "{listed:?}"
    );
    assert!(h.app.claim_batch(&web, &d).await.is_err());

    // A runner taking any unlabelled work takes the api executions.
    let any = register(&h, "any", 16).await;
    h.app.schedule_pass().await.unwrap();
    assert!(!assignments(&h, &any).await.is_empty());
    assert!(h.app.claim_batch(&any, &d).await.is_ok());
}

async fn usage_above_the_allocation_is_recorded_as_a_limit_violation<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 2).await;
    queue(&h, execution("api", 1, 1)).await; // unit: 500m / 512 MB per shard
    h.app.schedule_pass().await.unwrap();
    h.app
        .heartbeat(
            &r,
            Some(Usage {
                cpu_millis: 400,
                memory_mb: 256,
            }),
        )
        .await
        .unwrap();
    h.app
        .heartbeat(
            &r,
            Some(Usage {
                cpu_millis: 1500,
                memory_mb: 256,
            }),
        )
        .await
        .unwrap();
    let u = h.app.utilization().await.unwrap();
    assert_eq!(u.violations.len(), 1);
    assert_eq!(u.violations[0].exceeded, vec!["cpu"]);
    assert_eq!(u.total_allocated, Resources::new(1, 500, 512));
    assert_eq!(u.runners[0].slots_pct, 50.0);
}

async fn resource_needs_default_by_test_type_and_block_runners_too_small<B: Backend>() {
    let h = Harness::<B>::start().await;
    let mut small = runner("small", 4);
    small.capacity = Resources::new(4, 1000, 1024);
    let small = h.app.register_runner(small).await.unwrap().runner.runner.id;
    let mut e2e = execution("web", 1, 1);
    e2e.test_type = tms::domain::TestType::E2e;
    let e = h.app.queue_execution(e2e, None).await.unwrap();
    assert_eq!(
        e.execution.requirements.per_shard(),
        Resources::new(1, 2000, 2048)
    );
    assert_eq!(h.app.schedule_pass().await.unwrap(), 0);
    let big = register(&h, "big", 1).await;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 1);
    assert!(assignments(&h, &small).await.is_empty());
    assert_eq!(assignments(&h, &big).await.len(), 1);
}

async fn retry_runs_failed_shards_again_on_another_runner<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = register(&h, "a", 2).await;
    let e = queue(&h, execution("api", 2, 2)).await;
    h.app.schedule_pass().await.unwrap();
    let work = assignments(&h, &a).await;
    report(&h, &a, &work[0], ReportStatus::Passed, passed(1))
        .await
        .unwrap();
    report(
        &h,
        &a,
        &work[1],
        ReportStatus::Failed,
        Some(ShardResult {
            failed: 1,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    h.deliver_events().await;
    assert_eq!(status(&h, &e).await, ExecutionStatus::Failed);

    let b = register(&h, "b", 2).await;
    let reopened = h.app.retry_execution(&e).await.unwrap();
    assert_eq!(reopened.status, ExecutionStatus::Running);
    h.app.schedule_pass().await.unwrap();
    let again = assignments(&h, &b).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].shard_index, work[1].shard_index);
    report(&h, &b, &again[0], ReportStatus::Passed, passed(1))
        .await
        .unwrap();
    h.deliver_events().await;
    let (exec, _) = h.app.execution_status(&e).await.unwrap();
    assert_eq!(exec.status, ExecutionStatus::Passed);
    assert_eq!(
        (exec.totals.passed, exec.totals.failed),
        (2, 0),
        "the retry supersedes the failure"
    );
}

async fn a_round_robin_rule_spreads_shards_across_its_pool_in_turn<B: Backend>() {
    let h = Harness::<B>::start().await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let mut r = runner(name, 10);
        r.labels.insert("linux".into());
        ids.push(h.app.register_runner(r).await.unwrap().runner.runner.id);
    }
    register(&h, "outside-pool", 10).await;
    let pool = tms::domain::RunnerPool {
        labels: ["linux".to_string()].into(),
        types: vec![],
    };
    h.app
        .create_rule(NewRule {
            name: "spread api".into(),
            suite_pattern: "api-*".into(),
            labels: BTreeSet::new(),
            min_priority: None,
            max_priority: None,
            strategy: Strategy::RoundRobin,
            pool,
            precedence: 0,
            test_retries: None,
        })
        .await
        .unwrap();
    queue(&h, execution("api-unit", 6, 6)).await;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 6);
    for id in &ids {
        assert_eq!(assignments(&h, id).await.len(), 2, "two shards each");
    }
    // The cursor is durable: the next pass continues where this one stopped.
    queue(&h, execution("api-more", 1, 1)).await;
    h.app.schedule_pass().await.unwrap();
    let counts: Vec<usize> = futures::future::join_all(ids.iter().map(|id| assignments(&h, id)))
        .await
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 7);
    assert_eq!(counts.iter().filter(|c| **c == 3).count(), 1);
}

async fn eight_concurrent_scheduling_passes_never_double_assign_or_overcommit<B: Backend>() {
    let h = Harness::<B>::start().await;
    let mut runners = Vec::new();
    for i in 0..5 {
        runners.push(register(&h, &format!("r{i}"), 3).await);
    }
    for i in 0..6 {
        queue(&h, execution(&format!("s{i}"), 8, 4)).await;
    }
    let passes: Vec<_> = (0..8)
        .map(|_| {
            let app = h.app.clone();
            tokio::spawn(async move { app.schedule_pass().await.unwrap() })
        })
        .collect();
    let assigned: usize = futures::future::join_all(passes)
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    assert!(assigned <= 15, "5 runners x 3 slots, got {assigned}");
    let mut leases = BTreeSet::new();
    let mut total = 0;
    for r in &runners {
        let work = assignments(&h, r).await;
        assert!(work.len() <= 3);
        assert_eq!(allocated(&h, r).await.slots as usize, work.len());
        for a in work {
            assert!(
                leases.insert((a.execution_id.clone(), a.shard_index)),
                "a shard is held by one runner only"
            );
            total += 1;
        }
    }
    assert_eq!(total, assigned);
    assert_eq!(
        h.app.store.queue_stats().await.unwrap().in_flight_shards as usize,
        assigned
    );
}

async fn a_runner_polling_every_second_stays_healthy_though_not_every_beat_is_written<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "busy-poller", 1).await;
    for second in 1..=200 {
        h.clock.advance_secs(1);
        h.app.heartbeat(&r, None).await.unwrap();
        if second % 10 == 0 {
            assert_eq!(
                h.app.health_sweep().await.unwrap().runners_marked_unhealthy,
                0
            );
        }
    }
    // The embedded store writes such heartbeats without making the caller wait.
    h.app.store.flush().await.unwrap();
    let stored = h.app.runner(&r).await.unwrap().runner;
    let lag = h.clock.now().since(stored.last_heartbeat);
    assert!(
        lag < 3_000,
        "recorded heartbeat lags by at most a tenth of an interval, was {lag} ms"
    );
    assert!(
        stored.version < 150,
        "most beats were not written: version {}",
        stored.version
    );
}

async fn a_token_revoked_by_another_instance_stops_working_within_five_seconds<B: Backend>() {
    let h = Harness::<B>::start().await;
    let registered = h.app.register_runner(runner("elsewhere", 1)).await.unwrap();
    let id = registered.runner.runner.id.clone();
    assert!(h.app.authenticate(&registered.token).await.is_ok());
    // Another instance deregisters it: this one only sees the store.
    let mut stored = h.app.runner(&id).await.unwrap().runner;
    let version = stored.version;
    stored.deregister().unwrap();
    h.app.store.update_runner(&stored, version).await.unwrap();
    h.clock.advance_secs(4);
    assert!(
        h.app.authenticate(&registered.token).await.is_ok(),
        "verified tokens are trusted briefly"
    );
    h.clock.advance_secs(2);
    assert!(matches!(
        h.app.authenticate(&registered.token).await,
        Err(Error::Unauthorized)
    ));
}

/// Per-test durations reported with a finished shard become the suite's
/// history; the next execution of those tests, sent without hints, is split
/// on it (a slow test gets a shard to itself) and shows each shard's
/// expected duration.
/// A suite queued by files (`tests/test_*.py`, a `--glob`) is split by
/// time from its second run on: a file is expected to take what its cases
/// took, whether they were learned from a run of the file or imported per
/// test (a pytest-split `.test_durations`).
async fn files_queued_whole_are_split_by_what_their_cases_took<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 4).await;
    let files = ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"];
    let by_files = || tms_tests::new_execution("files", files.iter().map(|f| f.to_string()), 2);
    queue(&h, by_files()).await;
    h.app.schedule_pass().await.unwrap();
    for a in &assignments(&h, &r).await {
        // Each file's cases, under the ids pytest gives them.
        let tests: Vec<TestResult> = a
            .tests
            .iter()
            .flat_map(|file| {
                let ms = if file.ends_with("test_a.py") {
                    4_000
                } else {
                    500
                };
                ["test_one", "test_two"].map(|case| TestResult {
                    name: format!("{file}::{case}"),
                    status: TestStatus::Passed,
                    duration_ms: ms,
                    message: None,
                    earlier: Vec::new(),
                    junit: None,
                })
            })
            .collect();
        let results = ShardResult {
            passed: tests.len() as u32,
            tests,
            ..Default::default()
        };
        report(&h, &r, a, ReportStatus::Passed, Some(results))
            .await
            .unwrap();
    }
    h.deliver_events().await;
    let second = h.app.queue_execution(by_files(), None).await.unwrap();
    let heavy = second
        .shards
        .iter()
        .find(|s| s.tests.iter().any(|t| t == "tests/test_a.py"))
        .unwrap();
    assert_eq!(*heavy.tests, ["tests/test_a.py"], "{:?}", second.shards);
    assert_eq!(heavy.estimated_ms, Some(8_000));

    // Imported per test, queued by file: rolled up at queue time.
    let imported: std::collections::HashMap<String, f64> = [
        ("tests/test_x.py::TestX::test_1", 30.0),
        ("tests/test_x.py::TestX::test_2", 30.0),
        ("tests/test_y.py::test_1", 1.0),
        ("tests/test_z.py::test_1", 1.0),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    h.app
        .import_timings("imported", tms::usecases::DurationsFile::Map(imported))
        .await
        .unwrap();
    let new = tms_tests::new_execution(
        "imported",
        ["tests/test_x.py", "tests/test_y.py", "tests/test_z.py"].map(String::from),
        2,
    );
    let q = h.app.queue_execution(new, None).await.unwrap();
    let x = q
        .shards
        .iter()
        .find(|s| s.tests.iter().any(|t| t == "tests/test_x.py"))
        .unwrap();
    assert_eq!(*x.tests, ["tests/test_x.py"], "{:?}", q.shards);
    assert_eq!(x.estimated_ms, Some(60_000));
}

async fn a_completed_shard_teaches_the_next_split_its_test_durations<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = register(&h, "r", 4).await;
    queue(&h, execution("learn", 4, 2)).await;
    h.app.schedule_pass().await.unwrap();
    let work = assignments(&h, &r).await;
    assert_eq!(work.len(), 2);
    for a in &work {
        let mut tests: Vec<TestResult> = a
            .tests
            .iter()
            .map(|t| TestResult {
                name: t.clone(),
                status: TestStatus::Passed,
                duration_ms: if t == "test_0" { 9_000 } else { 100 },
                message: None,
                earlier: Vec::new(),
                junit: None,
            })
            .collect();
        // A test reported twice in one shard (run again by the runner) is
        // two samples, not an error.
        if let Some(slow) = tests.iter().find(|t| t.name == "test_0").cloned() {
            tests.push(slow);
        }
        let results = ShardResult {
            passed: tests.len() as u32,
            tests,
            ..Default::default()
        };
        report(&h, &r, a, ReportStatus::Passed, Some(results))
            .await
            .unwrap();
    }
    // The aggregator learns them from the completions, both in one batch
    // (folded once, each learned).
    let completions = h.events.take();
    assert_eq!(completions.len(), 2);
    for result in h.app.handle_events(&completions).await {
        result.unwrap();
    }

    let second = queue(&h, execution("learn", 4, 2)).await;
    let (_, shards) = h.app.execution_status(&second).await.unwrap();
    let slow = shards
        .iter()
        .find(|s| s.tests.iter().any(|t| t == "test_0"))
        .unwrap();
    assert_eq!(*slow.tests, ["test_0"]);
    assert_eq!(slow.estimated_ms, Some(9_000));
    let rest = shards.iter().find(|s| s.index != slow.index).unwrap();
    assert_eq!(rest.estimated_ms, Some(300));

    // Another suite's tests of the same names learned nothing.
    let other = queue(&h, execution("other", 4, 2)).await;
    let (_, shards) = h.app.execution_status(&other).await.unwrap();
    assert!(shards.iter().all(|s| s.estimated_ms.is_none()));
    assert!(shards.iter().all(|s| s.tests.len() == 2));
}

tms_tests::conformance!(
    unlabelled_work_goes_only_to_runners_that_declare_its_suite_or_project,
    a_completed_shard_teaches_the_next_split_its_test_durations,
    files_queued_whole_are_split_by_what_their_cases_took,
    two_aggregators_on_the_same_event_never_double_count,
    a_parallel_execution_runs_to_passed_and_gives_all_capacity_back,
    when_runner_misses_heartbeats_its_shards_are_requeued_to_another_runner,
    a_revived_runner_is_active_again_and_its_recovery_is_recorded,
    a_shard_past_its_deadline_is_retried_on_another_runner,
    a_shard_out_of_attempts_is_errored_and_the_execution_is_not_passed,
    an_execution_past_its_timeout_is_timed_out_and_its_capacity_released,
    cancelling_an_execution_cancels_its_shards_and_frees_runner_capacity,
    a_paused_runner_gets_no_new_work_until_resumed,
    deregistering_a_runner_requeues_its_work_and_revokes_its_token,
    the_same_idempotency_key_and_body_return_the_same_execution,
    the_same_idempotency_key_with_another_body_is_refused,
    a_listing_page_is_bounded_in_bytes_and_its_cursor_leads_to_the_rest,
    a_duplicate_final_report_counts_once,
    a_webhook_token_only_reports_for_its_own_execution,
    an_execution_whose_shards_reported_no_tests_is_errored_not_passed,
    an_execution_whose_every_test_was_skipped_passes_and_says_so,
    a_skip_only_shard_beside_passing_ones_leaves_the_execution_passed,
    a_lost_completion_event_is_folded_by_the_timeout_sweep,
    every_open_execution_is_refolded_over_successive_timeout_sweeps,
    a_runner_is_judged_by_its_own_interval_and_removed_after_a_day_of_silence,
    low_priority_work_is_not_starved_by_a_stream_of_high_priority_work,
    work_no_runner_can_take_at_the_head_of_the_queue_does_not_block_runnable_work,
    work_no_registered_runner_could_run_is_told_at_queue_time_and_while_it_waits,
    usage_above_the_allocation_is_recorded_as_a_limit_violation,
    resource_needs_default_by_test_type_and_block_runners_too_small,
    retry_runs_failed_shards_again_on_another_runner,
    a_round_robin_rule_spreads_shards_across_its_pool_in_turn,
    eight_concurrent_scheduling_passes_never_double_assign_or_overcommit,
    a_runner_polling_every_second_stays_healthy_though_not_every_beat_is_written,
    a_token_revoked_by_another_instance_stops_working_within_five_seconds,
);
