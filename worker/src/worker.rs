//! [`Worker`]: wires the runtime's parts together and owns the stop phases.
//!
//! A run goes through [`Phase`]s in order. `Running`: claimers feed the slots. `Draining`
//! (first stop request, or nothing left in drain mode): claimers stop, running jobs get
//! `shutdown_timeout` to finish. `Releasing`: what still runs is cancelled and put back as
//! `available`. `Flushing`: batched completions are written while the heartbeat still keeps
//! their leases. Then the background tasks stop and the worker row is removed. Releasing,
//! Flushing and that wind-up share one budget of 2 × `lease_ttl` (releasing and flushing at
//! most `lease_ttl` each), so a graceful stop takes at most `shutdown_timeout` + 2 ×
//! `lease_ttl` whatever the database does. An immediate
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
use tracing::{debug, error, info, warn};

use crate::db;
use crate::error::{Error, Result};
use crate::health::{supervise, Health, Loop};
use crate::ids::WorkerId;
use crate::metrics;
use crate::registry::Registry;
use crate::runtime::{claimer, heartbeat, keys, maintenance, recorder, Shared};
use crate::shutdown::{ShutdownSignal, StopLevel, Stopped};
use crate::store;

/// Starts background loops under supervision (see [`crate::health`]).
struct Supervisor {
    health: Health,
    /// Tests only: the loop to make panic as it starts.
    fault: Option<Loop>,
}

