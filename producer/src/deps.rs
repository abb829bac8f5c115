//! Dependencies between jobs, decided: what a child does when one of its parents ends, and
//! which state a new child starts in given its parents' states. Pure (no I/O); the producer
//! (a child's start) and the worker (a parent's ending, `jobq-worker`'s store) write what is
//! decided here. README "Workflows" has the semantics.

use std::fmt;
use std::str::FromStr;

use crate::job::JobState;

/// What a child does when a parent ends without completing (`discarded` or `cancelled`; a
/// parent that is only retrying has not ended). Stored per edge in `jobq_deps.on_failure`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum OnParentFailure {
    /// The child, and everything that depends on it the same way, ends `cancelled`, with the
    /// failed parent named in its error. The default.
    #[default]
    Cancel,
    /// The edge counts as satisfied: the child runs once its other parents end, and can see
    /// which parents failed (`ctx.parents()`).
    Ignore,
    /// The child is released now, without waiting for its other parents.
    Continue,
}

impl OnParentFailure {
    /// The database and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnParentFailure::Cancel => "cancel",
            OnParentFailure::Ignore => "ignore",
            OnParentFailure::Continue => "continue",
        }
    }

    /// Every policy.
    pub const ALL: [OnParentFailure; 3] = [
        OnParentFailure::Cancel,
        OnParentFailure::Ignore,
        OnParentFailure::Continue,
    ];
}

impl fmt::Display for OnParentFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OnParentFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OnParentFailure::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown parent-failure policy {s:?}: use cancel, ignore or continue")
            })
    }
}

/// What one ended parent does to one child, through their edge's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeEnd {
    /// The edge is satisfied: the child waits for its other parents.
    Satisfied,
    /// The child is released now (`continue` after a failure).
    Release,
    /// The child is cancelled (`cancel` after a failure).
    Cancel,
}

/// How an ended parent's edge resolves: `ended` is the parent's final state.
pub fn edge_end(ended: JobState, policy: OnParentFailure) -> EdgeEnd {
    match (ended, policy) {
        (JobState::Completed, _) | (_, OnParentFailure::Ignore) => EdgeEnd::Satisfied,
        (_, OnParentFailure::Continue) => EdgeEnd::Release,
        (_, OnParentFailure::Cancel) => EdgeEnd::Cancel,
    }
}

/// What happens to a child after some of its edges resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildMove {
    /// Nothing (still waiting for parents, or not `blocked` any more: released earlier by a
    /// `continue` edge, cancelled, or already running).
    Stay,
    /// `blocked` → `available` (or `scheduled` if its run-at is later).
    Release,
    /// `blocked` → `cancelled`, with this reason.
    Cancel(String),
}

/// A parent's ending as one child sees it: the parent's id, its final state, and the policy of
/// their edge.
pub type Ended = (u64, JobState, OnParentFailure);

/// What a child in `state` does when the parents `ended` ended and `pending` of its edges are
/// still unresolved after them. Only a `blocked` child moves; a cancel wins over a release.
pub fn child_move(state: JobState, pending: u32, ended: &[Ended]) -> ChildMove {
    if state != JobState::Blocked {
        return ChildMove::Stay;
    }
    let ends: Vec<(u64, JobState, EdgeEnd)> = ended
        .iter()
        .map(|&(id, st, policy)| (id, st, edge_end(st, policy)))
        .collect();
    if let Some((parent, ended, _)) = ends.iter().find(|e| e.2 == EdgeEnd::Cancel) {
        return ChildMove::Cancel(format!(
            "parent job {parent} ended {ended} (on_parent_failure = cancel)"
        ));
    }
    if pending == 0 || ends.iter().any(|e| e.2 == EdgeEnd::Release) {
        return ChildMove::Release;
    }
    ChildMove::Stay
}

/// The state a new child starts in, given its parents as they are when it is inserted
/// (`(id, state, the edge's policy)`): `Blocked` with the number of parents still to end, or,
/// when none is left to wait for, `Ready` (`available`/`scheduled` by its run-at) or
/// `Cancelled` (a parent already failed with `cancel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// Waits for `pending` parents.
    Blocked {
        /// Parents not yet ended.
        pending: u32,
    },
    /// Runs as a job without parents would.
    Ready,
    /// Starts `cancelled` (final), with this reason.
    Cancelled(String),
}

