//! The table's definition, read from `template.yaml` itself so that the
//! deployed table, the one `tms serve --backend aws --create-resources`
//! makes and the ones the tests make cannot drift apart.

use crate::error::{Error, Result};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use serde::Deserialize;

/// The SAM template, compiled in.
pub const TEMPLATE: &str = include_str!("../../../../template.yaml");

/// The logical id of the table in the template.
pub const TABLE_RESOURCE: &str = "Table";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Attribute {
    attribute_name: String,
    attribute_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Key {
    attribute_name: String,
    key_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IndexProjection {
    projection_type: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Index {
    index_name: String,
    key_schema: Vec<Key>,
    projection: IndexProjection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ttl {
    attribute_name: String,
    enabled: bool,
}

/// `AWS::DynamoDB::Table` properties, as far as creating the table needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TableSpec {
    attribute_definitions: Vec<Attribute>,
    key_schema: Vec<Key>,
    #[serde(default)]
    global_secondary_indexes: Vec<Index>,
    time_to_live_specification: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Resource {
    #[serde(rename = "Type")]
    kind: String,
    properties: serde_yaml_ng::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Template {
    resources: std::collections::BTreeMap<String, Resource>,
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::Internal(format!("template.yaml: {what}"))
}

impl TableSpec {
    /// The table of the compiled-in template.
    pub fn from_template() -> Result<TableSpec> {
        Self::parse(TEMPLATE, TABLE_RESOURCE)
    }

    /// Reads the `AWS::DynamoDB::Table` resource `logical_id` of a template.
    pub fn parse(template: &str, logical_id: &str) -> Result<TableSpec> {
        let template: Template = serde_yaml_ng::from_str(template).map_err(invalid)?;
        let resource = template
            .resources
            .get(logical_id)
            .ok_or_else(|| invalid(format!("no resource {logical_id}")))?;
        if resource.kind != "AWS::DynamoDB::Table" {
            return Err(invalid(format!("{logical_id} is a {}", resource.kind)));
        }
        serde_yaml_ng::from_value(resource.properties.clone()).map_err(invalid)
    }

    /// Index names, in template order.
    pub fn index_names(&self) -> Vec<&str> {
        self.global_secondary_indexes
            .iter()
            .map(|i| i.index_name.as_str())
            .collect()
    }

    /// The TTL attribute, when TTL is enabled.
    pub fn ttl_attribute(&self) -> Option<&str> {
        self.time_to_live_specification
            .as_ref()
            .filter(|t| t.enabled)
            .map(|t| t.attribute_name.as_str())
    }

    /// Creates the table under `name` (on-demand) and turns on its TTL.
    /// Point-in-time recovery is left to CloudFormation.
    pub async fn create(&self, client: &Client, name: &str) -> Result<()> {
        let keys = |schema: &[Key]| -> Result<Vec<KeySchemaElement>> {
            schema
                .iter()
                .map(|k| {
                    KeySchemaElement::builder()
                        .attribute_name(&k.attribute_name)
                        .key_type(KeyType::from(k.key_type.as_str()))
                        .build()
                        .map_err(Error::storage)
                })
                .collect()
        };
        let attributes = self
            .attribute_definitions
            .iter()
            .map(|a| {
                AttributeDefinition::builder()
                    .attribute_name(&a.attribute_name)
                    .attribute_type(ScalarAttributeType::from(a.attribute_type.as_str()))
                    .build()
                    .map_err(Error::storage)
            })
            .collect::<Result<Vec<_>>>()?;
        let indexes = self
            .global_secondary_indexes
            .iter()
            .map(|i| {
                GlobalSecondaryIndex::builder()
                    .index_name(&i.index_name)
                    .set_key_schema(Some(keys(&i.key_schema)?))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::from(
                                i.projection.projection_type.as_str(),
                            ))
                            .build(),
                    )
                    .build()
                    .map_err(Error::storage)
            })
            .collect::<Result<Vec<_>>>()?;
        client
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(attributes))
            .set_key_schema(Some(keys(&self.key_schema)?))
            .set_global_secondary_indexes((!indexes.is_empty()).then_some(indexes))
            .send()
            .await
            .map_err(Error::storage)?;
        if let Some(attribute) = self.ttl_attribute() {
            client
                .update_time_to_live()
                .table_name(name)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name(attribute)
                        .enabled(true)
                        .build()
                        .map_err(Error::storage)?,
                )
                .send()
                .await
                .map_err(Error::storage)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_table_has_the_indexes_the_keys_module_uses() {
        let spec = TableSpec::from_template().unwrap();
        let names: Vec<&str> = super::super::keys::GSI.iter().map(|g| g.0).collect();
        assert_eq!(spec.index_names(), names);
        assert_eq!(spec.ttl_attribute(), Some(super::super::keys::EXPIRES_AT));
    }
}
