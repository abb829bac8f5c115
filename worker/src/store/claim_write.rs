//! The claim's final round trip: the writes a [`ClaimPlan`] lists, the `COMMIT`, and the
//! confirmation read after it (then `RELEASE_LOCK` in named-lock mode); and [`ClaimError`],
//! which tells a claim that surely did not commit from one whose outcome is unknown or that
//! lost a race to another node.

use sqlx::mysql::MySqlRow;
use sqlx::Row;

use super::claim::{ClaimLock, ClaimTx};
use super::keys::{promote_sql, store_windows_sql};
use super::micros;
use super::sql::{hex, id_list, lit, text_lit, Session};
use crate::model::{ClaimPlan, ClaimedJob};

/// Why a claim failed.
#[derive(Debug)]
pub(crate) enum ClaimError {
    /// Before its final round trip: rolled back (or its session discarded), nothing committed.
    Failed(sqlx::Error),
    /// Its final round trip failed or ended without the confirmation: the COMMIT may have been
    /// applied without the answer arriving (the server may have answered the statements before
    /// it and then failed — the named-lock release after it, a kill, a shutdown — or not
    /// answered at all). `source` is `None` when the answer simply lacked the confirmation.
    Unknown {
        source: Option<sqlx::Error>,
        /// The jobs it would have started: the caller gives them back, fenced by the claim's
        /// token, which changes nothing if the claim did not commit (`machine::attempt::unstarted`).
        maybe_claimed: Vec<ClaimedJob>,
    },
    /// It lost a race to another node of a multi-primary cluster: `got` of the `expected` jobs
    /// it read carry its token (row locks are node-local). None of its handlers may start; the
    /// jobs go back fenced as above, and the claim is retried at once.
    Conflict {
        expected: u64,
        got: u64,
        /// How `got` was seen: `true` the UPDATE's count (the confirmation matched), `false`
        /// the confirmation's.
        by_update: bool,
        maybe_claimed: Vec<ClaimedJob>,
    },
}

impl ClaimError {
    /// The database error, if the failure was one.
    pub(crate) fn sql(&self) -> Option<&sqlx::Error> {
        match self {
            ClaimError::Failed(e) => Some(e),
            ClaimError::Unknown { source, .. } => source.as_ref(),
            ClaimError::Conflict { .. } => None,
        }
    }

    /// The jobs the claim may have started (none when it surely did not commit).
    pub(crate) fn into_maybe_claimed(self) -> Vec<ClaimedJob> {
        match self {
            ClaimError::Failed(_) => Vec::new(),
            ClaimError::Unknown { maybe_claimed, .. }
            | ClaimError::Conflict { maybe_claimed, .. } => maybe_claimed,
        }
    }
}

impl From<sqlx::Error> for ClaimError {
    fn from(e: sqlx::Error) -> Self {
        ClaimError::Failed(e)
    }
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Failed(e) => write!(f, "{e}"),
            ClaimError::Unknown { source: Some(e), .. } => {
                write!(f, "the claim's final round trip failed; its outcome is unknown: {e}")
            }
            ClaimError::Unknown { source: None, .. } => f.write_str(
                "the claim's round trip ended without the COMMIT's confirmation; its outcome is unknown",
            ),
            ClaimError::Conflict {
                expected,
                got,
                by_update: true,
                ..
            } => write!(
                f,
                "the claim lost a conflict to another node: it updated {got} of the {expected} jobs it read"
            ),
            ClaimError::Conflict { expected, got, .. } => write!(
                f,
                "the claim lost a conflict to another node: {got} of the {expected} jobs it read carry its token"
            ),
        }
    }
}

impl std::error::Error for ClaimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.sql().map(|e| e as _)
    }
}

/// A claim that committed.
#[derive(Debug)]
pub(crate) struct Committed {
    /// In named-lock mode, whether `RELEASE_LOCK` released (always true otherwise).
    pub(crate) released: bool,
}

