//! A throwaway MariaDB server for `jobq demo` on a machine where MariaDB is installed but no
//! server answers at the default URL: a fresh data directory in a temporary directory, a free
//! loopback port, root without a password, no other access. It is killed and its directory
//! deleted when the value is dropped, at the end of the demo. (On Ctrl-C the terminal signals
//! the server too, being in the demo's process group; its directory under the temporary
//! directory, `jobq-demo-PID`, is then left behind.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlx::{ConnectOptions, Connection};

/// A running throwaway server; dropping it stops it and deletes its data.
pub(crate) struct Throwaway {
    dir: PathBuf,
    port: u16,
    server: Child,
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
        let dir = std::env::temp_dir().join(format!("jobq-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let user = format!("--user={}", current_user());
        let out = Command::new(install)
            .args([
                "--no-defaults",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ])
            .arg(&user)
            .arg(format!("--datadir={}", dir.join("data").display()))
            .output()
            .context("running mariadb-install-db")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            bail!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join("error.log"))?;
        let server = Command::new(server)
            .arg("--no-defaults")
            .arg(&user)
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mariadbd")?;
        let mut t = Throwaway { dir, port, server };
        t.wait_ready().await?;
        Ok(t)
    }

    /// The server URL for `database`.
    pub(crate) fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// Its data directory, for messages.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
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
                    std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The user the server runs as: this process's (mariadbd refuses to run as root unless told).
fn current_user() -> String {
    if rustix::process::geteuid().is_root() {
        return "root".into();
    }
    std::env::var("USER").unwrap_or_else(|_| "nobody".into())
}
