//! Shared test support: an orchestrator on a fresh store (embedded, or
//! DynamoDB on moto) with a manual clock, and a real `tms serve` process on a
//! free port.

pub mod faults;
pub mod iam;
pub mod meter;
pub mod moto;
pub mod recorder;
pub mod serverless;

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::marker::PhantomData;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tms::adapters::ReqwestHttp;
use tms::adapters::{DynamoStore, SqliteStore};
use tms::config::Config;
use tms::domain::SecretName;
use tms::domain::ShardResult;
use tms::ids::LeaseId;
use tms::ports::{DispatchOrder, Event, Events, Nudges, Ports, Secrets, Store};
use tms::time::{ManualClock, Timestamp};
use tms::usecases::{Orchestrator, ReportStatus, ShardReport};

/// Counts schedule nudges and keeps dispatch orders; the tests run
/// scheduling passes and dispatch attempts themselves.
#[derive(Clone, Default)]
pub struct CountingNudges(pub Arc<AtomicUsize>, pub Arc<Mutex<Vec<DispatchOrder>>>);

impl CountingNudges {
    /// The dispatch orders sent since the last call.
    pub fn take_orders(&self) -> Vec<DispatchOrder> {
        std::mem::take(&mut *self.1.lock().unwrap())
    }
}

impl Nudges for CountingNudges {
    async fn schedule(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    async fn dispatch(&self, order: DispatchOrder) {
        self.1.lock().unwrap().push(order);
    }
}

/// Dispatch credentials a test sets by name.
#[derive(Clone, Default)]
pub struct MapSecrets(pub Arc<Mutex<HashMap<String, String>>>);

impl MapSecrets {
    pub fn set(&self, name: &str, value: &str) {
        self.0.lock().unwrap().insert(name.into(), value.into());
    }
}

impl Secrets for MapSecrets {
    async fn secret(&self, name: &SecretName) -> tms::Result<Option<String>> {
        Ok(self.0.lock().unwrap().get(name.as_str()).cloned())
    }
}

/// Keeps published events so a test can deliver them (or not, or twice).
#[derive(Clone, Default)]
pub struct RecordedEvents(pub Arc<Mutex<Vec<Event>>>);

impl RecordedEvents {
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Events for RecordedEvents {
    async fn publish(&self, event: Event) -> tms::Result<()> {
        self.0.lock().unwrap().push(event);
        Ok(())
    }
}

/// A store the conformance suites run on: the embedded one, or DynamoDB on
/// the moto server that the test command starts.
pub trait Backend: Send + Sync + 'static {
    type Store: Store;
    /// A fresh, empty store of this kind.
    fn store() -> impl Future<Output = Self::Store> + Send;
}

/// The embedded SQLite store in a temporary file.
pub struct Sqlite;

impl Backend for Sqlite {
    type Store = SqliteStore;
    async fn store() -> SqliteStore {
        SqliteStore::temporary().expect("temporary store")
    }
}

/// DynamoDB on moto: a new table (created from `template.yaml`) per store.
pub struct Dynamo;

impl Backend for Dynamo {
    type Store = DynamoStore;
    async fn store() -> DynamoStore {
        moto::store().await
    }
}

/// DynamoDB on moto behind a [`faults::FaultProxy`] that answers 5 % of
/// requests with one of DynamoDB's retryable faults (throttling, 500s,
/// transaction conflicts, unprocessed batch keys and items).
pub struct FaultyDynamo;

/// The share of requests that get a fault in [`FaultyDynamo`].
pub const SUSTAINED_FAULT_RATE: f64 = 0.05;

impl Backend for FaultyDynamo {
    type Store = DynamoStore;
    async fn store() -> DynamoStore {
        moto::faulty_store(faults::FaultPlan::sustained(SUSTAINED_FAULT_RATE)).await
    }
}

pub struct TestPorts<B>(PhantomData<B>);

impl<B: Backend> Ports for TestPorts<B> {
    type Store = B::Store;
    type Clock = ManualClock;
    type Nudges = CountingNudges;
    type Events = RecordedEvents;
    type Secrets = MapSecrets;
    type Http = ReqwestHttp;
}

/// Where dispatched jobs in the tests are told to report.
pub const PUBLIC_URL: &str = "https://tms.test";

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// An orchestrator on a fresh store, its clock and its event log.
pub struct Harness<B: Backend = Sqlite> {
    pub app: Arc<Orchestrator<TestPorts<B>>>,
    pub clock: ManualClock,
    pub events: RecordedEvents,
    pub nudges: CountingNudges,
    pub secrets: MapSecrets,
}

impl Harness<Sqlite> {
    pub fn new() -> Self {
        Self::on(
            SqliteStore::temporary().expect("temporary store"),
            Config::default(),
        )
    }
}

impl<B: Backend> Harness<B> {
    /// A harness on a fresh store of backend `B`.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::on(B::store().await, config)
    }

