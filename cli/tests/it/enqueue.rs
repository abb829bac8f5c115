//! Group commit: concurrent single enqueues through one producer share transactions, each call
//! keeping its own id and its own error.

use std::collections::HashSet;

use jobq_worker::{NewJob, Producer, ProducerOptions};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// A payload nested `depth` deep: `{"a":{"a":…{}}}`.
fn nested(depth: usize) -> serde_json::Value {
    (0..depth).fold(json!({}), |inner, _| json!({ "a": inner }))
}

#[sqlx::test(migrations = false)]
async fn single_enqueues_share_commits_and_keep_their_own_errors(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, jobq_config::ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    // A producer that accepts what MariaDB refuses (JSON deeper than 31): a refusal only the
    // server can make, after every check of the producer passed.
    let producer = Producer::with_options(
        pool.clone(),
        ProducerOptions {
            max_json_depth: 100,
            ..Default::default()
        },
    );
    let calls = 300;
    let bad = 150;
    let handles: Vec<_> = (0..calls)
        .map(|i| {
            let producer = producer.clone();
            tokio::spawn(async move {
                let payload = if i == bad {
                    nested(40)
                } else {
                    json!({ "i": i })
                };
                producer.enqueue(NewJob::json("noop", payload)).await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut failed = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.await.unwrap() {
            Ok(id) => assert!(ids.insert(id.0), "id {id} given twice"),
            Err(e) => failed.push((i, e.to_string())),
        }
    }
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&db)
        .await
        .unwrap();
    let server_refuses = version.contains("MariaDB");
    if server_refuses {
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, bad, "{failed:?}");
        assert!(failed[0].1.contains("database error"), "{failed:?}");
    } else {
        assert!(failed.is_empty(), "{failed:?}");
    }
    // Every other call's job is there, with its own payload and its `enqueued` history.
    let rows: Vec<(u64, String)> =
        sqlx::query_as("SELECT id, CAST(payload AS CHAR) FROM jobq_jobs ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), ids.len());
    for (id, payload) in &rows {
        assert!(ids.contains(id), "job {id} was not returned to any call");
        assert!(payload.contains("\"i\""), "{payload}");
    }
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'enqueued'"
        )
        .await,
        ids.len() as i64
    );
    // They shared transactions: a transaction's rows carry one creation time, and 300 calls
    // made far fewer than 300 of them (the group holding the refused job is split in halves
    // down to it: a few transactions more).
    let times = count(&db, "SELECT COUNT(DISTINCT created_at) FROM jobq_jobs").await;
    assert!(
        times < 60,
        "{times} distinct creation times for {} jobs",
        ids.len()
    );

    // Off: each call its own transaction, the same answers.
    sqlx::query("DELETE FROM jobq_jobs")
        .execute(&db)
        .await
        .unwrap();
    let alone = Producer::new(pool.clone()).group_commit(false);
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let p = alone.clone();
            tokio::spawn(async move { p.enqueue(NewJob::json("noop", json!({ "i": i }))).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 20);
}
