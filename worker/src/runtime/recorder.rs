//! Writing outcomes. Three paths:
//!
//! - a success whose handler never opened `ctx.tx()` waits in [`super::pending`] until its
//!   queue's next claim or the **completer** writes it with many others in one round trip;
//! - a success with a handler transaction is completed **inside that transaction**, so the
//!   handler's writes and the completion commit together; if that commit fails, the writes are
//!   gone and the job is **put back** (`available`, attempt refunded);
//! - every other outcome is written in a fresh transaction, as [`crate::machine::attempt::decide`] says.
//!
//! Each write is fenced; a write that finds the fence gone writes nothing.
//!
//! Writes are retried (the shared [`DbRetry`] policy) for at most `lease_ttl` in all. A write
//! that still fails then (the server keeps refusing it, or does not answer) is given up: the
//! job leaves the in-flight table, so its lease is no longer renewed, its slot is freed, and
//! maintenance rescues it once the lease expires. Nothing ever waits on the database without
//! a bound, so a graceful shutdown ends within `shutdown_timeout` + 2 × `lease_ttl`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq_producer::{KindName, QueueName};
use jobq_sqlkit::{within, OwnedTx, TxError};
use rand::Rng;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::pending::LINGER;
use super::retry::DbRetry;
use super::Shared;
use crate::machine::attempt::{self, decide, Backoff, Outcome};
use crate::metrics;
use crate::model::{ClaimedJob, Decision, Fence};
use crate::store::{self, FinishWrite};

