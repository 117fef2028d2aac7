//! The dashboard in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, both from Debian; `scripts/test` installs them) against a
//! `tms serve` on a free port. Signing in, an execution appearing, moving
//! and finishing, cancelling one (after a confirmation), pausing a runner
//! so the scheduler skips it, and a suite named like markup shown as text.
//! With `TMS_SCREENSHOT_DIR` set, the main views are saved there as PNGs
//! (the ones in `docs/screenshots/` were taken so).

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tms_tests::{client, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");
/// The page refreshes every 5 s; anything it should show arrives well
/// within this.
const PATIENCE: Duration = Duration::from_secs(20);

/// chromedriver on a free port, and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    /// Kills chromedriver's whole process group: the Chromium it started
    /// too, which would outlive a killed chromedriver (a failed test never
    /// reaches a polite session close).
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

impl std::ops::Deref for Browser {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("session")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> Browser {
    let driver_bin =
        std::env::var("TMS_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let chromium = std::env::var("TMS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&driver_bin).exists() && std::path::Path::new(&chromium).exists(),
        "the dashboard tests need Debian's chromium and chromium-driver \
         (scripts/test installs them; or set TMS_CHROMIUM and TMS_CHROMEDRIVER)"
    );
    let port = free_port();
    use std::os::unix::process::CommandExt;
    let driver = Command::new(&driver_bin)
        .arg(format!("--port={port}"))
        // A process group of its own, so Drop can end it with its browser.
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Browser {
        driver,
        client: None,
        _profile: profile,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1440,1000",
                format!("--user-data-dir={}", browser._profile.path().display()),
            ]
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    browser.client = Some(client);
    browser
}

/// The page, signed in with the admin token.
async fn signed_in(server: &Server) -> Browser {
    let b = browser().await;
    b.goto(&format!("{}/enhanced-orchestration", server.url))
        .await
        .unwrap();
    let field = b.wait().for_element(Locator::Id("token")).await.unwrap();
    field.send_keys(ADMIN_TOKEN).await.unwrap();
    click(&b, Locator::Css("#login-form button")).await;
    visible(&b, "#app").await;
    b
}

async fn click(b: &Client, what: Locator<'_>) {
    b.find(what).await.unwrap().click().await.unwrap();
}

/// Clicks what `css` finds, waits for the confirmation dialog and answers
/// it: `confirm-yes` or `confirm-no`.
async fn click_and_answer(b: &Client, css: &str, answer: &str) {
    click(b, Locator::Css(css)).await;
    until(
        b,
        "return document.getElementById('confirm').open;",
        "the confirmation",
    )
    .await;
    click(b, Locator::Id(answer)).await;
}

/// Waits until `css` (`#app` or `#login`) is rendered (takes up room on
/// the page) and the other is not.
async fn visible(b: &Client, css: &str) {
    let script = format!(
        "const shown = (s) => document.querySelector(s).getClientRects().length > 0;
         return shown({css:?}) && ['#app', '#login'].filter(s => s !== {css:?}).every(s => !shown(s));"
    );
    until(b, &script, &format!("only {css} shown")).await;
}

/// Waits until `script` (a function body) returns true.
async fn until(b: &Client, script: &str, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if b.execute(script, vec![]).await.unwrap() == json!(true) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status shown in the executions table for execution `id`.
fn status_is(id: &str, status: &str) -> String {
    format!(
        "const row = document.querySelector('#executions tr[data-key={id:?}]');
         return !!row && row.querySelector('.status').textContent === {status:?};",
        status = status.replace('_', " ")
    )
}

async fn post(base: &str, path: &str, token: &str, body: Value) -> Value {
    let resp = client()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn register(base: &str, name: &str) -> (String, String) {
    let r = post(
        base,
        "/runners/register",
        ADMIN_TOKEN,
        json!({"name": name, "type": "github-actions", "labels": ["linux"],
               "capacity": {"slots": 2, "cpu_millis": 4000, "memory_mb": 8192}}),
    )
    .await;
    (
        r["id"].as_str().unwrap().into(),
        r["token"].as_str().unwrap().into(),
    )
}

async fn queue(base: &str, suite: &str, tests: &[&str], shards: u32) -> (String, String) {
    let q = post(
        base,
        "/executions/queue",
        ADMIN_TOKEN,
        json!({"suite": suite, "tests": tests, "parallelism": shards}),
    )
    .await;
    (
        q["id"].as_str().unwrap().into(),
        q["webhook_token"].as_str().unwrap().into(),
    )
}

/// The runner takes what it was assigned and reports each shard passed.
async fn work(base: &str, runner: &(String, String), execution: &(String, String)) {
    let beat = post(
        base,
        &format!("/runners/{}/heartbeat", runner.0),
        &runner.1,
        json!({}),
    )
    .await;
    for a in beat["assignments"].as_array().unwrap() {
        if a["execution_id"] != execution.0.as_str() {
            continue;
        }
        let n = a["tests"].as_array().unwrap().len();
        post(
            base,
            &format!("/webhooks/parallel-execution/{}", execution.0),
            &execution.1,
            json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"], "status": "passed",
                   "results": {"passed": n, "failed": 0, "skipped": 0}}),
        )
        .await;
    }
}

async fn screenshot(b: &Client, name: &str) {
    if let Ok(dir) = std::env::var("TMS_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        let png = b.screenshot().await.unwrap();
        std::fs::write(format!("{dir}/{name}.png"), png).unwrap();
    }
}

#[tokio::test]
async fn signing_in_keeps_the_token_in_the_tab_and_a_wrong_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let b = browser().await;
    let page = format!("{}/enhanced-orchestration", server.url);
    b.goto(&page).await.unwrap();
    visible(&b, "#login").await;
    screenshot(&b, "sign-in").await;
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("tms_not_a_real_token")
        .await
        .unwrap();
    click(&b, Locator::Css("#login-form button")).await;
    until(
        &b,
        "return document.getElementById('login-error').textContent.includes('refused');",
        "the refusal",
    )
    .await;
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    click(&b, Locator::Css("#login-form button")).await;
    visible(&b, "#app").await;
    let kept = b
        .execute("return sessionStorage.getItem('tms-token');", vec![])
        .await
        .unwrap();
    assert_eq!(kept, json!(ADMIN_TOKEN));
    assert!(!b
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains(ADMIN_TOKEN));
    // A reload of the tab stays signed in; signing out forgets the token.
    b.refresh().await.unwrap();
    visible(&b, "#app").await;
    click(&b, Locator::Id("sign-out")).await;
    visible(&b, "#login").await;
    let kept = b
        .execute("return sessionStorage.getItem('tms-token');", vec![])
        .await
        .unwrap();
    assert_eq!(kept, Value::Null);
    // The page carries the CSP that forbids inline and foreign code.
    let resp = client().get(&page).send().await.unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("default-src 'none'"));
}

