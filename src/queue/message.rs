//! The nouns of a message: its id, its state, the scheduling record and the stored content.
//!
//! A message is split in three records because they change at different rates:
//! - [`MessageMeta`]: small, changed by every transition (lease, ack, nack, expiry). Every active
//!   message's meta is held in memory, so transitions never read the disk.
//! - [`MessageContent`]: headers and body, written once at enqueue into the log and never copied
//!   into memory; the meta holds its [`ContentLocation`].
//! - [`History`]: what broke the ordinary line (nacks, lease expiries, a person's actions); the
//!   latest failure in it is the message's last error.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A message's id: unique forever within a data directory and increasing in enqueue order.
///
/// On the wire it is 16 lowercase hex digits, so that ids sort the same as text and as numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub u64);

impl MessageId {
    /// Parses the 16-hex-digit wire form; anything else is `None`.
    pub fn parse(text: &str) -> Option<MessageId> {
        if text.len() != 16 || !text.bytes().all(is_lower_hex) {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(MessageId)
    }
}

/// The wire forms are lowercase hex only, so each id and token has exactly one spelling.
fn is_lower_hex(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte)
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A queue's internal number; names are interned so that records carry 4 bytes, not the name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(pub u32);

/// Where a message is in its life. See `transition.rs` for the allowed moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum MessageState {
    /// Waiting for its delivery time (`delay_ms` / `deliver_at`).
    Scheduled = 1,
    /// Can be leased now.
    Ready = 2,
    /// Held by a consumer until its lease deadline.
    Leased = 3,
    /// Failed (nack or lease expiry) and waiting for its backoff to pass.
    Retrying = 4,
    /// Out of attempts or dead-lettered by a consumer; waits for a person.
    Dead = 5,
    /// Acknowledged: done.
    Delivered = 6,
}

/// Every state, in wire order; counts are indexed by `state.index()`.
pub const ALL_STATES: [MessageState; 6] = [
    MessageState::Scheduled,
    MessageState::Ready,
    MessageState::Leased,
    MessageState::Retrying,
    MessageState::Dead,
    MessageState::Delivered,
];

impl MessageState {
    /// The lowercase name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            MessageState::Scheduled => "scheduled",
            MessageState::Ready => "ready",
            MessageState::Leased => "leased",
            MessageState::Retrying => "retrying",
            MessageState::Dead => "dead",
            MessageState::Delivered => "delivered",
        }
    }

    /// Position in [`ALL_STATES`], for per-state counters.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// Whether the message still needs the broker (held in memory, driven by timers).
    pub fn is_active(self) -> bool {
        !matches!(self, MessageState::Dead | MessageState::Delivered)
    }

    /// Whether `due_at_ms` is meaningful: a timer is armed for this state.
    pub fn is_timed(self) -> bool {
        matches!(self, MessageState::Scheduled | MessageState::Leased | MessageState::Retrying)
    }
}

/// Where a message's content (headers and body) is stored.
///
/// Content is written once: in the write-ahead log frame that enqueued (or edited) the message,
/// and read back from that segment file. Content moved out of a segment that is being reclaimed
/// lives in the catalog instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentLocation {
    /// `len` bytes at byte `offset` of log segment `segment`.
    Log { segment: u32, offset: u32, len: u32 },
    /// In the catalog, under the message's id; `len` bytes.
    Catalog { len: u32 },
}

impl ContentLocation {
    /// The content's length in bytes.
    pub fn len(self) -> u32 {
        match self {
            ContentLocation::Log { len, .. } | ContentLocation::Catalog { len } => len,
        }
    }

    /// Whether the content is empty (never: a content record has a crc at least).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The log segment holding the content, if it is in the log.
    pub fn segment(self) -> Option<u32> {
        match self {
            ContentLocation::Log { segment, .. } => Some(segment),
            ContentLocation::Catalog { .. } => None,
        }
    }
}

/// The scheduling record of one message: everything a transition reads or writes, and where its
/// content is.
///
/// Small on purpose (integers only, varint-encoded on disk): every active message keeps one in
/// memory and the catalog keeps one per stored message, so it holds no strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageMeta {
    /// The queue the message belongs to.
    pub queue_id: QueueId,
    /// Current state.
    pub state: MessageState,
    /// Higher is leased first.
    pub priority: i32,
    /// Deliveries so far: 1 during the first lease.
    pub attempt_count: u32,
    /// After this many failed deliveries the message goes dead.
    pub attempt_count_max: u32,
    /// When the message was accepted.
    pub enqueued_at_ms: u64,
    /// Last transition.
    pub updated_at_ms: u64,
    /// Scheduled/retrying: when it becomes ready. Leased: the lease deadline. Otherwise 0.
    pub due_at_ms: u64,
    /// Leased: the nonce that a lease token must carry to ack, nack or extend. Otherwise 0.
    pub lease_nonce: u64,
    /// When the latest delivery began (0 before the first lease).
    pub leased_at_ms: u64,
    /// How many history events were ever recorded; the next one gets this number.
    pub event_seq: u32,
    /// Where its headers and body are.
    pub content: ContentLocation,
}

/// How a body was given and must be returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BodyKind {
    /// Raw JSON text, returned verbatim as `body`.
    Json,
    /// Arbitrary bytes, returned as `body_base64`.
    Bytes,
}

