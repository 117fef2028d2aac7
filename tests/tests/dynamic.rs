//! Dynamic mode with a manual clock: runners claim batches until the tests
//! run out, longest first and shrinking, each batch cut when it is claimed;
//! each claim is a lease that heartbeats extend; a lapsed lease is
//! reclaimed by another runner and the batch avoids the runner that lost
//! it; a stale lease's report is fenced off; a report can bring the next
//! batch. A conformance suite: the embedded store and DynamoDB (moto).

use tms::auth::Principal;
use tms::domain::{ExecutionStatus, Mode, ShardResult, ShardStatus};
use tms::ids::{ExecutionId, RunnerId};
use tms::time::Clock;
use tms::usecases::{
    Assignment, ClaimOutcome, NextBatch, ReportStatus, ShardReport, TestInput, TimedTest,
};
use tms::Error;
use tms_tests::{Backend, Harness};

async fn runner<B: Backend>(h: &Harness<B>, name: &str, slots: u32) -> RunnerId {
    h.runner(name, slots).await
}

/// A dynamic execution of `n` tests, test i expected to take (n - i) seconds.
async fn dynamic<B: Backend>(h: &Harness<B>, n: usize, runners: u32) -> ExecutionId {
    let mut new = tms_tests::new_execution("e2e", std::iter::empty(), runners);
    new.mode = Mode::Dynamic;
    new.timeout_seconds = Some(3 * 3600);
    new.tests = (0..n)
        .map(|i| {
            TestInput::Timed(TimedTest {
                name: format!("spec_{i:03}"),
                duration_hint_ms: Some(((n - i) * 1000) as u64),
            })
        })
        .collect();
    h.app.queue_execution(new, None).await.unwrap().execution.id
}

async fn claim<B: Backend>(h: &Harness<B>, r: &RunnerId, id: &ExecutionId) -> ClaimOutcome {
    h.app.claim_batch(r, id).await.unwrap()
}

async fn pass<B: Backend>(
    h: &Harness<B>,
    r: &RunnerId,
    a: &Assignment,
) -> tms::Result<ShardStatus> {
    let report = ShardReport {
        shard_index: a.shard_index,
        lease_id: a.lease_id.clone(),
        status: ReportStatus::Passed,
        results: Some(ShardResult {
            passed: a.tests.len() as u32,
            ..Default::default()
        }),
    };
    let caller = Principal::Runner(r.clone());
    Ok(h.app
        .report_shard(&caller, &a.execution_id, report)
        .await?
        .shard_status)
}

/// A passed report of `batch` with each test's result, each taking what
/// `took` says.
fn passed(batch: &Assignment, took: impl Fn(&str) -> u64) -> ShardReport {
    let ran = batch
        .tests
        .iter()
        .map(|t| tms::domain::TestResult::new(t, tms::domain::TestStatus::Passed, took(t)))
        .collect();
    ShardReport {
        shard_index: batch.shard_index,
        lease_id: batch.lease_id.clone(),
        status: ReportStatus::Passed,
        results: Some(ShardResult::of(ran)),
    }
}

async fn runners_claim_batches_until_the_tests_run_out_longest_first_and_shrinking<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let b = runner(&h, "b", 1).await;
    let id = dynamic(&h, 40, 2).await;
    // The scheduler hands none of it out: runners claim.
    assert_eq!(h.app.schedule_pass().await.unwrap(), 0);
    let mut claimed: Vec<Assignment> = Vec::new();
    loop {
        let mut got = false;
        for r in [&a, &b] {
            if let Some(batch) = claim(&h, r, &id).await.assignment {
                assert_eq!(pass(&h, r, &batch).await.unwrap(), ShardStatus::Passed);
                claimed.push(batch);
                got = true;
            }
        }
        if !got {
            break;
        }
    }
    let last = claim(&h, &a, &id).await;
    assert!(last.assignment.is_none() && last.queued_tests == 0 && !last.finished);
    assert_eq!(
        claimed[0].tests[0], "spec_000",
        "the longest test goes first"
    );
    assert!(claimed[0].tests.len() > claimed.last().unwrap().tests.len());
    assert_eq!(
        claimed.last().unwrap().tests.len(),
        1,
        "the last batches are single tests"
    );
    let mut all: Vec<&String> = claimed.iter().flat_map(|c| c.tests.iter()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "every test handed out exactly once");
    h.deliver_events().await;
    let (e, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Passed);
    assert_eq!(e.totals.passed, 40);
    assert!(claim(&h, &b, &id).await.finished);
}

