//! All SQL of the producer: job inserts here, a workflow's insert in [`workflow`], what
//! `wait_for` and `follow` read in [`follow`].
//!
//! No statement here takes a locking read: callers run `enqueue_in` inside their own
//! transactions, usually at the server's default REPEATABLE READ, where an `INSERT … SELECT`
//! would take next-key locks on `jobq_jobs` and block every other producer until the caller
//! commits. So the database clock is read once, and both the jobs and their `enqueued` history
//! rows are inserted with plain `VALUES`.

use chrono::{DateTime, Utc};
use sqlx::{MySqlConnection, MySqlPool};

use std::collections::BTreeMap;

use crate::deps::{self, OnParentFailure};
use crate::error::{Error, Result};
use crate::job::{JobId, JobState};
use crate::producer::Enqueued;

/// A validated row to insert.
#[derive(Clone, Debug)]
pub(crate) struct JobInsert {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) priority: i16,
    /// Absolute run-at, or `None` for now + `delay_us` on the database clock.
    pub(crate) run_at: Option<DateTime<Utc>>,
    pub(crate) delay_us: i64,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<String>,
    /// How long a finished job keeps its key, in microseconds.
    pub(crate) unique_period_us: Option<i64>,
    /// On a duplicate, replace the existing job if it never started.
    pub(crate) replace: bool,
    /// Jobs with the same key in the queue share its concurrency and rate limits.
    pub(crate) concurrency_key: Option<String>,
    /// Existing jobs this one runs after ([`crate::NewJob::after`]).
    pub(crate) parents: Vec<JobId>,
    /// What it does when one of them fails.
    pub(crate) on_parent_failure: OnParentFailure,
    /// The trace context its handler's span continues.
    pub(crate) trace: Option<crate::trace::TraceContext>,
}

/// How a row starts: its state and run-at, and what links it to other jobs.
#[derive(Clone, Debug)]
pub(crate) struct Begin {
    pub(crate) state: &'static str,
    pub(crate) run_at: DateTime<Utc>,
    /// Parents still to end (`blocked` jobs).
    pub(crate) pending: u32,
    /// Jobs that depend on it (known at insert: a workflow's).
    pub(crate) dependents: u32,
    pub(crate) workflow: Option<u64>,
    /// Why it starts `cancelled` (a parent already failed).
    pub(crate) error: Option<String>,
}

impl Begin {
    /// Whether the row needs the columns a plain job leaves at their defaults.
    fn linked(&self) -> bool {
        self.pending > 0 || self.dependents > 0 || self.workflow.is_some() || self.error.is_some()
    }

    /// How a job without parents starts: `scheduled` if not yet due, else `available`.
    pub(crate) fn plain(r: &JobInsert, now: DateTime<Utc>) -> Begin {
        let (run_at, state) = start_of(r, now);
        Begin {
            state,
            run_at,
            pending: 0,
            dependents: 0,
            workflow: None,
            error: None,
        }
    }

    /// How a job starts given what [`deps::start`] decided.
    pub(crate) fn of(r: &JobInsert, start: &deps::Start, now: DateTime<Utc>) -> Begin {
        let mut b = Begin::plain(r, now);
        match start {
            deps::Start::Ready => {}
            deps::Start::Blocked { pending } => {
                b.state = "blocked";
                b.pending = *pending;
            }
            deps::Start::Cancelled(why) => {
                b.state = "cancelled";
                b.error = Some(why.clone());
            }
        }
        b
    }
}

/// Rows per INSERT: 9 placeholders a row stays far below the 65 535-parameter limit.
const CHUNK_ROWS: usize = 1000;
/// Payload bytes per INSERT, well under the default `max_allowed_packet` (16 MiB); a larger
/// packet makes the server drop the connection instead of answering with an error.
pub const CHUNK_BYTES: usize = 4 << 20;

pub(crate) use jobq_sqlkit::begin;

mod follow;
mod workflow;
pub(crate) use follow::{job_end, logs_after, progress_of};
pub(crate) use workflow::{insert_workflow, WorkflowInsert};

