//! A private MariaDB server for tests that crash or restart the database, so the machine's own
//! server is never touched: its own data directory (a temp dir), its own loopback port, root
//! with no password. `kill9` crashes it, `restart` brings it back on the same data and port.
//!
//! Needs `mariadbd` and `mariadb-install-db` (Debian package `mariadb-server`; `scripts/test`
//! installs it). A test that cannot find them fails, saying what to install.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

fn find(names: &[&str]) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        for name in names {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "{} not found: install the mariadb-server package (scripts/test does), \
         this test needs a private server it may crash",
        names.join(" or ")
    );
}

pub(crate) struct PrivateMariaDb {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
    /// Extra `mariadbd` options (e.g. TLS certificates).
    options: Vec<String>,
    /// Query options of the URL the start-up check connects with (e.g. `?ssl-mode=required`).
    url_options: String,
}

impl PrivateMariaDb {
    /// Creates a data directory and starts the server; returns once it accepts connections.
    pub(crate) async fn start() -> PrivateMariaDb {
        PrivateMariaDb::start_with(Vec::new(), "").await
    }

    /// [`Self::start`] with extra `mariadbd` `options`; the start-up check connects with the
    /// URL query `url_options` (e.g. `?ssl-mode=required` when the options require TLS).
    pub(crate) async fn start_with(options: Vec<String>, url_options: &str) -> PrivateMariaDb {
        let install = find(&["mariadb-install-db", "mysql_install_db"]);
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(install)
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg("--auth-root-authentication-method=normal")
            .output()
            .expect("running mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::http::free_port();
        let mut db = PrivateMariaDb {
            dir,
            port,
            server: None,
            options,
            url_options: url_options.to_owned(),
        };
        db.launch().await;
        db
    }

    /// Its loopback port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:PORT/<database>`.
    pub(crate) fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    async fn launch(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("error.log")).unwrap();
        // A temporary directory of its own: servers sharing /tmp for their internal temporary
        // tables were seen to fail a statement with "Error on delete of
        // '/tmp/#sql-temptable-…'" while other private servers crashed and restarted.
        let tmp = d.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let child = Command::new(find(&["mariadbd", "mysqld"]))
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("mysqld.sock").display()))
            .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=64M",
            ])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mariadbd");
        self.server = Some(child);
        let url = format!("{}{}", self.url("mysql"), self.url_options);
        let started = Instant::now();
        loop {
            if let Ok(c) = sqlx::MySqlConnection::connect(&url).await {
                let _ = c.close().await;
                return;
            }
            if let Some(status) = self.server.as_mut().unwrap().try_wait().unwrap() {
                panic!("mariadbd exited with {status}: {}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "mariadbd did not accept connections within 60 s: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Crashes the server (`kill -9`): no shutdown, uncommitted work lost, sessions gone.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Stops the server process (SIGSTOP) without closing anything: connections stay open and
    /// new ones are accepted by the kernel, but nothing is answered until [`Self::thaw`].
    pub(crate) fn freeze(&self) {
        self.send("STOP");
    }

    /// Lets a [`Self::freeze`]d server run again (SIGCONT).
    pub(crate) fn thaw(&self) {
        self.send("CONT");
    }

    fn send(&self, sig: &str) {
        let pid = self
            .server
            .as_ref()
            .expect("the server is not running")
            .id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(ok.success(), "kill -{sig} {pid} failed");
    }

    /// Starts the server again on the same data directory and port (after [`Self::kill9`]).
    pub(crate) async fn restart(&mut self) {
        assert!(self.server.is_none(), "the server is still running");
        self.launch().await;
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        self.kill9();
    }
}
