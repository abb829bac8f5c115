//! Jobs listed by filter and paged (`jobq jobs list`, the console's job lists, acts by
//! filter), and counted by the same filter.

use chrono::{DateTime, Utc};
use jobq_producer::{JobId, JobState};
use sqlx::{MySqlPool, Row};

use super::inspect::parsed;
use super::{opt_text, text};

/// A job as `jobq jobs list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobSummary {
    /// Id.
    pub id: JobId,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// State.
    pub state: JobState,
    /// Current or last attempt.
    pub attempt: u32,
    /// Allowed attempts.
    pub max_attempts: u32,
    /// Earliest run time.
    pub run_at: DateTime<Utc>,
    /// Last error.
    pub last_error: Option<String>,
}

/// The order of a job listing; every order is newest first and pages by keyset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JobOrder {
    /// By run-at with a state (`jobq_jobs_due`), by id without one. The CLI's order.
    #[default]
    Natural,
    /// By id (the primary key), whatever the filters.
    Id,
    /// By run-at, then id. Without a state, one index walk per state, merged.
    RunAt,
}

/// What `jobq jobs list` and the console's jobs page select. Newest first; `after` continues
/// a listing after that job.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs whose last error contains this text.
    pub error: Option<String>,
    /// At most this many (1 to 10,000).
    pub limit: u32,
    /// Continue after this job (keyset paging: the last id of the previous page).
    pub after: Option<JobId>,
    /// When ordered by run-at, with `after`: that job's run-at as the previous page showed
    /// it. Without it, the job's run-at now is read, which an act on the job since (a retry)
    /// may have moved.
    pub after_run_at: Option<DateTime<Utc>>,
    /// The order.
    pub order: JobOrder,
    /// Only jobs with at most this id: an act confirmed on a count leaves jobs enqueued after
    /// the confirmation alone.
    pub max_id: Option<JobId>,
    /// With a queue, kind or error filter: read at most about this many jobs per page (shared
    /// by the walks; the console's bound on a page's cost). The page then tells where it
    /// stopped. `None`: read as far as it takes to fill the page.
    pub examine: Option<u32>,
}

impl JobFilter {
    /// Whether the listing walks run-at (else the id).
    pub fn by_run_at(&self) -> bool {
        match self.order {
            JobOrder::Natural => self.state.is_some(),
            JobOrder::Id => false,
            JobOrder::RunAt => true,
        }
    }
}

/// A value bound to a `?` of a listing's statement.
enum Bind {
    Id(u64),
    Text(String),
    At(DateTime<Utc>),
}

/// The WHERE conditions every branch of a listing shares (id bound, queue, kind, error text),
/// with their values.
fn filter_conds(f: &JobFilter, conds: &mut Vec<&'static str>, binds: &mut Vec<Bind>) {
    if let Some(max) = f.max_id {
        conds.push("id <= ?");
        binds.push(Bind::Id(max.0));
    }
    if let Some(v) = &f.queue {
        conds.push("queue = ?");
        binds.push(Bind::Text(v.clone()));
    }
    if let Some(v) = &f.kind {
        conds.push("kind = ?");
        binds.push(Bind::Text(v.clone()));
    }
    if let Some(v) = &f.error {
        conds.push("last_error LIKE CONCAT('%', ?, '%')");
        binds.push(Bind::Text(like_literal(v)));
    }
}

