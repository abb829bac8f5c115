//! History partitions (`maintenance.history_partition`, README "History at scale"): which
//! partitions of `jobq_transitions` to create when the table is converted, and on each roll
//! which to create ahead and which to drop.
//!
//! The layout: `PARTITION BY RANGE COLUMNS(at)`, one partition per period of the configured
//! width (periods aligned on the Unix epoch, UTC, like `at`), each named `p` and the UTC hour of
//! its upper bound (`p2026120800` holds the rows before 2026-12-08 00:00), then `pmax` for
//! anything later, so a write never fails for want of a partition. A roll keeps the partitions
//! ahead covering two days (at least three), and drops a partition once its upper bound is
//! older than the retention: every row in it is, so history goes by whole partitions, never
//! row by row.

use chrono::{NaiveDateTime, TimeDelta};

use crate::model::{Partition, MAX_PARTITION};

/// How far ahead of now partitions exist after a roll (at least [`MIN_AHEAD`] of them).
const AHEAD: TimeDelta = TimeDelta::hours(48);
const MIN_AHEAD: i32 = 3;
/// Without a retention, how many periods back a conversion gives partitions of their own
/// (older rows share the first).
const MAX_BACK: i32 = 500;

/// The configured layout: the width of a partition and how long rows are kept (`None`:
/// forever).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rolling {
    pub(crate) width: TimeDelta,
    pub(crate) retention: Option<TimeDelta>,
}

/// What a roll does: partitions to create ahead (their upper bounds, split off `pmax`), then
/// partitions to drop (by name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) add: Vec<NaiveDateTime>,
    pub(crate) drop: Vec<String>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.add.is_empty() && self.drop.is_empty()
    }
}

/// The width of a table's partitions, for a process whose configuration does not say: its two
/// newest bounds apart.
pub(crate) fn width_of(parts: &[Partition]) -> Option<TimeDelta> {
    let bounds: Vec<NaiveDateTime> = parts.iter().filter_map(|p| p.below).collect();
    match bounds.as_slice() {
        [.., a, b] if b > a => Some(*b - *a),
        _ => None,
    }
}

/// The name of the partition of rows below `below`.
pub(crate) fn name(below: NaiveDateTime) -> String {
    format!("p{}", below.format("%Y%m%d%H"))
}

/// The start of the period holding `t`.
fn period_start(t: NaiveDateTime, width: TimeDelta) -> NaiveDateTime {
    let w = width.num_seconds().max(1);
    let secs = t.and_utc().timestamp();
    let start = secs - secs.rem_euclid(w);
    chrono::DateTime::from_timestamp(start, 0)
        .map(|d| d.naive_utc())
        .unwrap_or(t)
}

/// How many periods ahead of the current one a roll keeps.
fn periods_ahead(width: TimeDelta) -> i32 {
    let w = width.num_seconds().max(1);
    let n = (AHEAD.num_seconds() + w - 1) / w;
    i32::try_from(n).unwrap_or(i32::MAX).max(MIN_AHEAD)
}

/// The upper bound of the last partition a roll at `now` wants.
fn horizon(now: NaiveDateTime, width: TimeDelta) -> NaiveDateTime {
    period_start(now, width) + width * (periods_ahead(width) + 1)
}

/// The upper bounds (before `pmax`) of a table converted at `now` whose oldest row is from
/// `oldest`: a partition per period from the oldest row's (no further back than the retention
/// reaches, plus one period; older rows share the first partition, which the next roll drops)
/// to the horizon.
pub(crate) fn initial(
    now: NaiveDateTime,
    oldest: Option<NaiveDateTime>,
    r: &Rolling,
) -> Vec<NaiveDateTime> {
    let current = period_start(now, r.width);
    let reach = match r.retention {
        Some(keep) => {
            let w = r.width.num_seconds().max(1);
            let periods = (keep.num_seconds() + w - 1) / w;
            i32::try_from(periods).unwrap_or(MAX_BACK).min(MAX_BACK) + 1
        }
        None => MAX_BACK,
    };
    let first = oldest
        .map(|t| period_start(t, r.width))
        .unwrap_or(current)
        .clamp(current - r.width * reach, current);
    let end = horizon(now, r.width);
    let mut bounds = Vec::new();
    let mut b = first + r.width;
    while b <= end {
        bounds.push(b);
        b += r.width;
    }
    bounds
}

