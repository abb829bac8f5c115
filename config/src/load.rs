//! Loading: defaults < TOML file < `JOBQ_` environment (< caller layers), then validation.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use crate::error::{invalid, ConfigError};
use crate::settings::Settings;
use crate::validated::Config;

/// The file read when no `--config` is given, relative to the working directory. It is optional.
pub const DEFAULT_CONFIG_FILE: &str = "config/jobq.toml";

/// The top-level keys of [`Settings`]. A `JOBQ_` variable is configuration only when its first
/// `__`-separated segment is one of these.
const SECTIONS: [&str; 10] = [
    "database_url",
    "database",
    "worker",
    "queues",
    "kinds",
    "producer",
    "maintenance",
    "metrics",
    "web",
    "log",
];

/// Whether `JOBQ_<key>` belongs to the configuration. Variables such as `JOBQ_BIN` or
/// `JOBQ_LOCK_TOKEN` (set by jobq for the commands it runs) are not configuration; a misspelt key
/// inside a known section (`JOBQ_WORKER__CONCURENCY`) still is, and fails validation by name.
fn is_config_var(key: &str) -> bool {
    let first = key.split("__").next().unwrap_or("");
    SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(first))
}

/// The `JOBQ_` variables of this process that [`load`] ignores because they name no section;
/// callers log them once logging is set up.
pub fn ignored_env_vars() -> Vec<String> {
    std::env::vars()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix("JOBQ_")?;
            (!is_config_var(rest)).then_some(k)
        })
        .collect()
}

/// The figment behind [`load`], for callers that add layers (the CLI adds its flags on top, so
/// a bad flag is reported like a bad key).
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
    Ok(fig.merge(
        Env::prefixed("JOBQ_")
            .filter(|k| is_config_var(k.as_str()))
            .split("__"),
    ))
}

/// Loads and validates settings: defaults < TOML file < `JOBQ_` environment.
///
/// `file`: an explicit file (must exist); `None` reads `config/jobq.toml` if present.
pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
    extract(figment(file)?)
}

/// Extracts and validates settings from a figment built by [`figment`] plus caller layers.
pub fn extract(fig: Figment) -> Result<Config, ConfigError> {
    let settings: Settings = fig.extract().map_err(from_figment)?;
    settings.validate()
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
