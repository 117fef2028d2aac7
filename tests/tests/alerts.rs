//! Alert rules with a manual clock, evaluated by the health sweep: a rule
//! fires when its value goes above the threshold and resolves when it comes
//! back; its webhook gets one signed notice per transition, however many
//! sweeps run; a notice the webhook refused is sent again by the next
//! sweep. A conformance suite: the embedded store and DynamoDB (moto).

use tms::auth::Principal;
use tms::dispatch::{verify, DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use tms::domain::{AlertMetric, AlertWebhook, Bounded, SecretName, ShardResult};
use tms::usecases::NewAlertRule;
use tms_tests::recorder::{Answer, Recorder};
use tms_tests::{final_report, Backend, Harness};

fn rule(name: &str, metric: AlertMetric, threshold: f64) -> NewAlertRule {
    NewAlertRule {
        name: Bounded::new(name).unwrap(),
        metric,
        threshold,
        window_hours: None,
        min_runs: None,
        suite: None,
        webhook: None,
    }
}

async fn queue_depth_fires_once_per_episode_with_a_signed_notice<B: Backend>() {
    let h = Harness::<B>::start().await;
    let hook = Recorder::start(Answer::status(204)).await;
    h.secrets.set("ALERTS_SIGNING", "s3cret");
    let mut new = rule("queue backing up", AlertMetric::QueueDepth, 2.0);
    new.webhook = Some(AlertWebhook {
        url: format!("{}/hooks/tms", hook.url),
        secret: Some(SecretName::parse("ALERTS_SIGNING").unwrap()),
    });
    let created = h.app.create_alert_rule(new).await.unwrap();
    // Nothing queued: quiet.
    assert_eq!(h.app.health_sweep().await.unwrap().alerts_changed, 0);
    // Three shards wait with no runner: above 2, it fires — once.
    for suite in ["a", "b", "c"] {
        let e = tms_tests::new_execution(suite, ["t".into()], 1);
        h.app.queue_execution(e, None).await.unwrap();
    }
    for _ in 0..3 {
        h.clock.advance_secs(30);
        h.app.health_sweep().await.unwrap();
    }
    let sent = hook.requests();
    assert_eq!(
        sent.len(),
        1,
        "one notice for the episode: {:?}",
        sent.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
    );
    let notice = sent[0].json();
    assert_eq!(notice["type"], "alert.fired");
    assert_eq!(notice["rule"]["name"], "queue backing up");
    assert_eq!(notice["value"], 3.0);
    assert_eq!(notice["episode"], 1);
    let (ts, sig) = (
        sent[0].header(TIMESTAMP_HEADER).unwrap(),
        sent[0].header(SIGNATURE_HEADER).unwrap(),
    );
    assert!(
        verify("s3cret", ts, &sent[0].body, sig),
        "signed with the secret"
    );
    assert!(!verify("other", ts, &sent[0].body, sig));
    assert_eq!(
        sent[0].header(DELIVERY_HEADER).unwrap(),
        format!("{}.1.fired", created.id)
    );
    let listed = h.app.alert_rules().await.unwrap();
    assert!(listed[0].state.firing && listed[0].state.delivered);

    // A runner takes the work: it resolves, once.
    h.runner("r", 4).await;
    h.app.schedule_pass().await.unwrap();
    for _ in 0..2 {
        h.clock.advance_secs(30);
        h.app.health_sweep().await.unwrap();
    }
    let sent = hook.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].json()["type"], "alert.resolved");
    assert!(!h.app.alert_rules().await.unwrap()[0].state.firing);
}

async fn a_refused_notice_is_sent_again_until_taken<B: Backend>() {
    let h = Harness::<B>::start().await;
    let hook = Recorder::start(Answer::status(200)).await;
    hook.script([Answer::status(503)]);
    let mut new = rule("queue", AlertMetric::QueueDepth, 0.0);
    new.webhook = Some(AlertWebhook {
        url: hook.url.clone(),
        secret: None,
    });
    h.app.create_alert_rule(new).await.unwrap();
    let e = tms_tests::new_execution("s", ["t".into()], 1);
    h.app.queue_execution(e, None).await.unwrap();
    h.app.health_sweep().await.unwrap();
    let state = &h.app.alert_rules().await.unwrap()[0].state;
    assert!(state.firing && !state.delivered);
    assert!(state.delivery_error.as_deref().unwrap().contains("503"));
    h.app.health_sweep().await.unwrap();
    h.app.health_sweep().await.unwrap();
    let sent = hook.requests();
    assert_eq!(sent.len(), 2, "the refused one, then one taken");
    assert_eq!(
        sent[0].header(DELIVERY_HEADER),
        sent[1].header(DELIVERY_HEADER)
    );
    assert!(h.app.alert_rules().await.unwrap()[0].state.delivered);
}

