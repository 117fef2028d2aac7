//! HTTP load benchmark against a real `tms serve` process (not a test: it
//! measures, it does not assert). Bounded by design: a fixed number of
//! executions, and a hard time limit per run.
//!
//! ```sh
//! cargo build --release -p tms-cli -p tms-tests --bin tms --bin load-bench
//! target/release/load-bench --server-bin target/release/tms --executions 1000 --shards 8 --clients 8,64
//! ```
//!
//! Each client is a pull runner (8 slots): it heartbeats, and reports every
//! shard it receives as passed. Separate CI tasks queue the executions.
//! Figures: assignments/s and completions/s over the run, queue→assignment
//! latency (queue response to the first heartbeat that returns the shard),
//! per-request latency of heartbeats and reports (heartbeats also counted
//! apart once every queue call is answered: the claim path without the
//! burst of CI tasks queueing at once), total requests/s, and the server's
//! peak RSS (VmHWM).

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Request;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tms_tests::{peak_rss_mb, Server};

#[derive(Parser)]
struct Args {
    /// The `tms` binary to benchmark (build it with --release). Several,
    /// comma-separated, are run alternately in one sitting (copy each build
    /// to its own path first): on a shared machine only a side-by-side
    /// comparison separates a change from the run-to-run noise.
    #[arg(long, value_delimiter = ',', default_value = "target/release/tms")]
    server_bin: Vec<String>,
    /// Run every binary and client count this many times, alternating, and
    /// end with the median of each column per binary and client count.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long, default_value_t = 1000)]
    executions: usize,
    #[arg(long, default_value_t = 8)]
    shards: usize,
    /// Tests per shard in each queued execution. Real suites put tens to
    /// hundreds of tests in a shard; whatever TMS does per test (copying a
    /// shard, writing its document) shows as this grows.
    #[arg(long, default_value_t = TESTS_PER_SHARD)]
    tests_per_shard: usize,
    /// Concurrent clients per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,64")]
    clients: Vec<usize>,
    /// Give up a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    time_limit: u64,
    /// Instead of the static workload, the dynamic one with this many
    /// tests per execution (comma-separated for several): `--executions`
    /// dynamic executions, each test a batch of its own
    /// (`max_batch_tests: 1`, as sorry-cypress hands out one spec per
    /// claim), claimed by `--clients` runners of one slot that send
    /// `started` and a report with the test's result for each. Figures:
    /// server CPU per 1,000 tests, for the whole run and for the claims
    /// and reports alone (queueing apart).
    #[arg(long, value_delimiter = ',')]
    dynamic: Vec<usize>,
    /// With `--dynamic`: claim each batch with its own request instead of
    /// taking it from the previous report's answer (`?next=any`: of the
    /// same execution, or of the next one once it has none).
    #[arg(long)]
    claim_apart: bool,
    /// Instead of the workload, measure the floor: this many heartbeats of
    /// idle runners sent back to back (the cheapest authenticated call: no
    /// work to hand out, no write to wait for). What the HTTP stack, the
    /// kernel and the generator cost on this machine before TMS does
    /// anything, so the workload's figures can be read against it.
    #[arg(long)]
    floor: Option<u64>,
}

const TOKEN: &str = "bench-admin-token";
/// The default workload's tests per shard (its figures are written
/// without the count).
const TESTS_PER_SHARD: usize = 4;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    assigned: AtomicU64,
    completed: AtomicU64,
}

/// Latencies one task measured; merged after the run, so recording one
/// takes no lock.
struct Latencies {
    heartbeat: Histogram<u64>,
    /// Heartbeats sent after the last queue call was answered: the claim
    /// path without the burst of 64 CI tasks queueing at once.
    heartbeat_after_queueing: Histogram<u64>,
    report: Histogram<u64>,
    queue: Histogram<u64>,
    wait: Histogram<u64>,
}

