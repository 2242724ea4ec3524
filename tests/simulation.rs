//! Simulation: the broker behaves like a plain in-memory model under random operations and restarts,
//! in virtual time.
//!
//! Property: for every seed, each operation of `outboxd::queue::Broker` (enqueue with idempotency
//! keys, lease, ack, nack, extend, pause and resume, timer expiry, the retention sweep) returns exactly
//! what a simple model of the documented semantics returns (docs/api.md and
//! `src/queue/lease.rs`): the same ids and duplicate flags, the same idempotency conflicts, the same
//! leased ids in the same order (priority, then id), the same attempt numbers and deadlines, the same
//! ack/nack/extend results down to which refusal, and the same notices for the event stream. After
//! every step the per-queue stats, the queues woken for long polls, the earliest armed timer, and the
//! record, history and content of every message the step touched (of every message, and the listing
//! indexes, every few steps) agree with the model, both in the broker and in the store its changes
//! built. A restart rebuilds the broker from that store with the calls recovery makes, and must change
//! nothing observable except forgetting idempotency keys whose 24 h window passed. Besides the model,
//! the harness checks invariants directly: a message never has two lease tokens that hold, attempts
//! only grow, nothing acked is leased again, ids are unique and increasing, and a message is leased
//! again only after its previous delivery ended (its deadline, or its nack), restarts included.
//!
//! Method: a seeded SplitMix64 draws weighted operations over 2 or 3 queue names: batches of 1 to 20
//! messages with priorities in -1..=1 (so ties happen), delivery now, after a delay or at a past or
//! future time, 1 to 5 attempts, and an idempotency key from a pool of three with a request hash that
//! usually repeats; leases of random size and duration (or the default); acks, nacks and extends with
//! tokens that are current, stale, forged, malformed or from another queue; clock moves from 0 ms to
//! 30 h (crossing the idempotency window), often exactly onto a deadline or 1 ms before it, with or
//! without `expire_due`; sweeps; and restarts. Each seed also draws the broker's settings (attempts,
//! backoff, default lease, retention of delivered messages, history length). The model is a list of
//! messages that every operation scans: no timer wheel, no indexes. Backoff jitter is 0, so retry
//! times are exact. Each operation's changes go through the WAL frame codec and are applied to maps
//! keyed like the sled trees, as the storage thread applies them after the sync; a restart drops the
//! broker and restores a new one from the maps. The run counts how often each interesting outcome
//! happened and fails if one never did, so the simulation cannot silently stop exercising it.
//!
//! Runs `OUTBOXD_SIM_SEEDS` seeds (default 2000) of 300 steps on every core (about 25 s of CPU in a
//! debug build); `OUTBOXD_SIM_SEED=<seed>` replays one seed. A failure prints the seed, the step, the
//! last operations and the replay command.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use outboxd::limits::{CONTROL_CHUNK_COUNT_MAX, IDEMPOTENCY_WINDOW_MS};
use outboxd::queue::retry::RetryPolicy;
use outboxd::queue::{
    Broker, BrokerConfig, Change, Delivery, EnqueueError, EnqueueOutcome, FailOutcome, Grant,
    History, HistoryEvent, HistoryKind, IdempotencyKey, IdempotencyRecord, LeaseToken, MessageId,
    MessageMeta, MessageState, NackItem, NewMessage, Notice, NoticeKind, QueueId, QueueRecord,
    QueueSettings, QueueStats, Refusal, ALL_STATES,
};
use outboxd::store::{codec, keys};

/// Seeds run when `OUTBOXD_SIM_SEEDS` is not set.
const SEED_COUNT_DEFAULT: u64 = 2000;
/// Operations per seed (a final restart follows them).
const STEP_COUNT: usize = 300;
/// Operations shown when a seed fails.
const LOG_OPERATION_COUNT: usize = 20;
/// Every this many steps, every message in the broker is compared, not only the ones the step
/// touched (the whole store is compared at every restart).
const FULL_CHECK_INTERVAL_STEPS: usize = 50;
/// Issued tokens kept for stale replays; older ones are dropped at random.
const ISSUED_TOKEN_COUNT_MAX: usize = 256;
/// Below this many seeds, a run is a replay or a smoke run and need not reach every outcome.
const COVERAGE_SEED_COUNT_MIN: u64 = 200;

/// The virtual clock's start, a realistic epoch time, so that a `deliver_at` in the past is meaningful.
const START_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 60 * 60 * 1000;

const QUEUE_NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const IDEMPOTENCY_KEYS: [&str; 3] = ["k0", "k1", "k2"];
const LEASE_MS_CHOICES: [u64; 6] = [1, 20, 500, 5_000, 30_000, 60_000];
const ERROR_TEXTS: [&str; 4] = ["SMTP 451 try later", "", "timeout", "désolé"];
/// How the broker's error for an expired lease starts (the contract says "lease expired").
const LEASE_EXPIRED_TEXT_PREFIX: &str = "lease expired";

#[test]
fn broker_matches_the_model_under_random_operations_and_restarts() {
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

/// SplitMix64: a tiny seedable generator, so that a seed names one run exactly.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0); the modulo bias does not matter here.
    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True `percent` times in a hundred.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// How often the interesting outcomes happened, so that a run proves it exercised them.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    granted: u64,
    acked: u64,
    extended: u64,
    retrying: u64,
    dead: u64,
    lease_expired: u64,
    /// `LeaseExpired` for a lease past its deadline whose timer had not fired yet.
    lease_expired_before_its_timer: u64,
    not_active: u64,
    unknown: u64,
    duplicate: u64,
    conflict: u64,
    leases_expired_by_timer: u64,
    keys_forgotten: u64,
    swept: u64,
    paused_leases: u64,
    restarts: u64,
    leases_held_across_restart: u64,
}

impl Coverage {
    fn fields(&self) -> [(&'static str, u64); 17] {
        [
            ("granted", self.granted),
            ("acked", self.acked),
            ("extended", self.extended),
            ("retrying", self.retrying),
            ("dead", self.dead),
            ("lease_expired", self.lease_expired),
            ("lease_expired_before_its_timer", self.lease_expired_before_its_timer),
            ("not_active", self.not_active),
            ("unknown", self.unknown),
            ("duplicate", self.duplicate),
            ("conflict", self.conflict),
            ("leases_expired_by_timer", self.leases_expired_by_timer),
            ("keys_forgotten", self.keys_forgotten),
            ("swept", self.swept),
            ("paused_leases", self.paused_leases),
            ("restarts", self.restarts),
            ("leases_held_across_restart", self.leases_held_across_restart),
        ]
    }

    fn missing(&self) -> Vec<&'static str> {
        let fields = self.fields();
        fields.iter().filter(|(_, count)| *count == 0).map(|(name, _)| *name).collect()
    }

