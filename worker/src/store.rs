//! All SQL of the worker runtime and the CLI, one function per operation.
//!
//! Rules every statement here follows:
//! - time comparisons use the database clock (`UTC_TIMESTAMP(6)`), never the client's;
//! - a write about a running job is fenced by `(id, claim_token)` and `state = 'running'`, so a
//!   worker whose claim was rescued and re-claimed elsewhere changes nothing;
//! - each state change writes its `jobq_transitions` row in the same transaction;
//! - the transactions are short and run at READ COMMITTED (set per session in `server.rs`), so
//!   locking reads lock only the rows they return and take no gap locks.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobq_producer::JobState;
use sqlx::mysql::MySqlRow;
use sqlx::{Acquire, MySqlConnection, MySqlPool, Row};

use crate::transition::{Decision, Event};

/// A fencing token: fresh random bytes per claim transaction.
pub(crate) type Token = [u8; 16];

/// A job this worker just claimed.
#[derive(Clone, Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) id: u64,
    pub(crate) kind: String,
    pub(crate) payload: String,
    /// The attempt now running (already incremented).
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    /// Microseconds from run-at to the claim, on the database clock.
    pub(crate) wait_us: i64,
    pub(crate) token: Token,
}

/// `(id, token)` of a running job: what fences every write about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Fence {
    pub(crate) id: u64,
    pub(crate) token: Token,
}

fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        s.push_str(if i == 0 { "?" } else { ",?" });
    }
    s
}

/// `id IN (…) AND (id, claim_token) IN ((?,?),…)`: the first list gives the optimiser a
/// primary-key range on every server version, the second fences each job by its own token.
fn fence_clause(n: usize) -> String {
    let mut s = format!("id IN ({}) AND (id, claim_token) IN (", marks(n));
    for i in 0..n {
        s.push_str(if i == 0 { "(?,?)" } else { ",(?,?)" });
    }
    s.push(')');
    s
}

fn bind_fences<'q>(
    mut q: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    fences: &'q [Fence],
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    for f in fences {
        q = q.bind(f.id);
    }
    for f in fences {
        q = q.bind(f.id).bind(&f.token[..]);
    }
    q
}

/// Reads a text column. Columns with a `_bin` collation arrive flagged binary, which sqlx will
/// not decode as `String`; read the bytes and check they are UTF-8.
fn text(r: &MySqlRow, col: &str) -> Result<String, sqlx::Error> {
    opt_text(r, col)?.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: "unexpected NULL".into(),
    })
}

fn opt_text(r: &MySqlRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = r.try_get(col)?;
    bytes
        .map(|b| {
            String::from_utf8(b).map_err(|e| sqlx::Error::ColumnDecode {
                index: col.to_owned(),
                source: Box::new(e),
            })
        })
        .transpose()
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Claim

/// Quotes `s` as a string literal. Used only for names jobq validated itself (queues, kinds,
/// worker ids: `[A-Za-z0-9_.:-]`), in the multi-statement round trips below; it escapes anyway.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn hex(t: &Token) -> String {
    let mut out = String::from("X'");
    for b in t {
        out.push_str(&format!("{b:02x}"));
    }
    out.push('\'');
    out
}

fn id_list(ids: impl Iterator<Item = u64>) -> String {
    let mut out = String::new();
    for (i, id) in ids.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out
}

/// Runs a multi-statement text query; returns its rows and the affected-row counts of each
/// statement in order. One round trip however many statements.
/// Rows of a multi-statement query and the affected-row count of each statement.
type Batch = (Vec<MySqlRow>, Vec<u64>);

fn batch<'a>(
    conn: &'a mut MySqlConnection,
    sql: &'a str,
) -> futures::future::BoxFuture<'a, Result<Batch, sqlx::Error>> {
    // Boxed with explicit lifetimes: an `async fn` here trips rustc's higher-ranked lifetime
    // inference for sqlx's `Executor` when the caller's future must be `Send`.
    Box::pin(async move {
        use futures::TryStreamExt;
        use sqlx::Executor;
        let mut rows = Vec::new();
        let mut counts = Vec::new();
        let mut stream = conn.fetch_many(sqlx::raw_sql(sql));
        while let Some(item) = stream.try_next().await? {
            match item {
                sqlx::Either::Left(done) => counts.push(done.rows_affected()),
                sqlx::Either::Right(row) => rows.push(row),
            }
        }
        Ok((rows, counts))
    })
}

