//! An attempt's log lines and progress (`ctx.log`, `ctx.progress`). Each attempt's
//! [`Journal`] applies its caps and hands what it admits to the process's one [`Writer`],
//! which writes the lines and progress of all its attempts together: at most once per
//! [`FLUSH_INTERVAL`] while nothing waits, and at once (for everything pending) when an
//! attempt ends and waits for its own reports to be stored before its outcome is written. So
//! one connection writes for the whole process, in multi-row statements, and a job's
//! progress is written at most once a second while it runs. A handler that never calls them
//! costs an allocation per attempt and nothing on the database.
//!
//! The decisions are pure ([`Cap::admit`], [`clamp_percent`], [`cut`]) and table-tested; the
//! writes are in `store/journal.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use tokio::sync::{watch, Notify};
use tracing::warn;

use crate::model::Fence;

/// The most log text stored per attempt, in bytes; the line that passes it is replaced by a
/// `truncated` mark and the attempt's later lines are dropped.
pub const MAX_LOG_BYTES: usize = 64 * 1024;

/// The longest log line stored, in bytes (longer ones are cut, saying so).
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;

/// What each line costs against [`MAX_LOG_BYTES`] on top of its text: its row. So an attempt
/// stores at most 1,024 lines, however short (an empty line included).
pub const LOG_LINE_OVERHEAD_BYTES: usize = 64;

/// The longest progress message stored, in characters (the column's size).
pub const MAX_PROGRESS_MESSAGE_CHARS: usize = 255;

/// How often an attempt's lines and progress are written while it runs, at most.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long an attempt waits at its end for its reports to be written, at most; past it, its
/// outcome is written anyway (never held up long by a log) and its reports later: its lines
/// then come after its end (`follow` may miss them) and its last progress is fenced off. The
/// runtime bounds it further by a quarter of a lease.
pub(crate) const LAST_FLUSH_BOUND: Duration = Duration::from_secs(5);

/// A line waiting to be written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Line {
    pub(crate) at: DateTime<Utc>,
    pub(crate) text: String,
    pub(crate) truncated: bool,
}

/// A progress report waiting to be written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Report {
    pub(crate) percent: f64,
    pub(crate) message: Option<String>,
}

/// The per-attempt log budget.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Cap {
    /// Bytes admitted so far.
    pub(crate) used: usize,
    /// The mark was written: nothing more is admitted.
    pub(crate) full: bool,
}

/// What [`Cap::admit`] decided for a line.
#[derive(Debug, PartialEq)]
pub(crate) enum Admit {
    /// Store it (cut to [`MAX_LOG_LINE_BYTES`] if longer).
    Line(String),
    /// The budget is spent: store this mark instead, and nothing after it.
    Mark(String),
    /// Drop it: the mark was stored already.
    Drop,
}

impl Cap {
    /// Admits `text` against the budget.
    pub(crate) fn admit(&mut self, text: String) -> Admit {
        if self.full {
            return Admit::Drop;
        }
        let text = cut(text, MAX_LOG_LINE_BYTES);
        let cost = text.len() + LOG_LINE_OVERHEAD_BYTES;
        if self.used + cost > MAX_LOG_BYTES {
            self.full = true;
            return Admit::Mark(format!(
                "[truncated: this attempt's log reached {} KiB; its later lines are not stored]",
                MAX_LOG_BYTES / 1024
            ));
        }
        self.used += cost;
        Admit::Line(text)
    }
}

