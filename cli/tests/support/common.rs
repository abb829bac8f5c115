//! Helpers every integration test uses: settings and pools for the test database, starting and
//! stopping an in-process worker, waiting on state, and the history invariants checked after
//! every run.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use jobq_config::{ClaimMode, Settings};
use jobq_worker::{builtin, Registry, Shutdown, Stopped, Worker};
use sqlx::MySqlPool;
use tokio::task::JoinHandle;

/// The URL of the database `pool` (a `#[sqlx::test]` database) points at.
pub(crate) async fn url_of(pool: &MySqlPool) -> String {
    let db: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(pool)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into());
    let server = match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |s| s + 2) => &base[..i],
        _ => base.as_str(),
    };
    format!("{server}/{db}")
}

/// Settings for the test database with timings suited to tests.
pub(crate) async fn settings(pool: &MySqlPool, mode: ClaimMode) -> Settings {
    let mut s = Settings {
        database_url: url_of(pool).await,
        ..Default::default()
    };
    s.worker.claim_mode = mode;
    s.worker.poll_interval = Duration::from_millis(20);
    s.worker.backoff_base = Duration::from_millis(100);
    s.worker.backoff_max = Duration::from_secs(1);
    s.maintenance.interval = Duration::from_millis(100);
    s
}

/// A worker pool (session settings applied) for `settings`, with the `record` kind's effects
/// table in place.
pub(crate) async fn pool(settings: &Settings) -> MySqlPool {
    let pool = jobq_worker::connect(&settings.validate().unwrap())
        .await
        .unwrap();
    builtin::setup(&pool).await.unwrap();
    pool
}

pub(crate) fn builtins() -> Registry {
    let mut r = Registry::new();
    builtin::register(&mut r).unwrap();
    r
}

pub(crate) struct Running {
    pub(crate) shutdown: Shutdown,
    pub(crate) handle: JoinHandle<jobq_worker::Result<Stopped>>,
}

impl Running {
    pub(crate) async fn stop(self) -> Stopped {
        self.shutdown.stop();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("worker did not stop within 60 s")
            .unwrap()
            .unwrap()
    }
}

pub(crate) fn start(pool: MySqlPool, registry: Registry, settings: &Settings) -> Running {
    let (shutdown, signal) = Shutdown::new();
    let config = settings.validate().expect("test settings are valid");
    let handle = tokio::spawn(Worker::new(pool, registry, &config).run(signal));
    Running { shutdown, handle }
}

