//! Per-job logs and progress (README "Logs and progress"): stored while the job runs, shown by
//! `jobq job` (text and JSON), followed by `jobq enqueue --wait --follow` and
//! `Producer::follow`; the per-attempt cap and its mark; progress fenced by the claim; both
//! deleted with their job by retention.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{
    builtin, Followed, JobContext, JobError, JobState, NewJob, Producer, Registry,
    LOG_LINE_OVERHEAD_BYTES, MAX_LOG_BYTES,
};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// The 1 KiB lines of `chatty` an attempt keeps.
const KEPT: usize = MAX_LOG_BYTES / (1024 + LOG_LINE_OVERHEAD_BYTES);

fn registry() -> Registry {
    let mut r = Registry::new();
    builtin::register(&mut r).unwrap();
    // Logs a kilobyte line 100 times: past the 64 KiB cap.
    r.register_json(
        "chatty",
        |_: serde_json::Value, ctx: JobContext| async move {
            for i in 0..100 {
                ctx.log(format!("{i:03} {}", "x".repeat(1020)));
            }
            Ok(())
        },
    )
    .unwrap();
    // Fails its first attempt, logging which attempt it is.
    r.register_json(
        "twice",
        |_: serde_json::Value, ctx: JobContext| async move {
            ctx.log(format!("attempt {} here", ctx.attempt()));
            if ctx.attempt() == 1 {
                return Err(JobError::retry("first attempt fails"));
            }
            Ok(())
        },
    )
    .unwrap();
    // Reports 40%, returns, and reports 99% from a task that outlives the attempt: a report
    // made after the attempt ended must not be stored.
    r.register_json("late", |_: serde_json::Value, ctx: JobContext| async move {
        ctx.progress(40.0, "most of it");
        let later = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            later.progress(99.0, "too late");
        });
        Ok(())
    })
    .unwrap();
    r
}

#[sqlx::test(migrations = false)]
async fn logs_and_progress_are_stored_shown_and_followed(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let w = start(pool, registry(), &s);
    let p = Producer::new(db.clone());

    // While it runs: 4 steps over 4 s; a report stored within a second, before the job
    // ends.
    let slow = p
        .enqueue(NewJob::json("sleep", json!({"ms": 4000, "steps": 4})))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "progress while running",
        || async {
            jobq_worker::job_progress(&db, slow)
                .await
                .unwrap()
                .is_some_and(|pr| pr.percent > 0.0)
        },
    )
    .await;
    // Written while it runs (a step a second; reports written once a second at most).
    let seen = jobq_worker::job_progress(&db, slow).await.unwrap().unwrap();
    assert!([25.0, 50.0, 75.0].contains(&seen.percent), "{seen:?}");
    assert_eq!(state_of(&db, slow.0).await, "running");
    // Producer::follow reports every line and each change of progress, then the end.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    let end = p
        .follow(slow, Duration::from_secs(20), move |f| {
            into.lock().unwrap().push(f)
        })
        .await
        .unwrap()
        .expect("ended");
    assert_eq!(end.state, JobState::Completed);
    let seen = seen.lock().unwrap().clone();
    let lines: Vec<String> = seen
        .iter()
        .filter_map(|f| match f {
            Followed::Log(l) => Some(l.line.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines,
        ["step 1 of 4", "step 2 of 4", "step 3 of 4", "step 4 of 4"]
    );
    let last = seen.iter().rev().find_map(|f| match f {
        Followed::Progress(pr) => Some(pr.clone()),
        _ => None,
    });
    let last = last.expect("progress followed");
    assert_eq!(
        (last.percent, last.message.as_deref(), last.attempt),
        (100.0, Some("slept 4 of 4 steps"), 1)
    );

    // `jobq enqueue --wait --follow`: lines and progress on stderr, the end on stdout.
    let out = jobq_cli(
        &url,
        &[
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms": 600, "steps": 2}"#,
            "--wait",
            "--follow",
            "--timeout",
            "20s",
        ],
    )
    .await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.trim_end().ends_with("completed"), "{stdout}");
    assert!(
        stderr.contains("attempt 1  step 1 of 2") && stderr.contains("attempt 1  step 2 of 2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("progress  100%  attempt 1  slept 2 of 2 steps"),
        "{stderr}"
    );

    // The cap: 64 KiB, each line counting its 1 KiB and its row's 64 bytes (60 lines), then
    // the mark, nothing after it.
    let chatty = p.enqueue(NewJob::json("chatty", json!({}))).await.unwrap();
    let twice = p.enqueue(NewJob::json("twice", json!({}))).await.unwrap();
    let late = p.enqueue(NewJob::json("late", json!({}))).await.unwrap();
    for id in [chatty, twice, late] {
        p.wait_for(id, Duration::from_secs(20))
            .await
            .unwrap()
            .expect("ended");
    }
    let logs = jobq_worker::job_logs(&db, chatty, 0, 1000).await.unwrap();
    let (mark, kept) = logs.split_last().unwrap();
    assert!(
        mark.truncated && mark.line.contains("reached 64 KiB"),
        "{mark:?}"
    );
    assert!(kept.iter().all(|l| !l.truncated));
    assert_eq!(kept.len(), KEPT, "{} lines", kept.len());
    assert!(kept
        .iter()
        .enumerate()
        .all(|(i, l)| l.line.starts_with(&format!("{i:03} "))));
    // Each attempt's lines carry their attempt.
    let logs = jobq_worker::job_logs(&db, twice, 0, 10).await.unwrap();
    let by_attempt: Vec<(u32, &str)> = logs.iter().map(|l| (l.attempt, l.line.as_str())).collect();
    assert_eq!(by_attempt, [(1, "attempt 1 here"), (2, "attempt 2 here")]);
    // A report after the attempt ended is not stored (the write is fenced by the claim).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pr = jobq_worker::job_progress(&db, late).await.unwrap().unwrap();
    assert_eq!(
        (pr.percent, pr.message.as_deref()),
        (40.0, Some("most of it"))
    );

    // `jobq job`: progress and log, in text and JSON.
    let shown = jobq_ok(&url, &["job", &twice.to_string()], &[]).await;
    assert!(shown.contains("log:\n"), "{shown}");
    assert!(
        shown.contains("attempt 1  attempt 1 here") && shown.contains("attempt 2  attempt 2 here"),
        "{shown}"
    );
    let shown = jobq_ok(&url, &["job", &slow.to_string()], &[]).await;
    assert!(
        shown.contains("  progress     100%  attempt 1  slept 4 of 4 steps"),
        "{shown}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&jobq_ok(&url, &["job", &chatty.to_string(), "--json"], &[]).await)
            .unwrap();
    let logs = shown["logs"].as_array().unwrap();
    assert_eq!(logs.len(), KEPT + 1);
    assert_eq!(logs.last().unwrap()["truncated"], json!(true));
    assert_eq!(shown["progress"], json!(null));
    w.stop().await;

    // Retention deletes them with their job.
    let pruned = jobq_worker::prune_jobs(&db, JobState::Completed, Duration::ZERO)
        .await
        .unwrap();
    assert!(pruned >= 5, "{pruned}");
    for table in ["jobq_job_logs", "jobq_job_progress"] {
        assert_eq!(
            count(&db, &format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}
