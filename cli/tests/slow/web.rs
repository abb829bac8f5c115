//! The web console end to end in headless Chromium, served by a real `jobq work` process
//! (`web.listen`) with a token: sign in through the form, read the overview, filter to the
//! discarded jobs, open one and read its history, retry it and watch it complete (by the
//! page's live refresh), pause a queue and see claims stop, cancel a running job. Each page is
//! written as a screenshot to `target/tmp/web-screenshots/`.

use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::browser::{browser, screenshot, screenshot_dir, start_driver};
use crate::common::*;
use crate::procs::WorkerProc;

const TOKEN: &str = "browser-test-token-0123";

async fn text(c: &Client, css: &str) -> String {
    let start = Instant::now();
    loop {
        let found = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match found.text().await {
            Ok(t) => return t,
            Err(e)
                if start.elapsed() < Duration::from_secs(10) && e.to_string().contains("stale") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reading {css}: {e}"),
        }
    }
}

/// Clicks the element `at` finds. The pages refresh themselves, so an element found just
/// before a refresh can be stale by the time it is clicked: find it again then.
async fn click(c: &Client, at: Locator<'_>) {
    let start = Instant::now();
    loop {
        let found = c.find(at).await.unwrap_or_else(|e| panic!("{at:?}: {e}"));
        match found.click().await {
            Ok(_) => return,
            Err(e)
                if start.elapsed() < Duration::from_secs(10) && e.to_string().contains("stale") =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("clicking {at:?}: {e}"),
        }
    }
}

