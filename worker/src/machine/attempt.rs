//! How attempts end, pure: no I/O, no clock. How an attempt ended ([`decide`]), a lease that
//! expired ([`rescue`]), a completion that could not be committed ([`put_back`]), an operator's
//! cancel request that arrives while the job runs ([`with_late_cancel`],
//! [`overridden_by_cancel`]), and which state changes are valid at all ([`is_valid`]). The
//! store only writes what a [`Decision`] says.

use std::time::Duration;

use jobq_producer::JobState;

use crate::model::{Decision, Event};

/// How one attempt ended, as seen by the executor.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// The handler returned `Ok`.
    Success,
    /// The handler returned an error to retry (optionally after a fixed delay).
    Error {
        /// Stored message.
        message: String,
        /// `JobError::RetryAfter`'s delay; `None` means exponential backoff.
        retry_after: Option<Duration>,
    },
    /// The handler panicked (treated as an error).
    Panic(String),
    /// The attempt ran past its timeout (treated as an error).
    Timeout(Duration),
    /// The payload does not decode into the handler's type: retrying cannot help.
    Undecodable(String),
    /// The handler asked to be discarded.
    Discard(String),
    /// The handler asked to run again after a delay without using an attempt.
    Snooze(Duration),
    /// The handler cancelled the job.
    Cancel(String),
    /// The worker is shutting down and gave up waiting for the handler.
    Released,
    /// A prefetched job given back before its handler started.
    NotStarted(Unstarted),
}

/// Why a prefetched job was given back unstarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unstarted {
    /// The worker stopped claiming.
    Stopped,
    /// It waited this long for a handler slot behind longer jobs (`auto` prefetch), while
    /// another worker may have a free one.
    Waited(Duration),
}

/// Backoff parameters of one (queue, kind).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Backoff {
    /// Delay after the first failure.
    pub(crate) base: Duration,
    /// Upper bound.
    pub(crate) max: Duration,
}

/// `base × 2^(attempt-1)` capped at `max`, scaled by `jitter` (0.75..=1.25 in production,
/// fixed in tests) and capped again.
pub(crate) fn backoff(attempt: u32, b: Backoff, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(62);
    let raw = b.base.as_secs_f64() * 2f64.powi(exp as i32);
    let capped = raw.min(b.max.as_secs_f64());
    Duration::from_secs_f64((capped * jitter).min(b.max.as_secs_f64()))
}

/// The longest error text stored: `last_error` and `jobq_transitions.error` are `TEXT`
/// (65,535 bytes), and strict mode rejects a longer value instead of cutting it.
pub(crate) const MAX_ERROR_BYTES: usize = 65_535;

/// The longest delay a snooze or retry can ask for: 10 years. `run_at` is a `DATETIME`
/// (year 9999 at most) and a longer delay is surely a mistake, so longer delays are clamped.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Cuts `text` to at most [`MAX_ERROR_BYTES`] on a character boundary, saying so at the end.
pub(crate) fn fit_error(text: String) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let note = format!(" … [cut: {} bytes in all]", text.len());
    let mut end = MAX_ERROR_BYTES - note.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + note.len());
    out.push_str(&text[..end]);
    out.push_str(&note);
    out
}

/// Keeps a decision within what the schema can store: error text cut to fit, delay clamped.
fn bounded(mut d: Decision) -> Decision {
    d.error = d.error.map(fit_error);
    d.delay = d.delay.map(|x| x.min(MAX_DELAY));
    d
}

/// Decides the transition for an attempt that ended with `outcome`. `attempt` is the number of
/// the attempt that just ran (1-based).
pub(crate) fn decide(
    outcome: &Outcome,
    attempt: u32,
    max_attempts: u32,
    b: Backoff,
    jitter: f64,
) -> Decision {
    bounded(decide_unbounded(outcome, attempt, max_attempts, b, jitter))
}

