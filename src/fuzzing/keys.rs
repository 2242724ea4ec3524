//! `decode_key`: every decoder of the catalog's keys; round trips, and byte order = numeric order.

use crate::queue::{MessageId, QueueId, ALL_STATES};
use crate::store::keys;

/// Feeds `data` to every catalog key decoder and checks round trips, ranges and ordering.
///
/// A key decodes exactly when it has the right shape, re-encodes to the same bytes (each value has
/// one key), lies in its kind's range, and two keys of a kind compare as bytes the way their
/// values compare as numbers (then strings), which is what makes sled's order the id order of
/// pages, the time order of retention notes and idempotency keys, and the page order of a
/// queue's dead or delivered listing.
pub fn decode_key(data: &[u8]) {
    let shaped = |kind: u8, length: usize| data.len() == length && data.first() == Some(&kind);
    match keys::decode_queue_key(data) {
        Some(queue_id) => assert_eq!(keys::queue_key(queue_id).as_slice(), data),
        None => assert!(!shaped(keys::QUEUE, 5), "a queue key was refused"),
    }
    match keys::decode_page_key(data) {
        Some(page) => assert_eq!(keys::page_key(page).as_slice(), data),
        None => assert!(!shaped(keys::PAGE, 9), "a page key was refused"),
    }
    match keys::decode_active_key(data) {
        Some(page) => assert_eq!(keys::active_key(page).as_slice(), data),
        None => assert!(!shaped(keys::ACTIVE, 9), "an active key was refused"),
    }
    match keys::decode_expiry_key(data) {
        Some((at_ms, page)) => assert_eq!(keys::expiry_key(at_ms, page).as_slice(), data),
        None => assert!(!shaped(keys::EXPIRY, 17), "a retention note key was refused"),
    }
    match keys::decode_idempotency_key(data) {
        Some((at_ms, queue_id, key)) => {
            assert_eq!(keys::idempotency_key(at_ms, queue_id, &key), data);
        }
        None => assert!(
            data.len() < 14
                || data[0] != keys::IDEMPOTENCY
                || std::str::from_utf8(&data[13..]).is_err(),
            "a well-formed idempotency key was refused"
        ),
    }
    check_terminal_key(data);
    check_key_order(data);
}

/// A `t` key decodes under exactly its own queue and state.
fn check_terminal_key(data: &[u8]) {
    let own = (data.len() == 14 && data[0] == keys::TERMINAL).then(|| {
        let queue_id = QueueId(u32::from_be_bytes(data[1..5].try_into().expect("4 bytes")));
        (queue_id, data[5])
    });
    let other_queue = own.map_or(QueueId(0), |(queue_id, _)| QueueId(queue_id.0 ^ 1));
    for state in ALL_STATES {
        let decoded = keys::decode_terminal_key(data, own.map_or(QueueId(0), |own| own.0), state);
        match (own, decoded) {
            (Some((queue_id, byte)), Some(page)) => {
                assert_eq!(byte, state as u8, "a terminal key decoded under another state");
                assert_eq!(keys::terminal_key(queue_id, state, page).as_slice(), data);
            }
            (Some((_, byte)), None) => {
                assert_ne!(byte, state as u8, "a terminal key was refused under its own state")
            }
            (None, decoded) => assert_eq!(decoded, None, "a malformed terminal key decoded"),
        }
        assert_eq!(
            keys::decode_terminal_key(data, other_queue, state),
            None,
            "a terminal key decoded under another queue"
        );
    }
}

/// Keys built from numbers taken from the input order as the numbers do, within their kind's
/// range.
fn check_key_order(data: &[u8]) {
    if data.len() < 16 {
        return;
    }
    let number = |range: std::ops::Range<usize>| {
        u64::from_be_bytes(data[range].try_into().expect("8 bytes"))
    };
    let (a, b) = (number(0..8), number(8..16));
    let queue = |value: u64| QueueId(value as u32);
    let in_range = |kind: u8, key: &[u8]| {
        let (start, end) = keys::kind_range(kind);
        assert!(start.as_slice() <= key && key < end.as_slice(), "key {key:02x?} outside its kind");
    };
    let pairs: [(u8, Vec<u8>, Vec<u8>); 4] = [
        (keys::PAGE, keys::page_key(a).to_vec(), keys::page_key(b).to_vec()),
        (keys::ACTIVE, keys::active_key(a).to_vec(), keys::active_key(b).to_vec()),
        (
            keys::HISTORY,
            keys::history_key(MessageId(a)).to_vec(),
            keys::history_key(MessageId(b)).to_vec(),
        ),
        (
            keys::CONTENT,
            keys::content_key(MessageId(a)).to_vec(),
            keys::content_key(MessageId(b)).to_vec(),
        ),
    ];
    for (kind, left, right) in pairs {
        in_range(kind, &left);
        assert_eq!(left.cmp(&right), a.cmp(&b), "order of {} keys", kind as char);
    }
    let (left, right) = (keys::queue_key(queue(a)), keys::queue_key(queue(b)));
    in_range(keys::QUEUE, &left);
    assert_eq!(left.cmp(&right), queue(a).cmp(&queue(b)), "queue key order");
    let (left, right) = (keys::expiry_key(a, b), keys::expiry_key(b, a));
    in_range(keys::EXPIRY, &left);
    assert_eq!(left.cmp(&right), (a, b).cmp(&(b, a)), "retention note key order");
    let rest = &data[16..];
    let split = rest.len() / 2;
    let (text_a, text_b) =
        (String::from_utf8_lossy(&rest[..split]), String::from_utf8_lossy(&rest[split..]));
    let (left, right) =
        (keys::idempotency_key(a, queue(b), &text_a), keys::idempotency_key(b, queue(a), &text_b));
    in_range(keys::IDEMPOTENCY, &left);
    let expected = (a, queue(b), text_a.as_bytes()).cmp(&(b, queue(a), text_b.as_bytes()));
    assert_eq!(left.cmp(&right), expected, "idempotency key order");
    let states = [ALL_STATES[(a % 6) as usize], ALL_STATES[(b % 6) as usize]];
    let (left, right) =
        (keys::terminal_key(queue(a), states[0], b), keys::terminal_key(queue(b), states[1], a));
    in_range(keys::TERMINAL, &left);
    let expected = (queue(a), states[0] as u8, b).cmp(&(queue(b), states[1] as u8, a));
    assert_eq!(left.cmp(&right), expected, "terminal key order");
}
