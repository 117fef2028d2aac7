//! CloudWatch Embedded Metric Format: metrics as log lines, which
//! CloudWatch turns into metrics without any API call from the function.
//!
//! The use cases announce a finished execution as a tracing event with the
//! target [`tms::usecases::METRICS_TARGET`]; [`EmfLayer`] turns each such
//! event into one EMF line on stdout (queue wait, run duration, shards,
//! passed and failed tests; by suite and overall). [`cold_start`] is the
//! line a function writes once when its container starts.

use serde_json::{json, Map, Value};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// The CloudWatch namespace of every TMS metric.
pub const NAMESPACE: &str = "TMS";

/// The metrics of a finished execution: (event field, metric name, unit).
const EXECUTION_METRICS: [(&str, &str, &str); 7] = [
    ("queue_wait_ms", "QueueWait", "Milliseconds"),
    ("run_ms", "RunDuration", "Milliseconds"),
    ("shards", "Shards", "Count"),
    ("tests_passed", "TestsPassed", "Count"),
    ("tests_failed", "TestsFailed", "Count"),
    ("passed", "ExecutionsPassed", "Count"),
    ("not_passed", "ExecutionsNotPassed", "Count"),
];

/// One EMF document: `values` (metric name to number) plus `properties`
/// (dimension values and context), declared under `dimensions`.
fn document(
    timestamp_ms: i64,
    dimensions: &[&[&str]],
    metrics: &[(&str, &str)],
    values: Map<String, Value>,
) -> String {
    let mut doc = values;
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": dimensions,
                "Metrics": metrics.iter().map(|(name, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
            }],
        }),
    );
    Value::Object(doc).to_string()
}

/// The line for a finished execution, from the fields of its event:
/// metrics by suite and overall, the status as a property.
pub fn execution_finished(timestamp_ms: i64, fields: &Map<String, Value>) -> String {
    let mut values = Map::new();
    let mut metrics = Vec::new();
    for (field, name, unit) in EXECUTION_METRICS {
        if let Some(v) = fields.get(field).filter(|v| v.is_number()) {
            values.insert(name.into(), v.clone());
            metrics.push((name, unit));
        }
    }
    let suite = fields
        .get("suite")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    values.insert("Suite".into(), json!(suite));
    for (field, property) in [("status", "Status"), ("execution_id", "ExecutionId")] {
        if let Some(v) = fields.get(field) {
            values.insert(property.into(), v.clone());
        }
    }
    document(timestamp_ms, &[&["Suite"], &[]], &metrics, values)
}

/// The line a function writes when its container starts.
pub fn cold_start(timestamp_ms: i64, function: &str) -> String {
    let mut values = Map::new();
    values.insert("ColdStart".into(), json!(1));
    values.insert("FunctionName".into(), json!(function));
    document(
        timestamp_ms,
        &[&["FunctionName"]],
        &[("ColdStart", "Count")],
        values,
    )
}

/// Collects an event's fields as JSON.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), json!(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), json!(format!("{value:?}")));
    }
}

/// Writes an EMF line through `sink` for every metrics event.
pub struct EmfLayer<W> {
    sink: W,
}

impl<W: Fn(String) + Send + Sync + 'static> EmfLayer<W> {
    pub fn new(sink: W) -> Self {
        EmfLayer { sink }
    }
}

impl<S, W> Layer<S> for EmfLayer<W>
where
    S: tracing::Subscriber,
    W: Fn(String) + Send + Sync + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != tms::usecases::METRICS_TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (self.sink)(execution_finished(now, &fields.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_finished_execution_event_becomes_one_emf_line() {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(EmfLayer::new(move |l| sink.lock().unwrap().push(l)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "something::else", "not a metric");
            tracing::info!(
                target: tms::usecases::METRICS_TARGET,
                suite = "api",
                status = "failed",
                queue_wait_ms = 1200_i64,
                run_ms = 64000_i64,
                shards = 4_u64,
                tests_passed = 310_u64,
                tests_failed = 2_u64,
                passed = 0_u64,
                not_passed = 1_u64,
                "execution finished"
            );
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1);
        let doc: Value = serde_json::from_str(&lines[0]).unwrap();
        let spec = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(spec["Namespace"], "TMS");
        assert_eq!(spec["Dimensions"], json!([["Suite"], []]));
        // Every declared metric has its value at the top level.
        for m in spec["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(doc[name].is_number(), "{name} has no value");
        }
        assert_eq!(spec["Metrics"].as_array().unwrap().len(), 7);
        assert_eq!(doc["QueueWait"], 1200);
        assert_eq!(doc["Suite"], "api");
        assert_eq!(doc["Status"], "failed");
        assert!(doc["_aws"]["Timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    }

    #[test]
    fn a_cold_start_is_counted_by_function() {
        let doc: Value =
            serde_json::from_str(&cold_start(1_800_000_000_000, "tms-api-runners")).unwrap();
        assert_eq!(doc["ColdStart"], 1);
        assert_eq!(doc["FunctionName"], "tms-api-runners");
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "ColdStart"
        );
    }
}
