//! What handlers see and return: the [`Handler`] trait, [`JobContext`] (the job's identity, its
//! completion transaction, its cancellation) and [`JobError`] (the outcome a failure asks for).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobq_producer::{JobId, JobState, KindName, QueueName};
use jobq_sqlkit::OwnedTx;
use sqlx::MySqlPool;
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::ids::WorkerId;

/// A boxed error kept as the source of a handler outcome.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler returns when a job did not simply succeed.
///
/// Any `std::error::Error` converts into [`JobError::Retry`], so `?` retries with the configured
/// exponential backoff. The other variants are explicit decisions. The error's text (with its
/// source chain) is stored in the job's history and `last_error`.
#[derive(Debug)]
#[non_exhaustive]
pub enum JobError {
    /// Failed; run again after the backoff (`retryable`), or `discarded` once attempts are used up.
    Retry(BoxError),
    /// Failed; run again after exactly this delay (still bounded by max attempts).
    RetryAfter(BoxError, Duration),
    /// Failed for good: `discarded` now, whatever attempts remain.
    Discard(BoxError),
    /// Not a failure: run again after this delay without using up an attempt (`scheduled`).
    Snooze(Duration),
    /// Stop for good: `cancelled`.
    Cancel(BoxError),
}

impl JobError {
    /// [`JobError::Retry`].
    pub fn retry(e: impl Into<BoxError>) -> Self {
        JobError::Retry(e.into())
    }
    /// [`JobError::RetryAfter`].
    pub fn retry_after(e: impl Into<BoxError>, delay: Duration) -> Self {
        JobError::RetryAfter(e.into(), delay)
    }
    /// [`JobError::Discard`].
    pub fn discard(e: impl Into<BoxError>) -> Self {
        JobError::Discard(e.into())
    }
    /// [`JobError::Snooze`].
    pub fn snooze(delay: Duration) -> Self {
        JobError::Snooze(delay)
    }
    /// [`JobError::Cancel`].
    pub fn cancel(e: impl Into<BoxError>) -> Self {
        JobError::Cancel(e.into())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError::Retry(Box::new(e))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry(e)
            | JobError::RetryAfter(e, _)
            | JobError::Discard(e)
            | JobError::Cancel(e) => write_chain(f, e.as_ref()),
            JobError::Snooze(d) => write!(f, "snoozed for {}", humantime::format_duration(*d)),
        }
    }
}

/// `error: cause: cause`, the way the chain is stored.
pub(crate) fn write_chain(
    f: &mut impl fmt::Write,
    e: &(dyn std::error::Error + 'static),
) -> fmt::Result {
    write!(f, "{e}")?;
    let mut src = e.source();
    while let Some(s) = src {
        write!(f, ": {s}")?;
        src = s.source();
    }
    Ok(())
}

/// The completion transaction, borrowed from the job's context by [`JobContext::tx`]: a
/// [`jobq_sqlkit::OwnedTx`], which derefs to the `MySqlConnection` it runs on; pass `&mut **tx`
/// to queries. jobq ends it (COMMIT with the completion, or ROLLBACK); should the attempt be cut
/// off before that, its connection is closed rather than returned to the pool, so the handler's
/// locks never outlive the attempt.
pub type JobTx = OwnedMappedMutexGuard<Option<OwnedTx>, OwnedTx>;

pub(crate) type TxSlot = Arc<Mutex<Option<OwnedTx>>>;

/// What a handler knows about the job it runs, and its way to the database.
///
/// [`JobContext::tx`] opens (once, lazily) the transaction in which jobq will also mark the job
/// `completed`: the handler's writes and the completion commit together, exactly once, or not at
/// all (a failed handler's transaction is rolled back).
#[derive(Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) queue: QueueName,
    pub(crate) kind: KindName,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) worker_id: WorkerId,
    pub(crate) pool: MySqlPool,
    pub(crate) tx: TxSlot,
    /// Set (under the slot's lock) once the attempt's outcome is being written: `tx()` refuses
    /// to begin a transaction nobody would end.
    pub(crate) tx_closed: Arc<AtomicBool>,
    pub(crate) cancel: CancellationToken,
    /// The result `set_result` stored, as JSON text.
    pub(crate) result: ResultSlot,
    /// The claim's fencing token.
    pub(crate) token: crate::model::Token,
    /// Work the attempt left behind that must end before its outcome is written (and so
    /// before the job can run again): a command handler's program still stopping.
    pub(crate) lingering: Lingering,
    /// The attempt's log lines and progress.
    pub(crate) journal: crate::journal::Journal,
}

/// See [`JobContext::lingering`]: the tasks still stopping what an attempt left, and a token
/// the runtime fires when they must stop at once (the lease is lost, or a shutdown release
/// cannot wait for a grace).
#[derive(Clone, Debug, Default)]
pub(crate) struct Lingering {
    pub(crate) tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    pub(crate) hurry: CancellationToken,
}

