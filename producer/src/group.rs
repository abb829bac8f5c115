//! Group commit: single enqueues ([`crate::Producer::enqueue`], `insert`) from concurrent tasks
//! that share a producer (or its clones) go to the server together, one transaction and one
//! commit (one fsync) for all of them, each call still getting its own id or its own error.
//!
//! No call waits for a timer: the first call to find no write under way starts one at once
//! with whatever is waiting (itself), and the calls arriving while it runs wait for it, then
//! go together in the next, up to [`MAX_GROUP`] jobs. A lone producer therefore sees the same
//! latency as without grouping; many see one commit serve many calls.
//!
//! The writes run in a task of their own, so a caller that stops waiting (its future dropped)
//! cannot cut the others' write short: its job is written all the same, as a job whose commit
//! was sent is. If the server refuses a group's transaction, the group is split in halves and
//! each written again, down to the job it refuses, which alone fails; a failure no job causes
//! (the connection, a lost race) fails the whole group's calls.
//!
//! Grouped: plain jobs. Not grouped (written alone, as before): unique jobs (a duplicate inside
//! one group would need the rules of two transactions), jobs with parents, and every enqueue of
//! a producer with an [`crate::EnqueueHook`] (the hook runs in the enqueuing task).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::producer::{Enqueued, Producer};
use crate::store::JobInsert;

/// The most jobs one group writes: one multi-row statement's worth.
pub(crate) const MAX_GROUP: usize = 500;

/// The most payload bytes one group writes (a group of large payloads is a large transaction).
pub(crate) const MAX_GROUP_BYTES: usize = 4 << 20;

/// The most calls waiting for a group: past it, a call writes alone (as with group commit
/// off), so an overloaded server slows callers down through the pool as before instead of
/// piling calls up in memory.
pub(crate) const MAX_WAITING: usize = 10_000;

/// Where a call's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<Enqueued>>;

/// One group per server a producer writes to (`None`: its own pool; `Some(i)`: the `i`-th
/// routed server).
#[derive(Debug, Default)]
pub(crate) struct Groups {
    by_server: Mutex<HashMap<Option<usize>, Arc<Group>>>,
}

impl Groups {
    /// The group of a server.
    pub(crate) fn of(&self, server: Option<usize>) -> Arc<Group> {
        let mut all = self.by_server.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(server).or_default().clone()
    }
}

/// What became of a call added to a group.
#[derive(Debug)]
pub(crate) enum Joined {
    /// No write was under way: the caller starts one.
    Start,
    /// A write under way will take it.
    Wait,
    /// Too many calls wait: the call, given back, writes alone.
    Full(Box<JobInsert>),
}

/// The calls waiting to be written to one server, and whether a write is under way.
#[derive(Debug, Default)]
pub(crate) struct Group {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    writing: bool,
    waiting: Vec<(JobInsert, Reply)>,
}

impl Group {
    /// Adds a call: `Joined::Start` when no write was under way and the caller must start
    /// one ([`Writer::next`] until it returns nothing), `Joined::Wait` when a write under way
    /// will take it, `Joined::Full` (the call given back) when [`MAX_WAITING`] calls already
    /// wait: it writes alone.
    pub(crate) fn push(&self, row: JobInsert, reply: Reply) -> Joined {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.waiting.len() >= MAX_WAITING {
            return Joined::Full(Box::new(row));
        }
        s.waiting.push((row, reply));
        if std::mem::replace(&mut s.writing, true) {
            Joined::Wait
        } else {
            Joined::Start
        }
    }

    /// The next calls to write together, oldest first, at most [`MAX_GROUP`]; empty when none
    /// is waiting, and then the write is over (the next call starts another).
    pub(crate) fn next(&self) -> Vec<(JobInsert, Reply)> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // At most MAX_GROUP jobs and MAX_GROUP_BYTES of payloads (at least one job).
        let mut bytes = 0;
        let n = s
            .waiting
            .iter()
            .take(MAX_GROUP)
            .take_while(|(r, _)| {
                bytes += r.payload.len();
                bytes <= MAX_GROUP_BYTES
            })
            .count()
            .max(usize::from(!s.waiting.is_empty()));
        if n == 0 {
            s.writing = false;
        }
        s.waiting.drain(..n).collect()
    }

    /// Held by the task writing the group, which takes the calls through it: if that task
    /// ends before [`Writer::next`] said the write is over (a panic, a runtime shutting down,
    /// a task dropped before it ever ran), the next call starts a new writer instead of
    /// waiting for one that is gone.
    pub(crate) fn writer(group: Arc<Group>) -> Writer {
        Writer { group, done: false }
    }
}

/// See [`Group::writer`].
pub(crate) struct Writer {
    group: Arc<Group>,
    done: bool,
}

impl Writer {
    /// [`Group::next`], noting when the write is over.
    pub(crate) fn next(&mut self) -> Vec<(JobInsert, Reply)> {
        let calls = self.group.next();
        self.done = calls.is_empty();
        calls
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.done {
            // The calls still waiting get no writer: their answers are dropped, and they end
            // with `Error::GroupLost` instead of waiting for ever.
            let mut s = self.group.state.lock().unwrap_or_else(|e| e.into_inner());
            s.writing = false;
            s.waiting.clear();
        }
    }
}

