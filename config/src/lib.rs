//! jobq settings: load raw, validate once, hand the runtime only what passed.
//!
//! Settings are layered, later layers winning:
//!
//! 1. built-in defaults (documented on every field of [`Settings`] and in
//!    `config/jobq.example.toml`);
//! 2. a TOML file: `config/jobq.toml` when it exists, or the file given to [`load`];
//! 3. `JOBQ_` environment variables, nested with `__`: `JOBQ_DATABASE_URL`,
//!    `JOBQ_WORKER__CONCURRENCY=32`, `JOBQ_METRICS__LISTEN=127.0.0.1:9187`,
//!    `JOBQ_QUEUES__MAILERS__CLAIM_MODE=named-lock`. Variables outside the configuration's
//!    sections (`JOBQ_BIN`, `JOBQ_LOCK_TOKEN`, …) are not configuration and are ignored;
//! 4. whatever the caller adds on top of [`figment`] (the CLI's flags).
//!
//! figment deserialises the layers into [`Settings`], plain data anyone may build or edit.
//! [`Settings::validate`] checks what types cannot (positive sizes, names, timing relations) and
//! produces a [`Config`], the only form the worker runtime accepts. Every error names the key.

mod error;
mod load;
mod settings;
mod validate;
mod validated;

pub use chrono_tz;
pub use croner;
pub use error::ConfigError;
pub use load::{extract, figment, ignored_env_vars, load, DEFAULT_CONFIG_FILE};
pub use settings::{
    ClaimMode, DatabaseSettings, KindOverrides, LogFormat, LogSettings, MaintenanceSettings,
    MetricsSettings, MissedSlots, Overlap, Prefetch, ProducerSettings, QueueOverrides, Rate,
    ScheduleSettings, Settings, WebSettings, WorkerSettings, DEFAULT_DATABASE_URL,
};
pub use validated::{parse_cron, Config, HistoryPartitioning, QueueSettings, RunPolicy, Schedule};

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests;
