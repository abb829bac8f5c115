//! The jobq schema and its history: [`migrate`], [`check_migrated`], [`migrations_sql`].
//!
//! jobq keeps the list of its applied migrations in a table of its own, `jobq_migrations`, never
//! in sqlx's `_sqlx_migrations`: an application that runs its own sqlx migrations can share the
//! database (and so enqueue inside its own transactions) without either side seeing the other's
//! migrations as missing or applied. The SQL files are the repository's `migrations/` folder,
//! embedded at build time with their checksums.
//!
//! Upgrade from a database migrated by an earlier jobq (which recorded its migrations in
//! `_sqlx_migrations`): the first [`migrate`] moves jobq's rows (matched by version *and*
//! checksum) into `jobq_migrations` and deletes them from `_sqlx_migrations`, dropping that table
//! if nothing else was in it. Rows of the application's own migrations are never touched.
//!
//! Concurrent runs are serialised by a named lock per database (`GET_LOCK`, 300 s), taken on the
//! migrating session; on Galera, which refuses named locks, they run unserialised.

use std::fmt::Write as _;
use std::time::Instant;

use sqlx::{Connection, Executor, MySqlConnection, MySqlPool};

use crate::error::{Error, Result};

/// The SQL files, embedded. Private on purpose: `Migrator::run` would record them in
/// `_sqlx_migrations`, the table jobq must leave to the application.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

use jobq_sqlkit::codes::{DUPLICATE_KEY, NOT_SUPPORTED_YET, NO_SUCH_TABLE, NO_TABLE_ACCESS};
use jobq_sqlkit::number;

