//! jobq worker runtime: claim jobs from MySQL/MariaDB, run typed handlers, record every
//! transition.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jobq_worker::Error> {
//! use jobq_worker::{Job, JobContext, JobError, Registry, Shutdown, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail { to: String }
//! impl Job for SendEmail { const KIND: &'static str = "send_email"; }
//!
//! let settings = jobq_config::load(None)?;
//! let pool = jobq_worker::connect(&settings).await?;
//! let mut registry = Registry::new();
//! registry.register::<SendEmail, _>(|job: SendEmail, ctx: JobContext| async move {
//!     println!("attempt {} mails {}", ctx.attempt(), job.to);
//!     Ok::<(), JobError>(())
//! })?;
//! let (shutdown, signal) = Shutdown::new();
//! # drop(shutdown);
//! Worker::new(pool, registry, &settings).run(signal).await?;
//! # Ok(()) }
//! ```
//!
//! Guarantees (see the README for the timings): a job is run at least once; at most one worker
//! runs a job at a time while leases hold; database writes made in [`JobContext::tx`] commit
//! exactly once, together with the job's completion.

pub mod builtin;
mod error;
mod handler;
mod inspect;
pub mod metrics;
mod registry;
mod server;
mod store;
mod transition;
mod worker;

pub use error::{codes, Error, Result};
pub use handler::{BoxError, Handler, JobContext, JobError, JobTx};
pub use inspect::{job_with_history, stats, QueueStats, Stats};
pub use jobq_producer::{Job, JobId, JobState, NewJob, Producer, ProducerOptions, MIGRATOR};
pub use registry::Registry;
pub use server::{check_migrated, connect as connect_with, detect, migrate, Flavor, ServerInfo};
pub use store::{explain_claim, JobRecord, TransitionRecord};
pub use transition::{backoff, decide, is_valid, Backoff, Decision, Event, Outcome};
pub use worker::{Shutdown, ShutdownSignal, Stopped, Worker};

/// A pool sized for `settings`: `database.max_connections`, or total concurrency + 8 when 0.
pub async fn connect(settings: &jobq_config::Settings) -> Result<sqlx::MySqlPool> {
    let max = match settings.database.max_connections {
        0 => {
            let total: u32 = settings
                .worker
                .queues
                .iter()
                .map(|q| settings.queue(q).concurrency)
                .sum();
            total + 8
        }
        n => n,
    };
    server::connect(settings, max).await
}

/// A producer configured from `settings.producer`.
pub fn producer(pool: sqlx::MySqlPool, settings: &jobq_config::Settings) -> Producer {
    Producer::with_options(
        pool,
        ProducerOptions {
            max_payload_bytes: settings.producer.max_payload_bytes,
            default_max_attempts: settings.producer.default_max_attempts,
        },
    )
}

/// Fenced writes and benchmark SQL exposed for the integration tests and `jobq bench`. Not part
/// of the API.
#[doc(hidden)]
pub mod testing {
    use crate::store::{self, Fence};
    pub use crate::store::{
        bench_finish_all, bench_reset, ceiling_batch, completed_in, pickup_latencies, run_span,
        server_counters,
    };

    /// One claim of up to `n` jobs of `kinds` in `queue`, as a worker makes it (skip-locked).
    pub async fn claim_once(
        pool: &sqlx::MySqlPool,
        queue: &str,
        kinds: &[String],
        n: u32,
    ) -> Result<usize, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let (jobs, _) = store::claim(
            &mut conn,
            queue,
            kinds,
            n,
            "bench",
            Duration::from_secs(60),
            true,
            None,
        )
        .await?;
        Ok(jobs.len())
    }
    use crate::transition::{decide, Backoff, Outcome};
    use std::time::Duration;

    fn fence(id: u64, token: &[u8]) -> Fence {
        Fence {
            id,
            token: token.try_into().expect("16-byte token"),
        }
    }

    /// Completes job `id` as the holder of `token` would (single-job path).
    pub async fn complete_with_token(
        pool: &sqlx::MySqlPool,
        id: u64,
        token: &[u8],
        attempt: u32,
    ) -> Result<bool, sqlx::Error> {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let d = decide(&Outcome::Success, attempt, attempt, b, 1.0);
        store::finish_tx(pool, fence(id, token), attempt, "test", &d).await
    }

    /// Completes job `id` as the holder of `token` would (batched path).
    pub async fn complete_batch_with_token(
        pool: &sqlx::MySqlPool,
        id: u64,
        token: &[u8],
    ) -> Result<u64, sqlx::Error> {
        store::complete_batch(pool, &[fence(id, token)]).await
    }
}
