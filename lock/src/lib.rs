//! `jobq-lock`: distributed locks for processes that already share a MySQL or MariaDB server.
//!
//! So far: the **session lock** ([`SessionLock`]), `GET_LOCK` on a connection the guard owns
//! (never a pooled one), freed by the server the moment the holder's process or connection
//! dies. Lease locks with fencing tokens, semaphores, leader election and `jobq lock run` are
//! the next steps (see the project's issue list).
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
mod name;
mod session;

pub use error::{Error, Result};
pub use session::{SessionGuard, SessionLock};
