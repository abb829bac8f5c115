//! Typed handler outcomes and lease loss, in process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{JobContext, JobError, JobId, NewJob, Producer, Registry};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(&'static str);

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_json(
        "outcome",
        |v: serde_json::Value, ctx: JobContext| async move {
            if ctx.attempt() > 1 {
                return Ok(());
            }
            match v["do"].as_str().unwrap() {
                "snooze" => Err(JobError::snooze(Duration::from_millis(300))),
                "cancel" => Err(JobError::cancel(Msg("no longer wanted"))),
                "retry_after" => Err(JobError::retry_after(
                    Msg("come back later"),
                    Duration::from_millis(600),
                )),
                "discard" => Err(JobError::discard(Msg("hopeless"))),
                _ => Ok(()),
            }
        },
    )
    .unwrap();
    r
}

#[sqlx::test(migrations = false)]
async fn typed_outcomes(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let p = Producer::new(pool.clone());
    let mut ids = std::collections::HashMap::new();
    for what in ["snooze", "cancel", "retry_after", "discard"] {
        ids.insert(
            what,
            p.enqueue(NewJob::json("outcome", json!({"do": what})))
                .await
                .unwrap()
                .0,
        );
    }
    let w = start(pool.clone(), registry(), &s);
    wait_for(Duration::from_secs(30), "all final", || async {
        for id in ids.values() {
            if !matches!(
                state_of(&db, *id).await.as_str(),
                "completed" | "discarded" | "cancelled"
            ) {
                return false;
            }
        }
        true
    })
    .await;
    w.stop().await;

    let (job, h) = jobq_worker::job_with_history(&db, JobId(ids["snooze"]))
        .await
        .unwrap();
    let events: Vec<&str> = h.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "enqueued",
            "claimed",
            "snoozed",
            "promoted",
            "claimed",
            "completed"
        ]
    );
    assert_eq!(
        (job.state.as_str(), job.attempt, job.max_attempts),
        ("completed", 2, 26),
        "snooze refunds the attempt"
    );

    let (job, _) = jobq_worker::job_with_history(&db, JobId(ids["cancel"]))
        .await
        .unwrap();
    assert_eq!(
        (job.state.as_str(), job.last_error.as_deref()),
        ("cancelled", Some("no longer wanted"))
    );

    let (job, h) = jobq_worker::job_with_history(&db, JobId(ids["retry_after"]))
        .await
        .unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("completed", 2));
    let failed = h.iter().find(|t| t.event.as_str() == "failed").unwrap();
    let again = h
        .iter()
        .filter(|t| t.event.as_str() == "claimed")
        .nth(1)
        .unwrap();
    assert!((again.at - failed.at).to_std().unwrap() >= Duration::from_millis(600));
    assert_eq!(failed.error.as_deref(), Some("come back later"));

    let (job, _) = jobq_worker::job_with_history(&db, JobId(ids["discard"]))
        .await
        .unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt, job.last_error.as_deref()),
        ("discarded", 1, Some("hopeless"))
    );
    assert_consistent(&db).await;
}

/// Sets its flag when dropped: shows that the handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// When the lease cannot be extended (here: the claim was taken over behind the worker's back),
/// the handler is cancelled (its future dropped) and nothing is written for it.
#[sqlx::test(migrations = false)]
async fn lost_lease_cancels_the_handler(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.worker.heartbeat_interval = Duration::from_millis(200);
    s.worker.lease_ttl = Duration::from_secs(2);
    let pool = pool(&s).await;
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut r = Registry::new();
    let flag = cancelled.clone();
    r.register_json("hold", move |_: serde_json::Value, ctx: JobContext| {
        let flag = flag.clone();
        async move {
            let _guard = DropFlag(flag);
            let mut tx = ctx.tx().await?;
            sqlx::query("INSERT INTO jobq_demo_effects (job_id, attempt, worker, effect_key, created_at) VALUES (?, 1, 'x', 'hold', UTC_TIMESTAMP(6))")
                .bind(ctx.id().0)
                .execute(&mut **tx)
                .await?;
            drop(tx);
            std::future::pending::<()>().await;
            Ok::<(), JobError>(())
        }
    })
    .unwrap();
    let id = Producer::new(pool.clone())
        .enqueue(NewJob::json("hold", json!({})))
        .await
        .unwrap()
        .0;
    let w = start(pool.clone(), r, &s);
    wait_for(Duration::from_secs(20), "job running", || async {
        state_of(&db, id).await == "running"
    })
    .await;
    sqlx::query("UPDATE jobq_jobs SET claim_token = ?, worker_id = 'thief' WHERE id = ?")
        .bind(vec![1u8; 16])
        .bind(id)
        .execute(&db)
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "handler cancelled", || async {
        cancelled.load(Ordering::SeqCst)
    })
    .await;
    w.stop().await;
    assert_eq!(
        state_of(&db, id).await,
        "running",
        "nothing written for a lost lease"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_demo_effects").await,
        0,
        "its transaction was rolled back"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'completed'"
        )
        .await,
        0
    );
}

/// If the completion transaction fails (here: its connection is killed after the handler wrote
/// through it), the handler's writes are rolled back and the job goes back to `available` with
/// its attempt refunded, instead of waiting for a rescue that would count the attempt.
#[sqlx::test(migrations = false)]
async fn failed_completion_puts_the_job_back(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let mut r = Registry::new();
    r.register_json("doomed_commit", |_: serde_json::Value, ctx: JobContext| async move {
        let mut tx = ctx.tx().await?;
        sqlx::query("INSERT INTO jobq_demo_effects (job_id, attempt, worker, effect_key, created_at) VALUES (?, ?, 'x', 'k', UTC_TIMESTAMP(6))")
            .bind(ctx.id().0)
            .bind(ctx.attempt())
            .execute(&mut **tx)
            .await?;
        if ctx.attempt() == 1 {
            let conn_id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()").fetch_one(&mut **tx).await?;
            sqlx::query(&format!("KILL CONNECTION {conn_id}")).execute(ctx.pool()).await?;
        }
        Ok::<(), JobError>(())
    })
    .unwrap();
    let id = Producer::new(pool.clone())
        .enqueue(NewJob::json("doomed_commit", json!({})).max_attempts(1))
        .await
        .unwrap()
        .0;
    let w = start(pool.clone(), r, &s);
    wait_for(
        Duration::from_secs(30),
        "completed on the second run",
        || async { state_of(&db, id).await == "completed" },
    )
    .await;
    w.stop().await;
    let (job, h) = jobq_worker::job_with_history(&db, JobId(id)).await.unwrap();
    assert_eq!(
        (job.attempt, job.max_attempts),
        (2, 2),
        "the failed completion did not use up the only attempt"
    );
    let released = h
        .iter()
        .find(|t| t.event.as_str() == "released")
        .expect("a released transition");
    assert!(
        released
            .error
            .as_deref()
            .unwrap()
            .contains("completion failed"),
        "{released:?}"
    );
    // Only the second run's write survived.
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_demo_effects").await,
        1
    );
    assert_eq!(
        count(&db, "SELECT CAST(attempt AS SIGNED) FROM jobq_demo_effects").await,
        2
    );
    assert_consistent(&db).await;
}
