//! Push mode: how TMS starts a shard on a runner's CI platform instead of
//! waiting for the runner to ask. A runner registered with a
//! [`DispatchTarget`] is a pool of CI jobs (a GitHub workflow, a GitLab
//! pipeline, a Jenkins job, an Azure pipeline, or anything behind a
//! webhook); every shard assigned to it is dispatched as one job.
//!
//! Credentials are never stored here, only the *name* of a secret
//! ([`SecretName`]): an environment variable in `tms serve`, a Secrets
//! Manager secret under the stage's prefix on AWS.

use super::runner::RunnerType;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
    pub fn validate(&self, runner_type: RunnerType) -> Result<()> {
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
        t.validate(RunnerType::GithubActions).unwrap();
        assert!(t.validate(RunnerType::Jenkins).is_err());
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

    #[test]
    fn credentials_only_go_to_https_or_this_machine() {
        webhook("https://hooks.example.com/tms")
            .validate(RunnerType::Custom)
            .unwrap();
        webhook("http://127.0.0.1:9000/hook")
            .validate(RunnerType::Docker)
            .unwrap();
        webhook("http://localhost/hook")
            .validate(RunnerType::Custom)
            .unwrap();
        for bad in [
            "http://hooks.example.com/tms",
            "ftp://127.0.0.1/",
            "https://user:pw@example.com/",
            "https://example.com/?token=1",
            "not a url",
        ] {
            assert!(webhook(bad).validate(RunnerType::Custom).is_err(), "{bad}");
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
        assert!(t.validate(RunnerType::GithubActions).is_err());
    }
}
