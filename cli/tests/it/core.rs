//! The core path: enqueue → claim (both modes) → handlers → recorded transitions.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{Job, JobContext, JobError, NewJob, Producer, ProducerOptions, Registry};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

#[derive(Debug, Serialize, Deserialize)]
struct Greet {
    name: String,
}
impl Job for Greet {
    const KIND: &'static str = "greet";
}

fn greet_registry(seen: Arc<std::sync::Mutex<Vec<(String, u32)>>>) -> Registry {
    let mut r = Registry::new();
    r.register::<Greet>(move |job: Greet, ctx: JobContext| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((job.name, ctx.attempt()));
            Ok::<(), JobError>(())
        }
    })
    .unwrap();
    let untyped = Arc::new(AtomicU32::new(0));
    r.register_json("untyped", move |v: serde_json::Value, _ctx: JobContext| {
        let untyped = untyped.clone();
        async move {
            assert_eq!(v["n"], 7);
            untyped.fetch_add(1, Ordering::SeqCst);
            Ok::<(), JobError>(())
        }
    })
    .unwrap();
    r
}

async fn round_trip(db: MySqlPool, mode: ClaimMode) {
    let s = settings(&db, mode).await;
    let pool = pool(&s).await;
    let producer = Producer::new(pool.clone());
    let typed = producer
        .enqueue(NewJob::new(&Greet { name: "ada".into() }).unwrap())
        .await
        .unwrap();
    let untyped = producer
        .enqueue(NewJob::json("untyped", json!({"n": 7})).priority(-1))
        .await
        .unwrap();
    assert_eq!(state_of(&db, typed.0).await, "available");

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = start(pool.clone(), greet_registry(seen.clone()), &s);
    wait_for(Duration::from_secs(20), "both jobs completed", || async {
        state_of(&db, typed.0).await == "completed" && state_of(&db, untyped.0).await == "completed"
    })
    .await;
    w.stop().await;
    assert_eq!(*seen.lock().unwrap(), vec![("ada".to_owned(), 1)]);
    let (job, history) = jobq_worker::job_with_history(&db, typed).await.unwrap();
    assert_eq!(job.attempt, 1);
    assert!(job.finalized_at.is_some());
    let path: Vec<(Option<String>, String, String)> = history
        .iter()
        .map(|t| {
            (
                t.from.map(|s| s.to_string()),
                t.to.to_string(),
                t.event.to_string(),
            )
        })
        .collect();
    assert_eq!(
        path,
        vec![
            (None, "available".into(), "enqueued".into()),
            (Some("available".into()), "running".into(), "claimed".into()),
            (
                Some("running".into()),
                "completed".into(),
                "completed".into()
            ),
        ]
    );
    assert!(history[1].worker_id.is_some());
    assert_consistent(&db).await;
    // The worker row is removed on a clean stop.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_workers").await, 0);
}

#[sqlx::test(migrations = false)]
async fn round_trip_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    round_trip(db, ClaimMode::SkipLocked).await;
}

#[sqlx::test(migrations = false)]
async fn round_trip_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    round_trip(db, ClaimMode::NamedLock).await;
}

