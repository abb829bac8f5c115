//! The worker process runtime.
//!
//! Per process:
//! - one **claimer** task per queue feeds that queue's local slots (a semaphore of
//!   `concurrency` permits): it waits for a free slot, claims up to all free slots in one
//!   transaction, and re-polls at once after a full batch or sleeps `poll_interval` when the
//!   queue had less than it asked for;
//! - each claimed job runs in its own task (panics caught, timeout applied, cancellable);
//! - one **completer** writes completions of handlers that did not open their transaction in
//!   batches (one UPDATE + one INSERT … SELECT per batch, still fenced per job);
//! - one **heartbeat** extends every running job's lease in one statement and beats the worker
//!   row; a job whose lease cannot be extended is cancelled and its outcome is not written;
//! - one **maintenance** task, active only while this process holds the `jobq_leader` lease:
//!   promotes due jobs, rescues expired leases, prunes old rows.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use jobq_config::{ClaimMode, QueueSettings, Settings};
use jobq_producer::{JobId, JobState};
use rand::Rng;
use sqlx::{MySqlConnection, MySqlPool};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::error::{is_transient, Result};
use crate::handler::{write_chain, JobContext, JobError};
use crate::metrics;
use crate::registry::Registry;
use crate::server;
use crate::store::{self, ClaimedJob, Fence, Token};
use crate::transition::{decide, Backoff, Decision, Event, Outcome};

/// Asks a running [`Worker`] to stop. Cheap to clone.
///
/// [`Shutdown::stop`] (first SIGTERM/SIGINT): stop claiming, let running jobs finish within
/// `shutdown_timeout`, then cancel the rest and put them back as `available` (a `released`
/// transition; the attempt does not count). [`Shutdown::kill`] (second signal): return at once;
/// running jobs stay `running` until their leases expire and they are rescued.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<watch::Sender<u8>>);

/// The receiving side of [`Shutdown`], given to [`Worker::run`].
#[derive(Clone, Debug)]
pub struct ShutdownSignal(watch::Receiver<u8>);

const RUN: u8 = 0;
const STOP: u8 = 1;
const KILL: u8 = 2;

impl Shutdown {
    /// A new handle and the signal to pass to [`Worker::run`].
    pub fn new() -> (Shutdown, ShutdownSignal) {
        let (tx, rx) = watch::channel(RUN);
        (Shutdown(Arc::new(tx)), ShutdownSignal(rx))
    }
    /// Graceful stop.
    pub fn stop(&self) {
        self.0.send_if_modified(|v| {
            let changed = *v < STOP;
            *v = (*v).max(STOP);
            changed
        });
    }
    /// Immediate stop.
    pub fn kill(&self) {
        self.0.send_replace(KILL);
    }
}

impl ShutdownSignal {
    async fn at_least(&mut self, level: u8) {
        let _ = self.0.wait_for(|v| *v >= level).await;
    }
}

/// How [`Worker::run`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every running job finished or was put back; the worker row was removed.
    Graceful,
    /// Stopped at once on [`Shutdown::kill`]; this many jobs were left to be rescued.
    Immediate(usize),
    /// `drain` mode: no runnable job was left.
    Drained,
}

struct InFlight {
    token: Token,
    cancel: CancellationToken,
    /// Local instant by which the lease surely expires unless extended.
    deadline: Instant,
}

struct Completion {
    fence: Fence,
    queue: Arc<str>,
    kind: String,
    run: Duration,
}

/// Everything the tasks of one worker share.
struct Shared {
    pool: MySqlPool,
    registry: Registry,
    settings: Settings,
    id: Arc<str>,
    kinds: Vec<String>,
    in_flight: Mutex<HashMap<u64, InFlight>>,
    completions: mpsc::UnboundedSender<Completion>,
    /// Fired when shutdown gives up waiting: running jobs are released.
    release: CancellationToken,
    /// Per queue: its slots, for the in-flight / free-slot gauges.
    slots: Mutex<Vec<QueueSlots>>,
}

/// A queue's name, its slot semaphore and the number of slots.
type QueueSlots = (Arc<str>, Arc<Semaphore>, u32);

