//! Partitioned history (`maintenance.history_partition`) under load: `jobq migrate` converts
//! `jobq_transitions`, then the maintenance leader drops the partitions past retention and
//! creates the missing ones ahead while workers complete jobs at full rate. Nothing of the
//! run's history is lost, the old history goes by whole partitions, and no worker reports a
//! wait or an error.

use std::time::Duration;

use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;
use crate::procs::WorkerProc;

const LAYOUT: [(&str, &str); 2] = [
    ("JOBQ_MAINTENANCE__HISTORY_PARTITION", "1h"),
    ("JOBQ_MAINTENANCE__HISTORY_RETENTION", "2h"),
];

/// The bounds of the history partitions, as seconds from now on the database clock (`None`:
/// `pmax`).
async fn bounds(db: &MySqlPool) -> Vec<(String, Option<i64>)> {
    sqlx::query_as(
        "SELECT CAST(PARTITION_NAME AS CHAR), \
                IF(PARTITION_DESCRIPTION = 'MAXVALUE', NULL, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(), \
                   CAST(TRIM(BOTH '''' FROM PARTITION_DESCRIPTION) AS DATETIME))) \
         FROM information_schema.PARTITIONS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobq_transitions' \
         ORDER BY PARTITION_ORDINAL_POSITION",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

/// 3,000 history rows of jobs long gone (ids above 1,000,000), from 3 to 5.5 hours ago.
async fn old_history(db: &MySqlPool) {
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, to_state, event, attempt, at) \
         SELECT 1000000 + seq, 'completed', 'completed', 1, \
                UTC_TIMESTAMP(6) - INTERVAL 3 HOUR - INTERVAL (seq * 3) SECOND \
         FROM seq_1_to_3000",
    )
    .execute(db)
    .await
    .unwrap();
}

/// `jobq migrate` with the extra settings `env`, off the test's thread.
async fn migrate_with(url: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"));
    cmd.arg("migrate")
        .env("JOBQ_DATABASE_URL", url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied());
    tokio::task::spawn_blocking(move || cmd.output().expect("run jobq"))
        .await
        .unwrap()
}

/// How many partitions `jobq_transitions` has (0: one table).
async fn partitions(db: &MySqlPool) -> i64 {
    count(
        db,
        "SELECT COUNT(*) FROM information_schema.PARTITIONS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'jobq_transitions' AND PARTITION_NAME IS NOT NULL",
    )
    .await
}

/// 3,000 history rows of jobs long gone, from 3 to 5.5 hours ago, then 40,000 no-op jobs; the
/// table is converted by `jobq migrate` (hourly partitions, kept 2 h), and the two newest
/// partitions ahead are removed. Two workers (not leading) start; once they have completed
/// some jobs a third process, the leader, starts and rolls: the old history goes with its
/// partition and the partitions ahead come back, while the others go on completing.
/// Meanwhile `jobq migrate` rolls as well (allowed while workers run) and refuses to change
/// the layout (which copies the table). In the end every job has its whole history.
#[sqlx::test(migrations = false)]
async fn retention_drops_whole_partitions_while_workers_complete(db: MySqlPool) {
    const JOBS: i64 = 40_000;
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    old_history(&db).await;
    let jobs: Vec<NewJob> = (0..JOBS).map(|_| NewJob::json("noop", json!({}))).collect();
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
    let said = jobq_ok(&url, &["migrate"], &LAYOUT).await;
    assert!(said.is_empty(), "{said}");
    let before = bounds(&db).await;
    let (newest, rest) = before[..before.len() - 1].split_last().unwrap();
    assert_eq!(before.last().unwrap(), &("pmax".to_owned(), None));
    // Hourly partitions: the run's hour, 48 ahead, and the hour and older of the old rows.
    assert!(newest.1.unwrap() >= 48 * 3600, "{before:?}");
    assert!(rest[0].1.unwrap() <= -2 * 3600, "{before:?}");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_transitions").await,
        3000 + JOBS
    );
    // Leave the roll something to create: the two newest partitions ahead.
    sqlx::query(&format!(
        "ALTER TABLE jobq_transitions DROP PARTITION {}, {}",
        newest.0,
        rest.last().unwrap().0
    ))
    .execute(&db)
    .await
    .unwrap();

    let mut env = LAYOUT.to_vec();
    env.push(("JOBQ_MAINTENANCE__LEAD", "false"));
    let mut procs: Vec<WorkerProc> = (0..2)
        .map(|_| WorkerProc::spawn(&url, &["--concurrency", "8"], &env))
        .collect();
    wait_for(
        Duration::from_secs(60),
        "the workers completing jobs",
        || async { completed_jobs(&db).await >= 2000 },
    )
    .await;
    procs.push(WorkerProc::spawn(&url, &["--concurrency", "1"], &LAYOUT));
    // The old rows' partitions are dropped, whole, while jobs complete.
    wait_for(
        Duration::from_secs(60),
        "the old partitions dropped",
        || async { bounds(&db).await[0].1.is_some_and(|b| b > -2 * 3600) },
    )
    .await;
    let at_drop = completed_jobs(&db).await;
    assert!(
        at_drop < JOBS,
        "the drop came after the run ({at_drop} of {JOBS} completed)"
    );
    // A roll by `jobq migrate` is allowed while workers run; a change of layout is not.
    jobq_ok(&url, &["migrate"], &LAYOUT).await;
    let refused = migrate_with(&url, &[("JOBQ_MAINTENANCE__HISTORY_PARTITION", "0s")]).await;
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("copies the table") && why.contains("worker(s) are running"),
        "{why}"
    );
    wait_for(Duration::from_secs(120), "every job completed", || async {
        completed_jobs(&db).await == JOBS
    })
    .await;
    for p in &mut procs {
        p.stop_cleanly();
    }
    for p in &procs {
        let log = p.log_text();
        assert!(
            !log.contains(" WARN ") && !log.contains(" ERROR "),
            "a worker warned:\n{log}"
        );
    }
    assert!(
        procs[2]
            .log_text()
            .contains("rolled the history partitions"),
        "{}",
        procs[2].log_text()
    );
    let after = bounds(&db).await;
    assert!(
        after.iter().all(|(_, b)| b.is_none_or(|b| b > -2 * 3600)),
        "{after:?}"
    );
    assert!(after[after.len() - 2].1.unwrap() >= 48 * 3600, "{after:?}");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE job_id > 1000000"
        )
        .await,
        0
    );
    // Every job's history whole (enqueued, claimed, completed, with any give-back between),
    // and no history without its job.
    assert_consistent(&db).await;
}

