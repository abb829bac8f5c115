//! The `jobq work` processes a bench run starts, and waiting for them to drain the queue.

use super::*;

pub(super) struct Workers(pub(super) Vec<Child>);

impl Workers {
    pub(super) fn spawn(
        url: &str,
        mode: ClaimMode,
        processes: u32,
        concurrency: u32,
    ) -> Result<Workers> {
        Workers::spawn_with(url, mode, processes, concurrency, &[])
    }

    pub(super) fn spawn_with(
        url: &str,
        mode: ClaimMode,
        processes: u32,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Result<Workers> {
        Workers::spawn_on(url, QUEUE, mode, processes, concurrency, env)
    }

    /// `processes` workers of `queues` (comma-separated), `concurrency` slots per queue.
    pub(super) fn spawn_on(
        url: &str,
        queues: &str,
        mode: ClaimMode,
        processes: u32,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Result<Workers> {
        let exe = std::env::current_exe()?;
        let mut v = Vec::new();
        let common = WORKER_ENV.get().map(Vec::as_slice).unwrap_or(&[]);
        for i in 0..processes {
            v.push(
                Command::new(&exe)
                    .envs(common.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .envs(env.iter().copied())
                    .args([
                        "work",
                        "--queues",
                        queues,
                        "--claim-mode",
                        mode.as_str(),
                        "--concurrency",
                    ])
                    .arg(concurrency.to_string())
                    .env("JOBQ_DATABASE_URL", prefer_host(url, i as usize))
                    .env("JOBQ_LOG__LEVEL", "warn")
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .context("starting a worker process")?,
            );
        }
        Ok(Workers(v))
    }

    pub(super) fn stop(mut self) -> Result<()> {
        for c in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.0 {
            let status = c.wait()?;
            if !status.success() {
                bail!("a worker process exited with {status}");
            }
        }
        self.0.clear();
        Ok(())
    }

    /// Fails when a worker process has exited (they run until stopped): its error is on the
    /// terminal, above.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        for (i, c) in self.0.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "worker process {} of {} exited early with {status}; its error is printed above",
                    i + 1,
                    self.0.len()
                );
            }
        }
        Ok(())
    }
}

/// `url` for worker process `i`: with several hosts (one cluster), host `i mod n` first and
/// the others after it, so P processes spread over the nodes (process 1 on the first host,
/// process 2 on the second, …) and each still fails over; one host: `url` itself.
pub(super) fn prefer_host(url: &str, i: usize) -> String {
    jobq_producer::rotate_hosts(url, i).unwrap_or_else(|_| url.to_owned())
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `n` jobs are completed, printing a progress line; fails after 60 s without progress.
pub(super) async fn wait_completed(pool: &MySqlPool, n: u32, workers: &mut Workers) -> Result<()> {
    wait_done(n, workers, || sql::completed_in(pool, QUEUE)).await
}

/// Waits until `done()` reaches `n`, printing a progress line; fails at once when a worker
/// process has exited, and after 60 s without progress.
pub(super) async fn wait_done<F, Fut>(n: u32, workers: &mut Workers, done: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<i64, sqlx::Error>>,
{
    let started = Instant::now();
    let (mut last, mut last_change) = (0i64, Instant::now());
    // The count reads an index range as long as the jobs done (a quarter of a second at 1M on
    // a small machine): polled every 500 ms it would take a share of the server from the run
    // it measures (1M: 13.6k jobs/s polled every 500 ms, 14.9k every 5 s), so big runs poll
    // every n × 20 µs (20 s at 1M). The rate comes from the database's timestamps, not from
    // this loop.
    let pause = Duration::from_millis(500).max(Duration::from_micros(u64::from(n) * 20));
    loop {
        let done = done().await?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r  {done:>8}/{n} done, {:>8.0} jobs/s   ",
            done as f64 / secs
        );
        if done >= i64::from(n) {
            eprint!("\r{:60}\r", "");
            return Ok(());
        }
        workers.check_alive()?;
        if done != last {
            (last, last_change) = (done, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(60) {
            bail!("no progress for 60 s at {done}/{n} completed");
        }
        tokio::time::sleep(pause).await;
    }
}
