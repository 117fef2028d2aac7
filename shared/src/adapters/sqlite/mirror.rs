//! The hot set of the embedded store, kept in memory as a mirror of the
//! committed database: runners with their load, the unfinished executions
//! with their shards, allocations, load-balancing rules and round-robin
//! cursors.
//!
//! Why: every heartbeat, report and scheduling pass reads these, and sending
//! each read to the database thread (a hand-off, a query and a JSON decode)
//! was most of that thread's work — the one thread every write waits on.
//! Read from here, they cost a lock and a clone.
//!
//! The database stays the source of truth. Only the database thread changes
//! the mirror: each write operation records its [`Change`]s beside its SQL,
//! and the thread applies a group's changes after its COMMIT and before it
//! answers the callers. So the mirror always shows committed state, as the
//! reads it replaces did, and a caller sees its own acknowledged writes. A
//! refused write, or a group that is rolled back, leaves no change behind.
//!
//! Writes check their conditions here too, through a [`View`]: the mirror
//! with the changes of the group's earlier writes laid over it (an
//! [`Overlay`]), since those are not committed yet. Runner load and
//! allocations are kept only here (rebuilt at open from the shards'
//! `held_*` columns), so an assignment or a release costs no statement for
//! them.
//!
//! Finished executions are not kept (memory stays bounded by the work in
//! flight): reads of them, and anything the mirror cannot answer exactly,
//! fall back to the database thread.

use crate::domain::{Execution, LoadBalancingRule, Resources, Runner, RunnerWithLoad, Shard};
use crate::domain::{ExecutionStatus, Mode, Requirements, RunnerStatus, ShardStatus, TestSpec};
use crate::ids::{ExecutionId, LeaseId, RunnerId};
use crate::ports::QueueStats;
use crate::scheduling::FreeCapacity;
use crate::time::Timestamp;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// One committed change to a mirrored entity, in commit order.
#[derive(Debug)]
pub(super) enum Change {
    /// A new runner (no load yet). Runners and executions are boxed: each
    /// is several times the size of most other changes.
    NewRunner(Box<Runner>),
    /// A runner's document changed; its load stays.
    Runner(Box<Runner>),
    /// Capacity taken (`add`) or given back (saturating, like the SQL).
    Load {
        runner: RunnerId,
        resources: Resources,
        add: bool,
    },
    /// An execution was written. An unfinished one is kept (added without
    /// shards when new, which then follow as [`Change::Shard`]); a finished
    /// one leaves the mirror with its shards.
    Execution(Box<Execution>),
    /// A shard was written; kept only while its execution is.
    Shard(Shard),
    /// A dynamic execution's tests in claim order (written once, with the
    /// execution); kept while the execution is.
    Queue {
        execution: ExecutionId,
        tests: Arc<[TestSpec]>,
    },
    Allocated {
        runner: RunnerId,
        execution: ExecutionId,
        index: u32,
        lease: LeaseId,
    },
    Released {
        runner: RunnerId,
        execution: ExecutionId,
        index: u32,
    },
    Rule(LoadBalancingRule),
    RuleDeleted(String),
    Cursor {
        pool: String,
        runner: RunnerId,
    },
    CursorDeleted(String),
}

/// An unfinished execution and its shards.
#[derive(Debug, PartialEq)]
struct Active {
    /// Its requirement class ([`Requirements::class`]), the pending
    /// index it is kept in.
    class: String,
    execution: Execution,
    shards: BTreeMap<u32, Shard>,
    /// Shards waiting for the scheduler (queued, static mode).
    waiting: u32,
    /// A dynamic execution's tests in claim order.
    queue: Option<Arc<[TestSpec]>>,
}

impl Active {
    fn priority_key(&self) -> (Reverse<i32>, i64, ExecutionId) {
        (
            Reverse(self.execution.priority),
            self.execution.created_at.0,
            self.execution.id.clone(),
        )
    }

    fn age_key(&self) -> (i64, ExecutionId) {
        (self.execution.created_at.0, self.execution.id.clone())
    }
}

/// The keys of the scheduler's two orders: by priority then age, by age.
type PriorityKey = (Reverse<i32>, i64, ExecutionId);
type AgeKey = (i64, ExecutionId);

/// The executions of one requirement class with shards waiting, in the
/// scheduler's two orders.
#[derive(Debug, Default, PartialEq)]
struct ClassQueue {
    requirements: Requirements,
    by_priority: BTreeSet<PriorityKey>,
    by_age: BTreeSet<AgeKey>,
}

