//! `jobq stats` (counts per queue and state, per server) and `jobq job ID` (a job and its
//! whole history).

use std::process::ExitCode;

use anyhow::Result;
use jobq_config::Config;
use jobq_worker::JobId;
use serde_json::json;

use crate::common::{connected, printable};

/// `jobq stats`: every server the configuration names, each under a `server NAME` heading
/// when there are several (JSON: one object, or an array of `{"server", "stats"}`).
pub(crate) async fn stats(settings: &Config, json: bool) -> Result<ExitCode> {
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
        cells.extend(states.iter().map(|st| q.count_text(st)));
        cells.push(q.completed_last_minute.to_string());
        cells.push(
            q.oldest_available_seconds
                .map_or("-".to_owned(), |s| format!("{s:.1}")),
        );
        cells.push((if q.paused_since.is_some() { "yes" } else { "-" }).to_owned());
        t.row(cells);
    }
    let mut total = vec!["TOTAL".to_owned()];
    total.extend(states.iter().map(|st| s.total_text(st)));
    t.row(total);
    t.print();
    if !s.totals_estimated.is_empty() {
        outln!(
            "~ estimated: over 10,000 jobs in that state, the count is the server's estimate \
             (counting exactly would read every job)"
        );
    }
}

pub(crate) async fn job(settings: &Config, id: u64, json: bool) -> Result<ExitCode> {
    let pool = connected(settings).await?;
    let (job, history) = jobq_worker::job_with_history(&pool, JobId(id)).await?;
    let progress = jobq_worker::job_progress(&pool, JobId(id)).await?;
    let logs = all_logs(&pool, JobId(id)).await?;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "job": job, "history": history, "progress": progress, "logs": logs })
            )?
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
    if let Some(p) = &progress {
        outln!("  progress     {}", progress_text(p));
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
    if !logs.is_empty() {
        outln!("log:");
        for l in &logs {
            outln!("  {}", log_text(l));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every log line of a job, in order (an attempt stores at most 64 KiB of them).
async fn all_logs(pool: &sqlx::MySqlPool, id: JobId) -> Result<Vec<jobq_worker::LogLine>> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |l: &jobq_worker::LogLine| l.id);
        let page = jobq_worker::job_logs(pool, id, after, 1000).await?;
        let done = page.len() < 1000;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// `42.5%  attempt 1  copying files (at 2026-12-07 10:00:00)`.
pub(crate) fn progress_text(p: &jobq_worker::Progress) -> String {
    format!(
        "{}%  attempt {}{}  (at {})",
        p.percent,
        p.attempt,
        p.message
            .as_deref()
            .map(|m| format!("  {}", printable(m)))
            .unwrap_or_default(),
        p.at.format("%Y-%m-%d %H:%M:%S")
    )
}

/// `2026-12-07 10:00:00.123  attempt 1  the line`, a truncation mark flagged.
pub(crate) fn log_text(l: &jobq_worker::LogLine) -> String {
    format!(
        "{}  attempt {}  {}{}",
        l.at.format("%Y-%m-%d %H:%M:%S%.3f"),
        l.attempt,
        if l.truncated { "TRUNCATED " } else { "" },
        printable(&l.line)
    )
}
