//! The claimer of one queue: waits for a free slot, claims up to all free slots in one
//! transaction, and hands each claimed job to its own task. The queue's successes waiting to be
//! written ride in the same transaction, and their slots are refilled by it (`pending.rs`).
//!
//! With prefetch, a claim may take more jobs than there are free handler slots: the extra
//! ones wait in the process for a slot (`executor.rs`), so a slot that frees starts its next
//! job without a round trip, and one claim serves many jobs even with a single slot. How many
//! is fixed (`worker.prefetch = N`) or decided before each claim (`auto`, the default:
//! `machine::prefetch`, fed here with what each claim found).
//!
//! Polling adapts: after a full batch it claims again at once; after a claim that found jobs
//! but fewer than asked for it polls again after 1 ms, doubling on every empty poll up to
//! `poll_interval`. A same-process enqueue into the queue wakes it at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq_config::{ClaimMode, QueueSettings};
use jobq_producer::{KindName, QueueName};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use super::claim::{claim, ClaimRequest, Claimed, Flow};
use super::lock::NamedLockClaims;
use super::pending::Carried;
use super::recorder;
use super::retry::DbRetry;
use super::{executor, Shared};
use crate::machine::prefetch::ClaimSeen;
use crate::metrics;
use crate::model::{ClaimOutcome, ClaimedJob, Cursor};
use crate::store::{ClaimError, ClaimLock};

const MIN_POLL: Duration = Duration::from_millis(1);

/// How long after a claim that found jobs an empty queue is still polled every [`MIN_POLL`]:
/// jobs of a busy queue often arrive in bursts (a producer's batch every few ms), and backing
/// off right after the first empty poll would make the next burst wait up to twice as long
/// as the gap between bursts. Short, because each poll is a claim transaction: a queue whose
/// jobs stop coming costs each process about ten empty claims before the backoff starts.
const BUSY_WINDOW: Duration = Duration::from_millis(10);

/// Claims in a row that may start after the previous claim's last job (a cursor) before one
/// reads the queue from its head again.
const CURSOR_CLAIMS: u32 = 8;

/// How long after the read from the head that started them cursor claims may go on. The head's
/// delete-marked entries pile up only while claims follow each other closely; a queue claimed
/// at a slower pace reads from the head every time, and its order stays strict.
const CURSOR_MAX_AGE: Duration = Duration::from_secs(1);

/// Where the claimer's next claim may start reading. A claim reads from after the last job
/// the previous one read while claims keep filling their batches, at most [`CURSOR_CLAIMS`] in
/// a row and for [`CURSOR_MAX_AGE`] after the read from the head that started the run: the
/// head it skips holds the entries those claims just moved, which stay in the index,
/// delete-marked, until purge removes them, and every read from the head steps over them (at
/// 1M jobs a fifth of the rate). Any other claim reads from the head, so a job that sorts
/// before the cursor (a more urgent priority, an earlier run_at) waits at most eight claims
/// and a second.
struct ClaimCursor {
    at: Option<Cursor>,
    /// Cursor claims in the current run.
    streak: u32,
    /// When the read from the head that started the current run began.
    since: Instant,
}

impl ClaimCursor {
    fn new(now: Instant) -> ClaimCursor {
        ClaimCursor {
            at: None,
            streak: 0,
            since: now,
        }
    }

    /// The cursor of a claim starting at `now`: none once its run is [`CURSOR_MAX_AGE`] old.
    fn for_claim(&mut self, now: Instant) -> Option<&Cursor> {
        if now.duration_since(self.since) >= CURSOR_MAX_AGE {
            self.reset();
        }
        self.at.as_ref()
    }

