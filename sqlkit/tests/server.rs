//! Against the real server: errors are classified by their numbers as a deadlock between two
//! sessions and a refused statement produce them; the lock name is the one the worker's
//! named-lock claims used before this crate existed (so workers of both builds serialise on
//! the same lock during a rolling upgrade).

use std::time::Duration;

use jobq_sqlkit::{classify, lock_name_sql, ErrorClass};
use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};

#[sqlx::test(migrations = false)]
async fn a_real_deadlock_is_transient_and_a_refusal_is_not(db: MySqlPool) {
    db.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .await
        .unwrap();
    db.execute("INSERT INTO t VALUES (1, 0), (2, 0)")
        .await
        .unwrap();
    let opts = db.connect_options();
    let mut a = MySqlConnection::connect_with(&opts).await.unwrap();
    let mut b = MySqlConnection::connect_with(&opts).await.unwrap();
    a.execute("BEGIN").await.unwrap();
    b.execute("BEGIN").await.unwrap();
    a.execute("UPDATE t SET v = 1 WHERE id = 1").await.unwrap();
    b.execute("UPDATE t SET v = 1 WHERE id = 2").await.unwrap();
    // Each now wants the other's row: the server picks a victim.
    let (ra, rb) = tokio::join!(
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.execute("UPDATE t SET v = 2 WHERE id = 2").await
        },
        b.execute("UPDATE t SET v = 2 WHERE id = 1")
    );
    let victim = ra.err().or(rb.err()).expect("one of them deadlocked");
    assert_eq!(classify(&victim), ErrorClass::Transient, "{victim}");

    let refused = db.execute("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(classify(&refused), ErrorClass::Refused);
    assert!(jobq_sqlkit::is_number(
        &refused,
        jobq_sqlkit::codes::NO_SUCH_TABLE
    ));
}

#[sqlx::test(migrations = false)]
async fn the_named_lock_name_is_unchanged(db: MySqlPool) {
    let before: String =
        sqlx::query_scalar("SELECT CONCAT('jobq:', SHA1(CONCAT(DATABASE(), X'00', ?)))")
            .bind("mail.high:2-x_y")
            .fetch_one(&db)
            .await
            .unwrap();
    let now: String = sqlx::query_scalar(&format!("SELECT {}", lock_name_sql("jobq:")))
        .bind("mail.high:2-x_y")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(now, before);
    assert_eq!(now.len(), 5 + 40);
}
