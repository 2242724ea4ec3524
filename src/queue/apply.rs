//! Applying ops: the only code that changes the broker's state.
//!
//! Each `apply_*` function carries out one item of one op. Live operations (`enqueue.rs`,
//! `lease.rs`, `control.rs`) check what they must, decide, and call these; recovery calls
//! [`Broker::apply`] for every logged op, which first validates each item against the current state
//! (a log that does not fit the state is reported, not applied) and then calls the same functions.
//! So the state a replay reaches is, by construction, the state the live server reached.

use super::message::{ContentLocation, HistoryEvent, HistoryKind, MessageId, MessageMeta};
use super::op::{Accepted, EditFields, FailOutcome, Failed, Op};
use super::records::{IdempotencyRecord, QueueSettings};
use super::transition::Event;
use super::{Broker, MessageState, Notice, NoticeKind, QueueId, QueueState, Resident, Settled};
use std::cmp::Reverse;
use std::fmt;

/// A logged op that does not fit the state it is applied to: the log or the catalog is damaged or
/// was written by a different program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyError {
    /// The op's name.
    pub op: &'static str,
    /// What did not fit.
    pub reason: String,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} op does not fit the stored state: {}", self.op, self.reason)
    }
}

impl std::error::Error for ApplyError {}

impl Broker {
    /// Applies one logged op (recovery). Every message the op touches must be resident first:
    /// the caller fetches the ones it does not hold from the catalog ([`Broker::ensure_resident`]).
    pub fn apply(&mut self, op: &Op) -> Result<(), ApplyError> {
        let refuse = |reason: String| ApplyError { op: op.name(), reason };
        match op {
            Op::CreateQueue { queue_id, name } => {
                match self.queue_ids.get(name) {
                    Some(existing) if existing == queue_id => return Ok(()),
                    Some(existing) => {
                        return Err(refuse(format!(
                            "queue {name:?} already has id {}, not {}",
                            existing.0, queue_id.0
                        )))
                    }
                    None if queue_id.0 as usize != self.queues.len() => {
                        return Err(refuse(format!(
                            "queue id {} is not the next one ({})",
                            queue_id.0,
                            self.queues.len()
                        )))
                    }
                    None => {}
                }
                self.apply_create_queue(*queue_id, name.clone());
            }
            Op::PauseQueue { queue_id, paused } => {
                self.check_queue(*queue_id).map_err(refuse)?;
                self.apply_pause(*queue_id, *paused, 0);
            }
            Op::ConfigureQueue { queue_id, settings } => {
                self.check_queue(*queue_id).map_err(refuse)?;
                self.apply_configure(*queue_id, settings.clone(), 0);
            }
            Op::Enqueue { queue_id, first_id, at_ms, idempotency, messages } => {
                self.check_queue(*queue_id).map_err(refuse)?;
                for offset in 0..messages.len() as u64 {
                    let id = MessageId(first_id.0 + offset);
                    if self.is_resident(id) {
                        return Err(refuse(format!("message {id} already exists")));
                    }
                }
                self.apply_enqueue(*queue_id, *first_id, *at_ms, idempotency.clone(), messages);
            }
            Op::Lease { at_ms, deadline_ms, nonce_seed, ids } => {
                for id in ids {
                    self.expect_state(*id, &[MessageState::Ready]).map_err(refuse)?;
                    let nonce = super::op::lease_nonce(*nonce_seed, *id);
                    self.apply_lease(*id, *at_ms, *deadline_ms, nonce);
                }
            }
            Op::Extend { at_ms, items } => {
                for (id, deadline_ms) in items {
                    self.expect_state(*id, &[MessageState::Leased]).map_err(refuse)?;
                    self.apply_extend(*id, *at_ms, *deadline_ms);
                }
            }
            Op::Ack { at_ms, ids } => {
                for id in ids {
                    self.expect_state(*id, &[MessageState::Leased]).map_err(refuse)?;
                    self.apply_ack(*id, *at_ms);
                }
            }
            Op::Fail { at_ms, items } => {
                for item in items {
                    self.expect_state(item.id, &[MessageState::Leased]).map_err(refuse)?;
                    self.apply_fail(item, *at_ms);
                }
            }
            Op::Due { at_ms, ids } => {
                for id in ids {
                    let timed = [MessageState::Scheduled, MessageState::Retrying];
                    self.expect_state(*id, &timed).map_err(refuse)?;
                    self.apply_due(*id, *at_ms);
                }
            }
            Op::Remove { at_ms, ids } => {
                for id in ids {
                    self.expect_state(*id, &REMOVABLE).map_err(refuse)?;
                    self.apply_remove(*id, *at_ms);
                }
            }
            Op::Retry { at_ms, reset_attempts, ids } => {
                for id in ids {
                    let retryable = [MessageState::Dead, MessageState::Retrying];
                    self.expect_state(*id, &retryable).map_err(refuse)?;
                    self.apply_retry(*id, *at_ms, *reset_attempts);
                }
            }
            Op::Reschedule { at_ms, id, deliver_at_ms } => {
                self.expect_state(*id, &MOVABLE).map_err(refuse)?;
                self.apply_reschedule(*id, *at_ms, *deliver_at_ms);
            }
            Op::Edit { at_ms, id, fields, priority, content, deliver_at_ms } => {
                self.expect_state(*id, &MOVABLE).map_err(refuse)?;
                let edit = AppliedEdit {
                    fields: *fields,
                    priority: *priority,
                    content: *content,
                    deliver_at_ms: *deliver_at_ms,
                };
                self.apply_edit(*id, *at_ms, edit);
            }
            Op::MoveContent { items } => {
                for (id, content) in items {
                    self.expect_state(*id, &REMOVABLE_OR_LEASED).map_err(refuse)?;
                    self.apply_move_content(*id, *content);
                }
            }
        }
        Ok(())
    }

