//! Store conformance: the port's conditions, checked by the same test
//! functions on the embedded store and on DynamoDB (moto).

use std::sync::Arc;
use tms::domain::{Allocation, Execution, Requirements, Resources, Runner, RunnerWithLoad, Shard};
use tms::fixtures;
use tms::ids::LeaseId;
use tms::ports::{AssignmentWrite, Release, ShardUpdate, Store};
use tms::scheduling::FreeCapacity;
use tms::time::Timestamp;
use tms::Error;
use tms_tests::Backend;

fn runner(slots: u32) -> Runner {
    fixtures::runner("r", slots)
}

fn execution(shards: u32) -> (Execution, Vec<Shard>) {
    let mut e = fixtures::execution(shards);
    e.requirements = Requirements {
        cpu_millis: 1000,
        memory_mb: 1000,
        ..Default::default()
    };
    let shards = fixtures::shards(&e);
    (e, shards)
}

/// A fresh store holding one runner with `slots` slots and one execution of `shards` shards.
async fn stored<B: Backend>(slots: u32, shards: u32) -> (B::Store, Runner, Execution, Vec<Shard>) {
    let store = B::store().await;
    let r = runner(slots);
    store.insert_runner(&r).await.unwrap();
    let (e, shards) = execution(shards);
    store
        .create_execution(&e, &shards, &[], None)
        .await
        .unwrap();
    (store, r, e, shards)
}

fn assignment(shard: &Shard, runner: &Runner) -> AssignmentWrite {
    let (capacity, runner) = (runner.capacity, &runner.id);
    let mut next = shard.clone();
    let lease = LeaseId::generate();
    next.assign(
        runner.clone(),
        lease.clone(),
        Timestamp(1),
        Timestamp(10_000),
    )
    .unwrap();
    AssignmentWrite {
        runner_capacity: capacity,
        shard: next,
        expected_shard_version: shard.version,
        allocation: Allocation {
            runner_id: runner.clone(),
            execution_id: shard.execution_id.clone(),
            shard_index: shard.index,
            lease_id: lease,
            resources: Resources::new(1, 1000, 1000),
            allocated_at: Timestamp(1),
        },
        cursor: None,
        now: Timestamp(1),
    }
}

/// The write that puts an assigned shard (as stored) back in the queue and
/// gives back what its lease holds (what [`assignment`] takes).
fn requeue_releasing(stored: &Shard) -> ShardUpdate {
    let mut back = stored.clone();
    let holder = back
        .requeue("lost", Timestamp(1))
        .unwrap()
        .expect("an assigned shard has a holder");
    ShardUpdate {
        shard: back,
        expected_version: stored.version,
        expected_status: stored.status,
        release: Some(Release {
            runner_id: holder.runner_id,
            lease_id: holder.lease_id,
            resources: Resources::new(1, 1000, 1000),
        }),
    }
}

async fn an_assignment_that_fails_its_runner_condition_changes_nothing<B: Backend>() {
    let (store, r, e, shards) = stored::<B>(1, 2).await;
    store.assign(assignment(&shards[0], &r)).await.unwrap();

    let err = store.assign(assignment(&shards[1], &r)).await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    let (_, stored) = store.load_execution(&e.id).await.unwrap().unwrap();
    assert_eq!(stored[1], shards[1], "the second shard is untouched");
    assert_eq!(
        store
            .get_runner(&r.id)
            .await
            .unwrap()
            .unwrap()
            .allocated
            .slots,
        1
    );
    assert_eq!(
        store.runner_shards(&r.id).await.unwrap().len(),
        1,
        "no allocation was written"
    );
}

