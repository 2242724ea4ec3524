//! Simulation: the broker behaves like a plain in-memory model under random operations,
//! checkpoints and restarts, in virtual time, and the state rebuilt from the disk always equals
//! the live state.
//!
//! Property: for every seed, each operation of `outboxd::queue::Broker` (enqueue with idempotency
//! keys, lease, ack, nack, extend, pause and resume, timer expiry, a person's delete, retry,
//! reschedule and edit, redrive, purge, queue settings, the retention sweep) returns exactly what a
//! simple model of the documented semantics returns (docs/api.md, `src/queue/lease.rs`,
//! `src/queue/control.rs`): the same ids and duplicate flags, the same idempotency conflicts, the
//! same leased ids in the same order (priority, then id), the same attempt numbers and deadlines,
//! the same results down to which refusal, and the same notices for the event stream. After every
//! step the per-queue stats, the queues woken for long polls, the earliest armed timer, and the
//! record, content and history of every message the step touched, as a reader sees them (the
//! broker's, else the catalog's), agree with the model; every few steps every message and every
//! listing does (dead and delivered messages through `Catalog::list_terminal` merged with the
//! broker's `settled_of` view, as the HTTP layer lists them). After every checkpoint the catalog
//! alone holds exactly the model as it was when the checkpoint began: every page, the indexes over
//! them, the histories kept, the queue records, the manifest (next id, dead and delivered counts,
//! the content bytes the log still holds), the idempotency keys. Checkpoints are written at once,
//! or stay in flight while the run goes on (as the storage thread's do while the writer works),
//! or fail (their changes must reach the next one), or are lost in a restart.
//!
//! Restarts: at random points the harness rebuilds a broker from the disk with the server's own
//! recovery (the catalog's last checkpoint, then every log frame after it, decoded by the real
//! frame codec) and checks that it shows exactly what the live broker shows (`DiskModel::compare`:
//! every id's record and history, queue stats, next id, idempotency keys within their window,
//! listings, segment usage, timers), then carries on with the rebuilt broker. Nothing observable
//! may change, except that keys past their 24 h window are forgotten. Besides the model, the
//! harness checks invariants directly: a message never has two lease tokens that hold, attempts
//! only grow (unless a person resets them), nothing acked is leased again, ids are unique and
//! increasing, a message is leased again only after its previous delivery ended (restarts
//! included), the retention sweep removes exactly the candidates whose retention passed, and at
//! the end of a run every retention that ended has been carried out by the sweeps.
//!
//! Method: a seeded SplitMix64 draws weighted operations over 2 or 3 queue names: batches of 1 to
//! 20 messages with priorities in -1..=1 (so ties happen), delivery now, after a delay or at a past
//! or future time, 1 to 5 attempts, and an idempotency key from a pool of three with a request hash
//! that usually repeats; leases of random size and duration (or the default); acks, nacks and
//! extends with tokens that are current, stale, forged, malformed or from another queue; a person's
//! actions, mostly on dead and delivered messages the broker may no longer hold (the action then
//! carries the catalog's record, as the HTTP layer's does); queue settings from presets (retention
//! 0, short everything, long retention); clock moves from 0 ms to 30 h (crossing the idempotency
//! window), often exactly onto a deadline, a retention's end or 1 ms before it, with or without
//! `expire_due`; checkpoints (at once, in flight, failing), sweeps and restarts. Each seed also
//! draws the broker's settings (attempts, backoff, default lease, retention of delivered
//! messages, history length). The model
//! (`simulation/model.rs`) is a list of messages that every operation scans: no timer wheel, no
//! indexes, no disk. Backoff jitter is 0, so retry times are exact. The broker is driven the way
//! the storage thread drives it: each request's contents are placed in a log frame first and its
//! ops end the frame (`store::model::DiskModel`: the real frame codec, the real catalog over a
//! `BTreeMap`, the real recovery). The run counts how often each interesting outcome happened and
//! fails if one never did, so the simulation cannot silently stop exercising it.
//!
//! Runs `OUTBOXD_SIM_SEEDS` seeds (default 2000) of 300 steps on every core;
//! `OUTBOXD_SIM_SEED=<seed>` replays one seed. A failure prints the seed, the step, the last
//! operations and the replay command. It does not cover the HTTP layer, the log's files, sled or
//! the checkpoint writer's thread.

#[path = "simulation/model.rs"]
mod model;
#[path = "simulation/operations.rs"]
mod operations;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use outboxd::limits::{CONTROL_CHUNK_COUNT_MAX, IDEMPOTENCY_WINDOW_MS};
use outboxd::queue::retry::RetryPolicy;
use outboxd::queue::{
    page_of, Broker, BrokerConfig, ControlError, Edit, ExtendItem, FailOutcome, Grant,
    IdempotencyKey, MessageId, MessageMeta, MessageState, NackItem, NewMessage, Op, QueueId,
    QueueRecord, Refusal, SegmentUsage, TerminalCounts, ALL_STATES,
};
use outboxd::random::SplitMix64;
use outboxd::store::catalog::CheckpointJob;
use outboxd::store::keys;
use outboxd::store::model::DiskModel;

use model::{without_nonce, ActionOutcome, Model, Summary};
use operations::{Action, EditSpec, MessageSpec, NackSpec, Operation, Rng, SimToken, TokenKind};

/// Seeds run when `OUTBOXD_SIM_SEEDS` is not set.
const SEED_COUNT_DEFAULT: u64 = 2000;
/// Operations per seed (the final drain of retention and a last restart follow them).
const STEP_COUNT: usize = 300;
/// Operations shown when a seed fails.
const LOG_OPERATION_COUNT: usize = 20;
/// Every this many steps, every message and listing is compared, not only the messages the step
/// touched (and at every restart).
const FULL_CHECK_INTERVAL_STEPS: usize = 60;
/// Issued tokens kept for stale replays; older ones are dropped at random.
const ISSUED_TOKEN_COUNT_MAX: usize = 256;
/// Below this many seeds, a run is a replay or a smoke run and need not reach every outcome.
const COVERAGE_SEED_COUNT_MIN: u64 = 200;
/// Catalog pages one sweep reads: small, so that the notes left for the next sweep are exercised.
const SWEEP_PAGE_LIMIT: usize = 2;
/// Checkpoint-and-sweep rounds the final drain may take before it counts as stuck.
const DRAIN_ROUND_COUNT_MAX: usize = 64;

/// The virtual clock's start, a realistic epoch time, so that a `deliver_at` in the past is meaningful.
const START_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 60 * 60 * 1000;

const QUEUE_NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

#[test]
fn broker_matches_the_model_and_its_disk_under_random_operations_and_restarts() {
    if let Some(seed) = env_u64("OUTBOXD_SIM_SEED") {
        let coverage = run_seeds(&[seed]);
        eprintln!("seed {seed} passed: {coverage:?}");
        return;
    }
    let seed_count = env_u64("OUTBOXD_SIM_SEEDS").unwrap_or(SEED_COUNT_DEFAULT);
    let seeds: Vec<u64> = (0..seed_count).collect();
    let started = std::time::Instant::now();
    let coverage = run_seeds(&seeds);
    eprintln!("{seed_count} seeds × {STEP_COUNT} steps in {:?}: {coverage:?}", started.elapsed());
    if seed_count >= COVERAGE_SEED_COUNT_MIN {
        let missing = coverage.missing();
        assert!(
            missing.is_empty(),
            "the simulation never reached {missing:?}: its operations no longer exercise the broker"
        );
    }
}

/// Reads a numeric environment override; a malformed value is a mistake worth stopping for.
fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    match text.trim().parse() {
        Ok(value) => Some(value),
        Err(error) => panic!("{name}={text:?} is not a non-negative integer: {error}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Running seeds
// ---------------------------------------------------------------------------------------------------

/// Runs every seed on all cores, stops soon after a failure, and panics with the report of the
/// lowest seed that failed; returns how often each interesting outcome happened.
fn run_seeds(seeds: &[u64]) -> Coverage {
    if seeds.is_empty() {
        return Coverage::default();
    }
    let next_index = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker_count =
        std::thread::available_parallelism().map_or(1, |count| count.get()).clamp(1, seeds.len());
    let results: Vec<(Coverage, Vec<(u64, String)>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..worker_count)
            .map(|_| scope.spawn(|| run_worker(seeds, &next_index, &failed)))
            .collect();
        let joined = workers.into_iter().map(|worker| worker.join());
        joined.map(|result| result.expect("workers catch every panic of a seed")).collect()
    });
    let mut total = Coverage::default();
    let mut failures = Vec::new();
    for (coverage, worker_failures) in results {
        total.add(&coverage);
        failures.extend(worker_failures);
    }
    failures.sort_by_key(|(seed, _)| *seed);
    if let Some((_, report)) = failures.first() {
        panic!("{report}");
    }
    total
}

