//! Least privilege, enforced where the emulator enforces none: every AWS
//! request a function makes in the emulator tests is recorded with the
//! function that made it, turned into the IAM actions and resource ARNs AWS
//! would authorise it as, and held against the statements of that
//! function's role as `template.yaml` writes them (its `Policies`, with the
//! template's intrinsics resolved against the created stack).
//!
//! The mapping from a request to what IAM checks follows AWS's service
//! authorisation reference: a `TransactWriteItems` is authorised per item
//! as `PutItem` / `UpdateItem` / `DeleteItem` / `ConditionCheckItem` on that
//! item's table, a `BatchGetItem` / `BatchWriteItem` once per table, a
//! `Query` on an index against `table/<name>/index/<index>`, SQS batch
//! calls as their single-message actions, `PutEvents` per entry's bus, and
//! Secrets Manager reads against the secret's ARN.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use tms::adapters::stack::{Stack, Template};

/// One request as it left a function's SDK client.
#[derive(Debug, Clone)]
pub struct Call {
    pub function: String,
    /// `Service.Operation`, e.g. `DynamoDB.Query`.
    pub operation: String,
    pub body: Value,
}

/// Every call of every function of one deployment.
#[derive(Debug, Clone, Default)]
pub struct CallLog(Arc<Mutex<Vec<Call>>>);

impl CallLog {
    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    /// An interceptor for the clients of `function`.
    pub fn caller(&self, function: &str) -> Caller {
        Caller {
            function: function.to_owned(),
            log: self.clone(),
        }
    }
}

/// Records the requests of one function's clients.
#[derive(Debug, Clone)]
pub struct Caller {
    function: String,
    log: CallLog,
}

impl Intercept for Caller {
    fn name(&self) -> &'static str {
        "tms-iam-caller"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (operation, body) = crate::meter::sent(context);
        self.log.0.lock().unwrap().push(Call {
            function: self.function.clone(),
            operation,
            body,
        });
        Ok(())
    }
}

/// What IAM authorises: an action on a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub action: String,
    pub resource: String,
}

/// A request its function's role does not allow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Violation {
    pub function: String,
    pub permission: Permission,
    /// The request that needed it.
    pub operation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} needs {} on {}, which its role in template.yaml does not grant",
            self.function, self.operation, self.permission.action, self.permission.resource
        )
    }
}

/// Where ARNs are built: the partition, region and account of the stack.
#[derive(Debug, Clone)]
pub struct ArnBase {
    partition: String,
    region: String,
    account: String,
}

impl ArnBase {
    /// From the created table's ARN (`arn:aws:dynamodb:<region>:<account>:table/<name>`).
    pub fn of(stack: &Stack) -> ArnBase {
        let arn = stack.get_att("Table", "Arn").expect("the table's ARN");
        let parts: Vec<&str> = arn.split(':').collect();
        ArnBase {
            partition: parts[1].to_owned(),
            region: parts[3].to_owned(),
            account: parts[4].to_owned(),
        }
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.partition, self.region, self.account
        )
    }
}

fn str_at<'a>(body: &'a Value, key: &str) -> &'a str {
    body.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The permissions AWS checks for one request.
