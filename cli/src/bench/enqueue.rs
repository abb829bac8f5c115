//! `single-enqueue`: N jobs enqueued one call each (`Producer::enqueue`) by C concurrent tasks
//! sharing one producer over a pool of 10 connections, with group commit off, then on, in the
//! same invocation: only that ratio means anything on a machine whose speed drifts.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::*;

/// The pool the producers share: a typical application pool.
const POOL: u32 = 10;

/// One run with group commit off and one with it on; `pool` is the bench database's.
pub(super) async fn single(
    settings: &jobq_config::Settings,
    pool: &MySqlPool,
    jobs: u32,
    tasks: u32,
) -> Result<Vec<Report>> {
    let mut s = settings.clone();
    s.database.max_connections = POOL;
    let config = s.validate()?;
    let mut out = Vec::new();
    for grouped in [false, true] {
        sql::bench_reset(pool).await?;
        let own = jobq_worker::connect(&config).await?;
        let producer = jobq_worker::Producer::new(own.clone()).group_commit(grouped);
        let (q0, w0) = sql::server_counters(pool).await?;
        let started = Instant::now();
        let next = Arc::new(AtomicU32::new(0));
        let mut handles = Vec::new();
        for _ in 0..tasks.max(1) {
            let (producer, next) = (producer.clone(), next.clone());
            handles.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    producer
                        .enqueue(NewJob::json("noop", json!({})).queue(QUEUE))
                        .await?;
                }
                Ok::<(), jobq_worker::Error>(())
            }));
        }
        for h in handles {
            h.await??;
        }
        let rate = f64::from(jobs) / started.elapsed().as_secs_f64();
        let (q1, w1) = sql::server_counters(pool).await?;
        own.close().await;
        out.push(Report {
            scenario: if grouped {
                "single-enqueue+group".into()
            } else {
                "single-enqueue".into()
            },
            claim_mode: "-".into(),
            processes: 1,
            concurrency: tasks,
            jobs,
            enqueue_jobs_per_s: Some(rate),
            jobs_per_s: rate,
            statements_per_job: per_job(q1.saturating_sub(q0), jobs),
            rows_written_per_job: per_job(w1.saturating_sub(w0), jobs),
            note: format!("{tasks} tasks, one producer, a pool of {POOL}"),
            ..Default::default()
        });
    }
    Ok(out)
}
