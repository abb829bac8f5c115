//! `jobq bench --scenario web`: the console's pages over a large table. Fills the bench
//! database with N jobs in a busy day's mix (`sql::console_mix`), serves the console in this
//! process, and times each page over real HTTP: the median and the slowest of several loads.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobq_config::Config;
use sqlx::MySqlPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Loads per page.
const LOADS: usize = 7;

/// One GET over a fresh connection; the status and the body's length.
async fn get(port: u16, path: &str) -> Result<(u16, usize)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((status, raw.len()))
}

pub(super) async fn run(pool: &MySqlPool, config: &Config, jobs: u32, json: bool) -> Result<()> {
    super::sql::bench_reset(pool).await?;
    eprintln!("  inserting {jobs} jobs…");
    super::fill(pool, jobs).await?;
    eprintln!("  giving them a busy day's states and history…");
    super::sql::console_mix(pool).await?;
    sqlx::query("ANALYZE TABLE jobq_jobs, jobq_transitions")
        .execute(pool)
        .await?;
    let (mid, deep): (u64, u64) = sqlx::query_as(
        "SELECT CAST(MIN(id) + (MAX(id) - MIN(id)) DIV 2 AS UNSIGNED), CAST(MIN(id) + 1000 AS UNSIGNED) FROM jobq_jobs",
    )
    .fetch_one(pool)
    .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}").parse()?;
    let console = jobq_worker::web::Console::new(pool.clone(), config);
    let _server = console.spawn(addr, std::future::pending()).await?;
    let pages: Vec<(&str, String)> = vec![
        ("overview", "/".into()),
        ("jobs, newest", "/jobs".into()),
        ("jobs, completed by run-at", "/jobs?state=completed".into()),
        ("jobs, discarded by run-at", "/jobs?state=discarded".into()),
        (
            "jobs, discarded by id",
            "/jobs?state=discarded&sort=id".into(),
        ),
        ("jobs, all states by run-at", "/jobs?sort=run_at".into()),
        ("jobs, kind filter", "/jobs?kind=resize_image".into()),
        (
            "jobs, kind matching nothing",
            "/jobs?kind=no_such_kind".into(),
        ),
        (
            "jobs, kind matching nothing, all states by run-at",
            "/jobs?kind=no_such_kind&sort=run_at".into(),
        ),
        (
            "jobs, error text in discarded",
            "/jobs?state=discarded&q=upstream+3".into(),
        ),
        (
            "jobs, error text matching nothing in discarded",
            "/jobs?state=discarded&q=no-such-text".into(),
        ),
        (
            "jobs, error text matching nothing in completed",
            "/jobs?state=completed&q=no-such-text".into(),
        ),
        (
            "jobs, page at the middle (by id)",
            format!("/jobs?after={mid}"),
        ),
        (
            "jobs, page near the oldest (by id)",
            format!("/jobs?after={deep}"),
        ),
        ("one job", format!("/jobs/{mid}")),
        (
            "confirm: retry all discarded (count)",
            "/jobs/act?act=retry&state=discarded".into(),
        ),
        ("queues", "/queues".into()),
        ("workers", "/workers".into()),
        ("locks", "/locks".into()),
    ];
    let mut rows = Vec::new();
    for (name, path) in &pages {
        let mut times = Vec::with_capacity(LOADS);
        let mut bytes = 0;
        for _ in 0..LOADS {
            let started = Instant::now();
            let (status, n) = get(port, path).await?;
            times.push(started.elapsed());
            if status != 200 {
                bail!("{path} answered {status}");
            }
            bytes = n;
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        rows.push((
            name,
            path,
            ms(times[LOADS / 2]),
            ms(times[LOADS - 1]),
            bytes,
        ));
    }
    if json {
        for (name, path, p50, max, bytes) in &rows {
            outln!(
                "{}",
                serde_json::json!({"scenario": "web", "jobs": jobs, "page": name, "path": path,
                                   "p50_ms": p50, "max_ms": max, "bytes": bytes})
            );
        }
    } else {
        outln!("| page ({jobs} jobs) | path | median (ms) | slowest of {LOADS} (ms) |");
        outln!("|---|---|---:|---:|");
        for (name, path, p50, max, _) in &rows {
            outln!("| {name} | `{path}` | {p50:.1} | {max:.1} |");
        }
    }
    Ok(())
}
