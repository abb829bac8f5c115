//! Database-level tests of the private store: fencing, the claim (run by `runtime/claim.rs`, as
//! the claimer runs it) and its query plans.

use std::time::Duration;

use jobq_producer::{NewJob, Producer, QueueName};
use serde_json::json;
use sqlx::MySqlPool;

use super::claim::claim_select;
use super::*;
use crate::ids::WorkerId;
use crate::machine::attempt::{decide, Backoff, Outcome};
use crate::model::{ClaimedJob, Fence, Throttled};
use crate::runtime::claim::{claim, ClaimRequest, Flow, NO_KEYS};

/// A skip-locked claim of up to `limit` jobs of `queue` with a 30 s lease, carrying nothing,
/// without limits: the base the tests vary with `..`.
fn plain_claim<'a>(queue: &'a QueueName, worker: &'a WorkerId, limit: u32) -> ClaimRequest<'a> {
    ClaimRequest {
        queue,
        limit,
        worker,
        lease: Duration::from_secs(30),
        lock: ClaimLock::SkipLocked,
        complete: &[],
        freed: &NO_KEYS,
        results: &[],
        flow: Flow::DEFAULT,
        after: None,
    }
}

/// `EXPLAIN sql`: each row's table, key, Extra and type.
async fn plan_of(db: &MySqlPool, sql: &str) -> Vec<[Option<String>; 4]> {
    sqlx::query(&format!("EXPLAIN {sql}"))
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            use sqlx::Row;
            let col = |c: &str| r.try_get::<Option<String>, _>(c).ok().flatten();
            [col("table"), col("key"), col("Extra"), col("type")]
        })
        .collect()
}

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
            result: None,
            on_cancel: crate::machine::attempt::overridden_by_cancel,
            linked: false,
            rules: jobq_producer::deps::RULES,
        },
    )
    .await
    .unwrap()
}

