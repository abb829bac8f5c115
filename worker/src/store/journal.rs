//! Writing an attempt's log lines and progress (`journal.rs` decides what and when).

use sqlx::MySqlPool;

use crate::journal::{Line, Report};
use crate::model::Fence;

/// Lines per INSERT.
const LINES_PER_INSERT: usize = 256;

/// Appends `lines` to job `fence.id`'s log as attempt `attempt`'s, and stores `progress` if
/// the attempt still holds the job's claim. Outside a transaction: each statement commits on
/// its own.
pub(crate) async fn write_journal(
    pool: &MySqlPool,
    fence: Fence,
    attempt: u32,
    lines: &[Line],
    progress: Option<&Report>,
) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    for chunk in lines.chunks(LINES_PER_INSERT) {
        // language=MySQL
        // Multi-row INSERTs of at most 256 lines (an attempt stores at most 1,024 lines and
        // 64 KiB: far below the packet and placeholder limits). Lines are not fenced: a stale
        // attempt's lines are still its own, under its attempt number.
        let mut sql = String::from(
            "INSERT INTO jobq_job_logs (job_id, attempt, at, line, truncated) VALUES ",
        );
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 {
                "(?, ?, ?, ?, ?)"
            } else {
                ", (?, ?, ?, ?, ?)"
            });
        }
        let mut q = sqlx::query(&sql);
        for l in chunk {
            q = q
                .bind(fence.id)
                .bind(attempt)
                .bind(l.at)
                .bind(&l.text)
                .bind(l.truncated);
        }
        q.execute(&mut *conn).await?;
    }
    if let Some(p) = progress {
        // language=MySQL
        // Fenced: only while this attempt holds the claim. The read of the job's row takes a
        // shared lock (by primary key, for this one statement), so a re-claim of the job
        // either commits first (and this finds no row) or waits for this write (and the new
        // attempt's reports come after it).
        sqlx::query(
            "INSERT INTO jobq_job_progress (job_id, attempt, percent, message, updated_at) \
             SELECT id, ?, ?, ?, UTC_TIMESTAMP(6) FROM jobq_jobs \
             WHERE id = ? AND claim_token = ? AND state = 'running' LOCK IN SHARE MODE \
             ON DUPLICATE KEY UPDATE attempt = VALUES(attempt), percent = VALUES(percent), \
                 message = VALUES(message), updated_at = VALUES(updated_at)",
        )
        .bind(attempt)
        .bind(p.percent)
        .bind(p.message.as_deref())
        .bind(fence.id)
        .bind(&fence.token[..])
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
