//! Claim planning, pure: what a claim does with what it read and locked. The store reads in
//! three steps (the queue's rate window, the jobs, the keys' rows and counts) and writes the
//! [`ClaimPlan`] made here in its final round trip; `runtime/claim.rs` passes the values
//! between them. Every choice a claim makes is in this file or in `flow.rs`:
//!
//! - [`gate`]: with a queue rate limit, how many jobs to read at all (none: the claim only
//!   commits, and the claimer waits for the next permit);
//! - [`keys_to_lock`]: which concurrency keys to lock, with the limit recorded for each;
//! - [`plan`]: each job started, sent to `waiting`, deferred or left, the waiting jobs promoted
//!   into the slots the carried completions free, and the rate windows to store;
//! - [`free_after_commit`]: which keys the promoter should look at once the claim committed;
//! - [`outcome`]: how the claim went, which paces the next one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jobq_config::Rate;

use super::flow::{self, Candidate, Limits, Verdict, Window};
use crate::model::{
    ClaimOutcome, ClaimPlan, ClaimedJob, Deferred, KeyState, Throttled, Undecodable,
};

/// The queue's rate window once the claim may read: charged with the jobs it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueueWindow {
    rate: Rate,
    window: Window,
    /// Starts it allows this claim (already capped at what the claim asked for).
    allowed: u32,
    /// The clock it was read at (µs since the epoch).
    now_us: i64,
}

/// What a queue's rate limit lets a claim do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Used up: read no job; a permit frees after `wait`.
    Closed { wait: Duration },
    /// Read at most `take` jobs.
    Open { take: u32, window: QueueWindow },
}

/// The queue's rate gate, from its stored window read under the queue row's lock at `now_us`,
/// for a claim that wants `want` jobs.
pub(crate) fn gate(rate: Rate, stored: Option<&str>, now_us: i64, want: u32) -> Gate {
    let mut window = Window::load(stored, rate, now_us);
    let allowed = window.allowed(rate, now_us);
    if allowed == 0 {
        let wait = (window.frees_at(now_us) - now_us).max(1) as u64;
        return Gate::Closed {
            wait: Duration::from_micros(wait),
        };
    }
    let take = allowed.min(want);
    Gate::Open {
        take,
        window: QueueWindow {
            rate,
            window,
            allowed: take,
            now_us,
        },
    }
}

/// The keys a claim locks: those of the jobs it read (`limits[i]` is job `i`'s key limit) and
/// the carried completions' keys that have waiting jobs (`freed`), each with the highest
/// limit that applies to it.
pub(crate) fn keys_to_lock(
    jobs: &[ClaimedJob],
    limits: &[u32],
    freed: &BTreeMap<String, u32>,
) -> BTreeMap<String, u32> {
    let mut keys: BTreeMap<String, u32> = BTreeMap::new();
    let batch = jobs
        .iter()
        .zip(limits)
        .filter_map(|(j, &l)| Some((j.concurrency_key.as_deref()?, l)));
    for (k, limit) in batch.chain(freed.iter().map(|(k, &l)| (k.as_str(), l))) {
        let e = keys.entry(k.to_owned()).or_insert(limit);
        *e = (*e).max(limit);
    }
    keys
}

/// What a claim read and locked, for [`plan`].
#[derive(Debug, Default)]
pub(crate) struct Read {
    /// The jobs, in claim order.
    pub(crate) jobs: Vec<ClaimedJob>,
    /// The rows it could not decode.
    pub(crate) undecodable: Vec<Undecodable>,
    /// Each job's key limit (`kinds.K.key_limit`, else the queue's).
    pub(crate) limits: Vec<u32>,
    /// The carried completions' keys that have waiting jobs, with their kinds' limits.
    pub(crate) freed: BTreeMap<String, u32>,
    /// The keys locked ([`keys_to_lock`]); empty when none were.
    pub(crate) locked: BTreeMap<String, u32>,
    /// Their state after the locks (default when none were locked).
    pub(crate) keys: KeyState,
    /// The queue's rate window ([`Gate::Open`]), with a queue rate limit.
    pub(crate) queue: Option<QueueWindow>,
    /// `queues.NAME.key_rate_limit`.
    pub(crate) key_rate: Option<Rate>,
}

