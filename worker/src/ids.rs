//! Identifiers the runtime makes itself: [`WorkerId`] and the named-lock [`LockName`]. Both are
//! validated when made, so the store may splice them into SQL.

use std::fmt;
use std::sync::Arc;

use rand::Rng;

/// A worker process's id (`jobq_workers.id`, `jobq_jobs.worker_id`): `host-pid-random`, at most
/// 64 characters of `A-Z a-z 0-9 . - _`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WorkerId(Arc<str>);

impl WorkerId {
    /// A fresh id for this process: its host name (other characters replaced by `_`), its pid
    /// and 32 random bits, cut to the last 64 characters.
    pub(crate) fn generate() -> WorkerId {
        let host: String = hostname()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let suffix: u32 = rand::thread_rng().gen();
        let id = format!("{host}-{}-{suffix:08x}", std::process::id());
        let start = id.len().saturating_sub(64);
        WorkerId(Arc::from(&id[start..]))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// This machine's host name, or `unknown` (recorded in worker rows, lock holders, pauses).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A named-lock name as the server computed it: `jobq:` + 40 hex digits. Never user text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LockName(String);

impl LockName {
    /// Accepts only the shape the store's `lock_name` query produces.
    pub(crate) fn from_server(s: String) -> Option<LockName> {
        let ok = s.len() <= 64
            && s.starts_with("jobq")
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'-');
        ok.then_some(LockName(s))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_safe_and_short() {
        let id = WorkerId::generate();
        assert!(id.as_str().len() <= 64);
        assert!(id
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    }

    #[test]
    fn lock_names_only_from_the_server_shape() {
        let good = format!("jobq:{}", "a1".repeat(20));
        assert!(LockName::from_server(good).is_some());
        assert!(LockName::from_server("jobq:x'--".into()).is_none());
        assert!(LockName::from_server("other".into()).is_none());
    }
}
