//! [`Error`], the worker crate's one error enum, and how database errors are classified (by the
//! server's error number, never by SQLSTATE).

use jobq_producer::JobId;
use sqlx::mysql::MySqlDatabaseError;

/// MySQL/MariaDB error numbers jobq reacts to.
pub(crate) mod codes {
    /// `ER_LOCK_DEADLOCK`: the whole transaction was rolled back; retry it.
    pub(crate) const DEADLOCK: u16 = 1213;
    /// `ER_LOCK_WAIT_TIMEOUT`: only the statement was rolled back; the transaction still holds
    /// its locks and must be rolled back explicitly before retrying.
    pub(crate) const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// `ER_CHECKREAD`: snapshot-isolation conflict (MariaDB 11.6.2+ under REPEATABLE READ).
    pub(crate) const CHECKREAD: u16 = 1020;
    /// `ER_NOT_SUPPORTED_YET`, e.g. GET_LOCK on Galera.
    pub(crate) const NOT_SUPPORTED_YET: u16 = 1235;
    /// `ER_NO_SUCH_TABLE`.
    pub(crate) const NO_SUCH_TABLE: u16 = 1146;
}

/// Errors of the worker runtime and the CLI's library calls. Each variant keeps its source;
/// messages do not repeat it, so print the chain once (`{:#}` with anyhow, or walk `source()`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database call failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The producer refused a job or failed to write it.
    #[error(transparent)]
    Producer(#[from] jobq_producer::Error),
    /// Settings are invalid.
    #[error(transparent)]
    Config(#[from] jobq_config::ConfigError),
    /// The server lacks something the configuration needs.
    #[error("unsupported database server: {0}")]
    UnsupportedServer(String),
    /// Two handlers were registered for one kind.
    #[error("a handler for kind {0:?} is already registered; each kind has exactly one handler")]
    DuplicateKind(String),
    /// A kind name is not valid.
    #[error("cannot register handler")]
    InvalidKind(#[source] jobq_producer::Error),
    /// The schema is missing or older than this build.
    #[error("the jobq schema is not migrated in this database: {0}; run `jobq migrate`")]
    NotMigrated(String),
    /// A job does not exist.
    #[error("job {0} does not exist")]
    NoSuchJob(JobId),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The server's error number of `e`, if it is a server error.
pub(crate) fn db_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Whether the failed transaction should simply be run again: deadlock, lock wait timeout,
/// snapshot conflict. None of these means the job failed.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    matches!(
        db_number(e),
        Some(codes::DEADLOCK | codes::LOCK_WAIT_TIMEOUT | codes::CHECKREAD)
    )
}

/// Whether `e` is the server's answer `number`.
pub(crate) fn is_number(e: &sqlx::Error, number: u16) -> bool {
    db_number(e) == Some(number)
}
