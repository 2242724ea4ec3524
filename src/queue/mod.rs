//! The broker: every queue's in-memory state and the operations on it, pure and synchronous.
//!
//! The broker holds the scheduling record ([`MessageMeta`]) of every active message (scheduled,
//! ready, leased, retrying), a priority-ordered ready index per queue, per-state counters, the
//! idempotency keys of the last 24 hours and the timer wheel. Dead and delivered messages live in
//! the catalog on disk; the broker keeps only those that changed since the last checkpoint
//! (`settled`), until the catalog has them.
//!
//! Every change is an [`Op`]: a live operation decides its op and applies it item by item through
//! the functions that recovery uses to apply logged ops ([`Broker::apply`]), so replaying the log
//! rebuilds exactly the state the live server had. Operations take `now_ms` and append their ops to
//! a list; they never read the clock, the disk or the network. The storage thread writes each
//! request's ops to the log as one frame and answers only after the frame is synced; because the
//! broker changes its memory first, a failed sync must stop all further writes (the storage thread
//! does).
//!
//! The broker also keeps the book of what a checkpoint must write to the catalog
//! (`checkpoint.rs`): which catalog pages changed, pending history events, the content bytes each
//! log segment still holds for stored messages.

mod apply;
mod checkpoint;
mod cold;
mod control;
mod enqueue;
mod lease;
pub mod message;
mod notice;
pub mod op;
pub mod records;
pub mod retry;
pub mod transition;

pub use apply::ApplyError;
pub use checkpoint::{
    page_of, PageChanges, SegmentUsage, Snapshot, TerminalCounts, PAGE_ID_BITS, PAGE_ID_COUNT,
};
pub use cold::ColdAhead;
pub use control::{ControlError, Edit, SettledView, StaleRead, Stored};
pub use enqueue::{Delivery, EnqueueError, EnqueueOutcome, IdempotencyKey, NewMessage};
pub use lease::{AckOutcome, ExtendItem, ExtendOutcome, Grant, NackItem, NackOutcome, Refusal};
pub use message::{
    BodyKind, ContentLocation, History, HistoryEvent, HistoryKind, LeaseToken, MessageContent,
    MessageId, MessageMeta, MessageState, QueueId, ALL_STATES,
};
pub use notice::{Notice, NoticeKind, ALL_NOTICE_KINDS};
pub use op::{Accepted, EditFields, FailOutcome, Failed, Op};
pub use records::{IdempotencyRecord, QueueRecord, QueueSettings};

use crate::hash::FastMap;
use crate::random::SplitMix64;
use crate::timer::{TimerHandle, TimerWheel};
use retry::RetryPolicy;
use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};
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
    /// How many ready messages are held in memory; the rest wait in the catalog (`cold.rs`).
    pub ready_resident_max: usize,
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
            ready_resident_max: READY_RESIDENT_DEFAULT,
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

/// What the broker knows about one message right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Its current record (active, or terminal and changed since the last checkpoint).
    Found(MessageMeta),
    /// It was removed since the last checkpoint.
    Removed,
    /// The broker does not hold it: the catalog, as of the durable checkpoint `epoch`, is current
    /// for it (it is terminal or absent there).
    InCatalog { epoch: u64 },
}

/// The in-memory state of one queue.
struct QueueState {
    name: String,
    paused: bool,
    settings: QueueSettings,
    /// Ready messages, highest priority first, then oldest id first.
    ready: BTreeSet<(Reverse<i32>, MessageId)>,
    /// Resident active messages by state (scheduled, ready, leased, retrying), in id order, for
    /// listing.
    members: [BTreeSet<MessageId>; ACTIVE_STATE_COUNT],
    /// Ready messages left in the catalog, per page (`cold.rs`).
    cold: cold::ColdReady,
    /// Every message of the queue by state, cold ones included.
    counts: StateCounts,
}

/// Scheduled, ready, leased and retrying come first in `ALL_STATES`.
const ACTIVE_STATE_COUNT: usize = 4;

/// An active message: its record and its armed timer.
struct Resident {
    meta: MessageMeta,
    /// The timer of a timed state (scheduled, leased, retrying); cancelled when the state changes.
    timer: Option<TimerHandle>,
}

/// A dead, delivered or removed message that changed since the last durable checkpoint.
struct Settled {
    /// Its record; `None` when it was removed.
    meta: Option<MessageMeta>,
    /// The checkpoint epoch that will write this change; 0 for a record read from the catalog and
    /// not changed since (the catalog already holds it).
    epoch: u64,
}

