//! How balanced are TMS's shards? A benchmark, not a test: for real suites'
//! recorded test durations and for synthetic heavy-tailed suites, it splits
//! each suite into m = 2, 4, 8, 16 and 32 shards and reports the makespan
//! (the longest shard) over the lower bound max(total / m, longest test) —
//! 1.00 is a perfect split — for TMS's longest-processing-time-first split
//! (`tms::scheduling::split_tests`) beside two count-based splits:
//! Playwright's `--shard` (equal numbers of tests, in the suite's order) and
//! Jest's `--shard` (equal numbers of tests, in hash order).
//!
//! ```sh
//! cargo run --release -p tms-tests --bin split-bench -- tests/fixtures/durations/*.json
//! ```
//!
//! Further tables: each plan run with ±30 % noise on every test's duration
//! (and on every runner's speed), the static LPT split beside dynamic
//! mode (batches cut when a runner claims, `tms::scheduling::dynamic`);
//! dynamic mode's tails on real profiles with log-normal noise, batches
//! cut at queue time against cut at claim time; and static plans made from
//! a few recorded runs of each test with the median, the mean and TMS's
//! estimator (`tms::domain::timing::robust_mean`).
//!
//! Each input file is `{"source": …, "unit": "seconds", "durations": {test: seconds}}`.
//! Prints the markdown tables of `docs/performance.md`.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use tms::domain::{Dispenser, TestSpec};
use tms::ids::RunnerId;
use tms::time::Timestamp;

const SHARD_COUNTS: [usize; 5] = [2, 4, 8, 16, 32];

/// A suite: test names in their recorded order, durations in ms.
struct Suite {
    name: String,
    tests: Vec<(String, u64)>,
}

impl Suite {
    fn lower_bound(&self, m: usize) -> f64 {
        let total: u64 = self.tests.iter().map(|t| t.1).sum();
        let longest = self.tests.iter().map(|t| t.1).max().unwrap_or(0);
        (total as f64 / m as f64).max(longest as f64)
    }

    /// The tests with their durations as hints.
    fn specs(&self) -> Vec<TestSpec> {
        self.tests
            .iter()
            .map(|(name, ms)| TestSpec {
                name: name.clone(),
                duration_hint_ms: Some(*ms),
            })
            .collect()
    }

    /// TMS: LPT on the durations.
    fn lpt(&self, m: usize) -> u64 {
        tms::scheduling::split_tests(&self.specs(), m as u32)
            .iter()
            .filter_map(|s| s.estimated_ms)
            .max()
            .unwrap_or(0)
    }

    /// One noisy run: each test's actual duration (its recorded duration
    /// times a factor drawn from [1 - noise, 1 + noise]: a split is planned
    /// on estimates, tests do not take exactly as long as last time), each
    /// runner's speed, and the run's lower bound.
    fn noisy_run(
        &self,
        m: usize,
        noise: f64,
        spread: f64,
        seed: u64,
    ) -> (HashMap<&str, u64>, Vec<f64>, f64) {
        let mut rng = Rng(seed);
        let actual: HashMap<&str, u64> = self
            .tests
            .iter()
            .map(|(name, ms)| {
                let factor = 1.0 - noise + 2.0 * noise * rng.next();
                (
                    name.as_str(),
                    ((*ms as f64) * factor).ceil().max(1.0) as u64,
                )
            })
            .collect();
        let speeds = Self::speeds(m, spread, seed);
        // The bound with runners of these speeds: all the work spread over
        // their combined rate, or the longest test on the fastest runner.
        let total: u64 = actual.values().sum();
        let longest = actual.values().copied().max().unwrap_or(0);
        let rate: f64 = speeds.iter().map(|s| 1.0 / s).sum();
        let fastest = speeds.iter().copied().fold(f64::INFINITY, f64::min);
        let bound = (total as f64 / rate).max(longest as f64 * fastest);
        (actual, speeds, bound)
    }

    /// How fast each of `m` runners is in one run: 1 for all, or a factor
    /// drawn from [1 - spread, 1 + spread] (a busy or smaller machine).
    fn speeds(m: usize, spread: f64, seed: u64) -> Vec<f64> {
        let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
        (0..m)
            .map(|_| 1.0 - spread + 2.0 * spread * rng.next())
            .collect()
    }

