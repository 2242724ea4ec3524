//! Configuration: flags over `OUTBOXD_*` variables over the config file over defaults, validated
//! into `Config`.

use crate::auth::{TokenConfig, Tokens};
use crate::http::types::RequestLimits;
use crate::limits::*;
use crate::queue::retry::RetryPolicy;
use crate::queue::BrokerConfig;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Declares every setting once: its flag (`--lease-ms`), variable (`OUTBOXD_LEASE_MS`), config
/// file key (`lease_ms`) and default. Generates the flags, the file's shape, and the merge.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $(#[arg($($arg:tt)*)])?
        $field:ident: $ty:ty = $default:expr, $env:literal;
    )*) => {
        /// Flags of `outboxd serve` (and `outboxd config`), as given. Each is also an `OUTBOXD_*`
        /// variable and a key of the config file; a flag wins over its variable, which wins over
        /// the file, which wins over the default.
        #[derive(clap::Args, Debug, Clone, Default)]
        pub struct ServeArgs {
            /// Config file (TOML) to read settings and API tokens from.
            #[arg(long, env = "OUTBOXD_CONFIG")]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(
                    long,
                    env = $env,
                    help = help_with_default(concat!($($doc),*), &$default)
                    $(, $($arg)*)?
                )]
                pub $field: Option<$ty>,
            )*
        }

        /// The config file's shape: every setting optional, unknown keys refused.
        #[derive(Deserialize, Debug, Default)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(pub $field: Option<$ty>,)*
            /// API tokens; none means every request is allowed.
            #[serde(default)]
            pub tokens: Vec<TokenConfig>,
        }

        /// Every setting's value in force and where it came from.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $(pub $field: Setting<$ty>,)*
            pub tokens: Vec<TokenConfig>,
            /// The config file read, if any.
            pub file: Option<PathBuf>,
        }

        impl Settings {
            fn merge(args: &ServeArgs, file: FileConfig, path: Option<PathBuf>) -> Settings {
                Settings {
                    $($field: Setting::pick(
                        stringify!($field),
                        $env,
                        args.$field.clone(),
                        file.$field,
                        || $default,
                    ),)*
                    tokens: file.tokens,
                    file: path,
                }
            }

            /// Each setting as a TOML key, value and source, in declaration order.
            pub fn entries(&self) -> Vec<(&'static str, toml::Value, Source)> {
                vec![$((
                    stringify!($field),
                    TomlValue::to_toml(&self.$field.value),
                    self.$field.source,
                ),)*]
            }
        }
    };
}

