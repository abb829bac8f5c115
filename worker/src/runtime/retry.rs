//! The one database-retry policy every runtime loop uses.
//!
//! Transient errors (deadlock 1213, lock-wait timeout 1205, snapshot conflict 1020) mean "run
//! the transaction again": they are counted in `jobq_db_errors_retried_total` and retried after
//! a few milliseconds. Anything else (a lost connection, a server restart, a refused statement)
//! is counted in `jobq_db_errors_total` and retried with exponential backoff, 100 ms doubling to
//! 5 s, with jitter, so a database outage is not hammered.

use std::time::Duration;

use rand::Rng;

use jobq_sqlkit::TxError;

use crate::error::is_transient;
use crate::metrics;

const FIRST: Duration = Duration::from_millis(100);
const MOST: Duration = Duration::from_secs(5);

/// Backoff state of one loop. Call [`DbRetry::pause`] after each failure and
/// [`DbRetry::reset`] after a success.
#[derive(Debug)]
pub(crate) struct DbRetry {
    next: Duration,
}

/// What to do after a failed database call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pause {
    /// How long to wait before trying again.
    pub(crate) wait: Duration,
    /// Whether the error was transient (no need to log it above debug).
    pub(crate) transient: bool,
}

impl DbRetry {
    pub(crate) fn new() -> Self {
        DbRetry { next: FIRST }
    }

    /// Forget earlier failures.
    pub(crate) fn reset(&mut self) {
        self.next = FIRST;
    }

    /// Classifies `e`, counts it, and says how long to wait before trying again.
    pub(crate) fn pause(&mut self, e: &sqlx::Error) -> Pause {
        let transient = is_transient(e);
        metrics::db_error(e, transient);
        let wait = if transient {
            Duration::from_millis(rand::thread_rng().gen_range(1..20))
        } else {
            self.back_off()
        };
        Pause { wait, transient }
    }

    /// The next exponential wait (jittered), doubling the one after it up to [`MOST`].
    fn back_off(&mut self) -> Duration {
        let d = self.next.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
        self.next = (self.next * 2).min(MOST);
        d
    }

    /// [`pause`](DbRetry::pause) for a transaction's error; a deadline passed is no reason to
    /// wait (the caller's budget is spent).
    pub(crate) fn pause_tx(&mut self, e: &TxError) -> Pause {
        match e {
            TxError::Sql(e) => self.pause(e),
            TxError::Deadline(_) => {
                metrics::db_failure("deadline");
                Pause {
                    wait: Duration::ZERO,
                    transient: false,
                }
            }
        }
    }

    /// The pause after a failure that carries no database error (a claim whose answer lacked
    /// its confirmation): backs off like any error that is not transient.
    pub(crate) fn pause_unexplained(&mut self) -> Pause {
        metrics::db_failure("unknown");
        Pause {
            wait: self.back_off(),
            transient: false,
        }
    }
}

/// The pause after a claim lost a race it could only detect by its outcome (another node of
/// a cluster took some of its jobs): like a transient error, retry at once.
pub(crate) fn contended() -> Pause {
    Pause {
        wait: Duration::from_millis(rand::thread_rng().gen_range(1..20)),
        transient: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_errors_back_off_exponentially_up_to_the_cap() {
        let mut r = DbRetry::new();
        let e = sqlx::Error::PoolTimedOut;
        let waits: Vec<Duration> = (0..10).map(|_| r.pause(&e).wait).collect();
        assert!(waits[0] <= FIRST && waits[0] >= FIRST / 2, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= MOST), "{waits:?}");
        assert!(waits[9] >= MOST / 2, "{waits:?}");
        r.reset();
        assert!(r.pause(&e).wait <= FIRST);
    }
}
