//! Writing jobs' log lines and progress, many jobs at once (`journal.rs` decides what and
//! when).

use sqlx::MySqlConnection;

use crate::journal::{PendingLine, PendingReport};

/// Lines per INSERT.
const LINES_PER_INSERT: usize = 256;

/// Reports per INSERT.
const REPORTS_PER_INSERT: usize = 100;

/// Appends `lines` to their jobs' logs, and stores each of `reports` if its attempt still
/// holds its job's claim, through the writer's connection. Outside a transaction: each
/// statement commits on its own. The reports are written even if the lines fail; the first
/// error is returned.
pub(crate) async fn write_journal(
    conn: &mut MySqlConnection,
    lines: &[PendingLine],
    reports: &[PendingReport],
) -> Result<(), sqlx::Error> {
    let logged = write_lines(conn, lines).await;
    let reported = write_reports(conn, reports).await;
    logged.and(reported)
}

async fn write_lines(conn: &mut MySqlConnection, lines: &[PendingLine]) -> Result<(), sqlx::Error> {
    for chunk in lines.chunks(LINES_PER_INSERT) {
        // language=MySQL
        // Multi-row INSERTs of at most 256 lines (4 KiB each at most: about a megabyte, below
        // the packet limit; 1,280 placeholders). Lines are not fenced: a stale attempt's
        // lines are still its own, under its attempt number.
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
                .bind(l.job)
                .bind(l.attempt)
                .bind(l.line.at)
                .bind(&l.line.text)
                .bind(l.line.truncated);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

async fn write_reports(
    conn: &mut MySqlConnection,
    reports: &[PendingReport],
) -> Result<(), sqlx::Error> {
    for chunk in reports.chunks(REPORTS_PER_INSERT) {
        // language=MySQL
        // Fenced: a report is stored only while its attempt holds the claim (the join on the
        // token and `running`). The job rows are read by primary key with a shared lock for
        // this one statement, so a re-claim of a job either commits first (and its old
        // attempt's report finds no row) or waits for this write (and the new attempt's
        // reports come after it).
        let mut sql = String::from(
            "INSERT INTO jobq_job_progress (job_id, attempt, percent, message, updated_at) \
             SELECT j.id, r.attempt, r.percent, r.message, UTC_TIMESTAMP(6) \
             FROM (",
        );
        // Every branch typed alike (a bare placeholder's type would otherwise come from
        // combining the branches).
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" UNION ALL ");
            }
            sql.push_str(
                "SELECT CAST(? AS UNSIGNED) AS id, CAST(? AS BINARY(16)) AS token, \
                 CAST(? AS UNSIGNED) AS attempt, CAST(? AS DECIMAL(5,2)) AS percent, \
                 CAST(? AS CHAR(255)) AS message",
            );
        }
        sql.push_str(
            ") r JOIN jobq_jobs j ON j.id = r.id AND j.claim_token = r.token AND j.state = 'running' \
             LOCK IN SHARE MODE \
             ON DUPLICATE KEY UPDATE attempt = VALUES(attempt), percent = VALUES(percent), \
                 message = VALUES(message), updated_at = VALUES(updated_at)",
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.fence.id)
                .bind(&r.fence.token[..])
                .bind(r.attempt)
                .bind(r.report.percent)
                .bind(r.report.message.as_deref());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