/// `text` cut to at most `max` bytes on a character boundary, saying so.
pub(crate) fn cut(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let note = format!(" … [cut: {} bytes]", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{note}", &text[..end])
}

/// A percentage as stored: within 0..=100, two decimals; not a number is 0.
pub(crate) fn clamp_percent(p: f64) -> f64 {
    if p.is_nan() {
        return 0.0;
    }
    (p.clamp(0.0, 100.0) * 100.0).round() / 100.0
}

/// A line waiting to be written, with its job and attempt.
pub(crate) struct PendingLine {
    pub(crate) job: u64,
    pub(crate) attempt: u32,
    pub(crate) line: Line,
}

/// A progress report waiting to be written, fenced by its attempt's claim.
pub(crate) struct PendingReport {
    pub(crate) fence: Fence,
    pub(crate) attempt: u32,
    pub(crate) report: Report,
}

/// The most lines waiting for a write; more are dropped, counted in a warning (only a writer
/// that cannot write for a long while gets there).
const MAX_QUEUED_LINES: usize = 100_000;

/// How long one write may take before its connection is given up (and what it held lost).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the writer holds between writes.
#[derive(Default)]
struct Queue {
    lines: Vec<PendingLine>,
    /// Lines dropped because too many were waiting.
    dropped: usize,
    /// The latest report of each running attempt (by its claim), written every
    /// [`FLUSH_INTERVAL`]: an attempt's reports in between collapse into one.
    progress: HashMap<Fence, PendingReport>,
    /// Reports of attempts that ended, written by the next write.
    due: Vec<PendingReport>,
    /// Sequence number of the last thing queued.
    queued: u64,
    /// An attempt waits: write now.
    urgent: bool,
}

/// What the writer's handles and its task share.
struct Core {
    pool: MySqlPool,
    queue: Mutex<Queue>,
    wake: Notify,
    /// The sequence number up to which everything queued has been written (or given up),
    /// deferred reports of running attempts aside.
    written: watch::Sender<u64>,
    /// Keep a connection between writes (a worker), or take one per write (the test kit,
    /// whose pool may hold a single connection).
    keep_connection: bool,
}

/// Alive while a [`Writer`] handle is: dropping the last one wakes the task, which writes
/// what is left and ends.
struct Alive {
    core: Arc<Core>,
    started: std::sync::Once,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.core.wake.notify_one();
    }
}