/// A completion written with a stale claim token changes nothing: after the job was taken back
/// and claimed again, the old holder's late completion must not touch the new claim.
#[sqlx::test(migrations = false)]
async fn stale_token_changes_nothing(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let id = Producer::new(db.clone())
        .enqueue(NewJob::json("noop", json!({})))
        .await
        .unwrap();
    let stale = [7u8; 16];
    let current = [9u8; 16];
    // Claimed once with `stale`, rescued, and claimed again elsewhere with `current`.
    sqlx::query(
        "UPDATE jobq_jobs SET state = 'running', attempt = 2, claim_token = ?, worker_id = 'new', \
                lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL 1 MINUTE WHERE id = ?",
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
    assert_eq!(complete_batch(&db, &[old], &[]).await.unwrap(), 0);
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
#[sqlx::test(migrations = false)]
async fn claim_uses_its_index_without_filesort(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
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
    let explain = |sql: String| {
        let db = db.clone();
        async move {
            plan_of(&db, &sql)
                .await
                .into_iter()
                .map(|[table, key, extra, _]| (table, key, extra))
                .collect::<Vec<_>>()
        }
    };
    let rows = explain(claim_select("'default'", "100", None)).await;
    // The claim reads jobq_jobs through its index; the only other row is the pause check, a
    // constant read of jobq_queues.
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (table, key, extra) = &rows[0];
    assert_eq!(table.as_deref(), Some("jobq_jobs"), "{rows:?}");
    assert_eq!(key.as_deref(), Some("jobq_jobs_claim"), "{rows:?}");
    let extra = extra.clone().unwrap_or_default();
    assert!(!extra.contains("filesort"), "claim filesorts: {extra}");
    assert!(
        !extra.contains("temporary"),
        "claim uses a temporary table: {extra}"
    );
    assert_eq!(rows[1].0.as_deref().unwrap_or("p"), "p", "{rows:?}");
    // Paused, the server reads no job at all.
    sqlx::query("INSERT INTO jobq_queues (name, paused_at) VALUES ('default', UTC_TIMESTAMP(6))")
        .execute(&db)
        .await
        .unwrap();
    let rows = explain(claim_select("'default'", "100", None)).await;
    assert!(
        rows[0]
            .2
            .as_deref()
            .unwrap_or("")
            .contains("Impossible WHERE"),
        "a paused queue's claim still reads jobs: {rows:?}"
    );
}

/// A claim through the raw-transaction guard leaves no transaction open on the pooled session,
/// and reads only about as many index entries as it returns, however many jobs of other kinds
/// wait ahead (it takes any kind; filtering on kind once read past the whole backlog).
#[sqlx::test(migrations = false)]
async fn claims_read_o_batch_whatever_the_backlog_of_other_kinds(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
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
    let got = claim(&mut conn, plain_claim(&queue, &worker, 10))
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

/// A claim that carries completions commits them with the jobs it claims, one `completed`
/// transition each, and leaves alone a completion whose fence is gone (taken back meanwhile).
#[sqlx::test(migrations = false)]
async fn a_claim_completes_the_successes_it_carries(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    Producer::new(db.clone())
        .enqueue_many((0..6).map(|_| NewJob::json("noop", json!({}))).collect())
        .await
        .unwrap();
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    let req = |limit, complete| ClaimRequest {
        complete,
        ..plain_claim(&queue, &worker, limit)
    };
    let first = claim(&mut conn, req(3, &[])).await.unwrap();
    assert_eq!(first.jobs.len(), 3);
    let fences: Vec<Fence> = first.jobs.iter().map(ClaimedJob::fence).collect();
    // The third one is taken back (its token replaced) before the claim carries it.
    sqlx::query(
        "UPDATE jobq_jobs SET claim_token = X'00000000000000000000000000000000' WHERE id = ?",
    )
    .bind(fences[2].id)
    .execute(&db)
    .await
    .unwrap();
    let second = claim(&mut conn, req(3, &fences)).await.unwrap();
    assert_eq!(second.jobs.len(), 3);
    assert_eq!(second.completed, 2);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'"
        )
        .await,
        4
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'completed'"
        )
        .await,
        2
    );
    // Carried again (a retry after an answer lost in transit) it writes nothing twice, and a
    // claim that finds no job still commits what it carries.
    let third = claim(&mut conn, req(0, &fences[..2])).await.unwrap();
    assert_eq!((third.jobs.len(), third.completed), (0, 0));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'completed'"
        )
        .await,
        2
    );
    let last: Vec<Fence> = second.jobs.iter().map(ClaimedJob::fence).collect();
    let fourth = claim(&mut conn, req(5, &last)).await.unwrap();
    assert_eq!((fourth.jobs.len(), fourth.completed), (0, 3));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'"
        )
        .await,
        5
    );
    let in_tx: u64 = sqlx::query_scalar("SELECT @@in_transaction")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(in_tx, 0, "the claim left its transaction open");
}

