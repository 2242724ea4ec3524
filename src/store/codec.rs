//! The record codec: the only place where stored bytes become values and values become bytes.
//!
//! Every record stored in sled is framed as:
//!
//! | bytes | field                                              |
//! |-------|----------------------------------------------------|
//! | 1     | format version (one per record kind, see below)    |
//! | n     | fields, bincode (varint integers, length-prefixed) |
//! | 4     | crc32 (crc32fast) of the version and fields, LE    |
//!
//! WAL frames carry their own crc (see `wal.rs`); their payload is a version byte followed by the
//! bincode of the frame's `Vec<Change>`. Decoding never panics: a short record, a crc mismatch, an
//! unknown version or malformed fields are `CodecError`s, and bincode is told the record's length as
//! its allocation limit so that a corrupt length cannot ask for gigabytes.

use crate::queue::{
    BodyKind, Change, History, IdempotencyRecord, MessageContent, MessageMeta, QueueRecord,
};
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

/// Format versions, one per record kind, so that each can evolve on its own.
pub const META_VERSION: u8 = 1;
pub const CONTENT_VERSION: u8 = 1;
pub const HISTORY_VERSION: u8 = 1;
pub const QUEUE_VERSION: u8 = 1;
pub const IDEMPOTENCY_VERSION: u8 = 1;
pub const WAL_FRAME_VERSION: u8 = 1;

const CRC_BYTES: usize = 4;

/// Why bytes could not be decoded.
#[derive(Debug)]
pub enum CodecError {
    /// Fewer bytes than the smallest possible record.
    TooShort { length: usize },
    /// The stored crc does not match the bytes: the record is corrupt.
    Crc { stored: u32, computed: u32 },
    /// A version byte this build does not know (written by a newer outboxd, or corrupt).
    Version { found: u8, expected: u8 },
    /// The fields did not decode (corrupt or of another kind).
    Fields(bincode::Error),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooShort { length } => write!(f, "record of {length} bytes is too short"),
            CodecError::Crc { stored, computed } => {
                write!(f, "crc mismatch (stored {stored:08x}, computed {computed:08x})")
            }
            CodecError::Version { found, expected } => {
                write!(f, "unknown format version {found} (this build reads {expected})")
            }
            CodecError::Fields(error) => write!(f, "malformed fields: {error}"),
        }
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CodecError::Fields(error) => Some(error),
            _ => None,
        }
    }
}

fn options(limit_bytes: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit_bytes as u64)
}

/// Encodes a record: version, fields, crc.
fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.push(version);
    options(usize::MAX)
        .serialize_into(&mut bytes, value)
        .expect("serializing into a Vec cannot fail");
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes a record written by [`encode`] with the same `version`.
fn decode<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, CodecError> {
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

pub fn encode_meta(meta: &MessageMeta) -> Vec<u8> {
    encode(META_VERSION, meta)
}

pub fn decode_meta(bytes: &[u8]) -> Result<MessageMeta, CodecError> {
    decode(META_VERSION, bytes)
}

pub fn encode_content(content: &MessageContent) -> Vec<u8> {
    encode(CONTENT_VERSION, content)
}

/// A message's content as borrowed parts, so that a request's body is encoded without first being
/// copied into a `MessageContent`. Its fields serialize exactly as `MessageContent`'s do.
#[derive(Serialize)]
pub struct ContentRef<'a> {
    pub headers: &'a [(String, String)],
    pub body_kind: BodyKind,
    #[serde(with = "serde_bytes")]
    pub body: &'a [u8],
}

pub fn encode_content_ref(content: &ContentRef<'_>) -> Vec<u8> {
    encode(CONTENT_VERSION, content)
}

pub fn decode_content(bytes: &[u8]) -> Result<MessageContent, CodecError> {
    decode(CONTENT_VERSION, bytes)
}

pub fn encode_history(history: &History) -> Vec<u8> {
    encode(HISTORY_VERSION, history)
}

pub fn decode_history(bytes: &[u8]) -> Result<History, CodecError> {
    decode(HISTORY_VERSION, bytes)
}

pub fn encode_queue(record: &QueueRecord) -> Vec<u8> {
    encode(QUEUE_VERSION, record)
}

pub fn decode_queue(bytes: &[u8]) -> Result<QueueRecord, CodecError> {
    decode(QUEUE_VERSION, bytes)
}

pub fn encode_idempotency(record: &IdempotencyRecord) -> Vec<u8> {
    encode(IDEMPOTENCY_VERSION, record)
}

pub fn decode_idempotency(bytes: &[u8]) -> Result<IdempotencyRecord, CodecError> {
    decode(IDEMPOTENCY_VERSION, bytes)
}

