//! Flow-control decisions, pure: no I/O, no clock. A claim's plan (`claim.rs`) asks [`plan`]
//! what to do with each job it read, given the state the store read under row locks; the
//! promoter asks [`to_promote`]. Two mechanisms:
//!
//! - **Concurrency keys.** A job whose key already has `limit` jobs running is not claimed; it
//!   goes to `waiting`, out of the claim index, until a job of its key stops running.
//! - **Rate limits.** A [`Window`] counts starts in tenths of the period (slots). A start is
//!   allowed while the starts in the current slot and the ten before it stay within the limit.
//!   Those eleven slots always cover the whole period before now, so **no sliding window of one
//!   period ever holds more than the limit's starts**; the price is that a start blocks its
//!   permit for between 1 and 1.1 periods, so a saturated limiter runs between 91% and 100% of
//!   the nominal rate.

use std::collections::HashMap;

use jobq_config::Rate;

/// Slots per period, the window's resolution.
const SLOTS: i64 = 10;
/// Slots the window counts: the current one and the ten before it.
const SPAN: usize = SLOTS as usize + 1;

/// A rate limiter's state, stored as text in `rate_state` (`jobq_queues`, `jobq_keys`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Slot length in microseconds (period / 10): part of the state, so a changed period
    /// starts afresh instead of misreading old counts.
    slot_us: i64,
    /// Number of the newest slot (microseconds since the epoch / `slot_us`).
    last: i64,
    /// Starts per slot, `counts[SPAN - 1]` being slot `last`.
    counts: [u32; SPAN],
    /// When the next job deferred by this limiter should run (µs since the epoch): deferred
    /// jobs are spread at the limit's pace instead of all waking at the same instant.
    next_defer_us: i64,
}

impl Window {
    /// The state read from the database (`None`, or unreadable or of another period: a fresh
    /// window). Starts in the slot of `now_us`.
    pub(crate) fn load(text: Option<&str>, rate: Rate, now_us: i64) -> Window {
        let slot_us = slot_us(rate);
        let now_slot = now_us.div_euclid(slot_us);
        // A window dated ahead of now (the clock stepped back, or a bad row) would hold every
        // permit until real time caught up: start afresh instead.
        text.and_then(|t| {
            Window::parse(t).filter(|w| w.slot_us == slot_us && w.last <= now_slot + SPAN as i64)
        })
        .unwrap_or(Window {
            slot_us,
            last: now_us.div_euclid(slot_us),
            counts: [0; SPAN],
            next_defer_us: 0,
        })
    }

    fn parse(text: &str) -> Option<Window> {
        let mut parts = text.split(':');
        if parts.next()? != "w1" {
            return None;
        }
        let slot_us: i64 = parts.next()?.parse().ok()?;
        let last: i64 = parts.next()?.parse().ok()?;
        let next_defer_us: i64 = parts.next()?.parse().ok()?;
        let mut counts = [0u32; SPAN];
        let mut n = 0;
        for (i, c) in parts.next()?.split(',').enumerate() {
            *counts.get_mut(i)? = c.parse().ok()?;
            n += 1;
        }
        (n == SPAN && slot_us > 0 && parts.next().is_none()).then_some(Window {
            slot_us,
            last,
            counts,
            next_defer_us,
        })
    }

    /// The text stored: at most 3 + 4 × 20 + 11 × 11 bytes, within the column's 255.
    pub(crate) fn to_text(&self) -> String {
        let counts: Vec<String> = self.counts.iter().map(|c| c.to_string()).collect();
        format!(
            "w1:{}:{}:{}:{}",
            self.slot_us,
            self.last,
            self.next_defer_us,
            counts.join(",")
        )
    }

    /// Moves the window to `now_us`. A `now_us` older than the newest slot (a claimer whose
    /// clock reading was taken earlier, or a clock stepped back) counts in the newest slot:
    /// never in a slot that already dropped out.
    fn advance(&mut self, now_us: i64) {
        let cur = now_us.div_euclid(self.slot_us).max(self.last);
        let shift = (cur - self.last).min(SPAN as i64) as usize;
        if shift > 0 {
            self.counts.rotate_left(shift);
            for c in &mut self.counts[SPAN - shift..] {
                *c = 0;
            }
            self.last = cur;
        }
    }

