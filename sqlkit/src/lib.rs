//! `jobq-sqlkit`: what the producer, the lock crate and the worker each need of MySQL/MariaDB,
//! written once so that they agree:
//!
//! - [`OwnedTx`] and [`within`]: a transaction bounded by a deadline that never goes back to the
//!   pool open, with [`TxError`] telling a deadline from a database error: for every
//!   transaction that a deadline or the end of an attempt may cut off (the worker's);
//! - [`begin`] and [`detached`]: sqlx's own `Transaction`, begun safely to cancel, for
//!   transactions nothing cuts off and that a caller holds (the producer's retried inserts,
//!   where an error then costs a queued ROLLBACK rather than a new connection, and the lock
//!   crate's `fenced` transaction handed to users);
//! - [`codes`], [`number`], [`classify`]: database errors told apart by the server's error
//!   number (never by message text or SQLSTATE);
//! - [`lock_name_sql`]: the server-side name of a `GET_LOCK`, hashed so any name fits both
//!   servers' rules and two databases on one server never share a lock;
//! - [`LOCK_COLUMNS`] and [`missing_columns`]: the shape of `jobq_locks`, which both the lock
//!   crate and `jobq migrate` may create, checked one way.

mod tx;

use std::future::Future;

use sqlx::mysql::MySqlDatabaseError;
use sqlx::{MySql, MySqlPool, Transaction};

pub use tx::{within, OwnedTx, TxError, END_BUDGET};

/// MySQL/MariaDB error numbers jobq reacts to.
pub mod codes {
    /// `ER_LOCK_DEADLOCK`: the whole transaction was rolled back; run it again. Galera reports
    /// a certification conflict (another node's write won) with this number too.
    pub const DEADLOCK: u16 = 1213;
    /// `ER_LOCK_WAIT_TIMEOUT`: only the statement was rolled back; the transaction still holds
    /// its locks and must be rolled back before it is run again.
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// `ER_CHECKREAD`: snapshot-isolation conflict (MariaDB 11.6.2+ under REPEATABLE READ).
    pub const CHECKREAD: u16 = 1020;
    /// `ER_NOT_SUPPORTED_YET`, e.g. `GET_LOCK` on Galera.
    pub const NOT_SUPPORTED_YET: u16 = 1235;
    /// `ER_NO_SUCH_TABLE`.
    pub const NO_SUCH_TABLE: u16 = 1146;
    /// `ER_TABLEACCESS_DENIED_ERROR`.
    pub const NO_TABLE_ACCESS: u16 = 1142;
    /// `ER_SP_DOES_NOT_EXIST`: here, a savepoint the server dropped with its transaction.
    pub const NO_SUCH_SAVEPOINT: u16 = 1305;
    /// `ER_DUP_ENTRY`: a unique index refused the row.
    pub const DUPLICATE_KEY: u16 = 1062;
    /// `ER_CONSTRAINT_FAILED` (MariaDB): a CHECK constraint refused the row.
    pub const CHECK_FAILED: u16 = 4025;
    /// `ER_CHECK_CONSTRAINT_VIOLATED` (MySQL): a CHECK constraint refused the row.
    pub const CHECK_VIOLATED: u16 = 3819;
    /// `ER_UNKNOWN_COM_ERROR`: a Galera node outside the primary component ("WSREP has not yet
    /// prepared node for application use").
    pub const NODE_NOT_READY: u16 = 1047;
    /// `ER_CONNECTION_KILLED` (MariaDB): the session was killed.
    pub const CONNECTION_KILLED: u16 = 1927;
    /// `ER_SERVER_SHUTDOWN`: the server is shutting down.
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// `ER_CON_COUNT_ERROR`: too many connections.
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// `ER_OPTION_PREVENTS_STATEMENT`: e.g. `read_only`, a replica or a demoted primary.
    pub const READ_ONLY: u16 = 1290;
    /// `ER_CLIENT_INTERACTION_TIMEOUT` (MySQL): the server closed an idle session.
    pub const IDLE_DISCONNECT: u16 = 4031;
    /// `ER_PARSE_ERROR`.
    pub const SYNTAX: u16 = 1064;
    /// `ER_BAD_FIELD_ERROR`: an unknown column.
    pub const NO_SUCH_COLUMN: u16 = 1054;
}

/// The server's error number of `e`, if it is a server error.
pub fn number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Whether `e` is the server's answer `n`.
pub fn is_number(e: &sqlx::Error, n: u16) -> bool {
    number(e) == Some(n)
}

/// What a database error means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The transaction lost a race (deadlock, Galera certification, lock wait, snapshot
    /// conflict) and may simply run again; nothing it did is kept (after a lock-wait timeout,
    /// once it is rolled back).
    Transient,
    /// The connection is gone, or this server or node cannot serve now (killed, shutting
    /// down, too many connections, read-only, a Galera node not ready): reconnect, or move to
    /// another host. A commit whose answer was lost this way may or may not have happened.
    Connection,
    /// The server refused the statement itself (a constraint, a missing table or column,
    /// unsupported, bad SQL): running it again gives the same answer.
    Refused,
    /// Anything else: other server errors (interrupted statements, failed commits, …), pool
    /// timeouts, decoding, protocol.
    Other,
}

