//! The command line: arguments (clap), configuration with the flags as its last layer, and the
//! commands that are not big enough for a file of their own (migrate, enqueue, work, stats,
//! job).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use jobq_config::{ClaimMode, Config, LogFormat};
use jobq_worker::web::Console;
use jobq_worker::{builtin, JobId, NewJob, Registry, Shutdown, Stopped, Worker};
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
    /// jobq records them in its own `jobq_migrations` table, never in `_sqlx_migrations`.
    Migrate(MigrateArgs),
    /// Insert jobs; prints the new ids, one per line.
    Enqueue(EnqueueArgs),
    /// Run a worker with the built-in kinds and the configured command kinds until
    /// SIGINT/SIGTERM (or --drain).
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
    Demo(crate::demo::DemoArgs),
    /// Measure throughput and latency against the server (own database `<db>_bench`).
    Bench(crate::bench::BenchArgs),
    /// Queues: list them (state, depth, limits), or pause and resume one across all workers.
    Queues(crate::queues::QueuesArgs),
    /// Distributed locks: run a command under a lock, or see who holds what.
    #[command(subcommand)]
    Lock(crate::lock::LockCommand),
    /// Cancel jobs: a waiting one at once, a running one at its worker's next heartbeat (its
    /// handler is told, then dropped after worker.cancel_grace; its transaction rolls back).
    Cancel(crate::acts::ActArgs),
    /// Run failed, cancelled, retryable or scheduled jobs again, now.
    Retry(crate::acts::ActArgs),
    /// Discard jobs that have not started.
    Discard(crate::acts::ActArgs),
    /// Jobs: list them by state, queue, kind or error, a page at a time.
    #[command(subcommand)]
    Jobs(crate::admin::JobsCommand),
    /// Worker processes: host, pid, queues, running jobs, heartbeat age.
    Workers {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Delete finished jobs (and their history) older than a duration.
    Prune(crate::admin::PruneArgs),
    /// Recurring jobs: list them (next and last slot, last outcome), pause, resume, run now.
    Schedules(crate::schedules::SchedulesArgs),
    /// Serve the web console alone (on web.listen, default 127.0.0.1:9188) until SIGINT/SIGTERM.
    Web {
        /// Listen here instead of web.listen, e.g. 127.0.0.1:9188.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
    /// Print the migrations as one SQL script (with the rows that record them in
    /// jobq_migrations) instead of applying them, for schema tools that run SQL files.
    /// Connects to nothing.
    #[arg(long)]
    print_sql: bool,
    /// With --print-sql: only the migrations after this version (the newest one already
    /// applied: `SELECT MAX(version) FROM jobq_migrations`).
    #[arg(
        long,
        value_name = "VERSION",
        requires = "print_sql",
        default_value_t = 0
    )]
    after: i64,
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
    /// Make the job unique: while a job of this kind with key K waits or runs, print its id
    /// followed by `duplicate` instead of inserting another.
    #[arg(long, value_name = "K")]
    unique_key: Option<String>,
    /// With --unique-key: keep the key taken this long after the job finishes, e.g. 1h.
    #[arg(long, value_parser = parse_duration, requires = "unique_key")]
    unique_period: Option<Duration>,
    /// With --unique-key: `replace` gives a waiting duplicate that never started this job's
    /// payload, priority and run-at (debounce; prints `ID duplicate replaced`).
    #[arg(long, value_enum, default_value = "keep", requires = "unique_key")]
    on_duplicate: OnDuplicateArg,
    /// Give the job concurrency key K: at most `key_limit` jobs of the queue with key K run at
    /// once across all workers (queues.NAME.key_limit, kinds.NAME.key_limit; default 1).
    #[arg(long, value_name = "K")]
    concurrency_key: Option<String>,
    /// Wait for the job to finish: print its result (or `ID completed`), exit 0 if it
    /// completed, 1 if it was discarded or cancelled, 3 if --timeout passed first.
    #[arg(long)]
    wait: bool,
    /// With --wait: how long to wait.
    #[arg(long, value_parser = parse_duration, default_value = "30s", requires = "wait")]
    timeout: Duration,
}

/// `--on-duplicate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnDuplicateArg {
    /// Keep the existing job.
    Keep,
    /// Replace a waiting, never-started job's payload, priority and run-at.
    Replace,
}

