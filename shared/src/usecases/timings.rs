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
    /// stored histories are read, extended and written back.
    pub(crate) async fn record_timings(
        &self,
        suite: &str,
        samples: &[(String, u64)],
        flaky: &[String],
    ) -> Result<()> {
        let now = self.clock.now();
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
        for (name, ms) in samples {
            known
                .entry(name.clone())
                .or_insert_with(|| TestTiming::new(suite, name))
                .record(*ms, now);
        }
        for name in flaky {
            known
                .entry(name.clone())
                .or_insert_with(|| TestTiming::new(suite, name))
                .record_flaky(now);
        }
        let timings: Vec<TestTiming> = known.into_values().collect();
        self.store.put_test_timings(&timings).await
    }
}

/// Tests read and written per store round trip.
const IMPORT_CHUNK: usize = 500;

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
    /// named the way `names` says its tool names tests.
    pub async fn import_junit(
        &self,
        suite: &str,
        xml: &str,
        names: NameFormat,
    ) -> Result<ImportedTimings> {
        let samples = junit::parse(xml)?
            .into_iter()
            .filter(|c| c.outcome != CaseOutcome::Skipped)
            .filter_map(|c| Some((c.test_id(names), c.time_ms?.max(1))))
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
            self.record_timings(suite, chunk, &[]).await?;
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
    /// Its expected duration (median of its recent runs).
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
