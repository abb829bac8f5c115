//! Session locks against the real server: exclusion between sessions, release on `release`,
//! on drop and on a killed connection (with the lost signal), reentrancy refused, and names of
//! any length, case and script kept apart.

use std::time::{Duration, Instant};

use jobq_lock::{Error, SessionLock};
use sqlx::MySqlPool;

mod common;

/// The server-side name of the bound lock name, as the crate documents it.
const NAME: &str = "CONCAT('jobq-lock:', SHA1(CONCAT(CAST(COALESCE(DATABASE(), '') AS BINARY), X'00', CAST(? AS BINARY))))";

/// `GET_LOCK` on another session (what another process holding the lock looks like).
async fn other_session_get(db: &MySqlPool, conn: &mut sqlx::MySqlConnection, name: &str) -> i64 {
    let _ = db;
    sqlx::query_scalar::<_, Option<i64>>(&format!("SELECT GET_LOCK({NAME}, 0)"))
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap()
        .unwrap()
}

async fn other_connection(db: &MySqlPool) -> sqlx::MySqlConnection {
    use sqlx::Connection;
    sqlx::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_held_lock_excludes_other_sessions_until_released(db: MySqlPool) {
    let locks = SessionLock::new(&db);
    let guard = locks.try_acquire("report").await.unwrap().expect("free");
    let mut other = other_connection(&db).await;
    assert_eq!(other_session_get(&db, &mut other, "report").await, 0);
    guard.release().await.unwrap();
    assert_eq!(other_session_get(&db, &mut other, "report").await, 1);
    // Now the other session holds it: acquiring waits, then gives up without error.
    let start = Instant::now();
    assert!(locks
        .acquire("report", Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[sqlx::test]
async fn dropping_the_guard_frees_the_lock(db: MySqlPool) {
    let locks = SessionLock::new(&db);
    let guard = locks.try_acquire("drop-me").await.unwrap().expect("free");
    drop(guard);
    let mut other = other_connection(&db).await;
    let start = Instant::now();
    while other_session_get(&db, &mut other, "drop-me").await != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the lock stayed held after its guard was dropped"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[sqlx::test]
async fn a_second_acquire_in_the_same_process_is_refused(db: MySqlPool) {
    let locks = SessionLock::new(&db);
    let guard = locks.try_acquire("once").await.unwrap().expect("free");
    match locks.try_acquire("once").await {
        Err(Error::AlreadyHeld(n)) => assert_eq!(n, "once"),
        other => panic!("a second acquire was not refused: {other:?}"),
    }
    guard.release().await.unwrap();
    let again = locks.try_acquire("once").await.unwrap();
    assert!(again.is_some(), "released, the name can be taken again");
}

#[sqlx::test]
async fn a_killed_connection_fires_lost(db: MySqlPool) {
    let locks = SessionLock::new(&db).ping_every(Duration::from_millis(50));
    let guard = locks.try_acquire("fragile").await.unwrap().expect("free");
    let holder: i64 = sqlx::query_scalar(&format!("SELECT IS_USED_LOCK({NAME})"))
        .bind("fragile")
        .fetch_one(&db)
        .await
        .unwrap();
    sqlx::query(&format!("KILL CONNECTION {holder}"))
        .execute(&db)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost did not fire after the connection was killed");
    assert!(guard.is_lost());
    assert!(
        guard.release().await.is_err(),
        "a lost lock cannot be released"
    );
    let mut other = other_connection(&db).await;
    assert_eq!(other_session_get(&db, &mut other, "fragile").await, 1);
}

#[sqlx::test]
async fn names_of_any_length_case_and_script_never_collide(db: MySqlPool) {
    let locks = SessionLock::new(&db);
    let names = common::tricky_names();
    let mut guards = Vec::new();
    for n in &names {
        guards.push(
            locks
                .try_acquire(n)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{n:?} collided with another name")),
        );
    }
    let mut other = other_connection(&db).await;
    for n in &names {
        assert_eq!(other_session_get(&db, &mut other, n).await, 0, "{n:?}");
    }
    for g in guards {
        g.release().await.unwrap();
    }
}

/// A database error printed on its own (as a log line's `%e` does) keeps the server's error
/// number and message.
#[sqlx::test]
async fn a_database_error_shows_its_cause(db: MySqlPool) {
    let e = Error::from(
        sqlx::query("SELECT * FROM no_such_table")
            .execute(&db)
            .await
            .unwrap_err(),
    );
    let shown = e.to_string();
    assert!(
        shown.contains("1146") && shown.contains("no_such_table"),
        "{shown}"
    );
}
