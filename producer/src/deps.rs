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

/// What a child in `state` does when the edges `ends` resolved (`(parent id, parent's final
/// state, how the edge resolved)`) and `pending` of its edges are still unresolved after them.
/// Only a `blocked` child moves; a cancel wins over a release.
pub fn child_move(state: JobState, pending: u32, ends: &[(u64, JobState, EdgeEnd)]) -> ChildMove {
    if state != JobState::Blocked {
        return ChildMove::Stay;
    }
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
pub fn start(parents: &[(u64, JobState, OnParentFailure)]) -> Start {
    let ended: Vec<(u64, JobState, EdgeEnd)> = parents
        .iter()
        .filter(|p| p.1.is_final())
        .map(|&(id, state, policy)| (id, state, edge_end(state, policy)))
        .collect();
    let pending = (parents.len() - ended.len()) as u32;
    match child_move(JobState::Blocked, pending, &ended) {
        ChildMove::Cancel(why) => Start::Cancelled(why),
        ChildMove::Release => Start::Ready,
        ChildMove::Stay => Start::Blocked { pending },
    }
}

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
        let done = [(1, Completed, EdgeEnd::Satisfied)];
        let failed = [(1, Discarded, EdgeEnd::Cancel)];
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
        let sat = (7, Completed, EdgeEnd::Satisfied);
        let rel = (8, Discarded, EdgeEnd::Release);
        let can = (9, Cancelled, EdgeEnd::Cancel);
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
    fn policies_round_trip() {
        for p in OnParentFailure::ALL {
            assert_eq!(p.as_str().parse::<OnParentFailure>().unwrap(), p);
        }
        let e = "stop".parse::<OnParentFailure>().unwrap_err();
        assert!(e.contains("cancel, ignore or continue"), "{e}");
    }
}
