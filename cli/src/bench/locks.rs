//! `jobq bench --scenario locks`: the lock library's latency and contended throughput, for each
//! kind (session lock, lease lock, semaphore of 4 permits).
//!
//! - latency: one process acquires and releases a free lock 300 times in a row; percentiles of
//!   each call;
//! - contended: 16 `jobq` processes (the hidden `lock-contender` scenario) acquire and release
//!   one name as fast as they can for `--duration`, starting together; completed
//!   acquire+release cycles per second across all of them, and the percentiles of their
//!   acquire waits.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use jobq_lock::{Guard, LeaseLock, SessionLock};
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

/// The kinds measured (`--lock-kind` of a contender).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub(crate) enum LockKind {
    /// `GET_LOCK` on a connection of its own.
    Session,
    /// A lease row in `jobq_locks`.
    Lease,
    /// A lease semaphore of `SEMAPHORE_PERMITS` permits.
    Semaphore,
}

const CONTENDERS: usize = 16;
const LATENCY_CYCLES: usize = 300;
const SEMAPHORE_PERMITS: u32 = 4;
/// Environment variable carrying the contenders' common start (ms since the epoch).
const START_ENV: &str = "JOBQ_BENCH_LOCK_START";

async fn acquire(pool: &MySqlPool, kind: LockKind, name: &str) -> Result<Guard> {
    let wait = Duration::from_secs(60);
    let g = match kind {
        LockKind::Session => SessionLock::new(pool)
            .acquire(name, wait)
            .await?
            .map(Guard::from),
        LockKind::Lease => LeaseLock::new(pool, holder())
            .acquire(name, wait)
            .await?
            .map(Guard::from),
        LockKind::Semaphore => LeaseLock::new(pool, holder())
            .acquire_permit(name, SEMAPHORE_PERMITS, wait)
            .await?
            .map(Guard::from),
    };
    g.with_context(|| format!("lock {name:?} not acquired within {wait:?}"))
}

fn holder() -> String {
    format!("bench:{}", std::process::id())
}

#[derive(Serialize)]
struct Row {
    kind: LockKind,
    acquire_p50_ms: f64,
    acquire_p99_ms: f64,
    release_p50_ms: f64,
    release_p99_ms: f64,
    contenders: usize,
    contended_locks_per_s: f64,
    contended_wait_p50_ms: f64,
    contended_wait_p99_ms: f64,
}

/// What a contender reports on stdout.
#[derive(Serialize, Deserialize)]
struct Contended {
    cycles: u64,
    waits_ms: Vec<f64>,
}

pub(crate) async fn run(pool: &MySqlPool, url: &str, duration: Duration, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for kind in [LockKind::Session, LockKind::Lease, LockKind::Semaphore] {
        let name = format!("bench latency {kind:?}");
        let (mut acq, mut rel) = (Vec::new(), Vec::new());
        for _ in 0..LATENCY_CYCLES {
            let t = Instant::now();
            let g = acquire(pool, kind, &name).await?;
            acq.push(ms(t.elapsed()));
            let t = Instant::now();
            g.release().await?;
            rel.push(ms(t.elapsed()));
        }
        let (cycles, mut waits) = contend(url, kind, duration)?;
        let row = Row {
            kind,
            acquire_p50_ms: pct(&mut acq, 0.50),
            acquire_p99_ms: pct(&mut acq, 0.99),
            release_p50_ms: pct(&mut rel, 0.50),
            release_p99_ms: pct(&mut rel, 0.99),
            contenders: CONTENDERS,
            contended_locks_per_s: cycles as f64 / duration.as_secs_f64(),
            contended_wait_p50_ms: pct(&mut waits, 0.50),
            contended_wait_p99_ms: pct(&mut waits, 0.99),
        };
        if json {
            outln!("{}", serde_json::to_string(&row)?);
        } else {
            eprintln!(
                "  {:<9} acquire p50 {:.2} ms, release p50 {:.2} ms; {} contenders: {:.0} locks/s",
                format!("{kind:?}"),
                row.acquire_p50_ms,
                row.release_p50_ms,
                CONTENDERS,
                row.contended_locks_per_s
            );
        }
        rows.push(row);
    }
    if !json {
        outln!("| kind | acquire p50 / p99 ms | release p50 / p99 ms | contenders | locks/s | contended acquire wait p50 / p99 ms |");
        outln!("|---|---:|---:|---:|---:|---:|");
        for r in &rows {
            let kind = match r.kind {
                LockKind::Session => "session (GET_LOCK)".to_owned(),
                LockKind::Lease => "lease".to_owned(),
                LockKind::Semaphore => format!("semaphore of {SEMAPHORE_PERMITS}"),
            };
            outln!(
                "| {kind} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {:.0} | {:.1} / {:.1} |",
                r.acquire_p50_ms,
                r.acquire_p99_ms,
                r.release_p50_ms,
                r.release_p99_ms,
                r.contenders,
                r.contended_locks_per_s,
                r.contended_wait_p50_ms,
                r.contended_wait_p99_ms
            );
        }
    }
    Ok(())
}

/// Runs `CONTENDERS` contender processes on one name; their total cycles and every wait.
fn contend(url: &str, kind: LockKind, duration: Duration) -> Result<(u64, Vec<f64>)> {
    let exe = std::env::current_exe()?;
    // Far enough ahead for every process to start and connect.
    let start = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() + 1500;
    let kind_arg = match kind {
        LockKind::Session => "session",
        LockKind::Lease => "lease",
        LockKind::Semaphore => "semaphore",
    };
    let children = (0..CONTENDERS)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "bench",
                    "--scenario",
                    "lock-contender",
                    "--lock-kind",
                    kind_arg,
                ])
                .arg("--duration")
                .arg(format!("{}ms", duration.as_millis()))
                .env("JOBQ_DATABASE_URL", url)
                .env(START_ENV, start.to_string())
                .env("JOBQ_LOG__LEVEL", "warn")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a lock contender")
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut cycles, mut waits) = (0, Vec::new());
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            bail!("a lock contender failed ({})", out.status);
        }
        let r: Contended = serde_json::from_slice(&out.stdout).context("a contender's report")?;
        cycles += r.cycles;
        waits.extend(r.waits_ms);
    }
    Ok((cycles, waits))
}

/// The hidden `lock-contender` scenario: from the common start, acquire and release
/// `bench contended` for `duration`; print the report as JSON.
pub(crate) async fn contender(pool: &MySqlPool, kind: LockKind, duration: Duration) -> Result<()> {
    let start: u128 = std::env::var(START_ENV)
        .context("lock-contender is started by `jobq bench --scenario locks`")?
        .parse()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    tokio::time::sleep(Duration::from_millis(start.saturating_sub(now) as u64)).await;
    let end = Instant::now() + duration;
    let mut report = Contended {
        cycles: 0,
        waits_ms: Vec::new(),
    };
    while Instant::now() < end {
        let t = Instant::now();
        let g = acquire(pool, kind, "bench contended").await?;
        report.waits_ms.push(ms(t.elapsed()));
        g.release().await?;
        report.cycles += 1;
    }
    outln!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}
