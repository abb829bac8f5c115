//! The named-lock statements that serialise a queue's claims in `named-lock` mode: the lock's
//! name, `GET_LOCK` and `RELEASE_LOCK` (MYSQL-NOTES §1: the lock is the session's, released
//! strictly after the claim's COMMIT, in its final round trip; see `claim_write.rs`).

use std::time::Duration;

use jobq_producer::QueueName;
use sqlx::MySqlConnection;

use crate::ids::LockName;

/// The named-lock name of a queue: `jobq:` + SHA1(schema, 0x00, queue), 45 ASCII bytes.
/// Never user text: MariaDB compares names byte-wise and limits them to 192 bytes, MySQL
/// case-folds and limits them to 64 characters; names are server-wide, hence the schema.
pub(crate) async fn lock_name(
    conn: &mut MySqlConnection,
    queue: &QueueName,
) -> Result<LockName, sqlx::Error> {
    // language=MySQL
    // The same name as before the shared helper: `jobq:` + SHA1(database, 0x00, queue).
    let name: String =
        sqlx::query_scalar(&format!("SELECT {}", jobq_sqlkit::lock_name_sql("jobq:")))
            .bind(queue.as_str())
            .fetch_one(conn)
            .await?;
    LockName::from_server(name)
        .ok_or_else(|| sqlx::Error::Protocol("the server returned a malformed lock name".into()))
}

/// `GET_LOCK(name, timeout)`: `Some(true)` acquired, `Some(false)` timed out, `None` error
/// (killed, or a deadlock between named locks).
pub(crate) async fn get_lock(
    conn: &mut MySqlConnection,
    name: &LockName,
    timeout: Duration,
) -> Result<Option<bool>, sqlx::Error> {
    // language=MySQL
    // Fractional timeouts are honoured by MariaDB; a negative one would mean "forever" on MySQL
    // but NULL on MariaDB, so only a positive duration is ever passed.
    let r: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(name.as_str())
        .bind(timeout.as_secs_f64().max(0.001))
        .fetch_one(conn)
        .await?;
    Ok(r.map(|v| v == 1))
}

/// `RELEASE_LOCK(name)`: true when this session held it and released it.
pub(crate) async fn release_lock(
    conn: &mut MySqlConnection,
    name: &LockName,
) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let r: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
        .bind(name.as_str())
        .fetch_one(conn)
        .await?;
    Ok(r == Some(1))
}
