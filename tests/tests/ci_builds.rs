//! CI builds with a manual clock: the jobs of one build (and their retries)
//! share one execution keyed by (provider, build id, suite), and in
//! `by_index` mode each job claims the shard of its index; a retried job
//! gets the same shard and its results supersede the old ones. A
//! conformance suite: the embedded store and DynamoDB (moto).

use std::collections::BTreeSet;
use tms::auth::Principal;
use tms::domain::{
    Bounded, ExecutionStatus, Mode, Resources, RunnerType, ShardResult, ShardStatus, TestResult,
    TestStatus,
};
use tms::ids::ExecutionId;
use tms::usecases::{Assignment, CiInput, NewExecution, NewRunner, ReportStatus, ShardReport};
use tms::Error;
use tms_tests::{Backend, Harness};

const TESTS: [&str; 6] = ["t_a", "t_b", "t_c", "t_d", "t_e", "t_f"];

/// What each parallel job of build `build` sends when it starts.
fn job_queue(build: &str, job: u32, tests: &[&str]) -> NewExecution {
    let mut new = tms_tests::new_execution("shop", tests.iter().map(|t| t.to_string()), 3);
    new.mode = Mode::ByIndex;
    new.timeout_seconds = Some(3600);
    new.shard_timeout_seconds = Some(600);
    new.ci = Some(CiInput {
        provider: Bounded::new("github-actions"),
        build_id: Bounded::new(build),
        job: Bounded::new(format!("test ({job})")),
        commit: Bounded::new("4f1c2e9"),
        branch: Bounded::new("main"),
        url: Bounded::new(format!(
            "https://github.com/acme/shop/actions/runs/{build}/job/{job}"
        )),
        attempt: None,
        project: Bounded::new("acme/shop"),
    });
    new
}

/// A static `tms queue --wait` step of build `build`, attempt `attempt`
/// (GitHub's `GITHUB_RUN_ATTEMPT`).
fn attempt_queue(build: &str, attempt: u32) -> NewExecution {
    let mut new = tms_tests::new_execution("shop", TESTS.iter().map(|t| t.to_string()), 2);
    new.ci = Some(CiInput {
        provider: Bounded::new("github-actions"),
        build_id: Bounded::new(build),
        job: Bounded::new("test"),
        attempt: Some(attempt),
        ..Default::default()
    });
    new
}

/// Reports every assignment of `runner`, failing the tests in `failing`.
async fn run_assigned<B: Backend>(
    h: &Harness<B>,
    runner: &tms::ids::RunnerId,
    failing: &[&str],
) -> Vec<String> {
    h.app.schedule_sweep().await.unwrap();
    let mut ran = Vec::new();
    for a in h.app.heartbeat(runner, None).await.unwrap() {
        let tests: Vec<TestResult> = a
            .tests
            .iter()
            .map(|t| TestResult {
                name: t.clone(),
                status: if failing.contains(&t.as_str()) {
                    TestStatus::Failed
                } else {
                    TestStatus::Passed
                },
                duration_ms: 5,
                message: None,
                earlier: Vec::new(),
                junit: None,
            })
            .collect();
        ran.extend(a.tests.iter().cloned());
        let report =
            tms_tests::final_report(a.shard_index, a.lease_id.clone(), ShardResult::of(tests));
        h.app
            .report_shard(&Principal::Runner(runner.clone()), &a.execution_id, report)
            .await
            .unwrap();
    }
    h.deliver_events().await;
    ran
}

/// A CI re-run ("re-run failed jobs": the same build, a later attempt)
/// runs the failed shards of the build's execution again and gets a new
/// verdict; passed shards are not run again. The same attempt again is a
/// replay, and a passed execution is not run again by a later attempt.
async fn a_later_attempt_of_the_build_reruns_only_what_failed<B: Backend>() {
    let h = Harness::<B>::start().await;
    let runner = h.runner("r", 4).await;
    let first = h
        .app
        .queue_execution(attempt_queue("900", 1), None)
        .await
        .unwrap();
    let id = first.execution.id.clone();
    let ran = run_assigned(&h, &runner, &["t_b"]).await;
    assert_eq!(ran.len(), TESTS.len());
    let (e, shards) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Failed);
    let failed_shard = shards
        .iter()
        .find(|s| s.tests.iter().any(|t| t == "t_b"))
        .unwrap();

    // The same attempt again (another step of it) only finds the verdict.
    let same = h
        .app
        .queue_execution(attempt_queue("900", 1), None)
        .await
        .unwrap();
    assert!(same.replayed);
    assert_eq!(same.execution.status, ExecutionStatus::Failed);

    // Attempt 2: only the failed shard runs again; now it passes.
    let rerun = h
        .app
        .queue_execution(attempt_queue("900", 2), None)
        .await
        .unwrap();
    assert!(rerun.replayed);
    assert_eq!(rerun.execution.id, id);
    assert_eq!(rerun.execution.status, ExecutionStatus::Running);
    let ran = run_assigned(&h, &runner, &[]).await;
    let mut expected: Vec<String> = failed_shard.tests.to_vec();
    let mut got = ran.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "only the failed shard's tests ran again");
    let (e, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Passed);
    assert_eq!(e.totals.passed as usize, TESTS.len());
    assert_eq!(e.ci.as_ref().and_then(|c| c.attempt), Some(2));

    // A passed build's later attempt runs nothing.
    let third = h
        .app
        .queue_execution(attempt_queue("900", 3), None)
        .await
        .unwrap();
    assert_eq!(third.execution.status, ExecutionStatus::Passed);
    assert!(run_assigned(&h, &runner, &[]).await.is_empty());
}

