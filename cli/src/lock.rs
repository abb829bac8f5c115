//! `jobq lock run` and `jobq lock status`: the lock library for scripts and cron jobs.
//!
//! `run` takes the lock, runs the command, and releases when the command exits. Unless `jobq`'s
//! standard input is a terminal, the command runs in a process group of its own, so that a lost
//! lock stops all of it: the script and whatever it started (an `rsync`, a `python`), not only
//! the direct child. At a terminal it stays in `jobq`'s group instead, so that it can use the
//! terminal and Ctrl-C and Ctrl-Z reach both; a lost lock then signals the command itself.
//! Exit statuses: the
//! command's own (128 + N when it died of signal N); [`EXIT_TIMEOUT`] when the lock could not be
//! had in time; [`EXIT_LOST`] when the lock was lost while the command ran (the command's group
//! got SIGTERM, then SIGKILL after `--grace`; for a lease at most an eighth of its ttl, so the
//! group is gone at least an eighth of the ttl before the lease can pass to anyone else); 0 with
//! a message when `--skip-if-held` found it held; 126/127 when the command could not be started;
//! 1 on any other error (the database was unreachable, …). SIGINT, SIGTERM and SIGHUP sent to
//! `jobq` are passed on to the command (its group, when it has one), and the lock is released
//! once the command exits. If `jobq` itself is killed with SIGKILL, a session lock is freed by
//! the server at once and a lease runs out after its ttl, but the command goes on.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jobq_config::Config;
use jobq_lock::{Guard, LeaseLock, SessionLock};
use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use tokio::signal::unix::{signal, SignalKind};

use crate::common::parse_duration;

/// Exit status when the lock could not be acquired within `--timeout`.
pub(crate) const EXIT_TIMEOUT: u8 = 75;
/// Exit status when the lock was lost while the command ran.
pub(crate) const EXIT_LOST: u8 = 76;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum LockCommand {
    /// Run a command while holding a lock (flock(1) across machines).
    Run(RunArgs),
    /// Who holds which lock, since when, with which fencing token.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// The lock's name: any text.
    name: String,
    /// How long to wait for the lock (0: try once).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Use a lease lock (a row in jobq_locks, renewed while the command runs, with a fencing
    /// token) instead of a session lock (GET_LOCK). Needed on Galera and behind proxies.
    #[arg(long)]
    lease: bool,
    /// The lease length; renewed every quarter of it.
    #[arg(long, value_parser = parse_duration, default_value = "30s", requires = "lease")]
    ttl: Duration,
    /// Let up to N holders run at once (a semaphore; leases only).
    #[arg(long, value_name = "N", requires = "lease")]
    permits: Option<u32>,
    /// If another holder has the lock, exit 0 at once without running the command.
    #[arg(long)]
    skip_if_held: bool,
    /// After a lost lock, how long the command has between SIGTERM and SIGKILL (for a lease,
    /// at most an eighth of its ttl).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    grace: Duration,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// A lock's name: its lease permits and, if held, its session lock. Without a name: every
    /// lease permit that is held or expired (session locks can only be looked up by name).
    name: Option<String>,
    /// Print JSON (one array).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(settings: &Config, command: LockCommand) -> Result<ExitCode> {
    match command {
        LockCommand::Run(a) => run_locked(settings, a).await,
        LockCommand::Status(a) => status(settings, a).await,
    }
}

/// `host:pid`, the holder text of this process's leases.
fn holder() -> String {
    format!("{}:{}", jobq_worker::hostname(), std::process::id())
}

