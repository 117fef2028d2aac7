//! Per-test results with a manual clock: reports that do not account for
//! their shard's tests (no silent pass), JUnit XML from each producer kept in
//! `tests/fixtures/junit/`, results larger than one DynamoDB item, and every
//! attempt merged into one report — JSON and JUnit XML, validated against
//! the common JUnit schema. A conformance suite: the embedded store and
//! DynamoDB (moto).

use std::collections::BTreeSet;
use tms::auth::Principal;
use tms::domain::{
    ExecutionStatus, Resources, RunnerType, ShardResult, ShardStatus, TestResult, TestStatus,
};
use tms::ids::{ExecutionId, RunnerId};
use tms::junit::NameFormat;
use tms::usecases::{Assignment, JunitReport, NewRunner, ReportStatus, ShardReport};
use tms_tests::{Backend, Harness};

async fn register<B: Backend>(h: &Harness<B>, name: &str) -> RunnerId {
    let new = NewRunner {
        name: name.into(),
        runner_type: RunnerType::Custom,
        labels: BTreeSet::new(),
        capacity: Resources::new(4, 16_000, 32_768),
        priority: 0,
        dispatch: None,
        heartbeat_interval_seconds: None,
        scope: None,
    };
    h.app.register_runner(new).await.unwrap().runner.runner.id
}

/// Queues `tests` as one execution of `parallelism` shards and hands every
/// shard to a new runner.
async fn start<B: Backend>(
    h: &Harness<B>,
    tests: &[&str],
    parallelism: u32,
) -> (ExecutionId, RunnerId, Vec<Assignment>) {
    let runner = register(h, "a").await;
    let (id, work) = start_on(h, &runner, tests, parallelism).await;
    (id, runner, work)
}

/// Queues `tests` and hands every shard to `runner` (the only one with room).
async fn start_on<B: Backend>(
    h: &Harness<B>,
    runner: &RunnerId,
    tests: &[&str],
    parallelism: u32,
) -> (ExecutionId, Vec<Assignment>) {
    let new = tms_tests::new_execution("shop", tests.iter().map(|t| t.to_string()), parallelism);
    let id = h.app.queue_execution(new, None).await.unwrap().execution.id;
    h.app.schedule_pass().await.unwrap();
    let mut work = h.app.heartbeat(runner, None).await.unwrap();
    work.sort_by_key(|a| a.shard_index);
    assert_eq!(work.len(), parallelism as usize);
    (id, work)
}

/// Sends a final report as the runner holding the shard.
async fn send<B: Backend>(
    h: &Harness<B>,
    runner: &RunnerId,
    a: &Assignment,
    status: ReportStatus,
    results: ShardResult,
) -> ShardStatus {
    let report = ShardReport {
        shard_index: a.shard_index,
        lease_id: a.lease_id.clone(),
        status,
        results: Some(results),
    };
    let caller = Principal::Runner(runner.clone());
    h.app
        .report_shard(&caller, &a.execution_id, report)
        .await
        .unwrap()
        .shard_status
}

fn result(name: &str, status: TestStatus, message: Option<&str>) -> TestResult {
    TestResult {
        name: name.into(),
        status,
        duration_ms: 40,
        message: message.map(Into::into),
        earlier: Vec::new(),
        junit: None,
    }
}

/// Counts from the per-test results, as a runner would send them.
fn results(tests: Vec<TestResult>) -> ShardResult {
    let count = |s: &[TestStatus]| tests.iter().filter(|t| s.contains(&t.status)).count() as u32;
    ShardResult {
        passed: count(&[TestStatus::Passed]),
        failed: count(&[TestStatus::Failed, TestStatus::Errored]),
        skipped: count(&[TestStatus::Skipped]),
        flaky: 0,
        exit_code: None,
        tests,
    }
}

async fn finished<B: Backend>(h: &Harness<B>, id: &ExecutionId) -> (ExecutionStatus, String) {
    h.deliver_events().await;
    let (e, _) = h.app.execution_status(id).await.unwrap();
    (e.status, e.status_reason.unwrap_or_default())
}

fn fixture(name: &str) -> String {
    let path = format!("{}/fixtures/junit/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn a_shard_that_reports_fewer_tests_than_it_was_given_leaves_the_execution_errored_saying_which<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let (id, runner, work) = start(&h, &["test_a", "test_b", "test_c"], 1).await;
    let reported = results(vec![
        result("test_a", TestStatus::Passed, None),
        result("test_c", TestStatus::Passed, None),
    ]);
    let shard = send(&h, &runner, &work[0], ReportStatus::Passed, reported).await;
    assert_eq!(shard, ShardStatus::Errored);
    let (status, why) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Errored);
    assert!(
        why.contains("1 of the 3 tests it was given were not reported: test_b"),
        "{why}"
    );
}