/// The heartbeat tells its jobs apart: a running row with our token is extended; a row we
/// already finished (our completer won the race) is neither extended nor reported lost; a row
/// claimed again by someone else or deleted is lost; a row locked by another session is
/// skipped without waiting.
#[sqlx::test(migrations = false)]
async fn lease_extension_judges_each_job_alone(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use sqlx::{Connection, Executor};
    let ids = Producer::new(db.clone())
        .enqueue_many((0..5).map(|_| NewJob::json("noop", json!({}))).collect())
        .await
        .unwrap();
    let ours = [1u8; 16];
    sqlx::query("UPDATE jobq_jobs SET state = 'running', attempt = 1, claim_token = ?, lease_expires_at = UTC_TIMESTAMP(6)")
        .bind(&ours[..])
        .execute(&db)
        .await
        .unwrap();
    let f = |i: usize| Fence {
        id: ids[i].0,
        token: ours,
    };
    // 1: finished by us; 2: claimed again elsewhere; 3: deleted; 4: locked by an operator.
    sqlx::query("UPDATE jobq_jobs SET state = 'completed' WHERE id = ?")
        .bind(ids[1].0)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE jobq_jobs SET claim_token = ? WHERE id = ?")
        .bind(&[2u8; 16][..])
        .bind(ids[2].0)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM jobq_jobs WHERE id = ?")
        .bind(ids[3].0)
        .execute(&db)
        .await
        .unwrap();
    let mut operator = sqlx::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    operator.execute("START TRANSACTION").await.unwrap();
    sqlx::query("SELECT id FROM jobq_jobs WHERE id = ? FOR UPDATE")
        .bind(ids[4].0)
        .fetch_one(&mut operator)
        .await
        .unwrap();

    let mut session = Dedicated::new(
        sqlx::MySqlConnection::connect_with(&db.connect_options())
            .await
            .unwrap(),
    );
    let mut report = LeaseReport::default();
    tokio::time::timeout(
        Duration::from_secs(3),
        extend_leases(
            &mut session,
            &(0..5).map(f).collect::<Vec<_>>(),
            Duration::from_secs(60),
            &mut report,
        ),
    )
    .await
    .expect("the heartbeat waited for a locked row")
    .unwrap();
    operator.execute("ROLLBACK").await.unwrap();
    assert_eq!(report.extended, vec![f(0)]);
    let mut lost = report.lost.clone();
    lost.sort_by_key(|f| f.id);
    assert_eq!(lost, vec![f(2), f(3)]);
    let mut skipped = report.skipped.clone();
    skipped.sort_by_key(|f| f.id);
    assert_eq!(skipped, vec![f(1), f(4)]);
    assert!(!session.is_broken());
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE lease_expires_at > UTC_TIMESTAMP(6) + INTERVAL 30 SECOND"
        )
        .await,
        1,
        "only the job still ours was extended"
    );
}

/// A transaction's begin cut off while BEGIN is in flight (a timeout, a lost lease) must not
/// hand its connection back to the pool inside a transaction sqlx does not know of: whoever
/// borrowed it next would run inside that transaction, its writes never committed.
#[sqlx::test(migrations = false)]
async fn a_cancelled_begin_leaves_no_transaction_behind(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with((*db.connect_options()).clone())
        .await
        .unwrap();
    for step in 0..300u64 {
        let cut = Duration::from_micros(step * 10);
        let _ = tokio::time::timeout(cut, begin(&pool)).await;
        let in_tx: u64 = sqlx::query_scalar("SELECT @@in_transaction")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            in_tx, 0,
            "a begin cut off after {cut:?} left a transaction open"
        );
    }
}

fn keyed(key: &str) -> NewJob {
    NewJob::json("noop", json!({})).concurrency_key(key)
}

