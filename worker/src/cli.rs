use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use jobq_config::{ClaimMode, LogFormat, Settings};
use jobq_worker::{builtin, NewJob, Registry, Shutdown, Stopped, Worker};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// jobq: background jobs on MySQL/MariaDB.
#[derive(Parser, Debug)]
#[command(name = "jobq", version, about)]
struct Cli {
    /// Config file (TOML). Default: config/jobq.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the database if missing and apply migrations (idempotent, safe concurrently).
    Migrate,
    /// Insert jobs; prints the new ids, one per line.
    Enqueue(EnqueueArgs),
    /// Run a worker with the built-in kinds until SIGINT/SIGTERM (or --drain).
    Work(WorkArgs),
    /// Counts per queue and state.
    Stats {
        /// One JSON object; `totals` maps each state to its count across queues.
        #[arg(long)]
        json: bool,
    },
    /// A job and its whole transition history.
    Job {
        /// Job id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Migrate, enqueue a mix of built-in jobs, run a worker pool until all are done, summarise.
    Demo(DemoArgs),
    /// Measure throughput and latency against the server (own database `<db>_bench`).
    Bench(crate::bench::BenchArgs),
}

#[derive(clap::Args, Debug)]
struct EnqueueArgs {
    /// Job kind, e.g. noop, sleep, fail, panic, record.
    kind: String,
    /// Queue.
    #[arg(long, default_value = "default")]
    queue: String,
    /// JSON payload, or `-` to read it from standard input.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Priority; lower runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i16,
    /// Run no earlier than this from now, e.g. 500ms, 10s, 1h.
    #[arg(long, value_parser = parse_duration, conflicts_with = "run_at")]
    delay: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2030-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Attempts before the job is discarded (default: producer.default_max_attempts).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Insert this many copies (one transaction).
    #[arg(long, default_value_t = 1)]
    count: u32,
}

#[derive(clap::Args, Debug)]
struct WorkArgs {
    /// Queues to work, comma-separated (overrides worker.queues).
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Jobs at once per queue (overrides worker.concurrency and per-queue values).
    #[arg(long)]
    concurrency: Option<u32>,
    /// skip-locked or named-lock (overrides worker.claim_mode and per-queue values).
    #[arg(long, value_parser = parse_mode)]
    claim_mode: Option<ClaimMode>,
    /// Exit once no available, running or retryable job of a built-in kind is left.
    #[arg(long)]
    drain: bool,
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Number of jobs.
    #[arg(long, default_value_t = 5000)]
    jobs: u32,
    /// skip-locked or named-lock.
    #[arg(long, value_parser = parse_mode, default_value = "skip-locked")]
    claim_mode: ClaimMode,
    /// Jobs at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write durations like 500ms, 10s, 1h"))
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}; write an RFC 3339 time such as 2030-01-01T00:00:00Z"))
}

fn parse_mode(s: &str) -> Result<ClaimMode, String> {
    s.parse()
}

pub fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let settings = jobq_config::load(cli.config.as_deref())?;
    init_logging(&settings);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Migrate => migrate(&settings).await,
            Command::Enqueue(a) => enqueue(&settings, a).await,
            Command::Work(a) => work(settings, a).await,
            Command::Stats { json } => stats(&settings, json).await,
            Command::Job { id, json } => job(&settings, id, json).await,
            Command::Demo(a) => demo(settings, a).await,
            Command::Bench(a) => crate::bench::run(&settings, a).await,
        }
    })
}

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Handler panics are caught and recorded as attempt errors; log them as one line instead of
    // the default multi-line report.
    std::panic::set_hook(Box::new(|info| {
        tracing::warn!(panic = %info, "handler panicked");
    }));
}

async fn migrate(settings: &Settings) -> Result<ExitCode> {
    jobq_worker::migrate(&settings.database_url)
        .await
        .with_context(|| format!("migrating {}", redact(&settings.database_url)))?;
    eprintln!("jobq: database migrated");
    Ok(ExitCode::SUCCESS)
}

async fn connected(settings: &Settings) -> Result<sqlx::MySqlPool> {
    let pool = jobq_worker::connect(settings)
        .await
        .with_context(|| format!("connecting to {}", redact(&settings.database_url)))?;
    jobq_worker::check_migrated(&pool).await?;
    Ok(pool)
}

/// The URL with any password hidden, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let user_end = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn enqueue(settings: &Settings, a: EnqueueArgs) -> Result<ExitCode> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let payload = if a.payload == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the payload from standard input")?;
        s
    } else {
        a.payload
    };
    let mut job = NewJob::raw(a.kind, payload)
        .queue(a.queue)
        .priority(a.priority);
    if let Some(d) = a.delay {
        job = job.delay(d);
    }
    if let Some(t) = a.run_at {
        job = job.run_at(t);
    }
    if let Some(n) = a.max_attempts {
        job = job.max_attempts(n);
    }
    let jobs = vec![job; a.count as usize];
    // Validate before connecting, so bad input never needs a database.
    jobq_worker::Producer::validate(&jobs, &producer_options(settings))?;
    let pool = connected(settings).await?;
    let ids = jobq_worker::producer(pool, settings)
        .enqueue_many(jobs)
        .await?;
    let mut out = String::with_capacity(ids.len() * 8);
    for id in ids {
        out.push_str(&id.to_string());
        out.push('\n');
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn producer_options(settings: &Settings) -> jobq_worker::ProducerOptions {
    jobq_worker::ProducerOptions {
        max_payload_bytes: settings.producer.max_payload_bytes,
        default_max_attempts: settings.producer.default_max_attempts,
    }
}

fn builtin_registry() -> Result<Registry> {
    let mut r = Registry::new();
    builtin::register(&mut r)?;
    Ok(r)
}

/// Forwards SIGTERM/SIGINT: the first asks for a graceful stop, the second for an immediate one.
fn forward_signals(shutdown: Shutdown) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("jobq-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal = sig,
                        "stopping gracefully; send it again to stop at once"
                    );
                    shutdown.stop();
                } else {
                    tracing::warn!(signal = sig, "stopping at once");
                    shutdown.kill();
                }
            }
        })?;
    Ok(())
}