/// Ends an open transaction after an error (1205 leaves it open and holding its locks).
async fn rollback(conn: &mut MySqlConnection) {
    // language=MySQL
    let _ = batch(conn, "ROLLBACK").await;
}

/// Whether the `RELEASE_LOCK` at the end of a claim round trip released the lock (true when
/// none was asked for).
fn was_released(release: Option<&str>, rows: &[MySqlRow]) -> bool {
    match release {
        None => true,
        Some(_) => {
            rows.iter()
                .rev()
                .find_map(|r| r.try_get::<Option<i64>, _>("released").ok())
                .flatten()
                == Some(1)
        }
    }
}

/// Claims up to `limit` available jobs of `queue` whose kind is in `kinds`, in one transaction
/// of two round trips:
///
/// 1. `START TRANSACTION; SELECT … FOR UPDATE [SKIP LOCKED]` — lock the batch in index order;
/// 2. `UPDATE … SET state = 'running', claim_token = <fresh token>, lease …; INSERT INTO
///    jobq_transitions … SELECT … WHERE claim_token = <token>; COMMIT` (+ `RELEASE_LOCK` in
///    named-lock mode: strictly after the commit).
///
/// `skip_locked`: rows locked by another claimer are skipped (claim mode `skip-locked`). Without
/// it (claim mode `named-lock`) the caller holds the queue's named lock, so no other jobq claimer
/// competes and a plain `FOR UPDATE` only guards against foreign writers. `release`: the named
/// lock to release after the commit; the returned flag says whether it was released.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn claim(
    conn: &mut MySqlConnection,
    queue: &str,
    kinds: &[String],
    limit: u32,
    worker_id: &str,
    lease: Duration,
    skip_locked: bool,
    release: Option<&str>,
) -> Result<(Vec<ClaimedJob>, bool), sqlx::Error> {
    if kinds.is_empty() || limit == 0 {
        return Ok((Vec::new(), release.is_none()));
    }
    let kinds_lit: Vec<String> = kinds.iter().map(|k| lit(k)).collect();
    let select = claim_select(&lit(queue), &kinds_lit, &limit.to_string(), skip_locked);
    let release_sql =
        release.map(|name| format!("; SELECT RELEASE_LOCK({}) AS released", lit(name)));
    let (rows, _) = match batch(conn, &format!("START TRANSACTION; {select}")).await {
        Ok(r) => r,
        Err(e) => {
            rollback(conn).await;
            return Err(e);
        }
    };
    if rows.is_empty() {
        // language=MySQL
        let sql = format!("COMMIT{}", release_sql.as_deref().unwrap_or(""));
        return match batch(conn, &sql).await {
            Ok((rows, _)) => Ok((Vec::new(), was_released(release, &rows))),
            Err(e) => {
                rollback(conn).await;
                Err(e)
            }
        };
    }
    let token: Token = rand::random();
    let decoded: Result<Vec<ClaimedJob>, sqlx::Error> = rows
        .iter()
        .map(|r| {
            Ok(ClaimedJob {
                id: r.try_get("id")?,
                kind: text(r, "kind")?,
                payload: text(r, "payload")?,
                attempt: r.try_get::<u32, _>("attempt")? + 1,
                max_attempts: r.try_get("max_attempts")?,
                wait_us: r.try_get::<Option<i64>, _>("wait_us")?.unwrap_or(0),
                token,
            })
        })
        .collect();
    // Never leave the transaction (and its row locks) open on a pooled connection.
    let jobs = match decoded {
        Ok(jobs) => jobs,
        Err(e) => {
            rollback(conn).await;
            return Err(e);
        }
    };
    let ids = id_list(jobs.iter().map(|j| j.id));
    let tok = hex(&token);
    // language=MySQL
    // The UPDATE is guarded by state = 'available' (always true under the locks just taken);
    // the transitions are written for exactly the rows that now carry this claim's token.
    let sql = format!(
        "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'running', attempt = attempt + 1, claim_token = {tok}, \
                worker_id = {worker}, attempted_at = UTC_TIMESTAMP(6), \
                lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL {lease_us} MICROSECOND \
         WHERE id IN ({ids}) AND state = 'available'; \
         INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
         SELECT id, 'available', 'running', 'claimed', attempt, worker_id, attempted_at \
         FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND claim_token = {tok}; \
         COMMIT{release}",
        worker = lit(worker_id),
        lease_us = micros(lease),
        release = release_sql.as_deref().unwrap_or(""),
    );
    let (rows, counts) = match batch(conn, &sql).await {
        Ok(r) => r,
        Err(e) => {
            rollback(conn).await;
            return Err(e);
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
    Ok((jobs, was_released(release, &rows)))
}

/// The claim's locking read, with the queue, kinds and limit given as SQL (literals or `?`).
fn claim_select(queue: &str, kinds: &[String], limit: &str, skip_locked: bool) -> String {
    // language=MySQL
    // The WHERE and ORDER BY match jobq_jobs_claim (queue, state, priority, run_at, id) exactly:
    // the index is read in order, the scan stops after `limit` matching rows, nothing is
    // filesorted, and only returned rows are locked. FORCE INDEX keeps it so on tiny tables,
    // where the optimiser would otherwise prefer a scan (which locks every row it reads).
    // `kind IN (…)`: a worker claims only the kinds it can run.
    format!(
        "SELECT id, kind, CAST(payload AS CHAR) AS payload, attempt, max_attempts, \
                TIMESTAMPDIFF(MICROSECOND, run_at, UTC_TIMESTAMP(6)) AS wait_us \
         FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
         WHERE queue = {queue} AND state = 'available' AND run_at <= UTC_TIMESTAMP(6) AND kind IN ({}) \
         ORDER BY priority, run_at, id \
         LIMIT {limit} FOR UPDATE{}",
        kinds.join(","),
        if skip_locked { " SKIP LOCKED" } else { "" }
    )
}

/// The named-lock name of a queue: `jobq:` + SHA1(schema, 0x00, queue), 45 ASCII bytes.
/// Never user text: MariaDB compares names byte-wise and limits them to 192 bytes, MySQL
/// case-folds and limits them to 64 characters; names are server-wide, hence the schema.
pub(crate) async fn lock_name(
    conn: &mut MySqlConnection,
    queue: &str,
) -> Result<String, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar("SELECT CONCAT('jobq:', SHA1(CONCAT(DATABASE(), X'00', ?)))")
        .bind(queue)
        .fetch_one(conn)
        .await
}

/// `GET_LOCK(name, timeout)`: `Some(true)` acquired, `Some(false)` timed out, `None` error
/// (killed, or a deadlock between named locks).
pub(crate) async fn get_lock(
    conn: &mut MySqlConnection,
    name: &str,
    timeout: Duration,
) -> Result<Option<bool>, sqlx::Error> {
    // language=MySQL
    // Fractional timeouts are honoured by MariaDB; a negative one would mean "forever" on MySQL
    // but NULL on MariaDB, so the caller only ever passes a positive duration.
    let r: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(name)
        .bind(timeout.as_secs_f64().max(0.001))
        .fetch_one(conn)
        .await?;
    Ok(r.map(|v| v == 1))
}

/// `RELEASE_LOCK(name)`: true when this session held it and released it.
pub(crate) async fn release_lock(
    conn: &mut MySqlConnection,
    name: &str,
) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let r: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
        .bind(name)
        .fetch_one(conn)
        .await?;
    Ok(r == Some(1))
}

