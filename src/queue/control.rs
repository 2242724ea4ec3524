//! A person's actions on messages and queues: edit, delete, retry, reschedule, pause, settings,
//! listing, and the retention sweep.
//!
//! Dead and delivered messages are not held in memory, so actions on them take the record the
//! caller read from the store (`stored`). The caller must have applied every earlier change to the
//! store first, so that what it read is current (the storage thread commits before such actions).

use super::message::{HistoryEvent, HistoryKind};
use super::transition::Event;
use super::{
    Broker, Change, MessageId, MessageMeta, MessageState, Notice, NoticeKind, QueueId,
    QueueSettings,
};
use std::cmp::Reverse;

/// What a person changes in a message; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// A new encoded content record (headers and body).
    pub content_record: Option<Vec<u8>>,
    pub priority: Option<i32>,
    /// A new delivery time (Unix epoch ms): the message is rescheduled to it.
    pub deliver_at_ms: Option<u64>,
    /// The names of the fields changed, for the history.
    pub fields: Vec<&'static str>,
}

/// Why a person's action was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// No such message (or queue).
    NotFound,
    /// The message is leased: its consumer holds it until it acks, nacks or the lease expires.
    Leased,
    /// The action does not apply in the message's state (for example retrying a ready message).
    WrongState(MessageState),
}

impl Broker {
    /// Makes a stored terminal message active for the duration of an action.
    fn revive(&mut self, id: MessageId, stored: Option<MessageMeta>) -> Result<(), ControlError> {
        if self.active.contains_key(&id) {
            return Ok(());
        }
        match stored {
            Some(meta) if !meta.state.is_active() => {
                self.active.insert(id, meta);
                Ok(())
            }
            _ => Err(ControlError::NotFound),
        }
    }

    /// Undoes `revive` when the action was refused or left the message terminal.
    fn settle(&mut self, id: MessageId) {
        if self.active.get(&id).is_some_and(|meta| !meta.state.is_active()) {
            self.active.remove(&id);
        }
    }

    /// Refuses actions on leased and delivered messages.
    fn movable(&self, id: MessageId) -> Result<MessageState, ControlError> {
        match self.active[&id].state {
            MessageState::Leased => Err(ControlError::Leased),
            MessageState::Delivered => Err(ControlError::WrongState(MessageState::Delivered)),
            state => Ok(state),
        }
    }

    /// Records a person's action in the message's history.
    fn record(
        &mut self,
        id: MessageId,
        kind: HistoryKind,
        detail: String,
        now_ms: u64,
        changes: &mut Vec<Change>,
    ) {
        let meta = self.active.get_mut(&id).expect("recorded message is active");
        let event = HistoryEvent {
            seq: meta.event_seq,
            kind,
            at_ms: now_ms,
            attempt: meta.attempt_count,
            leased_at_ms: 0,
            detail,
            dead: false,
        };
        meta.event_seq += 1;
        let keep_count = self.config.history_keep_count;
        changes.push(Change::RecordHistory { id, event, keep_count });
    }

    /// Changes a message that is not leased or delivered.
    pub fn edit(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        edit: Edit,
        changes: &mut Vec<Change>,
    ) -> Result<MessageMeta, ControlError> {
        self.revive(id, stored)?;
        let state = match self.movable(id) {
            Ok(state) => state,
            Err(error) => {
                self.settle(id);
                return Err(error);
            }
        };
        if let Some(record) = edit.content_record {
            changes.push(Change::PutContent { id, record });
        }
        if let Some(priority) = edit.priority {
            let meta = self.active.get_mut(&id).expect("revived");
            let queue = &mut self.queues[meta.queue_id.0 as usize];
            if state == MessageState::Ready {
                queue.ready.remove(&(Reverse(meta.priority), id));
                queue.ready.insert((Reverse(priority), id));
            }
            meta.priority = priority;
        }
        self.record(
            id,
            HistoryKind::Edited,
            format!("changed {}", edit.fields.join(", ")),
            now_ms,
            changes,
        );
        if let Some(deliver_at_ms) = edit.deliver_at_ms {
            let ready = deliver_at_ms <= now_ms;
            self.transition(id, Event::Reschedule { ready }, now_ms, deliver_at_ms, changes);
        } else {
            let meta = self.active.get_mut(&id).expect("revived");
            meta.updated_at_ms = now_ms;
            changes.push(Change::PutMeta { id, meta: meta.clone() });
        }
        let meta = self.active.get(&id).cloned().or_else(|| self.settled_meta(id, changes));
        self.settle(id);
        let meta = meta.expect("edited message has a record");
        self.notices.push(Notice::about(NoticeKind::Edited, id, &meta, now_ms, None));
        Ok(meta)
    }

