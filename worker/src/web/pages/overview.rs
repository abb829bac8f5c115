//! The overview (queues, throughput, recent failures, workers) and the workers page.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use jobq_producer::JobState;

use crate::store;
use crate::web::{render, App, Ctx, Problem};

use super::*;

pub(crate) struct QueueRow {
    pub(crate) name: String,
    /// (state, jobs, whether the number is an estimate).
    pub(crate) counts: Vec<(&'static str, i64, bool)>,
    pub(crate) per_minute: i64,
    pub(crate) oldest: String,
    pub(crate) paused: bool,
}

pub(crate) struct WorkerRow {
    pub(crate) id: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) queues: String,
    pub(crate) running: i64,
    pub(crate) started: String,
    pub(crate) heartbeat: String,
    pub(crate) stale: bool,
}

pub(crate) struct FailureRow {
    pub(crate) job: u64,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) attempt: u32,
    pub(crate) event: String,
    pub(crate) at: String,
    pub(crate) error: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub(crate) struct Overview {
    page: Layout,
    chart: String,
    reach: u32,
    hour_completed: i64,
    hour_failed: i64,
    states: Vec<&'static str>,
    queues: Vec<QueueRow>,
    workers: Vec<WorkerRow>,
    failures: Vec<FailureRow>,
}

pub(super) async fn worker_rows(app: &App) -> Result<Vec<WorkerRow>, Problem> {
    // A worker whose heartbeat is older than its lease is presumed gone (its jobs are being
    // rescued); the row stays until maintenance prunes it.
    let stale_after = app.config.worker().lease_ttl.as_secs_f64();
    Ok(crate::workers(&app.pool)
        .await?
        .into_iter()
        .map(|w| WorkerRow {
            stale: w.heartbeat_age_seconds > stale_after,
            id: w.id,
            host: w.host,
            pid: w.pid,
            queues: w.queues.join(", "),
            running: w.running,
            started: time(w.started_at),
            heartbeat: format!("{} ago", span(w.heartbeat_age_seconds)),
        })
        .collect())
}

pub(crate) async fn overview(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
) -> Result<Response, Problem> {
    // Four independent reads, side by side on the pool.
    let (stats, hour, failures, workers) = tokio::join!(
        crate::stats(&app.pool),
        store::last_hour(&app.pool),
        store::recent_failures(&app.pool, 10),
        worker_rows(&app),
    );
    let (stats, (minutes, reach), failures) = (stats?, hour?, failures?);
    let queues = stats
        .queues
        .into_iter()
        .map(|(name, q)| QueueRow {
            counts: JobState::ALL
                .iter()
                .map(|s| {
                    let n = q.states.get(s.as_str()).copied().unwrap_or(0);
                    (s.as_str(), n, q.estimated.contains(s.as_str()))
                })
                .collect(),
            per_minute: q.completed_last_minute,
            oldest: q.oldest_available_seconds.map(span).unwrap_or_default(),
            paused: q.paused_since.is_some(),
            name,
        })
        .collect();
    let page = Overview {
        page: Layout::new(&app, &ctx, "Overview", "overview"),
        chart: super::super::chart::svg(&minutes, reach),
        reach,
        hour_completed: minutes.iter().map(|m| m.completed).sum(),
        hour_failed: minutes.iter().map(|m| m.failed).sum(),
        states: states(),
        queues,
        workers: workers?,
        failures: failures
            .into_iter()
            .map(|f| FailureRow {
                job: f.job.0,
                queue: f.queue,
                kind: f.kind,
                attempt: f.attempt,
                event: f.event,
                at: time(f.at),
                error: clip(f.error.as_deref().unwrap_or(""), 300),
            })
            .collect(),
    };
    Ok(render(&page))
}

// ---------------------------------------------------------------------------------------
// Jobs

#[derive(Template)]
#[template(path = "workers.html")]
pub(crate) struct Workers {
    page: Layout,
    workers: Vec<WorkerRow>,
}

pub(crate) async fn workers(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
) -> Result<Response, Problem> {
    let page = Workers {
        page: Layout::new(&app, &ctx, "Workers", "workers"),
        workers: worker_rows(&app).await?,
    };
    Ok(render(&page))
}

// ---------------------------------------------------------------------------------------
// Login and errors
