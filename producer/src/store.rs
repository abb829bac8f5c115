//! All SQL of the producer.

use chrono::{DateTime, Utc};
use sqlx::MySqlConnection;

use crate::error::{Error, Result};
use crate::job::JobId;

/// A validated row to insert.
#[derive(Clone, Debug)]
pub(crate) struct JobInsert {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) priority: i16,
    /// Absolute run-at, or `None` for now + `delay_us` on the database clock.
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) delay_us: i64,
    pub(crate) max_attempts: u32,
}

/// Rows per INSERT: 9 placeholders a row stays far below the 65 535-parameter limit.
const CHUNK_ROWS: usize = 1000;
/// Payload bytes per INSERT, well under the default `max_allowed_packet` (16 MiB); a larger
/// packet makes the server drop the connection instead of answering with an error.
const CHUNK_BYTES: usize = 4 << 20;

/// Inserts `rows` through `conn` (inside the caller's transaction when it has one) and writes
/// one `enqueued` transition per job. Returns ids in input order.
pub(crate) async fn insert_jobs(
    conn: &mut MySqlConnection,
    rows: &[JobInsert],
) -> Result<Vec<JobId>> {
    let mut ids = Vec::with_capacity(rows.len());
    // language=MySQL
    let inc: u64 = sqlx::query_scalar("SELECT @@auto_increment_increment")
        .fetch_one(&mut *conn)
        .await?;
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < rows.len()
            && end - start < CHUNK_ROWS
            && (end == start || bytes + rows[end].payload.len() <= CHUNK_BYTES)
        {
            bytes += rows[end].payload.len();
            end += 1;
        }
        insert_chunk(conn, &rows[start..end], inc, &mut ids).await?;
        start = end;
    }
    Ok(ids)
}

async fn insert_chunk(
    conn: &mut MySqlConnection,
    rows: &[JobInsert],
    inc: u64,
    ids: &mut Vec<JobId>,
) -> Result<()> {
    // language=MySQL
    // run_at is the given time, or now + delay on the database clock. A job not yet due starts
    // `scheduled`, out of the claim's way; maintenance makes it `available` when due.
    // UTC_TIMESTAMP(6) is fixed for the whole statement, so "delay 0" is never `scheduled`.
    const ROW: &str = "(?, ?, ?, \
        IF(COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) > UTC_TIMESTAMP(6), 'scheduled', 'available'), \
        ?, COALESCE(?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND), ?, UTC_TIMESTAMP(6))";
    let mut sql = String::with_capacity(160 + rows.len() * (ROW.len() + 1));
    sql.push_str(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, priority, run_at, max_attempts, created_at) VALUES ",
    );
    for i in 0..rows.len() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
    }
    let mut q = sqlx::query(&sql);
    for r in rows {
        q = q
            .bind(&r.queue)
            .bind(&r.kind)
            .bind(&r.payload)
            .bind(r.run_at)
            .bind(r.delay_us)
            .bind(r.priority)
            .bind(r.run_at)
            .bind(r.delay_us)
            .bind(r.max_attempts);
    }
    let res = q.execute(&mut *conn).await?;
    let n = res.rows_affected();
    let first = res.last_insert_id();

    // A single multi-row INSERT gets its auto-increment values in one reservation, so its ids
    // are first, first + inc, … (inc = auto_increment_increment, 1 unless Galera or
    // multi-source setups change it). The history rows are written from exactly that range, and
    // the count is checked, so a server that ever broke the rule fails loudly instead of
    // attaching history to the wrong jobs.
    // language=MySQL
    let hist = sqlx::query(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
         SELECT id, NULL, state, 'enqueued', 0, created_at FROM jobq_jobs \
         WHERE id BETWEEN ? AND ? + (? - 1) * @@auto_increment_increment \
           AND (id - ?) % @@auto_increment_increment = 0",
    )
    .bind(first)
    .bind(first)
    .bind(n)
    .bind(first)
    .execute(&mut *conn)
    .await?;
    if hist.rows_affected() != n || n != rows.len() as u64 {
        return Err(Error::IdMismatch {
            inserted: n,
            matched: hist.rows_affected(),
        });
    }
    ids.extend((0..n).map(|i| JobId(first + i * inc)));
    Ok(())
}
