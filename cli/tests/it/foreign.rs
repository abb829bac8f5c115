//! Rows written by other programs: the plain-SQL contract for producers in other languages
//! (README "Enqueueing from other languages"), the schema refusing impossible rows, and the
//! runtime coping with odd but legal ones.

use std::time::Duration;

use jobq_config::ClaimMode;
use sqlx::MySqlPool;

use crate::common::*;

/// Whether `e` is a CHECK constraint refusal (MariaDB 4025, MySQL 3819).
fn is_check_violation(e: &sqlx::Error) -> bool {
    let text = e.to_string();
    text.contains("4025") || text.contains("3819") || text.to_lowercase().contains("constraint")
}

/// The README's plain-SQL enqueue, as a service in another language would run it: the job row
/// with only queue, kind and payload, and its `enqueued` transition, in one transaction.
#[sqlx::test(migrations = false)]
async fn rows_inserted_with_plain_sql_run(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let mut tx = db.begin().await.unwrap();
    // A producer whose session is not in UTC: the defaults use the database's UTC clock.
    sqlx::query("SET time_zone = '+09:00'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload) VALUES ('default', 'record', '{\"ms\": 1}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, to_state, event, attempt, at) \
         VALUES (LAST_INSERT_ID(), 'available', 'enqueued', 0, UTC_TIMESTAMP(6))",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    // A delayed one, scheduled 1 s ahead on the database clock.
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at, max_attempts, priority) \
         VALUES ('default', 'record', '{}', 'scheduled', UTC_TIMESTAMP(6) + INTERVAL 1 SECOND, 3, -5)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, to_state, event, attempt, at) \
         VALUES (LAST_INSERT_ID(), 'scheduled', 'enqueued', 0, UTC_TIMESTAMP(6))",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (late_run_at, max_attempts): (i64, u32) = sqlx::query_as(
        "SELECT TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), run_at), max_attempts FROM jobq_jobs ORDER BY id LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        late_run_at <= 0,
        "run_at defaults to now on the UTC clock, not the session's zone"
    );
    assert_eq!(max_attempts, 25);
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(20), "both jobs completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == 2
    })
    .await;
    w.stop().await;
    assert_effects_once(&db, 2).await;
    assert_consistent(&db).await;
}

/// Rows no jobq component could produce are refused by the schema itself: a running row
/// without a lease (never rescued), no attempt allowed, names outside the producer's rule.
#[sqlx::test(migrations = false)]
async fn impossible_rows_are_refused_by_the_schema(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let bad = [
        "INSERT INTO jobq_jobs (queue, kind, payload, state) VALUES ('default', 'noop', '{}', 'running')",
        "INSERT INTO jobq_jobs (queue, kind, payload, state, claim_token) \
         VALUES ('default', 'noop', '{}', 'running', X'0123456789abcdef0123456789abcdef')",
        "INSERT INTO jobq_jobs (queue, kind, payload, max_attempts) VALUES ('default', 'noop', '{}', 0)",
        "INSERT INTO jobq_jobs (queue, kind, payload) VALUES ('two words', 'noop', '{}')",
        "INSERT INTO jobq_jobs (queue, kind, payload) VALUES ('', 'noop', '{}')",
        "INSERT INTO jobq_jobs (queue, kind, payload) VALUES ('default', 'no/slash', '{}')",
        // `$` of a REGEXP matches before a trailing newline: refused by a check of its own.
        "INSERT INTO jobq_jobs (queue, kind, payload) VALUES ('default', CONCAT('noop', CHAR(10)), '{}')",
        "INSERT INTO jobq_jobs (queue, kind, payload) VALUES (CONCAT('default', CHAR(10)), 'noop', '{}')",
        "INSERT INTO jobq_jobs (queue, kind, payload) VALUES ('default', CONCAT('noop', CHAR(13)), '{}')",
        // A key that is not UTF-8 (what a latin1 client's 'é' becomes in the VARBINARY column).
        "INSERT INTO jobq_jobs (queue, kind, payload, concurrency_key) VALUES ('default', 'noop', '{}', X'E9')",
    ];
    // A lenient session converts the bad bytes with a warning instead of an error: the check
    // itself refuses the row.
    let mut lenient = db.acquire().await.unwrap();
    sqlx::query("SET SESSION sql_mode = ''")
        .execute(&mut *lenient)
        .await
        .unwrap();
    let e = sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, concurrency_key) VALUES ('default', 'noop', '{}', X'E9')",
    )
    .execute(&mut *lenient)
    .await
    .expect_err("a lenient session wrote a key that is not UTF-8");
    assert!(is_check_violation(&e), "unexpected error {e}");
    drop(lenient);
    for sql in bad {
        let e = sqlx::query(sql)
            .execute(&db)
            .await
            .expect_err(&format!("the schema accepted: {sql}"));
        // The key check converts the bytes: a strict server refuses them right there (1300,
        // naming the bytes), a lenient one through the constraint.
        let bad_bytes = e.to_string().contains("1300");
        assert!(
            is_check_violation(&e) || bad_bytes,
            "{sql}: unexpected error {e}"
        );
    }
    // An existing running row cannot lose its lease either.
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, claim_token, lease_expires_at) \
         VALUES ('default', 'noop', '{}', 'running', X'0123456789abcdef0123456789abcdef', UTC_TIMESTAMP(6))",
    )
    .execute(&db)
    .await
    .unwrap();
    let e = sqlx::query("UPDATE jobq_jobs SET lease_expires_at = NULL")
        .execute(&db)
        .await
        .expect_err("a running row lost its lease");
    assert!(is_check_violation(&e), "unexpected error {e}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 1);
}

