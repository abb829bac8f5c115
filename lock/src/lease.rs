//! [`LeaseLock`]: locks and semaphores as leases in the `jobq_locks` table (created by
//! `jobq migrate`), for topologies where session locks do not hold (Galera, proxies, Vitess).
//!
//! A permit is a row `(name, slot)`; a lock is a semaphore of one permit. Taking a permit is one
//! UPDATE that takes the row if it is free (no holder, or its lease passed on the database
//! clock), incrementing its **fencing token**; tokens only grow, across releases,
//! expiries and takeovers. A watchdog renews the lease every quarter of its length while the
//! guard lives and stops the moment the guard is released or dropped; if a renewal finds the
//! permit taken, or cannot be made before the lease would run out, the guard's
//! [`lost`](LeaseGuard::lost) signal fires.
//!
//! Leases are only as good as their clock and their holders' promptness: a holder frozen past
//! its lease (a GC pause, SIGSTOP) still believes it holds the lock. The fencing token is what
//! makes that safe: [`LeaseGuard::fenced`] runs a write only while the token is still current,
//! atomically with respect to any takeover.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{MySql, MySqlPool, Transaction};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::{self, mark_lost, HoldTimer, Kind};

/// `jobq_locks.holder` is a VARCHAR(128).
const HOLDER_CHARS: usize = 128;

/// Lease locks and semaphores on `pool`'s database.
#[derive(Clone, Debug)]
pub struct LeaseLock {
    pool: MySqlPool,
    ttl: Duration,
    holder: String,
}

impl LeaseLock {
    /// Leases of 30 s on `pool`, held in the name of `holder` (shown by `jobq lock status`;
    /// any text, e.g. host and pid; cut to its first 128 characters, the column's size).
    ///
    /// Use a pool in READ COMMITTED (as `jobq_worker::connect` sets up): there a contender
    /// skips a permit row that a holder's [`fenced`](LeaseGuard::fenced) transaction has
    /// locked, while under REPEATABLE READ it waits for that transaction (up to
    /// `innodb_lock_wait_timeout`), whatever its own timeout.
    pub fn new(pool: &MySqlPool, holder: impl Into<String>) -> Self {
        let holder: String = holder.into().chars().take(HOLDER_CHARS).collect();
        LeaseLock {
            pool: pool.clone(),
            ttl: Duration::from_secs(30),
            holder,
        }
    }