/// The unique jobs of `rows`' keys that are `running`, read on a session of their own (see
/// [`running_holders`]): a duplicate of one of them is answered without touching its row.
#[derive(Debug, Default)]
pub(crate) struct RunningHolders {
    /// The server and database they were read on (`SERVER_IDENTITY`).
    server: String,
    /// `kind/key` → the running job's id.
    ids: std::collections::HashMap<String, JobId>,
}

/// `host:port#server_id/database` of a session: whether two sessions write to the same jobs
/// table.
const SERVER_IDENTITY: &str =
    "CONCAT(@@hostname, ':', @@port, '#', @@server_id, '/', COALESCE(DATABASE(), ''))";

/// Reads which of `rows`' unique keys are held by a `running` job, on a session of `pool`
/// other than the writer's. Why: a duplicate's `ON DUPLICATE KEY UPDATE` locks the existing
/// job's row until the enqueueing transaction ends, and a running job whose row a producer's
/// open transaction holds cannot be completed (its worker waits, then fails with 1205) and is
/// run again. This read locks nothing and sees the newest committed state. Waits at most
/// `wait` for a connection (the caller may hold the pool's last one). Without a connection,
/// or if the read fails, nothing is known and every duplicate takes the locking path.
pub(crate) async fn running_holders(
    pool: &MySqlPool,
    rows: &[JobInsert],
    wait: std::time::Duration,
) -> RunningHolders {
    match read_running_holders(pool, rows, wait).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "could not look for running duplicates; taking the locking path");
            RunningHolders::default()
        }
    }
}

async fn read_running_holders(
    pool: &MySqlPool,
    rows: &[JobInsert],
    wait: std::time::Duration,
) -> Result<RunningHolders> {
    let keys: Vec<String> = rows
        .iter()
        .filter_map(|r| Some(format!("{}/{}", r.kind, r.unique_key.as_ref()?)))
        .collect();
    if keys.is_empty() {
        return Ok(RunningHolders::default());
    }
    let Ok(conn) = tokio::time::timeout(wait, pool.acquire()).await else {
        return Ok(RunningHolders::default());
    };
    let mut conn = conn?;
    let marks = vec!["?"; keys.len()].join(", ");
    // language=MySQL
    // By the unique index; `unique_active` is `kind/key` while the job holds its key.
    let sql = format!(
        "SELECT id, CAST(unique_active AS CHAR), {SERVER_IDENTITY} FROM jobq_jobs \
         WHERE unique_active IN ({marks}) AND state = 'running'"
    );
    let mut q = sqlx::query_as::<_, (u64, String, String)>(&sql);
    for k in &keys {
        q = q.bind(k);
    }
    let mut out = RunningHolders::default();
    for (id, key, server) in q.fetch_all(&mut *conn).await? {
        out.server = server;
        out.ids.insert(key, JobId(id));
    }
    Ok(out)
}

