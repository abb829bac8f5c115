//! Maintenance, run by the elected leader only (elected on a `jobq-lock` lease): promotion of due jobs,
//! rescue of expired leases, retention, and the depth sample behind the leader's gauges.

use std::time::Duration;

use jobq_producer::{JobState, KindName, QueueName};
use sqlx::{MySqlPool, Row};

use super::sql::marks;
use super::{micros, opt_text, text};
use crate::model::Decision;

/// Moves up to `limit` due jobs of `from` (`scheduled` or `retryable`) to `available`.
/// Returns how many moved.
pub(crate) async fn promote_due(
    pool: &MySqlPool,
    from: JobState,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let mut tx = super::begin(pool).await?;
    // language=MySQL
    // jobq_jobs_due (state, run_at, id): a range read of due rows only.
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
         WHERE state = ? AND run_at <= UTC_TIMESTAMP(6) ORDER BY run_at, id LIMIT ? \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(from.as_str())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let list = marks(ids.len());
    // language=MySQL
    let sql =
        format!("UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'available' WHERE id IN ({list}) AND state = ?");
    let mut q = sqlx::query(&sql);
    for id in &ids {
        q = q.bind(id);
    }
    let n = q
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // language=MySQL
    let sql = format!(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
         SELECT id, ?, 'available', 'promoted', attempt, UTC_TIMESTAMP(6) FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({list})"
    );
    let mut q = sqlx::query(&sql).bind(from.as_str());
    for id in &ids {
        q = q.bind(id);
    }
    q.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// A running job whose lease expired, as maintenance found it.
#[derive(Clone, Debug)]
pub(crate) struct Expired {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) worker: Option<String>,
    /// Who requested its cancel, if anyone did (`jobq cancel` while it ran).
    pub(crate) cancel_requested_by: Option<String>,
}

