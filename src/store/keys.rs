//! The catalog's key layout: one sled tree, a one-byte kind prefix, big-endian integers after it,
//! so that sled's byte order is numeric order within each kind.
//!
//! | kind | key after the prefix                          | value                                |
//! |------|-----------------------------------------------|--------------------------------------|
//! | `m`  | (none)                                        | the manifest                         |
//! | `q`  | queue id u32                                  | queue record                         |
//! | `p`  | page u64 (`id >> 8`)                          | page of message records              |
//! | `a`  | page u64                                      | u32 LE: active records in the page   |
//! | `t`  | queue id u32, state u8, page u64              | u32 LE: that queue's records in that (dead or delivered) state in the page |
//! | `h`  | message id u64                                | history record                       |
//! | `c`  | message id u64                                | content kept in the catalog          |
//! | `e`  | remove-at second (ms) u64, page u64           | empty: the page holds a message whose retention ends then |
//! | `i`  | created-at ms u64, queue id u32, key bytes    | idempotency record                   |
//! | `x`  | page u64                                      | a damaged page set aside by `--quarantine-corrupt`, byte for byte |
//!
//! What the orders buy: `a` lists the few pages a restart must load; `t` lists a queue's dead (or
//! delivered) messages page by page in id order, both ways, without reading other pages; `e`
//! yields the pages whose retention is due, oldest first; `i` ages out a day of keys with one
//! range.

use crate::queue::{MessageId, MessageState, QueueId};

pub const MANIFEST: u8 = b'm';
pub const QUEUE: u8 = b'q';
pub const PAGE: u8 = b'p';
pub const ACTIVE: u8 = b'a';
pub const TERMINAL: u8 = b't';
pub const HISTORY: u8 = b'h';
pub const CONTENT: u8 = b'c';
pub const EXPIRY: u8 = b'e';
pub const IDEMPOTENCY: u8 = b'i';
pub const QUARANTINE: u8 = b'x';

/// The manifest's key.
pub const MANIFEST_KEY: &[u8] = b"m";

pub fn queue_key(queue_id: QueueId) -> [u8; 5] {
    let mut key = [QUEUE, 0, 0, 0, 0];
    key[1..].copy_from_slice(&queue_id.0.to_be_bytes());
    key
}

pub fn decode_queue_key(key: &[u8]) -> Option<QueueId> {
    let bytes: [u8; 4] = key.strip_prefix(&[QUEUE])?.try_into().ok()?;
    Some(QueueId(u32::from_be_bytes(bytes)))
}

fn kind_u64(kind: u8, value: u64) -> [u8; 9] {
    let mut key = [kind; 9];
    key[1..].copy_from_slice(&value.to_be_bytes());
    key
}

fn decode_kind_u64(kind: u8, key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.strip_prefix(&[kind])?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

pub fn page_key(page: u64) -> [u8; 9] {
    kind_u64(PAGE, page)
}

pub fn decode_page_key(key: &[u8]) -> Option<u64> {
    decode_kind_u64(PAGE, key)
}

pub fn active_key(page: u64) -> [u8; 9] {
    kind_u64(ACTIVE, page)
}

pub fn decode_active_key(key: &[u8]) -> Option<u64> {
    decode_kind_u64(ACTIVE, key)
}

pub fn quarantine_key(page: u64) -> [u8; 9] {
    kind_u64(QUARANTINE, page)
}

pub fn history_key(id: MessageId) -> [u8; 9] {
    kind_u64(HISTORY, id.0)
}

pub fn content_key(id: MessageId) -> [u8; 9] {
    kind_u64(CONTENT, id.0)
}

pub fn terminal_key(queue_id: QueueId, state: MessageState, page: u64) -> [u8; 14] {
    let mut key = [0u8; 14];
    key[0] = TERMINAL;
    key[1..5].copy_from_slice(&queue_id.0.to_be_bytes());
    key[5] = state as u8;
    key[6..].copy_from_slice(&page.to_be_bytes());
    key
}

/// The page of a `t` key, if it is one of `queue_id` and `state`.
pub fn decode_terminal_key(key: &[u8], queue_id: QueueId, state: MessageState) -> Option<u64> {
    if key.len() != 14 || key[..6] != terminal_key(queue_id, state, 0)[..6] {
        return None;
    }
    Some(u64::from_be_bytes(key[6..].try_into().ok()?))
}

pub fn expiry_key(at_ms: u64, page: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = EXPIRY;
    key[1..9].copy_from_slice(&at_ms.to_be_bytes());
    key[9..].copy_from_slice(&page.to_be_bytes());
    key
}

pub fn decode_expiry_key(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != 17 || key[0] != EXPIRY {
        return None;
    }
    let at_ms = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let page = u64::from_be_bytes(key[9..].try_into().ok()?);
    Some((at_ms, page))
}

pub fn idempotency_key(created_at_ms: u64, queue_id: QueueId, key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(13 + key.len());
    bytes.push(IDEMPOTENCY);
    bytes.extend_from_slice(&created_at_ms.to_be_bytes());
    bytes.extend_from_slice(&queue_id.0.to_be_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

/// The created-at time, queue and key of an `i` key.
pub fn decode_idempotency_key(key: &[u8]) -> Option<(u64, QueueId, String)> {
    if key.len() < 14 || key[0] != IDEMPOTENCY {
        return None;
    }
    let created_at_ms = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let queue_id = QueueId(u32::from_be_bytes(key[9..13].try_into().ok()?));
    let name = std::str::from_utf8(&key[13..]).ok()?.to_string();
    Some((created_at_ms, queue_id, name))
}

/// The first key of a kind, and the first key after it (for a range over the kind).
pub fn kind_range(kind: u8) -> (Vec<u8>, Vec<u8>) {
    (vec![kind], vec![kind + 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_order_numerically() {
        assert_eq!(decode_queue_key(&queue_key(QueueId(7))), Some(QueueId(7)));
        assert_eq!(decode_page_key(&page_key(u64::MAX)), Some(u64::MAX));
        assert_eq!(decode_active_key(&active_key(3)), Some(3));
        assert!(page_key(255) < page_key(256));
        assert!(expiry_key(1000, 9) < expiry_key(1001, 0));
        assert_eq!(decode_expiry_key(&expiry_key(5, 6)), Some((5, 6)));
        let terminal = terminal_key(QueueId(2), MessageState::Dead, 300);
        assert_eq!(decode_terminal_key(&terminal, QueueId(2), MessageState::Dead), Some(300));
        assert_eq!(decode_terminal_key(&terminal, QueueId(2), MessageState::Delivered), None);
        assert!(terminal < terminal_key(QueueId(2), MessageState::Dead, 301));
        let key = idempotency_key(42, QueueId(1), "signup-1");
        assert_eq!(decode_idempotency_key(&key), Some((42, QueueId(1), "signup-1".into())));
        assert!(idempotency_key(41, QueueId(9), "z") < key);
        assert_eq!(decode_page_key(&[PAGE, 1]), None);
    }
}
