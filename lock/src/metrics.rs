//! Lock metrics, recorded through the `metrics` facade (the application installs a recorder;
//! the `jobq` binary installs the Prometheus one). Labels: `kind` (`session` or `lease`) and, for
//! acquisitions, `outcome` (`acquired`, `busy`, `error`). Lock names are never labels: they are
//! unbounded.

use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use tokio_util::sync::CancellationToken;

/// Histogram: time spent acquiring, by kind and outcome.
pub const ACQUIRE_WAIT_SECONDS: &str = "jobq_lock_acquire_wait_seconds";
/// Histogram: how long locks were held, from acquisition to release, drop or loss.
pub const HOLD_SECONDS: &str = "jobq_lock_hold_seconds";
/// Counter: lease renewals that failed (a database error; the watchdog retries while the
/// lease lasts).
pub const RENEWALS_FAILED: &str = "jobq_lock_renewals_failed_total";
/// Counter: locks whose `lost` signal fired.
pub const LOST: &str = "jobq_lock_lost_total";
/// Histogram buckets for acquire waits and hold times (seconds).
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0,
];

/// The `kind` label.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Session,
    Lease,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::Lease => "lease",
        }
    }
}

/// Records one acquisition attempt that began at `since`.
pub(crate) fn acquired<T, E>(kind: Kind, since: Instant, result: &Result<Option<T>, E>) {
    let outcome = match result {
        Ok(Some(_)) => "acquired",
        Ok(None) => "busy",
        Err(_) => "error",
    };
    histogram!(ACQUIRE_WAIT_SECONDS, "kind" => kind.label(), "outcome" => outcome)
        .record(since.elapsed().as_secs_f64());
}

pub(crate) fn renewal_failed(kind: Kind) {
    counter!(RENEWALS_FAILED, "kind" => kind.label()).increment(1);
}

/// Fires `lost` (counting it once).
pub(crate) fn mark_lost(kind: Kind, lost: &CancellationToken) {
    if !lost.is_cancelled() {
        lost.cancel();
        counter!(LOST, "kind" => kind.label()).increment(1);
    }
}

/// Part of every guard: records the hold time when the guard goes away.
#[derive(Debug)]
pub(crate) struct HoldTimer {
    kind: Kind,
    since: Instant,
}

impl HoldTimer {
    pub(crate) fn start(kind: Kind) -> Self {
        HoldTimer {
            kind,
            since: Instant::now(),
        }
    }

    pub(crate) fn held(&self) -> Duration {
        self.since.elapsed()
    }
}

impl Drop for HoldTimer {
    fn drop(&mut self) {
        histogram!(HOLD_SECONDS, "kind" => self.kind.label()).record(self.held().as_secs_f64());
    }
}

/// Describes the lock metrics (help text and unit) to the installed recorder and creates the
/// counters at zero.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        ACQUIRE_WAIT_SECONDS,
        Unit::Seconds,
        "Time spent acquiring a lock, by kind (session, lease) and outcome (acquired, busy, error)"
    );
    describe_histogram!(
        HOLD_SECONDS,
        Unit::Seconds,
        "How long locks were held, from acquisition to release, drop or loss"
    );
    describe_counter!(
        RENEWALS_FAILED,
        "Lease renewals that failed with a database error (retried while the lease lasts)"
    );
    describe_counter!(LOST, "Locks whose lost signal fired");
    // Zero-valued series from the start: "nothing lost" is a 0, not an absent series.
    for kind in [Kind::Session, Kind::Lease] {
        counter!(RENEWALS_FAILED, "kind" => kind.label()).increment(0);
        counter!(LOST, "kind" => kind.label()).increment(0);
    }
}