/// Rescues up to `limit` running jobs whose lease expired, writing what `decide` says for each
/// (see `machine::attempt::rescue`) with its transition, in one transaction. Returns each
/// rescued job with the state it went to.
pub(crate) async fn rescue_expired(
    pool: &MySqlPool,
    limit: u32,
    decide: impl Fn(&Expired) -> Decision,
    rules: jobq_producer::deps::Rules,
) -> Result<Vec<(Expired, JobState)>, sqlx::Error> {
    let mut tx = super::begin(pool).await?;
    // language=MySQL
    // The `running` range of jobq_jobs_due (state, run_at, id): at most the slots of all
    // workers, filtered on the lease. SKIP LOCKED: a row locked right now belongs to a worker
    // finishing it; it is looked at again next tick. A running row without a lease (possible
    // only where CHECK constraints are not enforced) counts as expired.
    let rows = sqlx::query(
        "SELECT id, queue, kind, attempt, max_attempts, worker_id, \
                cancel_requested_at IS NOT NULL AS cancel, cancel_requested_by \
         FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
         WHERE state = 'running' AND (lease_expires_at IS NULL OR lease_expires_at < UTC_TIMESTAMP(6)) \
         ORDER BY run_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut ended = Vec::new();
    for r in rows {
        let id: u64 = r.try_get("id")?;
        let job = Expired {
            queue: text(&r, "queue")?,
            kind: text(&r, "kind")?,
            attempt: r.try_get("attempt")?,
            max_attempts: r.try_get("max_attempts")?,
            worker: opt_text(&r, "worker_id")?,
            cancel_requested_by: (r.try_get::<i64, _>("cancel")? == 1).then(|| {
                opt_text(&r, "cancel_requested_by")
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "an operator".into())
            }),
        };
        let d = decide(&job);
        // language=MySQL
        sqlx::query(
            "UPDATE jobq_jobs SET state = ?, lease_expires_at = NULL, last_error = ?, \
                    finalized_at = IF(?, UTC_TIMESTAMP(6), NULL) \
             WHERE id = ? AND state = 'running'",
        )
        .bind(d.to.as_str())
        .bind(d.error.as_deref())
        .bind(d.to.is_final())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // language=MySQL
        sqlx::query(
            "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, error, at) \
             VALUES (?, 'running', ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(id)
        .bind(d.to.as_str())
        .bind(d.event.as_str())
        .bind(job.attempt)
        .bind(job.worker.as_deref())
        .bind(d.error.as_deref())
        .execute(&mut *tx)
        .await?;
        if d.to.is_final() {
            ended.push((id, d.to));
        }
        out.push((job, d.to));
    }
    // Jobs that ended here (their last attempt, or a cancel requested): their dependents and
    // workflows hear of it in this transaction.
    let mut flows = Vec::new();
    if !ended.is_empty() {
        flows = super::deps::settle(&mut tx, &ended, None, rules)
            .await?
            .workflows_ended;
    }
    tx.commit().await?;
    crate::metrics::workflows_finished(&flows);
    Ok(out)
}

/// Deletes up to `limit` workflows that ended more than `age` ago, with their callbacks' rows
/// (their jobs go by the jobs' own retention). Returns how many.
pub(crate) async fn prune_workflows(
    pool: &MySqlPool,
    age: Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let mut tx = super::begin(pool).await?;
    // language=MySQL
    // By jobq_workflows_finished; only workflows none of whose jobs is left (a job kept
    // longer, as failed jobs may be, keeps its workflow to be retried with).
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM jobq_workflows FORCE INDEX (jobq_workflows_finished) \
         WHERE finished_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
           AND NOT EXISTS (SELECT 1 FROM jobq_workflow_jobs wj WHERE wj.workflow_id = jobq_workflows.id) \
         ORDER BY finished_at LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(micros(age))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let list = super::sql::id_list(ids.iter().copied());
    for sql in [
        format!("DELETE FROM jobq_callbacks WHERE workflow_id IN ({list})"),
        format!("DELETE FROM jobq_workflows WHERE id IN ({list})"),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
}

/// Where a retention scan of one final state stands: the (`run_at`, id) of the last job it
/// read, or the start of the range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PruneCursor(Option<(chrono::DateTime<chrono::Utc>, u64)>);

/// One window of retention for final state `state`: reads at most `scan` jobs past `cursor`
/// whose `run_at` is older than now − `age` (a plain read of `jobq_jobs_due`, no locks),
/// deletes those of them finalised before now − `age`, with their history, and moves the
/// cursor past the window. Returns how many jobs it deleted and whether the range goes on
/// (`false`: it ended, and the cursor is back at its start). `with_history`: delete their
/// history rows too (`false` when history is partitioned: it goes by whole partitions).
///
/// Why a window and a cursor: `run_at <= finalized_at`, so the range bounds the candidates,
/// but a job can have an old `run_at` and a recent `finalized_at` (a backlog worked through
/// slowly). A query asking for the first N ripe jobs would read past every such job on every
/// pass; a window reads at most `scan` rows, and the cursor takes the next pass further.
pub(crate) async fn prune(
    pool: &MySqlPool,
    state: JobState,
    age: Duration,
    scan: u32,
    cursor: &mut PruneCursor,
    with_history: bool,
) -> Result<(u64, bool), sqlx::Error> {
    // language=MySQL
    let after = match cursor.0 {
        Some(_) => "AND (run_at > ? OR (run_at = ? AND id > ?))",
        None => "",
    };
    let sql = format!(
        "SELECT id, run_at, finalized_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND AS ripe \
         FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
         WHERE state = ? AND run_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND {after} \
         ORDER BY run_at, id LIMIT ?"
    );
    let mut q = sqlx::query_as::<_, (u64, chrono::DateTime<chrono::Utc>, Option<i64>)>(&sql)
        .bind(micros(age))
        .bind(state.as_str())
        .bind(micros(age));
    if let Some((run_at, id)) = cursor.0 {
        q = q.bind(run_at).bind(run_at).bind(id);
    }
    let window = q.bind(scan).fetch_all(pool).await?;
    let more = window.len() as u64 >= u64::from(scan);
    *cursor = match window.last() {
        Some(&(id, run_at, _)) if more => PruneCursor(Some((run_at, id))),
        _ => PruneCursor::default(),
    };
    let ripe: Vec<u64> = window
        .iter()
        .filter(|(_, _, ripe)| *ripe == Some(1))
        .map(|(id, _, _)| *id)
        .collect();
    if ripe.is_empty() {
        return Ok((0, more));
    }
    let mut tx = super::begin(pool).await?;
    // language=MySQL
    // Locked by primary key and checked again (a retried job is no longer in its final state).
    let ids: Vec<u64> = sqlx::query_scalar(&format!(
        "SELECT id FROM jobq_jobs WHERE id IN ({}) AND state = ? \
           AND finalized_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND FOR UPDATE SKIP LOCKED",
        super::sql::id_list(ripe.iter().copied())
    ))
    .bind(state.as_str())
    .bind(micros(age))
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok((0, more));
    }
    let list = marks(ids.len());
    // language=MySQL
    // With a job go its history, its log lines and progress, the edges into it (it has ended,
    // so they are resolved; the edges out of it stay with their children, which read their
    // parents' endings there) and its name in its workflow.
    let history =
        with_history.then(|| format!("DELETE FROM jobq_transitions WHERE job_id IN ({list})"));
    for table_sql in history.into_iter().chain([
        format!("DELETE FROM jobq_deps WHERE child_id IN ({list})"),
        format!("DELETE FROM jobq_workflow_jobs WHERE job_id IN ({list})"),
        format!("DELETE FROM jobq_job_logs WHERE job_id IN ({list})"),
        format!("DELETE FROM jobq_job_progress WHERE job_id IN ({list})"),
        // No index hint: MariaDB before 11.x refuses one on DELETE (error 1064).
        format!("DELETE FROM jobq_jobs WHERE id IN ({list})"),
    ]) {
        let mut q = sqlx::query(&table_sql);
        for id in &ids {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok((ids.len() as u64, more))
}

/// Deletes worker rows not beaten for `age`.
pub(crate) async fn prune_workers(pool: &MySqlPool, age: Duration) -> Result<u64, sqlx::Error> {
    // language=MySQL
    Ok(sqlx::query(
        "DELETE FROM jobq_workers WHERE last_heartbeat_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND",
    )
    .bind(micros(age))
    .execute(pool)
    .await?
    .rows_affected())
}

/// Jobs that `--drain` still waits for: available, running, retryable or waiting in `queues`, of
/// a kind in `kinds`. Not blocked ones: a parent's completion releases its children in its own
/// transaction, so a child whose parents run here is `available` before they stop counting,
/// and one whose parents wait (scheduled, or in other queues) would hold the drain forever.
pub(crate) async fn pending(
    pool: &MySqlPool,
    queues: &[QueueName],
    kinds: &[KindName],
) -> Result<i64, sqlx::Error> {
    if queues.is_empty() || kinds.is_empty() {
        return Ok(0);
    }
    // language=MySQL
    // Served by jobq_jobs_claim's (queue, state) prefix.
    let sql = format!(
        "SELECT COUNT(*) FROM jobq_jobs WHERE queue IN ({}) AND state IN ('available', 'running', 'retryable', 'waiting') \
         AND kind IN ({})",
        marks(queues.len()),
        marks(kinds.len())
    );
    let mut q = sqlx::query_scalar(&sql);
    for queue in queues {
        q = q.bind(queue.as_str());
    }
    for kind in kinds {
        q = q.bind(kind.as_str());
    }
    q.fetch_one(pool).await
}

/// What the leader samples for its gauges.
#[derive(Clone, Debug, Default)]
pub(crate) struct DepthSample {
    /// (queue, state, count) for the non-final states.
    pub(crate) depth: Vec<(String, String, i64)>,
    /// Seconds since the oldest available job of each queue became due.
    pub(crate) oldest: Vec<(String, f64)>,
    /// Workers that beat within the `alive` window.
    pub(crate) workers: i64,
    /// The highest job id (jobs ever inserted).
    pub(crate) max_id: u64,
    /// Seconds since the oldest blocked job's run-at (0: none blocked).
    pub(crate) oldest_blocked: f64,
}

/// The leader's sample for the depth gauges.
pub(crate) async fn sample_depth(
    pool: &MySqlPool,
    alive: Duration,
) -> Result<DepthSample, sqlx::Error> {
    // Per queue (an index dive finds each) and live state, a bounded count of
    // jobq_jobs_claim's (queue, state) range: exact up to EXACT_UP_TO, the server's estimate
    // beyond. The finished jobs, however many, are never read, and a backlog of millions
    // costs what ten thousand do.
    let mut depth = Vec::new();
    let mut oldest = Vec::new();
    for queue in super::inspect::queues_with_jobs(pool).await? {
        let mut available = false;
        for state in JobState::ALL.into_iter().filter(|s| !s.is_final()) {
            let (n, _) =
                super::inspect::count_in_state(pool, &queue, state, super::EXACT_UP_TO).await?;
            available |= state == JobState::Available && n > 0;
            depth.push((queue.clone(), state.as_str().to_owned(), n));
        }
        if available {
            let age = super::inspect::oldest_available(pool, &queue).await?;
            oldest.push((queue, age.unwrap_or(0.0)));
        }
    }
    // language=MySQL
    let workers: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobq_workers WHERE last_heartbeat_at >= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND",
    )
    .bind(micros(alive))
    .fetch_one(pool)
    .await?;
    // language=MySQL
    // The end of the primary key: O(1).
    let max_id: Option<u64> = sqlx::query_scalar("SELECT MAX(id) FROM jobq_jobs")
        .fetch_one(pool)
        .await?;
    // language=MySQL
    // The start of jobq_jobs_due's `blocked` range: O(1).
    let oldest_blocked: Option<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(run_at), UTC_TIMESTAMP(6)) FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
         WHERE state = 'blocked'",
    )
    .fetch_one(pool)
    .await?;
    Ok(DepthSample {
        depth,
        oldest,
        workers,
        max_id: max_id.unwrap_or(0),
        oldest_blocked: oldest_blocked.map_or(0.0, |us| us.max(0) as f64 / 1e6),
    })
}
