//! A person's actions on messages and queues: edit, delete, retry, reschedule, pause, settings,
//! listing, purge and redrive, and the retention sweep's removals.
//!
//! Dead and delivered messages that did not change since the last checkpoint are not held in
//! memory, so actions on them take the record the caller read from the catalog (`stored`). The
//! caller must make sure that record is current: the storage thread only passes a record read at
//! the durable checkpoint epoch it still holds (see `engine`), and the broker prefers whatever it
//! holds itself.

use super::message::{ContentLocation, MessageId, MessageMeta, MessageState};
use super::op::{EditFields, Op};
use super::records::QueueSettings;
use super::{Broker, QueueId};

/// What a person changes in a message; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edit {
    /// The new content's location (placed in the request's log frame by the storage thread).
    pub content: Option<ContentLocation>,
    pub priority: Option<i32>,
    /// A new delivery time (Unix epoch ms): the message is rescheduled to it.
    pub deliver_at_ms: Option<u64>,
    /// The fields changed, for the history.
    pub fields: EditFields,
}

/// A record read from the catalog for a message the broker did not hold, and the durable
/// checkpoint epoch the catalog was at when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub meta: MessageMeta,
    pub epoch: u64,
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

/// A record an action carried was read at a state the broker has left: read it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleRead;

impl Broker {
    /// The record an action on `id` must use besides the broker's own, given what the request
    /// read (`stored`: from the catalog, `None`: the broker held the message then).
    ///
    /// - The broker holds the message: its own record (`Ok(None)`).
    /// - Read from the catalog at the durable epoch: that record.
    /// - Read from the catalog at an older epoch, or read while held and no longer held (a ready
    ///   message that left memory for the catalog, a removal whose checkpoint became durable):
    ///   [`StaleRead`]. Without the second case, an action racing the eviction of a ready message
    ///   would find nothing and answer "not found" for a message that exists.
    pub fn stored_for_action(
        &self,
        id: MessageId,
        stored: Option<Stored>,
    ) -> Result<Option<MessageMeta>, StaleRead> {
        if self.is_resident(id) {
            return Ok(None);
        }
        match stored {
            Some(stored) if stored.epoch == self.durable_epoch() => Ok(Some(stored.meta)),
            _ => Err(StaleRead),
        }
    }

    /// The current record of a message: the broker's own, else the stored one (made resident).
    fn resolve(
        &mut self,
        id: MessageId,
        stored: Option<MessageMeta>,
    ) -> Result<MessageMeta, ControlError> {
        if let (false, Some(meta)) = (self.is_resident(id), stored) {
            // Active messages other than cold ready ones are always resident: a stored record of
            // one is out of date.
            if !self.ensure_resident(id, meta) {
                return Err(ControlError::NotFound);
            }
        }
        self.current(id).cloned().ok_or(ControlError::NotFound)
    }

    /// Refuses actions on leased and delivered messages.
    fn movable(meta: &MessageMeta) -> Result<(), ControlError> {
        match meta.state {
            MessageState::Leased => Err(ControlError::Leased),
            MessageState::Delivered => Err(ControlError::WrongState(MessageState::Delivered)),
            _ => Ok(()),
        }
    }

    /// Changes a message that is not leased or delivered.
    pub fn edit(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        edit: Edit,
        ops: &mut Vec<Op>,
    ) -> Result<MessageMeta, ControlError> {
        Self::movable(&self.resolve(id, stored)?)?;
        let applied = super::apply::AppliedEdit {
            fields: edit.fields,
            priority: edit.priority,
            content: edit.content,
            deliver_at_ms: edit.deliver_at_ms,
        };
        self.apply_edit(id, now_ms, applied);
        ops.push(Op::Edit {
            at_ms: now_ms,
            id,
            fields: edit.fields,
            priority: edit.priority,
            content: edit.content,
            deliver_at_ms: edit.deliver_at_ms,
        });
        Ok(self.current(id).cloned().expect("edited message exists"))
    }

    /// Removes a message that is not leased.
    pub fn delete(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        ops: &mut Vec<Op>,
    ) -> Result<(), ControlError> {
        if self.resolve(id, stored)?.state == MessageState::Leased {
            return Err(ControlError::Leased);
        }
        self.apply_remove(id, now_ms);
        ops.push(Op::Remove { at_ms: now_ms, ids: vec![id] });
        Ok(())
    }