fn decide_unbounded(
    outcome: &Outcome,
    attempt: u32,
    max_attempts: u32,
    b: Backoff,
    jitter: f64,
) -> Decision {
    let retry_or_discard = |message: String, delay: Duration| {
        if attempt >= max_attempts {
            Decision {
                to: JobState::Discarded,
                event: Event::Discarded,
                delay: None,
                error: Some(format!(
                    "{message} (attempt {attempt} of {max_attempts}, no attempts left)"
                )),
                refund_attempt: false,
            }
        } else {
            Decision {
                to: JobState::Retryable,
                event: Event::Failed,
                delay: Some(delay),
                error: Some(message),
                refund_attempt: false,
            }
        }
    };
    match outcome {
        Outcome::Success => Decision {
            to: JobState::Completed,
            event: Event::Completed,
            delay: None,
            error: None,
            refund_attempt: false,
        },
        Outcome::Error {
            message,
            retry_after,
        } => retry_or_discard(
            message.clone(),
            retry_after.unwrap_or_else(|| backoff(attempt, b, jitter)),
        ),
        Outcome::Panic(m) => retry_or_discard(
            format!("handler panicked: {m}"),
            backoff(attempt, b, jitter),
        ),
        Outcome::Timeout(d) => retry_or_discard(
            format!("timed out after {}", humantime::format_duration(*d)),
            backoff(attempt, b, jitter),
        ),
        Outcome::Undecodable(m) => Decision {
            to: JobState::Discarded,
            event: Event::Discarded,
            delay: None,
            error: Some(format!("payload does not decode: {m}")),
            refund_attempt: false,
        },
        Outcome::Discard(m) => Decision {
            to: JobState::Discarded,
            event: Event::Discarded,
            delay: None,
            error: Some(m.clone()),
            refund_attempt: false,
        },
        Outcome::Snooze(d) => Decision {
            to: JobState::Scheduled,
            event: Event::Snoozed,
            delay: Some(*d),
            error: None,
            refund_attempt: true,
        },
        Outcome::Cancel(m) => Decision {
            to: JobState::Cancelled,
            event: Event::Cancelled,
            delay: None,
            error: Some(m.clone()),
            refund_attempt: false,
        },
        Outcome::Released => Decision {
            to: JobState::Available,
            event: Event::Released,
            delay: None,
            error: Some("worker shut down before the job finished".to_owned()),
            refund_attempt: true,
        },
        Outcome::NotStarted(why) => Decision {
            to: JobState::Available,
            event: Event::Released,
            delay: None,
            error: Some(match why {
                Unstarted::Stopped => {
                    "worker stopped before this prefetched job started; the attempt is not counted"
                        .to_owned()
                }
                Unstarted::Waited(d) => format!(
                    "prefetched, then waited {} ms for a handler slot behind longer jobs; given \
                     back for any worker to start; the attempt is not counted",
                    d.as_millis()
                ),
            }),
            refund_attempt: true,
        },
    }
}

/// A running job whose lease expired: back to `available` while attempts are left, else
/// `discarded`; `cancelled` if an operator had asked to cancel it (`cancel_by`), since its
/// worker stopped before it could. `worker` is the holder that stopped renewing it, for the
/// recorded error.
pub(crate) fn rescue(
    attempt: u32,
    max_attempts: u32,
    worker: Option<&str>,
    cancel_by: Option<&str>,
) -> Decision {
    let error = format!(
        "lease expired: worker {} stopped renewing it during attempt {attempt}",
        worker.unwrap_or("?")
    );
    if let Some(by) = cancel_by {
        return bounded(Decision {
            to: JobState::Cancelled,
            event: Event::Rescued,
            delay: None,
            error: Some(format!("{error}; cancelled by {by}")),
            refund_attempt: false,
        });
    }
    let to = if attempt >= max_attempts {
        JobState::Discarded
    } else {
        JobState::Available
    };
    bounded(Decision {
        to,
        event: Event::Rescued,
        delay: None,
        error: Some(error),
        refund_attempt: false,
    })
}

