//! Validation: [`Settings`] in, [`Config`] out. A `Config` exists only for settings that passed
//! every check, with per-queue and per-kind policies resolved once, so the runtime never looks
//! at raw overrides again.

use std::collections::BTreeMap;
use std::time::Duration;

use jobq_producer::{same_server, KindName, QueueName};

use crate::error::{invalid, ConfigError};
use crate::settings::{
    ClaimMode, DatabaseSettings, KindOverrides, LogSettings, MaintenanceSettings, MetricsSettings,
    MissedSlots, Overlap, ProducerSettings, QueueOverrides, Rate, Settings, WebSettings,
    WorkerSettings,
};

/// The effective settings of one queue: `[queues.NAME]` over `[worker]`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// Queue name.
    pub name: QueueName,
    /// Jobs run at once.
    pub concurrency: u32,
    /// Claim mode.
    pub claim_mode: ClaimMode,
    /// Idle poll interval.
    pub poll_interval: Duration,
    /// Most jobs per claim.
    pub max_batch: u32,
    /// Jobs claimed ahead of free slots (`worker.prefetch`).
    pub prefetch: u32,
    /// Jobs with the same concurrency key running at once (kinds may override).
    pub key_limit: u32,
    /// Starts per period in the queue.
    pub rate_limit: Option<Rate>,
    /// Starts per period per concurrency key.
    pub key_rate_limit: Option<Rate>,
}

impl QueueSettings {
    /// The limits, as `jobq queues` shows them: `key_limit=1 rate_limit=20/1s`.
    pub fn limits_text(&self) -> String {
        let mut s = format!("key_limit={}", self.key_limit);
        if let Some(r) = self.rate_limit {
            s.push_str(&format!(" rate_limit={r}"));
        }
        if let Some(r) = self.key_rate_limit {
            s.push_str(&format!(" key_rate_limit={r}"));
        }
        s
    }
}

/// A validated `[[schedules]]` entry: its cron expression parsed, its zone known.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Its name.
    pub name: String,
    /// The cron expression as written.
    pub cron_text: String,
    /// The parsed expression.
    pub cron: croner::Cron,
    /// The zone the expression is read in.
    pub tz: chrono_tz::Tz,
    /// The job's kind.
    pub kind: KindName,
    /// The job's payload, JSON text.
    pub payload: String,
    /// The job's queue.
    pub queue: QueueName,
    /// The job's priority.
    pub priority: i16,
    /// The job's attempts.
    pub max_attempts: u32,
    /// Missed-slot policy.
    pub missed: MissedSlots,
    /// Overlap policy.
    pub overlap: Overlap,
    /// One live job of the schedule at a time (unique key `schedule:NAME`).
    pub unique: bool,
}

/// Parses a cron expression of 5 fields, or 6 with seconds first.
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text)
        .map_err(|e| {
            format!(
                "{text:?} is not a cron expression ({e}); write 5 fields (minute hour \
                 day-of-month month day-of-week) or 6 with seconds first, e.g. \"0 3 * * *\""
            )
        })
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

/// Validated settings: the only form [`jobq_worker::Worker`] accepts. Built by
/// [`Settings::validate`] (or [`crate::load`]); read through its accessors.
///
/// [`jobq_worker::Worker`]: https://docs.rs/jobq-worker
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    settings: Settings,
    /// `worker.queues`, resolved, in the configured order.
    queues: Vec<QueueSettings>,
    queue_overrides: BTreeMap<QueueName, QueueOverrides>,
    kind_overrides: BTreeMap<KindName, KindOverrides>,
    schedules: Vec<Schedule>,
}

impl Config {
    /// The settings this configuration was validated from, for building a changed one
    /// (`config.settings().clone()`, change, `validate()` again). The runtime reads the
    /// accessors below instead: per-queue and per-kind values only as resolved
    /// ([`Config::worker_queues`], [`Config::queue`], [`Config::policy`]), never the raw
    /// `[queues.NAME]`/`[kinds.NAME]` overrides.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The queues the configuration names in `[queues.NAME]` sections (validated names).
    pub fn configured_queues(&self) -> impl Iterator<Item = &QueueName> {
        self.queue_overrides.keys()
    }

    /// `database_url`.
    pub fn database_url(&self) -> &str {
        &self.settings.database_url
    }

    /// `[database]`.
    pub fn database(&self) -> &DatabaseSettings {
        &self.settings.database
    }

