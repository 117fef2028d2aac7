//! Counts the AWS requests the adapters make, with an SDK interceptor on
//! every client, and estimates the DynamoDB request units they consume.
//!
//! moto does not report consumed capacity faithfully, so units follow
//! DynamoDB's published rules from the items that cross the wire:
//! - writes: 1 unit per started KB of the item written, plus 1 for every
//!   index entry written (the indexes project keys only, so an entry is
//!   written only when the item enters or leaves the index, 1 unit, or its
//!   index key changes, 2: a delete and a put); all doubled in a transaction;
//! - reads: 1 unit per started 4 KB (half when eventually consistent, as GSI
//!   queries are); a query's items are summed before rounding; a consistent
//!   read or a query costs at least its minimum even when nothing is found.
//!   Item sizes follow DynamoDB's sizing (attribute names plus values).
//!
//! An update's written size is the size of the item last seen under that key
//! (from a put or a read), which is what DynamoDB bills for an update, and
//! its index keys before the update are the ones last seen too.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tms::adapters::AwsClients;

/// What was used since the meter was last reset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Requests per `Service.Operation`.
    pub requests: BTreeMap<String, u64>,
    pub read_units: f64,
    pub write_units: f64,
    /// EventBridge entries put (each is a billed event up to 64 KB).
    pub events: u64,
}

impl Usage {
    pub fn count(&self, prefix: &str) -> u64 {
        self.requests
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    /// `a - b`, for measuring one step of a longer run.
    pub fn minus(&self, earlier: &Usage) -> Usage {
        let mut requests = self.requests.clone();
        for (k, v) in &earlier.requests {
            if let Some(n) = requests.get_mut(k) {
                *n -= v;
            }
        }
        requests.retain(|_, v| *v > 0);
        Usage {
            requests,
            read_units: self.read_units - earlier.read_units,
            write_units: self.write_units - earlier.write_units,
            events: self.events - earlier.events,
        }
    }
}

/// What the meter last saw of an item.
#[derive(Debug, Clone, Default)]
struct Known {
    size: usize,
    /// `gsiNpk`/`gsiNsk` attribute values.
    index_keys: BTreeMap<String, String>,
}

fn index_keys(item: &Map<String, Value>) -> BTreeMap<String, String> {
    item.iter()
        .filter(|(k, _)| k.starts_with("gsi"))
        .filter_map(|(k, v)| Some((k.clone(), v.get("S")?.as_str()?.to_owned())))
        .collect()
}

/// Index entries written when an item's index keys go from `old` to `new`.
fn index_writes(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> usize {
    (1..=6)
        .map(|n| {
            let entry = |keys: &BTreeMap<String, String>| {
                Some((
                    keys.get(&format!("gsi{n}pk"))?.clone(),
                    keys.get(&format!("gsi{n}sk"))?.clone(),
                ))
            };
            match (entry(old), entry(new)) {
                (Some(a), Some(b)) if a == b => 0,
                (Some(_), Some(_)) => 2,
                (None, None) => 0,
                _ => 1,
            }
        })
        .sum()
}

/// Applies an update expression's SET and REMOVE of index keys to `keys`.
/// A key set from another attribute (`gsi1sk = pending1`) gets a value that
/// counts as changed.
fn apply_update(keys: &mut BTreeMap<String, String>, body: &Map<String, Value>) {
    let expression = body
        .get("UpdateExpression")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = |token: &str| -> String {
        body.get("ExpressionAttributeNames")
            .and_then(|n| n.get(token))
            .and_then(Value::as_str)
            .unwrap_or(token)
            .to_owned()
    };
    // Split into clauses by keyword.
    let mut sections: Vec<(&str, String)> = Vec::new();
    for token in expression.split_whitespace() {
        if ["SET", "REMOVE", "ADD", "DELETE"].contains(&token) {
            sections.push((token, String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(token);
            text.push(' ');
        }
    }
    for (keyword, text) in sections {
        for assignment in text.split(',') {
            match keyword {
                "SET" => {
                    let Some((lhs, rhs)) = assignment.split_once('=') else {
                        continue;
                    };
                    let attribute = name(lhs.trim());
                    if !attribute.starts_with("gsi") {
                        continue;
                    }
                    let rhs = rhs.trim();
                    let value = body
                        .get("ExpressionAttributeValues")
                        .and_then(|v| v.get(rhs))
                        .and_then(|v| v.get("S"))
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("<{rhs}>"), str::to_owned);
                    keys.insert(attribute, value);
                }
                "REMOVE" => {
                    keys.remove(&name(assignment.trim()));
                }
                _ => {}
            }
        }
    }
}

#[derive(Default)]
struct State {
    usage: Usage,
    /// Last known size and index keys of each item, by `pk|sk`.
    known: HashMap<String, Known>,
}

/// The interceptor; clone it onto every client.
#[derive(Clone, Default)]
pub struct Meter(Arc<Mutex<State>>);

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meter")
    }
}

impl Meter {
    pub fn usage(&self) -> Usage {
        self.0.lock().unwrap().usage.clone()
    }