async fn a_lapsed_lease_is_reclaimed_by_another_runner_and_its_stale_report_is_fenced<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let id = dynamic(&h, 20, 2).await;
    let lost = claim(&h, &a, &id).await.assignment.unwrap();
    // a falls silent past its lease (three heartbeat intervals).
    h.clock.advance_secs(91);
    let b = runner(&h, "b", 1).await;
    h.app.timeout_sweep().await.unwrap();
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    let back = &shards[lost.shard_index as usize];
    assert_eq!(back.status, ShardStatus::Queued);
    assert_eq!(back.avoid_runners, vec![a.clone()]);
    // a comes back: it gets the next batch, not the one it lost.
    h.app.heartbeat(&a, None).await.unwrap();
    let for_a = claim(&h, &a, &id).await.assignment.unwrap();
    assert_ne!(for_a.shard_index, lost.shard_index);
    // b gets the lost one, the first in claim order.
    let for_b = claim(&h, &b, &id).await.assignment.unwrap();
    assert_eq!(for_b.shard_index, lost.shard_index);
    assert_eq!(for_b.tests, lost.tests);
    assert_eq!(for_b.attempt, 2);
    // a's report on the batch it lost counts for nothing.
    assert!(matches!(
        pass(&h, &a, &lost).await,
        Err(Error::StaleLease { .. })
    ));
    assert_eq!(pass(&h, &b, &for_b).await.unwrap(), ShardStatus::Passed);
}

/// A runner claims a batch to run it at once: the batch is running from
/// the claim (its start is the claim's time), and the runner's `started`
/// report is acknowledged as a repeat without changing the shard.
async fn a_claimed_batch_runs_from_its_claim_and_started_changes_nothing<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let id = dynamic(&h, 10, 1).await;
    let claimed_at = h.clock.now();
    let held = claim(&h, &a, &id).await.assignment.unwrap();
    let shard_of = |shards: &[tms::domain::Shard]| shards[held.shard_index as usize].clone();
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    let before = shard_of(&shards);
    assert_eq!(before.status, ShardStatus::Running);
    assert_eq!(before.started_at, Some(claimed_at));
    h.clock.advance_secs(3);
    let started = ShardReport {
        shard_index: held.shard_index,
        lease_id: held.lease_id.clone(),
        status: ReportStatus::Started,
        results: None,
    };
    let caller = Principal::Runner(a.clone());
    let outcome = h.app.report_shard(&caller, &id, started).await.unwrap();
    assert!(outcome.duplicate, "a repeat of what the claim did");
    assert_eq!(outcome.shard_status, ShardStatus::Running);
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    let after = shard_of(&shards);
    assert_eq!(after.version, before.version, "no write");
    assert_eq!(after.started_at, Some(claimed_at));
    assert_eq!(pass(&h, &a, &held).await.unwrap(), ShardStatus::Passed);
}

async fn heartbeats_extend_a_held_lease_and_silence_lets_it_lapse<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let id = dynamic(&h, 10, 1).await;
    let held = claim(&h, &a, &id).await.assignment.unwrap();
    // Five minutes of work with a heartbeat every 30 s: the lease holds.
    for _ in 0..10 {
        h.clock.advance_secs(30);
        let beats = h.app.heartbeat(&a, None).await.unwrap();
        assert!(beats.iter().any(|x| x.lease_id == held.lease_id));
        h.app.timeout_sweep().await.unwrap();
    }
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(
        shards[held.shard_index as usize].status,
        ShardStatus::Running
    );
    // Then silence: the lease lapses and the batch goes back to the queue.
    h.clock.advance_secs(91);
    h.app.timeout_sweep().await.unwrap();
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(
        shards[held.shard_index as usize].status,
        ShardStatus::Queued
    );
}

async fn only_a_runner_with_room_and_the_required_labels_claims<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let id = dynamic(&h, 10, 1).await;
    claim(&h, &a, &id).await.assignment.unwrap();
    // One slot, one batch held: no room for another.
    assert!(matches!(
        h.app.claim_batch(&a, &id).await,
        Err(Error::Validation { .. })
    ));
    let mut new = tms_tests::new_execution("e2e", ["x".to_string()], 1);
    new.mode = Mode::Dynamic;
    new.requirements = Some(tms::usecases::RequirementsInput {
        labels: ["gpu".to_string()].into_iter().collect(),
        ..Default::default()
    });
    let gpu = h.app.queue_execution(new, None).await.unwrap().execution.id;
    let b = runner(&h, "b", 1).await;
    assert!(matches!(
        h.app.claim_batch(&b, &gpu).await,
        Err(Error::Validation { .. })
    ));
    // A static execution is the scheduler's to assign.
    let plain = tms_tests::new_execution("unit", ["y".to_string()], 1);
    let plain = h
        .app
        .queue_execution(plain, None)
        .await
        .unwrap()
        .execution
        .id;
    assert!(matches!(
        h.app.claim_batch(&b, &plain).await,
        Err(Error::Validation { .. })
    ));
}