    /// Static LPT planned on the recorded durations, run with noise on each
    /// test and on each runner's speed: its makespan (each shard paying
    /// `overhead` once) over the run's bound.
    fn lpt_noisy(&self, m: usize, run: &Run) -> f64 {
        let (actual, speeds, bound) = self.noisy_run(m, run.noise, run.spread, run.seed);
        let makespan = tms::scheduling::split_tests(&self.specs(), m as u32)
            .iter()
            .zip(&speeds)
            .map(|(s, speed)| {
                let work: u64 = s.tests.iter().map(|t| actual[t.as_str()]).sum();
                run.overhead as f64 + work as f64 * speed
            })
            .fold(0.0, f64::max);
        makespan / bound
    }

    /// Dynamic mode run with the same noise: `m` runners each claim a
    /// batch as soon as they finish one, paying `overhead` per batch (the
    /// claim and starting the test process); the makespan over the run's
    /// bound.
    fn dynamic_noisy(&self, m: usize, run: &Run) -> f64 {
        let (actual, speeds, bound) = self.noisy_run(m, run.noise, run.spread, run.seed);
        let outcome = claim_time(&self.specs(), &actual, &speeds, run.overhead as f64);
        outcome.makespan / bound
    }

    /// Equal counts in contiguous chunks of `order`.
    fn by_count(order: &[u64], m: usize) -> u64 {
        let m = m.min(order.len()).max(1);
        let (base, extra) = (order.len() / m, order.len() % m);
        let mut start = 0;
        (0..m)
            .map(|i| {
                let len = base + usize::from(i < extra);
                let sum = order[start..start + len].iter().sum();
                start += len;
                sum
            })
            .max()
            .unwrap_or(0)
    }

    fn playwright(&self, m: usize) -> u64 {
        let order: Vec<u64> = self.tests.iter().map(|t| t.1).collect();
        Self::by_count(&order, m)
    }

    fn jest(&self, m: usize) -> u64 {
        let mut hashed: Vec<(u64, u64)> = self
            .tests
            .iter()
            .map(|(name, ms)| {
                let mut h = DefaultHasher::new();
                name.hash(&mut h);
                (h.finish(), *ms)
            })
            .collect();
        hashed.sort_unstable();
        let order: Vec<u64> = hashed.into_iter().map(|(_, ms)| ms).collect();
        Self::by_count(&order, m)
    }
}

fn load(path: &str) -> Suite {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: serde_json::Value = serde_json::from_str(&text).expect("a durations file");
    assert_eq!(doc["unit"], "seconds", "{path}: durations in seconds");
    let durations = doc["durations"].as_object().expect("a durations object");
    // serde_json keeps the file's order (preserve_order is off, so sort by
    // name: the order a test runner lists files in).
    let mut tests: Vec<(String, u64)> = durations
        .iter()
        .map(|(name, s)| {
            let ms = (s.as_f64().expect("seconds") * 1000.0).ceil().max(1.0) as u64;
            (name.clone(), ms)
        })
        .collect();
    tests.sort();
    let name = std::path::Path::new(path)
        .file_stem()
        .map_or(path.to_owned(), |s| s.to_string_lossy().into_owned());
    Suite { name, tests }
}

/// A small deterministic generator (SplitMix64), so the synthetic suites
/// are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // In (0, 1): never exactly 0, for the logarithms below.
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

fn synthetic(name: &str, n: usize, seed: u64, draw: impl Fn(&mut Rng) -> f64) -> Suite {
    let mut rng = Rng(seed);
    Suite {
        name: name.into(),
        tests: (0..n)
            .map(|i| {
                (
                    format!("test_{i:05}"),
                    draw(&mut rng).ceil().max(1.0) as u64,
                )
            })
            .collect(),
    }
}

/// Log-normal test durations (median 200 ms, sigma 1.5): most tests fast, a few slow.
fn lognormal(rng: &mut Rng) -> f64 {
    let (u1, u2) = (rng.next(), rng.next());
    let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    200.0 * (1.5 * normal).exp()
}