async fn a_missing_test_is_not_hidden_behind_a_failure_beside_it<B: Backend>() {
    let h = Harness::<B>::start().await;
    let (id, runner, work) = start(&h, &["test_a", "test_b", "test_c"], 1).await;
    let reported = results(vec![
        result("test_a", TestStatus::Failed, Some("AssertionError")),
        result("test_c", TestStatus::Passed, None),
    ]);
    let shard = send(&h, &runner, &work[0], ReportStatus::Failed, reported).await;
    assert_eq!(shard, ShardStatus::Errored);
    let (status, why) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Errored);
    let missing = why.find("test_b").unwrap_or_else(|| panic!("{why}"));
    let failed = why
        .find("1 reported test failed")
        .unwrap_or_else(|| panic!("{why}"));
    assert!(missing < failed, "the missing test first: {why}");
}

async fn counts_alone_must_account_for_every_test_of_the_shard<B: Backend>() {
    let h = Harness::<B>::start().await;
    let (id, runner, work) = start(&h, &["test_a", "test_b", "test_c"], 1).await;
    let counts = ShardResult {
        passed: 2,
        ..Default::default()
    };
    assert_eq!(
        send(&h, &runner, &work[0], ReportStatus::Passed, counts).await,
        ShardStatus::Errored
    );
    let (status, why) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Errored);
    assert!(why.contains("reported 2 results for the 3 tests"), "{why}");
}

/// A runner with no per-test results reports its command's exit status:
/// the shard is judged by it, no test is counted on its strength, and the
/// execution says it was judged so. An exit code beside counts, or one
/// that contradicts the status, is refused before anything is written.
async fn an_exit_status_alone_judges_the_shard_and_counts_no_tests<B: Backend>() {
    let h = Harness::<B>::start().await;
    let (id, runner, work) = start(&h, &["test_a", "test_b"], 2).await;
    let caller = Principal::Runner(runner.clone());
    for (status, results) in [
        (
            ReportStatus::Passed,
            ShardResult {
                passed: 1,
                ..ShardResult::exit_status(0)
            },
        ),
        (ReportStatus::Passed, ShardResult::exit_status(1)),
        (ReportStatus::Failed, ShardResult::exit_status(0)),
    ] {
        let report = ShardReport {
            shard_index: 0,
            lease_id: work[0].lease_id.clone(),
            status,
            results: Some(results),
        };
        let refused = h.app.report_shard(&caller, &id, report).await;
        assert!(
            matches!(refused, Err(tms::error::Error::Validation { .. })),
            "{refused:?}"
        );
    }
    let exit = |code| ShardResult::exit_status(code);
    assert_eq!(
        send(&h, &runner, &work[0], ReportStatus::Passed, exit(0)).await,
        ShardStatus::Passed
    );
    let (e, _, _) = h.app.execution_report(&id).await.unwrap();
    assert_eq!(e.totals.passed, 0);
    assert_eq!(
        send(&h, &runner, &work[1], ReportStatus::Failed, exit(3)).await,
        ShardStatus::Failed
    );
    let (status, why) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Failed);
    assert_eq!(
        why,
        "shard 1 failed: its command exited with status 3 (no per-test results)"
    );
    let (e, shards, _) = h.app.execution_report(&id).await.unwrap();
    assert_eq!(
        (
            e.totals.passed,
            e.totals.failed,
            e.totals.shards_by_exit_status
        ),
        (0, 0, 2)
    );
    assert_eq!(shards[0].result.as_ref().unwrap().exit_code, Some(0));
    assert_eq!(shards[1].result.as_ref().unwrap().exit_code, Some(3));
}

async fn tests_nobody_asked_for_keep_the_execution_from_passing<B: Backend>() {
    let h = Harness::<B>::start().await;
    let (id, runner, work) = start(&h, &["test_a"], 1).await;
    let reported = results(vec![
        result("test_a", TestStatus::Passed, None),
        result("test_other", TestStatus::Passed, None),
    ]);
    send(&h, &runner, &work[0], ReportStatus::Passed, reported).await;
    let (status, why) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Errored);
    assert!(why.contains("not given: test_other"), "{why}");
}

