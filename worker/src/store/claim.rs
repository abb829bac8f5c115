//! The claim: the one transaction that turns `available` jobs into this worker's `running` jobs,
//! and the named-lock statements that serialise it in `named-lock` mode.

use std::time::Duration;

use jobq_producer::{KindName, QueueName};
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlConnection, Row};

use super::finish::{completion_sql, COMPLETION_STATEMENTS, COMPLETION_UPDATE};
use super::sql::{hex, id_list, lit, RawTx, Session};
use super::{micros, text, Fence, Token};
use crate::ids::{LockName, WorkerId};

/// A job this worker just claimed.
#[derive(Clone, Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) id: u64,
    pub(crate) kind: KindName,
    pub(crate) payload: String,
    /// The attempt now running (already incremented).
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    /// Microseconds from run-at to the claim, on the database clock.
    pub(crate) wait_us: i64,
    pub(crate) token: Token,
}

impl ClaimedJob {
    /// The fence every write about this claim carries.
    pub(crate) fn fence(&self) -> Fence {
        Fence {
            id: self.id,
            token: self.token,
        }
    }
}

/// How concurrent claimers of one queue are kept apart.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ClaimLock<'a> {
    /// `FOR UPDATE SKIP LOCKED`: claimers skip each other's rows.
    SkipLocked,
    /// The caller holds this named lock, so no other jobq claimer competes; the lock is released
    /// in the claim's last round trip, after its COMMIT. The read still skips locked rows: a
    /// producer's uncommitted insert must not stall the queue behind it.
    NamedLock(&'a LockName),
}

/// One claim: up to `limit` available jobs of `queue`, whatever their kind (a job of a kind this
/// worker has no handler for fails its attempt visibly, see `runtime/executor.rs`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClaimRequest<'a> {
    pub(crate) queue: &'a QueueName,
    pub(crate) limit: u32,
    pub(crate) worker: &'a WorkerId,
    pub(crate) lease: Duration,
    pub(crate) lock: ClaimLock<'a>,
    /// Successes of this worker to complete in the same transaction: their slots are the ones
    /// this claim fills, so the process never has more `running` rows than slots, and one
    /// commit serves both.
    pub(crate) complete: &'a [Fence],
}

/// A claim that failed. When the failure came after the final round trip was sent (its COMMIT
/// may have been applied without the answer arriving), `maybe_claimed` holds the jobs it would
/// have claimed: the caller must reconcile them by their fence (see `transition::unstarted`).
#[derive(Debug)]
pub(crate) struct ClaimError {
    pub(crate) source: sqlx::Error,
    pub(crate) maybe_claimed: Vec<ClaimedJob>,
}

impl From<sqlx::Error> for ClaimError {
    fn from(source: sqlx::Error) -> Self {
        ClaimError {
            source,
            maybe_claimed: Vec::new(),
        }
    }
}

/// What a claim returned: the jobs, how many of `complete` were completed (the others had
/// been taken back), and in named-lock mode whether `RELEASE_LOCK` released.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) jobs: Vec<ClaimedJob>,
    pub(crate) completed: u64,
    pub(crate) released: bool,
}