/// A claim starts at most `limit` jobs per key (counting those already running), sends the
/// rest to `waiting` with a `throttled` transition, and promotion brings one back per slot
/// freed, in claim order.
#[sqlx::test(migrations = false)]
async fn keys_limit_the_claim_and_promotion_fills_freed_slots(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let p = Producer::new(db.clone());
    p.enqueue_many(vec![
        keyed("a"),
        keyed("a"),
        keyed("b"),
        keyed("a"),
        keyed("é'\\"),
    ])
    .await
    .unwrap();
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    let req = |limit, key_limit: &'static (dyn Fn(&jobq_producer::KindName) -> u32 + Sync)| {
        ClaimRequest {
            flow: Flow {
                rate: None,
                key_rate: None,
                key_limit,
            },
            ..plain_claim(&queue, &worker, limit)
        }
    };
    let first = claim(&mut conn, req(10, Flow::DEFAULT.key_limit))
        .await
        .unwrap();
    let keys: Vec<Option<&str>> = first
        .jobs
        .iter()
        .map(|j| j.concurrency_key.as_deref())
        .collect();
    assert_eq!(keys, vec![Some("a"), Some("b"), Some("é'\\")]);
    assert_eq!(
        first.throttled,
        Throttled {
            waiting: 2,
            deferred: 0
        }
    );
    let state_of = |sql: &'static str| count(&db, sql);
    assert_eq!(
        state_of("SELECT COUNT(*) FROM jobq_jobs WHERE state = 'waiting'").await,
        2
    );
    assert_eq!(
        state_of("SELECT COUNT(*) FROM jobq_transitions WHERE event = 'throttled' AND to_state = 'waiting'").await,
        2
    );
    // Nothing to claim: the waiting jobs are out of the claim's way.
    let none = claim(&mut conn, req(10, Flow::DEFAULT.key_limit))
        .await
        .unwrap();
    assert!(none.jobs.is_empty() && none.throttled == Throttled::default());
    // Promotion with a slot still taken promotes nothing.
    let a: std::collections::BTreeSet<String> = ["a".to_owned()].into();
    assert_eq!(
        promote_waiting(&db, &queue, &a, 1, crate::machine::flow::to_promote)
            .await
            .unwrap(),
        0
    );
    // The running job of key a ends: one waiting job of a comes back, the oldest.
    let done = first.jobs[0].fence();
    assert!(complete_single(&db, done, 1).await);
    assert_eq!(
        promote_waiting(&db, &queue, &a, 1, crate::machine::flow::to_promote)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        promote_waiting(&db, &queue, &a, 1, crate::machine::flow::to_promote)
            .await
            .unwrap(),
        0,
        "it fills the slot"
    );
    let second = claim(&mut conn, req(10, Flow::DEFAULT.key_limit))
        .await
        .unwrap();
    assert_eq!(second.jobs.len(), 1);
    assert_eq!(second.jobs[0].id, 2, "the oldest waiting job of a");
    // A kind's limit of 2 lets the last job of a start beside it (once promoted).
    let still_waiting = count(
        &db,
        "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'waiting' AND concurrency_key = 'a'",
    )
    .await;
    assert_eq!(still_waiting, 1);
    sqlx::query("UPDATE jobq_keys SET key_limit = 2 WHERE concurrency_key = 'a'")
        .execute(&db)
        .await
        .unwrap();
    let to_promote = keys_to_promote(&db, 1, 100, &mut KeyCursor::default())
        .await
        .unwrap();
    assert_eq!(
        to_promote.get(&queue),
        Some(&a),
        "maintenance finds the free slot"
    );
    assert_eq!(
        promote_waiting(&db, &queue, &a, 1, crate::machine::flow::to_promote)
            .await
            .unwrap(),
        1
    );
    let third = claim(&mut conn, req(10, &|_| 2)).await.unwrap();
    assert_eq!(third.jobs.len(), 1);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running' AND concurrency_key = 'a'"
        )
        .await,
        2
    );
    assert!(keys_to_promote(&db, 1, 100, &mut KeyCursor::default())
        .await
        .unwrap()
        .is_empty());
}

