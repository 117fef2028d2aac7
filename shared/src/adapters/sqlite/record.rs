//! A shard's row in compact form. The columns hold what queries and
//! conditions read (execution, index, status, runner, lease, deadline,
//! version) and, written once at insert, the test list; `doc` holds the
//! rest as a [`postcard`] record.
//!
//! Why: a shard's row is rewritten whole on every change of state, and
//! SQLite writes whole pages to the WAL and later into the database file.
//! With the shard as JSON (about 650 bytes, names and all) five rows filled
//! a page, so the writes of one group commit touched about one page each.
//! Rows without any document (an unsafe experiment) were the bound: 58 → 50
//! µs of server CPU per request, 19,600 → 25,600 requests/s (`load-bench
//! --repeat 5`, 64 clients, 3,000 executions). This record (about 120
//! bytes for a finished shard) got most of it: 62 → 54 µs and 22,700 →
//! 24,700 requests/s (1,000 executions, medians of 9), 56 → 52 µs and
//! 21,700 → 24,000 (3,000 executions, medians of 5). Rows written before
//! this (a JSON `doc`) are still read, and take this form at their next
//! change.
//!
//! postcard is not self-describing: fields are read back in the order they
//! were written. So the record is its own set of structs with no serde
//! attributes that skip fields, enums are stored by their serde names (a
//! reordered variant cannot change a stored value), and the conversions
//! name every field of the domain types, so adding a field there fails to
//! compile here until the record carries it too.

use crate::domain::shard::ShardDispatch;
use crate::domain::{AttemptRecord, Mode, Shard, ShardResult, ShardStatus, TestResult, TestStatus};
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, LeaseId, RunnerId};
use crate::time::Timestamp;
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;

/// The columns of a shard's row that its record does not repeat.
pub(super) struct Columns {
    pub execution_id: String,
    pub index: u32,
    pub status: String,
    pub runner_id: Option<String>,
    pub lease_id: Option<String>,
    pub deadline: Option<i64>,
    pub version: u64,
}

/// Version of the record's layout, its first byte: a later layout can be
/// told apart from this one instead of being misread. Layout 2 added the
/// result's flaky count, layout 3 its exit code; rows of earlier layouts
/// are still read (as none flaky, no exit code) and take the current
/// layout at their next change.
const LAYOUT: u8 = 3;
const LAYOUT_2: u8 = 2;
const LAYOUT_1: u8 = 1;

/// A shard's record, `R` its result's record (the one part that differs
/// between layouts).
#[derive(Serialize, Deserialize)]
struct Record<'a, R> {
    #[serde(borrow)]
    suite: Cow<'a, str>,
    estimated_ms: Option<u64>,
    attempt: u32,
    assigned_at: Option<i64>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    #[serde(borrow)]
    avoid_runners: Vec<Cow<'a, str>>,
    result: Option<R>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dispatch: Option<(Cow<'a, str>, i64)>,
    /// `None`: static, the mode of nearly every shard.
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
    max_deadline: Option<i64>,
    retry_of: Option<u32>,
    test_attempt: u32,
    #[serde(borrow)]
    attempts: Vec<AttemptRow<'a>>,
}

impl<'a, R> Record<'a, R> {
    /// The same record, its result in another layout's form.
    fn with_result<S>(self, f: impl FnOnce(R) -> S) -> Record<'a, S> {
        let Record {
            suite,
            estimated_ms,
            attempt,
            assigned_at,
            started_at,
            finished_at,
            avoid_runners,
            result,
            error,
            dispatch,
            mode,
            max_deadline,
            retry_of,
            test_attempt,
            attempts,
        } = self;
        Record {
            suite,
            estimated_ms,
            attempt,
            assigned_at,
            started_at,
            finished_at,
            avoid_runners,
            result: result.map(f),
            error,
            dispatch,
            mode,
            max_deadline,
            retry_of,
            test_attempt,
            attempts,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ResultRecord<'a> {
    passed: u32,
    failed: u32,
    skipped: u32,
    #[serde(borrow)]
    tests: Vec<TestRow<'a>>,
    flaky: u32,
    exit_code: Option<i32>,
}

/// A result as layout 2 stored it: no exit code.
#[derive(Serialize, Deserialize)]
struct ResultRecord2<'a> {
    passed: u32,
    failed: u32,
    skipped: u32,
    #[serde(borrow)]
    tests: Vec<TestRow<'a>>,
    flaky: u32,
}

impl<'a> From<ResultRecord2<'a>> for ResultRecord<'a> {
    fn from(r: ResultRecord2<'a>) -> Self {
        ResultRecord {
            passed: r.passed,
            failed: r.failed,
            skipped: r.skipped,
            tests: r.tests,
            flaky: r.flaky,
            exit_code: None,
        }
    }
}

