//! Crash safety with real worker processes: kill -9, SIGTERM, killed connections, a database
//! restart, and failing handlers. Every test ends with the history invariants.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jobq_config::ClaimMode;
use jobq_worker::{builtin, JobId, NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;
use crate::procs::WorkerProc;

async fn enqueue(
    db: &MySqlPool,
    n: usize,
    kind: &str,
    payload: serde_json::Value,
    queue: &str,
) -> Vec<u64> {
    let jobs = (0..n)
        .map(|_| NewJob::json(kind, payload.clone()).queue(queue))
        .collect();
    Producer::new(db.clone())
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.0)
        .collect()
}

async fn db_now(db: &MySqlPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
        .fetch_one(db)
        .await
        .unwrap()
}

async fn running_of(db: &MySqlPool, pid: u32) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobq_jobs j JOIN jobq_workers w ON w.id = j.worker_id WHERE j.state = 'running' AND w.pid = ?",
    )
    .bind(pid)
    .fetch_one(db)
    .await
    .unwrap()
}

/// No named lock of the queues is left held.
async fn assert_no_locks(db: &MySqlPool, queues: &[&str]) {
    for q in queues {
        let free: i64 = sqlx::query_scalar(
            "SELECT IS_FREE_LOCK(CONCAT('jobq:', SHA1(CONCAT(DATABASE(), X'00', ?))))",
        )
        .bind(q)
        .fetch_one(db)
        .await
        .unwrap();
        assert_eq!(free, 1, "named lock of queue {q} still held");
    }
}

/// Two workers of 16 slots (and `prefetch` jobs claimed ahead) share 400 jobs; one is killed.
async fn kill9_mid_work(db: MySqlPool, mode: ClaimMode, prefetch: &str) {
    const N: usize = 400;
    let url = url_of(&db).await;
    enqueue(&db, N, "record", json!({"ms": 300}), "default").await;
    let m = mode.as_str();
    let env = [("JOBQ_WORKER__PREFETCH", prefetch)];
    let mut a = WorkerProc::spawn(&url, &["--concurrency", "16", "--claim-mode", m], &env);
    let mut b = WorkerProc::spawn(&url, &["--concurrency", "16", "--claim-mode", m], &env);
    let pid = a.pid();
    wait_for(Duration::from_secs(30), "victim running jobs", || async {
        running_of(&db, pid).await >= 8
    })
    .await;
    a.kill9();
    let killed_at = db_now(&db).await;
    wait_for(Duration::from_secs(90), "all jobs completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == N as i64
    })
    .await;
    b.stop_cleanly();

    assert_effects_once(&db, N).await;
    // The victim's jobs were rescued and claimed again by the survivor within 10 s.
    let rerun: Vec<(u64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT job_id, at FROM jobq_transitions WHERE event = 'claimed' AND attempt = 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(
        !rerun.is_empty(),
        "no job of the killed worker was run again"
    );
    let rescued = count(
        &db,
        "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'rescued'",
    )
    .await;
    assert_eq!(rescued as usize, rerun.len());
    let worst = rerun
        .iter()
        .map(|(_, at)| (*at - killed_at).to_std().unwrap_or_default())
        .max()
        .unwrap();
    eprintln!(
        "kill -9 ({m}): {} jobs rescued; slowest ran again {worst:?} after the kill",
        rerun.len()
    );
    assert!(
        worst <= Duration::from_secs(10),
        "rescued job ran again only after {worst:?}"
    );
    assert_consistent(&db).await;
    assert_no_locks(&db, &["default"]).await;
}

#[sqlx::test(migrations = false)]
async fn kill9_mid_work_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    kill9_mid_work(db, ClaimMode::SkipLocked, "0").await;
}

#[sqlx::test(migrations = false)]
async fn kill9_mid_work_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    kill9_mid_work(db, ClaimMode::NamedLock, "0").await;
}