    fn add(&mut self, other: &Coverage) {
        self.granted += other.granted;
        self.acked += other.acked;
        self.extended += other.extended;
        self.retrying += other.retrying;
        self.dead += other.dead;
        self.lease_expired += other.lease_expired;
        self.lease_expired_before_its_timer += other.lease_expired_before_its_timer;
        self.not_active += other.not_active;
        self.unknown += other.unknown;
        self.duplicate += other.duplicate;
        self.conflict += other.conflict;
        self.leases_expired_by_timer += other.leases_expired_by_timer;
        self.keys_forgotten += other.keys_forgotten;
        self.swept += other.swept;
        self.paused_leases += other.paused_leases;
        self.restarts += other.restarts;
        self.leases_held_across_restart += other.leases_held_across_restart;
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
// The model
// ---------------------------------------------------------------------------------------------------

/// A failure's text as the model expects it: a nack's own text, or the broker's lease-expiry text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Detail {
    Text(String),
    LeaseExpiry,
}

impl Detail {
    fn matches(&self, text: &str) -> bool {
        match self {
            Detail::Text(expected) => text == expected,
            Detail::LeaseExpiry => text.starts_with(LEASE_EXPIRED_TEXT_PREFIX),
        }
    }
}

/// A history event as the model expects it in the store.
#[derive(Clone, Debug)]
struct ExpectedEvent {
    seq: u32,
    kind: HistoryKind,
    at_ms: u64,
    attempt: u32,
    leased_at_ms: u64,
    detail: Detail,
    dead: bool,
}

impl ExpectedEvent {
    fn matches(&self, event: &HistoryEvent) -> bool {
        self.seq == event.seq
            && self.kind == event.kind
            && self.at_ms == event.at_ms
            && self.attempt == event.attempt
            && self.leased_at_ms == event.leased_at_ms
            && self.detail.matches(&event.detail)
            && self.dead == event.dead
    }
}

/// A notice as the model expects it from `take_notices`.
#[derive(Clone, Debug)]
struct ExpectedNotice {
    kind: NoticeKind,
    queue_id: QueueId,
    id: Option<MessageId>,
    attempt: u32,
    at_ms: u64,
    detail: Option<Detail>,
}

impl ExpectedNotice {
    fn matches(&self, notice: &Notice) -> bool {
        let detail_matches = match (&self.detail, &notice.detail) {
            (Some(expected), Some(text)) => expected.matches(text),
            (expected, actual) => expected.is_none() && actual.is_none(),
        };
        self.kind == notice.kind
            && self.queue_id == notice.queue_id
            && self.id == notice.id
            && self.attempt == notice.attempt
            && self.at_ms == notice.at_ms
            && detail_matches
    }
}

/// One message as the model sees it.
#[derive(Clone, Debug)]
struct ModelMessage {
    /// The record the broker should hold, with `lease_nonce` always 0: nonces are random, so the
    /// harness checks them against the tokens it was handed instead.
    meta: MessageMeta,
    /// The failures recorded, oldest first, at most `history_keep_count`.
    history: Vec<ExpectedEvent>,
    content_record: Vec<u8>,
}

/// The oracle: every stored message in one map, scanned by every operation.
///
/// It follows the contract literally and keeps no index: a lease sorts the ready messages of the
/// queue, a timer tick scans for due records, counts are counted. Like the broker, it acts on
/// deadlines only when told to (`expire_due`, `sweep`), except that a lease whose deadline has passed
/// no longer holds.
struct Model {
    config: BrokerConfig,
    now_ms: u64,
    /// Queue names and paused flags in creation order: the position is the queue id.
    queues: Vec<(&'static str, bool)>,
    /// Every message ever enqueued, at index `id - 1` (ids are handed out densely from 1); `None`
    /// once the store no longer holds it (a delivered message leaves when its retention ends).
    messages: Vec<Option<ModelMessage>>,
    idempotency: BTreeMap<(QueueId, String), IdempotencyRecord>,
    next_id: u64,
    /// Queues that gained a ready message (or were resumed) since the broker was last asked.
    woken: BTreeSet<QueueId>,
    /// What the event stream should publish for the current operation.
    notices: Vec<ExpectedNotice>,
}

/// Whether a message still needs the broker (not delivered, not dead).
fn is_active(state: MessageState) -> bool {
    !matches!(state, MessageState::Dead | MessageState::Delivered)
}

/// Whether a timer drives the message out of `state`.
fn is_timed(state: MessageState) -> bool {
    matches!(state, MessageState::Scheduled | MessageState::Leased | MessageState::Retrying)
}

/// `meta` with the lease nonce cleared, for comparing with the model.
fn without_nonce(meta: &MessageMeta) -> MessageMeta {
    MessageMeta { lease_nonce: 0, ..meta.clone() }
}

impl Model {
    fn new(config: BrokerConfig, now_ms: u64) -> Model {
        Model {
            config,
            now_ms,
            queues: Vec::new(),
            messages: Vec::new(),
            idempotency: BTreeMap::new(),
            next_id: 1,
            woken: BTreeSet::new(),
            notices: Vec::new(),
        }
    }

    fn queue_id(&self, name: &str) -> Option<QueueId> {
        let index = self.queues.iter().position(|(queue, _)| *queue == name)?;
        Some(QueueId(index as u32))
    }

    fn queue_name(&self, queue_id: QueueId) -> &'static str {
        self.queues[queue_id.0 as usize].0
    }

    /// Expects the broker to publish a notice about message `id` as it is now.
    fn notice(&mut self, kind: NoticeKind, id: u64, detail: Option<Detail>) {
        let meta = &self.message(id).meta;
        let notice = ExpectedNotice {
            kind,
            queue_id: meta.queue_id,
            id: Some(MessageId(id)),
            attempt: meta.attempt_count,
            at_ms: self.now_ms,
            detail,
        };
        self.notices.push(notice);
    }

