//! [`Error`], the worker crate's one error enum, and how database errors are classified (by the
//! server's error number, never by SQLSTATE).

use jobq_producer::JobId;

/// MySQL/MariaDB error numbers jobq reacts to (shared by every jobq crate).
pub(crate) use jobq_sqlkit::codes;

/// Errors of the worker runtime and the CLI's library calls. Each variant keeps its source. A
/// database error's message also carries the server's (error number and text), so a log line
/// that prints it with `%` keeps the cause; printers of the whole chain may skip a cause whose
/// text the message already holds (the CLI does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database call failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The producer refused a job or failed to write it.
    #[error(transparent)]
    Producer(#[from] jobq_producer::Error),
    /// Settings are invalid.
    #[error(transparent)]
    Config(#[from] jobq_config::ConfigError),
    /// The server lacks something the configuration needs.
    #[error("unsupported database server: {0}")]
    UnsupportedServer(String),
    /// The settings allow jobs this server would refuse or drop the connection for.
    #[error("the settings do not fit this database server: {0}")]
    ServerLimit(String),
    /// Two handlers were registered for one kind.
    #[error("a handler for kind {0:?} is already registered; each kind has exactly one handler")]
    DuplicateKind(String),
    /// A kind name is not valid.
    #[error("cannot register handler")]
    InvalidKind(#[source] jobq_producer::Error),
    /// The schema is missing or older than this build.
    #[error("the jobq schema is not migrated in this database: {0}; run `jobq migrate`")]
    NotMigrated(String),
    /// A background loop of the worker panicked; the worker stopped gracefully.
    #[error("the worker's {0} panicked and the worker stopped (the panic is in the log above); this is a jobq bug, please report it")]
    LoopDied(crate::health::Loop),
    /// A job does not exist.
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
    /// An argument the call cannot act on.
    #[error("{0}")]
    Invalid(String),

    /// A transaction was cut off by its deadline (its connection closed, so it rolled back
    /// unless its COMMIT had been sent).
    #[error("the database did not answer within {0:?}; the transaction was rolled back unless its COMMIT had been sent: check the server's load and connectivity, then try again")]
    Deadline(std::time::Duration),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<jobq_sqlkit::TxError> for Error {
    /// A failed statement stays a database error; a transaction cut off by its deadline says
    /// so (its connection was closed, so it rolled back unless its COMMIT had been sent).
    fn from(e: jobq_sqlkit::TxError) -> Self {
        match e {
            jobq_sqlkit::TxError::Sql(e) => Error::Database(e),
            jobq_sqlkit::TxError::Deadline(d) => Error::Deadline(d),
        }
    }
}

/// Whether `e` is the server's answer `number`.
pub(crate) use jobq_sqlkit::is_number;
/// Whether the failed transaction should simply be run again: deadlock (or Galera
/// certification conflict), lock wait timeout, snapshot conflict. None of these means the job
/// failed.
pub(crate) use jobq_sqlkit::is_transient;
/// The server's error number of `e`, if it is a server error.
pub(crate) use jobq_sqlkit::number as db_number;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};

    use super::*;
    use crate::runtime::retry::DbRetry;

    async fn session(pool: &MySqlPool) -> MySqlConnection {
        let mut c = MySqlConnection::connect_with(&pool.connect_options())
            .await
            .unwrap();
        c.execute("SET SESSION innodb_lock_wait_timeout = 1")
            .await
            .unwrap();
        c
    }

    /// A real lock-wait timeout and a real deadlock, provoked by two sessions, are recognised
    /// by their error numbers (1205, 1213) as transient: retried at once, counted as retried.
    #[sqlx::test(migrations = false)]
    async fn transient_errors_are_recognised_by_number(db: MySqlPool) {
        jobq_producer::migrate(&db).await.unwrap();
        db.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
            .await
            .unwrap();
        db.execute("INSERT INTO t VALUES (1, 0), (2, 0)")
            .await
            .unwrap();
        let (mut a, mut b) = (session(&db).await, session(&db).await);

        // Lock-wait timeout: b waits for a's row lock.
        a.execute("BEGIN").await.unwrap();
        a.execute("UPDATE t SET v = 1 WHERE id = 1").await.unwrap();
        b.execute("BEGIN").await.unwrap();
        let e = b
            .execute("UPDATE t SET v = 2 WHERE id = 1")
            .await
            .unwrap_err();
        assert_eq!(db_number(&e), Some(codes::LOCK_WAIT_TIMEOUT), "{e}");
        assert!(is_transient(&e));
        let pause = DbRetry::new().pause(&e);
        assert!(pause.transient && pause.wait < Duration::from_millis(20));
        b.execute("ROLLBACK").await.unwrap();
        a.execute("ROLLBACK").await.unwrap();

        // Deadlock: a holds 1 and wants 2, b holds 2 and wants 1.
        a.execute("BEGIN").await.unwrap();
        b.execute("BEGIN").await.unwrap();
        a.execute("UPDATE t SET v = 1 WHERE id = 1").await.unwrap();
        b.execute("UPDATE t SET v = 1 WHERE id = 2").await.unwrap();
        let waiting = tokio::spawn(async move {
            let r = a.execute("UPDATE t SET v = 2 WHERE id = 2").await.map(drop);
            (a, r)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rb = b.execute("UPDATE t SET v = 2 WHERE id = 1").await.map(drop);
        let (_a, ra) = waiting.await.unwrap();
        let e = ra
            .err()
            .or(rb.err())
            .expect("one side is the deadlock victim");
        assert_eq!(db_number(&e), Some(codes::DEADLOCK), "{e}");
        assert!(is_transient(&e));

        // Other server errors are not transient; non-server errors have no number.
        let e = db.execute("SELECT * FROM no_such_table").await.unwrap_err();
        assert_eq!(db_number(&e), Some(codes::NO_SUCH_TABLE));
        assert!(!is_transient(&e));
        assert_eq!(db_number(&sqlx::Error::PoolTimedOut), None);
    }

    /// A database error printed on its own (as a log line's `%e` does) keeps the server's
    /// error number and message.
    #[sqlx::test(migrations = false)]
    async fn a_database_error_shows_its_cause(db: MySqlPool) {
        let e = Error::from(db.execute("SELECT * FROM no_such_table").await.unwrap_err());
        let shown = e.to_string();
        assert!(
            shown.contains("1146") && shown.contains("no_such_table"),
            "{shown}"
        );
    }
}
