//! Contention: many claimers in two pools drain one queue in each claim mode, every job exactly
//! once.

use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// 5,000 `record` jobs, 16 claimers in two pools (8 workers each), one claim mode: every job
/// completes exactly once, with exactly one effect row and the history
/// enqueued → claimed (attempt 1) → completed.
async fn contention(db: MySqlPool, mode: ClaimMode) {
    const JOBS: usize = 5000;
    let mut s = settings(&db, mode).await;
    s.worker.concurrency = 4;
    // Exactly one attempt per job is asserted below: no job claimed ahead may be given back
    // (`slow::prefetch` tests the default, auto, with several processes).
    s.worker.prefetch = jobq_config::Prefetch::Fixed(0);
    s.database.max_connections = 24;
    let producer = Producer::new(db.clone());
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|_| NewJob::json("record", json!({})))
        .collect();
    let ids = producer.enqueue_many(jobs).await.unwrap();
    assert_eq!(ids.len(), JOBS);

    let pools = [pool(&s).await, pool(&s).await];
    let mut workers = Vec::new();
    for p in &pools {
        for _ in 0..8 {
            workers.push(start(p.clone(), builtins(), &s));
        }
    }
    wait_for(Duration::from_secs(240), "all jobs completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == JOBS as i64
    })
    .await;
    for w in workers {
        w.stop().await;
    }
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_demo_effects").await,
        JOBS as i64
    );
    assert_eq!(
        count(&db, "SELECT COUNT(DISTINCT job_id) FROM jobq_demo_effects").await,
        JOBS as i64
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed' AND attempt = 1"
        )
        .await,
        JOBS as i64
    );
    let hist = histories(&db).await;
    assert_eq!(hist.len(), JOBS);
    for (job, path) in hist {
        assert_eq!(
            path, "->available:0,available>running:1,running>completed:1",
            "job {job}"
        );
    }
    // The work was really spread over many workers.
    let workers_used = count(&db, "SELECT COUNT(DISTINCT worker) FROM jobq_demo_effects").await;
    assert!(workers_used >= 8, "only {workers_used} workers did work");
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn contention_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    contention(db, ClaimMode::SkipLocked).await;
}

#[sqlx::test(migrations = false)]
async fn contention_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    contention(db, ClaimMode::NamedLock).await;
}
