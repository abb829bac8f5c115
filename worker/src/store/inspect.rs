//! Read-only views of jobs and their history, for the CLI, operators and tests.

use chrono::{DateTime, Utc};
use jobq_producer::{JobId, JobState};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};

use super::{opt_text, text};
use crate::transition::Event;

/// Parses a column holding one of our enums' database spellings.
fn parsed<T: std::str::FromStr<Err = String>>(r: &MySqlRow, col: &str) -> Result<T, sqlx::Error> {
    text(r, col)?
        .parse()
        .map_err(|e: String| sqlx::Error::ColumnDecode {
            index: col.to_owned(),
            source: e.into(),
        })
}

/// Count of jobs per (queue, state).
pub(crate) async fn counts(pool: &MySqlPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    // language=MySQL
    // An index-only scan of jobq_jobs_claim.
    let rows = sqlx::query(
        "SELECT queue, CAST(state AS CHAR) AS state, COUNT(*) AS n FROM jobq_jobs GROUP BY queue, state",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| Ok((text(&r, "queue")?, text(&r, "state")?, r.try_get("n")?)))
        .collect()
}

/// Per queue: completions in the last minute and age of the oldest available job (seconds).
pub(crate) async fn queue_activity(
    pool: &MySqlPool,
) -> Result<Vec<(String, i64, Option<f64>)>, sqlx::Error> {
    // language=MySQL
    // Both read jobq_jobs_claim by (queue, state); completions scan that queue's completed
    // entries, bounded by retention.
    let rows = sqlx::query(
        "SELECT q.queue, \
           (SELECT COUNT(*) FROM jobq_jobs c WHERE c.queue = q.queue AND c.state = 'completed' \
              AND c.finalized_at >= UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE) AS done_1m, \
           (SELECT TIMESTAMPDIFF(MICROSECOND, MIN(a.run_at), UTC_TIMESTAMP(6)) / 1e6 FROM jobq_jobs a \
              WHERE a.queue = q.queue AND a.state = 'available') AS oldest \
         FROM (SELECT DISTINCT queue FROM jobq_jobs) q",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                text(&r, "queue")?,
                r.try_get("done_1m")?,
                r.try_get::<Option<f64>, _>("oldest")?,
            ))
        })
        .collect()
}

/// One job as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// State.
    pub state: JobState,
    /// Priority (lower first).
    pub priority: i16,
    /// Earliest run time.
    pub run_at: DateTime<Utc>,
    /// Current or last attempt.
    pub attempt: u32,
    /// Allowed attempts.
    pub max_attempts: u32,
    /// Worker holding or last holding it.
    pub worker_id: Option<String>,
    /// Lease expiry while running.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Insert time.
    pub created_at: DateTime<Utc>,
    /// Last claim time.
    pub attempted_at: Option<DateTime<Utc>>,
    /// Time it reached a final state.
    pub finalized_at: Option<DateTime<Utc>>,
    /// Last error.
    pub last_error: Option<String>,
}

/// One state change.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TransitionRecord {
    /// Previous state; `None` for the insert.
    pub from: Option<JobState>,
    /// New state.
    pub to: JobState,
    /// Why.
    pub event: Event,
    /// Attempt number at the time.
    pub attempt: u32,
    /// Worker that made the change, if any.
    pub worker_id: Option<String>,
    /// Error recorded with it.
    pub error: Option<String>,
    /// When (UTC, database clock).
    pub at: DateTime<Utc>,
}

/// Reads one job.
pub(crate) async fn job(pool: &MySqlPool, id: JobId) -> Result<Option<JobRecord>, sqlx::Error> {
    // language=MySQL
    let row = sqlx::query(
        "SELECT id, queue, kind, CAST(payload AS CHAR) AS payload, CAST(state AS CHAR) AS state, priority, run_at, \
                attempt, max_attempts, worker_id, lease_expires_at, created_at, attempted_at, finalized_at, last_error \
         FROM jobq_jobs WHERE id = ?",
    )
    .bind(id.0)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let payload: String = text(&r, "payload")?;
    Ok(Some(JobRecord {
        id: JobId(r.try_get("id")?),
        queue: text(&r, "queue")?,
        kind: text(&r, "kind")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        state: parsed(&r, "state")?,
        priority: r.try_get("priority")?,
        run_at: r.try_get("run_at")?,
        attempt: r.try_get("attempt")?,
        max_attempts: r.try_get("max_attempts")?,
        worker_id: opt_text(&r, "worker_id")?,
        lease_expires_at: r.try_get("lease_expires_at")?,
        created_at: r.try_get("created_at")?,
        attempted_at: r.try_get("attempted_at")?,
        finalized_at: r.try_get("finalized_at")?,
        last_error: opt_text(&r, "last_error")?,
    }))
}

/// Reads a job's transitions, oldest first.
pub(crate) async fn history(
    pool: &MySqlPool,
    id: JobId,
) -> Result<Vec<TransitionRecord>, sqlx::Error> {
    // language=MySQL
    let rows = sqlx::query(
        "SELECT CAST(from_state AS CHAR) AS from_state, CAST(to_state AS CHAR) AS to_state, event, attempt, \
                worker_id, error, at \
         FROM jobq_transitions WHERE job_id = ? ORDER BY id",
    )
    .bind(id.0)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(TransitionRecord {
                from: match opt_text(&r, "from_state")? {
                    Some(s) => Some(s.parse().map_err(|e: String| sqlx::Error::ColumnDecode {
                        index: "from_state".into(),
                        source: e.into(),
                    })?),
                    None => None,
                },
                to: parsed(&r, "to_state")?,
                event: parsed(&r, "event")?,
                attempt: r.try_get("attempt")?,
                worker_id: opt_text(&r, "worker_id")?,
                error: opt_text(&r, "error")?,
                at: r.try_get("at")?,
            })
        })
        .collect()
}
