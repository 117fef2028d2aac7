//! DynamoDB as AWS behaves where moto does not: a proxy on 127.0.0.1 in front
//! of the moto server that answers a share of DynamoDB requests the way
//! DynamoDB does under load and contention, and enforces DynamoDB's request
//! limits that moto leaves out.
//!
//! Faults, each answered in DynamoDB's JSON error shape (`__type`,
//! `message`) so the SDK parses them as it parses AWS's:
//! - `ThrottlingException` and `ProvisionedThroughputExceededException`
//!   (400) and `InternalServerError` (500), before the request reaches moto;
//! - `InternalServerError` *after* a `TransactWriteItems` was applied: the
//!   caller cannot tell it succeeded. DynamoDB makes the retry safe with the
//!   transaction's `ClientRequestToken` (a repeat within ten minutes succeeds
//!   without being applied again); the proxy keeps the same promise by
//!   answering a repeated token from what it remembers;
//! - `TransactionCanceledException` with a `TransactionConflict` reason on
//!   one item (another transaction held it), and `TransactionConflictException`
//!   on single-item writes;
//! - `BatchGetItem` `UnprocessedKeys` and `BatchWriteItem` `UnprocessedItems`:
//!   only the first half of the request reaches moto, the rest comes back.
//!
//! Limits, always enforced: an item over 400 KB in a put (alone, batched or
//! transacted; in a transaction DynamoDB cancels it with a `ValidationError`
//! reason), a transaction of more than 100 actions or over 4 MB. The
//! wording of the 4 MB refusal is the proxy's own (a `ValidationException`
//! naming the limit).
//!
//! SQS, EventBridge and Secrets Manager requests pass through unchanged.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// DynamoDB's limit on one item.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's limits on one `TransactWriteItems`.
pub const MAX_TRANSACTION_ACTIONS: usize = 100;
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;

/// Every kind of fault the proxy injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    Throttling,
    ThroughputExceeded,
    InternalError,
    /// A `TransactWriteItems` applied, then answered with a 500.
    InternalErrorAfterCommit,
    TransactionConflict,
    UnprocessedKeys,
    UnprocessedItems,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::Throttling,
        Fault::ThroughputExceeded,
        Fault::InternalError,
        Fault::InternalErrorAfterCommit,
        Fault::TransactionConflict,
        Fault::UnprocessedKeys,
        Fault::UnprocessedItems,
    ];

    /// Whether DynamoDB can answer `operation` with this fault.
    fn applies_to(self, operation: &str) -> bool {
        match self {
            Fault::Throttling | Fault::ThroughputExceeded | Fault::InternalError => true,
            Fault::InternalErrorAfterCommit => operation == "TransactWriteItems",
            Fault::TransactionConflict => matches!(
                operation,
                "TransactWriteItems" | "PutItem" | "UpdateItem" | "DeleteItem"
            ),
            Fault::UnprocessedKeys => operation == "BatchGetItem",
            Fault::UnprocessedItems => operation == "BatchWriteItem",
        }
    }
}

/// What the proxy does: the share of DynamoDB requests that get a fault,
/// and which faults it may pick from.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub rate: f64,
    pub faults: Vec<Fault>,
    pub seed: u64,
}

impl FaultPlan {
    /// `rate` of DynamoDB requests get one of every fault that applies.
    /// The seed comes from `TMS_FAULT_SEED` when set, so a failing run can
    /// be replayed; otherwise it is random and printed.
    pub fn sustained(rate: f64) -> FaultPlan {
        let seed = std::env::var("TMS_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        eprintln!("fault proxy: rate {rate}, seed {seed} (TMS_FAULT_SEED replays it)");
        FaultPlan {
            rate,
            faults: Fault::ALL.to_vec(),
            seed,
        }
    }

    /// No faults: the proxy only enforces DynamoDB's limits.
    pub fn none() -> FaultPlan {
        FaultPlan {
            rate: 0.0,
            faults: Vec::new(),
            seed: 1,
        }
    }

    /// Every request that can get `fault` gets it.
    pub fn always(fault: Fault) -> FaultPlan {
        FaultPlan {
            rate: 1.0,
            faults: vec![fault],
            seed: 1,
        }
    }
}

struct State {
    plan: FaultPlan,
    rng: rand::rngs::StdRng,
    injected: BTreeMap<Fault, u64>,
    /// Successful transactions' answers by `ClientRequestToken`.
    committed: HashMap<String, (StatusCode, Bytes)>,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (moto's URL) on a free port.
    pub async fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        let state = Arc::new(Mutex::new(State {
            rng: rand::rngs::StdRng::seed_from_u64(plan.seed),
            plan,
            injected: BTreeMap::new(),
            committed: HashMap::new(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shared = state.clone();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                let upstream = upstream.clone();
                let client = client.clone();
                async move { handle(&state, &client, &upstream, method, uri, headers, body).await }
            },
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fault proxy");
        });
        FaultProxy { url, state, task }
    }

    /// Changes what the proxy does from the next request on.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.state.lock().unwrap().plan = plan;
    }

