//! Queueing executions (with idempotency), reading them, cancel and retry.

use super::runners::{validate_labels, validate_runner_types};
use super::{retry_on_conflict, Orchestrator};
use crate::auth;
use crate::domain::shard::Released;
use crate::domain::{
    Bounded, CiMetadata, Dispenser, Execution, ExecutionStatus, Mode, Requirements, RetryPolicy,
    RunnerType, Shard, ShardStatus, TestSpec, TestType, Totals,
};
use crate::error::{Entity, Error, Result};
use crate::ids::ExecutionId;
use crate::ports::{ExecutionFilter, IdempotencyRecord, Nudges, Page, Ports, Store};
use crate::scheduling::split_tests;
use crate::time::Clock;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use utoipa::ToSchema;

/// A test as given when queueing: a bare name, or a name with an expected duration.
#[derive(Debug, Clone, ToSchema)]
// For the OpenAPI schema only (utoipa reads it: one of the two shapes);
// deserialising is by hand, below.
#[serde(untagged)]
pub enum TestInput {
    Name(String),
    Timed(TimedTest),
}

/// By hand rather than `#[serde(untagged)]`: that buffers every test of a
/// queue call and builds an error for each variant it rules out (about a
/// tenth of the server's time per request in the load benchmark with 400
/// tests per execution). A string is
/// a name, a map a [`TimedTest`]; anything else is refused with one message.
impl<'de> Deserialize<'de> for TestInput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Test;
        impl<'de> serde::de::Visitor<'de> for Test {
            type Value = TestInput;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a test name or {\"name\", \"duration_hint_ms\"}")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<TestInput, E> {
                Ok(TestInput::Name(name.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, name: String) -> Result<TestInput, E> {
                Ok(TestInput::Name(name))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TestInput, A::Error> {
                TimedTest::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TestInput::Timed)
            }
        }
        deserializer.deserialize_any(Test)
    }
}

/// A test name with how long it is expected to take.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimedTest {
    #[schema(min_length = 1, max_length = 1024)]
    pub name: String,
    pub duration_hint_ms: Option<u64>,
}

/// What each shard needs; unset CPU and memory come from the test type's defaults.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequirementsInput {
    #[serde(default)]
    pub labels: BTreeSet<String>,
    #[serde(default)]
    pub runner_types: Vec<RunnerType>,
    pub cpu_millis: Option<u32>,
    pub memory_mb: Option<u32>,
}

/// A queue call's CI provenance, each field bounded as it is parsed (a
/// commit is a hash, a URL a link: megabytes there are abuse, and every
/// listing would carry them).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CiInput {
    pub provider: Option<Bounded<64>>,
    pub build_id: Option<Bounded<256>>,
    pub job: Option<Bounded<256>>,
    pub commit: Option<Bounded<128>>,
    pub branch: Option<Bounded<256>>,
    pub url: Option<Bounded<2048>>,
    /// The build's attempt: GitHub's `GITHUB_RUN_ATTEMPT`, Azure's
    /// `SYSTEM_JOBATTEMPT`. A later attempt of a build whose execution did
    /// not pass (a "re-run failed jobs") runs the failed shards again and
    /// waits for the new verdict; passed shards are not run again.
    #[schema(minimum = 1)]
    pub attempt: Option<u32>,
    /// The repository or project the build is of (`tms queue` reads
    /// `GITHUB_REPOSITORY`, `CI_PROJECT_PATH`, `BUILD_REPOSITORY_NAME` or
    /// `GIT_URL`): agents declaring it take the execution when it requires
    /// no label.
    pub project: Option<Bounded<256>>,
}

impl From<CiInput> for CiMetadata {
    fn from(ci: CiInput) -> CiMetadata {
        CiMetadata {
            provider: ci.provider.map(Into::into),
            build_id: ci.build_id.map(Into::into),
            job: ci.job.map(Into::into),
            commit: ci.commit.map(Into::into),
            branch: ci.branch.map(Into::into),
            url: ci.url.map(Into::into),
            attempt: ci.attempt,
            project: ci.project.map(Into::into),
        }
    }
}

