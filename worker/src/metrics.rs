//! Metric names and recording helpers. The library records through the `metrics` facade only;
//! the `jobq` binary installs the Prometheus exporter. Labels are `queue`, `kind` and `outcome`
//! (never a job id), so cardinality is bounded by configuration.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Counter: jobs inserted (recorded by the producer crate).
pub const ENQUEUED: &str = "jobq_jobs_enqueued_total";
/// Counter: jobs claimed.
pub const CLAIMED: &str = "jobq_jobs_claimed_total";
/// Counter: attempts that ended, by outcome (`completed`, `retried`, `discarded`, `cancelled`,
/// `snoozed`, `released`, `lease_lost`).
pub const FINISHED: &str = "jobq_jobs_finished_total";
/// Counter: jobs rescued from expired leases (`outcome` = `available` or `discarded`).
pub const RESCUED: &str = "jobq_jobs_rescued_total";
/// Histogram: handler run time, by outcome.
pub const RUN_SECONDS: &str = "jobq_job_run_duration_seconds";
/// Histogram: run-at → start.
pub const WAIT_SECONDS: &str = "jobq_job_queue_wait_seconds";
/// Histogram: claim round trip (lock wait excluded).
pub const CLAIM_SECONDS: &str = "jobq_claim_duration_seconds";
/// Histogram: jobs per claim.
pub const CLAIM_BATCH: &str = "jobq_claim_batch_size";
/// Histogram: named-lock wait.
pub const LOCK_WAIT_SECONDS: &str = "jobq_named_lock_wait_seconds";
/// Counter: named-lock acquisitions that timed out.
pub const LOCK_TIMEOUTS: &str = "jobq_named_lock_timeouts_total";
/// Counter: transient database errors retried (`outcome` = the server error code).
pub const DB_RETRIES: &str = "jobq_db_errors_retried_total";
/// Counter: database errors that were not transient (`outcome` = code or `connection`).
pub const DB_ERRORS: &str = "jobq_db_errors_total";
/// Gauge: jobs running in this process.
pub const IN_FLIGHT: &str = "jobq_jobs_in_flight";
/// Gauge: free slots in this process.
pub const FREE_SLOTS: &str = "jobq_free_slots";
/// Counter: heartbeats written (`outcome` = `ok` or `error`).
pub const HEARTBEATS: &str = "jobq_heartbeats_total";

pub(crate) fn claimed(queue: &str, kind: &str, wait: Duration) {
    counter!(CLAIMED, "queue" => queue.to_owned(), "kind" => kind.to_owned()).increment(1);
    histogram!(WAIT_SECONDS, "queue" => queue.to_owned(), "kind" => kind.to_owned())
        .record(wait.as_secs_f64());
}

pub(crate) fn finished(queue: &str, kind: &str, outcome: &'static str, run: Option<Duration>) {
    counter!(FINISHED, "queue" => queue.to_owned(), "kind" => kind.to_owned(), "outcome" => outcome).increment(1);
    if let Some(run) = run {
        histogram!(RUN_SECONDS, "queue" => queue.to_owned(), "kind" => kind.to_owned(), "outcome" => outcome)
            .record(run.as_secs_f64());
    }
}

pub(crate) fn claim(queue: &str, took: Duration, n: usize) {
    histogram!(CLAIM_SECONDS, "queue" => queue.to_owned()).record(took.as_secs_f64());
    histogram!(CLAIM_BATCH, "queue" => queue.to_owned()).record(n as f64);
}

pub(crate) fn db_error(e: &sqlx::Error, retried: bool) {
    let code = crate::error::db_code(e).unwrap_or_else(|| "connection".to_owned());
    let name = if retried { DB_RETRIES } else { DB_ERRORS };
    counter!(name, "outcome" => code).increment(1);
}

pub(crate) fn slots(queue: &str, in_flight: usize, free: usize) {
    gauge!(IN_FLIGHT, "queue" => queue.to_owned()).set(in_flight as f64);
    gauge!(FREE_SLOTS, "queue" => queue.to_owned()).set(free as f64);
}