async fn the_failure_rate_counts_finished_runs_in_its_window<B: Backend>() {
    let h = Harness::<B>::start().await;
    let mut new = rule("api failing", AlertMetric::FailureRate, 0.4);
    new.min_runs = Some(2);
    new.suite = Some(Bounded::new("api").unwrap());
    h.app.create_alert_rule(new).await.unwrap();
    let r = h.runner("r", 4).await;
    for failed in [1, 0, 1] {
        let e = tms_tests::new_execution("api", ["t".into()], 1);
        h.app.queue_execution(e, None).await.unwrap();
        h.app.schedule_pass().await.unwrap();
        let a = h.app.heartbeat(&r, None).await.unwrap().remove(0);
        let report = final_report(
            a.shard_index,
            a.lease_id,
            ShardResult {
                passed: 1 - failed,
                failed,
                ..Default::default()
            },
        );
        h.app
            .report_shard(&Principal::Runner(r.clone()), &a.execution_id, report)
            .await
            .unwrap();
        h.deliver_events().await;
    }
    h.app.health_sweep().await.unwrap();
    let state = h.app.alert_rules().await.unwrap()[0].state.clone();
    let value = state.value.unwrap();
    assert!((value - 2.0 / 3.0).abs() < 1e-9, "{value}");
    assert!(state.firing);
    // Two hours on, the window (1 hour) holds no runs: no data, resolved.
    h.clock.advance_secs(2 * 3600);
    h.app.health_sweep().await.unwrap();
    let state = h.app.alert_rules().await.unwrap()[0].state.clone();
    assert_eq!(state.value, None);
    assert!(!state.firing);
}

async fn rules_are_validated_listed_and_deleted<B: Backend>() {
    let h = Harness::<B>::start().await;
    assert!(h
        .app
        .create_alert_rule(rule("x", AlertMetric::FailureRate, 2.0))
        .await
        .is_err());
    assert!(h
        .app
        .create_alert_rule(rule("", AlertMetric::QueueDepth, 1.0))
        .await
        .is_err());
    let a = h
        .app
        .create_alert_rule(rule("unhealthy", AlertMetric::UnhealthyRunners, 0.0))
        .await
        .unwrap();
    let b = h
        .app
        .create_alert_rule(rule("old", AlertMetric::OldestQueuedAgeSeconds, 600.0))
        .await
        .unwrap();
    assert_eq!(h.app.alert_rules().await.unwrap().len(), 2);
    h.app.delete_alert_rule(&a.id).await.unwrap();
    assert!(h.app.delete_alert_rule(&a.id).await.is_err());
    let left = h.app.alert_rules().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, b.id);
}

async fn a_runner_going_silent_fires_the_unhealthy_runners_rule_in_the_same_sweep<B: Backend>() {
    let h = Harness::<B>::start().await;
    h.app
        .create_alert_rule(rule("runners down", AlertMetric::UnhealthyRunners, 0.0))
        .await
        .unwrap();
    let id = h.runner("r", 1).await;
    assert_eq!(h.app.health_sweep().await.unwrap().alerts_changed, 0);
    h.clock.advance_secs(10 * 60);
    let report = h.app.health_sweep().await.unwrap();
    assert_eq!(report.runners_marked_unhealthy, 1);
    assert_eq!(report.alerts_changed, 1);
    let state = h.app.alert_rules().await.unwrap()[0].state.clone();
    assert_eq!((state.firing, state.value), (true, Some(1.0)));
    // It comes back: resolved.
    h.app.heartbeat(&id, None).await.unwrap();
    assert_eq!(h.app.health_sweep().await.unwrap().alerts_changed, 1);
    assert!(!h.app.alert_rules().await.unwrap()[0].state.firing);
}

async fn work_no_runner_could_run_fires_the_unrunnable_rule_and_shows_in_health<B: Backend>() {
    let h = Harness::<B>::start().await;
    h.app
        .create_alert_rule(rule("stuck", AlertMetric::UnrunnableExecutions, 0.0))
        .await
        .unwrap();
    h.runner("linux", 1).await;
    let mut gpu = tms_tests::new_execution("ml", ["t".to_owned()], 1);
    gpu.requirements = Some(tms::usecases::RequirementsInput {
        labels: ["gpu".to_owned()].into(),
        ..Default::default()
    });
    h.app.queue_execution(gpu, None).await.unwrap();
    let runnable = tms_tests::new_execution("api", ["t".to_owned()], 1);
    h.app.queue_execution(runnable, None).await.unwrap();
    let health = h.app.system_health().await;
    assert_eq!(health.queue.unwrap().unrunnable_executions, 1);
    assert_eq!(h.app.health_sweep().await.unwrap().alerts_changed, 1);
    let state = h.app.alert_rules().await.unwrap()[0].state.clone();
    assert_eq!((state.firing, state.value), (true, Some(1.0)));
}

tms_tests::conformance!(
    a_runner_going_silent_fires_the_unhealthy_runners_rule_in_the_same_sweep,
    queue_depth_fires_once_per_episode_with_a_signed_notice,
    a_refused_notice_is_sent_again_until_taken,
    the_failure_rate_counts_finished_runs_in_its_window,
    rules_are_validated_listed_and_deleted,
    work_no_runner_could_run_fires_the_unrunnable_rule_and_shows_in_health,
);
