//! The first format's records: a version byte, the bincode of the fields (varint integers), and a
//! crc32 of both; its log frames: a version byte and the bincode of a change list.
//!
//! The types whose layout the current format changed are copied here as they were; the others are
//! the current ones (same serde layout).

use crate::queue::{
    BodyKind, HistoryEvent, IdempotencyRecord, MessageId, MessageState, QueueId, QueueRecord,
};
use crate::store::codec::CodecError;
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const META_VERSION: u8 = 1;
pub const CONTENT_VERSION: u8 = 1;
pub const HISTORY_VERSION: u8 = 1;
pub const QUEUE_VERSION: u8 = 1;
pub const IDEMPOTENCY_VERSION: u8 = 1;
pub const FRAME_VERSION: u8 = 1;

const CRC_BYTES: usize = 4;

/// A message's scheduling record in the first format: the current one without the content
/// location (the content was a record of its own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaV1 {
    pub queue_id: QueueId,
    pub state: MessageState,
    pub priority: i32,
    pub attempt_count: u32,
    pub attempt_count_max: u32,
    pub enqueued_at_ms: u64,
    pub updated_at_ms: u64,
    pub due_at_ms: u64,
    pub lease_nonce: u64,
    pub leased_at_ms: u64,
    pub event_seq: u32,
}

/// A message's headers and body in the first format (bincode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentV1 {
    pub headers: Vec<(String, String)>,
    pub body_kind: BodyKind,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// One change of a first-format log frame, in its variant order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    PutQueue {
        queue_id: QueueId,
        record: QueueRecord,
    },
    PutMeta {
        id: MessageId,
        meta: MetaV1,
    },
    PutContent {
        id: MessageId,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    RecordHistory {
        id: MessageId,
        event: HistoryEvent,
        keep_count: u32,
    },
    DeleteMessage {
        id: MessageId,
        queue_id: QueueId,
        state: MessageState,
    },
    IndexTerminal {
        queue_id: QueueId,
        state: MessageState,
        id: MessageId,
    },
    UnindexTerminal {
        queue_id: QueueId,
        state: MessageState,
        id: MessageId,
    },
    ExpireAt {
        at_ms: u64,
        id: MessageId,
    },
    RemoveExpiry {
        at_ms: u64,
        id: MessageId,
    },
    PutIdempotency {
        queue_id: QueueId,
        key: String,
        record: IdempotencyRecord,
    },
    DeleteIdempotency {
        queue_id: QueueId,
        key: String,
    },
    SetNextId {
        next_id: u64,
    },
}

fn options(limit_bytes: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit_bytes as u64)
}

/// Encodes a record as the first format did (for the overlay of replayed changes).
pub fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut bytes = vec![version];
    options(usize::MAX).serialize_into(&mut bytes, value).expect("serializing into a Vec");
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes a first-format record.
pub fn decode<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < 1 + CRC_BYTES {
        return Err(CodecError::TooShort { length: bytes.len() });
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_BYTES);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Crc { stored, computed });
    }
    if body[0] != version {
        return Err(CodecError::Version { found: body[0], expected: version });
    }
    options(bytes.len()).deserialize(&body[1..]).map_err(CodecError::Fields)
}

/// Decodes a first-format log frame payload.
pub fn decode_changes(payload: &[u8]) -> Result<Vec<Change>, CodecError> {
    let Some((&version, fields)) = payload.split_first() else {
        return Err(CodecError::TooShort { length: 0 });
    };
    if version != FRAME_VERSION {
        return Err(CodecError::Version { found: version, expected: FRAME_VERSION });
    }
    options(payload.len()).deserialize(fields).map_err(CodecError::Fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_found() {
        let meta = MetaV1 {
            queue_id: QueueId(3),
            state: MessageState::Leased,
            priority: -7,
            attempt_count: 2,
            attempt_count_max: 10,
            enqueued_at_ms: 1,
            updated_at_ms: 2,
            due_at_ms: 3,
            lease_nonce: u64::MAX,
            leased_at_ms: 2,
            event_seq: 1,
        };
        let bytes = encode(META_VERSION, &meta);
        assert_eq!(decode::<MetaV1>(META_VERSION, &bytes).unwrap(), meta);
        let mut damaged = bytes.clone();
        damaged[3] ^= 1;
        assert!(decode::<MetaV1>(META_VERSION, &damaged).is_err());
        let changes =
            vec![Change::SetNextId { next_id: 9 }, Change::PutMeta { id: MessageId(8), meta }];
        let mut payload = vec![FRAME_VERSION];
        options(usize::MAX).serialize_into(&mut payload, &changes).unwrap();
        assert_eq!(decode_changes(&payload).unwrap(), changes);
        assert!(decode_changes(&[2]).is_err());
    }
}
