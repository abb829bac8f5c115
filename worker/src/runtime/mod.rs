//! The machinery of a running worker, one responsibility per file. Private: the public face is
//! [`crate::Worker`], which wires these together in `worker.rs`.
//!
//! - [`claim`]: one claim, run: the store's read and write steps with `machine::claim`'s
//!   decisions between them;
//! - [`claimer`]: one task per queue, feeding that queue's slots (named-lock session in
//!   [`lock`]);
//! - [`executor`]: runs one attempt (decode, timeout, panic, cancellation) to an outcome;
//! - [`recorder`]: writes outcomes (batched completions, completion inside the handler's
//!   transaction, put-back);
//! - [`heartbeat`]: extends leases and beats the worker row;
//! - [`maintenance`]: the leader's promotion, rescue, retention and depth sampling;
//! - [`pending`]: successes waiting for their completion to be written;
//! - [`in_flight`]: the table of running jobs, owner of their deadlines and cancellation;
//! - [`keys`]: promotes the waiting jobs of a concurrency key when one of its jobs ends;
//! - [`retry`]: the database-retry policy all loops share;
//! - [`schedules`]: the leader's enqueueing of recurring jobs.

pub(crate) mod claim;
pub(crate) mod claimer;
pub(crate) mod executor;
pub(crate) mod heartbeat;
pub(crate) mod in_flight;
pub(crate) mod keys;
pub(crate) mod lock;
pub(crate) mod maintenance;
pub(crate) mod pending;
pub(crate) mod recorder;
pub(crate) mod retry;
pub(crate) mod schedules;

#[cfg(feature = "testing")]
pub(crate) use executor::{outcome_of, panic_message};
pub use maintenance::prune_finished;
pub(crate) use recorder::CARRIED_RESULT_BYTES;

use std::collections::HashMap;
use std::sync::Arc;

use jobq_config::{Config, Prefetch, RunPolicy};
use jobq_producer::{KindName, QueueName};
use sqlx::MySqlPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ids::WorkerId;
use crate::machine::prefetch::Pace;
use crate::registry::Registry;

/// A queue worked by this process: its name and its two semaphores.
///
/// `sem` counts claimed jobs: one permit per job from its claim until its outcome is written,
/// `concurrency + cap` in all, so the process never holds more `running` rows of the queue
/// than that (with `auto` the claimer keeps to `concurrency + ahead()`, below it). `run` counts handlers running: `concurrency` permits, taken by a claimed job when
/// it starts and given back when its handler ends. Without prefetch every claimed job finds a
/// `run` permit at once; with it, the jobs claimed ahead wait for one (`executor.rs`).
pub(crate) struct QueueSlots {
    pub(crate) name: QueueName,
    pub(crate) sem: Arc<Semaphore>,
    pub(crate) run: Arc<Semaphore>,
    /// `sem`'s permits: concurrency + the most jobs ever claimed ahead (`cap`).
    pub(crate) total: u32,
    /// The most jobs claimed ahead: the fixed prefetch, or [`auto_cap`] for `auto`.
    pub(crate) cap: u32,
    /// `Some` for `worker.prefetch = "auto"`: what decides how many jobs the next claim may
    /// take ahead (`machine::prefetch`), fed by the executor and the claimer.
    pub(crate) pace: Option<std::sync::Mutex<Pace>>,
    /// Permits the claimer's wait for a release holds while it waits (see [`Self::held`]).
    pub(crate) waiting_holds: std::sync::atomic::AtomicUsize,
}

impl QueueSlots {
    /// Jobs a claim at `now` (the process's uptime) may take ahead of free slots.
    pub(crate) fn ahead(&self, now: std::time::Duration) -> u32 {
        match &self.pace {
            None => self.cap,
            Some(p) => p
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ahead(now, self.cap),
        }
    }

