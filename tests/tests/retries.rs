//! Automatic retries of failed tests with a manual clock: a failed test runs
//! again on another runner within a per-test and a per-execution budget (set
//! by the execution or by a load-balancing rule); a test that fails and then
//! passes is flaky, reported as such, and the execution passes unless it is
//! `strict`. A conformance suite: the embedded store and DynamoDB (moto).

use std::collections::BTreeSet;
use tms::auth::Principal;
use tms::domain::{ExecutionStatus, RetryPolicy, ShardResult, Strategy, TestResult, TestStatus};
use tms::ids::{ExecutionId, RunnerId};
use tms::usecases::{Assignment, NewExecution, NewRule};
use tms_tests::{final_report, Backend, Harness};

async fn runner<B: Backend>(h: &Harness<B>, name: &str) -> RunnerId {
    h.runner(name, 1).await
}

async fn queue<B: Backend>(h: &Harness<B>, new: NewExecution) -> ExecutionId {
    h.app.queue_execution(new, None).await.unwrap().execution.id
}

fn suite(name: &str, retries: Option<RetryPolicy>, strict: bool) -> NewExecution {
    let mut new = tms_tests::new_execution(name, ["test_cart".into(), "test_pay".into()], 1);
    new.retries = retries;
    new.strict = strict;
    new
}

async fn work<B: Backend>(h: &Harness<B>, r: &RunnerId) -> Vec<Assignment> {
    h.app.schedule_pass().await.unwrap();
    h.app.heartbeat(r, None).await.unwrap()
}

/// The one shard the scheduler hands to any of `runners` now.
async fn anywhere<B: Backend>(h: &Harness<B>, runners: &[&RunnerId]) -> (RunnerId, Assignment) {
    let mut took = Vec::new();
    for r in runners {
        for x in work(h, r).await {
            took.push(((*r).clone(), x));
        }
    }
    assert_eq!(took.len(), 1, "one shard handed out");
    took.remove(0)
}

/// Reports every test of `a` as passed except those in `failing`.
async fn report<B: Backend>(h: &Harness<B>, r: &RunnerId, a: &Assignment, failing: &[&str]) {
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
            duration_ms: 30,
            message: failing
                .contains(&t.as_str())
                .then(|| "AssertionError: timeout talking to the payment sandbox".into()),
            earlier: Vec::new(),
            junit: None,
        })
        .collect();
    let failed = tests
        .iter()
        .filter(|t| t.status == TestStatus::Failed)
        .count() as u32;
    let report = final_report(
        a.shard_index,
        a.lease_id.clone(),
        ShardResult {
            passed: tests.len() as u32 - failed,
            failed,
            skipped: 0,
            flaky: 0,
            exit_code: None,
            tests,
        },
    );
    let caller = Principal::Runner(r.clone());
    h.app
        .report_shard(&caller, &a.execution_id, report)
        .await
        .unwrap();
}

async fn status<B: Backend>(h: &Harness<B>, id: &ExecutionId) -> (ExecutionStatus, String) {
    h.deliver_events().await;
    let (e, _) = h.app.execution_status(id).await.unwrap();
    (e.status, e.status_reason.unwrap_or_default())
}

const ONE_RETRY: Option<RetryPolicy> = Some(RetryPolicy {
    per_test: 1,
    total: 10,
});

async fn a_failed_test_passing_on_another_runner_is_flaky_and_the_execution_passes<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a").await;
    let id = queue(&h, suite("shop", ONE_RETRY, false)).await;
    let first = work(&h, &a).await;
    report(&h, &a, &first[0], &["test_pay"]).await;
    assert_eq!(
        status(&h, &id).await.0,
        ExecutionStatus::Running,
        "the retry is open"
    );
    // a is free, but the retry prefers another runner.
    let b = runner(&h, "b").await;
    let retry = work(&h, &b).await;
    assert_eq!(retry.len(), 1);
    assert_eq!(
        *retry[0].tests,
        ["test_pay"],
        "only the failed test runs again"
    );
    assert!(h.app.heartbeat(&a, None).await.unwrap().is_empty());
    report(&h, &b, &retry[0], &[]).await;

    let (state, why) = status(&h, &id).await;
    assert_eq!(state, ExecutionStatus::Passed);
    assert!(why.contains("1 flaky"), "{why}");
    let (e, shards, tests) = h.app.execution_report(&id).await.unwrap();
    assert_eq!(
        (e.totals.passed, e.totals.failed, e.totals.flaky),
        (2, 0, 1)
    );
    assert_eq!(e.retries_used, 1);
    assert_eq!(shards[1].retry_of, Some(0));
    let pay = tests.iter().find(|t| t.name == "test_pay").unwrap();
    assert!(pay.flaky);
    let runs: Vec<_> = pay
        .attempts
        .iter()
        .map(|r| (r.attempt, r.shard_index, r.status, r.runner_id.clone()))
        .collect();
    assert_eq!(
        runs,
        vec![
            (1, 0, TestStatus::Failed, Some(a)),
            (2, 1, TestStatus::Passed, Some(b))
        ]
    );
    let xml = tms::junit::merged_report(&e, &shards, &tests).unwrap();
    tms_tests::assert_valid_junit(&xml);
    assert!(xml.contains("<flakyFailure"), "{xml}");
    // The suite's flaky history remembers it, once the aggregator has the
    // completions (delivered twice, as events may be).
    let completions = h.events.take();
    for event in completions.iter().chain(&completions) {
        h.app.handle_event(event).await.unwrap();
    }
    let history = h.app.flaky_tests("shop").await.unwrap();
    let names: Vec<(&str, u32)> = history
        .items
        .iter()
        .map(|t| (t.name.as_str(), t.flaky_runs))
        .collect();
    assert_eq!(names, vec![("test_pay", 1)]);
}

