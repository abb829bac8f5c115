//! Failover across the hosts of one cluster. A database URL may name several hosts of one
//! cluster, `mysql://user:pass@h1:3306,h2:3306,h3:3306/db` (a Galera cluster, or a primary and
//! the replica it fails over to): [`connect_cluster`] opens the pool on the first healthy host in
//! the order written, and one task per host probes it every [`PROBE_EVERY`] on a connection of
//! its own.
//!
//! - The pool **leaves** its host after [`FAILS_TO_LEAVE`] failed probes in a row (about two
//!   seconds) for the first host that answers, and stays where it is while no host answers (a
//!   Galera cluster stalls all its nodes for a few seconds while it drops a dead one; moving
//!   then would gain nothing).
//! - It **moves back** to an earlier host once that host has answered for [`SETTLE`], so a
//!   restarted node gets its clients back without flapping.
//! - A probe succeeds when the server answers within [`PROBE_TIMEOUT`], is writable
//!   (`read_only` off: never a replica or a demoted primary) and, on Galera, reports
//!   `wsrep_ready = ON` and state 4 (Synced): a node outside the primary component refuses
//!   queries, a joining one may stall them.
//! - Moving replaces the pool's connect options and retires every connection opened before the
//!   move (checked when one is acquired and when it is released), so new statements go to the
//!   new host at once and statements in flight on the old one finish or fail there.
//!
//! Every decision is made by [`Chooser`], a pure state machine tested below. The probe tasks
//! run until the pool is closed (`pool.close()`).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, Connection, MySqlConnection, MySqlPool};

use crate::error::{Error, Result};

/// How often each host is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe (connect and query) may take before the host counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed probes in a row after which the pool leaves its host.
pub const FAILS_TO_LEAVE: u32 = 2;
/// How long an earlier host must have answered before the pool moves back to it.
pub const SETTLE: Duration = Duration::from_secs(3);

/// A name for the server (or cluster) of `url` without scheme, credentials or options:
/// `host:port/database`, or `h1:3306,h2:3306/database` for a host list (hosts sorted, port
/// 3306 written out), so two spellings of one database give one name. The `server` label of
/// jobq's per-server metrics, the heading of `jobq stats`, and what [`same_server`] compares.
pub fn server_name(url: &str) -> String {
    match HostList::parse(url) {
        Ok(l) => {
            let db = l.suffix.split('?').next().unwrap_or("");
            let mut hosts: Vec<String> = l
                .hosts
                .iter()
                .map(|h| match h.rsplit_once(':') {
                    // An IPv6 address in brackets has colons of its own.
                    Some((_, port)) if !port.ends_with(']') => h.to_string(),
                    _ => format!("{h}:3306"),
                })
                .collect();
            hosts.sort();
            hosts.dedup();
            format!("{}{db}", hosts.join(","))
        }
        Err(_) => "unknown".to_owned(),
    }
}

/// Whether two database URLs name the same database of the same server or cluster, however
/// spelled (scheme, user, options, host order).
pub fn same_server(a: &str, b: &str) -> bool {
    a == b || server_name(a) == server_name(b)
}

/// A URL cut around its host list: `prefix` (scheme and user info), the hosts, `suffix` (the
/// database path and query).
struct HostList<'a> {
    prefix: &'a str,
    hosts: Vec<&'a str>,
    suffix: &'a str,
}

