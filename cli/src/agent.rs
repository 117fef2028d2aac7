//! `tms agent`: a pull-mode runner. It registers (or reuses the id in its
//! state file), heartbeats, claims batches of dynamic executions with its
//! free slots, runs each shard it is assigned or claimed with the shard's
//! tests substituted into the command, and reports the JUnit file the
//! command wrote (or, without one, the command's exit status). A shard past
//! its deadline has its whole process group killed; SIGTERM pauses the
//! runner (nothing new is assigned), lets the running shards finish and
//! exits; started again, the agent resumes its runner.

use crate::client::{segment, Client, ServerArgs};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The runner's name (shown in `tms runners` and the dashboard).
    #[arg(long)]
    pub name: String,
    /// Labels executions may require, comma-separated: it takes the
    /// executions that require labels it has.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Suites whose executions it takes when they require no label
    /// (comma-separated or repeated). On a server several checkouts or
    /// teams share, an agent so takes only the work it is meant for.
    #[arg(long = "suite", value_delimiter = ',')]
    pub suites: Vec<String>,
    /// Repositories or projects whose unlabelled executions it takes (the
    /// CI project `tms queue` sends: GITHUB_REPOSITORY, CI_PROJECT_PATH,
    /// BUILD_REPOSITORY_NAME, GIT_URL). In a CI job the job's own is
    /// declared without it.
    #[arg(long = "project", value_delimiter = ',')]
    pub projects: Vec<String>,
    /// Take unlabelled executions of any suite and project: for a server
    /// that serves one checkout. Without it (or --suite, --project, a CI
    /// project or --execution) the agent takes only labelled work.
    #[arg(long)]
    pub any_suite: bool,
    /// Shards run at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    #[arg(long, default_value_t = 4000)]
    pub cpu_millis: u32,
    #[arg(long, default_value_t = 8192)]
    pub memory_mb: u32,
    /// The JUnit XML file the command writes, or a glob of the files it
    /// writes (`target/surefire-reports/TEST-*.xml`: Surefire writes one
    /// per class, Playwright one per project), which are sent as one
    /// report; `{shard}` expands to the run's unique name. Files that match
    /// are removed before the command runs. Without it, the command's exit
    /// status is the shard's verdict as a whole (0 passed, else failed),
    /// marked as such; no test is counted passed or failed.
    #[arg(long)]
    pub junit: Option<String>,
    /// Name every JUnit case one way (classname, pytest, name) instead of
    /// letting the server match each case to the shard's tests under every
    /// convention tools use (README, "How report names are matched").
    #[arg(long)]
    pub names: Option<String>,
    /// Where the agent keeps its runner id and token between starts.
    #[arg(long, default_value = ".tms-agent.json")]
    pub state_file: PathBuf,
    /// How often to heartbeat, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// How often the server is to expect a heartbeat, in seconds: it
    /// judges this agent silent (and moves its work to others) after
    /// three of them go missing. The agent heartbeats at every poll, more
    /// often than this.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_interval: u64,
    /// Where the command runs: here (`local`), or in a fresh container of
    /// `--image` (`docker`) that sees the working directory, the tests file
    /// and the JUnit file's directory at the same paths.
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// The image `--executor docker` runs the command in.
    #[arg(long, required_if_eq("executor", "docker"))]
    pub image: Option<String>,
    /// More arguments for `docker run` (e.g. `--docker-arg=--network=host`).
    #[arg(long, allow_hyphen_values = true)]
    pub docker_arg: Vec<String>,
    /// Work for this execution only, then exit with its verdict (0 passed,
    /// 1 tests failed, 2 errored, timed out or cancelled; 3 no verdict
    /// from TMS) and deregister:
    /// an agent that is one of a CI build's parallel jobs.
    #[arg(long)]
    pub execution: Option<String>,
    /// The runner type to register as; by default the CI platform the
    /// agent runs on (github-actions, gitlab, jenkins, azure-devops), else
    /// docker with `--executor docker`, else custom.
    #[arg(long = "type")]
    pub runner_type: Option<String>,
    /// The command; `{tests}` expands to the tests as arguments,
    /// `{tests_file}` to a file with one test per line, `{shard}` to the
    /// run's unique name.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    Local,
    Docker,
}

