//! Metrics rollups: what the dashboard and the alerts read without scanning
//! executions. When an execution first finishes, its outcome is added to
//! counters for its suite and the hour it finished in, in the same
//! conditional write as the finishing transition, so it is counted exactly
//! once however often that write is retried. Durations go into fixed
//! histogram buckets, so p50 and p95 over any range of hours are sums of
//! counters away (interpolated within a bucket).

use super::Execution;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One hour in milliseconds: the rollups' granularity.
pub const HOUR_MS: i64 = 3_600_000;

/// Upper bounds (ms) of the duration buckets: 1 s to 6 h, roughly
/// doubling, then everything longer.
pub const BUCKET_BOUNDS_MS: [i64; 20] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_200_000,
    1_800_000,
    2_700_000,
    3_600_000,
    5_400_000,
    7_200_000,
    10_800_000,
    21_600_000,
    i64::MAX,
];

/// Upper bounds (ms) of the sub-second buckets the first bucket is split
/// into: most queue waits of a warm fleet, and many short runs, are well
/// under a second, and interpolating within 0–1 s showed 5 ms waits as
/// half a second.
pub const SUB_SECOND_BOUNDS_MS: [i64; 7] = [10, 25, 50, 100, 250, 500, 1_000];

/// The sub-second bucket a duration of at most a second falls in.
pub fn sub_second_bucket_of(ms: i64) -> Option<usize> {
    SUB_SECOND_BOUNDS_MS.iter().position(|&b| ms <= b)
}

/// The start of the hour `t` falls in.
pub fn hour_of(t: Timestamp) -> Timestamp {
    Timestamp(t.0.div_euclid(HOUR_MS) * HOUR_MS)
}

/// The bucket a duration falls in.
pub fn bucket_of(ms: i64) -> usize {
    BUCKET_BOUNDS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(BUCKET_BOUNDS_MS.len() - 1)
}

/// The `q`-quantile (0..=1) of a distribution bucketed by `bounds` (upper
/// bounds, ascending), interpolated linearly within its bucket; none when
/// nothing was counted.
pub fn quantile(hist: &[u64], bounds: &[i64], q: f64) -> Option<i64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, &count) in hist.iter().enumerate() {
        if count == 0 {
            continue;
        }
        if (seen + count) as f64 >= rank {
            let lower = if i == 0 { 0 } else { bounds[i - 1] };
            let upper = bounds[i];
            if upper == i64::MAX {
                return Some(lower);
            }
            let within = (rank - seen as f64) / count as f64;
            return Some(lower + ((upper - lower) as f64 * within).round() as i64);
        }
        seen += count;
    }
    None
}

/// A finished execution's wait for its first runner and, if it started,
/// its run time (ms). One that never started (cancelled or timed out in
/// the queue) waited until it finished.
pub fn waited_and_ran(e: &Execution) -> (i64, Option<i64>) {
    let finished = e.finished_at.unwrap_or(e.updated_at);
    let started = e.started_at.unwrap_or(finished);
    let wait = started.since(e.created_at).max(0);
    let run = e.started_at.map(|s| finished.since(s).max(0));
    (wait, run)
}

/// Counter names and amounts. Names: `finished`, one per final status
/// (`passed`, `failed`, `errored`, `timed_out`, `cancelled`), `tests_passed`,
/// `tests_failed`, `tests_skipped`, `tests_flaky`, `run_ms` and `wait_ms`
/// (sums), the histogram buckets `run_b<i>` and `wait_b<i>`, and the
/// sub-second buckets `run_s<i>` and `wait_s<i>` splitting the first.
pub type Counters = BTreeMap<String, u64>;

/// The rollups' pseudo-suite of system samples (a real suite is never
/// empty): slots in use and slots registered, summed over the health
/// sweep's samples, so their ratio is the hour's slot utilization.
pub const SYSTEM: &str = "";

/// One suite's counters for one hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    pub suite: String,
    pub hour: Timestamp,
    pub counters: Counters,
}

impl Rollup {
    /// One utilization sample: the slots allocated and the slots of
    /// runners not deregistered, now.
    pub fn utilization_sample(now: Timestamp, used_slots: u64, capacity_slots: u64) -> Rollup {
        let mut counters = Counters::new();
        counters.insert("util_samples".into(), 1);
        counters.insert("util_used".into(), used_slots);
        counters.insert("util_capacity".into(), capacity_slots);
        Rollup {
            suite: SYSTEM.to_owned(),
            hour: hour_of(now),
            counters,
        }
    }

