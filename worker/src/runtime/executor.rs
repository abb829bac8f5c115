//! Runs one attempt: decode the payload, start the handler, and turn whatever happens (return
//! value, panic, `job_timeout`, lost lease, shutdown release) into an [`Outcome`], then hand it
//! to the recorder. Whenever the runtime gives up on an attempt, the job's cancellation token
//! fires, so tasks the handler spawned see `ctx.cancelled()`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use jobq_producer::{JobId, QueueName};
use tokio::sync::OwnedSemaphorePermit;
use tracing::warn;

use super::in_flight::Tokens;
use super::{recorder, Shared};
use crate::handler::{write_chain, JobContext, JobError};
use crate::machine::attempt::{with_late_cancel, Backoff, Outcome, Unstarted};
use crate::machine::prefetch::GIVE_BACK_AFTER;
use crate::metrics;
use crate::model::ClaimedJob;

/// Runs `job` to its outcome and records it. `permit` is the job's slot; `cancel` its token from
/// the in-flight table.
pub(crate) async fn run(
    shared: Arc<Shared>,
    queue: QueueName,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    tokens: Tokens,
) {
    let Tokens { cancel, stop } = tokens;
    let fence = job.fence();
    let policy = shared.policy(&queue, &job.kind);
    let ctx = JobContext::new(
        JobId(job.id),
        &queue,
        &job.kind,
        (job.attempt, job.max_attempts),
        job.token,
        crate::handler::Runs {
            worker: &shared.id,
            pool: &shared.pool,
            cancel: &cancel,
            journal: crate::journal::Journal::new(&shared.journal, fence, job.attempt),
        },
    );
    let lingering = ctx.lingering.clone();
    let journal = ctx.journal.clone();
    let slot = ctx.tx.clone();
    let tx_closed = ctx.tx_closed.clone();
    let result_slot = ctx.result.clone();
    let backoff = |policy: &jobq_config::RunPolicy| Backoff {
        base: policy.backoff_base,
        max: policy.backoff_max,
    };
    // A handler slot: at once without prefetch; a job claimed ahead waits here for one.
    let handler_slot = match handler_slot(&shared, &queue, fence, &cancel, &stop).await {
        Ok(p) => p,
        Err(None) => {
            warn!("lease lost before the prefetched job started; nothing written");
            metrics::finished(&queue, &job.kind, metrics::LEASE_LOST, None);
            return;
        }
        Err(Some(outcome)) => {
            let attempt = recorder::Attempt {
                fence,
                queue,
                job,
                outcome,
                run: Duration::ZERO,
                backoff: backoff(&policy),
                tx: None,
                result: None,
            };
            recorder::record(&shared, attempt, permit).await;
            return;
        }
    };
    let started = Instant::now();
    let outcome = match shared.registry.get(&job.kind) {
        // Claims take any kind (filtering would make every claim read past the backlog of
        // other kinds). A kind this worker does not know fails the attempt, visibly, and is
        // retried with backoff like any error: a rolling deploy that adds the kind heals it.
        None => Some(Outcome::Error {
            message: format!(
                "no handler registered for kind {:?} in worker {} (it runs {}); every worker \
                 of queue {:?} must register every kind enqueued into it",
                job.kind.as_str(),
                shared.id,
                shared
                    .kinds
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                queue.as_str()
            ),
            retry_after: None,
        }),
        Some(handler) => match handler.start(&job.payload, ctx) {
            Err(e) => Some(Outcome::Undecodable(e.to_string())),
            Ok(fut) => {
                let guarded = crate::panics::in_handler(
                    job.id,
                    job.kind.clone(),
                    AssertUnwindSafe(fut).catch_unwind(),
                );
                let mut handler = std::pin::pin!(with_timeout(policy.job_timeout, guarded));
                let outcome = tokio::select! {
                    biased;
                    // An operator's cancel (the heartbeat read the request): the handler has
                    // seen `ctx.cancelled()`; it gets the grace to stop, then it is dropped.
                    // Whatever it returns, the job ends `cancelled`.
                    _ = stop.cancelled() => {
                        let grace = shared.config.worker().cancel_grace;
                        let _ = tokio::time::timeout(grace, &mut handler).await;
                        Some(cancelled(&shared, fence, "while running"))
                    }
                    r = &mut handler => Some(match r {
                        None => Outcome::Timeout(policy.job_timeout.unwrap_or_default()),
                        Some(Err(panic)) => Outcome::Panic(panic_message(panic.as_ref())),
                        Some(Ok(Ok(()))) => Outcome::Success,
                        Some(Ok(Err(e))) => outcome_of(e),
                    }),
                    _ = cancel.cancelled() => None,
                    _ = shared.in_flight.expiry(fence) => None,
                    _ = shared.release.cancelled() => Some(Outcome::Released),
                };
                // A cancel that arrived as the handler returned still wins: the operator was
                // told the job would end cancelled.
                outcome.map(|o| {
                    with_late_cancel(o, stop.is_cancelled(), || {
                        cancelled(&shared, fence, "while running")
                    })
                })
            }
        },
    };
    let run = started.elapsed();
    shared
        .queue_slots(&queue)
        .pace(|p| p.ran(shared.uptime(), run));
    // The slot is free for the next job as soon as the handler is done; the claimed-job permit
    // stays held until the outcome is written.
    drop(handler_slot);
    // The handler did not return by itself (timeout, panic, shutdown release, lost lease, an
    // operator's cancel): its future is gone, so tell whatever it spawned, before the job can
    // be claimed again.
    if stop.is_cancelled()
        || matches!(
            outcome,
            None | Some(Outcome::Timeout(_) | Outcome::Panic(_) | Outcome::Released)
        )
    {
        cancel.cancel();
    }
    // What the attempt left stopping (a command handler's program and its process group)
    // ends before the outcome is written: until then the job stays in flight, its lease
    // renewed, so no other worker can start it while the program still runs. The program gets
    // its grace, then SIGKILL; at once when the lease is lost (the job may soon run
    // elsewhere); and at most half a lease at a shutdown release, which must be written
    // within the release phase (`lease_ttl`).
    let left = lingering.take();
    if !left.is_empty() {
        let lease = shared.config.worker().lease_ttl;
        let grace = match outcome {
            None => Duration::ZERO,
            Some(Outcome::Released) => (lease / 2).min(shared.config.worker().cancel_grace),
            _ => shared.config.worker().cancel_grace,
        };
        let mut all = std::pin::pin!(futures::future::join_all(left));
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            lingering.hurry.cancel();
            let bound = LINGER_SLACK.min(lease / 4);
            if tokio::time::timeout(bound, &mut all).await.is_err() {
                warn!(
                    ?bound,
                    "what the attempt left running did not stop after SIGKILL; writing its outcome anyway"
                );
            }
        }
    }
    // The handler's transaction, taken for the outcome: from now on a task the handler spawned
    // cannot begin another one that nobody would end. A task still holding it (`ctx.tx()`'s
    // guard) a whole lease after the handler returned: a success cannot complete without it
    // and fails instead (any other outcome stands); the transaction closes its connection,
    // rolling back, when that task lets go of the context.
    let wait = shared.config.worker().lease_ttl;
    let (tx, outcome) = match tokio::time::timeout(wait, slot.lock()).await {
        Ok(mut slot) => {
            tx_closed.store(true, std::sync::atomic::Ordering::SeqCst);
            (slot.take(), outcome)
        }
        Err(_) => {
            tx_closed.store(true, std::sync::atomic::Ordering::SeqCst);
            cancel.cancel();
            let held = Outcome::Error {
                message: format!(
                    "a task the handler spawned still held ctx.tx() {wait:?} after the handler \
                     returned; the attempt's writes in it are rolled back. Let go of the \
                     transaction before the handler returns"
                ),
                retry_after: None,
            };
            let outcome = outcome.map(|o| if o == Outcome::Success { held } else { o });
            (None, outcome)
        }
    };
    // The attempt's last log lines and progress, before its outcome (nothing to do, and no
    // wait, for a handler that wrote none).
    journal
        .close(crate::journal::LAST_FLUSH_BOUND.min(shared.config.worker().lease_ttl / 4))
        .await;
    let Some(outcome) = outcome else {
        // The lease could not be extended: someone else may own the job now. Write nothing; the
        // handler's transaction closes its connection (the server rolls it back).
        drop(tx);
        warn!("lease lost; handler cancelled, outcome not written");
        metrics::finished(&queue, &job.kind, metrics::LEASE_LOST, Some(run));
        return;
    };
    let backoff = backoff(&policy);
    let result = match outcome {
        Outcome::Success => result_slot.lock().unwrap_or_else(|p| p.into_inner()).take(),
        _ => None,
    };
    recorder::record(
        &shared,
        recorder::Attempt {
            fence,
            queue,
            job,
            outcome,
            run,
            backoff,
            tx,
            result,
        },
        permit,
    )
    .await;
}