/// The container a shard runs in under `--executor docker`: named after the
/// shard run (so it can be killed by name at the deadline), removed when it
/// exits, run as the agent's user so the JUnit file it writes is the
/// agent's, with `mounts` at the same paths inside.
pub struct Container<'a> {
    pub image: &'a str,
    pub extra: &'a [String],
    pub workdir: &'a Path,
    pub mounts: Vec<PathBuf>,
    pub user: Option<(u32, u32)>,
}

impl Container<'_> {
    /// The container's name for a shard run.
    pub fn name(shard: &str) -> String {
        format!("tms-{shard}")
    }

    /// `docker run …` wrapping the shard's command line.
    pub fn wrap(&self, shard: &str, argv: &[String]) -> Vec<String> {
        let mut out: Vec<String> = ["docker", "run", "--rm", "--init", "--name"]
            .map(String::from)
            .to_vec();
        out.push(Self::name(shard));
        if let Some((uid, gid)) = self.user {
            out.extend(["--user".into(), format!("{uid}:{gid}")]);
        }
        // A directory inside another mounted one is seen through it.
        let mut mounts: Vec<PathBuf> = Vec::new();
        for m in std::iter::once(self.workdir).chain(self.mounts.iter().map(PathBuf::as_path)) {
            if !mounts.iter().any(|seen| m.starts_with(seen)) {
                mounts.retain(|seen| !seen.starts_with(m));
                mounts.push(m.to_path_buf());
            }
        }
        for m in &mounts {
            let m = m.to_string_lossy();
            out.extend(["-v".into(), format!("{m}:{m}")]);
        }
        out.extend([
            "-w".into(),
            self.workdir.to_string_lossy().into_owned(),
            "-e".into(),
            format!("TMS_SHARD={shard}"),
        ]);
        out.extend(self.extra.iter().cloned());
        out.push(self.image.to_owned());
        out.extend(argv.iter().cloned());
        out
    }
}

/// What a shard run is called: unique per execution, shard and attempt.
fn shard_name(a: &Value) -> String {
    format!(
        "{}-{}-{}",
        a["execution_id"].as_str().unwrap_or("exec"),
        a["shard_index"],
        a["attempt"]
    )
}

/// The command line for one shard: `{tests}` as arguments (an argument
/// that is exactly `{tests}` becomes one argument per test), `{tests_file}`
/// and `{shard}` substituted wherever they appear.
pub fn expand(command: &[String], tests: &[String], tests_file: &Path, shard: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in command {
        if part == "{tests}" {
            out.extend(tests.iter().cloned());
            continue;
        }
        out.push(
            part.replace("{tests_file}", &tests_file.to_string_lossy())
                .replace("{shard}", shard)
                .replace("{tests}", &tests.join(" ")),
        );
    }
    out
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    url: String,
    id: String,
    token: String,
    /// The agent paused its runner when it drained; it resumes it when it
    /// starts again (a runner an admin paused stays paused).
    #[serde(default)]
    drained: bool,
}

impl State {
    fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string(self)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(())
    }
}

fn runner_type(args: &AgentArgs) -> String {
    if let Some(t) = &args.runner_type {
        return t.clone();
    }
    let on_ci = crate::ci::detect_ci(|k| std::env::var(k).ok());
    match on_ci.as_ref().and_then(|ci| ci["provider"].as_str()) {
        Some(provider) => provider.to_owned(),
        None if args.executor == Executor::Docker => "docker".to_owned(),
        None => "custom".to_owned(),
    }
}