#[tokio::test]
async fn a_queued_execution_appears_in_the_queue_progresses_and_finishes() {
    let dir = tempfile::tempdir().unwrap();
    // Health sweeps every second sample the slots in use for the chart.
    let (server, _) = Server::start_with(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &["--heartbeat-interval", "1"],
    );
    let base = &server.base;
    let b = signed_in(&server).await;
    // No runner yet: it waits in the queue.
    let exec = queue(base, "checkout-e2e", &["a", "b", "c", "d"], 2).await;
    until(
        &b,
        &format!(
            "return !!document.querySelector('#queue tr[data-key={:?}]');",
            exec.0
        ),
        "the queued execution in the queue",
    )
    .await;
    until(&b, &status_is(&exec.0, "queued"), "queued").await;
    // A runner arrives and takes both shards.
    let runner = register(base, "gha-linux-1").await;
    let _other = register(base, "gha-linux-2").await;
    // Both stay alive (a heartbeat interval is 1 s here).
    let alive = {
        let (base, runners) = (base.clone(), [runner.clone(), _other.clone()]);
        tokio::spawn(async move {
            loop {
                for (id, token) in &runners {
                    let _ = client()
                        .post(format!("{base}/runners/{id}/heartbeat"))
                        .bearer_auth(token)
                        .json(&json!({}))
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    until(&b, &status_is(&exec.0, "running"), "running").await;
    until(
        &b,
        &format!(
            "return document.querySelectorAll('#executions tr[data-key={:?}] .shards i').length === 2;",
            exec.0
        ),
        "two shard cells",
    )
    .await;
    until(
        &b,
        "return !document.querySelector('#queue tbody tr');",
        "it leaving the queue",
    )
    .await;
    // More history for the charts and the suites table.
    let earlier = queue(base, "checkout-e2e", &["e"], 1).await;
    let waiting = queue(base, "payments-api", &["p1", "p2", "p3"], 3).await;
    screenshot(&b, "dashboard-running").await;
    work(base, &runner, &exec).await;
    work(base, &_other, &exec).await;
    work(base, &runner, &earlier).await;
    work(base, &_other, &earlier).await;
    until(&b, &status_is(&exec.0, "passed"), "passed").await;
    until(
        &b,
        "return [...document.querySelectorAll('#suites td.name')].some(td => td.textContent === 'checkout-e2e');",
        "the suite's figures",
    )
    .await;
    let _ = waiting;
    // Tall enough for every section in one picture.
    b.set_window_size(1440, 1900).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    screenshot(&b, "dashboard").await;
    b.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    screenshot(&b, "dashboard-phone").await;
    alive.abort();
    // The page never scrolled sideways out of a phone's width at the top level.
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(true), "the page fits a phone's width");
}

#[tokio::test]
async fn cancelling_from_the_dashboard_asks_first_then_cancels() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let base = &server.base;
    let b = signed_in(&server).await;
    let exec = queue(base, "nightly", &["x"], 1).await;
    let button = format!(
        "#executions tr[data-key={:?}] button[data-action=cancel]",
        exec.0
    );
    until(
        &b,
        &format!("return !!document.querySelector({button:?});"),
        "the cancel button",
    )
    .await;
    // The first time, the user keeps it; the question named the suite.
    click_and_answer(&b, &button, "confirm-no").await;
    let question = b
        .execute(
            "return document.getElementById('confirm-text').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert!(question.as_str().unwrap().contains("nightly"), "{question}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status: Value = client()
        .get(format!("{base}/executions/{}/status", exec.0))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "queued", "nothing happened without a yes");
    // Then confirms.
    click_and_answer(&b, &button, "confirm-yes").await;
    until(&b, &status_is(&exec.0, "cancelled"), "cancelled").await;
}

#[tokio::test]
async fn a_runner_paused_from_the_dashboard_is_skipped_by_the_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let base = &server.base;
    let first = register(base, "runner-a").await;
    let second = register(base, "runner-b").await;
    let b = signed_in(&server).await;
    let button = format!(
        "#runners tr[data-key={:?}] button[data-action=pause]",
        first.0
    );
    until(
        &b,
        &format!("return !!document.querySelector({button:?});"),
        "the pause button",
    )
    .await;
    click_and_answer(&b, &button, "confirm-yes").await;
    until(
        &b,
        &format!(
            "return document.querySelector('#runners tr[data-key={:?}] .status').textContent === 'paused';",
            first.0
        ),
        "paused",
    )
    .await;
    // Three single-slot shards' worth of work: all of it goes to runner-b.
    let exec = queue(base, "api", &["t1", "t2"], 2).await;
    until(&b, &status_is(&exec.0, "running"), "running").await;
    let status: Value = client()
        .get(format!("{base}/executions/{}/status", exec.0))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["runner_id"], second.0.as_str(), "{status}");
    }
    until(
        &b,
        &format!(
            "return !!document.querySelector('#runners tr[data-key={:?}] button[data-action=resume]:not([hidden])');",
            first.0
        ),
        "the resume button",
    )
    .await;
}

