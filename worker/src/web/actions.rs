//! The console's acts (POSTs). Each takes a [`Posted`] body, whose CSRF token is checked
//! before the handler runs (`auth::csrf_ok`), acts through the crate's public operations with
//! the request's actor, and answers with a redirect to the page that shows the outcome (so
//! reloading never repeats an act).
//! Read-only mode and authentication are enforced before any of this runs (`guard`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use jobq_producer::{JobId, QueueName};
use serde::Deserialize;

use super::auth;
use super::pages::{act_key, act_named, parse_filter, JobsQuery, Login};
use super::{render, App, Ctx, Problem};

/// The one field every act's form carries.
#[derive(Deserialize, Default)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// A form body. Parsed by hand rather than by axum's `Form`, so a POST without a body or
/// with another content type is answered by the CSRF check (403, saying what to do) rather
/// than by a bare 415.
fn parse_form<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    serde_urlencoded::from_bytes(body).map_err(|e| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the form could not be read ({e}); submit it from the console's page"),
        )
    })
}

fn check_csrf(headers: &HeaderMap, token: &str) -> Result<(), Problem> {
    if auth::csrf_ok(headers, token) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "this form's CSRF token is missing or stale (or it came from another site): \
             reload the page and try again",
        ))
    }
}

/// A POST body whose CSRF token checked out: the extractor every act takes, so no handler
/// can forget the check. A missing body or another content type meets the same 403.
pub(crate) struct Posted(Bytes);

impl<S: Send + Sync> FromRequest<S> for Posted {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        })?;
        check_csrf(
            &headers,
            &parse_form::<CsrfForm>(&body).unwrap_or_default().csrf,
        )?;
        Ok(Posted(body))
    }
}

/// `/PAGE?did=ACT&name=NAME`: where a queue or schedule act sends the browser.
fn see_named(page: &str, act: &str, name: &str) -> Response {
    see(format!(
        "/{page}?did={act}&name={}",
        url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    ))
}

fn see(path: String) -> Response {
    Redirect::to(&path).into_response()
}

/// `POST /jobs/ID/retry|cancel|discard`.
pub(crate) async fn act_on_job(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path((id, act)): Path<(String, String)>,
    _checked: Posted,
) -> Result<Response, Problem> {
    let act = act_named(&act)?;
    let id: u64 = id
        .parse()
        .map_err(|_| Problem::new(StatusCode::NOT_FOUND, format!("{id:?} is not a job id")))?;
    let out = crate::act_on_jobs(&app.pool, act, &[JobId(id)], &ctx.who.actor()).await?;
    let key = act_key(act);
    match out.first().map(|(_, a)| a) {
        Some(crate::Acted::NotFound) | None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no job {id}: it never existed, or was pruned"),
        )),
        Some(a) if a.ok() => Ok(see(format!("/jobs/{id}?did={key}"))),
        Some(_) => Ok(see(format!("/jobs/{id}?refused={key}"))),
    }
}

/// `POST /workflows/ID/cancel|retry`: the act on the whole workflow, then back to its page
/// with what happened (a refusal says why in fixed words, never the request's).
pub(crate) async fn act_on_workflow(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path((id, act)): Path<(String, String)>,
    _checked: Posted,
) -> Result<Response, Problem> {
    let id: u64 = id.parse().map_err(|_| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a workflow id"),
        )
    })?;
    let flow = jobq_producer::WorkflowId(id);
    if crate::store::workflows::one(&app.pool, id).await?.is_none() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            format!("no workflow {id}"),
        ));
    }
    let actor = ctx.who.actor();
    let done = match act.as_str() {
        "cancel" => crate::cancel_workflow(&app.pool, flow, &actor).await,
        "retry" => crate::retry_workflow(&app.pool, flow, &actor).await,
        other => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("{other:?} is not an act on a workflow (cancel, retry)"),
            ))
        }
    };
    match done {
        Ok(_) => {
            tracing::info!(workflow = id, act, %actor, "web console: act on a workflow");
            Ok(see(format!("/workflows/{id}?did={act}")))
        }
        Err(crate::Error::Invalid(_)) => Ok(see(format!("/workflows/{id}?refused={act}"))),
        Err(e) => Err(e.into()),
    }
}

/// The confirmation form of an act on a selection.
#[derive(Deserialize)]
pub(crate) struct FilterActForm {
    act: String,
    #[serde(flatten)]
    filter: JobsQuery,
}

