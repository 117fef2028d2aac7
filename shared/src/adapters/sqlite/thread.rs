//! The embedded store's database thread: one thread owns the one
//! connection, so SQLite's page cache stays warm (separate reader
//! connections lose theirs at every commit, which dominated the profile).
//!
//! Operations queue up while the thread works and are taken as a group:
//! first the reads, outside any transaction, so they see only committed
//! state; then the writes, in one transaction, each seeing the writes
//! before it. Every writer is answered after the group's COMMIT (group
//! commit), so an acknowledged write is as durable as with one transaction
//! per call.
//!
//! A write may check its conditions against a [`View`]: the mirror (the
//! committed state) with the changes of the writes before it in the same
//! group laid over it. Conditions checked so cost no statement; the
//! statement that makes the change still carries them where it can (a
//! shard's version), as a second guard.
//!
//! A write checks all its conditions before it changes anything, so a
//! refused write (a conflict, a missing row, a transition the domain
//! forbids) has nothing to undo and the group goes on without it. Only a
//! failure of the database itself (or a panic) can stop a write halfway;
//! then the whole group is rolled back and every write in it fails. This
//! replaced a savepoint per write, whose statements and page journal were
//! a tenth of the thread's work.

use super::mirror::{Change, Mirror, Overlay, View};
use crate::error::{Error, Result};
use rusqlite::Connection;
use std::future::Future;
use std::sync::{mpsc, Arc, RwLock};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Most operations taken as one group.
const MAX_GROUP: usize = 128;

/// Commits after which the thread checkpoints the WAL into the database
/// file the next time it has nothing to do. A checkpoint ends in fsyncs
/// that took tens of milliseconds here; run by SQLite inside a COMMIT, it
/// stalled every caller waiting on that group (report p99 58-60 ms in the
/// load benchmark, 15-16 ms with checkpoints kept out of the run).
/// SQLite's own automatic checkpoint, at a much larger WAL, stays as the
/// bound for a server that is never idle.
const IDLE_CHECKPOINT_COMMITS: u32 = 1000;

trait Job: Send {
    fn is_read(&self) -> bool;
    /// Runs the operation (a write inside the open transaction); true if
    /// it may have stopped halfway (the group must be rolled back).
    fn run(&mut self, conn: &Connection, view: &View<'_>) -> bool;
    /// The mirror changes of a write that stood (see [`super::mirror`]).
    fn changes(&self) -> &[Change];
    fn take_changes(&mut self) -> Vec<Change>;
    /// Answers the caller once the operation's fate is known.
    fn finish(self: Box<Self>, committed: &std::result::Result<(), String>);
}

struct Pending<T, F> {
    read: bool,
    work: Option<F>,
    changes: Vec<Change>,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<T> + Send,
{
    fn is_read(&self) -> bool {
        self.read
    }

    fn run(&mut self, conn: &Connection, view: &View<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let outcome = guarded(|c| work(c, view, &mut self.changes), conn);
        let spoiled = matches!(outcome, Err(Error::Storage(_) | Error::Internal(_)));
        if outcome.is_err() {
            self.changes.clear();
        }
        self.outcome = Some(outcome);
        spoiled && !self.read
    }

    fn changes(&self) -> &[Change] {
        &self.changes
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn finish(self: Box<Self>, committed: &std::result::Result<(), String>) {
        let answer = match (committed, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            // The write that spoiled the group hears its own error.
            (Err(_), Some(Err(own))) => Err(own),
            (Err(msg), _) => Err(Error::Internal(format!(
                "not written, the transaction was rolled back: {msg}"
            ))),
            (Ok(()), None) => Err(Error::Internal("operation was not run".into())),
        };
        // The caller may have gone away (request cancelled); the write stands.
        let _ = self.reply.send(answer);
    }
}

/// Runs a transaction-control statement, prepared once (they run several
/// times per operation, and parsing them showed in the profile).
fn control(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs one operation; a panic in it becomes an error for its caller alone
/// instead of taking the database thread (and every later call) down.
fn guarded<T>(work: impl FnOnce(&Connection) -> Result<T>, conn: &Connection) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::Internal(format!(
            "a store operation panicked: {what}"
        )))
    })
}

/// What one send puts in the thread's inbox: an operation, or two taken
/// into the same group one after the other (see [`DbThread::write_pair`]).
enum Submission {
    One(Box<dyn Job>),
    Pair(Box<dyn Job>, Box<dyn Job>),
}

