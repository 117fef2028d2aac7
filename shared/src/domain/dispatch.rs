//! Push mode: how TMS starts a shard on a runner's CI platform instead of
//! waiting for the runner to ask. A runner registered with a
//! [`DispatchTarget`] is a pool of CI jobs (a GitHub workflow, a GitLab
//! pipeline, a Jenkins job, an Azure pipeline, or anything behind a
//! webhook); every shard assigned to it is dispatched as one job.
//!
//! Credentials are never stored here, only the *name* of a secret
//! ([`SecretName`]), which resolves inside a namespace kept for dispatch
//! credentials only: the environment variable `TMS_SECRET_<NAME>` in `tms
//! serve`, the Secrets Manager secret `tms/<stage>/dispatch/<NAME>` on AWS.
//! No name reaches the admin token or any other setting of the server.
//!
//! A credential travels only to a platform's own public host or to a host
//! the operator allowed ([`AllowedHosts`]); whoever registers a runner
//! cannot point one elsewhere.

use super::runner::RunnerType;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// The environment variables `tms serve` resolves secret names in: name
/// `N` is the variable `TMS_SECRET_N`.
pub const SECRET_ENV_PREFIX: &str = "TMS_SECRET_";

/// The name of a credential, resolved when a dispatch is sent. Letters,
/// digits and `_` so it is a valid environment variable name and a valid
/// Secrets Manager name suffix alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
pub struct SecretName(String);