    /// `[worker]`: the process-wide values (per-queue ones are [`Config::worker_queues`]).
    pub fn worker(&self) -> &WorkerSettings {
        &self.settings.worker
    }

    /// `[producer]`.
    pub fn producer(&self) -> &ProducerSettings {
        &self.settings.producer
    }

    /// `[maintenance]`.
    pub fn maintenance(&self) -> &MaintenanceSettings {
        &self.settings.maintenance
    }

    /// `[metrics]`.
    pub fn metrics(&self) -> &MetricsSettings {
        &self.settings.metrics
    }

    /// `[web]`.
    pub fn web(&self) -> &WebSettings {
        &self.settings.web
    }

    /// `[log]`.
    pub fn log(&self) -> &LogSettings {
        &self.settings.log
    }

    /// The recurring jobs (`[[schedules]]`), validated.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// The queues this process works (`worker.queues`), each with its effective settings.
    pub fn worker_queues(&self) -> &[QueueSettings] {
        &self.queues
    }

    /// Sum of the worker queues' concurrency: the most jobs this process runs at once.
    pub fn total_concurrency(&self) -> u32 {
        self.queues.iter().map(|q| q.concurrency).sum()
    }

    /// The effective settings of any `queue` (worked here or not).
    pub fn queue(&self, queue: &QueueName) -> QueueSettings {
        if let Some(q) = self.queues.iter().find(|q| &q.name == queue) {
            return q.clone();
        }
        resolve_queue(
            &self.settings,
            queue.clone(),
            self.queue_overrides.get(queue),
        )
    }

    /// The database server of `queue`: its `[queues.NAME] database_url`, or the top-level
    /// `database_url` (also when the queue's URL names the same database, however spelled).
    pub fn database_of(&self, queue: &str) -> &str {
        match self
            .settings
            .queues
            .get(queue)
            .and_then(|o| o.database_url.as_deref())
        {
            Some(u) if !same_server(u, &self.settings.database_url) => u,
            _ => &self.settings.database_url,
        }
    }

    /// Whether `queue` lives on the server `url` names (however spelled: see
    /// [`jobq_producer::same_server`]).
    pub fn lives_on(&self, queue: &str, url: &str) -> bool {
        same_server(self.database_of(queue), url)
    }

    /// Every database server the configuration names: the top-level `database_url` first,
    /// then each queue's own, in queue-name order, one URL per server (see
    /// [`jobq_producer::same_server`]).
    pub fn servers(&self) -> Vec<&str> {
        let queues = self.settings.queues.keys().map(|q| self.database_of(q));
        distinct_servers(std::iter::once(self.settings.database_url.as_str()).chain(queues))
    }

    /// The configuration of each server this process works queues on: `database_url` set to
    /// that server, `worker.queues` narrowed to its queues (in the configured order) and
    /// `schedules` to those whose queue lives there. The top-level server comes first when
    /// any worked queue is on it. A single-server configuration comes back whole.
    ///
    /// Also returns the schedules left out: their queue is on a server this process works no
    /// queue of, so the processes working that server enqueue them.
    pub fn split_by_server(&self) -> (Vec<Config>, Vec<String>) {
        let mut urls = distinct_servers(self.queues.iter().map(|q| self.database_of(&q.name)));
        if let Some(i) = urls.iter().position(|u| *u == self.settings.database_url) {
            urls[..=i].rotate_right(1);
        }
        let here = |queue: &str| urls.iter().any(|u| self.lives_on(queue, u));
        let skipped: Vec<String> = self
            .schedules
            .iter()
            .filter(|s| !here(&s.queue))
            .map(|s| s.name.clone())
            .collect();
        let mut whole = self.clone();
        whole.schedules.retain(|s| here(&s.queue));
        whole
            .settings
            .schedules
            .retain(|s| here(s.queue.as_deref().unwrap_or("default")));
        if urls.len() == 1 && urls[0] == self.settings.database_url {
            return (vec![whole], skipped);
        }
        let parts = urls
            .into_iter()
            .map(|u| {
                let on = |queue: &str| self.lives_on(queue, u);
                let mut c = whole.clone();
                c.settings.database_url = u.to_owned();
                c.queues.retain(|q| on(&q.name));
                c.settings.worker.queues = c.queues.iter().map(|q| q.name.to_string()).collect();
                c.schedules.retain(|s| on(&s.queue));
                c.settings
                    .schedules
                    .retain(|s| on(s.queue.as_deref().unwrap_or("default")));
                c
            })
            .collect();
        (parts, skipped)
    }

