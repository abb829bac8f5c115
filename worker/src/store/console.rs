//! Reads only the web console makes: the last hour's throughput by minute and the latest
//! failures, both from the newest end of `jobq_transitions` (a range of its primary key above
//! `inspect::history_floor`), each bounded in rows so a busy table costs the same as a quiet one.

use chrono::{DateTime, Utc};
use jobq_producer::JobId;
use sqlx::{MySqlPool, Row};

use super::inspect::history_floor;
use super::{opt_text, text};

/// The most history rows one read scans.
pub(crate) const SCAN_ROWS: u32 = 200_000;

/// A failed attempt as the history records it: the attempt errored and will run again
/// (`failed`), errored for good (`discarded` from `running`), or its worker vanished
/// (`rescued`).
const FAILURE: &str = "(event IN ('failed', 'rescued') \
     OR (event = 'discarded' AND from_state = 'running'))";

/// One minute of the last hour: attempts completed and attempts failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Minute {
    /// Whole minutes before now (0 = the current minute).
    pub(crate) ago: u32,
    /// `completed` transitions.
    pub(crate) completed: i64,
    /// Failed attempts (see [`FAILURE`]).
    pub(crate) failed: i64,
}

/// The last hour by minute, read from at most [`SCAN_ROWS`] of the newest history rows.
/// Returns the minutes that had any, and how many minutes back the read reaches (60 unless
/// the rows read all fall within the hour and older ones exist: then the chart covers less
/// and says so).
pub(crate) async fn last_hour(pool: &MySqlPool) -> Result<(Vec<Minute>, u32), sqlx::Error> {
    // language=MySQL
    // A range of the primary key from its newest end; `at` is only filtered, never searched.
    let floor = history_floor(pool, SCAN_ROWS).await?;
    // Rows older than the hour fall in one group (60); the rollup row tells how old the
    // oldest row read is, on the database clock.
    let rows = sqlx::query(&format!(
        "SELECT CAST(LEAST(FLOOR(TIMESTAMPDIFF(SECOND, at, UTC_TIMESTAMP(6)) / 60), 60) AS SIGNED) AS ago, \
                CAST(SUM(event = 'completed') AS SIGNED) AS completed, \
                CAST(SUM({FAILURE}) AS SIGNED) AS failed, \
                CAST(TIMESTAMPDIFF(SECOND, MIN(at), UTC_TIMESTAMP(6)) AS SIGNED) AS oldest_s \
         FROM jobq_transitions WHERE id > ? \
         GROUP BY ago WITH ROLLUP"
    ))
    .bind(floor)
    .fetch_all(pool)
    .await?;
    let mut minutes = Vec::new();
    let mut reach = 60;
    for r in rows {
        let ago: Option<i64> = r.try_get("ago")?;
        match ago {
            Some(ago) if ago < 60 => minutes.push(Minute {
                ago: ago.max(0) as u32,
                completed: r.try_get::<Option<i64>, _>("completed")?.unwrap_or(0),
                failed: r.try_get::<Option<i64>, _>("failed")?.unwrap_or(0),
            }),
            Some(_) => {}
            None => {
                // The rollup row. With rows left below the floor, the read covers only back
                // to its oldest row: when that is within the hour, the chart says so. (By
                // time, not by row count: ids have gaps, so the rows above the floor may be
                // fewer than SCAN_ROWS.)
                let oldest: Option<i64> = r.try_get("oldest_s")?;
                if let (true, Some(oldest)) = (floor > 0, oldest) {
                    if oldest < 3600 {
                        reach = (oldest / 60).clamp(1, 60) as u32;
                    }
                }
            }
        }
    }
    Ok((minutes, reach))
}

/// A failed attempt, for the overview.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub(crate) job: JobId,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) attempt: u32,
    pub(crate) event: String,
    pub(crate) error: Option<String>,
    pub(crate) at: DateTime<Utc>,
}

/// The latest `limit` failed attempts among the newest [`SCAN_ROWS`] history rows.
pub(crate) async fn recent_failures(
    pool: &MySqlPool,
    limit: u32,
) -> Result<Vec<Failure>, sqlx::Error> {
    // language=MySQL
    // The newest rows of the primary key; the job's queue and kind by its primary key.
    // The walk goes newest first and stops at the `limit`th failure.
    let floor = history_floor(pool, SCAN_ROWS).await?;
    let rows = sqlx::query(&format!(
        "SELECT t.job_id, t.attempt, t.event, t.error, t.at, j.queue, j.kind \
         FROM (SELECT id, job_id, attempt, event, error, at FROM jobq_transitions \
               WHERE id > ? AND {FAILURE} ORDER BY id DESC LIMIT {limit}) t \
         LEFT JOIN jobq_jobs j ON j.id = t.job_id \
         ORDER BY t.id DESC"
    ))
    .bind(floor)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Failure {
                job: JobId(r.try_get("job_id")?),
                queue: opt_text(&r, "queue")?.unwrap_or_default(),
                kind: opt_text(&r, "kind")?.unwrap_or_default(),
                attempt: r.try_get("attempt")?,
                event: text(&r, "event")?,
                error: opt_text(&r, "error")?,
                at: r.try_get("at")?,
            })
        })
        .collect()
}
