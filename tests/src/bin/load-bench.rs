//! HTTP load benchmark against a real `tms serve` process (not a test: it
//! measures, it does not assert). Bounded by design: a fixed number of
//! executions, and a hard time limit per run.
//!
//! ```sh
//! cargo build --release -p tms-cli -p tms-tests
//! target/release/load-bench --server-bin target/release/tms --executions 1000 --shards 8 --clients 8,64
//! ```
//!
//! Each client is a pull runner (8 slots): it heartbeats, and reports every
//! shard it receives as passed. Separate CI tasks queue the executions.
//! Figures: assignments/s and completions/s over the run, queue→assignment
//! latency (queue response to the first heartbeat that returns the shard),
//! per-request latency of heartbeats and reports, total requests/s, and the
//! server's peak RSS (VmHWM).

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tms_tests::Server;

#[derive(Parser)]
struct Args {
    /// The `tms` binary to benchmark (build it with --release).
    #[arg(long, default_value = "target/release/tms")]
    server_bin: String,
    #[arg(long, default_value_t = 1000)]
    executions: usize,
    #[arg(long, default_value_t = 8)]
    shards: usize,
    /// Concurrent clients per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    clients: Vec<usize>,
    /// Give up a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
}

const TOKEN: &str = "bench-admin-token";

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    assigned: AtomicU64,
    completed: AtomicU64,
    heartbeat: Mutex<Option<Histogram<u64>>>,
    report: Mutex<Option<Histogram<u64>>>,
    queue: Mutex<Option<Histogram<u64>>>,
    wait: Mutex<Option<Histogram<u64>>>,
}

fn record(h: &Mutex<Option<Histogram<u64>>>, micros: u64) {
    let mut g = h.lock().unwrap();
    g.get_or_insert_with(|| Histogram::new_with_bounds(1, 600_000_000, 3).unwrap())
        .saturating_record(micros.max(1));
}

fn q(h: &Mutex<Option<Histogram<u64>>>, quantile: f64) -> f64 {
    h.lock()
        .unwrap()
        .as_ref()
        .map_or(0.0, |h| h.value_at_quantile(quantile) as f64 / 1000.0)
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Value,
    stats: &Stats,
) -> Value {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {v}");
    v
}

/// CPU time the server has used (user + system), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the parenthesised command name come `state` (field 3) onwards, so
    // utime (field 14) and stime (field 15) are the 12th and 13th tokens.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let ticks_per_second = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / ticks_per_second
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run(args: &Args, clients: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&args.server_bin, dir.path(), Some(TOKEN));
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients * 2)
        .build()
        .unwrap();
    let stats = Arc::new(Stats::default());
    let total_shards = (args.executions * args.shards) as u64;

    let mut runners = Vec::new();
    for i in 0..clients {
        let body = json!({"name": format!("bench-{i}"), "type": "custom",
            "capacity": {"slots": 8, "cpu_millis": 64000, "memory_mb": 65536}});
        let v = post(
            &http,
            format!("{base}/runners/register"),
            TOKEN,
            body,
            &stats,
        )
        .await;
        runners.push((
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        ));
    }

    let queued_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let client_cpu_before = cpu_seconds("self");
    let deadline = start + Duration::from_secs(args.time_limit);

    // CI side: queue the executions from `clients` concurrent tasks.
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, base, stats, next, queued_at) = (
            http.clone(),
            base.clone(),
            stats.clone(),
            next.clone(),
            queued_at.clone(),
        );
        let (n, shards) = (args.executions as u64, args.shards);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let tests: Vec<Value> = (0..shards * 4).map(|t| json!({"name": format!("test_{t}"), "duration_hint_ms": 100 + t * 10})).collect();
                let body = json!({"suite": format!("bench-{}", i % 10), "tests": tests, "parallelism": shards});
                let t0 = Instant::now();
                let v = post(&http, format!("{base}/executions/queue"), TOKEN, body, &stats).await;
                record(&stats.queue, t0.elapsed().as_micros() as u64);
                queued_at.lock().unwrap().insert(v["id"].as_str().unwrap().to_owned(), Instant::now());
            }
        }));
    }

    // Runner side: each client heartbeats and completes what it receives.
    for (id, token) in runners {
        let (http, base, stats, done, queued_at) = (
            http.clone(),
            base.clone(),
            stats.clone(),
            done.clone(),
            queued_at.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t0 = Instant::now();
                let hb = post(&http, format!("{base}/runners/{id}/heartbeat"), &token, json!({}), &stats).await;
                record(&stats.heartbeat, t0.elapsed().as_micros() as u64);
                let work = hb["assignments"].as_array().cloned().unwrap_or_default();
                if work.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for a in work {
                    let exec = a["execution_id"].as_str().unwrap().to_owned();
                    let lease = a["lease_id"].as_str().unwrap().to_owned();
                    if seen.insert(lease.clone()) {
                        stats.assigned.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = queued_at.lock().unwrap().get(&exec) {
                            record(&stats.wait, t.elapsed().as_micros() as u64);
                        }
                    }
                    let n = a["tests"].as_array().map_or(0, Vec::len);
                    let body = json!({"shard_index": a["shard_index"], "lease_id": lease, "status": "passed",
                        "results": {"passed": n, "failed": 0, "skipped": 0}});
                    let t0 = Instant::now();
                    post(&http, format!("{base}/webhooks/parallel-execution/{exec}"), &token, body, &stats).await;
                    record(&stats.report, t0.elapsed().as_micros() as u64);
                    if stats.completed.fetch_add(1, Ordering::Relaxed) + 1 >= total_shards {
                        done.store(true, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rss = peak_rss_mb(server_pid(&server));
    let cpu = cpu_seconds(&server_pid(&server).to_string());
    let client_cpu = cpu_seconds("self") - client_cpu_before;
    let requests = stats.requests.load(Ordering::Relaxed) as f64;
    let completed = stats.completed.load(Ordering::Relaxed);
    assert_eq!(completed, total_shards, "run hit the time limit");
    format!(
        "| {clients} | {} x {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} / {:.1} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} | {:.0} | {:.0} |",
        args.executions,
        args.shards,
        elapsed,
        requests / elapsed,
        stats.assigned.load(Ordering::Relaxed) as f64 / elapsed,
        completed as f64 / elapsed,
        q(&stats.wait, 0.5),
        q(&stats.wait, 0.99),
        q(&stats.heartbeat, 0.5),
        q(&stats.heartbeat, 0.99),
        q(&stats.report, 0.5),
        q(&stats.report, 0.99),
        rss,
        cpu * 1e6 / requests,
        client_cpu * 1e6 / requests,
    )
}

fn server_pid(server: &Server) -> u32 {
    server.pid()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    println!("| clients | executions x shards | seconds | requests/s | assignments/s | completions/s | queue→assignment p50 / p99 ms | heartbeat p50 / p99 ms | report p50 / p99 ms | server peak RSS MB | server CPU µs per request | load generator CPU µs per request |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &c in &args.clients {
        println!("{}", run(&args, c).await);
    }
}