impl SecretName {
    pub fn parse(name: &str) -> Result<SecretName> {
        let mut chars = name.chars();
        let valid = name.len() <= 128
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            Ok(SecretName(name.to_owned()))
        } else {
            Err(Error::validation(
                "secret",
                format!("secret name {name:?} must be letters, digits and _ (an environment variable name)"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Refuses, at registration, a name written as if it were a variable of
    /// the server (`TMS_ADMIN_TOKEN`, `TMS_SECRET_X`): names are resolved
    /// inside the secrets namespace, so such a name would never mean what
    /// its author thought. Stored names are not checked again (a name read
    /// back always parses), and resolve inside the namespace regardless.
    pub fn check_namespace(&self, field: &str) -> Result<()> {
        if self.0.len() >= 4 && self.0[..4].eq_ignore_ascii_case("TMS_") {
            return Err(Error::validation(
                field,
                format!(
                    "secret {:?} names a TMS setting; a secret name is resolved as the \
                     environment variable {SECRET_ENV_PREFIX}<NAME> (tms serve) or the \
                     secret tms/<stage>/dispatch/<NAME> (AWS): give only <NAME>",
                    self.0
                ),
            ));
        }
        Ok(())
    }
}

impl TryFrom<String> for SecretName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        SecretName::parse(&value)
    }
}

impl From<SecretName> for String {
    fn from(value: SecretName) -> String {
        value.0
    }
}

impl std::fmt::Display for SecretName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a shard of this runner is started, per platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "platform", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DispatchTarget {
    /// A `workflow_dispatch` event on a workflow (REST: "Create a workflow
    /// dispatch event"); the workflow declares the `tms_*` inputs.
    #[serde(rename_all = "snake_case")]
    GithubActions {
        owner: String,
        repo: String,
        /// The workflow's file name (`tests.yml`) or numeric id.
        workflow: String,
        /// Branch or tag the workflow runs on.
        #[serde(rename = "ref")]
        git_ref: String,
        /// A token with `actions: write` on the repository.
        token_secret: SecretName,
        /// `https://api.github.com`, or a GitHub Enterprise Server's `/api/v3`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        api_url: Option<String>,
    },
    /// A pipeline trigger (`POST /projects/:id/trigger/pipeline`) with
    /// `TMS_*` CI/CD variables.
    #[serde(rename_all = "snake_case")]
    Gitlab {
        /// Numeric id or `group/project` path.
        project: String,
        #[serde(rename = "ref")]
        git_ref: String,
        /// A pipeline trigger token.
        trigger_token_secret: SecretName,
        /// `https://gitlab.com`, or a self-managed instance.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_url: Option<String>,
    },
    /// `buildWithParameters` on a parameterized job, with an API token; a
    /// CSRF crumb is fetched only when Jenkins asks for one.
    #[serde(rename_all = "snake_case")]
    Jenkins {
        /// The job's URL, e.g. `https://ci.example.com/job/tests`.
        job_url: String,
        user: String,
        api_token_secret: SecretName,
    },
    /// A pipeline run (`POST …/_apis/pipelines/{id}/runs`) with `tms_*`
    /// template parameters.
    #[serde(rename_all = "snake_case")]
    AzureDevops {
        organization: String,
        project: String,
        pipeline_id: u32,
        /// Branch to run, e.g. `refs/heads/main`; the pipeline's default otherwise.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        git_ref: Option<String>,
        /// A personal access token with Build (read & execute).
        pat_secret: SecretName,
        /// `https://dev.azure.com`, or an Azure DevOps Server collection URL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_url: Option<String>,
    },
    /// A JSON POST to any URL, signed with HMAC-SHA256 of the body.
    #[serde(rename_all = "snake_case")]
    Webhook {
        url: String,
        /// The shared key of the signature.
        signing_secret: SecretName,
    },
}

impl DispatchTarget {
    /// The platform's name, as in the `platform` field.
    pub fn platform(&self) -> &'static str {
        match self {
            DispatchTarget::GithubActions { .. } => "github-actions",
            DispatchTarget::Gitlab { .. } => "gitlab",
            DispatchTarget::Jenkins { .. } => "jenkins",
            DispatchTarget::AzureDevops { .. } => "azure-devops",
            DispatchTarget::Webhook { .. } => "webhook",
        }
    }

    /// The secret the dispatch needs.
    pub fn secret(&self) -> &SecretName {
        match self {
            DispatchTarget::GithubActions { token_secret, .. } => token_secret,
            DispatchTarget::Gitlab {
                trigger_token_secret,
                ..
            } => trigger_token_secret,
            DispatchTarget::Jenkins {
                api_token_secret, ..
            } => api_token_secret,
            DispatchTarget::AzureDevops { pat_secret, .. } => pat_secret,
            DispatchTarget::Webhook { signing_secret, .. } => signing_secret,
        }
    }

    /// Checks the settings once, at registration, so a dispatch never fails
    /// on something the user could have been told then.
    pub fn validate(&self, runner_type: RunnerType, allowed: &AllowedHosts) -> Result<()> {
        self.validate_fields(runner_type)?;
        self.secret().check_namespace(self.secret_field())?;
        self.check_hosts(allowed)
    }

    /// The field that names the secret, as users write it.
    fn secret_field(&self) -> &'static str {
        match self {
            DispatchTarget::GithubActions { .. } => "dispatch.token_secret",
            DispatchTarget::Gitlab { .. } => "dispatch.trigger_token_secret",
            DispatchTarget::Jenkins { .. } => "dispatch.api_token_secret",
            DispatchTarget::AzureDevops { .. } => "dispatch.pat_secret",
            DispatchTarget::Webhook { .. } => "dispatch.signing_secret",
        }
    }

    /// The URL the credential goes to (with its field), and the platform's
    /// own public host, which needs no allowing.
    fn endpoint(&self) -> (&'static str, Option<&str>, Option<&'static str>) {
        match self {
            DispatchTarget::GithubActions { api_url, .. } => {
                ("dispatch.api_url", api_url.as_deref(), Some(GITHUB_API))
            }
            DispatchTarget::Gitlab { base_url, .. } => {
                ("dispatch.base_url", base_url.as_deref(), Some(GITLAB))
            }
            DispatchTarget::AzureDevops { base_url, .. } => {
                ("dispatch.base_url", base_url.as_deref(), Some(AZURE_DEVOPS))
            }
            DispatchTarget::Jenkins { job_url, .. } => ("dispatch.job_url", Some(job_url), None),
            DispatchTarget::Webhook { url, .. } => ("dispatch.url", Some(url), None),
        }
    }