    /// What an execution adds once it has finished: its final status, its
    /// tests, how long it waited for its first runner and how long it ran.
    /// None while it runs.
    pub fn of_finished(e: &Execution) -> Option<Rollup> {
        if !e.status.is_terminal() {
            return None;
        }
        let finished = e.finished_at.unwrap_or(e.updated_at);
        let mut c = Counters::new();
        let mut add = |name: &str, amount: u64| {
            if amount > 0 {
                *c.entry(name.to_owned()).or_default() += amount;
            }
        };
        add("finished", 1);
        add(e.status.as_str(), 1);
        add("tests_passed", e.totals.passed.into());
        add("tests_failed", e.totals.failed.into());
        add("tests_skipped", e.totals.skipped.into());
        add("tests_flaky", e.totals.flaky.into());
        let (wait, run) = waited_and_ran(e);
        add("wait_ms", wait as u64);
        add(&format!("wait_b{}", bucket_of(wait)), 1);
        if let Some(i) = sub_second_bucket_of(wait) {
            add(&format!("wait_s{i}"), 1);
        }
        if let Some(run) = run {
            add("run_ms", run as u64);
            add(&format!("run_b{}", bucket_of(run)), 1);
            if let Some(i) = sub_second_bucket_of(run) {
                add(&format!("run_s{i}"), 1);
            }
        }
        Some(Rollup {
            suite: e.suite.clone(),
            hour: hour_of(finished),
            counters: c,
        })
    }
}

/// Figures over a set of rollups: for one suite, one hour, or everything.
#[derive(Debug, Clone, PartialEq, Default, Serialize, ToSchema)]
pub struct Figures {
    /// Executions that finished.
    pub finished: u64,
    pub passed: u64,
    pub failed: u64,
    pub errored: u64,
    pub timed_out: u64,
    pub cancelled: u64,
    /// Passed among those that finished with a verdict (cancelled ones
    /// left out); none when there were none.
    pub pass_rate: Option<f64>,
    pub tests_passed: u64,
    pub tests_failed: u64,
    pub tests_skipped: u64,
    pub tests_flaky: u64,
    /// Time from queued to the first runner.
    pub p50_wait_ms: Option<i64>,
    pub p95_wait_ms: Option<i64>,
    /// Time from the first runner to the verdict.
    pub p50_run_ms: Option<i64>,
    pub p95_run_ms: Option<i64>,
}