/// A roll at `now` of a table partitioned as `parts` (in order). Partitions are created from
/// the last bound (or the current period, if the leader was away so long that the last bound
/// has passed: the rows since then, in `pmax`, go to the first new partition) to the horizon;
/// then every partition whose bound is at or before now − retention is dropped (never `pmax`,
/// and never the newest: its bound is past now). Fails, naming why, on a layout jobq did not
/// make.
pub(crate) fn plan(now: NaiveDateTime, parts: &[Partition], r: &Rolling) -> Result<Plan, String> {
    let Some((last, bounded)) = parts.split_last() else {
        return Err("jobq_transitions has no partitions".into());
    };
    if last.name != MAX_PARTITION || last.below.is_some() {
        return Err(format!(
            "its last partition is {:?}, not {MAX_PARTITION} VALUES LESS THAN (MAXVALUE)",
            last.name
        ));
    }
    let mut prev = None;
    for p in bounded {
        match p.below {
            Some(b) if prev.is_none_or(|x| x < b) => prev = Some(b),
            _ => {
                return Err(format!(
                    "partition {:?} is out of order or unbounded",
                    p.name
                ))
            }
        }
    }
    let current = period_start(now, r.width);
    let end = horizon(now, r.width);
    let mut add = Vec::new();
    let mut b = prev.map_or(current, |p| p.max(current)) + r.width;
    while b <= end {
        add.push(b);
        b += r.width;
    }
    let drop = match r.retention {
        Some(keep) => {
            let cut = now - keep;
            bounded
                .iter()
                .filter(|p| p.below.is_some_and(|b| b <= cut && b <= now))
                .map(|p| p.name.clone())
                .collect()
        }
        None => Vec::new(),
    };
    Ok(Plan { add, drop })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn part(s: &str) -> Partition {
        Partition {
            name: name(t(s)),
            below: Some(t(s)),
        }
    }

    fn max() -> Partition {
        Partition {
            name: MAX_PARTITION.into(),
            below: None,
        }
    }

    const H: TimeDelta = TimeDelta::hours(1);
    const DAY: TimeDelta = TimeDelta::days(1);

    #[test]
    fn names_and_periods() {
        assert_eq!(name(t("2026-12-08 13:00:00")), "p2026120813");
        assert_eq!(
            period_start(t("2026-12-08 13:59:59"), H),
            t("2026-12-08 13:00:00")
        );
        assert_eq!(
            period_start(t("2026-12-08 13:59:59"), DAY),
            t("2026-12-08 00:00:00")
        );
        // 6 h periods are aligned on the epoch: 00, 06, 12, 18 UTC.
        assert_eq!(
            period_start(t("2026-12-08 13:00:00"), H * 6),
            t("2026-12-08 12:00:00")
        );
        assert_eq!(periods_ahead(H), 48);
        assert_eq!(periods_ahead(DAY), 3);
        assert_eq!(periods_ahead(DAY * 7), 3);
    }

    #[test]
    fn a_conversion_covers_the_rows_kept_and_two_days_ahead() {
        let now = t("2026-12-08 10:30:00");
        let daily = Rolling {
            width: DAY,
            retention: Some(DAY * 7),
        };
        // (oldest row, first bound, number of bounds)
        let cases = [
            // An empty table: the current day, then three ahead.
            (None, "2026-12-09 00:00:00", 4),
            // Rows from two days ago: a partition for each day since.
            (Some("2026-12-06 08:00:00"), "2026-12-07 00:00:00", 6),
            // Rows from a year ago: 8 days back (7 kept, plus one that the next roll drops).
            (Some("2025-12-01 00:00:00"), "2026-12-01 00:00:00", 12),
        ];
        for (oldest, first, n) in cases {
            let b = initial(now, oldest.map(t), &daily);
            assert_eq!(b[0], t(first), "{oldest:?}");
            assert_eq!(b.len(), n, "{oldest:?}");
            assert_eq!(*b.last().unwrap(), t("2026-12-12 00:00:00"));
            assert!(b.windows(2).all(|w| w[1] - w[0] == DAY));
        }
        // Forever: at most MAX_BACK periods back.
        let forever = Rolling {
            width: H,
            retention: None,
        };
        let b = initial(now, Some(t("2020-01-01 00:00:00")), &forever);
        assert_eq!(b[0], t("2026-12-08 10:00:00") - H * MAX_BACK + H);
        assert_eq!(*b.last().unwrap(), t("2026-12-10 11:00:00"));
    }

    #[test]
    fn a_roll_adds_ahead_and_drops_what_retention_passed() {
        let hourly = Rolling {
            width: H,
            retention: Some(H * 2),
        };
        let now = t("2026-12-08 10:30:00");
        let mut parts: Vec<Partition> = initial(now, Some(t("2026-12-08 05:10:00")), &hourly)
            .into_iter()
            .map(|b| part(&b.format("%Y-%m-%d %H:%M:%S").to_string()))
            .collect();
        parts.push(max());
        // Rows from 05:10, kept 2 h: partitions from 07:00 (older rows share it).
        assert_eq!(parts[0].name, "p2026120808");
        // Just converted: nothing to add; the partition below 08:00 goes (08:30 is the cut).
        let p = plan(now, &parts, &hourly).unwrap();
        assert!(p.add.is_empty());
        assert_eq!(p.drop, ["p2026120808"]);
        // An hour later: one more ahead, one more dropped.
        let p = plan(now + H, &parts, &hourly).unwrap();
        assert_eq!(p.add, [t("2026-12-10 12:00:00")]);
        assert_eq!(p.drop, ["p2026120808", "p2026120809"]);
        // Kept forever: nothing dropped.
        let forever = Rolling {
            retention: None,
            ..hourly
        };
        assert!(plan(now, &parts, &forever).unwrap().is_empty());
    }

    #[test]
    fn a_leader_back_after_a_long_absence_starts_from_now() {
        let daily = Rolling {
            width: DAY,
            retention: Some(DAY),
        };
        let parts = vec![
            part("2026-11-01 00:00:00"),
            part("2026-11-02 00:00:00"),
            max(),
        ];
        let p = plan(t("2026-12-08 10:30:00"), &parts, &daily).unwrap();
        // The rows since Nov 2 (in pmax) go to the partition of today; the old ones are dropped,
        // and the newest partition left is ahead of now.
        assert_eq!(p.add[0], t("2026-12-09 00:00:00"));
        assert_eq!(p.add.len(), 4);
        assert_eq!(p.drop, ["p2026110100", "p2026110200"].map(String::from));
    }

    #[test]
    fn a_width_is_read_off_the_newest_bounds() {
        let parts = vec![
            part("2026-12-01 00:00:00"),
            part("2026-12-01 06:00:00"),
            part("2026-12-01 12:00:00"),
            max(),
        ];
        assert_eq!(width_of(&parts), Some(H * 6));
        assert_eq!(width_of(&[part("2026-12-01 00:00:00"), max()]), None);
        assert_eq!(width_of(&[max()]), None);
    }

    #[test]
    fn a_layout_jobq_did_not_make_is_refused() {
        let r = Rolling {
            width: DAY,
            retention: None,
        };
        let now = t("2026-12-08 10:30:00");
        let cases: [(&str, Vec<Partition>); 3] = [
            ("no partitions", vec![]),
            ("no pmax", vec![part("2026-12-09 00:00:00")]),
            (
                "out of order",
                vec![
                    part("2026-12-09 00:00:00"),
                    part("2026-12-08 00:00:00"),
                    max(),
                ],
            ),
        ];
        for (what, parts) in cases {
            assert!(plan(now, &parts, &r).is_err(), "{what}");
        }
    }
}
