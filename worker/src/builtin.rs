//! Built-in job kinds, so jobq can be tried, benchmarked and deployment-tested without writing
//! Rust: `noop`, `sleep`, `fail`, `panic`, `record`, `echo`.

use std::time::Duration;

use jobq_producer::Job;
use serde::{Deserialize, Serialize};

use crate::error::{codes, is_number, Result};
use crate::handler::{JobContext, JobError};
use crate::registry::Registry;
use crate::store;

/// `noop`: does nothing. Any JSON object payload is accepted.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Noop {}
impl Job for Noop {
    const KIND: &'static str = "noop";
}

/// `echo`: completes with its payload as its result (`jobq enqueue echo --payload '{"a":1}'
/// --wait` prints `{"a":1}`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Echo(pub serde_json::Value);
impl Job for Echo {
    const KIND: &'static str = "echo";
}

/// `sleep {"ms": N, "steps": K?}`: sleeps N milliseconds; with `steps`, in K equal steps,
/// logging `step i of K` and reporting its progress after each (`ctx.log`, `ctx.progress`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sleep {
    /// Milliseconds.
    pub ms: u64,
    /// Steps to report, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
}
impl Job for Sleep {
    const KIND: &'static str = "sleep";
}

/// `fail`: fails on purpose, to see each outcome end to end from the shell:
/// `{"times": N?, "with": W?, "delay": D?, "message": M?, "repeat": R?}`.
///
/// Its first N attempts (every attempt when `times` is absent) end with outcome W; later ones
/// succeed. W is `error` (default: retried with backoff, discarded after the last attempt),
/// `panic`, `discard`, `cancel`, `snooze` (after D, default 100 ms; the attempt does not count)
/// or `retry_after` (retried after D, default 1 s). The error text is M (default: says which
/// attempt failed on purpose), repeated R times (e.g. to see a long error cut to fit).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// Attempts that fail; absent: every attempt.
    #[serde(default)]
    pub times: Option<u32>,
    /// How they fail.
    #[serde(default)]
    pub with: FailWith,
    /// The delay of `snooze` and `retry_after`, as a duration such as `"10s"`.
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// The error (or panic) text.
    #[serde(default)]
    pub message: Option<String>,
    /// How many times the text is repeated (default 1).
    #[serde(default)]
    pub repeat: Option<u32>,
}

/// How a `fail` job's failing attempts end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailWith {
    /// An error: retried with backoff.
    #[default]
    Error,
    /// A panic in the handler: an error with the panic's text.
    Panic,
    /// Discarded at once.
    Discard,
    /// Cancelled.
    Cancel,
    /// Snoozed for `delay` (default 100 ms); the attempt does not count.
    Snooze,
    /// Retried after `delay` (default 1 s) instead of the backoff.
    RetryAfter,
}
impl Job for Fail {
    const KIND: &'static str = "fail";
}

impl Fail {
    /// The error text of a failing `attempt`.
    fn text(&self, attempt: u32) -> String {
        let one = self.message.clone().unwrap_or_else(|| match self.times {
            Some(n) => format!("failing on purpose: attempt {attempt} of the first {n}"),
            None => format!("failing on purpose: attempt {attempt} (every attempt fails)"),
        });
        // Capped so a typo cannot ask for gigabytes; far past the 64 KiB an error keeps.
        let times = self.repeat.unwrap_or(1).max(1) as usize;
        let times = times.min((1 << 20) / one.len().max(1)).max(1);
        one.repeat(times)
    }

    /// What attempt `attempt` does: `None` succeeds.
    fn outcome(&self, attempt: u32) -> Option<Result<JobError, String>> {
        if self.times.is_some_and(|n| attempt > n) {
            return None;
        }
        let text = self.text(attempt);
        Some(match self.with {
            FailWith::Error => Ok(JobError::retry(text)),
            FailWith::Panic => Err(text),
            FailWith::Discard => Ok(JobError::discard(text)),
            FailWith::Cancel => Ok(JobError::cancel(text)),
            FailWith::Snooze => Ok(JobError::snooze(
                self.delay.unwrap_or(Duration::from_millis(100)),
            )),
            FailWith::RetryAfter => Ok(JobError::retry_after(
                text,
                self.delay.unwrap_or(Duration::from_secs(1)),
            )),
        })
    }
}

