//! jobq producer: the job contract and enqueueing.
//!
//! This crate is the light half of jobq: it owns the schema ([`migrate`], kept in its own `jobq_migrations` table), the job states and
//! the [`Job`] trait, and inserts jobs over a `MySqlPool` or inside the caller's own transaction.
//! The worker runtime lives in `jobq-worker` and depends on this crate, never the reverse.
//!
//! ```no_run
//! # async fn demo(pool: sqlx::MySqlPool) -> Result<(), jobq_producer::Error> {
//! use jobq_producer::{Job, NewJob, Producer};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail { to: String }
//! impl Job for SendEmail { const KIND: &'static str = "send_email"; }
//!
//! let producer = Producer::new(pool.clone());
//! // One job, typed.
//! let id = producer.enqueue(NewJob::new(&SendEmail { to: "a@example.com".into() })?).await?;
//! // Inside your own transaction: the job exists only if you commit.
//! let mut tx = pool.begin().await?;
//! producer.enqueue_in(&mut tx, NewJob::json("audit", serde_json::json!({"id": 1})).queue("low")).await?;
//! tx.commit().await?;
//! # let _ = id; Ok(()) }
//! ```
//!
//! Guarantees: validation (names, JSON, size) happens before any write, and every enqueue call
//! is atomic — all of its jobs and their `enqueued` history rows are written, or none.

pub mod deps;
mod error;
mod failover;
mod follow;
mod group;
mod hook;
mod job;
mod json;
mod migrate;
mod notify;
mod producer;
mod store;
mod trace;
mod workflow;

pub use deps::OnParentFailure;
pub use error::{Error, Result};
pub use failover::{
    connect_cluster, connect_direct, first_healthy_url, rotate_hosts, same_server, server_name,
    server_url, split_hosts, FAILS_TO_LEAVE, PROBE_EVERY, PROBE_TIMEOUT, SETTLE,
};
pub use follow::{job_logs, job_progress, Followed, LogLine, Progress, FOLLOW_INTERVAL};
pub use hook::EnqueueHook;
pub use job::{
    validate_kind, validate_queue, Job, JobId, JobState, KindName, QueueName, DEFAULT_QUEUE,
};
pub use json::{check as check_json, MYSQL_MAX_DEPTH, PORTABLE_MAX_DEPTH};
pub use migrate::{
    check_migrated, latest_version, migrate, migrate_conn, migrations, migrations_sql,
    refuse_while_workers_run, MigrateReport, Migration,
};
pub use notify::{job_written, subscribe, Subscription};
pub use producer::{
    run_again_if_rolled_back, Enqueued, JobEnd, NewJob, OnDuplicate, Producer, ProducerOptions,
    UNIQUE_KEY_CHARS,
};
pub use store::CHUNK_BYTES;
pub use trace::{TraceContext, MAX_TRACESTATE_CHARS};
pub use workflow::{Batch, Workflow, WorkflowEnqueued, WorkflowId, WORKFLOW_NAME_CHARS};
