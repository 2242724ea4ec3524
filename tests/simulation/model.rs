//! The oracle: the documented semantics as a plain list of messages that every operation scans.
//!
//! It follows the contract literally (docs/api.md, `src/queue/lease.rs`, `src/queue/control.rs`)
//! and keeps no index: a lease sorts the ready messages of the queue, a timer tick scans for due
//! records, counts are counted. Like the broker, it acts on deadlines only when told to
//! (`expire_due`), except that a lease whose deadline has passed no longer holds. It knows nothing
//! of the catalog, checkpoints or the log: whatever the disk does, the records it shows must be
//! these.

use outboxd::limits::IDEMPOTENCY_WINDOW_MS;
use outboxd::queue::retry::RetryPolicy;
use outboxd::queue::{
    BrokerConfig, ContentLocation, ControlError, Delivery, EnqueueError, EnqueueOutcome,
    FailOutcome, HistoryEvent, HistoryKind, IdempotencyKey, IdempotencyRecord, MessageId,
    MessageMeta, MessageState, Notice, NoticeKind, QueueId, QueueSettings, QueueStats, Refusal,
};
use std::collections::{BTreeMap, BTreeSet};

use super::operations::{MessageSpec, NackSpec, SimToken};

/// How the broker's error for an expired lease starts (the contract says "lease expired").
const LEASE_EXPIRED_TEXT_PREFIX: &str = "lease expired";

/// A failure's text as the model expects it: a nack's own text or a person's action's
/// description, or the broker's lease-expiry text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
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

/// A history event as the model expects it.
#[derive(Clone, Debug)]
pub struct ExpectedEvent {
    seq: u32,
    kind: HistoryKind,
    at_ms: u64,
    attempt: u32,
    leased_at_ms: u64,
    detail: Detail,
    dead: bool,
}