/// `panic`: panics (every attempt).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Panic {}
impl Job for Panic {
    const KIND: &'static str = "panic";
}

/// `record {"ms": N?, "key": S?, "runs": B?}`: optionally sleeps, then inserts a row into
/// `jobq_demo_effects` (key defaults to the job id) in the transaction that completes the job,
/// so a completed job has exactly one effect row however often it ran. With `"runs": true`
/// every run is also logged in `jobq_demo_runs` (its start, then its end), each on its own
/// autocommit statement: what a side effect outside the job's transaction would see, so tests
/// can check that no two runs of a job overlapped.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds to sleep first.
    #[serde(default)]
    pub ms: Option<u64>,
    /// Effect key.
    #[serde(default)]
    pub key: Option<String>,
    /// Log each run's start and end in `jobq_demo_runs`, outside the job's transaction.
    #[serde(default)]
    pub runs: bool,
}
impl Job for Record {
    const KIND: &'static str = "record";
}

/// Creates the `record` kind's effects table, `jobq_demo_effects`, if it is missing. It is not
/// part of the jobq schema; the demo, the bench and tests call this, and the first `record` job
/// creates it too.
pub async fn setup(pool: &sqlx::MySqlPool) -> Result<()> {
    store::create_effects_table(pool).await?;
    store::create_runs_table(pool).await?;
    Ok(())
}

/// The body of `record`: sleep, then the effect row in the job's transaction.
async fn record(job: &Record, ctx: &JobContext) -> Result<(), JobError> {
    if let Some(ms) = job.ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let key = job.key.clone().unwrap_or_else(|| ctx.id().to_string());
    let mut tx = ctx.tx().await?;
    let (id, attempt, worker) = (ctx.id().0, ctx.attempt(), ctx.worker_id());
    match store::insert_effect(&mut tx, id, attempt, worker, &key).await {
        // The effects table is not part of the schema; the first `record` job creates it
        // (on another connection: DDL commits implicitly) and inserts again. A failed
        // statement does not end the transaction.
        Err(e) if is_number(&e, codes::NO_SUCH_TABLE) => {
            store::create_effects_table(ctx.pool()).await?;
            store::insert_effect(&mut tx, id, attempt, worker, &key).await?;
        }
        other => other?,
    }
    Ok(())
}