/// A runner that stops heartbeating is named in the banner; the operator
/// removes it from the dashboard, and the banner and its slots go with it.
#[tokio::test]
async fn a_silent_runner_is_named_in_the_banner_until_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    // Health sweeps every second.
    let (server, _) = Server::start_with(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &["--heartbeat-interval", "1"],
    );
    let base = &server.base;
    // A runner that heartbeats hourly: healthy all test long.
    post(
        base,
        "/runners/register",
        ADMIN_TOKEN,
        json!({"name": "steady", "type": "custom", "labels": [],
               "capacity": {"slots": 2, "cpu_millis": 4000, "memory_mb": 8192},
               "heartbeat_interval_seconds": 3600}),
    )
    .await;
    // An agent that said it heartbeats every second, and then never does.
    let ghost = post(
        base,
        "/runners/register",
        ADMIN_TOKEN,
        json!({"name": "ghost-7", "type": "custom", "labels": [],
               "capacity": {"slots": 4, "cpu_millis": 4000, "memory_mb": 8192},
               "heartbeat_interval_seconds": 1}),
    )
    .await;
    let ghost = ghost["id"].as_str().unwrap().to_owned();
    let b = signed_in(&server).await;
    until(
        &b,
        "return document.querySelector('#alerts').textContent.includes('1 runner is unhealthy: ghost-7');",
        "the banner naming the silent runner",
    )
    .await;
    // Only the live runner's slots count as capacity.
    until(
        &b,
        "return document.querySelector('#t-util').textContent === '0/2';",
        "capacity of live runners",
    )
    .await;
    let remove = format!("#runners tr[data-key={ghost:?}] button[data-action=remove]");
    until(
        &b,
        &format!("return !!document.querySelector({remove:?});"),
        "the remove button",
    )
    .await;
    click_and_answer(&b, &remove, "confirm-yes").await;
    until(
        &b,
        &format!(
            "return !document.querySelector('#runners tr[data-key={ghost:?}]') \
             && !document.querySelector('#alerts').textContent.includes('unhealthy');"
        ),
        "the runner and the banner gone",
    )
    .await;
}