/// Claims in one transaction of two round trips:
///
/// 1. `START TRANSACTION; [completions;] SELECT … FOR UPDATE [SKIP LOCKED]` — complete the
///    carried successes, lock the batch in index order;
/// 2. `UPDATE … SET state = 'running', claim_token = <fresh token>, lease …; INSERT INTO
///    jobq_transitions … SELECT … WHERE claim_token = <token>; COMMIT` (+ `RELEASE_LOCK` in
///    named-lock mode: strictly after the commit, or the next claimer could read rows this
///    claim has not yet committed as taken).
///
/// On any error the transaction is rolled back, or the session discarded when even that fails.
pub(crate) async fn claim<S: Session>(
    session: &mut S,
    req: ClaimRequest<'_>,
) -> Result<Claimed, ClaimError> {
    let release_sql = match req.lock {
        ClaimLock::SkipLocked => None,
        ClaimLock::NamedLock(name) => {
            Some(format!("; SELECT RELEASE_LOCK({}) AS released", lit(name)))
        }
    };
    let was_released = |rows: &[MySqlRow]| match req.lock {
        ClaimLock::SkipLocked => true,
        ClaimLock::NamedLock(_) => {
            rows.iter()
                .rev()
                .find_map(|r| r.try_get::<Option<i64>, _>("released").ok())
                .flatten()
                == Some(1)
        }
    };
    if req.limit == 0 && req.complete.is_empty() {
        return Ok(Claimed {
            jobs: Vec::new(),
            completed: 0,
            released: release_sql.is_none(),
        });
    }
    let select = claim_select(&lit(req.queue), &req.limit.to_string());
    let first = if req.complete.is_empty() {
        select
    } else {
        format!("{}; {select}", completion_sql(req.complete))
    };
    let (mut tx, (rows, counts)) = RawTx::begin(session, &first).await?;
    // Counts: START TRANSACTION, [the completion statements,] SELECT.
    let completed = if req.complete.is_empty() {
        0
    } else {
        counts.get(1 + COMPLETION_UPDATE).copied().unwrap_or(0)
    };
    debug_assert!(req.complete.is_empty() || counts.len() == 2 + COMPLETION_STATEMENTS);
    if rows.is_empty() {
        // language=MySQL
        let sql = format!("COMMIT{}", release_sql.as_deref().unwrap_or(""));
        let (rows, _) = tx.end(&sql).await?;
        return Ok(Claimed {
            jobs: Vec::new(),
            completed,
            released: was_released(&rows),
        });
    }
    let token: Token = rand::random();
    let decoded: Result<Vec<ClaimedJob>, sqlx::Error> = rows
        .iter()
        .map(|r| {
            let kind = text(r, "kind")?;
            Ok(ClaimedJob {
                id: r.try_get("id")?,
                kind: KindName::new(&kind).map_err(|e| sqlx::Error::ColumnDecode {
                    index: "kind".into(),
                    source: Box::new(e),
                })?,
                payload: text(r, "payload")?,
                attempt: r.try_get::<u32, _>("attempt")?.saturating_add(1),
                max_attempts: r.try_get("max_attempts")?,
                wait_us: r.try_get::<Option<i64>, _>("wait_us")?.unwrap_or(0),
                token,
            })
        })
        .collect();
    let jobs = match decoded {
        Ok(jobs) => jobs,
        Err(e) => {
            tx.rollback().await;
            return Err(e.into());
        }
    };
    let ids = id_list(jobs.iter().map(|j| j.id));
    let tok = hex(&token);
    // language=MySQL
    // The UPDATE is guarded by state = 'available' (always true under the locks just taken);
    // the transitions are written for exactly the rows that now carry this claim's token. The
    // attempt saturates: a row written by another program with attempt = 2^32-1 must not make
    // every claim of its queue fail.
    let sql = format!(
        "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'running', attempt = LEAST(attempt + 1, 4294967295), claim_token = {tok}, \
                worker_id = {worker}, attempted_at = UTC_TIMESTAMP(6), \
                lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND \
         WHERE id IN ({ids}) AND state = 'available'; \
         INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
         SELECT id, 'available', 'running', 'claimed', attempt, worker_id, attempted_at \
         FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND claim_token = {tok}; \
         COMMIT{release}",
        worker = lit(req.worker),
        lease_us = micros(req.lease),
        release = release_sql.as_deref().unwrap_or(""),
    );
    let (rows, counts) = match tx.end(&sql).await {
        Ok(b) => b,
        // Whatever the error, the COMMIT may have been applied: the server may have answered
        // the statements before it and then failed (the named-lock release after it, a kill,
        // a shutdown), or not answered at all. The caller gives the jobs back, fenced by this
        // claim's token, which changes nothing if the claim did not commit.
        Err(source) => {
            return Err(ClaimError {
                source,
                maybe_claimed: jobs,
            })
        }
    };
    let updated = counts.first().copied().unwrap_or(0);
    if updated != jobs.len() as u64 {
        // Cannot happen under the row locks; if it ever does, the jobs not updated carry no
        // token of ours, so their handlers' writes would be fenced off. Say so loudly.
        tracing::error!(
            expected = jobs.len(),
            updated,
            "claim updated fewer rows than it locked"
        );
    }
    Ok(Claimed {
        jobs,
        completed,
        released: was_released(&rows),
    })
}

