//! The test kit's SQL (feature `testing`): the jobs a test looks at, and `Drain`'s own way to
//! move jobs on. `Drain` runs in the test's process with a test clock, so it promotes and
//! claims here by that clock instead of the server's; the outcome is then written by the
//! runtime's own `finish`, so transitions, results and dependents are exactly a worker's.

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, Row};

use super::{micros, opt_text, text};
use crate::model::Token;

/// A job as the test kit shows it.
pub(crate) struct JobRow {
    pub(crate) id: u64,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) state: String,
    pub(crate) priority: i16,
    pub(crate) run_at: DateTime<Utc>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<String>,
    pub(crate) concurrency_key: Option<String>,
    pub(crate) workflow_id: Option<u64>,
    /// Its parents' ids, comma-separated (`GROUP_CONCAT`), if it has any.
    pub(crate) parents: Option<String>,
    pub(crate) last_error: Option<String>,
}

/// The jobs in `states`, oldest first, at most `limit`. Read through the caller's connection,
/// so a test sees the jobs its own open transaction enqueued.
pub(crate) async fn jobs(
    conn: &mut MySqlConnection,
    states: &[&str],
    limit: u32,
) -> Result<Vec<JobRow>, sqlx::Error> {
    let list = super::sql::marks(states.len());
    // language=MySQL
    // A test database is small: the state filter reads `jobq_jobs_due`; the parents come from
    // `jobq_deps`' child index, one group per job.
    let sql = format!(
        "SELECT j.id, j.queue, j.kind, CAST(j.payload AS CHAR) AS payload, CAST(j.state AS CHAR) AS state, \
                j.priority, j.run_at, j.attempt, j.max_attempts, j.unique_key, j.concurrency_key, \
                j.workflow_id, j.last_error, \
                (SELECT GROUP_CONCAT(d.parent_id ORDER BY d.parent_id) FROM jobq_deps d WHERE d.child_id = j.id) AS parents \
         FROM jobq_jobs j WHERE j.state IN ({list}) ORDER BY j.id LIMIT ?"
    );
    let mut q = sqlx::query(&sql);
    for s in states {
        q = q.bind(*s);
    }
    let rows = q.bind(limit).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| {
            Ok(JobRow {
                id: r.try_get("id")?,
                queue: text(r, "queue")?,
                kind: text(r, "kind")?,
                payload: text(r, "payload")?,
                state: text(r, "state")?,
                priority: r.try_get("priority")?,
                run_at: r.try_get("run_at")?,
                attempt: r.try_get("attempt")?,
                max_attempts: r.try_get("max_attempts")?,
                unique_key: opt_text(r, "unique_key")?,
                concurrency_key: opt_text(r, "concurrency_key")?,
                workflow_id: r.try_get("workflow_id")?,
                parents: opt_text(r, "parents")?,
                last_error: opt_text(r, "last_error")?,
            })
        })
        .collect()
}

/// Makes the jobs of `queues` that are due by the test clock (the server's clock moved
/// `ahead`) `available`: `scheduled` and `retryable` ones whose `run_at` has come, and
/// `waiting` ones (`Drain` runs one job at a time, so no concurrency limit can be in the way).
/// Each move is recorded as a `promoted` transition. Returns how many moved.
pub(crate) async fn promote_by_clock(
    conn: &mut MySqlConnection,
    queues: &[String],
    ahead: std::time::Duration,
) -> Result<u64, sqlx::Error> {
    let list = super::sql::marks(queues.len());
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // language=MySQL
    let sql = format!(
        "SELECT id FROM jobq_jobs WHERE queue IN ({list}) \
           AND (state = 'waiting' OR (state IN ('scheduled', 'retryable') \
                AND run_at <= UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)) \
         ORDER BY id FOR UPDATE"
    );
    let mut q = sqlx::query_scalar(&sql);
    for name in queues {
        q = q.bind(name);
    }
    let ids: Vec<u64> = q.bind(micros(ahead)).fetch_all(&mut *tx).await?;
    if ids.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let list = super::sql::marks(ids.len());
    // language=MySQL
    // The transition first, while the row still has its old state to name.
    let sql = format!(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, actor, at) \
         SELECT id, state, 'available', 'promoted', attempt, 'jobq:test', UTC_TIMESTAMP(6) \
         FROM jobq_jobs WHERE id IN ({list})"
    );
    let mut q = sqlx::query(&sql);
    for id in &ids {
        q = q.bind(id);
    }
    q.execute(&mut *tx).await?;
    // language=MySQL
    let sql = format!("UPDATE jobq_jobs SET state = 'available' WHERE id IN ({list})");
    let mut q = sqlx::query(&sql);
    for id in &ids {
        q = q.bind(id);
    }
    let n = q.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Ok(n)
}