    /// The record an action just persisted for a message that is no longer active.
    fn settled_meta(&self, id: MessageId, changes: &[Change]) -> Option<MessageMeta> {
        changes.iter().rev().find_map(|change| match change {
            Change::PutMeta { id: changed, meta } if *changed == id => Some(meta.clone()),
            _ => None,
        })
    }

    /// Removes a message that is not leased.
    pub fn delete(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        changes: &mut Vec<Change>,
    ) -> Result<(), ControlError> {
        self.revive(id, stored)?;
        if self.active[&id].state == MessageState::Leased {
            return Err(ControlError::Leased);
        }
        let meta = self.active.remove(&id).expect("revived");
        let queue = &mut self.queues[meta.queue_id.0 as usize];
        if meta.state == MessageState::Ready {
            queue.ready.remove(&(Reverse(meta.priority), id));
        }
        if meta.state.is_active() {
            queue.members[meta.state.index()].remove(&id);
        }
        queue.counts[meta.state.index()] -= 1;
        changes.push(Change::DeleteMessage { id, queue_id: meta.queue_id, state: meta.state });
        self.notices.push(Notice::about(NoticeKind::Deleted, id, &meta, now_ms, None));
        Ok(())
    }

    /// Sends a dead or retrying message back to ready now, optionally with its attempts reset.
    pub fn retry(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        reset_attempts: bool,
        changes: &mut Vec<Change>,
    ) -> Result<MessageMeta, ControlError> {
        self.revive(id, stored)?;
        let state = self.active[&id].state;
        if !matches!(state, MessageState::Dead | MessageState::Retrying) {
            self.settle(id);
            return Err(if state == MessageState::Leased {
                ControlError::Leased
            } else {
                ControlError::WrongState(state)
            });
        }
        let detail = if reset_attempts { "attempts reset" } else { "attempts kept" };
        self.record(id, HistoryKind::Retried, detail.to_string(), now_ms, changes);
        Ok(self.transition_with(id, Event::Retry, now_ms, 0, changes, |meta| {
            if reset_attempts {
                meta.attempt_count = 0;
            }
        }))
    }

    /// Moves the delivery time of a message that is not leased or delivered.
    pub fn reschedule(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        deliver_at_ms: u64,
        changes: &mut Vec<Change>,
    ) -> Result<MessageMeta, ControlError> {
        self.revive(id, stored)?;
        if let Err(error) = self.movable(id) {
            self.settle(id);
            return Err(error);
        }
        self.record(
            id,
            HistoryKind::Rescheduled,
            format!("deliver at {deliver_at_ms}"),
            now_ms,
            changes,
        );
        let ready = deliver_at_ms <= now_ms;
        Ok(self.transition(id, Event::Reschedule { ready }, now_ms, deliver_at_ms, changes))
    }

    /// Pauses or resumes a queue; `false` if there is no such queue.
    pub fn set_paused(
        &mut self,
        now_ms: u64,
        queue: &str,
        paused: bool,
        changes: &mut Vec<Change>,
    ) -> bool {
        let Some(queue_id) = self.queue_id(queue) else { return false };
        let state = &mut self.queues[queue_id.0 as usize];
        if state.paused != paused {
            state.paused = paused;
            self.persist_queue(queue_id, changes);
            let kind = if paused { NoticeKind::Paused } else { NoticeKind::Resumed };
            self.notices.push(Notice::about_queue(kind, queue_id, now_ms));
            if !paused {
                self.woken.push(queue_id);
            }
        }
        true
    }

