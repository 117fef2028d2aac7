//! Metrics rollups with a manual clock: a finished execution's outcome, its
//! queue wait and run time land in its suite's counters for the hour it
//! finished, once — a repeated report or a second finish after a reopen
//! adds nothing — and `metrics` sums them per suite and per hour. A
//! conformance suite: the embedded store and DynamoDB (moto).

use tms::auth::Principal;
use tms::domain::metrics::HOUR_MS;
use tms::domain::ShardResult;
use tms::ids::RunnerId;
use tms::time::Clock;
use tms::usecases::Assignment;
use tms_tests::{final_report, Backend, Harness};

async fn runner<B: Backend>(h: &Harness<B>) -> RunnerId {
    h.runner("r", 4).await
}

async fn finish<B: Backend>(h: &Harness<B>, r: &RunnerId, a: &Assignment, failed: u32) {
    let report = final_report(
        a.shard_index,
        a.lease_id.clone(),
        ShardResult {
            passed: a.tests.len() as u32 - failed,
            failed,
            ..Default::default()
        },
    );
    let caller = Principal::Runner(r.clone());
    for _ in 0..2 {
        // The second, identical report changes nothing.
        h.app
            .report_shard(&caller, &a.execution_id, report.clone())
            .await
            .unwrap();
    }
    h.deliver_events().await;
}

async fn finished_executions_roll_up_once_per_suite_and_hour<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = runner(&h).await;
    let start = h.clock.now().0;
    let pass = tms_tests::new_execution("api", ["a".into()], 1);
    let fail = tms_tests::new_execution("api", ["b".into(), "c".into()], 1);
    h.app.queue_execution(pass, None).await.unwrap();
    h.app.queue_execution(fail, None).await.unwrap();
    let web = tms_tests::new_execution("web", ["w".into()], 1);
    let web = h.app.queue_execution(web, None).await.unwrap().execution.id;
    h.app.cancel_execution(&web).await.unwrap();
    // Both api executions wait 10 s for the runner, then run 40 s.
    h.clock.advance_secs(10);
    h.app.schedule_pass().await.unwrap();
    let work = h.app.heartbeat(&r, None).await.unwrap();
    assert_eq!(work.len(), 2);
    h.clock.advance_secs(40);
    for a in &work {
        finish(&h, &r, a, if a.tests.len() == 2 { 1 } else { 0 }).await;
    }

    let m = h.app.metrics(None, Some("1h")).await.unwrap();
    let api = m.suites.iter().find(|s| s.suite == "api").unwrap();
    assert_eq!(
        (
            api.figures.finished,
            api.figures.passed,
            api.figures.failed,
            api.figures.tests_passed,
            api.figures.tests_failed
        ),
        (2, 1, 1, 2, 1)
    );
    assert_eq!(api.figures.pass_rate, Some(0.5));
    let wait = api.figures.p50_wait_ms.unwrap();
    assert!(
        (5_000..=10_000).contains(&wait),
        "10 s is in the 5–10 s bucket: {wait}"
    );
    let run = api.figures.p95_run_ms.unwrap();
    assert!(
        (30_000..=60_000).contains(&run),
        "40 s is in the 30–60 s bucket: {run}"
    );
    let web_figures = m.suites.iter().find(|s| s.suite == "web").unwrap();
    assert_eq!(web_figures.figures.cancelled, 1);
    assert_eq!(
        web_figures.figures.pass_rate, None,
        "cancelled is no verdict"
    );
    assert_eq!(m.total.figures.finished, 3);

    // Two hours later another api run: a second hour in the series.
    h.clock.advance_secs(2 * 3600);
    let again = tms_tests::new_execution("api", ["a".into()], 1);
    h.app.queue_execution(again, None).await.unwrap();
    h.app.schedule_pass().await.unwrap();
    let work = h.app.heartbeat(&r, None).await.unwrap();
    finish(&h, &r, &work[0], 0).await;
    let m = h.app.metrics(Some("api"), Some("4h")).await.unwrap();
    assert_eq!(m.total.figures.finished, 3);
    assert_eq!(m.suites.len(), 1, "only the suite asked for");
    let busy: Vec<(i64, u64)> = m
        .hours
        .iter()
        .filter(|h| h.figures.finished > 0)
        .map(|h| (h.hour.0, h.figures.finished))
        .collect();
    let first_hour = (start + 50_000).div_euclid(HOUR_MS) * HOUR_MS;
    let last_hour = (start + 50_000 + 2 * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
    assert_eq!(busy, vec![(first_hour, 2), (last_hour, 1)]);
    // That run waited no time at all: read back through the store, its
    // wait is milliseconds, not the half second of a 0–1 s bucket.
    let last = h.app.metrics(Some("api"), Some("1h")).await.unwrap();
    let wait = last.total.figures.p50_wait_ms.unwrap();
    assert!(wait <= 10, "a wait of 0 ms reads as {wait} ms");
    assert!(
        m.hours.len() >= 4,
        "empty hours are kept: {}",
        m.hours.len()
    );
    // A range further back than 31 days, or in the future, is refused.
    assert!(h.app.metrics(None, Some("32d")).await.is_err());
    assert!(h.app.metrics(None, Some("soon")).await.is_err());
}

async fn a_reopened_execution_that_finishes_again_is_counted_once<B: Backend>() {
    let h = Harness::<B>::start().await;
    let mut new = tms_tests::new_execution("ci", ["x".into()], 1);
    new.mode = tms::domain::Mode::ByIndex;
    let queued = h.app.queue_execution(new, None).await.unwrap();
    let id = queued.execution.id;
    let caller = Principal::Admin;
    for failed in [1, 0] {
        // A CI job claims shard 0, then its retry claims it again.
        let a = h.app.claim_shard(&caller, &id, 0).await.unwrap();
        let report = final_report(
            0,
            a.lease_id.clone(),
            ShardResult {
                passed: 1 - failed,
                failed,
                ..Default::default()
            },
        );
        h.app.report_shard(&caller, &id, report).await.unwrap();
        h.deliver_events().await;
    }
    let (e, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, tms::domain::ExecutionStatus::Passed);
    let m = h.app.metrics(None, None).await.unwrap();
    assert_eq!(m.total.figures.finished, 1, "{:?}", m.total);
}

async fn health_sweeps_sample_slot_utilization_per_hour<B: Backend>() {
    let h = Harness::<B>::start().await;
    let r = runner(&h).await;
    let e = tms_tests::new_execution("api", ["a".into(), "b".into()], 2);
    h.app.queue_execution(e, None).await.unwrap();
    h.app.schedule_pass().await.unwrap();
    // Two of four slots in use, twice; then none of four.
    h.app.health_sweep().await.unwrap();
    h.app.health_sweep().await.unwrap();
    for a in h.app.heartbeat(&r, None).await.unwrap() {
        finish(&h, &r, &a, 0).await;
    }
    h.app.health_sweep().await.unwrap();
    let m = h.app.metrics(None, Some("1h")).await.unwrap();
    let now = m.hours.last().unwrap();
    let u = now.slot_utilization.unwrap();
    assert!((u - 4.0 / 12.0).abs() < 1e-9, "{u}");
    assert_eq!(m.slot_utilization, now.slot_utilization);
    assert!(
        m.suites.iter().all(|s| !s.suite.is_empty()),
        "samples are not a suite"
    );
}

tms_tests::conformance!(
    health_sweeps_sample_slot_utilization_per_hour,
    finished_executions_roll_up_once_per_suite_and_hour,
    a_reopened_execution_that_finishes_again_is_counted_once,
);
