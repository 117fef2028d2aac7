//! Queue order: priority first, then age, with aging so that low priority
//! work cannot starve behind a steady stream of high priority work.

use crate::domain::Execution;
use crate::time::Timestamp;

/// Priority plus one point per `aging_step_ms` waited.
pub fn effective_priority(execution: &Execution, now: Timestamp, aging_step_ms: i64) -> i64 {
    let waited = now.since(execution.created_at);
    i64::from(execution.priority) + waited / aging_step_ms.max(1)
}

/// Sorts executions into scheduling order: highest effective priority, then
/// oldest, then id (so the order is total and deterministic).
pub fn order<T>(
    items: &mut [T],
    execution_of: impl Fn(&T) -> &Execution,
    now: Timestamp,
    aging_step_ms: i64,
) {
    items.sort_by_cached_key(|item| {
        let e = execution_of(item);
        (
            std::cmp::Reverse(effective_priority(e, now, aging_step_ms)),
            e.created_at,
            e.id.clone(),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::execution;

    #[test]
    fn higher_priority_goes_first_and_equal_priority_goes_oldest_first() {
        let mut a = execution(1);
        a.priority = 10;
        let mut b = execution(1);
        b.priority = 90;
        let mut c = execution(1);
        c.priority = 10;
        c.created_at = Timestamp(-5);
        let mut all = vec![a.clone(), b.clone(), c.clone()];
        order(&mut all, |e| e, Timestamp(0), 30_000);
        let ids: Vec<_> = all.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, vec![b.id, c.id, a.id]);
    }

    #[test]
    fn a_low_priority_execution_that_waited_long_enough_overtakes_new_high_priority_work() {
        let mut old_low = execution(1);
        old_low.priority = 0;
        old_low.created_at = Timestamp(0);
        let mut new_high = execution(1);
        new_high.priority = 100;
        let now = Timestamp(101 * 30_000);
        new_high.created_at = now;
        let mut all = vec![new_high.clone(), old_low.clone()];
        order(&mut all, |e| e, now, 30_000);
        assert_eq!(all[0].id, old_low.id);
    }
}