/// With 100,000 jobs waiting over 1,000 concurrency keys, a claim still reads about as many
/// index entries as it returns, its plan is the claim index, and the key statements read
/// each key's index range only.
#[sqlx::test(migrations = false)]
async fn claims_stay_o_batch_with_100k_waiting_jobs_over_1000_keys(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // 100,000 waiting jobs, 100 per key, written directly (the state a deep backlog reaches).
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, concurrency_key) \
         SELECT 'default', 'noop', '{}', 'waiting', \
                CONCAT('customer-', (a.d + 10 * b.d + 100 * c.d + 1000 * d.d + 10000 * e.d) MOD 1000) \
         FROM (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
               UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) a, \
              (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
               UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) b, \
              (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
               UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) c, \
              (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
               UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) d, \
              (SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
               UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9) e",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobq_keys (queue, concurrency_key) \
         SELECT DISTINCT 'default', concurrency_key FROM jobq_jobs",
    )
    .execute(&db)
    .await
    .unwrap();
    let p = Producer::new(db.clone());
    p.enqueue_many((0..10).map(|i| keyed(&format!("new-{i}"))).collect())
        .await
        .unwrap();
    sqlx::query("ANALYZE TABLE jobq_jobs")
        .execute(&db)
        .await
        .unwrap();
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    let reads = "SELECT CAST(SUM(VARIABLE_VALUE) AS UNSIGNED) FROM information_schema.SESSION_STATUS \
                 WHERE VARIABLE_NAME IN ('HANDLER_READ_NEXT', 'HANDLER_READ_KEY', 'HANDLER_READ_RND_NEXT')";
    let before: u64 = sqlx::query_scalar(reads)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let got = claim(&mut conn, plain_claim(&queue, &worker, 10))
        .await
        .unwrap();
    let after: u64 = sqlx::query_scalar(reads)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(got.jobs.len(), 10);
    assert!(
        after - before < 300,
        "the claim read {} index entries",
        after - before
    );
    // The key count's plan: the keys index, a range per key.
    let keys: std::collections::BTreeMap<String, u32> =
        [("customer-1".into(), 1), ("customer-2".into(), 1)].into();
    let sql = super::keys::lock_and_count_sql(&queue, &keys, false, &NO_KEYS);
    let count_sql = sql
        .split("; ")
        .find(|s| s.trim_start().starts_with("SELECT CAST(key_state"))
        .unwrap();
    let plan = sqlx::query(&format!("EXPLAIN {count_sql}"))
        .fetch_all(&db)
        .await
        .unwrap();
    use sqlx::Row;
    let key: Option<String> = plan[0].try_get("key").unwrap();
    assert_eq!(key.as_deref(), Some("jobq_jobs_keys"));
    // Promotion of one key reads that key's range, not the backlog.
    sqlx::query("UPDATE jobq_jobs SET state = 'completed' WHERE concurrency_key = 'customer-7' AND state = 'waiting' LIMIT 99")
        .execute(&db)
        .await
        .unwrap();
    let k: std::collections::BTreeSet<String> = ["customer-7".to_owned()].into();
    assert_eq!(
        promote_waiting(&db, &queue, &k, 1, crate::machine::flow::to_promote)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'available' AND concurrency_key = 'customer-7'").await,
        1
    );
}

/// A claim that carries the completion of a keyed job promotes the key's next waiting job in
/// the same transaction (and says for which keys), and the next claim starts it.
#[sqlx::test(migrations = false)]
async fn a_claim_promotes_the_waiting_jobs_of_the_completions_it_carries(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    Producer::new(db.clone())
        .enqueue_many(vec![keyed("a"), keyed("a"), keyed("b")])
        .await
        .unwrap();
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    let req = |complete, freed| ClaimRequest {
        complete,
        freed,
        ..plain_claim(&queue, &worker, 10)
    };
    let first = claim(&mut conn, req(&[], &NO_KEYS)).await.unwrap();
    assert_eq!(first.jobs.len(), 2, "a and b; the second a waits");
    let a = first.jobs[0].fence();
    let b = first.jobs[1].fence();
    // Carrying a's and b's completions: a has a waiting job, b none.
    let freed: std::collections::BTreeMap<String, u32> =
        [("a".to_owned(), 1), ("b".to_owned(), 1)].into();
    let carried = [a, b];
    let second = claim(&mut conn, req(&carried, &freed)).await.unwrap();
    assert_eq!(second.completed, 2);
    assert_eq!(second.unblocked, 1);
    assert_eq!(
        second.promoted_keys.iter().collect::<Vec<_>>(),
        vec!["a"],
        "only keys with waiting jobs are promoted in the claim"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'promoted' AND from_state = 'waiting'").await,
        1
    );
    let third = claim(&mut conn, req(&[], &NO_KEYS)).await.unwrap();
    assert_eq!(third.jobs.len(), 1);
    assert_eq!(third.jobs[0].id, 2);
}

