//! One phase of a bench run: connect the workers, run them to their goal, and time it.
//!
//! A phase is a set of producer and consumer tasks sharing one [`Shared`]: the messages producers
//! may still claim, the counts of messages enqueued and acked, and a stop signal. Producers stop
//! when the count (or the deadline) is used up; consumers stop when the goal is met, which is
//! signalled to all of them at once so that none sits out a long-poll after the last ack.
//! Connections are opened before the clock starts, so setup is not timed.

use super::client::Connection;
use super::report::{Latencies, PhaseReport};
use super::workers::{self, WorkerOutcome};
use super::{BenchError, Phase, Plan};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// When the consumers of a phase are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeGoal {
    /// Every message the producers enqueued (in this phase, or before it) has been acked.
    AllProduced,
    /// `count_max` messages were acked, or a lease came back empty: the bench drains a queue that
    /// it did not fill and so cannot know what it holds.
    Drain { count_max: u64 },
}

/// What one phase does.
#[derive(Clone, Debug)]
pub struct PhaseSpec {
    pub phase: Phase,
    pub queue: String,
    pub producer_count: u32,
    pub consumer_count: u32,
    /// Messages the producers enqueue (`u64::MAX` with a deadline).
    pub produce_count: u64,
    /// When producers stop claiming batches, if they run for a duration instead of a count.
    pub produce_duration: Option<Duration>,
    /// Messages enqueued before the phase that its consumers must ack (the enqueue phase's count
    /// for the consume phase that follows it).
    pub produced_before: u64,
    pub goal: ConsumeGoal,
}

/// What a phase produced: its report and every id it saw, for the ledger.
pub struct PhaseOutcome {
    pub report: PhaseReport,
    pub enqueued_ids: Vec<u64>,
    pub leased_ids: Vec<u64>,
    pub acked_ids: Vec<u64>,
}

/// The state a phase's workers share.
pub struct Shared {
    pub plan: Plan,
    pub enqueue_path: String,
    pub lease_path: String,
    pub ack_path: String,
    /// Producers of the phase (they share `plan.rate`).
    producer_count: u32,
    /// Messages producers may still claim.
    unclaimed: AtomicU64,
    produce_deadline: Option<Instant>,
    produced: AtomicU64,
    producers_done: AtomicBool,
    acked: AtomicU64,
    goal: ConsumeGoal,
    started: Instant,
    /// Microseconds from `started` to the last counted progress: an enqueue in the enqueue phase,
    /// an ack otherwise. It ends the phase's elapsed time and drives stall detection.
    last_progress_us: AtomicU64,
    /// Whether progress is counted in enqueued messages (enqueue phase) or acked ones.
    progress_counts_enqueues: bool,
    /// Set when the consumers gave up waiting for messages that never came.
    stalled: AtomicBool,
    /// Flips to true when every worker must stop: the goal was met, or a worker failed.
    stop: watch::Sender<bool>,
    progress: ProgressBar,
}

impl Shared {
    /// The producers of the phase (at least 1).
    pub fn producer_count(&self) -> u32 {
        self.producer_count
    }

    /// The number of messages to put in the next enqueue (0: stop producing).
    pub fn claim(&self, batch: u32) -> u32 {
        if *self.stop.borrow() || self.produce_deadline.is_some_and(|end| Instant::now() >= end) {
            return 0;
        }
        let batch = u64::from(batch);
        let claimed = self
            .unclaimed
            .fetch_update(SeqCst, SeqCst, |left| (left > 0).then(|| left - left.min(batch)))
            .map_or(0, |left| left.min(batch));
        u32::try_from(claimed).expect("a claim is at most one batch")
    }

    /// Counts messages the server accepted.
    pub fn record_enqueued(&self, count: u64) {
        self.produced.fetch_add(count, SeqCst);
        if self.progress_counts_enqueues {
            self.touch();
            self.progress.inc(count);
        }
    }

    /// Counts messages whose ack the server confirmed, and stops the phase when the goal is met.
    pub fn record_acked(&self, count: u64) {
        let acked = self.acked.fetch_add(count, SeqCst) + count;
        if self.progress_counts_enqueues {
            return;
        }
        self.touch();
        self.progress.inc(count);
        let met = match self.goal {
            ConsumeGoal::AllProduced => {
                self.producers_done.load(SeqCst) && acked >= self.produced.load(SeqCst)
            }
            ConsumeGoal::Drain { count_max } => acked >= count_max,
        };
        if met {
            self.stop_all();
        }
    }

    /// Decides, after an empty lease, whether this consumer should stop.
    ///
    /// When draining, an empty lease means the queue is empty. Otherwise the consumer keeps waiting
    /// while producers run, and after they finished it waits `stall_timeout` since the last ack:
    /// a message that does not come back by then is reported missing rather than waited for forever.
    pub fn stop_after_empty_lease(&self) -> bool {
        match self.goal {
            ConsumeGoal::Drain { .. } => true,
            ConsumeGoal::AllProduced => {
                if !self.producers_done.load(SeqCst) {
                    return false;
                }
                let idle = self
                    .started
                    .elapsed()
                    .saturating_sub(Duration::from_micros(self.last_progress_us.load(SeqCst)));
                if idle < self.plan.stall_timeout() {
                    return false;
                }
                self.stalled.store(true, SeqCst);
                self.stop_all();
                true
            }
        }
    }

    /// A receiver of the stop signal.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Tells every worker to stop.
    pub fn stop_all(&self) {
        self.stop.send_replace(true);
    }

