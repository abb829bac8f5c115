//! The console's pages (GETs), one file per area: `overview.rs` (the overview and the workers),
//! `jobs.rs` (the jobs list, a job, confirming a bulk act), `operations.rs` (queues, schedules,
//! locks), `workflows.rs` (workflows and one workflow's graph); here, the layout around every page, the login and error pages, and the formatting
//! they share. Each page reads through the crate's public views (`inspect.rs`, `acts.rs`,
//! `jobq-lock`'s status) or `store/console.rs`, and hands the template plain, already
//! formatted values; the templates escape every one of them.

mod jobs;
mod operations;
mod overview;
mod workflows;

pub(crate) use jobs::*;
pub(crate) use operations::*;
pub(crate) use overview::*;
pub(crate) use workflows::*;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use jobq_producer::JobState;
use serde::Deserialize;

use super::{render, App, Ctx};

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
            ("/workflows", "Workflows", "workflows"),
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
pub(super) fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

pub(super) fn states() -> Vec<&'static str> {
    JobState::ALL.iter().map(|s| s.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Overview

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
}
