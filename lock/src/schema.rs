//! The lock crate's one table, `jobq_locks`, which it creates or checks itself
//! ([`ensure_schema`]): a project can use lease locks without jobq's job schema. `jobq migrate`
//! creates the same table (migration 9); both definitions are one, and a test compares them.

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
  PRIMARY KEY (name_key, slot)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// The columns the lease lock reads and writes.
const COLUMNS: [&str; 7] = [
    "name_key",
    "slot",
    "name",
    "holder",
    "token",
    "acquired_at",
    "expires_at",
];

/// Creates `jobq_locks` in the pool's database if it is missing, and checks that an existing
/// one has the columns lease locks use. Idempotent, cheap (one DDL that does nothing when the
/// table exists, one read of the catalogue); call it once at start before using
/// [`LeaseLock`](crate::LeaseLock). Session locks need no table. A database `jobq migrate`
/// prepared already has it.
pub async fn ensure_schema(pool: &MySqlPool) -> Result<()> {
    sqlx::query(CREATE_TABLE).execute(pool).await?;
    // language=MySQL
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobq_locks'",
    )
    .fetch_all(pool)
    .await?;
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| !found.iter().any(|f| f.eq_ignore_ascii_case(c)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "the table jobq_locks exists but lacks the column(s) {}: it is not jobq-lock's \
             (rename it, or use another database)",
            missing.join(", ")
        )))
    }
}