/// How long after SIGKILL the outcome waits for what an attempt left stopping (at most a
/// quarter of a lease): a process group killed with SIGKILL is normally gone at once.
const LINGER_SLACK: Duration = Duration::from_secs(2);

/// Waits for a free handler slot of `queue`. Whatever ends the job's claim meanwhile ends the
/// wait instead: `Err(None)` when the lease is lost (nothing to write), `Err(Some(outcome))`
/// when an operator cancelled the job, the worker is stopping, or (`auto` prefetch) the job
/// waited [`GIVE_BACK_AFTER`] behind longer jobs: it goes back, its attempt refunded, for any
/// worker with a free slot. Without prefetch a slot is always free here.
async fn handler_slot(
    shared: &Shared,
    queue: &QueueName,
    fence: crate::model::Fence,
    cancel: &tokio_util::sync::CancellationToken,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<OwnedSemaphorePermit, Option<Outcome>> {
    let q = shared.queue_slots(queue);
    if let Ok(p) = q.run.clone().try_acquire_owned() {
        return Ok(p);
    }
    let adaptive = q.pace.is_some();
    let since = shared.uptime();
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(Some(cancelled(shared, fence, "before it started"))),
        // A stop first: an immediate stop also fires every job's `cancel`, and these jobs are
        // better given back (fenced, so harmless if the lease was lost meanwhile) than left to
        // the rescue, which counts the attempt.
        _ = shared.stopping.cancelled() => Err(Some(Outcome::NotStarted(Unstarted::Stopped))),
        _ = shared.release.cancelled() => Err(Some(Outcome::NotStarted(Unstarted::Stopped))),
        _ = cancel.cancelled() => Err(None),
        _ = shared.in_flight.expiry(fence) => Err(None),
        p = q.run.clone().acquire_owned() => Ok(p.expect("semaphore never closed")),
        waited = no_slot_freed(shared, q, since), if adaptive => {
            q.pace(|p| p.gave_back(waited));
            metrics::given_back(queue);
            Err(Some(Outcome::NotStarted(Unstarted::Waited(waited))))
        }
    }
}