    /// Starts still allowed at `now_us`.
    pub(crate) fn allowed(&mut self, rate: Rate, now_us: i64) -> u32 {
        self.advance(now_us);
        let used: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        u64::from(rate.max).saturating_sub(used) as u32
    }

    /// Records `n` starts at `now_us` (the caller checked [`allowed`](Window::allowed)).
    pub(crate) fn charge(&mut self, now_us: i64, n: u32) {
        self.advance(now_us);
        self.counts[SPAN - 1] = self.counts[SPAN - 1].saturating_add(n);
    }

    /// When a permit frees next (µs since the epoch): when the oldest slot holding starts drops
    /// out of the window. `now_us` when nothing is counted.
    pub(crate) fn frees_at(&self, now_us: i64) -> i64 {
        match self.counts.iter().position(|&c| c > 0) {
            Some(i) => (self.last - SLOTS + i as i64 + SPAN as i64) * self.slot_us,
            None => now_us,
        }
    }

    /// When a job deferred now should run: no earlier than the next free permit, and spaced
    /// one period / max after the job deferred before it.
    fn defer(&mut self, rate: Rate, now_us: i64) -> i64 {
        let at = self.frees_at(now_us).max(self.next_defer_us);
        let pace = (micros(rate.period) / i64::from(rate.max)).max(1);
        self.next_defer_us = at + pace;
        at
    }
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A tenth of the period, rounded up: eleven slots then always cover at least one period.
fn slot_us(rate: Rate) -> i64 {
    ((micros(rate.period) + SLOTS - 1) / SLOTS).max(1)
}

/// One job a claim read, in claim order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate<'a> {
    /// Its concurrency key, if it has one.
    pub(crate) key: Option<&'a str>,
    /// The key limit for its kind in its queue (ignored without a key).
    pub(crate) limit: u32,
}

/// What a claim does with one job it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Start it.
    Claim,
    /// Its key is at its limit: `available → waiting` until a job of the key stops running.
    Wait,
    /// Its key's rate limit is used up: `available → scheduled`, to run at this time
    /// (µs since the epoch).
    Defer(i64),
    /// The queue's rate limit is used up: leave it `available`, untouched.
    Leave,
}

/// The limits in force for one claim.
#[derive(Debug)]
pub(crate) struct Limits<'w> {
    /// Starts the queue's rate limit still allows (`u32::MAX` without one).
    pub(crate) queue_allowed: u32,
    /// `queues.NAME.key_rate_limit`, with each key's window (loaded for every key read).
    pub(crate) key_rate: Option<(Rate, &'w mut HashMap<String, Window>)>,
    /// Jobs of each key running now (keys absent: none).
    pub(crate) running: &'w HashMap<String, u32>,
    /// The database clock at the decision (after the rows were locked), µs since the epoch.
    pub(crate) now_us: i64,
}