/// One worker: takes seeds until none are left or one failed.
fn run_worker(
    seeds: &[u64],
    next_index: &AtomicUsize,
    failed: &AtomicBool,
) -> (Coverage, Vec<(u64, String)>) {
    let mut coverage = Coverage::default();
    let mut failures = Vec::new();
    while !failed.load(Ordering::Relaxed) {
        let Some(&seed) = seeds.get(next_index.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        match run_seed(seed) {
            Ok(seed_coverage) => coverage.add(&seed_coverage),
            Err(report) => {
                failed.store(true, Ordering::Relaxed);
                failures.push((seed, report));
            }
        }
    }
    (coverage, failures)
}

/// Runs one seed; a divergence or a panic (an assertion in the broker) becomes the failure report.
fn run_seed(seed: u64) -> Result<Coverage, String> {
    let mut sim = Sim::new(seed);
    match panic::catch_unwind(AssertUnwindSafe(|| sim.run())) {
        Ok(Ok(())) => Ok(sim.coverage),
        Ok(Err(divergence)) => Err(sim.report(&divergence)),
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a panic without text".to_string());
            Err(sim.report(&format!("panic: {text}")))
        }
    }
}

/// Declares `Coverage` with one counter per field, the list of them and their sum.
macro_rules! coverage {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// How often the interesting outcomes happened, so that a run proves it exercised them.
        #[derive(Clone, Copy, Debug, Default)]
        struct Coverage {
            $($(#[$doc])* $field: u64,)*
        }

        impl Coverage {
            fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field)),*]
            }

            fn add(&mut self, other: &Coverage) {
                $(self.$field += other.$field;)*
            }
        }
    };
}

coverage! {
    granted,
    acked,
    extended,
    retrying,
    dead,
    lease_expired,
    /// `LeaseExpired` for a lease past its deadline whose timer had not fired yet.
    lease_expired_before_its_timer,
    not_active,
    unknown,
    duplicate,
    conflict,
    leases_expired_by_timer,
    keys_forgotten,
    swept,
    /// Dead messages removed by their queue's dead retention.
    swept_dead,
    paused_leases,
    checkpoints,
    /// Checkpoints written after other steps ran while they were in flight.
    checkpoints_held,
    /// Checkpoints whose catalog write failed (their changes went into the next one).
    checkpoints_failed,
    /// Checkpoints in flight when a restart came (recovery started from the one before).
    checkpoints_lost,
    restarts,
    leases_held_across_restart,
    /// Restarts that replayed log frames written after the last checkpoint.
    restarts_replaying,
    deleted,
    retried,
    rescheduled,
    edited,
    /// A person's actions refused (not found, leased, wrong state).
    refused_actions,
    /// Actions that carried the catalog's record of a message the broker no longer held.
    actions_on_stored_records,
    redriven,
    purged,
    configured,
    /// Ready messages moved out of memory (over the budget).
    evicted,
    /// Cold catalog pages read back before a lease or a purge.
    cold_loaded,
}