/// Decides a claim. With no limit in play every job read starts. Otherwise, at the clock read
/// after the locks: each job in claim order is started, sent to `waiting` (its key at its
/// limit), deferred (its key's rate used up) or left `available` (the queue's rate used up),
/// by [`flow::plan`]; the rate windows go back charged with the starts; and the waiting jobs
/// of each carried completion's key fill its free slots: the key's limit, less its running
/// jobs, its available jobs outside this batch, and the batch's jobs that hold a slot (started
/// or left available; one sent to wait or deferred frees its place).
pub(crate) fn plan(read: Read) -> ClaimPlan {
    let Read {
        jobs,
        undecodable,
        limits,
        freed,
        locked,
        keys,
        queue,
        key_rate,
    } = read;
    let now_us = if locked.is_empty() {
        queue.as_ref().map(|q| q.now_us)
    } else {
        Some(keys.now_us)
    };
    let Some(now_us) = now_us else {
        // Nothing limits this claim: no key, no rate.
        return ClaimPlan {
            start: jobs,
            discard: undecodable,
            ..ClaimPlan::default()
        };
    };
    let mut windows: HashMap<String, Window> = HashMap::new();
    if let Some(rate) = key_rate {
        for (k, state) in &keys.rate {
            windows.insert(k.clone(), Window::load(state.as_deref(), rate, now_us));
        }
    }
    let candidates: Vec<Candidate> = jobs
        .iter()
        .zip(&limits)
        .map(|(j, &limit)| Candidate {
            key: j.concurrency_key.as_deref(),
            limit,
        })
        .collect();
    let verdicts = flow::plan(
        &candidates,
        Limits {
            queue_allowed: queue.as_ref().map_or(u32::MAX, |q| q.allowed),
            key_rate: key_rate.map(|r| (r, &mut windows)),
            running: &keys.running,
            now_us,
        },
    );
    let mut out = ClaimPlan {
        discard: undecodable,
        at_lock_clock: true,
        promoted_keys: freed.keys().cloned().collect(),
        ..ClaimPlan::default()
    };
    if key_rate.is_some() {
        out.key_windows = windows
            .iter()
            .map(|(k, w)| (k.clone(), w.to_text()))
            .collect();
    }
    let started = verdicts.iter().filter(|v| **v == Verdict::Claim).count();
    if let Some(mut q) = queue {
        q.window.charge(now_us, started as u32);
        out.queue_window = Some(q.window.to_text());
    }
    out.promote = promotions(&jobs, &verdicts, &freed, &locked, &keys);
    let limit_of = |k: &str| locked.get(k).copied().unwrap_or(1);
    for (job, verdict) in jobs.into_iter().zip(verdicts) {
        match verdict {
            Verdict::Claim => {
                out.start.push(job);
                continue;
            }
            Verdict::Wait => out.wait.push(job.id),
            Verdict::Defer(at_us) => out.defer.push(Deferred { id: job.id, at_us }),
            Verdict::Leave => continue,
        }
        // A job held back (waiting, or deferred: its place is free again): the check after
        // the commit looks at its key.
        if let Some(k) = job.concurrency_key {
            let limit = limit_of(&k);
            out.waited_for.insert(k, limit);
        }
    }
    out
}

/// The waiting jobs to make `available` for each carried completion's key (see [`plan`]).
fn promotions(
    jobs: &[ClaimedJob],
    verdicts: &[Verdict],
    freed: &BTreeMap<String, u32>,
    locked: &BTreeMap<String, u32>,
    keys: &KeyState,
) -> Vec<u64> {
    // Per key: (jobs of this batch, of which holding a slot).
    let mut in_batch: HashMap<&str, (u32, u32)> = HashMap::new();
    for (j, v) in jobs.iter().zip(verdicts) {
        if let Some(k) = j.concurrency_key.as_deref() {
            let e = in_batch.entry(k).or_default();
            e.0 += 1;
            if matches!(v, Verdict::Claim | Verdict::Leave) {
                e.1 += 1;
            }
        }
    }
    freed
        .keys()
        .flat_map(|k| {
            let limit = locked.get(k).copied().unwrap_or(1);
            let (read, holding) = in_batch.get(k.as_str()).copied().unwrap_or_default();
            let others = keys
                .available
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(read);
            let running = keys.running.get(k).copied().unwrap_or(0) + holding;
            let n = flow::to_promote(limit, running, others);
            keys.waiting
                .get(k)
                .into_iter()
                .flatten()
                .copied()
                .take(n as usize)
        })
        .collect()
}