// language=MySQL
const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS jobq_migrations (
  version BIGINT NOT NULL PRIMARY KEY,
  description VARCHAR(255) NOT NULL,
  checksum VARBINARY(64) NOT NULL,
  success TINYINT(1) NOT NULL,
  installed_on TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  execution_ms BIGINT NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// One migration of this build: its version (the file name's number) and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The number that starts the file name, e.g. `20261123000001`.
    pub version: i64,
    /// The rest of the file name, words separated by spaces.
    pub description: String,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrateReport {
    /// Migrations applied by this call, in order.
    pub applied: Vec<Migration>,
    /// Rows of an earlier jobq moved from `_sqlx_migrations` into `jobq_migrations`.
    pub moved_from_sqlx: u64,
}

/// The migrations this build carries, oldest first.
pub fn migrations() -> Vec<Migration> {
    MIGRATIONS
        .iter()
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect()
}

/// The newest migration this build needs.
pub fn latest_version() -> i64 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Applies the migrations `pool`'s database lacks, recording them in `jobq_migrations`.
/// Idempotent; safe to run from several processes at once. The database must exist (`jobq
/// migrate` creates it; this function does not).
pub async fn migrate(pool: &MySqlPool) -> Result<MigrateReport> {
    let mut conn = pool.acquire().await.map_err(Error::MigrationDatabase)?;
    migrate_conn(&mut conn).await
}

/// [`migrate`] on one connection (the named lock that serialises runs belongs to it).
pub async fn migrate_conn(conn: &mut MySqlConnection) -> Result<MigrateReport> {
    migrate_conn_inner(conn).await.map_err(in_migration)
}

/// A database error met while migrating says so (not "while enqueueing").
fn in_migration(e: Error) -> Error {
    match e {
        Error::Database(e) => Error::MigrationDatabase(e),
        other => other,
    }
}

async fn migrate_conn_inner(conn: &mut MySqlConnection) -> Result<MigrateReport> {
    // language=MySQL
    // The name earlier builds used too, so an old and a new `jobq migrate` exclude each other.
    let name = "CONCAT('jobq-migrate:', SHA1(DATABASE()))";
    let locked: std::result::Result<Option<i64>, sqlx::Error> =
        sqlx::query_scalar(&format!("SELECT GET_LOCK({name}, 300)"))
            .fetch_one(&mut *conn)
            .await;
    let locked = match locked {
        Ok(Some(1)) => true,
        Ok(_) => {
            return Err(Error::Migration(
                "could not take the migration lock within 300 s; is another `jobq migrate` \
                 stuck? (`SELECT IS_USED_LOCK(CONCAT('jobq-migrate:', SHA1(DATABASE())))` \
                 names the holding connection)"
                    .into(),
            ))
        }
        Err(e) if number(&e) == Some(NOT_SUPPORTED_YET) => false,
        Err(e) => return Err(e.into()),
    };
    let result = migrate_locked(conn).await;
    if locked {
        // language=MySQL
        let _ = sqlx::query(&format!("SELECT RELEASE_LOCK({name})"))
            .execute(&mut *conn)
            .await;
    }
    result
}

async fn migrate_locked(conn: &mut MySqlConnection) -> Result<MigrateReport> {
    conn.execute(CREATE_HISTORY).await?;
    let mut report = MigrateReport {
        moved_from_sqlx: adopt_sqlx_rows(conn).await?,
        ..MigrateReport::default()
    };
    let applied = applied(conn).await?;
    if let Some((v, _, _)) = applied.iter().find(|(_, _, ok)| !ok) {
        return Err(unfinished(conn, *v).await);
    }
    let pending = MIGRATIONS
        .iter()
        .filter(|m| !applied.iter().any(|(v, _, _)| *v == m.version));
    if let Some(m) = pending.clone().find(|m| needs_a_stop(m)) {
        refuse_while_workers_run(
            conn,
            &format!(
                "migration {} ({}) alters jobq_jobs",
                m.version, m.description
            ),
        )
        .await?;
    }
    for m in MIGRATIONS.iter() {
        if let Some((_, checksum, _)) = applied.iter().find(|(v, _, _)| *v == m.version) {
            if checksum.as_slice() != &*m.checksum {
                return Err(Error::Migration(format!(
                    "migration {} ({}) was applied with other contents than this build's; the \
                     schema was made by a different jobq build, use that build's `jobq migrate`",
                    m.version, m.description
                )));
            }
            continue;
        }
        let started = Instant::now();
        // language=MySQL
        let claimed = sqlx::query(
            "INSERT INTO jobq_migrations (version, description, checksum, success) \
             VALUES (?, ?, ?, 0)",
        )
        .bind(m.version)
        .bind(&*m.description)
        .bind(&*m.checksum)
        .execute(&mut *conn)
        .await;
        match claimed {
            Ok(_) => {}
            // Another run (on Galera, where nothing serialises them) recorded it first.
            Err(e) if number(&e) == Some(DUPLICATE_KEY) => {
                return Err(unfinished(conn, m.version).await)
            }
            Err(e) => return Err(e.into()),
        }
        // DDL commits on its own in MySQL, so a file is not atomic: the row above stays at
        // success = 0 if a statement fails, and the next run refuses until it is repaired.
        let ran = conn.execute(sqlx::raw_sql(&runnable_sql(m))).await;
        if let Err(e) = ran {
            return Err(Error::Migration(format!(
                "migration {} ({}) failed: {}; the row in jobq_migrations stays at success = 0 \
                 until the schema is repaired",
                m.version,
                m.description,
                describe(&e)
            )));
        }
        if m.version == LOCKS_MIGRATION {
            check_lock_table(conn).await?;
        }
        // language=MySQL
        sqlx::query("UPDATE jobq_migrations SET success = 1, execution_ms = ? WHERE version = ?")
            .bind(i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX))
            .bind(m.version)
            .execute(&mut *conn)
            .await?;
        report.applied.push(Migration {
            version: m.version,
            description: m.description.to_string(),
        });
    }
    Ok(report)
}

/// Whether migration `m` must run with no worker and no producer running: it alters
/// `jobq_jobs` or `jobq_transitions`. Such an ALTER may copy the table (blocking every write,
/// heartbeats included, so leases expire under running jobs) or, as in migrations 13 and 16,
/// drop and re-add the unique index in two statements (a duplicate enqueued in between leaves
/// the index impossible to re-add). Migrations that only create or drop other tables run live.
fn needs_a_stop(m: &sqlx::migrate::Migration) -> bool {
    let sql = m.sql.to_ascii_lowercase();
    ["alter table jobq_jobs", "alter table jobq_transitions"]
        .iter()
        .any(|t| sql.contains(t))
}

