//! The embedded store: SQLite in WAL mode, each port operation atomic
//! (inside a group-committed transaction, see [`thread`]) with the same
//! conditions the DynamoDB adapter expresses as condition expressions.
//! Entities are stored as JSON documents beside the columns that queries and
//! conditions need; the hot ones are also mirrored in memory (see [`mirror`]).
//! Derived state that changes with every assignment (runner load,
//! allocations) lives only in the mirror, rebuilt at open from the shards'
//! `held_*` columns; writes check their conditions on it (see
//! [`mirror::View`]).
//!
//! Committed transactions are in the WAL before a call returns, so they
//! survive `kill -9` of the process (`synchronous=NORMAL` trades only
//! power-loss durability of the last commits for throughput).

use crate::auth::ApiToken;
use crate::domain::{
    AlertRule, Allocation, Execution, ExecutionStatus, HealthRecord, LoadBalancingRule, Resources,
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
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SCHEMA: &str = r#"
-- A runner's load (what its shards hold) is not stored here: it is derived
-- from the shards' `held_*` columns into the mirror.
CREATE TABLE IF NOT EXISTS runners (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, last_heartbeat INTEGER NOT NULL, version INTEGER NOT NULL,
    cap_slots INTEGER NOT NULL, cap_cpu INTEGER NOT NULL, cap_memory INTEGER NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runners_by_heartbeat ON runners(status, last_heartbeat);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, suite TEXT NOT NULL, priority INTEGER NOT NULL,
    created_at INTEGER NOT NULL, deadline INTEGER NOT NULL, version INTEGER NOT NULL, doc TEXT NOT NULL);
-- Listing walks the primary key newest first; an index on status would
-- tempt the planner away from the partial index the sweeps rely on.
DROP INDEX IF EXISTS executions_by_status;
DROP INDEX IF EXISTS executions_by_suite;
CREATE INDEX IF NOT EXISTS executions_active ON executions(deadline) WHERE status IN ('queued', 'running');
-- The scheduler's pending order is kept in memory (mirror.rs); indexes for
-- it only cost every assignment an index update.
DROP INDEX IF EXISTS executions_pending_priority;
DROP INDEX IF EXISTS executions_pending_age;
-- `held_*`: the resources the shard's current lease holds on `runner_id`
-- (its allocation), NULL when it holds none. `doc`: the rest of the shard,
-- a compact record (see record.rs; JSON text if written before schema
-- version 5). Its test list is in `shard_tests`, written once: a row is
-- rewritten whole at every change of state.
-- Tables written at every claim and report, and the tests' histories
-- (each rewritten whenever its test runs), are WITHOUT ROWID: a row lives
-- in its primary key's tree alone, so a write changes one B-tree where a
-- rowid table and its key's index change two.
CREATE TABLE IF NOT EXISTS shards (
    execution_id TEXT NOT NULL, idx INTEGER NOT NULL, status TEXT NOT NULL, runner_id TEXT,
    lease_id TEXT, deadline INTEGER, version INTEGER NOT NULL, doc TEXT NOT NULL,
    held_slots INTEGER, held_cpu INTEGER, held_memory INTEGER,
    PRIMARY KEY (execution_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shard_tests (
    execution_id TEXT NOT NULL, idx INTEGER NOT NULL, tests TEXT NOT NULL,
    PRIMARY KEY (execution_id, idx)) WITHOUT ROWID;
-- A dynamic execution's tests in claim order, written once: its batches
-- are cut from it as runners claim.
CREATE TABLE IF NOT EXISTS test_queues (execution_id TEXT PRIMARY KEY, tests TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS shards_in_flight ON shards(deadline) WHERE status IN ('assigned', 'running');
DROP INDEX IF EXISTS shards_queued;
CREATE TABLE IF NOT EXISTS rules (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rr_cursors (pool TEXT PRIMARY KEY, runner_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS health (seq INTEGER PRIMARY KEY AUTOINCREMENT, runner_id TEXT NOT NULL, at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS health_by_runner ON health(runner_id, at);
CREATE TABLE IF NOT EXISTS violations (seq INTEGER PRIMARY KEY AUTOINCREMENT, runner_id TEXT NOT NULL, at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS violations_by_time ON violations(at);
CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS timings (suite TEXT NOT NULL, test TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (suite, test)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (execution_id TEXT NOT NULL, shard_index INTEGER NOT NULL, lease_id TEXT NOT NULL, chunk INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (execution_id, shard_index, lease_id, chunk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alert_rules (id TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (hour INTEGER NOT NULL, suite TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (hour, suite, name));
"#;

mod mirror;
mod record;
mod thread;

use mirror::{Change, Held, Live, Mirror, View};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use thread::DbThread;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds a rollup's counters to its hour-and-suite rows.
fn add_counters(tx: &Connection, r: &Rollup) -> Result<()> {
    let mut add = tx.prepare_cached(
        "INSERT INTO metrics (hour, suite, name, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (hour, suite, name) DO UPDATE SET value = value + excluded.value",
    )?;
    for (name, value) in &r.counters {
        add.execute(params![r.hour.0, r.suite, name, *value as i64])?;
    }
    Ok(())
}

/// SQLite-backed [`Store`]: one database thread owns the connection (see
/// [`thread`]) and takes every write; hot reads come from the mirror, the
/// rest are sent to the thread.
pub struct SqliteStore {
    db: DbThread,
    /// Committed hot state, read without the database thread (see [`mirror`]).
    mirror: Arc<RwLock<Mirror>>,
    /// Runners with a heartbeat write queued and not yet written, and the
    /// time it will write.
    beats_queued: Arc<Mutex<HashMap<RunnerId, Timestamp>>>,
    /// Files to remove on drop (temporary stores).
    temporary: Option<PathBuf>,
}

fn to_doc<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(Error::storage)
}

fn from_doc<T: DeserializeOwned>(doc: &str) -> Result<T> {
    serde_json::from_str(doc).map_err(Error::storage)
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::storage(e)
    }
}

/// Bumped whenever the tables change shape. 2: allocations and runner
/// load derived from the shards' `held_*` columns. 3: a shard's test list
/// in its own column. 4: no `queued_shards` counter on executions (the
/// mirror counts them). 5: shard documents written as compact records
/// (see [`record`]), test lists in their own table. 6: dynamic executions'
/// tests in claim order (`test_queues`), their batches cut when claimed.
/// 7: shards, their test lists, result chunks and the tests' histories in
/// WITHOUT ROWID tables.
const SCHEMA_VERSION: i64 = 7;

/// Brings a version 1 data directory to version 2 in one transaction: each
/// allocation's resources move onto its shard's row, and the allocations
/// table goes. (The runners' `used_*` columns stay, unused.)
const MIGRATE_FROM_1: &str = r#"
BEGIN;
ALTER TABLE shards ADD COLUMN held_slots INTEGER;
ALTER TABLE shards ADD COLUMN held_cpu INTEGER;
ALTER TABLE shards ADD COLUMN held_memory INTEGER;
UPDATE shards SET held_slots = json_extract(a.doc, '$.resources.slots'),
    held_cpu = json_extract(a.doc, '$.resources.cpu_millis'),
    held_memory = json_extract(a.doc, '$.resources.memory_mb')
  FROM allocations a
  WHERE a.execution_id = shards.execution_id AND a.idx = shards.idx AND a.lease_id = shards.lease_id;
DROP TABLE allocations;
PRAGMA user_version = 2;
COMMIT;
"#;

/// Version 2 to 3, in one transaction: each shard's test list moves out of
/// its document into the `tests` column (a later write of the document
/// would otherwise drop it).
const MIGRATE_FROM_2: &str = r#"
BEGIN;
ALTER TABLE shards ADD COLUMN tests TEXT NOT NULL DEFAULT '[]';
UPDATE shards SET tests = coalesce(json_extract(doc, '$.tests'), '[]'),
    doc = json_set(doc, '$.tests', json('[]'));
PRAGMA user_version = 3;
COMMIT;
"#;

/// Version 3 to 4: the executions' queued-shard counter goes. Every
/// assignment and every shard created moved it, one statement each, to
/// serve only `queue_stats`, which the mirror now answers.
const MIGRATE_FROM_3: &str = r#"
BEGIN;
ALTER TABLE executions DROP COLUMN queued_shards;
PRAGMA user_version = 4;
COMMIT;
"#;

/// Version 4 to 5, in one transaction: test lists move into their own
/// table. Shard documents written as JSON are still read, and each takes
/// the compact form at its shard's next change.
const MIGRATE_FROM_4: &str = r#"
BEGIN;
CREATE TABLE shard_tests (
    execution_id TEXT NOT NULL, idx INTEGER NOT NULL, tests TEXT NOT NULL,
    PRIMARY KEY (execution_id, idx));
INSERT INTO shard_tests (execution_id, idx, tests) SELECT execution_id, idx, tests FROM shards;
ALTER TABLE shards DROP COLUMN tests;
PRAGMA user_version = 5;
COMMIT;
"#;

/// Version 5 to 6: the table of dynamic executions' tests (dynamic
/// executions queued before it keep the batches cut at queue time, and
/// claims take those); a runner's `last_heartbeat` column becomes the time
/// it is silent at (its last heartbeat plus its silence limit, which those
/// registered before it kept have as the default 90 s).
const MIGRATE_FROM_5: &str = r#"
BEGIN;
CREATE TABLE IF NOT EXISTS test_queues (execution_id TEXT PRIMARY KEY, tests TEXT NOT NULL);
UPDATE runners SET last_heartbeat = last_heartbeat + 90000 WHERE last_heartbeat < 9000000000000000000;
PRAGMA user_version = 6;
COMMIT;
"#;

/// Version 6 to 7, in one transaction: the shards, their test lists, the
/// result chunks and the tests' histories move into WITHOUT ROWID tables
/// of the same columns (see the schema), the in-flight index onto the new
/// shards table.
const MIGRATE_FROM_6: &str = r#"
BEGIN;
CREATE TABLE shards_7 (
    execution_id TEXT NOT NULL, idx INTEGER NOT NULL, status TEXT NOT NULL, runner_id TEXT,
    lease_id TEXT, deadline INTEGER, version INTEGER NOT NULL, doc TEXT NOT NULL,
    held_slots INTEGER, held_cpu INTEGER, held_memory INTEGER,
    PRIMARY KEY (execution_id, idx)) WITHOUT ROWID;
INSERT INTO shards_7 (execution_id, idx, status, runner_id, lease_id, deadline, version, doc,
    held_slots, held_cpu, held_memory)
  SELECT execution_id, idx, status, runner_id, lease_id, deadline, version, doc,
    held_slots, held_cpu, held_memory FROM shards;
DROP TABLE shards;
ALTER TABLE shards_7 RENAME TO shards;
CREATE INDEX shards_in_flight ON shards(deadline) WHERE status IN ('assigned', 'running');
CREATE TABLE shard_tests_7 (
    execution_id TEXT NOT NULL, idx INTEGER NOT NULL, tests TEXT NOT NULL,
    PRIMARY KEY (execution_id, idx)) WITHOUT ROWID;
INSERT INTO shard_tests_7 (execution_id, idx, tests) SELECT execution_id, idx, tests FROM shard_tests;
DROP TABLE shard_tests;
ALTER TABLE shard_tests_7 RENAME TO shard_tests;
CREATE TABLE results_7 (execution_id TEXT NOT NULL, shard_index INTEGER NOT NULL, lease_id TEXT NOT NULL,
    chunk INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (execution_id, shard_index, lease_id, chunk)) WITHOUT ROWID;
INSERT INTO results_7 (execution_id, shard_index, lease_id, chunk, body)
  SELECT execution_id, shard_index, lease_id, chunk, body FROM results;
DROP TABLE results;
ALTER TABLE results_7 RENAME TO results;
CREATE TABLE timings_7 (suite TEXT NOT NULL, test TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (suite, test)) WITHOUT ROWID;
INSERT INTO timings_7 (suite, test, doc) SELECT suite, test, doc FROM timings;
DROP TABLE timings;
ALTER TABLE timings_7 RENAME TO timings;
PRAGMA user_version = 7;
COMMIT;
"#;

/// Migrates a data directory written by an earlier version, and refuses one
/// written by a later or unknown version instead of failing later on a
/// missing column.
fn check_schema_version(conn: &Connection) -> Result<()> {
    let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_tables: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runners')",
        [],
        |r| r.get(0),
    )?;
    for (from, migration) in [
        (1, MIGRATE_FROM_1),
        (2, MIGRATE_FROM_2),
        (3, MIGRATE_FROM_3),
        (4, MIGRATE_FROM_4),
        (5, MIGRATE_FROM_5),
        (6, MIGRATE_FROM_6),
    ] {
        if has_tables && version == from {
            if let Err(e) = conn.execute_batch(migration) {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
            version = from + 1;
        }
    }
    if has_tables && version != SCHEMA_VERSION {
        return Err(Error::Internal(format!(
            "the data directory holds schema version {version}, this TMS needs {SCHEMA_VERSION}; \
             start with an empty --data-dir"
        )));
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `tms.db` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::storage)?;
        Self::open(&dir.join("tms.db"))
    }

    pub fn open(path: &Path) -> Result<Self> {
        let conn = Self::connect(path).map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => {
                Error::Internal(format!(
                    "{} is in use by another tms serve (one server per data directory)",
                    path.display()
                ))
            }
            other => Error::storage(other),
        })?;
        check_schema_version(&conn)?;
        conn.execute_batch(SCHEMA)?;
        let mirror = Arc::new(RwLock::new(load_mirror(&conn)?));
        Ok(SqliteStore {
            db: DbThread::start(conn, mirror.clone())?,
            mirror,
            beats_queued: Arc::default(),
            temporary: None,
        })
    }

    /// The one connection, locked for this process.
    fn connect(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        // Nothing else may hold the file: fail at once if something does.
        conn.busy_timeout(std::time::Duration::ZERO)?;
        // One thread owns the only connection, so the file lock is taken once
        // and kept: no lock and unlock system calls around every transaction,
        // and the WAL index lives in memory instead of shared memory. It also
        // stops a second server from opening the same data directory.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The database thread checkpoints when it is idle (see `thread`);
        // SQLite's automatic checkpoint, inside a COMMIT, only bounds the WAL
        // (256 MB) for a server that never is.
        conn.pragma_update(None, "wal_autocheckpoint", 64 * 1024)?;
        // More distinct statements than rusqlite's default 16 are in use; a
        // smaller cache re-parses SQL on hot paths.
        conn.set_prepared_statement_cache_capacity(128);
        // 2 to 64 MB of page cache made no measurable difference in the load
        // benchmark; 8 MB keeps the server small.
        conn.pragma_update(None, "cache_size", -8192)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        Ok(conn)
    }

    /// A private store in a temporary file, removed when the store is dropped (for tests).
    pub fn temporary() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("tms-{}.db", ulid::Ulid::new()));
        let mut store = Self::open(&path)?;
        store.temporary = Some(path);
        Ok(store)
    }

    /// Runs `work` as one atomic write (see [`thread`]); it records what it
    /// changes of the mirrored entities.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Vec<Change>) -> Result<T> + Send + 'static,
    {
        self.db.write(work).await
    }

    /// Runs `work` on committed state; multi-query reads see one state.
    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.db.read(work).await
    }

    /// Checks that the in-memory mirror equals the hot set loaded afresh
    /// from the database. Both are read on the database thread between
    /// groups, when every committed change is applied. A difference is a
    /// bug in the store; the randomized invariant tests call this after
    /// every step.
    pub async fn verify_mirror(&self) -> Result<()> {
        self.db
            .read_viewed(|c, view| {
                let fresh = load_mirror(c)?;
                match view.committed().difference(&fresh) {
                    None => Ok(()),
                    Some(what) => Err(Error::Internal(format!(
                        "the store's mirror differs from the database at {what}"
                    ))),
                }
            })
            .await
    }

    /// Reads the mirror (committed state, see [`mirror`]).
    fn mirrored<T>(&self, read: impl FnOnce(&Mirror) -> T) -> T {
        read(&self.mirror.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Fills the mirror from the database at start.
fn load_mirror(c: &Connection) -> Result<Mirror> {
    let mut mirror = Mirror::default();
    for runner in docs::<Runner>(c, "SELECT doc FROM runners", [])? {
        mirror.apply(Change::NewRunner(Box::new(runner)));
    }
    // From the durable columns, not the in-memory tables: `verify_mirror`
    // checks the mirror against what a restart would rebuild.
    let held = held_leases(c)?;
    for h in &held {
        mirror.apply(Change::Load {
            runner: h.runner.clone(),
            resources: h.resources,
            add: true,
        });
    }
    let active: Vec<Execution> = docs(
        c,
        "SELECT doc FROM executions WHERE status IN ('queued', 'running')",
        [],
    )?;
    for e in active {
        let shards = shards_of(c, e.id.as_str())?;
        let queue = test_queue(c, &e.id)?;
        let id = e.id.clone();
        mirror.apply(Change::Execution(Box::new(e)));
        if let Some(tests) = queue {
            mirror.apply(Change::Queue {
                execution: id,
                tests,
            });
        }
        for s in shards {
            mirror.apply(Change::Shard(s));
        }
    }
    for h in held {
        mirror.apply(Change::Allocated {
            runner: h.runner,
            execution: h.execution,
            index: h.index,
            lease: h.lease,
        });
    }
    for rule in docs::<LoadBalancingRule>(c, "SELECT doc FROM rules", [])? {
        mirror.apply(Change::Rule(rule));
    }
    let mut stmt = c.prepare("SELECT pool, runner_id FROM rr_cursors")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        if let Ok(runner) = RunnerId::parse(&row.get::<_, String>(1)?) {
            mirror.apply(Change::Cursor {
                pool: row.get(0)?,
                runner,
            });
        }
    }
    Ok(mirror)
}

/// A dynamic execution's tests in claim order, if it has them.
fn test_queue(c: &Connection, id: &ExecutionId) -> Result<Option<Arc<[TestSpec]>>> {
    let doc: Option<String> = c
        .prepare_cached("SELECT tests FROM test_queues WHERE execution_id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    doc.map(|d| {
        from_doc::<Vec<(String, Option<u64>)>>(&d).map(|tests| {
            tests
                .into_iter()
                .map(|(name, duration_hint_ms)| TestSpec {
                    name,
                    duration_hint_ms,
                })
                .collect()
        })
    })
    .transpose()
}

/// One allocation as the shards table stores it.
#[derive(Debug, PartialEq)]
struct HeldLease {
    runner: RunnerId,
    execution: ExecutionId,
    index: u32,
    lease: LeaseId,
    resources: Resources,
}

/// Every allocation, from the shards' `held_*` columns (an allocation
/// only exists while its shard is in flight, so the partial index of
/// in-flight shards serves this).
fn held_leases(c: &Connection) -> Result<Vec<HeldLease>> {
    let mut stmt = c.prepare_cached(
        "SELECT runner_id, execution_id, idx, lease_id, held_slots, held_cpu, held_memory FROM shards
         WHERE status IN ('assigned', 'running') AND held_slots IS NOT NULL
         ORDER BY runner_id, execution_id, idx",
    )?;
    let mut rows = stmt.query([])?;
    let mut held = Vec::new();
    while let Some(row) = rows.next()? {
        held.push(HeldLease {
            runner: RunnerId::parse(&row.get::<_, String>(0)?)?,
            execution: ExecutionId::parse(&row.get::<_, String>(1)?)?,
            index: row.get(2)?,
            lease: LeaseId::parse(&row.get::<_, String>(3)?)?,
            resources: Resources::new(row.get(4)?, row.get(5)?, row.get(6)?),
        });
    }
    Ok(held)
}

/// Records an execution write for the mirror. One that comes back from a
/// finished state brings its shards along: the mirror had let them go.
fn mirror_execution(
    tx: &Connection,
    ch: &mut Vec<Change>,
    e: &Execution,
    was_finished: bool,
) -> Result<()> {
    ch.push(Change::Execution(Box::new(e.clone())));
    if was_finished && !e.status.is_terminal() {
        ch.extend(shards_of(tx, e.id.as_str())?.into_iter().map(Change::Shard));
    }
    Ok(())
}

/// The stored execution's version and whether it is finished.
fn execution_state(tx: &Connection, id: &ExecutionId) -> Result<Option<(u64, bool)>> {
    Ok(tx
        .prepare_cached(
            "SELECT version, status NOT IN ('queued', 'running') FROM executions WHERE id = ?1",
        )?
        .query_row([id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(path) = &self.temporary {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

fn docs<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?;
    rows.map(|doc| from_doc(&doc?)).collect()
}

/// A shard as the store writes it: its record (see [`record`]; rewritten
/// at every change of state) and its test list, written once, at insert,
/// into its own table. SQLite rewrites a row whole, so a list of hundreds
/// of tests in the shard's row was copied into every write of it, and it
/// filled the pages each group commit writes.
struct ShardDocs {
    state: Vec<u8>,
    tests: String,
}

impl ShardDocs {
    /// Serialises `shard` (on the caller's thread, not the database
    /// thread).
    fn of(shard: &Shard) -> Result<Self> {
        Ok(ShardDocs {
            state: Self::state(shard)?,
            tests: to_doc(&shard.tests)?,
        })
    }

    /// The record alone, for a write of a stored shard.
    fn state(shard: &Shard) -> Result<Vec<u8>> {
        record::encode(shard)
    }
}

/// `SELECT` of the shard columns [`shard_from_row`] reads, then `$rest`.
macro_rules! select_shards {
    ($rest:literal) => {
        concat!(
            "SELECT s.execution_id, s.idx, s.status, s.runner_id, s.lease_id, s.deadline, s.version, s.doc, t.tests
             FROM shards s JOIN shard_tests t ON t.execution_id = s.execution_id AND t.idx = s.idx ",
            $rest
        )
    };
}

/// A shard from its row (selected by [`select_shards!`]). A `doc` written
/// before schema version 5 is the whole shard as JSON.
fn shard_from_row(row: &rusqlite::Row<'_>) -> Result<Shard> {
    let tests: Arc<[String]> = from_doc(&row.get::<_, String>(8)?)?;
    match row.get_ref(7)? {
        rusqlite::types::ValueRef::Text(json) => {
            let mut shard: Shard = serde_json::from_slice(json).map_err(Error::storage)?;
            shard.tests = tests;
            Ok(shard)
        }
        rusqlite::types::ValueRef::Blob(doc) => record::decode(
            record::Columns {
                execution_id: row.get(0)?,
                index: row.get(1)?,
                status: row.get(2)?,
                runner_id: row.get(3)?,
                lease_id: row.get(4)?,
                deadline: row.get(5)?,
                version: row.get(6)?,
            },
            doc,
            tests,
        ),
        other => Err(Error::Internal(format!(
            "a shard document of type {:?}",
            other.data_type()
        ))),
    }
}

/// Shards selected by [`select_shards!`].
fn shard_rows(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Shard>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut shards = Vec::new();
    while let Some(row) = rows.next()? {
        shards.push(shard_from_row(row)?);
    }
    Ok(shards)
}

fn shards_of(conn: &Connection, id: &str) -> Result<Vec<Shard>> {
    shard_rows(
        conn,
        select_shards!("WHERE s.execution_id = ?1 ORDER BY s.idx"),
        [id],
    )
}

fn load_execution_doc(conn: &Connection, id: &str) -> Result<Option<Execution>> {
    let doc: Option<String> = conn
        .prepare_cached("SELECT doc FROM executions WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    doc.map(|d| from_doc(&d)).transpose()
}

/// `doc` is `e` serialised (by the caller, off the database thread).
/// The work of a write on the database thread that checks its conditions
/// against the thread's [`View`].
trait ViewedWork:
    FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<()> + Send + 'static
{
}

impl<F> ViewedWork for F where
    F: FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<()> + Send + 'static
{
}

/// The write of a claim ([`Store::claim`]); with `after`, the claim rides
/// on a report: it stands only if that shard (execution, index) is at the
/// version the report wrote, in the same group.
fn claim_job(w: ClaimWrite, after: Option<(ExecutionId, u32, u64)>) -> Result<impl ViewedWork> {
    // Serialised on the caller's thread, as for an assignment.
    let exec_doc = to_doc(&w.execution)?;
    let shard_docs = match w.expected_shard_version {
        None => ShardDocs::of(&w.shard)?,
        Some(_) => ShardDocs {
            state: ShardDocs::state(&w.shard)?,
            tests: String::new(),
        },
    };
    Ok(
        move |tx: &Connection, view: &View<'_>, ch: &mut Vec<Change>| {
            let (shard, alloc, execution) = (&w.shard, &w.allocation, &w.execution);
            // Every check before the first change (see `thread`).
            // Condition 0: the report it rides on stood.
            if let Some((reported, index, version)) = &after {
                if view.shard(reported, *index).map(|(v, _)| v) != Some(*version) {
                    return Err(Error::conflict(
                        Entity::Shard,
                        format!("{reported}#{index}"),
                    ));
                }
            }
            // Condition 1: the execution is unfinished and as the claim read it.
            let indexed = match view.live_execution(&execution.id) {
                Some(live) if live.version() == w.expected_execution_version => live.indexed(),
                _ => return Err(Error::conflict(Entity::Execution, &execution.id)),
            };
            // Condition 2: a batch cut now is new; one taken back out is
            // still queued as it was read.
            let stored = view.shard(&execution.id, shard.index);
            let batch_ok = match w.expected_shard_version {
                None => stored.is_none(),
                Some(v) => stored == Some((v, ShardStatus::Queued)),
            };
            if !batch_ok {
                return Err(Error::conflict(
                    Entity::Shard,
                    format!("{}#{}", shard.execution_id, shard.index),
                ));
            }
            // Condition 3: the runner is active and has room.
            let taken = room_for(view, alloc)?;
            let need = alloc.resources;
            if indexed == (execution.status, execution.deadline) {
                rewrite_execution_doc(tx, execution, &exec_doc)?;
            } else {
                write_execution(tx, execution, &exec_doc)?;
            }
            match w.expected_shard_version {
                None => insert_shard_holding(tx, shard, &shard_docs, Some(need))?,
                Some(v) => {
                    if !put_shard(tx, shard, &shard_docs.state, v, Holds::Take(need))? {
                        return Err(Error::Internal(
                            "a shard's stored version differs from the mirror's".into(),
                        ));
                    }
                }
            }
            ch.push(taken);
            ch.push(Change::Execution(Box::new(w.execution)));
            ch.push(allocated(w.allocation));
            ch.push(Change::Shard(w.shard));
            Ok(())
        },
    )
}

/// The condition of a write that allocates: the runner is active and has
/// room for `alloc`. The mirror change that takes the room.
fn room_for(view: &View<'_>, alloc: &Allocation) -> Result<Change> {
    let need = alloc.resources;
    let room = view
        .runner(&alloc.runner_id)
        .is_some_and(|(status, capacity, load)| {
            status == RunnerStatus::Active && capacity.covers(&load.plus(&need))
        });
    if !room {
        return Err(Error::conflict(Entity::Runner, &alloc.runner_id));
    }
    Ok(Change::Load {
        runner: alloc.runner_id.clone(),
        resources: need,
        add: true,
    })
}

/// The mirror change that records an allocation.
fn allocated(alloc: Allocation) -> Change {
    Change::Allocated {
        runner: alloc.runner_id,
        execution: alloc.execution_id,
        index: alloc.shard_index,
        lease: alloc.lease_id,
    }
}

/// The write of a shard change with the results of the run it records
/// ([`Store::finish_shard`]).
fn finish_job(u: ShardUpdate, results: Vec<ResultChunk>) -> Result<impl ViewedWork> {
    let doc = ShardDocs::state(&u.shard)?;
    Ok(
        move |tx: &Connection, view: &View<'_>, ch: &mut Vec<Change>| {
            let shard = &u.shard;
            // The run's results and the shard that records it, in one
            // transaction: a reader sees both or neither.
            insert_results(tx, &shard.execution_id, &results)?;
            // The check and the first change in one: the version the caller
            // read (with `expected_status`) or nothing.
            let held = match &u.release {
                Some(rel) => Holds::Release(rel.lease_id.as_str()),
                None => Holds::Keep,
            };
            if !put_shard(tx, shard, &doc, u.expected_version, held)? {
                return Err(Error::conflict(
                    Entity::Shard,
                    format!("{}#{}", shard.execution_id, shard.index),
                ));
            }
            if let Some(rel) = &u.release {
                release(view, ch, shard, rel);
            }
            ch.push(Change::Shard(u.shard));
            Ok(())
        },
    )
}

fn write_execution(tx: &Connection, e: &Execution, doc: &str) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO executions (id, status, suite, priority, created_at, deadline, version, doc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(id) DO UPDATE SET status = ?2, deadline = ?6, version = ?7, doc = ?8",
    )?
    .execute(params![
        e.id.as_str(),
        e.status.as_str(),
        e.suite,
        e.priority,
        e.created_at.0,
        e.deadline.0,
        e.version,
        doc
    ])?;
    Ok(())
}

/// Rewrites a stored execution's version and document only, for a write
/// that leaves its status and deadline as they are: the row's indexed
/// columns untouched, its index is not rewritten (a claim's commit writes
/// one page fewer).
fn rewrite_execution_doc(tx: &Connection, e: &Execution, doc: &str) -> Result<()> {
    let changed = tx
        .prepare_cached("UPDATE executions SET version = ?2, doc = ?3 WHERE id = ?1")?
        .execute(params![e.id.as_str(), e.version, doc])?;
    if changed != 1 {
        return Err(Error::Internal(format!(
            "execution {} is in the mirror but not in the database",
            e.id
        )));
    }
    Ok(())
}

/// What a shard write does to the resources its lease holds (the durable
/// half of an allocation, the `held_*` columns).
enum Holds<'a> {
    Keep,
    /// The new lease holds these.
    Take(Resources),
    /// This lease lets go of what it holds (if it is still the row's).
    Release(&'a str),
}

/// Runs a shard statement whose parameters ?1 to ?8 are the row's columns
/// and document, followed by `extra`.
fn execute_shard(
    stmt: &mut rusqlite::CachedStatement<'_>,
    s: &Shard,
    doc: &[u8],
    extra: &[&dyn rusqlite::ToSql],
) -> Result<usize> {
    let (runner, lease) = (
        s.runner_id.as_ref().map(|r| r.as_str()),
        s.lease_id.as_ref().map(|l| l.as_str()),
    );
    let (execution, status, deadline) = (
        s.execution_id.as_str(),
        s.status.as_str(),
        s.deadline.map(|d| d.0),
    );
    let mut values =
        params![execution, s.index, status, runner, lease, deadline, s.version, doc].to_vec();
    values.extend_from_slice(extra);
    Ok(stmt.execute(values.as_slice())?)
}

/// Inserts a new shard (holding nothing).
fn insert_shard(tx: &Connection, s: &Shard, docs: &ShardDocs) -> Result<()> {
    insert_shard_holding(tx, s, docs, None)
}

/// Inserts a new shard whose lease holds `held` (a batch cut at its claim).
fn insert_shard_holding(
    tx: &Connection,
    s: &Shard,
    docs: &ShardDocs,
    held: Option<Resources>,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO shards (execution_id, idx, status, runner_id, lease_id, deadline, version, doc,
           held_slots, held_cpu, held_memory)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let held = held.map(|r| [r.slots, r.cpu_millis, r.memory_mb]);
    let columns: Vec<Option<u32>> = match held {
        Some(h) => h.into_iter().map(Some).collect(),
        None => vec![None; 3],
    };
    let extra: Vec<&dyn rusqlite::ToSql> =
        columns.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
    execute_shard(&mut stmt, s, &docs.state, &extra)?;
    tx.prepare_cached("INSERT INTO shard_tests (execution_id, idx, tests) VALUES (?1, ?2, ?3)")?
        .execute(params![s.execution_id.as_str(), s.index, docs.tests])?;
    Ok(())
}

/// Writes the stored shard if it is still at `expected_version` (the check
/// and the change in one statement, in which `held` is written too: one
/// rewrite of the row). False: refused, nothing changed. `doc` is `s`'s
/// record ([`ShardDocs::state`]).
fn put_shard(
    tx: &Connection,
    s: &Shard,
    doc: &[u8],
    expected_version: u64,
    held: Holds<'_>,
) -> Result<bool> {
    let mut stmt = tx.prepare_cached(match &held {
        Holds::Keep => {
            "UPDATE shards SET status = ?3, runner_id = ?4, lease_id = ?5, deadline = ?6, version = ?7, doc = ?8
             WHERE execution_id = ?1 AND idx = ?2 AND version = ?9"
        }
        Holds::Take(_) => {
            "UPDATE shards SET status = ?3, runner_id = ?4, lease_id = ?5, deadline = ?6, version = ?7, doc = ?8,
               held_slots = ?10, held_cpu = ?11, held_memory = ?12
             WHERE execution_id = ?1 AND idx = ?2 AND version = ?9"
        }
        // `lease_id` on the right of SET is the row's lease before this write.
        Holds::Release(_) => {
            "UPDATE shards SET status = ?3, runner_id = ?4, lease_id = ?5, deadline = ?6, version = ?7, doc = ?8,
               held_slots = CASE WHEN lease_id = ?10 THEN NULL ELSE held_slots END,
               held_cpu = CASE WHEN lease_id = ?10 THEN NULL ELSE held_cpu END,
               held_memory = CASE WHEN lease_id = ?10 THEN NULL ELSE held_memory END
             WHERE execution_id = ?1 AND idx = ?2 AND version = ?9"
        }
    })?;
    let taken = match held {
        Holds::Take(r) => Some([r.slots, r.cpu_millis, r.memory_mb]),
        _ => None,
    };
    let mut extra: Vec<&dyn rusqlite::ToSql> = vec![&expected_version];
    if let Holds::Release(lease) = &held {
        extra.push(lease);
    }
    extra.extend(taken.iter().flatten().map(|v| v as &dyn rusqlite::ToSql));
    Ok(execute_shard(&mut stmt, s, doc, &extra)? == 1)
}

/// Stores result chunks (a chunk written again replaces itself).
fn insert_results(tx: &Connection, execution: &ExecutionId, chunks: &[ResultChunk]) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO results (execution_id, shard_index, lease_id, chunk, body)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for c in chunks {
        stmt.execute(params![
            execution.as_str(),
            c.shard_index,
            c.lease_id.as_str(),
            c.chunk,
            c.body
        ])?;
    }
    Ok(())
}

fn shard_exists(tx: &Connection, execution_id: &str, index: u32) -> Result<bool> {
    Ok(tx
        .prepare_cached("SELECT EXISTS(SELECT 1 FROM shards WHERE execution_id = ?1 AND idx = ?2)")?
        .query_row(params![execution_id, index], |r| r.get(0))?)
}

/// Gives back what a shard's lease held, if that lease still holds it (a
/// release is applied once); the check is on the view, the change only in
/// the mirror (the shard's `held_*` columns are cleared by its own write).
fn release(view: &View<'_>, ch: &mut Vec<Change>, shard: &Shard, rel: &Release) {
    let held = view.allocation(&rel.runner_id, &shard.execution_id, shard.index);
    if held.as_ref() == Some(&rel.lease_id) {
        ch.push(Change::Released {
            runner: rel.runner_id.clone(),
            execution: shard.execution_id.clone(),
            index: shard.index,
        });
        ch.push(Change::Load {
            runner: rel.runner_id.clone(),
            resources: rel.resources,
            add: false,
        });
    }
}

fn runner_doc(c: &Connection, id: &RunnerId) -> Result<Option<Runner>> {
    let doc: Option<String> = c
        .prepare_cached("SELECT doc FROM runners WHERE id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    doc.map(|d| from_doc(&d)).transpose()
}

/// The shards whose current lease the runner holds, by execution and index
/// (read from the database: some may belong to finished executions, which
/// the mirror does not keep).
fn shards_held_by(c: &Connection, mirror: &Mirror, id: &RunnerId) -> Result<Vec<Shard>> {
    let mut held = Vec::new();
    for (execution, index, lease) in mirror.allocations_of(id) {
        let shard = shard_rows(
            c,
            select_shards!("WHERE s.execution_id = ?1 AND s.idx = ?2"),
            params![execution.as_str(), index],
        )?;
        held.extend(
            shard
                .into_iter()
                .filter(|s| s.lease_id.as_ref() == Some(&lease)),
        );
    }
    Ok(held)
}

/// The version-conditioned write of a runner's own fields (the document is
/// serialised here, off the database thread).
fn runner_update(
    runner: &Runner,
    expected_version: u64,
) -> Result<impl FnOnce(&Connection, &mut Vec<Change>) -> Result<()> + Send + 'static> {
    let runner = runner.clone();
    let doc = to_doc(&runner)?;
    Ok(move |tx: &Connection, ch: &mut Vec<Change>| {
        let n = tx
            .prepare_cached(
                "UPDATE runners SET status = ?2, last_heartbeat = ?3, version = ?4, doc = ?5 WHERE id = ?1 AND version = ?6",
            )?
            .execute(params![
                runner.id.as_str(),
                runner.status.as_str(),
                runner.silence_key().0,
                runner.version,
                doc,
                expected_version
            ])?;
        if n == 0 {
            return Err(Error::conflict(Entity::Runner, &runner.id));
        }
        ch.push(Change::Runner(Box::new(runner)));
        Ok(())
    })
}

impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.read(move |c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(|_| ())?)
        })
        .await
    }

    async fn insert_runner(&self, runner: &Runner) -> Result<()> {
        let runner = runner.clone();
        self.write(move |tx, ch| {
            let n = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO runners (id, status, last_heartbeat, version, cap_slots, cap_cpu, cap_memory, doc)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    runner.id.as_str(),
                    runner.status.as_str(),
                    runner.silence_key().0,
                    runner.version,
                    runner.capacity.slots,
                    runner.capacity.cpu_millis,
                    runner.capacity.memory_mb,
                    to_doc(&runner)?
                ])?;
            if n == 0 {
                return Err(Error::conflict(Entity::Runner, &runner.id));
            }
            ch.push(Change::NewRunner(Box::new(runner)));
            Ok(())
        })
        .await
    }

    async fn get_runner(&self, id: &RunnerId) -> Result<Option<RunnerWithLoad>> {
        Ok(self.mirrored(|m| m.runner(id)))
    }

    async fn list_runners(&self, limit: u32, cursor: Option<&str>) -> Result<Page<RunnerWithLoad>> {
        let mut items = self.mirrored(|m| m.runners_after(cursor, limit as usize + 1));
        let next_cursor = Page::cursor_after(&mut items, limit, |r| r.runner.id.to_string());
        Ok(Page { items, next_cursor })
    }

    async fn update_runner(&self, runner: &Runner, expected_version: u64) -> Result<()> {
        self.write(runner_update(runner, expected_version)?).await
    }

    /// Queued with the next group and not waited for. By the time it is
    /// written, a heartbeat queued before it may have moved the version on,
    /// so it applies the heartbeat to the runner as stored then, and only
    /// while it still moves liveness forward on a runner that is active or
    /// paused: bringing back an unhealthy runner is the awaited write that
    /// records it.
    /// One such write per runner is queued at a time: heartbeats that come
    /// before it is written (and so still read the old time) only move the
    /// time it will write.
    async fn record_heartbeat(&self, runner: &Runner, _expected_version: u64) -> Result<()> {
        let id = runner.id.clone();
        {
            let mut queued = lock(&self.beats_queued);
            if let Some(at) = queued.get_mut(&id) {
                *at = (*at).max(runner.last_heartbeat);
                return Ok(());
            }
            queued.insert(id.clone(), runner.last_heartbeat);
        }
        let queued = self.beats_queued.clone();
        let sent = self.db.write_detached(move |tx, ch| {
            let Some(at) = lock(&queued).remove(&id) else {
                return Ok(());
            };
            let Some(mut stored) = runner_doc(tx, &id)? else {
                return Ok(());
            };
            let live = matches!(stored.status, RunnerStatus::Active | RunnerStatus::Paused);
            if !live || stored.last_heartbeat >= at {
                return Ok(());
            }
            let version = stored.version;
            stored.heartbeat(at, None)?;
            runner_update(&stored, version)?(tx, ch)
        });
        if sent.is_err() {
            lock(&self.beats_queued).remove(&runner.id);
        }
        sent
    }

    async fn flush(&self) -> Result<()> {
        // Writes commit in the order they are queued: once this empty one
        // has, every write queued before it has too.
        self.write(|_, _| Ok(())).await
    }

    async fn schedulable_runners(&self) -> Result<Vec<RunnerWithLoad>> {
        Ok(self.mirrored(Mirror::schedulable_runners))
    }

    async fn silent_runners(
        &self,
        statuses: &[RunnerStatus],
        before: Timestamp,
        limit: u32,
    ) -> Result<Vec<Runner>> {
        let statuses: Vec<&'static str> = statuses.iter().map(RunnerStatus::as_str).collect();
        self.read(move |c| {
            // `last_heartbeat` holds the silence key (see `runner_update`).
            let mut found = Vec::new();
            for status in statuses {
                found.extend(docs::<Runner>(
                    c,
                    "SELECT doc FROM runners WHERE status = ?1 AND last_heartbeat < ?2
                     ORDER BY last_heartbeat LIMIT ?3",
                    params![status, before.0, limit],
                )?);
            }
            found.sort_by_key(Runner::silence_key);
            found.truncate(limit as usize);
            Ok(found)
        })
        .await
    }

    async fn runner_shards(&self, id: &RunnerId) -> Result<Vec<Shard>> {
        match self.mirrored(|m| m.held(id)) {
            Held::NoRunner => return Ok(Vec::new()),
            Held::Shards(_, shards) => return Ok(shards),
            Held::Unknown => {}
        }
        let id = id.clone();
        self.db
            .read_viewed(move |c, view| shards_held_by(c, view.committed(), &id))
            .await
    }

    async fn runner_with_shards(
        &self,
        id: &RunnerId,
    ) -> Result<Option<(RunnerWithLoad, Vec<Shard>)>> {
        match self.mirrored(|m| m.held(id)) {
            Held::NoRunner => return Ok(None),
            Held::Shards(runner, shards) => return Ok(Some((*runner, shards))),
            Held::Unknown => {}
        }
        let id = id.clone();
        self.db
            .read_viewed(move |c, view| {
                let Some(runner) = view.committed().runner(&id) else {
                    return Ok(None);
                };
                Ok(Some((runner, shards_held_by(c, view.committed(), &id)?)))
            })
            .await
    }

    async fn create_execution(
        &self,
        execution: &Execution,
        shards: &[Shard],
        queue: &[TestSpec],
        idem: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        let (execution, shards, idem) = (execution.clone(), shards.to_vec(), idem.cloned());
        let doc = to_doc(&execution)?;
        let queue: Option<(Arc<[TestSpec]>, String)> = if queue.is_empty() {
            None
        } else {
            let pairs: Vec<(&str, Option<u64>)> = queue
                .iter()
                .map(|t| (t.name.as_str(), t.duration_hint_ms))
                .collect();
            Some((queue.into(), to_doc(&pairs)?))
        };
        let shard_docs = shards
            .iter()
            .map(ShardDocs::of)
            .collect::<Result<Vec<_>>>()?;
        self.write(move |tx, ch| {
            // Every check before the first change (see `thread`).
            let exists: bool = tx
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM executions WHERE id = ?1)")?
                .query_row([execution.id.as_str()], |r| r.get(0))?;
            if exists {
                return Err(Error::conflict(Entity::Execution, &execution.id));
            }
            if let Some(rec) = &idem {
                // An expired record may be replaced; a live one means another request won.
                let n = tx
                    .prepare_cached(
                        "INSERT INTO idempotency (key, expires_at, doc) VALUES (?1, ?2, ?3)
                         ON CONFLICT(key) DO UPDATE SET expires_at = ?2, doc = ?3 WHERE expires_at <= ?4",
                    )?
                    .execute(params![rec.key, rec.expires_at.0, to_doc(rec)?, execution.created_at.0])?;
                if n == 0 {
                    return Err(Error::conflict(Entity::Execution, &rec.key));
                }
            }
            write_execution(tx, &execution, &doc)?;
            for (s, docs) in shards.iter().zip(&shard_docs) {
                insert_shard(tx, s, docs)?;
            }
            let id = execution.id.clone();
            ch.push(Change::Execution(Box::new(execution)));
            if let Some((tests, doc)) = queue {
                tx.prepare_cached("INSERT INTO test_queues (execution_id, tests) VALUES (?1, ?2)")?
                    .execute(params![id.as_str(), doc])?;
                ch.push(Change::Queue {
                    execution: id,
                    tests,
                });
            }
            ch.extend(shards.into_iter().map(Change::Shard));
            Ok(())
        })
        .await
    }

    async fn get_idempotency(
        &self,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyRecord>> {
        let key = key.to_owned();
        self.read(move |c| {
            let key = key.as_str();
            let doc: Option<String> = c
                .prepare_cached("SELECT doc FROM idempotency WHERE key = ?1 AND expires_at > ?2")?
                .query_row(params![key, now.0], |r| r.get(0))
                .optional()?;
            doc.map(|d| from_doc(&d)).transpose()
        })
        .await
    }

    async fn get_execution(&self, id: &ExecutionId) -> Result<Option<Execution>> {
        if let Some(found) = self.mirrored(|m| m.execution(id)) {
            return Ok(Some(found));
        }
        let id = id.clone();
        self.read(move |c| {
            let id = &id;
            load_execution_doc(c, id.as_str())
        })
        .await
    }

    async fn load_execution(&self, id: &ExecutionId) -> Result<Option<(Execution, Vec<Shard>)>> {
        if let Some(found) = self.mirrored(|m| m.execution_with_shards(id)) {
            return Ok(Some(found));
        }
        let id = id.clone();
        self.read(move |c| {
            let id = &id;
            let Some(e) = load_execution_doc(c, id.as_str())? else {
                return Ok(None);
            };
            Ok(Some((e, shards_of(c, id.as_str())?)))
        })
        .await
    }

    async fn load_shard(&self, id: &ExecutionId, index: u32) -> Result<Option<(Execution, Shard)>> {
        if let Some(found) = self.mirrored(|m| m.shard(id, index)) {
            return Ok(found);
        }
        let id = id.clone();
        self.read(move |c| {
            let id = &id;
            let Some(e) = load_execution_doc(c, id.as_str())? else {
                return Ok(None);
            };
            let shard = shard_rows(
                c,
                select_shards!("WHERE s.execution_id = ?1 AND s.idx = ?2"),
                params![id.as_str(), index],
            )?;
            Ok(shard.into_iter().next().map(|s| (e, s)))
        })
        .await
    }

    async fn list_executions(&self, filter: &ExecutionFilter) -> Result<Page<Execution>> {
        let filter = filter.clone();
        self.read(move |c| {
            let filter = &filter;
            let mut items: Vec<Execution> = docs(
                c,
                "SELECT doc FROM executions WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR suite = ?2)
                 AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4",
                params![filter.status.map(|s| s.as_str()), filter.suite, filter.cursor, filter.limit + 1],
            )?;
            let next_cursor = Page::cursor_after(&mut items, filter.limit, |e| e.id.to_string());
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn update_execution(
        &self,
        execution: &Execution,
        expected_version: u64,
        rollup: Option<&Rollup>,
    ) -> Result<()> {
        let execution = execution.clone();
        let rollup = rollup.cloned();
        let doc = to_doc(&execution)?;
        self.write(move |tx, ch| {
            let Some((_, was_finished)) =
                execution_state(tx, &execution.id)?.filter(|(v, _)| *v == expected_version)
            else {
                return Err(Error::conflict(Entity::Execution, &execution.id));
            };
            write_execution(tx, &execution, &doc)?;
            if let Some(r) = rollup {
                add_counters(tx, &r)?;
            }
            mirror_execution(tx, ch, &execution, was_finished)
        })
        .await
    }

    async fn add_rollup(&self, rollup: &Rollup) -> Result<()> {
        let rollup = rollup.clone();
        self.write(move |tx, _| add_counters(tx, &rollup)).await
    }

    async fn metric_rollups(&self, since: Timestamp, until: Timestamp) -> Result<Vec<Rollup>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT hour, suite, name, value FROM metrics WHERE hour BETWEEN ?1 AND ?2 ORDER BY hour, suite",
            )?;
            let mut rows = stmt.query(params![since.0, until.0])?;
            let mut out: Vec<Rollup> = Vec::new();
            while let Some(row) = rows.next()? {
                let (hour, suite): (i64, String) = (row.get(0)?, row.get(1)?);
                let (name, value): (String, i64) = (row.get(2)?, row.get(3)?);
                match out.last_mut() {
                    Some(last) if last.hour.0 == hour && last.suite == suite => {}
                    _ => out.push(Rollup {
                        suite,
                        hour: Timestamp(hour),
                        counters: Default::default(),
                    }),
                }
                if let Some(last) = out.last_mut() {
                    last.counters.insert(name, value.max(0) as u64);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn pending_executions(
        &self,
        free: &FreeCapacity,
        max_executions: u32,
    ) -> Result<Vec<(Execution, Vec<Shard>)>> {
        Ok(self.mirrored(|m| m.pending(free, max_executions)))
    }

    async fn active_executions(&self, cursor: Option<&str>, limit: u32) -> Result<Page<Execution>> {
        let after = match cursor {
            Some(c) => Some(
                crate::ports::cursors::parse_by_deadline(c)
                    .ok_or_else(|| Error::validation("cursor", "not a cursor of this listing"))?,
            ),
            None => None,
        };
        self.read(move |c| {
            let (deadline, id) = after.unwrap_or((i64::MIN, String::new()));
            let mut items: Vec<Execution> = docs(
                c,
                "SELECT doc FROM executions WHERE status IN ('queued', 'running') AND (deadline, id) > (?1, ?2)
                 ORDER BY deadline, id LIMIT ?3",
                params![deadline, id, limit + 1],
            )?;
            let next_cursor =
                Page::cursor_after(&mut items, limit, crate::ports::cursors::by_deadline);
            Ok(Page { items, next_cursor })
        })
        .await
    }

    async fn dynamic_executions(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Execution>> {
        let after = match cursor {
            Some(c) => Some(
                crate::ports::cursors::parse_by_priority(c)
                    .and_then(|(priority, created, id)| {
                        let id = ExecutionId::parse(&id).ok()?;
                        Some((std::cmp::Reverse(priority), created, id))
                    })
                    .ok_or_else(|| Error::validation("cursor", "not a cursor of this listing"))?,
            ),
            None => None,
        };
        let (items, more) = self.mirrored(|m| m.dynamic_after(after.as_ref(), limit as usize));
        let next_cursor = if more {
            items.last().map(crate::ports::cursors::by_priority)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn queued_tests(&self, id: &ExecutionId, from: u32, limit: u32) -> Result<Vec<TestSpec>> {
        if let Some(found) = self.mirrored(|m| m.queued_tests(id, from, limit)) {
            return Ok(found);
        }
        let id = id.clone();
        self.read(move |c| {
            let queue = test_queue(c, &id)?.unwrap_or_else(|| Arc::from(Vec::new()));
            let start = (from as usize).min(queue.len());
            let end = start.saturating_add(limit as usize).min(queue.len());
            Ok(queue[start..end].to_vec())
        })
        .await
    }

    async fn expired_shards(&self, now: Timestamp, limit: u32) -> Result<Vec<Shard>> {
        self.read(move |c| {
            shard_rows(
                c,
                select_shards!(
                    "WHERE s.status IN ('assigned', 'running') AND s.deadline < ?1 ORDER BY s.deadline LIMIT ?2"
                ),
                params![now.0, limit],
            )
        })
        .await
    }

    async fn assign(&self, w: AssignmentWrite) -> Result<()> {
        // Serialised on the caller's thread: the database thread is the one
        // every write waits for.
        let shard_doc = ShardDocs::state(&w.shard)?;
        self.db
            .write_viewed(move |tx, view, ch| {
                let (shard, alloc) = (&w.shard, &w.allocation);
                // Every check before the first change (see `thread`); the
                // execution's and the shard's state from the view, not SQL.
                let shard_conflict = || {
                    Error::conflict(
                        Entity::Shard,
                        format!("{}#{}", shard.execution_id, shard.index),
                    )
                };
                // Condition 1: the execution is not finished; it becomes running
                // (the document is read and rewritten only for its first shard).
                let started = match view.live_execution(&shard.execution_id) {
                    None => return Err(Error::conflict(Entity::Execution, &shard.execution_id)),
                    Some(Live::Committed(e)) if e.status == ExecutionStatus::Queued => {
                        Some(e.clone())
                    }
                    Some(Live::Written(ExecutionStatus::Queued, ..)) => Some(
                        load_execution_doc(tx, shard.execution_id.as_str())?.ok_or_else(|| {
                            Error::not_found(Entity::Execution, &shard.execution_id)
                        })?,
                    ),
                    Some(_) => None,
                };
                // Condition 2: the shard is still the queued version the plan saw.
                let version = w.expected_shard_version;
                if view.shard(&shard.execution_id, shard.index)
                    != Some((version, ShardStatus::Queued))
                {
                    return Err(shard_conflict());
                }
                let started = match started {
                    Some(mut execution) => {
                        execution.mark_running(w.now)?;
                        Some(execution)
                    }
                    None => None,
                };
                // Condition 3: the runner is active and has room.
                ch.push(room_for(view, alloc)?);
                let need = alloc.resources;
                if let Some(execution) = started {
                    write_execution(tx, &execution, &to_doc(&execution)?)?;
                    ch.push(Change::Execution(Box::new(execution)));
                }
                if !put_shard(tx, shard, &shard_doc, version, Holds::Take(need))? {
                    return Err(Error::Internal(
                        "a shard's stored version differs from the mirror's".into(),
                    ));
                }

                if let Some(pool) = &w.cursor {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO rr_cursors (pool, runner_id) VALUES (?1, ?2)",
                    )?
                    .execute(params![pool, alloc.runner_id.as_str()])?;
                    ch.push(Change::Cursor {
                        pool: pool.clone(),
                        runner: alloc.runner_id.clone(),
                    });
                }
                ch.push(allocated(w.allocation));
                ch.push(Change::Shard(w.shard));
                Ok(())
            })
            .await
    }

    fn claim(&self, w: ClaimWrite) -> impl std::future::Future<Output = Result<()>> + Send {
        // Queued now, in the caller's order (see `Store::claim`).
        let queued = claim_job(w, None).map(|job| self.db.write_viewed(job));
        async move { queued?.await }
    }

    async fn update_shard(&self, u: ShardUpdate) -> Result<()> {
        self.finish_shard(u, Vec::new()).await
    }

    async fn finish_shard(&self, u: ShardUpdate, results: Vec<ResultChunk>) -> Result<()> {
        self.db.write_viewed(finish_job(u, results)?).await
    }

    fn finish_shard_and_claim(
        &self,
        u: ShardUpdate,
        results: Vec<ResultChunk>,
        claim: ClaimWrite,
    ) -> impl std::future::Future<Output = Result<Result<()>>> + Send {
        let reported = (u.shard.execution_id.clone(), u.shard.index, u.shard.version);
        // Queued now, in the caller's order (see `Store::claim`).
        let queued = finish_job(u, results).and_then(|finish| {
            let claim = claim_job(claim, Some(reported))?;
            Ok(self.db.write_pair(finish, claim))
        });
        async move {
            let (finished, claimed) = queued?.await;
            finished.map(|()| claimed)
        }
    }

    async fn queue_stats(&self) -> Result<QueueStats> {
        let mut stats = self.mirrored(Mirror::queue_stats);
        // Served by the partial index of in-flight shards (the mirror does
        // not hold those of finished executions that a sweep has yet to stop).
        stats.in_flight_shards = self
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT count(*) FROM shards WHERE status IN ('assigned', 'running')",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await?;
        Ok(stats)
    }

    async fn put_rule(&self, rule: &LoadBalancingRule) -> Result<()> {
        let rule = rule.clone();
        self.write(move |tx, ch| {
            tx.prepare_cached("INSERT OR REPLACE INTO rules (id, doc) VALUES (?1, ?2)")?
                .execute(params![rule.id.as_str(), to_doc(&rule)?])?;
            ch.push(Change::Rule(rule));
            Ok(())
        })
        .await
    }

    async fn list_rules(&self) -> Result<Vec<LoadBalancingRule>> {
        Ok(self.mirrored(Mirror::rules))
    }

    async fn delete_rule(&self, id: &RuleId) -> Result<bool> {
        let id = id.clone();
        self.write(move |tx, ch| {
            let n = tx
                .prepare_cached("DELETE FROM rules WHERE id = ?1")?
                .execute([id.as_str()])?;
            let pool = format!("rule:{id}");
            tx.prepare_cached("DELETE FROM rr_cursors WHERE pool = ?1")?
                .execute([pool.as_str()])?;
            ch.push(Change::RuleDeleted(id.to_string()));
            ch.push(Change::CursorDeleted(pool));
            Ok(n == 1)
        })
        .await
    }

    async fn insert_alert_rule(&self, rule: &AlertRule) -> Result<()> {
        let rule = rule.clone();
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT INTO alert_rules (id, version, doc) VALUES (?1, ?2, ?3)")?
                .execute(params![
                    rule.id.as_str(),
                    rule.version as i64,
                    to_doc(&rule)?
                ])?;
            Ok(())
        })
        .await
    }

    async fn list_alert_rules(&self) -> Result<Vec<AlertRule>> {
        self.read(move |c| docs(c, "SELECT doc FROM alert_rules ORDER BY id", []))
            .await
    }

    async fn update_alert_rule(&self, rule: &AlertRule, expected_version: u64) -> Result<()> {
        let rule = rule.clone();
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached(
                    "UPDATE alert_rules SET version = ?2, doc = ?3 WHERE id = ?1 AND version = ?4",
                )?
                .execute(params![
                    rule.id.as_str(),
                    rule.version as i64,
                    to_doc(&rule)?,
                    expected_version as i64
                ])?;
            if n == 1 {
                Ok(())
            } else {
                Err(Error::conflict(Entity::AlertRule, &rule.id))
            }
        })
        .await
    }

    async fn delete_alert_rule(&self, id: &AlertRuleId) -> Result<bool> {
        let id = id.clone();
        self.write(move |tx, _| {
            Ok(tx
                .prepare_cached("DELETE FROM alert_rules WHERE id = ?1")?
                .execute([id.as_str()])?
                == 1)
        })
        .await
    }

    async fn round_robin_cursors(&self) -> Result<BTreeMap<String, RunnerId>> {
        Ok(self.mirrored(Mirror::cursors))
    }

    async fn add_health_record(&self, record: &HealthRecord) -> Result<()> {
        let record = record.clone();
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT INTO health (runner_id, at, doc) VALUES (?1, ?2, ?3)")?
                .execute(params![
                    record.runner_id.as_str(),
                    record.at.0,
                    to_doc(&record)?
                ])?;
            Ok(())
        })
        .await
    }

    async fn health_history(&self, id: &RunnerId, limit: u32) -> Result<Vec<HealthRecord>> {
        let id = id.clone();
        self.read(move |c| {
            let id = &id;
            docs(
                c,
                "SELECT doc FROM health WHERE runner_id = ?1 ORDER BY at DESC, seq DESC LIMIT ?2",
                params![id.as_str(), limit],
            )
        })
        .await
    }

    async fn add_violation(&self, v: &Violation) -> Result<()> {
        let v = v.clone();
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT INTO violations (runner_id, at, doc) VALUES (?1, ?2, ?3)")?
                .execute(params![v.runner_id.as_str(), v.at.0, to_doc(&v)?])?;
            Ok(())
        })
        .await
    }

    async fn recent_violations(&self, since: Timestamp, limit: u32) -> Result<Vec<Violation>> {
        self.read(move |c| {
            docs(
                c,
                "SELECT doc FROM violations WHERE at >= ?1 ORDER BY at DESC, seq DESC LIMIT ?2",
                params![since.0, limit],
            )
        })
        .await
    }

    async fn put_token(&self, token: &ApiToken) -> Result<()> {
        let token = token.clone();
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT INTO tokens (id, doc) VALUES (?1, ?2)")?
                .execute(params![token.id.as_str(), to_doc(&token)?])?;
            Ok(())
        })
        .await
    }

    async fn get_token(&self, id: &TokenId) -> Result<Option<ApiToken>> {
        let id = id.clone();
        self.read(move |c| {
            let id = &id;
            let doc: Option<String> = c
                .prepare_cached("SELECT doc FROM tokens WHERE id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?;
            doc.map(|d| from_doc(&d)).transpose()
        })
        .await
    }

    async fn test_timings(&self, suite: &str, tests: &[String]) -> Result<Vec<TestTiming>> {
        let (suite, tests) = (suite.to_owned(), tests.to_vec());
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT doc FROM timings WHERE suite = ?1 AND test = ?2")?;
            let mut found = Vec::new();
            for test in &tests {
                let doc: Option<String> = stmt
                    .query_row(params![suite, test], |r| r.get(0))
                    .optional()?;
                if let Some(doc) = doc {
                    found.push(from_doc(&doc)?);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn suite_timings(&self, suite: &str) -> Result<Vec<TestTiming>> {
        let suite = suite.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT doc FROM timings WHERE suite = ?1")?;
            let docs = stmt.query_map([suite.as_str()], |r| r.get::<_, String>(0))?;
            let mut found = Vec::new();
            for doc in docs {
                found.push(from_doc(&doc?)?);
            }
            Ok(found)
        })
        .await
    }

    async fn put_test_timings(&self, timings: &[TestTiming]) -> Result<()> {
        let timings = timings.to_vec();
        self.write(move |tx, _| {
            let mut stmt = tx.prepare_cached(
                "INSERT OR REPLACE INTO timings (suite, test, doc) VALUES (?1, ?2, ?3)",
            )?;
            for t in &timings {
                stmt.execute(params![t.suite, t.test, to_doc(t)?])?;
            }
            Ok(())
        })
        .await
    }

    async fn add_shard(
        &self,
        execution: &Execution,
        expected_version: u64,
        shard: &Shard,
    ) -> Result<()> {
        let (execution, shard) = (execution.clone(), shard.clone());
        let (doc, shard_docs) = (to_doc(&execution)?, ShardDocs::of(&shard)?);
        self.write(move |tx, ch| {
            let current = execution_state(tx, &execution.id)?;
            let Some((_, was_finished)) = current.filter(|(v, _)| *v == expected_version) else {
                return Err(Error::conflict(Entity::Execution, &execution.id));
            };
            if shard_exists(tx, shard.execution_id.as_str(), shard.index)? {
                return Err(Error::conflict(Entity::Execution, &execution.id));
            }
            write_execution(tx, &execution, &doc)?;
            insert_shard(tx, &shard, &shard_docs)?;
            mirror_execution(tx, ch, &execution, was_finished)?;
            ch.push(Change::Shard(shard));
            Ok(())
        })
        .await
    }

    async fn put_results(&self, execution: &ExecutionId, chunks: &[ResultChunk]) -> Result<()> {
        let (execution, chunks) = (execution.clone(), chunks.to_vec());
        self.write(move |tx, _| insert_results(tx, &execution, &chunks))
            .await
    }

    async fn results(
        &self,
        execution: &ExecutionId,
        run: Option<(u32, &LeaseId)>,
    ) -> Result<Vec<ResultChunk>> {
        let execution = execution.clone();
        let run = run.map(|(index, lease)| (index, lease.to_string()));
        self.read(move |c| {
            // Two statements rather than one with `?2 IS NULL OR …`, which
            // SQLite answers by scanning every chunk of the execution: one
            // run's chunks are a seek on the primary key.
            let mut stmt = match run {
                Some(_) => c.prepare_cached(
                    "SELECT shard_index, lease_id, chunk, body FROM results
                     WHERE execution_id = ?1 AND shard_index = ?2 AND lease_id = ?3 ORDER BY chunk",
                )?,
                None => c.prepare_cached(
                    "SELECT shard_index, lease_id, chunk, body FROM results WHERE execution_id = ?1
                     ORDER BY shard_index, lease_id, chunk",
                )?,
            };
            let row = |r: &rusqlite::Row<'_>| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                ))
            };
            let rows = match &run {
                Some((index, lease)) => {
                    stmt.query_map(params![execution.as_str(), index, lease.as_str()], row)?
                }
                None => stmt.query_map(params![execution.as_str()], row)?,
            };
            let mut chunks = Vec::new();
            for row in rows {
                let (shard_index, lease, chunk, body) = row?;
                chunks.push(ResultChunk {
                    shard_index,
                    lease_id: LeaseId::parse(&lease)?,
                    chunk,
                    body,
                });
            }
            Ok(chunks)
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.read(move |c| {
            let key = key.as_str();
            Ok(
                c.prepare_cached("SELECT value FROM settings WHERE key = ?1")?
                    .query_row([key], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)")?
                .execute(params![key, value])?;
            Ok(())
        })
        .await
    }

    async fn init_setting(&self, key: &str, value: &str) -> Result<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |tx, _| {
            tx.prepare_cached("INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)")?
                .execute(params![key, value])?;
            Ok(tx
                .prepare_cached("SELECT value FROM settings WHERE key = ?1")?
                .query_row([key], |r| r.get(0))?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn assignment(shard: &Shard, runner: &Runner) -> AssignmentWrite {
        let mut next = shard.clone();
        let lease = LeaseId::generate();
        next.assign(
            runner.id.clone(),
            lease.clone(),
            Timestamp(1),
            Timestamp(10_000),
        )
        .expect("a queued shard can be assigned");
        AssignmentWrite {
            runner_capacity: runner.capacity,
            shard: next,
            expected_shard_version: shard.version,
            allocation: Allocation {
                runner_id: runner.id.clone(),
                execution_id: shard.execution_id.clone(),
                shard_index: shard.index,
                lease_id: lease,
                resources: Resources::new(1, 0, 0),
                allocated_at: Timestamp(1),
            },
            cursor: None,
            now: Timestamp(1),
        }
    }

    /// Runs two writes as one group: a read holds the database thread
    /// until both are queued (`join!` polls, and so sends, each in turn).
    async fn one_group<A, B>(
        store: &SqliteStore,
        a: impl std::future::Future<Output = A>,
        b: impl std::future::Future<Output = B>,
    ) -> (A, B) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = store.read(move |_| {
            let _ = held.recv();
            Ok(())
        });
        let (held, a, b, ()) = tokio::join!(hold, a, b, async move {
            let _ = release.send(());
        });
        held.expect("holding read");
        (a, b)
    }

    async fn stored(slots: u32) -> (SqliteStore, Runner, Execution, Vec<Shard>) {
        let store = SqliteStore::temporary().expect("store");
        let runner = fixtures::runner("r", slots);
        store.insert_runner(&runner).await.expect("runner");
        let execution = fixtures::execution(2);
        let shards = fixtures::shards(&execution);
        store
            .create_execution(&execution, &shards, &[], None)
            .await
            .expect("execution");
        (store, runner, execution, shards)
    }

    /// A report that finishes shard 0 (assigned to `runner`) at
    /// `expected_version`, and a claim of a new batch 2 of the same
    /// execution by the same runner.
    async fn report_and_claim(
        store: &SqliteStore,
        runner: &Runner,
        execution: &Execution,
        shards: &[Shard],
        stale: bool,
    ) -> Result<Result<()>> {
        let write = assignment(&shards[0], runner);
        let lease = write.allocation.lease_id.clone();
        let assigned = write.shard.clone();
        store.assign(write).await.expect("assigned");
        let mut done = assigned.clone();
        done.status = ShardStatus::Passed;
        done.version += 1;
        let report = ShardUpdate {
            shard: done,
            expected_version: assigned.version - u64::from(stale),
            expected_status: ShardStatus::Assigned,
            release: Some(crate::ports::Release {
                runner_id: runner.id.clone(),
                lease_id: lease,
                resources: Resources::new(1, 0, 0),
            }),
        };
        let mut claimed = execution.clone();
        claimed.version = current_execution_version(store, &execution.id).await;
        let expected_execution_version = claimed.version;
        claimed.version += 1;
        claimed.shard_count += 1;
        let mut batch = Shard::new(execution.id.clone(), "suite", 2, vec!["t".into()], None);
        let next_lease = LeaseId::generate();
        batch
            .claim(
                runner.id.clone(),
                next_lease.clone(),
                Timestamp(2),
                Timestamp(9_000),
            )
            .expect("a new batch can be claimed");
        let claim = ClaimWrite {
            execution: claimed,
            expected_execution_version,
            shard: batch,
            expected_shard_version: None,
            runner_capacity: runner.capacity,
            allocation: Allocation {
                runner_id: runner.id.clone(),
                execution_id: execution.id.clone(),
                shard_index: 2,
                lease_id: next_lease,
                resources: Resources::new(1, 0, 0),
                allocated_at: Timestamp(2),
            },
            now: Timestamp(2),
        };
        store
            .finish_shard_and_claim(report, Vec::new(), claim)
            .await
    }

    async fn slots_held(store: &SqliteStore, runner: &Runner) -> u32 {
        let held = store.get_runner(&runner.id).await.expect("read");
        held.expect("runner").allocated.slots
    }

    async fn current_execution_version(store: &SqliteStore, id: &ExecutionId) -> u64 {
        store
            .get_execution(id)
            .await
            .expect("read")
            .expect("execution")
            .version
    }

    #[tokio::test]
    async fn a_claim_made_with_a_report_stands_with_it_in_one_commit() {
        let (store, runner, execution, shards) = stored(2).await;
        let answer = report_and_claim(&store, &runner, &execution, &shards, false).await;
        assert!(matches!(answer, Ok(Ok(()))), "{answer:?}");
        let (_, reported) = store.load_shard(&execution.id, 0).await.unwrap().unwrap();
        assert_eq!(reported.status, ShardStatus::Passed);
        let (_, batch) = store.load_shard(&execution.id, 2).await.unwrap().unwrap();
        assert_eq!(batch.status, ShardStatus::Running);
        // The report gave back its slot and the claim took one.
        assert_eq!(slots_held(&store, &runner).await, 1);
        store.verify_mirror().await.expect("mirror");
    }

    #[tokio::test]
    async fn a_claim_made_with_a_refused_report_is_refused_too() {
        // Room for the claim either way: only the report's fate decides it.
        let (store, runner, execution, shards) = stored(2).await;
        let version = current_execution_version(&store, &execution.id).await;
        let answer = report_and_claim(&store, &runner, &execution, &shards, true).await;
        assert!(
            matches!(&answer, Err(e) if e.is_conflict()),
            "the report's own refusal: {answer:?}"
        );
        assert!(
            store.load_shard(&execution.id, 2).await.unwrap().is_none(),
            "no batch claimed"
        );
        let (_, reported) = store.load_shard(&execution.id, 0).await.unwrap().unwrap();
        assert_eq!(reported.status, ShardStatus::Assigned);
        // Only the assignment before the report changed the execution.
        assert!(current_execution_version(&store, &execution.id).await <= version + 1);
        assert_eq!(
            slots_held(&store, &runner).await,
            1,
            "the assignment's slot alone"
        );
        store.verify_mirror().await.expect("mirror");
    }

    #[tokio::test]
    async fn a_write_checked_in_memory_sees_the_writes_before_it_in_its_group() {
        let (store, runner, _, shards) = stored(4).await;
        let (first, second) = (
            assignment(&shards[0], &runner),
            assignment(&shards[0], &runner),
        );
        let lease = first.shard.lease_id.clone();
        let (a, b) = one_group(&store, store.assign(first), store.assign(second)).await;
        assert!(a.is_ok(), "{a:?}");
        // Not a failed group: the second assignment alone is refused.
        assert!(b.is_err_and(|e| e.is_conflict()));
        let (_, stored) = store
            .load_shard(&shards[0].execution_id, 0)
            .await
            .expect("read")
            .expect("shard");
        assert_eq!(stored.lease_id, lease);
        assert_eq!(
            store
                .get_runner(&runner.id)
                .await
                .expect("read")
                .expect("runner")
                .allocated
                .slots,
            1
        );
        store.verify_mirror().await.expect("mirror");
    }

    #[tokio::test]
    async fn an_assignment_after_its_execution_finished_in_the_same_group_is_refused() {
        let (store, runner, execution, shards) = stored(4).await;
        let mut cancelled = execution.clone();
        cancelled
            .cancel("cancelled by request".into(), Timestamp(2))
            .expect("a queued execution can be cancelled");
        let late = assignment(&shards[1], &runner);
        let (cancel, assign) = one_group(
            &store,
            store.update_execution(&cancelled, execution.version, None),
            store.assign(late),
        )
        .await;
        assert!(cancel.is_ok(), "{cancel:?}");
        assert!(assign.is_err_and(|e| e.is_conflict()));
        let (_, stored) = store
            .load_shard(&execution.id, 1)
            .await
            .expect("read")
            .expect("shard");
        assert_eq!(stored.status, ShardStatus::Queued);
        store.verify_mirror().await.expect("mirror");
    }
}