/// A running job an operator asked to cancel whose attempt ended short of finishing (an
/// error to retry, a snooze, a release): it ends `cancelled` instead of running again.
pub(crate) fn cancel_requested(by: &str, error: Option<&str>) -> Decision {
    let why = match error {
        Some(e) => format!("cancelled by {by} while running (the attempt ended with: {e})"),
        None => format!("cancelled by {by} while running"),
    };
    bounded(Decision {
        to: JobState::Cancelled,
        event: Event::Cancelled,
        delay: None,
        error: Some(why),
        refund_attempt: false,
    })
}

/// The cancel-override rule, applied when a running job's attempt is written and an operator
/// asked (`by`, read under the row's lock) to cancel it: whatever the attempt decided short of
/// finishing (an error to retry, a snooze, a release), the job ends `cancelled` and never runs
/// again. `None`: the decision finishes the job and stands.
pub(crate) fn overridden_by_cancel(d: &Decision, by: &str) -> Option<Decision> {
    (!d.to.is_final()).then(|| cancel_requested(by, d.error.as_deref()))
}

/// The late-cancel rule: a cancel request seen as the handler returned (`requested`) wins over
/// whatever it returned, but its own cancel, since the operator was told the job would end
/// cancelled; `cancelled` is that outcome, naming who asked.
pub(crate) fn with_late_cancel(
    outcome: Outcome,
    requested: bool,
    cancelled: impl FnOnce() -> Outcome,
) -> Outcome {
    if requested && !matches!(outcome, Outcome::Cancel(_)) {
        cancelled()
    } else {
        outcome
    }
}

/// A job whose outcome could not be committed with the handler's writes (a failed completion
/// commit): the writes are gone, so the job goes back to `available` with its attempt refunded,
/// instead of waiting for a rescue that would count the attempt.
pub(crate) fn put_back(why: &str) -> Decision {
    bounded(Decision {
        to: JobState::Available,
        event: Event::Released,
        delay: None,
        error: Some(format!("completion failed and was rolled back: {why}")),
        refund_attempt: true,
    })
}

/// A job a claim may have taken without this worker knowing (the claim's COMMIT was sent but
/// its answer lost): its handler never started, so it goes back with its attempt refunded.
/// Written fenced by the claim's token, so it changes nothing if the claim did not commit.
pub(crate) fn unstarted(why: &str) -> Decision {
    bounded(Decision {
        to: JobState::Available,
        event: Event::Released,
        delay: None,
        error: Some(format!(
            "the claim's answer was lost ({why}); the handler never started, so the attempt is not counted"
        )),
        refund_attempt: true,
    })
}

/// Whether `from → to` is an edge of the state machine (`from = None`: insertion).
pub fn is_valid(from: Option<JobState>, to: JobState) -> bool {
    use JobState::*;
    match from {
        // A job with parents starts `blocked`, or `cancelled` when a parent already failed.
        None => matches!(to, Available | Scheduled | Blocked | Cancelled),
        // Released by its last parent's ending, or cancelled by a failed one, an operator or
        // fail_fast.
        Some(Blocked) => matches!(to, Available | Scheduled | Cancelled | Discarded),
        // A waiting job that never started may be replaced by a duplicate (debounce), which
        // can move its run-at either way.
        // A claim may hold it back: `waiting` (key at its limit), `scheduled` (key rate).
        // Any job not yet running may be cancelled or discarded by an operator (`jobq cancel`,
        // `jobq discard`); a failed or cancelled one retried (`jobq retry`).
        Some(Available) => matches!(
            to,
            Running | Available | Scheduled | Waiting | Cancelled | Discarded
        ),
        Some(Scheduled) => matches!(to, Available | Scheduled | Cancelled | Discarded),
        // Promoted when a slot of its key frees; or replaced by a duplicate (debounce).
        Some(Waiting) => matches!(to, Available | Scheduled | Cancelled | Discarded),
        Some(Retryable) => matches!(to, Available | Cancelled | Discarded),
        Some(Running) => matches!(
            to,
            Completed | Retryable | Discarded | Cancelled | Scheduled | Available
        ),
        // Retried: by `jobq retry`, or with its workflow (blocked again on parents that run
        // again).
        Some(Discarded | Cancelled) => matches!(to, Available | Blocked),
        Some(Completed) => false,
    }
}

#[cfg(test)]
mod tests;
