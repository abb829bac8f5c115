//! Writing how an attempt ended: the single-job write (in the handler's transaction or a fresh
//! one) and the batched completions. Every write is fenced by `(id, claim_token)` and
//! `state = 'running'`.

use jobq_sqlkit::TxError;
use sqlx::{MySqlConnection, MySqlPool};

use super::sql::{hex, id_list, RawTx};
use super::{micros, Fence};
use crate::ids::WorkerId;
use crate::model::{CancelRule, Decision};

/// The savepoint [`mark_tx`] takes when a handler's transaction begins.
// language=MySQL
const TX_MARK: &str = "SAVEPOINT jobq_handler_tx";

/// Marks a handler's transaction as the one jobq began: a savepoint, which the server drops
/// with the transaction if it ends it early (an implicit commit, a deadlock's rollback).
pub(crate) async fn mark_tx(conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute(sqlx::raw_sql(TX_MARK)).await?;
    Ok(())
}

/// Whether the handler's transaction is still the one [`mark_tx`] marked. `false` when the
/// server already ended it: the handler's later writes were autocommitted, so completing the
/// job in "its" transaction would no longer be exactly once.
pub(crate) async fn tx_intact(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Executor;
    // language=MySQL
    match conn
        .execute(sqlx::raw_sql("RELEASE SAVEPOINT jobq_handler_tx"))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if crate::error::is_number(&e, crate::error::codes::NO_SUCH_SAVEPOINT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The state of the job `fence` names, if it still carries that claim's token: how a writer
/// whose COMMIT's answer was lost finds out whether it landed (`completed` with the token: it
/// did; `running`: it did not; `None`: the job moved on, taken back or pruned).
pub(crate) async fn state_by_fence(
    pool: &MySqlPool,
    fence: Fence,
) -> Result<Option<String>, sqlx::Error> {
    // language=MySQL
    // A locking read: it waits for a COMMIT still landing on the row, so it never reports
    // `running` for a completion that is about to commit.
    sqlx::query_scalar(
        "SELECT CAST(state AS CHAR) FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id = ? AND claim_token = ? \
         LOCK IN SHARE MODE",
    )
    .bind(fence.id)
    .bind(&fence.token[..])
    .fetch_optional(pool)
    .await
}

/// Which of `ids` a claim with `token` holds (`running` with that token): one read by primary
/// key that tells a claim that committed from one that did not.
pub(crate) async fn held_by_claim(
    pool: &MySqlPool,
    ids: &[u64],
    token: super::Token,
) -> Result<Vec<u64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // language=MySQL
    sqlx::query_scalar(&format!(
        "SELECT id FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({}) AND claim_token = {} AND state = 'running'",
        super::sql::id_list(ids.iter().copied()),
        super::sql::hex(&token)
    ))
    .fetch_all(pool)
    .await
}

/// Which of `fences`' jobs are `completed` under their claim's token: after a batch completed
/// fewer jobs than it carried, tells the ones it wrote from the ones taken back meanwhile.
pub(crate) async fn completed_with_token(
    pool: &MySqlPool,
    fences: &[Fence],
) -> Result<Vec<u64>, sqlx::Error> {
    if fences.is_empty() {
        return Ok(Vec::new());
    }
    let pairs = fence_pairs(fences);
    // language=MySQL
    sqlx::query_scalar(&format!(
        "SELECT id FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({}) AND (id, claim_token) IN ({pairs}) \
         AND state = 'completed'",
        id_list(fences.iter().map(|f| f.id)),
    ))
    .fetch_all(pool)
    .await
}

/// `(id, token),…` of `fences`, for a `(id, claim_token) IN (…)` fence.
fn fence_pairs(fences: &[Fence]) -> String {
    let mut pairs = String::new();
    for (i, f) in fences.iter().enumerate() {
        if i > 0 {
            pairs.push(',');
        }
        pairs.push_str(&format!("({},{})", f.id, hex(&f.token)));
    }
    pairs
}

/// Marks many jobs `completed` in one transaction and one round trip: one UPDATE fenced per
/// job by `(id, claim_token)`, one INSERT … SELECT of their transitions, COMMIT. Jobs whose
/// fence no longer matches (rescued meanwhile) are left alone. Returns how many were completed.
pub(crate) async fn complete_batch(
    pool: &MySqlPool,
    fences: &[Fence],
    results: &[(u64, String)],
) -> Result<u64, sqlx::Error> {
    if fences.is_empty() {
        return Ok(0);
    }
    let sql = format!("{}; COMMIT", completion_sql(fences, results));
    let mut conn = pool.acquire().await?;
    // One round trip: the guard's begin sends START TRANSACTION with the whole batch; `end`
    // only marks it closed, the COMMIT having been part of the batch.
    let (tx, (_, counts)) = RawTx::begin(&mut conn, &sql).await?;
    tx.committed();
    // Counts: START TRANSACTION, then the completion statements, then COMMIT.
    Ok(counts.get(1 + COMPLETION_UPDATE).copied().unwrap_or(0))
}

/// Which of [`completion_sql`]'s statements is the UPDATE (its count is the jobs completed).
pub(super) const COMPLETION_UPDATE: usize = 1;

/// The statements that complete `fences` inside an open transaction (no COMMIT), storing the
/// `results` (job id, JSON text) of those that have one: shared by the completer's own
/// transaction and a claim that carries completions (`claim.rs`). These are jobs claimed
/// without dependents or workflow: one that got a dependent while it ran (`dependents > 0`)
/// is left alone like a job taken back, and [`complete_linked`] completes it.
pub(super) fn completion_sql(fences: &[Fence], results: &[(u64, String)]) -> String {
    completion_statements(fences, results, "AND dependents = 0")
}

fn completion_statements(fences: &[Fence], results: &[(u64, String)], guard: &str) -> String {
    let ids = id_list(fences.iter().map(|f| f.id));
    let pairs = fence_pairs(fences);
    // language=MySQL
    // `id IN (…)` gives a primary-key range on every server; `(id, claim_token) IN (…)` fences
    // each job by its own token. The INSERT finds exactly the rows this UPDATE completed (same
    // token, same finalized_at): if a COMMIT succeeded but its answer was lost and the batch is
    // retried, the UPDATE matches nothing and no second `completed` transition is written.
    // Results are spliced as hex literals of their UTF-8 text (nothing in them can end the
    // literal), converted to text for the JSON column.
    let mut result = String::new();
    if !results.is_empty() {
        result.push_str(", result = CASE id");
        for (id, json) in results {
            result.push_str(&format!(
                " WHEN {id} THEN CONVERT({} USING utf8mb4)",
                super::sql::text_lit(json)
            ));
        }
        result.push_str(" ELSE result END");
    }
    format!(
        "SET @jobq_done_at := UTC_TIMESTAMP(6); \
         UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'completed', finalized_at = @jobq_done_at, lease_expires_at = NULL{result} \
         WHERE id IN ({ids}) AND (id, claim_token) IN ({pairs}) AND state = 'running' {guard}; \
         INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
         SELECT id, 'running', 'completed', 'completed', attempt, worker_id, finalized_at \
         FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND (id, claim_token) IN ({pairs}) \
           AND state = 'completed' AND finalized_at = @jobq_done_at"
    )
}

/// Completes one job that a batch left alone because it got a dependent while it ran, in a
/// transaction that also settles its dependents. False when the job is no longer this
/// claim's (taken back meanwhile): nothing written.
pub(crate) async fn complete_linked(
    pool: &MySqlPool,
    fence: Fence,
    result: Option<&str>,
    rules: jobq_producer::deps::Rules,
) -> Result<bool, TxError> {
    let results: Vec<(u64, String)> = result
        .map(|r| (fence.id, r.to_owned()))
        .into_iter()
        .collect();
    let sql = completion_statements(&[fence], &results, "");
    let mut tx = super::begin(pool).await?;
    let done = async {
        let (_, counts) = super::sql::batch(&mut tx, &sql).await?;
        if counts.get(COMPLETION_UPDATE).copied().unwrap_or(0) != 1 {
            return Ok(None);
        }
        super::deps::settle(
            &mut tx,
            &[(fence.id, jobq_producer::JobState::Completed)],
            None,
            rules,
        )
        .await
        .map(Some)
    }
    .await;
    match done {
        Ok(done) => {
            tx.commit().await?;
            if let Some(settled) = &done {
                crate::metrics::workflows_finished(&settled.workflows_ended);
            }
            Ok(done.is_some())
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e.into())
        }
    }
}

