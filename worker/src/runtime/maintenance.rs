//! Maintenance, done by exactly one process at a time: the leader elected on the `jobq-lock`
//! lease `jobq:maintenance` in `jobq_locks` ([`LEADER_LOCK`], shown by `jobq lock status`). The
//! lease lasts 2 × `maintenance.interval` + 0.5 s (at least 1 s) and its watchdog renews it
//! every quarter of that, so a live leader keeps it and a dead one loses it within that; a
//! stopping leader releases it and another process takes over within a sixth of it. Every
//! interval the leader promotes due `scheduled` and `retryable` jobs, rescues expired leases,
//! promotes `waiting` jobs whose concurrency key has a free slot (after a rescue, or a worker
//! that died before doing it), and prunes finished jobs past their retention (with their
//! history) in short primary-key batches for up to half an interval, so pruning keeps pace with
//! thousands of completions a second; every few seconds it samples the depth gauges; about
//! every 30 intervals it prunes stale worker rows and `jobq_keys` rows no live job has used for
//! two days; about every 60 intervals (and on its first) it rolls the history partitions, if
//! history is partitioned (`crate::history`).
//!
//! When the lease is lost the leader's loop is dropped at its next await; a pass already
//! started runs to its end in its own task (never cut off mid-transaction), and a stopping
//! worker waits for it. A pass stops starting new batches after half an interval, and each
//! statement waits at most `database.lock_wait_timeout_secs` for a lock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq_config::MaintenanceSettings;
use sqlx::MySqlPool;

use jobq_lock::{LeaseLock, Term};
use jobq_producer::JobState;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::retry::DbRetry;
use super::Shared;
use crate::machine::attempt;
use crate::machine::flow::to_promote;
use crate::metrics;
use crate::store;

const BATCH: u32 = 1000;
/// History partitions are rolled every this many passes (a minute at the default interval).
const ROLL_EVERY: u64 = 60;
/// Jobs deleted per retention transaction: short, so a prune never holds many row locks.
const PRUNE_BATCH: u32 = 500;

/// Rows of `jobq_keys` the waiting-key sweep reads per pass (it goes on from there on the
/// next): a safety net for lost promotions, so a bounded cost per pass matters more than
/// finding every such key at once.
const KEYS_SWEPT: u32 = 1_000;
/// Blocked jobs the repair pass looks at per pass (it goes on from there on the next): a
/// safety net for lost releases, bounded per pass however many jobs are blocked.
const REPAIR_WINDOW: u32 = 1_000;
/// A `jobq_keys` row no live job uses is deleted after this long without a write (longer than
/// the longest rate period).
const KEY_IDLE: Duration = Duration::from_secs(2 * 86_400);

/// The lease lock the maintenance leader holds.
pub(crate) const LEADER_LOCK: &str = "jobq:maintenance";

/// The leader's lease for a maintenance `interval`: two intervals and half a second, and never
/// under a second, so a leader starved of CPU for a moment (a loaded 2-core machine running
/// passes every 100 ms) keeps it.
pub(crate) fn leader_lease(interval: Duration) -> Duration {
    (interval * 2 + Duration::from_millis(500)).max(Duration::from_secs(1))
}

/// Campaigns for maintenance leadership until `stop`, leading whenever elected; releases the
/// lease on the way out if it held it.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let m = shared.config.maintenance().clone();
    metrics::leader(&shared.server, false);
    if !m.lead {
        // `maintenance.lead = false`: this process only works jobs; the loop stays alive (it is
        // supervised like the others) until the stop.
        stop.cancelled().await;
        return;
    }
    let ttl = leader_lease(m.interval);
    let locks = LeaseLock::new(&shared.pool, shared.id.as_str()).ttl(ttl);
    metrics::leader(&shared.server, false);
    // Passes run in tasks of their own (see `lead`); the worker's stop waits for one still
    // running, so nothing of this worker writes after its `run` returned (a pass left running
    // could prune a job its caller has just changed).
    let passes = TaskTracker::new();
    // A term never ends on its own, so this returns only at `stop` (campaign errors are
    // retried inside).
    locks
        .lead(LEADER_LOCK, &stop, |term| {
            lead(shared.clone(), term, passes.clone())
        })
        .await;
    passes.close();
    passes.wait().await;
}

/// This process's leadership, while its loop runs: leaving (by stop or by a lost lease, when
/// the loop is dropped) zeroes the leader's gauges.
struct Leading {
    server: String,
    known_queues: BTreeSet<String>,
}

impl Drop for Leading {
    fn drop(&mut self) {
        metrics::clear_depth(&self.server, &self.known_queues);
        metrics::leader(&self.server, false);
        info!("maintenance leadership ended");
    }
}

