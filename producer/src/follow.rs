//! A job's progress and log lines as a producer reads them ([`Progress`], [`LogLine`]), and
//! [`Producer::follow`](crate::Producer::follow): waiting for a job while showing them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

use crate::error::{Error, Result};
use crate::job::JobId;
use crate::producer::JobEnd;
use crate::store;

/// How far a job got, as its handler last said (`ctx.progress`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Progress {
    /// The attempt that said it.
    pub attempt: u32,
    /// 0 to 100.
    pub percent: f64,
    /// What it is doing, if it said.
    pub message: Option<String>,
    /// When it was stored (UTC, database clock).
    pub at: DateTime<Utc>,
}

/// One line of a job's log (`ctx.log`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LogLine {
    /// Its position: lines of a job are in `id` order.
    pub id: u64,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// When the handler wrote it (UTC, the worker's clock).
    pub at: DateTime<Utc>,
    /// The text.
    pub line: String,
    /// The attempt's log passed its size cap here: this line says so, and the attempt's later
    /// lines were not stored.
    pub truncated: bool,
}

/// What [`Producer::follow`](crate::Producer::follow) reports while it waits.
#[derive(Clone, Debug, PartialEq)]
pub enum Followed {
    /// The job's progress changed.
    Progress(Progress),
    /// The job logged a line.
    Log(LogLine),
}

/// Job `id`'s latest progress (`ctx.progress`), if it reported any.
pub async fn job_progress(pool: &MySqlPool, id: JobId) -> Result<Option<Progress>> {
    store::progress_of(pool, id).await
}

/// Up to `limit` of job `id`'s log lines (`ctx.log`) after line `after` (0: from its first
/// line), in order; pass the last line's `id` as `after` for the next page.
pub async fn job_logs(pool: &MySqlPool, id: JobId, after: u64, limit: u32) -> Result<Vec<LogLine>> {
    store::logs_after(pool, id, after, limit).await
}

/// How often `follow` reads the job while it runs.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// The most log lines one read of `follow` takes.
const LOG_PAGE: u32 = 1000;

/// See [`Producer::follow`](crate::Producer::follow).
pub(crate) async fn follow(
    pool: &MySqlPool,
    id: JobId,
    timeout: Duration,
    seen: &mut (dyn FnMut(Followed) + Send),
) -> Result<Option<JobEnd>> {
    let written = crate::notify::watch(id.0);
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut last_line, mut last_progress) = (0u64, None::<Progress>);
    loop {
        // The end first: lines and progress read after it are complete.
        let end = store::job_end(pool, id)
            .await?
            .ok_or(Error::NoSuchJob(id))?;
        loop {
            let lines = store::logs_after(pool, id, last_line, LOG_PAGE).await?;
            let full = lines.len() as u32 == LOG_PAGE;
            for l in lines {
                last_line = l.id;
                seen(Followed::Log(l));
            }
            if !full {
                break;
            }
        }
        let progress = store::progress_of(pool, id).await?;
        if progress.is_some() && progress != last_progress {
            seen(Followed::Progress(progress.clone().expect("is some")));
            last_progress = progress;
        }
        if end.state.is_final() {
            return Ok(Some(end));
        }
        if !crate::notify::pause_until(deadline, FOLLOW_INTERVAL, &written).await {
            return Ok(None);
        }
    }
}
