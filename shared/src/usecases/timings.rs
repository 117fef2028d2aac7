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
        use futures::stream::{StreamExt, TryStreamExt};
        if samples.len() + flaky.len() <= LEARN_CHUNK {
            return self.record_some(suite, samples, flaky, run).await;
        }
        // Each test's samples and flaky mark stay in one group.
        let mut by_test: std::collections::BTreeMap<&str, (Vec<u64>, bool)> =
            std::collections::BTreeMap::new();
        for (name, ms) in samples {
            by_test.entry(name).or_default().0.push(*ms);
        }
        for name in flaky {
            by_test.entry(name).or_default().1 = true;
        }
        let mut groups: Vec<LearnGroup> = Vec::new();
        for (i, (name, (durations, is_flaky))) in by_test.into_iter().enumerate() {
            if i % LEARN_CHUNK == 0 {
                groups.push(Default::default());
            }
            if let Some((samples, flaky)) = groups.last_mut() {
                samples.extend(durations.into_iter().map(|ms| (name.to_owned(), ms)));
                if is_flaky {
                    flaky.push(name.to_owned());
                }
            }
        }
        let writes = groups.into_iter().map(|(samples, flaky)| async move {
            self.record_some(suite, &samples, &flaky, run).await
        });
        futures::stream::iter(writes)
            .buffer_unordered(LEARN_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn record_some(
        &self,
        suite: &str,
        samples: &[(String, u64)],
        flaky: &[String],
        run: Option<(&crate::ids::LeaseId, crate::time::Timestamp)>,
    ) -> Result<()> {
        let now = run.map_or_else(|| self.clock.now(), |(_, at)| at);
        // A name may come twice (a test run twice in one shard); a batch
        // read must not ask for the same key twice.
        let names: Vec<String> = samples
            .iter()
            .map(|(n, _)| n.clone())
            .chain(flaky.iter().cloned())
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
        // The tests this run changes; a history that already has the run
        // (`run` given) is left as it is.
        let mut changed: HashMap<String, TestTiming> = HashMap::new();
        let mut skipped: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let names = samples
            .iter()
            .map(|(n, ms)| (n, Some(*ms)))
            .chain(flaky.iter().map(|n| (n, None)));
        for (name, ms) in names {
            if skipped.contains(name.as_str()) {
                continue;
            }
            if !changed.contains_key(name) {
                let mut timing = known
                    .remove(name)
                    .unwrap_or_else(|| TestTiming::new(suite, name));
                if run.is_some_and(|(lease, _)| !timing.learns_from(lease.as_str())) {
                    skipped.insert(name);
                    continue;
                }
                changed.insert(name.clone(), timing);
            }
            if let Some(t) = changed.get_mut(name) {
                match ms {
                    Some(ms) => t.record(ms, now),
                    None => t.record_flaky(now),
                }
            }
        }
        let timings: Vec<TestTiming> = changed.into_values().collect();
        if timings.is_empty() {
            return Ok(());
        }
        self.store.put_test_timings(&timings).await
    }
}

/// Tests read and written per store round trip.
const IMPORT_CHUNK: usize = 500;
/// One group of a run's tests: their samples and which of them were flaky.
type LearnGroup = (Vec<(String, u64)>, Vec<String>);

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
