//! A private 3-node MariaDB Galera cluster on loopback, for the multi-primary tests: node 1
//! bootstraps the cluster (`--wsrep-new-cluster`), nodes 2 and 3 join by state transfer
//! (rsync). Every port is free-picked on 127.0.0.1; the machine's own server is untouched.
//! Needs Debian's `mariadb-server`, `galera-4` and `rsync` (installed by `scripts/test`); a missing
//! one fails the test with what to install. As root the servers run as the `mysql` user: the
//! rsync state transfer cannot write a joiner's data directory as root's `nobody`.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

fn find(paths: &[&str], what: &str) -> PathBuf {
    paths
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{what} not found: install it (scripts/test does)"))
}

struct Node {
    port: u16,
    gcomm: u16,
    ist: u16,
    sst: u16,
    server: Option<Child>,
}

/// The cluster; every node is killed on drop.
pub(crate) struct Galera {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    user: String,
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Galera {
    /// Creates and starts the three nodes; returns once all are `Synced`.
    pub(crate) async fn start() -> Galera {
        let provider = find(
            &[
                "/usr/lib/galera/libgalera_smm.so",
                "/usr/lib/libgalera_smm.so",
                "/usr/lib64/galera-4/libgalera_smm.so",
            ],
            "libgalera_smm.so (Debian package galera-4)",
        );
        find(&["/usr/bin/rsync"], "rsync (Debian package rsync)");
        let install = find(
            &["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"],
            "mariadb-install-db (Debian package mariadb-server)",
        );
        let root = rustix::process::geteuid().is_root();
        let user = if root {
            "mysql".to_owned()
        } else {
            std::env::var("USER").unwrap_or_else(|_| "nobody".into())
        };
        let dir = tempfile::tempdir().unwrap();
        run(
            Command::new("chmod").arg("0755").arg(dir.path()),
            "chmod the cluster directory",
        );
        let port = crate::http::free_port;
        let nodes: Vec<Node> = (0..3)
            .map(|_| Node {
                port: port(),
                gcomm: port(),
                ist: port(),
                sst: port(),
                server: None,
            })
            .collect();
        let members: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.gcomm))
            .collect();
        for (i, n) in nodes.iter().enumerate() {
            let d = dir.path().join(format!("node{}", i + 1));
            std::fs::create_dir_all(d.join("data")).unwrap();
            let cnf = format!(
                "[mariadbd]\nuser={user}\ndatadir={data}\nsocket={d}/mysqld.sock\npid-file={d}/mariadbd.pid\n\
                 log-error={d}/error.log\nport={port}\nbind-address=127.0.0.1\nskip-name-resolve\n\
                 innodb_buffer_pool_size=64M\ninnodb_log_file_size=32M\nbinlog_format=ROW\n\
                 innodb_autoinc_lock_mode=2\nwsrep_on=ON\nwsrep_provider={provider}\n\
                 wsrep_cluster_name=jobq_test\nwsrep_cluster_address=gcomm://{members}\n\
                 wsrep_node_name=node{n}\nwsrep_node_address=127.0.0.1:{gcomm}\n\
                 wsrep_provider_options=\"gmcast.listen_addr=tcp://127.0.0.1:{gcomm};ist.recv_addr=127.0.0.1:{ist};gcache.size=64M\"\n\
                 wsrep_sst_method=rsync\nwsrep_sst_receive_address=127.0.0.1:{sst}\n",
                data = d.join("data").display(),
                d = d.display(),
                port = n.port,
                provider = provider.display(),
                members = members.join(","),
                n = i + 1,
                gcomm = n.gcomm,
                ist = n.ist,
                sst = n.sst,
            );
            std::fs::write(d.join("my.cnf"), cnf).unwrap();
            if root {
                run(
                    Command::new("chown").arg("-R").arg(&user).arg(&d),
                    "chown a node's directory",
                );
            }
        }
        run(
            Command::new(install)
                .arg("--no-defaults")
                .arg(format!("--user={user}"))
                .arg(format!(
                    "--datadir={}",
                    dir.path().join("node1/data").display()
                ))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"]),
            "mariadb-install-db",
        );
        let mut g = Galera { dir, nodes, user };
        g.launch(1, &["--wsrep-new-cluster"]).await;
        g.launch(2, &[]).await;
        g.launch(3, &[]).await;
        g
    }

    fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node{n}"))
    }

    /// `mysql://root@127.0.0.1:PORT/database` for node `n` (1–3).
    pub(crate) fn url(&self, n: usize, database: &str) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/{database}",
            self.nodes[n - 1].port
        )
    }

    fn log(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.node_dir(n).join("error.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    async fn launch(&mut self, n: usize, extra: &[&str]) {
        let d = self.node_dir(n);
        // Its own process group: a kill reaches the state-transfer scripts and rsync it starts.
        let child = Command::new(server())
            .arg(format!("--defaults-file={}", d.join("my.cnf").display()))
            .args(extra)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mariadbd");
        self.nodes[n - 1].server = Some(child);
        let url = self.url(n, "mysql");
        let started = Instant::now();
        loop {
            // A joiner may accept a connection and not answer it until its state transfer
            // ends: each try is bounded, or the 120 s limit below would never be checked.
            let connect = sqlx::MySqlConnection::connect(&url);
            if let Ok(Ok(mut c)) = tokio::time::timeout(Duration::from_secs(5), connect).await {
                let state: Option<(String, String)> = sqlx::query_as(
                    "SELECT (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_LOCAL_STATE_COMMENT'), \
                            (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_READY')",
                )
                .fetch_optional(&mut c)
                .await
                .ok()
                .flatten();
                let _ = c.close().await;
                if state.is_some_and(|(s, r)| s == "Synced" && r == "ON") {
                    return;
                }
            }
            if let Some(status) = self.nodes[n - 1]
                .server
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
            {
                panic!("galera node {n} exited with {status}:\n{}", self.log(n));
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "galera node {n} not Synced within 120 s:\n{}",
                self.log(n)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kill -9` of node `n`: a crash.
    pub(crate) fn kill9(&mut self, n: usize) {
        if let Some(mut c) = self.nodes[n - 1].server.take() {
            let group = rustix::process::Pid::from_child(&c);
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `n` again after [`kill9`](Galera::kill9); returns once it is `Synced`. It
    /// rejoins by incremental state transfer from a peer's cache: the position its crashed
    /// data holds is recovered first (`--wsrep-recover`, what the packaged service does), as
    /// a node started without it asks for a full copy of a donor's data directory, which
    /// blocks the donor's writes while it runs.
    ///
    /// The recovery runs with InnoDB's purge off (`--innodb-force-recovery=2`, which changes
    /// no data): MariaDB 10.11's recovery mode cannot open a table with indexed virtual
    /// columns (`Incorrect information in file`), and its purge retried that in a loop until
    /// the kernel's OOM killer stopped it at 23 GB, stalling the machine. It is also bounded
    /// (60 s, then killed); without a position the node rejoins by full transfer.
    pub(crate) async fn restart(&mut self, n: usize) {
        let d = self.node_dir(n);
        let log = d.join("recover.log");
        let _ = std::fs::remove_file(&log);
        let mut recover = Command::new(server())
            .arg(format!("--defaults-file={}", d.join("my.cnf").display()))
            .arg("--wsrep-recover")
            .arg("--innodb-force-recovery=2")
            .arg(format!("--log-error={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mariadbd --wsrep-recover");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = recover.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = recover.kill();
                let _ = recover.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let position = text
            .split("WSREP: Recovered position: ")
            .skip(1)
            .filter_map(recovered)
            .last()
            .filter(|_| status.is_some_and(|s| s.success()));
        match position {
            Some(p) => {
                self.launch(n, &[&format!("--wsrep_start_position={p}")])
                    .await
            }
            None => {
                eprintln!(
                    "galera: node {n}: no position recovered ({status:?}); rejoining by full transfer:\n{}",
                    text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
                );
                self.launch(n, &[]).await
            }
        }
    }

    /// `mysql://root@HOST:PORT,HOST:PORT,HOST:PORT/database`, node `first` first, then the
    /// others in order: the URL a worker that prefers node `first` uses.
    pub(crate) fn cluster_url(&self, first: usize, database: &str) -> String {
        let order = std::iter::once(first).chain((1..=3).filter(|&n| n != first));
        let hosts: Vec<String> = order
            .map(|n| format!("127.0.0.1:{}", self.nodes[n - 1].port))
            .collect();
        format!("mysql://root@{}/{database}", hosts.join(","))
    }

    /// The data directory of node `n` (for a test that reads its files).
    pub(crate) fn data_dir(&self, n: usize) -> PathBuf {
        self.node_dir(n).join("data")
    }

    /// The user the servers run as.
    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    /// The cluster's directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `UUID:SEQNO` from the text after "Recovered position: ". The server may write the next
/// message on the same line, so a seqno that runs into a `YYYY-MM-DD` date loses the year.
fn recovered(after: &str) -> Option<String> {
    let (uuid, rest) = after.split_at_checked(36)?;
    let rest = rest.strip_prefix(':')?;
    let sign = usize::from(rest.starts_with('-'));
    let digits = rest[sign..].bytes().take_while(u8::is_ascii_digit).count();
    let mut end = sign + digits;
    if rest[end..].starts_with('-') && digits > 4 {
        end -= 4;
    }
    (digits > 0).then(|| format!("{uuid}:{}", &rest[..end]))
}

fn server() -> PathBuf {
    find(&["/usr/sbin/mariadbd", "/usr/sbin/mysqld"], "mariadbd")
}

impl Drop for Galera {
    fn drop(&mut self) {
        for n in 1..=3 {
            self.kill9(n);
        }
    }
}
