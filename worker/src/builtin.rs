//! Built-in job kinds, so jobq can be tried, benchmarked and deployment-tested without writing
//! Rust: `noop`, `sleep`, `fail`, `panic`, `record`.

use std::time::Duration;

use jobq_producer::Job;
use serde::{Deserialize, Serialize};

use crate::error::{codes, is_number, Result};
use crate::handler::{JobContext, JobError};
use crate::registry::Registry;
use crate::store;

/// `noop`: does nothing. Any JSON object payload is accepted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Noop {}
impl Job for Noop {
    const KIND: &'static str = "noop";
}

/// `sleep {"ms": N}`: sleeps N milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sleep {
    /// Milliseconds.
    pub ms: u64,
}
impl Job for Sleep {
    const KIND: &'static str = "sleep";
}

/// `fail {"times": N, "with": W?}`: its first N attempts end with outcome W, then it succeeds.
/// W is `error` (the default: retried with backoff), `discard`, `cancel` or `snooze` (100 ms).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fail {
    /// Attempts that fail.
    pub times: u32,
    /// How they fail.
    #[serde(default)]
    pub with: FailWith,
}

/// How a `fail` job's failing attempts end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailWith {
    /// An error: retried with backoff.
    #[default]
    Error,
    /// Discarded at once.
    Discard,
    /// Cancelled.
    Cancel,
    /// Snoozed for 100 ms (the attempt does not count).
    Snooze,
}
impl Job for Fail {
    const KIND: &'static str = "fail";
}

/// `panic`: panics (every attempt).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Panic {}
impl Job for Panic {
    const KIND: &'static str = "panic";
}

/// `record {"ms": N?, "key": S?}`: optionally sleeps, then inserts a row into
/// `jobq_demo_effects` (key defaults to the job id) in the transaction that completes the job,
/// so a completed job has exactly one effect row however often it ran.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds to sleep first.
    #[serde(default)]
    pub ms: Option<u64>,
    /// Effect key.
    #[serde(default)]
    pub key: Option<String>,
}
impl Job for Record {
    const KIND: &'static str = "record";
}

#[derive(Debug, thiserror::Error)]
#[error("failing on purpose: attempt {attempt} of the first {times}")]
struct PlannedFailure {
    attempt: u32,
    times: u32,
}

/// Creates the `record` kind's effects table, `jobq_demo_effects`, if it is missing. It is not
/// part of the jobq schema; the demo, the bench and tests call this, and the first `record` job
/// creates it too.
pub async fn setup(pool: &sqlx::MySqlPool) -> Result<()> {
    store::create_effects_table(pool).await?;
    Ok(())
}

/// Registers the built-in kinds.
pub fn register(r: &mut Registry) -> Result<()> {
    r.register::<Noop>(|_: Noop, _ctx: JobContext| async { Ok(()) })?;
    r.register::<Sleep>(|job: Sleep, _ctx: JobContext| async move {
        tokio::time::sleep(Duration::from_millis(job.ms)).await;
        Ok(())
    })?;
    r.register::<Fail>(|job: Fail, ctx: JobContext| async move {
        if ctx.attempt() > job.times {
            return Ok(());
        }
        let e = PlannedFailure {
            attempt: ctx.attempt(),
            times: job.times,
        };
        Err(match job.with {
            FailWith::Error => JobError::retry(e),
            FailWith::Discard => JobError::discard(e),
            FailWith::Cancel => JobError::cancel(e),
            FailWith::Snooze => JobError::snooze(Duration::from_millis(100)),
        })
    })?;
    r.register::<Panic>(|_: Panic, ctx: JobContext| async move {
        panic!(
            "panic kind: panicking on purpose (job {}, attempt {})",
            ctx.id(),
            ctx.attempt()
        );
    })?;
    r.register::<Record>(|job: Record, ctx: JobContext| async move {
        if let Some(ms) = job.ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let key = job.key.unwrap_or_else(|| ctx.id().to_string());
        let mut tx = ctx.tx().await?;
        let (id, attempt, worker) = (ctx.id().0, ctx.attempt(), ctx.worker_id());
        match store::insert_effect(&mut tx, id, attempt, worker, &key).await {
            // The effects table is not part of the schema; the first `record` job creates it
            // (on another connection: DDL commits implicitly) and inserts again. A failed
            // statement does not end the transaction.
            Err(e) if is_number(&e, codes::NO_SUCH_TABLE) => {
                store::create_effects_table(ctx.pool()).await?;
                store::insert_effect(&mut tx, id, attempt, worker, &key).await?;
            }
            other => other?,
        }
        Ok(())
    })?;
    Ok(())
}
