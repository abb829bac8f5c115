//! The `record` built-in kind's tables, `jobq_demo_effects` and `jobq_demo_runs`. They are not
//! part of the jobq schema: the demo, the bench and the tests create them (or the first
//! `record` job does), so `jobq migrate` leaves users' schemas alone.

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

/// Creates `jobq_demo_runs` if it is missing: one row per run of a `record` job that asked
/// for it (`"runs": true`), written outside the job's transaction.
pub(crate) async fn create_runs_table(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS jobq_demo_runs ( \
           id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, \
           job_id     BIGINT UNSIGNED NOT NULL, \
           attempt    INT UNSIGNED NOT NULL, \
           worker     VARCHAR(64) NOT NULL, \
           started_at DATETIME(6) NOT NULL, \
           ended_at   DATETIME(6) NULL, \
           PRIMARY KEY (id), \
           KEY jobq_demo_runs_job (job_id) \
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Logs a run's start (autocommit) and returns its row's id.
pub(crate) async fn run_started(
    pool: &MySqlPool,
    job_id: u64,
    attempt: u32,
    worker: &str,
) -> Result<u64, sqlx::Error> {
    // language=MySQL
    let insert = || {
        sqlx::query(
            "INSERT INTO jobq_demo_runs (job_id, attempt, worker, started_at) \
             VALUES (?, ?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(worker)
    };
    let done = match insert().execute(pool).await {
        Err(e) if crate::error::is_number(&e, crate::error::codes::NO_SUCH_TABLE) => {
            create_runs_table(pool).await?;
            insert().execute(pool).await?
        }
        other => other?,
    };
    Ok(done.last_insert_id())
}

/// Logs a run's end (autocommit).
/// Returns whether the run's row was found: on a Galera node other than the one that logged
/// the start (after a failover), the start may not be applied yet.
pub(crate) async fn run_ended(pool: &MySqlPool, run: u64) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let n = sqlx::query(
        "UPDATE jobq_demo_runs SET ended_at = IFNULL(ended_at, UTC_TIMESTAMP(6)) WHERE id = ?",
    )
    .bind(run)
    .execute(pool)
    .await?
    .rows_affected();
    // An already ended run (a retry after an unknown outcome) matches without changing.
    if n == 0 {
        // language=MySQL
        let found: Option<u64> = sqlx::query_scalar("SELECT id FROM jobq_demo_runs WHERE id = ?")
            .bind(run)
            .fetch_optional(pool)
            .await?;
        return Ok(found.is_some());
    }
    Ok(true)
}

/// Ends the runs of (`job_id`, `attempt`, `worker`) still open: a start whose answer was lost
/// (its node died after committing it) is logged without the caller knowing its id.
pub(crate) async fn runs_ended_for(
    pool: &MySqlPool,
    job_id: u64,
    attempt: u32,
    worker: &str,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "UPDATE jobq_demo_runs SET ended_at = UTC_TIMESTAMP(6) \
         WHERE job_id = ? AND attempt = ? AND worker = ? AND ended_at IS NULL",
    )
    .bind(job_id)
    .bind(attempt)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(())
}
