//! The console's pages (GETs). Each reads through the crate's public views (`inspect.rs`,
//! `acts.rs`, `jobq-lock`'s status) or `store/console.rs`, and hands the template plain,
//! already formatted values; the templates escape every one of them.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use jobq_producer::{JobId, JobState, QueueName};
use serde::Deserialize;

use super::{render, App, Ctx, Problem};
use crate::acts::{decide, Act};
use crate::store::{self, JobFilter, JobOrder};

/// Rows per page of the jobs list.
const PAGE_ROWS: u32 = 50;
/// With a queue, kind or error-text filter, a page reads at most this many jobs and then
/// offers to search on, so a page's cost stays bounded on any table: more along the primary
/// key (rows in order) than along a secondary index (a row lookup each).
const EXAMINE_BY_ID: u32 = 20_000;
const EXAMINE_BY_RUN_AT: u32 = 5_000;

/// What the layout (`base.html`) shows around every page.
pub(crate) struct Layout {
    pub(crate) title: String,
    pub(crate) nav: &'static str,
    pub(crate) csrf: String,
    pub(crate) read_only: bool,
    pub(crate) signed_in: bool,
    pub(crate) live: bool,
    pub(crate) flash: Option<String>,
    pub(crate) flash_kind: &'static str,
}

pub(crate) struct NavItem {
    pub(crate) href: &'static str,
    pub(crate) label: &'static str,
    pub(crate) on: bool,
}

impl Layout {
    fn new(app: &App, ctx: &Ctx, title: impl Into<String>, nav: &'static str) -> Self {
        Layout {
            title: title.into(),
            nav,
            csrf: ctx.csrf.clone(),
            read_only: app.read_only,
            signed_in: ctx.who.has_session(),
            live: true,
            flash: None,
            flash_kind: "",
        }
    }

    /// For error pages, which know nothing of the request.
    pub(crate) fn bare(title: &str) -> Self {
        Layout {
            title: title.to_owned(),
            nav: "",
            csrf: String::new(),
            read_only: false,
            signed_in: false,
            live: false,
            flash: None,
            flash_kind: "",
        }
    }

    fn flash(mut self, text: Option<String>, good: bool) -> Self {
        self.flash = text;
        self.flash_kind = if good { "good" } else { "bad" };
        self
    }

    pub(crate) fn nav_items(&self) -> Vec<NavItem> {
        [
            ("/", "Overview", "overview"),
            ("/jobs", "Jobs", "jobs"),
            ("/queues", "Queues", "queues"),
            ("/schedules", "Schedules", "schedules"),
            ("/locks", "Locks", "locks"),
            ("/workers", "Workers", "workers"),
        ]
        .into_iter()
        .map(|(href, label, key)| NavItem {
            href,
            label,
            on: key == self.nav,
        })
        .collect()
    }
}

/// `2026-12-02 17:55:01.123Z`: to the millisecond, UTC.
pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

