//! A 3-node Galera cluster (the project's own helper, `support/galera.rs`), one `jobq work`
//! process per node on the same queue. Certification conflicts between nodes are frequent
//! here (row locks and SKIP LOCKED are node-local): the test checks that they never let a job
//! run twice at once, that a job's effect commits exactly once, and that every claim a worker
//! counted is a claim the database recorded (no phantom claims).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::galera::Galera;
use crate::procs::WorkerProc;

const JOBS: i64 = 1500;

/// A run of a job: when it started, and when it ended (if it did).
type Run = (DateTime<Utc>, Option<DateTime<Utc>>);

/// The sum of `jobq_jobs_claimed_total` for `record` on the worker listening on `port`.
fn claimed_total(port: u16) -> f64 {
    let (status, body) = crate::http::get(port, "/metrics").expect("scraping a worker");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("jobq_jobs_claimed_total{") && l.contains("kind=\"record\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_three_nodes_never_run_a_job_twice_at_once() {
    let g = Galera::start().await;
    let url1 = g.url(1, "jobq_galera");
    jobq_worker::migrate(&url1).await.unwrap();
    let db = MySqlPool::connect(&url1).await.unwrap();
    jobq_worker::builtin::setup(&db).await.unwrap();
    let jobs = (0..JOBS)
        .map(|_| NewJob::json("record", json!({"runs": true, "ms": 2})))
        .collect();
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
    let ports: Vec<u16> = (0..3).map(|_| crate::http::free_port()).collect();
    let mut workers: Vec<WorkerProc> = (1..=3)
        .map(|n| {
            let listen = format!("127.0.0.1:{}", ports[n - 1]);
            WorkerProc::spawn(
                &g.url(n, "jobq_galera"),
                &["--concurrency", "8"],
                &[("JOBQ_METRICS__LISTEN", listen.as_str())],
            )
        })
        .collect();
    let started = std::time::Instant::now();
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'")
                .fetch_one(&db)
                .await
                .unwrap();
        if done == JOBS {
            break;
        }
        for w in &mut workers {
            assert!(w.alive(), "a worker died:\n{}", w.log_text());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{done} of {JOBS} completed after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every worker has recorded everything it claimed (completions are written before the
    // job counts as completed, claims before the job runs).
    let counted: f64 = ports.iter().map(|&p| claimed_total(p)).sum();
    for w in &mut workers {
        w.stop_cleanly();
    }
    let claims: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobq_transitions WHERE event = 'claimed'")
            .fetch_one(&db)
            .await
            .unwrap();
    if counted != claims as f64 {
        let orphans: Vec<(u64, u32, String)> = sqlx::query_as(
            "SELECT r.job_id, r.attempt, CAST(r.worker AS CHAR) FROM jobq_demo_runs r WHERE NOT EXISTS \
             (SELECT 1 FROM jobq_transitions t WHERE t.job_id = r.job_id AND t.event = 'claimed' \
              AND t.attempt = r.attempt AND t.worker_id = r.worker) LIMIT 20",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        eprintln!("DIAG orphans: {orphans:?}");
        for (job, _, _) in orphans.iter().take(3) {
            let h: Vec<(String, String, u32, Option<String>, String)> = sqlx::query_as(
                "SELECT CAST(event AS CHAR), CAST(to_state AS CHAR), attempt, CAST(worker_id AS CHAR), CAST(at AS CHAR) FROM jobq_transitions WHERE job_id = ? ORDER BY id",
            )
            .bind(job)
            .fetch_all(&db)
            .await
            .unwrap();
            eprintln!("DIAG job {job} history: {h:?}");
            for w in &workers {
                for line in w.log_text().lines().filter(|l| {
                    l.contains(&format!("job_id={job} ")) || l.contains(&format!("job_id={job}}}"))
                }) {
                    eprintln!("DIAG log: {line}");
                }
            }
        }
    }
    assert_eq!(
        counted, claims as f64,
        "claims the workers counted vs claims the database recorded"
    );
    // Each job's effect committed exactly once.
    let (effects, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM jobq_demo_effects")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((effects, distinct), (JOBS, JOBS), "one effect per job");
    // No two runs of a job overlapped in time, and every run ended.
    let runs: Vec<(u64, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT job_id, started_at, ended_at FROM jobq_demo_runs ORDER BY job_id, started_at",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut by_job: HashMap<u64, Vec<Run>> = HashMap::new();
    for (job, start, end) in runs {
        by_job.entry(job).or_default().push((start, end));
    }
    assert_eq!(by_job.len() as i64, JOBS, "every job ran");
    let mut reruns = 0;
    for (job, runs) in &by_job {
        reruns += runs.len() - 1;
        for pair in runs.windows(2) {
            let end = pair[0].1.unwrap_or_else(|| {
                panic!("job {job}: a run that never ended was followed by another: {runs:?}")
            });
            assert!(end <= pair[1].0, "job {job}: two runs overlapped: {runs:?}");
        }
    }
    eprintln!(
        "galera: {JOBS} jobs, {claims} claims, {reruns} re-runs after a lost completion, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
