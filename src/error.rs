//! The top-level error: why the server could not start or had to stop.

use crate::config::ConfigError;
use crate::store::StoreError;
use std::fmt;

/// A fatal error; `main` prints it on one line and exits non-zero.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range.
    Config(ConfigError),
    /// The data directory could not be recovered or written.
    Store(StoreError),
    /// A socket, thread or runtime could not be set up; `context` says which.
    Io { context: String, source: std::io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(error) => write!(f, "invalid configuration: {error}"),
            Error::Store(error) => write!(f, "storage: {error}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(error) => Some(error),
            Error::Store(error) => Some(error),
            Error::Io { source, .. } => Some(source),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Error::Config(error)
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        Error::Store(error)
    }
}