/// Inserts `rows` through `conn` (inside the caller's transaction when it has one) and writes
/// one `enqueued` transition per job. Returns ids in input order.
pub(crate) async fn insert_jobs(
    conn: &mut MySqlConnection,
    rows: &[JobInsert],
    running: &RunningHolders,
) -> Result<Vec<Enqueued>> {
    // language=MySQL
    // The database clock, read once: every time of this call derives from it, so the state a
    // job starts in and its history row agree. The session's server too: `running` counts
    // only if it was read where these rows go.
    let (inc, now, server): (u64, DateTime<Utc>, String) = sqlx::query_as(&format!(
        "SELECT @@auto_increment_increment, UTC_TIMESTAMP(6), {SERVER_IDENTITY}"
    ))
    .fetch_one(&mut *conn)
    .await?;
    let running = (running.server == server).then_some(&running.ids);
    // Parents named by id: locked and counted first, so each child starts by its parents'
    // states as they are now, and a parent ending meanwhile finds the child's edge.
    let parents = lock_parents(conn, rows).await?;
    let begins: Vec<Begin> = rows
        .iter()
        .map(|r| {
            if r.parents.is_empty() {
                return Begin::plain(r, now);
            }
            let of: Vec<(u64, JobState, OnParentFailure)> = r
                .parents
                .iter()
                .map(|p| (p.0, parents[&p.0], r.on_parent_failure))
                .collect();
            Begin::of(r, &deps::start(&of), now)
        })
        .collect();
    let mut out: Vec<Option<Enqueued>> = vec![None; rows.len()];
    // Plain jobs go in multi-row INSERTs; unique ones one by one, since each may turn out a
    // duplicate (and a multi-row INSERT's ids are only known when every row is inserted).
    let plain: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].unique_key.is_none())
        .collect();
    for (start, end) in chunks(&plain, |i| rows[i].payload.len()) {
        let chunk: Vec<(&JobInsert, &Begin)> = plain[start..end]
            .iter()
            .map(|&i| (&rows[i], &begins[i]))
            .collect();
        let ids = insert_chunk(conn, &chunk, inc, now).await?;
        for (&i, id) in plain[start..end].iter().zip(ids) {
            out[i] = Some(Enqueued {
                id,
                duplicate: false,
                replaced: false,
            });
        }
    }
    for (i, r) in rows.iter().enumerate() {
        let Some(key) = &r.unique_key else { continue };
        // A duplicate of a running job: its id, and its row left alone (a running job is
        // never replaced, and its `duplicates` counter is not raised).
        let holder = running.and_then(|m| m.get(&format!("{}/{key}", r.kind)));
        out[i] = Some(match holder {
            Some(&id) => Enqueued {
                id,
                duplicate: true,
                replaced: false,
            },
            None => insert_unique(conn, r, &begins[i], now).await?,
        });
    }
    let out: Vec<Enqueued> = out
        .into_iter()
        .map(|e| e.expect("every row inserted above"))
        .collect();
    // The edges of the children inserted (a duplicate keeps the existing job's edges).
    let mut edges = Vec::new();
    for (r, e) in rows.iter().zip(&out) {
        if e.duplicate {
            continue;
        }
        for p in &r.parents {
            let ended = Some(parents[&p.0]).filter(|s| s.is_final());
            edges.push(Edge {
                parent: p.0,
                child: e.id.0,
                on_failure: r.on_parent_failure,
                ended,
            });
        }
    }
    insert_edges(conn, &edges, now).await?;
    Ok(out)
}

/// `[start, end)` ranges of `items` for multi-row INSERTs: at most [`CHUNK_ROWS`] rows and
/// [`CHUNK_BYTES`] of payload each (a single larger row goes alone).
pub(crate) fn chunks(items: &[usize], bytes_of: impl Fn(usize) -> usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < items.len()
            && end - start < CHUNK_ROWS
            && (end == start || bytes + bytes_of(items[end]) <= CHUNK_BYTES)
        {
            bytes += bytes_of(items[end]);
            end += 1;
        }
        out.push((start, end));
        start = end;
    }
    out
}

