//! Metric names and recording helpers. The library records through the `metrics` facade only;
//! the `jobq` binary installs the Prometheus exporter. Labels are `queue`, `kind` and `outcome`
//! (never a job id), so cardinality is bounded by configuration.

use std::time::Duration;

use jobq_producer::{KindName, QueueName};
use metrics::{counter, gauge, histogram};

use crate::model::Event;

/// The `outcome` of `jobq_jobs_finished_total` for an attempt whose lease was lost: its handler
/// was cancelled and nothing was written.
pub(crate) const LEASE_LOST: &str = "lease_lost";

/// The `outcome` of `jobq_jobs_finished_total` for an attempt whose outcome could not be written
/// within the write budget: the job was given up to the rescue path.
pub(crate) const ABANDONED: &str = "abandoned";

/// Counter: jobs inserted (recorded by the producer crate).
pub const ENQUEUED: &str = "jobq_jobs_enqueued_total";
/// Counter: jobs claimed.
pub const CLAIMED: &str = "jobq_jobs_claimed_total";
/// Counter: attempts that ended, by outcome (`completed`, `retried`, `discarded`, `cancelled`,
/// `snoozed`, `released`, `lease_lost`, `abandoned`).
pub const FINISHED: &str = "jobq_jobs_finished_total";
/// Counter: jobs rescued from expired leases, by queue (`outcome` = `available` or
/// `discarded`). Recorded by the maintenance leader.
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
/// Counter: jobs a claim read but held back, by queue and `reason`: `key_limit` (their
/// concurrency key was at its limit: sent to `waiting`) or `key_rate` (their key's rate limit
/// was used up: deferred to `scheduled`).
pub const THROTTLED: &str = "jobq_jobs_throttled_total";
/// Counter: claims that found the queue's rate limit used up and waited for a permit.
pub const RATE_LIMITED: &str = "jobq_claims_rate_limited_total";
/// Counter: `waiting` jobs made `available` again when a slot of their key freed.
pub const UNBLOCKED: &str = "jobq_jobs_unblocked_total";
/// Counter: jobs claimed ahead (`auto` prefetch) that waited too long for a handler slot
/// behind longer jobs and went back to the queue unstarted.
pub const GIVEN_BACK: &str = "jobq_prefetch_given_back_total";
/// Gauge: jobs this process's next claim of the queue may take ahead of free slots (the fixed
/// prefetch, or what `auto` allows now).
pub const PREFETCH: &str = "jobq_prefetch_ahead";

pub(crate) fn given_back(queue: &str) {
    counter!(GIVEN_BACK, "queue" => queue.to_owned()).increment(1);
}

pub(crate) fn throttled(queue: &str, waiting: u32, deferred: u32) {
    if waiting > 0 {
        counter!(THROTTLED, "queue" => queue.to_owned(), "reason" => "key_limit")
            .increment(u64::from(waiting));
    }
    if deferred > 0 {
        counter!(THROTTLED, "queue" => queue.to_owned(), "reason" => "key_rate")
            .increment(u64::from(deferred));
    }
}

pub(crate) fn rate_limited(queue: &str) {
    counter!(RATE_LIMITED, "queue" => queue.to_owned()).increment(1);
}

pub(crate) fn unblocked(queue: &str, n: u64) {
    counter!(UNBLOCKED, "queue" => queue.to_owned()).increment(n);
}

/// A claim that committed but whose jobs went back unstarted (its answer was uncertain): still
/// a claim the database recorded, so it counts.
pub(crate) fn claimed_unstarted(queue: &str, kind: &str) {
    counter!(CLAIMED, "queue" => queue.to_owned(), "kind" => kind.to_owned()).increment(1);
}

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

pub(crate) fn lock_wait(queue: &str, waited: Duration) {
    histogram!(LOCK_WAIT_SECONDS, "queue" => queue.to_owned()).record(waited.as_secs_f64());
}

pub(crate) fn lock_timeout(queue: &str) {
    counter!(LOCK_TIMEOUTS, "queue" => queue.to_owned()).increment(1);
}

pub(crate) fn heartbeat(ok: bool) {
    counter!(HEARTBEATS, "outcome" => if ok { "ok" } else { "error" }).increment(1);
}

pub(crate) fn leader(server: &str, leading: bool) {
    gauge!(LEADER, "server" => server.to_owned()).set(if leading { 1.0 } else { 0.0 });
}

pub(crate) fn rescued(queue: String, outcome: &'static str) {
    counter!(RESCUED, "queue" => queue, "outcome" => outcome).increment(1);
}