impl Figures {
    fn of<'a>(rows: impl IntoIterator<Item = &'a Counters>) -> Figures {
        let mut sum = Counters::new();
        for counters in rows {
            for (k, v) in counters {
                *sum.entry(k.clone()).or_default() += v;
            }
        }
        let get = |k: &str| sum.get(k).copied().unwrap_or(0);
        // The buckets of one duration, the first split into its sub-second
        // buckets when every value in it was counted in them too (rollups
        // written before they existed were not), with the bounds to read
        // them by.
        let hist = |name: &str| -> (Vec<u64>, Vec<i64>) {
            let coarse: Vec<u64> = (0..BUCKET_BOUNDS_MS.len())
                .map(|i| get(&format!("{name}_b{i}")))
                .collect();
            let fine: Vec<u64> = (0..SUB_SECOND_BOUNDS_MS.len())
                .map(|i| get(&format!("{name}_s{i}")))
                .collect();
            if coarse[0] > 0 && fine.iter().sum::<u64>() == coarse[0] {
                let counts = fine
                    .into_iter()
                    .chain(coarse[1..].iter().copied())
                    .collect();
                let bounds = SUB_SECOND_BOUNDS_MS
                    .iter()
                    .chain(&BUCKET_BOUNDS_MS[1..])
                    .copied()
                    .collect();
                (counts, bounds)
            } else {
                (coarse, BUCKET_BOUNDS_MS.to_vec())
            }
        };
        let (run, wait) = (hist("run"), hist("wait"));
        let q = |(counts, bounds): &(Vec<u64>, Vec<i64>), q: f64| quantile(counts, bounds, q);
        let judged = get("passed") + get("failed") + get("errored") + get("timed_out");
        Figures {
            finished: get("finished"),
            passed: get("passed"),
            failed: get("failed"),
            errored: get("errored"),
            timed_out: get("timed_out"),
            cancelled: get("cancelled"),
            pass_rate: (judged > 0).then(|| get("passed") as f64 / judged as f64),
            tests_passed: get("tests_passed"),
            tests_failed: get("tests_failed"),
            tests_skipped: get("tests_skipped"),
            tests_flaky: get("tests_flaky"),
            p50_wait_ms: q(&wait, 0.5),
            p95_wait_ms: q(&wait, 0.95),
            p50_run_ms: q(&run, 0.5),
            p95_run_ms: q(&run, 0.95),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SuiteFigures {
    pub suite: String,
    /// Finished executions per hour over the range.
    pub throughput_per_hour: f64,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HourFigures {
    /// The hour's start (ms since the epoch).
    #[schema(value_type = i64)]
    pub hour: Timestamp,
    /// Share of registered slots in use over the hour's health samples
    /// (none without samples or slots).
    pub slot_utilization: Option<f64>,
    #[serde(flatten)]
    pub figures: Figures,
}

/// `GET /metrics`: every suite's figures over the range, the figures of
/// every hour in it (all suites, or the one asked for), and the total.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Metrics {
    #[schema(value_type = i64)]
    pub since: Timestamp,
    #[schema(value_type = i64)]
    pub until: Timestamp,
    pub total: SuiteFigures,
    /// Share of registered slots in use over the range.
    pub slot_utilization: Option<f64>,
    pub suites: Vec<SuiteFigures>,
    /// Every hour of the range, oldest first, empty ones included (a chart
    /// needs the gaps).
    pub hours: Vec<HourFigures>,
}

impl Metrics {
    /// The figures of `rows` (rollups of hours in `since..=until`, any
    /// suites), for `suite` if given.
    pub fn summarize(
        rows: &[Rollup],
        since: Timestamp,
        until: Timestamp,
        suite: Option<&str>,
    ) -> Metrics {
        let (system, rows): (Vec<&Rollup>, Vec<&Rollup>) =
            rows.iter().partition(|r| r.suite == SYSTEM);
        let rows: Vec<&Rollup> = rows
            .into_iter()
            .filter(|r| suite.is_none_or(|s| r.suite == s))
            .collect();
        let utilization = |samples: &mut dyn Iterator<Item = &&Rollup>| {
            let (mut used, mut capacity) = (0u64, 0u64);
            for r in samples {
                used += r.counters.get("util_used").copied().unwrap_or(0);
                capacity += r.counters.get("util_capacity").copied().unwrap_or(0);
            }
            (capacity > 0).then(|| used as f64 / capacity as f64)
        };
        let (first, last) = (hour_of(since), hour_of(until));
        let hours_in_range = ((last.0 - first.0) / HOUR_MS + 1).max(1);
        let per_hour = |f: &Figures| f.finished as f64 / hours_in_range as f64;
        let mut by_suite: BTreeMap<&str, Vec<&Counters>> = BTreeMap::new();
        for r in &rows {
            by_suite.entry(&r.suite).or_default().push(&r.counters);
        }
        let suites = by_suite
            .into_iter()
            .map(|(name, counters)| {
                let figures = Figures::of(counters);
                SuiteFigures {
                    suite: name.to_owned(),
                    throughput_per_hour: per_hour(&figures),
                    figures,
                }
            })
            .collect();
        let hours = (0..hours_in_range)
            .map(|i| {
                let hour = Timestamp(first.0 + i * HOUR_MS);
                HourFigures {
                    hour,
                    slot_utilization: utilization(&mut system.iter().filter(|r| r.hour == hour)),
                    figures: Figures::of(
                        rows.iter().filter(|r| r.hour == hour).map(|r| &r.counters),
                    ),
                }
            })
            .collect();
        let figures = Figures::of(rows.iter().map(|r| &r.counters));
        Metrics {
            since: first,
            until,
            slot_utilization: utilization(&mut system.iter()),
            total: SuiteFigures {
                suite: suite.unwrap_or("*").to_owned(),
                throughput_per_hour: per_hour(&figures),
                figures,
            },
            suites,
            hours,
        }
    }
}

/// The furthest back `GET /metrics` looks: bounded reads.
pub const MAX_RANGE_MS: i64 = 31 * 24 * HOUR_MS;

/// `since` as the API takes it: hours or days back (`24h`, `7d`), or
/// milliseconds since the epoch. None when it is neither.
pub fn parse_since(raw: &str, now: Timestamp) -> Option<Timestamp> {
    let back = |digits: &str, unit: i64| {
        digits
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .map(|ms| now.plus_ms(-ms))
    };
    if let Some(h) = raw.strip_suffix('h') {
        return back(h, HOUR_MS);
    }
    if let Some(d) = raw.strip_suffix('d') {
        return back(d, 24 * HOUR_MS);
    }
    raw.parse::<i64>().ok().map(Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn since_is_relative_or_absolute() {
        let now = Timestamp(100 * HOUR_MS);
        assert_eq!(parse_since("24h", now), Some(Timestamp(76 * HOUR_MS)));
        assert_eq!(parse_since("2d", now), Some(Timestamp(52 * HOUR_MS)));
        assert_eq!(
            parse_since("1700000000000", now),
            Some(Timestamp(1_700_000_000_000))
        );
        assert_eq!(parse_since("yesterday", now), None);
        assert_eq!(parse_since("99999999999999999999d", now), None);
    }

    #[test]
    fn buckets_cover_every_duration() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1);
        assert_eq!(bucket_of(i64::MAX), BUCKET_BOUNDS_MS.len() - 1);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut hist = vec![0u64; BUCKET_BOUNDS_MS.len()];
        // Ten runs between 10 s and 20 s.
        hist[bucket_of(15_000)] = 10;
        assert_eq!(quantile(&hist, &BUCKET_BOUNDS_MS, 0.5), Some(15_000));
        assert_eq!(quantile(&hist, &BUCKET_BOUNDS_MS, 1.0), Some(20_000));
        assert_eq!(quantile(&[0; 3], &BUCKET_BOUNDS_MS, 0.5), None);
    }

    fn waits(ms: &[i64]) -> Counters {
        let mut c = Counters::new();
        for &w in ms {
            *c.entry(format!("wait_b{}", bucket_of(w))).or_default() += 1;
            if let Some(i) = sub_second_bucket_of(w) {
                *c.entry(format!("wait_s{i}")).or_default() += 1;
            }
        }
        c
    }

    #[test]
    fn waits_of_a_few_milliseconds_read_as_milliseconds_not_half_a_second() {
        let figures = Figures::of([&waits(&[3, 4, 5, 6, 7, 8, 9, 9, 9, 600])]);
        let p50 = figures.p50_wait_ms.unwrap();
        assert!(p50 <= 10, "p50 wait {p50} ms");
        let p95 = figures.p95_wait_ms.unwrap();
        assert!((500..=1_000).contains(&p95), "p95 wait {p95} ms");
    }

    #[test]
    fn hours_counted_before_the_sub_second_buckets_still_read_by_the_coarse_ones() {
        let mut old = waits(&[5, 5, 5, 5]);
        old.retain(|k, _| !k.starts_with("wait_s"));
        let mixed = Figures::of([&old, &waits(&[5, 5, 5, 5])]);
        // Half the first bucket has no fine counts: reading it by the fine
        // buckets would lose those, so the coarse bucket is read.
        assert_eq!(mixed.p50_wait_ms, Some(500));
        assert!(Figures::of([&waits(&[5; 8])]).p50_wait_ms.unwrap() <= 10);
    }

    proptest! {
        #[test]
        fn a_quantile_lies_in_the_bucket_of_the_true_one(mut xs in proptest::collection::vec(0i64..30_000_000, 1..200), q in 0.0f64..1.0) {
            let mut hist = vec![0u64; BUCKET_BOUNDS_MS.len()];
            for &x in &xs {
                hist[bucket_of(x)] += 1;
            }
            xs.sort();
            let rank = ((q * xs.len() as f64).max(1.0).ceil() as usize).min(xs.len());
            let truth = xs[rank - 1];
            let got = quantile(&hist, &BUCKET_BOUNDS_MS, q).unwrap();
            let b = bucket_of(truth);
            let lower = if b == 0 { 0 } else { BUCKET_BOUNDS_MS[b - 1] };
            prop_assert!(got >= lower && got <= BUCKET_BOUNDS_MS[b], "{got} vs {truth}");
        }
    }
}