/// `text` for a LIKE pattern in which it is matched literally (LIKE's own wildcards escaped).
pub(super) fn like_literal(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

const SUMMARY_COLUMNS: &str =
    "id, queue, kind, CAST(state AS CHAR) AS state, attempt, max_attempts, run_at, last_error";

/// Lists jobs by `f`, newest first, without a sort and without OFFSET: a page costs its rows
/// plus the ones the other filters skip.
/// - by id: the primary key backwards, after the given id;
/// - by run-at with a state: `jobq_jobs_due (state, run_at, id)` backwards, after the given
///   job's (run_at, id);
/// - by run-at without a state: that walk once per state (each stops after `limit` rows),
///   merged: at most 8 × `limit` rows read.
pub(crate) async fn list_jobs(
    pool: &MySqlPool,
    f: &JobFilter,
) -> Result<Vec<JobSummary>, sqlx::Error> {
    Ok(list_page(pool, f).await?.0)
}

/// A position in a listing: a job and its run-at (keyset cursor).
pub(crate) type Cursor = (JobId, DateTime<Utc>);

/// Binds `binds` to `sql`, in order.
fn bound(
    sql: &str,
    binds: Vec<Bind>,
) -> sqlx::query::Query<'_, sqlx::MySql, sqlx::mysql::MySqlArguments> {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            Bind::Id(v) => q.bind(v),
            Bind::Text(v) => q.bind(v),
            Bind::At(v) => q.bind(v),
        };
    }
    q
}

