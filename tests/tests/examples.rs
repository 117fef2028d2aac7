//! The example CI files in `examples/` are held to the real CLI: each is
//! parsed (YAML by a YAML parser; the Jenkinsfile's shell steps by their
//! quotes), every `tms` command in its shell steps is parsed by `tms`'s own
//! command-line definition, and each shows the same flow — agents as
//! parallel jobs working one execution, and a job that queues the suite and
//! waits for the verdict with the merged JUnit report — with the same
//! suite and test list in every job (TMS gives a build's jobs one execution
//! only for the same list).

use serde_yaml_ng::Value;
use std::path::PathBuf;

fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(name: &str) -> Value {
    serde_yaml_ng::from_str(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A shell step in a job: the job's name, whether it runs as parallel
/// copies, and the script.
struct Step {
    job: String,
    parallel: bool,
    script: String,
}

/// The `tms` command lines of a script, as argument lists (program
/// included): whole lines, or `VAR=$(tms …)`.
fn tms_commands(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines().map(str::trim) {
        let command = if line.starts_with("tms ") {
            line
        } else if let Some(at) = line.find("$(tms ") {
            line[at + 2..]
                .strip_suffix(')')
                .unwrap_or_else(|| panic!("a substituted tms command ends the line: {line}"))
        } else {
            continue;
        };
        let args = shlex::split(command).unwrap_or_else(|| panic!("unbalanced quotes: {line}"));
        found.push(args);
    }
    found
}

/// Checks every step's `tms` commands against the CLI and the flow all
/// examples share.
fn check_flow(name: &str, steps: &[Step]) {
    let mut agents = Vec::new();
    let mut gates = Vec::new();
    let mut queues = Vec::new();
    for step in steps {
        for args in tms_commands(&step.script) {
            // The URL and token come from TMS_URL and TMS_TOKEN in the
            // job's environment (checked per platform below).
            let mut with_env = args.clone();
            with_env.splice(
                2..2,
                ["--url", "https://tms.example", "--token", "t"].map(String::from),
            );
            if let Err(e) = tms_cli::parse_command_line(&with_env) {
                panic!(
                    "{name}, job {}: `{}` is not a valid tms command: {e}",
                    step.job,
                    args.join(" ")
                );
            }
            match args[1].as_str() {
                "agent" => {
                    assert!(
                        args.iter().any(|a| a == "--execution"),
                        "{name}: an agent job works its build's execution: {args:?}"
                    );
                    agents.push(step);
                }
                "queue" => {
                    let waits = args.iter().any(|a| a == "--wait");
                    let quiet = args.iter().any(|a| a == "--quiet");
                    assert!(
                        waits || quiet,
                        "{name}: a queue waits or hands the id on: {args:?}"
                    );
                    if waits {
                        assert!(
                            args.iter().any(|a| a == "--junit"),
                            "{name}: the gate keeps the report"
                        );
                        gates.push(step);
                    }
                    queues.push(same_execution_args(&args));
                }
                _ => {}
            }
        }
    }
    assert!(
        agents.iter().any(|s| s.parallel),
        "{name}: agents run as parallel jobs"
    );
    assert!(
        !gates.is_empty(),
        "{name}: a job queues the suite and waits for the verdict"
    );
    queues.dedup();
    assert_eq!(
        queues.len(),
        1,
        "{name}: every job queues the same suite and tests: {queues:?}"
    );
}

/// A queue command without what differs between jobs of one build (how it
/// waits and prints): what must match for them to share the execution.
fn same_execution_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--wait" | "--quiet" | "-q" | "--json" => {}
            "--junit" | "--poll-ms" => {
                it.next();
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn scripts(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn the_github_actions_workflow_runs_agents_as_a_matrix_and_waits_for_the_verdict() {
    let doc = yaml("github-actions.yml");
    for var in ["TMS_URL", "TMS_TOKEN"] {
        assert!(doc["env"][var]
            .as_str()
            .is_some_and(|v| v.contains("secrets.")));
    }
    let jobs = doc["jobs"].as_mapping().expect("jobs");
    let mut steps = Vec::new();
    for (job, body) in jobs {
        let parallel = body["strategy"]["matrix"].is_mapping();
        assert!(body["runs-on"].is_string(), "every job says where it runs");
        for step in body["steps"].as_sequence().expect("steps") {
            if let Some(run) = text(&step["run"]) {
                steps.push(Step {
                    job: text(job).unwrap(),
                    parallel,
                    script: run,
                });
            }
        }
    }
    check_flow("github-actions.yml", &steps);
}

#[test]
fn the_gitlab_pipeline_runs_agents_as_parallel_jobs_and_waits_for_the_verdict() {
    let doc = yaml(".gitlab-ci.yml");
    let stages: Vec<String> = doc["stages"]
        .as_sequence()
        .expect("stages")
        .iter()
        .filter_map(text)
        .collect();
    let mut steps = Vec::new();
    for (job, body) in doc.as_mapping().unwrap() {
        let Some(stage) = body.get("stage").and_then(text) else {
            continue;
        };
        assert!(stages.contains(&stage), "{job:?}: unknown stage {stage}");
        let parallel = body["parallel"].as_u64().is_some_and(|n| n > 1);
        for key in ["before_script", "script"] {
            steps.extend(scripts(&body[key]).into_iter().map(|script| Step {
                job: text(job).unwrap(),
                parallel,
                script,
            }));
        }
    }
    check_flow(".gitlab-ci.yml", &steps);
    assert_eq!(
        doc["verdict"]["artifacts"]["reports"]["junit"],
        "tms-report.xml"
    );
}

#[test]
fn the_azure_pipeline_runs_agents_in_parallel_and_maps_the_secret_token() {
    let doc = yaml("azure-pipelines.yml");
    let mut steps = Vec::new();
    for job in doc["jobs"].as_sequence().expect("jobs") {
        let parallel = job["strategy"]["parallel"].as_u64().is_some_and(|n| n > 1);
        for step in job["steps"].as_sequence().expect("steps") {
            let Some(script) = text(&step["script"]) else {
                continue;
            };
            if script.contains("tms queue") || script.contains("tms agent") {
                // Secret variables reach a script only through `env`.
                assert_eq!(step["env"]["TMS_TOKEN"], "$(TMS_TOKEN)", "{script}");
            }
            steps.push(Step {
                job: text(&job["job"]).unwrap(),
                parallel,
                script,
            });
        }
    }
    check_flow("azure-pipelines.yml", &steps);
}

/// The Jenkinsfile's shell steps: `sh '…'`, `sh "…"` and `sh '''…'''`.
/// Groovy has no parser here; its braces, parentheses and brackets are
/// checked to balance outside strings and comments.
fn jenkins_shell_steps(groovy: &str) -> Vec<String> {
    let mut steps = Vec::new();
    let mut depth: Vec<char> = Vec::new();
    let chars: Vec<char> = groovy.chars().collect();
    let mut i = 0;
    let at = |i: usize, s: &str| chars[i..].iter().take(s.len()).copied().eq(s.chars());
    while i < chars.len() {
        if at(i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let quote = ["'''", "\"\"\"", "'", "\""].into_iter().find(|q| at(i, q));
        if let Some(q) = quote {
            let start = i + q.len();
            let mut end = start;
            while end < chars.len() && !at(end, q) {
                end += if chars[end] == '\\' { 2 } else { 1 };
            }
            assert!(end < chars.len(), "unterminated string at {start}");
            let body: String = chars[start..end].iter().collect();
            let before: String = chars[..i].iter().collect();
            if before.trim_end().ends_with("sh") {
                steps.push(body);
            }
            i = end + q.len();
            continue;
        }
        match chars[i] {
            '{' | '(' | '[' => depth.push(chars[i]),
            c @ ('}' | ')' | ']') => {
                let open = depth.pop().unwrap_or_else(|| panic!("unbalanced {c}"));
                assert_eq!(closing(open), c, "mismatched {open}…{c}");
            }
            _ => {}
        }
        i += 1;
    }
    assert!(depth.is_empty(), "unclosed {depth:?}");
    steps
}

fn closing(open: char) -> char {
    match open {
        '{' => '}',
        '(' => ')',
        _ => ']',
    }
}

#[test]
fn the_jenkinsfile_runs_agents_as_parallel_branches_and_waits_for_the_verdict() {
    let groovy = example("Jenkinsfile");
    assert!(groovy.contains("pipeline {"), "a declarative pipeline");
    assert!(groovy.contains("credentials('tms-ci-token')"));
    // The agents are the branches built in a loop and run by `parallel`.
    assert!(groovy.contains("parallel jobs") && groovy.contains("agentStage(i)"));
    let shell = jenkins_shell_steps(&groovy);
    let steps: Vec<Step> = shell
        .into_iter()
        .map(|script| Step {
            job: "Tests".into(),
            parallel: script.contains("tms agent"),
            script,
        })
        .collect();
    check_flow("Jenkinsfile", &steps);
}

/// Each example installs the CI client alone (no server, no AWS SDK), once
/// per TMS version and from the platform's cache after that, never the
/// whole workspace in every job; each `cargo install` is one the CLI's
/// package accepts (`--no-default-features` on `tms-cli`).
#[test]
fn every_example_installs_the_client_alone_and_caches_it() {
    for name in [
        "github-actions.yml",
        ".gitlab-ci.yml",
        "azure-pipelines.yml",
    ] {
        let text = example(name);
        let installs: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("cargo install"))
            .collect();
        assert!(!installs.is_empty(), "{name} installs tms");
        for line in &installs {
            assert!(
                line.contains("--no-default-features") && line.contains("tms-cli"),
                "{name}: the client alone: {line}"
            );
            assert!(
                line.contains("--tag \"$TMS_VERSION\""),
                "{name}: a version: {line}"
            );
        }
        assert!(
            ["actions/cache", "cache:", "Cache@2"]
                .iter()
                .any(|c| text.contains(c)),
            "{name} keeps the client in the platform's cache"
        );
        assert!(
            text.contains("TMS_VERSION"),
            "{name} keys the cache by version"
        );
    }
    let cli =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/Cargo.toml")).unwrap();
    assert!(
        cli.contains("default = [\"server\"]"),
        "the server is the default feature"
    );
    let jenkins = example("Jenkinsfile");
    assert!(
        jenkins.contains("--no-default-features"),
        "Jenkins agents get the client alone"
    );
}
