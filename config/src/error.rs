//! [`ConfigError`]: why settings could not be loaded or validated.

use std::path::PathBuf;

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

pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}
