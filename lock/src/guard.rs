//! [`Guard`]: one type for a held lock of either kind, for code that takes the kind from
//! configuration (such as `jobq lock run`).

use crate::error::Result;
use crate::lease::LeaseGuard;
use crate::session::SessionGuard;

/// A held session lock or lease permit. Every method means the same for both kinds.
#[derive(Debug)]
pub enum Guard {
    /// A `GET_LOCK` on a connection of its own.
    Session(SessionGuard),
    /// A lease permit in `jobq_locks`.
    Lease(LeaseGuard),
}

impl Guard {
    /// The lock's name, as given.
    pub fn name(&self) -> &str {
        match self {
            Guard::Session(g) => g.name(),
            Guard::Lease(g) => g.name(),
        }
    }

    /// The fencing token: `Some` for leases, `None` for session locks.
    pub fn token(&self) -> Option<u64> {
        match self {
            Guard::Session(g) => g.token(),
            Guard::Lease(g) => g.token(),
        }
    }

    /// Resolves once the lock is known to be lost.
    pub async fn lost(&self) {
        match self {
            Guard::Session(g) => g.lost().await,
            Guard::Lease(g) => g.lost().await,
        }
    }

    /// Whether the lock is known to be lost.
    pub fn is_lost(&self) -> bool {
        match self {
            Guard::Session(g) => g.is_lost(),
            Guard::Lease(g) => g.is_lost(),
        }
    }

    /// Releases the lock; [`Error::NotHeld`](crate::Error::NotHeld) if it had been lost.
    pub async fn release(self) -> Result<()> {
        match self {
            Guard::Session(g) => g.release().await,
            Guard::Lease(g) => g.release().await,
        }
    }
}

impl From<SessionGuard> for Guard {
    fn from(g: SessionGuard) -> Self {
        Guard::Session(g)
    }
}

impl From<LeaseGuard> for Guard {
    fn from(g: LeaseGuard) -> Self {
        Guard::Lease(g)
    }
}