    /// Makes a record read from the catalog resident, unchanged (replay fetches the messages an op
    /// touches this way): a terminal one until the next checkpoint, a ready one back from the
    /// cold pages. Does nothing if the broker already holds the message; `false` for a record the
    /// broker cannot take (an active record other than a cold ready one is always resident, so
    /// such a record is out of date).
    pub fn ensure_resident(&mut self, id: MessageId, meta: MessageMeta) -> bool {
        if self.is_resident(id) {
            return true;
        }
        if meta.state == MessageState::Ready {
            return self.warm(id, meta);
        }
        if meta.state.is_active() {
            return false;
        }
        self.settled.insert(id, Settled { meta: Some(meta), epoch: 0 });
        true
    }

    fn check_queue(&self, queue_id: QueueId) -> Result<(), String> {
        if (queue_id.0 as usize) < self.queues.len() {
            Ok(())
        } else {
            Err(format!("queue id {} does not exist", queue_id.0))
        }
    }

    /// The message's current record if it is in one of `states`, or why not.
    fn expect_state(&self, id: MessageId, states: &[MessageState]) -> Result<(), String> {
        match self.current(id) {
            Some(meta) if states.contains(&meta.state) => Ok(()),
            Some(meta) => Err(format!("message {id} is {}", meta.state.name())),
            None => Err(format!("message {id} does not exist")),
        }
    }

    /// The current record of a resident message.
    pub(super) fn current(&self, id: MessageId) -> Option<&MessageMeta> {
        if let Some(resident) = self.active.get(&id) {
            return Some(&resident.meta);
        }
        self.settled.get(&id).and_then(|settled| settled.meta.as_ref())
    }

    /// Moves a settled (terminal) record into `active` so that a transition can move it; a record
    /// already there stays. Panics if the message is not resident (callers check first).
    fn materialize(&mut self, id: MessageId) {
        if self.active.contains_key(&id) {
            return;
        }
        let settled = self.settled.remove(&id).expect("materialized message is resident");
        let meta = settled.meta.expect("materialized message is not removed");
        self.active.insert(id, Resident { meta, timer: None });
    }