impl<S: Session> ClaimTx<'_, '_, S> {
    /// Round trip 3: writes `plan`, commits, and confirms. The starts are guarded by
    /// `state = 'available'` (always true under the locks taken) and their transitions written
    /// for exactly the rows that now carry this claim's token.
    pub(crate) async fn commit(self, plan: &ClaimPlan) -> Result<Committed, ClaimError> {
        let ClaimTx { tx, opening, token } = self;
        let q = lit(opening.queue);
        // With limits in play, starts are stamped with the clock read after the locks (the time
        // the rate windows were charged at), so the transitions show exactly what was counted.
        let at = if plan.at_lock_clock {
            "@jobq_now"
        } else {
            "UTC_TIMESTAMP(6)"
        };
        let mut writes = Vec::new();
        let tok = hex(&token);
        if !plan.start.is_empty() {
            let ids = id_list(plan.start.iter().map(|j| j.id));
            // language=MySQL
            // The attempt saturates: a row written by another program with attempt = 2^32-1
            // must not make every claim of its queue fail.
            writes.push(format!(
                "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'running', attempt = LEAST(attempt + 1, 4294967295), claim_token = {tok}, \
                        worker_id = {worker}, attempted_at = {at}, cancel_requested_at = NULL, cancel_requested_by = NULL, \
                        lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND \
                 WHERE id IN ({ids}) AND state = 'available'; \
                 INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
                 SELECT id, 'available', 'running', 'claimed', attempt, worker_id, attempted_at \
                 FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND claim_token = {tok}",
                worker = lit(opening.worker),
                lease_us = micros(opening.lease),
            ));
        }
        if !plan.wait.is_empty() {
            let ids = id_list(plan.wait.iter().copied());
            // language=MySQL
            // Out of the claim index until a job of the key stops running (keys.rs promotes it).
            writes.push(format!(
                "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'waiting' WHERE id IN ({ids}) AND state = 'available'; \
                 INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
                 SELECT id, 'available', 'waiting', 'throttled', attempt, {at} \
                 FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND state = 'waiting'"
            ));
        }
        if !plan.defer.is_empty() {
            let ids = id_list(plan.defer.iter().map(|d| d.id));
            let cases: String = plan
                .defer
                .iter()
                .map(|d| format!(" WHEN {} THEN {}", d.id, d.at_us))
                .collect();
            // language=MySQL
            // Deferred by the key's rate limit: scheduled for when the limiter expects a permit;
            // maintenance makes them available then, and the claim checks the limit again.
            writes.push(format!(
                "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'scheduled', \
                        run_at = TIMESTAMP'1970-01-01 00:00:00' + INTERVAL (CASE id{cases} END) MICROSECOND \
                 WHERE id IN ({ids}) AND state = 'available'; \
                 INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
                 SELECT id, 'available', 'scheduled', 'throttled', attempt, {at} \
                 FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND state = 'scheduled'"
            ));
        }
        if !plan.promote.is_empty() {
            writes.push(promote_sql(&id_list(plan.promote.iter().copied())));
        }
        if !plan.discard.is_empty() {
            let ids = id_list(plan.discard.iter().map(|d| d.id));
            let cases: String = plan
                .discard
                .iter()
                .map(|d| format!(" WHEN {} THEN {}", d.id, text_lit(&d.reason)))
                .collect();
            // language=MySQL
            // Rows the claim could not decode (locked by its read): discarded with the reason, so
            // the queue's next claims do not read them again. The attempt is not counted.
            writes.push(format!(
                "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'discarded', finalized_at = UTC_TIMESTAMP(6), \
                        last_error = CONVERT(CASE id{cases} END USING utf8mb4) \
                 WHERE id IN ({ids}) AND state = 'available'; \
                 INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, error, at) \
                 SELECT id, 'available', 'discarded', 'discarded', attempt, last_error, finalized_at \
                 FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND state = 'discarded'"
            ));
        }
        if !plan.key_windows.is_empty() {
            writes.push(store_windows_sql(opening.queue, &plan.key_windows));
        }
        if let Some(w) = &plan.queue_window {
            // language=MySQL
            writes.push(format!(
                "UPDATE jobq_queues SET rate_state = {} WHERE name = {q}",
                text_lit(w)
            ));
        }
        // The confirmation counts the jobs that carry this claim's token now: all of them if
        // the claim committed. (On a Galera node a transaction aborted by a replicated conflict
        // has been seen to answer its later statements, COMMIT included, as if nothing
        // happened; this read, after the COMMIT, sees what actually committed.)
        let (confirm, expected) = if plan.start.is_empty() {
            ("SELECT CAST(1 AS SIGNED) AS committed".to_owned(), 1)
        } else {
            (
                format!(
                    "SELECT COUNT(*) AS committed FROM jobq_jobs FORCE INDEX (PRIMARY) \
                     WHERE id IN ({}) AND claim_token = {tok}",
                    id_list(plan.start.iter().map(|j| j.id))
                ),
                plan.start.len() as u64,
            )
        };
        let release = match opening.lock {
            ClaimLock::SkipLocked => String::new(),
            ClaimLock::NamedLock(name) => {
                format!("; SELECT RELEASE_LOCK({}) AS released", lit(name))
            }
        };
        writes.push(inject(&format!("COMMIT; {confirm}{release}")));
        let unknown = |source| ClaimError::Unknown {
            source,
            maybe_claimed: plan.start.clone(),
        };
        let (rows, counts) = tx
            .end(&writes.join("; "))
            .await
            .map_err(|e| unknown(Some(e)))?;
        let confirmed = rows
            .iter()
            .rev()
            .find_map(|r| r.try_get::<i64, _>("committed").ok());
        let updated = counts.first().copied().unwrap_or(0);
        match confirmed {
            None => return Err(unknown(None)),
            Some(n) if n as u64 != expected => {
                return Err(ClaimError::Conflict {
                    expected,
                    got: n.max(0) as u64,
                    by_update: false,
                    maybe_claimed: plan.start.clone(),
                })
            }
            Some(_) if !plan.start.is_empty() && updated != expected => {
                // Cannot happen under the row locks of one server. On a multi-primary cluster
                // a job this claim read may have been taken on another node: its handler must
                // not start here, nor any other (they go back fenced by this claim's token, so
                // only those it did take move).
                tracing::warn!(
                    expected,
                    updated,
                    "the claim updated fewer jobs than it read; giving them all back unstarted"
                );
                return Err(ClaimError::Conflict {
                    expected,
                    got: updated,
                    by_update: true,
                    maybe_claimed: plan.start.clone(),
                });
            }
            Some(_) => {}
        }
        Ok(Committed {
            released: released(opening.lock, &rows),
        })
    }
}

