//! `outboxd bench`: a load generator that drives a running (or spawned) server over HTTP.
//!
//! A run is up to three phases, each measured on its own: `enqueue` (producers fill a queue),
//! `consume` (consumers lease and ack what the enqueue phase stored) and `mixed` (both at once, on a
//! second queue). Every request's latency goes into a histogram per phase and request kind, and
//! every message id into a [`ledger::Ledger`]: a run whose server lost or duplicated a message
//! fails (non-zero exit), whatever its speed.
//!
//! Layout:
//! - `client`: the minimal HTTP/1.1 keep-alive client the workers use.
//! - `workers`: the producer and consumer loops.
//! - `phase`: one phase: connect, run the workers to their goal, time it.
//! - `ledger`: which ids were enqueued, leased and acked; the exactly-once verdict.
//! - `spawn`: `--spawn`: the private server process, its RSS and data dir size.
//! - `fsync`: `--fsync-baseline`: the disk's raw append + fdatasync rate, the yardstick.
//! - `report`: latency summaries, and the table and JSON output.

pub mod client;
pub mod fsync;
pub mod ledger;
pub mod phase;
pub mod report;
pub mod spawn;
pub mod workers;

use ledger::{Expectations, Ledger};
use phase::{ConsumeGoal, PhaseSpec};
use report::Report;
use serde::Serialize;
use spawn::SpawnedServer;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How long `--fsync-baseline` runs when `--duration-s` is not given.
const FSYNC_BASELINE_DURATION_DEFAULT: Duration = Duration::from_secs(3);
/// Added to `wait_ms` for a request's timeout: a group commit can take seconds on a slow disk.
const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);
/// The largest batch and lease batch the bench accepts (the server's own maximum).
const BATCH_COUNT_MAX: u32 = crate::limits::BATCH_COUNT_MAX;
/// Most producers or consumers (each holds one connection).
const WORKER_COUNT_MAX: u32 = 1024;

/// Flags of `outboxd bench`, as given.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of a running server (only http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub url: String,
    /// Start a private server (this executable's `serve`) on 127.0.0.1:0 with a temporary data
    /// directory, measure it, and kill it at the end. Ignores --url.
    #[arg(long)]
    pub spawn: bool,
    /// An extra flag for the spawned server's `serve`, repeatable: --server-arg=--log=warn.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Directory for the spawned server's data directory and the fsync baseline's scratch file
    /// (default: the system temp dir). Put it on the file system you mean to measure.
    #[arg(long)]
    pub temp_dir: Option<PathBuf>,
    /// Messages per phase (the mixed phase uses --duration-s instead when given).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Size of each message's JSON body text, in bytes (at least 2: the quotes of a string).
    #[arg(long, default_value_t = 256)]
    pub body_bytes: usize,
    /// Concurrent producers, one connection each.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Concurrent consumers, one connection each.
    #[arg(long, default_value_t = 4)]
    pub consumers: u32,
    /// Messages per enqueue request.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Most messages per lease request (`max`); each lease is acked in one request.
    #[arg(long, default_value_t = 100)]
    pub lease_batch: u32,
    /// Which phases to run; `all` runs enqueue, then consume, then mixed.
    #[arg(long, value_enum, default_value_t = PhaseChoice::All)]
    pub phase: PhaseChoice,
    /// Run the mixed phase's producers for this many seconds instead of --messages; with
    /// --fsync-baseline, how long to measure (default 3).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Enqueue at most this many messages per second in all (each producer paces itself to its
    /// share), e.g. to measure latency at a fraction of peak load; default: as fast as answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Queue name (default: a new unique name); the mixed phase of `all` uses NAME-mixed.
    #[arg(long)]
    pub queue: Option<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Long-poll wait of each lease, in milliseconds, so idle consumers do not spin.
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: u64,
    /// Lease duration, in milliseconds; long, so that nothing is redelivered during a run.
    #[arg(long, default_value_t = 300_000)]
    pub lease_ms: u64,
    /// After producers finish, how long consumers wait without an ack before they report the
    /// missing messages instead of waiting for them.
    #[arg(long, default_value_t = 10)]
    pub stall_timeout_s: u64,
    /// Measure the disk's raw 4 KiB append + fdatasync rate in --temp-dir and exit.
    #[arg(long)]
    pub fsync_baseline: bool,
    /// API token for a server with access control (needs produce and consume on the queue),
    /// sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "OUTBOXD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The `--phase` choices.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseChoice {
    Enqueue,
    Consume,
    Mixed,
    All,
}

