//! Asking a worker to stop: [`Shutdown`] and [`ShutdownSignal`], how a run ended ([`Stopped`]),
//! and [`on_signals`], which gives an embedding application the same SIGTERM/SIGINT behaviour
//! as `jobq work`.

use std::sync::Arc;

use tokio::sync::watch;

/// How far a stop request has gone. Ordered: a later level includes the earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StopLevel {
    /// Keep running.
    Run,
    /// Graceful: stop claiming, let running jobs finish within `shutdown_timeout`.
    Graceful,
    /// Immediate: return at once; running jobs are rescued when their leases expire.
    Immediate,
}

/// Asks a running [`Worker`](crate::Worker) to stop. Cheap to clone.
///
/// [`Shutdown::stop`] (first SIGTERM/SIGINT): stop claiming, let running jobs finish within
/// `shutdown_timeout`, then cancel the rest and put them back as `available` (a `released`
/// transition; the attempt does not count). [`Shutdown::kill`] (second signal): return at once;
/// running jobs stay `running` until their leases expire and they are rescued.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<watch::Sender<StopLevel>>);

/// The receiving side of [`Shutdown`], given to [`Worker::run`](crate::Worker::run).
#[derive(Clone, Debug)]
pub struct ShutdownSignal(watch::Receiver<StopLevel>);

impl Shutdown {
    /// A new handle and the signal to pass to [`Worker::run`](crate::Worker::run).
    pub fn new() -> (Shutdown, ShutdownSignal) {
        let (tx, rx) = watch::channel(StopLevel::Run);
        (Shutdown(Arc::new(tx)), ShutdownSignal(rx))
    }

    /// Graceful stop. Does nothing after [`Shutdown::kill`].
    pub fn stop(&self) {
        self.raise(StopLevel::Graceful);
    }

    /// Immediate stop.
    pub fn kill(&self) {
        self.raise(StopLevel::Immediate);
    }

    fn raise(&self, level: StopLevel) {
        self.0.send_if_modified(|v| {
            let changed = *v < level;
            *v = (*v).max(level);
            changed
        });
    }
}

impl ShutdownSignal {
    /// Resolves once a stop of at least `level` was asked for. When every [`Shutdown`] is gone
    /// nobody can ask any more, and it never resolves.
    pub(crate) async fn at_least(&mut self, level: StopLevel) {
        if self.0.wait_for(|v| *v >= level).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// How [`Worker::run`](crate::Worker::run) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every running job finished or was put back; the worker row was removed.
    Graceful,
    /// Stopped at once on [`Shutdown::kill`]; this many jobs were left to be rescued.
    Immediate(usize),
    /// `drain` mode: no runnable job was left.
    Drained,
}

/// Turns SIGTERM and SIGINT into stop requests on `shutdown`: the first asks for a graceful
/// stop, the second for an immediate one. Runs on a thread of its own for the life of the
/// process; an application embedding the worker calls it once instead of handling signals.
///
/// Fails if the signal handlers cannot be installed.
pub fn on_signals(shutdown: Shutdown) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("jobq-signals".into())
        .spawn(move || {
            for (seen, sig) in signals.forever().enumerate() {
                if seen == 0 {
                    tracing::info!(
                        signal = sig,
                        "stopping gracefully; send it again to stop at once"
                    );
                    shutdown.stop();
                } else {
                    tracing::warn!(signal = sig, "stopping at once");
                    shutdown.kill();
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn levels_only_rise() {
        let (s, mut sig) = Shutdown::new();
        s.kill();
        s.stop();
        sig.at_least(StopLevel::Immediate).await;
        assert_eq!(*sig.0.borrow(), StopLevel::Immediate);
    }
}