    /// A harness on a store the test made (a store behind a fault proxy).
    pub fn on(store: B::Store, mut config: Config) -> Self {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let events = RecordedEvents::default();
        let nudges = CountingNudges::default();
        let secrets = MapSecrets::default();
        config.public_url.get_or_insert_with(|| PUBLIC_URL.into());
        let app = Orchestrator::new(
            tms::usecases::Adapters {
                store,
                clock: clock.clone(),
                nudges: nudges.clone(),
                events: events.clone(),
                secrets: secrets.clone(),
                http: ReqwestHttp::new().expect("HTTP client"),
            },
            config,
            tms::auth::hash(ADMIN_TOKEN),
        );
        Harness {
            app: Arc::new(app),
            clock,
            events,
            nudges,
            secrets,
        }
    }

    /// Delivers every published event to the aggregator, as the bus would.
    pub async fn deliver_events(&self) {
        for e in self.events.take() {
            self.app.handle_event(&e).await.expect("aggregate");
        }
    }

    /// Registers a custom runner without labels: `slots` slots, 16 cores,
    /// 32 GiB.
    pub async fn runner(&self, name: &str, slots: u32) -> tms::ids::RunnerId {
        let new = tms::usecases::NewRunner {
            name: name.into(),
            runner_type: tms::domain::RunnerType::Custom,
            labels: Default::default(),
            capacity: tms::domain::Resources::new(slots, 16_000, 32_768),
            priority: 0,
            dispatch: None,
            heartbeat_interval_seconds: None,
            scope: None,
        };
        self.app
            .register_runner(new)
            .await
            .unwrap()
            .runner
            .runner
            .id
    }
}

impl Default for Harness<Sqlite> {
    fn default() -> Self {
        Self::new()
    }
}

/// A regular execution of `suite` with the given test names and defaults
/// for everything else.
pub fn new_execution(
    suite: &str,
    tests: impl IntoIterator<Item = String>,
    parallelism: u32,
) -> tms::usecases::NewExecution {
    tms::usecases::NewExecution {
        suite: suite.into(),
        tests: tests
            .into_iter()
            .map(tms::usecases::TestInput::Name)
            .collect(),
        parallelism,
        priority: None,
        requirements: None,
        test_type: Default::default(),
        timeout_seconds: None,
        shard_timeout_seconds: None,
        max_attempts: None,
        ci: None,
        mode: Default::default(),
        max_batch_tests: None,
        retries: None,
        strict: false,
        metadata: Default::default(),
        require_runner: false,
    }
}

/// A `tms serve` process on 127.0.0.1 and a free port; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub url: String,
}

impl Server {
    /// Starts `bin serve` on port 0 over `data_dir` and waits until it listens.
    pub fn start(bin: &str, data_dir: &Path, admin_token: Option<&str>) -> Server {
        Self::start_with(bin, data_dir, admin_token, &[]).0
    }

