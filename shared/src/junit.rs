//! JUnit XML, pure: the test cases of a report as the common tools write it
//! (`<testsuites>` / `<testsuite>` / `<testcase>`, with `<failure>`,
//! `<error>` and `<skipped>` children), and the test ids they stand for.

use crate::error::{Error, Result};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// How a test case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseOutcome {
    Passed,
    Failed,
    Errored,
    Skipped,
}

/// One `<testcase>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JunitCase {
    pub classname: String,
    pub name: String,
    /// pytest's xunit1 family (and some other tools) say which file.
    pub file: Option<String>,
    pub time_ms: Option<u64>,
    pub outcome: CaseOutcome,
}

/// Which test id a case stands for: tools name the same test differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NameFormat {
    /// `classname.name` (Maven Surefire, Gradle, jest-junit's default).
    #[default]
    Classname,
    /// pytest node ids: `tests/test_shop.py::TestCart::test_add_item`.
    Pytest,
    /// The bare `name`.
    Name,
}

impl JunitCase {
    pub fn test_id(&self, format: NameFormat) -> String {
        match format {
            NameFormat::Classname if self.classname.is_empty() => self.name.clone(),
            NameFormat::Classname => format!("{}.{}", self.classname, self.name),
            NameFormat::Name => self.name.clone(),
            NameFormat::Pytest => self.pytest_id(),
        }
    }

    /// A pytest node id. The module is the file (xunit1's `file`, or the
    /// classname's lower-case leading segments); the classname's remaining
    /// segments are classes.
    fn pytest_id(&self) -> String {
        let segments: Vec<&str> = self.classname.split('.').collect();
        let (module, classes): (Vec<&str>, Vec<&str>) = match &self.file {
            Some(file) => {
                let module_path = file.trim_end_matches(".py").replace('/', ".");
                let depth = module_path.split('.').count().min(segments.len());
                (Vec::new(), segments[depth..].to_vec())
            }
            None => {
                let split = segments
                    .iter()
                    .position(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
                    .unwrap_or(segments.len());
                (segments[..split].to_vec(), segments[split..].to_vec())
            }
        };
        let file = self
            .file
            .clone()
            .unwrap_or_else(|| format!("{}.py", module.join("/")));
        let mut id = file;
        for class in classes.iter().filter(|c| !c.is_empty()) {
            id.push_str("::");
            id.push_str(class);
        }
        id.push_str("::");
        id.push_str(&self.name);
        id
    }
}

fn bad(reason: impl Into<String>) -> Error {
    Error::validation("junit", reason)
}

fn case_from(start: &BytesStart) -> Result<JunitCase> {
    let mut case = JunitCase {
        classname: String::new(),
        name: String::new(),
        file: None,
        time_ms: None,
        outcome: CaseOutcome::Passed,
    };
    for attr in start.attributes() {
        let attr = attr.map_err(|e| bad(format!("bad attribute: {e}")))?;
        let value = attr
            .unescape_value()
            .map_err(|e| bad(format!("bad attribute value: {e}")))?
            .into_owned();
        match attr.key.as_ref() {
            b"classname" => case.classname = value,
            b"name" => case.name = value,
            b"file" => case.file = Some(value),
            b"time" => {
                // Some tools group thousands ("1,234.5").
                let seconds: f64 = value
                    .replace(',', "")
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("time {value:?} is not seconds")))?;
                if seconds.is_finite() && seconds >= 0.0 {
                    case.time_ms = Some((seconds * 1000.0).round() as u64);
                }
            }
            _ => {}
        }
    }
    if case.name.is_empty() {
        return Err(bad("a testcase without a name"));
    }
    Ok(case)
}

fn outcome_of(element: &[u8]) -> Option<CaseOutcome> {
    match element {
        b"failure" => Some(CaseOutcome::Failed),
        b"error" => Some(CaseOutcome::Errored),
        b"skipped" => Some(CaseOutcome::Skipped),
        _ => None,
    }
}

/// Every test case of a JUnit XML report, in document order.
pub fn parse(xml: &str) -> Result<Vec<JunitCase>> {
    let mut reader = Reader::from_str(xml);
    let mut cases = Vec::new();
    let mut open: Option<JunitCase> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"testcase" => {
                open = Some(case_from(&e)?);
            }
            Ok(Event::Empty(e)) if e.local_name().as_ref() == b"testcase" => {
                cases.push(case_from(&e)?);
            }
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                if let (Some(case), Some(outcome)) =
                    (open.as_mut(), outcome_of(e.local_name().as_ref()))
                {
                    // An error outranks a failure, and either a skip.
                    if case.outcome == CaseOutcome::Passed || outcome == CaseOutcome::Errored {
                        case.outcome = outcome;
                    }
                }
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"testcase" => {
                cases.extend(open.take());
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(bad(format!(
                    "not well-formed XML at byte {}: {e}",
                    reader.error_position()
                )))
            }
        }
    }
    if open.is_some() {
        return Err(bad("the report ends inside a testcase"));
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0"?>
<testsuites><testsuite name="s">
  <testcase classname="tests.test_shop" name="test_total" time="0.201"/>
  <testcase classname="tests.test_shop.TestCart" name="test_remove" time="1,200.5"><failure message="x &amp; y">trace</failure></testcase>
  <testcase classname="tests.test_shop" name="test_skip" time="0"><skipped/></testcase>
  <testcase classname="" name="bare"><error/><failure/></testcase>
</testsuite></testsuites>"#;

    #[test]
    fn cases_outcomes_and_times_are_read() {
        let cases = parse(REPORT).unwrap();
        assert_eq!(cases.len(), 4);
        assert_eq!(cases[0].time_ms, Some(201));
        assert_eq!(cases[0].outcome, CaseOutcome::Passed);
        assert_eq!(cases[1].time_ms, Some(1_200_500));
        assert_eq!(cases[1].outcome, CaseOutcome::Failed);
        assert_eq!(cases[2].outcome, CaseOutcome::Skipped);
        assert_eq!(cases[3].outcome, CaseOutcome::Errored);
    }

    #[test]
    fn test_ids_follow_the_tools_naming() {
        let cases = parse(REPORT).unwrap();
        assert_eq!(
            cases[0].test_id(NameFormat::Classname),
            "tests.test_shop.test_total"
        );
        assert_eq!(
            cases[1].test_id(NameFormat::Pytest),
            "tests/test_shop.py::TestCart::test_remove"
        );
        assert_eq!(
            cases[0].test_id(NameFormat::Pytest),
            "tests/test_shop.py::test_total"
        );
        assert_eq!(cases[3].test_id(NameFormat::Classname), "bare");
        let mut with_file = cases[1].clone();
        with_file.file = Some("tests/test_shop.py".into());
        assert_eq!(
            with_file.test_id(NameFormat::Pytest),
            "tests/test_shop.py::TestCart::test_remove"
        );
    }

    #[test]
    fn broken_reports_are_refused_with_a_reason() {
        for bad in [
            "<testsuite><testcase name='a'>",
            "<testcase time='soon' name='a'/>",
            "<a><b></a>",
        ] {
            assert!(matches!(parse(bad), Err(Error::Validation { .. })), "{bad}");
        }
    }
}
