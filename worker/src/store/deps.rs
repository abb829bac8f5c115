//! Dependencies and workflows at the moment jobs end: [`settle`] runs inside the transaction
//! that made jobs final (a completion, a failure, an operator's cancel, a rescue) and, in that
//! same transaction, resolves their edges in `jobq_deps`, counts them off their children,
//! releases or cancels children as the rule passed in decides (`jobq_producer::deps`), follows
//! cancelled children to their own children, applies `fail_fast`, and keeps the workflows'
//! counters. So a parent never ends without its children hearing of it, crash or not.
//!
//! Locks are taken in one direction, ended job → its edges → its children (ascending ids) →
//! their workflows (ascending ids), so two endings that share a child wait for each other
//! instead of deadlocking.

use std::collections::{BTreeMap, BTreeSet};

use jobq_producer::deps::{edge_end, ChildMove, EdgeEnd};
use jobq_producer::{JobState, OnParentFailure};
use sqlx::MySqlConnection;

use super::sql::id_list;

/// Decides what a child does (`jobq_producer::deps::child_move`): its state, its edges still
/// unresolved, and the edges that just resolved.
pub(crate) type ChildRule = fn(JobState, u32, &[(u64, JobState, EdgeEnd)]) -> ChildMove;

/// What [`settle`] changed besides the jobs it was given.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Children released (`blocked` → `available`/`scheduled`).
    pub(crate) released: Vec<u64>,
    /// Jobs cancelled because a parent failed, or by `fail_fast`.
    pub(crate) cancelled: Vec<u64>,
    /// Workflows that ended, with their final state.
    pub(crate) workflows_ended: Vec<(u64, String)>,
}

/// Resolves what the jobs `ended` (id, final state; already written in this transaction)
/// mean for the jobs that depend on them and for their workflows. `actor` is recorded on the
/// transitions it writes (an operator's cancel), `None` for the runtime's own.
pub(crate) async fn settle(
    conn: &mut MySqlConnection,
    ended: &[(u64, JobState)],
    actor: Option<&str>,
    rule: ChildRule,
) -> Result<Settled, sqlx::Error> {
    let mut out = Settled::default();
    let mut finals: Vec<(u64, JobState)> = Vec::new();
    let mut frontier: Vec<(u64, JobState)> = ended.to_vec();
    while !frontier.is_empty() {
        finals.extend(frontier.iter().copied());
        let mut next = resolve(conn, &frontier, actor, rule, &mut out).await?;
        next.extend(fail_fast(conn, &frontier, actor).await?);
        out.cancelled.extend(next.iter().map(|(id, _)| *id));
        frontier = next;
    }
    out.workflows_ended = count_in_workflows(conn, &finals).await?;
    Ok(out)
}