    /// Refuses a target whose credential would go to a host that is neither
    /// the platform's own nor allowed by the operator. Checked at
    /// registration and again before every dispatch (the allowed hosts may
    /// have changed since).
    pub fn check_hosts(&self, allowed: &AllowedHosts) -> Result<()> {
        let (field, url, public) = self.endpoint();
        let Some(url) = url else {
            // The platform's public API, the default.
            return Ok(());
        };
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::validation(field, format!("not a URL: {e}")))?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if public == Some(host.as_str()) && parsed.scheme() == "https" {
            return Ok(());
        }
        if allowed.allows(&parsed) {
            return Ok(());
        }
        let named = match parsed.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        Err(Error::validation(
            field,
            format!(
                "TMS sends credentials only to a platform's own host or to hosts its \
                 operator allowed, and {named} is not one; an operator allows it with \
                 `tms serve --dispatch-allow-host {named}` (on AWS: the template's \
                 DispatchAllowedHosts parameter)"
            ),
        ))
    }

    fn validate_fields(&self, runner_type: RunnerType) -> Result<()> {
        let fits = match self {
            DispatchTarget::Webhook { .. } => true,
            DispatchTarget::GithubActions { .. } => runner_type == RunnerType::GithubActions,
            DispatchTarget::Gitlab { .. } => runner_type == RunnerType::Gitlab,
            DispatchTarget::Jenkins { .. } => runner_type == RunnerType::Jenkins,
            DispatchTarget::AzureDevops { .. } => runner_type == RunnerType::AzureDevops,
        };
        if !fits {
            return Err(Error::validation(
                "dispatch.platform",
                format!(
                    "{} dispatch needs a runner of that type (or use the webhook platform)",
                    self.platform()
                ),
            ));
        }
        match self {
            DispatchTarget::GithubActions {
                owner,
                repo,
                workflow,
                git_ref,
                api_url,
                ..
            } => {
                path_segment("dispatch.owner", owner)?;
                path_segment("dispatch.repo", repo)?;
                path_segment("dispatch.workflow", workflow)?;
                text("dispatch.ref", git_ref)?;
                api_url
                    .as_deref()
                    .map_or(Ok(()), |u| base_url("dispatch.api_url", u))
            }
            DispatchTarget::Gitlab {
                project,
                git_ref,
                base_url: url,
                ..
            } => {
                text("dispatch.project", project)?;
                text("dispatch.ref", git_ref)?;
                url.as_deref()
                    .map_or(Ok(()), |u| base_url("dispatch.base_url", u))
            }
            DispatchTarget::Jenkins { job_url, user, .. } => {
                text("dispatch.user", user)?;
                base_url("dispatch.job_url", job_url)
            }
            DispatchTarget::AzureDevops {
                organization,
                project,
                git_ref,
                base_url: url,
                ..
            } => {
                path_segment("dispatch.organization", organization)?;
                text("dispatch.project", project)?;
                if let Some(r) = git_ref {
                    text("dispatch.ref", r)?;
                }
                url.as_deref()
                    .map_or(Ok(()), |u| base_url("dispatch.base_url", u))
            }
            DispatchTarget::Webhook { url, .. } => base_url("dispatch.url", url),
        }
    }
}

/// GitHub's public REST API host (the default `api_url`).
const GITHUB_API: &str = "api.github.com";
/// GitLab.com (the default `base_url`).
const GITLAB: &str = "gitlab.com";
/// Azure DevOps Services (the default `base_url`).
const AZURE_DEVOPS: &str = "dev.azure.com";

/// The hosts, besides each platform's own public one, that a dispatch may
/// send a credential to: a GitHub Enterprise Server, a self-managed GitLab,
/// Jenkins, an Azure DevOps Server, a webhook receiver. Only the operator
/// names them (`tms serve --dispatch-allow-host`, the template's
/// `DispatchAllowedHosts`). An entry `host` allows every port of that host,
/// `host:port` that port only; hosts compare without case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(BTreeSet<String>);