/// A producer's report, the ways a CI job might queue the tests it ran
/// (files, classes, describe blocks, modules, test ids: each way a shard's
/// given tests), and the expected (passed, failed, skipped). No way says
/// how the tool names tests: each case is matched to the given tests.
struct Producer {
    file: &'static str,
    ways: &'static [&'static [&'static str]],
    counts: (u32, u32, u32),
}

const PRODUCERS: &[Producer] = &[
    Producer {
        file: "pytest-xunit2.xml",
        ways: &[
            &["tests/test_shop.py"],
            &["tests"],
            &[
                "tests/test_shop.py::test_checkout_total",
                "tests/test_shop.py::test_refund_rounding",
                "tests/test_shop.py::test_card_declined",
                "tests/test_shop.py::TestCart",
            ],
        ],
        counts: (2, 2, 1),
    },
    Producer {
        file: "pytest-xunit1.xml",
        ways: &[
            &["tests/test_shop.py"],
            &[
                "tests/test_shop.py::test_checkout_total",
                "tests/test_shop.py::test_refund_rounding",
                "tests/test_shop.py::test_card_declined",
                "tests/test_shop.py::TestCart::test_add_item",
                "tests/test_shop.py::TestCart::test_remove_item",
            ],
        ],
        counts: (2, 2, 1),
    },
    // nextest's classname is the crate ("shop"): `shop.tests::…` is no
    // test a job queues.
    Producer {
        file: "nextest-0.9.143.xml",
        ways: &[
            &[
                "tests::total_of_nothing_is_zero",
                "tests::total_adds_prices",
                "tests::total_applies_discount",
            ],
            &["tests"],
        ],
        counts: (2, 1, 0),
    },
    Producer {
        file: "jest-junit-16.0.0.xml",
        ways: &[
            &["Cart"],
            &["Cart total", "Cart checkout"],
            &[
                "Cart total of nothing is zero",
                "Cart total adds prices",
                "Cart total applies discount",
                "Cart checkout charges card",
            ],
        ],
        counts: (2, 1, 1),
    },
    Producer {
        file: "jest-junit-16.0.0-retries-file.xml",
        ways: &[&["jest/cart.test.js"], &["web/jest/cart.test.js"]],
        counts: (3, 1, 1),
    },
    Producer {
        file: "playwright-1.57.0.xml",
        ways: &[&["cart.spec.js"], &["tests/cart.spec.js"], &["cart"]],
        counts: (2, 1, 1),
    },
    // Retries inside the report count once: 4 cases, not 7.
    Producer {
        file: "pytest-rerunfailures-16.7.xml",
        ways: &[&["tests/test_flaky.py"]],
        counts: (2, 1, 1),
    },
    Producer {
        file: "nextest-0.9.143-retries.xml",
        ways: &[&[
            "tests::payment_is_flaky",
            "tests::total_adds_prices",
            "tests::refund_always_fails",
        ]],
        counts: (2, 1, 0),
    },
    Producer {
        file: "vitest-3.2.7-retry.xml",
        ways: &[&["Cart"], &["cart.test.js"], &["vitest/cart.test.js"]],
        counts: (2, 1, 1),
    },
    // The spec file is only in the suite's `file`, as an absolute path.
    Producer {
        file: "mocha-junit-reporter-2.2.1.xml",
        ways: &[&["Cart"], &["mocha/cart.spec.js"]],
        counts: (1, 1, 2),
    },
    // gotestsum --rerun-fails: every attempt a case, reruns after the
    // first run's cases.
    Producer {
        file: "gotestsum-1.8.2-rerun.xml",
        ways: &[
            &[
                "TestTotalAddsPrices",
                "TestPaymentIsFlaky",
                "TestRefundAlwaysFails",
                "TestTaxIsSkipped",
            ],
            &["example.com/shop"],
        ],
        counts: (2, 1, 1),
    },
    // An error counts as failed; the file is an absolute path.
    Producer {
        file: "phpunit-9.6.7.xml",
        ways: &[
            &["tests/CartTest.php"],
            &["CartTest"],
            &[
                "CartTest::testTotalAddsPrices",
                "CartTest::testRefundAlwaysFails",
                "CartTest::testPaymentThrows",
                "CartTest::testTaxIsSkipped",
            ],
        ],
        counts: (1, 2, 1),
    },
    Producer {
        file: "TEST-com.example.shop.CartTest.xml",
        ways: &[
            &["com.example.shop.CartTest"],
            &["com.example.shop"],
            &[
                "totalOfNothingIsZero",
                "totalAddsPrices",
                "totalAppliesDiscount",
                "checkoutChargesCard",
            ],
        ],
        counts: (2, 1, 1),
    },
];

/// A JUnit report of the runner's shard, its cases named as `names` says or
/// matched to the shard's tests.
async fn send_junit<B: Backend>(
    h: &Harness<B>,
    runner: &RunnerId,
    id: &ExecutionId,
    a: &Assignment,
    xml: &str,
    names: Option<NameFormat>,
) -> tms::error::Result<tms::usecases::ReportOutcome> {
    let report = JunitReport::parse(a.shard_index, a.lease_id.clone(), None, xml, names)?;
    h.app
        .report_junit(&Principal::Runner(runner.clone()), id, report)
        .await
}

async fn each_producers_junit_report_is_accepted_as_a_shards_results<B: Backend>() {
    let h = Harness::<B>::start().await;
    let runner = register(&h, "a").await;
    for Producer {
        file,
        ways,
        counts: (passed, failed, skipped),
    } in PRODUCERS
    {
        for given in *ways {
            let (id, work) = start_on(&h, &runner, given, 1).await;
            let outcome = send_junit(&h, &runner, &id, &work[0], &fixture(file), None)
                .await
                .unwrap();
            let (status, why) = finished(&h, &id).await;
            // Failed, not errored: every given test is accounted for and
            // every case is one of them.
            assert_eq!(
                outcome.shard_status,
                ShardStatus::Failed,
                "{file} queued as {given:?}: {why}"
            );
            assert_eq!(status, ExecutionStatus::Failed, "{file}: {why}");
            let (e, shards, tests) = h.app.execution_report(&id).await.unwrap();
            let t = e.totals;
            assert_eq!(
                (t.passed, t.failed, t.skipped),
                (*passed, *failed, *skipped),
                "{file}"
            );
            let failures: Vec<_> = tests
                .iter()
                .filter(|t| t.status == TestStatus::Failed)
                .collect();
            assert!(!failures.is_empty(), "{file}");
            assert!(
                failures
                    .iter()
                    .all(|t| t.message.as_deref().is_some_and(|m| !m.is_empty())),
                "{file}: every failure keeps its message: {failures:?}"
            );
            // Every case is kept, same-titled ones (jest) included.
            assert_eq!(tests.len() as u32, passed + failed + skipped, "{file}");
            let xml = tms::junit::merged_report(&e, &shards, &tests).unwrap();
            tms_tests::assert_valid_junit(&xml);
            // The merged report has the tool's own cases: each classname
            // and name as the tool wrote it, with its outcome.
            assert_eq!(
                tms_tests::junit_cases(&xml),
                tms_tests::junit_cases(&fixture(file)),
                "{file}"
            );
        }
    }
}

/// A tool that writes a classname the CI job never used (`fake`) for a
/// test queued as `t0`: the case is still `t0`, and a green suite passes.
/// A case that is no given test under any convention is unexpected; the
/// `names=` override names cases one way and is taken at its word.
async fn report_names_are_matched_to_the_given_tests_without_a_flag<B: Backend>() {
    let h = Harness::<B>::start().await;
    let runner = register(&h, "a").await;
    let xml = r#"<testsuite name="s"><testcase classname="fake" name="t0" time="0.1"/><testcase classname="fake" name="t1" time="0.2"/></testsuite>"#;
    let (id, work) = start_on(&h, &runner, &["t0", "t1"], 1).await;
    let outcome = send_junit(&h, &runner, &id, &work[0], xml, None)
        .await
        .unwrap();
    assert_eq!(outcome.shard_status, ShardStatus::Passed);
    let (status, why) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Passed, "{why}");
    let (_, _, tests) = h.app.execution_report(&id).await.unwrap();
    let names: BTreeSet<&str> = tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["t0", "t1"]));

    let (id, work) = start_on(&h, &runner, &["t0", "t2"], 1).await;
    send_junit(&h, &runner, &id, &work[0], xml, None)
        .await
        .unwrap();
    let (status, why) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Errored);
    assert!(why.contains("were not reported: t2"), "{why}");

    let (id, work) = start_on(&h, &runner, &["t0", "t1"], 1).await;
    send_junit(&h, &runner, &id, &work[0], xml, Some(NameFormat::Classname))
        .await
        .unwrap();
    let (status, why) = finished(&h, &id).await;
    assert_eq!(
        status,
        ExecutionStatus::Errored,
        "the override is taken as said"
    );
    assert!(
        why.contains("2 of the 2 tests it was given were not reported"),
        "{why}"
    );
}