/// Body of `POST /executions/queue`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExecution {
    #[schema(min_length = 1, max_length = 256)]
    pub suite: String,
    #[serde(default)]
    pub tests: Vec<TestInput>,
    /// Number of shards (1 = a regular execution).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 64)]
    pub parallelism: u32,
    /// 0-100, higher runs first. Default 50.
    #[schema(minimum = 0, maximum = 100)]
    pub priority: Option<i32>,
    pub requirements: Option<RequirementsInput>,
    #[serde(default)]
    pub test_type: TestType,
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_seconds: Option<u64>,
    /// How long one shard attempt may take before it is retried elsewhere (default: the execution timeout).
    #[schema(minimum = 1, maximum = 604800)]
    pub shard_timeout_seconds: Option<u64>,
    #[schema(minimum = 1, maximum = 10)]
    pub max_attempts: Option<u32>,
    /// CI provenance. With `provider` and `build_id`, the execution is keyed
    /// by (provider, build id, suite): every job of the build, and every
    /// retry of a job, that queues the same tests gets the same execution.
    pub ci: Option<CiInput>,
    /// `static` (default): TMS assigns shards to registered runners.
    /// `by_index`: the CI's own parallel jobs each claim the shard of their
    /// index (`POST /webhooks/parallel-execution/{id}/shards/{index}/claim`).
    /// `dynamic`: runners claim batches (`POST /executions/{id}/claims`)
    /// until the tests run out; `parallelism` is how many runners are
    /// expected.
    #[serde(default)]
    pub mode: Mode,
    /// `dynamic` only: the most tests one batch may hold (1 runs each test
    /// in a batch of its own, as tools that start a process per spec
    /// want). Default: batches are sized by expected work alone.
    #[schema(minimum = 1, maximum = 20000)]
    pub max_batch_tests: Option<u32>,
    /// Automatic retries of failed tests on another runner (default: the
    /// matching load-balancing rule's, else none).
    pub retries: Option<RetryPolicy>,
    /// Fail the execution when a test is flaky (failed, then passed on a
    /// retry). Default false: flaky tests are reported, the run passes.
    #[serde(default)]
    pub strict: bool,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Refuse (422) instead of queueing when no registered runner could
    /// ever run it. Default false: it is queued, with a warning.
    #[serde(default)]
    pub require_runner: bool,
}

impl NewExecution {
    /// The key every queue call of one CI build's run of this suite shares,
    /// and a digest of the work it asks for (a job of the same build asking
    /// for other tests is refused rather than given the wrong shards).
    /// Which job is asking, its URL and the like are left out of the digest:
    /// they differ between the jobs of one build.
    fn ci_key(&self) -> Option<(String, String)> {
        let ci = self.ci.as_ref()?;
        let provider = ci
            .provider
            .as_deref()
            .map(str::trim)
            .filter(|p| !p.is_empty())?;
        let build = ci
            .build_id
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())?;
        let key = format!("ci/{provider}/{build}/{}", self.suite.trim());
        let mut work = Sha256::new();
        for t in &self.tests {
            let name = match t {
                TestInput::Name(n) => n,
                TestInput::Timed(t) => &t.name,
            };
            work.update(name.as_bytes());
            work.update([0]);
        }
        work.update(self.parallelism.to_be_bytes());
        work.update([self.mode as u8]);
        if let Some(max) = self.max_batch_tests {
            work.update(max.to_be_bytes());
        }
        Some((key, hex::encode(work.finalize())))
    }
}

fn one() -> u32 {
    1
}

/// The outcome of a queue call.
pub struct QueuedExecution {
    pub execution: Execution,
    pub shards: Vec<Shard>,
    /// The webhook token for this caller, shown only now.
    pub webhook_token: String,
    /// True when an earlier call with the same `Idempotency-Key` created it.
    pub replayed: bool,
    /// What the caller should know, e.g. that no registered runner could
    /// run it.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for QueuedExecution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedExecution")
            .field("execution", &self.execution.id)
            .field("shards", &self.shards.len())
            .field("webhook_token", &"<redacted>")
            .field("replayed", &self.replayed)
            .finish()
    }
}