    /// Removes every given message that exists and is not leased (a purge chunk); returns how many.
    pub fn delete_many(
        &mut self,
        now_ms: u64,
        items: Vec<(MessageId, Option<MessageMeta>)>,
        ops: &mut Vec<Op>,
    ) -> u64 {
        let mut ids = Vec::new();
        for (id, stored) in items {
            if self.resolve(id, stored).is_ok_and(|meta| meta.state != MessageState::Leased) {
                self.apply_remove(id, now_ms);
                ids.push(id);
            }
        }
        let count = ids.len() as u64;
        if !ids.is_empty() {
            ops.push(Op::Remove { at_ms: now_ms, ids });
        }
        count
    }

    /// Sends a dead or retrying message back to ready now, optionally with its attempts reset.
    pub fn retry(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        reset_attempts: bool,
        ops: &mut Vec<Op>,
    ) -> Result<MessageMeta, ControlError> {
        let state = self.resolve(id, stored)?.state;
        if !matches!(state, MessageState::Dead | MessageState::Retrying) {
            return Err(if state == MessageState::Leased {
                ControlError::Leased
            } else {
                ControlError::WrongState(state)
            });
        }
        self.apply_retry(id, now_ms, reset_attempts);
        ops.push(Op::Retry { at_ms: now_ms, reset_attempts, ids: vec![id] });
        Ok(self.current(id).cloned().expect("retried message exists"))
    }

    /// Sends every given message that is still dead back to ready (a redrive chunk); returns how
    /// many.
    pub fn retry_many(
        &mut self,
        now_ms: u64,
        items: Vec<(MessageId, Option<MessageMeta>)>,
        reset_attempts: bool,
        ops: &mut Vec<Op>,
    ) -> u64 {
        let mut ids = Vec::new();
        for (id, stored) in items {
            if self.resolve(id, stored).is_ok_and(|meta| meta.state == MessageState::Dead) {
                self.apply_retry(id, now_ms, reset_attempts);
                ids.push(id);
            }
        }
        let count = ids.len() as u64;
        if !ids.is_empty() {
            ops.push(Op::Retry { at_ms: now_ms, reset_attempts, ids });
        }
        count
    }

    /// Moves the delivery time of a message that is not leased or delivered.
    pub fn reschedule(
        &mut self,
        now_ms: u64,
        id: MessageId,
        stored: Option<MessageMeta>,
        deliver_at_ms: u64,
        ops: &mut Vec<Op>,
    ) -> Result<MessageMeta, ControlError> {
        Self::movable(&self.resolve(id, stored)?)?;
        self.apply_reschedule(id, now_ms, deliver_at_ms);
        ops.push(Op::Reschedule { at_ms: now_ms, id, deliver_at_ms });
        Ok(self.current(id).cloned().expect("rescheduled message exists"))
    }

    /// Pauses or resumes a queue; `false` if there is no such queue.
    pub fn set_paused(
        &mut self,
        now_ms: u64,
        queue: &str,
        paused: bool,
        ops: &mut Vec<Op>,
    ) -> bool {
        let Some(queue_id) = self.queue_id(queue) else { return false };
        if self.queues[queue_id.0 as usize].paused != paused {
            self.apply_pause(queue_id, paused, now_ms);
            ops.push(Op::PauseQueue { queue_id, paused });
        }
        true
    }

    /// Sets a queue's overrides, creating the queue if it does not exist.
    pub fn configure(
        &mut self,
        now_ms: u64,
        queue: &str,
        settings: QueueSettings,
        ops: &mut Vec<Op>,
    ) {
        let queue_id = self.intern_queue(queue, ops);
        self.apply_configure(queue_id, settings.clone(), now_ms);
        ops.push(Op::ConfigureQueue { queue_id, settings });
    }

    /// Up to `limit` active messages of a queue in `state`, after (or before, when `descending`)
    /// the cursor id.
    pub fn list_active(
        &self,
        queue_id: QueueId,
        state: MessageState,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
    ) -> Vec<(MessageId, MessageMeta)> {
        assert!(state.is_active(), "terminal states are listed from the catalog");
        let members = &self.queues[queue_id.0 as usize].members[state.index()];
        let ids: Vec<MessageId> = match (descending, after) {
            (false, None) => members.iter().take(limit).copied().collect(),
            (false, Some(cursor)) => members
                .range(MessageId(cursor.0.saturating_add(1))..)
                .take(limit)
                .copied()
                .collect(),
            (true, None) => members.iter().rev().take(limit).copied().collect(),
            (true, Some(cursor)) => members.range(..cursor).rev().take(limit).copied().collect(),
        };
        ids.into_iter().map(|id| (id, self.active[&id].meta.clone())).collect()
    }

