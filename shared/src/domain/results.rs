//! Per-test results, pure: whether a shard's report covers the tests it was
//! given (no silent pass), how results are cut into chunks that fit a
//! DynamoDB item, and how every attempt of every shard merges into one view
//! of each test (its final result, earlier attempts, flakiness).

use super::shard::{Shard, ShardResult, TestResult, TestStatus};
use crate::error::{Error, Result};
use crate::ids::{LeaseId, RunnerId};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use utoipa::ToSchema;

/// Longest failure message kept per test; stack traces beyond it are cut
/// (the CI log has them whole), so one test can never outgrow a chunk.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Largest chunk body. DynamoDB items are at most 400 KB including keys and
/// attribute names; this leaves room for both.
pub const MAX_CHUNK_BYTES: usize = 350_000;

/// How many names a coverage problem lists before "and N more".
const NAMES_SHOWN: usize = 5;

/// Why a report does not account for the tests its shard was given, if it
/// does not. A given test is covered by a result of the same name or by
/// results under it (a file or class given, its cases reported:
/// `tests/test_cart.py` covers `tests/test_cart.py::test_total[1]`).
/// A shard given no list runs the whole suite and is not checked.
pub fn coverage_gap(given: &[String], result: &ShardResult) -> Option<String> {
    if given.is_empty() {
        return None;
    }
    if result.tests.is_empty() {
        let reported = result.passed + result.failed + result.skipped;
        return ((reported as usize) < given.len()).then(|| {
            format!(
                "reported {reported} results for the {} tests it was given",
                given.len()
            )
        });
    }
    let wanted = crate::naming::Given::new(given);
    let mut covered: HashSet<&str> = HashSet::new();
    let mut unexpected: Vec<&str> = Vec::new();
    for test in &result.tests {
        match wanted.owner(&test.name) {
            Some(given) => {
                covered.insert(given);
            }
            None => unexpected.push(&test.name),
        }
    }
    let missing: Vec<&str> = given
        .iter()
        .map(String::as_str)
        .filter(|g| !covered.contains(g))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} of the {} tests it was given were not reported: {}",
            missing.len(),
            given.len(),
            listing(&missing)
        ));
    }
    (!unexpected.is_empty()).then(|| {
        format!(
            "reported {} tests it was not given: {}",
            unexpected.len(),
            listing(&unexpected)
        )
    })
}

fn listing(names: &[&str]) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).copied().collect();
    let mut text = shown.join(", ");
    if names.len() > NAMES_SHOWN {
        text.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    text
}

/// Cuts a message to `MAX_MESSAGE_BYTES` on a character boundary.
fn trimmed(message: &str) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// The results as JSON arrays of at most `max_bytes` each, in order.
/// Messages are cut to `MAX_MESSAGE_BYTES` first.
pub fn chunk(tests: &[TestResult], max_bytes: usize) -> Result<Vec<String>> {
    let mut chunks = Vec::new();
    let mut current = String::from("[");
    for test in tests {
        let mut test = test.clone();
        test.message = test.message.as_deref().map(trimmed);
        for earlier in &mut test.earlier {
            earlier.message = earlier.message.as_deref().map(trimmed);
        }
        let json = serde_json::to_string(&test)
            .map_err(|e| Error::Internal(format!("test result not serialisable: {e}")))?;
        // +2: the separating comma and the closing bracket.
        if current.len() > 1 && current.len() + json.len() + 2 > max_bytes {
            current.push(']');
            chunks.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&json);
    }
    if current.len() > 1 {
        current.push(']');
        chunks.push(current);
    }
    Ok(chunks)
}

/// One stored chunk of a run's results.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultChunk {
    pub shard_index: u32,
    pub lease_id: LeaseId,
    pub chunk: u32,
    pub body: String,
}

impl ResultChunk {
    pub fn tests(&self) -> Result<Vec<TestResult>> {
        serde_json::from_str(&self.body).map_err(|e| {
            Error::Internal(format!(
                "stored results of shard {} are unreadable: {e}",
                self.shard_index
            ))
        })
    }
}