impl PhaseChoice {
    pub fn name(self) -> &'static str {
        match self {
            PhaseChoice::Enqueue => "enqueue",
            PhaseChoice::Consume => "consume",
            PhaseChoice::Mixed => "mixed",
            PhaseChoice::All => "all",
        }
    }
}

/// One measured phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Enqueue,
    Consume,
    Mixed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Enqueue => "enqueue",
            Phase::Consume => "consume",
            Phase::Mixed => "mixed",
        }
    }
}

/// The validated settings of a run; echoed in the JSON output.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub phase: PhaseChoice,
    pub queue: String,
    pub messages: u64,
    pub body_bytes: usize,
    pub producers: u32,
    pub consumers: u32,
    pub batch: u32,
    pub lease_batch: u32,
    pub duration_s: Option<f64>,
    /// Messages per second the producers keep to, in all; `None`: as fast as answered.
    pub rate: Option<f64>,
    pub wait_ms: u64,
    pub lease_ms: u64,
    pub stall_timeout_s: u64,
    /// Never echoed: the JSON output shows only whether a token is used.
    #[serde(rename = "token", serialize_with = "serialize_token_presence")]
    pub token: Option<String>,
}

fn serialize_token_presence<S: serde::Serializer>(
    token: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_bool(token.is_some())
}