/// Whether the round trip's `RELEASE_LOCK` released (in skip-locked mode there is none).
fn released(lock: ClaimLock<'_>, rows: &[MySqlRow]) -> bool {
    match lock {
        ClaimLock::SkipLocked => true,
        ClaimLock::NamedLock(_) => {
            rows.iter()
                .rev()
                .find_map(|r| r.try_get::<Option<i64>, _>("released").ok())
                .flatten()
                == Some(1)
        }
    }
}

#[cfg(test)]
tokio::task_local! {
    /// Tests only: a fault written into the claim's final round trip.
    pub(crate) static INJECT: Inject;
}

/// Tests only: where the claim's final round trip fails.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inject {
    /// A statement before the COMMIT fails: nothing commits.
    BeforeCommit,
    /// A statement after the COMMIT fails: the claim commits, its answer is an error.
    AfterCommit,
    /// The COMMIT runs but the confirmation row is missing from the answer.
    NoConfirmation,
}

/// The final round trip's text, with the test's fault (if any) written in.
fn inject(commit_sql: &str) -> String {
    #[cfg(test)]
    if let Ok(fault) = INJECT.try_with(|f| *f) {
        return match fault {
            Inject::BeforeCommit => format!("SELECT * FROM jobq_no_such_table; {commit_sql}"),
            Inject::AfterCommit => format!("{commit_sql}; SELECT * FROM jobq_no_such_table"),
            Inject::NoConfirmation => "COMMIT".to_owned(),
        };
    }
    commit_sql.to_owned()
}
