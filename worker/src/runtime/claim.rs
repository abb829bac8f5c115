//! One claim, run: the store's steps in order (`store/claim.rs`, `store/claim_write.rs`), with
//! the decisions of `machine/claim.rs` between them. Where a claim is decided: the machine;
//! where it is read and written: the store; this file only passes values from one to the other.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jobq_config::Rate;
use jobq_producer::{KindName, QueueName};

use crate::ids::WorkerId;
use crate::machine::claim::{self as decide, Gate, Read};
use crate::model::{ClaimOutcome, ClaimPlan, ClaimedJob, Cursor, Fence, KeyState, Throttled};
use crate::store::{self, ClaimError, ClaimLock, ClaimTx, First, JobRead, Opening, Session};

/// One claim: up to `limit` available jobs of `queue`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClaimRequest<'a> {
    pub(crate) queue: &'a QueueName,
    pub(crate) limit: u32,
    pub(crate) worker: &'a WorkerId,
    pub(crate) lease: Duration,
    pub(crate) lock: ClaimLock<'a>,
    /// Successes of this worker to complete in the same transaction (see `store::Opening`).
    pub(crate) complete: &'a [Fence],
    /// The concurrency keys of the carried completions, with the key limit of their kinds: the
    /// claim promotes their waiting jobs into the slots those completions free.
    pub(crate) freed: &'a BTreeMap<String, u32>,
    /// The results (job id, JSON text) of the carried completions that have one.
    pub(crate) results: &'a [(u64, String)],
    /// The queue's flow limits.
    pub(crate) flow: Flow<'a>,
    /// Read only jobs after this position in claim order (see `store::JobRead::after`).
    pub(crate) after: Option<&'a Cursor>,
}

/// No keys freed (a claim carrying no keyed completion).
#[cfg(test)]
pub(crate) static NO_KEYS: BTreeMap<String, u32> = BTreeMap::new();

/// A queue's flow limits, as the claim applies them.
#[derive(Clone, Copy)]
pub(crate) struct Flow<'a> {
    /// `queues.NAME.rate_limit`.
    pub(crate) rate: Option<Rate>,
    /// `queues.NAME.key_rate_limit`.
    pub(crate) key_rate: Option<Rate>,
    /// The concurrency-key limit of a job of this kind (`kinds.K.key_limit`, else the queue's).
    pub(crate) key_limit: &'a (dyn Fn(&KindName) -> u32 + Sync),
}

impl Flow<'static> {
    /// No rate limits; a key limit of 1 for every kind.
    #[cfg(test)]
    pub(crate) const DEFAULT: Flow<'static> = Flow {
        rate: None,
        key_rate: None,
        key_limit: &|_| 1,
    };
}

impl std::fmt::Debug for Flow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("rate", &self.rate)
            .field("key_rate", &self.key_rate)
            .finish_non_exhaustive()
    }
}

/// What a claim did.
#[derive(Debug)]
pub(crate) struct Claimed {
    /// The jobs it started.
    pub(crate) jobs: Vec<ClaimedJob>,
    /// How many of the carried completions it wrote (the others had been taken back).
    pub(crate) completed: u64,
    /// In named-lock mode, whether `RELEASE_LOCK` released.
    pub(crate) released: bool,
    pub(crate) throttled: Throttled,
    /// The keys it sent jobs to `waiting` for that showed a free slot after its commit: they go
    /// to the key promoter (the job that held the slot may have ended meanwhile).
    pub(crate) waited_for: BTreeSet<String>,
    /// Waiting jobs of the carried completions' keys made `available` again.
    pub(crate) unblocked: u64,
    /// The carried completions' keys it promoted for (those that had waiting jobs); the other
    /// keys go to the key promoter.
    pub(crate) promoted_keys: BTreeSet<String>,
    pub(crate) outcome: ClaimOutcome,
    /// The last job it read, in claim order (`None`: it read none).
    pub(crate) last: Option<Cursor>,
}

impl Claimed {
    /// A claim that read nothing.
    pub(crate) fn nothing(completed: u64, released: bool, outcome: ClaimOutcome) -> Claimed {
        Claimed {
            jobs: Vec::new(),
            completed,
            released,
            throttled: Throttled::default(),
            waited_for: BTreeSet::new(),
            unblocked: 0,
            promoted_keys: BTreeSet::new(),
            outcome,
            last: None,
        }
    }
}

