//! Command handlers: `[kinds.NAME] command = ["python3", "send_mail.py"]` makes `jobq work` run
//! that program for each job of the kind, so teams whose code is not Rust can use jobq workers.
//!
//! The contract (README "Command handlers"):
//! - the payload (JSON) on standard input; `JOBQ_JOB_ID`, `JOBQ_JOB_ATTEMPT`,
//!   `JOBQ_JOB_MAX_ATTEMPTS`, `JOBQ_JOB_QUEUE`, `JOBQ_JOB_KIND` and `JOBQ_JOB_TOKEN` (the claim's
//!   fencing token) in the environment;
//! - exit 0: completed, and the last line of standard output, if it is JSON, is the result;
//! - exit [`EXIT_DISCARD`] (65): discarded (retrying cannot help), standard error's tail as the
//!   error; exit [`EXIT_SNOOZE`] (75): snoozed, the delay on the last line of standard output
//!   (`30s`, `2m`, or seconds), 60 s if none; anything else, a signal included: the attempt
//!   fails and is retried with backoff, the last lines of standard error as the error;
//! - when the runtime gives up on the attempt (its `job_timeout`, a cancel, a lost lease, a
//!   shutdown release) the program's whole process group gets SIGTERM, then SIGKILL after
//!   `worker.cancel_grace`; the attempt's outcome is written (and the job can run again) only
//!   once the group is gone, its lease renewed meanwhile. A program that exits leaves nothing
//!   behind: what is left of its group gets SIGKILL.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jobq_config::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::error::Result;
use crate::handler::{JobContext, JobError};
use crate::registry::Registry;

/// Exit status that discards the job.
pub const EXIT_DISCARD: i32 = 65;
/// Exit status that snoozes the job (the delay on the last line of standard output).
pub const EXIT_SNOOZE: i32 = 75;
/// Standard output kept (its last bytes), for the result.
const STDOUT_KEPT: usize = 128 * 1024;
/// Standard error kept (its last bytes), for the error.
const STDERR_KEPT: usize = 4 * 1024;

/// Registers a handler for every kind the configuration gives a `command`.
pub fn register_commands(r: &mut Registry, config: &Config) -> Result<()> {
    let grace = config.worker().cancel_grace;
    for (kind, argv) in config.command_kinds() {
        let argv = Arc::new(argv);
        r.register_json(
            kind.as_str(),
            move |payload: serde_json::Value, ctx: JobContext| {
                run(argv.clone(), payload, ctx, grace)
            },
        )?;
    }
    Ok(())
}

/// The child, stopped with SIGTERM then SIGKILL if the attempt is dropped while it runs.
struct Running {
    child: Option<Child>,
    /// The child's process group (its pid: it leads a group of its own), kept past the child's
    /// exit so what it started can still be stopped.
    group: Option<rustix::process::Pid>,
    grace: Duration,
    /// The attempt's lingering work: the task that stops the group goes there, so the
    /// attempt's outcome (and the job's next run) waits until the group is gone.
    lingering: crate::handler::Lingering,
}

/// The process groups of the programs running now, with the worker that started each: what
/// [`kill_groups_of`] stops when that worker's run ends.
static GROUPS: std::sync::Mutex<Vec<(rustix::process::Pid, String)>> =
    std::sync::Mutex::new(Vec::new());

fn groups() -> std::sync::MutexGuard<'static, Vec<(rustix::process::Pid, String)>> {
    GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGKILLs every program group worker `worker` started that is still running: the end of a
/// worker's run (graceful or immediate) leaves no program behind, whatever the grace left.
pub(crate) fn kill_groups_of(worker: &str) {
    groups().retain(|(g, w)| {
        if w == worker {
            let _ = rustix::process::kill_process_group(*g, rustix::process::Signal::KILL);
            false
        } else {
            true
        }
    });
}

/// How long after SIGKILL a process group is waited for (its members are normally gone at
/// once; a zombie nobody reaps would keep it forever).
const GONE_WAIT: Duration = Duration::from_secs(1);

/// Waits until no process of `group` is left, at most [`GONE_WAIT`]; then forgets it.
async fn group_gone(group: Option<rustix::process::Pid>) {
    let Some(g) = group else { return };
    let until = tokio::time::Instant::now() + GONE_WAIT;
    while rustix::process::test_kill_process_group(g).is_ok() && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    groups().retain(|(p, _)| *p != g);
}

/// Sends `sig` to a process group (the program and whatever it started).
fn signal_group(group: Option<rustix::process::Pid>, sig: rustix::process::Signal) {
    if let Some(g) = group {
        let _ = rustix::process::kill_process_group(g, sig);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = self.group;
            signal_group(group, rustix::process::Signal::TERM);
            let grace = self.grace;
            // Reaped in a task of its own: SIGKILL if it outlives the grace.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let hurry = self.lingering.hurry.clone();
                let stopping = rt.spawn(async move {
                    // The grace, unless the runtime says there is no time for one.
                    let exited = tokio::select! {
                        r = tokio::time::timeout(grace, child.wait()) => r.is_ok(),
                        _ = hurry.cancelled() => false,
                    };
                    signal_group(group, rustix::process::Signal::KILL);
                    if !exited {
                        let _ = child.kill().await;
                    }
                    group_gone(group).await;
                });
                self.lingering.push(stopping);
            } else {
                let _ = child.start_kill();
            }
        }
    }
}

