//! Operators' acts on jobs, decided: what cancel, retry and discard do to a job in each state
//! (`acts.rs` has the public API, `store/acts.rs` locks the jobs and writes what is decided
//! here).
//!
//! - **cancel**: a job not yet running (`available`, `scheduled`, `retryable`, `waiting`,
//!   `blocked`) is `cancelled` at once (what depends on it follows its edges' policies); a `running` one gets a cancel request, which its worker reads at its
//!   next heartbeat: the handler sees `ctx.cancelled()`, has `worker.cancel_grace` to stop, is
//!   dropped, and the job ends `cancelled` with its `ctx.tx()` rolled back.
//! - **retry**: a `discarded`, `cancelled`, `retryable` or `scheduled` job is `available` now,
//!   with one more attempt if it had used them all.
//! - **discard**: a job not yet running is `discarded` at once.
//!
//! Anything else (a finished job, a running one for retry or discard) is refused with the
//! state it is in.

use jobq_producer::JobState;

use crate::model::{Act, Acted};

/// What `act` does to a job in `state`.
pub(crate) fn decide(act: Act, state: JobState) -> Acted {
    use JobState::*;
    let refuse = |why: &str| Acted::Refused {
        state,
        why: why.to_owned(),
    };
    let waiting = matches!(state, Available | Scheduled | Retryable | Waiting | Blocked);
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
        Act::Retry if state == Blocked => refuse("it is waiting for its parents"),
        Act::Retry => refuse("it is already waiting to run"),
    }
}

/// What `act` does to a job found in `state` that was listed in `listed` (an act by filter): a
/// job whose state changed since the listing is left alone (a scheduled job that started
/// meanwhile is not cancelled), whatever the act would do in its new state; so is one whose
/// error no longer contains the filter's text (`still_matches` false: it ran and failed again
/// meanwhile, with another error).
pub(crate) fn decide_listed(
    act: Act,
    listed: JobState,
    state: JobState,
    still_matches: bool,
) -> Acted {
    if state != listed {
        Acted::Refused {
            state,
            why: format!("it is {state} now, no longer {listed} as it was when listed"),
        }
    } else if !still_matches {
        Acted::Refused {
            state,
            why: "its error no longer contains the filter's text (it failed again meanwhile)"
                .to_owned(),
        }
    } else {
        decide(act, state)
    }
}

/// `acted` for a job that runs after other jobs or belongs to a workflow (`linked`): a retry
/// of one such job alone is refused, as it would run before its parents, or be counted twice
/// by its workflow; the workflow's retry (`jobq workflows retry`) re-runs it in its place.
pub(crate) fn with_dependencies(act: Act, state: JobState, linked: bool, acted: Acted) -> Acted {
    match acted {
        Acted::Done { .. } if linked && act == Act::Retry => Acted::Refused {
            state,
            why: "it runs after other jobs or belongs to a workflow: retry its workflow \
                  (`jobq workflows retry`), or enqueue it again"
                .to_owned(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    #[test]
    fn a_job_with_parents_or_a_workflow_is_not_retried_alone() {
        for state in JobState::ALL {
            for act in [Act::Cancel, Act::Discard, Act::Retry] {
                let plain = decide(act, state);
                assert_eq!(with_dependencies(act, state, false, plain.clone()), plain);
                let linked = with_dependencies(act, state, true, plain.clone());
                if act == Act::Retry && plain.ok() {
                    assert!(
                        matches!(linked, Acted::Refused { ref why, .. } if why.contains("jobq workflows retry"))
                    );
                } else {
                    assert_eq!(linked, plain, "{act:?} {state}");
                }
            }
        }
    }

    #[test]
    fn every_act_in_every_state() {
        let done = |from, to| Acted::Done { from, to };
        for state in JobState::ALL {
            let waiting = matches!(state, Available | Scheduled | Retryable | Waiting | Blocked);
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
                        super::super::attempt::is_valid(Some(from), to),
                        "{from} -> {to}"
                    );
                }
            }
        }
        // By filter: only jobs still in the listed state, still matching the error text.
        for act in [Act::Cancel, Act::Discard, Act::Retry] {
            for listed in JobState::ALL {
                for state in JobState::ALL {
                    for matches in [true, false] {
                        let d = decide_listed(act, listed, state, matches);
                        if state == listed && matches {
                            assert_eq!(d, decide(act, state));
                        } else {
                            assert!(
                                matches!(d, Acted::Refused { state: s, .. } if s == state),
                                "{act:?}: listed {listed}, found {state}, matches {matches}: {d:?}"
                            );
                        }
                    }
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