/// Writes the waiting calls of `writer`'s group, a group at a time, until none waits.
///
/// A group the server refuses is split in halves, each written again, down to the one job it
/// refuses: that call gets the error, every other its id, at the price of about two
/// transactions per halving. A failure no job causes fails every call of the group at once.
pub(crate) async fn write(producer: &Producer, mut writer: Writer) {
    loop {
        let calls = writer.next();
        if calls.is_empty() {
            return;
        }
        let mut parts = vec![calls.into_iter().unzip::<_, _, Vec<_>, Vec<_>>()];
        while let Some((mut rows, mut replies)) = parts.pop() {
            match producer.insert_rows(&rows).await {
                Ok(out) => {
                    for (reply, e) in replies.into_iter().zip(out) {
                        let _ = reply.send(Ok(e));
                    }
                }
                Err(e) if rows.len() == 1 => {
                    if let Some(reply) = replies.pop() {
                        let _ = reply.send(Err(e));
                    }
                }
                // Not a refusal of the server (the connection, the pool): no job is to blame,
                // and splitting would only repeat it. Every call gets the error.
                Err(e) if !refused(&e) => {
                    let text = e.to_string();
                    let mut replies = replies.into_iter();
                    if let Some(first) = replies.next() {
                        let _ = first.send(Err(e));
                    }
                    for reply in replies {
                        let _ = reply.send(Err(Error::GroupFailed(text.clone())));
                    }
                }
                Err(_) => {
                    let half = rows.len() / 2;
                    let second = (rows.split_off(half), replies.split_off(half));
                    // The first half next, then the second.
                    parts.push(second);
                    parts.push((rows, replies));
                }
            }
        }
    }
}

/// Whether the server refused a statement (a constraint, a bad value: an error one job may
/// cause), as opposed to a failed connection, a lost race or a server that cannot serve now,
/// which no job causes and splitting the group would only repeat.
fn refused(e: &Error) -> bool {
    matches!(e, Error::Database(e) if jobq_sqlkit::classify(e) == jobq_sqlkit::ErrorClass::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_waiting_bound_a_call_is_given_back_to_write_alone() {
        let g = Group::default();
        let mut answers = Vec::new();
        for i in 0..MAX_WAITING {
            let (tx, rx) = oneshot::channel();
            answers.push(rx);
            assert!(!matches!(g.push(row(i), tx), Joined::Full(_)), "{i}");
        }
        let (tx, _rx) = oneshot::channel();
        match g.push(row(MAX_WAITING), tx) {
            Joined::Full(r) => assert!(r.payload.contains(&format!("{MAX_WAITING}"))),
            other => panic!("{other:?}"),
        }
        // Once some are taken, calls join again.
        assert_eq!(g.next().len(), MAX_GROUP);
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(g.push(row(0), tx), Joined::Wait));
    }

    fn row(i: usize) -> JobInsert {
        crate::NewJob::json("noop", serde_json::json!({ "i": i }))
            .check(&crate::ProducerOptions::default())
            .unwrap()
    }

    #[test]
    fn the_first_call_writes_and_the_rest_wait_for_the_next_group() {
        let g = Arc::new(Group::default());
        let (tx, _rx) = oneshot::channel();
        let started = |j: Joined| matches!(j, Joined::Start);
        assert!(
            started(g.push(row(0), tx)),
            "the first call starts the write"
        );
        for i in 1..=MAX_GROUP + 2 {
            let (tx, _rx) = oneshot::channel();
            assert!(
                matches!(g.push(row(i), tx), Joined::Wait),
                "a write is under way"
            );
        }
        // Oldest first, at most MAX_GROUP at a time, then the rest, then the write ends.
        let first = g.next();
        assert_eq!(first.len(), MAX_GROUP);
        assert!(first[0].0.payload.contains("\"i\":0"));
        assert_eq!(g.next().len(), 3);
        assert!(g.next().is_empty());
        let (tx, _rx) = oneshot::channel();
        assert!(
            started(g.push(row(9), tx)),
            "the next call starts a new write"
        );
        // A writer that goes away mid-write (a panic, a cancelled task) answers the calls
        // still waiting (their answers dropped) and lets the next call start another.
        let (tx, _taken) = oneshot::channel();
        assert!(!started(g.push(row(11), tx)));
        let mut waiting = {
            let mut w = Group::writer(g.clone());
            assert_eq!(w.next().len(), 2);
            let (tx, rx) = oneshot::channel();
            assert!(!started(g.push(row(12), tx)));
            rx
        };
        assert!(
            matches!(
                waiting.try_recv(),
                Err(oneshot::error::TryRecvError::Closed)
            ),
            "the waiting call is answered (its answer dropped)"
        );
        let (tx, _rx) = oneshot::channel();
        assert!(
            started(g.push(row(10), tx)),
            "a writer gone mid-write leaves no one waiting"
        );
    }
}
