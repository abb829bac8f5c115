//! What periodic reads cost, counted by the server's handler counters on a one-connection
//! pool: the leader's samples, `jobq stats`, retention and the waiting-key sweep read what they
//! find (or a bounded window), not the table.

use std::time::Duration;

use jobq_producer::JobState;
use sqlx::MySqlPool;

use super::*;

/// Index and row reads of one session (`Handler_read_*`), summed.
async fn rows_read(conn: &mut sqlx::MySqlConnection) -> i64 {
    let rows: Vec<(String, String)> = sqlx::query_as("SHOW SESSION STATUS LIKE 'Handler_read%'")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    rows.iter()
        .map(|(_, v)| v.parse::<i64>().unwrap_or(0))
        .sum()
}

/// The periodic reads behind `jobq stats`, the console's overview and the leader's gauges read
/// a bounded window, not the table: with 100,000 finished jobs and 20,000 available ones in
/// three priorities, each (queue, state) count reads at most 10,001 index entries (beyond, the
/// server's estimate), and the oldest available job costs a few reads per priority.
/// Reads are counted by the server's handler counters on a one-connection pool.
#[sqlx::test(migrations = false)]
async fn periodic_reads_cost_what_they_find(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // language=MySQL
    for (n, state, priority) in [
        (100_000, "completed", "0"),
        (20_000, "available", "seq % 3"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, priority, run_at, max_attempts, created_at, finalized_at) \
             SELECT 'default', 'noop', '{{}}', '{state}', {priority}, \
                    UTC_TIMESTAMP(6) - INTERVAL seq SECOND, 1, UTC_TIMESTAMP(6), \
                    IF('{state}' = 'completed', UTC_TIMESTAMP(6), NULL) \
             FROM {}",
            numbers(n)
        ))
        .execute(&db)
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE TABLE jobq_jobs")
        .execute(&db)
        .await
        .unwrap();
    let one = one_connection(&db).await;
    let (age, oldest) = reads_of(
        &one,
        super::super::inspect::oldest_available(&one, "default"),
    )
    .await;
    let age = age.unwrap().unwrap();
    assert!(age > 19_000.0, "the oldest is 20,000 s old: {age}");
    let (sample, depth) = reads_of(&one, sample_depth(&one, Duration::from_secs(10))).await;
    let sample = sample.unwrap();
    // Over the exact bound (10,000), the available count is the server's estimate of the
    // 20,000-entry range; the other live states are counted, and are empty.
    let available = sample
        .depth
        .iter()
        .find(|(_, s, _)| s == "available")
        .map(|d| d.2)
        .unwrap();
    assert!(
        (10_001..=200_000).contains(&available),
        "estimated {available}"
    );
    assert!(
        sample
            .depth
            .iter()
            .all(|(q, s, n)| q == "default" && (s == "available" || *n == 0)),
        "{:?}",
        sample.depth
    );
    assert_eq!(sample.oldest.len(), 1);
    assert!(oldest < 100, "the oldest available job cost {oldest} reads");
    // A bounded count reads at most 10,001 index entries, and the server counts its derived
    // table's rows again: at most about 20,000 reads whatever the range's size.
    assert!(
        depth < 2 * 10_001 + 1_000,
        "the depth sample read {depth} rows for 20,000 live jobs among 120,000"
    );
    // `jobq stats` (and the console's overview) counts every state, finished ones included,
    // reading at most the bound per state: two ranges over it here, whatever their size.
    let (stats, read) = reads_of(&one, crate::stats(&one)).await;
    let stats = stats.unwrap();
    assert!(stats.totals_estimated.contains("completed"), "{stats:?}");
    assert!(
        read < 4 * 10_001 + 1_000,
        "stats read {read} rows among 120,000"
    );
}

