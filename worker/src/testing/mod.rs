//! The test kit for handlers and the code that enqueues (feature `testing`; README "Testing
//! your handlers"). Everything runs against a real MySQL/MariaDB test database, such as the
//! one `#[sqlx::test]` gives each test; nothing is mocked.
//!
//! - [`assert_enqueued`], [`refute_enqueued`], [`all_enqueued`] with an [`Expect`]: what the
//!   code under test enqueued (kind, queue, a payload subset, priority, due time, state,
//!   parents, workflow), read through a pool or the test's own open transaction;
//! - [`perform_job`] / [`Perform`]: one attempt through the real handler, without a job row,
//!   and what the runtime decides of it ([`Performed`]: completed with its result, retry with
//!   its delay, snooze, discard, cancel; a panic or timeout named as such);
//! - [`Drain`]: the jobs of a queue (and those they lead to) run to the end in the test's
//!   process as a worker would run them, with a test clock ([`Drain::advance`],
//!   [`Drain::with_scheduled`]) so delays, backoffs and snoozes need no sleeping; it returns
//!   counts per outcome ([`Drained`]);
//! - [`Inline`]: a [`crate::Producer`] whose enqueued jobs run at once in the caller's task,
//!   or are only recorded ([`Mode`]).
//!
//! Workflows need nothing more: `assert_enqueued(&pool, Expect::kind("report").state(
//! JobState::Blocked).after(parent))` checks a child waits for its parents, and a drain runs
//! a workflow through to its callbacks.

mod drain;
mod expect;
mod inline;
mod perform;

pub use drain::{Drain, Drained, DrainedRun, DEFAULT_DRAIN_LIMIT};
pub use expect::{
    all_enqueued, assert_enqueued, refute_enqueued, EnqueuedJob, Expect, ENQUEUED_STATES,
    MAX_JOBS_READ, SCHEDULED_AT_TOLERANCE,
};
pub use inline::{Inline, Mode, MAX_INLINE_DEPTH};
pub use perform::{perform_job, Outcome, Perform, Performed};

/// Creates jobq's tables in a test's database (the migrations `jobq migrate` applies), next
/// to the application's own: `jobq_worker::testing::migrate(&pool).await?` at the start of a
/// `#[sqlx::test]`.
pub async fn migrate(pool: &sqlx::MySqlPool) -> crate::Result<jobq_producer::MigrateReport> {
    Ok(jobq_producer::migrate(pool).await?)
}

#[cfg(test)]
mod tests;
