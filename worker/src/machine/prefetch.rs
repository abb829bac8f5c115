//! Adaptive prefetch (`worker.prefetch = "auto"`, the default): how many jobs a queue's next
//! claim may take ahead of its free handler slots, from what this process saw lately.
//!
//! A job claimed ahead is `running` in the database but waits in the process for a slot, so
//! it costs nothing only while the wait is short and no other worker could have started it
//! sooner. The rule, claim by claim:
//!
//! - **a backlog**: the last claim got every job it asked for (an idle queue is claimed as
//!   with prefetch 0, so a burst spreads over the processes with free slots);
//! - **no limit at its cap**: the last claim sent no job to `waiting` for its key and deferred
//!   none for a rate (a queue with a rate limit never gets here: `auto` is `0` there);
//! - **short handlers**: their recent mean run time is under [`WINDOW`], and one ended within
//!   the last [`WINDOW`] (slots all held by long handlers that have not ended yet take
//!   nothing ahead);
//! - **bounded in time**: at most [`WINDOW`] of work waits ahead, measured as jobs ahead ×
//!   the recent mean gap between two handler ends of the queue (so the handlers' own time and
//!   the process's per-job overhead both count), and at most `cap` jobs.
//!
//! And a safety net for the handler that turns out long: a job claimed ahead that has waited
//! while no handler slot of its queue freed for [`GIVE_BACK_AFTER`] goes back to the queue
//! unstarted (its attempt refunded), and that wait counts as a run of that length, so the
//! queue takes nothing ahead until its handlers are short again. No job waits behind another in a process much longer than that while another
//! process has a free slot.
//!
//! Pure: times come in as values.

use std::time::Duration;

/// The most work, in time, a queue's jobs claimed ahead may represent in one process; also
/// the longest mean handler run for which anything is claimed ahead.
pub(crate) const WINDOW: Duration = Duration::from_millis(20);

/// How long a job claimed ahead may wait for a handler slot before it is given back.
pub(crate) const GIVE_BACK_AFTER: Duration = Duration::from_millis(100);

/// Handler ends seen before anything is claimed ahead.
const MIN_SAMPLES: u32 = 4;

/// The weight of the newest sample in the running means.
const WEIGHT: f64 = 1.0 / 8.0;

/// The longest gap between handler ends a sample counts: an idle spell reads as "slow", not
/// as an hour that takes hundreds of jobs to forget.
const GAP_CAP: Duration = Duration::from_millis(80);

/// What one queue's recent jobs and claims were like in this process.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pace {
    /// Mean handler run time, in µs.
    run_us: f64,
    /// Mean gap between two handler ends, in µs (one over the queue's rate here).
    gap_us: f64,
    /// When the last handler ended, as an offset on the caller's clock.
    last_end: Option<Duration>,
    /// Handler ends seen (saturating).
    samples: u32,
    /// The last claim got all it asked for.
    backlog: bool,
    /// The last claim found a key or rate limit at its cap.
    capped: bool,
}

/// How the last claim went, as far as prefetch cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClaimSeen {
    /// It got every job it asked for (more may be waiting).
    pub(crate) full: bool,
    /// It sent jobs to `waiting` for their key, deferred jobs for a rate, or hit the queue's
    /// rate limit.
    pub(crate) capped: bool,
}

impl Pace {
    /// A handler of the queue ended at `at` (any monotonic offset) after running `run`.
    pub(crate) fn ran(&mut self, at: Duration, run: Duration) {
        let run_us = micros(run);
        let gap_us = match self.last_end {
            Some(prev) => micros(at.saturating_sub(prev).min(GAP_CAP)),
            None => micros(GAP_CAP),
        };
        if self.samples == 0 {
            self.run_us = run_us;
            self.gap_us = gap_us;
        } else {
            self.run_us += WEIGHT * (run_us - self.run_us);
            self.gap_us += WEIGHT * (gap_us - self.gap_us);
        }
        self.last_end = Some(at);
        self.samples = self.samples.saturating_add(1);
    }

    /// A job claimed ahead waited `waited` for a slot and was given back: the handlers in the
    /// slots run at least that long.
    pub(crate) fn gave_back(&mut self, waited: Duration) {
        self.run_us = self.run_us.max(micros(waited));
        self.samples = self.samples.max(1);
    }

    /// What the last claim found.
    pub(crate) fn claimed(&mut self, seen: ClaimSeen) {
        self.backlog = seen.full;
        self.capped = seen.capped;
    }

    /// When the last handler of the queue ended (the caller's clock).
    pub(crate) fn last_end(&self) -> Option<Duration> {
        self.last_end
    }

