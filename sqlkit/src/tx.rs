//! [`OwnedTx`]: a transaction that owns its pooled connection and never gives it back to the
//! pool inside a transaction. sqlx's own `Transaction`, dropped unfinished, queues a ROLLBACK
//! that reaches the server only when the connection is next used or returned, possibly after
//! the statement still in flight ends; meanwhile the server holds whatever the transaction
//! locked. An `OwnedTx` that is not ended by a confirmed COMMIT or ROLLBACK closes its
//! connection instead (the server rolls back as it sees the disconnect), and both ends are
//! bounded by a deadline ([`END_BUDGET`]), so a caller's own timeout around a transaction is
//! enough to bound everything the transaction holds.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Database, MySql, MySqlConnection, MySqlPool, TransactionManager};

/// sqlx's transaction bookkeeping for MySQL: begun through it, a transaction is one sqlx knows
/// of, so a nested `begin` on its connection (a handler's library opening its own transaction)
/// becomes a SAVEPOINT instead of a `BEGIN` that would commit everything before it.
type Manager = <MySql as Database>::TransactionManager;

/// How long a COMMIT or ROLLBACK may take before the connection is closed instead. Its
/// statements wait at most the session's `innodb_lock_wait_timeout` for a lock each, so an
/// end that takes much longer is not coming.
pub const END_BUDGET: Duration = Duration::from_secs(15);

/// Why a transaction ended without the outcome its caller asked for.
#[derive(Debug)]
pub enum TxError {
    /// A statement (or the COMMIT) failed.
    Sql(sqlx::Error),
    /// The deadline passed: the connection was closed, so whatever the transaction did is
    /// rolled back, unless a COMMIT had already been sent (then the outcome is unknown).
    Deadline(Duration),
}

impl std::fmt::Display for TxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxError::Sql(e) => write!(f, "{e}"),
            TxError::Deadline(d) => write!(
                f,
                "the transaction did not finish within {d:?}; its connection was closed"
            ),
        }
    }
}

impl std::error::Error for TxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TxError::Sql(e) => Some(e),
            TxError::Deadline(_) => None,
        }
    }
}

/// For callers that report database errors only: a deadline becomes an I/O timeout naming it.
impl From<TxError> for sqlx::Error {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Sql(e) => e,
            deadline @ TxError::Deadline(_) => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                deadline.to_string(),
            )),
        }
    }
}

impl From<sqlx::Error> for TxError {
    fn from(e: sqlx::Error) -> Self {
        TxError::Sql(e)
    }
}