/// Every queue and every active message.
pub struct Broker {
    config: BrokerConfig,
    queue_ids: FastMap<String, QueueId>,
    /// Indexed by `QueueId.0`.
    queues: Vec<QueueState>,
    /// The scheduling record of every active message.
    active: FastMap<MessageId, Resident>,
    /// Terminal and removed messages changed since the last durable checkpoint.
    settled: FastMap<MessageId, Settled>,
    /// One entry per armed deadline, keyed by message id; cancelled when the message moves on.
    timers: TimerWheel,
    idempotency: FastMap<(QueueId, String), IdempotencyRecord>,
    /// Idempotency keys in the order they were created, for forgetting them after the window.
    idempotency_order: VecDeque<(u64, QueueId, String)>,
    next_id: u64,
    rng: SplitMix64,
    /// Queues that gained ready messages since the last `take_woken`.
    woken: Vec<QueueId>,
    /// What happened since the last `take_notices`, for the event stream.
    notices: Vec<Notice>,
    /// What the next checkpoint must write.
    book: checkpoint::Book,
    /// Ready messages restored into memory so far (startup only; see `restore_active`).
    restored_ready: usize,
}

impl Broker {
    /// An empty broker; `seed` drives lease nonces and backoff jitter.
    pub fn new(config: BrokerConfig, now_ms: u64, seed: u64) -> Broker {
        Broker {
            config,
            queue_ids: FastMap::default(),
            queues: Vec::new(),
            active: FastMap::default(),
            settled: FastMap::default(),
            timers: TimerWheel::new(now_ms),
            idempotency: FastMap::default(),
            idempotency_order: VecDeque::new(),
            next_id: 1,
            rng: SplitMix64(seed),
            woken: Vec::new(),
            notices: Vec::new(),
            book: checkpoint::Book::default(),
            restored_ready: 0,
        }
    }

