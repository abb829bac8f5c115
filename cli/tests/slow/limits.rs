//! Flow limits across real worker processes, in both claim modes: a concurrency key's limit
//! holds through a `kill -9`, and a queue's rate limit holds in every sliding window.

use std::collections::BTreeMap;
use std::time::Duration;

use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;
use crate::procs::WorkerProc;

/// Every attempt as (key, start, end) in µs on the database clock: from its `claimed`
/// transition to the transition that ended it (completion, rescue, …). An attempt still open
/// ends "now".
async fn attempts(db: &MySqlPool) -> Vec<(String, i64, i64)> {
    let rows: Vec<(u64, String, String, i64)> = sqlx::query_as(
        "SELECT t.job_id, CAST(t.event AS CHAR), CAST(j.concurrency_key AS CHAR), \
                TIMESTAMPDIFF(MICROSECOND, '1970-01-01', t.at) \
         FROM jobq_transitions t JOIN jobq_jobs j ON j.id = t.job_id \
         WHERE t.from_state = 'running' OR t.to_state = 'running' ORDER BY t.job_id, t.id",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut open: BTreeMap<u64, (String, i64)> = BTreeMap::new();
    for (job, event, key, at) in rows {
        if event == "claimed" {
            open.insert(job, (key, at));
        } else if let Some((key, start)) = open.remove(&job) {
            out.push((key, start, at));
        }
    }
    for (_, (key, start)) in open {
        out.push((key, start, i64::MAX));
    }
    out
}

async fn key_limit_holds_through_a_kill(db: MySqlPool, mode: &str) {
    const KEYS: usize = 12;
    const PER_KEY: usize = 4;
    let url = url_of(&db).await;
    jobq_worker::builtin::setup(&db).await.unwrap();
    let jobs = (0..KEYS * PER_KEY)
        .map(|i| {
            NewJob::json("record", json!({"ms": 400}))
                .concurrency_key(format!("customer-{}", i % KEYS))
        })
        .collect();
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
    let env = [
        ("JOBQ_WORKER__POLL_INTERVAL", "100ms"),
        ("JOBQ_WORKER__LEASE_TTL", "2s"),
        ("JOBQ_WORKER__HEARTBEAT_INTERVAL", "500ms"),
        ("JOBQ_MAINTENANCE__INTERVAL", "200ms"),
    ];
    // 16 claimers (slots) in two processes, for 12 keys of limit 1: neither process can hold
    // every key, so both run jobs.
    let args = [
        "--queues",
        "default",
        "--concurrency",
        "8",
        "--claim-mode",
        mode,
    ];
    let mut a = WorkerProc::spawn(&url, &args, &env);
    let mut b = WorkerProc::spawn(&url, &args, &env);
    let done = "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'";
    // Kill `a` while it runs a job with most of its 400 ms still ahead (worker ids carry the
    // process id).
    let a_running = format!(
        "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running' AND worker_id LIKE '%-{}-%' \
           AND attempted_at > UTC_TIMESTAMP(6) - INTERVAL 150000 MICROSECOND",
        a.pid()
    );
    wait_for(
        Duration::from_secs(60),
        "jobs under way, some in a",
        || async { count(&db, done).await >= 12 && count(&db, &a_running).await > 0 },
    )
    .await;
    // Jobs beyond the limit are waiting meanwhile, never running beside their key's.
    assert!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'waiting'"
        )
        .await
            > 0
    );
    let victim: Vec<(u64, String)> = sqlx::query_as(&format!(
        "SELECT id, CAST(state AS CHAR) FROM jobq_jobs WHERE worker_id LIKE '%-{}-%' AND state = 'running'",
        a.pid()
    ))
    .fetch_all(&db)
    .await
    .unwrap();
    a.kill9();
    eprintln!("killed a while it ran {victim:?}");
    let total = (KEYS * PER_KEY) as i64;
    wait_for(Duration::from_secs(90), "every job completed", || async {
        count(&db, done).await == total
    })
    .await;
    b.stop_cleanly();

    // For each key, no two attempts overlapped in time (a killed attempt lasts until its
    // rescue, so its key stayed taken until then).
    let mut by_key: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (key, start, end) in attempts(&db).await {
        by_key.entry(key).or_default().push((start, end));
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, mut spans) in by_key {
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "key {key}: an attempt started at {} while another ran {}..{}",
                w[1].0,
                w[0].0,
                w[0].1
            );
        }
    }
    assert!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'rescued'"
        )
        .await
            > 0,
        "the kill left running jobs for the rescue: {:?}",
        sqlx::query_as::<_, (u64, String, String, String)>(
            "SELECT job_id, CAST(event AS CHAR), CAST(to_state AS CHAR), CAST(at AS CHAR) FROM jobq_transitions ORDER BY id"
        )
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| victim.iter().any(|v| v.0 == t.0))
        .collect::<Vec<_>>()
    );
    assert!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'throttled'"
        )
        .await
            > 0
    );
    assert_effects_once(&db, KEYS * PER_KEY).await;
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn key_limit_holds_through_a_kill_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    key_limit_holds_through_a_kill(db, "skip-locked").await;
}

