//! [`Worker`]: wires the runtime's parts together and owns the stop phases.
//!
//! A run goes through [`Phase`]s in order. `Running`: claimers feed the slots. `Draining`
//! (first stop request, or nothing left in drain mode): claimers stop, running jobs get
//! `shutdown_timeout` to finish. `Releasing`: what still runs is cancelled and put back as
//! `available`. `Flushing`: batched completions are written while the heartbeat still keeps
//! their leases. Then the background tasks stop and the worker row is removed. Releasing and
//! Flushing are bounded by `lease_ttl` each, so a graceful stop takes at most
//! `shutdown_timeout` + 2 × `lease_ttl` whatever the database does. An immediate
//! stop request in any phase ends the run at once: every handler is cancelled and its job is
//! left to be rescued when its lease expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jobq_config::{ClaimMode, Config};
use jobq_producer::QueueName;
use sqlx::MySqlPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::db;
use crate::error::Result;
use crate::ids::WorkerId;
use crate::metrics;
use crate::registry::Registry;
use crate::runtime::{claimer, heartbeat, maintenance, recorder, Shared};
use crate::shutdown::{ShutdownSignal, StopLevel, Stopped};
use crate::store;

/// The stop phases of a run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
    Releasing,
    Flushing,
}

/// A worker process: claims jobs from its queues and runs them with the registered handlers.
pub struct Worker {
    pool: MySqlPool,
    registry: Registry,
    config: Config,
    id: WorkerId,
    drain: bool,
}

impl Worker {
    /// A worker over `pool` (see [`crate::connect`]) running `registry`'s handlers with the
    /// validated `config` (queues, concurrency, claim modes, timings).
    pub fn new(pool: MySqlPool, registry: Registry, config: &Config) -> Self {
        Worker {
            pool,
            registry,
            config: config.clone(),
            id: WorkerId::generate(),
            drain: false,
        }
    }

    /// Stop by itself once its queues hold no `available`, `running` or `retryable` job of a
    /// registered kind (`scheduled` jobs are not waited for). Default off.
    pub fn drain(mut self, drain: bool) -> Self {
        self.drain = drain;
        self
    }

