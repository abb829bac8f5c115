//! Workflows through the public API and the CLI: a child reads its parents' results by name,
//! in the handler's transaction path and the batched path alike; `jobq enqueue --after`.

use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{builtin, JobContext, JobState, NewJob, Producer, Registry, Workflow};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

#[sqlx::test(migrations = false)]
async fn a_child_reads_its_parents_results_by_name(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let mut r = Registry::new();
    builtin::register(&mut r).unwrap();
    // One parent stores its result with a batched completion, the other in its transaction.
    r.register_json("give", |v: serde_json::Value, ctx: JobContext| async move {
        if v["in_tx"].as_bool() == Some(true) {
            let mut tx = ctx.tx().await?;
            sqlx::query("SELECT 1").execute(&mut **tx).await?;
        }
        ctx.set_result(&v["n"])
    })
    .unwrap();
    r.register_json("sum", |_: serde_json::Value, ctx: JobContext| async move {
        let left: i64 = ctx.parent_result("left").await?.unwrap_or(0);
        let right: i64 = ctx.parent_result("right").await?.unwrap_or(0);
        let parents = ctx.parents().await?;
        let states: Vec<String> = parents
            .iter()
            .map(|p| format!("{}={:?}", p.name, p.state))
            .collect();
        ctx.set_result(&json!({"sum": left + right, "parents": states}))
    })
    .unwrap();
    let flow = Workflow::new("sum")
        .job("left", NewJob::json("give", json!({"n": 40})))
        .job(
            "right",
            NewJob::json("give", json!({"n": 2, "in_tx": true})),
        )
        .job_after("total", NewJob::json("sum", json!({})), &["left", "right"]);
    let p = Producer::new(db.clone());
    let wf = p.enqueue_workflow(flow).await.unwrap();
    let w = start(pool, r, &s);
    let end = p
        .wait_for(wf.jobs["total"], Duration::from_secs(20))
        .await
        .unwrap()
        .expect("the child finished");
    w.stop().await;
    assert_eq!(end.state, JobState::Completed, "{end:?}");
    assert_eq!(
        end.result,
        Some(json!({"sum": 42, "parents": ["left=Some(Completed)", "right=Some(Completed)"]}))
    );
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn enqueue_after_waits_for_its_parents(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let parent = jobq_ok(&url, &["enqueue", "noop", "--delay", "1h"], &[]).await;
    let parent = parent.trim();
    let child = jobq_ok(
        &url,
        &[
            "enqueue",
            "noop",
            "--after",
            parent,
            "--on-parent-failure",
            "continue",
        ],
        &[],
    )
    .await;
    let child: u64 = child.trim().parse().unwrap();
    assert_eq!(state_of(&db, child).await, "blocked");
    // Cancelling the parent releases a `continue` child at once.
    jobq_ok(&url, &["cancel", parent], &[]).await;
    assert_eq!(state_of(&db, child).await, "available");
    // A parent that does not exist: refused, with the id, nothing inserted.
    let out = jobq_cli(&url, &["enqueue", "noop", "--after", "999999"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parent job 999999 does not exist"), "{err}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 2);
    // A policy without parents makes no sense: refused before connecting.
    let out = jobq_cli(&url, &["enqueue", "noop", "--on-parent-failure", "ignore"]).await;
    assert!(!out.status.success());
}