async fn writes_from_a_stale_version_are_refused<B: Backend>() {
    let store = B::store().await;
    let mut r = runner(1);
    store.insert_runner(&r).await.unwrap();
    assert!(
        store.insert_runner(&r).await.unwrap_err().is_conflict(),
        "ids are unique"
    );
    r.pause().unwrap();
    store.update_runner(&r, 1).await.unwrap();
    r.resume().unwrap();
    assert!(store.update_runner(&r, 1).await.unwrap_err().is_conflict());

    let (mut e, shards) = execution(1);
    store
        .create_execution(&e, &shards, &[], None)
        .await
        .unwrap();
    e.cancel("test".into(), Timestamp(5)).unwrap();
    assert!(store
        .update_execution(&e, 7, None)
        .await
        .unwrap_err()
        .is_conflict());
    store.update_execution(&e, 1, None).await.unwrap();

    let mut s = shards[0].clone();
    s.cancel("test", Timestamp(5)).unwrap();
    let stale = ShardUpdate {
        shard: s.clone(),
        expected_version: 9,
        expected_status: shards[0].status,
        release: None,
    };
    assert!(matches!(
        store.update_shard(stale).await,
        Err(Error::Conflict { .. })
    ));
}

async fn capacity_is_given_back_once_per_lease<B: Backend>() {
    let (store, r, e, shards) = stored::<B>(2, 2).await;
    for s in &shards {
        store.assign(assignment(s, &r)).await.unwrap();
    }
    let (_, held) = store.load_execution(&e.id).await.unwrap().unwrap();
    let lease = held[0].lease_id.clone().unwrap();
    let release = Release {
        runner_id: r.id.clone(),
        lease_id: lease,
        resources: Resources::new(1, 1000, 1000),
    };
    let mut first = held[0].clone();
    first.requeue("test", Timestamp(1)).unwrap();
    let update = ShardUpdate {
        shard: first.clone(),
        expected_version: held[0].version,
        expected_status: held[0].status,
        release: Some(release.clone()),
    };
    store.update_shard(update).await.unwrap();
    // A second release of the same lease (say, a duplicate message) frees nothing more.
    let mut again = first.clone();
    again.version += 1;
    let update = ShardUpdate {
        shard: again,
        expected_version: first.version,
        expected_status: first.status,
        release: Some(release),
    };
    store.update_shard(update).await.unwrap();
    assert_eq!(
        store.get_runner(&r.id).await.unwrap().unwrap().allocated,
        Resources::new(1, 1000, 1000)
    );
}

async fn of_many_concurrent_writes_from_one_version_exactly_one_wins<B: Backend>() {
    let store = Arc::new(B::store().await);
    let r = runner(1);
    store.insert_runner(&r).await.unwrap();
    let attempts: Vec<_> = (0..64)
        .map(|i| {
            let (store, mut r) = (store.clone(), r.clone());
            tokio::spawn(async move {
                r.name = format!("writer-{i}");
                r.version += 1;
                store.update_runner(&r, 1).await
            })
        })
        .collect();
    let mut wins = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(()) => wins += 1,
            Err(e) => assert!(e.is_conflict(), "{e:?}"),
        }
    }
    assert_eq!(wins, 1, "group commit keeps every write's condition");
    assert_eq!(
        store
            .get_runner(&r.id)
            .await
            .unwrap()
            .unwrap()
            .runner
            .version,
        2
    );
}

async fn an_idempotency_key_is_taken_once_while_it_lives<B: Backend>() {
    let store = B::store().await;
    let record = |e: &Execution| tms::ports::IdempotencyRecord {
        key: "k".into(),
        body_hash: "h".into(),
        execution_id: e.id.clone(),
        expires_at: Timestamp(1_000),
    };
    let (a, sa) = execution(1);
    store
        .create_execution(&a, &sa, &[], Some(&record(&a)))
        .await
        .unwrap();
    let (b, sb) = execution(1);
    assert!(store
        .create_execution(&b, &sb, &[], Some(&record(&b)))
        .await
        .unwrap_err()
        .is_conflict());
    assert!(
        store.get_execution(&b.id).await.unwrap().is_none(),
        "nothing of the losing request was written"
    );
    assert_eq!(
        store
            .get_idempotency("k", Timestamp(999))
            .await
            .unwrap()
            .unwrap()
            .execution_id,
        a.id
    );
    assert!(
        store
            .get_idempotency("k", Timestamp(1_000))
            .await
            .unwrap()
            .is_none(),
        "expired records are ignored"
    );
}

