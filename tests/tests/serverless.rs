//! The serverless deployment on an emulator: the template's table, queues,
//! bus, rule and secret are created on moto from `template.yaml` itself, every
//! function is configured with exactly the environment the template gives
//! it, and the lifecycle is driven through the functions' handlers with the
//! payloads Lambda would deliver — API Gateway HTTP API (v2) events, SQS
//! batches read from the real queues, and scheduled events. Payload shapes
//! are kept in `tests/events/`. Time is a manual clock shared by all the
//! functions, so sweeps are tested without waiting.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tms::adapters::aws::AwsPorts;
use tms::adapters::stack::{Stack, Template};
use tms::http::Routes;
use tms::time::{ManualClock, Timestamp};
use tms::usecases::Orchestrator;
use tms_functions::{FunctionEnv, Sweep};
use tms_tests::moto;

type App = Arc<Orchestrator<AwsPorts<ManualClock>>>;

const HTTP_REQUEST: &str = include_str!("../events/http-api-request.json");
const SQS_BATCH: &str = include_str!("../events/sqs-batch.json");
const SCHEDULED: &str = include_str!("../events/scheduled-event.json");
const BASE: &str = "/api/enhanced-orchestration";

/// The deployed stack on moto, with one orchestrator per function.
struct Deployment {
    stack: Stack,
    sdk: aws_config::SdkConfig,
    clock: ManualClock,
    functions: BTreeMap<String, App>,
    admin_token: String,
}

impl Deployment {
    async fn start() -> Deployment {
        let (template, stack, sdk) = moto::stack().await;
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let mut functions = BTreeMap::new();
        for id in template.functions() {
            functions.insert(
                id.clone(),
                Self::function(&template, &stack, &sdk, &clock, &id).await,
            );
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
            stack,
            sdk,
            clock,
            functions,
            admin_token,
        }
    }

    /// A function configured from the template's environment for it.
    async fn function(
        template: &Template,
        stack: &Stack,
        sdk: &aws_config::SdkConfig,
        clock: &ManualClock,
        id: &str,
    ) -> App {
        let env = stack.function_env(template, id).unwrap();
        let is_api = env.contains_key(tms_functions::env::ADMIN_TOKEN_SECRET_ARN);
        FunctionEnv::from_lookup(is_api, |k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("{id}: {e}"))
            .orchestrator(sdk, clock.clone())
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"))
    }

    fn app(&self, function: &str) -> &App {
        &self.functions[function]
    }

    /// An HTTP request through API Gateway to `function`'s handler.
    async fn http(
        &self,
        function: &str,
        routes: Routes,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut event: Value = serde_json::from_str(HTTP_REQUEST).unwrap();
        let route = format!("{method} {path}");
        event["routeKey"] = json!(route);
        event["rawPath"] = json!(path);
        event["requestContext"]["routeKey"] = json!(route);
        event["requestContext"]["http"]["method"] = json!(method);
        event["requestContext"]["http"]["path"] = json!(path);
        if let Some(token) = token {
            event["headers"]["authorization"] = json!(format!("Bearer {token}"));
        }
        if let Some(body) = body {
            event["body"] = json!(body.to_string());
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
    async fn batch(&self, queue: &str) -> SqsEvent {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        let url = self.stack.physical(queue).unwrap();
        let template: Value = serde_json::from_str(SQS_BATCH).unwrap();
        let mut records = Vec::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
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
                records.push(record);
            }
        }
        serde_json::from_value(json!({ "Records": records })).unwrap()
    }

