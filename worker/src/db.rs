//! Knowing the server: flavor and version checks at start, the session settings of every jobq
//! connection, pools, dedicated connections, and migrations.

use std::str::FromStr;
use std::time::Duration;

use jobq_config::{ClaimMode, Config, ProducerSettings};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, MySqlConnection, MySqlPool};

use crate::error::{Error, Result};

/// Which server family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// Oracle MySQL (or a compatible fork reporting a MySQL version).
    MySql,
    /// MariaDB.
    MariaDb,
}

/// What jobq learned about the server at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    /// Family.
    pub(crate) flavor: Flavor,
    /// `(major, minor, patch)`.
    pub(crate) version: (u32, u32, u32),
    /// `SELECT VERSION()` as reported.
    pub(crate) version_string: String,
    /// Galera replication is on (`wsrep_on = ON`).
    pub(crate) galera: bool,
}

impl ServerInfo {
    /// Parses `VERSION()` output such as `8.0.36` or `10.11.19-MariaDB-0+deb12u1`.
    pub(crate) fn parse(version: &str, galera: bool) -> Option<ServerInfo> {
        let flavor = if version.to_ascii_lowercase().contains("mariadb") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        let core = version
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next().flatten().unwrap_or(0);
        let patch = parts.next().flatten().unwrap_or(0);
        Some(ServerInfo {
            flavor,
            version: (major, minor, patch),
            version_string: version.to_owned(),
            galera,
        })
    }

    /// `SELECT … FOR UPDATE SKIP LOCKED`: MySQL 8.0.1+, MariaDB 10.6+.
    pub(crate) fn supports_skip_locked(&self) -> bool {
        match self.flavor {
            Flavor::MySql => self.version >= (8, 0, 1),
            Flavor::MariaDb => self.version >= (10, 6, 0),
        }
    }

