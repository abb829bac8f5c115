//! Concurrency keys: the statements that lock a key's row in `jobq_keys` and count its jobs
//! (inside the claim, `claim.rs`), that bring `waiting` jobs back to `available` when a slot of
//! their key frees, and that find the keys maintenance should look at.
//!
//! The `jobq_keys` row of (queue, key) is the key's mutex. Whoever decides anything about the
//! key's slots (a claim starting jobs or sending them to `waiting`, a promotion bringing them
//! back) locks it first, with `INSERT … ON DUPLICATE KEY UPDATE` over the keys in ascending
//! order (so two of them never wait on each other in a cycle), and counts after the lock, in a
//! statement of its own (at READ COMMITTED each statement reads the latest committed rows).
//! So a claim and a finishing job's promotion are serialised: either the claim counts the
//! finished job as gone, or the promotion sees the job the claim sent to `waiting`.

use std::collections::{BTreeMap, BTreeSet};

use jobq_producer::QueueName;
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlPool, Row};

use super::sql::{id_list, lit, text_lit, RawTx};
use super::text;
use crate::model::{KeyState, PromoteRule};

/// The database clock as microseconds since the Unix epoch, from `@jobq_now`.
// language=MySQL
pub(super) const NOW_US: &str =
    "TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', @jobq_now)";

/// What the key lock's `ON DUPLICATE KEY UPDATE` writes besides: a value that always changes,
/// so the lock is a real write of the row. On one server the row lock alone serialises; on
/// Galera a lock is not replicated and only rows a transaction changed are certified, so two
/// nodes' claims of one key conflict (one is aborted and retried) only if both change its row.
// language=MySQL
const TOUCH: &str = "updated_at = GREATEST(UTC_TIMESTAMP(6), updated_at + INTERVAL 1 MICROSECOND)";

/// `k1,k2,…` as literals (keys in ascending order).
fn key_list<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    keys.map(text_lit).collect::<Vec<_>>().join(",")
}

/// The claim's key statements, for the keys of the jobs it read and of the completions it
/// carries (ascending) with the highest limit it applies to each: lock the keys' rows
/// (recording the limit, which promotion reads), count their running (and, with `promote`,
/// available) jobs, lock the first waiting jobs of the `promote` keys (up to the limit each),
/// read their rate windows if `with_rate`, and read the clock after the locks into
/// `@jobq_now`. Rows come back tagged (`what` = `running`, `available`, `waiting`, `rate`,
/// `now`); see [`KeyState::read`]. Waiting rows are locked only after the keys, the order every
/// promotion follows.
pub(super) fn lock_and_count_sql(
    queue: &QueueName,
    keys: &BTreeMap<String, u32>,
    with_rate: bool,
    promote: &BTreeMap<String, u32>,
) -> String {
    let q = lit(queue);
    let rows: Vec<String> = keys
        .iter()
        .map(|(k, limit)| format!("({q},{},{limit})", text_lit(k)))
        .collect();
    let list = key_list(keys.keys().map(String::as_str));
    // language=MySQL
    // The count reads jobq_jobs_keys (queue, concurrency_key, key_state, …): per key, an index
    // range of its running jobs only (at most its limit).
    let states = if promote.is_empty() {
        "'running'"
    } else {
        "'running', 'available'"
    };
    let mut sql = format!(
        "INSERT INTO jobq_keys (queue, concurrency_key, key_limit) VALUES {rows} \
           ON DUPLICATE KEY UPDATE key_limit = VALUES(key_limit), {TOUCH}; \
         SELECT CAST(key_state AS CHAR) AS what, CAST(concurrency_key AS BINARY) AS k, COUNT(*) AS n, NULL AS rate_state \
           FROM jobq_jobs FORCE INDEX (jobq_jobs_keys) \
          WHERE queue = {q} AND concurrency_key IN ({list}) AND key_state IN ({states}) \
          GROUP BY concurrency_key, key_state",
        rows = rows.join(",")
    );
    for (k, limit) in promote {
        let limit = keys.get(k.as_str()).copied().unwrap_or(*limit).max(1);
        // language=MySQL
        // The key's waiting jobs in claim order, from jobq_jobs_keys. SKIP LOCKED: a waiting
        // job locked by someone else (a producer's duplicate enqueue of a unique job, in its
        // own transaction) must not stall the claim; it is promoted later (by the promoter
        // or maintenance's sweep).
        sql.push_str(&format!(
            "; SELECT 'waiting' AS what, CAST(concurrency_key AS BINARY) AS k, CAST(id AS SIGNED) AS n, NULL AS rate_state \
               FROM jobq_jobs FORCE INDEX (jobq_jobs_keys) \
              WHERE queue = {q} AND concurrency_key = {} AND key_state = 'waiting' \
              ORDER BY priority, run_at, id LIMIT {limit} FOR UPDATE SKIP LOCKED",
            text_lit(k)
        ));
    }
    if with_rate {
        // language=MySQL
        sql.push_str(&format!(
            "; SELECT 'rate' AS what, CAST(concurrency_key AS BINARY) AS k, 0 AS n, CAST(rate_state AS CHAR) AS rate_state \
               FROM jobq_keys WHERE queue = {q} AND concurrency_key IN ({list})"
        ));
    }
    // language=MySQL
    sql.push_str(&format!(
        "; SET @jobq_now := UTC_TIMESTAMP(6); \
         SELECT 'now' AS what, NULL AS k, {NOW_US} AS n, NULL AS rate_state"
    ));
    sql
}