/// After the commit: which of the keys jobs were sent to wait for now show a free slot, given
/// their running jobs counted after the commit. A job holding a slot may have ended between the
/// claim's count and its commit, and that job's promotion may have looked for waiting jobs
/// before the claim's were committed: those keys go to the promoter.
pub(crate) fn free_after_commit(
    waited_for: &BTreeMap<String, u32>,
    running: &HashMap<String, u32>,
) -> BTreeSet<String> {
    waited_for
        .iter()
        .filter(|(k, &limit)| running.get(*k).copied().unwrap_or(0) < limit)
        .map(|(k, _)| k.clone())
        .collect()
}

/// How a claim that asked for `want` jobs went, from what it started, held back, and moved
/// otherwise (waiting jobs promoted, undecodable rows discarded: the queue may hold more).
pub(crate) fn outcome(
    want: u32,
    started: usize,
    throttled: Throttled,
    moved: usize,
) -> ClaimOutcome {
    if throttled != Throttled::default() || moved > 0 {
        ClaimOutcome::Throttled
    } else if started >= want as usize {
        ClaimOutcome::Full
    } else {
        ClaimOutcome::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobq_producer::KindName;

    const S: i64 = 1_000_000;
    const NOW: i64 = 1_000 * S;

    fn job(id: u64, key: Option<&str>) -> ClaimedJob {
        ClaimedJob {
            id,
            kind: KindName::new("k").unwrap(),
            payload: "{}".into(),
            attempt: 1,
            max_attempts: 3,
            wait_us: 0,
            token: [0; 16],
            concurrency_key: key.map(str::to_owned),
            linked: false,
            trace: None,
        }
    }

    fn rate(max: u32, secs: u64) -> Rate {
        Rate {
            max,
            period: Duration::from_secs(secs),
        }
    }

    fn ids(jobs: &[ClaimedJob]) -> Vec<u64> {
        jobs.iter().map(|j| j.id).collect()
    }

    fn keys(running: &[(&str, u32)]) -> KeyState {
        KeyState {
            running: running.iter().map(|(k, n)| ((*k).into(), *n)).collect(),
            now_us: NOW,
            ..KeyState::default()
        }
    }

    /// A read of `jobs` (id, key) with key limit `limit` for all, every key locked.
    fn read(jobs: &[(u64, Option<&str>)], limit: u32, state: KeyState) -> Read {
        let jobs: Vec<ClaimedJob> = jobs.iter().map(|&(id, k)| job(id, k)).collect();
        let limits = vec![limit; jobs.len()];
        let locked = keys_to_lock(&jobs, &limits, &BTreeMap::new());
        Read {
            jobs,
            limits,
            locked,
            keys: state,
            ..Read::default()
        }
    }

    #[test]
    fn without_limits_every_job_read_starts() {
        let p = plan(read(&[(1, None), (2, None)], 1, KeyState::default()));
        assert_eq!(ids(&p.start), [1, 2]);
        assert!(!p.at_lock_clock, "no lock clock was read");
        assert!(p.wait.is_empty() && p.defer.is_empty() && p.promote.is_empty());
        assert!(p.key_windows.is_empty() && p.queue_window.is_none());
    }

    #[test]
    fn undecodable_rows_are_discarded_with_and_without_limits() {
        let bad = Undecodable {
            id: 9,
            reason: "kind \"noop\\n\" is not a valid kind name".into(),
        };
        let mut r = read(&[(1, None)], 1, KeyState::default());
        r.undecodable = vec![bad.clone()];
        let p = plan(r);
        assert_eq!(
            (ids(&p.start), p.discard.clone()),
            (vec![1], vec![bad.clone()])
        );
        // With a key in play as well.
        let mut r = read(&[(1, Some("a"))], 1, keys(&[]));
        r.undecodable = vec![bad.clone()];
        let p = plan(r);
        assert_eq!((ids(&p.start), p.discard.clone()), (vec![1], vec![bad]));
        // A claim that discarded rows claims again at once: more may be behind them.
        assert_eq!(
            outcome(2, 1, Throttled::default(), 1),
            ClaimOutcome::Throttled
        );
    }

    #[test]
    fn keys_at_their_limit_send_jobs_to_wait() {
        // Key a: one running, limit 2: one more starts, the next waits. Key b: free.
        let p = plan(read(
            &[(1, Some("a")), (2, Some("a")), (3, Some("b")), (4, None)],
            2,
            keys(&[("a", 1)]),
        ));
        assert_eq!(ids(&p.start), [1, 3, 4]);
        assert_eq!(p.wait, [2]);
        assert_eq!(p.waited_for, BTreeMap::from([("a".into(), 2)]));
        assert!(p.at_lock_clock);
        assert_eq!(
            p.throttled(),
            Throttled {
                waiting: 1,
                deferred: 0
            }
        );
    }

    #[test]
    fn a_key_rate_limit_defers_and_stores_every_window() {
        let mut r = read(
            &[(1, Some("a")), (2, Some("a")), (3, Some("a"))],
            10,
            keys(&[]),
        );
        r.key_rate = Some(rate(2, 10));
        r.keys.rate.insert("a".into(), None);
        let p = plan(r);
        assert_eq!(ids(&p.start), [1, 2]);
        assert_eq!(p.defer.len(), 1);
        assert_eq!(p.defer[0].id, 3);
        assert!(p.defer[0].at_us > NOW, "deferred to when a permit frees");
        assert_eq!(p.waited_for, BTreeMap::from([("a".into(), 10)]));
        let stored = p.key_windows.get("a").expect("the key's window is stored");
        // The stored window holds the two starts: a later claim at the same time gets none.
        let mut w = Window::load(Some(stored), rate(2, 10), NOW);
        assert_eq!(w.allowed(rate(2, 10), NOW), 0);
    }

    #[test]
    fn the_queue_gate_caps_the_read_and_is_charged_with_the_starts() {
        let r = rate(3, 1);
        assert_eq!(
            gate(r, None, NOW, 10),
            Gate::Open {
                take: 3,
                window: QueueWindow {
                    rate: r,
                    window: Window::load(None, r, NOW),
                    allowed: 3,
                    now_us: NOW
                }
            }
        );
        let Gate::Open { take, window } = gate(r, None, NOW, 2) else {
            panic!("a fresh window is open")
        };
        assert_eq!(take, 2, "never more than asked for");
        // One keyless job and one key at its limit: one start charged, the other waits.
        let mut rd = read(&[(1, None), (2, Some("a"))], 1, keys(&[("a", 1)]));
        rd.queue = Some(window);
        let p = plan(rd);
        assert_eq!(ids(&p.start), [1]);
        assert_eq!(p.wait, [2]);
        let stored = p.queue_window.expect("the queue's window is stored");
        let Gate::Open { take, .. } = gate(r, Some(&stored), NOW, 10) else {
            panic!("one start of three")
        };
        assert_eq!(take, 2);
        // Used up: closed, until the slot of the starts leaves the window (1.1 s at most).
        let mut full = Window::load(None, r, NOW);
        full.charge(NOW, 3);
        match gate(r, Some(&full.to_text()), NOW, 10) {
            Gate::Closed { wait } => {
                assert!(wait > Duration::ZERO && wait <= Duration::from_millis(1100))
            }
            open => panic!("{open:?}"),
        }
    }

    #[test]
    fn a_queue_allowance_leaves_the_rest_available() {
        let Gate::Open { window, .. } = gate(rate(1, 1), None, NOW, 1) else {
            panic!()
        };
        let mut rd = read(&[(1, None), (2, None)], 1, KeyState::default());
        rd.queue = Some(window);
        let p = plan(rd);
        assert_eq!(ids(&p.start), [1]);
        assert!(
            p.wait.is_empty() && p.defer.is_empty(),
            "job 2 is left as it was"
        );
        assert!(
            p.at_lock_clock,
            "starts stamped at the clock the window was charged at"
        );
    }

    #[test]
    fn keys_are_locked_once_with_their_highest_limit() {
        let jobs = [
            job(1, Some("a")),
            job(2, Some("a")),
            job(3, None),
            job(4, Some("b")),
        ];
        let freed = BTreeMap::from([("a".to_owned(), 5), ("c".to_owned(), 2)]);
        assert_eq!(
            keys_to_lock(&jobs, &[1, 3, 9, 1], &freed),
            BTreeMap::from([("a".into(), 5), ("b".into(), 1), ("c".into(), 2)])
        );
    }

    #[test]
    fn promotions_fill_only_the_slots_the_completions_free() {
        // (limit, running, available outside the batch, batch jobs of the key (verdict by the
        // running count), waiting ids) → promoted.
        type Case = (
            u32,
            u32,
            u32,
            &'static [u64],
            &'static [u64],
            &'static [u64],
        );
        let cases: [Case; 6] = [
            // Limit 2, nothing running, nothing available: two of three waiting jobs.
            (2, 0, 0, &[], &[7, 8, 9], &[7, 8]),
            // One running: one slot.
            (2, 1, 0, &[], &[7, 8], &[7]),
            // An available job outside the batch takes the free slot first.
            (2, 1, 1, &[], &[7, 8], &[]),
            // A batch job of the key started here holds a slot.
            (2, 0, 0, &[1], &[7, 8], &[7]),
            // … and with an available job outside it, none is left.
            (2, 0, 1, &[1], &[7, 8], &[]),
            // Full: none.
            (1, 1, 0, &[], &[7], &[]),
        ];
        for (limit, running, available, batch, waiting, want) in cases {
            let mut state = keys(&[("a", running)]);
            // The key's available jobs counted by the claim include its batch jobs.
            state
                .available
                .insert("a".into(), available + batch.len() as u32);
            state.waiting.insert("a".into(), waiting.to_vec());
            let jobs: Vec<ClaimedJob> = batch.iter().map(|&id| job(id, Some("a"))).collect();
            let limits = vec![limit; jobs.len()];
            let freed = BTreeMap::from([("a".to_owned(), limit)]);
            let locked = keys_to_lock(&jobs, &limits, &freed);
            let p = plan(Read {
                jobs,
                limits,
                freed,
                locked,
                keys: state,
                ..Read::default()
            });
            assert_eq!(
                p.promote, want,
                "limit {limit}, running {running}, available {available}, batch {batch:?}"
            );
            assert_eq!(p.promoted_keys, BTreeSet::from(["a".to_owned()]));
        }
    }

    #[test]
    fn only_keys_with_a_free_slot_go_to_the_promoter_after_the_commit() {
        let waited = BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2), ("c".into(), 1)]);
        let running = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]);
        assert_eq!(
            free_after_commit(&waited, &running),
            BTreeSet::from(["b".to_owned(), "c".to_owned()])
        );
    }

    #[test]
    fn outcomes() {
        let none = Throttled::default();
        let one_waiting = Throttled {
            waiting: 1,
            deferred: 0,
        };
        let cases = [
            ((4, 4, none, 0), ClaimOutcome::Full),
            ((4, 3, none, 0), ClaimOutcome::Partial),
            ((4, 0, none, 0), ClaimOutcome::Partial),
            ((4, 3, one_waiting, 0), ClaimOutcome::Throttled),
            ((4, 4, one_waiting, 0), ClaimOutcome::Throttled),
            ((4, 4, none, 2), ClaimOutcome::Throttled),
            ((0, 0, none, 0), ClaimOutcome::Full),
        ];
        for ((want, started, throttled, promoted), expected) in cases {
            assert_eq!(
                outcome(want, started, throttled, promoted),
                expected,
                "{want} {started} {throttled:?} {promoted}"
            );
        }
    }
}