    /// Fails, saying why and what to do, when the server cannot run what the settings ask for.
    pub(crate) fn check(&self, modes: impl IntoIterator<Item = ClaimMode>) -> Result<()> {
        // MySQL 8.0.16: CHECK constraints enforced, expression defaults (8.0.13), both used by
        // the schema.
        let supported = match self.flavor {
            Flavor::MySql => self.version >= (8, 0, 16),
            Flavor::MariaDb => self.version >= (10, 6, 0),
        };
        if !supported {
            return Err(Error::UnsupportedServer(format!(
                "{} is too old; jobq needs MySQL 8.0.16+ or MariaDB 10.6+",
                self.version_string
            )));
        }
        for mode in modes {
            match mode {
                // Both modes read with SKIP LOCKED (named-lock mode too, so an uncommitted
                // insert never stalls a queue).
                _ if !self.supports_skip_locked() => {
                    return Err(Error::UnsupportedServer(format!(
                        "{} has no SELECT … SKIP LOCKED (needs MySQL 8.0.1+ or MariaDB 10.6+); \
                         upgrade the server",
                        self.version_string
                    )))
                }
                ClaimMode::NamedLock if self.galera => {
                    return Err(Error::UnsupportedServer(format!(
                        "{} runs Galera (wsrep_on=ON), where GET_LOCK is unsupported or node-local; \
                         use claim_mode = \"skip-locked\"",
                        self.version_string
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// How long a Galera cluster may stall every node's writes while it drops a dead node (the
/// suspect timeout plus a view change): measured at about 6 s on loopback with the defaults.
pub(crate) const GALERA_STALL: Duration = Duration::from_secs(6);
/// What the keys below should be at least on Galera: the stall with a margin.
const GALERA_TOLERANT: Duration = Duration::from_secs(15);

/// On Galera, the settings that would turn the cluster's stall after a node crash into
/// cancelled handlers and re-run jobs on the healthy nodes: one line per key, naming it, its
/// value and what to set. Empty when the settings tolerate the stall.
pub(crate) fn galera_advice(config: &Config) -> Vec<String> {
    let mut advice = Vec::new();
    let lease = config.worker().lease_ttl;
    if lease < GALERA_TOLERANT {
        advice.push(format!(
            "worker.lease_ttl = {} is shorter than the ~{} s a Galera cluster stalls writes \
             after a node crash: leases on healthy nodes expire and their jobs are re-run; set \
             worker.lease_ttl = \"{}s\" (JOBQ_WORKER__LEASE_TTL)",
            humantime::format_duration(lease),
            GALERA_STALL.as_secs(),
            GALERA_TOLERANT.as_secs(),
        ));
    }
    let wait = config.database().lock_wait_timeout_secs;
    if u64::from(wait) < GALERA_TOLERANT.as_secs() {
        advice.push(format!(
            "database.lock_wait_timeout_secs = {wait} is shorter than the ~{} s a Galera cluster \
             stalls writes after a node crash: statements fail and are retried during it; set \
             database.lock_wait_timeout_secs = {} (JOBQ_DATABASE__LOCK_WAIT_TIMEOUT_SECS)",
            GALERA_STALL.as_secs(),
            GALERA_TOLERANT.as_secs(),
        ));
    }
    advice
}

/// Bytes of a multi-row INSERT beyond its payloads (up to 1,000 rows of names, times and
/// lengths), rounded up.
const INSERT_OVERHEAD: u64 = 512 << 10;

/// Fails when jobs the producer settings allow could not be written to this server: an INSERT
/// larger than `max_allowed_packet` makes the server drop the connection (no error to report),
/// and MariaDB refuses JSON nested 32 deep.
pub async fn check_server_limits(pool: &MySqlPool, config: &Config) -> Result<()> {
    let info = detect(pool).await?;
    info.check_producer(config.producer(), max_allowed_packet(pool).await?)
}

/// Bytes a batched completion adds to its statement, at most: its result spliced as hex (twice
/// the largest result a batch carries), its fence and its `CASE` arm.
const COMPLETION_BYTES: u64 = 2 * crate::runtime::CARRIED_RESULT_BYTES as u64 + 256;
/// Bytes a claimed job adds to the claim's statements, at most (its id twice, its fence, its
/// history row).
const CLAIMED_BYTES: u64 = 256;
/// Bytes of a claim's or completion batch's statements beyond its jobs.
const BATCH_OVERHEAD: u64 = 64 << 10;

/// Fails when a worked queue's batches could make statements larger than the server's
/// `max_allowed_packet` (the server would drop the connection instead of answering): a claim
/// of `max_batch` jobs carrying up to `completion_batch` completions.
pub(crate) fn check_batches(config: &Config, packet: u64) -> Result<()> {
    let completions = u64::from(config.worker().completion_batch);
    for q in config.worker_queues() {
        let claim = u64::from(q.max_batch);
        let statement = completions
            .saturating_mul(COMPLETION_BYTES)
            .saturating_add(claim.saturating_mul(CLAIMED_BYTES))
            .saturating_add(BATCH_OVERHEAD);
        if statement > packet {
            return Err(Error::ServerLimit(format!(
                "worker.completion_batch = {completions} with max_batch = {claim} (queue {}) \
                 can make statements of up to {statement} bytes, but the server's \
                 max_allowed_packet is {packet} and it drops the connection of a larger one; \
                 lower worker.completion_batch or max_batch ([worker] or [queues.{}]), or raise \
                 max_allowed_packet (SET GLOBAL max_allowed_packet = {statement})",
                q.name, q.name
            )));
        }
    }
    Ok(())
}

/// Fails unless `pool`'s sessions run at READ COMMITTED, as the worker's claims and key
/// counts need (each statement reads the latest committed rows; locking reads take no gap
/// locks). [`pool`] and [`crate::connect`] set it; a pool of the application's own may not.
pub(crate) async fn check_isolation(pool: &MySqlPool) -> Result<()> {
    // language=MySQL
    // The session's level: `transaction_isolation` on MySQL 8 and MariaDB 11.1+,
    // `tx_isolation` before.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW SESSION VARIABLES WHERE Variable_name IN ('transaction_isolation', 'tx_isolation')",
    )
    .fetch_all(pool)
    .await?;
    match rows.first() {
        Some((_, level)) if !level.eq_ignore_ascii_case("READ-COMMITTED") => {
            Err(Error::ServerLimit(format!(
                "the worker's pool runs its sessions at {level}, but the worker needs READ \
                 COMMITTED (its claims count running jobs and lock rows as of each statement); \
                 build the pool with jobq_worker::connect(&config), or set \
                 `SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED` in its after_connect"
            )))
        }
        _ => Ok(()),
    }
}

/// The server's `max_allowed_packet`.
pub(crate) async fn max_allowed_packet(pool: &MySqlPool) -> Result<u64> {
    // language=MySQL
    Ok(
        sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS UNSIGNED)")
            .fetch_one(pool)
            .await?,
    )
}

impl ServerInfo {
    /// See [`check_server_limits`]; `packet` is the server's `max_allowed_packet`.
    pub(crate) fn check_producer(&self, p: &ProducerSettings, packet: u64) -> Result<()> {
        let statement = (p.max_payload_bytes.max(jobq_producer::CHUNK_BYTES) as u64)
            .saturating_add(INSERT_OVERHEAD);
        if statement > packet {
            return Err(Error::ServerLimit(format!(
                "producer.max_payload_bytes = {} needs INSERTs of up to {statement} bytes, but the \
                 server's max_allowed_packet is {packet} and it drops the connection of a larger \
                 one; lower producer.max_payload_bytes to at most {} or raise max_allowed_packet \
                 (SET GLOBAL max_allowed_packet = {statement})",
                p.max_payload_bytes,
                packet.saturating_sub(INSERT_OVERHEAD),
            )));
        }
        if self.flavor == Flavor::MariaDb && p.max_json_depth > jobq_producer::PORTABLE_MAX_DEPTH {
            return Err(Error::ServerLimit(format!(
                "producer.max_json_depth = {} but {} refuses JSON nested deeper than {}; \
                 set producer.max_json_depth to at most {}",
                p.max_json_depth,
                self.version_string,
                jobq_producer::PORTABLE_MAX_DEPTH,
                jobq_producer::PORTABLE_MAX_DEPTH,
            )));
        }
        Ok(())
    }
}

/// Asks the server what it is.
pub(crate) async fn detect(pool: &MySqlPool) -> Result<ServerInfo> {
    detect_on(&mut *pool.acquire().await?).await
}

/// [`detect`] on one connection.
async fn detect_on(conn: &mut MySqlConnection) -> Result<ServerInfo> {
    // language=MySQL
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut *conn)
        .await?;
    // language=MySQL
    // The variable exists only on wsrep builds; no row means no Galera.
    let wsrep: Option<(String, String)> = sqlx::query_as("SHOW VARIABLES LIKE 'wsrep_on'")
        .fetch_optional(&mut *conn)
        .await?;
    let galera = wsrep.is_some_and(|(_, v)| v.eq_ignore_ascii_case("ON"));
    ServerInfo::parse(&version, galera).ok_or_else(|| {
        Error::UnsupportedServer(format!("cannot read the server version from {version:?}"))
    })
}

/// How long [`check_server`] and [`migrate`] wait for a server to answer.
const CHECK_WAIT: Duration = Duration::from_secs(10);

/// Fails, before anything is written, when the server `url` names (the first healthy host of
/// a list) cannot run `modes`: too old, no `SKIP LOCKED`, or named locks on Galera. Connects
/// without the database, which may not exist yet.
pub async fn check_server(url: &str, modes: &[ClaimMode]) -> Result<()> {
    let url = jobq_producer::first_healthy_url(url)
        .await
        .map_err(connect_error)?;
    let opts = MySqlConnectOptions::from_str(&jobq_producer::server_url(&url))?;
    // One direct connection: a refused or silent server is reported at once with its address
    // and cause (a pool would wait its acquire timeout and say only that).
    let mut conn = jobq_producer::connect_direct(&opts, CHECK_WAIT)
        .await
        .map_err(connect_error)?;
    let info = detect_on(&mut conn).await;
    let _ = conn.close().await;
    info?.check(modes.iter().copied())
}

/// Session settings of every jobq connection:
/// - READ COMMITTED: locking reads take no gap locks, so claims do not block producers' inserts
///   or deadlock with them, and a drained queue's purge backlog is not locked (MYSQL-NOTES §1.7);
/// - UTC session time zone; strict mode, so an oversized value is an error, not a truncation;
/// - a short `innodb_lock_wait_timeout`: nothing jobq does should wait long on a row lock.
async fn setup_session(conn: &mut MySqlConnection, lock_wait_secs: u32) -> Result<(), sqlx::Error> {
    // language=MySQL
    let sql = format!(
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
         SET SESSION time_zone = '+00:00', \
             sql_mode = CONCAT(@@sql_mode, ',STRICT_TRANS_TABLES'), \
             innodb_lock_wait_timeout = {lock_wait_secs}"
    );
    conn.execute(sqlx::raw_sql(&sql)).await?;
    // Galera applies the other nodes' writes asynchronously: a session on a node the pool
    // just moved to could read (or update) a job as it was before its claim on the old node,
    // and a heartbeat would then take a held lease for lost and cancel the job. Reads, updates
    // and deletes wait until the node has applied what the cluster committed before them.
    // (`SHOW VARIABLES` answers on every server; MySQL has no wsrep variables.)
    // language=MySQL
    let wsrep: Option<(String, String)> = sqlx::query_as("SHOW VARIABLES LIKE 'wsrep_on'")
        .fetch_optional(&mut *conn)
        .await?;
    if wsrep.is_some_and(|(_, on)| on.eq_ignore_ascii_case("ON")) {
        // language=MySQL
        conn.execute("SET SESSION wsrep_sync_wait = 3").await?;
    }
    Ok(())
}

/// A connection failure as a database error; a bad URL as the producer's validation error.
fn connect_error(e: jobq_producer::Error) -> Error {
    match e {
        jobq_producer::Error::Database(e) => Error::Database(e),
        other => Error::Producer(other),
    }
}

/// `opts`, quiet about slow statements.
fn quiet(opts: MySqlConnectOptions) -> MySqlConnectOptions {
    opts.log_slow_statements(tracing::log::LevelFilter::Debug, Duration::from_secs(1))
        .statement_cache_capacity(512)
}

/// Connect options for `url` (one host), quiet about slow statements.
pub(crate) fn connect_options(url: &str) -> Result<MySqlConnectOptions> {
    Ok(quiet(MySqlConnectOptions::from_str(url)?))
}

/// A pool of worker sessions (see [`setup_session`]) for `config`: `database.max_connections`,
/// or the process's total concurrency + 8 when 0.
pub(crate) async fn pool(config: &Config) -> Result<MySqlPool> {
    let max = match config.database().max_connections {
        0 => config.total_concurrency() + 8,
        n => n,
    };
    let lock_wait = config.database().lock_wait_timeout_secs;
    let options = MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(config.database().connect_timeout)
        .after_connect(move |conn, _meta| {
            Box::pin(async move { setup_session(conn, lock_wait).await })
        });
    // One host: a plain pool. Several hosts of one cluster: a pool that follows the healthy one.
    let pool = jobq_producer::connect_cluster(config.database_url(), options, quiet)
        .await
        .map_err(connect_error)?;
    Ok(pool)
}

/// One connection outside the pool, set up like the pool's (for named locks, which belong to a
/// session and must never go back to a pool).
pub(crate) async fn dedicated(
    pool: &MySqlPool,
    lock_wait_secs: u32,
) -> Result<MySqlConnection, sqlx::Error> {
    let mut conn = pool.connect_options().connect().await?;
    setup_session(&mut conn, lock_wait_secs).await?;
    Ok(conn)
}

/// Creates the database of `url` if missing and applies the migrations
/// ([`jobq_producer::migrate`]: history in `jobq_migrations`, never `_sqlx_migrations`).
/// Idempotent and safe to run from several processes at once (`CREATE DATABASE IF NOT EXISTS`;
/// the migrations themselves are serialised by a named lock).
pub async fn migrate(url: &str) -> Result<jobq_producer::MigrateReport> {
    // Of several hosts of one cluster, the first that answers (the schema replicates).
    let url = &jobq_producer::first_healthy_url(url)
        .await
        .map_err(connect_error)?;
    let opts = connect_options(url)?;
    if let Some(db) = opts.get_database() {
        let db = db.to_owned();
        if db.is_empty() || db.contains('`') || db.contains('\0') {
            return Err(Error::UnsupportedServer(format!(
                "database name {db:?} in the URL is not usable"
            )));
        }
        let server = MySqlConnectOptions::from_str(&jobq_producer::server_url(url))?;
        let mut conn = jobq_producer::connect_direct(&server, CHECK_WAIT)
            .await
            .map_err(connect_error)?;
        // language=MySQL
        conn.execute(sqlx::raw_sql(&format!(
            "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        )))
        .await?;
        conn.close().await?;
    }
    let mut conn = jobq_producer::connect_direct(&opts, CHECK_WAIT)
        .await
        .map_err(connect_error)?;
    let result = jobq_producer::migrate_conn(&mut conn).await;
    let _ = conn.close().await;
    Ok(result?)
}

/// Fails with [`Error::NotMigrated`] unless every migration of this build is applied.
pub async fn check_migrated<'c, E>(db: E) -> Result<()>
where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
{
    match jobq_producer::check_migrated(db).await {
        Ok(()) => Ok(()),
        Err(jobq_producer::Error::NotMigrated(why)) => Err(Error::NotMigrated(why)),
        Err(jobq_producer::Error::MigrationDatabase(e)) => Err(Error::Database(e)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let table = [
            (
                "10.11.19-MariaDB-0+deb12u1",
                Flavor::MariaDb,
                (10, 11, 19),
                true,
            ),
            ("10.5.2-MariaDB", Flavor::MariaDb, (10, 5, 2), false),
            ("10.6.0-MariaDB-log", Flavor::MariaDb, (10, 6, 0), true),
            ("8.0.36", Flavor::MySql, (8, 0, 36), true),
            ("8.0.0-dmr", Flavor::MySql, (8, 0, 0), false),
            ("5.7.44-log", Flavor::MySql, (5, 7, 44), false),
        ];
        for (s, flavor, version, skip) in table {
            let i = ServerInfo::parse(s, false).unwrap();
            assert_eq!(
                (i.flavor, i.version, i.supports_skip_locked()),
                (flavor, version, skip),
                "{s}"
            );
        }
        assert!(ServerInfo::parse("garbage", false).is_none());
    }

    #[test]
    fn checks() {
        let old = ServerInfo::parse("5.7.44", false).unwrap();
        assert!(old.check([ClaimMode::NamedLock]).is_err());
        let maria105 = ServerInfo::parse("10.5.9-MariaDB", false).unwrap();
        assert!(maria105.check([]).is_err());
        let galera = ServerInfo::parse("10.11.3-MariaDB", true).unwrap();
        galera.check([ClaimMode::SkipLocked]).unwrap();
        let e = galera
            .check([ClaimMode::NamedLock])
            .unwrap_err()
            .to_string();
        assert!(e.contains("Galera"), "{e}");
    }

    #[test]
    fn galera_advice_names_the_keys() {
        let mut s = jobq_config::Settings::default();
        let advice = galera_advice(&s.clone().validate().unwrap());
        assert_eq!(advice.len(), 2, "{advice:?}");
        assert!(advice[0].contains("worker.lease_ttl = 5s"), "{advice:?}");
        assert!(
            advice[1].contains("database.lock_wait_timeout_secs = 5"),
            "{advice:?}"
        );
        s.worker.lease_ttl = Duration::from_secs(15);
        let advice = galera_advice(&s.clone().validate().unwrap());
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert!(advice[0].contains("JOBQ_DATABASE__LOCK_WAIT_TIMEOUT_SECS"));
        s.database.lock_wait_timeout_secs = 20;
        assert!(galera_advice(&s.validate().unwrap()).is_empty());
    }

    #[test]
    fn producer_limits_fit_the_server() {
        let maria = ServerInfo::parse("10.11.19-MariaDB", false).unwrap();
        let mysql = ServerInfo::parse("8.0.36", false).unwrap();
        let p = |bytes: usize, depth: u32| ProducerSettings {
            max_payload_bytes: bytes,
            max_json_depth: depth,
            ..Default::default()
        };
        const MIB: u64 = 1 << 20;
        // (server, settings, max_allowed_packet, accepted)
        let table = [
            (&maria, p(1 << 20, 31), 16 * MIB, true),
            (&maria, p(16 << 20, 31), 16 * MIB, false),
            (&maria, p(1 << 20, 31), 4 * MIB, false),
            (&maria, p(1 << 20, 31), 5 * MIB, true),
            (&maria, p(1 << 20, 32), 16 * MIB, false),
            (&mysql, p(1 << 20, 100), 64 * MIB, true),
            (&mysql, p(63 << 20, 31), 64 * MIB, true),
            (&mysql, p(64 << 20, 31), 64 * MIB, false),
        ];
        for (server, settings, packet, ok) in table {
            let r = server.check_producer(&settings, packet);
            assert_eq!(r.is_ok(), ok, "{settings:?} at {packet}: {r:?}");
        }
    }
}
