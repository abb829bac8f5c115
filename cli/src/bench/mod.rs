//! `jobq bench`: measures jobq against the server it runs on.
//!
//! Scenarios (all in a database of their own, `<db>_bench`, emptied before each run):
//! - `burn-down`: insert N `noop` jobs (timing the enqueue), then start P `jobq work` processes
//!   with C slots each and time first claim → last completion (database clock);
//! - `steady`: P worker processes run while this process inserts at a fixed rate for a while;
//!   reports pickup latency (run_at → claim) percentiles;
//! - `ceiling`: the least SQL that can drain the same queue (claim 100, mark running, one UPDATE
//!   per batch to finish; no tokens, no history, no leases), with no framework around it: what
//!   the server can do, so each report shows jobq as a fraction of it;
//! - `scaling`: one claim's time with 10k and 1M waiting jobs, and with 1M finished jobs present;
//! - `locks`: the lock library's acquire/release latency and contended throughput (`locks.rs`);
//! - `web`: the console's pages timed over HTTP with N jobs in a busy day's mix (`web.rs`);
//! - `price`: the ceiling's variants, pricing each index and each history row (`price.rs`);
//! - `two-servers`: N jobs split over two queues on two servers (`--second-database-url`),
//!   drained by P processes that each work both, against the same N on one server
//!   (`servers.rs`).
//!
//! Every burn-down run is paired with a ceiling run of the same size and claim mode.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobq_config::{ClaimMode, Config};

use crate::common::ModeArg;
use jobq_worker::NewJob;
use serde::Serialize;
use serde_json::json;
use sqlx::MySqlPool;

mod locks;
mod price;
mod servers;
mod sql;
mod web;

const QUEUE: &str = "bench";

/// `--scenario`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// Insert N jobs, then time P worker processes draining them.
    BurnDown,
    /// Workers run while jobs are inserted at a fixed rate; pickup latency.
    Steady,
    /// The least SQL that drains the same queue, alone.
    Ceiling,
    /// One claim's time with 10k and 1M jobs waiting and 1M finished.
    Scaling,
    /// Burn N jobs down, age them past retention, and time the leader's pruning of them (and
    /// their history) against the burn-down's completion rate.
    Retention,
    /// Lock latency (acquire, release) and throughput with 16 contending processes, for the
    /// session lock, the lease lock and a semaphore.
    Locks,
    /// The web console's pages timed over HTTP with N jobs (default 20,000; the README's
    /// figure uses --jobs 1000000) in a busy day's mix of states.
    Web,
    /// N jobs over two queues, one per server (`--second-database-url`), drained by P
    /// processes working both, against the same N jobs on one server.
    TwoServers,
    /// The hot path priced: the ceiling on jobq's schema with and without history, without
    /// each secondary index in turn, and on a narrow table.
    Price,
    /// One contending process of `locks` (started by it).
    #[value(hide = true)]
    LockContender,
}