/// Polls `check` until it returns true, failing the test after `limit`.
#[track_caller]
pub(crate) fn wait_for<'a, F, Fut>(
    limit: Duration,
    what: &'a str,
    mut check: F,
) -> impl Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    let caller = std::panic::Location::caller();
    async move {
        let start = Instant::now();
        loop {
            if check().await {
                return;
            }
            if start.elapsed() > limit {
                panic!("timed out after {limit:?} waiting for {what} (at {caller})");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub(crate) async fn count(pool: &MySqlPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// How many jobs are `completed`.
pub(crate) async fn completed_jobs(pool: &MySqlPool) -> i64 {
    count(
        pool,
        "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
    )
    .await
}

pub(crate) async fn state_of(pool: &MySqlPool, id: u64) -> String {
    sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM jobq_jobs WHERE id = ?")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every job's history as `from>to:attempt` joined by `,` (`-` for the insert).
pub(crate) async fn histories(pool: &MySqlPool) -> Vec<(u64, String)> {
    sqlx::query_as(
        "SELECT job_id, CAST(GROUP_CONCAT(CONCAT(COALESCE(from_state, '-'), '>', to_state, ':', attempt) ORDER BY id) AS CHAR) \
         FROM jobq_transitions GROUP BY job_id ORDER BY job_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Checks the invariants every finished test run must satisfy: each transition is an edge of
/// the state machine and starts where the previous one ended, claims number attempts 1, 2, 3…,
/// and the last transition equals the job's state. No transaction is left open.
pub(crate) async fn assert_consistent(pool: &MySqlPool) {
    let rows: Vec<(u64, Option<String>, String, u32)> = sqlx::query_as(
        "SELECT job_id, CAST(from_state AS CHAR), CAST(to_state AS CHAR), attempt FROM jobq_transitions ORDER BY job_id, id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let states: std::collections::HashMap<u64, (String, u32)> =
        sqlx::query_as::<_, (u64, String, u32)>(
            "SELECT id, CAST(state AS CHAR), attempt FROM jobq_jobs",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, s, a)| (id, (s, a)))
        .collect();
    let mut i = 0;
    while i < rows.len() {
        let job = rows[i].0;
        let mut prev: Option<String> = None;
        let mut claims = 0;
        while i < rows.len() && rows[i].0 == job {
            let (_, from, to, attempt) = &rows[i];
            assert_eq!(
                from, &prev,
                "job {job}: transition starts where the last ended"
            );
            let parse = |s: &str| s.parse::<jobq_worker::JobState>().unwrap();
            assert!(
                jobq_worker::is_valid(from.as_deref().map(parse), parse(to)),
                "job {job}: {from:?} -> {to} is not an edge"
            );
            if to == "running" {
                claims += 1;
                assert_eq!(*attempt, claims, "job {job}: attempts grow by one per run");
            }
            prev = Some(to.clone());
            i += 1;
        }
        let (state, attempt) = &states[&job];
        assert_eq!(
            prev.as_deref(),
            Some(state.as_str()),
            "job {job}: last transition equals state"
        );
        assert_eq!(
            *attempt, claims,
            "job {job}: attempt equals the number of claims"
        );
    }
    assert_eq!(
        states.len(),
        rows.iter()
            .map(|r| r.0)
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
    // A connection a stopped worker closed (rather than return mid-transaction) is rolled back
    // by the server as it processes the disconnect, which it does only once the statement it is
    // running ends: a lock wait there lasts up to the session's innodb_lock_wait_timeout (5 s
    // for worker sessions). Allow that, but not more: a transaction still open after it leaked.
    let open_sql = "SELECT CAST(CONCAT(t.trx_state, ' since ', t.trx_started, ': ', \
         COALESCE(t.trx_query, p.info, p.command), ' [thread ', t.trx_mysql_thread_id, ', ', \
         t.trx_isolation_level, ', rows locked ', t.trx_rows_locked, ', modified ', \
         t.trx_rows_modified, ', user ', p.user, '@', p.host, ']') AS CHAR) \
         FROM information_schema.innodb_trx t JOIN information_schema.processlist p \
         ON p.id = t.trx_mysql_thread_id WHERE p.db = DATABASE() AND t.trx_mysql_thread_id <> CONNECTION_ID()";
    //
    // Judged: every jobq session (all READ COMMITTED, see db.rs): none may still be inside a
    // transaction, empty or not. A transaction jobq cut off closes its connection (OwnedTx,
    // RawTx), and an attempt's handler transaction cannot be begun once the attempt ended.
    // Not judged, only reported: REPEATABLE READ ones, the test's own connections and the sqlx
    // test pool, which a test may hold open on purpose.
    let harmful = |t: &String| t.contains("READ COMMITTED");
    let start = Instant::now();
    loop {
        let open: Vec<String> = sqlx::query_scalar(open_sql).fetch_all(pool).await.unwrap();
        if !open.iter().any(harmful) {
            if !open.is_empty() {
                eprintln!("transactions left open, not judged (see assert_consistent): {open:?}");
            }
            break;
        }
        if start.elapsed() >= Duration::from_secs(12) {
            panic!(
                "transactions left open: {open:?}\nwhat they hold:\n{}",
                held_locks(pool).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The TRANSACTIONS section of `SHOW ENGINE INNODB STATUS` with lock details (which table,
/// which index, which record each open transaction holds), for a failure message: a leaked
/// transaction is diagnosed by what it locked. Turns `innodb_status_output_locks` on for the
/// test server (it only makes that report more detailed).
async fn held_locks(pool: &MySqlPool) -> String {
    let _ = sqlx::query("SET GLOBAL innodb_status_output_locks = ON")
        .execute(pool)
        .await;
    let status: Result<(String, String, String), sqlx::Error> =
        sqlx::query_as("SHOW ENGINE INNODB STATUS")
            .fetch_one(pool)
            .await;
    match status {
        Ok((_, _, text)) => {
            let from = text.find("TRANSACTIONS\n").unwrap_or(0);
            let to = text[from..]
                .find("FILE I/O")
                .map_or(text.len(), |i| from + i);
            text[from..to].to_owned()
        }
        Err(e) => format!("(SHOW ENGINE INNODB STATUS failed: {e})"),
    }
}

/// Exactly one `jobq_demo_effects` row per job, for `n` jobs.
pub(crate) async fn assert_effects_once(pool: &MySqlPool, n: usize) {
    assert_eq!(
        count(pool, "SELECT COUNT(*) FROM jobq_demo_effects").await,
        n as i64,
        "one effect row per job"
    );
    assert_eq!(
        count(pool, "SELECT COUNT(DISTINCT job_id) FROM jobq_demo_effects").await,
        n as i64
    );
}

/// `jobq ARGS` against `url` (as user `ann`), run off the test's thread: a worker running in
/// the test's own runtime goes on meanwhile.
pub(crate) async fn jobq_cli(url: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"));
    cmd.args(args)
        .env("JOBQ_DATABASE_URL", url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env("USER", "ann")
        .env_remove("RUST_LOG")
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE");
    tokio::task::spawn_blocking(move || cmd.output().expect("run jobq"))
        .await
        .unwrap()
}

/// `jobq ARGS` against `url` with the extra settings `env`, off the test's thread; its stdout,
/// after checking it succeeded.
pub(crate) async fn jobq_ok(url: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"));
    cmd.args(args)
        .env("JOBQ_DATABASE_URL", url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE")
        .envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run jobq"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "jobq {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
