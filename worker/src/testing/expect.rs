//! What a test expects to have been enqueued ([`Expect`]), matched against the jobs the
//! database holds ([`EnqueuedJob`]); the assertions that read them and, when one fails, name
//! what was expected and list what was enqueued instead, each with why it did not match.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jobq_producer::{Job, JobId, JobState, WorkflowId};
use serde_json::Value;
use sqlx::{Acquire, MySql};

use crate::error::Result;
use crate::store::testing as store;

/// The states of a job that was enqueued and has not run yet (or waits to run again): what
/// [`assert_enqueued`] looks at unless the [`Expect`] names states.
pub const ENQUEUED_STATES: [JobState; 5] = [
    JobState::Available,
    JobState::Scheduled,
    JobState::Waiting,
    JobState::Blocked,
    JobState::Retryable,
];

/// The most jobs an assertion reads (oldest first); a test database holding more is not what
/// the kit is for.
pub const MAX_JOBS_READ: u32 = 10_000;

/// A job as the test kit reads it from `jobq_jobs`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EnqueuedJob {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its payload (a payload that is not valid JSON shows as a JSON string).
    pub payload: Value,
    /// Its state now.
    pub state: JobState,
    /// Its priority (lower runs first).
    pub priority: i16,
    /// When it is due (UTC, database clock).
    pub run_at: DateTime<Utc>,
    /// Attempts made so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Its unique key, if any.
    pub unique_key: Option<String>,
    /// Its concurrency key, if any.
    pub concurrency_key: Option<String>,
    /// The workflow it belongs to, if any.
    pub workflow: Option<WorkflowId>,
    /// The jobs it runs after, by id.
    pub parents: Vec<JobId>,
    /// Its last error, if an attempt failed.
    pub last_error: Option<String>,
}

impl EnqueuedJob {
    fn from_row(r: store::JobRow) -> Result<EnqueuedJob> {
        let state = r
            .state
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
        Ok(EnqueuedJob {
            id: JobId(r.id),
            payload: serde_json::from_str(&r.payload).unwrap_or(Value::String(r.payload)),
            state,
            queue: r.queue,
            kind: r.kind,
            priority: r.priority,
            run_at: r.run_at,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            unique_key: r.unique_key,
            concurrency_key: r.concurrency_key,
            workflow: r.workflow_id.map(WorkflowId),
            parents: r
                .parents
                .unwrap_or_default()
                .split(',')
                .filter_map(|p| p.parse().ok())
                .map(JobId)
                .collect(),
            last_error: r.last_error,
        })
    }
}

/// What a test expects of an enqueued job: every part given must match, parts not given match
/// anything. Build it from [`Expect::kind`], [`Expect::job`] or [`Expect::any`].
///
/// ```
/// use jobq_worker::testing::Expect;
/// use jobq_worker::JobState;
///
/// let e = Expect::kind("send_invoice")
///     .queue("billing")
///     .payload(serde_json::json!({ "order_id": 7 }))
///     .priority(0)
///     .state(JobState::Available);
/// assert!(e.to_string().contains("payload ⊇ {\"order_id\":7}"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expect {
    kind: Option<String>,
    queue: Option<String>,
    payload: Option<Value>,
    priority: Option<i16>,
    run_at: Option<(DateTime<Utc>, Duration)>,
    states: Option<Vec<JobState>>,
    parents: Vec<JobId>,
    workflow: Option<WorkflowId>,
}

/// How close a job's `run_at` must be to [`Expect::scheduled_at`]'s time.
pub const SCHEDULED_AT_TOLERANCE: Duration = Duration::from_secs(1);

impl Expect {
    /// Any job (in [`ENQUEUED_STATES`] unless [`Expect::state`] says otherwise).
    pub fn any() -> Expect {
        Expect::default()
    }

    /// A job of this kind.
    pub fn kind(kind: impl Into<String>) -> Expect {
        Expect {
            kind: Some(kind.into()),
            ..Expect::default()
        }
    }

    /// A job of `J::KIND` whose payload holds every field of `job` (as it serialises).
    pub fn job<J: Job>(job: &J) -> Expect {
        let payload = serde_json::to_value(job).unwrap_or(Value::Null);
        Expect::kind(J::KIND).payload(payload)
    }