/// A job's history read by `jobq job` spans partitions: its enqueue is dated an hour back
/// before the table is converted (so it lands in the partition before the run's), and the
/// command still shows all of it. Retention then deletes the job and leaves its history;
/// `jobq migrate` without the key leaves the layout alone, and with `0s` makes one table again.
#[sqlx::test(migrations = false)]
async fn a_history_across_partitions_reads_whole(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let id = Producer::new(db.clone())
        .enqueue(NewJob::json("noop", json!({})))
        .await
        .unwrap();
    sqlx::query("UPDATE jobq_transitions SET at = at - INTERVAL 1 HOUR WHERE job_id = ?")
        .bind(id.0)
        .execute(&db)
        .await
        .unwrap();
    jobq_ok(&url, &["migrate"], &LAYOUT).await;
    let mut w = WorkerProc::spawn(&url, &["--concurrency", "1"], &LAYOUT);
    wait_for(Duration::from_secs(30), "the job completed", || async {
        completed_jobs(&db).await == 1
    })
    .await;
    w.stop_cleanly();
    let mut holding = Vec::new();
    for (name, _) in bounds(&db).await {
        let n = count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM jobq_transitions PARTITION (`{name}`) WHERE job_id = {id}"
            ),
        )
        .await;
        if n > 0 {
            holding.push((name, n));
        }
    }
    // (Three when the claim and the completion fell either side of an hour.)
    assert!(holding.len() >= 2, "{holding:?}");
    let shown = jobq_ok(&url, &["job", &id.to_string(), "--json"], &[]).await;
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let events: Vec<&str> = v["history"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|t| t["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["enqueued", "claimed", "completed"], "{v}");
    // Pruned, the job goes and its history stays to its partitions.
    let pruned = jobq_worker::prune_jobs(&db, jobq_worker::JobState::Completed, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
    let history = format!("SELECT COUNT(*) FROM jobq_transitions WHERE job_id = {id}");
    assert_eq!(count(&db, &history).await, 3);
    // Without the key, `jobq migrate` leaves the layout as it is; with 0s, one table again,
    // the history whole.
    let kept = partitions(&db).await;
    assert!(kept > 48, "{kept} partitions");
    let out = migrate_with(&url, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (One more ahead if an hour began meanwhile.)
    assert!(partitions(&db).await >= kept);
    let out = migrate_with(&url, &[("JOBQ_MAINTENANCE__HISTORY_PARTITION", "0s")]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(partitions(&db).await, 0);
    assert_eq!(count(&db, &history).await, 3);
}

/// A leader whose configuration does not set the layout (here: no history keys at all) rolls a
/// partitioned table ahead but drops nothing, since it does not know the retention meant for
/// it, and says so.
#[sqlx::test(migrations = false)]
async fn a_leader_not_told_the_layout_drops_nothing(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    old_history(&db).await;
    jobq_ok(&url, &["migrate"], &LAYOUT).await;
    let oldest = bounds(&db).await[0].clone();
    assert!(oldest.1.unwrap() <= -2 * 3600, "{oldest:?}");
    let mut w = WorkerProc::spawn(&url, &["--concurrency", "1"], &[]);
    wait_for(Duration::from_secs(30), "the leader's warning", || async {
        w.log_text().contains("none dropped")
    })
    .await;
    w.stop_cleanly();
    assert_eq!(bounds(&db).await[0], oldest);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE job_id > 1000000"
        )
        .await,
        3000
    );
}