async fn the_queued_shard_count_follows_every_transition<B: Backend>() {
    let (store, r, e, shards) = stored::<B>(4, 3).await;
    let queued = |n: u64| {
        let store = &store;
        async move { assert_eq!(store.queue_stats().await.unwrap().queued_shards, n) }
    };
    queued(3).await;
    store.assign(assignment(&shards[0], &r)).await.unwrap();
    store.assign(assignment(&shards[1], &r)).await.unwrap();
    queued(1).await;
    let (_, held) = store.load_execution(&e.id).await.unwrap().unwrap();
    store
        .update_shard(requeue_releasing(&held[0]))
        .await
        .unwrap();
    queued(2).await;
    let mut gone = held[2].clone();
    gone.cancel("cancelled", Timestamp(3)).unwrap();
    store
        .update_shard(ShardUpdate {
            shard: gone,
            expected_version: held[2].version,
            expected_status: held[2].status,
            release: None,
        })
        .await
        .unwrap();
    queued(1).await;
    let free = FreeCapacity::new(
        &[RunnerWithLoad {
            runner: runner(10),
            allocated: Resources::default(),
        }],
        &[],
    );
    let pending = store.pending_executions(&free, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].1.iter().map(|s| s.index).collect::<Vec<_>>(),
        vec![0],
        "only the queued shard is handed to the planner"
    );
}

tms_tests::conformance!(
    an_assignment_that_fails_its_runner_condition_changes_nothing,
    writes_from_a_stale_version_are_refused,
    capacity_is_given_back_once_per_lease,
    of_many_concurrent_writes_from_one_version_exactly_one_wins,
    an_idempotency_key_is_taken_once_while_it_lives,
    the_queued_shard_count_follows_every_transition,
);

/// Rewrites a version 5 data directory holding `stored` into the version 1
/// layout: JSON shard documents, the allocations table (rows and documents
/// as version 1 wrote them), the runners' `used_*` columns instead of the
/// shards' `held_*` columns, each shard's test list inside its document
/// (as versions 1 and 2 kept it; 3 and 4 in a column of the shard's row, 5
/// in a table of its own) and the executions' queued-shard counter
/// (versions 1 to 3).
fn downgrade_to_version_1(db: &std::path::Path, stored: &[Shard]) {
    let c = rusqlite::Connection::open(db).unwrap();
    // Versions 1 to 4 kept each shard as a JSON document.
    for s in stored {
        c.execute(
            "UPDATE shards SET doc = ?1 WHERE execution_id = ?2 AND idx = ?3",
            rusqlite::params![
                serde_json::to_string(s).unwrap(),
                s.execution_id.as_str(),
                s.index
            ],
        )
        .unwrap();
    }
    c.execute_batch(
        "BEGIN;
         ALTER TABLE executions ADD COLUMN queued_shards INTEGER NOT NULL DEFAULT 0;
         UPDATE executions SET queued_shards =
             (SELECT count(*) FROM shards WHERE execution_id = executions.id AND status = 'queued');
         UPDATE shards SET doc = json_set(doc, '$.tests', json((SELECT tests FROM shard_tests t
             WHERE t.execution_id = shards.execution_id AND t.idx = shards.idx)));
         DROP TABLE shard_tests;
         CREATE TABLE allocations (
             runner_id TEXT NOT NULL, execution_id TEXT NOT NULL, idx INTEGER NOT NULL, lease_id TEXT NOT NULL,
             doc TEXT NOT NULL, PRIMARY KEY (runner_id, execution_id, idx));
         INSERT INTO allocations SELECT runner_id, execution_id, idx, lease_id,
             json_object('runner_id', runner_id, 'execution_id', execution_id, 'shard_index', idx,
                 'lease_id', lease_id,
                 'resources', json_object('slots', held_slots, 'cpu_millis', held_cpu, 'memory_mb', held_memory),
                 'allocated_at', 1)
           FROM shards WHERE held_slots IS NOT NULL;
         ALTER TABLE runners ADD COLUMN used_slots INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE runners ADD COLUMN used_cpu INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE runners ADD COLUMN used_memory INTEGER NOT NULL DEFAULT 0;
         UPDATE runners SET used_slots = (SELECT coalesce(sum(held_slots), 0) FROM shards WHERE runner_id = runners.id),
             used_cpu = (SELECT coalesce(sum(held_cpu), 0) FROM shards WHERE runner_id = runners.id),
             used_memory = (SELECT coalesce(sum(held_memory), 0) FROM shards WHERE runner_id = runners.id);
         ALTER TABLE shards DROP COLUMN held_slots;
         ALTER TABLE shards DROP COLUMN held_cpu;
         ALTER TABLE shards DROP COLUMN held_memory;
         PRAGMA user_version = 1;
         COMMIT;",
    )
    .unwrap();
}

