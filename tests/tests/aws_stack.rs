//! The template's resources created on moto from `template.yaml` itself, and
//! the messaging adapters on them: nudges reach the schedule queue, events
//! reach the aggregate queue through the bus and the rule.

use aws_sdk_sqs::types::QueueAttributeName;
use tms::adapters::{EventBridgeEvents, SqsNudges};
use tms::ids::{ExecutionId, LeaseId};
use tms::ports::{Event, Events, Nudges};
use tms_tests::moto;

async fn receive(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let out = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    out.messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.body)
        .collect()
}

#[tokio::test]
async fn the_templates_queues_have_dead_letter_queues_and_six_times_the_consumer_timeout() {
    let (_, stack, sdk) = moto::stack().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    for (queue, dlq) in [
        ("ScheduleQueue", "ScheduleDeadLetterQueue"),
        ("AggregateQueue", "AggregateDeadLetterQueue"),
        ("DispatchQueue", "DispatchDeadLetterQueue"),
    ] {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(stack.physical(queue).unwrap())
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        let redrive: serde_json::Value =
            serde_json::from_str(&attributes[&QueueAttributeName::RedrivePolicy]).unwrap();
        assert_eq!(
            redrive["deadLetterTargetArn"],
            stack.get_att(dlq, "Arn").unwrap(),
            "{queue}"
        );
        assert_eq!(
            redrive["maxReceiveCount"].to_string().trim_matches('"'),
            "5"
        );
        assert_eq!(attributes[&QueueAttributeName::VisibilityTimeout], "180");
    }
}

#[tokio::test]
async fn the_table_is_created_with_the_indexes_and_ttl_of_the_template() {
    let (_, stack, sdk) = moto::stack().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = stack.physical("Table").unwrap();
    let described = dynamo
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap();
    let mut indexes: Vec<String> = described
        .table()
        .unwrap()
        .global_secondary_indexes()
        .iter()
        .filter_map(|i| i.index_name().map(str::to_owned))
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["gsi1", "gsi2", "gsi3", "gsi4", "gsi5", "gsi6"]);
    let ttl = dynamo
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ttl.time_to_live_description()
            .and_then(|t| t.attribute_name()),
        Some("expires_at")
    );
}

#[tokio::test]
async fn creating_the_resources_again_keeps_them() {
    let sdk = moto::sdk_config().await;
    let template = tms::adapters::stack::Template::builtin().unwrap();
    let stage = moto::unique_name("t");
    let first = tms::adapters::stack::create(&template, &[("Stage", &stage)], &sdk)
        .await
        .unwrap();
    let second = tms::adapters::stack::create(&template, &[("Stage", &stage)], &sdk)
        .await
        .unwrap();
    assert_eq!(
        first.aws_resources().unwrap(),
        second.aws_resources().unwrap()
    );
    assert_eq!(
        first.physical("AdminTokenSecret"),
        second.physical("AdminTokenSecret")
    );
}

#[tokio::test]
async fn schedule_nudges_and_dispatch_orders_land_on_their_own_queues() {
    let (_, stack, sdk) = moto::stack().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let schedule = stack.physical("ScheduleQueue").unwrap();
    let dispatch = stack.physical("DispatchQueue").unwrap();
    let nudges = SqsNudges::new(sqs.clone(), schedule, dispatch);
    nudges.schedule().await;
    let order = tms::ports::DispatchOrder {
        execution_id: ExecutionId::generate(),
        shard_index: 1,
        lease_id: LeaseId::generate(),
    };
    nudges.dispatch(order.clone()).await;
    assert_eq!(
        receive(&sqs, schedule).await,
        [tms::adapters::aws::SCHEDULE_NUDGE]
    );
    let bodies = receive(&sqs, dispatch).await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        serde_json::from_str::<tms::ports::DispatchOrder>(&bodies[0]).unwrap(),
        order
    );
}