impl ExpectedEvent {
    pub fn matches(&self, event: &HistoryEvent) -> bool {
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
pub struct ExpectedNotice {
    kind: NoticeKind,
    queue_id: QueueId,
    pub id: Option<MessageId>,
    attempt: u32,
    at_ms: u64,
    detail: Option<Detail>,
}

impl ExpectedNotice {
    pub fn matches(&self, notice: &Notice) -> bool {
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
pub struct ModelMessage {
    /// The record the broker should show, with `lease_nonce` always 0: nonces are random, so the
    /// harness checks them against the tokens it was handed instead.
    pub meta: MessageMeta,
    /// The events recorded, oldest first, at most `history_keep_count`.
    pub history: Vec<ExpectedEvent>,
    /// The content's bytes as the harness placed them in the log.
    pub content: Vec<u8>,
    /// How many times it was leased: with its id, this names one delivery (attempt counts do
    /// not, since a person may reset them).
    pub delivery_count: u32,
}

/// One queue as the model sees it.
#[derive(Clone, Debug)]
pub struct ModelQueue {
    pub name: &'static str,
    pub paused: bool,
    pub settings: QueueSettings,
}

/// What a person's action on one message should lead to: refused, or done.
pub type ActionOutcome = Result<(), ControlError>;

/// Every stored message in one list, scanned by every operation.
#[derive(Clone)]
pub struct Model {
    pub config: BrokerConfig,
    pub now_ms: u64,
    /// In creation order: the position is the queue id.
    pub queues: Vec<ModelQueue>,
    /// Every message ever enqueued, at index `id - 1` (ids are handed out densely from 1); `None`
    /// once it is removed (deleted by a person, by retention, or a retention of 0).
    messages: Vec<Option<ModelMessage>>,
    pub idempotency: BTreeMap<(QueueId, String), IdempotencyRecord>,
    pub next_id: u64,
    /// Queues that gained a ready message (or were resumed) since the broker was last asked.
    pub woken: BTreeSet<QueueId>,
    /// What the event stream should publish for the current operation.
    pub notices: Vec<ExpectedNotice>,
}

/// `meta` with the lease nonce cleared, for comparing with the model.
pub fn without_nonce(meta: &MessageMeta) -> MessageMeta {
    MessageMeta { lease_nonce: 0, ..meta.clone() }
}

impl Model {
    pub fn new(config: BrokerConfig, now_ms: u64) -> Model {
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

    pub fn queue_id(&self, name: &str) -> Option<QueueId> {
        let index = self.queues.iter().position(|queue| queue.name == name)?;
        Some(QueueId(index as u32))
    }

    pub fn queue_name(&self, queue_id: QueueId) -> &'static str {
        self.queues[queue_id.0 as usize].name
    }

    fn queue(&self, queue_id: QueueId) -> &ModelQueue {
        &self.queues[queue_id.0 as usize]
    }

    /// The queue named `name`, created with the defaults on first use.
    fn intern(&mut self, name: &'static str) -> QueueId {
        self.queue_id(name).unwrap_or_else(|| {
            self.queues.push(ModelQueue {
                name,
                paused: false,
                settings: QueueSettings::default(),
            });
            QueueId(self.queues.len() as u32 - 1)
        })
    }

    /// How long a terminal message of the queue is kept; `None` until a person acts.
    pub fn retention_ms(&self, queue_id: QueueId, state: MessageState) -> Option<u64> {
        let settings = &self.queue(queue_id).settings;
        match state {
            MessageState::Delivered => {
                Some(settings.retention_ms.unwrap_or(self.config.retention_ms))
            }
            MessageState::Dead => settings.dead_retention_ms,
            _ => None,
        }
    }

    /// Whether retention removes the message at the model's time (its queue's current settings).
    pub fn retention_passed(&self, meta: &MessageMeta) -> bool {
        let Some(retention_ms) = self.retention_ms(meta.queue_id, meta.state) else {
            return false;
        };
        meta.updated_at_ms + retention_ms <= self.now_ms
    }

    fn retry_policy(&self, queue_id: QueueId) -> RetryPolicy {
        let settings = &self.queue(queue_id).settings;
        let default = self.config.retry;
        RetryPolicy {
            initial_ms: settings.backoff_initial_ms.unwrap_or(default.initial_ms),
            multiplier: settings.backoff_multiplier.unwrap_or(default.multiplier),
            max_ms: settings.backoff_max_ms.unwrap_or(default.max_ms),
            jitter: settings.backoff_jitter.unwrap_or(default.jitter),
        }
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

    fn queue_notice(&mut self, kind: NoticeKind, queue_id: QueueId) {
        let at_ms = self.now_ms;
        let notice = ExpectedNotice { kind, queue_id, id: None, attempt: 0, at_ms, detail: None };
        self.notices.push(notice);
    }

    /// The contract's enqueue: a repeat returns the original ids, a conflict stores nothing.
    /// `contents` are where the harness placed each message's content.
    pub fn enqueue(
        &mut self,
        queue: &'static str,
        messages: &[MessageSpec],
        contents: &[ContentLocation],
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
        let queue_id = self.intern(queue);
        let first_id = self.next_id;
        for (message, content) in messages.iter().zip(contents) {
            self.accept(queue_id, message, *content);
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
    fn accept(&mut self, queue_id: QueueId, message: &MessageSpec, content: ContentLocation) {
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
        let default_attempts =
            self.queue(queue_id).settings.max_attempts.unwrap_or(self.config.attempt_count_max);
        let meta = MessageMeta {
            queue_id,
            state: if scheduled { MessageState::Scheduled } else { MessageState::Ready },
            priority: message.priority,
            attempt_count: 0,
            attempt_count_max: message.attempt_count_max.unwrap_or(default_attempts),
            enqueued_at_ms: now_ms,
            updated_at_ms: now_ms,
            due_at_ms: if scheduled { ready_at_ms } else { 0 },
            lease_nonce: 0,
            leased_at_ms: 0,
            event_seq: 0,
            content,
        };
        let id = self.next_id;
        let message = ModelMessage {
            meta,
            history: Vec::new(),
            content: message.content.clone(),
            delivery_count: 0,
        };
        self.messages.push(Some(message));
        self.next_id += 1;
        self.notice(NoticeKind::Enqueued, id, None);
    }

    /// Leases the best `count_max` ready messages: highest priority first, then oldest id. A paused
    /// queue leases nothing; no `lease_ms` means the queue's default lease, else the server's.
    pub fn lease(
        &mut self,
        queue: &str,
        count_max: u32,
        lease_ms: Option<u64>,
    ) -> Vec<(MessageId, MessageMeta)> {
        let Some(queue_id) = self.queue_id(queue) else {
            return Vec::new();
        };
        if self.queue(queue_id).paused {
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
        let default_ms = self.queue(queue_id).settings.lease_ms.unwrap_or(self.config.lease_ms);
        let deadline_ms = now_ms + lease_ms.unwrap_or(default_ms);
        let mut granted = Vec::new();
        for (_, id) in ready {
            let message = self.message_mut(id);
            message.delivery_count += 1;
            let meta = &mut message.meta;
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
    pub fn holds(&self, queue: &str, token: &SimToken) -> Result<u64, Refusal> {
        let (Some(queue_id), Some(lease_token)) = (self.queue_id(queue), token.token) else {
            return Err(Refusal::Unknown);
        };
        let id = lease_token.id;
        let message = self.get(id.0).filter(|message| message.meta.state.is_active());
        let Some(message) = message else {
            return Err(Refusal::NotActive(id));
        };
        let meta = &message.meta;
        if meta.queue_id != queue_id {
            return Err(Refusal::Unknown);
        }
        let current =
            meta.state == MessageState::Leased && message.delivery_count == token.delivery;
        if current && meta.due_at_ms > self.now_ms {
            Ok(id.0)
        } else {
            Err(Refusal::LeaseExpired)
        }
    }

    /// Acks: the message is delivered, and removed at once when its queue keeps no delivered
    /// messages.
    pub fn ack(&mut self, queue: &str, tokens: &[SimToken]) -> Vec<Result<(), Refusal>> {
        let mut outcomes = Vec::new();
        for token in tokens {
            let outcome = self.holds(queue, token).map(|id| {
                let now_ms = self.now_ms;
                let meta = &mut self.message_mut(id).meta;
                meta.state = MessageState::Delivered;
                meta.updated_at_ms = now_ms;
                meta.due_at_ms = 0;
                let queue_id = meta.queue_id;
                self.notice(NoticeKind::Acked, id, None);
                if self.retention_ms(queue_id, MessageState::Delivered) == Some(0) {
                    self.remove(id);
                }
            });
            outcomes.push(outcome);
        }
        outcomes
    }

    pub fn nack(&mut self, queue: &str, items: &[NackSpec]) -> Vec<Result<FailOutcome, Refusal>> {
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

    /// Extends: the new deadline is now plus the lease asked for, or the queue's default lease.
    pub fn extend(
        &mut self,
        queue: &str,
        items: &[(SimToken, Option<u64>)],
    ) -> Vec<Result<u64, Refusal>> {
        let mut outcomes = Vec::new();
        for (token, lease_ms) in items {
            let outcome = self.holds(queue, token).map(|id| {
                let now_ms = self.now_ms;
                let queue_id = self.message(id).meta.queue_id;
                let default_ms =
                    self.queue(queue_id).settings.lease_ms.unwrap_or(self.config.lease_ms);
                let deadline_ms = now_ms + lease_ms.unwrap_or(default_ms);
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
    /// retrying after the delay given or the queue's backoff. A dead message of a queue that keeps
    /// no dead messages is removed at once.
    fn fail(
        &mut self,
        id: u64,
        (kind, detail): (HistoryKind, Detail),
        delay_ms: Option<u64>,
        dead: bool,
    ) -> FailOutcome {
        let now_ms = self.now_ms;
        let queue_id = self.message(id).meta.queue_id;
        let policy = self.retry_policy(queue_id);
        let meta = &self.message(id).meta;
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
        self.record(id, event);
        let meta = &mut self.message_mut(id).meta;
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
        let kind = if dead { NoticeKind::Dead } else { NoticeKind::Retrying };
        self.notice(kind, id, Some(detail));
        if dead && self.retention_ms(queue_id, MessageState::Dead) == Some(0) {
            self.remove(id);
        }
        outcome
    }

    /// Adds an event to a message's history (and counts it in its record), keeping the newest.
    fn record(&mut self, id: u64, event: ExpectedEvent) {
        let keep_count = self.config.history_keep_count as usize;
        let message = self.message_mut(id);
        message.meta.event_seq += 1;
        message.history.push(event);
        let excess = message.history.len().saturating_sub(keep_count);
        message.history.drain(..excess);
    }

    /// Records a person's action in the history: the attempt count before it, no lease time.
    fn record_action(&mut self, id: u64, kind: HistoryKind, detail: String) {
        let meta = &self.message(id).meta;
        let event = ExpectedEvent {
            seq: meta.event_seq,
            kind,
            at_ms: self.now_ms,
            attempt: meta.attempt_count,
            leased_at_ms: 0,
            detail: Detail::Text(detail),
            dead: false,
        };
        self.record(id, event);
    }

    /// Acts on every deadline that has passed and forgets idempotency keys past their window;
    /// returns how many leases expired and how many keys were forgotten.
    pub fn expire_due(&mut self) -> (u64, u64) {
        let now_ms = self.now_ms;
        let due: Vec<u64> = (self.iter())
            .filter(|(_, message)| message.meta.state.is_timed())
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

    /// Removes a message whose retention passed (the sweep found it); false if it may not go.
    pub fn sweep_remove(&mut self, id: u64) -> bool {
        let eligible = self.get(id).is_some_and(|message| self.retention_passed(&message.meta));
        if eligible {
            self.notice(NoticeKind::Deleted, id, None);
            self.remove(id);
        }
        eligible
    }

    /// Pauses or resumes a queue; `false` when it does not exist. Resuming wakes its long polls.
    pub fn set_paused(&mut self, queue: &str, paused: bool) -> bool {
        let Some(queue_id) = self.queue_id(queue) else {
            return false;
        };
        if self.queue(queue_id).paused != paused {
            self.queues[queue_id.0 as usize].paused = paused;
            let kind = if paused { NoticeKind::Paused } else { NoticeKind::Resumed };
            self.queue_notice(kind, queue_id);
            if !paused {
                self.woken.insert(queue_id);
            }
        }
        true
    }

    /// Replaces a queue's settings, creating the queue.
    pub fn configure(&mut self, queue: &'static str, settings: QueueSettings) {
        let queue_id = self.intern(queue);
        self.queues[queue_id.0 as usize].settings = settings;
        self.queue_notice(NoticeKind::Configured, queue_id);
    }

    /// Whether a person may act on the message, and the refusal if not: unknown or removed
    /// messages are not found, and nobody but its consumer moves a leased message.
    fn actionable(&self, id: u64) -> Result<MessageState, ControlError> {
        match self.get(id).map(|message| message.meta.state) {
            None => Err(ControlError::NotFound),
            Some(MessageState::Leased) => Err(ControlError::Leased),
            Some(state) => Ok(state),
        }
    }

    /// A person deletes a message that is not leased.
    pub fn delete(&mut self, id: u64) -> ActionOutcome {
        self.actionable(id)?;
        self.notice(NoticeKind::Deleted, id, None);
        self.remove(id);
        Ok(())
    }

    /// A person sends a dead or retrying message back to ready, its attempts reset or kept.
    pub fn retry(&mut self, id: u64, reset_attempts: bool) -> ActionOutcome {
        let state = self.actionable(id)?;
        if !matches!(state, MessageState::Dead | MessageState::Retrying) {
            return Err(ControlError::WrongState(state));
        }
        let detail = if reset_attempts { "attempts reset" } else { "attempts kept" };
        self.record_action(id, HistoryKind::Retried, detail.to_string());
        let now_ms = self.now_ms;
        let meta = &mut self.message_mut(id).meta;
        meta.state = MessageState::Ready;
        meta.updated_at_ms = now_ms;
        meta.due_at_ms = 0;
        if reset_attempts {
            meta.attempt_count = 0;
        }
        let queue_id = meta.queue_id;
        self.woken.insert(queue_id);
        self.notice(NoticeKind::Retried, id, None);
        Ok(())
    }

    /// Refuses moving a leased or delivered message (reschedule, edit).
    fn movable(&self, id: u64) -> Result<(), ControlError> {
        match self.actionable(id)? {
            MessageState::Delivered => Err(ControlError::WrongState(MessageState::Delivered)),
            _ => Ok(()),
        }
    }

    /// Moves a message to its new delivery time: ready when that time has come, else scheduled.
    fn move_to(&mut self, id: u64, deliver_at_ms: u64) {
        let now_ms = self.now_ms;
        let meta = &mut self.message_mut(id).meta;
        meta.updated_at_ms = now_ms;
        if deliver_at_ms <= now_ms {
            meta.state = MessageState::Ready;
            meta.due_at_ms = 0;
            let queue_id = meta.queue_id;
            self.woken.insert(queue_id);
        } else {
            meta.state = MessageState::Scheduled;
            meta.due_at_ms = deliver_at_ms;
        }
        self.notice(NoticeKind::Rescheduled, id, None);
    }

    /// A person moves a message's delivery time.
    pub fn reschedule(&mut self, id: u64, deliver_at_ms: u64) -> ActionOutcome {
        self.movable(id)?;
        self.record_action(id, HistoryKind::Rescheduled, format!("deliver at {deliver_at_ms}"));
        self.move_to(id, deliver_at_ms);
        Ok(())
    }

    /// A person changes a message's priority, content or delivery time (`fields` names them, as
    /// the history says).
    pub fn edit(
        &mut self,
        id: u64,
        edit: &super::operations::EditSpec,
        content: Option<ContentLocation>,
    ) -> ActionOutcome {
        self.movable(id)?;
        if let (Some(bytes), Some(location)) = (&edit.content, content) {
            let message = self.message_mut(id);
            message.content = bytes.clone();
            message.meta.content = location;
        }
        if let Some(priority) = edit.priority {
            self.message_mut(id).meta.priority = priority;
        }
        self.record_action(id, HistoryKind::Edited, format!("changed {}", edit.fields.names()));
        match edit.deliver_at_ms {
            Some(deliver_at_ms) => self.move_to(id, deliver_at_ms),
            None => self.message_mut(id).meta.updated_at_ms = self.now_ms,
        }
        self.notice(NoticeKind::Edited, id, None);
        Ok(())
    }

    /// A redrive: every dead message of the queue back to ready, in id order; returns how many.
    pub fn redrive(&mut self, queue: &str, reset_attempts: bool) -> Option<u64> {
        let queue_id = self.queue_id(queue)?;
        let dead = self.ids_in(queue_id, MessageState::Dead);
        for id in &dead {
            self.retry(*id, reset_attempts).expect("a dead message can be retried");
        }
        Some(dead.len() as u64)
    }

    /// A purge: every message of the queue in `state` deleted, in id order; returns how many.
    pub fn purge(&mut self, queue: &str, state: MessageState) -> Option<u64> {
        let queue_id = self.queue_id(queue)?;
        let ids = self.ids_in(queue_id, state);
        for id in &ids {
            self.delete(*id).expect("a message that is not leased can be deleted");
        }
        Some(ids.len() as u64)
    }

    /// The ids of a queue's messages in `state`, in id order.
    pub fn ids_in(&self, queue_id: QueueId, state: MessageState) -> Vec<u64> {
        (self.iter())
            .filter(|(_, message)| message.meta.queue_id == queue_id)
            .filter(|(_, message)| message.meta.state == state)
            .map(|(id, _)| id)
            .collect()
    }

    /// A restart changes nothing a client can see, except that keys past their window are forgotten
    /// (by the storage thread's first tick) and nobody is waiting for a wake-up any more.
    pub fn restart(&mut self) -> u64 {
        self.woken.clear();
        self.forget_idempotency()
    }

    /// What the broker should report after an operation, computed in one pass over the messages.
    pub fn summary(&self) -> Summary {
        let mut stats: Vec<QueueStats> = (self.queues.iter().enumerate())
            .map(|(index, queue)| QueueStats {
                queue_id: QueueId(index as u32),
                name: queue.name.to_string(),
                paused: queue.paused,
                counts: [0; 6],
                oldest_ready_enqueued_at_ms: None,
                settings: queue.settings.clone(),
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
            if meta.state.is_timed() {
                let earliest_ms = summary.earliest_deadline_ms.unwrap_or(u64::MAX);
                summary.earliest_deadline_ms = Some(earliest_ms.min(meta.due_at_ms));
            }
            summary.active_count += usize::from(meta.state.is_active());
        }
        summary.stats = stats;
        summary
    }

    /// Every message still stored, with its id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &ModelMessage)> + '_ {
        let slots = self.messages.iter().enumerate();
        slots.filter_map(|(index, slot)| slot.as_ref().map(|message| (index as u64 + 1, message)))
    }

    pub fn get(&self, id: u64) -> Option<&ModelMessage> {
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
pub struct Summary {
    /// Indexed by queue id.
    pub stats: Vec<QueueStats>,
    pub earliest_deadline_ms: Option<u64>,
    pub active_count: usize,
}

/// The contract's backoff with no jitter: `min(initial * multiplier^(attempt-1), max)`, at least 1 ms.
///
/// The simulation only uses whole multipliers, so integer arithmetic gives the exact value.
fn backoff_ms(policy: &RetryPolicy, attempt: u32) -> u64 {
    assert_eq!(policy.jitter, 0.0, "the model predicts backoff without jitter");
    let multiplier = policy.multiplier as u64;
    let mut delay_ms = policy.initial_ms.min(policy.max_ms);
    for _ in 1..attempt {
        delay_ms = delay_ms.saturating_mul(multiplier).min(policy.max_ms);
    }
    delay_ms.max(1)
}
