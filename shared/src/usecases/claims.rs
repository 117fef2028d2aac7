//! CI-native parallelism (execution mode `by_index`): each parallel job of a
//! CI build claims the shard of its own index. A retried job claims the same
//! index again and gets the same tests under a new lease; the earlier lease
//! is fenced off, and the new run's results supersede the old ones.

use super::{retry_on_conflict, Assignment, Orchestrator};
use crate::auth::Principal;
use crate::domain::Mode;
use crate::error::{Error, Result};
use crate::ids::{ExecutionId, LeaseId};
use crate::ports::{Ports, Store};
use crate::time::Clock;

impl<P: Ports> Orchestrator<P> {
    /// Claims shard `index` of a `by_index` execution for the calling CI
    /// job (authenticated with the execution's webhook token, or an API
    /// token). The answer carries the lease to report with.
    pub async fn claim_shard(
        &self,
        caller: &Principal,
        id: &ExecutionId,
        index: u32,
    ) -> Result<Assignment> {
        match caller {
            Principal::Webhook(exec) if exec == id => {}
            Principal::Admin | Principal::Ci => {}
            _ => return Err(Error::Forbidden("claim this execution's shards")),
        }
        let now = self.clock.now();
        retry_on_conflict(|| async {
            let (mut execution, mut shard) = self.load_shard(id, index).await?;
            if execution.mode != Mode::ByIndex {
                return Err(Error::validation(
                    "mode",
                    "this execution's shards are assigned to runners; only a by_index \
                     execution's shards are claimed by CI jobs",
                ));
            }
            let read_as = (shard.version, shard.status);
            let deadline = now.plus_secs(execution.shard_timeout_seconds);
            shard.claim_by_index(LeaseId::generate(), now, deadline)?;
            // The execution first: if the shard's write then loses a race,
            // the retry finds the execution already running. A crash between
            // the two leaves a running execution of finished shards, which
            // the timeout sweep's re-aggregation finishes again.
            let version = execution.version;
            let mut changed = execution.reopen_for_claim(now)?;
            changed |= execution.mark_running(now)?;
            if changed {
                self.store.update_execution(&execution, version).await?;
            }
            self.save_shard(&execution, shard.clone(), read_as, None)
                .await?;
            Assignment::of(shard)
                .ok_or_else(|| Error::Internal("a claimed shard has no lease".into()))
        })
        .await
    }
}
