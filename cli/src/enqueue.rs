//! `jobq enqueue`: validate before connecting, insert `--count` copies in one transaction a
//! chunk at a time, print the ids (or wait for the job with `--wait`), and warn when no worker
//! handles the kind.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jobq_config::Config;
use jobq_worker::NewJob;

use crate::common::{connected, parse_duration, parse_time};

#[derive(clap::Args, Debug)]
pub(crate) struct EnqueueArgs {
    /// Job kind, e.g. noop, sleep, fail, panic, record.
    pub(crate) kind: String,
    /// Queue.
    #[arg(long, default_value = "default")]
    pub(crate) queue: String,
    /// JSON payload, or `-` to read it from standard input.
    #[arg(long, default_value = "{}")]
    pub(crate) payload: String,
    /// Priority; lower runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) priority: i16,
    /// Run no earlier than this from now, e.g. 500ms, 10s, 1h.
    #[arg(long, value_parser = parse_duration, conflicts_with = "run_at")]
    pub(crate) delay: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2030-01-01T00:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub(crate) run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Attempts before the job is discarded (default: producer.default_max_attempts).
    #[arg(long)]
    pub(crate) max_attempts: Option<u32>,
    /// Insert this many copies (one transaction).
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u32,
    /// Make the job unique: while a job of this kind with key K waits or runs, print its id
    /// followed by `duplicate` instead of inserting another.
    #[arg(long, value_name = "K")]
    pub(crate) unique_key: Option<String>,
    /// With --unique-key: keep the key taken this long after the job finishes, e.g. 1h.
    #[arg(long, value_parser = parse_duration, requires = "unique_key")]
    pub(crate) unique_period: Option<Duration>,
    /// With --unique-key: `replace` gives a waiting duplicate that never started this job's
    /// payload, priority and run-at (debounce; prints `ID duplicate replaced`).
    #[arg(long, value_enum, default_value = "keep", requires = "unique_key")]
    pub(crate) on_duplicate: OnDuplicateArg,
    /// Give the job concurrency key K: at most `key_limit` jobs of the queue with key K run at
    /// once across all workers (queues.NAME.key_limit, kinds.NAME.key_limit; default 1).
    #[arg(long, value_name = "K")]
    pub(crate) concurrency_key: Option<String>,
    /// Run after these jobs (ids, comma-separated): the job waits in state `blocked` until
    /// every one of them has ended, and starts when the last completes.
    #[arg(long, value_name = "ID[,ID…]", value_delimiter = ',')]
    pub(crate) after: Vec<u64>,
    /// With --after: what the job does when a parent ends without completing (discarded or
    /// cancelled): `cancel` it (and what runs after it), `ignore` the failure, or `continue`
    /// (start now).
    #[arg(long, value_enum, default_value = "cancel", requires = "after")]
    pub(crate) on_parent_failure: OnParentFailureArg,
    /// Wait for the job to finish: print its result (or `ID completed`), exit 0 if it
    /// completed, 1 if it was discarded or cancelled, 3 if --timeout passed first.
    #[arg(long)]
    pub(crate) wait: bool,
    /// With --wait: how long to wait.
    #[arg(long, value_parser = parse_duration, default_value = "30s", requires = "wait")]
    pub(crate) timeout: Duration,
    /// With --wait: print the job's log lines and progress to stderr as they are stored
    /// (stdout keeps the result).
    #[arg(long, requires = "wait")]
    pub(crate) follow: bool,
    /// The W3C trace context the job's handler span continues (its parent), as in
    /// 00-<trace id>-<span id>-<flags>. Without it, TRACEPARENT from the environment (as a
    /// traced script passes it) is used when it parses, and ignored with a warning otherwise.
    #[arg(long)]
    pub(crate) traceparent: Option<String>,
    /// With --traceparent: its `tracestate` (with TRACEPARENT: TRACESTATE from the
    /// environment).
    #[arg(long, requires = "traceparent")]
    pub(crate) tracestate: Option<String>,
}

