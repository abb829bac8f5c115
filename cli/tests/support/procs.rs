//! Worker processes built from this repo (`jobq work`), for crash and shutdown tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct WorkerProc {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    _dir: tempfile::TempDir,
}

impl WorkerProc {
    /// `jobq work ARGS` against `url` with extra `JOBQ_…` settings.
    pub(crate) fn spawn(url: &str, args: &[&str], env: &[(&str, &str)]) -> WorkerProc {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("worker.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobq"));
        cmd.arg("work")
            .args(args)
            .env("JOBQ_DATABASE_URL", url)
            .env("JOBQ_LOG__LEVEL", "info,sqlx=warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        WorkerProc {
            child: cmd.spawn().expect("spawn jobq work"),
            log,
            _dir: dir,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} failed");
    }

    pub(crate) fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the exit; returns (exit code, time waited). Panics after `limit`.
    pub(crate) fn wait(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "worker did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then expects a clean exit (code 0) within 30 s.
    pub(crate) fn stop_cleanly(&mut self) {
        assert!(
            self.alive(),
            "worker died before the stop:\n{}",
            self.log_text()
        );
        self.signal("TERM");
        let (code, _) = self.wait(Duration::from_secs(30));
        assert_eq!(code, Some(0), "{}", self.log_text());
    }

    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // A failing test keeps the worker's log for whoever investigates.
            let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
            let kept = dir.keep();
            eprintln!("worker log kept: {}", kept.join("worker.log").display());
        }
    }
}