/// See [`Start`].
pub fn start(parents: &[Ended]) -> Start {
    let ended: Vec<Ended> = parents.iter().copied().filter(|p| p.1.is_final()).collect();
    let pending = (parents.len() - ended.len()) as u32;
    match child_move(JobState::Blocked, pending, &ended) {
        ChildMove::Cancel(why) => Start::Cancelled(why),
        ChildMove::Release => Start::Ready,
        ChildMove::Stay => Start::Blocked { pending },
    }
}

/// A workflow's state (`jobq_workflows.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowState {
    /// Some of its jobs have not ended.
    Running,
    /// Every job completed.
    Completed,
    /// Every job ended, some without completing.
    Failed,
    /// Cancelled by an operator (`jobq workflows cancel`).
    Cancelled,
}

impl FlowState {
    /// The database and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::Running => "running",
            FlowState::Completed => "completed",
            FlowState::Failed => "failed",
            FlowState::Cancelled => "cancelled",
        }
    }

    /// Every state.
    pub const ALL: [FlowState; 4] = [
        FlowState::Running,
        FlowState::Completed,
        FlowState::Failed,
        FlowState::Cancelled,
    ];
}

impl fmt::Display for FlowState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FlowState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FlowState::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown workflow state {s:?}"))
    }
}

/// A workflow's counters and state, as its row holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCounts {
    /// Jobs it has.
    pub jobs: u32,
    /// Jobs that ended completed, discarded, cancelled.
    pub completed: u32,
    /// See `completed`.
    pub discarded: u32,
    /// See `completed`.
    pub cancelled: u32,
    /// Its state.
    pub state: FlowState,
    /// Whether every job has ended (`finished_at` set).
    pub finished: bool,
}

/// Which callbacks of a workflow or batch run when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Callback {
    /// Every job completed.
    Success,
    /// Some job ended without completing.
    Failure,
    /// Every job ended, however.
    Finish,
}

impl Callback {
    /// The database spelling (`jobq_callbacks.on_event`).
    pub fn as_str(self) -> &'static str {
        match self {
            Callback::Success => "success",
            Callback::Failure => "failure",
            Callback::Finish => "finish",
        }
    }
}

/// A workflow after some of its jobs ended: its new counters and state, and the callbacks to
/// enqueue (only when this ending is the one that ends it: exactly once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowEnd {
    /// Its counters and state now.
    pub counts: FlowCounts,
    /// The callbacks to enqueue now.
    pub callbacks: Vec<Callback>,
}

/// `before`, after jobs ended `[completed, discarded, cancelled]` more. The workflow ends when
/// every job has: `completed` if all completed, else `failed` (one an operator cancelled
/// stays `cancelled`).
pub fn flow_after(before: FlowCounts, ended: [u32; 3]) -> FlowEnd {
    let mut c = before;
    c.completed += ended[0];
    c.discarded += ended[1];
    c.cancelled += ended[2];
    let mut callbacks = Vec::new();
    if !c.finished && c.completed + c.discarded + c.cancelled >= c.jobs {
        c.finished = true;
        // A workflow an operator cancelled did not succeed, whatever its jobs did.
        let all = c.completed >= c.jobs && c.state != FlowState::Cancelled;
        if c.state == FlowState::Running {
            c.state = if all {
                FlowState::Completed
            } else {
                FlowState::Failed
            };
        }
        callbacks.push(if all {
            Callback::Success
        } else {
            Callback::Failure
        });
        callbacks.push(Callback::Finish);
    }
    FlowEnd {
        counts: c,
        callbacks,
    }
}

/// What retrying a workflow does: its jobs that did not complete run again, each `available`
/// or, while a parent of it has not completed (it runs again too, or has not ended),
/// `blocked` on those parents; the edges from the jobs that run again count as unresolved
/// again, and a blocked child outside them waits for them once more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryPlan {
    /// (job, `Available` or `Blocked`, parents to wait for), in id order.
    pub rerun: Vec<(u64, JobState, u32)>,
    /// Blocked jobs that do not run again but wait for `n` more parents now.
    pub rewait: Vec<(u64, u32)>,
}

