//! Platform dispatch, pure: which HTTP requests start a shard's job on each
//! CI platform, and what their responses mean. No I/O here — the dispatch
//! use case sends what [`next_step`] asks for through the
//! [`HttpClient`](crate::ports::HttpClient) port and feeds the responses back,
//! so every platform's exchange (Jenkins' crumb included) is a plain
//! function of what happened so far and is tested without a network.
//!
//! Every platform gets the same facts about the job, named per its
//! conventions (`tms_*` workflow inputs and template parameters, `TMS_*`
//! variables and build parameters): the execution, the shard and its lease,
//! where to report (the execution's webhook URL and a token for it), and
//! where to read the shard's tests.

use crate::domain::dispatch::DispatchTarget;
use crate::ids::{ExecutionId, LeaseId};
use crate::time::Timestamp;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::time::Duration;

/// A request to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A response received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the started job is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchJob {
    pub execution_id: ExecutionId,
    pub suite: String,
    pub shard_index: u32,
    pub lease_id: LeaseId,
    pub attempt: u32,
    pub tests: Vec<String>,
    /// `POST` results here (`/webhooks/parallel-execution/{id}`).
    pub webhook_url: String,
    /// `GET` the shard's assignment (its tests) here.
    pub shard_url: String,
    /// Bearer token for both URLs, valid while this lease is current.
    pub webhook_token: String,
}

impl DispatchJob {
    /// The facts every platform passes on, in this order.
    fn fields(&self) -> [(&'static str, String); 6] {
        [
            ("execution_id", self.execution_id.to_string()),
            ("shard_index", self.shard_index.to_string()),
            ("lease_id", self.lease_id.to_string()),
            ("webhook_url", self.webhook_url.clone()),
            ("webhook_token", self.webhook_token.clone()),
            ("shard_url", self.shard_url.clone()),
        ]
    }

    /// `tms_execution_id`, … (GitHub workflow inputs, Azure template parameters).
    fn lower_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        self.fields()
            .into_iter()
            .map(|(k, v)| (format!("tms_{k}"), v.into()))
            .collect()
    }

    /// `TMS_EXECUTION_ID`, … (GitLab variables, Jenkins build parameters).
    fn upper_fields(&self) -> Vec<(String, String)> {
        self.fields()
            .into_iter()
            .map(|(k, v)| (format!("TMS_{}", k.to_ascii_uppercase()), v))
            .collect()
    }
}

/// How one dispatch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The platform accepted the job.
    Dispatched { status: u16 },
    /// The platform is busy or failing (429, 5xx, no answer): try again,
    /// not before `after` when it said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The platform refused the request (bad credentials, no such
    /// workflow…): trying again will not help.
    Rejected { reason: String },
}

/// What to do next in a dispatch exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Send(HttpRequest),
    Done(Verdict),
}

/// The user agent on every request (GitHub requires one).
const USER_AGENT: &str = concat!("tms/", env!("CARGO_PKG_VERSION"));

/// GitHub's REST API version these requests follow.
const GITHUB_API_VERSION: &str = "2022-11-28";

/// The Azure DevOps REST API version these requests follow.
const AZURE_API_VERSION: &str = "7.1";

/// The header carrying a webhook's signature: `sha256=<hex HMAC>` of
/// `<timestamp>.<body>`, keyed with the runner's signing secret.
pub const SIGNATURE_HEADER: &str = "X-TMS-Signature-256";
/// Unix seconds when the webhook was signed (part of what is signed, so a
/// receiver can refuse old replays).
pub const TIMESTAMP_HEADER: &str = "X-TMS-Timestamp";
/// Unique per shard attempt: a receiver can drop duplicates by it.
pub const DELIVERY_HEADER: &str = "X-TMS-Delivery";

/// The next request of the exchange that dispatches `job` to `target`,
/// given the `secret` the target names and the exchanges so far — or the
/// verdict once there is one.
pub fn next_step(
    target: &DispatchTarget,
    job: &DispatchJob,
    secret: &str,
    now: Timestamp,
    exchanges: &[(HttpRequest, HttpResponse)],
) -> Step {
    match target {
        DispatchTarget::Jenkins { job_url, user, .. } => {
            jenkins_step(job_url, user, secret, job, exchanges)
        }
        _ => match exchanges.last() {
            None => Step::Send(first_request(target, job, secret, now)),
            Some((_, response)) => Step::Done(judge(response)),
        },
    }
}

