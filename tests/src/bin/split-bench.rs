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
//! A second table runs each plan with ±30 % noise on every test's duration:
//! the static LPT split beside dynamic mode's batches
//! (`tms::scheduling::plan_batches`, claimed by whichever runner is free).
//!
//! Each input file is `{"source": …, "unit": "seconds", "durations": {test: seconds}}`.
//! Prints the markdown tables of `docs/performance.md`.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use tms::domain::TestSpec;

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

    /// Dynamic mode planned on the recorded durations, run with the same
    /// noise: `m` runners each claim the next batch
    /// (`tms::scheduling::plan_batches`, in claim order) as soon as they
    /// finish one, paying `overhead` per batch (the claim and starting the
    /// test process); the makespan over the run's bound.
    fn dynamic_noisy(&self, m: usize, run: &Run) -> f64 {
        let (actual, speeds, bound) = self.noisy_run(m, run.noise, run.spread, run.seed);
        let batches = tms::scheduling::plan_batches(
            &self.specs(),
            m as u32,
            tms::scheduling::MAX_BATCHES,
            tms::config::Config::default().dynamic_min_batch_ms,
        );
        // (time free in µs, runner): whichever is free first claims next.
        let mut free: BinaryHeap<Reverse<(u64, usize)>> = (0..m).map(|r| Reverse((0, r))).collect();
        let mut makespan = 0u64;
        for batch in &batches {
            let Some(Reverse((at, r))) = free.pop() else {
                break;
            };
            let work: u64 = batch.tests.iter().map(|t| actual[t.as_str()]).sum();
            let took = (run.overhead as f64 + work as f64 * speeds[r]) * 1000.0;
            let done = at + took as u64;
            makespan = makespan.max(done);
            free.push(Reverse((done, r)));
        }
        makespan as f64 / 1000.0 / bound
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
