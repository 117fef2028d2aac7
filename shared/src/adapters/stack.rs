//! The stateful resources of `template.yaml` — the table, the queues with
//! their dead-letter queues and redrive, the event bus, the rule that routes
//! `ShardCompleted` to the aggregate queue, the admin token secret — created
//! on any AWS endpoint (moto, LocalStack, an account) from the template
//! itself, so that tests and `tms serve --backend aws --create-resources`
//! use the deployed definitions, not a copy of them.
//!
//! Only the intrinsics the template uses are understood (`!Ref`, `!Sub`,
//! `!GetAtt`, `!If`, `!Equals`, `!Not`); functions, the HTTP API and queue
//! policies are left to CloudFormation.

use crate::adapters::aws::AwsResources;
use crate::adapters::dynamo::TableSpec;
use crate::error::{Error, Result};
use aws_config::SdkConfig;
use serde_yaml_ng::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The resource types this module creates, in no particular order.
const CREATED: [&str; 5] = [
    "AWS::DynamoDB::Table",
    "AWS::SQS::Queue",
    "AWS::Events::EventBus",
    "AWS::Events::Rule",
    "AWS::SecretsManager::Secret",
];

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("template.yaml: {what}"))
}

/// An AWS failure while creating or finding resources, with its whole cause
/// chain (an SDK error's own message is only "service error").
fn aws(e: impl std::error::Error) -> Error {
    Error::Internal(format!(
        "creating the stack's resources: {}",
        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
    ))
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    root: Mapping,
}

fn tag_name(tagged: &serde_yaml_ng::value::TaggedValue) -> String {
    tagged.tag.to_string().trim_start_matches('!').to_owned()
}

fn get<'a>(map: &'a Mapping, key: &str) -> Option<&'a Value> {
    map.get(Value::String(key.to_owned()))
}

impl Template {
    pub fn parse(yaml: &str) -> Result<Template> {
        match serde_yaml_ng::from_str::<Value>(yaml).map_err(invalid)? {
            Value::Mapping(root) => Ok(Template { root }),
            _ => Err(invalid("not a mapping")),
        }
    }

    /// The template compiled into this binary.
    pub fn builtin() -> Result<Template> {
        Self::parse(crate::adapters::dynamo::table::TEMPLATE)
    }

    fn section(&self, name: &str) -> Option<&Mapping> {
        get(&self.root, name).and_then(Value::as_mapping)
    }

    /// `(logical id, resource)` pairs.
    fn resources(&self) -> impl Iterator<Item = (&str, &Mapping)> {
        self.section("Resources")
            .into_iter()
            .flat_map(|m| m.iter())
            .filter_map(|(k, v)| Some((k.as_str()?, v.as_mapping()?)))
    }

    fn resource(&self, id: &str) -> Result<&Mapping> {
        self.resources()
            .find(|(k, _)| *k == id)
            .map(|(_, r)| r)
            .ok_or_else(|| invalid(format!("no resource {id}")))
    }

    fn kind(resource: &Mapping) -> &str {
        get(resource, "Type").and_then(Value::as_str).unwrap_or("")
    }

    /// Logical ids of the functions, in template order.
    pub fn functions(&self) -> Vec<String> {
        self.of_type("AWS::Serverless::Function")
    }

