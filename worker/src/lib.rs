//! jobq worker runtime: claim jobs from MySQL/MariaDB, run typed handlers, record every
//! transition.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use jobq_worker::{Job, JobContext, JobError, Registry, Shutdown, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail { to: String }
//! impl Job for SendEmail { const KIND: &'static str = "send_email"; }
//!
//! let config = jobq_config::load(None)?;
//! let pool = jobq_worker::connect(&config).await?;
//! let mut registry = Registry::new();
//! registry.register::<SendEmail>(|job: SendEmail, ctx: JobContext| async move {
//!     println!("attempt {} mails {}", ctx.attempt(), job.to);
//!     Ok::<(), JobError>(())
//! })?;
//! let (shutdown, signal) = Shutdown::new();
//! jobq_worker::on_signals(shutdown)?; // SIGTERM/SIGINT: graceful, then immediate
//! Worker::new(pool, registry, &config).run(signal).await?;
//! # Ok(()) }
//! ```
//!
//! Guarantees (see the README for the timings): a job is run at least once; at most one worker
//! runs a job at a time while leases hold; database writes made in [`JobContext::tx`] commit
//! exactly once, together with the job's completion.
//!
//! Where things live: [`Worker`] (`worker.rs`) wires the private runtime (`runtime/`: claimer,
//! executor, recorder, heartbeat, maintenance, the in-flight table, the retry policy); every
//! decision about a job's next state is in `machine/` (pure, table-tested); all SQL is in
//! `store/`, which writes what `machine/` decided and decides nothing; `model/` holds the
//! values passed between them.

mod acts;
pub mod builtin;
mod command;
mod db;
#[cfg(test)]
mod docs_tests;
mod error;
mod handler;
mod health;
mod history;
mod ids;
mod inspect;
mod journal;
mod machine;
pub mod metrics;
mod model;

/// Every Rust snippet of README.md, compiled as a doctest (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeSnippets;
mod panics;
mod registry;
mod runtime;
mod shutdown;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod trace;
#[cfg(feature = "console")]
pub mod web;
mod worker;
mod workflows;

pub use acts::{act_on_filter, act_on_jobs, count_jobs, ActTally};
pub use command::{register_commands, EXIT_DISCARD, EXIT_SNOOZE};
pub use db::{check_migrated, check_server, check_server_limits, migrate};
pub use error::{Error, Result};
pub use handler::{BoxError, Handler, JobContext, JobError, JobTx, Parent, MAX_RESULT_BYTES};
pub use health::{Health, Loop, Status};
pub use history::{apply_history_layout, HistoryReport};
pub use ids::{hostname, WorkerId};
pub use inspect::{
    job_with_history, list_jobs, list_jobs_page, list_schedules, pause_queue, pause_schedule,
    prune_jobs, queues_handling, resume_queue, resume_schedule, run_schedule_now, stats, workers,
    JobPage, QueueStats, ScheduleInfo, Stats, KIND_SEEN_WITHIN,
};
pub use jobq_config::Config;
/// Distributed locks (session, lease, semaphore, leader election): the `jobq-lock` crate.
pub use jobq_lock as lock;
pub use jobq_producer::deps::FlowState;
/// The producer's error (validation, enqueue, schema), as `jobq_producer::Error`.
pub use jobq_producer::Error as ProducerError;
pub use jobq_producer::{
    job_logs, job_progress, migrations_sql, run_again_if_rolled_back, same_server, server_name,
    Batch, Enqueued, Followed, Job, JobEnd, JobId, JobState, KindName, LogLine, MigrateReport,
    NewJob, OnDuplicate, OnParentFailure, Producer, ProducerOptions, Progress, QueueName,
    TraceContext, Workflow, WorkflowEnqueued, WorkflowId,
};
pub use jobq_sqlkit::OwnedTx;
pub use journal::{
    LOG_LINE_OVERHEAD_BYTES, MAX_LOG_BYTES, MAX_LOG_LINE_BYTES, MAX_PROGRESS_MESSAGE_CHARS,
};
pub use machine::attempt::is_valid;
pub use model::{Act, Acted, Event};
pub use panics::install_panic_hook;
pub use registry::Registry;
pub use runtime::prune_finished;
pub use shutdown::{on_signals, Shutdown, ShutdownSignal, Stopped};
pub use store::{JobFilter, JobOrder, JobRecord, JobSummary, TransitionRecord, WorkerInfo};
pub use worker::Worker;
pub use workflows::{
    cancel_workflow, list_workflows, retry_workflow, to_dot, to_mermaid, workflow, WorkflowActed,
    WorkflowCallback, WorkflowDetail, WorkflowJob, WorkflowSummary,
};

/// A pool for `config`: `database.max_connections` connections, or the process's total
/// concurrency + 8 when 0. Every connection runs at READ COMMITTED with a UTC time zone, strict
/// SQL mode and `database.lock_wait_timeout_secs`.
pub async fn connect(config: &Config) -> Result<sqlx::MySqlPool> {
    db::pool(config).await
}

/// A producer configured from `config.producer`.
pub fn producer(pool: sqlx::MySqlPool, config: &Config) -> Producer {
    Producer::with_options(pool, producer_options(config))
        .group_commit(config.producer().group_commit)
}

/// A producer for `config` over `pool` (the top-level `database_url`'s), with a pool of its
/// own for every other server a queue names (`[queues.NAME] database_url`), that queue's jobs
/// routed there (see [`Producer::route`]).
pub async fn routed_producer(pool: sqlx::MySqlPool, config: &Config) -> Result<Producer> {
    let mut p = producer(pool, config);
    for url in config.servers().into_iter().skip(1) {
        let queues = config
            .configured_queues()
            .filter(|q| config.lives_on(q.as_str(), url))
            .map(|q| q.to_string());
        p = p.route(queues, db::pool(&on_server(config, url)?).await?);
    }
    Ok(p)
}

/// `config` with `url` as its `database_url`: what a command acting on another server of the
/// configuration uses.
pub fn on_server(config: &Config, url: &str) -> Result<Config> {
    let mut s = config.settings().clone();
    s.database_url = url.to_owned();
    Ok(s.validate()?)
}

/// The producer options `config.producer` asks for.
pub fn producer_options(config: &Config) -> ProducerOptions {
    ProducerOptions {
        max_payload_bytes: config.producer().max_payload_bytes,
        default_max_attempts: config.producer().default_max_attempts,
        max_json_depth: config.producer().max_json_depth,
    }
}
