//! `two-servers`: the same burn-down over two servers. Half the jobs wait in `bench` on the
//! first server, half in `bench_far` on the second (`[queues.bench_far] database_url`); P
//! `jobq work` processes each work both queues, so every process holds a pool, a worker row
//! and a maintenance campaign on each server. Timed from the first claim to the last
//! completion over both servers (one machine, one clock).

use anyhow::Result;
use jobq_config::ClaimMode;
use sqlx::MySqlPool;

use super::{fill_queue, per_job, sql, wait_done, Report, Workers, QUEUE};

/// The second server's queue.
const FAR_QUEUE: &str = "bench_far";

pub(super) async fn burn_down(
    servers: [(&MySqlPool, &str); 2],
    n: u32,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Report> {
    let [(near, url), (far, far_url)] = servers;
    let queues = [(near, QUEUE), (far, FAR_QUEUE)];
    let mut enqueue = Vec::new();
    for (i, (pool, queue)) in queues.into_iter().enumerate() {
        sql::bench_reset(pool).await?;
        let share = n / 2 + u32::from(i == 0) * (n % 2);
        enqueue.push((share, fill_queue(pool, share, queue).await?));
    }
    let mut before = Vec::new();
    for (pool, _) in queues {
        before.push(sql::server_counters(pool).await?);
    }
    let env = [("JOBQ_QUEUES__BENCH_FAR__DATABASE_URL", far_url)];
    let both = format!("{QUEUE},{FAR_QUEUE}");
    let mut workers = Workers::spawn_on(url, &both, mode, processes, concurrency, &env)?;
    wait_done(n, &mut workers, || async {
        let mut done = 0;
        for (pool, queue) in queues {
            done += sql::completed_in(pool, queue).await?;
        }
        Ok(done)
    })
    .await?;
    let (mut statements, mut writes) = (0, 0);
    for ((pool, _), (q0, w0)) in queues.into_iter().zip(before) {
        let (q1, w1) = sql::server_counters(pool).await?;
        statements += q1 - q0;
        writes += w1 - w0;
    }
    workers.stop()?;
    let (mut first, mut last, mut claims) = (f64::MAX, 0f64, 0);
    for (pool, queue) in queues {
        let (f, l, c) = sql::run_bounds(pool, queue).await?;
        first = first.min(f);
        last = last.max(l);
        claims += c;
    }
    // Enqueue rate: both halves, inserted one after the other.
    let enqueue_secs: f64 = enqueue.iter().map(|(k, r)| f64::from(*k) / r).sum();
    Ok(Report {
        scenario: "two-servers".into(),
        claim_mode: mode.to_string(),
        processes,
        concurrency,
        jobs: n,
        enqueue_jobs_per_s: Some(f64::from(n) / enqueue_secs.max(1e-6)),
        jobs_per_s: f64::from(n) / (last - first).max(1e-6),
        claims_per_job: Some(claims as f64 / f64::from(n)),
        statements_per_job: per_job(statements, n),
        rows_written_per_job: per_job(writes, n),
        note: format!(
            "half the jobs on each server; each process works both queues with {concurrency} \
             slots each ({} in all)",
            2 * concurrency
        ),
        ..Default::default()
    })
}