/// Batches are cut from the execution's tests in claim order as runners
/// claim, reading only as far as each batch reaches: 1,000 tests (several
/// of the stores' chunks) go out once each, in order, in batches of at
/// most `max_batch_tests` that cross chunk boundaries.
async fn a_large_execution_is_handed_out_in_claim_order_a_batch_at_a_time<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    // One runner expected: half of what is left a batch, capped.
    let mut new = tms_tests::new_execution("e2e", std::iter::empty(), 1);
    new.mode = Mode::Dynamic;
    new.max_batch_tests = Some(300);
    new.tests = (0..1000)
        .map(|i| {
            TestInput::Timed(TimedTest {
                name: format!("spec_{i:04}"),
                // Longest first is the order of the names.
                duration_hint_ms: Some(3_600_000 - i as u64),
            })
        })
        .collect();
    let queued = h.app.queue_execution(new, None).await.unwrap();
    assert!(queued.shards.is_empty(), "no batch is cut before a claim");
    let id = queued.execution.id;
    let mut handed = Vec::new();
    let mut sizes = Vec::new();
    while let Some(batch) = claim(&h, &a, &id).await.assignment {
        sizes.push(batch.tests.len());
        handed.extend(batch.tests.iter().cloned());
        assert_eq!(pass(&h, &a, &batch).await.unwrap(), ShardStatus::Passed);
    }
    let expected: Vec<String> = (0..1000).map(|i| format!("spec_{i:04}")).collect();
    assert_eq!(handed, expected, "every test once, in claim order");
    assert!(sizes.iter().all(|n| *n <= 300), "{sizes:?}");
    assert!(sizes.contains(&300), "{sizes:?}");
    h.deliver_events().await;
    let (e, shards) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Passed);
    assert_eq!(e.totals.passed, 1000);
    assert_eq!(shards.len(), sizes.len());
}

/// A report that asks for the next batch gets it with its answer, and the
/// time the batch took beyond its tests sizes the batches after it: with a
/// batch costing almost nothing but its tests, the tail is cut finer than
/// the default assumption (half a second a batch) would.
async fn a_report_brings_the_next_batch_and_teaches_the_batch_cost<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let id = dynamic(&h, 40, 1).await;
    let caller = Principal::Runner(a.clone());
    let mut batch = claim(&h, &a, &id).await.assignment.unwrap();
    let mut batches = 1;
    let last = loop {
        // The batch ran exactly as long as its tests.
        h.clock.advance_ms(1_000 * batch.tests.len() as i64);
        let report = passed(&batch, |_| 1_000);
        let outcome = h
            .app
            .report_shard_then_claim(&caller, &id, report, NextBatch::SameExecution)
            .await
            .unwrap();
        assert_eq!(outcome.shard_status, ShardStatus::Passed);
        match outcome.next.clone().and_then(|n| n.assignment) {
            Some(n) => {
                batch = n;
                batches += 1;
            }
            None => break outcome,
        }
    };
    h.deliver_events().await;
    let (e, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Passed);
    assert_eq!(e.totals.passed, 40);
    // One runner alone: halving what is left, down to single tests once
    // the batch cost is known to be nothing, rather than 5 s batches.
    assert!(batches >= 8, "{batches} batches");
    // Only a runner claims: the same answer for a webhook token brings nothing.
    let hook = Principal::Webhook(id.clone());
    assert!(h.app.next_batch_after(&hook, &id, &last).await.is_none());
}