/// Runs a write of the run log until it reports done, for up to 10 s: a run cut short by its
/// database node dying ends too, the pool may need a moment to fail over, and the node it
/// moves to may not have applied the run's start yet. The last error when time is up.
async fn log_run<F, Fut>(write: F) -> Result<(), sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    loop {
        let late = started.elapsed() > Duration::from_secs(10);
        match write().await {
            Ok(true) => return Ok(()),
            Ok(false) if late => return Err(sqlx::Error::RowNotFound),
            Err(e) if late => return Err(e),
            Ok(false) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Registers the built-in kinds.
pub fn register(r: &mut Registry) -> Result<()> {
    r.register::<Noop>(|_: Noop, _ctx: JobContext| async { Ok(()) })?;
    r.register::<Echo>(|job: Echo, ctx: JobContext| async move { ctx.set_result(&job.0) })?;
    r.register::<Sleep>(|job: Sleep, ctx: JobContext| async move {
        let steps = job.steps.unwrap_or(0).max(1);
        for step in 1..=steps {
            tokio::time::sleep(Duration::from_millis(job.ms / u64::from(steps))).await;
            if job.steps.is_some() {
                ctx.log(format_args!("step {step} of {steps}"));
                let done = f64::from(step) * 100.0 / f64::from(steps);
                ctx.progress(done, format!("slept {step} of {steps} steps"));
            }
        }
        Ok(())
    })?;
    r.register::<Fail>(|job: Fail, ctx: JobContext| async move {
        match job.outcome(ctx.attempt()) {
            None => Ok(()),
            Some(Ok(e)) => Err(e),
            Some(Err(text)) => panic!("{text}"),
        }
    })?;
    r.register::<Panic>(|_: Panic, ctx: JobContext| async move {
        panic!(
            "panic kind: panicking on purpose (job {}, attempt {})",
            ctx.id(),
            ctx.attempt()
        );
    })?;
    r.register::<Record>(|job: Record, ctx: JobContext| async move {
        let run = if job.runs {
            let (id, attempt, worker) = (ctx.id().0, ctx.attempt(), ctx.worker_id());
            match store::run_started(ctx.pool(), id, attempt, worker).await {
                Ok(run) => Some(run),
                Err(e) => {
                    // The start may be logged although its answer was lost: end it, or the
                    // log would show a run that did nothing as never ended.
                    let end = || async {
                        store::runs_ended_for(ctx.pool(), id, attempt, worker)
                            .await
                            .map(|()| true)
                    };
                    // The start's error is the one to report.
                    let _ = log_run(end).await;
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let result = record(&job, &ctx).await;
        if let Some(run) = run {
            log_run(|| store::run_ended(ctx.pool(), run)).await?;
        }
        result
    })?;
    r.any_queue(&[
        Noop::KIND,
        Echo::KIND,
        Sleep::KIND,
        Fail::KIND,
        Panic::KIND,
        Record::KIND,
    ]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::attempt::Outcome;
    use crate::runtime::executor::outcome_of;

    fn fail(json: &str) -> Fail {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fail_exercises_every_outcome() {
        let d = |s| Duration::from_secs(s);
        // (payload, attempt, what happens)
        let table: [(&str, u32, Option<Outcome>); 10] = [
            (
                "{}",
                7,
                Some(Outcome::Error {
                    message: "failing on purpose: attempt 7 (every attempt fails)".into(),
                    retry_after: None,
                }),
            ),
            (
                r#"{"times": 2}"#,
                2,
                Some(Outcome::Error {
                    message: "failing on purpose: attempt 2 of the first 2".into(),
                    retry_after: None,
                }),
            ),
            (r#"{"times": 2}"#, 3, None),
            (
                r#"{"with": "discard", "message": "m"}"#,
                1,
                Some(Outcome::Discard("m".into())),
            ),
            (
                r#"{"with": "cancel", "message": "m"}"#,
                1,
                Some(Outcome::Cancel("m".into())),
            ),
            (
                r#"{"with": "snooze"}"#,
                1,
                Some(Outcome::Snooze(Duration::from_millis(100))),
            ),
            (
                r#"{"with": "snooze", "delay": "10s"}"#,
                1,
                Some(Outcome::Snooze(d(10))),
            ),
            (
                r#"{"with": "retry_after", "message": "m"}"#,
                1,
                Some(Outcome::Error {
                    message: "m".into(),
                    retry_after: Some(d(1)),
                }),
            ),
            (
                r#"{"with": "retry_after", "delay": "2m", "message": "m"}"#,
                1,
                Some(Outcome::Error {
                    message: "m".into(),
                    retry_after: Some(d(120)),
                }),
            ),
            (
                r#"{"message": "ab", "repeat": 3, "times": 1}"#,
                1,
                Some(Outcome::Error {
                    message: "ababab".into(),
                    retry_after: None,
                }),
            ),
        ];
        for (payload, attempt, want) in table {
            let got = fail(payload)
                .outcome(attempt)
                .map(|r| outcome_of(r.expect("not a panic")));
            assert_eq!(got, want, "{payload} attempt {attempt}");
        }
        assert_eq!(
            fail(r#"{"with": "panic", "message": "p"}"#)
                .outcome(1)
                .unwrap()
                .unwrap_err(),
            "p"
        );
        assert!(serde_json::from_str::<Fail>(r#"{"with": "explode"}"#).is_err());
        assert!(serde_json::from_str::<Fail>(r#"{"delay": "soon"}"#).is_err());
        let huge = fail(r#"{"message": "x", "repeat": 4000000000}"#).text(1);
        assert_eq!(huge.len(), 1 << 20);
    }
}
