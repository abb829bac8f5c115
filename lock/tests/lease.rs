//! Lease locks and semaphores against the real server: exclusion, strictly increasing fencing
//! tokens, a watchdog that keeps a short lease alive, takeover after expiry refusing the old
//! holder's fenced write, and a semaphore that never admits more holders than permits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq_lock::{Error, LeaseLock};
use sqlx::MySqlPool;

mod common;

#[sqlx::test(migrations = false)]
async fn a_lease_excludes_others_and_tokens_only_grow(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    let a = LeaseLock::new(&db, "a");
    let b = LeaseLock::new(&db, "b");
    let ga = a
        .acquire("stock", Duration::ZERO)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(ga.token(), Some(1));
    assert!(b.acquire("stock", Duration::ZERO).await.unwrap().is_none());
    ga.release().await.unwrap();
    let gb = b
        .acquire("stock", Duration::ZERO)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(gb.token(), Some(2));
    drop(gb);
    // Dropped: freed in the background.
    let start = Instant::now();
    let gc = loop {
        if let Some(g) = a.acquire("stock", Duration::from_millis(50)).await.unwrap() {
            break g;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not freed on drop"
        );
    };
    assert_eq!(gc.token(), Some(3));
}

#[sqlx::test(migrations = false)]
async fn the_watchdog_keeps_a_short_lease(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    let a = LeaseLock::new(&db, "a").ttl(Duration::from_secs(2));
    let b = LeaseLock::new(&db, "b").ttl(Duration::from_secs(2));
    let ga = a
        .acquire("long job", Duration::ZERO)
        .await
        .unwrap()
        .expect("free");
    // Held for 2 leases: never taken.
    assert!(b
        .acquire("long job", Duration::from_secs(4))
        .await
        .unwrap()
        .is_none());
    assert!(!ga.is_lost());
    ga.release().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_holder_that_lost_its_lease_cannot_write(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    sqlx::query("CREATE TABLE stock (id INT PRIMARY KEY, n INT NOT NULL)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO stock VALUES (1, 1)")
        .execute(&db)
        .await
        .unwrap();
    let a = LeaseLock::new(&db, "a").ttl(Duration::from_secs(60));
    let b = LeaseLock::new(&db, "b");
    let ga = a
        .acquire("sell", Duration::ZERO)
        .await
        .unwrap()
        .expect("free");
    // As if `a` had been frozen past its lease: it expires on the database clock.
    sqlx::query("UPDATE jobq_locks SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
        .execute(&db)
        .await
        .unwrap();
    let gb = b
        .acquire("sell", Duration::ZERO)
        .await
        .unwrap()
        .expect("expired");
    assert!(gb.token() > ga.token());
    match ga.fenced().await {
        Err(Error::NotHeld(_)) => {}
        other => panic!("the old holder could still write: {other:?}"),
    }
    assert!(ga.is_lost(), "the old holder's lost signal fired");
    let mut tx = gb.fenced().await.unwrap();
    sqlx::query("UPDATE stock SET n = n - 1 WHERE id = 1 AND n > 0")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT n FROM stock")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(ga.release().await.is_err());
    gb.release().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_semaphore_never_admits_more_than_its_permits(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (db, inside, most) = (db.clone(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let locks = LeaseLock::new(&db, format!("task {i}"));
            let g = locks
                .acquire_permit("pool of 3", 3, Duration::from_secs(30))
                .await
                .unwrap()
                .expect("a permit within 30 s");
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            g.release().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=3).contains(&most), "{most} holders at once");
}

#[sqlx::test(migrations = false)]
async fn lease_names_of_any_length_case_and_script_never_collide(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    let a = LeaseLock::new(&db, "a");
    let b = LeaseLock::new(&db, "b");
    let names = common::tricky_names();
    let mut guards = Vec::new();
    for n in &names {
        let g = a
            .acquire(n, Duration::ZERO)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{n:?} collided with another name"));
        assert_eq!(g.token(), Some(1), "{n:?} is a lock of its own");
        guards.push(g);
    }
    for n in &names {
        assert!(
            b.acquire(n, Duration::ZERO).await.unwrap().is_none(),
            "{n:?} is held"
        );
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobq_locks")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, names.len() as i64);
    for g in guards {
        g.release().await.unwrap();
    }
}

/// Two campaigners: one leads at a time; when the leader's lease is taken from it its future is
/// dropped, and when it stops the other takes over with a higher token.
#[sqlx::test(migrations = false)]
async fn one_leader_at_a_time_and_a_lost_term_is_dropped(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    type Event = (usize, &'static str, u64);
    async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .unwrap()
    }

    /// Reports the end of a term when the leader's future is dropped.
    struct Ends(
        mpsc::UnboundedSender<(usize, &'static str, u64)>,
        usize,
        u64,
    );
    impl Drop for Ends {
        fn drop(&mut self) {
            let _ = self.0.send((self.1, "end", self.2));
        }
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let stops = [CancellationToken::new(), CancellationToken::new()];
    let mut tasks = Vec::new();
    for (i, stop) in stops.iter().enumerate() {
        let (db, tx, stop) = (db.clone(), tx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let lock = LeaseLock::new(&db, format!("node {i}")).ttl(Duration::from_secs(3));
            lock.lead("leader", &stop, |term| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((i, "start", term.token()));
                    let _end = Ends(tx, i, term.token());
                    std::future::pending::<()>().await
                }
            })
            .await
        }));
    }
    let (first, what, t1) = next(&mut rx).await;
    assert_eq!(what, "start");
    // Only one leads: nothing else happens while the leader's lease is renewed.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_err(),
        "a second leader started"
    );
    // Take the lease from the leader, as a takeover after a long pause would.
    sqlx::query("UPDATE jobq_locks SET holder = 'intruder', token = token + 1")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        (first, "end", t1),
        "the lost term is dropped"
    );
    sqlx::query("UPDATE jobq_locks SET holder = NULL, expires_at = UTC_TIMESTAMP(6)")
        .execute(&db)
        .await
        .unwrap();
    let (leader, what, t2) = next(&mut rx).await;
    assert_eq!(what, "start");
    assert!(t2 > t1 + 1, "tokens grow across terms: {t1} -> {t2}");
    // The leader stops: its term ends and the other node takes over.
    stops[leader].cancel();
    assert_eq!(next(&mut rx).await, (leader, "end", t2));
    let (other, what, t3) = next(&mut rx).await;
    assert_eq!((other, what), (1 - leader, "start"));
    assert!(t3 > t2);
    stops[other].cancel();
    assert_eq!(next(&mut rx).await, (other, "end", t3));
    for t in tasks {
        assert!(t.await.unwrap().is_none(), "stopped, not completed");
    }
}

