//! Running one command against the broker: its ops become one log frame, its reply waits for the
//! group's sync (reads are answered at once).

use super::command::{
    BackupStart, Command, CommitError, IncomingMessage, MessageRead, Reply, SettledListing,
};
use super::{pending, CheckpointHold, Engine, Pending, SegmentPin, TokenResult};
use crate::limits::CONTROL_CHUNK_COUNT_MAX;
use crate::queue::{Edit, Lookup, MessageId, MessageMeta, NewMessage, Refusal, Stored};
use crate::store::codec::FrameWriter;
use std::sync::atomic::Ordering;

impl Engine {
    /// Runs one command: read-only ones are answered at once, the rest wait for the commit.
    pub(super) fn execute(&mut self, command: Command, now_ms: u64) {
        if let (Some(failure), false) = (self.failed(), command.is_read_only()) {
            command.refuse(CommitError::StorageFailed(failure));
            return;
        }
        if matches!(command, Command::Enqueue { .. }) {
            if let Some(error) = self.refuses_enqueue() {
                command.refuse(error);
                return;
            }
        }
        let Some(command) = self.park_if_cold(command) else { return };
        let reply = match command {
            Command::Enqueue { queue, messages, idempotency, reply } => {
                let result = self.enqueue(now_ms, &queue, messages, idempotency);
                pending(reply, result)
            }
            Command::Lease { queue, count_max, lease_ms, reply } => {
                let grants = self.broker.lease(now_ms, &queue, count_max, lease_ms, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, grants)
            }
            Command::Ack { queue, tokens, reply } => {
                let results = self.broker.ack(now_ms, &queue, &tokens, &mut self.ops);
                self.append_ops(0, |_, _| {});
                self.resolving(reply, &queue, results)
            }
            Command::Nack { queue, items, reply } => {
                let results = self.broker.nack(now_ms, &queue, items, &mut self.ops);
                self.append_ops(0, |_, _| {});
                self.resolving(reply, &queue, results)
            }
            Command::Extend { queue, items, reply } => {
                let results = self.broker.extend(now_ms, &queue, &items, &mut self.ops);
                self.append_ops(0, |_, _| {});
                self.resolving(reply, &queue, results)
            }
            read @ (Command::QueueStats { .. }
            | Command::Queues { .. }
            | Command::ListActive { .. }
            | Command::ListSettled { .. }
            | Command::Message { .. }
            | Command::BackupStart { .. }
            | Command::HoldCheckpoints { .. }
            | Command::WalEnd { .. }) => return self.read(read),
            Command::Stop => return,
            control => match self.execute_control(control, now_ms) {
                Some(reply) => reply,
                None => return,
            },
        };
        self.pending.push(reply);
    }

    /// Why an enqueue is refused before it runs: low disk, or too much waiting for a checkpoint.
    fn refuses_enqueue(&mut self) -> Option<CommitError> {
        if let Some(free_bytes) = self.disk_low() {
            return Some(CommitError::DiskFull { free_bytes });
        }
        if self.broker.settled_count() >= crate::limits::SETTLED_COUNT_MAX {
            // The checkpoint writer fell behind: refuse new work rather than grow memory.
            return Some(CommitError::Overloaded);
        }
        None
    }

    /// Runs an enqueue: its contents go into the frame first, so the broker learns where each is.
    fn enqueue(
        &mut self,
        now_ms: u64,
        queue: &str,
        messages: Vec<IncomingMessage>,
        idempotency: Option<crate::queue::IdempotencyKey>,
    ) -> Result<crate::queue::EnqueueOutcome, crate::queue::EnqueueError> {
        let Some(mut writer) = self.begin_frame(messages.len()) else {
            // A storage failure just happened: the group's commit answers StorageFailed, so this
            // value is never sent.
            return Err(crate::queue::EnqueueError::IdempotencyConflict);
        };
        let mut placed = Vec::with_capacity(messages.len());
        for message in messages {
            let content = writer.content(self.wal.frame_buffer(), &message.content);
            placed.push(NewMessage {
                content,
                priority: message.priority,
                attempt_count_max: message.attempt_count_max,
                delivery: message.delivery,
            });
        }
        let result = self.broker.enqueue(now_ms, queue, placed, idempotency, &mut self.ops);
        self.close_frame(writer);
        result
    }

