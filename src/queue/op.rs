//! Ops: what the broker decided, in the form the write-ahead log keeps.
//!
//! Every change to the broker's state is an [`Op`], and [`Broker::apply`](super::Broker::apply) is
//! the only code that carries one out. A live request decides (which messages to lease, whether a
//! failure is final, how long its backoff is) and then applies its op item by item through the same
//! functions; recovery applies the logged ops in log order and so reaches the same state. An op
//! therefore holds every value that was random or read from the clock when it was decided (the
//! time, the lease deadline, the nonce seed, the retry time), and nothing that the state before it
//! already determines (an ack does not say where the message goes: its queue's retention does).
//!
//! Ops are small: a lease or an ack costs a few bytes per message in the log. Message content is not
//! part of an op; the frame that carries an enqueue holds the contents ahead of the op, and the
//! op's [`Accepted::content`] locations point at them.

use super::message::{ContentLocation, HistoryKind, MessageId, QueueId};
use super::records::QueueSettings;

/// One decided change to the broker's state.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A queue came into being under `name`.
    CreateQueue { queue_id: QueueId, name: String },
    /// A queue was paused or resumed.
    PauseQueue { queue_id: QueueId, paused: bool },
    /// A queue's settings were replaced.
    ConfigureQueue { queue_id: QueueId, settings: QueueSettings },
    /// A batch was accepted: message `first_id + i` is `messages[i]`.
    Enqueue {
        queue_id: QueueId,
        first_id: MessageId,
        at_ms: u64,
        /// The idempotency key the batch was accepted under, with its request digest.
        idempotency: Option<(String, u64)>,
        messages: Vec<Accepted>,
    },
    /// Ready messages were leased until `deadline_ms`; message `id` gets the nonce
    /// [`lease_nonce`]`(nonce_seed, id)`.
    Lease { at_ms: u64, deadline_ms: u64, nonce_seed: u64, ids: Vec<MessageId> },
    /// Leases were extended to the given deadlines.
    Extend { at_ms: u64, items: Vec<(MessageId, u64)> },
    /// Leased messages were acked.
    Ack { at_ms: u64, ids: Vec<MessageId> },
    /// Deliveries failed (nacks, or leases that ran out).
    Fail { at_ms: u64, items: Vec<Failed> },
    /// Scheduled or retrying messages reached their time and are ready.
    Due { at_ms: u64, ids: Vec<MessageId> },
    /// Messages were deleted (by a person, a purge, or their retention).
    Remove { at_ms: u64, ids: Vec<MessageId> },
    /// Dead or retrying messages were sent back to ready by a person.
    Retry { at_ms: u64, reset_attempts: bool, ids: Vec<MessageId> },
    /// A message's delivery time was moved by a person.
    Reschedule { at_ms: u64, id: MessageId, deliver_at_ms: u64 },
    /// A message was changed by a person.
    Edit {
        at_ms: u64,
        id: MessageId,
        /// Which fields the person changed, for the history.
        fields: EditFields,
        priority: Option<i32>,
        /// The new content's location (the content is in the same frame as the op).
        content: Option<ContentLocation>,
        deliver_at_ms: Option<u64>,
    },
    /// Contents were copied out of a log segment being reclaimed into the frame of this op, so
    /// that the segment can be deleted; each item is the message and its content's new location.
    MoveContent { items: Vec<(MessageId, ContentLocation)> },
}

/// One message of an accepted batch, as decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub priority: i32,
    pub attempt_count_max: u32,
    /// When it becomes ready; 0 when it is ready at once.
    pub due_at_ms: u64,
    /// Where its content is.
    pub content: ContentLocation,
}

/// One failed delivery, as decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub id: MessageId,
    /// A nack or a lease that ran out.
    pub kind: HistoryKind,
    /// The error text (already truncated to its limit).
    pub error: String,
    /// Where the message goes: retry at a time, or dead.
    pub outcome: FailOutcome,
}

/// What a failed delivery led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    /// It will be ready again at this time.
    Retrying { next_attempt_at_ms: u64 },
    /// It is dead.
    Dead,
}

/// The fields a person's edit changed, as bits (for the history's "changed ..." text).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EditFields(pub u8);

