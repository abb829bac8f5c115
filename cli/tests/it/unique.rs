//! Unique jobs: the database's unique index decides, for concurrent producers, in bulk, from
//! the CLI and from plain SQL; a finished job frees its key.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::MySqlPool;

use crate::common::*;

/// 16 producers on 16 connections enqueue the same unique job at the same moment: one job,
/// 15 duplicates, all answered with its id.
#[sqlx::test(migrations = false)]
async fn sixteen_concurrent_enqueues_of_one_key_create_one_job(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let pool = MySqlPoolOptions::new()
        .min_connections(16)
        .max_connections(16)
        .connect_with((*db.connect_options()).clone())
        .await
        .unwrap();
    let producer = Producer::new(pool);
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (producer, barrier) = (producer.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            producer
                .insert(NewJob::json("noop", json!({ "from": i })).unique_key("report:2026-12"))
                .await
                .unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let fresh: Vec<_> = results.iter().filter(|e| !e.duplicate).collect();
    assert_eq!(fresh.len(), 1, "{results:?}");
    assert!(results.iter().all(|e| e.id == fresh[0].id), "{results:?}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 1);
    assert_eq!(
        count(&db, "SELECT CAST(duplicates AS SIGNED) FROM jobq_jobs").await,
        15
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_transitions").await,
        1,
        "one enqueued transition"
    );
}

/// Once the job is finished its key is free: the next enqueue creates a new job.
#[sqlx::test(migrations = false)]
async fn a_finished_job_frees_its_key(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let producer = Producer::new(pool.clone());
    let job = || NewJob::json("noop", json!({})).unique_key("nightly");
    let first = producer.insert(job()).await.unwrap();
    assert!(!first.duplicate);
    let again = producer.insert(job()).await.unwrap();
    assert_eq!((again.id, again.duplicate), (first.id, true));
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(10), "the job completed", || async {
        state_of(&db, first.id.0).await == "completed"
    })
    .await;
    let next = producer.insert(job()).await.unwrap();
    assert!(!next.duplicate, "a completed job no longer holds its key");
    assert_ne!(next.id, first.id);
    wait_for(
        Duration::from_secs(10),
        "the second job completed",
        || async { state_of(&db, next.id.0).await == "completed" },
    )
    .await;
    w.stop().await;
    assert_consistent(&db).await;
}

/// A duplicate of a running unique job, enqueued inside a producer's transaction that stays
/// open, does not lock the running job's row: the job completes on its first attempt while the
/// transaction is still open (before, its completion waited for the producer's lock, failed
/// with 1205, and the job was run again).
#[sqlx::test(migrations = false)]
async fn a_duplicate_in_an_open_transaction_leaves_the_running_job_alone(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let producer = Producer::new(pool.clone());
    let job = || NewJob::json("sleep", json!({"ms": 800})).unique_key("nightly");
    let first = producer.insert(job()).await.unwrap();
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(10), "the job running", || async {
        state_of(&db, first.id.0).await == "running"
    })
    .await;
    let mut tx = db.begin().await.unwrap();
    let dup = producer.insert_many_in(&mut tx, vec![job()]).await.unwrap();
    assert_eq!((dup[0].id, dup[0].duplicate), (first.id, true));
    wait_for(
        Duration::from_secs(15),
        "the running job completed while the producer's transaction is open",
        || async { state_of(&db, first.id.0).await == "completed" },
    )
    .await;
    tx.commit().await.unwrap();
    w.stop().await;
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM jobq_transitions WHERE job_id = {} AND to_state = 'running'",
                first.id.0
            )
        )
        .await,
        1,
        "the job ran once"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 1);
    assert_consistent(&db).await;
}

/// In a bulk insert duplicates are reported per job and do not fail the batch; keys are per
/// kind.
#[sqlx::test(migrations = false)]
async fn bulk_inserts_report_duplicates_per_job(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let out = producer
        .insert_many(vec![
            NewJob::json("noop", json!({})).unique_key("a"),
            NewJob::json("noop", json!({})),
            NewJob::json("noop", json!({})).unique_key("a"),
            NewJob::json("noop", json!({})).unique_key("b"),
            NewJob::json("record", json!({})).unique_key("a"),
        ])
        .await
        .unwrap();
    let dup: Vec<bool> = out.iter().map(|e| e.duplicate).collect();
    assert_eq!(dup, [false, false, true, false, false]);
    assert_eq!(out[2].id, out[0].id);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 4);
    assert_consistent(&db).await;
    // Keys are checked like any input: too long is a typed error, and nothing is written.
    let err = producer
        .insert(NewJob::json("noop", json!({})).unique_key("k".repeat(256)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unique_key"), "{err}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 4);
}

