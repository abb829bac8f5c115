//! `jobq queues`: list queues with their state, depth and limits (as configured where the
//! command runs: the limits live in the workers' configuration); `pause` and `resume` them
//! across all workers.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Result;
use jobq_config::Config;
use jobq_worker::QueueName;

#[derive(clap::Args, Debug)]
pub(crate) struct QueuesArgs {
    #[command(subcommand)]
    action: Option<QueuesAction>,
    /// List as JSON (one array).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum QueuesAction {
    /// Stop every worker claiming from QUEUE (within one poll interval); running jobs finish,
    /// producers still enqueue. Kept in the database until `resume`.
    Pause {
        /// The queue.
        queue: String,
        /// Pause a queue that has no jobs yet and is not in the configuration (a typo is
        /// refused otherwise).
        #[arg(long)]
        new: bool,
    },
    /// Let workers claim from QUEUE again.
    Resume {
        /// The queue.
        queue: String,
    },
}

/// `user@host:pid`, recorded as who paused a queue.
fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}:{}", jobq_worker::hostname(), std::process::id())
}

pub(crate) async fn run(settings: &Config, a: QueuesArgs) -> Result<ExitCode> {
    let pool = crate::common::connected(settings).await?;
    match a.action {
        Some(QueuesAction::Pause { queue, new }) => {
            let q = QueueName::new(&queue)?;
            let known = settings.worker().queues.contains(&queue)
                || settings.configured_queues().any(|q| q.as_str() == queue)
                || jobq_worker::stats(&pool).await?.queues.contains_key(&queue);
            if !known && !new {
                anyhow::bail!(crate::Usage(format!(
                    "queue {q:?} is unknown here: it has no jobs and is not in the configuration \
                     (`jobq queues` lists the known ones); pass --new to pause it ahead of its \
                     first job"
                )));
            }
            if jobq_worker::pause_queue(&pool, &q, &who()).await? {
                outln!("paused {q}");
            } else {
                outln!("{q} was already paused");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(QueuesAction::Resume { queue }) => {
            let q = QueueName::new(&queue)?;
            if jobq_worker::resume_queue(&pool, &q).await? {
                outln!("resumed {q}");
            } else {
                outln!("{q} was not paused");
            }
            Ok(ExitCode::SUCCESS)
        }
        None => list(settings, &pool, a.json).await,
    }
}

/// Every queue with jobs, paused, or configured.
async fn list(settings: &Config, pool: &sqlx::MySqlPool, json: bool) -> Result<ExitCode> {
    let stats = jobq_worker::stats(pool).await?;
    let mut names: BTreeSet<String> = stats.queues.keys().cloned().collect();
    names.extend(settings.worker().queues.iter().cloned());
    names.extend(settings.configured_queues().map(|q| q.to_string()));
    let mut rows = Vec::new();
    for name in names {
        let Ok(q) = QueueName::new(&name) else {
            continue;
        };
        let effective = settings.queue(&q);
        let s = stats.queues.get(&name).cloned().unwrap_or_default();
        let n = |st: &str| s.states.get(st).copied().unwrap_or(0);
        rows.push(serde_json::json!({
            "queue": name,
            "state": if s.paused_since.is_some() { "paused" } else { "active" },
            "paused_since": s.paused_since,
            "paused_by": s.paused_by,
            "available": n("available"),
            "scheduled": n("scheduled"),
            "running": n("running"),
            "retryable": n("retryable"),
            "waiting": n("waiting"),
            "estimated": s.estimated,
            "oldest_available_seconds": s.oldest_available_seconds,
            "claim_mode": effective.claim_mode.as_str(),
            "concurrency": effective.concurrency,
            "key_limit": effective.key_limit,
            "rate_limit": effective.rate_limit.map(|r| r.to_string()),
            "key_rate_limit": effective.key_rate_limit.map(|r| r.to_string()),
        }));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    use crate::table::{Align::*, Table};
    let mut t = Table::new(&[
        ("queue", Left),
        ("state", Left),
        ("available", Right),
        ("scheduled", Right),
        ("running", Right),
        ("retryable", Right),
        ("waiting", Right),
        ("claim mode", Left),
        ("concurrency", Right),
        ("limits", Left),
        ("paused since", Left),
    ]);
    // A JSON value's Display ignores width and alignment: cells are plain strings.
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    for r in &rows {
        let mut limits = format!("key_limit={}", r["key_limit"]);
        for l in ["rate_limit", "key_rate_limit"] {
            if let Some(v) = r[l].as_str() {
                limits.push_str(&format!(" {l}={v}"));
            }
        }
        let mut cells: Vec<String> = [
            "queue",
            "state",
            "available",
            "scheduled",
            "running",
            "retryable",
            "waiting",
            "claim_mode",
            "concurrency",
        ]
        .iter()
        .map(|k| {
            // A count is shown as `jobq stats` shows it: `~N` when estimated.
            match r["queue"].as_str().and_then(|q| stats.queues.get(q)) {
                Some(s) if s.states.contains_key(*k) => s.count_text(k),
                _ => text(&r[*k]),
            }
        })
        .collect();
        cells.push(limits);
        cells.push(text(&r["paused_since"]));
        t.row(cells);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}
