//! `jobq work` (a worker with the built-in and command kinds, the operator endpoint and the
//! console when configured) and `jobq web` (the console alone).

use std::process::ExitCode;

use anyhow::{Context, Result};
use jobq_config::Config;
use jobq_worker::web::Console;
use jobq_worker::{Shutdown, Stopped, Worker};

use crate::common::{builtin_registry, connected, ModeArg};

#[derive(clap::Args, Debug)]
pub(crate) struct WorkArgs {
    /// Queues to work, comma-separated (sets worker.queues).
    #[arg(long, value_delimiter = ',')]
    pub(crate) queues: Option<Vec<String>>,
    /// Jobs at once per queue (sets worker.concurrency; `[queues.NAME]` values still win).
    #[arg(long)]
    pub(crate) concurrency: Option<u32>,
    /// Claim mode (sets worker.claim_mode; `[queues.NAME]` values still win).
    #[arg(long, value_enum)]
    pub(crate) claim_mode: Option<ModeArg>,
    /// Jobs claimed ahead of free slots per queue: `auto` or a count, `0` turning it off (sets
    /// worker.prefetch; `[queues.NAME]` values still win). See README "Prefetch".
    #[arg(long, value_name = "auto|N")]
    pub(crate) prefetch: Option<jobq_config::Prefetch>,
    /// Exit once no available, running, retryable or waiting job of a built-in kind is left.
    #[arg(long)]
    pub(crate) drain: bool,
}

pub(crate) async fn work(settings: Config, a: WorkArgs) -> Result<ExitCode> {
    let recorder = match settings.metrics().listen {
        Some(_) => Some(crate::http::install_recorder(&settings)?),
        None => None,
    };
    let pool = connected(&settings).await?;
    // The built-in kinds, and a program for every kind configured with `command`.
    let mut registry = builtin_registry()?;
    jobq_worker::register_commands(&mut registry, &settings)?;
    let worker = Worker::new(pool.clone(), registry, &settings).drain(a.drain);
    if let (Some(addr), Some(handle)) = (settings.metrics().listen, recorder) {
        crate::http::spawn(addr, handle, &pool, worker.health()).await?;
    }
    if let Some(addr) = settings.web().listen {
        // Lives as long as the process: it stops with it. Should it fail, say so.
        let console = Console::new(pool.clone(), &settings)
            .spawn(addr, std::future::pending())
            .await
            .with_context(|| format!("binding web.listen {addr}"))?;
        tokio::spawn(async move {
            match console.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "the web console stopped serving"),
                Err(e) => tracing::error!(error = %e, "the web console's task failed"),
            }
        });
    }
    let (shutdown, signal) = Shutdown::new();
    jobq_worker::on_signals(shutdown).context("installing the SIGTERM/SIGINT handlers")?;
    match worker.run(signal).await? {
        Stopped::Graceful | Stopped::Drained => Ok(ExitCode::SUCCESS),
        Stopped::Immediate(n) => {
            eprintln!(
                "jobq: stopped at once; {n} running jobs will be rescued when their leases expire"
            );
            Ok(ExitCode::from(130))
        }
    }
}

/// `jobq web`: the console alone, until SIGINT or SIGTERM.
pub(crate) async fn web(
    settings: &Config,
    listen: Option<std::net::SocketAddr>,
) -> Result<ExitCode> {
    let addr = match listen.or(settings.web().listen) {
        Some(a) => a,
        None => jobq_worker::web::DEFAULT_LISTEN.parse()?,
    };
    let pool = connected(settings).await?;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping the web console");
    };
    let server = Console::new(pool, settings)
        .spawn(addr, stop)
        .await
        .with_context(|| format!("binding {addr} for the web console"))?;
    eprintln!("jobq: web console on http://{addr}/");
    server.await??;
    Ok(ExitCode::SUCCESS)
}
