//! A message's content (headers and body) as written once into the log.
//!
//! | bytes | field                                                                 |
//! |-------|-----------------------------------------------------------------------|
//! | 4     | crc32 (crc32fast) of everything after it, LE                          |
//! | 1     | format version (`CONTENT_VERSION`)                                    |
//! | v     | header count, varint; then per header: name, value (varint length + UTF-8) |
//! | 1     | body kind: 0 JSON text, 1 bytes                                       |
//! | rest  | the body, exactly as received                                         |
//!
//! The crc comes first so that a reader that fetched just this content (a lease or a look-up
//! reading `len` bytes at the content's location) can verify it without the frame around it.
//! Decoding borrows: the body and header strings point into the bytes read.

use super::varint::{put_bytes, put_u64, Reader};
use super::CodecError;
use crate::queue::{BodyKind, MessageContent};

/// The content layout's version (1 was the bincode record of the first storage format).
pub const CONTENT_VERSION: u8 = 2;

/// The smallest content: crc, version, no headers, kind, empty body.
const CONTENT_BYTES_MIN: usize = 4 + 1 + 1 + 1;

/// A message's content as borrowed parts, so that a request's body is encoded without first being
/// copied into a [`MessageContent`].
#[derive(Clone, Copy, Debug)]
pub struct ContentRef<'a> {
    pub headers: &'a [(String, String)],
    pub body_kind: BodyKind,
    pub body: &'a [u8],
}

/// A decoded content that borrows from the bytes it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentView<'a> {
    pub headers: Vec<(&'a str, &'a str)>,
    pub body_kind: BodyKind,
    pub body: &'a [u8],
}

impl ContentView<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> MessageContent {
        MessageContent {
            headers: self
                .headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body_kind: self.body_kind,
            body: self.body.to_vec(),
        }
    }
}

/// Encodes a content.
pub fn encode_content(content: &ContentRef<'_>) -> Vec<u8> {
    let header_bytes: usize =
        content.headers.iter().map(|(name, value)| name.len() + value.len() + 4).sum();
    let mut out = Vec::with_capacity(CONTENT_BYTES_MIN + 4 + header_bytes + content.body.len());
    out.extend_from_slice(&[0; 4]);
    out.push(CONTENT_VERSION);
    put_u64(&mut out, content.headers.len() as u64);
    for (name, value) in content.headers {
        put_bytes(&mut out, name.as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    out.push(match content.body_kind {
        BodyKind::Json => 0,
        BodyKind::Bytes => 1,
    });
    out.extend_from_slice(content.body);
    let crc = crc32fast::hash(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a content, borrowing from `bytes`.
pub fn decode_content(bytes: &[u8]) -> Result<ContentView<'_>, CodecError> {
    if bytes.len() < CONTENT_BYTES_MIN {
        return Err(CodecError::TooShort { length: bytes.len() });
    }
    let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let computed = crc32fast::hash(&bytes[4..]);
    if stored != computed {
        return Err(CodecError::Crc { stored, computed });
    }
    if bytes[4] != CONTENT_VERSION {
        return Err(CodecError::Version { found: bytes[4], expected: CONTENT_VERSION });
    }
    let mut reader = Reader::new(&bytes[5..]);
    let fail = CodecError::layout("content");
    let header_count = reader.u64().map_err(&fail)?;
    if header_count > reader.remaining() as u64 {
        return Err(CodecError::Layout { offset: 5, what: "content header count" });
    }
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let name = reader.str().map_err(&fail)?;
        let value = reader.str().map_err(&fail)?;
        headers.push((name, value));
    }
    let body_kind = match reader.u8().map_err(&fail)? {
        0 => BodyKind::Json,
        1 => BodyKind::Bytes,
        _ => return Err(CodecError::Layout { offset: 5 + reader.offset(), what: "body kind" }),
    };
    Ok(ContentView { headers, body_kind, body: reader.rest() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_round_trip_and_every_flipped_bit_is_detected() {
        let headers = vec![("kind".to_string(), "email".to_string()), ("é".into(), "".into())];
        let content = ContentRef { headers: &headers, body_kind: BodyKind::Bytes, body: &[0, 255] };
        let bytes = encode_content(&content);
        let view = decode_content(&bytes).unwrap();
        assert_eq!(view.headers, vec![("kind", "email"), ("é", "")]);
        assert_eq!(view.body_kind, BodyKind::Bytes);
        assert_eq!(view.body, &[0, 255]);
        assert_eq!(view.to_owned().headers, headers);
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut corrupt = bytes.clone();
                corrupt[index] ^= 1 << bit;
                assert!(decode_content(&corrupt).is_err(), "flip at byte {index} bit {bit}");
            }
        }
        let empty = ContentRef { headers: &[], body_kind: BodyKind::Json, body: b"" };
        assert_eq!(decode_content(&encode_content(&empty)).unwrap().body, b"");
        assert!(decode_content(&[]).is_err());
    }
}
