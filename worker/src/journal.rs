//! An attempt's log lines and progress (`ctx.log`, `ctx.progress`): kept in memory by the
//! [`Journal`] and written in the background at most once per [`FLUSH_INTERVAL`], then once
//! more before the attempt's outcome is written. A handler that never calls them costs an
//! allocation per attempt and nothing on the database.
//!
//! The decisions are pure ([`Cap::admit`], [`clamp_percent`], [`cut`]) and table-tested; the
//! writes are in `store/journal.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
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

/// How long the last write before the outcome may take, at most; past it, what is left is
/// dropped with a warning (the outcome is never held up long by a log). The runtime bounds it
/// further by a quarter of a lease.
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

/// What a journal holds between writes.
#[derive(Debug, Default)]
struct State {
    lines: Vec<Line>,
    cap: Cap,
    progress: Option<Report>,
    /// A background write is scheduled or running.
    scheduled: bool,
    last_write: Option<Instant>,
}

/// Where a journal's writes go.
#[derive(Clone, Debug)]
enum Sink {
    /// The database, for the attempt `fence` holds.
    Db {
        pool: MySqlPool,
        fence: Fence,
        attempt: u32,
    },
    /// Nowhere: kept for the test kit's `Performed` (no job row).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Memory,
}

/// An attempt's log lines and progress (see the module's header). Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Journal {
    sink: Sink,
    state: Arc<Mutex<State>>,
    /// Held while writing, so writes land in order.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Everything ever admitted (memory sink only).
    kept: Arc<Mutex<(Vec<Line>, Option<Report>)>>,
}

impl Journal {
    /// A journal writing to `pool` for the attempt `fence` holds.
    pub(crate) fn new(pool: MySqlPool, fence: Fence, attempt: u32) -> Journal {
        Journal::with(Sink::Db {
            pool,
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
            writing: Arc::default(),
            kept: Arc::default(),
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
        s.lines.push(line);
        self.schedule(s);
    }

    /// Sets the progress.
    pub(crate) fn progress(&self, percent: f64, message: Option<String>) {
        let mut s = self.state();
        s.progress = Some(Report {
            percent: clamp_percent(percent),
            message: message.map(|m| m.chars().take(MAX_PROGRESS_MESSAGE_CHARS).collect()),
        });
        self.schedule(s);
    }

    /// Starts a background write within [`FLUSH_INTERVAL`] of the last, unless one is
    /// scheduled already or there is no runtime to run it (then the last write takes it).
    fn schedule(&self, mut s: std::sync::MutexGuard<'_, State>) {
        if let Sink::Memory = self.sink {
            let (lines, progress) = (std::mem::take(&mut s.lines), s.progress.take());
            drop(s);
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.0.extend(lines);
            if progress.is_some() {
                kept.1 = progress;
            }
            return;
        }
        if s.scheduled {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        s.scheduled = true;
        let wait = s
            .last_write
            .map(|at| FLUSH_INTERVAL.saturating_sub(at.elapsed()))
            .unwrap_or_default();
        drop(s);
        let journal = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(wait).await;
            journal.write().await;
        });
    }

    /// Writes what is pending, in order with any other write.
    async fn write(&self) {
        let _order = self.writing.lock().await;
        let (lines, progress) = {
            let mut s = self.state();
            s.scheduled = false;
            s.last_write = Some(Instant::now());
            (std::mem::take(&mut s.lines), s.progress.take())
        };
        let Sink::Db {
            pool,
            fence,
            attempt,
        } = &self.sink
        else {
            return;
        };
        if lines.is_empty() && progress.is_none() {
            return;
        }
        if let Err(e) =
            crate::store::write_journal(pool, *fence, *attempt, &lines, progress.as_ref()).await
        {
            warn!(job = fence.id, error = %e, lines = lines.len(),
                  "could not store the job's log lines or progress; they are lost");
        }
    }

    /// The last write, before the attempt's outcome, within `bound`: it also waits for a
    /// background write under way, so everything reported is stored before the outcome (and
    /// the last progress while the attempt still holds the claim). Nothing at all, and no wait,
    /// when the handler wrote nothing.
    pub(crate) async fn close(&self, bound: Duration) {
        let idle = {
            let s = self.state();
            s.lines.is_empty() && s.progress.is_none() && !s.scheduled
        };
        // Nothing pending and no write holding the order lock: done. (A background write
        // clears `scheduled` only once it holds the lock.)
        if idle && self.writing.try_lock().is_ok() {
            return;
        }
        if tokio::time::timeout(bound, self.write()).await.is_err() {
            warn!("the job's last log lines and progress were not stored in time; dropped");
        }
    }

    /// What an in-memory journal was given: the lines, and the last progress.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn kept(&self) -> (Vec<Line>, Option<Report>) {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