impl<'a> HostList<'a> {
    /// Fails on an empty host (`h1,,h2`) or a URL without `://`.
    fn parse(url: &'a str) -> Result<HostList<'a>> {
        let invalid = |message: String| Error::Invalid {
            field: "database_url",
            message,
        };
        let start = url
            .find("://")
            .map(|i| i + 3)
            .ok_or_else(|| invalid("expected mysql://user:password@host:port/database".into()))?;
        let rest = &url[start..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        // The password may hold an unencoded '@': the hosts follow the last one.
        let hosts_at = rest[..end].rfind('@').map_or(0, |i| i + 1);
        let list = &rest[hosts_at..end];
        let hosts: Vec<&str> = list.split(',').map(str::trim).collect();
        if hosts.len() > 1 && hosts.iter().any(|h| h.is_empty()) {
            return Err(invalid(format!(
                "empty host in the host list {list:?}; write host:port,host:port"
            )));
        }
        Ok(HostList {
            prefix: &url[..start + hosts_at],
            hosts,
            suffix: &rest[end..],
        })
    }

    /// The URL with `hosts` in place of the list.
    fn with(&self, hosts: &str) -> String {
        format!("{}{hosts}{}", self.prefix, self.suffix)
    }
}

/// Splits a URL naming several comma-separated hosts into one URL per host, in order; a URL
/// with one host comes back as it is. Fails on an empty host (`h1,,h2`) or a URL without `://`.
pub fn split_hosts(url: &str) -> Result<Vec<String>> {
    let list = HostList::parse(url)?;
    if list.hosts.len() == 1 {
        return Ok(vec![url.to_owned()]);
    }
    Ok(list.hosts.iter().map(|h| list.with(h)).collect())
}

/// `url` with its host list rotated so that host `first` (mod the number of hosts) comes
/// first and the others follow in order: a process that should prefer that host (and fail
/// over to the rest). A URL with one host comes back as it is.
pub fn rotate_hosts(url: &str, first: usize) -> Result<String> {
    let list = HostList::parse(url)?;
    let n = list.hosts.len();
    if n == 1 {
        return Ok(url.to_owned());
    }
    let order: Vec<&str> = (0..n).map(|k| list.hosts[(first + k) % n]).collect();
    Ok(list.with(&order.join(",")))
}

/// `url` without its database path (keeps the query string): the server itself, for probes
/// and for creating the database.
pub fn server_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/?{q}"),
        None => format!("{base}/"),
    }
}

/// One host of a cluster URL: where the pool connects, and where its probes do (the server,
/// without the database, so a database not created yet does not make the host look down).
#[derive(Clone, Debug)]
struct Host {
    opts: MySqlConnectOptions,
    probe: MySqlConnectOptions,
}

impl Host {
    fn parse(
        url: &str,
        tweak: &impl Fn(MySqlConnectOptions) -> MySqlConnectOptions,
    ) -> Result<Host> {
        Ok(Host {
            opts: tweak(MySqlConnectOptions::from_str(url)?),
            probe: MySqlConnectOptions::from_str(&server_url(url))?
                .log_statements(tracing::log::LevelFilter::Trace),
        })
    }

    fn label(&self) -> String {
        label(&self.opts)
    }
}

/// `host:port` of `opts`, for logs.
fn label(opts: &MySqlConnectOptions) -> String {
    format!("{}:{}", opts.get_host(), opts.get_port())
}

/// What the probes have seen of one host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HostState {
    /// Since when its probes have succeeded without a failure; `None` while it fails.
    up_since: Option<Instant>,
    /// Failed probes in a row.
    failures: u32,
}

/// Which host the pool should use, from what the probes saw. Pure: time is passed in.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chooser {
    current: usize,
    hosts: Vec<HostState>,
}

impl Chooser {
    fn new(hosts: usize, current: usize) -> Chooser {
        Chooser {
            current,
            hosts: vec![HostState::default(); hosts],
        }
    }

    /// Records one probe of `host`.
    fn observe(&mut self, host: usize, healthy: bool, now: Instant) {
        let h = &mut self.hosts[host];
        if healthy {
            h.failures = 0;
            h.up_since.get_or_insert(now);
        } else {
            h.failures = h.failures.saturating_add(1);
            h.up_since = None;
        }
    }

    /// The host to move to, if the pool should move (see the module's rules); `None` to stay.
    fn decide(&self, now: Instant) -> Option<usize> {
        let up = |i: usize| self.hosts[i].up_since;
        if self.hosts[self.current].failures >= FAILS_TO_LEAVE {
            return (0..self.hosts.len()).find(|&i| i != self.current && up(i).is_some());
        }
        (0..self.current).find(|&i| up(i).is_some_and(|s| now.duration_since(s) >= SETTLE))
    }

    /// Moves to `host`.
    fn moved(&mut self, host: usize) {
        self.current = host;
    }
}

/// Why the server at the end of `conn` cannot take work, or `None` when it can: it answers, it
/// is writable (not a replica or a demoted primary: `read_only` off), and on Galera it is
/// Synced and in the primary component.
async fn unfit(conn: &mut MySqlConnection) -> Result<Option<&'static str>, sqlx::Error> {
    // language=MySQL
    // `read_only` on a replica and on a primary an orchestrator demoted (MySQL's
    // `super_read_only` implies it); jobq writes on every host it uses.
    let read_only: i64 = sqlx::query_scalar("SELECT @@global.read_only")
        .fetch_one(&mut *conn)
        .await?;
    if read_only != 0 {
        return Ok(Some("read-only (a replica, or a demoted primary)"));
    }
    // language=MySQL
    // No row on a server built without wsrep (MySQL); OFF on a MariaDB that is not a Galera
    // node, whose wsrep status then says "not ready" although it serves: nothing more to check
    // on either.
    let galera: Vec<(String, String)> = sqlx::query_as("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
        .fetch_all(&mut *conn)
        .await?;
    if !galera.iter().any(|(_, v)| v.eq_ignore_ascii_case("ON")) {
        return Ok(None);
    }
    // language=MySQL
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')",
    )
    .fetch_all(&mut *conn)
    .await?;
    let synced = rows.iter().all(|(name, value)| match name.as_str() {
        "wsrep_ready" => value.eq_ignore_ascii_case("ON"),
        "wsrep_local_state" => value == "4",
        _ => true,
    });
    Ok((!synced).then_some("a Galera node not ready or not Synced"))
}