    /// Moves a record that is still terminal after an action back to `settled`.
    fn settle_if_terminal(&mut self, id: MessageId) {
        if self.active.get(&id).is_some_and(|resident| !resident.meta.state.is_active()) {
            let resident = self.active.remove(&id).expect("checked above");
            self.settle(id, Some(resident.meta));
        }
    }

    pub(super) fn apply_create_queue(&mut self, queue_id: QueueId, name: String) {
        debug_assert_eq!(queue_id.0 as usize, self.queues.len());
        self.queue_ids.insert(name.clone(), queue_id);
        self.queues.push(QueueState::new(name));
        self.book.dirty_queues.insert(queue_id);
    }

    pub(super) fn apply_pause(&mut self, queue_id: QueueId, paused: bool, now_ms: u64) {
        let queue = &mut self.queues[queue_id.0 as usize];
        queue.paused = paused;
        self.book.dirty_queues.insert(queue_id);
        let kind = if paused { NoticeKind::Paused } else { NoticeKind::Resumed };
        self.notices.push(Notice::about_queue(kind, queue_id, now_ms));
        if !paused {
            self.woken.push(queue_id);
        }
    }

    pub(super) fn apply_configure(
        &mut self,
        queue_id: QueueId,
        settings: QueueSettings,
        now_ms: u64,
    ) {
        let queue = &mut self.queues[queue_id.0 as usize];
        let retention_changed = (queue.settings.retention_ms, queue.settings.dead_retention_ms)
            != (settings.retention_ms, settings.dead_retention_ms);
        queue.settings = settings;
        self.book.dirty_queues.insert(queue_id);
        if retention_changed {
            self.book.rearm_queues.insert(queue_id);
        }
        self.notices.push(Notice::about_queue(NoticeKind::Configured, queue_id, now_ms));
    }

    pub(super) fn apply_enqueue(
        &mut self,
        queue_id: QueueId,
        first_id: MessageId,
        at_ms: u64,
        idempotency: Option<(String, u64)>,
        messages: &[Accepted],
    ) {
        for (offset, accepted) in messages.iter().enumerate() {
            let id = MessageId(first_id.0 + offset as u64);
            self.apply_accept(queue_id, id, at_ms, accepted);
        }
        self.next_id = self.next_id.max(first_id.0 + messages.len() as u64);
        if let Some((key, request_hash)) = idempotency {
            let count = u32::try_from(messages.len()).expect("batch count is bounded by limits");
            let record = IdempotencyRecord {
                request_hash,
                first_id: first_id.0,
                count,
                created_at_ms: at_ms,
            };
            self.idempotency_order.push_back((at_ms, queue_id, key.clone()));
            self.idempotency.insert((queue_id, key.clone()), record);
            self.book.new_keys.push((queue_id, key, record));
        }
    }

    /// Creates one message, scheduled or ready.
    fn apply_accept(&mut self, queue_id: QueueId, id: MessageId, at_ms: u64, accepted: &Accepted) {
        let scheduled = accepted.due_at_ms > 0;
        let state = if scheduled { MessageState::Scheduled } else { MessageState::Ready };
        let meta = MessageMeta {
            queue_id,
            state,
            priority: accepted.priority,
            attempt_count: 0,
            attempt_count_max: accepted.attempt_count_max,
            enqueued_at_ms: at_ms,
            updated_at_ms: at_ms,
            due_at_ms: accepted.due_at_ms,
            lease_nonce: 0,
            leased_at_ms: 0,
            event_seq: 0,
            content: accepted.content,
        };
        let queue = &mut self.queues[queue_id.0 as usize];
        queue.counts[state.index()] += 1;
        queue.members[state.index()].insert(id);
        let timer = if scheduled {
            Some(self.timers.insert(accepted.due_at_ms, id.0))
        } else {
            queue.ready.insert((Reverse(meta.priority), id));
            self.woken.push(queue_id);
            None
        };
        self.notices.push(Notice::about(NoticeKind::Enqueued, id, &meta, at_ms, None));
        self.book.add_content(id, accepted.content);
        self.book.touch(id);
        self.active.insert(id, Resident { meta, timer });
    }