#[test]
fn the_dispatcher_gives_up_on_the_attempt_the_dispatch_queue_dead_letters() {
    let template = tms::adapters::stack::Template::builtin().unwrap();
    let text = include_str!("../../template.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let max_receive = doc["Resources"]["DispatchQueue"]["Properties"]["RedrivePolicy"]
        ["maxReceiveCount"]
        .as_u64()
        .unwrap();
    let attempts = doc["Resources"]["DispatcherFunction"]["Properties"]["Environment"]["Variables"]
        [tms_functions::env::DISPATCH_MAX_ATTEMPTS]
        .as_str()
        .unwrap();
    assert_eq!(attempts, max_receive.to_string());
    // Visibility is 6 x the consumer's timeout, as Lambda asks.
    let timeout = doc["Resources"]["DispatcherFunction"]["Properties"]["Timeout"]
        .as_u64()
        .unwrap();
    let visibility = doc["Resources"]["DispatchQueue"]["Properties"]["VisibilityTimeout"]
        .as_u64()
        .unwrap();
    assert!(visibility >= 6 * timeout);
    assert!(template
        .functions()
        .contains(&"DispatcherFunction".to_string()));
}

#[tokio::test]
async fn a_shard_completion_reaches_the_aggregate_queue_through_the_bus_and_rule() {
    let (_, stack, sdk) = moto::stack().await;
    let bus = stack.physical("EventBus").unwrap();
    let event = Event::ShardCompleted {
        execution_id: ExecutionId::generate(),
        shard_index: 3,
        lease_id: Some(LeaseId::generate()),
        status: "passed".into(),
    };
    EventBridgeEvents::new(aws_sdk_eventbridge::Client::new(&sdk), bus)
        .publish(event.clone())
        .await
        .unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let bodies = receive(&sqs, stack.physical("AggregateQueue").unwrap()).await;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(Event::from_envelope(&bodies[0]).unwrap(), event);
    assert!(
        receive(&sqs, stack.physical("ScheduleQueue").unwrap())
            .await
            .is_empty(),
        "the rule routes completions only to the aggregate queue"
    );
}

#[tokio::test]
async fn an_execution_too_large_for_one_dynamodb_item_is_refused_as_invalid_input() {
    let h = tms_tests::Harness::<tms_tests::Dynamo>::start().await;
    // 12,000 names of about 50 bytes in one shard: about 600 KB, over the 400 KB item limit.
    let names = (0..12_000).map(|i| format!("tests/integration/test_checkout_flow_{i:06}.py"));
    let new = tms_tests::new_execution("huge", names, 1);
    let err = h.app.queue_execution(new, None).await.unwrap_err();
    assert!(
        matches!(&err, tms::Error::Validation { field, .. } if field == "tests"),
        "{err:?}"
    );
    let listed = h.app.list_executions(Default::default()).await.unwrap();
    assert!(
        listed.items.is_empty(),
        "nothing of the refused execution was stored"
    );
}

/// On AWS a dispatch secret's name resolves only under the stage's
/// `tms/<stage>/dispatch/` prefix: a secret of the same name elsewhere (the
/// admin token's secret, anything else in the account) is never read, and
/// names that could address a server setting are refused before a read.
#[tokio::test]
async fn a_dispatch_secret_name_reaches_only_the_stages_dispatch_prefix() {
    use tms::adapters::SecretsManagerSecrets;
    use tms::domain::SecretName;
    use tms::ports::Secrets;
    let sdk = moto::sdk_config().await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let stage = moto::unique_name("s");
    let name = moto::unique_name("GH").replace('-', "_");
    for (id, value) in [
        (name.clone(), "outside-the-prefix"),
        (format!("tms/{stage}/admin-token"), "the-admin-token"),
        (format!("tms/{stage}/dispatch/{name}"), "ghp_dispatch"),
    ] {
        client
            .create_secret()
            .name(id)
            .secret_string(value)
            .send()
            .await
            .unwrap();
    }
    let secrets = SecretsManagerSecrets::new(client, SecretsManagerSecrets::stage_prefix(&stage));
    let read = |n: &str| {
        let secrets = secrets.clone();
        let n = SecretName::parse(n);
        async move { secrets.secret(&n.unwrap()).await.unwrap() }
    };
    assert_eq!(read(&name).await.as_deref(), Some("ghp_dispatch"));
    // `admin-token` is looked up as tms/<stage>/dispatch/admin-token.
    for other in ["admin-token", "ADMIN_TOKEN"] {
        if SecretName::parse(other).is_ok() {
            assert_eq!(read(other).await, None, "{other}");
        }
    }
    for refused in ["../admin-token", "tms/dev/admin-token", ""] {
        assert!(SecretName::parse(refused).is_err(), "{refused}");
    }
    // A server setting's name is refused at registration, before any read.
    let setting = SecretName::parse("TMS_ADMIN_TOKEN").unwrap();
    assert!(setting.check_namespace("dispatch.token_secret").is_err());
}
