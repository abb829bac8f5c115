//! `jobq demo`: migrate, enqueue a mix of built-in jobs, work them with an in-process pool until
//! every job reached a final state, and summarise.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use jobq_config::{ClaimMode, Config};
use jobq_worker::{NewJob, Shutdown, Worker};
use serde_json::json;

use crate::common::{builtin_registry, connected, migrate, ModeArg};
use crate::throwaway::Throwaway;

#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Number of jobs.
    #[arg(long, default_value_t = 5000)]
    jobs: u32,
    /// Claim mode.
    #[arg(long, value_enum, default_value_t = ModeArg::SkipLocked)]
    claim_mode: ModeArg,
    /// Jobs at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
}

pub(crate) async fn run(config: Config, a: DemoArgs) -> Result<ExitCode> {
    const QUEUE: &str = "demo";
    let claim_mode = ClaimMode::from(a.claim_mode);
    let (config, throwaway) = server(config).await?;
    // Refused before anything is written (no database created, no job enqueued).
    jobq_worker::check_server(config.database_url(), &[claim_mode]).await?;
    migrate(&config).await?;
    let mut settings = config.settings().clone();
    settings.worker.queues = vec![QUEUE.to_owned()];
    settings.worker.concurrency = a.concurrency;
    settings.worker.claim_mode = claim_mode;
    settings.queues.remove(QUEUE);
    // Fast retries so the demo's failing jobs come back within the run.
    settings.worker.backoff_base = Duration::from_millis(50);
    settings.worker.backoff_max = Duration::from_millis(500);
    settings.maintenance.interval = Duration::from_millis(100);
    let settings = settings.validate()?;
    let pool = connected(&settings).await?;
    jobq_worker::builtin::setup(&pool).await?;

    // The mix: mostly no-ops, some with a transactional effect, a few slow, failing or panicking.
    let n = a.jobs.max(1);
    let mut jobs = Vec::with_capacity(n as usize);
    for i in 0..n {
        let job = match i % 100 {
            0..=69 => NewJob::json("noop", json!({})),
            70..=89 => NewJob::json("record", json!({})),
            90..=94 => NewJob::json("sleep", json!({ "ms": 20 })),
            95..=98 => NewJob::json("fail", json!({ "times": 1 })),
            _ => NewJob::json("panic", json!({})).max_attempts(2),
        };
        jobs.push(job.queue(QUEUE));
    }
    let t0 = Instant::now();
    let ids = jobq_worker::producer(pool.clone(), &settings)
        .enqueue_many(jobs)
        .await?;
    let enqueue_secs = t0.elapsed().as_secs_f64();
    let (lo, hi) = (ids[0].0, ids[ids.len() - 1].0);
    outln!(
        "jobq demo: enqueued {n} jobs in {:.0} ms ({:.0} jobs/s); working them with {} {} slots…",
        enqueue_secs * 1000.0,
        f64::from(n) / enqueue_secs,
        a.concurrency,
        claim_mode
    );

    let (shutdown, signal) = Shutdown::new();
    let worker = Worker::new(pool.clone(), builtin_registry()?, &settings);
    let started = Instant::now();
    let handle = tokio::spawn(worker.run(signal));
    let counts = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if handle.is_finished() {
            handle.await??;
            bail!("the worker stopped before the demo finished");
        }
        let counts = demo_counts(&pool, lo, hi).await?;
        let open: i64 = counts
            .iter()
            .filter(|(s, _)| !matches!(s.as_str(), "completed" | "discarded" | "cancelled"))
            .map(|(_, c)| c)
            .sum();
        if open == 0 {
            break counts;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    shutdown.stop();
    handle.await??;
    outln!("jobq demo: all {n} jobs reached a final state in {secs:.2} s");
    for (state, c) in &counts {
        outln!("  {state:<10} {c}");
    }
    outln!(
        "  throughput {:.0} jobs/s ({} mode, concurrency {})",
        f64::from(n) / secs,
        claim_mode,
        a.concurrency
    );
    match throwaway {
        Some(t) => {
            drop(t);
            outln!(
                "the throwaway server and its jobs are deleted now; to keep them, run a server \
                 and set JOBQ_DATABASE_URL"
            );
        }
        None => outln!("inspect one: jobq job {lo}    counts: jobq stats"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The server the demo runs on: the configured one; or, when the URL is the default, nothing
/// listens on its port and MariaDB is installed, a throwaway server started here (said on
/// stderr). Without a server to use or start, fails at once saying what to do.
async fn server(config: Config) -> Result<(Config, Option<Throwaway>)> {
    if config.database_url() != jobq_config::DEFAULT_DATABASE_URL
        || listening("127.0.0.1:3306").await
    {
        return Ok((config, None));
    }
    if !crate::throwaway::installed() {
        bail!(
            "no database server answers at 127.0.0.1:3306 and no MariaDB is installed here: \
             install one (Debian, Ubuntu: sudo apt-get install mariadb-server) and run the demo \
             again, or set JOBQ_DATABASE_URL to a MySQL 8.0+ or MariaDB 10.6+ server"
        );
    }
    eprintln!(
        "jobq demo: no server answers at 127.0.0.1:3306 (the default database_url); starting a \
         throwaway MariaDB for this run, deleted at its end (set JOBQ_DATABASE_URL to use a \
         server of yours)"
    );
    let t = Throwaway::start().await?;
    // Ctrl-C: stop the server and delete its data before exiting (the terminal's SIGINT does
    // not stop mariadbd).
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            crate::throwaway::kill_now();
            eprintln!("jobq demo: interrupted; the throwaway server is stopped and deleted");
            std::process::exit(130);
        }
    });
    eprintln!(
        "jobq demo: throwaway server on a unix socket only (data in {})",
        t.dir().display()
    );
    let mut settings = config.settings().clone();
    settings.database_url = t.url("jobq");
    Ok((settings.validate()?, Some(t)))
}

/// Whether something accepts TCP connections at `addr` (within 2 s).
async fn listening(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

async fn demo_counts(pool: &sqlx::MySqlPool, lo: u64, hi: u64) -> Result<BTreeMap<String, i64>> {
    // language=MySQL
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CAST(state AS CHAR), COUNT(*) FROM jobq_jobs WHERE id BETWEEN ? AND ? AND queue = 'demo' GROUP BY state",
    )
    .bind(lo)
    .bind(hi)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
