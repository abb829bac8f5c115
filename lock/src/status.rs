//! [`status`]: who holds which lock, since when, with which token (for `jobq lock status`).
//!
//! Lease permits are rows in `jobq_locks` and can all be listed. Session locks live in the
//! server's memory under hashed names, so they can only be looked up by name: the answer is the
//! holding connection and what the server's process list says about it.

use std::time::Duration;

use sqlx::{MySqlPool, Row};

use crate::error::Result;
use crate::name::SERVER_NAME;

/// The state of one permit or session lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Held, lease unexpired (or the session lock is taken).
    Held,
    /// Its lease ran out without release (the holder died or froze); the next acquire takes it.
    Expired,
    /// Released.
    Free,
}

impl State {
    /// `held`, `expired` or `free`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Held => "held",
            State::Expired => "expired",
            State::Free => "free",
        }
    }
}

/// One permit of a lease lock or semaphore, or a held session lock.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockInfo {
    /// `session` or `lease`.
    pub kind: &'static str,
    /// The lock's name (for leases, cut to 255 characters as stored).
    pub name: String,
    /// The permit's slot (leases), 0 for session locks.
    pub slot: u32,
    /// See [`State`].
    pub state: State,
    /// The holder: the lease's holder text, or `connection N (user@host)` for a session lock.
    pub holder: Option<String>,
    /// The last fencing token handed out (leases).
    pub token: Option<u64>,
    /// When the current or last holder acquired it, UTC (leases).
    pub acquired_at: Option<String>,
    /// Time since the acquisition (leases), or since the holding connection's last command
    /// (session locks: the watchdog pings every second, so a live holder shows about 0).
    pub held_for: Option<Duration>,
    /// Time left on the lease (leases; none once it has run out).
    pub expires_in: Option<Duration>,
}

/// The lease permits of `name` (all slots) and its session lock if held; without a name,
/// every lease permit that is held or expired.
pub async fn status(pool: &MySqlPool, name: Option<&str>) -> Result<Vec<LockInfo>> {
    // language=MySQL
    // (CONVERT: sqlx reads a `_bin` collation as bytes.)
    let base = "SELECT CONVERT(name USING utf8mb4) AS name, slot, \
                    CONVERT(holder USING utf8mb4) AS holder, token, \
                    DATE_FORMAT(acquired_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS acquired, \
                    TIMESTAMPDIFF(MICROSECOND, acquired_at, UTC_TIMESTAMP(6)) AS held_us, \
                    TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), expires_at) AS left_us \
                FROM jobq_locks";
    let rows = match name {
        Some(n) => {
            sqlx::query(&format!(
                "{base} WHERE name_key = UNHEX(SHA1(?)) ORDER BY slot"
            ))
            .bind(n)
            .fetch_all(pool)
            .await?
        }
        None => {
            sqlx::query(&format!(
                // By jobq_locks_holder: the held and expired permits, not every row ever used.
                "{base} WHERE holder IS NOT NULL ORDER BY name, slot"
            ))
            .fetch_all(pool)
            .await?
        }
    };
    let mut out = Vec::with_capacity(rows.len() + 1);
    for r in rows {
        let holder: Option<String> = r.try_get("holder")?;
        let left: Option<i64> = r.try_get("left_us")?;
        let state = match (&holder, left) {
            (None, _) => State::Free,
            (Some(_), Some(l)) if l > 0 => State::Held,
            _ => State::Expired,
        };
        let micros = |v: Option<i64>| {
            v.filter(|&v| v > 0)
                .map(|v| Duration::from_micros(v as u64))
        };
        out.push(LockInfo {
            kind: "lease",
            name: r.try_get("name")?,
            slot: r.try_get("slot")?,
            state,
            holder,
            token: Some(r.try_get("token")?),
            acquired_at: r.try_get("acquired")?,
            held_for: micros(r.try_get("held_us")?),
            expires_in: if state == State::Held {
                micros(left)
            } else {
                None
            },
        });
    }
    if let Some(n) = name {
        // language=MySQL
        // The processlist may hide other users' connections; then only the id is known.
        let row = sqlx::query(&format!(
            "SELECT CAST(l.id AS UNSIGNED) AS id, p.USER, p.HOST, CAST(p.TIME AS SIGNED) AS TIME \
             FROM (SELECT IS_USED_LOCK({server_name}) AS id) l \
             LEFT JOIN information_schema.PROCESSLIST p ON p.ID = l.id",
            server_name = *SERVER_NAME
        ))
        .bind(n)
        .fetch_one(pool)
        .await?;
        let id: Option<u64> = row.try_get("id")?;
        if let Some(id) = id {
            let user: Option<String> = row.try_get("USER")?;
            let host: Option<String> = row.try_get("HOST")?;
            let time: Option<i64> = row.try_get("TIME")?;
            let who = match (user, host) {
                (Some(u), Some(h)) => format!("connection {id} ({u}@{h})"),
                _ => format!("connection {id}"),
            };
            out.push(LockInfo {
                kind: "session",
                name: n.to_owned(),
                slot: 0,
                state: State::Held,
                holder: Some(who),
                token: None,
                acquired_at: None,
                held_for: time.map(|t| Duration::from_secs(t.max(0) as u64)),
                expires_in: None,
            });
        }
    }
    Ok(out)
}
