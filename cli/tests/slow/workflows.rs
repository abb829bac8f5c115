//! Dependencies across real worker processes: a diamond runs in order in both claim modes; a
//! fan-out of 1,000 and a fan-in of 1,000 start their child exactly once; `kill -9` of a
//! worker while parents complete loses no release and starts no child early. Order is proved
//! from the history: every child's first `claimed` transition comes after each of its
//! parents' `completed` one.

use std::time::Duration;

use jobq_worker::{NewJob, Producer, Workflow};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;
use crate::procs::WorkerProc;

fn record(ms: u64) -> NewJob {
    NewJob::json("record", json!({"ms": ms}))
}

/// Edges whose child was claimed before its parent completed (or whose parent never did).
async fn early_starts(db: &MySqlPool) -> Vec<(u64, u64)> {
    sqlx::query_as(
        "SELECT d.parent_id, d.child_id FROM jobq_deps d \
         WHERE (SELECT MIN(t.id) FROM jobq_transitions t WHERE t.job_id = d.child_id AND t.event = 'claimed') \
             < COALESCE((SELECT MAX(t.id) FROM jobq_transitions t WHERE t.job_id = d.parent_id AND t.event = 'completed'), \
                        18446744073709551615)",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

/// Two worker processes of `jobq work` in `mode`.
fn workers(url: &str, mode: &str, env: &[(&str, &str)]) -> Vec<WorkerProc> {
    let args = ["--concurrency", "4", "--claim-mode", mode];
    (0..2).map(|_| WorkerProc::spawn(url, &args, env)).collect()
}

async fn diamonds_run_in_order(db: MySqlPool, mode: &str) {
    const DIAMONDS: usize = 25;
    let url = url_of(&db).await;
    jobq_worker::builtin::setup(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    for i in 0..DIAMONDS {
        let flow = Workflow::new(format!("diamond-{i}"))
            .job("a", record(3))
            .job_after("b", record(3), &["a"])
            .job_after("c", record(3), &["a"])
            .job_after("d", record(3), &["b", "c"]);
        producer.enqueue_workflow(flow).await.unwrap();
    }
    let mut procs = workers(&url, mode, &[("JOBQ_WORKER__POLL_INTERVAL", "50ms")]);
    let jobs = 4 * DIAMONDS as i64;
    wait_for(Duration::from_secs(90), "every diamond done", || async {
        completed_jobs(&db).await == jobs
    })
    .await;
    for p in &mut procs {
        p.stop_cleanly();
    }
    assert_eq!(
        early_starts(&db).await,
        [],
        "children started before a parent"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'claimed'"
        )
        .await,
        jobs,
        "each job claimed once"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_workflows WHERE state = 'completed' AND completed = 4 \
             AND finished_at IS NOT NULL"
        )
        .await,
        DIAMONDS as i64
    );
    assert_effects_once(&db, jobs as usize).await;
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn diamonds_run_in_order_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    diamonds_run_in_order(db, "skip-locked").await;
}

#[sqlx::test(migrations = false)]
async fn diamonds_run_in_order_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    diamonds_run_in_order(db, "named-lock").await;
}

/// root → 1,000 children → one sink: the fan-out releases 1,000 jobs in one transaction, the
/// fan-in counts 1,000 endings off one row; the sink runs once, after all of them.
#[sqlx::test(migrations = false)]
async fn a_fan_out_and_fan_in_of_a_thousand_start_the_sink_once(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    jobq_worker::builtin::setup(&db).await.unwrap();
    let names: Vec<String> = (0..1000).map(|i| format!("part-{i}")).collect();
    let mut flow = Workflow::new("fan").job("root", record(0));
    for n in &names {
        flow = flow.job_after(n.clone(), record(0), &["root"]);
    }
    let parts: Vec<&str> = names.iter().map(String::as_str).collect();
    let flow = flow.job_after("sink", record(0), &parts);
    let wf = Producer::new(db.clone())
        .enqueue_workflow(flow)
        .await
        .unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'blocked'"
        )
        .await,
        1001
    );
    let mut procs = workers(&url, "skip-locked", &[]);
    wait_for(Duration::from_secs(120), "the whole fan done", || async {
        completed_jobs(&db).await == 1002
    })
    .await;
    for p in &mut procs {
        p.stop_cleanly();
    }
    let sink = wf.jobs["sink"].0;
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM jobq_transitions WHERE job_id = {sink} AND event = 'claimed'"
            )
        )
        .await,
        1,
        "the sink started once"
    );
    assert_eq!(
        early_starts(&db).await,
        [],
        "children started before a parent"
    );
    assert_effects_once(&db, 1002).await;
    assert_consistent(&db).await;
}