/// On a database with no job tables at all, `ensure_schema` creates the one table lease locks
/// use, twice without harm, and refuses a foreign table of the same name.
#[sqlx::test(migrations = false)]
async fn the_lock_crate_stands_alone(db: MySqlPool) {
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(tables, 0, "the test database should start empty");
    jobq_lock::ensure_schema(&db).await.unwrap();
    jobq_lock::ensure_schema(&db).await.unwrap();
    let g = LeaseLock::new(&db, "me")
        .acquire("alone", Duration::ZERO)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(g.token(), Some(1));
    g.release().await.unwrap();

    sqlx::query("DROP TABLE jobq_locks")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE jobq_locks (id INT PRIMARY KEY)")
        .execute(&db)
        .await
        .unwrap();
    let err = jobq_lock::ensure_schema(&db).await.unwrap_err().to_string();
    assert!(err.contains("lacks the column(s) name_key"), "{err}");
}

/// Listing the held locks reads the held and expired permits, not every permit ever used:
/// with 100,000 released permits and two held ones, `status(None)` costs a handful of reads
/// (handler counters of a one-connection pool).
#[sqlx::test(migrations = false)]
async fn listing_held_locks_reads_only_them(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO jobq_locks (name_key, slot, name, holder, token, acquired_at, expires_at) \
         SELECT UNHEX(SHA1(CONCAT('done:', seq))), 0, CONCAT('done:', seq), NULL, 1, NULL, UTC_TIMESTAMP(6) \
         FROM {}",
        numbers(100_000)
    ))
    .execute(&db)
    .await
    .unwrap();
    let lock = LeaseLock::new(&db, "holder-1");
    let _a = lock
        .acquire("held:a", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let _b = lock
        .acquire("held:b", Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    sqlx::query("ANALYZE TABLE jobq_locks")
        .execute(&db)
        .await
        .unwrap();
    let one = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with((*db.connect_options()).clone())
        .await
        .unwrap();
    let reads = || async {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SHOW SESSION STATUS LIKE 'Handler_read%'")
                .fetch_all(&one)
                .await
                .unwrap();
        rows.iter()
            .map(|(_, v)| v.parse::<i64>().unwrap_or(0))
            .sum::<i64>()
    };
    let before = reads().await;
    let held = jobq_lock::status(&one, None).await.unwrap();
    let cost = reads().await - before;
    let names: Vec<&str> = held.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["held:a", "held:b"]);
    assert!(
        cost < 200,
        "listing 2 held locks among 100,002 read {cost} rows"
    );
}

/// A `jobq_locks` an earlier version created without the holder index gets it from
/// `ensure_schema`, so its listing reads only held permits too.
#[sqlx::test(migrations = false)]
async fn ensure_schema_adds_the_holder_index_to_an_older_table(db: MySqlPool) {
    sqlx::query(
        "CREATE TABLE jobq_locks (
           name_key BINARY(20) NOT NULL, slot INT UNSIGNED NOT NULL,
           name VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
           holder VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
           token BIGINT UNSIGNED NOT NULL, acquired_at DATETIME(6) NULL,
           expires_at DATETIME(6) NOT NULL, PRIMARY KEY (name_key, slot)
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
    )
    .execute(&db)
    .await
    .unwrap();
    jobq_lock::ensure_schema(&db).await.unwrap();
    let indexed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = 'jobq_locks' AND INDEX_NAME = 'jobq_locks_holder'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(indexed, 1);
    // Idempotent.
    jobq_lock::ensure_schema(&db).await.unwrap();
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
