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

use jobq_producer::deps::{ChildMove, Ended, FlowCounts, Rules};
use jobq_producer::{JobState, OnParentFailure};
use sqlx::MySqlConnection;

use super::sql::id_list;

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
    rules: Rules,
) -> Result<Settled, sqlx::Error> {
    settle_with(conn, ended, actor, rules, true).await
}

/// [`settle`]; with `count_ended` false, the jobs `ended` are not counted in their workflows
/// (the repair pass: they were counted when they ended), only what their settling ends.
pub(super) async fn settle_with(
    conn: &mut MySqlConnection,
    ended: &[(u64, JobState)],
    actor: Option<&str>,
    rules: Rules,
    count_ended: bool,
) -> Result<Settled, sqlx::Error> {
    let mut out = Settled::default();
    let mut finals: Vec<(u64, JobState)> = Vec::new();
    let mut frontier: Vec<(u64, JobState)> = ended.to_vec();
    let mut first = true;
    while !frontier.is_empty() {
        if count_ended || !first {
            finals.extend(frontier.iter().copied());
        }
        first = false;
        let mut next = resolve(conn, &frontier, actor, rules, &mut out).await?;
        next.extend(fail_fast(conn, &frontier, actor).await?);
        out.cancelled.extend(next.iter().map(|(id, _)| *id));
        frontier = next;
    }
    out.workflows_ended = count_in_workflows(conn, &finals, rules).await?;
    Ok(out)
}

/// One round: the edges of `parents` are resolved and their children moved. Returns the
/// children it cancelled (their own children are the next round's).
async fn resolve(
    conn: &mut MySqlConnection,
    parents: &[(u64, JobState)],
    actor: Option<&str>,
    rules: Rules,
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
    // Statements over id lists are grouped by the value they set and cut to CHUNK ids, so a
    // fan-out of any width costs linear work (a CASE over N ids evaluated for N rows would
    // not) and no statement's IN list grows past what the optimiser ranges over.
    let mut by_state: BTreeMap<JobState, Vec<u64>> = BTreeMap::new();
    for (id, state) in &ended {
        by_state.entry(*state).or_default().push(*id);
    }
    for (state, ids) in &by_state {
        for chunk in ids.chunks(CHUNK) {
            // language=MySQL
            sqlx::query(&format!(
                "UPDATE jobq_deps SET parent_state = '{state}', resolved_at = UTC_TIMESTAMP(6) \
                 WHERE parent_id IN ({}) AND resolved_at IS NULL",
                id_list(chunk.iter().copied())
            ))
            .execute(&mut *conn)
            .await?;
        }
    }
    let mut ends: BTreeMap<u64, Vec<Ended>> = BTreeMap::new();
    for (parent, child, policy) in &edges {
        let policy: OnParentFailure = policy.parse().map_err(decode)?;
        ends.entry(*child)
            .or_default()
            .push((*parent, ended[parent], policy));
    }
    let children: Vec<u64> = ends.keys().copied().collect();
    let mut release = Vec::new();
    let mut cancel: Vec<(u64, String)> = Vec::new();
    // Children in ascending ids, a chunk at a time: each counts its resolved edges off under
    // its row lock, never below zero whatever a hand edit left, then is read back locked.
    for chunk in children.chunks(CHUNK) {
        // language=MySQL
        // Locked in ascending ids first: the grouped UPDATEs below then change rows this
        // transaction holds, and two endings that share children lock them in one order.
        sqlx::query(&format!(
            "SELECT id FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({}) ORDER BY id FOR UPDATE",
            id_list(chunk.iter().copied())
        ))
        .fetch_all(&mut *conn)
        .await?;
        let mut by_count: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for c in chunk {
            by_count.entry(ends[c].len()).or_default().push(*c);
        }
        for (n, ids) in &by_count {
            // language=MySQL
            sqlx::query(&format!(
                "UPDATE jobq_jobs FORCE INDEX (PRIMARY) \
                    SET pending_parents = GREATEST(CAST(pending_parents AS SIGNED) - {n}, 0) \
                  WHERE id IN ({}) ORDER BY id",
                id_list(ids.iter().copied())
            ))
            .execute(&mut *conn)
            .await?;
        }
        // language=MySQL
        // With each child, whether its workflow was cancelled (a plain read of that row: the
        // workflow is locked only when counting, after the jobs).
        let rows: Vec<(u64, String, u32, Option<u64>)> = sqlx::query_as(&format!(
            "SELECT id, CAST(state AS CHAR), pending_parents, \
                    (SELECT w.id FROM jobq_workflows w WHERE w.id = jobq_jobs.workflow_id AND w.state = 'cancelled') \
             FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({}) FOR UPDATE",
            id_list(chunk.iter().copied())
        ))
        .fetch_all(&mut *conn)
        .await?;
        for (id, state, pending, cancelled_flow) in rows {
            let state: JobState = state.parse().map_err(decode)?;
            match ((rules.child)(state, pending, &ends[&id]), cancelled_flow) {
                (ChildMove::Stay, _) => {}
                // A cancelled workflow's job is never released: cancelled with it instead.
                (ChildMove::Release, Some(flow)) => {
                    cancel.push((id, format!("its workflow {flow} was cancelled")))
                }
                (ChildMove::Release, None) => release.push(id),
                (ChildMove::Cancel(why), _) => cancel.push((id, why)),
            }
        }
    }
    unblock(conn, &release, actor).await?;
    out.released.extend(&release);
    cancel_blocked(conn, &cancel, actor).await?;
    Ok(cancel
        .into_iter()
        .map(|(id, _)| (id, JobState::Cancelled))
        .collect())
}

