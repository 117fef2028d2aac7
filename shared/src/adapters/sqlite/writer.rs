//! The embedded store's single writer: one thread owns the write connection
//! and commits groups of port operations together (group commit). Each
//! operation runs inside its own savepoint, so its conditions see every
//! earlier operation of the group and a failed one is rolled back alone;
//! every caller is answered only after the group's COMMIT, so an
//! acknowledged write is durable exactly as with one transaction per call.

use crate::error::{Error, Result};
use rusqlite::Connection;
use std::sync::mpsc;
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// Most operations committed together.
const MAX_GROUP: usize = 256;

trait Job: Send {
    /// Runs the operation in a savepoint of the open transaction.
    fn run(&mut self, conn: &Connection);
    /// Answers the caller once the transaction's fate is known.
    fn finish(self: Box<Self>, committed: &std::result::Result<(), String>);
}

struct Pending<T, F> {
    work: Option<F>,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) {
        let Some(work) = self.work.take() else { return };
        let outcome = conn
            .execute_batch("SAVEPOINT op")
            .map_err(Error::from)
            .and_then(|()| {
                let result = work(conn);
                let end = if result.is_ok() {
                    "RELEASE op"
                } else {
                    "ROLLBACK TO op; RELEASE op"
                };
                conn.execute_batch(end)?;
                result
            });
        self.outcome = Some(outcome);
    }

    fn finish(self: Box<Self>, committed: &std::result::Result<(), String>) {
        let answer = match (committed, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Err(msg), _) => Err(Error::Internal(format!("commit failed: {msg}"))),
            (Ok(()), None) => Err(Error::Internal("write was not run".into())),
        };
        // The caller may have gone away (request cancelled); the write stands.
        let _ = self.reply.send(answer);
    }
}

/// Handle to the writer thread; dropping it stops the thread after the
/// queued operations are committed.
pub struct Writer {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(conn: Connection) -> Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("tms-sqlite-writer".into())
            .spawn(move || run(conn, inbox))
            .map_err(|e| Error::Storage(Box::new(e)))?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `work` as one atomic operation and waits for its commit.
    pub async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            work: Some(work),
            outcome: None,
            reply,
        });
        let stopped = || Error::Internal("the store's writer has stopped".into());
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, inbox: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = inbox.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let committed = match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                for job in group.iter_mut() {
                    job.run(&conn);
                }
                conn.execute_batch("COMMIT").map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    e.to_string()
                })
            }
        };
        for job in group {
            job.finish(&committed);
        }
    }
}