/// One probe of a host, reusing `conn` when it is still open: `Err(why)` when it is down or
/// unfit.
async fn probe(host: &Host, conn: &mut Option<MySqlConnection>) -> Result<(), String> {
    let attempt = async {
        if conn.is_none() {
            *conn = Some(host.probe.connect().await?);
        }
        unfit(conn.as_mut().expect("just set")).await
    };
    let why = match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(why))) => why.to_owned(),
        Ok(Err(e)) => {
            *conn = None;
            e.to_string()
        }
        Err(_) => {
            *conn = None;
            format!("no answer within {PROBE_TIMEOUT:?}")
        }
    };
    tracing::debug!(host = %host.label(), %why, "database probe failed");
    Err(why)
}

/// The shared state of one cluster pool's failover.
struct Failover {
    hosts: Vec<Host>,
    chooser: Mutex<Chooser>,
    /// When the pool last moved: connections older than this are retired.
    moved_at: Mutex<Instant>,
}

impl Failover {
    /// Whether a connection of this `age` was opened after the last move.
    fn current(&self, age: Duration) -> bool {
        age < self.moved_at.lock().expect("never poisoned").elapsed()
    }

    /// Records a probe and moves the pool if the chooser says so.
    fn observe(&self, pool: &MySqlPool, host: usize, ok: bool) {
        let mut c = self.chooser.lock().expect("never poisoned");
        let now = Instant::now();
        c.observe(host, ok, now);
        let Some(to) = c.decide(now) else { return };
        let from = c.current;
        c.moved(to);
        pool.set_connect_options(self.hosts[to].opts.clone());
        *self.moved_at.lock().expect("never poisoned") = Instant::now();
        metrics::counter!("jobq_database_failovers_total").increment(1);
        if to < from {
            tracing::info!(from = %self.hosts[from].label(), to = %self.hosts[to].label(),
                "database host answers again; moving back to it");
        } else {
            tracing::warn!(from = %self.hosts[from].label(), to = %self.hosts[to].label(),
                "database host stopped answering; moving to the next healthy host");
        }
    }
}

/// One connection to the server `opts` names, within `wait`. A failure is [`Error::Connect`],
/// naming the server (`host:port/database`, no credentials) and keeping sqlx's cause.
pub async fn connect_direct(opts: &MySqlConnectOptions, wait: Duration) -> Result<MySqlConnection> {
    let server = format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("")
    );
    match tokio::time::timeout(wait, MySqlConnection::connect_with(opts)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(Error::Connect {
            server,
            hint: connect_hint(&source),
            source,
        }),
        Err(_) => Err(Error::Connect {
            server,
            hint: "is the address right, and does a firewall drop the packets?",
            source: sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", wait.as_secs_f64()),
            )),
        }),
    }
}

