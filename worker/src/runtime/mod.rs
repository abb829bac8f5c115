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

use jobq_config::{Config, RunPolicy};
use jobq_producer::{KindName, QueueName};
use sqlx::MySqlPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::ids::WorkerId;
use crate::registry::Registry;

/// A queue worked by this process: its name and its two semaphores.
///
/// `sem` counts claimed jobs: one permit per job from its claim until its outcome is written,
/// `concurrency + prefetch` in all, so the process never holds more `running` rows of the queue
/// than that. `run` counts handlers running: `concurrency` permits, taken by a claimed job when
/// it starts and given back when its handler ends. Without prefetch every claimed job finds a
/// `run` permit at once; with it, the jobs claimed ahead wait for one (`executor.rs`).
pub(crate) struct QueueSlots {
    pub(crate) name: QueueName,
    pub(crate) sem: Arc<Semaphore>,
    pub(crate) run: Arc<Semaphore>,
    /// `sem`'s permits: concurrency + prefetch.
    pub(crate) total: u32,
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
    pub(crate) slots: Vec<QueueSlots>,
    /// Maintenance's sweeps, resumed by each pass where the last one stopped: retention per
    /// final state (completed, discarded, cancelled) and the waiting-key sweep.
    pub(crate) prune_cursors: std::sync::Mutex<[crate::store::PruneCursor; 3]>,
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
            .map(|q| QueueSlots {
                name: q.name.clone(),
                sem: Arc::new(Semaphore::new((q.concurrency + q.prefetch) as usize)),
                run: Arc::new(Semaphore::new(q.concurrency as usize)),
                total: q.concurrency + q.prefetch,
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
            slots,
            prune_cursors: Default::default(),
            key_sweep: Default::default(),
            repair_cursor: Default::default(),
            #[cfg(test)]
            lose_claim_answers: Default::default(),
            policies,
        }
    }

    /// The handler slots of `queue` (see [`QueueSlots`]).
    pub(crate) fn run_slots(&self, queue: &QueueName) -> Arc<Semaphore> {
        self.slots
            .iter()
            .find(|q| &q.name == queue)
            .map(|q| q.run.clone())
            .expect("jobs only come from the queues this process works")
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
