//! [`Error`], the lock crate's one error enum.

/// Why a lock operation failed. A lock that is simply busy is not an error: acquiring returns
/// `Ok(None)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed or refused.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// This process already holds the lock. Session locks are not reentrant: the server would
    /// grant the same session the lock again and count it, so two owners in one process would
    /// each believe they held it alone.
    #[error("lock {0:?} is already held by this process; session locks are not reentrant (hold one guard and share it)")]
    AlreadyHeld(String),
    /// The server returned NULL from `GET_LOCK`: the wait was killed, or the server is a
    /// cluster (Galera) that does not support named locks.
    #[error("the server refused GET_LOCK for {0:?} (the wait was killed, or the server does not support named locks: on Galera use a lease lock)")]
    Refused(String),
    /// A parameter is out of range.
    #[error("invalid lock request: {0}")]
    Invalid(String),
    /// The lock was no longer held: its session was lost, or its lease was taken over or
    /// expired. Nothing was written under it.
    #[error(
        "lock {0:?} is no longer held by this guard (lost meanwhile); nothing was done under it"
    )]
    NotHeld(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
