//! `jobq jobs list`, `jobq workers`, `jobq prune`.

use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{act_on_jobs, Act, JobFilter, JobId, JobState, NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

fn ids_of(out: &std::process::Output) -> Vec<u64> {
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect()
}

/// Filters and keyset pages: every matching job once, newest first, nothing else.
#[sqlx::test(migrations = false)]
async fn jobs_list_filters_and_pages(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let p = Producer::new(db.clone());
    let mut mail = Vec::new();
    for i in 0..12 {
        mail.push(
            p.enqueue(NewJob::json("noop", json!({})).queue("mail"))
                .await
                .unwrap(),
        );
        if i % 3 == 0 {
            p.enqueue(NewJob::json("other", json!({}))).await.unwrap();
        }
    }
    let gone: Vec<JobId> = mail.iter().copied().step_by(2).collect();
    act_on_jobs(&db, Act::Discard, &gone, "test").await.unwrap();
    // Discarded mail jobs, three a page.
    let mut seen: Vec<u64> = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut args = vec![
            "jobs",
            "list",
            "--state",
            "discarded",
            "--queue",
            "mail",
            "--limit",
            "3",
            "--json",
        ];
        let a;
        if let Some(x) = after {
            a = x.to_string();
            args.extend(["--after", a.as_str()]);
        }
        let page = ids_of(&jobq_cli(&url, &args).await);
        seen.extend(&page);
        if page.len() < 3 {
            break;
        }
        after = page.last().copied();
    }
    let mut want: Vec<u64> = gone.iter().map(|j| j.0).collect();
    want.reverse();
    assert_eq!(seen, want, "every discarded mail job once, newest first");
    // Without a state: by id, newest first; kind filter.
    let others = ids_of(&jobq_cli(&url, &["jobs", "list", "--kind", "other", "--json"]).await);
    assert_eq!(others.len(), 4);
    assert!(others.windows(2).all(|w| w[0] > w[1]));
    // The error filter matches text, LIKE's wildcards literally.
    let by_error = jobq_worker::list_jobs(
        &db,
        &JobFilter {
            error: Some("discarded by te".into()),
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        by_error.len(),
        0,
        "the act's text is in the transition, not last_error"
    );
    let by_error = jobq_worker::list_jobs(
        &db,
        &JobFilter {
            error: Some("%".into()),
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(by_error.is_empty());
    // A bad state or limit is a clear error.
    let out = jobq_cli(&url, &["jobs", "list", "--state", "finished"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job state"));
    let out = jobq_cli(&url, &["jobs", "list", "--limit", "0"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit must be 1 to 10000"));
}

/// With 100,000 completed jobs, listing the 10 discarded ones reads about that many index
/// entries: the state's range of jobq_jobs_due, backwards, no sort.
#[sqlx::test(migrations = false)]
async fn jobs_list_by_state_reads_its_index_range(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
                  SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9)";
    sqlx::query(&format!(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, finalized_at) \
         SELECT 'default', 'noop', '{{}}', 'completed', UTC_TIMESTAMP(6) \
         FROM {digits} a, {digits} b, {digits} c, {digits} d, {digits} e"
    ))
    .execute(&db)
    .await
    .unwrap();
    let p = Producer::new(db.clone());
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(p.enqueue(NewJob::json("noop", json!({}))).await.unwrap());
    }
    act_on_jobs(&db, Act::Discard, &ids, "test").await.unwrap();
    sqlx::query("ANALYZE TABLE jobq_jobs")
        .execute(&db)
        .await
        .unwrap();
    let one = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with((*db.connect_options()).clone())
        .await
        .unwrap();
    let reads =
        "SELECT CAST(SUM(VARIABLE_VALUE) AS SIGNED) FROM information_schema.SESSION_STATUS \
                 WHERE VARIABLE_NAME LIKE 'HANDLER_READ%'";
    let before: i64 = sqlx::query_scalar(reads).fetch_one(&one).await.unwrap();
    let got = jobq_worker::list_jobs(
        &one,
        &JobFilter {
            state: Some(JobState::Discarded),
            limit: 50,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let after: i64 = sqlx::query_scalar(reads).fetch_one(&one).await.unwrap();
    assert_eq!(got.len(), 10);
    assert!(after - before < 200, "listing read {} rows", after - before);
}

/// `jobq workers` shows a running worker with its queues; `jobq prune` deletes old finished
/// jobs with their history and keeps the rest.
#[sqlx::test(migrations = false)]
async fn workers_and_prune(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let w = start(pool(&s).await, builtins(), &s);
    wait_for(Duration::from_secs(10), "the worker registered", || async {
        count(&db, "SELECT COUNT(*) FROM jobq_workers").await == 1
    })
    .await;
    let out = jobq_cli(&url, &["workers", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["queues"], json!(["default"]));
    assert_eq!(v[0]["pid"].as_u64(), Some(u64::from(std::process::id())));
    let p = Producer::new(db.clone());
    let old = p.enqueue(NewJob::json("noop", json!({}))).await.unwrap();
    let new = p.enqueue(NewJob::json("noop", json!({}))).await.unwrap();
    wait_for(Duration::from_secs(10), "both completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == 2
    })
    .await;
    w.stop().await;
    sqlx::query("UPDATE jobq_jobs SET run_at = run_at - INTERVAL 2 DAY, finalized_at = finalized_at - INTERVAL 2 DAY WHERE id = ?")
        .bind(old.0)
        .execute(&db)
        .await
        .unwrap();
    let out = jobq_cli(&url, &["prune", "--older-than", "1d"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deleted 1 completed jobs"),
        "{out:?}"
    );
    assert_eq!(state_of(&db, new.0).await, "completed");
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM jobq_transitions WHERE job_id = {}",
                old.0
            )
        )
        .await,
        0
    );
    // An unknown queue is refused (a typo would pause nothing), unless asked for.
    let out = jobq_cli(&url, &["queues", "pause", "nosuch"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue \"nosuch\" is unknown here"));
    let out = jobq_cli(&url, &["queues", "pause", "nosuch", "--new"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = jobq_cli(&url, &["prune", "--state", "running"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only finished jobs are pruned"));
}