/// Reads of `what` on a one-connection pool, by its handler counters.
async fn reads_of<T>(one: &MySqlPool, what: impl std::future::Future<Output = T>) -> (T, i64) {
    let mut c = one.acquire().await.unwrap();
    let before = rows_read(&mut c).await;
    drop(c);
    let out = what.await;
    let mut c = one.acquire().await.unwrap();
    let after = rows_read(&mut c).await;
    (out, after - before)
}

async fn one_connection(db: &MySqlPool) -> MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with((*db.connect_options()).clone())
        .await
        .unwrap()
}

/// Retention reads a window, not the range: 100,000 completed jobs whose `run_at` is old but
/// which finished a minute ago (a backlog worked through slowly) cost each call at most its
/// window; the 10 jobs that are ripe, at the far end of the range, are still found and
/// deleted by the calls that follow, and nothing else is.
#[sqlx::test(migrations = false)]
async fn retention_reads_a_window_per_call(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // language=MySQL
    for (n, run_ago, done_ago) in [(100_000, "7200 + seq", "60"), (10, "3700 - seq", "3650")] {
        sqlx::query(&format!(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at, max_attempts, created_at, finalized_at) \
             SELECT 'default', 'noop', '{{}}', 'completed', UTC_TIMESTAMP(6) - INTERVAL {run_ago} SECOND, 1, \
                    UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) - INTERVAL {done_ago} SECOND \
             FROM {}",
            numbers(n)
        ))
        .execute(&db)
        .await
        .unwrap();
    }
    let one = one_connection(&db).await;
    let hour = Duration::from_secs(3600);
    // A whole retention pass (what maintenance runs every interval) stops at the first window
    // with nothing ripe.
    let mut settings = jobq_config::Settings::default();
    settings.maintenance.completed_retention = hour;
    let config = settings.validate().unwrap();
    let (pass, cost) = reads_of(
        &one,
        crate::prune_finished(&one, &config, Duration::from_secs(30)),
    )
    .await;
    assert_eq!(pass.unwrap(), 0);
    assert!(cost < 2_000, "a retention pass read {cost} rows");
    let mut cursor = PruneCursor::default();
    let (pruned, cost) = reads_of(
        &one,
        prune(
            &one,
            jobq_producer::JobState::Completed,
            hour,
            500,
            &mut cursor,
            true,
        ),
    )
    .await;
    let (deleted, more) = pruned.unwrap();
    assert_eq!(deleted, 0);
    assert!(more, "the range goes on");
    assert!(cost < 2_000, "one window of 500 read {cost} rows");
    let mut total = 0;
    let mut calls = 1;
    loop {
        let (n, more) = prune(
            &one,
            jobq_producer::JobState::Completed,
            hour,
            500,
            &mut cursor,
            true,
        )
        .await
        .unwrap();
        total += n;
        calls += 1;
        if !more {
            break;
        }
    }
    assert_eq!(total, 10, "exactly the ripe jobs");
    assert!(
        calls <= 202,
        "{calls} calls for 100,010 rows in windows of 500"
    );
    assert_eq!(cursor, PruneCursor::default(), "back at the start");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 100_000);
}

/// The waiting-key sweep reads a window of `jobq_keys` per call, not every key ever claimed:
/// with 50,000 idle keys, a call reads about its window, and a key with a waiting job and a
/// free slot (the last in the table) is found by a later call of the same sweep.
#[sqlx::test(migrations = false)]
async fn the_waiting_key_sweep_reads_a_window_per_call(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO jobq_keys (queue, concurrency_key, key_limit) \
         SELECT 'default', CONCAT('idle:', LPAD(seq, 6, '0')), 1 FROM {}",
        numbers(50_000)
    ))
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobq_keys (queue, concurrency_key, key_limit) VALUES ('default', 'zz:last', 1)",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at, max_attempts, created_at, concurrency_key) \
         VALUES ('default', 'noop', '{}', 'waiting', UTC_TIMESTAMP(6), 1, UTC_TIMESTAMP(6), 'zz:last')",
    )
    .execute(&db)
    .await
    .unwrap();
    let one = one_connection(&db).await;
    let mut cursor = KeyCursor::default();
    let (found, cost) = reads_of(&one, keys_to_promote(&one, 1, 1_000, &mut cursor)).await;
    assert!(found.unwrap().is_empty());
    assert!(cost < 5_000, "one window of 1,000 keys read {cost} rows");
    let mut seen = None;
    for _ in 0..60 {
        let found = keys_to_promote(&one, 1, 1_000, &mut cursor).await.unwrap();
        if let Some(keys) = found.get(&QueueName::new("default").unwrap()) {
            seen = Some(keys.clone());
            break;
        }
    }
    let want: std::collections::BTreeSet<String> = ["zz:last".to_owned()].into();
    assert_eq!(seen, Some(want), "the sweep reached the last key");
}

