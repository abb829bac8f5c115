//! The in-flight table: every job this process is running, with its fence, its cancellation
//! token and its local lease deadline. It is the single owner of both: the heartbeat only
//! pushes deadlines or reports lost leases through it, each job's watch ([`InFlight::expiry`])
//! is the one place a deadline is enforced, and removing an entry is how a job stops being
//! this process's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use jobq_producer::QueueName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::model::{Fence, Token};

struct Entry {
    token: Token,
    cancel: CancellationToken,
    /// Local instant by which the lease surely expires unless extended. Never later than the
    /// server's expiry: it is computed from a time taken before the lease statement was sent.
    deadline: Instant,
    /// The job's queue and concurrency key, if it has one: when its outcome is written, the
    /// key has a free slot (see [`InFlight::take_freed`]).
    key: Option<(QueueName, String)>,
    /// Fired when an operator cancels the running job (after `by` is set).
    stop: CancellationToken,
    /// Who asked for the cancel.
    stop_by: Option<String>,
}

/// The tokens of a job just claimed: `cancel` is what its handler sees (`ctx.cancelled()`),
/// fired whenever the runtime gives up on it; `stop` fires only when an operator cancels it.
pub(crate) struct Tokens {
    pub(crate) cancel: CancellationToken,
    pub(crate) stop: CancellationToken,
}

/// Running jobs of this process. See the module docs.
#[derive(Default)]
pub(crate) struct InFlight {
    map: Mutex<HashMap<u64, Entry>>,
    /// Keys of jobs whose outcome was written, for the key promoter (`keys.rs`).
    freed: Mutex<Vec<(QueueName, String)>>,
    freed_ready: Notify,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding this lock is a runtime bug; the table stays usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a job just claimed, with the deadline of the lease its claim took. Returns the
    /// job's cancellation token (handed to its handler as `ctx.cancelled()`).
    pub(crate) fn insert(
        &self,
        fence: Fence,
        deadline: Instant,
        key: Option<(QueueName, String)>,
    ) -> Tokens {
        let cancel = CancellationToken::new();
        let stop = CancellationToken::new();
        self.lock().insert(
            fence.id,
            Entry {
                token: fence.token,
                cancel: cancel.clone(),
                deadline,
                key,
                stop: stop.clone(),
                stop_by: None,
            },
        );
        Tokens { cancel, stop }
    }