pub(crate) fn claim(queue: &str, took: Duration, n: usize) {
    histogram!(CLAIM_SECONDS, "queue" => queue.to_owned()).record(took.as_secs_f64());
    histogram!(CLAIM_BATCH, "queue" => queue.to_owned()).record(n as f64);
}

pub(crate) fn db_error(e: &sqlx::Error, retried: bool) {
    let code =
        crate::error::db_number(e).map_or_else(|| "connection".to_owned(), |n| n.to_string());
    let name = if retried { DB_RETRIES } else { DB_ERRORS };
    counter!(name, "outcome" => code).increment(1);
}

/// A database failure that is not a server error: `deadline` (no answer within the budget) or
/// `unknown` (an answer that lacked what it must hold, such as a claim's confirmation).
pub(crate) fn db_failure(outcome: &'static str) {
    counter!(DB_ERRORS, "outcome" => outcome).increment(1);
}

pub(crate) fn slots(queue: &str, in_flight: usize, free: usize, ahead: u32) {
    gauge!(IN_FLIGHT, "queue" => queue.to_owned()).set(in_flight as f64);
    gauge!(FREE_SLOTS, "queue" => queue.to_owned()).set(free as f64);
    gauge!(PREFETCH, "queue" => queue.to_owned()).set(f64::from(ahead));
}
/// Gauge: jobs per queue in each non-final state, sampled by the maintenance leader
/// (`jobq_queue_available_jobs`, `…_scheduled_jobs`, `…_running_jobs`, `…_retryable_jobs`,
/// `…_waiting_jobs`).
pub const DEPTH_PREFIX: &str = "jobq_queue_";
/// Gauge: age of the oldest `available` job per queue (now − run_at), sampled by the leader.
pub const OLDEST_AVAILABLE: &str = "jobq_queue_oldest_available_age_seconds";
/// Gauge: 1 while a queue is paused (`jobq queues pause`), else 0. Set by the leader.
pub const PAUSED: &str = "jobq_queue_paused";
/// Gauge: worker processes whose heartbeat is recent, sampled by the leader.
pub const WORKERS_ALIVE: &str = "jobq_workers_alive";
/// Counter: jobs ever inserted by any producer (the table's highest id), sampled by the leader,
/// so enqueue rates show even for producers that export no metrics.
pub const INSERTED: &str = "jobq_jobs_inserted_total";
/// Gauge: 1 in the process that currently runs maintenance, else 0.
pub const LEADER: &str = "jobq_maintenance_leader";
/// Gauge: age of the oldest `blocked` job (now − its run-at), sampled by the leader.
pub const OLDEST_BLOCKED: &str = "jobq_blocked_oldest_age_seconds";
/// Counter: workflows and batches inserted by this process's producer (`kind`: workflow,
/// batch).
pub const WORKFLOWS_STARTED: &str = "jobq_workflows_started_total";
/// Counter: workflows and batches whose last job ended, by outcome (completed, failed,
/// cancelled).
pub const WORKFLOWS_FINISHED: &str = "jobq_workflows_finished_total";
/// Counter: blocked jobs the leader's repair pass found with every parent ended and settled.
pub const WORKFLOW_REPAIRS: &str = "jobq_workflow_repairs_total";

/// Every `outcome` of [`FINISHED`]: the events that end an attempt, the lost lease and the
/// abandoned write.
pub(crate) fn finished_outcomes() -> impl Iterator<Item = &'static str> + Clone {
    Event::ALL
        .iter()
        .filter_map(|e| e.finished_outcome())
        .chain([LEASE_LOST, ABANDONED])
}

/// States sampled as depth gauges (`waiting`: jobs held back by their concurrency key;
/// `blocked`: jobs waiting for their parents).
pub const DEPTH_STATES: [&str; 6] = [
    "available",
    "scheduled",
    "running",
    "retryable",
    "waiting",
    "blocked",
];

/// The depth gauge name of `state`.
pub fn depth_name(state: &str) -> String {
    format!("{DEPTH_PREFIX}{state}_jobs")
}