    /// On this queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Whose payload contains `subset`: every field of an object in it is present with a
    /// matching value (objects compared the same way, recursively; arrays element by element,
    /// of equal length; anything else by equality).
    pub fn payload(mut self, subset: Value) -> Self {
        self.payload = Some(subset);
        self
    }

    /// With this priority.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Due at `at`, within [`SCHEDULED_AT_TOLERANCE`] either way.
    pub fn scheduled_at(self, at: DateTime<Utc>) -> Self {
        self.scheduled_within(at, SCHEDULED_AT_TOLERANCE)
    }

    /// Due at `at`, within `tolerance` either way.
    pub fn scheduled_within(mut self, at: DateTime<Utc>, tolerance: Duration) -> Self {
        self.run_at = Some((at, tolerance));
        self
    }

    /// In this state (call again to allow several); any state may be named, `completed`
    /// included.
    pub fn state(mut self, state: JobState) -> Self {
        self.states.get_or_insert_with(Vec::new).push(state);
        self
    }

    /// That runs after `parent` (among others, perhaps).
    pub fn after(mut self, parent: JobId) -> Self {
        self.parents.push(parent);
        self
    }

    /// Of this workflow.
    pub fn workflow(mut self, workflow: WorkflowId) -> Self {
        self.workflow = Some(workflow);
        self
    }

