//! Command handlers: a Python program run for each job of a kind (README "Command handlers").

use std::time::Duration;

use jobq_config::{ClaimMode, KindOverrides};
use jobq_worker::{NewJob, Producer, Registry};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// Whether process `pid` is gone (or a zombie: dead, not yet reaped).
fn gone(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Test settings in which kind `py` runs the fixture program (with `grace` as
/// `worker.cancel_grace` and `timeout` as its `job_timeout`), and a registry holding its
/// command handler.
async fn python_kind(
    db: &MySqlPool,
    grace: Duration,
    timeout: Option<Duration>,
) -> (jobq_config::Settings, Registry) {
    let mut s = settings(db, ClaimMode::SkipLocked).await;
    s.worker.cancel_grace = grace;
    s.kinds.insert(
        "py".into(),
        KindOverrides {
            command: Some(vec!["python3".into(), fixture()]),
            job_timeout: timeout,
            ..Default::default()
        },
    );
    let mut r = Registry::new();
    jobq_worker::register_commands(&mut r, &s.validate().unwrap()).unwrap();
    (s, r)
}

fn fixture() -> String {
    format!(
        "{}/tests/fixtures/command_handler.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The program sees its payload and environment; each exit status gives the documented
/// outcome; a hanging program is killed at its timeout.
#[sqlx::test(migrations = false)]
async fn a_python_program_handles_a_kind(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let (s, r) = python_kind(
        &db,
        Duration::from_millis(300),
        Some(Duration::from_secs(2)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let p = Producer::new(db.clone());
    let job =
        |mode: &str| NewJob::json("py", json!({"mode": mode, "pidfile": pidfile})).queue("default");
    let ok = p.enqueue(job("ok")).await.unwrap();
    let discard = p.enqueue(job("discard")).await.unwrap();
    let snooze = p.enqueue(job("snooze")).await.unwrap();
    let fail = p.enqueue(job("fail").max_attempts(1)).await.unwrap();
    let hang = p.enqueue(job("hang").max_attempts(1)).await.unwrap();
    let fork_pidfile = dir.path().join("fork-pid");
    let fork = p
        .enqueue(NewJob::json(
            "py",
            json!({"mode": "fork", "pidfile": fork_pidfile}),
        ))
        .await
        .unwrap();
    let w = start(pool(&s).await, r, &s);
    let end = p
        .wait_for(ok, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    let result = end.result.unwrap();
    assert_eq!(result["payload"]["mode"], "ok");
    assert_eq!(result["env"]["JOBQ_JOB_ID"], ok.to_string());
    assert_eq!(result["env"]["JOBQ_JOB_ATTEMPT"], "1");
    assert_eq!(result["env"]["JOBQ_JOB_QUEUE"], "default");
    assert_eq!(result["env"]["JOBQ_JOB_KIND"], "py");
    assert_eq!(result["env"]["JOBQ_JOB_TOKEN"].as_str().unwrap().len(), 32);
    let end = p
        .wait_for(discard, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state.as_str(), "discarded");
    assert!(end.error.unwrap().contains("cannot ever work"));
    let end = p
        .wait_for(fail, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state.as_str(), "discarded", "one attempt only");
    let error = end.error.unwrap();
    assert!(
        error.contains("exited with 3") && error.contains("line one\nit broke"),
        "{error}"
    );
    wait_for(
        Duration::from_secs(20),
        "the snoozed job scheduled",
        || async { state_of(&db, snooze.0).await == "scheduled" },
    )
    .await;
    let delay: i64 = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(6), run_at) FROM jobq_jobs WHERE id = ?",
    )
    .bind(snooze.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        (240..=300).contains(&delay),
        "snoozed for {delay} s, not 5 min"
    );
    // The hanging one: killed at its 2 s timeout, then discarded (one attempt).
    let end = p
        .wait_for(hang, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state.as_str(), "discarded");
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let gone = format!("/proc/{}", pid.trim());
    wait_for(Duration::from_secs(5), "the program was killed", || {
        let gone = gone.clone();
        async move { !std::path::Path::new(&gone).exists() }
    })
    .await;
    // A program that left a process behind: it completes, and what it left is stopped.
    let end = p
        .wait_for(fork, Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(end.state.as_str(), "completed");
    let left = std::fs::read_to_string(&fork_pidfile).unwrap();
    let left = format!("/proc/{}", left.trim());
    wait_for(Duration::from_secs(5), "the grandchild was killed", || {
        let left = left.clone();
        async move { !std::path::Path::new(&left).exists() }
    })
    .await;
    w.stop().await;
    assert_consistent(&db).await;
}

/// A program that ignores SIGTERM, with a grandchild that does too, times out: the job runs
/// again only once the whole process group is gone (killed at the end of the grace), never
/// while the previous attempt's processes still run. Before, the attempt's outcome was
/// written at the timeout and the next attempt started during the grace.
#[sqlx::test(migrations = false)]
async fn a_timed_out_program_is_gone_before_the_job_runs_again(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let (mut s, r) = python_kind(
        &db,
        Duration::from_millis(1500),
        Some(Duration::from_secs(1)),
    )
    .await;
    s.worker.backoff_base = Duration::from_millis(10);
    s.worker.backoff_max = Duration::from_millis(10);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let job = Producer::new(db.clone())
        .enqueue(NewJob::json("py", json!({"mode": "stubborn", "log": log})).max_attempts(2))
        .await
        .unwrap();
    let w = start(pool(&s).await, r, &s);
    let end = Producer::new(db.clone())
        .wait_for(job, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the job ended");
    w.stop().await;
    assert_eq!(
        end.state.as_str(),
        "discarded",
        "two attempts, both timed out"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("start 1") && text.contains("start 2"),
        "{text}"
    );
    assert!(!text.contains("overlap"), "{text}");
    // Both attempts' grandchildren are gone too.
    for attempt in [1, 2] {
        let pid = std::fs::read_to_string(format!("{}.{attempt}", log.display())).unwrap();
        wait_for(Duration::from_secs(5), "the grandchild killed", || async {
            gone(pid.trim())
        })
        .await;
    }
    assert_consistent(&db).await;
}

/// A worker running one `stubborn` program (it and its grandchild ignore SIGTERM) with a
/// 120 s grace; returns the worker, the grandchild's pid and the directory of its files.
async fn stubborn_running(db: &MySqlPool) -> (Running, String, tempfile::TempDir) {
    jobq_producer::migrate(db).await.unwrap();
    let (s, r) = python_kind(db, Duration::from_secs(120), None).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    Producer::new(db.clone())
        .enqueue(NewJob::json("py", json!({"mode": "stubborn", "log": log})))
        .await
        .unwrap();
    let w = start(pool(&s).await, r, &s);
    let pidfile = format!("{}.1", log.display());
    wait_for(Duration::from_secs(20), "the program running", || {
        let pidfile = pidfile.clone();
        async move { std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty()) }
    })
    .await;
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    (w, pid, dir)
}

/// An immediate stop (a second signal) while a program that ignores SIGTERM runs, with a grace
/// far longer than the test: when the worker's run returns, the program's whole process group
/// is gone, the grandchild included (before, only the direct child was killed).
#[sqlx::test(migrations = false)]
async fn an_immediate_stop_leaves_no_program_behind(db: MySqlPool) {
    let (w, pid, _dir) = stubborn_running(&db).await;
    w.shutdown.kill();
    let stopped = tokio::time::timeout(Duration::from_secs(30), w.handle)
        .await
        .expect("the run did not end")
        .unwrap()
        .unwrap();
    assert!(
        matches!(stopped, jobq_worker::Stopped::Immediate(1)),
        "{stopped:?}"
    );
    wait_for(Duration::from_secs(5), "the grandchild killed", || async {
        gone(pid.trim())
    })
    .await;
}

/// A program whose job's lease is lost (here its claim token is replaced, as a rescue does)
/// is SIGKILLed at once, grandchild included, whatever `cancel_grace` says: the job may
/// already run elsewhere.
#[sqlx::test(migrations = false)]
async fn a_lost_lease_kills_the_program_at_once(db: MySqlPool) {
    let (w, pid, _dir) = stubborn_running(&db).await;
    sqlx::query(
        "UPDATE jobq_jobs SET claim_token = UNHEX(REPEAT('cd', 16)) WHERE state = 'running'",
    )
    .execute(&db)
    .await
    .unwrap();
    // The next heartbeat finds the lease gone; the group is killed then, not 120 s later.
    wait_for(Duration::from_secs(15), "the grandchild killed", || async {
        gone(pid.trim())
    })
    .await;
    w.stop().await;
}
