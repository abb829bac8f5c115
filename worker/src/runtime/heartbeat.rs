//! The heartbeat: once per `heartbeat_interval`, on a session of its own (never queued behind
//! handlers for a pooled connection), it extends the leases of every job this process runs and
//! beats the worker row (re-created if maintenance pruned it during an outage); hourly it notes
//! again which kinds this process handles (`jobq_kinds`).
//!
//! Each job is judged alone: a row another session holds locked is skipped, not waited for, so
//! one locked row costs only that job's lease push, never the others'. Jobs the server says are
//! no longer ours are cancelled through the in-flight table; deadlines themselves are enforced
//! by each job's own timer there, not here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Shared;
use crate::db;
use crate::ids::hostname;
use crate::metrics;
use crate::store::{self, Dedicated, WorkerRow};

/// Runs until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.worker().heartbeat_interval;
    let lease = shared.config.worker().lease_ttl;
    let mut session: Option<Dedicated> = None;
    let mut kinds_noted = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if kinds_noted.elapsed() >= KINDS_EVERY {
            // In a task of its own: the beat never waits for it.
            kinds_noted = Instant::now();
            let shared = shared.clone();
            tokio::spawn(async move { note_kinds(&shared).await });
        }
        for q in &shared.slots {
            // Jobs held (running, prefetched, or waiting for their completion to be written),
            // and handler slots free.
            let ahead = q.ahead(shared.uptime());
            metrics::slots(&q.name, q.held(), q.run.available_permits(), ahead);
        }
        let fences = shared.in_flight.fences();
        let sent = Instant::now();
        // Bounded: a stalled database must not hold the heartbeat (the jobs' own lease timers
        // stop their handlers in any case). A session cut off mid-statement is not reused.
        // Extensions that committed are applied even when the worker row's beat after them
        // fails or runs out of time.
        let mut beat = Beat::default();
        let cut_off = tokio::time::timeout(lease / 2, beat.run(&shared, &mut session, &fences))
            .await
            .is_err();
        if let Some(report) = beat.extended.take() {
            shared.in_flight.extend(&report.extended, sent + lease);
            for f in report.lost {
                shared.in_flight.lose(f);
            }
            for (f, by) in report.cancel {
                shared.in_flight.request_cancel(f, by);
            }
            if !report.skipped.is_empty() {
                debug!(
                    jobs = report.skipped.len(),
                    "leases skipped: rows locked by another session"
                );
            }
        }
        match (cut_off, beat.failed.take()) {
            (false, None) => metrics::heartbeat(true),
            (true, _) => {
                session = None;
                metrics::heartbeat(false);
                metrics::db_failure("deadline");
                warn!(budget = ?(lease / 2), "heartbeat got no answer in time; leases not extended beyond what committed");
            }
            (false, Some(e)) => {
                session = None;
                metrics::heartbeat(false);
                metrics::db_error(&e, false);
                warn!(error = %e, "heartbeat failed; leases not extended beyond what committed");
            }
        }
    }
}

/// One beat on the heartbeat's session (opened on first use and after any failure): what it
/// achieved is kept in the fields as it goes, so a beat cut off by its deadline still reports
/// the extensions that committed.
#[derive(Default)]
struct Beat {
    extended: Option<store::LeaseReport>,
    failed: Option<sqlx::Error>,
}

impl Beat {
    async fn run(
        &mut self,
        shared: &Shared,
        session: &mut Option<Dedicated>,
        fences: &[crate::model::Fence],
    ) {
        if let Err(e) = self.steps(shared, session, fences).await {
            self.failed = Some(e);
        }
    }

    async fn steps(
        &mut self,
        shared: &Shared,
        session: &mut Option<Dedicated>,
        fences: &[crate::model::Fence],
    ) -> Result<(), sqlx::Error> {
        if session.as_ref().is_none_or(Dedicated::is_broken) {
            let conn = db::dedicated(
                &shared.pool,
                shared.config.database().lock_wait_timeout_secs,
            )
            .await?;
            *session = Some(Dedicated::new(conn));
        }
        let s = session.as_mut().expect("opened above");
        if !fences.is_empty() {
            // Each chunk's extensions are recorded as it commits.
            let report = self.extended.get_or_insert_with(Default::default);
            store::extend_leases(s, fences, shared.config.worker().lease_ttl, report).await?;
        }
        if !store::beat_worker(s, &shared.id).await? {
            register(shared).await?;
        }
        Ok(())
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

/// Records the kinds this process handles on its queues (`jobq_kinds`, read by `jobq enqueue`
/// for its warning). Best effort: never fails the worker. Workers starting together write the
/// same rows (on Galera they then conflict at certification), so a rolled-back write is tried
/// again a few times after a short random pause; a write that still fails is logged and made
/// again within the hour.
pub(crate) async fn note_kinds(shared: &Shared) {
    let mut queues: Vec<_> = shared.slots.iter().map(|q| &q.name).collect();
    // One order for every worker: two writing the same rows lock them in the same order.
    queues.sort();
    for attempt in 1..=5 {
        match store::note_kinds(&shared.pool, &shared.kinds, &queues).await {
            Ok(()) => return,
            Err(e) if attempt < 5 && crate::error::is_transient(&e) => {
                let pause = rand::random::<u64>() % (50 * attempt);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => {
                debug!(error = %e, "could not note this worker's kinds; tried again within the hour");
                return;
            }
        }
    }
}

/// How often a running worker notes its kinds again: well within the week `jobq enqueue`
/// looks back.
const KINDS_EVERY: Duration = Duration::from_secs(3600);
