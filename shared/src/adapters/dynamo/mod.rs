//! The DynamoDB store: every port operation is one request or one
//! transaction on the single table of `docs/data-model.md`, with the same
//! conditions the embedded store checks.
//!
//! Entities are kept whole in a `doc` map attribute (via serde_dynamo); the
//! attributes that keys, conditions and counters need sit beside it. Fields
//! that transactions change without rewriting the document (an execution's
//! status, version, start and update times; a runner's used capacity) are
//! top-level attributes and are laid over the document when it is read.

mod keys;
pub mod retry;
pub mod table;

use crate::auth::ApiToken;
use crate::domain::{
    AlertRule, Execution, ExecutionStatus, HealthRecord, LoadBalancingRule, Mode, Resources,
    ResultChunk, Rollup, Runner, RunnerStatus, RunnerWithLoad, Shard, ShardStatus, TestSpec,
    TestTiming, Violation,
};
use crate::error::{Entity, Error, Result};
use crate::ids::{AlertRuleId, ExecutionId, LeaseId, RuleId, RunnerId, TokenId};
use crate::ports::{
    AssignmentWrite, ClaimWrite, ExecutionFilter, IdempotencyRecord, Page, QueueStats, Release,
    ShardUpdate, Store,
};
use crate::scheduling::FreeCapacity;
use crate::time::Timestamp;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, KeysAndAttributes, Put, ReturnValue, Select, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

pub use table::TableSpec;

type Item = HashMap<String, AttributeValue>;

/// How long history items live before DynamoDB's TTL removes them.
const HEALTH_TTL_MS: i64 = 90 * 24 * 3_600_000;
const VIOLATION_TTL_MS: i64 = 30 * 24 * 3_600_000;
/// A test not run for this long is forgotten (renamed or deleted tests).
const TIMING_TTL_MS: i64 = 90 * 24 * 3_600_000;
/// DynamoDB's limit on the items of one `TransactWriteItems`.
const MAX_TRANSACTION_ITEMS: usize = 100;
/// Per-test results are kept as long as timings; the execution's counts stay.
const RESULTS_TTL_MS: i64 = TIMING_TTL_MS;

