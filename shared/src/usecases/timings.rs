//! Test-duration history: importing what other tools recorded, so the very
//! first execution on TMS is already split by time.

use super::Orchestrator;
use crate::domain::TestTiming;
use crate::error::{Error, Result};
use crate::junit::{self, CaseOutcome, NameFormat};
use crate::ports::{Ports, Store};
use crate::time::Clock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

/// A durations file as the tools write it: pytest-split's `.test_durations`
/// (`{"tests/test_a.py::test_x": 0.52, …}`, or its older list of
/// `["name", seconds]` pairs) and Knapsack's JSON report
/// (`{"spec/a_spec.rb": 3.1, …}`) — names to seconds.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DurationsFile {
    Map(HashMap<String, f64>),
    Pairs(Vec<(String, f64)>),
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ImportedTimings {
    pub suite: String,
    /// Tests whose history got the imported duration as a new sample.
    pub imported: usize,
}

impl<P: Ports> Orchestrator<P> {
    /// Adds one run's duration to each test's history in `suite`: the
    /// stored histories are read, extended and written back, a few
    /// hundred tests per request and several requests at once. `run` is the
    /// lease and finish time of a run learned from a completion (a history
    /// takes each run once); imports pass `None` and count as now.
    pub(crate) async fn record_timings(
        &self,
        suite: &str,
        samples: &[(String, u64)],
        flaky: &[String],
        run: Option<(&crate::ids::LeaseId, crate::time::Timestamp)>,
    ) -> Result<()> {
        let run = run.map(|(lease, at)| (lease.clone(), at));
        let entries: Vec<Sample> = samples
            .iter()
            .map(|(name, ms)| (name.clone(), Some(*ms), run.clone()))
            .chain(flaky.iter().map(|name| (name.clone(), None, run.clone())))
            .collect();
        self.record_samples(suite, entries).await
    }

    /// Learns several finished runs at once (a batch of completions): each
    /// suite's histories are read and written once for all of them.
    pub(crate) async fn learn_runs(&self, runs: Vec<LearnedRun>) -> Result<()> {
        let mut by_suite: HashMap<String, Vec<Sample>> = HashMap::new();
        for run in runs {
            let at = Some((run.lease, run.finished_at));
            let entries = by_suite.entry(run.suite).or_default();
            entries.extend(run.ran.into_iter().map(|(n, ms)| (n, Some(ms), at.clone())));
            entries.extend(run.flaky.into_iter().map(|n| (n, None, at.clone())));
        }
        for (suite, entries) in by_suite {
            self.record_samples(&suite, entries).await?;
        }
        Ok(())
    }