    /// Clients for `sdk` that report to this meter.
    pub fn clients(&self, sdk: &aws_config::SdkConfig) -> AwsClients {
        self.clients_with(sdk, Nothing)
    }

    /// Clients that report to this meter and to a second interceptor.
    pub fn clients_with<I: Intercept + Clone + 'static>(
        &self,
        sdk: &aws_config::SdkConfig,
        also: I,
    ) -> AwsClients {
        AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                tms::adapters::dynamo::retry::config(sdk)
                    .interceptor(self.clone())
                    .interceptor(also.clone())
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .interceptor(also.clone())
                    .build(),
            ),
            eventbridge: aws_sdk_eventbridge::Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .interceptor(also.clone())
                    .build(),
            ),
            secrets: aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .interceptor(also)
                    .build(),
            ),
        }
    }
}

/// An interceptor that does nothing, for clients with the meter alone.
#[derive(Debug, Clone)]
struct Nothing;

impl Intercept for Nothing {
    fn name(&self) -> &'static str {
        "nothing"
    }
}

/// DynamoDB's size of one attribute value (in DynamoDB JSON).
fn value_size(v: &Value) -> usize {
    let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match (kind.as_str(), inner) {
        ("S", Value::String(s)) => s.len(),
        ("N", Value::String(n)) => n.trim_start_matches('-').len().div_ceil(2) + 1,
        ("B", Value::String(b)) => b.len() * 3 / 4,
        ("BOOL" | "NULL", _) => 1,
        ("M", Value::Object(m)) => 3 + item_size(m),
        ("L", Value::Array(items)) => 3 + items.iter().map(|i| 1 + value_size(i)).sum::<usize>(),
        ("SS" | "NS" | "BS", Value::Array(items)) => {
            items.iter().map(|i| i.as_str().map_or(0, str::len)).sum()
        }
        _ => 0,
    }
}