// ---------------------------------------------------------------------------------------------
// Finishing attempts

/// Marks many jobs `completed` in one transaction and one round trip: one UPDATE fenced per
/// job by `(id, claim_token)`, one INSERT … SELECT of their transitions, COMMIT. Jobs whose
/// fence no longer matches (rescued meanwhile) are left alone. Returns how many were completed.
pub(crate) async fn complete_batch(pool: &MySqlPool, fences: &[Fence]) -> Result<u64, sqlx::Error> {
    if fences.is_empty() {
        return Ok(0);
    }
    let ids = id_list(fences.iter().map(|f| f.id));
    let mut pairs = String::new();
    for (i, f) in fences.iter().enumerate() {
        if i > 0 {
            pairs.push(',');
        }
        pairs.push_str(&format!("({},{})", f.id, hex(&f.token)));
    }
    // language=MySQL
    // `id IN (…)` gives a primary-key range on every server; `(id, claim_token) IN (…)` fences
    // each job by its own token. The INSERT finds exactly the rows this UPDATE completed (same
    // token, same finalized_at): if a COMMIT succeeded but its answer was lost and the batch is
    // retried, the UPDATE matches nothing and no second `completed` transition is written.
    let sql = format!(
        "START TRANSACTION; \
         SET @jobq_done_at := UTC_TIMESTAMP(6); \
         UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'completed', finalized_at = @jobq_done_at, lease_expires_at = NULL \
         WHERE id IN ({ids}) AND (id, claim_token) IN ({pairs}) AND state = 'running'; \
         INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
         SELECT id, 'running', 'completed', 'completed', attempt, worker_id, finalized_at \
         FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND (id, claim_token) IN ({pairs}) \
           AND state = 'completed' AND finalized_at = @jobq_done_at; \
         COMMIT"
    );
    let mut conn = pool.acquire().await?;
    match batch(&mut conn, &sql).await {
        // Counts: START TRANSACTION, SET, UPDATE, INSERT, COMMIT.
        Ok((_, counts)) => Ok(counts.get(2).copied().unwrap_or(0)),
        Err(e) => {
            rollback(&mut conn).await;
            Err(e)
        }
    }
}

