//! JUnit XML: reports are read by [`tms_junit`] (re-exported here; the CI
//! client builds with it alone), and one merged report of an execution is
//! written here.

pub use tms_junit::{combine, parse, CaseAttempt, CaseOutcome, JunitCase, NameFormat};

use crate::error::{Error, Result};
use quick_xml::events::{BytesStart, Event};

impl From<tms_junit::ReportError> for Error {
    fn from(e: tms_junit::ReportError) -> Error {
        Error::validation("junit", e.0)
    }
}

/// Splits a test id into JUnit's `classname` and `name`: at the last `::`
/// (pytest, Rust), else at the last `.` of a dotted id without spaces
/// (Java), else the suite is the class.
fn class_and_name<'a>(id: &'a str, suite: &'a str) -> (&'a str, &'a str) {
    if let Some(i) = id.rfind("::") {
        return (&id[..i], &id[i + 2..]);
    }
    match id.rfind('.') {
        Some(i) if !id.contains(char::is_whitespace) && i > 0 && i + 1 < id.len() => {
            (&id[..i], &id[i + 1..])
        }
        _ => (suite, id),
    }
}

/// Seconds as the common schema wants them (`SUREFIRE_TIME`: at most three
/// decimals, no exponent).
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

type XmlWriter = quick_xml::Writer<Vec<u8>>;

fn xml_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("writing the JUnit report: {e}"))
}

fn text_element(w: &mut XmlWriter, tag: &str, attrs: &[(&str, &str)], text: &str) -> Result<()> {
    let mut start = BytesStart::new(tag);
    for (k, v) in attrs {
        start.push_attribute((*k, *v));
    }
    if text.is_empty() {
        return w.write_event(Event::Empty(start)).map_err(xml_err);
    }
    w.write_event(Event::Start(start)).map_err(xml_err)?;
    w.write_event(Event::Text(quick_xml::events::BytesText::new(&xml_safe(
        text,
    ))))
    .map_err(xml_err)?;
    w.write_event(Event::End(quick_xml::events::BytesEnd::new(tag)))
        .map_err(xml_err)
}

