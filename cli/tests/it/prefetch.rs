//! Prefetch: jobs claimed ahead of free handler slots wait in the process, never run beyond the
//! slots, keep full history, go back unstarted at a stop, and end cancelled without running
//! when an operator cancels them while they wait.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobq_config::{ClaimMode, Settings};
use jobq_worker::{act_on_jobs, Act, JobContext, JobId, NewJob, Producer, Registry};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// What the `slow` handler saw: the jobs it started, and the most handlers at once.
#[derive(Default)]
struct Seen {
    started: Mutex<HashSet<u64>>,
    now: AtomicUsize,
    most: AtomicUsize,
}

/// A `slow` kind that sleeps `{"ms": N}` and records what ran.
fn registry(seen: Arc<Seen>) -> Registry {
    let mut r = Registry::new();
    r.register_json("slow", move |v: serde_json::Value, ctx: JobContext| {
        let seen = seen.clone();
        async move {
            seen.started.lock().unwrap().insert(ctx.id().0);
            let n = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
            seen.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(v["ms"].as_u64().unwrap())).await;
            seen.now.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .unwrap();
    r
}

async fn prefetch_settings(db: &MySqlPool, concurrency: u32, prefetch: u32) -> Settings {
    let mut s = settings(db, ClaimMode::SkipLocked).await;
    s.worker.concurrency = concurrency;
    s.worker.prefetch = jobq_config::Prefetch::Fixed(prefetch);
    s
}

async fn enqueue(p: &Producer, n: usize, ms: u64) -> Vec<u64> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|_| NewJob::json("slow", json!({ "ms": ms })))
        .collect();
    p.enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.0)
        .collect()
}

async fn running(db: &MySqlPool) -> i64 {
    count(db, "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'").await
}

/// Waits until every job of the test database is completed.
async fn all_completed(db: &MySqlPool) {
    wait_for(Duration::from_secs(30), "all completed", || async {
        count(
            db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state <> 'completed'",
        )
        .await
            == 0
    })
    .await;
}

/// A worker of one slot and `prefetch` more, started on `n` jobs of `ms` each, once all `n` are
/// claimed (running rows) and the first handler has started.
async fn one_slot_holding(
    db: &MySqlPool,
    prefetch: u32,
    n: usize,
    ms: u64,
) -> (Settings, MySqlPool, Vec<u64>, Arc<Seen>, Running) {
    let s = prefetch_settings(db, 1, prefetch).await;
    let pool = pool(&s).await;
    let ids = enqueue(&Producer::new(pool.clone()), n, ms).await;
    let seen = Arc::new(Seen::default());
    let w = start(pool.clone(), registry(seen.clone()), &s);
    wait_for(
        Duration::from_secs(10),
        "every job claimed, one started",
        || async { running(db).await == n as i64 && seen.started.lock().unwrap().len() == 1 },
    )
    .await;
    (s, pool, ids, seen, w)
}