async fn work(mut settings: Settings, a: WorkArgs) -> Result<ExitCode> {
    if let Some(q) = a.queues {
        settings.worker.queues = q;
    }
    if let Some(c) = a.concurrency {
        settings.worker.concurrency = c;
        settings
            .queues
            .values_mut()
            .for_each(|q| q.concurrency = None);
    }
    if let Some(m) = a.claim_mode {
        settings.worker.claim_mode = m;
        settings
            .queues
            .values_mut()
            .for_each(|q| q.claim_mode = None);
    }
    settings.validate()?;
    let recorder = match settings.metrics.listen {
        Some(_) => Some(crate::serve::install_recorder()?),
        None => None,
    };
    let pool = connected(&settings).await?;
    if let (Some(addr), Some(handle)) = (settings.metrics.listen, recorder) {
        crate::serve::spawn(addr, handle, pool.clone()).await?;
    }
    let (shutdown, signal) = Shutdown::new();
    forward_signals(shutdown)?;
    let worker = Worker::new(pool, builtin_registry()?, &settings).drain(a.drain);
    match worker.run(signal).await? {
        Stopped::Graceful | Stopped::Drained => Ok(ExitCode::SUCCESS),
        Stopped::Immediate(n) => {
            eprintln!(
                "jobq: stopped at once; {n} running jobs will be rescued when their leases expire"
            );
            Ok(ExitCode::from(130))
        }
    }
}

async fn stats(settings: &Settings, json: bool) -> Result<ExitCode> {
    let pool = connected(settings).await?;
    let s = jobq_worker::stats(&pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let states: Vec<&str> = jobq_worker::JobState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    let width = s.queues.keys().map(|q| q.len()).max().unwrap_or(5).max(5);
    print!("{:<width$}", "queue");
    for st in &states {
        print!(" {st:>10}");
    }
    println!(" {:>9} {:>11}", "done/1m", "oldest(s)");
    for (name, q) in &s.queues {
        print!("{name:<width$}");
        for st in &states {
            print!(" {:>10}", q.states.get(*st).copied().unwrap_or(0));
        }
        let oldest = q
            .oldest_available_seconds
            .map_or("-".to_owned(), |s| format!("{s:.1}"));
        println!(" {:>9} {:>11}", q.completed_last_minute, oldest);
    }
    print!("{:<width$}", "TOTAL");
    for st in &states {
        print!(" {:>10}", s.totals.get(*st).copied().unwrap_or(0));
    }
    println!();
    Ok(ExitCode::SUCCESS)
}

async fn job(settings: &Settings, id: u64, json: bool) -> Result<ExitCode> {
    let pool = connected(settings).await?;
    let (job, history) = jobq_worker::job_with_history(&pool, id).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "job": job, "history": history }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "job {}  kind {}  queue {}  state {}",
        job.id, job.kind, job.queue, job.state
    );
    println!("  payload      {}", job.payload);
    println!("  priority     {}", job.priority);
    println!("  attempt      {} of {}", job.attempt, job.max_attempts);
    println!("  run_at       {}", job.run_at);
    println!("  created_at   {}", job.created_at);
    if let Some(t) = job.attempted_at {
        println!("  attempted_at {t}");
    }
    if let Some(t) = job.finalized_at {
        println!("  finalized_at {t}");
    }
    if let Some(w) = &job.worker_id {
        println!("  worker       {w}");
    }
    if let Some(e) = &job.last_error {
        println!("  last_error   {e}");
    }
    println!("history:");
    for t in history {
        println!(
            "  {}  {:>9} -> {:<9}  {:<9} attempt {}  {}{}",
            t.at.format("%Y-%m-%d %H:%M:%S%.6f"),
            t.from.as_deref().unwrap_or("-"),
            t.to,
            t.event,
            t.attempt,
            t.worker_id.as_deref().unwrap_or(""),
            t.error.map(|e| format!("  error: {e}")).unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn demo(mut settings: Settings, a: DemoArgs) -> Result<ExitCode> {
    const QUEUE: &str = "demo";
    migrate(&settings).await?;
    settings.worker.queues = vec![QUEUE.to_owned()];
    settings.worker.concurrency = a.concurrency;
    settings.worker.claim_mode = a.claim_mode;
    settings.queues.remove(QUEUE);
    // Fast retries so the demo's failing jobs come back within the run.
    settings.worker.backoff_base = Duration::from_millis(50);
    settings.worker.backoff_max = Duration::from_millis(500);
    settings.maintenance.interval = Duration::from_millis(100);
    settings.validate()?;
    let pool = connected(&settings).await?;

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
    println!(
        "jobq demo: enqueued {n} jobs in {:.0} ms ({:.0} jobs/s); working them with {} {} slots…",
        enqueue_secs * 1000.0,
        f64::from(n) / enqueue_secs,
        a.concurrency,
        a.claim_mode
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
    println!("jobq demo: all {n} jobs reached a final state in {secs:.2} s");
    for (state, c) in &counts {
        println!("  {state:<10} {c}");
    }
    println!(
        "  throughput {:.0} jobs/s ({} mode, concurrency {})",
        f64::from(n) / secs,
        a.claim_mode,
        a.concurrency
    );
    println!("inspect one: jobq job {lo}    counts: jobq stats");
    Ok(ExitCode::SUCCESS)
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