/// Key rows no live job uses are pruned once idle; a key with a live job is kept.
#[sqlx::test(migrations = false)]
async fn idle_key_rows_are_pruned(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    Producer::new(db.clone())
        .enqueue(keyed("live"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobq_keys (queue, concurrency_key, updated_at) VALUES \
         ('default', 'live', '2000-01-01'), ('default', 'gone', '2000-01-01'), ('default', 'fresh', UTC_TIMESTAMP(6))",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(
        prune_keys(&db, Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        1
    );
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(concurrency_key AS CHAR) FROM jobq_keys ORDER BY concurrency_key",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(left, vec!["fresh", "live"]);
}

/// Keys compare byte for byte: `t` and `t ` are two keys (a PAD SPACE collation would make them
/// one in SQL and two in the worker's bookkeeping).
#[sqlx::test(migrations = false)]
async fn keys_differing_in_trailing_spaces_are_different_keys(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    Producer::new(db.clone())
        .enqueue_many(vec![keyed("t"), keyed("t "), keyed("t")])
        .await
        .unwrap();
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    let got = claim(&mut conn, plain_claim(&queue, &worker, 10))
        .await
        .unwrap();
    let keys: Vec<Option<&str>> = got
        .jobs
        .iter()
        .map(|j| j.concurrency_key.as_deref())
        .collect();
    assert_eq!(keys, vec![Some("t"), Some("t ")]);
    assert_eq!(got.throttled.waiting, 1, "the second `t` waits");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_keys").await, 2);
}

/// A statement that fails after others in one multi-statement round trip is that round trip's
/// error (the claim's final `…; COMMIT` relies on it), whichever statement fails.
#[sqlx::test(migrations = false)]
async fn a_later_statement_failing_fails_the_batch(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut conn = db.acquire().await.unwrap();
    for sql in [
        "SELECT 1; SELECT * FROM no_such_table",
        "SELECT 1; DO 1; SELECT * FROM no_such_table; SELECT 2",
        "DO 1; INSERT INTO no_such_table VALUES (1)",
        "SELECT 1 AS a; SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'late failure'",
    ] {
        let r = super::sql::batch(&mut conn, sql).await;
        assert!(r.is_err(), "{sql}: {r:?}");
    }
    // The connection is still usable afterwards.
    let (rows, _) = super::sql::batch(&mut conn, "SELECT 7 AS n").await.unwrap();
    use sqlx::Row;
    assert_eq!(rows[0].get::<i64, _>("n"), 7);
}

/// A claim whose final round trip fails anywhere, or ends without the COMMIT's confirmation,
/// is never a success: it returns the jobs it read as `maybe_claimed` (for the caller to give
/// back, fenced by the claim's token) and starts nothing. Whether the claim committed decides
/// only what that give-back finds.
#[sqlx::test(migrations = false)]
async fn a_claim_is_confirmed_or_failed_never_assumed(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use super::claim_write::{Inject, INJECT};
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let p = Producer::new(db.clone());
    for (fault, commits) in [
        (Inject::BeforeCommit, false),
        (Inject::AfterCommit, true),
        (Inject::NoConfirmation, true),
    ] {
        sqlx::query("DELETE FROM jobq_jobs")
            .execute(&db)
            .await
            .unwrap();
        for _ in 0..3 {
            p.enqueue(NewJob::json("noop", json!({}))).await.unwrap();
        }
        let mut conn = db.acquire().await.unwrap();
        let r = INJECT
            .scope(fault, claim(&mut conn, plain_claim(&queue, &worker, 10)))
            .await;
        let e = match r {
            Ok(c) => panic!("{fault:?}: a claim succeeded with {} jobs", c.jobs.len()),
            Err(e) => e,
        };
        let reason = e.to_string();
        assert!(
            matches!(e, ClaimError::Unknown { .. }),
            "{fault:?}: a failed final round trip leaves the outcome unknown: {reason}"
        );
        let maybe_claimed = e.into_maybe_claimed();
        assert_eq!(maybe_claimed.len(), 3, "{fault:?}: {reason}");
        let running = count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'",
        )
        .await;
        assert_eq!(running, if commits { 3 } else { 0 }, "{fault:?}");
        // The give-back, fenced by the claim's token, finds exactly what committed.
        let d = crate::machine::attempt::unstarted("test");
        let mut given_back = 0;
        for job in &maybe_claimed {
            let w = FinishWrite {
                fence: job.fence(),
                attempt: job.attempt,
                worker: &worker,
                decision: &d,
                result: None,
                on_cancel: crate::machine::attempt::overridden_by_cancel,
                linked: false,
                rules: jobq_producer::deps::RULES,
            };
            given_back += u32::from(finish_tx(&db, w).await.unwrap());
        }
        assert_eq!(given_back, if commits { 3 } else { 0 }, "{fault:?}");
        let available = count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'available' AND max_attempts - attempt = 25",
        )
        .await;
        assert_eq!(
            available, 3,
            "{fault:?}: every job is available again, no attempt used"
        );
        // The session is clean: no transaction left open on it.
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        assert_eq!(open, 0, "{fault:?}: a transaction was left open");
    }
}