/// The claim's locking read, with the queue and limit given as SQL (literals or `?`).
///
/// `SKIP LOCKED` in both claim modes: in `skip-locked` mode it keeps concurrent claimers apart;
/// in both it steps over rows locked by anyone else, such as a producer's insert not yet
/// committed, which a plain `FOR UPDATE` would wait for (holding the named lock meanwhile).
pub(super) fn claim_select(queue: &str, limit: &str) -> String {
    // language=MySQL
    // The WHERE and ORDER BY match jobq_jobs_claim (queue, state, priority, run_at, id) exactly:
    // the index is read in order, the scan stops after `limit` matching rows, nothing is
    // filesorted, and only returned rows are locked. FORCE INDEX keeps it so on tiny tables,
    // where the optimiser would otherwise prefer a scan (which locks every row it reads).
    // No filter on kind: rows of kinds this worker cannot run would all be read and skipped
    // on every claim (O(backlog) instead of O(batch)); they are claimed and fail instead.
    // The pause check is a constant subquery on jobq_queues' primary key: evaluated once, not
    // locked by the outer FOR UPDATE (a nested query takes no locks without a locking clause
    // of its own), and when the queue is paused the optimiser sees an impossible WHERE and
    // reads no job at all.
    format!(
        "SELECT id, kind, CAST(payload AS CHAR) AS payload, attempt, max_attempts, \
                TIMESTAMPDIFF(MICROSECOND, run_at, UTC_TIMESTAMP(6)) AS wait_us \
         FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
         WHERE queue = {queue} AND state = 'available' AND run_at <= UTC_TIMESTAMP(6) \
           AND (SELECT COUNT(*) FROM jobq_queues p WHERE p.name = {queue} AND p.paused_at IS NOT NULL) = 0 \
         ORDER BY priority, run_at, id \
         LIMIT {limit} FOR UPDATE SKIP LOCKED"
    )
}

/// The named-lock name of a queue: `jobq:` + SHA1(schema, 0x00, queue), 45 ASCII bytes.
/// Never user text: MariaDB compares names byte-wise and limits them to 192 bytes, MySQL
/// case-folds and limits them to 64 characters; names are server-wide, hence the schema.
pub(crate) async fn lock_name(
    conn: &mut MySqlConnection,
    queue: &QueueName,
) -> Result<LockName, sqlx::Error> {
    // language=MySQL
    let name: String =
        sqlx::query_scalar("SELECT CONCAT('jobq:', SHA1(CONCAT(DATABASE(), X'00', ?)))")
            .bind(queue.as_str())
            .fetch_one(conn)
            .await?;
    LockName::from_server(name)
        .ok_or_else(|| sqlx::Error::Protocol("the server returned a malformed lock name".into()))
}

/// `GET_LOCK(name, timeout)`: `Some(true)` acquired, `Some(false)` timed out, `None` error
/// (killed, or a deadlock between named locks).
pub(crate) async fn get_lock(
    conn: &mut MySqlConnection,
    name: &LockName,
    timeout: Duration,
) -> Result<Option<bool>, sqlx::Error> {
    // language=MySQL
    // Fractional timeouts are honoured by MariaDB; a negative one would mean "forever" on MySQL
    // but NULL on MariaDB, so only a positive duration is ever passed.
    let r: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(name.as_str())
        .bind(timeout.as_secs_f64().max(0.001))
        .fetch_one(conn)
        .await?;
    Ok(r.map(|v| v == 1))
}

/// `RELEASE_LOCK(name)`: true when this session held it and released it.
pub(crate) async fn release_lock(
    conn: &mut MySqlConnection,
    name: &LockName,
) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let r: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
        .bind(name.as_str())
        .fetch_one(conn)
        .await?;
    Ok(r == Some(1))
}