impl Coverage {
    fn missing(&self) -> Vec<&'static str> {
        let fields = self.fields();
        fields.iter().filter(|(_, count)| *count == 0).map(|(name, _)| *name).collect()
    }

    fn count_refusal(&mut self, refusal: &Refusal) {
        match refusal {
            Refusal::LeaseExpired => self.lease_expired += 1,
            Refusal::NotActive(_) => self.not_active += 1,
            Refusal::Unknown => self.unknown += 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------------

/// A checkpoint in flight: the job, and the model and step when it began.
struct PendingCheckpoint {
    job: CheckpointJob,
    model: Model,
    step: usize,
    /// Frames logged before it began (it makes them unnecessary to replay).
    frame_count: u64,
}

/// One seed's run: the broker, the disk its ops go to, the model, and what the harness remembers
/// to check invariants the model cannot see (tokens and their nonces).
struct Sim {
    seed: u64,
    rng: Rng,
    queue_names: &'static [&'static str],
    config: BrokerConfig,
    broker: Broker,
    disk: DiskModel,
    model: Model,
    /// The ops of the request being run, logged as one frame per request.
    ops: Vec<Op>,
    /// Messages the current operation's ops touched.
    touched: BTreeSet<u64>,
    /// Every token issued, per message id, oldest first.
    tokens_by_id: HashMap<u64, Vec<SimToken>>,
    /// The newest token of each message that may be leased, for drawing current tokens.
    newest: BTreeMap<u64, SimToken>,
    /// A sample of issued tokens, for drawing stale ones.
    issued: Vec<SimToken>,
    /// Messages the broker acknowledged as acked: they must never be leased again.
    acked: HashSet<u64>,
    /// When each message's latest delivery ended at the latest: its deadline, or the time of its nack.
    delivery_over_at_ms: HashMap<u64, u64>,
    /// The attempt count of each message's latest delivery (0 after a person reset it).
    last_attempt: HashMap<u64, u32>,
    /// The highest id handed out so far.
    highest_id: u64,
    /// Frames logged since the last durable checkpoint (a restart replays them).
    frames_since_checkpoint: u64,
    /// A checkpoint handed to the writer and not finished yet.
    pending_checkpoint: Option<PendingCheckpoint>,
    /// Retention notes the last sweep found due.
    last_sweep_note_count: usize,
    recent: VecDeque<(usize, Operation)>,
    step: usize,
    coverage: Coverage,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(SplitMix64(seed));
        let queue_names = &QUEUE_NAMES[..rng.between(2, 3) as usize];
        let config = BrokerConfig {
            attempt_count_max: rng.between(1, 5) as u32,
            retry: RetryPolicy {
                initial_ms: rng.pick(&[1, 10, 100, 1000]),
                multiplier: rng.pick(&[1.0, 2.0, 3.0]),
                max_ms: rng.pick(&[50, 1000, 5000, 60_000]),
                jitter: 0.0,
            },
            lease_ms: rng.pick(&[50, 1000, 30_000]),
            retention_ms: rng.pick(&[0, 1000, HOUR_MS, 24 * HOUR_MS]),
            history_keep_count: rng.between(1, 3) as u32,
            // A budget this small sends most ready messages to the catalog and back.
            ready_resident_max: rng.pick(&[3, 40, 1_000_000]),
        };
        let broker_seed = rng.next_u64();
        Sim {
            seed,
            rng,
            queue_names,
            config,
            broker: Broker::new(config, START_MS, broker_seed),
            disk: DiskModel::new(),
            model: Model::new(config, START_MS),
            ops: Vec::new(),
            touched: BTreeSet::new(),
            tokens_by_id: HashMap::new(),
            newest: BTreeMap::new(),
            issued: Vec::new(),
            acked: HashSet::new(),
            delivery_over_at_ms: HashMap::new(),
            last_attempt: HashMap::new(),
            highest_id: 0,
            frames_since_checkpoint: 0,
            pending_checkpoint: None,
            last_sweep_note_count: 0,
            recent: VecDeque::new(),
            step: 0,
            coverage: Coverage::default(),
        }
    }

    /// Every step, then the drain of retention and a last restart, so that every run ends with a
    /// full comparison.
    fn run(&mut self) -> Result<(), String> {
        for step in 1..=STEP_COUNT {
            self.step = step;
            let operation = self.next_operation();
            self.remember(&operation);
            self.execute(&operation)?;
        }
        self.step = STEP_COUNT + 1;
        self.drain_retention()?;
        let operation = Operation::Restart { seed: self.rng.next_u64(), checkpoint: true };
        self.remember(&operation);
        self.execute(&operation)?;
        self.check_listing_pages()
    }

    /// Every retention that ended by now is carried out by the sweeps: moves the clock past the
    /// retention notes' second, then checkpoints and sweeps until no note is due.
    fn drain_retention(&mut self) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let overdue: Vec<u64> = (self.model.iter())
            .filter(|(_, message)| self.model.retention_passed(&message.meta))
            .map(|(id, _)| id)
            .collect();
        if self.pending_checkpoint.is_some() {
            self.remember(&Operation::Checkpoint);
            self.execute(&Operation::Checkpoint)?;
        }
        let drained_at_ms = now_ms.div_ceil(1000) * 1000 + 1000;
        let advance = Operation::Advance { step_ms: drained_at_ms - now_ms, expire: true };
        self.remember(&advance);
        self.execute(&advance)?;
        for round in 0..DRAIN_ROUND_COUNT_MAX {
            self.step = STEP_COUNT + 1 + round;
            for operation in [Operation::Checkpoint, Operation::Sweep] {
                self.remember(&operation);
                self.execute(&operation)?;
            }
            if self.last_sweep_note_count == 0 {
                let left: Vec<u64> =
                    overdue.into_iter().filter(|id| self.model.get(*id).is_some()).collect();
                if !left.is_empty() {
                    return Err(format!(
                        "the retention of {left:?} ended by {now_ms}, but no sweep removed them"
                    ));
                }
                return Ok(());
            }
        }
        Err(format!("retention notes were still due after {DRAIN_ROUND_COUNT_MAX} sweeps"))
    }

    fn remember(&mut self, operation: &Operation) {
        if self.recent.len() == LOG_OPERATION_COUNT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.step, operation.clone()));
    }

    /// The failure message: seed, step, settings, the last operations and how to replay.
    fn report(&self, divergence: &str) -> String {
        let mut text = format!(
            "simulation failed: seed {}, step {} of {STEP_COUNT}, clock at start + {} ms\n  \
             {divergence}\nqueues {:?}, {:?}\nlast operations, oldest first:\n",
            self.seed,
            self.step,
            self.model.now_ms - START_MS,
            self.queue_names,
            self.config
        );
        for (step, operation) in &self.recent {
            text.push_str(&format!("  step {step}: {operation:?}\n"));
        }
        text.push_str(&format!(
            "replay: OUTBOXD_SIM_SEED={} cargo test --features testing --test simulation\n",
            self.seed
        ));
        text
    }

    /// Runs one operation on the broker and the model, logs its ops as the storage thread does,
    /// and checks.
    fn execute(&mut self, operation: &Operation) -> Result<(), String> {
        self.touched = token_ids(operation).into_iter().collect();
        match operation {
            Operation::Enqueue { queue, messages, idempotency } => {
                self.enqueue(queue, messages, idempotency)?
            }
            Operation::Lease { queue, count_max, lease_ms } => {
                self.lease(queue, *count_max, *lease_ms)?
            }
            Operation::Ack { queue, tokens } => self.ack(queue, tokens)?,
            Operation::Nack { queue, items } => self.nack(queue, items)?,
            Operation::Extend { queue, items } => self.extend(queue, items)?,
            Operation::SetPaused { queue, paused } => self.set_paused(queue, *paused)?,
            Operation::Configure { queue, settings } => {
                self.broker.configure(self.model.now_ms, queue, settings.clone(), &mut self.ops);
                self.model.configure(queue, settings.clone());
                self.coverage.configured += 1;
                self.log();
            }
            Operation::Act { id, action } => self.act(*id, action)?,
            Operation::Redrive { queue, reset_attempts } => self.redrive(queue, *reset_attempts)?,
            Operation::Purge { queue, state } => self.purge(queue, *state)?,
            Operation::Advance { step_ms, expire } => {
                self.model.now_ms += step_ms;
                if *expire {
                    self.expire_due();
                }
            }
            Operation::Expire => self.expire_due(),
            Operation::Checkpoint => self.checkpoint()?,
            Operation::BeginCheckpoint if self.pending_checkpoint.is_none() => {
                self.pending_checkpoint = Some(self.begin_checkpoint());
            }
            Operation::BeginCheckpoint => self.checkpoint()?,
            Operation::FailCheckpoint => self.fail_checkpoint(),
            Operation::Sweep => self.sweep()?,
            Operation::Restart { seed, checkpoint } => self.restart(*seed, *checkpoint)?,
        }
        // Housekeeping after every group: ready messages over the budget leave memory.
        let evicted = (self.disk.housekeeping(&mut self.broker))
            .map_err(|error| format!("housekeeping failed: {error}"))?;
        self.coverage.evicted += evicted as u64;
        let unordered =
            matches!(operation, Operation::Advance { .. } | Operation::Expire | Operation::Sweep);
        self.check_notices(unordered)?;
        let touched = std::mem::take(&mut self.touched);
        self.check_step(&touched)
    }

    /// Answers `NotActive` for a ready message left in the catalog as the storage thread does
    /// (`resolving` in `engine/execute.rs`, the catalog's record deciding): the lease is over if
    /// the message is in this queue, else the token is unknown.
    fn resolve_cold<T>(
        &self,
        queue: &str,
        results: Vec<Result<T, Refusal>>,
    ) -> Vec<Result<T, Refusal>> {
        let queue_id = self.broker.queue_id(queue);
        results
            .into_iter()
            .map(|result| match result {
                Err(Refusal::NotActive(id)) if !self.broker.is_resident(id) => {
                    match self.disk.observe(&self.broker, id) {
                        Some(meta) if meta.state == MessageState::Ready => {
                            if Some(meta.queue_id) == queue_id {
                                Err(Refusal::LeaseExpired)
                            } else {
                                Err(Refusal::Unknown)
                            }
                        }
                        _ => Err(Refusal::NotActive(id)),
                    }
                }
                other => other,
            })
            .collect()
    }

    /// Reads cold pages back from the catalog into the broker, as the storage thread has its
    /// loader do before a lease, a listing or a purge that reaches them.
    fn load_cold(&mut self, queue_id: QueueId, pages: Vec<u64>) -> Result<(), String> {
        for page in pages {
            let records = (self.disk.catalog().page(page))
                .map_err(|error| format!("reading cold page {page} failed: {error}"))?;
            let missing = self.broker.load_cold(queue_id, page, records);
            if missing > 0 {
                return Err(format!("cold page {page} lacks {missing} counted messages"));
            }
            self.coverage.cold_loaded += 1;
        }
        Ok(())
    }

    /// Ends the request: its ops become one log frame (none when there are none), and the
    /// messages they touch are checked after the step.
    fn log(&mut self) {
        for op in &self.ops {
            let mut ids = Vec::new();
            op.touched_ids(&mut ids);
            if let Op::Enqueue { first_id, messages, .. } = op {
                ids.extend((0..messages.len() as u64).map(|offset| MessageId(first_id.0 + offset)));
            }
            self.touched.extend(ids.into_iter().map(|id| id.0));
        }
        if !self.ops.is_empty() {
            self.frames_since_checkpoint += 1;
        }
        self.disk.log(&self.ops);
        self.ops.clear();
    }
}

/// The message ids named by an operation's tokens or person's action.
fn token_ids(operation: &Operation) -> Vec<u64> {
    let tokens: Vec<&SimToken> = match operation {
        Operation::Ack { tokens, .. } => tokens.iter().collect(),
        Operation::Nack { items, .. } => items.iter().map(|item| &item.token).collect(),
        Operation::Extend { items, .. } => items.iter().map(|(token, _)| token).collect(),
        Operation::Act { id, .. } => return vec![*id],
        _ => Vec::new(),
    };
    tokens.iter().filter_map(|token| token.token.map(|token| token.id.0)).collect()
}

/// Forged, malformed and cross-queue tokens never hold anything, whatever the model says.
fn check_kind(token: &SimToken, held: bool) -> Result<(), String> {
    let never_holds =
        matches!(token.kind, TokenKind::Forged | TokenKind::Malformed | TokenKind::OtherQueue);
    if held && never_holds {
        return Err(format!("the {:?} token {:?} was accepted", token.kind, token.token));
    }
    Ok(())
}

/// Refused operations must leave nothing to log.
fn expect_no_ops(what: &str, ops: &[Op]) -> Result<(), String> {
    if ops.is_empty() {
        Ok(())
    } else {
        Err(format!("{what} logged ops: {ops:?}"))
    }
}

// ---------------------------------------------------------------------------------------------------
// Running operations on both sides
// ---------------------------------------------------------------------------------------------------

