//! The named-lock claim session of one queue. The lock belongs to this connection, which is
//! never shared or returned to a pool; after any error the session is dropped, which releases
//! whatever it held (MYSQL-NOTES §2.2). `GET_LOCK` is taken only around the claim transaction
//! and released strictly after its COMMIT, in the same round trip; it is never held while
//! handlers run, and correctness never rests on it (every write is fenced).

use std::time::Instant;

use jobq_producer::QueueName;
use tracing::{debug, warn};

use super::claim::{claim, ClaimRequest, Claimed, Flow};
use super::claimer::{Ask, ClaimResult};
use super::Shared;
use crate::db;
use crate::ids::LockName;
use crate::machine::claim::outcome;
use crate::metrics;
use crate::model::{Cursor, Throttled};
use crate::store::{self, ClaimError, ClaimLock, Dedicated};

/// A dedicated connection and the lock name of its queue.
struct LockSession {
    conn: Dedicated,
    name: LockName,
}

/// The named-lock claimer state of one queue: its session, opened on first use and after any
/// error.
#[derive(Default)]
pub(crate) struct NamedLockClaims {
    session: Option<LockSession>,
}

impl NamedLockClaims {
    /// `GET_LOCK` on the dedicated session, the claim transaction, then `RELEASE_LOCK`.
    /// `Ok(empty)` when the lock was busy for `worker.lock_timeout` (another process is
    /// claiming; back off).
    pub(crate) async fn claim<'a>(
        &mut self,
        shared: &'a Shared,
        queue: &QueueName,
        ask: Ask,
        flow: Flow<'_>,
        after: Option<&Cursor>,
    ) -> Result<ClaimResult<'a>, ClaimError> {
        if self.session.is_none() {
            let mut conn = db::dedicated(
                &shared.pool,
                shared.config.database().lock_wait_timeout_secs,
            )
            .await?;
            let name = store::lock_name(&mut conn, queue).await?;
            self.session = Some(LockSession {
                conn: Dedicated::new(conn),
                name,
            });
        }
        let s = self.session.as_mut().expect("just opened");
        let waited = Instant::now();
        let got = match store::get_lock(&mut s.conn, &s.name, shared.config.worker().lock_timeout)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                self.session = None;
                return Err(e.into());
            }
        };
        metrics::lock_wait(queue, waited.elapsed());
        match got {
            Some(true) => {}
            Some(false) => {
                metrics::lock_timeout(queue);
                debug!(queue = %queue, "named lock busy; backing off");
                let idle = outcome(ask.want(0), 0, Throttled::default(), 0);
                return Ok(ClaimResult {
                    claimed: Claimed::nothing(0, true, idle),
                    carried: None,
                });
            }
            None => {
                self.session = None;
                return Err(sqlx::Error::Protocol(
                    "GET_LOCK returned NULL (killed or deadlocked)".into(),
                )
                .into());
            }
        }
        let name = s.name.clone();
        // Successes are taken only now, with the lock held: never parked behind a busy lock.
        let carried = shared.pending.take(queue, ask.carry_max);
        let want = ask.want(carried.len());
        let result = claim(
            &mut s.conn,
            ClaimRequest {
                queue,
                limit: want,
                worker: &shared.id,
                lease: shared.config.worker().lease_ttl,
                lock: ClaimLock::NamedLock(&name),
                complete: &carried.fences(),
                freed: &carried.keys(flow.key_limit),
                results: &carried.results(),
                flow,
                after,
            },
        )
        .await;
        match result {
            Ok(c) => {
                if !c.released || s.conn.is_broken() {
                    warn!(queue = %queue, "RELEASE_LOCK did not release; dropping the session");
                    self.session = None;
                }
                Ok(ClaimResult {
                    claimed: c,
                    carried: Some(carried),
                })
            }
            Err(e) => {
                // Dropping the session rolls back and releases whatever it held.
                self.session = None;
                Err(e)
            }
        }
    }

    /// Releases the lock if held and closes the session (claimer stopping).
    pub(crate) async fn close(mut self) {
        if let Some(mut s) = self.session.take() {
            let _ = store::release_lock(&mut s.conn, &s.name).await;
        }
    }
}