    /// The concurrency-key limit for jobs of `kind` in `queue`: `[kinds.K] key_limit` over
    /// `[queues.Q] key_limit` over 1.
    pub fn key_limit(&self, queue: &str, kind: &str) -> u32 {
        self.kind_overrides
            .get(kind)
            .and_then(|k| k.key_limit)
            .or(self.queue_overrides.get(queue).and_then(|q| q.key_limit))
            .unwrap_or(1)
    }

    /// The highest key limit any kind may have in `queue` (its own, or a kind's override):
    /// what promotion of waiting jobs assumes when it cannot tell their kinds' limits apart.
    /// Promoting too many only costs a claim sending one back to `waiting`; too few would
    /// strand it.
    pub fn key_limit_ceiling(&self, queue: &str) -> u32 {
        self.kind_overrides
            .values()
            .filter_map(|k| k.key_limit)
            .chain([self.key_limit(queue, "")])
            .max()
            .unwrap_or(1)
    }

    /// [`key_limit_ceiling`](Config::key_limit_ceiling) over every configured queue.
    pub fn key_limit_ceiling_anywhere(&self) -> u32 {
        self.queue_overrides
            .keys()
            .map(|q| self.key_limit_ceiling(q))
            .chain([self.key_limit_ceiling("")])
            .max()
            .unwrap_or(1)
    }

    /// The kinds run by a program (`[kinds.NAME] command = [...]`), with their command lines.
    pub fn command_kinds(&self) -> Vec<(KindName, Vec<String>)> {
        self.kind_overrides
            .iter()
            .filter_map(|(k, o)| o.command.clone().map(|c| (k.clone(), c)))
            .collect()
    }

    /// Timeout and backoff for a job of `kind` in `queue`.
    pub fn run_policy(&self, queue: &str, kind: &str) -> RunPolicy {
        let q = self.queue_overrides.get(queue);
        let k = self.kind_overrides.get(kind);
        let w = &self.settings.worker;
        let timeout = k
            .and_then(|k| k.job_timeout)
            .or(q.and_then(|q| q.job_timeout))
            .unwrap_or(w.job_timeout);
        RunPolicy {
            job_timeout: (!timeout.is_zero()).then_some(timeout),
            backoff_base: k
                .and_then(|k| k.backoff_base)
                .or(q.and_then(|q| q.backoff_base))
                .unwrap_or(w.backoff_base),
            backoff_max: k
                .and_then(|k| k.backoff_max)
                .or(q.and_then(|q| q.backoff_max))
                .unwrap_or(w.backoff_max),
        }
    }
}

fn resolve_queue(s: &Settings, name: QueueName, o: Option<&QueueOverrides>) -> QueueSettings {
    let w = &s.worker;
    QueueSettings {
        name,
        concurrency: o.and_then(|o| o.concurrency).unwrap_or(w.concurrency),
        claim_mode: o.and_then(|o| o.claim_mode).unwrap_or(w.claim_mode),
        poll_interval: o.and_then(|o| o.poll_interval).unwrap_or(w.poll_interval),
        max_batch: o.and_then(|o| o.max_batch).unwrap_or(w.max_batch),
        prefetch: o.and_then(|o| o.prefetch).unwrap_or(w.prefetch),
        key_limit: o.and_then(|o| o.key_limit).unwrap_or(1),
        rate_limit: o.and_then(|o| o.rate_limit),
        key_rate_limit: o.and_then(|o| o.key_rate_limit),
    }
}