/// The states of every parent `rows` name by id, after raising each one's `dependents`
/// count (which locks it until the enqueue commits: keep such a transaction short, as the
/// parent's completion waits for it). Both statements are current reads, whatever the
/// caller's isolation: a parent committed after the caller's snapshot is found. A parent that
/// does not exist fails the enqueue ([`Error::NoSuchParent`]).
async fn lock_parents(
    conn: &mut MySqlConnection,
    rows: &[JobInsert],
) -> Result<BTreeMap<u64, JobState>> {
    let mut count: BTreeMap<u64, u32> = BTreeMap::new();
    for p in rows.iter().flat_map(|r| &r.parents) {
        *count.entry(p.0).or_default() += 1;
    }
    if count.is_empty() {
        return Ok(BTreeMap::new());
    }
    let ids = count
        .keys()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // language=MySQL
    // A locking read first, in ascending ids (the order every writer locks jobs in), and a
    // current read whatever the caller's isolation. A missing parent fails the enqueue before
    // anything is written.
    let states: Vec<(u64, String)> = sqlx::query_as(&format!(
        "SELECT id, CAST(state AS CHAR) FROM jobq_jobs WHERE id IN ({ids}) ORDER BY id FOR UPDATE"
    ))
    .fetch_all(&mut *conn)
    .await?;
    if let Some(&missing) = count
        .keys()
        .find(|id| !states.iter().any(|(s, _)| s == *id))
    {
        return Err(Error::NoSuchParent(JobId(missing)));
    }
    // Then one statement per count, on rows this transaction holds.
    let mut by_count: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (id, n) in &count {
        by_count.entry(*n).or_default().push(*id);
    }
    for (n, group) in by_count {
        let list = group
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // language=MySQL
        sqlx::query(&format!(
            "UPDATE jobq_jobs SET dependents = dependents + {n} WHERE id IN ({list})"
        ))
        .execute(&mut *conn)
        .await?;
    }
    let mut out = BTreeMap::new();
    for (id, state) in states {
        let state = state
            .parse()
            .map_err(|e: String| Error::Database(sqlx::Error::Decode(e.into())))?;
        out.insert(id, state);
    }
    Ok(out)
}

/// One edge to insert: `child` runs after `parent`; `ended` is the parent's final state if it
/// had already ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Edge {
    pub(crate) parent: u64,
    pub(crate) child: u64,
    pub(crate) on_failure: OnParentFailure,
    pub(crate) ended: Option<JobState>,
}

/// Inserts `edges` in multi-row INSERTs.
pub(crate) async fn insert_edges(
    conn: &mut MySqlConnection,
    edges: &[Edge],
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in edges.chunks(CHUNK_ROWS) {
        // language=MySQL
        let mut sql = String::from(
            "INSERT INTO jobq_deps (parent_id, child_id, on_failure, parent_state, resolved_at) VALUES ",
        );
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "({}, {}, '{}', ?, ?)",
                e.parent, e.child, e.on_failure
            ));
        }
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(e.ended.map(JobState::as_str))
                .bind(e.ended.map(|_| now));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts a unique job, or finds the unique job of the same kind and key that is waiting or
/// running. The unique index `jobq_jobs_unique (unique_active)` decides, where
/// `unique_active` is `kind/key` while the job is `available`, `scheduled`, `running`,
/// `retryable` or `waiting` and NULL after: no check-then-insert, so concurrent producers cannot both
/// insert. On a duplicate, `id = LAST_INSERT_ID(id)` hands back the existing id and
/// `duplicates + 1` both counts it and makes the reply say "updated" (2 rows) rather than
/// "inserted" (1).
async fn insert_unique(
    conn: &mut MySqlConnection,
    r: &JobInsert,
    b: &Begin,
    now: DateTime<Utc>,
) -> Result<Enqueued> {
    let (run_at, state) = (b.run_at, b.state);
    let mut tries = 0;
    let id = loop {
        tries += 1;
        // language=MySQL
        let res = sqlx::query(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, priority, run_at, max_attempts, created_at, unique_key, unique_period_us, concurrency_key, \
                                    pending_parents, last_error, finalized_at, traceparent, tracestate) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, IF(? = 'cancelled', ?, NULL), ?, ?) \
             ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id), duplicates = duplicates + 1",
        )
        .bind(&r.queue)
        .bind(&r.kind)
        .bind(&r.payload)
        .bind(state)
        .bind(r.priority)
        .bind(run_at)
        .bind(r.max_attempts)
        .bind(now)
        .bind(&r.unique_key)
        .bind(r.unique_period_us)
        .bind(&r.concurrency_key)
        .bind(b.pending)
        .bind(&b.error)
        .bind(state)
        .bind(now)
        .bind(r.trace.as_ref().map(|t| t.traceparent()))
        .bind(r.trace.as_ref().and_then(|t| t.tracestate()))
        .execute(&mut *conn)
        .await?;
        let id = JobId(res.last_insert_id());
        if res.rows_affected() == 1 {
            break id;
        }
        // The key's holder may be a finished job whose hold has run out: end the hold (and
        // take back the duplicate count) and insert again.
        if tries == 1 && end_expired_hold(conn, id).await? {
            continue;
        }
        let replaced = r.replace && replace_waiting(conn, id, r, run_at, state, now).await?;
        return Ok(Enqueued {
            id,
            duplicate: true,
            replaced,
        });
    };
    insert_enqueued(conn, &[(id, state)], now).await?;
    Ok(Enqueued {
        id,
        duplicate: false,
        replaced: false,
    })
}