    /// The states to read.
    fn states(&self) -> Vec<&'static str> {
        self.states
            .as_deref()
            .unwrap_or(&ENQUEUED_STATES)
            .iter()
            .map(|s| s.as_str())
            .collect()
    }

    /// Why `job` does not match, one reason per part that differs; empty when it matches.
    pub fn mismatches(&self, job: &EnqueuedJob) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(k) = &self.kind {
            if *k != job.kind {
                why.push(format!("kind is {:?}", job.kind));
            }
        }
        if let Some(q) = &self.queue {
            if *q != job.queue {
                why.push(format!("queue is {:?}", job.queue));
            }
        }
        if let Some(p) = &self.payload {
            if let Err(at) = contains(&job.payload, p, "payload") {
                why.push(at);
            }
        }
        if let Some(p) = self.priority {
            if p != job.priority {
                why.push(format!("priority is {}", job.priority));
            }
        }
        if let Some((at, tolerance)) = self.run_at {
            let off = (job.run_at - at).abs();
            if off.to_std().unwrap_or(Duration::MAX) > tolerance {
                why.push(format!("due at {}", stamp(job.run_at)));
            }
        }
        if let Some(states) = &self.states {
            if !states.contains(&job.state) {
                why.push(format!("state is {}", job.state));
            }
        }
        for p in &self.parents {
            if !job.parents.contains(p) {
                why.push(format!("does not run after job {p}"));
            }
        }
        if let Some(w) = self.workflow {
            if job.workflow != Some(w) {
                why.push(match job.workflow {
                    Some(other) => format!("belongs to workflow {other}"),
                    None => "belongs to no workflow".to_owned(),
                });
            }
        }
        why
    }

    /// Whether `job` matches.
    pub fn matches(&self, job: &EnqueuedJob) -> bool {
        self.mismatches(job).is_empty()
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(k) = &self.kind {
            parts.push(format!("kind = {k:?}"));
        }
        if let Some(q) = &self.queue {
            parts.push(format!("queue = {q:?}"));
        }
        if let Some(p) = &self.payload {
            parts.push(format!("payload ⊇ {p}"));
        }
        if let Some(p) = self.priority {
            parts.push(format!("priority = {p}"));
        }
        if let Some((at, tolerance)) = self.run_at {
            parts.push(format!(
                "due at {} ± {}",
                stamp(at),
                humantime::format_duration(tolerance)
            ));
        }
        let states = self.states();
        parts.push(format!("state in ({})", states.join(", ")));
        for p in &self.parents {
            parts.push(format!("after job {p}"));
        }
        if let Some(w) = self.workflow {
            parts.push(format!("in workflow {w}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// `Ok` when `actual` contains `expected` (see [`Expect::payload`]); else where it does not,
/// as a reason.
fn contains(actual: &Value, expected: &Value, at: &str) -> std::result::Result<(), String> {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (k, ev) in e {
                let here = format!("{at}.{k}");
                match a.get(k) {
                    None => return Err(format!("{here} is missing")),
                    Some(av) => contains(av, ev, &here)?,
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(e)) if a.len() == e.len() => a
            .iter()
            .zip(e)
            .enumerate()
            .try_for_each(|(i, (av, ev))| contains(av, ev, &format!("{at}[{i}]"))),
        _ if actual == expected => Ok(()),
        _ => Err(format!("{at} is {actual}")),
    }
}

/// A time as the kit prints it.
fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string()
}

/// One line about `job`.
fn describe(job: &EnqueuedJob) -> String {
    let mut s = format!(
        "#{} {} on {:?}, {}, priority {}, due {}",
        job.id,
        job.kind,
        job.queue,
        job.state,
        job.priority,
        stamp(job.run_at)
    );
    if !job.parents.is_empty() {
        let ids: Vec<String> = job.parents.iter().map(|p| p.to_string()).collect();
        let _ = write!(s, ", after {}", ids.join(", "));
    }
    if let Some(w) = job.workflow {
        let _ = write!(s, ", workflow {w}");
    }
    let _ = write!(s, ": {}", job.payload);
    s
}

/// The message of a failed [`assert_enqueued`]: what was expected, then every job read, each
/// with why it did not match.
pub(crate) fn missing_message(expect: &Expect, jobs: &[EnqueuedJob]) -> String {
    let mut m = format!("expected a job enqueued with {expect}\n");
    if jobs.is_empty() {
        let _ = write!(m, "but no job is in state {}", expect.states().join(", "));
        return m;
    }
    let _ = writeln!(
        m,
        "but none of the {} job(s) in those states matches:",
        jobs.len()
    );
    for j in jobs {
        let _ = writeln!(m, "  {} ({})", describe(j), expect.mismatches(j).join("; "));
    }
    m
}

/// The message of a failed [`refute_enqueued`]: what was not expected and the jobs that match.
pub(crate) fn found_message(expect: &Expect, found: &[&EnqueuedJob]) -> String {
    let mut m = format!(
        "expected no job enqueued with {expect}\nbut {} match(es):\n",
        found.len()
    );
    for j in found {
        let _ = writeln!(m, "  {}", describe(j));
    }
    m
}

/// Every job in `expect`'s states (oldest first, at most [`MAX_JOBS_READ`]) that matches it.
/// `conn` is a pool, a connection or a transaction (`&mut *tx`): through a test's own open
/// transaction, the jobs it enqueued are seen before any commit.
pub async fn all_enqueued<'c, A>(conn: A, expect: Expect) -> Result<Vec<EnqueuedJob>>
where
    A: Acquire<'c, Database = MySql>,
{
    Ok(read(conn, &expect)
        .await?
        .into_iter()
        .filter(|j| expect.matches(j))
        .collect())
}

/// Every job in `expect`'s states, matching or not.
async fn read<'c, A>(conn: A, expect: &Expect) -> Result<Vec<EnqueuedJob>>
where
    A: Acquire<'c, Database = MySql>,
{
    let mut conn = conn.acquire().await?;
    let rows = store::jobs(&mut conn, &expect.states(), MAX_JOBS_READ).await?;
    rows.into_iter().map(EnqueuedJob::from_row).collect()
}

/// Asserts that a job matching `expect` is enqueued, and returns the first (oldest) one. On
/// failure it panics with what was expected and every job in those states, each with why it
/// does not match. A database error panics too, with the error.
pub async fn assert_enqueued<'c, A>(conn: A, expect: Expect) -> EnqueuedJob
where
    A: Acquire<'c, Database = MySql>,
{
    let jobs = read(conn, &expect)
        .await
        .unwrap_or_else(|e| panic!("assert_enqueued could not read jobq_jobs: {e}"));
    match jobs.iter().find(|j| expect.matches(j)) {
        Some(j) => j.clone(),
        None => panic!("{}", missing_message(&expect, &jobs)),
    }
}

/// Asserts that no job matching `expect` is enqueued; on failure it panics listing the ones
/// that match.
pub async fn refute_enqueued<'c, A>(conn: A, expect: Expect)
where
    A: Acquire<'c, Database = MySql>,
{
    let jobs = read(conn, &expect)
        .await
        .unwrap_or_else(|e| panic!("refute_enqueued could not read jobq_jobs: {e}"));
    let found: Vec<&EnqueuedJob> = jobs.iter().filter(|j| expect.matches(j)).collect();
    if !found.is_empty() {
        panic!("{}", found_message(&expect, &found));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(kind: &str, payload: Value) -> EnqueuedJob {
        EnqueuedJob {
            id: JobId(3),
            queue: "default".into(),
            kind: kind.into(),
            payload,
            state: JobState::Available,
            priority: 0,
            run_at: DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            attempt: 0,
            max_attempts: 25,
            unique_key: None,
            concurrency_key: None,
            workflow: None,
            parents: vec![JobId(1)],
            last_error: None,
        }
    }

    #[test]
    fn each_part_matches_or_says_why_not() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let j = job(
            "invoice",
            json!({"order": {"id": 7, "lines": [1, 2]}, "to": "a"}),
        );
        let table: Vec<(Expect, Vec<&str>)> = vec![
            (Expect::any(), vec![]),
            (Expect::kind("invoice"), vec![]),
            (Expect::kind("email"), vec!["kind is \"invoice\""]),
            (Expect::any().queue("billing"), vec!["queue is \"default\""]),
            (Expect::any().payload(json!({"to": "a"})), vec![]),
            (Expect::any().payload(json!({"order": {"id": 7}})), vec![]),
            (
                Expect::any().payload(json!({"order": {"id": 8}})),
                vec!["payload.order.id is 7"],
            ),
            (
                Expect::any().payload(json!({"order": {"lines": [1]}})),
                vec!["payload.order.lines is [1,2]"],
            ),
            (
                Expect::any().payload(json!({"cc": "b"})),
                vec!["payload.cc is missing"],
            ),
            (Expect::any().priority(1), vec!["priority is 0"]),
            (
                Expect::any().scheduled_at(at("2026-12-07T10:00:00.900Z")),
                vec![],
            ),
            (
                Expect::any().scheduled_at(at("2026-12-07T10:00:02Z")),
                vec!["due at 2026-12-07 10:00:00.000 UTC"],
            ),
            (Expect::any().state(JobState::Available), vec![]),
            (
                Expect::any().state(JobState::Blocked),
                vec!["state is available"],
            ),
            (Expect::any().after(JobId(1)), vec![]),
            (
                Expect::any().after(JobId(2)),
                vec!["does not run after job 2"],
            ),
            (
                Expect::any().workflow(WorkflowId(4)),
                vec!["belongs to no workflow"],
            ),
            (
                Expect::kind("email").priority(2),
                vec!["kind is \"invoice\"", "priority is 0"],
            ),
        ];
        for (expect, why) in table {
            assert_eq!(expect.mismatches(&j), why, "{expect}");
        }
    }

    /// A failed assertion names what was expected and lists what was enqueued instead.
    #[test]
    fn a_failed_assertion_lists_what_was_enqueued() {
        let expect = Expect::kind("invoice").payload(json!({"order": 9}));
        let m = missing_message(&expect, &[job("invoice", json!({"order": 7}))]);
        assert_eq!(
            m,
            "expected a job enqueued with kind = \"invoice\", payload ⊇ {\"order\":9}, state in \
             (available, scheduled, waiting, blocked, retryable)\n\
             but none of the 1 job(s) in those states matches:\n  \
             #3 invoice on \"default\", available, priority 0, due 2026-12-07 10:00:00.000 UTC, \
             after 1: {\"order\":7} (payload.order is 7)\n"
        );
        let none = missing_message(&expect, &[]);
        assert!(
            none.ends_with(
                "but no job is in state available, scheduled, waiting, blocked, retryable"
            ),
            "{none}"
        );
        let j = job("invoice", json!({"order": 9}));
        let found = found_message(&expect, &[&j]);
        assert!(found.starts_with("expected no job enqueued with kind = \"invoice\""));
        assert!(found.contains("but 1 match(es):\n  #3 invoice"), "{found}");
    }
}
