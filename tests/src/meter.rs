//! Counts the AWS requests the adapters make, with an SDK interceptor on
//! every client, and estimates the DynamoDB request units they consume.
//!
//! moto does not report consumed capacity faithfully, so units follow
//! DynamoDB's published rules from the items that cross the wire:
//! - writes: 1 unit per started KB of the item written, doubled in a
//!   transaction, plus the same again for every GSI the item is in (all
//!   indexes project all attributes);
//! - reads: 1 unit per started 4 KB (half when eventually consistent, as GSI
//!   queries are); a query's items are summed before rounding; a consistent
//!   read or a query costs at least its minimum even when nothing is found.
//!   Item sizes follow DynamoDB's sizing (attribute names plus values).
//!
//! An update's written size is the size of the item last seen under that key
//! (from a put or a read), which is what DynamoDB bills for an update; since
//! every index projects all attributes, an update also rewrites the item in
//! every index it belongs to (or that the update puts it in).

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

#[derive(Default)]
struct State {
    usage: Usage,
    /// Last known size of each item and how many indexes it is in, by `pk|sk`.
    sizes: HashMap<String, (usize, usize)>,
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
        AwsClients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
            eventbridge: aws_sdk_eventbridge::Client::from_conf(
                aws_sdk_eventbridge::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
            secrets: aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(sdk)
                    .interceptor(self.clone())
                    .build(),
            ),
        }
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
        ("SS" | "NS" | "BS", Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or(0, str::len))
            .sum(),
        _ => 0,
    }
}

fn item_size(item: &Map<String, Value>) -> usize {
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

/// How many of the table's indexes an item (or an update expression) touches.
fn indexes_in(text: &str) -> usize {
    (1..=6)
        .filter(|n| text.contains(&format!("gsi{n}pk")))
        .count()
}

impl State {
    fn known(&self, key: &Map<String, Value>) -> (usize, usize) {
        self.sizes.get(&key_of(key)).copied().unwrap_or((1024, 0))
    }

    /// Write units of one write (`Put`, `Update` or `Delete` body).
    fn write(&mut self, kind: &str, body: &Map<String, Value>) -> f64 {
        match kind {
            "Put" | "PutItem" => {
                let item = body.get("Item").and_then(Value::as_object).cloned().unwrap_or_default();
                let size = item_size(&item);
                let indexes = indexes_in(&Value::Object(item.clone()).to_string());
                self.sizes.insert(key_of(&item), (size, indexes));
                write_units(size) * (1 + indexes) as f64
            }
            "Update" | "UpdateItem" => {
                let key = body.get("Key").and_then(Value::as_object).cloned().unwrap_or_default();
                let (size, indexes_before) = self.known(&key);
                let names = body.get("ExpressionAttributeNames").map(Value::to_string).unwrap_or_default();
                let expression = body.get("UpdateExpression").and_then(Value::as_str).unwrap_or("");
                let indexes = indexes_before.max(indexes_in(expression)).max(indexes_in(&names));
                write_units(size) * (1 + indexes) as f64
            }
            "Delete" | "DeleteItem" => {
                let key = body.get("Key").and_then(Value::as_object).cloned().unwrap_or_default();
                let (size, indexes) = self.known(&key);
                write_units(size) * (1 + indexes) as f64
            }
            _ => 0.0,
        }
    }

    fn remember(&mut self, items: &[Value]) -> usize {
        let mut total = 0;
        for item in items.iter().filter_map(Value::as_object) {
            let size = item_size(item);
            let indexes = indexes_in(&Value::Object(item.clone()).to_string());
            self.sizes.insert(key_of(item), (size, indexes));
            total += size;
        }
        total
    }

    fn record(&mut self, operation: &str, request: &Value, response: &Value) {
        *self.usage.requests.entry(operation.to_owned()).or_default() += 1;
        let empty = Map::new();
        let body = request.as_object().unwrap_or(&empty);
        let consistent = body.get("ConsistentRead").and_then(Value::as_bool).unwrap_or(false);
        match operation {
            "DynamoDB.PutItem" | "DynamoDB.UpdateItem" | "DynamoDB.DeleteItem" => {
                let kind = operation.trim_start_matches("DynamoDB.");
                self.usage.write_units += self.write(kind, body);
            }
            "DynamoDB.TransactWriteItems" => {
                for entry in body.get("TransactItems").and_then(Value::as_array).into_iter().flatten() {
                    if let Some((kind, op)) = entry.as_object().and_then(|e| e.iter().next()) {
                        let op = op.as_object().cloned().unwrap_or_default();
                        self.usage.write_units += 2.0 * self.write(kind, &op);
                    }
                }
            }
            "DynamoDB.GetItem" => {
                let item = response.get("Item").cloned().map(|i| vec![i]).unwrap_or_default();
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
                let items = response.get("Items").and_then(Value::as_array).cloned().unwrap_or_default();
                let size = self.remember(&items);
                let consistent = consistent && body.get("IndexName").is_none();
                self.usage.read_units += read_units(size, consistent);
            }
            "EventBridge.PutEvents" => {
                self.usage.events += body.get("Entries").and_then(Value::as_array).map_or(0, |e| e.len() as u64);
            }
            _ => {}
        }
    }
}

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
        let request = context.request();
        let target = request.headers().get("x-amz-target").unwrap_or("unknown.Unknown");
        cfg.interceptor_state().store_put(InFlight {
            operation: operation(target),
            body: json_of(request.body().bytes()),
        });
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
            self.0.lock().unwrap().record(&sent.operation, &sent.body, &response);
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
    fn a_transactional_put_into_two_indexes_costs_six_units_per_kb() {
        let mut state = State::default();
        let put = json!({"TransactItems": [{"Put": {"Item": {
            "pk": {"S": "EXEC#1"}, "sk": {"S": "META"},
            "gsi1pk": {"S": "PENDING"}, "gsi4pk": {"S": "EXECS"}}}}]});
        state.record("DynamoDB.TransactWriteItems", &put, &Value::Null);
        assert_eq!(state.usage.write_units, 6.0);
    }
}
