//! Request cost of one execution on the serverless deployment (moto): runs
//! executions of 1, 8 and 32 shards through the functions' handlers with
//! every AWS request metered, and prints the markdown tables of
//! `docs/cost.md`. Needs the moto server (`eval "$(scripts/moto start)"`).

use serde_json::json;
use std::collections::BTreeMap;
use tms_tests::meter::Usage;
use tms_tests::recorder::{Answer, Recorder};
use tms_tests::serverless::{Deployment, BASE};

/// us-east-1 list prices, as published on the AWS pricing pages (2025).
const WRU_PER_MILLION: f64 = 0.625;
const RRU_PER_MILLION: f64 = 0.125;
const SQS_PER_MILLION: f64 = 0.40;
const EVENTS_PER_MILLION: f64 = 1.00;
const LAMBDA_REQUESTS_PER_MILLION: f64 = 0.20;
const LAMBDA_ARM_GB_SECOND: f64 = 0.000_013_333_4;
const HTTP_API_PER_MILLION: f64 = 1.00;
/// Assumed billed duration of one invocation (the functions are compiled
/// Rust doing one to four DynamoDB round trips of a few milliseconds).
const ASSUMED_MS_PER_INVOCATION: f64 = 30.0;
const MEMORY_GB: f64 = 0.25;

#[derive(Default)]
struct Step {
    usage: Usage,
    invocations: BTreeMap<&'static str, u64>,
    http_requests: u64,
}

struct Run {
    shards: usize,
    steps: Vec<(&'static str, Step)>,
}

impl Run {
    fn total(&self) -> Step {
        let mut total = Step::default();
        for (_, s) in &self.steps {
            for (k, v) in &s.usage.requests {
                *total.usage.requests.entry(k.clone()).or_default() += v;
            }
            total.usage.read_units += s.usage.read_units;
            total.usage.write_units += s.usage.write_units;
            total.usage.events += s.usage.events;
            for (k, v) in &s.invocations {
                *total.invocations.entry(k).or_default() += v;
            }
            total.http_requests += s.http_requests;
        }
        total
    }
}

fn dollars(step: &Step) -> [f64; 5] {
    let dynamo = step.usage.write_units * WRU_PER_MILLION / 1e6
        + step.usage.read_units * RRU_PER_MILLION / 1e6;
    let sqs = step.usage.count("SQS.") as f64 * SQS_PER_MILLION / 1e6;
    let events = step.usage.events as f64 * EVENTS_PER_MILLION / 1e6;
    let invocations: u64 = step.invocations.values().sum();
    let lambda = invocations as f64 * LAMBDA_REQUESTS_PER_MILLION / 1e6
        + invocations as f64 * ASSUMED_MS_PER_INVOCATION / 1000.0
            * MEMORY_GB
            * LAMBDA_ARM_GB_SECOND;
    let api = step.http_requests as f64 * HTTP_API_PER_MILLION / 1e6;
    [dynamo, sqs, events, lambda, api]
}

async fn run(shards: usize) -> Run {
    let d = Deployment::start().await;
    let runner = d.register_with_slots("cost-runner", shards as u32).await;
    // Registration and the admin secret read are not per execution.
    let mut mark = d.meter.usage();
    let mut steps = Vec::new();
    let mut step =
        |name: &'static str, invocations: &[(&'static str, u64)], http: u64, mark: &mut Usage| {
            let now = d.meter.usage();
            steps.push((
                name,
                Step {
                    usage: now.minus(mark),
                    invocations: invocations.iter().copied().collect(),
                    http_requests: http,
                },
            ));
            *mark = now;
        };

    let tests: Vec<String> = (0..shards * 4).map(|i| format!("test_{i}")).collect();
    let (execution, webhook) = d
        .queue(json!({"suite": "cost", "tests": tests, "parallelism": shards}))
        .await;
    step("queue (API)", &[("ApiExecutionsFunction", 1)], 1, &mut mark);

    let nudges = d.run_scheduler().await;
    step(
        "schedule (SQS → scheduler)",
        &[("SchedulerFunction", nudges.min(1) as u64)],
        0,
        &mut mark,
    );

    let work = d.heartbeat(&runner).await;
    assert_eq!(work.len(), shards, "one heartbeat brings every shard");
    let heartbeats = 1;
    step(
        "heartbeats that bring the work (API)",
        &[("ApiRunnerPollsFunction", heartbeats)],
        heartbeats,
        &mut mark,
    );

    for a in &work {
        d.report_passed(&execution, &webhook, a).await;
    }
    step(
        "shard reports (API webhooks)",
        &[("ApiWebhooksFunction", shards as u64)],
        shards as u64,
        &mut mark,
    );

    // The completions nudge the scheduler too; a pass that finds nothing.
    let nudges = d.run_scheduler().await;
    step(
        "schedule after completions (SQS → scheduler)",
        &[("SchedulerFunction", nudges.min(1) as u64)],
        0,
        &mut mark,
    );

    let folded = d.run_aggregator().await;
    assert_eq!(folded, shards);
    // One Lambda invocation per batch of up to 50 (the template's BatchSize).
    step(
        "aggregate (EventBridge → SQS → aggregator)",
        &[("AggregatorFunction", shards.div_ceil(50) as u64)],
        0,
        &mut mark,
    );

    let done = d.status(&execution).await;
    assert_eq!(done["status"], "passed", "{done}");
    step(
        "final status (API)",
        &[("ApiExecutionsFunction", 1)],
        1,
        &mut mark,
    );

    Run { shards, steps }
}