/// `kill -9` of a worker while the parents of a fan-in complete: its jobs are rescued and run
/// again, no release is lost (nothing stays blocked), and no child starts before its parents.
#[sqlx::test(migrations = false)]
async fn a_kill_while_parents_complete_loses_no_release(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    jobq_worker::builtin::setup(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    // Ten fan-ins of 30 parents, each with a follower: 310 jobs per round of releases.
    for f in 0..10 {
        let names: Vec<String> = (0..30).map(|i| format!("p{i}")).collect();
        let mut flow = Workflow::new(format!("fan-in-{f}"));
        for n in &names {
            flow = flow.job(n.clone(), record(30));
        }
        let parts: Vec<&str> = names.iter().map(String::as_str).collect();
        flow = flow
            .job_after("join", record(5), &parts)
            .job_after("after", record(5), &["join"]);
        producer.enqueue_workflow(flow).await.unwrap();
    }
    let env = [
        ("JOBQ_WORKER__POLL_INTERVAL", "50ms"),
        ("JOBQ_WORKER__LEASE_TTL", "2s"),
        ("JOBQ_WORKER__HEARTBEAT_INTERVAL", "500ms"),
        ("JOBQ_MAINTENANCE__INTERVAL", "200ms"),
    ];
    let mut procs = workers(&url, "skip-locked", &env);
    wait_for(
        Duration::from_secs(60),
        "a third of the parents done",
        || async { completed_jobs(&db).await >= 100 },
    )
    .await;
    procs[0].kill9();
    procs.push(WorkerProc::spawn(
        &url,
        &["--concurrency", "4", "--claim-mode", "skip-locked"],
        &env,
    ));
    wait_for(Duration::from_secs(120), "every job done", || async {
        completed_jobs(&db).await == 320
    })
    .await;
    for p in procs.iter_mut().skip(1) {
        p.stop_cleanly();
    }
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'blocked'"
        )
        .await,
        0,
        "a release was lost"
    );
    assert_eq!(
        early_starts(&db).await,
        [],
        "children started before a parent"
    );
    assert_effects_once(&db, 320).await;
    assert_consistent(&db).await;
}

/// Batches ended by two worker processes racing: each callback of the outcome is enqueued
/// exactly once, the others never.
#[sqlx::test(migrations = false)]
async fn batch_callbacks_run_once_under_racing_completions(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    jobq_worker::builtin::setup(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let callbacks = |batch: jobq_worker::Batch, tag: &str| {
        batch
            .on_success(NewJob::json("echo", json!({"on": "success", "batch": tag})))
            .on_failure(NewJob::json("echo", json!({"on": "failure", "batch": tag})))
            .on_finish(NewJob::json("echo", json!({"on": "finish", "batch": tag})))
    };
    let mut good = jobq_worker::Batch::new("good");
    for _ in 0..200 {
        good = good.job(record(1));
    }
    let good = producer
        .enqueue_batch(callbacks(good, "good"))
        .await
        .unwrap();
    let mut bad = jobq_worker::Batch::new("bad");
    for i in 0..100 {
        bad = bad.job(if i == 50 {
            NewJob::json("fail", json!({})).max_attempts(1)
        } else {
            record(1)
        });
    }
    let bad = producer.enqueue_batch(callbacks(bad, "bad")).await.unwrap();
    let mut procs = workers(
        &url,
        "skip-locked",
        &[("JOBQ_WORKER__POLL_INTERVAL", "50ms")],
    );
    // 300 jobs, then two callbacks per batch.
    wait_for(
        Duration::from_secs(90),
        "both batches and their callbacks",
        || async {
            count(
                &db,
                "SELECT COUNT(*) FROM jobq_jobs WHERE state IN ('completed', 'discarded')",
            )
            .await
                == 304
        },
    )
    .await;
    for p in &mut procs {
        p.stop_cleanly();
    }
    let ran: Vec<(String, String)> = sqlx::query_as(
        "SELECT CAST(JSON_UNQUOTE(JSON_EXTRACT(payload, '$.batch')) AS CHAR), \
                CAST(JSON_UNQUOTE(JSON_EXTRACT(payload, '$.on')) AS CHAR) \
         FROM jobq_jobs WHERE kind = 'echo' ORDER BY 1, 2",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        ran,
        [
            pair("bad", "failure"),
            pair("bad", "finish"),
            pair("good", "finish"),
            pair("good", "success")
        ]
    );
    let states: Vec<(u64, String, u32, u32)> = sqlx::query_as(
        "SELECT id, CAST(state AS CHAR), completed, discarded FROM jobq_workflows ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        states,
        [
            (good.id.0, "completed".into(), 200, 0),
            (bad.id.0, "failed".into(), 99, 1)
        ]
    );
    assert_consistent(&db).await;
}

async fn flow_finished(db: &MySqlPool, id: u64) -> Option<String> {
    sqlx::query_scalar(
        "SELECT CAST(state AS CHAR) FROM jobq_workflows WHERE id = ? AND finished_at IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(db)
    .await
    .unwrap()
}

/// Microseconds of `event` of job `id` on the database clock (its first such transition).
async fn at(db: &MySqlPool, id: u64, event: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, '2000-01-01', MIN(at)) FROM jobq_transitions WHERE job_id = ? AND event = ?",
    )
    .bind(id)
    .bind(event)
    .fetch_one(db)
    .await
    .unwrap()
}

