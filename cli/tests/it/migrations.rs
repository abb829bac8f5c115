//! jobq and an application that runs its own sqlx migrations share one database: neither sees
//! the other's migrations as missing or applied, in either order; a database migrated by an
//! earlier jobq (history in `_sqlx_migrations`) is moved over; `jobq migrate --print-sql` is a
//! script another tool can run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jobq_producer::{NewJob, Producer};
use sqlx::migrate::Migrator;
use sqlx::{Executor, MySqlPool};

use crate::common::*;

/// An application's own sqlx migrations: `orders`, then a newer one dated far after jobq's.
fn app_migrations(dir: &Path) {
    std::fs::write(
        dir.join("20200101000001_orders.sql"),
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, invoiced TINYINT NOT NULL DEFAULT 0);",
    )
    .unwrap();
    std::fs::write(
        dir.join("29990101000001_order_notes.sql"),
        "ALTER TABLE orders ADD COLUMN note VARCHAR(100) NULL;",
    )
    .unwrap();
}

async fn sqlx_rows(db: &MySqlPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(db)
        .await
        .unwrap()
}

/// The script `jobq migrate --print-sql EXTRA…` prints (it connects to nothing: the URL is
/// unreachable on purpose).
fn print_sql(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["migrate", "--print-sql"])
        .args(extra)
        .env("JOBQ_DATABASE_URL", "mysql://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// jobq's check passes and a further `migrate` applies nothing.
async fn jobq_is_current(db: &MySqlPool) {
    jobq_producer::check_migrated(db).await.unwrap();
    let report = jobq_producer::migrate(db).await.unwrap();
    assert!(report.applied.is_empty(), "{:?}", report.applied);
}

/// What a jobq before `jobq_migrations` did: sqlx's migrator over its migrations (all but
/// this build's newest, which came with the change), recorded in `_sqlx_migrations`.
async fn migrate_like_an_earlier_jobq(db: &MySqlPool) {
    let dir = tempfile::tempdir().unwrap();
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let newest = jobq_producer::latest_version().to_string();
    for f in std::fs::read_dir(ours).unwrap() {
        let f = f.unwrap();
        if !f.file_name().to_string_lossy().starts_with(&newest) {
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
    }
    Migrator::new(dir.path())
        .await
        .unwrap()
        .run(db)
        .await
        .unwrap();
}

/// The headline use: the application's order and its job commit together.
async fn order_and_job_in_one_transaction(db: &MySqlPool) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (7)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let producer = Producer::new(db.clone());
    producer
        .enqueue_in(
            &mut tx,
            NewJob::json("send_invoice", serde_json::json!({"order": 7})),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let jobs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobq_jobs WHERE kind = 'send_invoice'")
            .fetch_one(db)
            .await
            .unwrap();
    assert_eq!(jobs, 1);
}

#[sqlx::test(migrations = false)]
async fn application_first_then_jobq(db: MySqlPool) {
    let dir = tempfile::tempdir().unwrap();
    app_migrations(dir.path());
    let app = Migrator::new(dir.path()).await.unwrap();
    app.run(&db).await.unwrap();

    // The application's newer migration does not make jobq believe it is migrated.
    let err = jobq_producer::check_migrated(&db).await.unwrap_err();
    assert!(matches!(err, jobq_producer::Error::NotMigrated(_)), "{err}");

    let report = jobq_producer::migrate(&db).await.unwrap();
    assert_eq!(report.applied.len(), jobq_producer::migrations().len());
    assert_eq!(report.moved_from_sqlx, 0);
    jobq_producer::check_migrated(&db).await.unwrap();
    // The application's history is untouched and its migrate still passes.
    assert_eq!(sqlx_rows(&db).await, vec![20200101000001, 29990101000001]);
    app.run(&db).await.unwrap();
    // A second jobq migrate applies nothing.
    jobq_is_current(&db).await;
    order_and_job_in_one_transaction(&db).await;
}

#[sqlx::test(migrations = false)]
async fn jobq_first_then_application(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let exists: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_sqlx_migrations'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(exists, 0, "jobq must not create _sqlx_migrations");

    let dir = tempfile::tempdir().unwrap();
    app_migrations(dir.path());
    let app = Migrator::new(dir.path()).await.unwrap();
    app.run(&db).await.unwrap();
    app.run(&db).await.unwrap();
    jobq_is_current(&db).await;
    order_and_job_in_one_transaction(&db).await;
}

/// A database an earlier jobq migrated through sqlx, shared with an application's migration:
/// the first new `jobq migrate` moves jobq's rows and leaves the application's.
#[sqlx::test(migrations = false)]
async fn upgrade_from_sqlx_history(db: MySqlPool) {
    migrate_like_an_earlier_jobq(&db).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("20200101000001_orders.sql"),
        "CREATE TABLE orders (id BIGINT PRIMARY KEY);",
    )
    .unwrap();
    // What an application had to do before: ignore jobq's rows in the shared table.
    let mut app = Migrator::new(dir.path()).await.unwrap();
    app.set_ignore_missing(true);
    app.run(&db).await.unwrap();
    assert!(jobq_producer::check_migrated(&db).await.is_err());

    let report = jobq_producer::migrate(&db).await.unwrap();
    assert_eq!(
        report.moved_from_sqlx,
        jobq_producer::migrations().len() as u64 - 1
    );
    let newest: Vec<i64> = report.applied.iter().map(|m| m.version).collect();
    assert_eq!(newest, vec![jobq_producer::latest_version()]);
    jobq_producer::check_migrated(&db).await.unwrap();
    assert_eq!(sqlx_rows(&db).await, vec![20200101000001]);
    // The application no longer needs ignore_missing.
    let app = Migrator::new(dir.path()).await.unwrap();
    app.run(&db).await.unwrap();
    let (version, success): (i64, bool) =
        sqlx::query_as("SELECT version, success FROM jobq_migrations ORDER BY version LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(version, jobq_producer::migrations()[0].version);
    assert!(success);
}

/// Only jobq's rows in `_sqlx_migrations`: the table goes with them.
#[sqlx::test(migrations = false)]
async fn upgrade_drops_an_emptied_sqlx_table(db: MySqlPool) {
    migrate_like_an_earlier_jobq(&db).await;
    jobq_producer::migrate(&db).await.unwrap();
    let err = sqlx::query("SELECT 1 FROM _sqlx_migrations")
        .fetch_all(&db)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("doesn't exist"), "{err}");
    jobq_producer::check_migrated(&db).await.unwrap();
}

/// The script `jobq migrate --print-sql` prints, run by another tool (here: one multi-statement
/// call), leaves a database the workers accept, and `jobq migrate` then has nothing to do.
#[sqlx::test(migrations = false)]
async fn printed_sql_is_a_complete_migration(db: MySqlPool) {
    let sql = print_sql(&[]);
    db.execute(sqlx::raw_sql(&sql)).await.unwrap();
    jobq_is_current(&db).await;
    // The workers' check passes: `jobq stats` runs.
    jobq_ok(&url_of(&db).await, &["stats"], &[]).await;

    // Only what comes after a version.
    let newest = jobq_producer::latest_version();
    assert!(!print_sql(&["--after", &newest.to_string()]).contains("INSERT INTO jobq_migrations"));
}

/// A migration recorded with other contents than this build's is refused, naming it.
#[sqlx::test(migrations = false)]
async fn a_changed_migration_is_refused(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let first = jobq_producer::migrations()[0].version;
    sqlx::query("UPDATE jobq_migrations SET checksum = UNHEX('00') WHERE version = ?")
        .bind(first)
        .execute(&db)
        .await
        .unwrap();
    let err = jobq_producer::migrate(&db).await.unwrap_err().to_string();
    assert!(
        err.contains(&first.to_string()) && err.contains("other contents"),
        "{err}"
    );
}

/// A schema applied from the SQL files by another tool, without jobq's history: the script of
/// `--print-sql --after V` records what came before V as applied and runs the rest.
#[sqlx::test(migrations = false)]
async fn printed_sql_after_a_version_completes_a_tool_made_schema(db: MySqlPool) {
    migrate_like_an_earlier_jobq(&db).await;
    db.execute("DROP TABLE _sqlx_migrations").await.unwrap();
    let all = jobq_producer::migrations();
    let before_newest = all[all.len() - 2].version.to_string();
    db.execute(sqlx::raw_sql(&print_sql(&["--after", &before_newest])))
        .await
        .unwrap();
    jobq_is_current(&db).await;
}

/// A migration recorded but unfinished: recently (another run is applying it) the answer is to
/// wait; long ago (a run failed part way) it is to repair. Never a bare duplicate-key error.
#[sqlx::test(migrations = false)]
async fn an_unfinished_migration_is_explained(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let newest = jobq_producer::latest_version();
    sqlx::query("UPDATE jobq_migrations SET success = 0 WHERE version = ?")
        .bind(newest)
        .execute(&db)
        .await
        .unwrap();
    let err = jobq_producer::migrate(&db).await.unwrap_err().to_string();
    assert!(
        err.contains("another `jobq migrate`") && err.contains("wait"),
        "{err}"
    );
    sqlx::query(
        "UPDATE jobq_migrations SET installed_on = installed_on - INTERVAL 1 HOUR WHERE version = ?",
    )
    .bind(newest)
    .execute(&db)
    .await
    .unwrap();
    let err = jobq_producer::migrate(&db).await.unwrap_err().to_string();
    assert!(
        err.contains("failed part way") && err.contains("repair"),
        "{err}"
    );
    let err = jobq_producer::check_migrated(&db).await.unwrap_err();
    assert!(matches!(err, jobq_producer::Error::NotMigrated(_)), "{err}");
}

/// `jobq migrate` and `jobq_lock::ensure_schema` make the same `jobq_locks`, so a lock user and
/// a job user of one database agree, whichever came first.
#[sqlx::test(migrations = false)]
async fn the_lock_table_is_the_same_either_way(db: MySqlPool) {
    async fn definition(db: &MySqlPool) -> String {
        let (_, ddl): (String, String) = sqlx::query_as("SHOW CREATE TABLE jobq_locks")
            .fetch_one(db)
            .await
            .unwrap();
        ddl
    }
    jobq_lock::ensure_schema(&db).await.unwrap();
    let by_lock_crate = definition(&db).await;
    // A lock user came first, with a lock held: jobq migrate adopts the table as it is.
    let held = jobq_lock::LeaseLock::new(&db, "early")
        .acquire("kept", Duration::ZERO)
        .await
        .unwrap()
        .expect("free");
    jobq_producer::migrate(&db).await.unwrap();
    jobq_is_current(&db).await;
    assert_eq!(held.token(), Some(1));
    held.release().await.unwrap();
    // Made by the migration alone, the table is the same.
    for sql in [
        "DROP TABLE jobq_locks, jobq_kinds, jobq_schedules, jobq_keys, jobq_queues, jobq_deps, \
         jobq_workflows, jobq_workflow_jobs, jobq_callbacks, jobq_job_logs, jobq_job_progress, \
         jobq_workers, jobq_transitions, jobq_jobs",
        "DELETE FROM jobq_migrations",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    jobq_producer::migrate(&db).await.unwrap();
    assert_eq!(definition(&db).await, by_lock_crate);
    jobq_lock::ensure_schema(&db).await.unwrap();
}

/// A `jobq_locks` that is not jobq-lock's (another application's table of that name) is not
/// adopted: the migration that creates it fails, naming the table, and the workers' check
/// keeps refusing the schema.
#[sqlx::test(migrations = false)]
async fn a_foreign_lock_table_is_refused(db: MySqlPool) {
    sqlx::query("CREATE TABLE jobq_locks (id INT PRIMARY KEY)")
        .execute(&db)
        .await
        .unwrap();
    let err = jobq_producer::migrate(&db).await.unwrap_err().to_string();
    assert!(
        err.contains("not jobq-lock's") && err.contains("name_key"),
        "{err}"
    );
    assert!(jobq_producer::check_migrated(&db).await.is_err());
}

/// The printed script too runs where a lock user created `jobq_locks` first.
#[sqlx::test(migrations = false)]
async fn the_printed_script_adopts_the_lock_table(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    db.execute(sqlx::raw_sql(&print_sql(&[]))).await.unwrap();
    jobq_is_current(&db).await;
}

/// A migration that alters `jobq_jobs` (here 16, which rebuilds the unique index in two
/// statements) is refused while a worker is running, naming the migration and the worker, and
/// nothing is applied; once no worker has beaten for ten minutes (stopped or crashed), it runs.
#[sqlx::test(migrations = false)]
async fn a_migration_that_needs_a_stop_waits_for_the_workers(db: MySqlPool) {
    // The schema of a jobq from before migration 16, recorded as it recorded it.
    let dir = tempfile::tempdir().unwrap();
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for f in std::fs::read_dir(ours).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().as_ref() < "20261205000016" {
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
    }
    Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&db)
        .await
        .unwrap();
    // A worker of that jobq, running.
    db.execute(
        "INSERT INTO jobq_workers (id, host, pid, queues, started_at, last_heartbeat_at) \
         VALUES ('old-worker-1', 'app-7', 4242, 'default', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
    )
    .await
    .unwrap();
    let url = url_of(&db).await;
    let out = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .arg("migrate")
        .env("JOBQ_DATABASE_URL", &url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for part in [
        "20261205000016",
        "not safe while jobs are enqueued or worked",
        "old-worker-1 (host app-7, pid 4242)",
        "stop every worker",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
    assert!(
        jobq_producer::check_migrated(&db).await.is_err(),
        "nothing applied"
    );
    let has_16: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM jobq_migrations WHERE version = 20261205000016")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(has_16, 0);
    // The worker stopped long ago (or crashed): its row no longer counts.
    db.execute("UPDATE jobq_workers SET last_heartbeat_at = UTC_TIMESTAMP(6) - INTERVAL 11 MINUTE")
        .await
        .unwrap();
    jobq_ok(&url, &["migrate"], &[]).await;
    jobq_is_current(&db).await;
}