/// The DynamoDB adapter of [`Store`].
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(keys::PK, s(pk))
            .key(keys::SK, s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.item)
    }

    /// Writes items unconditionally, 25 per request, retrying what DynamoDB
    /// leaves unprocessed.
    async fn batch_put(&self, items: Vec<Item>) -> Result<()> {
        use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
        for chunk in items.chunks(25) {
            let mut pending = chunk
                .iter()
                .map(|i| {
                    PutRequest::builder()
                        .set_item(Some(i.clone()))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                        .map_err(Error::storage)
                })
                .collect::<Result<Vec<_>>>()?;
            let mut attempts = 0u32;
            while !pending.is_empty() {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut pending))
                    .send()
                    .await
                    .map_err(sdk)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table))
                    .unwrap_or_default();
                attempts += 1;
                if !pending.is_empty() {
                    if attempts > 8 {
                        return Err(Error::Internal(
                            "BatchWriteItem kept leaving items unprocessed".into(),
                        ));
                    }
                    backoff(attempts).await;
                }
            }
        }
        Ok(())
    }

    /// Reads items by key, consistently, in the order given; missing ones
    /// are left out. Retries what DynamoDB leaves unprocessed.
    async fn batch_get(&self, wanted: Vec<(String, String)>) -> Result<Vec<Item>> {
        let mut found: Vec<Item> = Vec::with_capacity(wanted.len());
        for chunk in wanted.chunks(100) {
            let mut pending: Vec<Item> = chunk
                .iter()
                .map(|(pk, sk)| key_of(pk.clone(), sk.clone()))
                .collect();
            let mut attempts = 0u32;
            while !pending.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .build()
                    .map_err(Error::storage)?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(sdk)?;
                found.extend(
                    out.responses
                        .and_then(|mut r| r.remove(&self.table))
                        .unwrap_or_default(),
                );
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                attempts += 1;
                if !pending.is_empty() {
                    if attempts > 8 {
                        return Err(Error::Internal(
                            "BatchGetItem kept leaving keys unprocessed".into(),
                        ));
                    }
                    backoff(attempts).await;
                }
            }
        }
        let position = |item: &Item| {
            wanted.iter().position(|(pk, sk)| {
                str_attr(item, keys::PK) == Some(pk) && str_attr(item, keys::SK) == Some(sk)
            })
        };
        found.sort_by_key(|item| position(item));
        Ok(found)
    }

    fn query(&self) -> QueryFluentBuilder {
        self.client.query().table_name(&self.table)
    }

    /// Follows a query's pages until `enough` says so or the results end.
    async fn query_pages(
        &self,
        query: QueryFluentBuilder,
        mut enough: impl FnMut(&[Item]) -> bool,
    ) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() || enough(&items) {
                return Ok(items);
            }
        }
    }

    async fn query_all(&self, query: QueryFluentBuilder) -> Result<Vec<Item>> {
        self.query_pages(query, |_| false).await
    }

    /// Reads through an index: the indexes project keys only (an update
    /// that moves no index key then writes nothing to the indexes), so each
    /// page of keys is followed by a consistent `BatchGetItem` of the items.
    /// Items that no longer pass `keep` (they changed after the index was
    /// read) are dropped. Stops once `enough` holds or the index ends.
    async fn index_items(
        &self,
        query: QueryFluentBuilder,
        keep: impl Fn(&Item) -> bool,
        mut enough: impl FnMut(&[Item]) -> bool,
    ) -> Result<Vec<Item>> {
        let mut items: Vec<Item> = Vec::new();
        let mut start = None;
        loop {
            let out = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            let wanted = out
                .items
                .unwrap_or_default()
                .iter()
                .filter_map(|k| {
                    Some((
                        str_attr(k, keys::PK)?.clone(),
                        str_attr(k, keys::SK)?.clone(),
                    ))
                })
                .collect();
            items.extend(
                self.batch_get(wanted)
                    .await?
                    .into_iter()
                    .filter(|i| keep(i)),
            );
            start = out.last_evaluated_key;
            if start.is_none() || enough(&items) {
                return Ok(items);
            }
        }
    }

    /// Up to `limit` items of index `index` under `partition` whose sort key
    /// is below `below`, oldest key first, that still pass `keep`.
    async fn index_head(
        &self,
        index: usize,
        partition: String,
        below: Option<String>,
        limit: u32,
        keep: impl Fn(&Item) -> bool,
    ) -> Result<Vec<Item>> {
        let (name, pk, sk) = keys::GSI[index];
        let mut query = self
            .query()
            .index_name(name)
            .expression_attribute_names("#pk", pk)
            .expression_attribute_values(":pk", s(partition))
            .limit(limit.clamp(1, 1000) as i32);
        query = match below {
            Some(below) => query
                .key_condition_expression("#pk = :pk AND #sk < :below")
                .expression_attribute_names("#sk", sk)
                .expression_attribute_values(":below", s(below)),
            None => query.key_condition_expression("#pk = :pk"),
        };
        let mut items = self
            .index_items(query, keep, |i| i.len() >= limit as usize)
            .await?;
        items.truncate(limit as usize);
        Ok(items)
    }

    /// The runner's capacity taken by `need`, on the condition that it is
    /// active, its capacity is still `cap` and it has room (no read of the
    /// runner needed).
    fn take_capacity(&self, runner: &RunnerId, cap: Resources, need: Resources) -> Result<Update> {
        self.update(keys::runner(runner.as_str()), keys::META)
            .update_expression("ADD used_slots :slots, used_cpu :cpu, used_memory :memory")
            .condition_expression(
                "#status = :active AND cap_slots = :cap_slots AND cap_cpu = :cap_cpu AND cap_memory = :cap_memory \
                 AND used_slots <= :max_slots AND used_cpu <= :max_cpu AND used_memory <= :max_memory",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":active", s(RunnerStatus::Active.as_str()))
            .expression_attribute_values(":slots", n(need.slots))
            .expression_attribute_values(":cpu", n(need.cpu_millis))
            .expression_attribute_values(":memory", n(need.memory_mb))
            .expression_attribute_values(":cap_slots", n(cap.slots))
            .expression_attribute_values(":cap_cpu", n(cap.cpu_millis))
            .expression_attribute_values(":cap_memory", n(cap.memory_mb))
            .expression_attribute_values(":max_slots", n(cap.slots - need.slots))
            .expression_attribute_values(":max_cpu", n(cap.cpu_millis - need.cpu_millis))
            .expression_attribute_values(":max_memory", n(cap.memory_mb - need.memory_mb))
            .build()
            .map_err(Error::storage)
    }

    /// A new allocation item (refused if one is there).
    fn allocation_put(&self, alloc: &crate::domain::Allocation) -> Result<Put> {
        self.put(with(
            item(
                keys::runner(alloc.runner_id.as_str()),
                keys::allocation(alloc.execution_id.as_str(), alloc.shard_index),
                to_av(alloc)?,
            ),
            "lease_id",
            s(alloc.lease_id.as_str()),
        ))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .map_err(Error::storage)
    }

    /// Up to `limit` items of index `index` under `partition` whose sort
    /// key follows `after`, in key order, that still pass `keep`, and the
    /// cursor of the next page (the last sort key read) when the index
    /// goes on.
    async fn index_after(
        &self,
        index: usize,
        partition: String,
        after: Option<&str>,
        limit: u32,
        keep: impl Fn(&Item) -> bool,
    ) -> Result<(Vec<Item>, Option<String>)> {
        let (name, pk, sk) = keys::GSI[index];
        let mut query = self
            .query()
            .index_name(name)
            .expression_attribute_names("#pk", pk)
            .expression_attribute_values(":pk", s(partition))
            .limit(limit.clamp(1, 1000) as i32);
        query = match after.filter(|a| !a.is_empty()) {
            Some(after) => query
                .key_condition_expression("#pk = :pk AND #sk > :after")
                .expression_attribute_names("#sk", sk)
                .expression_attribute_values(":after", s(after)),
            None => query.key_condition_expression("#pk = :pk"),
        };
        // One page of keys: its items, then where the next page starts.
        let out = query.send().await.map_err(sdk)?;
        let keys_read = out.items.unwrap_or_default();
        let next = out
            .last_evaluated_key
            .as_ref()
            .and_then(|k| str_attr(k, sk).cloned());
        let wanted = keys_read
            .iter()
            .filter_map(|k| {
                Some((
                    str_attr(k, keys::PK)?.clone(),
                    str_attr(k, keys::SK)?.clone(),
                ))
            })
            .collect();
        let items = self
            .batch_get(wanted)
            .await?
            .into_iter()
            .filter(|i| keep(i))
            .collect();
        Ok((items, next))
    }

    /// Counts what a query matches, across pages.
    async fn count(&self, query: QueryFluentBuilder) -> Result<u64> {
        let mut total = 0u64;
        let mut start = None;
        loop {
            let out = query
                .clone()
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            total += out.count.max(0) as u64;
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(total);
            }
        }
    }

    /// Adds a rollup's counters to its hour-and-suite item (created by the
    /// first), counters as `c_<name>` attributes.
    fn rollup_update(&self, rollup: &Rollup) -> Result<Update> {
        let mut update = self
            .update(
                keys::METRICS.to_owned(),
                &keys::metric_rollup(rollup.hour, &rollup.suite),
            )
            .expression_attribute_names("#suite", "suite")
            .expression_attribute_names("#hour", "hour")
            .expression_attribute_values(":suite", s(rollup.suite.clone()))
            .expression_attribute_values(":hour", n(rollup.hour.0));
        let mut adds = Vec::new();
        for (i, (name, value)) in rollup.counters.iter().enumerate() {
            update = update
                .expression_attribute_names(format!("#c{i}"), format!("c_{name}"))
                .expression_attribute_values(format!(":c{i}"), n(value));
            adds.push(format!("#c{i} :c{i}"));
        }
        let mut expression = "SET #suite = :suite, #hour = :hour".to_owned();
        if !adds.is_empty() {
            expression.push_str(&format!(" ADD {}", adds.join(", ")));
        }
        update
            .update_expression(expression)
            .build()
            .map_err(Error::storage)
    }

    /// Deletes the `META` item of `pk`; whether there was one.
    async fn delete_meta(&self, pk: String) -> Result<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(keys::PK, s(pk))
            .key(keys::SK, s(keys::META))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// Runs a transaction; on a cancellation, tells why (see [`Cancelled`]).
    async fn transact(
        &self,
        mut items: Vec<TransactWriteItem>,
    ) -> Result<std::result::Result<(), Cancelled>> {
        // A transaction of one conditional put is the same as the put alone,
        // at half the write units (transactions bill every item twice).
        if let [only] = items.as_mut_slice() {
            if let Some(put) = only.put.take() {
                return self.put_alone(put).await;
            }
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) => {
                let service = e.as_service_error();
                if let Some(
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c),
                ) = service
                {
                    let failed: Vec<bool> = c
                        .cancellation_reasons()
                        .iter()
                        .map(|r| r.code() == Some("ConditionalCheckFailed"))
                        .collect();
                    if failed.iter().any(|f| *f) {
                        return Ok(Err(Cancelled::Conditions(failed)));
                    }
                    // Still held by other transactions after the client's
                    // retries: the same as losing the race.
                    if retry::only_conflicts(c.cancellation_reasons()) {
                        return Ok(Err(Cancelled::Conflict));
                    }
                    if c.cancellation_reasons().iter().any(|r| {
                        r.code() == Some("ValidationError")
                            && r.message().is_some_and(|m| m.contains("Item size"))
                    }) {
                        return Err(too_large_for_the_store());
                    }
                }
                Err(sdk(e))
            }
        }
    }

    /// One conditional `PutItem`, answering like [`Self::transact`].
    async fn put_alone(&self, put: Put) -> Result<std::result::Result<(), Cancelled>> {
        match self
            .client
            .put_item()
            .table_name(put.table_name)
            .set_item(Some(put.item))
            .set_condition_expression(put.condition_expression)
            .set_expression_attribute_names(put.expression_attribute_names)
            .set_expression_attribute_values(put.expression_attribute_values)
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(Err(Cancelled::Conditions(vec![true])))
            }
            Err(e) if is_transaction_conflict(&e) => Ok(Err(Cancelled::Conflict)),
            Err(e) => Err(sdk(e)),
        }
    }

    fn put(&self, item: Item) -> aws_sdk_dynamodb::types::builders::PutBuilder {
        Put::builder().table_name(&self.table).set_item(Some(item))
    }

    fn update(&self, pk: String, sk: &str) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .key(keys::PK, s(pk))
            .key(keys::SK, s(sk))
    }

    /// A `PutItem` that must not overwrite; `false` when the item existed.
    async fn put_new(&self, item: Item) -> Result<bool> {
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    async fn put_plain(&self, item: Item) -> Result<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    /// Rewrites a `META` item's attributes if its version is still
    /// `expected`; `false` when it is not (or the item is gone).
    async fn update_versioned(
        &self,
        pk: String,
        attrs: Vec<(&'static str, Option<AttributeValue>)>,
        expected: u64,
    ) -> Result<bool> {
        self.update_alone(self.meta_update(pk, versioned(attrs, expected))?)
            .await
    }

    /// An `Update` of `pk`'s `META` item by `update`, on the condition that
    /// its version is still the expected one ([`versioned`]).
    fn meta_update(&self, pk: String, update: SetRemove) -> Result<Update> {
        self.update(pk, keys::META)
            .update_expression(update.expression)
            .condition_expression("#version = :expected")
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .build()
            .map_err(Error::storage)
    }

    /// One `Update` sent as an `UpdateItem` of its own; `false` when its
    /// condition failed.
    async fn update_alone(&self, u: Update) -> Result<bool> {
        let out = self
            .client
            .update_item()
            .table_name(u.table_name)
            .set_key(Some(u.key))
            .update_expression(u.update_expression)
            .set_condition_expression(u.condition_expression)
            .set_expression_attribute_names(u.expression_attribute_names)
            .set_expression_attribute_values(u.expression_attribute_values)
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) || is_transaction_conflict(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    async fn shards_of_allocations(&self, allocations: Vec<Item>) -> Result<Vec<Shard>> {
        let mut held: Vec<(String, String, String)> = Vec::new();
        for a in allocations {
            let alloc: crate::domain::Allocation = doc_of(a)?;
            held.push((
                keys::execution(alloc.execution_id.as_str()),
                keys::shard(alloc.shard_index),
                alloc.lease_id.to_string(),
            ));
        }
        let wanted = held
            .iter()
            .map(|(pk, sk, _)| (pk.clone(), sk.clone()))
            .collect();
        let mut shards = Vec::new();
        for item in self.batch_get(wanted).await? {
            let shard: Shard = doc_of(item)?;
            let current = held.iter().any(|(pk, sk, lease)| {
                *pk == keys::execution(shard.execution_id.as_str())
                    && *sk == keys::shard(shard.index)
                    && shard.lease_id.as_ref().map(|l| l.as_str()) == Some(lease.as_str())
            });
            if current {
                shards.push(shard);
            }
        }
        Ok(shards)
    }

    async fn queued_shards_of(&self, id: &ExecutionId) -> Result<Vec<Shard>> {
        let items = self
            .query_all(
                self.query()
                    .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                    .filter_expression("#status = :queued")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":pk", s(keys::execution(id.as_str())))
                    .expression_attribute_values(":prefix", s(keys::SHARD_PREFIX))
                    .expression_attribute_values(":queued", s(ShardStatus::Queued.as_str()))
                    .consistent_read(true),
            )
            .await?;
        items.into_iter().map(doc_of).collect()
    }

    /// The requirement classes queued work has (expired ones left out).
    async fn classes(&self) -> Result<Vec<(String, crate::domain::Requirements)>> {
        let now = now_seconds();
        let items = self
            .query_all(
                self.query()
                    .index_name(keys::GSI[1].0)
                    .key_condition_expression("gsi2pk = :classes")
                    .expression_attribute_values(":classes", s(keys::CLASSES)),
            )
            .await?;
        // The index holds keys only: the items, for their requirements.
        let wanted = items
            .iter()
            .filter_map(|k| {
                Some((
                    str_attr(k, keys::PK)?.clone(),
                    str_attr(k, keys::SK)?.clone(),
                ))
            })
            .collect();
        let mut classes = Vec::new();
        for it in self.batch_get(wanted).await? {
            if num(&it, keys::EXPIRES_AT) as i64 <= now {
                continue;
            }
            let Some(class) = str_attr(&it, "gsi2sk").cloned() else {
                continue;
            };
            classes.push((class, doc_of(it)?));
        }
        Ok(classes)
    }

    /// Pending executions under `partition` of one GSI, in its order, that
    /// some runner of `free` can run, until their queued shards use up
    /// `free` or they number `max_executions`. Work no free runner fits
    /// (a rule's pool may narrow a class's runners) is read past without
    /// counting.
    async fn pending_in(
        &self,
        index: usize,
        partition: &str,
        free: &FreeCapacity,
        max_executions: u32,
    ) -> Result<Vec<Execution>> {
        let (name, pk, _) = keys::GSI[index];
        let query = self
            .query()
            .index_name(name)
            .key_condition_expression("#pk = :pending")
            .expression_attribute_names("#pk", pk)
            .expression_attribute_values(":pending", s(partition))
            .limit(max_executions.clamp(1, 100) as i32);
        // Both closures share the walk: `keep` reserves each execution's
        // shards and keeps the execution it read, `enough` stops once
        // nothing is left to reserve. (A mutex only because the future must
        // be Send; nothing contends for it.)
        let walk = Mutex::new((free.clone(), Vec::new()));
        let keep = |item: &Item| {
            if !is_pending(item) {
                return false;
            }
            let waiting = u32::try_from(num(item, "queued_shards")).unwrap_or(u32::MAX);
            let mut walk = walk.lock().unwrap_or_else(|e| e.into_inner());
            let (free, kept) = &mut *walk;
            if free.is_exhausted() || kept.len() >= max_executions as usize {
                return false;
            }
            let Ok(e) = execution_of(item.clone()) else {
                return false;
            };
            let reserved = free.reserve(&e, waiting);
            if reserved {
                kept.push(e);
            }
            reserved
        };
        let enough = |_: &[Item]| {
            let walk = walk.lock().unwrap_or_else(|e| e.into_inner());
            walk.0.is_exhausted() || walk.1.len() >= max_executions as usize
        };
        self.index_items(query, keep, enough).await?;
        let (_, kept) = walk.into_inner().unwrap_or_else(|e| e.into_inner());
        Ok(kept)
    }
}

/// An execution that still has queued shards and is not finished (an entry
/// under `PENDING` may lag behind: the counter reached zero, or the
/// execution finished, after it was indexed).
fn is_pending(item: &Item) -> bool {
    let open = matches!(
        str_attr(item, "status").map(String::as_str),
        Some(s) if s == ExecutionStatus::Queued.as_str() || s == ExecutionStatus::Running.as_str()
    );
    open && num(item, "queued_shards") > 0
}

fn has_status(item: &Item, wanted: &[&str]) -> bool {
    str_attr(item, "status").is_some_and(|s| wanted.contains(&s.as_str()))
}

fn everything(_: &Item) -> bool {
    true
}

// ---- attribute helpers -------------------------------------------------

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key_of(pk: String, sk: String) -> Item {
    HashMap::from([(keys::PK.to_owned(), s(pk)), (keys::SK.to_owned(), s(sk))])
}

fn str_attr<'a>(item: &'a Item, name: &str) -> Option<&'a String> {
    item.get(name).and_then(|v| v.as_s().ok())
}

