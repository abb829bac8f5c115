//! The raw settings: plain serde data with documented defaults. Nothing here is validated;
//! [`Settings::validate`](crate::Settings::validate) turns them into a [`Config`](crate::Config).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// The database used when nothing else is configured.
pub const DEFAULT_DATABASE_URL: &str = "mysql://root@127.0.0.1:3306/jobq";

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
    /// Recurring jobs (`[[schedules]]`), enqueued by the maintenance leader.
    pub schedules: Vec<ScheduleSettings>,
    /// Producer-side limits and defaults.
    pub producer: ProducerSettings,
    /// Housekeeping done by the one elected maintenance process.
    pub maintenance: MaintenanceSettings,
    /// Prometheus exporter.
    pub metrics: MetricsSettings,
    /// The web console.
    pub web: WebSettings,
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
            schedules: Vec::new(),
            producer: ProducerSettings::default(),
            maintenance: MaintenanceSettings::default(),
            metrics: MetricsSettings::default(),
            web: WebSettings::default(),
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
    /// Most jobs claimed in one round trip (bounded by free slots, and the jobs prefetch may
    /// take ahead, too). Default `250`.
    pub max_batch: u32,
    /// Jobs claimed ahead of free slots, held in the process until a slot frees (README
    /// "Prefetch"). Default `"auto"`: the worker takes jobs ahead only while that is safe (a
    /// backlog of short jobs, no limit at its cap); a count fixes it, `0` turns it off. A
    /// prefetched job is `running` in the database from its claim (its lease beaten, its
    /// attempt counted); it starts when a slot frees and goes back, attempt refunded, if the
    /// worker stops first. A fixed count above 0 is not allowed with `rate_limit` or
    /// `key_rate_limit`; `auto` is off on such a queue.
    pub prefetch: Prefetch,
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
    /// How long a running job whose cancel was requested (`jobq cancel`) may go on after its
    /// handler was told (`ctx.cancelled()`) before it is dropped. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub cancel_grace: Duration,
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
            max_batch: 250,
            prefetch: Prefetch::Auto,
            lock_timeout: Duration::from_secs(1),
            job_timeout: Duration::from_secs(30 * 60),
            heartbeat_interval: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(25),
            cancel_grace: Duration::from_secs(5),
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
    /// This queue's own database server (`mysql://…`, a host list allowed): its jobs are
    /// inserted, claimed and maintained there. Default: the top-level `database_url`. See
    /// README "Outgrowing one server".
    pub database_url: Option<String>,
    /// See [`WorkerSettings::concurrency`].
    pub concurrency: Option<u32>,
    /// See [`WorkerSettings::claim_mode`].
    pub claim_mode: Option<ClaimMode>,
    /// See [`WorkerSettings::poll_interval`].
    #[serde(with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// See [`WorkerSettings::max_batch`].
    pub max_batch: Option<u32>,
    /// See [`WorkerSettings::prefetch`].
    pub prefetch: Option<Prefetch>,
    /// See [`WorkerSettings::job_timeout`].
    #[serde(with = "humantime_serde")]
    pub job_timeout: Option<Duration>,
    /// See [`WorkerSettings::backoff_base`].
    #[serde(with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// See [`WorkerSettings::backoff_max`].
    #[serde(with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// How many jobs with the same concurrency key may run at once in this queue, across all
    /// workers. Default 1 (for jobs that have a key; jobs without one are not limited).
    pub key_limit: Option<u32>,
    /// At most this many job starts per period in the queue, across all workers: `"20/1s"`.
    /// Default: none.
    pub rate_limit: Option<Rate>,
    /// At most this many starts per period of jobs with the same concurrency key: `"10/1s"`.
    /// Default: none.
    pub key_rate_limit: Option<Rate>,
}

