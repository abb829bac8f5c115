//! Lease locks and semaphores against the real server: exclusion, strictly increasing fencing
//! tokens, a watchdog that keeps a short lease alive, takeover after expiry refusing the old
//! holder's fenced write, and a semaphore that never admits more holders than permits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq_lock::{Error, LeaseLock};
use sqlx::MySqlPool;

#[sqlx::test(migrations = "../migrations")]
async fn a_lease_excludes_others_and_tokens_only_grow(db: MySqlPool) {
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

#[sqlx::test(migrations = "../migrations")]
async fn the_watchdog_keeps_a_short_lease(db: MySqlPool) {
    let a = LeaseLock::new(&db, "a").ttl(Duration::from_millis(300));
    let b = LeaseLock::new(&db, "b").ttl(Duration::from_millis(300));
    let ga = a
        .acquire("long job", Duration::ZERO)
        .await
        .unwrap()
        .expect("free");
    // Held for 5 leases: never taken.
    assert!(b
        .acquire("long job", Duration::from_millis(1500))
        .await
        .unwrap()
        .is_none());
    assert!(!ga.is_lost());
    ga.release().await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn a_holder_that_lost_its_lease_cannot_write(db: MySqlPool) {
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

#[sqlx::test(migrations = "../migrations")]
async fn a_semaphore_never_admits_more_than_its_permits(db: MySqlPool) {
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