/// Histogram buckets (seconds) for job run time.
pub const RUN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];
/// Histogram buckets (seconds) for queue wait.
pub const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0,
];
/// Histogram buckets (seconds) for claim round trips and named-lock waits.
pub const CLAIM_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Histogram buckets for claim batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// Describes every metric (help text and unit) to the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ENQUEUED, "Jobs inserted by producers in this process");
    describe_counter!(CLAIMED, "Jobs claimed by this process (every claim the database recorded, including ones given back unstarted because the claim's answer was uncertain)");
    describe_counter!(
        FINISHED,
        "Attempts that ended, by outcome: completed, retried, discarded, cancelled, snoozed, released, lease_lost, abandoned"
    );
    describe_counter!(
        RESCUED,
        "Running jobs whose lease expired, taken back (outcome: available or discarded)"
    );
    describe_histogram!(
        RUN_SECONDS,
        Unit::Seconds,
        "Handler run time per attempt, by outcome"
    );
    describe_histogram!(
        WAIT_SECONDS,
        Unit::Seconds,
        "Time from a job's run_at to its claim"
    );
    describe_histogram!(
        CLAIM_SECONDS,
        Unit::Seconds,
        "Claim round trip (transaction, excluding named-lock wait)"
    );
    describe_histogram!(CLAIM_BATCH, "Jobs returned per claim");
    describe_histogram!(
        LOCK_WAIT_SECONDS,
        Unit::Seconds,
        "Time spent in GET_LOCK per claim (named-lock mode)"
    );
    describe_counter!(
        LOCK_TIMEOUTS,
        "GET_LOCK calls that timed out (named-lock mode)"
    );
    describe_counter!(
        DB_RETRIES,
        "Transient database errors retried (outcome = server error code)"
    );
    describe_counter!(
        DB_ERRORS,
        "Database errors that were not transient (outcome = error code or 'connection')"
    );
    describe_gauge!(IN_FLIGHT, "Jobs running in this process, per queue");
    describe_gauge!(FREE_SLOTS, "Free job slots in this process, per queue");
    describe_gauge!(
        PREFETCH,
        "Jobs this process's next claim of the queue may take ahead of free slots (fixed, or what auto allows now)"
    );
    describe_counter!(
        GIVEN_BACK,
        "Jobs claimed ahead (auto prefetch) given back unstarted after waiting for a slot behind longer jobs"
    );
    describe_counter!(HEARTBEATS, "Lease heartbeats written (outcome ok or error)");
    for s in DEPTH_STATES {
        describe_gauge!(
            depth_name(s),
            format!("Jobs in state {s} per queue (sampled by the maintenance leader)")
        );
    }
    describe_gauge!(
        PAUSED,
        "1 while the queue is paused (jobq queues pause), else 0 (leader)"
    );
    describe_gauge!(
        OLDEST_AVAILABLE,
        Unit::Seconds,
        "Age of the oldest available job per queue (leader)"
    );
    describe_gauge!(
        WORKERS_ALIVE,
        "Worker processes with a recent heartbeat (leader)"
    );
    describe_gauge!(LEADER, "1 in the process running maintenance");
    describe_counter!(
        THROTTLED,
        "Jobs held back by a concurrency key (reason key_limit: waiting) or a key rate limit (key_rate: deferred)"
    );
    describe_counter!(
        RATE_LIMITED,
        "Claims that found the queue's rate limit used up"
    );
    describe_counter!(
        UNBLOCKED,
        "Waiting jobs made available again when a slot of their key freed"
    );
    describe_counter!(
        INSERTED,
        "Jobs ever inserted by any producer: the highest job id (leader)"
    );
    describe_gauge!(
        OLDEST_BLOCKED,
        Unit::Seconds,
        "Age of the oldest blocked job, by its run-at (leader)"
    );
    describe_counter!(
        WORKFLOWS_STARTED,
        "Workflows and batches inserted by this process (kind workflow or batch)"
    );
    describe_counter!(
        WORKFLOWS_FINISHED,
        "Workflows and batches whose last job ended here, by outcome (completed, failed, cancelled)"
    );
    describe_counter!(
        WORKFLOW_REPAIRS,
        "Blocked jobs found with every parent ended and settled by the repair pass (leader)"
    );
}

/// Workflows that ended in a transaction of this process: `(id, state)`.
pub(crate) fn workflows_finished(ended: &[(u64, String)]) {
    for (_, outcome) in ended {
        counter!(WORKFLOWS_FINISHED, "outcome" => outcome.clone()).increment(1);
    }
}

/// Blocked jobs the repair pass settled.
pub(crate) fn repaired(n: u64) {
    counter!(WORKFLOW_REPAIRS).increment(n);
}

