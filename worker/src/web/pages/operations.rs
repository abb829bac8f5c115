//! Queues (state, depth, limits, pause and resume), schedules and locks.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use jobq_producer::QueueName;
use serde::Deserialize;

use crate::web::{render, App, Ctx, Problem};

use super::*;

pub(crate) struct QueueLine {
    pub(crate) name: String,
    /// Counts as shown: `~N` when estimated (over 10,000 jobs).
    pub(crate) available: String,
    pub(crate) running: String,
    pub(crate) waiting: String,
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
pub(super) fn name_flash(
    what: &str,
    q: &NameFlash,
    known: impl Fn(&str) -> bool,
) -> Option<String> {
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
        let count = |state: &str| st.count_text(state);
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
    // Each schedule as the server of its queue keeps it.
    let mut list = Vec::new();
    for url in app.config.servers() {
        let pool = app.pool_on(url).await?;
        list.extend(
            crate::list_schedules(&pool, &app.config)
                .await?
                .into_iter()
                .filter(|s| app.config.lives_on(&s.queue, url)),
        );
    }
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
