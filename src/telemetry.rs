//! Logging: a tracing subscriber writing to stderr, as text or JSON lines.
//!
//! Lines are handed to a writer thread (`tracing-appender`'s non-blocking writer), so a request
//! that logs its access line does not wait for the write to stderr. The queue holds 128,000
//! lines; when it is full, logging blocks instead of dropping lines.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `filter`. Keep the returned
/// guard until the process ends: dropping it writes out the lines still queued.
pub fn init(format: LogFormat, filter: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("outboxd-log")
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}