settings! {
    /// Address to listen on (host:port; port 0 picks a free port).
    listen: String = "127.0.0.1:7070".to_string(), "OUTBOXD_LISTEN";
    /// Directory that holds the write-ahead log and the store.
    data_dir: PathBuf = PathBuf::from("./outboxd-data"), "OUTBOXD_DATA_DIR";
    /// Largest request body, in bytes.
    request_bytes_max: u64 = REQUEST_BYTES_DEFAULT, "OUTBOXD_REQUEST_BYTES_MAX";
    /// Largest message (body plus headers), in bytes.
    message_bytes_max: u64 = MESSAGE_BYTES_DEFAULT, "OUTBOXD_MESSAGE_BYTES_MAX";
    /// Most messages in one enqueue request.
    batch_count_max: u32 = BATCH_COUNT_DEFAULT, "OUTBOXD_BATCH_COUNT_MAX";
    /// Deliveries before a message goes dead, when the message does not say.
    max_attempts: u32 = ATTEMPT_COUNT_DEFAULT, "OUTBOXD_MAX_ATTEMPTS";
    /// Lease duration when a lease or extend request does not say, in milliseconds.
    lease_ms: u64 = LEASE_MS_DEFAULT, "OUTBOXD_LEASE_MS";
    /// Backoff after the first failed delivery, in milliseconds.
    backoff_initial_ms: u64 = BACKOFF_INITIAL_MS_DEFAULT, "OUTBOXD_BACKOFF_INITIAL_MS";
    /// Backoff growth per further failure.
    backoff_multiplier: f64 = BACKOFF_MULTIPLIER_DEFAULT, "OUTBOXD_BACKOFF_MULTIPLIER";
    /// Longest backoff, in milliseconds.
    backoff_max_ms: u64 = BACKOFF_MAX_MS_DEFAULT, "OUTBOXD_BACKOFF_MAX_MS";
    /// Random spread of each backoff, as a fraction (0.2 = ±20 %).
    backoff_jitter: f64 = BACKOFF_JITTER_DEFAULT, "OUTBOXD_BACKOFF_JITTER";
    /// How long delivered messages stay visible, in milliseconds (0 removes them on ack).
    retention_ms: u64 = RETENTION_MS_DEFAULT, "OUTBOXD_RETENTION_MS";
    /// How many history events are kept per message.
    history_events_max: u32 = HISTORY_EVENT_COUNT_DEFAULT, "OUTBOXD_HISTORY_EVENTS_MAX";
    /// Ready messages held in memory; the rest of a backlog waits in the catalog and is read back
    /// in order as consumers catch up (about 200 bytes of memory each).
    ready_in_memory_max: usize = READY_RESIDENT_DEFAULT, "OUTBOXD_READY_IN_MEMORY_MAX";
    /// Most connections served at once.
    max_connections: usize = CONNECTION_COUNT_DEFAULT, "OUTBOXD_MAX_CONNECTIONS";
    /// Enqueues are refused (507) while the data directory's filesystem has fewer free bytes (0: off).
    disk_free_min_bytes: u64 = DISK_FREE_MIN_BYTES_DEFAULT, "OUTBOXD_DISK_FREE_MIN_BYTES";
    /// Log growth, in bytes, after which a checkpoint writes the catalog (smaller means less log
    /// to replay after a crash, and more frequent catalog writes).
    checkpoint_wal_bytes: u64 = CHECKPOINT_WAL_BYTES, "OUTBOXD_CHECKPOINT_WAL_BYTES";
    /// Size of a log segment file, in bytes: a segment is deleted once none of the messages whose
    /// contents it holds is stored any more (smaller gives space back sooner, in more files).
    log_segment_bytes: u64 = WAL_SEGMENT_BYTES, "OUTBOXD_LOG_SEGMENT_BYTES";
    /// At startup, set damaged catalog pages aside (logged, kept byte for byte) instead of
    /// refusing to start.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    quarantine_corrupt: bool = false, "OUTBOXD_QUARANTINE_CORRUPT";
    /// Do not serve the outbox page (`/` and `/ui/…`); the API is unchanged.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    no_ui: bool = false, "OUTBOXD_NO_UI";
    /// How long shutdown waits for in-flight requests, in milliseconds.
    shutdown_timeout_ms: u64 = SHUTDOWN_TIMEOUT_MS_DEFAULT, "OUTBOXD_SHUTDOWN_TIMEOUT_MS";
    /// Log format: text or json.
    log_format: String = "text".to_string(), "OUTBOXD_LOG_FORMAT";
    /// Log filter (RUST_LOG syntax, which wins when set), e.g. `info` or `outboxd=debug`.
    log: String = "info".to_string(), "OUTBOXD_LOG";
}

/// A flag's help: its doc comment and its default, as the config file would spell it.
fn help_with_default(doc: &str, default: &dyn TomlValue) -> String {
    format!("{} [default: {}]", doc.trim().trim_end_matches('.'), default.to_toml())
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "config file",
            Source::Env => "environment",
            Source::Flag => "command line",
        }
    }
}

/// One setting: its value in force, where it came from, and its names.
#[derive(Debug, Clone)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
    /// The config file key, e.g. `lease_ms`.
    pub key: &'static str,
    /// The environment variable, e.g. `OUTBOXD_LEASE_MS`.
    pub env: &'static str,
}

