//! The bench's own SQL: resetting its database, reading the server's counters and the run's
//! timings, and the ceiling (the least SQL that drains a queue, with no framework around it).
//! None of this is jobq's runtime SQL, which lives in the library's `store/`.

use sqlx::{Acquire, MySqlConnection, MySqlPool};

fn marks(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// Empties the job tables (the bench's own database only).
pub(super) async fn bench_reset(pool: &MySqlPool) -> anyhow::Result<()> {
    // The `record` kind's table is not part of the schema; the bench creates it for itself.
    jobq_worker::builtin::setup(pool).await?;
    for t in [
        "jobq_jobs",
        "jobq_transitions",
        "jobq_workers",
        "jobq_demo_effects",
        "jobq_deps",
        "jobq_workflows",
        "jobq_workflow_jobs",
        "jobq_callbacks",
    ] {
        // language=MySQL
        sqlx::query(&format!("TRUNCATE TABLE {t}"))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Server-wide statement and row-write counters (SHOW GLOBAL STATUS).
pub(super) async fn server_counters(pool: &MySqlPool) -> Result<(u64, u64), sqlx::Error> {
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
pub(super) async fn completed_in(pool: &MySqlPool, queue: &str) -> Result<i64, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs WHERE queue = ? AND state = 'completed'")
        .bind(queue)
        .fetch_one(pool)
        .await
}

/// Completed jobs of `queue` with ids above `after` (the run's jobs, in a table that may hold
/// others): a range of the primary key, not of the claim index, whose completed range holds
/// every finished job of the queue.
pub(super) async fn completed_after(
    pool: &MySqlPool,
    queue: &str,
    after: u64,
) -> Result<i64, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobq_jobs FORCE INDEX (PRIMARY) \
         WHERE id > ? AND queue = ? AND state = 'completed'",
    )
    .bind(after)
    .bind(queue)
    .fetch_one(pool)
    .await
}

/// The buffer pool's dirty pages, not yet written out (SHOW GLOBAL STATUS).
pub(super) async fn dirty_pages(pool: &MySqlPool) -> Result<u64, sqlx::Error> {
    // language=MySQL
    let row: Option<(String, String)> =
        sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(_, v)| v.parse().ok()).unwrap_or(0))
}

/// The highest job id (0: none).
pub(super) async fn max_job_id(pool: &MySqlPool) -> Result<u64, sqlx::Error> {
    // language=MySQL
    let id: Option<u64> = sqlx::query_scalar("SELECT MAX(id) FROM jobq_jobs")
        .fetch_one(pool)
        .await?;
    Ok(id.unwrap_or(0))
}

/// Seconds from the first claim to the last completion, and the number of claim transactions
/// (one token each), of the jobs of `queue` with ids above `after`.
pub(super) async fn run_span(
    pool: &MySqlPool,
    queue: &str,
    after: u64,
) -> Result<(f64, i64), sqlx::Error> {
    // language=MySQL
    let (span, claims): (Option<f64>, i64) = sqlx::query_as(
        "SELECT TIMESTAMPDIFF(MICROSECOND, MIN(attempted_at), MAX(finalized_at)) / 1e6, COUNT(DISTINCT claim_token) \
         FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE id > ? AND queue = ?",
    )
    .bind(after)
    .bind(queue)
    .fetch_one(pool)
    .await?;
    Ok((span.unwrap_or(0.0), claims))
}