/// A success waiting for the completer. It keeps the job's slot: a process never has more
/// `running` rows than slots, however far the completer lags (backpressure on the claimer).
pub(crate) struct Completion {
    pub(crate) fence: Fence,
    pub(crate) queue: QueueName,
    pub(crate) kind: KindName,
    /// The job's concurrency key: a claim that carries the completion promotes the key's next
    /// waiting job in the same transaction.
    pub(crate) key: Option<String>,
    /// The job's result (JSON text), written with the completion.
    pub(crate) result: Option<String>,
    pub(crate) run: Duration,
    /// Dropping it (after the completion is written) frees the slot; a claim that carried the
    /// completion hands it to a job it claimed.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// One finished attempt, as the executor hands it over.
pub(crate) struct Attempt {
    pub(crate) fence: Fence,
    pub(crate) queue: QueueName,
    pub(crate) job: ClaimedJob,
    pub(crate) outcome: Outcome,
    pub(crate) run: Duration,
    pub(crate) backoff: Backoff,
    /// The handler's transaction, if it opened one.
    pub(crate) tx: Option<OwnedTx>,
    /// The result the handler stored (successes only), JSON text.
    pub(crate) result: Option<String>,
}

/// The largest result a batched completion carries (spliced as hex, twice its size); larger
/// ones are written with their job alone.
pub(crate) const CARRIED_RESULT_BYTES: usize = 8 * 1024;

/// Records `a`. The slot (`permit`) is freed once the job no longer needs this process.
pub(crate) async fn record(shared: &Shared, mut a: Attempt, permit: OwnedSemaphorePermit) {
    let decision = if a.outcome == Outcome::Success {
        // A large result is written on its own (bound, not spliced): batches carry only small
        // ones, so a batch of them stays far below the server's packet limit. A job that
        // others depend on, or of a workflow, is written on its own too: its ending settles
        // its dependents in the same transaction (`store/deps.rs`).
        let small = !a.job.linked
            && a.result
                .as_ref()
                .is_none_or(|r| r.len() <= CARRIED_RESULT_BYTES);
        match a.tx.take() {
            None if !small => decide(
                &Outcome::Success,
                a.job.attempt,
                a.job.max_attempts,
                a.backoff,
                1.0,
            ),
            None => {
                // Batched by the queue's next claim or the completer, which free the slot
                // once the completion is written; the lease stays ours until then.
                shared.pending.push(Completion {
                    fence: a.fence,
                    queue: a.queue,
                    result: a.result.take(),
                    key: a.job.concurrency_key.clone(),
                    kind: a.job.kind,
                    run: a.run,
                    permit,
                });
                return;
            }
            Some(tx) => match complete_in_tx(shared, &a, tx).await {
                None => {
                    shared.in_flight.remove(a.fence);
                    return;
                }
                Some(put_back) => put_back,
            },
        }
    } else {
        // Any other outcome: the handler's transaction (if any) is rolled back.
        if let Some(tx) = a.tx.take() {
            let _ = tx.rollback().await;
        }
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        decide(
            &a.outcome,
            a.job.attempt,
            a.job.max_attempts,
            a.backoff,
            jitter,
        )
    };
    match &a.outcome {
        Outcome::Success => {}
        Outcome::Released => info!("released at shutdown"),
        Outcome::NotStarted(why) => debug!(?why, "prefetched job given back unstarted"),
        Outcome::Snooze(_) => debug!(state = %decision.to, "snoozed"),
        _ => {
            warn!(state = %decision.to, error = decision.error.as_deref().unwrap_or(""), "attempt failed")
        }
    }
    write_outcome(shared, &a, &decision).await;
    shared.in_flight.remove(a.fence);
    drop(permit);
}

/// Completes the job inside the handler's transaction. `None` when done (written, or fenced
/// off and rolled back); `Some(decision)` to write on its own when the commit failed (put back)
/// or the transaction was no longer the handler's (the attempt fails).
async fn complete_in_tx(shared: &Shared, a: &Attempt, mut tx: OwnedTx) -> Option<Decision> {
    let d = decide(
        &Outcome::Success,
        a.job.attempt,
        a.job.max_attempts,
        a.backoff,
        1.0,
    );
    let w = FinishWrite {
        fence: a.fence,
        attempt: a.job.attempt,
        worker: &shared.id,
        decision: &d,
        result: a.result.as_deref(),
        on_cancel: attempt::overridden_by_cancel,
        linked: a.job.linked,
        rules: jobq_producer::deps::RULES,
    };
    // The server may have ended the handler's transaction already (an implicit commit, a
    // deadlock's rollback); the handler's later writes then autocommitted. Completing now would
    // not be "exactly once with the handler's writes": fail the attempt instead.
    // The steps share one deadline (`lease_ttl`; the COMMIT then has its own 15 s): the
    // transaction holds the handler's locks until it ends. One cut off by the deadline is
    // dropped, which closes its connection (the server rolls it back).
    let deadline = Instant::now() + shared.config.worker().lease_ttl;
    let left = || deadline.saturating_duration_since(Instant::now());
    match within(left(), store::tx_intact(&mut tx)).await {
        Ok(true) => {}
        Ok(false) => {
            let _ = tx.rollback().await;
            let outcome = Outcome::Error {
                message: "the handler's transaction (ctx.tx()) was ended by the server before the \
                          job could complete in it (an implicit commit such as DDL, or a deadlock \
                          rolled it back); writes made after that were not part of it. Keep DDL \
                          out of ctx.tx() and return the error of a failed statement"
                    .into(),
                retry_after: None,
            };
            return Some(decide(
                &outcome,
                a.job.attempt,
                a.job.max_attempts,
                a.backoff,
                1.0,
            ));
        }
        Err(e) => {
            drop(tx);
            if let TxError::Sql(e) = &e {
                metrics::db_error(e, false);
            }
            return Some(attempt::put_back(&e.to_string()));
        }
    }
    let written = match within(left(), store::finish(&mut tx, w)).await {
        Ok(Some(ended)) => tx.commit().await.map(|_| {
            metrics::workflows_finished(&ended);
            true
        }),
        Ok(None) => tx.rollback().await.map(|_| false),
        Err(e) => {
            drop(tx);
            Err(e)
        }
    };
    match written {
        Ok(true) => {
            metrics::finished(&a.queue, &a.job.kind, "completed", Some(a.run));
            None
        }
        Ok(false) => {
            warn!("job was taken back before it completed; its writes were rolled back");
            None
        }
        Err(e) => {
            if let TxError::Sql(e) = &e {
                metrics::db_error(e, false);
            }
            // The COMMIT may have landed with only its answer lost: look before saying what
            // happened to the handler's writes.
            warn!(error = %e, "completing the job in the handler's transaction failed; verifying whether it committed");
            match store::state_by_fence(&shared.pool, a.fence).await {
                Ok(Some(state)) if state == "completed" => {
                    info!("verified: the completion had committed, with the handler's writes");
                    metrics::finished(&a.queue, &a.job.kind, "completed", Some(a.run));
                    None
                }
                Ok(Some(state)) if state == "running" => {
                    warn!("verified: the completion did not commit; the handler's writes were rolled back; putting the job back");
                    Some(attempt::put_back(&e.to_string()))
                }
                Ok(other) => {
                    warn!(state = ?other, "verified: the job is no longer this claim's (taken back or moved on); nothing to write");
                    None
                }
                Err(v) => {
                    error!(error = %v, "could not verify the completion; putting the job back, fenced (this changes nothing if it did commit)");
                    Some(attempt::put_back(&e.to_string()))
                }
            }
        }
    }
}

/// Writes a non-batched outcome in its own transaction, retrying database errors until it is
/// written, the fence is gone, the lease was lost meanwhile, or the write budget is spent.
async fn write_outcome(shared: &Shared, a: &Attempt, d: &Decision) {
    let label = d
        .event
        .finished_outcome()
        .expect("an attempt's decision always ends the attempt");
    let w = FinishWrite {
        fence: a.fence,
        attempt: a.job.attempt,
        worker: &shared.id,
        decision: d,
        result: a.result.as_deref(),
        on_cancel: attempt::overridden_by_cancel,
        linked: a.job.linked,
        rules: jobq_producer::deps::RULES,
    };
    let deadline = Instant::now() + shared.config.worker().lease_ttl;
    let mut retry = DbRetry::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = match tokio::time::timeout(left, store::finish_tx(&shared.pool, w)).await {
            Ok(Ok(true)) => {
                metrics::finished(&a.queue, &a.job.kind, label, Some(a.run));
                return;
            }
            Ok(Ok(false)) => {
                warn!("job was taken back before its outcome was written; nothing written");
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => TxError::Deadline(left),
        };
        let pause = retry.pause_tx(&e);
        if Instant::now() + pause.wait >= deadline {
            error!(error = %e, state = %d.to,
                   "could not record the outcome; giving the job up to the rescue path");
            metrics::finished(&a.queue, &a.job.kind, metrics::ABANDONED, Some(a.run));
            return;
        }
        if !pause.transient {
            warn!(error = %e, retry_in = ?pause.wait, "could not record the outcome; retrying");
        }
        tokio::time::sleep(pause.wait).await;
        if !shared.in_flight.holds(a.fence) {
            // Lease lost meanwhile: the job is someone else's now.
            return;
        }
    }
}

/// Gives back jobs a claim may have taken without this worker knowing (its COMMIT's answer was
/// lost): each is released with its attempt refunded, fenced by the claim's token, so a claim
/// that did not commit changes nothing. Retried within the write budget; a job still not
/// released then is left to the rescue path (which counts the attempt). `slots` are held until
/// the end, as the rows may be `running` meanwhile.
/// `contention`: the claim failed with a deadlock or a cluster's certification conflict, which
/// roll the transaction back: the check is then expected to find nothing and is logged only at
/// debug level.
pub(crate) async fn release_unstarted(
    shared: Arc<Shared>,
    queue: String,
    mut jobs: Vec<ClaimedJob>,
    why: String,
    contention: bool,
    slots: Vec<OwnedSemaphorePermit>,
) {
    let d = attempt::unstarted(&why);
    let deadline = Instant::now() + shared.config.worker().lease_ttl;
    let total = jobs.len();
    if contention {
        debug!(jobs = total, error = %why, "a claim lost a conflict; checking that it holds none of its jobs");
    } else {
        warn!(
            jobs = total,
            error = %why,
            "a claim's outcome is unknown; verifying its jobs by the claim's token (none has started)"
        );
    }
    let (mut given_back, mut not_claimed, mut unverified) = (0, 0, 0);
    // One read finds the jobs the claim holds (none if it did not commit); only those are
    // given back. If the read fails, every job is given back, fenced, one by one.
    if let Some(token) = jobs.first().map(|j| j.token) {
        let ids: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        if let Ok(held) = store::held_by_claim(&shared.pool, &ids, token).await {
            jobs.retain(|j| held.contains(&j.id));
            not_claimed = total - jobs.len();
        }
    }
    if jobs.is_empty() {
        if contention {
            debug!(jobs = total, "verified: the claim holds none of its jobs");
        } else {
            info!(
                jobs = total,
                "verified: the claim had not committed; none of its jobs was taken"
            );
        }
        drop(slots);
        return;
    }
    for job in jobs {
        let w = FinishWrite {
            fence: job.fence(),
            attempt: job.attempt,
            worker: &shared.id,
            decision: &d,
            result: None,
            on_cancel: attempt::overridden_by_cancel,
            linked: job.linked,
            rules: jobq_producer::deps::RULES,
        };
        let mut retry = DbRetry::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = match tokio::time::timeout(left, store::finish_tx(&shared.pool, w)).await {
                Ok(Ok(true)) => {
                    // The claim had committed: the database counts it, so do we.
                    metrics::claimed_unstarted(&queue, job.kind.as_str());
                    given_back += 1;
                    break;
                }
                // The claim did not commit (or the job moved on): nothing to give back.
                Ok(Ok(false)) => {
                    not_claimed += 1;
                    break;
                }
                Ok(Err(e)) => e,
                Err(_) => TxError::Deadline(left),
            };
            let pause = retry.pause_tx(&e);
            if Instant::now() + pause.wait >= deadline {
                error!(job_id = job.id, error = %e,
                       "could not verify a job whose claim's outcome is unknown; if it was claimed, its lease expires and maintenance rescues it");
                unverified += 1;
                break;
            }
            tokio::time::sleep(pause.wait).await;
        }
    }
    info!(
        jobs = total,
        given_back,
        not_claimed,
        unverified,
        "verified the claim of unknown outcome: {given_back} had been claimed and went back \
         (attempt refunded), {not_claimed} had not been claimed"
    );
    // The slots these jobs may have occupied are free again only now.
    drop(slots);
}

