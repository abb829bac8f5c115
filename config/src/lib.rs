//! jobq settings.
//!
//! Settings are layered, later layers winning:
//!
//! 1. built-in defaults (documented on every field below and in `config/jobq.example.toml`);
//! 2. a TOML file: `config/jobq.toml` when it exists, or the file given to [`load`];
//! 3. `JOBQ_` environment variables, nested with `__`: `JOBQ_DATABASE_URL`,
//!    `JOBQ_WORKER__CONCURRENCY=32`, `JOBQ_METRICS__LISTEN=127.0.0.1:9187`,
//!    `JOBQ_QUEUES__MAILERS__CLAIM_MODE=named-lock`.
//!
//! figment deserialises the layers into [`Settings`] (plain data); [`Settings::validate`] then
//! checks what types cannot (positive sizes, queue names, timing relations). Every error names the
//! key at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

/// The file read when no `--config` is given, relative to the working directory. It is optional.
pub const DEFAULT_CONFIG_FILE: &str = "config/jobq.toml";

/// The database used when nothing else is configured.
pub const DEFAULT_DATABASE_URL: &str = "mysql://root@127.0.0.1:3306/jobq";

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file passed explicitly does not exist.
    #[error("config file {0} does not exist; pass an existing file to --config or omit it")]
    MissingFile(PathBuf),
    /// A layer did not parse or a value has the wrong type. figment's message names the key.
    #[error("invalid configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration key `{key}`: {message}")]
    Invalid {
        /// Dotted key, e.g. `worker.concurrency`.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// How a queue's worker claims jobs. See the README section "Claim modes".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimMode {
    /// `SELECT … FOR UPDATE SKIP LOCKED` in a short READ COMMITTED transaction. Works on any
    /// topology; needs MySQL 8.0.1+ or MariaDB 10.6+. The default.
    #[default]
    SkipLocked,
    /// A per-queue `GET_LOCK` serialises the claim transaction across processes. Single primary,
    /// direct connections only (refused on Galera).
    NamedLock,
}

impl ClaimMode {
    /// The spelling used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimMode::SkipLocked => "skip-locked",
            ClaimMode::NamedLock => "named-lock",
        }
    }
}

impl fmt::Display for ClaimMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClaimMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "skip-locked" => Ok(ClaimMode::SkipLocked),
            "named-lock" => Ok(ClaimMode::NamedLock),
            other => Err(format!(
                "unknown claim mode {other:?}; use \"skip-locked\" or \"named-lock\""
            )),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines. The default.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// All jobq settings. Field docs state each default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Database URL. Default `mysql://root@127.0.0.1:3306/jobq`; env `JOBQ_DATABASE_URL`.
    pub database_url: String,
    /// Connection pool settings.
    pub database: DatabaseSettings,
    /// Defaults for every queue a worker process works, and process-wide timings.
    pub worker: WorkerSettings,
    /// Per-queue overrides, keyed by queue name (`[queues.mailers]`).
    pub queues: BTreeMap<String, QueueOverrides>,
    /// Per-kind overrides, keyed by job kind (`[kinds.send_email]`).
    pub kinds: BTreeMap<String, KindOverrides>,
    /// Producer-side limits and defaults.
    pub producer: ProducerSettings,
    /// Housekeeping done by the one elected maintenance process.
    pub maintenance: MaintenanceSettings,
    /// Prometheus exporter.
    pub metrics: MetricsSettings,
    /// Logging.
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: DEFAULT_DATABASE_URL.to_owned(),
            database: DatabaseSettings::default(),
            worker: WorkerSettings::default(),
            queues: BTreeMap::new(),
            kinds: BTreeMap::new(),
            producer: ProducerSettings::default(),
            maintenance: MaintenanceSettings::default(),
            metrics: MetricsSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// `[database]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Pool size. `0` (the default) sizes it from the work: total concurrency + 8.
    pub max_connections: u32,
    /// How long to wait for a connection. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `innodb_lock_wait_timeout` set on worker sessions, in seconds. Default `5`.
    pub lock_wait_timeout_secs: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            max_connections: 0,
            connect_timeout: Duration::from_secs(5),
            lock_wait_timeout_secs: 5,
        }
    }
}