/// What [`lock_and_count_sql`] returned, by its rows' tags.
pub(super) fn read_key_state(rows: &[MySqlRow]) -> Result<KeyState, sqlx::Error> {
    let mut out = KeyState::default();
    for r in rows {
        let what: String = r.try_get("what")?;
        let n: i64 = r.try_get("n")?;
        match what.as_str() {
            "now" => out.now_us = n,
            "running" => {
                out.running.insert(text(r, "k")?, n.max(0) as u32);
            }
            "available" => {
                out.available.insert(text(r, "k")?, n.max(0) as u32);
            }
            "waiting" => {
                out.waiting.entry(text(r, "k")?).or_default().push(n as u64);
            }
            "rate" => {
                out.rate.insert(text(r, "k")?, r.try_get("rate_state")?);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Which of `keys` have waiting jobs, by a plain read (an index probe per key): rows with
/// the column `probe_key`.
pub(super) fn waiting_probe_sql<'a>(
    queue: &QueueName,
    keys: impl Iterator<Item = &'a String>,
) -> String {
    // language=MySQL
    format!(
        "SELECT DISTINCT CAST(concurrency_key AS BINARY) AS probe_key FROM jobq_jobs FORCE INDEX (jobq_jobs_keys) \
         WHERE queue = {} AND concurrency_key IN ({}) AND key_state = 'waiting'",
        lit(queue),
        key_list(keys.map(String::as_str))
    )
}

/// Makes the waiting jobs `ids` (a list of id literals, locked by the caller) `available`,
/// with their `promoted` transitions; the UPDATE comes first, so its count is the number moved.
pub(super) fn promote_sql(ids: &str) -> String {
    // language=MySQL
    format!(
        "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'available' WHERE id IN ({ids}) AND state = 'waiting'; \
         INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
         SELECT id, 'waiting', 'available', 'promoted', attempt, UTC_TIMESTAMP(6) \
           FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id IN ({ids}) AND state = 'available'"
    )
}

/// Running jobs per key, by a plain read (no lock): the claim's check after it sent jobs to
/// `waiting` (see `runtime/claim.rs`).
pub(crate) async fn running_now(
    conn: &mut sqlx::MySqlConnection,
    queue: &QueueName,
    keys: &BTreeMap<String, u32>,
) -> Result<std::collections::HashMap<String, u32>, sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "SELECT CAST(concurrency_key AS BINARY) AS k, COUNT(*) AS n \
           FROM jobq_jobs FORCE INDEX (jobq_jobs_keys) \
          WHERE queue = {} AND concurrency_key IN ({}) AND key_state = 'running' \
          GROUP BY concurrency_key",
        lit(queue),
        key_list(keys.keys().map(String::as_str))
    );
    let rows = sqlx::query(&sql).fetch_all(conn).await?;
    rows.iter()
        .map(|r| Ok((text(r, "k")?, r.try_get::<i64, _>("n")?.max(0) as u32)))
        .collect()
}

/// The statement storing the rate windows of `windows` (inside the claim's transaction).
pub(super) fn store_windows_sql(queue: &QueueName, windows: &BTreeMap<String, String>) -> String {
    let mut cases = String::new();
    for (k, state) in windows {
        cases.push_str(&format!(" WHEN {} THEN {}", text_lit(k), text_lit(state)));
    }
    let list = key_list(windows.keys().map(String::as_str));
    // language=MySQL
    format!(
        "UPDATE jobq_keys SET rate_state = CASE concurrency_key{cases} ELSE rate_state END, \
                updated_at = UTC_TIMESTAMP(6) \
         WHERE queue = {q} AND concurrency_key IN ({list})",
        q = lit(queue)
    )
}

/// Brings `waiting` jobs of `keys` (of `queue`) back to `available`, as many per key as it
/// has free slots (its limit, less its running and available jobs). Returns how many moved.
/// `floor` is the least limit to assume (the configured ceiling of the queue: the stored
/// `key_limit` is only what the last claim of the key applied).
pub(crate) async fn promote_waiting(
    pool: &MySqlPool,
    queue: &QueueName,
    keys: &BTreeSet<String>,
    floor: u32,
    to_promote: PromoteRule,
) -> Result<u64, sqlx::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let q = lit(queue);
    // First, without locks: which of the keys have waiting jobs at all (an index probe per
    // key). Most ends of keyed jobs find none, and skip the locking transaction. A job a claim
    // is sending to `waiting` right now is not seen yet; that claim checks, after its commit,
    // whether the key shows a free slot by then and if so hands it to the promoter (claim.rs).
    let found = sqlx::query(&waiting_probe_sql(queue, keys.iter()))
        .fetch_all(pool)
        .await?;
    let keys: BTreeSet<String> = found
        .iter()
        .map(|r| text(r, "probe_key"))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Ok(0);
    }
    let list = key_list(keys.iter().map(String::as_str));
    let rows: Vec<String> = keys
        .iter()
        .map(|k| format!("({q},{})", text_lit(k)))
        .collect();
    // language=MySQL
    // Lock the keys (ascending), then read each key's limit and its running and available
    // jobs, in statements after the lock.
    let first = format!(
        "INSERT INTO jobq_keys (queue, concurrency_key) VALUES {rows} \
           ON DUPLICATE KEY UPDATE {TOUCH}; \
         SELECT CAST(concurrency_key AS BINARY) AS k, CAST(key_limit AS SIGNED) AS n, 'limit' AS what \
           FROM jobq_keys WHERE queue = {q} AND concurrency_key IN ({list}); \
         SELECT CAST(concurrency_key AS BINARY) AS k, COUNT(*) AS n, key_state AS what \
           FROM jobq_jobs FORCE INDEX (jobq_jobs_keys) \
          WHERE queue = {q} AND concurrency_key IN ({list}) AND key_state IN ('running', 'available') \
          GROUP BY concurrency_key, key_state",
        rows = rows.join(",")
    );
    let mut conn = pool.acquire().await?;
    let (tx, (found, _)) = RawTx::begin(&mut conn, &first).await?;
    // (limit, running, available) per key.
    let mut seen: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for r in &found {
        let k = text(r, "k")?;
        let n: i64 = r.try_get("n")?;
        let n = n.clamp(0, i64::from(u32::MAX)) as u32;
        let e = seen.entry(k).or_insert((1, 0, 0));
        match text(r, "what")?.as_str() {
            "limit" => e.0 = n,
            "running" => e.1 = n,
            "available" => e.2 = n,
            _ => {}
        }
    }
    let picks: Vec<String> = seen
        .iter()
        .filter_map(|(k, &(limit, running, available))| {
            let n = to_promote(limit.max(floor), running, available);
            // language=MySQL
            // The key's waiting jobs in claim order, from jobq_jobs_keys; rows locked by
            // someone else are skipped (see lock_and_count_sql).
            (n > 0).then(|| {
                format!(
                    "SELECT id FROM jobq_jobs FORCE INDEX (jobq_jobs_keys) \
                      WHERE queue = {q} AND concurrency_key = {} AND key_state = 'waiting' \
                      ORDER BY priority, run_at, id LIMIT {n} FOR UPDATE SKIP LOCKED",
                    text_lit(k)
                )
            })
        })
        .collect();
    if picks.is_empty() {
        tx.end("COMMIT").await?;
        return Ok(0);
    }
    let (tx, (rows, _)) = tx.step(&picks.join("; ")).await?;
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| r.try_get::<u64, _>("id"))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        tx.end("COMMIT").await?;
        return Ok(0);
    }
    let ids = id_list(ids.into_iter());
    // language=MySQL
    let (_, counts) = tx.end(&format!("{}; COMMIT", promote_sql(&ids))).await?;
    Ok(counts.first().copied().unwrap_or(0))
}

