//! `jobq bench`: measures jobq against the server it runs on.
//!
//! Scenarios (all in a database of their own, `<db>_bench`, emptied before each run):
//! - `burn-down`: insert N `noop` jobs (timing the enqueue), then start P `jobq work` processes
//!   with C slots each and time first claim → last completion (database clock); with
//!   `--finished M`, also with M finished jobs kept in the tables (`finished.rs`);
//! - `steady`: P worker processes run while this process inserts at a fixed rate for a while;
//!   reports pickup latency (run_at → claim) percentiles;
//! - `ceiling`: the least SQL that can drain the same queue (claim 100, mark running, one UPDATE
//!   per batch to finish; no tokens, no history, no leases), with no framework around it: what
//!   the server can do, so each report shows jobq as a fraction of it;
//! - `scaling`: one claim's time with 10k and 1M waiting jobs, and with 1M finished jobs present;
//! - `locks`: the lock library's acquire/release latency and contended throughput (`locks.rs`);
//! - `web`: the console's pages timed over HTTP with N jobs in a busy day's mix (`web.rs`);
//! - `price`: the ceiling's variants, pricing each index and each history row (`price.rs`);
//! - `fan-in`: a workflow of `--parents` parents and one child (release latency), and the
//!   burn-down with `--blocked` blocked jobs in the queue against without (`flows.rs`);
//! - `two-servers`: N jobs split over two queues on two servers (`--second-database-url`),
//!   drained by P processes that each work both, against the same N on one server
//!   (`servers.rs`).
//!
//! Every burn-down run is paired with a ceiling run of the same size and claim mode.
//!
//! Here: the arguments and the dispatch. `scenarios.rs` runs burn-down, ceiling, steady and
//! scaling; `workers.rs` starts and waits for the worker processes; `report.rs` prints the rows;
//! `sql.rs` holds the bench's own SQL.

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

mod enqueue;
mod finished;
mod flows;
mod locks;
mod price;
mod report;
mod scenarios;
mod servers;
mod sql;
mod web;
mod workers;

use report::*;
use scenarios::*;
use workers::*;

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
    /// A workflow of --parents parents and one child: the child's release latency; and the
    /// burn-down of N jobs with --blocked blocked jobs in the queue against without them.
    FanIn,
    /// N jobs enqueued one call each by --concurrency tasks sharing one producer (a pool of
    /// 10), with group commit off, then on.
    SingleEnqueue,
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
            Scenario::FanIn => "fan-in",
            Scenario::SingleEnqueue => "single-enqueue",
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
    /// Jobs log a line and report their progress (`sleep {"ms": 0, "steps": 1}` instead of
    /// `noop`; burn-down, steady): the cost of per-job logs and progress.
    #[arg(long)]
    log_and_progress: bool,
    /// Jobs carry a W3C trace context (burn-down, steady): the cost of storing and reading it.
    #[arg(long)]
    traced: bool,
    /// Workers' key_limit for the bench queue (with --concurrency-keys).
    #[arg(long, default_value_t = 1)]
    key_limit: u32,
    /// Workers' rate_limit for the bench queue, e.g. 100000/1s: the cost of a rate limit.
    #[arg(long, value_name = "RATE")]
    rate_limit: Option<jobq_config::Rate>,
    /// Workers' prefetch (jobs claimed ahead of free slots, README "Prefetch"): `auto` or a
    /// count, `0` turning it off. Left out: the workers' own (`JOBQ_WORKER__PREFETCH` from the
    /// environment, else `auto`, as for `jobq work`). Shown in the table as `PxC+auto` or
    /// `PxC+N`.
    #[arg(long, value_name = "auto|N")]
    prefetch: Option<jobq_config::Prefetch>,
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
    /// burn-down: measure each burn-down also with N completed jobs of the queue (and their
    /// history) kept in the tables: runs without, with, with, without, the workers' retention
    /// off (BENCHMARKS.md "Ten million finished jobs"; 10,000,000 takes about ten minutes and
    /// several GB to insert).
    #[arg(long, value_name = "N", default_value_t = 0)]
    finished: u64,
    /// fan-in: the parents of the one child.
    #[arg(long, default_value_t = 10_000)]
    parents: u32,
    /// fan-in: blocked jobs in the queue during the second burn-down of each pair.
    #[arg(long, default_value_t = 100_000)]
    blocked: u32,
    /// Print one JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
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
    LOG_AND_PROGRESS.store(a.log_and_progress, std::sync::atomic::Ordering::Relaxed);
    TRACED.store(a.traced, std::sync::atomic::Ordering::Relaxed);
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
    // The workers inherit the environment: without the flag, their prefetch is the one set
    // there, or the default.
    let prefetch = match a.prefetch {
        Some(p) => {
            env.push(("JOBQ_WORKER__PREFETCH".into(), p.to_string()));
            p
        }
        None => match std::env::var("JOBQ_WORKER__PREFETCH") {
            Ok(v) => v
                .parse()
                .map_err(|e: String| anyhow::anyhow!("JOBQ_WORKER__PREFETCH: {e}"))?,
            Err(_) => jobq_config::Prefetch::default(),
        },
    };
    if a.finished > 0 {
        // The finished jobs (at most a day old) are kept through the runs: no retention may
        // prune them meanwhile.
        env.push((
            "JOBQ_MAINTENANCE__COMPLETED_RETENTION".into(),
            "30days".into(),
        ));
        env.push(("JOBQ_MAINTENANCE__FAILED_RETENTION".into(), "30days".into()));
    }
    let _ = PREFETCH.set(prefetch);
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
                            if a.finished > 0 {
                                let runs =
                                    finished::burden(&pool, &url, jobs, a.finished, mode, p, conc)
                                        .await?;
                                for mut r in runs {
                                    r.ceiling_jobs_per_s = Some(c);
                                    r.percent_of_ceiling = Some(100.0 * r.jobs_per_s / c);
                                    emit(&a, &r);
                                    reports.push(r);
                                }
                                continue;
                            }
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
        Scenario::FanIn => {
            for &jobs in &a.jobs {
                for &mode in &modes {
                    for &p in &a.processes {
                        for &conc in &a.concurrency {
                            let size = flows::FanIn {
                                parents: a.parents,
                                blocked: a.blocked,
                                jobs,
                            };
                            let rows = flows::fan_in(&pool, &url, size, mode, p, conc).await?;
                            for r in rows {
                                emit(&a, &r);
                                reports.push(r);
                            }
                        }
                    }
                }
            }
        }
        Scenario::SingleEnqueue => {
            for &jobs in &a.jobs {
                for &tasks in &a.concurrency {
                    for r in enqueue::single(&bs, &pool, jobs, tasks).await? {
                        emit(&a, &r);
                        reports.push(r);
                    }
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

/// `--concurrency-keys` (0: none), shared with `fill`.
static CONCURRENCY_KEYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Settings every bench worker process gets (`--key-limit`, `--rate-limit`).
static WORKER_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// `--prefetch`, for the tables.
static PREFETCH: std::sync::OnceLock<jobq_config::Prefetch> = std::sync::OnceLock::new();

/// `--unique-keys`, shared with `fill`.
static UNIQUE_KEYS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--log-and-progress`, shared with `fill`.
static LOG_AND_PROGRESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--traced`, shared with `fill`.
static TRACED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `--producers`, shared with `fill`.
static PRODUCERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
