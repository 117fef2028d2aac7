//! What a production deployment of template.yaml needs and neither
//! cfn-lint nor AWS's serverless rules check (`infra/lint-template` runs
//! both): an alarm on every function's errors and throttles, on every
//! queue's oldest message and on every dead-letter queue's depth, each
//! notifying the alarm topic; a log group with the retention parameter for
//! every function; the table and the admin secret kept when the stack goes;
//! every EventBridge delivery with a retry policy and a dead-letter queue.
//! Written against the template's structure, so a function or queue added
//! later without them fails here.

use serde_yaml_ng::{Mapping, Value};
use tms::adapters::stack::Template;

fn template() -> Template {
    Template::builtin().expect("template.yaml parses")
}

fn get<'a>(map: &'a Mapping, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let value = map.get(Value::String((*first).to_owned()))?;
    if rest.is_empty() {
        return Some(value);
    }
    get(value.as_mapping()?, rest)
}

/// The logical id an intrinsic names: `!Ref X`, `!GetAtt X.Attr`,
/// `!Sub "...${X}..."` (the first `${...}` that is not a pseudo parameter).
fn named(value: &Value) -> Option<String> {
    let Value::Tagged(tagged) = value else {
        return None;
    };
    let text = tagged.value.as_str()?;
    match tagged.tag.to_string().as_str() {
        "!Ref" => Some(text.to_owned()),
        "!GetAtt" => Some(text.split('.').next()?.to_owned()),
        "!Sub" => text
            .split("${")
            .skip(1)
            .filter_map(|p| p.split('}').next())
            .find(|p| !p.starts_with("AWS::"))
            .map(|p| p.split('.').next().unwrap_or(p).to_owned()),
        _ => None,
    }
}

/// `(metric, dimension target)` of every alarm, after checking that each
/// one notifies the alarm topic (when one is given) and clears it too.
fn alarms(t: &Template) -> Vec<(String, String)> {
    t.of_type("AWS::CloudWatch::Alarm")
        .into_iter()
        .map(|id| {
            let alarm = t.resource_yaml(&id).unwrap();
            for actions in ["AlarmActions", "OKActions"] {
                let action = get(alarm, &["Properties", actions])
                    .unwrap_or_else(|| panic!("{id} has no {actions}"));
                let Value::Tagged(tagged) = action else {
                    panic!("{id}'s {actions} is not conditional on the topic");
                };
                let branches = tagged.value.as_sequence().unwrap();
                assert_eq!(branches[0].as_str(), Some("HasAlarmTopic"), "{id}");
                let topic = branches[1].as_sequence().unwrap();
                assert_eq!(named(&topic[0]).as_deref(), Some("AlarmTopicArn"), "{id}");
            }
            let metric = get(alarm, &["Properties", "MetricName"])
                .and_then(Value::as_str)
                .unwrap()
                .to_owned();
            let dimension = get(alarm, &["Properties", "Dimensions"])
                .and_then(Value::as_sequence)
                .and_then(|d| d.first())
                .and_then(|d| d.as_mapping())
                .and_then(|d| get(d, &["Value"]))
                .and_then(named)
                .unwrap_or_else(|| panic!("{id} names no resource"));
            (metric, dimension)
        })
        .collect()
}

#[test]
fn every_function_has_alarms_on_its_errors_and_throttles_and_a_log_group_with_retention() {
    let t = template();
    let alarms = alarms(&t);
    let log_groups: Vec<String> = t
        .of_type("AWS::Logs::LogGroup")
        .iter()
        .filter(|id| {
            let group = t.resource_yaml(id).unwrap();
            get(group, &["Properties", "RetentionInDays"]).and_then(named)
                == Some("LogRetentionDays".into())
        })
        .filter_map(|id| {
            named(get(
                t.resource_yaml(id).unwrap(),
                &["Properties", "LogGroupName"],
            )?)
        })
        .collect();
    for function in t.functions() {
        for metric in ["Errors", "Throttles"] {
            assert!(
                alarms.contains(&(metric.to_owned(), function.clone())),
                "no {metric} alarm for {function}"
            );
        }
        assert!(
            log_groups.contains(&function),
            "{function} has no /aws/lambda log group with LogRetentionDays"
        );
    }
}

#[test]
fn every_queue_is_alarmed_on_its_oldest_message_and_every_dead_letter_queue_on_its_depth() {
    let t = template();
    let alarms = alarms(&t);
    let queues = t.of_type("AWS::SQS::Queue");
    assert!(queues.len() >= 7, "{queues:?}");
    for queue in &queues {
        let q = t.resource_yaml(queue).unwrap();
        let is_dead_letter_queue = get(q, &["Properties", "RedrivePolicy"]).is_none();
        let metric = if is_dead_letter_queue {
            "ApproximateNumberOfMessagesVisible"
        } else {
            "ApproximateAgeOfOldestMessage"
        };
        assert!(
            alarms.contains(&(metric.to_owned(), queue.clone())),
            "no {metric} alarm on {queue}"
        );
    }
}

#[test]
fn the_table_and_the_admin_secret_outlive_the_stack() {
    let t = template();
    for id in ["Table", "AdminTokenSecret"] {
        let r = t.resource_yaml(id).unwrap();
        for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
            assert_eq!(
                get(r, &[policy]).and_then(Value::as_str),
                Some("Retain"),
                "{id} {policy}"
            );
        }
    }
    let table = t.resource_yaml("Table").unwrap();
    assert_eq!(
        get(table, &["Properties", "DeletionProtectionEnabled"]).and_then(Value::as_bool),
        Some(true)
    );
}

#[test]
fn every_eventbridge_delivery_has_a_retry_policy_and_a_dead_letter_queue() {
    let t = template();
    let mut deliveries = 0;
    for rule in t.of_type("AWS::Events::Rule") {
        let targets = get(t.resource_yaml(&rule).unwrap(), &["Properties", "Targets"])
            .and_then(Value::as_sequence)
            .unwrap();
        for target in targets {
            let target = target.as_mapping().unwrap();
            assert!(get(target, &["RetryPolicy"]).is_some(), "{rule}");
            assert!(
                get(target, &["DeadLetterConfig", "Arn"]).is_some(),
                "{rule}"
            );
            deliveries += 1;
        }
    }
    for function in t.functions() {
        let f = t.resource_yaml(&function).unwrap();
        let Some(events) = get(f, &["Properties", "Events"]).and_then(Value::as_mapping) else {
            continue;
        };
        for event in events.values().filter_map(Value::as_mapping) {
            if get(event, &["Type"]).and_then(Value::as_str) != Some("Schedule") {
                continue;
            }
            assert!(
                get(event, &["Properties", "RetryPolicy"]).is_some(),
                "{function}"
            );
            assert!(
                get(event, &["Properties", "DeadLetterConfig", "Arn"]).is_some(),
                "{function}"
            );
            assert!(
                get(
                    f,
                    &[
                        "Properties",
                        "EventInvokeConfig",
                        "DestinationConfig",
                        "OnFailure"
                    ]
                )
                .is_some(),
                "{function}: a failed scheduled invocation goes nowhere"
            );
            deliveries += 1;
        }
    }
    assert!(deliveries >= 4, "{deliveries}");
}
