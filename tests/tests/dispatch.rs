//! Push-mode dispatch: shards assigned to a runner with a dispatch target
//! are started on its CI platform. Each platform's request is checked
//! against a local server that records it, following the platform's
//! documented API; retries, refusals and the job's token are checked on both
//! stores.

use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tms::auth::Principal;
use tms::dispatch::{verify, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use tms::domain::{
    DispatchTarget, ExecutionStatus, Resources, RunnerStatus, RunnerType, SecretName, ShardResult,
    ShardStatus,
};
use tms::ids::{ExecutionId, RunnerId};
use tms::ports::DispatchOrder;
use tms::usecases::{DispatchOutcome, NewRunner, ReportStatus, ShardReport};
use tms::Error;
use tms_tests::recorder::{Answer, Recorder};
use tms_tests::{Backend, Harness, Sqlite, PUBLIC_URL};

fn secret(name: &str) -> SecretName {
    SecretName::parse(name).unwrap()
}

fn runner(name: &str, runner_type: RunnerType, dispatch: Option<DispatchTarget>) -> NewRunner {
    NewRunner {
        name: name.into(),
        runner_type,
        labels: BTreeSet::new(),
        capacity: Resources::new(1, 16_000, 32_768),
        priority: 0,
        dispatch,
        heartbeat_interval_seconds: None,
        scope: None,
    }
}

fn webhook(url: &str) -> DispatchTarget {
    DispatchTarget::Webhook {
        url: format!("{url}/hooks/tms"),
        signing_secret: secret("HOOK_KEY"),
    }
}

/// An orchestrator whose operator allowed this machine's recording
/// servers (and `hooks.test`) as dispatch hosts (`--dispatch-allow-host`).
async fn operator<B: Backend>() -> Harness<B> {
    let config = tms::config::Config {
        dispatch_allowed_hosts: tms::domain::AllowedHosts::parse(["127.0.0.1", "hooks.test"])
            .unwrap(),
        ..Default::default()
    };
    Harness::<B>::start_with(config).await
}

/// An operator with one push-mode runner, a webhook to `platform` signed
/// with the secret `HOOK_KEY`.
async fn with_webhook_runner<B: Backend>(platform: &Recorder) -> Harness<B> {
    let h = operator::<B>().await;
    h.secrets.set("HOOK_KEY", "k");
    register(
        &h,
        runner("hook", RunnerType::Custom, Some(webhook(&platform.url))),
    )
    .await;
    h
}

async fn register<B: Backend>(h: &Harness<B>, new: NewRunner) -> RunnerId {
    h.app.register_runner(new).await.unwrap().runner.runner.id
}

/// Queues a one-shard execution of three tests, schedules it, and returns
/// the execution and the dispatch order the scheduler sent.
async fn queue_and_schedule<B: Backend>(h: &Harness<B>) -> (ExecutionId, DispatchOrder) {
    let new = tms_tests::new_execution("api", ["a", "b", "c"].map(String::from), 1);
    let e = h.app.queue_execution(new, None).await.unwrap().execution.id;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 1);
    let orders = h.nudges.take_orders();
    assert_eq!(
        orders.len(),
        1,
        "one dispatch order per push-mode assignment"
    );
    assert_eq!(orders[0].execution_id, e);
    (e, orders[0].clone())
}

async fn shard<B: Backend>(h: &Harness<B>, e: &ExecutionId) -> tms::domain::Shard {
    h.app.execution_status(e).await.unwrap().1.remove(0)
}

// ---- each platform's request ----------------------------------------------

