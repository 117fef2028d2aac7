//! The serverless deployment on moto for tests and the cost report: the
//! template's resources created from `template.yaml`, one orchestrator per
//! function configured with exactly the environment the template gives it,
//! and helpers that deliver what Lambda would — API Gateway HTTP API (v2)
//! events, SQS batches read from the real queues, scheduled events — to the
//! functions' handlers. Payload shapes are in `tests/events/`. All functions
//! share one manual clock.
//!
//! Each function's AWS requests are recorded as that function's, and when a
//! deployment is dropped every one of them is checked against the function's
//! IAM role in the template ([`crate::iam`]): a test that made a function do
//! something its role would refuse on AWS fails, naming the function, the
//! action and the resource.

use crate::faults::{FaultPlan, FaultProxy};
use crate::iam::CallLog;
use crate::meter::Meter;
use crate::moto;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tms::adapters::aws::{AwsClients, AwsPorts};
use tms::adapters::stack::{Stack, Template};
use tms::http::Routes;
use tms::time::{ManualClock, Timestamp};
use tms::usecases::Orchestrator;
use tms_functions::{FunctionEnv, Sweep};

pub type App = Arc<Orchestrator<AwsPorts<ManualClock>>>;

const HTTP_REQUEST: &str = include_str!("../events/http-api-request.json");
const SQS_BATCH: &str = include_str!("../events/sqs-batch.json");
const SCHEDULED: &str = include_str!("../events/scheduled-event.json");
pub const BASE: &str = "/api/enhanced-orchestration";

/// The deployed stack on moto, with one orchestrator per function.
pub struct Deployment {
    pub template: Template,
    pub stack: Stack,
    pub sdk: aws_config::SdkConfig,
    pub clock: ManualClock,
    functions: BTreeMap<String, (App, AwsClients)>,
    pub admin_token: String,
    /// Every AWS request the functions make.
    pub meter: Meter,
    /// The same requests, each with the function that made it.
    pub calls: CallLog,
    /// The proxy the functions' requests go through, when faults are injected.
    pub faults: Option<FaultProxy>,
}

impl Deployment {
    pub async fn start() -> Deployment {
        Self::start_with(None).await
    }

    /// A deployment whose functions reach AWS through a [`FaultProxy`] with
    /// `plan` (the test itself still reads moto directly through `sdk`).
    pub async fn with_faults(plan: FaultPlan) -> Deployment {
        Self::start_with(Some(plan)).await
    }

    async fn start_with(plan: Option<FaultPlan>) -> Deployment {
        let (template, stack, sdk) = moto::stack().await;
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let meter = Meter::default();
        let calls = CallLog::default();
        let faults = match plan {
            Some(plan) => Some(FaultProxy::start(&moto::endpoint(), plan).await),
            None => None,
        };
        let functions_sdk = match &faults {
            Some(proxy) => moto::sdk_config_at(&proxy.url).await,
            None => sdk.clone(),
        };
        let mut functions = BTreeMap::new();
        for id in template.functions() {
            let clients = meter.clients_with(&functions_sdk, calls.caller(&id));
            let app = Self::function(&template, &stack, &clients, &clock, &id).await;
            functions.insert(id, (app, clients));
        }
        let secret = stack
            .physical("AdminTokenSecret")
            .expect("the stack generated the admin token");
        let admin_token = aws_sdk_secretsmanager::Client::new(&sdk)
            .get_secret_value()
            .secret_id(secret)
            .send()
            .await
            .unwrap()
            .secret_string
            .unwrap();
        Deployment {
            template,
            stack,
            sdk,
            clock,
            functions,
            admin_token,
            meter,
            calls,
            faults,
        }
    }

    /// A function configured from the template's environment for it.
    async fn function(
        template: &Template,
        stack: &Stack,
        clients: &AwsClients,
        clock: &ManualClock,
        id: &str,
    ) -> App {
        let env = stack.function_env(template, id).unwrap();
        let is_api = env.contains_key(tms_functions::env::ADMIN_TOKEN_SECRET_ARN);
        FunctionEnv::from_lookup(is_api, |k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("{id}: {e}"))
            .orchestrator(clients, clock.clone())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"))
    }

