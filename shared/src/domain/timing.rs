//! Learned test durations: every completed shard that reports per-test
//! results adds a sample to each test's history, and the next execution of
//! the suite is split on the estimates instead of on test counts.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Samples kept per test.
pub const SAMPLES_KEPT: usize = 10;

/// One test's recent durations in one suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestTiming {
    pub suite: String,
    pub test: String,
    /// Milliseconds, oldest first; at most [`SAMPLES_KEPT`].
    pub samples: Vec<u64>,
    pub updated_at: Timestamp,
    /// Runs in which the test failed and then passed on an automatic retry.
    #[serde(default)]
    pub flaky_runs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_flaky_at: Option<Timestamp>,
    /// The lease of the last run learned from a completion, so the same
    /// completion delivered again (events are at least once) adds nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
}

impl TestTiming {
    pub fn new(suite: &str, test: &str) -> Self {
        TestTiming {
            suite: suite.to_owned(),
            test: test.to_owned(),
            samples: Vec::new(),
            updated_at: Timestamp(0),
            flaky_runs: 0,
            last_flaky_at: None,
            last_run: None,
        }
    }

    /// Whether the run of `lease` is news to this history, and from now on
    /// it is not: the same completion delivered twice is learned once.
    pub fn learns_from(&mut self, lease: &str) -> bool {
        if self.last_run.as_deref() == Some(lease) {
            return false;
        }
        self.last_run = Some(lease.to_owned());
        true
    }

    /// Adds a run's duration, forgetting the oldest beyond [`SAMPLES_KEPT`].
    pub fn record(&mut self, duration_ms: u64, now: Timestamp) {
        self.samples.push(duration_ms);
        if self.samples.len() > SAMPLES_KEPT {
            let extra = self.samples.len() - SAMPLES_KEPT;
            self.samples.drain(..extra);
        }
        self.updated_at = now;
    }

    /// The test failed, then passed on a retry.
    pub fn record_flaky(&mut self, now: Timestamp) {
        self.flaky_runs += 1;
        self.last_flaky_at = Some(now);
        self.updated_at = now;
    }

    /// The expected duration: the median of the recent runs (upper median
    /// for an even count). A CI machine's noisy neighbour or a cold cache
    /// makes single runs several times slower; the median ignores up to
    /// half the samples being outliers, where a mean or an EWMA is dragged
    /// by each one and a p90 of ten samples *is* the second-worst run. A
    /// test that really got slower moves the median within about five runs.
    pub fn estimate(&self) -> Option<u64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        Some(sorted[sorted.len() / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(samples: &[u64]) -> TestTiming {
        let mut t = TestTiming::new("s", "t");
        for (i, ms) in samples.iter().enumerate() {
            t.record(*ms, Timestamp(i as i64));
        }
        t
    }

    #[test]
    fn one_outlier_run_does_not_move_the_estimate() {
        assert_eq!(timing(&[100, 110, 95, 105, 2_000]).estimate(), Some(105));
        assert_eq!(timing(&[]).estimate(), None);
    }

    #[test]
    fn a_test_that_got_slower_is_followed_within_a_few_runs() {
        let mut t = timing(&[100; 10]);
        for i in 0..6 {
            t.record(500, Timestamp(100 + i));
        }
        assert_eq!(t.estimate(), Some(500));
        assert_eq!(
            t.samples.len(),
            SAMPLES_KEPT,
            "only the recent runs are kept"
        );
    }
}
