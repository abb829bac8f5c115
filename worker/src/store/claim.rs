//! The claim's reads: the transaction that turns `available` jobs into this worker's `running`
//! jobs, opened and read here in typed steps (the queue's rate window, the jobs, the keys'
//! rows and counts), written and committed by `claim_write.rs`. Nothing here decides: the
//! plan comes from `machine/claim.rs`, and `runtime/claim.rs` runs the steps in order.
//!
//! One claim, in round trips:
//!
//! 1. `START TRANSACTION; [completions;] SELECT … FOR UPDATE [SKIP LOCKED]` — complete the
//!    carried successes, lock the batch in index order ([`ClaimTx::open`]). With a queue rate
//!    limit this round trip locks the queue's `jobq_queues` row and reads its window instead,
//!    and the jobs follow in a round trip of their own ([`ClaimTx::read`]), no more than the
//!    window allows;
//! 2. with concurrency keys in the batch (or carried): lock the keys' rows and count their jobs
//!    ([`ClaimTx::lock_keys`], see `keys.rs`);
//! 3. the plan's writes, `COMMIT` and its confirmation (`claim_write.rs`; `RELEASE_LOCK` in
//!    named-lock mode: strictly after the commit, or the next claimer could read rows this
//!    claim has not yet committed as taken).
//!
//! On any error the transaction is rolled back, or the session discarded when even that fails.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jobq_producer::{KindName, QueueName};
use sqlx::mysql::MySqlRow;
use sqlx::Row;

use super::claim_write::ClaimError;
use super::finish::{completion_sql, COMPLETION_UPDATE};
use super::keys::{lock_and_count_sql, read_key_state, waiting_probe_sql, NOW_US};
use super::sql::{lit, RawTx, Session};
use super::{opt_text, text};
use crate::ids::{LockName, WorkerId};
use crate::model::{ClaimedJob, Cursor, Fence, KeyState, Token, Undecodable};

/// How concurrent claimers of one queue are kept apart.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ClaimLock<'a> {
    /// `FOR UPDATE SKIP LOCKED`: claimers skip each other's rows.
    SkipLocked,
    /// The caller holds this named lock, so no other jobq claimer competes; the lock is released
    /// in the claim's last round trip, after its COMMIT. The read still skips locked rows: a
    /// producer's uncommitted insert must not stall the queue behind it.
    NamedLock(&'a LockName),
}

/// Which jobs to read: up to `limit` available jobs of the queue, whatever their kind (a job of
/// a kind this worker has no handler for fails its attempt visibly, see `runtime/executor.rs`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct JobRead<'a> {
    pub(crate) limit: u32,
    /// Read only jobs after this position in claim order: the entries before it were just
    /// claimed by this claimer, and until purge removes them the index still holds them,
    /// delete-marked, for every read from the head to step over (see `runtime/claimer.rs`
    /// for when a claim may skip the head).
    pub(crate) after: Option<&'a Cursor>,
    /// Keys to probe for waiting jobs beside the read (a plain read, no lock): the carried
    /// completions' keys.
    pub(crate) probe: &'a BTreeSet<String>,
}

/// What opens a claim transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Opening<'a> {
    pub(crate) queue: &'a QueueName,
    pub(crate) worker: &'a WorkerId,
    /// The lease the claimed jobs get.
    pub(crate) lease: Duration,
    pub(crate) lock: ClaimLock<'a>,
    /// Successes of this worker to complete in the same transaction: their slots are the ones
    /// this claim fills, so the process never has more `running` rows than slots, and one
    /// commit serves both.
    pub(crate) complete: &'a [Fence],
    /// The results (job id, JSON text) of the carried completions that have one.
    pub(crate) results: &'a [(u64, String)],
    /// `None`: lock the queue's row and read its rate window first ([`Opened::Window`]).
    pub(crate) jobs: Option<JobRead<'a>>,
}

/// The jobs a claim read, in claim order.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) jobs: Vec<ClaimedJob>,
    /// Rows it read but could not decode (locked like the others).
    pub(crate) undecodable: Vec<Undecodable>,
    /// The probed keys that have waiting jobs.
    pub(crate) probed: BTreeSet<String>,
    /// Where the read stopped: its last row (`None`: it read none).
    pub(crate) last: Option<Cursor>,
}

/// What the first round trip read.
#[derive(Debug)]
pub(crate) enum First {
    /// The queue's rate window (`jobq_queues.rate_state`), read under the row's lock at
    /// `now_us` (the database clock, after the lock, µs since the epoch).
    Window { stored: Option<String>, now_us: i64 },
    /// The jobs.
    Jobs(Batch),
}

/// A claim transaction, open on its session: read and lock here, end with `commit`
/// (`claim_write.rs`). Dropped unfinished, it discards its session (never back to a pool
/// mid-transaction).
pub(crate) struct ClaimTx<'s, 'a, S: Session> {
    pub(super) tx: RawTx<'s, S>,
    pub(super) opening: Opening<'a>,
    /// The fencing token of the jobs this claim starts.
    pub(super) token: Token,
}

