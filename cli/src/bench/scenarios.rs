//! The scenarios' runs: burn-down (with retention), the ceiling, steady pickup, claim scaling,
//! and filling the queue.

use super::*;

/// Inserts `n` noop jobs in calls of 10,000 (multi-row INSERTs with history) from `producers`
/// concurrent connections; returns jobs/s.
pub(super) async fn fill(pool: &MySqlPool, n: u32) -> Result<f64> {
    fill_queue(pool, n, QUEUE).await
}

/// [`fill`] into `queue`.
pub(super) async fn fill_queue(pool: &MySqlPool, n: u32, queue: &'static str) -> Result<f64> {
    let producers = PRODUCERS.load(std::sync::atomic::Ordering::Relaxed).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let share = n / producers + u32::from(p < n % producers);
        let producer = jobq_worker::Producer::new(pool.clone());
        tasks.push(tokio::spawn(async move {
            let mut left = share;
            while left > 0 {
                let k = left.min(10_000);
                let unique = UNIQUE_KEYS.load(std::sync::atomic::Ordering::Relaxed);
                let keys = CONCURRENCY_KEYS.load(std::sync::atomic::Ordering::Relaxed);
                let journal = LOG_AND_PROGRESS.load(std::sync::atomic::Ordering::Relaxed);
                let traced = TRACED.load(std::sync::atomic::Ordering::Relaxed);
                let jobs = (0..k)
                    .map(|i| {
                        let mut job = if journal {
                            NewJob::json("sleep", json!({"ms": 0, "steps": 1}))
                        } else {
                            NewJob::json("noop", json!({}))
                        }
                        .queue(queue);
                        if traced {
                            job = job.trace_context(bench_trace(p, left + i));
                        }
                        if keys > 0 {
                            job = job.concurrency_key(format!("key-{}", (left + i) % keys));
                        }
                        if unique {
                            job.unique_key(format!("{p}:{left}:{i}"))
                        } else {
                            job
                        }
                    })
                    .collect();
                producer.enqueue_many(jobs).await?;
                left -= k;
            }
            Ok::<(), jobq_worker::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(f64::from(n) / started.elapsed().as_secs_f64())
}

/// A made-up trace context, distinct per job, as an instrumented producer would store.
fn bench_trace(producer: u32, n: u32) -> jobq_worker::TraceContext {
    let parent = format!(
        "00-{:032x}-{:016x}-01",
        u128::from(producer) + 1,
        u64::from(n) + 1
    );
    jobq_worker::TraceContext::new(&parent, None).expect("a valid traceparent")
}

pub(super) async fn burn_down(
    pool: &MySqlPool,
    url: &str,
    n: u32,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Report> {
    sql::bench_reset(pool).await?;
    burn_down_on(pool, url, n, mode, processes, concurrency).await
}

/// [`burn_down`] on the table as it is (the caller reset it, or filled it on purpose).
pub(super) async fn burn_down_on(
    pool: &MySqlPool,
    url: &str,
    n: u32,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Report> {
    // Jobs already in the table (finished ones kept on purpose) are not the run's.
    let after = sql::max_job_id(pool).await?;
    let enqueue = fill(pool, n).await?;
    let (q0, w0) = sql::server_counters(pool).await?;
    let mut workers = Workers::spawn(url, mode, processes, concurrency)?;
    wait_done(n, &mut workers, || sql::completed_after(pool, QUEUE, after)).await?;
    let (q1, w1) = sql::server_counters(pool).await?;
    workers.stop()?;
    let (span, claims) = sql::run_span(pool, QUEUE, after).await?;
    // Round trips per claim: START+SELECT, UPDATE+INSERT+COMMIT; named-lock adds GET_LOCK
    // (RELEASE_LOCK rides in the last round trip).
    let claim_statements = match mode {
        ClaimMode::SkipLocked => 2.0,
        ClaimMode::NamedLock => 3.0,
    };
    Ok(Report {
        scenario: "burn-down".into(),
        claim_mode: mode.to_string(),
        processes,
        concurrency,
        jobs: n,
        enqueue_jobs_per_s: Some(enqueue),
        jobs_per_s: f64::from(n) / span.max(1e-6),
        claims_per_job: Some(claims as f64 / f64::from(n)),
        claim_round_trips_per_job: Some(claims as f64 * claim_statements / f64::from(n)),
        statements_per_job: per_job(q1 - q0, n),
        rows_written_per_job: per_job(w1 - w0, n),
        note: "history on: enqueued, claimed and completed transitions per job".into(),
        ..Default::default()
    })
}

/// Ages the `n` jobs a burn-down completed past retention and times their pruning, batch after
/// batch as the maintenance leader does it; `completed_per_s` is the rate to keep pace with.
pub(super) async fn retention(
    pool: &MySqlPool,
    settings: &jobq_config::Settings,
    n: u32,
    completed_per_s: f64,
) -> Result<Report> {
    let config = settings.validate()?;
    let age = config.maintenance().completed_retention + Duration::from_secs(3600);
    sql::age_finished(pool, age).await?;
    let (q0, w0) = sql::server_counters(pool).await?;
    let started = Instant::now();
    let mut pruned = 0;
    loop {
        let n = jobq_worker::prune_finished(pool, &config, Duration::from_secs(1)).await?;
        if n == 0 {
            break;
        }
        pruned += n;
    }
    let span = started.elapsed().as_secs_f64();
    let (q1, w1) = sql::server_counters(pool).await?;
    anyhow::ensure!(
        pruned == u64::from(n),
        "retention pruned {pruned} jobs of the {n} the burn-down completed"
    );
    Ok(Report {
        scenario: "retention".into(),
        claim_mode: "-".into(),
        jobs: n,
        jobs_per_s: f64::from(n) / span.max(1e-6),
        statements_per_job: per_job(q1 - q0, n),
        rows_written_per_job: per_job(w1 - w0, n),
        note: format!(
            "jobs (with their history) pruned per second, against {completed_per_s:.0} completed/s"
        ),
        ..Default::default()
    })
}

pub(super) async fn ceiling(
    pool: &MySqlPool,
    n: u32,
    mode: ClaimMode,
    connections: u32,
) -> Result<Report> {
    ceiling_of(pool, n, mode, connections, Batch::Jobq { history: false }).await
}

/// What a ceiling run's connections do per batch of 100.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Batch {
    /// Claim and finish on jobq's schema; with `history`, the claimed and completed
    /// transition rows too (each in its statement's transaction, as jobq writes them).
    Jobq { history: bool },
    /// The same on a table holding only what a queue needs, with one index.
    Narrow,
}

pub(super) async fn ceiling_of(
    pool: &MySqlPool,
    n: u32,
    mode: ClaimMode,
    connections: u32,
    batch: Batch,
) -> Result<Report> {
    let enqueue = match batch {
        Batch::Narrow => {
            let started = Instant::now();
            sql::narrow_reset(pool, n).await?;
            f64::from(n) / started.elapsed().as_secs_f64()
        }
        Batch::Jobq { .. } => {
            sql::bench_reset(pool).await?;
            fill(pool, n).await?
        }
    };
    let (q0, w0) = sql::server_counters(pool).await?;
    let started = Instant::now();
    let lock = match mode {
        ClaimMode::NamedLock => Some("jobq-bench-ceiling".to_owned()),
        ClaimMode::SkipLocked => None,
    };
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (pool, lock) = (pool.clone(), lock.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut total = 0usize;
            loop {
                let got = match batch {
                    Batch::Jobq { history } => {
                        sql::ceiling_batch(&mut conn, QUEUE, 100, lock.as_deref(), history).await?
                    }
                    Batch::Narrow => sql::narrow_batch(&mut conn, 100).await?,
                };
                if got == 0 {
                    return Ok::<usize, sqlx::Error>(total);
                }
                total += got;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let (q1, w1) = sql::server_counters(pool).await?;
    if total != n as usize {
        bail!("ceiling processed {total} of {n} jobs");
    }
    Ok(Report {
        scenario: "ceiling".into(),
        claim_mode: mode.to_string(),
        processes: 1,
        concurrency: connections,
        jobs: n,
        enqueue_jobs_per_s: Some(enqueue),
        jobs_per_s: f64::from(n) / secs,
        statements_per_job: per_job(q1 - q0, n),
        rows_written_per_job: per_job(w1 - w0, n),
        note: "minimal SQL, batches of 100, no history or tokens".into(),
        ..Default::default()
    })
}

pub(super) async fn steady(
    pool: &MySqlPool,
    url: &str,
    rate: u32,
    duration: Duration,
    mode: ClaimMode,
    processes: u32,
    concurrency: u32,
) -> Result<Report> {
    sql::bench_reset(pool).await?;
    let mut workers = Workers::spawn(url, mode, processes, concurrency)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (q0, w0) = sql::server_counters(pool).await?;
    let producer = jobq_worker::Producer::new(pool.clone());
    let started = Instant::now();
    let mut inserted: u32 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u32;
        if due > inserted {
            let jobs = (inserted..due)
                .map(|_| NewJob::json("noop", json!({})).queue(QUEUE))
                .collect();
            producer.enqueue_many(jobs).await?;
            inserted = due;
        }
        eprint!("\r  steady: {inserted} inserted   ");
    }
    wait_completed(pool, inserted, &mut workers).await?;
    let (q1, w1) = sql::server_counters(pool).await?;
    workers.stop()?;
    let mut lat = sql::pickup_latencies(pool, QUEUE).await?;
    lat.sort_unstable();
    let (span, claims) = sql::run_span(pool, QUEUE, 0).await?;
    Ok(Report {
        scenario: "steady".into(),
        claim_mode: mode.to_string(),
        processes,
        concurrency,
        jobs: inserted,
        jobs_per_s: f64::from(inserted) / span.max(1e-6),
        pickup_p50_ms: Some(percentile(&lat, 0.50)),
        pickup_p95_ms: Some(percentile(&lat, 0.95)),
        pickup_p99_ms: Some(percentile(&lat, 0.99)),
        claims_per_job: Some(claims as f64 / f64::from(inserted.max(1))),
        statements_per_job: per_job(q1 - q0, inserted.max(1)),
        rows_written_per_job: per_job(w1 - w0, inserted.max(1)),
        note: format!("producer at {rate} jobs/s for {duration:?}"),
        ..Default::default()
    })
}

/// Mean time of one claim transaction of up to 100 jobs in a real `jobq work` process with
/// 100 slots, over the claims that drain the first 4,000 jobs: read from its own
/// `jobq_claim_duration_seconds` histogram, so it times exactly the runtime's claim.
pub(super) async fn time_claims(pool: &MySqlPool, url: &str) -> Result<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut workers = Workers::spawn_with(
        url,
        ClaimMode::SkipLocked,
        1,
        100,
        &[
            ("JOBQ_METRICS__LISTEN", listen.as_str()),
            ("JOBQ_WORKER__MAX_BATCH", "100"),
        ],
    )?;
    wait_completed(pool, 4_000, &mut workers).await?;
    let text = http_get(port, "/metrics").await?;
    workers.stop()?;
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("queue=\"{QUEUE}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} missing from the worker's /metrics"))
    };
    let sum = value("jobq_claim_duration_seconds_sum")?;
    let count = value("jobq_claim_duration_seconds_count")?;
    if count < 1.0 {
        bail!("the worker made no claim");
    }
    Ok(sum / count * 1000.0)
}

/// A GET on 127.0.0.1:`port`; the body.
pub(super) async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

pub(super) async fn scaling(pool: &MySqlPool, url: &str, json: bool) -> Result<()> {
    let mut out = BTreeMap::new();
    sql::bench_reset(pool).await?;
    fill(pool, 10_000).await?;
    out.insert("10k waiting", time_claims(pool, url).await?);
    sql::bench_reset(pool).await?;
    eprintln!("  inserting 1,000,000 jobs…");
    fill(pool, 1_000_000).await?;
    out.insert("1M waiting", time_claims(pool, url).await?);
    eprintln!("  finishing them…");
    sql::bench_finish_all(pool, QUEUE).await?;
    fill(pool, 10_000).await?;
    out.insert("10k waiting + 1M completed", time_claims(pool, url).await?);
    if json {
        outln!(
            "{}",
            serde_json::to_string(&json!({ "scenario": "scaling", "mean_claim_ms": out }))?
        );
    } else {
        outln!("| table | mean claim of up to 100 in a worker (ms) |\n|---|---:|");
        for (k, v) in out {
            outln!("| {k} | {v:.2} |");
        }
    }
    Ok(())
}
