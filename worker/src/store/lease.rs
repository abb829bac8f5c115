//! Leases and worker rows: what the heartbeat writes once per interval.

use std::time::Duration;

use sqlx::{MySqlPool, Row};

use super::{micros, Fence};
use crate::ids::WorkerId;

/// `(id, claim_token) IN ((?,?),…)` with `id IN (…)` first: the first list gives the optimiser
/// a primary-key range on every server version, the second fences each job by its own token.
fn fence_clause(n: usize) -> String {
    let mut s = format!(
        "id IN ({}) AND (id, claim_token) IN (",
        super::sql::marks(n)
    );
    for i in 0..n {
        s.push_str(if i == 0 { "(?,?)" } else { ",(?,?)" });
    }
    s.push(')');
    s
}

fn bind_fences<'q>(
    mut q: sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments>,
    fences: &'q [Fence],
) -> sqlx::query::Query<'q, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    for f in fences {
        q = q.bind(f.id);
    }
    for f in fences {
        q = q.bind(f.id).bind(&f.token[..]);
    }
    q
}

/// This process's `jobq_workers` row.
#[derive(Clone, Debug)]
pub(crate) struct WorkerRow<'a> {
    pub(crate) id: &'a WorkerId,
    pub(crate) host: &'a str,
    pub(crate) pid: u32,
    /// Comma-separated queue names.
    pub(crate) queues: &'a str,
}

/// Extends the leases of `fences` to now + `lease` in one statement. Returns the fences whose
/// lease could not be extended (the job was rescued or finished elsewhere): their handlers must
/// stop, and nothing more may be written for them.
pub(crate) async fn extend_leases(
    pool: &MySqlPool,
    fences: &[Fence],
    lease: Duration,
) -> Result<Vec<Fence>, sqlx::Error> {
    let mut lost = Vec::new();
    for chunk in fences.chunks(500) {
        // language=MySQL
        let sql = format!(
            "UPDATE jobq_jobs FORCE INDEX (PRIMARY) SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
             WHERE {} AND state = 'running'",
            fence_clause(chunk.len())
        );
        let n = bind_fences(sqlx::query(&sql).bind(micros(lease)), chunk)
            .execute(pool)
            .await?
            .rows_affected();
        if n == chunk.len() as u64 {
            continue;
        }
        // Rare: find out which ones are no longer ours.
        // language=MySQL
        let sql = format!(
            "SELECT id FROM jobq_jobs FORCE INDEX (PRIMARY) WHERE {} AND state = 'running'",
            fence_clause(chunk.len())
        );
        let still: Vec<u64> = bind_fences(sqlx::query(&sql), chunk)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| r.get::<u64, _>(0))
            .collect();
        lost.extend(chunk.iter().filter(|f| !still.contains(&f.id)));
    }
    Ok(lost)
}

/// Inserts or refreshes this process's `jobq_workers` row.
pub(crate) async fn register_worker(
    pool: &MySqlPool,
    w: &WorkerRow<'_>,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "INSERT INTO jobq_workers (id, host, pid, queues, started_at, last_heartbeat_at) \
         VALUES (?, ?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE last_heartbeat_at = UTC_TIMESTAMP(6)",
    )
    .bind(w.id.as_str())
    .bind(w.host)
    .bind(w.pid)
    .bind(w.queues)
    .execute(pool)
    .await?;
    Ok(())
}

/// Beats the worker row; false when the row is gone (pruned after a long outage).
pub(crate) async fn beat_worker(pool: &MySqlPool, id: &WorkerId) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let n =
        sqlx::query("UPDATE jobq_workers SET last_heartbeat_at = UTC_TIMESTAMP(6) WHERE id = ?")
            .bind(id.as_str())
            .execute(pool)
            .await?
            .rows_affected();
    Ok(n == 1)
}

/// Deletes this process's worker row (clean shutdown).
pub(crate) async fn deregister_worker(pool: &MySqlPool, id: &WorkerId) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query("DELETE FROM jobq_workers WHERE id = ?")
        .bind(id.as_str())
        .execute(pool)
        .await?;
    Ok(())
}