/// The single request of the one-request platforms.
fn first_request(
    target: &DispatchTarget,
    job: &DispatchJob,
    secret: &str,
    now: Timestamp,
) -> HttpRequest {
    match target {
        DispatchTarget::GithubActions {
            owner,
            repo,
            workflow,
            git_ref,
            api_url,
            ..
        } => {
            let api = trim_base(api_url.as_deref().unwrap_or("https://api.github.com"));
            post_json(
                format!("{api}/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches"),
                vec![
                    ("Accept", "application/vnd.github+json".into()),
                    ("Authorization", format!("Bearer {secret}")),
                    ("X-GitHub-Api-Version", GITHUB_API_VERSION.into()),
                ],
                json!({ "ref": git_ref, "inputs": job.lower_fields() }),
            )
        }
        DispatchTarget::Gitlab {
            project,
            git_ref,
            base_url,
            ..
        } => {
            let base = trim_base(base_url.as_deref().unwrap_or("https://gitlab.com"));
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", secret)
                .append_pair("ref", git_ref);
            for (k, v) in job.upper_fields() {
                form.append_pair(&format!("variables[{k}]"), &v);
            }
            HttpRequest {
                method: Method::Post,
                url: format!(
                    "{base}/api/v4/projects/{}/trigger/pipeline",
                    encode_segment(project)
                ),
                headers: headers(vec![(
                    "Content-Type",
                    "application/x-www-form-urlencoded".into(),
                )]),
                body: Some(form.finish()),
            }
        }
        DispatchTarget::AzureDevops {
            organization,
            project,
            pipeline_id,
            git_ref,
            base_url,
            ..
        } => {
            let base = trim_base(base_url.as_deref().unwrap_or("https://dev.azure.com"));
            let mut body = json!({ "templateParameters": job.lower_fields() });
            if let Some(r) = git_ref {
                body["resources"] = json!({ "repositories": { "self": { "refName": r } } });
            }
            post_json(
                format!(
                    "{base}/{organization}/{}/_apis/pipelines/{pipeline_id}/runs?api-version={AZURE_API_VERSION}",
                    encode_segment(project)
                ),
                vec![("Authorization", basic_auth("", secret))],
                body,
            )
        }
        DispatchTarget::Webhook { url, .. } => {
            let body = json!({
                "type": "shard.dispatch",
                "execution_id": job.execution_id,
                "suite": job.suite,
                "shard_index": job.shard_index,
                "lease_id": job.lease_id,
                "attempt": job.attempt,
                "tests": job.tests,
                "webhook_url": job.webhook_url,
                "webhook_token": job.webhook_token,
                "shard_url": job.shard_url,
            })
            .to_string();
            let timestamp = (now.0 / 1000).to_string();
            let signature = sign(secret, &timestamp, &body);
            HttpRequest {
                method: Method::Post,
                url: url.clone(),
                headers: headers(vec![
                    ("Content-Type", "application/json".into()),
                    (SIGNATURE_HEADER, signature),
                    (TIMESTAMP_HEADER, timestamp),
                    (DELIVERY_HEADER, format!("{}-{}", job.lease_id, job.attempt)),
                ]),
                body: Some(body),
            }
        }
        DispatchTarget::Jenkins { .. } => {
            unreachable!("Jenkins exchanges are planned by jenkins_step")
        }
    }
}

