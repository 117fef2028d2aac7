//! The commands a CI pipeline types: queue a suite (and wait for its
//! verdict), read its status and report, cancel or retry it, list runners,
//! create a CI token. Everything goes through the HTTP API.

use crate::client::{segment, Client, ServerArgs};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Exit codes of `tms queue --wait` (and `tms status`, `tms agent
/// --execution`): what a CI step branches on. Only 1 says the tests
/// failed; a step may retry on 3 and must not blame the tests for it.
pub mod exit {
    pub const PASSED: u8 = 0;
    pub const TESTS_FAILED: u8 = 1;
    /// Errored, timed out or cancelled: the run itself went wrong.
    pub const NOT_RUN: u8 = 2;
    /// No verdict from TMS: the server could not be reached (for longer
    /// than `--wait` rides out), refused the token or the call.
    pub const NO_VERDICT: u8 = 3;
    /// The command line was wrong (sysexits' EX_USAGE).
    pub const USAGE: u8 = 64;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// TMS assigns shards to registered runners.
    Static,
    /// Runners claim batches until the tests run out.
    Dynamic,
    /// Each of the CI's parallel jobs claims the shard of its index.
    ByIndex,
}

impl ModeArg {
    fn as_str(self) -> &'static str {
        match self {
            ModeArg::Static => "static",
            ModeArg::Dynamic => "dynamic",
            ModeArg::ByIndex => "by_index",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The suite's name (timings and flaky history are kept per suite).
    #[arg(long)]
    pub suite: String,
    /// Tests to run (or use --tests-file).
    pub tests: Vec<String>,
    /// A file of tests: one per line (`#` comments), a pytest-split or
    /// Knapsack durations file (JSON, seconds), or a JUnit XML report
    /// (durations become the split's hints).
    #[arg(long)]
    pub tests_file: Option<PathBuf>,
    /// Test files matching a glob (`tests/**/test_*.py`), relative to the
    /// working directory as written; may be repeated. A pattern that
    /// matches nothing is an error: it is almost always a typo.
    #[arg(long = "glob", value_name = "PATTERN")]
    pub globs: Vec<String>,
    /// JUnit files only: name every case one way (classname, pytest,
    /// name) instead of by the id its tool knows it by (a node id for
    /// pytest, `classname.name` for others).
    #[arg(long)]
    pub names: Option<String>,
    /// Shards (static, by-index) or expected runners (dynamic).
    #[arg(long, default_value_t = 1)]
    pub parallelism: u32,
    /// 0-100, higher first.
    #[arg(long)]
    pub priority: Option<i32>,
    /// Runner labels every shard needs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    #[arg(long, value_enum, default_value = "static")]
    pub mode: ModeArg,
    /// Seconds before the whole execution times out.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Run each failed test again on another runner up to this many times.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Fail the run when a test is flaky (failed, then passed on a retry).
    #[arg(long)]
    pub strict: bool,
    /// Refuse to queue when no registered runner could run the execution
    /// (its labels, runner type or size); without it, it is queued with a
    /// warning and waits for such a runner.
    #[arg(long)]
    pub require_runner: bool,
    /// Wait for the verdict: exit 0 passed, 1 tests failed, 2 errored,
    /// timed out or cancelled, 3 no verdict from TMS. Stopping the wait
    /// (SIGTERM, Ctrl-C) cancels the execution.
    #[arg(long)]
    pub wait: bool,
    /// Print the server's JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --wait: write the merged JUnit report here once it is finished
    /// (whatever the verdict), for the CI's test-report view.
    #[arg(long, value_name = "FILE", requires = "wait")]
    pub junit: Option<PathBuf>,
    /// Print only the execution's id (for `ID=$(tms queue … -q)`).
    #[arg(long, short, conflicts_with_all = ["json", "wait"])]
    pub quiet: bool,
    /// How often --wait polls, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub poll_ms: u64,
    /// With --wait: how long the server may stay unreachable (a restart,
    /// a network blip) before giving up with exit 3, in seconds.
    #[arg(long, default_value_t = 600)]
    pub patience: u64,
    /// With --wait: a line at least this often (seconds) while nothing
    /// moves, for CI systems that stop a step silent for too long
    /// (CircleCI: 10 minutes).
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u64,
    /// With --wait: leave the execution running when this command is
    /// stopped (SIGTERM, Ctrl-C), instead of cancelling it: for another
    /// step or job that goes on waiting for the same execution.
    #[arg(long, requires = "wait")]
    pub leave_running: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// How `--wait` follows an execution.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Time between polls.
    pub every: Duration,
    /// How long the server may stay unreachable before giving up.
    pub patience: Duration,
    /// A line at least this often while nothing moves.
    pub keep_alive: Duration,
    /// Lines for a person or a CI log (not `--json`).
    pub show: bool,
}

/// The CI run this process belongs to, from the environment the four big CI
/// platforms set. The build id is the run's, not the attempt's: a retried
/// job belongs to the same build (and gets its shard again). The attempt,
/// where the platform numbers them (GitHub's run attempt, Azure's job
/// attempt), makes a re-run of a build that did not pass run its failed
/// shards again; GitLab and Jenkins number no attempts (a Jenkins replay is
/// a build of its own).
pub fn detect_ci(var: impl Fn(&str) -> Option<String>) -> Option<Value> {
    let v = |name: &str| var(name).filter(|s| !s.is_empty());
    let attempt = v("GITHUB_RUN_ATTEMPT")
        .or_else(|| v("SYSTEM_JOBATTEMPT"))
        .and_then(|a| a.trim().parse::<u32>().ok());
    let (provider, build, job, commit, branch, url, project) = if v("GITHUB_ACTIONS").is_some() {
        let url = match (
            v("GITHUB_SERVER_URL"),
            v("GITHUB_REPOSITORY"),
            v("GITHUB_RUN_ID"),
        ) {
            (Some(s), Some(r), Some(id)) => Some(format!("{s}/{r}/actions/runs/{id}")),
            _ => None,
        };
        (
            "github-actions",
            v("GITHUB_RUN_ID"),
            v("GITHUB_JOB"),
            v("GITHUB_SHA"),
            v("GITHUB_HEAD_REF").or_else(|| v("GITHUB_REF_NAME")),
            url,
            v("GITHUB_REPOSITORY"),
        )
    } else if v("GITLAB_CI").is_some() {
        (
            "gitlab",
            v("CI_PIPELINE_ID"),
            v("CI_JOB_NAME"),
            v("CI_COMMIT_SHA"),
            v("CI_COMMIT_REF_NAME"),
            v("CI_PIPELINE_URL"),
            v("CI_PROJECT_PATH"),
        )
    } else if v("TF_BUILD").is_some() {
        let url = match (
            v("SYSTEM_COLLECTIONURI"),
            v("SYSTEM_TEAMPROJECT"),
            v("BUILD_BUILDID"),
        ) {
            (Some(c), Some(p), Some(id)) => Some(format!(
                "{}/{}/_build/results?buildId={id}",
                c.trim_end_matches('/'),
                segment(&p)
            )),
            _ => None,
        };
        (
            "azure-devops",
            v("BUILD_BUILDID"),
            v("SYSTEM_JOBDISPLAYNAME").or_else(|| v("SYSTEM_JOBNAME")),
            v("BUILD_SOURCEVERSION"),
            v("BUILD_SOURCEBRANCHNAME"),
            url,
            v("BUILD_REPOSITORY_NAME"),
        )
    } else if v("JENKINS_URL").is_some() {
        (
            "jenkins",
            v("BUILD_TAG").or_else(|| v("BUILD_ID")),
            v("JOB_NAME").or_else(|| v("STAGE_NAME")),
            v("GIT_COMMIT"),
            v("BRANCH_NAME").or_else(|| v("GIT_BRANCH")),
            v("BUILD_URL"),
            v("GIT_URL"),
        )
    } else {
        return None;
    };
    Some(json!({
        "provider": provider, "build_id": build, "job": job,
        "commit": commit, "branch": branch, "url": url, "attempt": attempt,
        "project": project,
    }))
}

/// The tests of a tests file: plain lines, a durations file (JSON: names
/// to seconds, possibly under `"durations"`) or a JUnit XML report; with
/// durations, each test carries its `duration_hint_ms`.
pub fn parse_tests_file(text: &str, names: Option<&str>) -> Result<Vec<Value>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('<') {
        let format: Option<tms_junit::NameFormat> = names
            .map(|n| {
                serde_json::from_value(json!(n))
                    .map_err(|_| format!("--names {n:?}: classname, pytest or name"))
            })
            .transpose()?;
        let mut seen = std::collections::BTreeSet::new();
        return Ok(tms_junit::parse(text)?
            .into_iter()
            .filter_map(|c| {
                let name = tms_junit::naming::own_id(&c, format);
                seen.insert(name.clone())
                    .then(|| json!({"name": name, "duration_hint_ms": c.time_ms.map(|t| t.max(1))}))
            })
            .collect());
    }
    if trimmed.starts_with('{') {
        let mut body: Value = serde_json::from_str(text)?;
        if let Some(inner) = body.get_mut("durations").filter(|d| d.is_object()) {
            body = inner.take();
        }
        let map = body
            .as_object()
            .ok_or("a durations file maps test names to seconds")?;
        return map
            .iter()
            .map(|(name, secs)| {
                let secs = secs
                    .as_f64()
                    .ok_or_else(|| format!("{name}: {secs} is not a number of seconds"))?;
                let ms = (secs * 1000.0).round().max(1.0) as u64;
                Ok(json!({"name": name, "duration_hint_ms": ms}))
            })
            .collect();
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| json!(l))
        .collect())
}