/// One job starting: queue (or find) the build's execution, claim its shard.
async fn job<B: Backend>(
    h: &Harness<B>,
    build: &str,
    index: u32,
) -> (ExecutionId, String, Assignment) {
    let queued = h
        .app
        .queue_execution(job_queue(build, index, &TESTS), None)
        .await
        .unwrap();
    let id = queued.execution.id.clone();
    let caller = Principal::Webhook(id.clone());
    let claimed = h.app.claim_shard(&caller, &id, index).await.unwrap();
    (id, queued.webhook_token, claimed)
}

fn results(tests: &[String], status: TestStatus) -> ShardResult {
    let n = tests.len() as u32;
    let failed = status == TestStatus::Failed;
    ShardResult {
        passed: if failed { 0 } else { n },
        failed: if failed { n } else { 0 },
        skipped: 0,
        flaky: 0,
        exit_code: None,
        tests: tests
            .iter()
            .map(|t| TestResult {
                name: t.clone(),
                status,
                duration_ms: 10,
                message: failed.then(|| "assertion failed".into()),
                earlier: Vec::new(),
                junit: None,
            })
            .collect(),
    }
}

async fn report<B: Backend>(
    h: &Harness<B>,
    a: &Assignment,
    status: TestStatus,
) -> tms::Result<ShardStatus> {
    let report = ShardReport {
        shard_index: a.shard_index,
        lease_id: a.lease_id.clone(),
        status: if status == TestStatus::Failed {
            ReportStatus::Failed
        } else {
            ReportStatus::Passed
        },
        results: Some(results(&a.tests, status)),
    };
    let caller = Principal::Webhook(a.execution_id.clone());
    Ok(h.app
        .report_shard(&caller, &a.execution_id, report)
        .await?
        .shard_status)
}

async fn the_jobs_of_one_build_share_one_execution_and_each_claims_its_own_shard<B: Backend>() {
    let h = Harness::<B>::start().await;
    // A registered runner with room gets none of it: CI jobs claim these.
    let runner = h
        .app
        .register_runner(NewRunner {
            name: "pool".into(),
            runner_type: RunnerType::Docker,
            labels: BTreeSet::new(),
            capacity: Resources::new(8, 16_000, 32_768),
            priority: 0,
            dispatch: None,
            heartbeat_interval_seconds: None,
            scope: None,
        })
        .await
        .unwrap()
        .runner
        .runner
        .id;
    let mut claimed = Vec::new();
    for index in 0..3 {
        claimed.push(job(&h, "1001", index).await);
    }
    let id = &claimed[0].0;
    assert!(
        claimed.iter().all(|(e, _, _)| e == id),
        "one execution for the build"
    );
    let mut all: Vec<String> = claimed
        .iter()
        .flat_map(|(_, _, a)| a.tests.to_vec())
        .collect();
    all.sort();
    assert_eq!(
        all,
        TESTS.map(String::from).to_vec(),
        "the shards split the tests"
    );
    assert_eq!(h.app.schedule_pass().await.unwrap(), 0);
    assert!(h.app.heartbeat(&runner, None).await.unwrap().is_empty());
    // Another build is another execution.
    let (other, _, _) = job(&h, "1002", 0).await;
    assert_ne!(&other, id);
    // Every job's own webhook token works for its reports.
    for (_, _, a) in &claimed {
        report(&h, a, TestStatus::Passed).await.unwrap();
    }
    h.deliver_events().await;
    assert_eq!(
        h.app.execution_status(id).await.unwrap().0.status,
        ExecutionStatus::Passed
    );
}