/// Ends once no handler of the queue has ended for [`GIVE_BACK_AFTER`] while this job
/// waited (from `since`, the process's uptime): the slots are held by longer jobs. Returns how
/// long the job waited. A handler that ends moves the deadline, so a process merely busy (or
/// stalled as a whole) does not give its jobs back while its slots keep turning.
async fn no_slot_freed(shared: &Shared, q: &super::QueueSlots, since: Duration) -> Duration {
    loop {
        let last = q.last_end().unwrap_or_default().max(since);
        let now = shared.uptime();
        let due = last + GIVE_BACK_AFTER;
        if now >= due {
            return now - since;
        }
        tokio::time::sleep(due - now).await;
    }
}

/// The outcome of a job an operator cancelled `when` ("while running", "before it started").
fn cancelled(shared: &Shared, fence: crate::model::Fence, when: &str) -> Outcome {
    let by = shared
        .in_flight
        .cancelled_by(fence)
        .unwrap_or_else(|| "an operator".into());
    Outcome::Cancel(format!("cancelled by {by} {when}"))
}

async fn with_timeout<F: Future>(timeout: Option<Duration>, fut: F) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// The outcome a handler's error asks for, with the error's whole chain as its text.
pub(crate) fn outcome_of(e: JobError) -> Outcome {
    let text = |e: &(dyn std::error::Error + 'static)| {
        let mut s = String::new();
        let _ = write_chain(&mut s, e);
        s
    };
    match e {
        JobError::Retry(e) => Outcome::Error {
            message: text(e.as_ref()),
            retry_after: None,
        },
        JobError::RetryAfter(e, d) => Outcome::Error {
            message: text(e.as_ref()),
            retry_after: Some(d),
        },
        JobError::Discard(e) => Outcome::Discard(text(e.as_ref())),
        JobError::Snooze(d) => Outcome::Snooze(d),
        JobError::Cancel(e) => Outcome::Cancel(text(e.as_ref())),
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