/// On a server that does not enforce CHECK constraints (MySQL before 8.0.16) a running row
/// without a lease can still exist; rescue treats a missing lease as expired instead of leaving
/// the job `running` forever.
#[sqlx::test(migrations = false)]
async fn a_running_row_without_a_lease_is_rescued(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    sqlx::query("ALTER TABLE jobq_jobs DROP CONSTRAINT jobq_jobs_running_is_leased")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, attempt, max_attempts) \
         VALUES ('default', 'record', '{}', 'running', 1, 3)",
    )
    .execute(&db)
    .await
    .unwrap();
    let w = start(pool.clone(), builtins(), &s);
    wait_for(
        Duration::from_secs(20),
        "the leaseless job rescued and run",
        || async {
            count(
                &db,
                "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
            )
            .await
                == 1
        },
    )
    .await;
    w.stop().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'rescued' AND from_state = 'running'"
        )
        .await,
        1
    );
    assert_effects_once(&db, 1).await;
}

/// An attempt counter at the column's maximum (written by another program) neither fails the
/// claims of its queue nor the job: the counter saturates, and the queue's other jobs run.
#[sqlx::test(migrations = false)]
async fn a_saturated_attempt_counter_does_not_stop_its_queue(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, attempt, max_attempts) VALUES \
         ('default', 'record', '{}', 4294967295, 4294967295), ('default', 'record', '{}', 0, 1)",
    )
    .execute(&db)
    .await
    .unwrap();
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(20), "both jobs completed", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await
            == 2
    })
    .await;
    w.stop().await;
    assert_eq!(
        count(&db, "SELECT CAST(MAX(attempt) AS SIGNED) FROM jobq_jobs").await,
        4294967295
    );
    assert_effects_once(&db, 2).await;
}