/// `[worker]`: defaults for every queue plus process-wide timings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Queues this process works. Default `["default"]`. Env accepts `a,b`.
    #[serde(deserialize_with = "list_or_csv")]
    pub queues: Vec<String>,
    /// Jobs run at once per queue. Default `10`.
    pub concurrency: u32,
    /// `skip-locked` (default) or `named-lock`.
    pub claim_mode: ClaimMode,
    /// Sleep between polls of an idle queue. Default `100ms`. A full batch re-polls at once.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most jobs claimed in one round trip (bounded by free slots too). Default `100`.
    pub max_batch: u32,
    /// Named-lock mode: how long `GET_LOCK` waits before backing off. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// A job's attempt fails with a timeout error after this long. Default `30m`; `0s` = never.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// How often the process extends the leases of its running jobs and beats its worker row.
    /// Default `1s`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How far each heartbeat pushes a running job's lease. A job whose lease expires is rescued
    /// by another process, so this bounds how long a crashed worker's jobs wait. Default `5s`.
    /// Must exceed 2 × `heartbeat_interval`.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// On SIGTERM/SIGINT: how long running jobs may finish before they are cancelled and put
    /// back. Default `25s` (below Kubernetes' default 30 s grace period).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Retry backoff after a failed attempt: `base × 2^(attempt-1)`, capped at `backoff_max`,
    /// with ±25% jitter. Default base `1s`.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Upper bound of the retry backoff. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Most completions written in one statement batch. Default `100`.
    pub completion_batch: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            queues: vec!["default".to_owned()],
            concurrency: 10,
            claim_mode: ClaimMode::SkipLocked,
            poll_interval: Duration::from_millis(100),
            max_batch: 100,
            lock_timeout: Duration::from_secs(1),
            job_timeout: Duration::from_secs(30 * 60),
            heartbeat_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(25),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            completion_batch: 100,
        }
    }
}

/// `[queues.NAME]`: any key left out falls back to `[worker]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueOverrides {
    /// See [`WorkerSettings::concurrency`].
    pub concurrency: Option<u32>,
    /// See [`WorkerSettings::claim_mode`].
    pub claim_mode: Option<ClaimMode>,
    /// See [`WorkerSettings::poll_interval`].
    #[serde(with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// See [`WorkerSettings::max_batch`].
    pub max_batch: Option<u32>,
    /// See [`WorkerSettings::job_timeout`].
    #[serde(with = "humantime_serde")]
    pub job_timeout: Option<Duration>,
    /// See [`WorkerSettings::backoff_base`].
    #[serde(with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// See [`WorkerSettings::backoff_max`].
    #[serde(with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
}

/// `[kinds.NAME]`: per job kind; wins over the queue's value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KindOverrides {
    /// See [`WorkerSettings::job_timeout`].
    #[serde(with = "humantime_serde")]
    pub job_timeout: Option<Duration>,
    /// See [`WorkerSettings::backoff_base`].
    #[serde(with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// See [`WorkerSettings::backoff_max`].
    #[serde(with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
}

/// `[producer]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerSettings {
    /// Largest payload accepted, in bytes of JSON text. Default `1048576` (1 MiB).
    pub max_payload_bytes: usize,
    /// Attempts a job gets unless the enqueue says otherwise. Default `25`.
    pub default_max_attempts: u32,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            max_payload_bytes: 1 << 20,
            default_max_attempts: 25,
        }
    }
}