/// `--on-duplicate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnDuplicateArg {
    /// Keep the existing job.
    Keep,
    /// Replace a waiting, never-started job's payload, priority and run-at.
    Replace,
}

/// `--on-parent-failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnParentFailureArg {
    /// Cancel the job, and what runs after it.
    Cancel,
    /// Count the failed parent as done.
    Ignore,
    /// Start the job now.
    Continue,
}

impl From<OnParentFailureArg> for jobq_worker::OnParentFailure {
    fn from(a: OnParentFailureArg) -> Self {
        match a {
            OnParentFailureArg::Cancel => jobq_worker::OnParentFailure::Cancel,
            OnParentFailureArg::Ignore => jobq_worker::OnParentFailure::Ignore,
            OnParentFailureArg::Continue => jobq_worker::OnParentFailure::Continue,
        }
    }
}

/// After an enqueue: a warning on stderr (the exit status stays 0) when no live or recent worker
/// handles `kind`, or none handles it on `queue`: the job would wait unclaimed.
async fn warn_unhandled(pool: &sqlx::MySqlPool, kind: &str, queue: &str) {
    let Ok(name) = jobq_worker::KindName::new(kind) else {
        return;
    };
    let days = jobq_worker::KIND_SEEN_WITHIN.as_secs() / 86_400;
    match jobq_worker::queues_handling(pool, &name).await {
        Ok(queues) if queues.is_empty() => eprintln!(
            "jobq: warning: no worker has had a handler for kind {kind:?} in the last {days} \
             days (a misspelt kind?): a worker of queue {queue:?} without one fails each attempt \
             (\"no handler registered\") until the attempts are used up; `jobq cancel` it if \
             it is a mistake"
        ),
        Ok(queues) if !queues.iter().any(|q| q == queue) => eprintln!(
            "jobq: warning: kind {kind:?} is handled by workers of queue(s) {} but not of \
             {queue:?}: the job waits for a worker of {queue:?}, which fails it unless it has a \
             handler (enqueue it with --queue {} instead?)",
            queues.join(", "),
            queues[0]
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = ?e, "could not read which kinds workers handle"),
    }
}

/// `count` copies of `job`, built and sent ENQUEUE_CHUNK at a time (never all in memory, nor
/// their answers: see [`Runs`]), in one transaction: all of them or none.
async fn insert_copies(
    pool: &sqlx::MySqlPool,
    producer: &jobq_worker::Producer,
    job: &jobq_worker::NewJob,
    count: usize,
) -> Result<Runs, jobq_worker::ProducerError> {
    let mut tx = pool.begin().await?;
    let mut done = Runs::default();
    let mut left = count;
    while left > 0 {
        let n = left.min(ENQUEUE_CHUNK);
        for e in producer
            .insert_many_in(&mut tx, vec![job.clone(); n])
            .await?
        {
            done.push(e);
        }
        left -= n;
    }
    // A cluster's certification conflict fails the COMMIT itself with a deadlock.
    tx.commit()
        .await
        .map_err(jobq_worker::ProducerError::from_database)?;
    Ok(done)
}

/// What `--count` copies were answered, in order, kept as runs (ids that go up by one step
/// with the same answer), so a count of millions takes a few bytes per chunk, not per job.
#[derive(Debug, Default)]
struct Runs(Vec<Run>);

#[derive(Debug)]
struct Run {
    first: u64,
    step: u64,
    len: u64,
    duplicate: bool,
    replaced: bool,
}

impl Runs {
    fn push(&mut self, e: jobq_worker::Enqueued) {
        let id = e.id.0;
        if let Some(r) = self.0.last_mut() {
            let next = r.first + r.step * r.len;
            let same = (r.duplicate, r.replaced) == (e.duplicate, e.replaced);
            // A second answer fixes the run's step: 0 for the same id again (duplicates of
            // one unique job), else the distance.
            if same && (r.len == 1 && id >= r.first || r.len > 1 && id == next) {
                if r.len == 1 {
                    r.step = id - r.first;
                }
                r.len += 1;
                return;
            }
        }
        self.0.push(Run {
            first: id,
            step: 1,
            len: 1,
            duplicate: e.duplicate,
            replaced: e.replaced,
        });
    }