    /// The settings every queue starts from.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
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
            oldest_ready_enqueued_at_ms: self.oldest_ready_enqueued_at_ms(queue_id),
            settings: queue.settings.clone(),
        }
    }

    /// When the oldest ready message was enqueued, resident or cold.
    fn oldest_ready_enqueued_at_ms(&self, queue_id: QueueId) -> Option<u64> {
        let queue = &self.queues[queue_id.0 as usize];
        let resident = queue.members[MessageState::Ready.index()]
            .first()
            .and_then(|id| self.active.get(id))
            .map(|resident| resident.meta.enqueued_at_ms);
        match (resident, self.oldest_cold_enqueued_at_ms(queue_id)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The queue id of `name`, if it exists.
    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        self.queue_ids.get(name).copied()
    }

    /// The scheduling record of an active message.
    pub fn active_meta(&self, id: MessageId) -> Option<&MessageMeta> {
        self.active.get(&id).map(|resident| &resident.meta)
    }

    /// What the broker knows of a message: its record, its removal, or that the catalog has it.
    pub fn lookup(&self, id: MessageId) -> Lookup {
        if let Some(resident) = self.active.get(&id) {
            return Lookup::Found(resident.meta.clone());
        }
        match self.settled.get(&id) {
            Some(Settled { meta: Some(meta), .. }) => Lookup::Found(meta.clone()),
            Some(Settled { meta: None, .. }) => Lookup::Removed,
            None => Lookup::InCatalog { epoch: self.book.durable_epoch },
        }
    }

    /// Whether the broker holds the message's current state (active, or settled since the last
    /// checkpoint, removal included).
    pub fn is_resident(&self, id: MessageId) -> bool {
        self.active.contains_key(&id) || self.settled.contains_key(&id)
    }

    /// Number of active messages (held in memory).
    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Number of armed timers.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// The earliest armed deadline (never later than it), so the storage thread knows how long it
    /// may sleep.
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

    /// The number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The next id the broker will hand out.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Fires every timer due at `now_ms` and forgets expired idempotency keys.
    ///
    /// A scheduled or retrying message whose time came becomes ready (one `Due` op); a leased
    /// message whose lease ran out fails (one `Fail` op), retrying after its backoff or going dead.
    pub fn expire_due(&mut self, now_ms: u64, ops: &mut Vec<Op>) {
        let mut fired = Vec::new();
        self.timers.expire(now_ms, &mut fired);
        let mut due_ids = Vec::new();
        let mut failed = Vec::new();
        for (deadline_ms, key) in fired {
            let id = MessageId(key);
            let Some(resident) = self.active.get_mut(&id) else { continue };
            // The wheel forgot the timer as it fired; the record must not cancel it again.
            resident.timer = None;
            let meta = &resident.meta;
            debug_assert!(meta.state.is_timed() && meta.due_at_ms == deadline_ms, "stale timer");
            if !meta.state.is_timed() || meta.due_at_ms != deadline_ms {
                continue;
            }
            match meta.state {
                MessageState::Scheduled | MessageState::Retrying => {
                    self.apply_due(id, now_ms);
                    due_ids.push(id);
                }
                MessageState::Leased => {
                    let text = "lease expired before the consumer acked, nacked or extended it";
                    let item = self.decide_failure(
                        id,
                        now_ms,
                        HistoryKind::LeaseExpired,
                        text.to_string(),
                        None,
                        false,
                    );
                    self.apply_fail(&item, now_ms);
                    failed.push(item);
                }
                _ => unreachable!("is_timed covers exactly these states"),
            }
        }
        if !due_ids.is_empty() {
            ops.push(Op::Due { at_ms: now_ms, ids: due_ids });
        }
        if !failed.is_empty() {
            ops.push(Op::Fail { at_ms: now_ms, items: failed });
        }
        self.forget_idempotency(now_ms);
    }

    /// Forgets idempotency keys whose window passed (in memory; the catalog drops them by age).
    pub fn forget_idempotency(&mut self, now_ms: u64) {
        let window_ms = crate::limits::IDEMPOTENCY_WINDOW_MS;
        while let Some((created_at_ms, _, _)) = self.idempotency_order.front() {
            if created_at_ms.saturating_add(window_ms) > now_ms {
                break;
            }
            let Some((created_at_ms, queue_id, key)) = self.idempotency_order.pop_front() else {
                break;
            };
            let entry = (queue_id, key);
            // The key may have been used again (and so re-created) after its first window.
            if self.idempotency.get(&entry).is_some_and(|r| r.created_at_ms == created_at_ms) {
                self.idempotency.remove(&entry);
            }
        }
    }

    /// Every idempotency key the broker remembers, by queue and key (tests compare brokers with
    /// it).
    #[cfg(any(test, feature = "testing"))]
    pub fn idempotency_keys(&self) -> Vec<(QueueId, String, IdempotencyRecord)> {
        let mut keys: Vec<(QueueId, String, IdempotencyRecord)> = self
            .idempotency
            .iter()
            .map(|((queue_id, key), record)| (*queue_id, key.clone(), *record))
            .collect();
        keys.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        keys
    }

    /// The id of the queue named `name`, creating it (with an op) on first use.
    fn intern_queue(&mut self, name: &str, ops: &mut Vec<Op>) -> QueueId {
        if let Some(queue_id) = self.queue_ids.get(name) {
            return *queue_id;
        }
        let queue_id = QueueId(u32::try_from(self.queues.len()).expect("fewer than 2^32 queues"));
        self.apply_create_queue(queue_id, name.to_string());
        ops.push(Op::CreateQueue { queue_id, name: name.to_string() });
        queue_id
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

    /// How long a terminal message of a queue stays before retention removes it; `None` forever.
    pub(super) fn retention_of(&self, queue_id: QueueId, state: MessageState) -> Option<u64> {
        let settings = &self.queues[queue_id.0 as usize].settings;
        match state {
            MessageState::Delivered => {
                Some(settings.retention_ms.unwrap_or(self.config.retention_ms))
            }
            MessageState::Dead => settings.dead_retention_ms,
            _ => None,
        }
    }

    /// Moves a resident message through the state machine and keeps indexes, counters, timers and
    /// the checkpoint book in step. `due_at_ms` is the new deadline for timed states and ignored
    /// otherwise.
    ///
    /// Panics when the message is not in `active` or the state machine refuses: callers check
    /// first (live operations) or validate the op (replay), so either is a bug.
    fn transition_with(
        &mut self,
        id: MessageId,
        event: Event,
        now_ms: u64,
        due_at_ms: u64,
        adjust: impl FnOnce(&mut MessageMeta),
    ) -> MessageMeta {
        let Resident { mut meta, timer } =
            self.active.remove(&id).expect("transition of a resident message");
        if let Some(timer) = timer {
            self.timers.cancel(timer);
        }
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
        } else if to.is_active() {
            self.book.revived.insert(id, self.book.epoch);
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
        let timer = to.is_timed().then(|| self.timers.insert(meta.due_at_ms, id.0));
        self.notice_of(event, id, &meta, now_ms);
        self.book.touch(id);
        if to.is_active() {
            self.active.insert(id, Resident { meta: meta.clone(), timer });
        } else {
            self.enter_terminal(id, meta.clone(), now_ms);
        }
        meta
    }

    /// Keeps a message that became dead or delivered until the catalog has it, and notes when its
    /// retention ends; a retention of 0 removes it at once.
    fn enter_terminal(&mut self, id: MessageId, meta: MessageMeta, now_ms: u64) {
        let queue_id = meta.queue_id;
        let retention_ms = self.retention_of(queue_id, meta.state);
        if retention_ms == Some(0) {
            self.queues[queue_id.0 as usize].counts[meta.state.index()] -= 1;
            self.book.forget_content(id, meta.content);
            self.book.drop_history(id);
            self.settle(id, None);
            return;
        }
        if let Some(retention_ms) = retention_ms {
            self.book.expire_at(now_ms.saturating_add(retention_ms), id);
        }
        self.settle(id, Some(meta));
    }

    /// Records a terminal or removed message's change until the next checkpoint writes it.
    fn settle(&mut self, id: MessageId, meta: Option<MessageMeta>) {
        self.book.touch(id);
        self.settled.insert(id, Settled { meta, epoch: self.book.epoch });
    }

    /// Records what a transition means for the event stream (failures are noticed by `apply_fail`,
    /// with their error text; timer moves to ready and extensions are not news).
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
}

impl QueueState {
    fn new(name: String) -> QueueState {
        QueueState {
            name,
            paused: false,
            settings: QueueSettings::default(),
            ready: BTreeSet::new(),
            members: Default::default(),
            cold: cold::ColdReady::default(),
            counts: [0; 6],
        }
    }
}

#[cfg(test)]
mod tests;