/// One attempt's outcome for one job, as decided by `machine/attempt.rs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FinishWrite<'a> {
    pub(crate) fence: Fence,
    /// The attempt that ended.
    pub(crate) attempt: u32,
    pub(crate) worker: &'a WorkerId,
    pub(crate) decision: &'a Decision,
    /// The handler's result (JSON text), stored with a completion.
    pub(crate) result: Option<&'a str>,
    /// What to write instead when an operator asked to cancel the job while it ran.
    pub(crate) on_cancel: CancelRule,
    /// Whether the claim read the job as having dependents or a workflow: its ending is then
    /// settled (`deps.rs`). One claimed without them is written only while it still has none;
    /// a dependent added while it ran is found by that guard, and the ending settled too.
    pub(crate) linked: bool,
    /// What its dependents and workflow do when it ends (`jobq_producer::deps::RULES`).
    pub(crate) rules: jobq_producer::deps::Rules,
}

/// Applies a decision to one running job through `conn` (the handler's transaction for a
/// completion, or a fresh one). Returns `None`, writing nothing, when the fence does not
/// match; else the workflows its ending ended (`(id, state)`, for the metrics once the caller
/// has committed).
pub(crate) async fn finish(
    conn: &mut MySqlConnection,
    w: FinishWrite<'_>,
) -> Result<Option<Vec<(u64, String)>>, sqlx::Error> {
    // An operator asked to cancel this job while it ran: `on_cancel` says what to write instead.
    // Read under the row's lock, so a request cannot slip in between; not read for a decision
    // that finishes the job, which no request changes.
    let overridden;
    let mut d = w.decision;
    if !d.to.is_final() {
        // language=MySQL
        let by: Option<Option<String>> = sqlx::query_scalar(
            "SELECT CAST(cancel_requested_by AS CHAR) FROM jobq_jobs \
             WHERE id = ? AND claim_token = ? AND state = 'running' \
               AND cancel_requested_at IS NOT NULL FOR UPDATE",
        )
        .bind(w.fence.id)
        .bind(&w.fence.token[..])
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(by) = by {
            if let Some(o) = (w.on_cancel)(d, by.as_deref().unwrap_or("an operator")) {
                overridden = o;
                d = &overridden;
            }
        }
    }
    let mut updated = write_decision(conn, &w, d, w.linked).await?;
    let mut linked = w.linked;
    if updated == 0 && !linked {
        // A dependent added while the job ran: the guard left it alone; written now, settled
        // below.
        updated = write_decision(conn, &w, d, true).await?;
        linked = true;
    }
    if updated != 1 {
        return Ok(None);
    }
    // language=MySQL
    // The actor of a cancel is the operator who asked for it, if one did (`jobq cancel`).
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, error, actor, at) \
         VALUES (?, 'running', ?, ?, ?, ?, ?, \
                 IF(? = 'cancelled', (SELECT cancel_requested_by FROM jobq_jobs WHERE id = ?), NULL), \
                 UTC_TIMESTAMP(6))",
    )
    .bind(w.fence.id)
    .bind(d.to.as_str())
    .bind(d.event.as_str())
    .bind(w.attempt)
    .bind(w.worker.as_str())
    .bind(d.error.as_deref())
    .bind(d.event.as_str())
    .bind(w.fence.id)
    .execute(&mut *conn)
    .await?;
    if linked && d.to.is_final() {
        let settled = super::deps::settle(conn, &[(w.fence.id, d.to)], None, w.rules).await?;
        return Ok(Some(settled.workflows_ended));
    }
    Ok(Some(Vec::new()))
}

