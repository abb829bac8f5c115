//! Recurring jobs: which slots of a schedule to enqueue now, pure (no I/O, no clock). The
//! maintenance leader reads the schedule's row under a lock, asks [`plan`], enqueues the slots
//! and records the newest slot decided, in one transaction (`runtime/schedules.rs`).
//!
//! Slots come from the cron expression read in the schedule's time zone (croner). Daylight
//! saving: a fixed-time slot that falls in a gap (spring forward) runs at the first instant
//! after it; one that falls in a repeated hour (fall back) runs once, at the earlier instant; an
//! interval expression (`*/15 * * * *`) has no slots in a gap and runs at both instants of a
//! repeated time.
//!
//! Missed slots: slots up to `window` old (the leader's normal lateness) are all run. Older
//! ones (no leader ran, or the schedule was paused) are never run as a burst: `missed =
//! "latest"` runs the most recent of them once, `missed = "skip"` none. A schedule seen for the
//! first time starts at its latest slot without running it (no backfill).

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobq_config::{MissedSlots, Overlap, Schedule};

use crate::model::ScheduleState;

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Nothing is due.
    Nothing,
    /// Enqueue these slots (oldest first) and mark `mark` decided; `dropped` older slots are
    /// not run (missed beyond the window).
    Run {
        slots: Vec<DateTime<Utc>>,
        mark: DateTime<Utc>,
        dropped: u32,
    },
    /// Mark `mark` decided without running anything: first sight, missed slots skipped, or an
    /// overlap skipped; `why` says which.
    Skip {
        mark: DateTime<Utc>,
        why: &'static str,
    },
}

/// Slots strictly after `after` and at most `until`, oldest first (at most `cap`).
fn slots_between(
    s: &Schedule,
    after: DateTime<Utc>,
    until: DateTime<Utc>,
    cap: usize,
) -> Vec<DateTime<Utc>> {
    s.cron
        .iter_after(after.with_timezone(&s.tz))
        .map(|t| t.with_timezone(&Utc))
        .take_while(|t| *t <= until)
        .take(cap)
        .collect()
}