/// Reads `r` to its end, keeping its last `keep` bytes.
async fn tail(mut r: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > keep * 2 {
                    out.drain(..out.len() - keep);
                }
            }
        }
    }
}

fn last_lines(bytes: &[u8], keep: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    let start = text.len().saturating_sub(keep);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_owned()
}

fn last_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// The delay of a snooze from the program's last line: `30s`, `2m`, or whole seconds.
pub(crate) fn snooze_delay(line: Option<&str>) -> Duration {
    line.and_then(|l| {
        l.parse::<u64>()
            .map(Duration::from_secs)
            .ok()
            .or_else(|| humantime::parse_duration(l).ok())
    })
    .unwrap_or(Duration::from_secs(60))
}

async fn run(
    argv: Arc<Vec<String>>,
    payload: serde_json::Value,
    ctx: JobContext,
    grace: Duration,
) -> std::result::Result<(), JobError> {
    let program = &argv[0];
    let mut cmd = Command::new(program);
    // The worker's own settings (the database URL with its password among them) are not the
    // program's business.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("JOBQ_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(&argv[1..])
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("JOBQ_JOB_ID", ctx.id().to_string())
        .env("JOBQ_JOB_ATTEMPT", ctx.attempt().to_string())
        .env("JOBQ_JOB_MAX_ATTEMPTS", ctx.max_attempts().to_string())
        .env("JOBQ_JOB_QUEUE", ctx.queue())
        .env("JOBQ_JOB_KIND", ctx.kind())
        .env("JOBQ_JOB_TOKEN", ctx.fencing_token())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| JobError::retry(format!("could not start {program:?}: {e}")))?;
    let group = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32));
    if let Some(g) = group {
        groups().push((g, ctx.worker_id().to_owned()));
    }
    let mut running = Running {
        child: Some(child),
        group,
        grace,
        lingering: ctx.lingering.clone(),
    };
    let child = running.child.as_mut().expect("just started");
    let (mut stdin, stdout, stderr) = (
        child.stdin.take().expect("piped"),
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let out = tokio::spawn(tail(stdout, STDOUT_KEPT));
    let err = tokio::spawn(tail(stderr, STDERR_KEPT));
    let input = payload.to_string();
    // A program that does not read its input must not block the attempt: write in a task.
    tokio::spawn(async move {
        let _ = stdin.write_all(input.as_bytes()).await;
        let _ = stdin.shutdown().await;
    });
    let child = running.child.as_mut().expect("running");
    let status = tokio::select! {
        s = child.wait() => s,
        // An operator's cancel: ask the program to stop now; the runtime drops this attempt
        // after the grace, and the drop kills what is left.
        _ = ctx.cancelled() => {
            signal_group(group, rustix::process::Signal::TERM);
            child.wait().await
        }
    };
    // The program is gone; stop what it left running in its group, which could otherwise keep
    // its output open (and this attempt waiting) forever.
    running.child = None;
    signal_group(group, rustix::process::Signal::KILL);
    group_gone(group).await;
    let status = status.map_err(|e| JobError::retry(format!("waiting for {program:?}: {e}")))?;
    let read = |h: tokio::task::JoinHandle<Vec<u8>>| async move {
        tokio::time::timeout(grace, h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let stdout = read(out).await;
    let stderr = last_lines(&read(err).await, STDERR_KEPT);
    match status.code() {
        Some(0) => {
            if let Some(line) = last_line(&stdout) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    ctx.set_result(&v)?;
                }
            }
            Ok(())
        }
        Some(EXIT_DISCARD) => Err(JobError::discard(format!(
            "{program:?} exited with {EXIT_DISCARD} (discard): {stderr}"
        ))),
        Some(EXIT_SNOOZE) => Err(JobError::snooze(snooze_delay(
            last_line(&stdout).as_deref(),
        ))),
        Some(code) => Err(JobError::retry(format!(
            "{program:?} exited with {code}: {stderr}"
        ))),
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(JobError::retry(format!(
                "{program:?} was killed by signal {}: {stderr}",
                status.signal().unwrap_or(0)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snooze_delays_and_tails() {
        assert_eq!(snooze_delay(Some("30")), Duration::from_secs(30));
        assert_eq!(snooze_delay(Some("2m")), Duration::from_secs(120));
        assert_eq!(snooze_delay(Some("soon")), Duration::from_secs(60));
        assert_eq!(snooze_delay(None), Duration::from_secs(60));
        assert_eq!(last_line(b"a\n{\"x\":1}\n\n"), Some("{\"x\":1}".into()));
        assert_eq!(last_line(b""), None);
        assert_eq!(last_lines("héllo wörld\n".as_bytes(), 5), "örld");
        assert_eq!(
            last_lines("wö".as_bytes(), 2),
            "ö",
            "cut on a character boundary"
        );
    }
}