/// Applies `decision` to one running job through `conn` (the handler's transaction for a
/// completion, or a fresh one). Returns false, writing nothing, when the fence does not match.
pub(crate) async fn finish(
    conn: &mut MySqlConnection,
    fence: Fence,
    attempt: u32,
    worker_id: &str,
    d: &Decision,
) -> Result<bool, sqlx::Error> {
    let final_state = d.to.is_final();
    // language=MySQL
    // run_at moves only for retryable/scheduled (a delay); max_attempts grows by one when the
    // attempt is refunded (snooze, shutdown release) so it does not count against the job.
    let updated = sqlx::query(
        "UPDATE jobq_jobs SET state = ?, \
                run_at = IF(? IS NULL, run_at, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND), \
                max_attempts = max_attempts + ?, \
                last_error = COALESCE(?, last_error), \
                finalized_at = IF(?, UTC_TIMESTAMP(6), NULL), \
                lease_expires_at = NULL \
         WHERE id = ? AND claim_token = ? AND state = 'running'",
    )
    .bind(d.to.as_str())
    .bind(d.delay.map(micros))
    .bind(d.delay.map(micros).unwrap_or(0))
    .bind(u32::from(d.refund_attempt))
    .bind(d.error.as_deref())
    .bind(final_state)
    .bind(fence.id)
    .bind(&fence.token[..])
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated != 1 {
        return Ok(false);
    }
    // language=MySQL
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, error, at) \
         VALUES (?, 'running', ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
    )
    .bind(fence.id)
    .bind(d.to.as_str())
    .bind(d.event.as_str())
    .bind(attempt)
    .bind(worker_id)
    .bind(d.error.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// [`finish`] in its own transaction.
pub(crate) async fn finish_tx(
    pool: &MySqlPool,
    fence: Fence,
    attempt: u32,
    worker_id: &str,
    d: &Decision,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    match finish(&mut tx, fence, attempt, worker_id, d).await {
        Ok(applied) => {
            tx.commit().await?;
            Ok(applied)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Leases and worker rows

/// Extends the leases of `fences` to now + `lease` in one statement. Returns the fences whose
/// lease could not be extended (the job was rescued or finished elsewhere): their handlers must
/// stop, and nothing more may be written for them.
pub(crate) async fn extend_leases(
    pool: &MySqlPool,
    fences: &[Fence],
    lease: Duration,
) -> Result<Vec<Fence>, sqlx::Error> {
    let mut lost = Vec::new();
    for chunk in fences.chunks(500) {
        // language=MySQL
        let sql = format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
             WHERE {} AND state = 'running'",
            fence_clause(chunk.len())
        );
        let n = bind_fences(sqlx::query(&sql).bind(micros(lease)), chunk)
            .execute(pool)
            .await?
            .rows_affected();
        if n == chunk.len() as u64 {
            continue;
        }
        // Rare: find out which ones are no longer ours.
        // language=MySQL
        let sql = format!(
            "SELECT id FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE {} AND state = 'running'",
            fence_clause(chunk.len())
        );
        let still: Vec<u64> = bind_fences(sqlx::query(&sql), chunk)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| r.get::<u64, _>(0))
            .collect();
        lost.extend(chunk.iter().filter(|f| !still.contains(&f.id)));
    }
    Ok(lost)
}

/// Inserts or refreshes this process's `jobq_workers` row.
pub(crate) async fn register_worker(
    pool: &MySqlPool,
    id: &str,
    host: &str,
    pid: u32,
    queues: &str,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "INSERT INTO jobq_workers (id, host, pid, queues, started_at, last_heartbeat_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE last_heartbeat_at = UTC_TIMESTAMP(6)",
    )
    .bind(id)
    .bind(host)
    .bind(pid)
    .bind(queues)
    .execute(pool)
    .await?;
    Ok(())
}

/// Beats the worker row; false when the row is gone (pruned after a long outage).
pub(crate) async fn beat_worker(pool: &MySqlPool, id: &str) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let n =
        sqlx::query("UPDATE jobq_workers SET last_heartbeat_at = UTC_TIMESTAMP(6) WHERE id = ?")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected();
    Ok(n == 1)
}

