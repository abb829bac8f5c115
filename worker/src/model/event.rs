//! [`Event`]: why a job changed state, as `jobq_transitions.event` spells it.

/// Why a transition happened; stored in `jobq_transitions.event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Inserted by a producer.
    Enqueued,
    /// A due `scheduled`/`retryable` job became `available`.
    Promoted,
    /// A worker claimed it.
    Claimed,
    /// The handler succeeded.
    Completed,
    /// The attempt failed and the job will run again.
    Failed,
    /// The job failed for good.
    Discarded,
    /// The handler asked to run again later, without using an attempt.
    Snoozed,
    /// The handler cancelled the job.
    Cancelled,
    /// Its lease expired (the worker died or lost the database); taken back by maintenance.
    Rescued,
    /// Put back by a worker shutting down (not counted as a failure).
    Released,
    /// A duplicate of this unique job replaced its payload, priority and run-at before it
    /// ever started (`OnDuplicate::Replace`); it may move between `available` and `scheduled`.
    Replaced,
    /// A claim held it back: its concurrency key was at its limit (`available → waiting`), or
    /// its key's rate limit was used up (`available → scheduled`).
    Throttled,
    /// An operator retried it (`jobq retry`): back to `available`.
    Requeued,
}

impl Event {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Enqueued => "enqueued",
            Event::Promoted => "promoted",
            Event::Claimed => "claimed",
            Event::Completed => "completed",
            Event::Failed => "failed",
            Event::Discarded => "discarded",
            Event::Snoozed => "snoozed",
            Event::Cancelled => "cancelled",
            Event::Rescued => "rescued",
            Event::Released => "released",
            Event::Replaced => "replaced",
            Event::Throttled => "throttled",
            Event::Requeued => "requeued",
        }
    }

    /// Every event, for parsing and tests.
    pub const ALL: [Event; 13] = [
        Event::Enqueued,
        Event::Promoted,
        Event::Claimed,
        Event::Completed,
        Event::Failed,
        Event::Discarded,
        Event::Snoozed,
        Event::Cancelled,
        Event::Rescued,
        Event::Released,
        Event::Replaced,
        Event::Throttled,
        Event::Requeued,
    ];

    /// The `outcome` label of `jobq_jobs_finished_total` for an attempt that ended with this
    /// event; `None` for events that do not end an attempt in the worker (insertion,
    /// promotion, claim, and rescue, which maintenance counts in `jobq_jobs_rescued_total`).
    pub(crate) fn finished_outcome(self) -> Option<&'static str> {
        match self {
            Event::Completed => Some("completed"),
            Event::Failed => Some("retried"),
            Event::Discarded => Some("discarded"),
            Event::Snoozed => Some("snoozed"),
            Event::Cancelled => Some("cancelled"),
            Event::Released => Some("released"),
            Event::Enqueued
            | Event::Promoted
            | Event::Claimed
            | Event::Rescued
            | Event::Replaced
            | Event::Throttled
            | Event::Requeued => None,
        }
    }
}

impl serde::Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Event {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Event::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown event {s:?}"))
    }
}