/// Jenkins: `buildWithParameters` with the API token. A Jenkins that still
/// wants a CSRF crumb (403 before 2.96 with API tokens, or with a strict
/// crumb issuer) gets one from `crumbIssuer` — with the session cookie the
/// crumb is bound to — and the build request once more.
fn jenkins_step(
    job_url: &str,
    user: &str,
    secret: &str,
    job: &DispatchJob,
    exchanges: &[(HttpRequest, HttpResponse)],
) -> Step {
    let job_url = trim_base(job_url);
    let auth = basic_auth(user, secret);
    let build = |extra: Vec<(&str, String)>| {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in job.upper_fields() {
            form.append_pair(&k, &v);
        }
        let mut h = vec![
            ("Authorization", auth.clone()),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ];
        h.extend(extra);
        HttpRequest {
            method: Method::Post,
            url: format!("{job_url}/buildWithParameters"),
            headers: headers(h),
            body: Some(form.finish()),
        }
    };
    match exchanges {
        [] => Step::Send(build(Vec::new())),
        [(_, first)] if first.status == 403 => Step::Send(HttpRequest {
            method: Method::Get,
            url: format!("{}/crumbIssuer/api/json", jenkins_root(job_url)),
            headers: headers(vec![("Authorization", auth.clone())]),
            body: None,
        }),
        [(_, first), (_, crumb)] if first.status == 403 => {
            if crumb.status == 404 {
                // No crumb issuer: the 403 was about permissions.
                return Step::Done(judge(first));
            }
            if !(200..300).contains(&crumb.status) {
                return Step::Done(judge(crumb));
            }
            let Ok(issued) = serde_json::from_str::<serde_json::Value>(&crumb.body) else {
                return Step::Done(Verdict::Rejected {
                    reason: "Jenkins crumb issuer answered something that is not JSON".into(),
                });
            };
            let (Some(field), Some(value)) = (
                issued["crumbRequestField"].as_str(),
                issued["crumb"].as_str(),
            ) else {
                return Step::Done(Verdict::Rejected {
                    reason: "Jenkins crumb issuer answer lacks crumb or crumbRequestField".into(),
                });
            };
            let mut extra = vec![(field, value.to_owned())];
            let cookies: Vec<&str> = crumb
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
                .filter_map(|(_, v)| v.split(';').next())
                .collect();
            if !cookies.is_empty() {
                extra.push(("Cookie", cookies.join("; ")));
            }
            Step::Send(build(extra))
        }
        [.., (_, last)] => Step::Done(judge(last)),
    }
}

/// Jenkins' root URL: the job URL up to its first `/job/`.
fn jenkins_root(job_url: &str) -> &str {
    job_url.find("/job/").map_or(job_url, |at| &job_url[..at])
}

/// What a platform's final answer means.
pub fn judge(response: &HttpResponse) -> Verdict {
    let status = response.status;
    if (200..300).contains(&status) {
        return Verdict::Dispatched { status };
    }
    let reason = format!("HTTP {status}: {}", snippet(&response.body));
    if status == 429 || status == 408 || status >= 500 {
        let after = response
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Verdict::Retry { after, reason }
    } else {
        Verdict::Rejected { reason }
    }
}

/// The start of a response body, on one line, for logs and reasons.
fn snippet(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line.trim().to_owned()
}