    /// Dead or delivered messages of a queue in `state` that the broker holds (changed since the
    /// last checkpoint), with every id of the queue it holds in another state or removed: a listing
    /// merges the first into the catalog's page and drops the second from it.
    pub fn settled_of(&self, queue_id: QueueId, state: MessageState) -> SettledView {
        let mut view = SettledView::default();
        for (id, settled) in &self.settled {
            match &settled.meta {
                Some(meta) if meta.queue_id != queue_id => {}
                Some(meta) if meta.state == state => view.in_state.push((*id, meta.clone())),
                _ => view.elsewhere.push(*id),
            }
        }
        for id in self.book.revived.keys() {
            if self.active.get(id).is_some_and(|resident| resident.meta.queue_id == queue_id) {
                view.elsewhere.push(*id);
            }
        }
        view.in_state.sort_unstable_by_key(|(id, _)| *id);
        view.elsewhere.sort_unstable();
        view
    }

    /// Removes each retained message whose retention (as configured now) has passed since it last
    /// changed; a message retention does not remove yet is noted again for its new time. Candidates
    /// come from the catalog's retention notes; the broker's own record of a message wins.
    /// Returns how many were removed.
    pub fn expire_retained(
        &mut self,
        now_ms: u64,
        candidates: Vec<(MessageId, Option<MessageMeta>)>,
        ops: &mut Vec<Op>,
    ) -> u64 {
        let mut ids = Vec::new();
        for (id, stored) in candidates {
            let Ok(meta) = self.resolve(id, stored) else { continue };
            if meta.state.is_active() {
                continue;
            }
            let Some(retention_ms) = self.retention_of(meta.queue_id, meta.state) else { continue };
            let remove_at_ms = meta.updated_at_ms.saturating_add(retention_ms);
            if remove_at_ms <= now_ms {
                self.apply_remove(id, now_ms);
                ids.push(id);
            } else {
                self.book.expire_at(remove_at_ms, id);
            }
        }
        let count = ids.len() as u64;
        if !ids.is_empty() {
            ops.push(Op::Remove { at_ms: now_ms, ids });
        }
        count
    }
}

impl Broker {
    /// Every message the broker holds (active or settled) whose content is in log segment
    /// `segment`, with the content's location.
    pub fn resident_contents_in(&self, segment: u32) -> Vec<(MessageId, ContentLocation)> {
        let in_segment = |meta: &MessageMeta| meta.content.segment() == Some(segment);
        let active = self.active.iter().map(|(id, resident)| (*id, &resident.meta));
        let settled =
            self.settled.iter().filter_map(|(id, settled)| settled.meta.as_ref().map(|m| (*id, m)));
        let mut found: Vec<(MessageId, ContentLocation)> = active
            .chain(settled)
            .filter(|(_, meta)| in_segment(meta))
            .map(|(id, meta)| (id, meta.content))
            .collect();
        found.sort_unstable_by_key(|(id, _)| *id);
        found
    }

    /// Where a message's content is now: the broker's record, else `stored` (made resident);
    /// `None` when the message is gone.
    pub fn current_content(
        &mut self,
        id: MessageId,
        stored: Option<MessageMeta>,
    ) -> Option<ContentLocation> {
        self.resolve(id, stored).ok().map(|meta| meta.content)
    }

    /// Points messages at new copies of their contents (a reclaimed segment's, copied into this
    /// request's frame). Each must be resident ([`Broker::current_content`] makes it so).
    pub fn move_contents(&mut self, items: Vec<(MessageId, ContentLocation)>, ops: &mut Vec<Op>) {
        for (id, content) in &items {
            self.apply_move_content(*id, *content);
        }
        if !items.is_empty() {
            ops.push(Op::MoveContent { items });
        }
    }
}

/// What the broker holds of one queue's terminal messages: see [`Broker::settled_of`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettledView {
    /// Messages in the listed state, by id.
    pub in_state: Vec<(MessageId, MessageMeta)>,
    /// Messages of the queue the broker holds in another state or removed, by id: whatever the
    /// catalog says of them is out of date.
    pub elsewhere: Vec<MessageId>,
}