/// See [`RetryPlan`]: `jobs` are the workflow's jobs with their states, `edges` its
/// (parent, child) pairs.
pub fn retry_plan(jobs: &[(u64, JobState)], edges: &[(u64, u64)]) -> RetryPlan {
    use std::collections::BTreeMap;
    let state: BTreeMap<u64, JobState> = jobs.iter().copied().collect();
    let again = |id: &u64| {
        matches!(
            state.get(id),
            Some(JobState::Discarded | JobState::Cancelled)
        )
    };
    let mut waits: BTreeMap<u64, u32> = BTreeMap::new();
    let mut rewait: BTreeMap<u64, u32> = BTreeMap::new();
    for (parent, child) in edges {
        let open = state.get(parent) != Some(&JobState::Completed);
        if again(child) {
            *waits.entry(*child).or_default() += u32::from(open);
        } else if again(parent) && state.get(child) == Some(&JobState::Blocked) {
            *rewait.entry(*child).or_default() += 1;
        }
    }
    let rerun = state
        .iter()
        .filter(|(id, _)| again(id))
        .map(|(&id, _)| {
            let n = waits.get(&id).copied().unwrap_or(0);
            let to = if n > 0 {
                JobState::Blocked
            } else {
                JobState::Available
            };
            (id, to, n)
        })
        .collect();
    RetryPlan {
        rerun,
        rewait: rewait.into_iter().collect(),
    }
}

/// [`retry_plan`]'s signature: a workflow's jobs with their states, its (parent, child) edges.
pub type RetryRule = fn(&[(u64, JobState)], &[(u64, u64)]) -> RetryPlan;

/// The rules the worker's store applies when jobs end (passed in, so the store decides
/// nothing itself).
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// [`child_move`].
    pub child: fn(JobState, u32, &[Ended]) -> ChildMove,
    /// [`flow_after`].
    pub flow: fn(FlowCounts, [u32; 3]) -> FlowEnd,
    /// [`retry_plan`].
    pub retry: RetryRule,
}