impl Lingering {
    /// Adds a task the attempt's outcome waits for.
    pub(crate) fn push(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
    }

    /// The tasks added so far (the caller awaits them).
    pub(crate) fn take(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A job this one runs after, as [`JobContext::parents`] read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    /// The parent's id.
    pub id: JobId,
    /// Its name in its workflow, or its id as text when it belongs to none.
    pub name: String,
    /// How it ended (`completed`, `discarded`, `cancelled`); `None` while it has not.
    pub state: Option<JobState>,
    /// What its handler stored with its success (`ctx.set_result`).
    pub result: Option<serde_json::Value>,
    /// Its last error, if any.
    pub error: Option<String>,
}

/// Where a handler's result waits until the attempt's outcome is written.
pub(crate) type ResultSlot = std::sync::Arc<std::sync::Mutex<Option<String>>>;

/// The largest result a job may store, in bytes of JSON text.
pub const MAX_RESULT_BYTES: usize = 64 * 1024;

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("kind", &self.kind)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Who runs an attempt, for [`JobContext::new`].
pub(crate) struct Runs<'a> {
    pub(crate) worker: &'a WorkerId,
    pub(crate) pool: &'a MySqlPool,
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) journal: crate::journal::Journal,
}

impl JobContext {
    /// The context of attempt `attempt` of job `id`, claimed with `token`.
    pub(crate) fn new(
        id: JobId,
        queue: &QueueName,
        kind: &KindName,
        (attempt, max_attempts): (u32, u32),
        token: crate::model::Token,
        runs: Runs<'_>,
    ) -> JobContext {
        JobContext {
            id,
            queue: queue.clone(),
            kind: kind.clone(),
            attempt,
            max_attempts,
            worker_id: runs.worker.clone(),
            pool: runs.pool.clone(),
            tx: Default::default(),
            tx_closed: Default::default(),
            cancel: runs.cancel.clone(),
            result: Default::default(),
            token,
            lingering: Default::default(),
            journal: runs.journal,
        }
    }

    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// The queue the job was claimed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }
    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }
    /// This attempt's number, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// Attempts allowed before the job is discarded.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
    /// The id of the worker process running the job.
    pub fn worker_id(&self) -> &str {
        self.worker_id.as_str()
    }
    /// The worker's pool, for reads and for writes that must not wait for completion.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The completion transaction, begun on first use (with a savepoint that marks it as the
    /// job's). The job completes in it only if it is still that transaction at the end: if the
    /// server ended it early (DDL's implicit commit, a deadlock's rollback), the attempt fails
    /// with a reason instead. Use it as `&mut **tx`:
    ///
    /// ```no_run
    /// # async fn handle(ctx: jobq_worker::JobContext) -> Result<(), sqlx::Error> {
    /// let mut tx = ctx.tx().await?;
    /// sqlx::query("INSERT INTO orders_sent (order_id) VALUES (?)").bind(7).execute(&mut **tx).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn tx(&self) -> Result<JobTx, sqlx::Error> {
        let mut slot = self.tx.clone().lock_owned().await;
        if self.tx_closed.load(Ordering::SeqCst) {
            return Err(sqlx::Error::Protocol(
                "this attempt has ended: ctx.tx() cannot begin its transaction any more \
                 (a task the handler spawned outlived it)"
                    .into(),
            ));
        }
        if slot.is_none() {
            let mut tx = crate::store::begin(&self.pool).await?;
            crate::store::mark_tx(&mut tx).await?;
            *slot = Some(tx);
        }
        Ok(OwnedMutexGuard::map(slot, |s| {
            s.as_mut().expect("transaction was just begun")
        }))
    }

    /// The jobs this job runs after ([`jobq_producer::NewJob::after`], or its parents in a
    /// [`jobq_producer::Workflow`]), read now in one query: each one's name in its workflow
    /// (the id as text for a parent that belongs to none), how it ended, and its result or
    /// last error.
    /// Under `on_parent_failure = ignore` this is how a job learns which parents failed. A
    /// parent pruned by retention since keeps its state here, its result and error gone.
    pub async fn parents(&self) -> Result<Vec<Parent>, sqlx::Error> {
        let rows = crate::store::parents_of(&self.pool, self.id.0).await?;
        Ok(rows
            .into_iter()
            .map(|r| Parent {
                id: JobId(r.id),
                name: r.name.unwrap_or_else(|| r.id.to_string()),
                state: r.state.and_then(|s| s.parse().ok()),
                result: r
                    .result
                    .map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))),
                error: r.error,
            })
            .collect())
    }

    /// The result of the parent named `name` (its workflow name, or its id as text), decoded
    /// as `T`; `Ok(None)` when that parent stored none. An unknown name, or a result that does
    /// not decode as `T`, fails the attempt with the reason (retried: a handler's bug is fixed
    /// by a deploy).
    pub async fn parent_result<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, JobError> {
        let parents = self.parents().await.map_err(JobError::retry)?;
        let Some(p) = parents.into_iter().find(|p| p.name == name) else {
            return Err(JobError::retry(format!(
                "job {} has no parent named {name:?}",
                self.id
            )));
        };
        p.result
            .map(|v| {
                serde_json::from_value(v).map_err(|e| {
                    JobError::retry(format!(
                        "the result of parent {name:?} does not decode: {e}"
                    ))
                })
            })
            .transpose()
    }

    /// Adds a line to this job's log, stored with the attempt: shown by `jobq job ID`, on the
    /// console's job page and by `jobq enqueue --wait --follow`, deleted with the job by
    /// retention. The worker process's writer stores them (with every attempt's, in
    /// multi-row statements) at least once a second, and before the attempt's outcome; an
    /// attempt stores at most [`crate::MAX_LOG_BYTES`] (each line at
    /// most [`crate::MAX_LOG_LINE_BYTES`], cut if longer), then a `truncated` mark, and drops
    /// its later lines. Never fails and never waits: a line that cannot be stored is dropped
    /// with a warning in the worker's log.
    pub fn log(&self, line: impl fmt::Display) {
        self.journal.log(line.to_string());
    }

    /// Says how far the job got: `percent` (0 to 100; outside is clamped) and what it is
    /// doing. Stored on the job while this attempt holds its claim (a stale attempt's report
    /// is ignored), at most once a second while it runs (the latest report wins; the last one
    /// is written before the outcome), and kept after the job ends. Shown by `jobq job ID`, live on the
    /// console and followed by `jobq enqueue --wait --follow` and `Producer::follow`.
    pub fn progress(&self, percent: f64, message: impl Into<String>) {
        let message = message.into();
        self.journal
            .progress(percent, (!message.is_empty()).then_some(message));
    }

    /// This attempt's fencing token, as 32 hex digits: fresh for every claim, so a write
    /// elsewhere guarded by it (`… WHERE fence = ?`) is refused once the job was claimed again.
    pub fn fencing_token(&self) -> String {
        self.token.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Stores the job's result: written with its completion if the attempt succeeds (the last
    /// call wins), shown by `jobq job ID`, returned by `Producer::wait_for` and `jobq enqueue
    /// --wait`. At most [`MAX_RESULT_BYTES`] of JSON, nested at most 31 levels (what every
    /// supported server stores): another is an error that discards the job (retrying would
    /// produce it again; written anyway, the server would refuse the completion and every
    /// completion batched with it), so use `ctx.set_result(&v)?`.
    pub fn set_result<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        let text = result_text(value)?;
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
        Ok(())
    }

    /// Resolves when the runtime abandons this attempt. The handler's own future is dropped at
    /// that moment; this is for tasks the handler spawned, so they can stop too.
    ///
    /// It fires on every path where the runtime gives up on the attempt: the lease was lost
    /// or could not be extended in time, `job_timeout` passed, the handler panicked, or a
    /// shutdown released the job.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