    /// The contract's enqueue: a repeat returns the original ids, a conflict stores nothing.
    fn enqueue(
        &mut self,
        queue: &'static str,
        messages: &[NewMessage],
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<EnqueueOutcome, EnqueueError> {
        let existing = self.queue_id(queue);
        if let (Some(queue_id), Some(key)) = (existing, idempotency) {
            if let Some(record) = self.idempotency.get(&(queue_id, key.key.clone())) {
                if record.request_hash != key.request_hash {
                    return Err(EnqueueError::IdempotencyConflict);
                }
                let first_id = MessageId(record.first_id);
                return Ok(EnqueueOutcome { first_id, count: record.count, duplicate: true });
            }
        }
        let queue_id = existing.unwrap_or_else(|| {
            self.queues.push((queue, false));
            QueueId(self.queues.len() as u32 - 1)
        });
        let first_id = self.next_id;
        for message in messages {
            self.accept(queue_id, message);
        }
        let count = messages.len() as u32;
        if let Some(key) = idempotency {
            let request_hash = key.request_hash;
            let created_at_ms = self.now_ms;
            let record = IdempotencyRecord { request_hash, first_id, count, created_at_ms };
            self.idempotency.insert((queue_id, key.key.clone()), record);
        }
        Ok(EnqueueOutcome { first_id: MessageId(first_id), count, duplicate: false })
    }

    /// A new message is scheduled when its delivery time is in the future, else ready.
    fn accept(&mut self, queue_id: QueueId, message: &NewMessage) {
        let now_ms = self.now_ms;
        let ready_at_ms = match message.delivery {
            Delivery::Now => now_ms,
            Delivery::After { delay_ms } => now_ms + delay_ms,
            Delivery::At { deliver_at_ms } => deliver_at_ms,
        };
        let scheduled = ready_at_ms > now_ms;
        if !scheduled {
            self.woken.insert(queue_id);
        }
        let meta = MessageMeta {
            queue_id,
            state: if scheduled { MessageState::Scheduled } else { MessageState::Ready },
            priority: message.priority,
            attempt_count: 0,
            attempt_count_max: message.attempt_count_max.unwrap_or(self.config.attempt_count_max),
            enqueued_at_ms: now_ms,
            updated_at_ms: now_ms,
            due_at_ms: if scheduled { ready_at_ms } else { 0 },
            lease_nonce: 0,
            leased_at_ms: 0,
            event_seq: 0,
        };
        let content_record = message.content_record.clone();
        let id = self.next_id;
        self.messages.push(Some(ModelMessage { meta, history: Vec::new(), content_record }));
        self.next_id += 1;
        self.notice(NoticeKind::Enqueued, id, None);
    }

    /// Leases the best `count_max` ready messages: highest priority first, then oldest id. A paused
    /// queue leases nothing; no `lease_ms` means the default lease.
    fn lease(
        &mut self,
        queue: &str,
        count_max: u32,
        lease_ms: Option<u64>,
    ) -> Vec<(MessageId, MessageMeta)> {
        let Some(queue_id) = self.queue_id(queue) else {
            return Vec::new();
        };
        if self.queues[queue_id.0 as usize].1 {
            return Vec::new();
        }
        let mut ready: Vec<(i32, u64)> = (self.iter())
            .filter(|(_, message)| message.meta.queue_id == queue_id)
            .filter(|(_, message)| message.meta.state == MessageState::Ready)
            .map(|(id, message)| (message.meta.priority, id))
            .collect();
        ready.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ready.truncate(count_max as usize);
        let now_ms = self.now_ms;
        let deadline_ms = now_ms + lease_ms.unwrap_or(self.config.lease_ms);
        let mut granted = Vec::new();
        for (_, id) in ready {
            let meta = &mut self.message_mut(id).meta;
            meta.state = MessageState::Leased;
            meta.attempt_count += 1;
            meta.updated_at_ms = now_ms;
            meta.due_at_ms = deadline_ms;
            meta.leased_at_ms = now_ms;
            granted.push((MessageId(id), meta.clone()));
            self.notice(NoticeKind::Leased, id, None);
        }
        granted
    }

    /// The message `token` holds in `queue` right now, or why it holds none (see `Refusal`).
    fn holds(&self, queue: &str, token: &SimToken) -> Result<u64, Refusal> {
        let (Some(queue_id), Some(lease_token)) = (self.queue_id(queue), token.token) else {
            return Err(Refusal::Unknown);
        };
        let id = lease_token.id;
        let message = self.get(id.0).filter(|message| is_active(message.meta.state));
        let Some(message) = message else {
            return Err(Refusal::NotActive(id));
        };
        let meta = &message.meta;
        if meta.queue_id != queue_id {
            return Err(Refusal::Unknown);
        }
        // A token names one delivery, and each delivery has its own attempt number.
        let current = meta.state == MessageState::Leased && meta.attempt_count == token.attempt;
        if current && meta.due_at_ms > self.now_ms {
            Ok(id.0)
        } else {
            Err(Refusal::LeaseExpired)
        }
    }

    /// Acks: the message is delivered, and removed at once when delivered messages are not retained.
    fn ack(&mut self, queue: &str, tokens: &[SimToken]) -> Vec<Result<(), Refusal>> {
        let mut outcomes = Vec::new();
        for token in tokens {
            let outcome = self.holds(queue, token).map(|id| {
                let now_ms = self.now_ms;
                let meta = &mut self.message_mut(id).meta;
                meta.state = MessageState::Delivered;
                meta.updated_at_ms = now_ms;
                meta.due_at_ms = 0;
                self.notice(NoticeKind::Acked, id, None);
                if self.config.retention_ms == 0 {
                    self.remove(id);
                }
            });
            outcomes.push(outcome);
        }
        outcomes
    }

    fn nack(&mut self, queue: &str, items: &[NackSpec]) -> Vec<Result<FailOutcome, Refusal>> {
        let mut outcomes = Vec::new();
        for item in items {
            let outcome = self.holds(queue, &item.token).map(|id| {
                let failure = (HistoryKind::Nacked, Detail::Text(item.error.clone()));
                self.fail(id, failure, item.delay_ms, item.dead)
            });
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Extends: the new deadline is now plus the lease asked for, or the default lease.
    fn extend(
        &mut self,
        queue: &str,
        items: &[(SimToken, Option<u64>)],
    ) -> Vec<Result<u64, Refusal>> {
        let mut outcomes = Vec::new();
        for (token, lease_ms) in items {
            let outcome = self.holds(queue, token).map(|id| {
                let now_ms = self.now_ms;
                let deadline_ms = now_ms + lease_ms.unwrap_or(self.config.lease_ms);
                let meta = &mut self.message_mut(id).meta;
                meta.updated_at_ms = now_ms;
                meta.due_at_ms = deadline_ms;
                deadline_ms
            });
            outcomes.push(outcome);
        }
        outcomes
    }

    /// A failed delivery: recorded in the history, then dead when asked or out of attempts, else
    /// retrying after the delay given or the backoff.
    fn fail(
        &mut self,
        id: u64,
        (kind, detail): (HistoryKind, Detail),
        delay_ms: Option<u64>,
        dead: bool,
    ) -> FailOutcome {
        let now_ms = self.now_ms;
        let policy = self.config.retry;
        let keep_count = self.config.history_keep_count as usize;
        let message = self.message_mut(id);
        let meta = &mut message.meta;
        let attempt = meta.attempt_count;
        let dead = dead || attempt >= meta.attempt_count_max;
        let event = ExpectedEvent {
            seq: meta.event_seq,
            kind,
            at_ms: now_ms,
            attempt,
            leased_at_ms: meta.leased_at_ms,
            detail: detail.clone(),
            dead,
        };
        meta.event_seq += 1;
        meta.updated_at_ms = now_ms;
        let outcome = if dead {
            meta.state = MessageState::Dead;
            meta.due_at_ms = 0;
            FailOutcome::Dead
        } else {
            let next_attempt_at_ms =
                now_ms + delay_ms.unwrap_or_else(|| backoff_ms(&policy, attempt));
            meta.state = MessageState::Retrying;
            meta.due_at_ms = next_attempt_at_ms;
            FailOutcome::Retrying { next_attempt_at_ms }
        };
        message.history.push(event);
        let excess = message.history.len().saturating_sub(keep_count);
        message.history.drain(..excess);
        let kind = if dead { NoticeKind::Dead } else { NoticeKind::Retrying };
        self.notice(kind, id, Some(detail));
        outcome
    }

    /// Acts on every deadline that has passed and forgets idempotency keys past their window;
    /// returns how many leases expired and how many keys were forgotten.
    fn expire_due(&mut self) -> (u64, u64) {
        let now_ms = self.now_ms;
        let due: Vec<u64> = (self.iter())
            .filter(|(_, message)| is_timed(message.meta.state))
            .filter(|(_, message)| message.meta.due_at_ms <= now_ms)
            .map(|(id, _)| id)
            .collect();
        let mut lease_expiry_count = 0;
        for id in due {
            let meta = &mut self.message_mut(id).meta;
            if meta.state == MessageState::Leased {
                lease_expiry_count += 1;
                self.fail(id, (HistoryKind::LeaseExpired, Detail::LeaseExpiry), None, false);
                continue;
            }
            meta.state = MessageState::Ready;
            meta.updated_at_ms = now_ms;
            meta.due_at_ms = 0;
            let queue_id = meta.queue_id;
            self.woken.insert(queue_id);
        }
        (lease_expiry_count, self.forget_idempotency())
    }

    /// Forgets the keys whose 24 h window has passed; returns how many.
    fn forget_idempotency(&mut self) -> u64 {
        let now_ms = self.now_ms;
        let before = self.idempotency.len();
        self.idempotency.retain(|_, record| record.created_at_ms + IDEMPOTENCY_WINDOW_MS > now_ms);
        (before - self.idempotency.len()) as u64
    }

    /// Removes the delivered messages whose retention has ended; returns how many.
    fn sweep(&mut self) -> u64 {
        let retention_ms = self.config.retention_ms;
        let now_ms = self.now_ms;
        let over: Vec<u64> = (self.iter())
            .filter(|(_, message)| message.meta.state == MessageState::Delivered)
            .filter(|(_, message)| message.meta.updated_at_ms + retention_ms <= now_ms)
            .map(|(id, _)| id)
            .collect();
        for &id in &over {
            self.notice(NoticeKind::Deleted, id, None);
            self.remove(id);
        }
        over.len() as u64
    }

    /// Pauses or resumes a queue; `false` when it does not exist. Resuming wakes its long polls.
    fn set_paused(&mut self, queue: &str, paused: bool) -> bool {
        let Some(queue_id) = self.queue_id(queue) else {
            return false;
        };
        if self.queues[queue_id.0 as usize].1 != paused {
            self.queues[queue_id.0 as usize].1 = paused;
            let kind = if paused { NoticeKind::Paused } else { NoticeKind::Resumed };
            let at_ms = self.now_ms;
            let notice =
                ExpectedNotice { kind, queue_id, id: None, attempt: 0, at_ms, detail: None };
            self.notices.push(notice);
            if !paused {
                self.woken.insert(queue_id);
            }
        }
        true
    }

    /// A restart changes nothing a client can see, except that keys past their window are forgotten
    /// and nobody is waiting for a wake-up any more.
    fn restart(&mut self) -> u64 {
        self.woken.clear();
        self.forget_idempotency()
    }

    /// What the broker should report after an operation, computed in one pass over the messages.
    fn summary(&self) -> Summary {
        let mut stats: Vec<QueueStats> = (self.queues.iter().enumerate())
            .map(|(index, (name, paused))| QueueStats {
                queue_id: QueueId(index as u32),
                name: name.to_string(),
                paused: *paused,
                counts: [0; 6],
                oldest_ready_enqueued_at_ms: None,
                settings: QueueSettings::default(),
            })
            .collect();
        let mut summary =
            Summary { stats: Vec::new(), earliest_deadline_ms: None, active_count: 0 };
        for (_, message) in self.iter() {
            let meta = &message.meta;
            let queue = &mut stats[meta.queue_id.0 as usize];
            queue.counts[meta.state.index()] += 1;
            // Ids increase with enqueue time, so the first ready message met is the oldest.
            if meta.state == MessageState::Ready && queue.oldest_ready_enqueued_at_ms.is_none() {
                queue.oldest_ready_enqueued_at_ms = Some(meta.enqueued_at_ms);
            }
            if is_timed(meta.state) {
                let earliest_ms = summary.earliest_deadline_ms.unwrap_or(u64::MAX);
                summary.earliest_deadline_ms = Some(earliest_ms.min(meta.due_at_ms));
            }
            summary.active_count += usize::from(is_active(meta.state));
        }
        summary.stats = stats;
        summary
    }

    /// Every message the store still holds, with its id, in id order.
    fn iter(&self) -> impl Iterator<Item = (u64, &ModelMessage)> + '_ {
        let slots = self.messages.iter().enumerate();
        slots.filter_map(|(index, slot)| slot.as_ref().map(|message| (index as u64 + 1, message)))
    }

    fn get(&self, id: u64) -> Option<&ModelMessage> {
        let index = usize::try_from(id.checked_sub(1)?).ok()?;
        self.messages.get(index)?.as_ref()
    }

    fn message(&self, id: u64) -> &ModelMessage {
        self.get(id).expect("the model only reads messages it holds")
    }

    fn remove(&mut self, id: u64) {
        self.messages[id as usize - 1] = None;
    }

    fn message_mut(&mut self, id: u64) -> &mut ModelMessage {
        let slot = self.messages.get_mut(id as usize - 1).and_then(Option::as_mut);
        slot.expect("the model only changes messages it holds")
    }
}

/// What the broker should report about its queues and timers at a given moment.
struct Summary {
    /// Indexed by queue id.
    stats: Vec<QueueStats>,
    earliest_deadline_ms: Option<u64>,
    active_count: usize,
}

/// The contract's backoff with no jitter: `min(initial * multiplier^(attempt-1), max)`, at least 1 ms.
///
/// The simulation only uses whole multipliers, so integer arithmetic gives the exact value.
fn backoff_ms(policy: &RetryPolicy, attempt: u32) -> u64 {
    let multiplier = policy.multiplier as u64;
    let mut delay_ms = policy.initial_ms.min(policy.max_ms);
    for _ in 1..attempt {
        delay_ms = delay_ms.saturating_mul(multiplier).min(policy.max_ms);
    }
    delay_ms.max(1)
}

// ---------------------------------------------------------------------------------------------------
// Operations and tokens
// ---------------------------------------------------------------------------------------------------

/// How the harness chose a lease token; shown in the failure log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    /// The newest token of a message leased in the target queue (it may have passed its deadline).
    Current,
    /// Any token issued earlier, in any queue.
    Stale,
    /// A real or made-up id with a nonce the broker never issues.
    Forged,
    /// What a token that failed to parse becomes.
    Malformed,
    /// A token issued by another queue.
    OtherQueue,
}

/// A lease token as the harness presents it, with the delivery it came from.
#[derive(Clone, Copy, Debug)]
struct SimToken {
    kind: TokenKind,
    token: Option<LeaseToken>,
    /// The attempt number of the delivery that issued the token: each lease increments the attempt
    /// count, so (id, attempt) names one delivery. 0 for forged and malformed tokens.
    attempt: u32,
}

/// One nack item as the harness sends it.
#[derive(Clone, Debug)]
struct NackSpec {
    token: SimToken,
    error: String,
    delay_ms: Option<u64>,
    dead: bool,
}

/// One simulated operation.
#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        queue: &'static str,
        messages: Vec<NewMessage>,
        idempotency: Option<IdempotencyKey>,
    },
    Lease {
        queue: &'static str,
        count_max: u32,
        lease_ms: Option<u64>,
    },
    Ack {
        queue: &'static str,
        tokens: Vec<SimToken>,
    },
    Nack {
        queue: &'static str,
        items: Vec<NackSpec>,
    },
    Extend {
        queue: &'static str,
        items: Vec<(SimToken, Option<u64>)>,
    },
    SetPaused {
        queue: &'static str,
        paused: bool,
    },
    /// Moves the clock, then fires the timers if `expire` (the storage thread ticks before each group).
    Advance {
        step_ms: u64,
        expire: bool,
    },
    /// Fires the timers without moving the clock.
    Expire,
    /// The storage thread's idle-time retention sweep over the store's due `expiry` entries.
    Sweep,
    /// Drops the broker and restores a new one from the store; `seed` is the new broker's.
    Restart {
        seed: u64,
    },
}

