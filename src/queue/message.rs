//! The nouns of a message: its id, its state, the scheduling record and the stored content.
//!
//! A message is split in three records because they change at different rates:
//! - [`MessageMeta`]: small and fixed-size, rewritten on every transition (lease, ack, nack, expiry).
//!   Every active message's meta is also held in memory, so transitions never read the store.
//! - [`MessageContent`]: headers and body, written once at enqueue. Kept out of memory.
//! - [`LastError`]: the latest failure text, written on nack and lease expiry.

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
        matches!(
            self,
            MessageState::Scheduled | MessageState::Leased | MessageState::Retrying
        )
    }
}

/// The scheduling record of one message: everything a transition reads or writes.
///
/// Fixed-size on purpose: it is rewritten on every transition and every active message keeps one in
/// memory, so it holds no strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageContent {
    /// Header names and values, in the order given (names are unique).
    pub headers: Vec<(String, String)>,
    /// How `body` is to be returned.
    pub body_kind: BodyKind,
    /// The body's bytes exactly as received (JSON text, or the decoded base64).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The latest failure of a message: a nack's error text, or a lease expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// The text as the consumer gave it (truncated to `ERROR_TEXT_BYTES_MAX`).
    pub message: String,
    /// When the failure was recorded.
    pub at_ms: u64,
    /// The delivery that failed.
    pub attempt: u32,
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
        Some(LeaseToken {
            id: MessageId(id),
            nonce,
        })
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
        let token = LeaseToken {
            id,
            nonce: u64::MAX,
        };
        assert_eq!(LeaseToken::parse(&token.to_string()), Some(token));
        assert_eq!(LeaseToken::parse(&id.to_string()), None);
    }

    #[test]
    fn state_indexes_cover_all_states_once() {
        for (index, state) in ALL_STATES.iter().enumerate() {
            assert_eq!(state.index(), index);
        }
    }
}