/// The pending index: executions with shards waiting, by requirement
/// class, so a scheduling pass reads only the classes some free runner
/// fits and never walks work none could take.
type Pending = BTreeMap<String, ClassQueue>;

/// Adds `a` to the pending index (`waiting`) or takes it out.
fn index(pending: &mut Pending, a: &Active, waiting: bool) {
    if waiting {
        let queue = pending
            .entry(a.class.clone())
            .or_insert_with(|| ClassQueue {
                requirements: a.execution.requirements.clone(),
                ..Default::default()
            });
        queue.by_priority.insert(a.priority_key());
        queue.by_age.insert(a.age_key());
    } else if let Some(queue) = pending.get_mut(&a.class) {
        queue.by_priority.remove(&a.priority_key());
        queue.by_age.remove(&a.age_key());
        if queue.by_priority.is_empty() {
            pending.remove(&a.class);
        }
    }
}

/// The keys of several sorted sets in one ascending order (a k-way merge).
fn merged<'a, K: Ord>(sets: Vec<&'a BTreeSet<K>>) -> impl Iterator<Item = &'a K> {
    let mut iters: Vec<std::collections::btree_set::Iter<'a, K>> =
        sets.into_iter().map(|s| s.iter()).collect();
    let mut heads: std::collections::BinaryHeap<Reverse<(&'a K, usize)>> = iters
        .iter_mut()
        .enumerate()
        .filter_map(|(i, it)| it.next().map(|k| Reverse((k, i))))
        .collect();
    std::iter::from_fn(move || {
        let Reverse((key, i)) = heads.pop()?;
        if let Some(next) = iters[i].next() {
            heads.push(Reverse((next, i)));
        }
        Some(key)
    })
}

/// A runner's load after capacity is taken or given back (never below zero).
fn moved(load: Resources, by: Resources, add: bool) -> Resources {
    if add {
        load.plus(&by)
    } else {
        load.minus(&by)
    }
}

fn waits(shard: &Shard) -> bool {
    shard.status == ShardStatus::Queued && shard.mode.is_static()
}

/// A dynamic batch waiting to be claimed again.
fn returned(shard: &Shard) -> bool {
    shard.status == ShardStatus::Queued && shard.mode == Mode::Dynamic
}

/// The key of the dynamic index: highest priority first, then oldest.
type ClaimKey = (Reverse<i32>, i64, ExecutionId);

/// The in-memory hot set (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Mirror {
    runners: BTreeMap<RunnerId, RunnerWithLoad>,
    active: HashMap<ExecutionId, Active>,
    /// The pending index (see [`Pending`]).
    pending: Pending,
    /// Unfinished dynamic executions, where runners look for batches.
    dynamic: BTreeSet<ClaimKey>,
    /// runner -> (execution, shard index) -> lease.
    allocations: HashMap<RunnerId, BTreeMap<(ExecutionId, u32), LeaseId>>,
    rules: BTreeMap<String, LoadBalancingRule>,
    cursors: BTreeMap<String, RunnerId>,
}

/// What a read of a runner's held shards found.
pub(super) enum Held {
    NoRunner,
    Shards(Box<RunnerWithLoad>, Vec<Shard>),
    /// An allocation points into a finished execution: ask the database.
    Unknown,
}

