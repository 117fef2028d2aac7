//! Load-balancing rules.

use super::runners::{validate_labels, validate_runner_types};
use super::Orchestrator;
use crate::domain::{LoadBalancingRule, RunnerPool, Strategy};
use crate::error::{Entity, Error, Result};
use crate::ids::RuleId;
use crate::ports::{Ports, Store};
use crate::time::Clock;
use serde::Deserialize;
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// Body of `POST /load-balancing-rules`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    /// Glob on the suite name (`*`, `?`); default `*`.
    #[serde(default = "any_suite")]
    #[schema(min_length = 1, max_length = 256)]
    pub suite_pattern: String,
    #[serde(default)]
    pub labels: BTreeSet<String>,
    pub min_priority: Option<i32>,
    pub max_priority: Option<i32>,
    pub strategy: Strategy,
    #[serde(default)]
    pub pool: RunnerPool,
    #[serde(default)]
    pub precedence: i32,
    /// Automatic retries of failed tests for matching executions that do
    /// not set their own `retries`.
    pub test_retries: Option<crate::domain::RetryPolicy>,
}

fn any_suite() -> String {
    "*".into()
}

impl<P: Ports> Orchestrator<P> {
    pub async fn create_rule(&self, new: NewRule) -> Result<LoadBalancingRule> {
        if let Some(r) = &new.test_retries {
            r.validate("test_retries")?;
        }
        let name = new.name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(Error::validation("name", "must be 1 to 128 characters"));
        }
        if new.suite_pattern.is_empty() || new.suite_pattern.len() > 256 {
            return Err(Error::validation(
                "suite_pattern",
                "must be 1 to 256 characters",
            ));
        }
        validate_labels(&new.labels, "labels")?;
        validate_labels(&new.pool.labels, "pool.labels")?;
        validate_runner_types(&new.pool.types, "pool.types")?;
        if let (Some(min), Some(max)) = (new.min_priority, new.max_priority) {
            if min > max {
                return Err(Error::validation(
                    "min_priority",
                    "must not be above max_priority",
                ));
            }
        }
        let rule = LoadBalancingRule {
            id: RuleId::generate(),
            name: name.to_owned(),
            suite_pattern: new.suite_pattern,
            labels: new.labels,
            min_priority: new.min_priority,
            max_priority: new.max_priority,
            strategy: new.strategy,
            pool: new.pool,
            precedence: new.precedence,
            test_retries: new.test_retries,
            created_at: self.clock.now(),
        };
        self.store.put_rule(&rule).await?;
        Ok(rule)
    }

    pub async fn list_rules(&self) -> Result<Vec<LoadBalancingRule>> {
        self.store.list_rules().await
    }

    pub async fn delete_rule(&self, id: &RuleId) -> Result<()> {
        if self.store.delete_rule(id).await? {
            Ok(())
        } else {
            Err(Error::not_found(Entity::Rule, id))
        }
    }
}