/// The victim also holds 16 prefetched jobs that never started: rescued like running ones.
#[sqlx::test(migrations = false)]
async fn kill9_mid_work_with_prefetch(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    kill9_mid_work(db, ClaimMode::SkipLocked, "16").await;
}

#[sqlx::test(migrations = false)]
async fn sigterm_lets_running_jobs_finish(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    enqueue(&db, 10, "record", json!({"ms": 1500}), "default").await;
    let mut w = WorkerProc::spawn(
        &url,
        &["--concurrency", "4"],
        &[("JOBQ_WORKER__SHUTDOWN_TIMEOUT", "20s")],
    );
    let pid = w.pid();
    wait_for(Duration::from_secs(30), "4 jobs running", || async {
        running_of(&db, pid).await == 4
    })
    .await;
    w.signal("TERM");
    let signalled = db_now(&db).await;
    let (code, took) = w.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", w.log_text());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed' AND attempt = 1"
        )
        .await,
        4
    );
    // Queued jobs untouched: still available, attempt 0, only their enqueue in the history.
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'available' AND attempt = 0"
        )
        .await,
        6
    );
    let late_claims: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'claimed' AND at > ?",
    )
    .bind(signalled)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(late_claims, 0, "claimed after the signal");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_workers").await,
        0,
        "worker row removed"
    );
    assert_effects_once(&db, 4).await;
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn sigterm_past_shutdown_timeout_releases_the_job(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let id = enqueue(&db, 1, "record", json!({"ms": 4000}), "default").await[0];
    let mut w = WorkerProc::spawn(&url, &[], &[("JOBQ_WORKER__SHUTDOWN_TIMEOUT", "1s")]);
    let pid = w.pid();
    wait_for(Duration::from_secs(30), "job running", || async {
        running_of(&db, pid).await == 1
    })
    .await;
    w.signal("TERM");
    let (code, took) = w.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", w.log_text());
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} with shutdown_timeout 1s"
    );
    assert_eq!(state_of(&db, id).await, "available");
    let (job, history) = jobq_worker::job_with_history(&db, JobId(id)).await.unwrap();
    assert_eq!(history.last().unwrap().event.as_str(), "released");
    assert_eq!(job.max_attempts, 26, "a released attempt does not count");
    // No `record` job has written yet, so its table may not exist: create it to count.
    builtin::setup(&db).await.unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_demo_effects").await,
        0
    );
    // Another worker completes it, once.
    let mut w2 = WorkerProc::spawn(&url, &["--drain"], &[]);
    assert_eq!(
        w2.wait(Duration::from_secs(60)).0,
        Some(0),
        "{}",
        w2.log_text()
    );
    assert_eq!(state_of(&db, id).await, "completed");
    assert_effects_once(&db, 1).await;
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn kill_connection_mid_work(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    const N: usize = 600;
    let url = url_of(&db).await;
    enqueue(&db, N, "record", json!({"ms": 20}), "default").await;
    enqueue(&db, N, "record", json!({"ms": 20}), "locked").await;
    let mut w = WorkerProc::spawn(
        &url,
        &["--queues", "default,locked", "--concurrency", "8"],
        &[("JOBQ_QUEUES__LOCKED__CLAIM_MODE", "named-lock")],
    );
    for round in 0..3 {
        let target = 100 * (round + 1) as i64;
        wait_for(Duration::from_secs(60), "progress", || async {
            count(
                &db,
                "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
            )
            .await
                >= target
        })
        .await;
        // Kill every connection of this database but our own, the worker's named-lock and pool
        // connections included.
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert!(!ids.is_empty());
        for id in ids {
            let _ = sqlx::query(&format!("KILL CONNECTION {id}"))
                .execute(&db)
                .await;
        }
    }
    wait_for(Duration::from_secs(120), "all jobs completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == 2 * N as i64
    })
    .await;
    w.stop_cleanly();
    assert_effects_once(&db, 2 * N).await;
    assert_consistent(&db).await;
    assert_no_locks(&db, &["default", "locked"]).await;
}