/// The completer: writes, in batches of up to `worker.completion_batch`, the successes no
/// claim carried within [`LINGER`], until `stop` and nothing is left waiting.
pub(crate) async fn completer(shared: Arc<Shared>, stop: CancellationToken) {
    let max = shared.config.worker().completion_batch as usize;
    loop {
        if shared.pending.is_empty() {
            tokio::select! {
                _ = shared.pending.wait_any() => {}
                // Every job task has ended before `stop`: write what waits, then leave.
                _ = stop.cancelled() => if shared.pending.is_empty() { return },
            }
        }
        if !stop.is_cancelled() {
            // A busy queue's claimer carries its successes in its next claim; give it the
            // first chance.
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = stop.cancelled() => {}
            }
        }
        let batch = shared.pending.take_any(max);
        if !batch.is_empty() {
            write_and_forget(&shared, batch).await;
        }
    }
}

/// Writes every waiting success, batch by batch (each within the write budget): the flush of a
/// stop whose completer is gone.
pub(crate) async fn flush(shared: &Shared) {
    let max = shared.config.worker().completion_batch as usize;
    loop {
        let batch = shared.pending.take_any(max);
        if batch.is_empty() {
            return;
        }
        write_and_forget(shared, batch).await;
    }
}

/// Writes `batch` (within the write budget), then forgets its jobs: forgetting a job and
/// freeing its slot go together (the permit drops with its completion).
async fn write_and_forget(shared: &Shared, mut batch: Vec<Completion>) {
    write_batch(shared, &mut batch).await;
    for c in batch {
        shared.in_flight.remove(c.fence);
    }
}