/// [`list_jobs`], with a budget: with `f.examine` set and a filter the walk's index cannot
/// answer (queue, kind, error text), each walk reads at most that many rows. The boundary is
/// found first, index-only (the `examine`-th row of the walk); the page then keeps to rows at
/// or above it. When the page comes out short because of it, the second value is where the
/// search stopped: the next page continues after it.
pub(crate) async fn list_page(
    pool: &MySqlPool,
    f: &JobFilter,
) -> Result<(Vec<JobSummary>, Option<Cursor>), sqlx::Error> {
    let limit = f.limit.clamp(1, 10_000);
    let by_run_at = f.by_run_at();
    let cursor: Option<Cursor> = match (f.after, f.after_run_at) {
        (Some(after), Some(at)) => Some((after, at)),
        (Some(after), None) if by_run_at => {
            // language=MySQL
            let at: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT run_at FROM jobq_jobs WHERE id = ?")
                    .bind(after.0)
                    .fetch_optional(pool)
                    .await?;
            Some((after, at.unwrap_or_else(Utc::now)))
        }
        (Some(after), None) => Some((after, Utc::now())),
        _ => None,
    };
    // One walk per state (run-at order without a state), else one.
    let walks: Vec<Option<JobState>> = match (by_run_at, f.state) {
        (true, None) => JobState::ALL.iter().copied().map(Some).collect(),
        (_, s) => vec![s],
    };
    // The index, the walk's own conditions (state, cursor) and its order.
    let walk = |state: Option<JobState>,
                binds: &mut Vec<Bind>|
     -> (&'static str, Vec<&'static str>, &'static str) {
        let mut conds = Vec::new();
        if let Some(s) = state {
            conds.push("state = ?");
            binds.push(Bind::Text(s.as_str().to_owned()));
        }
        if by_run_at {
            if let Some((after, at)) = cursor {
                conds.push("(run_at < ? OR (run_at = ? AND id < ?))");
                binds.extend([Bind::At(at), Bind::At(at), Bind::Id(after.0)]);
            }
            ("jobq_jobs_due", conds, "run_at DESC, id DESC")
        } else {
            if let Some((after, _)) = cursor {
                conds.push("id < ?");
                binds.push(Bind::Id(after.0));
            }
            // The primary key, also with a state: a state's index range is in run-at order.
            ("PRIMARY", conds, "id DESC")
        }
    };
    // What the walk's index cannot answer: queue, kind, error text, and the state of a walk
    // along the primary key (which reads every state's rows).
    let filtered = f.queue.is_some()
        || f.kind.is_some()
        || f.error.is_some()
        || (f.state.is_some() && !by_run_at);
    let mut floor: Option<Cursor> = None;
    if let (Some(examine), true) = (f.examine, filtered) {
        // The budget is shared by the walks (8 without a state).
        let budget = (examine / walks.len() as u32).max(1);
        for &state in &walks {
            let mut binds = Vec::new();
            // Along the primary key the budget counts rows of every state.
            let (index, conds, order) = walk(state.filter(|_| by_run_at), &mut binds);
            let cond = if conds.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conds.join(" AND "))
            };
            // language=MySQL
            let sql = format!(
                "SELECT id, run_at FROM jobq_jobs FORCE INDEX ({index}) {cond} \
                 ORDER BY {order} LIMIT 1 OFFSET {}",
                budget.max(1) - 1
            );
            if let Some(r) = bound(&sql, binds).fetch_optional(pool).await? {
                let b: Cursor = (JobId(r.try_get("id")?), r.try_get("run_at")?);
                let newer = |a: &Cursor, b: &Cursor| {
                    if by_run_at {
                        (a.1, a.0) > (b.1, b.0)
                    } else {
                        a.0 > b.0
                    }
                };
                if floor.is_none_or(|fl| newer(&b, &fl)) {
                    floor = Some(b);
                }
            }
        }
    }
    let mut binds = Vec::new();
    let mut branches = Vec::with_capacity(walks.len());
    for &state in &walks {
        let (index, mut conds, order) = walk(state, &mut binds);
        if let Some((id, at)) = floor {
            if by_run_at {
                conds.push("(run_at > ? OR (run_at = ? AND id >= ?))");
                binds.extend([Bind::At(at), Bind::At(at), Bind::Id(id.0)]);
            } else {
                conds.push("id >= ?");
                binds.push(Bind::Id(id.0));
            }
        }
        filter_conds(f, &mut conds, &mut binds);
        let cond = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        // language=MySQL
        branches.push(format!(
            "(SELECT {SUMMARY_COLUMNS} FROM jobq_jobs FORCE INDEX ({index}) {cond} \
             ORDER BY {order} LIMIT {limit})"
        ));
    }
    let sql = if branches.len() == 1 {
        branches.pop().expect("one branch")
    } else {
        format!(
            "SELECT * FROM ({}) u ORDER BY run_at DESC, id DESC LIMIT {limit}",
            branches.join(" UNION ALL ")
        )
    };
    let rows = bound(&sql, binds).fetch_all(pool).await?;
    let jobs = rows
        .into_iter()
        .map(|r| {
            Ok(JobSummary {
                id: JobId(r.try_get("id")?),
                queue: text(&r, "queue")?,
                kind: text(&r, "kind")?,
                state: parsed(&r, "state")?,
                attempt: r.try_get("attempt")?,
                max_attempts: r.try_get("max_attempts")?,
                run_at: r.try_get("run_at")?,
                last_error: opt_text(&r, "last_error")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let stopped = if jobs.len() < limit as usize {
        floor
    } else {
        None
    };
    Ok((jobs, stopped))
}

/// The newest job's id (what a confirmation bounds its act with).
#[cfg(feature = "console")]
pub(crate) async fn newest_job(pool: &MySqlPool) -> Result<Option<u64>, sqlx::Error> {
    // language=MySQL
    sqlx::query_scalar("SELECT MAX(id) FROM jobq_jobs")
        .fetch_one(pool)
        .await
}

/// How many jobs in `state` match the filter's id bound, queue, kind and error text (a count over the
/// state's range of `jobq_jobs_due`; the cursor and order are ignored).
pub(crate) async fn count_jobs(
    pool: &MySqlPool,
    state: JobState,
    f: &JobFilter,
) -> Result<i64, sqlx::Error> {
    let mut conds = vec!["state = ?"];
    let mut binds = vec![Bind::Text(state.as_str().to_owned())];
    filter_conds(f, &mut conds, &mut binds);
    // language=MySQL
    let sql = format!(
        "SELECT COUNT(*) FROM jobq_jobs FORCE INDEX (jobq_jobs_due) WHERE {}",
        conds.join(" AND ")
    );
    let row = bound(&sql, binds).fetch_one(pool).await?;
    row.try_get(0)
}