/// Classifies `e` by the server's error number (and sqlx's I/O and TLS errors as connection
/// loss). Numbers not listed in [`codes`] are [`ErrorClass::Other`].
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    use codes::*;
    match (e, number(e)) {
        (_, Some(DEADLOCK | LOCK_WAIT_TIMEOUT | CHECKREAD)) => ErrorClass::Transient,
        (
            _,
            Some(
                NODE_NOT_READY | CONNECTION_KILLED | SERVER_SHUTDOWN | TOO_MANY_CONNECTIONS
                | READ_ONLY | IDLE_DISCONNECT,
            ),
        ) => ErrorClass::Connection,
        (
            _,
            Some(
                NO_SUCH_TABLE | NO_TABLE_ACCESS | NOT_SUPPORTED_YET | DUPLICATE_KEY | CHECK_FAILED
                | CHECK_VIOLATED | SYNTAX | NO_SUCH_COLUMN | NO_SUCH_SAVEPOINT,
            ),
        ) => ErrorClass::Refused,
        (_, Some(_)) => ErrorClass::Other,
        (sqlx::Error::Io(_) | sqlx::Error::Tls(_), None) => ErrorClass::Connection,
        _ => ErrorClass::Other,
    }
}

/// Whether the failed transaction should simply be run again ([`ErrorClass::Transient`]).
pub fn is_transient(e: &sqlx::Error) -> bool {
    classify(e) == ErrorClass::Transient
}

/// `pool.begin()`, safe to cancel. sqlx counts a transaction as open only once BEGIN's answer
/// has arrived: a future dropped (by a timeout, a lost lease) while BEGIN is in flight returns
/// the connection to the pool with a transaction open on the server that sqlx does not know of,
/// and whoever borrows that connection next runs inside it, its writes never committed. Run in
/// a task of its own, the begin always completes; if nobody awaits it any more, the transaction
/// is dropped there and rolled back before the connection is reused.
pub async fn begin(pool: &MySqlPool) -> Result<Transaction<'static, MySql>, sqlx::Error> {
    let pool = pool.clone();
    detached(async move { pool.begin().await }).await
}

/// Runs `work` in a task of its own, so it completes even if the caller's future is dropped
/// (what it returns is then dropped in that task). A task that panicked is an I/O error.
pub async fn detached<T, E>(
    work: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(sqlx::Error::Io(std::io::Error::other(e)).into()))
}

/// The SQL expression of a `GET_LOCK` name for the bound name (one `?`): `prefix` followed by
/// SHA1 of the current database's name, a zero byte and the name, over their bytes. 40 hex
/// characters after the prefix: within MySQL's 64-character limit for any prefix up to 24
/// characters, the same on MySQL (which folds case) and MariaDB, and distinct per database.
pub fn lock_name_sql(prefix: &str) -> String {
    assert!(
        prefix.len() <= 24 && prefix.bytes().all(|b| b.is_ascii_graphic() && b != b'\''),
        "lock name prefix {prefix:?}: at most 24 printable characters, no quote"
    );
    format!(
        "CONCAT('{prefix}', SHA1(CONCAT(CAST(COALESCE(DATABASE(), '') AS BINARY), X'00', \
         CAST(? AS BINARY))))"
    )
}

/// `bytes` as a MySQL hex literal, `X'…'` (lowercase): binary data, or text of any content,
/// spliced into SQL so that nothing in it can end the literal.
pub fn hex_literal(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2 + 3);
    out.push_str("X'");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\'');
    out
}

/// The columns of `jobq_locks` that lease locks read and write.
pub const LOCK_COLUMNS: [&str; 7] = [
    "name_key",
    "slot",
    "name",
    "holder",
    "token",
    "acquired_at",
    "expires_at",
];

/// Which of `columns` the base table `table` of the current database lacks (all of them when
/// there is no such base table: a missing table, or a view of that name).
pub async fn missing_columns<'c, E>(
    db: E,
    table: &str,
    columns: &[&str],
) -> Result<Vec<String>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = MySql>,
{
    // language=MySQL
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(c.COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS c \
         JOIN information_schema.TABLES t \
           ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
         WHERE c.TABLE_SCHEMA = DATABASE() AND c.TABLE_NAME = ? AND t.TABLE_TYPE = 'BASE TABLE'",
    )
    .bind(table)
    .fetch_all(db)
    .await?;
    Ok(columns
        .iter()
        .filter(|c| !found.iter().any(|f| f.eq_ignore_ascii_case(c)))
        .map(|c| c.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_connection_loss_and_others_are_other() {
        let io = sqlx::Error::Io(std::io::Error::other("reset"));
        assert_eq!(classify(&io), ErrorClass::Connection);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Other);
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Other);
        assert!(!is_transient(&io));
    }

    #[test]
    fn hex_literals_are_lowercase_pairs() {
        assert_eq!(hex_literal(&[0, 15, 255]), "X'000fff'");
        assert_eq!(hex_literal(b""), "X''");
    }

    #[test]
    fn lock_names_fit_and_refuse_bad_prefixes() {
        let sql = lock_name_sql("jobq:");
        assert!(sql.starts_with("CONCAT('jobq:', SHA1("));
        assert!(std::panic::catch_unwind(|| lock_name_sql("it's")).is_err());
        assert!(std::panic::catch_unwind(|| lock_name_sql(&"x".repeat(25))).is_err());
    }
}