    /// After a claim that began at `started`, filled its batch with jobs it started (`full`; a
    /// claim that sent jobs to wait or made waiting jobs available is not full: those sort
    /// before the cursor) or not, and read up to `last`.
    fn after_claim(&mut self, started: Instant, full: bool, last: Option<Cursor>) {
        if self.streak == 0 {
            self.since = started;
        }
        match last {
            Some(c) if full && self.streak < CURSOR_CLAIMS => {
                self.at = Some(c);
                self.streak += 1;
            }
            _ => self.reset(),
        }
    }

    /// The next claim reads from the head.
    fn reset(&mut self) {
        self.at = None;
        self.streak = 0;
    }
}

/// The wait before the next poll after a claim that got fewer jobs than it asked for: the
/// shortest while the queue gave jobs (`got > 0`) or did within [`BUSY_WINDOW`]
/// (`since_found`), else double the last wait, up to `poll_interval`.
fn next_poll(
    last: Duration,
    got: usize,
    since_found: Duration,
    poll_interval: Duration,
) -> Duration {
    if got > 0 || since_found < BUSY_WINDOW {
        MIN_POLL
    } else {
        (last * 2).clamp(MIN_POLL, poll_interval)
    }
}

/// Runs the claimer of queue `q` until `stop`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    q: QueueSettings,
    sem: Arc<Semaphore>,
    run_slots: Arc<Semaphore>,
    stop: CancellationToken,
    jobs: TaskTracker,
    wake: Arc<Notify>,
) {
    let queue = q.name.clone();
    let lease = shared.config.worker().lease_ttl;
    let carry_max = shared.config.worker().completion_batch as usize;
    let successes = shared.pending.ready(&queue);
    let mut idle_wait = MIN_POLL;
    // When a claim last found jobs: a queue busy a moment ago is polled at the shortest pace.
    let mut last_found = Instant::now();
    let mut cursor = ClaimCursor::new(Instant::now());
    let mut named = NamedLockClaims::default();
    let mut retry = DbRetry::new();
    let mut last_full = false;
    let key_limit = |kind: &KindName| shared.config.key_limit(&queue, kind);
    let flow = Flow {
        rate: q.rate_limit,
        key_rate: q.key_rate_limit,
        key_limit: &key_limit,
    };
    let slots = shared.queue_slots(&queue);
    let total = slots.total as usize;
    let concurrency = q.concurrency as usize;
    let ahead_now = || slots.ahead(shared.uptime()) as usize;
    // Jobs held now (claimed, outcome not yet written). Only this task takes permits, so every
    // permit seen free stays free until a claim's job takes it.
    let busy = || total - sem.available_permits();
    // Room left for jobs, and with the queue's waiting successes (their slots pass to the
    // jobs this claim takes once it carries them).
    let room_left = |ahead: usize| (concurrency + ahead).saturating_sub(busy());
    let free = |ahead: usize| room_left(ahead) + shared.pending.len(&queue);
    'claims: loop {
        // Jobs this claim may take ahead of free slots: fixed, or decided anew (`auto`).
        let mut ahead = ahead_now();
        // Wait for room (fewer jobs held than `concurrency + ahead`), or for a success whose
        // slot this claim can fill.
        while room_left(ahead) == 0 {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break 'claims,
                _ = a_release(&sem, &slots.waiting_holds) => {}
                _ = successes.notified() => break,
            }
            ahead = ahead_now();
        }
        if ahead > 0 {
            // Jobs claimed ahead are waiting for handler slots: claim again when a handler
            // slot is idle (none waiting), or once half the room has freed, so one round trip
            // serves many. Every event that frees room wakes this wait: a success pushed, a
            // job's permit given back.
            loop {
                let room = (concurrency + ahead).min(q.max_batch as usize);
                let f = free(ahead);
                if f > 0 && (run_slots.available_permits() > 0 || f >= room.div_ceil(2)) {
                    break;
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break 'claims,
                    _ = a_release(&sem, &slots.waiting_holds) => {}
                    _ = successes.notified() => {}
                }
                ahead = ahead_now();
            }
        } else if last_full {
            // After a full batch the slots come back one by one as jobs end; claiming at the
            // first free slot would make every claim tiny. Give the jobs just started a few
            // scheduler turns to finish and return their slots (cheap: no sleep), so one round
            // trip serves many.
            let target = concurrency.min(q.max_batch as usize).div_ceil(2);
            for _ in 0..16 {
                if free(0) >= target {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        // Slots free now; the queue's waiting successes add theirs once the claim carries them.
        let base = room_left(ahead);
        if base == 0 && shared.pending.len(&queue) == 0 {
            continue;
        }
        let ask = Ask {
            base,
            max_batch: q.max_batch as usize,
            carry_max,
        };
        let started = Instant::now();
        let after = cursor.for_claim(started);
        let result = match q.claim_mode {
            ClaimMode::SkipLocked => claim_skip_locked(&shared, &queue, ask, flow, after).await,
            ClaimMode::NamedLock => named.claim(&shared, &queue, ask, flow, after).await,
        };
        #[cfg(test)]
        let result = lose_answer(&shared, result);
        match result {
            Ok(ClaimResult {
                claimed: mut c,
                carried,
            }) => {
                retry.reset();
                let got = c.jobs.len();
                if got > 0 {
                    last_found = Instant::now();
                    idle_wait = MIN_POLL;
                }
                let throttled = c.throttled;
                slots.pace(|p| {
                    p.claimed(ClaimSeen {
                        full: matches!(c.outcome, ClaimOutcome::Full | ClaimOutcome::Throttled),
                        capped: throttled.waiting > 0
                            || throttled.deferred > 0
                            || matches!(c.outcome, ClaimOutcome::RateLimited(_)),
                    })
                });
                // A full batch, or one that sent jobs to wait, deferred them or made waiting
                // jobs available: more may be claimable at once.
                last_full = matches!(c.outcome, ClaimOutcome::Full | ClaimOutcome::Throttled);
                // Only a full batch of starts lets the next claim read from where it stopped
                // (jobs sent to wait or made available sort before it).
                let full = c.outcome == ClaimOutcome::Full;
                cursor.after_claim(started, full, c.last.take());
                metrics::claim(&queue, started.elapsed(), got);
                metrics::throttled(&queue, throttled.waiting, throttled.deferred);
                metrics::unblocked(&queue, c.unblocked);
                shared.in_flight.free_keys(&queue, c.waited_for);
                // The carried successes were completed in the claim's transaction (those taken
                // back meanwhile were left alone); their slots pass to the jobs just claimed.
                let mut permits = match carried {
                    Some(carried) => carried.written(&shared, c.completed, &c.promoted_keys),
                    None => Vec::new(),
                };

                for job in c.jobs {
                    let permit = permits.pop().unwrap_or_else(|| {
                        sem.clone()
                            .try_acquire_owned()
                            .expect("free slots only shrink when this claimer takes them")
                    });
                    spawn_job(&shared, &jobs, &queue, job, permit, started + lease);
                }
                drop(permits);
                if let ClaimOutcome::RateLimited(wait) = c.outcome {
                    // The queue's rate limit is used up until a permit frees.
                    metrics::rate_limited(&queue);
                    idle_wait = MIN_POLL;
                    tokio::select! {
                        _ = tokio::time::sleep(wait.clamp(MIN_POLL, q.poll_interval)) => {}
                        _ = successes.notified() => {}
                        _ = stop.cancelled() => break,
                    }
                } else if c.outcome == ClaimOutcome::Partial {
                    // Less than asked for: the queue is empty for now.
                    idle_wait = next_poll(idle_wait, got, last_found.elapsed(), q.poll_interval);
                    tokio::select! {
                        _ = tokio::time::sleep(idle_wait) => {}
                        _ = wake.notified() => idle_wait = MIN_POLL,
                        _ = successes.notified() => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
            Err(e) => {
                cursor.reset();
                let contended = matches!(e, ClaimError::Conflict { .. });
                let pause = match e.sql() {
                    _ if contended => super::retry::contended(),
                    Some(sql) => retry.pause(sql),
                    None => retry.pause_unexplained(),
                };
                let reason = e.to_string();
                let maybe_claimed = e.into_maybe_claimed();
                // Carried successes not known to be written went back to `pending` with their
                // guard; the completer or the next claim writes them, fenced.
                if !maybe_claimed.is_empty() {
                    // The claim may have committed unseen: give those jobs back, attempt
                    // refunded (fenced by the claim's token: nothing happens if it did not).
                    // The free slots stay held until then, as those rows may be running.
                    let mut held = Vec::new();
                    while held.len() < maybe_claimed.len() {
                        match sem.clone().try_acquire_owned() {
                            Ok(p) => held.push(p),
                            Err(_) => break,
                        }
                    }
                    jobs.spawn(recorder::release_unstarted(
                        shared.clone(),
                        queue.to_string(),
                        maybe_claimed,
                        reason.clone(),
                        pause.transient,
                        held,
                    ));
                }
                if pause.transient {
                    debug!(queue = %queue, error = %reason, "claim hit a transient error; retrying");
                } else {
                    warn!(queue = %queue, error = %reason, retry_in = ?pause.wait, "claim failed; retrying");
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

/// Waits until a job's permit comes back to `sem` (its outcome written). Meanwhile the wait
/// holds the permits free now (tokio's semaphore hands them to the waiter), published in
/// `holds` for the in-flight gauge; dropping the wait gives them back.
async fn a_release(sem: &Semaphore, holds: &AtomicUsize) {
    struct Published<'a>(&'a AtomicUsize);
    impl Drop for Published<'_> {
        fn drop(&mut self) {
            self.0.store(0, Ordering::Relaxed);
        }
    }
    let free = sem.available_permits();
    holds.store(free, Ordering::Relaxed);
    let _published = Published(holds);
    // At most `total`: the caller waits only while some permits are out.
    let n = u32::try_from(free + 1).expect("permits fit in u32");
    drop(sem.acquire_many(n).await.expect("semaphore never closed"));
}

/// Tests only: turns a committed claim into the error a lost answer would give.
#[cfg(test)]
fn lose_answer<'a>(
    shared: &Shared,
    result: Result<ClaimResult<'a>, ClaimError>,
) -> Result<ClaimResult<'a>, ClaimError> {
    use std::sync::atomic::Ordering;
    match result {
        Ok(c)
            if !c.claimed.jobs.is_empty()
                && shared
                    .lose_claim_answers
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok() =>
        {
            Err(ClaimError::Unknown {
                source: Some(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into())),
                maybe_claimed: c.claimed.jobs,
            })
        }
        other => other,
    }
}

/// How many jobs a claim may take: the slots free now (`base`), plus one per waiting success it
/// carries (taken once the claim is sure to run: after `GET_LOCK` in named-lock mode), at most
/// `max_batch`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ask {
    pub(crate) base: usize,
    pub(crate) max_batch: usize,
    pub(crate) carry_max: usize,
}

impl Ask {
    /// The claim's limit once it carries `carried` successes.
    pub(crate) fn want(&self, carried: usize) -> u32 {
        (self.base + carried).min(self.max_batch) as u32
    }
}

/// What a claim returned, and the successes it carried (`None`: it carried none, e.g. the
/// named lock was busy), of which `claimed.completed` were written.
pub(crate) struct ClaimResult<'a> {
    pub(crate) claimed: Claimed,
    pub(crate) carried: Option<Carried<'a>>,
}

/// One skip-locked claim on a pooled connection, carrying the queue's waiting successes. The
/// raw-transaction guard inside the store closes the connection instead of returning it if the
/// transaction could not be ended.
async fn claim_skip_locked<'a>(
    shared: &'a Shared,
    queue: &QueueName,
    ask: Ask,
    flow: Flow<'_>,
    after: Option<&Cursor>,
) -> Result<ClaimResult<'a>, ClaimError> {
    let mut conn = shared.pool.acquire().await?;
    let carried = shared.pending.take(queue, ask.carry_max);
    let want = ask.want(carried.len());
    let claimed = claim(
        &mut conn,
        ClaimRequest {
            queue,
            limit: want,
            worker: &shared.id,
            lease: shared.config.worker().lease_ttl,
            lock: ClaimLock::SkipLocked,
            complete: &carried.fences(),
            freed: &carried.keys(flow.key_limit),
            results: &carried.results(),
            flow,
            after,
        },
    )
    .await?;
    Ok(ClaimResult {
        claimed,
        carried: Some(carried),
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
    let fence = job.fence();
    let key = job.concurrency_key.clone().map(|k| (queue.clone(), k));
    let tokens = shared.in_flight.insert(fence, deadline, key);
    metrics::claimed(
        queue,
        &job.kind,
        Duration::from_micros(job.wait_us.max(0) as u64),
    );
    let span = crate::trace::job_span(
        job.id,
        &job.kind,
        queue.as_str(),
        job.attempt,
        shared.id.as_str(),
        job.trace.as_ref(),
    );
    jobs.spawn(executor::run(shared.clone(), queue.clone(), job, permit, tokens).instrument(span));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_lasts_while_claims_fill_their_batches_and_at_most_eight_in_a_row() {
        let at = |id| Cursor {
            priority: 0,
            run_at_us: 1_000,
            id,
        };
        // (cursor claims so far, the claim filled its batch, its last job) → (next, so far)
        let table = [
            (0, true, Some(at(7)), Some(at(7)), 1),
            (3, true, Some(at(9)), Some(at(9)), 4),
            (7, true, Some(at(9)), Some(at(9)), 8),
            (8, true, Some(at(9)), None, 0),
            (2, false, Some(at(9)), None, 0),
            (2, true, None, None, 0),
        ];
        let now = Instant::now();
        for (streak, full, last, want, want_streak) in table {
            let mut c = ClaimCursor {
                at: Some(at(1)),
                streak,
                since: now,
            };
            c.after_claim(now, full, last.clone());
            assert_eq!(
                (c.at, c.streak),
                (want, want_streak),
                "streak {streak}, full {full}, last {last:?}"
            );
        }
    }

    #[test]
    fn a_cursor_is_used_for_a_second_after_its_head_read() {
        let ms = Duration::from_millis;
        for (age, usable) in [
            (ms(0), true),
            (ms(999), true),
            (ms(1000), false),
            (ms(60_000), false),
        ] {
            // A run started by a head read at `t0`, one cursor claim in.
            let t0 = Instant::now();
            let mut c = ClaimCursor::new(t0);
            let last = Cursor {
                priority: 0,
                run_at_us: 1_000,
                id: 7,
            };
            c.after_claim(t0, true, Some(last.clone()));
            let expected = usable.then_some(&last);
            assert_eq!(c.for_claim(t0 + age), expected, "{age:?}");
        }
    }

    #[test]
    fn polls_back_off_only_once_the_queue_has_been_quiet() {
        let ms = Duration::from_millis;
        let interval = ms(100);
        // (last wait, jobs got, since a claim last found jobs) → next wait
        let table = [
            (ms(1), 3, ms(0), ms(1)),
            (ms(64), 1, ms(0), ms(1)),
            (ms(1), 0, ms(5), ms(1)),
            (ms(1), 0, ms(9), ms(1)),
            (ms(1), 0, ms(10), ms(2)),
            (ms(8), 0, ms(500), ms(16)),
            (ms(64), 0, ms(500), ms(100)),
            (ms(100), 0, ms(500), ms(100)),
        ];
        for (last, got, since, want) in table {
            assert_eq!(
                next_poll(last, got, since, interval),
                want,
                "last {last:?}, got {got}, since {since:?}"
            );
        }
    }
}