/// A result as the JSON text written with the completion, or why it cannot be stored.
fn result_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, JobError> {
    let text = serde_json::to_string(value).map_err(|e| {
        JobError::discard(format!("the job's result does not serialise to JSON: {e}"))
    })?;
    if text.len() > MAX_RESULT_BYTES {
        return Err(JobError::discard(format!(
            "the job's result is {} bytes, over the limit of {MAX_RESULT_BYTES}; store large \
             results elsewhere and return a reference",
            text.len()
        )));
    }
    jobq_producer::check_json(&text, jobq_producer::PORTABLE_MAX_DEPTH)
        .map_err(|e| JobError::discard(format!("the job's result cannot be stored: {e}")))?;
    Ok(text)
}

/// A job handler for payload type `J`.
///
/// Implemented for every `Fn(J, JobContext) -> impl Future<Output = Result<(), JobError>>`, so a
/// closure or an `async fn` works as well as a struct that holds its own dependencies.
pub trait Handler<J>: Send + Sync + 'static {
    /// Runs one attempt of a job.
    fn handle(&self, job: J, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

impl<J, F, Fut> Handler<J> for F
where
    F: Fn(J, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn handle(&self, job: J, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send {
        self(job, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result the server would refuse (nested 32 levels: MariaDB's JSON_VALID says no) is
    /// refused when the handler sets it, discarding that job with the reason, instead of
    /// failing the completion write and every completion batched with it.
    #[test]
    fn results_the_server_would_refuse_discard_the_job() {
        fn nested(depth: usize) -> serde_json::Value {
            let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            serde_json::from_str(&text).unwrap()
        }
        assert!(result_text(&nested(31)).is_ok());
        match result_text(&nested(32)) {
            Err(JobError::Discard(e)) => {
                let e = e.to_string();
                assert!(
                    e.contains("cannot be stored") && e.contains("nested deeper"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let big = "x".repeat(MAX_RESULT_BYTES);
        assert!(matches!(result_text(&big), Err(JobError::Discard(_))));
    }
}