impl Settings {
    /// Checks what the types cannot and resolves the per-queue and per-kind policies. Errors
    /// name the key.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        check_url("database_url", &self.database_url)?;
        nonzero("database.connect_timeout", self.database.connect_timeout)?;
        check_log_level(&self.log.level)?;
        let w = &self.worker;
        if w.queues.is_empty() {
            return Err(invalid("worker.queues", "list at least one queue"));
        }
        let mut worker_queues = Vec::with_capacity(w.queues.len());
        for q in &w.queues {
            let name = QueueName::new(q).map_err(|e| name_error("worker.queues", e))?;
            if worker_queues.contains(&name) {
                return Err(invalid("worker.queues", format!("{q:?} is listed twice")));
            }
            worker_queues.push(name);
        }
        let mut queue_overrides = BTreeMap::new();
        for (q, o) in &self.queues {
            let key = format!("queues.{q}");
            let name = QueueName::new(q).map_err(|e| name_error(&key, e))?;
            if let Some(u) = &o.database_url {
                check_url(&format!("{key}.database_url"), u)?;
            }
            if let Some(c) = o.concurrency {
                positive(&format!("{key}.concurrency"), c)?;
            }
            if let Some(b) = o.max_batch {
                positive(&format!("{key}.max_batch"), b)?;
            }
            if let Some(p) = o.poll_interval {
                nonzero(&format!("{key}.poll_interval"), p)?;
            }
            if let Some(p) = o.prefetch {
                at_most(&format!("{key}.prefetch"), p, MAX_PREFETCH)?;
            }
            if let Some(b) = o.backoff_base {
                nonzero(&format!("{key}.backoff_base"), b)?;
            }
            if let Some(l) = o.key_limit {
                positive(&format!("{key}.key_limit"), l)?;
            }
            queue_overrides.insert(name, o.clone());
        }
        let mut kind_overrides = BTreeMap::new();
        for (k, o) in &self.kinds {
            let key = format!("kinds.{k}");
            let name = KindName::new(k).map_err(|e| name_error(&key, e))?;
            if let Some(b) = o.backoff_base {
                nonzero(&format!("{key}.backoff_base"), b)?;
            }
            if let Some(l) = o.key_limit {
                positive(&format!("{key}.key_limit"), l)?;
            }
            if let Some(c) = &o.command {
                if c.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err(invalid(
                        format!("{key}.command"),
                        "give the program and its arguments, e.g. [\"python3\", \"send_mail.py\"]",
                    ));
                }
            }
            kind_overrides.insert(name, o.clone());
        }
        positive("worker.concurrency", w.concurrency)?;
        positive("worker.max_batch", w.max_batch)?;
        positive("worker.completion_batch", w.completion_batch)?;
        at_most("worker.prefetch", w.prefetch, MAX_PREFETCH)?;
        nonzero("worker.poll_interval", w.poll_interval)?;
        nonzero("worker.heartbeat_interval", w.heartbeat_interval)?;
        nonzero("worker.backoff_base", w.backoff_base)?;
        nonzero("maintenance.interval", self.maintenance.interval)?;
        positive(
            "database.lock_wait_timeout_secs",
            self.database.lock_wait_timeout_secs,
        )?;
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
        if self.producer.max_payload_bytes == 0 {
            return Err(invalid("producer.max_payload_bytes", "must be positive"));
        }
        positive(
            "producer.default_max_attempts",
            self.producer.default_max_attempts,
        )?;
        if !(1..=100).contains(&self.producer.max_json_depth) {
            return Err(invalid(
                "producer.max_json_depth",
                "must be 1 to 100 (MySQL refuses JSON nested deeper than 100; MariaDB deeper than 31)",
            ));
        }
        let mut schedules: Vec<Schedule> = Vec::with_capacity(self.schedules.len());
        for (i, sc) in self.schedules.iter().enumerate() {
            let key = format!("schedules[{i}]");
            if sc.name.is_empty()
                || sc.name.len() > 64
                || !sc
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
            {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?}: use 1 to 64 of A-Z a-z 0-9 _ . : -", sc.name),
                ));
            }
            if schedules.iter().any(|o| o.name == sc.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("{:?} is used by two schedules", sc.name),
                ));
            }
            let cron = parse_cron(&sc.cron).map_err(|m| invalid(format!("{key}.cron"), m))?;
            let tz: chrono_tz::Tz = sc.timezone.parse().map_err(|_| {
                invalid(
                    format!("{key}.timezone"),
                    format!(
                        "{:?} is not an IANA time zone, e.g. \"Europe/Berlin\" or \"UTC\"",
                        sc.timezone
                    ),
                )
            })?;
            let kind =
                KindName::new(&sc.kind).map_err(|e| name_error(&format!("{key}.kind"), e))?;
            let queue = QueueName::new(sc.queue.as_deref().unwrap_or("default"))
                .map_err(|e| name_error(&format!("{key}.queue"), e))?;
            let max_attempts = sc
                .max_attempts
                .unwrap_or(self.producer.default_max_attempts);
            positive(&format!("{key}.max_attempts"), max_attempts)?;
            schedules.push(Schedule {
                name: sc.name.clone(),
                cron_text: sc.cron.clone(),
                cron,
                tz,
                kind,
                payload: sc.payload.to_string(),
                queue,
                priority: sc.priority,
                max_attempts,
                missed: sc.missed,
                overlap: sc.overlap,
                unique: sc.unique,
            });
        }
        validate_web(&self.web)?;
        let queues: Vec<QueueSettings> = worker_queues
            .into_iter()
            .map(|name| {
                let o = queue_overrides.get(&name);
                resolve_queue(self, name, o)
            })
            .collect();
        for q in &queues {
            check_prefetch(q, queue_overrides.get(&q.name))?;
        }
        Ok(Config {
            settings: self.clone(),
            queues,
            queue_overrides,
            kind_overrides,
            schedules,
        })
    }
}