impl<T> Setting<T> {
    fn pick(
        key: &'static str,
        env: &'static str,
        given: Option<T>,
        file: Option<T>,
        default: impl FnOnce() -> T,
    ) -> Setting<T> {
        let (value, source) = match (given, file) {
            (Some(value), _) => (value, given_source(key, env)),
            (None, Some(value)) => (value, Source::File),
            (None, None) => (default(), Source::Default),
        };
        Setting { value, source, key, env }
    }

    /// How an error names the setting: every spelling, and where the bad value came from.
    pub fn describe(&self) -> String {
        format!(
            "{} (--{}, {}; from the {})",
            self.key,
            self.key.replace('_', "-"),
            self.env,
            self.source.as_str()
        )
    }

    fn error(&self, message: String) -> ConfigError {
        ConfigError { setting: self.key, message: format!("{}: {message}", self.describe()) }
    }
}

/// A flag and its variable both reach clap as one value; the command line wins when both are set.
fn given_source(key: &str, env: &str) -> Source {
    let flag = format!("--{}", key.replace('_', "-"));
    let on_command_line = std::env::args().any(|arg| {
        arg == flag || arg.strip_prefix(&flag).is_some_and(|rest| rest.starts_with('='))
    });
    if !on_command_line && std::env::var_os(env).is_some() {
        Source::Env
    } else {
        Source::Flag
    }
}

/// A setting's value as it is written in the config file.
pub trait TomlValue {
    fn to_toml(&self) -> toml::Value;
}

impl TomlValue for String {
    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.clone())
    }
}

impl TomlValue for PathBuf {
    fn to_toml(&self) -> toml::Value {
        toml::Value::String(self.display().to_string())
    }
}

impl TomlValue for bool {
    fn to_toml(&self) -> toml::Value {
        toml::Value::Boolean(*self)
    }
}

impl TomlValue for f64 {
    fn to_toml(&self) -> toml::Value {
        toml::Value::Float(*self)
    }
}

macro_rules! integer_toml {
    ($($ty:ty),*) => {$(
        impl TomlValue for $ty {
            fn to_toml(&self) -> toml::Value {
                match i64::try_from(*self) {
                    Ok(value) => toml::Value::Integer(value),
                    Err(_) => toml::Value::String(self.to_string()),
                }
            }
        }
    )*};
}

integer_toml!(u32, u64, usize);

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
    /// Size of a log segment before the next one starts.
    pub log_segment_bytes: u64,
    pub quarantine_corrupt: bool,
    /// Whether `/` and `/ui/…` serve the outbox page (off with `--no-ui`).
    pub ui_enabled: bool,
    pub shutdown_timeout_ms: u64,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// API tokens; empty means access control is off.
    pub tokens: Tokens,
    /// Every setting with its source, for `outboxd config --print`.
    pub settings: Settings,
}

/// A setting that is missing, malformed or out of its allowed range, or an unreadable config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file key, e.g. `lease_ms`, or `config` for the file itself.
    pub setting: &'static str,
    /// Every spelling of the setting, where its value came from, and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

fn range<T: PartialOrd + fmt::Display + Copy>(
    setting: &Setting<T>,
    low: T,
    high: T,
) -> Result<T, ConfigError> {
    let value = setting.value;
    if value >= low && value <= high {
        Ok(value)
    } else {
        Err(setting.error(format!("{value} is outside the allowed range {low}..={high}")))
    }
}

/// The address to bind: an IP and port, or a host name that resolves (e.g. `localhost:7070`).
fn resolve_listen(setting: &Setting<String>) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    let text = &setting.value;
    let mut addresses = text.to_socket_addrs().map_err(|cause| {
        setting.error(format!("{text:?} is not host:port, e.g. 127.0.0.1:7070 ({cause})"))
    })?;
    addresses.next().ok_or_else(|| setting.error(format!("{text:?} resolves to no address")))
}

/// Reads and parses the config file; the error names the file, and toml names the line.
fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let error = |message: String| ConfigError { setting: "config", message };
    let text = std::fs::read_to_string(path).map_err(|cause| {
        error(format!("cannot read the config file {}: {cause}", path.display()))
    })?;
    toml::from_str(&text).map_err(|cause: toml::de::Error| {
        // toml's own text quotes the offending line, which may hold a token's secret: say where
        // and what, not the line itself.
        let at = match cause.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
                format!(" at line {line}, column {column}")
            }
            None => String::new(),
        };
        error(format!(
            "the config file {} is not valid{at}: {} (docs/outboxd.example.toml lists every key)",
            path.display(),
            cause.message().trim_end()
        ))
    })
}