/// Rows the claim cannot decode (written where the schema's checks were not in force: before
/// migration 18, or on a server that ignores CHECK): each is discarded with the reason, and the
/// queue's other jobs run, in both claim modes. Before, such a row rolled back every claim of its
/// queue, forever.
#[sqlx::test(migrations = false)]
async fn a_row_the_claim_cannot_read_is_discarded_and_its_queue_goes_on(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE jobq_jobs DROP CONSTRAINT jobq_jobs_names_allowed, \
                               DROP CONSTRAINT jobq_jobs_key_utf8",
    )
    .execute(&db)
    .await
    .unwrap();
    for mode in [ClaimMode::SkipLocked, ClaimMode::NamedLock] {
        let s = settings(&db, mode).await;
        let pool = pool(&s).await;
        sqlx::raw_sql(
            "DELETE FROM jobq_transitions; DELETE FROM jobq_jobs; DELETE FROM jobq_demo_effects; \
             INSERT INTO jobq_jobs (queue, kind, payload, priority) VALUES \
               ('default', CONCAT('record', CHAR(10)), '{}', -2), \
               ('default', 'record', '{}', -1), \
               ('default', 'record', '{}', 0); \
             INSERT INTO jobq_jobs (queue, kind, payload, priority, concurrency_key) VALUES \
               ('default', 'record', '{}', -3, X'E9')",
        )
        .execute(&db)
        .await
        .unwrap();
        let w = start(pool.clone(), builtins(), &s);
        wait_for(
            Duration::from_secs(20),
            "the good jobs completed and the bad ones discarded",
            || async {
                count(
                    &db,
                    "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
                )
                .await
                    == 2
                    && count(
                        &db,
                        "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'discarded'",
                    )
                    .await
                        == 2
            },
        )
        .await;
        w.stop().await;
        let reasons: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(t.error AS CHAR) FROM jobq_transitions t \
             WHERE t.to_state = 'discarded' AND t.from_state = 'available' ORDER BY t.job_id",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        assert_eq!(reasons.len(), 2, "{mode:?}: {reasons:?}");
        for r in &reasons {
            assert!(
                r.contains("could not read this job's row") && r.contains("discarded"),
                "{mode:?}: {r}"
            );
        }
        assert!(reasons.iter().any(|r| r.contains("kind")), "{reasons:?}");
        assert_effects_once(&db, 2).await;
    }
}

/// README's plain-SQL dependent job and workflow, statement by statement: they run in order.
#[sqlx::test(migrations = false)]
async fn dependent_jobs_and_workflows_inserted_with_plain_sql_run(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    // Parents 17 (still waiting: scheduled far ahead, run by hand below) and 18 (completed).
    sqlx::query(
        "INSERT INTO jobq_jobs (id, queue, kind, payload, state, run_at) VALUES \
         (17, 'default', 'record', '{}', 'scheduled', UTC_TIMESTAMP(6) + INTERVAL 1 HOUR), \
         (18, 'default', 'record', '{}', 'completed', UTC_TIMESTAMP(6))",
    )
    .execute(&db)
    .await
    .unwrap();
    let readme = include_str!("../../../README.md");
    let blocks: Vec<&str> = readme
        .split("```sql\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .filter(|b| b.contains("jobq_deps"))
        .collect();
    assert_eq!(blocks.len(), 2, "README shows the two dependency scripts");
    let mut conn = db.acquire().await.unwrap();
    for block in &blocks {
        for statement in block.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            // The parents' states are the script's to read; the counts below match them.
            sqlx::raw_sql(statement)
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("README statement failed: {statement}: {e}"));
        }
    }
    drop(conn);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'blocked'"
        )
        .await,
        2
    );
    jobq_worker::builtin::setup(&db).await.unwrap();
    // The README's kinds, as no-ops.
    let mut registry = builtins();
    for kind in ["merge", "fetch", "mail"] {
        registry
            .register_json(
                kind,
                |_: serde_json::Value, _: jobq_worker::JobContext| async { Ok(()) },
            )
            .unwrap();
    }
    let w = start(pool, registry, &s);
    // Parent 17 becomes due: its completion releases the merge job.
    sqlx::query("UPDATE jobq_jobs SET run_at = UTC_TIMESTAMP(6) WHERE id = 17")
        .execute(&db)
        .await
        .unwrap();
    let all_done = || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state <> 'completed'",
        )
        .await
            == 0
    };
    let started = std::time::Instant::now();
    while !all_done().await && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
    assert!(all_done().await, "jobs left: {:?}", histories(&db).await);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_workflows WHERE state = 'completed' AND completed = 2"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'unblocked' AND actor IS NULL"
        )
        .await,
        2,
        "each blocked job released by its parent's completion"
    );
}