#[sqlx::test(migrations = false)]
async fn enqueue_in_callers_transaction(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let producer = Producer::new(pool.clone());

    let mut tx = pool.begin().await.unwrap();
    let rolled = producer
        .enqueue_in(&mut tx, NewJob::json("record", json!({})))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let kept = producer
        .enqueue_many_in(
            &mut tx,
            vec![NewJob::json("record", json!({"key": "committed"}))],
        )
        .await
        .unwrap();
    // Not visible to others before the commit.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
    tx.commit().await.unwrap();

    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM jobq_jobs WHERE id = {}", rolled.0)
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_transitions").await, 1);
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(20), "committed job done", || async {
        state_of(&db, kept[0].0).await == "completed"
    })
    .await;
    w.stop().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_demo_effects WHERE effect_key = 'committed'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_demo_effects").await,
        1
    );
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn bad_input_is_a_typed_error_and_writes_nothing(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use jobq_producer::Error;
    let producer = Producer::with_options(
        db.clone(),
        ProducerOptions {
            max_payload_bytes: 1024,
            ..Default::default()
        },
    );
    let long = "q".repeat(300);
    let cases: Vec<(NewJob, &str)> = vec![
        (NewJob::raw("noop", "{not json"), "payload"),
        (NewJob::raw("noop", "{\"a\": 1} trailing"), "payload"),
        (
            NewJob::raw("noop", format!("\"{}\"", "x".repeat(2000))),
            "payload",
        ),
        (
            NewJob::raw("noop", "{}").queue("x'; DROP TABLE jobq_jobs; --"),
            "queue",
        ),
        (NewJob::raw("noop", "{}").queue(long.clone()), "queue"),
        (NewJob::raw("noop", "{}").queue(""), "queue"),
        (NewJob::raw("k' OR '1'='1", "{}"), "kind"),
        (NewJob::raw(long.clone(), "{}"), "kind"),
        (NewJob::raw("", "{}"), "kind"),
        (NewJob::raw("noop", "{}").max_attempts(0), "max_attempts"),
    ];
    for (job, field) in cases {
        let e = producer.enqueue(job.clone()).await.unwrap_err();
        let named = match &e {
            Error::Invalid { field, .. } => *field,
            Error::InvalidJson(_) | Error::PayloadTooLarge { .. } => "payload",
            other => panic!("unexpected error {other:?}"),
        };
        assert_eq!(named, field, "{e}");
        assert!(
            e.to_string().contains(field),
            "message names the field: {e}"
        );
        // One bad job in a batch: the good ones are not written either.
        let batch = vec![NewJob::json("noop", json!({})), job];
        assert!(producer.enqueue_many(batch).await.is_err());
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_transitions").await, 0);
}

#[sqlx::test(migrations = false)]
async fn delayed_and_prioritised(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let producer = Producer::new(pool.clone());
    let later = producer
        .enqueue(NewJob::json("noop", json!({})).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let soon = producer
        .enqueue(NewJob::json("noop", json!({})).delay(Duration::from_millis(300)))
        .await
        .unwrap();
    let at = producer
        .enqueue(
            NewJob::json("noop", json!({})).run_at(chrono::Utc::now() + chrono::Duration::hours(2)),
        )
        .await
        .unwrap();
    assert_eq!(state_of(&db, later.0).await, "scheduled");
    assert_eq!(state_of(&db, soon.0).await, "scheduled");
    assert_eq!(state_of(&db, at.0).await, "scheduled");
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(20), "the due job ran", || async {
        state_of(&db, soon.0).await == "completed"
    })
    .await;
    w.stop().await;
    assert_eq!(state_of(&db, later.0).await, "scheduled");
    let (_, h) = jobq_worker::job_with_history(&db, soon).await.unwrap();
    let events: Vec<&str> = h.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(events, vec!["enqueued", "promoted", "claimed", "completed"]);
    assert_consistent(&db).await;

    // Priority: with one slot, lower numbers run first.
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut r = Registry::new();
    let o = order.clone();
    r.register_json("prio", move |v: serde_json::Value, _ctx: JobContext| {
        let o = o.clone();
        async move {
            o.lock().unwrap().push(v["p"].as_i64().unwrap());
            Ok::<(), JobError>(())
        }
    })
    .unwrap();
    let jobs = [5i16, -2, 9, 0, 3]
        .iter()
        .map(|p| NewJob::json("prio", json!({"p": p})).priority(*p))
        .collect();
    producer.enqueue_many(jobs).await.unwrap();
    let mut s1 = s.clone();
    s1.worker.concurrency = 1;
    s1.worker.max_batch = 1;
    let w = start(pool.clone(), r, &s1);
    wait_for(Duration::from_secs(20), "prio jobs done", || async {
        order.lock().unwrap().len() == 5
    })
    .await;
    w.stop().await;
    assert_eq!(*order.lock().unwrap(), vec![-2, 0, 3, 5, 9]);
}

#[sqlx::test(migrations = false)]
async fn undecodable_payload_is_discarded_with_the_error(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let id = Producer::new(pool.clone())
        .enqueue(NewJob::json("sleep", json!({"ms": "soon"})))
        .await
        .unwrap();
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(20), "job discarded", || async {
        state_of(&db, id.0).await == "discarded"
    })
    .await;
    w.stop().await;
    let (job, h) = jobq_worker::job_with_history(&db, id).await.unwrap();
    assert_eq!(job.attempt, 1);
    let err = job.last_error.unwrap();
    assert!(
        err.contains("payload does not decode") && err.contains("invalid type"),
        "{err}"
    );
    assert_eq!(h.last().unwrap().error.as_deref(), Some(err.as_str()));
    assert_consistent(&db).await;
}