/// `sha256=<hex>`: HMAC-SHA256 over `<timestamp>.<body>`.
pub fn sign(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a signature made by [`sign`], in constant time (for receivers
/// written in Rust, and the tests).
pub fn verify(secret: &str, timestamp: &str, body: &str, signature: &str) -> bool {
    let Some(hex_mac) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(presented) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.verify_slice(&presented).is_ok()
}

fn basic_auth(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn post_json(url: String, extra: Vec<(&str, String)>, body: serde_json::Value) -> HttpRequest {
    let mut h = vec![("Content-Type", "application/json".to_owned())];
    h.extend(extra);
    HttpRequest {
        method: Method::Post,
        url,
        headers: headers(h),
        body: Some(body.to_string()),
    }
}

fn headers(pairs: Vec<(&str, String)>) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> =
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    all.push(("User-Agent".into(), USER_AGENT.into()));
    all
}

fn trim_base(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Percent-encodes a value that fills one path segment (`group/project`
/// becomes `group%2Fproject`, as GitLab expects).
fn encode_segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::dispatch::SecretName;

    fn job() -> DispatchJob {
        DispatchJob {
            execution_id: ExecutionId::generate(),
            suite: "api".into(),
            shard_index: 2,
            lease_id: LeaseId::generate(),
            attempt: 1,
            tests: vec!["t1".into(), "t2".into()],
            webhook_url:
                "https://tms.test/api/enhanced-orchestration/webhooks/parallel-execution/x".into(),
            shard_url: "https://tms.test/s".into(),
            webhook_token: "tms_tok".into(),
        }
    }

    fn response(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![],
            body: body.into(),
        }
    }

    fn jenkins() -> DispatchTarget {
        DispatchTarget::Jenkins {
            job_url: "https://ci.test/jenkins/job/folder/job/tests/".into(),
            user: "bot".into(),
            api_token_secret: SecretName::parse("JENKINS_TOKEN").unwrap(),
        }
    }

    fn header<'a>(r: &'a HttpRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn success_busy_and_refusal_are_told_apart() {
        assert_eq!(
            judge(&response(204, "")),
            Verdict::Dispatched { status: 204 }
        );
        let mut busy = response(429, "slow down");
        busy.headers.push(("Retry-After".into(), "30".into()));
        assert!(matches!(judge(&busy),
            Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(30)));
        assert!(matches!(
            judge(&response(503, "")),
            Verdict::Retry { after: None, .. }
        ));
        assert!(matches!(judge(&response(401, "Bad credentials")),
            Verdict::Rejected { reason } if reason.contains("401") && reason.contains("Bad credentials")));
    }

    #[test]
    fn jenkins_asks_for_a_crumb_only_after_a_403_and_sends_it_with_its_cookie() {
        let j = job();
        let now = Timestamp(0);
        let Step::Send(first) = next_step(&jenkins(), &j, "s3cret", now, &[]) else {
            panic!("first step sends")
        };
        assert_eq!(
            first.url,
            "https://ci.test/jenkins/job/folder/job/tests/buildWithParameters"
        );
        assert!(header(&first, "Jenkins-Crumb").is_none());
        // Accepted straight away: done.
        let ok = [(first.clone(), response(201, ""))];
        assert_eq!(
            next_step(&jenkins(), &j, "s3cret", now, &ok),
            Step::Done(Verdict::Dispatched { status: 201 })
        );
        // Refused: the crumb issuer at Jenkins' root is asked.
        let mut history = vec![(first, response(403, "No valid crumb"))];
        let Step::Send(crumb) = next_step(&jenkins(), &j, "s3cret", now, &history) else {
            panic!("asks for a crumb")
        };
        assert_eq!(crumb.method, Method::Get);
        assert_eq!(crumb.url, "https://ci.test/jenkins/crumbIssuer/api/json");
        let mut issued = response(
            200,
            r#"{"crumb":"abc","crumbRequestField":"Jenkins-Crumb"}"#,
        );
        issued.headers.push((
            "Set-Cookie".into(),
            "JSESSIONID.1=xyz; Path=/; HttpOnly".into(),
        ));
        history.push((crumb, issued));
        let Step::Send(again) = next_step(&jenkins(), &j, "s3cret", now, &history) else {
            panic!("retries with the crumb")
        };
        assert_eq!(header(&again, "Jenkins-Crumb"), Some("abc"));
        assert_eq!(header(&again, "Cookie"), Some("JSESSIONID.1=xyz"));
        history.push((again, response(403, "still no")));
        assert!(matches!(
            next_step(&jenkins(), &j, "s3cret", now, &history),
            Step::Done(Verdict::Rejected { .. })
        ));
    }

    #[test]
    fn a_jenkins_403_without_a_crumb_issuer_is_a_refusal() {
        let j = job();
        let Step::Send(first) = next_step(&jenkins(), &j, "s", Timestamp(0), &[]) else {
            panic!()
        };
        let Step::Send(crumb) = next_step(
            &jenkins(),
            &j,
            "s",
            Timestamp(0),
            &[(first.clone(), response(403, "forbidden"))],
        ) else {
            panic!()
        };
        let history = [
            (first, response(403, "forbidden")),
            (crumb, response(404, "")),
        ];
        assert!(matches!(
            next_step(&jenkins(), &j, "s", Timestamp(0), &history),
            Step::Done(Verdict::Rejected { reason }) if reason.contains("403")
        ));
    }

    #[test]
    fn a_webhook_signature_covers_timestamp_and_body() {
        let sig = sign("key", "1700000000", "{\"a\":1}");
        assert!(verify("key", "1700000000", "{\"a\":1}", &sig));
        assert!(!verify("key", "1700000001", "{\"a\":1}", &sig));
        assert!(!verify("other", "1700000000", "{\"a\":1}", &sig));
        assert!(!verify("key", "1700000000", "{\"a\":2}", &sig));
        assert!(!verify("key", "1700000000", "{\"a\":1}", "sha256=zz"));
    }

    #[test]
    fn a_gitlab_project_path_is_one_encoded_segment() {
        assert_eq!(encode_segment("group/sub project"), "group%2Fsub%20project");
        assert_eq!(encode_segment("42"), "42");
    }
}