    /// Sets a queue's overrides, creating the queue if it does not exist.
    pub fn configure(
        &mut self,
        now_ms: u64,
        queue: &str,
        settings: QueueSettings,
        changes: &mut Vec<Change>,
    ) {
        let queue_id = self.intern_queue(queue, changes);
        self.queues[queue_id.0 as usize].settings = settings;
        self.persist_queue(queue_id, changes);
        self.notices.push(Notice::about_queue(NoticeKind::Configured, queue_id, now_ms));
    }

    /// Up to `limit` ids of active messages of a queue in `state`, after (or before, when
    /// `descending`) the cursor id.
    pub fn list_active(
        &self,
        queue_id: QueueId,
        state: MessageState,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
    ) -> Vec<MessageId> {
        assert!(state.is_active(), "terminal states are listed from the store");
        let members = &self.queues[queue_id.0 as usize].members[state.index()];
        match (descending, after) {
            (false, None) => members.iter().take(limit).copied().collect(),
            (false, Some(cursor)) => members
                .range(MessageId(cursor.0.saturating_add(1))..)
                .take(limit)
                .copied()
                .collect(),
            (true, None) => members.iter().rev().take(limit).copied().collect(),
            (true, Some(cursor)) => members.range(..cursor).rev().take(limit).copied().collect(),
        }
    }

    /// Removes a dead or delivered message whose retention passed; `false` if it is not terminal
    /// any more (retried since) or gone.
    pub fn forget(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        changes: &mut Vec<Change>,
    ) -> bool {
        if self.active.contains_key(&id) {
            return false;
        }
        let Some(meta) = stored.filter(|meta| !meta.state.is_active()) else { return false };
        self.queues[meta.queue_id.0 as usize].counts[meta.state.index()] -= 1;
        changes.push(Change::DeleteMessage { id, queue_id: meta.queue_id, state: meta.state });
        self.notices.push(Notice::about(NoticeKind::Deleted, id, &meta, now_ms, None));
        true
    }
}

impl Broker {
    /// How long a terminal message of a queue stays before the sweep removes it; `None` forever.
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

    /// Arms the removal of a stored dead or delivered message with its queue's current retention.
    pub fn rearm(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        changes: &mut Vec<Change>,
    ) {
        let Some(meta) = stored.filter(|meta| !meta.state.is_active()) else { return };
        if self.active.contains_key(&id) {
            return;
        }
        if let Some(retention_ms) = self.retention_of(meta.queue_id, meta.state) {
            let at_ms = meta.updated_at_ms.saturating_add(retention_ms).max(now_ms);
            changes.push(Change::ExpireAt { at_ms, id });
        }
    }

    /// Handles one due retention entry: removes the message if it is still terminal and its
    /// retention (as configured now) has passed since it last changed, re-arms the entry if the
    /// retention grew, and otherwise only drops the entry (the message moved on since).
    pub fn sweep(
        &mut self,
        now_ms: u64,
        at_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        changes: &mut Vec<Change>,
    ) {
        changes.push(Change::RemoveExpiry { at_ms, id });
        let Some(meta) = stored.filter(|meta| !meta.state.is_active()) else { return };
        if self.active.contains_key(&id) {
            return;
        }
        let Some(retention_ms) = self.retention_of(meta.queue_id, meta.state) else { return };
        let remove_at_ms = meta.updated_at_ms.saturating_add(retention_ms);
        if remove_at_ms <= now_ms {
            self.forget(now_ms, id, Some(meta), changes);
        } else {
            changes.push(Change::ExpireAt { at_ms: remove_at_ms, id });
        }
    }
}
