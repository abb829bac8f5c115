//! `jobq-lock`: distributed locks for processes that already share a MySQL or MariaDB server.
//!
//! - the **session lock** ([`SessionLock`]): `GET_LOCK` on a connection the guard owns (never a
//!   pooled one), freed by the server the moment the holder's process or connection dies;
//! - the **lease lock** and **semaphore** ([`LeaseLock`]): rows in `jobq_locks` (created by
//!   [`ensure_schema`], or by `jobq migrate`) with a lease on
//!   the database clock, a renewing watchdog and a strictly increasing fencing token per
//!   permit, for Galera and proxies; [`LeaseGuard::fenced`] makes a write conditional on the
//!   token still being current;
//! - **leader election** ([`LeaseLock::lead`]): run a future only while this process holds a
//!   lease;
//! - [`Guard`], either kind behind one type, and [`metrics`] (acquire wait, hold time, failed
//!   renewals, lost locks).
//!
//! Every guard has the same small surface: `name()`, `token()`, `lost()` (a future that
//! resolves when the lock is known to be lost), `is_lost()` and `release()` (which checks the
//! server's answer; dropping a guard releases too). Which kind to use, and what each does and
//! does not promise, is in the README's "Distributed locks" section.
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
mod guard;
mod leader;
mod lease;
pub mod metrics;
mod name;
mod schema;
mod session;
mod status;

pub use error::{Error, Result};
pub use guard::Guard;
pub use leader::Term;
pub use lease::{LeaseGuard, LeaseLock};
pub use schema::{ensure_schema, CREATE_TABLE};
pub use session::{SessionGuard, SessionLock};
pub use status::{status, LockInfo, State};