/// XML 1.0 cannot carry most control characters, nor U+FFFE and U+FFFF,
/// even escaped (its `Char` production); test output has them (ANSI
/// colours, binary garbage in a message). They become U+FFFD.
fn xml_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{FFFE}' | '\u{FFFF}')
    };
    if text.contains(bad) {
        text.chars()
            .map(|c| if bad(c) { '\u{FFFD}' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// One merged JUnit XML report of an execution: a `<testsuite>` per shard
/// (its runner as `hostname`, attempts and TMS ids as properties) with each
/// test's final result. Earlier failed attempts are kept as Surefire does:
/// `<flakyFailure>` / `<flakyError>` when the test passed in the end,
/// `<rerunFailure>` / `<rerunError>` when it did not. A shard that errored
/// is also reported as an errored case, so a consumer of the file cannot
/// miss work that never produced results. Valid against the common JUnit
/// schema (`junit-10.xsd`, as pytest and Jenkins use).
pub fn merged_report(
    execution: &crate::domain::Execution,
    shards: &[crate::domain::Shard],
    tests: &[crate::domain::MergedTest],
) -> Result<String> {
    use crate::domain::{ShardStatus, TestStatus};
    let suite = xml_safe(&execution.suite);
    let suite = suite.as_ref();
    let count = |pred: &dyn Fn(&crate::domain::MergedTest) -> bool,
                 of: &[&crate::domain::MergedTest]| {
        of.iter().filter(|t| pred(t)).count()
    };
    let mut w = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(quick_xml::events::BytesDecl::new(
        "1.0",
        Some("UTF-8"),
        None,
    )))
    .map_err(xml_err)?;
    let per_shard: Vec<Vec<&crate::domain::MergedTest>> = shards
        .iter()
        .map(|s| tests.iter().filter(|t| t.shard_index == s.index).collect())
        .collect();
    let shard_errored = |s: &crate::domain::Shard| {
        matches!(s.status, ShardStatus::Errored | ShardStatus::Cancelled)
    };
    let all: Vec<&crate::domain::MergedTest> = tests.iter().collect();
    let errored_shards = shards.iter().filter(|s| shard_errored(s)).count();
    let total_ms: u64 = tests.iter().map(|t| t.duration_ms).sum();
    let mut root = BytesStart::new("testsuites");
    root.push_attribute(("name", suite));
    root.push_attribute(("tests", (tests.len() + errored_shards).to_string().as_str()));
    root.push_attribute((
        "failures",
        count(&|t| t.status == TestStatus::Failed, &all)
            .to_string()
            .as_str(),
    ));
    root.push_attribute((
        "errors",
        (count(&|t| t.status == TestStatus::Errored, &all) + errored_shards)
            .to_string()
            .as_str(),
    ));
    root.push_attribute(("time", seconds(total_ms).as_str()));
    w.write_event(Event::Start(root)).map_err(xml_err)?;
    for (shard, cases) in shards.iter().zip(&per_shard) {
        let errored = shard_errored(shard);
        // An automatic retry's runs are shown with the tests' first runs.
        if shard.retry_of.is_some() && cases.is_empty() && !errored {
            continue;
        }
        let mut start = BytesStart::new("testsuite");
        let name = format!("{suite} [shard {}]", shard.index);
        start.push_attribute(("name", name.as_str()));
        start.push_attribute(("id", shard.index.to_string().as_str()));
        start.push_attribute((
            "tests",
            (cases.len() + usize::from(errored)).to_string().as_str(),
        ));
        start.push_attribute((
            "failures",
            count(&|t| t.status == TestStatus::Failed, cases)
                .to_string()
                .as_str(),
        ));
        start.push_attribute((
            "errors",
            (count(&|t| t.status == TestStatus::Errored, cases) + usize::from(errored))
                .to_string()
                .as_str(),
        ));
        start.push_attribute((
            "skipped",
            count(&|t| t.status == TestStatus::Skipped, cases)
                .to_string()
                .as_str(),
        ));
        let ms: u64 = cases.iter().map(|t| t.duration_ms).sum();
        start.push_attribute(("time", seconds(ms).as_str()));
        if let Some(at) = shard.started_at.or(shard.assigned_at) {
            start.push_attribute(("timestamp", at.to_rfc3339().as_str()));
        }
        if let Some(runner) = &shard.runner_id {
            start.push_attribute(("hostname", runner.as_str()));
        }
        w.write_event(Event::Start(start)).map_err(xml_err)?;
        w.write_event(Event::Start(BytesStart::new("properties")))
            .map_err(xml_err)?;
        let mut props = vec![
            ("tms.execution_id", execution.id.to_string()),
            ("tms.shard", shard.index.to_string()),
            ("tms.status", shard.status.as_str().to_owned()),
            ("tms.attempts", shard.attempt.to_string()),
            ("tms.flaky", count(&|t| t.flaky, cases).to_string()),
        ];
        if let Some(error) = &shard.error {
            props.push(("tms.error", error.clone()));
        }
        for (k, v) in &props {
            text_element(
                &mut w,
                "property",
                &[("name", k), ("value", &xml_safe(v))],
                "",
            )?;
        }
        w.write_event(Event::End(quick_xml::events::BytesEnd::new("properties")))
            .map_err(xml_err)?;
        for t in cases {
            write_case(&mut w, suite, t)?;
        }
        if errored {
            let why = shard.error.as_deref().unwrap_or(shard.status.as_str());
            let name = format!("shard {}", shard.index);
            let mut start = BytesStart::new("testcase");
            start.push_attribute(("classname", "tms"));
            start.push_attribute(("name", name.as_str()));
            start.push_attribute(("time", "0.000"));
            w.write_event(Event::Start(start)).map_err(xml_err)?;
            text_element(
                &mut w,
                "error",
                &[("type", shard.status.as_str()), ("message", &xml_safe(why))],
                why,
            )?;
            w.write_event(Event::End(quick_xml::events::BytesEnd::new("testcase")))
                .map_err(xml_err)?;
        }
        w.write_event(Event::End(quick_xml::events::BytesEnd::new("testsuite")))
            .map_err(xml_err)?;
    }
    w.write_event(Event::End(quick_xml::events::BytesEnd::new("testsuites")))
        .map_err(xml_err)?;
    String::from_utf8(w.into_inner()).map_err(xml_err)
}

fn write_case(w: &mut XmlWriter, suite: &str, t: &crate::domain::MergedTest) -> Result<()> {
    use crate::domain::TestStatus;
    let (class, name) = match &t.junit {
        Some(j) => (j.classname.as_str(), j.name.as_str()),
        None => class_and_name(&t.name, suite),
    };
    let mut start = BytesStart::new("testcase");
    start.push_attribute(("classname", xml_safe(class).as_ref()));
    start.push_attribute(("name", xml_safe(name).as_ref()));
    start.push_attribute(("time", seconds(t.duration_ms).as_str()));
    let last = t.attempts.len().saturating_sub(1);
    let retried_failures = t.attempts[..last]
        .iter()
        .any(|a| matches!(a.status, TestStatus::Failed | TestStatus::Errored));
    if t.status == TestStatus::Passed && !retried_failures {
        return w.write_event(Event::Empty(start)).map_err(xml_err);
    }
    w.write_event(Event::Start(start)).map_err(xml_err)?;
    let message = t.message.as_deref().unwrap_or("");
    let summary = xml_safe(first_line(message));
    match t.status {
        TestStatus::Failed => text_element(
            w,
            "failure",
            &[("type", "failure"), ("message", &summary)],
            message,
        )?,
        TestStatus::Errored => text_element(
            w,
            "error",
            &[("type", "error"), ("message", &summary)],
            message,
        )?,
        TestStatus::Skipped if summary.is_empty() => text_element(w, "skipped", &[], "")?,
        TestStatus::Skipped => text_element(w, "skipped", &[("message", &summary)], "")?,
        TestStatus::Passed => {}
    }
    for earlier in &t.attempts[..last] {
        let tag = match (earlier.status, t.status == TestStatus::Passed) {
            (TestStatus::Failed, true) => "flakyFailure",
            (TestStatus::Errored, true) => "flakyError",
            (TestStatus::Failed, false) => "rerunFailure",
            (TestStatus::Errored, false) => "rerunError",
            _ => continue,
        };
        let text = earlier.message.as_deref().unwrap_or("");
        let what = format!("attempt {}: {}", earlier.attempt, first_line(text));
        let kind = if earlier.status == TestStatus::Failed {
            "failure"
        } else {
            "error"
        };
        let mut start = BytesStart::new(tag);
        start.push_attribute(("type", kind));
        start.push_attribute(("message", xml_safe(&what).as_ref()));
        w.write_event(Event::Start(start)).map_err(xml_err)?;
        text_element(w, "stackTrace", &[], text)?;
        w.write_event(Event::End(quick_xml::events::BytesEnd::new(tag)))
            .map_err(xml_err)?;
    }
    w.write_event(Event::End(quick_xml::events::BytesEnd::new("testcase")))
        .map_err(xml_err)
}