/// `jobq enqueue --unique-key` prints the existing id and `duplicate`.
#[sqlx::test(migrations = false)]
async fn the_cli_says_duplicate(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let enqueue = || {
        let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
            .args(["enqueue", "noop", "--unique-key", "K"])
            .env("JOBQ_DATABASE_URL", &url)
            .env("JOBQ_LOG__LEVEL", "warn")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    let id = enqueue();
    assert!(id.parse::<u64>().is_ok(), "{id}");
    assert_eq!(enqueue(), format!("{id} duplicate"));
}

/// Plain SQL producers use the same index (README "Unique jobs").
#[sqlx::test(migrations = false)]
async fn plain_sql_producers_get_the_same_guarantee(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    for _ in 0..3 {
        sqlx::query(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at, max_attempts, created_at, unique_key) \
             VALUES ('default', 'noop', '{}', 'available', UTC_TIMESTAMP(6), 3, UTC_TIMESTAMP(6), 'sql-key') \
             ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), duplicates = duplicates + 1",
        )
        .execute(&db)
        .await
        .unwrap();
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 1);
    let plain = sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at, max_attempts, created_at, unique_key) \
         VALUES ('default', 'noop', '{}', 'available', UTC_TIMESTAMP(6), 3, UTC_TIMESTAMP(6), 'sql-key')",
    )
    .execute(&db)
    .await;
    assert!(plain.is_err(), "a plain INSERT of a duplicate is refused");
}

/// Debounce: a duplicate with `OnDuplicate::Replace` replaces the payload and run-at of a job
/// that never started (recording a `replaced` transition), and leaves a started one alone.
#[sqlx::test(migrations = false)]
async fn a_replacing_duplicate_debounces_a_waiting_job(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use jobq_worker::OnDuplicate;
    let producer = Producer::new(db.clone());
    let job = |n: u32| {
        NewJob::json("noop", json!({ "n": n }))
            .unique_key("search-index")
            .on_duplicate(OnDuplicate::Replace)
    };
    let first = producer.insert(job(1)).await.unwrap();
    let later = producer
        .insert(job(2).delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(
        (later.id, later.duplicate, later.replaced),
        (first.id, true, true)
    );
    let (payload, state): (String, String) = sqlx::query_as(
        "SELECT CAST(payload AS CHAR), CAST(state AS CHAR) FROM jobq_jobs WHERE id = ?",
    )
    .bind(first.id.0)
    .fetch_one(&db)
    .await
    .unwrap();
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        (payload["n"].as_u64(), state.as_str()),
        (Some(2), "scheduled")
    );
    // A plain duplicate (keep) changes nothing.
    let kept = producer
        .insert(NewJob::json("noop", json!({ "n": 3 })).unique_key("search-index"))
        .await
        .unwrap();
    assert!(kept.duplicate && !kept.replaced);
    // Once it has started, a replacing duplicate keeps it as it is.
    sqlx::query(
        "UPDATE jobq_jobs SET state = 'running', attempt = 1, claim_token = X'00', \
         lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 HOUR WHERE id = ?",
    )
    .bind(first.id.0)
    .execute(&db)
    .await
    .unwrap();
    let late = producer.insert(job(4)).await.unwrap();
    assert!(late.duplicate && !late.replaced);
    let history: Vec<(Option<String>, String, String)> = sqlx::query_as(
        "SELECT CAST(from_state AS CHAR), CAST(to_state AS CHAR), CAST(event AS CHAR) \
         FROM jobq_transitions WHERE job_id = ? ORDER BY id",
    )
    .bind(first.id.0)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        history,
        [
            (None, "available".into(), "enqueued".into()),
            (
                Some("available".into()),
                "scheduled".into(),
                "replaced".into()
            ),
        ]
    );
}

