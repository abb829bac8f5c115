//! Operators' acts: `jobq cancel|retry|discard` on waiting, running and finished jobs.

use std::time::{Duration, Instant};

use jobq_config::ClaimMode;
use jobq_worker::{
    act_on_jobs, Act, Acted, JobContext, JobId, JobState, NewJob, Producer, Registry,
};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// Waiting jobs are cancelled or discarded at once, with a transition naming who asked; a
/// finished job is refused with a clear message and a non-zero exit; an unknown id too; a
/// discarded job retried runs again.
#[sqlx::test(migrations = false)]
async fn waiting_and_finished_jobs(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let p = Producer::new(db.clone());
    let now = p.enqueue(NewJob::json("noop", json!({}))).await.unwrap();
    let later = p
        .enqueue(NewJob::json("noop", json!({})).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let other = p.enqueue(NewJob::json("noop", json!({}))).await.unwrap();

    let out = jobq_cli(&url, &["cancel", &now.to_string(), &later.to_string()]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{now} cancelled (was available)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{later} cancelled (was scheduled)")),
        "{text}"
    );
    let actor: String = sqlx::query_scalar(
        "SELECT CAST(actor AS CHAR) FROM jobq_transitions WHERE job_id = ? AND event = 'cancelled'",
    )
    .bind(now.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(actor.starts_with("cli:ann@"), "{actor}");

    let discarded = act_on_jobs(&db, Act::Discard, &[other, JobId(999_999)], "test")
        .await
        .unwrap();
    assert_eq!(
        discarded,
        vec![
            (
                other,
                Acted::Done {
                    from: JobState::Available,
                    to: JobState::Discarded
                }
            ),
            (JobId(999_999), Acted::NotFound)
        ]
    );

    // A second cancel of a cancelled job, and an unknown id: exit 1, each named.
    let out = jobq_cli(&url, &["cancel", &now.to_string(), "999999"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{now}: cannot cancel a cancelled job: it has already finished"
        )),
        "{err}"
    );
    assert!(err.contains("999999: no such job"), "{err}");

    // Retry the discarded job: it runs and completes.
    let out = jobq_cli(&url, &["retry", &other.to_string(), "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["outcome"], "done");
    assert_eq!(line["to"], "available");
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let w = start(pool(&s).await, builtins(), &s);
    wait_for(
        Duration::from_secs(10),
        "the retried job completed",
        || async { state_of(&db, other.0).await == "completed" },
    )
    .await;
    w.stop().await;
    // Retrying a completed job is refused.
    let out = jobq_cli(&url, &["retry", &other.to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("enqueue a new job instead"));
    assert_consistent(&db).await;
}

/// A running job is cancelled at its worker's next heartbeat: its handler sees
/// `ctx.cancelled()`, is dropped after the grace (it ignores the signal here), nothing it wrote
/// in `ctx.tx()` commits, and the job ends `cancelled` with who asked.
#[sqlx::test(migrations = false)]
async fn a_running_job_is_cancelled_within_a_heartbeat_and_the_grace(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.worker.heartbeat_interval = Duration::from_millis(200);
    s.worker.lease_ttl = Duration::from_secs(2);
    s.worker.cancel_grace = Duration::from_millis(300);
    let pool = pool(&s).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let mut r = Registry::new();
    r.register_json("stubborn", move |_: serde_json::Value, ctx: JobContext| {
        let seen = seen_tx.clone();
        async move {
            let mut tx = ctx.tx().await?;
            sqlx::query(
                "INSERT INTO jobq_demo_effects (job_id, attempt, worker, effect_key, created_at) \
                 VALUES (?, 1, 'x', 'written before the cancel', UTC_TIMESTAMP(6))",
            )
            .bind(ctx.id().0)
            .execute(&mut **tx)
            .await?;
            drop(tx);
            let _ = seen.send("started");
            ctx.cancelled().await;
            let _ = seen.send("told");
            // Ignores the signal: only the grace ends it.
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(())
        }
    })
    .unwrap();
    let id = Producer::new(db.clone())
        .enqueue(NewJob::json("stubborn", json!({})))
        .await
        .unwrap();
    let w = start(pool.clone(), r, &s);
    assert_eq!(seen_rx.recv().await, Some("started"));
    let asked = Instant::now();
    let acted = act_on_jobs(&db, Act::Cancel, &[id], "ops:bob")
        .await
        .unwrap();
    assert_eq!(acted, vec![(id, Acted::CancelRequested)]);
    assert_eq!(seen_rx.recv().await, Some("told"));
    wait_for(Duration::from_secs(10), "the job cancelled", || async {
        state_of(&db, id.0).await == "cancelled"
    })
    .await;
    // One heartbeat (200 ms) + the grace (300 ms), with room for a loaded machine.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    let (error, actor): (String, String) = sqlx::query_as(
        "SELECT CAST(error AS CHAR), CAST(actor AS CHAR) FROM jobq_transitions \
         WHERE job_id = ? AND to_state = 'cancelled'",
    )
    .bind(id.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        error.contains("cancelled by ops:bob while running"),
        "{error}"
    );
    assert_eq!(actor, "ops:bob");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_demo_effects").await,
        0,
        "the handler's transaction did not commit"
    );
    w.stop().await;
    assert_consistent(&db).await;
}

/// `jobq retry --state discarded` retries 10,000 jobs in batches while a producer keeps
/// enqueueing (no lock waits for it); a filter by queue leaves other queues alone.
#[sqlx::test(migrations = false)]
async fn bulk_retry_by_filter(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                  SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9)";
    sqlx::query(&format!(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, attempt, max_attempts, finalized_at, last_error) \
         SELECT IF(a.d = 0 AND b.d = 0, 'other', 'default'), 'noop', '{{}}', 'discarded', 3, 3, \
                UTC_TIMESTAMP(6), 'boom' \
         FROM {digits} a, {digits} b, {digits} c, {digits} e"
    ))
    .execute(&db)
    .await
    .unwrap();
    let other = count(&db, "SELECT COUNT(*) FROM jobq_jobs WHERE queue = 'other'").await;
    assert_eq!(other, 100);
    // A producer enqueueing all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let p = Producer::new(db);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                p.enqueue(NewJob::json("noop", json!({}))).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let out = jobq_cli(
        &url,
        &[
            "retry",
            "--state",
            "discarded",
            "--queue",
            "default",
            "--json",
        ],
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let enqueued = producing.await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["done"], 9900, "{summary}");
    assert!(enqueued > 0);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'discarded'"
        )
        .await,
        100,
        "the other queue's jobs are left alone"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'available' AND max_attempts = 4"
        )
        .await,
        9900,
        "each retried job got one more attempt"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'requeued'"
        )
        .await,
        9900
    );
}