async fn results_larger_than_one_dynamodb_item_are_chunked_and_read_back_whole<B: Backend>() {
    let h = Harness::<B>::start().await;
    let names: Vec<String> = (0..1200)
        .map(|i| format!("tests/test_big.py::test_{i}"))
        .collect();
    let given: Vec<&str> = names.iter().map(String::as_str).collect();
    let (id, runner, work) = start(&h, &given, 1).await;
    let trace = "x".repeat(1000);
    let reported = results(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let message = format!("{i}: {trace}");
                result(n, TestStatus::Failed, Some(&message))
            })
            .collect(),
    );
    send(&h, &runner, &work[0], ReportStatus::Failed, reported).await;
    let (_, shards, tests) = h.app.execution_report(&id).await.unwrap();
    let chunks = shards[0].attempts[0].result_chunks;
    assert!(chunks >= 4, "about 1.3 MB of results in {chunks} chunks");
    assert_eq!(tests.len(), 1200);
    for (i, t) in tests.iter().enumerate() {
        assert_eq!(t.name, names[i]);
        assert!(t
            .message
            .as_deref()
            .unwrap()
            .starts_with(&format!("{i}: x")));
    }
}

async fn a_test_that_failed_then_passed_on_another_runner_is_flaky_and_both_attempts_are_kept<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let (id, a, work) = start(&h, &["test_cart", "test_pay"], 2).await;
    let first = results(vec![result("test_cart", TestStatus::Passed, None)]);
    send(&h, &a, &work[0], ReportStatus::Passed, first).await;
    let failing = results(vec![result(
        "test_pay",
        TestStatus::Failed,
        Some("AssertionError: card declined\n  at pay.py:12"),
    )]);
    send(&h, &a, &work[1], ReportStatus::Failed, failing).await;
    assert_eq!(finished(&h, &id).await.0, ExecutionStatus::Failed);

    let b = register(&h, "b").await;
    h.app.retry_execution(&id).await.unwrap();
    h.app.schedule_pass().await.unwrap();
    let again = h.app.heartbeat(&b, None).await.unwrap();
    assert_eq!(again.len(), 1);
    let passing = results(vec![result("test_pay", TestStatus::Passed, None)]);
    send(&h, &b, &again[0], ReportStatus::Passed, passing).await;
    assert_eq!(finished(&h, &id).await.0, ExecutionStatus::Passed);

    let (e, shards, tests) = h.app.execution_report(&id).await.unwrap();
    let pay = tests.iter().find(|t| t.name == "test_pay").unwrap();
    assert!(pay.flaky);
    assert_eq!(pay.status, TestStatus::Passed);
    let attempts: Vec<_> = pay.attempts.iter().map(|x| (x.attempt, x.status)).collect();
    assert_eq!(
        attempts,
        vec![(1, TestStatus::Failed), (2, TestStatus::Passed)]
    );
    assert_eq!(pay.attempts[1].runner_id.as_ref(), Some(&b));
    assert!(!tests.iter().find(|t| t.name == "test_cart").unwrap().flaky);
    assert_eq!(shards[1].attempts.len(), 2);

    let xml = tms::junit::merged_report(&e, &shards, &tests).unwrap();
    tms_tests::assert_valid_junit(&xml);
    assert!(
        xml.contains(
            r#"<flakyFailure type="failure" message="attempt 1: AssertionError: card declined">"#
        ),
        "{xml}"
    );
}