impl EditFields {
    pub const BODY: u8 = 1;
    pub const HEADERS: u8 = 2;
    pub const PRIORITY: u8 = 4;
    pub const DELIVER_AT: u8 = 8;
    const NAMES: [(u8, &'static str); 4] = [
        (EditFields::BODY, "body"),
        (EditFields::HEADERS, "headers"),
        (EditFields::PRIORITY, "priority"),
        (EditFields::DELIVER_AT, "deliver_at"),
    ];

    /// Whether no field is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds a field.
    pub fn with(self, field: u8) -> EditFields {
        EditFields(self.0 | field)
    }

    /// The names of the fields set, in a fixed order ("body, headers").
    pub fn names(self) -> String {
        let names: Vec<&str> = EditFields::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        names.join(", ")
    }
}

/// The nonce message `id` gets in a lease whose seed is `seed`: a SplitMix64 output, odd so that it
/// is never 0 (0 means "not leased"). It depends on the id, not on the message's place in the
/// lease, so the nonces of the others stay the same when recovery drops an item.
pub fn lease_nonce(seed: u64, id: MessageId) -> u64 {
    crate::random::mix64(seed ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

impl Op {
    /// A name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateQueue { .. } => "create_queue",
            Op::PauseQueue { .. } => "pause_queue",
            Op::ConfigureQueue { .. } => "configure_queue",
            Op::Enqueue { .. } => "enqueue",
            Op::Lease { .. } => "lease",
            Op::Extend { .. } => "extend",
            Op::Ack { .. } => "ack",
            Op::Fail { .. } => "fail",
            Op::Due { .. } => "due",
            Op::Remove { .. } => "remove",
            Op::Retry { .. } => "retry",
            Op::Reschedule { .. } => "reschedule",
            Op::Edit { .. } => "edit",
            Op::MoveContent { .. } => "move_content",
        }
    }

    /// Drops the items naming a message for which `keep` is false (recovery drops the items of
    /// messages set aside as damaged); returns how many it dropped. An op about one message
    /// becomes an empty `Remove` when it is dropped; an enqueue keeps everything (it creates).
    pub fn retain_touched(&mut self, keep: impl Fn(MessageId) -> bool) -> u64 {
        fn retain<T>(items: &mut Vec<T>, keep: impl Fn(&T) -> bool) -> u64 {
            let before = items.len();
            items.retain(|item| keep(item));
            (before - items.len()) as u64
        }
        match self {
            Op::CreateQueue { .. }
            | Op::PauseQueue { .. }
            | Op::ConfigureQueue { .. }
            | Op::Enqueue { .. } => 0,
            Op::Lease { ids, .. }
            | Op::Ack { ids, .. }
            | Op::Due { ids, .. }
            | Op::Remove { ids, .. }
            | Op::Retry { ids, .. } => retain(ids, |id| keep(*id)),
            Op::Extend { items, .. } => retain(items, |(id, _)| keep(*id)),
            Op::Fail { items, .. } => retain(items, |item| keep(item.id)),
            Op::MoveContent { items } => retain(items, |(id, _)| keep(*id)),
            Op::Reschedule { id, at_ms, .. } | Op::Edit { id, at_ms, .. } => {
                if keep(*id) {
                    0
                } else {
                    *self = Op::Remove { at_ms: *at_ms, ids: Vec::new() };
                    1
                }
            }
        }
    }

    /// The messages the op touches that must be resident before it is applied (replay fetches the
    /// ones that are not from the catalog). Enqueue creates its messages, so it names none.
    pub fn touched_ids(&self, out: &mut Vec<MessageId>) {
        match self {
            Op::CreateQueue { .. }
            | Op::PauseQueue { .. }
            | Op::ConfigureQueue { .. }
            | Op::Enqueue { .. } => {}
            Op::Lease { ids, .. }
            | Op::Ack { ids, .. }
            | Op::Due { ids, .. }
            | Op::Remove { ids, .. }
            | Op::Retry { ids, .. } => out.extend_from_slice(ids),
            Op::Extend { items, .. } => out.extend(items.iter().map(|(id, _)| *id)),
            Op::Fail { items, .. } => out.extend(items.iter().map(|item| item.id)),
            Op::Reschedule { id, .. } | Op::Edit { id, .. } => out.push(*id),
            Op::MoveContent { items } => out.extend(items.iter().map(|(id, _)| *id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_nonces_are_odd_distinct_and_repeatable() {
        let nonces: Vec<u64> = (0..1000).map(|id| lease_nonce(42, MessageId(id))).collect();
        assert!(nonces.iter().all(|nonce| nonce & 1 == 1));
        let distinct: std::collections::HashSet<u64> = nonces.iter().copied().collect();
        assert_eq!(distinct.len(), nonces.len());
        assert_eq!(lease_nonce(42, MessageId(7)), nonces[7]);
        assert_ne!(lease_nonce(43, MessageId(7)), nonces[7]);
    }

    #[test]
    fn edit_fields_name_what_changed() {
        let fields = EditFields::default().with(EditFields::PRIORITY).with(EditFields::BODY);
        assert_eq!(fields.names(), "body, priority");
        assert!(EditFields::default().is_empty());
    }
}