/// Runs `work` until `deadline` ([`TxError::Deadline`] after it). Dropping `work` drops the
/// [`OwnedTx`] it uses, which closes that connection.
pub async fn within<T>(
    deadline: Duration,
    work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, TxError> {
    match tokio::time::timeout(deadline, work).await {
        Ok(r) => r.map_err(TxError::Sql),
        Err(_) => Err(TxError::Deadline(deadline)),
    }
}

/// A transaction on a pooled connection it owns. Use it as `&mut *tx` (a `MySqlConnection`).
/// End it with [`commit`](OwnedTx::commit) or [`rollback`](OwnedTx::rollback); dropped without
/// either (a timeout, a cancelled task), it closes its connection.
#[derive(Debug)]
pub struct OwnedTx {
    conn: PoolConnection<MySql>,
    /// A `START TRANSACTION` may have been sent and no end confirmed since.
    open: bool,
}

impl OwnedTx {
    /// A connection from `pool` with a transaction begun on it. Safe to cancel: a begin cut
    /// off midway closes the connection.
    pub async fn begin(pool: &MySqlPool) -> Result<OwnedTx, sqlx::Error> {
        let conn = pool.acquire().await?;
        let mut tx = OwnedTx { conn, open: true };
        Manager::begin(&mut tx.conn, None).await?;
        Ok(tx)
    }

    /// COMMIT within [`END_BUDGET`]. On an error or past the budget the connection is closed.
    /// A COMMIT the server refused committed nothing; one that failed on the way (a lost
    /// connection) or ran past the budget may have been applied without the answer arriving:
    /// its outcome is unknown, and the caller must look before saying which.
    pub async fn commit(self) -> Result<(), TxError> {
        self.end(true).await
    }

    /// ROLLBACK within [`END_BUDGET`]; on an error or past it the connection is closed, which
    /// rolls back as well.
    pub async fn rollback(self) -> Result<(), TxError> {
        self.end(false).await
    }

    async fn end(mut self, commit: bool) -> Result<(), TxError> {
        // A nested transaction left open inside (a savepoint nobody released): ending at its
        // level would leave this one open. Refused; the drop closes the connection.
        let depth = Manager::get_transaction_depth(&self.conn);
        if depth != 1 {
            return Err(TxError::Sql(sqlx::Error::Protocol(format!(
                "a transaction nested inside was left open ({depth} levels deep); the \
                 connection was closed, which rolls everything back"
            ))));
        }
        let conn = &mut *self.conn;
        if commit {
            within(END_BUDGET, Manager::commit(conn)).await?;
        } else {
            within(END_BUDGET, Manager::rollback(conn)).await?;
        }
        self.open = false;
        Ok(())
    }
}

impl Deref for OwnedTx {
    type Target = MySqlConnection;
    fn deref(&self) -> &MySqlConnection {
        &self.conn
    }
}

impl DerefMut for OwnedTx {
    fn deref_mut(&mut self) -> &mut MySqlConnection {
        &mut self.conn
    }
}

impl Drop for OwnedTx {
    fn drop(&mut self) {
        if self.open {
            // Closed instead of returned: the pool never hands out a session inside a
            // transaction, and the server releases the transaction's locks at the disconnect.
            self.conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn table(pool: &MySqlPool) {
        sqlx::raw_sql(
            "CREATE TABLE t (id INT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB; \
             INSERT INTO t VALUES (1, 0)",
        )
        .execute(pool)
        .await
        .unwrap();
    }

    /// Whether the server still has a session `id` inside a transaction.
    async fn in_transaction(pool: &MySqlPool, id: u64) -> bool {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
            > 0
    }

    /// A transaction that set the row's value to `v`, and its session's id.
    async fn updated(pool: &MySqlPool, v: i32) -> (OwnedTx, u64) {
        let mut tx = OwnedTx::begin(pool).await.unwrap();
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        sqlx::query("UPDATE t SET v = ? WHERE id = 1")
            .bind(v)
            .execute(&mut *tx)
            .await
            .unwrap();
        (tx, id)
    }

    #[sqlx::test(migrations = false)]
    async fn commit_and_rollback_end_it_and_keep_the_connection(pool: MySqlPool) {
        table(&pool).await;
        let (tx, id) = updated(&pool, 1).await;
        tx.commit().await.unwrap();
        assert!(!in_transaction(&pool, id).await);
        let (tx, _) = updated(&pool, 2).await;
        tx.rollback().await.unwrap();
        let v: i32 = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(v, 1, "committed once, rolled back once");
    }

    /// A transaction opened inside it (a handler's library calling `begin` on the connection)
    /// is a savepoint of it, not a `BEGIN` that would commit what came before: rolling the
    /// outer one back undoes both. One left open makes the outer end refuse (and close).
    #[sqlx::test(migrations = false)]
    async fn a_nested_transaction_is_a_savepoint(pool: MySqlPool) {
        use sqlx::Connection;
        table(&pool).await;
        let (mut tx, _) = updated(&pool, 1).await;
        let mut nested = (*tx).begin().await.unwrap();
        sqlx::query("UPDATE t SET v = v + 10")
            .execute(&mut *nested)
            .await
            .unwrap();
        nested.commit().await.unwrap();
        tx.rollback().await.unwrap();
        let v: i32 = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            v, 0,
            "the outer rollback undid the nested transaction's write"
        );
        let (mut tx, _) = updated(&pool, 2).await;
        let nested = (*tx).begin().await.unwrap();
        std::mem::forget(nested);
        let e = tx.commit().await.unwrap_err();
        assert!(e.to_string().contains("nested inside was left open"), "{e}");
        let v: i32 = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(v, 0, "nothing committed");
    }

    /// An `OwnedTx` dropped unended (a caller's deadline, a cancelled task) closes its
    /// connection: the server rolls back and the row lock is free, not held until the
    /// connection is next used.
    #[sqlx::test(migrations = false)]
    async fn one_dropped_unended_closes_its_connection_and_frees_its_locks(pool: MySqlPool) {
        table(&pool).await;
        let (mut tx, id) = updated(&pool, 5).await;
        // Cut off by a deadline while it waits on something else.
        let cut = within(
            Duration::from_millis(50),
            sqlx::query("SELECT SLEEP(1)").execute(&mut *tx),
        )
        .await;
        assert!(matches!(cut, Err(TxError::Deadline(_))), "{cut:?}");
        drop(tx);
        // The row is free again once the server has seen the disconnect (after the statement
        // in flight ends), and the session is gone.
        let start = Instant::now();
        loop {
            let mut other = pool.acquire().await.unwrap();
            let locked = sqlx::raw_sql(
                "SET SESSION innodb_lock_wait_timeout = 1; START TRANSACTION; \
                 SELECT v FROM t WHERE id = 1 FOR UPDATE; ROLLBACK",
            )
            .execute(&mut *other)
            .await;
            let alive: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            if locked.is_ok() && alive == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the dropped transaction's session still holds its lock: {locked:?}, alive {alive}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let v: i32 = sqlx::query_scalar("SELECT v FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(v, 0, "rolled back");
        let e: sqlx::Error = TxError::Deadline(Duration::from_millis(50)).into();
        assert!(e.to_string().contains("did not finish within 50ms"), "{e}");
    }
}
