//! The claimer of one queue: waits for a free slot, claims up to all free slots in one
//! transaction, and hands each claimed job to its own task. The queue's successes waiting to be
//! written ride in the same transaction, and their slots are refilled by it (`pending.rs`).
//!
//! Polling adapts: after a full batch it claims again at once; after a claim that found jobs
//! but fewer than asked for it polls again after 1 ms, doubling on every empty poll up to
//! `poll_interval`. A same-process enqueue into the queue wakes it at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq_config::{ClaimMode, QueueSettings};
use jobq_producer::QueueName;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn, Instrument};

use super::lock::NamedLockClaims;
use super::recorder::{self, Completion};
use super::retry::DbRetry;
use super::{executor, Shared};
use crate::metrics;
use crate::store::{self, ClaimError, ClaimLock, ClaimRequest, ClaimedJob, Fence};

const MIN_POLL: Duration = Duration::from_millis(1);

/// Runs the claimer of queue `q` until `stop`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    q: QueueSettings,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
    jobs: TaskTracker,
    wake: Arc<Notify>,
) {
    let queue = q.name.clone();
    let lease = shared.config.worker.lease_ttl;
    let carry_max = shared.config.worker.completion_batch as usize;
    let successes = shared.pending.ready(&queue);
    let mut idle_wait = MIN_POLL;
    let mut named = NamedLockClaims::default();
    let mut retry = DbRetry::new();
    let mut last_full = false;
    loop {
        // Wait for a free slot, or for a success whose slot this claim can fill. Only this task
        // takes permits, so every permit seen free below stays free until taken here.
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = sem.clone().acquire_owned() => Some(p.expect("semaphore never closed")),
            _ = successes.notified() => None,
        };
        let free = |first: &Option<OwnedSemaphorePermit>| {
            usize::from(first.is_some()) + sem.available_permits() + shared.pending.len(&queue)
        };
        // After a full batch the slots come back one by one as jobs end; claiming at the first
        // free slot would make every claim tiny. Give the jobs just started a few scheduler turns
        // to finish and return their slots (cheap: no sleep), so one round trip serves many.
        if last_full {
            let target = (q.concurrency.min(q.max_batch) as usize).div_ceil(2);
            for _ in 0..16 {
                if free(&first) >= target {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        // The successes waiting in this queue are completed by this claim, in its transaction:
        // their slots are filled by the jobs it claims.
        let carried = shared.pending.take(&queue, carry_max);
        let slots = usize::from(first.is_some()) + sem.available_permits() + carried.len();
        let want = slots.min(q.max_batch as usize) as u32;
        if want == 0 {
            continue;
        }
        let fences: Vec<Fence> = carried.iter().map(|c| c.fence).collect();
        let started = Instant::now();
        let result = match q.claim_mode {
            ClaimMode::SkipLocked => claim_skip_locked(&shared, &queue, want, &fences).await,
            ClaimMode::NamedLock => named.claim(&shared, &queue, want, &fences).await,
        };
        #[cfg(test)]
        let result = lose_answer(&shared, result);
        match result {
            Ok(claimed) => {
                retry.reset();
                let got = claimed.jobs.len();
                last_full = got as u32 == want;
                metrics::claim(&queue, started.elapsed(), got);
                // The carried successes were completed (those taken back meanwhile were left
                // alone); their permits pass to the jobs just claimed.
                let mut permits: Vec<OwnedSemaphorePermit> = Vec::with_capacity(carried.len());
                match claimed.completed {
                    Some(done) => permits.extend(completed(&shared, carried, done)),
                    None => shared.pending.put_back(carried),
                }
                let mut first = first;
                for job in claimed.jobs {
                    let permit = first.take().or_else(|| permits.pop()).unwrap_or_else(|| {
                        sem.clone()
                            .try_acquire_owned()
                            .expect("free slots only shrink when this claimer takes them")
                    });
                    spawn_job(&shared, &jobs, &queue, job, permit, started + lease);
                }
                drop(first);
                drop(permits);
                if (got as u32) < want {
                    // Less than asked for: the queue is empty for now.
                    idle_wait = if got > 0 {
                        MIN_POLL
                    } else {
                        (idle_wait * 2).min(q.poll_interval)
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(idle_wait) => {}
                        _ = wake.notified() => idle_wait = MIN_POLL,
                        _ = successes.notified() => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
            Err(ClaimError {
                source: e,
                maybe_claimed,
            }) => {
                drop(first);
                // Not written (or not known to be): the completer retries them, fenced.
                shared.pending.put_back(carried);
                if !maybe_claimed.is_empty() {
                    // The claim may have committed unseen: give those jobs back, attempt
                    // refunded (fenced by the claim's token: nothing happens if it did not).
                    jobs.spawn(recorder::release_unstarted(
                        shared.clone(),
                        maybe_claimed,
                        e.to_string(),
                    ));
                }
                let pause = retry.pause(&e);
                if pause.transient {
                    debug!(queue = %queue, error = %e, "claim hit a transient error; retrying");
                } else {
                    warn!(queue = %queue, error = %e, retry_in = ?pause.wait, "claim failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause.wait) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
    named.close().await;
    debug!(queue = %queue, "claimer stopped");
}

/// Tests only: turns a committed claim into the error a lost answer would give.
#[cfg(test)]
fn lose_answer(
    shared: &Shared,
    result: Result<ClaimResult, ClaimError>,
) -> Result<ClaimResult, ClaimError> {
    use std::sync::atomic::Ordering;
    match result {
        Ok(c)
            if !c.jobs.is_empty()
                && shared
                    .lose_claim_answers
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok() =>
        {
            Err(ClaimError {
                source: sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                maybe_claimed: c.jobs,
            })
        }
        other => other,
    }
}

/// What a claim carrying successes returns to its caller: `Some(completed)` when the
/// successes were part of its committed transaction, `None` when they were not sent (the named
/// lock was busy).
pub(crate) struct ClaimResult {
    pub(crate) jobs: Vec<ClaimedJob>,
    pub(crate) completed: Option<u64>,
}

/// Accounts for successes a claim completed (`done` of them; the rest had been taken back)
/// and returns their permits.
fn completed(
    shared: &Shared,
    carried: Vec<Completion>,
    done: u64,
) -> impl Iterator<Item = OwnedSemaphorePermit> + '_ {
    if done < carried.len() as u64 {
        warn!(
            stale = carried.len() as u64 - done,
            "completions for jobs taken back meanwhile were not written"
        );
    }
    carried.into_iter().map(move |c| {
        metrics::finished(&c.queue, &c.kind, "completed", Some(c.run));
        shared.in_flight.remove(c.fence);
        c.permit
    })
}

/// One skip-locked claim on a pooled connection. The raw-transaction guard inside the store
/// closes the connection instead of returning it if the transaction could not be ended.
async fn claim_skip_locked(
    shared: &Shared,
    queue: &QueueName,
    want: u32,
    complete: &[Fence],
) -> Result<ClaimResult, ClaimError> {
    let mut conn = shared.pool.acquire().await?;
    let claimed = store::claim(
        &mut conn,
        ClaimRequest {
            queue,
            limit: want,
            worker: &shared.id,
            lease: shared.config.worker.lease_ttl,
            lock: ClaimLock::SkipLocked,
            complete,
        },
    )
    .await?;
    Ok(ClaimResult {
        jobs: claimed.jobs,
        completed: Some(claimed.completed),
    })
}

/// Registers a claimed job in the in-flight table (with the lease deadline its claim took,
/// measured from before the claim was sent) and starts its task.
fn spawn_job(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    queue: &QueueName,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) {
    let fence = Fence {
        id: job.id,
        token: job.token,
    };
    let cancel = shared.in_flight.insert(fence, deadline);
    metrics::claimed(
        queue,
        &job.kind,
        Duration::from_micros(job.wait_us.max(0) as u64),
    );
    let span = info_span!("job", job_id = job.id, kind = %job.kind, queue = %queue, attempt = job.attempt, worker = %shared.id);
    jobs.spawn(executor::run(shared.clone(), queue.clone(), job, permit, cancel).instrument(span));
}
