//! Read-only views of jobs and their history, for the CLI, operators and tests.

use chrono::{DateTime, Utc};
use jobq_producer::{JobId, JobState};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};

use super::{opt_text, text};
use crate::model::Event;

/// Parses a column holding one of our enums' database spellings.
pub(super) fn parsed<T: std::str::FromStr<Err = String>>(
    r: &MySqlRow,
    col: &str,
) -> Result<T, sqlx::Error> {
    text(r, col)?
        .parse()
        .map_err(|e: String| sqlx::Error::ColumnDecode {
            index: col.to_owned(),
            source: e.into(),
        })
}

/// Counts above this are estimates: an exact count reads at most this many index entries.
pub(crate) const EXACT_UP_TO: i64 = 10_000;

/// Jobs of `queue` in `state`, and whether the number is an estimate. Exact up to
/// `exact_up_to`, reading at most that many entries of `jobq_jobs_claim`'s (queue, state)
/// range; beyond, the optimizer's estimate of the range's size (its index dives: a few page
/// reads whatever the size), never below `exact_up_to + 1`. So a count costs the same with ten
/// million finished jobs as with ten thousand.
pub(crate) async fn count_in_state(
    pool: &MySqlPool,
    queue: &str,
    state: JobState,
    exact_up_to: i64,
) -> Result<(i64, bool), sqlx::Error> {
    // language=MySQL
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT 1 FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
         WHERE queue = ? AND state = ? LIMIT ?) c",
    )
    .bind(queue)
    .bind(state.as_str())
    .bind(exact_up_to + 1)
    .fetch_one(pool)
    .await?;
    if n <= exact_up_to {
        return Ok((n, false));
    }
    // A queue name written by plain SQL that jobq's rules refuse cannot be spliced: its count
    // stays at the bound, still marked as an estimate.
    let Ok(q) = jobq_producer::QueueName::new(queue) else {
        return Ok((n, true));
    };
    // language=MySQL
    // EXPLAIN, not prepared (not every server prepares it): the names are validated and quoted.
    let plan = sqlx::raw_sql(&format!(
        "EXPLAIN SELECT 1 FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
         WHERE queue = {} AND state = '{}'",
        super::sql::lit(&q),
        state.as_str()
    ))
    .fetch_all(pool)
    .await?;
    // The `rows` column's type differs between servers: read it as whichever decodes.
    let estimate = plan
        .first()
        .and_then(|r| {
            let unsigned = || r.try_get::<Option<u64>, _>("rows").ok().flatten();
            let signed = || r.try_get::<Option<i64>, _>("rows").ok().flatten();
            let text = || {
                r.try_get::<Option<String>, _>("rows")
                    .ok()
                    .flatten()
                    .and_then(|t| t.trim().parse::<i64>().ok())
            };
            unsigned()
                .and_then(|v| i64::try_from(v).ok())
                .or_else(signed)
                .or_else(text)
        })
        .unwrap_or(n);
    Ok((estimate.max(n), true))
}

/// The newest history rows read to estimate completions per minute.
const RATE_SCAN_ROWS: u32 = 50_000;

/// Per queue: completions per minute and age of the oldest available job (seconds).
///
/// Completions come from the newest end of `jobq_transitions` (its primary key), never from
/// a scan of the finished jobs: the `completed` rows of the last minute among the newest
/// [`RATE_SCAN_ROWS`] (a range of the primary key), each job's queue by its primary key. When those rows span less than
/// a minute (a busy server), the count is scaled to a minute: an estimate, at a bounded cost.
pub(crate) async fn queue_activity(
    pool: &MySqlPool,
) -> Result<Vec<(String, i64, Option<f64>)>, sqlx::Error> {
    let mut rows = Vec::new();
    for queue in queues_with_jobs(pool).await? {
        let oldest = oldest_available(pool, &queue).await?;
        rows.push((queue, oldest));
    }
    let floor = history_floor(pool, RATE_SCAN_ROWS).await?;
    let recent = "jobq_transitions n";
    let last_minute = "n.id > ? AND n.at >= UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE";
    // language=MySQL
    // How far back the rows above the floor reach (database clock).
    let span_us: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(n.at), UTC_TIMESTAMP(6)) FROM {recent} WHERE n.id > ?"
    ))
    .bind(floor)
    .fetch_one(pool)
    .await?;
    // Older rows exist and the ones read all fall within the minute: scale what they hold to
    // a whole minute (by time, not row count: ids have gaps).
    let scale = match span_us {
        Some(us) if floor > 0 && us > 0 && us < 60_000_000 => 60e6 / us as f64,
        _ => 1.0,
    };
    // language=MySQL
    let done: Vec<(Vec<u8>, i64)> = sqlx::query_as(&format!(
        "SELECT j.queue, COUNT(*) FROM {recent} JOIN jobq_jobs j ON j.id = n.job_id \
         WHERE {last_minute} AND n.event = 'completed' GROUP BY j.queue"
    ))
    .bind(floor)
    .fetch_all(pool)
    .await?;
    let done: std::collections::HashMap<String, i64> = done
        .into_iter()
        .map(|(q, n)| {
            (
                String::from_utf8_lossy(&q).into_owned(),
                (n as f64 * scale).round() as i64,
            )
        })
        .collect();
    Ok(rows
        .into_iter()
        .map(|(queue, oldest)| {
            (
                queue.clone(),
                done.get(&queue).copied().unwrap_or(0),
                oldest,
            )
        })
        .collect())
}

