//! Leases and worker rows: what the heartbeat writes once per interval.

use std::time::Duration;

use sqlx::{MySqlConnection, MySqlPool, Row};

use super::sql::{batch, hex, id_list, RawTx, Session};
use super::{micros, Fence};
use crate::ids::WorkerId;

/// This process's `jobq_workers` row.
#[derive(Clone, Debug)]
pub(crate) struct WorkerRow<'a> {
    pub(crate) id: &'a WorkerId,
    pub(crate) host: &'a str,
    pub(crate) pid: u32,
    /// Comma-separated queue names.
    pub(crate) queues: &'a str,
}

/// What one heartbeat's lease statements found.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct LeaseReport {
    /// Leases extended to the server's now + the lease.
    pub(crate) extended: Vec<Fence>,
    /// Jobs that are no longer this process's (rescued, deleted, or claimed again by someone
    /// else: the token differs). Their handlers must stop; nothing more may be written for them.
    pub(crate) lost: Vec<Fence>,
    /// Jobs left alone this time: their row is locked by another session (an operator's
    /// transaction, our own completer writing them) or already finished with our token. Their
    /// local deadline is not pushed; if that lasts a whole lease, the job's timer gives it up.
    pub(crate) skipped: Vec<Fence>,
    /// Jobs whose cancel an operator requested (`jobq cancel`), with who asked.
    pub(crate) cancel: Vec<(Fence, String)>,
}

/// Extends the leases of `fences` to the server's now + `lease`, on the heartbeat's own
/// session, recording into `report` as each chunk commits (a caller that gives up midway keeps
/// what committed). A row another session holds locked is skipped, never waited for (`SKIP
/// LOCKED`), so one locked row cannot cost the other jobs their leases.
pub(crate) async fn extend_leases<S: Session>(
    session: &mut S,
    fences: &[Fence],
    lease: Duration,
    report: &mut LeaseReport,
) -> Result<(), sqlx::Error> {
    for chunk in fences.chunks(500) {
        let ids = id_list(chunk.iter().map(|f| f.id));
        let pairs = chunk
            .iter()
            .map(|f| format!("({},{})", f.id, hex(&f.token)))
            .collect::<Vec<_>>()
            .join(",");
        // Lock the rows that are still ours and not locked by anyone else; `id IN` first gives
        // every server version a primary-key range, the pairs fence each row by its token.
        // language=MySQL
        let (tx, (rows, _)) = RawTx::begin(
            session,
            &format!(
                "SELECT id, cancel_requested_by IS NOT NULL AS cancel, \
                        CAST(cancel_requested_by AS CHAR) AS cancel_by \
                 FROM jobq_jobs FORCE INDEX (PRIMARY) \
                 WHERE id IN ({ids}) AND (id, claim_token) IN ({pairs}) AND state = 'running' \
                 FOR UPDATE SKIP LOCKED"
            ),
        )
        .await?;
        let locked: Vec<u64> = rows.iter().map(|r| r.get::<u64, _>(0)).collect();
        for r in &rows {
            if r.try_get::<i64, _>("cancel")? == 1 {
                let id: u64 = r.get(0);
                if let Some(f) = chunk.iter().find(|f| f.id == id) {
                    let by: Option<String> = r.try_get("cancel_by")?;
                    report
                        .cancel
                        .push((*f, by.unwrap_or_else(|| "an operator".into())));
                }
            }
        }
        let end = if locked.is_empty() {
            "COMMIT".to_owned()
        } else {
            // language=MySQL
            format!(
                "UPDATE jobq_jobs SET lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL {} MICROSECOND \
                 WHERE id IN ({}); COMMIT",
                micros(lease),
                id_list(locked.iter().copied())
            )
        };
        tx.end(&end).await?;
        let (done, rest): (Vec<Fence>, Vec<Fence>) =
            chunk.iter().partition(|f| locked.contains(&f.id));
        report.extended.extend(done);
        if rest.is_empty() {
            continue;
        }
        // Rare: tell rows locked by others (or finished by us) from rows no longer ours. A plain
        // read: it never waits for a lock.
        // language=MySQL
        let (rows, _) = batch(
            session,
            &format!(
                "SELECT id, claim_token FROM jobq_jobs WHERE id IN ({})",
                id_list(rest.iter().map(|f| f.id))
            ),
        )
        .await?;
        for f in rest {
            let ours = rows.iter().any(|r| {
                r.get::<u64, _>(0) == f.id
                    && r.get::<Option<Vec<u8>>, _>(1).as_deref() == Some(&f.token[..])
            });
            if ours {
                report.skipped.push(f);
            } else {
                report.lost.push(f);
            }
        }
    }
    Ok(())
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
pub(crate) async fn beat_worker(
    conn: &mut MySqlConnection,
    id: &WorkerId,
) -> Result<bool, sqlx::Error> {
    // language=MySQL
    let n =
        sqlx::query("UPDATE jobq_workers SET last_heartbeat_at = UTC_TIMESTAMP(6) WHERE id = ?")
            .bind(id.as_str())
            .execute(conn)
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
