//! The process's one [`Writer`] of log lines and progress: it writes every attempt's, on one
//! connection, in multi-row statements: at least every [`FLUSH_INTERVAL`] (a running job's
//! progress at most that often, the latest report winning), and at once, for everything
//! pending, when an attempt ends and waits for its own reports (`Journal::close`). So one
//! connection writes for the whole process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::MySqlPool;
use tokio::sync::{watch, Notify};
use tracing::warn;

use super::{Line, Report, FLUSH_INTERVAL};
use crate::model::Fence;

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

    /// Queues a line (dropped, counted, past [`MAX_QUEUED_LINES`]); returns the sequence
    /// number that covers it.
    pub(crate) fn push_line(&self, line: PendingLine) -> u64 {
        self.push(|q| {
            if q.lines.len() >= MAX_QUEUED_LINES {
                q.dropped += 1;
            } else {
                q.lines.push(line);
            }
        })
    }

    /// Queues a report, replacing its attempt's pending one; returns the sequence number that
    /// covers it.
    pub(crate) fn push_report(&self, report: PendingReport) -> u64 {
        self.push(|q| {
            q.progress.insert(report.fence, report);
        })
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
    pub(crate) async fn flush_for(&self, fence: Fence, bound: Duration) -> bool {
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

#[cfg(test)]
mod tests {
    use super::super::Journal;
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
}