impl Supervisor {
    fn run<F>(&self, which: Loop, body: F) -> impl std::future::Future<Output = ()>
    where
        F: std::future::Future<Output = ()>,
    {
        let fault = self.fault.as_ref() == Some(&which);
        let name = which.clone();
        supervise(self.health.clone(), which, async move {
            if fault {
                panic!("injected fault in the {name}");
            }
            body.await
        })
    }
}

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
    health: Health,
    /// Tests only: a background loop made to panic as it starts.
    #[cfg(test)]
    fault: Option<Loop>,
    /// Tests only: how many claims' answers are lost after their COMMIT.
    #[cfg(test)]
    lose_claim_answers: u32,
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
            health: Health::default(),
            #[cfg(test)]
            fault: None,
            #[cfg(test)]
            lose_claim_answers: 0,
        }
    }

    /// A view of this worker's health for readiness probes: [`Status::Dead`] once a background
    /// loop has died, [`Status::Stopping`] once it stops.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Tests only: makes the background loop `which` panic as it starts.
    #[cfg(test)]
    pub(crate) fn inject_panic(mut self, which: Loop) -> Self {
        self.fault = Some(which);
        self
    }

    /// Tests only: the answers of the first `n` claims that take jobs are lost after COMMIT.
    #[cfg(test)]
    pub(crate) fn lose_claim_answers(mut self, n: u32) -> Self {
        self.lose_claim_answers = n;
        self
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
    /// retried with backoff; they never end the run. If a background loop panics, the worker
    /// stops gracefully and returns [`Error::LoopDied`].
    ///
    /// Queues on other servers (`[queues.NAME] database_url`) are worked by one run per server
    /// under this worker's id, each with its own pool, worker row, heartbeat and maintenance
    /// election on its server, stopping together (see [`Worker::run_servers`]).
    pub async fn run(self, signal: ShutdownSignal) -> Result<Stopped> {
        let id = self.id.clone();
        let stopped = self.run_all(signal).await;
        // Command handlers' programs still in their grace (an immediate stop, or a release
        // bounded by the stop) do not outlive the run.
        crate::command::kill_groups_of(id.as_str());
        stopped
    }

    async fn run_all(mut self, signal: ShutdownSignal) -> Result<Stopped> {
        for (kind, queue) in self
            .registry
            .unworked_defaults(&self.config.worker().queues)
        {
            warn!(
                %kind, %queue, worked = ?self.config.worker().queues,
                "kind {kind} goes to queue {queue} unless its enqueue names another, and this \
                 worker does not work {queue}: its jobs wait for a worker that does (add \
                 {queue} to worker.queues, or `jobq work --queues {queue},…`)"
            );
        }
        let (mut parts, skipped) = self.config.split_by_server();
        for name in skipped {
            info!(schedule = %name, "this process works no queue on the schedule's server; \
                  the processes working that server enqueue it");
        }
        if parts.len() == 1 && parts[0].database_url() == self.config.database_url() {
            self.config = parts.remove(0);
            let info = preflight(&self.pool, &self.config).await?;
            return self.run_server(signal, info).await;
        }
        self.run_servers(parts, signal).await
    }

    /// One run per server of `parts`, each server checked before any starts: the first to
    /// fail (or to lose a loop) stops the others gracefully; a stop asked of this worker is
    /// passed on to all of them. With [`Worker::drain`], each server's run ends once its own
    /// queues are drained.
    async fn run_servers(self, parts: Vec<Config>, mut signal: ShutdownSignal) -> Result<Stopped> {
        let mut workers = Vec::with_capacity(parts.len());
        // Pools this run opened (for the other servers) are closed when it ends, whatever the
        // way: the caller's own pool is the caller's to close.
        let mut opened = Vec::new();
        let mut panicked = None;
        let result = async {
            for part in parts {
                let pool = if part.database_url() == self.config.database_url() {
                    self.pool.clone()
                } else {
                    let pool = db::pool(&part).await?;
                    opened.push(pool.clone());
                    pool
                };
                let server = jobq_producer::server_name(part.database_url());
                let info = preflight(&pool, &part).await.map_err(|e| {
                    error!(%server, error = %e, "this server cannot be worked; nothing was claimed on any server");
                    e
                })?;
                info!(%server, queues = ?part.worker().queues, "working queues on this server");
                workers.push((
                    info,
                    Worker {
                        pool,
                        registry: self.registry.clone(),
                        config: part,
                        id: self.id.clone(),
                        drain: self.drain,
                        health: self.health.clone(),
                        #[cfg(test)]
                        fault: self.fault.clone(),
                        #[cfg(test)]
                        lose_claim_answers: self.lose_claim_answers,
                    },
                ));
            }
            let (inner, inner_signal) = crate::shutdown::Shutdown::new();
            let mut runs = tokio::task::JoinSet::new();
            for (info, w) in workers {
                runs.spawn(w.run_server(inner_signal.clone(), info));
            }
            let forward = inner.clone();
            let relay = tokio::spawn(async move {
                signal.at_least(StopLevel::Graceful).await;
                forward.stop();
                signal.at_least(StopLevel::Immediate).await;
                forward.kill();
            });
            let mut first_error = None;
            let mut left = 0;
            let mut drained = true;
            let mut immediate = false;
            while let Some(done) = runs.join_next().await {
                match done {
                    Ok(Ok(Stopped::Immediate(n))) => {
                        immediate = true;
                        left += n;
                    }
                    Ok(Ok(Stopped::Drained)) => {}
                    Ok(Ok(Stopped::Graceful)) => drained = false,
                    Ok(Err(e)) => {
                        error!(error = %e, "a server's run failed; stopping the others");
                        inner.stop();
                        first_error.get_or_insert(e);
                    }
                    Err(e) => {
                        error!(error = %e, "a server's run panicked; stopping the others");
                        inner.stop();
                        panicked.get_or_insert(e);
                    }
                }
            }
            relay.abort();
            match first_error {
                Some(e) => Err(e),
                None if immediate => Ok(Stopped::Immediate(left)),
                None if drained => Ok(Stopped::Drained),
                None => Ok(Stopped::Graceful),
            }
        }
        .await;
        // All at once, and briefly: connections still lent out (a task left running) are
        // closed when returned.
        let closing = futures::future::join_all(opened.iter().map(|p| p.close()));
        let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
        if let Some(p) = panicked {
            std::panic::resume_unwind(p.into_panic());
        }
        result
    }

    /// The run on one server, whose [`preflight`] answered `info`: [`Worker::run`] when every
    /// queue lives on `database_url`.
    async fn run_server(self, mut signal: ShutdownSignal, info: db::ServerInfo) -> Result<Stopped> {
        let sup = Supervisor {
            health: self.health.clone(),
            #[cfg(test)]
            fault: self.fault.clone(),
            #[cfg(not(test))]
            fault: None,
        };
        let health = self.health.clone();
        let shared = Arc::new(Shared::new(self.pool, self.registry, self.config, self.id));
        #[cfg(test)]
        shared
            .lose_claim_answers
            .store(self.lose_claim_answers, std::sync::atomic::Ordering::SeqCst);
        heartbeat::register(&shared).await?;
        heartbeat::note_kinds(&shared).await;
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

        let stop_claiming = shared.stopping.clone();
        let stop_background = CancellationToken::new();
        let jobs = TaskTracker::new();
        let claimers = TaskTracker::new();
        for (q, slots) in queues.iter().zip(&shared.slots) {
            let which = Loop::Claimer(q.name.clone());
            claimers.spawn(sup.run(
                which,
                claimer::run(
                    shared.clone(),
                    q.clone(),
                    slots.sem.clone(),
                    slots.run.clone(),
                    stop_claiming.clone(),
                    jobs.clone(),
                    wakers[&q.name].clone(),
                ),
            ));
        }
        claimers.close();
        // The completer has its own stop: it must flush while the heartbeat still keeps the
        // leases of the jobs it is completing.
        let stop_completer = CancellationToken::new();
        let mut completer = tokio::spawn(sup.run(
            Loop::Completer,
            recorder::completer(shared.clone(), stop_completer.clone()),
        ));
        let heartbeat = tokio::spawn(sup.run(
            Loop::Heartbeat,
            heartbeat::run(shared.clone(), stop_background.clone()),
        ));
        let maintenance = tokio::spawn(sup.run(
            Loop::Maintenance,
            maintenance::run(shared.clone(), stop_background.clone()),
        ));
        let promoter = tokio::spawn(sup.run(
            Loop::Promoter,
            keys::run(shared.clone(), stop_background.clone(), wakers.clone()),
        ));
        let background = [
            completer.abort_handle(),
            heartbeat.abort_handle(),
            maintenance.abort_handle(),
            promoter.abort_handle(),
        ];
        let immediate = |phase: Phase| {
            stop_claiming.cancel();
            for t in &background {
                t.abort();
            }
            let left = shared.in_flight.cancel_all();
            warn!(worker = %shared.id, ?phase, jobs = left,
                  "stopped at once; running jobs will be rescued when their leases expire");
            match health.dead() {
                Some(l) => Err(Error::LoopDied(l)),
                None => Ok(Stopped::Immediate(left)),
            }
        };

        // Running: until asked to stop, or drained.
        let mut phase = Phase::Running;
        debug!(?phase, "claiming");
        let drained = tokio::select! {
            _ = signal.at_least(StopLevel::Graceful) => false,
            _ = wait_drained(&shared, &names), if self.drain => true,
            _ = health.died() => false,
        };
        health.set_stopping();
        if let Some(l) = health.dead() {
            error!(worker = %shared.id, r#loop = %l, "a background loop died; stopping gracefully");
        }
        info!(worker = %shared.id, drained, "stopping: no new claims");

        // Draining: no new claims; running jobs go on for up to shutdown_timeout.
        phase = Phase::Draining;
        stop_claiming.cancel();
        jobs.close();
        let timeout = shared.config.worker().shutdown_timeout;
        let bound = shared.config.worker().lease_ttl;
        // Claimers first (a claim in flight may still start jobs), then the jobs, all within
        // shutdown_timeout: a claim round trip has no timeout of its own, so a claim that does
        // not answer must not hold the stop.
        let deadline = tokio::time::Instant::now() + timeout;
        let finished = tokio::select! {
            done = async {
                if tokio::time::timeout_at(deadline, claimers.wait()).await.is_err() {
                    warn!("a claimer did not stop within shutdown_timeout (a claim is not answering); going on");
                }
                tokio::time::timeout_at(deadline, jobs.wait()).await.is_ok()
            } => done,
            _ = signal.at_least(StopLevel::Immediate) => return immediate(phase),
        };
        // What follows (releasing, flushing, winding up) shares one budget: 2 × lease_ttl.
        let budget_end = tokio::time::Instant::now() + 2 * bound;
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
            _ = async {
                let _ = (&mut completer).await;
                // Normally nothing is left; if the completer died, write what it left here.
                recorder::flush(&shared).await;
            } => {}
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
            let _ = promoter.await;
            store::deregister_worker(&shared.pool, &shared.id).await
        };
        // Whatever the budget has left: normally most of it. With none left the row stays,
        // and maintenance prunes it once its heartbeat is old.
        match tokio::time::timeout_at(budget_end, wind_up).await {
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
        if let Some(l) = health.dead() {
            return Err(Error::LoopDied(l));
        }
        Ok(if drained {
            Stopped::Drained
        } else {
            Stopped::Graceful
        })
    }
}

/// What a run checks before it claims anything: the server runs the configured claim modes
/// (Galera detected and advised on), the schema is migrated, the producer limits fit.
async fn preflight(pool: &MySqlPool, config: &Config) -> Result<db::ServerInfo> {
    let info = db::detect(pool).await?;
    info.check(config.worker_queues().iter().map(|q| q.claim_mode))?;
    if info.galera {
        info!("Galera cluster detected (wsrep_on = ON): claims confirm their commit");
        for advice in db::galera_advice(config) {
            warn!("Galera: {advice}");
        }
    }
    db::check_migrated(pool).await?;
    // The server is known already: only its packet limit is asked for.
    let packet = db::max_allowed_packet(pool).await?;
    info.check_producer(config.producer(), packet)?;
    db::check_batches(config, packet)?;
    db::check_isolation(pool).await?;
    Ok(info)
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

#[cfg(test)]
mod tests;