    /// [`Self::record_timings`] of samples that may come from different
    /// runs, in groups of [`LEARN_CHUNK`] tests (each test's samples in one
    /// group), several groups at once.
    async fn record_samples(&self, suite: &str, entries: Vec<Sample>) -> Result<()> {
        use futures::stream::{StreamExt, TryStreamExt};
        let mut by_test: std::collections::BTreeMap<String, Vec<Sample>> = Default::default();
        for entry in entries {
            by_test.entry(entry.0.clone()).or_default().push(entry);
        }
        let mut groups: Vec<Vec<Sample>> = Vec::new();
        for (i, (_, samples)) in by_test.into_iter().enumerate() {
            if i % LEARN_CHUNK == 0 {
                groups.push(Vec::new());
            }
            if let Some(group) = groups.last_mut() {
                group.extend(samples);
            }
        }
        let writes = groups
            .into_iter()
            .map(|group| async move { self.record_some(suite, &group).await });
        futures::stream::iter(writes)
            .buffer_unordered(LEARN_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn record_some(&self, suite: &str, samples: &[Sample]) -> Result<()> {
        // A name may come twice (a test run twice in one shard); a batch
        // read must not ask for the same key twice.
        let names: Vec<String> = samples
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut known: HashMap<String, TestTiming> = self
            .store
            .test_timings(suite, &names)
            .await?
            .into_iter()
            .map(|t| (t.test.clone(), t))
            .collect();
        // The tests these runs change. Whether a run is news to a test's
        // history is decided at the test's first sample of that run: a
        // history that has the run already takes none of its samples.
        let mut changed: HashMap<String, TestTiming> = HashMap::new();
        let mut news: HashMap<(&str, Option<&str>), bool> = HashMap::new();
        let mut touched: std::collections::HashSet<&str> = Default::default();
        for (name, ms, run) in samples {
            let lease = run.as_ref().map(|(l, _)| l.as_str());
            let timing = changed.entry(name.clone()).or_insert_with(|| {
                known
                    .remove(name)
                    .unwrap_or_else(|| TestTiming::new(suite, name))
            });
            let fresh = *news
                .entry((name.as_str(), lease))
                .or_insert_with(|| lease.is_none_or(|l| timing.learns_from(l)));
            if !fresh {
                continue;
            }
            touched.insert(name.as_str());
            let now = run.as_ref().map_or_else(|| self.clock.now(), |(_, at)| *at);
            match ms {
                Some(ms) => timing.record(*ms, now),
                None => timing.record_flaky(now),
            }
        }
        let timings: Vec<TestTiming> = changed
            .into_iter()
            .filter(|(name, _)| touched.contains(name.as_str()))
            .map(|(_, t)| t)
            .collect();
        if timings.is_empty() {
            return Ok(());
        }
        self.store.put_test_timings(&timings).await
    }
}

/// One sample for a test's history: the test, its duration (none: a flaky
/// run), and the run it comes from (lease and finish time; none: an import).
type Sample = (
    String,
    Option<u64>,
    Option<(crate::ids::LeaseId, crate::time::Timestamp)>,
);

/// What one finished run teaches its suite's histories.
pub(crate) struct LearnedRun {
    pub suite: String,
    pub lease: crate::ids::LeaseId,
    pub finished_at: crate::time::Timestamp,
    /// Tests that ran, with their durations.
    pub ran: Vec<(String, u64)>,
    /// Tests that failed and then passed.
    pub flaky: Vec<String>,
}

/// Tests read and written per store round trip.
const IMPORT_CHUNK: usize = 500;
/// Tests of one run learned together, and how many such groups at once.
const LEARN_CHUNK: usize = 500;
const LEARN_CONCURRENCY: usize = 8;

impl<P: Ports> Orchestrator<P> {
    /// Adds each test's duration from a tool's durations file to `suite`'s
    /// history, as one more run of that test.
    pub async fn import_timings(
        &self,
        suite: &str,
        file: DurationsFile,
    ) -> Result<ImportedTimings> {
        let pairs: Vec<(String, f64)> = match file {
            DurationsFile::Map(m) => m.into_iter().collect(),
            DurationsFile::Pairs(p) => p,
        };
        let mut samples = Vec::with_capacity(pairs.len());
        for (name, seconds) in pairs {
            if !seconds.is_finite() || !(0.0..=7.0 * 86_400.0).contains(&seconds) {
                return Err(Error::validation(
                    "durations",
                    format!("{name:?}: {seconds} is not a duration in seconds"),
                ));
            }
            samples.push((name, (seconds * 1000.0).round().max(1.0) as u64));
        }
        self.import_samples(suite, samples).await
    }

    /// Adds the durations of a JUnit XML report's test cases (skipped ones
    /// and ones without a time left out) to `suite`'s history, each case
    /// named the way `names` says its tool names tests, by default by the
    /// id its tool knows it by ([`junit::JunitCase::natural_id`]).
    pub async fn import_junit(
        &self,
        suite: &str,
        xml: &str,
        names: Option<NameFormat>,
    ) -> Result<ImportedTimings> {
        let samples = junit::parse(xml)?
            .into_iter()
            .filter(|c| c.outcome != CaseOutcome::Skipped)
            .filter_map(|c| Some((crate::naming::own_id(&c, names), c.time_ms?.max(1))))
            .collect();
        self.import_samples(suite, samples).await
    }

    async fn import_samples(
        &self,
        suite: &str,
        samples: Vec<(String, u64)>,
    ) -> Result<ImportedTimings> {
        let suite = suite.trim();
        if suite.is_empty() || suite.len() > 256 {
            return Err(Error::validation("suite", "must be 1 to 256 characters"));
        }
        if samples.len() > self.config.max_tests {
            return Err(Error::validation(
                "durations",
                format!("at most {} tests", self.config.max_tests),
            ));
        }
        if let Some((name, _)) = samples
            .iter()
            .find(|(n, _)| n.trim().is_empty() || n.len() > 1024)
        {
            return Err(Error::validation(
                "durations",
                format!("test name {name:?} must be 1 to 1024 characters"),
            ));
        }
        for chunk in samples.chunks(IMPORT_CHUNK) {
            self.record_timings(suite, chunk, &[], None).await?;
        }
        Ok(ImportedTimings {
            suite: suite.to_owned(),
            imported: samples.len(),
        })
    }
}

/// One test's flaky history, as `GET /suites/{suite}/flaky` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FlakyTest {
    pub name: String,
    /// Runs in which it failed and then passed on an automatic retry.
    pub flaky_runs: u32,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = Option<i64>)]
    pub last_flaky_at: Option<crate::time::Timestamp>,
    /// Its expected duration (the mean of its recent runs within a factor
    /// of 2.5 of their median).
    pub estimate_ms: Option<u64>,
}

/// `GET /suites/{suite}/flaky`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FlakyTests {
    pub suite: String,
    /// Most flaky first.
    pub items: Vec<FlakyTest>,
}

impl<P: Ports> Orchestrator<P> {
    /// The suite's tests that have been flaky, most often first, then most
    /// recently.
    pub async fn flaky_tests(&self, suite: &str) -> Result<FlakyTests> {
        let suite = suite.trim();
        if suite.is_empty() || suite.len() > 256 {
            return Err(Error::validation("suite", "must be 1 to 256 characters"));
        }
        let mut items: Vec<FlakyTest> = self
            .store
            .suite_timings(suite)
            .await?
            .into_iter()
            .filter(|t| t.flaky_runs > 0)
            .map(|t| FlakyTest {
                estimate_ms: t.estimate(),
                name: t.test,
                flaky_runs: t.flaky_runs,
                last_flaky_at: t.last_flaky_at,
            })
            .collect();
        items.sort_by(|a, b| {
            (b.flaky_runs, b.last_flaky_at, &a.name).cmp(&(a.flaky_runs, a.last_flaky_at, &b.name))
        });
        Ok(FlakyTests {
            suite: suite.to_owned(),
            items,
        })
    }
}