    /// An operator cancelled this running job: stop it (its handler is told, then dropped
    /// after the grace; see `executor.rs`).
    pub(crate) fn request_cancel(&self, fence: Fence, by: String) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(&fence.id).filter(|e| e.token == fence.token) {
            if e.stop_by.is_none() {
                e.stop_by = Some(by);
                e.stop.cancel();
                e.cancel.cancel();
            }
        }
    }

    /// Who cancelled the job, if an operator did.
    pub(crate) fn cancelled_by(&self, fence: Fence) -> Option<String> {
        self.lock()
            .get(&fence.id)
            .filter(|e| e.token == fence.token)
            .and_then(|e| e.stop_by.clone())
    }

    /// The job is no longer this process's (its outcome was written, or nothing will be). A
    /// job with a concurrency key leaves its key for the promoter.
    pub(crate) fn remove(&self, fence: Fence) {
        if let Some(key) = self.take(fence).and_then(|e| e.key) {
            self.push_freed([key]);
        }
    }

    /// Like [`remove`](InFlight::remove), for a job whose key's waiting jobs were already
    /// promoted with its outcome (a claim that carried its completion).
    pub(crate) fn settle(&self, fence: Fence) {
        self.take(fence);
    }

    /// Forgets the job if `fence` is still its current one; its outcome was written, so a
    /// `wait_for` in this process is woken.
    fn take(&self, fence: Fence) -> Option<Entry> {
        jobq_producer::job_written(fence.id);
        let mut map = self.lock();
        if map.get(&fence.id).is_some_and(|e| e.token == fence.token) {
            map.remove(&fence.id)
        } else {
            None
        }
    }

    /// Hands keys to the promoter without a job ending (a claim that sent jobs to `waiting`).
    pub(crate) fn free_keys(&self, queue: &QueueName, keys: BTreeSet<String>) {
        self.push_freed(keys.into_iter().map(|k| (queue.clone(), k)));
    }

    fn push_freed(&self, keys: impl IntoIterator<Item = (QueueName, String)>) {
        let mut freed = self.freed.lock().unwrap_or_else(|p| p.into_inner());
        let before = freed.len();
        freed.extend(keys);
        if freed.len() > before {
            drop(freed);
            self.freed_ready.notify_one();
        }
    }

    /// Waits until some job with a concurrency key was removed since the last
    /// [`take_freed`](InFlight::take_freed).
    pub(crate) async fn freed(&self) {
        self.freed_ready.notified().await
    }

    /// The keys of the jobs removed since the last call, by queue.
    pub(crate) fn take_freed(&self) -> BTreeMap<QueueName, BTreeSet<String>> {
        let keys = std::mem::take(&mut *self.freed.lock().unwrap_or_else(|p| p.into_inner()));
        let mut out: BTreeMap<QueueName, BTreeSet<String>> = BTreeMap::new();
        for (q, k) in keys {
            out.entry(q).or_default().insert(k);
        }
        out
    }

    /// Whether `fence` is still this process's.
    pub(crate) fn holds(&self, fence: Fence) -> bool {
        self.lock()
            .get(&fence.id)
            .is_some_and(|e| e.token == fence.token)
    }

    /// How many jobs are running.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Every running job's fence (for the heartbeat).
    pub(crate) fn fences(&self) -> Vec<Fence> {
        self.lock()
            .iter()
            .map(|(id, e)| Fence {
                id: *id,
                token: e.token,
            })
            .collect()
    }

    /// The heartbeat extended the leases of `fences` by a statement sent at some instant;
    /// `deadline` is that instant plus the lease.
    pub(crate) fn extend(&self, fences: &[Fence], deadline: Instant) {
        let mut map = self.lock();
        for f in fences {
            if let Some(e) = map.get_mut(&f.id).filter(|e| e.token == f.token) {
                e.deadline = e.deadline.max(deadline);
            }
        }
    }

    /// The server says this job's lease is no longer ours (rescued, or finished elsewhere):
    /// cancel its handler and forget it; nothing more may be written for it.
    pub(crate) fn lose(&self, fence: Fence) {
        let mut map = self.lock();
        if map.get(&fence.id).is_some_and(|e| e.token == fence.token) {
            if let Some(e) = map.remove(&fence.id) {
                warn!(
                    job_id = fence.id,
                    "lease lost (job rescued or finished elsewhere); cancelling its handler"
                );
                e.cancel.cancel();
            }
        }
    }

    /// Resolves when the job's local lease deadline passes without having been pushed (then
    /// the job is cancelled and forgotten here, before anyone else may rescue it), or when the
    /// job is no longer in the table. A timer, not the heartbeat, enforces it: a heartbeat stuck
    /// on a stalled database must not let a handler run past its lease.
    pub(crate) async fn expiry(&self, fence: Fence) {
        loop {
            let deadline = {
                let mut map = self.lock();
                match map.get(&fence.id) {
                    Some(e) if e.token == fence.token => {
                        if Instant::now() >= e.deadline {
                            warn!(
                                job_id = fence.id,
                                "lease expired before it could be extended; cancelling the handler"
                            );
                            if let Some(e) = map.remove(&fence.id) {
                                e.cancel.cancel();
                            }
                            return;
                        }
                        e.deadline
                    }
                    _ => return,
                }
            };
            tokio::time::sleep_until(deadline.into()).await;
        }
    }

    /// Immediate stop: cancels every running handler. Returns how many there were; they stay
    /// `running` in the database until their leases expire and they are rescued.
    pub(crate) fn cancel_all(&self) -> usize {
        let map = self.lock();
        for e in map.values() {
            e.cancel.cancel();
        }
        map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fence(id: u64, t: u8) -> Fence {
        Fence { id, token: [t; 16] }
    }

    #[tokio::test]
    async fn the_deadline_is_enforced_once_and_can_be_pushed() {
        let t = InFlight::default();
        let now = Instant::now();
        let a = t
            .insert(fence(1, 1), now + Duration::from_millis(30), None)
            .cancel;
        let b = t
            .insert(fence(2, 1), now + Duration::from_millis(30), None)
            .cancel;
        t.extend(&[fence(2, 1)], now + Duration::from_secs(60));
        t.expiry(fence(1, 1)).await;
        assert!(a.is_cancelled());
        assert!(!t.holds(fence(1, 1)));
        assert!(!b.is_cancelled());
        assert!(t.holds(fence(2, 1)));
        // A stale fence neither removes nor cancels the current holder's entry.
        t.remove(fence(2, 9));
        t.lose(fence(2, 9));
        assert!(t.holds(fence(2, 1)) && !b.is_cancelled());
        t.lose(fence(2, 1));
        assert!(b.is_cancelled() && t.len() == 0);
    }

    #[test]
    fn an_operator_cancel_fires_both_tokens_once_and_names_who() {
        let t = InFlight::default();
        let far = Instant::now() + Duration::from_secs(60);
        let tokens = t.insert(fence(1, 1), far, None);
        t.request_cancel(fence(1, 9), "stale".into());
        assert!(!tokens.stop.is_cancelled(), "a stale fence cancels nothing");
        t.request_cancel(fence(1, 1), "cli:ann".into());
        t.request_cancel(fence(1, 1), "cli:bob".into());
        assert!(tokens.stop.is_cancelled() && tokens.cancel.is_cancelled());
        assert_eq!(t.cancelled_by(fence(1, 1)).as_deref(), Some("cli:ann"));
    }

    #[test]
    fn removing_a_keyed_job_frees_its_key_once() {
        let t = InFlight::default();
        let q: QueueName = "q".parse().unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        t.insert(fence(1, 1), far, Some((q.clone(), "k".into())));
        t.insert(fence(2, 1), far, Some((q.clone(), "k".into())));
        t.insert(fence(3, 1), far, None);
        t.remove(fence(1, 9));
        assert!(t.take_freed().is_empty(), "a stale fence frees nothing");
        for id in [1, 2, 3] {
            t.remove(fence(id, 1));
        }
        t.remove(fence(1, 1));
        let freed = t.take_freed();
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[&q].iter().collect::<Vec<_>>(), vec!["k"]);
        assert!(t.take_freed().is_empty());
    }
}