/// How recent a worker's heartbeat must be for [`refuse_while_workers_run`] to count it as
/// running; older rows are crashed workers' (maintenance prunes them).
const LIVE_WORKER_SECS: u32 = 600;

/// Refuses `action` (a migration that [`needs_a_stop`], or a change of the history layout:
/// what it does, e.g. "migration 13 (flow limits) alters jobq_jobs") while a worker is
/// registered with a recent heartbeat, naming them. (Public for the worker crate's history
/// layout; not part of the producer's API.)
#[doc(hidden)]
pub async fn refuse_while_workers_run(conn: &mut MySqlConnection, action: &str) -> Result<()> {
    // language=MySQL
    let live: std::result::Result<Vec<(String, String, u32)>, sqlx::Error> = sqlx::query_as(
        "SELECT CAST(id AS CHAR), CAST(host AS CHAR), pid FROM jobq_workers \
         WHERE last_heartbeat_at >= UTC_TIMESTAMP(6) - INTERVAL ? SECOND ORDER BY id",
    )
    .bind(LIVE_WORKER_SECS)
    .fetch_all(&mut *conn)
    .await;
    let live = match live {
        Ok(rows) => rows,
        // A database jobq never ran on has no workers table yet.
        Err(e) if number(&e) == Some(NO_SUCH_TABLE) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if live.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = live
        .iter()
        .map(|(id, host, pid)| format!("{id} (host {host}, pid {pid})"))
        .collect();
    let ids: Vec<String> = live.iter().map(|(id, _, _)| format!("'{id}'")).collect();
    Err(Error::Migration(format!(
        "{action} and is not safe while jobs are enqueued or worked, \
         and {} worker(s) are running (heartbeat within {} s): {}; stop every worker and \
         producer of this database, then run `jobq migrate` again (a crashed worker's row stops \
         counting {} s after its last heartbeat; if you know those workers are gone, remove \
         their rows now: DELETE FROM jobq_workers WHERE id IN ({}))",
        live.len(),
        LIVE_WORKER_SECS,
        names.join(", "),
        LIVE_WORKER_SECS,
        ids.join(", ")
    )))
}

/// The error for migration `v` recorded but not finished: another run applying it now (on
/// Galera, where runs are not serialised), or one that failed part way and needs repair. A
/// row younger than ten minutes is taken for the former.
async fn unfinished(conn: &mut MySqlConnection, v: i64) -> Error {
    // language=MySQL
    let age: std::result::Result<Option<i64>, sqlx::Error> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(SECOND, installed_on, CURRENT_TIMESTAMP(6)) \
         FROM jobq_migrations WHERE version = ? AND success = 0",
    )
    .bind(v)
    .fetch_optional(&mut *conn)
    .await
    .map(Option::flatten);
    match age {
        Ok(Some(secs)) if secs < 600 => Error::Migration(format!(
            "migration {v} was started {secs} s ago by another `jobq migrate` that has not \
             finished; wait for it and run `jobq migrate` again (do not delete its row)"
        )),
        Ok(None) => Error::Migration(format!(
            "migration {v} was applied by another `jobq migrate` meanwhile; run `jobq \
             migrate` again"
        )),
        _ => Error::Migration(format!(
            "migration {v} failed part way through in an earlier run; repair the schema by \
             hand (compare with migrations/{v}_*.sql), then DELETE FROM jobq_migrations WHERE \
             version = {v} and run `jobq migrate` again"
        )),
    }
}

/// The migration that creates `jobq_locks`, the table `jobq-lock` can also create itself
/// (`jobq_lock::ensure_schema`, the same definition: a test compares them).
const LOCKS_MIGRATION: i64 = 20261202000009;

/// The SQL that applies `m`: its file, except that the migration creating `jobq_locks` does
/// so only if the table is missing, since a lock user may have created it first (the recorded
/// checksum stays the file's).
fn runnable_sql(m: &sqlx::migrate::Migration) -> std::borrow::Cow<'_, str> {
    if m.version == LOCKS_MIGRATION {
        m.sql
            .replace(
                "CREATE TABLE jobq_locks (",
                "CREATE TABLE IF NOT EXISTS jobq_locks (",
            )
            .into()
    } else {
        std::borrow::Cow::Borrowed(&*m.sql)
    }
}

