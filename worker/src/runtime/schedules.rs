//! The leader's pass over the recurring jobs: for each schedule, in a transaction of its own,
//! lock its row, decide ([`crate::machine::schedule::plan`]), enqueue the due slots (each job with the
//! unique key `schedule:NAME:SLOT`) and record the newest slot decided. A slot is thereby
//! enqueued once however many processes lead in turn: the row lock serialises them and the
//! recorded slot is never decided again.

use std::time::Duration;

use chrono::SecondsFormat;
use jobq_config::Schedule;
use jobq_producer::NewJob;
use tracing::{debug, info, warn};

use super::Shared;
use crate::machine::schedule::{plan, Plan};
use crate::store;

/// How long a slot's unique key is held after its job finished: longer than any overlap of
/// leaders, so a slot decided twice (it cannot be, see above) would still be one job.
const SLOT_KEY_HELD: Duration = Duration::from_secs(86_400);

/// Slots up to this old are run in any case: the leader's normal lateness, a handover
/// included.
pub(crate) fn window(shared: &Shared) -> Duration {
    catch_up_window(shared.config.maintenance().interval)
}

/// The worst lateness of a slot when nothing is wrong but a leader's death, for maintenance
/// `interval`: the dead leader's last pass was up to an interval before its death; its lease
/// ([`super::maintenance::leader_lease`]) runs out up to a lease after that; a follower tries
/// every sixth of a lease, so one takes over within 7/6 of a lease; its first pass starts at
/// once and may take up to an interval. Plus a second for a loaded machine's timers.
pub(crate) fn catch_up_window(interval: Duration) -> Duration {
    let lease = super::maintenance::leader_lease(interval);
    interval * 2 + lease * 7 / 6 + Duration::from_secs(1)
}

/// One pass over every schedule. Errors are logged per schedule; the others go on.
pub(crate) async fn run_due(shared: &Shared) {
    for s in shared.config.schedules() {
        if let Err(e) = one(shared, s).await {
            warn!(schedule = %s.name, error = %e, "could not enqueue the schedule's due slots; next pass tries again");
        }
    }
}

/// The job of `s` for `slot` (`None`: run now, by hand).
pub(crate) fn job_for(s: &Schedule, slot: Option<chrono::DateTime<chrono::Utc>>) -> NewJob {
    let key = match slot {
        _ if s.unique => format!("schedule:{}", s.name),
        Some(t) => format!(
            "schedule:{}:{}",
            s.name,
            t.to_rfc3339_opts(SecondsFormat::Micros, true)
        ),
        None => format!(
            "schedule:{}:manual:{}",
            s.name,
            chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
        ),
    };
    let job = NewJob::raw(s.kind.as_str(), s.payload.clone())
        .queue(s.queue.as_str())
        .priority(s.priority)
        .max_attempts(s.max_attempts)
        .unique_key(key);
    // A slot's key is held a while after its job finished; a unique schedule's only while its
    // job lives, so the next slot can run.
    if s.unique {
        job
    } else {
        job.unique_period(SLOT_KEY_HELD)
    }
}

async fn one(shared: &Shared, s: &Schedule) -> crate::Result<()> {
    let mut tx = store::begin(&shared.pool).await?;
    let (state, now) = store::lock_schedule(&mut tx, &s.name).await?;
    match plan(s, state, now, window(shared)) {
        Plan::Nothing => {
            tx.commit().await.map_err(sqlx::Error::from)?;
        }
        Plan::Skip { mark, why } => {
            store::mark_schedule(&mut tx, &s.name, mark, None, why).await?;
            tx.commit().await.map_err(sqlx::Error::from)?;
            debug!(schedule = %s.name, slot = %mark, why, "slot not run");
        }
        Plan::Run {
            slots,
            mark,
            dropped,
        } => {
            let producer = crate::producer(shared.pool.clone(), &shared.config);
            let jobs = slots.iter().map(|t| job_for(s, Some(*t))).collect();
            let out = producer.insert_many_in(&mut tx, jobs).await?;
            let last = out.last().map(|e| e.id.0);
            let outcome = if out.iter().all(|e| e.duplicate) {
                "skipped: its unique job still lives (unique = true)"
            } else {
                "enqueued"
            };
            store::mark_schedule(&mut tx, &s.name, mark, last, outcome).await?;
            tx.commit().await.map_err(sqlx::Error::from)?;
            info!(schedule = %s.name, slots = slots.len(), dropped, job = ?last, "schedule enqueued");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_and_the_unique_key() {
        let mut s = jobq_config::Settings {
            schedules: vec![jobq_config::ScheduleSettings {
                name: "n".into(),
                cron: "* * * * *".into(),
                timezone: "UTC".into(),
                kind: "noop".into(),
                payload: serde_json::json!({}),
                queue: None,
                priority: 0,
                max_attempts: None,
                missed: Default::default(),
                overlap: Default::default(),
                unique: false,
            }],
            ..Default::default()
        };
        let slot = chrono::DateTime::parse_from_rfc3339("2026-12-02T03:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let c = s.validate().unwrap();
        let key = |j: &NewJob| format!("{j:?}");
        let per_slot = key(&job_for(&c.schedules()[0], Some(slot)));
        assert!(
            per_slot.contains("schedule:n:2026-12-02T03:00:00.000000Z"),
            "{per_slot}"
        );
        s.schedules[0].unique = true;
        let c = s.validate().unwrap();
        let unique = key(&job_for(&c.schedules()[0], Some(slot)));
        assert!(unique.contains("\"schedule:n\""), "{unique}");
        assert!(key(&job_for(&c.schedules()[0], None)).contains("\"schedule:n\""));
    }

    /// The window covers a leader's death at every interval: the last pass an interval before
    /// it, the lease running out, a follower's retry pace and its first pass.
    #[test]
    fn the_catch_up_window_covers_a_takeover() {
        let ms = Duration::from_millis;
        for (interval, window) in [
            (ms(100), ms(200 + 1166 + 1000)),
            (ms(200), ms(400 + 1166 + 1000)),
            (ms(1000), ms(2000 + 2916 + 1000)),
            (ms(3000), ms(6000 + 7583 + 1000)),
            (ms(60_000), ms(120_000 + 140_583 + 1000)),
        ] {
            let got = catch_up_window(interval);
            assert!(
                got.abs_diff(window) < ms(1),
                "interval {interval:?}: {got:?}, expected {window:?}"
            );
            let lease = super::super::maintenance::leader_lease(interval);
            let worst_takeover = interval + lease + lease / 6 + interval;
            assert!(got > worst_takeover, "interval {interval:?}");
        }
    }
}