/// With real worker processes: each failure policy, fail_fast, a duplicate unique workflow,
/// and a workflow's retry and cancel from the command line.
#[sqlx::test(migrations = false)]
async fn policies_fail_fast_retry_and_cancel_with_real_workers(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    jobq_worker::builtin::setup(&db).await.unwrap();
    let producer = Producer::new(db.clone());
    let fail_once = || NewJob::json("fail", json!({"times": 1})).max_attempts(1);
    let policy = |p: jobq_worker::OnParentFailure| record(1).on_parent_failure(p);
    use jobq_worker::OnParentFailure::*;
    // p fails while q still runs: `continue` starts at once, `ignore` after q, `cancel` never.
    let policies = producer
        .enqueue_workflow(
            Workflow::new("policies")
                .job("p", fail_once())
                .job("q", record(1500))
                .job_after("cancel", policy(Cancel), &["p", "q"])
                .job_after("ignore", policy(Ignore), &["p", "q"])
                .job_after("continue", policy(Continue), &["p", "q"]),
        )
        .await
        .unwrap();
    // fail_fast: a's failure cancels b (not started: due in an hour) and c.
    let fast = producer
        .enqueue_workflow(
            Workflow::new("fast")
                .job("a", fail_once())
                .job("b", record(1).delay(Duration::from_secs(3600)))
                .job_after("c", record(1), &["a"])
                .fail_fast(true),
        )
        .await
        .unwrap();
    let unique = || {
        Workflow::new("once")
            .job("x", record(1))
            .unique_key("once/2026-12-07")
    };
    let first = producer.enqueue_workflow(unique()).await.unwrap();
    let again = producer.enqueue_workflow(unique()).await.unwrap();
    assert!(again.duplicate && again.id == first.id && again.jobs == first.jobs);
    let mut procs = workers(
        &url,
        "skip-locked",
        &[("JOBQ_WORKER__POLL_INTERVAL", "50ms")],
    );
    wait_for(Duration::from_secs(60), "both workflows ended", || async {
        flow_finished(&db, policies.id.0).await.is_some()
            && flow_finished(&db, fast.id.0).await.is_some()
    })
    .await;
    let j = |name: &str| policies.jobs[name].0;
    assert_eq!(
        (
            state_of(&db, j("cancel")).await,
            state_of(&db, j("ignore")).await,
            state_of(&db, j("continue")).await
        ),
        ("cancelled".into(), "completed".into(), "completed".into())
    );
    let q_done = at(&db, j("q"), "completed").await.unwrap();
    assert!(
        at(&db, j("continue"), "claimed").await.unwrap() < q_done,
        "continue ran before q ended"
    );
    assert!(
        at(&db, j("ignore"), "claimed").await.unwrap() > q_done,
        "ignore waited for q"
    );
    assert_eq!(
        flow_finished(&db, policies.id.0).await.as_deref(),
        Some("failed")
    );
    let f = |name: &str| fast.jobs[name].0;
    for name in ["b", "c"] {
        assert_eq!(state_of(&db, f(name)).await, "cancelled", "{name}");
    }
    // Retry from the command line: a runs again (its second attempt succeeds), b and c too.
    let out = jobq_ok(&url, &["workflows", "retry", &fast.id.to_string()], &[]).await;
    assert!(out.contains("2 jobs available now, 1 waiting"), "{out}");
    wait_for(
        Duration::from_secs(60),
        "the retried workflow completed",
        || async { flow_finished(&db, fast.id.0).await.as_deref() == Some("completed") },
    )
    .await;
    assert!(at(&db, f("c"), "unblocked").await.is_some());
    // Cancel from the command line: the running job stops, its child never runs.
    let long = producer
        .enqueue_workflow(Workflow::new("long").job("slow", record(60_000)).job_after(
            "next",
            record(1),
            &["slow"],
        ))
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "the slow job running", || async {
        state_of(&db, long.jobs["slow"].0).await == "running"
    })
    .await;
    let out = jobq_ok(&url, &["workflows", "cancel", &long.id.to_string()], &[]).await;
    assert!(
        out.contains("1 jobs cancelled now, 1 running asked to stop"),
        "{out}"
    );
    wait_for(
        Duration::from_secs(30),
        "the cancelled workflow ended",
        || async { flow_finished(&db, long.id.0).await.as_deref() == Some("cancelled") },
    )
    .await;
    assert_eq!(at(&db, long.jobs["next"].0, "claimed").await, None);
    for p in &mut procs {
        p.stop_cleanly();
    }
    assert_consistent(&db).await;
}