#[sqlx::test(migrations = false)]
async fn failures_retries_panics_and_timeouts(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let producer = Producer::new(db.clone());
    let flaky = producer
        .enqueue(NewJob::json("fail", json!({"times": 2})).max_attempts(5))
        .await
        .unwrap()
        .0;
    let doomed = producer
        .enqueue(NewJob::json("fail", json!({"times": 100})).max_attempts(3))
        .await
        .unwrap()
        .0;
    let panics = producer
        .enqueue(NewJob::json("panic", json!({})).max_attempts(2))
        .await
        .unwrap()
        .0;
    let hangs = producer
        .enqueue(NewJob::json("sleep", json!({"ms": 600000})).max_attempts(1))
        .await
        .unwrap()
        .0;
    let mut w = WorkerProc::spawn(
        &url,
        &["--concurrency", "4"],
        &[
            ("JOBQ_WORKER__BACKOFF_BASE", "400ms"),
            ("JOBQ_WORKER__BACKOFF_MAX", "10s"),
            ("JOBQ_KINDS__SLEEP__JOB_TIMEOUT", "500ms"),
            ("JOBQ_MAINTENANCE__INTERVAL", "100ms"),
        ],
    );
    wait_for(Duration::from_secs(60), "all four final", || async {
        for id in [flaky, doomed, panics, hangs] {
            if !matches!(state_of(&db, id).await.as_str(), "completed" | "discarded") {
                return false;
            }
        }
        true
    })
    .await;
    // After a panic the process is still up and still works.
    let after = producer
        .enqueue(NewJob::json("noop", json!({})))
        .await
        .unwrap()
        .0;
    wait_for(Duration::from_secs(20), "noop after panic", || async {
        state_of(&db, after).await == "completed"
    })
    .await;
    assert!(w.alive());
    w.stop_cleanly();

    // fail {"times": 2}: completed on attempt 3, each gap at least the configured backoff
    // (400 ms × 2^(n-1), minus the 25% jitter).
    let (job, h) = jobq_worker::job_with_history(&db, JobId(flaky))
        .await
        .unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("completed", 3));
    let failed: Vec<_> = h.iter().filter(|t| t.event.as_str() == "failed").collect();
    let claimed: Vec<_> = h.iter().filter(|t| t.event.as_str() == "claimed").collect();
    assert_eq!((failed.len(), claimed.len()), (2, 3));
    for n in 0..2 {
        let gap = (claimed[n + 1].at - failed[n].at).to_std().unwrap();
        let min = Duration::from_millis(400 * (1 << n)).mul_f64(0.75);
        assert!(
            gap >= min,
            "gap after attempt {} was {gap:?}, below {min:?}",
            n + 1
        );
    }
    // Always failing: discarded after max attempts, with its last error.
    let (job, _) = jobq_worker::job_with_history(&db, JobId(doomed))
        .await
        .unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("discarded", 3));
    assert!(
        job.last_error
            .as_deref()
            .unwrap()
            .contains("failing on purpose: attempt 3"),
        "{:?}",
        job.last_error
    );
    // Panic: retried, then discarded with the panic message.
    let (job, _) = jobq_worker::job_with_history(&db, JobId(panics))
        .await
        .unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("discarded", 2));
    assert!(
        job.last_error.as_deref().unwrap().contains("panicked"),
        "{:?}",
        job.last_error
    );
    // Never returns: timed out.
    let (job, _) = jobq_worker::job_with_history(&db, JobId(hangs))
        .await
        .unwrap();
    assert_eq!(job.state.as_str(), "discarded");
    assert!(
        job.last_error
            .as_deref()
            .unwrap()
            .contains("timed out after 500ms"),
        "{:?}",
        job.last_error
    );
    assert_consistent(&db).await;
}
