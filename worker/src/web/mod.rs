//! The web console: overview, jobs, one job's history, queues, schedules, locks and workers,
//! with the operator's acts (retry, cancel, discard, pause, resume, run now).
//!
//! Served by `jobq web`, or by any `jobq work` process with `web.listen` set, or embedded:
//! [`Console::router`] is a plain axum router. Pages are rendered on the server with askama
//! (which escapes every value) and work without JavaScript; `static/console.js` only adds live
//! refresh. Assets are compiled into the binary. Acts are POSTs carrying a CSRF token
//! (`auth.rs`), record who acted (`web`, `web:token` or `web:USER`) in the transition, and are
//! refused altogether with `web.read_only`.
//!
//! Files: `auth.rs` (who gets in, CSRF), `pages/` (the GET pages: overview, jobs, operations), `actions.rs` (the POSTs),
//! `chart.rs` (the SVG chart); the SQL is in `store/` like the rest of the crate's.

mod actions;
mod auth;
mod chart;
mod pages;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use jobq_config::Config;
use sqlx::MySqlPool;

use auth::{Credentials, Presented, Sessions, Who};

/// Where `jobq web` listens when `web.listen` is unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9188";

/// The console: a database pool, the configuration (for queue limits and schedules), and its
/// logins.
#[derive(Clone)]
pub struct Console {
    app: App,
}

#[derive(Clone)]
pub(crate) struct App(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) pool: MySqlPool,
    /// Pools for the configuration's other servers (`[queues.NAME] database_url`), opened on
    /// first use: a schedule is read and acted on where its queue lives.
    others: tokio::sync::Mutex<std::collections::HashMap<String, MySqlPool>>,
    pub(crate) config: Config,
    creds: Credentials,
    sessions: Sessions,
    pub(crate) read_only: bool,
    /// The `Host` names served without authentication besides the loopback ones (see
    /// `auth::host_allowed`).
    allowed_hosts: Vec<String>,
}

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Inner {
    /// The pool of server `url` (one of the configuration's servers): the console's own for
    /// `database_url`, else a small one opened on first use and kept. Connecting happens
    /// outside the lock, so a slow server does not hold up pages of the others.
    pub(crate) async fn pool_on(&self, url: &str) -> crate::Result<MySqlPool> {
        if url == self.config.database_url() {
            return Ok(self.pool.clone());
        }
        if let Some(p) = self.others.lock().await.get(url) {
            return Ok(p.clone());
        }
        let mut settings = crate::on_server(&self.config, url)?.settings().clone();
        // A console's reads and acts on that server: a few connections suffice.
        settings.database.max_connections = OTHER_SERVER_CONNECTIONS;
        let pool = crate::db::pool(&settings.validate()?).await?;
        let mut others = self.others.lock().await;
        // Another request may have connected meanwhile: keep one pool per server.
        Ok(others.entry(url.to_owned()).or_insert(pool).clone())
    }
}

/// Connections of a console's pool on another server.
const OTHER_SERVER_CONNECTIONS: u32 = 4;

impl Console {
    /// A console over `pool`, with `config.web`'s authentication and read-only setting.
    pub fn new(pool: MySqlPool, config: &Config) -> Self {
        let mut allowed_hosts = config.web().allowed_hosts.clone();
        if let Some(addr) = config.web().listen {
            allowed_hosts.push(addr.ip().to_string());
        }
        Console {
            app: App(Arc::new(Inner {
                pool,
                others: Default::default(),
                config: config.clone(),
                creds: Credentials::from_settings(config.web()),
                sessions: Sessions::default(),
                read_only: config.web().read_only,
                allowed_hosts,
            })),
        }
    }

    /// The console's routes, authentication and CSRF included.
    pub fn router(&self) -> Router {
        let app = self.app.clone();
        Router::new()
            .route("/", get(pages::overview))
            .route("/jobs", get(pages::jobs))
            .route(
                "/jobs/act",
                get(pages::confirm).post(actions::act_on_filter),
            )
            .route("/jobs/{id}", get(pages::job))
            .route("/jobs/{id}/{act}", post(actions::act_on_job))
            .route("/queues", get(pages::queues))
            .route("/queues/{name}/{act}", post(actions::queue))
            .route("/schedules", get(pages::schedules))
            .route("/schedules/{name}/{act}", post(actions::schedule))
            .route("/workflows", get(pages::workflows))
            .route("/workflows/{id}", get(pages::workflow))
            .route("/workflows/{id}/{act}", post(actions::act_on_workflow))
            .route("/locks", get(pages::locks))
            .route("/workers", get(pages::workers))
            .route("/login", get(pages::login).post(actions::login))
            .route("/logout", post(actions::logout))
            .route("/static/console.css", get(css))
            .route("/static/console.js", get(js))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(app.clone(), guard))
            .with_state(app)
    }

    /// Binds `addr` now (so a taken port fails the caller at once), then serves in the
    /// background until `stop` resolves. Logs a warning when the console is reachable beyond
    /// this host without authentication.
    pub async fn spawn(
        mut self,
        addr: SocketAddr,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        if let Some(inner) = Arc::get_mut(&mut self.app.0) {
            inner.allowed_hosts.push(addr.ip().to_string());
        }
        if !addr.ip().is_loopback() && !self.app.creds.required() {
            tracing::warn!(
                %addr,
                "the web console listens beyond loopback without authentication: set web.token \
                 or web.basic_auth, or keep it behind a login proxy (and list the name it \
                 forwards in web.allowed_hosts)"
            );
        }
        tracing::info!(%addr, read_only = self.app.read_only, "serving the web console");
        let router = self.router();
        Ok(tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
        }))
    }
}