/// A cancel requested while the job runs wins over an attempt that ends short of finishing
/// before the worker's heartbeat saw the request: the job ends cancelled, not retryable.
#[sqlx::test(migrations = false)]
async fn a_cancel_request_wins_over_a_retry(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.worker.heartbeat_interval = Duration::from_secs(5);
    s.worker.lease_ttl = Duration::from_secs(20);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut r = Registry::new();
    r.register_json("flaky", move |_: serde_json::Value, _ctx: JobContext| {
        let mut go = go_rx.clone();
        async move {
            let _ = go.wait_for(|g| *g).await;
            Err(jobq_worker::JobError::retry("boom"))
        }
    })
    .unwrap();
    let id = Producer::new(db.clone())
        .enqueue(NewJob::json("flaky", json!({})).max_attempts(5))
        .await
        .unwrap();
    let w = start(pool(&s).await, r, &s);
    wait_for(Duration::from_secs(10), "running", || async {
        state_of(&db, id.0).await == "running"
    })
    .await;
    let acted = act_on_jobs(&db, Act::Cancel, &[id], "ops:eve")
        .await
        .unwrap();
    assert_eq!(acted, vec![(id, Acted::CancelRequested)]);
    go_tx.send(true).unwrap();
    wait_for(Duration::from_secs(10), "ended", || async {
        state_of(&db, id.0).await != "running"
    })
    .await;
    assert_eq!(state_of(&db, id.0).await, "cancelled");
    w.stop().await;
    assert_consistent(&db).await;
}
