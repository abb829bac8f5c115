//! Validation: [`Settings`] in, [`Config`] out. A `Config` exists only for settings that passed
//! every check, with per-queue and per-kind policies resolved once, so the runtime never looks
//! at raw overrides again.

use std::collections::BTreeMap;
use std::time::Duration;

use jobq_producer::{KindName, QueueName};

use crate::error::{invalid, ConfigError};
use crate::settings::{Prefetch, QueueOverrides, Settings};
use crate::validated::{parse_cron, resolve_queue, Config, QueueSettings, Schedule};

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
                at_most(&format!("{key}.concurrency"), c, MAX_CONCURRENCY)?;
            }
            if let Some(b) = o.max_batch {
                positive(&format!("{key}.max_batch"), b)?;
            }
            if let Some(p) = o.poll_interval {
                nonzero(&format!("{key}.poll_interval"), p)?;
            }
            if let Some(Prefetch::Fixed(p)) = o.prefetch {
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
        at_most("worker.concurrency", w.concurrency, MAX_CONCURRENCY)?;
        if w.lease_ttl > MAX_LEASE_TTL {
            return Err(invalid(
                "worker.lease_ttl",
                format!(
                    "must be at most {} (the heartbeat renews it every heartbeat_interval; a \
                     longer lease only delays the rescue of a crashed worker's jobs)",
                    humantime::format_duration(MAX_LEASE_TTL)
                ),
            ));
        }
        positive("worker.max_batch", w.max_batch)?;
        positive("worker.completion_batch", w.completion_batch)?;
        if let Prefetch::Fixed(p) = w.prefetch {
            at_most("worker.prefetch", p, MAX_PREFETCH)?;
        }
        nonzero("worker.poll_interval", w.poll_interval)?;
        nonzero("worker.heartbeat_interval", w.heartbeat_interval)?;
        nonzero("worker.backoff_base", w.backoff_base)?;
        nonzero("maintenance.interval", self.maintenance.interval)?;
        check_history(&self.maintenance)?;
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
            // What the producer would refuse at every slot is refused now, once.
            let payload = sc.payload.to_string();
            if payload.len() > self.producer.max_payload_bytes {
                return Err(invalid(
                    format!("{key}.payload"),
                    format!(
                        "{} bytes is over producer.max_payload_bytes ({}); store large data \
                         elsewhere and put a reference in the payload",
                        payload.len(),
                        self.producer.max_payload_bytes
                    ),
                ));
            }
            jobq_producer::check_json(&payload, self.producer.max_json_depth)
                .map_err(|m| invalid(format!("{key}.payload"), m))?;
            schedules.push(Schedule {
                name: sc.name.clone(),
                cron_text: sc.cron.clone(),
                cron,
                tz,
                kind,
                payload,
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
        let config = Config {
            settings: self.clone(),
            queues,
            queue_overrides,
            kind_overrides,
            schedules,
        };
        check_backoffs(&config)?;
        Ok(config)
    }
}

/// Slots per process (and per queue): far above what one pool serves, and `concurrency +
/// prefetch` never overflows.
const MAX_CONCURRENCY: u32 = 100_000;
/// The longest lease: a day.
const MAX_LEASE_TTL: Duration = Duration::from_secs(86_400);

/// The backoff every configured (queue, kind) pair gets (the queues worked or overridden, the
/// kinds overridden, and any other kind), resolved as the runtime resolves it (kind, else
/// queue, else `[worker]`, field by field): `backoff_max` never below `backoff_base`. The error
/// names the key that set the cap.
fn check_backoffs(c: &Config) -> Result<(), ConfigError> {
    let queues = c
        .queues
        .iter()
        .map(|q| q.name.as_str())
        .chain(c.queue_overrides.keys().map(|q| q.as_str()));
    let kinds: Vec<&str> = c
        .kind_overrides
        .keys()
        .map(|k| k.as_str())
        .chain([""])
        .collect();
    for q in queues {
        for &k in &kinds {
            let p = c.run_policy(q, k);
            if p.backoff_max >= p.backoff_base {
                continue;
            }
            let set_in_kind = c
                .kind_overrides
                .get(k)
                .and_then(|o| o.backoff_max)
                .is_some();
            let set_in_queue = c
                .queue_overrides
                .get(q)
                .and_then(|o| o.backoff_max)
                .is_some();
            let key = if set_in_kind {
                format!("kinds.{k}.backoff_max")
            } else if set_in_queue {
                format!("queues.{q}.backoff_max")
            } else {
                "worker.backoff_max".to_owned()
            };
            let scope = match k {
                "" => format!(" in queue {q}"),
                k => format!(" for kind {k} in queue {q}"),
            };
            return Err(invalid(
                key,
                format!(
                    "the retry delay's cap{scope} is {}, smaller than its backoff_base ({}); \
                     raise the cap or lower the base",
                    humantime::format_duration(p.backoff_max),
                    humantime::format_duration(p.backoff_base)
                ),
            ));
        }
    }
    Ok(())
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

/// The widest history partition: a month.
const MAX_PARTITION_HOURS: u64 = 31 * 24;
/// The most history partitions retention may keep (MariaDB allows 8,192 in all; each is a file,
/// and a read of one job's history dives into every one).
const MAX_KEPT_PARTITIONS: u64 = 900;

/// `maintenance.history_partition`: `0s` or whole hours up to a month; with it, a retention
/// that keeps at most [`MAX_KEPT_PARTITIONS`], or, kept forever, partitions of a day or more.
fn check_history(m: &crate::settings::MaintenanceSettings) -> Result<(), ConfigError> {
    let Some(width) = m.history_partition.filter(|w| !w.is_zero()) else {
        return Ok(());
    };
    let secs = width.as_secs();
    if width.subsec_nanos() != 0
        || !secs.is_multiple_of(3600)
        || !(1..=MAX_PARTITION_HOURS).contains(&(secs / 3600))
    {
        return Err(invalid(
            "maintenance.history_partition",
            format!(
                "must be 0s (one table) or whole hours from 1h to 31days, such as 1h, 6h or \
                 1day; got {}",
                humantime::format_duration(width)
            ),
        ));
    }
    match crate::validated::history_retention(m) {
        Some(r) => {
            let kept = r.as_secs().div_ceil(secs);
            if kept > MAX_KEPT_PARTITIONS {
                return Err(invalid(
                    "maintenance.history_retention",
                    format!(
                        "keeps {} of history in partitions of {}: {kept} partitions, more than \
                         {MAX_KEPT_PARTITIONS}; choose wider partitions \
                         (maintenance.history_partition) or a shorter retention",
                        humantime::format_duration(r),
                        humantime::format_duration(width)
                    ),
                ));
            }
        }
        None if secs < 24 * 3600 => {
            return Err(invalid(
                "maintenance.history_partition",
                format!(
                    "history kept forever (history_retention, or a job retention of 0s) in \
                     partitions of {} grows by many partitions a day toward the server's limit \
                     of 8,192; use partitions of 1day or more, or set \
                     maintenance.history_retention",
                    humantime::format_duration(width)
                ),
            ));
        }
        None => {}
    }
    Ok(())
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
/// let two periods' starts fall into one, so the two do not mix (`auto` resolves to `0` on such
/// a queue, in `resolve_queue`).
fn check_prefetch(q: &QueueSettings, o: Option<&QueueOverrides>) -> Result<(), ConfigError> {
    let ahead = matches!(q.prefetch, Prefetch::Fixed(n) if n > 0);
    if !ahead || (q.rate_limit.is_none() && q.key_rate_limit.is_none()) {
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
