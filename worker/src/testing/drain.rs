//! [`Drain`]: runs a queue's jobs to the end in the test's own process, one at a time, with a
//! test clock. Each job is claimed as a worker claims it and its outcome written by the
//! runtime's own `finish`, so transitions, results, retries, dependents and workflow
//! callbacks are exactly what a worker leaves; only time is the test's.

use std::time::Duration;

use jobq_producer::{JobId, JobState};
use sqlx::MySqlPool;

use super::perform::{self, Attempt, Performed};
use crate::error::{Error, Result};
use crate::ids::WorkerId;
use crate::machine::attempt;
use crate::model::{Decision, Fence};
use crate::registry::Registry;
use crate::store::testing::{self as store, Pick};
use crate::store::{self as jobs, FinishWrite};
use crate::Config;

/// The lease `Drain` writes on a job it runs: long, as nothing renews it.
const LEASE: Duration = Duration::from_secs(3600);

/// The most jobs one drain runs unless [`Drain::limit`] says otherwise.
pub const DEFAULT_DRAIN_LIMIT: u64 = 10_000;

/// Runs jobs in the test's process, as a worker would, one at a time, with a test clock.
///
/// The clock starts at the server's and moves only when the test says
/// ([`Drain::advance`]) or, with [`Drain::with_scheduled`], to each next due job when
/// nothing else is left: so a delayed job, a backoff or a snooze is reached without sleeping.
/// A drain ignores pauses, rate limits and concurrency limits (it runs one job at a time);
/// blocked jobs run once their parents have ended, as with a worker.
#[derive(Clone, Debug)]
pub struct Drain {
    runner: Runner,
    ahead: Duration,
    with_scheduled: bool,
    limit: u64,
}

/// One job a drain ran.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DrainedRun {
    /// The job.
    pub id: JobId,
    /// Its kind.
    pub kind: String,
    /// The attempt that ran.
    pub attempt: u32,
    /// How it ended.
    pub performed: Performed,
}

/// What a drain ran, counted by the state each attempt left its job in.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Drained {
    /// Attempts that completed their job.
    pub completed: u64,
    /// Attempts that failed with attempts left (`retryable`).
    pub retryable: u64,
    /// Attempts that discarded their job.
    pub discarded: u64,
    /// Attempts that cancelled their job.
    pub cancelled: u64,
    /// Attempts that snoozed (`scheduled` again).
    pub snoozed: u64,
    /// Every attempt, in the order they ran.
    pub runs: Vec<DrainedRun>,
}

impl Drained {
    /// Attempts run.
    pub fn total(&self) -> u64 {
        self.runs.len() as u64
    }

    fn count(&mut self, run: DrainedRun) {
        match run.performed.state {
            JobState::Completed => self.completed += 1,
            JobState::Retryable => self.retryable += 1,
            JobState::Discarded => self.discarded += 1,
            JobState::Cancelled => self.cancelled += 1,
            _ => self.snoozed += 1,
        }
        self.runs.push(run);
    }
}

impl Drain {
    /// A drain of jobs through `registry`'s handlers, with the default configuration's
    /// `job_timeout` and backoff.
    pub fn new(pool: &MySqlPool, registry: &Registry) -> Result<Drain> {
        Ok(Drain {
            runner: Runner::new(pool, registry)?,
            ahead: Duration::ZERO,
            with_scheduled: false,
            limit: DEFAULT_DRAIN_LIMIT,
        })
    }

    /// Takes `job_timeout` and backoff from `config` (its `[queues]` and `[kinds]` sections
    /// included).
    pub fn config(mut self, config: &Config) -> Self {
        self.runner.config = config.clone();
        self
    }

    /// When nothing is due, moves the clock to the next `scheduled` or `retryable` job and
    /// goes on, until none is left: every retry runs until it completes or its attempts are
    /// used up, every snooze until it ends.
    pub fn with_scheduled(mut self, yes: bool) -> Self {
        self.with_scheduled = yes;
        self
    }

    /// The most attempts one call may run; reaching it is an error (a job that enqueues
    /// itself forever, a snooze that never ends). Default [`DEFAULT_DRAIN_LIMIT`].
    pub fn limit(mut self, attempts: u64) -> Self {
        self.limit = attempts;
        self
    }

    /// Moves the test clock `by` forward: jobs due by then are run by the next drain.
    pub fn advance(&mut self, by: Duration) {
        self.ahead += by;
    }

    /// How far the test clock is ahead of the server's.
    pub fn ahead(&self) -> Duration {
        self.ahead
    }

    /// Runs every job of `queue` due by the test clock, and the jobs they lead to there
    /// (enqueued by a handler, released by a parent's end, a workflow's callback), until none
    /// is due.
    pub async fn queue(&mut self, queue: &str) -> Result<Drained> {
        self.queues(&[queue]).await
    }

    /// [`Drain::queue`] over several queues, in claim order across them.
    pub async fn queues(&mut self, queues: &[&str]) -> Result<Drained> {
        let names: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
        self.run(Some(names)).await
    }

    /// [`Drain::queue`] over every queue that has jobs.
    pub async fn all(&mut self) -> Result<Drained> {
        self.run(None).await
    }

