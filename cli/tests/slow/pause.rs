//! `jobq queues pause` / `resume` across real worker processes, in both claim modes.

use std::time::Duration;

use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;
use crate::procs::WorkerProc;

/// Claims recorded later than 100 ms (one poll interval) after the pause.
async fn claims_after(db: &MySqlPool, paused_at: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'claimed' \
         AND at > CAST(? AS DATETIME(6)) + INTERVAL 100000 MICROSECOND",
    )
    .bind(paused_at)
    .fetch_one(db)
    .await
    .unwrap()
}

async fn pause_and_resume(db: MySqlPool, mode: &str) {
    const JOBS: i64 = 300;
    let url = url_of(&db).await;
    let jobs = (0..JOBS)
        .map(|_| NewJob::json("sleep", json!({"ms": 50})))
        .collect();
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
    let env = [("JOBQ_WORKER__POLL_INTERVAL", "100ms")];
    let args = [
        "--queues",
        "default",
        "--concurrency",
        "2",
        "--claim-mode",
        mode,
    ];
    let mut a = WorkerProc::spawn(&url, &args, &env);
    let mut b = WorkerProc::spawn(&url, &args, &env);
    let done = "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'";
    wait_for(Duration::from_secs(30), "jobs under way", || async {
        count(&db, done).await >= 20
    })
    .await;

    assert_eq!(
        jobq_ok(&url, &["queues", "pause", "default"], &[])
            .await
            .trim(),
        "paused default"
    );
    assert_eq!(
        jobq_ok(&url, &["queues", "pause", "default"], &[])
            .await
            .trim(),
        "default was already paused"
    );
    let paused_at: String = sqlx::query_scalar(
        "SELECT CAST(paused_at AS CHAR) FROM jobq_queues WHERE name = 'default'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    // Running jobs finish; nothing new starts.
    wait_for(Duration::from_secs(10), "running jobs finished", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'",
        )
        .await
            == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        claims_after(&db, &paused_at).await,
        0,
        "claims after the pause"
    );
    let left = count(
        &db,
        "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'available'",
    )
    .await;
    assert!(left > 0, "the pause stopped the queue before it drained");

    // A worker started while the queue is paused claims nothing either.
    let mut c = WorkerProc::spawn(&url, &args, &env);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(c.alive(), "{}", c.log_text());
    assert_eq!(
        claims_after(&db, &paused_at).await,
        0,
        "the new worker claimed"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'available'"
        )
        .await,
        left
    );

    // The state shows in `jobq stats` and `jobq queues`.
    let stats: serde_json::Value =
        serde_json::from_str(&jobq_ok(&url, &["stats", "--json"], &[]).await).unwrap();
    assert!(
        stats["queues"]["default"]["paused_since"].is_string(),
        "{stats}"
    );
    let queues: serde_json::Value =
        serde_json::from_str(&jobq_ok(&url, &["queues", "--json"], &[]).await).unwrap();
    let default = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap();
    assert_eq!(default["state"], "paused");
    assert_eq!(default["available"], left);

    assert_eq!(
        jobq_ok(&url, &["queues", "resume", "default"], &[])
            .await
            .trim(),
        "resumed default"
    );
    wait_for(Duration::from_secs(60), "all jobs completed", || async {
        count(&db, done).await == JOBS
    })
    .await;
    for w in [&mut a, &mut b, &mut c] {
        w.stop_cleanly();
    }
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn pause_and_resume_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    pause_and_resume(db, "skip-locked").await;
}

#[sqlx::test(migrations = false)]
async fn pause_and_resume_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    pause_and_resume(db, "named-lock").await;
}
