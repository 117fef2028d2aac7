//! JUnit XML as test tools write it, pure and small enough for the CI
//! client to build without the server: the test cases of a report
//! (`<testsuites>` / `<testsuite>` / `<testcase>`, with `<failure>`,
//! `<error>` and `<skipped>` children), several files of one run as one
//! report, and ([`naming`]) which test id each case stands for.

pub mod naming;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Why a body is not a JUnit report, in words a CI user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReportError(pub String);

pub type Result<T> = std::result::Result<T, ReportError>;

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
    /// The enclosing `<testsuite>`'s `file` (mocha-junit-reporter's one
    /// place for the spec file).
    pub suite_file: Option<String>,
    /// The report is pytest's (its root is named as pytest names it): its
    /// tests are known by pytest node ids.
    pub from_pytest: bool,
    pub time_ms: Option<u64>,
    pub outcome: CaseOutcome,
    /// A failure's or error's message, then its text (the stack trace).
    pub message: Option<String>,
    /// Earlier attempts of this test within the same report, oldest first,
    /// each failed or errored: the tool retried it (see [`parse`]).
    pub earlier: Vec<CaseAttempt>,
}

/// An earlier, failed attempt of a test that the tool retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseAttempt {
    /// `Failed` or `Errored`.
    pub outcome: CaseOutcome,
    pub message: Option<String>,
}

impl JunitCase {
    /// A passed case of that classname and name, nothing else said of it.
    pub fn new(classname: &str, name: &str) -> JunitCase {
        JunitCase {
            classname: classname.to_owned(),
            name: name.to_owned(),
            file: None,
            suite_file: None,
            from_pytest: false,
            time_ms: None,
            outcome: CaseOutcome::Passed,
            message: None,
            earlier: Vec::new(),
        }
    }

    /// Passed after failing within the report: flaky.
    pub fn is_flaky(&self) -> bool {
        self.outcome == CaseOutcome::Passed && !self.earlier.is_empty()
    }
}

