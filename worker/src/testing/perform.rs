//! [`perform_job`] and [`Perform`]: one attempt of a job through its real handler (the
//! registry's decoding, the handler, panics and `job_timeout` caught), and what the runtime
//! would decide of it ([`Performed`]), without a job row or a claim. Also the attempt runner
//! [`Drain`](super::Drain) shares.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use jobq_producer::{Job, JobId, JobState, KindName, QueueName};
use jobq_sqlkit::OwnedTx;
use serde_json::Value;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::handler::JobContext;
use crate::ids::WorkerId;
use crate::machine::attempt::{self, Backoff};
use crate::model::{Decision, Fence, Token};
use crate::registry::Registry;
use crate::runtime::{outcome_of, panic_message};
use crate::Config;

/// What the handler did, as [`Performed::outcome`] says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Returned `Ok`.
    Completed,
    /// Returned an error to retry (`?`, [`crate::JobError::Retry`] or `RetryAfter`).
    Failed,
    /// Panicked.
    Panicked,
    /// Ran past its `job_timeout`.
    TimedOut,
    /// Its payload does not decode into the handler's type.
    Undecodable,
    /// Asked to be discarded ([`crate::JobError::Discard`]).
    Discarded,
    /// Asked to run again later ([`crate::JobError::Snooze`]).
    Snoozed,
    /// Cancelled itself ([`crate::JobError::Cancel`]).
    Cancelled,
    /// No handler is registered for the job's kind.
    NoHandler,
}

/// One attempt's outcome and what the runtime decides of it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Performed {
    /// What the handler did.
    pub outcome: Outcome,
    /// The state the job goes to: `completed`, `retryable` (attempts left), `discarded`,
    /// `scheduled` (snoozed) or `cancelled`.
    pub state: JobState,
    /// When it would run again, from now: the backoff (without jitter:
    /// `backoff_base × 2^(attempt-1)`, capped at `backoff_max`), a `RetryAfter`'s or a
    /// snooze's delay.
    pub delay: Option<Duration>,
    /// The error stored with it, as `jobq job ID` would show it.
    pub error: Option<String>,
    /// What `ctx.set_result` stored (a completion only).
    pub result: Option<Value>,
    /// The lines the handler logged (`ctx.log`), capped as a worker caps them; a drain
    /// stores them with the job instead (empty here).
    pub logs: Vec<String>,
    /// The handler's last `ctx.progress` (percent, message); a drain stores it instead.
    pub progress: Option<(f64, Option<String>)>,
}

impl Performed {
    /// Whether the handler succeeded.
    pub fn is_completed(&self) -> bool {
        self.outcome == Outcome::Completed
    }
}

/// One attempt of a job, run through its registered handler by [`Perform::run`]. Defaults:
/// attempt 1 of the producer's default max attempts, the kind's default queue, the default
/// configuration's `job_timeout` and backoff.
#[derive(Clone, Debug)]
pub struct Perform {
    kind: String,
    payload: String,
    queue: String,
    attempt: u32,
    max_attempts: u32,
    config: Option<Config>,
}

impl Perform {
    /// `job`, as its handler would receive it.
    pub fn new<J: Job>(job: &J) -> Result<Perform> {
        let payload = serde_json::to_string(job)
            .map_err(|e| Error::Invalid(format!("the job does not serialise to JSON: {e}")))?;
        Ok(Perform::raw(J::KIND, payload).queue(J::QUEUE))
    }

    /// A job of `kind` with a JSON payload.
    pub fn json(kind: impl Into<String>, payload: Value) -> Perform {
        Perform::raw(kind, payload.to_string())
    }

    /// A job of `kind` with the payload as text, as a producer in another language might have
    /// written it (it need not decode: that is an outcome too).
    pub fn raw(kind: impl Into<String>, payload: impl Into<String>) -> Perform {
        Perform {
            kind: kind.into(),
            payload: payload.into(),
            queue: "default".to_owned(),
            attempt: 1,
            max_attempts: jobq_producer::ProducerOptions::default().default_max_attempts,
            config: None,
        }
    }