/// The queues that have jobs, in order: one index dive per queue into `jobq_jobs_claim`
/// (queue, …), each reading the first entry after the last queue found, whatever the number of
/// jobs. (A `SELECT DISTINCT queue` is planned as a loose index scan or as a scan of the whole
/// index depending on the statistics of the moment: measured at 120,000 reads for one queue of
/// 120,000 jobs. The dives cannot fall back to that.)
pub(crate) async fn queues_with_jobs(pool: &MySqlPool) -> Result<Vec<String>, sqlx::Error> {
    let mut out: Vec<String> = Vec::new();
    loop {
        // language=MySQL
        let next: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT queue FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
             WHERE queue > ? ORDER BY queue LIMIT 1",
        )
        .bind(out.last().map_or("", |q| q.as_str()))
        .fetch_optional(pool)
        .await?;
        match next {
            Some(q) => out.push(String::from_utf8_lossy(&q).into_owned()),
            None => return Ok(out),
        }
    }
}

/// Seconds since the oldest available job of `queue` became due (`None`: none available).
/// Per priority, the first entry of `jobq_jobs_claim`'s (queue, 'available', priority) range
/// holds its least `run_at`: a loose index scan reads one entry per priority in use, never the
/// whole backlog; the least of those is the oldest. (Grouping by the equality columns too is
/// what lets MariaDB take the loose scan; by `priority` alone it reads the whole range.)
pub(crate) async fn oldest_available(
    pool: &MySqlPool,
    queue: &str,
) -> Result<Option<f64>, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(p.first), UTC_TIMESTAMP(6)) / 1e6 FROM \
           (SELECT MIN(run_at) AS first FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
             WHERE queue = ? AND state = 'available' GROUP BY queue, state, priority) p",
    )
    .bind(queue)
    .fetch_one(pool)
    .await
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
    /// What the handler returned with its success (`ctx.set_result`).
    pub result: Option<serde_json::Value>,
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
    /// Who asked for it, for an operator's act (`jobq cancel`, `retry`, `discard`).
    pub actor: Option<String>,
    /// When (UTC, database clock).
    pub at: DateTime<Utc>,
}

/// Reads one job.
pub(crate) async fn job(pool: &MySqlPool, id: JobId) -> Result<Option<JobRecord>, sqlx::Error> {
    // language=MySQL
    let row = sqlx::query(
        "SELECT id, queue, kind, CAST(payload AS CHAR) AS payload, CAST(state AS CHAR) AS state, priority, run_at, \
                attempt, max_attempts, worker_id, lease_expires_at, created_at, attempted_at, finalized_at, last_error, \
                CAST(result AS CHAR) AS result \
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
        result: opt_text(&r, "result")?
            .map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))),
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
                worker_id, error, actor, at \
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
                actor: opt_text(&r, "actor")?,
                at: r.try_get("at")?,
            })
        })
        .collect()
}

/// A worker process, as `jobq workers` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Queues it works.
    pub queues: Vec<String>,
    /// Jobs it is running now.
    pub running: i64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat_at: DateTime<Utc>,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
}

/// The registered worker processes with their running jobs, most recent heartbeat first.
pub(crate) async fn workers(pool: &MySqlPool) -> Result<Vec<WorkerInfo>, sqlx::Error> {
    // language=MySQL
    // The running jobs per worker: the `running` range of jobq_jobs_due (at most every slot).
    let rows = sqlx::query(
        "SELECT w.id, w.host, w.pid, CAST(w.queues AS CHAR) AS queues, w.started_at, w.last_heartbeat_at, \
                TIMESTAMPDIFF(MICROSECOND, w.last_heartbeat_at, UTC_TIMESTAMP(6)) / 1e6 AS age, \
                COALESCE(r.n, 0) AS running \
         FROM jobq_workers w \
         LEFT JOIN (SELECT worker_id, COUNT(*) AS n FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
                    WHERE state = 'running' GROUP BY worker_id) r ON r.worker_id = w.id \
         ORDER BY w.last_heartbeat_at DESC",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let queues: String = r.try_get("queues")?;
            Ok(WorkerInfo {
                id: text(&r, "id")?,
                host: text(&r, "host")?,
                pid: r.try_get("pid")?,
                queues: queues.split(',').map(str::to_owned).collect(),
                running: r.try_get("running")?,
                started_at: r.try_get("started_at")?,
                last_heartbeat_at: r.try_get("last_heartbeat_at")?,
                heartbeat_age_seconds: r.try_get::<Option<f64>, _>("age")?.unwrap_or(0.0),
            })
        })
        .collect()
}

/// The id `rows` below the newest history row: reads that stay above it are a bounded range
/// of the primary key. Ids have gaps (an `INSERT … SELECT` reserves more than it uses, a
/// rolled-back claim burns some), so the range may hold fewer rows, never more.
pub(crate) async fn history_floor(pool: &MySqlPool, rows: u32) -> Result<u64, sqlx::Error> {
    // language=MySQL
    let newest: Option<u64> = sqlx::query_scalar("SELECT MAX(id) FROM jobq_transitions")
        .fetch_one(pool)
        .await?;
    Ok(newest.unwrap_or(0).saturating_sub(u64::from(rows)))
}