impl Latencies {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 600_000_000, 3).unwrap();
        Latencies {
            heartbeat: h(),
            heartbeat_after_queueing: h(),
            report: h(),
            queue: h(),
            wait: h(),
        }
    }

    fn add(&mut self, other: &Latencies) {
        self.heartbeat.add(&other.heartbeat).unwrap();
        self.heartbeat_after_queueing
            .add(&other.heartbeat_after_queueing)
            .unwrap();
        self.report.add(&other.report).unwrap();
        self.queue.add(&other.queue).unwrap();
        self.wait.add(&other.wait).unwrap();
    }
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    h.saturating_record((since.elapsed().as_micros() as u64).max(1));
}

fn q(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// One keep-alive HTTP/1.1 connection owned by one task: no pool to lock,
/// bodies serialised once, responses read into borrowed structs. The
/// generator shares the machine's two cores with the server, so every
/// microsecond it spends is one the server does not get.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(connection);
        Conn {
            sender,
            host: HeaderValue::from_str(&addr.to_string()).unwrap(),
        }
    }

    /// POSTs `body` to the API path; panics on anything but 2xx.
    async fn post(&mut self, path: &str, auth: &HeaderValue, body: Bytes, stats: &Stats) -> Bytes {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        self.sender.ready().await.expect("connection ready");
        let request = Request::post(format!("{BASE_PATH}{path}"))
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .unwrap();
        let response = self.sender.send_request(request).await.expect("request");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }
}