async fn a_strict_execution_fails_on_a_flaky_test<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a").await;
    let id = queue(&h, suite("shop", ONE_RETRY, true)).await;
    let first = work(&h, &a).await;
    report(&h, &a, &first[0], &["test_pay"]).await;
    let b = runner(&h, "b").await;
    let retry = work(&h, &b).await;
    report(&h, &b, &retry[0], &[]).await;
    let (state, why) = status(&h, &id).await;
    assert_eq!(state, ExecutionStatus::Failed);
    assert!(why.contains("flaky") && why.contains("strict"), "{why}");
}

async fn retries_stop_at_the_per_test_and_the_execution_budget<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a").await;
    let b = runner(&h, "b").await;
    // Per test: one retry; failing again there is final.
    let id = queue(&h, suite("shop", ONE_RETRY, false)).await;
    let (first_runner, first) = anywhere(&h, &[&a, &b]).await;
    report(&h, &first_runner, &first, &["test_pay"]).await;
    let (retry_runner, retry) = anywhere(&h, &[&a, &b]).await;
    assert_ne!(retry_runner, first_runner, "retried on the other runner");
    report(&h, &retry_runner, &retry, &["test_pay"]).await;
    let (state, why) = status(&h, &id).await;
    assert_eq!(state, ExecutionStatus::Failed);
    assert!(why.contains("1 test failed"), "{why}");
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(shards.len(), 2, "no second retry");

    // Per execution: two failures, room for one retry: none is retried.
    let tight = Some(RetryPolicy {
        per_test: 3,
        total: 1,
    });
    let id = queue(&h, suite("cart", tight, false)).await;
    let (r, first) = anywhere(&h, &[&a, &b]).await;
    report(&h, &r, &first, &["test_pay", "test_cart"]).await;
    assert_eq!(status(&h, &id).await.0, ExecutionStatus::Failed);
    let (e, shards) = h.app.execution_status(&id).await.unwrap();
    assert_eq!((shards.len(), e.retries_used), (1, 0));
}

async fn a_rule_sets_retries_for_the_suites_it_matches<B: Backend>() {
    let h = Harness::<B>::start().await;
    h.app
        .create_rule(NewRule {
            name: "retry e2e".into(),
            suite_pattern: "e2e-*".into(),
            labels: BTreeSet::new(),
            min_priority: None,
            max_priority: None,
            strategy: Strategy::Priority,
            pool: Default::default(),
            precedence: 0,
            test_retries: ONE_RETRY,
        })
        .await
        .unwrap();
    let a = runner(&h, "a").await;
    let b = runner(&h, "b").await;
    // Runs `suite`, failing test_pay: how many shards does it end with?
    let shards_after_a_failure = |name: &'static str, own: Option<RetryPolicy>| {
        let (h, a, b) = (&h, &a, &b);
        async move {
            let new = suite(name, own, false);
            let id = h.app.queue_execution(new, None).await.unwrap().execution.id;
            let (r, first) = anywhere(h, &[a, b]).await;
            report(h, &r, &first, &["test_pay"]).await;
            let shards = h.app.execution_status(&id).await.unwrap().1.len();
            // Let a retry pass, so the next suite starts on idle runners.
            for r in [a, b] {
                for x in work(h, r).await {
                    report(h, r, &x, &[]).await;
                }
            }
            shards
        }
    };
    assert_eq!(
        shards_after_a_failure("e2e-checkout", None).await,
        2,
        "retried by the rule"
    );
    assert_eq!(
        shards_after_a_failure("unit", None).await,
        1,
        "no rule, no retry"
    );
    let none = Some(RetryPolicy {
        per_test: 0,
        total: 0,
    });
    assert_eq!(
        shards_after_a_failure("e2e-search", none).await,
        1,
        "the execution's own setting wins over the rule's"
    );
}

tms_tests::conformance!(
    a_failed_test_passing_on_another_runner_is_flaky_and_the_execution_passes,
    a_strict_execution_fails_on_a_flaky_test,
    retries_stop_at_the_per_test_and_the_execution_budget,
    a_rule_sets_retries_for_the_suites_it_matches,
);