async fn a_retried_ci_job_gets_the_same_shard_and_its_new_results_supersede_the_old<B: Backend>() {
    let h = Harness::<B>::start().await;
    let mut claimed = Vec::new();
    for index in 0..3 {
        claimed.push(job(&h, "2001", index).await.2);
    }
    let id = claimed[0].execution_id.clone();
    report(&h, &claimed[0], TestStatus::Passed).await.unwrap();
    report(&h, &claimed[1], TestStatus::Failed).await.unwrap();
    report(&h, &claimed[2], TestStatus::Passed).await.unwrap();
    h.deliver_events().await;
    let (e, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Failed);

    // "Re-run failed jobs": job 1 starts again and asks for shard 1.
    let (again_id, _, again) = job(&h, "2001", 1).await;
    assert_eq!(again_id, id);
    assert_eq!(
        again.tests, claimed[1].tests,
        "the same tests as the first run"
    );
    assert_eq!(again.attempt, 2);
    assert_ne!(again.lease_id, claimed[1].lease_id);
    assert_eq!(
        h.app.execution_status(&id).await.unwrap().0.status,
        ExecutionStatus::Running
    );
    // A straggling report of the first run is fenced off.
    assert!(matches!(
        report(&h, &claimed[1], TestStatus::Passed).await,
        Err(Error::StaleLease { .. }) | Err(Error::InvalidTransition { .. })
    ));
    report(&h, &again, TestStatus::Passed).await.unwrap();
    h.deliver_events().await;
    let (e, shards, tests) = h.app.execution_report(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Passed);
    assert_eq!(
        (e.totals.passed, e.totals.failed),
        (TESTS.len() as u32, 0),
        "the new results replace the old, never added to them"
    );
    assert_eq!(shards[1].attempts.len(), 2);
    let flaky: Vec<&str> = tests
        .iter()
        .filter(|t| t.flaky)
        .map(|t| t.name.as_str())
        .collect();
    let mut expected: Vec<&str> = claimed[1].tests.iter().map(String::as_str).collect();
    expected.sort();
    let mut flaky_sorted = flaky.clone();
    flaky_sorted.sort();
    assert_eq!(flaky_sorted, expected);
}

async fn a_job_of_the_same_build_asking_for_other_tests_is_refused<B: Backend>() {
    let h = Harness::<B>::start().await;
    job(&h, "3001", 0).await;
    let other = job_queue("3001", 1, &["t_a", "t_z"]);
    assert!(matches!(
        h.app.queue_execution(other, None).await,
        Err(Error::IdempotencyMismatch)
    ));
}

async fn a_claimed_shard_past_its_deadline_waits_for_its_job_to_claim_it_again<B: Backend>() {
    let h = Harness::<B>::start().await;
    let (id, _, first) = job(&h, "4001", 2).await;
    h.clock.advance_secs(601);
    h.app.timeout_sweep().await.unwrap();
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(
        shards[2].status,
        ShardStatus::Queued,
        "taken back, not given up"
    );
    assert_eq!(shards[2].attempts[0].status, ShardStatus::Errored);
    assert_eq!(
        h.app.schedule_pass().await.unwrap(),
        0,
        "not the scheduler's to assign"
    );
    let caller = Principal::Webhook(id.clone());
    let again = h.app.claim_shard(&caller, &id, 2).await.unwrap();
    assert_eq!(again.tests, first.tests);
    assert_eq!(again.attempt, 2);
}

async fn shards_of_a_static_execution_cannot_be_claimed<B: Backend>() {
    let h = Harness::<B>::start().await;
    let new = tms_tests::new_execution("shop", TESTS.map(String::from), 2);
    let id = h.app.queue_execution(new, None).await.unwrap().execution.id;
    let caller = Principal::Webhook(id.clone());
    assert!(matches!(
        h.app.claim_shard(&caller, &id, 0).await,
        Err(Error::Validation { .. })
    ));
    let stranger = Principal::Webhook(ExecutionId::generate());
    assert!(matches!(
        h.app.claim_shard(&stranger, &id, 0).await,
        Err(Error::Forbidden(_))
    ));
}

tms_tests::conformance!(
    a_later_attempt_of_the_build_reruns_only_what_failed,
    the_jobs_of_one_build_share_one_execution_and_each_claims_its_own_shard,
    a_retried_ci_job_gets_the_same_shard_and_its_new_results_supersede_the_old,
    a_job_of_the_same_build_asking_for_other_tests_is_refused,
    a_claimed_shard_past_its_deadline_waits_for_its_job_to_claim_it_again,
    shards_of_a_static_execution_cannot_be_claimed,
);
