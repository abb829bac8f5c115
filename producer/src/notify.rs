//! In-process wake-ups: a worker running in the same process as a producer is told at once
//! that a queue got due jobs, instead of finding out at its next poll; and a
//! [`crate::Producer::wait_for`] in the same process as the worker running the job is told when
//! the job's outcome was written, instead of finding out at its next read.

use std::sync::{Arc, Mutex, Weak};

type Listener = dyn Fn(&str) + Send + Sync;

static LISTENERS: Mutex<Vec<Weak<Listener>>> = Mutex::new(Vec::new());

/// Keeps a listener registered; dropping it unregisters.
#[must_use = "the listener is removed when this is dropped"]
pub struct Subscription(#[allow(dead_code)] Arc<Listener>);

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

/// Calls `listener(queue)` whenever a producer in this process inserted jobs that are due now in
/// `queue` (after the commit for [`crate::Producer::enqueue`]/`enqueue_many`; at insert time for
/// the `_in` variants, whose commit is the caller's). Used by the worker runtime.
pub fn subscribe(listener: impl Fn(&str) + Send + Sync + 'static) -> Subscription {
    let arc: Arc<Listener> = Arc::new(listener);
    let mut list = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|w| w.strong_count() > 0);
    list.push(Arc::downgrade(&arc));
    Subscription(arc)
}

pub(crate) fn notify<'a>(queues: impl IntoIterator<Item = &'a str>) {
    let live: Vec<Arc<Listener>> = {
        let list = LISTENERS.lock().unwrap_or_else(|p| p.into_inner());
        if list.is_empty() {
            return;
        }
        list.iter().filter_map(Weak::upgrade).collect()
    };
    if live.is_empty() {
        return;
    }
    let mut seen: Vec<&str> = Vec::new();
    for q in queues {
        if !seen.contains(&q) {
            seen.push(q);
            for l in &live {
                l(q);
            }
        }
    }
}

/// Waiters of [`crate::Producer::wait_for`] in this process, by job id.
static WAITERS: Mutex<Vec<(u64, Weak<tokio::sync::Notify>)>> = Mutex::new(Vec::new());

/// Registers a waiter for job `id`: dropping the returned handle unregisters it.
pub(crate) fn watch(id: u64) -> Arc<tokio::sync::Notify> {
    let n = Arc::new(tokio::sync::Notify::new());
    let mut list = WAITERS.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|(_, w)| w.strong_count() > 0);
    list.push((id, Arc::downgrade(&n)));
    n
}

/// The worker runtime wrote an outcome of job `id` (it may be final): wakes its waiters in
/// this process, if any.
pub fn job_written(id: u64) {
    let list = WAITERS.lock().unwrap_or_else(|p| p.into_inner());
    for (_, w) in list.iter().filter(|(i, _)| *i == id) {
        if let Some(n) = w.upgrade() {
            n.notify_one();
        }
    }
}

/// Waits `pause` (at most until `deadline`) or until `written` wakes: what a waiter for a job
/// does between two reads. `false` when the deadline has passed (nothing waited).
pub(crate) async fn pause_until(
    deadline: tokio::time::Instant,
    pause: std::time::Duration,
    written: &tokio::sync::Notify,
) -> bool {
    let now = tokio::time::Instant::now();
    if now >= deadline {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(pause.min(deadline - now)) => {}
        _ = written.notified() => {}
    }
    true
}
