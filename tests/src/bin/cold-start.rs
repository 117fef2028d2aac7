//! Cold start of the Lambda functions on the emulator: each function's
//! binary is started as Lambda starts a bootstrap — with the environment
//! template.yaml gives it and `AWS_LAMBDA_RUNTIME_API` pointing at a local
//! stand-in of Lambda's runtime API — against the template's resources on
//! moto. Measured per run: process start → the first `GET
//! /runtime/invocation/next` (init done: settings, SDK clients, and for
//! the API functions the admin-token secret) → the first event's response.
//! Prints the medians as the table in `docs/performance.md`.
//! Needs the moto server (`eval "$(scripts/moto start)"`) and the
//! functions' binaries (`cargo build -p tms-functions [--release]`).
//!
//! `cold-start [--bin-dir DIR] [--runs N]` (default: the target directory's
//! `debug`, 7 runs).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use clap::Parser;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Parser)]
struct Args {
    /// Where the functions' binaries are.
    #[arg(long)]
    bin_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 7)]
    runs: usize,
}

const HTTP_REQUEST: &str = include_str!("../../events/http-api-request.json");
const SQS_BATCH: &str = include_str!("../../events/sqs-batch.json");

/// The runtime API's view of one run.
#[derive(Default)]
struct Run {
    event: Value,
    first_next: Option<Instant>,
    served: bool,
    response: Option<(Instant, Value)>,
}

type Shared = Arc<(Mutex<Run>, Notify)>;

async fn next(State(shared): State<Shared>) -> impl IntoResponse {
    let event = {
        let mut run = shared.0.lock().unwrap();
        run.first_next.get_or_insert_with(Instant::now);
        if run.served {
            None
        } else {
            run.served = true;
            Some(run.event.clone())
        }
    };
    let Some(event) = event else {
        // The benchmark stops the process after its first event.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 30_000;
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", "req-1".parse().unwrap());
    headers.insert(
        "lambda-runtime-deadline-ms",
        deadline.to_string().parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench"
            .parse()
            .unwrap(),
    );
    headers.insert("lambda-runtime-trace-id", "Root=1-0-0".parse().unwrap());
    (StatusCode::OK, headers, event.to_string())
}

async fn respond(
    State(shared): State<Shared>,
    Path((_, outcome)): Path<(String, String)>,
    body: Bytes,
) -> StatusCode {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let value = if outcome == "error" {
        json!({"error": value})
    } else {
        value
    };
    shared.0.lock().unwrap().response = Some((Instant::now(), value));
    shared.1.notify_one();
    StatusCode::ACCEPTED
}

async fn init_error(State(shared): State<Shared>, body: Bytes) -> StatusCode {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.0.lock().unwrap().response = Some((Instant::now(), json!({"init_error": value})));
    shared.1.notify_one();
    StatusCode::ACCEPTED
}

/// One cold start: (init, first event), or what went wrong.
async fn cold_start(
    binary: &std::path::Path,
    env: &[(String, String)],
    event: Value,
) -> (Duration, Duration) {
    let shared: Shared = Arc::default();
    shared.0.lock().unwrap().event = event;
    let app = axum::Router::new()
        .route(
            "/2018-06-01/runtime/invocation/next",
            axum::routing::get(next),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/{outcome}",
            axum::routing::post(respond),
        )
        .route(
            "/2018-06-01/runtime/init/error",
            axum::routing::post(init_error),
        )
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let started = Instant::now();
    let mut child = std::process::Command::new(binary)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", &api)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let answered = tokio::time::timeout(Duration::from_secs(30), shared.1.notified()).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answered.is_ok(),
        "{} answered no event in 30 s",
        binary.display()
    );
    server.abort();
    let run = shared.0.lock().unwrap();
    let (answered, response) = run.response.clone().unwrap();
    assert!(
        response.get("error").is_none() && response.get("init_error").is_none(),
        "{}: {response}",
        binary.display()
    );
    let init = run.first_next.unwrap() - started;
    (init, answered - started)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let bin_dir = args.bin_dir.unwrap_or_else(|| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        std::path::Path::new(&target).join("debug")
    });
    let (template, stack, _) = tms_tests::moto::stack().await;
    let endpoint = tms_tests::moto::endpoint();
    let health = {
        let mut e: Value = serde_json::from_str(HTTP_REQUEST).unwrap();
        let path = "/api/enhanced-orchestration/system/health";
        e["routeKey"] = json!(format!("GET {path}"));
        e["rawPath"] = json!(path);
        e["requestContext"]["http"]["method"] = json!("GET");
        e["requestContext"]["http"]["path"] = json!(path);
        e
    };
    let heartbeat = {
        let mut e = health.clone();
        let path = "/api/enhanced-orchestration/runners/01JZZZZZZZZZZZZZZZZZZZZZZZ/heartbeat";
        e["routeKey"] = json!(format!("POST {path}"));
        e["rawPath"] = json!(path);
        e["requestContext"]["http"]["method"] = json!("POST");
        e["requestContext"]["http"]["path"] = json!(path);
        e["body"] = json!("{}");
        e
    };
    let nudge: Value = serde_json::from_str(SQS_BATCH).unwrap();
    let cases = [
        ("ApiSystemFunction", "GET /system/health", health),
        (
            "ApiRunnerPollsFunction",
            "POST heartbeat without a token (401)",
            heartbeat,
        ),
        ("SchedulerFunction", "one schedule nudge", nudge),
    ];
    println!("| function | admin secret at init | first event | init (median) | init + first event (median) |");
    println!("|---|---|---|---:|---:|");
    for (function, what, event) in cases {
        let binary = bin_dir.join(template.function_binary(function).unwrap());
        let mut env: Vec<(String, String)> = stack
            .function_env(&template, function)
            .unwrap()
            .into_iter()
            .collect();
        let fetches_secret = env
            .iter()
            .any(|(k, _)| k == tms_functions::env::ADMIN_TOKEN_SECRET_ARN);
        env.extend(
            [
                ("AWS_ENDPOINT_URL", endpoint.as_str()),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_LAMBDA_FUNCTION_NAME", function),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
                ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
                ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/bench"),
                ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
                ("RUST_LOG", "warn"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let mut inits = Vec::new();
        let mut firsts = Vec::new();
        for _ in 0..args.runs {
            let (init, first) = cold_start(&binary, &env, event.clone()).await;
            inits.push(init);
            firsts.push(first);
        }
        println!(
            "| {function} | {} | {what} | {:.1} ms | {:.1} ms |",
            if fetches_secret { "yes" } else { "no" },
            median(inits).as_secs_f64() * 1e3,
            median(firsts).as_secs_f64() * 1e3,
        );
    }
}