/// A claim with a cursor reads only jobs after it in claim order, through the claim index in
/// order (no filesort); a job that sorts before the cursor is left for a claim from the head.
#[sqlx::test(migrations = false)]
async fn a_cursor_claim_reads_after_the_cursor_and_a_full_claim_from_the_head(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let p = Producer::new(db.clone());
    let jobs: Vec<NewJob> = (0..6).map(|_| NewJob::json("noop", json!({}))).collect();
    p.enqueue_many(jobs).await.unwrap();
    let queue = QueueName::new("default").unwrap();
    let worker = WorkerId::generate();
    let mut conn = db.acquire().await.unwrap();
    let first = claim(&mut conn, plain_claim(&queue, &worker, 2))
        .await
        .unwrap();
    let ids = |c: &crate::runtime::claim::Claimed| c.jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(&first), [1, 2]);
    let cursor = first.last.clone().unwrap();
    assert_eq!((cursor.priority, cursor.id), (0, 2));
    // An urgent job (priority -1 sorts first) arrives after the cursor was taken.
    let urgent = p
        .enqueue(NewJob::json("noop", json!({})).priority(-1))
        .await
        .unwrap()
        .0;
    let after = ClaimRequest {
        after: Some(&cursor),
        ..plain_claim(&queue, &worker, 2)
    };
    let second = claim(&mut conn, after).await.unwrap();
    assert_eq!(
        ids(&second),
        [3, 4],
        "the cursor claim continues after job 2"
    );
    let from_head = claim(&mut conn, plain_claim(&queue, &worker, 2))
        .await
        .unwrap();
    assert_eq!(
        ids(&from_head),
        [urgent, 5],
        "a claim from the head takes the urgent job first"
    );
    // The cursor read uses the claim index in order.
    let plan = plan_of(
        &db,
        &claim_select("'default'", "100", Some(&second.last.clone().unwrap())),
    )
    .await;
    let [_, key, extra, kind] = &plan[0];
    assert_eq!(key.as_deref(), Some("jobq_jobs_claim"), "{plan:?}");
    // A range read that seeks to the cursor (not a read of the whole (queue, state) prefix
    // that filters it, which would step over the head again).
    assert_eq!(kind.as_deref(), Some("range"), "{plan:?}");
    let extra = extra.clone().unwrap_or_default();
    assert!(
        !extra.contains("filesort") && !extra.contains("temporary"),
        "{plan:?}"
    );
}

mod deps;
mod reads;