/// Deletes this process's worker row (clean shutdown).
pub(crate) async fn deregister_worker(pool: &MySqlPool, id: &str) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query("DELETE FROM jobq_workers WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Maintenance (run by the elected leader only)

/// Takes or keeps the maintenance lease. True when `holder` is the leader until now + `ttl`.
pub(crate) async fn lead(
    pool: &MySqlPool,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    // language=MySQL
    // The row is created once; INSERT IGNORE can only ignore the duplicate key here.
    sqlx::query(
        "INSERT IGNORE INTO jobq_leader (name, holder, expires_at) \
         VALUES ('maintenance', '', '1970-01-01 00:00:00')",
    )
    .execute(pool)
    .await?;
    // language=MySQL
    // Taken when free or expired, kept by its holder; expires_at always moves, so "1 row
    // affected" means we hold it.
    let n = sqlx::query(
        "UPDATE jobq_leader SET holder = ?, expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
         WHERE name = 'maintenance' AND (holder = ? OR expires_at < UTC_TIMESTAMP(6))",
    )
    .bind(holder)
    .bind(micros(ttl))
    .bind(holder)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Gives up the maintenance lease so another process takes over at its next tick.
pub(crate) async fn resign(pool: &MySqlPool, holder: &str) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "UPDATE jobq_leader SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND \
         WHERE name = 'maintenance' AND holder = ?",
    )
    .bind(holder)
    .execute(pool)
    .await?;
    Ok(())
}

/// Moves up to `limit` due jobs of `from` (`scheduled` or `retryable`) to `available`.
/// Returns how many moved.
pub(crate) async fn promote_due(
    pool: &MySqlPool,
    from: JobState,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
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

/// A job taken back from a worker whose lease expired.
#[derive(Clone, Debug)]
pub(crate) struct Rescued {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) discarded: bool,
}

