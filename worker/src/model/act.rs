//! An operator's act ([`Act`]) and what it did to one job ([`Acted`]). Which act applies in
//! which state is decided in `machine/acts.rs`.

use jobq_producer::JobState;
use serde::Serialize;

use super::Event;

/// An operator's act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Stop the job: now if it waits, at its worker's next heartbeat if it runs.
    Cancel,
    /// Run a failed, cancelled or waiting-to-retry job again, now.
    Retry,
    /// Give up on a job that has not started.
    Discard,
}

impl Act {
    /// The event its transitions record.
    pub(crate) fn event(self) -> Event {
        match self {
            Act::Cancel => Event::Cancelled,
            Act::Retry => Event::Requeued,
            Act::Discard => Event::Discarded,
        }
    }

    /// "cancelled", "retried", "discarded": for the recorded text.
    pub(crate) fn past(self) -> &'static str {
        match self {
            Act::Cancel => "cancelled",
            Act::Retry => "retried",
            Act::Discard => "discarded",
        }
    }
}

/// What an act did to one job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Acted {
    /// The job moved `from` → `to`.
    Done {
        /// Its state before.
        from: JobState,
        /// Its state now.
        to: JobState,
    },
    /// The job is running: its worker cancels it at its next heartbeat.
    CancelRequested,
    /// The act does not apply to a job in this state.
    Refused {
        /// The job's state.
        state: JobState,
        /// Why, in words.
        why: String,
    },
    /// No job has this id.
    NotFound,
}

impl Acted {
    /// Whether the act took effect (or was handed to the job's worker).
    pub fn ok(&self) -> bool {
        matches!(self, Acted::Done { .. } | Acted::CancelRequested)
    }
}
