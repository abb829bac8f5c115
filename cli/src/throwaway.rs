//! A throwaway MariaDB server for `jobq demo` on a machine where MariaDB is installed but no
//! server answers at the default URL: a fresh data directory in a private temporary directory
//! (mode 0700), no TCP port at all (`--skip-networking`): only a unix socket in that directory,
//! so no other local user can reach its password-less root. It is killed and its directory
//! deleted when the value is dropped at the end of the demo, and also when the demo ends early
//! ([`kill_now`]: on Ctrl-C, or when stdout's reader has gone).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlx::{ConnectOptions, Connection};

/// A running throwaway server; dropping it stops it and deletes its data.
pub(crate) struct Throwaway {
    dir: tempfile::TempDir,
    server: Child,
}

/// The running server's pid and directory, for [`kill_now`].
static RUNNING: Mutex<Option<(u32, PathBuf)>> = Mutex::new(None);

/// Kills the running throwaway server, if any, and deletes its directory: for a process about
/// to exit without running destructors.
pub(crate) fn kill_now() {
    let running = RUNNING.lock().map(|mut r| r.take()).unwrap_or(None);
    if let Some((pid, dir)) = running {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        // The server holds no file open once killed; give the kernel a moment to reap it.
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The first of `names` found in the usual binary directories or on `PATH`.
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
            .iter()
            .map(PathBuf::from),
    );
    for dir in dirs {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Whether a MariaDB (or MySQL) server program is installed here.
pub(crate) fn installed() -> bool {
    find(&["mariadbd", "mysqld"]).is_some()
        && find(&["mariadb-install-db", "mysql_install_db"]).is_some()
}

impl Throwaway {
    /// Creates the data directory, starts the server and waits (up to 60 s) until it answers.
    pub(crate) async fn start() -> Result<Throwaway> {
        let install = find(&["mariadb-install-db", "mysql_install_db"])
            .context("mariadb-install-db not found (package mariadb-server)")?;
        let server = find(&["mariadbd", "mysqld"]).context("mariadbd not found")?;
        let dir = tempfile::Builder::new()
            .prefix("jobq-demo-")
            .tempdir()
            .context("creating a temporary directory for the throwaway server")?;
        let user = format!("--user={}", current_user());
        let data = dir.path().join("data");
        let out = Command::new(install)
            .args([
                "--no-defaults",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ])
            .arg(&user)
            .arg(format!("--datadir={}", data.display()))
            .output()
            .context("running mariadb-install-db")?;
        if !out.status.success() {
            bail!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let log = std::fs::File::create(dir.path().join("error.log"))?;
        let server = Command::new(server)
            .arg("--no-defaults")
            .arg(&user)
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .args(["--skip-networking", "--innodb-buffer-pool-size=128M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mariadbd")?;
        *RUNNING.lock().expect("never poisoned") = Some((server.id(), dir.path().to_owned()));
        let mut t = Throwaway { dir, server };
        t.wait_ready().await?;
        Ok(t)
    }

    /// The server URL for `database` (through its socket).
    pub(crate) fn url(&self, database: &str) -> String {
        format!(
            "mysql://root@localhost/{database}?socket={}",
            self.dir.path().join("sock").display()
        )
    }

    /// Its data directory, for messages.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let opts: sqlx::mysql::MySqlConnectOptions = self.url("mysql").parse()?;
        let started = Instant::now();
        loop {
            if let Ok(c) = opts.connect().await {
                let _ = c.close().await;
                return Ok(());
            }
            if let Some(status) = self.server.try_wait()? {
                bail!(
                    "the throwaway mariadbd exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the throwaway mariadbd did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        RUNNING.lock().map(|mut r| r.take()).ok();
        // The TempDir deletes the directory as it drops, after this.
    }
}

/// The user the server runs as: this process's (mariadbd refuses to run as root unless told).
fn current_user() -> String {
    if rustix::process::geteuid().is_root() {
        return "root".into();
    }
    let uid = rustix::process::geteuid().as_raw().to_string();
    // The name of the effective uid, from the passwd file; else $USER.
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[2] == uid)
                .map(|f| f[0].to_owned())
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or(uid)
}