/// Rescues up to `limit` running jobs whose lease expired: back to `available`, or `discarded`
/// when their attempts are used up, with a `rescued` transition.
pub(crate) async fn rescue_expired(
    pool: &MySqlPool,
    limit: u32,
) -> Result<Vec<Rescued>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // language=MySQL
    // The `running` range of jobq_jobs_due (state, run_at, id): at most the slots of all
    // workers, filtered on the lease. SKIP LOCKED: a row locked right now belongs to a worker
    // finishing it; it is looked at again next tick.
    let rows = sqlx::query(
        "SELECT id, queue, kind, attempt, max_attempts, worker_id FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
         WHERE state = 'running' AND lease_expires_at < UTC_TIMESTAMP(6) \
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
    for r in rows {
        let id: u64 = r.get("id");
        let attempt: u32 = r.get("attempt");
        let max: u32 = r.get("max_attempts");
        let worker = opt_text(&r, "worker_id")?;
        let discarded = attempt >= max;
        let error = format!(
            "lease expired: worker {} stopped renewing it during attempt {attempt}",
            worker.as_deref().unwrap_or("?")
        );
        let to = if discarded {
            JobState::Discarded
        } else {
            JobState::Available
        };
        // language=MySQL
        sqlx::query(
            "UPDATE jobq_jobs SET state = ?, lease_expires_at = NULL, last_error = ?, \
                    finalized_at = IF(? , UTC_TIMESTAMP(6), NULL) \
             WHERE id = ? AND state = 'running'",
        )
        .bind(to.as_str())
        .bind(&error)
        .bind(discarded)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // language=MySQL
        sqlx::query(
            "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, error, at) \
             VALUES (?, 'running', ?, ?, ?, ?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(id)
        .bind(to.as_str())
        .bind(Event::Rescued.as_str())
        .bind(attempt)
        .bind(worker.as_deref())
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        out.push(Rescued {
            queue: text(&r, "queue")?,
            kind: text(&r, "kind")?,
            discarded,
        });
    }
    tx.commit().await?;
    Ok(out)
}

/// Deletes up to `limit` jobs in final state `state` finalised before now − `age`, with their
/// history. Returns how many jobs were deleted.
pub(crate) async fn prune(
    pool: &MySqlPool,
    state: JobState,
    age: Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // language=MySQL
    // run_at <= finalized_at always, so the range on jobq_jobs_due (state, run_at) bounds the
    // scan and finalized_at decides.
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM jobq_jobs FORCE INDEX (jobq_jobs_due) \
         WHERE state = ? AND run_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
           AND finalized_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND \
         ORDER BY run_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(state.as_str())
    .bind(micros(age))
    .bind(micros(age))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let list = marks(ids.len());
    for table_sql in [
        format!("DELETE FROM jobq_transitions WHERE job_id IN ({list})"),
        format!("DELETE FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({list})"),
    ] {
        let mut q = sqlx::query(&table_sql);
        for id in &ids {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(ids.len() as u64)
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

/// Jobs that `--drain` still waits for: available, running or retryable in `queues`, of a kind
/// in `kinds`.
pub(crate) async fn pending(
    pool: &MySqlPool,
    queues: &[String],
    kinds: &[String],
) -> Result<i64, sqlx::Error> {
    if queues.is_empty() || kinds.is_empty() {
        return Ok(0);
    }
    // language=MySQL
    // Served by jobq_jobs_claim's (queue, state) prefix.
    let sql = format!(
        "SELECT COUNT(*) FROM jobq_jobs WHERE queue IN ({}) AND state IN ('available', 'running', 'retryable') \
         AND kind IN ({})",
        marks(queues.len()),
        marks(kinds.len())
    );
    let mut q = sqlx::query_scalar(&sql);
    for queue in queues {
        q = q.bind(queue);
    }
    for kind in kinds {
        q = q.bind(kind);
    }
    q.fetch_one(pool).await
}

// ---------------------------------------------------------------------------------------------
// Inspection (CLI, demo, tests)

/// Leader sample for the depth gauges: (queue, state, count) for non-final states, the oldest
/// available age per queue, and the number of workers beaten within `alive`.
#[allow(clippy::type_complexity)]
pub(crate) async fn sample_depth(
    pool: &MySqlPool,
    alive: Duration,
) -> Result<(Vec<(String, String, i64)>, Vec<(String, f64)>, i64, u64), sqlx::Error> {
    // language=MySQL
    // An index-only scan of jobq_jobs_claim (queue, state, …); final states are filtered out
    // but still scanned, which is why the leader samples this only every few seconds.
    let rows = sqlx::query(
        "SELECT queue, CAST(state AS CHAR) AS state, COUNT(*) AS n FROM jobq_jobs \
         WHERE state IN ('available', 'scheduled', 'running', 'retryable') GROUP BY queue, state",
    )
    .fetch_all(pool)
    .await?;
    let depth = rows
        .into_iter()
        .map(|r| Ok((text(&r, "queue")?, text(&r, "state")?, r.try_get("n")?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    // language=MySQL
    let rows = sqlx::query(
        "SELECT queue, TIMESTAMPDIFF(MICROSECOND, MIN(run_at), UTC_TIMESTAMP(6)) / 1e6 AS age \
         FROM jobq_jobs WHERE state = 'available' GROUP BY queue",
    )
    .fetch_all(pool)
    .await?;
    let oldest = rows
        .into_iter()
        .map(|r| {
            Ok((
                text(&r, "queue")?,
                r.try_get::<Option<f64>, _>("age")?.unwrap_or(0.0),
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
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
    Ok((depth, oldest, workers, max_id.unwrap_or(0)))
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
    pub id: u64,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// State name.
    pub state: String,
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
    pub from: Option<String>,
    /// New state.
    pub to: String,
    /// Why.
    pub event: String,
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
pub(crate) async fn job(pool: &MySqlPool, id: u64) -> Result<Option<JobRecord>, sqlx::Error> {
    // language=MySQL
    let row = sqlx::query(
        "SELECT id, queue, kind, CAST(payload AS CHAR) AS payload, CAST(state AS CHAR) AS state, priority, run_at, \
                attempt, max_attempts, worker_id, lease_expires_at, created_at, attempted_at, finalized_at, last_error \
         FROM jobq_jobs WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let payload: String = text(&r, "payload")?;
    Ok(Some(JobRecord {
        id: r.try_get("id")?,
        queue: text(&r, "queue")?,
        kind: text(&r, "kind")?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        state: text(&r, "state")?,
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
    id: u64,
) -> Result<Vec<TransitionRecord>, sqlx::Error> {
    // language=MySQL
    let rows = sqlx::query(
        "SELECT CAST(from_state AS CHAR) AS from_state, CAST(to_state AS CHAR) AS to_state, event, attempt, \
                worker_id, error, at \
         FROM jobq_transitions WHERE job_id = ? ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(TransitionRecord {
                from: opt_text(&r, "from_state")?,
                to: text(&r, "to_state")?,
                event: text(&r, "event")?,
                attempt: r.try_get("attempt")?,
                worker_id: opt_text(&r, "worker_id")?,
                error: opt_text(&r, "error")?,
                at: r.try_get("at")?,
            })
        })
        .collect()
}

/// The `record` demo kind's effect, written in the completion transaction.
pub(crate) async fn insert_effect(
    conn: &mut MySqlConnection,
    job_id: u64,
    attempt: u32,
    worker: &str,
    key: &str,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "INSERT INTO jobq_demo_effects (job_id, attempt, worker, effect_key, created_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6))",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(worker)
    .bind(key)
    .execute(conn)
    .await?;
    Ok(())
}

/// The EXPLAIN of the claim's locking read as the worker runs it: `(key, Extra)` per row.
pub async fn explain_claim(
    pool: &MySqlPool,
    queue: &str,
    kinds: &[String],
    skip_locked: bool,
) -> Result<Vec<(Option<String>, Option<String>)>, sqlx::Error> {
    let marks_k: Vec<String> = kinds.iter().map(|_| "?".to_owned()).collect();
    let sql = format!("EXPLAIN {}", claim_select("?", &marks_k, "?", skip_locked));
    let mut q = sqlx::query(&sql).bind(queue);
    for k in kinds {
        q = q.bind(k);
    }
    let rows = q.bind(100u32).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.try_get::<Option<String>, _>("key").ok().flatten(),
                r.try_get::<Option<String>, _>("Extra").ok().flatten(),
            )
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Benchmark support (`jobq bench`)

/// Empties the job tables (the bench's own database only).
pub async fn bench_reset(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    for t in [
        "jobq_jobs",
        "jobq_transitions",
        "jobq_workers",
        "jobq_demo_effects",
    ] {
        // language=MySQL
        sqlx::query(&format!("TRUNCATE TABLE {t}"))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Server-wide statement and row-write counters (SHOW GLOBAL STATUS).
pub async fn server_counters(pool: &MySqlPool) -> Result<(u64, u64), sqlx::Error> {
    // language=MySQL
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW GLOBAL STATUS WHERE Variable_name IN \
         ('Questions', 'Handler_write', 'Handler_update', 'Handler_delete')",
    )
    .fetch_all(pool)
    .await?;
    let get = |n: &str| {
        rows.iter()
            .find(|(k, _)| k == n)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((
        get("Questions"),
        get("Handler_write") + get("Handler_update") + get("Handler_delete"),
    ))
}

/// Completed jobs in `queue`.
pub async fn completed_in(pool: &MySqlPool, queue: &str) -> Result<i64, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs WHERE queue = ? AND state = 'completed'")
        .bind(queue)
        .fetch_one(pool)
        .await
}

/// Seconds from the first claim to the last completion, and the number of claim transactions
/// (one token each).
pub async fn run_span(pool: &MySqlPool, queue: &str) -> Result<(f64, i64), sqlx::Error> {
    // language=MySQL
    let (span, claims): (Option<f64>, i64) = sqlx::query_as(
        "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(attempted_at), MAX(finalized_at)) / 1e6, COUNT(DISTINCT claim_token) \
         FROM jobq_jobs WHERE queue = ?",
    )
    .bind(queue)
    .fetch_one(pool)
    .await?;
    Ok((span.unwrap_or(0.0), claims))
}

/// run_at → claim, in microseconds, of every job of `queue` (for pickup-latency percentiles).
pub async fn pickup_latencies(pool: &MySqlPool, queue: &str) -> Result<Vec<i64>, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, run_at, attempted_at) FROM jobq_jobs \
         WHERE queue = ? AND attempted_at IS NOT NULL",
    )
    .bind(queue)
    .fetch_all(pool)
    .await
}

/// The ceiling: the least SQL that claims and finishes a batch with no framework around it
/// (no tokens, no history, no leases): claim up to `limit` rows and mark them running in one
/// transaction, then one autocommit UPDATE marks the batch done. `named_lock`: serialised by
/// `GET_LOCK` instead of SKIP LOCKED. Returns how many rows it processed.
pub async fn ceiling_batch(
    conn: &mut MySqlConnection,
    queue: &str,
    limit: u32,
    lock: Option<&str>,
) -> Result<usize, sqlx::Error> {
    if let Some(name) = lock {
        // language=MySQL
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 5)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        if got != Some(1) {
            return Ok(0);
        }
    }
    let mut tx = conn.begin().await?;
    // language=MySQL
    let sql = format!(
        "SELECT id FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) WHERE queue = ? AND state = 'available' \
         AND run_at <= UTC_TIMESTAMP(6) ORDER BY priority, run_at, id LIMIT ? FOR UPDATE{}",
        if lock.is_some() { "" } else { " SKIP LOCKED" }
    );
    let ids: Vec<u64> = sqlx::query_scalar(&sql)
        .bind(queue)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    if !ids.is_empty() {
        // language=MySQL
        let sql = format!("UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'running', attempted_at = UTC_TIMESTAMP(6) WHERE id IN ({})", marks(ids.len()));
        let mut q = sqlx::query(&sql);
        for id in &ids {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    if let Some(name) = lock {
        // language=MySQL
        sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }
    if !ids.is_empty() {
        // language=MySQL
        let sql = format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'completed', finalized_at = UTC_TIMESTAMP(6) WHERE id IN ({})",
            marks(ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in &ids {
            q = q.bind(id);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(ids.len())
}

/// Marks every job of `queue` completed, in chunks (for the "1M finished jobs" scaling figure).
pub async fn bench_finish_all(pool: &MySqlPool, queue: &str) -> Result<(), sqlx::Error> {
    loop {
        // language=MySQL
        let n = sqlx::query(
            "UPDATE jobq_jobs SET state = 'completed', finalized_at = UTC_TIMESTAMP(6) \
             WHERE queue = ? AND state = 'available' LIMIT 20000",
        )
        .bind(queue)
        .execute(pool)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(());
        }
    }
}