// ---------------------------------------------------------------------------------------------------
// The simulated store
// ---------------------------------------------------------------------------------------------------

/// The sled trees as maps with the same keys, changed only by applying the broker's changes.
#[derive(Default)]
struct SimStore {
    queues: BTreeMap<[u8; 4], QueueRecord>,
    meta: BTreeMap<[u8; 8], MessageMeta>,
    content: BTreeMap<[u8; 8], Vec<u8>>,
    history: BTreeMap<[u8; 8], History>,
    terminal: BTreeSet<[u8; 13]>,
    expiry: BTreeSet<[u8; 16]>,
    idempotency: BTreeMap<Vec<u8>, IdempotencyRecord>,
    next_id: Option<u64>,
}

impl SimStore {
    /// Applies changes in order, with the effect `Store::apply` gives them.
    fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change {
                Change::PutQueue { queue_id, record } => {
                    self.queues.insert(keys::queue_key(*queue_id), record.clone());
                }
                Change::PutMeta { id, meta } => {
                    self.meta.insert(keys::message_key(*id), meta.clone());
                }
                Change::PutContent { id, record } => {
                    self.content.insert(keys::message_key(*id), record.clone());
                }
                Change::RecordHistory { id, event, keep_count } => {
                    let history = self.history.entry(keys::message_key(*id)).or_default();
                    history.record(event.clone(), *keep_count as usize);
                }
                Change::DeleteMessage { id, queue_id, state } => {
                    let key = keys::message_key(*id);
                    self.meta.remove(&key);
                    self.content.remove(&key);
                    self.history.remove(&key);
                    self.terminal.remove(&keys::terminal_key(*queue_id, *state, *id));
                }
                Change::IndexTerminal { queue_id, state, id } => {
                    self.terminal.insert(keys::terminal_key(*queue_id, *state, *id));
                }
                Change::UnindexTerminal { queue_id, state, id } => {
                    self.terminal.remove(&keys::terminal_key(*queue_id, *state, *id));
                }
                Change::ExpireAt { at_ms, id } => {
                    self.expiry.insert(keys::expiry_key(*at_ms, *id));
                }
                Change::RemoveExpiry { at_ms, id } => {
                    self.expiry.remove(&keys::expiry_key(*at_ms, *id));
                }
                Change::PutIdempotency { queue_id, key, record } => {
                    self.idempotency.insert(keys::idempotency_key(*queue_id, key), *record);
                }
                Change::DeleteIdempotency { queue_id, key } => {
                    self.idempotency.remove(&keys::idempotency_key(*queue_id, key));
                }
                Change::SetNextId { next_id } => self.next_id = Some(*next_id),
            }
        }
    }

    /// The stored record of a message, as the storage thread reads it for a sweep.
    fn meta_of(&self, id: MessageId) -> Option<MessageMeta> {
        self.meta.get(&keys::message_key(id)).cloned()
    }

    /// The retention entries due at `now_ms`, oldest first, at most one sweep's chunk.
    fn expired(&self, now_ms: u64) -> Result<Vec<(u64, MessageId)>, String> {
        let end = keys::expiry_key(now_ms, MessageId(u64::MAX));
        let due = self.expiry.range(..=end).take(CONTROL_CHUNK_COUNT_MAX);
        due.map(|key| keys::decode_expiry_key(key).ok_or("undecodable expiry key".to_string()))
            .collect()
    }

    /// A new broker rebuilt from the store with the calls `store::recovery` makes, in key order;
    /// keys past their window are deleted from the store as recovery deletes them.
    fn restore(&mut self, config: BrokerConfig, now_ms: u64, seed: u64) -> Result<Broker, String> {
        let mut broker = Broker::new(config, now_ms, seed);
        for (key, record) in &self.queues {
            let queue_id = keys::decode_queue_key(key).ok_or("undecodable queue key")?;
            broker.restore_queue(queue_id, record.clone());
        }
        for (key, meta) in &self.meta {
            let id = keys::decode_message_key(key).ok_or("undecodable message key")?;
            broker.restore_message(id, meta.clone());
        }
        if let Some(next_id) = self.next_id {
            broker.restore_next_id(next_id);
        }
        let mut expired = Vec::new();
        for (key, record) in &self.idempotency {
            let decoded = keys::decode_idempotency_key(key);
            let (queue_id, key) = decoded.ok_or("undecodable idempotency key")?;
            broker.restore_idempotency(now_ms, queue_id, key, *record, &mut expired);
        }
        broker.finish_restore();
        self.apply(&expired);
        Ok(broker)
    }
}

