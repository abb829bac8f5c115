//! Job results: `ctx.set_result`, `Producer::wait_for`, `jobq enqueue --wait`, `jobq job`.

use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{builtin, JobContext, JobState, NewJob, Producer, Registry, MAX_RESULT_BYTES};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// Results are stored with the completion on every completion path (batched, and in the
/// handler's transaction), returned by `wait_for` and shown by `jobq job`; a result over the
/// limit discards the job with a clear error; `wait_for` times out cleanly.
#[sqlx::test(migrations = false)]
async fn results_are_stored_and_awaited(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let mut r = Registry::new();
    builtin::register(&mut r).unwrap();
    r.register_json(
        "in_tx",
        |v: serde_json::Value, ctx: JobContext| async move {
            let mut tx = ctx.tx().await?;
            sqlx::query("SELECT 1").execute(&mut **tx).await?;
            ctx.set_result(&json!({"sum": v["a"].as_i64().unwrap_or(0) + 1}))
        },
    )
    .unwrap();
    r.register_json("huge", |_: serde_json::Value, ctx: JobContext| async move {
        ctx.set_result(&"x".repeat(MAX_RESULT_BYTES))
    })
    .unwrap();
    let p = Producer::new(db.clone());
    let echo = p
        .enqueue(NewJob::json("echo", json!({"hello": ["wörld", 1]})))
        .await
        .unwrap();
    let in_tx = p
        .enqueue(NewJob::json("in_tx", json!({"a": 41})))
        .await
        .unwrap();
    let huge = p.enqueue(NewJob::json("huge", json!({}))).await.unwrap();
    // 40 KiB: allowed, written with its job alone rather than in a batch.
    let big_value = "y".repeat(40 * 1024);
    let big = p
        .enqueue(NewJob::json("echo", json!({ "big": big_value })))
        .await
        .unwrap();
    let slow = p
        .enqueue(NewJob::json("sleep", json!({"ms": 3000})))
        .await
        .unwrap();
    let w = start(pool, r, &s);
    let end = p
        .wait_for(echo, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state, JobState::Completed);
    assert_eq!(end.result, Some(json!({"hello": ["wörld", 1]})));
    let end = p
        .wait_for(big, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state, JobState::Completed);
    assert_eq!(end.result, Some(json!({ "big": big_value })));
    let end = p
        .wait_for(in_tx, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.result, Some(json!({"sum": 42})));
    let end = p
        .wait_for(huge, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state, JobState::Discarded);
    assert!(end.error.unwrap().contains("over the limit of 65536"));
    assert_eq!(
        p.wait_for(slow, Duration::from_millis(100)).await.unwrap(),
        None,
        "not finished within the timeout"
    );
    assert!(p
        .wait_for(jobq_worker::JobId(999_999), Duration::from_millis(10))
        .await
        .is_err());
    let out = jobq_cli(&url, &["job", &in_tx.to_string(), "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["job"]["result"], json!({"sum": 42}), "{v}");
    w.stop().await;
    assert_consistent(&db).await;
}

/// `jobq enqueue … --wait` prints the result and exits 0; 1 when the job failed for good; 3
/// when the timeout passed first.
#[sqlx::test(migrations = false)]
async fn enqueue_wait(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let w = start(pool(&s).await, builtins(), &s);
    let out = jobq_cli(
        &url,
        &["enqueue", "echo", "--payload", r#"{"a":1}"#, "--wait"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"a":1}"#);
    let out = jobq_cli(&url, &["enqueue", "noop", "--wait", "--timeout", "5s"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(" completed\n"));
    let out = jobq_cli(
        &url,
        &[
            "enqueue",
            "fail",
            "--payload",
            r#"{"times":9}"#,
            "--max-attempts",
            "1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ended discarded"));
    let out = jobq_cli(
        &url,
        &[
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms":3000}"#,
            "--wait",
            "--timeout",
            "200ms",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("did not finish within 200ms"));
    let out = jobq_cli(&url, &["enqueue", "noop", "--wait", "--count", "2"]).await;
    assert!(!out.status.success());
    w.stop().await;
}