    fn first(&self) -> Option<u64> {
        self.0.first().map(|r| r.first)
    }

    /// Prints one line per job (`ID`, `ID duplicate`, `ID duplicate replaced`), a chunk of
    /// lines at a time.
    fn print(&self) {
        let mut out = String::new();
        for r in &self.0 {
            for i in 0..r.len {
                out.push_str(&(r.first + i * r.step).to_string());
                if r.duplicate {
                    out.push_str(" duplicate");
                }
                if r.replaced {
                    out.push_str(" replaced");
                }
                out.push('\n');
                if out.len() >= 64 << 10 {
                    out!("{out}");
                    out.clear();
                }
            }
        }
        out!("{out}");
    }
}

/// Copies of a `--count` job built and inserted at a time.
const ENQUEUE_CHUNK: usize = 1000;

/// Reads a payload of at most `limit` bytes from `input`, refusing (without reading further)
/// one that is longer.
fn read_payload(input: impl Read, limit: usize) -> Result<String> {
    let mut buf = Vec::new();
    input
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .context("reading the payload from standard input")?;
    if buf.len() > limit {
        bail!(crate::Usage(format!(
            "the payload on standard input is over the limit of {limit} bytes \
             (producer.max_payload_bytes); store large data elsewhere and enqueue a reference"
        )));
    }
    String::from_utf8(buf).context("the payload on standard input is not UTF-8 text")
}

pub(crate) async fn enqueue(settings: &Config, a: EnqueueArgs) -> Result<ExitCode> {
    if a.count == 0 {
        bail!(crate::Usage("--count must be at least 1".into()));
    }
    if a.wait && a.count != 1 {
        bail!(crate::Usage(
            "--wait waits for one job; leave out --count".into()
        ));
    }
    let limit = settings.producer().max_payload_bytes;
    let payload = if a.payload == "-" {
        read_payload(std::io::stdin().lock(), limit)?
    } else {
        a.payload
    };
    let kind = a.kind.clone();
    let mut job = NewJob::raw(a.kind, payload)
        .queue(a.queue.clone())
        .priority(a.priority);
    if let Some(d) = a.delay {
        job = job.delay(d);
    }
    if let Some(t) = a.run_at {
        job = job.run_at(t);
    }
    if let Some(n) = a.max_attempts {
        job = job.max_attempts(n);
    }
    if let Some(k) = a.unique_key {
        job = job.unique_key(k);
    }
    if let Some(p) = a.unique_period {
        job = job.unique_period(p);
    }
    if a.on_duplicate == OnDuplicateArg::Replace {
        job = job.on_duplicate(jobq_worker::OnDuplicate::Replace);
    }
    if let Some(k) = a.concurrency_key {
        job = job.concurrency_key(k);
    }
    for &parent in &a.after {
        job = job.after(jobq_worker::JobId(parent));
    }
    job = job.on_parent_failure(a.on_parent_failure.into());
    if let Some(t) = trace_context(a.traceparent.as_deref(), a.tracestate.as_deref())? {
        job = job.trace_context(t);
    }
    // Validate before connecting, so bad input never needs a database.
    jobq_worker::Producer::validate(
        std::slice::from_ref(&job),
        &jobq_worker::producer_options(settings),
    )?;
    // The queue's own server ([queues.NAME] database_url), or database_url.
    let settings = &jobq_worker::on_server(settings, settings.database_of(&a.queue))?;
    let pool = connected(settings).await?;
    jobq_worker::check_server_limits(&pool, settings).await?;
    let producer = jobq_worker::producer(pool.clone(), settings);
    // Producers racing for one unique key can deadlock inside the server, which then rolls the
    // whole transaction back (nothing kept): run it again, as the library's own insert does.
    let done = jobq_worker::run_again_if_rolled_back(|| {
        insert_copies(&pool, &producer, &job, a.count as usize)
    })
    .await?;
    warn_unhandled(&pool, &kind, &a.queue).await;
    if a.wait {
        let id = jobq_worker::JobId(done.first().expect("at least one job"));
        let end = if a.follow {
            producer
                .follow(id, a.timeout, |seen| match seen {
                    jobq_worker::Followed::Log(l) => {
                        eprintln!("log  {}", crate::show::log_text(&l))
                    }
                    jobq_worker::Followed::Progress(p) => {
                        eprintln!("progress  {}", crate::show::progress_text(&p))
                    }
                })
                .await?
        } else {
            producer.wait_for(id, a.timeout).await?
        };
        return match end {
            Some(end) if end.state == jobq_worker::JobState::Completed => {
                match end.result {
                    Some(r) => outln!("{r}"),
                    None => outln!("{id} completed"),
                }
                Ok(ExitCode::SUCCESS)
            }
            Some(end) => {
                eprintln!(
                    "jobq: job {id} ended {}: {}",
                    end.state,
                    end.error.as_deref().unwrap_or("no error recorded")
                );
                Ok(ExitCode::FAILURE)
            }
            None => {
                eprintln!(
                    "jobq: job {id} did not finish within {} (it stays queued; `jobq job {id}` shows it)",
                    humantime::format_duration(a.timeout)
                );
                Ok(ExitCode::from(3))
            }
        };
    }
    done.print();
    Ok(ExitCode::SUCCESS)
}

