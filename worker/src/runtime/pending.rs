//! Successes waiting for their completion to be written, per queue.
//!
//! A success keeps its slot until its completion is committed, so a process never has more
//! `running` rows than slots. Two writers take from here:
//!
//! - the queue's **claimer**, which completes them in its next claim transaction and fills
//!   the same slots with new jobs: one commit for both, and a claim sized to the slots those
//!   completions free (without this a busy queue alternates "write completions, then claim",
//!   half its slots idle waiting for the first);
//! - the **completer** (`recorder.rs`), for successes no claim picked up within
//!   [`LINGER`]: the claimer is waiting on a named lock, retrying an error, or stopped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobq_producer::{KindName, QueueName};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::recorder::{count_written, Completion};
use super::Shared;
use crate::model::Fence;

/// How long a success waits for its queue's claimer before the completer writes it.
pub(crate) const LINGER: Duration = Duration::from_millis(5);

/// One queue's waiting successes and the claimer's wake-up.
#[derive(Default)]
struct QueuePending {
    waiting: Mutex<Vec<Completion>>,
    ready: Arc<Notify>,
}

/// Successes a claim carries. Dropped without [`Carried::written`], they are put back.
pub(crate) struct Carried<'a> {
    pending: &'a Pending,
    items: Vec<Completion>,
}

impl Carried<'_> {
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// The fences to complete.
    pub(crate) fn fences(&self) -> Vec<Fence> {
        self.items.iter().map(|c| c.fence).collect()
    }

    /// The results (job id, JSON text) of the completions that have one.
    pub(crate) fn results(&self) -> Vec<(u64, String)> {
        self.items
            .iter()
            .filter_map(|c| c.result.clone().map(|r| (c.fence.id, r)))
            .collect()
    }

    /// The concurrency keys the completions free, each with the highest key limit of their
    /// kinds (`limit`): the claim promotes their waiting jobs.
    pub(crate) fn keys(&self, limit: impl Fn(&KindName) -> u32) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        for c in &self.items {
            if let Some(k) = &c.key {
                let l = limit(&c.kind);
                let e = out.entry(k.clone()).or_insert(l);
                *e = (*e).max(l);
            }
        }
        out
    }

    /// The claim's transaction committed them (`done` were still ours; the others had been
    /// taken back) and promoted the waiting jobs of the keys in `promoted`: counted, forgotten
    /// (the other keys go to the key promoter), and their slots returned for the jobs just
    /// claimed.
    pub(crate) fn written(
        mut self,
        shared: &Shared,
        done: u64,
        promoted: &std::collections::BTreeSet<String>,
    ) -> Vec<OwnedSemaphorePermit> {
        let items = std::mem::take(&mut self.items);
        count_written(shared, &items, done);
        items
            .into_iter()
            .map(|c| {
                match &c.key {
                    Some(k) if promoted.contains(k) => shared.in_flight.settle(c.fence),
                    _ => shared.in_flight.remove(c.fence),
                }
                c.permit
            })
            .collect()
    }
}

impl Drop for Carried<'_> {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            self.pending.put_back(std::mem::take(&mut self.items));
        }
    }
}

/// The waiting successes of every queue this process works.
pub(crate) struct Pending {
    queues: HashMap<QueueName, QueuePending>,
    /// Wakes the completer.
    any: Notify,
}

impl Pending {
    pub(crate) fn new<'a>(queues: impl Iterator<Item = &'a QueueName>) -> Pending {
        Pending {
            queues: queues
                .map(|q| (q.clone(), QueuePending::default()))
                .collect(),
            any: Notify::new(),
        }
    }

    fn queue(&self, queue: &QueueName) -> &QueuePending {
        self.queues
            .get(queue)
            .expect("completions only come from the queues this process works")
    }

    /// Adds one success and wakes its claimer and the completer.
    pub(crate) fn push(&self, c: Completion) {
        let q = self.queue(&c.queue);
        q.waiting.lock().expect("never poisoned").push(c);
        q.ready.notify_one();
        self.any.notify_one();
    }

    /// Returns successes a writer took but did not write (its transaction failed).
    pub(crate) fn put_back(&self, cs: Vec<Completion>) {
        for c in cs {
            self.queue(&c.queue)
                .waiting
                .lock()
                .expect("never poisoned")
                .push(c);
        }
        self.any.notify_one();
    }

    /// How many successes of `queue` are waiting.
    pub(crate) fn len(&self, queue: &QueueName) -> usize {
        self.queue(queue)
            .waiting
            .lock()
            .expect("never poisoned")
            .len()
    }

    /// Takes up to `max` waiting successes of `queue`, to write in a claim's transaction. What
    /// the claim does not account for (it failed, or the claimer panicked) goes back when the
    /// guard drops.
    pub(crate) fn take(&self, queue: &QueueName, max: usize) -> Carried<'_> {
        let mut w = self.queue(queue).waiting.lock().expect("never poisoned");
        let n = w.len().min(max);
        Carried {
            pending: self,
            items: w.drain(..n).collect(),
        }
    }

    /// Takes up to `max` waiting successes of any queue.
    pub(crate) fn take_any(&self, max: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        for q in self.queues.values() {
            let mut w = q.waiting.lock().expect("never poisoned");
            let n = w.len().min(max - out.len());
            out.extend(w.drain(..n));
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// Whether nothing is waiting in any queue.
    pub(crate) fn is_empty(&self) -> bool {
        self.queues
            .values()
            .all(|q| q.waiting.lock().expect("never poisoned").is_empty())
    }

    /// The claimer's wake-up of `queue`: notified on every success pushed.
    pub(crate) fn ready(&self, queue: &QueueName) -> Arc<Notify> {
        self.queue(queue).ready.clone()
    }

    /// Waits until a success is pushed (or was pushed since the last wait).
    pub(crate) async fn wait_any(&self) {
        self.any.notified().await;
    }
}
