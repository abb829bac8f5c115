//! Views for the CLI and tests, and the queue controls (pause, resume).

use std::collections::BTreeMap;

use jobq_producer::{JobId, JobState, QueueName};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::error::{Error, Result};
use crate::store::{self, JobRecord, TransitionRecord};

/// One queue's numbers.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QueueStats {
    /// Jobs per state (every state present, zero included).
    pub states: BTreeMap<String, i64>,
    /// Jobs completed in the last minute.
    pub completed_last_minute: i64,
    /// Seconds since the oldest `available` job became due; `None` when none is available.
    pub oldest_available_seconds: Option<f64>,
    /// When the queue was paused (RFC 3339, UTC); `None` while it is active.
    pub paused_since: Option<String>,
    /// Who paused it, as recorded.
    pub paused_by: Option<String>,
}

/// Counts per queue and state, and totals per state across queues.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Per queue.
    pub queues: BTreeMap<String, QueueStats>,
    /// Per state, across queues (every state present).
    pub totals: BTreeMap<String, i64>,
}

fn zeroes() -> BTreeMap<String, i64> {
    JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect()
}

/// `queue`'s entry in `out`, created with every state at zero.
fn queue_entry(out: &mut Stats, queue: String) -> &mut QueueStats {
    out.queues.entry(queue).or_insert_with(|| QueueStats {
        states: zeroes(),
        ..Default::default()
    })
}

/// Reads [`Stats`].
pub async fn stats(pool: &MySqlPool) -> Result<Stats> {
    let mut out = Stats {
        queues: BTreeMap::new(),
        totals: zeroes(),
    };
    for (queue, state, n) in store::counts(pool).await? {
        let q = queue_entry(&mut out, queue);
        *q.states.entry(state.clone()).or_default() += n;
        *out.totals.entry(state).or_default() += n;
    }
    for (queue, since, by) in store::paused(pool).await? {
        let q = queue_entry(&mut out, queue);
        q.paused_since = Some(since);
        q.paused_by = by;
    }
    for (queue, done, oldest) in store::queue_activity(pool).await? {
        if let Some(q) = out.queues.get_mut(&queue) {
            q.completed_last_minute = done;
            q.oldest_available_seconds = oldest;
        }
    }
    Ok(out)
}

/// Pauses `queue` across all workers: no claim takes from it (within one poll interval of
/// this call), jobs already running finish, producers still enqueue. Kept in the database, so
/// it outlives restarts and applies to workers started later. `by` is recorded (e.g.
/// `user@host`). Returns false if the queue was already paused.
pub async fn pause_queue(pool: &MySqlPool, queue: &QueueName, by: &str) -> Result<bool> {
    let by: String = by.chars().take(128).collect();
    Ok(store::pause(pool, queue.as_str(), &by).await?)
}

/// Resumes a paused `queue`. Returns false if it was not paused.
pub async fn resume_queue(pool: &MySqlPool, queue: &QueueName) -> Result<bool> {
    Ok(store::resume(pool, queue.as_str()).await?)
}

/// A job and its whole transition history.
pub async fn job_with_history(
    pool: &MySqlPool,
    id: JobId,
) -> Result<(JobRecord, Vec<TransitionRecord>)> {
    let job = store::job(pool, id).await?.ok_or(Error::NoSuchJob(id))?;
    let history = store::history(pool, id).await?;
    Ok((job, history))
}

/// Lists jobs, newest first, by `filter` (see [`crate::JobFilter`]).
pub async fn list_jobs(
    pool: &MySqlPool,
    filter: &store::JobFilter,
) -> Result<Vec<store::JobSummary>> {
    Ok(store::list_jobs(pool, filter).await?)
}

/// The registered worker processes, with their running jobs.
pub async fn workers(pool: &MySqlPool) -> Result<Vec<store::WorkerInfo>> {
    Ok(store::workers(pool).await?)
}

/// Deletes jobs in final state `state` finalized more than `older_than` ago, with their
/// history, in short batches. Returns how many were deleted.
pub async fn prune_jobs(
    pool: &MySqlPool,
    state: JobState,
    older_than: std::time::Duration,
) -> Result<u64> {
    if !state.is_final() {
        return Err(Error::Invalid(format!(
            "only finished jobs are pruned (completed, discarded, cancelled), not {state}"
        )));
    }
    let mut total = 0;
    loop {
        let n = store::prune(pool, state, older_than, 500).await?;
        total += n;
        if n < 500 {
            return Ok(total);
        }
    }
}
