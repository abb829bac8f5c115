//! The command line: arguments (clap), configuration with the flags as its last layer, logging,
//! and the dispatch to each command's own file (`jobq migrate` is in `common.rs`, which the
//! demo shares).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use jobq_config::{ClaimMode, Config, LogFormat};
use tracing_subscriber::EnvFilter;

use crate::common::migrate;
use crate::enqueue::EnqueueArgs;
use crate::work::WorkArgs;

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
    /// Workflows and batches: list them, show one (jobs, parents, graph), enqueue one from a
    /// JSON document, cancel or retry one.
    Workflows(crate::workflows::WorkflowsArgs),
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
        if set_by_jobq(&var) {
            tracing::debug!(%var, "not a configuration variable; ignored");
        } else {
            tracing::warn!(
                %var,
                "{var} is not a configuration variable (its first part names no section: \
                 database_url, database, worker, queues, kinds, producer, maintenance, metrics, \
                 web, log; sections and keys are joined with __, e.g. JOBQ_WORKER__CONCURRENCY); \
                 ignored"
            );
        }
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
            jobq_worker::server_name(settings.database_url())
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
            Command::Enqueue(a) => crate::enqueue::enqueue(&settings, a).await,
            Command::Work(a) => crate::work::work(settings, a).await,
            Command::Stats { json } => crate::show::stats(&settings, json).await,
            Command::Job { id, json } => crate::show::job(&settings, id, json).await,
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
            Command::Workflows(a) => crate::workflows::run(&settings, a).await,
            Command::Web { listen } => crate::work::web(&settings, listen).await,
        }
    })
}

fn init_logging(settings: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log().level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match settings.log().format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Handler panics are caught and recorded as attempt errors: one line each. Any other panic
    // is reported as the bug it is.
    jobq_worker::install_panic_hook();
}

/// `JOBQ_` variables jobq sets itself for the programs it runs (command handlers, `jobq lock
/// run`), which a `jobq` run by them inherits: not configuration, and no mistake.
fn set_by_jobq(var: &str) -> bool {
    ["JOBQ_JOB_", "JOBQ_LOCK_"]
        .iter()
        .any(|p| var.starts_with(p))
}

/// Log lines are coloured only on a terminal, and never when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>): a file or a pipe gets plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

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
