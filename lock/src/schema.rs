//! The lock crate's one table, `jobq_locks`, which it creates or checks itself
//! ([`ensure_schema`]): a project can use lease locks without jobq's job schema. `jobq migrate`
//! creates the same table (migrations 9 and 19); both definitions are one, and a test compares
//! them.

use sqlx::MySqlPool;

use crate::error::{Error, Result};

/// `jobq_locks`: one row per (lock name, permit slot); a plain lock is a semaphore of one
/// permit (slot 0). Rows are never deleted: `token` (the fencing token) only ever grows, across
/// releases, expiries and takeovers. A slot is free when `holder` is NULL or `expires_at` has
/// passed on the database clock.
// language=MySQL
pub const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS jobq_locks (
  name_key    BINARY(20) NOT NULL,
  slot        INT UNSIGNED NOT NULL,
  name        VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  holder      VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  token       BIGINT UNSIGNED NOT NULL,
  acquired_at DATETIME(6) NULL,
  expires_at  DATETIME(6) NOT NULL,
  PRIMARY KEY (name_key, slot),
  KEY jobq_locks_holder (holder)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Creates `jobq_locks` in the pool's database if it is missing, and checks that an existing
/// one has the columns lease locks use. Idempotent and cheap (a read of the catalogue; the DDL
/// only when the table is missing); call it once at start before using
/// [`LeaseLock`](crate::LeaseLock). Session locks need no table. A database `jobq migrate`
/// prepared already has it.
pub async fn ensure_schema(pool: &MySqlPool) -> Result<()> {
    // Read first: a user with no CREATE privilege (tables made by `jobq migrate`) can call
    // this, and on Galera a DDL, even one that does nothing, pauses the cluster.
    let all = jobq_sqlkit::LOCK_COLUMNS;
    let mut missing = jobq_sqlkit::missing_columns(pool, "jobq_locks", &all).await?;
    if missing.len() == all.len() {
        sqlx::query(CREATE_TABLE).execute(pool).await?;
        missing = jobq_sqlkit::missing_columns(pool, "jobq_locks", &all).await?;
    }
    if missing.is_empty() {
        add_holder_index(pool).await;
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the table jobq_locks exists but lacks the column(s) {}: it is not jobq-lock's \
             (rename it, or use another database)",
            missing.join(", ")
        )))
    }
}

/// Adds `jobq_locks_holder` to a table an earlier version created without it (listing the
/// held locks reads every row ever used without it). Best effort: a user without the ALTER
/// privilege keeps the table as it is (the listing still works, only slower); `jobq migrate`
/// (migration 19) adds it too.
async fn add_holder_index(pool: &MySqlPool) {
    // language=MySQL
    let present: std::result::Result<i64, sqlx::Error> = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobq_locks' AND INDEX_NAME = 'jobq_locks_holder'",
    )
    .fetch_one(pool)
    .await;
    if !matches!(present, Ok(0)) {
        return;
    }
    // language=MySQL
    if let Err(e) = sqlx::query("ALTER TABLE jobq_locks ADD KEY jobq_locks_holder (holder)")
        .execute(pool)
        .await
    {
        tracing::warn!(error = %e, "could not add the index jobq_locks_holder to jobq_locks; listing held locks reads every permit row until it is added (`jobq migrate` does)");
    }
}