    async fn run(&mut self, queues: Option<Vec<String>>) -> Result<Drained> {
        let mut drained = Drained::default();
        loop {
            let mut conn = self.runner.pool.acquire().await?;
            let names = match &queues {
                Some(q) => q.clone(),
                None => store::queues(&mut conn).await?,
            };
            if names.is_empty() {
                return Ok(drained);
            }
            store::promote_by_clock(&mut conn, &names, self.ahead).await?;
            if drained.total() >= self.limit {
                // At the limit: fail if anything is still to run, before claiming it (a claim
                // left behind would wedge the job in `running`).
                let next = match store::peek_next(&mut conn, &names).await? {
                    Some((id, kind)) => Some(format!("job {id} of kind {kind:?} is due")),
                    None if self.with_scheduled => store::next_due(&mut conn, &names)
                        .await?
                        .map(|_| "jobs are still scheduled".to_owned()),
                    None => None,
                };
                return match next {
                    None => Ok(drained),
                    Some(next) => Err(Error::Invalid(format!(
                        "the drain ran {} attempts and {next}; a job that enqueues itself or \
                         snoozes forever never drains: raise Drain::limit if that many are \
                         expected",
                        drained.total()
                    ))),
                };
            }
            let token = rand::random();
            let claimed = store::claim_one(
                &mut conn,
                Pick::Next(&names),
                self.runner.worker.as_str(),
                token,
                LEASE,
            )
            .await?;
            let Some(job) = claimed else {
                if self.with_scheduled {
                    if let Some(due) = store::next_due(&mut conn, &names).await? {
                        // Past it by a millisecond: the server's clock moved on meanwhile,
                        // and `run_at <= now + ahead` must hold.
                        self.ahead = self.ahead.max(due + Duration::from_millis(1));
                        continue;
                    }
                }
                return Ok(drained);
            };
            drop(conn);
            let run = self.runner.perform(job, token, self.ahead).await?;
            drained.count(run);
        }
    }
}

/// What runs claimed jobs for [`Drain`] and [`super::Inline`].
#[derive(Clone, Debug)]
pub(crate) struct Runner {
    pub(crate) pool: MySqlPool,
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    pub(crate) worker: WorkerId,
    /// Writes the log lines and progress of the jobs it runs.
    pub(crate) journal: crate::journal::Writer,
}

impl Runner {
    /// Through `registry`'s handlers, with the default configuration.
    pub(crate) fn new(pool: &MySqlPool, registry: &Registry) -> Result<Runner> {
        Ok(Runner {
            pool: pool.clone(),
            registry: registry.clone(),
            config: perform::default_config()?,
            worker: WorkerId::generate(),
            journal: crate::journal::Writer::new(pool.clone(), false),
        })
    }

    /// Claims job `id` if it is `available`, runs it and writes its outcome; `None` when it
    /// was not available.
    pub(crate) async fn run_one(&self, id: u64) -> Result<Option<DrainedRun>> {
        let token = rand::random();
        let mut conn = self.pool.acquire().await?;
        let claimed =
            store::claim_one(&mut conn, Pick::Id(id), self.worker.as_str(), token, LEASE).await?;
        drop(conn);
        match claimed {
            Some(job) => Ok(Some(self.perform(job, token, Duration::ZERO).await?)),
            None => Ok(None),
        }
    }

    /// The outcome write of the attempt `fence` holds.
    fn write<'a>(
        &'a self,
        fence: Fence,
        attempt: u32,
        linked: bool,
        decision: &'a Decision,
        result: Option<&'a str>,
    ) -> FinishWrite<'a> {
        FinishWrite {
            fence,
            attempt,
            worker: &self.worker,
            decision,
            result,
            on_cancel: attempt::overridden_by_cancel,
            linked,
            rules: jobq_producer::deps::RULES,
        }
    }

    /// Runs one claimed job and writes its outcome. A delay (backoff, snooze) counts from the
    /// test clock, `ahead` of the server's: the job is due `ahead + delay` from the server's
    /// now.
    pub(crate) async fn perform(
        &self,
        job: store::Claimed,
        token: crate::model::Token,
        ahead: Duration,
    ) -> Result<DrainedRun> {
        let (queue, kind) = perform::names(&job.queue, &job.kind)?;
        let attempt = Attempt {
            id: job.id,
            queue,
            kind,
            payload: job.payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            token,
            worker: self.worker.clone(),
            trace: job.trace,
        };
        let mut ran = perform::run(
            &self.pool,
            &self.registry,
            &self.config,
            &attempt,
            Some(&self.journal),
        )
        .await;
        let mut decision = ran.decide(&attempt, &self.config);
        let result = ran.result.clone();
        let fence = Fence { id: job.id, token };
        let write = |d| self.write(fence, job.attempt, job.linked, d, result.as_deref());
        let mut written = false;
        if let Some(mut tx) = ran.tx.take() {
            if decision.to == JobState::Completed {
                if jobs::tx_intact(&mut tx).await? {
                    // Fenced off (the job was taken back meanwhile): the handler's writes go
                    // with the outcome that was not written, as with a worker.
                    match jobs::finish(&mut tx, write(&decision)).await? {
                        Some(_) => tx.commit().await?,
                        None => tx.rollback().await?,
                    }
                    written = true;
                } else {
                    tx.rollback().await?;
                    ran.outcome = attempt::Outcome::Error {
                        message: "the handler's transaction (ctx.tx()) was ended by the server \
                                  before the job could complete in it"
                            .into(),
                        retry_after: None,
                    };
                    decision = ran.decide(&attempt, &self.config);
                }
            } else {
                tx.rollback().await?;
            }
        }
        if !written {
            let mut on_clock = decision.clone();
            on_clock.delay = on_clock.delay.map(|d| d + ahead);
            jobs::finish_tx(&self.pool, write(&on_clock)).await?;
        }
        Ok(DrainedRun {
            id: JobId(job.id),
            kind: job.kind,
            attempt: job.attempt,
            performed: ran.performed(&decision),
        })
    }
}