impl Plan {
    /// Validates the flags of a load run.
    pub fn from_args(args: &BenchArgs) -> Result<Plan, BenchError> {
        let usage = |text: String| Err(BenchError::Usage(text));
        if args.messages == 0 {
            return usage("--messages must be at least 1".into());
        }
        if args.body_bytes < 2 {
            return usage("--body-bytes must be at least 2 (the quotes of a JSON string)".into());
        }
        for (flag, count, max) in [
            ("--producers", args.producers, WORKER_COUNT_MAX),
            ("--consumers", args.consumers, WORKER_COUNT_MAX),
            ("--batch", args.batch, BATCH_COUNT_MAX),
            ("--lease-batch", args.lease_batch, BATCH_COUNT_MAX),
        ] {
            if count == 0 || count > max {
                return usage(format!("{flag} must be in 1..={max}, not {count}"));
            }
        }
        if args.duration_s.is_some_and(|seconds| !(seconds > 0.0 && seconds.is_finite())) {
            return usage("--duration-s must be a positive number of seconds".into());
        }
        if args.rate.is_some_and(|rate| !(rate > 0.0 && rate.is_finite())) {
            return usage("--rate must be a positive number of messages per second".into());
        }
        if args.wait_ms > crate::limits::WAIT_MS_MAX {
            return usage(format!("--wait-ms must be at most {}", crate::limits::WAIT_MS_MAX));
        }
        if !(crate::limits::LEASE_MS_MIN..=crate::limits::LEASE_MS_MAX).contains(&args.lease_ms) {
            return usage(format!(
                "--lease-ms must be in {}..={}",
                crate::limits::LEASE_MS_MIN,
                crate::limits::LEASE_MS_MAX
            ));
        }
        let queue = match &args.queue {
            Some(name) => name.clone(),
            None => unique_queue_name(),
        };
        // The mixed phase's queue adds 6 characters, so the limit leaves room for them.
        let name_ok = queue.len() + "-mixed".len() <= crate::limits::QUEUE_NAME_BYTES_MAX
            && queue.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if queue.is_empty() || !name_ok {
            return usage(format!(
                "--queue {queue:?} must be 1 to {} characters of [A-Za-z0-9._-]",
                crate::limits::QUEUE_NAME_BYTES_MAX - "-mixed".len()
            ));
        }
        Ok(Plan {
            phase: args.phase,
            queue,
            messages: args.messages,
            body_bytes: args.body_bytes,
            producers: args.producers,
            consumers: args.consumers,
            batch: args.batch,
            lease_batch: args.lease_batch,
            duration_s: args.duration_s,
            rate: args.rate,
            wait_ms: args.wait_ms,
            lease_ms: args.lease_ms,
            stall_timeout_s: args.stall_timeout_s,
            token: match &args.token {
                Some(token) if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) => {
                    return usage("--token (or OUTBOXD_TOKEN) must be visible ASCII".into());
                }
                token => token.clone(),
            },
        })
    }

    /// How long one request may take before the bench gives up on it.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_ms) + REQUEST_TIMEOUT_MARGIN
    }

    /// How long consumers wait without an ack, after producers finished, before giving up.
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs(self.stall_timeout_s)
    }

    /// The phases to run, in order, each with its queue and its goal.
    fn phase_specs(&self) -> Vec<PhaseSpec> {
        let enqueue = PhaseSpec {
            phase: Phase::Enqueue,
            queue: self.queue.clone(),
            producer_count: self.producers,
            consumer_count: 0,
            produce_count: self.messages,
            produce_duration: None,
            produced_before: 0,
            goal: ConsumeGoal::AllProduced,
        };
        let consume = |goal| PhaseSpec {
            phase: Phase::Consume,
            producer_count: 0,
            consumer_count: self.consumers,
            produce_count: 0,
            goal,
            ..enqueue.clone()
        };
        let mixed = |queue| PhaseSpec {
            phase: Phase::Mixed,
            queue,
            consumer_count: self.consumers,
            produce_count: if self.duration_s.is_some() { u64::MAX } else { self.messages },
            produce_duration: self.duration_s.map(Duration::from_secs_f64),
            ..enqueue.clone()
        };
        match self.phase {
            PhaseChoice::Enqueue => vec![enqueue.clone()],
            PhaseChoice::Consume => vec![consume(ConsumeGoal::Drain { count_max: self.messages })],
            PhaseChoice::Mixed => vec![mixed(self.queue.clone())],
            PhaseChoice::All => {
                let consume = PhaseSpec {
                    // Set from the enqueue phase's actual count before it runs.
                    produced_before: self.messages,
                    ..consume(ConsumeGoal::AllProduced)
                };
                vec![enqueue.clone(), consume, mixed(format!("{}-mixed", self.queue))]
            }
        }
    }

    /// Which verification checks apply: a run can only demand that everything it enqueued was
    /// consumed if it also consumed, and only reject foreign ids if it consumed its own queue.
    fn expectations(&self) -> Expectations {
        let consumes_own = matches!(self.phase, PhaseChoice::Mixed | PhaseChoice::All);
        Expectations { all_consumed: consumes_own, only_own: consumes_own }
    }
}

/// A queue name no earlier run used: `bench-<pid>-<epoch ms>`.
fn unique_queue_name() -> String {
    format!("bench-{}-{}", std::process::id(), crate::clock::now_ms())
}