/// `n` no-op jobs of `queue` (the runs' payload) completed over the last day, evenly in id
/// order, each with its three history rows (enqueued, claimed, completed), written by the
/// server in chunks of 100,000 (a cross join of digits: no client round trip per row). What a
/// busy queue leaves behind for retention; unlike a real one's, their index entries were never
/// moved by a claim, so no purge is pending for them.
pub(super) async fn fill_finished(
    pool: &MySqlPool,
    queue: &str,
    n: u64,
) -> Result<(), sqlx::Error> {
    const CHUNK: u64 = 100_000;
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                  SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9)";
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK);
        let from = max_job_id(pool).await?;
        // language=MySQL
        let sql = format!(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at, attempt, max_attempts, \
                                    claim_token, worker_id, created_at, attempted_at, finalized_at) \
             SELECT ?, 'noop', '{{}}', 'completed', t, 1, 25, UNHEX(MD5(n + ?)), 'bench', t, t, t \
             FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS n, \
                          UTC_TIMESTAMP(6) - INTERVAL 1 DAY + INTERVAL ((? + a.d + 10 * b.d \
                            + 100 * c.d + 1000 * e.d + 10000 * f.d) * ?) MICROSECOND AS t \
                   FROM {digits} a, {digits} b, {digits} c, {digits} e, {digits} f) g \
             WHERE n < ? ORDER BY n"
        );
        let done = n - left;
        let step_us = 86_400_000_000 / n.max(1);
        sqlx::query(&sql)
            .bind(queue)
            .bind(done)
            .bind(done)
            .bind(step_us)
            .bind(k)
            .execute(pool)
            .await?;
        for (from_state, to_state, event, attempt) in [
            (None, "available", "enqueued", 0),
            (Some("available"), "running", "claimed", 1),
            (Some("running"), "completed", "completed", 1),
        ] {
            // language=MySQL
            sqlx::query(
                "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
                 SELECT id, ?, ?, ?, ?, 'bench', finalized_at FROM jobq_jobs FORCE INDEX (PRIMARY) \
                 WHERE id > ? ORDER BY id",
            )
            .bind(from_state)
            .bind(to_state)
            .bind(event)
            .bind(attempt)
            .bind(from)
            .execute(pool)
            .await?;
        }
        left -= k;
    }
    Ok(())
}

/// Microseconds from the last completion among workflow `flow`'s jobs other than `child` to
/// `child`'s claim (database clock).
pub(super) async fn release_latency(
    pool: &MySqlPool,
    flow: u64,
    child: u64,
) -> Result<i64, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, \
                (SELECT MAX(finalized_at) FROM jobq_jobs WHERE workflow_id = ? AND id <> ?), \
                (SELECT attempted_at FROM jobq_jobs WHERE id = ?))",
    )
    .bind(flow)
    .bind(child)
    .bind(child)
    .fetch_one(pool)
    .await
}

/// run_at → claim, in microseconds, of every job of `queue` (for pickup-latency percentiles).
pub(super) async fn pickup_latencies(
    pool: &MySqlPool,
    queue: &str,
) -> Result<Vec<i64>, sqlx::Error> {
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
pub(super) async fn ceiling_batch(
    conn: &mut MySqlConnection,
    queue: &str,
    limit: u32,
    lock: Option<&str>,
    history: bool,
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
        // A running row must carry a token and a lease (schema constraint); one fixed token
        // for the whole ceiling run: nothing here is fenced.
        let sql = format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'running', claim_token = X'00000000000000000000000000000001', \
                    lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, attempted_at = UTC_TIMESTAMP(6) \
             WHERE id IN ({})",
            marks(ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in &ids {
            q = q.bind(id);
        }
        q.execute(&mut *tx).await?;
        if history {
            history_rows(&mut tx, &ids, "available", "running", "claimed").await?;
        }
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
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET state = 'completed', finalized_at = UTC_TIMESTAMP(6), lease_expires_at = NULL WHERE id IN ({})",
            marks(ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in &ids {
            q = q.bind(id);
        }
        if history {
            // With history the completion and its rows are one transaction, as in jobq.
            let mut tx = conn.begin().await?;
            q.execute(&mut *tx).await?;
            history_rows(&mut tx, &ids, "running", "completed", "completed").await?;
            tx.commit().await?;
        } else {
            q.execute(&mut *conn).await?;
        }
    }
    Ok(ids.len())
}

/// One transition row per job of `ids`, as jobq writes them (multi-row INSERT … SELECT).
async fn history_rows(
    conn: &mut MySqlConnection,
    ids: &[u64],
    from: &str,
    to: &str,
    event: &str,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, at) \
         SELECT id, ?, ?, ?, attempt, 'bench', UTC_TIMESTAMP(6) FROM jobq_jobs FORCE INDEX (PRIMARY) \
         WHERE id IN ({})",
        marks(ids.len())
    );
    let mut q = sqlx::query(&sql).bind(from).bind(to).bind(event);
    for id in ids {
        q = q.bind(id);
    }
    q.execute(conn).await?;
    Ok(())
}