/// Runs `batch` and those the reports bring, each test taking what
/// `took` says, until the runner gets nothing more.
async fn run_batches<B: Backend>(
    h: &Harness<B>,
    r: &RunnerId,
    mut batch: Assignment,
    took: impl Fn(&str) -> u64,
) {
    let caller = Principal::Runner(r.clone());
    loop {
        let report = passed(&batch, &took);
        let outcome = h
            .app
            .report_shard_then_claim(
                &caller,
                &batch.execution_id,
                report,
                NextBatch::SameExecution,
            )
            .await
            .unwrap();
        match outcome.next.and_then(|n| n.assignment) {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// What a static execution of `suite` queued now expects each of `tests`
/// to take (one test a shard), as learned so far.
async fn learned<B: Backend>(h: &Harness<B>, suite: &str, tests: &[&str]) -> Vec<Option<u64>> {
    let names = tests.iter().map(|t| t.to_string());
    let new = tms_tests::new_execution(suite, names, tests.len() as u32);
    let id = h.app.queue_execution(new, None).await.unwrap().execution.id;
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    tests
        .iter()
        .map(|t| {
            let shard = shards.iter().find(|s| s.tests.iter().any(|x| x == t));
            shard.and_then(|s| s.estimated_ms)
        })
        .collect()
}

async fn a_dynamic_execution_is_learned_whole_when_it_finishes_and_a_cancelled_one_for_what_ran<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let id = dynamic(&h, 6, 1).await;
    let took = |t: &str| 1_000 + t.trim_start_matches("spec_").parse::<u64>().unwrap();
    let first = claim(&h, &a, &id).await.assignment.unwrap();
    run_batches(&h, &a, first, took).await;
    // Only the completions after the last test went out were published
    // (a batch finished while tests wait cannot finish the execution).
    let events = h.events.take();
    assert!(!events.is_empty());
    for result in h.app.handle_events(&events).await {
        result.unwrap();
    }
    let (e, _) = h.app.execution_status(&id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Passed);
    let tests = [
        "spec_000", "spec_001", "spec_002", "spec_003", "spec_004", "spec_005",
    ];
    let every: Vec<Option<u64>> = tests.iter().map(|t| Some(took(t))).collect();
    assert_eq!(learned(&h, "e2e", &tests).await, every);
    // Delivered again, the completions teach nothing twice.
    for result in h.app.handle_events(&events).await {
        result.unwrap();
    }
    assert_eq!(learned(&h, "e2e", &tests).await, every);

    // Cancelled after one batch: what that batch ran is learned (each
    // test its own duration; a test with none is expected to take what
    // its suite's tests take on the whole, none of these).
    let ms = |t: &str| 1_000 + 10u64.pow(t.trim_start_matches("spec_").parse().unwrap());
    let mut new = tms_tests::new_execution("cancelled", tests.iter().map(|t| t.to_string()), 1);
    new.mode = Mode::Dynamic;
    let cancelled = h.app.queue_execution(new, None).await.unwrap().execution.id;
    let batch = claim(&h, &a, &cancelled).await.assignment.unwrap();
    let ran = batch.tests.clone();
    assert!(ran.len() < tests.len(), "{ran:?}");
    let caller = Principal::Runner(a.clone());
    h.app
        .report_shard(&caller, &cancelled, passed(&batch, ms))
        .await
        .unwrap();
    assert!(h.events.take().is_empty(), "tests were waiting");
    h.app.cancel_execution(&cancelled).await.unwrap();
    let estimates = learned(&h, "cancelled", &tests).await;
    for (t, estimate) in tests.iter().zip(estimates) {
        let ran_it = ran.iter().any(|r| r == t);
        assert_eq!(
            estimate == Some(ms(t)),
            ran_it,
            "{t}: {estimate:?}, ran {ran:?}"
        );
    }
}

async fn a_report_asking_next_any_brings_a_batch_of_the_next_execution_once_its_own_runs_out<
    B: Backend,
>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let caller = Principal::Runner(a.clone());
    let first = dynamic(&h, 3, 1).await;
    h.clock.advance_ms(1);
    let second = dynamic(&h, 3, 1).await;
    h.clock.advance_ms(1);
    let third = dynamic(&h, 3, 1).await;
    let report = |batch: &Assignment| passed(batch, |_| 1_000);
    // Every test of the first execution, then the second's first batch,
    // each brought by the report before it: one claim in all.
    let mut batch = claim(&h, &a, &first).await.assignment.unwrap();
    let mut ran = 0;
    let moved_on = loop {
        ran += batch.tests.len();
        let outcome = h
            .app
            .report_shard_then_claim(
                &caller,
                &batch.execution_id,
                report(&batch),
                NextBatch::Anywhere,
            )
            .await
            .unwrap();
        let next = outcome
            .next
            .and_then(|n| n.assignment)
            .expect("a next batch");
        if next.execution_id != first {
            break next;
        }
        batch = next;
    };
    assert_eq!(ran, 3);
    assert_eq!(moved_on.execution_id, second, "the oldest of the others");
    assert_eq!(moved_on.status, ShardStatus::Running, "claimed");
    h.deliver_events().await;
    let (e, _) = h.app.execution_status(&first).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Passed);

    // Asking for the same execution only, a report that ends it brings
    // nothing, however much else waits.
    let mut batch = moved_on;
    loop {
        let outcome = h
            .app
            .report_shard_then_claim(&caller, &second, report(&batch), NextBatch::SameExecution)
            .await
            .unwrap();
        match outcome.next.and_then(|n| n.assignment) {
            Some(next) => {
                assert_eq!(next.execution_id, second);
                batch = next;
            }
            None => break,
        }
    }
    let (e, _) = h.app.execution_status(&third).await.unwrap();
    assert_eq!(
        e.status,
        ExecutionStatus::Queued,
        "nothing of it was claimed"
    );
}