    pub(super) fn apply_lease(&mut self, id: MessageId, at_ms: u64, deadline_ms: u64, nonce: u64) {
        self.transition_with(id, Event::Lease, at_ms, deadline_ms, |meta| {
            meta.attempt_count += 1;
            meta.lease_nonce = nonce;
            meta.leased_at_ms = at_ms;
        });
    }

    pub(super) fn apply_extend(&mut self, id: MessageId, at_ms: u64, deadline_ms: u64) {
        self.transition_with(id, Event::Extend, at_ms, deadline_ms, |_| {});
    }

    pub(super) fn apply_ack(&mut self, id: MessageId, at_ms: u64) {
        self.transition_with(id, Event::Ack, at_ms, 0, |_| {});
    }

    pub(super) fn apply_due(&mut self, id: MessageId, at_ms: u64) {
        self.transition_with(id, Event::Due, at_ms, 0, |_| {});
    }

    /// Records a failed delivery in the message's history and moves it to retrying or dead.
    pub(super) fn apply_fail(&mut self, item: &Failed, at_ms: u64) {
        let meta = &self.active[&item.id].meta;
        let dead = item.outcome == FailOutcome::Dead;
        let event = HistoryEvent {
            seq: meta.event_seq,
            kind: item.kind,
            at_ms,
            attempt: meta.attempt_count,
            leased_at_ms: meta.leased_at_ms,
            detail: item.error.clone(),
            dead,
        };
        self.book.record_history(item.id, event);
        let count_event = |meta: &mut MessageMeta| meta.event_seq += 1;
        let (kind, meta) = match item.outcome {
            FailOutcome::Dead => {
                let event = Event::Fail { dead: true };
                (NoticeKind::Dead, self.transition_with(item.id, event, at_ms, 0, count_event))
            }
            FailOutcome::Retrying { next_attempt_at_ms } => {
                let event = Event::Fail { dead: false };
                let meta =
                    self.transition_with(item.id, event, at_ms, next_attempt_at_ms, count_event);
                (NoticeKind::Retrying, meta)
            }
        };
        let notice = Notice::about(kind, item.id, &meta, at_ms, Some(item.error.clone()));
        self.notices.push(Notice { cause: Some(item.kind), ..notice });
    }

    /// Removes a resident message that is not leased.
    pub(super) fn apply_remove(&mut self, id: MessageId, at_ms: u64) {
        let meta = match self.active.remove(&id) {
            Some(Resident { meta, timer }) => {
                if let Some(timer) = timer {
                    self.timers.cancel(timer);
                }
                let queue = &mut self.queues[meta.queue_id.0 as usize];
                if meta.state == MessageState::Ready {
                    queue.ready.remove(&(Reverse(meta.priority), id));
                }
                if meta.state.is_active() {
                    queue.members[meta.state.index()].remove(&id);
                }
                meta
            }
            None => {
                let settled = self.settled.remove(&id).expect("removed message is resident");
                settled.meta.expect("removed message is not removed already")
            }
        };
        debug_assert_ne!(meta.state, MessageState::Leased, "leased messages are not removed");
        self.queues[meta.queue_id.0 as usize].counts[meta.state.index()] -= 1;
        self.book.forget_content(id, meta.content);
        self.book.drop_history(id);
        self.notices.push(Notice::about(NoticeKind::Deleted, id, &meta, at_ms, None));
        self.settle(id, None);
    }

    /// Records a person's action in the message's history (the record must be in `active`).
    fn record_action(&mut self, id: MessageId, kind: HistoryKind, detail: String, at_ms: u64) {
        let meta = &mut self.active.get_mut(&id).expect("recorded message is active").meta;
        let event = HistoryEvent {
            seq: meta.event_seq,
            kind,
            at_ms,
            attempt: meta.attempt_count,
            leased_at_ms: 0,
            detail,
            dead: false,
        };
        meta.event_seq += 1;
        self.book.record_history(id, event);
    }

