//! [`SessionLock`] and [`SessionGuard`]: `GET_LOCK` on a connection the guard owns.
//!
//! The lock lives exactly as long as that connection: the server frees it when the guard
//! releases it, when the guard is dropped (the connection is closed), and when the holder's
//! process or connection dies. If the holder's host dies or is cut off, so that no close
//! reaches the server, the connection's `wait_timeout` (set to five pings, at least 10 s) frees
//! it. A watchdog checks every `ping_every` that the connection still
//! holds the lock (`IS_USED_LOCK(name) = CONNECTION_ID()`); if not (the connection was killed,
//! the server restarted), the guard's [`lost`](SessionGuard::lost) signal fires.
//!
//! Not reentrant: a second acquire of a name this process holds fails with
//! [`Error::AlreadyHeld`] instead of being granted again by the server.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::{self, mark_lost, HoldTimer, Kind};
use crate::name::SERVER_NAME;

/// Names (per database) this process holds session locks on.
fn held() -> &'static Mutex<HashSet<(String, String)>> {
    static HELD: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// A name registered as held by this process; unregistered on drop.
struct Registration(String, String);

impl Drop for Registration {
    fn drop(&mut self) {
        held()
            .lock()
            .expect("never poisoned")
            .remove(&(self.0.clone(), self.1.clone()));
    }
}

/// Acquires session locks on the server `pool` connects to, each on a connection of its own
/// (opened with the pool's options, never taken from the pool).
#[derive(Clone, Debug)]
pub struct SessionLock {
    options: MySqlConnectOptions,
    ping_every: Duration,
}

impl SessionLock {
    /// Session locks on `pool`'s server and database. The watchdog checks every second.
    pub fn new(pool: &MySqlPool) -> Self {
        SessionLock {
            options: (*pool.connect_options()).clone(),
            ping_every: Duration::from_secs(1),
        }
    }

    /// How often the watchdog checks that the lock is still held. Default 1 s.
    pub fn ping_every(mut self, every: Duration) -> Self {
        self.ping_every = every.max(Duration::from_millis(10));
        self
    }

    /// Waits up to `timeout` for lock `name`. `Ok(None)`: another holder kept it that long.
    pub async fn acquire(&self, name: &str, timeout: Duration) -> Result<Option<SessionGuard>> {
        let since = Instant::now();
        let result = self.acquire_inner(name, timeout).await;
        metrics::acquired(Kind::Session, since, &result);
        result
    }

    async fn acquire_inner(&self, name: &str, timeout: Duration) -> Result<Option<SessionGuard>> {
        let db = self.options.get_database().unwrap_or("").to_owned();
        if !held()
            .lock()
            .expect("never poisoned")
            .insert((db.clone(), name.to_owned()))
        {
            return Err(Error::AlreadyHeld(name.to_owned()));
        }
        let registration = Registration(db, name.to_owned());
        let mut conn = MySqlConnection::connect_with(&self.options).await?;
        // language=MySQL
        // A positive timeout only: negative means "forever" on MySQL but NULL on MariaDB.
        let got: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar(&format!("SELECT GET_LOCK({}, ?)", *SERVER_NAME))
                .bind(name)
                .bind(timeout.as_secs_f64())
                .fetch_one(&mut conn)
                .await;
        match got {
            Ok(Some(1)) => {}
            Ok(Some(_)) => {
                let _ = conn.close().await;
                return Ok(None);
            }
            Ok(None) => return Err(Error::Refused(name.to_owned())),
            // GET_LOCK is not supported in a Galera cluster.
            Err(e) if jobq_sqlkit::is_number(&e, jobq_sqlkit::codes::NOT_SUPPORTED_YET) => {
                return Err(Error::Refused(name.to_owned()))
            }
            Err(e) => return Err(e.into()),
        }
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        let conn = Arc::new(tokio::sync::Mutex::new(Some(conn)));
        tokio::spawn(watchdog(
            conn.clone(),
            name.to_owned(),
            self.ping_every,
            lost.clone(),
            stop.clone(),
        ));
        Ok(Some(SessionGuard {
            name: name.to_owned(),
            conn,
            lost,
            stop,
            _registration: registration,
            _hold: HoldTimer::start(Kind::Session),
        }))
    }