    /// Ends a frame opened for contents: with its ops, or dropped when there are none (the broker
    /// refused, or the request repeated an earlier one).
    fn close_frame(&mut self, writer: FrameWriter) {
        if self.ops.is_empty() {
            self.wal.abort_frame();
            return;
        }
        writer.finish(self.wal.frame_buffer(), &self.ops);
        self.wal.end_frame();
        self.ops.clear();
    }

    /// Answers a read at once (it changes nothing, so it need not wait for the sync).
    fn read(&mut self, command: Command) {
        let broker = &self.broker;
        match command {
            Command::QueueStats { queue, reply } => {
                drop(reply.send(Ok(broker.queue_stats(&queue))))
            }
            Command::Queues { reply } => drop(reply.send(Ok(broker.all_queue_stats()))),
            Command::ListActive { queue, state, after, descending, limit, reply } => {
                let listed = broker.queue_id(&queue).map(|queue_id| {
                    broker
                        .list_active(queue_id, state, after, descending, limit)
                        .into_iter()
                        .map(|(id, meta)| (id, meta, broker.pending_history(id)))
                        .collect()
                });
                drop(reply.send(Ok(listed)));
            }
            Command::ListSettled { queue, state, reply } => {
                let listing = broker.queue_id(&queue).map(|queue_id| {
                    let view = broker.settled_of(queue_id, state);
                    let pending = view
                        .in_state
                        .iter()
                        .map(|(id, _)| (*id, broker.pending_history(*id)))
                        .filter(|(_, events)| !events.is_empty())
                        .collect();
                    SettledListing { queue_id, view, epoch: broker.durable_epoch(), pending }
                });
                drop(reply.send(Ok(listing)));
            }
            Command::Message { id, reply } => {
                let lookup = broker.lookup(id);
                let queue = match &lookup {
                    Lookup::Found(meta) => Some(broker.queue_name(meta.queue_id).to_string()),
                    _ => None,
                };
                let read =
                    MessageRead { lookup, pending_history: broker.pending_history(id), queue };
                drop(reply.send(Ok(read)));
            }
            Command::BackupStart { reply } => {
                self.house.pins.fetch_add(1, Ordering::SeqCst);
                let pin = SegmentPin { pins: self.house.pins.clone() };
                let checkpoint = self.house.durable_position;
                drop(reply.send(Ok(BackupStart { checkpoint, pin })));
            }
            Command::HoldCheckpoints { reply } => {
                self.house.holds.fetch_add(1, Ordering::SeqCst);
                let hold = CheckpointHold { holds: self.house.holds.clone() };
                self.house.hold_waiters.push((reply, hold));
                self.answer_hold_waiters();
            }
            Command::WalEnd { reply } => drop(reply.send(Ok(self.wal.committed_position()))),
            other => unreachable!("not a read: {}", other.name()),
        }
    }

    /// The stored record a command carried, if the broker must use it: `Stale` when the request
    /// read the message in a state the broker has left (the caller reads again).
    fn stored(
        &self,
        id: MessageId,
        stored: Option<Stored>,
    ) -> Result<Option<MessageMeta>, CommitError> {
        self.broker.stored_for_action(id, stored).map_err(|_| CommitError::Stale)
    }