/// `urls` without a second spelling of a server already listed, in order.
fn distinct_servers<'a>(urls: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for u in urls {
        if !out.iter().any(|o| same_server(o, u)) {
            out.push(u);
        }
    }
    out
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let Some(rest) = url
        .strip_prefix("mysql://")
        .or_else(|| url.strip_prefix("mariadb://"))
    else {
        return Err(invalid(
            key,
            "must be a mysql:// URL, e.g. mysql://root@127.0.0.1:3306/jobq",
        ));
    };
    // The hosts: after the credentials (the last '@' before the path), before the path.
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let hosts = &rest[rest[..end].rfind('@').map_or(0, |i| i + 1)..end];
    for host in hosts.split(',') {
        let port = match host.rsplit_once(':') {
            // An IPv6 address in brackets has colons of its own.
            Some((_, p)) if !p.ends_with(']') => p,
            _ => continue,
        };
        if !matches!(port.parse::<u32>(), Ok(1..=65535)) {
            return Err(invalid(
                key,
                format!("port {port:?} of host {host:?} is not a port (1 to 65535)"),
            ));
        }
    }
    Ok(())
}

/// Checks a `log.level` filter: comma-separated directives, each a level or `target=level`
/// (what `RUST_LOG` takes). A misspelt level would otherwise silence the log entirely.
fn check_log_level(level: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, lvl) = match directive.rsplit_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, directive),
        };
        let known = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(lvl.trim()));
        // A bare word that is not a level is a target at the default level: also a typo here.
        if !known || target.is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid(
                "log.level",
                format!(
                    "{directive:?} is not a level: write trace, debug, info, warn, error or off, \
                     optionally per target, e.g. \"info,sqlx=warn\""
                ),
            ));
        }
    }
    Ok(())
}

/// The shortest `web.token` accepted: a token guessable by trying is no protection.
pub(crate) const MIN_WEB_TOKEN_CHARS: usize = 16;

fn validate_web(w: &crate::settings::WebSettings) -> Result<(), ConfigError> {
    if let Some(t) = &w.token {
        if t.chars().count() < MIN_WEB_TOKEN_CHARS || t.chars().any(|c| c.is_whitespace()) {
            return Err(invalid(
                "web.token",
                format!(
                    "use at least {MIN_WEB_TOKEN_CHARS} characters and no spaces, e.g. the output of `openssl rand -hex 16`"
                ),
            ));
        }
    }
    if let Some(b) = &w.basic_auth {
        match b.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {}
            _ => {
                return Err(invalid(
                    "web.basic_auth",
                    "write it as \"user:password\" (both non-empty; the user cannot contain ':')",
                ))
            }
        }
    }
    Ok(())
}

/// A name error from the producer's rule, reported under the configuration key.
fn name_error(key: &str, e: jobq_producer::Error) -> ConfigError {
    match e {
        jobq_producer::Error::Invalid { message, .. } => invalid(key, message),
        other => invalid(key, other.to_string()),
    }
}

/// The most jobs a queue may claim ahead of its slots.
const MAX_PREFETCH: u32 = 10_000;

fn at_most(key: &str, v: u32, max: u32) -> Result<(), ConfigError> {
    if v > max {
        return Err(invalid(key, format!("{v} is more than {max}")));
    }
    Ok(())
}

/// A rate limit counts a job's start when it is claimed: a prefetched job starting later would
/// let two periods' starts fall into one, so the two do not mix.
fn check_prefetch(q: &QueueSettings, o: Option<&QueueOverrides>) -> Result<(), ConfigError> {
    if q.prefetch == 0 || (q.rate_limit.is_none() && q.key_rate_limit.is_none()) {
        return Ok(());
    }
    let key = match o.and_then(|o| o.prefetch) {
        Some(_) => format!("queues.{}.prefetch", q.name),
        None => "worker.prefetch".to_owned(),
    };
    Err(invalid(
        key,
        format!(
            "queue {:?} has a rate limit, which counts a start at the claim; a prefetched job \
             would start later than counted. Set queues.{}.prefetch = 0",
            q.name.as_str(),
            q.name
        ),
    ))
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