/// The files a glob matches, sorted, with `/` separators whatever the OS:
/// test names a runner on another machine can use.
pub fn glob_tests(pattern: &str) -> Result<Vec<String>> {
    let paths = glob::glob(pattern).map_err(|e| format!("--glob {pattern:?}: {e}"))?;
    let mut found = Vec::new();
    for path in paths {
        let path = path.map_err(|e| format!("--glob {pattern:?}: {e}"))?;
        if path.is_file() {
            let name = path.to_string_lossy().into_owned();
            #[cfg(windows)]
            let name = name.replace('\\', "/");
            found.push(name);
        }
    }
    if found.is_empty() {
        return Err(format!("--glob {pattern:?} matched no files").into());
    }
    found.sort();
    Ok(found)
}

/// The exit code a finished status stands for; `None` while it runs.
pub fn verdict(status: &str) -> Option<u8> {
    match status {
        "passed" => Some(exit::PASSED),
        "failed" => Some(exit::TESTS_FAILED),
        "errored" | "timed_out" | "cancelled" => Some(exit::NOT_RUN),
        _ => None,
    }
}

/// One line about an execution: status, shards, counts, the reason.
pub fn summary(s: &Value) -> String {
    let t = &s["totals"];
    let mut line = format!(
        "{} {}: {} — {}/{} shards, {} passed, {} failed, {} skipped",
        s["suite"].as_str().unwrap_or(""),
        s["id"].as_str().unwrap_or(""),
        s["status"].as_str().unwrap_or("?"),
        s["progress"]["shards_done"],
        s["progress"]["shards_total"],
        t["passed"],
        t["failed"],
        t["skipped"],
    );
    if t["flaky"].as_u64().unwrap_or(0) > 0 {
        line.push_str(&format!(", {} flaky", t["flaky"]));
    }
    if let Some(why) = s["status_reason"].as_str() {
        line.push_str(&format!(" ({why})"));
    }
    line
}