/// What to do about a failed connection, from its cause.
fn connect_hint(e: &sqlx::Error) -> &'static str {
    let number = jobq_sqlkit::number(e);
    const TLS: &str = "check ssl-mode and ssl-ca in database_url (README \"Connecting over TLS\")";
    match (e, number) {
        (_, Some(1049)) => "the database does not exist yet: `jobq migrate` creates it",
        (_, Some(1044 | 1045)) => "check the user and password in database_url",
        // Debian's and Ubuntu's MariaDB: root logs in by unix socket only.
        (_, Some(1698)) => {
            "this user may log in only through the server's unix socket (root on a fresh \
             Debian or Ubuntu MariaDB): create a user with a password for jobq, or name the \
             socket with ?socket=/run/mysqld/mysqld.sock"
        }
        (sqlx::Error::Tls(_), _) => TLS,
        // A refused TLS handshake (rustls) arrives as invalid data on the stream.
        (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::InvalidData => TLS,
        (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::NotFound => {
            "a file database_url names (ssl-ca, ssl-cert, ssl-key, socket) does not exist"
        }
        (sqlx::Error::Io(_), _) => {
            "is the server running at that host and port? (database_url, or JOBQ_DATABASE_URL)"
        }
        _ => "check database_url (host, port, user, password, ssl-mode)",
    }
}

/// A pool on `url`, which may name several hosts of one cluster (see the module docs); `tweak`
/// adjusts each host's connect options (logging, caches). `options`' `before_acquire` and
/// `after_release` hooks are replaced when the URL names several hosts. Fails when no host
/// answers, naming them.
pub async fn connect_cluster(
    url: &str,
    options: MySqlPoolOptions,
    tweak: impl Fn(MySqlConnectOptions) -> MySqlConnectOptions,
) -> Result<MySqlPool> {
    let hosts = split_hosts(url)?
        .iter()
        .map(|u| Host::parse(u, &tweak))
        .collect::<Result<Vec<_>>>()?;
    if hosts.len() == 1 {
        // sqlx's pool retries a refused connection until its acquire timeout and then reports
        // only "pool timed out": one direct connection first keeps the cause (refused, unknown
        // host, access denied, TLS) and fails at once when the answer is immediate.
        let _ = connect_direct(&hosts[0].opts, options.get_acquire_timeout())
            .await?
            .close()
            .await;
        return Ok(options.connect_with(hosts[0].opts.clone()).await?);
    }
    let (first, mut conns) = first_healthy(&hosts).await?;
    let failover = Arc::new(Failover {
        chooser: Mutex::new(Chooser::new(hosts.len(), first)),
        moved_at: Mutex::new(Instant::now()),
        hosts,
    });
    let (on_acquire, on_release) = (failover.clone(), failover.clone());
    let pool = options
        .before_acquire(move |_, meta| {
            let keep = on_acquire.current(meta.age);
            Box::pin(async move { Ok(keep) })
        })
        .after_release(move |_, meta| {
            let keep = on_release.current(meta.age);
            Box::pin(async move { Ok(keep) })
        })
        .connect_with(failover.hosts[first].opts.clone())
        .await?;
    for (i, conn) in conns.drain(..).enumerate() {
        let (pool, failover) = (pool.clone(), failover.clone());
        tokio::spawn(async move {
            let mut conn = conn;
            loop {
                tokio::select! {
                    _ = pool.close_event() => return,
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                }
                let ok = probe(&failover.hosts[i], &mut conn).await.is_ok();
                failover.observe(&pool, i, ok);
            }
        });
    }
    Ok(pool)
}

/// Probes every host at once; the first healthy one in order, with the probes' connections.
async fn first_healthy(hosts: &[Host]) -> Result<(usize, Vec<Option<MySqlConnection>>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let host = host.clone();
        tasks.spawn(async move {
            let mut conn = None;
            let found = probe(&host, &mut conn).await;
            (i, found, conn)
        });
    }
    let mut found: Vec<(Result<(), String>, Option<MySqlConnection>)> = (0..hosts.len())
        .map(|_| (Err(String::new()), None))
        .collect();
    while let Some(r) = tasks.join_next().await {
        let (i, ok, conn) = r.expect("a probe never panics");
        found[i] = (ok, conn);
    }
    if let Some(i) = found.iter().position(|(ok, _)| ok.is_ok()) {
        return Ok((i, found.into_iter().map(|(_, c)| c).collect()));
    }
    let why: Vec<String> = hosts
        .iter()
        .zip(&found)
        .map(|(h, (r, _))| format!("{}: {}", h.label(), r.as_ref().err().map_or("", |s| s)))
        .collect();
    Err(Error::Invalid {
        field: "database_url",
        message: format!(
            "no host answered as a healthy server ({}); start one, or check the addresses",
            why.join("; ")
        ),
    })
}

/// The single-host URL of the first host of `url` that answers as healthy (for one-off
/// connections such as migrations); `url` itself when it names one host.
pub async fn first_healthy_url(url: &str) -> Result<String> {
    let urls = split_hosts(url)?;
    if urls.len() == 1 {
        return Ok(urls.into_iter().next().expect("one"));
    }
    let hosts = urls
        .iter()
        .map(|u| Host::parse(u, &|o| o))
        .collect::<Result<Vec<_>>>()?;
    let (i, conns) = first_healthy(&hosts).await?;
    for c in conns.into_iter().flatten() {
        let _ = c.close().await;
    }
    Ok(urls[i].clone())
}

#[cfg(test)]
mod tests;