impl Config {
    /// Reads the config file named by `--config`, if any, layers the variables and flags over it,
    /// and validates the result; the error names the setting, its source and the allowed range.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::from_settings(Settings::merge(args, file, args.config.clone()), |name| {
            std::env::var(name).ok()
        })
    }

    /// Validates merged settings; `env` reads the variables that token secrets name.
    pub fn from_settings(
        settings: Settings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let s = &settings;
        let listen = resolve_listen(&s.listen)?;
        let limits = RequestLimits {
            request_bytes_max: range(&s.request_bytes_max, 64, REQUEST_BYTES_MAX)?,
            message_bytes_max: range(&s.message_bytes_max, 1, MESSAGE_BYTES_MAX)?,
            batch_count_max: range(&s.batch_count_max, 1, BATCH_COUNT_MAX)?,
        };
        let retry = RetryPolicy {
            initial_ms: range(&s.backoff_initial_ms, 0, DELAY_MS_MAX)?,
            multiplier: range(&s.backoff_multiplier, 1.0, 100.0)?,
            max_ms: range(&s.backoff_max_ms, 0, DELAY_MS_MAX)?,
            jitter: range(&s.backoff_jitter, 0.0, 0.99)?,
        };
        if retry.initial_ms > retry.max_ms {
            let message = format!("must not exceed backoff_max_ms ({})", retry.max_ms);
            return Err(s.backoff_initial_ms.error(message));
        }
        let broker = BrokerConfig {
            attempt_count_max: range(&s.max_attempts, 1, ATTEMPT_COUNT_MAX)?,
            retry,
            lease_ms: range(&s.lease_ms, LEASE_MS_MIN, LEASE_MS_MAX)?,
            retention_ms: range(&s.retention_ms, 0, RETENTION_MS_MAX)?,
            history_keep_count: range(&s.history_events_max, 1, HISTORY_EVENT_COUNT_MAX)?,
            ready_resident_max: range(&s.ready_in_memory_max, 1, READY_RESIDENT_MAX)?,
        };
        let log_format = match s.log_format.value.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(s.log_format.error(format!("{other:?} is neither text nor json")));
            }
        };
        if let Err(cause) = tracing_subscriber::EnvFilter::try_new(&s.log.value) {
            return Err(s.log.error(format!(
                "{:?} is not a log filter ({cause}); write e.g. info or outboxd=debug,info",
                s.log.value
            )));
        }
        if s.data_dir.value.as_os_str().is_empty() {
            return Err(s.data_dir.error("is empty; name a directory".to_string()));
        }
        let tokens = Tokens::from_config(&s.tokens, env)
            .map_err(|message| ConfigError { setting: "tokens", message })?;
        Ok(Config {
            listen,
            data_dir: s.data_dir.value.clone(),
            limits,
            broker,
            connection_count_max: range(&s.max_connections, 1, 1_000_000)?,
            // A TOML integer is signed: the range keeps every value writable in the file.
            disk_free_min_bytes: range(&s.disk_free_min_bytes, 0, i64::MAX as u64)?,
            checkpoint_wal_bytes: range(
                &s.checkpoint_wal_bytes,
                1024 * 1024,
                CHECKPOINT_WAL_BYTES_MAX,
            )?,
            log_segment_bytes: range(
                &s.log_segment_bytes,
                WAL_SEGMENT_BYTES_MIN,
                WAL_SEGMENT_BYTES_MAX,
            )?,
            quarantine_corrupt: s.quarantine_corrupt.value,
            ui_enabled: !s.no_ui.value,
            shutdown_timeout_ms: range(&s.shutdown_timeout_ms, 0, 600_000)?,
            log_format,
            log_filter: s.log.value.clone(),
            tokens,
            settings,
        })
    }

    /// The effective configuration as a config file: every setting with its source as a comment,
    /// and the tokens with their secrets left out.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        match &self.settings.file {
            Some(path) => out.push_str(&format!(
                "# outboxd effective configuration (file: {})\n",
                path.display()
            )),
            None => out.push_str("# outboxd effective configuration (no config file)\n"),
        }
        let entries = self.settings.entries();
        let width = entries
            .iter()
            .map(|(key, value, _)| key.len() + value.to_string().len())
            .max()
            .unwrap_or(0);
        for (key, value, source) in entries {
            let line = format!("{key} = {value}");
            out.push_str(&format!("{line:<w$}  # {}\n", source.as_str(), w = width + 3));
        }
        for entry in &self.settings.tokens {
            let mut shown = entry.clone();
            let hidden = shown.secret.take().is_some();
            let mut table = toml::Table::new();
            table.insert(
                "tokens".into(),
                toml::Value::Array(vec![
                    toml::Value::try_from(&shown).unwrap_or(toml::Value::Table(toml::Table::new()))
                ]),
            );
            out.push('\n');
            out.push_str(&toml::to_string(&table).unwrap_or_default());
            if hidden {
                out.push_str(
                    "# secret = \"...\"  (hidden: fill it in, or better, move it to secret_env)\n",
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn flags(args: &[&str]) -> ServeArgs {
        Flags::try_parse_from(std::iter::once("outboxd").chain(args.iter().copied()))
            .expect("flags parse")
            .serve
    }

    fn with_file(args: &[&str], file: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(file)
            .map_err(|error| ConfigError { setting: "config", message: error.to_string() })?;
        Config::from_settings(Settings::merge(&flags(args), file, None), |name| {
            (name == "TEST_SECRET").then(|| "a-secret-from-the-environment".to_string())
        })
    }

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        with_file(args, "")
    }

    #[test]
    fn the_flag_defaults_are_the_broker_defaults() {
        assert_eq!(config(&[]).unwrap().broker, BrokerConfig::default());
    }

    #[test]
    fn an_out_of_range_setting_is_named_with_its_range() {
        let error = config(&["--lease-ms", "0"]).unwrap_err();
        assert_eq!(error.setting, "lease_ms");
        assert!(error.message.contains("--lease-ms"), "{error}");
        assert!(error.message.contains("OUTBOXD_LEASE_MS"), "{error}");
        assert!(error.message.contains("outside the allowed range 1..="), "{error}");
        let error =
            config(&["--backoff-initial-ms", "5000", "--backoff-max-ms", "10"]).unwrap_err();
        assert_eq!(error.setting, "backoff_initial_ms");
        assert_eq!(config(&["--listen", "nowhere"]).unwrap_err().setting, "listen");
        assert_eq!(config(&["--log-format", "xml"]).unwrap_err().setting, "log_format");
        assert_eq!(config(&["--log", "a=b=c"]).unwrap_err().setting, "log");
        let error = config(&["--disk-free-min-bytes", "18446744073709551615"]).unwrap_err();
        assert_eq!(error.setting, "disk_free_min_bytes", "every value must fit a TOML integer");
        assert_eq!(
            config(&["--checkpoint-wal-bytes", "10"]).unwrap_err().setting,
            "checkpoint_wal_bytes"
        );
    }

    #[test]
    fn the_file_sets_what_flags_do_not_and_flags_win() {
        let file = "lease_ms = 5000\nmax_attempts = 3\nquarantine_corrupt = true\n";
        let config = with_file(&["--lease-ms", "7000"], file).unwrap();
        assert_eq!(config.broker.lease_ms, 7000);
        assert_eq!(config.settings.lease_ms.source, Source::Flag);
        assert_eq!(config.broker.attempt_count_max, 3);
        assert_eq!(config.settings.max_attempts.source, Source::File);
        assert!(config.quarantine_corrupt);
        assert_eq!(config.settings.retention_ms.source, Source::Default);
        let error = with_file(&[], "lease_ms = 0\n").unwrap_err();
        assert!(error.message.contains("from the config file"), "{error}");
    }

    #[test]
    fn a_bool_flag_needs_no_value() {
        assert!(config(&["--quarantine-corrupt"]).unwrap().quarantine_corrupt);
        assert!(config(&[]).unwrap().ui_enabled);
        assert!(!config(&["--no-ui"]).unwrap().ui_enabled);
        assert!(!with_file(&[], "no_ui = true\n").unwrap().ui_enabled);
        assert!(!config(&["--quarantine-corrupt", "false"]).unwrap().quarantine_corrupt);
    }

    #[test]
    fn unknown_keys_and_wrong_types_in_the_file_are_refused() {
        let error = with_file(&[], "lease_msx = 5\n").unwrap_err();
        assert!(error.message.contains("lease_msx"), "{error}");
        let error = with_file(&[], "lease_ms = \"five\"\n").unwrap_err();
        assert!(error.message.contains("lease_ms"), "{error}");
    }

    #[test]
    fn tokens_come_from_the_file_and_are_never_printed() {
        let file = r#"
            [[tokens]]
            name = "producer"
            secret = "producer-secret-0123456789"
            roles = ["produce"]
            queues = "orders.*"

            [[tokens]]
            name = "ops"
            secret_env = "TEST_SECRET"
            roles = ["admin", "consume"]
        "#;
        let config = with_file(&[], file).unwrap();
        assert_eq!(config.tokens.len(), 2);
        let ops = config.tokens.find(b"a-secret-from-the-environment").unwrap();
        assert!(ops.allows(Role::Admin, Some("anything")));
        let printed = config.to_toml();
        assert!(!printed.contains("producer-secret-0123456789"), "{printed}");
        assert!(printed.contains("# secret = \"...\"  (hidden"), "{printed}");
        assert!(!format!("{config:?}").contains("producer-secret-0123456789"));
        assert!(printed.contains("secret_env = \"TEST_SECRET\""), "{printed}");
        let error =
            with_file(&[], "[[tokens]]\nname = \"x\"\nsecret = \"short\"\nroles = [\"admin\"]\n")
                .unwrap_err();
        assert_eq!(error.setting, "tokens");
    }

    #[test]
    fn the_printed_config_reads_back_as_the_same_config() {
        let config = with_file(&["--lease-ms", "4321"], "retention_ms = 99\n").unwrap();
        let printed = config.to_toml();
        assert!(printed.contains("lease_ms = 4321"), "{printed}");
        let with_token =
            "[[tokens]]\nname = \"ops\"\nsecret_env = \"TEST_SECRET\"\nroles = [\"admin\"]\n";
        let printed =
            with_file(&["--lease-ms", "4321"], &format!("retention_ms = 99\n{with_token}"))
                .unwrap()
                .to_toml();
        let again = with_file(&[], &printed).unwrap();
        assert_eq!(again.broker, config.broker);
        assert_eq!(again.limits.request_bytes_max, config.limits.request_bytes_max);
        assert_eq!(again.listen, config.listen);
        assert_eq!(again.data_dir, config.data_dir);
        assert_eq!(again.tokens.len(), 1, "{printed}");
    }

    #[test]
    fn the_example_config_file_lists_every_setting_at_its_default() {
        let example = include_str!("../docs/outboxd.example.toml");
        let from_example = with_file(&[], example).unwrap();
        let defaults = config(&[]).unwrap();
        for ((key, value, source), (_, default, _)) in
            from_example.settings.entries().into_iter().zip(defaults.settings.entries())
        {
            assert_eq!(source, Source::File, "{key} is missing from docs/outboxd.example.toml");
            assert_eq!(value, default, "{key} in docs/outboxd.example.toml is not the default");
        }
    }

    #[test]
    fn each_flag_shows_its_default_in_the_help() {
        use clap::CommandFactory;
        let help = Flags::command().render_long_help().to_string();
        assert!(help.contains("in milliseconds [default: 30000]"), "{help}");
        assert!(help.contains("[default: \"127.0.0.1:7070\"]"), "{help}");
    }
}
