//! Leases: lease, ack, nack, extend, and the failure path shared with lease expiry.

use super::message::{HistoryKind, LeaseToken};
use super::op::{lease_nonce, FailOutcome, Failed, Op};
use super::{Broker, MessageId, MessageMeta, MessageState, QueueId};
use std::cmp::Reverse;

/// One message handed to a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: MessageId,
    /// The token the consumer must present to ack, nack or extend this delivery.
    pub token: LeaseToken,
    /// The record after the lease (attempt count, deadline, enqueue time, priority).
    pub meta: MessageMeta,
}

/// Why a lease token does not hold its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The message is active in this queue but this token's delivery is over (expired, redelivered).
    LeaseExpired,
    /// The message is not active (delivered, dead, or never existed): the caller asks the store.
    NotActive(MessageId),
    /// The token is malformed or names a message of another queue.
    Unknown,
}

/// The result of acking one token.
pub type AckOutcome = Result<(), Refusal>;

/// The result of extending one lease: the new deadline.
pub type ExtendOutcome = Result<u64, Refusal>;

/// One item of a nack request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NackItem {
    pub token: Option<LeaseToken>,
    /// The consumer's error text (already truncated to the limit).
    pub error: String,
    /// Retry after this long instead of the backoff.
    pub delay_ms: Option<u64>,
    /// Dead-letter now, whatever the attempt count.
    pub dead: bool,
}

/// The result of nacking one token.
pub type NackOutcome = Result<FailOutcome, Refusal>;

/// One item of an extend request: the token and the lease duration asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendItem {
    pub token: Option<LeaseToken>,
    /// The new lease duration from now; `None` takes the queue's default.
    pub lease_ms: Option<u64>,
}

impl Broker {
    /// Leases up to `count_max` ready messages of `queue` for `lease_ms` (or the queue's default),
    /// best priority first. A paused queue leases nothing.
    pub fn lease(
        &mut self,
        now_ms: u64,
        queue: &str,
        count_max: u32,
        lease_ms: Option<u64>,
        ops: &mut Vec<Op>,
    ) -> Vec<Grant> {
        let Some(queue_id) = self.queue_id(queue) else {
            return Vec::new();
        };
        if self.queues[queue_id.0 as usize].paused {
            return Vec::new();
        }
        let deadline_ms = now_ms.saturating_add(self.lease_ms(queue_id, lease_ms));
        let nonce_seed = self.rng.next();
        let mut grants = Vec::new();
        let mut ids = Vec::new();
        while grants.len() < count_max as usize {
            let Some(&(Reverse(priority), id)) = self.queues[queue_id.0 as usize].ready.first()
            else {
                break;
            };
            if !self.ahead_of_cold(queue_id, priority, id) {
                // A cold page comes first: the storage thread loads it before leasing on.
                break;
            }
            let nonce = lease_nonce(nonce_seed, id);
            self.apply_lease(id, now_ms, deadline_ms, nonce);
            ids.push(id);
            let meta = self.active[&id].meta.clone();
            grants.push(Grant { id, token: LeaseToken { id, nonce }, meta });
        }
        if !ids.is_empty() {
            ops.push(Op::Lease { at_ms: now_ms, deadline_ms, nonce_seed, ids });
        }
        grants
    }

    /// Acks each token: its message is delivered.
    pub fn ack(
        &mut self,
        now_ms: u64,
        queue: &str,
        tokens: &[Option<LeaseToken>],
        ops: &mut Vec<Op>,
    ) -> Vec<AckOutcome> {
        let queue_id = self.queue_id(queue);
        let mut outcomes = Vec::with_capacity(tokens.len());
        let mut ids = Vec::new();
        for token in tokens {
            let outcome = self.held(now_ms, queue_id, *token).map(|id| {
                self.apply_ack(id, now_ms);
                ids.push(id);
            });
            outcomes.push(outcome);
        }
        if !ids.is_empty() {
            ops.push(Op::Ack { at_ms: now_ms, ids });
        }
        outcomes
    }