/// `[[schedules]]`: a recurring job. See README "Recurring jobs".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Its name (1 to 64 of `A-Z a-z 0-9 _ . : -`), unique among schedules.
    pub name: String,
    /// A cron expression: 5 fields (minute hour day-of-month month day-of-week) or 6 with
    /// seconds first, e.g. `"0 3 * * *"` or `"*/10 * * * * *"`.
    pub cron: String,
    /// The IANA time zone the expression is read in, e.g. `"Europe/Berlin"`. Default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The job's kind.
    pub kind: String,
    /// The job's payload (any TOML value; a table becomes a JSON object). Default `{}`.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    /// The job's queue. Default `default`.
    #[serde(default)]
    pub queue: Option<String>,
    /// The job's priority. Default 0.
    #[serde(default)]
    pub priority: i16,
    /// The job's attempts. Default `producer.default_max_attempts`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Slots missed for longer than the catch-up window (no leader ran): `latest` runs the most
    /// recent one once (the default), `skip` runs none.
    #[serde(default)]
    pub missed: MissedSlots,
    /// A slot while the previous run is unfinished: `allow` enqueues anyway (the default),
    /// `skip` skips the slot.
    #[serde(default)]
    pub overlap: Overlap,
    /// Make the schedule's job unique (key `schedule:NAME`): while one of its jobs waits or
    /// runs, a slot enqueues nothing, even from `jobq schedules run`. Default false.
    #[serde(default)]
    pub unique: bool,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// What a schedule does with slots missed while no worker ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissedSlots {
    /// Run the most recent missed slot once; never a burst.
    #[default]
    Latest,
    /// Run none of them.
    Skip,
}

/// What a schedule does with a slot while its previous run is unfinished.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    /// Enqueue anyway.
    #[default]
    Allow,
    /// Skip the slot.
    Skip,
}

/// A rate: at most `max` events per `period`, written `"20/1s"`, `"600/1m"`, `"5/100ms"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per period (at least 1).
    pub max: u32,
    /// The period (10 ms to 1 day).
    pub period: Duration,
}

impl Rate {
    /// The shortest period accepted: the window is kept in tenths of it.
    pub const MIN_PERIOD: Duration = Duration::from_millis(10);
    /// The longest period accepted.
    pub const MAX_PERIOD: Duration = Duration::from_secs(86_400);
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.max,
            humantime::format_duration(self.period)
        )
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "write a rate as COUNT/PERIOD, e.g. \"20/1s\" or \"600/1m\"";
        let (n, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a rate; {usage}"))?;
        let max: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a count; {usage}"))?;
        if max == 0 {
            return Err(format!("{s:?}: the count must be at least 1; {usage}"));
        }
        let period = humantime::parse_duration(p.trim())
            .map_err(|e| format!("{p:?} is not a period ({e}); {usage}"))?;
        if !(Rate::MIN_PERIOD..=Rate::MAX_PERIOD).contains(&period) {
            return Err(format!("{s:?}: the period must be 10ms to 1 day; {usage}"));
        }
        Ok(Rate { max, period })
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How many jobs a claim may take ahead of a queue's free handler slots (README "Prefetch"):
/// `"auto"` (the default) or a fixed count, `0` turning it off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefetch {
    /// The worker decides, claim by claim: jobs ahead only while the queue has a backlog, its
    /// recent handlers were short, no key or rate limit is at its cap, and what waits in the
    /// process stays within a few tens of milliseconds of work. Off on a queue with a rate
    /// limit.
    #[default]
    Auto,
    /// Exactly this many jobs ahead, whatever the jobs; `0`: a claim takes only what free
    /// slots can start at once.
    Fixed(u32),
}

impl Prefetch {
    /// The fixed count, `None` for `auto`.
    pub fn fixed(self) -> Option<u32> {
        match self {
            Prefetch::Auto => None,
            Prefetch::Fixed(n) => Some(n),
        }
    }

    /// Whether claims may ever take jobs ahead of free slots.
    pub fn is_off(self) -> bool {
        self == Prefetch::Fixed(0)
    }
}

impl fmt::Display for Prefetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefetch::Auto => f.write_str("auto"),
            Prefetch::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for Prefetch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Prefetch::Auto);
        }
        s.parse().map(Prefetch::Fixed).map_err(|_| {
            format!("{s:?} is not a prefetch; write \"auto\", or a count of jobs (0 turns it off)")
        })
    }
}