/// One term of leadership: a maintenance pass every interval, until the term is dropped.
async fn lead(shared: Arc<Shared>, term: Term, passes: TaskTracker) {
    let m = shared.config.maintenance().clone();
    info!(worker = %shared.id, token = term.token(), "leading maintenance");
    let mut leading = Leading {
        server: shared.server.clone(),
        known_queues: BTreeSet::new(),
    };
    metrics::leader(&shared.server, true);
    let mut tick = tokio::time::interval(m.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut retry = DbRetry::new();
    loop {
        tick.tick().await;
        ticks += 1;
        // Depth gauges every few seconds (the query scans the claim index).
        if ticks % 5 == 1 {
            let alive = shared.config.worker().lease_ttl * 2;
            match store::sample_depth(&shared.pool, alive).await {
                Ok(s) => {
                    // The queues sampled now (with rows) and this process's own: a queue that
                    // no longer exists is no longer set, and its series are dropped once idle
                    // (see `metrics::gauge_idle_timeout`).
                    let known = &mut leading.known_queues;
                    *known = shared.slots.iter().map(|q| q.name.to_string()).collect();
                    metrics::depth(
                        &shared.server,
                        &s.depth,
                        &s.oldest,
                        known,
                        s.workers,
                        s.max_id,
                        s.oldest_blocked,
                    )
                }
                Err(e) => debug!(error = %e, "depth sample failed"),
            }
            match store::paused(&shared.pool).await {
                Ok(p) => {
                    let names: Vec<String> = p.into_iter().map(|(q, ..)| q).collect();
                    metrics::paused(&shared.server, &mut leading.known_queues, &names);
                }
                Err(e) => debug!(error = %e, "paused sample failed"),
            }
        }
        // The pass runs in a task of its own, so this term can be dropped wherever it stands
        // when the lease is lost or the worker stops, while the pass ends its short
        // transactions (tracked: the worker awaits it on stop). Each statement waits at most
        // database.lock_wait_timeout_secs for a lock, and the lease is renewed by its own
        // watchdog meanwhile, so a slow pass neither hangs nor costs the leadership. Its
        // transactions are `OwnedTx` (store::begin): each COMMIT or ROLLBACK has its budget,
        // and one abandoned by an error closes its connection rather than return to the pool
        // open.
        let task = passes.spawn({
            let shared = shared.clone();
            async move { pass(&shared, ticks).await }
        });
        let result = task.await.unwrap_or_else(|e| {
            warn!(error = %e, "maintenance pass panicked");
            Ok(())
        });
        match result {
            Ok(()) => retry.reset(),
            Err(e) => {
                if !retry.pause(&e).transient {
                    warn!(error = %e, "maintenance pass failed");
                }
            }
        }
    }
}

/// One maintenance pass (leader only). Each step is bounded per pass.
async fn pass(shared: &Shared, ticks: u64) -> Result<(), sqlx::Error> {
    for from in [JobState::Scheduled, JobState::Retryable] {
        for _ in 0..10 {
            if store::promote_due(&shared.pool, from, BATCH).await? < u64::from(BATCH) {
                break;
            }
        }
    }
    super::schedules::run_due(shared).await;
    let rescued = store::rescue_expired(
        &shared.pool,
        BATCH,
        |j| {
            attempt::rescue(
                j.attempt,
                j.max_attempts,
                j.worker.as_deref(),
                j.cancel_requested_by.as_deref(),
            )
        },
        jobq_producer::deps::RULES,
    )
    .await?;
    for (job, to) in rescued {
        let outcome = to.as_str();
        warn!(queue = %job.queue, kind = %job.kind, outcome, "rescued a job whose lease expired");
        metrics::rescued(job.queue, outcome);
    }
    // Concurrency keys with waiting jobs and a free slot: after a rescue, or when a worker
    // died between a job's end and its own promotion.
    let floor = shared.config.key_limit_ceiling_anywhere();
    let mut cursor = shared
        .key_sweep
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let due = store::keys_to_promote(&shared.pool, floor, KEYS_SWEPT, &mut cursor).await?;
    *shared.key_sweep.lock().unwrap_or_else(|p| p.into_inner()) = cursor;
    for (queue, keys) in due {
        let keys: Vec<String> = keys.into_iter().collect();
        for chunk in keys.chunks(100) {
            let chunk = chunk.iter().cloned().collect();
            let floor = shared.config.key_limit_ceiling(&queue);
            let n = store::promote_waiting(&shared.pool, &queue, &chunk, floor, to_promote).await?;
            if n > 0 {
                metrics::unblocked(&queue, n);
            }
        }
    }
    // Blocked jobs whose parents have all ended (a release lost to a bug or a hand edit): a
    // window of the blocked range per pass.
    let mut cursor = *shared
        .repair_cursor
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let repaired = store::repair(
        &shared.pool,
        &mut cursor,
        REPAIR_WINDOW,
        jobq_producer::deps::RULES,
    )
    .await;
    *shared
        .repair_cursor
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = cursor;
    match repaired? {
        0 => {}
        n => {
            warn!(jobs = n, "released blocked jobs whose parents had all ended (a release was lost: see jobq_workflow_repairs_total)");
            metrics::repaired(n);
        }
    }
    // History partitions: created ahead, dropped past retention, about every 60 passes (and
    // on the first: a new leader finds the layout). A failure (a long transaction holding the
    // table's metadata lock, say) is logged and tried again at the next roll.
    if ticks % ROLL_EVERY == 1 {
        let began = Instant::now();
        match crate::history::roll(&shared.pool, &shared.config).await {
            Ok(rolled) => {
                *shared
                    .history_by_time
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(rolled.by_time);
                if !rolled.plan.is_empty() {
                    info!(
                        added = rolled.plan.add.len(),
                        dropped = ?rolled.plan.drop,
                        ms = began.elapsed().as_millis() as u64,
                        "rolled the history partitions"
                    );
                }
                if let Some(e) = rolled.error {
                    warn!(error = %e, "rolling the history partitions failed; trying again later");
                }
                if let Some(n) = rolled.left_in_pmax {
                    warn!(
                        rows = n,
                        "history rows were written past the last partition (pmax) while no \
                         leader rolled; moving them copies them with writes blocked, so the \
                         leader leaves it: run `jobq migrate` with the workers stopped (until \
                         then new history goes to pmax, which retention never drops)"
                    );
                }
                // Every roll: the history grows without bound meanwhile.
                if rolled.by_time && !rolled.configured {
                    warn!(
                        "jobq_transitions is partitioned but this process's configuration sets \
                         no maintenance.history_partition width (unset or 0s): partitions are \
                         created ahead, none dropped, so history is kept forever; give the \
                         workers the same [maintenance] history keys as `jobq migrate`"
                    );
                }
                if ticks == 1 && !rolled.by_time && shared.config.history_partition().is_some() {
                    warn!(
                        "maintenance.history_partition is set but jobq_transitions is not \
                         partitioned: run `jobq migrate` with every worker stopped to convert it \
                         (until then history is deleted with its jobs)"
                    );
                }
            }
            Err(e) => warn!(error = %e, "reading the history layout failed; trying again later"),
        }
    }
    // Until the layout is known (the roll above failed to read it), retention reads it
    // itself: deleting history of a partitioned table would undo its retention.
    let known = *shared
        .history_by_time
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let by_time = match known {
        Some(b) => b,
        None => {
            let b = store::history_by_time(&shared.pool).await?;
            *shared
                .history_by_time
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(b);
            b
        }
    };
    let with_history = !by_time;
    let deadline = Instant::now() + shared.config.maintenance().interval / 2;
    // Where the last pass's retention scans stopped: each pass goes on from there.
    let mut cursors = *shared
        .prune_cursors
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let retained = retain(
        &shared.pool,
        shared.config.maintenance(),
        deadline,
        &mut cursors,
        with_history,
    )
    .await;
    *shared
        .prune_cursors
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = cursors;
    retained?;
    // Worker-row pruning about every 30 passes.
    if ticks % 30 == 1 {
        let stale = (shared.config.worker().lease_ttl * 10).max(Duration::from_secs(60));
        store::prune_workers(&shared.pool, stale).await?;
        store::prune_keys(&shared.pool, KEY_IDLE, BATCH).await?;
    }
    Ok(())
}

/// Deletes finished jobs past their retention, with their history, window by window
/// ([`PRUNE_BATCH`] rows read each, from `cursors`, one per final state) while windows find
/// ripe jobs, until a state's range ends or `deadline` passes. Returns how many were deleted.
async fn retain(
    pool: &MySqlPool,
    m: &MaintenanceSettings,
    deadline: Instant,
    cursors: &mut [store::PruneCursor; 3],
    with_history: bool,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    for (i, (state, age)) in [
        (JobState::Completed, m.completed_retention),
        (JobState::Discarded, m.failed_retention),
        (JobState::Cancelled, m.failed_retention),
    ]
    .into_iter()
    .enumerate()
    {
        if age.is_zero() {
            continue;
        }
        loop {
            let (n, more) =
                store::prune(pool, state, age, PRUNE_BATCH, &mut cursors[i], with_history).await?;
            deleted += n;
            // A window with nothing ripe ends this state's turn: the next pass goes on from
            // the cursor, so unripe jobs cost one window per pass, not the whole range.
            if !more || n == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(deleted);
            }
        }
    }
    // Workflows that ended longer ago than jobs are kept (the longer of the two retentions;
    // none while either keeps jobs forever) and have no job left.
    let age = m.completed_retention.max(m.failed_retention);
    if !m.completed_retention.is_zero() && !m.failed_retention.is_zero() {
        store::prune_workflows(pool, age, PRUNE_BATCH).await?;
    }
    Ok(deleted)
}

/// Deletes finished jobs past the configured retention (`[maintenance]`), with their history,
/// for up to `budget`; what the maintenance leader does every interval, for an operator or a
/// benchmark to run on demand. Returns how many jobs were deleted; call again while it returns
/// a positive count to prune everything due. (Each call scans from the start of the range and
/// stops at the first window with nothing ripe: for a range with unripe jobs in front, use
/// `prune_jobs`, which goes through the whole range once.)
pub async fn prune_finished(
    pool: &MySqlPool,
    config: &jobq_config::Config,
    budget: Duration,
) -> crate::Result<u64> {
    let mut cursors = Default::default();
    let with_history = !store::history_by_time(pool).await?;
    Ok(retain(
        pool,
        config.maintenance(),
        Instant::now() + budget,
        &mut cursors,
        with_history,
    )
    .await?)
}