    /// Nacks each item: its message retries after a delay or goes dead, with the error recorded.
    pub fn nack(
        &mut self,
        now_ms: u64,
        queue: &str,
        items: Vec<NackItem>,
        ops: &mut Vec<Op>,
    ) -> Vec<NackOutcome> {
        let queue_id = self.queue_id(queue);
        let mut outcomes = Vec::with_capacity(items.len());
        let mut failed = Vec::new();
        for item in items {
            let outcome = self.held(now_ms, queue_id, item.token).map(|id| {
                let decided = self.decide_failure(
                    id,
                    now_ms,
                    HistoryKind::Nacked,
                    item.error,
                    item.delay_ms,
                    item.dead,
                );
                self.apply_fail(&decided, now_ms);
                let outcome = decided.outcome;
                failed.push(decided);
                outcome
            });
            outcomes.push(outcome);
        }
        if !failed.is_empty() {
            ops.push(Op::Fail { at_ms: now_ms, items: failed });
        }
        outcomes
    }

    /// Extends each lease to `now_ms + lease_ms` (or the queue's default lease).
    pub fn extend(
        &mut self,
        now_ms: u64,
        queue: &str,
        items: &[ExtendItem],
        ops: &mut Vec<Op>,
    ) -> Vec<ExtendOutcome> {
        let queue_id = self.queue_id(queue);
        let mut outcomes = Vec::with_capacity(items.len());
        let mut extended = Vec::new();
        for item in items {
            let outcome = self.held(now_ms, queue_id, item.token).map(|id| {
                let queue_id = self.active[&id].meta.queue_id;
                let deadline_ms = now_ms.saturating_add(self.lease_ms(queue_id, item.lease_ms));
                self.apply_extend(id, now_ms, deadline_ms);
                extended.push((id, deadline_ms));
                deadline_ms
            });
            outcomes.push(outcome);
        }
        if !extended.is_empty() {
            ops.push(Op::Extend { at_ms: now_ms, items: extended });
        }
        outcomes
    }

    /// The message a token holds right now, or why it holds none.
    fn held(
        &self,
        now_ms: u64,
        queue_id: Option<QueueId>,
        token: Option<LeaseToken>,
    ) -> Result<MessageId, Refusal> {
        let (Some(queue_id), Some(token)) = (queue_id, token) else {
            return Err(Refusal::Unknown);
        };
        let Some(meta) = self.active.get(&token.id).map(|resident| &resident.meta) else {
            return Err(Refusal::NotActive(token.id));
        };
        if meta.queue_id != queue_id {
            return Err(Refusal::Unknown);
        }
        let holds = meta.state == MessageState::Leased
            && meta.lease_nonce == token.nonce
            && meta.due_at_ms > now_ms;
        if holds {
            Ok(token.id)
        } else {
            Err(Refusal::LeaseExpired)
        }
    }

    /// The lease duration asked for, or the queue's default, or the server's.
    fn lease_ms(&self, queue_id: QueueId, asked_ms: Option<u64>) -> u64 {
        let settings = &self.queues[queue_id.0 as usize].settings;
        asked_ms.or(settings.lease_ms).unwrap_or(self.config.lease_ms)
    }

    /// Decides what a failed delivery of a leased message leads to.
    ///
    /// It goes dead when `dead` is asked for or its attempts are used up; otherwise it retries after
    /// `delay_ms`, or after its queue's backoff for its attempt count (with jitter).
    pub(super) fn decide_failure(
        &mut self,
        id: MessageId,
        now_ms: u64,
        kind: HistoryKind,
        error: String,
        delay_ms: Option<u64>,
        dead: bool,
    ) -> Failed {
        let meta = &self.active[&id].meta;
        let attempt = meta.attempt_count;
        let queue_id = meta.queue_id;
        let outcome = if dead || attempt >= meta.attempt_count_max {
            FailOutcome::Dead
        } else {
            let random = self.rng.unit();
            let policy = self.retry_policy(queue_id);
            let delay_ms = delay_ms.unwrap_or_else(|| policy.delay_ms(attempt, random));
            FailOutcome::Retrying { next_attempt_at_ms: now_ms.saturating_add(delay_ms) }
        };
        Failed { id, kind, error, outcome }
    }
}
