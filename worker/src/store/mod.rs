//! All SQL of the worker crate, one file per concern. The store decides nothing: it reads what a
//! decision needs, and writes what `machine/` decided (given as values of `model/`, or as a
//! rule the runtime passes in); it imports no decision module.
//!
//! - [`acts`]: operators' acts on jobs by id (cancel, retry, discard);
//! - `console`: the web console's reads of recent history (throughput chart, failures; feature
//!   `console`);
//! - [`claim`]: the claim transaction's reads in typed steps (hot path);
//! - [`claim_write`]: the claim's final round trip, writing its plan, and its typed error;
//! - [`named_lock`]: `GET_LOCK` and `RELEASE_LOCK` of `named-lock` claims;
//! - [`finish`]: writing an attempt's outcome, batched completions (hot path);
//! - [`journal`]: an attempt's log lines and progress (`ctx.log`, `ctx.progress`);
//! - [`deps`]: what jobs ending means for the jobs that depend on them and their workflows;
//! - [`repair`]: the leader's pass over blocked jobs whose release was lost;
//! - [`keys`]: concurrency keys: the claim's key locks and counts, promotion of waiting jobs;
//! - [`kinds`]: which kinds workers handle on which queues (`jobq enqueue`'s warning);
//! - [`lease`]: lease extension and the worker rows (heartbeat);
//! - [`maintenance`]: leader lease, promotion, rescue, retention (leader only);
//! - [`partitions`]: the history table's partitions and their DDL (`jobq migrate`, leader);
//! - [`inspect`]: read-only views for the CLI and operators: counts, a job, its history,
//!   workers;
//! - [`listing`]: jobs listed by filter and paged, and counted by the same filter;
//! - [`queues`]: queue state every worker obeys (pause/resume);
//! - [`schedules`]: recurring jobs' rows (the leader's lock and mark, pause, listing);
//! - [`workflows`]: workflows for operators: list, show, cancel, retry;
//! - [`demo`]: the `record` built-in kind's effects table;
//! - `testing`: the test kit's reads and `Drain`'s clocked promotion and claim (feature
//!   `testing`);
//! - [`sql`]: the literal layer and the raw-transaction guard every file above uses.
//!
//! Rules every statement follows:
//! - time comparisons use the database clock (`UTC_TIMESTAMP(6)`), never the client's;
//! - a write about a running job is fenced by `(id, claim_token)` and `state = 'running'`, so a
//!   worker whose claim was rescued and re-claimed elsewhere changes nothing;
//! - each state change writes its `jobq_transitions` row in the same transaction;
//! - the transactions are short and run at READ COMMITTED (set per session in `db.rs`), so
//!   locking reads lock only the rows they return and take no gap locks.

mod acts;
mod claim;
mod claim_write;
#[cfg(feature = "console")]
mod console;
mod demo;
mod deps;
mod finish;
mod inspect;
mod journal;
mod keys;
mod kinds;
mod lease;
mod listing;
mod maintenance;
mod named_lock;
mod partitions;
mod queues;
mod repair;
mod schedules;
mod sql;
#[cfg(feature = "testing")]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub(crate) mod workflows;

use std::time::Duration;

use sqlx::mysql::MySqlRow;
use sqlx::Row;

pub(crate) use acts::apply as apply_act;
pub(crate) use claim::{ClaimLock, ClaimTx, First, JobRead, Opening};
pub(crate) use claim_write::ClaimError;
#[cfg(feature = "console")]
pub(crate) use console::{last_hour, recent_failures, Minute};
pub(crate) use demo::{
    create_effects_table, create_runs_table, insert_effect, run_ended, run_started, runs_ended_for,
};
pub(crate) use deps::{parents_of, settle_discarded};
pub(crate) use finish::{
    complete_batch, complete_linked, completed_with_token, finish, finish_tx, held_by_claim,
    mark_tx, state_by_fence, tx_intact, FinishWrite,
};
pub(crate) use inspect::{
    count_in_state, history, job, queue_activity, queues_with_jobs, workers, EXACT_UP_TO,
};
pub use inspect::{JobRecord, TransitionRecord, WorkerInfo};
pub(crate) use journal::write_journal;
pub(crate) use keys::{keys_to_promote, promote_waiting, prune_keys, running_now, KeyCursor};
pub(crate) use kinds::{kind_queues, note_kinds};
pub(crate) use lease::{
    beat_worker, deregister_worker, extend_leases, register_worker, LeaseReport, WorkerRow,
};
#[cfg(feature = "console")]
pub(crate) use listing::newest_job;
pub(crate) use listing::{count_jobs, list_jobs, list_page};
pub use listing::{JobFilter, JobOrder, JobSummary};
pub(crate) use maintenance::{
    pending, promote_due, prune, prune_workers, prune_workflows, rescue_expired, sample_depth,
    PruneCursor,
};
pub(crate) use named_lock::{get_lock, lock_name, release_lock};
pub(crate) use partitions::{
    add_partitions, drop_partitions, history_by_time, history_layout, limit_ddl_wait,
    oldest_history, partition_history, rows_past_bounds, server_now, unpartition_history,
    HistoryLayout,
};
pub(crate) use queues::{pause, paused, resume};
pub(crate) use repair::{repair, RepairCursor};
pub(crate) use schedules::{lock_schedule, mark_schedule, schedule_rows, set_schedule_paused};
pub(crate) use sql::{begin, Dedicated, Session, ROUND_TRIP_BUDGET};

use crate::model::{Fence, Token};

/// Reads a text column. Columns with a `_bin` collation arrive flagged binary, which sqlx will
/// not decode as `String`; read the bytes and check they are UTF-8.
fn text(r: &MySqlRow, col: &str) -> Result<String, sqlx::Error> {
    opt_text(r, col)?.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: "unexpected NULL".into(),
    })
}

/// A job's stored trace context (`traceparent`, `tracestate`), if it has one.
fn trace_of(r: &MySqlRow) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    match opt_text(r, "traceparent")? {
        Some(p) => Ok(Some((p, opt_text(r, "tracestate")?))),
        None => Ok(None),
    }
}

fn opt_text(r: &MySqlRow, col: &str) -> Result<Option<String>, sqlx::Error> {
    let bytes: Option<Vec<u8>> = r.try_get(col)?;
    bytes
        .map(|b| {
            String::from_utf8(b).map_err(|e| sqlx::Error::ColumnDecode {
                index: col.to_owned(),
                source: Box::new(e),
            })
        })
        .transpose()
}

/// A duration in whole microseconds for `INTERVAL ? MICROSECOND`, saturating.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
