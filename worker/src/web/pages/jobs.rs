//! The jobs list (filters, bounded pages, bulk acts), a job with its history, and the page that
//! confirms a bulk act.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use jobq_producer::{JobId, JobState};
use serde::Deserialize;

use crate::machine::acts::decide;
use crate::model::Act;
use crate::store::{self, JobFilter, JobOrder};
use crate::web::{render, App, Ctx, Problem};

use super::*;

/// Rows per page of the jobs list.
pub(super) const PAGE_ROWS: u32 = 50;
/// With a queue, kind or error-text filter, a page reads at most this many jobs and then
/// offers to search on, so a page's cost stays bounded on any table: more along the primary
/// key (rows in order) than along a secondary index (a row lookup each).
pub(super) const EXAMINE_BY_ID: u32 = 20_000;
pub(super) const EXAMINE_BY_RUN_AT: u32 = 5_000;

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

pub(super) fn non_empty(s: &str) -> Option<String> {
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
pub(super) fn bulk_acts(state: Option<JobState>) -> Vec<(&'static str, &'static str)> {
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

pub(super) fn capitalised(s: &str) -> String {
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
    /// `(percent, "42.5%", message, at)` of the job's last `ctx.progress`.
    progress: Option<(f64, String, String, String)>,
    /// The job's log lines: (at, attempt, line, truncated mark).
    log: Vec<(String, u32, String, bool)>,
    /// The log has more lines than the page shows (the first ones are shown).
    log_cut: bool,
}

/// The most log lines the job page shows (`jobq job ID` shows them all).
const LOG_LINES_SHOWN: u32 = 2000;

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

pub(super) fn pretty(v: &serde_json::Value) -> String {
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
    let progress = crate::job_progress(&app.pool, JobId(id))
        .await
        .map_err(crate::Error::from)?
        .map(|p| {
            (
                p.percent,
                format!("{}%", p.percent),
                p.message.unwrap_or_default(),
                time(p.at),
            )
        });
    let mut log = crate::job_logs(&app.pool, JobId(id), 0, LOG_LINES_SHOWN + 1)
        .await
        .map_err(crate::Error::from)?;
    let log_cut = log.len() > LOG_LINES_SHOWN as usize;
    log.truncate(LOG_LINES_SHOWN as usize);
    let page = JobPage {
        page: Layout::new(&app, &ctx, format!("Job {id}"), "jobs").flash(flash, good),
        progress,
        log: log
            .into_iter()
            .map(|l| (time(l.at), l.attempt, l.line, l.truncated))
            .collect(),
        log_cut,
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

#[cfg(test)]
mod tests {
    use super::*;
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