#[tokio::test]
async fn a_suite_named_like_markup_is_shown_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let base = &server.base;
    let b = signed_in(&server).await;
    let hostile = "<img src=x onerror=alert(1)>";
    let exec = queue(base, hostile, &["t"], 1).await;
    until(&b, &status_is(&exec.0, "queued"), "the row").await;
    let shown = b
        .execute(
            &format!(
                "return document.querySelector('#executions tr[data-key={:?}] .suite').textContent;",
                exec.0
            ),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shown, json!(hostile));
    let images = b
        .execute(
            "return document.querySelectorAll('main img').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(images, json!(0), "no element was made of the name");
    let queue_cell = b
        .execute(
            "return document.querySelector('#queue td.name').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(queue_cell, json!(hostile));
}

#[tokio::test]
async fn a_firing_alert_is_shown_on_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        // The health sweep, which evaluates alerts, runs every interval.
        &["--sweep-interval", "1", "--heartbeat-interval", "1"],
    );
    let base = &server.base;
    post(
        base,
        "/alert-rules",
        ADMIN_TOKEN,
        json!({"name": "work is waiting", "metric": "queue_depth", "threshold": 0}),
    )
    .await;
    let b = signed_in(&server).await;
    // No runner: the shard waits, the health sweep fires the rule.
    queue(base, "nightly", &["x"], 1).await;
    until(
        &b,
        "return document.getElementById('alerts').textContent.includes('work is waiting');",
        "the alert on the page",
    )
    .await;
    screenshot(&b, "dashboard-alert").await;
}

#[tokio::test]
async fn a_refresh_updates_rows_in_place_and_keeps_the_scroll_position() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let base = &server.base;
    for i in 0..30 {
        queue(base, &format!("suite-{i:02}"), &["t"], 1).await;
    }
    let b = signed_in(&server).await;
    b.set_window_size(1000, 600).await.unwrap();
    until(
        &b,
        "return document.querySelectorAll('#executions tbody tr').length === 30;",
        "thirty rows",
    )
    .await;
    // Mark a row's element and scroll down, then wait for two refreshes.
    b.execute(
        "const row = document.querySelector('#executions tbody tr:last-child');
         row.dataset.marked = 'yes';
         window.scrollTo(0, 900);
         window.__before = document.getElementById('updated').textContent;",
        vec![],
    )
    .await
    .unwrap();
    until(
        &b,
        "return document.getElementById('updated').textContent !== window.__before;",
        "a refresh",
    )
    .await;
    let kept = b
        .execute(
            "return [!!document.querySelector('#executions tr[data-marked=yes]'), Math.round(window.scrollY)];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!([true, 900]), "same row elements, same scroll");
}

#[tokio::test]
async fn retrying_a_failed_execution_from_the_dashboard_queues_its_failed_shard_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let base = &server.base;
    let runner = register(base, "r").await;
    let exec = queue(base, "flaky-suite", &["t"], 1).await;
    // The scheduler assigns it right after the queue call.
    let deadline = Instant::now() + PATIENCE;
    let a = loop {
        let beat = post(
            base,
            &format!("/runners/{}/heartbeat", runner.0),
            &runner.1,
            json!({}),
        )
        .await;
        if let Some(a) = beat["assignments"].get(0) {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "never assigned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    post(
        base,
        &format!("/webhooks/parallel-execution/{}", exec.0),
        &exec.1,
        json!({"shard_index": a["shard_index"], "lease_id": a["lease_id"], "status": "failed",
               "results": {"passed": 0, "failed": 1, "skipped": 0}}),
    )
    .await;
    let b = signed_in(&server).await;
    until(&b, &status_is(&exec.0, "failed"), "failed").await;
    let button = format!(
        "#executions tr[data-key={:?}] button[data-action=retry]",
        exec.0
    );
    click_and_answer(&b, &button, "confirm-yes").await;
    until(
        &b,
        &format!(
            "const row = document.querySelector('#executions tr[data-key={:?}]');
             return ['queued', 'running'].includes(row.querySelector('.status').dataset.status);",
            exec.0
        ),
        "queued or running again",
    )
    .await;
}