/// A duration in seconds as a person reads it: `850ms`, `12.5s`, `7m 03s`, `2h 05m`, `3d 4h`.
pub(crate) fn span(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 1.0 {
        format!("{}ms", (s * 1000.0).round() as u64)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        let s = s as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else if s < 86_400.0 {
        let s = s as u64;
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    } else {
        let s = s as u64;
        format!("{}d {}h", s / 86_400, s % 86_400 / 3600)
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut.
fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn states() -> Vec<&'static str> {
    JobState::ALL.iter().map(|s| s.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Overview

pub(crate) struct QueueRow {
    pub(crate) name: String,
    pub(crate) counts: Vec<(&'static str, i64)>,
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

async fn worker_rows(app: &App) -> Result<Vec<WorkerRow>, Problem> {
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
                .map(|s| (s.as_str(), q.states.get(s.as_str()).copied().unwrap_or(0)))
                .collect(),
            per_minute: q.completed_last_minute,
            oldest: q.oldest_available_seconds.map(span).unwrap_or_default(),
            paused: q.paused_since.is_some(),
            name,
        })
        .collect();
    let page = Overview {
        page: Layout::new(&app, &ctx, "Overview", "overview"),
        chart: super::chart::svg(&minutes, reach),
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

/// The jobs page's query string: `/jobs?state=…&queue=…&kind=…&q=…&sort=id|run_at`, plus the
/// keyset cursor (`after`, `after_run_at`) and the outcome of a bulk act.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct JobsQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    // Numbers arrive as text and are parsed by hand: serde's flatten (the confirmation form
    // embeds this query) cannot read numbers from a form.
    #[serde(default)]
    after: String,
    #[serde(default)]
    after_run_at: String,
    /// Only jobs up to this id (set by a confirmation).
    #[serde(default)]
    upto: String,
    // The outcome of a bulk act, shown once.
    #[serde(default)]
    did: String,
    #[serde(default)]
    done: String,
    #[serde(default)]
    requested: String,
    #[serde(default)]
    skipped: String,
}

/// The filter as the form shows it, and as a query string for links.
pub(crate) struct FilterView {
    pub(crate) state: String,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) q: String,
    pub(crate) sort: String,
    pub(crate) after: Option<u64>,
    /// `state=…&queue=…&kind=…&q=…&sort=…`, URL-encoded, without the cursor.
    pub(crate) query: String,
}

fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// Checks the query and turns it into a store filter; a wrong value is a 400 that says what
/// is accepted.
pub(crate) fn parse_filter(q: &JobsQuery) -> Result<(JobFilter, FilterView), Problem> {
    let bad = |m: String| Problem::new(StatusCode::BAD_REQUEST, m);
    let state = match non_empty(&q.state) {
        Some(s) => Some(s.parse::<JobState>().map_err(|_| {
            bad(format!(
                "unknown state {s:?}; use one of {}",
                states().join(", ")
            ))
        })?),
        None => None,
    };
    let order = match q.sort.trim() {
        "" => JobOrder::Natural,
        "id" => JobOrder::Id,
        "run_at" => JobOrder::RunAt,
        other => return Err(bad(format!("unknown sort {other:?}; use id or run_at"))),
    };
    let id = |name: &str, v: &str| -> Result<Option<JobId>, Problem> {
        match non_empty(v) {
            Some(t) => t
                .parse::<u64>()
                .map(|n| Some(JobId(n)))
                .map_err(|_| bad(format!("{name} {t:?} is not a job id"))),
            None => Ok(None),
        }
    };
    let after = id("after", &q.after)?;
    let max_id = id("upto", &q.upto)?;
    let after_run_at = match non_empty(&q.after_run_at) {
        Some(t) => Some(
            DateTime::parse_from_rfc3339(&t)
                .map_err(|e| bad(format!("after_run_at {t:?} is not an RFC 3339 time: {e}")))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let filter = JobFilter {
        state,
        queue: non_empty(&q.queue),
        kind: non_empty(&q.kind),
        error: non_empty(&q.q),
        limit: PAGE_ROWS,
        after,
        after_run_at,
        order,
        max_id,
        examine: None,
    };
    let filter = JobFilter {
        examine: Some(if filter.by_run_at() {
            EXAMINE_BY_RUN_AT
        } else {
            EXAMINE_BY_ID
        }),
        ..filter
    };
    let sort = if filter.by_run_at() { "run_at" } else { "id" };
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("state", q.state.trim()),
        ("queue", q.queue.trim()),
        ("kind", q.kind.trim()),
        ("q", q.q.trim()),
    ] {
        if !v.is_empty() {
            pairs.append_pair(k, v);
        }
    }
    pairs.append_pair("sort", sort);
    let view = FilterView {
        state: q.state.trim().to_owned(),
        queue: q.queue.trim().to_owned(),
        kind: q.kind.trim().to_owned(),
        q: q.q.trim().to_owned(),
        sort: sort.to_owned(),
        after: after.map(|a| a.0),
        query: pairs.finish(),
    };
    Ok((filter, view))
}

pub(crate) struct JobRow {
    pub(crate) id: u64,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) state: &'static str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) run_at: String,
    pub(crate) error: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
pub(crate) struct Jobs {
    page: Layout,
    states: Vec<&'static str>,
    f: FilterView,
    bulk: Vec<(&'static str, &'static str)>,
    jobs: Vec<JobRow>,
    /// The cursor of the next page, as a query string.
    next: Option<String>,
    /// Set when the page stopped at its examine budget before filling up.
    searched: Option<String>,
}

/// The acts that make sense on a selection of jobs in `state`.
fn bulk_acts(state: Option<JobState>) -> Vec<(&'static str, &'static str)> {
    let Some(state) = state else {
        return Vec::new();
    };
    [
        (Act::Retry, "retry", "Retry all"),
        (Act::Cancel, "cancel", "Cancel all"),
        (Act::Discard, "discard", "Discard all"),
    ]
    .into_iter()
    .filter(|(act, _, _)| decide(*act, state).ok())
    .map(|(_, key, label)| (key, label))
    .collect()
}

pub(crate) async fn jobs(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<JobsQuery>,
) -> Result<Response, Problem> {
    let (filter, view) = parse_filter(&q)?;
    let crate::JobPage {
        jobs: rows,
        next,
        searched_out,
    } = crate::list_jobs_page(&app.pool, &filter).await?;
    let next = next.map(|(id, run_at)| {
        let mut p = url::form_urlencoded::Serializer::new(String::new());
        p.append_pair("after", &id.0.to_string());
        if filter.by_run_at() {
            p.append_pair(
                "after_run_at",
                &run_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            );
        }
        p.finish()
    });
    let searched = searched_out.then(|| {
        format!(
            "Searched about {} jobs for this filter and found {}; older jobs are not searched yet.",
            filter.examine.unwrap_or(0),
            rows.len()
        )
    });
    let n = |v: &str| v.parse::<u64>().unwrap_or(0);
    let flash = match q.did.as_str() {
        act @ ("retry" | "cancel" | "discard") => Some(format!(
            "{}: {} jobs done, {} cancel requests, {} skipped (changed meanwhile).",
            capitalised(act),
            n(&q.done),
            n(&q.requested),
            n(&q.skipped)
        )),
        _ => None,
    };
    let page = Jobs {
        page: Layout::new(&app, &ctx, "Jobs", "jobs").flash(flash, true),
        states: states(),
        bulk: bulk_acts(filter.state),
        f: view,
        jobs: rows
            .into_iter()
            .map(|j| JobRow {
                id: j.id.0,
                queue: j.queue,
                kind: j.kind,
                state: j.state.as_str(),
                attempt: j.attempt,
                max_attempts: j.max_attempts,
                run_at: time(j.run_at),
                error: clip(j.last_error.as_deref().unwrap_or(""), 160),
            })
            .collect(),
        next,
        searched,
    };
    Ok(render(&page))
}

/// Which act a path or form names.
pub(crate) fn act_named(name: &str) -> Result<Act, Problem> {
    match name {
        "retry" => Ok(Act::Retry),
        "cancel" => Ok(Act::Cancel),
        "discard" => Ok(Act::Discard),
        other => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("unknown act {other:?}; use retry, cancel or discard"),
        )),
    }
}

pub(crate) fn act_key(act: Act) -> &'static str {
    match act {
        Act::Retry => "retry",
        Act::Cancel => "cancel",
        Act::Discard => "discard",
    }
}

#[derive(Deserialize)]
pub(crate) struct ConfirmQuery {
    act: String,
    #[serde(flatten)]
    filter: JobsQuery,
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub(crate) struct Confirm {
    page: Layout,
    heading: String,
    question: String,
    button: String,
    act: &'static str,
    count: i64,
    fields: Vec<(&'static str, String)>,
    back: String,
}

/// `GET /jobs/act?act=retry&state=…`: how many jobs the act would touch, and the button that
/// does it.
pub(crate) async fn confirm(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<ConfirmQuery>,
) -> Result<Response, Problem> {
    let act = act_named(&q.act)?;
    let (filter, view) = parse_filter(&q.filter)?;
    let Some(state) = filter.state else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "choose a state first: acts on a selection apply to the jobs of one state",
        ));
    };
    // The act applies to these jobs and no later ones: the count shown is what it touches,
    // less any that change state meanwhile.
    let upto = store::newest_job(&app.pool).await?.unwrap_or(0);
    let filter = JobFilter {
        max_id: Some(JobId(upto)),
        ..filter
    };
    let count = crate::count_jobs(&app.pool, state, &filter).await?;
    let verb = act_key(act);
    let mut scope = String::new();
    for (label, v) in [
        ("queue", &view.queue),
        ("kind", &view.kind),
        ("error containing", &view.q),
    ] {
        if !v.is_empty() {
            scope.push_str(&format!(", {label} {v:?}"));
        }
    }
    let mut layout = Layout::new(&app, &ctx, "Confirm", "jobs");
    // A count is a read of the whole selection: not every 3 s.
    layout.live = false;
    let page = Confirm {
        page: layout,
        heading: format!("{} {state} jobs", capitalised(verb)),
        question: format!("This will {verb} {count} {state} jobs{scope}. Jobs that change state meanwhile are skipped."),
        button: format!("{} {count} jobs", capitalised(verb)),
        act: verb,
        count,
        fields: vec![
            ("state", view.state.clone()),
            ("queue", view.queue.clone()),
            ("kind", view.kind.clone()),
            ("q", view.q.clone()),
            ("upto", upto.to_string()),
        ],
        back: view.query,
    };
    Ok(render(&page))
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// One job

pub(crate) struct HistoryRow {
    pub(crate) at: String,
    pub(crate) event: &'static str,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    pub(crate) attempt: u32,
    pub(crate) worker: String,
    pub(crate) actor: String,
    pub(crate) error: String,
}

#[derive(Template)]
#[template(path = "job.html")]
pub(crate) struct JobPage {
    page: Layout,
    job: JobHead,
    acts: Vec<(&'static str, &'static str)>,
    fields: Vec<(&'static str, String)>,
    payload: String,
    result: Option<String>,
    last_error: Option<String>,
    history: Vec<HistoryRow>,
}

pub(crate) struct JobHead {
    pub(crate) id: u64,
    pub(crate) state: &'static str,
}

#[derive(Deserialize, Default)]
pub(crate) struct JobQuery {
    #[serde(default)]
    did: String,
    #[serde(default)]
    refused: String,
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

pub(crate) async fn job(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Result<Response, Problem> {
    let id: u64 = id.parse().map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a job id (a positive number)"),
        )
    })?;
    let (job, history) = match crate::job_with_history(&app.pool, JobId(id)).await {
        Ok(found) => found,
        Err(crate::Error::NoSuchJob(_)) => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("no job {id}: it never existed, or was pruned"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let flash = match (q.did.as_str(), q.refused.as_str()) {
        ("retry", _) => Some((format!("Job {id} is available again."), true)),
        ("discard", _) => Some((format!("Job {id} was discarded."), true)),
        ("cancel", _) if job.state == JobState::Running => Some((
            "Cancel requested: its worker stops it at its next heartbeat.".to_owned(),
            true,
        )),
        ("cancel", _) => Some((format!("Job {id} was cancelled."), true)),
        (_, r) if !r.is_empty() => act_named(r).ok().map(|act| {
            let why = match decide(act, job.state) {
                crate::Acted::Refused { why, .. } => why,
                _ => "its state changed meanwhile".to_owned(),
            };
            (format!("Could not {r} job {id}: {why}."), false)
        }),
        _ => None,
    };
    let (flash, good) = flash.map_or((None, true), |(t, g)| (Some(t), g));
    let acts = [
        (Act::Retry, "retry", "Retry"),
        (Act::Cancel, "cancel", "Cancel"),
        (Act::Discard, "discard", "Discard"),
    ]
    .into_iter()
    .filter(|(act, _, _)| decide(*act, job.state).ok())
    .map(|(_, k, l)| (k, l))
    .collect();
    let opt_time = |t: Option<DateTime<Utc>>| t.map(time).unwrap_or_default();
    let fields = vec![
        ("queue", job.queue.clone()),
        ("kind", job.kind.clone()),
        ("priority", job.priority.to_string()),
        (
            "attempt",
            format!("{} of {}", job.attempt, job.max_attempts),
        ),
        ("run at", time(job.run_at)),
        ("created", time(job.created_at)),
        ("last claimed", opt_time(job.attempted_at)),
        ("finished", opt_time(job.finalized_at)),
        ("worker", job.worker_id.clone().unwrap_or_default()),
        ("lease expires", opt_time(job.lease_expires_at)),
    ];
    let page = JobPage {
        page: Layout::new(&app, &ctx, format!("Job {id}"), "jobs").flash(flash, good),
        job: JobHead {
            id,
            state: job.state.as_str(),
        },
        acts,
        fields,
        payload: pretty(&job.payload),
        result: job.result.as_ref().map(pretty),
        last_error: job.last_error.clone(),
        history: history
            .into_iter()
            .map(|t| HistoryRow {
                at: time(t.at),
                event: t.event.as_str(),
                from: t.from.map(|s| s.as_str()).unwrap_or("—"),
                to: t.to.as_str(),
                attempt: t.attempt,
                worker: t.worker_id.unwrap_or_default(),
                actor: t.actor.unwrap_or_default(),
                error: t.error.unwrap_or_default(),
            })
            .collect(),
    };
    Ok(render(&page))
}

// ---------------------------------------------------------------------------------------
// Queues, schedules, locks, workers

pub(crate) struct QueueLine {
    pub(crate) name: String,
    pub(crate) available: i64,
    pub(crate) running: i64,
    pub(crate) waiting: i64,
    pub(crate) claim_mode: String,
    pub(crate) concurrency: u32,
    pub(crate) key_limit: u32,
    pub(crate) rate_limit: String,
    pub(crate) key_rate_limit: String,
    pub(crate) paused: bool,
    pub(crate) paused_note: String,
}

#[derive(Template)]
#[template(path = "queues.html")]
pub(crate) struct Queues {
    page: Layout,
    config_note: String,
    queues: Vec<QueueLine>,
}

#[derive(Deserialize, Default)]
pub(crate) struct NameFlash {
    #[serde(default)]
    did: String,
    #[serde(default)]
    name: String,
}

/// A flash for `?did=ACT&name=NAME` after a queue or schedule act, shown only for a name
/// `known` accepts (a valid queue name, a configured schedule): a crafted link cannot put
/// words of its own on the page.
fn name_flash(what: &str, q: &NameFlash, known: impl Fn(&str) -> bool) -> Option<String> {
    let verb = match q.did.as_str() {
        "pause" => "paused",
        "resume" => "resumed",
        "run" => "enqueued to run now",
        _ => return None,
    };
    known(&q.name).then(|| format!("{what} {} {verb}.", q.name))
}

pub(crate) async fn queues(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<NameFlash>,
) -> Result<Response, Problem> {
    let stats = crate::stats(&app.pool).await?;
    let mut names: Vec<String> = stats.queues.keys().cloned().collect();
    let configured = app.config.configured_queues().map(|q| q.to_string());
    for n in configured.chain(app.config.worker().queues.iter().cloned()) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.sort();
    let mut lines = Vec::new();
    for name in names {
        let Ok(qn) = QueueName::new(&name) else {
            continue;
        };
        let s = app.config.queue(&qn);
        let st = stats.queues.get(&name).cloned().unwrap_or_default();
        let count = |state: &str| st.states.get(state).copied().unwrap_or(0);
        let rate = |r: Option<jobq_config::Rate>| {
            r.map(|r| format!("{}/{}", r.max, humantime::format_duration(r.period)))
                .unwrap_or_default()
        };
        lines.push(QueueLine {
            available: count("available"),
            running: count("running"),
            waiting: count("waiting"),
            claim_mode: format!("{:?}", s.claim_mode),
            concurrency: s.concurrency,
            key_limit: s.key_limit,
            rate_limit: rate(s.rate_limit),
            key_rate_limit: rate(s.key_rate_limit),
            paused: st.paused_since.is_some(),
            paused_note: match (&st.paused_since, &st.paused_by) {
                (Some(since), Some(by)) => format!("since {since} by {by}"),
                (Some(since), None) => format!("since {since}"),
                _ => String::new(),
            },
            name,
        });
    }
    let page = Queues {
        page: Layout::new(&app, &ctx, "Queues", "queues")
            .flash(name_flash("Queue", &q, |n| QueueName::new(n).is_ok()), true),
        config_note: "each worker applies its own configuration".to_owned(),
        queues: lines,
    };
    Ok(render(&page))
}

pub(crate) struct ScheduleLine {
    pub(crate) name: String,
    pub(crate) cron: String,
    pub(crate) timezone: String,
    pub(crate) kind: String,
    pub(crate) queue: String,
    pub(crate) next: String,
    pub(crate) last: String,
    pub(crate) outcome: String,
    pub(crate) last_job: Option<u64>,
    pub(crate) last_job_state: String,
    pub(crate) paused: bool,
}

#[derive(Template)]
#[template(path = "schedules.html")]
pub(crate) struct Schedules {
    page: Layout,
    schedules: Vec<ScheduleLine>,
}

pub(crate) async fn schedules(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Query(q): Query<NameFlash>,
) -> Result<Response, Problem> {
    let list = crate::list_schedules(&app.pool, &app.config).await?;
    let page = Schedules {
        page: Layout::new(&app, &ctx, "Schedules", "schedules").flash(
            name_flash("Schedule", &q, |n| {
                app.config.schedules().iter().any(|s| s.name == n)
            }),
            true,
        ),
        schedules: list
            .into_iter()
            .map(|s| ScheduleLine {
                name: s.name,
                cron: s.cron,
                timezone: s.timezone,
                kind: s.kind,
                queue: s.queue,
                next: s.next_slot.map(time).unwrap_or_default(),
                last: s.last_slot.map(time).unwrap_or_default(),
                outcome: s.last_outcome.unwrap_or_default(),
                last_job: s.last_job.map(|j| j.0),
                last_job_state: s.last_job_state.unwrap_or_default(),
                paused: s.paused,
            })
            .collect(),
    };
    Ok(render(&page))
}

pub(crate) struct LockLine {
    pub(crate) name: String,
    pub(crate) slot: u32,
    pub(crate) state: &'static str,
    pub(crate) holder: String,
    pub(crate) token: String,
    pub(crate) since: String,
    pub(crate) held_for: String,
    pub(crate) expires_in: String,
}

#[derive(Template)]
#[template(path = "locks.html")]
pub(crate) struct Locks {
    page: Layout,
    locks: Vec<LockLine>,
}

pub(crate) async fn locks(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
) -> Result<Response, Problem> {
    let list = jobq_lock::status(&app.pool, None).await.map_err(|e| {
        tracing::warn!(error = %e, "web console: reading the locks failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the locks failed: {e}"),
        )
    })?;
    let page = Locks {
        page: Layout::new(&app, &ctx, "Locks", "locks"),
        locks: list
            .into_iter()
            .map(|l| LockLine {
                name: l.name,
                slot: l.slot,
                state: l.state.as_str(),
                holder: l.holder.unwrap_or_default(),
                token: l.token.map(|t| t.to_string()).unwrap_or_default(),
                since: l.acquired_at.unwrap_or_default(),
                held_for: l
                    .held_for
                    .map(|d| span(d.as_secs_f64()))
                    .unwrap_or_default(),
                expires_in: l
                    .expires_in
                    .map(|d| span(d.as_secs_f64()))
                    .unwrap_or_default(),
            })
            .collect(),
    };
    Ok(render(&page))
}

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

#[derive(Template)]
#[template(path = "login.html")]
pub(crate) struct Login {
    pub(crate) token_login: bool,
    pub(crate) next: String,
    pub(crate) failed: bool,
}

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: String,
}

pub(crate) async fn login(State(app): State<App>, Query(q): Query<LoginQuery>) -> Response {
    render(&Login {
        token_login: app.creds.token.is_some(),
        next: q.next,
        failed: false,
    })
}

#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage {
    pub(crate) page: Layout,
    pub(crate) status: u16,
    pub(crate) message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_a_person_would_say_them() {
        for (s, want) in [
            (0.0, "0ms"),
            (0.85, "850ms"),
            (12.46, "12.5s"),
            (423.0, "7m 03s"),
            (7_500.0, "2h 05m"),
            (3.0 * 86_400.0 + 4.0 * 3600.0, "3d 4h"),
            (-1.0, "0ms"),
        ] {
            assert_eq!(span(s), want, "{s}");
        }
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hi", 2), "hi");
    }

    #[test]
    fn filters_are_checked_and_echoed() {
        let q = |state: &str, sort: &str| JobsQuery {
            state: state.into(),
            sort: sort.into(),
            queue: " mail ".into(),
            q: "a&b".into(),
            ..Default::default()
        };
        let (f, v) = parse_filter(&q("discarded", "")).unwrap();
        assert_eq!(f.state, Some(JobState::Discarded));
        assert_eq!(f.queue.as_deref(), Some("mail"));
        assert!(f.by_run_at());
        assert_eq!(v.query, "state=discarded&queue=mail&q=a%26b&sort=run_at");
        let (f, v) = parse_filter(&q("", "")).unwrap();
        assert!(!f.by_run_at());
        assert_eq!(v.sort, "id");
        assert!(parse_filter(&q("done", "")).is_err());
        assert!(parse_filter(&q("", "name")).is_err());
        let (f, _) = parse_filter(&q("", "run_at")).unwrap();
        assert_eq!(f.order, JobOrder::RunAt);
    }

    #[test]
    fn bulk_acts_follow_the_state_table() {
        assert_eq!(bulk_acts(None), vec![]);
        let keys = |s| {
            bulk_acts(Some(s))
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(JobState::Discarded), vec!["retry"]);
        assert_eq!(keys(JobState::Completed), Vec::<&str>::new());
        assert_eq!(keys(JobState::Available), vec!["cancel", "discard"]);
        assert_eq!(keys(JobState::Running), vec!["cancel"]);
    }
}