/// `[maintenance]`: run by exactly one process at a time (elected through `jobq_leader`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSettings {
    /// How often due `scheduled`/`retryable` jobs are made `available` and expired leases are
    /// rescued. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Keep `completed` jobs (and their history) this long. Default `24h`; `0s` keeps forever.
    #[serde(with = "humantime_serde")]
    pub completed_retention: Duration,
    /// Keep `discarded` and `cancelled` jobs this long. Default `7days`; `0s` keeps forever.
    #[serde(with = "humantime_serde")]
    pub failed_retention: Duration,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            interval: Duration::from_secs(1),
            completed_retention: Duration::from_secs(24 * 3600),
            failed_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address of the Prometheus listener (`/metrics`, `/healthz`, `/readyz`), e.g.
    /// `127.0.0.1:9187`. Unset (the default): no listener. Env `JOBQ_METRICS__LISTEN`.
    pub listen: Option<SocketAddr>,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// Filter used when `RUST_LOG` is unset. Default `info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// The effective settings of one queue: `[queues.NAME]` over `[worker]`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// Queue name.
    pub name: String,
    /// Jobs run at once.
    pub concurrency: u32,
    /// Claim mode.
    pub claim_mode: ClaimMode,
    /// Idle poll interval.
    pub poll_interval: Duration,
    /// Most jobs per claim.
    pub max_batch: u32,
}

/// Timeout and backoff for one (queue, kind): `[kinds.K]` over `[queues.Q]` over `[worker]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunPolicy {
    /// `None`: no timeout.
    pub job_timeout: Option<Duration>,
    /// Backoff base.
    pub backoff_base: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
}

impl Settings {
    /// Checks what the types cannot. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.database_url.starts_with("mysql://")
            && !self.database_url.starts_with("mariadb://")
        {
            return Err(invalid(
                "database_url",
                "must be a mysql:// URL, e.g. mysql://root@127.0.0.1:3306/jobq",
            ));
        }
        let w = &self.worker;
        if w.queues.is_empty() {
            return Err(invalid("worker.queues", "list at least one queue"));
        }
        for q in &w.queues {
            check_name("worker.queues", q, 64)?;
        }
        for q in self.queues.keys() {
            check_name(&format!("queues.{q}"), q, 64)?;
        }
        for k in self.kinds.keys() {
            check_name(&format!("kinds.{k}"), k, 128)?;
        }
        positive("worker.concurrency", w.concurrency)?;
        positive("worker.max_batch", w.max_batch)?;
        positive("worker.completion_batch", w.completion_batch)?;
        nonzero("worker.poll_interval", w.poll_interval)?;
        nonzero("worker.heartbeat_interval", w.heartbeat_interval)?;
        nonzero("worker.backoff_base", w.backoff_base)?;
        nonzero("maintenance.interval", self.maintenance.interval)?;
        if w.lease_ttl < w.heartbeat_interval * 2 {
            return Err(invalid(
                "worker.lease_ttl",
                format!(
                    "must be at least twice worker.heartbeat_interval ({}), or one late heartbeat \
                     would let another worker rescue a running job",
                    humantime::format_duration(w.heartbeat_interval)
                ),
            ));
        }
        if w.backoff_max < w.backoff_base {
            return Err(invalid(
                "worker.backoff_max",
                "must not be smaller than worker.backoff_base",
            ));
        }
        for (name, q) in &self.queues {
            if let Some(c) = q.concurrency {
                positive(&format!("queues.{name}.concurrency"), c)?;
            }
            if let Some(b) = q.max_batch {
                positive(&format!("queues.{name}.max_batch"), b)?;
            }
            if let Some(p) = q.poll_interval {
                nonzero(&format!("queues.{name}.poll_interval"), p)?;
            }
        }
        if self.producer.max_payload_bytes == 0 {
            return Err(invalid("producer.max_payload_bytes", "must be positive"));
        }
        positive(
            "producer.default_max_attempts",
            self.producer.default_max_attempts,
        )?;
        Ok(())
    }

    /// The effective settings of `queue`.
    pub fn queue(&self, queue: &str) -> QueueSettings {
        let o = self.queues.get(queue).cloned().unwrap_or_default();
        let w = &self.worker;
        QueueSettings {
            name: queue.to_owned(),
            concurrency: o.concurrency.unwrap_or(w.concurrency),
            claim_mode: o.claim_mode.unwrap_or(w.claim_mode),
            poll_interval: o.poll_interval.unwrap_or(w.poll_interval),
            max_batch: o.max_batch.unwrap_or(w.max_batch),
        }
    }

    /// Timeout and backoff for a job of `kind` in `queue`.
    pub fn run_policy(&self, queue: &str, kind: &str) -> RunPolicy {
        let q = self.queues.get(queue).cloned().unwrap_or_default();
        let k = self.kinds.get(kind).cloned().unwrap_or_default();
        let w = &self.worker;
        let timeout = k.job_timeout.or(q.job_timeout).unwrap_or(w.job_timeout);
        RunPolicy {
            job_timeout: (!timeout.is_zero()).then_some(timeout),
            backoff_base: k.backoff_base.or(q.backoff_base).unwrap_or(w.backoff_base),
            backoff_max: k.backoff_max.or(q.backoff_max).unwrap_or(w.backoff_max),
        }
    }
}