    /// Runs a person's action; `None` when it was answered already (refused).
    fn execute_control(&mut self, command: Command, now_ms: u64) -> Option<Pending> {
        macro_rules! stored_or_refuse {
            ($id:expr, $stored:expr, $reply:expr) => {
                match self.stored($id, $stored) {
                    Ok(stored) => stored,
                    Err(error) => {
                        let _ = $reply.send(Err(error));
                        return None;
                    }
                }
            };
        }
        let reply = match command {
            Command::Edit { id, edit, stored, reply } => {
                let stored = stored_or_refuse!(id, stored, reply);
                let content_count = usize::from(edit.content.is_some());
                let Some(mut writer) = self.begin_frame(content_count) else {
                    // A storage failure just happened: the commit answers StorageFailed.
                    return Some(pending(reply, Err(crate::queue::ControlError::NotFound)));
                };
                let content = edit
                    .content
                    .as_ref()
                    .map(|bytes| writer.content(self.wal.frame_buffer(), bytes));
                let edit = Edit {
                    content,
                    priority: edit.priority,
                    deliver_at_ms: edit.deliver_at_ms,
                    fields: edit.fields,
                };
                let result = self.broker.edit(now_ms, id, stored, edit, &mut self.ops);
                self.close_frame(writer);
                pending(reply, result)
            }
            Command::Delete { id, stored, reply } => {
                let stored = stored_or_refuse!(id, stored, reply);
                let result = self.broker.delete(now_ms, id, stored, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, result)
            }
            Command::Retry { id, reset_attempts, stored, reply } => {
                let stored = stored_or_refuse!(id, stored, reply);
                let result = self.broker.retry(now_ms, id, stored, reset_attempts, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, result)
            }
            Command::Reschedule { id, deliver_at_ms, stored, reply } => {
                let stored = stored_or_refuse!(id, stored, reply);
                let result =
                    self.broker.reschedule(now_ms, id, stored, deliver_at_ms, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, result)
            }
            Command::Pause { queue, paused, reply } => {
                let found = self.broker.set_paused(now_ms, &queue, paused, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, found)
            }
            Command::Configure { queue, settings, reply } => {
                self.broker.configure(now_ms, &queue, settings, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, ())
            }
            Command::Purge { queue, state, chunk, reply } => {
                let Some(queue_id) = self.broker.queue_id(&queue) else {
                    return Some(pending(reply, None));
                };
                let items = if state.is_active() {
                    let listed = self.broker.list_active(
                        queue_id,
                        state,
                        None,
                        false,
                        CONTROL_CHUNK_COUNT_MAX,
                    );
                    listed.into_iter().map(|(id, _)| (id, None)).collect()
                } else {
                    match self.stored_chunk(chunk) {
                        Ok(items) => items,
                        Err(error) => {
                            let _ = reply.send(Err(error));
                            return None;
                        }
                    }
                };
                let count = self.broker.delete_many(now_ms, items, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, Some(count))
            }
            Command::Redrive { queue, reset_attempts, chunk, reply } => {
                if self.broker.queue_id(&queue).is_none() {
                    return Some(pending(reply, None));
                }
                let items = match self.stored_chunk(chunk) {
                    Ok(items) => items,
                    Err(error) => {
                        let _ = reply.send(Err(error));
                        return None;
                    }
                };
                let count = self.broker.retry_many(now_ms, items, reset_attempts, &mut self.ops);
                self.append_ops(0, |_, _| {});
                pending(reply, Some(count))
            }
            other => unreachable!("not a control command: {}", other.name()),
        };
        Some(reply)
    }

    /// The records a purge or redrive chunk carried, checked like [`Engine::stored`].
    fn stored_chunk(
        &self,
        chunk: Vec<(MessageId, Stored)>,
    ) -> Result<Vec<(MessageId, Option<MessageMeta>)>, CommitError> {
        chunk.into_iter().map(|(id, stored)| Ok((id, self.stored(id, Some(stored))?))).collect()
    }

    /// A token reply whose refusals are resolved after the commit: a token of a message that left
    /// memory is `LeaseExpired` if the message is still in this queue, else `Unknown`; the caller
    /// asks the catalog about messages only it holds.
    fn resolving<T: Send + 'static>(
        &self,
        reply: Reply<Vec<TokenResult<T>>>,
        queue: &str,
        results: Vec<Result<T, Refusal>>,
    ) -> Pending {
        let queue_id = self.broker.queue_id(queue);
        let resolved: Vec<TokenResult<T>> = results
            .into_iter()
            .map(|result| match result {
                Ok(value) => TokenResult::Done(value),
                Err(Refusal::LeaseExpired) => TokenResult::LeaseExpired,
                Err(Refusal::Unknown) => TokenResult::Unknown,
                Err(Refusal::NotActive(id)) => match (self.broker.lookup(id), queue_id) {
                    (Lookup::Found(meta), Some(queue_id)) if meta.queue_id == queue_id => {
                        TokenResult::LeaseExpired
                    }
                    (Lookup::InCatalog { .. }, Some(queue_id)) => {
                        TokenResult::InCatalog { id, queue_id }
                    }
                    _ => TokenResult::Unknown,
                },
            })
            .collect();
        pending(reply, resolved)
    }
}