/// Registers the counters this process can produce at zero, so rates and alerts see a series
/// from the start instead of "no data".
pub(crate) fn init_series(queues: &[QueueName], named_lock: &[QueueName], kinds: &[KindName]) {
    counter!(WORKFLOW_REPAIRS).increment(0);
    for kind in ["workflow", "batch"] {
        counter!(WORKFLOWS_STARTED, "kind" => kind).increment(0);
    }
    for outcome in ["completed", "failed", "cancelled"] {
        counter!(WORKFLOWS_FINISHED, "outcome" => outcome).increment(0);
    }
    for q in named_lock {
        counter!(LOCK_TIMEOUTS, "queue" => q.to_string()).increment(0);
    }
    let outcomes = finished_outcomes();
    for q in queues {
        gauge!(IN_FLIGHT, "queue" => q.to_string()).set(0.0);
        for reason in ["key_limit", "key_rate"] {
            counter!(THROTTLED, "queue" => q.to_string(), "reason" => reason).increment(0);
        }
        counter!(RATE_LIMITED, "queue" => q.to_string()).increment(0);
        counter!(UNBLOCKED, "queue" => q.to_string()).increment(0);
        counter!(GIVEN_BACK, "queue" => q.to_string()).increment(0);
        for k in kinds {
            let (q, k) = (q.to_string(), k.to_string());
            counter!(CLAIMED, "queue" => q.clone(), "kind" => k.clone()).increment(0);
            for o in outcomes.clone() {
                counter!(FINISHED, "queue" => q.clone(), "kind" => k.clone(), "outcome" => o)
                    .increment(0);
            }
        }
    }
    counter!(DB_RETRIES, "outcome" => crate::error::codes::DEADLOCK.to_string()).increment(0);
    counter!(DB_ERRORS, "outcome" => "connection").increment(0);
    counter!(HEARTBEATS, "outcome" => "error").increment(0);
}

/// How long a gauge keeps being exported without being set: the leader samples depth every
/// 5 maintenance ticks, so after 10 missed samples a queue that no longer exists (no rows, no
/// worker) loses its series instead of being exported forever. Never shorter than 3 heartbeats
/// (the per-process slot gauges). For `PrometheusBuilder::idle_timeout` on gauges.
pub fn gauge_idle_timeout(config: &jobq_config::Config) -> std::time::Duration {
    (config.maintenance().interval * 50).max(config.worker().heartbeat_interval * 3)
}

/// Leader sample: the paused gauge of every known queue, adding the paused ones to `known`.
pub(crate) fn paused(
    server: &str,
    known: &mut std::collections::BTreeSet<String>,
    paused: &[String],
) {
    known.extend(paused.iter().cloned());
    for q in known.iter() {
        let v = if paused.contains(q) { 1.0 } else { 0.0 };
        gauge!(PAUSED, "server" => server.to_owned(), "queue" => q.clone()).set(v);
    }
}

/// Leader sample: depth per queue and state, oldest available age, live workers.
pub(crate) fn depth(
    server: &str,
    samples: &[(String, String, i64)],
    oldest: &[(String, f64)],
    known: &mut std::collections::BTreeSet<String>,
    workers: i64,
    max_id: u64,
    oldest_blocked: f64,
) {
    let server = || server.to_owned();
    counter!(INSERTED, "server" => server()).absolute(max_id);
    gauge!(OLDEST_BLOCKED, "server" => server()).set(oldest_blocked);
    for (q, _, _) in samples {
        known.insert(q.clone());
    }
    for (q, _) in oldest {
        known.insert(q.clone());
    }
    for q in known.iter() {
        // Rescue counters exist from the first sample of a queue on, so the first rescue is an
        // increase, not a new series.
        for o in ["available", "discarded"] {
            counter!(RESCUED, "queue" => q.clone(), "outcome" => o).increment(0);
        }
        for s in DEPTH_STATES {
            let n = samples
                .iter()
                .find(|(sq, ss, _)| sq == q && ss == s)
                .map_or(0, |x| x.2);
            gauge!(depth_name(s), "server" => server(), "queue" => q.clone()).set(n as f64);
        }
        let age = oldest.iter().find(|(oq, _)| oq == q).map_or(0.0, |x| x.1);
        gauge!(OLDEST_AVAILABLE, "server" => server(), "queue" => q.clone()).set(age);
    }
    gauge!(WORKERS_ALIVE, "server" => server()).set(workers as f64);
}

/// A process that stops leading zeroes its samples so only the leader's values stand.
pub(crate) fn clear_depth(server: &str, known: &std::collections::BTreeSet<String>) {
    let server = || server.to_owned();
    for q in known {
        for s in DEPTH_STATES {
            gauge!(depth_name(s), "server" => server(), "queue" => q.clone()).set(0.0);
        }
        gauge!(OLDEST_AVAILABLE, "server" => server(), "queue" => q.clone()).set(0.0);
        gauge!(PAUSED, "server" => server(), "queue" => q.clone()).set(0.0);
    }
    gauge!(WORKERS_ALIVE, "server" => server()).set(0.0);
    gauge!(OLDEST_BLOCKED, "server" => server()).set(0.0);
}