async fn a_lost_run_is_an_attempt_of_its_own_in_the_report<B: Backend>() {
    let h = Harness::<B>::start().await;
    let (id, a, _) = start(&h, &["test_a"], 1).await;
    // The runner falls silent; its shard goes to another.
    let b = register(&h, "b").await;
    h.clock.advance_secs(3600);
    h.app.heartbeat(&b, None).await.unwrap();
    h.app.health_sweep().await.unwrap();
    h.app.schedule_pass().await.unwrap();
    let work = h.app.heartbeat(&b, None).await.unwrap();
    assert_eq!(work.len(), 1, "the lost shard moved to b");
    let passing = results(vec![result("test_a", TestStatus::Passed, None)]);
    send(&h, &b, &work[0], ReportStatus::Passed, passing).await;
    let (_, shards, tests) = h.app.execution_report(&id).await.unwrap();
    let runs: Vec<_> = shards[0]
        .attempts
        .iter()
        .map(|r| (r.attempt, r.status, r.runner_id.clone()))
        .collect();
    assert_eq!(
        runs,
        vec![
            (1, ShardStatus::Errored, Some(a)),
            (2, ShardStatus::Passed, Some(b))
        ]
    );
    assert_eq!(tests.len(), 1);
    assert!(!tests[0].flaky);
}

