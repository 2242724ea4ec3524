//! Configuration: raw command-line flags (each also an `OUTBOXD_*` variable) validated into `Config`.

use crate::http::types::RequestLimits;
use crate::limits::*;
use crate::queue::retry::RetryPolicy;
use crate::queue::BrokerConfig;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `outboxd serve`, as given.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (host:port; port 0 picks a free port).
    #[arg(long, env = "OUTBOXD_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Directory that holds the write-ahead log and the store.
    #[arg(long, env = "OUTBOXD_DATA_DIR", default_value = "./outboxd-data")]
    pub data_dir: PathBuf,
    /// Largest request body, in bytes.
    #[arg(long, env = "OUTBOXD_REQUEST_BYTES_MAX", default_value_t = REQUEST_BYTES_DEFAULT)]
    pub request_bytes_max: u64,
    /// Largest message (body plus headers), in bytes.
    #[arg(long, env = "OUTBOXD_MESSAGE_BYTES_MAX", default_value_t = MESSAGE_BYTES_DEFAULT)]
    pub message_bytes_max: u64,
    /// Most messages in one enqueue request.
    #[arg(long, env = "OUTBOXD_BATCH_COUNT_MAX", default_value_t = BATCH_COUNT_DEFAULT)]
    pub batch_count_max: u32,
    /// Deliveries before a message goes dead, when the message does not say.
    #[arg(long, env = "OUTBOXD_MAX_ATTEMPTS", default_value_t = ATTEMPT_COUNT_DEFAULT)]
    pub max_attempts: u32,
    /// Lease duration when a lease or extend request does not say, in milliseconds.
    #[arg(long, env = "OUTBOXD_LEASE_MS", default_value_t = LEASE_MS_DEFAULT)]
    pub lease_ms: u64,
    /// Backoff after the first failed delivery, in milliseconds.
    #[arg(long, env = "OUTBOXD_BACKOFF_INITIAL_MS", default_value_t = BACKOFF_INITIAL_MS_DEFAULT)]
    pub backoff_initial_ms: u64,
    /// Backoff growth per further failure.
    #[arg(long, env = "OUTBOXD_BACKOFF_MULTIPLIER", default_value_t = BACKOFF_MULTIPLIER_DEFAULT)]
    pub backoff_multiplier: f64,
    /// Longest backoff, in milliseconds.
    #[arg(long, env = "OUTBOXD_BACKOFF_MAX_MS", default_value_t = BACKOFF_MAX_MS_DEFAULT)]
    pub backoff_max_ms: u64,
    /// Random spread of each backoff, as a fraction (0.2 = ±20 %).
    #[arg(long, env = "OUTBOXD_BACKOFF_JITTER", default_value_t = BACKOFF_JITTER_DEFAULT)]
    pub backoff_jitter: f64,
    /// How long delivered messages stay visible, in milliseconds (0 removes them on ack).
    #[arg(long, env = "OUTBOXD_RETENTION_MS", default_value_t = RETENTION_MS_DEFAULT)]
    pub retention_ms: u64,
    /// How many history events are kept per message.
    #[arg(long, env = "OUTBOXD_HISTORY_EVENTS_MAX", default_value_t = HISTORY_EVENT_COUNT_DEFAULT)]
    pub history_events_max: u32,
    /// Most connections served at once.
    #[arg(long, env = "OUTBOXD_MAX_CONNECTIONS", default_value_t = CONNECTION_COUNT_DEFAULT)]
    pub max_connections: usize,
    /// Enqueues are refused (507) while the data directory's filesystem has fewer free bytes (0: off).
    #[arg(long, env = "OUTBOXD_DISK_FREE_MIN_BYTES", default_value_t = DISK_FREE_MIN_BYTES_DEFAULT)]
    pub disk_free_min_bytes: u64,
    /// WAL growth, in bytes, after which a checkpoint lets older log segments go (smaller means
    /// less log to replay after a crash, and more frequent sled flushes).
    #[arg(long, env = "OUTBOXD_CHECKPOINT_WAL_BYTES", default_value_t = CHECKPOINT_WAL_BYTES)]
    pub checkpoint_wal_bytes: u64,
    /// At startup, set damaged message records aside (logged, kept in a `quarantine` tree) instead
    /// of refusing to start.
    #[arg(long, env = "OUTBOXD_QUARANTINE_CORRUPT")]
    pub quarantine_corrupt: bool,
    /// How long shutdown waits for in-flight requests, in milliseconds.
    #[arg(long, env = "OUTBOXD_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
    /// Log format: text or json.
    #[arg(long, env = "OUTBOXD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Log filter (RUST_LOG syntax), e.g. `info` or `outboxd=debug`.
    #[arg(long, env = "OUTBOXD_LOG", default_value = "info")]
    pub log: String,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration of a server.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub limits: RequestLimits,
    pub broker: BrokerConfig,
    pub connection_count_max: usize,
    pub disk_free_min_bytes: u64,
    pub checkpoint_wal_bytes: u64,
    pub quarantine_corrupt: bool,
    pub shutdown_timeout_ms: u64,
    pub log_format: LogFormat,
    pub log_filter: String,
}

