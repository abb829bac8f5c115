//! Recurring jobs across three worker processes: one job per slot, and a `kill -9` of the
//! leader hands the schedule to another process within seconds without doubling a slot.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;

use crate::common::*;
use crate::procs::WorkerProc;

/// The slots of schedule `tick`'s jobs, in order.
async fn slots(db: &MySqlPool) -> Vec<DateTime<Utc>> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(SUBSTRING(unique_key, 15) AS CHAR) FROM jobq_jobs \
         WHERE unique_key LIKE 'schedule:tick:%' ORDER BY unique_key",
    )
    .fetch_all(db)
    .await
    .unwrap();
    keys.iter()
        .map(|k| DateTime::parse_from_rfc3339(k).unwrap().with_timezone(&Utc))
        .collect()
}

/// The process id in the maintenance leader's worker id, if a leader holds the lease.
async fn leader_pid(db: &MySqlPool) -> Option<u32> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT CAST(holder AS CHAR) FROM jobq_locks \
         WHERE name = 'jobq:maintenance' AND expires_at > UTC_TIMESTAMP(6)",
    )
    .fetch_optional(db)
    .await
    .unwrap()
    .flatten();
    // host-PID-suffix
    let h = holder?;
    let mut parts = h.rsplitn(3, '-');
    parts.next()?;
    parts.next()?.parse().ok()
}

/// With maintenance every 200 ms (a lease of 1 s).
#[sqlx::test(migrations = false)]
async fn one_job_per_slot_across_three_workers_and_a_leader_kill(db: MySqlPool) {
    leader_kill(
        db,
        "200ms",
        Duration::from_millis(200),
        Duration::from_secs(1),
    )
    .await;
}

/// With maintenance every 3 s (a lease of 6.5 s): the takeover takes up to about 7.6 s, longer
/// than the old fixed window of 2 × interval + 1 s, which lost two slots each time.
#[sqlx::test(migrations = false)]
async fn a_slow_maintenance_interval_loses_no_slot_at_a_leader_kill(db: MySqlPool) {
    leader_kill(
        db,
        "3s",
        Duration::from_secs(3),
        Duration::from_millis(6500),
    )
    .await;
}

/// Three workers run a per-second schedule with maintenance every `interval` (`every`; leader
/// lease `lease`); the leader is killed with -9 mid-run. Another takes over within 7/6 of a lease
/// (plus slack), no slot is enqueued twice, and no second goes without its job: the
/// catch-up window is derived from the interval to cover the takeover.
async fn leader_kill(db: MySqlPool, interval: &str, every: Duration, lease: Duration) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jobq.toml");
    std::fs::write(
        &config,
        "[[schedules]]\nname = \"tick\"\ncron = \"* * * * * *\"\nkind = \"noop\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let args = ["--config", config.as_str(), "--concurrency", "2"];
    let env = [
        ("JOBQ_MAINTENANCE__INTERVAL", interval),
        ("JOBQ_WORKER__POLL_INTERVAL", "50ms"),
    ];
    let mut procs: Vec<WorkerProc> = (0..3)
        .map(|_| WorkerProc::spawn(&url, &args, &env))
        .collect();
    wait_for(Duration::from_secs(30), "a few slots", || async {
        slots(&db).await.len() >= 4
    })
    .await;
    // Kill the leader at the worst moment: just before its next pass, so the slots since its
    // last pass (an interval ago) wait for the whole takeover.
    let seen = slots(&db).await.len();
    wait_for(Duration::from_secs(30), "a pass", || async {
        slots(&db).await.len() > seen
    })
    .await;
    tokio::time::sleep(every.mul_f64(0.9)).await;
    let pid = leader_pid(&db).await.expect("a leader holds the lease");
    let victim = procs
        .iter()
        .position(|p| p.pid() == pid)
        .expect("the leader is one of ours");
    procs[victim].kill9();
    let killed_at = Instant::now();
    let before = slots(&db).await.len();
    wait_for(Duration::from_secs(30), "another leader", || async {
        leader_pid(&db).await.is_some_and(|p| p != pid)
    })
    .await;
    let takeover = killed_at.elapsed();
    let bound = lease * 7 / 6 + Duration::from_secs(3);
    assert!(
        takeover < bound,
        "takeover took {takeover:?}, beyond {bound:?}"
    );
    wait_for(
        Duration::from_secs(30),
        "slots after the takeover",
        || async { slots(&db).await.len() >= before + 4 },
    )
    .await;
    for (i, p) in procs.iter_mut().enumerate() {
        if i != victim {
            p.stop_cleanly();
        }
    }
    let all = slots(&db).await;
    // One job per slot: every slot distinct, on whole seconds.
    for w in all.windows(2) {
        assert!(w[1] > w[0], "slot {} enqueued twice", w[0]);
    }
    assert!(all.iter().all(|t| t.timestamp_subsec_micros() == 0));
    // No second without its job: the window covers the takeover.
    let span = (all[all.len() - 1] - all[0]).num_seconds() + 1;
    let missing = span - all.len() as i64;
    assert_eq!(
        missing, 0,
        "{missing} of {span} seconds have no job (takeover {takeover:?}): {all:?}"
    );
    assert_consistent(&db).await;
}