#[derive(clap::Args, Debug)]
struct WorkArgs {
    /// Queues to work, comma-separated (sets worker.queues).
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<String>>,
    /// Jobs at once per queue (sets worker.concurrency; `[queues.NAME]` values still win).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Claim mode (sets worker.claim_mode; `[queues.NAME]` values still win).
    #[arg(long, value_enum)]
    claim_mode: Option<ModeArg>,
    /// Jobs claimed ahead of free slots per queue (sets worker.prefetch; `[queues.NAME]` values
    /// still win). See README "Prefetch".
    #[arg(long)]
    prefetch: Option<u32>,
    /// Exit once no available, running or retryable job of a built-in kind is left.
    #[arg(long)]
    drain: bool,
}

/// A claim mode on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ModeArg {
    /// `SELECT … FOR UPDATE SKIP LOCKED`.
    SkipLocked,
    /// A per-queue `GET_LOCK` around the claim.
    NamedLock,
}

impl From<ModeArg> for ClaimMode {
    fn from(m: ModeArg) -> ClaimMode {
        match m {
            ModeArg::SkipLocked => ClaimMode::SkipLocked,
            ModeArg::NamedLock => ClaimMode::NamedLock,
        }
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write durations like 500ms, 10s, 1h"))
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}; write an RFC 3339 time such as 2030-01-01T00:00:00Z"))
}

/// Parses the command line, loads the configuration (the `work` flags are its last layer, so a
/// bad flag is reported like a bad key), and runs the command.
pub(crate) fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let mut fig = jobq_config::figment(cli.config.as_deref())?;
    if let Command::Work(a) = &cli.command {
        if let Some(q) = &a.queues {
            fig = fig.merge(Serialized::default("worker.queues", q));
        }
        if let Some(c) = a.concurrency {
            fig = fig.merge(Serialized::default("worker.concurrency", c));
        }
        if let Some(m) = a.claim_mode {
            fig = fig.merge(Serialized::default("worker.claim_mode", ClaimMode::from(m)));
        }
        if let Some(p) = a.prefetch {
            fig = fig.merge(Serialized::default("worker.prefetch", p));
        }
    }
    let settings = jobq_config::extract(fig)?;
    init_logging(&settings);
    for var in jobq_config::ignored_env_vars() {
        tracing::debug!(%var, "not a configuration variable; ignored");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let one_server = matches!(
        cli.command,
        Command::Job { .. }
            | Command::Jobs(_)
            | Command::Cancel(_)
            | Command::Retry(_)
            | Command::Discard(_)
            | Command::Prune(_)
            | Command::Workers { .. }
            | Command::Queues(_)
            | Command::Web { .. }
    );
    let servers = settings.servers();
    if one_server && servers.len() > 1 {
        eprintln!(
            "jobq: note: this configuration names {} database servers ([queues.NAME] \
             database_url) and job ids are per server; this command acts on database_url ({}) \
             only: set JOBQ_DATABASE_URL to act on another",
            servers.len(),
            jobq_worker::server_name(&settings.database_url)
        );
    }
    rt.block_on(async move {
        match cli.command {
            Command::Migrate(MigrateArgs {
                print_sql: true,
                after,
            }) => {
                out!("{}", jobq_worker::migrations_sql(after));
                Ok(ExitCode::SUCCESS)
            }
            Command::Migrate(_) => migrate(&settings).await,
            Command::Enqueue(a) => enqueue(&settings, a).await,
            Command::Work(a) => work(settings, a).await,
            Command::Stats { json } => stats(&settings, json).await,
            Command::Job { id, json } => job(&settings, id, json).await,
            Command::Demo(a) => crate::demo::run(settings, a).await,
            Command::Bench(a) => crate::bench::run(&settings, a).await,
            Command::Lock(c) => crate::lock::run(&settings, c).await,
            Command::Queues(a) => crate::queues::run(&settings, a).await,
            Command::Cancel(a) => crate::acts::run(&settings, jobq_worker::Act::Cancel, a).await,
            Command::Retry(a) => crate::acts::run(&settings, jobq_worker::Act::Retry, a).await,
            Command::Discard(a) => crate::acts::run(&settings, jobq_worker::Act::Discard, a).await,
            Command::Jobs(c) => crate::admin::jobs(&settings, c).await,
            Command::Workers { json } => crate::admin::workers(&settings, json).await,
            Command::Prune(a) => crate::admin::prune(&settings, a).await,
            Command::Schedules(a) => crate::schedules::run(&settings, a).await,
            Command::Web { listen } => web(&settings, listen).await,
        }
    })
}

fn init_logging(settings: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Handler panics are caught and recorded as attempt errors: one line each. Any other panic
    // is reported as the bug it is.
    jobq_worker::install_panic_hook();
}