fn positive(key: &str, v: u32) -> Result<(), ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(())
    }
}

fn nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be longer than zero"))
    } else {
        Ok(())
    }
}

/// Queue and kind names: 1..=max bytes of `[A-Za-z0-9_.:-]`. The same rule the producer applies.
fn check_name(key: &str, name: &str, max: usize) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "{name:?} is not a valid name: use 1 to {max} characters of A-Z a-z 0-9 _ . : -"
            ),
        ))
    }
}

/// figment names keys as written in their source (environment variables upper-case); report
/// them as the dotted lower-case key the docs use, with where the value came from.
fn from_figment(e: figment::Error) -> ConfigError {
    if e.path.is_empty() {
        return ConfigError::Figment(Box::new(e));
    }
    let key = e.path.join(".").to_ascii_lowercase();
    let origin = match &e.metadata {
        Some(m) => match &m.source {
            Some(src) => format!(" (from {} {src})", m.name),
            None => format!(" (from {})", m.name),
        },
        None => String::new(),
    };
    invalid(key, format!("{}{origin}", e.kind))
}

/// Accepts `["a", "b"]` or `"a,b"` (how an environment variable spells a list).
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(v) => v,
        Raw::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// The figment behind [`load`], for callers that add layers (the CLI adds its flags on top).
pub fn figment(file: Option<&Path>) -> Result<Figment, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Settings::default()));
    match file {
        Some(path) => {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        None => {
            if Path::new(DEFAULT_CONFIG_FILE).exists() {
                fig = fig.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
        }
    }
    Ok(fig.merge(Env::prefixed("JOBQ_").split("__")))
}

/// Loads and validates settings: defaults < TOML file < `JOBQ_` environment.
///
/// `file`: an explicit file (must exist); `None` reads `config/jobq.toml` if present.
pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
    extract(figment(file)?)
}

