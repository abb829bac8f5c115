//! [`Inline`]: an application test's producer whose jobs run at once, in the enqueuing task
//! ([`Mode::Inline`]), or are only recorded for the test to look at ([`Mode::Manual`]). It
//! hangs on the producer's [`jobq_producer::EnqueueHook`], so the code under test keeps
//! calling `producer.enqueue(…)` as in production.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use jobq_producer::{EnqueueHook, JobId, Producer};
use sqlx::MySqlPool;

use super::drain::{DrainedRun, Runner};
use crate::error::Result;
use crate::registry::Registry;
use crate::Config;

/// What an [`Inline`] does with the jobs a producer enqueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each enqueued job that is `available` runs at once through its handler, in the task
    /// that enqueued it, before the enqueue returns; its outcome is written as a worker's
    /// would be. A workflow's jobs run as their parents release them. Jobs with a delay wait
    /// (run them with [`super::Drain`]).
    Inline,
    /// Nothing runs: the ids are recorded ([`Inline::enqueued`]), the jobs stay in the
    /// database for [`super::assert_enqueued`] and [`super::Drain`].
    Manual,
}

/// How deep inline runs may nest (a handler enqueueing a job that runs inline and enqueues
/// another…) before the hook stops with a panic naming the jobs (inside the enqueuing
/// handler, whose job then fails with it): a job that enqueues itself would otherwise recurse
/// until the stack overflows.
pub const MAX_INLINE_DEPTH: u32 = 16;

tokio::task_local! {
    /// How many inline runs enclose the current one, in this task.
    static DEPTH: u32;
}

/// The test kit's producer hook; see [`Mode`]. Clones share what they recorded.
///
/// Only enqueues that commit in the producer's own transaction reach it: jobs enqueued in
/// the caller's transaction (`enqueue_in`) exist only once the caller commits, so run them
/// with [`super::Drain`]. A database error while running a job inline panics (this is a test
/// helper): the enqueue's caller would otherwise never learn of it; so does nesting deeper
/// than [`MAX_INLINE_DEPTH`]. The job runs while the enqueuing code waits: rows that code
/// holds locked in an open transaction of its own block the handler (until the server's lock
/// wait timeout). A workflow's callbacks are inserted when it ends and not run inline: run them
/// with [`super::Drain`].
#[derive(Clone, Debug)]
pub struct Inline {
    mode: Mode,
    runner: Arc<Runner>,
    enqueued: Arc<Mutex<Vec<JobId>>>,
    runs: Arc<Mutex<Vec<DrainedRun>>>,
}

impl Inline {
    /// A hook running (or recording) jobs through `registry`'s handlers, with the default
    /// configuration's `job_timeout` and backoff.
    pub fn new(pool: &MySqlPool, registry: &Registry, mode: Mode) -> Result<Inline> {
        Ok(Inline {
            mode,
            runner: Arc::new(Runner::new(pool, registry)?),
            enqueued: Arc::default(),
            runs: Arc::default(),
        })
    }

    /// Takes `job_timeout` and backoff from `config`.
    pub fn config(mut self, config: &Config) -> Self {
        let mut runner = (*self.runner).clone();
        runner.config = config.clone();
        self.runner = Arc::new(runner);
        self
    }

    /// `producer`, with this hook: give it to the code under test.
    pub fn attach(&self, producer: Producer) -> Producer {
        producer.with_hook(Arc::new(self.clone()))
    }

    /// Every job enqueued through an attached producer so far, in order.
    pub fn enqueued(&self) -> Vec<JobId> {
        self.enqueued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every attempt run inline so far, in the order they ran.
    pub fn runs(&self) -> Vec<DrainedRun> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `ids` that are available until none of them is: a job released by another of
    /// them (a workflow's child) runs in a later pass.
    async fn run(&self, ids: &[JobId]) {
        loop {
            let mut ran = false;
            for id in ids {
                let run = self.runner.run_one(id.0).await.unwrap_or_else(|e| {
                    panic!("the test kit's inline mode could not run job {id}: {e}")
                });
                if let Some(run) = run {
                    ran = true;
                    self.runs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(run);
                }
            }
            if !ran {
                return;
            }
        }
    }
}

impl EnqueueHook for Inline {
    fn enqueued<'a>(
        &'a self,
        _pool: &'a MySqlPool,
        ids: &'a [JobId],
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        self.enqueued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(ids);
        Box::pin(async move {
            if self.mode == Mode::Inline {
                let depth = DEPTH.try_with(|d| *d).unwrap_or(0);
                if depth >= MAX_INLINE_DEPTH {
                    panic!(
                        "the test kit's inline mode nested {depth} runs deep (jobs {ids:?} were \
                         enqueued by a job that ran inline, itself enqueued by one…): a job that \
                         enqueues itself never ends; use Mode::Manual and a Drain with a limit"
                    );
                }
                DEPTH.scope(depth + 1, self.run(ids)).await;
            }
        })
    }
}
