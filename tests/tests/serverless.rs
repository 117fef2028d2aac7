//! The serverless deployment on an emulator: the template's table, queues,
//! bus, rule and secret are created on moto from `template.yaml` itself, every
//! function is configured with exactly the environment the template gives
//! it, and the lifecycle is driven through the functions' handlers with the
//! payloads Lambda would deliver — API Gateway HTTP API (v2) events, SQS
//! batches read from the real queues, and scheduled events. Payload shapes
//! are kept in `tests/events/`. Time is a manual clock shared by all the
//! functions, so sweeps are tested without waiting.

use serde_json::json;
use tms::http::Routes;
use tms_functions::Sweep;
use tms_tests::faults::FaultPlan;
use tms_tests::recorder::{Answer, Recorder};
use tms_tests::serverless::{Deployment, BASE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_runs_from_queue_to_passed_through_the_functions_queues_and_bus() {
    let d = Deployment::start().await;
    let (status, health) = d
        .http(
            "ApiSystemFunction",
            Routes::System,
            "GET",
            &format!("{BASE}/system/health"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{health}");

    let runner = d.register("lambda-runner").await;
    let (execution, webhook_token) = d
        .queue(json!({"suite": "api", "tests": ["a", "b", "c", "d"], "parallelism": 2}))
        .await;
    assert!(
        d.run_scheduler().await >= 1,
        "queueing nudged the scheduler through SQS"
    );

    let work = d.heartbeat(&runner).await;
    assert_eq!(work.len(), 2, "{work:?}");
    for a in &work {
        d.report_passed(&execution, &webhook_token, a).await;
    }
    assert_eq!(
        d.status(&execution).await["status"],
        "running",
        "not folded yet"
    );
    assert_eq!(
        d.run_aggregator().await,
        2,
        "both completions came through the bus and rule"
    );
    let done = d.status(&execution).await;
    assert_eq!(done["status"], "passed", "{done}");
    assert_eq!(done["totals"]["passed"], 4);

    // Its finish is in the metrics, and the system function serves them
    // and the dashboard.
    let metrics = d.metrics().await;
    assert_eq!(metrics["total"]["finished"], 1, "{metrics}");
    assert_eq!(metrics["total"]["passed"], 1, "{metrics}");
    let (status, page) = d
        .http(
            "ApiSystemFunction",
            Routes::System,
            "GET",
            "/enhanced-orchestration",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(page
        .as_str()
        .is_some_and(|html| html.contains("<title>TMS")));

    // The API functions only serve their own routes.
    let (status, _) = d
        .http(
            "ApiWebhooksFunction",
            Routes::Webhooks,
            "GET",
            &format!("{BASE}/executions/{execution}/status"),
            Some(&d.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_sweep_requeues_an_expired_shard_to_another_runner() {
    let d = Deployment::start().await;
    let first = d.register("first").await;
    let (execution, _) = d
        .queue(
            json!({"suite": "slow", "tests": ["t"], "parallelism": 1, "shard_timeout_seconds": 60}),
        )
        .await;
    d.run_scheduler().await;
    assert_eq!(d.heartbeat(&first).await.len(), 1);
    let second = d.register("second").await;

    d.clock.advance_secs(61);
    let report = d.run_sweep("TimeoutSweepFunction", Sweep::Timeout).await;
    assert_eq!(report.shards_requeued, 1, "{report:?}");
    assert!(
        d.run_scheduler().await >= 1,
        "the requeue nudged the scheduler"
    );
    let moved = d.heartbeat(&second).await;
    assert_eq!(moved.len(), 1, "the shard avoids the runner that lost it");
    let shard = &d.status(&execution).await["shards"][0];
    assert_eq!(shard["attempt"], 2);
    assert_eq!(shard["runner_id"].as_str(), Some(second.0.as_str()));
}

/// A dynamic execution of `tests` (one a batch, one attempt each, its
/// deadline in 600 s) whose first batch its one runner ran and reported
/// (`duration_ms` 4,321) and whose second it holds: the runner, the
/// execution and the reported test.
async fn one_batch_reported_one_held(
    d: &Deployment,
    tests: &[&str],
) -> ((String, String), String, String) {
    let runner = d.register_with_slots("r", 1).await;
    let (execution, _) = d
        .queue(json!({"suite": "dyn", "tests": tests, "parallelism": 1,
            "mode": "dynamic", "max_batch_tests": 1, "max_attempts": 1,
            "timeout_seconds": 600}))
        .await;
    let batch = d.claim(&runner, &execution).await["assignment"].clone();
    let test = batch["tests"][0].as_str().unwrap().to_owned();
    let (status, reported) = d
        .report(
            &execution,
            &runner.1,
            json!({"shard_index": batch["shard_index"], "lease_id": batch["lease_id"],
                "status": "passed", "results": {"passed": 1, "failed": 0, "skipped": 0,
                "tests": [{"name": test, "status": "passed", "duration_ms": 4_321}]}}),
        )
        .await;
    assert_eq!(status, 200, "{reported}");
    assert_eq!(d.run_aggregator().await, 0, "tests were still waiting");
    assert!(d.claim(&runner, &execution).await["assignment"].is_object());
    (runner, execution, test)
}

/// What the next split of suite `dyn` expects `test` to take.
async fn learned(d: &Deployment, test: &str) -> serde_json::Value {
    let (next, _) = d
        .queue(json!({"suite": "dyn", "tests": [test], "parallelism": 1}))
        .await;
    d.status(&next).await["shards"][0]["estimated_ms"].clone()
}

/// A dynamic execution's batches are learned when it finishes, whichever
/// function finishes it, with that function's role: the timeout sweep
/// (past its deadline), the health sweep (its silent runner's batch given
/// up), the runners function (its runner deregistered, its batch given
/// up) and the executions function (an operator's cancel). What the batch
/// reported before teaches the next split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_execution_teaches_what_its_batches_ran_whichever_function_ends_it() {
    let d = Deployment::start().await;
    // A third test still waits: giving the held batch up cannot finish
    // the execution, its deadline does.
    let (_, _, test) = one_batch_reported_one_held(&d, &["a", "b", "c"]).await;
    d.clock.advance_secs(601);
    let report = d.run_sweep("TimeoutSweepFunction", Sweep::Timeout).await;
    assert_eq!(report.executions_timed_out, 1, "{report:?}");
    assert_eq!(learned(&d, &test).await, 4_321);

    let d = Deployment::start().await;
    let (_, execution, test) = one_batch_reported_one_held(&d, &["a", "b"]).await;
    d.clock.advance_secs(10 * 60);
    let report = d.run_sweep("HealthSweepFunction", Sweep::Health).await;
    assert_eq!(report.runners_marked_unhealthy, 1, "{report:?}");
    assert_eq!(d.status(&execution).await["status"], "errored");
    assert_eq!(learned(&d, &test).await, 4_321);

    let d = Deployment::start().await;
    let (runner, execution, test) = one_batch_reported_one_held(&d, &["a", "b"]).await;
    let (status, body) = d
        .http(
            "ApiRunnersFunction",
            Routes::Runners,
            "POST",
            &format!("{BASE}/runners/{}/deregister", runner.0),
            Some(&runner.1),
            Some(json!({})),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    assert_eq!(d.status(&execution).await["status"], "errored");
    assert_eq!(learned(&d, &test).await, 4_321);

    let d = Deployment::start().await;
    let (_, execution, test) = one_batch_reported_one_held(&d, &["a", "b", "c"]).await;
    assert_eq!(d.cancel(&execution).await["status"], "cancelled");
    assert_eq!(learned(&d, &test).await, 4_321);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_sweep_marks_a_silent_runner_unhealthy_and_requeues_its_work() {
    let d = Deployment::start().await;
    let silent = d.register("silent").await;
    d.queue(json!({"suite": "s", "tests": ["t"], "parallelism": 1}))
        .await;
    d.run_scheduler().await;
    assert_eq!(d.heartbeat(&silent).await.len(), 1);

    d.clock.advance_secs(10 * 60);
    let report = d.run_sweep("HealthSweepFunction", Sweep::Health).await;
    assert_eq!(report.runners_marked_unhealthy, 1, "{report:?}");
    assert_eq!(report.shards_requeued, 1, "{report:?}");
    let (status, runner) = d
        .http(
            "ApiRunnersFunction",
            Routes::Runners,
            "GET",
            &format!("{BASE}/runners/{}", silent.0),
            Some(&d.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(runner["status"], "unhealthy", "{runner}");
    assert_eq!(
        d.run_sweep("ScheduleSweepFunction", Sweep::Schedule)
            .await
            .shards_assigned,
        0,
        "no healthy runner to take the requeued shard"
    );
}

/// The request counts `docs/data-model.md` promises for the hot paths,
/// measured with the SDK interceptor (a regression here is a cost regression).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hot_path_makes_the_requests_the_data_model_promises() {
    let d = Deployment::start().await;
    let runner = d.register_with_slots("r", 3).await;
    d.heartbeat(&runner).await;

    let mark = d.meter.usage();
    d.heartbeat(&runner).await;
    let idle = d.meter.usage().minus(&mark);
    assert_eq!(idle.requests.len(), 1, "{idle:?}");
    assert_eq!(
        idle.count("DynamoDB.Query"),
        1,
        "a heartbeat is one query of the runner's items"
    );

    let mark = d.meter.usage();
    let (execution, webhook) = d
        .queue(json!({"suite": "s", "tests": ["a", "b", "c"], "parallelism": 3}))
        .await;
    let queued = d.meter.usage().minus(&mark);
    assert_eq!(queued.count("DynamoDB.TransactWriteItems"), 1, "{queued:?}");
    assert_eq!(queued.count("SQS.SendMessage"), 1, "one nudge");
    // The learned durations of the tests sent without hints (one
    // BatchGetItem; none known, so the suite's history too, one Query, for
    // what the cases under them took); whether any registered runner could
    // run it (the runners' index Query and BatchGetItem, the rules' Query).
    assert_eq!(queued.count("DynamoDB.BatchGetItem"), 2, "{queued:?}");
    assert_eq!(queued.count("DynamoDB.Query"), 3, "{queued:?}");
    assert_eq!(queued.count("DynamoDB."), 6, "{queued:?}");

    d.run_scheduler().await;
    let work = d.heartbeat(&runner).await;
    let report = |a: &serde_json::Value| {
        json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"],
            "status": "passed", "results": {"passed": 1, "failed": 0, "skipped": 0}})
    };
    let path = format!("{BASE}/webhooks/parallel-execution/{execution}");
    // The first report also checks the webhook token (then trusted for 5 s).
    d.http(
        "ApiWebhooksFunction",
        Routes::Webhooks,
        "POST",
        &path,
        Some(&webhook),
        Some(report(&work[0])),
    )
    .await;
    let mark = d.meter.usage();
    let (status, _) = d
        .http(
            "ApiWebhooksFunction",
            Routes::Webhooks,
            "POST",
            &path,
            Some(&webhook),
            Some(report(&work[1])),
        )
        .await;
    assert!(status < 300);
    let reported = d.meter.usage().minus(&mark);
    assert_eq!(reported.count("DynamoDB.BatchGetItem"), 1, "{reported:?}");
    assert_eq!(
        reported.count("DynamoDB.TransactWriteItems"),
        1,
        "{reported:?}"
    );
    assert_eq!(reported.count("DynamoDB."), 2, "{reported:?}");
    assert_eq!(reported.events, 1, "one ShardCompleted");
    assert_eq!(reported.count("SQS.SendMessage"), 1, "one nudge");

    // A JUnit report reads the shard once too: its cases are named from
    // the shard's tests in the read that applies it. Its per-test results
    // are one more write (BatchWriteItem).
    let a = &work[2];
    let junit = format!(
        "{path}?shard_index={}&lease_id={}",
        a["shard_index"],
        a["lease_id"].as_str().unwrap()
    );
    let xml = format!(
        r#"<testsuite name="s"><testcase classname="tool" name={}/></testsuite>"#,
        a["tests"][0]
    );
    let mark = d.meter.usage();
    let (status, body) = d
        .http_raw(
            "ApiWebhooksFunction",
            Routes::Webhooks,
            "POST",
            &junit,
            Some(&webhook),
            Some(("application/xml", xml)),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shard_status"], "passed", "the case matched its test");
    let reported = d.meter.usage().minus(&mark);
    assert_eq!(reported.count("DynamoDB.BatchGetItem"), 1, "{reported:?}");
    assert_eq!(reported.count("DynamoDB.BatchWriteItem"), 1, "{reported:?}");
    assert_eq!(reported.count("DynamoDB."), 3, "{reported:?}");

    // With every test hinted there are no durations to look up: the
    // write and the three reads of whether a runner could run it.
    let mark = d.meter.usage();
    d.queue(
        json!({"suite": "s", "tests": [{"name": "a", "duration_hint_ms": 5}], "parallelism": 1}),
    )
    .await;
    let hinted = d.meter.usage().minus(&mark);
    assert_eq!(hinted.count("DynamoDB.BatchGetItem"), 1, "{hinted:?}");
    assert_eq!(hinted.count("DynamoDB."), 4, "{hinted:?}");
}

/// A dynamic claim reads the execution's record, the runner and the tests
/// its batch is cut from, and writes one transaction; a report that
/// brings the next batch adds the same claim to the report's requests.
/// Neither grows with the execution: the same requests for 50 tests and
/// for 5,000 (twenty chunks of the stored test queue). The runner's
/// `claimable` listing is one index query and one read of the items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_claim_costs_the_same_requests_whatever_the_executions_size() {
    let d = Deployment::start().await;
    let runner = d.register_with_slots("r", 2).await;
    // Each function checks the runner's token once, then trusts it a while.
    d.heartbeat(&runner).await;
    let warm = format!("{BASE}/webhooks/parallel-execution/exe_none/shards/0");
    d.http(
        "ApiWebhooksFunction",
        Routes::Webhooks,
        "GET",
        &warm,
        Some(&runner.1),
        None,
    )
    .await;
    let mut costs = Vec::new();
    for size in [50usize, 5_000] {
        let tests: Vec<serde_json::Value> = (0..size)
            .map(|i| json!({"name": format!("spec_{i:05}"), "duration_hint_ms": 1_000}))
            .collect();
        let (execution, _) = d
            .queue(json!({"suite": "dyn", "tests": tests, "parallelism": 4,
                "mode": "dynamic", "max_batch_tests": 1}))
            .await;
        let claims = format!("{BASE}/executions/{execution}/claims");
        let claim = || {
            d.http(
                "ApiRunnerPollsFunction",
                Routes::RunnerPolls,
                "POST",
                &claims,
                Some(&runner.1),
                Some(json!({})),
            )
        };
        // The first claim of this size, far into the queue at 5,000: the
        // batch of the middle chunks is cut from one read of its chunk.
        let mark = d.meter.usage();
        let (status, first) = claim().await;
        assert_eq!(status, 200, "{first}");
        let claimed = d.meter.usage().minus(&mark);
        let batch = &first["assignment"];
        assert_eq!(batch["tests"], json!(["spec_00000"]));
        let path = format!("{BASE}/webhooks/parallel-execution/{execution}?next=true");
        let mark = d.meter.usage();
        let (status, reported) = d
            .http(
                "ApiWebhooksFunction",
                Routes::Webhooks,
                "POST",
                &path,
                Some(&runner.1),
                Some(
                    json!({"shard_index": batch["shard_index"], "lease_id": batch["lease_id"],
                    "status": "passed", "results": {"passed": 1, "failed": 0, "skipped": 0}}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{reported}");
        let with_next = d.meter.usage().minus(&mark);
        assert_eq!(
            reported["next"]["assignment"]["tests"],
            json!(["spec_00001"])
        );
        costs.push((claimed.requests.clone(), with_next.requests.clone()));

        assert_eq!(
            claimed.count("DynamoDB.GetItem"),
            2,
            "execution, runner: {claimed:?}"
        );
        assert_eq!(
            claimed.count("DynamoDB.BatchGetItem"),
            1,
            "the tests: {claimed:?}"
        );
        assert_eq!(
            claimed.count("DynamoDB.TransactWriteItems"),
            1,
            "{claimed:?}"
        );
        assert_eq!(claimed.count("DynamoDB."), 4, "{claimed:?}");
        // The report: its shard (with the execution) read and write; then
        // the claim as above, planned from the execution the report read
        // (no second read of it): the runner, the tests and the write.
        assert_eq!(with_next.count("DynamoDB.BatchGetItem"), 2, "{with_next:?}");
        assert_eq!(
            with_next.count("DynamoDB.GetItem"),
            1,
            "the runner: {with_next:?}"
        );
        assert_eq!(
            with_next.count("DynamoDB.TransactWriteItems"),
            2,
            "{with_next:?}"
        );
        assert_eq!(with_next.count("DynamoDB."), 5, "{with_next:?}");
        // Tests still wait to be handed out: the execution cannot finish
        // by this completion, and its batches are learned when it does.
        assert_eq!(with_next.events, 0, "no ShardCompleted");
    }
    assert_eq!(
        costs[0], costs[1],
        "the same requests for 50 and 5,000 tests"
    );
    assert_eq!(d.run_aggregator().await, 0, "nothing to aggregate");
    let listing = format!("{BASE}/runners/{}/claimable", runner.0);
    let mark = d.meter.usage();
    let (status, list) = d
        .http(
            "ApiRunnerPollsFunction",
            Routes::RunnerPolls,
            "GET",
            &listing,
            Some(&runner.1),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let listed = d.meter.usage().minus(&mark);
    assert_eq!(listed.count("DynamoDB.Query"), 1, "{listed:?}");
    assert_eq!(
        listed.count("DynamoDB."),
        3,
        "index, items, runner: {listed:?}"
    );
}

/// A report asking `?next=any` through the webhooks function, whose
/// execution has nothing left, brings a batch of the next dynamic
/// execution: the listing and the claim are within that function's role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_asking_next_any_brings_the_next_executions_batch() {
    let d = Deployment::start().await;
    let runner = d.register_with_slots("r", 1).await;
    let dynamic = |suite: &str| json!({"suite": suite, "tests": ["only"], "parallelism": 1, "mode": "dynamic"});
    let (first, _) = d.queue(dynamic("one")).await;
    d.clock.advance_ms(1);
    let (second, _) = d.queue(dynamic("two")).await;
    let claimed = d.claim(&runner, &first).await;
    let batch = &claimed["assignment"];
    let (status, reported) = d
        .report_with_query(
            &first,
            "?next=any",
            &runner.1,
            json!({"shard_index": batch["shard_index"], "lease_id": batch["lease_id"],
                "status": "passed"}),
        )
        .await;
    assert_eq!(status, 200, "{reported}");
    let next = &reported["next"]["assignment"];
    assert_eq!(next["execution_id"], second, "{reported}");
    assert_eq!(next["tests"], json!(["only"]), "{reported}");
    assert_eq!(next["status"], "running", "{reported}");
}

/// A scheduling pass reads only the requirement classes some free runner
/// fits: with a hundred executions queued that need a label no runner has,
/// the runnable one behind them is assigned by a pass that makes exactly
/// the requests it makes with none of them queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_reads_no_work_that_no_free_runner_fits() {
    let d = Deployment::start().await;
    let runner = d.register_with_slots("a", 1).await;
    let runnable = || {
        json!({"suite": "s", "tests": [{"name": "t", "duration_hint_ms": 5}],
        "parallelism": 1, "requirements": {"labels": []}})
    };
    let mut costs = Vec::new();
    for blockers in [0usize, 100] {
        for i in 0..blockers {
            d.queue(
                json!({"suite": "s", "tests": [{"name": format!("b{i}"), "duration_hint_ms": 5}],
                "parallelism": 1, "priority": 90, "requirements": {"labels": ["nobody"]}}),
            )
            .await;
        }
        let (execution, webhook) = d.queue(runnable()).await;
        let mark = d.meter.usage();
        d.run_sweep("ScheduleSweepFunction", Sweep::Schedule).await;
        let pass = d.meter.usage().minus(&mark);
        let work = d.heartbeat(&runner).await;
        assert_eq!(work.len(), 1, "{blockers} blockers: {work:?}");
        assert_eq!(work[0]["execution_id"], execution.as_str());
        d.report_passed(&execution, &webhook, &work[0]).await;
        d.run_aggregator().await;
        // Reads only: the assignment's write is the same either way.
        costs.push((
            pass.count("DynamoDB.Query"),
            pass.count("DynamoDB.BatchGetItem"),
        ));
    }
    assert_eq!(
        costs[0], costs[1],
        "the same reads with 0 and 100 blockers queued"
    );
}

/// A push-mode runner on the serverless stack: the scheduler sends a
/// dispatch order to the dispatch queue, the dispatcher function reads the
/// signing secret from Secrets Manager (under the stage's prefix the
/// template grants) and calls the webhook; the started job reads its shard
/// and reports through the webhook function with the token it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_mode_runner_is_dispatched_through_the_dispatch_queue_and_function() {
    let d = Deployment::start().await;
    let platform = Recorder::start(Answer::status(204)).await;
    let body = d
        .register_webhook_runner(1, &format!("{}/hook", platform.url), "k3y")
        .await;
    assert_eq!(body["dispatch"]["platform"], "webhook");
    let (execution, _) = d
        .queue(json!({"suite": "api", "tests": ["a", "b"], "parallelism": 1}))
        .await;
    d.run_scheduler().await;

    let (orders, response) = d.run_dispatcher(1).await;
    assert_eq!(orders, 1);
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let sent = platform.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    let timestamp = r.header(tms::dispatch::TIMESTAMP_HEADER).unwrap();
    let signature = r.header(tms::dispatch::SIGNATURE_HEADER).unwrap();
    assert!(tms::dispatch::verify("k3y", timestamp, &r.body, signature));
    let job = r.json();
    assert!(
        job["webhook_url"]
            .as_str()
            .unwrap()
            .starts_with(tms_tests::PUBLIC_URL),
        "the template's PublicUrl reaches the function: {job}"
    );
    let token = job["webhook_token"].as_str().unwrap();

    let shard_path = format!("{BASE}/webhooks/parallel-execution/{execution}/shards/0");
    let (status, work) = d
        .http(
            "ApiWebhooksFunction",
            Routes::Webhooks,
            "GET",
            &shard_path,
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{work}");
    assert_eq!(work["tests"], json!(["a", "b"]));
    assert_eq!(d.report_passed(&execution, token, &work).await, 200);
    d.run_aggregator().await;
    assert_eq!(d.status(&execution).await["status"], "passed");
}

/// On the last delivery the dispatcher hands the shard back and reports the
/// message failed, so SQS moves it on to the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_failed_dispatch_attempt_requeues_the_shard_and_fails_the_message() {
    let d = Deployment::start().await;
    let platform = Recorder::start(Answer::status(502)).await;
    d.register_webhook_runner(1, &platform.url, "k").await;
    let (execution, _) = d
        .queue(json!({"suite": "api", "tests": ["a"], "parallelism": 1}))
        .await;
    d.run_scheduler().await;

    // The first delivery fails and asks to come back later.
    let (_, response) = d.run_dispatcher(1).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        d.batch("DispatchQueue").await.records.len(),
        0,
        "delayed by the backoff, not redelivered at once"
    );
    // Played as the fifth delivery (maxReceiveCount): handed back.
    let (status, _) = d
        .http(
            "ApiRunnersFunction",
            Routes::Runners,
            "POST",
            &format!("{BASE}/runners/register"),
            Some(&d.admin_token),
            Some(json!({"name": "spare", "type": "custom",
                "capacity": {"slots": 1, "cpu_millis": 8000, "memory_mb": 8192}})),
        )
        .await;
    assert_eq!(status, 201);
    // The same order again (the delayed message stands in for it).
    let id = tms::ids::ExecutionId::parse(&execution).unwrap();
    let (_, held) = tms::ports::Store::load_shard(&d.app("DispatcherFunction").store, &id, 0)
        .await
        .unwrap()
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&d.sdk);
    let order = serde_json::to_string(&tms::ports::DispatchOrder {
        execution_id: id,
        shard_index: 0,
        lease_id: held.lease_id.unwrap(),
    })
    .unwrap();
    sqs.send_message()
        .queue_url(d.stack.physical("DispatchQueue").unwrap())
        .message_body(order)
        .send()
        .await
        .unwrap();
    let (_, response) = d.run_dispatcher(5).await;
    assert_eq!(response.batch_item_failures.len(), 1, "left for the DLQ");
    let shard = &d.status(&execution).await["shards"][0];
    assert_eq!(shard["status"], "queued", "{shard}");
    assert!(
        d.run_sweep("ScheduleSweepFunction", Sweep::Schedule)
            .await
            .shards_assigned
            == 1
    );
}

/// A failed report through the webhook function plans the automatic retry
/// of its failed test there (reading the execution's shards and the rules
/// by Query), and the retry then runs and passes: the execution is flaky
/// and green. Each function stays within its role while doing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_test_is_retried_automatically_through_the_webhook_function() {
    let d = Deployment::start().await;
    // The retry policy comes from a rule, as a platform team would set it.
    let (status, rule) = d
        .http(
            "ApiRulesFunction",
            Routes::Rules,
            "POST",
            &format!("{BASE}/load-balancing-rules"),
            Some(&d.admin_token),
            Some(
                json!({"name": "retry-api", "suite_pattern": "api", "strategy": "round_robin",
                "test_retries": {"per_test": 1, "total": 5}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let runner = d.register("retrier").await;
    let (execution, webhook_token) = d.queue(json!({"suite": "api", "tests": ["a", "b"]})).await;
    d.run_scheduler().await;
    let work = d.heartbeat(&runner).await;
    assert_eq!(work.len(), 1, "{work:?}");
    let a = &work[0];
    let (status, body) = d
        .http(
            "ApiWebhooksFunction",
            Routes::Webhooks,
            "POST",
            &format!("{BASE}/webhooks/parallel-execution/{execution}"),
            Some(&webhook_token),
            Some(
                json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"],
                "status": "failed", "results": {"passed": 1, "failed": 1, "skipped": 0, "tests": [
                    {"name": "a", "status": "passed", "duration_ms": 10},
                    {"name": "b", "status": "failed", "duration_ms": 10, "message": "boom"}]}}),
            ),
        )
        .await;
    assert!(status < 300, "{status} {body}");
    d.run_aggregator().await;
    d.run_scheduler().await;
    let retry = d.heartbeat(&runner).await;
    let retry: Vec<_> = retry
        .into_iter()
        .filter(|r| r["shard_index"] != a["shard_index"])
        .collect();
    assert_eq!(
        retry.len(),
        1,
        "the failed test was queued again: {retry:?}"
    );
    assert_eq!(retry[0]["tests"], json!(["b"]));
    d.report_passed(&execution, &webhook_token, &retry[0]).await;
    d.run_aggregator().await;
    let done = d.status(&execution).await;
    assert_eq!(done["status"], "passed", "{done}");
    assert!(d.role_violations().is_empty(), "{:?}", d.role_violations());
}

/// The role check bites: with one grant taken out of a copy of the
/// template, the same run is refused, naming the function, the action and
/// the resource; with the template as written it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_outside_a_functions_role_is_caught_when_a_grant_is_removed() {
    let d = Deployment::start().await;
    let runner = d.register("r").await;
    let (execution, webhook_token) = d.queue(json!({"suite": "api", "tests": ["a"]})).await;
    d.run_scheduler().await;
    for a in d.heartbeat(&runner).await {
        d.report_passed(&execution, &webhook_token, &a).await;
    }
    d.run_aggregator().await;
    assert!(d.role_violations().is_empty(), "{:?}", d.role_violations());

    let yaml = include_str!("../../template.yaml");
    let scheduler = yaml.find("  SchedulerFunction:").unwrap();
    let grant = scheduler + yaml[scheduler..].find("dynamodb:BatchGetItem, ").unwrap();
    let without = format!(
        "{}{}",
        &yaml[..grant],
        &yaml[grant + "dynamodb:BatchGetItem, ".len()..]
    );
    let narrowed = tms::adapters::stack::Template::parse(&without).unwrap();
    let found = tms_tests::iam::violations(&narrowed, &d.stack, &d.calls.calls()).unwrap();
    let found: Vec<String> = found.iter().map(ToString::to_string).collect();
    let table = d.stack.get_att("Table", "Arn").unwrap();
    assert_eq!(
        found,
        [format!(
            "SchedulerFunction: DynamoDB.BatchGetItem needs dynamodb:BatchGetItem on {table}, \
             which its role in template.yaml does not grant"
        )]
    );
}

/// DynamoDB throttles, fails with 500s (one after a transaction was applied),
/// cancels transactions for conflicts and leaves batches partly undone; moto
/// does none of it. With 5 % of the functions' DynamoDB requests answered so,
/// a busy run still ends with every execution passed, each test counted
/// once, the metrics counting each finish once, and every slot given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sustained_dynamodb_faults_every_execution_finishes_with_each_test_counted_once() {
    let d = Deployment::with_faults(FaultPlan::sustained(tms_tests::SUSTAINED_FAULT_RATE)).await;
    let mut runners = Vec::new();
    for i in 0..3 {
        runners.push(d.register_with_slots(&format!("faulty-{i}"), 2).await);
    }
    let mut executions = std::collections::BTreeMap::new();
    for i in 0..20usize {
        let tests: Vec<String> = (0..3 + i % 8).map(|t| format!("e{i}-t{t}")).collect();
        let (id, token) = d
            .queue(json!({"suite": format!("faults-{}", i % 3), "tests": tests, "parallelism": 2}))
            .await;
        executions.insert(id, (token, 3 + i % 8));
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 30, "executions still open after {rounds} rounds");
        d.run_scheduler().await;
        d.run_sweep("ScheduleSweepFunction", Sweep::Schedule).await;
        for runner in &runners {
            for a in d.heartbeat(runner).await {
                let execution = a["execution_id"].as_str().unwrap().to_owned();
                d.report_passed(&execution, &executions[&execution].0, &a)
                    .await;
            }
        }
        d.run_aggregator().await;
        let mut open = 0;
        for id in executions.keys() {
            if d.status(id).await["status"] != "passed" {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
    }
    for (id, (_, tests)) in &executions {
        let done = d.status(id).await;
        assert_eq!(done["totals"]["passed"], *tests as u64, "{done}");
        assert_eq!(done["totals"]["failed"], 0, "{done}");
    }
    let metrics = d.metrics().await;
    assert_eq!(metrics["total"]["finished"], 20, "{metrics}");
    assert_eq!(metrics["total"]["passed"], 20, "{metrics}");
    for runner in &runners {
        let body = d.runner(&runner.0).await;
        assert_eq!(
            body["allocated"]["slots"], 0,
            "every slot is given back: {body}"
        );
    }
    let injected = d.faults.as_ref().unwrap().injected();
    assert!(
        injected.len() >= 4 && injected.values().sum::<u64>() >= 15,
        "the proxy injected too few faults to prove anything: {injected:?}"
    );
}

/// A report of 20,000 test cases (a shard of 200 files) stays a handful of
/// DynamoDB requests for the webhook function, whose timeout is 10 s: the
/// results go into a few large items and the shard is written. Learning
/// the durations (a read and a write per 100 and 25 tests) is the
/// aggregator's, once per completion even when it is delivered twice.
/// Wall times are in docs/performance.md (`report-bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twenty_thousand_test_report_is_a_few_requests_and_its_timings_are_learned_once() {
    use tms::ports::Store;
    let d = Deployment::start().await;
    let runner = d.register_with_slots("big", 1).await;
    let files: Vec<String> = (0..200).map(|f| format!("tests/test_m{f:03}.py")).collect();
    let (execution, token) = d
        .queue(json!({"suite": "big", "tests": files, "parallelism": 1}))
        .await;
    d.run_scheduler().await;
    let a = d.heartbeat(&runner).await.remove(0);
    let cases: Vec<_> = (0..20_000)
        .map(|i| json!({"name": format!("{}::test_{i}", files[i % 200]), "status": "passed", "duration_ms": 10 + i % 50}))
        .collect();
    let mark = d.meter.usage();
    let (status, body) = d
        .report(
            &execution,
            &token,
            json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"], "status": "passed",
                "results": {"passed": 20_000, "failed": 0, "skipped": 0, "tests": cases}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let webhook = d.meter.usage().minus(&mark);
    assert!(
        webhook.count("DynamoDB.") <= 5,
        "the report's own requests: {webhook:?}"
    );

    // The completion, delivered twice.
    let batch = d.batch("AggregateQueue").await;
    assert_eq!(batch.records.len(), 1);
    for _ in 0..2 {
        let response = tms_functions::aggregate(
            d.app("AggregatorFunction"),
            lambda_http::LambdaEvent::new(batch.clone(), lambda_http::Context::default()),
        )
        .await
        .unwrap();
        assert!(response.batch_item_failures.is_empty());
    }
    assert_eq!(d.status(&execution).await["totals"]["passed"], 20_000);
    let store = tms::adapters::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&d.sdk),
        d.stack.physical("Table").unwrap(),
    );
    let timings = store.suite_timings("big").await.unwrap();
    assert_eq!(timings.len(), 20_000);
    assert!(
        timings.iter().all(|t| t.samples.len() == 1),
        "each run is learned once"
    );
}

/// Every route in template.yaml reaches a handler in the function that
/// API Gateway sends it to (that function's binary serves the route's
/// group), and every operation of the OpenAPI document has exactly one
/// function's route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_api_is_served_by_the_one_function_the_template_sends_it_to() {
    let d = Deployment::start().await;
    let mut routed: std::collections::BTreeMap<(String, String), String> = Default::default();
    for function in d.template.functions() {
        let events = d.template.http_routes(&function);
        if events.is_empty() {
            continue;
        }
        let binary = d.template.function_binary(&function).unwrap();
        let routes = tms_functions::api_routes(&binary)
            .unwrap_or_else(|| panic!("{function}'s binary {binary} is not an API function"));
        for (method, path) in events {
            let concrete = path
                .replace("{index}", "0")
                .replace("{asset}", "dashboard.js");
            let concrete = with_unknown_ids(&concrete);
            let body = (method == "POST").then(|| json!({}));
            let (status, answer) = d
                .http(
                    &function,
                    routes,
                    &method,
                    &concrete,
                    Some(&d.admin_token),
                    body,
                )
                .await;
            let unrouted = status == 404
                && answer["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("route "));
            assert!(
                !unrouted,
                "{method} {path} goes to {function}, whose routes ({routes:?}) do not serve it"
            );
            if let Some(other) = routed.insert((method.clone(), path.clone()), function.clone()) {
                panic!("{method} {path} is routed to both {other} and {function}");
            }
        }
    }
    let (status, doc) = d
        .http(
            "ApiSystemFunction",
            Routes::System,
            "GET",
            "/openapi.json",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    for (path, operations) in doc["paths"].as_object().unwrap() {
        let path = if path.starts_with(BASE) {
            path.clone()
        } else {
            format!("{BASE}{path}")
        };
        for method in operations.as_object().unwrap().keys() {
            let key = (method.to_uppercase(), path.clone());
            let key = if routed.contains_key(&key) {
                key
            } else {
                (key.0, path.trim_start_matches(BASE).to_owned())
            };
            assert!(
                routed.contains_key(&key),
                "{} {path} is in the OpenAPI document but no function's route",
                key.0
            );
        }
    }
}

/// `{id}`-style parameters as a value no stored thing has.
fn with_unknown_ids(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        out.push_str("01JZZZZZZZZZZZZZZZZZZZZZZZ");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
