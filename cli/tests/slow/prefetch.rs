//! Adaptive prefetch (`worker.prefetch = "auto"`, the default) with real worker processes:
//! a job claimed ahead never waits long behind a slow one while another process could start
//! it, long jobs are never claimed ahead, key limits hold, and a stop gives the jobs claimed
//! ahead back.

use std::time::Duration;

use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;
use crate::procs::WorkerProc;

const AUTO: [(&str, &str); 1] = [("JOBQ_WORKER__PREFETCH", "auto")];

/// Workers of `slots` slots each, with the default (auto) prefetch.
fn workers(url: &str, n: usize, slots: u32) -> Vec<WorkerProc> {
    let c = slots.to_string();
    (0..n)
        .map(|_| WorkerProc::spawn(url, &["--concurrency", &c], &AUTO))
        .collect()
}

async fn enqueue(db: &MySqlPool, jobs: Vec<NewJob>) {
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
}

async fn all_completed(db: &MySqlPool, n: i64, limit: Duration) {
    wait_for(limit, "every job completed", || async {
        count(
            db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == n
    })
    .await;
}

/// Every claim of a short `record` job (one logging its runs): how long the job then waited in
/// the process, in ms, until its handler started or it was given back (the claim's transition,
/// the run's start or the give-back's transition, all on the database clock), with the job.
async fn waits_in_process(db: &MySqlPool) -> Vec<(u64, f64)> {
    sqlx::query_as::<_, (u64, Option<i64>)>(
        "SELECT t.job_id, TIMESTAMPDIFF(MICROSECOND, t.at, \
                COALESCE((SELECT MIN(r.started_at) FROM jobq_demo_runs r \
                          WHERE r.job_id = t.job_id AND r.attempt = t.attempt), \
                         (SELECT MIN(b.at) FROM jobq_transitions b WHERE b.job_id = t.job_id \
                          AND b.attempt = t.attempt AND b.event = 'released'))) \
         FROM jobq_transitions t JOIN jobq_jobs j ON j.id = t.job_id \
         WHERE t.event = 'claimed' AND j.payload NOT LIKE '%1500%'",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, us)| {
        let us = us.unwrap_or_else(|| panic!("job {id}: a claim neither started nor given back"));
        (id, us as f64 / 1000.0)
    })
    .collect()
}

/// Jobs given back unstarted because they waited too long behind slower ones.
async fn given_back(db: &MySqlPool) -> i64 {
    count(
        db,
        "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'released' \
         AND error LIKE 'prefetched, then waited%'",
    )
    .await
}

/// Two processes of two slots share 400 short jobs and 20 of 1.5 s, interleaved, some of the
/// short ones under concurrency keys (limit 1). Short jobs are claimed ahead while the
/// handlers are short; when both slots of a process are taken by long jobs, the jobs it
/// claimed ahead go back after 100 ms and the other process starts them. So no run starts
/// more than a fraction of a long job after its claim, each job's effect happens once, and a
/// key never has two running rows.
#[sqlx::test(migrations = false)]
async fn a_job_claimed_ahead_never_waits_long_behind_a_slow_one(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    jobq_worker::builtin::setup(&db).await.unwrap();
    let url = url_of(&db).await;
    let jobs: Vec<NewJob> = (0..420)
        .map(|i| {
            if i % 21 == 20 {
                NewJob::json("record", json!({"ms": 1500, "runs": true}))
            } else if i % 3 == 0 {
                NewJob::json("record", json!({"ms": 2, "runs": true}))
                    .concurrency_key(format!("k{}", i % 4))
            } else {
                NewJob::json("record", json!({"ms": 2, "runs": true}))
            }
        })
        .collect();
    enqueue(&db, jobs).await;
    let mut procs = workers(&url, 2, 2);
    let mut most_per_key = 0;
    for _ in 0..6000 {
        let per_key: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(n) FROM (SELECT COUNT(*) n FROM jobq_jobs WHERE state = 'running' \
             AND concurrency_key IS NOT NULL GROUP BY concurrency_key) k",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        most_per_key = most_per_key.max(per_key.unwrap_or(0));
        if count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state <> 'completed'",
        )
        .await
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    all_completed(&db, 420, Duration::from_secs(5)).await;
    for p in &mut procs {
        p.stop_cleanly();
    }
    assert!(most_per_key <= 1, "{most_per_key} running rows of one key");
    let waits = waits_in_process(&db).await;
    assert!(waits.len() >= 400, "{} claims of short jobs", waits.len());
    let worst = waits
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .copied()
        .unwrap();
    // A job claimed ahead goes back once no slot of its process has freed for 100 ms; the
    // bound leaves room for a loaded machine, and is far below the 1.5 s it would wait behind
    // long jobs without the give-back.
    assert!(
        worst.1 < 700.0,
        "job {} waited {:.0} ms in a process",
        worst.0,
        worst.1
    );
    // The scenario did claim jobs ahead and put them behind slow ones (only a job claimed
    // ahead is given back: else the bound proves nothing), and a job is not bounced from
    // process to process. (A sampled count of running rows per process is no proof: jobs
    // claimed ahead of 2 ms handlers come and go between two samples.)
    let back = given_back(&db).await;
    assert!(back > 0, "no job claimed ahead was given back");
    let most_backs = count(
        &db,
        "SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) n FROM jobq_transitions \
         WHERE event = 'released' GROUP BY job_id) b",
    )
    .await;
    assert!(most_backs <= 3, "a job was given back {most_backs} times");
    assert_effects_once(&db, 420).await;
    assert_consistent(&db).await;
}