/// Pareto durations (minimum 50 ms, alpha 1.2): a heavy tail of very slow tests.
fn pareto(rng: &mut Rng) -> f64 {
    50.0 / rng.next().powf(1.0 / 1.2)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let mut suites: Vec<Suite> = std::env::args().skip(1).map(|p| load(&p)).collect();
    let real = suites.len();
    for (n, seed) in [(200, 1), (1000, 2), (5000, 3)] {
        suites.push(synthetic(
            &format!("log-normal, {n} tests"),
            n,
            seed,
            lognormal,
        ));
        suites.push(synthetic(
            &format!("Pareto, {n} tests"),
            n,
            seed + 10,
            pareto,
        ));
    }

    println!("| suite | tests | total s | longest s | split | m=2 | m=4 | m=8 | m=16 | m=32 |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut per_m: Vec<[Vec<f64>; 3]> = SHARD_COUNTS.iter().map(|_| Default::default()).collect();
    for suite in &suites {
        let total: u64 = suite.tests.iter().map(|t| t.1).sum();
        let longest = suite.tests.iter().map(|t| t.1).max().unwrap_or(0);
        let splits: [(&str, &dyn Fn(usize) -> u64); 3] = [
            ("TMS (LPT)", &|m| suite.lpt(m)),
            ("Playwright (count, in order)", &|m| suite.playwright(m)),
            ("Jest (count, hash order)", &|m| suite.jest(m)),
        ];
        for (k, (label, split)) in splits.iter().enumerate() {
            let ratios: Vec<f64> = SHARD_COUNTS
                .iter()
                .map(|&m| split(m) as f64 / suite.lower_bound(m))
                .collect();
            for (i, r) in ratios.iter().enumerate() {
                per_m[i][k].push(*r);
            }
            println!(
                "| {} | {} | {:.0} | {:.1} | {label} | {} |",
                suite.name,
                suite.tests.len(),
                total as f64 / 1000.0,
                longest as f64 / 1000.0,
                ratios
                    .iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
    println!(
        "\n| median over the {} suites | m=2 | m=4 | m=8 | m=16 | m=32 |",
        suites.len()
    );
    println!("|---|---|---|---|---|---|");
    for (k, label) in [
        "TMS (LPT)",
        "Playwright (count, in order)",
        "Jest (count, hash order)",
    ]
    .iter()
    .enumerate()
    {
        let cells: Vec<String> = per_m
            .iter()
            .map(|m| format!("{:.3}", median(m[k].clone())))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }

    for (title, spread) in [
        ("±30 % noise on each test's duration", 0.0),
        (
            "±30 % noise on each test's duration and on each runner's speed",
            0.3,
        ),
    ] {
        println!(
            "\nPlanned on the recorded durations, run with {title}, {OVERHEAD_MS} ms per batch \
             (claim + process start): median makespan ratio of 20 draws, static LPT / dynamic.\n"
        );
        println!("| suite | m=2 | m=4 | m=8 | m=16 | m=32 |");
        println!("|---|---|---|---|---|---|");
        let mut wins = [[0usize; 2]; 5];
        let mut medians: Vec<[Vec<f64>; 2]> =
            SHARD_COUNTS.iter().map(|_| Default::default()).collect();
        for suite in &suites {
            let cells: Vec<String> = SHARD_COUNTS
                .iter()
                .enumerate()
                .map(|(i, &m)| {
                    let draws = |f: &dyn Fn(&Run) -> f64| {
                        median(
                            (0..20)
                                .map(|seed| {
                                    f(&Run {
                                        noise: 0.3,
                                        spread,
                                        seed: 100 + seed,
                                        overhead: OVERHEAD_MS,
                                    })
                                })
                                .collect(),
                        )
                    };
                    let fixed = draws(&|run| suite.lpt_noisy(m, run));
                    let dynamic = draws(&|run| suite.dynamic_noisy(m, run));
                    wins[i][usize::from(dynamic < fixed)] += 1;
                    medians[i][0].push(fixed);
                    medians[i][1].push(dynamic);
                    format!("{fixed:.3} / {dynamic:.3}")
                })
                .collect();
            println!("| {} | {} |", suite.name, cells.join(" | "));
        }
        let cells: Vec<String> = medians
            .iter()
            .map(|[f, d]| format!("**{:.3} / {:.3}**", median(f.clone()), median(d.clone())))
            .collect();
        println!("| median | {} |", cells.join(" | "));
        let tally: Vec<String> = wins
            .iter()
            .map(|[lpt, dynamic]| format!("{dynamic} of {}", lpt + dynamic))
            .collect();
        println!("| dynamic better in | {} |", tally.join(" | "));
    }
    tails_table(&suites[..real]);
    files_table(&suites[..real]);
    estimator_tables(&profiles(&suites[..real]));
}

/// How one simulated dynamic run went (ms).
struct Outcome {
    /// Wall clock until the last runner is done, overheads included.
    makespan: f64,
    /// Test work of the runner that ran the most.
    busiest: f64,
}

/// Dynamic mode as the server runs it: each runner claims as soon as it
/// finishes a batch, and the batch is cut then
/// (`tms::scheduling::dynamic`), from what is left and the other runners'
/// expected free times (their claim time plus their batch's estimate).
/// Runner `r` runs at `speeds[r]` (1 = as recorded); each batch costs
/// `overhead_ms` besides its tests.
fn claim_time(
    specs: &[TestSpec],
    actual: &HashMap<&str, u64>,
    speeds: &[f64],
    overhead_ms: f64,
) -> Outcome {
    use tms::scheduling::dynamic::{batch_len, batch_target, busy_until, claim_order};
    let m = speeds.len();
    let (hinted, ordered) = claim_order(specs);
    let mut dispenser = Dispenser {
        next: 0,
        left_ms: ordered.iter().filter_map(|t| t.duration_hint_ms).sum(),
        runners: m as u32,
        hinted,
        max_batch_tests: None,
        overhead_ms: None,
        busy: Vec::new(),
    };
    let assumed = tms::config::Config::default().dynamic_batch_overhead_ms;
    let ids: Vec<RunnerId> = (0..m).map(|_| RunnerId::generate()).collect();
    // (time free in µs, runner): whichever is free first claims next.
    let mut free: BinaryHeap<Reverse<(u64, usize)>> = (0..m).map(|r| Reverse((0, r))).collect();
    let mut work = vec![0.0f64; m];
    let mut makespan = 0u64;
    while let Some(Reverse((at, r))) = free.pop() {
        let next = dispenser.next as usize;
        if next >= ordered.len() {
            makespan = makespan.max(at);
            continue;
        }
        let now = Timestamp((at / 1000) as i64);
        if at > 0 {
            // The report of the batch this runner just finished measured
            // what a batch costs besides its tests.
            dispenser.observe_overhead(overhead_ms as u64);
        }
        let target = batch_target(&dispenser, &ids[r], now, assumed, 90_000);
        let (n, weight) = batch_len(&ordered[next..], target, None);
        dispenser.hand_out(n as u32, weight, &ids[r], busy_until(now, weight, hinted));
        let ran: f64 = ordered[next..next + n]
            .iter()
            .map(|t| actual[t.name.as_str()] as f64 * speeds[r])
            .sum();
        work[r] += ran;
        free.push(Reverse((at + ((overhead_ms + ran) * 1000.0) as u64, r)));
    }
    Outcome {
        makespan: makespan as f64 / 1000.0,
        busiest: work.iter().copied().fold(0.0, f64::max),
    }
}

/// The baseline: dynamic batches cut once, when the execution is queued
/// (guided self-scheduling, a share of `1 / (2 m)` of the work left when
/// each is cut, at least 5 s, at most 512 batches), then claimed in order
/// by whichever runner is free first.
fn queue_time(
    specs: &[TestSpec],
    actual: &HashMap<&str, u64>,
    speeds: &[f64],
    overhead_ms: f64,
) -> Outcome {
    let m = speeds.len();
    let (_, ordered) = tms::scheduling::dynamic::claim_order(specs);
    let weights: Vec<u64> = ordered.iter().filter_map(|t| t.duration_hint_ms).collect();
    let total: u64 = weights.iter().sum();
    let mut floor = 5_000u64;
    let batches = loop {
        let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut remaining, mut start) = (total, 0);
        while start < weights.len() {
            let target = remaining.div_ceil(2 * m as u64).max(floor);
            let (mut end, mut load) = (start, 0);
            while end < weights.len() && (end == start || load + weights[end] <= target) {
                load += weights[end];
                end += 1;
            }
            remaining -= load;
            batches.push(start..end);
            start = end;
        }
        if batches.len() <= 512 || floor >= total {
            break batches;
        }
        floor *= 2;
    };
    let mut free: BinaryHeap<Reverse<(u64, usize)>> = (0..m).map(|r| Reverse((0, r))).collect();
    let mut work = vec![0.0f64; m];
    let mut makespan = 0u64;
    for batch in batches {
        let Some(Reverse((at, r))) = free.pop() else {
            break;
        };
        let ran: f64 = ordered[batch]
            .iter()
            .map(|t| actual[t.name.as_str()] as f64 * speeds[r])
            .sum();
        work[r] += ran;
        let done = at + ((overhead_ms + ran) * 1000.0) as u64;
        makespan = makespan.max(done);
        free.push(Reverse((done, r)));
    }
    Outcome {
        makespan: makespan as f64 / 1000.0,
        busiest: work.iter().copied().fold(0.0, f64::max),
    }
}

/// What one batch costs beyond its tests in the tails table: the claim's
/// round trip (the report that ends a batch brings the next one), with
/// nothing for starting a test process.
const CLAIM_OVERHEAD_MS: f64 = 50.0;

/// The profiles of the tails table: the real recordings as they are, and
/// each rolled up one level (pytest's tests into their files, RSpec's spec
/// files into their directories).
fn profiles(real: &[Suite]) -> Vec<Suite> {
    let mut out = Vec::new();
    for suite in real {
        out.push(Suite {
            name: suite.name.clone(),
            tests: suite.tests.clone(),
        });
        let mut rolled: std::collections::BTreeMap<String, u64> = Default::default();
        for (name, ms) in &suite.tests {
            let unit = match name.split_once("::") {
                Some((file, _)) => file.to_owned(),
                None => name
                    .rsplit_once('/')
                    .map_or(name.as_str(), |(dir, _)| dir)
                    .to_owned(),
            };
            *rolled.entry(unit).or_default() += ms;
        }
        let level = if suite.tests.iter().any(|(n, _)| n.contains("::")) {
            "files"
        } else {
            "directories"
        };
        out.push(Suite {
            name: format!("{}, by {level}", suite.name),
            tests: rolled.into_iter().collect(),
        });
    }
    out
}

/// Dynamic tails on real profiles: each run with log-normal noise (sigma
/// 0.3) on every test, 8 and 16 runners, a claim round trip per batch;
/// the busiest runner's test work and the wall-clock makespan over the
/// run's bound, for batches cut at queue time and at claim time.
fn tails_table(real: &[Suite]) {
    println!(
        "\nDynamic mode on real profiles, each test's duration with log-normal noise \
         (sigma 0.3), {CLAIM_OVERHEAD_MS} ms per batch (the claim's round trip): the busiest \
         runner's test work and the wall-clock makespan over the run's bound \
         max(total / m, longest test), median (worst) of 20 draws; batches cut at queue \
         time / at claim time.\n"
    );
    println!("| profile | tests | m | busiest runner's work | wall-clock makespan |");
    println!("|---|---|---|---|---|");
    let mut worst = [[0.0f64; 2]; 2];
    for suite in profiles(real) {
        for m in [8usize, 16] {
            let mut cells = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
            for draw in 0..20 {
                let mut rng = Rng(500 + draw);
                let actual: HashMap<&str, u64> = suite
                    .tests
                    .iter()
                    .map(|(name, ms)| (name.as_str(), observed(*ms, SIGMA, 0.0, &mut rng)))
                    .collect();
                let total: u64 = actual.values().sum();
                let longest = actual.values().copied().max().unwrap_or(0);
                let bound = (total as f64 / m as f64).max(longest as f64);
                let speeds = vec![1.0; m];
                for (k, sim) in [queue_time, claim_time].iter().enumerate() {
                    let o = sim(&suite.specs(), &actual, &speeds, CLAIM_OVERHEAD_MS);
                    cells[k][0].push(o.busiest / bound);
                    cells[k][1].push(o.makespan / bound);
                }
            }
            let show = |k: usize, what: usize| {
                let v = &cells[k][what];
                let w = v.iter().copied().fold(0.0, f64::max);
                (format!("{:.3} ({:.3})", median(v.clone()), w), w)
            };
            let mut row = Vec::new();
            for (what, worst) in worst.iter_mut().enumerate() {
                let (before, worst_before) = show(0, what);
                let (after, worst_after) = show(1, what);
                worst[0] = worst[0].max(worst_before);
                worst[1] = worst[1].max(worst_after);
                row.push(format!("{before} / {after}"));
            }
            println!(
                "| {} | {} | {m} | {} | {} |",
                suite.name,
                suite.tests.len(),
                row[0],
                row[1]
            );
        }
    }
    println!(
        "| worst of all | | | {:.3} / {:.3} | {:.3} / {:.3} |",
        worst[0][0], worst[0][1], worst[1][0], worst[1][1]
    );
}

/// A suite queued by files (`tests/test_*.py`): the scout recording's tests
/// rolled up into their files, each file planned with no estimate (every
/// file weighs the same: a split by count) and with its cases' learned
/// durations rolled up (`tms::naming::roll_up`); static LPT's makespan over
/// the bound on the files' durations.
fn files_table(real: &[Suite]) {
    println!(
        "\nQueued by files: each file's tests learned per test case, the file's \
         estimate rolled up from them (`naming::roll_up`) against no estimate \
         (a split by count); static LPT, makespan over the bound.\n"
    );
    println!("| suite | files | estimates | m=2 | m=4 | m=8 | m=16 | m=32 |");
    println!("|---|---|---|---|---|---|---|---|");
    for suite in real
        .iter()
        .filter(|s| s.tests.iter().any(|(n, _)| n.contains("::")))
    {
        let mut files: std::collections::BTreeMap<String, u64> = Default::default();
        for (name, ms) in &suite.tests {
            let file = name.split_once("::").map_or(name.as_str(), |(f, _)| f);
            *files.entry(file.to_owned()).or_default() += ms;
        }
        let queued: Vec<String> = files.keys().cloned().collect();
        let rolled =
            tms::naming::roll_up(&queued, suite.tests.iter().map(|(n, ms)| (n.as_str(), *ms)));
        let by_files = Suite {
            name: suite.name.clone(),
            tests: files.into_iter().collect(),
        };
        for (label, hints) in [("none (by count)", None), ("rolled up", Some(&rolled))] {
            let specs: Vec<TestSpec> = by_files
                .tests
                .iter()
                .map(|(name, _)| TestSpec {
                    name: name.clone(),
                    duration_hint_ms: hints.and_then(|h| h.get(name).copied()),
                })
                .collect();
            let ratios: Vec<String> = SHARD_COUNTS
                .iter()
                .map(|&m| {
                    let actual: HashMap<&str, u64> = by_files
                        .tests
                        .iter()
                        .map(|(n, ms)| (n.as_str(), *ms))
                        .collect();
                    let makespan = tms::scheduling::split_tests(&specs, m as u32)
                        .iter()
                        .map(|s| s.tests.iter().map(|t| actual[t.as_str()]).sum::<u64>())
                        .max()
                        .unwrap_or(0);
                    format!("{:.3}", makespan as f64 / by_files.lower_bound(m))
                })
                .collect();
            println!(
                "| {} | {} | {label} | {} |",
                suite.name,
                by_files.tests.len(),
                ratios.join(" | ")
            );
        }
    }
}

/// How a test's expected duration is made from its recorded runs.
#[derive(Clone, Copy)]
enum Estimator {
    /// The upper median of the runs.
    Median,
    /// Their arithmetic mean.
    Mean,
    /// TMS's: the mean of the runs within a factor of 2.5 of their median
    /// (`tms::domain::timing::robust_mean`).
    Tms,
}

impl Estimator {
    const ALL: [(Estimator, &'static str); 3] = [
        (Estimator::Median, "median"),
        (Estimator::Mean, "mean"),
        (Estimator::Tms, "TMS (mean within 2.5x of the median)"),
    ];

    fn estimate(self, runs: &[u64]) -> u64 {
        match self {
            Estimator::Median => {
                let mut sorted = runs.to_vec();
                sorted.sort_unstable();
                sorted[sorted.len() / 2]
            }
            Estimator::Mean => (runs.iter().sum::<u64>() as f64 / runs.len() as f64).round() as u64,
            Estimator::Tms => tms::domain::timing::robust_mean(runs).unwrap_or(0),
        }
    }
}

/// A draw from the standard normal distribution (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let (u1, u2) = (rng.next(), rng.next());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// One run of a test whose typical duration is `ms`: log-normal noise of
/// `sigma`, and with probability `slow` a run on a bad machine, four times
/// slower.
fn observed(ms: u64, sigma: f64, slow: f64, rng: &mut Rng) -> u64 {
    let bad = if rng.next() < slow { 4.0 } else { 1.0 };
    ((ms as f64) * (sigma * normal(rng)).exp() * bad)
        .ceil()
        .max(1.0) as u64
}

impl Suite {
    /// Static LPT planned on estimates made from `history` recorded runs of
    /// every test: the plan's makespan on the tests' typical durations
    /// (their recorded ones) over the bound on those, so that only the
    /// estimates' errors show, not one more run's noise.
    fn planned_from_history(
        &self,
        m: usize,
        history: usize,
        estimator: Estimator,
        slow: f64,
        seed: u64,
    ) -> f64 {
        let mut rng = Rng(seed);
        let specs: Vec<TestSpec> = self
            .tests
            .iter()
            .map(|(name, ms)| {
                let runs: Vec<u64> = (0..history)
                    .map(|_| observed(*ms, SIGMA, slow, &mut rng))
                    .collect();
                TestSpec {
                    name: name.clone(),
                    duration_hint_ms: Some(estimator.estimate(&runs)),
                }
            })
            .collect();
        let typical: HashMap<&str, u64> =
            self.tests.iter().map(|(n, ms)| (n.as_str(), *ms)).collect();
        let makespan = tms::scheduling::split_tests(&specs, m as u32)
            .iter()
            .map(|s| s.tests.iter().map(|t| typical[t.as_str()]).sum::<u64>())
            .max()
            .unwrap_or(0);
        makespan as f64 / self.lower_bound(m)
    }
}

/// Log-normal noise of a test's duration from run to run.
const SIGMA: f64 = 0.3;

/// Runs of history the estimator table looks at.
const HISTORIES: [usize; 6] = [1, 2, 3, 4, 6, 10];

/// Plans made from a few runs of history with each estimator: the real
/// suites, 8 and 16 shards, clean runs and runs of which one in ten was on
/// a machine four times slower.
fn estimator_tables(suites: &[Suite]) {
    for (title, slow) in [
        ("every run with log-normal noise (sigma 0.3)", 0.0),
        (
            "log-normal noise (sigma 0.3), and one run in ten on a machine four times slower",
            0.1,
        ),
    ] {
        println!(
            "\nStatic LPT planned on estimates from k recorded runs of each test, {title}: \
             the plan's makespan on the tests' typical (recorded) durations over its bound, \
             median of 20 draws of the history, over the real profiles and m = 8 and 16 \
             (each cell: the median of those 2 x {} medians, then the worst of them).\n",
            suites.len()
        );
        let header: Vec<String> = HISTORIES.iter().map(|k| format!("k={k}")).collect();
        println!("| estimator | {} |", header.join(" | "));
        println!("|---|{}", "---|".repeat(HISTORIES.len()));
        for (estimator, label) in Estimator::ALL {
            let cells: Vec<String> = HISTORIES
                .iter()
                .map(|&k| {
                    let per_case: Vec<f64> = suites
                        .iter()
                        .flat_map(|suite| [8usize, 16].map(|m| (suite, m)))
                        .map(|(suite, m)| {
                            median(
                                (0..20)
                                    .map(|draw| {
                                        suite.planned_from_history(
                                            m,
                                            k,
                                            estimator,
                                            slow,
                                            1_000 + draw,
                                        )
                                    })
                                    .collect(),
                            )
                        })
                        .collect();
                    let worst = per_case.iter().copied().fold(0.0, f64::max);
                    format!("{:.3} ({:.3})", median(per_case), worst)
                })
                .collect();
            println!("| {label} | {} |", cells.join(" | "));
        }
    }
}

/// One simulated run: noise on each test's duration, spread of the
/// runners' speeds, the draw, and what each batch costs beyond its tests.
struct Run {
    noise: f64,
    spread: f64,
    seed: u64,
    overhead: u64,
}

/// What one batch costs beyond its tests: the claim round trip and starting
/// the test process (pytest or Jest start in about half a second).
const OVERHEAD_MS: u64 = 500;