/// The rules jobq runs by.
pub const RULES: Rules = Rules {
    child: child_move,
    flow: flow_after,
    retry: retry_plan,
};

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;
    use OnParentFailure::*;

    #[test]
    fn an_edge_resolves_by_the_parents_end_and_its_policy() {
        let table = [
            (Completed, Cancel, EdgeEnd::Satisfied),
            (Completed, Ignore, EdgeEnd::Satisfied),
            (Completed, Continue, EdgeEnd::Satisfied),
            (Discarded, Cancel, EdgeEnd::Cancel),
            (Cancelled, Cancel, EdgeEnd::Cancel),
            (Discarded, Ignore, EdgeEnd::Satisfied),
            (Cancelled, Ignore, EdgeEnd::Satisfied),
            (Discarded, Continue, EdgeEnd::Release),
            (Cancelled, Continue, EdgeEnd::Release),
        ];
        for (ended, policy, want) in table {
            assert_eq!(edge_end(ended, policy), want, "{ended} {policy}");
        }
    }

    #[test]
    fn only_a_blocked_child_moves() {
        let done = [(1, Completed, Cancel)];
        let failed = [(1, Discarded, Cancel)];
        for state in JobState::ALL {
            let moved = child_move(state, 0, &done);
            if state == Blocked {
                assert_eq!(moved, ChildMove::Release);
            } else {
                assert_eq!(moved, ChildMove::Stay, "{state}");
                assert_eq!(child_move(state, 0, &failed), ChildMove::Stay, "{state}");
            }
        }
    }

    #[test]
    fn a_child_waits_for_its_last_parent_unless_released_or_cancelled() {
        let sat = (7, Completed, Cancel);
        let rel = (8, Discarded, Continue);
        let can = (9, Cancelled, Cancel);
        assert_eq!(child_move(Blocked, 2, &[sat]), ChildMove::Stay);
        assert_eq!(child_move(Blocked, 0, &[sat]), ChildMove::Release);
        assert_eq!(child_move(Blocked, 3, &[sat, rel]), ChildMove::Release);
        // A cancel wins over a release in the same ending.
        let ChildMove::Cancel(why) = child_move(Blocked, 3, &[rel, can]) else {
            panic!("cancel expected");
        };
        assert!(why.contains("parent job 9 ended cancelled"), "{why}");
        assert_eq!(child_move(Blocked, 5, &[]), ChildMove::Stay);
    }

    #[test]
    fn a_new_child_starts_by_its_parents_states() {
        assert_eq!(start(&[]), Start::Ready);
        assert_eq!(
            start(&[(1, Running, Cancel), (2, Available, Cancel)]),
            Start::Blocked { pending: 2 }
        );
        assert_eq!(
            start(&[(1, Completed, Cancel), (2, Blocked, Cancel)]),
            Start::Blocked { pending: 1 }
        );
        assert_eq!(start(&[(1, Completed, Cancel)]), Start::Ready);
        assert_eq!(start(&[(1, Discarded, Ignore)]), Start::Ready);
        assert_eq!(
            start(&[(1, Discarded, Continue), (2, Running, Cancel)]),
            Start::Ready
        );
        assert!(matches!(
            start(&[(1, Cancelled, Cancel), (2, Running, Cancel)]),
            Start::Cancelled(_)
        ));
    }

    #[test]
    fn a_workflow_ends_once_with_its_callbacks() {
        let running = FlowCounts {
            jobs: 3,
            completed: 0,
            discarded: 0,
            cancelled: 0,
            state: FlowState::Running,
            finished: false,
        };
        let e = flow_after(running, [2, 0, 0]);
        assert_eq!(
            (e.counts.state, e.counts.finished),
            (FlowState::Running, false)
        );
        assert!(e.callbacks.is_empty());
        let e = flow_after(e.counts, [1, 0, 0]);
        assert_eq!(
            (e.counts.state, e.counts.finished),
            (FlowState::Completed, true)
        );
        assert_eq!(e.callbacks, [Callback::Success, Callback::Finish]);
        // Counted again after the end (it cannot, but a hand edit could): no second callback.
        let again = flow_after(e.counts, [0, 1, 0]);
        assert!(again.callbacks.is_empty());
        assert_eq!(again.counts.state, FlowState::Completed);
        let failed = flow_after(running, [1, 1, 1]);
        assert_eq!(failed.counts.state, FlowState::Failed);
        assert_eq!(failed.callbacks, [Callback::Failure, Callback::Finish]);
        // Cancelled by an operator: stays so, and the failure callbacks run.
        let cancelled = FlowCounts {
            state: FlowState::Cancelled,
            ..running
        };
        let e = flow_after(cancelled, [1, 0, 2]);
        assert_eq!(e.counts.state, FlowState::Cancelled);
        assert_eq!(e.callbacks, [Callback::Failure, Callback::Finish]);
    }

    #[test]
    fn a_retry_reruns_what_did_not_complete_and_reblocks_its_dependents() {
        // a → b → c, a → d (ignore); a failed, b and c were cancelled by it, d completed.
        let jobs = [
            (1, Discarded),
            (2, Cancelled),
            (3, Cancelled),
            (4, Completed),
            (5, Blocked),
        ];
        // 5 waits for 4 (completed) and 1 (failed, ignore: resolved) and 6 (outside, running).
        let edges = [(1, 2), (2, 3), (1, 4), (4, 5), (1, 5)];
        let plan = retry_plan(&jobs, &edges);
        assert_eq!(
            plan.rerun,
            [(1, Available, 0), (2, Blocked, 1), (3, Blocked, 1)]
        );
        // 5 was still blocked: it waits for the rerun of 1 again. 4 completed: left alone.
        assert_eq!(plan.rewait, [(5, 1)]);
        // Nothing failed: nothing to do.
        let done = [(1, Completed), (2, Completed)];
        assert_eq!(retry_plan(&done, &[(1, 2)]), RetryPlan::default());
    }

    #[test]
    fn policies_round_trip() {
        for p in OnParentFailure::ALL {
            assert_eq!(p.as_str().parse::<OnParentFailure>().unwrap(), p);
        }
        let e = "stop".parse::<OnParentFailure>().unwrap_err();
        assert!(e.contains("cancel, ignore or continue"), "{e}");
    }
}