impl Conn {
    /// GETs the API path; panics on anything but 2xx.
    async fn get(&mut self, path: &str, auth: &HeaderValue, stats: &Stats) -> Bytes {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        self.sender.ready().await.expect("connection ready");
        let request = Request::get(format!("{BASE_PATH}{path}"))
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, auth.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.sender.send_request(request).await.expect("request");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert!(
            status.is_success(),
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

#[derive(Deserialize)]
struct Created<'a> {
    #[serde(borrow)]
    id: &'a str,
    #[serde(default, borrow)]
    token: Option<&'a str>,
}

#[derive(Deserialize)]
struct Beat<'a> {
    #[serde(borrow)]
    assignments: Vec<Work<'a>>,
}

#[derive(Deserialize)]
struct Work<'a> {
    execution_id: &'a str,
    shard_index: u32,
    lease_id: &'a str,
    tests: Vec<IgnoredAny>,
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

const BASE_PATH: &str = "/api/enhanced-orchestration";

/// A fresh `tms serve` of `server_bin` on its own data directory (kept
/// until the returned guard drops) and the address it listens on.
fn start_server(server_bin: &str) -> (tempfile::TempDir, Server, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    // The request-rate limit per token would measure itself, not TMS:
    // the benchmark's one admin token queues faster than a CI fleet. (A
    // variable, which builds without the limit ignore.)
    let (server, _) = Server::start_with_env(
        server_bin,
        dir.path(),
        Some(TOKEN),
        &[],
        &[("TMS_TOKEN_RATE_LIMIT", "0")],
    );
    let addr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("server address");
    (dir, server, addr)
}

async fn run(args: &Args, server_bin: &str, clients: usize) -> Row {
    let (_dir, server, addr) = start_server(server_bin);
    let admin = bearer(TOKEN);
    let stats = Arc::new(Stats::default());
    let total_shards = (args.executions * args.shards) as u64;

    let mut setup = Conn::open(addr).await;
    let runners = register_runners(&mut setup, clients, &stats).await;
    // Ten suites' queue bodies, serialised once.
    let bodies: Vec<Bytes> = (0..10)
        .map(|suite| {
            let tests: Vec<String> = (0..args.shards * args.tests_per_shard)
                .map(|t| {
                    format!(
                        r#"{{"name":"test_{t}","duration_hint_ms":{}}}"#,
                        100 + t * 10
                    )
                })
                .collect();
            Bytes::from(format!(
                r#"{{"suite":"bench-{suite}","tests":[{}],"parallelism":{}}}"#,
                tests.join(","),
                args.shards
            ))
        })
        .collect();

    let queued_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // Queue calls answered; all of them once it reaches `executions`.
    let queue_calls_done = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // Each task's setup happens before the clock starts: its connection,
    // accepted by the server (one heartbeat answered), and its histograms
    // (five of them are 0.5 ms of page faults: created inside the run they
    // delayed every task's first request, and with about 1,400 heartbeats
    // in a run those 64 first ones were the whole-run p99).
    let (queue_side, runner_side) = open_clients(addr, &runners).await;
    let start = Instant::now();
    let client_cpu_before = cpu_seconds("self");
    let deadline = start + Duration::from_secs(args.time_limit);

    // CI side: queue the executions from `clients` concurrent tasks.
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (mut conn, mut lat) in queue_side {
        let (stats, next, queued_at, bodies, admin, queue_calls_done) = (
            stats.clone(),
            next.clone(),
            queued_at.clone(),
            bodies.clone(),
            admin.clone(),
            queue_calls_done.clone(),
        );
        let n = args.executions as u64;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let body = bodies[(i % 10) as usize].clone();
                let t0 = Instant::now();
                let v = conn.post("/executions/queue", &admin, body, &stats).await;
                record(&mut lat.queue, t0);
                let created: Created = serde_json::from_slice(&v).unwrap();
                queued_at
                    .lock()
                    .unwrap()
                    .insert(created.id.to_owned(), Instant::now());
                queue_calls_done.fetch_add(1, Ordering::Relaxed);
            }
            lat
        }));
    }

    // Runner side: each client heartbeats and completes what it receives.
    for ((id, token), (mut conn, mut lat)) in runners.into_iter().zip(runner_side) {
        let (stats, done, queued_at, queue_calls_done) = (
            stats.clone(),
            done.clone(),
            queued_at.clone(),
            queue_calls_done.clone(),
        );
        let executions = args.executions as u64;
        tasks.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let beat_path = format!("/runners/{id}/heartbeat");
            let mut report = String::with_capacity(256);
            let mut report_path = String::with_capacity(96);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let after_queueing = queue_calls_done.load(Ordering::Relaxed) >= executions;
                let t0 = Instant::now();
                let hb = conn
                    .post(&beat_path, &token, Bytes::from_static(b"{}"), &stats)
                    .await;
                record(&mut lat.heartbeat, t0);
                if after_queueing {
                    record(&mut lat.heartbeat_after_queueing, t0);
                }
                let beat: Beat = serde_json::from_slice(&hb).expect("heartbeat body");
                if beat.assignments.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for a in beat.assignments {
                    if seen.insert(a.lease_id.to_owned()) {
                        stats.assigned.fetch_add(1, Ordering::Relaxed);
                        if let Some(t) = queued_at.lock().unwrap().get(a.execution_id) {
                            record(&mut lat.wait, *t);
                        }
                    }
                    report.clear();
                    write!(
                        report,
                        r#"{{"shard_index":{},"lease_id":"{}","status":"passed","results":{{"passed":{},"failed":0,"skipped":0}}}}"#,
                        a.shard_index,
                        a.lease_id,
                        a.tests.len()
                    )
                    .unwrap();
                    report_path.clear();
                    write!(report_path, "/webhooks/parallel-execution/{}", a.execution_id).unwrap();
                    let t0 = Instant::now();
                    conn.post(&report_path, &token, Bytes::from(report.clone()), &stats)
                        .await;
                    record(&mut lat.report, t0);
                    if stats.completed.fetch_add(1, Ordering::Relaxed) + 1 >= total_shards {
                        done.store(true, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Latencies::new();
    for t in tasks {
        lat.add(&t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rss = peak_rss_mb(server_pid(&server));
    let cpu = cpu_seconds(&server_pid(&server).to_string());
    let client_cpu = cpu_seconds("self") - client_cpu_before;
    let requests = stats.requests.load(Ordering::Relaxed) as f64;
    let completed = stats.completed.load(Ordering::Relaxed);
    assert_eq!(completed, total_shards, "run hit the time limit");
    Row(vec![
        Cell::Text(clients.to_string()),
        Cell::Text(match args.tests_per_shard {
            TESTS_PER_SHARD => format!("{} x {}", args.executions, args.shards),
            t => format!("{} x {} ({t} tests each)", args.executions, args.shards),
        }),
        Cell::num(elapsed, 1),
        Cell::num(requests / elapsed, 0),
        Cell::num(stats.assigned.load(Ordering::Relaxed) as f64 / elapsed, 0),
        Cell::num(completed as f64 / elapsed, 0),
        Cell::pair(q(&lat.wait, 0.5), q(&lat.wait, 0.99), 1),
        Cell::pair(q(&lat.heartbeat, 0.5), q(&lat.heartbeat, 0.99), 2),
        Cell::num(q(&lat.heartbeat_after_queueing, 0.99), 2),
        Cell::pair(q(&lat.report, 0.5), q(&lat.report, 0.99), 2),
        Cell::num(rss, 1),
        Cell::num(cpu * 1e6 / requests, 0),
        Cell::num(client_cpu * 1e6 / requests, 0),
    ])
}

#[derive(Deserialize)]
struct Claimed<'a> {
    #[serde(borrow)]
    assignment: Option<Batch<'a>>,
}

#[derive(Deserialize)]
struct Reported<'a> {
    #[serde(default, borrow)]
    next: Option<Claimed<'a>>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    execution_id: &'a str,
    shard_index: u32,
    lease_id: &'a str,
    #[serde(borrow)]
    tests: Vec<&'a str>,
}

#[derive(Deserialize)]
struct ClaimableList<'a> {
    #[serde(borrow)]
    items: Vec<ClaimableItem<'a>>,
}

#[derive(Deserialize)]
struct ClaimableItem<'a> {
    execution_id: &'a str,
}

/// A batch a runner holds: its execution, index, lease and tests.
struct Held {
    execution: String,
    index: u32,
    lease: String,
    tests: Vec<String>,
}

impl Held {
    fn of(b: &Batch<'_>) -> Held {
        Held {
            execution: b.execution_id.to_owned(),
            index: b.shard_index,
            lease: b.lease_id.to_owned(),
            tests: b.tests.iter().map(|t| (*t).to_owned()).collect(),
        }
    }
}

/// The dynamic workload (see [`Args::dynamic`]).
async fn dynamic_run(args: &Args, server_bin: &str, clients: usize, tests: usize) -> Row {
    let (_dir, server, addr) = start_server(server_bin);
    let pid = server_pid(&server).to_string();
    let admin = bearer(TOKEN);
    let stats = Arc::new(Stats::default());
    let total_tests = (args.executions * tests) as u64;
    let mut setup = Conn::open(addr).await;
    let runners = register_runners_with(&mut setup, clients, 1, &stats).await;
    let bodies: Vec<Bytes> = (0..10)
        .map(|suite| {
            let names: Vec<String> = (0..tests)
                .map(|t| format!(r#"{{"name":"spec_{t}.cy.ts","duration_hint_ms":{}}}"#, 1000 + t))
                .collect();
            Bytes::from(format!(
                r#"{{"suite":"bench-{suite}","mode":"dynamic","max_batch_tests":1,"tests":[{}],"parallelism":{clients}}}"#,
                names.join(",")
            ))
        })
        .collect();
    let (_, runner_side) = open_clients(addr, &runners).await;
    let start = Instant::now();
    let cpu_start = cpu_seconds(&pid);
    // CI side first: every execution queued before any runner claims, so
    // the claims and reports are measured apart.
    for i in 0..args.executions {
        setup
            .post("/executions/queue", &admin, bodies[i % 10].clone(), &stats)
            .await;
    }
    let queued_in = start.elapsed().as_secs_f64();
    let cpu_queued = cpu_seconds(&pid);
    let deadline = Instant::now() + Duration::from_secs(args.time_limit);
    let done = Arc::new(AtomicBool::new(false));
    let claim_apart = args.claim_apart;
    let mut tasks = Vec::new();
    for ((id, token), (mut conn, mut lat)) in runners.into_iter().zip(runner_side) {
        let (stats, done) = (stats.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let claimable = format!("/runners/{id}/claimable?limit=20");
            // Executions this runner found nothing left in.
            let mut spent: std::collections::HashSet<String> = Default::default();
            let mut held: Option<Held> = None;
            // The execution this runner claims from until it has nothing left.
            let mut current: Option<String> = None;
            let mut body = String::with_capacity(512);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let batch = match held.take() {
                    Some(b) => b,
                    None => {
                        let e = match current.clone() {
                            Some(e) => e,
                            None => {
                                let list = conn.get(&claimable, &token, &stats).await;
                                let list: ClaimableList =
                                    serde_json::from_slice(&list).expect("claimable");
                                let open =
                                    list.items.iter().find(|e| !spent.contains(e.execution_id));
                                let Some(e) = open.map(|e| e.execution_id.to_owned()) else {
                                    tokio::time::sleep(Duration::from_millis(2)).await;
                                    continue;
                                };
                                current = Some(e.clone());
                                e
                            }
                        };
                        let t0 = Instant::now();
                        let answer = conn
                            .post(&format!("/executions/{e}/claims"), &token, Bytes::from_static(b"{}"), &stats)
                            .await;
                        record(&mut lat.heartbeat, t0);
                        let claimed: Claimed = serde_json::from_slice(&answer).expect("claim");
                        match claimed.assignment {
                            Some(b) => Held::of(&b),
                            None => {
                                spent.insert(e);
                                current = None;
                                continue;
                            }
                        }
                    }
                };
                stats.assigned.fetch_add(1, Ordering::Relaxed);
                let hook = format!("/webhooks/parallel-execution/{}", batch.execution);
                body.clear();
                write!(
                    body,
                    r#"{{"shard_index":{},"lease_id":"{}","status":"started"}}"#,
                    batch.index, batch.lease
                )
                .unwrap();
                conn.post(&hook, &token, Bytes::from(body.clone()), &stats).await;
                body.clear();
                let results: Vec<String> = batch
                    .tests
                    .iter()
                    .map(|t| format!(r#"{{"name":"{t}","status":"passed","duration_ms":1000}}"#))
                    .collect();
                write!(
                    body,
                    r#"{{"shard_index":{},"lease_id":"{}","status":"passed","results":{{"passed":{},"failed":0,"skipped":0,"tests":[{}]}}}}"#,
                    batch.index,
                    batch.lease,
                    batch.tests.len(),
                    results.join(",")
                )
                .unwrap();
                let path = if claim_apart { hook } else { format!("{hook}?next=any") };
                let t0 = Instant::now();
                let answer = conn.post(&path, &token, Bytes::from(body.clone()), &stats).await;
                record(&mut lat.report, t0);
                let done_now = stats.completed.fetch_add(batch.tests.len() as u64, Ordering::Relaxed)
                    + batch.tests.len() as u64;
                if done_now >= total_tests {
                    done.store(true, Ordering::Relaxed);
                }
                let reported: Reported = serde_json::from_slice(&answer).expect("report");
                match reported.next.and_then(|n| n.assignment) {
                    Some(b) => {
                        let next = Held::of(&b);
                        // The execution ran out here: the batch is the
                        // next one's.
                        if next.execution != batch.execution {
                            spent.insert(batch.execution);
                            current = Some(next.execution.clone());
                        }
                        held = Some(next);
                    }
                    None if !claim_apart => {
                        spent.insert(batch.execution);
                        current = None;
                    }
                    None => {}
                }
            }
            lat
        }));
    }
    let mut lat = Latencies::new();
    for t in tasks {
        lat.add(&t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_end = cpu_seconds(&pid);
    let rss = peak_rss_mb(server_pid(&server));
    let completed = stats.completed.load(Ordering::Relaxed);
    assert_eq!(completed, total_tests, "run hit the time limit");
    let per_thousand = |cpu: f64| cpu * 1e3 / total_tests as f64 * 1e3;
    Row(vec![
        Cell::Text(clients.to_string()),
        Cell::Text(format!("{} x {tests}", args.executions)),
        Cell::Text(
            if claim_apart {
                "claim apart"
            } else {
                "with the report"
            }
            .into(),
        ),
        Cell::num(elapsed, 1),
        Cell::num(queued_in, 1),
        Cell::num(total_tests as f64 / (elapsed - queued_in), 0),
        Cell::num(
            stats.requests.load(Ordering::Relaxed) as f64 / total_tests as f64,
            2,
        ),
        Cell::pair(q(&lat.report, 0.5), q(&lat.report, 0.99), 2),
        Cell::num(rss, 1),
        Cell::num(per_thousand(cpu_end - cpu_start), 0),
        Cell::num(per_thousand(cpu_end - cpu_queued), 0),
    ])
}

/// Registers `clients` runners (8 slots each) with the admin token and
/// returns their ids and bearer headers.
async fn register_runners(
    setup: &mut Conn,
    clients: usize,
    stats: &Stats,
) -> Vec<(String, HeaderValue)> {
    register_runners_with(setup, clients, 8, stats).await
}

/// [`register_runners`] with `slots` slots each.
async fn register_runners_with(
    setup: &mut Conn,
    clients: usize,
    slots: u32,
    stats: &Stats,
) -> Vec<(String, HeaderValue)> {
    let admin = bearer(TOKEN);
    let mut runners = Vec::new();
    for i in 0..clients {
        let body = format!(
            r#"{{"name":"bench-{i}","type":"custom","capacity":{{"slots":{slots},"cpu_millis":64000,"memory_mb":65536}}}}"#
        );
        let v = setup
            .post("/runners/register", &admin, body.into(), stats)
            .await;
        let created: Created = serde_json::from_slice(&v).unwrap();
        runners.push((created.id.to_owned(), bearer(created.token.unwrap())));
    }
    runners
}

/// One connection and one set of histograms per task: for the CI side
/// (as many as there are runners) and for each runner. Every connection
/// has had one request answered (an empty heartbeat of the runner it
/// belongs to, or of the first runner for the CI side), so the server has
/// accepted it; these requests are not counted.
async fn open_clients(
    addr: SocketAddr,
    runners: &[(String, HeaderValue)],
) -> (Vec<(Conn, Latencies)>, Vec<(Conn, Latencies)>) {
    let uncounted = &Stats::default();
    let open = |id: &str, token: &HeaderValue| {
        let (path, token) = (format!("/runners/{id}/heartbeat"), token.clone());
        async move {
            let mut conn = Conn::open(addr).await;
            conn.post(&path, &token, Bytes::from_static(b"{}"), uncounted)
                .await;
            (conn, Latencies::new())
        }
    };
    let (mut queue_side, mut runner_side) = (Vec::new(), Vec::new());
    for (id, token) in runners {
        queue_side.push(open(&runners[0].0, &runners[0].1).await);
        runner_side.push(open(id, token).await);
    }
    (queue_side, runner_side)
}

/// The floor run (see [`Args::floor`]): `clients` idle runners heartbeat
/// back to back until `total` heartbeats are answered.
async fn floor(server_bin: &str, clients: usize, total: u64) -> Row {
    let (_dir, server, addr) = start_server(server_bin);
    let stats = Arc::new(Stats::default());
    let mut setup = Conn::open(addr).await;
    let runners = register_runners(&mut setup, clients, &stats).await;
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let cpu_before = cpu_seconds(&server_pid(&server).to_string());
    let client_cpu_before = cpu_seconds("self");
    let mut tasks = Vec::new();
    for (id, token) in runners {
        let (stats, sent) = (stats.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut lat = Latencies::new();
            let beat_path = format!("/runners/{id}/heartbeat");
            while sent.fetch_add(1, Ordering::Relaxed) < total {
                let t0 = Instant::now();
                let hb = conn
                    .post(&beat_path, &token, Bytes::from_static(b"{}"), &stats)
                    .await;
                record(&mut lat.heartbeat, t0);
                let beat: Beat = serde_json::from_slice(&hb).expect("heartbeat body");
                assert!(beat.assignments.is_empty(), "an idle runner got work");
            }
            lat
        }));
    }
    let mut lat = Latencies::new();
    for t in tasks {
        lat.add(&t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&server_pid(&server).to_string()) - cpu_before;
    let client_cpu = cpu_seconds("self") - client_cpu_before;
    let requests = total as f64;
    Row(vec![
        Cell::Text(clients.to_string()),
        Cell::Text(total.to_string()),
        Cell::num(elapsed, 1),
        Cell::num(requests / elapsed, 0),
        Cell::pair(q(&lat.heartbeat, 0.5), q(&lat.heartbeat, 0.99), 2),
        Cell::num(cpu * 1e6 / requests, 0),
        Cell::num(client_cpu * 1e6 / requests, 0),
        Cell::num((cpu + client_cpu) * 1e6 / requests, 0),
    ])
}

/// One table cell: a label, or one or two figures ("p50 / p99") printed
/// with `decimals`.
#[derive(Clone)]
enum Cell {
    Text(String),
    Figures(Vec<f64>, usize),
}

impl Cell {
    fn num(value: f64, decimals: usize) -> Cell {
        Cell::Figures(vec![value], decimals)
    }

    fn pair(a: f64, b: f64, decimals: usize) -> Cell {
        Cell::Figures(vec![a, b], decimals)
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Text(t) => f.write_str(t),
            Cell::Figures(values, decimals) => {
                let shown: Vec<String> = values.iter().map(|v| format!("{v:.decimals$}")).collect();
                f.write_str(&shown.join(" / "))
            }
        }
    }
}

/// One run's figures, in the table's column order.
#[derive(Clone)]
struct Row(Vec<Cell>);

impl Row {
    /// The median of each figure over `runs` (all of one binary and client
    /// count, so the labels agree).
    fn median(runs: &[Row]) -> Row {
        let cells = runs[0]
            .0
            .iter()
            .enumerate()
            .map(|(i, first)| match first {
                Cell::Text(t) => Cell::Text(t.clone()),
                Cell::Figures(values, decimals) => Cell::Figures(
                    (0..values.len())
                        .map(|j| {
                            let mut all: Vec<f64> = runs
                                .iter()
                                .filter_map(|r| match &r.0[i] {
                                    Cell::Figures(v, _) => v.get(j).copied(),
                                    Cell::Text(_) => None,
                                })
                                .collect();
                            all.sort_by(f64::total_cmp);
                            all[all.len() / 2]
                        })
                        .collect(),
                    *decimals,
                ),
            })
            .collect();
        Row(cells)
    }

    fn print(&self, server: &str) {
        let cells: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        println!("| {server} | {} |", cells.join(" | "));
    }
}

fn server_pid(server: &Server) -> u32 {
    server.pid()
}

/// One thread: the generator's tasks never hop between cores, and the
/// server keeps the rest of the machine.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let columns = if args.floor.is_some() {
        "clients | idle heartbeats | seconds | requests/s | heartbeat p50 / p99 ms | server CPU µs per request | load generator CPU µs per request | both, µs per request"
    } else if !args.dynamic.is_empty() {
        "runners | executions x tests | next batch | seconds | of which queueing | tests/s after queueing | requests per test | report p50 / p99 ms | server peak RSS MB | server CPU ms per 1,000 tests | of which claims and reports"
    } else {
        "clients | executions x shards | seconds | requests/s | assignments/s | completions/s | queue→assignment p50 / p99 ms | heartbeat p50 / p99 ms | heartbeat p99 after queueing ms | report p50 / p99 ms | server peak RSS MB | server CPU µs per request | load generator CPU µs per request"
    };
    println!("| server | {columns} |");
    println!("|---{}|", "|---".repeat(columns.split(" | ").count()));
    let mut runs: Vec<(&str, usize, Row)> = Vec::new();
    for _ in 0..args.repeat.max(1) {
        for bin in &args.server_bin {
            for &c in &args.clients {
                if !args.dynamic.is_empty() {
                    for &tests in &args.dynamic {
                        let row = dynamic_run(&args, bin, c, tests).await;
                        row.print(bin);
                        // Apart per size: the medians are per row kind.
                        runs.push((bin, c * 1_000_000 + tests, row));
                    }
                    continue;
                }
                let row = match args.floor {
                    Some(total) => floor(bin, c, total).await,
                    None => run(&args, bin, c).await,
                };
                row.print(bin);
                runs.push((bin, c, row));
            }
        }
    }
    if args.repeat > 1 {
        let mut kinds: Vec<usize> = runs.iter().map(|(_, k, _)| *k).collect();
        kinds.sort_unstable();
        kinds.dedup();
        for bin in &args.server_bin {
            for &kind in &kinds {
                let mine: Vec<Row> = runs
                    .iter()
                    .filter(|(b, k, _)| b == bin && *k == kind)
                    .map(|(_, _, r)| r.clone())
                    .collect();
                if !mine.is_empty() {
                    Row::median(&mine).print(&format!("{bin}, median of {}", mine.len()));
                }
            }
        }
    }
}