/// A test's result in one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TestAttempt {
    /// 1 for the test's first run, 2 for the next (a retried shard or an
    /// automatic retry of the failed tests), and so on.
    pub attempt: u32,
    /// The shard that ran it (an automatic retry runs in a shard of its own).
    pub shard_index: u32,
    #[serde(skip)]
    finished_at: crate::time::Timestamp,
    #[schema(value_type = Option<String>)]
    pub runner_id: Option<RunnerId>,
    pub status: TestStatus,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Every attempt of one test, newest last; the newest is its result.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct MergedTest {
    pub name: String,
    /// The shard the test was first planned in (retries run elsewhere).
    pub shard_index: u32,
    /// The final result: the newest attempt's.
    pub status: TestStatus,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failed or errored in an earlier attempt, passed in the last.
    pub flaky: bool,
    pub attempts: Vec<TestAttempt>,
    /// The case's `classname` and `name` as its tool's JUnit report wrote
    /// them (the newest run's that said).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub junit: Option<super::shard::JunitName>,
}

/// The shard a retry chain started from.
fn root(shards: &[Shard], mut index: u32) -> u32 {
    for _ in 0..shards.len() {
        match shards
            .iter()
            .find(|s| s.index == index)
            .and_then(|s| s.retry_of)
        {
            Some(of) => index = of,
            None => break,
        }
    }
    index
}