/// A message's headers and body: written once at enqueue, read on lease and look-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageContent {
    /// Header names and values, in the order given (names are unique).
    pub headers: Vec<(String, String)>,
    /// How `body` is to be returned.
    pub body_kind: BodyKind,
    /// The body's bytes exactly as received (JSON text, or the decoded base64).
    pub body: Vec<u8>,
}

/// What happened to a message, in its history.
///
/// The ordinary life of a message (enqueued, leased, acked) is not recorded here: it can be read
/// from the scheduling record (`enqueued_at_ms`, `leased_at_ms`, `updated_at_ms`). Only what breaks
/// that line is recorded, so a message delivered at the first try costs no history write at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryKind {
    /// A consumer nacked the delivery; `detail` is its error text.
    Nacked,
    /// The lease ran out before an ack, nack or extend.
    LeaseExpired,
    /// A person changed the message; `detail` names the fields.
    Edited,
    /// A person sent it back to ready; `detail` says whether attempts were reset.
    Retried,
    /// A person moved its delivery time; `detail` gives the new time.
    Rescheduled,
}

impl HistoryKind {
    /// The lowercase name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            HistoryKind::Nacked => "nacked",
            HistoryKind::LeaseExpired => "lease_expired",
            HistoryKind::Edited => "edited",
            HistoryKind::Retried => "retried",
            HistoryKind::Rescheduled => "rescheduled",
        }
    }

    /// Whether the event is a failed delivery (and so a "last error").
    pub fn is_failure(self) -> bool {
        matches!(self, HistoryKind::Nacked | HistoryKind::LeaseExpired)
    }
}

/// One recorded event of a message's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// The message's event number; applying the same event twice (WAL replay) keeps one copy.
    pub seq: u32,
    pub kind: HistoryKind,
    /// When it happened.
    pub at_ms: u64,
    /// The delivery it concerns (the attempt count at the time).
    pub attempt: u32,
    /// Failures: when the failed delivery began.
    pub leased_at_ms: u64,
    /// Failures: the error text (truncated to `ERROR_TEXT_BYTES_MAX`); otherwise a short description.
    pub detail: String,
    /// Failures: whether this failure dead-lettered the message.
    pub dead: bool,
}

/// The recorded events of one message, oldest first, at most the configured number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub events: Vec<HistoryEvent>,
}

impl History {
    /// Adds `event` unless it is already there (replay), keeping the newest `keep_count` events.
    pub fn record(&mut self, event: HistoryEvent, keep_count: usize) {
        if self.events.last().is_some_and(|last| last.seq >= event.seq) {
            return;
        }
        self.events.push(event);
        if self.events.len() > keep_count {
            let excess = self.events.len() - keep_count;
            self.events.drain(..excess);
        }
    }

    /// The latest failure, if any.
    pub fn last_failure(&self) -> Option<&HistoryEvent> {
        self.events.iter().rev().find(|event| event.kind.is_failure())
    }
}

/// A lease token: the message and the nonce of one delivery, so a stale consumer can never ack
/// a redelivered message. On the wire: 32 lowercase hex digits (id then nonce).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    pub id: MessageId,
    pub nonce: u64,
}

impl LeaseToken {
    /// Parses the wire form; anything else is `None`.
    pub fn parse(text: &str) -> Option<LeaseToken> {
        if text.len() != 32 || !text.bytes().all(is_lower_hex) {
            return None;
        }
        let id = u64::from_str_radix(&text[..16], 16).ok()?;
        let nonce = u64::from_str_radix(&text[16..], 16).ok()?;
        Some(LeaseToken { id: MessageId(id), nonce })
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.id.0, self.nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_tokens_round_trip_and_reject_malformed_text() {
        let id = MessageId(0x1234_abcd);
        assert_eq!(MessageId::parse(&id.to_string()), Some(id));
        assert_eq!(MessageId::parse("1234"), None);
        assert_eq!(MessageId::parse("zzzzzzzzzzzzzzzz"), None);
        assert_eq!(MessageId::parse("+000000000000001"), None);
        assert_eq!(MessageId::parse("00000000000000AB"), None);
        let token = LeaseToken { id, nonce: u64::MAX };
        assert_eq!(LeaseToken::parse(&token.to_string()), Some(token));
        assert_eq!(LeaseToken::parse(&id.to_string()), None);
    }

    #[test]
    fn history_keeps_the_newest_events_once_each() {
        let event = |seq| HistoryEvent {
            seq,
            kind: if seq % 2 == 0 { HistoryKind::Nacked } else { HistoryKind::Edited },
            at_ms: u64::from(seq),
            attempt: 1,
            leased_at_ms: 0,
            detail: String::new(),
            dead: false,
        };
        let mut history = History::default();
        for seq in 0..5 {
            history.record(event(seq), 3);
            history.record(event(seq), 3);
        }
        let seqs: Vec<u32> = history.events.iter().map(|event| event.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert_eq!(history.last_failure().map(|event| event.seq), Some(4));
    }

    #[test]
    fn state_indexes_cover_all_states_once() {
        for (index, state) in ALL_STATES.iter().enumerate() {
            assert_eq!(state.index(), index);
        }
    }
}
