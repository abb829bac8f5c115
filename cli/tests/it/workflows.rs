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

/// `jobq workflows enqueue FILE`, then list, show (table, dot, mermaid), retry and cancel.
#[sqlx::test(migrations = false)]
async fn workflows_from_the_command_line(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("flow.json");
    // `a` fails its first attempt, its only one: b and c are cancelled; a retry runs all three.
    std::fs::write(
        &doc,
        r#"{"name": "nightly",
            "jobs": [{"name": "a", "kind": "fail", "payload": {"times": 1}, "max_attempts": 1},
                     {"name": "b", "kind": "noop", "after": ["a"]},
                     {"name": "c", "kind": "noop", "after": ["b"]}],
            "on_finish": {"kind": "noop", "payload": {"done": true}}}"#,
    )
    .unwrap();
    let out = jobq_ok(&url, &["workflows", "enqueue", doc.to_str().unwrap()], &[]).await;
    let mut lines = out.lines();
    let id: u64 = lines
        .next()
        .unwrap()
        .strip_prefix("workflow ")
        .unwrap()
        .parse()
        .unwrap();
    let jobs: std::collections::BTreeMap<String, u64> = lines
        .map(|l| {
            let (n, j) = l.split_once(' ').unwrap();
            (n.to_owned(), j.parse().unwrap())
        })
        .collect();
    assert_eq!(jobs.len(), 3, "{out}");
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let w = start(pool(&s).await, builtins(), &s);
    wait_for(Duration::from_secs(20), "the workflow to fail", || async {
        state_of(&db, jobs["c"]).await == "cancelled"
    })
    .await;
    let listed = jobq_ok(&url, &["workflows"], &[]).await;
    assert!(
        listed.contains("nightly") && listed.contains("failed"),
        "{listed}"
    );
    let json = jobq_ok(&url, &["workflows", "--json"], &[]).await;
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["state"], "failed");
    assert_eq!(rows[0]["discarded"], 1);
    assert_eq!(rows[0]["cancelled"], 2);
    let show = jobq_ok(&url, &["workflows", "show", &id.to_string()], &[]).await;
    assert!(
        show.contains("discarded") && show.contains("on_finish: job"),
        "{show}"
    );
    let dot = jobq_ok(
        &url,
        &["workflows", "show", &id.to_string(), "--format", "dot"],
        &[],
    )
    .await;
    assert!(
        dot.contains("\"a\" -> \"b\"") && dot.contains("\"b\" -> \"c\""),
        "{dot}"
    );
    let mermaid = jobq_ok(
        &url,
        &["workflows", "show", &id.to_string(), "--format", "mermaid"],
        &[],
    )
    .await;
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("j0 --> j1"),
        "{mermaid}"
    );
    let retried = jobq_ok(&url, &["workflows", "retry", &id.to_string()], &[]).await;
    assert!(
        retried.contains("1 jobs available now, 2 waiting"),
        "{retried}"
    );
    wait_for(
        Duration::from_secs(20),
        "the retried workflow to complete",
        || async {
            count(
                &db,
                &format!(
                    "SELECT COUNT(*) FROM jobq_workflows WHERE id = {id} AND state = 'completed'"
                ),
            )
            .await
                == 1
        },
    )
    .await;
    // The finish callback ran for each end: the failure, then the success.
    wait_for(Duration::from_secs(20), "both on_finish callbacks", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE kind = 'noop' AND JSON_EXTRACT(payload, '$.done') AND state = 'completed'",
        )
        .await
            == 2
    })
    .await;
    // A completed workflow cannot be retried or cancelled: said so, exit 1.
    for act in ["retry", "cancel"] {
        let out = jobq_cli(&url, &["workflows", act, &id.to_string()]).await;
        assert!(!out.status.success(), "{act}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("workflow {id}")), "{err}");
    }
    // Cancel: the running job is asked to stop, its child cancelled at once.
    let sleepy = Workflow::new("sleepy")
        .job("long", NewJob::json("sleep", json!({"ms": 60000})))
        .job_after("next", NewJob::json("noop", json!({})), &["long"]);
    let wf = Producer::new(db.clone())
        .enqueue_workflow(sleepy)
        .await
        .unwrap();
    wait_for(Duration::from_secs(20), "the long job running", || async {
        state_of(&db, wf.jobs["long"].0).await == "running"
    })
    .await;
    let cancelled = jobq_ok(&url, &["workflows", "cancel", &wf.id.to_string()], &[]).await;
    assert!(
        cancelled.contains("1 jobs cancelled now, 1 running asked to stop"),
        "{cancelled}"
    );
    wait_for(Duration::from_secs(20), "the workflow cancelled", || async {
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM jobq_workflows WHERE id = {} AND state = 'cancelled' AND finished_at IS NOT NULL",
                wf.id
            ),
        )
        .await
            == 1
    })
    .await;
    w.stop().await;
    assert_consistent(&db).await;
    // A document with a typo: refused before connecting, nothing inserted.
    std::fs::write(
        &doc,
        r#"{"name": "x", "jobs": [{"kind": "noop", "afterr": []}]}"#,
    )
    .unwrap();
    let out = jobq_cli(&url, &["workflows", "enqueue", doc.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `afterr`"), "{err}");
}

/// All jobs of a workflow live on one server: one whose queues are routed to two servers is
/// refused with the reason before anything is written.
#[sqlx::test(migrations = false)]
async fn a_workflow_across_two_servers_is_refused(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // The route is all that decides; a second pool on the same database stands for the
    // other server.
    let other = MySqlPool::connect(&url_of(&db).await).await.unwrap();
    let p = Producer::new(db.clone()).route(["elsewhere"], other);
    let flow = Workflow::new("split")
        .job("a", NewJob::json("noop", json!({})))
        .job_after(
            "b",
            NewJob::json("noop", json!({})).queue("elsewhere"),
            &["a"],
        );
    let e = p.enqueue_workflow(flow).await.unwrap_err().to_string();
    assert!(e.contains("different database servers"), "{e}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_workflows").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
}