/// Most bytes of executions one listing page holds (as stored, about what
/// the response carries); at least one execution is always returned.
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// The length of `value` as JSON, counted without building the text.
fn json_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serialising plain data into a counter cannot fail; a failure would
    // only make the page longer.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn check_len(field: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() || value.len() > max {
        return Err(Error::validation(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    Ok(())
}

impl<P: Ports> Orchestrator<P> {
    /// What the suite's history expects of the tests that came without a
    /// duration hint: test name to milliseconds. A lookup that fails only
    /// costs the split its balance, so it is logged, not returned.
    async fn learned_estimates(&self, new: &NewExecution) -> HashMap<String, u64> {
        let suite = new.suite.trim();
        if suite.is_empty() || suite.len() > 256 || new.tests.len() > self.config.max_tests {
            return HashMap::new();
        }
        let unhinted: Vec<String> = new
            .tests
            .iter()
            .filter_map(|t| match t {
                TestInput::Name(name) => Some(name.clone()),
                TestInput::Timed(t) if t.duration_hint_ms.is_none() => Some(t.name.clone()),
                TestInput::Timed(_) => None,
            })
            .collect();
        if unhinted.is_empty() {
            return HashMap::new();
        }
        let found = match self.store.test_timings(suite, &unhinted).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, suite, "test timings unavailable; splitting without them");
                return HashMap::new();
            }
        };
        let mut learned: HashMap<String, u64> = found
            .into_iter()
            .filter_map(|t| Some((t.test.clone(), t.estimate()?)))
            .collect();
        // Files, classes or describe blocks queued whole with no history of
        // their own: what their cases took. After a run of the files, the
        // aggregator has learned each file whole, so this is needed only
        // when nothing queued has history (the first run after durations
        // were imported per test): one read of the suite's history then,
        // and none when some tests are known (a few new tests among known
        // ones weigh the median of the others).
        let missing: Vec<String> = if learned.is_empty() {
            unhinted
        } else {
            Vec::new()
        };
        if !missing.is_empty() {
            match self.store.suite_timings(suite).await {
                Ok(all) => {
                    let known: Vec<(String, u64)> = all
                        .into_iter()
                        .filter_map(|t| Some((t.test.clone(), t.estimate()?)))
                        .collect();
                    learned.extend(crate::naming::roll_up(
                        &missing,
                        known.iter().map(|(n, ms)| (n.as_str(), *ms)),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, suite, "suite timings unavailable; no roll-up")
                }
            }
        }
        learned
    }

    /// Builds the execution and its shards (a dynamic execution: its tests
    /// in claim order, cut into batches as runners claim); tests without a
    /// hint take the `learned` estimate when there is one (and the median
    /// of the others when not, see [`split_tests`]).
    fn build_execution(
        &self,
        new: NewExecution,
        learned: &HashMap<String, u64>,
    ) -> Result<(Execution, Vec<Shard>, Vec<TestSpec>)> {
        let cfg = &self.config;
        check_len("suite", &new.suite, 256)?;
        if let Some(r) = &new.retries {
            r.validate("retries")?;
        }
        if new.tests.len() > cfg.max_tests {
            return Err(Error::validation(
                "tests",
                format!("at most {} tests", cfg.max_tests),
            ));
        }
        if new.parallelism == 0 || new.parallelism > cfg.max_parallelism {
            return Err(Error::validation(
                "parallelism",
                format!("must be between 1 and {}", cfg.max_parallelism),
            ));
        }
        if new.tests.is_empty() {
            // A runner handed an empty list would run nothing (a verdict
            // with no tests) or, substituting nothing into its command, the
            // whole suite: neither is what the caller asked for.
            return Err(Error::validation(
                "tests",
                "at least one test is needed: name the tests, files or globs to run",
            ));
        }
        match new.max_batch_tests {
            Some(_) if new.mode != Mode::Dynamic => {
                return Err(Error::validation(
                    "max_batch_tests",
                    "only a dynamic execution's batches are cut by runners' claims",
                ))
            }
            Some(max) if max == 0 || max as usize > cfg.max_tests => {
                return Err(Error::validation(
                    "max_batch_tests",
                    format!("must be between 1 and {}", cfg.max_tests),
                ))
            }
            _ => {}
        }
        let priority = new.priority.unwrap_or(cfg.default_priority);
        if !(0..=100).contains(&priority) {
            return Err(Error::validation("priority", "must be between 0 and 100"));
        }
        let timeout = new.timeout_seconds.unwrap_or(cfg.default_timeout_secs);
        if !(1..=7 * 24 * 3600).contains(&timeout) {
            return Err(Error::validation(
                "timeout_seconds",
                "must be between 1 and 604800",
            ));
        }
        let shard_timeout = new.shard_timeout_seconds.unwrap_or(timeout);
        if shard_timeout == 0 || shard_timeout > timeout {
            return Err(Error::validation(
                "shard_timeout_seconds",
                "must be between 1 and timeout_seconds",
            ));
        }
        let max_attempts = new.max_attempts.unwrap_or(cfg.default_max_attempts);
        if !(1..=10).contains(&max_attempts) {
            return Err(Error::validation(
                "max_attempts",
                "must be between 1 and 10",
            ));
        }
        if serde_json::to_string(&new.metadata).map_or(0, |s| s.len()) > 16 * 1024 {
            return Err(Error::validation(
                "metadata",
                "must be at most 16 KiB of JSON",
            ));
        }
        let mut seen = BTreeSet::new();
        let tests: Vec<TestSpec> = new
            .tests
            .into_iter()
            .map(|t| match t {
                TestInput::Name(name) => TestSpec {
                    duration_hint_ms: learned.get(&name).copied(),
                    name,
                },
                TestInput::Timed(t) => TestSpec {
                    duration_hint_ms: t.duration_hint_ms.or_else(|| learned.get(&t.name).copied()),
                    name: t.name,
                },
            })
            .collect();
        for t in &tests {
            check_len("tests[].name", &t.name, 1024)?;
            if !seen.insert(t.name.as_str()) {
                return Err(Error::validation(
                    "tests",
                    format!("test {:?} is listed twice", t.name),
                ));
            }
        }
        let req = new.requirements.unwrap_or_default();
        validate_labels(&req.labels, "requirements.labels")?;
        validate_runner_types(&req.runner_types, "requirements.runner_types")?;
        let defaults = cfg.resource_defaults(new.test_type);
        let suite = new.suite.trim().to_owned();
        let ci: Option<CiMetadata> = new.ci.map(Into::into);
        // Work that requires no label is for the runners serving its suite
        // or project (or any unlabelled work).
        let affinity = req.labels.is_empty().then(|| crate::domain::Affinity {
            suite: suite.clone(),
            project: ci.as_ref().and_then(|c| c.project.clone()),
        });
        let requirements = Requirements {
            labels: req.labels,
            runner_types: req.runner_types,
            cpu_millis: req.cpu_millis.unwrap_or(defaults.cpu_millis),
            memory_mb: req.memory_mb.unwrap_or(defaults.memory_mb),
            affinity,
        };

        let now = self.clock.now();
        let id = ExecutionId::generate();
        // Static and by_index: one shard per runner or job, balanced by
        // time. Dynamic: the tests in claim order (longest first), cut into
        // batches when runners claim; `parallelism` is how many runners are
        // expected to claim.
        let (plan, queue, dispenser) = match new.mode {
            Mode::Dynamic => {
                let (hinted, queue) = crate::scheduling::dynamic::claim_order(&tests);
                let dispenser = Dispenser {
                    next: 0,
                    left_ms: queue.iter().filter_map(|t| t.duration_hint_ms).sum(),
                    runners: new.parallelism,
                    hinted,
                    max_batch_tests: new.max_batch_tests,
                    overhead_ms: None,
                    busy: Vec::new(),
                };
                (Vec::new(), queue, Some(dispenser))
            }
            Mode::Static | Mode::ByIndex => {
                (split_tests(&tests, new.parallelism), Vec::new(), None)
            }
        };
        let shards: Vec<Shard> = plan
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut shard = Shard::new(id.clone(), &suite, i as u32, p.tests, p.estimated_ms);
                shard.mode = new.mode;
                shard
            })
            .collect();
        let execution = Execution {
            id,
            suite,
            status: ExecutionStatus::Queued,
            status_reason: None,
            priority,
            requirements,
            test_type: new.test_type,
            timeout_seconds: timeout,
            shard_timeout_seconds: shard_timeout,
            max_attempts,
            ci,
            mode: new.mode,
            retries: new.retries,
            retries_used: 0,
            strict: new.strict,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            deadline: now.plus_secs(timeout),
            shard_count: shards.len() as u32,
            test_count: tests.len() as u32,
            totals: Totals::default(),
            webhook_token_hashes: Vec::new(),
            counted: false,
            dispenser,
            returned: Vec::new(),
            version: 1,
        };
        Ok((execution, shards, queue))
    }

    /// Queues an execution. With an idempotency key, a repeat of the same
    /// request returns the execution the first one created (with a fresh
    /// webhook token for this caller); a different body is refused.
    ///
    /// Without a key, CI metadata with a provider and build id keys the
    /// execution by (provider, build id, suite) for `ci_key_ttl_secs`.
    pub async fn queue_execution(
        &self,
        new: NewExecution,
        idempotency: Option<(String, String)>,
    ) -> Result<QueuedExecution> {
        let (idempotency, ttl) = match idempotency {
            Some(given) => (Some(given), self.config.idempotency_ttl_secs),
            None => (new.ci_key(), self.config.ci_key_ttl_secs),
        };
        let attempt = new.ci.as_ref().and_then(|ci| ci.attempt);
        if let Some((key, body_hash)) = &idempotency {
            check_len("Idempotency-Key", key, 255)?;
            if let Some(found) = self.replay(key, body_hash, attempt).await? {
                return Ok(found);
            }
        }
        let learned = self.learned_estimates(&new).await;
        let require_runner = new.require_runner;
        let (mut execution, shards, queue) = self.build_execution(new, &learned)?;
        let unrunnable = self.unrunnable_reason(&execution).await?;
        if let (true, Some(why)) = (require_runner, &unrunnable) {
            return Err(Error::validation(
                "requirements",
                format!("{why} (require_runner is set)"),
            ));
        }
        let issued = auth::issue(Some(execution.id.as_str()));
        // A new record: its first token, not a change to it.
        execution.webhook_token_hashes = vec![issued.hash];
        let record = idempotency
            .as_ref()
            .map(|(key, body_hash)| IdempotencyRecord {
                key: key.clone(),
                body_hash: body_hash.clone(),
                execution_id: execution.id.clone(),
                expires_at: execution.created_at.plus_secs(ttl),
            });
        match self
            .store
            .create_execution(&execution, &shards, &queue, record.as_ref())
            .await
        {
            Ok(()) => {}
            // Another request with the same key won the race: answer as its replay.
            Err(e) if e.is_conflict() => {
                return match &idempotency {
                    Some((key, body_hash)) => self.replay(key, body_hash, attempt).await?.ok_or(e),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        }
        self.nudges.schedule().await;
        Ok(QueuedExecution {
            execution,
            shards,
            webhook_token: issued.token,
            replayed: false,
            warnings: unrunnable.into_iter().collect(),
        })
    }

    /// The execution an earlier call with the same key created, with a
    /// fresh webhook token for this caller. A later CI `attempt` of a
    /// build whose execution did not pass runs its failed shards again.
    async fn replay(
        &self,
        key: &str,
        body_hash: &str,
        attempt: Option<u32>,
    ) -> Result<Option<QueuedExecution>> {
        let now = self.clock.now();
        let Some(record) = self.store.get_idempotency(key, now).await? else {
            return Ok(None);
        };
        if record.body_hash != body_hash {
            return Err(Error::IdempotencyMismatch);
        }
        let issued = auth::issue(Some(record.execution_id.as_str()));
        let (mut execution, mut shards, rerun) = retry_on_conflict(|| async {
            let (mut e, shards) = self.load(&record.execution_id).await?;
            let version = e.version;
            let rerun = e.rerun_for_attempt(attempt, self.clock.now())?;
            e.add_webhook_token(issued.hash.clone(), self.clock.now());
            self.write_execution(&mut e, version).await?;
            Ok((e, shards, rerun))
        })
        .await?;
        if rerun {
            self.run_failed_again(&execution.id).await?;
            (execution, shards) = self.load(&execution.id).await?;
        }
        Ok(Some(QueuedExecution {
            execution,
            shards,
            webhook_token: issued.token,
            replayed: true,
            warnings: Vec::new(),
        }))
    }

    pub(crate) async fn load(&self, id: &ExecutionId) -> Result<(Execution, Vec<Shard>)> {
        self.store
            .load_execution(id)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Execution, id))
    }

    /// An execution and one shard; a missing shard is not found.
    pub(crate) async fn load_shard(
        &self,
        id: &ExecutionId,
        index: u32,
    ) -> Result<(Execution, Shard)> {
        match self.store.load_shard(id, index).await? {
            Some(found) => Ok(found),
            None if self.store.get_execution(id).await?.is_none() => {
                Err(Error::not_found(Entity::Execution, id))
            }
            None => Err(Error::not_found(Entity::Shard, format!("{id}#{index}"))),
        }
    }

    /// The execution with its shards, as the status endpoint shows it.
    /// The execution and its shards. While it waits with no shard ever
    /// assigned, `status_reason` says why when no registered runner could
    /// run it (worked out on read; nothing is stored).
    pub async fn execution_status(&self, id: &ExecutionId) -> Result<(Execution, Vec<Shard>)> {
        let (mut execution, shards) = self.load(id).await?;
        if execution.status == ExecutionStatus::Queued && execution.status_reason.is_none() {
            execution.status_reason = self.unrunnable_reason(&execution).await?;
        }
        Ok((execution, shards))
    }

    /// Why no registered runner could ever run `e`.
    async fn unrunnable_reason(&self, e: &Execution) -> Result<Option<String>> {
        let runners = self.all_runners().await?;
        let rules = self.store.list_rules().await?;
        Ok(crate::scheduling::unrunnable_reason(e, &runners, &rules))
    }

    /// The execution, its shards and every test's merged result.
    pub async fn execution_report(
        &self,
        id: &ExecutionId,
    ) -> Result<(Execution, Vec<Shard>, Vec<crate::domain::MergedTest>)> {
        let (execution, shards) = self.load(id).await?;
        let chunks = self.store.results(id, None).await?;
        let tests = crate::domain::results::merge(&shards, &chunks)?;
        Ok((execution, shards, tests))
    }

    pub async fn list_executions(&self, filter: ExecutionFilter) -> Result<Page<Execution>> {
        if !(1..=200).contains(&filter.limit) {
            return Err(Error::validation("limit", "must be between 1 and 200"));
        }
        let mut page = self.store.list_executions(&filter).await?;
        // Bounded in bytes as well as items: the dashboard polls this page,
        // and a page of large executions is cut short with a cursor to the
        // rest rather than sent whole.
        page.cut_to_bytes(MAX_PAGE_BYTES, json_len, |e| e.id.to_string());
        Ok(page)
    }

    /// Cancels an unfinished execution, stops its shards and frees their capacity.
    pub async fn cancel_execution(&self, id: &ExecutionId) -> Result<Execution> {
        let now = self.clock.now();
        retry_on_conflict(|| async {
            let (mut e, _) = self.load(id).await?;
            let version = e.version;
            e.cancel("cancelled by request".into(), now)?;
            self.write_execution(&mut e, version).await
        })
        .await?;
        self.stop_open_shards(id, "execution cancelled").await?;
        self.fold_finished(id).await
    }

    /// Cancels every unfinished shard of a finished execution, giving back capacity.
    pub(crate) async fn stop_open_shards(&self, id: &ExecutionId, reason: &str) -> Result<()> {
        let now = self.clock.now();
        self.change_shards(id, |s| !s.status.is_terminal(), |s| s.cancel(reason, now))
            .await?;
        self.nudges.schedule().await;
        Ok(())
    }

    /// Applies `change` to every shard that `wanted` picks, each as its own
    /// conditional write (re-read and retried on a lost race), releasing
    /// whatever lease a changed shard gave up.
    async fn change_shards(
        &self,
        id: &ExecutionId,
        wanted: impl Fn(&Shard) -> bool,
        change: impl Fn(&mut Shard) -> Result<Option<Released>>,
    ) -> Result<()> {
        let (_, shards) = self.load(id).await?;
        for index in shards.iter().filter(|s| wanted(s)).map(|s| s.index) {
            retry_on_conflict(|| async {
                let (execution, mut shard) = self.load_shard(id, index).await?;
                if !wanted(&shard) {
                    return Ok(());
                }
                let read_as = (shard.version, shard.status);
                let held = change(&mut shard)?;
                self.save_shard(&execution, shard, read_as, held).await
            })
            .await?;
        }
        Ok(())
    }

    /// Runs the failed, errored or cancelled shards of a finished execution
    /// (failed, errored, timed out or cancelled) again.
    pub async fn retry_execution(&self, id: &ExecutionId) -> Result<Execution> {
        let now = self.clock.now();
        retry_on_conflict(|| async {
            let (mut e, _) = self.load(id).await?;
            let version = e.version;
            e.reopen(now)?;
            self.write_execution(&mut e, version).await
        })
        .await?;
        self.run_failed_again(id).await
    }

    /// Queues the failed, errored and cancelled shards of a reopened
    /// execution again; its passed shards and their results stand.
    async fn run_failed_again(&self, id: &ExecutionId) -> Result<Execution> {
        let failed = |s: &Shard| {
            matches!(
                s.status,
                ShardStatus::Failed | ShardStatus::Errored | ShardStatus::Cancelled
            )
        };
        self.change_shards(id, failed, |s| s.retry().map(|()| None))
            .await?;
        self.nudges.schedule().await;
        self.aggregate(id).await
    }
}