    /// Sends a dead or retrying message back to ready, optionally with its attempts reset.
    pub(super) fn apply_retry(&mut self, id: MessageId, at_ms: u64, reset_attempts: bool) {
        self.materialize(id);
        let detail = if reset_attempts { "attempts reset" } else { "attempts kept" };
        self.record_action(id, HistoryKind::Retried, detail.to_string(), at_ms);
        self.transition_with(id, Event::Retry, at_ms, 0, |meta| {
            if reset_attempts {
                meta.attempt_count = 0;
            }
        });
    }

    /// Moves a message's delivery time; it is ready at once when that time has come.
    pub(super) fn apply_reschedule(&mut self, id: MessageId, at_ms: u64, deliver_at_ms: u64) {
        self.materialize(id);
        let detail = format!("deliver at {deliver_at_ms}");
        self.record_action(id, HistoryKind::Rescheduled, detail, at_ms);
        let ready = deliver_at_ms <= at_ms;
        self.transition_with(id, Event::Reschedule { ready }, at_ms, deliver_at_ms, |_| {});
    }

    /// Changes a message's priority, content and delivery time.
    pub(super) fn apply_edit(&mut self, id: MessageId, at_ms: u64, edit: AppliedEdit) {
        self.materialize(id);
        if let Some(content) = edit.content {
            let old = self.active[&id].meta.content;
            self.book.forget_content(id, old);
            self.book.add_content(id, content);
            self.active.get_mut(&id).expect("materialized").meta.content = content;
        }
        if let Some(priority) = edit.priority {
            let meta = &mut self.active.get_mut(&id).expect("materialized").meta;
            let queue = &mut self.queues[meta.queue_id.0 as usize];
            if meta.state == MessageState::Ready {
                queue.ready.remove(&(Reverse(meta.priority), id));
                queue.ready.insert((Reverse(priority), id));
            }
            meta.priority = priority;
        }
        let detail = format!("changed {}", edit.fields.names());
        self.record_action(id, HistoryKind::Edited, detail, at_ms);
        match edit.deliver_at_ms {
            Some(deliver_at_ms) => {
                let ready = deliver_at_ms <= at_ms;
                let event = Event::Reschedule { ready };
                self.transition_with(id, event, at_ms, deliver_at_ms, |_| {});
            }
            None => {
                self.active.get_mut(&id).expect("materialized").meta.updated_at_ms = at_ms;
                self.book.touch(id);
                self.settle_if_terminal(id);
            }
        }
        let meta = self.current(id).cloned().expect("edited message exists");
        self.notices.push(Notice::about(NoticeKind::Edited, id, &meta, at_ms, None));
    }

    /// Points a message at a new copy of its content.
    pub(super) fn apply_move_content(&mut self, id: MessageId, content: ContentLocation) {
        let in_active = self.active.contains_key(&id);
        let meta = if in_active {
            &mut self.active.get_mut(&id).expect("checked").meta
        } else {
            let settled = self.settled.get_mut(&id).expect("moved message is resident");
            settled.meta.as_mut().expect("moved message is not removed")
        };
        let old = std::mem::replace(&mut meta.content, content);
        self.book.forget_content(id, old);
        self.book.add_content(id, content);
        if in_active {
            self.book.touch(id);
        } else {
            let meta = self.settled.remove(&id).and_then(|settled| settled.meta);
            self.settle(id, meta);
        }
    }
}

/// The states a person may delete a message in (everything but leased).
const REMOVABLE: [MessageState; 5] = [
    MessageState::Scheduled,
    MessageState::Ready,
    MessageState::Retrying,
    MessageState::Dead,
    MessageState::Delivered,
];

/// The states whose content may move (all of them).
const REMOVABLE_OR_LEASED: [MessageState; 6] = super::ALL_STATES;

/// The states a person may edit or reschedule a message in.
const MOVABLE: [MessageState; 4] =
    [MessageState::Scheduled, MessageState::Ready, MessageState::Retrying, MessageState::Dead];

/// What an edit changes, as decided.
pub(super) struct AppliedEdit {
    pub fields: EditFields,
    pub priority: Option<i32>,
    pub content: Option<ContentLocation>,
    pub deliver_at_ms: Option<u64>,
}