impl Shared {
    fn forget(&self, fence: Fence) {
        let mut map = self.in_flight.lock().expect("in-flight map poisoned");
        if map.get(&fence.id).is_some_and(|f| f.token == fence.token) {
            map.remove(&fence.id);
        }
    }

    fn in_flight_count(&self) -> usize {
        self.in_flight.lock().expect("in-flight map poisoned").len()
    }
}

/// A worker process: claims jobs from its queues and runs them with the registered handlers.
pub struct Worker {
    pool: MySqlPool,
    registry: Registry,
    settings: Settings,
    id: String,
    drain: bool,
}

impl Worker {
    /// A worker over `pool` (see [`crate::connect`]) running `registry`'s handlers with
    /// `settings` (queues, concurrency, claim modes, timings).
    pub fn new(pool: MySqlPool, registry: Registry, settings: &Settings) -> Self {
        let host: String = hostname()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let suffix: u32 = rand::thread_rng().gen();
        let mut id = format!("{host}-{}-{suffix:08x}", std::process::id());
        if id.len() > 64 {
            id = id[id.len() - 64..].to_owned();
        }
        Worker {
            pool,
            registry,
            settings: settings.clone(),
            id,
            drain: false,
        }
    }

    /// Stop by itself once its queues hold no `available`, `running` or `retryable` job of a
    /// registered kind (`scheduled` jobs are not waited for). Default off.
    pub fn drain(mut self, drain: bool) -> Self {
        self.drain = drain;
        self
    }

    /// This process's worker id (`jobq_workers.id`, `jobq_jobs.worker_id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `signal` asks it to stop (or, with [`Worker::drain`], until no work is left).
    ///
    /// Fails before claiming anything if the server cannot run the configured claim modes or
    /// the schema is not migrated. Database errors while running are logged, counted and
    /// retried with backoff; they never end the run.
    pub async fn run(self, mut signal: ShutdownSignal) -> Result<Stopped> {
        let queues: Vec<QueueSettings> = self
            .settings
            .worker
            .queues
            .iter()
            .map(|q| self.settings.queue(q))
            .collect();
        let info = server::detect(&self.pool).await?;
        info.check(queues.iter().map(|q| q.claim_mode))?;
        server::check_migrated(&self.pool).await?;
        let queue_list = queues
            .iter()
            .map(|q| q.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        store::register_worker(
            &self.pool,
            &self.id,
            &hostname(),
            std::process::id(),
            &queue_list,
        )
        .await?;
        info!(worker = %self.id, server = %info.version_string, queues = %queue_list,
              kinds = ?self.registry.kinds(), "worker started");

        let (ctx, crx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pool: self.pool.clone(),
            kinds: self.registry.kinds(),
            registry: self.registry,
            settings: self.settings,
            id: Arc::from(self.id.as_str()),
            in_flight: Mutex::new(HashMap::new()),
            completions: ctx,
            release: CancellationToken::new(),
            slots: Mutex::new(Vec::new()),
        });

        let named: Vec<String> = queues
            .iter()
            .filter(|q| q.claim_mode == ClaimMode::NamedLock)
            .map(|q| q.name.clone())
            .collect();
        metrics::init_series(&shared.settings.worker.queues, &named, &shared.kinds);
        // Same-process producers wake the claimer of a queue at once.
        let wakers: Arc<HashMap<String, Arc<tokio::sync::Notify>>> = Arc::new(
            queues
                .iter()
                .map(|q| (q.name.clone(), Arc::new(tokio::sync::Notify::new())))
                .collect(),
        );
        let w = wakers.clone();
        let _wake_subscription = jobq_producer::subscribe(move |queue| {
            if let Some(n) = w.get(queue) {
                n.notify_one();
            }
        });
        let stop_claiming = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let jobs = TaskTracker::new();
        let claimers = TaskTracker::new();
        for q in &queues {
            let sem = Arc::new(Semaphore::new(q.concurrency as usize));
            shared.slots.lock().expect("slots poisoned").push((
                Arc::from(q.name.as_str()),
                sem.clone(),
                q.concurrency,
            ));
            claimers.spawn(claimer(
                shared.clone(),
                q.clone(),
                sem,
                stop_claiming.clone(),
                jobs.clone(),
                wakers[&q.name].clone(),
            ));
        }
        claimers.close();
        // The completer has its own stop: it must flush while the heartbeat still keeps the
        // leases of the jobs it is completing.
        let stop_completer = CancellationToken::new();
        let mut completer = tokio::spawn(completer(shared.clone(), crx, stop_completer.clone()));
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), stop_background.clone()));
        let maintenance = tokio::spawn(maintenance(shared.clone(), stop_background.clone()));

        let background = [
            completer.abort_handle(),
            heartbeat.abort_handle(),
            maintenance.abort_handle(),
        ];
        let kill = |shared: &Shared| {
            stop_claiming.cancel();
            kill(shared, &background)
        };
        // Phase 0: run until asked to stop, or drained.
        let drained = tokio::select! {
            _ = signal.at_least(STOP) => false,
            _ = wait_drained(&shared, &queues), if self.drain => true,
        };
        info!(worker = %shared.id, drained, "stopping: no new claims");
        // Phase 1: stop claiming; running jobs go on for up to shutdown_timeout.
        stop_claiming.cancel();
        jobs.close();
        let timeout = shared.settings.worker.shutdown_timeout;
        let finished = tokio::select! {
            _ = claimers.wait() => {
                tokio::select! {
                    _ = jobs.wait() => true,
                    _ = tokio::time::sleep(timeout) => false,
                    _ = signal.at_least(KILL) => return Ok(kill(&shared)),
                }
            }
            _ = signal.at_least(KILL) => return Ok(kill(&shared)),
        };
        if !finished {
            // Phase 2: cancel what is still running and put it back.
            let left = shared.in_flight_count();
            warn!(worker = %shared.id, jobs = left, "shutdown_timeout passed; cancelling and releasing running jobs");
            shared.release.cancel();
            tokio::select! {
                _ = jobs.wait() => {}
                _ = signal.at_least(KILL) => return Ok(kill(&shared)),
            }
        }
        // Flush completions (leases still beaten meanwhile), then stop the background tasks.
        stop_completer.cancel();
        tokio::select! {
            _ = &mut completer => {}
            _ = signal.at_least(KILL) => return Ok(kill(&shared)),
        }
        stop_background.cancel();
        let _ = heartbeat.await;
        let _ = maintenance.await;
        if let Err(e) = store::deregister_worker(&shared.pool, &shared.id).await {
            warn!(error = %e, "could not remove the worker row; maintenance prunes it later");
        }
        info!(worker = %shared.id, "worker stopped");
        Ok(if drained {
            Stopped::Drained
        } else {
            Stopped::Graceful
        })
    }
}