impl Serialize for Prefetch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Prefetch::Auto => s.serialize_str("auto"),
            Prefetch::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Prefetch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A count (TOML integer, or an environment value figment read as one) or text.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Negative(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => u32::try_from(n)
                .map(Prefetch::Fixed)
                .map_err(|_| serde::de::Error::custom(format!("{n} is too large a prefetch"))),
            Raw::Negative(n) => Err(serde::de::Error::custom(format!(
                "{n} is not a prefetch; write \"auto\", or a count of jobs (0 turns it off)"
            ))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
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
    /// See [`QueueOverrides::key_limit`]; wins over the queue's value for jobs of this kind.
    pub key_limit: Option<u32>,
    /// Run this program for each job of the kind (`jobq work` registers it): program and
    /// arguments, e.g. `["python3", "send_mail.py"]`. See README "Command handlers".
    pub command: Option<Vec<String>>,
}

/// `[producer]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerSettings {
    /// Largest payload accepted, in bytes of JSON text. Default `1048576` (1 MiB).
    pub max_payload_bytes: usize,
    /// Attempts a job gets unless the enqueue says otherwise. Default `25`.
    pub default_max_attempts: u32,
    /// Deepest nesting of a payload accepted. Default `31` (MariaDB refuses 32 and more);
    /// at most `100` (MySQL's limit). A worker refuses to start on MariaDB above 31.
    pub max_json_depth: u32,
    /// Single enqueues from concurrent tasks sharing a producer go to the server together, one
    /// transaction for many (README "Group commit"). Default `true`.
    pub group_commit: bool,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            max_payload_bytes: 1 << 20,
            default_max_attempts: 25,
            max_json_depth: 31,
            group_commit: true,
        }
    }
}

/// `[maintenance]`: run by exactly one process at a time (elected on the `jobq:maintenance`
/// lease in `jobq_locks`).
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
    /// Partitioned history (README "History at scale"): the width of one partition of
    /// `jobq_transitions` by time, in whole hours (`1h` to `31days`; with a retention of
    /// forever, at least `1day`). `jobq migrate` applies it (converting the table, with every
    /// worker stopped) and creates partitions ahead; the leader keeps creating them ahead and
    /// drops whole partitions past `history_retention`, instead of deleting each job's history
    /// with it. `0s`: one table (`jobq migrate` converts a partitioned one back). Unset (the
    /// default): the table stays as it is.
    #[serde(with = "humantime_serde")]
    pub history_partition: Option<Duration>,
    /// With partitioned history: how long history is kept, by the time of each transition; a
    /// partition whose every row is older is dropped. Unset (the default): the longer of
    /// `completed_retention` and `failed_retention`, or forever while either is `0s`; `0s`
    /// keeps forever.
    #[serde(with = "humantime_serde")]
    pub history_retention: Option<Duration>,
    /// Whether this process campaigns for maintenance leadership. Default `true`; `false` for
    /// processes that should only work jobs, as long as another process leads (without a
    /// leader nothing is promoted, rescued, pruned or scheduled).
    pub lead: bool,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            interval: Duration::from_secs(1),
            completed_retention: Duration::from_secs(24 * 3600),
            failed_retention: Duration::from_secs(7 * 24 * 3600),
            history_partition: None,
            history_retention: None,
            lead: true,
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

/// `[web]`: the built-in web console (see the README's "Web console").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// Address the console listens on, e.g. `127.0.0.1:9188`. Unset (the default): `jobq work`
    /// serves no console; `jobq web` listens on `127.0.0.1:9188`. Env `JOBQ_WEB__LISTEN`.
    pub listen: Option<SocketAddr>,
    /// A bearer token (at least 16 characters): requests carry `Authorization: Bearer TOKEN`, or
    /// sign in once through the login form, which sets a session cookie. Env `JOBQ_WEB__TOKEN`.
    pub token: Option<String>,
    /// `"user:password"` for HTTP basic auth. With both this and `token` set, either is
    /// accepted. Env `JOBQ_WEB__BASIC_AUTH`.
    pub basic_auth: Option<String>,
    /// Refuse every action (retry, cancel, discard, pause, resume, run): the console only
    /// shows. Default false.
    pub read_only: bool,
    /// Without authentication, the console answers only requests whose `Host` is a loopback
    /// name, its listen address, or one of these (e.g. the name a proxy forwards): a page
    /// elsewhere cannot reach it by rebinding its own name to 127.0.0.1. Default empty. Env
    /// `JOBQ_WEB__ALLOWED_HOSTS=a,b`.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_hosts: Vec<String>,
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