/// cargo-nextest retried two tests within the shard's run: the one that
/// passed on its retry is flaky, with both attempts in the report, a
/// `flakyFailure` in the merged JUnit and a place in the suite's flaky
/// history; the one that failed every time keeps all three attempts, as
/// `rerunFailure`s.
async fn a_tools_own_retries_show_as_attempts_in_the_report_and_the_merged_junit<B: Backend>() {
    let h = Harness::<B>::start().await;
    let runner = register(&h, "a").await;
    let given = [
        "tests::payment_is_flaky",
        "tests::total_adds_prices",
        "tests::refund_always_fails",
    ];
    let (id, work) = start_on(&h, &runner, &given, 1).await;
    let xml = fixture("nextest-0.9.143-retries.xml");
    send_junit(&h, &runner, &id, &work[0], &xml, None)
        .await
        .unwrap();
    let (status, _) = finished(&h, &id).await;
    assert_eq!(status, ExecutionStatus::Failed);
    let (e, shards, tests) = h.app.execution_report(&id).await.unwrap();
    assert_eq!(
        (e.totals.passed, e.totals.failed, e.totals.flaky),
        (2, 1, 1),
        "each test counted once"
    );
    let of = |name: &str| tests.iter().find(|t| t.name == name).unwrap();
    let flaky = of("tests::payment_is_flaky");
    assert!(flaky.flaky);
    let statuses = |t: &tms::domain::MergedTest| -> Vec<TestStatus> {
        t.attempts.iter().map(|a| a.status).collect()
    };
    assert_eq!(statuses(flaky), [TestStatus::Failed, TestStatus::Passed]);
    assert!(flaky.attempts[0]
        .message
        .as_deref()
        .is_some_and(|m| m.contains("payment sandbox timed out")));
    let failing = of("tests::refund_always_fails");
    assert!(!failing.flaky);
    assert_eq!(statuses(failing), [TestStatus::Failed; 3]);
    assert_eq!(
        statuses(of("tests::total_adds_prices")),
        [TestStatus::Passed]
    );

    let xml = tms::junit::merged_report(&e, &shards, &tests).unwrap();
    tms_tests::assert_valid_junit(&xml);
    assert_eq!(xml.matches("<flakyFailure").count(), 1, "{xml}");
    assert_eq!(xml.matches("<rerunFailure").count(), 2, "{xml}");
    let history = h.app.flaky_tests("shop").await.unwrap();
    let names: Vec<&str> = history.items.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["tests::payment_is_flaky"]);
}

/// A test its tool retried to a pass is flaky in the totals: a passing
/// execution says so, a strict one fails, as with automatic retries.
async fn a_test_its_tool_retried_to_a_pass_is_flaky_and_fails_a_strict_execution<B: Backend>() {
    let h = Harness::<B>::start().await;
    let runner = register(&h, "a").await;
    let xml = r#"<testsuites name="nextest-run"><testsuite name="shop"><testcase classname="shop" name="pay"><flakyFailure message="timed out" type="test failure"/></testcase><testcase classname="shop" name="total"/></testsuite></testsuites>"#;
    for strict in [false, true] {
        let mut new = tms_tests::new_execution("shop", ["pay".into(), "total".into()], 1);
        new.strict = strict;
        let id = h.app.queue_execution(new, None).await.unwrap().execution.id;
        h.app.schedule_pass().await.unwrap();
        let work = h.app.heartbeat(&runner, None).await.unwrap();
        send_junit(&h, &runner, &id, &work[0], xml, None)
            .await
            .unwrap();
        let (status, why) = finished(&h, &id).await;
        let (e, _, _) = h.app.execution_report(&id).await.unwrap();
        assert_eq!((e.totals.passed, e.totals.flaky), (2, 1));
        if strict {
            assert_eq!(status, ExecutionStatus::Failed);
            assert!(why.contains("1 flaky") && why.contains("strict"), "{why}");
        } else {
            assert_eq!(status, ExecutionStatus::Passed);
            assert!(why.contains("1 flaky test passed on a retry"), "{why}");
        }
    }
}

tms_tests::conformance!(
    a_test_its_tool_retried_to_a_pass_is_flaky_and_fails_a_strict_execution,
    a_tools_own_retries_show_as_attempts_in_the_report_and_the_merged_junit,
    a_shard_that_reports_fewer_tests_than_it_was_given_leaves_the_execution_errored_saying_which,
    a_missing_test_is_not_hidden_behind_a_failure_beside_it,
    counts_alone_must_account_for_every_test_of_the_shard,
    tests_nobody_asked_for_keep_the_execution_from_passing,
    each_producers_junit_report_is_accepted_as_a_shards_results,
    report_names_are_matched_to_the_given_tests_without_a_flag,
    results_larger_than_one_dynamodb_item_are_chunked_and_read_back_whole,
    a_test_that_failed_then_passed_on_another_runner_is_flaky_and_both_attempts_are_kept,
    a_lost_run_is_an_attempt_of_its_own_in_the_report,
    an_exit_status_alone_judges_the_shard_and_counts_no_tests,
);

/// Text as test tools really emit it and worse: any Unicode scalar, with
/// the characters XML 1.0 cannot carry even escaped (controls, U+FFFE,
/// U+FFFF) made frequent.
fn hostile_text(max: usize) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let char = prop_oneof![
        4 => any::<char>(),
        1 => Just('\u{FFFE}'),
        1 => Just('\u{FFFF}'),
        1 => Just('\u{1B}'),
        1 => Just('\u{0}'),
        1 => Just('<'),
        1 => Just('&'),
        1 => Just('"'),
        1 => Just(']'),
    ];
    proptest::collection::vec(char, 1..max).prop_map(|cs| cs.into_iter().collect())
}