impl<'s, 'a, S: Session> ClaimTx<'s, 'a, S> {
    /// Round trip 1: begins, completes the carried successes, and reads the queue's rate window
    /// or the jobs. Returns how many carried successes were completed (the others had been
    /// taken back) and what it read.
    pub(crate) async fn open(
        session: &'s mut S,
        opening: Opening<'a>,
    ) -> Result<(Self, u64, First), ClaimError> {
        let q = lit(opening.queue);
        // language=MySQL
        // A queue rate limit: lock the queue's row, then read the clock (after the lock, so the
        // claims of the queue read it in the order they hold the window).
        let read = match &opening.jobs {
            None => format!(
                "INSERT INTO jobq_queues (name) VALUES ({q}) ON DUPLICATE KEY UPDATE name = name; \
                 SET @jobq_now := UTC_TIMESTAMP(6); \
                 SELECT CAST(rate_state AS CHAR) AS rate_state, {NOW_US} AS now_us FROM jobq_queues WHERE name = {q}"
            ),
            Some(r) => jobs_sql(opening.queue, r),
        };
        let first = if opening.complete.is_empty() {
            read
        } else {
            format!(
                "{}; {read}",
                completion_sql(opening.complete, opening.results)
            )
        };
        let (tx, (rows, counts)) = RawTx::begin(session, &first).await?;
        // Counts: START TRANSACTION, [the completion statements,] the rest.
        let completed = if opening.complete.is_empty() {
            0
        } else {
            counts.get(1 + COMPLETION_UPDATE).copied().unwrap_or(0)
        };
        let mut claim = ClaimTx {
            tx,
            opening,
            token: rand::random(),
        };
        let first = match opening.jobs {
            Some(_) => claim.decode(rows).await.map(First::Jobs),
            None => match rows.last().map(|r| {
                Ok::<_, sqlx::Error>(First::Window {
                    stored: r.try_get("rate_state")?,
                    now_us: r.try_get("now_us")?,
                })
            }) {
                Some(Ok(w)) => Ok(w),
                Some(Err(e)) => Err(e),
                None => Err(sqlx::Error::RowNotFound),
            },
        };
        match first {
            Ok(first) => Ok((claim, completed, first)),
            Err(e) => {
                claim.tx.rollback().await;
                Err(e.into())
            }
        }
    }

    /// The jobs, after the rate window (round trip 1b).
    pub(crate) async fn read(self, read: JobRead<'_>) -> Result<(Self, Batch), ClaimError> {
        let ClaimTx { tx, opening, token } = self;
        let (tx, (rows, _)) = tx.step(&jobs_sql(opening.queue, &read)).await?;
        let mut claim = ClaimTx { tx, opening, token };
        match claim.decode(rows).await {
            Ok(b) => Ok((claim, b)),
            Err(e) => {
                claim.tx.rollback().await;
                Err(e.into())
            }
        }
    }

    /// Round trip 2: locks the rows of `keys` (ascending) recording the limit given for each,
    /// counts their running jobs, reads their rate windows (`with_rate`), and locks the first
    /// waiting jobs of the `promote` keys (counting those keys' available jobs too); see
    /// `keys.rs`. The clock is read after the locks.
    pub(crate) async fn lock_keys(
        self,
        keys: &BTreeMap<String, u32>,
        with_rate: bool,
        promote: &BTreeMap<String, u32>,
    ) -> Result<(Self, KeyState), ClaimError> {
        let ClaimTx { tx, opening, token } = self;
        let sql = lock_and_count_sql(opening.queue, keys, with_rate, promote);
        let (mut tx, (rows, _)) = tx.step(&sql).await?;
        match read_key_state(&rows) {
            Ok(k) => Ok((ClaimTx { tx, opening, token }, k)),
            Err(e) => {
                tx.rollback().await;
                Err(e.into())
            }
        }
    }

    /// The jobs and probe rows of a read, decoded; the jobs carry this claim's token.
    async fn decode(&mut self, rows: Vec<MySqlRow>) -> Result<Batch, sqlx::Error> {
        let (probed, rows): (Vec<MySqlRow>, Vec<MySqlRow>) = rows
            .into_iter()
            .partition(|r| r.try_column("probe_key").is_ok());
        let probed = probed
            .iter()
            .map(|r| text(r, "probe_key"))
            .collect::<Result<_, _>>()?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut undecodable = Vec::new();
        for r in &rows {
            match decode_job(r, self.token) {
                Ok(job) => jobs.push(job),
                // Only what the row holds is the row's fault; anything else (a column missing,
                // a type that does not match) is the claim's and fails it, loudly.
                Err(e) if is_content_error(&e) => undecodable.push(Undecodable {
                    id: r.try_get("id")?,
                    reason: format!(
                        "jobq could not read this job's row ({e}); it was discarded so that its \
                         queue goes on. Check the program that wrote it: names are ASCII letters, \
                         digits and _ . : - only, and text columns UTF-8"
                    ),
                }),
                Err(e) => return Err(e),
            }
        }
        let last = rows
            .last()
            .map(|r| {
                Ok::<_, sqlx::Error>(Cursor {
                    priority: r.try_get("priority")?,
                    run_at_us: r.try_get("run_at_us")?,
                    id: r.try_get("id")?,
                })
            })
            .transpose()?;
        Ok(Batch {
            jobs,
            undecodable,
            probed,
            last,
        })
    }
}