async fn run_locked(settings: &Config, a: RunArgs) -> Result<ExitCode> {
    if a.permits == Some(0) {
        bail!(crate::Usage("--permits must be at least 1".into()));
    }
    let pool = jobq_worker::connect(settings)
        .await
        .context("connecting to the database")?;
    let timeout = if a.skip_if_held {
        Duration::ZERO
    } else {
        a.timeout
    };
    let mut interrupts = Interrupts::new()?;
    let acquiring = async {
        Ok::<_, anyhow::Error>(if a.lease {
            jobq_worker::check_migrated(&pool).await?;
            LeaseLock::new(&pool, holder())
                .ttl(a.ttl)
                .acquire_permit(&a.name, a.permits.unwrap_or(1), timeout)
                .await?
                .map(Guard::from)
        } else {
            SessionLock::new(&pool)
                .acquire(&a.name, timeout)
                .await?
                .map(Guard::from)
        })
    };
    let guard = tokio::select! {
        g = acquiring => g.with_context(|| format!("acquiring lock {:?}", a.name))?,
        sig = interrupts.next() => {
            eprintln!("jobq lock run: interrupted while waiting for lock {:?}", a.name);
            return Ok(ExitCode::from(128 + sig.as_raw() as u8));
        }
    };
    let Some(guard) = guard else {
        if a.skip_if_held {
            eprintln!(
                "jobq lock run: lock {:?} is held by another holder; skipped the command",
                a.name
            );
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "jobq lock run: could not acquire lock {:?} within {} (another holder kept it; \
             `jobq lock status {:?}` shows who); the command was not run",
            a.name,
            humantime::format_duration(a.timeout),
            a.name
        );
        return Ok(ExitCode::from(EXIT_TIMEOUT));
    };

    let mut cmd = tokio::process::Command::new(&a.command[0]);
    cmd.args(&a.command[1..]).env("JOBQ_LOCK_NAME", &a.name);
    // Scripts, cron and services: a process group of its own, led by the command, so signals
    // reach all of it. At a terminal the command stays in ours (see the module header).
    let own_group = !std::io::stdin().is_terminal();
    if own_group {
        cmd.process_group(0);
    }
    if let Guard::Lease(g) = &guard {
        cmd.env("JOBQ_LOCK_TOKEN", g.token().unwrap_or(0).to_string())
            .env("JOBQ_LOCK_SLOT", g.slot().to_string());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.release().await;
            let program = a.command[0].to_string_lossy();
            eprintln!("jobq lock run: cannot run {program:?}: {e}");
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Ok(ExitCode::from(code));
        }
    };
    let pid = child
        .id()
        .and_then(|id| Pid::from_raw(id as i32))
        .context("the command has no process id")?;
    // The command's group (its pid: it leads it), with everything the command started; at a
    // terminal, the command alone.
    let signal_command = |sig: Signal| {
        // It may be gone already; nothing to do then.
        let _ = if own_group {
            kill_process_group(pid, sig)
        } else {
            kill_process(pid, sig)
        };
    };
    // After a lost lease the command must be gone before the lease can pass to anyone else:
    // the watchdog reports the loss a quarter of the ttl ahead of that, and SIGKILL comes at
    // most an eighth of the ttl later, leaving the other eighth as margin.
    let grace = if a.lease {
        a.grace.min(a.ttl / 8)
    } else {
        a.grace
    };

    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            _ = guard.lost() => {
                eprintln!(
                    "jobq lock run: lost lock {:?} while the command ran; sending it SIGTERM \
                     (SIGKILL after {})",
                    a.name,
                    humantime::format_duration(grace)
                );
                signal_command(Signal::TERM);
                let _ = tokio::time::timeout(grace, child.wait()).await;
                // Whatever is left of the group, the command itself or what it started (a
                // script's child outlives a script that exits on SIGTERM), is killed now.
                signal_command(Signal::KILL);
                let _ = child.wait().await;
                let _ = guard.release().await;
                return Ok(ExitCode::from(EXIT_LOST));
            }
            sig = interrupts.next() => {
                tracing::info!(signal = sig.as_raw(), "passing the signal on to the command");
                signal_command(sig);
            }
        }
    };
    match guard.release().await {
        Ok(()) => {}
        Err(jobq_lock::Error::NotHeld(_)) => {
            eprintln!(
                "jobq lock run: lock {:?} was lost before the command finished",
                a.name
            );
            return Ok(ExitCode::from(EXIT_LOST));
        }
        // The command ran under the lock; only freeing it failed (a lease then expires).
        Err(e) => eprintln!(
            "jobq lock run: warning: releasing lock {:?} failed: {e}",
            a.name
        ),
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    })
}

/// SIGINT, SIGTERM and SIGHUP, received while the lock is wanted or held.
struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> Result<Self> {
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::INT,
            _ = self.term.recv() => Signal::TERM,
            _ = self.hup.recv() => Signal::HUP,
        }
    }
}

async fn status(settings: &Config, a: StatusArgs) -> Result<ExitCode> {
    let pool = crate::common::connected(settings).await?;
    let locks = jobq_lock::status(&pool, a.name.as_deref()).await?;
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    if a.json {
        let rows: Vec<_> = locks
            .iter()
            .map(|l| {
                serde_json::json!({
                    "kind": l.kind,
                    "name": l.name,
                    "slot": l.slot,
                    "state": l.state.as_str(),
                    "holder": l.holder,
                    "token": l.token,
                    "acquired_at": l.acquired_at,
                    "held_for_secs": secs(l.held_for),
                    "expires_in_secs": secs(l.expires_in),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if locks.is_empty() {
        match &a.name {
            Some(n) => outln!("lock {n:?}: not held (no lease permits, no session lock)"),
            None => outln!("no lease lock is held (session locks are listed by name only)"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    use crate::table::{Align::*, Table};
    let mut t = Table::new(&[
        ("KIND", Left),
        ("NAME", Left),
        ("SLOT", Right),
        ("STATE", Left),
        ("HOLDER", Left),
        ("TOKEN", Right),
        ("ACQUIRED (UTC)", Left),
        ("EXPIRES IN", Right),
    ]);
    for l in &locks {
        t.row(vec![
            l.kind.to_string(),
            l.name.to_string(),
            l.slot.to_string(),
            l.state.as_str().to_owned(),
            l.holder.as_deref().unwrap_or("-").to_owned(),
            l.token.map_or("-".into(), |t| t.to_string()),
            l.acquired_at.as_deref().unwrap_or("-").to_owned(),
            l.expires_in
                .map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}
