//! The codec: the only place where stored bytes become values and values become bytes.
//!
//! - [`content`]: a message's headers and body, as written once into the log.
//! - [`op`]: a log frame's payload: the contents it carries, then its ops.
//! - [`page`]: the catalog's records: pages of message records, the manifest, queue records.
//! - [`records`]: the catalog's small records (history, idempotency key).
//! - [`varint`]: the integer encoding and bounds-checked reader the hand-written formats share.
//!
//! Every decoder returns a [`CodecError`] for bytes it cannot read and never panics. The byte
//! layouts are tabulated in docs/design.md.

pub mod content;
pub mod op;
pub mod page;
pub mod records;
pub mod varint;

pub use content::{decode_content, encode_content, ContentRef, ContentView};
pub use op::{decode_frame, FrameWriter};
pub use page::{
    decode_manifest, decode_page, decode_queue, encode_manifest, encode_page, encode_queue,
    Manifest,
};
pub use records::{decode_history, decode_idempotency, encode_history, encode_idempotency};

use std::fmt;

/// Why bytes could not be decoded.
#[derive(Debug)]
pub enum CodecError {
    /// Fewer bytes than the smallest possible record.
    TooShort { length: usize },
    /// The stored crc does not match the bytes: the record is corrupt.
    Crc { stored: u32, computed: u32 },
    /// A version byte this build does not know (written by a newer outboxd, or corrupt).
    Version { found: u8, expected: u8 },
    /// The fields of a bincode record did not decode (corrupt or of another kind).
    Fields(bincode::Error),
    /// A hand-written layout did not decode at byte `offset`: `what` says which part.
    Layout { offset: usize, what: &'static str },
}

impl CodecError {
    fn layout(what: &'static str) -> impl Fn(varint::Truncated) -> CodecError {
        move |truncated| CodecError::Layout { offset: truncated.offset, what }
    }
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
            CodecError::Layout { offset, what } => write!(f, "malformed {what} at byte {offset}"),
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

/// Splits `bytes` into the body and its trailing crc32 (LE), checking the crc.
fn check_crc_trailer(bytes: &[u8], length_min: usize) -> Result<&[u8], CodecError> {
    if bytes.len() < length_min + 4 {
        return Err(CodecError::TooShort { length: bytes.len() });
    }
    let (body, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Crc { stored, computed });
    }
    Ok(body)
}