    /// Like [`Server::start`], with extra arguments; also returns what the
    /// server printed before it listened.
    pub fn start_with(
        bin: &str,
        data_dir: &Path,
        admin_token: Option<&str>,
        extra: &[&str],
    ) -> (Server, Vec<String>) {
        Self::start_with_env(bin, data_dir, admin_token, extra, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables.
    pub fn start_with_env(
        bin: &str,
        data_dir: &Path,
        admin_token: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, Vec<String>) {
        Self::spawn(bin, "127.0.0.1:0", data_dir, admin_token, extra, env)
    }

    /// Starts `bin serve` again over `data_dir` on the address `url` had
    /// (a restart: clients that knew the old server find the new one).
    pub fn restart_at(bin: &str, url: &str, data_dir: &Path, admin_token: Option<&str>) -> Server {
        let listen = url.trim_start_matches("http://");
        Self::spawn(bin, listen, data_dir, admin_token, &[], &[]).0
    }

    fn spawn(
        bin: &str,
        listen: &str,
        data_dir: &Path,
        admin_token: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, Vec<String>) {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match admin_token {
            Some(t) => cmd.env("TMS_ADMIN_TOKEN", t),
            None => cmd.env_remove("TMS_ADMIN_TOKEN"),
        };
        let mut child = cmd.spawn().expect("start tms serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = Vec::new();
        let url = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read stdout");
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.trim().to_owned();
            }
            printed.push(line);
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let base = format!("{url}/api/enhanced-orchestration");
        (Server { child, base, url }, printed)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 100 ms until it gives a value; fails the test,
/// naming `what`, after 20 s (work that arrives through a server's own
/// queues and timers, not in the test's process).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An HTTP client with a bounded timeout, so a hung server fails the test.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Runs each named generic test function (`async fn name<B: Backend>()`)
/// once per store: `sqlite::name`, `dynamo::name`, and `dynamo_faults::name`
/// (DynamoDB under a sustained fault rate).
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<$crate::Sqlite>().await
                }
            )*
        }
        mod dynamo {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<$crate::Dynamo>().await
                }
            )*
        }
        mod dynamo_faults {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<$crate::FaultyDynamo>().await
                }
            )*
        }
    };
}

/// A JUnit report's cases as a CI test-history view knows them — each
/// classname and name as written, with its outcome — sorted by name, so
/// two reports of the same run compare equal case for case.
pub fn junit_cases(xml: &str) -> Vec<(String, String, tms::junit::CaseOutcome)> {
    let mut cases: Vec<_> = tms::junit::parse(xml)
        .unwrap_or_else(|e| panic!("not a JUnit report: {e}"))
        .into_iter()
        .map(|c| (c.classname, c.name, c.outcome))
        .collect();
    cases.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    cases
}

/// Validates a JUnit XML report against the common JUnit schema
/// (`junit-10.xsd`) with lxml, both provided by `scripts/junit-xsd`
/// (`scripts/test` runs it). Panics with the validator's complaints.
pub fn assert_valid_junit(xml: &str) {
    let (Ok(xsd), Ok(python)) = (
        std::env::var("TMS_JUNIT_XSD"),
        std::env::var("TMS_XML_PYTHON"),
    ) else {
        panic!("TMS_JUNIT_XSD and TMS_XML_PYTHON are not set: run eval \"$(scripts/junit-xsd)\" (scripts/test does)");
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.xml");
    std::fs::write(&report, xml).expect("write report");
    const CHECK: &str = "import sys\nfrom lxml import etree\n\
schema = etree.XMLSchema(etree.parse(sys.argv[1]))\n\
doc = etree.parse(sys.argv[2])\n\
if not schema.validate(doc):\n    print(schema.error_log)\n    sys.exit(1)\n";
    let out = std::process::Command::new(python)
        .args(["-c", CHECK])
        .arg(&xsd)
        .arg(&report)
        .output()
        .expect("run the XML validator");
    assert!(
        out.status.success(),
        "the report does not validate against {xsd}:\n{}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `tms` binary as a CI step runs it against `url` with `token`, outside
/// any CI job (the CI variables of the machine running the tests are
/// removed, so no CI metadata keys the executions it queues).
pub fn tms_command(bin: &str, url: &str, token: &str) -> std::process::Command {
    let mut command = std::process::Command::new(bin);
    command.env("TMS_URL", url).env("TMS_TOKEN", token);
    for ci in ["GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "TF_BUILD"] {
        command.env_remove(ci);
    }
    command
}

/// A shard's final report carrying `results`: failed if any test failed,
/// passed otherwise.
pub fn final_report(shard_index: u32, lease_id: LeaseId, results: ShardResult) -> ShardReport {
    let status = if results.failed > 0 {
        ReportStatus::Failed
    } else {
        ReportStatus::Passed
    };
    ShardReport {
        shard_index,
        lease_id,
        status,
        results: Some(results),
    }
}

/// A process's peak resident memory so far (`VmHWM`), in MB; 0 where
/// `/proc` does not say (not Linux, or the process is gone).
pub fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