/// `--traceparent` (refused when malformed), else TRACEPARENT and TRACESTATE from the
/// environment (ignored with a warning when malformed: a variable the user may not know of
/// must not stop an enqueue).
fn trace_context(
    flag: Option<&str>,
    state: Option<&str>,
) -> Result<Option<jobq_worker::TraceContext>> {
    if let Some(t) = flag {
        return Ok(Some(jobq_worker::TraceContext::new(t, state)?));
    }
    let Ok(t) = std::env::var("TRACEPARENT") else {
        return Ok(None);
    };
    let state = std::env::var("TRACESTATE").ok();
    match jobq_worker::TraceContext::new(&t, state.as_deref()) {
        Ok(t) => Ok(Some(t)),
        Err(e) => {
            eprintln!("jobq: warning: ignoring TRACEPARENT from the environment: {e}");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: u64, duplicate: bool) -> jobq_worker::Enqueued {
        jobq_worker::Enqueued {
            id: jobq_worker::JobId(id),
            duplicate,
            replaced: false,
        }
    }

    /// Answers are kept as runs: consecutive ids (any fixed step, as with
    /// `auto_increment_increment`, or 0 for duplicates of one job) with the same answer share
    /// one run; another answer or a gap starts another. A million plain inserts are one run,
    /// and so are a million duplicates of one unique job.
    #[test]
    fn answers_are_kept_as_runs() {
        let mut r = Runs::default();
        for id in [10, 11, 12, 7, 7, 20, 23, 26] {
            r.push(e(id, id == 7));
        }
        let runs: Vec<(u64, u64, u64, bool)> =
            r.0.iter()
                .map(|r| (r.first, r.step, r.len, r.duplicate))
                .collect();
        assert_eq!(
            runs,
            [(10, 1, 3, false), (7, 0, 2, true), (20, 3, 3, false)]
        );
        let mut big = Runs::default();
        for id in 1..=1_000_000 {
            big.push(e(id, false));
        }
        assert_eq!(big.0.len(), 1);
        assert_eq!(big.first(), Some(1));
        let mut dups = Runs::default();
        dups.push(e(5, false));
        for _ in 0..1_000_000 {
            dups.push(e(5, true));
        }
        assert_eq!(dups.0.len(), 2);
    }
}