/// Where the waiting-key sweep stands: the last (queue, key) it read, or the start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyCursor(Option<(String, Vec<u8>)>);

/// One window of the waiting-key sweep: reads at most `scan` rows of `jobq_keys` past `cursor`
/// (by its primary key) and returns those of their keys that have waiting jobs and a free slot
/// (fewer running and available jobs than the greater of the key's limit and `floor`), each
/// probe an index range of `jobq_jobs_keys`; moves the cursor, back to the start once the table
/// ends. A pass costs at most `scan` key rows, however many keys were ever claimed; the whole
/// table is covered over successive passes.
pub(crate) async fn keys_to_promote(
    pool: &MySqlPool,
    floor: u32,
    scan: u32,
    cursor: &mut KeyCursor,
) -> Result<BTreeMap<QueueName, BTreeSet<String>>, sqlx::Error> {
    // language=MySQL
    let after = match &cursor.0 {
        Some(_) => "WHERE queue > ? OR (queue = ? AND concurrency_key > ?)",
        None => "",
    };
    let sql = format!(
        "SELECT k.queue, CAST(k.concurrency_key AS BINARY) AS k, \
           EXISTS (SELECT 1 FROM jobq_jobs w FORCE INDEX (jobq_jobs_keys) \
                    WHERE w.queue = k.queue AND w.concurrency_key = k.concurrency_key AND w.key_state = 'waiting') \
           AND (SELECT COUNT(*) FROM jobq_jobs r FORCE INDEX (jobq_jobs_keys) \
                 WHERE r.queue = k.queue AND r.concurrency_key = k.concurrency_key \
                   AND r.key_state IN ('running', 'available')) < GREATEST(k.key_limit, ?) AS due \
         FROM (SELECT queue, concurrency_key, key_limit FROM jobq_keys {after} \
                ORDER BY queue, concurrency_key LIMIT ?) k"
    );
    let mut q = sqlx::query(&sql).bind(floor);
    if let Some((queue, key)) = &cursor.0 {
        q = q.bind(queue).bind(queue).bind(key);
    }
    let rows = q.bind(scan).fetch_all(pool).await?;
    let last = match rows.last() {
        // The key as stored (bytes): a row that is not UTF-8 must not stop the sweep.
        Some(r) if rows.len() as u64 >= u64::from(scan) => {
            Some((text(r, "queue")?, r.try_get::<Vec<u8>, _>("k")?))
        }
        _ => None,
    };
    *cursor = KeyCursor(last);
    let mut out: BTreeMap<QueueName, BTreeSet<String>> = BTreeMap::new();
    for r in rows {
        let due: Option<i64> = r.try_get("due")?;
        if due != Some(1) {
            continue;
        }
        let (Ok(queue), Ok(key)) = (QueueName::new(text(&r, "queue")?), text(&r, "k")) else {
            continue;
        };
        out.entry(queue).or_default().insert(key);
    }
    Ok(out)
}

