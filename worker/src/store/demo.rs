//! The `record` built-in kind's effects table, `jobq_demo_effects`. It is not part of the jobq
//! schema: the demo, the bench and the tests create it (or the first `record` job does), so
//! `jobq migrate` leaves users' schemas alone.

use sqlx::{MySqlConnection, MySqlPool};

/// Creates `jobq_demo_effects` if it is missing. DDL commits implicitly, so this runs on its own
/// connection, never inside a handler's transaction.
pub(crate) async fn create_effects_table(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    // language=MySQL
    // The same columns as the table migration 5 created before it left the schema. Deliberately
    // no unique key: a duplicate run would show up as a duplicate row.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS jobq_demo_effects ( \
           id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, \
           job_id     BIGINT UNSIGNED NOT NULL, \
           attempt    INT UNSIGNED NOT NULL, \
           worker     VARCHAR(64) NOT NULL, \
           effect_key VARCHAR(255) NOT NULL, \
           created_at DATETIME(6) NOT NULL, \
           PRIMARY KEY (id), \
           KEY jobq_demo_effects_job (job_id) \
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    )
    .execute(pool)
    .await?;
    Ok(())
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