    /// The queue the job runs from (`ctx.queue()`, and the `[queues.NAME]` policy).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// This attempt's number (1-based): with [`Perform::max_attempts`], whether a failure
    /// retries or discards, and the backoff.
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt.max(1);
        self
    }

    /// Attempts allowed.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Takes `job_timeout` and backoff from `config` (its `[queues]` and `[kinds]` sections
    /// included) instead of the defaults.
    pub fn config(mut self, config: &Config) -> Self {
        self.config = Some(config.clone());
        self
    }

    /// Runs the attempt. The handler's `ctx.tx()` is committed if it succeeds (its writes
    /// are then in the database, as a worker's completion would leave them), rolled back
    /// otherwise. `ctx.id()` is 0: there is no job row.
    pub async fn run(self, pool: &MySqlPool, registry: &Registry) -> Result<Performed> {
        let config = match self.config {
            Some(c) => c,
            None => default_config()?,
        };
        let (queue, kind) = names(&self.queue, &self.kind)?;
        let job = Attempt {
            id: 0,
            queue,
            kind,
            payload: self.payload,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            token: rand::random(),
            worker: WorkerId::generate(),
            trace: None,
        };
        let mut ran = run(pool, registry, &config, &job, None).await;
        let decision = ran.decide(&job, &config);
        if let Some(tx) = ran.tx.take() {
            if decision.to == JobState::Completed {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
        }
        Ok(ran.performed(&decision))
    }
}

/// [`Perform::new`]`(job)?.run(pool, registry)`: attempt 1 of `job` through its handler.
pub async fn perform_job<J: Job>(
    pool: &MySqlPool,
    registry: &Registry,
    job: &J,
) -> Result<Performed> {
    Perform::new(job)?.run(pool, registry).await
}

/// The default configuration (no file, no environment): the kit's policies when a test gives
/// none.
pub(crate) fn default_config() -> Result<Config> {
    Ok(jobq_config::Settings::default().validate()?)
}

/// A queue and kind name, checked like a producer checks them.
pub(crate) fn names(queue: &str, kind: &str) -> Result<(QueueName, KindName)> {
    Ok((
        QueueName::new(queue).map_err(Error::Producer)?,
        KindName::new(kind).map_err(Error::Producer)?,
    ))
}

/// One attempt to run.
pub(crate) struct Attempt {
    pub(crate) id: u64,
    pub(crate) queue: QueueName,
    pub(crate) kind: KindName,
    pub(crate) payload: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) token: Token,
    pub(crate) worker: WorkerId,
    /// The trace context stored with the job, which its span continues.
    pub(crate) trace: Option<(String, Option<String>)>,
}

/// How an attempt ran.
pub(crate) struct Ran {
    pub(crate) outcome: attempt::Outcome,
    /// The handler's transaction, if it opened one (the caller ends it).
    pub(crate) tx: Option<OwnedTx>,
    /// `ctx.set_result`'s JSON text, for a success.
    pub(crate) result: Option<String>,
    /// `ctx.log`'s lines (kept for `perform_job` only; a drain stores them).
    pub(crate) logs: Vec<String>,
    /// `ctx.progress`'s last report (kept for `perform_job` only).
    pub(crate) progress: Option<(f64, Option<String>)>,
    /// The registry has no handler for the job's kind.
    pub(crate) no_handler: bool,
}

impl Ran {
    /// What the runtime writes for this attempt (backoff without jitter).
    pub(crate) fn decide(&self, job: &Attempt, config: &Config) -> Decision {
        let policy = config.run_policy(job.queue.as_str(), job.kind.as_str());
        attempt::decide(
            &self.outcome,
            job.attempt,
            job.max_attempts,
            Backoff {
                base: policy.backoff_base,
                max: policy.backoff_max,
            },
            1.0,
        )
    }

    /// The outcome as the kit reports it.
    pub(crate) fn performed(&self, d: &Decision) -> Performed {
        use attempt::Outcome as O;
        let outcome = match &self.outcome {
            O::Success => Outcome::Completed,
            O::Error { .. } if self.no_handler => Outcome::NoHandler,
            O::Error { .. } => Outcome::Failed,
            O::Panic(_) => Outcome::Panicked,
            O::Timeout(_) => Outcome::TimedOut,
            O::Undecodable(_) => Outcome::Undecodable,
            O::Discard(_) => Outcome::Discarded,
            O::Snooze(_) => Outcome::Snoozed,
            O::Cancel(_) => Outcome::Cancelled,
            // Not produced here: nothing shuts the kit's attempts down.
            O::Released | O::NotStarted(_) => Outcome::Failed,
        };
        Performed {
            outcome,
            state: d.to,
            delay: d.delay,
            error: d.error.clone(),
            result: self
                .result
                .as_ref()
                .map(|t| serde_json::from_str(t).unwrap_or(Value::String(t.clone()))),
            logs: self.logs.clone(),
            progress: self.progress.clone(),
        }
    }
}