/// The definition of index `name` of `table` (`[UNIQUE] KEY name (col, col(len))`), read from
/// the catalogue so a price run can drop it and put it back as it was.
pub(super) async fn index_definition(
    pool: &MySqlPool,
    table: &str,
    name: &str,
) -> Result<String, sqlx::Error> {
    // language=MySQL
    let cols: Vec<(i64, String, Option<i64>)> = sqlx::query_as(
        "SELECT CAST(NON_UNIQUE AS SIGNED), CAST(COLUMN_NAME AS CHAR), CAST(SUB_PART AS SIGNED) \
         FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ? ORDER BY SEQ_IN_INDEX",
    )
    .bind(table)
    .bind(name)
    .fetch_all(pool)
    .await?;
    let unique = cols.first().is_some_and(|c| c.0 == 0);
    let list: Vec<String> = cols
        .iter()
        .map(|(_, c, len)| match len {
            Some(n) => format!("{c}({n})"),
            None => c.clone(),
        })
        .collect();
    Ok(format!(
        "{}KEY {name} ({})",
        if unique { "UNIQUE " } else { "" },
        list.join(", ")
    ))
}

/// `ALTER TABLE table action` (bench only: names come from the bench itself).
pub(super) async fn alter(pool: &MySqlPool, table: &str, action: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("ALTER TABLE {table} {action}"))
        .execute(pool)
        .await?;
    Ok(())
}

/// The narrow-table floor's table: what a queue needs and nothing else.
pub(super) async fn narrow_reset(pool: &MySqlPool, n: u32) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query("DROP TABLE IF EXISTS jobq_bench_narrow")
        .execute(pool)
        .await?;
    // language=MySQL
    sqlx::query(
        "CREATE TABLE jobq_bench_narrow (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, \
         queue VARCHAR(64) NOT NULL, state TINYINT NOT NULL, priority SMALLINT NOT NULL, \
         run_at DATETIME(6) NOT NULL, PRIMARY KEY (id), KEY claim (queue, state, priority, run_at, id)) \
         ENGINE=InnoDB",
    )
    .execute(pool)
    .await?;
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        // language=MySQL
        let sql = format!(
            "INSERT INTO jobq_bench_narrow (queue, state, priority, run_at) VALUES {}",
            vec!["('bench', 0, 0, UTC_TIMESTAMP(6))"; k as usize].join(", ")
        );
        sqlx::query(&sql).execute(pool).await?;
        left -= k;
    }
    Ok(())
}

/// The narrow-table floor: claim up to `limit` (state 0 → 1), then finish them (1 → 2) with
/// one UPDATE. Returns how many.
pub(super) async fn narrow_batch(
    conn: &mut MySqlConnection,
    limit: u32,
) -> Result<usize, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // language=MySQL
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT id FROM jobq_bench_narrow FORCE INDEX (claim) WHERE queue = 'bench' AND state = 0 \
         ORDER BY priority, run_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    narrow_set(&mut tx, 1, &ids).await?;
    tx.commit().await?;
    narrow_set(conn, 2, &ids).await?;
    Ok(ids.len())
}

/// Marks every job of `queue` completed, in chunks (for the "1M finished jobs" scaling figure).
pub(super) async fn bench_finish_all(pool: &MySqlPool, queue: &str) -> Result<(), sqlx::Error> {
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

/// Moves every finished job's times back by `age` (for the retention measurement).
pub(super) async fn age_finished(
    pool: &MySqlPool,
    age: std::time::Duration,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "UPDATE jobq_jobs SET run_at = run_at - INTERVAL ? SECOND, \
         finalized_at = finalized_at - INTERVAL ? SECOND WHERE finalized_at IS NOT NULL",
    )
    .bind(age.as_secs())
    .bind(age.as_secs())
    .execute(pool)
    .await?;
    Ok(())
}