/// Merges the stored results of every recorded run of every shard. Chunks of
/// runs a shard did not record (a report that lost its race) are ignored.
/// A test's runs in automatic retries join its runs in the shard it was
/// planned in. Results of the same name within one run are different
/// cases (jest and mocha let titles repeat; the tools whose ids are unique
/// write a retried test's attempts as repeats, and those are folded into
/// one result when the report is read): the n-th of a name in one run is
/// the n-th in another.
pub fn merge(shards: &[Shard], chunks: &[ResultChunk]) -> Result<Vec<MergedTest>> {
    let mut by_run: HashMap<(u32, &LeaseId), Vec<&ResultChunk>> = HashMap::new();
    for c in chunks {
        by_run
            .entry((c.shard_index, &c.lease_id))
            .or_default()
            .push(c);
    }
    let mut merged: Vec<MergedTest> = Vec::new();
    let mut position: HashMap<(u32, String, u32), usize> = HashMap::new();
    for shard in shards {
        for run in &shard.attempts {
            let Some(stored) = by_run.get_mut(&(shard.index, &run.lease_id)) else {
                continue;
            };
            stored.sort_by_key(|c| c.chunk);
            // How many results of each name this run has had so far.
            let mut seen: HashMap<String, u32> = HashMap::new();
            for chunk in stored.iter().take(run.result_chunks as usize) {
                for test in chunk.tests()? {
                    let planned_in = root(shards, shard.index);
                    let in_run = |status: TestStatus, duration_ms: u64, message: Option<String>| {
                        TestAttempt {
                            attempt: run.attempt,
                            shard_index: shard.index,
                            finished_at: run.finished_at,
                            runner_id: run.runner_id.clone(),
                            status,
                            duration_ms,
                            message,
                        }
                    };
                    // The tool's own retries in this run come first (the
                    // sort below is stable), then the run's result.
                    let mut attempts: Vec<TestAttempt> = test
                        .earlier
                        .iter()
                        .map(|e| in_run(e.status, 0, e.message.clone()))
                        .collect();
                    attempts.push(in_run(test.status, test.duration_ms, test.message.clone()));
                    let nth = seen.entry(test.name.clone()).or_default();
                    let key = (planned_in, test.name.clone(), *nth);
                    *nth += 1;
                    match position.get(&key) {
                        Some(&i) => {
                            merged[i].attempts.extend(attempts);
                            if test.junit.is_some() {
                                merged[i].junit = test.junit;
                            }
                        }
                        None => {
                            position.insert(key, merged.len());
                            merged.push(MergedTest {
                                name: test.name,
                                shard_index: planned_in,
                                status: test.status,
                                duration_ms: test.duration_ms,
                                message: None,
                                flaky: false,
                                attempts,
                                junit: test.junit,
                            });
                        }
                    }
                }
            }
        }
    }
    for test in &mut merged {
        test.attempts
            .sort_by_key(|a| (a.finished_at, a.shard_index, a.attempt));
        for (i, a) in test.attempts.iter_mut().enumerate() {
            a.attempt = i as u32 + 1;
        }
        if let Some(last) = test.attempts.last() {
            test.status = last.status;
            test.duration_ms = last.duration_ms;
            test.message = last.message.clone();
        }
        test.flaky = test.status == TestStatus::Passed
            && test
                .attempts
                .iter()
                .any(|a| matches!(a.status, TestStatus::Failed | TestStatus::Errored));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn result(names: &[&str]) -> ShardResult {
        ShardResult {
            passed: names.len() as u32,
            failed: 0,
            skipped: 0,
            flaky: 0,
            exit_code: None,
            tests: names
                .iter()
                .map(|n| TestResult {
                    name: (*n).into(),
                    status: TestStatus::Passed,
                    duration_ms: 1,
                    message: None,
                    earlier: Vec::new(),
                    junit: None,
                })
                .collect(),
        }
    }

    fn given(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_report_that_names_every_given_test_or_its_cases_is_complete() {
        let g = given(&["tests/test_cart.py", "tests/test_pay.py::test_card"]);
        let r = result(&[
            "tests/test_cart.py::test_total[1]",
            "tests/test_cart.py::TestCart::test_add",
            "tests/test_pay.py::test_card",
        ]);
        assert_eq!(coverage_gap(&g, &r), None);
    }

    #[test]
    fn a_report_missing_given_tests_names_them() {
        let g = given(&["a", "b", "c"]);
        let gap = coverage_gap(&g, &result(&["a"])).unwrap();
        assert_eq!(gap, "2 of the 3 tests it was given were not reported: b, c");
    }

    #[test]
    fn tests_nobody_asked_for_are_a_gap_and_a_longer_word_is_not_a_case() {
        let g = given(&["test_a"]);
        let gap = coverage_gap(&g, &result(&["test_a", "test_ab"])).unwrap();
        assert!(gap.contains("not given: test_ab"), "{gap}");
    }

    #[test]
    fn counts_alone_must_account_for_every_given_test() {
        let g = given(&["a", "b", "c"]);
        let r = ShardResult {
            passed: 2,
            ..Default::default()
        };
        assert_eq!(
            coverage_gap(&g, &r).unwrap(),
            "reported 2 results for the 3 tests it was given"
        );
        assert_eq!(coverage_gap(&[], &r), None);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let t = TestResult {
            name: "t".into(),
            status: TestStatus::Failed,
            duration_ms: 0,
            message: Some("é".repeat(MAX_MESSAGE_BYTES)),
            earlier: Vec::new(),
            junit: None,
        };
        let chunks = chunk(&[t], MAX_CHUNK_BYTES).unwrap();
        let back: Vec<TestResult> = serde_json::from_str(&chunks[0]).unwrap();
        let m = back[0].message.as_ref().unwrap();
        assert!(m.len() <= MAX_MESSAGE_BYTES && m.ends_with('…'));
    }

    #[test]
    fn results_of_a_run_the_shard_never_recorded_are_left_out() {
        use crate::domain::shard::ShardOutcome;
        use crate::ids::ExecutionId;
        use crate::time::Timestamp;
        let mut shard = Shard::new(ExecutionId::generate(), "s", 0, given(&["a"]), None);
        let lease = LeaseId::generate();
        shard
            .assign(
                RunnerId::generate(),
                lease.clone(),
                Timestamp(0),
                Timestamp(9),
            )
            .unwrap();
        let r = result(&["a"]);
        shard
            .complete(&lease, ShardOutcome::Passed, &r, 1, Timestamp(1))
            .unwrap();
        let body = chunk(&r.tests, MAX_CHUNK_BYTES).unwrap().remove(0);
        let stored = |lease: &LeaseId| ResultChunk {
            shard_index: 0,
            lease_id: lease.clone(),
            chunk: 0,
            body: body.clone(),
        };
        let orphan = stored(&LeaseId::generate());
        let merged = merge(&[shard], &[orphan, stored(&lease)]).unwrap();
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].attempts.len(), 1);
    }

    #[test]
    fn cases_of_the_same_name_in_a_run_stay_apart_and_a_rerun_matches_them_in_order() {
        use crate::domain::shard::ShardOutcome;
        use crate::ids::ExecutionId;
        use crate::time::Timestamp;
        let mut shard = Shard::new(ExecutionId::generate(), "s", 0, given(&["Cart"]), None);
        let mut chunks = Vec::new();
        // Two jest cases titled alike: the second fails, then passes when
        // the shard is run again.
        for (run, second) in [TestStatus::Failed, TestStatus::Passed]
            .into_iter()
            .enumerate()
        {
            let lease = LeaseId::generate();
            shard
                .assign(
                    RunnerId::generate(),
                    lease.clone(),
                    Timestamp(run as i64 * 10),
                    Timestamp(99),
                )
                .unwrap();
            let mut r = result(&["Cart adds items", "Cart adds items"]);
            r.tests[1].status = second;
            r.tests[1].duration_ms = 7;
            r = ShardResult::of(r.tests);
            let outcome = if second == TestStatus::Passed {
                ShardOutcome::Passed
            } else {
                ShardOutcome::Failed
            };
            shard
                .complete(&lease, outcome, &r, 1, Timestamp(run as i64 * 10 + 5))
                .unwrap();
            chunks.push(ResultChunk {
                shard_index: 0,
                lease_id: lease,
                chunk: 0,
                body: chunk(&r.tests, MAX_CHUNK_BYTES).unwrap().remove(0),
            });
            if run == 0 {
                shard.retry().unwrap();
            }
        }
        let merged = merge(&[shard], &chunks).unwrap();
        let seen: Vec<(u64, usize, bool)> = merged
            .iter()
            .map(|t| (t.duration_ms, t.attempts.len(), t.flaky))
            .collect();
        assert_eq!(seen, vec![(1, 2, false), (7, 2, true)]);
    }

    fn arb_test() -> impl Strategy<Value = TestResult> {
        (
            "[a-z/:._\\[\\]0-9]{1,60}",
            prop_oneof![Just(TestStatus::Passed), Just(TestStatus::Failed)],
            0u64..100_000,
            proptest::option::of(".{0,5000}"),
        )
            .prop_map(|(name, status, duration_ms, message)| TestResult {
                name,
                status,
                duration_ms,
                message,
                earlier: Vec::new(),
                junit: None,
            })
    }

    proptest! {
        #[test]
        fn chunks_stay_under_the_limit_and_give_back_every_result_in_order(
            tests in proptest::collection::vec(arb_test(), 0..200),
            max in 30_000usize..60_000,
        ) {
            let chunks = chunk(&tests, max).unwrap();
            let mut back = Vec::new();
            for c in &chunks {
                prop_assert!(c.len() <= max, "{} > {max}", c.len());
                back.extend(serde_json::from_str::<Vec<TestResult>>(c).unwrap());
            }
            prop_assert_eq!(back.len(), tests.len());
            for (b, t) in back.iter().zip(&tests) {
                prop_assert_eq!(&b.name, &t.name);
                prop_assert_eq!(b.status, t.status);
                let expected = t.message.as_deref().map(trimmed);
                prop_assert_eq!(b.message.as_deref(), expected.as_deref());
            }
        }
    }
}