/// https://docs.github.com/en/rest/actions/workflows#create-a-workflow-dispatch-event
/// `POST /repos/{owner}/{repo}/actions/workflows/{workflow_id}/dispatches`
/// with `{"ref", "inputs"}` (at most 10 inputs), a bearer token,
/// `Accept: application/vnd.github+json`, the API version header and a
/// User-Agent; success is 204 No Content.
#[tokio::test]
async fn github_actions_gets_a_workflow_dispatch_with_the_shard_as_inputs() {
    let platform = Recorder::start(Answer::status(204)).await;
    let h = operator::<Sqlite>().await;
    h.secrets.set("GH_TOKEN", "ghp_secret");
    let target = DispatchTarget::GithubActions {
        owner: "acme".into(),
        repo: "shop".into(),
        workflow: "tms-shard.yml".into(),
        git_ref: "main".into(),
        token_secret: secret("GH_TOKEN"),
        api_url: Some(platform.url.clone()),
    };
    register(&h, runner("gha", RunnerType::GithubActions, Some(target))).await;
    let (e, order) = queue_and_schedule(&h).await;

    let outcome = h.app.dispatch_shard(&order, 1).await.unwrap();
    assert_eq!(
        outcome,
        DispatchOutcome::Dispatched {
            platform: "github-actions",
            status: 204
        }
    );
    let sent = platform.requests();
    assert_eq!(sent.len(), 1);
    let r = &sent[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.uri,
        "/repos/acme/shop/actions/workflows/tms-shard.yml/dispatches"
    );
    assert_eq!(r.header("authorization"), Some("Bearer ghp_secret"));
    assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
    assert!(r
        .header("user-agent")
        .is_some_and(|u| u.starts_with("tms/")));
    let body = r.json();
    assert_eq!(body["ref"], "main");
    let inputs = body["inputs"].as_object().unwrap();
    assert!(inputs.len() <= 10, "GitHub takes at most 10 inputs");
    assert_eq!(inputs["tms_execution_id"], e.as_str());
    assert_eq!(inputs["tms_shard_index"], "0");
    assert_eq!(inputs["tms_lease_id"], order.lease_id.as_str());
    assert_eq!(
        inputs["tms_webhook_url"],
        format!("{PUBLIC_URL}/api/enhanced-orchestration/webhooks/parallel-execution/{e}")
    );
    assert_eq!(
        inputs["tms_shard_url"],
        format!("{PUBLIC_URL}/api/enhanced-orchestration/webhooks/parallel-execution/{e}/shards/0")
    );
    assert!(inputs["tms_webhook_token"]
        .as_str()
        .unwrap()
        .starts_with("tms_"));
    let s = shard(&h, &e).await;
    assert_eq!(s.status, ShardStatus::Assigned);
    assert!(
        s.dispatch.is_some(),
        "the dispatch is recorded on the shard"
    );
}

