/// MySQL/MariaDB error codes jobq reacts to.
pub mod codes {
    /// `ER_LOCK_DEADLOCK`: the whole transaction was rolled back; retry it.
    pub const DEADLOCK: &str = "1213";
    /// `ER_LOCK_WAIT_TIMEOUT`: only the statement was rolled back; the transaction still holds
    /// its locks and must be rolled back explicitly before retrying.
    pub const LOCK_WAIT_TIMEOUT: &str = "1205";
    /// `ER_CHECKREAD`: snapshot-isolation conflict (MariaDB 11.6.2+ under REPEATABLE READ).
    pub const CHECKREAD: &str = "1020";
    /// `ER_SPECIFIC_ACCESS_DENIED_ERROR` / feature not supported, e.g. GET_LOCK on Galera.
    pub const NOT_SUPPORTED_YET: &str = "1235";
}

/// Errors of the worker runtime and the CLI's library calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database call failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
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
    #[error("cannot register handler: {0}")]
    InvalidKind(#[source] jobq_producer::Error),
    /// The schema is missing or older than this build.
    #[error("the jobq schema is not migrated in this database: {0}; run `jobq migrate`")]
    NotMigrated(String),
    /// A job does not exist.
    #[error("job {0} does not exist")]
    NoSuchJob(u64),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The server error code of `e`, if it is a server error.
pub(crate) fn db_code(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether the failed transaction should simply be run again: deadlock, lock wait timeout,
/// snapshot conflict. None of these means the job failed.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    matches!(
        db_code(e).as_deref(),
        Some(codes::DEADLOCK | codes::LOCK_WAIT_TIMEOUT | codes::CHECKREAD)
    )
}