/// Extracts and validates settings from a figment built by [`figment`] plus caller layers.
pub fn extract(fig: Figment) -> Result<Settings, ConfigError> {
    let settings: Settings = fig.extract().map_err(from_figment)?;
    settings.validate()?;
    Ok(settings)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let s = Settings::default();
        assert_eq!(s.database_url, "mysql://root@127.0.0.1:3306/jobq");
        assert_eq!(s.worker.queues, vec!["default"]);
        assert_eq!(s.worker.concurrency, 10);
        assert_eq!(s.worker.claim_mode, ClaimMode::SkipLocked);
        assert_eq!(s.worker.poll_interval, Duration::from_millis(100));
        assert_eq!(s.worker.lease_ttl, Duration::from_secs(5));
        assert_eq!(s.worker.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(s.worker.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(s.producer.max_payload_bytes, 1 << 20);
        assert_eq!(s.producer.default_max_attempts, 25);
        assert_eq!(s.metrics.listen, None);
        s.validate().unwrap();
    }

    #[test]
    fn example_file_parses_and_equals_defaults() {
        // The example documents every key with its default; keep the two in step.
        let text = include_str!("../jobq.example.toml");
        let s: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn layers_file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_dir("config")?;
            jail.create_file(
                "config/jobq.toml",
                "database_url = \"mysql://u@h:1/file\"\n[worker]\nconcurrency = 3\n\
                 [queues.mail]\nclaim_mode = \"named-lock\"\n",
            )?;
            let s = load(None).unwrap();
            assert_eq!(s.database_url, "mysql://u@h:1/file");
            assert_eq!(s.worker.concurrency, 3);
            assert_eq!(s.queue("mail").claim_mode, ClaimMode::NamedLock);
            assert_eq!(s.queue("other").claim_mode, ClaimMode::SkipLocked);

            jail.set_env("JOBQ_DATABASE_URL", "mysql://u@h:1/env");
            jail.set_env("JOBQ_WORKER__CONCURRENCY", "7");
            jail.set_env("JOBQ_WORKER__QUEUES", "a,b");
            jail.set_env("JOBQ_METRICS__LISTEN", "127.0.0.1:9187");
            let s = load(None).unwrap();
            assert_eq!(s.database_url, "mysql://u@h:1/env");
            assert_eq!(s.worker.concurrency, 7);
            assert_eq!(s.worker.queues, vec!["a", "b"]);
            assert_eq!(s.metrics.listen, Some("127.0.0.1:9187".parse().unwrap()));
            Ok(())
        });
    }

    #[test]
    fn errors_name_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("JOBQ_WORKER__CONCURRENCY", "many");
            let e = load(None).unwrap_err().to_string();
            assert!(e.contains("worker.concurrency"), "{e}");
            jail.set_env("JOBQ_WORKER__CONCURRENCY", "0");
            let e = load(None).unwrap_err().to_string();
            assert!(e.contains("worker.concurrency"), "{e}");
            jail.set_env("JOBQ_WORKER__CONCURRENCY", "2");
            jail.set_env("JOBQ_WORKER__CLAIM_MODE", "fastest");
            let e = load(None).unwrap_err().to_string();
            assert!(e.contains("claim_mode"), "{e}");
            jail.set_env("JOBQ_WORKER__CLAIM_MODE", "named-lock");
            jail.set_env("JOBQ_WORKER__QUEUES", "ok,bad queue");
            let e = load(None).unwrap_err().to_string();
            assert!(e.contains("worker.queues"), "{e}");
            jail.set_env("JOBQ_WORKER__QUEUES", "ok");
            jail.set_env("JOBQ_WORKER__LEASE_TTL", "1s");
            let e = load(None).unwrap_err().to_string();
            assert!(e.contains("worker.lease_ttl"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = load(Some(Path::new("/nonexistent/jobq.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::MissingFile(_)));
    }

    #[test]
    fn unknown_key_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("x.toml", "[worker]\nconcurency = 3\n")?;
            let e = load(Some(Path::new("x.toml"))).unwrap_err().to_string();
            assert!(e.contains("concurency"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn kind_overrides_win_over_queue_and_worker() {
        let mut s = Settings::default();
        s.queues.insert(
            "q".into(),
            QueueOverrides {
                job_timeout: Some(Duration::from_secs(9)),
                backoff_base: Some(Duration::from_secs(2)),
                ..Default::default()
            },
        );
        s.kinds.insert(
            "k".into(),
            KindOverrides {
                job_timeout: Some(Duration::ZERO),
                ..Default::default()
            },
        );
        let p = s.run_policy("q", "k");
        assert_eq!(p.job_timeout, None);
        assert_eq!(p.backoff_base, Duration::from_secs(2));
        let p = s.run_policy("q", "other");
        assert_eq!(p.job_timeout, Some(Duration::from_secs(9)));
        let p = s.run_policy("z", "other");
        assert_eq!(p.job_timeout, Some(Duration::from_secs(1800)));
    }
}
