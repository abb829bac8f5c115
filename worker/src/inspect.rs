//! Views for the CLI and tests, and the queue controls (pause, resume).

use std::collections::{BTreeMap, BTreeSet};

use jobq_producer::{JobId, JobState, QueueName};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::error::{Error, Result};
use crate::store::{self, JobRecord, TransitionRecord};

/// One queue's numbers.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QueueStats {
    /// Jobs per state (every state present, zero included). Exact up to 10,000; a larger
    /// number is the server's estimate, and its state is listed in `estimated`.
    pub states: BTreeMap<String, i64>,
    /// The states whose count is an estimate (over 10,000 jobs: counting them exactly would
    /// read every one).
    pub estimated: BTreeSet<String>,
    /// Jobs completed in the last minute: counted in the newest 50,000 history rows, and
    /// scaled to a minute when those span less (an estimate on a busy server).
    pub completed_last_minute: i64,
    /// Seconds since the oldest `available` job became due; `None` when none is available.
    pub oldest_available_seconds: Option<f64>,
    /// When the queue was paused (RFC 3339, UTC); `None` while it is active.
    pub paused_since: Option<String>,
    /// Who paused it, as recorded.
    pub paused_by: Option<String>,
}

/// Counts per queue and state, and totals per state across queues.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Per queue.
    pub queues: BTreeMap<String, QueueStats>,
    /// Per state, across queues (every state present).
    pub totals: BTreeMap<String, i64>,
    /// The states whose total includes an estimate.
    pub totals_estimated: BTreeSet<String>,
}

impl QueueStats {
    /// The jobs in `state` as shown to people: `~N` when the number is an estimate.
    pub fn count_text(&self, state: &str) -> String {
        shown(self.states.get(state), self.estimated.contains(state))
    }
}

impl Stats {
    /// The jobs in `state` across queues as shown to people: `~N` when the number includes
    /// an estimate.
    pub fn total_text(&self, state: &str) -> String {
        shown(
            self.totals.get(state),
            self.totals_estimated.contains(state),
        )
    }
}

/// A count as shown: `~N` when it is an estimate.
fn shown(n: Option<&i64>, estimated: bool) -> String {
    let n = n.copied().unwrap_or(0);
    if estimated {
        format!("~{n}")
    } else {
        n.to_string()
    }
}

fn zeroes() -> BTreeMap<String, i64> {
    JobState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect()
}

/// `queue`'s entry in `out`, created with every state at zero.
fn queue_entry(out: &mut Stats, queue: String) -> &mut QueueStats {
    out.queues.entry(queue).or_insert_with(|| QueueStats {
        states: zeroes(),
        ..Default::default()
    })
}

/// Reads [`Stats`].
pub async fn stats(pool: &MySqlPool) -> Result<Stats> {
    let mut out = Stats {
        queues: BTreeMap::new(),
        totals: zeroes(),
        totals_estimated: BTreeSet::new(),
    };
    // Per queue (an index dive finds each) and state, a bounded count: the cost is
    // O(queues), however many jobs the table keeps.
    for queue in store::queues_with_jobs(pool).await? {
        for state in JobState::ALL {
            let (n, estimated) =
                store::count_in_state(pool, &queue, state, store::EXACT_UP_TO).await?;
            let state = state.as_str().to_owned();
            let q = queue_entry(&mut out, queue.clone());
            *q.states.entry(state.clone()).or_default() += n;
            if estimated {
                q.estimated.insert(state.clone());
                out.totals_estimated.insert(state.clone());
            }
            *out.totals.entry(state).or_default() += n;
        }
    }
    for (queue, since, by) in store::paused(pool).await? {
        let q = queue_entry(&mut out, queue);
        q.paused_since = Some(since);
        q.paused_by = by;
    }
    for (queue, done, oldest) in store::queue_activity(pool).await? {
        if let Some(q) = out.queues.get_mut(&queue) {
            q.completed_last_minute = done;
            q.oldest_available_seconds = oldest;
        }
    }
    Ok(out)
}

/// Pauses `queue` across all workers: no claim takes from it (within one poll interval of
/// this call), jobs already running finish, producers still enqueue. Kept in the database, so
/// it outlives restarts and applies to workers started later. `by` is recorded (e.g.
/// `user@host`). Returns false if the queue was already paused.
pub async fn pause_queue(pool: &MySqlPool, queue: &QueueName, by: &str) -> Result<bool> {
    let by: String = by.chars().take(128).collect();
    Ok(store::pause(pool, queue.as_str(), &by).await?)
}

/// Resumes a paused `queue`. Returns false if it was not paused.
pub async fn resume_queue(pool: &MySqlPool, queue: &QueueName) -> Result<bool> {
    Ok(store::resume(pool, queue.as_str()).await?)
}

/// A job and its whole transition history.
pub async fn job_with_history(
    pool: &MySqlPool,
    id: JobId,
) -> Result<(JobRecord, Vec<TransitionRecord>)> {
    let job = store::job(pool, id).await?.ok_or(Error::NoSuchJob(id))?;
    let history = store::history(pool, id).await?;
    Ok((job, history))
}

/// Lists jobs, newest first, by `filter` (see [`crate::JobFilter`]).
pub async fn list_jobs(
    pool: &MySqlPool,
    filter: &store::JobFilter,
) -> Result<Vec<store::JobSummary>> {
    Ok(store::list_jobs(pool, filter).await?)
}

