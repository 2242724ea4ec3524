//! Enqueue: a batch of new messages, all or nothing, deduplicated by idempotency key.

use super::message::ContentLocation;
use super::op::{Accepted, Op};
use super::{Broker, MessageId};

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

/// One message of a batch, validated, with its content already placed in the log frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Where the storage thread put the encoded content in the frame of this request.
    pub content: ContentLocation,
    pub priority: i32,
    /// Attempts before it goes dead; `None` takes the queue's or the broker's default.
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
        ops: &mut Vec<Op>,
    ) -> Result<EnqueueOutcome, EnqueueError> {
        assert!(!messages.is_empty(), "empty batches are refused before the broker");
        let count = u32::try_from(messages.len()).expect("batch count is bounded by limits");
        if let Some(key) = &idempotency {
            if let Some(outcome) = self.repeated(queue, key)? {
                return Ok(outcome);
            }
        }
        let queue_id = self.intern_queue(queue, ops);
        let first_id = MessageId(self.next_id);
        let settings = &self.queues[queue_id.0 as usize].settings;
        let default_attempts = settings.max_attempts.unwrap_or(self.config.attempt_count_max);
        let accepted: Vec<Accepted> = messages
            .into_iter()
            .map(|message| {
                let ready_at_ms = match message.delivery {
                    Delivery::Now => now_ms,
                    Delivery::After { delay_ms } => now_ms.saturating_add(delay_ms),
                    Delivery::At { deliver_at_ms } => deliver_at_ms,
                };
                Accepted {
                    priority: message.priority,
                    attempt_count_max: message.attempt_count_max.unwrap_or(default_attempts),
                    due_at_ms: if ready_at_ms > now_ms { ready_at_ms } else { 0 },
                    content: message.content,
                }
            })
            .collect();
        let idempotency = idempotency.map(|key| (key.key, key.request_hash));
        self.apply_enqueue(queue_id, first_id, now_ms, idempotency.clone(), &accepted);
        ops.push(Op::Enqueue {
            queue_id,
            first_id,
            at_ms: now_ms,
            idempotency,
            messages: accepted,
        });
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
}