    pub fn app(&self, function: &str) -> &App {
        &self.functions[function].0
    }

    /// The AWS clients of `function` (metered, and recorded as its calls).
    pub fn clients(&self, function: &str) -> &AwsClients {
        &self.functions[function].1
    }

    /// The requests so far that the functions' roles would refuse, one line each.
    pub fn role_violations(&self) -> Vec<String> {
        match crate::iam::violations(&self.template, &self.stack, &self.calls.calls()) {
            Ok(v) => v.iter().map(ToString::to_string).collect(),
            Err(e) => vec![e],
        }
    }

    /// An HTTP request through API Gateway to `function`'s handler.
    pub async fn http(
        &self,
        function: &str,
        routes: Routes,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| ("application/json", b.to_string()));
        self.http_raw(function, routes, method, path, token, body)
            .await
    }

    /// An HTTP API request with a body of its own content type (a JUnit
    /// report), `path` with its query string.
    pub async fn http_raw(
        &self,
        function: &str,
        routes: Routes,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        let mut event: Value = serde_json::from_str(HTTP_REQUEST).unwrap();
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let route = format!("{method} {path}");
        event["routeKey"] = json!(route);
        event["rawPath"] = json!(path);
        event["rawQueryString"] = json!(query);
        event["requestContext"]["routeKey"] = json!(route);
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
        if let Some(token) = token {
            event["headers"]["authorization"] = json!(format!("Bearer {token}"));
        }
        if let Some((content_type, body)) = body {
            event["headers"]["content-type"] = json!(content_type);
            event["body"] = json!(body);
        }
        let request: LambdaRequest = serde_json::from_value(event).unwrap();
        let router = tms::http::router_for(self.app(function).clone(), routes);
        let response = Adapter::from(router)
            .call(LambdaEvent::new(request, Context::default()))
            .await
            .unwrap();
        let response = serde_json::to_value(response).unwrap();
        let status = response["statusCode"].as_u64().unwrap() as u16;
        let body = response["body"]
            .as_str()
            .map(|b| serde_json::from_str(b).unwrap_or(Value::String(b.into())))
            .unwrap_or(Value::Null);
        (status, body)
    }

    /// Everything on a queue, as the batch Lambda's poller would deliver it.
    pub async fn batch(&self, queue: &str) -> SqsEvent {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let url = self.stack.physical(queue).unwrap();
        let template: Value = serde_json::from_str(SQS_BATCH).unwrap();
        let mut records = Vec::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .message_system_attribute_names(
                    aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
                )
                .send()
                .await
                .unwrap();
            let messages = out.messages.unwrap_or_default();
            if messages.is_empty() {
                break;
            }
            for m in messages {
                let mut record = template["Records"][0].clone();
                record["messageId"] = json!(m.message_id);
                record["receiptHandle"] = json!(m.receipt_handle);
                record["body"] = json!(m.body);
                record["eventSourceARN"] = json!(self.stack.get_att(queue, "Arn"));
                let count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
                    })
                    .cloned()
                    .unwrap_or_else(|| "1".into());
                record["attributes"]["ApproximateReceiveCount"] = json!(count);
                records.push(record);
            }
        }
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }

    /// Deletes the messages the handler did not report as failed (what the
    /// event source mapping does with a partial batch response).
    pub async fn settle(&self, queue: &str, batch: &SqsEvent, response: &SqsBatchResponse) {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        for m in &batch.records {
            let failed = response
                .batch_item_failures
                .iter()
                .any(|f| Some(&f.item_identifier) == m.message_id.as_ref());
            if !failed {
                sqs.delete_message()
                    .queue_url(self.stack.physical(queue).unwrap())
                    .receipt_handle(m.receipt_handle.clone().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }

    /// The scheduler consumes the schedule queue; returns how many nudges it got.
    pub async fn run_scheduler(&self) -> usize {
        let batch = self.batch("ScheduleQueue").await;
        let n = batch.records.len();
        if n > 0 {
            let response = tms_functions::schedule(
                self.app("SchedulerFunction"),
                LambdaEvent::new(batch.clone(), Context::default()),
            )
            .await
            .unwrap();
            assert!(response.batch_item_failures.is_empty());
            self.settle("ScheduleQueue", &batch, &response).await;
        }
        n
    }

    /// The dispatcher consumes the dispatch queue, each message's receive
    /// count raised to at least `min_attempt` (to play a later delivery
    /// without waiting for visibility timeouts); returns its response.
    pub async fn run_dispatcher(&self, min_attempt: u32) -> (usize, SqsBatchResponse) {
        let mut batch = self.batch("DispatchQueue").await;
        for record in &mut batch.records {
            let count: u32 = record.attributes["ApproximateReceiveCount"]
                .parse()
                .unwrap();
            record.attributes.insert(
                "ApproximateReceiveCount".into(),
                count.max(min_attempt).to_string(),
            );
        }
        let queue = tms_functions::DispatchQueue {
            sqs: self.clients("DispatcherFunction").sqs.clone(),
            url: self.stack.physical("DispatchQueue").unwrap().into(),
        };
        let response = tms_functions::dispatch(
            self.app("DispatcherFunction"),
            &queue,
            LambdaEvent::new(batch.clone(), Context::default()),
        )
        .await
        .unwrap();
        self.settle("DispatchQueue", &batch, &response).await;
        (batch.records.len(), response)
    }

    /// The aggregator consumes the aggregate queue (fed by the bus's rule).
    pub async fn run_aggregator(&self) -> usize {
        let batch = self.batch("AggregateQueue").await;
        let n = batch.records.len();
        let response = tms_functions::aggregate(
            self.app("AggregatorFunction"),
            LambdaEvent::new(batch.clone(), Context::default()),
        )
        .await
        .unwrap();
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        self.settle("AggregateQueue", &batch, &response).await;
        n
    }

    pub async fn run_sweep(&self, function: &str, which: Sweep) -> tms::usecases::SweepReport {
        let event: EventBridgeEvent = serde_json::from_str(SCHEDULED).unwrap();
        tms_functions::sweep(
            self.app(function),
            which,
            LambdaEvent::new(event, Context::default()),
        )
        .await
        .unwrap()
    }

    /// Registers a push-mode runner that dispatches to the webhook at
    /// `url`, signing with `key` — stored in Secrets Manager under the
    /// stage's dispatch prefix, as an operator would; returns its view.
    pub async fn register_webhook_runner(&self, slots: u32, url: &str, key: &str) -> Value {
        let prefix = self.stack.aws_resources().unwrap().secret_prefix;
        aws_sdk_secretsmanager::Client::new(&self.sdk)
            .create_secret()
            .name(format!("{prefix}HOOK_KEY"))
            .secret_string(key)
            .send()
            .await
            .unwrap();
        let (status, body) = self
            .http(
                "ApiRunnersFunction",
                Routes::Runners,
                "POST",
                &format!("{BASE}/runners/register"),
                Some(&self.admin_token),
                Some(json!({"name": "hook", "type": "custom",
                    "capacity": {"slots": slots, "cpu_millis": 64_000, "memory_mb": 131_072},
                    "dispatch": {"platform": "webhook", "url": url, "signing_secret": "HOOK_KEY"}})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Registers a runner with two slots; returns its id and token.
    pub async fn register(&self, name: &str) -> (String, String) {
        self.register_with_slots(name, 2).await
    }

    pub async fn register_with_slots(&self, name: &str, slots: u32) -> (String, String) {
        let (status, body) = self
            .http(
                "ApiRunnersFunction",
                Routes::Runners,
                "POST",
                &format!("{BASE}/runners/register"),
                Some(&self.admin_token),
                Some(json!({"name": name, "type": "custom",
                    "capacity": {"slots": slots, "cpu_millis": 64_000, "memory_mb": 131_072}})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().into(),
            body["token"].as_str().unwrap().into(),
        )
    }

    pub async fn queue(&self, body: Value) -> (String, String) {
        let (status, body) = self
            .http(
                "ApiExecutionsFunction",
                Routes::Executions,
                "POST",
                &format!("{BASE}/executions/queue"),
                Some(&self.admin_token),
                Some(body),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        (
            body["id"].as_str().unwrap().into(),
            body["webhook_token"].as_str().unwrap().into(),
        )
    }

    pub async fn heartbeat(&self, runner: &(String, String)) -> Vec<Value> {
        let (status, body) = self
            .http(
                "ApiRunnerPollsFunction",
                Routes::RunnerPolls,
                "POST",
                &format!("{BASE}/runners/{}/heartbeat", runner.0),
                Some(&runner.1),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["assignments"].as_array().unwrap().clone()
    }

    /// Reports an assignment `passed` with one passed test per test it holds,
    /// through the webhook function; returns the HTTP status.
    pub async fn report_passed(&self, execution: &str, webhook_token: &str, a: &Value) -> u16 {
        let n = a["tests"].as_array().map_or(0, Vec::len);
        let (status, body) = self
            .report(
                execution,
                webhook_token,
                json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"],
                    "status": "passed", "results": {"passed": n, "failed": 0, "skipped": 0}}),
            )
            .await;
        assert!(status < 300, "{status} {body}");
        status
    }

    /// A runner's claim on a dynamic execution, through the runner polls
    /// function: the answer (its `assignment`, if any).
    pub async fn claim(&self, runner: &(String, String), execution: &str) -> Value {
        let (status, body) = self
            .http(
                "ApiRunnerPollsFunction",
                Routes::RunnerPolls,
                "POST",
                &format!("{BASE}/executions/{execution}/claims"),
                Some(&runner.1),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Posts a shard report body to the execution's webhook, through the
    /// webhook function.
    pub async fn report(&self, execution: &str, webhook_token: &str, body: Value) -> (u16, Value) {
        self.report_with_query(execution, "", webhook_token, body)
            .await
    }

    /// [`Self::report`] with a query string (`"?next=any"`).
    pub async fn report_with_query(
        &self,
        execution: &str,
        query: &str,
        webhook_token: &str,
        body: Value,
    ) -> (u16, Value) {
        self.http(
            "ApiWebhooksFunction",
            Routes::Webhooks,
            "POST",
            &format!("{BASE}/webhooks/parallel-execution/{execution}{query}"),
            Some(webhook_token),
            Some(body),
        )
        .await
    }

    /// An operator cancels an execution, through the executions function.
    pub async fn cancel(&self, execution: &str) -> Value {
        let (status, body) = self
            .http(
                "ApiExecutionsFunction",
                Routes::Executions,
                "POST",
                &format!("{BASE}/executions/{execution}/cancel"),
                Some(&self.admin_token),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /metrics` through the system function.
    pub async fn metrics(&self) -> Value {
        let (status, body) = self
            .http(
                "ApiSystemFunction",
                Routes::System,
                "GET",
                &format!("{BASE}/metrics"),
                Some(&self.admin_token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `GET /runners/{id}` through the runners function.
    pub async fn runner(&self, id: &str) -> Value {
        let (status, body) = self
            .http(
                "ApiRunnersFunction",
                Routes::Runners,
                "GET",
                &format!("{BASE}/runners/{id}"),
                Some(&self.admin_token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn status(&self, execution: &str) -> Value {
        let (status, body) = self
            .http(
                "ApiExecutionsFunction",
                Routes::Executions,
                "GET",
                &format!("{BASE}/executions/{execution}/status"),
                Some(&self.admin_token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Deployment {
    /// Holds every request the test made the functions send against their
    /// roles (unless the test already failed).
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let violations = self.role_violations();
        assert!(
            violations.is_empty(),
            "requests outside the functions' IAM roles:\n{}",
            violations.join("\n")
        );
    }
}