// ---------------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------------

/// One seed's run: the broker, the model, the store the broker's changes built, and what the
/// harness remembers to check invariants the model cannot see (tokens and their nonces).
struct Sim {
    seed: u64,
    rng: Rng,
    queue_names: &'static [&'static str],
    config: BrokerConfig,
    broker: Broker,
    model: Model,
    store: SimStore,
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
    /// The highest id handed out so far.
    highest_id: u64,
    recent: VecDeque<(usize, Op)>,
    step: usize,
    coverage: Coverage,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
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
        };
        let broker_seed = rng.next_u64();
        Sim {
            seed,
            rng,
            queue_names,
            config,
            broker: Broker::new(config, START_MS, broker_seed),
            model: Model::new(config, START_MS),
            store: SimStore::default(),
            tokens_by_id: HashMap::new(),
            newest: BTreeMap::new(),
            issued: Vec::new(),
            acked: HashSet::new(),
            delivery_over_at_ms: HashMap::new(),
            highest_id: 0,
            recent: VecDeque::new(),
            step: 0,
            coverage: Coverage::default(),
        }
    }

    /// Every step, then a last restart so that every run ends with a full comparison.
    fn run(&mut self) -> Result<(), String> {
        for step in 1..=STEP_COUNT {
            self.step = step;
            let op = self.next_op();
            self.remember(&op);
            self.execute(&op)?;
        }
        self.step = STEP_COUNT + 1;
        let op = Op::Restart { seed: self.rng.next_u64() };
        self.remember(&op);
        self.execute(&op)
    }

    fn remember(&mut self, op: &Op) {
        if self.recent.len() == LOG_OPERATION_COUNT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.step, op.clone()));
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
        for (step, op) in &self.recent {
            text.push_str(&format!("  step {step}: {op:?}\n"));
        }
        text.push_str(&format!(
            "replay: OUTBOXD_SIM_SEED={} cargo test --features testing --test simulation\n",
            self.seed
        ));
        text
    }

    /// Runs one operation on the broker and the model, applies its changes to the store through
    /// the WAL frame codec, and checks.
    fn execute(&mut self, op: &Op) -> Result<(), String> {
        let mut changes = Vec::new();
        match op {
            Op::Enqueue { queue, messages, idempotency } => {
                self.enqueue(queue, messages, idempotency, &mut changes)?
            }
            Op::Lease { queue, count_max, lease_ms } => {
                self.lease(queue, *count_max, *lease_ms, &mut changes)?
            }
            Op::Ack { queue, tokens } => self.ack(queue, tokens, &mut changes)?,
            Op::Nack { queue, items } => self.nack(queue, items, &mut changes)?,
            Op::Extend { queue, items } => self.extend(queue, items, &mut changes)?,
            Op::SetPaused { queue, paused } => self.set_paused(queue, *paused, &mut changes)?,
            Op::Advance { step_ms, expire } => {
                self.model.now_ms += step_ms;
                if *expire {
                    self.expire_due(&mut changes);
                }
            }
            Op::Expire => self.expire_due(&mut changes),
            Op::Sweep => self.sweep(&mut changes)?,
            Op::Restart { seed } => self.restart(*seed)?,
        }
        let unordered = matches!(op, Op::Advance { .. } | Op::Expire | Op::Sweep);
        self.check_notices(unordered)?;
        let mut frame = Vec::new();
        codec::encode_changes_into(&changes, &mut frame);
        let replayed = codec::decode_changes(&frame)
            .map_err(|error| format!("a WAL frame does not decode: {error}"))?;
        self.store.apply(&replayed);
        let mut touched: BTreeSet<u64> = token_ids(op).into_iter().collect();
        for change in &changes {
            if let Change::PutMeta { id, .. } | Change::DeleteMessage { id, .. } = change {
                touched.insert(id.0);
            }
        }
        self.check_step(&touched)
    }
}