/// Whatever a suite, test name or failure message holds, the merged JUnit
/// report is well-formed XML that lxml reads and the JUnit schema accepts,
/// with every test in it. Sampled from a deterministic proptest runner,
/// since each case runs an execution through the orchestrator.
#[tokio::test]
async fn the_merged_junit_is_well_formed_whatever_characters_names_and_messages_hold() {
    use proptest::strategy::{Strategy, ValueTree};
    let h = Harness::<tms_tests::Sqlite>::start().await;
    let runner = register(&h, "a").await;
    let case = (
        hostile_text(40),
        proptest::collection::vec((hostile_text(60), hostile_text(200)), 1..6),
    );
    let mut sampler = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..24 {
        let (suite, tests) = case.new_tree(&mut sampler).unwrap().current();
        // Distinct, non-blank names, as a queue call must give them.
        let suite = format!("s{suite}");
        let tests: Vec<(String, String)> = tests
            .into_iter()
            .enumerate()
            .map(|(i, (name, message))| (format!("t{i}{name}"), message))
            .collect();
        let new = tms_tests::new_execution(&suite, tests.iter().map(|(n, _)| n.clone()), 1);
        let id = h.app.queue_execution(new, None).await.unwrap().execution.id;
        h.app.schedule_pass().await.unwrap();
        let work = h.app.heartbeat(&runner, None).await.unwrap();
        assert_eq!(work.len(), 1);
        let reported = results(
            tests
                .iter()
                .map(|(n, m)| result(n, TestStatus::Failed, Some(m)))
                .collect(),
        );
        send(&h, &runner, &work[0], ReportStatus::Failed, reported).await;
        assert_eq!(finished(&h, &id).await.0, ExecutionStatus::Failed);
        let (e, shards, merged) = h.app.execution_report(&id).await.unwrap();
        let xml = tms::junit::merged_report(&e, &shards, &merged).unwrap();
        tms_tests::assert_valid_junit(&xml);
        assert_eq!(tms::junit::parse(&xml).unwrap().len(), tests.len());
    }
}

/// One real tool's report of a run with retries, and what the tool itself
/// printed: each test's final verdict and its earlier failed attempts, and
/// lines of the tool's console output (kept beside the report) that say so.
struct ToolRun {
    report: &'static str,
    console: &'static str,
    names: NameFormat,
    /// (test id, final outcome, earlier failed attempts in the report).
    verdicts: &'static [(&'static str, tms::junit::CaseOutcome, usize)],
    printed: &'static [&'static str],
}