/// Ends the key hold of finished job `id` if its period has passed; true if it did.
async fn end_expired_hold(conn: &mut MySqlConnection, id: JobId) -> Result<bool> {
    // language=MySQL
    let n = sqlx::query(
        "UPDATE jobq_jobs SET unique_period_us = NULL, duplicates = duplicates - 1 \
         WHERE id = ? AND state IN ('completed', 'discarded', 'cancelled') \
           AND unique_period_us IS NOT NULL \
           AND COALESCE(finalized_at, run_at) + INTERVAL unique_period_us MICROSECOND <= UTC_TIMESTAMP(6)",
    )
    .bind(id.0)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Debounce: gives the existing job `id` the new job's payload, priority and run-at if it has
/// never started (`available`, `scheduled` or `waiting` with attempt 0), recording a
/// `replaced` transition; true only if it did. Inside the caller's transaction the duplicate's
/// UPDATE above already holds the row's lock until it ends, so no claim can take the job in
/// between (claims skip locked rows). Outside one (each statement commits on its own) the
/// replacement runs in a transaction of its own that locks the row first: the job is replaced
/// together with its transition, or not at all, and a job a claim took meanwhile is reported
/// as not replaced.
async fn replace_waiting(
    conn: &mut MySqlConnection,
    id: JobId,
    r: &JobInsert,
    run_at: DateTime<Utc>,
    state: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    use sqlx::{Connection, Database, TransactionManager};
    if <sqlx::MySql as Database>::TransactionManager::get_transaction_depth(conn) == 0 {
        let mut tx = conn.begin().await?;
        let replaced = replace_in(&mut tx, id, r, run_at, state, now).await?;
        tx.commit().await?;
        return Ok(replaced);
    }
    replace_in(conn, id, r, run_at, state, now).await
}

/// [`replace_waiting`] inside a transaction.
async fn replace_in(
    conn: &mut MySqlConnection,
    id: JobId,
    r: &JobInsert,
    run_at: DateTime<Utc>,
    state: &str,
    now: DateTime<Utc>,
) -> Result<bool> {
    // language=MySQL
    // A locking read of one row by primary key (no gap lock): the job as it is now.
    let before: Option<String> = sqlx::query_scalar(
        "SELECT CAST(state AS CHAR) FROM jobq_jobs \
         WHERE id = ? AND state IN ('available', 'scheduled', 'waiting') AND attempt = 0 FOR UPDATE",
    )
    .bind(id.0)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(before) = before else {
        return Ok(false);
    };
    // language=MySQL
    let changed = sqlx::query(
        "UPDATE jobq_jobs SET payload = ?, priority = ?, run_at = ?, state = ? \
         WHERE id = ? AND state IN ('available', 'scheduled', 'waiting') AND attempt = 0",
    )
    .bind(&r.payload)
    .bind(r.priority)
    .bind(run_at)
    .bind(state)
    .bind(id.0)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        // The row is locked above, so this cannot happen; if it did, nothing was replaced.
        return Ok(false);
    }
    // language=MySQL
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) \
         VALUES (?, ?, ?, 'replaced', 0, ?)",
    )
    .bind(id.0)
    .bind(before)
    .bind(state)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Whether `e` is a deadlock (1213): the server rolled the whole transaction back.
pub(crate) fn is_deadlock(e: &Error) -> bool {
    matches!(e, Error::Database(e) if jobq_sqlkit::is_number(e, jobq_sqlkit::codes::DEADLOCK))
}

