//! Read-only views for the CLI and tests.

use std::collections::BTreeMap;

use jobq_producer::{JobId, JobState};
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

/// Reads [`Stats`].
pub async fn stats(pool: &MySqlPool) -> Result<Stats> {
    let mut out = Stats {
        queues: BTreeMap::new(),
        totals: zeroes(),
    };
    for (queue, state, n) in store::counts(pool).await? {
        let q = out.queues.entry(queue).or_insert_with(|| QueueStats {
            states: zeroes(),
            ..Default::default()
        });
        *q.states.entry(state.clone()).or_default() += n;
        *out.totals.entry(state).or_default() += n;
    }
    for (queue, done, oldest) in store::queue_activity(pool).await? {
        if let Some(q) = out.queues.get_mut(&queue) {
            q.completed_last_minute = done;
            q.oldest_available_seconds = oldest;
        }
    }
    Ok(out)
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
