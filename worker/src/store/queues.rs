//! Queue state shared by all workers (`jobq_queues`): pause and resume.

use sqlx::{MySqlPool, Row};

use super::{opt_text, text};

/// Pauses `queue` (no claim takes from it while paused). False if it already was.
pub(crate) async fn pause(pool: &MySqlPool, queue: &str, by: &str) -> Result<bool, sqlx::Error> {
    // language=MySQL
    // (sqlx connects with CLIENT_FOUND_ROWS, so an upsert cannot tell "already paused" from
    // "paused now": an UPDATE of an active row, else an insert that ignores a paused one.)
    let updated = sqlx::query(
        "UPDATE jobq_queues SET paused_at = UTC_TIMESTAMP(6), paused_by = ? \
         WHERE name = ? AND paused_at IS NULL",
    )
    .bind(by)
    .bind(queue)
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 1 {
        return Ok(true);
    }
    // language=MySQL
    let inserted = sqlx::query(
        "INSERT IGNORE INTO jobq_queues (name, paused_at, paused_by) \
         VALUES (?, UTC_TIMESTAMP(6), ?)",
    )
    .bind(queue)
    .bind(by)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Resumes `queue`. False if it was not paused.
pub(crate) async fn resume(pool: &MySqlPool, queue: &str) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let n = sqlx::query(
        "UPDATE jobq_queues SET paused_at = NULL, paused_by = NULL \
         WHERE name = ? AND paused_at IS NOT NULL",
    )
    .bind(queue)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Paused queues: (name, paused at as RFC 3339 UTC, paused by).
pub(crate) async fn paused(
    pool: &MySqlPool,
) -> Result<Vec<(String, String, Option<String>)>, sqlx::Error> {
    // language=MySQL
    let rows = sqlx::query(
        "SELECT name, DATE_FORMAT(paused_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS since, paused_by \
         FROM jobq_queues WHERE paused_at IS NOT NULL ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                text(&r, "name")?,
                r.try_get::<String, _>("since")?,
                opt_text(&r, "paused_by")?,
            ))
        })
        .collect()
}