/// https://docs.gitlab.com/ci/triggers/ — "Trigger a pipeline":
/// `POST /api/v4/projects/:id/trigger/pipeline` with form fields `token`,
/// `ref` and `variables[KEY]=value`; the project path URL-encoded; 201 Created.
#[tokio::test]
async fn gitlab_gets_a_pipeline_trigger_with_the_shard_as_variables() {
    let platform = Recorder::start(Answer::status(201).with_body(r#"{"id":42}"#)).await;
    let h = operator::<Sqlite>().await;
    h.secrets.set("GL_TRIGGER", "glptt-abc");
    let target = DispatchTarget::Gitlab {
        project: "acme/shop".into(),
        git_ref: "main".into(),
        trigger_token_secret: secret("GL_TRIGGER"),
        base_url: Some(platform.url.clone()),
    };
    register(&h, runner("gl", RunnerType::Gitlab, Some(target))).await;
    let (e, order) = queue_and_schedule(&h).await;

    let outcome = h.app.dispatch_shard(&order, 1).await.unwrap();
    assert!(matches!(
        outcome,
        DispatchOutcome::Dispatched { status: 201, .. }
    ));
    let r = &platform.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/api/v4/projects/acme%2Fshop/trigger/pipeline");
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = r.form();
    let field = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing from {form:?}"))
    };
    assert_eq!(field("token"), "glptt-abc");
    assert_eq!(field("ref"), "main");
    assert_eq!(field("variables[TMS_EXECUTION_ID]"), e.as_str());
    assert_eq!(field("variables[TMS_SHARD_INDEX]"), "0");
    assert_eq!(field("variables[TMS_LEASE_ID]"), order.lease_id.as_str());
    assert!(field("variables[TMS_WEBHOOK_TOKEN]").starts_with("tms_"));
}

/// https://www.jenkins.io/doc/book/using/remote-access-api/ (parameterized
/// builds: `POST <job>/buildWithParameters`, HTTP basic auth with an API
/// token, 201 Created) and
/// https://www.jenkins.io/doc/book/security/csrf-protection/ (a crumb from
/// `<root>/crumbIssuer/api/json`, sent in the `crumbRequestField` header
/// within the same web session).
#[tokio::test]
async fn jenkins_gets_build_with_parameters_and_a_crumb_only_when_it_asks() {
    let platform = Recorder::start(Answer::status(201)).await;
    platform.script([
        Answer::status(403).with_body("No valid crumb was included in the request"),
        Answer::status(200)
            .with_body(r#"{"_class":"hudson.security.csrf.DefaultCrumbIssuer","crumb":"c0ffee","crumbRequestField":"Jenkins-Crumb"}"#)
            .with_header("set-cookie", "JSESSIONID.abc=node01; Path=/; HttpOnly"),
    ]);
    let h = operator::<Sqlite>().await;
    h.secrets.set("JENKINS_TOKEN", "11aa22bb");
    let target = DispatchTarget::Jenkins {
        job_url: format!("{}/job/shop/job/tms-shard", platform.url),
        user: "tms-bot".into(),
        api_token_secret: secret("JENKINS_TOKEN"),
    };
    register(&h, runner("jenkins", RunnerType::Jenkins, Some(target))).await;
    let (e, order) = queue_and_schedule(&h).await;

    let outcome = h.app.dispatch_shard(&order, 1).await.unwrap();
    assert!(matches!(
        outcome,
        DispatchOutcome::Dispatched { status: 201, .. }
    ));
    let sent = platform.requests();
    assert_eq!(sent.len(), 3, "build, crumb, build again: {sent:?}");
    // user:token in basic auth
    let basic = "Basic dG1zLWJvdDoxMWFhMjJiYg==";
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].uri, "/job/shop/job/tms-shard/buildWithParameters");
    assert_eq!(sent[0].header("authorization"), Some(basic));
    assert!(sent[0].header("jenkins-crumb").is_none());
    assert_eq!(sent[1].method, "GET");
    assert_eq!(sent[1].uri, "/crumbIssuer/api/json");
    assert_eq!(sent[1].header("authorization"), Some(basic));
    assert_eq!(sent[2].uri, "/job/shop/job/tms-shard/buildWithParameters");
    assert_eq!(sent[2].header("jenkins-crumb"), Some("c0ffee"));
    assert_eq!(sent[2].header("cookie"), Some("JSESSIONID.abc=node01"));
    let form = sent[2].form();
    assert!(form.contains(&("TMS_EXECUTION_ID".into(), e.to_string())));
    assert!(form.contains(&("TMS_SHARD_INDEX".into(), "0".into())));
}

