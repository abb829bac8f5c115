//! The values that pass between deciding and writing: what the store read, and what the
//! decision layer (`machine/`) tells it to write. Data and their spellings only: every rule
//! about them lives in `machine/`, every statement that reads or writes them in `store/`, and
//! neither of those two imports the other; the runtime (`runtime/`) passes values from one to
//! the other.

mod act;
mod claim;
mod event;

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobq_producer::JobState;

pub use act::{Act, Acted};
pub(crate) use claim::{
    ClaimPlan, ClaimedJob, Cursor, Deferred, KeyState, Outcome as ClaimOutcome, Throttled,
    Undecodable,
};
pub use event::Event;

/// A rule the store applies to a row it read under lock, given by the runtime from `machine/`
/// (the store decides nothing itself): what an act does to a job in a state, and whether the
/// job still matches the error text an act by filter listed it by (true when there is none),
/// and whether it runs after other jobs or belongs to a workflow.
pub(crate) type ActRule<'a> = &'a (dyn Fn(Act, JobState, bool, bool) -> Acted + Send + Sync);

/// The cancel-override rule (`machine::attempt::overridden_by_cancel`): the decision to write
/// instead, when an operator asked (the text: who) to cancel the running job.
pub(crate) type CancelRule = fn(&Decision, &str) -> Option<Decision>;

/// How many waiting jobs of a key to promote, from (limit, running, available)
/// (`machine::flow::to_promote`).
pub(crate) type PromoteRule = fn(u32, u32, u32) -> u32;

/// The history table's last partition, catching rows past every bound.
pub(crate) const MAX_PARTITION: &str = "pmax";

/// One partition of the history table (`jobq_transitions`), as the server lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Partition {
    pub(crate) name: String,
    /// Its rows are older than this (UTC); `None`: `MAXVALUE`.
    pub(crate) below: Option<chrono::NaiveDateTime>,
}

/// A fencing token: fresh random bytes per claim transaction.
pub(crate) type Token = [u8; 16];

/// `(id, token)` of a running job: what fences every write about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Fence {
    pub(crate) id: u64,
    pub(crate) token: Token,
}

/// What to write for an attempt's outcome.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    /// The job's next state.
    pub(crate) to: JobState,
    /// Recorded event.
    pub(crate) event: Event,
    /// For `retryable`/`scheduled`: how long from now until it may run.
    pub(crate) delay: Option<Duration>,
    /// Recorded error, also stored as `last_error`.
    pub(crate) error: Option<String>,
    /// Whether `max_attempts` grows by one so this attempt does not count (snooze, release).
    pub(crate) refund_attempt: bool,
}

/// What the schedule's row says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ScheduleState {
    /// The newest slot decided so far; `None` for a schedule never seen.
    pub(crate) last_slot: Option<DateTime<Utc>>,
    /// The job of the previous slot has not finished.
    pub(crate) previous_unfinished: bool,
    /// Paused by an operator.
    pub(crate) paused: bool,
}