pub fn required(call: &Call, base: &ArnBase) -> Vec<Permission> {
    let (service, op) = call
        .operation
        .split_once('.')
        .unwrap_or(("", &call.operation));
    let permission = |action: String, resource: String| Permission { action, resource };
    let table = |name: &str| base.arn("dynamodb", &format!("table/{name}"));
    let body = &call.body;
    match service {
        "DynamoDB" => match op {
            "TransactWriteItems" | "TransactGetItems" => body
                .get("TransactItems")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|entry| entry.iter())
                .map(|(kind, item)| {
                    let action = match kind.as_str() {
                        "Put" => "PutItem",
                        "Update" => "UpdateItem",
                        "Delete" => "DeleteItem",
                        "ConditionCheck" => "ConditionCheckItem",
                        "Get" => "GetItem",
                        other => other,
                    };
                    permission(
                        format!("dynamodb:{action}"),
                        table(str_at(item, "TableName")),
                    )
                })
                .collect(),
            "BatchGetItem" | "BatchWriteItem" => body
                .get("RequestItems")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|items| items.keys())
                .map(|name| permission(format!("dynamodb:{op}"), table(name)))
                .collect(),
            _ => {
                let mut resource = table(str_at(body, "TableName"));
                if let Some(index) = body.get("IndexName").and_then(Value::as_str) {
                    resource = format!("{resource}/index/{index}");
                }
                vec![permission(format!("dynamodb:{op}"), resource)]
            }
        },
        "SQS" => {
            let action = op.trim_end_matches("Batch");
            let queue = str_at(body, "QueueUrl").rsplit('/').next().unwrap_or("");
            vec![permission(format!("sqs:{action}"), base.arn("sqs", queue))]
        }
        "EventBridge" => {
            let buses: BTreeSet<String> = body
                .get("Entries")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|e| {
                    let bus = e
                        .get("EventBusName")
                        .and_then(Value::as_str)
                        .unwrap_or("default");
                    if bus.starts_with("arn:") {
                        bus.to_owned()
                    } else {
                        base.arn("events", &format!("event-bus/{bus}"))
                    }
                })
                .collect();
            buses
                .into_iter()
                .map(|bus| permission(format!("events:{op}"), bus))
                .collect()
        }
        "SecretsManager" => {
            let id = str_at(body, "SecretId");
            let resource = if id.starts_with("arn:") {
                id.to_owned()
            } else {
                base.arn("secretsmanager", &format!("secret:{id}"))
            };
            vec![permission(format!("secretsmanager:{op}"), resource)]
        }
        // Anything else must be granted on everything to pass.
        other => vec![permission(
            format!("{}:{op}", other.to_ascii_lowercase()),
            "*".into(),
        )],
    }
}

/// One `Allow` statement of a role.
#[derive(Debug, Clone)]
pub struct Statement {
    actions: Vec<String>,
    resources: Vec<String>,
}

impl Statement {
    fn allows(&self, p: &Permission) -> bool {
        self.actions
            .iter()
            .any(|a| wildcard(&a.to_ascii_lowercase(), &p.action.to_ascii_lowercase()))
            && self.resources.iter().any(|r| wildcard(r, &p.resource))
    }