impl Sim {
    fn enqueue(
        &mut self,
        queue: &'static str,
        messages: &[MessageSpec],
        idempotency: &Option<IdempotencyKey>,
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let contents: Vec<Vec<u8>> = messages.iter().map(|spec| spec.content.clone()).collect();
        let locations = self.disk.place(&contents);
        let placed = messages
            .iter()
            .zip(&locations)
            .map(|(spec, content)| NewMessage {
                content: *content,
                priority: spec.priority,
                attempt_count_max: spec.attempt_count_max,
                delivery: spec.delivery,
            })
            .collect();
        let key = idempotency.clone();
        let actual = self.broker.enqueue(now_ms, queue, placed, key, &mut self.ops);
        let expected = self.model.enqueue(queue, messages, &locations, idempotency.as_ref());
        let refused_ops = self.ops.clone();
        self.log();
        if actual != expected {
            return Err(format!("enqueue into {queue}: broker {actual:?}, model {expected:?}"));
        }
        match actual {
            Ok(outcome) if !outcome.duplicate => {
                if outcome.first_id.0 <= self.highest_id {
                    return Err(format!(
                        "enqueue handed out {} after id {} was already used",
                        outcome.first_id, self.highest_id
                    ));
                }
                self.highest_id = outcome.first_id.0 + u64::from(outcome.count) - 1;
                return Ok(());
            }
            Ok(_) => self.coverage.duplicate += 1,
            Err(_) => self.coverage.conflict += 1,
        }
        expect_no_ops("a repeated or conflicting enqueue", &refused_ops)
    }

    fn lease(
        &mut self,
        queue: &'static str,
        count_max: u32,
        lease_ms: Option<u64>,
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        if let Some(queue_id) = self.broker.queue_id(queue) {
            let pages = self.broker.cold_ahead(queue_id, count_max as usize).pages;
            self.load_cold(queue_id, pages)?;
        }
        let grants = self.broker.lease(now_ms, queue, count_max, lease_ms, &mut self.ops);
        let expected = self.model.lease(queue, count_max, lease_ms);
        let actual: Vec<(MessageId, MessageMeta)> =
            grants.iter().map(|grant| (grant.id, without_nonce(&grant.meta))).collect();
        if actual != expected {
            return Err(format!(
                "lease {count_max} from {queue}: broker granted {actual:?}, model {expected:?}"
            ));
        }
        let paused =
            self.model.queue_id(queue).is_some_and(|id| self.model.queues[id.0 as usize].paused);
        self.coverage.paused_leases += u64::from(paused);
        if grants.is_empty() {
            return expect_no_ops("a lease that granted nothing", &self.ops);
        }
        self.log();
        for grant in &grants {
            self.check_grant(grant)?;
            self.issue(grant);
        }
        Ok(())
    }

    /// Checks a grant against what the harness saw before, independently of the model.
    fn check_grant(&self, grant: &Grant) -> Result<(), String> {
        let id = grant.id;
        let now_ms = self.model.now_ms;
        if grant.token.id != id || grant.token.nonce != grant.meta.lease_nonce {
            return Err(format!("grant of {id} carries token {:?}", grant.token));
        }
        if self.acked.contains(&id.0) {
            return Err(format!("{id} was acked and is leased again"));
        }
        if let Some(&over_at_ms) = self.delivery_over_at_ms.get(&id.0) {
            if over_at_ms > now_ms {
                return Err(format!(
                    "{id} leased again at {now_ms} while its previous delivery lasts until {over_at_ms}"
                ));
            }
        }
        if let Some(&last) = self.last_attempt.get(&id.0) {
            if last >= grant.meta.attempt_count {
                let attempt = grant.meta.attempt_count;
                return Err(format!("{id} attempt went from {last} to {attempt}"));
            }
        }
        let earlier = self.tokens_by_id.get(&id.0).map_or(&[][..], Vec::as_slice);
        let nonce = Some(grant.token.nonce);
        if earlier.iter().any(|token| token.token.map(|token| token.nonce) == nonce) {
            return Err(format!("{id} was leased again with an old token's nonce"));
        }
        Ok(())
    }

    /// Remembers a granted token as current, and as a future stale token.
    fn issue(&mut self, grant: &Grant) {
        self.coverage.granted += 1;
        let id = grant.id.0;
        let delivery = self.model.get(id).map_or(0, |message| message.delivery_count);
        let token = SimToken { kind: TokenKind::Current, token: Some(grant.token), delivery };
        self.tokens_by_id.entry(id).or_default().push(token);
        self.newest.insert(id, token);
        self.delivery_over_at_ms.insert(id, grant.meta.due_at_ms);
        self.last_attempt.insert(id, grant.meta.attempt_count);
        if self.issued.len() == ISSUED_TOKEN_COUNT_MAX {
            let index = self.rng.below(ISSUED_TOKEN_COUNT_MAX as u64) as usize;
            self.issued.swap_remove(index);
        }
        self.issued.push(SimToken { kind: TokenKind::Stale, ..token });
    }

    fn ack(&mut self, queue: &'static str, tokens: &[SimToken]) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let raw: Vec<_> = tokens.iter().map(|token| token.token).collect();
        let before: Vec<Option<bool>> = tokens.iter().map(|token| self.unfired(token)).collect();
        let actual = self.broker.ack(now_ms, queue, &raw, &mut self.ops);
        let actual = self.resolve_cold(queue, actual);
        let expected = self.model.ack(queue, tokens);
        if actual != expected {
            return Err(format!("ack in {queue}: broker {actual:?}, model {expected:?}"));
        }
        for ((token, outcome), unfired) in tokens.iter().zip(&actual).zip(before) {
            check_kind(token, outcome.is_ok())?;
            match (outcome, token.token) {
                (Ok(()), Some(lease_token)) => {
                    self.coverage.acked += 1;
                    self.acked.insert(lease_token.id.0);
                }
                (Ok(()), None) => return Err("a malformed token acked a message".to_string()),
                (Err(refusal), _) => self.count_refusal(refusal, unfired),
            }
        }
        if actual.iter().all(Result::is_err) {
            return expect_no_ops("an ack of tokens that hold nothing", &self.ops);
        }
        self.log();
        Ok(())
    }

    fn nack(&mut self, queue: &'static str, items: &[NackSpec]) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let broker_items: Vec<NackItem> = (items.iter())
            .map(|item| NackItem {
                token: item.token.token,
                error: item.error.clone(),
                delay_ms: item.delay_ms,
                dead: item.dead,
            })
            .collect();
        let before: Vec<Option<bool>> =
            items.iter().map(|item| self.unfired(&item.token)).collect();
        let actual = self.broker.nack(now_ms, queue, broker_items, &mut self.ops);
        let actual = self.resolve_cold(queue, actual);
        let expected = self.model.nack(queue, items);
        if actual != expected {
            return Err(format!("nack in {queue}: broker {actual:?}, model {expected:?}"));
        }
        for ((item, outcome), unfired) in items.iter().zip(&actual).zip(before) {
            check_kind(&item.token, outcome.is_ok())?;
            match outcome {
                Ok(FailOutcome::Dead) => self.coverage.dead += 1,
                Ok(FailOutcome::Retrying { .. }) => self.coverage.retrying += 1,
                Err(refusal) => self.count_refusal(refusal, unfired),
            }
            if let (Ok(_), Some(token)) = (outcome, item.token.token) {
                self.delivery_over_at_ms.insert(token.id.0, now_ms);
            }
        }
        if actual.iter().all(Result::is_err) {
            return expect_no_ops("a nack of tokens that hold nothing", &self.ops);
        }
        self.log();
        Ok(())
    }

    fn extend(
        &mut self,
        queue: &'static str,
        items: &[(SimToken, Option<u64>)],
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let broker_items: Vec<ExtendItem> = (items.iter())
            .map(|(token, lease_ms)| ExtendItem { token: token.token, lease_ms: *lease_ms })
            .collect();
        let before: Vec<Option<bool>> =
            items.iter().map(|(token, _)| self.unfired(token)).collect();
        let actual = self.broker.extend(now_ms, queue, &broker_items, &mut self.ops);
        let actual = self.resolve_cold(queue, actual);
        let expected = self.model.extend(queue, items);
        if actual != expected {
            return Err(format!("extend in {queue}: broker {actual:?}, model {expected:?}"));
        }
        for (((token, _), outcome), unfired) in items.iter().zip(&actual).zip(before) {
            check_kind(token, outcome.is_ok())?;
            match (outcome, token.token) {
                (Ok(deadline_ms), Some(lease_token)) => {
                    self.coverage.extended += 1;
                    self.delivery_over_at_ms.insert(lease_token.id.0, *deadline_ms);
                }
                (Ok(_), None) => return Err("a malformed token extended a lease".to_string()),
                (Err(refusal), _) => self.count_refusal(refusal, unfired),
            }
        }
        if actual.iter().all(Result::is_err) {
            return expect_no_ops("an extend of tokens that hold nothing", &self.ops);
        }
        self.log();
        Ok(())
    }

