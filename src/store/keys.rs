//! The sled key layout: big-endian integers, so that sled's byte order is numeric order.
//!
//! | tree          | key                                   | value                       |
//! |---------------|---------------------------------------|-----------------------------|
//! | `meta`        | message id, u64 BE (8 bytes)          | `MessageMeta` record        |
//! | `content`     | message id, u64 BE                    | `MessageContent` record     |
//! | `history`     | message id, u64 BE                    | `History` record            |
//! | `queues`      | queue id, u32 BE (4 bytes)            | `QueueRecord` record        |
//! | `terminal`    | queue id u32 BE, state u8, id u64 BE  | empty                       |
//! | `expiry`      | remove-at ms u64 BE, id u64 BE        | empty                       |
//! | `idempotency` | queue id u32 BE, then the key's bytes | `IdempotencyRecord` record  |
//! | `system`      | ASCII name (`checkpoint`, `next_id`)  | fixed-width LE integers     |
//!
//! Ids increase in enqueue order, so iterating `meta` visits messages oldest first. `terminal` lists
//! dead and delivered messages (which are not in memory) per queue and state in id order, for
//! listing and purging; `expiry` orders terminal messages by the time their retention ends.

use crate::queue::{MessageId, MessageState, QueueId};

/// System key: the WAL position the last checkpoint covers (segment u64 LE, offset u64 LE).
pub const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// System key: the next message id (u64 LE).
pub const NEXT_ID_KEY: &[u8] = b"next_id";

pub fn message_key(id: MessageId) -> [u8; 8] {
    id.0.to_be_bytes()
}

pub fn decode_message_key(key: &[u8]) -> Option<MessageId> {
    let bytes: [u8; 8] = key.try_into().ok()?;
    Some(MessageId(u64::from_be_bytes(bytes)))
}

pub fn queue_key(queue_id: QueueId) -> [u8; 4] {
    queue_id.0.to_be_bytes()
}

pub fn decode_queue_key(key: &[u8]) -> Option<QueueId> {
    let bytes: [u8; 4] = key.try_into().ok()?;
    Some(QueueId(u32::from_be_bytes(bytes)))
}

pub fn terminal_key(queue_id: QueueId, state: MessageState, id: MessageId) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..4].copy_from_slice(&queue_id.0.to_be_bytes());
    key[4] = state as u8;
    key[5..].copy_from_slice(&id.0.to_be_bytes());
    key
}

/// The prefix of every `terminal` key of one queue and state.
pub fn terminal_prefix(queue_id: QueueId, state: MessageState) -> [u8; 5] {
    let mut prefix = [0u8; 5];
    prefix[..4].copy_from_slice(&queue_id.0.to_be_bytes());
    prefix[4] = state as u8;
    prefix
}

/// The message id of a `terminal` key.
pub fn decode_terminal_key(key: &[u8]) -> Option<MessageId> {
    decode_message_key(key.get(5..)?)
}

pub fn expiry_key(at_ms: u64, id: MessageId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&at_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.0.to_be_bytes());
    key
}

pub fn decode_expiry_key(key: &[u8]) -> Option<(u64, MessageId)> {
    let at: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(at), decode_message_key(key.get(8..)?)?))
}

pub fn idempotency_key(queue_id: QueueId, key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + key.len());
    bytes.extend_from_slice(&queue_id.0.to_be_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

pub fn decode_idempotency_key(bytes: &[u8]) -> Option<(QueueId, String)> {
    if bytes.len() < 4 {
        return None;
    }
    let (queue, key) = bytes.split_at(4);
    let queue_id = decode_queue_key(queue)?;
    let key = std::str::from_utf8(key).ok()?;
    Some((queue_id, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_numerically() {
        let ids = [0u64, 1, 255, 256, 65_536, u64::MAX - 1, u64::MAX];
        for pair in ids.windows(2) {
            assert!(message_key(MessageId(pair[0])) < message_key(MessageId(pair[1])));
        }
        for id in ids {
            assert_eq!(decode_message_key(&message_key(MessageId(id))), Some(MessageId(id)));
        }
        assert_eq!(decode_message_key(&[1, 2, 3]), None);
    }

    #[test]
    fn terminal_and_expiry_keys_sort_and_round_trip() {
        let early = terminal_key(QueueId(1), MessageState::Dead, MessageId(5));
        let late = terminal_key(QueueId(1), MessageState::Dead, MessageId(300));
        assert!(early < late);
        assert!(early.starts_with(&terminal_prefix(QueueId(1), MessageState::Dead)));
        assert_eq!(decode_terminal_key(&late), Some(MessageId(300)));
        assert!(expiry_key(1, MessageId(9)) < expiry_key(2, MessageId(1)));
        assert_eq!(decode_expiry_key(&expiry_key(7, MessageId(9))), Some((7, MessageId(9))));
        assert_eq!(decode_expiry_key(&[0; 3]), None);
    }

    #[test]
    fn idempotency_keys_round_trip_and_reject_garbage() {
        let bytes = idempotency_key(QueueId(7), "order-42");
        assert_eq!(decode_idempotency_key(&bytes), Some((QueueId(7), "order-42".into())));
        assert_eq!(decode_idempotency_key(&[0, 0]), None);
        assert_eq!(decode_idempotency_key(&[0, 0, 0, 1, 0xff]), None);
        assert_eq!(decode_queue_key(&queue_key(QueueId(u32::MAX))), Some(QueueId(u32::MAX)));
    }
}