#[sqlx::test(migrations = false)]
async fn key_limit_holds_through_a_kill_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    key_limit_holds_through_a_kill(db, "named-lock").await;
}

/// Starts (µs, from the `claimed` transitions) in order.
async fn starts(db: &MySqlPool, key: Option<&str>) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', t.at) FROM jobq_transitions t \
         JOIN jobq_jobs j ON j.id = t.job_id \
         WHERE t.event = 'claimed' AND (? IS NULL OR j.concurrency_key = ?) ORDER BY t.at",
    )
    .bind(key)
    .bind(key)
    .fetch_all(db)
    .await
    .unwrap()
}

/// No `max + 1` starts within one period: `starts[i + max] - starts[i] >= period`.
fn assert_sliding(starts: &[i64], max: usize, period_us: i64, what: &str) {
    for (i, w) in starts.windows(max + 1).enumerate() {
        assert!(
            w[max] - w[0] >= period_us,
            "{what}: {} starts within {} µs (from start {i})",
            max + 1,
            w[max] - w[0]
        );
    }
}

async fn rate_limit_holds(db: MySqlPool, mode: &str) {
    const JOBS: usize = 200;
    let url = url_of(&db).await;
    let jobs = (0..JOBS).map(|_| NewJob::json("noop", json!({}))).collect();
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
    // Also 30 jobs of one customer whose key rate is 5/s (in a queue of their own).
    let keyed = (0..30)
        .map(|_| {
            NewJob::json("noop", json!({}))
                .queue("api")
                .concurrency_key("acme")
        })
        .collect();
    Producer::new(db.clone()).enqueue_many(keyed).await.unwrap();
    let env = [
        ("JOBQ_WORKER__POLL_INTERVAL", "100ms"),
        ("JOBQ_QUEUES__DEFAULT__RATE_LIMIT", "20/1s"),
        ("JOBQ_QUEUES__API__KEY_RATE_LIMIT", "5/1s"),
        ("JOBQ_QUEUES__API__KEY_LIMIT", "30"),
        ("JOBQ_MAINTENANCE__INTERVAL", "100ms"),
    ];
    // 32 slots in two processes.
    let args = [
        "--queues",
        "default,api",
        "--concurrency",
        "16",
        "--claim-mode",
        mode,
    ];
    let mut a = WorkerProc::spawn(&url, &args, &env);
    let mut b = WorkerProc::spawn(&url, &args, &env);
    wait_for(Duration::from_secs(60), "every job completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == (JOBS + 30) as i64
    })
    .await;
    a.stop_cleanly();
    b.stop_cleanly();
    let all = starts(&db, None).await;
    let keyed = starts(&db, Some("acme")).await;
    let queue: Vec<i64> = {
        let mut q: Vec<i64> = sqlx::query_scalar(
            "SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', t.at) FROM jobq_transitions t \
             JOIN jobq_jobs j ON j.id = t.job_id WHERE t.event = 'claimed' AND j.queue = 'default' ORDER BY t.at",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        q.sort();
        q
    };
    assert_eq!(queue.len(), JOBS);
    assert_eq!(all.len(), JOBS + 30, "each job started once");
    assert_sliding(&queue, 20, 1_000_000, "queue rate 20/1s");
    assert_sliding(&keyed, 5, 1_000_000, "key rate 5/1s");
    // 200 starts at 20 per second: the first 20 at once, the last 20 nine periods later at the
    // earliest; the window's tenths make it at most about 10% slower. Bounds generous for a
    // loaded machine: the limit is met, not undercut by much.
    let span = Duration::from_micros((queue[JOBS - 1] - queue[0]) as u64);
    assert!(span >= Duration::from_secs(9), "{span:?}");
    assert!(span < Duration::from_secs(20), "{span:?}");
    // Deferred jobs of the key went through `scheduled` and came back.
    assert!(
        count(&db, "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'throttled' AND to_state = 'scheduled'").await > 0
    );
    assert_consistent(&db).await;
}

#[sqlx::test(migrations = false)]
async fn rate_limit_holds_skip_locked(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    rate_limit_holds(db, "skip-locked").await;
}

#[sqlx::test(migrations = false)]
async fn rate_limit_holds_named_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    rate_limit_holds(db, "named-lock").await;
}