/// The message ids named by an operation's tokens.
fn token_ids(op: &Op) -> Vec<u64> {
    let tokens: Vec<&SimToken> = match op {
        Op::Ack { tokens, .. } => tokens.iter().collect(),
        Op::Nack { items, .. } => items.iter().map(|item| &item.token).collect(),
        Op::Extend { items, .. } => items.iter().map(|(token, _)| token).collect(),
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

/// Refused operations must leave nothing to persist.
fn expect_no_changes(what: &str, changes: &[Change]) -> Result<(), String> {
    if changes.is_empty() {
        Ok(())
    } else {
        Err(format!("{what} emitted changes: {changes:?}"))
    }
}

// ---------------------------------------------------------------------------------------------------
// Running operations on both sides
// ---------------------------------------------------------------------------------------------------

impl Sim {
    fn enqueue(
        &mut self,
        queue: &'static str,
        messages: &[NewMessage],
        idempotency: &Option<IdempotencyKey>,
        changes: &mut Vec<Change>,
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let key = idempotency.clone();
        let actual = self.broker.enqueue(now_ms, queue, messages.to_vec(), key, changes);
        let expected = self.model.enqueue(queue, messages, idempotency.as_ref());
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
        expect_no_changes("a repeated or conflicting enqueue", changes)
    }

    fn lease(
        &mut self,
        queue: &'static str,
        count_max: u32,
        lease_ms: Option<u64>,
        changes: &mut Vec<Change>,
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let grants = self.broker.lease(now_ms, queue, count_max, lease_ms, changes);
        let expected = self.model.lease(queue, count_max, lease_ms);
        let actual: Vec<(MessageId, MessageMeta)> =
            grants.iter().map(|grant| (grant.id, without_nonce(&grant.meta))).collect();
        if actual != expected {
            return Err(format!(
                "lease {count_max} from {queue}: broker granted {actual:?}, model {expected:?}"
            ));
        }
        let paused =
            self.model.queue_id(queue).is_some_and(|id| self.model.queues[id.0 as usize].1);
        self.coverage.paused_leases += u64::from(paused);
        if grants.is_empty() {
            return expect_no_changes("a lease that granted nothing", changes);
        }
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
        let earlier = self.tokens_by_id.get(&id.0).map_or(&[][..], Vec::as_slice);
        if let Some(last) = earlier.last() {
            if last.attempt >= grant.meta.attempt_count {
                return Err(format!(
                    "{id} attempt went from {} to {}",
                    last.attempt, grant.meta.attempt_count
                ));
            }
        }
        let nonce = Some(grant.token.nonce);
        if earlier.iter().any(|token| token.token.map(|token| token.nonce) == nonce) {
            return Err(format!("{id} was leased again with an old token's nonce"));
        }
        Ok(())
    }

    /// Remembers a granted token as current, and as a future stale token.
    fn issue(&mut self, grant: &Grant) {
        self.coverage.granted += 1;
        let token = SimToken {
            kind: TokenKind::Current,
            token: Some(grant.token),
            attempt: grant.meta.attempt_count,
        };
        let id = grant.id.0;
        self.tokens_by_id.entry(id).or_default().push(token);
        self.newest.insert(id, token);
        self.delivery_over_at_ms.insert(id, grant.meta.due_at_ms);
        if self.issued.len() == ISSUED_TOKEN_COUNT_MAX {
            let index = self.rng.below(ISSUED_TOKEN_COUNT_MAX as u64) as usize;
            self.issued.swap_remove(index);
        }
        self.issued.push(SimToken { kind: TokenKind::Stale, ..token });
    }

    fn ack(
        &mut self,
        queue: &'static str,
        tokens: &[SimToken],
        changes: &mut Vec<Change>,
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let raw: Vec<Option<LeaseToken>> = tokens.iter().map(|token| token.token).collect();
        let before: Vec<Option<bool>> = tokens.iter().map(|token| self.unfired(token)).collect();
        let actual = self.broker.ack(now_ms, queue, &raw, changes);
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
            return expect_no_changes("an ack of tokens that hold nothing", changes);
        }
        Ok(())
    }

    fn nack(
        &mut self,
        queue: &'static str,
        items: &[NackSpec],
        changes: &mut Vec<Change>,
    ) -> Result<(), String> {
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
        let actual = self.broker.nack(now_ms, queue, broker_items, changes);
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
            return expect_no_changes("a nack of tokens that hold nothing", changes);
        }
        Ok(())
    }

    fn extend(
        &mut self,
        queue: &'static str,
        items: &[(SimToken, Option<u64>)],
        changes: &mut Vec<Change>,
    ) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let broker_items: Vec<(Option<LeaseToken>, Option<u64>)> =
            items.iter().map(|(token, lease_ms)| (token.token, *lease_ms)).collect();
        let before: Vec<Option<bool>> =
            items.iter().map(|(token, _)| self.unfired(token)).collect();
        let actual = self.broker.extend(now_ms, queue, &broker_items, changes);
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
            return expect_no_changes("an extend of tokens that hold nothing", changes);
        }
        Ok(())
    }

    /// Whether `token`'s delivery is still the message's lease, as far as the timers know: then a
    /// `LeaseExpired` can only come from the deadline check, before the timer fired.
    fn unfired(&self, token: &SimToken) -> Option<bool> {
        let lease_token = token.token?;
        let message = self.model.get(lease_token.id.0)?;
        let meta = &message.meta;
        Some(meta.state == MessageState::Leased && meta.attempt_count == token.attempt)
    }

    fn count_refusal(&mut self, refusal: &Refusal, unfired: Option<bool>) {
        self.coverage.count_refusal(refusal);
        if *refusal == Refusal::LeaseExpired && unfired == Some(true) {
            self.coverage.lease_expired_before_its_timer += 1;
        }
    }

    fn set_paused(
        &mut self,
        queue: &'static str,
        paused: bool,
        changes: &mut Vec<Change>,
    ) -> Result<(), String> {
        let was_paused = self.model.queue_id(queue).map(|id| self.model.queues[id.0 as usize].1);
        let actual = self.broker.set_paused(self.model.now_ms, queue, paused, changes);
        let expected = self.model.set_paused(queue, paused);
        if actual != expected {
            return Err(format!("pausing {queue}: broker {actual}, model {expected}"));
        }
        if was_paused != Some(!paused) {
            return expect_no_changes("a pause that changed nothing", changes);
        }
        Ok(())
    }

    fn expire_due(&mut self, changes: &mut Vec<Change>) {
        self.broker.expire_due(self.model.now_ms, changes);
        let (lease_expiry_count, forgotten_count) = self.model.expire_due();
        self.coverage.leases_expired_by_timer += lease_expiry_count;
        self.coverage.keys_forgotten += forgotten_count;
    }

    /// Does what the storage thread's sweep does: each due retention entry, with the stored record.
    fn sweep(&mut self, changes: &mut Vec<Change>) -> Result<(), String> {
        let now_ms = self.model.now_ms;
        let due = self.store.expired(now_ms)?;
        if due.len() == CONTROL_CHUNK_COUNT_MAX {
            return Err("more retention entries are due than one sweep takes".to_string());
        }
        for (at_ms, id) in due {
            let stored = self.store.meta_of(id);
            self.broker.sweep(now_ms, at_ms, id, stored, changes);
        }
        self.coverage.swept += self.model.sweep();
        Ok(())
    }

    /// A crash and recovery: a new broker built from the store must equal the model, and so must
    /// the store (checked after recovery deleted the keys past their window).
    fn restart(&mut self, seed: u64) -> Result<(), String> {
        self.broker = self.store.restore(self.config, self.model.now_ms, seed)?;
        self.coverage.restarts += 1;
        self.coverage.keys_forgotten += self.model.restart();
        let now_ms = self.model.now_ms;
        let held = (self.model.iter())
            .filter(|(_, message)| message.meta.state == MessageState::Leased)
            .filter(|(_, message)| message.meta.due_at_ms > now_ms);
        self.coverage.leases_held_across_restart += held.count() as u64;
        self.check_store()?;
        self.check_all()
    }
}

// ---------------------------------------------------------------------------------------------------
// Drawing operations
// ---------------------------------------------------------------------------------------------------