/// A job of a kind no worker of its queue registered does not wait silently or spin: its
/// attempt fails with an error naming the kind and the worker, it is retried with backoff like
/// any error, and discarded when its attempts are used up. Other jobs run meanwhile.
#[sqlx::test(migrations = false)]
async fn unknown_kind_fails_visibly(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let producer = Producer::new(pool.clone());
    let foreign = producer
        .enqueue(NewJob::json("someone_elses", json!({})).max_attempts(2))
        .await
        .unwrap();
    let mine = producer
        .enqueue(NewJob::json("noop", json!({})))
        .await
        .unwrap();
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(20), "both final", || async {
        state_of(&db, mine.0).await == "completed" && state_of(&db, foreign.0).await == "discarded"
    })
    .await;
    w.stop().await;
    let (job, h) = jobq_worker::job_with_history(&db, foreign).await.unwrap();
    assert_eq!(job.attempt, 2);
    let failed: Vec<_> = h.iter().filter(|t| t.event.as_str() == "failed").collect();
    assert_eq!(failed.len(), 1, "{h:?}");
    let e = failed[0].error.as_deref().unwrap();
    assert!(
        e.contains("no handler registered for kind \"someone_elses\"") && e.contains("runs"),
        "{e}"
    );
    assert_consistent(&db).await;
}

/// A producer enqueuing inside its own REPEATABLE READ transaction (the server default, as in
/// callers' own pools) takes no locking read, so another producer's enqueue is not blocked
/// while that transaction stays open.
#[sqlx::test(migrations = false)]
async fn enqueue_in_a_repeatable_read_transaction_blocks_no_other_producer(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use sqlx::{Connection, Executor};
    let mut caller = sqlx::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    caller
        .execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    let mut tx = caller.begin().await.unwrap();
    let producer = Producer::new(db.clone());
    let jobs = (0..3).map(|_| NewJob::json("noop", json!({}))).collect();
    producer.enqueue_many_in(&mut tx, jobs).await.unwrap();
    // The caller's transaction stays open; another producer must not wait for it.
    let other = tokio::time::timeout(Duration::from_secs(3), async {
        producer
            .enqueue_many((0..3).map(|_| NewJob::json("noop", json!({}))).collect())
            .await
    })
    .await
    .expect("another producer's enqueue waited for the open transaction")
    .unwrap();
    assert_eq!(other.len(), 3);
    tx.commit().await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 6);
    assert_consistent(&db).await;
}

/// One producer's uncommitted enqueue must not stall a queue: in both claim modes the committed
/// jobs behind it are claimed promptly while that transaction stays open (named-lock mode once
/// waited on the uncommitted row while holding the queue's lock).
async fn uncommitted_enqueue_stalls_nothing(db: MySqlPool, mode: ClaimMode) {
    use sqlx::Connection;
    let s = settings(&db, mode).await;
    let pool = pool(&s).await;
    let producer = Producer::new(pool.clone());
    let mut open = sqlx::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let mut tx = open.begin().await.unwrap();
    let pending = producer
        .enqueue_in(&mut tx, NewJob::json("noop", json!({})))
        .await
        .unwrap();
    let committed = producer
        .enqueue_many((0..5).map(|_| NewJob::json("noop", json!({}))).collect())
        .await
        .unwrap();
    let w = start(pool.clone(), builtins(), &s);
    wait_for(
        Duration::from_secs(3),
        "committed jobs claimed past the uncommitted one",
        || async {
            count(
                &db,
                "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
            )
            .await
                == 5
        },
    )
    .await;
    tx.commit().await.unwrap();
    wait_for(Duration::from_secs(10), "the late job too", || async {
        state_of(&db, pending.0).await == "completed"
    })
    .await;
    w.stop().await;
    assert_eq!(committed.len(), 5);
    // The producer's own connection (REPEATABLE READ, the server default) is closed before the
    // open-transaction check, which is about the worker's sessions: one CI run saw a REPEATABLE
    // READ transaction with this enqueue's 2 rows still listed after its COMMIT.
    open.close().await.unwrap();
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn uncommitted_enqueue_stalls_nothing_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    uncommitted_enqueue_stalls_nothing(db, ClaimMode::NamedLock).await;
}

#[sqlx::test(migrations = false)]
async fn uncommitted_enqueue_stalls_nothing_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    uncommitted_enqueue_stalls_nothing(db, ClaimMode::SkipLocked).await;
}