/// Why a bench run failed.
#[derive(Debug)]
pub enum BenchError {
    /// The flags do not make a valid run.
    Usage(String),
    /// A local file or process operation failed; `context` says which.
    Io { context: String, source: std::io::Error },
    /// The spawned server failed to start or died; the text quotes its stderr.
    Server(String),
    /// A request got no response (connection refused, reset, timeout).
    Http { request: &'static str, source: client::ClientError },
    /// A request got a status the contract does not allow here.
    Status { request: &'static str, status: u16, body: String },
    /// A response's body did not have the contract's shape.
    Protocol { request: &'static str, message: String },
    /// A worker task panicked or was cancelled.
    Worker(String),
    /// The server lost or duplicated messages; the text gives the counts.
    Verification(String),
}

impl BenchError {
    fn io(context: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io { context: context.into(), source }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(text) => write!(f, "bench: {text}"),
            BenchError::Io { context, source } => write!(f, "bench: {context}: {source}"),
            BenchError::Server(text) => write!(f, "bench: {text}"),
            BenchError::Http { request, source } => write!(f, "bench: {request} request: {source}"),
            BenchError::Status { request, status, body } => {
                write!(f, "bench: {request} request answered {status}: {body}")
            }
            BenchError::Protocol { request, message } => {
                write!(f, "bench: {request} reply breaks the API contract: {message}")
            }
            BenchError::Worker(text) => write!(f, "bench: a worker failed: {text}"),
            BenchError::Verification(text) => {
                write!(f, "bench: the server lost or duplicated messages: {text}")
            }
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Io { source, .. } => Some(source),
            BenchError::Http { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Runs `outboxd bench`: prints the report (or the fsync baseline) to stdout.
///
/// Fails when the flags are invalid, a request breaks the contract, or the server lost or
/// duplicated a message; in the last case the report is printed first.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let temp_dir = args.temp_dir.clone().unwrap_or_else(std::env::temp_dir);
    if args.fsync_baseline {
        let duration = args
            .duration_s
            .filter(|seconds| *seconds > 0.0 && seconds.is_finite())
            .map_or(FSYNC_BASELINE_DURATION_DEFAULT, Duration::from_secs_f64);
        let baseline = fsync::measure(&temp_dir, duration)?;
        print_output(args.json, &baseline, || baseline.to_table());
        return Ok(());
    }
    let plan = Plan::from_args(&args)?;
    let mut server =
        if args.spawn { Some(SpawnedServer::start(&temp_dir, &args.server_args)?) } else { None };
    let authority = match &server {
        Some(server) => server.authority.clone(),
        None => authority_of(&args.url)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outboxd-bench")
        .build()
        .map_err(|source| BenchError::io("starting the runtime", source))?;
    let server_pid = server.as_ref().map(SpawnedServer::pid);
    let result = runtime.block_on(run_phases(&authority, &plan, server_pid));
    let (phases, ledger) = match result {
        Ok(done) => done,
        Err(error) => return Err(with_server_context(error, server.as_mut())),
    };
    let verification = ledger.verify(plan.expectations());
    let report = Report {
        server_address: authority,
        spawned: server.is_some(),
        phases,
        verification: verification.clone(),
        server: server.as_ref().map(SpawnedServer::stats),
        bench_cpu_s: spawn::process_cpu_s("/proc/self/stat"),
        plan,
    };
    if let Some(server) = server.as_mut() {
        server.stop();
    }
    print_output(args.json, &report, || report.to_table());
    if verification.ok {
        Ok(())
    } else {
        Err(BenchError::Verification(verification.summary()))
    }
}

/// Runs the plan's phases in order, feeding every id into one ledger; measures the CPU time the
/// bench and (when its pid is known) the server spent on each phase.
async fn run_phases(
    authority: &str,
    plan: &Plan,
    server_pid: Option<u32>,
) -> Result<(Vec<report::PhaseReport>, Ledger), BenchError> {
    let server_stat = server_pid.map(|pid| format!("/proc/{pid}/stat"));
    let server_cpu_s = || server_stat.as_deref().and_then(spawn::process_cpu_s);
    let bench_cpu_s = || spawn::process_cpu_s("/proc/self/stat");
    let mut ledger = Ledger::default();
    let mut reports = Vec::new();
    let mut enqueued_count = 0;
    for mut spec in plan.phase_specs() {
        if spec.phase == Phase::Consume && spec.goal == ConsumeGoal::AllProduced {
            spec.produced_before = enqueued_count;
        }
        let cpu_before = (server_cpu_s(), bench_cpu_s());
        let mut outcome = phase::run(authority, plan, spec).await?;
        let used = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
        outcome.report.server_cpu_s = used(cpu_before.0, server_cpu_s());
        outcome.report.bench_cpu_s = used(cpu_before.1, bench_cpu_s());
        outcome.report.server_peak_rss_bytes = server_pid.and_then(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            spawn::proc_status_bytes(&status, "VmHWM")
        });
        enqueued_count = outcome.enqueued_ids.len() as u64;
        ledger.record_enqueued(&outcome.enqueued_ids);
        ledger.record_leased(&outcome.leased_ids);
        ledger.record_acked(&outcome.acked_ids);
        reports.push(outcome.report);
    }
    Ok((reports, ledger))
}

/// `host:port` of an `http://host:port[/]` URL.
fn authority_of(url: &str) -> Result<String, BenchError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        BenchError::Usage(format!("--url {url:?} must start with http:// (TLS is not supported)"))
    })?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
        return Err(BenchError::Usage(format!(
            "--url {url:?} must be http://host:port with no path"
        )));
    }
    Ok(authority.to_string())
}

/// Adds the spawned server's fate to an error: a failed request usually means it died.
fn with_server_context(error: BenchError, server: Option<&mut SpawnedServer>) -> BenchError {
    let Some(server) = server else {
        return error;
    };
    let exit = server.exit_status().unwrap_or_else(|| "still running".into());
    BenchError::Server(format!(
        "{error}\nspawned server: {exit}; its stderr ends with:\n{}",
        server.stderr_tail()
    ))
}

/// Prints `value` as one JSON line, or `table()` as text.
fn print_output<T: Serialize>(json: bool, value: &T, table: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string(value) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("bench: could not encode the report: {error}"),
        }
    } else {
        print!("{}", table());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(flags: &[&str]) -> Result<Plan, BenchError> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .map_err(|error| BenchError::Usage(error.to_string()))?;
        Plan::from_args(&cli.args)
    }

    #[test]
    fn all_runs_enqueue_consume_then_mixed_on_a_second_queue() {
        let plan = plan(&["--queue", "q", "--messages", "10"]).expect("valid");
        let specs = plan.phase_specs();
        let phases: Vec<_> = specs.iter().map(|spec| spec.phase).collect();
        assert_eq!(phases, [Phase::Enqueue, Phase::Consume, Phase::Mixed]);
        assert_eq!(specs[1].queue, "q");
        assert_eq!(specs[2].queue, "q-mixed");
        assert_eq!(specs[1].goal, ConsumeGoal::AllProduced);
        assert!(plan.expectations().all_consumed);
    }

    #[test]
    fn consume_alone_drains_and_does_not_demand_everything_was_consumed() {
        let plan = plan(&["--phase", "consume", "--queue", "q", "--messages", "7"]).expect("valid");
        assert_eq!(plan.phase_specs()[0].goal, ConsumeGoal::Drain { count_max: 7 });
        assert!(!plan.expectations().all_consumed);
    }

    #[test]
    fn invalid_flags_are_usage_errors() {
        for flags in [
            &["--messages", "0"][..],
            &["--body-bytes", "1"],
            &["--producers", "0"],
            &["--batch", "10001"],
            &["--duration-s", "0"],
            &["--queue", "bad/name"],
            &["--wait-ms", "30001"],
            &["--lease-ms", "0"],
        ] {
            assert!(matches!(plan(flags), Err(BenchError::Usage(_))), "{flags:?}");
        }
    }

    #[test]
    fn urls_must_be_plain_http_authorities() {
        assert_eq!(authority_of("http://127.0.0.1:7070").ok().as_deref(), Some("127.0.0.1:7070"));
        assert_eq!(authority_of("http://127.0.0.1:7070/").ok().as_deref(), Some("127.0.0.1:7070"));
        for bad in ["https://x:1", "http://x:1/v1", "127.0.0.1:7070", "http://"] {
            assert!(authority_of(bad).is_err(), "{bad}");
        }
    }
}