impl Scenario {
    fn as_str(self) -> &'static str {
        match self {
            Scenario::BurnDown => "burn-down",
            Scenario::Steady => "steady",
            Scenario::Ceiling => "ceiling",
            Scenario::Scaling => "scaling",
            Scenario::Retention => "retention",
            Scenario::Locks => "locks",
            Scenario::Web => "web",
            Scenario::TwoServers => "two-servers",
            Scenario::Price => "price",
            Scenario::LockContender => "lock-contender",
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::BurnDown)]
    scenario: Scenario,
    /// Jobs per run (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "20000")]
    jobs: Vec<u32>,
    /// Claim modes (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "skip-locked")]
    claim_mode: Vec<ModeArg>,
    /// Worker processes (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    processes: Vec<u32>,
    /// Slots per worker process (comma-separated for several).
    #[arg(long, value_delimiter = ',', default_value = "8")]
    concurrency: Vec<u32>,
    /// steady: jobs inserted per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// steady: how long the producer inserts.
    #[arg(long, value_parser = crate::common::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Concurrent producer connections filling the queue (each inserts in 10,000-job calls).
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Connections of the ceiling run.
    #[arg(long, default_value_t = 4)]
    ceiling_connections: u32,
    /// Give every job a unique key (burn-down, steady): the cost of unique jobs.
    #[arg(long)]
    unique_keys: bool,
    /// Give the jobs concurrency keys, N of them in turn (burn-down, steady): the cost of
    /// per-key limits.
    #[arg(long, value_name = "N")]
    concurrency_keys: Option<u32>,
    /// Workers' key_limit for the bench queue (with --concurrency-keys).
    #[arg(long, default_value_t = 1)]
    key_limit: u32,
    /// Workers' rate_limit for the bench queue, e.g. 100000/1s: the cost of a rate limit.
    #[arg(long, value_name = "RATE")]
    rate_limit: Option<jobq_config::Rate>,
    /// Workers' prefetch (jobs claimed ahead of free slots, README "Prefetch"); shown in the
    /// table as `PxC+N`.
    #[arg(long, default_value_t = 0)]
    prefetch: u32,
    /// lock-contender: the kind of lock.
    #[arg(long, value_enum, hide = true)]
    lock_kind: Option<locks::LockKind>,
    /// two-servers: the second server (its `<db>_bench` database is used, like the first's).
    #[arg(long, value_name = "URL")]
    second_database_url: Option<String>,
    /// burn-down: also run the narrow-table floor (the `price` scenario's floor: claim 100,
    /// mark them running, finish them, on a table with one index and no history) after the
    /// ceiling, and report each burn-down against it too.
    #[arg(long)]
    floor: bool,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Report {
    scenario: String,
    claim_mode: String,
    processes: u32,
    concurrency: u32,
    jobs: u32,
    enqueue_jobs_per_s: Option<f64>,
    jobs_per_s: f64,
    ceiling_jobs_per_s: Option<f64>,
    percent_of_ceiling: Option<f64>,
    /// `--floor`: the rate against the narrow-table floor of the same invocation.
    percent_of_floor: Option<f64>,
    pickup_p50_ms: Option<f64>,
    pickup_p95_ms: Option<f64>,
    pickup_p99_ms: Option<f64>,
    claims_per_job: Option<f64>,
    claim_round_trips_per_job: Option<f64>,
    statements_per_job: f64,
    rows_written_per_job: f64,
    note: String,
}