/// Ids per statement of the settling writes.
const CHUNK: usize = 1000;

/// `blocked` → `available`, or `scheduled` when its run-at is later, with the `unblocked`
/// transitions (`actor`: who released them, `None` for a parent's ending). The clock is read
/// once, so a run-at passing between the statements cannot make history and row disagree.
pub(super) async fn unblock(
    conn: &mut MySqlConnection,
    ids: &[u64],
    actor: Option<&str>,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    // language=MySQL
    sqlx::query("SET @jobq_unblocked_at := UTC_TIMESTAMP(6)")
        .execute(&mut *conn)
        .await?;
    for chunk in ids.chunks(CHUNK) {
        let list = id_list(chunk.iter().copied());
        // language=MySQL
        // The transition rows first, while the rows still say `blocked`: from → to is read
        // from the row itself, so history and row agree.
        sqlx::query(&format!(
            "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, actor, at) \
             SELECT id, 'blocked', IF(run_at > @jobq_unblocked_at, 'scheduled', 'available'), 'unblocked', attempt, ?, @jobq_unblocked_at \
             FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({list}) AND state = 'blocked'"
        ))
        .bind(actor)
        .execute(&mut *conn)
        .await?;
        // language=MySQL
        sqlx::query(&format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) \
                SET state = IF(run_at > @jobq_unblocked_at, 'scheduled', 'available') \
              WHERE id IN ({list}) AND state = 'blocked'"
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Not-started jobs → `cancelled` with the reason, and their transitions.
async fn cancel_blocked(
    conn: &mut MySqlConnection,
    jobs: &[(u64, String)],
    actor: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut by_reason: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (id, why) in jobs {
        by_reason.entry(why.as_str()).or_default().push(*id);
    }
    for (why, ids) in by_reason {
        let why = super::sql::text_lit(why);
        for chunk in ids.chunks(CHUNK) {
            let list = id_list(chunk.iter().copied());
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
        // The candidates by a plain read, then locked in id order, waiting for a row another
        // transaction holds (a sibling's ending that is releasing it): that job is then
        // cancelled as released, unless a claim started it meanwhile. Two endings of one
        // workflow can deadlock here; the server rolls one back and its writer retries it.
        let candidates: Vec<u64> = sqlx::query_scalar(
            "SELECT j.id FROM jobq_workflow_jobs w JOIN jobq_jobs j FORCE INDEX (PRIMARY) ON j.id = w.job_id \
             WHERE w.workflow_id = ? AND j.state IN ('blocked', 'available', 'scheduled', 'waiting') \
               AND j.attempt = 0",
        )
        .bind(flow)
        .fetch_all(&mut *conn)
        .await?;
        if candidates.is_empty() {
            continue;
        }
        // language=MySQL
        let ids: Vec<u64> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({}) \
               AND state IN ('blocked', 'available', 'scheduled', 'waiting') AND attempt = 0 \
             ORDER BY id FOR UPDATE",
            id_list(candidates.iter().copied())
        ))
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

/// Counts `finals` off their workflows; a workflow whose last job this is ends, and its
/// callbacks are enqueued. Returns the workflows that ended, with their state.
async fn count_in_workflows(
    conn: &mut MySqlConnection,
    finals: &[(u64, JobState)],
    rules: Rules,
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
    // workflow → [completed, discarded, cancelled] ended now
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
    for (flow, now) in counts {
        // language=MySQL
        // Locked until the commit (ascending ids): its members' endings count one after
        // another, so exactly one of them sees the last job end.
        let row: Option<(u32, u32, u32, u32, String, bool)> = sqlx::query_as(
            "SELECT jobs, completed, discarded, cancelled, CAST(state AS CHAR), finished_at IS NOT NULL \
             FROM jobq_workflows WHERE id = ? FOR UPDATE",
        )
        .bind(flow)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((jobs, completed, discarded, cancelled, st, finished)) = row else {
            continue;
        };
        let before = FlowCounts {
            jobs,
            completed,
            discarded,
            cancelled,
            state: st.parse().map_err(decode)?,
            finished,
        };
        let after = (rules.flow)(before, now);
        let c = after.counts;
        // language=MySQL
        sqlx::query(
            "UPDATE jobq_workflows SET completed = ?, discarded = ?, cancelled = ?, state = ?, \
                    finished_at = IF(?, COALESCE(finished_at, UTC_TIMESTAMP(6)), finished_at) \
              WHERE id = ?",
        )
        .bind(c.completed)
        .bind(c.discarded)
        .bind(c.cancelled)
        .bind(c.state.as_str())
        .bind(c.finished)
        .bind(flow)
        .execute(&mut *conn)
        .await?;
        if !after.callbacks.is_empty() {
            enqueue_callbacks(conn, flow, &after.callbacks).await?;
            ended.push((flow, c.state.as_str().to_owned()));
        }
    }
    Ok(ended)
}

/// Inserts workflow `flow`'s callback jobs for `on` (each at most once: its `job_id` is set
/// when it is), with their `enqueued` transitions.
async fn enqueue_callbacks(
    conn: &mut MySqlConnection,
    flow: u64,
    on: &[jobq_producer::deps::Callback],
) -> Result<(), sqlx::Error> {
    for cb in on {
        // language=MySQL
        // One by one, by LAST_INSERT_ID: at most three per workflow.
        let inserted = sqlx::query(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, priority, run_at, max_attempts, created_at, concurrency_key, \
                                    traceparent, tracestate) \
             SELECT queue, kind, payload, 'available', priority, UTC_TIMESTAMP(6), max_attempts, UTC_TIMESTAMP(6), concurrency_key, \
                    traceparent, tracestate \
             FROM jobq_callbacks WHERE workflow_id = ? AND on_event = ? AND job_id IS NULL",
        )
        .bind(flow)
        .bind(cb.as_str())
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() != 1 {
            continue;
        }
        let id = inserted.last_insert_id();
        // language=MySQL
        sqlx::query("UPDATE jobq_callbacks SET job_id = ? WHERE workflow_id = ? AND on_event = ?")
            .bind(id)
            .bind(flow)
            .bind(cb.as_str())
            .execute(&mut *conn)
            .await?;
        // language=MySQL
        sqlx::query(
            "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
             VALUES (?, NULL, 'available', 'enqueued', 0, UTC_TIMESTAMP(6))",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) fn decode(e: String) -> sqlx::Error {
    sqlx::Error::Decode(e.into())
}

/// Settles jobs a claim discarded because it could not read their rows (`claim_write.rs`
/// writes those in the claim's own statements, which cannot settle): in a transaction of
/// their own on `conn`, right after the claim's commit. If this fails, the repair pass still
/// settles their blocked children; only their workflows' counters miss them.
pub(crate) async fn settle_discarded(
    conn: &mut MySqlConnection,
    ids: &[u64],
    rules: Rules,
) -> Result<Settled, sqlx::Error> {
    use sqlx::Connection;
    let ended: Vec<(u64, JobState)> = ids.iter().map(|&id| (id, JobState::Discarded)).collect();
    let mut tx = conn.begin().await?;
    let settled = settle(&mut tx, &ended, None, rules).await?;
    tx.commit().await?;
    crate::metrics::workflows_finished(&settled.workflows_ended);
    Ok(settled)
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