/// Log lines are coloured only on a terminal, and never when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>): a file or a pipe gets plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `jobq migrate`: every server the configuration names (`database_url` and each queue's).
pub(crate) async fn migrate(settings: &Config) -> Result<ExitCode> {
    let servers = settings.servers();
    for url in &servers {
        let report = jobq_worker::migrate(url)
            .await
            .with_context(|| format!("migrating {}", redact(url)))?;
        if report.moved_from_sqlx > 0 {
            eprintln!(
                "jobq: moved {} rows of an earlier jobq from _sqlx_migrations to jobq_migrations",
                report.moved_from_sqlx
            );
        }
        for m in &report.applied {
            eprintln!("jobq: applied {} {}", m.version, m.description);
        }
    }
    match servers.len() {
        1 => eprintln!("jobq: database migrated"),
        n => eprintln!("jobq: {n} databases migrated"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn connected(settings: &Config) -> Result<sqlx::MySqlPool> {
    let pool = jobq_worker::connect(settings)
        .await
        .with_context(|| format!("connecting to {}", redact(&settings.database_url)))?;
    jobq_worker::check_migrated(&pool).await?;
    Ok(pool)
}

/// The URL with any password hidden, for messages. The credentials end at the last `@` before
/// the path or query (an `@` in the query, such as a file name in `ssl-ca`, is not theirs).
fn redact(url: &str) -> String {
    let Some(s) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[s..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) if rest[..at].contains(':') => {
            let user_end = s + rest[..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..user_end], &url[s + at..])
        }
        _ => url.to_owned(),
    }
}

/// After an enqueue: a warning on stderr (the exit status stays 0) when no live or recent worker
/// handles `kind`, or none handles it on `queue`: the job would wait unclaimed.
async fn warn_unhandled(pool: &sqlx::MySqlPool, kind: &str, queue: &str) {
    let Ok(name) = jobq_worker::KindName::new(kind) else {
        return;
    };
    let days = jobq_worker::KIND_SEEN_WITHIN.as_secs() / 86_400;
    match jobq_worker::queues_handling(pool, &name).await {
        Ok(queues) if queues.is_empty() => eprintln!(
            "jobq: warning: no worker has had a handler for kind {kind:?} in the last {days} \
             days (a misspelt kind?): a worker of queue {queue:?} without one fails each attempt \
             (\"no handler registered\") until the attempts are used up; `jobq cancel` it if \
             it is a mistake"
        ),
        Ok(queues) if !queues.iter().any(|q| q == queue) => eprintln!(
            "jobq: warning: kind {kind:?} is handled by workers of queue(s) {} but not of \
             {queue:?}: the job waits for a worker of {queue:?}, which fails it unless it has a \
             handler (enqueue it with --queue {} instead?)",
            queues.join(", "),
            queues[0]
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = ?e, "could not read which kinds workers handle"),
    }
}

/// Copies of a `--count` job built and inserted at a time.
const ENQUEUE_CHUNK: usize = 1000;

/// Reads a payload of at most `limit` bytes from `input`, refusing (without reading further)
/// one that is longer.
fn read_payload(input: impl Read, limit: usize) -> Result<String> {
    let mut buf = Vec::new();
    input
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .context("reading the payload from standard input")?;
    if buf.len() > limit {
        bail!(crate::Usage(format!(
            "the payload on standard input is over the limit of {limit} bytes \
             (producer.max_payload_bytes); store large data elsewhere and enqueue a reference"
        )));
    }
    String::from_utf8(buf).context("the payload on standard input is not UTF-8 text")
}

async fn enqueue(settings: &Config, a: EnqueueArgs) -> Result<ExitCode> {
    if a.count == 0 {
        bail!(crate::Usage("--count must be at least 1".into()));
    }
    if a.wait && a.count != 1 {
        bail!(crate::Usage(
            "--wait waits for one job; leave out --count".into()
        ));
    }
    let limit = settings.producer.max_payload_bytes;
    let payload = if a.payload == "-" {
        read_payload(std::io::stdin().lock(), limit)?
    } else {
        a.payload
    };
    let kind = a.kind.clone();
    let mut job = NewJob::raw(a.kind, payload)
        .queue(a.queue.clone())
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
    if let Some(k) = a.unique_key {
        job = job.unique_key(k);
    }
    if let Some(p) = a.unique_period {
        job = job.unique_period(p);
    }
    if a.on_duplicate == OnDuplicateArg::Replace {
        job = job.on_duplicate(jobq_worker::OnDuplicate::Replace);
    }
    if let Some(k) = a.concurrency_key {
        job = job.concurrency_key(k);
    }
    // Validate before connecting, so bad input never needs a database.
    jobq_worker::Producer::validate(
        std::slice::from_ref(&job),
        &jobq_worker::producer_options(settings),
    )?;
    // The queue's own server ([queues.NAME] database_url), or database_url.
    let settings = &jobq_worker::on_server(settings, settings.database_of(&a.queue))?;
    let pool = connected(settings).await?;
    jobq_worker::check_server_limits(&pool, settings).await?;
    let producer = jobq_worker::producer(pool.clone(), settings);
    // `--count` copies are built and sent ENQUEUE_CHUNK at a time (never all in memory), in
    // one transaction: all of them or none.
    let mut tx = pool.begin().await?;
    let mut done = Vec::with_capacity(a.count as usize);
    let mut left = a.count as usize;
    while left > 0 {
        let n = left.min(ENQUEUE_CHUNK);
        done.extend(
            producer
                .insert_many_in(&mut tx, vec![job.clone(); n])
                .await?,
        );
        left -= n;
    }
    tx.commit().await?;
    warn_unhandled(&pool, &kind, &a.queue).await;
    if a.wait {
        let id = done[0].id;
        return match producer.wait_for(id, a.timeout).await? {
            Some(end) if end.state == jobq_worker::JobState::Completed => {
                match end.result {
                    Some(r) => outln!("{r}"),
                    None => outln!("{id} completed"),
                }
                Ok(ExitCode::SUCCESS)
            }
            Some(end) => {
                eprintln!(
                    "jobq: job {id} ended {}: {}",
                    end.state,
                    end.error.as_deref().unwrap_or("no error recorded")
                );
                Ok(ExitCode::FAILURE)
            }
            None => {
                eprintln!(
                    "jobq: job {id} did not finish within {} (it stays queued; `jobq job {id}` shows it)",
                    humantime::format_duration(a.timeout)
                );
                Ok(ExitCode::from(3))
            }
        };
    }
    let mut out = String::with_capacity(done.len() * 8);
    for e in done {
        out.push_str(&e.id.to_string());
        if e.duplicate {
            out.push_str(" duplicate");
        }
        if e.replaced {
            out.push_str(" replaced");
        }
        out.push('\n');
    }
    out!("{out}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn builtin_registry() -> Result<Registry> {
    let mut r = Registry::new();
    builtin::register(&mut r)?;
    Ok(r)
}

async fn work(settings: Config, a: WorkArgs) -> Result<ExitCode> {
    let recorder = match settings.metrics.listen {
        Some(_) => Some(crate::http::install_recorder(&settings)?),
        None => None,
    };
    let pool = connected(&settings).await?;
    // The built-in kinds, and a program for every kind configured with `command`.
    let mut registry = builtin_registry()?;
    jobq_worker::register_commands(&mut registry, &settings)?;
    let worker = Worker::new(pool.clone(), registry, &settings).drain(a.drain);
    if let (Some(addr), Some(handle)) = (settings.metrics.listen, recorder) {
        crate::http::spawn(addr, handle, &pool, worker.health()).await?;
    }
    if let Some(addr) = settings.web.listen {
        // Lives as long as the process: it stops with it. Should it fail, say so.
        let console = Console::new(pool.clone(), &settings)
            .spawn(addr, std::future::pending())
            .await
            .with_context(|| format!("binding web.listen {addr}"))?;
        tokio::spawn(async move {
            match console.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "the web console stopped serving"),
                Err(e) => tracing::error!(error = %e, "the web console's task failed"),
            }
        });
    }
    let (shutdown, signal) = Shutdown::new();
    jobq_worker::on_signals(shutdown).context("installing the SIGTERM/SIGINT handlers")?;
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

/// `jobq web`: the console alone, until SIGINT or SIGTERM.
async fn web(settings: &Config, listen: Option<std::net::SocketAddr>) -> Result<ExitCode> {
    let addr = match listen.or(settings.web.listen) {
        Some(a) => a,
        None => jobq_worker::web::DEFAULT_LISTEN.parse()?,
    };
    let pool = connected(settings).await?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping the web console");
    };
    let server = Console::new(pool, settings)
        .spawn(addr, stop)
        .await
        .with_context(|| format!("binding {addr} for the web console"))?;
    eprintln!("jobq: web console on http://{addr}/");
    server.await??;
    Ok(ExitCode::SUCCESS)
}