/// `caller` reports `batch` passed asking `?next=any`: the batch the
/// answer brings, if any.
async fn passed_asking_any<B: Backend>(
    h: &Harness<B>,
    caller: &Principal,
    batch: &Assignment,
) -> Option<Assignment> {
    let outcome = h
        .app
        .report_shard_then_claim(
            caller,
            &batch.execution_id,
            passed(batch, |_| 1_000),
            NextBatch::Anywhere,
        )
        .await
        .unwrap();
    outcome.next.and_then(|n| n.assignment)
}

/// `?next=any` reaches no further than a claim would: an execution the
/// runner does not fit is not brought, and a caller that is not a runner
/// (the execution's webhook token, scoped to that execution) gets no
/// batch at all, of another execution least of all.
async fn a_report_asking_next_any_brings_nothing_its_caller_may_not_claim<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let own = dynamic(&h, 1, 1).await;
    h.clock.advance_ms(1);
    let mut new = tms_tests::new_execution("e2e", ["on_gpu".to_string()], 1);
    new.mode = Mode::Dynamic;
    new.requirements = Some(tms::usecases::RequirementsInput {
        labels: ["gpu".to_string()].into_iter().collect(),
        ..Default::default()
    });
    let gpu = h.app.queue_execution(new, None).await.unwrap().execution.id;
    let batch = claim(&h, &a, &own).await.assignment.unwrap();
    let brought = passed_asking_any(&h, &Principal::Runner(a.clone()), &batch).await;
    assert!(brought.is_none(), "the runner has no gpu label");
    let (e, _) = h.app.execution_status(&gpu).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Queued);

    h.clock.advance_ms(1);
    let scoped = dynamic(&h, 1, 1).await;
    h.clock.advance_ms(1);
    let waiting = dynamic(&h, 1, 1).await;
    let batch = claim(&h, &a, &scoped).await.assignment.unwrap();
    let brought = passed_asking_any(&h, &Principal::Webhook(scoped.clone()), &batch).await;
    assert!(brought.is_none(), "a webhook token claims nothing");
    let (_, shards) = h.app.execution_status(&scoped).await.unwrap();
    assert_eq!(shards[0].status, ShardStatus::Passed, "the report stood");
    let (e, _) = h.app.execution_status(&waiting).await.unwrap();
    assert_eq!(
        e.status,
        ExecutionStatus::Queued,
        "nothing of it was claimed"
    );
}

async fn a_runner_finds_the_dynamic_executions_it_fits_highest_priority_first<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    let low = dynamic(&h, 3, 1).await;
    let mut new = tms_tests::new_execution("e2e", ["x".to_string()], 1);
    new.mode = Mode::Dynamic;
    new.priority = Some(90);
    let high = h.app.queue_execution(new, None).await.unwrap().execution.id;
    let mut new = tms_tests::new_execution("e2e", ["y".to_string()], 1);
    new.mode = Mode::Dynamic;
    new.requirements = Some(tms::usecases::RequirementsInput {
        labels: ["gpu".to_string()].into_iter().collect(),
        ..Default::default()
    });
    h.app.queue_execution(new, None).await.unwrap();
    // Static work is the scheduler's; it is not listed.
    let plain = tms_tests::new_execution("unit", ["z".to_string()], 1);
    h.app.queue_execution(plain, None).await.unwrap();
    let found: Vec<ExecutionId> = h
        .app
        .claimable(&a, None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.execution_id)
        .collect();
    assert_eq!(found, vec![high.clone(), low]);
    // A finished execution is no longer listed; a paused runner gets none.
    h.app.cancel_execution(&high).await.unwrap();
    assert_eq!(h.app.claimable(&a, None, 100).await.unwrap().items.len(), 1);
    h.app.pause_runner(&a).await.unwrap();
    assert!(h
        .app
        .claimable(&a, None, 100)
        .await
        .unwrap()
        .items
        .is_empty());
}

