//! The operator endpoint of `jobq work` under abuse: many idle connections do not pile up in
//! the process, and readiness tells clients a short reason while the log keeps the detail.

use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use crate::http::{free_port, get, request};
use crate::procs::WorkerProc;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading the worker's /proc fd table")
        .count()
}

#[sqlx::test(migrations = false)]
async fn idle_connections_are_bounded(db: sqlx::MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let port = free_port();
    let mut w = WorkerProc::spawn(
        &url,
        &["--concurrency", "2"],
        &[("JOBQ_METRICS__LISTEN", &format!("127.0.0.1:{port}"))],
    );
    wait_for(Duration::from_secs(20), "/readyz ready", || async {
        matches!(get(port, "/readyz"), Ok((200, _)))
    })
    .await;
    // HEAD is answered like GET without a body; other methods get 405, unknown paths 404.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            request(port, "HEAD", path),
            Ok((200, String::new())),
            "HEAD {path}"
        );
    }
    assert!(matches!(request(port, "POST", "/metrics"), Ok((405, _))));
    assert!(matches!(get(port, "/nope"), Ok((404, b)) if b.contains("/metrics")));
    assert!(matches!(get(port, "/metrics"), Ok((200, b)) if b.contains("jobq_")));
    let before = open_fds(w.pid());
    // 300 clients that connect and never send a request.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connecting"))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = open_fds(w.pid());
    assert!(
        during <= before + 40,
        "300 idle clients made the worker hold {} more descriptors (bound: 32 connections)",
        during - before
    );
    drop(idle);
    // Closed clients are let go at once; a real request is answered again.
    wait_for(
        Duration::from_secs(10),
        "/healthz answers again",
        || async { matches!(get(port, "/healthz"), Ok((200, _))) },
    )
    .await;
    w.stop_cleanly();
}

/// The leader exports depth gauges for the queues it samples; once a queue has no rows left
/// and no worker, its series disappear instead of being exported forever.
#[sqlx::test(migrations = false)]
async fn depth_series_of_vanished_queues_are_dropped(db: sqlx::MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let port = free_port();
    jobq_worker::Producer::new(db.clone())
        .enqueue(jobq_worker::NewJob::json("noop", serde_json::json!({})).queue("ephemeral"))
        .await
        .unwrap();
    let mut w = WorkerProc::spawn(
        &url,
        &["--concurrency", "2"],
        &[
            ("JOBQ_METRICS__LISTEN", &format!("127.0.0.1:{port}")),
            ("JOBQ_MAINTENANCE__INTERVAL", "100ms"),
        ],
    );
    let series = || {
        get(port, "/metrics")
            .map(|(_, body)| {
                body.lines().any(|l| {
                    l.starts_with("jobq_queue_available_jobs{") && l.contains("queue=\"ephemeral\"")
                })
            })
            .unwrap_or(false)
    };
    wait_for(
        Duration::from_secs(20),
        "the depth series of the queue",
        || async { series() },
    )
    .await;
    sqlx::query("DELETE FROM jobq_jobs WHERE queue = 'ephemeral'")
        .execute(&db)
        .await
        .unwrap();
    // Idle timeout: 50 maintenance ticks (5 s here), applied on the next upkeep (every 5 s).
    wait_for(Duration::from_secs(30), "the series dropped", || async {
        !series()
    })
    .await;
    let (_, body) = get(port, "/metrics").unwrap();
    assert!(
        body.lines()
            .any(|l| l.starts_with("jobq_queue_available_jobs{")
                && l.contains("queue=\"default\"")
                && l.contains(&format!("server=\"{}\"", jobq_worker::server_name(&url)))),
        "the worker's own queue keeps its series, labelled with its server:\n{body}"
    );
    w.stop_cleanly();
}

/// A completion for a job taken back while its handler ran (its claim token replaced, as a
/// rescue does) is not written and not counted as `completed`: the batch finds it stale and
/// the metrics count it as `lease_lost`.
#[sqlx::test(migrations = false)]
async fn a_stale_completion_is_counted_as_lease_lost(db: sqlx::MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let port = free_port();
    jobq_worker::Producer::new(db.clone())
        .enqueue(jobq_worker::NewJob::json(
            "sleep",
            serde_json::json!({"ms": 2000}),
        ))
        .await
        .unwrap();
    // A heartbeat every 20 s: the handler ends before any heartbeat could notice the loss.
    let mut w = WorkerProc::spawn(
        &url,
        &["--concurrency", "1"],
        &[
            ("JOBQ_METRICS__LISTEN", &format!("127.0.0.1:{port}")),
            ("JOBQ_WORKER__LEASE_TTL", "60s"),
            ("JOBQ_WORKER__HEARTBEAT_INTERVAL", "20s"),
        ],
    );
    wait_for(Duration::from_secs(20), "the job running", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'",
        )
        .await
            == 1
    })
    .await;
    let taken = sqlx::query(
        "UPDATE jobq_jobs SET claim_token = UNHEX(REPEAT('ab', 16)) WHERE state = 'running'",
    )
    .execute(&db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(taken, 1);
    let finished = |outcome: &'static str| {
        get(port, "/metrics")
            .map(|(_, body)| {
                body.lines()
                    .find(|l| {
                        l.starts_with("jobq_jobs_finished_total{")
                            && l.contains("kind=\"sleep\"")
                            && l.contains(&format!("outcome=\"{outcome}\""))
                    })
                    .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .unwrap_or(0.0)
    };
    wait_for(
        Duration::from_secs(20),
        "the stale completion counted",
        || async { finished("lease_lost") == 1.0 },
    )
    .await;
    assert_eq!(
        finished("completed"),
        0.0,
        "a completion that was not written was counted"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'"
        )
        .await,
        1,
        "the completion was written despite the replaced token"
    );
    w.stop_cleanly();
}