impl Sim {
    /// Draws the next operation; the weights favour enqueue, lease and the clock.
    fn next_op(&mut self) -> Op {
        match self.rng.below(100) {
            0..=16 => self.enqueue_op(),
            17..=34 => self.lease_op(),
            35..=47 => self.ack_op(),
            48..=57 => self.nack_op(),
            58..=64 => self.extend_op(),
            65..=66 => Op::SetPaused { queue: self.pick_queue(), paused: self.rng.percent(50) },
            67..=91 => Op::Advance { step_ms: self.clock_step_ms(), expire: self.rng.percent(75) },
            92..=94 => Op::Expire,
            95..=97 => Op::Sweep,
            _ => Op::Restart { seed: self.rng.next_u64() },
        }
    }

    fn pick_queue(&mut self) -> &'static str {
        self.rng.pick(self.queue_names)
    }

    /// Usually the queue of a message that is leased now (so that tokens often hold), else any.
    fn pick_token_queue(&mut self) -> &'static str {
        let now_ms = self.model.now_ms;
        let leased: Vec<QueueId> = (self.model.iter())
            .filter(|(_, message)| message.meta.state == MessageState::Leased)
            .filter(|(_, message)| message.meta.due_at_ms > now_ms)
            .map(|(_, message)| message.meta.queue_id)
            .collect();
        if leased.is_empty() || self.rng.percent(25) {
            return self.pick_queue();
        }
        let queue_id = leased[self.rng.below(leased.len() as u64) as usize];
        self.model.queue_name(queue_id)
    }

    /// Mostly small steps (so leases and backoffs run out one by one), sometimes hours (so the 24 h
    /// idempotency window and the retention of delivered messages pass), and often exactly to a
    /// moment where something changes, or 1 ms before it, where off-by-one mistakes show.
    fn clock_step_ms(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=29 => self.rng.between(0, 20),
            30..=59 => self.rng.between(21, 5_000),
            60..=69 => self.rng.between(5_001, 120_000),
            70..=73 => self.rng.between(HOUR_MS, 30 * HOUR_MS),
            _ => self.boundary_step_ms(),
        }
    }

    /// A step to a future deadline, the end of a key's window or of a delivered message's
    /// retention, or to 1 ms before it; 1 ms when nothing is pending.
    fn boundary_step_ms(&mut self) -> u64 {
        let now_ms = self.model.now_ms;
        let retention_ms = self.config.retention_ms;
        let mut moments: Vec<u64> = Vec::new();
        for (_, message) in self.model.iter() {
            let meta = &message.meta;
            if is_timed(meta.state) {
                moments.push(meta.due_at_ms);
            }
            if meta.state == MessageState::Delivered {
                moments.push(meta.updated_at_ms + retention_ms);
            }
        }
        let key_ends = self.model.idempotency.values();
        moments.extend(key_ends.map(|record| record.created_at_ms + IDEMPOTENCY_WINDOW_MS));
        moments.retain(|moment_ms| *moment_ms > now_ms);
        if moments.is_empty() {
            return 1;
        }
        let moment_ms = moments[self.rng.below(moments.len() as u64) as usize];
        let early_ms = u64::from(self.rng.percent(30));
        moment_ms - now_ms - early_ms
    }

    /// A lease duration, or none for the default.
    fn lease_ms(&mut self) -> Option<u64> {
        if self.rng.percent(20) {
            None
        } else {
            Some(self.rng.pick(&LEASE_MS_CHOICES))
        }
    }

    fn enqueue_op(&mut self) -> Op {
        let queue = self.pick_queue();
        // Mostly small batches: the model's scans grow with the message count, and a seed needs
        // contention more than volume.
        let count =
            if self.rng.percent(75) { self.rng.between(1, 5) } else { self.rng.between(6, 20) };
        let mut messages = Vec::new();
        for index in 0..count {
            messages.push(self.new_message(index));
        }
        let idempotency = if self.rng.percent(40) {
            let key = self.rng.pick(&IDEMPOTENCY_KEYS).to_string();
            Some(IdempotencyKey { key, request_hash: if self.rng.percent(80) { 1 } else { 2 } })
        } else {
            None
        };
        Op::Enqueue { queue, messages, idempotency }
    }

    fn new_message(&mut self, index: u64) -> NewMessage {
        let now_ms = self.model.now_ms;
        let delivery = match self.rng.below(10) {
            0..=4 => Delivery::Now,
            5..=6 => Delivery::After { delay_ms: self.rng.between(0, 2_000) },
            7..=8 => Delivery::At { deliver_at_ms: now_ms - 5_000 + self.rng.between(0, 10_000) },
            _ => Delivery::At { deliver_at_ms: now_ms },
        };
        let attempt_count_max =
            if self.rng.percent(80) { Some(self.rng.between(1, 5) as u32) } else { None };
        // Content is opaque to the broker; distinct bytes show that each id kept its own.
        let content_record = ((self.step as u64) << 8 | index).to_le_bytes().to_vec();
        let priority = self.rng.between(0, 2) as i32 - 1;
        NewMessage { content_record, priority, attempt_count_max, delivery }
    }

    fn lease_op(&mut self) -> Op {
        let queue = self.pick_queue();
        let count_max = self.rng.between(1, 8) as u32;
        Op::Lease { queue, count_max, lease_ms: self.lease_ms() }
    }

    fn ack_op(&mut self) -> Op {
        let queue = self.pick_token_queue();
        let tokens = (0..self.rng.between(1, 4)).map(|_| self.token_for(queue)).collect();
        Op::Ack { queue, tokens }
    }

    fn nack_op(&mut self) -> Op {
        let queue = self.pick_token_queue();
        let mut items = Vec::new();
        for _ in 0..self.rng.between(1, 3) {
            let token = self.token_for(queue);
            let delay_ms =
                if self.rng.percent(40) { Some(self.rng.between(0, 3_000)) } else { None };
            let error = self.rng.pick(&ERROR_TEXTS).to_string();
            items.push(NackSpec { token, error, delay_ms, dead: self.rng.percent(15) });
        }
        Op::Nack { queue, items }
    }

    fn extend_op(&mut self) -> Op {
        let queue = self.pick_token_queue();
        let mut items = Vec::new();
        for _ in 0..self.rng.between(1, 3) {
            let token = self.token_for(queue);
            items.push((token, self.lease_ms()));
        }
        Op::Extend { queue, items }
    }

    /// A token to present to `queue`: current, stale, malformed, forged or from another queue.
    fn token_for(&mut self, queue: &'static str) -> SimToken {
        match self.rng.below(100) {
            0..=49 => self.current_token(queue),
            50..=69 => self.stale_token(),
            70..=77 => SimToken { kind: TokenKind::Malformed, token: None, attempt: 0 },
            78..=89 => self.forged_token(),
            _ => self.other_queue_token(queue),
        }
    }

    /// The newest token of a message leased in `queue`, or a stale one when there is none.
    fn current_token(&mut self, queue: &str) -> SimToken {
        let model = &self.model;
        self.newest.retain(|id, _| {
            model.get(*id).is_some_and(|message| message.meta.state == MessageState::Leased)
        });
        let queue_id = self.model.queue_id(queue);
        let candidates: Vec<SimToken> = (self.newest.iter())
            .filter(|(id, _)| model.get(**id).map(|message| message.meta.queue_id) == queue_id)
            .map(|(_, token)| *token)
            .collect();
        if candidates.is_empty() {
            return self.stale_token();
        }
        candidates[self.rng.below(candidates.len() as u64) as usize]
    }

    fn stale_token(&mut self) -> SimToken {
        if self.issued.is_empty() {
            return self.forged_token();
        }
        self.issued[self.rng.below(self.issued.len() as u64) as usize]
    }

    /// An existing or made-up id with an even nonce: the broker's nonces are odd, so it never holds.
    fn forged_token(&mut self) -> SimToken {
        let id = MessageId(self.rng.between(1, self.model.next_id + 2));
        let nonce = self.rng.next_u64() & !1;
        SimToken { kind: TokenKind::Forged, token: Some(LeaseToken { id, nonce }), attempt: 0 }
    }

    /// A token issued for a message of another queue, if one turns up in a few draws.
    fn other_queue_token(&mut self, queue: &str) -> SimToken {
        let queue_id = self.model.queue_id(queue);
        for _ in 0..4 {
            let token = self.stale_token();
            let Some(lease_token) = token.token else {
                continue;
            };
            let message = self.model.get(lease_token.id.0);
            if message.is_some_and(|message| Some(message.meta.queue_id) != queue_id) {
                return SimToken { kind: TokenKind::OtherQueue, ..token };
            }
        }
        self.stale_token()
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
        let active_count = self.broker.active_count();
        if active_count != summary.active_count {
            let expected = summary.active_count;
            return Err(format!("active messages: broker {active_count}, model {expected}"));
        }
        if self.step % FULL_CHECK_INTERVAL_STEPS == 0 {
            return self.check_all();
        }
        for &id in touched {
            self.check_message(id)?;
            self.check_stored_message(id)?;
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

    /// Every message, the active listings and the id counter, in the broker.
    fn check_all(&self) -> Result<(), String> {
        if self.broker.next_id() != self.model.next_id {
            let actual = self.broker.next_id();
            return Err(format!("next id: broker {actual}, model {}", self.model.next_id));
        }
        for (id, _) in self.model.iter() {
            self.check_message(id)?;
        }
        self.check_listings()
    }

    /// Listing a queue's active messages by state gives exactly the model's, in id order.
    fn check_listings(&self) -> Result<(), String> {
        for (index, _) in self.model.queues.iter().enumerate() {
            let queue_id = QueueId(index as u32);
            for state in ALL_STATES.into_iter().filter(|state| is_active(*state)) {
                let actual = self.broker.list_active(queue_id, state, None, false, usize::MAX);
                let expected: Vec<MessageId> = (self.model.iter())
                    .filter(|(_, message)| message.meta.queue_id == queue_id)
                    .filter(|(_, message)| message.meta.state == state)
                    .map(|(id, _)| MessageId(id))
                    .collect();
                if actual != expected {
                    let name = self.model.queue_name(queue_id);
                    return Err(format!("{name} lists {state:?} {actual:?}, model {expected:?}"));
                }
            }
        }
        Ok(())
    }

    /// One message's record in the broker, and which of its tokens hold, against the model.
    fn check_message(&self, id: u64) -> Result<(), String> {
        let model = self.model.get(id);
        let expected = model.filter(|message| is_active(message.meta.state));
        let actual = self.broker.active_meta(MessageId(id));
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
        let expected_nonce = match (meta.state, self.newest.get(&id)) {
            (MessageState::Leased, Some(token)) if token.attempt == meta.attempt_count => {
                token.token.map_or(0, |token| token.nonce)
            }
            (MessageState::Leased, newest) => {
                return Err(format!(
                    "message {id} is leased at attempt {} but its newest token is {newest:?}",
                    meta.attempt_count
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
        let holding: Vec<u32> = tokens.iter().filter(broker_holds).map(|t| t.attempt).collect();
        if holding.len() > 1 {
            return Err(format!("message {id} has valid tokens of attempts {holding:?}"));
        }
        let message = self.model.get(id);
        let queue = message.map_or("", |message| self.model.queue_name(message.meta.queue_id));
        let model_holding: Vec<u32> = (tokens.iter())
            .filter(|token| self.model.holds(queue, token).is_ok())
            .map(|token| token.attempt)
            .collect();
        if model_holding != holding {
            return Err(format!(
                "message {id}: tokens of attempts {holding:?} hold in the broker, \
                 {model_holding:?} in the model"
            ));
        }
        Ok(())
    }

    /// The store equals the model: queues, messages, listings, retention entries, keys, next id.
    fn check_store(&self) -> Result<(), String> {
        let store = &self.store;
        let expected_next_id = (self.model.next_id > 1).then_some(self.model.next_id);
        if store.next_id != expected_next_id {
            let actual = store.next_id;
            return Err(format!("stored next id {actual:?}, model {expected_next_id:?}"));
        }
        let expected_queues: Vec<QueueRecord> = (self.model.queues.iter())
            .map(|(name, paused)| QueueRecord {
                name: name.to_string(),
                paused: *paused,
                settings: QueueSettings::default(),
            })
            .collect();
        let stored_queues: Vec<QueueRecord> = store.queues.values().cloned().collect();
        let keys_in_order = (store.queues.keys().enumerate())
            .all(|(index, key)| *key == keys::queue_key(QueueId(index as u32)));
        if stored_queues != expected_queues || !keys_in_order {
            return Err(format!("stored queues {:?}, model {expected_queues:?}", store.queues));
        }
        let expected_count = self.model.iter().count();
        if store.meta.len() != expected_count {
            let actual = store.meta.len();
            return Err(format!("the store holds {actual} messages, the model {expected_count}"));
        }
        for (id, _) in self.model.iter() {
            self.check_stored_message(id)?;
        }
        self.check_stored_indexes()?;
        let expected_keys: BTreeMap<Vec<u8>, IdempotencyRecord> = (self.model.idempotency.iter())
            .map(|((queue_id, key), record)| (keys::idempotency_key(*queue_id, key), *record))
            .collect();
        if store.idempotency != expected_keys {
            let actual = &store.idempotency;
            return Err(format!("stored idempotency keys {actual:?}, model {expected_keys:?}"));
        }
        Ok(())
    }

    /// The `terminal` index lists exactly the dead and delivered messages, and the `expiry` index
    /// holds one entry per retained delivered message, at the end of its retention.
    fn check_stored_indexes(&self) -> Result<(), String> {
        let retention_ms = self.config.retention_ms;
        let mut terminal = BTreeSet::new();
        let mut expiry = BTreeSet::new();
        for (id, message) in self.model.iter() {
            let (meta, id) = (&message.meta, MessageId(id));
            if !is_active(meta.state) {
                terminal.insert(keys::terminal_key(meta.queue_id, meta.state, id));
            }
            if meta.state == MessageState::Delivered {
                expiry.insert(keys::expiry_key(meta.updated_at_ms + retention_ms, id));
            }
        }
        if self.store.terminal != terminal {
            let actual = &self.store.terminal;
            return Err(format!("stored terminal index {actual:?}, model {terminal:?}"));
        }
        if self.store.expiry != expiry {
            let actual = &self.store.expiry;
            return Err(format!("stored retention entries {actual:?}, model {expiry:?}"));
        }
        Ok(())
    }

    /// One message's stored record, content and history against the model (absent if it is gone).
    fn check_stored_message(&self, id: u64) -> Result<(), String> {
        let key = keys::message_key(MessageId(id));
        let stored = self.store.meta.get(&key);
        let Some(message) = self.model.get(id) else {
            if stored.is_some() || self.store.content.contains_key(&key) {
                return Err(format!("{id} is gone in the model but still stored: {stored:?}"));
            }
            return Ok(());
        };
        let stored = stored.ok_or(format!("{id} has no stored record"))?;
        if without_nonce(stored) != message.meta {
            let expected = &message.meta;
            return Err(format!("stored record of {id}: {stored:?}, model {expected:?}"));
        }
        self.check_nonce(id, stored)?;
        if self.store.content.get(&key) != Some(&message.content_record) {
            return Err(format!("stored content of {id} differs from what was enqueued"));
        }
        let events = self.store.history.get(&key).map_or(&[][..], |history| &history.events[..]);
        let same = events.len() == message.history.len()
            && events.iter().zip(&message.history).all(|(event, expected)| expected.matches(event));
        if !same {
            return Err(format!("stored history of {id}: {events:?}, model {:?}", message.history));
        }
        Ok(())
    }
}