/// One round: the edges of `parents` are resolved and their children moved. Returns the
/// children it cancelled (their own children are the next round's).
async fn resolve(
    conn: &mut MySqlConnection,
    parents: &[(u64, JobState)],
    actor: Option<&str>,
    rule: ChildRule,
    out: &mut Settled,
) -> Result<Vec<(u64, JobState)>, sqlx::Error> {
    let ended: BTreeMap<u64, JobState> = parents.iter().copied().collect();
    let ids = id_list(ended.keys().copied());
    // language=MySQL
    // The unresolved edges of the ended parents, locked (a producer adding an edge to one of
    // them holds the parent's row, so none can appear after this read).
    let edges: Vec<(u64, u64, String)> = sqlx::query_as(&format!(
        "SELECT parent_id, child_id, CAST(on_failure AS CHAR) FROM jobq_deps \
         WHERE parent_id IN ({ids}) AND resolved_at IS NULL ORDER BY parent_id, child_id FOR UPDATE"
    ))
    .fetch_all(&mut *conn)
    .await?;
    if edges.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_parent = String::from("CASE parent_id");
    for (id, state) in &ended {
        by_parent.push_str(&format!(" WHEN {id} THEN '{state}'"));
    }
    by_parent.push_str(" END");
    // language=MySQL
    sqlx::query(&format!(
        "UPDATE jobq_deps SET parent_state = {by_parent}, resolved_at = UTC_TIMESTAMP(6) \
         WHERE parent_id IN ({ids}) AND resolved_at IS NULL"
    ))
    .execute(&mut *conn)
    .await?;
    let mut ends: BTreeMap<u64, Vec<(u64, JobState, EdgeEnd)>> = BTreeMap::new();
    for (parent, child, policy) in &edges {
        let policy: OnParentFailure = policy.parse().map_err(decode)?;
        let state = ended[parent];
        ends.entry(*child)
            .or_default()
            .push((*parent, state, edge_end(state, policy)));
    }
    let children = id_list(ends.keys().copied());
    let mut count = String::from("CASE id");
    for (child, e) in &ends {
        count.push_str(&format!(" WHEN {child} THEN {}", e.len()));
    }
    count.push_str(" END");
    // language=MySQL
    // Each child counts its resolved edges off, under its row lock (ascending ids); never
    // below zero, whatever a hand edit left.
    sqlx::query(&format!(
        "UPDATE jobq_jobs FORCE INDEX (PRIMARY) \
            SET pending_parents = GREATEST(CAST(pending_parents AS SIGNED) - {count}, 0) \
          WHERE id IN ({children}) ORDER BY id"
    ))
    .execute(&mut *conn)
    .await?;
    // language=MySQL
    let rows: Vec<(u64, String, u32)> = sqlx::query_as(&format!(
        "SELECT id, CAST(state AS CHAR), pending_parents FROM jobq_jobs FORCE INDEX (PRIMARY) \
         WHERE id IN ({children}) FOR UPDATE"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut release = Vec::new();
    let mut cancel: Vec<(u64, String)> = Vec::new();
    for (id, state, pending) in rows {
        let state: JobState = state.parse().map_err(decode)?;
        match rule(state, pending, &ends[&id]) {
            ChildMove::Stay => {}
            ChildMove::Release => release.push(id),
            ChildMove::Cancel(why) => cancel.push((id, why)),
        }
    }
    unblock(conn, &release).await?;
    out.released.extend(&release);
    cancel_blocked(conn, &cancel, actor).await?;
    Ok(cancel
        .into_iter()
        .map(|(id, _)| (id, JobState::Cancelled))
        .collect())
}

/// `blocked` → `available`, or `scheduled` when its run-at is later, with the `unblocked`
/// transitions.
async fn unblock(conn: &mut MySqlConnection, ids: &[u64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let list = id_list(ids.iter().copied());
    // language=MySQL
    // The transition rows first, while the rows still say `blocked`: from → to is read from
    // the row itself, so history and row agree.
    sqlx::query(&format!(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
         SELECT id, 'blocked', IF(run_at > UTC_TIMESTAMP(6), 'scheduled', 'available'), 'unblocked', attempt, UTC_TIMESTAMP(6) \
         FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({list}) AND state = 'blocked'"
    ))
    .execute(&mut *conn)
    .await?;
    // language=MySQL
    sqlx::query(&format!(
        "UPDATE jobq_jobs FORCE INDEX (PRIMARY) \
            SET state = IF(run_at > UTC_TIMESTAMP(6), 'scheduled', 'available') \
          WHERE id IN ({list}) AND state = 'blocked'"
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Not-started jobs → `cancelled` with the reason, and their transitions.
async fn cancel_blocked(
    conn: &mut MySqlConnection,
    jobs: &[(u64, String)],
    actor: Option<&str>,
) -> Result<(), sqlx::Error> {
    for chunk in jobs.chunks(500) {
        let list = id_list(chunk.iter().map(|(id, _)| *id));
        let mut why = String::from("CASE id");
        for (id, w) in chunk {
            why.push_str(&format!(" WHEN {id} THEN {}", super::sql::text_lit(w)));
        }
        why.push_str(" END");
        // language=MySQL
        sqlx::query(&format!(
            "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, error, actor, at) \
             SELECT id, state, 'cancelled', 'cancelled', attempt, CONVERT({why} USING utf8mb4), ?, UTC_TIMESTAMP(6) \
             FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({list}) \
               AND state IN ('blocked', 'available', 'scheduled', 'waiting')"
        ))
        .bind(actor)
        .execute(&mut *conn)
        .await?;
        // language=MySQL
        sqlx::query(&format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) \
                SET state = 'cancelled', finalized_at = UTC_TIMESTAMP(6), \
                    last_error = CONVERT({why} USING utf8mb4) \
              WHERE id IN ({list}) AND state IN ('blocked', 'available', 'scheduled', 'waiting')"
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The jobs that `fail_fast` cancels because some of `ended` failed: every job of their
/// workflows (if those are `fail_fast`) that has not started. Returns them cancelled.
async fn fail_fast(
    conn: &mut MySqlConnection,
    ended: &[(u64, JobState)],
    actor: Option<&str>,
) -> Result<Vec<(u64, JobState)>, sqlx::Error> {
    let failed: Vec<u64> = ended
        .iter()
        .filter(|(_, s)| *s != JobState::Completed)
        .map(|(id, _)| *id)
        .collect();
    if failed.is_empty() {
        return Ok(Vec::new());
    }
    // language=MySQL
    // A workflow's fail_fast never changes: a plain read.
    let flows: Vec<(u64, u64)> = sqlx::query_as(&format!(
        "SELECT DISTINCT j.workflow_id, j.id FROM jobq_jobs j FORCE INDEX (PRIMARY) \
           JOIN jobq_workflows w ON w.id = j.workflow_id \
          WHERE j.id IN ({}) AND w.fail_fast AND w.state = 'running'",
        id_list(failed.iter().copied())
    ))
    .fetch_all(&mut *conn)
    .await?;
    let mut why: BTreeMap<u64, u64> = BTreeMap::new();
    for (flow, job) in flows {
        why.entry(flow).or_insert(job);
    }
    let mut cancel: Vec<(u64, String)> = Vec::new();
    for (flow, job) in why {
        // language=MySQL
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT j.id FROM jobq_workflow_jobs w JOIN jobq_jobs j FORCE INDEX (PRIMARY) ON j.id = w.job_id \
             WHERE w.workflow_id = ? AND j.state IN ('blocked', 'available', 'scheduled', 'waiting') \
               AND j.attempt = 0 ORDER BY j.id FOR UPDATE",
        )
        .bind(flow)
        .fetch_all(&mut *conn)
        .await?;
        let reason = format!("job {job} of workflow {flow} failed (fail_fast)");
        cancel.extend(ids.into_iter().map(|id| (id, reason.clone())));
    }
    cancel_blocked(conn, &cancel, actor).await?;
    Ok(cancel
        .into_iter()
        .map(|(id, _)| (id, JobState::Cancelled))
        .collect())
}

/// Counts `finals` off their workflows and ends the workflows whose every job has ended.
/// Returns the workflows that ended, with their state.
async fn count_in_workflows(
    conn: &mut MySqlConnection,
    finals: &[(u64, JobState)],
) -> Result<Vec<(u64, String)>, sqlx::Error> {
    if finals.is_empty() {
        return Ok(Vec::new());
    }
    // language=MySQL
    let members: Vec<(u64, u64)> = sqlx::query_as(&format!(
        "SELECT id, workflow_id FROM jobq_jobs FORCE INDEX (PRIMARY) \
         WHERE id IN ({}) AND workflow_id IS NOT NULL",
        id_list(finals.iter().map(|(id, _)| *id))
    ))
    .fetch_all(&mut *conn)
    .await?;
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let state: BTreeMap<u64, JobState> = finals.iter().copied().collect();
    // workflow → (completed, discarded, cancelled)
    let mut counts: BTreeMap<u64, [u32; 3]> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (job, flow) in members {
        if !seen.insert(job) {
            continue;
        }
        let c = counts.entry(flow).or_default();
        match state[&job] {
            JobState::Completed => c[0] += 1,
            JobState::Discarded => c[1] += 1,
            _ => c[2] += 1,
        }
    }
    let mut ended = Vec::new();
    for (flow, [completed, discarded, cancelled]) in counts {
        // language=MySQL
        // The workflow's row is locked by this UPDATE until the commit: its members' endings
        // count one after another. It ends when every job has: completed if all completed,
        // else failed (a cancel by the workflow act has already set `cancelled`). State and
        // end time come first in the SET list, computed from the old counters plus this
        // ending's: the same on servers that assign left to right and on those that assign
        // simultaneously (MariaDB's SIMULTANEOUS_ASSIGNMENT).
        let all = completed + discarded + cancelled;
        sqlx::query(
            "UPDATE jobq_workflows \
                SET state = IF(state = 'running' AND completed + discarded + cancelled + ? >= jobs, \
                               IF(completed + ? >= jobs, 'completed', 'failed'), state), \
                    finished_at = IF(finished_at IS NULL AND completed + discarded + cancelled + ? >= jobs, \
                                     UTC_TIMESTAMP(6), finished_at), \
                    completed = completed + ?, discarded = discarded + ?, cancelled = cancelled + ? \
              WHERE id = ?",
        )
        .bind(all)
        .bind(completed)
        .bind(all)
        .bind(completed)
        .bind(discarded)
        .bind(cancelled)
        .bind(flow)
        .execute(&mut *conn)
        .await?;
        // language=MySQL
        let now: Option<(String, bool)> = sqlx::query_as(
            "SELECT CAST(state AS CHAR), finished_at IS NOT NULL FROM jobq_workflows WHERE id = ?",
        )
        .bind(flow)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((state, true)) = now {
            ended.push((flow, state));
        }
    }
    Ok(ended)
}

fn decode(e: String) -> sqlx::Error {
    sqlx::Error::Decode(e.into())
}

/// One parent of a job, as [`parents_of`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ParentRow {
    pub(crate) id: u64,
    pub(crate) name: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
}

/// The parents of job `child`: their workflow names, how they ended, results and errors.
pub(crate) async fn parents_of(
    pool: &sqlx::MySqlPool,
    child: u64,
) -> Result<Vec<ParentRow>, sqlx::Error> {
    // language=MySQL
    // By jobq_deps_child; a parent pruned since is still an edge (its state kept there).
    sqlx::query_as(
        "SELECT d.parent_id AS id, CAST(w.name AS CHAR) AS name, CAST(d.parent_state AS CHAR) AS state, \
                CAST(p.result AS CHAR) AS result, CAST(p.last_error AS CHAR) AS error \
         FROM jobq_deps d FORCE INDEX (jobq_deps_child) \
         LEFT JOIN jobq_workflow_jobs w ON w.job_id = d.parent_id \
         LEFT JOIN jobq_jobs p ON p.id = d.parent_id \
         WHERE d.child_id = ? ORDER BY d.parent_id",
    )
    .bind(child)
    .fetch_all(pool)
    .await
}
