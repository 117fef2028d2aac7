//! Load-balancing rules: which strategy and which runner pool an execution
//! uses, chosen by suite pattern, labels and priority range.

use super::execution::Execution;
use super::runner::{Runner, RunnerType};
use crate::ids::RuleId;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// How a runner is picked among the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Each candidate in turn, remembered across scheduling passes.
    RoundRobin,
    /// Highest runner priority first; ties go to the least loaded runner.
    Priority,
    /// Best fit: the runner left with the least spare capacity after placement.
    #[default]
    ResourceBased,
}

/// The runners a rule may use.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerPool {
    /// A runner must carry all of these labels.
    #[serde(default)]
    pub labels: BTreeSet<String>,
    /// Empty means any type.
    #[serde(default)]
    pub types: Vec<RunnerType>,
}

impl RunnerPool {
    pub fn admits(&self, runner: &Runner) -> bool {
        runner.labels.is_superset(&self.labels)
            && (self.types.is_empty() || self.types.contains(&runner.runner_type))
    }
}

/// Rules hold nothing secret, so the API shows them as they are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LoadBalancingRule {
    #[schema(value_type = String)]
    pub id: RuleId,
    pub name: String,
    /// Glob on the suite name: `*` any run of characters, `?` one character.
    pub suite_pattern: String,
    /// The execution must require all of these labels.
    pub labels: BTreeSet<String>,
    pub min_priority: Option<i32>,
    pub max_priority: Option<i32>,
    pub strategy: Strategy,
    pub pool: RunnerPool,
    /// Lower wins when several rules match.
    pub precedence: i32,
    /// Automatic retries of failed tests for the executions this rule
    /// matches, unless an execution sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_retries: Option<super::execution::RetryPolicy>,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub created_at: Timestamp,
}

impl LoadBalancingRule {
    pub fn matches(&self, execution: &Execution) -> bool {
        glob_match(&self.suite_pattern, &execution.suite)
            && execution.requirements.labels.is_superset(&self.labels)
            && self
                .min_priority
                .is_none_or(|min| execution.priority >= min)
            && self
                .max_priority
                .is_none_or(|max| execution.priority <= max)
    }

    /// The key of this rule's round-robin cursor.
    pub fn pool_key(&self) -> String {
        format!("rule:{}", self.id)
    }
}

/// The first matching rule by precedence, then age.
pub fn select_rule<'a>(
    rules: &'a [LoadBalancingRule],
    execution: &Execution,
) -> Option<&'a LoadBalancingRule> {
    rules
        .iter()
        .filter(|r| r.matches(execution))
        .min_by(|a, b| (a.precedence, &a.id).cmp(&(b.precedence, &b.id)))
}

/// Wildcard match with `*` and `?`, linear time with single backtracking point.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn globs_match_like_shell_wildcards() {
        assert!(glob_match("*", ""));
        assert!(glob_match("api-*", "api-integration"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*e2e*", "web-e2e-chrome"));
        assert!(!glob_match("api-*", "web-api"));
    }

    proptest! {
        #[test]
        fn a_pattern_without_wildcards_matches_only_itself(a in "[a-z]{0,8}", b in "[a-z]{0,8}") {
            prop_assert_eq!(glob_match(&a, &b), a == b);
        }

        #[test]
        fn star_around_any_text_matches_every_string_containing_it(mid in "[a-z]{0,4}", pre in "[a-z]{0,4}", post in "[a-z]{0,4}") {
            let pattern = format!("*{mid}*");
            let text = format!("{pre}{mid}{post}");
            prop_assert!(glob_match(&pattern, &text));
        }
    }
}
