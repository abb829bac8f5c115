//! The web console without a browser: every page renders, stored text is escaped, and
//! authentication, CSRF and read-only mode hold. Requests go straight into the console's
//! router (`tower::ServiceExt::oneshot`); the database is real. The browser test is in
//! `slow/web.rs`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use jobq_config::{ClaimMode, Settings};
use jobq_worker::web::Console;
use jobq_worker::{JobFilter, JobOrder, JobState, NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;
use tower::ServiceExt;

use crate::common::*;

const TOKEN: &str = "0123456789abcdef0123";
const EVIL: &str = "<script>alert('x')</script>";

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the CSRF cookie this answer sets.
    fn csrf_cookie(&self) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("jobq_csrf="))
            .map(|c| c.split(';').next().unwrap().to_owned())
    }
}

async fn send(
    router: &Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let response = router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn get(router: &Router, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(router, Method::GET, path, headers, "").await
}

fn console(db: &MySqlPool, s: &Settings) -> Router {
    Console::new(db.clone(), &s.validate().unwrap()).router()
}

/// One job discarded at its first attempt with an error and a payload holding markup, run by
/// a real worker. Returns its id.
async fn discarded_job(db: &MySqlPool, s: &Settings) -> u64 {
    let id = Producer::new(db.clone())
        .enqueue(NewJob::json(
            "fail",
            json!({"times": 1, "with": "discard", "message": EVIL}),
        ))
        .await
        .unwrap();
    let w = start(pool(s).await, builtins(), s);
    wait_for(
        Duration::from_secs(20),
        "the job to be discarded",
        || async { state_of(db, id.0).await == "discarded" },
    )
    .await;
    w.stop().await;
    id.0
}

/// Every page answers 200 with its data; stored text (payloads, errors) renders as text.
#[sqlx::test(migrations = false)]
async fn pages_render_and_escape_stored_text(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let id = discarded_job(&db, &s).await;
    let router = console(&db, &s);
    for path in [
        "/",
        "/jobs",
        "/jobs?state=discarded&sort=run_at",
        "/jobs?sort=run_at",
        "/queues",
        "/schedules",
        "/locks",
        "/workers",
        "/static/console.css",
        "/static/console.js",
    ] {
        let a = get(&router, path, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert!(
            !a.body.contains("<script>alert"),
            "{path} let markup through"
        );
    }
    let page = get(&router, &format!("/jobs/{id}"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    // The payload, the last error and the history's error, each as escaped text.
    assert!(
        page.body.matches("&#60;script&#62;alert(").count() >= 3,
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!("jobq job {id}")));
    assert!(page.body.contains("running → discarded"));
    let overview = get(&router, "/", &[]).await.body;
    assert!(
        overview.contains(&format!("href=\"/jobs/{id}\"")),
        "recent failures list the job"
    );
    assert!(overview.contains("&#60;script&#62;"));
    let jobs = get(&router, "/jobs?state=discarded", &[]).await.body;
    assert!(jobs.contains(&format!("href=\"/jobs/{id}\"")));
    assert!(
        jobs.contains("id=\"bulk-retry\""),
        "a discarded selection can be retried"
    );
    // Bad input is a 4xx that says what is accepted.
    let bad = get(&router, "/jobs?state=finished", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.body.contains("use one of"), "{}", bad.body);
    assert_eq!(
        get(&router, "/jobs/99999", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&router, "/jobs/abc", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    // Without authentication only our own host names are served: a page elsewhere cannot
    // reach the console by rebinding its name to 127.0.0.1.
    for (host, status) in [
        ("attacker.example:9188", StatusCode::MISDIRECTED_REQUEST),
        ("127.0.0.1:9188", StatusCode::OK),
        ("localhost:9188", StatusCode::OK),
    ] {
        let a = get(&router, "/", &[("host", host)]).await;
        assert_eq!(a.status, status, "{host}");
        if status != StatusCode::OK {
            assert!(!a.body.contains("fail"), "no data for {host}");
        }
    }
    let mut listed = s.clone();
    listed.web.allowed_hosts = vec!["jobq.internal".into()];
    let a = get(&console(&db, &listed), "/", &[("host", "jobq.internal")]).await;
    assert_eq!(a.status, StatusCode::OK);
    // Pages are never framed, cached or scripted from elsewhere.
    let h = get(&router, "/", &[]).await.headers;
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
}

/// With auth on, a request without credentials gets 401 and no data, whatever it asks for;
/// a bearer token, basic auth, or a session from the login form get in.
#[sqlx::test(migrations = false)]
async fn auth_on_answers_strangers_401_without_data(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    let id = discarded_job(&db, &s).await;
    s.web.token = Some(TOKEN.into());
    s.web.basic_auth = Some("ops:s3cret".into());
    let router = console(&db, &s);
    let bearer = format!("Bearer {TOKEN}");
    // "ops:s3cret" and "ops:wrong", base64.
    let (good_basic, bad_basic) = ("Basic b3BzOnMzY3JldA==", "Basic b3BzOndyb25n");
    for path in [
        "/",
        "/jobs",
        &format!("/jobs/{id}"),
        "/queues",
        "/schedules",
        "/locks",
        "/workers",
        "/jobs/act?act=retry&state=discarded",
    ] {
        for auth in [None, Some("Bearer wrong-token-0123456"), Some(bad_basic)] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let a = get(&router, path, &headers).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            assert!(
                !a.body.contains("fail") && !a.body.contains("alert"),
                "{path} leaked data: {}",
                a.body
            );
            assert!(
                a.body.contains("name=\"token\""),
                "the login form is offered"
            );
            assert!(a.headers.contains_key(header::WWW_AUTHENTICATE));
        }
        for auth in [bearer.as_str(), good_basic] {
            let a = get(&router, path, &[("authorization", auth)]).await;
            assert_eq!(a.status, StatusCode::OK, "{path} with {auth}");
        }
    }
    // An act without credentials changes nothing.
    let a = send(
        &router,
        Method::POST,
        &format!("/jobs/{id}/retry"),
        &[("cookie", "jobq_csrf=x")],
        "csrf=x",
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(state_of(&db, id).await, "discarded");
    // The login form: a wrong token is refused; the right one gives a session cookie.
    let wrong = send(
        &router,
        Method::POST,
        "/login",
        &[],
        "token=nope&next=%2Fjobs",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ok = send(
        &router,
        Method::POST,
        "/login",
        &[],
        &format!("token={TOKEN}&next=%2Fjobs"),
    )
    .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.location(), "/jobs");
    let session = ok
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("jobq_session="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .expect("a session cookie");
    let cookie = format!("jobq_session={session}");
    let a = get(&router, "/jobs", &[("cookie", &cookie)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("Sign out"));
    // A login never redirects off the console, however the address is spelt.
    for next in [
        "%2F%5Cevil.example",
        "%2F%09%2Fevil.example",
        "%2F%2Fevil.example",
    ] {
        let off = send(
            &router,
            Method::POST,
            "/login",
            &[],
            &format!("token={TOKEN}&next={next}"),
        )
        .await;
        assert_eq!(off.location(), "/", "{next}");
    }
    let off = send(
        &router,
        Method::POST,
        "/login",
        &[],
        &format!("token={TOKEN}&next=https%3A%2F%2Fevil.example"),
    )
    .await;
    assert_eq!(off.location(), "/");
}

/// An act needs the CSRF cookie and the same value in the form; with them it acts and records
/// who did it.
#[sqlx::test(migrations = false)]
async fn acts_need_the_csrf_token_and_record_the_actor(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    let id = discarded_job(&db, &s).await;
    s.web.basic_auth = Some("ops:s3cret".into());
    let router = console(&db, &s);
    let auth = ("authorization", "Basic b3BzOnMzY3JldA==");
    let page = get(&router, &format!("/jobs/{id}"), &[auth]).await;
    let csrf = page
        .csrf_cookie()
        .expect("the first page sets the CSRF cookie");
    assert!(page
        .body
        .contains(&format!("name=\"csrf\" value=\"{csrf}\"")));
    let cookie = format!("jobq_csrf={csrf}");
    let path = format!("/jobs/{id}/retry");
    for (headers, body) in [
        (vec![auth], String::new()),
        (vec![auth], format!("csrf={csrf}")),
        (vec![auth, ("cookie", cookie.as_str())], String::new()),
        (
            vec![auth, ("cookie", cookie.as_str())],
            "csrf=not-it".to_owned(),
        ),
        (
            vec![
                auth,
                ("cookie", cookie.as_str()),
                ("origin", "https://evil.example"),
                ("host", "console.local"),
            ],
            format!("csrf={csrf}"),
        ),
    ] {
        let a = send(&router, Method::POST, &path, &headers, &body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{headers:?} {body}");
        assert!(a.body.contains("CSRF"), "{}", a.body);
        assert_eq!(state_of(&db, id).await, "discarded");
    }
    let body = format!("csrf={csrf}");
    let with_token = [auth, ("cookie", cookie.as_str())];
    let retry = || send(&router, Method::POST, &path, &with_token, &body);
    let a = retry().await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert_eq!(a.location(), format!("/jobs/{id}?did=retry"));
    assert_eq!(state_of(&db, id).await, "available");
    let actor: String = sqlx::query_scalar(
        "SELECT CAST(actor AS CHAR) FROM jobq_transitions WHERE job_id = ? ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(actor, "web:ops");
    // A second retry is refused with the reason on the page.
    let again = retry().await;
    assert_eq!(again.location(), format!("/jobs/{id}?refused=retry"));
    let shown = get(&router, again.location(), &[auth]).await.body;
    assert!(shown.contains("Could not retry"), "{shown}");
}

/// Read-only mode refuses every act, whatever the credentials and tokens, and offers none.
#[sqlx::test(migrations = false)]
async fn read_only_refuses_every_act(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    let id = discarded_job(&db, &s).await;
    let waiting = Producer::new(db.clone())
        .enqueue(NewJob::json("noop", json!({})).delay(Duration::from_secs(3600)))
        .await
        .unwrap()
        .0;
    s.web.read_only = true;
    s.schedules = vec![crate::schedules::every_second("nightly")];
    let router = console(&db, &s);
    let page = get(&router, &format!("/jobs/{id}"), &[]).await;
    assert!(!page.body.contains("act-retry"), "no act is offered");
    assert!(page.body.contains("read-only"));
    let csrf = page.csrf_cookie().unwrap();
    let cookie = format!("jobq_csrf={csrf}");
    let form = format!("csrf={csrf}");
    let form_bulk = format!("csrf={csrf}&act=retry&state=discarded");
    for (path, body) in [
        (format!("/jobs/{id}/retry"), &form),
        (format!("/jobs/{waiting}/cancel"), &form),
        (format!("/jobs/{waiting}/discard"), &form),
        ("/jobs/act".to_owned(), &form_bulk),
        ("/queues/default/pause".to_owned(), &form),
        ("/schedules/nightly/pause".to_owned(), &form),
        ("/schedules/nightly/run".to_owned(), &form),
    ] {
        let a = send(&router, Method::POST, &path, &[("cookie", &cookie)], body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert!(a.body.contains("read-only"), "{}", a.body);
    }
    assert_eq!(state_of(&db, id).await, "discarded");
    assert_eq!(state_of(&db, waiting).await, "scheduled");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_queues WHERE paused_at IS NOT NULL"
        )
        .await,
        0
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_jobs").await,
        2,
        "no schedule ran"
    );
}

/// An act on a selection shows the count first, then acts on exactly the matching jobs.
#[sqlx::test(migrations = false)]
async fn selection_acts_confirm_the_count_then_act(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let p = Producer::new(db.clone());
    let mut a_ids = Vec::new();
    for i in 0..7 {
        let queue = if i < 5 { "a" } else { "b" };
        let id = p
            .enqueue(
                NewJob::json("noop", json!({}))
                    .queue(queue)
                    .delay(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        if i < 5 {
            a_ids.push(id);
        }
    }
    let router = console(&db, &s);
    let confirm = get(
        &router,
        "/jobs/act?act=discard&state=scheduled&queue=a",
        &[],
    )
    .await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert!(
        confirm.body.contains("discard 5 scheduled jobs"),
        "{}",
        confirm.body
    );
    let csrf = confirm.csrf_cookie().unwrap();
    let upto = confirm
        .body
        .split("name=\"upto\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the confirmation bounds the act by id")
        .to_owned();
    // A job that arrives after the confirmation is not part of what was confirmed.
    let late = p
        .enqueue(
            NewJob::json("noop", json!({}))
                .queue("a")
                .delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let a = send(
        &router,
        Method::POST,
        "/jobs/act",
        &[("cookie", &format!("jobq_csrf={csrf}"))],
        &format!("csrf={csrf}&act=discard&state=scheduled&queue=a&kind=&q=&upto={upto}"),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(a.location().contains("done=5"), "{}", a.location());
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE queue = 'a' AND state = 'discarded'"
        )
        .await,
        5
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE queue = 'b' AND state = 'scheduled'"
        )
        .await,
        2
    );
    assert_eq!(
        state_of(&db, late.0).await,
        "scheduled",
        "the job enqueued after the confirmation was left alone"
    );
    let shown = get(&router, a.location(), &[]).await.body;
    assert!(shown.contains("5 jobs done"), "{shown}");
    // Without a state there is nothing to confirm.
    assert_eq!(
        get(&router, "/jobs/act?act=retry", &[]).await.status,
        StatusCode::BAD_REQUEST
    );
}

/// The orders the jobs page offers: by id, by run-at within a state, and by run-at across
/// states (merged per-state walks), each paging by keyset without repeats or gaps.
#[sqlx::test(migrations = false)]
async fn job_orders_page_without_repeats(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let p = Producer::new(db.clone());
    let mut all = Vec::new();
    for i in 0..9u64 {
        // Run-at order differs from id order: later ids run earlier.
        let job = NewJob::json("noop", json!({})).delay(Duration::from_secs(1000 - i * 100));
        let id = p.enqueue(job).await.unwrap();
        all.push(id);
    }
    jobq_worker::act_on_jobs(&db, jobq_worker::Act::Cancel, &all[..3], "test")
        .await
        .unwrap();
    for order in [JobOrder::Id, JobOrder::RunAt] {
        for state in [None, Some(JobState::Scheduled)] {
            let mut seen = Vec::new();
            let mut f = JobFilter {
                state,
                limit: 4,
                order,
                ..Default::default()
            };
            loop {
                let page = jobq_worker::list_jobs(&db, &f).await.unwrap();
                let Some(last) = page.last() else { break };
                f.after = Some(last.id);
                f.after_run_at = Some(last.run_at);
                seen.extend(page.iter().map(|j| (j.id, j.run_at)));
            }
            let want = if state.is_some() { 6 } else { 9 };
            assert_eq!(seen.len(), want, "{order:?} {state:?}");
            let mut sorted = seen.clone();
            match order {
                JobOrder::Id => sorted.sort_by_key(|j| std::cmp::Reverse(j.0)),
                _ => sorted.sort_by_key(|j| std::cmp::Reverse((j.1, j.0))),
            }
            assert_eq!(seen, sorted, "{order:?} {state:?}");
        }
    }
}

/// With an examine budget, a filtered page reads a bounded number of jobs and says where it
/// stopped; following `next` finds every match once, in order, in both orders.
#[sqlx::test(migrations = false)]
async fn filtered_pages_stop_at_their_budget_and_resume(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let p = Producer::new(db.clone());
    let mut rare = Vec::new();
    for i in 0..40u64 {
        let kind = if i % 13 == 0 { "rare" } else { "noop" };
        let job = NewJob::json(kind, json!({})).delay(Duration::from_secs(5000 - i * 100));
        let id = p.enqueue(job).await.unwrap();
        if kind == "rare" {
            rare.push(id);
        }
    }
    for (order, state) in [
        (JobOrder::Id, None),
        (JobOrder::Id, Some(JobState::Scheduled)),
        (JobOrder::RunAt, Some(JobState::Scheduled)),
        (JobOrder::RunAt, None),
    ] {
        let mut f = JobFilter {
            state,
            kind: Some("rare".into()),
            limit: 2,
            order,
            examine: Some(8),
            ..Default::default()
        };
        let mut found = Vec::new();
        let mut pages = 0;
        let mut short_pages = 0;
        loop {
            let page = jobq_worker::list_jobs_page(&db, &f).await.unwrap();
            pages += 1;
            assert!(page.jobs.len() <= 2);
            short_pages += usize::from(page.searched_out);
            found.extend(page.jobs.iter().map(|j| j.id));
            let Some((after, at)) = page.next else { break };
            f.after = Some(after);
            f.after_run_at = Some(at);
            assert!(pages < 100, "paging does not end");
        }
        let mut want = rare.clone();
        match order {
            JobOrder::Id => want.sort_by_key(|id| std::cmp::Reverse(*id)),
            // Later ids run earlier: run-at order is id order.
            _ => want.sort(),
        }
        assert_eq!(found, want, "{order:?} {state:?}");
        assert!(
            short_pages > 0,
            "{order:?} {state:?}: the budget never cut a page short"
        );
    }
}

/// A schedule whose queue lives on another server (`[queues.NAME] database_url`; here a second
/// database, which counts as another server) is listed with that server's state and paused,
/// resumed and run there, never on the console's own server.
#[sqlx::test(migrations = false)]
async fn schedule_acts_go_to_the_schedules_server(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let near_url = url_of(&db).await;
    let name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&db)
        .await
        .unwrap();
    let far_db = format!("far_{}", &name[name.len().saturating_sub(40)..]);
    let far_url = format!("{}/{far_db}", &near_url[..near_url.rfind('/').unwrap()]);
    jobq_worker::migrate(&far_url).await.unwrap();
    let far = MySqlPool::connect(&far_url).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    let mut sched = crate::schedules::every_second("faraway");
    sched.queue = Some("far".into());
    s.schedules = vec![sched];
    s.queues.insert(
        "far".into(),
        jobq_config::QueueOverrides {
            database_url: Some(far_url.clone()),
            ..Default::default()
        },
    );
    let router = console(&db, &s);
    let page = get(&router, "/schedules", &[]).await;
    assert!(page.body.contains("faraway"), "{}", page.body);
    let csrf = page.csrf_cookie().unwrap();
    let cookie = format!("jobq_csrf={csrf}");
    let headers = [("cookie", cookie.as_str())];
    let form = format!("csrf={csrf}");
    let act = |what: &'static str| {
        let (router, headers, form) = (router.clone(), headers, form.clone());
        async move {
            let path = format!("/schedules/faraway/{what}");
            let a = send(&router, Method::POST, &path, &headers, &form).await;
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{what}: {}", a.body);
        }
    };
    let paused = |pool: MySqlPool| async move {
        count(
            &pool,
            "SELECT COUNT(*) FROM jobq_schedules WHERE name = 'faraway' AND paused_at IS NOT NULL",
        )
        .await
    };
    act("pause").await;
    assert_eq!(
        paused(far.clone()).await,
        1,
        "paused on the schedule's server"
    );
    assert_eq!(
        paused(db.clone()).await,
        0,
        "nothing written on the console's own server"
    );
    assert!(
        get(&router, "/schedules", &[])
            .await
            .body
            .contains("badge warn\">paused"),
        "the page reads the state where it is kept"
    );
    act("resume").await;
    assert_eq!(paused(far.clone()).await, 0);
    act("run").await;
    assert_eq!(
        count(&far, "SELECT COUNT(*) FROM jobq_jobs WHERE queue = 'far'").await,
        1,
        "run now enqueues on the schedule's server"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
    far.close().await;
    sqlx::query(&format!("DROP DATABASE `{far_db}`"))
        .execute(&db)
        .await
        .unwrap();
}

/// The workflows list and a workflow's page: counts from its counters, the graph drawn with
/// one linked node per job coloured by state and one arrow per edge, names escaped; the
/// retry and cancel buttons act (CSRF-checked) and come back with what happened.
#[sqlx::test(migrations = false)]
async fn workflow_pages_draw_the_graph_and_act(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let flow = jobq_worker::Workflow::new(EVIL)
        .job(
            "a",
            NewJob::json("fail", json!({"times": 1})).max_attempts(1),
        )
        .job_after("b", NewJob::json("noop", json!({})), &["a"])
        .job_after(EVIL, NewJob::json("noop", json!({})), &["a", "b"]);
    let wf = Producer::new(db.clone())
        .enqueue_workflow(flow)
        .await
        .unwrap();
    let w = start(pool(&s).await, builtins(), &s);
    wait_for(Duration::from_secs(20), "the workflow to fail", || async {
        state_of(&db, wf.jobs[EVIL].0).await == "cancelled"
    })
    .await;
    w.stop().await;
    let router = console(&db, &s);
    let list = get(&router, "/workflows", &[]).await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(!list.body.contains(EVIL), "the name is escaped");
    assert!(
        list.body
            .contains(&format!("href=\"/workflows/{}\"", wf.id))
            && list.body.contains("failed"),
        "{}",
        list.body
    );
    let path = format!("/workflows/{}", wf.id);
    let page = get(&router, &path, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(EVIL), "job names are escaped");
    for job in wf.jobs.values() {
        assert!(
            page.body
                .contains(&format!("<a href=\"/jobs/{job}\" class=\"node\"")),
            "a linked node per job: {}",
            page.body
        );
    }
    assert_eq!(page.body.matches("<line ").count(), 3, "one arrow per edge");
    assert!(page.body.contains("data-state=\"discarded\""));
    assert!(page.body.contains("Retry failed jobs") && !page.body.contains("Cancel workflow"));
    // Retry through the button.
    let csrf = page.csrf_cookie().expect("a CSRF cookie");
    let cookie = format!("jobq_csrf={csrf}");
    let retry = send(
        &router,
        Method::POST,
        &format!("{path}/retry"),
        &[("cookie", cookie.as_str())],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(retry.status, StatusCode::SEE_OTHER, "{}", retry.body);
    assert_eq!(retry.location(), format!("{path}?did=retry"));
    assert_eq!(state_of(&db, wf.jobs["a"].0).await, "available");
    assert_eq!(state_of(&db, wf.jobs["b"].0).await, "blocked");
    let shown = get(&router, retry.location(), &[]).await.body;
    assert!(
        shown.contains("runs again") && shown.contains("Cancel workflow"),
        "{shown}"
    );
    // Cancel it now; a second cancel is refused with fixed words.
    let cancel_path = format!("{path}/cancel");
    let body = format!("csrf={csrf}");
    let headers = [("cookie", cookie.as_str())];
    let cancel = || send(&router, Method::POST, &cancel_path, &headers, &body);
    assert_eq!(cancel().await.location(), format!("{path}?did=cancel"));
    assert_eq!(state_of(&db, wf.jobs["b"].0).await, "cancelled");
    let again = cancel().await;
    assert_eq!(again.location(), format!("{path}?refused=cancel"));
    assert!(get(&router, again.location(), &[])
        .await
        .body
        .contains("was not cancelled: it has already ended"));
    assert_eq!(
        get(&router, "/workflows/999999", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}
