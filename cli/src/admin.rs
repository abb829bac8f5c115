//! `jobq jobs list`, `jobq workers`, `jobq prune`: reading and cleaning up from the shell.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use jobq_config::Config;
use jobq_worker::{JobFilter, JobId, JobState};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum JobsCommand {
    /// Jobs, newest first (with --state: latest run-at first), a page at a time: pass the
    /// last id shown as --after for the next page.
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Only jobs in this state (available, scheduled, running, retryable, waiting, completed,
    /// discarded, cancelled).
    #[arg(long)]
    state: Option<JobState>,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only jobs whose last error contains TEXT.
    #[arg(long, value_name = "TEXT")]
    error: Option<String>,
    /// At most N jobs (1 to 10000).
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: u32,
    /// Continue after this job id (the last one of the previous page).
    #[arg(long, value_name = "ID")]
    after: Option<u64>,
    /// One JSON array.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn jobs(settings: &Config, c: JobsCommand) -> Result<ExitCode> {
    let JobsCommand::List(a) = c;
    if !(1..=10_000).contains(&a.limit) {
        bail!(crate::Usage(format!(
            "--limit must be 1 to 10000, not {}",
            a.limit
        )));
    }
    let pool = crate::common::connected(settings).await?;
    let filter = JobFilter {
        state: a.state,
        queue: a.queue,
        kind: a.kind,
        error: a.error,
        limit: a.limit,
        after: a.after.map(JobId),
        after_run_at: None,
        order: jobq_worker::JobOrder::Natural,
        max_id: None,
        examine: None,
    };
    let jobs = jobq_worker::list_jobs(&pool, &filter).await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    use crate::table::{Align::*, Table};
    let mut t = Table::new(&[
        ("id", Right),
        ("queue", Left),
        ("kind", Left),
        ("state", Left),
        ("attempts", Right),
        ("run at (UTC)", Left),
        ("last error", Left),
    ]);
    for j in &jobs {
        let error = j
            .last_error
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        let error: String = error.chars().take(60).collect();
        t.row(vec![
            j.id.to_string(),
            j.queue.to_string(),
            j.kind.to_string(),
            j.state.to_string(),
            format!("{}/{}", j.attempt, j.max_attempts),
            j.run_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            crate::common::printable(&error).into_owned(),
        ]);
    }
    t.print();
    if jobs.len() == a.limit as usize {
        if let Some(last) = jobs.last() {
            eprintln!("more may follow: --after {}", last.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn workers(settings: &Config, json: bool) -> Result<ExitCode> {
    let pool = crate::common::connected(settings).await?;
    let ws = jobq_worker::workers(&pool).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&ws)?);
        return Ok(ExitCode::SUCCESS);
    }
    use crate::table::{Align::*, Table};
    let mut t = Table::new(&[
        ("worker", Left),
        ("host", Left),
        ("pid", Right),
        ("running", Right),
        ("heartbeat age", Right),
        ("queues", Left),
    ]);
    for w in &ws {
        t.row(vec![
            crate::common::printable(w.id.as_str()).into_owned(),
            crate::common::printable(&w.host).into_owned(),
            w.pid.to_string(),
            w.running.to_string(),
            format!("{:.1}s", w.heartbeat_age_seconds),
            w.queues.join(","),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub(crate) struct PruneArgs {
    /// Delete jobs finished longer ago than this, e.g. 7d, 12h.
    #[arg(long, value_parser = crate::common::parse_duration, default_value = "7d")]
    older_than: Duration,
    /// Which finished jobs: completed, discarded or cancelled.
    #[arg(long, default_value = "completed")]
    state: JobState,
    /// Print `{"deleted": N}`.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn prune(settings: &Config, a: PruneArgs) -> Result<ExitCode> {
    let pool = crate::common::connected(settings).await?;
    let n = jobq_worker::prune_jobs(&pool, a.state, a.older_than).await?;
    if a.json {
        outln!("{}", serde_json::json!({"deleted": n, "state": a.state}));
    } else {
        outln!("deleted {n} {} jobs (with their history)", a.state);
    }
    Ok(ExitCode::SUCCESS)
}