    /// Logical ids of the resources of one type, in template order.
    pub fn of_type(&self, kind: &str) -> Vec<String> {
        self.resources()
            .filter(|(_, r)| Self::kind(r) == kind)
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// A resource as written (intrinsics are tagged values: `!Ref X`), for
    /// checks of the template itself.
    pub fn resource_yaml(&self, id: &str) -> Result<&Mapping> {
        self.resource(id)
    }

    /// The binary a function runs (`Metadata.BuildProperties.Binary`).
    pub fn function_binary(&self, id: &str) -> Option<String> {
        let metadata = get(self.resource(id).ok()?, "Metadata")?.as_mapping()?;
        let build = get(metadata, "BuildProperties")?.as_mapping()?;
        Some(get(build, "Binary")?.as_str()?.to_owned())
    }

    /// The `(method, path)` of each of a function's HttpApi events.
    pub fn http_routes(&self, id: &str) -> Vec<(String, String)> {
        let events = self
            .resource(id)
            .ok()
            .and_then(|r| get(r, "Properties"))
            .and_then(Value::as_mapping)
            .and_then(|p| get(p, "Events"))
            .and_then(Value::as_mapping);
        events
            .into_iter()
            .flat_map(|e| e.values())
            .filter_map(Value::as_mapping)
            .filter(|e| get(e, "Type").and_then(Value::as_str) == Some("HttpApi"))
            .filter_map(|e| {
                let p = get(e, "Properties")?.as_mapping()?;
                Some((
                    get(p, "Method")?.as_str()?.to_owned(),
                    get(p, "Path")?.as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

/// What was created: parameter values, and each resource's `Ref` and attributes.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    parameters: HashMap<String, String>,
    conditions: HashMap<String, bool>,
    refs: HashMap<String, String>,
    attributes: HashMap<(String, String), String>,
    region: String,
}

/// Names a value refers to (`!Ref`, `!GetAtt`, `${...}` in `!Sub`).
fn references(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Tagged(t) => {
            match (tag_name(t).as_str(), &t.value) {
                ("Ref", Value::String(name)) => {
                    out.insert(name.clone());
                }
                ("GetAtt", Value::String(path)) => {
                    out.insert(path.split('.').next().unwrap_or("").to_owned());
                }
                ("GetAtt", Value::Sequence(parts)) => {
                    if let Some(name) = parts.first().and_then(Value::as_str) {
                        out.insert(name.to_owned());
                    }
                }
                ("Sub", Value::String(text)) => {
                    for part in text.split("${").skip(1) {
                        let name = part.split('}').next().unwrap_or("");
                        out.insert(name.split('.').next().unwrap_or("").to_owned());
                    }
                }
                _ => {}
            }
            references(&t.value, out);
        }
        Value::Sequence(items) => items.iter().for_each(|v| references(v, out)),
        Value::Mapping(map) => map.values().for_each(|v| references(v, out)),
        _ => {}
    }
}

impl Stack {
    fn pseudo(&self, name: &str) -> Option<String> {
        Some(match name {
            "AWS::Region" => self.region.clone(),
            "AWS::AccountId" => "123456789012".to_owned(),
            "AWS::URLSuffix" => "amazonaws.com".to_owned(),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::StackName" => format!("tms-{}", self.parameters.get("Stage")?),
            _ => return None,
        })
    }

    fn reference(&self, name: &str) -> Result<String> {
        self.parameters
            .get(name)
            .or_else(|| self.refs.get(name))
            .cloned()
            .or_else(|| self.pseudo(name))
            .ok_or_else(|| {
                invalid(format!(
                    "!Ref {name}: not a parameter or a created resource"
                ))
            })
    }

    fn attribute(&self, resource: &str, attribute: &str) -> Result<String> {
        self.attributes
            .get(&(resource.to_owned(), attribute.to_owned()))
            .cloned()
            .ok_or_else(|| invalid(format!("!GetAtt {resource}.{attribute}: unknown")))
    }

    fn substitute(&self, text: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| invalid(format!("unclosed ${{ in {text:?}")))?;
            let name = &after[..end];
            out.push_str(&match name.split_once('.') {
                Some((resource, attribute)) if !name.starts_with("AWS::") => {
                    self.attribute(resource, attribute)?
                }
                _ => self.reference(name)?,
            });
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn condition(&self, name: &str) -> Result<bool> {
        self.conditions
            .get(name)
            .copied()
            .ok_or_else(|| invalid(format!("unknown condition {name}")))
    }

    /// Evaluates a template value to plain JSON.
    pub fn resolve(&self, value: &Value) -> Result<serde_json::Value> {
        use serde_json::Value as J;
        Ok(match value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(n) => serde_json::to_value(n).map_err(invalid)?,
            Value::String(s) => J::String(s.clone()),
            Value::Sequence(items) => J::Array(
                items
                    .iter()
                    .map(|v| self.resolve(v))
                    .collect::<Result<_>>()?,
            ),
            Value::Mapping(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    let key = k.as_str().ok_or_else(|| invalid("a non-string key"))?;
                    out.insert(key.to_owned(), self.resolve(v)?);
                }
                J::Object(out)
            }
            Value::Tagged(t) => match (tag_name(t).as_str(), &t.value) {
                ("Ref", Value::String(name)) => J::String(self.reference(name)?),
                ("GetAtt", Value::String(path)) => {
                    let (resource, attribute) = path
                        .split_once('.')
                        .ok_or_else(|| invalid(format!("!GetAtt {path}")))?;
                    J::String(self.attribute(resource, attribute)?)
                }
                ("GetAtt", Value::Sequence(parts)) if parts.len() == 2 => {
                    J::String(self.attribute(
                        parts[0].as_str().unwrap_or(""),
                        parts[1].as_str().unwrap_or(""),
                    )?)
                }
                ("Sub", Value::String(text)) => J::String(self.substitute(text)?),
                ("If", Value::Sequence(parts)) if parts.len() == 3 => {
                    let name = parts[0]
                        .as_str()
                        .ok_or_else(|| invalid("!If without a condition name"))?;
                    self.resolve(&parts[if self.condition(name)? { 1 } else { 2 }])?
                }
                ("Equals", Value::Sequence(parts)) if parts.len() == 2 => {
                    J::Bool(self.resolve(&parts[0])? == self.resolve(&parts[1])?)
                }
                ("Not", Value::Sequence(parts)) if parts.len() == 1 => {
                    J::Bool(!self.resolve(&parts[0])?.as_bool().unwrap_or(false))
                }
                (tag, _) => return Err(invalid(format!("unsupported intrinsic !{tag}"))),
            },
        })
    }

    fn resolve_str(&self, value: &Value) -> Result<String> {
        Ok(match self.resolve(value)? {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
    }

    /// The environment a function gets: the template's globals, then its own.
    pub fn function_env(
        &self,
        template: &Template,
        function: &str,
    ) -> Result<BTreeMap<String, String>> {
        let variables = |node: Option<&Mapping>| -> Option<Mapping> {
            let env = get(node?, "Environment")?.as_mapping()?;
            get(env, "Variables")?.as_mapping().cloned()
        };
        let globals = template
            .section("Globals")
            .and_then(|g| get(g, "Function"))
            .and_then(Value::as_mapping);
        let properties =
            get(template.resource(function)?, "Properties").and_then(Value::as_mapping);
        let mut env = BTreeMap::new();
        for vars in [variables(globals), variables(properties)]
            .into_iter()
            .flatten()
        {
            for (k, v) in &vars {
                let key = k
                    .as_str()
                    .ok_or_else(|| invalid("a non-string variable name"))?;
                env.insert(key.to_owned(), self.resolve_str(v)?);
            }
        }
        Ok(env)
    }

    /// A function's `Properties.<name>` (its `Policies`, say) evaluated to
    /// plain JSON; `Null` when the function does not set it.
    pub fn function_property(
        &self,
        template: &Template,
        function: &str,
        name: &str,
    ) -> Result<serde_json::Value> {
        let properties =
            get(template.resource(function)?, "Properties").and_then(Value::as_mapping);
        match properties.and_then(|p| get(p, name)) {
            Some(value) => self.resolve(value),
            None => Ok(serde_json::Value::Null),
        }
    }

    /// The `Ref` of a created resource (a table name, a queue URL, a bus name).
    pub fn physical(&self, logical_id: &str) -> Option<&str> {
        self.refs.get(logical_id).map(String::as_str)
    }

    /// An attribute of a created resource (`Arn`, `QueueName`).
    pub fn get_att(&self, logical_id: &str, attribute: &str) -> Option<&str> {
        self.attributes
            .get(&(logical_id.to_owned(), attribute.to_owned()))
            .map(String::as_str)
    }

    /// Where the orchestrator's resources are, as the functions' globals name them.
    pub fn aws_resources(&self) -> Result<AwsResources> {
        let need = |id: &str| {
            self.physical(id)
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("{id} was not created")))
        };
        let stage = self
            .parameters
            .get("Stage")
            .ok_or_else(|| invalid("the template has no Stage parameter"))?;
        Ok(AwsResources {
            table: need("Table")?,
            schedule_queue_url: need("ScheduleQueue")?,
            dispatch_queue_url: need("DispatchQueue")?,
            event_bus: need("EventBus")?,
            secret_prefix: crate::adapters::SecretsManagerSecrets::stage_prefix(stage),
        })
    }
}

/// Creates (or finds) the template's stateful resources with the given
/// parameters; the defaults fill the rest. Existing resources are kept, so
/// running it again is harmless.
pub async fn create(
    template: &Template,
    parameters: &[(&str, &str)],
    sdk: &SdkConfig,
) -> Result<Stack> {
    provision(template, parameters, sdk, true).await
}

/// Finds the template's stateful resources (deployed by `sam deploy` or
/// by [`create`]); a missing one is an error that names it.
pub async fn find(
    template: &Template,
    parameters: &[(&str, &str)],
    sdk: &SdkConfig,
) -> Result<Stack> {
    provision(template, parameters, sdk, false).await
}

async fn provision(
    template: &Template,
    parameters: &[(&str, &str)],
    sdk: &SdkConfig,
    create_missing: bool,
) -> Result<Stack> {
    let mut stack = Stack {
        region: sdk
            .region()
            .map_or("us-east-1".to_owned(), |r| r.to_string()),
        ..Stack::default()
    };
    for (name, spec) in template
        .section("Parameters")
        .into_iter()
        .flat_map(|m| m.iter())
    {
        let name = name
            .as_str()
            .ok_or_else(|| invalid("a non-string parameter name"))?;
        let given = parameters
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string());
        let default = spec
            .as_mapping()
            .and_then(|m| get(m, "Default"))
            .map(|d| stack.resolve_str(d))
            .transpose()?;
        let value = given
            .or(default)
            .ok_or_else(|| invalid(format!("parameter {name} has no value")))?;
        stack.parameters.insert(name.to_owned(), value);
    }
    for (name, expression) in template
        .section("Conditions")
        .into_iter()
        .flat_map(|m| m.iter())
    {
        let name = name
            .as_str()
            .ok_or_else(|| invalid("a non-string condition name"))?;
        let value = stack.resolve(expression)?.as_bool().unwrap_or(false);
        stack.conditions.insert(name.to_owned(), value);
    }

    let mut todo: Vec<(&str, &Mapping)> = template
        .resources()
        .filter(|(_, r)| CREATED.contains(&Template::kind(r)))
        .collect();
    let creatable: BTreeSet<String> = todo.iter().map(|(id, _)| id.to_string()).collect();
    while !todo.is_empty() {
        let ready = todo.iter().position(|(id, r)| {
            let mut deps = BTreeSet::new();
            references(&Value::Mapping((*r).clone()), &mut deps);
            deps.iter()
                .all(|d| d == id || !creatable.contains(d) || stack.refs.contains_key(d))
        });
        let Some(index) = ready else {
            return Err(invalid("resources that refer to each other in a cycle"));
        };
        let (id, resource) = todo.remove(index);
        if let Some(condition) = get(resource, "Condition").and_then(Value::as_str) {
            if !stack.condition(condition)? {
                continue;
            }
        }
        create_one(&mut stack, id, resource, sdk, create_missing).await?;
    }
    Ok(stack)
}

async fn create_one(
    stack: &mut Stack,
    id: &str,
    resource: &Mapping,
    sdk: &SdkConfig,
    create_missing: bool,
) -> Result<()> {
    let missing = |name: &str| {
        Error::Internal(format!(
            "{id} ({name}) does not exist; deploy the stack, or start with --create-resources"
        ))
    };
    let empty = Mapping::new();
    let props = get(resource, "Properties")
        .and_then(Value::as_mapping)
        .unwrap_or(&empty);
    let prop = |name: &str| -> Result<Option<String>> {
        get(props, name).map(|v| stack.resolve_str(v)).transpose()
    };
    let name = |key: &str| -> Result<String> {
        Ok(prop(key)?.unwrap_or_else(|| {
            format!(
                "{}-{id}",
                stack.pseudo("AWS::StackName").unwrap_or_default()
            )
        }))
    };
    let (reference, attributes): (String, Vec<(&str, String)>) = match Template::kind(resource) {
        "AWS::DynamoDB::Table" => {
            let table = name("TableName")?;
            let client = crate::adapters::dynamo::retry::client(sdk);
            let exists = client
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .is_ok();
            if !exists && !create_missing {
                return Err(missing(&table));
            }
            if !exists {
                let spec: TableSpec =
                    serde_yaml_ng::from_value(Value::Mapping(props.clone())).map_err(invalid)?;
                spec.create(&client, &table).await?;
            }
            let described = client
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .map_err(aws)?;
            let arn = described
                .table()
                .and_then(|t| t.table_arn())
                .unwrap_or_default()
                .to_owned();
            (table, vec![("Arn", arn)])
        }
        "AWS::SQS::Queue" => {
            let queue = name("QueueName")?;
            let client = aws_sdk_sqs::Client::new(sdk);
            if !create_missing
                && client
                    .get_queue_url()
                    .queue_name(&queue)
                    .send()
                    .await
                    .is_err()
            {
                return Err(missing(&queue));
            }
            let mut request = client.create_queue().queue_name(&queue);
            for (key, value) in props {
                let key = key.as_str().unwrap_or("");
                if key == "QueueName" {
                    continue;
                }
                // SQS attributes are strings; the redrive policy is JSON.
                let value = match stack.resolve(value)? {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                request =
                    request.attributes(aws_sdk_sqs::types::QueueAttributeName::from(key), value);
            }
            let url = request
                .send()
                .await
                .map_err(aws)?
                .queue_url
                .unwrap_or_default();
            let arn = client
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(aws)?
                .attributes
                .and_then(|mut a| a.remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
                .unwrap_or_default();
            (url, vec![("Arn", arn), ("QueueName", queue)])
        }
        "AWS::Events::EventBus" => {
            let bus = name("Name")?;
            let client = aws_sdk_eventbridge::Client::new(sdk);
            if client.describe_event_bus().name(&bus).send().await.is_err() {
                client
                    .create_event_bus()
                    .name(&bus)
                    .send()
                    .await
                    .map_err(aws)?;
            }
            let arn = client
                .describe_event_bus()
                .name(&bus)
                .send()
                .await
                .map_err(aws)?
                .arn
                .unwrap_or_default();
            (bus.clone(), vec![("Arn", arn), ("Name", bus)])
        }
        "AWS::Events::Rule" => {
            let rule = name("Name")?;
            let bus = prop("EventBusName")?.unwrap_or_else(|| "default".to_owned());
            let pattern = get(props, "EventPattern")
                .map(|p| stack.resolve(p))
                .transpose()?
                .ok_or_else(|| invalid(format!("{id} has no EventPattern")))?;
            let client = aws_sdk_eventbridge::Client::new(sdk);
            if !create_missing {
                let found = client
                    .describe_rule()
                    .name(&rule)
                    .event_bus_name(&bus)
                    .send()
                    .await;
                let arn = found.map_err(|_| missing(&rule))?.arn.unwrap_or_default();
                stack.refs.insert(id.to_owned(), rule);
                stack
                    .attributes
                    .insert((id.to_owned(), "Arn".to_owned()), arn);
                return Ok(());
            }
            let arn = client
                .put_rule()
                .name(&rule)
                .event_bus_name(&bus)
                .event_pattern(pattern.to_string())
                .set_description(prop("Description")?)
                .send()
                .await
                .map_err(aws)?
                .rule_arn
                .unwrap_or_default();
            let targets = match get(props, "Targets")
                .map(|t| stack.resolve(t))
                .transpose()?
            {
                Some(serde_json::Value::Array(targets)) => targets,
                _ => vec![],
            };
            for t in targets {
                let field = |k: &str| {
                    t.get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                let target = aws_sdk_eventbridge::types::Target::builder()
                    .id(field("Id"))
                    .arn(field("Arn"))
                    .build()
                    .map_err(aws)?;
                client
                    .put_targets()
                    .rule(&rule)
                    .event_bus_name(&bus)
                    .targets(target)
                    .send()
                    .await
                    .map_err(aws)?;
            }
            (rule, vec![("Arn", arn)])
        }
        "AWS::SecretsManager::Secret" => {
            let secret = name("Name")?;
            let client = aws_sdk_secretsmanager::Client::new(sdk);
            let arn = match client.describe_secret().secret_id(&secret).send().await {
                Ok(found) => found.arn.unwrap_or_default(),
                Err(_) if !create_missing => return Err(missing(&secret)),
                Err(_) => client
                    .create_secret()
                    .name(&secret)
                    .set_description(prop("Description")?)
                    .secret_string(generated_secret())
                    .send()
                    .await
                    .map_err(aws)?
                    .arn
                    .unwrap_or_default(),
            };
            (arn.clone(), vec![("Id", arn)])
        }
        other => return Err(invalid(format!("cannot create a {other}"))),
    };
    for (attribute, value) in attributes {
        stack
            .attributes
            .insert((id.to_owned(), attribute.to_owned()), value);
    }
    stack.refs.insert(id.to_owned(), reference);
    Ok(())
}

/// 48 alphanumeric characters, as the template's `GenerateSecretString` asks.
fn generated_secret() -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect()
}
