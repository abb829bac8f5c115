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
    /// The server did not hand out consecutive ids for a multi-row insert, so the history rows
    /// could not be matched; nothing was written. Raise `innodb_autoinc_lock_mode` awareness.
    #[error("enqueue inserted {inserted} jobs but matched {matched} history rows; rolled back")]
    IdMismatch {
        /// Jobs inserted by the statement.
        inserted: u64,
        /// History rows written for them.
        matched: u64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