/// Writes one runner with 4 slots and one execution of `shards` shards to
/// an embedded store in `dir`, and closes it.
async fn written_to(dir: &std::path::Path, shards: u32) -> (Runner, Execution, Vec<Shard>) {
    let store = tms::adapters::SqliteStore::open_dir(dir).unwrap();
    let r = runner(4);
    store.insert_runner(&r).await.unwrap();
    let (e, shards) = execution(shards);
    store
        .create_execution(&e, &shards, &[], None)
        .await
        .unwrap();
    (r, e, shards)
}

#[tokio::test]
async fn a_version_1_data_directory_is_migrated_with_its_allocations() {
    use tms::adapters::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let (r, e, shards) = written_to(dir.path(), 3).await;
    let held = {
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        for s in &shards[..2] {
            store.assign(assignment(s, &r)).await.unwrap();
        }
        store.load_execution(&e.id).await.unwrap().unwrap().1
    };
    downgrade_to_version_1(&dir.path().join("tms.db"), &held);

    let store = SqliteStore::open_dir(dir.path()).unwrap();
    store.verify_mirror().await.unwrap();
    // Test lists written inside the documents are read from there.
    let migrated = store.load_execution(&e.id).await.unwrap().unwrap().1;
    assert_eq!(migrated, held);
    assert!(migrated.iter().all(|s| !s.tests.is_empty()));
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.queued_shards, stats.in_flight_shards), (1, 2));
    let load = |n: u32| Resources::new(n, 1000 * n, 1000 * n);
    assert_eq!(
        store.get_runner(&r.id).await.unwrap().unwrap().allocated,
        load(2)
    );
    let on_runner: Vec<u32> = store
        .runner_shards(&r.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.index)
        .collect();
    assert_eq!(on_runner, vec![0, 1]);

    // The migrated allocation is released once, like any other.
    store
        .update_shard(requeue_releasing(&held[0]))
        .await
        .unwrap();
    assert_eq!(
        store.get_runner(&r.id).await.unwrap().unwrap().allocated,
        load(1)
    );
    store.verify_mirror().await.unwrap();
    drop(store);

    // And what the migrated store wrote is what a restart finds.
    let store = SqliteStore::open_dir(dir.path()).unwrap();
    store.verify_mirror().await.unwrap();
    assert_eq!(
        store.get_runner(&r.id).await.unwrap().unwrap().allocated,
        load(1)
    );
}