/// One page of a job listing and where the next one starts.
#[derive(Clone, Debug)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<store::JobSummary>,
    /// Pass as `after` (and `after_run_at`) to continue: after the last job when the page is
    /// full, or after where the search stopped when [`crate::JobFilter::examine`] cut it
    /// short. `None`: nothing further matches.
    pub next: Option<(JobId, chrono::DateTime<chrono::Utc>)>,
    /// Whether the page stopped at the examine budget before filling up.
    pub searched_out: bool,
}

/// Lists one page of jobs by `filter`, bounded by its `examine` budget (see [`JobPage`]).
pub async fn list_jobs_page(pool: &MySqlPool, filter: &store::JobFilter) -> Result<JobPage> {
    let (jobs, stopped) = store::list_page(pool, filter).await?;
    let full = jobs.len() == filter.limit.clamp(1, 10_000) as usize;
    let next = match (full, jobs.last(), stopped) {
        (true, Some(last), _) => Some((last.id, last.run_at)),
        (false, _, Some(stop)) => Some(stop),
        _ => None,
    };
    Ok(JobPage {
        searched_out: !full && stopped.is_some(),
        jobs,
        next,
    })
}

/// The registered worker processes, with their running jobs.
pub async fn workers(pool: &MySqlPool) -> Result<Vec<store::WorkerInfo>> {
    Ok(store::workers(pool).await?)
}

/// How far back [`queues_handling`] looks: a worker that started or ran within a week.
pub const KIND_SEEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// The queues on which a live or recent worker (seen within [`KIND_SEEN_WITHIN`]) has a handler
/// for `kind`; empty when none has. `jobq enqueue` warns on an empty answer (a misspelt kind
/// would otherwise fail attempt after attempt for days) or one without the job's queue.
pub async fn queues_handling(
    pool: &MySqlPool,
    kind: &jobq_producer::KindName,
) -> Result<Vec<String>> {
    Ok(store::kind_queues(pool, kind, KIND_SEEN_WITHIN).await?)
}

/// Deletes jobs in final state `state` finalized more than `older_than` ago, with their
/// history (unless history is partitioned: it goes by whole partitions), in short batches. Returns how many were deleted.
pub async fn prune_jobs(
    pool: &MySqlPool,
    state: JobState,
    older_than: std::time::Duration,
) -> Result<u64> {
    if !state.is_final() {
        return Err(Error::Invalid(format!(
            "only finished jobs are pruned (completed, discarded, cancelled), not {state}"
        )));
    }
    // One pass over the range, window by window. Partitioned history goes by partitions.
    let with_history = !store::history_by_time(pool).await?;
    let mut total = 0;
    let mut cursor = store::PruneCursor::default();
    loop {
        let (n, more) =
            store::prune(pool, state, older_than, 500, &mut cursor, with_history).await?;
        total += n;
        if !more {
            return Ok(total);
        }
    }
}

/// A recurring job, as `jobq schedules` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// The job's kind.
    pub kind: String,
    /// The job's queue.
    pub queue: String,
    /// Paused by an operator.
    pub paused: bool,
    /// The newest slot decided (enqueued or skipped).
    pub last_slot: Option<chrono::DateTime<chrono::Utc>>,
    /// What was decided for it.
    pub last_outcome: Option<String>,
    /// The newest slot's job and its state now.
    pub last_job: Option<JobId>,
    /// That job's state.
    pub last_job_state: Option<String>,
    /// The next slot from now.
    pub next_slot: Option<chrono::DateTime<chrono::Utc>>,
}

fn schedule<'c>(config: &'c jobq_config::Config, name: &str) -> Result<&'c jobq_config::Schedule> {
    config
        .schedules()
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no schedule named {name:?} in the configuration; `jobq schedules` lists them"
            ))
        })
}

/// Every configured schedule with its state.
pub async fn list_schedules(
    pool: &MySqlPool,
    config: &jobq_config::Config,
) -> Result<Vec<ScheduleInfo>> {
    let rows = store::schedule_rows(pool).await?;
    let now = chrono::Utc::now();
    Ok(config
        .schedules()
        .iter()
        .map(|s| {
            let r = rows.get(&s.name).cloned().unwrap_or_default();
            ScheduleInfo {
                name: s.name.clone(),
                cron: s.cron_text.clone(),
                timezone: s.tz.name().to_owned(),
                kind: s.kind.to_string(),
                queue: s.queue.to_string(),
                paused: r.paused_at.is_some(),
                last_slot: r.last_slot_at,
                last_outcome: r.last_outcome,
                last_job: r.last_job_id.map(JobId),
                last_job_state: r.last_job_state,
                next_slot: crate::machine::schedule::next_slot(s, now),
            }
        })
        .collect())
}

/// Pauses schedule `name` (no slot is enqueued until it is resumed; then its latest missed
/// slot runs once, per its `missed` policy). False if it already was.
pub async fn pause_schedule(
    pool: &MySqlPool,
    config: &jobq_config::Config,
    name: &str,
    by: &str,
) -> Result<bool> {
    schedule(config, name)?;
    Ok(store::set_schedule_paused(pool, name, Some(by)).await?)
}

/// Resumes schedule `name`. False if it was not paused.
pub async fn resume_schedule(
    pool: &MySqlPool,
    config: &jobq_config::Config,
    name: &str,
) -> Result<bool> {
    schedule(config, name)?;
    Ok(store::set_schedule_paused(pool, name, None).await?)
}

/// Enqueues schedule `name`'s job once, now (outside its slots). Returns its id.
pub async fn run_schedule_now(
    pool: &MySqlPool,
    config: &jobq_config::Config,
    name: &str,
) -> Result<JobId> {
    let s = schedule(config, name)?;
    let job = crate::runtime::schedules::job_for(s, None);
    Ok(crate::producer(pool.clone(), config).enqueue(job).await?)
}
