//! A database crash and restart in the middle of a run, on a private server started by the
//! tests themselves (`support/mariadb.rs`), so the machine's own server is never touched.

use std::time::Duration;

use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::mysql::MySqlPoolOptions;

use crate::common::*;
use crate::mariadb::PrivateMariaDb;
use crate::procs::WorkerProc;

/// Database `name` on `server`, migrated: its URL and a small pool on it.
async fn migrated(server: &PrivateMariaDb, name: &str) -> (String, sqlx::MySqlPool) {
    let url = server.url(name);
    jobq_worker::migrate(&url).await.unwrap();
    let db = MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    (url, db)
}

#[tokio::test]
async fn database_restart_mid_run() {
    const N: usize = 1500;
    let mut server = PrivateMariaDb::start().await;
    let (url, db) = migrated(&server, "jobq_restart").await;
    let jobs = (0..N)
        .map(|_| NewJob::json("record", json!({"ms": 5})))
        .collect();
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();

    let port = crate::http::free_port();
    let mut w = WorkerProc::spawn(
        &url,
        &["--concurrency", "8"],
        &[("JOBQ_METRICS__LISTEN", &format!("127.0.0.1:{port}"))],
    );
    let ready = |want: u16| async move {
        matches!(crate::http::get(port, "/readyz"), Ok((s, _)) if s == want)
    };
    wait_for(Duration::from_secs(20), "/readyz ready", || ready(200)).await;
    wait_for(Duration::from_secs(60), "progress", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            >= 300
    })
    .await;
    server.kill9();
    wait_for(
        Duration::from_secs(20),
        "/readyz unready while the database is down",
        || ready(503),
    )
    .await;
    // Clients get a short reason; the detail (the driver's error) goes to the log.
    let (_, body) = crate::http::get(port, "/readyz").unwrap();
    assert!(
        matches!(
            body.as_str(),
            "not ready: database unreachable\n"
                | "not ready: database error\n"
                | "not ready: database not answering\n"
        ),
        "unexpected /readyz body {body:?}"
    );
    assert_eq!(
        crate::http::get(port, "/healthz").unwrap().0,
        200,
        "the process itself is healthy"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await;
    wait_for(Duration::from_secs(30), "/readyz ready again", || {
        ready(200)
    })
    .await;
    let done = || async {
        matches!(
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'").fetch_one(&db).await,
            Ok(n) if n == N as i64
        )
    };
    wait_for(
        Duration::from_secs(120),
        "all jobs completed after the restart",
        done,
    )
    .await;
    w.stop_cleanly();
    assert!(
        w.log_text().contains("readiness: not ready"),
        "the readiness detail was not logged"
    );
    assert_effects_once(&db, N).await;
    assert_consistent(&db).await;
    let log = w.log_text();
    assert!(
        log.contains("failed") || log.contains("error"),
        "the outage went unnoticed in the log"
    );
}

/// A graceful stop ends within `shutdown_timeout` + 2 × `lease_ttl` even when the database stops
/// answering just before it: releasing the running jobs, flushing the batched completions and
/// removing the worker row share that budget (each of them alone would wait a whole
/// `lease_ttl` on a server that does not answer). Nothing is lost: once the server runs again,
/// another worker finishes every job.
#[tokio::test]
async fn shutdown_ends_in_time_with_a_frozen_database() {
    const SHORT: usize = 400;
    const LONG: usize = 2;
    let server = PrivateMariaDb::start().await;
    let (url, db) = migrated(&server, "jobq_frozen").await;
    let mut jobs: Vec<NewJob> = (0..LONG)
        .map(|_| NewJob::json("sleep", json!({"ms": 4000})))
        .collect();
    jobs.extend((0..SHORT).map(|_| NewJob::json("sleep", json!({"ms": 20}))));
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();

    let settings = [
        ("JOBQ_WORKER__SHUTDOWN_TIMEOUT", "1s"),
        ("JOBQ_WORKER__LEASE_TTL", "3s"),
        ("JOBQ_MAINTENANCE__LEAD", "false"),
    ];
    let mut w = WorkerProc::spawn(&url, &["--concurrency", "6"], &settings);
    wait_for(Duration::from_secs(30), "some jobs completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            >= 20
    })
    .await;
    // Short jobs go on completing into the batch while nothing can be written.
    server.freeze();
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.signal("TERM");
    // shutdown_timeout (1 s) + 2 × lease_ttl (3 s) = 7 s. The margin is for a loaded machine's
    // timers and process exit.
    let (code, took) = w.wait(Duration::from_secs(30));
    server.thaw();
    assert_eq!(code, Some(0), "{}", w.log_text());
    assert!(
        took < Duration::from_millis(8_500),
        "the stop took {took:?}, beyond shutdown_timeout + 2 × lease_ttl (7 s); log:\n{}",
        w.log_text()
    );

    // Nothing lost: what the stopped worker could not write is rescued and run again.
    let mut again = WorkerProc::spawn(&url, &["--concurrency", "6"], &[]);
    wait_for(
        Duration::from_secs(90),
        "every job completed by the next worker",
        || async {
            count(
                &db,
                "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
            )
            .await
                == (SHORT + LONG) as i64
        },
    )
    .await;
    again.stop_cleanly();
    assert_consistent(&db).await;
}