/// `jobq stats`: every server the configuration names, each under a `server NAME` heading
/// when there are several (JSON: one object, or an array of `{"server", "stats"}`).
async fn stats(settings: &Config, json: bool) -> Result<ExitCode> {
    let servers = settings.servers();
    let mut all = Vec::with_capacity(servers.len());
    for url in &servers {
        let pool = connected(&jobq_worker::on_server(settings, url)?).await?;
        all.push((
            jobq_worker::server_name(url),
            jobq_worker::stats(&pool).await?,
        ));
    }
    if json {
        let out = match &all[..] {
            [(_, one)] => serde_json::to_value(one)?,
            several => serde_json::Value::Array(
                several
                    .iter()
                    .map(|(server, s)| serde_json::json!({"server": server, "stats": s}))
                    .collect(),
            ),
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let several = all.len() > 1;
    for (i, (server, s)) in all.iter().enumerate() {
        if several {
            if i > 0 {
                outln!();
            }
            outln!("server {server}");
        }
        print_stats(s);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_stats(s: &jobq_worker::Stats) {
    let states: Vec<&str> = jobq_worker::JobState::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    use crate::table::{Align::*, Table};
    let mut header = vec![("queue", Left)];
    header.extend(states.iter().map(|st| (*st, Right)));
    header.extend([("done/1m", Right), ("oldest(s)", Right), ("paused", Right)]);
    let mut t = Table::new(&header);
    for (name, q) in &s.queues {
        let mut cells = vec![name.clone()];
        cells.extend(
            states
                .iter()
                .map(|st| q.states.get(*st).copied().unwrap_or(0).to_string()),
        );
        cells.push(q.completed_last_minute.to_string());
        cells.push(
            q.oldest_available_seconds
                .map_or("-".to_owned(), |s| format!("{s:.1}")),
        );
        cells.push((if q.paused_since.is_some() { "yes" } else { "-" }).to_owned());
        t.row(cells);
    }
    let mut total = vec!["TOTAL".to_owned()];
    total.extend(
        states
            .iter()
            .map(|st| s.totals.get(*st).copied().unwrap_or(0).to_string()),
    );
    t.row(total);
    t.print();
}

/// `s` with control characters escaped (`\n`, `\u{1b}`, …): error texts and worker ids come
/// from handlers and other programs, and must not drive the operator's terminal.
pub(crate) fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

async fn job(settings: &Config, id: u64, json: bool) -> Result<ExitCode> {
    let pool = connected(settings).await?;
    let (job, history) = jobq_worker::job_with_history(&pool, JobId(id)).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "job": job, "history": history }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "job {}  kind {}  queue {}  state {}",
        job.id,
        job.kind,
        job.queue,
        job.state
    );
    outln!("  payload      {}", job.payload);
    outln!("  priority     {}", job.priority);
    outln!("  attempt      {} of {}", job.attempt, job.max_attempts);
    outln!("  run_at       {}", job.run_at);
    outln!("  created_at   {}", job.created_at);
    if let Some(t) = job.attempted_at {
        outln!("  attempted_at {t}");
    }
    if let Some(t) = job.finalized_at {
        outln!("  finalized_at {t}");
    }
    if let Some(w) = &job.worker_id {
        outln!("  worker       {}", printable(w));
    }
    if let Some(e) = &job.last_error {
        outln!("  last_error   {}", printable(e));
    }
    if let Some(r) = &job.result {
        outln!("  result       {r}");
    }
    outln!("history:");
    for t in history {
        outln!(
            "  {}  {:>9} -> {:<9}  {:<9} attempt {}  {}{}{}",
            t.at.format("%Y-%m-%d %H:%M:%S%.6f"),
            t.from.map_or("-", |s| s.as_str()),
            t.to,
            t.event,
            t.attempt,
            printable(t.worker_id.as_deref().unwrap_or("")),
            t.error
                .map(|e| format!("  error: {}", printable(&e)))
                .unwrap_or_default(),
            t.actor
                .map(|a| format!("  by: {}", printable(&a)))
                .unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_only_the_password() {
        let table = [
            ("mysql://u:secret@h:3306/db", "mysql://u:***@h:3306/db"),
            ("mysql://u:p@ss@h/db", "mysql://u:***@h/db"),
            ("mysql://u@h/db", "mysql://u@h/db"),
            (
                "mysql://u:pw@db1:3306/app?ssl-ca=/etc/ssl/me@corp.pem",
                "mysql://u:***@db1:3306/app?ssl-ca=/etc/ssl/me@corp.pem",
            ),
            ("mysql://h/db?x=a@b", "mysql://h/db?x=a@b"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in table {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let set = |v: &str| Some(std::ffi::OsString::from(v));
        let table = [
            (true, None, true),
            (true, set(""), true),
            (true, set("1"), false),
            (false, None, false),
            (false, set("1"), false),
        ];
        for (terminal, no_color, expected) in table {
            assert_eq!(
                colour(terminal, no_color.as_deref()),
                expected,
                "{terminal} {no_color:?}"
            );
        }
    }
}
