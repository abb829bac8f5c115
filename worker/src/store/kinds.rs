//! `jobq_kinds`: which kinds workers handle on which queues, and when a worker last said so.
//! Written by each worker at start and about hourly; read by `jobq enqueue` to warn about a kind
//! no live or recent worker handles.

use std::time::Duration;

use sqlx::MySqlPool;

use super::sql::lit;
use jobq_producer::{KindName, QueueName};

/// Notes that this worker handles `kinds` on `queues`, now. One statement.
pub(crate) async fn note_kinds(
    pool: &MySqlPool,
    kinds: &[KindName],
    queues: &[&QueueName],
) -> Result<(), sqlx::Error> {
    if kinds.is_empty() || queues.is_empty() {
        return Ok(());
    }
    // Names are validated (ASCII letters, digits, `_.:-`), written through the literal layer.
    let rows: Vec<String> = kinds
        .iter()
        .flat_map(|k| {
            queues
                .iter()
                .map(move |q| format!("({}, {}, UTC_TIMESTAMP(6))", lit(k), lit(*q)))
        })
        .collect();
    // A row seen within the last minute is left as it is: workers starting together change
    // nothing after the first, so they neither wait on each other's row locks for long nor
    // (on Galera) replicate the same change.
    // language=MySQL
    sqlx::query(&format!(
        "INSERT INTO jobq_kinds (kind, queue, seen_at) VALUES {} \
         ON DUPLICATE KEY UPDATE seen_at = IF(seen_at < VALUES(seen_at) - INTERVAL 1 MINUTE, \
                                              VALUES(seen_at), seen_at)",
        rows.join(", ")
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// The queues on which a worker said within `within` that it handles `kind` (reads one key
/// range of the primary key).
pub(crate) async fn kind_queues(
    pool: &MySqlPool,
    kind: &KindName,
    within: Duration,
) -> Result<Vec<String>, sqlx::Error> {
    // language=MySQL
    let rows = sqlx::query(
        "SELECT queue FROM jobq_kinds \
         WHERE kind = ? AND seen_at > UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND ORDER BY queue",
    )
    .bind(kind.as_str())
    .bind(super::micros(within))
    .fetch_all(pool)
    .await?;
    // ascii_bin columns arrive flagged binary: read as bytes.
    rows.iter().map(|r| super::text(r, "queue")).collect()
}