/// Decides every job of a claim, in claim order: the queue's rate allowance first (once spent,
/// the rest stay `available`), then the key's concurrency limit, then the key's rate limit.
/// A job that waits or is deferred does not use the queue's allowance.
pub(crate) fn plan(jobs: &[Candidate<'_>], mut limits: Limits<'_>) -> Vec<Verdict> {
    let mut left = limits.queue_allowed;
    let mut started: HashMap<&str, u32> = HashMap::new();
    jobs.iter()
        .map(|job| {
            if left == 0 {
                return Verdict::Leave;
            }
            let Some(key) = job.key else {
                left -= 1;
                return Verdict::Claim;
            };
            let running = limits.running.get(key).copied().unwrap_or(0)
                + started.get(key).copied().unwrap_or(0);
            if running >= job.limit.max(1) {
                return Verdict::Wait;
            }
            if let Some((rate, windows)) = limits.key_rate.as_mut() {
                let w = windows
                    .entry(key.to_owned())
                    .or_insert_with(|| Window::load(None, *rate, limits.now_us));
                if w.allowed(*rate, limits.now_us) == 0 {
                    return Verdict::Defer(w.defer(*rate, limits.now_us));
                }
                w.charge(limits.now_us, 1);
            }
            *started.entry(key).or_insert(0) += 1;
            left -= 1;
            Verdict::Claim
        })
        .collect()
}

/// How many waiting jobs of a key to make `available` again: the free slots, less the key's
/// jobs already `available` (they will take slots first).
pub(crate) fn to_promote(limit: u32, running: u32, available: u32) -> u32 {
    limit
        .max(1)
        .saturating_sub(running)
        .saturating_sub(available)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rate(max: u32, ms: u64) -> Rate {
        Rate {
            max,
            period: Duration::from_millis(ms),
        }
    }

    const S: i64 = 1_000_000;

    #[test]
    fn window_never_lets_a_period_hold_more_than_the_limit() {
        let r = rate(3, 1000);
        let mut w = Window::load(None, r, 10 * S);
        assert_eq!(w.allowed(r, 10 * S), 3);
        w.charge(10 * S, 2);
        assert_eq!(w.allowed(r, 10 * S + 500_000), 1);
        w.charge(10 * S + 500_000, 1);
        // Full; the first two free once their slot (10.0 s..10.1 s) is 11 slots old: 11.1 s.
        assert_eq!(w.allowed(r, 10 * S + 999_999), 0);
        assert_eq!(w.frees_at(10 * S + 999_999), 11 * S + 100_000);
        assert_eq!(w.allowed(r, 11 * S + 99_999), 0, "still within the span");
        assert_eq!(w.allowed(r, 11 * S + 100_000), 2);
        // The one at 10.5 s holds until 11.6 s.
        assert_eq!(w.allowed(r, 11 * S + 599_999), 2);
        assert_eq!(w.allowed(r, 11 * S + 600_000), 3);
        // Long idle: everything dropped.
        assert_eq!(w.allowed(r, 99 * S), 3);
        assert_eq!(w.frees_at(99 * S), 99 * S);
    }

    #[test]
    fn window_round_trips_as_text_and_rejects_other_periods_and_junk() {
        let r = rate(20, 1000);
        let mut w = Window::load(None, r, 5 * S);
        w.charge(5 * S, 7);
        let text = w.to_text();
        assert!(text.len() <= 255, "{text}");
        assert_eq!(Window::load(Some(&text), r, 5 * S), w);
        // A changed period starts afresh, as does unreadable state.
        let other = rate(20, 2000);
        let mut fresh = Window::load(Some(&text), other, 5 * S);
        assert_eq!(fresh.allowed(other, 5 * S), 20);
        for junk in [
            "",
            "w1",
            "w2:100000:1:0:0,0,0,0,0,0,0,0,0,0,0",
            "w1:0:1:0:0,0,0,0,0,0,0,0,0,0,0",
            "w1:100000:1:0:0,0",
        ] {
            assert_eq!(Window::parse(junk), None, "{junk:?}");
        }
        // The largest state still fits the column.
        let big = Window {
            slot_us: i64::MAX,
            last: i64::MIN,
            counts: [u32::MAX; SPAN],
            next_defer_us: i64::MIN,
        };
        assert!(big.to_text().len() <= 255);
    }

    #[test]
    fn odd_periods_round_the_slot_up_and_future_windows_restart() {
        // 1 s + 5 µs: slots of 100,001 µs, so ten of them cover the period.
        let r = Rate {
            max: 1,
            period: Duration::from_micros(1_000_005),
        };
        assert_eq!(slot_us(r) * SLOTS, 1_000_010);
        let mut w = Window::load(None, r, 0);
        w.charge(0, 1);
        assert_eq!(
            w.allowed(r, 1_000_005),
            0,
            "one period later it still counts"
        );
        // A stored window far ahead of now is not trusted.
        let r = rate(1, 1000);
        let mut ahead = Window::load(None, r, 100 * S);
        ahead.charge(100 * S, 1);
        let text = ahead.to_text();
        let mut w = Window::load(Some(&text), r, 10 * S);
        assert_eq!(w.allowed(r, 10 * S), 1);
        // Slightly ahead (a claimer that read the clock earlier) is kept.
        let mut w = Window::load(Some(&text), r, 100 * S - 500_000);
        assert_eq!(w.allowed(r, 100 * S - 500_000), 0);
    }

    #[test]
    fn a_clock_reading_older_than_the_window_counts_in_its_newest_slot() {
        let r = rate(2, 1000);
        let mut w = Window::load(None, r, 20 * S);
        w.charge(20 * S + 900_000, 1);
        // A claimer that read the clock before the last one but took the lock after it.
        assert_eq!(w.allowed(r, 20 * S), 1);
        w.charge(20 * S, 1);
        assert_eq!(w.counts[SPAN - 1], 2);
        assert_eq!(w.allowed(r, 21 * S + 899_999), 0);
        assert_eq!(w.allowed(r, 22 * S), 2);
    }

    #[test]
    fn plans() {
        let running: HashMap<String, u32> = [("a".to_owned(), 1)].into_iter().collect();
        let job = |key: Option<&'static str>, limit| Candidate { key, limit };
        let none: HashMap<String, u32> = HashMap::new();
        type Row<'a> = (
            &'a str,
            Vec<Candidate<'a>>,
            u32,
            &'a HashMap<String, u32>,
            Vec<Verdict>,
        );
        let table: Vec<Row> =
            vec![
            (
                "no keys, no limits: all claimed",
                vec![job(None, 1), job(None, 1)],
                u32::MAX,
                &none,
                vec![Verdict::Claim, Verdict::Claim],
            ),
            (
                "key a has 1 running of 1: waits; b gets one slot, its second waits",
                vec![job(Some("a"), 1), job(Some("b"), 1), job(Some("b"), 1), job(None, 1)],
                u32::MAX,
                &running,
                vec![Verdict::Wait, Verdict::Claim, Verdict::Wait, Verdict::Claim],
            ),
            (
                "a limit of 2 (per kind) lets a second job of a run",
                vec![job(Some("a"), 2), job(Some("a"), 2), job(Some("a"), 1)],
                u32::MAX,
                &running,
                vec![Verdict::Claim, Verdict::Wait, Verdict::Wait],
            ),
            (
                "the queue's rate allows 2: the rest stay available; waiting jobs use none of it",
                vec![job(Some("a"), 1), job(None, 1), job(Some("b"), 1), job(None, 1)],
                2,
                &running,
                vec![Verdict::Wait, Verdict::Claim, Verdict::Claim, Verdict::Leave],
            ),
            ("queue rate used up", vec![job(None, 1)], 0, &none, vec![Verdict::Leave]),
            (
                "limit 0 from a foreign row counts as 1",
                vec![job(Some("c"), 0), job(Some("c"), 0)],
                u32::MAX,
                &none,
                vec![Verdict::Claim, Verdict::Wait],
            ),
        ];
        for (what, jobs, queue_allowed, running, want) in table {
            let got = plan(
                &jobs,
                Limits {
                    queue_allowed,
                    key_rate: None,
                    running,
                    now_us: 0,
                },
            );
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn key_rate_defers_at_the_limits_pace() {
        let r = rate(2, 1000);
        let mut windows = HashMap::new();
        let none = HashMap::new();
        let jobs: Vec<Candidate> = (0..5)
            .map(|_| Candidate {
                key: Some("k"),
                limit: 10,
            })
            .collect();
        let got = plan(
            &jobs,
            Limits {
                queue_allowed: u32::MAX,
                key_rate: Some((r, &mut windows)),
                running: &none,
                now_us: 30 * S,
            },
        );
        // Two start; the third runs when their slot drops out (31.1 s), the next ones half a
        // period apart (the limit's pace).
        assert_eq!(
            got,
            vec![
                Verdict::Claim,
                Verdict::Claim,
                Verdict::Defer(31 * S + 100_000),
                Verdict::Defer(31 * S + 600_000),
                Verdict::Defer(32 * S + 100_000),
            ]
        );
        // The state carries the pace to the next claim.
        let text = windows["k"].to_text();
        let mut w = Window::load(Some(&text), r, 30 * S);
        assert_eq!(w.allowed(r, 30 * S), 0);
        assert_eq!(w.defer(r, 30 * S), 32 * S + 600_000);
    }

    #[test]
    fn promotion_fills_free_slots_only() {
        for (limit, running, available, want) in [
            (1, 0, 0, 1),
            (1, 1, 0, 0),
            (1, 0, 1, 0),
            (3, 1, 0, 2),
            (3, 1, 1, 1),
            (2, 5, 0, 0),
            (0, 0, 0, 1),
        ] {
            assert_eq!(
                to_promote(limit, running, available),
                want,
                "{limit} {running} {available}"
            );
        }
    }
}