pub(crate) async fn run(config: &Config, a: BenchArgs) -> Result<std::process::ExitCode> {
    if a.scenario == Scenario::LockContender {
        // Started by `locks` with the bench database's URL already.
        let kind = a.lock_kind.context("lock-contender needs --lock-kind")?;
        let pool = jobq_worker::connect(config).await?;
        locks::contender(&pool, kind, a.duration).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    PRODUCERS.store(a.producers, std::sync::atomic::Ordering::Relaxed);
    UNIQUE_KEYS.store(a.unique_keys, std::sync::atomic::Ordering::Relaxed);
    CONCURRENCY_KEYS.store(
        a.concurrency_keys.unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    let queue_env = QUEUE.to_uppercase();
    let mut env = vec![(
        format!("JOBQ_QUEUES__{queue_env}__KEY_LIMIT"),
        a.key_limit.to_string(),
    )];
    if let Some(r) = a.rate_limit {
        env.push((
            format!("JOBQ_QUEUES__{queue_env}__RATE_LIMIT"),
            r.to_string(),
        ));
    }
    if a.prefetch > 0 {
        env.push(("JOBQ_WORKER__PREFETCH".into(), a.prefetch.to_string()));
    }
    PREFETCH.store(a.prefetch, std::sync::atomic::Ordering::Relaxed);
    let _ = WORKER_ENV.set(env);
    let url = bench_url(config.database_url());
    let modes: Vec<ClaimMode> = a.claim_mode.iter().map(|&m| m.into()).collect();
    let mut bs = config.settings().clone();
    bs.database_url = url.clone();
    bs.database.max_connections = 0;
    bs.worker.concurrency = a.ceiling_connections.max(4);
    let pool = bench_pool(&bs, &modes).await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&pool)
        .await?;
    eprintln!("jobq bench: {} on {version} ({url})", a.scenario.as_str());
    let mut reports = Vec::new();
    match a.scenario {
        Scenario::BurnDown | Scenario::Ceiling => {
            for &jobs in &a.jobs {
                for &mode in &modes {
                    let ceiling = ceiling(&pool, jobs, mode, a.ceiling_connections).await?;
                    emit(&a, &ceiling);
                    let c = ceiling.jobs_per_s;
                    reports.push(ceiling);
                    if a.scenario == Scenario::Ceiling {
                        continue;
                    }
                    let floor = if a.floor {
                        let mut f =
                            ceiling_of(&pool, jobs, mode, a.ceiling_connections, Batch::Narrow)
                                .await?;
                        f.scenario = "floor".into();
                        emit(&a, &f);
                        let rate = f.jobs_per_s;
                        reports.push(f);
                        Some(rate)
                    } else {
                        None
                    };
                    for &p in &a.processes {
                        for &conc in &a.concurrency {
                            let mut r = burn_down(&pool, &url, jobs, mode, p, conc).await?;
                            r.ceiling_jobs_per_s = Some(c);
                            r.percent_of_ceiling = Some(100.0 * r.jobs_per_s / c);
                            r.percent_of_floor = floor.map(|f| 100.0 * r.jobs_per_s / f);
                            emit(&a, &r);
                            reports.push(r);
                        }
                    }
                }
            }
        }
        Scenario::Steady => {
            for &mode in &modes {
                for &p in &a.processes {
                    for &conc in &a.concurrency {
                        let r = steady(&pool, &url, a.rate, a.duration, mode, p, conc).await?;
                        emit(&a, &r);
                        reports.push(r);
                    }
                }
            }
        }
        Scenario::Scaling => scaling(&pool, &url, a.json).await?,
        Scenario::Locks => locks::run(&pool, &url, a.duration, a.json).await?,
        Scenario::Web => {
            for &jobs in &a.jobs {
                web::run(&pool, &bs.validate()?, jobs, a.json).await?;
            }
        }
        Scenario::TwoServers => {
            let second = a
                .second_database_url
                .as_deref()
                .context("two-servers needs --second-database-url mysql://…")?;
            let second = bench_url(second);
            let mut s2 = bs.clone();
            s2.database_url = second.clone();
            let pool2 = bench_pool(&s2, &modes).await?;
            for &jobs in &a.jobs {
                for &mode in &modes {
                    for &p in &a.processes {
                        for &conc in &a.concurrency {
                            let one = burn_down(&pool, &url, jobs, mode, p, conc).await?;
                            emit(&a, &one);
                            let r = servers::burn_down(
                                [(&pool, url.as_str()), (&pool2, second.as_str())],
                                jobs,
                                mode,
                                p,
                                conc,
                            )
                            .await?;
                            emit(&a, &r);
                            reports.push(one);
                            reports.push(r);
                        }
                    }
                }
            }
        }
        Scenario::Price => {
            for &jobs in &a.jobs {
                for r in price::run(&pool, jobs, a.ceiling_connections).await? {
                    emit(&a, &r);
                    reports.push(r);
                }
            }
        }
        Scenario::LockContender => unreachable!("handled above"),
        Scenario::Retention => {
            for &jobs in &a.jobs {
                let burn = burn_down(&pool, &url, jobs, ClaimMode::SkipLocked, 1, 32).await?;
                emit(&a, &burn);
                let r = retention(&pool, &bs, jobs, burn.jobs_per_s).await?;
                emit(&a, &r);
                reports.push(burn);
                reports.push(r);
            }
        }
    }
    if !a.json && !reports.is_empty() {
        match a.scenario {
            Scenario::Price => price::print(&reports),
            _ => print_table(&reports),
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A pool on the bench database `settings.database_url`, migrated; refused before anything is
/// written (no database created) when the server cannot run `modes`.
async fn bench_pool(settings: &jobq_config::Settings, modes: &[ClaimMode]) -> Result<MySqlPool> {
    let url = &settings.database_url;
    jobq_worker::check_server(url, modes).await?;
    jobq_worker::migrate(url)
        .await
        .with_context(|| format!("preparing the bench database {url}"))?;
    Ok(jobq_worker::connect(&settings.validate()?).await?)
}

/// `<database>_bench` on the same server.
fn bench_url(url: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base
        .rfind('/')
        .filter(|i| *i > base.find("://").map_or(0, |s| s + 2));
    let (server, db) = match cut {
        Some(i) => (&base[..i], &base[i + 1..]),
        None => (base, ""),
    };
    let db = if db.is_empty() { "jobq" } else { db };
    match query {
        Some(q) => format!("{server}/{db}_bench?{q}"),
        None => format!("{server}/{db}_bench"),
    }
}

fn emit(a: &BenchArgs, r: &Report) {
    if a.json {
        outln!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        eprintln!(
            "\r  {:<9} {:<11} {:<6} {:>7} jobs: {:>8.0} jobs/s{}",
            r.scenario,
            r.claim_mode,
            slots_text(r),
            r.jobs,
            r.jobs_per_s,
            r.percent_of_ceiling
                .map(|p| format!(" ({p:.0}% of ceiling)"))
                .unwrap_or_default()
                + &r.percent_of_floor
                    .map(|p| format!(" ({p:.0}% of floor)"))
                    .unwrap_or_default()
        );
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn print_table(rows: &[Report]) {
    outln!(
        "| scenario | mode | procs x conc | jobs | enqueue jobs/s | jobs/s | % of ceiling | pickup p50/p95/p99 ms | claims/job | claim RTs/job | statements/job | rows written/job |"
    );
    outln!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let pickup = match (r.pickup_p50_ms, r.pickup_p95_ms, r.pickup_p99_ms) {
            (Some(a), Some(b), Some(c)) => format!("{a:.1} / {b:.1} / {c:.1}"),
            _ => "-".into(),
        };
        outln!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} |",
            r.scenario,
            r.claim_mode,
            slots_text(r),
            r.jobs,
            fmt_opt(r.enqueue_jobs_per_s, 0),
            r.jobs_per_s,
            match r.percent_of_floor {
                Some(f) => format!("{} ({f:.0} of floor)", fmt_opt(r.percent_of_ceiling, 0)),
                None => fmt_opt(r.percent_of_ceiling, 0),
            },
            pickup,
            fmt_opt(r.claims_per_job, 3),
            fmt_opt(r.claim_round_trips_per_job, 3),
            r.statements_per_job,
            r.rows_written_per_job,
        );
    }
}

/// Inserts `n` noop jobs in calls of 10,000 (multi-row INSERTs with history) from `producers`
/// concurrent connections; returns jobs/s.
pub(super) async fn fill(pool: &MySqlPool, n: u32) -> Result<f64> {
    fill_queue(pool, n, QUEUE).await
}

/// [`fill`] into `queue`.
pub(super) async fn fill_queue(pool: &MySqlPool, n: u32, queue: &'static str) -> Result<f64> {
    let producers = PRODUCERS.load(std::sync::atomic::Ordering::Relaxed).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let share = n / producers + u32::from(p < n % producers);
        let producer = jobq_worker::Producer::new(pool.clone());
        tasks.push(tokio::spawn(async move {
            let mut left = share;
            while left > 0 {
                let k = left.min(10_000);
                let unique = UNIQUE_KEYS.load(std::sync::atomic::Ordering::Relaxed);
                let keys = CONCURRENCY_KEYS.load(std::sync::atomic::Ordering::Relaxed);
                let jobs = (0..k)
                    .map(|i| {
                        let mut job = NewJob::json("noop", json!({})).queue(queue);
                        if keys > 0 {
                            job = job.concurrency_key(format!("key-{}", (left + i) % keys));
                        }
                        if unique {
                            job.unique_key(format!("{p}:{left}:{i}"))
                        } else {
                            job
                        }
                    })
                    .collect();
                producer.enqueue_many(jobs).await?;
                left -= k;
            }
            Ok::<(), jobq_worker::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(f64::from(n) / started.elapsed().as_secs_f64())
}

/// `--concurrency-keys` (0: none), shared with `fill`.
static CONCURRENCY_KEYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Settings every bench worker process gets (`--key-limit`, `--rate-limit`).
static WORKER_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// `--prefetch`, for the tables.
static PREFETCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The slots of a report: `PxC`, or `PxC+N` for the worker runs of a bench with prefetch.
fn slots_text(r: &Report) -> String {
    let n = PREFETCH.load(std::sync::atomic::Ordering::Relaxed);
    // The ceiling and the floor are raw SQL: no worker, no prefetch.
    if n > 0 && !matches!(r.scenario.as_str(), "ceiling" | "floor") {
        format!("{}x{}+{n}", r.processes, r.concurrency)
    } else {
        format!("{}x{}", r.processes, r.concurrency)
    }
}

/// `--unique-keys`, shared with `fill`.
static UNIQUE_KEYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--producers`, shared with `fill`.
static PRODUCERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

struct Workers(Vec<Child>);

impl Workers {
    fn spawn(url: &str, mode: ClaimMode, processes: u32, concurrency: u32) -> Result<Workers> {
        Workers::spawn_with(url, mode, processes, concurrency, &[])
    }

    fn spawn_with(
        url: &str,
        mode: ClaimMode,
        processes: u32,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Result<Workers> {
        Workers::spawn_on(url, QUEUE, mode, processes, concurrency, env)
    }

    /// `processes` workers of `queues` (comma-separated), `concurrency` slots per queue.
    fn spawn_on(
        url: &str,
        queues: &str,
        mode: ClaimMode,
        processes: u32,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Result<Workers> {
        let exe = std::env::current_exe()?;
        let mut v = Vec::new();
        let common = WORKER_ENV.get().map(Vec::as_slice).unwrap_or(&[]);
        for i in 0..processes {
            v.push(
                Command::new(&exe)
                    .envs(common.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .envs(env.iter().copied())
                    .args([
                        "work",
                        "--queues",
                        queues,
                        "--claim-mode",
                        mode.as_str(),
                        "--concurrency",
                    ])
                    .arg(concurrency.to_string())
                    .env("JOBQ_DATABASE_URL", prefer_host(url, i as usize))
                    .env("JOBQ_LOG__LEVEL", "warn")
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting a worker process")?,
            );
        }
        Ok(Workers(v))
    }

    fn stop(mut self) -> Result<()> {
        for c in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let status = c.wait()?;
            if !status.success() {
                bail!("a worker process exited with {status}");
            }
        }
        self.0.clear();
        Ok(())
    }

    /// Fails when a worker process has exited (they run until stopped): its error is on the
    /// terminal, above.
    fn check_alive(&mut self) -> Result<()> {
        for (i, c) in self.0.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "worker process {} of {} exited early with {status}; its error is printed above",
                    i + 1,
                    self.0.len()
                );
            }
        }
        Ok(())
    }
}

/// `url` for worker process `i`: with several hosts (one cluster), host `i mod n` first and
/// the others after it, so P processes spread over the nodes (process 1 on the first host,
/// process 2 on the second, …) and each still fails over; one host: `url` itself.
fn prefer_host(url: &str, i: usize) -> String {
    jobq_producer::rotate_hosts(url, i).unwrap_or_else(|_| url.to_owned())
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `n` jobs are completed, printing a progress line; fails after 60 s without progress.
async fn wait_completed(pool: &MySqlPool, n: u32, workers: &mut Workers) -> Result<()> {
    wait_done(n, workers, || sql::completed_in(pool, QUEUE)).await
}

/// Waits until `done()` reaches `n`, printing a progress line; fails at once when a worker
/// process has exited, and after 60 s without progress.
async fn wait_done<F, Fut>(n: u32, workers: &mut Workers, done: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<i64, sqlx::Error>>,
{
    let started = Instant::now();
    let (mut last, mut last_change) = (0i64, Instant::now());
    // The count reads an index range as long as the jobs done (a quarter of a second at 1M on
    // a small machine): polled every 500 ms it would take a share of the server from the run
    // it measures (1M: 13.6k jobs/s polled every 500 ms, 14.9k every 5 s), so big runs poll
    // every n × 20 µs (20 s at 1M). The rate comes from the database's timestamps, not from
    // this loop.
    let pause = Duration::from_millis(500).max(Duration::from_micros(u64::from(n) * 20));
    loop {
        let done = done().await?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r  {done:>8}/{n} done, {:>8.0} jobs/s   ",
            done as f64 / secs
        );
        if done >= i64::from(n) {
            eprint!("\r{:60}\r", "");
            return Ok(());
        }
        workers.check_alive()?;
        if done != last {
            (last, last_change) = (done, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(60) {
            bail!("no progress for 60 s at {done}/{n} completed");
        }
        tokio::time::sleep(pause).await;
    }
}

fn per_job(delta: u64, n: u32) -> f64 {
    delta as f64 / f64::from(n)
}

async fn burn_down(
    pool: &MySqlPool,
    url: &str,
    n: u32,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Report> {
    sql::bench_reset(pool).await?;
    let enqueue = fill(pool, n).await?;
    let (q0, w0) = sql::server_counters(pool).await?;
    let mut workers = Workers::spawn(url, mode, processes, concurrency)?;
    wait_completed(pool, n, &mut workers).await?;
    let (q1, w1) = sql::server_counters(pool).await?;
    workers.stop()?;
    let (span, claims) = sql::run_span(pool, QUEUE).await?;
    // Round trips per claim: START+SELECT, UPDATE+INSERT+COMMIT; named-lock adds GET_LOCK
    // (RELEASE_LOCK rides in the last round trip).
    let claim_statements = match mode {
        ClaimMode::SkipLocked => 2.0,
        ClaimMode::NamedLock => 3.0,
    };
    Ok(Report {
        scenario: "burn-down".into(),
        claim_mode: mode.to_string(),
        processes,
        concurrency,
        jobs: n,
        enqueue_jobs_per_s: Some(enqueue),
        jobs_per_s: f64::from(n) / span.max(1e-6),
        claims_per_job: Some(claims as f64 / f64::from(n)),
        claim_round_trips_per_job: Some(claims as f64 * claim_statements / f64::from(n)),
        statements_per_job: per_job(q1 - q0, n),
        rows_written_per_job: per_job(w1 - w0, n),
        note: "history on: enqueued, claimed and completed transitions per job".into(),
        ..Default::default()
    })
}

/// Ages the `n` jobs a burn-down completed past retention and times their pruning, batch after
/// batch as the maintenance leader does it; `completed_per_s` is the rate to keep pace with.
async fn retention(
    pool: &MySqlPool,
    settings: &jobq_config::Settings,
    n: u32,
    completed_per_s: f64,
) -> Result<Report> {
    let config = settings.validate()?;
    let age = config.maintenance().completed_retention + Duration::from_secs(3600);
    sql::age_finished(pool, age).await?;
    let (q0, w0) = sql::server_counters(pool).await?;
    let started = Instant::now();
    let mut pruned = 0;
    loop {
        let n = jobq_worker::prune_finished(pool, &config, Duration::from_secs(1)).await?;
        if n == 0 {
            break;
        }
        pruned += n;
    }
    let span = started.elapsed().as_secs_f64();
    let (q1, w1) = sql::server_counters(pool).await?;
    anyhow::ensure!(
        pruned == u64::from(n),
        "retention pruned {pruned} jobs of the {n} the burn-down completed"
    );
    Ok(Report {
        scenario: "retention".into(),
        claim_mode: "-".into(),
        jobs: n,
        jobs_per_s: f64::from(n) / span.max(1e-6),
        statements_per_job: per_job(q1 - q0, n),
        rows_written_per_job: per_job(w1 - w0, n),
        note: format!(
            "jobs (with their history) pruned per second, against {completed_per_s:.0} completed/s"
        ),
        ..Default::default()
    })
}

async fn ceiling(pool: &MySqlPool, n: u32, mode: ClaimMode, connections: u32) -> Result<Report> {
    ceiling_of(pool, n, mode, connections, Batch::Jobq { history: false }).await
}

/// What a ceiling run's connections do per batch of 100.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Batch {
    /// Claim and finish on jobq's schema; with `history`, the claimed and completed
    /// transition rows too (each in its statement's transaction, as jobq writes them).
    Jobq { history: bool },
    /// The same on a table holding only what a queue needs, with one index.
    Narrow,
}

async fn ceiling_of(
    pool: &MySqlPool,
    n: u32,
    mode: ClaimMode,
    connections: u32,
    batch: Batch,
) -> Result<Report> {
    let enqueue = match batch {
        Batch::Narrow => {
            let started = Instant::now();
            sql::narrow_reset(pool, n).await?;
            f64::from(n) / started.elapsed().as_secs_f64()
        }
        Batch::Jobq { .. } => {
            sql::bench_reset(pool).await?;
            fill(pool, n).await?
        }
    };
    let (q0, w0) = sql::server_counters(pool).await?;
    let started = Instant::now();
    let lock = match mode {
        ClaimMode::NamedLock => Some("jobq-bench-ceiling".to_owned()),
        ClaimMode::SkipLocked => None,
    };
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pool, lock) = (pool.clone(), lock.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut total = 0usize;
            loop {
                let got = match batch {
                    Batch::Jobq { history } => {
                        sql::ceiling_batch(&mut conn, QUEUE, 100, lock.as_deref(), history).await?
                    }
                    Batch::Narrow => sql::narrow_batch(&mut conn, 100).await?,
                };
                if got == 0 {
                    return Ok::<usize, sqlx::Error>(total);
                }
                total += got;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let (q1, w1) = sql::server_counters(pool).await?;
    if total != n as usize {
        bail!("ceiling processed {total} of {n} jobs");
    }
    Ok(Report {
        scenario: "ceiling".into(),
        claim_mode: mode.to_string(),
        processes: 1,
        concurrency: connections,
        jobs: n,
        enqueue_jobs_per_s: Some(enqueue),
        jobs_per_s: f64::from(n) / secs,
        statements_per_job: per_job(q1 - q0, n),
        rows_written_per_job: per_job(w1 - w0, n),
        note: "minimal SQL, batches of 100, no history or tokens".into(),
        ..Default::default()
    })
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn steady(
    pool: &MySqlPool,
    url: &str,
    rate: u32,
    duration: Duration,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Report> {
    sql::bench_reset(pool).await?;
    let mut workers = Workers::spawn(url, mode, processes, concurrency)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (q0, w0) = sql::server_counters(pool).await?;
    let producer = jobq_worker::Producer::new(pool.clone());
    let started = Instant::now();
    let mut inserted: u32 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u32;
        if due > inserted {
            let jobs = (inserted..due)
                .map(|_| NewJob::json("noop", json!({})).queue(QUEUE))
                .collect();
            producer.enqueue_many(jobs).await?;
            inserted = due;
        }
        eprint!("\r  steady: {inserted} inserted   ");
    }
    wait_completed(pool, inserted, &mut workers).await?;
    let (q1, w1) = sql::server_counters(pool).await?;
    workers.stop()?;
    let mut lat = sql::pickup_latencies(pool, QUEUE).await?;
    lat.sort_unstable();
    let (span, claims) = sql::run_span(pool, QUEUE).await?;
    Ok(Report {
        scenario: "steady".into(),
        claim_mode: mode.to_string(),
        processes,
        concurrency,
        jobs: inserted,
        jobs_per_s: f64::from(inserted) / span.max(1e-6),
        pickup_p50_ms: Some(percentile(&lat, 0.50)),
        pickup_p95_ms: Some(percentile(&lat, 0.95)),
        pickup_p99_ms: Some(percentile(&lat, 0.99)),
        claims_per_job: Some(claims as f64 / f64::from(inserted.max(1))),
        statements_per_job: per_job(q1 - q0, inserted.max(1)),
        rows_written_per_job: per_job(w1 - w0, inserted.max(1)),
        note: format!("producer at {rate} jobs/s for {duration:?}"),
        ..Default::default()
    })
}

/// Mean time of one claim transaction of up to 100 jobs in a real `jobq work` process with
/// 100 slots, over the claims that drain the first 4,000 jobs: read from its own
/// `jobq_claim_duration_seconds` histogram, so it times exactly the runtime's claim.
async fn time_claims(pool: &MySqlPool, url: &str) -> Result<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut workers = Workers::spawn_with(
        url,
        ClaimMode::SkipLocked,
        1,
        100,
        &[
            ("JOBQ_METRICS__LISTEN", listen.as_str()),
            ("JOBQ_WORKER__MAX_BATCH", "100"),
        ],
    )?;
    wait_completed(pool, 4_000, &mut workers).await?;
    let text = http_get(port, "/metrics").await?;
    workers.stop()?;
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("queue=\"{QUEUE}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} missing from the worker's /metrics"))
    };
    let sum = value("jobq_claim_duration_seconds_sum")?;
    let count = value("jobq_claim_duration_seconds_count")?;
    if count < 1.0 {
        bail!("the worker made no claim");
    }
    Ok(sum / count * 1000.0)
}

/// A GET on 127.0.0.1:`port`; the body.
async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

async fn scaling(pool: &MySqlPool, url: &str, json: bool) -> Result<()> {
    let mut out = BTreeMap::new();
    sql::bench_reset(pool).await?;
    fill(pool, 10_000).await?;
    out.insert("10k waiting", time_claims(pool, url).await?);
    sql::bench_reset(pool).await?;
    eprintln!("  inserting 1,000,000 jobs…");
    fill(pool, 1_000_000).await?;
    out.insert("1M waiting", time_claims(pool, url).await?);
    eprintln!("  finishing them…");
    sql::bench_finish_all(pool, QUEUE).await?;
    fill(pool, 10_000).await?;
    out.insert("10k waiting + 1M completed", time_claims(pool, url).await?);
    if json {
        outln!(
            "{}",
            serde_json::to_string(&json!({ "scenario": "scaling", "mean_claim_ms": out }))?
        );
    } else {
        outln!("| table | mean claim of up to 100 in a worker (ms) |\n|---|---:|");
        for (k, v) in out {
            outln!("| {k} | {v:.2} |");
        }
    }
    Ok(())
}
