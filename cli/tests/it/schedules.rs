//! Recurring jobs in one process: one job per slot, pause and resume, run now, the listing.

use std::process::Command;
use std::time::Duration;

use jobq_config::{ClaimMode, MissedSlots, Overlap, ScheduleSettings};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

pub(crate) fn every_second(name: &str) -> ScheduleSettings {
    ScheduleSettings {
        name: name.into(),
        cron: "* * * * * *".into(),
        timezone: "UTC".into(),
        kind: "echo".into(),
        payload: json!({"from": name}),
        queue: None,
        priority: 0,
        max_attempts: Some(1),
        missed: MissedSlots::Latest,
        overlap: Overlap::Allow,
        unique: false,
    }
}

/// Slots (the unique keys' times) of schedule `name`'s jobs, in order.
pub(crate) async fn slots(db: &MySqlPool, name: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT CAST(SUBSTRING(unique_key, CHAR_LENGTH(?) + 1) AS CHAR) FROM jobq_jobs \
         WHERE unique_key LIKE CONCAT(?, '%') ORDER BY unique_key",
    )
    .bind(format!("schedule:{name}:"))
    .bind(format!("schedule:{name}:"))
    .fetch_all(db)
    .await
    .unwrap()
}

async fn jobq(url: &str, config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobq"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("JOBQ_DATABASE_URL", url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_schedule_enqueues_each_slot_once(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.schedules = vec![every_second("tick")];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("jobq.toml");
    std::fs::write(
        &config,
        "[[schedules]]\nname = \"tick\"\ncron = \"* * * * * *\"\nkind = \"echo\"\n",
    )
    .unwrap();
    let w = start(pool(&s).await, builtins(), &s);
    wait_for(Duration::from_secs(15), "four slots enqueued", || async {
        slots(&db, "tick").await.len() >= 4
    })
    .await;
    // Paused: no new slot; resumed: they come again.
    let out = jobq(&url, &config, &["schedules", "pause", "tick"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "paused tick",
        "{out:?}"
    );
    let before = slots(&db, "tick").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let paused = slots(&db, "tick").await.len();
    assert!(paused <= before + 1, "{before} -> {paused} while paused");
    let out = jobq(&url, &config, &["schedules", "--json"]).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], "tick");
    assert_eq!(list[0]["paused"], true);
    assert!(list[0]["next_slot"].is_string());
    jobq(&url, &config, &["schedules", "resume", "tick"]).await;
    wait_for(
        Duration::from_secs(10),
        "slots after the resume",
        || async { slots(&db, "tick").await.len() >= paused + 2 },
    )
    .await;
    // Run now: one more job, outside the slots.
    let out = jobq(&url, &config, &["schedules", "run", "tick"]).await;
    assert!(out.status.success(), "{out:?}");
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let key: String =
        sqlx::query_scalar("SELECT CAST(unique_key AS CHAR) FROM jobq_jobs WHERE id = ?")
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(key.starts_with("schedule:tick:manual:"), "{key}");
    let out = jobq(&url, &config, &["schedules", "pause", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no schedule named \"nope\""));
    w.stop().await;
    // Every slot once, each a whole second, all distinct.
    let all = slots(&db, "tick").await;
    let slot_keys: Vec<&String> = all.iter().filter(|k| !k.starts_with("manual:")).collect();
    let mut dedup = slot_keys.clone();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        slot_keys.len(),
        "a slot enqueued twice: {all:?}"
    );
    assert!(slot_keys.iter().all(|k| k.ends_with(".000000Z")), "{all:?}");
    assert_consistent(&db).await;
}
