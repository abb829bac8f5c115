//! Database-level tests of the private store: fencing and the claim's query plan.

use std::time::Duration;

use jobq_producer::{NewJob, Producer, QueueName};
use serde_json::json;
use sqlx::MySqlPool;

use super::claim::claim_select;
use super::*;
use crate::ids::WorkerId;
use crate::transition::{decide, Backoff, Outcome};

async fn count(pool: &MySqlPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn complete_single(pool: &MySqlPool, fence: Fence, attempt: u32) -> bool {
    let b = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(1),
    };
    let d = decide(&Outcome::Success, attempt, attempt, b, 1.0);
    let worker = WorkerId::generate();
    finish_tx(
        pool,
        FinishWrite {
            fence,
            attempt,
            worker: &worker,
            decision: &d,
        },
    )
    .await
    .unwrap()
}

/// A completion written with a stale claim token changes nothing: after the job was taken back
/// and claimed again, the old holder's late completion must not touch the new claim.
#[sqlx::test(migrator = "jobq_producer::MIGRATOR")]
async fn stale_token_changes_nothing(db: MySqlPool) {
    let id = Producer::new(db.clone())
        .enqueue(NewJob::json("noop", json!({})))
        .await
        .unwrap();
    let stale = [7u8; 16];
    let current = [9u8; 16];
    // Claimed once with `stale`, rescued, and claimed again elsewhere with `current`.
    sqlx::query(
        "UPDATE jobq_jobs SET state = 'running', attempt = 2, claim_token = ?, worker_id = 'new' WHERE id = ?",
    )
    .bind(&current[..])
    .bind(id.0)
    .execute(&db)
    .await
    .unwrap();
    let row = "SELECT CONCAT(CAST(state AS CHAR), attempt, CAST(worker_id AS CHAR)) FROM jobq_jobs";
    let before: String = sqlx::query_scalar(row).fetch_one(&db).await.unwrap();
    let transitions = count(&db, "SELECT COUNT(*) FROM jobq_transitions").await;

    let old = Fence {
        id: id.0,
        token: stale,
    };
    assert!(
        !complete_single(&db, old, 1).await,
        "stale completion reported as written"
    );
    assert_eq!(complete_batch(&db, &[old]).await.unwrap(), 0);
    let after: String = sqlx::query_scalar(row).fetch_one(&db).await.unwrap();
    assert_eq!(before, after);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_transitions").await,
        transitions
    );

    // The current holder's token still works.
    let now = Fence {
        id: id.0,
        token: current,
    };
    assert!(complete_single(&db, now, 2).await);
    let state: String = sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM jobq_jobs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(state, "completed");
}

/// The claim's locking read uses jobq_jobs_claim in order: no filesort, no temporary table.
#[sqlx::test(migrator = "jobq_producer::MIGRATOR")]
async fn claim_uses_its_index_without_filesort(db: MySqlPool) {
    // Some rows so the optimiser has statistics to weigh.
    let jobs: Vec<NewJob> = (0..500)
        .map(|i| {
            NewJob::json(if i % 2 == 0 { "noop" } else { "record" }, json!({}))
                .queue(if i % 3 == 0 { "a" } else { "default" })
        })
        .collect();
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
    sqlx::query("ANALYZE TABLE jobq_jobs")
        .execute(&db)
        .await
        .unwrap();
    {
        let sql = format!("EXPLAIN {}", claim_select("'default'", "100"));
        let rows: Vec<(Option<String>, Option<String>)> = sqlx::query(&sql)
            .fetch_all(&db)
            .await
            .unwrap()
            .into_iter()
            .map(|r| {
                use sqlx::Row;
                (
                    r.try_get::<Option<String>, _>("key").ok().flatten(),
                    r.try_get::<Option<String>, _>("Extra").ok().flatten(),
                )
            })
            .collect();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let (key, extra) = &rows[0];
        assert_eq!(key.as_deref(), Some("jobq_jobs_claim"), "{rows:?}");
        let extra = extra.clone().unwrap_or_default();
        assert!(!extra.contains("filesort"), "claim filesorts: {extra}");
        assert!(
            !extra.contains("temporary"),
            "claim uses a temporary table: {extra}"
        );
    }
}

/// A claim through the raw-transaction guard leaves no transaction open on the pooled session,
/// and reads only about as many index entries as it returns, however many jobs of other kinds
/// wait ahead (it takes any kind; filtering on kind once read past the whole backlog).
#[sqlx::test(migrator = "jobq_producer::MIGRATOR")]
async fn claims_read_o_batch_whatever_the_backlog_of_other_kinds(db: MySqlPool) {
    let mut jobs: Vec<NewJob> = (0..5000)
        .map(|_| NewJob::json("nobody_runs_this", json!({})))
        .collect();
    jobs.extend((0..10).map(|_| NewJob::json("noop", json!({}))));
    Producer::new(db.clone()).enqueue_many(jobs).await.unwrap();
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    let reads = "SELECT CAST(VARIABLE_VALUE AS UNSIGNED) FROM information_schema.SESSION_STATUS \
                 WHERE VARIABLE_NAME = 'HANDLER_READ_NEXT'";
    let before: u64 = sqlx::query_scalar(reads)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let got = claim(
        &mut conn,
        ClaimRequest {
            queue: &queue,
            limit: 10,
            worker: &worker,
            lease: Duration::from_secs(30),
            lock: ClaimLock::SkipLocked,
        },
    )
    .await
    .unwrap();
    let after: u64 = sqlx::query_scalar(reads)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(got.jobs.len(), 10);
    assert!(got.jobs.iter().all(|j| j.attempt == 1));
    assert!(
        after - before < 100,
        "the claim read {} index entries",
        after - before
    );
    let in_tx: u64 = sqlx::query_scalar("SELECT @@in_transaction")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(in_tx, 0, "the claim left its transaction open");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'"
        )
        .await,
        10
    );
}