    /// Deletes the messages the handler did not report as failed (what the
    /// event source mapping does with a partial batch response).
    async fn settle(&self, queue: &str, batch: &SqsEvent, response: &SqsBatchResponse) {
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
    async fn run_scheduler(&self) -> usize {
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

    /// The aggregator consumes the aggregate queue (fed by the bus's rule).
    async fn run_aggregator(&self) -> usize {
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

    async fn run_sweep(&self, function: &str, which: Sweep) -> tms::usecases::SweepReport {
        let event: EventBridgeEvent = serde_json::from_str(SCHEDULED).unwrap();
        tms_functions::sweep(
            self.app(function),
            which,
            LambdaEvent::new(event, Context::default()),
        )
        .await
        .unwrap()
    }

    async fn register(&self, name: &str) -> (String, String) {
        let (status, body) = self
            .http(
                "ApiRunnersFunction",
                Routes::Runners,
                "POST",
                &format!("{BASE}/runners/register"),
                Some(&self.admin_token),
                Some(json!({"name": name, "type": "custom",
                    "capacity": {"slots": 2, "cpu_millis": 4000, "memory_mb": 8192}})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().into(),
            body["token"].as_str().unwrap().into(),
        )
    }

    async fn queue(&self, body: Value) -> (String, String) {
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

    async fn heartbeat(&self, runner: &(String, String)) -> Vec<Value> {
        let (status, body) = self
            .http(
                "ApiRunnersFunction",
                Routes::Runners,
                "POST",
                &format!("{BASE}/runners/{}/heartbeat", runner.0),
                Some(&runner.1),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["assignments"].as_array().unwrap().clone()
    }

    async fn status(&self, execution: &str) -> Value {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_runs_from_queue_to_passed_through_the_functions_queues_and_bus() {
    let d = Deployment::start().await;
    let (status, health) = d
        .http(
            "ApiSystemFunction",
            Routes::System,
            "GET",
            &format!("{BASE}/system/health"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{health}");

    let runner = d.register("lambda-runner").await;
    let (execution, webhook_token) = d
        .queue(json!({"suite": "api", "tests": ["a", "b", "c", "d"], "parallelism": 2}))
        .await;
    assert!(
        d.run_scheduler().await >= 1,
        "queueing nudged the scheduler through SQS"
    );

    let work = d.heartbeat(&runner).await;
    assert_eq!(work.len(), 2, "{work:?}");
    for a in &work {
        let n = a["tests"].as_array().unwrap().len();
        let (status, body) = d
            .http(
                "ApiWebhooksFunction",
                Routes::Webhooks,
                "POST",
                &format!("{BASE}/webhooks/parallel-execution/{execution}"),
                Some(&webhook_token),
                Some(
                    json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"],
                    "status": "passed", "results": {"passed": n, "failed": 0, "skipped": 0}}),
                ),
            )
            .await;
        assert!(status < 300, "{status} {body}");
    }
    assert_eq!(
        d.status(&execution).await["status"],
        "running",
        "not folded yet"
    );
    assert_eq!(
        d.run_aggregator().await,
        2,
        "both completions came through the bus and rule"
    );
    let done = d.status(&execution).await;
    assert_eq!(done["status"], "passed", "{done}");
    assert_eq!(done["totals"]["passed"], 4);

    // The API functions only serve their own routes.
    let (status, _) = d
        .http(
            "ApiWebhooksFunction",
            Routes::Webhooks,
            "GET",
            &format!("{BASE}/executions/{execution}/status"),
            Some(&d.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_sweep_requeues_an_expired_shard_to_another_runner() {
    let d = Deployment::start().await;
    let first = d.register("first").await;
    let (execution, _) = d
        .queue(
            json!({"suite": "slow", "tests": ["t"], "parallelism": 1, "shard_timeout_seconds": 60}),
        )
        .await;
    d.run_scheduler().await;
    assert_eq!(d.heartbeat(&first).await.len(), 1);
    let second = d.register("second").await;

    d.clock.advance_secs(61);
    let report = d.run_sweep("TimeoutSweepFunction", Sweep::Timeout).await;
    assert_eq!(report.shards_requeued, 1, "{report:?}");
    assert!(
        d.run_scheduler().await >= 1,
        "the requeue nudged the scheduler"
    );
    let moved = d.heartbeat(&second).await;
    assert_eq!(moved.len(), 1, "the shard avoids the runner that lost it");
    let shard = &d.status(&execution).await["shards"][0];
    assert_eq!(shard["attempt"], 2);
    assert_eq!(shard["runner_id"].as_str(), Some(second.0.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_sweep_marks_a_silent_runner_unhealthy_and_requeues_its_work() {
    let d = Deployment::start().await;
    let silent = d.register("silent").await;
    d.queue(json!({"suite": "s", "tests": ["t"], "parallelism": 1}))
        .await;
    d.run_scheduler().await;
    assert_eq!(d.heartbeat(&silent).await.len(), 1);

    d.clock.advance_secs(10 * 60);
    let report = d.run_sweep("HealthSweepFunction", Sweep::Health).await;
    assert_eq!(report.runners_marked_unhealthy, 1, "{report:?}");
    assert_eq!(report.shards_requeued, 1, "{report:?}");
    let (status, runner) = d
        .http(
            "ApiRunnersFunction",
            Routes::Runners,
            "GET",
            &format!("{BASE}/runners/{}", silent.0),
            Some(&d.admin_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(runner["status"], "unhealthy", "{runner}");
    assert_eq!(
        d.run_sweep("ScheduleSweepFunction", Sweep::Schedule)
            .await
            .shards_assigned,
        0,
        "no healthy runner to take the requeued shard"
    );
}