    /// Whether the statement grants `action` on anything.
    fn grants_action(&self, action: &str) -> bool {
        self.actions
            .iter()
            .any(|a| wildcard(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` any one.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The `Allow` statements of each function's role. Only inline statements
/// are understood; anything else (a SAM policy template, a managed policy,
/// `Deny`, `NotAction`, a `Condition`) is refused so that the check never
/// passes by not understanding a policy.
pub fn roles(template: &Template, stack: &Stack) -> Result<Vec<(String, Vec<Statement>)>, String> {
    let mut out = Vec::new();
    for function in template.functions() {
        let policies = stack
            .function_property(template, &function, "Policies")
            .map_err(|e| format!("{function}: {e}"))?;
        let mut statements = Vec::new();
        for policy in policies.as_array().into_iter().flatten() {
            let listed = match policy.get("Statement") {
                Some(Value::Array(list)) => list.clone(),
                Some(single @ Value::Object(_)) => vec![single.clone()],
                _ => {
                    return Err(format!(
                        "{function}: a policy this check does not read: {policy}"
                    ))
                }
            };
            for s in listed {
                let known = ["Effect", "Action", "Resource", "Sid"];
                if s.get("Effect").and_then(Value::as_str) != Some("Allow")
                    || s.as_object()
                        .is_some_and(|o| o.keys().any(|k| !known.contains(&k.as_str())))
                {
                    return Err(format!(
                        "{function}: a statement this check does not read: {s}"
                    ));
                }
                statements.push(Statement {
                    actions: strings(&s["Action"]),
                    resources: strings(&s["Resource"]),
                });
            }
        }
        out.push((function, statements));
    }
    Ok(out)
}

/// Every recorded request that its function's role does not allow.
pub fn violations(
    template: &Template,
    stack: &Stack,
    calls: &[Call],
) -> Result<BTreeSet<Violation>, String> {
    let roles = roles(template, stack)?;
    let base = ArnBase::of(stack);
    let mut out = BTreeSet::new();
    for call in calls {
        let statements = roles
            .iter()
            .find(|(f, _)| *f == call.function)
            .map(|(_, s)| s.as_slice())
            .ok_or_else(|| format!("{} is not a function of the template", call.function))?;
        for permission in required(call, &base) {
            if !statements.iter().any(|s| s.allows(&permission)) {
                out.insert(Violation {
                    function: call.function.clone(),
                    permission,
                    operation: call.operation.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Actions each function's role grants that none of `calls` needed: grants
/// to review for removal (a run covers only what its tests exercised).
pub fn unused(
    template: &Template,
    stack: &Stack,
    calls: &[Call],
) -> Result<Vec<(String, String)>, String> {
    let roles = roles(template, stack)?;
    let base = ArnBase::of(stack);
    let mut out = Vec::new();
    for (function, statements) in &roles {
        let needed: BTreeSet<String> = calls
            .iter()
            .filter(|c| &c.function == function)
            .flat_map(|c| required(c, &base))
            .map(|p| p.action.to_ascii_lowercase())
            .collect();
        let granted: BTreeSet<&String> = statements.iter().flat_map(|s| &s.actions).collect();
        for action in granted {
            if !needed
                .iter()
                .any(|n| wildcard(&action.to_ascii_lowercase(), n))
                && statements.iter().any(|s| s.grants_action(action))
            {
                out.push((function.clone(), action.clone()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> ArnBase {
        ArnBase {
            partition: "aws".into(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
        }
    }

    fn call(operation: &str, body: Value) -> Call {
        Call {
            function: "F".into(),
            operation: operation.into(),
            body,
        }
    }

    #[test]
    fn iam_wildcards_match_runs_and_single_characters() {
        assert!(wildcard(
            "arn:aws:dynamodb:*:*:table/t/index/*",
            "arn:aws:dynamodb:r:1:table/t/index/gsi1"
        ));
        assert!(!wildcard(
            "arn:aws:dynamodb:r:1:table/t",
            "arn:aws:dynamodb:r:1:table/t/index/gsi1"
        ));
        assert!(wildcard("dynamodb:?etItem", "dynamodb:GetItem"));
        assert!(wildcard("*", ""));
        assert!(!wildcard(
            "secret:tms/dev/dispatch/*",
            "secret:tms/dev/admin"
        ));
    }

    #[test]
    fn a_transaction_needs_each_items_own_action_and_a_query_its_index() {
        let t = call(
            "DynamoDB.TransactWriteItems",
            json!({"TransactItems": [
                {"Update": {"TableName": "t"}}, {"ConditionCheck": {"TableName": "t"}}]}),
        );
        let actions: Vec<String> = required(&t, &base())
            .into_iter()
            .map(|p| p.action)
            .collect();
        assert_eq!(
            actions,
            ["dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"]
        );
        let q = call(
            "DynamoDB.Query",
            json!({"TableName": "t", "IndexName": "gsi1"}),
        );
        assert_eq!(
            required(&q, &base())[0].resource,
            "arn:aws:dynamodb:us-east-1:123456789012:table/t/index/gsi1"
        );
        let batch = call(
            "SQS.SendMessageBatch",
            json!({"QueueUrl": "http://x/123456789012/q"}),
        );
        assert_eq!(
            required(&batch, &base()),
            [Permission {
                action: "sqs:SendMessage".into(),
                resource: "arn:aws:sqs:us-east-1:123456789012:q".into()
            }]
        );
    }
}