/// Waits until the text of `css` on the current page satisfies `ok`, reloading the page only
/// when `reload` (otherwise the page's own live refresh must bring the change).
async fn wait_text(
    c: &Client,
    css: &str,
    reload: bool,
    limit: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if ok(&t) {
                    return t;
                }
            }
        }
        assert!(
            start.elapsed() < limit,
            "{css} never matched within {limit:?}; page:\n{}",
            c.source().await.unwrap_or_default()
        );
        if reload {
            c.refresh().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn console_in_headless_chromium(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let p = Producer::new(db.clone());
    let failing = p
        .enqueue(NewJob::json(
            "fail",
            json!({"times": 1, "with": "discard", "message": "<script>alert('x')</script> boom"}),
        ))
        .await
        .unwrap()
        .0;
    let port = crate::http::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut worker = WorkerProc::spawn(
        &url,
        &["--queues", "default,reports", "--concurrency", "4"],
        &[
            ("JOBQ_WEB__LISTEN", listen.as_str()),
            ("JOBQ_WEB__TOKEN", TOKEN),
            ("JOBQ_WORKER__POLL_INTERVAL", "50ms"),
        ],
    );
    wait_for(
        Duration::from_secs(30),
        "the failing job to be discarded",
        || async { state_of(&db, failing).await == "discarded" },
    )
    .await;
    let driver = start_driver();
    let c = browser(&driver).await;
    let base = format!("http://{listen}");

    // Signed out, the console shows only the login form.
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.source().await.unwrap().contains("name=\"token\""));
    assert!(!c.source().await.unwrap().contains("Overview"));
    screenshot(&c, "00-login").await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&c, Locator::Id("sign-in")).await;

    // The overview: queues with their counts, this worker, the failure.
    wait_text(&c, "h1", false, Duration::from_secs(10), |t| {
        t == "Overview"
    })
    .await;
    let queues = text(&c, "#queues").await;
    assert!(queues.contains("default"), "{queues}");
    let workers = text(&c, "#workers").await;
    assert!(workers.contains(&worker.pid().to_string()), "{workers}");
    assert!(text(&c, "#failures")
        .await
        .contains("<script>alert('x')</script> boom"));
    screenshot(&c, "01-overview").await;

    // Filter to the discarded jobs with the form.
    c.goto(&format!("{base}/jobs")).await.unwrap();
    c.find(Locator::Id("f-state"))
        .await
        .unwrap()
        .select_by_value("discarded")
        .await
        .unwrap();
    click(&c, Locator::Id("f-apply")).await;
    // The unfiltered page lists the discarded job too: wait for the filtered page's URL
    // before reading the list, or the old page may be the one read.
    let start = Instant::now();
    while !c
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains("state=discarded")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the filter form did not lead to state=discarded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_text(&c, "#jobs", false, Duration::from_secs(10), |t| {
        t.contains("discarded")
    })
    .await;
    screenshot(&c, "02-jobs-discarded").await;

    // Open it and read its history; the error is shown as text, not run.
    click(
        &c,
        Locator::Css(&format!("#jobs a[href='/jobs/{failing}']")),
    )
    .await;
    let history = wait_text(&c, "#history", false, Duration::from_secs(10), |t| {
        t.contains("claimed")
    })
    .await;
    for step in [
        "enqueued",
        "claimed",
        "running → discarded",
        "<script>alert('x')</script> boom",
    ] {
        assert!(history.contains(step), "{step} missing from\n{history}");
    }
    assert_eq!(text(&c, "#cli").await, format!("jobq job {failing}"));
    screenshot(&c, "03-job-discarded").await;

    // Retry it: the live page shows it complete without a reload.
    click(&c, Locator::Id("act-retry")).await;
    wait_text(&c, "#job-state", false, Duration::from_secs(30), |t| {
        t == "completed"
    })
    .await;
    let history = text(&c, "#history").await;
    assert!(
        history.contains("web:token"),
        "the retry records who did it:\n{history}"
    );
    screenshot(&c, "04-job-retried").await;

    // Pause a queue: its jobs are not claimed; resume: they are.
    c.goto(&format!("{base}/queues")).await.unwrap();
    click(&c, Locator::Id("pause-reports")).await;
    wait_text(&c, "#flash", false, Duration::from_secs(10), |t| {
        t.contains("paused")
    })
    .await;
    screenshot(&c, "05-queue-paused").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = p
        .enqueue(NewJob::json("noop", json!({})).queue("reports"))
        .await
        .unwrap()
        .0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        state_of(&db, report).await,
        "available",
        "a paused queue's job was claimed"
    );
    click(&c, Locator::Id("resume-reports")).await;
    wait_for(
        Duration::from_secs(20),
        "the resumed queue's job to complete",
        || async { state_of(&db, report).await == "completed" },
    )
    .await;

    // A job's progress and log lines, live on its page: the page's own refresh brings
    // each step (no reload).
    let stepped = p
        .enqueue(NewJob::json("sleep", json!({"ms": 12_000, "steps": 4})))
        .await
        .unwrap()
        .0;
    wait_for(
        Duration::from_secs(20),
        "the stepped job's first step",
        || async {
            count(
                &db,
                &format!("SELECT COUNT(*) FROM jobq_job_logs WHERE job_id = {stepped}"),
            )
            .await
                >= 1
        },
    )
    .await;
    c.goto(&format!("{base}/jobs/{stepped}")).await.unwrap();
    assert_eq!(text(&c, "#job-state").await, "running");
    let first = text(&c, "#progress-percent").await;
    assert!(first == "25%" || first == "50%", "{first}");
    assert!(text(&c, "#log").await.contains("step 1 of 4"));
    wait_text(
        &c,
        "#progress-percent",
        false,
        Duration::from_secs(30),
        |t| t == "75%",
    )
    .await;
    assert_eq!(text(&c, "#progress-message").await, "slept 3 of 4 steps");
    screenshot(&c, "06-job-progress").await;
    wait_text(&c, "#job-state", false, Duration::from_secs(30), |t| {
        t == "completed"
    })
    .await;
    let log = text(&c, "#log").await;
    assert!(log.contains("step 4 of 4"), "{log}");
    assert_eq!(text(&c, "#progress-percent").await, "100%");

    // Cancel a running job from its page.
    let long = p
        .enqueue(NewJob::json("sleep", json!({"ms": 120_000})))
        .await
        .unwrap()
        .0;
    wait_for(Duration::from_secs(20), "the long job to run", || async {
        state_of(&db, long).await == "running"
    })
    .await;
    c.goto(&format!("{base}/jobs/{long}")).await.unwrap();
    assert_eq!(text(&c, "#job-state").await, "running");
    click(&c, Locator::Id("act-cancel")).await;
    wait_text(&c, "#job-state", true, Duration::from_secs(30), |t| {
        t == "cancelled"
    })
    .await;
    screenshot(&c, "07-job-cancelled").await;

    c.goto(&format!("{base}/")).await.unwrap();
    screenshot(&c, "08-overview-after").await;
    c.close().await.unwrap();
    eprintln!("screenshots in {}", screenshot_dir().display());
    worker.stop_cleanly();
    assert_consistent(&db).await;
}