    /// How many of each fault were injected so far.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.state.lock().unwrap().injected.clone()
    }

    pub fn total_injected(&self) -> u64 {
        self.injected().values().sum()
    }

    /// Leaves the proxy running until the runtime it was started on ends.
    pub fn keep_running(self) {
        std::mem::forget(self);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A DynamoDB error answer.
fn error(status: StatusCode, kind: &str, message: &str, extra: Map<String, Value>) -> Response {
    let mut body = Map::new();
    body.insert(
        "__type".into(),
        json!(format!("com.amazonaws.dynamodb.v20120810#{kind}")),
    );
    body.insert("message".into(), json!(message));
    body.extend(extra);
    (
        status,
        [(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.0"),
        )],
        Value::Object(body).to_string(),
    )
        .into_response()
}

fn validation(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        message,
        Map::new(),
    )
}

fn item_size(item: &Value) -> usize {
    item.as_object().map_or(0, crate::meter::item_size)
}

/// DynamoDB's refusal of a request over its limits, if it is one.
fn over_limits(operation: &str, body: &Value) -> Option<Response> {
    const TOO_LARGE: &str = "Item size has exceeded the maximum allowed size";
    match operation {
        "PutItem" if item_size(&body["Item"]) > MAX_ITEM_BYTES => Some(validation(TOO_LARGE)),
        "BatchWriteItem" => {
            let puts = body["RequestItems"]
                .as_object()
                .into_iter()
                .flat_map(|tables| tables.values())
                .filter_map(Value::as_array)
                .flatten()
                .map(|request| &request["PutRequest"]["Item"]);
            puts.clone()
                .any(|item| item_size(item) > MAX_ITEM_BYTES)
                .then(|| validation(TOO_LARGE))
        }
        "TransactWriteItems" => {
            let actions = body["TransactItems"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            if actions.len() > MAX_TRANSACTION_ACTIONS {
                return Some(validation(&format!(
                    "1 validation error detected: Value at 'transactItems' failed to satisfy \
                     constraint: Member must have length less than or equal to \
                     {MAX_TRANSACTION_ACTIONS}"
                )));
            }
            let sizes: Vec<usize> = actions
                .iter()
                .map(|a| match a["Put"]["Item"] {
                    Value::Null => a
                        .as_object()
                        .and_then(|o| o.values().next())
                        .map_or(0, |action| item_size(&action["Key"])),
                    ref item => item_size(item),
                })
                .collect();
            if sizes.iter().any(|s| *s > MAX_ITEM_BYTES) {
                // In a transaction the oversized item cancels it.
                let reasons = sizes
                    .iter()
                    .map(|s| {
                        if *s > MAX_ITEM_BYTES {
                            json!({"Code": "ValidationError", "Message": TOO_LARGE})
                        } else {
                            json!({"Code": "None"})
                        }
                    })
                    .collect();
                return Some(cancelled(reasons));
            }
            (sizes.iter().sum::<usize>() > MAX_TRANSACTION_BYTES).then(|| {
                validation("Transaction request cannot exceed 4 MB: the aggregate size of the items is too large")
            })
        }
        _ => None,
    }
}

fn cancelled(reasons: Vec<Value>) -> Response {
    let codes: Vec<&str> = reasons
        .iter()
        .map(|r| r["Code"].as_str().unwrap_or("None"))
        .collect();
    let mut extra = Map::new();
    extra.insert("CancellationReasons".into(), Value::Array(reasons.clone()));
    error(
        StatusCode::BAD_REQUEST,
        "TransactionCanceledException",
        &format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            codes.join(", ")
        ),
        extra,
    )
}

/// Splits a batch request's per-table list (`field` of each table) in two:
/// the body with the first half, and the second half by table.
fn split_batch(body: &Value, field: Option<&str>) -> Option<(Value, Map<String, Value>)> {
    let tables = body["RequestItems"].as_object()?;
    let list = |v: &Value| -> Vec<Value> {
        match field {
            Some(f) => v[f].as_array().cloned().unwrap_or_default(),
            None => v.as_array().cloned().unwrap_or_default(),
        }
    };
    let total: usize = tables.values().map(|v| list(v).len()).sum();
    if total < 2 {
        // DynamoDB answers a batch it can do none of with a throughput error,
        // not with everything unprocessed; a single key is done or refused.
        return None;
    }
    let mut keep = total.div_ceil(2);
    let mut sent = Map::new();
    let mut left = Map::new();
    for (table, v) in tables {
        let items = list(v);
        let here = keep.min(items.len());
        keep -= here;
        let (now, later) = items.split_at(here);
        let with = |part: &[Value]| match field {
            Some(f) => {
                let mut t = v.clone();
                t[f] = Value::Array(part.to_vec());
                t
            }
            None => Value::Array(part.to_vec()),
        };
        if !now.is_empty() {
            sent.insert(table.clone(), with(now));
        }
        if !later.is_empty() {
            left.insert(table.clone(), with(later));
        }
    }
    let mut body = body.clone();
    body["RequestItems"] = Value::Object(sent);
    Some((body, left))
}

async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, Bytes), Response> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = client.request(method.clone(), format!("{upstream}{path}"));
    for (name, value) in headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let bad_gateway = |e: reqwest::Error| (StatusCode::BAD_GATEWAY, e.to_string()).into_response();
    let response = request.body(body).send().await.map_err(bad_gateway)?;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.map_err(bad_gateway)?;
    Ok((status, headers, bytes))
}

