//! The catalog's small records (history, idempotency key), framed with a version and a crc.
//!
//! Each is framed as:
//!
//! | bytes | field                                              |
//! |-------|----------------------------------------------------|
//! | 1     | format version (one per record kind, see below)    |
//! | n     | fields, bincode (varint integers, length-prefixed) |
//! | 4     | crc32 (crc32fast) of the version and fields, LE    |
//!
//! They change rarely (a failure, a person's action, a new key), so they keep the compact,
//! schema-following bincode encoding. Decoding never panics: a short record, a crc mismatch, an
//! unknown version or malformed fields are `CodecError`s, and bincode is told the record's length as
//! its allocation limit so that a corrupt length cannot ask for gigabytes.

use super::CodecError;
use crate::queue::{History, IdempotencyRecord};
use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format versions, one per record kind, so that each can evolve on its own. Version 1 was the
/// layout of the first storage format (sled trees per kind); its records are read only by the
/// conversion of old data directories.
pub const HISTORY_VERSION: u8 = 2;
pub const IDEMPOTENCY_VERSION: u8 = 2;

pub(super) const CRC_BYTES: usize = 4;

fn options(limit_bytes: usize) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit_bytes as u64).reject_trailing_bytes()
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

pub fn encode_history(history: &History) -> Vec<u8> {
    encode(HISTORY_VERSION, history)
}

pub fn decode_history(bytes: &[u8]) -> Result<History, CodecError> {
    decode(HISTORY_VERSION, bytes)
}

pub fn encode_idempotency(record: &IdempotencyRecord) -> Vec<u8> {
    encode(IDEMPOTENCY_VERSION, record)
}

pub fn decode_idempotency(bytes: &[u8]) -> Result<IdempotencyRecord, CodecError> {
    decode(IDEMPOTENCY_VERSION, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{HistoryEvent, HistoryKind};

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
        assert_eq!(decode_history(&encode_history(&history())).unwrap(), history());
        let record = IdempotencyRecord { request_hash: 1, first_id: 2, count: 3, created_at_ms: 4 };
        assert_eq!(decode_idempotency(&encode_idempotency(&record)).unwrap(), record);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode_history(&history());
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[index] ^= 1 << bit;
                assert!(decode_history(&corrupt).is_err(), "flip at byte {index} bit {bit}");
            }
        }
    }

    #[test]
    fn short_unknown_and_foreign_records_are_errors_not_panics() {
        assert!(matches!(decode_history(&[]), Err(CodecError::TooShort { .. })));
        assert!(matches!(decode_history(&[1, 0, 0]), Err(CodecError::TooShort { .. })));
        let mut newer = vec![HISTORY_VERSION + 1];
        newer.extend_from_slice(&encode_history(&history())[1..]);
        let body_len = newer.len() - CRC_BYTES;
        let crc = crc32fast::hash(&newer[..body_len]);
        newer[body_len..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode_history(&newer), Err(CodecError::Version { .. })));
    }
}