impl Submission {
    fn into_group(self, group: &mut Vec<Box<dyn Job>>) {
        match self {
            Submission::One(job) => group.push(job),
            Submission::Pair(a, b) => group.extend([a, b]),
        }
    }
}

/// Handle to the database thread; dropping it stops the thread after the
/// queued operations are done.
pub struct DbThread {
    jobs: Option<mpsc::Sender<Submission>>,
    thread: Option<JoinHandle<()>>,
}

impl DbThread {
    /// Starts the thread; it applies committed changes to `mirror`.
    pub fn start(conn: Connection, mirror: Arc<RwLock<Mirror>>) -> Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Submission>();
        let thread = std::thread::Builder::new()
            .name("tms-sqlite".into())
            .spawn(move || run(conn, inbox, &mirror))
            .map_err(|e| Error::Storage(Box::new(e)))?;
        Ok(DbThread {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `work` as one atomic write and waits for its commit (and for
    /// the changes it records to be in the mirror).
    pub async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Vec<Change>) -> Result<T> + Send + 'static,
    {
        self.submit(
            false,
            move |c: &Connection, _: &View<'_>, ch: &mut Vec<Change>| work(c, ch),
        )
        .await
    }

    /// [`DbThread::write`] for a write that checks its conditions against
    /// the [`View`] instead of the database. Queued when called, before the
    /// answer is awaited: writes called one after the other run in that
    /// order.
    pub fn write_viewed<T, F>(&self, work: F) -> impl Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<T> + Send + 'static,
    {
        self.submit(false, work)
    }

    /// Queues `work` as a write without waiting for it: it commits with the
    /// next group, and its outcome goes nowhere.
    pub fn write_detached<F>(&self, work: F) -> Result<()>
    where
        F: FnOnce(&Connection, &mut Vec<Change>) -> Result<()> + Send + 'static,
    {
        let (reply, _) = oneshot::channel();
        self.send(Submission::One(Box::new(Pending {
            read: false,
            work: Some(move |c: &Connection, _: &View<'_>, ch: &mut Vec<Change>| work(c, ch)),
            changes: Vec::new(),
            outcome: None,
            reply,
        })))
    }

    /// Two writes that commit in the same group, `first` then `second`:
    /// `second` sees what `first` changed in its [`View`] (and may make
    /// that its condition). One hand-off and one commit for both, where
    /// two writes one after the other take two. Queued when called, like
    /// [`DbThread::write_viewed`].
    pub fn write_pair<T, U, F, G>(
        &self,
        first: F,
        second: G,
    ) -> impl Future<Output = (Result<T>, Result<U>)> + Send + 'static
    where
        T: Send + 'static,
        U: Send + 'static,
        F: FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<T> + Send + 'static,
        G: FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<U> + Send + 'static,
    {
        let (first, first_answer) = pending(false, first);
        let (second, second_answer) = pending(false, second);
        let sent = self.send(Submission::Pair(first, second));
        async move {
            if let Err(e) = sent {
                let again = Error::Internal(e.to_string());
                return (Err(e), Err(again));
            }
            (answered(first_answer).await, answered(second_answer).await)
        }
    }

    fn send(&self, job: Submission) -> Result<()> {
        let stopped = || Error::Internal("the store's database thread has stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())
    }

    /// Runs `work` on committed state and waits for its answer.
    pub async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(
            true,
            move |c: &Connection, _: &View<'_>, _: &mut Vec<Change>| work(c),
        )
        .await
    }

    /// [`DbThread::read`] with the [`View`] (the committed mirror: reads
    /// run before the group's writes).
    pub async fn read_viewed<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &View<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(
            true,
            move |c: &Connection, v: &View<'_>, _: &mut Vec<Change>| work(c, v),
        )
        .await
    }

    /// Queues the operation now; the future waits for its answer.
    fn submit<T, F>(&self, read: bool, work: F) -> impl Future<Output = Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<T> + Send + 'static,
    {
        let (job, answer) = pending(read, work);
        let sent = self.send(Submission::One(job));
        async move {
            sent?;
            answered(answer).await
        }
    }
}

/// An operation for the thread, and where its answer comes.
fn pending<T, F>(read: bool, work: F) -> (Box<dyn Job>, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&Connection, &View<'_>, &mut Vec<Change>) -> Result<T> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let job = Box::new(Pending {
        read,
        work: Some(work),
        changes: Vec::new(),
        outcome: None,
        reply,
    });
    (job, answer)
}