/// https://learn.microsoft.com/en-us/rest/api/azure/devops/pipelines/runs/run-pipeline?view=azure-devops-rest-7.1
/// `POST https://dev.azure.com/{organization}/{project}/_apis/pipelines/{pipelineId}/runs?api-version=7.1`
/// with `templateParameters` and `resources.repositories.self.refName`;
/// a PAT as the password of basic auth; 200 OK.
#[tokio::test]
async fn azure_devops_gets_a_pipeline_run_with_the_shard_as_template_parameters() {
    let platform = Recorder::start(Answer::status(200).with_body(r#"{"id":7}"#)).await;
    let h = operator::<Sqlite>().await;
    h.secrets.set("ADO_PAT", "patpat");
    let target = DispatchTarget::AzureDevops {
        organization: "acme".into(),
        project: "Shop Web".into(),
        pipeline_id: 12,
        git_ref: Some("refs/heads/main".into()),
        pat_secret: secret("ADO_PAT"),
        base_url: Some(platform.url.clone()),
    };
    register(&h, runner("ado", RunnerType::AzureDevops, Some(target))).await;
    let (e, order) = queue_and_schedule(&h).await;

    let outcome = h.app.dispatch_shard(&order, 1).await.unwrap();
    assert!(matches!(
        outcome,
        DispatchOutcome::Dispatched { status: 200, .. }
    ));
    let r = &platform.requests()[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.uri,
        "/acme/Shop%20Web/_apis/pipelines/12/runs?api-version=7.1"
    );
    // ":" + PAT, base64
    assert_eq!(r.header("authorization"), Some("Basic OnBhdHBhdA=="));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(
        body["resources"]["repositories"]["self"]["refName"],
        "refs/heads/main"
    );
    assert_eq!(body["templateParameters"]["tms_execution_id"], e.as_str());
    assert_eq!(body["templateParameters"]["tms_shard_index"], "0");
    assert_eq!(
        body["templateParameters"]["tms_lease_id"],
        order.lease_id.as_str()
    );
}

/// Our own webhook: a JSON POST signed with HMAC-SHA256 over
/// `<timestamp>.<body>` with the runner's signing secret.
#[tokio::test]
async fn a_custom_webhook_gets_the_whole_shard_signed_with_hmac_sha256() {
    let platform = Recorder::start(Answer::status(202)).await;
    let h = operator::<Sqlite>().await;
    h.secrets.set("HOOK_KEY", "k3y");
    register(
        &h,
        runner("hook", RunnerType::Custom, Some(webhook(&platform.url))),
    )
    .await;
    let (e, order) = queue_and_schedule(&h).await;

    let outcome = h.app.dispatch_shard(&order, 1).await.unwrap();
    assert!(matches!(
        outcome,
        DispatchOutcome::Dispatched { status: 202, .. }
    ));
    let r = &platform.requests()[0];
    assert_eq!(r.uri, "/hooks/tms");
    let timestamp = r.header(TIMESTAMP_HEADER).unwrap();
    assert_eq!(
        timestamp,
        (tms::time::Clock::now(&h.clock).0 / 1000).to_string(),
        "signed now"
    );
    let signature = r.header(SIGNATURE_HEADER).unwrap();
    assert!(verify("k3y", timestamp, &r.body, signature));
    assert!(!verify("wrong", timestamp, &r.body, signature));
    let body = r.json();
    assert_eq!(body["type"], "shard.dispatch");
    assert_eq!(body["execution_id"], e.as_str());
    assert_eq!(body["tests"], json!(["a", "b", "c"]));
}

// ---- the dispatched job ----------------------------------------------------

/// The job reads its shard and reports with the token it was given; the
/// token stops working once the lease moves on.
async fn a_dispatched_job_reads_its_shard_and_reports_with_its_token<B: Backend>() {
    let platform = Recorder::start(Answer::status(204)).await;
    let h = with_webhook_runner::<B>(&platform).await;
    let (e, order) = queue_and_schedule(&h).await;
    h.app.dispatch_shard(&order, 1).await.unwrap();
    let token = platform.requests()[0].json()["webhook_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let caller = h.app.authenticate(&token).await.unwrap();
    assert_eq!(
        caller,
        Principal::Job {
            execution: e.clone(),
            shard: 0,
            lease: order.lease_id.clone(),
        }
    );
    let work = h.app.shard_assignment(&caller, &e, 0).await.unwrap();
    assert_eq!(work.lease_id, order.lease_id);
    assert_eq!(*work.tests, ["a", "b", "c"]);
    let other = ExecutionId::generate();
    assert!(matches!(
        h.app.shard_assignment(&caller, &other, 0).await,
        Err(Error::Forbidden(_))
    ));

    for (status, results) in [
        (ReportStatus::Started, None),
        (
            ReportStatus::Passed,
            Some(ShardResult {
                passed: 3,
                ..Default::default()
            }),
        ),
    ] {
        let report = ShardReport {
            shard_index: 0,
            lease_id: order.lease_id.clone(),
            status,
            results,
        };
        h.app.report_shard(&caller, &e, report).await.unwrap();
    }
    h.deliver_events().await;
    assert_eq!(
        h.app.execution_status(&e).await.unwrap().0.status,
        ExecutionStatus::Passed
    );
    // Dispatching the finished shard again does nothing.
    assert_eq!(
        h.app.dispatch_shard(&order, 1).await.unwrap(),
        DispatchOutcome::Stale
    );
    assert_eq!(platform.requests().len(), 1);
}

/// Two shards of one execution dispatched to two jobs: each job's token
/// reads and reports its own shard only, cannot claim, and stops working
/// once its shard's lease moves on (the shard timed out and was requeued).
async fn a_job_token_reaches_only_its_own_shard_and_only_under_its_lease<B: Backend>() {
    let platform = Recorder::start(Answer::status(204)).await;
    let h = operator::<B>().await;
    h.secrets.set("HOOK_KEY", "k");
    let mut hook = runner("hook", RunnerType::Custom, Some(webhook(&platform.url)));
    hook.capacity = Resources::new(2, 16_000, 32_768);
    register(&h, hook).await;
    let new = tms_tests::new_execution("api", ["a", "b"].map(String::from), 2);
    let e = h.app.queue_execution(new, None).await.unwrap().execution.id;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 2);
    let mut orders = h.nudges.take_orders();
    orders.sort_by_key(|o| o.shard_index);
    assert_eq!(orders.len(), 2);
    for order in &orders {
        h.app.dispatch_shard(order, 1).await.unwrap();
    }
    let token_of = |index: u32| {
        platform
            .requests()
            .iter()
            .map(|r| r.json())
            .find(|b| b["shard_index"] == index)
            .unwrap()["webhook_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let job0 = h.app.authenticate(&token_of(0)).await.unwrap();
    let report = |index: u32, lease: &tms::ids::LeaseId, status| ShardReport {
        shard_index: index,
        lease_id: lease.clone(),
        status,
        results: None,
    };

    // Its own shard: readable, reportable.
    let own = h.app.shard_assignment(&job0, &e, 0).await.unwrap();
    assert_eq!(own.lease_id, orders[0].lease_id);
    h.app
        .report_shard(
            &job0,
            &e,
            report(0, &orders[0].lease_id, ReportStatus::Started),
        )
        .await
        .unwrap();
    // The other shard of the same execution: neither its lease nor a report.
    assert!(matches!(
        h.app.shard_assignment(&job0, &e, 1).await,
        Err(Error::Forbidden(_))
    ));
    for status in [ReportStatus::Started, ReportStatus::Passed] {
        assert!(matches!(
            h.app
                .report_shard(&job0, &e, report(1, &orders[1].lease_id, status))
                .await,
            Err(Error::Forbidden(_))
        ));
    }
    // Nor its own shard under a lease it was not dispatched with.
    assert!(matches!(
        h.app
            .report_shard(
                &job0,
                &e,
                report(0, &orders[1].lease_id, ReportStatus::Passed)
            )
            .await,
        Err(Error::Forbidden(_))
    ));
    assert!(matches!(
        h.app.claim_shard(&job0, &e, 0).await,
        Err(Error::Forbidden(_))
    ));
    assert_eq!(
        h.app.execution_status(&e).await.unwrap().1[1].status,
        ShardStatus::Assigned,
        "shard 1 untouched"
    );

    // Past the shard timeout both shards are requeued under new leases.
    let job1 = h.app.authenticate(&token_of(1)).await.unwrap();
    h.clock.advance_secs(4 * 3600);
    h.app.timeout_sweep().await.unwrap();
    let shards = h.app.execution_status(&e).await.unwrap().1;
    assert!(shards
        .iter()
        .all(|s| s.lease_id.as_ref() != Some(&orders[s.index as usize].lease_id)));
    // The old tokens are refused; a principal verified before (still in
    // the token cache on another instance) cannot read or report either.
    assert!(matches!(
        h.app.authenticate(&token_of(0)).await,
        Err(Error::Unauthorized)
    ));
    assert!(matches!(
        h.app.shard_assignment(&job1, &e, 1).await,
        Err(Error::StaleLease { .. })
    ));
    assert!(matches!(
        h.app
            .report_shard(
                &job1,
                &e,
                report(1, &orders[1].lease_id, ReportStatus::Passed)
            )
            .await,
        Err(Error::StaleLease { .. })
    ));
}

/// 5xx and 429 are retried with backoff (longer when the platform says
/// so); after the last attempt the shard goes to another runner.
async fn a_failing_platform_is_retried_then_the_shard_goes_to_another_runner<B: Backend>() {
    let platform = Recorder::start(Answer::status(503).with_body("unavailable")).await;
    platform.script([Answer::status(429).with_header("retry-after", "120")]);
    let h = operator::<B>().await;
    h.secrets.set("HOOK_KEY", "k");
    let pushed = register(
        &h,
        runner("hook", RunnerType::Custom, Some(webhook(&platform.url))),
    )
    .await;
    let (e, order) = queue_and_schedule(&h).await;
    let max = h.app.config.dispatch_max_attempts;

    match h.app.dispatch_shard(&order, 1).await.unwrap() {
        DispatchOutcome::Retry { after, reason } => {
            assert_eq!(after, Duration::from_secs(120), "Retry-After is honoured");
            assert!(reason.contains("429"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let mut delays = Vec::new();
    for attempt in 2..max {
        match h.app.dispatch_shard(&order, attempt).await.unwrap() {
            DispatchOutcome::Retry { after, .. } => delays.push(after),
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "backoff grows: {delays:?}"
    );
    let DispatchOutcome::Exhausted { reason } = h.app.dispatch_shard(&order, max).await.unwrap()
    else {
        panic!("the last attempt gives up")
    };
    assert!(reason.contains("503"), "{reason}");
    assert_eq!(platform.requests().len() as u32, max);

    let s = shard(&h, &e).await;
    assert_eq!(s.status, ShardStatus::Queued);
    assert_eq!(s.avoid_runners, vec![pushed.clone()]);
    assert_eq!(h.app.runner(&pushed).await.unwrap().allocated.slots, 0);
    // A transient outage does not pause the runner.
    assert_eq!(
        h.app.runner(&pushed).await.unwrap().runner.status,
        RunnerStatus::Active
    );
    let puller = register(&h, runner("puller", RunnerType::Custom, None)).await;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 1);
    assert_eq!(h.app.heartbeat(&puller, None).await.unwrap().len(), 1);
}

/// A refusal (bad credentials) will not get better by retrying: the runner
/// is paused with the platform's answer as the reason, and the shard goes
/// to another runner at once.
async fn a_refused_dispatch_pauses_the_runner_and_requeues_the_shard<B: Backend>() {
    let platform =
        Recorder::start(Answer::status(401).with_body(r#"{"message":"Bad credentials"}"#)).await;
    let h = operator::<B>().await;
    h.secrets.set("HOOK_KEY", "k");
    let pushed = register(
        &h,
        runner("hook", RunnerType::Custom, Some(webhook(&platform.url))),
    )
    .await;
    let (e, order) = queue_and_schedule(&h).await;

    let DispatchOutcome::Refused { reason } = h.app.dispatch_shard(&order, 1).await.unwrap() else {
        panic!("refused")
    };
    assert!(
        reason.contains("401") && reason.contains("Bad credentials"),
        "{reason}"
    );
    let r = h.app.runner(&pushed).await.unwrap();
    assert_eq!(r.runner.status, RunnerStatus::Paused);
    assert_eq!(r.runner.status_reason.as_deref(), Some(reason.as_str()));
    assert_eq!(r.allocated.slots, 0);
    let history = h.app.store_health_history(&pushed).await.unwrap();
    assert_eq!(history[0].status, RunnerStatus::Paused);
    assert_eq!(shard(&h, &e).await.status, ShardStatus::Queued);
    // The old order is out of date now, and sends nothing.
    assert_eq!(
        h.app.dispatch_shard(&order, 2).await.unwrap(),
        DispatchOutcome::Stale
    );
    assert_eq!(platform.requests().len(), 1);
    // Fixed and resumed, the runner gets the shard again.
    h.app.resume_runner(&pushed).await.unwrap();
    assert_eq!(h.app.schedule_pass().await.unwrap(), 1);
    assert_eq!(h.nudges.take_orders().len(), 1);
}

/// A push-mode runner sends no heartbeats, so silence never makes it
/// unhealthy (a pull-mode runner beside it still does).
async fn a_push_mode_runner_is_never_marked_unhealthy_for_silence<B: Backend>() {
    let h = operator::<B>().await;
    let pushed = register(
        &h,
        runner(
            "hook",
            RunnerType::Custom,
            Some(webhook("https://hooks.test")),
        ),
    )
    .await;
    let puller = register(&h, runner("puller", RunnerType::Custom, None)).await;
    h.clock.advance_ms(h.app.config.silence_limit_ms() + 1_000);
    let report = h.app.health_sweep().await.unwrap();
    assert_eq!(report.runners_marked_unhealthy, 1);
    assert_eq!(
        h.app.runner(&pushed).await.unwrap().runner.status,
        RunnerStatus::Active
    );
    assert_eq!(
        h.app.runner(&puller).await.unwrap().runner.status,
        RunnerStatus::Unhealthy
    );
}

/// Lambda stops a dispatcher at its timeout wherever it is; SQS then
/// delivers the same order again. The platform already has the job, so the
/// redelivery must not start a second one.
async fn a_dispatch_redelivered_after_the_dispatcher_was_stopped_mid_call_starts_no_second_job<
    B: Backend,
>() {
    let platform = Recorder::start(Answer::status(204).after(Duration::from_secs(5))).await;
    let h = with_webhook_runner::<B>(&platform).await;
    let (e, order) = queue_and_schedule(&h).await;
    // The platform has the request; the dispatcher is stopped before it answers.
    let stopped = tokio::time::timeout(Duration::from_secs(2), async {
        tokio::join!(h.app.dispatch_shard(&order, 1), async {
            tms_tests::eventually("the platform got the job", || async {
                (!platform.requests().is_empty()).then_some(())
            })
            .await
        })
    })
    .await;
    assert!(stopped.is_err(), "the first attempt was still waiting");

    assert_eq!(
        h.app.dispatch_shard(&order, 2).await.unwrap(),
        DispatchOutcome::AlreadyDispatched
    );
    assert_eq!(platform.requests().len(), 1, "one job for one lease");
    assert_eq!(shard(&h, &e).await.status, ShardStatus::Assigned);
}

/// An attempt that outlasts its budget gives up on the platform's answer
/// but not on the job it may have started: no later attempt asks again,
/// and the lease's deadline sends the shard elsewhere if nothing reports.
async fn a_dispatch_over_its_budget_is_unconfirmed_and_never_repeated<B: Backend>() {
    let platform = Recorder::start(Answer::status(204).after(Duration::from_secs(5))).await;
    let config = tms::config::Config {
        dispatch_allowed_hosts: tms::domain::AllowedHosts::parse(["127.0.0.1"]).unwrap(),
        dispatch_attempt_budget_ms: 300,
        ..Default::default()
    };
    let h = Harness::<B>::start_with(config).await;
    h.secrets.set("HOOK_KEY", "k");
    register(
        &h,
        runner("hook", RunnerType::Custom, Some(webhook(&platform.url))),
    )
    .await;
    let mut new = tms_tests::new_execution("api", ["a"].map(String::from), 1);
    new.shard_timeout_seconds = Some(600);
    let e = h.app.queue_execution(new, None).await.unwrap().execution.id;
    assert_eq!(h.app.schedule_pass().await.unwrap(), 1);
    let order = h.nudges.take_orders().remove(0);
    let DispatchOutcome::Unconfirmed { reason } = h.app.dispatch_shard(&order, 1).await.unwrap()
    else {
        panic!("the attempt ran out of its budget")
    };
    assert!(reason.contains("300 ms"), "{reason}");
    assert_eq!(
        h.app.dispatch_shard(&order, 2).await.unwrap(),
        DispatchOutcome::AlreadyDispatched
    );
    assert_eq!(platform.requests().len(), 1);

    let deadline = shard(&h, &e).await.deadline.unwrap();
    h.clock
        .advance_ms(deadline.since(tms::time::Clock::now(&h.clock)) + 1);
    let swept = h.app.timeout_sweep().await.unwrap();
    assert_eq!(swept.shards_requeued, 1, "{swept:?}");
    assert_eq!(shard(&h, &e).await.status, ShardStatus::Queued);
}

/// A platform that answered "not now" did not start the job: the next
/// attempt dispatches the same lease.
async fn a_platform_that_answered_busy_gets_the_lease_again_on_the_next_attempt<B: Backend>() {
    let platform = Recorder::start(Answer::status(204)).await;
    platform.script([Answer::status(503)]);
    let h = with_webhook_runner::<B>(&platform).await;
    let (_, order) = queue_and_schedule(&h).await;
    assert!(matches!(
        h.app.dispatch_shard(&order, 1).await.unwrap(),
        DispatchOutcome::Retry { .. }
    ));
    assert!(matches!(
        h.app.dispatch_shard(&order, 2).await.unwrap(),
        DispatchOutcome::Dispatched { status: 204, .. }
    ));
    assert_eq!(
        h.app.dispatch_shard(&order, 3).await.unwrap(),
        DispatchOutcome::AlreadyDispatched
    );
    assert_eq!(platform.requests().len(), 2);
}

tms_tests::conformance!(
    a_dispatch_redelivered_after_the_dispatcher_was_stopped_mid_call_starts_no_second_job,
    a_dispatch_over_its_budget_is_unconfirmed_and_never_repeated,
    a_platform_that_answered_busy_gets_the_lease_again_on_the_next_attempt,
    a_dispatched_job_reads_its_shard_and_reports_with_its_token,
    a_job_token_reaches_only_its_own_shard_and_only_under_its_lease,
    a_failing_platform_is_retried_then_the_shard_goes_to_another_runner,
    a_refused_dispatch_pauses_the_runner_and_requeues_the_shard,
    a_push_mode_runner_is_never_marked_unhealthy_for_silence,
);

// ---- configuration ---------------------------------------------------------

#[tokio::test]
async fn a_missing_secret_is_a_refusal_named_after_the_secret() {
    let platform = Recorder::start(Answer::status(204)).await;
    let h = operator::<Sqlite>().await;
    let pushed = register(
        &h,
        runner("hook", RunnerType::Custom, Some(webhook(&platform.url))),
    )
    .await;
    let (_, order) = queue_and_schedule(&h).await;
    let DispatchOutcome::Refused { reason } = h.app.dispatch_shard(&order, 1).await.unwrap() else {
        panic!("refused")
    };
    assert!(reason.contains("HOOK_KEY"), "{reason}");
    assert!(platform.requests().is_empty());
    assert_eq!(
        h.app.runner(&pushed).await.unwrap().runner.status,
        RunnerStatus::Paused
    );
}

#[tokio::test]
async fn an_unreachable_platform_is_retried() {
    // A port nothing listens on: bind one, then let it go.
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let h = operator::<Sqlite>().await;
    h.secrets.set("HOOK_KEY", "k");
    register(&h, runner("hook", RunnerType::Custom, Some(webhook(&url)))).await;
    let (_, order) = queue_and_schedule(&h).await;
    match h.app.dispatch_shard(&order, 1).await.unwrap() {
        DispatchOutcome::Retry { after, reason } => {
            assert_eq!(after, h.app.config.dispatch_backoff(1));
            assert!(reason.contains("no answer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_pull_mode_runner_gets_no_dispatch_orders() {
    let h = operator::<Sqlite>().await;
    register(&h, runner("puller", RunnerType::Custom, None)).await;
    let new = tms_tests::new_execution("api", ["a"].map(String::from), 1);
    h.app.queue_execution(new, None).await.unwrap();
    assert_eq!(h.app.schedule_pass().await.unwrap(), 1);
    assert!(h.nudges.take_orders().is_empty());
}

#[tokio::test]
async fn registration_refuses_a_dispatch_target_that_cannot_work() {
    let h = operator::<Sqlite>().await;
    let unlisted = Harness::<Sqlite>::start().await;
    // A host the operator did not allow, even this machine.
    match unlisted
        .app
        .register_runner(runner(
            "z",
            RunnerType::Custom,
            Some(webhook("http://127.0.0.1:9")),
        ))
        .await
    {
        Err(Error::Validation { field, reason }) => {
            assert_eq!(field, "dispatch.url");
            assert!(
                reason.contains("--dispatch-allow-host 127.0.0.1:9"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let gitlab = DispatchTarget::Gitlab {
        project: "acme/shop".into(),
        git_ref: "main".into(),
        trigger_token_secret: secret("T"),
        base_url: None,
    };
    let cases = [
        // A GitLab trigger for a GitHub Actions runner.
        runner("x", RunnerType::GithubActions, Some(gitlab)),
        // Credentials over plain HTTP to another machine.
        runner(
            "y",
            RunnerType::Custom,
            Some(webhook("http://hooks.example.com")),
        ),
    ];
    for new in cases {
        assert!(matches!(
            h.app.register_runner(new).await,
            Err(Error::Validation { .. })
        ));
    }
}

/// One attempt asks the platform for at most its budget, and the budget
/// leaves the dispatcher function time for its reads and writes before
/// Lambda stops it.
#[test]
fn the_dispatch_attempt_budget_fits_inside_the_dispatcher_functions_timeout() {
    let template = tms::adapters::stack::Template::builtin().unwrap();
    let stack = tms::adapters::stack::Stack::default();
    let timeout = stack
        .function_property(&template, "DispatcherFunction", "Timeout")
        .unwrap()
        .as_u64()
        .expect("DispatcherFunction sets its Timeout");
    let budget_secs = tms::config::DISPATCH_ATTEMPT_BUDGET_MS / 1000;
    assert_eq!(
        tms::config::Config::default().dispatch_attempt_budget_ms,
        tms::config::DISPATCH_ATTEMPT_BUDGET_MS
    );
    assert!(
        budget_secs + 5 <= timeout,
        "a {budget_secs} s attempt budget needs a timeout of at least {} s, not {timeout} s",
        budget_secs + 5
    );
}