/// Rebuilds the tables schema version 7 made WITHOUT ROWID (shards, their
/// test lists, result chunks, test histories) as the rowid tables version
/// 6 had, rows kept.
fn downgrade_to_version_6(db: &std::path::Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "BEGIN;
         CREATE TABLE shards_6 (
             execution_id TEXT NOT NULL, idx INTEGER NOT NULL, status TEXT NOT NULL, runner_id TEXT,
             lease_id TEXT, deadline INTEGER, version INTEGER NOT NULL, doc TEXT NOT NULL,
             held_slots INTEGER, held_cpu INTEGER, held_memory INTEGER,
             PRIMARY KEY (execution_id, idx));
         INSERT INTO shards_6 SELECT execution_id, idx, status, runner_id, lease_id, deadline,
             version, doc, held_slots, held_cpu, held_memory FROM shards;
         DROP TABLE shards;
         ALTER TABLE shards_6 RENAME TO shards;
         CREATE INDEX shards_in_flight ON shards(deadline) WHERE status IN ('assigned', 'running');
         CREATE TABLE shard_tests_6 (execution_id TEXT NOT NULL, idx INTEGER NOT NULL,
             tests TEXT NOT NULL, PRIMARY KEY (execution_id, idx));
         INSERT INTO shard_tests_6 SELECT execution_id, idx, tests FROM shard_tests;
         DROP TABLE shard_tests;
         ALTER TABLE shard_tests_6 RENAME TO shard_tests;
         CREATE TABLE results_6 (execution_id TEXT NOT NULL, shard_index INTEGER NOT NULL,
             lease_id TEXT NOT NULL, chunk INTEGER NOT NULL, body TEXT NOT NULL,
             PRIMARY KEY (execution_id, shard_index, lease_id, chunk));
         INSERT INTO results_6 SELECT execution_id, shard_index, lease_id, chunk, body FROM results;
         DROP TABLE results;
         ALTER TABLE results_6 RENAME TO results;
         CREATE TABLE timings_6 (suite TEXT NOT NULL, test TEXT NOT NULL, doc TEXT NOT NULL,
             PRIMARY KEY (suite, test));
         INSERT INTO timings_6 SELECT suite, test, doc FROM timings;
         DROP TABLE timings;
         ALTER TABLE timings_6 RENAME TO timings;
         PRAGMA user_version = 6;
         COMMIT;",
    )
    .unwrap();
}

/// The tables a data directory's schema defines WITHOUT ROWID.
fn without_rowid(db: &std::path::Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%WITHOUT ROWID%'
             ORDER BY name",
        )
        .unwrap();
    let names = stmt.query_map([], |r| r.get(0)).unwrap();
    names.collect::<rusqlite::Result<Vec<String>>>().unwrap()
}

#[tokio::test]
async fn a_version_6_data_directory_keeps_its_shards_test_lists_results_and_timings() {
    use tms::adapters::SqliteStore;
    use tms::domain::{ResultChunk, TestTiming};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tms.db");
    let (r, e, shards) = written_to(dir.path(), 3).await;
    let lease = LeaseId::generate();
    let chunks: Vec<ResultChunk> = (0..2)
        .map(|chunk| ResultChunk {
            shard_index: 1,
            lease_id: lease.clone(),
            chunk,
            body: format!(r#"[{{"name":"t{chunk}","status":"passed","duration_ms":5}}]"#),
        })
        .collect();
    let timings: Vec<TestTiming> = ["t0", "t1"]
        .iter()
        .map(|t| {
            let mut timing = TestTiming::new("s", t);
            timing.record(1_234, Timestamp(5));
            timing
        })
        .collect();
    let held = {
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        store.assign(assignment(&shards[0], &r)).await.unwrap();
        store.put_results(&e.id, &chunks).await.unwrap();
        store.put_test_timings(&timings).await.unwrap();
        store.load_execution(&e.id).await.unwrap().unwrap().1
    };
    let fresh = ["results", "shard_tests", "shards", "timings"];
    assert_eq!(without_rowid(&db), fresh);
    downgrade_to_version_6(&db);
    assert!(without_rowid(&db).is_empty());

    let store = SqliteStore::open_dir(dir.path()).unwrap();
    store.verify_mirror().await.unwrap();
    assert_eq!(store.load_execution(&e.id).await.unwrap().unwrap().1, held);
    assert_eq!(store.results(&e.id, None).await.unwrap(), chunks);
    assert_eq!(
        store.results(&e.id, Some((1, &lease))).await.unwrap(),
        chunks
    );
    let names = ["t0".to_owned(), "t1".to_owned()];
    assert_eq!(store.test_timings("s", &names).await.unwrap(), timings);
    let stats = store.queue_stats().await.unwrap();
    assert_eq!((stats.queued_shards, stats.in_flight_shards), (2, 1));
    // The in-flight index came along: the held shard's lapsed lease is
    // found through it.
    let lapsed = store.expired_shards(Timestamp(i64::MAX), 10).await.unwrap();
    assert_eq!(lapsed.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0]);
    drop(store);
    let db_conn = rusqlite::Connection::open(&db).unwrap();
    let plan: String = db_conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT idx FROM shards
             WHERE status IN ('assigned', 'running') AND deadline < 5",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("shards_in_flight"), "{plan}");
    drop(db_conn);
    assert_eq!(without_rowid(&db), fresh);
}