/// Deletes up to `limit` key rows that no live job uses (available, scheduled, running,
/// retryable, waiting) and that were not written for `idle`: `jobq_keys` would otherwise keep
/// a row per key ever claimed. The candidates are found by a plain read, then deleted by
/// primary key with the condition checked again (so the DELETE locks only those rows, never
/// waiting on keys claims hold). A claim or promotion of the key later creates the row again.
/// A rate window idle that long (longer than any rate period) has nothing left to count.
pub(crate) async fn prune_keys(
    pool: &MySqlPool,
    idle: std::time::Duration,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    // language=MySQL
    const UNUSED: &str = "NOT EXISTS (SELECT 1 FROM jobq_jobs j FORCE INDEX (jobq_jobs_keys) \
          WHERE j.queue = jobq_keys.queue AND j.concurrency_key = jobq_keys.concurrency_key \
            AND j.key_state IN ('available', 'scheduled', 'running', 'retryable', 'waiting'))";
    let rows = sqlx::query(&format!(
        "SELECT queue, concurrency_key AS k FROM jobq_keys \
         WHERE updated_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND AND {UNUSED} LIMIT ?"
    ))
    .bind(super::micros(idle))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut which = Vec::with_capacity(rows.len());
    for r in &rows {
        let Ok(queue) = QueueName::new(text(r, "queue")?) else {
            continue;
        };
        which.push(format!(
            "(queue = {} AND concurrency_key = {})",
            lit(&queue),
            text_lit(&text(r, "k")?)
        ));
    }
    if which.is_empty() {
        return Ok(0);
    }
    // language=MySQL
    Ok(sqlx::query(&format!(
        "DELETE FROM jobq_keys WHERE ({}) \
           AND updated_at < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND AND {UNUSED}",
        which.join(" OR ")
    ))
    .bind(super::micros(idle))
    .execute(pool)
    .await?
    .rows_affected())
}