/// The latest slot at or before `at`.
pub(crate) fn latest_slot(s: &Schedule, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.cron
        .find_previous_occurrence(&at.with_timezone(&s.tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The first slot after `at`.
pub(crate) fn next_slot(s: &Schedule, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    s.cron
        .find_next_occurrence(&at.with_timezone(&s.tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Decides schedule `s` at `now` (database clock) given its row's `state`.
pub(crate) fn plan(
    s: &Schedule,
    state: ScheduleState,
    now: DateTime<Utc>,
    window: Duration,
) -> Plan {
    if state.paused {
        return Plan::Nothing;
    }
    let Some(latest) = latest_slot(s, now) else {
        return Plan::Nothing;
    };
    let Some(last) = state.last_slot else {
        return Plan::Skip {
            mark: latest,
            why: "first sight: starts from its latest slot",
        };
    };
    if latest <= last {
        return Plan::Nothing;
    }
    let window_start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero());
    let recent = slots_between(s, last.max(window_start), now, 1000);
    let newest_old = latest_slot(s, window_start).filter(|t| *t > last && *t <= window_start);
    let (slots, dropped) = match (recent.is_empty(), newest_old, s.missed) {
        (false, old, _) => (recent, u32::from(old.is_some())),
        (true, Some(old), MissedSlots::Latest) => (vec![old], 0),
        (true, Some(_), MissedSlots::Skip) => {
            return Plan::Skip {
                mark: latest,
                why: "skipped: missed slots (missed = skip)",
            }
        }
        (true, None, _) => return Plan::Nothing,
    };
    if s.overlap == Overlap::Skip && state.previous_unfinished {
        return Plan::Skip {
            mark: latest,
            why: "skipped: previous run unfinished (overlap = skip)",
        };
    }
    Plan::Run {
        slots,
        mark: latest,
        dropped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jobq_config::parse_cron;
    use jobq_producer::{KindName, QueueName};

    fn sched(cron: &str, tz: chrono_tz::Tz) -> Schedule {
        Schedule {
            name: "t".into(),
            cron_text: cron.into(),
            cron: parse_cron(cron).unwrap(),
            tz,
            kind: KindName::new("noop").unwrap(),
            payload: "{}".into(),
            queue: QueueName::new("default").unwrap(),
            priority: 0,
            max_attempts: 1,
            missed: MissedSlots::Latest,
            overlap: Overlap::Allow,
            unique: false,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    const W: Duration = Duration::from_secs(3);

    #[test]
    fn every_second_runs_each_slot_once_and_collapses_old_ones() {
        let s = sched("* * * * * *", chrono_tz::UTC);
        let t0 = utc(2026, 12, 2, 12, 0, 0);
        let st = |last| ScheduleState {
            last_slot: last,
            ..Default::default()
        };
        // First sight: start from now.
        assert_eq!(
            plan(&s, st(None), t0, W),
            Plan::Skip {
                mark: t0,
                why: "first sight: starts from its latest slot"
            }
        );
        // Nothing new.
        assert_eq!(plan(&s, st(Some(t0)), t0, W), Plan::Nothing);
        // Two slots due, both within the window: both, in order.
        let now = t0 + chrono::Duration::milliseconds(2500);
        let two = vec![
            t0 + chrono::Duration::seconds(1),
            t0 + chrono::Duration::seconds(2),
        ];
        assert_eq!(
            plan(&s, st(Some(t0)), now, W),
            Plan::Run {
                slots: two.clone(),
                mark: two[1],
                dropped: 0
            }
        );
        // Down for a minute: only the recent slots run, the older ones collapse.
        let now = t0 + chrono::Duration::seconds(60);
        match plan(&s, st(Some(t0)), now, W) {
            Plan::Run {
                slots,
                mark,
                dropped,
            } => {
                assert_eq!(slots.len(), 3, "{slots:?}");
                assert_eq!(mark, now);
                assert_eq!(dropped, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missed_and_overlap_policies() {
        let mut s = sched("0 3 * * *", chrono_tz::UTC);
        let last = utc(2026, 12, 1, 3, 0, 0);
        let now = utc(2026, 12, 4, 12, 0, 0);
        let st = ScheduleState {
            last_slot: Some(last),
            ..Default::default()
        };
        // Three days down, latest: the most recent slot (today 03:00) once.
        assert_eq!(
            plan(&s, st, now, W),
            Plan::Run {
                slots: vec![utc(2026, 12, 4, 3, 0, 0)],
                mark: utc(2026, 12, 4, 3, 0, 0),
                dropped: 0
            }
        );
        s.missed = MissedSlots::Skip;
        assert!(matches!(plan(&s, st, now, W), Plan::Skip { why, .. } if why.contains("missed")));
        // On time, the previous run unfinished: overlap = skip skips, allow runs.
        let on_time = utc(2026, 12, 2, 3, 0, 1);
        let busy = ScheduleState {
            previous_unfinished: true,
            ..st
        };
        assert!(matches!(plan(&s, busy, on_time, W), Plan::Run { .. }));
        s.overlap = Overlap::Skip;
        assert!(
            matches!(plan(&s, busy, on_time, W), Plan::Skip { why, .. } if why.contains("unfinished"))
        );
        // Paused: nothing.
        let paused = ScheduleState { paused: true, ..st };
        assert_eq!(plan(&s, paused, on_time, W), Plan::Nothing);
    }

    #[test]
    fn daylight_saving_days_in_berlin() {
        let berlin = chrono_tz::Europe::Berlin;
        // 02:30 every day. 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist
        // and the slot runs at 03:00 CEST (01:00 UTC).
        let s = sched("30 2 * * *", berlin);
        let spring = slots_between(&s, utc(2026, 3, 28, 0, 0, 0), utc(2026, 3, 31, 0, 0, 0), 10);
        assert_eq!(
            spring,
            vec![
                utc(2026, 3, 28, 1, 30, 0),
                utc(2026, 3, 29, 1, 0, 0),
                utc(2026, 3, 30, 0, 30, 0)
            ]
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET, 02:30 happens twice; it runs once, at
        // the first (00:30 UTC).
        let autumn = slots_between(
            &s,
            utc(2026, 10, 24, 0, 0, 0),
            utc(2026, 10, 27, 0, 0, 0),
            10,
        );
        assert_eq!(
            autumn,
            vec![
                utc(2026, 10, 24, 0, 30, 0),
                utc(2026, 10, 25, 0, 30, 0),
                utc(2026, 10, 26, 1, 30, 0)
            ]
        );
        // An interval expression runs at both 02:30s of the repeated hour.
        let s = sched("*/30 * * * *", berlin);
        let repeated = slots_between(
            &s,
            utc(2026, 10, 25, 0, 0, 0),
            utc(2026, 10, 25, 1, 45, 0),
            10,
        );
        assert_eq!(
            repeated,
            vec![
                utc(2026, 10, 25, 0, 30, 0),
                utc(2026, 10, 25, 1, 0, 0),
                utc(2026, 10, 25, 1, 30, 0)
            ]
        );
    }
}
