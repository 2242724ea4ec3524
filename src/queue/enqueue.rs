//! Enqueue: a batch of new messages, all or nothing, deduplicated by idempotency key.

use super::{
    Broker, Change, IdempotencyRecord, MessageId, MessageMeta, MessageState, Notice, NoticeKind,
    QueueId,
};
use std::cmp::Reverse;

/// When a new message may first be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Ready at once.
    Now,
    /// Ready this many milliseconds after it is accepted.
    After { delay_ms: u64 },
    /// Ready at this time (Unix epoch milliseconds); a past time means at once.
    At { deliver_at_ms: u64 },
}

/// One message of a batch, validated and with its content already encoded for the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// The encoded `MessageContent` record.
    pub content_record: Vec<u8>,
    pub priority: i32,
    /// Attempts before it goes dead; `None` takes the broker's default.
    pub attempt_count_max: Option<u32>,
    pub delivery: Delivery,
}

/// An `Idempotency-Key` with the digest of the request that carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: u64,
}

/// The ids a batch received, and whether it was a repeat of an earlier request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnqueueOutcome {
    pub first_id: MessageId,
    pub count: u32,
    /// True when the idempotency key had been used with the same request: nothing was stored.
    pub duplicate: bool,
}

impl EnqueueOutcome {
    /// Every id of the batch, in order.
    pub fn ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        (0..u64::from(self.count)).map(|offset| MessageId(self.first_id.0 + offset))
    }
}

/// Why a batch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// The idempotency key was already used with a different request body.
    IdempotencyConflict,
}

impl Broker {
    /// Accepts a batch into `queue`: all of it, or (on an idempotency conflict) none of it.
    ///
    /// A repeated request (same key, same digest, within the window) returns the original ids and
    /// changes nothing. The batch must not be empty: the HTTP layer refuses empty batches.
    pub fn enqueue(
        &mut self,
        now_ms: u64,
        queue: &str,
        messages: Vec<NewMessage>,
        idempotency: Option<IdempotencyKey>,
        changes: &mut Vec<Change>,
    ) -> Result<EnqueueOutcome, EnqueueError> {
        assert!(!messages.is_empty(), "empty batches are refused before the broker");
        let count = u32::try_from(messages.len()).expect("batch count is bounded by limits");
        if let Some(key) = &idempotency {
            if let Some(outcome) = self.repeated(queue, key)? {
                return Ok(outcome);
            }
        }
        let queue_id = self.intern_queue(queue, changes);
        let first_id = MessageId(self.next_id);
        for message in messages {
            let id = MessageId(self.next_id);
            self.next_id += 1;
            self.accept(now_ms, queue_id, id, message, changes);
        }
        changes.push(Change::SetNextId { next_id: self.next_id });
        if let Some(IdempotencyKey { key, request_hash }) = idempotency {
            let record = IdempotencyRecord {
                request_hash,
                first_id: first_id.0,
                count,
                created_at_ms: now_ms,
            };
            self.idempotency_order.push_back((now_ms, queue_id, key.clone()));
            self.idempotency.insert((queue_id, key.clone()), record);
            changes.push(Change::PutIdempotency { queue_id, key, record });
        }
        Ok(EnqueueOutcome { first_id, count, duplicate: false })
    }

    /// The original outcome if `key` was already used in `queue`, or the conflict.
    fn repeated(
        &self,
        queue: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<EnqueueOutcome>, EnqueueError> {
        let Some(queue_id) = self.queue_ids.get(queue) else {
            return Ok(None);
        };
        let Some(record) = self.idempotency.get(&(*queue_id, key.key.clone())) else {
            return Ok(None);
        };
        if record.request_hash != key.request_hash {
            return Err(EnqueueError::IdempotencyConflict);
        }
        let first_id = MessageId(record.first_id);
        Ok(Some(EnqueueOutcome { first_id, count: record.count, duplicate: true }))
    }

    /// Stores one new message and indexes it as scheduled or ready.
    fn accept(
        &mut self,
        now_ms: u64,
        queue_id: QueueId,
        id: MessageId,
        message: NewMessage,
        changes: &mut Vec<Change>,
    ) {
        let ready_at_ms = match message.delivery {
            Delivery::Now => now_ms,
            Delivery::After { delay_ms } => now_ms.saturating_add(delay_ms),
            Delivery::At { deliver_at_ms } => deliver_at_ms,
        };
        let scheduled = ready_at_ms > now_ms;
        let state = if scheduled { MessageState::Scheduled } else { MessageState::Ready };
        let queue = &mut self.queues[queue_id.0 as usize];
        let attempt_count_max = message
            .attempt_count_max
            .or(queue.settings.max_attempts)
            .unwrap_or(self.config.attempt_count_max);
        let meta = MessageMeta {
            queue_id,
            state,
            priority: message.priority,
            attempt_count: 0,
            attempt_count_max,
            enqueued_at_ms: now_ms,
            updated_at_ms: now_ms,
            due_at_ms: if scheduled { ready_at_ms } else { 0 },
            lease_nonce: 0,
            leased_at_ms: 0,
            event_seq: 0,
        };
        changes.push(Change::PutContent { id, record: message.content_record });
        changes.push(Change::PutMeta { id, meta: meta.clone() });
        queue.counts[state.index()] += 1;
        queue.members[state.index()].insert(id);
        if scheduled {
            self.timers.insert(ready_at_ms, id.0);
        } else {
            queue.ready.insert((Reverse(meta.priority), id));
            self.woken.push(queue_id);
        }
        self.notices.push(Notice::about(NoticeKind::Enqueued, id, &meta, now_ms, None));
        self.active.insert(id, meta);
    }
}