async fn answered<T>(answer: oneshot::Receiver<Result<T>>) -> Result<T> {
    answer
        .await
        .map_err(|_| Error::Internal("the store's database thread has stopped".into()))?
}

impl Drop for DbThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, inbox: mpsc::Receiver<Submission>, mirror: &RwLock<Mirror>) {
    const READ_OK: std::result::Result<(), String> = Ok(());
    let mut commits_since_checkpoint = 0u32;
    loop {
        let first = match inbox.try_recv() {
            Ok(job) => job,
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {
                if commits_since_checkpoint >= IDLE_CHECKPOINT_COMMITS {
                    commits_since_checkpoint = 0;
                    let checkpoint =
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = checkpoint {
                        tracing::warn!(error = %e, "WAL checkpoint failed; SQLite retries at its own limit");
                    }
                    continue;
                }
                match inbox.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
        };
        let mut group = Vec::new();
        first.into_group(&mut group);
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(more) => more.into_group(&mut group),
                Err(_) => break,
            }
        }
        let (reads, mut writes): (Vec<_>, Vec<_>) = group.into_iter().partition(|j| j.is_read());
        // Only this thread changes the mirror, so it is the committed state
        // for the whole group; readers elsewhere share the lock.
        let committed_state = mirror.read().unwrap_or_else(|p| p.into_inner());
        let mut overlay = Overlay::default();
        for mut job in reads {
            job.run(&conn, &View::new(&committed_state, &overlay));
            job.finish(&READ_OK);
        }
        if writes.is_empty() {
            continue;
        }
        let committed = match control(&conn, "BEGIN IMMEDIATE") {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                let spoiled = writes.iter_mut().any(|job| {
                    let spoiled = job.run(&conn, &View::new(&committed_state, &overlay));
                    overlay.record(job.changes(), &committed_state);
                    spoiled
                });
                if spoiled {
                    let _ = control(&conn, "ROLLBACK");
                    Err("a write in the same group failed".to_string())
                } else {
                    control(&conn, "COMMIT").map_err(|e| {
                        let _ = control(&conn, "ROLLBACK");
                        e.to_string()
                    })
                }
            }
        };
        drop(committed_state);
        if committed.is_ok() {
            commits_since_checkpoint += 1;
            let mut mirror = mirror.write().unwrap_or_else(|p| p.into_inner());
            for job in writes.iter_mut() {
                for change in job.take_changes() {
                    mirror.apply(change);
                }
            }
        }
        for job in writes {
            job.finish(&committed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DbThread {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch("CREATE TABLE t (x INTEGER)")
            .expect("table");
        DbThread::start(conn, Arc::default()).expect("database thread")
    }

    async fn rows(db: &DbThread) -> Vec<i64> {
        db.read(|c| {
            let mut stmt = c.prepare("SELECT x FROM t ORDER BY x")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<i64>>>()?)
        })
        .await
        .expect("read")
    }

    #[tokio::test]
    async fn a_write_that_fails_halfway_leaves_nothing_behind() {
        let db = table();
        let failed = db
            .write(|c, _| {
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Err::<(), _>(Error::Internal("disk on fire".into()))
            })
            .await;
        assert!(matches!(failed, Err(Error::Internal(m)) if m == "disk on fire"));
        db.write(|c, _| Ok(c.execute("INSERT INTO t VALUES (2)", [])?))
            .await
            .expect("a later write");
        assert_eq!(rows(&db).await, vec![2]);
    }

    #[tokio::test]
    async fn a_refused_write_does_not_disturb_the_writes_around_it() {
        let db = table();
        let insert =
            |x: i64| db.write(move |c, _| Ok(c.execute("INSERT INTO t VALUES (?1)", [x])?));
        let refused =
            db.write(|_, _| Err::<usize, _>(Error::conflict(crate::error::Entity::Runner, "r")));
        let (a, b, c) = tokio::join!(insert(1), refused, insert(3));
        assert!(a.is_ok() && c.is_ok());
        assert!(b.is_err_and(|e| e.is_conflict()));
        assert_eq!(rows(&db).await, vec![1, 3]);
    }
}