impl Mirror {
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::NewRunner(runner) => {
                self.runners.insert(
                    runner.id.clone(),
                    RunnerWithLoad {
                        runner: *runner,
                        allocated: Resources::default(),
                    },
                );
            }
            Change::Runner(runner) => match self.runners.get_mut(&runner.id) {
                Some(r) => r.runner = *runner,
                None => {
                    self.runners.insert(
                        runner.id.clone(),
                        RunnerWithLoad {
                            runner: *runner,
                            allocated: Resources::default(),
                        },
                    );
                }
            },
            Change::Load {
                runner,
                resources,
                add,
            } => {
                if let Some(r) = self.runners.get_mut(&runner) {
                    r.allocated = moved(r.allocated, resources, add);
                }
            }
            Change::Execution(execution) => self.put_execution(*execution),
            Change::Shard(shard) => self.put_shard(shard),
            Change::Queue { execution, tests } => {
                if let Some(a) = self.active.get_mut(&execution) {
                    a.queue = Some(tests);
                }
            }
            Change::Allocated {
                runner,
                execution,
                index,
                lease,
            } => {
                self.allocations
                    .entry(runner)
                    .or_default()
                    .insert((execution, index), lease);
            }
            Change::Released {
                runner,
                execution,
                index,
            } => {
                if let Some(held) = self.allocations.get_mut(&runner) {
                    held.remove(&(execution, index));
                    if held.is_empty() {
                        self.allocations.remove(&runner);
                    }
                }
            }
            Change::Rule(rule) => {
                self.rules.insert(rule.id.to_string(), rule);
            }
            Change::RuleDeleted(id) => {
                self.rules.remove(&id);
            }
            Change::Cursor { pool, runner } => {
                self.cursors.insert(pool, runner);
            }
            Change::CursorDeleted(pool) => {
                self.cursors.remove(&pool);
            }
        }
    }

    fn put_execution(&mut self, mut execution: Execution) {
        let id = execution.id.clone();
        let old = self.active.remove(&id);
        if let Some(old) = &old {
            index(&mut self.pending, old, false);
            self.dynamic.remove(&old.priority_key());
        }
        if execution.status.is_terminal() {
            return;
        }
        let active = match old {
            Some(mut a) => {
                // Kept from the shards, whatever the writer read.
                execution.returned = a
                    .shards
                    .values()
                    .filter(|s| returned(s))
                    .map(|s| s.index)
                    .collect();
                a.execution = execution;
                a
            }
            None => {
                execution.returned.clear();
                Active {
                    class: execution.requirements.class(),
                    execution,
                    shards: BTreeMap::new(),
                    waiting: 0,
                    queue: None,
                }
            }
        };
        index(&mut self.pending, &active, active.waiting > 0);
        if active.execution.mode == Mode::Dynamic {
            self.dynamic.insert(active.priority_key());
        }
        self.active.insert(id, active);
    }

    fn put_shard(&mut self, shard: Shard) {
        let Some(a) = self.active.get_mut(&shard.execution_id) else {
            return;
        };
        let was = a.shards.get(&shard.index).is_some_and(waits);
        let before = a.waiting > 0;
        a.waiting = a.waiting + u32::from(waits(&shard)) - u32::from(was);
        let back = &mut a.execution.returned;
        match (returned(&shard), back.binary_search(&shard.index)) {
            (true, Err(at)) => back.insert(at, shard.index),
            (false, Ok(at)) => {
                back.remove(at);
            }
            _ => {}
        }
        a.shards.insert(shard.index, shard);
        // A shard write changes no key of the index, only whether the
        // execution is in it.
        if before != (a.waiting > 0) {
            index(&mut self.pending, a, !before);
        }
    }

    /// Where the pending index and the waiting counts disagree with the
    /// shards they are kept from. (A fresh load builds them with the same
    /// code, so comparing two mirrors alone would not catch a bug here.)
    fn derived_state_error(&self) -> Option<String> {
        let mut pending = Pending::new();
        let mut dynamic = BTreeSet::new();
        for (id, a) in &self.active {
            let waiting = a.shards.values().filter(|s| waits(s)).count() as u32;
            if waiting != a.waiting {
                return Some(format!(
                    "waiting count of {id:?}: {} kept, {waiting} counted",
                    a.waiting
                ));
            }
            let back: Vec<u32> = a
                .shards
                .values()
                .filter(|s| returned(s))
                .map(|s| s.index)
                .collect();
            if back != a.execution.returned {
                return Some(format!(
                    "returned batches of {id:?}: {:?} kept, {back:?} counted",
                    a.execution.returned
                ));
            }
            if a.class != a.execution.requirements.class() {
                return Some(format!("class of {id:?}: {} kept", a.class));
            }
            index(&mut pending, a, waiting > 0);
            if a.execution.mode == Mode::Dynamic {
                dynamic.insert(a.priority_key());
            }
        }
        if dynamic != self.dynamic {
            return Some(format!(
                "dynamic index: {:?} kept, {dynamic:?} derived",
                self.dynamic
            ));
        }
        (pending != self.pending).then(|| {
            format!(
                "pending index: {:?} kept, {:?} derived",
                self.pending, pending
            )
        })
    }

    /// Where this mirror and `other` differ first (for the consistency
    /// check): the part and the entry, each side in debug form; or where
    /// this mirror's derived state is wrong.
    pub fn difference(&self, other: &Mirror) -> Option<String> {
        if let Some(wrong) = self.derived_state_error() {
            return Some(wrong);
        }
        fn first<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
            part: &str,
            a: impl IntoIterator<Item = (K, V)>,
            b: impl IntoIterator<Item = (K, V)>,
        ) -> Option<String> {
            let a: BTreeMap<K, V> = a.into_iter().collect();
            let mut b: BTreeMap<K, V> = b.into_iter().collect();
            for (k, v) in &a {
                match b.remove(k) {
                    Some(w) if w == *v => {}
                    w => return Some(format!("{part} {k:?}: mirror {v:#?}, database {w:#?}")),
                }
            }
            let (k, w) = b.into_iter().next()?;
            Some(format!("{part} {k:?}: mirror None, database {w:#?}"))
        }
        fn keys<K>(set: &BTreeSet<K>) -> impl Iterator<Item = (&K, ())> {
            set.iter().map(|k| (k, ()))
        }
        first("runner", &self.runners, &other.runners)
            .or_else(|| first("execution", &self.active, &other.active))
            .or_else(|| first("allocations of", &self.allocations, &other.allocations))
            .or_else(|| first("rule", &self.rules, &other.rules))
            .or_else(|| first("cursor", &self.cursors, &other.cursors))
            .or_else(|| first("pending class", &self.pending, &other.pending))
            .or_else(|| first("dynamic", keys(&self.dynamic), keys(&other.dynamic)))
    }

    pub fn runner(&self, id: &RunnerId) -> Option<RunnerWithLoad> {
        self.runners.get(id).cloned()
    }

    /// Runners in id order after `cursor`, at most `limit`.
    pub fn runners_after(&self, cursor: Option<&str>, limit: usize) -> Vec<RunnerWithLoad> {
        self.runners
            .iter()
            .skip_while(|(id, _)| cursor.is_some_and(|c| id.as_str() <= c))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The runner's allocations: (execution, shard index) and lease.
    pub fn allocations_of(&self, id: &RunnerId) -> Vec<(ExecutionId, u32, LeaseId)> {
        self.allocations
            .get(id)
            .into_iter()
            .flatten()
            .map(|((e, i), l)| (e.clone(), *i, l.clone()))
            .collect()
    }

    pub fn schedulable_runners(&self) -> Vec<RunnerWithLoad> {
        self.runners
            .values()
            .filter(|r| r.runner.status == RunnerStatus::Active)
            .cloned()
            .collect()
    }

    /// The shards whose current lease the runner holds, by execution and index.
    pub fn held(&self, id: &RunnerId) -> Held {
        let Some(runner) = self.runners.get(id) else {
            return Held::NoRunner;
        };
        let mut shards = Vec::new();
        for ((execution, index), lease) in self.allocations.get(id).into_iter().flatten() {
            let Some(active) = self.active.get(execution) else {
                return Held::Unknown;
            };
            if let Some(s) = active.shards.get(index) {
                if s.lease_id.as_ref() == Some(lease) {
                    shards.push(s.clone());
                }
            }
        }
        Held::Shards(Box::new(runner.clone()), shards)
    }

    /// `None`: not unfinished (finished or unknown); ask the database.
    pub fn execution(&self, id: &ExecutionId) -> Option<Execution> {
        self.active.get(id).map(|a| a.execution.clone())
    }

    pub fn execution_with_shards(&self, id: &ExecutionId) -> Option<(Execution, Vec<Shard>)> {
        self.active
            .get(id)
            .map(|a| (a.execution.clone(), a.shards.values().cloned().collect()))
    }

    /// Tests `from..from + limit` of an unfinished dynamic execution's
    /// claim order; `None`: not kept here, ask the database.
    pub fn queued_tests(&self, id: &ExecutionId, from: u32, limit: u32) -> Option<Vec<TestSpec>> {
        let queue = self.active.get(id)?.queue.as_ref()?;
        let start = (from as usize).min(queue.len());
        let end = start.saturating_add(limit as usize).min(queue.len());
        Some(queue[start..end].to_vec())
    }

    /// Unfinished dynamic executions after `cursor` in claim order (highest
    /// priority first, then oldest), at most `limit`, and whether more follow.
    pub fn dynamic_after(&self, cursor: Option<&ClaimKey>, limit: usize) -> (Vec<Execution>, bool) {
        let mut keys = match cursor {
            Some(c) => self.dynamic.range((
                std::ops::Bound::Excluded(c.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => self.dynamic.range(..),
        };
        let items: Vec<Execution> = keys
            .by_ref()
            .take(limit)
            .filter_map(|(_, _, id)| self.active.get(id))
            .map(|a| a.execution.clone())
            .collect();
        (items, keys.next().is_some())
    }

    /// `Some(None)`: the execution is unfinished and has no such shard.
    pub fn shard(&self, id: &ExecutionId, index: u32) -> Option<Option<(Execution, Shard)>> {
        self.active.get(id).map(|a| {
            a.shards
                .get(&index)
                .map(|s| (a.execution.clone(), s.clone()))
        })
    }

    /// The executions with shards waiting for the scheduler that some free
    /// runner can run, walked in priority order and in age order (each with
    /// its own copy of `free`, until it is used up or `max_executions` are
    /// found), each with its queued shards. Only the requirement classes
    /// some free runner fits are read: work nobody free could take is never
    /// walked, however much of it waits.
    pub fn pending(
        &self,
        free: &FreeCapacity,
        max_executions: u32,
    ) -> Vec<(Execution, Vec<Shard>)> {
        let max = max_executions as usize;
        let runnable: Vec<&ClassQueue> = self
            .pending
            .values()
            .filter(|q| free.could_serve(&q.requirements))
            .collect();
        let of = |id: &&ExecutionId| self.active.get(*id).map(|a| (&a.execution, a.waiting));
        let by_priority = merged(runnable.iter().map(|q| &q.by_priority).collect());
        let mut found = free.clone().walk(by_priority.map(|(_, _, id)| id), max, of);
        let mut seen: HashSet<&ExecutionId> = found.iter().copied().collect();
        let by_age = merged(runnable.iter().map(|q| &q.by_age).collect());
        for id in free.clone().walk(by_age.map(|(_, id)| id), max, of) {
            if seen.insert(id) {
                found.push(id);
            }
        }
        found
            .into_iter()
            .filter_map(|id| self.active.get(id))
            .map(|a| {
                let queued = a
                    .shards
                    .values()
                    .filter(|s| s.status == ShardStatus::Queued)
                    .cloned()
                    .collect();
                (a.execution.clone(), queued)
            })
            .collect()
    }

    /// Shards waiting for the scheduler, unfinished executions and the
    /// oldest with shards waiting (`in_flight_shards` is left at 0).
    pub fn queue_stats(&self) -> QueueStats {
        QueueStats {
            queued_shards: self.active.values().map(|a| u64::from(a.waiting)).sum(),
            in_flight_shards: 0,
            active_executions: self.active.len() as u64,
            oldest_queued_at: self
                .pending
                .values()
                .filter_map(|q| q.by_age.first())
                .map(|(at, _)| Timestamp(*at))
                .min(),
        }
    }

    pub fn rules(&self) -> Vec<LoadBalancingRule> {
        self.rules.values().cloned().collect()
    }

    pub fn cursors(&self) -> BTreeMap<String, RunnerId> {
        self.cursors.clone()
    }
}

/// What the writes of the group in progress changed, as far as later
/// writes in the same group check it: they are not committed, so the
/// mirror does not show them yet. Only what [`View`] answers is kept.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    /// Executions written in this group: status, version and deadline.
    executions: HashMap<ExecutionId, (ExecutionStatus, u64, Timestamp)>,
    /// execution -> shard index -> (version, status).
    shards: HashMap<ExecutionId, BTreeMap<u32, (u64, ShardStatus)>>,
    /// Runners written in this group: status and capacity.
    runners: HashMap<RunnerId, (RunnerStatus, Resources)>,
    /// Loads moved in this group, as they stand now.
    loads: HashMap<RunnerId, Resources>,
    /// Allocations made (`Some`) or released (`None`) in this group.
    allocations: HashMap<(RunnerId, ExecutionId, u32), Option<LeaseId>>,
}

impl Overlay {
    /// Lays a write's changes over the group's (in the order it made them);
    /// `mirror` is the committed state they change.
    pub fn record(&mut self, changes: &[Change], mirror: &Mirror) {
        for change in changes {
            match change {
                Change::NewRunner(r) | Change::Runner(r) => {
                    self.runners.insert(r.id.clone(), (r.status, r.capacity));
                }
                Change::Load {
                    runner,
                    resources,
                    add,
                } => {
                    let committed = || mirror.runners.get(runner).map(|r| r.allocated);
                    let load = self
                        .loads
                        .entry(runner.clone())
                        .or_insert_with(|| committed().unwrap_or_default());
                    *load = moved(*load, *resources, *add);
                }
                Change::Allocated {
                    runner,
                    execution,
                    index,
                    lease,
                } => {
                    let key = (runner.clone(), execution.clone(), *index);
                    self.allocations.insert(key, Some(lease.clone()));
                }
                Change::Released {
                    runner,
                    execution,
                    index,
                } => {
                    let key = (runner.clone(), execution.clone(), *index);
                    self.allocations.insert(key, None);
                }
                Change::Execution(e) => {
                    self.executions
                        .insert(e.id.clone(), (e.status, e.version, e.deadline));
                }
                Change::Shard(s) => {
                    self.shards
                        .entry(s.execution_id.clone())
                        .or_default()
                        .insert(s.index, (s.version, s.status));
                }
                Change::Queue { .. }
                | Change::Rule(_)
                | Change::RuleDeleted(_)
                | Change::Cursor { .. }
                | Change::CursorDeleted(_) => {}
            }
        }
    }
}

/// The state a write in a group checks its conditions against: the
/// committed mirror with the group's earlier writes laid over it.
pub(super) struct View<'a> {
    mirror: &'a Mirror,
    overlay: &'a Overlay,
}

/// An unfinished execution as a [`View`] sees it.
pub(super) enum Live<'a> {
    /// Not written in this group: the committed execution.
    Committed(&'a Execution),
    /// Written earlier in this group, with this status, version and
    /// deadline; its document is in the open transaction.
    Written(ExecutionStatus, u64, Timestamp),
}

impl Live<'_> {
    /// The execution's version as the view sees it.
    pub fn version(&self) -> u64 {
        match self {
            Live::Committed(e) => e.version,
            Live::Written(_, version, _) => *version,
        }
    }

    /// The row's indexed columns as they stand (status and deadline): a
    /// write that leaves them as they are need not touch the index.
    pub fn indexed(&self) -> (ExecutionStatus, Timestamp) {
        match self {
            Live::Committed(e) => (e.status, e.deadline),
            Live::Written(status, _, deadline) => (*status, *deadline),
        }
    }
}