/// `(… ) AS numbers` with one column `seq`: the integers 1 to `n`, on any server (MariaDB's
/// `seq_1_to_N` tables are not MySQL's), from cross joins of digits.
fn numbers(n: u32) -> String {
    let digits = "(SELECT 0 d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                  UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                  UNION ALL SELECT 8 UNION ALL SELECT 9)";
    let places = n.max(1).to_string().len();
    let sum: Vec<String> = (0..places)
        .map(|i| format!("{} * p{i}.d", 10u64.pow(i as u32)))
        .collect();
    let joins: Vec<String> = (0..places).map(|i| format!("{digits} p{i}")).collect();
    format!(
        "(SELECT 1 + {} AS seq FROM {} HAVING seq <= {n}) numbers",
        sum.join(" + "),
        joins.join(", ")
    )
}

/// Counts read at most their bound: exact below it, the server's estimate (marked) above it,
/// never below the bound; `stats` marks the estimated states and their totals.
#[sqlx::test(migrations = false)]
async fn counts_are_exact_up_to_their_bound_and_estimated_beyond(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // 12,000 completed jobs in `mail` (over stats' bound of 10,000), 3 available.
    // language=MySQL
    sqlx::query(&format!(
        "INSERT INTO jobq_jobs (queue, kind, payload, state) \
         SELECT 'mail', 'noop', '{{}}', 'completed' FROM {}",
        numbers(12_000)
    ))
    .execute(&db)
    .await
    .unwrap();
    Producer::new(db.clone())
        .enqueue_many(
            (0..3)
                .map(|_| NewJob::json("noop", json!({})).queue("mail"))
                .collect(),
        )
        .await
        .unwrap();
    sqlx::query("ANALYZE TABLE jobq_jobs")
        .execute(&db)
        .await
        .unwrap();
    let completed = count(
        &db,
        "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
    )
    .await;
    assert_eq!(completed, 12_000);
    // (bound, state) → (exact count expected, or an estimate at least the bound)
    for (bound, state, exact) in [
        (100, JobState::Available, Some(3)),
        (100, JobState::Completed, None),
        (20_000, JobState::Completed, Some(12_000)),
        (100, JobState::Running, Some(0)),
    ] {
        let (n, estimated) = count_in_state(&db, "mail", state, bound).await.unwrap();
        match exact {
            Some(want) => assert_eq!((n, estimated), (want, false), "{state:?} bound {bound}"),
            None => {
                assert!(estimated, "{state:?} bound {bound}");
                // The optimizer's estimate of a 12,000-entry range: the right order.
                assert!((bound + 1..=120_000).contains(&n), "{state:?}: {n}");
            }
        }
    }
    let s = crate::stats(&db).await.unwrap();
    let mail = &s.queues["mail"];
    assert_eq!(mail.states["available"], 3);
    assert!(mail.estimated.contains("completed") && !mail.estimated.contains("available"));
    assert!(
        mail.states["completed"] > EXACT_UP_TO,
        "{}",
        mail.states["completed"]
    );
    assert!(s.totals_estimated.contains("completed"));
    assert_eq!(s.totals["available"], 3);
}
