//! What a producer reads of a job it waits for or follows: how it ended, its progress and
//! its log lines (`Producer::wait_for`, `Producer::follow`).

use sqlx::MySqlPool;

use crate::error::{Error, Result};
use crate::job::JobId;

/// A job's state, result and last error, by primary key (`Producer::wait_for`).
pub(crate) async fn job_end(
    pool: &MySqlPool,
    id: JobId,
) -> Result<Option<crate::producer::JobEnd>> {
    // language=MySQL
    let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT CAST(state AS CHAR), CAST(result AS CHAR), CAST(last_error AS CHAR) \
         FROM jobq_jobs WHERE id = ?",
    )
    .bind(id.0)
    .fetch_optional(pool)
    .await?;
    let Some((state, result, error)) = row else {
        return Ok(None);
    };
    let state = state
        .parse()
        .map_err(|e: String| Error::Database(sqlx::Error::Decode(e.into())))?;
    Ok(Some(crate::producer::JobEnd {
        id,
        state,
        result: result.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))),
        error,
    }))
}

/// Job `id`'s latest progress, if it reported any.
pub(crate) async fn progress_of(
    pool: &MySqlPool,
    id: JobId,
) -> Result<Option<crate::follow::Progress>> {
    // language=MySQL
    // By primary key.
    let row: Option<(u32, String, Option<String>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT attempt, CAST(percent AS CHAR), CAST(message AS CHAR), updated_at \
             FROM jobq_job_progress WHERE job_id = ?",
    )
    .bind(id.0)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(attempt, percent, message, at)| crate::follow::Progress {
            attempt,
            percent: percent.parse().unwrap_or(0.0),
            message,
            at,
        }),
    )
}

/// Up to `limit` log lines of job `id` after line `after` (0: from the first), in order.
pub(crate) async fn logs_after(
    pool: &MySqlPool,
    id: JobId,
    after: u64,
    limit: u32,
) -> Result<Vec<crate::follow::LogLine>> {
    // language=MySQL
    // A range of `jobq_job_logs_job (job_id, id)`.
    let rows: Vec<(u64, u32, chrono::DateTime<chrono::Utc>, String, bool)> = sqlx::query_as(
        "SELECT id, attempt, at, CAST(line AS CHAR), truncated = 1 FROM jobq_job_logs \
         WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
    )
    .bind(id.0)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, attempt, at, line, truncated)| crate::follow::LogLine {
                id,
                attempt,
                at,
                line,
                truncated,
            },
        )
        .collect())
}
