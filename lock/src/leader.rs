//! Leader election on a lease lock: [`LeaseLock::lead`] campaigns for a name and runs the
//! caller's future only while this process holds the lease.
//!
//! At most one process leads at a time as far as the lease can promise (see the crate's
//! guarantees table): a leader frozen past its lease may still be running when the next one
//! starts, which is why each term carries the lease's fencing token.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::lease::LeaseLock;

/// One term of leadership, handed to the leader's future.
#[derive(Clone, Debug)]
pub struct Term {
    token: u64,
    lost: CancellationToken,
}

impl Term {
    /// The lease's fencing token for this term: greater than every earlier term's.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Resolves when this term ends because the lease was lost. (The future is dropped then
    /// anyway; this is for work it hands to other tasks.)
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }
}

impl LeaseLock {
    /// Campaigns for leadership of `name` until `stop` fires. Whenever this process wins the
    /// lease it runs `lead(term)`; if the lease is lost the future is dropped (at its next
    /// await) and the campaign goes on. Returns `Some(output)` when a term's future completes
    /// (leadership is released first), `None` when `stop` fired.
    ///
    /// The future is dropped wherever it stands (at stop and on a lost lease): run database
    /// transactions in it in tasks of their own (`tokio::spawn`), or a transaction dropped
    /// mid-way goes back to its pool still open until the connection is next used.
    ///
    /// Followers try every sixth of the lease, so a dead leader's successor takes over within
    /// about 1.2 leases. Database errors while campaigning are logged and retried.
    pub async fn lead<T, F, Fut>(
        &self,
        name: &str,
        stop: &CancellationToken,
        mut lead: F,
    ) -> Option<T>
    where
        F: FnMut(Term) -> Fut,
        Fut: Future<Output = T>,
    {
        let every = (self.lease_ttl() / 6).max(Duration::from_millis(20));
        loop {
            let guard = loop {
                let attempt = tokio::select! {
                    _ = stop.cancelled() => return None,
                    r = self.acquire(name, Duration::ZERO) => r,
                };
                match attempt {
                    Ok(Some(g)) => break g,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(lock = %name, error = %e, "leader campaign failed; retrying")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(every) => {}
                }
            };
            let token = guard.token().expect("leases carry tokens");
            tracing::debug!(lock = %name, token, "leading");
            let term = Term {
                token,
                lost: guard.lost_token(),
            };
            tokio::select! {
                out = lead(term) => {
                    release_quietly(guard).await;
                    return Some(out);
                }
                _ = guard.lost() => {
                    tracing::warn!(lock = %name, token, "leadership lost; campaigning again");
                }
                _ = stop.cancelled() => {
                    release_quietly(guard).await;
                    return None;
                }
            }
        }
    }
}

/// Releases leadership; a lease already lost has nothing to release.
async fn release_quietly(guard: crate::LeaseGuard) {
    let name = guard.name().to_owned();
    if let Err(e) = guard.release().await {
        tracing::warn!(lock = %name, error = %e, "releasing leadership failed; the lease will expire");
    }
}
