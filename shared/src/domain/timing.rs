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

    /// The expected duration: the mean of the recent runs within a factor
    /// of [`OUTLIER_FACTOR`] of their median ([`robust_mean`]).
    pub fn estimate(&self) -> Option<u64> {
        robust_mean(&self.samples)
    }
}

/// How far from the median a run may be and still count as the test's
/// own duration rather than its machine's bad moment. A factor of 2 dropped
/// enough ordinary runs to do worse than the mean, 3 kept some of four
/// times slower runs (`split-bench`).
pub const OUTLIER_FACTOR: f64 = 2.5;

/// A test's expected duration from its recent runs: the mean of the runs
/// within a factor of [`OUTLIER_FACTOR`] of their median (of one or two
/// runs, their mean).
///
/// Why not the median alone: with two to four runs of history (every
/// suite's first days) the median of a few noisy runs is a worse estimate
/// than their mean (it uses one or two of them), and plans made from it
/// came out a few per cent worse (`split-bench`, "Estimators at few runs"
/// in `docs/performance.md`). Why not the mean alone: a noisy neighbour or
/// a cold cache makes single runs several times slower, and a mean is
/// dragged by each. Anchored on the median, such runs are dropped as long
/// as they are fewer than half, which is the median's own robustness, and
/// what is left is averaged, which is the mean's efficiency. Ordinary
/// noise (log-normal, sigma 0.3: runs within a factor of 2.5 of the
/// median but for one in a few hundred) drops nothing, so the estimate is
/// then the mean. Of two runs nothing tells which is the test's own.
pub fn robust_mean(samples: &[u64]) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let n = samples.len();
    if n <= 2 {
        // Nothing tells which of two runs is the test's own.
        return Some((samples.iter().sum::<u64>() as f64 / n as f64).round() as u64);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let median = if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0
    };
    let (low, high) = (median / OUTLIER_FACTOR, median * OUTLIER_FACTOR);
    let kept: Vec<f64> = sorted
        .iter()
        .map(|&s| s as f64)
        .filter(|&s| s >= low && s <= high)
        .collect();
    // The median itself is in the band (an even count's middle two may
    // both be out: then the median stands).
    if kept.is_empty() {
        return Some(median.round() as u64);
    }
    Some((kept.iter().sum::<f64>() / kept.len() as f64).round() as u64)
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
        assert_eq!(timing(&[100, 110, 95, 105, 2_000]).estimate(), Some(103));
        assert_eq!(timing(&[]).estimate(), None);
    }

    #[test]
    fn a_few_ordinary_runs_are_averaged() {
        // The median of three would be 100; all three runs say something.
        assert_eq!(timing(&[80, 100, 150]).estimate(), Some(110));
        assert_eq!(timing(&[90, 130]).estimate(), Some(110));
        assert_eq!(timing(&[42]).estimate(), Some(42));
    }

    #[test]
    fn fewer_than_half_slow_runs_are_ignored_however_slow() {
        assert_eq!(
            timing(&[100, 100, 100, 9_000, 100, 120, 40_000]).estimate(),
            Some(104)
        );
        // Fast outliers too (a cached or skipped run).
        assert_eq!(timing(&[1, 100, 100, 100]).estimate(), Some(100));
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

    proptest::proptest! {
        #[test]
        fn the_estimate_lies_within_the_runs_and_is_their_mean_when_they_agree(
            samples in proptest::collection::vec(1u64..1_000_000, 1..=SAMPLES_KEPT),
        ) {
            let estimate = robust_mean(&samples).unwrap();
            let (min, max) = (*samples.iter().min().unwrap(), *samples.iter().max().unwrap());
            proptest::prop_assert!(estimate >= min && estimate <= max);
            if (max as f64) <= (min as f64) * OUTLIER_FACTOR {
                let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
                proptest::prop_assert!((estimate as f64 - mean).abs() <= 0.5 + 1e-9);
            }
        }
    }
}