/// A setting out of its allowed range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag, e.g. `--lease-ms`.
    pub setting: &'static str,
    /// What is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn range<T: PartialOrd + fmt::Display + Copy>(
    setting: &'static str,
    value: T,
    low: T,
    high: T,
) -> Result<T, ConfigError> {
    if value >= low && value <= high {
        Ok(value)
    } else {
        Err(ConfigError { setting, message: format!("{value} is outside {low}..={high}") })
    }
}

/// The address to bind: an IP and port, or a host name that resolves (e.g. `localhost:7070`).
fn resolve_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let error = |message: String| ConfigError { setting: "--listen", message };
    let mut addresses = text.to_socket_addrs().map_err(|cause| {
        error(format!("{text:?} is not host:port, e.g. 127.0.0.1:7070 ({cause})"))
    })?;
    addresses.next().ok_or_else(|| error(format!("{text:?} resolves to no address")))
}

impl Config {
    /// Validates the flags; the error names the setting and its allowed range.
    pub fn from_args(args: &ServeArgs) -> Result<Config, ConfigError> {
        let listen = resolve_listen(&args.listen)?;
        let message_bytes_max =
            range("--message-bytes-max", args.message_bytes_max, 1, MESSAGE_BYTES_MAX)?;
        let request_bytes_max =
            range("--request-bytes-max", args.request_bytes_max, 64, REQUEST_BYTES_MAX)?;
        let limits = RequestLimits {
            request_bytes_max,
            message_bytes_max,
            batch_count_max: range("--batch-count-max", args.batch_count_max, 1, BATCH_COUNT_MAX)?,
        };
        let retry = RetryPolicy {
            initial_ms: range("--backoff-initial-ms", args.backoff_initial_ms, 0, DELAY_MS_MAX)?,
            multiplier: range("--backoff-multiplier", args.backoff_multiplier, 1.0, 100.0)?,
            max_ms: range("--backoff-max-ms", args.backoff_max_ms, 0, DELAY_MS_MAX)?,
            jitter: range("--backoff-jitter", args.backoff_jitter, 0.0, 0.99)?,
        };
        if retry.initial_ms > retry.max_ms {
            let message = "must not exceed --backoff-max-ms".to_string();
            return Err(ConfigError { setting: "--backoff-initial-ms", message });
        }
        let broker = BrokerConfig {
            attempt_count_max: range("--max-attempts", args.max_attempts, 1, ATTEMPT_COUNT_MAX)?,
            retry,
            lease_ms: range("--lease-ms", args.lease_ms, LEASE_MS_MIN, LEASE_MS_MAX)?,
            retention_ms: range("--retention-ms", args.retention_ms, 0, RETENTION_MS_MAX)?,
            history_keep_count: range(
                "--history-events-max",
                args.history_events_max,
                1,
                HISTORY_EVENT_COUNT_MAX,
            )?,
        };
        let log_format = match args.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                let message = format!("{other:?} is neither text nor json");
                return Err(ConfigError { setting: "--log-format", message });
            }
        };
        Ok(Config {
            listen,
            data_dir: args.data_dir.clone(),
            limits,
            broker,
            connection_count_max: range("--max-connections", args.max_connections, 1, 1_000_000)?,
            disk_free_min_bytes: args.disk_free_min_bytes,
            checkpoint_wal_bytes: range(
                "--checkpoint-wal-bytes",
                args.checkpoint_wal_bytes,
                1024 * 1024,
                CHECKPOINT_WAL_BYTES_MAX,
            )?,
            quarantine_corrupt: args.quarantine_corrupt,
            shutdown_timeout_ms: range(
                "--shutdown-timeout-ms",
                args.shutdown_timeout_ms,
                0,
                600_000,
            )?,
            log_format,
            log_filter: args.log.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let flags = Flags::try_parse_from(std::iter::once("outboxd").chain(args.iter().copied()))
            .expect("flags parse");
        Config::from_args(&flags.serve)
    }

    #[test]
    fn the_flag_defaults_are_the_broker_defaults() {
        assert_eq!(config(&[]).unwrap().broker, BrokerConfig::default());
    }

    #[test]
    fn an_out_of_range_setting_is_named_with_its_range() {
        let error = config(&["--lease-ms", "0"]).unwrap_err();
        assert_eq!(error.setting, "--lease-ms");
        assert!(error.message.contains("outside 1..="), "{error}");
        let error =
            config(&["--backoff-initial-ms", "5000", "--backoff-max-ms", "10"]).unwrap_err();
        assert_eq!(error.setting, "--backoff-initial-ms");
        assert_eq!(config(&["--listen", "nowhere"]).unwrap_err().setting, "--listen");
        assert_eq!(config(&["--log-format", "xml"]).unwrap_err().setting, "--log-format");
        assert_eq!(
            config(&["--checkpoint-wal-bytes", "10"]).unwrap_err().setting,
            "--checkpoint-wal-bytes"
        );
    }
}