/// Refuses a `jobq_locks` that is not jobq-lock's (a view, or a table without its columns).
async fn check_lock_table(conn: &mut MySqlConnection) -> Result<()> {
    let missing =
        jobq_sqlkit::missing_columns(&mut *conn, "jobq_locks", &jobq_sqlkit::LOCK_COLUMNS).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Migration(format!(
        "migration {LOCKS_MIGRATION}: the database has a jobq_locks that is not jobq-lock's \
         (no base table with {}); rename it and run `jobq migrate` again (its row in \
         jobq_migrations stays at success = 0: delete it first)",
        missing.join(", ")
    )))
}

/// (version, checksum, success) of every recorded migration.
async fn applied(conn: &mut MySqlConnection) -> Result<Vec<(i64, Vec<u8>, bool)>> {
    // language=MySQL
    let rows: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM jobq_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows)
}

/// A `_sqlx_migrations` row: version, checksum, success, execution time in nanoseconds.
type SqlxRow = (i64, Vec<u8>, bool, i64);

/// Moves an earlier jobq's rows from `_sqlx_migrations` into `jobq_migrations` (only rows whose
/// version and checksum are one of this build's migrations), in one transaction; drops
/// `_sqlx_migrations` if that leaves it empty. Returns how many rows moved.
async fn adopt_sqlx_rows(conn: &mut MySqlConnection) -> Result<u64> {
    // language=MySQL
    let rows: std::result::Result<Vec<SqlxRow>, sqlx::Error> =
        sqlx::query_as("SELECT version, checksum, success, execution_time FROM _sqlx_migrations")
            .fetch_all(&mut *conn)
            .await;
    let rows = match rows {
        Ok(rows) => rows,
        // No such table, or a jobq user without rights on it: nothing of jobq's is there.
        Err(e) if matches!(number(&e), Some(NO_SUCH_TABLE | NO_TABLE_ACCESS)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if let Some((v, _, _, _)) = rows.iter().find(|(v, sum, _, _)| {
        MIGRATIONS
            .iter()
            .any(|m| m.version == *v && &*m.checksum != sum.as_slice())
    }) {
        return Err(Error::Migration(format!(
            "_sqlx_migrations records version {v}, one of jobq's, with other contents than \
             this build's migration; it was applied from another file (an edited copy, or an \
             older jobq). Compare the schema with migrations/{v}_*.sql before going on"
        )));
    }
    let ours: Vec<_> = rows
        .into_iter()
        .filter(|(v, sum, _, _)| {
            MIGRATIONS
                .iter()
                .any(|m| m.version == *v && &*m.checksum == sum.as_slice())
        })
        .collect();
    if ours.is_empty() {
        return Ok(0);
    }
    let mut tx = conn.begin().await?;
    for (version, checksum, success, nanos) in &ours {
        let description = MIGRATIONS
            .iter()
            .find(|m| m.version == *version)
            .map(|m| m.description.to_string())
            .unwrap_or_default();
        // language=MySQL
        sqlx::query(
            "INSERT IGNORE INTO jobq_migrations (version, description, checksum, success, \
             execution_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(version)
        .bind(description)
        .bind(checksum)
        .bind(success)
        .bind(nanos / 1_000_000)
        .execute(&mut *tx)
        .await?;
        // language=MySQL
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ? AND checksum = ?")
            .bind(version)
            .bind(checksum)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // language=MySQL
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?;
    if left == 0 {
        // It held only jobq's rows: it was ours alone. sqlx creates it again if the
        // application ever runs its own migrations.
        // language=MySQL
        conn.execute("DROP TABLE IF EXISTS _sqlx_migrations")
            .await?;
    }
    Ok(ours.len() as u64)
}

/// Fails with [`Error::NotMigrated`] unless every migration of this build is recorded as applied
/// in `jobq_migrations` (a schema newer than this build is accepted). Reads a few rows.
pub async fn check_migrated<'c, E>(db: E) -> Result<()>
where
    E: Executor<'c, Database = sqlx::MySql>,
{
    check_migrated_inner(db).await.map_err(in_migration)
}

async fn check_migrated_inner<'c, E>(db: E) -> Result<()>
where
    E: Executor<'c, Database = sqlx::MySql>,
{
    // language=MySQL
    let rows: std::result::Result<Vec<i64>, sqlx::Error> =
        sqlx::query_scalar("SELECT version FROM jobq_migrations WHERE success = 1")
            .fetch_all(db)
            .await;
    let applied = match rows {
        Ok(rows) => rows,
        Err(e) if number(&e) == Some(NO_SUCH_TABLE) => {
            return Err(Error::NotMigrated(
                "there is no jobq_migrations table (a database migrated by a jobq before \
                 0.1 keeps its history in _sqlx_migrations; `jobq migrate` moves it)"
                    .to_owned(),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let missing: Vec<i64> = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    match missing.as_slice() {
        [] => Ok(()),
        [first, ..] => Err(Error::NotMigrated(format!(
            "{} of this build's {} migrations are not applied, the first is {first}",
            missing.len(),
            MIGRATIONS.iter().count()
        ))),
    }
}

/// Every migration as one SQL script, for teams whose schema changes are run by another tool
/// (`jobq migrate --print-sql`): the `jobq_migrations` table, then each migration followed by
/// the row that records it, so the workers' check passes once the script has run. Migrations at
/// or before `after` are only recorded as applied, not run (pass the newest version already
/// applied, or 0 for all).
pub fn migrations_sql(after: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- jobq schema, migrations after {after} (generated by `jobq migrate --print-sql`).\n\
         -- Run it once, in order, on the application's database. Each migration is recorded in\n\
         -- jobq_migrations, which the workers check at start.\n\n{CREATE_HISTORY};\n"
    );
    let before: Vec<_> = MIGRATIONS.iter().filter(|m| m.version <= after).collect();
    if !before.is_empty() {
        let _ = writeln!(
            out,
            "-- Migrations up to {after}, already applied (by another tool, or recorded in \
             _sqlx_migrations by an\n-- earlier jobq), recorded as such; rows already there \
             are kept."
        );
        for m in before {
            let _ = writeln!(out, "{}", record_row(m, "INSERT IGNORE"));
        }
        out.push('\n');
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > after) {
        let runnable = runnable_sql(m);
        let sql = runnable.trim_end();
        let _ = writeln!(
            out,
            "-- {} {}\n{sql}{}\n{}\n",
            m.version,
            m.description,
            if sql.ends_with(';') { "" } else { ";" },
            record_row(m, "INSERT"),
        );
    }
    out
}

/// The server's error with its number, or sqlx's text.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        {
            Some(my) => format!("error {}: {}", my.number(), my.message()),
            None => db.to_string(),
        },
        other => other.to_string(),
    }
}

/// The statement (`INSERT` or `INSERT IGNORE`) that records `m` as applied.
fn record_row(m: &sqlx::migrate::Migration, insert: &str) -> String {
    format!(
        "{insert} INTO jobq_migrations (version, description, checksum, success) \
         VALUES ({}, '{}', {}, 1);",
        m.version,
        m.description.replace('\'', "''"),
        jobq_sqlkit::hex_literal(&m.checksum),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_records_every_migration_after_the_given_one() {
        let all = migrations_sql(0);
        assert!(all.starts_with("-- jobq schema"));
        assert!(all.contains("CREATE TABLE IF NOT EXISTS jobq_migrations"));
        for m in migrations() {
            assert!(
                all.contains(&format!("VALUES ({}, '", m.version)),
                "{} not recorded",
                m.version
            );
        }
        let last = latest_version();
        let tail = migrations_sql(last);
        assert!(!tail.contains("INSERT INTO jobq_migrations"));
        assert!(tail.contains("CREATE TABLE IF NOT EXISTS jobq_migrations"));
        // The ones before are recorded as applied, not run.
        assert_eq!(
            tail.matches("INSERT IGNORE INTO jobq_migrations").count(),
            migrations().len()
        );
        assert!(!tail.contains("CREATE TABLE jobq_jobs"));
    }
}
