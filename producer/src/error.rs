//! [`Error`]: why an enqueue was refused or failed. Validation errors name the field and mean
//! nothing was written.

/// Errors of the producer. Validation errors name the field at fault and mean nothing was
/// written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field failed validation (queue or kind name, priority, max attempts, run-at).
    #[error("invalid {field}: {message}")]
    Invalid {
        /// `queue`, `kind`, `priority`, `max_attempts`, `run_at` or `delay`.
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The payload is not JSON.
    #[error(
        "invalid payload: not valid JSON ({0}); send a JSON value such as {{}} or {{\"ms\": 10}}"
    )]
    InvalidJson(#[source] serde_json::Error),
    /// The payload is larger than `producer.max_payload_bytes`.
    #[error("invalid payload: {size} bytes is over the limit of {limit} bytes (producer.max_payload_bytes); store large data elsewhere and enqueue a reference")]
    PayloadTooLarge {
        /// Size of the JSON text.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A typed job could not be serialised.
    #[error("invalid payload: job of kind {kind} does not serialise to JSON: {source}")]
    Serialize {
        /// The job's kind.
        kind: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The database refused or failed; the enqueue's transaction was rolled back.
    #[error("database error while enqueueing: {0}")]
    Database(#[from] sqlx::Error),
    /// The server rolled back the whole transaction the enqueue ran in (a deadlock between
    /// producers racing for one unique key, or a cluster's certification conflict): nothing of
    /// it was kept, the caller's other writes in it included. Run the whole transaction again;
    /// [`crate::Producer::insert`] and `insert_many` do so themselves.
    #[error(
        "the server rolled back the transaction this enqueue ran in ({0}); nothing of it was \
         kept: run the whole transaction again"
    )]
    RolledBack(#[source] sqlx::Error),
    /// A multi-row insert reported a different number of rows than it was sent, so the history
    /// rows could not be matched to ids; the enqueue failed (rolled back unless it ran in the
    /// caller's transaction, which the caller should roll back).
    #[error("enqueue inserted {inserted} rows where {matched} were sent; nothing should be kept")]
    IdMismatch {
        /// Rows the server reported inserted.
        inserted: u64,
        /// Rows sent.
        matched: u64,
    },
    /// One enqueue call held jobs for queues on different database servers
    /// (`[queues.NAME] database_url`, [`crate::Producer::route`]).
    #[error(
        "jobs for queues {first:?} and {other:?} go to different database servers, and one \
         enqueue call is one transaction on one server; enqueue them in one call per server"
    )]
    SeveralServers {
        /// The first job's queue.
        first: String,
        /// A queue on another server.
        other: String,
    },
    /// No connection could be made to the server (refused, unknown host, no answer in time,
    /// access denied, TLS refused).
    #[error("cannot connect to the database server {server}: {source}; {hint}")]
    Connect {
        /// `host:port/database`, without credentials.
        server: String,
        /// What to do about it, from the cause.
        hint: &'static str,
        /// sqlx's error, with the operating system's or the server's cause.
        #[source]
        source: sqlx::Error,
    },
    /// The database failed while migrating or checking the schema.
    #[error("database error while migrating the jobq schema: {0}")]
    MigrationDatabase(#[source] sqlx::Error),
    /// A migration could not be applied; the message says what to do.
    #[error("migrating the jobq schema: {0}")]
    Migration(String),
    /// The database's jobq schema is missing or older than this build.
    #[error("the jobq schema is not migrated in this database: {0}; run `jobq migrate` (or `jobq_producer::migrate`)")]
    NotMigrated(String),
    /// A job was to run after a job that does not exist on its queue's server.
    #[error("parent job {0} does not exist (never enqueued on this server, or pruned after it finished); nothing was enqueued")]
    NoSuchParent(crate::job::JobId),
    /// The task writing this enqueue together with others ended without an answer (it
    /// panicked, or the runtime is shutting down): whether the job was inserted is unknown.
    #[error("the group write of this enqueue ended without an answer; whether the job was inserted is unknown: look it up, or enqueue it as a unique job to retry safely")]
    GroupLost,
    /// The transaction this enqueue shared with others (group commit) failed for a reason no
    /// one job caused (the connection, the pool, a lost race); the first call of the group got
    /// the error itself, this one its text. Nothing was kept, unless the failure came at the
    /// commit (a lost connection), when the job may exist.
    #[error("the enqueue's shared transaction failed ({0}); enqueue again (if the failure came at the commit, the job may exist: make it unique to retry safely)")]
    GroupFailed(String),
    /// No job has this id (or it was pruned).
    #[error("job {0} does not exist (never enqueued, or pruned after it finished)")]
    NoSuchJob(crate::job::JobId),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A database error of an enqueue inside a transaction (only there): [`Error::RolledBack`]
    /// when the server rolled the whole transaction back, else [`Error::Database`].
    pub fn from_database(e: sqlx::Error) -> Error {
        if jobq_sqlkit::is_number(&e, jobq_sqlkit::codes::DEADLOCK) {
            Error::RolledBack(e)
        } else {
            Error::Database(e)
        }
    }
}