/// What every page knows about the request: who made it and its CSRF token.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) who: Who,
    pub(crate) csrf: String,
}

/// Lets in only authenticated requests (the login page and static assets are public), refuses
/// acts in read-only mode, issues the CSRF cookie, and sets headers that keep pages out of
/// frames, caches and other origins' scripts.
async fn guard(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let public = path == "/login" || path.starts_with("/static/");
    let (bearer, basic) = auth::authorization(req.headers());
    let session =
        auth::cookie(req.headers(), auth::SESSION_COOKIE).is_some_and(|id| app.sessions.valid(id));
    let presented = Presented {
        bearer,
        basic: basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        session,
    };
    let who = auth::decide(&app.creds, &presented);
    let rebound = !app.creds.required() && !auth::host_allowed(req.headers(), &app.allowed_hosts);
    let https = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let mut response = match who {
        _ if rebound => problem(
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only its own host names without authentication: add the \
             name to web.allowed_hosts, or set web.token or web.basic_auth",
        ),
        None if !public => {
            let target = req
                .uri()
                .path_and_query()
                .map_or(path.clone(), |p| p.as_str().to_owned());
            unauthorized(&app, &target)
        }
        _ if req.method() == Method::POST && app.read_only && !public && path != "/logout" => {
            problem(
                StatusCode::FORBIDDEN,
                "the console is read-only (web.read_only = true): it shows, but does not act",
            )
        }
        who => {
            let existing = auth::cookie(req.headers(), auth::CSRF_COOKIE)
                .filter(|c| auth::well_formed(c))
                .map(str::to_owned);
            let csrf = existing.clone().unwrap_or_else(auth::random_token);
            req.extensions_mut().insert(Ctx {
                who: who.unwrap_or(Who::Anyone),
                csrf: csrf.clone(),
            });
            let mut response = next.run(req).await;
            if existing.is_none() {
                let cookie = format!(
                    "{}={csrf}; Path=/; HttpOnly; SameSite=Strict{}",
                    auth::CSRF_COOKIE,
                    if https { "; Secure" } else { "" }
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            response
        }
    };
    let h = response.headers_mut();
    for (k, v) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    if !path.starts_with("/static/") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// 401: the login form when a token is configured (it shows no data), and a basic-auth
/// challenge when basic auth is.
fn unauthorized(app: &App, path: &str) -> Response {
    let page = pages::Login {
        token_login: app.creds.token.is_some(),
        next: path.to_owned(),
        failed: false,
    };
    let mut response = (StatusCode::UNAUTHORIZED, render(&page)).into_response();
    if app.creds.basic.is_some() {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"jobq console\", charset=\"UTF-8\""),
        );
    }
    response
}

/// An error page: `status` and what was wrong, in words.
pub(crate) fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    let page = pages::ErrorPage {
        page: pages::Layout::bare(status.canonical_reason().unwrap_or("Error")),
        status: status.as_u16(),
        message: message.into(),
    };
    (status, render(&page)).into_response()
}

/// A failure a handler reports: a status and a message for the person reading the page.
#[derive(Debug)]
pub(crate) struct Problem(StatusCode, String);

impl Problem {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Problem(status, message.into())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        problem(self.0, self.1)
    }
}

impl From<crate::Error> for Problem {
    fn from(e: crate::Error) -> Self {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        tracing::warn!(error = %text, "web console: a read or act failed");
        Problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{text}; try again, and see the console's log if it persists"),
        )
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        crate::Error::from(e).into()
    }
}

/// A template as an HTML response; a render failure (a bug) becomes a plain 500.
pub(crate) fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "web console: a template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
                .into_response()
        }
    }
}

async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "no such page")
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../static/console.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../static/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}
