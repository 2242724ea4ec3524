//! The broker: every queue's in-memory state and the operations on it, pure and synchronous.
//!
//! The broker holds the scheduling record ([`MessageMeta`]) of every active message (scheduled,
//! ready, leased, retrying), a priority-ordered ready index per queue, per-state counters, the
//! idempotency keys of the last 24 hours and the timer wheel. Operations take `now_ms` and append the
//! [`Change`]s to persist; they never read the clock, the store or the network. Terminal messages
//! (dead, delivered) leave memory: they only live in the store.
//!
//! The storage thread is the only caller, so there is no locking here. Because the broker changes its
//! memory before the changes are durable, a failed WAL sync must stop all further writes (the storage
//! thread does), and replies go out only after the sync.

pub mod change;
mod control;
mod enqueue;
mod lease;
pub mod message;
mod notice;
pub mod retry;
pub mod transition;

pub use change::{Change, IdempotencyRecord, QueueRecord, QueueSettings};
pub use control::{ControlError, Edit};
pub use enqueue::{Delivery, EnqueueError, EnqueueOutcome, IdempotencyKey, NewMessage};
pub use lease::{AckOutcome, ExtendOutcome, FailOutcome, Grant, NackItem, NackOutcome, Refusal};
pub use message::{
    BodyKind, History, HistoryEvent, HistoryKind, LeaseToken, MessageContent, MessageId,
    MessageMeta, MessageState, QueueId, ALL_STATES,
};
pub use notice::{Notice, NoticeKind, ALL_NOTICE_KINDS};

use crate::timer::TimerWheel;
use retry::RetryPolicy;
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use transition::{next_state, Event};

/// Settings the broker applies to every queue that does not override them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BrokerConfig {
    /// Attempts before a message goes dead, when neither the message nor its queue says.
    pub attempt_count_max: u32,
    /// Backoff between failed deliveries.
    pub retry: RetryPolicy,
    /// Lease duration when the request does not say.
    pub lease_ms: u64,
    /// How long delivered messages stay visible; 0 removes them on ack.
    pub retention_ms: u64,
    /// How many history events are kept per message.
    pub history_keep_count: u32,
}

impl Default for BrokerConfig {
    /// The server's defaults, the same constants `outboxd serve` takes when no flag is given.
    fn default() -> BrokerConfig {
        use crate::limits::*;
        BrokerConfig {
            attempt_count_max: ATTEMPT_COUNT_DEFAULT,
            retry: RetryPolicy {
                initial_ms: BACKOFF_INITIAL_MS_DEFAULT,
                multiplier: BACKOFF_MULTIPLIER_DEFAULT,
                max_ms: BACKOFF_MAX_MS_DEFAULT,
                jitter: BACKOFF_JITTER_DEFAULT,
            },
            lease_ms: LEASE_MS_DEFAULT,
            retention_ms: RETENTION_MS_DEFAULT,
            history_keep_count: HISTORY_EVENT_COUNT_DEFAULT,
        }
    }
}

/// Counts of messages per state in one queue, indexed by `MessageState::index()`.
pub type StateCounts = [u64; 6];

/// What a person or a consumer may ask about one queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueStats {
    pub queue_id: QueueId,
    pub name: String,
    pub paused: bool,
    pub counts: StateCounts,
    /// When the oldest ready message was enqueued.
    pub oldest_ready_enqueued_at_ms: Option<u64>,
    pub settings: QueueSettings,
}

/// The in-memory state of one queue.
struct QueueState {
    name: String,
    paused: bool,
    settings: QueueSettings,
    /// Ready messages, highest priority first, then oldest id first.
    ready: BTreeSet<(Reverse<i32>, MessageId)>,
    /// Active messages by state (scheduled, ready, leased, retrying), in id order, for listing.
    members: [BTreeSet<MessageId>; ACTIVE_STATE_COUNT],
    counts: StateCounts,
}

/// Scheduled, ready, leased and retrying come first in `ALL_STATES`.
const ACTIVE_STATE_COUNT: usize = 4;

/// Every queue and every active message.
pub struct Broker {
    config: BrokerConfig,
    queue_ids: HashMap<String, QueueId>,
    /// Indexed by `QueueId.0`.
    queues: Vec<QueueState>,
    /// The scheduling record of every active message.
    active: HashMap<MessageId, MessageMeta>,
    /// One entry per armed deadline, keyed by message id; stale entries are skipped on expiry.
    timers: TimerWheel,
    idempotency: HashMap<(QueueId, String), IdempotencyRecord>,
    /// Idempotency keys in the order they were created, for forgetting them after the window.
    idempotency_order: VecDeque<(u64, QueueId, String)>,
    next_id: u64,
    rng: SplitMix64,
    /// Queues that gained ready messages since the last `take_woken`.
    woken: Vec<QueueId>,
    /// What happened since the last `take_notices`, for the event stream.
    notices: Vec<Notice>,
}

