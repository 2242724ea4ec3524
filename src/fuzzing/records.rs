//! `decode_record`: every decoder of the store's record and frame formats, and their round trips.

use crate::queue::{ContentLocation, Op, PAGE_ID_BITS};
use crate::store::codec::{self, CodecError, ContentRef, FrameWriter};
use std::fmt::Debug;

/// Where a segment's first frame payload starts: after the segment header and the frame header.
pub const FIRST_PAYLOAD_OFFSET: u64 = 24;

/// The (segment, payload offset) pairs frames are decoded at: the first frame of segment 0, and a
/// frame whose contents would end beyond the 4 GiB a location can address.
const FRAME_PLACES: [(u32, u64); 2] = [(0, FIRST_PAYLOAD_OFFSET), (u32::MAX, u32::MAX as u64 - 64)];

/// The pages records are decoded as: the first, and the last an id can be in.
const PAGE_NUMBERS: [u64; 2] = [0, u64::MAX >> PAGE_ID_BITS];

/// Feeds `data` to every decoder of the store's formats, as given and sealed with a valid crc.
///
/// Random bytes almost never carry a matching crc32, so without the sealed variants the fuzzer
/// would only ever exercise the crc checks: the catalog's records carry theirs at the end, a
/// content at the start. Any value that decodes must survive encode → decode unchanged (compared
/// as re-encoded bytes: queue settings hold floats, and a NaN is not equal to itself), and its
/// canonical encoding can be no longer than the bytes that were accepted (varints are minimal
/// when written).
pub fn decode_record(data: &[u8]) {
    decode_every_kind(data);
    let crc = crc32fast::hash(data).to_le_bytes();
    decode_every_kind(&[data, &crc].concat());
    decode_every_kind(&[&crc, data].concat());
}

fn decode_every_kind(bytes: &[u8]) {
    check_content(bytes);
    for (segment, payload_offset) in FRAME_PLACES {
        check_frame(bytes, segment, payload_offset);
    }
    for page in PAGE_NUMBERS {
        round_trip(
            bytes,
            |bytes| codec::decode_page(page, bytes),
            |records| codec::encode_page(page, records),
        );
    }
    round_trip(bytes, codec::decode_manifest, codec::encode_manifest);
    round_trip(bytes, codec::decode_queue, codec::encode_queue);
    round_trip(bytes, codec::decode_history, codec::encode_history);
    round_trip(bytes, codec::decode_idempotency, codec::encode_idempotency);
}

/// Checks that a decoded record re-encodes to bytes that decode to the same value.
fn round_trip<T: Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    let Ok(value) = decode(bytes) else {
        return;
    };
    let encoded = encode(&value);
    let again = decode(&encoded)
        .unwrap_or_else(|error| panic!("re-encoded {value:?} does not decode: {error}"));
    assert_eq!(encode(&again), encoded, "a record changed in a round trip: {value:?}");
    assert!(
        encoded.len() <= bytes.len(),
        "the canonical encoding of {value:?} ({} bytes) is longer than the accepted one ({})",
        encoded.len(),
        bytes.len()
    );
}

/// A content that decodes re-encodes (from its parts, as the enqueue path does) to a content
/// that decodes to the same parts.
fn check_content(bytes: &[u8]) {
    let Ok(view) = codec::decode_content(bytes) else {
        return;
    };
    let owned = view.to_owned();
    let parts =
        ContentRef { headers: &owned.headers, body_kind: owned.body_kind, body: &owned.body };
    let encoded = codec::encode_content(&parts);
    let again = codec::decode_content(&encoded)
        .unwrap_or_else(|error| panic!("re-encoded {view:?} does not decode: {error}"));
    assert_eq!(again, view, "a content changed in a round trip");
    assert!(encoded.len() <= bytes.len(), "the canonical content is longer than the accepted one");
}

/// A frame payload that decodes re-encodes, with the contents its ops use, to a payload that
/// decodes to the same ops whose contents hold the same bytes.
fn check_frame(payload: &[u8], segment: u32, payload_offset: u64) {
    let Ok(ops) = codec::decode_frame(payload, segment, payload_offset) else {
        return;
    };
    let contents: Vec<&[u8]> = content_locations(&ops)
        .into_iter()
        .map(|location| content_bytes(payload, payload_offset, location))
        .collect();
    let encoded = encode_frame(segment, payload_offset, &contents, &ops);
    let again = codec::decode_frame(&encoded, segment, payload_offset)
        .unwrap_or_else(|error| panic!("re-encoded ops {ops:?} do not decode: {error}"));
    let again_contents: Vec<&[u8]> = content_locations(&again)
        .into_iter()
        .map(|location| content_bytes(&encoded, payload_offset, location))
        .collect();
    assert_eq!(again_contents, contents, "contents changed in a round trip");
    assert_eq!(
        encode_frame(segment, payload_offset, &again_contents, &again),
        encoded,
        "ops changed in a round trip: {ops:?}"
    );
    assert!(encoded.len() <= payload.len(), "the canonical frame is longer than the accepted one");
}

/// The content locations the ops use, in the order a frame holds the contents.
fn content_locations(ops: &[Op]) -> Vec<ContentLocation> {
    let mut locations = Vec::new();
    for op in ops {
        match op {
            Op::Enqueue { messages, .. } => {
                locations.extend(messages.iter().map(|message| message.content));
            }
            Op::Edit { content: Some(content), .. } => locations.push(*content),
            Op::MoveContent { items } => {
                locations.extend(items.iter().map(|(_, content)| *content))
            }
            _ => {}
        }
    }
    locations
}

/// The bytes a decoded location names in its frame payload.
fn content_bytes(payload: &[u8], payload_offset: u64, location: ContentLocation) -> &[u8] {
    let ContentLocation::Log { offset, len, .. } = location else {
        panic!("a frame's content decoded as kept in the catalog: {location:?}");
    };
    let start = (u64::from(offset) - payload_offset) as usize;
    &payload[start..start + len as usize]
}

/// A frame payload: the contents, then the ops (which must use them in order).
pub fn encode_frame(segment: u32, payload_offset: u64, contents: &[&[u8]], ops: &[Op]) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut writer = FrameWriter::begin(&mut payload, segment, payload_offset, contents.len());
    for content in contents {
        writer.content(&mut payload, content);
    }
    writer.finish(&mut payload, ops);
    payload
}
