//! Workflows for operators: list them (from their counters), show one with its jobs and edges,
//! and the two acts on a whole workflow, cancel and retry. What a retry does is decided by the
//! rule passed in (`jobq_producer::deps::retry_plan`); cancelling its jobs is the jobs' own act
//! (`acts.rs`).

use jobq_producer::deps::Rules;
use jobq_producer::JobState;
use sqlx::{MySqlPool, Row};

use super::sql::id_list;

/// A workflow's row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FlowRow {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) batch: bool,
    pub(crate) state: String,
    pub(crate) jobs: u32,
    pub(crate) completed: u32,
    pub(crate) discarded: u32,
    pub(crate) cancelled: u32,
    pub(crate) created_at: chrono::DateTime<chrono::Utc>,
    pub(crate) finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

// language=MySQL
const FLOW_COLUMNS: &str =
    "id, CAST(name AS CHAR) AS name, batch, CAST(state AS CHAR) AS state, jobs, \
     completed, discarded, cancelled, created_at, finished_at";

/// The newest workflows (by id), up to `limit`, before id `before` if given.
pub(crate) async fn list(
    pool: &MySqlPool,
    limit: u32,
    before: Option<u64>,
) -> Result<Vec<FlowRow>, sqlx::Error> {
    // language=MySQL
    // The primary key, newest first: counters, no COUNT(*) over jobs.
    sqlx::query_as(&format!(
        "SELECT {FLOW_COLUMNS} FROM jobq_workflows WHERE id < ? ORDER BY id DESC LIMIT ?"
    ))
    .bind(before.unwrap_or(u64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One workflow's row.
pub(crate) async fn one(pool: &MySqlPool, id: u64) -> Result<Option<FlowRow>, sqlx::Error> {
    // language=MySQL
    sqlx::query_as(&format!(
        "SELECT {FLOW_COLUMNS} FROM jobq_workflows WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A job of a workflow: (name, id, state, kind, attempt).
pub(crate) type FlowJob = (String, u64, String, String, u32);

/// The jobs of workflow `id` in id order, its edges (parent, child) and its callbacks
/// (event, the job once enqueued).
#[allow(clippy::type_complexity)]
pub(crate) async fn graph(
    pool: &MySqlPool,
    id: u64,
) -> Result<(Vec<FlowJob>, Vec<(u64, u64)>, Vec<(String, Option<u64>)>), sqlx::Error> {
    // language=MySQL
    let jobs: Vec<FlowJob> = sqlx::query_as(
        "SELECT CAST(w.name AS CHAR), j.id, CAST(j.state AS CHAR), CAST(j.kind AS CHAR), j.attempt \
         FROM jobq_workflow_jobs w JOIN jobq_jobs j ON j.id = w.job_id \
         WHERE w.workflow_id = ? ORDER BY j.id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    // language=MySQL
    let edges: Vec<(u64, u64)> = sqlx::query_as(
        "SELECT d.parent_id, d.child_id FROM jobq_workflow_jobs w \
         JOIN jobq_deps d FORCE INDEX (jobq_deps_child) ON d.child_id = w.job_id \
         WHERE w.workflow_id = ? ORDER BY d.child_id, d.parent_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    // language=MySQL
    let callbacks: Vec<(String, Option<u64>)> = sqlx::query_as(
        "SELECT CAST(on_event AS CHAR), job_id FROM jobq_callbacks WHERE workflow_id = ? ORDER BY on_event",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok((jobs, edges, callbacks))
}

/// Marks workflow `id` cancelled and returns its jobs that have not ended (the caller cancels
/// them with the jobs' act). `None` when there is no such workflow; `Some(Err(state))` when
/// every job of it has already ended. A workflow already marked cancelled whose jobs have not
/// all ended (a cancel cut short) is cancelled again.
pub(crate) async fn mark_cancelled(
    pool: &MySqlPool,
    id: u64,
) -> Result<Option<Result<Vec<u64>, String>>, sqlx::Error> {
    let mut tx = super::begin(pool).await?;
    // language=MySQL
    let row: Option<(String, bool)> = sqlx::query_as(
        "SELECT CAST(state AS CHAR), finished_at IS NOT NULL FROM jobq_workflows WHERE id = ? FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((state, finished)) = row else {
        return Ok(None);
    };
    if finished {
        tx.rollback().await?;
        return Ok(Some(Err(state)));
    }
    // language=MySQL
    // From now on its jobs are never released, only cancelled (`deps.rs`).
    sqlx::query("UPDATE jobq_workflows SET state = 'cancelled' WHERE id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // language=MySQL
    // In any order: none of them can be released any more.
    let open: Vec<u64> = sqlx::query_scalar(
        "SELECT j.id FROM jobq_workflow_jobs w JOIN jobq_jobs j ON j.id = w.job_id \
         WHERE w.workflow_id = ? AND j.state NOT IN ('completed', 'discarded', 'cancelled') ORDER BY j.id",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Ok(open)))
}

/// What a workflow retry did.
#[derive(Debug, Default)]
pub(crate) struct Retried {
    /// Jobs made `available`.
    pub(crate) available: u32,
    /// Jobs made `blocked` on parents that run again.
    pub(crate) blocked: u32,
}

/// Retries workflow `id` in one transaction, as `rules.retry` plans it: its jobs that did not
/// complete run again (`requeued` transitions naming `actor`), the edges from them count
/// again, and the workflow is `running` again with its callbacks ready to run at its next
/// end. `None`: no such workflow. `Some(Err(why))`: refused (still running, or its unique
/// key taken by a newer workflow).
pub(crate) async fn retry(
    pool: &MySqlPool,
    id: u64,
    actor: &str,
    rules: Rules,
) -> Result<Option<Result<Retried, String>>, sqlx::Error> {
    let mut tx = super::begin(pool).await?;
    // language=MySQL
    // Every job of the workflow (a plain read of its names), then locked by primary key in
    // ascending ids, then its row: the order the endings of its jobs lock them in (jobs, then
    // the workflow).
    let ids: Vec<u64> =
        sqlx::query_scalar("SELECT job_id FROM jobq_workflow_jobs WHERE workflow_id = ?")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    let rows = if ids.is_empty() {
        Vec::new()
    } else {
        // language=MySQL
        sqlx::query(&format!(
            "SELECT id, CAST(state AS CHAR) AS state FROM jobq_jobs FORCE INDEX (PRIMARY) \
             WHERE id IN ({}) ORDER BY id FOR UPDATE",
            id_list(ids.iter().copied())
        ))
        .fetch_all(&mut *tx)
        .await?
    };
    // language=MySQL
    let state: Option<String> = sqlx::query_scalar(
        "SELECT CAST(state AS CHAR) FROM jobq_workflows WHERE id = ? FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(state) = state else {
        return Ok(None);
    };
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let st: String = r.try_get("state")?;
        jobs.push((
            r.try_get::<u64, _>("id")?,
            st.parse::<JobState>()
                .map_err(|e| sqlx::Error::Decode(e.into()))?,
        ));
    }
    // language=MySQL
    // The edges into its jobs, with how each parent ended: a parent pruned since counts as it
    // ended (its state is kept on the edge).
    let edge_rows: Vec<(u64, u64, Option<String>)> = sqlx::query_as(
        "SELECT d.parent_id, d.child_id, CAST(d.parent_state AS CHAR) FROM jobq_workflow_jobs w \
         JOIN jobq_deps d FORCE INDEX (jobq_deps_child) ON d.child_id = w.job_id WHERE w.workflow_id = ?",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let known: std::collections::BTreeSet<u64> = jobs.iter().map(|j| j.0).collect();
    for (parent, _, ended) in &edge_rows {
        if !known.contains(parent) && ended.as_deref() == Some("completed") {
            jobs.push((*parent, JobState::Completed));
        }
    }
    let edges: Vec<(u64, u64)> = edge_rows.iter().map(|(p, c, _)| (*p, *c)).collect();
    let plan = (rules.retry)(&jobs, &edges);
    if plan.rerun.is_empty() {
        tx.rollback().await?;
        return Ok(Some(Err(if state == "running" {
            "none of its jobs has failed or been cancelled (yet)".to_owned()
        } else {
            "every job of it completed".to_owned()
        })));
    }
    let ids = id_list(plan.rerun.iter().map(|r| r.0));
    // language=MySQL
    // Only the edges into this workflow's jobs count again: a job outside it that runs after
    // one of them keeps what that job's ending did to it.
    sqlx::query(&format!(
        "UPDATE jobq_deps d JOIN jobq_workflow_jobs w ON w.job_id = d.child_id AND w.workflow_id = ? \
            SET d.resolved_at = NULL, d.parent_state = NULL WHERE d.parent_id IN ({ids})"
    ))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let mut to = String::from("CASE id");
    let mut pending = String::from("CASE id");
    for (job, state, n) in &plan.rerun {
        to.push_str(&format!(" WHEN {job} THEN '{state}'"));
        pending.push_str(&format!(" WHEN {job} THEN {n}"));
    }
    to.push_str(" END");
    pending.push_str(" END");
    // language=MySQL
    // The history first, from the rows as they are; then the rows, as a `jobq retry` would
    // (one more attempt if all were used, no cancel request left).
    sqlx::query(&format!(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, error, actor, at) \
         SELECT id, state, {to}, 'requeued', attempt, ?, ?, UTC_TIMESTAMP(6) \
         FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids})"
    ))
    .bind(format!("workflow {id} retried by {actor}"))
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    // language=MySQL
    sqlx::query(&format!(
        "UPDATE jobq_jobs FORCE INDEX (PRIMARY) \
            SET state = {to}, pending_parents = {pending}, run_at = UTC_TIMESTAMP(6), finalized_at = NULL, \
                max_attempts = GREATEST(max_attempts, LEAST(attempt + 1, 4294967295)), \
                cancel_requested_at = NULL, cancel_requested_by = NULL, lease_expires_at = NULL \
          WHERE id IN ({ids})"
    ))
    .execute(&mut *tx)
    .await?;
    for (job, n) in &plan.rewait {
        // language=MySQL
        sqlx::query("UPDATE jobq_jobs SET pending_parents = pending_parents + ? WHERE id = ? AND state = 'blocked'")
            .bind(n)
            .bind(job)
            .execute(&mut *tx)
            .await?;
    }
    let discarded = jobs
        .iter()
        .filter(|(_, s)| *s == JobState::Discarded)
        .count() as u32;
    let cancelled = jobs
        .iter()
        .filter(|(_, s)| *s == JobState::Cancelled)
        .count() as u32;
    // language=MySQL
    // Running again: its unique key is taken again, refused if a newer workflow took it.
    let again = sqlx::query(
        "UPDATE jobq_workflows SET state = 'running', finished_at = NULL, \
                discarded = discarded - LEAST(discarded, ?), cancelled = cancelled - LEAST(cancelled, ?) \
          WHERE id = ?",
    )
    .bind(discarded)
    .bind(cancelled)
    .bind(id)
    .execute(&mut *tx)
    .await;
    match again {
        Ok(_) => {}
        Err(e) if crate::error::is_number(&e, crate::error::codes::DUPLICATE_KEY) => {
            tx.rollback().await?;
            return Ok(Some(Err(
                "a newer workflow holds its unique key; enqueue a new one instead".to_owned(),
            )));
        }
        Err(e) => return Err(e),
    }
    // language=MySQL
    sqlx::query("UPDATE jobq_callbacks SET job_id = NULL WHERE workflow_id = ?")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let blocked = plan
        .rerun
        .iter()
        .filter(|r| r.1 == JobState::Blocked)
        .count() as u32;
    Ok(Some(Ok(Retried {
        available: plan.rerun.len() as u32 - blocked,
        blocked,
    })))
}
