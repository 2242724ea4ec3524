//! Leases: lease, ack, nack, extend, and the failure path shared with lease expiry.

use super::message::{HistoryEvent, HistoryKind, LeaseToken};
use super::transition::Event;
use super::{Broker, Change, MessageId, MessageMeta, MessageState, Notice, NoticeKind, QueueId};

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

/// What a failed delivery led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// It will be ready again at this time.
    Retrying { next_attempt_at_ms: u64 },
    /// It is dead.
    Dead,
}

/// The result of nacking one token.
pub type NackOutcome = Result<FailOutcome, Refusal>;

/// A failed delivery, from a nack or a lease expiry.
pub(super) struct Failure {
    pub kind: HistoryKind,
    pub error: String,
    pub delay_ms: Option<u64>,
    pub dead: bool,
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
        changes: &mut Vec<Change>,
    ) -> Vec<Grant> {
        let Some(queue_id) = self.queue_id(queue) else {
            return Vec::new();
        };
        let lease_ms = self.lease_ms(queue_id, lease_ms);
        let mut grants = Vec::new();
        while grants.len() < count_max as usize {
            let state = &self.queues[queue_id.0 as usize];
            if state.paused {
                break;
            }
            let Some(&(_, id)) = state.ready.first() else {
                break;
            };
            let nonce = self.rng.next() | 1;
            let due_at_ms = now_ms.saturating_add(lease_ms);
            let meta = self.transition_with(id, Event::Lease, now_ms, due_at_ms, changes, |meta| {
                meta.attempt_count += 1;
                meta.lease_nonce = nonce;
                meta.leased_at_ms = now_ms;
            });
            grants.push(Grant { id, token: LeaseToken { id, nonce }, meta });
        }
        grants
    }

    /// Acks each token: its message is delivered.
    pub fn ack(
        &mut self,
        now_ms: u64,
        queue: &str,
        tokens: &[Option<LeaseToken>],
        changes: &mut Vec<Change>,
    ) -> Vec<AckOutcome> {
        let queue_id = self.queue_id(queue);
        let mut outcomes = Vec::with_capacity(tokens.len());
        for token in tokens {
            let outcome = self.held(now_ms, queue_id, *token).map(|id| {
                self.transition(id, Event::Ack, now_ms, 0, changes);
            });
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Nacks each item: its message retries after a delay or goes dead, with the error recorded.
    pub fn nack(
        &mut self,
        now_ms: u64,
        queue: &str,
        items: Vec<NackItem>,
        changes: &mut Vec<Change>,
    ) -> Vec<NackOutcome> {
        let queue_id = self.queue_id(queue);
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            let outcome = self.held(now_ms, queue_id, item.token).map(|id| {
                let failure = Failure {
                    kind: HistoryKind::Nacked,
                    error: item.error,
                    delay_ms: item.delay_ms,
                    dead: item.dead,
                };
                self.fail(id, now_ms, failure, changes)
            });
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Extends each lease to `now_ms + lease_ms` (or the queue's default lease).
    pub fn extend(
        &mut self,
        now_ms: u64,
        queue: &str,
        items: &[(Option<LeaseToken>, Option<u64>)],
        changes: &mut Vec<Change>,
    ) -> Vec<ExtendOutcome> {
        let queue_id = self.queue_id(queue);
        let mut outcomes = Vec::with_capacity(items.len());
        for (token, lease_ms) in items {
            let outcome = self.held(now_ms, queue_id, *token).map(|id| {
                let lease_ms = self.lease_ms(self.active[&id].queue_id, *lease_ms);
                let due_at_ms = now_ms.saturating_add(lease_ms);
                self.transition(id, Event::Extend, now_ms, due_at_ms, changes).due_at_ms
            });
            outcomes.push(outcome);
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
        let Some(meta) = self.active.get(&token.id) else {
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

    /// Records a failed delivery of a leased message and moves it to retrying or dead.
    ///
    /// It goes dead when `dead` is asked for or its attempts are used up; otherwise it retries after
    /// `delay_ms`, or after its queue's backoff for its attempt count. The failure is recorded in
    /// the message's history, which is where its last error is read from.
    pub(super) fn fail(
        &mut self,
        id: MessageId,
        now_ms: u64,
        failure: Failure,
        changes: &mut Vec<Change>,
    ) -> FailOutcome {
        let meta = self.active.get(&id).expect("only leased messages fail");
        let attempt = meta.attempt_count;
        let queue_id = meta.queue_id;
        let dead = failure.dead || attempt >= meta.attempt_count_max;
        let cause = Some(failure.kind);
        let event = HistoryEvent {
            seq: meta.event_seq,
            kind: failure.kind,
            at_ms: now_ms,
            attempt,
            leased_at_ms: meta.leased_at_ms,
            detail: failure.error,
            dead,
        };
        let detail = Some(event.detail.clone());
        let keep_count = self.config.history_keep_count;
        changes.push(Change::RecordHistory { id, event, keep_count });
        let count_event = |meta: &mut MessageMeta| meta.event_seq += 1;
        if dead {
            let meta = self.transition_with(
                id,
                Event::Fail { dead: true },
                now_ms,
                0,
                changes,
                count_event,
            );
            let notice = Notice::about(NoticeKind::Dead, id, &meta, now_ms, detail);
            self.notices.push(Notice { cause, ..notice });
            return FailOutcome::Dead;
        }
        let random = self.random_unit();
        let policy = self.retry_policy(queue_id);
        let delay_ms = failure.delay_ms.unwrap_or_else(|| policy.delay_ms(attempt, random));
        let next_attempt_at_ms = now_ms.saturating_add(delay_ms);
        let event = Event::Fail { dead: false };
        let meta =
            self.transition_with(id, event, now_ms, next_attempt_at_ms, changes, count_event);
        let notice = Notice::about(NoticeKind::Retrying, id, &meta, now_ms, detail);
        self.notices.push(Notice { cause, ..notice });
        FailOutcome::Retrying { next_attempt_at_ms }
    }
}