/// Counts completions written in one transaction (`done` of them still ours; the others had
/// been taken back meanwhile and were left alone). Shared by the completer and by claims that
/// carry completions. When some were left alone, which ones is asked afterwards (off the
/// caller's path): a job still ours got a dependent while it ran and is completed now, in the
/// path that settles dependents; the others are counted as `lease_lost`, never as `completed`.
pub(crate) fn count_written(shared: &Shared, batch: &[Completion], done: u64) {
    if done >= batch.len() as u64 {
        for c in batch {
            metrics::finished(&c.queue, &c.kind, "completed", Some(c.run));
        }
        return;
    }
    warn!(
        stale = batch.len() as u64 - done,
        "completions not written by the batch (jobs taken back meanwhile, or given a dependent)"
    );
    let pool = shared.pool.clone();
    let batch: Vec<(Fence, QueueName, KindName, Duration, Option<String>)> = batch
        .iter()
        .map(|c| {
            (
                c.fence,
                c.queue.clone(),
                c.kind.clone(),
                c.run,
                c.result.clone(),
            )
        })
        .collect();
    tokio::spawn(async move {
        let fences: Vec<Fence> = batch.iter().map(|b| b.0).collect();
        match store::completed_with_token(&pool, &fences).await {
            Ok(written) => {
                for (fence, queue, kind, run, result) in &batch {
                    // Not written and still ours: a dependent was added while it ran, which
                    // the batch leaves to the path that settles dependents.
                    let done = written.contains(&fence.id)
                        || complete_given_a_dependent(&pool, *fence, result.as_deref()).await;
                    let outcome = if done {
                        "completed"
                    } else {
                        metrics::LEASE_LOST
                    };
                    metrics::finished(queue, kind, outcome, Some(*run));
                }
            }
            Err(e) => warn!(error = %e, jobs = batch.len(),
                            "could not tell which completions of a batch were written; not counted"),
        }
    });
}