/// The UPDATE of [`finish`]: the decision, fenced; with `any_dependents` false, only if the
/// job still has no dependents. Returns the rows changed (0 or 1).
async fn write_decision(
    conn: &mut MySqlConnection,
    w: &FinishWrite<'_>,
    d: &Decision,
    any_dependents: bool,
) -> Result<u64, sqlx::Error> {
    // language=MySQL
    // run_at moves only for retryable/scheduled (a delay); max_attempts grows by one when the
    // attempt is refunded (snooze, shutdown release) so it does not count against the job,
    // saturating at the column's maximum (the sum is computed as BIGINT, so LEAST sees it).
    // A decision that does not end the job needs no guard: nothing settles then.
    Ok(sqlx::query(
        "UPDATE jobq_jobs SET state = ?, \
                run_at = IF(? IS NULL, run_at, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND), \
                max_attempts = LEAST(max_attempts + ?, 4294967295), \
                last_error = COALESCE(?, last_error), \
                finalized_at = IF(?, UTC_TIMESTAMP(6), NULL), \
                lease_expires_at = NULL, result = COALESCE(?, result) \
         WHERE id = ? AND claim_token = ? AND state = 'running' AND (? OR dependents = 0)",
    )
    .bind(d.to.as_str())
    .bind(d.delay.map(micros))
    .bind(d.delay.map(micros).unwrap_or(0))
    .bind(u32::from(d.refund_attempt))
    .bind(d.error.as_deref())
    .bind(d.to.is_final())
    .bind(w.result)
    .bind(w.fence.id)
    .bind(&w.fence.token[..])
    .bind(any_dependents || !d.to.is_final())
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// [`finish`] in its own transaction. Cut off (its future dropped by the caller's deadline),
/// the transaction's connection is closed, which rolls it back.
pub(crate) async fn finish_tx(pool: &MySqlPool, w: FinishWrite<'_>) -> Result<bool, TxError> {
    let mut tx = super::begin(pool).await?;
    match finish(&mut tx, w).await {
        Ok(applied) => {
            tx.commit().await?;
            if let Some(ended) = &applied {
                crate::metrics::workflows_finished(ended);
            }
            Ok(applied.is_some())
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e.into())
        }
    }
}