    /// Takes lock `name` if it is free right now (no wait).
    pub async fn try_acquire(&self, name: &str) -> Result<Option<SessionGuard>> {
        self.acquire(name, Duration::ZERO).await
    }
}

/// A held session lock. Released by [`release`](SessionGuard::release) or on drop.
#[derive(Debug)]
pub struct SessionGuard {
    name: String,
    conn: Arc<tokio::sync::Mutex<Option<MySqlConnection>>>,
    lost: CancellationToken,
    stop: CancellationToken,
    _registration: Registration,
    _hold: HoldTimer,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl SessionGuard {
    /// The lock's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves once the lock is known to be lost (its connection died or no longer holds it).
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Whether the lock is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Session locks carry no fencing token (use a lease lock where one is needed).
    pub fn token(&self) -> Option<u64> {
        None
    }

    /// Releases the lock and closes its connection. [`Error::NotHeld`] if the lock had been
    /// lost meanwhile.
    pub async fn release(self) -> Result<()> {
        // Take the connection before stopping the watchdog: on stop, the watchdog closes
        // whatever connection it still finds.
        let taken = self.conn.lock().await.take();
        self.stop.cancel();
        let Some(mut conn) = taken else {
            return Err(Error::NotHeld(self.name.clone()));
        };
        // language=MySQL
        let released: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar(&format!("SELECT RELEASE_LOCK({})", *SERVER_NAME))
                .bind(&self.name)
                .fetch_one(&mut conn)
                .await;
        let _ = conn.close().await;
        match released {
            Ok(Some(1)) => Ok(()),
            Ok(_) => {
                mark_lost(Kind::Session, &self.lost);
                Err(Error::NotHeld(self.name.clone()))
            }
            Err(e) => {
                mark_lost(Kind::Session, &self.lost);
                Err(e.into())
            }
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        // The watchdog closes the connection, which frees the lock on the server.
        self.stop.cancel();
    }
}

/// The lock connection's `wait_timeout`: 5 pings, at least 10 s.
fn idle_limit(ping_every: Duration) -> u64 {
    (ping_every.as_secs_f64() * 5.0).ceil().max(10.0) as u64
}

/// How long a watchdog check may take before the connection is given up (and the lock with
/// it): a slow answer on a busy machine is not a lost lock, a connection that stays silent is.
const CHECK_LIMIT: Duration = Duration::from_secs(5);

/// Checks every `every` that the connection still holds `name`; fires `lost` when it does not.
/// On `stop` it closes the connection (releasing whatever it still holds).
async fn watchdog(
    conn: Arc<tokio::sync::Mutex<Option<MySqlConnection>>>,
    name: String,
    every: Duration,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    {
        // language=MySQL
        // A holder whose host dies or is cut off sends no FIN; the server then frees its lock
        // when this idle limit passes (the pings below keep a live holder from idling). Set
        // here rather than before GET_LOCK, to keep it off the acquire's path.
        let mut slot = conn.lock().await;
        if let Some(c) = slot.as_mut() {
            let set = sqlx::query("SET SESSION wait_timeout = ?")
                .bind(idle_limit(every))
                .execute(c)
                .await;
            if let Err(e) = set {
                tracing::warn!(lock = %name, error = %e, "session lock connection failed");
                mark_lost(Kind::Session, &lost);
                slot.take();
                return;
            }
        }
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let mut slot = conn.lock().await;
        let Some(c) = slot.as_mut() else { return };
        // language=MySQL
        let sql = format!("SELECT IS_USED_LOCK({}) = CONNECTION_ID()", *SERVER_NAME);
        let check = sqlx::query_scalar::<_, Option<i64>>(&sql)
            .bind(&name)
            .fetch_one(c);
        let holds = matches!(
            tokio::time::timeout(CHECK_LIMIT.max(every * 3), check).await,
            Ok(Ok(Some(1)))
        );
        if !holds {
            tracing::warn!(lock = %name, "session lock lost");
            mark_lost(Kind::Session, &lost);
            // A connection that failed or no longer holds the lock is of no further use.
            slot.take();
            return;
        }
    }
    if let Some(c) = conn.lock().await.take() {
        let _ = c.close().await;
    }
}