    /// When a handler of the queue last ended (uptime), if the queue has a pace.
    pub(crate) fn last_end(&self) -> Option<std::time::Duration> {
        self.pace
            .as_ref()
            .and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).last_end())
    }

    /// Jobs held (claimed, outcome not yet written): the permits out of `sem`, less those the
    /// claimer's wait for a release holds meanwhile.
    pub(crate) fn held(&self) -> usize {
        (self.total as usize)
            .saturating_sub(self.sem.available_permits())
            .saturating_sub(
                self.waiting_holds
                    .load(std::sync::atomic::Ordering::Relaxed),
            )
    }

    /// Feeds the queue's pace, if it has one.
    pub(crate) fn pace(&self, f: impl FnOnce(&mut Pace)) {
        if let Some(p) = &self.pace {
            f(&mut p.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// The most jobs `auto` claims ahead: two claims' worth, so one claim can be on its way while
/// the jobs of the last one start, and never more than a thousand (the time bound of
/// `machine::prefetch` is usually the tighter one).
pub(crate) fn auto_cap(max_batch: u32) -> u32 {
    max_batch.saturating_mul(2).min(1000)
}

/// Everything the tasks of one worker share.
pub(crate) struct Shared {
    pub(crate) pool: MySqlPool,
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    pub(crate) id: WorkerId,
    /// The `server` label of the leader's metrics: this server's hosts and database.
    pub(crate) server: String,
    /// The registered kinds.
    pub(crate) kinds: Vec<KindName>,
    pub(crate) in_flight: in_flight::InFlight,
    /// Successes whose completion is not written yet.
    pub(crate) pending: pending::Pending,
    /// Writes the log lines and progress of every attempt of this process.
    pub(crate) journal: crate::journal::Writer,
    /// Fired when shutdown gives up waiting: running jobs are released.
    pub(crate) release: CancellationToken,
    /// Fired when the process stops claiming: prefetched jobs not yet started go back.
    pub(crate) stopping: CancellationToken,
    /// When this process started (see [`Shared::uptime`]).
    started: std::time::Instant,
    pub(crate) slots: Vec<QueueSlots>,
    /// Maintenance's sweeps, resumed by each pass where the last one stopped: retention per
    /// final state (completed, discarded, cancelled) and the waiting-key sweep.
    pub(crate) prune_cursors: std::sync::Mutex<[crate::store::PruneCursor; 3]>,
    /// Whether `jobq_transitions` is partitioned by time, as the leader last read it
    /// (retention then leaves history rows to the partitions): `None` until it has.
    pub(crate) history_by_time: std::sync::Mutex<Option<bool>>,
    pub(crate) key_sweep: std::sync::Mutex<crate::store::KeyCursor>,
    /// Where the repair pass of blocked jobs stands (`store::repair`).
    pub(crate) repair_cursor: std::sync::Mutex<crate::store::RepairCursor>,
    /// Tests only: the answers of this many claims that took jobs are "lost" (the claim
    /// committed, the claimer sees a connection error).
    #[cfg(test)]
    pub(crate) lose_claim_answers: std::sync::atomic::AtomicU32,
    /// Timeout and backoff per (queue, kind), resolved once at start.
    policies: HashMap<QueueName, HashMap<KindName, RunPolicy>>,
}

impl Shared {
    pub(crate) fn new(pool: MySqlPool, registry: Registry, config: Config, id: WorkerId) -> Shared {
        let kinds = registry.kind_names();
        let slots: Vec<QueueSlots> = config
            .worker_queues()
            .iter()
            .map(|q| {
                let (cap, pace) = match q.prefetch {
                    Prefetch::Fixed(n) => (n, None),
                    Prefetch::Auto => (auto_cap(q.max_batch), Some(Default::default())),
                };
                QueueSlots {
                    name: q.name.clone(),
                    sem: Arc::new(Semaphore::new((q.concurrency + cap) as usize)),
                    run: Arc::new(Semaphore::new(q.concurrency as usize)),
                    total: q.concurrency + cap,
                    cap,
                    pace,
                    waiting_holds: Default::default(),
                }
            })
            .collect();
        let policies = slots
            .iter()
            .map(|q| {
                let per_kind = kinds
                    .iter()
                    .map(|k| (k.clone(), config.run_policy(&q.name, k)))
                    .collect();
                (q.name.clone(), per_kind)
            })
            .collect();
        Shared {
            server: jobq_producer::server_name(config.database_url()),
            registry,
            config,
            id,
            kinds,
            in_flight: in_flight::InFlight::default(),
            pending: pending::Pending::new(slots.iter().map(|q| &q.name)),
            journal: crate::journal::Writer::new(pool.clone(), true),
            pool,
            release: CancellationToken::new(),
            stopping: CancellationToken::new(),
            started: std::time::Instant::now(),
            slots,
            prune_cursors: Default::default(),
            history_by_time: Default::default(),
            key_sweep: Default::default(),
            repair_cursor: Default::default(),
            #[cfg(test)]
            lose_claim_answers: Default::default(),
            policies,
        }
    }

    /// The slots of `queue` (see [`QueueSlots`]).
    pub(crate) fn queue_slots(&self, queue: &QueueName) -> &QueueSlots {
        self.slots
            .iter()
            .find(|q| &q.name == queue)
            .expect("jobs only come from the queues this process works")
    }

    /// The time since this process started, the clock of the queues' paces.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Timeout and backoff of a job of `kind` claimed from `queue`.
    pub(crate) fn policy(&self, queue: &QueueName, kind: &KindName) -> RunPolicy {
        self.policies
            .get(queue)
            .and_then(|p| p.get(kind))
            .copied()
            .unwrap_or_else(|| self.config.run_policy(queue, kind))
    }
}