pub async fn queue(args: QueueArgs) -> Result<ExitCode> {
    let mut tests: Vec<Value> = args.tests.iter().map(|t| json!(t)).collect();
    if let Some(file) = &args.tests_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        tests.extend(parse_tests_file(&text, args.names.as_deref())?);
    }
    for pattern in &args.globs {
        tests.extend(glob_tests(pattern)?.into_iter().map(|t| json!(t)));
    }
    if tests.is_empty() {
        // The server refuses it too; saying so here names the options.
        return Err("nothing to queue: give test names, --tests-file or --glob \
                    (an execution needs at least one test)"
            .into());
    }
    let mut body = json!({
        "suite": args.suite,
        "tests": tests,
        "parallelism": args.parallelism,
        "mode": args.mode.as_str(),
        "strict": args.strict,
        "require_runner": args.require_runner,
    });
    if let Some(p) = args.priority {
        body["priority"] = json!(p);
    }
    if !args.labels.is_empty() {
        body["requirements"] = json!({"labels": args.labels});
    }
    if let Some(t) = args.timeout {
        body["timeout_seconds"] = json!(t);
    }
    if let Some(r) = args.retries {
        body["retries"] = json!({"per_test": r, "total": 1000});
    }
    if let Some(ci) = detect_ci(|k| std::env::var(k).ok()) {
        body["ci"] = ci;
    }
    let client = Client::new(&args.server);
    // Listened for before the execution exists: a job stopped at any
    // point after the queue call does not leave it running. (With
    // --leave-running the signals keep their default: they end the wait.)
    let stopped = (args.wait && !args.leave_running).then(crate::stop_signals);
    let queued = client.post("/executions/queue", &body).await?;
    let id = queued["id"]
        .as_str()
        .ok_or("the server's answer has no id")?
        .to_owned();
    for warning in queued["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", warning.as_str().unwrap_or_default());
    }
    if !args.wait {
        if args.quiet {
            say!("{id}");
        } else if args.json {
            say!("{queued}");
        } else {
            let again = if queued["replayed"] == true {
                " (already queued by this build)"
            } else {
                ""
            };
            say!(
                "queued {id}: suite {}, {} shards{again}",
                queued["suite"].as_str().unwrap_or(""),
                queued["progress"]["shards_total"]
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        eprintln!("queued {id}; waiting for the verdict");
    }
    let follow = Follow {
        every: Duration::from_millis(args.poll_ms.max(100)),
        patience: Duration::from_secs(args.patience),
        keep_alive: Duration::from_secs(args.keep_alive.max(1)),
        show: !args.json,
    };
    let stopped = async {
        match stopped {
            Some(stop) => stop.await,
            None => std::future::pending().await,
        }
    };
    let done = tokio::select! {
        done = wait(&client, &id, follow) => done?,
        () = stopped => {
            // A cancelled CI job: the execution is not left holding runners.
            eprintln!("stopped: cancelling {id} (--leave-running keeps it)");
            let cancelled = client
                .post(&format!("/executions/{}/cancel", segment(&id)), &json!({}))
                .await;
            match cancelled {
                Ok(s) => eprintln!("{}", summary(&s)),
                Err(e) => eprintln!("could not cancel {id}: {e}"),
            }
            return Ok(ExitCode::from(exit::NOT_RUN));
        }
    };
    if args.json {
        say!("{done}");
    } else {
        say!("{}", summary(&done));
        print_failures(&client, &done).await;
    }
    if let Some(file) = &args.junit {
        write_junit(&client, &id, file).await?;
    }
    let code = verdict(done["status"].as_str().unwrap_or("")).unwrap_or(exit::NOT_RUN);
    Ok(ExitCode::from(code))
}

/// Polls the status until the execution finishes: a progress bar on a
/// terminal, a plain line whenever something moved otherwise (CI logs),
/// and a line at least every `keep_alive` while nothing moves, so a CI system's
/// no-output timeout does not kill a long wait. The server may go away
/// for a while (a restart, a network blip): the polls back off and go on
/// for `patience`, and only then is it an error.
async fn wait(client: &Client, id: &str, follow: Follow) -> Result<Value> {
    let path = format!("/executions/{}/status", segment(id));
    let bar = (follow.show && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} shards {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let mut last = String::new();
    let mut last_said = Instant::now();
    let mut unreachable_since: Option<Instant> = None;
    let mut pause = follow.every;
    loop {
        let s = match client.get(&path).await {
            Ok(s) => s,
            Err(e) if e.is_transient() => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= follow.patience {
                    return Err(format!(
                        "gave up after {}s without an answer: {e}",
                        since.elapsed().as_secs()
                    )
                    .into());
                }
                if follow.show && pause == follow.every {
                    eprintln!("[{:>4}s] {e}; trying again", started.elapsed().as_secs());
                    last_said = Instant::now();
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if unreachable_since.take().is_some() && follow.show {
            eprintln!(
                "[{:>4}s] the server answers again",
                started.elapsed().as_secs()
            );
        }
        pause = follow.every;
        let status = s["status"].as_str().unwrap_or("?").to_owned();
        let line = format!(
            "{status}: {}/{} shards, {} passed, {} failed",
            s["progress"]["shards_done"],
            s["progress"]["shards_total"],
            s["totals"]["passed"],
            s["totals"]["failed"]
        );
        if let Some(bar) = &bar {
            bar.set_length(s["progress"]["shards_total"].as_u64().unwrap_or(0));
            bar.set_position(s["progress"]["shards_done"].as_u64().unwrap_or(0));
            bar.set_message(line.clone());
        } else if follow.show && (line != last || last_said.elapsed() >= follow.keep_alive) {
            eprintln!("[{:>4}s] {line}", started.elapsed().as_secs());
            last_said = Instant::now();
        }
        last = line;
        if verdict(&status).is_some() {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(s);
        }
        tokio::time::sleep(follow.every).await;
    }
}

/// Failing tests named in the summary, at most.
const FAILURES_SHOWN: usize = 10;

/// After the summary line: the tests that failed (the first
/// [`FAILURES_SHOWN`], each with the first line of its message) and the
/// flaky ones, from the execution's report. Best effort: the verdict
/// stands without it.
async fn print_failures(client: &Client, status: &Value) {
    let flaky = status["totals"]["flaky"].as_u64().unwrap_or(0);
    if status["totals"]["failed"].as_u64().unwrap_or(0) == 0 && flaky == 0 {
        return;
    }
    let Some(id) = status["id"].as_str() else {
        return;
    };
    let report = match client
        .get(&format!("/executions/{}/report", segment(id)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("(the failing tests could not be read: {e})");
            return;
        }
    };
    for line in failure_lines(&report) {
        say!("{line}");
    }
}

/// The lines naming a report's failing and flaky tests.
pub fn failure_lines(report: &Value) -> Vec<String> {
    let tests = report["tests"].as_array().cloned().unwrap_or_default();
    let failing: Vec<&Value> = tests
        .iter()
        .filter(|t| matches!(t["status"].as_str(), Some("failed" | "errored")))
        .collect();
    let mut lines = Vec::new();
    if !failing.is_empty() {
        lines.push(format!("{}:", plural(failing.len(), "failing test")));
        for t in failing.iter().take(FAILURES_SHOWN) {
            let message = t["message"]
                .as_str()
                .and_then(|m| m.lines().find(|l| !l.trim().is_empty()))
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default();
            let status = t["status"].as_str().unwrap_or("");
            lines.push(format!(
                "  {} ({status}){message}",
                t["name"].as_str().unwrap_or("")
            ));
        }
        if failing.len() > FAILURES_SHOWN {
            lines.push(format!("  … and {} more", failing.len() - FAILURES_SHOWN));
        }
    }
    let flaky: Vec<&str> = report["flaky"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !flaky.is_empty() {
        lines.push(format!(
            "{} (failed, then passed on a retry):",
            plural(flaky.len(), "flaky test")
        ));
        for name in flaky.iter().take(FAILURES_SHOWN) {
            lines.push(format!("  {name}"));
        }
        if flaky.len() > FAILURES_SHOWN {
            lines.push(format!("  … and {} more", flaky.len() - FAILURES_SHOWN));
        }
    }
    lines
}

/// "1 failing test", "3 failing tests".
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `tms status`: the execution now, or (`wait` = the poll interval) once
/// it is finished.
pub async fn status(
    id: &str,
    json_out: bool,
    wait_every: Option<Duration>,
    server: &ServerArgs,
) -> Result<ExitCode> {
    let client = Client::new(server);
    let s = match wait_every {
        Some(every) => {
            let follow = Follow {
                every,
                patience: Duration::from_secs(600),
                keep_alive: Duration::from_secs(60),
                show: !json_out,
            };
            wait(&client, id, follow).await?
        }
        None => {
            client
                .get(&format!("/executions/{}/status", segment(id)))
                .await?
        }
    };
    if json_out {
        say!("{s}");
    } else {
        say!("{}", summary(&s));
        // Runners by name, as people know them (the id if it is gone).
        let names: std::collections::HashMap<String, String> = all_runners(&client)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| Some((r["id"].as_str()?.to_owned(), r["name"].as_str()?.to_owned())))
            .collect();
        for shard in s["shards"].as_array().into_iter().flatten() {
            let runner = shard["runner_id"].as_str().unwrap_or("-");
            say!(
                "  shard {:>3} {:<9} attempt {} {} {}",
                shard["index"].as_u64().unwrap_or(0),
                shard["status"].as_str().unwrap_or(""),
                shard["attempt"],
                names.get(runner).map_or(runner, String::as_str),
                shard["error"].as_str().unwrap_or("")
            );
        }
    }
    // Running is not a verdict: 0 until it is one.
    Ok(ExitCode::from(
        verdict(s["status"].as_str().unwrap_or("")).unwrap_or(exit::PASSED),
    ))
}

/// `tms cancel` / `tms retry`: POST an action, print the new status line.
pub async fn act(id: &str, action: &str, server: &ServerArgs) -> Result<ExitCode> {
    let s = Client::new(server)
        .post(&format!("/executions/{}/{action}", segment(id)), &json!({}))
        .await?;
    say!("{}", summary(&s));
    Ok(ExitCode::SUCCESS)
}

pub async fn report(id: &str, junit: Option<PathBuf>, server: &ServerArgs) -> Result<ExitCode> {
    let client = Client::new(server);
    match junit {
        Some(file) => write_junit(&client, id, &file).await?,
        None => say!(
            "{}",
            client
                .get(&format!("/executions/{}/report", segment(id)))
                .await?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the execution's merged JUnit report to `file`.
async fn write_junit(client: &Client, id: &str, file: &std::path::Path) -> Result<()> {
    let xml = client
        .get_text(&format!("/executions/{}/report?format=junit", segment(id)))
        .await?;
    std::fs::write(file, xml).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    eprintln!("wrote the merged JUnit report to {}", file.display());
    Ok(())
}

/// Every registered runner, page by page.
async fn all_runners(client: &Client) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/runners?limit=200&cursor={}", segment(c)),
            None => "/runners?limit=200".to_owned(),
        };
        let page = client.get(&path).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(items),
        }
    }
}

/// `tms runners rm ID`.
pub async fn remove_runner(id: &str, server: &ServerArgs) -> Result<ExitCode> {
    let r = Client::new(server)
        .post(&format!("/runners/{}/deregister", segment(id)), &json!({}))
        .await?;
    say!(
        "removed runner {} ({})",
        r["name"].as_str().unwrap_or(id),
        r["id"].as_str().unwrap_or(id)
    );
    Ok(ExitCode::SUCCESS)
}

/// `tms runners`: the registered runners; removed ones only with `all`.
pub async fn runners(json_out: bool, all: bool, server: &ServerArgs) -> Result<ExitCode> {
    let client = Client::new(server);
    let items: Vec<Value> = all_runners(&client)
        .await?
        .into_iter()
        .filter(|r| all || r["status"] != "deregistered")
        .collect();
    if json_out {
        say!("{}", Value::Array(items));
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<30} {:<20} {:<14} {:<11} {:>9} {:<20} unlabelled work of",
        "id",
        "name",
        "type",
        "status",
        "slots",
        "labels"
    );
    let list = |v: &Value| -> String {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    for r in &items {
        let scope = &r["scope"];
        // What it takes of the work that requires no label.
        let takes = if scope["any"] == true {
            "any suite".to_owned()
        } else {
            let named: Vec<String> = [
                ("suites", &scope["suites"]),
                ("projects", &scope["projects"]),
            ]
            .into_iter()
            .map(|(what, v)| (what, list(v)))
            .filter(|(_, l)| !l.is_empty())
            .map(|(what, l)| format!("{what} {l}"))
            .collect();
            if named.is_empty() {
                "none".to_owned()
            } else {
                named.join("; ")
            }
        };
        say!(
            "{:<30} {:<20} {:<14} {:<11} {:>4}/{:<4} {:<20} {takes}",
            r["id"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
            r["type"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["allocated"]["slots"].as_u64().unwrap_or(0),
            r["capacity"]["slots"].as_u64().unwrap_or(0),
            list(&r["labels"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn create_token(name: &str, scope: &str, server: &ServerArgs) -> Result<ExitCode> {
    let t = Client::new(server)
        .post("/tokens", &json!({"name": name, "scope": scope}))
        .await?;
    eprintln!(
        "created {} token {:?} ({}); it is shown only now:",
        t["scope"].as_str().unwrap_or(scope),
        t["name"].as_str().unwrap_or(name),
        t["id"].as_str().unwrap_or("")
    );
    say!("{}", t["token"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn github_actions_runs_are_keyed_by_run_id_not_attempt() {
        let ci = detect_ci(env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_RUN_ID", "7001"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_JOB", "test"),
            ("GITHUB_SHA", "abc"),
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "acme/shop"),
        ]))
        .unwrap();
        assert_eq!(ci["provider"], "github-actions");
        assert_eq!(ci["build_id"], "7001");
        assert_eq!(ci["attempt"], 2, "a re-run's attempt goes with it");
        assert_eq!(ci["branch"], "main");
        assert_eq!(ci["url"], "https://github.com/acme/shop/actions/runs/7001");
        assert_eq!(ci["project"], "acme/shop", "the repository keys the agents");
    }

    #[test]
    fn gitlab_jenkins_and_azure_are_recognised() {
        let gl = detect_ci(env(&[
            ("GITLAB_CI", "true"),
            ("CI_PIPELINE_ID", "55"),
            ("CI_JOB_NAME", "rspec 1/4"),
            ("CI_PROJECT_PATH", "acme/shop"),
        ]))
        .unwrap();
        assert_eq!(
            (
                gl["provider"].as_str(),
                gl["build_id"].as_str(),
                gl["project"].as_str()
            ),
            (Some("gitlab"), Some("55"), Some("acme/shop"))
        );
        let j = detect_ci(env(&[
            ("JENKINS_URL", "https://ci/"),
            ("BUILD_TAG", "jenkins-shop-12"),
            ("BUILD_URL", "https://ci/job/shop/12/"),
        ]))
        .unwrap();
        assert_eq!(
            (j["provider"].as_str(), j["build_id"].as_str()),
            (Some("jenkins"), Some("jenkins-shop-12"))
        );
        let az = detect_ci(env(&[
            ("TF_BUILD", "True"),
            ("BUILD_BUILDID", "901"),
            ("SYSTEM_COLLECTIONURI", "https://dev.azure.com/acme/"),
            ("SYSTEM_TEAMPROJECT", "shop web"),
        ]))
        .unwrap();
        assert_eq!(az["provider"], "azure-devops");
        assert_eq!(
            az["url"],
            "https://dev.azure.com/acme/shop%20web/_build/results?buildId=901"
        );
        assert_eq!(detect_ci(env(&[("HOME", "/root")])), None);
    }

    #[test]
    fn a_tests_file_may_be_lines_durations_or_junit() {
        let lines = parse_tests_file("# smoke\ntests/a.py\n\n  tests/b.py  \n", None).unwrap();
        assert_eq!(lines, vec![json!("tests/a.py"), json!("tests/b.py")]);
        let durations =
            parse_tests_file(r#"{"durations": {"t1": 1.5, "t2": 0.0001}}"#, None).unwrap();
        assert_eq!(
            durations[0],
            json!({"name": "t1", "duration_hint_ms": 1500})
        );
        assert_eq!(durations[1]["duration_hint_ms"], 1);
        let junit = parse_tests_file(
            r#"<testsuite><testcase classname="C" name="a" time="0.2"/><testcase classname="C" name="a" time="0.3"/></testsuite>"#,
            None,
        )
        .unwrap();
        assert_eq!(junit, vec![json!({"name": "C.a", "duration_hint_ms": 200})]);
        let pytest = parse_tests_file(
            r#"<testsuite name="pytest"><testcase classname="tests.test_a" name="t" time="0.2"/></testsuite>"#,
            None,
        )
        .unwrap();
        assert_eq!(pytest[0]["name"], "tests/test_a.py::t");
        let by_name = parse_tests_file(
            r#"<testsuite><testcase classname="C" name="a"/></testsuite>"#,
            Some("name"),
        )
        .unwrap();
        assert_eq!(by_name[0]["name"], "a");
        assert!(parse_tests_file("<x", Some("nonsense")).is_err());
    }

    #[test]
    fn verdicts_map_to_the_documented_exit_codes() {
        assert_eq!(verdict("passed"), Some(0));
        assert_eq!(verdict("failed"), Some(1));
        for s in ["errored", "timed_out", "cancelled"] {
            assert_eq!(verdict(s), Some(2));
        }
        assert_eq!(verdict("running"), None);
    }

    #[test]
    fn a_glob_lists_the_matching_files_sorted_and_nothing_matched_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "tests/b/test_two.py",
            "tests/a/test_one.py",
            "tests/a/helper.py",
        ] {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        let root = dir.path().to_string_lossy().into_owned();
        let found = glob_tests(&format!("{root}/tests/**/test_*.py")).unwrap();
        assert_eq!(
            found,
            vec![
                format!("{root}/tests/a/test_one.py"),
                format!("{root}/tests/b/test_two.py")
            ]
        );
        let none = glob_tests(&format!("{root}/spec/**/*.rb")).unwrap_err();
        assert!(none.to_string().contains("matched no files"), "{none}");
    }
}