/// Debounce through a connection outside any transaction (each statement commits on its
/// own): the replacement and its `replaced` transition commit together in a transaction of
/// their own that locks the row first, so it is reported as replaced only when it was. Unique
/// keys are compared as the server compares
/// text (a PAD SPACE collation): keys that differ only by trailing spaces are one key.
#[sqlx::test(migrations = false)]
async fn a_replacing_duplicate_outside_a_transaction_is_atomic(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use jobq_worker::OnDuplicate;
    let producer = Producer::new(db.clone());
    let job = |n: u32| {
        NewJob::json("noop", json!({ "n": n }))
            .unique_key("outside")
            .on_duplicate(OnDuplicate::Replace)
    };
    let first = producer.insert(job(1)).await.unwrap();
    let mut conn = db.acquire().await.unwrap();
    let again = producer
        .insert_many_in(&mut conn, vec![job(2)])
        .await
        .unwrap();
    assert_eq!(
        (again[0].id, again[0].duplicate, again[0].replaced),
        (first.id, true, true)
    );
    let replaced = count(
        &db,
        &format!(
            "SELECT COUNT(*) FROM jobq_transitions WHERE job_id = {} AND event = 'replaced'",
            first.id.0
        ),
    )
    .await;
    assert_eq!(replaced, 1);
    // Trailing spaces: the same key.
    let spaced = producer
        .insert(NewJob::json("noop", json!({})).unique_key("outside  "))
        .await
        .unwrap();
    assert_eq!((spaced.id, spaced.duplicate), (first.id, true));
}

/// With a period, a finished job keeps its key until the period has passed since it finished.
#[sqlx::test(migrations = false)]
async fn a_unique_period_holds_the_key_after_completion(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let job = || {
        NewJob::json("noop", json!({}))
            .unique_key("hourly-sync")
            .unique_period(Duration::from_secs(3600))
    };
    let first = producer.insert(job()).await.unwrap();
    // Finished a minute ago: still within the hour.
    let finish = |ago: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query(&format!(
                "UPDATE jobq_jobs SET state = 'completed', \
                 finalized_at = UTC_TIMESTAMP(6) - INTERVAL {ago} WHERE id = ?"
            ))
            .bind(first.id.0)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    finish("1 MINUTE").await;
    let held = producer.insert(job()).await.unwrap();
    assert_eq!((held.id, held.duplicate), (first.id, true));
    // Finished over an hour ago: the hold is over and a new job is inserted.
    finish("61 MINUTE").await;
    let next = producer.insert(job()).await.unwrap();
    assert!(!next.duplicate);
    assert_ne!(next.id, first.id);
    assert_eq!(
        count(
            &db,
            "SELECT CAST(duplicates AS SIGNED) FROM jobq_jobs WHERE unique_period_us IS NULL"
        )
        .await,
        1,
        "the old job counts the one real duplicate"
    );
    // A period needs a key.
    let err = producer
        .insert(NewJob::json("noop", json!({})).unique_period(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unique_period"), "{err}");
}

/// Two callers' transactions racing for two unique keys in opposite order deadlock inside the
/// server, which rolls one back whole: that caller gets `Error::RolledBack` (run the whole
/// transaction again), not a bare database error; the other goes on.
#[sqlx::test(migrations = false)]
async fn a_deadlock_inside_a_callers_transaction_says_run_it_again(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let job = |k: &str| vec![NewJob::json("noop", json!({})).unique_key(k)];
    let mut a = db.begin().await.unwrap();
    let mut b = db.begin().await.unwrap();
    producer.insert_many_in(&mut a, job("k1")).await.unwrap();
    producer.insert_many_in(&mut b, job("k2")).await.unwrap();
    let (ra, rb) = tokio::join!(
        producer.insert_many_in(&mut a, job("k2")),
        producer.insert_many_in(&mut b, job("k1")),
    );
    let victim = |r: &Result<_, jobq_worker::ProducerError>| {
        matches!(r, Err(jobq_worker::ProducerError::RolledBack(_)))
    };
    assert!(
        victim(&ra) != victim(&rb),
        "exactly one is the deadlock's victim: {ra:?} {rb:?}"
    );
    let (lost, kept) = if victim(&ra) { (ra, rb) } else { (rb, ra) };
    assert!(kept.is_ok(), "{kept:?}");
    let text = lost.unwrap_err().to_string();
    assert!(text.contains("run the whole transaction again"), "{text}");
}

/// 16 `jobq enqueue --unique-key` processes over 3 keys while a worker runs: the server's
/// deadlocks between them are run again, so every call exits 0 (before, some exited 1 with
/// error 1213).
#[sqlx::test(migrations = false)]
async fn concurrent_cli_unique_enqueues_all_succeed(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let w = start(pool.clone(), builtins(), &s);
    let url = url_of(&db).await;
    let mut tasks = Vec::new();
    for p in 0..16 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..8 {
                let key = format!("k{}", (p + i) % 3);
                let out = jobq_cli(&url, &["enqueue", "noop", "--unique-key", &key]).await;
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    w.stop().await;
    assert!(
        failures.is_empty(),
        "{} of 128 calls failed: {failures:?}",
        failures.len()
    );
    assert!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await >= 3);
}