/// Completes a job the batch left alone because it got a dependent while it ran, in the path
/// that settles dependents, retrying transient errors (a deadlock with a sibling's ending, a
/// certification conflict) for a few seconds. False when it is no longer this claim's, or
/// could not be written: its lease lapses and it is rescued.
async fn complete_given_a_dependent(
    pool: &sqlx::MySqlPool,
    fence: Fence,
    result: Option<&str>,
) -> bool {
    let mut retry = DbRetry::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match store::complete_linked(pool, fence, result, jobq_producer::deps::RULES).await {
            Ok(done) => return done,
            Err(e) => {
                let pause = retry.pause_tx(&e);
                if !pause.transient || Instant::now() + pause.wait >= deadline {
                    warn!(error = %e, job = fence.id, "could not complete a job that got a dependent while it ran; its lease will lapse and it is rescued");
                    return false;
                }
                tokio::time::sleep(pause.wait).await;
            }
        }
    }
}

/// Writes one batch of completions, within the write budget. Completions not written by then
/// are given up (the caller forgets them, so their leases lapse and they are rescued).
async fn write_batch(shared: &Shared, batch: &mut Vec<Completion>) {
    let deadline = Instant::now() + shared.config.worker().lease_ttl;
    let mut retry = DbRetry::new();
    loop {
        let fences: Vec<Fence> = batch.iter().map(|c| c.fence).collect();
        let results: Vec<(u64, String)> = batch
            .iter()
            .filter_map(|c| c.result.clone().map(|r| (c.fence.id, r)))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        let write = store::complete_batch(&shared.pool, &fences, &results);
        let e = match tokio::time::timeout(left, write).await {
            Ok(Ok(done)) => {
                count_written(shared, batch, done);
                return;
            }
            Ok(Err(e)) => TxError::Sql(e),
            Err(_) => TxError::Deadline(left),
        };
        let pause = retry.pause_tx(&e);
        if Instant::now() + pause.wait >= deadline {
            error!(error = %e, jobs = fences.len(),
                   "could not write completions; giving the jobs up to the rescue path");
            for c in batch.iter() {
                metrics::finished(&c.queue, &c.kind, metrics::ABANDONED, Some(c.run));
            }
            return;
        }
        if !pause.transient {
            warn!(error = %e, jobs = fences.len(), retry_in = ?pause.wait, "could not write completions; retrying");
        }
        tokio::time::sleep(pause.wait).await;
        // Jobs whose lease was lost meanwhile are no longer ours to complete.
        batch.retain(|c| shared.in_flight.holds(c.fence));
        if batch.is_empty() {
            return;
        }
    }
}