/// Turns the bench queue's `available` jobs into what a console sees on a busy day, by id:
/// of every 100 jobs, 90 completed, 3 discarded and 2 retryable (with an error), 2 scheduled,
/// 3 left available; spread over several kinds. Each finished or failed job gets the
/// history row of its last transition (claim rows are left out: the console reads only the
/// newest history). Works in chunks of ids so no statement runs long.
pub(super) async fn console_mix(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    // language=MySQL
    let (lo, hi): (Option<u64>, Option<u64>) =
        sqlx::query_as("SELECT MIN(id), MAX(id) FROM jobq_jobs")
            .fetch_one(pool)
            .await?;
    let (Some(lo), Some(hi)) = (lo, hi) else {
        return Ok(());
    };
    let mut from = lo;
    while from <= hi {
        let to = from + 50_000;
        // language=MySQL
        sqlx::query(
            "UPDATE jobq_jobs SET \
               kind = ELT(1 + id % 4, 'noop', 'send_email', 'resize_image', 'sync_account'), \
               state = CASE WHEN id % 100 < 90 THEN 'completed' WHEN id % 100 < 93 THEN 'discarded' \
                            WHEN id % 100 < 95 THEN 'retryable' WHEN id % 100 < 97 THEN 'scheduled' \
                            ELSE 'available' END, \
               attempt = IF(id % 100 < 90, 1, IF(id % 100 < 95, 3, 0)), \
               finalized_at = IF(id % 100 < 93, UTC_TIMESTAMP(6) - INTERVAL (? - id) * 3000 MICROSECOND, NULL), \
               run_at = IF(id % 100 BETWEEN 95 AND 96, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR, run_at), \
               last_error = IF(id % 100 BETWEEN 90 AND 94, \
                               CONCAT('timeout after 30s talking to upstream ', id % 7), NULL) \
             WHERE id >= ? AND id < ?",
        )
        .bind(hi)
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        // language=MySQL
        sqlx::query(
            "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, worker_id, error, at) \
             SELECT id, 'running', state, \
                    CASE state WHEN 'completed' THEN 'completed' WHEN 'discarded' THEN 'discarded' ELSE 'failed' END, \
                    attempt, 'bench-worker', last_error, \
                    COALESCE(finalized_at, UTC_TIMESTAMP(6) - INTERVAL (? - id) * 3000 MICROSECOND) \
             FROM jobq_jobs WHERE id >= ? AND id < ? AND state IN ('completed', 'discarded', 'retryable')",
        )
        .bind(hi)
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?;
        from = to;
    }
    Ok(())
}

/// First claim and last completion of `queue` (seconds since the epoch, database clock) and
/// its claims: for runs spread over several servers of one machine.
pub(super) async fn run_bounds(
    pool: &MySqlPool,
    queue: &str,
) -> Result<(f64, f64, i64), sqlx::Error> {
    // language=MySQL
    let (first, last, claims): (Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT CAST(UNIX_TIMESTAMP(MIN(attempted_at)) AS DOUBLE), \
                CAST(UNIX_TIMESTAMP(MAX(finalized_at)) AS DOUBLE), COUNT(DISTINCT claim_token) \
         FROM jobq_jobs WHERE queue = ?",
    )
    .bind(queue)
    .fetch_one(pool)
    .await?;
    Ok((first.unwrap_or(0.0), last.unwrap_or(0.0), claims))
}

async fn narrow_set(conn: &mut MySqlConnection, state: u8, ids: &[u64]) -> Result<(), sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "UPDATE jobq_bench_narrow SET state = {state} WHERE id IN ({})",
        marks(ids.len())
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id);
    }
    q.execute(conn).await?;
    Ok(())
}
