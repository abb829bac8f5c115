//! `jobq bench --scenario fan-in`: what dependencies cost.
//!
//! - **release**: one workflow of `--parents` no-op parents (default 10,000) and one child that
//!   runs after all of them, drained by the worker processes; reports the fan-in's rate and the
//!   time from the last parent's completion to the child's claim (database clock);
//! - **blocked burden**: the plain burn-down of `--jobs` no-op jobs with `--blocked` blocked jobs
//!   (default 100,000, waiting for a parent that never runs) in the same queue, against the same
//!   burn-down without them, interleaved (without, with, without, with) in one run: blocked jobs
//!   are outside the claim's index range, so the rates should match.

use super::*;

/// The sizes of one fan-in run.
pub(super) struct FanIn {
    /// Parents of the one child.
    pub(super) parents: u32,
    /// Blocked jobs during the burden's second burn-downs.
    pub(super) blocked: u32,
    /// Jobs per burn-down.
    pub(super) jobs: u32,
}

/// The release row, then the burden rows (each burn-down, and the ratio in the last note).
pub(super) async fn fan_in(
    pool: &MySqlPool,
    url: &str,
    size: FanIn,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Vec<Report>> {
    let FanIn {
        parents,
        blocked,
        jobs,
    } = size;
    let mut out = vec![release(pool, url, parents, mode, processes, concurrency).await?];
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let r = burn_down(pool, url, jobs, mode, processes, concurrency).await?;
        without.push(r.jobs_per_s);
        out.push(r);
        sql::bench_reset(pool).await?;
        block(pool, blocked).await?;
        let mut r = burn_down_on(pool, url, jobs, mode, processes, concurrency).await?;
        r.scenario = "burn-down+blocked".into();
        with.push(r.jobs_per_s);
        out.push(r);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    if let Some(last) = out.last_mut() {
        last.note = format!(
            "{blocked} blocked jobs in the queue: {:.1}% of the rate without them (means of 2 interleaved runs each: {:.0} vs {:.0} jobs/s)",
            100.0 * mean(&with) / mean(&without),
            mean(&with),
            mean(&without)
        );
    }
    Ok(out)
}

/// The fan-in: `parents` parents, one child; the child's release latency.
async fn release(
    pool: &MySqlPool,
    url: &str,
    parents: u32,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Report> {
    sql::bench_reset(pool).await?;
    let names: Vec<String> = (0..parents).map(|i| format!("p{i}")).collect();
    let mut flow = jobq_worker::Workflow::new("bench-fan-in");
    for n in &names {
        flow = flow.job(n.clone(), NewJob::json("noop", json!({})).queue(QUEUE));
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    flow = flow.job_after("child", NewJob::json("noop", json!({})).queue(QUEUE), &refs);
    let started = Instant::now();
    let wf = jobq_worker::Producer::new(pool.clone())
        .enqueue_workflow(flow)
        .await?;
    let enqueue = f64::from(parents + 1) / started.elapsed().as_secs_f64().max(1e-6);
    let child = wf.jobs["child"].0;
    let (q0, w0) = sql::server_counters(pool).await?;
    let mut workers = Workers::spawn(url, mode, processes, concurrency)?;
    wait_completed(pool, parents + 1, &mut workers).await?;
    let (q1, w1) = sql::server_counters(pool).await?;
    workers.stop()?;
    let (span, claims) = sql::run_span(pool, QUEUE, 0).await?;
    let latency_us = sql::release_latency(pool, wf.id.0, child).await?;
    let n = parents + 1;
    Ok(Report {
        scenario: "fan-in".into(),
        claim_mode: mode.to_string(),
        processes,
        concurrency,
        jobs: n,
        enqueue_jobs_per_s: Some(enqueue),
        jobs_per_s: f64::from(n) / span.max(1e-6),
        claims_per_job: Some(claims as f64 / f64::from(n)),
        statements_per_job: per_job(q1 - q0, n),
        rows_written_per_job: per_job(w1 - w0, n),
        note: format!(
            "{parents} parents → 1 child: the child was claimed {:.1} ms after the last parent completed",
            latency_us as f64 / 1000.0
        ),
        ..Default::default()
    })
}

/// `n` jobs in the bench queue, blocked on one parent that never becomes due.
async fn block(pool: &MySqlPool, n: u32) -> Result<()> {
    let producer = jobq_worker::Producer::new(pool.clone());
    let never = producer
        .enqueue(
            NewJob::json("noop", json!({}))
                .queue("bench-never")
                .delay(Duration::from_secs(365 * 86_400)),
        )
        .await?;
    let mut left = n;
    while left > 0 {
        let k = left.min(10_000);
        let jobs = (0..k)
            .map(|_| NewJob::json("noop", json!({})).queue(QUEUE).after(never))
            .collect();
        producer.enqueue_many(jobs).await?;
        left -= k;
    }
    Ok(())
}