/// Immediate stop: background tasks aborted, every running handler cancelled (its future is
/// dropped and its transaction rolled back); those jobs stay `running` until their leases expire
/// and they are rescued.
fn kill(shared: &Shared, tasks: &[tokio::task::AbortHandle]) -> Stopped {
    for t in tasks {
        t.abort();
    }
    let left = {
        let map = shared.in_flight.lock().expect("in-flight map poisoned");
        for f in map.values() {
            f.cancel.cancel();
        }
        map.len()
    };
    warn!(worker = %shared.id, jobs = left, "stopped at once; running jobs will be rescued when their leases expire");
    Stopped::Immediate(left)
}

/// Resolves once nothing runnable is left for this worker.
async fn wait_drained(shared: &Shared, queues: &[QueueSettings]) {
    let names: Vec<String> = queues.iter().map(|q| q.name.clone()).collect();
    let every = queues
        .iter()
        .map(|q| q.poll_interval)
        .min()
        .unwrap_or(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if shared.in_flight_count() > 0 {
            continue;
        }
        match store::pending(&shared.pool, &names, &shared.kinds).await {
            Ok(0) => {
                // Re-check after one more poll: a claim may be committing right now.
                tokio::time::sleep(every).await;
                if shared.in_flight_count() == 0
                    && matches!(
                        store::pending(&shared.pool, &names, &shared.kinds).await,
                        Ok(0)
                    )
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "drain check failed"),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Exponential backoff for database outages: 100 ms doubling to 5 s, with jitter.
struct Retry {
    next: Duration,
}

impl Retry {
    fn new() -> Self {
        Retry {
            next: Duration::from_millis(100),
        }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    fn delay(&mut self) -> Duration {
        let d = self.next.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        self.next = (self.next * 2).min(Duration::from_secs(5));
        d
    }
}

// ---------------------------------------------------------------------------------------------
// Claiming

/// The named-lock mode's own session: the lock belongs to this connection, which is never
/// shared or returned to a pool, and is dropped (releasing everything) after any error.
struct LockSession {
    conn: MySqlConnection,
    name: String,
}

async fn claimer(
    shared: Arc<Shared>,
    q: QueueSettings,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
    jobs: TaskTracker,
    wake: Arc<tokio::sync::Notify>,
) {
    let queue: Arc<str> = Arc::from(q.name.as_str());
    // Adaptive polling: after a claim that found jobs but less than asked for, poll again after
    // MIN_POLL, doubling on every empty poll up to poll_interval. A busy queue is polled often
    // (low pickup latency), an idle one every poll_interval.
    const MIN_POLL: Duration = Duration::from_millis(1);
    let mut idle_wait = MIN_POLL;
    let mut lock: Option<LockSession> = None;
    let mut retry = Retry::new();
    let lease = shared.settings.worker.lease_ttl;
    let mut last_full = false;
    loop {
        // Wait for a free slot. Only this task takes permits, so every permit seen free below
        // stays free until taken here.
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            p = sem.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        // After a full batch the slots come back one by one as jobs end; claiming at the first
        // free slot would make every claim tiny. Give the jobs just started a few scheduler turns
        // to finish and return their slots (cheap: no sleep), so one round trip serves many.
        if last_full {
            let target = (q.concurrency.min(q.max_batch) as usize).div_ceil(2);
            for _ in 0..16 {
                if 1 + sem.available_permits() >= target {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let want = (1 + sem.available_permits()).min(q.max_batch as usize) as u32;
        let started = Instant::now();
        let result = match q.claim_mode {
            ClaimMode::SkipLocked => match shared.pool.acquire().await {
                Ok(mut conn) => store::claim(
                    &mut conn,
                    &queue,
                    &shared.kinds,
                    want,
                    &shared.id,
                    lease,
                    true,
                    None,
                )
                .await
                .map(|(jobs, _)| jobs),
                Err(e) => Err(e),
            },
            ClaimMode::NamedLock => claim_named(&shared, &queue, &mut lock, want).await,
        };
        match result {
            Ok(claimed) => {
                retry.reset();
                let got = claimed.len();
                last_full = got as u32 == want;
                metrics::claim(&queue, started.elapsed(), got);
                let mut first = Some(first);
                for job in claimed {
                    let permit = first.take().unwrap_or_else(|| {
                        sem.clone()
                            .try_acquire_owned()
                            .expect("free slots only shrink when this claimer takes them")
                    });
                    spawn_job(&shared, &jobs, queue.clone(), job, permit, started + lease);
                }
                drop(first);
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
                        _ = stop.cancelled() => break,
                    }
                }
            }
            Err(e) => {
                drop(first);
                if is_transient(&e) {
                    metrics::db_error(&e, true);
                    debug!(queue = %queue, error = %e, "claim hit a transient error; retrying");
                    let pause = Duration::from_millis(rand::thread_rng().gen_range(1..20));
                    tokio::time::sleep(pause).await;
                } else {
                    metrics::db_error(&e, false);
                    let wait = retry.delay();
                    warn!(queue = %queue, error = %e, retry_in = ?wait, "claim failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => break,
                    }
                }
            }
        }
    }
    if let Some(mut s) = lock.take() {
        let _ = store::release_lock(&mut s.conn, &s.name).await;
    }
    debug!(queue = %queue, "claimer stopped");
}

/// Named-lock claim: `GET_LOCK` on the dedicated session, the claim transaction (committed or
/// rolled back inside [`store::claim`]), then `RELEASE_LOCK`. Commit strictly before release:
/// releasing first lets the next claimer read rows this claim has not yet committed as taken.
async fn claim_named(
    shared: &Shared,
    queue: &str,
    lock: &mut Option<LockSession>,
    want: u32,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    if lock.is_none() {
        let mut conn = server::dedicated(
            &shared.pool,
            shared.settings.database.lock_wait_timeout_secs,
        )
        .await?;
        let name = store::lock_name(&mut conn, queue).await?;
        *lock = Some(LockSession { conn, name });
    }
    let s = lock.as_mut().expect("just set");
    let waited = Instant::now();
    let got = match store::get_lock(&mut s.conn, &s.name, shared.settings.worker.lock_timeout).await
    {
        Ok(g) => g,
        Err(e) => {
            *lock = None;
            return Err(e);
        }
    };
    ::metrics::histogram!(metrics::LOCK_WAIT_SECONDS, "queue" => queue.to_owned())
        .record(waited.elapsed().as_secs_f64());
    match got {
        Some(true) => {}
        Some(false) => {
            ::metrics::counter!(metrics::LOCK_TIMEOUTS, "queue" => queue.to_owned()).increment(1);
            debug!(queue, "named lock busy; backing off");
            return Ok(Vec::new());
        }
        None => {
            *lock = None;
            return Err(sqlx::Error::Protocol(
                "GET_LOCK returned NULL (killed or deadlocked)".into(),
            ));
        }
    }
    // The release rides in the claim's last round trip, after its COMMIT.
    let LockSession { conn, name } = s;
    match store::claim(
        conn,
        queue,
        &shared.kinds,
        want,
        &shared.id,
        shared.settings.worker.lease_ttl,
        false,
        Some(name.as_str()),
    )
    .await
    {
        Ok((jobs, true)) => Ok(jobs),
        Ok((jobs, false)) => {
            warn!(queue, "RELEASE_LOCK did not release; dropping the session");
            *lock = None;
            Ok(jobs)
        }
        Err(e) => {
            // Dropping the session rolls back and releases whatever it held.
            *lock = None;
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running one job

fn spawn_job(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    queue: Arc<str>,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) {
    let cancel = CancellationToken::new();
    shared
        .in_flight
        .lock()
        .expect("in-flight map poisoned")
        .insert(
            job.id,
            InFlight {
                token: job.token,
                cancel: cancel.clone(),
                deadline,
            },
        );
    metrics::claimed(
        &queue,
        &job.kind,
        Duration::from_micros(job.wait_us.max(0) as u64),
    );
    let span = info_span!("job", job_id = job.id, kind = %job.kind, queue = %queue, attempt = job.attempt, worker = %shared.id);
    jobs.spawn(run_job(shared.clone(), queue, job, permit, cancel).instrument(span));
}

async fn run_job(
    shared: Arc<Shared>,
    queue: Arc<str>,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
) {
    let fence = Fence {
        id: job.id,
        token: job.token,
    };
    let policy = shared.settings.run_policy(&queue, &job.kind);
    let ctx = JobContext {
        id: JobId(job.id),
        queue: queue.clone(),
        kind: Arc::from(job.kind.as_str()),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        worker_id: shared.id.clone(),
        pool: shared.pool.clone(),
        tx: Default::default(),
        cancel: cancel.clone(),
    };
    let slot = ctx.tx.clone();
    let started = Instant::now();
    let outcome = match shared.registry.get(&job.kind) {
        // Claims filter on registered kinds, so this is only reachable if the registry changed.
        None => Some(Outcome::Error {
            message: format!("no handler registered for kind {}", job.kind),
            retry_after: None,
        }),
        Some(handler) => match handler.start(&job.payload, ctx) {
            Err(e) => Some(Outcome::Undecodable(e.to_string())),
            Ok(fut) => {
                let guarded = AssertUnwindSafe(fut).catch_unwind();
                tokio::select! {
                    r = with_timeout(policy.job_timeout, guarded) => Some(match r {
                        None => Outcome::Timeout(policy.job_timeout.unwrap_or_default()),
                        Some(Err(panic)) => Outcome::Panic(panic_message(panic.as_ref())),
                        Some(Ok(Ok(()))) => Outcome::Success,
                        Some(Ok(Err(e))) => outcome_of(e),
                    }),
                    _ = cancel.cancelled() => None,
                    _ = lease_expiry(&shared, fence) => None,
                    _ = shared.release.cancelled() => Some(Outcome::Released),
                }
            }
        },
    };
    let run = started.elapsed();
    let Some(outcome) = outcome else {
        // The lease could not be extended: someone else may own the job now. Write nothing.
        drop(slot.lock().await.take());
        warn!("lease lost; handler cancelled, outcome not written");
        metrics::finished(&queue, &job.kind, "lease_lost", Some(run));
        return;
    };
    let mut tx = slot.lock().await.take();
    // Set when a completion in the handler's transaction failed: the handler's writes are gone,
    // so the job goes back (attempt refunded) instead of waiting for a rescue that would count it.
    let mut put_back: Option<Decision> = None;
    if outcome == Outcome::Success {
        match tx.take() {
            None => {
                // Batched by the completer; the slot frees now, the lease stays ours until written.
                drop(permit);
                let _ = shared.completions.send(Completion {
                    fence,
                    queue,
                    kind: job.kind,
                    run,
                });
                return;
            }
            Some(mut tx) => {
                let d = decide(
                    &outcome,
                    job.attempt,
                    job.max_attempts,
                    backoff_of(&policy),
                    1.0,
                );
                let written = match store::finish(&mut tx, fence, job.attempt, &shared.id, &d).await
                {
                    Ok(true) => tx.commit().await.map(|_| true),
                    Ok(false) => tx.rollback().await.map(|_| false),
                    Err(e) => {
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                };
                match written {
                    Ok(true) => metrics::finished(&queue, &job.kind, "completed", Some(run)),
                    Ok(false) => {
                        warn!("job was taken back before it completed; its writes were rolled back")
                    }
                    Err(e) => {
                        metrics::db_error(&e, false);
                        error!(error = %e, "completion failed; the handler's writes were rolled back; putting the job back");
                        put_back = Some(Decision {
                            to: JobState::Available,
                            event: Event::Released,
                            delay: None,
                            error: Some(format!("completion failed and was rolled back: {e}")),
                            refund_attempt: true,
                        });
                    }
                }
                if put_back.is_none() {
                    shared.forget(fence);
                    drop(permit);
                    return;
                }
            }
        }
    }
    // Any other outcome: the handler's transaction (if any) is rolled back.
    if let Some(tx) = tx.take() {
        let _ = tx.rollback().await;
    }
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    let d = match put_back {
        Some(d) => d,
        None => decide(
            &outcome,
            job.attempt,
            job.max_attempts,
            backoff_of(&policy),
            jitter,
        ),
    };
    let label = match d.to {
        JobState::Retryable => "retried",
        JobState::Discarded => "discarded",
        JobState::Cancelled => "cancelled",
        JobState::Scheduled => "snoozed",
        JobState::Available => "released",
        _ => "completed",
    };
    match &outcome {
        Outcome::Released => info!("released at shutdown"),
        Outcome::Snooze(_) => debug!(state = %d.to, "snoozed"),
        _ => warn!(state = %d.to, error = d.error.as_deref().unwrap_or(""), "attempt failed"),
    }
    let mut retry = Retry::new();
    loop {
        match store::finish_tx(&shared.pool, fence, job.attempt, &shared.id, &d).await {
            Ok(true) => {
                metrics::finished(&queue, &job.kind, label, Some(run));
                break;
            }
            Ok(false) => {
                warn!("job was taken back before its outcome was written; nothing written");
                break;
            }
            Err(e) if is_transient(&e) => {
                metrics::db_error(&e, true);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                metrics::db_error(&e, false);
                let wait = retry.delay();
                warn!(error = %e, retry_in = ?wait, "could not record the outcome; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Lease lost meanwhile: the job is someone else's now.
                    _ = cancel.cancelled() => break,
                }
            }
        }
    }
    shared.forget(fence);
    drop(permit);
}

/// Resolves when this job's local lease deadline passes without the heartbeat having pushed it
/// (or when the job is no longer ours). A timer, not the heartbeat, enforces it: a heartbeat
/// stuck on a stalled database must not let a handler run past its lease.
async fn lease_expiry(shared: &Shared, fence: Fence) {
    loop {
        let deadline = {
            let map = shared.in_flight.lock().expect("in-flight map poisoned");
            match map.get(&fence.id) {
                Some(f) if f.token == fence.token => f.deadline,
                _ => return,
            }
        };
        if Instant::now() >= deadline {
            warn!(
                job_id = fence.id,
                "lease expired before it could be extended; cancelling the handler"
            );
            shared.forget(fence);
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

async fn with_timeout<F: Future>(timeout: Option<Duration>, fut: F) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn backoff_of(p: &jobq_config::RunPolicy) -> Backoff {
    Backoff {
        base: p.backoff_base,
        max: p.backoff_max,
    }
}

fn outcome_of(e: JobError) -> Outcome {
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

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks

async fn completer(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Completion>,
    stop: CancellationToken,
) {
    let max = shared.settings.worker.completion_batch as usize;
    let mut batch: Vec<Completion> = Vec::with_capacity(max);
    loop {
        if batch.is_empty() {
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => batch.push(c),
                    None => return,
                },
                // Every job task has ended before `stop`: drain what is queued, then leave.
                _ = stop.cancelled() => match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => return,
                },
            }
        }
        // Gather what is queued; give jobs that are finishing a few scheduler turns to join, so
        // one commit serves many completions.
        for _ in 0..8 {
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            if batch.len() >= max {
                break;
            }
            tokio::task::yield_now().await;
        }
        let fences: Vec<Fence> = batch.iter().map(|c| c.fence).collect();
        let mut retry = Retry::new();
        loop {
            match store::complete_batch(&shared.pool, &fences).await {
                Ok(done) => {
                    if done < fences.len() as u64 {
                        warn!(
                            stale = fences.len() as u64 - done,
                            "completions for jobs taken back meanwhile were not written"
                        );
                    }
                    for c in &batch {
                        metrics::finished(&c.queue, &c.kind, "completed", Some(c.run));
                    }
                    break;
                }
                Err(e) if is_transient(&e) => {
                    metrics::db_error(&e, true);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => {
                    metrics::db_error(&e, false);
                    let wait = retry.delay();
                    warn!(error = %e, jobs = fences.len(), retry_in = ?wait, "could not write completions; retrying");
                    tokio::time::sleep(wait).await;
                    // Jobs whose lease was lost meanwhile are no longer ours to complete.
                    let map = shared.in_flight.lock().expect("in-flight map poisoned");
                    batch.retain(|c| {
                        map.get(&c.fence.id)
                            .is_some_and(|f| f.token == c.fence.token)
                    });
                    drop(map);
                    if batch.is_empty() {
                        break;
                    }
                }
            }
        }
        for c in batch.drain(..) {
            shared.forget(c.fence);
        }
    }
}

async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.settings.worker.heartbeat_interval;
    let lease = shared.settings.worker.lease_ttl;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for (queue, sem, total) in shared.slots.lock().expect("slots poisoned").iter() {
            let free = sem.available_permits();
            metrics::slots(queue, *total as usize - free, free);
        }
        let fences: Vec<Fence> = {
            let map = shared.in_flight.lock().expect("in-flight map poisoned");
            map.iter()
                .map(|(id, f)| Fence {
                    id: *id,
                    token: f.token,
                })
                .collect()
        };
        let sent = Instant::now();
        // Bounded: a stalled database must not hold the heartbeat (the job tasks' own lease
        // timers stop their handlers in any case).
        let result = tokio::time::timeout(lease / 2, async {
            let lost = if fences.is_empty() {
                Vec::new()
            } else {
                store::extend_leases(&shared.pool, &fences, lease).await?
            };
            if !store::beat_worker(&shared.pool, &shared.id).await? {
                let queues = shared.settings.worker.queues.join(",");
                store::register_worker(
                    &shared.pool,
                    &shared.id,
                    &hostname(),
                    std::process::id(),
                    &queues,
                )
                .await?;
            }
            Ok::<_, sqlx::Error>(lost)
        })
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::Protocol("heartbeat timed out".into())));
        let now = Instant::now();
        let mut map = shared.in_flight.lock().expect("in-flight map poisoned");
        match result {
            Ok(lost) => {
                ::metrics::counter!(metrics::HEARTBEATS, "outcome" => "ok").increment(1);
                for f in &fences {
                    if let Some(entry) = map.get_mut(&f.id) {
                        if entry.token == f.token {
                            entry.deadline = sent + lease;
                        }
                    }
                }
                for f in lost {
                    if let Some(entry) = map.get(&f.id).filter(|e| e.token == f.token) {
                        warn!(job_id = f.id, "lease lost (job rescued or finished elsewhere); cancelling its handler");
                        entry.cancel.cancel();
                        map.remove(&f.id);
                    }
                }
            }
            Err(e) => {
                ::metrics::counter!(metrics::HEARTBEATS, "outcome" => "error").increment(1);
                metrics::db_error(&e, false);
                warn!(error = %e, "heartbeat failed; leases not extended");
            }
        }
        // A lease that could not be extended in time is gone: stop those handlers before anyone
        // else may rescue and run the job (the local deadline is never later than the server's).
        let expired: Vec<u64> = map
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(entry) = map.remove(&id) {
                warn!(
                    job_id = id,
                    "lease expired before it could be extended; cancelling its handler"
                );
                entry.cancel.cancel();
            }
        }
    }
}

async fn maintenance(shared: Arc<Shared>, stop: CancellationToken) {
    let m = shared.settings.maintenance.clone();
    // The lease outlives two ticks, so a live leader keeps it; a dead one loses it within that.
    let ttl = m.interval * 2 + Duration::from_millis(500);
    let mut tick = tokio::time::interval(m.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    let mut ticks: u64 = 0;
    let mut known_queues = std::collections::BTreeSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        ticks += 1;
        match store::lead(&shared.pool, &shared.id, ttl).await {
            Ok(now_leading) => {
                if now_leading != leading {
                    info!(worker = %shared.id, leading = now_leading, "maintenance leadership changed");
                    if !now_leading {
                        metrics::clear_depth(&known_queues);
                    }
                }
                leading = now_leading;
                ::metrics::gauge!(metrics::LEADER).set(if leading { 1.0 } else { 0.0 });
            }
            Err(e) => {
                debug!(error = %e, "leader election failed");
                leading = false;
            }
        }
        if !leading {
            continue;
        }
        // Depth gauges every few seconds (the query scans the claim index).
        if ticks % 5 == 1 {
            match store::sample_depth(&shared.pool, shared.settings.worker.lease_ttl * 2).await {
                Ok((depth, oldest, workers, max_id)) => {
                    metrics::depth(&depth, &oldest, &mut known_queues, workers, max_id)
                }
                Err(e) => debug!(error = %e, "depth sample failed"),
            }
        }
        if let Err(e) = maintain(&shared, ticks).await {
            if is_transient(&e) {
                metrics::db_error(&e, true);
            } else {
                metrics::db_error(&e, false);
                warn!(error = %e, "maintenance pass failed");
            }
        }
    }
    if leading {
        let _ = store::resign(&shared.pool, &shared.id).await;
        metrics::clear_depth(&known_queues);
        ::metrics::gauge!(metrics::LEADER).set(0.0);
    }
}

/// One maintenance pass (leader only). Each step is bounded per pass.
async fn maintain(shared: &Shared, ticks: u64) -> Result<(), sqlx::Error> {
    const BATCH: u32 = 1000;
    for from in [JobState::Scheduled, JobState::Retryable] {
        for _ in 0..10 {
            if store::promote_due(&shared.pool, from, BATCH).await? < u64::from(BATCH) {
                break;
            }
        }
    }
    for r in store::rescue_expired(&shared.pool, BATCH).await? {
        let outcome = if r.discarded {
            "discarded"
        } else {
            "available"
        };
        warn!(queue = %r.queue, kind = %r.kind, outcome, "rescued a job whose lease expired");
        ::metrics::counter!(metrics::RESCUED, "queue" => r.queue, "outcome" => outcome)
            .increment(1);
    }
    // Retention and worker-row pruning about every 30 passes.
    if ticks % 30 == 1 {
        let m = &shared.settings.maintenance;
        if !m.completed_retention.is_zero() {
            store::prune(
                &shared.pool,
                JobState::Completed,
                m.completed_retention,
                BATCH * 5,
            )
            .await?;
        }
        if !m.failed_retention.is_zero() {
            store::prune(
                &shared.pool,
                JobState::Discarded,
                m.failed_retention,
                BATCH * 5,
            )
            .await?;
            store::prune(
                &shared.pool,
                JobState::Cancelled,
                m.failed_retention,
                BATCH * 5,
            )
            .await?;
        }
        let stale = (shared.settings.worker.lease_ttl * 10).max(Duration::from_secs(60));
        store::prune_workers(&shared.pool, stale).await?;
    }
    Ok(())
}
