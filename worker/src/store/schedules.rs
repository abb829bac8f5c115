//! Recurring jobs' rows (`jobq_schedules`): the leader's locked read and its mark, and the
//! operator's pause, resume and listing.

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool, Row};

use super::opt_text;
use crate::model::ScheduleState as State;

/// Locks schedule `name`'s row (creating it on first sight) and reads its state and the
/// database clock.
pub(crate) async fn lock_schedule(
    tx: &mut MySqlConnection,
    name: &str,
) -> Result<(State, DateTime<Utc>), sqlx::Error> {
    // language=MySQL
    sqlx::query("INSERT IGNORE INTO jobq_schedules (name) VALUES (?)")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    // language=MySQL
    // The previous slot's job counts as unfinished while it is in any live state.
    let r = sqlx::query(
        "SELECT s.last_slot_at, s.paused_at IS NOT NULL AS paused, \
                EXISTS (SELECT 1 FROM jobq_jobs j WHERE j.id = s.last_job_id \
                         AND j.state IN ('available', 'scheduled', 'running', 'retryable', 'waiting')) AS busy, \
                UTC_TIMESTAMP(6) AS now \
         FROM jobq_schedules s WHERE s.name = ? FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    Ok((
        State {
            last_slot: r.try_get("last_slot_at")?,
            paused: r.try_get::<i64, _>("paused")? == 1,
            previous_unfinished: r.try_get::<i64, _>("busy")? == 1,
        },
        r.try_get("now")?,
    ))
}

/// Records the newest slot decided, the job enqueued for it (if any) and the outcome.
pub(crate) async fn mark_schedule(
    tx: &mut MySqlConnection,
    name: &str,
    slot: DateTime<Utc>,
    job: Option<u64>,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    // language=MySQL
    sqlx::query(
        "UPDATE jobq_schedules SET last_slot_at = ?, last_job_id = COALESCE(?, last_job_id), \
                last_outcome = ? WHERE name = ?",
    )
    .bind(slot)
    .bind(job)
    .bind(outcome)
    .bind(name)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Pauses (`by` given) or resumes schedule `name`. False when it already was.
pub(crate) async fn set_schedule_paused(
    pool: &MySqlPool,
    name: &str,
    by: Option<&str>,
) -> Result<bool, sqlx::Error> {
    // language=MySQL
    sqlx::query("INSERT IGNORE INTO jobq_schedules (name) VALUES (?)")
        .bind(name)
        .execute(pool)
        .await?;
    let n = match by {
        // language=MySQL
        Some(by) => sqlx::query(
            "UPDATE jobq_schedules SET paused_at = UTC_TIMESTAMP(6), paused_by = ? \
             WHERE name = ? AND paused_at IS NULL",
        )
        .bind(by)
        .bind(name),
        // language=MySQL
        None => sqlx::query(
            "UPDATE jobq_schedules SET paused_at = NULL, paused_by = NULL \
             WHERE name = ? AND paused_at IS NOT NULL",
        )
        .bind(name),
    }
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A schedule's row, for `jobq schedules`.
#[derive(Clone, Debug, Default)]
pub(crate) struct ScheduleRow {
    pub(crate) last_slot_at: Option<DateTime<Utc>>,
    pub(crate) last_job_id: Option<u64>,
    pub(crate) last_outcome: Option<String>,
    pub(crate) last_job_state: Option<String>,
    pub(crate) paused_at: Option<DateTime<Utc>>,
}

/// Every schedule row, by name.
pub(crate) async fn schedule_rows(
    pool: &MySqlPool,
) -> Result<std::collections::BTreeMap<String, ScheduleRow>, sqlx::Error> {
    // language=MySQL
    let rows = sqlx::query(
        "SELECT s.name, s.last_slot_at, s.last_job_id, s.last_outcome, s.paused_at, \
                (SELECT CAST(j.state AS CHAR) FROM jobq_jobs j WHERE j.id = s.last_job_id) AS job_state \
         FROM jobq_schedules s ORDER BY s.name",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                super::text(&r, "name")?,
                ScheduleRow {
                    last_slot_at: r.try_get("last_slot_at")?,
                    last_job_id: r.try_get("last_job_id")?,
                    last_outcome: opt_text(&r, "last_outcome")?,
                    last_job_state: r.try_get("job_state")?,
                    paused_at: r.try_get("paused_at")?,
                },
            ))
        })
        .collect()
}
