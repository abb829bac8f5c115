//! `jobq-lock`: distributed locks for processes that already share a MySQL or MariaDB server.
//!
//! So far:
//!
//! - the **session lock** ([`SessionLock`]): `GET_LOCK` on a connection the guard owns (never a
//!   pooled one), freed by the server the moment the holder's process or connection dies;
//! - the **lease lock** and **semaphore** ([`LeaseLock`]): rows in `jobq_locks` with a lease on
//!   the database clock, a renewing watchdog and a strictly increasing fencing token per
//!   permit, for Galera and proxies; [`LeaseGuard::fenced`] makes a write conditional on the
//!   token still being current.
//!
//! Leader election and `jobq lock run` are the next steps (see the project's issue list).
//!
//! ```no_run
//! # async fn f(pool: sqlx::MySqlPool) -> Result<(), jobq_lock::Error> {
//! use std::time::Duration;
//! let lock = jobq_lock::SessionLock::new(&pool);
//! if let Some(guard) = lock.acquire("nightly report", Duration::from_secs(10)).await? {
//!     tokio::select! {
//!         _ = guard.lost() => eprintln!("lost the lock; stopping"),
//!         _ = async { /* the work */ } => {}
//!     }
//!     guard.release().await?;
//! }
//! # Ok(()) }
//! ```

mod error;
mod lease;
mod name;
mod session;

pub use error::{Error, Result};
pub use lease::{LeaseGuard, LeaseLock};
pub use session::{SessionGuard, SessionLock};