/// A job `Drain` claimed.
pub(crate) struct Claimed {
    pub(crate) id: u64,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) linked: bool,
    /// `traceparent` and `tracestate`, as stored.
    pub(crate) trace: Option<(String, Option<String>)>,
}

/// Which job [`claim_one`] takes.
pub(crate) enum Pick<'a> {
    /// The next of these queues, in claim order (`priority, run_at, id`).
    Next(&'a [String]),
    /// This one, if it is `available`.
    Id(u64),
}

/// Claims one `available` job the way a worker does: `running`, attempt counted, fenced by
/// `token`, leased for `lease`, with its `claimed` transition. `None` when there is none.
pub(crate) async fn claim_one(
    conn: &mut MySqlConnection,
    pick: Pick<'_>,
    worker: &str,
    token: Token,
    lease: std::time::Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let (sql, binds): (String, Vec<String>) = match pick {
        // language=MySQL
        Pick::Next(queues) => (
            format!(
                "SELECT id FROM jobq_jobs WHERE queue IN ({}) AND state = 'available' \
                 ORDER BY priority, run_at, id LIMIT 1 FOR UPDATE",
                super::sql::marks(queues.len())
            ),
            queues.to_vec(),
        ),
        // language=MySQL
        Pick::Id(id) => (
            "SELECT id FROM jobq_jobs WHERE id = ? AND state = 'available' FOR UPDATE".to_owned(),
            vec![id.to_string()],
        ),
    };
    let mut q = sqlx::query_scalar(&sql);
    for b in &binds {
        q = q.bind(b);
    }
    let Some(id): Option<u64> = q.fetch_optional(&mut *tx).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    // language=MySQL
    sqlx::query(
        "UPDATE jobq_jobs SET state = 'running', attempt = LEAST(attempt + 1, 4294967295), \
                claim_token = ?, worker_id = ?, attempted_at = UTC_TIMESTAMP(6), \
                cancel_requested_at = NULL, cancel_requested_by = NULL, \
                lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
         WHERE id = ? AND state = 'available'",
    )
    .bind(&token[..])
    .bind(worker)
    .bind(micros(lease))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // language=MySQL
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
         SELECT id, 'available', 'running', 'claimed', attempt, worker_id, attempted_at \
         FROM jobq_jobs WHERE id = ?",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    // language=MySQL
    let r = sqlx::query(
        "SELECT id, queue, kind, CAST(payload AS CHAR) AS payload, attempt, max_attempts, \
                (dependents > 0 OR workflow_id IS NOT NULL) AS linked, traceparent, tracestate \
         FROM jobq_jobs WHERE id = ?",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let claimed = Claimed {
        id,
        queue: text(&r, "queue")?,
        kind: text(&r, "kind")?,
        payload: text(&r, "payload")?,
        attempt: r.try_get("attempt")?,
        max_attempts: r.try_get("max_attempts")?,
        linked: r.try_get::<i64, _>("linked")? != 0,
        trace: super::trace_of(&r)?,
    };
    tx.commit().await?;
    Ok(Some(claimed))
}

/// How far ahead of the server's clock the next `scheduled` or `retryable` job of `queues` is
/// due (zero if it already is); `None` when there is none.
pub(crate) async fn next_due(
    conn: &mut MySqlConnection,
    queues: &[String],
) -> Result<Option<std::time::Duration>, sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "SELECT GREATEST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), MIN(run_at)), 0) \
         FROM jobq_jobs WHERE queue IN ({}) AND state IN ('scheduled', 'retryable')",
        super::sql::marks(queues.len())
    );
    let mut q = sqlx::query_scalar(&sql);
    for name in queues {
        q = q.bind(name);
    }
    let us: Option<i64> = q.fetch_one(&mut *conn).await?;
    Ok(us.map(|us| std::time::Duration::from_micros(us.max(0) as u64)))
}

/// Every queue that has jobs.
pub(crate) async fn queues(conn: &mut MySqlConnection) -> Result<Vec<String>, sqlx::Error> {
    // language=MySQL
    let rows = sqlx::query("SELECT DISTINCT queue FROM jobq_jobs ORDER BY queue")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| text(r, "queue")).collect()
}

/// The next `available` job of `queues` in claim order, read without a lock.
pub(crate) async fn peek_next(
    conn: &mut MySqlConnection,
    queues: &[String],
) -> Result<Option<(u64, String)>, sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "SELECT id, kind FROM jobq_jobs WHERE queue IN ({}) AND state = 'available' \
         ORDER BY priority, run_at, id LIMIT 1",
        super::sql::marks(queues.len())
    );
    let mut q = sqlx::query(&sql);
    for name in queues {
        q = q.bind(name);
    }
    q.fetch_optional(&mut *conn)
        .await?
        .map(|r| Ok((r.try_get("id")?, text(&r, "kind")?)))
        .transpose()
}