/// Appends a WAL frame payload for `changes` to `out`: version byte, then bincode. The WAL frame's
/// own crc covers it, so no second crc is added.
pub fn encode_changes_into(changes: &[Change], out: &mut Vec<u8>) {
    out.push(WAL_FRAME_VERSION);
    options(usize::MAX).serialize_into(out, changes).expect("serializing into a Vec cannot fail");
}

/// Decodes a WAL frame payload.
pub fn decode_changes(payload: &[u8]) -> Result<Vec<Change>, CodecError> {
    let Some((&version, fields)) = payload.split_first() else {
        return Err(CodecError::TooShort { length: 0 });
    };
    if version != WAL_FRAME_VERSION {
        return Err(CodecError::Version { found: version, expected: WAL_FRAME_VERSION });
    }
    options(payload.len()).deserialize(fields).map_err(CodecError::Fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{
        HistoryEvent, HistoryKind, MessageId, MessageState, QueueId, QueueSettings,
    };

    #[test]
    fn borrowed_content_decodes_as_owned_content() {
        let headers = vec![("a".to_string(), "b".to_string())];
        let borrowed =
            ContentRef { headers: &headers, body_kind: BodyKind::Bytes, body: &[0, 255] };
        let owned = decode_content(&encode_content_ref(&borrowed)).unwrap();
        assert_eq!(owned.headers, headers);
        assert_eq!(owned.body_kind, BodyKind::Bytes);
        assert_eq!(owned.body, vec![0, 255]);
    }

    fn meta() -> MessageMeta {
        MessageMeta {
            queue_id: QueueId(3),
            state: MessageState::Leased,
            priority: -7,
            attempt_count: 2,
            attempt_count_max: 10,
            enqueued_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_500,
            due_at_ms: 1_700_000_030_500,
            lease_nonce: 0xdead_beef,
            leased_at_ms: 1_700_000_000_400,
            event_seq: 3,
        }
    }

    fn history() -> History {
        History {
            events: vec![HistoryEvent {
                seq: 2,
                kind: HistoryKind::Nacked,
                at_ms: 5,
                attempt: 1,
                leased_at_ms: 4,
                detail: "SMTP 451".into(),
                dead: false,
            }],
        }
    }

    #[test]
    fn every_record_kind_round_trips() {
        assert_eq!(decode_meta(&encode_meta(&meta())).unwrap(), meta());
        let content = MessageContent {
            headers: vec![("kind".into(), "email".into())],
            body_kind: BodyKind::Json,
            body: br#"{"to":"a@example.com"}"#.to_vec(),
        };
        assert_eq!(decode_content(&encode_content(&content)).unwrap(), content);
        assert_eq!(decode_history(&encode_history(&history())).unwrap(), history());
        let settings = QueueSettings { backoff_multiplier: Some(1.5), ..QueueSettings::default() };
        let queue = QueueRecord { name: "emails".into(), paused: true, settings };
        assert_eq!(decode_queue(&encode_queue(&queue)).unwrap(), queue);
        let record = IdempotencyRecord { request_hash: 1, first_id: 2, count: 3, created_at_ms: 4 };
        assert_eq!(decode_idempotency(&encode_idempotency(&record)).unwrap(), record);
    }

    #[test]
    fn change_frames_round_trip() {
        let changes = vec![
            Change::PutMeta { id: MessageId(9), meta: meta() },
            Change::PutContent { id: MessageId(9), record: vec![0, 255, 1] },
            Change::SetNextId { next_id: 10 },
        ];
        let mut payload = Vec::new();
        encode_changes_into(&changes, &mut payload);
        assert_eq!(decode_changes(&payload).unwrap(), changes);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode_meta(&meta());
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[index] ^= 1 << bit;
                assert!(decode_meta(&corrupt).is_err(), "flip at byte {index} bit {bit}");
            }
        }
    }

    #[test]
    fn short_unknown_and_foreign_records_are_errors_not_panics() {
        assert!(matches!(decode_meta(&[]), Err(CodecError::TooShort { .. })));
        assert!(matches!(decode_meta(&[1, 0, 0]), Err(CodecError::TooShort { .. })));
        let mut newer = vec![META_VERSION + 1];
        newer.extend_from_slice(&encode_meta(&meta())[1..]);
        let body_len = newer.len() - CRC_BYTES;
        let crc = crc32fast::hash(&newer[..body_len]);
        newer[body_len..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode_meta(&newer), Err(CodecError::Version { .. })));
        assert!(decode_meta(&encode_history(&history())).is_err());
        assert!(decode_changes(&[]).is_err());
        assert!(decode_changes(&[WAL_FRAME_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