    /// This process's worker id (`jobq_workers.id`, `jobq_jobs.worker_id`).
    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    /// Runs until `signal` asks it to stop (or, with [`Worker::drain`], until no work is left).
    ///
    /// Fails before claiming anything if the server cannot run the configured claim modes or
    /// the schema is not migrated. Database errors while running are logged, counted and
    /// retried with backoff; they never end the run.
    pub async fn run(self, mut signal: ShutdownSignal) -> Result<Stopped> {
        let info = db::detect(&self.pool).await?;
        info.check(self.config.worker_queues().iter().map(|q| q.claim_mode))?;
        db::check_migrated(&self.pool).await?;
        let shared = Arc::new(Shared::new(self.pool, self.registry, self.config, self.id));
        heartbeat::register(&shared).await?;
        let queues = shared.config.worker_queues().to_vec();
        let names: Vec<QueueName> = queues.iter().map(|q| q.name.clone()).collect();
        info!(worker = %shared.id, server = %info.version_string, queues = ?names,
              kinds = ?shared.kinds, "worker started");
        let named: Vec<QueueName> = queues
            .iter()
            .filter(|q| q.claim_mode == ClaimMode::NamedLock)
            .map(|q| q.name.clone())
            .collect();
        metrics::init_series(&names, &named, &shared.kinds);

        // Same-process producers wake the claimer of a queue at once.
        let wakers: Arc<HashMap<QueueName, Arc<Notify>>> = Arc::new(
            names
                .iter()
                .map(|q| (q.clone(), Arc::new(Notify::new())))
                .collect(),
        );
        let w = wakers.clone();
        let _wake_subscription = jobq_producer::subscribe(move |queue| {
            if let Some(n) = w.get(queue) {
                n.notify_one();
            }
        });

        let stop_claiming = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let jobs = TaskTracker::new();
        let claimers = TaskTracker::new();
        for (q, slots) in queues.iter().zip(&shared.slots) {
            claimers.spawn(claimer::run(
                shared.clone(),
                q.clone(),
                slots.sem.clone(),
                stop_claiming.clone(),
                jobs.clone(),
                wakers[&q.name].clone(),
            ));
        }
        claimers.close();
        // The completer has its own stop: it must flush while the heartbeat still keeps the
        // leases of the jobs it is completing.
        let stop_completer = CancellationToken::new();
        let mut completer =
            tokio::spawn(recorder::completer(shared.clone(), stop_completer.clone()));
        let heartbeat = tokio::spawn(heartbeat::run(shared.clone(), stop_background.clone()));
        let maintenance = tokio::spawn(maintenance::run(shared.clone(), stop_background.clone()));
        let background = [
            completer.abort_handle(),
            heartbeat.abort_handle(),
            maintenance.abort_handle(),
        ];
        let immediate = |phase: Phase| {
            stop_claiming.cancel();
            for t in &background {
                t.abort();
            }
            let left = shared.in_flight.cancel_all();
            warn!(worker = %shared.id, ?phase, jobs = left,
                  "stopped at once; running jobs will be rescued when their leases expire");
            Ok(Stopped::Immediate(left))
        };

        // Running: until asked to stop, or drained.
        let mut phase = Phase::Running;
        debug!(?phase, "claiming");
        let drained = tokio::select! {
            _ = signal.at_least(StopLevel::Graceful) => false,
            _ = wait_drained(&shared, &names), if self.drain => true,
        };
        info!(worker = %shared.id, drained, "stopping: no new claims");

        // Draining: no new claims; running jobs go on for up to shutdown_timeout.
        phase = Phase::Draining;
        stop_claiming.cancel();
        jobs.close();
        let timeout = shared.config.worker.shutdown_timeout;
        let bound = shared.config.worker.lease_ttl;
        let finished = tokio::select! {
            _ = claimers.wait() => {
                tokio::select! {
                    _ = jobs.wait() => true,
                    _ = tokio::time::sleep(timeout) => false,
                    _ = signal.at_least(StopLevel::Immediate) => return immediate(phase),
                }
            }
            _ = signal.at_least(StopLevel::Immediate) => return immediate(phase),
        };
        if !finished {
            // Releasing: cancel what is still running and put it back.
            phase = Phase::Releasing;
            warn!(worker = %shared.id, jobs = shared.in_flight.len(),
                  "shutdown_timeout passed; cancelling and releasing running jobs");
            shared.release.cancel();
            // Each release is written within the write budget (lease_ttl); this bound only
            // matters if a task does not end at all.
            tokio::select! {
                _ = jobs.wait() => {}
                _ = tokio::time::sleep(bound) => {
                    let left = shared.in_flight.cancel_all();
                    warn!(jobs = left, "jobs still running after their release; leaving them to the rescue path");
                }
                _ = signal.at_least(StopLevel::Immediate) => return immediate(phase),
            }
        }
        // Flushing: completions are written (leases still beaten meanwhile), within the write
        // budget per batch; bounded as a whole too, whatever the database does.
        phase = Phase::Flushing;
        stop_completer.cancel();
        tokio::select! {
            _ = &mut completer => {}
            _ = tokio::time::sleep(bound) => {
                completer.abort();
                warn!("completions not flushed in time; those jobs are rescued when their leases expire");
            }
            _ = signal.at_least(StopLevel::Immediate) => return immediate(phase),
        }
        stop_background.cancel();
        let wind_up = async {
            let _ = heartbeat.await;
            let _ = maintenance.await;
            store::deregister_worker(&shared.pool, &shared.id).await
        };
        match tokio::time::timeout(bound, wind_up).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "could not remove the worker row; maintenance prunes it later")
            }
            Err(_) => {
                background.iter().for_each(|t| t.abort());
                warn!("background tasks did not stop in time; the worker row is pruned later")
            }
        }
        debug!(?phase, "background tasks stopped");
        info!(worker = %shared.id, "worker stopped");
        Ok(if drained {
            Stopped::Drained
        } else {
            Stopped::Graceful
        })
    }
}

/// Resolves once nothing runnable is left for this worker.
async fn wait_drained(shared: &Shared, queues: &[QueueName]) {
    let every = shared
        .config
        .worker_queues()
        .iter()
        .map(|q| q.poll_interval)
        .min()
        .unwrap_or(Duration::from_millis(100));
    let idle = || async {
        shared.in_flight.len() == 0
            && matches!(
                store::pending(&shared.pool, queues, &shared.kinds).await,
                Ok(0)
            )
    };
    loop {
        tokio::time::sleep(every).await;
        // Re-check after one more poll: a claim may be committing right now.
        if idle().await {
            tokio::time::sleep(every).await;
            if idle().await {
                return;
            }
        }
    }
}
