//! The job contract: the [`Job`] trait, [`JobId`], [`JobState`], and the validated names
//! ([`QueueName`], [`KindName`]) that everything else relies on.

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
/// database, the CLI, JSON output and `jobq stats`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
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
    /// Ready, but its concurrency key was at its limit when a claim read it: it waits out of
    /// the claim's way until a job of its key stops running.
    Waiting,
    /// Waits for the jobs it runs after (its parents, see [`crate::NewJob::after`]): out of the
    /// claim's way until the last of them ends.
    Blocked,
}

impl JobState {
    /// Every state, in display order.
    pub const ALL: [JobState; 9] = [
        JobState::Available,
        JobState::Waiting,
        JobState::Blocked,
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
            JobState::Waiting => "waiting",
            JobState::Blocked => "blocked",
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

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:literal) => {
        $(#[$doc])*
        ///
        /// Holding one proves the text passed the rule, so it can be spliced into SQL and used
        /// as a metric label without further checks. Cheap to clone.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// Longest accepted name, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `name`; the error names the field and says what is accepted.
            pub fn new(name: impl AsRef<str>) -> Result<Self, Error> {
                let name = name.as_ref();
                if valid_name(name, $max) {
                    Ok($name(std::sync::Arc::from(name)))
                } else {
                    Err(Error::Invalid {
                        field: $field,
                        message: format!(
                            concat!("{} is not a valid ", $field, " name; use 1 to ", $max,
                                    " characters of A-Z a-z 0-9 _ . : -"),
                            describe(name)
                        ),
                    })
                }
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                $name::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A queue name: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
    QueueName,
    "queue",
    64
);

name_type!(
    /// A kind name: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
    KindName,
    "kind",
    128
);

/// Checks a queue name: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
pub fn validate_queue(queue: &str) -> Result<(), Error> {
    QueueName::new(queue).map(drop)
}

/// Checks a kind name: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
pub fn validate_kind(kind: &str) -> Result<(), Error> {
    KindName::new(kind).map(drop)
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
        let q: QueueName = "mail.high".parse().unwrap();
        assert_eq!(
            (q.as_str(), format!("{q:?}")),
            ("mail.high", "\"mail.high\"".to_owned())
        );
        let e = KindName::new("bad kind").unwrap_err().to_string();
        assert!(e.starts_with("invalid kind: \"bad kind\""), "{e}");
        let de: Result<QueueName, _> = serde_json::from_str("\"a b\"");
        assert!(de.is_err());
    }

    #[test]
    fn state_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("done".parse::<JobState>().is_err());
    }
}
