//! A claim's values: the jobs it read, where its read stopped, the state of the concurrency
//! keys it locked, and the plan `machine/claim.rs` makes of them for `store/claim_write.rs` to
//! write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jobq_producer::KindName;

use super::{Fence, Token};

/// A job a claim read; once the claim commits, one this worker runs.
#[derive(Clone, Debug)]
pub(crate) struct ClaimedJob {
    pub(crate) id: u64,
    pub(crate) kind: KindName,
    pub(crate) payload: String,
    /// The attempt now running (already incremented).
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    /// Microseconds from run-at to the claim, on the database clock.
    pub(crate) wait_us: i64,
    pub(crate) token: Token,
    /// Its concurrency key, if it has one.
    pub(crate) concurrency_key: Option<String>,
    /// Whether other jobs depend on it or it belongs to a workflow (as the claim read it): its
    /// ending is then written in the path that settles dependents (`store/deps.rs`).
    pub(crate) linked: bool,
    /// The trace context it was enqueued with (`traceparent`, `tracestate`), as stored: the
    /// handler's span continues it (`trace.rs`).
    pub(crate) trace: Option<(String, Option<String>)>,
}

impl ClaimedJob {
    /// The fence every write about this claim carries.
    pub(crate) fn fence(&self) -> Fence {
        Fence {
            id: self.id,
            token: self.token,
        }
    }
}

/// Where a claim stopped reading, in claim order (`priority, run_at, id`): the last job it read.
/// The next claim of the same claimer may start after it (see `runtime/claimer.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) priority: i16,
    /// `run_at` in microseconds since 1970-01-01 00:00:00 (the column's own clock, UTC).
    pub(crate) run_at_us: i64,
    pub(crate) id: u64,
}

/// The concurrency keys a claim locked, as it counted them after the locks.
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    /// Jobs of each key running now (keys absent: none).
    pub(crate) running: HashMap<String, u32>,
    /// Jobs of each key `available` now (counted only for the keys it may promote for).
    pub(crate) available: HashMap<String, u32>,
    /// The first waiting jobs of the keys it may promote for, in claim order, locked.
    pub(crate) waiting: HashMap<String, Vec<u64>>,
    /// Each key's stored rate window (`jobq_keys.rate_state`), read with a key rate limit.
    pub(crate) rate: HashMap<String, Option<String>>,
    /// The database clock read after the locks, µs since the epoch.
    pub(crate) now_us: i64,
}

/// Jobs a claim read but did not start because of a concurrency key or key rate limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Throttled {
    /// Sent to `waiting` (their key at its limit).
    pub(crate) waiting: u32,
    /// Deferred to `scheduled` (their key's rate limit used up).
    pub(crate) deferred: u32,
}

/// A row the claim read but could not decode (a kind or queue the runtime refuses, a key that
/// is not UTF-8: written by another program past the server's checks). It is discarded with
/// `reason`, so one bad row never stops its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Undecodable {
    pub(crate) id: u64,
    pub(crate) reason: String,
}

/// A job deferred by its key's rate limit: `scheduled` to run at `at_us` (µs since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deferred {
    pub(crate) id: u64,
    pub(crate) at_us: i64,
}

/// What one claim writes, in its final round trip.
#[derive(Debug, Default)]
pub(crate) struct ClaimPlan {
    /// `available → running`, under the claim's token.
    pub(crate) start: Vec<ClaimedJob>,
    /// `available → waiting`: their key is at its limit.
    pub(crate) wait: Vec<u64>,
    /// `available → scheduled`: their key's rate limit is used up.
    pub(crate) defer: Vec<Deferred>,
    /// `waiting → available`: waiting jobs of the carried completions' keys, into the slots
    /// those completions free.
    pub(crate) promote: Vec<u64>,
    /// `available → discarded`: rows that could not be decoded, with the reason.
    pub(crate) discard: Vec<Undecodable>,
    /// Rate windows to store per key (`jobq_keys.rate_state`).
    pub(crate) key_windows: BTreeMap<String, String>,
    /// The queue's rate window to store (`jobq_queues.rate_state`), charged with the starts.
    pub(crate) queue_window: Option<String>,
    /// Stamp the starts with the clock read after the locks (`@jobq_now`, the time the rate
    /// windows were charged at) rather than the statement's own clock.
    pub(crate) at_lock_clock: bool,
    /// The keys jobs were sent to wait or deferred for, with the limit applied to each: once
    /// the claim has committed, those showing a free slot go to the key promoter.
    pub(crate) waited_for: BTreeMap<String, u32>,
    /// The carried completions' keys this claim promoted for (those with waiting jobs).
    pub(crate) promoted_keys: BTreeSet<String>,
}

impl ClaimPlan {
    /// The jobs held back, counted.
    pub(crate) fn throttled(&self) -> Throttled {
        Throttled {
            waiting: self.wait.len() as u32,
            deferred: self.defer.len() as u32,
        }
    }
}

/// How a claim went, which paces the claimer's next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It started as many jobs as it asked for and held none back: more may follow right
    /// behind them, and the next claim may read from where this one stopped.
    Full,
    /// It held jobs back (sent to `waiting` or deferred) or made waiting jobs available: more
    /// may be claimable at once, but some of them sort before where it stopped.
    Throttled,
    /// It started fewer jobs than it asked for: the queue is empty for now.
    Partial,
    /// The queue's rate limit is used up: a permit frees after this long (database clock).
    RateLimited(Duration),
}