impl AllowedHosts {
    /// Reads operator entries (`ghe.example.com`, `127.0.0.1:8080`,
    /// `[::1]:9000`); blanks are skipped, anything else that is not a bare
    /// host with an optional port is refused.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<AllowedHosts> {
        let mut hosts = BTreeSet::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            let entry = entry.to_ascii_lowercase();
            let bad = || {
                Error::validation(
                    "dispatch_allow_host",
                    format!("{entry:?} is not a host or host:port (no scheme, no path)"),
                )
            };
            let url = url::Url::parse(&format!("https://{entry}/")).map_err(|_| bad())?;
            let host = url.host_str().ok_or_else(bad)?;
            let canonical = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            // Anything that did not survive as itself (a path, user info, a
            // default port written out) is not what the operator meant.
            if canonical != entry && format!("{host}:443") != entry {
                return Err(bad());
            }
            hosts.insert(entry);
        }
        Ok(AllowedHosts(hosts))
    }

    /// Whether a credential may go to `url`.
    pub fn allows(&self, url: &url::Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else {
            return false;
        };
        let port = url.port_or_known_default();
        self.0.contains(&host) || port.is_some_and(|p| self.0.contains(&format!("{host}:{p}")))
    }

    /// The entries, as the operator gave them (lowercased).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

fn text(field: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(Error::validation(
            field,
            "must be 1 to 256 printable characters",
        ));
    }
    Ok(())
}

/// A value that becomes one path segment of a platform URL.
fn path_segment(field: &str, value: &str) -> Result<()> {
    text(field, value)?;
    if value.contains(['/', '?', '#', '%']) || value == "." || value == ".." {
        return Err(Error::validation(
            field,
            "must not contain '/', '?', '#' or '%'",
        ));
    }
    Ok(())
}