#[tokio::test]
async fn a_shards_row_holds_a_compact_record_and_its_test_list_written_once() {
    use tms::adapters::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let (r, e, shards) = written_to(dir.path(), 2).await;
    let held = {
        let store = SqliteStore::open_dir(dir.path()).unwrap();
        store.assign(assignment(&shards[0], &r)).await.unwrap();
        let held = store.load_execution(&e.id).await.unwrap().unwrap().1;
        store
            .update_shard(requeue_releasing(&held[0]))
            .await
            .unwrap();
        store.load_execution(&e.id).await.unwrap().unwrap().1
    };
    let c = rusqlite::Connection::open(dir.path().join("tms.db")).unwrap();
    let rows = |c: &rusqlite::Connection| -> Vec<(String, i64, String)> {
        c.prepare(
            "SELECT typeof(s.doc), length(s.doc), t.tests FROM shards s
             JOIN shard_tests t ON t.execution_id = s.execution_id AND t.idx = s.idx ORDER BY s.idx",
        )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let written = rows(&c);
    assert_eq!(
        written
            .iter()
            .map(|(t, _, tests)| (t.as_str(), tests.as_str()))
            .collect::<Vec<_>>(),
        vec![("blob", r#"["t0"]"#), ("blob", r#"["t1"]"#)]
    );
    // The record leaves out what the columns hold: a fraction of the JSON.
    for ((_, len, _), s) in written.iter().zip(&held) {
        let json = serde_json::to_string(s).unwrap().len() as i64;
        assert!(len * 3 < json, "record {len} bytes, JSON {json}");
    }
    // A document written as JSON (before schema version 5) is still read.
    c.execute(
        "UPDATE shards SET doc = ?1 WHERE idx = 1",
        [serde_json::to_string(&held[1]).unwrap()],
    )
    .unwrap();
    drop(c);
    // Read back whole, from the mirror rebuilt at open and from the table.
    let store = SqliteStore::open_dir(dir.path()).unwrap();
    store.verify_mirror().await.unwrap();
    let (_, stored) = store.load_execution(&e.id).await.unwrap().unwrap();
    assert_eq!(stored, held);
    let tests: Vec<&[String]> = stored.iter().map(|s| &*s.tests).collect();
    assert_eq!(tests, [["t0".to_string()], ["t1".to_string()]]);
    let on_runner = store.runner_shards(&r.id).await.unwrap();
    assert!(on_runner.is_empty(), "the requeue gave the shard back");
    // Its next change writes it as a record.
    store.assign(assignment(&stored[1], &r)).await.unwrap();
    drop(store);
    let c = rusqlite::Connection::open(dir.path().join("tms.db")).unwrap();
    assert_eq!(rows(&c)[1].0, "blob");
}
