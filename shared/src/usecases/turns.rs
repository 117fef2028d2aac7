//! Claims on one execution take turns to plan, within a process.
//!
//! Every claim on a dynamic execution changes the execution's record (where
//! the next batch starts, when each runner is expected free), and its write
//! is conditional on the version it read. Claims planned from the same
//! version race and all but one are refused: with eight runners on one
//! execution, three claims were planned and refused for each that stood.
//!
//! So claims take turns, and each plans from the record as the claim before
//! it left it, whether or not that write has reached the store yet: the
//! claim's turn ends once its write is queued (the embedded store queues it
//! when the write is called), so claims chain into the same commit instead
//! of waiting for each other's. The store's conditions stay the judge: a
//! claim planned on one that is then refused is refused too, and plans
//! again from the store. Claims from other processes (Lambda instances) and
//! other writes of the execution race as before.

use crate::domain::Execution;
use crate::ids::ExecutionId;
use crate::ports::ClaimWrite;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

/// Entries kept before the ones no claim holds are dropped.
const PRUNE_AT: usize = 1024;

/// The execution as the last claim planned in this process left it.
type Slot = tokio::sync::Mutex<Option<Execution>>;

/// One turn per execution with claims in progress.
#[derive(Default)]
pub(crate) struct Turns {
    slots: Mutex<HashMap<ExecutionId, Weak<Slot>>>,
}

/// A claim's turn on its execution; the next claim's begins when it drops.
pub(crate) struct Turn {
    guard: tokio::sync::OwnedMutexGuard<Option<Execution>>,
}

/// What a claim whose turn ended keeps, to take back what it planned if its
/// write is refused.
struct Planned {
    slot: Arc<Slot>,
    version: u64,
}

impl Turns {
    /// Waits for the turn on `execution`.
    pub(crate) async fn take(&self, execution: &ExecutionId) -> Turn {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(live) = slots.get(execution).and_then(Weak::upgrade) {
                live
            } else {
                if slots.len() >= PRUNE_AT {
                    slots.retain(|_, s| s.strong_count() > 0);
                }
                let fresh = Arc::new(Slot::new(None));
                slots.insert(execution.clone(), Arc::downgrade(&fresh));
                fresh
            }
        };
        Turn {
            guard: slot.lock_owned().await,
        }
    }
}

impl Turn {
    /// Queues the claim `write` through `send` (which queues it when
    /// called, see `Store::claim`), ends the turn so that the next claim
    /// plans from the execution as this one leaves it, and waits for the
    /// answer. If `stood` says the claim did not stand, the claims after
    /// it plan from the store again.
    pub(crate) async fn write<T, F>(
        self,
        write: ClaimWrite,
        send: impl FnOnce(ClaimWrite) -> F,
        stood: impl FnOnce(&T) -> bool,
    ) -> T
    where
        F: Future<Output = T>,
    {
        let left = write.execution.clone();
        let taken = write.expected_shard_version.map(|_| write.shard.index);
        let written = send(write);
        let planned = self.planned(left, taken);
        let answer = written.await;
        if !stood(&answer) {
            planned.refused().await;
        }
        answer
    }

    /// The execution to plan from: `read` (the store's), unless the claim
    /// before this one left it at a later version.
    pub(crate) fn base(&self, read: Execution) -> Execution {
        match self.guard.as_ref() {
            Some(planned) if planned.id == read.id && planned.version > read.version => {
                planned.clone()
            }
            _ => read,
        }
    }

    /// Ends the turn once this claim's write is queued: the next claim
    /// plans from `execution`, as this one leaves it (`taken`: the batch
    /// waiting to be claimed again that it takes, if any).
    fn planned(mut self, mut left: Execution, taken: Option<u32>) -> Planned {
        if let Some(index) = taken {
            left.returned.retain(|&i| i != index);
        }
        let version = left.version;
        *self.guard = Some(left);
        Planned {
            slot: tokio::sync::OwnedMutexGuard::mutex(&self.guard).clone(),
            version,
        }
    }
}

impl Planned {
    /// The claim's write was refused: the claims after it plan from the
    /// store again (the ones already planned on it are refused in turn).
    async fn refused(self) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|e| e.version == self.version) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn execution(version: u64) -> Execution {
        let mut e = crate::fixtures::execution(1);
        e.version = version;
        e
    }

    #[tokio::test]
    async fn claims_on_one_execution_take_turns_and_other_executions_do_not_wait() {
        let turns = Arc::new(Turns::default());
        let (a, b) = (ExecutionId::generate(), ExecutionId::generate());
        let held = turns.take(&a).await;
        let other = tokio::time::timeout(std::time::Duration::from_secs(5), turns.take(&b)).await;
        assert!(other.is_ok(), "another execution's turn is free");
        let inside = Arc::new(AtomicU32::new(0));
        let waiting = {
            let (turns, a, inside) = (turns.clone(), a.clone(), inside.clone());
            tokio::spawn(async move {
                let _turn = turns.take(&a).await;
                inside.fetch_add(1, Ordering::SeqCst);
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(inside.load(Ordering::SeqCst), 0, "waits for the held turn");
        drop(held);
        waiting.await.unwrap();
        assert_eq!(inside.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_claim_plans_from_the_one_before_it_until_that_one_is_refused() {
        let turns = Turns::default();
        let read = execution(4);
        let id = read.id.clone();
        let turn = turns.take(&id).await;
        let first = turn.base(read.clone());
        assert_eq!(first.version, 4, "nothing planned yet: the store's record");
        let mut left = first;
        left.version = 5;
        let planned = turn.planned(left, None);
        // The store has not written it yet, but the next claim builds on it.
        let turn = turns.take(&id).await;
        assert_eq!(turn.base(read.clone()).version, 5);
        // A record written since (another writer) at the same or a later
        // version is the store's to judge: it wins.
        let mut written = read.clone();
        written.version = 5;
        written.suite = "written since".into();
        assert_eq!(turn.base(written).suite, "written since");
        drop(turn);
        planned.refused().await;
        let turn = turns.take(&id).await;
        assert_eq!(turn.base(read).version, 4, "refused: plan from the store");
    }

    #[tokio::test]
    async fn turns_no_claim_holds_are_dropped() {
        let turns = Turns::default();
        for _ in 0..PRUNE_AT + 10 {
            drop(turns.take(&ExecutionId::generate()).await);
        }
        let kept = turns.slots.lock().unwrap().len();
        assert!(kept < PRUNE_AT, "{kept} entries kept");
    }
}