/// Whether a decode error is about a row's content (a name the runtime refuses, text that is not
/// UTF-8): the errors this file's own decoding raises, naming the column without quotes.
fn is_content_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::ColumnDecode { index, .. }
        if ["kind", "payload", "concurrency_key"].contains(&index.as_str()))
}

/// One row of the claim's read, as the job it starts under `token`.
fn decode_job(r: &MySqlRow, token: Token) -> Result<ClaimedJob, sqlx::Error> {
    let kind = text(r, "kind")?;
    Ok(ClaimedJob {
        id: r.try_get("id")?,
        kind: KindName::new(&kind).map_err(|e| sqlx::Error::ColumnDecode {
            index: "kind".into(),
            source: Box::new(e),
        })?,
        payload: text(r, "payload")?,
        attempt: r.try_get::<u32, _>("attempt")?.saturating_add(1),
        max_attempts: r.try_get("max_attempts")?,
        wait_us: r.try_get::<Option<i64>, _>("wait_us")?.unwrap_or(0),
        token,
        concurrency_key: opt_text(r, "concurrency_key")?,
        linked: r.try_get::<i64, _>("linked")? != 0,
        trace: super::trace_of(r)?,
    })
}

/// The job read with its probe of the keys' waiting jobs.
fn jobs_sql(queue: &QueueName, read: &JobRead<'_>) -> String {
    let select = claim_select(&lit(queue), &read.limit.to_string(), read.after);
    if read.probe.is_empty() {
        select
    } else {
        format!("{select}; {}", waiting_probe_sql(queue, read.probe.iter()))
    }
}

/// The claim's locking read, with the queue and limit given as SQL (literals or `?`).
///
/// `SKIP LOCKED` in both claim modes: in `skip-locked` mode it keeps concurrent claimers apart;
/// in both it steps over rows locked by anyone else, such as a producer's insert not yet
/// committed, which a plain `FOR UPDATE` would wait for (holding the named lock meanwhile).
pub(super) fn claim_select(queue: &str, limit: &str, after: Option<&Cursor>) -> String {
    // language=MySQL
    // The WHERE and ORDER BY match jobq_jobs_claim (queue, state, priority, run_at, id) exactly:
    // the index is read in order, the scan stops after `limit` matching rows, nothing is
    // filesorted, and only returned rows are locked. FORCE INDEX keeps it so on tiny tables,
    // where the optimiser would otherwise prefer a scan (which locks every row it reads).
    // No filter on kind: rows of kinds this worker cannot run would all be read and skipped
    // on every claim (O(backlog) instead of O(batch)); they are claimed and fail instead.
    // The pause check is a constant subquery on jobq_queues' primary key: evaluated once, not
    // locked by the outer FOR UPDATE (a nested query takes no locks without a locking clause
    // of its own), and when the queue is paused the optimiser sees an impossible WHERE and
    // reads no job at all.
    // With a cursor, the read starts after it: (priority, run_at, id) > the cursor's, written
    // out as three ranges of the same index (the server does not range-scan a row
    // comparison), still read in index order.
    let after = match after {
        None => String::new(),
        Some(c) => {
            let (p, i) = (c.priority, c.id);
            let r = format!(
                "TIMESTAMP'1970-01-01 00:00:00' + INTERVAL {} MICROSECOND",
                c.run_at_us
            );
            format!(
                "AND (priority > {p} OR (priority = {p} AND (run_at > {r} OR (run_at = {r} AND id > {i})))) "
            )
        }
    };
    format!(
        "SELECT id, kind, CAST(payload AS CHAR) AS payload, attempt, max_attempts, concurrency_key, \
                TIMESTAMPDIFF(MICROSECOND, run_at, UTC_TIMESTAMP(6)) AS wait_us, \
                priority, TIMESTAMPDIFF(MICROSECOND, TIMESTAMP'1970-01-01 00:00:00', run_at) AS run_at_us, \
                (dependents > 0 OR workflow_id IS NOT NULL) AS linked, traceparent, tracestate \
         FROM jobq_jobs FORCE INDEX (jobq_jobs_claim) \
         WHERE queue = {queue} AND state = 'available' AND run_at <= UTC_TIMESTAMP(6) {after}\
           AND (SELECT COUNT(*) FROM jobq_queues p WHERE p.name = {queue} AND p.paused_at IS NOT NULL) = 0 \
         ORDER BY priority, run_at, id \
         LIMIT {limit} FOR UPDATE SKIP LOCKED"
    )
}