impl<'a> View<'a> {
    pub fn new(mirror: &'a Mirror, overlay: &'a Overlay) -> Self {
        View { mirror, overlay }
    }

    /// The execution if it is unfinished; `None` if it is finished or unknown.
    pub fn live_execution(&self, id: &ExecutionId) -> Option<Live<'a>> {
        match self.overlay.executions.get(id) {
            Some((status, version, deadline)) => {
                (!status.is_terminal()).then_some(Live::Written(*status, *version, *deadline))
            }
            None => self
                .mirror
                .active
                .get(id)
                .map(|a| Live::Committed(&a.execution)),
        }
    }

    /// A shard's version and status, if its execution is unfinished (the
    /// mirror keeps no others; check [`View::live_execution`] first).
    pub fn shard(&self, id: &ExecutionId, index: u32) -> Option<(u64, ShardStatus)> {
        let written = self.overlay.shards.get(id).and_then(|s| s.get(&index));
        written.copied().or_else(|| {
            let s = self.mirror.active.get(id)?.shards.get(&index)?;
            Some((s.version, s.status))
        })
    }

    /// A runner's status, capacity and load; `None`: no such runner.
    pub fn runner(&self, id: &RunnerId) -> Option<(RunnerStatus, Resources, Resources)> {
        let committed = self.mirror.runners.get(id);
        let (status, capacity) = match self.overlay.runners.get(id) {
            Some(written) => *written,
            None => committed.map(|r| (r.runner.status, r.runner.capacity))?,
        };
        let load = match self.overlay.loads.get(id) {
            Some(load) => *load,
            None => committed.map(|r| r.allocated).unwrap_or_default(),
        };
        Some((status, capacity, load))
    }

    /// The lease holding the runner's allocation for a shard, if any.
    pub fn allocation(
        &self,
        runner: &RunnerId,
        execution: &ExecutionId,
        index: u32,
    ) -> Option<LeaseId> {
        let key = (runner.clone(), execution.clone(), index);
        match self.overlay.allocations.get(&key) {
            Some(written) => written.clone(),
            None => self
                .mirror
                .allocations
                .get(runner)?
                .get(&(execution.clone(), index))
                .cloned(),
        }
    }

    /// The committed state alone (for reads, which run outside any group's writes).
    pub fn committed(&self) -> &'a Mirror {
        self.mirror
    }
}
