//! An attempt's log lines and progress (`ctx.log`, `ctx.progress`). Each attempt's
//! [`Journal`] applies its caps and hands what it admits to the process's one [`Writer`]
//! (`journal/writer.rs`), which writes the lines and progress of all its attempts together.
//! When an attempt ends, it waits for its own reports to be stored before its outcome is
//! written. A handler that never calls them costs an allocation per attempt and nothing on
//! the database.
//!
//! The decisions are pure ([`Cap::admit`], [`clamp_percent`], [`cut`]) and table-tested; the
//! writes are in `store/journal.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::warn;

use crate::model::Fence;

mod writer;
pub(crate) use writer::{PendingLine, PendingReport, Writer};

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
                s.last = writer.push_line(PendingLine {
                    job: fence.id,
                    attempt: *attempt,
                    line,
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
                s.last = writer.push_report(PendingReport {
                    fence: *fence,
                    attempt: *attempt,
                    report,
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
