use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// The queue used when an enqueue names none.
pub const DEFAULT_QUEUE: &str = "default";

/// A typed job: a serde payload with a kind name.
///
/// The kind is the stable name stored with each job and used by workers to find the handler;
/// renaming it strands queued jobs. `QUEUE` is where the job goes unless the enqueue says
/// otherwise.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The kind name: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
    const KIND: &'static str;
    /// Default queue for this kind. Default `"default"`.
    const QUEUE: &'static str = DEFAULT_QUEUE;
}

/// A job's id (the `jobq_jobs.id` auto-increment value).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The states a job moves through. The spelling of [`JobState::as_str`] is the one used in the
/// database, the CLI and `jobq stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobState {
    /// Ready to be claimed now.
    Available,
    /// Waiting for its run-at time (enqueued with a delay or run-at, or snoozed).
    Scheduled,
    /// Claimed by a worker, under a lease.
    Running,
    /// Failed an attempt, waiting for its backoff before running again.
    Retryable,
    /// Finished successfully. Final.
    Completed,
    /// Failed for good (attempts used up, undecodable payload, or discarded by the handler). Final.
    Discarded,
    /// Cancelled by its handler. Final.
    Cancelled,
}

impl JobState {
    /// Every state, in display order.
    pub const ALL: [JobState; 7] = [
        JobState::Available,
        JobState::Scheduled,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Discarded,
        JobState::Cancelled,
    ];

    /// The database and CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Discarded => "discarded",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job will never run again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Discarded | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn describe(name: &str) -> String {
    if name.is_empty() {
        return "is empty".to_owned();
    }
    let shown: String = name.chars().take(40).collect();
    let more = if name.chars().count() > 40 { "…" } else { "" };
    format!("{shown:?}{more} ({} bytes)", name.len())
}

/// Checks a queue name: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
pub fn validate_queue(queue: &str) -> Result<(), Error> {
    if valid_name(queue, 64) {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "queue",
            message: format!(
                "{} is not a valid queue name; use 1 to 64 characters of A-Z a-z 0-9 _ . : -",
                describe(queue)
            ),
        })
    }
}

/// Checks a kind name: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
pub fn validate_kind(kind: &str) -> Result<(), Error> {
    if valid_name(kind, 128) {
        Ok(())
    } else {
        Err(Error::Invalid {
            field: "kind",
            message: format!(
                "{} is not a valid kind name; use 1 to 128 characters of A-Z a-z 0-9 _ . : -",
                describe(kind)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "default",
            "a",
            "mail.high",
            "tenant:42",
            "x-y_z",
            &"q".repeat(64),
        ] {
            validate_queue(ok).unwrap();
        }
        for bad in [
            "",
            "has space",
            "x'; DROP TABLE jobq_jobs; --",
            "émoji",
            &"q".repeat(65),
            &"k".repeat(300),
        ] {
            assert!(matches!(
                validate_queue(bad),
                Err(Error::Invalid { field: "queue", .. })
            ));
        }
        validate_kind(&"k".repeat(128)).unwrap();
        assert!(validate_kind(&"k".repeat(129)).is_err());
    }

    #[test]
    fn state_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("done".parse::<JobState>().is_err());
    }
}