/// Runs `job` through its handler: decoding, the handler, a panic or `job_timeout` turned
/// into an outcome; what a command handler left running is stopped before this returns. Its
/// log lines and progress go to `writer`, or are kept in memory ([`Ran::logs`]) without one.
pub(crate) async fn run(
    pool: &MySqlPool,
    registry: &Registry,
    config: &Config,
    job: &Attempt,
    writer: Option<&crate::journal::Writer>,
) -> Ran {
    let policy = config.run_policy(job.queue.as_str(), job.kind.as_str());
    let cancel = CancellationToken::new();
    let journal = match writer {
        None => crate::journal::Journal::in_memory(),
        Some(w) => crate::journal::Journal::new(
            w,
            Fence {
                id: job.id,
                token: job.token,
            },
            job.attempt,
        ),
    };
    let ctx = JobContext::new(
        JobId(job.id),
        &job.queue,
        &job.kind,
        (job.attempt, job.max_attempts),
        job.token,
        crate::handler::Runs {
            worker: &job.worker,
            pool,
            cancel: &cancel,
            journal,
        },
    );
    let journal = ctx.journal.clone();
    let (slot, closed, result, lingering) = (
        ctx.tx.clone(),
        ctx.tx_closed.clone(),
        ctx.result.clone(),
        ctx.lingering.clone(),
    );
    let started = Instant::now();
    let handler = registry.get(&job.kind);
    let no_handler = handler.is_none();
    let outcome = match handler {
        None => attempt::Outcome::Error {
            message: format!(
                "no handler registered for kind {:?}; the registry has {}",
                job.kind.as_str(),
                registry.kinds().join(", ")
            ),
            retry_after: None,
        },
        Some(handler) => match handler.start(&job.payload, ctx) {
            Err(e) => attempt::Outcome::Undecodable(e.to_string()),
            Ok(fut) => {
                // The span a worker runs the attempt in, continuing the job's trace.
                let span = crate::trace::job_span(
                    job.id,
                    &job.kind,
                    job.queue.as_str(),
                    job.attempt,
                    job.worker.as_str(),
                    job.trace.as_ref(),
                );
                let caught =
                    AssertUnwindSafe(tracing::Instrument::instrument(fut, span)).catch_unwind();
                let ran = match policy.job_timeout {
                    Some(t) => tokio::time::timeout(t, caught).await.ok(),
                    None => Some(caught.await),
                };
                match ran {
                    None => attempt::Outcome::Timeout(policy.job_timeout.unwrap_or_default()),
                    Some(Err(panic)) => attempt::Outcome::Panic(panic_message(panic.as_ref())),
                    Some(Ok(Ok(()))) => attempt::Outcome::Success,
                    Some(Ok(Err(e))) => outcome_of(e),
                }
            }
        },
    };
    tracing::debug!(job = job.id, kind = %job.kind, elapsed = ?started.elapsed(), "test kit ran an attempt");
    if outcome != attempt::Outcome::Success {
        // The handler's future is gone or failed: tell what it spawned, and stop what it left.
        cancel.cancel();
        lingering.hurry.cancel();
    }
    futures::future::join_all(lingering.take()).await;
    journal.close(crate::journal::LAST_FLUSH_BOUND).await;
    let (lines, progress) = journal.kept();
    let tx = {
        let mut slot = slot.lock().await;
        closed.store(true, std::sync::atomic::Ordering::SeqCst);
        slot.take()
    };
    let result = match outcome {
        attempt::Outcome::Success => result.lock().unwrap_or_else(|p| p.into_inner()).take(),
        _ => None,
    };
    Ran {
        outcome,
        tx,
        result,
        logs: lines.into_iter().map(|l| l.text).collect(),
        progress: progress.map(|p| (p.percent, p.message)),
        no_handler,
    }
}