const TOOL_RUNS: &[ToolRun] = {
    use tms::junit::CaseOutcome::{Failed, Passed, Skipped};
    &[
        ToolRun {
            report: "pytest-rerunfailures-16.7.xml",
            console: "pytest-rerunfailures-16.7.console.txt",
            names: NameFormat::Pytest,
            verdicts: &[
                ("tests/test_flaky.py::test_checkout_passes", Passed, 0),
                ("tests/test_flaky.py::test_payment_is_flaky", Passed, 1),
                ("tests/test_flaky.py::test_refund_always_fails", Failed, 2),
                ("tests/test_flaky.py::test_tax_is_skipped", Skipped, 0),
            ],
            printed: &[
                "PASSED tests/test_flaky.py::test_checkout_passes",
                "PASSED tests/test_flaky.py::test_payment_is_flaky",
                "FAILED tests/test_flaky.py::test_refund_always_fails",
                "SKIPPED [1] tests/test_flaky.py:24: needs the tax service",
                "1 failed, 2 passed, 1 skipped, 3 rerun",
            ],
        },
        ToolRun {
            report: "nextest-0.9.143-retries.xml",
            console: "nextest-0.9.143-retries.console.txt",
            names: NameFormat::Name,
            verdicts: &[
                ("tests::payment_is_flaky", Passed, 1),
                ("tests::total_adds_prices", Passed, 0),
                ("tests::refund_always_fails", Failed, 2),
            ],
            printed: &[
                "FLAKY 2/3",
                "TRY 3 FAIL",
                "3 tests run: 2 passed (1 flaky), 1 failed, 0 skipped",
            ],
        },
        // jest-junit keeps no trace of jest.retryTimes: the flaky test is a
        // pass and the failing one a single failure. Two tests of one title
        // are two cases.
        ToolRun {
            report: "jest-junit-16.0.0-retries-file.xml",
            console: "jest-junit-16.0.0-retries-file.console.txt",
            names: NameFormat::Name,
            verdicts: &[
                ("Cart adds items", Passed, 0),
                ("Cart adds items", Passed, 0),
                ("Cart charges the card", Passed, 0),
                ("Cart refunds the total", Failed, 0),
                ("Cart applies tax", Skipped, 0),
            ],
            printed: &[
                "✓ adds items",
                "✓ charges the card",
                "✕ refunds the total",
                "○ skipped applies tax",
                "Tests:       1 failed, 1 skipped, 3 passed, 5 total",
            ],
        },
        // vitest writes one failure per attempt of a test that kept
        // failing, and nothing of the failed attempt of one that passed.
        ToolRun {
            report: "vitest-3.2.7-retry.xml",
            console: "vitest-3.2.7-retry.console.txt",
            names: NameFormat::Name,
            verdicts: &[
                ("Cart > adds items", Passed, 0),
                ("Cart > charges the card", Passed, 0),
                ("Cart > refunds the total", Failed, 2),
                ("Cart > applies tax", Skipped, 0),
            ],
            printed: &[
                "✓ cart.test.js > Cart > adds items",
                "✓ cart.test.js > Cart > charges the card",
                "× cart.test.js > Cart > refunds the total",
                "↓ cart.test.js > Cart > applies tax",
                "Tests  1 failed | 2 passed | 1 skipped (4)",
            ],
        },
        ToolRun {
            report: "mocha-junit-reporter-2.2.1.xml",
            console: "mocha-junit-reporter-2.2.1.console.txt",
            names: NameFormat::Name,
            verdicts: &[
                ("Cart adds items", Passed, 0),
                ("Cart refunds the total", Failed, 0),
                ("Cart applies tax", Skipped, 0),
                ("Cart applies coupons", Skipped, 0),
            ],
            printed: &["1 passing", "2 pending", "1 failing"],
        },
        // gotestsum writes each attempt of a rerun test as a case of its
        // own, the reruns after the first run's cases.
        ToolRun {
            report: "gotestsum-1.8.2-rerun.xml",
            console: "gotestsum-1.8.2-rerun.console.txt",
            names: NameFormat::Name,
            verdicts: &[
                ("TestPaymentIsFlaky", Passed, 1),
                ("TestRefundAlwaysFails", Failed, 2),
                ("TestTaxIsSkipped", Skipped, 0),
                ("TestTotalAddsPrices", Passed, 0),
            ],
            printed: &[
                "PASS TestTotalAddsPrices",
                "PASS TestPaymentIsFlaky (re-run 1)",
                "FAIL TestRefundAlwaysFails (re-run 2)",
                "=== SKIP: . TestTaxIsSkipped",
                "DONE 3 runs, 7 tests, 1 skipped, 4 failures",
            ],
        },
        ToolRun {
            report: "phpunit-9.6.7.xml",
            console: "phpunit-9.6.7.console.txt",
            names: NameFormat::Name,
            verdicts: &[
                ("testTotalAddsPrices", Passed, 0),
                ("testRefundAlwaysFails", Failed, 0),
                ("testPaymentThrows", tms::junit::CaseOutcome::Errored, 0),
                ("testTaxIsSkipped", Skipped, 0),
            ],
            printed: &[
                ".FES",
                "1) CartTest::testPaymentThrows",
                "1) CartTest::testRefundAlwaysFails",
                "Tests: 4, Assertions: 2, Errors: 1, Failures: 1, Skipped: 1.",
            ],
        },
        // Playwright's junit reporter writes a flaky test as a pass and a
        // retried failure as one failure whose text holds every retry.
        ToolRun {
            report: "playwright-1.57.0-retries.xml",
            console: "playwright-1.57.0-retries.console.txt",
            names: NameFormat::Name,
            verdicts: &[
                ("cart › adds items", Passed, 0),
                ("cart › charges the card", Passed, 0),
                ("cart › refunds the total", Failed, 0),
                ("cart › applies tax", Skipped, 0),
            ],
            printed: &["1 failed", "1 flaky", "1 skipped", "1 passed"],
        },
    ]
};

#[test]
fn each_tools_report_gives_the_verdicts_the_tool_printed_retries_counted_once() {
    for run in TOOL_RUNS {
        let console = fixture(run.console);
        for line in run.printed {
            assert!(
                console.contains(line),
                "{}: the tool did not print {line:?}",
                run.console
            );
        }
        let cases = tms::junit::parse(&fixture(run.report))
            .unwrap_or_else(|e| panic!("{}: {e}", run.report));
        let read: Vec<(String, tms::junit::CaseOutcome, usize)> = cases
            .iter()
            .map(|c| (c.test_id(run.names), c.outcome, c.earlier.len()))
            .collect();
        let expected: Vec<(String, tms::junit::CaseOutcome, usize)> = run
            .verdicts
            .iter()
            .map(|(id, outcome, earlier)| (id.to_string(), *outcome, *earlier))
            .collect();
        assert_eq!(read, expected, "{}", run.report);
        // A retried test's earlier attempts are failures, with the tool's
        // message where it kept one.
        for case in cases.iter().filter(|c| !c.earlier.is_empty()) {
            assert!(
                case.earlier
                    .iter()
                    .all(|a| a.outcome == tms::junit::CaseOutcome::Failed),
                "{}: {case:?}",
                run.report
            );
        }
    }
}