    /// The lease length (at least 100 ms). The watchdog renews every quarter of it and fires
    /// `lost` when three quarters have passed without a renewal, before the lease can pass to
    /// anyone else.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(100));
        self
    }

    /// The lease length in use.
    pub fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    /// Waits up to `timeout` for lock `name`. `Ok(None)`: it stayed held that long.
    pub async fn acquire(&self, name: &str, timeout: Duration) -> Result<Option<LeaseGuard>> {
        self.acquire_permit(name, 1, timeout).await
    }

    /// Waits up to `timeout` for one of the `permits` permits of semaphore `name`.
    pub async fn acquire_permit(
        &self,
        name: &str,
        permits: u32,
        timeout: Duration,
    ) -> Result<Option<LeaseGuard>> {
        let since = std::time::Instant::now();
        // The attempts run in a task of their own: if this future is dropped (a caller's
        // timeout, a signal) while a take is in flight, the task still gets its answer, and a
        // permit taken for nobody is released when its guard is dropped there.
        let abandon = CancellationToken::new();
        let _abandon_on_drop = abandon.clone().drop_guard();
        let (this, owned) = (self.clone(), name.to_owned());
        let result =
            detached(async move { this.acquire_inner(&owned, permits, timeout, &abandon).await })
                .await;
        metrics::acquired(Kind::Lease, since, &result);
        result
    }

    async fn acquire_inner(
        &self,
        name: &str,
        permits: u32,
        timeout: Duration,
        abandon: &CancellationToken,
    ) -> Result<Option<LeaseGuard>> {
        if permits == 0 {
            return Err(Error::Invalid(
                "a semaphore needs at least one permit".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            // The lease runs from when the take was sent, at the latest.
            let sent = tokio::time::Instant::now();
            let taken = if permits == 1 {
                self.try_slot(name, 0).await?.map(|token| (0, token))
            } else {
                self.try_permits(name, permits).await?
            };
            if let Some((slot, token)) = taken {
                return Ok(Some(self.guard(name, slot, token, sent)));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || abandon.is_cancelled() {
                return Ok(None);
            }
            tokio::select! {
                _ = abandon.cancelled() => return Ok(None),
                _ = tokio::time::sleep(pause.min(deadline - now)) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// One attempt at any permit of a semaphore: a plain read finds the free ones (and creates
    /// missing rows), then each is tried, starting at a different one per contender so they do
    /// not all queue on the first. A poll that finds every permit busy costs one round trip.
    async fn try_permits(&self, name: &str, permits: u32) -> Result<Option<(u32, u64)>> {
        // language=MySQL
        let rows: Vec<(u32, i64)> = sqlx::query_as(
            "SELECT slot, holder IS NULL OR expires_at <= UTC_TIMESTAMP(6) \
             FROM jobq_locks WHERE name_key = UNHEX(SHA1(?)) AND slot < ?",
        )
        .bind(name)
        .bind(permits)
        .fetch_all(&self.pool)
        .await?;
        let mut free: Vec<u32> = rows.iter().filter(|r| r.1 != 0).map(|r| r.0).collect();
        if rows.len() < permits as usize {
            let present: std::collections::HashSet<u32> = rows.iter().map(|r| r.0).collect();
            for slot in (0..permits).filter(|s| !present.contains(s)) {
                match self.create(name, slot).await {
                    Ok(_) => free.push(slot),
                    Err(e) if contention(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if free.is_empty() {
            return Ok(None);
        }
        let first = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_micros() as usize)
            % free.len();
        free.rotate_left(first);
        for slot in free {
            match self.take_slot(name, slot).await {
                Ok(Some(token)) => return Ok(Some((slot, token))),
                Ok(None) => {}
                Err(e) if contention(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Creates permit `slot` of `name` if missing (token 0, already expired), outside any
    /// transaction. Rows are never deleted, so this happens once per permit. True if created.
    async fn create(&self, name: &str, slot: u32) -> Result<bool, sqlx::Error> {
        // language=MySQL
        let created = sqlx::query(
            "INSERT IGNORE INTO jobq_locks (name_key, slot, name, token, expires_at) \
             VALUES (UNHEX(SHA1(?)), ?, ?, 0, UTC_TIMESTAMP(6))",
        )
        .bind(name)
        .bind(slot)
        .bind(display(name))
        .execute(&self.pool)
        .await?;
        Ok(created.rows_affected() == 1)
    }

    /// One attempt at permit `slot` of `name`: its new token if it was free. A deadlock or lock
    /// wait with another contender counts as "not this time".
    async fn try_slot(&self, name: &str, slot: u32) -> Result<Option<u64>> {
        for _ in 0..2 {
            match self.take_slot(name, slot).await {
                Ok(Some(token)) => return Ok(Some(token)),
                Ok(None) => {
                    // language=MySQL
                    // Busy, or no row yet? A plain read (no lock to wait for) tells.
                    let exists: Option<i32> = sqlx::query_scalar(
                        "SELECT 1 FROM jobq_locks WHERE name_key = UNHEX(SHA1(?)) AND slot = ?",
                    )
                    .bind(name)
                    .bind(slot)
                    .fetch_optional(&self.pool)
                    .await?;
                    if exists.is_some() {
                        return Ok(None);
                    }
                    match self.create(name, slot).await {
                        Ok(true) => {}
                        Ok(false) => return Ok(None),
                        Err(e) if contention(&e) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) if contention(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Takes permit `slot` of `name` if it is free (no holder, or its lease passed on the
    /// database clock) with the next token, in one autocommit UPDATE (the row lock makes the
    /// judgement and the take atomic). `LAST_INSERT_ID(expr)` hands the new token back in the
    /// statement's reply, so success costs one round trip.
    async fn take_slot(&self, name: &str, slot: u32) -> Result<Option<u64>, sqlx::Error> {
        // language=MySQL
        let done = sqlx::query(
            "UPDATE jobq_locks SET holder = ?, token = LAST_INSERT_ID(token + 1), \
                    acquired_at = UTC_TIMESTAMP(6), \
                    expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
             WHERE name_key = UNHEX(SHA1(?)) AND slot = ? \
               AND (holder IS NULL OR expires_at <= UTC_TIMESTAMP(6))",
        )
        .bind(&self.holder)
        .bind(self.ttl.as_micros() as u64)
        .bind(name)
        .bind(slot)
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() == 1).then(|| done.last_insert_id()))
    }

    fn guard(&self, name: &str, slot: u32, token: u64, sent: tokio::time::Instant) -> LeaseGuard {
        let permit = Arc::new(Permit {
            pool: self.pool.clone(),
            name: name.to_owned(),
            slot,
            token,
            holder: self.holder.clone(),
            ttl: self.ttl,
        });
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        tokio::spawn(watchdog(permit.clone(), sent, lost.clone(), stop.clone()));
        LeaseGuard {
            permit,
            lost,
            stop,
            _hold: HoldTimer::start(Kind::Lease),
        }
    }
}

/// A deadlock (1213) or lock wait timeout (1205) between contenders, or a snapshot conflict
/// (1020, MariaDB 11.6.2+ under REPEATABLE READ with `innodb_snapshot_isolation`, the
/// default from 11.8; the caller's pool may run at that level): the attempt is simply made
/// again.
fn contention(e: &sqlx::Error) -> bool {
    jobq_sqlkit::is_transient(e)
}

/// The permit's row, while it is still this guard's: same token and holder, lease not passed.
// language=MySQL
const STILL_OURS: &str = "name_key = UNHEX(SHA1(?)) AND slot = ? AND token = ? AND holder <=> ? \
                          AND expires_at > UTC_TIMESTAMP(6)";

/// What identifies a held permit.
#[derive(Debug)]
struct Permit {
    pool: MySqlPool,
    name: String,
    slot: u32,
    token: u64,
    holder: String,
    ttl: Duration,
}

impl Permit {
    /// Pushes the lease to now + ttl if the permit is still ours: `Ok(false)` when it is not.
    async fn renew(&self) -> Result<bool, sqlx::Error> {
        self.renew_on(&self.pool).await
    }

    /// [`renew`](Permit::renew) through `conn` (a transaction's, for a fenced write).
    async fn renew_on<'c>(&self, conn: impl sqlx::MySqlExecutor<'c>) -> Result<bool, sqlx::Error> {
        // language=MySQL
        let sql = format!(
            "UPDATE jobq_locks SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND WHERE {STILL_OURS}"
        );
        let q = sqlx::query(&sql).bind(self.ttl.as_micros() as u64);
        Ok(self.bind_ours(q).execute(conn).await?.rows_affected() == 1)
    }

    /// Frees the permit if it is still ours (the token stays, so the next holder's is higher).
    async fn release(&self) -> Result<bool, sqlx::Error> {
        // language=MySQL
        let sql = format!(
            "UPDATE jobq_locks SET holder = NULL, expires_at = UTC_TIMESTAMP(6) WHERE {STILL_OURS}"
        );
        let q = sqlx::query(&sql);
        Ok(self.bind_ours(q).execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Binds [`STILL_OURS`]'s parameters, in its order.
    fn bind_ours<'q>(
        &'q self,
        q: sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments>,
    ) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
        q.bind(&self.name)
            .bind(self.slot)
            .bind(self.token)
            .bind(&self.holder)
    }
}

/// A held lease permit. Released by [`release`](LeaseGuard::release) or, in the background, on
/// drop.
#[derive(Debug)]
pub struct LeaseGuard {
    permit: Arc<Permit>,
    lost: CancellationToken,
    stop: CancellationToken,
    _hold: HoldTimer,
}

impl LeaseGuard {
    /// The lock's name, as given.
    pub fn name(&self) -> &str {
        &self.permit.name
    }

    /// The permit's slot (0 for a plain lock; 0..permits for a semaphore): with the name and
    /// the token it identifies the permit's row in `jobq_locks`.
    pub fn slot(&self) -> u32 {
        self.permit.slot
    }

    /// The fencing token of this acquisition: strictly greater than every earlier token of
    /// the same permit. Pass it to what the lock protects, or write through
    /// [`fenced`](LeaseGuard::fenced).
    pub fn token(&self) -> Option<u64> {
        Some(self.permit.token)
    }

    /// Resolves once the lease is known to be lost (taken over, or not renewed in time).
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// A token cancelled when the lease is lost (for tasks that outlive a borrow of the guard).
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Begins a transaction in which this permit is still held: an UPDATE renews the lease
    /// only if the row still carries this guard's token, holder and an unexpired lease, which
    /// also locks the row (no takeover can commit until this transaction ends) and, on Galera,
    /// puts the row in the transaction's write set (a takeover on another node conflicts with
    /// it). Write through it and commit; [`Error::NotHeld`] (nothing written) if the lease was
    /// lost, however long this holder was paused. Keep it short: the guard's own watchdog waits
    /// for it to renew.
    pub async fn fenced(&self) -> Result<Transaction<'static, MySql>> {
        let p = &self.permit;
        let mut tx = begin(&p.pool).await?;
        if !p.renew_on(&mut *tx).await? {
            tx.rollback().await?;
            mark_lost(Kind::Lease, &self.lost);
            return Err(Error::NotHeld(p.name.clone()));
        }
        Ok(tx)
    }

    /// Stops the watchdog and frees the permit. [`Error::NotHeld`] if it had been lost. The
    /// UPDATE runs in a task of its own, so it completes even if this future is dropped.
    pub async fn release(self) -> Result<()> {
        self.stop.cancel();
        let permit = self.permit.clone();
        if detached(async move { permit.release().await }).await? {
            Ok(())
        } else {
            mark_lost(Kind::Lease, &self.lost);
            Err(Error::NotHeld(self.permit.name.clone()))
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if !self.stop.is_cancelled() {
            self.stop.cancel();
            // Freed in the background; without a runtime (or if that fails) the lease simply
            // expires.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let permit = self.permit.clone();
                rt.spawn(async move {
                    let _ = permit.release().await;
                });
            }
        }
    }
}

/// Renews every quarter of the lease until `stop`. Fires `lost` when a renewal finds the
/// permit gone, or when three quarters of the lease have passed since the last renewal that
/// succeeded (counted from when it was sent): a quarter of the lease before anyone else could
/// take it, so a holder that cannot renew learns of it while it still holds the lease.
async fn watchdog(
    permit: Arc<Permit>,
    taken: tokio::time::Instant,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let every = permit.ttl / 4;
    let give_up = permit.ttl * 3 / 4;
    let mut renewed = taken;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let sent = tokio::time::Instant::now();
        let left = (renewed + give_up).saturating_duration_since(sent);
        // A slow renewal that succeeds in time still counts: it is given until the give-up
        // point, not just until the next tick (on a busy machine a round trip can take longer
        // than a quarter lease).
        let answer = tokio::time::timeout(left, permit.renew()).await;
        if stop.is_cancelled() {
            // Released meanwhile: a renewal that found nothing is not a loss.
            return;
        }
        match answer {
            Ok(Ok(true)) => renewed = sent,
            Ok(Ok(false)) => {
                tracing::warn!(lock = %permit.name, token = permit.token, "lease lost: the permit was taken over or expired");
                mark_lost(Kind::Lease, &lost);
                return;
            }
            failed => {
                metrics::renewal_failed(Kind::Lease);
                if tokio::time::Instant::now() + every < renewed + give_up {
                    match failed {
                        Ok(Err(e)) => {
                            tracing::warn!(lock = %permit.name, error = %e, "lease renewal failed; retrying")
                        }
                        _ => {
                            tracing::warn!(lock = %permit.name, "lease renewal timed out; retrying")
                        }
                    }
                    continue;
                }
                tracing::warn!(lock = %permit.name, "lease not renewed in time; lost");
                mark_lost(Kind::Lease, &lost);
                return;
            }
        }
    }
}

/// The name kept for display (the key is the hash of the whole name).
fn display(name: &str) -> String {
    if name.chars().count() <= 255 {
        name.to_owned()
    } else {
        let mut s: String = name.chars().take(254).collect();
        s.push('…');
        s
    }
}

use jobq_sqlkit::{begin, detached};