/// Jobs of 150 ms (longer than auto's window) are never claimed ahead: no process ever holds
/// more `running` rows than its slots, exactly as with prefetch 0.
#[sqlx::test(migrations = false)]
async fn long_jobs_are_never_claimed_ahead(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    jobq_worker::builtin::setup(&db).await.unwrap();
    let url = url_of(&db).await;
    let jobs = (0..60)
        .map(|_| NewJob::json("record", json!({"ms": 150})))
        .collect();
    enqueue(&db, jobs).await;
    let mut procs = workers(&url, 2, 3);
    let mut most = 0;
    loop {
        let per_worker: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(n) FROM (SELECT COUNT(*) n FROM jobq_jobs WHERE state = 'running' \
             GROUP BY worker_id) w",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        most = most.max(per_worker.unwrap_or(0));
        if count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == 60
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in &mut procs {
        p.stop_cleanly();
    }
    assert!(most > 0);
    assert!(most <= 3, "a process held {most} running rows with 3 slots");
    assert_eq!(given_back(&db).await, 0);
    assert_effects_once(&db, 60).await;
    assert_consistent(&db).await;
}

/// A flood of short jobs is claimed ahead; SIGTERM gives every job claimed ahead back at once
/// (no attempt counted), and a second worker finishes them.
#[sqlx::test(migrations = false)]
async fn a_stop_gives_back_what_was_claimed_ahead(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    jobq_worker::builtin::setup(&db).await.unwrap();
    let url = url_of(&db).await;
    let jobs = (0..3000)
        .map(|_| NewJob::json("record", json!({"ms": 1})))
        .collect();
    enqueue(&db, jobs).await;
    let mut a = WorkerProc::spawn(&url, &["--concurrency", "1"], &AUTO);
    wait_for(
        Duration::from_secs(30),
        "jobs claimed ahead of the one slot",
        || async {
            count(
                &db,
                "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'",
            )
            .await
                >= 3
        },
    )
    .await;
    a.stop_cleanly();
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'"
        )
        .await,
        0,
        "rows left running after the stop"
    );
    let stopped = count(
        &db,
        "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'released' \
         AND error LIKE 'worker stopped before this prefetched job started%'",
    )
    .await;
    assert!(
        stopped > 0,
        "no job claimed ahead was given back at the stop"
    );
    let mut b = WorkerProc::spawn(&url, &["--concurrency", "4"], &AUTO);
    all_completed(&db, 3000, Duration::from_secs(60)).await;
    b.stop_cleanly();
    assert_effects_once(&db, 3000).await;
    assert_consistent(&db).await;
}