/// The same execution on a push-mode runner: the scheduler also sends a
/// dispatch order per shard, the dispatcher calls the platform (a webhook
/// here), and each started job reads its shard and reports with its own
/// token (so each report also checks that token once).
async fn push_run(shards: usize) -> Run {
    let d = Deployment::start().await;
    let platform = Recorder::start(Answer::status(204)).await;
    d.register_webhook_runner(shards as u32, &platform.url, "k")
        .await;
    let mut mark = d.meter.usage();
    let mut steps = Vec::new();
    let mut step =
        |name: &'static str, invocations: &[(&'static str, u64)], http: u64, mark: &mut Usage| {
            let now = d.meter.usage();
            steps.push((
                name,
                Step {
                    usage: now.minus(mark),
                    invocations: invocations.iter().copied().collect(),
                    http_requests: http,
                },
            ));
            *mark = now;
        };
    let tests: Vec<String> = (0..shards * 4).map(|i| format!("test_{i}")).collect();
    let (execution, _) = d
        .queue(json!({"suite": "cost", "tests": tests, "parallelism": shards}))
        .await;
    step("queue (API)", &[("ApiExecutionsFunction", 1)], 1, &mut mark);
    let nudges = d.run_scheduler().await;
    step(
        "schedule, with a dispatch order per shard (SQS → scheduler)",
        &[("SchedulerFunction", nudges.min(1) as u64)],
        0,
        &mut mark,
    );
    let (orders, _) = d.run_dispatcher(1).await;
    assert_eq!(orders, shards);
    // One invocation per batch of up to 10 (the template's BatchSize).
    step(
        "dispatch (SQS → dispatcher → platform)",
        &[("DispatcherFunction", shards.div_ceil(10) as u64)],
        0,
        &mut mark,
    );
    let jobs: Vec<serde_json::Value> = platform.requests().iter().map(|r| r.json()).collect();
    for job in &jobs {
        let token = job["webhook_token"].as_str().unwrap();
        let index = job["shard_index"].as_u64().unwrap();
        let (_, work) = d
            .http(
                "ApiWebhooksFunction",
                tms::http::Routes::Webhooks,
                "GET",
                &format!("{BASE}/webhooks/parallel-execution/{execution}/shards/{index}"),
                Some(token),
                None,
            )
            .await;
        d.report_passed(&execution, token, &work).await;
    }
    step(
        "each job reads its shard and reports (API webhooks)",
        &[("ApiWebhooksFunction", 2 * shards as u64)],
        2 * shards as u64,
        &mut mark,
    );
    let nudges = d.run_scheduler().await;
    step(
        "schedule after completions (SQS → scheduler)",
        &[("SchedulerFunction", nudges.min(1) as u64)],
        0,
        &mut mark,
    );
    d.run_aggregator().await;
    step(
        "aggregate (EventBridge → SQS → aggregator)",
        &[("AggregatorFunction", shards.div_ceil(50) as u64)],
        0,
        &mut mark,
    );
    let done = d.status(&execution).await;
    assert_eq!(done["status"], "passed", "{done}");
    step(
        "final status (API)",
        &[("ApiExecutionsFunction", 1)],
        1,
        &mut mark,
    );
    Run { shards, steps }
}