    /// Whether `token`'s delivery is still the message's lease, as far as the timers know: then a
    /// `LeaseExpired` can only come from the deadline check, before the timer fired.
    fn unfired(&self, token: &SimToken) -> Option<bool> {
        let lease_token = token.token?;
        let message = self.model.get(lease_token.id.0)?;
        let leased = message.meta.state == MessageState::Leased;
        Some(leased && message.delivery_count == token.delivery)
    }

    fn count_refusal(&mut self, refusal: &Refusal, unfired: Option<bool>) {
        self.coverage.count_refusal(refusal);
        if *refusal == Refusal::LeaseExpired && unfired == Some(true) {
            self.coverage.lease_expired_before_its_timer += 1;
        }
    }

    fn set_paused(&mut self, queue: &'static str, paused: bool) -> Result<(), String> {
        let was_paused =
            self.model.queue_id(queue).map(|id| self.model.queues[id.0 as usize].paused);
        let actual = self.broker.set_paused(self.model.now_ms, queue, paused, &mut self.ops);
        let expected = self.model.set_paused(queue, paused);
        if actual != expected {
            return Err(format!("pausing {queue}: broker {actual}, model {expected}"));
        }
        if was_paused != Some(!paused) {
            return expect_no_ops("a pause that changed nothing", &self.ops);
        }
        self.log();
        Ok(())
    }

    fn expire_due(&mut self) {
        self.broker.expire_due(self.model.now_ms, &mut self.ops);
        let (lease_expiry_count, forgotten_count) = self.model.expire_due();
        self.coverage.leases_expired_by_timer += lease_expiry_count;
        self.coverage.keys_forgotten += forgotten_count;
        self.log();
    }

    /// The record a person's action carries, as the HTTP layer reads it: none when the broker
    /// holds the message, else the catalog's.
    fn stored(&mut self, id: MessageId) -> Option<MessageMeta> {
        if self.broker.is_resident(id) {
            return None;
        }
        let stored = self.disk.observe(&self.broker, id);
        self.coverage.actions_on_stored_records += u64::from(stored.is_some());
        stored
    }

