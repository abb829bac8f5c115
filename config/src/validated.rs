//! The validated configuration: [`Config`] (what `validate.rs` builds from [`Settings`]) and
//! the resolved values the runtime reads through it: each queue's [`QueueSettings`], each
//! (queue, kind)'s [`RunPolicy`], and each recurring [`Schedule`].

use std::collections::BTreeMap;
use std::time::Duration;

use jobq_producer::{same_server, KindName, QueueName};

use crate::settings::{
    ClaimMode, DatabaseSettings, KindOverrides, LogSettings, MaintenanceSettings, MetricsSettings,
    MissedSlots, Overlap, Prefetch, ProducerSettings, QueueOverrides, Rate, Settings, WebSettings,
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
    /// Jobs claimed ahead of free slots (`worker.prefetch`); `auto` already turned to `0` on a
    /// queue with a rate limit.
    pub prefetch: Prefetch,
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
    pub(crate) settings: Settings,
    /// `worker.queues`, resolved, in the configured order.
    pub(crate) queues: Vec<QueueSettings>,
    pub(crate) queue_overrides: BTreeMap<QueueName, QueueOverrides>,
    pub(crate) kind_overrides: BTreeMap<KindName, KindOverrides>,
    pub(crate) schedules: Vec<Schedule>,
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

    /// What `maintenance.history_partition` asks of the history table's layout, validated.
    pub fn history_partitioning(&self) -> HistoryPartitioning {
        match self.settings.maintenance.history_partition {
            None => HistoryPartitioning::AsItIs,
            Some(w) if w.is_zero() => HistoryPartitioning::OneTable,
            Some(w) => HistoryPartitioning::Every(w),
        }
    }

    /// The partition width this configuration sets (`None`: unset or `0s`).
    pub fn history_partition(&self) -> Option<Duration> {
        match self.history_partitioning() {
            HistoryPartitioning::Every(w) => Some(w),
            _ => None,
        }
    }

    /// How long partitioned history is kept (`maintenance.history_retention`, or the longer of
    /// the jobs' retentions when unset); `None`: forever.
    pub fn history_retention(&self) -> Option<Duration> {
        history_retention(&self.settings.maintenance)
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

pub(crate) fn resolve_queue(
    s: &Settings,
    name: QueueName,
    o: Option<&QueueOverrides>,
) -> QueueSettings {
    let w = &s.worker;
    let rate_limit = o.and_then(|o| o.rate_limit);
    let key_rate_limit = o.and_then(|o| o.key_rate_limit);
    // A rate limit counts a start at the claim, which a job waiting in the process would
    // outlast: `auto` takes nothing ahead on such a queue (a fixed count is refused there).
    let prefetch = match o.and_then(|o| o.prefetch).unwrap_or(w.prefetch) {
        Prefetch::Auto if rate_limit.is_some() || key_rate_limit.is_some() => Prefetch::Fixed(0),
        p => p,
    };
    QueueSettings {
        name,
        concurrency: o.and_then(|o| o.concurrency).unwrap_or(w.concurrency),
        claim_mode: o.and_then(|o| o.claim_mode).unwrap_or(w.claim_mode),
        poll_interval: o.and_then(|o| o.poll_interval).unwrap_or(w.poll_interval),
        max_batch: o.and_then(|o| o.max_batch).unwrap_or(w.max_batch),
        prefetch,
        key_limit: o.and_then(|o| o.key_limit).unwrap_or(1),
        rate_limit,
        key_rate_limit,
    }
}

/// `urls` without a second spelling of a server already listed, in order.
pub(crate) fn distinct_servers<'a>(urls: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for u in urls {
        if !out.iter().any(|o| same_server(o, u)) {
            out.push(u);
        }
    }
    out
}

/// See [`Config::history_retention`].
pub(crate) fn history_retention(m: &MaintenanceSettings) -> Option<Duration> {
    match m.history_retention {
        Some(d) => (!d.is_zero()).then_some(d),
        None if m.completed_retention.is_zero() || m.failed_retention.is_zero() => None,
        None => Some(m.completed_retention.max(m.failed_retention)),
    }
}

/// What the configuration asks of `jobq_transitions`' layout (`maintenance.history_partition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryPartitioning {
    /// Unset: the table stays as it is (`jobq migrate` converts nothing; a leader rolls a
    /// partitioned table ahead but drops nothing, not knowing the retention meant for it).
    AsItIs,
    /// `0s`: one table (`jobq migrate` converts a partitioned one back).
    OneTable,
    /// Partitions this wide (whole hours, validated).
    Every(Duration),
}
