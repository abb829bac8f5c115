//! Operators' acts on jobs: cancel, retry, discard (`jobq cancel|retry|discard ID…`). The
//! decision for each job is pure ([`decide`], table-tested); `store/acts.rs` locks the jobs,
//! applies it, and records each change as a transition naming who asked.
//!
//! - **cancel**: a job not yet running (`available`, `scheduled`, `retryable`, `waiting`) is
//!   `cancelled` at once; a `running` one gets a cancel request, which its worker reads at its
//!   next heartbeat: the handler sees `ctx.cancelled()`, has `worker.cancel_grace` to stop, is
//!   dropped, and the job ends `cancelled` with its `ctx.tx()` rolled back.
//! - **retry**: a `discarded`, `cancelled`, `retryable` or `scheduled` job is `available` now,
//!   with one more attempt if it had used them all.
//! - **discard**: a job not yet running is `discarded` at once.
//!
//! Anything else (a finished job, a running one for retry or discard) is refused with the
//! state it is in; an id without a job is reported as such.

use jobq_producer::{JobId, JobState};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::error::Result;
use crate::store::{JobFilter, JobOrder};
use crate::transition::Event;

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

/// What `act` does to a job in `state`.
pub(crate) fn decide(act: Act, state: JobState) -> Acted {
    use JobState::*;
    let refuse = |why: &str| Acted::Refused {
        state,
        why: why.to_owned(),
    };
    let waiting = matches!(state, Available | Scheduled | Retryable | Waiting);
    match act {
        Act::Cancel if waiting => Acted::Done {
            from: state,
            to: Cancelled,
        },
        Act::Cancel if state == Running => Acted::CancelRequested,
        Act::Cancel => refuse("it has already finished"),
        Act::Discard if waiting => Acted::Done {
            from: state,
            to: Discarded,
        },
        Act::Discard if state == Running => refuse("it is running; cancel it instead"),
        Act::Discard => refuse("it has already finished"),
        Act::Retry if matches!(state, Discarded | Cancelled | Retryable | Scheduled) => {
            Acted::Done {
                from: state,
                to: Available,
            }
        }
        Act::Retry if state == Completed => refuse("it completed; enqueue a new job instead"),
        Act::Retry if state == Running => refuse("it is running"),
        Act::Retry => refuse("it is already waiting to run"),
    }
}

/// Applies `act` to the jobs `ids` on behalf of `actor` (recorded with each transition; the
/// CLI passes `cli:USER@HOST`). Returns what happened to each, in order.
pub async fn act_on_jobs(
    pool: &MySqlPool,
    act: Act,
    ids: &[JobId],
    actor: &str,
) -> Result<Vec<(JobId, Acted)>> {
    // The column holds 128 characters.
    let actor: String = actor.chars().take(128).collect();
    let actor = actor.as_str();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let raw: Vec<u64> = chunk.iter().map(|i| i.0).collect();
        for (id, acted) in crate::store::apply_act(pool, act, &raw, actor).await? {
            out.push((JobId(id), acted));
        }
    }
    Ok(out)
}

/// Jobs acted on per transaction when acting on a filter.
const FILTER_BATCH: u32 = 1000;

/// What [`act_on_filter`] did, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ActTally {
    /// Jobs moved.
    pub done: u64,
    /// Running jobs whose worker was asked to cancel them.
    pub cancel_requested: u64,
    /// Jobs that had changed meanwhile so the act no longer applied (or were gone).
    pub skipped: u64,
}

/// Applies `act` to every job in `state` that matches `filter`'s queue, kind and error text,
/// a batch of 1,000 per transaction (each locks only its own jobs, briefly), walking the
/// state's index range newest first. The filter's order, cursor and limit are ignored.
pub async fn act_on_filter(
    pool: &MySqlPool,
    act: Act,
    state: JobState,
    filter: &JobFilter,
    actor: &str,
) -> Result<ActTally> {
    let mut tally = ActTally::default();
    let mut page_filter = JobFilter {
        state: Some(state),
        limit: FILTER_BATCH,
        after: None,
        after_run_at: None,
        order: JobOrder::RunAt,
        examine: None,
        ..filter.clone()
    };
    loop {
        let page = crate::store::list_jobs(pool, &page_filter).await?;
        let Some(last) = page.last() else { break };
        // The cursor as this page saw it: acting on the jobs may move their run-at (a retry
        // makes it now), which must not move the walk.
        page_filter.after = Some(last.id);
        page_filter.after_run_at = Some(last.run_at);
        let ids: Vec<JobId> = page.iter().map(|j| j.id).collect();
        for (_, acted) in act_on_jobs(pool, act, &ids, actor).await? {
            match acted {
                Acted::Done { .. } => tally.done += 1,
                Acted::CancelRequested => tally.cancel_requested += 1,
                Acted::Refused { .. } | Acted::NotFound => tally.skipped += 1,
            }
        }
        if page.len() < FILTER_BATCH as usize {
            break;
        }
    }
    Ok(tally)
}

/// How many jobs in `state` match `filter`'s queue, kind and error text: what
/// [`act_on_filter`] would act on now (the console's confirmation shows it).
pub async fn count_jobs(pool: &MySqlPool, state: JobState, filter: &JobFilter) -> Result<i64> {
    Ok(crate::store::count_jobs(pool, state, filter).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    #[test]
    fn every_act_in_every_state() {
        let done = |from, to| Acted::Done { from, to };
        for state in JobState::ALL {
            let waiting = matches!(state, Available | Scheduled | Retryable | Waiting);
            let cancel = decide(Act::Cancel, state);
            let discard = decide(Act::Discard, state);
            let retry = decide(Act::Retry, state);
            match state {
                Running => {
                    assert_eq!(cancel, Acted::CancelRequested);
                    assert!(!discard.ok() && !retry.ok());
                }
                s if waiting => {
                    assert_eq!(cancel, done(s, Cancelled));
                    assert_eq!(discard, done(s, Discarded));
                }
                _ => {
                    assert!(!cancel.ok(), "{state}: a finished job cannot be cancelled");
                    assert!(!discard.ok());
                }
            }
            let retried = matches!(state, Discarded | Cancelled | Retryable | Scheduled);
            assert_eq!(retry.ok(), retried, "{state}");
            if retried {
                assert_eq!(retry, done(state, Available));
            }
            // Every change is an edge of the state machine.
            for a in [cancel, discard, retry] {
                if let Acted::Done { from, to } = a {
                    assert!(
                        crate::transition::is_valid(Some(from), to),
                        "{from} -> {to}"
                    );
                }
            }
        }
        assert_eq!(
            decide(Act::Cancel, Completed),
            Acted::Refused {
                state: Completed,
                why: "it has already finished".into()
            }
        );
    }
}