/// DynamoDB's size of an item (attribute names plus values).
pub(crate) fn item_size(item: &Map<String, Value>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn key_of(item: &Map<String, Value>) -> String {
    let part = |k: &str| {
        item.get(k)
            .and_then(|v| v.get("S"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    format!("{}|{}", part("pk"), part("sk"))
}

fn write_units(size: usize) -> f64 {
    size.div_ceil(1024).max(1) as f64
}

fn read_units(size: usize, consistent: bool) -> f64 {
    let units = size.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

impl State {
    fn known(&self, key: &Map<String, Value>) -> Known {
        self.known.get(&key_of(key)).cloned().unwrap_or(Known {
            size: 1024,
            index_keys: BTreeMap::new(),
        })
    }

    /// Write units of one write (`Put`, `Update` or `Delete` body).
    fn write(&mut self, kind: &str, body: &Map<String, Value>) -> f64 {
        let empty = Map::new();
        let field = |k: &str| body.get(k).and_then(Value::as_object).unwrap_or(&empty);
        let (key, before, after) = match kind {
            "Put" | "PutItem" => {
                let item = field("Item");
                let after = Known {
                    size: item_size(item),
                    index_keys: index_keys(item),
                };
                (key_of(item), self.known(item), Some(after))
            }
            "Update" | "UpdateItem" => {
                let before = self.known(field("Key"));
                let mut after = before.clone();
                apply_update(&mut after.index_keys, body);
                (key_of(field("Key")), before, Some(after))
            }
            "Delete" | "DeleteItem" => (key_of(field("Key")), self.known(field("Key")), None),
            _ => return 0.0,
        };
        let no_keys = BTreeMap::new();
        let new_keys = after.as_ref().map_or(&no_keys, |a| &a.index_keys);
        let indexes = index_writes(&before.index_keys, new_keys);
        let size = after.as_ref().map_or(before.size, |a| a.size);
        match after {
            Some(a) => self.known.insert(key, a),
            None => self.known.remove(&key),
        };
        write_units(size) + indexes as f64
    }

    fn remember(&mut self, items: &[Value]) -> usize {
        let mut total = 0;
        for item in items.iter().filter_map(Value::as_object) {
            let size = item_size(item);
            let known = Known {
                size,
                index_keys: index_keys(item),
            };
            // A keys-only index read returns keys, not the item: keep what is known.
            if item.contains_key("doc") || !self.known.contains_key(&key_of(item)) {
                self.known.insert(key_of(item), known);
            }
            total += size;
        }
        total
    }

    fn record(&mut self, operation: &str, request: &Value, response: &Value) {
        *self.usage.requests.entry(operation.to_owned()).or_default() += 1;
        let empty = Map::new();
        let body = request.as_object().unwrap_or(&empty);
        let consistent = body
            .get("ConsistentRead")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        match operation {
            "DynamoDB.PutItem" | "DynamoDB.UpdateItem" | "DynamoDB.DeleteItem" => {
                let kind = operation.trim_start_matches("DynamoDB.");
                self.usage.write_units += self.write(kind, body);
            }
            "DynamoDB.TransactWriteItems" => {
                for entry in body
                    .get("TransactItems")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some((kind, op)) = entry.as_object().and_then(|e| e.iter().next()) {
                        let op = op.as_object().cloned().unwrap_or_default();
                        self.usage.write_units += 2.0 * self.write(kind, &op);
                    }
                }
            }
            "DynamoDB.GetItem" => {
                let item = response
                    .get("Item")
                    .cloned()
                    .map(|i| vec![i])
                    .unwrap_or_default();
                let size = self.remember(&item);
                self.usage.read_units += read_units(size, consistent);
            }
            "DynamoDB.BatchGetItem" => {
                let consistent = body
                    .get("RequestItems")
                    .and_then(Value::as_object)
                    .and_then(|t| t.values().next())
                    .and_then(|t| t.get("ConsistentRead"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                for items in response
                    .get("Responses")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|t| t.values())
                    .filter_map(Value::as_array)
                {
                    for item in items {
                        let size = self.remember(std::slice::from_ref(item));
                        self.usage.read_units += read_units(size, consistent);
                    }
                }
            }
            "DynamoDB.Query" => {
                let items = response
                    .get("Items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let size = self.remember(&items);
                let consistent = consistent && body.get("IndexName").is_none();
                self.usage.read_units += read_units(size, consistent);
            }
            "EventBridge.PutEvents" => {
                self.usage.events += body
                    .get("Entries")
                    .and_then(Value::as_array)
                    .map_or(0, |e| e.len() as u64);
            }
            _ => {}
        }
    }
}

/// `Service.Operation` of a request's `x-amz-target` header.
fn operation(target: &str) -> String {
    let (service, op) = target.split_once('.').unwrap_or(("", target));
    let service = match service {
        s if s.starts_with("DynamoDB") => "DynamoDB",
        "AmazonSQS" => "SQS",
        "AWSEvents" => "EventBridge",
        "secretsmanager" => "SecretsManager",
        other => other,
    };
    format!("{service}.{op}")
}

/// The request of the attempt in flight, kept until its response is read.
#[derive(Debug, Clone)]
struct InFlight {
    operation: String,
    body: Value,
}

impl Storable for InFlight {
    type Storer = StoreReplace<Self>;
}

/// A request's `Service.Operation` and its JSON body (`Null` if none).
pub(crate) fn sent(context: &BeforeTransmitInterceptorContextRef<'_>) -> (String, Value) {
    let request = context.request();
    let target = request
        .headers()
        .get("x-amz-target")
        .unwrap_or("unknown.Unknown");
    (operation(target), json_of(request.body().bytes()))
}

fn json_of(bytes: Option<&[u8]>) -> Value {
    bytes
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .unwrap_or(Value::Null)
}

impl Intercept for Meter {
    fn name(&self) -> &'static str {
        "tms-request-meter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (operation, body) = sent(context);
        cfg.interceptor_state()
            .store_put(InFlight { operation, body });
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(sent) = cfg.load::<InFlight>() {
            let response = json_of(context.response().body().bytes());
            self.0
                .lock()
                .unwrap()
                .record(&sent.operation, &sent.body, &response);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_sizes_follow_dynamodbs_rules() {
        let item = json!({"pk": {"S": "RUNNER#1"}, "n": {"N": "12345"}, "ok": {"BOOL": true}});
        assert_eq!(item_size(item.as_object().unwrap()), 2 + 8 + 1 + 4 + 2 + 1);
    }

    #[test]
    fn a_transactional_put_into_two_indexes_costs_twice_three_units() {
        let mut state = State::default();
        let put = json!({"TransactItems": [{"Put": {"Item": {
            "pk": {"S": "EXEC#1"}, "sk": {"S": "META"},
            "gsi1pk": {"S": "PENDING"}, "gsi1sk": {"S": "1"},
            "gsi4pk": {"S": "EXECS"}, "gsi4sk": {"S": "1"}}}}]});
        state.record("DynamoDB.TransactWriteItems", &put, &Value::Null);
        assert_eq!(state.usage.write_units, 6.0);
    }

    #[test]
    fn an_update_that_moves_no_index_key_writes_no_index_entry() {
        let mut state = State::default();
        let put = json!({"Item": {"pk": {"S": "RUNNER#1"}, "sk": {"S": "META"},
            "gsi1pk": {"S": "RUNNERS#active"}, "gsi1sk": {"S": "0001#1"}}});
        state.record("DynamoDB.PutItem", &put, &Value::Null);
        let add = json!({"Key": {"pk": {"S": "RUNNER#1"}, "sk": {"S": "META"}},
            "UpdateExpression": "ADD used_slots :one"});
        state.record("DynamoDB.UpdateItem", &add, &Value::Null);
        assert_eq!(state.usage.write_units, 2.0 + 1.0);
        let beat = json!({"Key": {"pk": {"S": "RUNNER#1"}, "sk": {"S": "META"}},
            "UpdateExpression": "SET #a0 = :a0", "ExpressionAttributeNames": {"#a0": "gsi1sk"},
            "ExpressionAttributeValues": {":a0": {"S": "0002#1"}}});
        state.record("DynamoDB.UpdateItem", &beat, &Value::Null);
        assert_eq!(
            state.usage.write_units,
            3.0 + 1.0 + 2.0,
            "the entry moved: a delete and a put"
        );
    }
}