fn respond(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    for (name, value) in headers {
        // The body may have been changed: its length and checksum are recomputed.
        if name != "content-length" && name != "x-amz-crc32" && name != "transfer-encoding" {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

async fn handle(
    state: &Mutex<State>,
    client: &reqwest::Client,
    upstream: &str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .and_then(|t| t.strip_prefix("DynamoDB_20120810."))
        .map(str::to_owned);
    let Some(operation) = operation else {
        return match forward(client, upstream, &method, &uri, &headers, body).await {
            Ok((status, h, bytes)) => respond(status, &h, bytes),
            Err(response) => response,
        };
    };
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(refusal) = over_limits(&operation, &json) {
        return refusal;
    }
    let token = json["ClientRequestToken"].as_str().map(str::to_owned);
    let fault = {
        let mut s = state.lock().unwrap();
        if let Some((status, bytes)) = token.as_ref().and_then(|t| s.committed.get(t)) {
            return (
                *status,
                [(
                    "content-type",
                    HeaderValue::from_static("application/x-amz-json-1.0"),
                )],
                bytes.clone(),
            )
                .into_response();
        }
        let applicable: Vec<Fault> = s
            .plan
            .faults
            .iter()
            .copied()
            .filter(|f| f.applies_to(&operation))
            .collect();
        let rate = s.plan.rate;
        let chosen = (!applicable.is_empty() && s.rng.gen_bool(rate))
            .then(|| applicable[s.rng.gen_range(0..applicable.len())]);
        // A batch of one cannot be partly done: it gets no fault.
        let chosen = chosen.filter(|f| match f {
            Fault::UnprocessedKeys => split_batch(&json, Some("Keys")).is_some(),
            Fault::UnprocessedItems => split_batch(&json, None).is_some(),
            _ => true,
        });
        if let Some(f) = chosen {
            *s.injected.entry(f).or_default() += 1;
        }
        chosen
    };
    let internal = || {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Internal server error",
            Map::new(),
        )
    };
    match fault {
        Some(Fault::Throttling) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                "Rate of requests exceeds the allowed throughput.",
                Map::new(),
            )
        }
        Some(Fault::ThroughputExceeded) => {
            return error(
                StatusCode::BAD_REQUEST,
                "ProvisionedThroughputExceededException",
                "The level of configured provisioned throughput for the table was exceeded. \
                 Consider increasing your provisioning level with the UpdateTable API.",
                Map::new(),
            )
        }
        Some(Fault::InternalError) => return internal(),
        Some(Fault::TransactionConflict) if operation == "TransactWriteItems" => {
            let actions = json["TransactItems"].as_array().map_or(0, Vec::len);
            let victim = state.lock().unwrap().rng.gen_range(0..actions.max(1));
            let reasons = (0..actions)
                .map(|i| {
                    if i == victim {
                        json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"})
                    } else {
                        json!({"Code": "None"})
                    }
                })
                .collect();
            return cancelled(reasons);
        }
        Some(Fault::TransactionConflict) => {
            return error(
                StatusCode::BAD_REQUEST,
                "TransactionConflictException",
                "Transaction is ongoing for the item",
                Map::new(),
            )
        }
        Some(Fault::UnprocessedKeys | Fault::UnprocessedItems) => {
            let keys = fault == Some(Fault::UnprocessedKeys);
            let Some((sent, left)) = split_batch(&json, keys.then_some("Keys")) else {
                return internal();
            };
            let body = Bytes::from(sent.to_string());
            let (status, h, bytes) =
                match forward(client, upstream, &method, &uri, &headers, body).await {
                    Ok(answer) => answer,
                    Err(response) => return response,
                };
            if !status.is_success() {
                return respond(status, &h, bytes);
            }
            let mut answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
            let field = if keys {
                "UnprocessedKeys"
            } else {
                "UnprocessedItems"
            };
            answer[field] = Value::Object(left);
            return respond(status, &h, Bytes::from(answer.to_string()));
        }
        Some(Fault::InternalErrorAfterCommit) | None => {}
    }
    let (status, h, bytes) = match forward(client, upstream, &method, &uri, &headers, body).await {
        Ok(answer) => answer,
        Err(response) => return response,
    };
    if operation == "TransactWriteItems" && status.is_success() {
        if let Some(token) = token {
            state
                .lock()
                .unwrap()
                .committed
                .insert(token, (status, bytes.clone()));
        }
        if fault == Some(Fault::InternalErrorAfterCommit) {
            return internal();
        }
    }
    respond(status, &h, bytes)
}
