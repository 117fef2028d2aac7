//! The embedded store's database thread: one thread owns the one
//! connection, so SQLite's page cache stays warm (separate reader
//! connections lose theirs at every commit, which dominated the profile).
//!
//! Operations queue up while the thread works and are taken as a group:
//! first the reads, outside any transaction, so they see only committed
//! state; then the writes, in one transaction where each runs in its own
//! savepoint — its conditions see the writes before it and a failure rolls
//! back only itself. Every writer is answered after the group's COMMIT
//! (group commit), so an acknowledged write is as durable as with one
//! transaction per call.

use super::mirror::{Change, Mirror};
use crate::error::{Error, Result};
use rusqlite::Connection;
use std::sync::{mpsc, Arc, RwLock};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Most operations taken as one group.
const MAX_GROUP: usize = 128;

trait Job: Send {
    fn is_read(&self) -> bool;
    /// Runs the operation (a write in a savepoint of the open transaction).
    fn run(&mut self, conn: &Connection);
    /// The mirror changes of a write that stood (see [`super::mirror`]).
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
    F: FnOnce(&Connection, &mut Vec<Change>) -> Result<T> + Send,
{
    fn is_read(&self) -> bool {
        self.read
    }

    fn run(&mut self, conn: &Connection) {
        let Some(work) = self.work.take() else { return };
        let changes = &mut self.changes;
        if self.read {
            self.outcome = Some(guarded(|c| work(c, changes), conn));
            return;
        }
        let outcome = control(conn, "SAVEPOINT op").and_then(|()| {
            let result = guarded(|c| work(c, changes), conn);
            if result.is_err() {
                control(conn, "ROLLBACK TO op")?;
            }
            control(conn, "RELEASE op")?;
            result
        });
        if outcome.is_err() {
            self.changes.clear();
        }
        self.outcome = Some(outcome);
    }

    fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn finish(self: Box<Self>, committed: &std::result::Result<(), String>) {
        let answer = match (committed, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Err(msg), _) => Err(Error::Internal(format!("commit failed: {msg}"))),
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

/// Handle to the database thread; dropping it stops the thread after the
/// queued operations are done.
pub struct DbThread {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl DbThread {
    /// Starts the thread; it applies committed changes to `mirror`.
    pub fn start(conn: Connection, mirror: Arc<RwLock<Mirror>>) -> Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Box<dyn Job>>();
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
        self.submit(false, work).await
    }

    /// Runs `work` on committed state and waits for its answer.
    pub async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        self.submit(true, move |c: &Connection, _: &mut Vec<Change>| work(c))
            .await
    }

    async fn submit<T, F>(&self, read: bool, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Vec<Change>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            read,
            work: Some(work),
            changes: Vec::new(),
            outcome: None,
            reply,
        });
        let stopped = || Error::Internal("the store's database thread has stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for DbThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, inbox: mpsc::Receiver<Box<dyn Job>>, mirror: &RwLock<Mirror>) {
    const READ_OK: std::result::Result<(), String> = Ok(());
    while let Ok(first) = inbox.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (reads, mut writes): (Vec<_>, Vec<_>) = group.into_iter().partition(|j| j.is_read());
        for mut job in reads {
            job.run(&conn);
            job.finish(&READ_OK);
        }
        if writes.is_empty() {
            continue;
        }
        let committed = match control(&conn, "BEGIN IMMEDIATE") {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                for job in writes.iter_mut() {
                    job.run(&conn);
                }
                control(&conn, "COMMIT").map_err(|e| {
                    let _ = control(&conn, "ROLLBACK");
                    e.to_string()
                })
            }
        };
        if committed.is_ok() {
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