    /// Jobs a claim at `now` may take ahead of free slots, at most `cap`. Nothing when no
    /// handler ended within the window: the handlers running now are long ones (or the queue
    /// was idle), whatever the recent means say.
    pub(crate) fn ahead(&self, now: Duration, cap: u32) -> u32 {
        let window = micros(WINDOW);
        let recent_end = self
            .last_end
            .is_some_and(|end| now.saturating_sub(end) <= WINDOW);
        if !self.backlog
            || self.capped
            || !recent_end
            || self.samples < MIN_SAMPLES
            || self.run_us >= window
        {
            return 0;
        }
        let by_time = window / self.gap_us.max(1.0);
        // (A hair over, so that a gap of exactly window / n gives n.)
        ((by_time + 1e-3) as u32).min(cap)
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    /// A queue whose handlers ran `n` times, `run` each, one ending every `gap`, after a claim
    /// that saw `seen`.
    fn paced(n: u32, run: Duration, gap: Duration, seen: ClaimSeen) -> Pace {
        let mut p = Pace::default();
        for i in 0..n {
            p.ran(gap * (i + 1), run);
        }
        p.claimed(seen);
        p
    }

    const BACKLOG: ClaimSeen = ClaimSeen {
        full: true,
        capped: false,
    };

    #[test]
    fn jobs_are_taken_ahead_only_for_a_backlog_of_short_jobs_with_no_limit_at_its_cap() {
        let idle = ClaimSeen {
            full: false,
            capped: false,
        };
        let capped = ClaimSeen {
            full: true,
            capped: true,
        };
        // (handler ends seen, run, gap between ends, last claim, cap) → jobs ahead
        let table = [
            // A flood of no-op jobs: as many as the cap allows (20 ms / 50 µs = 400).
            (200, 20 * US, 50 * US, BACKLOG, 200, 200),
            (200, 20 * US, 50 * US, BACKLOG, 1000, 400),
            // 1 ms jobs on one slot: 20 ahead, 20 ms of work.
            (200, MS, MS, BACKLOG, 200, 20),
            // 5 ms jobs over 8 slots end every 0.625 ms: 32 ahead.
            (200, 5 * MS, 625 * US, BACKLOG, 200, 32),
            // Jobs at or over the window: nothing ahead, whatever the rate.
            (200, 20 * MS, 100 * US, BACKLOG, 200, 0),
            (200, 2000 * MS, 100 * US, BACKLOG, 200, 0),
            // Slow ends (a gap over the window): nothing ahead.
            (200, MS, 30 * MS, BACKLOG, 200, 0),
            // An idle queue, a limit at its cap, a fixed cap of 0, too few samples.
            (200, 20 * US, 50 * US, idle, 200, 0),
            (200, 20 * US, 50 * US, capped, 200, 0),
            (200, 20 * US, 50 * US, BACKLOG, 0, 0),
            (3, 20 * US, 50 * US, BACKLOG, 200, 0),
            (0, 20 * US, 50 * US, BACKLOG, 200, 0),
        ];
        for (n, run, gap, seen, cap, want) in table {
            let p = paced(n, run, gap, seen);
            let now = p.last_end().unwrap_or_default();
            assert_eq!(
                p.ahead(now, cap),
                want,
                "{n} ends, run {run:?}, gap {gap:?}, {seen:?}, cap {cap}"
            );
        }
    }

    #[test]
    fn a_give_back_stops_prefetch_until_handlers_are_short_again() {
        let mut p = paced(200, 20 * US, 50 * US, BACKLOG);
        let last = p.last_end().unwrap();
        assert_eq!(p.ahead(last, 200), 200);
        // Slots held by handlers that have not ended within the window: nothing ahead.
        assert_eq!(p.ahead(last + WINDOW, 200), 200);
        assert_eq!(p.ahead(last + WINDOW + US, 200), 0);
        p.gave_back(GIVE_BACK_AFTER);
        assert_eq!(p.ahead(last, 200), 0);
        // Short jobs bring it back: the mean run falls under the window within a few dozen.
        let mut t = Duration::from_secs(10);
        let mut back_after = None;
        for i in 1..=100 {
            t += 50 * US;
            p.ran(t, 20 * US);
            if p.ahead(t, 200) > 0 {
                back_after = Some(i);
                break;
            }
        }
        let n = back_after.expect("prefetch comes back once handlers are short");
        assert!((5..=40).contains(&n), "came back after {n} short jobs");
    }

    #[test]
    fn an_idle_spell_counts_as_slow_but_is_soon_forgotten() {
        let mut p = paced(200, 20 * US, 50 * US, BACKLOG);
        // An hour without jobs, then a flood again.
        let mut t = Duration::from_secs(3600);
        p.ran(t, 20 * US);
        assert!(p.ahead(t, 200) < 200, "the gap counts: {}", p.ahead(t, 200));
        let mut n = 0;
        while p.ahead(t, 200) < 200 {
            t += 50 * US;
            p.ran(t, 20 * US);
            n += 1;
            assert!(n < 100, "the idle spell is still weighing after {n} jobs");
        }
    }
}