    /// A person's action on one message: the broker's result and the model's must agree, down to
    /// the refusal; a refused action logs nothing.
    fn act(&mut self, id: u64, action: &Action) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let message_id = MessageId(id);
        let stored = self.stored(message_id);
        let (actual, expected): (ActionOutcome, ActionOutcome) = match action {
            Action::Delete => {
                let actual = self.broker.delete(now_ms, message_id, stored, &mut self.ops);
                (actual, self.model.delete(id))
            }
            Action::Retry { reset_attempts } => {
                let result =
                    self.broker.retry(now_ms, message_id, stored, *reset_attempts, &mut self.ops);
                let expected = self.model.retry(id, *reset_attempts);
                if expected.is_ok() && *reset_attempts {
                    self.last_attempt.insert(id, 0);
                }
                (self.same_record(id, result)?, expected)
            }
            Action::Reschedule { deliver_at_ms } => {
                let result = (self.broker).reschedule(
                    now_ms,
                    message_id,
                    stored,
                    *deliver_at_ms,
                    &mut self.ops,
                );
                let expected = self.model.reschedule(id, *deliver_at_ms);
                (self.same_record(id, result)?, expected)
            }
            Action::Edit(spec) => return self.edit(id, stored, spec),
        };
        self.count_action(action, &actual);
        if actual != expected {
            return Err(format!("{action:?} of {id}: broker {actual:?}, model {expected:?}"));
        }
        if actual.is_err() {
            return expect_no_ops("a refused action", &self.ops);
        }
        self.log();
        Ok(())
    }

    /// An edit: a new content is placed in the request's frame first, as the storage thread does.
    fn edit(
        &mut self,
        id: u64,
        stored: Option<MessageMeta>,
        spec: &EditSpec,
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let contents: Vec<Vec<u8>> = spec.content.iter().cloned().collect();
        let location = self.disk.place(&contents).first().copied();
        let edit = Edit {
            content: location,
            priority: spec.priority,
            deliver_at_ms: spec.deliver_at_ms,
            fields: spec.fields,
        };
        let result = self.broker.edit(now_ms, MessageId(id), stored, edit, &mut self.ops);
        let expected = self.model.edit(id, spec, location);
        let actual = self.same_record(id, result)?;
        let action = Action::Edit(spec.clone());
        self.count_action(&action, &actual);
        if actual != expected {
            return Err(format!("{action:?} of {id}: broker {actual:?}, model {expected:?}"));
        }
        if actual.is_err() {
            expect_no_ops("a refused edit", &self.ops)?;
        }
        self.log();
        Ok(())
    }

    /// The record an action returned is the model's record after the action.
    fn same_record(
        &self,
        id: u64,
        result: Result<MessageMeta, ControlError>,
    ) -> Result<ActionOutcome, String> {
        let Ok(meta) = result else { return Ok(result.map(|_| ())) };
        let expected = self.model.get(id).map(|message| &message.meta);
        if Some(&without_nonce(&meta)) != expected {
            return Err(format!("the action on {id} returned {meta:?}, model {expected:?}"));
        }
        Ok(Ok(()))
    }

    fn count_action(&mut self, action: &Action, outcome: &ActionOutcome) {
        let counter = match (outcome, action) {
            (Err(_), _) => &mut self.coverage.refused_actions,
            (Ok(()), Action::Delete) => &mut self.coverage.deleted,
            (Ok(()), Action::Retry { .. }) => &mut self.coverage.retried,
            (Ok(()), Action::Reschedule { .. }) => &mut self.coverage.rescheduled,
            (Ok(()), Action::Edit(_)) => &mut self.coverage.edited,
        };
        *counter += 1;
    }

    /// A redrive as the HTTP layer runs it: chunks of the dead listing (catalog merged with the
    /// broker's view), each one request, until a chunk moves nothing.
    fn redrive(&mut self, queue: &'static str, reset_attempts: bool) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let dead = match self.model.queue_id(queue) {
            Some(queue_id) => self.model.ids_in(queue_id, MessageState::Dead),
            None => Vec::new(),
        };
        let mut total = None;
        while let Some(queue_id) = self.broker.queue_id(queue) {
            let chunk = self.terminal_chunk(queue_id, MessageState::Dead)?;
            let count = self.broker.retry_many(now_ms, chunk, reset_attempts, &mut self.ops);
            self.log();
            *total.get_or_insert(0) += count;
            if count == 0 {
                break;
            }
        }
        let expected = self.model.redrive(queue, reset_attempts);
        if total != expected {
            return Err(format!("redrive of {queue}: broker {total:?}, model {expected:?}"));
        }
        if reset_attempts {
            self.last_attempt.extend(dead.into_iter().map(|id| (id, 0)));
        }
        self.coverage.redriven += total.unwrap_or(0);
        Ok(())
    }

    /// A purge as the HTTP layer runs it: chunks of the state's listing until one removes nothing.
    fn purge(&mut self, queue: &'static str, state: MessageState) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let mut total = None;
        while let Some(queue_id) = self.broker.queue_id(queue) {
            let chunk = if state.is_active() {
                if state == MessageState::Ready {
                    let pages =
                        self.broker.cold_in_listing(queue_id, None, false, CONTROL_CHUNK_COUNT_MAX);
                    self.load_cold(queue_id, pages)?;
                }
                let listed =
                    self.broker.list_active(queue_id, state, None, false, CONTROL_CHUNK_COUNT_MAX);
                listed.into_iter().map(|(id, _)| (id, None)).collect()
            } else {
                self.terminal_chunk(queue_id, state)?
            };
            let count = self.broker.delete_many(now_ms, chunk, &mut self.ops);
            self.log();
            *total.get_or_insert(0) += count;
            if count == 0 {
                break;
            }
        }
        let expected = self.model.purge(queue, state);
        if total != expected {
            return Err(format!(
                "purge of {queue} {state:?}: broker {total:?}, model {expected:?}"
            ));
        }
        self.coverage.purged += total.unwrap_or(0);
        Ok(())
    }

    /// The first chunk of a queue's dead or delivered listing, with the records as the catalog
    /// holds them for the messages the broker does not (what a redrive or purge request carries).
    fn terminal_chunk(
        &self,
        queue_id: QueueId,
        state: MessageState,
    ) -> Result<Vec<(MessageId, Option<MessageMeta>)>, String> {
        let view = self.broker.settled_of(queue_id, state);
        let listed = (self.disk.catalog())
            .list_terminal(queue_id, state, None, false, CONTROL_CHUNK_COUNT_MAX, &view)
            .map_err(|error| format!("listing {state:?} messages failed: {error}"))?;
        Ok(listed
            .into_iter()
            .map(|(id, meta)| (id, (!self.broker.is_resident(id)).then_some(meta)))
            .collect())
    }

    /// A checkpoint: the one in flight is written, or one is taken and written at once;
    /// afterwards the catalog alone holds exactly the model as it was when the checkpoint began.
    fn checkpoint(&mut self) -> Result<(), String> {
        let pending = match self.pending_checkpoint.take() {
            Some(pending) => pending,
            None => self.begin_checkpoint(),
        };
        let held = pending.model.now_ms != self.model.now_ms || self.step != pending.step;
        (self.disk.finish_checkpoint(&mut self.broker, pending.job))
            .map_err(|error| format!("checkpoint failed: {error}"))?;
        self.frames_since_checkpoint -= pending.frame_count;
        self.coverage.checkpoints += 1;
        self.coverage.checkpoints_held += u64::from(held);
        self.check_catalog(&pending.model, pending.model.now_ms, !held)
    }

    /// Starts a checkpoint, as the storage thread hands one to the checkpoint writer; the run
    /// goes on while it is in flight, and a later step writes it, fails it, or loses it in a crash.
    fn begin_checkpoint(&mut self) -> PendingCheckpoint {
        let job = self.disk.begin_checkpoint(&mut self.broker, self.model.now_ms);
        let frame_count = self.frames_since_checkpoint;
        PendingCheckpoint { job, model: self.model.clone(), step: self.step, frame_count }
    }

    /// A checkpoint whose catalog write fails: nothing is written, and its changes go into the
    /// next one (the next checkpoint's catalog check proves they did).
    fn fail_checkpoint(&mut self) {
        let pending = match self.pending_checkpoint.take() {
            Some(pending) => pending,
            None => self.begin_checkpoint(),
        };
        self.disk.fail_checkpoint(&mut self.broker, pending.job);
        self.coverage.checkpoints_failed += 1;
    }

    /// The storage thread's sweep: the catalog's due notes name candidates, the broker removes
    /// those whose retention passed (its own record wins), as one logged request. It must remove
    /// exactly the candidates the model says may go.
    fn sweep(&mut self) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let read = (self.disk.sweep(&self.broker, now_ms, SWEEP_PAGE_LIMIT))
            .map_err(|error| format!("reading the retention notes failed: {error}"))?;
        self.last_sweep_note_count = read.note_count;
        let eligible: BTreeSet<u64> = (read.candidates.iter())
            .map(|(id, _)| id.0)
            .filter(|id| self.model.get(*id).is_some_and(|m| self.model.retention_passed(&m.meta)))
            .collect();
        let count = self.broker.expire_retained(now_ms, read.candidates, &mut self.ops);
        let removed: BTreeSet<u64> = (self.ops.iter())
            .flat_map(|op| match op {
                Op::Remove { ids, .. } => ids.iter().map(|id| id.0).collect(),
                _ => Vec::new(),
            })
            .collect();
        if removed != eligible || count != removed.len() as u64 {
            return Err(format!(
                "the sweep removed {removed:?} (counted {count}), but of its candidates {eligible:?} \
                 were due"
            ));
        }
        for id in &removed {
            let dead = self.model.get(*id).is_some_and(|m| m.meta.state == MessageState::Dead);
            self.coverage.swept_dead += u64::from(dead);
            self.model.sweep_remove(*id);
        }
        self.coverage.swept += count;
        self.log();
        Ok(())
    }

    /// A crash and recovery: a broker rebuilt from the disk must show exactly what the live one
    /// shows; it carries on in its place, and must equal the model.
    fn restart(&mut self, seed: u64, checkpoint: bool) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        // A checkpoint in flight when the server stops is lost: recovery starts from the last
        // durable one.
        self.coverage.checkpoints_lost += u64::from(self.pending_checkpoint.take().is_some());
        let recovered = (self.disk.recover(self.config, now_ms, seed))
            .map_err(|error| format!("recovery failed: {error}"))?;
        (self.disk.compare(&self.broker, &recovered, now_ms)).map_err(|difference| {
            format!("the broker rebuilt from the disk differs: {difference}")
        })?;
        self.broker = recovered;
        // The storage thread ticks before it runs any request: keys whose window passed while
        // it was down (the log may replay them) are forgotten before anyone can use them.
        self.broker.forget_idempotency(now_ms);
        self.coverage.restarts += 1;
        self.coverage.restarts_replaying += u64::from(self.frames_since_checkpoint > 0);
        self.coverage.keys_forgotten += self.model.restart();
        let held = (self.model.iter())
            .filter(|(_, message)| message.meta.state == MessageState::Leased)
            .filter(|(_, message)| message.meta.due_at_ms > now_ms);
        self.coverage.leases_held_across_restart += held.count() as u64;
        if checkpoint {
            self.checkpoint()?;
        }
        // The comparison covered every record and listing against the live broker, which the
        // model checks (fully every few steps, and at the end of the run).
        if self.step > STEP_COUNT {
            return self.check_all();
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Checks after each step
// ---------------------------------------------------------------------------------------------------

impl Sim {
    fn check_step(&mut self, touched: &BTreeSet<u64>) -> Result<(), String> {
        let summary = self.model.summary();
        self.check_stats(&summary)?;
        self.check_woken()?;
        self.check_next_deadline(&summary)?;
        // Active messages are held in memory, or ready and left in the catalog.
        let active_count = self.broker.active_count() + self.broker.cold_count() as usize;
        if active_count != summary.active_count {
            let expected = summary.active_count;
            return Err(format!("active messages: broker {active_count}, model {expected}"));
        }
        if self.step % FULL_CHECK_INTERVAL_STEPS == 0 {
            return self.check_all();
        }
        let ids: Vec<MessageId> = touched.iter().copied().map(MessageId).collect();
        let observed = (self.disk.observe_many(&self.broker, &ids))
            .map_err(|error| format!("reading the catalog failed: {error}"))?;
        for (id, stored) in ids.iter().zip(observed) {
            self.check_message(id.0)?;
            self.check_stored_message(id.0, stored.as_ref())?;
        }
        Ok(())
    }

    /// The notices of the operation, in order (by id for timers and sweeps, whose order is free).
    fn check_notices(&mut self, unordered: bool) -> Result<(), String> {
        let mut actual = self.broker.take_notices();
        let mut expected = std::mem::take(&mut self.model.notices);
        if unordered {
            actual.sort_by_key(|notice| notice.id);
            expected.sort_by_key(|notice| notice.id);
        }
        let same = actual.len() == expected.len()
            && actual.iter().zip(&expected).all(|(actual, expected)| expected.matches(actual));
        if !same {
            return Err(format!("notices: broker {actual:?}, model {expected:?}"));
        }
        Ok(())
    }

    /// Every queue's stats, and queues that do not exist yet do not exist in the broker either.
    fn check_stats(&self, summary: &Summary) -> Result<(), String> {
        for &name in self.queue_names {
            let actual = self.broker.queue_stats(name);
            let queue_id = self.model.queue_id(name);
            let expected = queue_id.map(|queue_id| &summary.stats[queue_id.0 as usize]);
            let actual = actual.as_ref();
            if actual != expected {
                return Err(format!("stats of {name}: broker {actual:?}, model {expected:?}"));
            }
        }
        Ok(())
    }

    /// The queues the broker would wake long polls for are those that gained a ready message.
    fn check_woken(&mut self) -> Result<(), String> {
        let actual = self.broker.take_woken();
        let expected: Vec<QueueId> = std::mem::take(&mut self.model.woken).into_iter().collect();
        if actual != expected {
            return Err(format!("woken queues: broker {actual:?}, model {expected:?}"));
        }
        Ok(())
    }

    /// The storage thread sleeps until `next_deadline_ms`, so it must never be after a real deadline.
    fn check_next_deadline(&self, summary: &Summary) -> Result<(), String> {
        let Some(expected_ms) = summary.earliest_deadline_ms else {
            return Ok(());
        };
        match self.broker.next_deadline_ms() {
            Some(actual_ms) if actual_ms <= expected_ms => Ok(()),
            actual => Err(format!(
                "next deadline: broker {actual:?}, but a message is due at {expected_ms}"
            )),
        }
    }

    /// Every message (in the broker, and as a reader sees it), every listing, the id counter.
    fn check_all(&self) -> Result<(), String> {
        if self.broker.next_id() != self.model.next_id {
            let actual = self.broker.next_id();
            return Err(format!("next id: broker {actual}, model {}", self.model.next_id));
        }
        let observed = (self.disk.observe_all(&self.broker))
            .map_err(|error| format!("reading the catalog failed: {error}"))?;
        for (index, stored) in observed.iter().enumerate() {
            let id = index as u64 + 1;
            self.check_message(id)?;
            self.check_stored_message(id, stored.as_ref())?;
        }
        self.check_listings()
    }

    /// Listing each queue's messages by state gives exactly the model's, in id order: active
    /// states from the broker, dead and delivered ones from the catalog merged with the broker's
    /// view.
    fn check_listings(&self) -> Result<(), String> {
        for (index, _) in self.model.queues.iter().enumerate() {
            let queue_id = QueueId(index as u32);
            for state in ALL_STATES {
                let listed = (self.disk.list(&self.broker, queue_id, state))
                    .map_err(|error| format!("listing failed: {error}"))?;
                let actual: Vec<(MessageId, MessageMeta)> =
                    listed.iter().map(|(id, meta)| (*id, without_nonce(meta))).collect();
                let expected: Vec<(MessageId, MessageMeta)> = (self.model.ids_in(queue_id, state))
                    .into_iter()
                    .map(|id| (MessageId(id), self.model.get(id).expect("listed").meta.clone()))
                    .collect();
                if actual != expected {
                    let name = self.model.queue_name(queue_id);
                    return Err(format!("{name} lists {state:?} {actual:?}, model {expected:?}"));
                }
            }
        }
        Ok(())
    }

    /// Paging through every listing with a cursor, both ways, gives the whole listing once.
    fn check_listing_pages(&self) -> Result<(), String> {
        const PAGE_COUNT: usize = 7;
        for (index, _) in self.model.queues.iter().enumerate() {
            let queue_id = QueueId(index as u32);
            for state in ALL_STATES {
                let expected: Vec<MessageId> =
                    self.model.ids_in(queue_id, state).into_iter().map(MessageId).collect();
                for descending in [false, true] {
                    let mut paged: Vec<MessageId> = Vec::new();
                    loop {
                        let after = paged.last().copied();
                        let page =
                            self.list_page(queue_id, state, after, descending, PAGE_COUNT)?;
                        let done = page.len() < PAGE_COUNT;
                        paged.extend(page);
                        if done {
                            break;
                        }
                    }
                    if descending {
                        paged.reverse();
                    }
                    if paged != expected {
                        return Err(format!(
                            "paging {state:?} of queue {} (descending: {descending}): {paged:?}, \
                             model {expected:?}",
                            queue_id.0
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn list_page(
        &self,
        queue_id: QueueId,
        state: MessageState,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<MessageId>, String> {
        let listed = if state == MessageState::Ready {
            // Resident and cold ready messages merged, as a listing sees them once the storage
            // thread has read the cold pages it reaches back.
            let mut all = (self.disk.list(&self.broker, queue_id, state))
                .map_err(|error| format!("listing failed: {error}"))?;
            if descending {
                all.reverse();
            }
            let start = match after {
                None => 0,
                Some(cursor) => all
                    .iter()
                    .position(|(id, _)| if descending { *id < cursor } else { *id > cursor })
                    .unwrap_or(all.len()),
            };
            all.into_iter().skip(start).take(limit).collect()
        } else if state.is_active() {
            self.broker.list_active(queue_id, state, after, descending, limit)
        } else {
            let view = self.broker.settled_of(queue_id, state);
            (self.disk.catalog())
                .list_terminal(queue_id, state, after, descending, limit, &view)
                .map_err(|error| format!("listing failed: {error}"))?
        };
        Ok(listed.into_iter().map(|(id, _)| id).collect())
    }

    /// One message's record in the broker's memory (active messages only), and which of its
    /// tokens hold, against the model.
    fn check_message(&self, id: u64) -> Result<(), String> {
        let model = self.model.get(id);
        let expected = model.filter(|message| message.meta.state.is_active());
        let actual = self.broker.active_meta(MessageId(id));
        if let (None, Some(expected)) = (actual, expected) {
            // A ready message left in the catalog: the catalog's record is its record.
            let stored = self.disk.observe(&self.broker, MessageId(id));
            let cold = expected.meta.state == MessageState::Ready
                && !self.broker.is_resident(MessageId(id))
                && stored.as_ref().map(without_nonce) == Some(expected.meta.clone());
            if !cold {
                return Err(format!("message {id}: broker holds none, model {:?}", expected.meta));
            }
            return self.check_tokens(id, None);
        }
        match (actual, expected) {
            (None, None) => {}
            (Some(actual), Some(expected)) => {
                if without_nonce(actual) != expected.meta {
                    let expected = &expected.meta;
                    return Err(format!("message {id}: broker {actual:?}, model {expected:?}"));
                }
                self.check_nonce(id, actual)?;
            }
            (actual, expected) => {
                let expected = expected.map(|message| &message.meta);
                return Err(format!("message {id}: broker holds {actual:?}, model {expected:?}"));
            }
        }
        self.check_tokens(id, actual)
    }

    /// A leased record carries the nonce of the newest token; any other record carries none.
    fn check_nonce(&self, id: u64, meta: &MessageMeta) -> Result<(), String> {
        let delivery_count = self.model.get(id).map_or(0, |message| message.delivery_count);
        let expected_nonce = match (meta.state, self.newest.get(&id)) {
            (MessageState::Leased, Some(token)) if token.delivery == delivery_count => {
                token.token.map_or(0, |token| token.nonce)
            }
            (MessageState::Leased, newest) => {
                return Err(format!(
                    "message {id} is leased for delivery {delivery_count} but its newest token \
                     is {newest:?}"
                ));
            }
            _ => 0,
        };
        if meta.lease_nonce != expected_nonce {
            let nonce = meta.lease_nonce;
            return Err(format!("message {id} has nonce {nonce:#x}, expected {expected_nonce:#x}"));
        }
        Ok(())
    }

    /// At most one token of a message holds it, and exactly the one the model says.
    fn check_tokens(&self, id: u64, meta: Option<&MessageMeta>) -> Result<(), String> {
        let Some(tokens) = self.tokens_by_id.get(&id) else {
            return Ok(());
        };
        let now_ms = self.model.now_ms;
        let broker_holds = |token: &&SimToken| {
            meta.is_some_and(|meta| {
                meta.state == MessageState::Leased
                    && token.token.map(|token| token.nonce) == Some(meta.lease_nonce)
                    && meta.due_at_ms > now_ms
            })
        };
        let holding: Vec<u32> = tokens.iter().filter(broker_holds).map(|t| t.delivery).collect();
        if holding.len() > 1 {
            return Err(format!("message {id} has valid tokens of deliveries {holding:?}"));
        }
        let message = self.model.get(id);
        let queue = message.map_or("", |message| self.model.queue_name(message.meta.queue_id));
        let model_holding: Vec<u32> = (tokens.iter())
            .filter(|token| self.model.holds(queue, token).is_ok())
            .map(|token| token.delivery)
            .collect();
        if model_holding != holding {
            return Err(format!(
                "message {id}: tokens of deliveries {holding:?} hold in the broker, \
                 {model_holding:?} in the model"
            ));
        }
        Ok(())
    }

    /// One message as a reader sees it (`stored`: the broker's record, else the catalog's), its
    /// content and its history, against the model (absent if it is gone).
    fn check_stored_message(&self, id: u64, stored: Option<&MessageMeta>) -> Result<(), String> {
        let Some(message) = self.model.get(id) else {
            if stored.is_some() {
                return Err(format!("{id} is gone in the model but a reader sees {stored:?}"));
            }
            return Ok(());
        };
        let stored = stored.ok_or(format!("a reader does not find {id}"))?;
        if without_nonce(stored) != message.meta {
            let expected = &message.meta;
            return Err(format!("{id} as a reader sees it: {stored:?}, model {expected:?}"));
        }
        self.check_nonce(id, stored)?;
        if self.disk.content(MessageId(id), stored.content).as_ref() != Some(&message.content) {
            return Err(format!("the content of {id} differs from what was placed"));
        }
        let history = (self.disk.history(&self.broker, MessageId(id), stored))
            .map_err(|error| format!("reading the history of {id} failed: {error}"))?;
        let events = &history.events;
        let same = events.len() == message.history.len()
            && events.iter().zip(&message.history).all(|(event, expected)| expected.matches(event));
        if !same {
            return Err(format!("history of {id}: {events:?}, model {:?}", message.history));
        }
        Ok(())
    }

    /// Right after a checkpoint the catalog alone equals `expected` (the model when the checkpoint
    /// began, at `now_ms`): every page (those the checkpoint did not write as decoded before) and
    /// the `a` and `t` indexes over them, the histories kept, the queue records, the manifest (next
    /// id, dead and delivered counts, the content bytes the log holds for stored messages) and the
    /// idempotency keys within their window. `nonces`: the leased records' nonces are checked
    /// against the newest tokens (when nothing was leased since the checkpoint began).
    fn check_catalog(&self, expected: &Model, now_ms: u64, nonces: bool) -> Result<(), String> {
        let catalog = self.disk.catalog();
        let read = |error| format!("reading the catalog failed: {error}");
        let last_id = MessageId(expected.next_id - 1);
        let page_count = if last_id.0 == 0 { 0 } else { page_of(last_id) + 1 };
        for page in 0..page_count {
            let records = self.disk.stored_page(page).map_err(read)?;
            let expected: Vec<(MessageId, MessageMeta)> = (expected.iter())
                .filter(|(id, _)| page_of(MessageId(*id)) == page)
                .map(|(id, message)| (MessageId(id), message.meta.clone()))
                .collect();
            let actual: Vec<(MessageId, MessageMeta)> =
                records.iter().map(|(id, meta)| (*id, without_nonce(meta))).collect();
            if actual != expected {
                return Err(format!("catalog page {page}: {actual:?}, model {expected:?}"));
            }
            for (id, meta) in records.iter().filter(|_| nonces) {
                self.check_nonce(id.0, meta)?;
            }
        }
        self.check_catalog_indexes(expected)?;
        let mut queues = Vec::new();
        catalog.for_each_queue(|queue_id, record| queues.push((queue_id, record))).map_err(read)?;
        let expected_queues: Vec<(QueueId, QueueRecord)> = (expected.queues.iter().enumerate())
            .map(|(index, queue)| {
                let record = QueueRecord {
                    name: queue.name.to_string(),
                    paused: queue.paused,
                    settings: queue.settings.clone(),
                };
                (QueueId(index as u32), record)
            })
            .collect();
        if queues != expected_queues {
            return Err(format!("catalog queues {queues:?}, model {expected_queues:?}"));
        }
        self.check_manifest(expected)?;
        self.check_catalog_keys(expected, now_ms)
    }

    /// The catalog's indexes name exactly what its pages hold: an `a` entry per page with active
    /// records (their number), a `t` entry per (queue, dead or delivered, page) (their number),
    /// and an `h` entry per message whose history has events; no content is kept in the catalog
    /// (nothing moves contents out of the log here).
    fn check_catalog_indexes(&self, expected: &Model) -> Result<(), String> {
        let mut active_pages: BTreeMap<u64, u32> = BTreeMap::new();
        let mut terminal_pages: BTreeMap<(u32, u8, u64), u32> = BTreeMap::new();
        let mut histories: BTreeSet<u64> = BTreeSet::new();
        for (id, message) in expected.iter() {
            let (meta, page) = (&message.meta, page_of(MessageId(id)));
            if meta.state.is_active() {
                *active_pages.entry(page).or_default() += 1;
            } else {
                *terminal_pages.entry((meta.queue_id.0, meta.state as u8, page)).or_default() += 1;
            }
            if meta.event_seq > 0 {
                histories.insert(id);
            }
        }
        let (mut found_active, mut found_terminal) = (BTreeMap::new(), BTreeMap::new());
        let mut found_histories = BTreeSet::new();
        let mut stray = Vec::new();
        let count = |value: &[u8]| value.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
        let number = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
        (self.disk.catalog())
            .for_each_entry(|key, value| {
                match (key[0], key.len()) {
                    (keys::ACTIVE, 9) => drop(found_active.insert(number(&key[1..]), count(value))),
                    (keys::TERMINAL, 14) => {
                        let queue = u32::from_be_bytes(key[1..5].try_into().expect("4 bytes"));
                        let entry = (queue, key[5], number(&key[6..]));
                        found_terminal.insert(entry, count(value));
                    }
                    (keys::HISTORY, 9) => drop(found_histories.insert(number(&key[1..]))),
                    (keys::CONTENT, _) => stray.push(key.to_vec()),
                    _ => {}
                }
                Ok(())
            })
            .map_err(|error| format!("reading the catalog failed: {error}"))?;
        if found_active != active_pages {
            return Err(format!("catalog a index {found_active:?}, model {active_pages:?}"));
        }
        if found_terminal != terminal_pages {
            return Err(format!("catalog t index {found_terminal:?}, model {terminal_pages:?}"));
        }
        if found_histories != histories {
            return Err(format!("catalog histories of {found_histories:?}, model {histories:?}"));
        }
        if !stray.is_empty() {
            return Err(format!("the catalog keeps contents {stray:02x?}"));
        }
        Ok(())
    }

    fn check_manifest(&self, expected: &Model) -> Result<(), String> {
        let manifest = (self.disk.catalog().manifest())
            .map_err(|error| format!("reading the manifest failed: {error}"))?
            .ok_or("no manifest after a checkpoint")?;
        if manifest.next_id != expected.next_id {
            let next_id = expected.next_id;
            return Err(format!("manifest next id {}, model {next_id}", manifest.next_id));
        }
        let summary = expected.summary();
        let expected_counts: Vec<TerminalCounts> = (summary.stats.iter())
            .map(|stats| TerminalCounts {
                dead: stats.counts[MessageState::Dead.index()],
                delivered: stats.counts[MessageState::Delivered.index()],
            })
            .collect();
        if manifest.terminal_counts != expected_counts {
            let actual = &manifest.terminal_counts;
            return Err(format!("manifest counts {actual:?}, model {expected_counts:?}"));
        }
        // Every content is in segment 0 of the model's log: its usage is every stored message.
        let (mut live_count, mut live_bytes) = (0, 0);
        for (_, message) in expected.iter() {
            live_count += 1;
            live_bytes += u64::from(message.meta.content.len());
        }
        let usage: Vec<(u32, u64, u64)> = (manifest.segments.iter())
            .map(|(seq, SegmentUsage { live_count, live_bytes, .. })| {
                (*seq, *live_count, *live_bytes)
            })
            .collect();
        let expected = if live_count == 0 { vec![] } else { vec![(0, live_count, live_bytes)] };
        if usage != expected {
            return Err(format!("manifest segment usage {usage:?}, model {expected:?}"));
        }
        Ok(())
    }

    fn check_catalog_keys(&self, expected: &Model, now_ms: u64) -> Result<(), String> {
        let since_ms = now_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS);
        let mut keys = BTreeMap::new();
        (self.disk.catalog())
            .for_each_idempotency(since_ms, |queue_id, key, record| {
                if record.created_at_ms + IDEMPOTENCY_WINDOW_MS > now_ms {
                    keys.insert((queue_id, key), record);
                }
            })
            .map_err(|error| format!("reading the catalog's keys failed: {error}"))?;
        let mut expected = expected.idempotency.clone();
        expected.retain(|_, record| record.created_at_ms + IDEMPOTENCY_WINDOW_MS > now_ms);
        if keys != expected {
            return Err(format!("catalog keys {keys:?}, model {expected:?}"));
        }
        Ok(())
    }
}
