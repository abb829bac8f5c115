//! The key promoter: when a job with a concurrency key stops being this process's (its outcome
//! written), a slot of its key may be free, so the key's next `waiting` job is made `available`
//! (`store::promote_waiting`, under the key's lock) and the queue's claimer is woken. Keys
//! freed while a promotion runs are taken together on the next round.
//!
//! What this misses (a process killed between a job's end and its promotion, a rescued job, an
//! error here) maintenance finds on its next pass (`store::keys_to_promote`).

use std::collections::HashMap;
use std::sync::Arc;

use jobq_producer::QueueName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Shared;
use crate::machine::flow::to_promote;
use crate::metrics;
use crate::store;

/// Promotes waiting jobs of freed keys until `stop`; promotes what was freed before it last.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stop: CancellationToken,
    wakers: Arc<HashMap<QueueName, Arc<Notify>>>,
) {
    loop {
        let stopping = tokio::select! {
            _ = shared.in_flight.freed() => false,
            _ = stop.cancelled() => true,
        };
        for (queue, keys) in shared.in_flight.take_freed() {
            let floor = shared.config.key_limit_ceiling(&queue);
            match store::promote_waiting(&shared.pool, &queue, &keys, floor, to_promote).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics::unblocked(&queue, n);
                    if let Some(w) = wakers.get(&queue) {
                        w.notify_one();
                    }
                }
                Err(e) => {
                    metrics::db_error(&e, false);
                    warn!(queue = %queue, error = %e, keys = keys.len(),
                          "could not promote waiting jobs; maintenance will");
                }
            }
        }
        if stopping {
            break;
        }
    }
}