/// Which unlabelled executions the agent takes (the runner's `scope`):
/// the suites and projects it declares, its CI job's project, the suite
/// of the execution it is bound to; or, told `--any-suite`, any. An agent
/// that would take nothing at all is a mistake on its command line.
async fn scope(args: &AgentArgs, admin: &Client) -> Result<Value> {
    let mut suites: BTreeSet<String> = args.suites.iter().cloned().collect();
    let mut projects: BTreeSet<String> = args.projects.iter().cloned().collect();
    if let Some(project) = crate::ci::detect_ci(|k| std::env::var(k).ok())
        .and_then(|ci| ci["project"].as_str().map(str::to_owned))
    {
        projects.insert(project);
    }
    if let Some(id) = &args.execution {
        let status = admin
            .get(&format!("/executions/{}/status", segment(id)))
            .await?;
        if let Some(suite) = status["suite"].as_str() {
            suites.insert(suite.to_owned());
        }
    }
    if !args.any_suite && suites.is_empty() && projects.is_empty() && args.labels.is_empty() {
        return Err(Box::new(crate::UsageError(
            "this agent would take no work: declare the suites it runs (--suite NAME), its \
             project (--project KEY), its labels (--labels), or take any unlabelled work \
             (--any-suite)"
                .into(),
        )));
    }
    Ok(json!({"any": args.any_suite, "suites": suites, "projects": projects}))
}