/// Credentials travel to this URL: HTTPS, or plain HTTP only to this
/// machine (a local Jenkins, the tests' recording server).
fn base_url(field: &str, value: &str) -> Result<()> {
    let url =
        url::Url::parse(value).map_err(|e| Error::validation(field, format!("not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let secure = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !secure || url.host().is_none() {
        return Err(Error::validation(
            field,
            "must be an https:// URL (http:// only to localhost)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(Error::validation(
            field,
            "must not carry credentials or a query; name a secret instead",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str) -> DispatchTarget {
        DispatchTarget::Webhook {
            url: url.into(),
            signing_secret: SecretName::parse("HOOK_KEY").unwrap(),
        }
    }

    #[test]
    fn a_target_is_read_from_the_json_users_write() {
        let t: DispatchTarget = serde_json::from_value(serde_json::json!({
            "platform": "github-actions", "owner": "acme", "repo": "shop",
            "workflow": "tests.yml", "ref": "main", "token_secret": "GH_TOKEN"
        }))
        .unwrap();
        assert_eq!(t.platform(), "github-actions");
        assert_eq!(t.secret().as_str(), "GH_TOKEN");
        t.validate(RunnerType::GithubActions, &none()).unwrap();
        assert!(t.validate(RunnerType::Jenkins, &none()).is_err());
    }

    #[test]
    fn unknown_fields_platforms_and_secret_names_are_refused() {
        let bad = [
            serde_json::json!({"platform": "webhook", "url": "https://x.test", "signing_secret": "K", "extra": 1}),
            serde_json::json!({"platform": "circleci", "url": "https://x.test"}),
            serde_json::json!({"platform": "webhook", "url": "https://x.test", "signing_secret": "not a name"}),
        ];
        for b in bad {
            assert!(
                serde_json::from_value::<DispatchTarget>(b.clone()).is_err(),
                "{b}"
            );
        }
    }

    fn none() -> AllowedHosts {
        AllowedHosts::default()
    }

    fn allowing(hosts: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(hosts.iter().copied()).unwrap()
    }

    #[test]
    fn credentials_only_go_to_https_or_this_machine() {
        let allowed = allowing(&["hooks.example.com", "127.0.0.1", "localhost"]);
        webhook("https://hooks.example.com/tms")
            .validate(RunnerType::Custom, &allowed)
            .unwrap();
        webhook("http://127.0.0.1:9000/hook")
            .validate(RunnerType::Docker, &allowed)
            .unwrap();
        webhook("http://localhost/hook")
            .validate(RunnerType::Custom, &allowed)
            .unwrap();
        for bad in [
            "http://hooks.example.com/tms",
            "ftp://127.0.0.1/",
            "https://user:pw@example.com/",
            "https://example.com/?token=1",
            "not a url",
        ] {
            assert!(
                webhook(bad).validate(RunnerType::Custom, &allowed).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn url_segments_cannot_escape_their_place_in_the_path() {
        let t = DispatchTarget::GithubActions {
            owner: "acme".into(),
            repo: "../admin".into(),
            workflow: "t.yml".into(),
            git_ref: "main".into(),
            token_secret: SecretName::parse("T").unwrap(),
            api_url: None,
        };
        assert!(t.validate(RunnerType::GithubActions, &none()).is_err());
    }

    fn github(api_url: Option<&str>, secret: &str) -> DispatchTarget {
        DispatchTarget::GithubActions {
            owner: "o".into(),
            repo: "r".into(),
            workflow: "w.yml".into(),
            git_ref: "main".into(),
            token_secret: SecretName::parse(secret).unwrap(),
            api_url: api_url.map(Into::into),
        }
    }

    #[test]
    fn a_caller_cannot_point_a_credential_at_a_host_the_operator_did_not_allow() {
        let gh = RunnerType::GithubActions;
        // The platforms' own hosts need no allowing.
        github(None, "GH").validate(gh, &none()).unwrap();
        github(Some("https://api.github.com"), "GH")
            .validate(gh, &none())
            .unwrap();
        for url in [
            "http://127.0.0.1:4000",
            "https://attacker.example",
            "https://api.github.com.attacker.example",
        ] {
            let err = github(Some(url), "GH").validate(gh, &none()).unwrap_err();
            assert!(
                err.to_string().contains("--dispatch-allow-host"),
                "{url}: {err}"
            );
        }
        // The public host over plain HTTP is no exception.
        assert!(github(Some("http://api.github.com"), "GH")
            .validate(gh, &none())
            .is_err());
        // A GitHub Enterprise host once allowed; a port-bound entry allows that port only.
        github(Some("https://GHE.corp.example/api/v3"), "GH")
            .validate(gh, &allowing(&["ghe.corp.example"]))
            .unwrap();
        let one_port = allowing(&["127.0.0.1:4000"]);
        github(Some("http://127.0.0.1:4000"), "GH")
            .validate(gh, &one_port)
            .unwrap();
        assert!(github(Some("http://127.0.0.1:4001"), "GH")
            .validate(gh, &one_port)
            .is_err());
        // Jenkins and webhooks have no public host: always an allowed one.
        assert!(webhook("https://hooks.example.com/x")
            .validate(RunnerType::Custom, &none())
            .is_err());
    }

    #[test]
    fn a_secret_named_like_a_server_setting_is_refused() {
        for name in ["TMS_ADMIN_TOKEN", "tms_secret_GH", "TMS_SECRET_GH"] {
            let err = github(None, name)
                .validate(RunnerType::GithubActions, &none())
                .unwrap_err();
            assert!(err.to_string().contains("TMS_SECRET_<NAME>"), "{err}");
        }
        github(None, "GH_TOKEN")
            .validate(RunnerType::GithubActions, &none())
            .unwrap();
    }

    #[test]
    fn allowed_hosts_are_bare_hosts_with_an_optional_port() {
        let hosts = allowing(&[" Jenkins.Corp ", "", "[::1]:9000", "ghe.example:443"]);
        assert_eq!(
            hosts.iter().collect::<Vec<_>>(),
            ["[::1]:9000", "ghe.example:443", "jenkins.corp"]
        );
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(hosts.allows(&url("https://jenkins.corp:8443/job/x")));
        assert!(hosts.allows(&url("https://ghe.example/api/v3")));
        assert!(hosts.allows(&url("http://[::1]:9000/")));
        assert!(!hosts.allows(&url("http://[::1]:9001/")));
        for bad in [
            "https://x.example",
            "x.example/path",
            "user@x.example",
            "a b",
        ] {
            assert!(AllowedHosts::parse([bad]).is_err(), "{bad}");
        }
    }
}