/// A result as layout 1 stored it: no flaky count.
#[derive(Serialize, Deserialize)]
struct ResultRecord1<'a> {
    passed: u32,
    failed: u32,
    skipped: u32,
    #[serde(borrow)]
    tests: Vec<TestRow<'a>>,
}

impl<'a> From<ResultRecord1<'a>> for ResultRecord<'a> {
    fn from(r: ResultRecord1<'a>) -> Self {
        ResultRecord {
            passed: r.passed,
            failed: r.failed,
            skipped: r.skipped,
            tests: r.tests,
            flaky: 0,
            exit_code: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TestRow<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    duration_ms: u64,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct AttemptRow<'a> {
    attempt: u32,
    #[serde(borrow)]
    lease_id: Cow<'a, str>,
    #[serde(borrow)]
    runner_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    passed: u32,
    failed: u32,
    skipped: u32,
    result_chunks: u32,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    finished_at: i64,
}

/// A value's serde name (a unit enum variant, as the JSON form writes it).
fn name_of<T: Serialize>(value: &T) -> Result<String> {
    match serde_json::to_value(value).map_err(Error::storage)? {
        serde_json::Value::String(name) => Ok(name),
        other => Err(Error::Internal(format!("{other} has no name"))),
    }
}

/// A value back from its serde name (or an id from its text).
fn from_name<T: DeserializeOwned>(name: &str) -> Result<T> {
    T::deserialize(name.into_deserializer()).map_err(|e: serde::de::value::Error| Error::storage(e))
}

fn borrowed(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

fn owned(s: Cow<'_, str>) -> String {
    s.into_owned()
}

/// The record of `shard`: everything its row's columns and test list do not hold.
pub(super) fn encode(shard: &Shard) -> Result<Vec<u8>> {
    let Shard {
        execution_id: _,
        suite,
        index: _,
        tests: _,
        estimated_ms,
        status: _,
        attempt,
        lease_id: _,
        runner_id: _,
        assigned_at,
        started_at,
        finished_at,
        deadline: _,
        avoid_runners,
        result,
        error,
        dispatch,
        mode,
        max_deadline,
        retry_of,
        test_attempt,
        attempts,
        version: _,
    } = shard;
    let result = match result {
        None => None,
        Some(ShardResult {
            passed,
            failed,
            skipped,
            flaky,
            tests,
            exit_code,
        }) => Some(ResultRecord {
            passed: *passed,
            failed: *failed,
            skipped: *skipped,
            flaky: *flaky,
            exit_code: *exit_code,
            tests: tests
                .iter()
                .map(|t| {
                    // A shard keeps its run's counts (`ShardResult::counts`);
                    // per-test results, earlier attempts included, are the
                    // execution's result chunks.
                    let TestResult {
                        name,
                        status,
                        duration_ms,
                        message,
                        earlier: _,
                        junit: _,
                    } = t;
                    Ok(TestRow {
                        name: borrowed(name),
                        status: Cow::Owned(name_of(status)?),
                        duration_ms: *duration_ms,
                        message: message.as_deref().map(borrowed),
                    })
                })
                .collect::<Result<_>>()?,
        }),
    };
    let attempts = attempts
        .iter()
        .map(|a| {
            let AttemptRecord {
                attempt,
                lease_id,
                runner_id,
                status,
                passed,
                failed,
                skipped,
                result_chunks,
                error,
                finished_at,
            } = a;
            AttemptRow {
                attempt: *attempt,
                lease_id: borrowed(lease_id.as_str()),
                runner_id: runner_id.as_ref().map(|r| borrowed(r.as_str())),
                status: borrowed(status.as_str()),
                passed: *passed,
                failed: *failed,
                skipped: *skipped,
                result_chunks: *result_chunks,
                error: error.as_deref().map(borrowed),
                finished_at: finished_at.0,
            }
        })
        .collect();
    let record = Record {
        suite: borrowed(suite),
        estimated_ms: *estimated_ms,
        attempt: *attempt,
        assigned_at: assigned_at.map(|t| t.0),
        started_at: started_at.map(|t| t.0),
        finished_at: finished_at.map(|t| t.0),
        avoid_runners: avoid_runners.iter().map(|r| borrowed(r.as_str())).collect(),
        result,
        error: error.as_deref().map(borrowed),
        dispatch: dispatch
            .as_ref()
            .map(|ShardDispatch { token_hash, at }| (borrowed(token_hash), at.0)),
        mode: match mode {
            Mode::Static => None,
            other => Some(Cow::Owned(name_of(other)?)),
        },
        max_deadline: max_deadline.map(|t| t.0),
        retry_of: *retry_of,
        test_attempt: *test_attempt,
        attempts,
    };
    let mut bytes = vec![LAYOUT];
    postcard::to_io(&record, &mut bytes).map_err(Error::storage)?;
    Ok(bytes)
}

/// The shard of a row: its columns, its record and its test list.
pub(super) fn decode(columns: Columns, doc: &[u8], tests: Arc<[String]>) -> Result<Shard> {
    let r: Record<'_, ResultRecord<'_>> = match doc.split_first() {
        Some((&LAYOUT, body)) => postcard::from_bytes(body).map_err(Error::storage)?,
        Some((&LAYOUT_2, body)) => {
            let r: Record<'_, ResultRecord2<'_>> =
                postcard::from_bytes(body).map_err(Error::storage)?;
            r.with_result(ResultRecord::from)
        }
        Some((&LAYOUT_1, body)) => {
            let r: Record<'_, ResultRecord1<'_>> =
                postcard::from_bytes(body).map_err(Error::storage)?;
            r.with_result(ResultRecord::from)
        }
        _ => {
            return Err(Error::Internal(format!(
                "a shard record of an unknown layout ({:?})",
                doc.first()
            )))
        }
    };
    let result = match r.result {
        None => None,
        Some(res) => Some(ShardResult {
            passed: res.passed,
            failed: res.failed,
            skipped: res.skipped,
            flaky: res.flaky,
            exit_code: res.exit_code,
            tests: res
                .tests
                .into_iter()
                .map(|t| {
                    Ok(TestResult {
                        status: from_name::<TestStatus>(&t.status)?,
                        name: owned(t.name),
                        duration_ms: t.duration_ms,
                        message: t.message.map(owned),
                        earlier: Vec::new(),
                        junit: None,
                    })
                })
                .collect::<Result<_>>()?,
        }),
    };
    let attempts = r
        .attempts
        .into_iter()
        .map(|a| {
            Ok(AttemptRecord {
                attempt: a.attempt,
                lease_id: from_name::<LeaseId>(&a.lease_id)?,
                runner_id: a.runner_id.as_deref().map(from_name).transpose()?,
                status: from_name::<ShardStatus>(&a.status)?,
                passed: a.passed,
                failed: a.failed,
                skipped: a.skipped,
                result_chunks: a.result_chunks,
                error: a.error.map(owned),
                finished_at: Timestamp(a.finished_at),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Shard {
        execution_id: from_name::<ExecutionId>(&columns.execution_id)?,
        suite: owned(r.suite),
        index: columns.index,
        tests,
        estimated_ms: r.estimated_ms,
        status: from_name::<ShardStatus>(&columns.status)?,
        attempt: r.attempt,
        lease_id: columns.lease_id.as_deref().map(from_name).transpose()?,
        runner_id: columns.runner_id.as_deref().map(from_name).transpose()?,
        assigned_at: r.assigned_at.map(Timestamp),
        started_at: r.started_at.map(Timestamp),
        finished_at: r.finished_at.map(Timestamp),
        deadline: columns.deadline.map(Timestamp),
        avoid_runners: r
            .avoid_runners
            .iter()
            .map(|s| from_name::<RunnerId>(s))
            .collect::<Result<_>>()?,
        result,
        error: r.error.map(owned),
        dispatch: r.dispatch.map(|(token_hash, at)| ShardDispatch {
            token_hash: owned(token_hash),
            at: Timestamp(at),
        }),
        mode: match r.mode {
            None => Mode::Static,
            Some(name) => from_name(&name)?,
        },
        max_deadline: r.max_deadline.map(Timestamp),
        retry_of: r.retry_of,
        test_attempt: r.test_attempt,
        attempts,
        version: columns.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn columns(s: &Shard) -> Columns {
        Columns {
            execution_id: s.execution_id.to_string(),
            index: s.index,
            status: s.status.as_str().to_owned(),
            runner_id: s.runner_id.as_ref().map(|r| r.to_string()),
            lease_id: s.lease_id.as_ref().map(|l| l.to_string()),
            deadline: s.deadline.map(|d| d.0),
            version: s.version,
        }
    }

    fn round_trip(s: &Shard) -> Shard {
        let doc = encode(s).expect("encoded");
        decode(columns(s), &doc, s.tests.clone()).expect("decoded")
    }

    /// A shard after a lost run, a passed retry and a dispatch, with every
    /// optional field set.
    fn eventful() -> Shard {
        let mut s = fixtures::shards(&fixtures::execution(2)).remove(1);
        let (runner, lease) = (RunnerId::generate(), LeaseId::generate());
        s.status = ShardStatus::Passed;
        s.attempt = 2;
        s.estimated_ms = Some(1_500);
        s.lease_id = Some(lease.clone());
        s.runner_id = Some(runner.clone());
        s.assigned_at = Some(Timestamp(10));
        s.started_at = Some(Timestamp(11));
        s.finished_at = Some(Timestamp(12));
        s.deadline = Some(Timestamp(13));
        s.avoid_runners = vec![RunnerId::generate()];
        s.result = Some(ShardResult {
            exit_code: Some(1),
            passed: 3,
            failed: 1,
            skipped: 2,
            flaky: 1,
            tests: vec![TestResult {
                name: "a::b".into(),
                status: TestStatus::Failed,
                duration_ms: 7,
                message: Some("boom".into()),
                earlier: Vec::new(),
                junit: None,
            }],
        });
        s.error = Some("lost its runner once".into());
        s.dispatch = Some(ShardDispatch {
            token_hash: "abc".into(),
            at: Timestamp(9),
        });
        s.mode = Mode::Dynamic;
        s.max_deadline = Some(Timestamp(99));
        s.retry_of = Some(0);
        s.test_attempt = 1;
        s.attempts = vec![AttemptRecord {
            attempt: 1,
            lease_id: LeaseId::generate(),
            runner_id: Some(runner),
            status: ShardStatus::Errored,
            passed: 0,
            failed: 0,
            skipped: 0,
            result_chunks: 2,
            error: Some("runner went silent".into()),
            finished_at: Timestamp(8),
        }];
        s.version = 7;
        s
    }

    #[test]
    fn a_record_with_its_columns_brings_back_every_field_of_the_shard() {
        let full = eventful();
        assert_eq!(round_trip(&full), full);
        let fresh = fixtures::shards(&fixtures::execution(1)).remove(0);
        assert_eq!(round_trip(&fresh), fresh);
        let claimed = Shard {
            mode: Mode::ByIndex,
            ..fresh
        };
        assert_eq!(round_trip(&claimed), claimed);
    }

    #[test]
    fn a_finished_shards_record_is_a_fraction_of_its_json() {
        let mut s = eventful();
        s.result = s.result.as_ref().map(ShardResult::counts);
        let (record, json) = (
            encode(&s).expect("encoded").len(),
            serde_json::to_vec(&s).expect("json").len(),
        );
        assert!(record * 3 < json, "record {record} bytes, JSON {json}");
    }

    /// `s` as a row written under an earlier `layout`, read back now:
    /// `rewrite` turns the current record's body into that layout's.
    fn read_as_written_in(
        s: &Shard,
        layout: u8,
        rewrite: impl FnOnce(&[u8], &mut Vec<u8>),
    ) -> Shard {
        let doc = encode(s).expect("encoded");
        let mut old = vec![layout];
        rewrite(&doc[1..], &mut old);
        decode(columns(s), &old, s.tests.clone()).expect("decoded")
    }

    #[test]
    fn a_record_of_layout_1_reads_back_with_no_flaky_tests() {
        let s = eventful();
        let read = read_as_written_in(&s, LAYOUT_1, |body, old| {
            let current: Record<'_, ResultRecord<'_>> = postcard::from_bytes(body).unwrap();
            let before = current.with_result(|r| ResultRecord1 {
                passed: r.passed,
                failed: r.failed,
                skipped: r.skipped,
                tests: r.tests,
            });
            postcard::to_io(&before, old).unwrap();
        });
        let mut expected = s.clone();
        if let Some(r) = expected.result.as_mut() {
            r.flaky = 0;
            r.exit_code = None;
        }
        assert_eq!(read, expected);
    }

    #[test]
    fn a_record_of_layout_2_reads_back_with_no_exit_code() {
        let s = eventful();
        let read = read_as_written_in(&s, LAYOUT_2, |body, old| {
            let current: Record<'_, ResultRecord<'_>> = postcard::from_bytes(body).unwrap();
            let before = current.with_result(|r| ResultRecord2 {
                passed: r.passed,
                failed: r.failed,
                skipped: r.skipped,
                tests: r.tests,
                flaky: r.flaky,
            });
            postcard::to_io(&before, old).unwrap();
        });
        let mut expected = s.clone();
        if let Some(r) = expected.result.as_mut() {
            r.exit_code = None;
        }
        assert_eq!(read, expected);
    }

    #[test]
    fn a_record_of_another_layout_is_refused_not_misread() {
        let s = eventful();
        let mut doc = encode(&s).expect("encoded");
        doc[0] = LAYOUT + 1;
        assert!(decode(columns(&s), &doc, s.tests.clone()).is_err());
        assert!(decode(columns(&s), &[], s.tests.clone()).is_err());
    }
}