fn num(item: &Item, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .map_or(0, |v| v.max(0) as u64)
}

fn to_av<T: Serialize>(value: &T) -> Result<AttributeValue> {
    serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(value).map_err(Error::storage)
}

fn doc_of<T: DeserializeOwned>(mut item: Item) -> Result<T> {
    let doc = item
        .remove("doc")
        .ok_or_else(|| Error::Internal("item without a doc attribute".into()))?;
    serde_dynamo::aws_sdk_dynamodb_1::from_attribute_value(doc).map_err(Error::storage)
}

/// An item: its keys, its document and the attributes beside it.
fn item(pk: String, sk: impl Into<String>, doc: AttributeValue) -> Item {
    let mut item = key_of(pk, sk.into());
    item.insert("doc".into(), doc);
    item
}

fn with(mut item: Item, name: &str, value: AttributeValue) -> Item {
    item.insert(name.to_owned(), value);
    item
}

/// An SDK failure as a domain error. An item over DynamoDB's 400 KB (or a
/// transaction over 4 MB) is the caller's input being too large for one
/// execution — a 422 that says what to change, not a storage failure.
fn sdk<E, R>(e: SdkError<E, R>) -> Error
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let too_large = e.code() == Some("ValidationException")
        && e.message().is_some_and(|m| {
            m.contains("Item size has exceeded") || m.contains("cannot exceed 4 MB")
        });
    if too_large {
        return too_large_for_the_store();
    }
    Error::storage(e)
}

/// DynamoDB refused an item over 400 KB (or a transaction over 4 MB): the
/// caller's input is too large for one execution — a 422 that says what to
/// change. In a transaction the refusal is a cancellation with a
/// `ValidationError` reason rather than a `ValidationException`.
fn too_large_for_the_store() -> Error {
    Error::validation(
        "tests",
        "too many or too long test names for the store: each shard's list must stay \
         under 400 KB (raise parallelism or shorten the names)",
    )
}

/// A single-item write that another transaction kept losing to, after the
/// client's retries ([`retry`]).
fn is_transaction_conflict<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "TransactionConflictException")
}

/// Waits before the next attempt of a batch request that DynamoDB left
/// partly undone: exponential from 25 ms, capped at 1 s, full jitter.
async fn backoff(attempts: u32) {
    let cap = (25u64 << attempts.min(6)).min(1_000);
    let wait = rand::random::<f64>() * cap as f64;
    tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
}

/// Why DynamoDB cancelled a write.
enum Cancelled {
    /// These items' conditions failed (by position in the transaction).
    Conditions(Vec<bool>),
    /// Other transactions held its items through every retry.
    Conflict,
}