    fn producers_finished(&self) {
        self.producers_done.store(true, SeqCst);
        if self.goal == ConsumeGoal::AllProduced
            && self.acked.load(SeqCst) >= self.produced.load(SeqCst)
        {
            self.stop_all();
        }
    }

    fn touch(&self) {
        let elapsed_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_progress_us.fetch_max(elapsed_us, SeqCst);
    }
}

/// Runs one phase against the server at `authority`.
pub async fn run(
    authority: &str,
    plan: &Plan,
    spec: PhaseSpec,
) -> Result<PhaseOutcome, BenchError> {
    let timeout = plan.request_timeout();
    let mut producer_connections = Vec::new();
    for _ in 0..spec.producer_count {
        producer_connections.push(connect(authority, timeout, plan).await?);
    }
    let mut consumer_connections = Vec::new();
    for _ in 0..spec.consumer_count {
        consumer_connections.push(connect(authority, timeout, plan).await?);
    }
    let shared = Arc::new(new_shared(plan, &spec));
    let mut producers = JoinSet::new();
    for connection in producer_connections {
        producers.spawn(workers::produce(connection, shared.clone()));
    }
    let mut consumers = JoinSet::new();
    for connection in consumer_connections {
        consumers.spawn(workers::consume(connection, shared.clone()));
    }
    let mut merged = WorkerOutcome::default();
    collect(&mut producers, &shared, &mut merged).await?;
    shared.producers_finished();
    collect(&mut consumers, &shared, &mut merged).await?;
    shared.progress.finish_and_clear();
    Ok(outcome(&spec, &shared, merged))
}

async fn connect(
    authority: &str,
    timeout: Duration,
    plan: &Plan,
) -> Result<Connection, BenchError> {
    Connection::connect(authority, timeout, plan.token.as_deref())
        .await
        .map_err(|source| BenchError::Http { request: "connect", source })
}

fn new_shared(plan: &Plan, spec: &PhaseSpec) -> Shared {
    let progress_counts_enqueues = spec.phase == Phase::Enqueue;
    let progress_length = match (progress_counts_enqueues, spec.goal) {
        (true, _) => Some(spec.produce_count),
        (false, ConsumeGoal::Drain { count_max }) => Some(count_max),
        (false, ConsumeGoal::AllProduced) => spec
            .produce_duration
            .is_none()
            .then(|| spec.produced_before.saturating_add(spec.produce_count)),
    };
    let queue = &spec.queue;
    Shared {
        plan: plan.clone(),
        enqueue_path: format!("/v1/queues/{queue}/messages"),
        lease_path: format!("/v1/queues/{queue}/lease"),
        ack_path: format!("/v1/queues/{queue}/ack"),
        producer_count: spec.producer_count.max(1),
        unclaimed: AtomicU64::new(spec.produce_count),
        produce_deadline: spec.produce_duration.map(|duration| Instant::now() + duration),
        produced: AtomicU64::new(spec.produced_before),
        producers_done: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        goal: spec.goal,
        started: Instant::now(),
        last_progress_us: AtomicU64::new(0),
        progress_counts_enqueues,
        stalled: AtomicBool::new(false),
        stop: watch::Sender::new(false),
        progress: progress_bar(spec.phase, progress_length),
    }
}

/// Awaits every task of `set`, merging their outcomes; on the first failure stops all workers.
async fn collect(
    set: &mut JoinSet<Result<WorkerOutcome, BenchError>>,
    shared: &Shared,
    merged: &mut WorkerOutcome,
) -> Result<(), BenchError> {
    while let Some(joined) = set.join_next().await {
        let result = joined.unwrap_or_else(|error| Err(BenchError::Worker(error.to_string())));
        match result {
            Ok(outcome) => merged.absorb(outcome),
            Err(error) => {
                shared.stop_all();
                shared.progress.abandon();
                return Err(error);
            }
        }
    }
    Ok(())
}

fn outcome(spec: &PhaseSpec, shared: &Shared, merged: WorkerOutcome) -> PhaseOutcome {
    let messages = if shared.progress_counts_enqueues {
        merged.enqueued_ids.len() as u64
    } else {
        merged.acked_ids.len() as u64
    };
    let last_progress = Duration::from_micros(shared.last_progress_us.load(SeqCst));
    let elapsed_s = if last_progress.is_zero() {
        shared.started.elapsed().as_secs_f64()
    } else {
        last_progress.as_secs_f64()
    };
    let latencies: &Latencies = &merged.latencies;
    let report = PhaseReport {
        phase: spec.phase.name(),
        queue: spec.queue.clone(),
        messages,
        elapsed_s,
        messages_per_s: messages as f64 / elapsed_s.max(f64::MIN_POSITIVE),
        requests: latencies.summaries(),
        empty_leases: merged.empty_lease_count,
        overloaded_retries: merged.overloaded_retry_count,
        acks_refused: merged.ack_refused_count,
        server_cpu_s: None,
        bench_cpu_s: None,
        server_peak_rss_bytes: None,
        stalled: shared.stalled.load(SeqCst),
    };
    PhaseOutcome {
        report,
        enqueued_ids: merged.enqueued_ids,
        leased_ids: merged.leased_ids,
        acked_ids: merged.acked_ids,
    }
}

/// A progress bar on stderr when it is a terminal; a hidden one otherwise (logs and pipes stay clean).
fn progress_bar(phase: Phase, length: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match length {
        Some(length) => (
            ProgressBar::new(length),
            "{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{prefix:>8} [{elapsed_precise}] {spinner} {pos} messages ({per_sec})",
        ),
    };
    let style =
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(phase.name());
    bar
}
