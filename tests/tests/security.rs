//! What a hostile caller can reach through `tms serve`: a `ci` token must
//! not turn a push-mode runner's dispatch into a way to read the server's
//! secrets (its admin token, cloud credentials, any other variable), and no
//! caller may send a credential to a host the operator did not allow. Pages
//! of other origins reach the API only when the operator names them.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tms_tests::recorder::{Answer, Recorder};
use tms_tests::{client, eventually, Server, ADMIN_TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_tms-under-test");

async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn github_runner(secret: &str, api_url: &str) -> Value {
    json!({"name": "gh", "type": "github-actions", "labels": ["push"],
        "capacity": {"slots": 1, "cpu_millis": 8000, "memory_mb": 8192},
        "dispatch": {"platform": "github-actions", "owner": "o", "repo": "r", "workflow": "w.yml",
            "ref": "main", "token_secret": secret, "api_url": api_url}})
}

/// `tms serve` with `args` on a data directory of its own (kept while the
/// returned guard lives).
fn serve(args: &[&str]) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with(BIN, dir.path(), Some(ADMIN_TOKEN), args);
    (dir, server)
}

async fn ci_token(base: &str) -> String {
    let (status, v) = call(
        base,
        Method::POST,
        "/tokens",
        ADMIN_TOKEN,
        Some(json!({"name": "pipeline", "scope": "ci"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// The escalation as it was reported: a ci token registers a GitHub
/// dispatch target naming `TMS_ADMIN_TOKEN` as its secret and its own
/// listener as the API, then queues matching work.
#[tokio::test]
async fn a_ci_token_cannot_make_dispatch_send_a_server_secret_to_its_own_host() {
    let listener = Recorder::start(Answer::status(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with_env(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &[],
        &[("AWS_SECRET_ACCESS_KEY", "aws-secret-value")],
    );
    let base = server.base.clone();
    let ci = ci_token(&base).await;

    // A ci token registers no push-mode runner at all...
    let (status, v) = call(
        &base,
        Method::POST,
        "/runners/register",
        &ci,
        Some(github_runner("TMS_ADMIN_TOKEN", &listener.url)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("admin token"), "{v}");
    // ...but still registers pull runners.
    let (status, v) = call(
        &base,
        Method::POST,
        "/runners/register",
        &ci,
        Some(json!({"name": "puller", "type": "custom",
            "capacity": {"slots": 1, "cpu_millis": 1000, "memory_mb": 1024}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");

    // Even an admin cannot name a server setting as the secret...
    let (status, v) = call(
        &base,
        Method::POST,
        "/runners/register",
        ADMIN_TOKEN,
        Some(github_runner("TMS_ADMIN_TOKEN", "https://api.github.com")),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("TMS_SECRET_<NAME>"),
        "{v}"
    );
    // ...nor point a credential at a host this server's operator did not allow.
    let (status, v) = call(
        &base,
        Method::POST,
        "/runners/register",
        ADMIN_TOKEN,
        Some(github_runner("GH_TOKEN", &listener.url)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("--dispatch-allow-host 127.0.0.1:"),
        "{v}"
    );

    assert!(listener.requests().is_empty(), "nothing was sent anywhere");
}

/// With the listener's host allowed, a secret name still resolves only
/// inside `TMS_SECRET_*`: `ADMIN_TOKEN` is `TMS_SECRET_ADMIN_TOKEN` (unset),
/// never `TMS_ADMIN_TOKEN`, and `AWS_SECRET_ACCESS_KEY` is
/// `TMS_SECRET_AWS_SECRET_ACCESS_KEY`; a dispatch that names one is refused
/// without a request. A secret inside the namespace is sent as it should be.
#[tokio::test]
async fn a_secret_name_resolves_only_inside_the_secrets_namespace() {
    let listener = Recorder::start(Answer::status(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start_with_env(
        BIN,
        dir.path(),
        Some(ADMIN_TOKEN),
        &["--dispatch-allow-host", "127.0.0.1"],
        &[
            ("AWS_SECRET_ACCESS_KEY", "aws-secret-value"),
            ("ADMIN_TOKEN", "plain-variable"),
            ("TMS_SECRET_GH_TOKEN", "ghp_dispatch"),
        ],
    );
    let base = server.base.clone();
    for secret in ["ADMIN_TOKEN", "AWS_SECRET_ACCESS_KEY"] {
        let (status, runner) = call(
            &base,
            Method::POST,
            "/runners/register",
            ADMIN_TOKEN,
            Some(github_runner(secret, &listener.url)),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{runner}");
        let id = runner["id"].as_str().unwrap().to_owned();
        let (status, v) = call(
            &base,
            Method::POST,
            "/executions/queue",
            ADMIN_TOKEN,
            Some(json!({"suite": "s", "tests": ["a"], "requirements": {"labels": ["push"]}})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let runner = eventually("the dispatch refusal", || {
            let (base, id) = (base.clone(), id.clone());
            async move {
                let (_, r) = call(
                    &base,
                    Method::GET,
                    &format!("/runners/{id}"),
                    ADMIN_TOKEN,
                    None,
                )
                .await;
                (r["status"] == "paused").then_some(r)
            }
        })
        .await;
        let reason = runner["status_reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&format!("secret {secret} is not set")),
            "{runner}"
        );
        // The runner's view names the secret, never a value.
        assert_eq!(runner["dispatch"]["token_secret"], secret);
        let (_, v) = call(
            &base,
            Method::POST,
            &format!("/runners/{id}/deregister"),
            ADMIN_TOKEN,
            None,
        )
        .await;
        assert_eq!(v["status"], "deregistered", "{v}");
    }
    assert!(
        listener.requests().is_empty(),
        "no request carried any value"
    );

    let (status, runner) = call(
        &base,
        Method::POST,
        "/runners/register",
        ADMIN_TOKEN,
        Some(github_runner("GH_TOKEN", &listener.url)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{runner}");
    let sent = eventually("the dispatch", || async {
        listener.requests().into_iter().next()
    })
    .await;
    assert_eq!(sent.header("authorization"), Some("Bearer ghp_dispatch"));
    for leaked in [ADMIN_TOKEN, "aws-secret-value", "plain-variable"] {
        assert!(
            !format!("{sent:?}").contains(leaked),
            "{leaked} left the server"
        );
    }
}

/// A preflight from `origin` for an authenticated GET of the executions.
async fn preflight(base: &str, origin: &str) -> reqwest::Response {
    client()
        .request(Method::OPTIONS, format!("{base}/executions"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap()
}

fn allowed_origin(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Without `--cors-origin` no page of another origin may call the API (the
/// dashboard is same-origin); with it, exactly the named origins may.
#[tokio::test]
async fn cross_origin_calls_are_allowed_only_from_the_origins_the_operator_names() {
    let dir = tempfile::tempdir().unwrap();
    let closed = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let answer = preflight(&closed.base, "https://evil.example").await;
    assert_eq!(allowed_origin(&answer), None);
    drop(closed);

    let (_dir, open) = serve(&["--cors-origin", "https://ci.example.com"]);
    let answer = preflight(&open.base, "https://ci.example.com").await;
    assert!(answer.status().is_success(), "{}", answer.status());
    assert_eq!(
        allowed_origin(&answer).as_deref(),
        Some("https://ci.example.com")
    );
    let headers = answer.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    for other in [
        "https://evil.example",
        "https://ci.example.com.evil.example",
        "null",
    ] {
        assert_eq!(
            allowed_origin(&preflight(&open.base, other).await),
            None,
            "{other}"
        );
    }
    let real = client()
        .get(format!("{}/executions", open.base))
        .header("origin", "https://ci.example.com")
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(real.status(), StatusCode::OK);
    assert_eq!(
        allowed_origin(&real).as_deref(),
        Some("https://ci.example.com")
    );
}

#[tokio::test]
async fn a_wildcard_or_malformed_cors_origin_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--cors-origin", "*"])
        .env("TMS_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cors-origin"), "{err}");
}

/// Holds a connection open the slowloris way: a request line, then one
/// header byte every 200 ms. Returns once the server closes it (or after
/// `give_up`, with `false`).
async fn trickle(addr: std::net::SocketAddr, give_up: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let deadline = tokio::time::Instant::now() + give_up;
    let _ = stream
        .write_all(b"GET /api/enhanced-orchestration/system/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                // Anything the server says before closing (a 408) is fine.
                Ok(_) => {}
            },
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                if stream.write_all(b"a").await.is_err() {
                    return true;
                }
            }
            () = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// 100 connections trickling their headers, and one that sends nothing,
/// are all closed once the header-read timeout passes, while a normal
/// request beside them is answered.
#[tokio::test]
async fn slow_and_idle_connections_are_closed_after_the_header_read_timeout() {
    let (_dir, server) = serve(&["--header-read-timeout", "1"]);
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let give_up = std::time::Duration::from_secs(15);
    let slow: Vec<_> = (0..100)
        .map(|_| tokio::spawn(trickle(addr, give_up)))
        .collect();
    let idle = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        tokio::time::timeout(give_up, stream.read(&mut buf))
            .await
            .is_ok()
    });
    let (status, health) = call(
        &server.base,
        Method::GET,
        "/system/health",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{health}");
    for connection in slow {
        assert!(connection.await.unwrap(), "a slow connection stayed open");
    }
    assert!(idle.await.unwrap(), "an idle connection stayed open");
    // The server still serves after shedding them.
    let (status, _) = call(
        &server.base,
        Method::GET,
        "/system/health",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn get_health(base: &str, token: &str) -> reqwest::Response {
    client()
        .get(format!("{base}/resources/utilization"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Guessing tokens: a client address that used up its failed
/// authentications is answered 429 with Retry-After for every request,
/// the right token included (else a right guess would stand out).
#[tokio::test]
async fn an_address_that_keeps_failing_authentication_is_told_to_wait() {
    let (_dir, server) = serve(&["--auth-failure-limit", "5"]);
    for i in 0..5 {
        let answer = get_health(&server.base, &format!("tms_guess{i}")).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    for token in ["tms_guess5", ADMIN_TOKEN] {
        let answer = get_health(&server.base, token).await;
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS, "{token}");
        assert!(retry_after(&answer) >= 1);
        assert!(answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"));
        let problem: Value = answer.json().await.unwrap();
        assert_eq!(problem["code"], "rate_limited", "{problem}");
    }
}

/// One token's requests past its rate are refused with 429; another
/// token is not held back by it.
#[tokio::test]
async fn a_token_past_its_request_rate_gets_429_and_other_tokens_do_not() {
    let (_dir, server) = serve(&["--token-rate-limit", "2"]);
    let ci = ci_token(&server.base).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get_health(&server.base, ADMIN_TOKEN).await.status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(statuses[0], StatusCode::OK);
    let answer = get_health(&server.base, &ci).await;
    assert_eq!(answer.status(), StatusCode::OK);
}

/// Starts a POST that declares `length` body bytes and sends only a few,
/// so the request holds its place in the server until the stream drops.
async fn hold_a_request(addr: std::net::SocketAddr, length: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/enhanced-orchestration/executions/queue HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n{{\"suite\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

fn addr_of(server: &Server) -> std::net::SocketAddr {
    server.url.trim_start_matches("http://").parse().unwrap()
}

/// With every request slot taken, or every byte of the body budget held
/// by bodies still arriving, a new request is answered 503 with
/// Retry-After at once (its body unread); once they finish, it is served.
#[tokio::test]
async fn a_server_at_its_in_flight_limits_sheds_new_requests_with_503() {
    let (_dir, server) = serve(&["--max-in-flight", "2"]);
    let (held, answer) = shed_while_held(
        || futures::future::join_all((0..2).map(|_| hold_a_request(addr_of(&server), 100))),
        || get_health(&server.base, ADMIN_TOKEN),
    )
    .await;
    assert_eq!(retry_after(&answer), 1);
    let problem: Value = answer.json().await.unwrap();
    assert_eq!(problem["code"], "overloaded", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("requests in flight"),
        "{problem}"
    );
    drop(held);
    eventually("the slots to be given back", || async {
        (get_health(&server.base, ADMIN_TOKEN).await.status() == StatusCode::OK).then_some(())
    })
    .await;

    // The body budget (at least one largest body: 8 MB) held by one
    // 8 MB upload still arriving: any other body, even of two bytes, waits
    // its turn.
    let (_dir, server) = serve(&["--body-budget-mb", "8"]);
    let small = || async {
        client()
            .post(format!("{}/executions/queue", server.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap()
    };
    let (big, answer) =
        shed_while_held(|| hold_a_request(addr_of(&server), 8 * 1024 * 1024), small).await;
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("bytes in flight"),
        "{problem}"
    );
    // Requests without a body still go through.
    assert_eq!(
        get_health(&server.base, ADMIN_TOKEN).await.status(),
        StatusCode::OK
    );
    drop(big);
    eventually("the budget to be given back", || async {
        (small().await.status() != StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
}

/// Holds requests open with `hold` and probes with `probe` until a probe
/// is shed (503). A probe that reaches the server before the held requests
/// do takes their room and gets them shed instead; then they are opened
/// again.
async fn shed_while_held<H, HF, P, PF>(hold: H, probe: P) -> (HF::Output, reqwest::Response)
where
    H: Fn() -> HF,
    HF: std::future::Future,
    P: Fn() -> PF,
    PF: std::future::Future<Output = reqwest::Response>,
{
    for _ in 0..50 {
        let held = hold().await;
        for _ in 0..3 {
            let answer = probe().await;
            if answer.status() == StatusCode::SERVICE_UNAVAILABLE {
                return (held, answer);
            }
        }
        drop(held);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no request was shed while others held the server's room");
}

/// Every string a request carries has a bound, refused as the body is
/// parsed with 422 naming the field; nothing is stored.
#[tokio::test]
async fn oversized_fields_are_refused_with_422_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let ci = ci_token(&server.base).await;
    let megabyte = "x".repeat(1024 * 1024);
    let cases = [
        (
            "/executions/queue",
            json!({"suite": "s", "tests": ["a"], "ci": {"url": megabyte}}),
            "ci.url",
        ),
        (
            "/executions/queue",
            json!({"suite": "s", "tests": ["a"], "ci": {"commit": "f".repeat(129)}}),
            "ci.commit",
        ),
        (
            "/executions/queue",
            json!({"suite": "s".repeat(257), "tests": ["a"]}),
            "suite",
        ),
        (
            "/executions/queue",
            json!({"suite": "s", "tests": ["t".repeat(1025)]}),
            "tests[].name",
        ),
        (
            "/executions/queue",
            json!({"suite": "s", "tests": ["a"], "metadata": {"m": "x".repeat(17 * 1024)}}),
            "metadata",
        ),
        (
            "/executions/queue",
            json!({"suite": "s", "tests": ["a"],
                "requirements": {"labels": (0..33).map(|i| format!("l{i}")).collect::<Vec<_>>()}}),
            "requirements.labels",
        ),
        (
            "/executions/queue",
            json!({"suite": "s", "tests": ["a"],
                "requirements": {"runner_types": vec!["docker"; 100_000]}}),
            "requirements.runner_types",
        ),
        (
            "/alert-rules",
            json!({"name": "r", "metric": "failure_rate", "threshold": 0.2, "suite": megabyte}),
            "suite",
        ),
        (
            "/alert-rules",
            json!({"name": "n".repeat(101), "metric": "failure_rate", "threshold": 0.2}),
            "name",
        ),
        (
            "/runners/register",
            json!({"name": "r".repeat(129), "type": "custom",
                "capacity": {"slots": 1, "cpu_millis": 1000, "memory_mb": 1024}}),
            "name",
        ),
        (
            "/load-balancing-rules",
            json!({"name": "r", "suite_pattern": "p".repeat(257), "strategy": "priority"}),
            "suite_pattern",
        ),
    ];
    for (path, body, field) in cases {
        let token = if path == "/executions/queue" || path == "/runners/register" {
            &ci
        } else {
            ADMIN_TOKEN
        };
        let (status, problem) = call(&server.base, Method::POST, path, token, Some(body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {field}: {problem}"
        );
        assert_eq!(problem["code"], "validation_failed", "{problem}");
        assert_eq!(problem["field"], field, "{path}: {problem}");
    }
    let (_, listed) = call(&server.base, Method::GET, "/executions", ADMIN_TOKEN, None).await;
    assert_eq!(listed["items"], json!([]), "{listed}");
}

/// Eight clients at once sending 7 MB bodies (a CI URL of 7 MB): each is
/// refused, by the body budget before it is read or by the field's bound
/// as it is parsed, and the server's peak memory grows by tens of MB, not
/// by the bodies times their parsing.
#[tokio::test]
async fn concurrent_huge_bodies_cost_the_server_tens_of_megabytes_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, dir.path(), Some(ADMIN_TOKEN));
    let (status, _) = call(&server.base, Method::GET, "/executions", ADMIN_TOKEN, None).await;
    assert_eq!(status, StatusCode::OK);
    let before = tms_tests::peak_rss_mb(server.pid());
    assert!(before > 0.0, "/proc reports the server's memory");
    let body = json!({"suite": "s", "tests": ["a"], "ci": {"url": "u".repeat(7 * 1024 * 1024)}})
        .to_string();
    for _round in 0..3 {
        let answers = futures::future::join_all((0..8).map(|_| {
            client()
                .post(format!("{}/executions/queue", server.base))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
        }))
        .await;
        for answer in answers {
            match answer {
                Ok(answer) => {
                    let status = answer.status();
                    assert!(
                        status == StatusCode::UNPROCESSABLE_ENTITY
                            || status == StatusCode::SERVICE_UNAVAILABLE,
                        "{status}"
                    );
                }
                // Refused before its body was read: the server answered 503
                // and closed while this client was still writing.
                Err(e) => assert!(e.is_request(), "{e}"),
            }
        }
    }
    let grown = tms_tests::peak_rss_mb(server.pid()) - before;
    println!("peak RSS grew by {grown:.0} MB (from {before:.0} MB)");
    assert!(grown < 100.0, "peak RSS grew by {grown:.0} MB");
    let (_, listed) = call(&server.base, Method::GET, "/executions", ADMIN_TOKEN, None).await;
    assert_eq!(listed["items"], json!([]));
}