fn is_condition_failure<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn expires_in(at: Timestamp, ttl_ms: i64) -> AttributeValue {
    // DynamoDB's TTL wants seconds since the epoch.
    n((at.0 + ttl_ms) / 1000)
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---- runners -----------------------------------------------------------

/// A runner item's attributes apart from its keys and used capacity
/// (which only assignments and releases move).
fn runner_attrs(r: &Runner) -> Result<Vec<(&'static str, AttributeValue)>> {
    let id = r.id.as_str();
    Ok(vec![
        ("doc", to_av(r)?),
        ("status", s(r.status.as_str())),
        ("version", n(r.version)),
        ("last_heartbeat", n(r.silence_key().0)),
        ("cap_slots", n(r.capacity.slots)),
        ("cap_cpu", n(r.capacity.cpu_millis)),
        ("cap_memory", n(r.capacity.memory_mb)),
        ("gsi1pk", s(keys::runners_with_status(r.status.as_str()))),
        ("gsi1sk", s(format!("{}#{id}", keys::ts(r.silence_key())))),
        ("gsi2pk", s(keys::RUNNERS)),
        ("gsi2sk", s(id)),
    ])
}

fn runner_of(item: Item) -> Result<RunnerWithLoad> {
    let allocated = Resources::new(
        num(&item, "used_slots") as u32,
        num(&item, "used_cpu") as u32,
        num(&item, "used_memory") as u32,
    );
    Ok(RunnerWithLoad {
        runner: doc_of(item)?,
        allocated,
    })
}

// ---- executions and shards ----------------------------------------------

/// The execution item's attributes that follow from its state: status, the
/// index keys it belongs under, and the fields transactions change in place.
fn execution_state(e: &Execution) -> Vec<(&'static str, Option<AttributeValue>)> {
    let id = e.id.as_str();
    let open = !e.status.is_terminal();
    let pending_by_priority = keys::pending_by_priority(e.priority, e.created_at, id);
    let pending_by_age = keys::pending_by_age(e.created_at, id);
    let when_open = |v: AttributeValue| open.then_some(v);
    // Static executions wait for the scheduler under their requirement
    // class's PENDING partition; dynamic ones for runners' claims, under
    // DYNAMIC in claim order; by_index ones for their CI jobs, under
    // neither.
    let pending_pk = keys::pending(&e.requirements.class());
    let (gsi1pk, gsi2pk) = match e.mode {
        Mode::Static => (Some(pending_pk.clone()), Some(pending_pk.clone())),
        Mode::Dynamic => (Some(keys::DYNAMIC.to_owned()), None),
        Mode::ByIndex => (None, None),
    };
    let listed = |pk: Option<String>| pk.filter(|_| open).map(s);
    let sorted = |pk: &Option<String>, sk: String| pk.as_ref().filter(|_| open).map(|_| s(sk));
    vec![
        ("status", Some(s(e.status.as_str()))),
        ("version", Some(n(e.version))),
        ("updated_at", Some(n(e.updated_at.0))),
        ("started_at", e.started_at.map(|t| n(t.0))),
        // Kept so a requeue can put the execution back under its PENDING
        // partition without reading it (`SET gsi1pk = pending_pk, gsi1sk =
        // pending1`).
        ("pending_pk", Some(s(pending_pk))),
        ("pending1", Some(s(pending_by_priority.clone()))),
        ("pending2", Some(s(pending_by_age.clone()))),
        ("gsi1sk", sorted(&gsi1pk, pending_by_priority)),
        ("gsi2sk", sorted(&gsi2pk, pending_by_age)),
        ("gsi1pk", listed(gsi1pk)),
        ("gsi2pk", listed(gsi2pk)),
        ("gsi3pk", when_open(s(keys::ACTIVE))),
        (
            "gsi3sk",
            when_open(s(format!("{}#{id}", keys::ts(e.deadline)))),
        ),
        (
            "gsi5pk",
            Some(s(keys::execs_with_status(e.status.as_str()))),
        ),
    ]
}

/// The item of the requirement class of a static execution: what its work
/// needs of a runner, listed under `CLASSES` for the scheduler. Written with
/// each queue call (unconditionally: the same class is the same item), it
/// expires a day after the longest an execution may wait, so classes no
/// longer queued stop costing a scheduling pass a query.
fn class_item(e: &Execution) -> Result<Item> {
    let class = e.requirements.class();
    let it = item(keys::class(&class), keys::META, to_av(&e.requirements)?);
    let it = with(it, "gsi2pk", s(keys::CLASSES));
    let it = with(it, "gsi2sk", s(class));
    // Wall-clock time, as DynamoDB's TTL reads it.
    Ok(with(
        it,
        keys::EXPIRES_AT,
        n(now_seconds() + CLASS_TTL_SECS),
    ))
}

/// How long a requirement class is listed after its last queue call: the
/// longest an execution may run (7 days), and a day.
const CLASS_TTL_SECS: i64 = 8 * 24 * 3600;

fn execution_item(e: &Execution) -> Result<Item> {
    let id = e.id.as_str();
    let mut it = item(keys::execution(id), keys::META, to_av(e)?);
    for (k, v) in execution_state(e) {
        if let Some(v) = v {
            it.insert(k.into(), v);
        }
    }
    for (k, v) in [
        ("queued_shards", n(0)),
        ("gsi4pk", s(keys::EXECS)),
        ("gsi4sk", s(id)),
        ("gsi5sk", s(id)),
        ("gsi6pk", s(keys::suite(&e.suite))),
        ("gsi6sk", s(id)),
    ] {
        it.insert(k.into(), v);
    }
    Ok(it)
}

fn execution_of(item: Item) -> Result<Execution> {
    let status = str_attr(&item, "status").cloned();
    let version = num(&item, "version");
    let updated_at = num(&item, "updated_at") as i64;
    let started_at = item
        .contains_key("started_at")
        .then(|| num(&item, "started_at") as i64);
    let mut returned: Vec<u32> = match item.get("returned") {
        Some(AttributeValue::Ns(numbers)) => {
            numbers.iter().filter_map(|n| n.parse().ok()).collect()
        }
        _ => Vec::new(),
    };
    returned.sort_unstable();
    let mut e: Execution = doc_of(item)?;
    e.returned = returned;
    if let Some(status) = status {
        e.status =
            serde_json::from_value(serde_json::Value::String(status)).map_err(Error::storage)?;
    }
    e.version = version;
    e.updated_at = Timestamp(updated_at);
    e.started_at = started_at.map(Timestamp).or(e.started_at);
    Ok(e)
}

fn shard_item(sh: &Shard) -> Result<Item> {
    let exec = sh.execution_id.as_str();
    let mut it = item(keys::execution(exec), keys::shard(sh.index), to_av(sh)?);
    it.insert("status".into(), s(sh.status.as_str()));
    it.insert("version".into(), n(sh.version));
    if let Some(lease) = &sh.lease_id {
        it.insert("lease_id".into(), s(lease.as_str()));
    }
    if matches!(sh.status, ShardStatus::Assigned | ShardStatus::Running) {
        if let Some(deadline) = sh.deadline {
            it.insert("gsi1pk".into(), s(keys::LEASE));
            it.insert("gsi1sk".into(), s(keys::lease(deadline, exec, sh.index)));
        }
    }
    Ok(it)
}

/// Moves the execution's queued-shard counter by `delta`; a shard coming
/// back to the queue also puts the execution back under `PENDING`.
fn count_queued(store: &DynamoStore, execution: &str, delta: i64) -> Result<TransactWriteItem> {
    let mut update = store
        .update(keys::execution(execution), keys::META)
        .condition_expression("attribute_exists(pk)")
        .expression_attribute_values(":delta", n(delta));
    update = if delta > 0 {
        // Executions stored before the index was split by class have no
        // `pending_pk`: they go back under the one PENDING partition.
        update
            .update_expression(
                "SET gsi1pk = if_not_exists(pending_pk, :pending), gsi1sk = pending1, \
                 gsi2pk = if_not_exists(pending_pk, :pending), gsi2sk = pending2 ADD queued_shards :delta",
            )
            .expression_attribute_values(":pending", s(keys::PENDING))
    } else {
        update.update_expression("ADD queued_shards :delta")
    };
    Ok(TransactWriteItem::builder()
        .update(update.build().map_err(Error::storage)?)
        .build())
}

/// Adds a dynamic batch to its execution's batches waiting to be claimed
/// again (`add`), or takes it out: a number set on the execution item,
/// moved in the same transaction as the shard's state.
fn count_returned(
    store: &DynamoStore,
    execution: &str,
    index: u32,
    add: bool,
) -> Result<TransactWriteItem> {
    let update = store
        .update(keys::execution(execution), keys::META)
        .condition_expression("attribute_exists(pk)")
        .update_expression(if add {
            "ADD returned :index"
        } else {
            "DELETE returned :index"
        })
        .expression_attribute_values(":index", AttributeValue::Ns(vec![index.to_string()]))
        .build()
        .map_err(Error::storage)?;
    Ok(TransactWriteItem::builder().update(update).build())
}

fn release_items(
    store: &DynamoStore,
    shard: &Shard,
    rel: &Release,
) -> Result<Vec<TransactWriteItem>> {
    let delete = Delete::builder()
        .table_name(&store.table)
        .key(keys::PK, s(keys::runner(rel.runner_id.as_str())))
        .key(
            keys::SK,
            s(keys::allocation(shard.execution_id.as_str(), shard.index)),
        )
        .condition_expression("lease_id = :lease")
        .expression_attribute_values(":lease", s(rel.lease_id.as_str()))
        .build()
        .map_err(Error::storage)?;
    let give_back = store
        .update(keys::runner(rel.runner_id.as_str()), keys::META)
        .update_expression("ADD used_slots :slots, used_cpu :cpu, used_memory :memory")
        .expression_attribute_values(":slots", n(-i64::from(rel.resources.slots)))
        .expression_attribute_values(":cpu", n(-i64::from(rel.resources.cpu_millis)))
        .expression_attribute_values(":memory", n(-i64::from(rel.resources.memory_mb)))
        .build()
        .map_err(Error::storage)?;
    Ok(vec![
        TransactWriteItem::builder().delete(delete).build(),
        TransactWriteItem::builder().update(give_back).build(),
    ])
}

fn shard_conflict(shard: &Shard) -> Error {
    Error::conflict(
        Entity::Shard,
        format!("{}#{}", shard.execution_id, shard.index),
    )
}

/// An update expression that sets what is given and removes what is not,
/// with its placeholders.
struct SetRemove {
    expression: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

/// [`set_and_remove`] with the placeholders of the version condition that
/// [`DynamoStore::meta_update`] adds.
fn versioned(attrs: Vec<(&'static str, Option<AttributeValue>)>, expected: u64) -> SetRemove {
    let mut change = set_and_remove(attrs);
    change.names.insert("#version".into(), "version".into());
    change.values.insert(":expected".into(), n(expected));
    change
}

fn set_and_remove(attrs: Vec<(&'static str, Option<AttributeValue>)>) -> SetRemove {
    let (mut sets, mut removes) = (Vec::new(), Vec::new());
    let (mut names, mut values) = (HashMap::new(), HashMap::new());
    for (i, (name, value)) in attrs.into_iter().enumerate() {
        let alias = format!("#a{i}");
        names.insert(alias.clone(), name.to_owned());
        match value {
            Some(v) => {
                let placeholder = format!(":a{i}");
                sets.push(format!("{alias} = {placeholder}"));
                values.insert(placeholder, v);
            }
            None => removes.push(alias),
        }
    }
    let mut expression = format!("SET {}", sets.join(", "));
    if !removes.is_empty() {
        expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
    }
    SetRemove {
        expression,
        names,
        values,
    }
}

impl Store for DynamoStore {
    async fn ping(&self) -> Result<()> {
        self.get(keys::setting("ping"), keys::META)
            .await
            .map(|_| ())
    }

    async fn insert_runner(&self, runner: &Runner) -> Result<()> {
        let mut it = key_of(keys::runner(runner.id.as_str()), keys::META.to_owned());
        for (k, v) in runner_attrs(runner)? {
            it.insert(k.into(), v);
        }
        for k in ["used_slots", "used_cpu", "used_memory"] {
            it.insert(k.into(), n(0));
        }
        if self.put_new(it).await? {
            Ok(())
        } else {
            Err(Error::conflict(Entity::Runner, &runner.id))
        }
    }

    async fn get_runner(&self, id: &RunnerId) -> Result<Option<RunnerWithLoad>> {
        self.get(keys::runner(id.as_str()), keys::META)
            .await?
            .map(runner_of)
            .transpose()
    }

    async fn list_runners(&self, limit: u32, cursor: Option<&str>) -> Result<Page<RunnerWithLoad>> {
        let query = self
            .query()
            .index_name(keys::GSI[1].0)
            .expression_attribute_values(":runners", s(keys::RUNNERS))
            .limit(limit as i32 + 1);
        // DynamoDB refuses an empty string in a key condition.
        let query = match cursor.filter(|c| !c.is_empty()) {
            Some(cursor) => query
                .key_condition_expression("gsi2pk = :runners AND gsi2sk > :cursor")
                .expression_attribute_values(":cursor", s(cursor)),
            None => query.key_condition_expression("gsi2pk = :runners"),
        };
        let wanted = limit as usize + 1;
        let items = self
            .index_items(query, everything, |i| i.len() >= wanted)
            .await?;
        let mut items = items
            .into_iter()
            .take(wanted)
            .map(runner_of)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = Page::cursor_after(&mut items, limit, |r| r.runner.id.to_string());
        Ok(Page { items, next_cursor })
    }

    async fn update_runner(&self, runner: &Runner, expected_version: u64) -> Result<()> {
        let attrs = runner_attrs(runner)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        if self
            .update_versioned(keys::runner(runner.id.as_str()), attrs, expected_version)
            .await?
        {
            Ok(())
        } else {
            Err(Error::conflict(Entity::Runner, &runner.id))
        }
    }

    async fn schedulable_runners(&self) -> Result<Vec<RunnerWithLoad>> {
        let active = RunnerStatus::Active.as_str();
        let query = self
            .query()
            .index_name(keys::GSI[0].0)
            .key_condition_expression("gsi1pk = :active")
            .expression_attribute_values(":active", s(keys::runners_with_status(active)));
        let items = self
            .index_items(query, |i| has_status(i, &[active]), |_| false)
            .await?;
        items.into_iter().map(runner_of).collect()
    }

    async fn silent_runners(
        &self,
        statuses: &[RunnerStatus],
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<Runner>> {
        let mut found = Vec::new();
        for &status in statuses {
            let still_silent = |i: &Item| {
                has_status(i, &[status.as_str()]) && (num(i, "last_heartbeat") as i64) < before.0
            };
            let partition = keys::runners_with_status(status.as_str());
            let below = Some(keys::ts(before));
            for it in self
                .index_head(0, partition, below, limit, still_silent)
                .await?
            {
                found.push(runner_of(it)?.runner);
            }
        }
        found.sort_by_key(Runner::silence_key);
        found.truncate(limit as usize);
        Ok(found)
    }

    async fn runner_shards(&self, id: &RunnerId) -> Result<Vec<Shard>> {
        let allocations = self
            .query_all(
                self.query()
                    .key_condition_expression("pk = :pk AND begins_with(sk, :alloc)")
                    .expression_attribute_values(":pk", s(keys::runner(id.as_str())))
                    .expression_attribute_values(":alloc", s(keys::ALLOC_PREFIX))
                    .consistent_read(true),
            )
            .await?;
        self.shards_of_allocations(allocations).await
    }

    async fn runner_with_shards(
        &self,
        id: &RunnerId,
    ) -> Result<Option<(RunnerWithLoad, Vec<Shard>)>> {
        let items = self
            .query_all(
                self.query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(keys::runner(id.as_str())))
                    .consistent_read(true),
            )
            .await?;
        let (meta, allocations): (Vec<Item>, Vec<Item>) = items
            .into_iter()
            .partition(|i| str_attr(i, keys::SK).map(String::as_str) == Some(keys::META));
        let Some(meta) = meta.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some((
            runner_of(meta)?,
            self.shards_of_allocations(allocations).await?,
        )))
    }

    async fn create_execution(
        &self,
        execution: &Execution,
        shards: &[Shard],
        queue: &[TestSpec],
        idem: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        if !queue.is_empty() {
            // A dynamic execution's tests go first, under an execution id
            // nobody knows yet; the transaction below makes them reachable.
            let pk = keys::test_queue(execution.id.as_str());
            let chunks = queue
                .chunks(keys::TESTS_PER_CHUNK as usize)
                .enumerate()
                .map(|(i, tests)| {
                    let pairs: Vec<(&str, Option<u64>)> = tests
                        .iter()
                        .map(|t| (t.name.as_str(), t.duration_hint_ms))
                        .collect();
                    let body = serde_json::to_string(&pairs).map_err(Error::storage)?;
                    Ok(with(
                        key_of(pk.clone(), keys::test_queue_chunk(i as u32)),
                        "tests",
                        s(body),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            self.batch_put(chunks).await?;
        }
        let queued = shards
            .iter()
            .filter(|s| s.status == ShardStatus::Queued && s.mode.is_static())
            .count();
        let mut exec_item = execution_item(execution)?;
        exec_item.insert("queued_shards".into(), n(queued));
        let mut items = vec![TransactWriteItem::builder()
            .put(
                self.put(exec_item)
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(Error::storage)?,
            )
            .build()];
        if execution.mode == Mode::Static {
            items.push(
                TransactWriteItem::builder()
                    .put(
                        self.put(class_item(execution)?)
                            .build()
                            .map_err(Error::storage)?,
                    )
                    .build(),
            );
        }
        if shards.len() + 2 <= MAX_TRANSACTION_ITEMS {
            for sh in shards {
                items.push(
                    TransactWriteItem::builder()
                        .put(self.put(shard_item(sh)?).build().map_err(Error::storage)?)
                        .build(),
                );
            }
        } else {
            // More shards than a transaction holds (a dynamic execution's
            // batches): they go first, under an execution id nobody knows
            // yet; the transaction below makes them visible with the
            // execution. If it fails they stay unreachable (no META item).
            let items = shards.iter().map(shard_item).collect::<Result<Vec<_>>>()?;
            self.batch_put(items).await?;
        }
        if let Some(rec) = idem {
            let it = with(
                item(keys::idempotency(&rec.key), keys::META, to_av(rec)?),
                keys::EXPIRES_AT,
                n(rec.expires_at.0 / 1000),
            );
            let it = with(it, "expires_at_ms", n(rec.expires_at.0));
            items.push(
                TransactWriteItem::builder()
                    .put(
                        self.put(it)
                            // An expired record may be replaced; a live one means another request won.
                            .condition_expression(
                                "attribute_not_exists(pk) OR expires_at_ms <= :now",
                            )
                            .expression_attribute_values(":now", n(execution.created_at.0))
                            .build()
                            .map_err(Error::storage)?,
                    )
                    .build(),
            );
        }
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(Cancelled::Conditions(failed))
                if failed.last() == Some(&true) && idem.is_some() =>
            {
                Err(Error::conflict(
                    Entity::Execution,
                    idem.map_or("", |r| r.key.as_str()),
                ))
            }
            Err(_) => Err(Error::conflict(Entity::Execution, &execution.id)),
        }
    }

    async fn get_idempotency(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyRecord>> {
        let Some(it) = self.get(keys::idempotency(key), keys::META).await? else {
            return Ok(None);
        };
        // TTL deletes lazily (up to days late): an expired record is ignored.
        let record: IdempotencyRecord = doc_of(it)?;
        Ok((record.expires_at > now).then_some(record))
    }

    async fn get_execution(&self, id: &ExecutionId) -> Result<Option<Execution>> {
        self.get(keys::execution(id.as_str()), keys::META)
            .await?
            .map(execution_of)
            .transpose()
    }

    async fn load_execution(&self, id: &ExecutionId) -> Result<Option<(Execution, Vec<Shard>)>> {
        let items = self
            .query_all(
                self.query()
                    .key_condition_expression("pk = :pk")
                    .expression_attribute_values(":pk", s(keys::execution(id.as_str())))
                    .consistent_read(true),
            )
            .await?;
        let mut execution = None;
        let mut shards = Vec::new();
        for it in items {
            match str_attr(&it, keys::SK).map(String::as_str) {
                Some(keys::META) => execution = Some(execution_of(it)?),
                Some(sk) if sk.starts_with(keys::SHARD_PREFIX) => shards.push(doc_of::<Shard>(it)?),
                _ => {}
            }
        }
        shards.sort_by_key(|s| s.index);
        Ok(execution.map(|e| (e, shards)))
    }

    async fn load_shard(&self, id: &ExecutionId, index: u32) -> Result<Option<(Execution, Shard)>> {
        let pk = keys::execution(id.as_str());
        let mut items = self
            .batch_get(vec![
                (pk.clone(), keys::META.to_owned()),
                (pk, keys::shard(index)),
            ])
            .await?
            .into_iter();
        match (items.next(), items.next()) {
            (Some(e), Some(sh)) => Ok(Some((execution_of(e)?, doc_of(sh)?))),
            _ => Ok(None),
        }
    }

    async fn list_executions(&self, filter: &ExecutionFilter) -> Result<Page<Execution>> {
        let (index, partition) = match (&filter.suite, filter.status) {
            (Some(suite), _) => (5, keys::suite(suite)),
            (None, Some(status)) => (4, keys::execs_with_status(status.as_str())),
            (None, None) => (3, keys::EXECS.to_owned()),
        };
        let (name, pk, sk) = keys::GSI[index];
        let mut query = self
            .query()
            .index_name(name)
            .scan_index_forward(false)
            .expression_attribute_names("#pk", pk)
            .expression_attribute_values(":pk", s(partition))
            .limit(filter.limit as i32 + 1);
        query = match filter.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(cursor) => query
                .key_condition_expression("#pk = :pk AND #sk < :cursor")
                .expression_attribute_names("#sk", sk)
                .expression_attribute_values(":cursor", s(cursor)),
            None => query.key_condition_expression("#pk = :pk"),
        };
        // With both filters the suite's index is read and the status checked
        // on the items.
        let status = filter.status.map(|s| s.as_str());
        let matches = |i: &Item| status.is_none_or(|s| has_status(i, &[s]));
        let wanted = filter.limit as usize + 1;
        let items = self
            .index_items(query, matches, |i| i.len() >= wanted)
            .await?;
        let mut items = items
            .into_iter()
            .take(wanted)
            .map(execution_of)
            .collect::<Result<Vec<_>>>()?;
        let next_cursor = Page::cursor_after(&mut items, filter.limit, |e| e.id.to_string());
        Ok(Page { items, next_cursor })
    }

    async fn update_execution(
        &self,
        execution: &Execution,
        expected_version: u64,
        rollup: Option<&Rollup>,
    ) -> Result<()> {
        let mut attrs = vec![("doc", Some(to_av(execution)?))];
        attrs.extend(execution_state(execution));
        if let Some(rollup) = rollup {
            // The finishing write and its counters: both or neither.
            let write = self.meta_update(
                keys::execution(execution.id.as_str()),
                versioned(attrs, expected_version),
            )?;
            let items = vec![
                TransactWriteItem::builder().update(write).build(),
                TransactWriteItem::builder()
                    .update(self.rollup_update(rollup)?)
                    .build(),
            ];
            return match self.transact(items).await? {
                Ok(()) => Ok(()),
                Err(_) => Err(Error::conflict(Entity::Execution, &execution.id)),
            };
        }
        if self
            .update_versioned(
                keys::execution(execution.id.as_str()),
                attrs,
                expected_version,
            )
            .await?
        {
            Ok(())
        } else {
            Err(Error::conflict(Entity::Execution, &execution.id))
        }
    }

    async fn add_rollup(&self, rollup: &Rollup) -> Result<()> {
        // Unconditional: it cannot fail a condition.
        self.update_alone(self.rollup_update(rollup)?).await?;
        Ok(())
    }

    async fn metric_rollups(&self, since: Timestamp, until: Timestamp) -> Result<Vec<Rollup>> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(keys::METRICS))
            .expression_attribute_values(":from", s(keys::ts(since)))
            // After every suite of the last hour.
            .expression_attribute_values(":to", s(format!("{}#\u{10FFFF}", keys::ts(until))));
        let mut out = Vec::new();
        for item in self.query_all(query).await? {
            let suite = item.get("suite").and_then(|v| v.as_s().ok()).cloned();
            let hour = item
                .get("hour")
                .and_then(|v| v.as_n().ok())
                .and_then(|h| h.parse().ok());
            let (Some(suite), Some(hour)) = (suite, hour) else {
                continue;
            };
            let counters = item
                .iter()
                .filter_map(|(k, v)| {
                    let name = k.strip_prefix("c_")?;
                    let value = v.as_n().ok()?.parse::<i64>().ok()?;
                    Some((name.to_owned(), value.max(0) as u64))
                })
                .collect();
            out.push(Rollup {
                suite,
                hour: Timestamp(hour),
                counters,
            });
        }
        Ok(out)
    }

    async fn pending_executions(
        &self,
        free: &FreeCapacity,
        max_executions: u32,
    ) -> Result<Vec<(Execution, Vec<Shard>)>> {
        // Only the classes some free runner fits are read (and the one
        // partition of executions queued before the split, if any).
        let partitions: Vec<String> = self
            .classes()
            .await?
            .into_iter()
            .filter(|(_, req)| free.could_serve(req))
            .map(|(class, _)| keys::pending(&class))
            .collect();
        // Executions queued before the split, in priority order only.
        let mut found = self
            .pending_in(0, keys::PENDING, free, max_executions)
            .await?;
        for partition in &partitions {
            let by_priority = self.pending_in(0, partition, free, max_executions).await?;
            let by_age = self.pending_in(1, partition, free, max_executions).await?;
            for e in by_priority.into_iter().chain(by_age) {
                if !found.iter().any(|f| f.id == e.id) {
                    found.push(e);
                }
            }
        }
        let mut out = Vec::with_capacity(found.len());
        for e in found {
            let queued = self.queued_shards_of(&e.id).await?;
            if !queued.is_empty() {
                out.push((e, queued));
            }
        }
        Ok(out)
    }

    async fn active_executions(&self, cursor: Option<&str>, limit: u32) -> Result<Page<Execution>> {
        let open = [
            ExecutionStatus::Queued.as_str(),
            ExecutionStatus::Running.as_str(),
        ];
        let (items, next_cursor) = self
            .index_after(2, keys::ACTIVE.into(), cursor, limit, |i| {
                has_status(i, &open)
            })
            .await?;
        Ok(Page {
            items: items.into_iter().map(execution_of).collect::<Result<_>>()?,
            next_cursor,
        })
    }

    async fn expired_shards(&self, now: Timestamp, limit: u32) -> Result<Vec<Shard>> {
        let held = [
            ShardStatus::Assigned.as_str(),
            ShardStatus::Running.as_str(),
        ];
        let below = Some(keys::ts(now));
        let items = self
            .index_head(0, keys::LEASE.into(), below, limit, |i| {
                has_status(i, &held)
            })
            .await?;
        items.into_iter().map(doc_of).collect()
    }

    async fn assign(&self, w: AssignmentWrite) -> Result<()> {
        let w = &w;
        let (shard, alloc) = (&w.shard, &w.allocation);
        let need = alloc.resources;
        let cap = w.runner_capacity;
        if need.slots > cap.slots
            || need.cpu_millis > cap.cpu_millis
            || need.memory_mb > cap.memory_mb
        {
            return Err(Error::conflict(Entity::Runner, &alloc.runner_id));
        }
        let shard_put = self
            .put(shard_item(shard)?)
            .condition_expression("version = :expected AND #status = :queued")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":expected", n(w.expected_shard_version))
            .expression_attribute_values(":queued", s(ShardStatus::Queued.as_str()))
            .build()
            .map_err(Error::storage)?;
        let take = self.take_capacity(&alloc.runner_id, cap, need)?;
        let alloc_put = self.allocation_put(alloc)?;
        let running = ExecutionStatus::Running.as_str();
        let mark_running = self
            .update(keys::execution(shard.execution_id.as_str()), keys::META)
            .update_expression(
                "SET #status = :running, gsi5pk = :execs_running, started_at = if_not_exists(started_at, :now), \
                 updated_at = :now ADD version :one, queued_shards :minus_one",
            )
            .condition_expression("#status IN (:queued, :running)")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":running", s(running))
            .expression_attribute_values(":queued", s(ExecutionStatus::Queued.as_str()))
            .expression_attribute_values(":execs_running", s(keys::execs_with_status(running)))
            .expression_attribute_values(":now", n(w.now.0))
            .expression_attribute_values(":one", n(1))
            // Claimed shards (dynamic, by_index) were never counted as queued.
            .expression_attribute_values(":minus_one", n(-i64::from(shard.mode.is_static())))
            .build()
            .map_err(Error::storage)?;
        let mut items = vec![
            TransactWriteItem::builder().put(shard_put).build(),
            TransactWriteItem::builder().update(take).build(),
            TransactWriteItem::builder().put(alloc_put).build(),
            TransactWriteItem::builder().update(mark_running).build(),
        ];
        if let Some(pool) = &w.cursor {
            let cursor = with(
                with(
                    key_of(keys::rr_cursor(pool), keys::META.to_owned()),
                    "gsi2pk",
                    s(keys::RR_CURSORS),
                ),
                "gsi2sk",
                s(pool.as_str()),
            );
            let cursor = with(
                with(cursor, "pool", s(pool.as_str())),
                "runner_id",
                s(alloc.runner_id.as_str()),
            );
            items.push(
                TransactWriteItem::builder()
                    .put(self.put(cursor).build().map_err(Error::storage)?)
                    .build(),
            );
        }
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(Cancelled::Conditions(failed)) => Err(match failed.iter().position(|f| *f) {
                Some(1) => Error::conflict(Entity::Runner, &alloc.runner_id),
                Some(3) => Error::conflict(Entity::Execution, &shard.execution_id),
                _ => shard_conflict(shard),
            }),
            Err(Cancelled::Conflict) => Err(shard_conflict(shard)),
        }
    }

    async fn queued_tests(&self, id: &ExecutionId, from: u32, limit: u32) -> Result<Vec<TestSpec>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let per = keys::TESTS_PER_CHUNK;
        let (first, last) = (from / per, from.saturating_add(limit - 1) / per);
        let pk = keys::test_queue(id.as_str());
        let wanted = (first..=last)
            .map(|c| (pk.clone(), keys::test_queue_chunk(c)))
            .collect();
        let mut chunks: Vec<(u32, Vec<TestSpec>)> = Vec::new();
        for item in self.batch_get(wanted).await? {
            let chunk: u32 = str_attr(&item, keys::SK)
                .and_then(|sk| sk.parse().ok())
                .ok_or_else(|| Error::Internal("a test queue chunk without its number".into()))?;
            let body = str_attr(&item, "tests")
                .ok_or_else(|| Error::Internal("a test queue chunk without its tests".into()))?;
            let pairs: Vec<(String, Option<u64>)> =
                serde_json::from_str(body).map_err(Error::storage)?;
            let tests = pairs
                .into_iter()
                .map(|(name, duration_hint_ms)| TestSpec {
                    name,
                    duration_hint_ms,
                })
                .collect();
            chunks.push((chunk, tests));
        }
        chunks.sort_by_key(|(c, _)| *c);
        Ok(chunks
            .into_iter()
            .flat_map(|(c, tests)| {
                let start = c * per;
                tests
                    .into_iter()
                    .enumerate()
                    .map(move |(i, t)| (start + i as u32, t))
            })
            .filter(|(at, _)| *at >= from && *at - from < limit)
            .map(|(_, t)| t)
            .collect())
    }

    async fn claim(&self, w: ClaimWrite) -> Result<()> {
        let w = &w;
        let (shard, alloc, execution) = (&w.shard, &w.allocation, &w.execution);
        let need = alloc.resources;
        let cap = w.runner_capacity;
        if !cap.covers(&need) {
            return Err(Error::conflict(Entity::Runner, &alloc.runner_id));
        }
        // The execution's record, and the batch out of its waiting set when
        // it is taken back out (one update: a transaction touches an item once).
        let mut attrs = vec![("doc", Some(to_av(execution)?))];
        attrs.extend(execution_state(execution));
        let mut change = versioned(attrs, w.expected_execution_version);
        if w.expected_shard_version.is_some() {
            change.expression.push_str(" DELETE returned :batch");
            change.values.insert(
                ":batch".into(),
                AttributeValue::Ns(vec![shard.index.to_string()]),
            );
        }
        let record = self.meta_update(keys::execution(execution.id.as_str()), change)?;
        let shard_put = match w.expected_shard_version {
            None => self
                .put(shard_item(shard)?)
                .condition_expression("attribute_not_exists(pk)"),
            Some(v) => self
                .put(shard_item(shard)?)
                .condition_expression("version = :expected AND #status = :queued")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":expected", n(v))
                .expression_attribute_values(":queued", s(ShardStatus::Queued.as_str())),
        }
        .build()
        .map_err(Error::storage)?;
        let items = vec![
            TransactWriteItem::builder().update(record).build(),
            TransactWriteItem::builder().put(shard_put).build(),
            TransactWriteItem::builder()
                .update(self.take_capacity(&alloc.runner_id, cap, need)?)
                .build(),
            TransactWriteItem::builder()
                .put(self.allocation_put(alloc)?)
                .build(),
        ];
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(Cancelled::Conditions(failed)) => Err(match failed.iter().position(|f| *f) {
                Some(1) => shard_conflict(shard),
                Some(2) => Error::conflict(Entity::Runner, &alloc.runner_id),
                _ => Error::conflict(Entity::Execution, &execution.id),
            }),
            Err(Cancelled::Conflict) => Err(Error::conflict(Entity::Execution, &execution.id)),
        }
    }

    async fn dynamic_executions(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Execution>> {
        let open = [
            ExecutionStatus::Queued.as_str(),
            ExecutionStatus::Running.as_str(),
        ];
        let (items, next_cursor) = self
            .index_after(0, keys::DYNAMIC.into(), cursor, limit, |i| {
                has_status(i, &open)
            })
            .await?;
        Ok(Page {
            items: items.into_iter().map(execution_of).collect::<Result<_>>()?,
            next_cursor,
        })
    }

    async fn update_shard(&self, u: ShardUpdate) -> Result<()> {
        let u = &u;
        let shard = &u.shard;
        let shard_put = || -> Result<TransactWriteItem> {
            Ok(TransactWriteItem::builder()
                .put(
                    self.put(shard_item(shard)?)
                        .condition_expression("version = :expected AND #status = :was")
                        .expression_attribute_names("#status", "status")
                        .expression_attribute_values(":expected", n(u.expected_version))
                        .expression_attribute_values(":was", s(u.expected_status.as_str()))
                        .build()
                        .map_err(Error::storage)?,
                )
                .build())
        };
        // Shards claimed by CI jobs never wait for the scheduler; dynamic
        // batches that come back wait for runners' claims.
        let delta = i64::from(shard.status == ShardStatus::Queued)
            - i64::from(u.expected_status == ShardStatus::Queued);
        let counter = || -> Result<Vec<TransactWriteItem>> {
            let exec = shard.execution_id.as_str();
            Ok(match (shard.mode, delta) {
                (_, 0) | (Mode::ByIndex, _) => vec![],
                (Mode::Static, _) => vec![count_queued(self, exec, delta)?],
                (Mode::Dynamic, _) => vec![count_returned(self, exec, shard.index, delta > 0)?],
            })
        };
        let mut items = vec![shard_put()?];
        if let Some(rel) = &u.release {
            items.extend(release_items(self, shard, rel)?);
        }
        items.extend(counter()?);
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            // Only the allocation was gone: this lease's capacity was already
            // given back, so the shard changes without a second release.
            Err(Cancelled::Conditions(failed))
                if !failed[0] && u.release.is_some() && failed.get(1) == Some(&true) =>
            {
                let mut items = vec![shard_put()?];
                items.extend(counter()?);
                match self.transact(items).await? {
                    Ok(()) => Ok(()),
                    Err(_) => Err(shard_conflict(shard)),
                }
            }
            Err(_) => Err(shard_conflict(shard)),
        }
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let mut partitions: Vec<String> = self
            .classes()
            .await?
            .into_iter()
            .map(|(class, _)| keys::pending(&class))
            .collect();
        partitions.push(keys::PENDING.to_owned());
        let mut pending = Vec::new();
        for partition in partitions {
            pending.extend(
                self.index_items(
                    self.query()
                        .index_name(keys::GSI[1].0)
                        .key_condition_expression("gsi2pk = :pending")
                        .expression_attribute_values(":pending", s(partition)),
                    is_pending,
                    |_| false,
                )
                .await?,
            );
        }
        let queued_shards = pending.iter().map(|i| num(i, "queued_shards")).sum();
        let oldest_queued_at = pending
            .iter()
            .filter_map(|i| str_attr(i, "pending2"))
            .filter_map(|sk| sk.split('#').next())
            .filter_map(|t| t.parse().ok())
            .min()
            .map(Timestamp);
        let in_flight_shards = self
            .count(
                self.query()
                    .index_name(keys::GSI[0].0)
                    .key_condition_expression("gsi1pk = :lease")
                    .expression_attribute_values(":lease", s(keys::LEASE)),
            )
            .await?;
        let active_executions = self
            .count(
                self.query()
                    .index_name(keys::GSI[2].0)
                    .key_condition_expression("gsi3pk = :active")
                    .expression_attribute_values(":active", s(keys::ACTIVE)),
            )
            .await?;
        Ok(QueueStats {
            queued_shards,
            in_flight_shards,
            active_executions,
            oldest_queued_at,
        })
    }

    async fn put_rule(&self, rule: &LoadBalancingRule) -> Result<()> {
        let id = rule.id.as_str();
        let it = with(
            with(
                item(keys::rule(id), keys::META, to_av(rule)?),
                "gsi2pk",
                s(keys::RULES),
            ),
            "gsi2sk",
            s(id),
        );
        self.put_plain(it).await
    }

    async fn list_rules(&self) -> Result<Vec<LoadBalancingRule>> {
        let query = self
            .query()
            .index_name(keys::GSI[1].0)
            .key_condition_expression("gsi2pk = :rules")
            .expression_attribute_values(":rules", s(keys::RULES));
        let items = self.index_items(query, everything, |_| false).await?;
        items.into_iter().map(doc_of).collect()
    }

    async fn delete_rule(&self, id: &RuleId) -> Result<bool> {
        let existed = self.delete_meta(keys::rule(id.as_str())).await?;
        self.delete_meta(keys::rr_cursor(&format!("rule:{id}")))
            .await?;
        Ok(existed)
    }

    async fn insert_alert_rule(&self, rule: &AlertRule) -> Result<()> {
        let id = rule.id.as_str();
        let mut it = item(keys::alert_rule(id), keys::META, to_av(rule)?);
        it.insert("version".into(), n(rule.version));
        it.insert("gsi2pk".into(), s(keys::ALERT_RULES));
        it.insert("gsi2sk".into(), s(id));
        if self.put_new(it).await? {
            Ok(())
        } else {
            Err(Error::conflict(Entity::AlertRule, id))
        }
    }

    async fn list_alert_rules(&self) -> Result<Vec<AlertRule>> {
        let query = self
            .query()
            .index_name(keys::GSI[1].0)
            .key_condition_expression("gsi2pk = :rules")
            .expression_attribute_values(":rules", s(keys::ALERT_RULES));
        let items = self.index_items(query, everything, |_| false).await?;
        items.into_iter().map(doc_of).collect()
    }

    async fn update_alert_rule(&self, rule: &AlertRule, expected_version: u64) -> Result<()> {
        let attrs = vec![
            ("doc", Some(to_av(rule)?)),
            ("version", Some(n(rule.version))),
        ];
        if self
            .update_versioned(keys::alert_rule(rule.id.as_str()), attrs, expected_version)
            .await?
        {
            Ok(())
        } else {
            Err(Error::conflict(Entity::AlertRule, &rule.id))
        }
    }

    async fn delete_alert_rule(&self, id: &AlertRuleId) -> Result<bool> {
        self.delete_meta(keys::alert_rule(id.as_str())).await
    }

    async fn round_robin_cursors(&self) -> Result<BTreeMap<String, RunnerId>> {
        let query = self
            .query()
            .index_name(keys::GSI[1].0)
            .key_condition_expression("gsi2pk = :cursors")
            .expression_attribute_values(":cursors", s(keys::RR_CURSORS));
        let items = self.index_items(query, everything, |_| false).await?;
        let mut out = BTreeMap::new();
        for it in items {
            if let (Some(pool), Some(runner)) = (str_attr(&it, "pool"), str_attr(&it, "runner_id"))
            {
                if let Ok(id) = RunnerId::parse(runner) {
                    out.insert(pool.clone(), id);
                }
            }
        }
        Ok(out)
    }

    async fn add_health_record(&self, record: &HealthRecord) -> Result<()> {
        let unique = ulid::Ulid::new().to_string();
        let it = with(
            item(
                keys::runner_log(record.runner_id.as_str()),
                keys::health(record.at, &unique),
                to_av(record)?,
            ),
            keys::EXPIRES_AT,
            expires_in(record.at, HEALTH_TTL_MS),
        );
        self.put_plain(it).await
    }

    async fn health_history(&self, id: &RunnerId, limit: u32) -> Result<Vec<HealthRecord>> {
        let query = self
            .query()
            .key_condition_expression("pk = :pk AND begins_with(sk, :health)")
            .filter_expression("expires_at > :now")
            .expression_attribute_values(":pk", s(keys::runner_log(id.as_str())))
            .expression_attribute_values(":health", s(keys::HEALTH_PREFIX))
            .expression_attribute_values(":now", n(now_seconds()))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32);
        let items = self
            .query_pages(query, |i| i.len() >= limit as usize)
            .await?;
        items.into_iter().take(limit as usize).map(doc_of).collect()
    }

    async fn add_violation(&self, v: &Violation) -> Result<()> {
        let unique = ulid::Ulid::new().to_string();
        let it = item(
            keys::runner_log(v.runner_id.as_str()),
            keys::violation(v.at, &unique),
            to_av(v)?,
        );
        let it = with(it, keys::EXPIRES_AT, expires_in(v.at, VIOLATION_TTL_MS));
        let it = with(it, "gsi2pk", s(keys::VIOLATIONS));
        let it = with(it, "gsi2sk", s(format!("{}#{unique}", keys::ts(v.at))));
        self.put_plain(it).await
    }

    async fn recent_violations(&self, since: Timestamp, limit: u32) -> Result<Vec<Violation>> {
        let query = self
            .query()
            .index_name(keys::GSI[1].0)
            .key_condition_expression("gsi2pk = :violations AND gsi2sk >= :since")
            .expression_attribute_values(":violations", s(keys::VIOLATIONS))
            .expression_attribute_values(":since", s(keys::ts(since)))
            .scan_index_forward(false)
            .limit(limit.clamp(1, 1000) as i32);
        // TTL deletes lazily (up to days late): expired items are skipped.
        let now = now_seconds();
        let live = |i: &Item| num(i, keys::EXPIRES_AT) as i64 > now;
        let items = self
            .index_items(query, live, |i| i.len() >= limit as usize)
            .await?;
        items.into_iter().take(limit as usize).map(doc_of).collect()
    }

    async fn put_token(&self, token: &ApiToken) -> Result<()> {
        if self
            .put_new(item(
                keys::token(token.id.as_str()),
                keys::META,
                to_av(token)?,
            ))
            .await?
        {
            Ok(())
        } else {
            Err(Error::conflict(Entity::Token, &token.id))
        }
    }

    async fn get_token(&self, id: &TokenId) -> Result<Option<ApiToken>> {
        self.get(keys::token(id.as_str()), keys::META)
            .await?
            .map(doc_of)
            .transpose()
    }

    async fn test_timings(&self, suite: &str, tests: &[String]) -> Result<Vec<TestTiming>> {
        let wanted = tests
            .iter()
            .map(|t| (keys::timings(suite), keys::timing_test(t)))
            .collect();
        let now = now_seconds();
        self.batch_get(wanted)
            .await?
            .into_iter()
            // TTL deletes lazily: a test not run for the TTL is forgotten now.
            .filter(|i| num(i, keys::EXPIRES_AT) as i64 > now)
            .map(doc_of)
            .collect()
    }

    async fn suite_timings(&self, suite: &str) -> Result<Vec<TestTiming>> {
        let now = now_seconds();
        self.query_all(
            self.query()
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(keys::timings(suite))),
        )
        .await?
        .into_iter()
        .filter(|i| num(i, keys::EXPIRES_AT) as i64 > now)
        .map(doc_of)
        .collect()
    }

    async fn put_test_timings(&self, timings: &[TestTiming]) -> Result<()> {
        let mut items = Vec::with_capacity(timings.len());
        for t in timings {
            let it = item(
                keys::timings(&t.suite),
                keys::timing_test(&t.test),
                to_av(t)?,
            );
            items.push(with(
                it,
                keys::EXPIRES_AT,
                expires_in(t.updated_at, TIMING_TTL_MS),
            ));
        }
        self.batch_put(items).await
    }

    async fn add_shard(
        &self,
        execution: &Execution,
        expected_version: u64,
        shard: &Shard,
    ) -> Result<()> {
        let mut attrs = vec![("doc", Some(to_av(execution)?))];
        attrs.extend(execution_state(execution));
        let mut change = versioned(attrs, expected_version);
        // One update of the execution item: its record and its count of
        // shards waiting for the scheduler (a transaction may not touch an
        // item twice).
        let queued = i64::from(shard.status == ShardStatus::Queued && shard.mode.is_static());
        change.expression.push_str(" ADD queued_shards :queued");
        change.values.insert(":queued".into(), n(queued));
        if shard.status == ShardStatus::Queued && shard.mode == Mode::Dynamic {
            // A retry of a dynamic batch's failed tests waits for a claim.
            change.expression.push_str(", returned :batch");
            change.values.insert(
                ":batch".into(),
                AttributeValue::Ns(vec![shard.index.to_string()]),
            );
        }
        let update = self.meta_update(keys::execution(execution.id.as_str()), change)?;
        let put = self
            .put(shard_item(shard)?)
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(Error::storage)?;
        let items = vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder().put(put).build(),
        ];
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::conflict(Entity::Execution, &execution.id)),
        }
    }

    async fn put_results(&self, execution: &ExecutionId, chunks: &[ResultChunk]) -> Result<()> {
        let now = Timestamp(now_seconds() * 1000);
        let items = chunks
            .iter()
            .map(|c| {
                let it = key_of(
                    keys::results(execution.as_str()),
                    keys::result_chunk(c.shard_index, c.lease_id.as_str(), c.chunk),
                );
                let it = with(it, "body", s(&c.body));
                with(it, keys::EXPIRES_AT, expires_in(now, RESULTS_TTL_MS))
            })
            .collect();
        self.batch_put(items).await
    }

    async fn results(
        &self,
        execution: &ExecutionId,
        run: Option<(u32, &LeaseId)>,
    ) -> Result<Vec<ResultChunk>> {
        let query = self
            .query()
            .expression_attribute_values(":pk", s(keys::results(execution.as_str())))
            .consistent_read(true);
        let query = match run {
            None => query.key_condition_expression("pk = :pk"),
            Some((index, lease)) => query
                .key_condition_expression("pk = :pk AND begins_with(sk, :run)")
                .expression_attribute_values(":run", s(keys::result_run(index, lease.as_str()))),
        };
        let items = self.query_all(query).await?;
        items
            .into_iter()
            .map(|it| {
                let sk = str_attr(&it, keys::SK).cloned().unwrap_or_default();
                let mut parts = sk.splitn(3, '#');
                let bad = || Error::Internal(format!("result chunk with key {sk:?}"));
                let shard_index = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let lease_id = parts
                    .next()
                    .and_then(|p| LeaseId::parse(p).ok())
                    .ok_or_else(bad)?;
                let chunk = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                Ok(ResultChunk {
                    shard_index,
                    lease_id,
                    chunk,
                    body: str_attr(&it, "body").cloned().ok_or_else(bad)?,
                })
            })
            .collect()
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .get(keys::setting(key), keys::META)
            .await?
            .and_then(|i| str_attr(&i, "value").cloned()))
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        self.put_plain(with(
            key_of(keys::setting(key), keys::META.to_owned()),
            "value",
            s(value),
        ))
        .await
    }

    async fn init_setting(&self, key: &str, value: &str) -> Result<String> {
        let it = with(
            key_of(keys::setting(key), keys::META.to_owned()),
            "value",
            s(value),
        );
        self.put_new(it).await?;
        self.get_setting(key)
            .await?
            .ok_or_else(|| Error::Internal(format!("setting {key} vanished after it was written")))
    }
}
