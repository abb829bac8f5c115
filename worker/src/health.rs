//! [`Health`]: whether a running [`crate::Worker`] can still do its work, for readiness probes;
//! and the supervision of its background loops, so a loop that panics stops the worker loudly
//! instead of leaving a process that looks alive and does nothing.
//!
//! A background loop (a queue's claimer, the completer, the heartbeat, maintenance) only ends
//! when asked to. If one panics, the panic is caught where the loop runs, the worker is marked
//! dead, and [`crate::Worker::run`] stops gracefully (running jobs get `shutdown_timeout`) and
//! returns [`crate::Error::LoopDied`]: `jobq work` exits non-zero and `/readyz` answers 503.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use jobq_producer::QueueName;
use tokio_util::sync::CancellationToken;

/// A background loop of a worker.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loop {
    /// The claimer of one queue.
    Claimer(QueueName),
    /// The completer (batched completions).
    Completer,
    /// The heartbeat (leases and the worker row).
    Heartbeat,
    /// Maintenance (leader election, rescue, scheduling, retention).
    Maintenance,
    /// The key promoter (waiting jobs of concurrency keys whose slot freed).
    Promoter,
}

impl fmt::Display for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loop::Claimer(q) => write!(f, "claimer of queue {q}"),
            Loop::Completer => f.write_str("completer"),
            Loop::Heartbeat => f.write_str("heartbeat"),
            Loop::Maintenance => f.write_str("maintenance"),
            Loop::Promoter => f.write_str("key promoter"),
        }
    }
}

/// What [`Health::status`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not started yet, or running with every loop alive.
    Running,
    /// Stopping (asked to, drained, or because a loop died).
    Stopping,
    /// A background loop panicked; the worker is stopping and will return an error.
    Dead(Loop),
}

/// A cheap, cloneable view of one worker's health, from [`crate::Worker::health`].
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    dead: Mutex<Option<Loop>>,
    died: CancellationToken,
    stopping: AtomicBool,
}

impl Health {
    /// The worker's status now.
    pub fn status(&self) -> Status {
        if let Some(l) = self.dead() {
            return Status::Dead(l);
        }
        if self.inner.stopping.load(Ordering::Relaxed) {
            Status::Stopping
        } else {
            Status::Running
        }
    }

    /// The loop that died, if one did (the first one).
    pub(crate) fn dead(&self) -> Option<Loop> {
        self.inner.dead.lock().expect("never poisoned").clone()
    }

    /// Resolves once a loop has died.
    pub(crate) async fn died(&self) {
        self.inner.died.cancelled().await
    }

    pub(crate) fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    fn mark_dead(&self, which: Loop) {
        let mut dead = self.inner.dead.lock().expect("never poisoned");
        if dead.is_none() {
            *dead = Some(which);
        }
        self.inner.died.cancel();
    }
}

/// Runs the background loop `which`; if it panics, marks the worker dead. The panic itself is
/// reported by the panic hook (as a runtime bug, with its location).
pub(crate) async fn supervise<F: Future<Output = ()>>(health: Health, which: Loop, body: F) {
    if AssertUnwindSafe(body).catch_unwind().await.is_err() {
        tracing::error!(r#loop = %which, "a background loop panicked; stopping the worker");
        health.mark_dead(which);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_loop_marks_the_worker_dead() {
        let h = Health::default();
        assert_eq!(h.status(), Status::Running);
        supervise(h.clone(), Loop::Heartbeat, async {}).await;
        assert_eq!(h.status(), Status::Running, "a loop that ends is not dead");
        supervise(h.clone(), Loop::Completer, async { panic!("boom") }).await;
        h.died().await;
        supervise(h.clone(), Loop::Heartbeat, async { panic!("second") }).await;
        assert_eq!(
            h.status(),
            Status::Dead(Loop::Completer),
            "the first death is kept"
        );
        let q = QueueName::new("mail").unwrap();
        assert_eq!(Loop::Claimer(q).to_string(), "claimer of queue mail");
    }
}