impl Broker {
    /// An empty broker; `seed` drives lease nonces and backoff jitter.
    pub fn new(config: BrokerConfig, now_ms: u64, seed: u64) -> Broker {
        Broker {
            config,
            queue_ids: HashMap::new(),
            queues: Vec::new(),
            active: HashMap::new(),
            timers: TimerWheel::new(now_ms),
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            next_id: 1,
            rng: SplitMix64(seed),
            woken: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// Counts, flags and settings of the queue named `name`, if it exists.
    pub fn queue_stats(&self, name: &str) -> Option<QueueStats> {
        let queue_id = *self.queue_ids.get(name)?;
        Some(self.stats_of(queue_id))
    }

    /// Stats of every queue, by name.
    pub fn all_queue_stats(&self) -> Vec<QueueStats> {
        let mut all: Vec<QueueStats> =
            (0..self.queues.len()).map(|index| self.stats_of(QueueId(index as u32))).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn stats_of(&self, queue_id: QueueId) -> QueueStats {
        let queue = &self.queues[queue_id.0 as usize];
        QueueStats {
            queue_id,
            name: queue.name.clone(),
            paused: queue.paused,
            counts: queue.counts,
            oldest_ready_enqueued_at_ms: self.oldest_ready(queue).map(|meta| meta.enqueued_at_ms),
            settings: queue.settings.clone(),
        }
    }

    /// The ready message with the smallest id (ids increase in enqueue order).
    fn oldest_ready(&self, queue: &QueueState) -> Option<&MessageMeta> {
        let oldest = *queue.members[MessageState::Ready.index()].first()?;
        self.active.get(&oldest)
    }

    /// The queue id of `name`, if it exists.
    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        self.queue_ids.get(name).copied()
    }

    /// The scheduling record of an active message.
    pub fn active_meta(&self, id: MessageId) -> Option<&MessageMeta> {
        self.active.get(&id)
    }

    /// Number of active messages (held in memory).
    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// The earliest armed deadline, so the storage thread knows how long it may sleep.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.next_deadline_ms()
    }

    /// The queues that gained ready messages since the last call, each once.
    pub fn take_woken(&mut self) -> Vec<QueueId> {
        let mut woken = std::mem::take(&mut self.woken);
        woken.sort_unstable();
        woken.dedup();
        woken
    }

    /// The name of a queue id handed out by this broker.
    pub fn queue_name(&self, queue_id: QueueId) -> &str {
        &self.queues[queue_id.0 as usize].name
    }

    /// The next id the broker will hand out.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Restores a queue from the store at startup.
    pub fn restore_queue(&mut self, queue_id: QueueId, record: QueueRecord) {
        let index = queue_id.0 as usize;
        while self.queues.len() <= index {
            self.queues.push(QueueState::new(String::new()));
        }
        self.queue_ids.insert(record.name.clone(), queue_id);
        self.queues[index].name = record.name;
        self.queues[index].paused = record.paused;
        self.queues[index].settings = record.settings;
    }

    /// Restores a message from the store at startup: counts it, and indexes and arms it if active.
    ///
    /// Overdue deadlines are armed as they are and fire on the first `expire_due`, so a message that
    /// was leased when the server stopped becomes available when its lease would have expired.
    pub fn restore_message(&mut self, id: MessageId, meta: MessageMeta) {
        assert!(
            (meta.queue_id.0 as usize) < self.queues.len(),
            "message {id} names queue {} that was not restored",
            meta.queue_id.0
        );
        self.next_id = self.next_id.max(id.0 + 1);
        let queue = &mut self.queues[meta.queue_id.0 as usize];
        queue.counts[meta.state.index()] += 1;
        if !meta.state.is_active() {
            return;
        }
        if meta.state == MessageState::Ready {
            queue.ready.insert((Reverse(meta.priority), id));
        }
        queue.members[meta.state.index()].insert(id);
        if meta.state.is_timed() {
            self.timers.insert(meta.due_at_ms, id.0);
        }
        self.active.insert(id, meta);
    }

    /// Restores an idempotency key at startup; keys past their window are forgotten (with a change).
    pub fn restore_idempotency(
        &mut self,
        now_ms: u64,
        queue_id: QueueId,
        key: String,
        record: IdempotencyRecord,
        changes: &mut Vec<Change>,
    ) {
        if record.created_at_ms.saturating_add(crate::limits::IDEMPOTENCY_WINDOW_MS) <= now_ms {
            changes.push(Change::DeleteIdempotency { queue_id, key });
            return;
        }
        self.idempotency_order.push_back((record.created_at_ms, queue_id, key.clone()));
        self.idempotency.insert((queue_id, key), record);
    }

    /// Restores the id counter at startup (it never goes down).
    pub fn restore_next_id(&mut self, next_id: u64) {
        self.next_id = self.next_id.max(next_id);
    }

    /// Sorts the restored idempotency keys by age; call once after restoring them all.
    pub fn finish_restore(&mut self) {
        self.idempotency_order.make_contiguous().sort_unstable_by_key(|entry| entry.0);
    }

    /// Fires every timer due at `now_ms` and forgets expired idempotency keys.
    pub fn expire_due(&mut self, now_ms: u64, changes: &mut Vec<Change>) {
        let mut fired = Vec::new();
        self.timers.expire(now_ms, &mut fired);
        for (deadline_ms, key) in fired {
            self.fire(now_ms, deadline_ms, MessageId(key), changes);
        }
        self.forget_idempotency(now_ms, changes);
    }

    /// Acts on one fired timer, unless it is stale (the message moved on or its deadline changed).
    fn fire(&mut self, now_ms: u64, deadline_ms: u64, id: MessageId, changes: &mut Vec<Change>) {
        let Some(meta) = self.active.get(&id) else {
            return;
        };
        if !meta.state.is_timed() || meta.due_at_ms != deadline_ms {
            return;
        }
        match meta.state {
            MessageState::Scheduled | MessageState::Retrying => {
                self.transition(id, Event::Due, now_ms, 0, changes);
            }
            MessageState::Leased => {
                let text = "lease expired before the consumer acked, nacked or extended it";
                let failure = lease::Failure {
                    kind: HistoryKind::LeaseExpired,
                    error: text.to_string(),
                    delay_ms: None,
                    dead: false,
                };
                self.fail(id, now_ms, failure, changes);
            }
            _ => unreachable!("is_timed covers exactly these states"),
        }
    }

    fn forget_idempotency(&mut self, now_ms: u64, changes: &mut Vec<Change>) {
        let window_ms = crate::limits::IDEMPOTENCY_WINDOW_MS;
        while let Some((created_at_ms, _, _)) = self.idempotency_order.front() {
            if created_at_ms.saturating_add(window_ms) > now_ms {
                break;
            }
            let Some((_, queue_id, key)) = self.idempotency_order.pop_front() else {
                break;
            };
            self.idempotency.remove(&(queue_id, key.clone()));
            changes.push(Change::DeleteIdempotency { queue_id, key });
        }
    }

    /// The id of the queue named `name`, creating it (with a change) on first use.
    fn intern_queue(&mut self, name: &str, changes: &mut Vec<Change>) -> QueueId {
        if let Some(queue_id) = self.queue_ids.get(name) {
            return *queue_id;
        }
        let index = u32::try_from(self.queues.len()).expect("fewer than 2^32 queues");
        let queue_id = QueueId(index);
        self.queues.push(QueueState::new(name.to_string()));
        self.queue_ids.insert(name.to_string(), queue_id);
        self.persist_queue(queue_id, changes);
        queue_id
    }

    /// Emits the queue's current record.
    fn persist_queue(&self, queue_id: QueueId, changes: &mut Vec<Change>) {
        let queue = &self.queues[queue_id.0 as usize];
        let record = QueueRecord {
            name: queue.name.clone(),
            paused: queue.paused,
            settings: queue.settings.clone(),
        };
        changes.push(Change::PutQueue { queue_id, record });
    }

    /// The retry policy of a queue: its overrides over the server's defaults.
    fn retry_policy(&self, queue_id: QueueId) -> RetryPolicy {
        let settings = &self.queues[queue_id.0 as usize].settings;
        let default = self.config.retry;
        RetryPolicy {
            initial_ms: settings.backoff_initial_ms.unwrap_or(default.initial_ms),
            multiplier: settings.backoff_multiplier.unwrap_or(default.multiplier),
            max_ms: settings.backoff_max_ms.unwrap_or(default.max_ms),
            jitter: settings.backoff_jitter.unwrap_or(default.jitter),
        }
    }

    /// Moves an active message through the state machine and keeps indexes, counters and timers in
    /// step. `due_at_ms` is the new deadline for timed states and ignored otherwise.
    ///
    /// Panics when the state machine refuses: callers check states first, so a refusal is a bug.
    fn transition(
        &mut self,
        id: MessageId,
        event: Event,
        now_ms: u64,
        due_at_ms: u64,
        changes: &mut Vec<Change>,
    ) -> MessageMeta {
        self.transition_with(id, event, now_ms, due_at_ms, changes, |_| {})
    }

    /// Like [`Broker::transition`], with `adjust` applied to the record before it is persisted.
    fn transition_with(
        &mut self,
        id: MessageId,
        event: Event,
        now_ms: u64,
        due_at_ms: u64,
        changes: &mut Vec<Change>,
        adjust: impl FnOnce(&mut MessageMeta),
    ) -> MessageMeta {
        let mut meta = self.active.remove(&id).expect("transition of an active message");
        let from = meta.state;
        let to = next_state(from, event).unwrap_or_else(|error| panic!("message {id}: {error}"));
        let queue_id = meta.queue_id;
        let queue = &mut self.queues[queue_id.0 as usize];
        if from == MessageState::Ready {
            let removed = queue.ready.remove(&(Reverse(meta.priority), id));
            assert!(removed, "ready message {id} missing from its ready index");
        }
        if from.is_active() {
            queue.members[from.index()].remove(&id);
        } else {
            changes.push(Change::UnindexTerminal { queue_id, state: from, id });
        }
        queue.counts[from.index()] -= 1;
        queue.counts[to.index()] += 1;
        meta.state = to;
        meta.updated_at_ms = now_ms;
        meta.due_at_ms = if to.is_timed() { due_at_ms } else { 0 };
        if to != MessageState::Leased {
            meta.lease_nonce = 0;
        }
        adjust(&mut meta);
        if to == MessageState::Ready {
            queue.ready.insert((Reverse(meta.priority), id));
            self.woken.push(queue_id);
        }
        if to.is_active() {
            queue.members[to.index()].insert(id);
        }
        if to.is_timed() {
            self.timers.insert(meta.due_at_ms, id.0);
        }
        self.notice_of(event, id, &meta, now_ms);
        changes.push(Change::PutMeta { id, meta: meta.clone() });
        if to.is_active() {
            self.active.insert(id, meta.clone());
        } else {
            self.enter_terminal(id, &meta, now_ms, changes);
        }
        meta
    }

    /// Lists a message that became dead or delivered, and arms its removal after the retention.
    fn enter_terminal(
        &mut self,
        id: MessageId,
        meta: &MessageMeta,
        now_ms: u64,
        changes: &mut Vec<Change>,
    ) {
        let queue_id = meta.queue_id;
        let retention_ms = self.retention_of(queue_id, meta.state);
        if retention_ms == Some(0) {
            self.queues[queue_id.0 as usize].counts[meta.state.index()] -= 1;
            changes.push(Change::DeleteMessage { id, queue_id, state: meta.state });
            return;
        }
        changes.push(Change::IndexTerminal { queue_id, state: meta.state, id });
        if let Some(retention_ms) = retention_ms {
            changes.push(Change::ExpireAt { at_ms: now_ms.saturating_add(retention_ms), id });
        }
    }

    /// Records what a transition means for the event stream (failures are noticed by `fail`, with
    /// their error text; timer moves to ready and extensions are not news).
    fn notice_of(&mut self, event: Event, id: MessageId, meta: &MessageMeta, now_ms: u64) {
        let kind = match event {
            Event::Lease => NoticeKind::Leased,
            Event::Ack => NoticeKind::Acked,
            Event::Retry => NoticeKind::Retried,
            Event::Reschedule { .. } => NoticeKind::Rescheduled,
            Event::Due | Event::Extend | Event::Fail { .. } => return,
        };
        self.notices.push(Notice::about(kind, id, meta, now_ms, None));
    }

    /// What happened since the last call, oldest first.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// A uniformly drawn number in [0, 1).
    fn random_unit(&mut self) -> f64 {
        (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl QueueState {
    fn new(name: String) -> QueueState {
        QueueState {
            name,
            paused: false,
            settings: QueueSettings::default(),
            ready: BTreeSet::new(),
            members: Default::default(),
            counts: [0; 6],
        }
    }
}

/// A small, fast, seedable generator (SplitMix64) for lease nonces and jitter.
///
/// Nonces need to be unpredictable enough that a stale token never matches a new delivery by
/// chance, not cryptographically secret: access control is the job of API tokens.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