/// `POST /jobs/act`: the act confirmed on `GET /jobs/act`, applied to every matching job.
pub(crate) async fn act_on_filter(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Posted(body): Posted,
) -> Result<Response, Problem> {
    let form: FilterActForm = parse_form(&body)?;
    let act = act_named(&form.act)?;
    let (filter, view) = parse_filter(&form.filter)?;
    let Some(state) = filter.state else {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "an act on a selection needs a state",
        ));
    };
    let tally = crate::act_on_filter(&app.pool, act, state, &filter, &ctx.who.actor()).await?;
    tracing::info!(
        act = act_key(act),
        %state,
        done = tally.done,
        actor = %ctx.who.actor(),
        "web console: act on a selection"
    );
    Ok(see(format!(
        "/jobs?{}&did={}&done={}&requested={}&skipped={}",
        view.query,
        act_key(act),
        tally.done,
        tally.cancel_requested,
        tally.skipped
    )))
}

/// `POST /queues/NAME/pause|resume`.
pub(crate) async fn queue(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path((name, act)): Path<(String, String)>,
    _checked: Posted,
) -> Result<Response, Problem> {
    let q = QueueName::new(&name)
        .map_err(|e| Problem::new(StatusCode::NOT_FOUND, format!("no such queue: {e}")))?;
    match act.as_str() {
        "pause" => {
            crate::pause_queue(&app.pool, &q, &ctx.who.actor()).await?;
        }
        "resume" => {
            crate::resume_queue(&app.pool, &q).await?;
        }
        other => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("unknown queue act {other:?}; use pause or resume"),
            ))
        }
    }
    tracing::info!(queue = %q, act = %act, actor = %ctx.who.actor(), "web console: queue");
    Ok(see_named("queues", &act, &name))
}

/// `POST /schedules/NAME/pause|resume|run`.
pub(crate) async fn schedule(
    State(app): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path((name, act)): Path<(String, String)>,
    _checked: Posted,
) -> Result<Response, Problem> {
    let unknown = |e: crate::Error| match e {
        crate::Error::Invalid(m) => Problem::new(StatusCode::NOT_FOUND, m),
        e => e.into(),
    };
    // The schedule's state and its jobs live on its queue's server.
    let queue = app
        .config
        .schedules()
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.queue.to_string());
    let pool = match &queue {
        Some(q) => app.pool_on(app.config.database_of(q)).await?,
        None => app.pool.clone(),
    };
    match act.as_str() {
        "pause" => {
            crate::pause_schedule(&pool, &app.config, &name, &ctx.who.actor())
                .await
                .map_err(unknown)?;
        }
        "resume" => {
            crate::resume_schedule(&pool, &app.config, &name)
                .await
                .map_err(unknown)?;
        }
        "run" => {
            crate::run_schedule_now(&pool, &app.config, &name)
                .await
                .map_err(unknown)?;
        }
        other => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                format!("unknown schedule act {other:?}; use pause, resume or run"),
            ))
        }
    }
    tracing::info!(schedule = %name, act = %act, actor = %ctx.who.actor(), "web console: schedule");
    Ok(see_named("schedules", &act, &name))
}

#[derive(Deserialize, Default)]
pub(crate) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// `POST /login`: the token for a session cookie.
pub(crate) async fn login(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let form: LoginForm = parse_form(&body).unwrap_or_default();
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s == "cross-site");
    let right = app
        .creds
        .token
        .as_deref()
        .is_some_and(|t| auth::same(t, &form.token));
    if !right || cross_site {
        // Slows guessing down without holding anything but this request.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let page = Login {
            token_login: app.creds.token.is_some(),
            next: form.next,
            failed: true,
        };
        return (StatusCode::UNAUTHORIZED, render(&page)).into_response();
    }
    let session = app.sessions.open();
    // Only a path on this console: never an address elsewhere.
    let next = auth::safe_next(&form.next).unwrap_or("/").to_owned();
    let mut response = see(next);
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    // Lax: a console link opened from chat or mail arrives signed in; acts need the CSRF
    // token anyway.
    let cookie = format!(
        "{}={session}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        auth::SESSION_COOKIE,
        auth::SESSION_TTL.as_secs(),
        if https { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// `POST /logout`: ends the session.
pub(crate) async fn logout(
    State(app): State<App>,
    headers: HeaderMap,
    _checked: Posted,
) -> Result<Response, Problem> {
    if let Some(id) = auth::cookie(&headers, auth::SESSION_COOKIE) {
        app.sessions.close(id);
    }
    let mut response = see("/login".to_owned());
    response.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("jobq_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}