#[sqlx::test(migrations = false)]
async fn prefetched_jobs_wait_for_a_slot_and_keep_their_history(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    for mode in [ClaimMode::SkipLocked, ClaimMode::NamedLock] {
        sqlx::query("DELETE FROM jobq_transitions")
            .execute(&db)
            .await
            .unwrap();
        sqlx::query("DELETE FROM jobq_jobs")
            .execute(&db)
            .await
            .unwrap();
        let mut s = prefetch_settings(&db, 2, 6).await;
        s.worker.claim_mode = mode;
        let pool = pool(&s).await;
        let p = Producer::new(pool.clone());
        let ids = enqueue(&p, 40, 15).await;
        let seen = Arc::new(Seen::default());
        let w = start(pool.clone(), registry(seen.clone()), &s);
        // The claims take jobs ahead of the two slots: more rows are running than handlers.
        let most_rows = Arc::new(AtomicUsize::new(0));
        wait_for(Duration::from_secs(30), "all completed", || {
            let db = db.clone();
            let most_rows = most_rows.clone();
            async move {
                most_rows.fetch_max(running(&db).await as usize, Ordering::SeqCst);
                count(
                    &db,
                    "SELECT COUNT(*) FROM jobq_jobs WHERE state <> 'completed'",
                )
                .await
                    == 0
            }
        })
        .await;
        let most_rows = most_rows.load(Ordering::SeqCst);
        w.stop().await;
        assert!(
            (3..=8).contains(&most_rows),
            "{mode:?}: 2 slots + 6 prefetched, but at most {most_rows} rows were running"
        );
        assert_eq!(
            seen.most.load(Ordering::SeqCst),
            2,
            "{mode:?}: handlers beyond the slots"
        );
        assert_eq!(seen.started.lock().unwrap().len(), ids.len());
        for (_, h) in histories(&db).await {
            assert_eq!(
                h, "->available:0,available>running:1,running>completed:1",
                "{mode:?}"
            );
        }
        assert_consistent(&db).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_stop_gives_prefetched_jobs_back_unstarted(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let (s, pool, ids, seen, w) = one_slot_holding(&db, 4, 5, 1500).await;
    w.stop().await;
    let started = seen.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1, "only the job in the slot ran");
    for id in ids {
        let (job, h) = jobq_worker::job_with_history(&db, JobId(id)).await.unwrap();
        if started.contains(&id) {
            assert_eq!(job.state.to_string(), "completed");
            continue;
        }
        assert_eq!(job.state.to_string(), "available", "job {id}");
        // Refunded: the run is recorded (attempt 1) but does not count against the job.
        assert_eq!(
            (job.attempt, job.max_attempts),
            (1, 26),
            "job {id}: the attempt is refunded"
        );
        let last = h.last().unwrap();
        assert_eq!(last.event.as_str(), "released", "job {id}");
        assert!(
            last.error
                .as_deref()
                .unwrap_or("")
                .contains("prefetched job started"),
            "job {id}: {:?}",
            last.error
        );
    }
    // Given back, they run once a worker claims again.
    let seen2 = Arc::new(Seen::default());
    let w = start(pool.clone(), registry(seen2.clone()), &s);
    all_completed(&db).await;
    w.stop().await;
    assert_eq!(seen2.started.lock().unwrap().len(), 4);
}

#[sqlx::test(migrations = false)]
async fn a_cancelled_prefetched_job_never_runs(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let (_, _, ids, seen, w) = one_slot_holding(&db, 2, 3, 4000).await;
    let waiting: Vec<JobId> = {
        let started = seen.started.lock().unwrap();
        ids.iter()
            .filter(|id| !started.contains(id))
            .map(|&id| JobId(id))
            .collect()
    };
    let acted = act_on_jobs(&db, Act::Cancel, &waiting, "test")
        .await
        .unwrap();
    assert_eq!(acted.len(), 2);
    for id in &waiting {
        wait_for(
            Duration::from_secs(10),
            "the waiting job cancelled",
            || async { state_of(&db, id.0).await == "cancelled" },
        )
        .await;
        let (_, h) = jobq_worker::job_with_history(&db, *id).await.unwrap();
        let last = h.last().unwrap();
        assert!(
            last.error
                .as_deref()
                .unwrap_or("")
                .contains("before it started"),
            "{:?}",
            last.error
        );
    }
    w.stop().await;
    let started = seen.started.lock().unwrap();
    assert!(
        waiting.iter().all(|id| !started.contains(&id.0)),
        "a cancelled job ran"
    );
    assert_eq!(started.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_prefetched_job_keeps_its_lease_while_it_waits(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // The third job waits two runs (3 s) for the one slot, past the 2 s lease: the heartbeat
    // must keep extending it, or maintenance would rescue it and it would run twice.
    let mut s = prefetch_settings(&db, 1, 2).await;
    s.worker.lease_ttl = Duration::from_secs(2);
    s.worker.heartbeat_interval = Duration::from_millis(500);
    let pool = pool(&s).await;
    let p = Producer::new(pool.clone());
    let ids = enqueue(&p, 3, 1500).await;
    let seen = Arc::new(Seen::default());
    let w = start(pool.clone(), registry(seen.clone()), &s);
    all_completed(&db).await;
    w.stop().await;
    assert_eq!(seen.started.lock().unwrap().len(), ids.len());
    for (id, h) in histories(&db).await {
        assert_eq!(
            h, "->available:0,available>running:1,running>completed:1",
            "job {id}"
        );
    }
    assert_consistent(&db).await;
}