/// Runs one claim on `session`: open (completing the carried successes) and read, gate by the
/// queue's rate limit, lock the keys, plan, write and commit; then check the keys it sent jobs
/// to wait for.
pub(crate) async fn claim<S: Session>(
    session: &mut S,
    req: ClaimRequest<'_>,
) -> Result<Claimed, ClaimError> {
    let idle = decide::outcome(req.limit, 0, Throttled::default(), 0);
    if req.limit == 0 && req.complete.is_empty() {
        // Nothing to take or write; in named-lock mode the lock the caller took goes back.
        let released = match req.lock {
            ClaimLock::SkipLocked => true,
            ClaimLock::NamedLock(name) => store::release_lock(&mut *session, name).await?,
        };
        return Ok(Claimed::nothing(0, released, idle));
    }
    let probe: BTreeSet<String> = req.freed.keys().cloned().collect();
    let read = |limit| JobRead {
        limit,
        after: req.after,
        probe: &probe,
    };
    let queue_rate = req.flow.rate.filter(|_| req.limit > 0);
    let opening = Opening {
        queue: req.queue,
        worker: req.worker,
        lease: req.lease,
        lock: req.lock,
        complete: req.complete,
        results: req.results,
        jobs: queue_rate.is_none().then(|| read(req.limit)),
    };
    let (mut tx, completed, first) = ClaimTx::open(&mut *session, opening).await?;
    let mut queue_window = None;
    let batch = match (first, queue_rate) {
        (First::Jobs(batch), _) => batch,
        (First::Window { stored, now_us }, Some(rate)) => {
            match decide::gate(rate, stored.as_deref(), now_us, req.limit) {
                Gate::Closed { wait } => {
                    let c = tx.commit(&ClaimPlan::default()).await?;
                    let outcome = ClaimOutcome::RateLimited(wait);
                    return Ok(Claimed::nothing(completed, c.released, outcome));
                }
                Gate::Open { take, window } => {
                    queue_window = Some(window);
                    let (next, batch) = tx.read(read(take)).await?;
                    tx = next;
                    batch
                }
            }
        }
        (First::Window { .. }, None) => unreachable!("the window is read only with a rate limit"),
    };
    // Only the carried keys with waiting jobs take part in the claim's promotion; the others go
    // to the promoter after the commit (see `Claimed::promoted_keys`).
    let freed: BTreeMap<String, u32> = req
        .freed
        .iter()
        .filter(|(k, _)| batch.probed.contains(*k))
        .map(|(k, &l)| (k.clone(), l))
        .collect();
    for bad in &batch.undecodable {
        tracing::warn!(queue = %req.queue, job_id = bad.id, reason = %bad.reason, "discarding a job row the claim could not decode");
    }
    if batch.jobs.is_empty() && batch.undecodable.is_empty() && freed.is_empty() {
        let c = tx.commit(&ClaimPlan::default()).await?;
        return Ok(Claimed::nothing(completed, c.released, idle));
    }
    let limits: Vec<u32> = batch
        .jobs
        .iter()
        .map(|j| (req.flow.key_limit)(&j.kind))
        .collect();
    let locked = decide::keys_to_lock(&batch.jobs, &limits, &freed);
    let mut keys = KeyState::default();
    if !locked.is_empty() {
        let (next, state) = tx
            .lock_keys(&locked, req.flow.key_rate.is_some(), &freed)
            .await?;
        tx = next;
        keys = state;
    }
    let plan = decide::plan(Read {
        jobs: batch.jobs,
        undecodable: batch.undecodable,
        limits,
        freed,
        locked,
        keys,
        queue: queue_window,
        key_rate: req.flow.key_rate,
    });
    let committed = tx.commit(&plan).await?;
    let mut discarded = false;
    let waited_for = if plan.waited_for.is_empty() {
        BTreeSet::new()
    } else {
        let all = || plan.waited_for.keys().cloned().collect();
        let count = store::running_now(&mut *session, req.queue, &plan.waited_for);
        match tokio::time::timeout(store::ROUND_TRIP_BUDGET, count).await {
            Ok(Ok(running)) => decide::free_after_commit(&plan.waited_for, &running),
            // On an error every key goes to the promoter: the safe side.
            Ok(Err(_)) => all(),
            // No answer: the session may still be inside that read; never reuse it.
            Err(_) => {
                session.discard();
                discarded = true;
                all()
            }
        }
    };
    if !plan.discard.is_empty() && discarded {
        tracing::warn!("the claim's session was given up: the repair pass settles the dependents of the rows it discarded");
    } else if !plan.discard.is_empty() {
        // Their dependents and workflows hear of it in a transaction of their own (the
        // claim's statements cannot settle); bounded, and the repair pass is the backstop.
        let ids: Vec<u64> = plan.discard.iter().map(|d| d.id).collect();
        let settle = store::settle_discarded(&mut *session, &ids, jobq_producer::deps::RULES);
        match tokio::time::timeout(store::ROUND_TRIP_BUDGET * 4, settle).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                // Its transaction may be left open on the session: never reuse it.
                session.discard();
                tracing::warn!(error = %e, "could not settle the dependents of discarded rows; the repair pass will")
            }
            Err(_) => {
                session.discard();
                tracing::warn!(
                    "settling the dependents of discarded rows took too long; the repair pass will"
                );
            }
        }
    }
    let throttled = plan.throttled();
    let moved = plan.promote.len() + plan.discard.len();
    let outcome = decide::outcome(req.limit, plan.start.len(), throttled, moved);
    Ok(Claimed {
        completed,
        released: committed.released,
        throttled,
        waited_for,
        unblocked: plan.promote.len() as u64,
        promoted_keys: plan.promoted_keys,
        outcome,
        last: batch.last,
        jobs: plan.start,
    })
}