/// Which test id a case stands for: tools name the same test differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The id under the naming `format`.
    pub fn test_id(&self, format: NameFormat) -> String {
        match format {
            NameFormat::Classname if self.classname.is_empty() => self.name.clone(),
            NameFormat::Classname => format!("{}.{}", self.classname, self.name),
            NameFormat::Name => self.name.clone(),
            NameFormat::Pytest => self.pytest_id(),
        }
    }

    /// The id its tool knows it by when no given test matches it: a node
    /// id for pytest's cases (or any case in a `.py` file), else
    /// `classname.name` (Surefire, Gradle and most others).
    pub fn natural_id(&self) -> String {
        self.test_id(if self.is_python() {
            NameFormat::Pytest
        } else {
            NameFormat::Classname
        })
    }

    /// A pytest case: in a pytest report, or in a `.py` file.
    pub fn is_python(&self) -> bool {
        self.from_pytest
            || [&self.file, &self.suite_file]
                .into_iter()
                .flatten()
                .any(|f| f.ends_with(".py"))
    }

    /// A pytest node id. The module is the file (xunit1's `file`, or the
    /// classname's lower-case leading segments); the classname's remaining
    /// segments are classes.
    pub fn pytest_id(&self) -> String {
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

fn bad(reason: impl Into<String>) -> ReportError {
    ReportError(reason.into())
}

fn case_from(start: &BytesStart) -> Result<JunitCase> {
    let mut case = JunitCase::new("", "");
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

/// What an element inside a `<testcase>` says of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// How this attempt ended (`failure`, `error`, `skipped`). vitest writes
    /// one `failure` per attempt of a retried test: all but the last are
    /// earlier attempts.
    Outcome(CaseOutcome),
    /// An earlier attempt that failed or errored: `flakyFailure` /
    /// `flakyError` in a passed case, `rerunFailure` / `rerunError` beside
    /// a final failure (cargo-nextest and Maven Surefire).
    Earlier(CaseOutcome),
}

fn mark_of(element: &[u8]) -> Option<Mark> {
    match element {
        b"failure" => Some(Mark::Outcome(CaseOutcome::Failed)),
        b"error" => Some(Mark::Outcome(CaseOutcome::Errored)),
        b"skipped" => Some(Mark::Outcome(CaseOutcome::Skipped)),
        b"flakyFailure" | b"rerunFailure" => Some(Mark::Earlier(CaseOutcome::Failed)),
        b"flakyError" | b"rerunError" => Some(Mark::Earlier(CaseOutcome::Errored)),
        _ => None,
    }
}

/// An attribute's unescaped value, if the element has it.
fn attr_of(start: &BytesStart, name: &str) -> Option<String> {
    start
        .try_get_attribute(name)
        .ok()
        .flatten()
        .and_then(|a| a.unescape_value().ok())
        .map(|v| v.into_owned())
}

/// The `message` attribute of a failure or error element.
fn message_attr(start: &BytesStart) -> Option<String> {
    attr_of(start, "message")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Joins a failure's message and its text, without saying the same twice.
fn describe(attr: Option<String>, text: &str) -> Option<String> {
    let text = text.trim();
    match attr {
        Some(a) if text.is_empty() || text.starts_with(&a) => {
            Some(if text.is_empty() { a } else { text.to_owned() })
        }
        Some(a) => Some(format!("{a}\n{text}")),
        None if text.is_empty() => None,
        None => Some(text.to_owned()),
    }
}

/// How deep a report's elements may nest. Real reports nest a few levels
/// (`testsuites` > `testsuite` > `testsuite` > `testcase` > `failure`);
/// the bound keeps a hostile body from costing memory per level.
const MAX_DEPTH: usize = 64;

/// Refuses what cannot be a JUnit report before reading it as one, with a
/// reason a CI user can act on: an empty body, JSON sent as XML, text.
fn looks_like_xml(xml: &str) -> Result<()> {
    match xml
        .trim_start_matches('\u{feff}')
        .trim_start()
        .chars()
        .next()
    {
        None => Err(bad(
            "the report is empty: send the JUnit XML file the tests wrote",
        )),
        Some('<') => Ok(()),
        Some('{' | '[') => Err(bad(
            "this is JSON, not JUnit XML: send a JSON report as application/json",
        )),
        Some(_) => Err(bad(
            "not XML: a JUnit report starts with <testsuites> or <testsuite>",
        )),
    }
}

/// Every test case of a JUnit XML report, in document order. The report
/// must be one complete `<testsuites>` or `<testsuite>` document: quick-xml
/// reads a stream and says nothing of elements left open at its end, so
/// the nesting is tracked here and a truncated file is refused rather
/// than read as partial results.
pub fn parse(xml: &str) -> Result<Vec<JunitCase>> {
    looks_like_xml(xml)?;
    let mut reader = Reader::from_str(xml);
    // The elements open around the reader's position, outermost first.
    let mut path: Vec<String> = Vec::new();
    let mut root_seen = false;
    let mut cases = Vec::new();
    let mut open: Option<JunitCase> = None;
    // What the open case's children said, in order, each with its message.
    let mut marks: Vec<(Mark, Option<String>)> = Vec::new();
    // Inside a case's failure, error or earlier attempt: which, its message
    // attribute and its text so far.
    let mut failure: Option<(Mark, Option<String>, String)> = None;
    // The report is pytest's (its reruns are repeated cases) when its
    // root or its first `<testsuite>` is named as pytest names them:
    // pytest 9 names the root "pytest tests", pytest 8 leaves it unnamed,
    // and both name the suite "pytest".
    let mut pytest = false;
    let mut suites_seen = 0;
    // gotestsum names the Go version in a suite's properties: its reruns
    // are repeated cases.
    let mut go = false;
    // The open `<testsuite>`s, each with its depth and `file`.
    let mut suite_files: Vec<(usize, Option<String>)> = Vec::new();
    let suite_file =
        |suites: &[(usize, Option<String>)]| suites.iter().rev().find_map(|(_, file)| file.clone());
    let broken = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| {
        bad(format!(
            "not well-formed XML at byte {}: {e}",
            reader.error_position()
        ))
    };
    loop {
        let event = reader.read_event();
        match &event {
            Ok(Event::Start(e) | Event::Empty(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    if root_seen {
                        return Err(bad(format!(
                            "more than one root element: <{name}> follows the report's end"
                        )));
                    }
                    if name != "testsuites" && name != "testsuite" {
                        return Err(bad(format!(
                            "the root element is <{name}>, not <testsuites> or <testsuite>"
                        )));
                    }
                    root_seen = true;
                }
                if matches!(event, Ok(Event::Start(_))) {
                    if path.len() == MAX_DEPTH {
                        return Err(bad(format!("elements nest deeper than {MAX_DEPTH} levels")));
                    }
                    if name == "testsuite" {
                        suite_files.push((path.len(), attr_of(e, "file")));
                    }
                    path.push(name);
                }
            }
            Ok(Event::End(_)) => {
                path.pop();
                if suite_files
                    .last()
                    .is_some_and(|(depth, _)| *depth == path.len())
                {
                    suite_files.pop();
                }
            }
            Ok(Event::DocType(_)) => {
                return Err(bad(
                    "a report may not have a DOCTYPE (entity declarations are not read)",
                ));
            }
            Ok(Event::Text(t))
                if path.is_empty() && root_seen && !t.iter().all(u8::is_ascii_whitespace) =>
            {
                return Err(bad("text follows the report's root element"));
            }
            _ => {}
        }
        match event {
            Ok(Event::Start(e) | Event::Empty(e))
                if suites_seen < 2
                    && matches!(e.local_name().as_ref(), b"testsuites" | b"testsuite") =>
            {
                suites_seen += 1;
                pytest |= matches!(
                    attr_of(&e, "name").as_deref(),
                    Some("pytest tests" | "pytest")
                );
            }
            Ok(Event::Start(e) | Event::Empty(e))
                if e.local_name().as_ref() == b"property"
                    && attr_of(&e, "name").as_deref() == Some("go.version") =>
            {
                go = true;
            }
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"testcase" => {
                let mut case = case_from(&e)?;
                case.suite_file = suite_file(&suite_files);
                open = Some(case);
                marks.clear();
            }
            Ok(Event::Empty(e)) if e.local_name().as_ref() == b"testcase" => {
                let mut case = case_from(&e)?;
                case.suite_file = suite_file(&suite_files);
                cases.push(case);
            }
            Ok(event @ (Event::Start(_) | Event::Empty(_))) => {
                let (Event::Start(e) | Event::Empty(e)) = &event else {
                    continue;
                };
                if open.is_none() || failure.is_some() {
                    continue;
                }
                let Some(mark) = mark_of(e.local_name().as_ref()) else {
                    continue;
                };
                let attr = message_attr(e);
                if mark == Mark::Outcome(CaseOutcome::Skipped) {
                    marks.push((mark, None));
                } else if matches!(event, Event::Start(_)) {
                    failure = Some((mark, attr, String::new()));
                } else {
                    marks.push((mark, describe(attr, "")));
                }
            }
            Ok(Event::Text(t)) => {
                if let Some((_, _, text)) = failure.as_mut() {
                    let t = t.xml_content().map_err(|e| broken(&reader, &e))?;
                    text.push_str(&t);
                }
            }
            Ok(Event::CData(t)) => {
                if let Some((_, _, text)) = failure.as_mut() {
                    text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let Some((_, _, text)) = failure.as_mut() {
                    let name = String::from_utf8_lossy(&r);
                    let resolved = match name.as_ref() {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        _ => r.resolve_char_ref().ok().flatten(),
                    };
                    text.extend(resolved);
                }
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"testcase" => {
                if let Some(mut case) = open.take() {
                    settle(&mut case, std::mem::take(&mut marks));
                    cases.push(case);
                }
                failure = None;
            }
            Ok(Event::End(e))
                if failure.as_ref().is_some_and(|(mark, _, _)| {
                    mark_of(e.local_name().as_ref()) == Some(*mark)
                }) =>
            {
                if let Some((mark, attr, text)) = failure.take() {
                    marks.push((mark, describe(attr, &text)));
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(broken(&reader, &e)),
        }
    }
    if let Some(innermost) = path.last() {
        return Err(bad(format!(
            "the report is truncated: it ends inside <{innermost}> ({} elements left open)",
            path.len()
        )));
    }
    if !root_seen {
        return Err(bad("no <testsuites> or <testsuite> element"));
    }
    if pytest || go {
        cases = fold_repeats(cases);
    }
    if pytest {
        for case in &mut cases {
            case.from_pytest = true;
        }
    }
    Ok(cases)
}

/// Several JUnit files of one run (Surefire writes one per class,
/// Playwright one per project) as one report: each file's root inside one
/// `<testsuites>`, named as the first file's root is (a tool's own name
/// tells how it writes retries). One file is returned as it is; what a file
/// holds is checked when the report is parsed.
pub fn combine(files: &[String]) -> String {
    if let [only] = files {
        return only.clone();
    }
    let body = |xml: &str| -> String {
        let xml = xml.trim_start_matches('\u{feff}').trim_start();
        match xml.strip_prefix("<?xml") {
            Some(rest) => rest
                .split_once("?>")
                .map_or(rest, |(_, after)| after)
                .to_owned(),
            None => xml.to_owned(),
        }
    };
    let name = files.first().and_then(|first| {
        let mut reader = Reader::from_str(first);
        loop {
            match reader.read_event() {
                Ok(Event::Start(e) | Event::Empty(e)) => break attr_of(&e, "name"),
                Ok(Event::Eof) | Err(_) => break None,
                Ok(_) => {}
            }
        }
    });
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites");
    if let Some(name) = name {
        out.push_str(" name=\"");
        out.push_str(&quick_xml::escape::escape(name.as_str()));
        out.push('"');
    }
    out.push_str(">\n");
    for file in files {
        out.push_str(&body(file));
        out.push('\n');
    }
    out.push_str("</testsuites>\n");
    out
}

/// A case's outcome and earlier attempts from what its children said.
/// Several failures (or errors) of one kind are one per attempt, the last
/// being the result (vitest); otherwise an error outranks a failure, and
/// either a skip, and the first message is kept. `flaky*` / `rerun*`
/// elements are earlier attempts.
fn settle(case: &mut JunitCase, marks: Vec<(Mark, Option<String>)>) {
    let mut ended: Vec<(CaseOutcome, Option<String>)> = Vec::new();
    let mut skipped = false;
    for (mark, message) in marks {
        match mark {
            Mark::Outcome(CaseOutcome::Skipped) => skipped = true,
            Mark::Outcome(outcome) => ended.push((outcome, message)),
            Mark::Earlier(outcome) => case.earlier.push(CaseAttempt { outcome, message }),
        }
    }
    let one_kind = ended.windows(2).all(|w| w[0].0 == w[1].0);
    if ended.len() > 1 && one_kind {
        let (outcome, message) = ended.pop().unwrap_or((CaseOutcome::Failed, None));
        let retried = ended
            .into_iter()
            .map(|(outcome, message)| CaseAttempt { outcome, message });
        // The repeated failures came before any rerun element.
        case.earlier.splice(0..0, retried);
        case.outcome = outcome;
        case.message = message;
        return;
    }
    if let Some((_, message)) = ended.first() {
        case.message = message.clone();
    }
    case.outcome = if ended.iter().any(|(o, _)| *o == CaseOutcome::Errored) {
        CaseOutcome::Errored
    } else if !ended.is_empty() {
        CaseOutcome::Failed
    } else if skipped {
        CaseOutcome::Skipped
    } else {
        CaseOutcome::Passed
    };
}

/// Folds the cases of one test into one, in a report whose tool gives each
/// test a unique id and writes every attempt of a test it reran as a case
/// of its own: pytest-rerunfailures (each earlier attempt an empty case
/// just before the next) and gotestsum's `--rerun-fails` (each attempt
/// with its failure, the rerun's cases after the first run's). The last
/// case of a test is its result, those before it failed (or errored)
/// attempts in document order; the test keeps its first case's place.
fn fold_repeats(cases: Vec<JunitCase>) -> Vec<JunitCase> {
    let mut folded: Vec<JunitCase> = Vec::with_capacity(cases.len());
    let mut at: std::collections::HashMap<(String, String, Option<String>), usize> =
        std::collections::HashMap::new();
    for case in cases {
        let key = (case.classname.clone(), case.name.clone(), case.file.clone());
        match at.get(&key) {
            Some(&i) => {
                let earlier = std::mem::replace(&mut folded[i], case);
                let case = &mut folded[i];
                let mut attempts = earlier.earlier;
                attempts.push(CaseAttempt {
                    outcome: match earlier.outcome {
                        CaseOutcome::Errored => CaseOutcome::Errored,
                        _ => CaseOutcome::Failed,
                    },
                    message: earlier.message,
                });
                attempts.append(&mut case.earlier);
                case.earlier = attempts;
            }
            None => {
                at.insert(key, folded.len());
                folded.push(case);
            }
        }
    }
    folded
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
    fn pytest_8s_unnamed_root_is_still_pytests_report() {
        // pytest 8.3 writes no name on <testsuites>; its suite is "pytest".
        let xml = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="2"><testcase classname="tests.test_more.AdjacentTests" name="test_distance" time="0.001"/><testcase classname="tests.test_more.AdjacentTests" name="test_distance" time="0.001"/></testsuite></testsuites>"#;
        let cases = parse(xml).unwrap();
        assert_eq!(cases.len(), 1, "a repeat is pytest-rerunfailures' rerun");
        assert!(cases[0].from_pytest);
        assert_eq!(
            cases[0].natural_id(),
            "tests/test_more.py::AdjacentTests::test_distance"
        );
        // Another tool's unnamed root keeps its repeats apart.
        let other = xml.replace(r#"name="pytest""#, r#"name="Cart""#);
        assert_eq!(parse(&other).unwrap().len(), 2);
    }

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
            "<testsuite><testcase time='soon' name='a'/></testsuite>",
            "<a><b></a>",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// The reason a refused report gives, for the assertions below.
    fn refusal(xml: &str) -> String {
        match parse(xml) {
            Err(ReportError(reason)) => reason,
            Ok(cases) => panic!("{xml:?} was not refused: {cases:?}"),
        }
    }

    #[test]
    fn a_body_that_is_not_a_junit_report_is_refused_saying_what_it_is() {
        assert!(refusal("").contains("empty"));
        assert!(refusal(" \n\t").contains("empty"));
        assert!(refusal("\u{feff}").contains("empty"));
        assert!(refusal(r#"{"status": "passed"}"#).contains("application/json"));
        assert!(refusal("[1, 2]").contains("JSON"));
        assert!(refusal("PASSED 3 tests").contains("not XML"));
        assert!(refusal("<?xml version='1.0'?><!-- nothing -->").contains("no <testsuites>"));
        assert!(refusal("<html><body>502 Bad Gateway</body></html>").contains("<html>"));
        assert!(refusal("<testsuite/><testsuite/>").contains("more than one root"));
        assert!(refusal("<testsuite></testsuite>trailing").contains("follows"));
    }

    #[test]
    fn a_truncated_report_is_refused_not_read_as_partial_results() {
        let whole = "<testsuites><testsuite name='s'>\
            <testcase name='a'/><testcase name='b'><failure message='x'/></testcase>\
            </testsuite></testsuites>";
        assert_eq!(parse(whole).unwrap().len(), 2);
        // Cut after a complete case, mid-suite and mid-root: each refused.
        for cut in ["<testcase name='a'/>", "</testcase>", "</testsuite>"] {
            let end = whole.find(cut).unwrap() + cut.len();
            let reason = refusal(&whole[..end]);
            assert!(reason.contains("truncated"), "{reason}");
        }
        assert!(refusal(&whole[..whole.len() - 3]).contains("not well-formed"));
    }

    #[test]
    fn a_doctype_or_deep_nesting_is_refused() {
        let entities = "<?xml version='1.0'?><!DOCTYPE r [<!ENTITY a 'aaaa'>]>\
            <testsuite><testcase name='&a;'/></testsuite>";
        assert!(refusal(entities).contains("DOCTYPE"));
        let deep = format!(
            "<testsuites>{}{}</testsuites>",
            "<testsuite>".repeat(100_000),
            "</testsuite>".repeat(100_000)
        );
        assert!(refusal(&deep).contains("deeper than 64"));
        let fine = format!(
            "<testsuites>{}<testcase name='a'/>{}</testsuites>",
            "<testsuite>".repeat(10),
            "</testsuite>".repeat(10)
        );
        assert_eq!(parse(&fine).unwrap().len(), 1);
    }

    #[test]
    fn several_files_are_one_report_with_every_case() {
        let a = r#"<?xml version="1.0"?><testsuite name="pytest"><testcase classname="m" name="t"/><testcase classname="m" name="t"><failure message="x"/></testcase></testsuite>"#;
        let b = "\u{feff}<testsuites><testsuite name=\"b\"><testcase name=\"u\"/></testsuite></testsuites>";
        let one = combine(&[a.to_owned(), b.to_owned()]);
        let cases = parse(&one).unwrap();
        let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["t", "u"], "{one}");
        assert_eq!(cases[0].outcome, CaseOutcome::Failed);
        assert_eq!(
            cases[0].earlier.len(),
            1,
            "the first file's pytest name is kept"
        );
        assert_eq!(combine(&[a.to_owned()]), a);
    }

    #[test]
    fn a_report_with_no_cases_is_still_a_report() {
        // The tool ran nothing: the shard's judge, not the parser, errs it.
        assert_eq!(parse("<testsuite name='s' tests='0'/>").unwrap(), vec![]);
        assert_eq!(
            parse("\u{feff}<?xml version='1.0'?>\n<testsuites></testsuites>\n").unwrap(),
            vec![]
        );
    }
}