/// Registers, or reuses the runner in the state file if the server still
/// knows it with the labels and scope asked for now (an agent started
/// again with others registers anew, and its old runner goes).
async fn identity(args: &AgentArgs) -> Result<State> {
    let admin = Client::new(&args.server);
    let scope = scope(args, &admin).await?;
    let labels: BTreeSet<&str> = args.labels.iter().map(String::as_str).collect();
    if let Ok(text) = std::fs::read_to_string(&args.state_file) {
        if let Ok(mut state) = serde_json::from_str::<State>(&text) {
            if state.url == args.server.url {
                let me = Client::new(&ServerArgs {
                    url: state.url.clone(),
                    token: state.token.clone(),
                });
                let runner = format!("/runners/{}", segment(&state.id));
                if let Ok(found) = me.get(&runner).await {
                    let had: BTreeSet<&str> = found["labels"]
                        .as_array()
                        .map(|l| l.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    if found["status"] != "deregistered"
                        && (had != labels || found["scope"] != scope)
                    {
                        eprintln!(
                            "tms agent: runner {} was registered with other labels or suites; \
                             registering anew",
                            state.id
                        );
                        if let Err(e) = me.post(&format!("{runner}/deregister"), &json!({})).await {
                            // It goes by itself once silent past the retention.
                            eprintln!("tms agent: could not remove runner {}: {e}", state.id);
                        }
                    } else if found["status"] != "deregistered" {
                        if state.drained {
                            me.post(&format!("{runner}/resume"), &json!({})).await?;
                            state.drained = false;
                            state.save(&args.state_file)?;
                        }
                        return Ok(state);
                    }
                }
            }
        }
    }
    let reg = admin
        .post(
            "/runners/register",
            &json!({"name": args.name, "type": runner_type(args), "labels": args.labels,
                "scope": scope,
                "capacity": {"slots": args.slots, "cpu_millis": args.cpu_millis, "memory_mb": args.memory_mb},
                "heartbeat_interval_seconds": args.heartbeat_interval.clamp(1, 3600)}),
        )
        .await?;
    let state = State {
        drained: false,
        url: args.server.url.clone(),
        id: reg["id"]
            .as_str()
            .ok_or("no runner id in the answer")?
            .to_owned(),
        token: reg["token"]
            .as_str()
            .ok_or("no runner token in the answer")?
            .to_owned(),
    };
    state.save(&args.state_file)?;
    Ok(state)
}

/// [`identity`], waiting for a server that does not answer yet (an agent
/// started before the server, or during its restart) instead of exiting:
/// asked again with backoff, up to 30 s apart, until it answers or the
/// agent is stopped.
async fn identity_when_reachable(args: &AgentArgs) -> Result<State> {
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        match identity(args).await {
            Err(e)
                if e.downcast_ref::<crate::client::ClientError>()
                    .is_some_and(crate::client::ClientError::is_transient) =>
            {
                eprintln!("tms agent: {e}; trying again in {}s", pause.as_secs());
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = crate::shutdown_signal() => return Err("stopped before the server answered".into()),
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

pub async fn run(args: AgentArgs) -> Result<std::process::ExitCode> {
    let mut me = identity_when_reachable(&args).await?;
    eprintln!(
        "tms agent {}: runner {} on {}",
        args.name, me.id, args.server.url
    );
    let client = Arc::new(Client::new(&ServerArgs {
        url: me.url.clone(),
        token: me.token.clone(),
    }));
    let args = Arc::new(args);
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let beat = format!("/runners/{}/heartbeat", segment(&me.id));
    let claimable = format!("/runners/{}/claimable", segment(&me.id));
    // Starts a shard unless it already runs here (a claimed batch shows up
    // in later heartbeats too): the lease is the key. Work assigned to this
    // runner is started while it is `assigned`; a batch this agent claimed
    // is running from its claim. A claimed batch is reported asking for
    // the next (`next_batch`), which runs in the same slot at once, of
    // whichever execution the answer names.
    let startable = |a: &Value, claimed: bool| {
        a["status"] == "assigned" || (claimed && a["status"] == "running")
    };
    let start = |a: Value, claimed: bool, tasks: &mut tokio::task::JoinSet<()>| {
        let lease = a["lease_id"].as_str().unwrap_or("").to_owned();
        if !startable(&a, claimed)
            || !running
                .lock()
                .map(|mut r| r.insert(lease.clone()))
                .unwrap_or(false)
        {
            return;
        }
        let (client, args, running) = (client.clone(), args.clone(), running.clone());
        tasks.spawn(async move {
            let (mut current, mut lease) = (a, lease);
            loop {
                let next = match run_shard(&client, &args, &current, claimed).await {
                    Ok(next) => next,
                    Err(e) => {
                        eprintln!("tms agent: shard {}: {e}", shard_name(&current));
                        None
                    }
                };
                let taken = next.filter(|n| startable(n, true)).and_then(|n| {
                    let l = n["lease_id"].as_str().unwrap_or("").to_owned();
                    let fresh = running
                        .lock()
                        .map(|mut r| r.insert(l.clone()))
                        .unwrap_or(false);
                    fresh.then_some((n, l))
                });
                if let Ok(mut r) = running.lock() {
                    r.remove(&lease);
                }
                match taken {
                    Some((n, l)) => (current, lease) = (n, l),
                    None => break,
                }
            }
        });
    };
    loop {
        match client.post(&beat, &json!({})).await {
            Ok(answer) => {
                for a in answer["assignments"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    start(a, false, &mut tasks);
                }
            }
            Err(e) => eprintln!("tms agent: heartbeat: {e}"),
        }
        // Free slots go claiming batches of dynamic executions.
        let free = |running: &Mutex<HashSet<String>>| {
            let busy = running.lock().map(|r| r.len()).unwrap_or(usize::MAX);
            (args.slots as usize).saturating_sub(busy)
        };
        if free(&running) > 0 {
            let open = match &args.execution {
                Some(id) => vec![json!({ "execution_id": id })],
                None => claimable_work(&client, &claimable).await,
            };
            for e in open {
                let Some(exec) = e["execution_id"].as_str() else {
                    continue;
                };
                let path = format!("/executions/{}/claims", segment(exec));
                while free(&running) > 0 {
                    // A refusal (the batch needs more than is free here,
                    // the execution just finished) moves on to the next.
                    let Ok(outcome) = client.post(&path, &json!({})).await else {
                        break;
                    };
                    match outcome.get("assignment").filter(|a| !a.is_null()) {
                        Some(a) => start(a.clone(), true, &mut tasks),
                        None => break,
                    }
                }
            }
        }
        while tasks.try_join_next().is_some() {}
        if let Some(id) = &args.execution {
            if let Some(code) = finished(&args.server, id).await {
                // Nothing of a finished execution is worth finishing.
                tasks.abort_all();
                if let Err(e) = client
                    .post(
                        &format!("/runners/{}/deregister", segment(&me.id)),
                        &json!({}),
                    )
                    .await
                {
                    eprintln!("tms agent: deregister: {e}");
                }
                let _ = std::fs::remove_file(&args.state_file);
                return Ok(std::process::ExitCode::from(code));
            }
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_millis(args.poll_ms.max(100))) => {}
        }
    }
    while tasks.try_join_next().is_some() {}
    eprintln!(
        "tms agent: stopping; finishing {} running shards",
        tasks.len()
    );
    // Nothing new is assigned to a paused runner; what was assigned before
    // the pause still runs here.
    match client
        .post(&format!("/runners/{}/pause", segment(&me.id)), &json!({}))
        .await
    {
        Ok(_) => {
            me.drained = true;
            if let Err(e) = me.save(&args.state_file) {
                eprintln!("tms agent: {e}");
            }
        }
        Err(e) => eprintln!("tms agent: pause: {e}"),
    }
    if let Ok(answer) = client.post(&beat, &json!({})).await {
        for a in answer["assignments"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            start(a, false, &mut tasks);
        }
    }
    // Keep the leases alive while the running shards finish.
    let keepalive = async {
        loop {
            tokio::time::sleep(Duration::from_millis(args.poll_ms.max(100))).await;
            let _ = client.post(&beat, &json!({})).await;
        }
    };
    tokio::select! {
        _ = async { while tasks.join_next().await.is_some() {} } => {}
        _ = keepalive => {}
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The dynamic executions this runner may claim batches of, highest
/// priority first: the listing's pages until one has some (a page may be
/// empty while executions the runner does not fit are passed over), at
/// most a few pages a poll.
async fn claimable_work(client: &Client, path: &str) -> Vec<Value> {
    const MAX_PAGES: usize = 10;
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = match &cursor {
            Some(c) => format!("{path}?cursor={}", segment(c)),
            None => path.to_owned(),
        };
        let list = match client.get(&page).await {
            Ok(list) => list,
            Err(e) => {
                eprintln!("tms agent: claimable work: {e}");
                return Vec::new();
            }
        };
        let items = list["items"].as_array().cloned().unwrap_or_default();
        cursor = list["next_cursor"].as_str().map(str::to_owned);
        if !items.is_empty() || cursor.is_none() {
            return items;
        }
    }
    Vec::new()
}

/// The verdict's exit code once the execution is finished (its summary
/// printed), else none.
async fn finished(server: &ServerArgs, id: &str) -> Option<u8> {
    match Client::new(server)
        .get(&format!("/executions/{}/status", segment(id)))
        .await
    {
        Ok(s) => {
            let code = crate::ci::verdict(s["status"].as_str().unwrap_or(""))?;
            say!("{}", crate::ci::summary(&s));
            Some(code)
        }
        Err(e) => {
            eprintln!("tms agent: status of {id}: {e}");
            None
        }
    }
}

/// Runs one shard: started (unless the server says it runs already, as a
/// claimed batch does from its claim), the command (killed with its
/// process group at the lease's deadline), then the report. A batch the
/// agent `claimed` is reported asking for the next one, which the answer
/// may carry.
async fn run_shard(
    client: &Client,
    args: &AgentArgs,
    a: &Value,
    claimed: bool,
) -> Result<Option<Value>> {
    let exec = a["execution_id"]
        .as_str()
        .ok_or("assignment without execution")?;
    let hook = format!("/webhooks/parallel-execution/{}", segment(exec));
    let (index, lease) = (a["shard_index"].clone(), a["lease_id"].clone());
    if a["status"] != "running" {
        client
            .post(
                &hook,
                &json!({"shard_index": index, "lease_id": lease, "status": "started"}),
            )
            .await?;
    }
    let tests: Vec<String> = a["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    let shard = shard_name(a);
    let dir = tempfile_dir()?;
    let tests_file = dir.join(format!("{shard}.tests"));
    std::fs::write(&tests_file, tests.join("\n") + "\n")?;
    let junit = args
        .junit
        .as_ref()
        .map(|p| PathBuf::from(p.replace("{shard}", &shard)));
    if let Some(j) = &junit {
        for stale in junit_files(j)? {
            let _ = std::fs::remove_file(stale);
        }
    }
    let mut argv = expand(&args.command, &tests, &tests_file, &shard);
    // In a container, killing the `docker` client would leave the
    // container running: it is killed by name.
    let mut stop_container = None;
    if args.executor == Executor::Docker {
        let workdir = std::env::current_dir()?;
        let mut mounts = vec![dir.clone()];
        if let Some(parent) = junit
            .as_ref()
            .and_then(|j| workdir.join(j).parent().map(Path::to_path_buf))
        {
            std::fs::create_dir_all(&parent)?;
            mounts.push(parent);
        }
        let container = Container {
            image: args
                .image
                .as_deref()
                .ok_or("--executor docker needs --image")?,
            extra: &args.docker_arg,
            workdir: &workdir,
            mounts,
            user: current_user(),
        };
        argv = container.wrap(&shard, &argv);
        stop_container = Some(vec![
            "docker".to_owned(),
            "kill".to_owned(),
            Container::name(&shard),
        ]);
    }
    let deadline_ms = a["deadline"].as_i64().unwrap_or(i64::MAX);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let budget = Duration::from_millis(deadline_ms.saturating_sub(now_ms).max(0) as u64);
    let outcome = run_command(&argv, &shard, budget, stop_container.as_deref()).await;
    let _ = std::fs::remove_file(&tests_file);
    let written = match &junit {
        Some(j) => junit_files(j)?,
        None => Vec::new(),
    };
    let report = match (&outcome, (!written.is_empty()).then_some(&written)) {
        (Ok(_), Some(files)) => {
            let reports = files
                .iter()
                .map(std::fs::read_to_string)
                .collect::<std::io::Result<Vec<_>>>()?;
            let xml = tms_junit::combine(&reports);
            let mut path = format!(
                "{hook}?shard_index={index}&lease_id={}",
                segment(lease.as_str().unwrap_or(""))
            );
            if let Some(names) = &args.names {
                path.push_str(&format!("&names={}", segment(names)));
            }
            if claimed {
                path.push('&');
                path.push_str(next_batch(args));
            }
            let answer = client.post_raw(&path, "application/xml", xml).await?;
            return Ok(next_assignment(&answer));
        }
        // No report to read: the command's exit status is the verdict on
        // the batch as a whole, and says so (no test is counted passed).
        (Ok(code), None) if args.junit.is_none() => Some(*code),
        _ => None,
    };
    let body = match report {
        None => json!({"shard_index": index, "lease_id": lease, "status": "errored"}),
        Some(code) => {
            let status = if code == 0 { "passed" } else { "failed" };
            json!({"shard_index": index, "lease_id": lease, "status": status,
                   "results": {"exit_code": code}})
        }
    };
    if let Err(why) = &outcome {
        eprintln!("tms agent: shard {shard}: {why}");
    }
    let path = if claimed {
        format!("{hook}?{}", next_batch(args))
    } else {
        hook
    };
    let answer = client.post(&path, &body).await?;
    Ok(next_assignment(&answer))
}

/// The query that asks a report's answer for the next batch: of any
/// dynamic execution this runner may claim, or of the one execution the
/// agent was given (`--execution`).
fn next_batch(args: &AgentArgs) -> &'static str {
    if args.execution.is_some() {
        "next=true"
    } else {
        "next=any"
    }
}

/// The next batch a report's answer carries, if any.
fn next_assignment(answer: &Value) -> Option<Value> {
    answer
        .get("next")
        .and_then(|n| n.get("assignment"))
        .filter(|a| !a.is_null())
        .cloned()
}

/// The files `--junit` names: the one path, or the glob's matches in
/// name order.
fn junit_files(pattern: &Path) -> Result<Vec<PathBuf>> {
    let text = pattern.to_string_lossy();
    if !text.contains(['*', '?', '[']) {
        return Ok(if pattern.exists() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        });
    }
    let mut files: Vec<PathBuf> = glob::glob(&text)
        .map_err(|e| format!("--junit {text:?}: {e}"))?
        .filter_map(std::result::Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join("tms-agent");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The agent's uid and gid, for files a container writes to be its own.
fn current_user() -> Option<(u32, u32)> {
    #[cfg(unix)]
    {
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        Some(unsafe { (libc::getuid(), libc::getgid()) })
    }
    #[cfg(not(unix))]
    None
}

/// Runs the command in a process group of its own; past `budget` the whole
/// group is killed (a test runner's children with it), then `on_deadline`
/// runs (stopping what lives outside the group, like a container). The
/// exit code, or why there is none.
async fn run_command(
    argv: &[String],
    shard: &str,
    budget: Duration,
    on_deadline: Option<&[String]>,
) -> std::result::Result<i32, String> {
    let (program, rest) = argv.split_first().ok_or("empty command")?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .env("TMS_SHARD", shard)
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    match tokio::time::timeout(budget, child.wait()).await {
        Ok(Ok(status)) => Ok(status.code().unwrap_or(-1)),
        Ok(Err(e)) => Err(format!("waiting for {program}: {e}")),
        Err(_) => {
            #[cfg(unix)]
            if let Some(pid) = child.id() {
                // The negative pid is the process group: the command and
                // everything it started.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            if let Some((program, rest)) = on_deadline.and_then(|c| c.split_first()) {
                let _ = tokio::process::Command::new(program)
                    .args(rest)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .await;
            }
            Err(format!(
                "killed at the shard's deadline after {}s",
                budget.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_expand_as_arguments_and_placeholders_anywhere() {
        let cmd: Vec<String> = [
            "pytest",
            "{tests}",
            "--junitxml=out/{shard}.xml",
            "-c",
            "@{tests_file}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let tests = vec!["t/a.py".to_string(), "t/b.py".to_string()];
        let argv = expand(&cmd, &tests, Path::new("/tmp/x.tests"), "e-1-2");
        assert_eq!(
            argv,
            vec![
                "pytest",
                "t/a.py",
                "t/b.py",
                "--junitxml=out/e-1-2.xml",
                "-c",
                "@/tmp/x.tests"
            ]
        );
    }

    #[test]
    fn a_container_sees_the_workdir_and_outside_mounts_at_the_same_paths() {
        let extra = vec!["--network=host".to_string()];
        let c = Container {
            image: "python:3.12",
            extra: &extra,
            workdir: Path::new("/src/app"),
            mounts: vec![
                PathBuf::from("/tmp/tms-agent"),
                PathBuf::from("/src/app/reports"),
                PathBuf::from("/tmp/tms-agent"),
            ],
            user: Some((1000, 1000)),
        };
        let argv = c.wrap("e1-0-1", &["pytest".to_string(), "t/a.py".to_string()]);
        assert_eq!(
            argv.join(" "),
            "docker run --rm --init --name tms-e1-0-1 --user 1000:1000 \
             -v /src/app:/src/app -v /tmp/tms-agent:/tmp/tms-agent -w /src/app \
             -e TMS_SHARD=e1-0-1 --network=host python:3.12 pytest t/a.py"
        );
    }
}