/// When a job may first run, and whether it starts `scheduled` (not yet due) or `available`.
fn start_of(r: &JobInsert, now: DateTime<Utc>) -> (DateTime<Utc>, &'static str) {
    let run_at = r
        .run_at
        .unwrap_or_else(|| now + chrono::Duration::microseconds(r.delay_us));
    (
        run_at,
        if run_at > now {
            "scheduled"
        } else {
            "available"
        },
    )
}

/// Inserts `rows` in one multi-row INSERT, each as its [`Begin`] says, with their `enqueued`
/// history rows; returns their ids in order.
pub(crate) async fn insert_chunk(
    conn: &mut MySqlConnection,
    rows: &[(&JobInsert, &Begin)],
    inc: u64,
    now: DateTime<Utc>,
) -> Result<Vec<JobId>> {
    // language=MySQL
    // A job not yet due starts `scheduled`, out of the claim's way; maintenance makes it
    // `available` when due. The columns of dependencies and workflows are sent only when a
    // row of the chunk has any (a plain job leaves them at their defaults).
    // Likewise the trace columns, only when a row has a trace context.
    let linked = rows.iter().any(|(_, b)| b.linked());
    let traced = rows.iter().any(|(r, _)| r.trace.is_some());
    let row = match (linked, traced) {
        (true, true) => "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (true, false) => "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (false, true) => "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (false, false) => "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
    };
    let mut sql = String::with_capacity(260 + rows.len() * (row.len() + 1));
    sql.push_str(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, priority, run_at, max_attempts, created_at, concurrency_key",
    );
    if linked {
        sql.push_str(", pending_parents, dependents, workflow_id, last_error, finalized_at");
    }
    if traced {
        sql.push_str(", traceparent, tracestate");
    }
    sql.push_str(") VALUES ");
    for i in 0..rows.len() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
    let mut q = sqlx::query(&sql);
    for (r, b) in rows {
        q = q
            .bind(&r.queue)
            .bind(&r.kind)
            .bind(&r.payload)
            .bind(b.state)
            .bind(r.priority)
            .bind(b.run_at)
            .bind(r.max_attempts)
            .bind(now)
            .bind(&r.concurrency_key);
        if linked {
            q = q
                .bind(b.pending)
                .bind(b.dependents)
                .bind(b.workflow)
                .bind(&b.error)
                .bind(b.error.as_ref().map(|_| now));
        }
        if traced {
            q = q
                .bind(r.trace.as_ref().map(|t| t.traceparent()))
                .bind(r.trace.as_ref().and_then(|t| t.tracestate()));
        }
    }
    let res = q.execute(&mut *conn).await?;
    let n = res.rows_affected();
    if n != rows.len() as u64 {
        return Err(Error::IdMismatch {
            inserted: n,
            matched: rows.len() as u64,
        });
    }
    let first = res.last_insert_id();

    // A multi-row INSERT whose row count is known in advance gets its auto-increment values in
    // one reservation, so its ids are first, first + inc, … (inc = auto_increment_increment, 1
    // unless Galera or multi-source setups change it). The history rows use exactly those ids.
    let ids: Vec<JobId> = (0..n).map(|i| JobId(first + i * inc)).collect();
    let history: Vec<(JobId, &str)> = ids
        .iter()
        .zip(rows)
        .map(|(&id, (_, b))| (id, b.state))
        .collect();
    insert_enqueued(conn, &history, now).await?;
    Ok(ids)
}

/// The `enqueued` history rows of newly inserted jobs: (id, the state each starts in).
pub(crate) async fn insert_enqueued(
    conn: &mut MySqlConnection,
    jobs: &[(JobId, &str)],
    now: DateTime<Utc>,
) -> Result<()> {
    // language=MySQL
    let mut sql = String::with_capacity(120 + jobs.len() * 24);
    sql.push_str(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) VALUES ",
    );
    for i in 0..jobs.len() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, NULL, ?, 'enqueued', 0, ?)");
    }
    let mut q = sqlx::query(&sql);
    for (id, state) in jobs {
        q = q.bind(id.0).bind(*state).bind(now);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}
