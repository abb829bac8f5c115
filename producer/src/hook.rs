//! [`EnqueueHook`]: what a [`crate::Producer`] calls after an enqueue of its own committed.
//! The test kit (`jobq_worker::testing::Inline`) hangs its inline and manual modes here; the
//! hook runs in the enqueuing task, before the enqueue returns.

use std::future::Future;
use std::pin::Pin;

use sqlx::MySqlPool;

use crate::JobId;

/// Called by a producer after an enqueue that committed in the producer's own transaction
/// ([`crate::Producer::enqueue`], `enqueue_many`, `insert`, `insert_many`,
/// `enqueue_workflow`, `enqueue_batch`) with the ids of the jobs it inserted (duplicates
/// left out) and the pool they were written to. Enqueues in the caller's connection
/// (`…_in`) do not call it: their jobs exist only once the caller commits.
pub trait EnqueueHook: Send + Sync + std::fmt::Debug {
    /// The jobs were inserted and committed.
    fn enqueued<'a>(
        &'a self,
        pool: &'a MySqlPool,
        ids: &'a [JobId],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}