async fn idle_heartbeat() -> Step {
    let d = Deployment::start().await;
    let runner = d.register("idle").await;
    d.heartbeat(&runner).await;
    // The next beat, one interval later: the runner's liveness is written
    // and its token is checked again (verified tokens are trusted for 5 s).
    d.clock.advance_secs(15);
    let mark = d.meter.usage();
    d.heartbeat(&runner).await;
    Step {
        usage: d.meter.usage().minus(&mark),
        invocations: [("ApiRunnerPollsFunction", 1)].into_iter().collect(),
        http_requests: 1,
    }
}

fn requests(u: &Usage) -> String {
    u.requests
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::main]
async fn main() {
    let mut runs = Vec::new();
    for shards in [1, 8, 32] {
        runs.push(run(shards).await);
    }
    println!("### Requests per step (8 shards)\n");
    println!("| step | AWS requests | read units | write units | events |");
    println!("|---|---|---|---|---|");
    for (name, s) in &runs[1].steps {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {} |",
            requests(&s.usage),
            s.usage.read_units,
            s.usage.write_units,
            s.usage.events
        );
    }
    let idle = idle_heartbeat().await;
    println!(
        "| a heartbeat with nothing new, 15 s after the last (per runner) | {} | {:.1} | {:.1} | {} |",
        requests(&idle.usage),
        idle.usage.read_units,
        idle.usage.write_units,
        idle.usage.events
    );

    println!("\n### Per execution\n");
    println!("| shards | DynamoDB requests | read units | write units | SQS requests | EventBridge events | Lambda invocations | HTTP API requests |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let t = r.total();
        println!(
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.shards,
            t.usage.count("DynamoDB."),
            t.usage.read_units,
            t.usage.write_units,
            t.usage.count("SQS."),
            t.usage.events,
            t.invocations.values().sum::<u64>(),
            t.http_requests
        );
    }

    println!("\n### Dollars per 1,000 executions (us-east-1 list prices)\n");
    println!("| shards | DynamoDB | SQS | EventBridge | Lambda | HTTP API | total |");
    println!("|---|---|---|---|---|---|---|");
    for r in &runs {
        let d = dollars(&r.total());
        let total: f64 = d.iter().sum();
        println!(
            "| {} | ${:.4} | ${:.4} | ${:.4} | ${:.4} | ${:.4} | **${:.4}** |",
            r.shards,
            d[0] * 1000.0,
            d[1] * 1000.0,
            d[2] * 1000.0,
            d[3] * 1000.0,
            d[4] * 1000.0,
            total * 1000.0
        );
    }
    let push = push_run(8).await;
    println!("\n### Push mode: the same 8 shards dispatched to a webhook\n");
    println!("| step | AWS requests | read units | write units | events |");
    println!("|---|---|---|---|---|");
    for (name, s) in &push.steps {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {} |",
            requests(&s.usage),
            s.usage.read_units,
            s.usage.write_units,
            s.usage.events
        );
    }
    let t = push.total();
    let d = dollars(&t);
    println!(
        "\nPer 1,000 such executions: DynamoDB ${:.4}, SQS ${:.4}, EventBridge ${:.4}, \
         Lambda ${:.4} ({} invocations each), HTTP API ${:.4}: **${:.4}**.",
        d[0] * 1000.0,
        d[1] * 1000.0,
        d[2] * 1000.0,
        d[3] * 1000.0,
        t.invocations.values().sum::<u64>(),
        d[4] * 1000.0,
        d.iter().sum::<f64>() * 1000.0
    );
    let d = dollars(&idle);
    println!(
        "\nAn idle runner heartbeating every 15 s for a 30-day month: ${:.2} \
         ({} heartbeats).",
        d.iter().sum::<f64>() * (30.0 * 24.0 * 3600.0 / 15.0),
        30 * 24 * 3600 / 15
    );
}
