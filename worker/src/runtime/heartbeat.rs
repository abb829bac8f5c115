//! The heartbeat: once per `heartbeat_interval`, one statement extends the leases of every job
//! this process runs, and the worker row is beaten (re-created if maintenance pruned it during
//! an outage). Jobs whose lease could not be extended because the server says they are no
//! longer ours are cancelled through the in-flight table; deadlines themselves are enforced by
//! each job's own timer there, not here.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Shared;
use crate::ids::hostname;
use crate::metrics;
use crate::store::{self, WorkerRow};

/// Runs until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.worker.heartbeat_interval;
    let lease = shared.config.worker.lease_ttl;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for q in &shared.slots {
            let free = q.sem.available_permits();
            metrics::slots(&q.name, q.total as usize - free, free);
        }
        let fences = shared.in_flight.fences();
        let sent = Instant::now();
        // Bounded: a stalled database must not hold the heartbeat (the jobs' own lease timers
        // stop their handlers in any case).
        let result = tokio::time::timeout(lease / 2, async {
            let lost = if fences.is_empty() {
                Vec::new()
            } else {
                store::extend_leases(&shared.pool, &fences, lease).await?
            };
            if !store::beat_worker(&shared.pool, &shared.id).await? {
                register(&shared).await?;
            }
            Ok::<_, sqlx::Error>(lost)
        })
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::Protocol("heartbeat timed out".into())));
        match result {
            Ok(lost) => {
                metrics::heartbeat(true);
                shared.in_flight.extend(&fences, sent + lease);
                for f in lost {
                    shared.in_flight.lose(f);
                }
            }
            Err(e) => {
                metrics::heartbeat(false);
                metrics::db_error(&e, false);
                warn!(error = %e, "heartbeat failed; leases not extended");
            }
        }
    }
}

/// Inserts or refreshes this process's worker row.
pub(crate) async fn register(shared: &Shared) -> Result<(), sqlx::Error> {
    let queues = shared
        .slots
        .iter()
        .map(|q| q.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    store::register_worker(
        &shared.pool,
        &WorkerRow {
            id: &shared.id,
            host: &hostname(),
            pid: std::process::id(),
            queues: &queues,
        },
    )
    .await
}