/// The process's writer of log lines and progress (see the module's header). Cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    alive: Arc<Alive>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// A writer on `pool`; its task starts with the first report. With `keep_connection`, it
    /// keeps a connection while it has work (no acquire per write).
    pub(crate) fn new(pool: MySqlPool, keep_connection: bool) -> Writer {
        Writer {
            alive: Arc::new(Alive {
                core: Arc::new(Core {
                    pool,
                    queue: Mutex::default(),
                    wake: Notify::new(),
                    written: watch::channel(0).0,
                    keep_connection,
                }),
                started: std::sync::Once::new(),
            }),
        }
    }

    fn core(&self) -> &Core {
        &self.alive.core
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.core().queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues with `add`; returns the sequence number that covers it.
    fn push(&self, add: impl FnOnce(&mut Queue)) -> u64 {
        self.start();
        let mut q = self.queue();
        add(&mut q);
        q.queued += 1;
        q.queued
    }

    /// Starts the writing task, once, if there is a runtime to run it.
    fn start(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.alive.started.call_once(|| {
            rt.spawn(run(self.alive.core.clone(), Arc::downgrade(&self.alive)));
        });
    }

    /// Moves the deferred report of the attempt `fence` holds (if any) to the next write,
    /// and waits (at most `bound`) until that write and everything queued before it are done.
    async fn flush_for(&self, fence: Fence, bound: Duration) -> bool {
        self.start();
        let mut written = self.core().written.subscribe();
        let seq = {
            let mut q = self.queue();
            if let Some(r) = q.progress.remove(&fence) {
                q.due.push(r);
            }
            q.queued += 1;
            q.urgent = true;
            q.queued
        };
        self.core().wake.notify_one();
        tokio::time::timeout(bound, written.wait_for(|w| *w >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The writing task: writes what is queued: the lines and the ended attempts' reports as
/// soon as an attempt waits, everything every [`FLUSH_INTERVAL`]; once the last [`Writer`]
/// is gone, what is left, then it ends.
async fn run(core: Arc<Core>, alive: Weak<Alive>) {
    let mut full_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
    // Kept between writes while there is work (no acquire, no ping, per write); given back
    // after an idle interval.
    let mut conn: Option<sqlx::pool::PoolConnection<sqlx::MySql>> = None;
    loop {
        let urgent = core.queue.lock().unwrap_or_else(|p| p.into_inner()).urgent;
        let last = alive.strong_count() == 0;
        if !urgent && !last {
            // A wake that came since the check is kept by the Notify (one permit).
            let _ = tokio::time::timeout_at(full_at, core.wake.notified()).await;
        }
        let last = alive.strong_count() == 0;
        let full = last || tokio::time::Instant::now() >= full_at;
        if full {
            full_at = tokio::time::Instant::now() + FLUSH_INTERVAL;
        }
        let (mut lines, mut progress, dropped, upto) = {
            let mut q = core.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.urgent = false;
            let lines = std::mem::take(&mut q.lines);
            let mut progress = std::mem::take(&mut q.due);
            if full {
                progress.extend(q.progress.drain().map(|(_, r)| r));
            }
            (lines, progress, std::mem::take(&mut q.dropped), q.queued)
        };
        if dropped > 0 {
            warn!(
                dropped,
                "jobs' log lines were dropped: too many waited for a write"
            );
        }
        if lines.is_empty() && progress.is_empty() {
            // Idle for an interval: give the connection back to the pool.
            if full {
                conn = None;
            }
        } else {
            // In job order: rows are locked in one order by every writer and completion.
            lines.sort_by_key(|l| l.job);
            progress.sort_by_key(|r| r.fence.id);
            let write = async {
                let c = match conn.take() {
                    Some(c) => c,
                    None => core.pool.acquire().await?,
                };
                let c = conn.insert(c);
                crate::store::write_journal(c, &lines, &progress).await
            };
            let failed = match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {WRITE_TIMEOUT:?}")),
            };
            if let Some(e) = failed {
                // A connection that failed is not reused.
                conn = None;
                warn!(error = %e, lines = lines.len(), reports = progress.len(),
                      "could not store jobs' log lines or progress; they are lost");
            }
            if !core.keep_connection {
                conn = None;
            }
        }
        core.written.send_replace(upto);
        if last {
            return;
        }
    }
}

/// Where an attempt's reports go.
#[derive(Clone, Debug)]
enum Sink {
    /// The process's writer, for the attempt `fence` holds.
    Db {
        writer: Writer,
        fence: Fence,
        attempt: u32,
    },
    /// Nowhere: kept for the test kit's `Performed` (no job row).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Memory,
}

/// What an attempt has reported.
#[derive(Debug, Default)]
struct State {
    cap: Cap,
    /// The sequence number covering its last report (0: none).
    last: u64,
    /// Everything reported (memory sink only).
    kept: (Vec<Line>, Option<Report>),
}

/// An attempt's log lines and progress (see the module's header). Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Journal {
    sink: Sink,
    state: Arc<Mutex<State>>,
}

impl Journal {
    /// A journal writing through `writer` for the attempt `fence` holds.
    pub(crate) fn new(writer: &Writer, fence: Fence, attempt: u32) -> Journal {
        Journal::with(Sink::Db {
            writer: writer.clone(),
            fence,
            attempt,
        })
    }

    /// A journal that only keeps what it is given ([`Journal::kept`]).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn in_memory() -> Journal {
        Journal::with(Sink::Memory)
    }

    fn with(sink: Sink) -> Journal {
        Journal {
            sink,
            state: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a log line.
    pub(crate) fn log(&self, text: String) {
        let mut s = self.state();
        let line = match s.cap.admit(text) {
            Admit::Line(text) => Line {
                at: Utc::now(),
                text,
                truncated: false,
            },
            Admit::Mark(text) => Line {
                at: Utc::now(),
                text,
                truncated: true,
            },
            Admit::Drop => return,
        };
        match &self.sink {
            Sink::Memory => s.kept.0.push(line),
            Sink::Db {
                writer,
                fence,
                attempt,
            } => {
                s.last = writer.push(|q| {
                    if q.lines.len() >= MAX_QUEUED_LINES {
                        q.dropped += 1;
                    } else {
                        q.lines.push(PendingLine {
                            job: fence.id,
                            attempt: *attempt,
                            line,
                        });
                    }
                });
            }
        }
    }

    /// Sets the progress.
    pub(crate) fn progress(&self, percent: f64, message: Option<String>) {
        let report = Report {
            percent: clamp_percent(percent),
            message: message.map(|m| m.chars().take(MAX_PROGRESS_MESSAGE_CHARS).collect()),
        };
        let mut s = self.state();
        match &self.sink {
            Sink::Memory => s.kept.1 = Some(report),
            Sink::Db {
                writer,
                fence,
                attempt,
            } => {
                s.last = writer.push(|q| {
                    q.progress.insert(
                        *fence,
                        PendingReport {
                            fence: *fence,
                            attempt: *attempt,
                            report,
                        },
                    );
                });
            }
        }
    }

    /// Before the attempt's outcome: waits (at most `bound`) until everything it reported is
    /// stored, its last progress while it still holds the claim. No wait at all when it
    /// reported nothing.
    pub(crate) async fn close(&self, bound: Duration) {
        let Sink::Db { writer, fence, .. } = &self.sink else {
            return;
        };
        if self.state().last == 0 {
            return;
        }
        if !writer.flush_for(*fence, bound).await {
            warn!(job = fence.id, ?bound,
                  "the job's last log lines and progress were not stored in time; its outcome is written first");
        }
    }

    /// What an in-memory journal was given: the lines, and the last progress.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn kept(&self) -> (Vec<Line>, Option<Report>) {
        self.state().kept.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running job, claimed with `token`.
    async fn running_job(db: &MySqlPool, token: [u8; 16]) -> u64 {
        sqlx::query(
            "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at, max_attempts, created_at, attempt, claim_token, lease_expires_at) \
             VALUES ('default', 'k', '{}', 'running', UTC_TIMESTAMP(6), 3, UTC_TIMESTAMP(6), 1, ?, UTC_TIMESTAMP(6) + INTERVAL 1 HOUR)",
        )
        .bind(&token[..])
        .execute(db)
        .await
        .unwrap()
        .last_insert_id()
    }

    /// Job `id`'s stored percent and its number of log lines.
    async fn stored(db: &MySqlPool, id: u64) -> (Option<String>, i64) {
        let p: Option<String> = sqlx::query_scalar(
            "SELECT CAST(percent AS CHAR) FROM jobq_job_progress WHERE job_id = ?",
        )
        .bind(id)
        .fetch_optional(db)
        .await
        .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobq_job_logs WHERE job_id = ?")
            .bind(id)
            .fetch_one(db)
            .await
            .unwrap();
        (p, n)
    }

    /// Polls until job `id` shows `want`, for at most 10 s.
    async fn until(db: &MySqlPool, id: u64, want: (Option<&str>, i64)) {
        let start = std::time::Instant::now();
        loop {
            let got = stored(db, id).await;
            if (got.0.as_deref(), got.1) == want {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "job {id}: {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A running job's progress and lines are written by the interval, the latest report
    /// winning; `close` writes at once (well within the interval) what its attempt reported;
    /// reports of several attempts go in one statement, a stale attempt's fenced off; a
    /// journal that reported nothing never starts the writer.
    #[sqlx::test(migrations = false)]
    async fn reports_are_written_by_interval_and_at_close(db: MySqlPool) {
        jobq_producer::migrate(&db).await.unwrap();
        let (t1, t2) = ([7u8; 16], [9u8; 16]);
        let (id, id2) = (running_job(&db, t1).await, running_job(&db, t2).await);
        let writer = Writer::new(db.clone(), true);
        // Nothing reported: no task, no wait.
        let quiet = Journal::new(&writer, Fence { id, token: t1 }, 1);
        quiet.close(Duration::from_secs(5)).await;
        assert!(!writer.alive.started.is_completed());

        let j = Journal::new(&writer, Fence { id, token: t1 }, 1);
        j.progress(10.0, Some("a".into()));
        j.progress(20.0, Some("b".into()));
        j.log("one".into());
        until(&db, id, (Some("20.00"), 1)).await;
        // close: written at once, not by the next interval.
        j.progress(30.0, None);
        j.log("two".into());
        let started = std::time::Instant::now();
        j.close(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < FLUSH_INTERVAL,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stored(&db, id).await, (Some("30.00".into()), 2));
        // Two attempts' reports in one write (the interval's): the other job's is stored, a
        // stale attempt's (another claim token) is not.
        let other = Journal::new(&writer, Fence { id: id2, token: t2 }, 1);
        let stale = Journal::new(&writer, Fence { id, token: [8; 16] }, 1);
        other.progress(55.0, None);
        stale.progress(99.0, None);
        until(&db, id2, (Some("55.00"), 0)).await;
        assert_eq!(stored(&db, id).await.0.as_deref(), Some("30.00"));
        // The task ends with the last handle, writing what is left.
        let last = Journal::new(&writer, Fence { id: id2, token: t2 }, 1);
        last.log("after".into());
        drop((writer, j, other, stale, last, quiet));
        until(&db, id2, (Some("55.00"), 1)).await;
    }

    #[test]
    fn the_log_budget_admits_cuts_marks_then_drops() {
        let mut cap = Cap::default();
        let line = |n: usize| "x".repeat(n);
        assert_eq!(cap.admit("hello".into()), Admit::Line("hello".into()));
        let long = cap.admit(line(MAX_LOG_LINE_BYTES + 10));
        match long {
            Admit::Line(t) => {
                assert!(t.len() <= MAX_LOG_LINE_BYTES, "{}", t.len());
                assert!(t.ends_with(&format!("[cut: {} bytes]", MAX_LOG_LINE_BYTES + 10)));
            }
            other => panic!("{other:?}"),
        }
        // Fill up to the budget: each line costs its text and 64 bytes, so 14 more lines of
        // 4 KiB fit (16 in all).
        let mut admitted = 0;
        loop {
            match cap.admit(line(MAX_LOG_LINE_BYTES)) {
                Admit::Line(_) => admitted += 1,
                Admit::Mark(m) => {
                    assert!(m.starts_with("[truncated: this attempt's log reached 64 KiB"));
                    break;
                }
                Admit::Drop => panic!("dropped before the mark"),
            }
        }
        assert_eq!(admitted, 14);
        assert!(cap.used <= MAX_LOG_BYTES);
        assert_eq!(cap.admit("late".into()), Admit::Drop);
        // Empty lines cost their row: at most 1,024 per attempt, then the mark.
        let mut cap = Cap::default();
        let kept = (0..5000)
            .map(|_| cap.admit(String::new()))
            .take_while(|a| matches!(a, Admit::Line(_)))
            .count();
        assert_eq!(kept, MAX_LOG_BYTES / LOG_LINE_OVERHEAD_BYTES);
        assert!(matches!(cap.admit(String::new()), Admit::Drop));
    }

    #[test]
    fn lines_are_cut_on_character_boundaries() {
        let t = "é".repeat(3000); // 6,000 bytes
        let c = cut(t, 100);
        assert!(c.len() <= 100 && c.ends_with("[cut: 6000 bytes]"), "{c}");
        assert_eq!(cut("short".into(), 100), "short");
    }

    #[test]
    fn percentages_are_clamped_and_rounded() {
        let table = [
            (-5.0, 0.0),
            (0.0, 0.0),
            (33.333, 33.33),
            (99.999, 100.0),
            (250.0, 100.0),
            (f64::NAN, 0.0),
            (f64::INFINITY, 100.0),
        ];
        for (given, stored) in table {
            assert_eq!(clamp_percent(given), stored, "{given}");
        }
    }
}