/// However many dynamic executions wait ahead of it, the one a runner fits
/// is found by walking the listing's pages: 120 of other labels and higher
/// priority fill the first pages, and the runner's own comes after them.
async fn claimable_work_behind_many_others_is_found_on_a_later_page<B: Backend>() {
    let h = Harness::<B>::start().await;
    let a = runner(&h, "a", 1).await;
    for i in 0..120 {
        let mut new = tms_tests::new_execution("e2e", [format!("t{i}")], 1);
        new.mode = Mode::Dynamic;
        new.priority = Some(90);
        new.requirements = Some(tms::usecases::RequirementsInput {
            labels: ["gpu".to_string()].into_iter().collect(),
            ..Default::default()
        });
        h.app.queue_execution(new, None).await.unwrap();
    }
    let mine = dynamic(&h, 2, 1).await;
    let mut cursor: Option<String> = None;
    let mut found = Vec::new();
    let mut pages = 0;
    loop {
        let page = h.app.claimable(&a, cursor.as_deref(), 50).await.unwrap();
        pages += 1;
        found.extend(page.items.into_iter().map(|c| c.execution_id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(found, vec![mine]);
    assert!(pages >= 3, "{pages} pages");
    // A cursor that is not the listing's is refused, not misread.
    assert!(matches!(
        h.app.claimable(&a, Some("not-a-cursor"), 50).await,
        Err(Error::Validation { .. })
    ));
}

/// Sixteen claimers race for one execution's batches, all at once, round
/// after round: one that loses the race reads again and cuts the next
/// batch, so no claim fails (no 409 "changed concurrently") while tests
/// remain, each batch goes to one claimer, and a round that hands out
/// nothing finds every test claimed.
async fn racing_claimers_each_take_a_batch_and_none_hears_of_the_race<B: Backend>() {
    let h = Harness::<B>::start().await;
    let id = dynamic(&h, 128, 16).await;
    let mut runners = Vec::new();
    for i in 0..16 {
        runners.push(runner(&h, &format!("racer-{i}"), 16).await);
    }
    let mut claimed = std::collections::BTreeSet::new();
    loop {
        let outcomes =
            futures::future::join_all(runners.iter().map(|r| h.app.claim_batch(r, &id))).await;
        let mut taken = 0;
        for outcome in outcomes {
            let outcome = outcome.expect("a claim never fails while batches remain");
            if let Some(a) = outcome.assignment {
                assert!(
                    claimed.insert(a.shard_index),
                    "batch {} twice",
                    a.shard_index
                );
                taken += 1;
            }
        }
        if taken == 0 {
            break;
        }
    }
    let (_, shards) = h.app.execution_status(&id).await.unwrap();
    assert!(
        shards.len() > 16,
        "more batches than claimers: {}",
        shards.len()
    );
    assert_eq!(claimed.len(), shards.len(), "every batch claimed, once");
    assert!(shards.iter().all(|s| s.status == ShardStatus::Running));
    let tests: usize = shards.iter().map(|s| s.tests.len()).sum();
    assert_eq!(tests, 128, "every test in one batch");
}

tms_tests::conformance!(
    racing_claimers_each_take_a_batch_and_none_hears_of_the_race,
    a_runner_finds_the_dynamic_executions_it_fits_highest_priority_first,
    claimable_work_behind_many_others_is_found_on_a_later_page,
    a_large_execution_is_handed_out_in_claim_order_a_batch_at_a_time,
    a_report_brings_the_next_batch_and_teaches_the_batch_cost,
    a_dynamic_execution_is_learned_whole_when_it_finishes_and_a_cancelled_one_for_what_ran,
    a_report_asking_next_any_brings_a_batch_of_the_next_execution_once_its_own_runs_out,
    a_report_asking_next_any_brings_nothing_its_caller_may_not_claim,
    runners_claim_batches_until_the_tests_run_out_longest_first_and_shrinking,
    a_lapsed_lease_is_reclaimed_by_another_runner_and_its_stale_report_is_fenced,
    heartbeats_extend_a_held_lease_and_silence_lets_it_lapse,
    a_claimed_batch_runs_from_its_claim_and_started_changes_nothing,
    only_a_runner_with_room_and_the_required_labels_claims,
);
