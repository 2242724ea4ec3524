//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the corpus replay test.
//!
//! Each target is a `pub fn(&[u8])` that must return normally for every input: a panic is a bug,
//! either in the code under test (a decoder that panics instead of returning an error, a broken
//! broker invariant) or in the target's own model. Keeping the bodies here, behind the `testing`
//! feature, lets `tests/fuzz_corpus.rs` replay the checked-in corpus on stable Rust while
//! `cargo fuzz` (nightly features) explores new inputs with the same code.
//!
//! | target         | what it feeds                          | what it checks beyond "no panic"          |
//! |----------------|----------------------------------------|-------------------------------------------|
//! | `decode_record`| every `store::codec` decoder           | decode → encode → decode round trips      |
//! | `decode_key`   | every `store::keys` decoder            | round trips, byte order = numeric order   |
//! | `http_json`    | every request parser of `http::types`  | accepted requests are within the limits   |
//! | `wal_replay`   | a log directory built from the bytes   | frames match a model; torn tail only at   |
//! |                |                                        | the end; replay idempotent, = read_range  |
//! | `queue_ops`    | up to 256 broker and person's actions, | counts, lease exclusivity, a recovered    |
//! |                | checkpoints and restarts               | broker = the live broker                  |
//!
//! Every target runs in microseconds to a few milliseconds, so that libFuzzer gets thousands of
//! executions per second and the corpus test stays fast in debug builds.

use crate::engine::IncomingMessage;
use crate::http::error::ApiError;
use crate::http::types::{self, RequestLimits};
use crate::limits::{
    ATTEMPT_COUNT_MAX, DELAY_MS_MAX, ERROR_TEXT_BYTES_MAX, HEADER_COUNT_MAX, HEADER_NAME_BYTES_MAX,
    HEADER_VALUE_BYTES_MAX, IDEMPOTENCY_WINDOW_MS, ITEM_COUNT_MAX, LEASE_COUNT_MAX, LEASE_MS_MAX,
    LEASE_MS_MIN, WAIT_MS_MAX,
};
use crate::queue::retry::RetryPolicy;
use crate::queue::{
    BodyKind, Broker, BrokerConfig, ContentLocation, ControlError, Delivery, Edit, EditFields,
    EnqueueError, ExtendItem, FailOutcome, Grant, IdempotencyKey, LeaseToken, MessageId,
    MessageMeta, MessageState, NackItem, NewMessage, Op, QueueId, QueueSettings, ALL_STATES,
    PAGE_ID_BITS,
};
use crate::store::catalog::CheckpointJob;
use crate::store::codec::{self, CodecError, ContentRef, FrameWriter};
use crate::store::keys;
use crate::store::model::DiskModel;
use crate::store::wal::{self, WalError, WalPosition, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC};
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// decode_record
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// decode_key
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// http_json
// ---------------------------------------------------------------------------------------------

/// The request limits `http_json` parses enqueues with: small, so that the fuzzer reaches the
/// "too many" and "too large" branches quickly.
pub const FUZZ_LIMITS: RequestLimits =
    RequestLimits { request_bytes_max: 64 * 1024, message_bytes_max: 256, batch_count_max: 8 };

/// Clock readings for enqueue: the epoch, a realistic time, and the end of time (saturation).
const FUZZ_NOW_MS: [u64; 3] = [0, 1_800_000_000_000, u64::MAX];

/// Feeds `data` to every request parser: each returns a value within the limits or a 4xx refusal.
pub fn http_json(data: &[u8]) {
    for now_ms in FUZZ_NOW_MS {
        match types::parse_enqueue(data, &FUZZ_LIMITS, now_ms) {
            Ok(messages) => check_enqueue(&messages, now_ms),
            Err(error) => check_refusal(&error),
        }
    }
    match types::parse_lease(data) {
        Ok(params) => {
            assert!((1..=LEASE_COUNT_MAX).contains(&params.count_max));
            if let Some(lease_ms) = params.lease_ms {
                assert!((LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms));
            }
            assert!(params.wait_ms <= WAIT_MS_MAX);
        }
        Err(error) => check_refusal(&error),
    }
    match types::parse_ack(data) {
        Ok((texts, tokens)) => check_tokens(&texts, tokens.into_iter()),
        Err(error) => check_refusal(&error),
    }
    match types::parse_nack(data) {
        Ok((texts, items)) => {
            for item in &items {
                assert!(item.error.len() <= ERROR_TEXT_BYTES_MAX);
                if let Some(delay_ms) = item.delay_ms {
                    assert!(delay_ms <= DELAY_MS_MAX);
                }
            }
            check_tokens(&texts, items.into_iter().map(|item| item.token));
        }
        Err(error) => check_refusal(&error),
    }
    match types::parse_extend(data) {
        Ok((texts, items)) => {
            for item in &items {
                if let Some(lease_ms) = item.lease_ms {
                    assert!((LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms));
                }
            }
            check_tokens(&texts, items.into_iter().map(|item| item.token));
        }
        Err(error) => check_refusal(&error),
    }
}

/// A refusal of a request body is the client's fault (4xx) and has a JSON body with a code.
fn check_refusal(error: &ApiError) {
    assert!(
        error.status.is_client_error(),
        "a request body was refused with {} ({})",
        error.status,
        error.code
    );
    assert!(!error.code.is_empty());
    let body: serde_json::Value =
        serde_json::from_slice(&error.body()).expect("an error body is JSON");
    assert_eq!(body["error"]["code"], error.code);
}

/// Every accepted message respects the limits, and its stored content decodes and can be served.
fn check_enqueue(messages: &[IncomingMessage], now_ms: u64) {
    assert!(!messages.is_empty());
    assert!(messages.len() <= FUZZ_LIMITS.batch_count_max as usize);
    for message in messages {
        let content =
            codec::decode_content(&message.content).expect("the parser's content decodes");
        assert!(content.headers.len() <= HEADER_COUNT_MAX);
        let mut size_bytes = content.body.len();
        for (name, value) in &content.headers {
            assert!(!name.is_empty() && name.len() <= HEADER_NAME_BYTES_MAX);
            assert!(value.len() <= HEADER_VALUE_BYTES_MAX);
            size_bytes += name.len() + value.len();
        }
        assert!(size_bytes as u64 <= FUZZ_LIMITS.message_bytes_max);
        if content.body_kind == BodyKind::Json {
            // The body is returned verbatim inside a JSON response, so it must be JSON itself.
            serde_json::from_slice::<serde::de::IgnoredAny>(content.body)
                .expect("an accepted JSON body is JSON");
        }
        if let Some(count) = message.attempt_count_max {
            assert!((1..=ATTEMPT_COUNT_MAX).contains(&count));
        }
        match message.delivery {
            Delivery::Now => {}
            Delivery::After { delay_ms } => assert!((1..=DELAY_MS_MAX).contains(&delay_ms)),
            Delivery::At { deliver_at_ms } => {
                assert!(deliver_at_ms <= now_ms.saturating_add(DELAY_MS_MAX));
            }
        }
    }
}

/// The echoed texts and the parsed tokens line up, and a parsed token is the text it came from.
fn check_tokens(texts: &[String], tokens: impl Iterator<Item = Option<LeaseToken>>) {
    assert!((1..=ITEM_COUNT_MAX).contains(&texts.len()));
    let mut count = 0;
    for (text, token) in texts.iter().zip(tokens) {
        if let Some(token) = token {
            assert_eq!(&token.to_string(), text, "a token parsed from another spelling");
        }
        count += 1;
    }
    assert_eq!(count, texts.len(), "texts and tokens differ in number");
}

// ---------------------------------------------------------------------------------------------
// wal_replay
// ---------------------------------------------------------------------------------------------

/// Writes the bytes as log segment files, replays them, and checks the result against a model.
///
/// The first byte picks the layout (the rest of the input is `body`):
/// - 0: one segment file whose whole content is `body` (header included, so usually refused);
/// - 1: a valid segment header followed by `body` as raw frames;
/// - 2: a valid header followed by frames built from `body` (see [`build_segment`]), whose valid
///   prefix the replay must return exactly, truncating the file at the first damaged frame;
/// - 3: two built segments (the next byte says how many bytes the first one gets): damage in the
///   first is corruption, damage in the second a torn tail.
///
/// Whatever the layout, replay returns `Ok` or `Err` and never panics. `read_range` (the read-only
/// reader backups use), run first, changes no file and agrees with the replay: the same frames, its
/// torn tail where the replay truncates, an error where the replay fails. After an `Ok` (which may
/// have truncated a torn tail) a second replay succeeds without truncating and returns the same
/// frames, a replay from any frame boundary returns the frames after it, a range up to a frame
/// boundary returns the frames before it, and a replay from inside a frame is refused.
pub fn wal_replay(data: &[u8]) {
    let Some((&layout, body)) = data.split_first() else {
        return;
    };
    let scratch = scratch_dir();
    let dir = scratch.path();
    let segments = match layout % 4 {
        0 => vec![SegmentPlan::unknown(body.to_vec())],
        1 => vec![SegmentPlan::unknown(segment_header(0, body))],
        2 => vec![build_segment(0, body)],
        _ => {
            let (split, rest) = body.split_first().map_or((0, body), |(&byte, rest)| (byte, rest));
            let (first, second) = rest.split_at(usize::from(split).min(rest.len()));
            vec![build_segment(0, first), build_segment(1, second)]
        }
    };
    for (seq, segment) in segments.iter().enumerate() {
        std::fs::write(wal::segment_path(dir, seq as u64), &segment.bytes)
            .expect("writing a scratch log segment");
    }
    let lengths = file_lengths(dir, segments.len());
    let read = read_frames(dir, WalPosition::START, None);
    assert_eq!(file_lengths(dir, segments.len()), lengths, "read_range changed a segment");
    let first = replay_frames(dir, WalPosition::START);
    check_read_agrees(&read, &first);
    check_against_plan(dir, &segments, &first);
    match first {
        Ok((frames, _)) => check_replay_again(dir, &frames, body.len()),
        Err(_) => assert!(
            replay_frames(dir, WalPosition::START).is_err(),
            "a refused WAL was accepted on the second replay"
        ),
    }
}

/// One segment file to write, with what replay must make of it when the model knows.
struct SegmentPlan {
    bytes: Vec<u8>,
    /// The model's expectation: (valid frames in order, offset of the first damaged frame).
    expected: Option<(Vec<Vec<u8>>, Option<u64>)>,
}

impl SegmentPlan {
    fn unknown(bytes: Vec<u8>) -> SegmentPlan {
        SegmentPlan { bytes, expected: None }
    }
}

/// Frames returned by a replay, each with the position just after it.
type Frames = Vec<(WalPosition, Vec<u8>)>;

fn replay_frames(dir: &Path, from: WalPosition) -> Result<(Frames, wal::ReplaySummary), WalError> {
    let mut frames = Vec::new();
    let summary = wal::replay(dir, from, |position, payload: &[u8]| {
        frames.push((position, payload.to_vec()));
        Ok::<(), WalError>(())
    })?;
    Ok((frames, summary))
}

/// Frames returned by `read_range`, and the offset of the torn tail it stopped at.
type RangeRead = (Frames, Option<u64>);

fn read_frames(
    dir: &Path,
    from: WalPosition,
    to: Option<WalPosition>,
) -> Result<RangeRead, WalError> {
    let mut frames = Vec::new();
    let summary = wal::read_range(dir, from, to, |position, payload: &[u8]| {
        frames.push((position, payload.to_vec()));
        Ok::<(), WalError>(())
    })?;
    assert_eq!(summary.frame_count, frames.len() as u64);
    Ok((frames, summary.torn_tail.map(|(_, offset, _)| offset)))
}

fn file_lengths(dir: &Path, count: usize) -> Vec<u64> {
    (0..count as u64)
        .map(|seq| std::fs::metadata(wal::segment_path(dir, seq)).map_or(0, |meta| meta.len()))
        .collect()
}

/// `read_range` over the whole log reads what the replay replays and stops where it truncates.
fn check_read_agrees(
    read: &Result<RangeRead, WalError>,
    replayed: &Result<(Frames, wal::ReplaySummary), WalError>,
) {
    match (read, replayed) {
        (Ok((frames, torn_at)), Ok((replayed_frames, summary))) => {
            assert_eq!(frames, replayed_frames, "read_range and replay read other frames");
            let truncated_at = summary.truncated.as_ref().map(|tail| tail.offset);
            assert_eq!(*torn_at, truncated_at, "read_range and replay disagree on the torn tail");
        }
        (Err(_), Err(_)) => {}
        (read, replayed) => {
            panic!("read_range gave {read:?} but replay gave {replayed:?}")
        }
    }
}

/// A directory for one replay, on tmpfs when there is one: replay fsyncs after truncating.
fn scratch_dir() -> tempfile::TempDir {
    let shared_memory = Path::new("/dev/shm");
    let parent =
        if shared_memory.is_dir() { shared_memory.to_path_buf() } else { std::env::temp_dir() };
    tempfile::Builder::new()
        .prefix("outboxd-fuzz-wal-")
        .tempdir_in(parent)
        .expect("creating a scratch directory")
}

fn segment_header(seq: u64, rest: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize + rest.len());
    bytes.extend_from_slice(&SEGMENT_MAGIC);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(rest);
    bytes
}

/// Builds a segment from `body` read as chunks of `[control, payload...]`.
///
/// `control & 0x7f` is the payload length and bit 7 asks for a wrong crc. A length of 0 (a frame
/// the format forbids), a wrong crc, or a payload cut short by the end of `body` (a torn write) is
/// damage: the model's valid frames stop there.
fn build_segment(seq: u64, body: &[u8]) -> SegmentPlan {
    let mut bytes = segment_header(seq, &[]);
    let mut frames = Vec::new();
    let mut damaged_at = None;
    let mut rest = body;
    while let Some((&control, after)) = rest.split_first() {
        let declared_len = usize::from(control & 0x7f);
        let payload = &after[..declared_len.min(after.len())];
        rest = &after[payload.len()..];
        let mut crc = crc32fast::hash(payload);
        if control & 0x80 != 0 {
            crc ^= 1;
        }
        let valid = declared_len > 0 && payload.len() == declared_len && control & 0x80 == 0;
        if !valid && damaged_at.is_none() {
            damaged_at = Some(bytes.len() as u64);
        }
        if damaged_at.is_none() {
            frames.push(payload.to_vec());
        }
        bytes.extend_from_slice(&(declared_len as u32).to_le_bytes());
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(payload);
    }
    SegmentPlan { bytes, expected: Some((frames, damaged_at)) }
}

/// Compares the first replay with the model, when every segment was built by the model.
fn check_against_plan(
    dir: &Path,
    segments: &[SegmentPlan],
    result: &Result<(Frames, wal::ReplaySummary), WalError>,
) {
    let Some(plans) =
        segments.iter().map(|segment| segment.expected.as_ref()).collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let (last_plan, earlier_plans) = plans.split_last().expect("at least one segment");
    if earlier_plans.iter().any(|(_, damaged_at)| damaged_at.is_some()) {
        assert!(
            matches!(result, Err(WalError::Corrupt { .. })),
            "damage in an earlier segment must be corruption, got {result:?}"
        );
        return;
    }
    let (frames, summary) = result.as_ref().expect("a modelled WAL replays");
    let expected: Vec<&Vec<u8>> = plans.iter().flat_map(|(frames, _)| frames).collect();
    let replayed: Vec<&Vec<u8>> = frames.iter().map(|(_, payload)| payload).collect();
    assert_eq!(replayed, expected, "replay returned other frames than were written");
    let last_seq = (plans.len() - 1) as u64;
    let truncated_at = summary.truncated.as_ref().map(|tail| tail.offset);
    assert_eq!(truncated_at, last_plan.1, "the torn tail was cut elsewhere");
    if let Some(offset) = truncated_at {
        let length = std::fs::metadata(wal::segment_path(dir, last_seq))
            .expect("the segment still exists")
            .len();
        assert_eq!(length, offset, "the file was not truncated to the torn frame");
    }
}

/// After a successful replay: the log is stable, and replays from every kind of start agree.
fn check_replay_again(dir: &Path, frames: &Frames, choice: usize) {
    let (again, summary) = replay_frames(dir, WalPosition::START).unwrap_or_else(|error| {
        panic!("a second replay failed after the first succeeded: {error}")
    });
    assert_eq!(&again, frames, "a second replay returned other frames");
    assert!(summary.truncated.is_none(), "a second replay truncated again");
    assert_eq!(summary.frame_count, frames.len() as u64);
    let byte_count: usize = frames.iter().map(|(_, payload)| payload.len()).sum();
    assert_eq!(summary.byte_count, byte_count as u64);
    assert_eq!(summary.last_position, frames.last().map(|(position, _)| *position));
    for pair in frames.windows(2) {
        assert!(pair[0].0 < pair[1].0, "frame positions do not increase");
    }
    if frames.is_empty() {
        return;
    }
    let index = choice % frames.len();
    let boundary = frames[index].0;
    let (after, _) = replay_frames(dir, boundary)
        .unwrap_or_else(|error| panic!("replay from the frame boundary {boundary:?}: {error}"));
    assert_eq!(after.as_slice(), &frames[index + 1..], "replay from {boundary:?}");
    let (before, torn_at) = read_frames(dir, WalPosition::START, Some(boundary))
        .unwrap_or_else(|error| panic!("reading up to the frame boundary {boundary:?}: {error}"));
    assert_eq!(before.as_slice(), &frames[..=index], "range up to {boundary:?}");
    assert_eq!(torn_at, None, "a bounded range reported a torn tail");
    // The position just before a frame's end is inside that frame: never a frame start.
    let inside = WalPosition::new(boundary.segment_seq, boundary.offset - 1);
    assert!(
        matches!(replay_frames(dir, inside), Err(WalError::Corrupt { .. })),
        "a replay starting inside a frame was not refused"
    );
}

// ---------------------------------------------------------------------------------------------
// queue_ops
// ---------------------------------------------------------------------------------------------

/// The most operations one input may drive.
const OPERATION_COUNT_MAX: usize = 256;
/// The queues the operations use; a token of one presented to the other must be refused.
const QUEUE_NAMES: [&str; 2] = ["emails", "webhooks"];
/// The virtual clock's start: any realistic epoch time.
const START_MS: u64 = 1_800_000_000_000;
/// The longest backoff the fuzzed broker uses, with or without queue settings.
const BACKOFF_MAX_MS: u64 = 1000;
/// How long the fuzzed broker keeps delivered messages by default.
const RETENTION_MS: u64 = 600_000;
/// Catalog pages one sweep reads, small like the broker's bounded chunks.
const SWEEP_PAGE_LIMIT: usize = 2;

/// Interprets the bytes as broker operations with a virtual clock, checking invariants after each.
///
/// Operations: enqueue (with idempotency keys, delays, priorities, attempt limits), lease, ack,
/// nack, extend (with tokens from earlier grants, stale or forged ones too), moving the clock with
/// or without firing timers, checkpoints (written at once, left in flight, or failed), restarts
/// (the last checkpoint plus the log after it, through the server's own recovery), and a person's actions: pause, configure, delete, retry,
/// reschedule, edit, and the retention sweep. The broker is driven as the storage thread drives
/// it: each request's contents and ops are one log frame (`store::model::DiskModel`). A small model
/// predicts the outcomes; the checks are:
/// - every queue's per-state counts equal the states of its messages as a reader sees them (the
///   broker's record, else the catalog's), and add up to the messages accepted and not removed;
/// - a lease token works exactly while its lease is the message's current one and unexpired, so no
///   message is held by two consumers at once, and an acked or removed message is never leased
///   again or back; a person's action never touches a leased message;
/// - ids are handed out consecutively, and idempotent retries return the original ids;
/// - a broker recovered from the disk shows exactly what the live one shows (`DiskModel::compare`,
///   the check the simulation makes too), and the run goes on with it;
/// - after every checkpoint the catalog agrees with itself: its indexes count exactly what its
///   pages hold, and it keeps histories and contents exactly for the messages that have them.
pub fn queue_ops(data: &[u8]) {
    let mut input = Input { bytes: data };
    let mut simulation = Simulation::new();
    for _ in 0..OPERATION_COUNT_MAX {
        let Some(code) = input.byte() else {
            break;
        };
        let done = match code % 22 {
            0..=3 => simulation.enqueue(&mut input),
            4..=6 => simulation.lease(&mut input),
            7 | 8 => simulation.ack(&mut input),
            9 | 10 => simulation.nack(&mut input),
            11 => simulation.extend(&mut input),
            12 | 13 => simulation.advance(&mut input, true),
            14 => simulation.advance(&mut input, false),
            15 => simulation.restart(&mut input),
            16 => simulation.pause(&mut input),
            17 => simulation.configure(&mut input),
            18 => simulation.sweep(),
            19 => simulation.checkpoint_step(&mut input),
            _ => simulation.act(code % 22 == 20, &mut input),
        };
        if done.is_none() {
            break;
        }
        // Housekeeping after every request: ready messages over the budget leave memory.
        (simulation.disk.housekeeping(&mut simulation.broker)).expect("an in-memory catalog");
        simulation.check_counts();
    }
    simulation.restart_with(true);
}

/// The fuzz input, read front to back; an operation whose parameters run out is not run.
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&byte, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(byte)
    }
}

/// A lease the model believes a consumer holds; kept until the broker must have expired it.
#[derive(Clone, Copy, Debug)]
struct Held {
    queue: usize,
    nonce: u64,
    deadline_ms: u64,
    attempt_count: u32,
    attempt_count_max: u32,
}

/// What the model remembers of an idempotency key.
#[derive(Clone, Copy, Debug)]
struct KeyUse {
    request_hash: u64,
    first_id: u64,
    count: u32,
    created_at_ms: u64,
}

/// Queue settings a person may set, from "as the server says" to "remove everything at once".
fn settings_preset(choice: u8) -> QueueSettings {
    match choice % 3 {
        0 => QueueSettings::default(),
        1 => QueueSettings {
            retention_ms: Some(0),
            dead_retention_ms: Some(0),
            ..QueueSettings::default()
        },
        _ => QueueSettings {
            max_attempts: Some(1),
            lease_ms: Some(5),
            backoff_initial_ms: Some(1),
            backoff_multiplier: Some(3.0),
            backoff_max_ms: Some(20),
            backoff_jitter: Some(0.0),
            retention_ms: Some(100),
            dead_retention_ms: Some(200),
        },
    }
}

/// The broker under test, the disk its ops go to, and the model of what it must do.
struct Simulation {
    broker: Broker,
    disk: DiskModel,
    now_ms: u64,
    restart_count: u64,
    /// The ops of the request being run.
    ops: Vec<Op>,
    /// A checkpoint handed to the writer and not finished yet.
    pending: Option<CheckpointJob>,
    /// Per queue: whether it exists, its settings and pause flag as last set.
    created: [bool; 2],
    settings: [QueueSettings; 2],
    paused: [bool; 2],
    /// Per queue: messages accepted (duplicates excluded).
    accepted_counts: [u64; 2],
    /// The queue of each message, at index `id - 1`.
    queue_of: Vec<usize>,
    next_id: u64,
    /// Leased messages: exactly the broker's leased set (expired ones leave at `expire_due`).
    held: HashMap<MessageId, Held>,
    acked: HashSet<MessageId>,
    /// Messages no reader finds any more (deleted, swept, or a retention of 0).
    removed: HashSet<MessageId>,
    /// Messages a person retried with their attempts kept.
    attempts_kept: HashSet<MessageId>,
    /// Every token ever granted, with its queue, to be presented again (often stale).
    tokens: Vec<(usize, LeaseToken)>,
    keys: HashMap<(usize, u8), KeyUse>,
}

fn broker_config() -> BrokerConfig {
    BrokerConfig {
        attempt_count_max: 3,
        retry: RetryPolicy {
            initial_ms: 100,
            multiplier: 2.0,
            max_ms: BACKOFF_MAX_MS,
            jitter: 0.5,
        },
        lease_ms: 1000,
        retention_ms: RETENTION_MS,
        history_keep_count: 4,
        // Most ready messages go to the catalog and come back (`queue/cold.rs`).
        ready_resident_max: 8,
    }
}

impl Simulation {
    fn new() -> Simulation {
        Simulation {
            broker: Broker::new(broker_config(), START_MS, crate::random::mix64(0)),
            disk: DiskModel::new(),
            now_ms: START_MS,
            restart_count: 0,
            ops: Vec::new(),
            pending: None,
            created: [false; 2],
            settings: Default::default(),
            paused: [false; 2],
            accepted_counts: [0; 2],
            queue_of: Vec::new(),
            next_id: 1,
            held: HashMap::new(),
            acked: HashSet::new(),
            removed: HashSet::new(),
            attempts_kept: HashSet::new(),
            tokens: Vec::new(),
            keys: HashMap::new(),
        }
    }

    /// The model's index of a queue id the broker handed out.
    fn queue_index(&self, queue_id: QueueId) -> usize {
        QUEUE_NAMES
            .iter()
            .position(|name| self.broker.queue_id(name) == Some(queue_id))
            .expect("a queue of the simulation")
    }

    /// Ends the request: checks that its removals never take a leased message and that an
    /// ordinary removal is one the model expects, then logs its ops as one frame.
    fn log(&mut self) {
        for op in &self.ops {
            if let Op::Remove { ids, .. } = op {
                for id in ids {
                    assert!(!self.held.contains_key(id), "leased {id} was removed");
                    assert!(self.removed.insert(*id), "{id} was removed twice");
                }
            }
        }
        self.disk.log(&self.ops);
        self.ops.clear();
    }

    /// Enqueues 1-3 messages, maybe under an idempotency key, and checks the ids handed out.
    fn enqueue(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let count = 1 + usize::from((shape >> 1) % 3);
        let key_choice = (shape >> 3) & 3;
        let request_hash = u64::from(shape >> 5);
        let mut plans = Vec::with_capacity(count);
        for _ in 0..count {
            plans.push((input.byte()?, input.byte()?));
        }
        let contents: Vec<Vec<u8>> =
            plans.iter().map(|(timing, settings)| fuzz_content(*timing, *settings)).collect();
        let locations = self.disk.place(&contents);
        let messages = plans
            .iter()
            .zip(locations)
            .map(|((timing, settings), content)| self.new_message(*timing, *settings, content))
            .collect();
        let key = (key_choice != 0)
            .then(|| IdempotencyKey { key: format!("key-{key_choice}"), request_hash });
        let outcome =
            self.broker.enqueue(self.now_ms, QUEUE_NAMES[queue], messages, key, &mut self.ops);
        match self.keys.get(&(queue, key_choice)).copied() {
            Some(used) if used.request_hash != request_hash => {
                assert_eq!(outcome, Err(EnqueueError::IdempotencyConflict));
                assert!(self.ops.is_empty(), "a refused batch changed something");
            }
            Some(used) => {
                let outcome = outcome.expect("a repeated request is accepted");
                assert!(outcome.duplicate, "a repeated request was stored twice");
                assert_eq!((outcome.first_id.0, outcome.count), (used.first_id, used.count));
                assert!(self.ops.is_empty(), "a repeated request changed something");
            }
            None => {
                let outcome = outcome.expect("a new batch is accepted");
                assert!(!outcome.duplicate);
                assert_eq!(outcome.first_id, MessageId(self.next_id), "ids skip or repeat");
                assert_eq!(outcome.count as usize, count);
                if key_choice != 0 {
                    let used = KeyUse {
                        request_hash,
                        first_id: self.next_id,
                        count: outcome.count,
                        created_at_ms: self.now_ms,
                    };
                    self.keys.insert((queue, key_choice), used);
                }
                self.next_id += count as u64;
                self.accepted_counts[queue] += count as u64;
                self.queue_of.extend(std::iter::repeat_n(queue, count));
                self.created[queue] = true;
            }
        }
        self.log();
        Some(())
    }

    /// A message whose delivery, priority and attempt limit come from two input bytes.
    fn new_message(&self, timing: u8, settings: u8, content: ContentLocation) -> NewMessage {
        let step_ms = u64::from(timing >> 2);
        let delivery = match timing % 4 {
            0 | 1 => Delivery::Now,
            2 => Delivery::After { delay_ms: 1 + step_ms * 37 },
            // Up to 100 ms in the past (ready at once) or about 3 s ahead.
            _ => Delivery::At { deliver_at_ms: (self.now_ms - 100).saturating_add(step_ms * 50) },
        };
        let attempt_choice = u32::from((settings >> 2) % 4);
        NewMessage {
            content,
            priority: i32::from(settings & 3) - 1,
            attempt_count_max: (attempt_choice != 0).then_some(attempt_choice),
            delivery,
        }
    }

    /// Leases 1-4 messages and checks each grant against the model.
    fn lease(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let lease_ms = 1 + u64::from(input.byte()?) * 10;
        let queue = usize::from(shape & 1);
        let count_max = 1 + u32::from((shape >> 1) % 4);
        self.load_cold(QUEUE_NAMES[queue], count_max);
        let grants = self.broker.lease(
            self.now_ms,
            QUEUE_NAMES[queue],
            count_max,
            Some(lease_ms),
            &mut self.ops,
        );
        assert!(grants.len() <= count_max as usize);
        if self.paused[queue] {
            assert!(grants.is_empty(), "a paused queue leased");
        }
        for pair in grants.windows(2) {
            let (first, second) = (&pair[0].meta, &pair[1].meta);
            let in_order = first.priority > second.priority
                || (first.priority == second.priority && pair[0].id < pair[1].id);
            assert!(in_order, "grants are not in priority, then id, order");
        }
        for grant in &grants {
            self.check_grant(queue, grant, lease_ms);
        }
        if grants.len() < count_max as usize && !self.paused[queue] {
            let ready_count = self
                .broker
                .queue_stats(QUEUE_NAMES[queue])
                .map_or(0, |stats| stats.counts[MessageState::Ready.index()]);
            assert_eq!(ready_count, 0, "a lease returned short while messages were ready");
        }
        self.log();
        Some(())
    }

    /// A grant is of a message nobody holds, never acked or removed, and its record is leased.
    fn check_grant(&mut self, queue: usize, grant: &Grant, lease_ms: u64) {
        let meta = &grant.meta;
        assert!(!self.acked.contains(&grant.id), "acked {} leased again", grant.id);
        assert!(!self.removed.contains(&grant.id), "removed {} leased", grant.id);
        if let Some(held) = self.held.get(&grant.id) {
            panic!(
                "{} leased again while leased until {} (now {})",
                grant.id, held.deadline_ms, self.now_ms
            );
        }
        assert_eq!(grant.token.id, grant.id);
        assert_eq!(meta.state, MessageState::Leased);
        assert_eq!(Some(meta.queue_id), self.broker.queue_id(QUEUE_NAMES[queue]));
        assert_eq!(meta.lease_nonce, grant.token.nonce);
        assert_eq!(meta.due_at_ms, self.now_ms + lease_ms);
        assert!(meta.attempt_count >= 1, "a delivery with no attempt counted");
        // A person may send a dead message back with its attempts kept (see `act`): one more try
        // past the limit. Otherwise a message is never delivered more often than its limit allows.
        if !self.attempts_kept.contains(&grant.id) {
            assert!(meta.attempt_count <= meta.attempt_count_max, "{meta:?}");
        }
        let held = Held {
            queue,
            nonce: grant.token.nonce,
            deadline_ms: meta.due_at_ms,
            attempt_count: meta.attempt_count,
            attempt_count_max: meta.attempt_count_max,
        };
        self.held.insert(grant.id, held);
        self.tokens.push((queue, grant.token));
    }

    /// A token to present: mostly one granted earlier (current or stale), sometimes a forgery.
    fn pick_token(&self, choice: u8) -> Option<LeaseToken> {
        if self.tokens.is_empty() || choice % 8 == 7 {
            return match (choice >> 3) % 3 {
                0 => None,
                1 => Some(LeaseToken { id: MessageId(u64::from(choice >> 5)), nonce: 1 }),
                _ => self
                    .tokens
                    .last()
                    .map(|(_, token)| LeaseToken { id: token.id, nonce: token.nonce ^ 2 }),
            };
        }
        Some(self.tokens[usize::from(choice) % self.tokens.len()].1)
    }

    /// The lease a token holds in `queue` right now, per the model: the broker must agree.
    fn holding(&self, queue: usize, token: Option<LeaseToken>) -> Option<(MessageId, Held)> {
        let token = token?;
        let held = self.held.get(&token.id)?;
        let holds =
            held.queue == queue && held.nonce == token.nonce && held.deadline_ms > self.now_ms;
        holds.then_some((token.id, *held))
    }

    /// Acks 1-3 tokens; exactly those whose lease is current succeed.
    fn ack(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let mut tokens = Vec::new();
        for _ in 0..1 + (shape >> 1) % 3 {
            tokens.push(self.pick_token(input.byte()?));
        }
        let outcomes = self.broker.ack(self.now_ms, QUEUE_NAMES[queue], &tokens, &mut self.ops);
        assert_eq!(outcomes.len(), tokens.len());
        for (token, outcome) in tokens.iter().zip(&outcomes) {
            let expected = self.holding(queue, *token);
            assert_eq!(outcome.is_ok(), expected.is_some(), "ack of {token:?}: {outcome:?}");
            if let Some((id, _)) = expected {
                self.held.remove(&id);
                self.acked.insert(id);
                if self.retention_ms(queue, MessageState::Delivered) == Some(0) {
                    self.removed.insert(id);
                }
            }
        }
        self.log();
        Some(())
    }

    /// How long a terminal message of the queue is kept, under its current settings.
    fn retention_ms(&self, queue: usize, state: MessageState) -> Option<u64> {
        let settings = &self.settings[queue];
        match state {
            MessageState::Delivered => Some(settings.retention_ms.unwrap_or(RETENTION_MS)),
            MessageState::Dead => settings.dead_retention_ms,
            _ => None,
        }
    }

    /// Nacks 1-2 tokens, with or without a delay or a dead-letter request.
    fn nack(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let mut items = Vec::new();
        for _ in 0..1 + (shape >> 1) % 2 {
            let token = self.pick_token(input.byte()?);
            let options = input.byte()?;
            items.push(NackItem {
                token,
                error: format!("failure {options}"),
                delay_ms: (options & 1 == 1).then_some(u64::from(options >> 2) * 13),
                dead: options & 2 == 2,
            });
        }
        let expected_items = items.clone();
        let outcomes = self.broker.nack(self.now_ms, QUEUE_NAMES[queue], items, &mut self.ops);
        assert_eq!(outcomes.len(), expected_items.len());
        for (item, outcome) in expected_items.iter().zip(&outcomes) {
            let Some((id, held)) = self.holding(queue, item.token) else {
                assert!(outcome.is_err(), "nack of {:?} succeeded", item.token);
                continue;
            };
            let outcome = outcome.unwrap_or_else(|refusal| panic!("nack refused: {refusal:?}"));
            self.held.remove(&id);
            let dead = item.dead || held.attempt_count >= held.attempt_count_max;
            match outcome {
                FailOutcome::Dead => {
                    assert!(dead, "{id} went dead early");
                    if self.retention_ms(queue, MessageState::Dead) == Some(0) {
                        self.removed.insert(id);
                    }
                }
                FailOutcome::Retrying { next_attempt_at_ms } => {
                    assert!(!dead, "{id} retries after its last attempt");
                    let delay_ms = next_attempt_at_ms - self.now_ms;
                    match item.delay_ms {
                        Some(asked_ms) => assert_eq!(delay_ms, asked_ms),
                        None => assert!((1..=BACKOFF_MAX_MS).contains(&delay_ms)),
                    }
                }
            }
        }
        self.log();
        Some(())
    }

    /// Extends 1-2 leases; a current lease moves to now + lease_ms, others are refused.
    fn extend(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let mut items = Vec::new();
        for _ in 0..1 + (shape >> 1) % 2 {
            let token = self.pick_token(input.byte()?);
            items.push(ExtendItem { token, lease_ms: Some(1 + u64::from(input.byte()?) * 10) });
        }
        let outcomes = self.broker.extend(self.now_ms, QUEUE_NAMES[queue], &items, &mut self.ops);
        assert_eq!(outcomes.len(), items.len());
        for (item, outcome) in items.iter().zip(&outcomes) {
            match self.holding(queue, item.token) {
                Some((id, mut held)) => {
                    let deadline_ms = self.now_ms + item.lease_ms.expect("asked");
                    assert_eq!(*outcome, Ok(deadline_ms), "extend of {:?}", item.token);
                    held.deadline_ms = deadline_ms;
                    self.held.insert(id, held);
                }
                None => assert!(outcome.is_err(), "extend of {:?} succeeded", item.token),
            }
        }
        self.log();
        Some(())
    }

    /// Moves the clock forward (milliseconds to days) and, when `expire`, fires every due timer.
    ///
    /// Without `expire` the operations that follow run before the timers fire, as requests do
    /// when they reach the storage thread between two ticks: a lease at its deadline must already
    /// be refused.
    fn advance(&mut self, input: &mut Input, expire: bool) -> Option<()> {
        let step = input.byte()?;
        let units = u64::from(step & 63);
        self.now_ms += match step >> 6 {
            0 => units,
            1 => units * 50,
            2 => units * 1000,
            _ => units * 3_600_000,
        };
        if !expire {
            return Some(());
        }
        self.broker.expire_due(self.now_ms, &mut self.ops);
        self.forget_expired();
        self.log();
        if let Some(deadline_ms) = self.broker.next_deadline_ms() {
            assert!(deadline_ms > self.now_ms, "a due timer survived expire_due");
        }
        for id in (1..self.next_id).map(MessageId) {
            if let Some(meta) = self.broker.active_meta(id).filter(|meta| meta.state.is_timed()) {
                assert!(meta.due_at_ms > self.now_ms, "{id} is overdue: {meta:?}");
            }
        }
        Some(())
    }

    /// Drops what expiry ends in the model: past leases (a dead one of a queue that keeps no dead
    /// messages is gone) and idempotency keys out of their window.
    fn forget_expired(&mut self) {
        let now_ms = self.now_ms;
        let expired: Vec<(MessageId, Held)> = (self.held.iter())
            .filter(|(_, held)| held.deadline_ms <= now_ms)
            .map(|(id, held)| (*id, *held))
            .collect();
        for (id, held) in expired {
            self.held.remove(&id);
            let dead = held.attempt_count >= held.attempt_count_max;
            if dead && self.retention_ms(held.queue, MessageState::Dead) == Some(0) {
                self.removed.insert(id);
            }
        }
        self.keys.retain(|_, used| used.created_at_ms + IDEMPOTENCY_WINDOW_MS > now_ms);
    }

    /// A checkpoint, as the server takes them (the one in flight written, if there is one).
    fn checkpoint(&mut self) {
        let job = match self.pending.take() {
            Some(job) => job,
            None => self.disk.begin_checkpoint(&mut self.broker, self.now_ms),
        };
        (self.disk.finish_checkpoint(&mut self.broker, job)).expect("an in-memory checkpoint");
        if let Err(difference) = self.disk.check_catalog() {
            panic!("the catalog disagrees with itself after a checkpoint: {difference}");
        }
    }

    /// A checkpoint written at once, left in flight while later operations run (as the storage
    /// thread goes on while the checkpoint writer works), or failed (its changes go into the next).
    fn checkpoint_step(&mut self, input: &mut Input) -> Option<()> {
        match (input.byte()? % 3, self.pending.take()) {
            (1, None) => {
                self.pending = Some(self.disk.begin_checkpoint(&mut self.broker, self.now_ms));
            }
            (2, pending) => {
                let job = pending
                    .unwrap_or_else(|| self.disk.begin_checkpoint(&mut self.broker, self.now_ms));
                self.disk.fail_checkpoint(&mut self.broker, job);
            }
            (_, pending) => {
                self.pending = pending;
                self.checkpoint();
            }
        }
        Some(())
    }

    /// Replaces the broker with one rebuilt from the disk, as a restart does (with a checkpoint
    /// first, and after, as the input says), and checks that it shows exactly what the old one did.
    fn restart(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        if choice & 1 == 1 {
            self.checkpoint();
        }
        self.restart_with(choice & 2 == 2);
        Some(())
    }

    fn restart_with(&mut self, checkpoint_after: bool) {
        // A checkpoint in flight is lost: recovery starts from the last durable one.
        self.pending = None;
        self.restart_count += 1;
        let seed = crate::random::mix64(self.restart_count);
        let recovered = (self.disk.recover(broker_config(), self.now_ms, seed))
            .unwrap_or_else(|error| panic!("recovery failed: {error}"));
        if let Err(difference) = self.disk.compare(&self.broker, &recovered, self.now_ms) {
            panic!("the broker recovered from the disk differs from the live one: {difference}");
        }
        self.broker = recovered;
        // The storage thread's first tick forgets the keys past their window.
        self.broker.forget_idempotency(self.now_ms);
        self.keys.retain(|_, used| used.created_at_ms + IDEMPOTENCY_WINDOW_MS > self.now_ms);
        if checkpoint_after {
            self.checkpoint();
        }
    }

    /// Pauses or resumes a queue: a paused queue leases nothing.
    fn pause(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let queue = usize::from(choice & 1);
        let paused = choice & 2 != 0;
        let found = self.broker.set_paused(self.now_ms, QUEUE_NAMES[queue], paused, &mut self.ops);
        assert_eq!(found, self.created[queue], "set_paused found the wrong queues");
        if found {
            self.paused[queue] = paused;
        }
        self.log();
        Some(())
    }

    /// Sets a queue's overrides (creating it), from a few presets.
    fn configure(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let queue = usize::from(choice & 1);
        let settings = settings_preset(choice >> 1);
        self.broker.configure(self.now_ms, QUEUE_NAMES[queue], settings.clone(), &mut self.ops);
        let stats = self.broker.queue_stats(QUEUE_NAMES[queue]).expect("configure creates");
        assert_eq!(stats.settings, settings);
        self.created[queue] = true;
        self.settings[queue] = settings;
        self.log();
        Some(())
    }

    /// The storage thread's sweep: the catalog's due retention notes name candidates, and the
    /// broker removes exactly those whose retention (under their queue's current settings) passed.
    fn sweep(&mut self) -> Option<()> {
        let read = (self.disk.sweep(&self.broker, self.now_ms, SWEEP_PAGE_LIMIT))
            .expect("reading the in-memory catalog");
        let mut due = HashSet::new();
        for (id, _) in &read.candidates {
            let current = self.disk.observe(&self.broker, *id);
            if current.as_ref().is_some_and(|meta| self.retention_passed(meta)) {
                due.insert(*id);
            }
        }
        let count = self.broker.expire_retained(self.now_ms, read.candidates, &mut self.ops);
        let removed: HashSet<MessageId> = (self.ops.iter())
            .flat_map(|op| match op {
                Op::Remove { ids, .. } => ids.clone(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(removed, due, "the sweep removed other messages than were due");
        assert_eq!(count, removed.len() as u64);
        self.log();
        Some(())
    }

    /// Whether a terminal message's retention, under its queue's current settings, passed.
    fn retention_passed(&self, meta: &MessageMeta) -> bool {
        let retention_ms = self.retention_ms(self.queue_index(meta.queue_id), meta.state);
        retention_ms.is_some_and(|retention_ms| meta.updated_at_ms + retention_ms <= self.now_ms)
    }

    /// Reads back the cold pages a lease of `count_max` reaches, as the storage thread's loader
    /// does; every message counted cold must be in its page.
    fn load_cold(&mut self, queue: &str, count_max: u32) {
        let Some(queue_id) = self.broker.queue_id(queue) else { return };
        for page in self.broker.cold_ahead(queue_id, count_max as usize).pages {
            let records = self.disk.catalog().page(page).expect("an in-memory catalog page");
            let missing = self.broker.load_cold(queue_id, page, records);
            assert_eq!(missing, 0, "cold page {page} lacks counted messages");
        }
    }

    /// What the storage thread passes as `stored`: nothing when the broker holds the message,
    /// else the catalog's record.
    fn stored(&self, id: MessageId) -> Option<MessageMeta> {
        if self.broker.is_resident(id) {
            return None;
        }
        self.disk.observe(&self.broker, id)
    }

    /// A person's action on one message: delete, retry, reschedule or edit (`delete_or_retry`
    /// picks between the first two, the input between the others).
    fn act(&mut self, delete_or_retry: bool, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let detail = input.byte()?;
        let id = MessageId(1 + u64::from(choice) % self.next_id);
        let before = self.disk.observe(&self.broker, id);
        assert_eq!(
            before.as_ref().is_some_and(|meta| meta.state == MessageState::Leased),
            self.held.contains_key(&id),
            "{id}: the model's leases and the broker disagree"
        );
        let (stored, now_ms) = (self.stored(id), self.now_ms);
        let edits_content = !delete_or_retry && choice & 3 == 3;
        let content = edits_content.then(|| fuzz_content(choice, detail));
        let placed = self.disk.place(content.as_slice()).first().copied();
        let outcome = match (delete_or_retry, choice & 1 == 0) {
            (true, true) => self.broker.delete(now_ms, id, stored, &mut self.ops).map(|()| None),
            (true, false) => {
                self.broker.retry(now_ms, id, stored, detail & 1 == 0, &mut self.ops).map(Some)
            }
            (false, true) => {
                let deliver_at_ms = (now_ms - 500).saturating_add(u64::from(detail) * 10);
                self.broker.reschedule(now_ms, id, stored, deliver_at_ms, &mut self.ops).map(Some)
            }
            (false, false) => {
                let mut fields = EditFields::default().with(EditFields::PRIORITY);
                if placed.is_some() {
                    fields = fields.with(EditFields::BODY);
                }
                let edit = Edit {
                    content: placed,
                    priority: Some(i32::from(detail % 5) - 2),
                    deliver_at_ms: None,
                    fields,
                };
                self.broker.edit(now_ms, id, stored, edit, &mut self.ops).map(Some)
            }
        };
        let action = match (delete_or_retry, choice & 1 == 0) {
            (true, true) => Action::Delete,
            (true, false) => Action::Retry,
            _ => Action::Move,
        };
        check_action(id, action, before.as_ref(), &outcome);
        if outcome.is_err() {
            assert!(self.ops.is_empty(), "a refused action changed something");
        }
        // A dead message that a person retries without a reset, or reschedules, keeps its
        // attempt count, so its next delivery is one past its limit.
        let was_dead = before.as_ref().is_some_and(|meta| meta.state == MessageState::Dead);
        let reset = matches!(action, Action::Retry) && detail & 1 == 0;
        if was_dead && outcome.is_ok() && !reset {
            self.attempts_kept.insert(id);
        }
        self.log();
        if outcome.is_ok() && matches!(action, Action::Delete) {
            assert!(self.removed.contains(&id), "a delete of {id} that succeeded removed nothing");
        }
        Some(())
    }

    /// Every queue's counts equal its messages' states as a reader sees them, and add up to what
    /// was accepted and not removed; acked messages stay delivered until they are removed, and
    /// removed ones never come back.
    fn check_counts(&self) {
        let observed = self.disk.observe_all(&self.broker).expect("reading the in-memory catalog");
        let mut census: HashMap<(QueueId, MessageState), u64> = HashMap::new();
        let mut gone = [0u64; 2];
        for (index, record) in observed.iter().enumerate() {
            let id = MessageId(index as u64 + 1);
            match record {
                Some(meta) => {
                    assert!(!self.removed.contains(&id), "removed {id} is back: {meta:?}");
                    if self.acked.contains(&id) {
                        assert_eq!(meta.state, MessageState::Delivered, "{id} was acked");
                    }
                    if self.held.contains_key(&id) {
                        assert_eq!(meta.state, MessageState::Leased, "{id} is held");
                    }
                    *census.entry((meta.queue_id, meta.state)).or_default() += 1;
                }
                None => {
                    assert!(self.removed.contains(&id), "{id} vanished");
                    assert!(!self.held.contains_key(&id), "held {id} vanished");
                    gone[self.queue_of[index]] += 1;
                }
            }
        }
        let mut active_count = 0;
        for (queue, name) in QUEUE_NAMES.iter().enumerate() {
            let Some(stats) = self.broker.queue_stats(name) else {
                assert!(!self.created[queue], "queue {name} vanished");
                continue;
            };
            let queue_id = self.broker.queue_id(name).expect("the queue exists");
            for state in ALL_STATES {
                let seen = census.get(&(queue_id, state)).copied().unwrap_or(0);
                assert_eq!(stats.counts[state.index()], seen, "queue {name}, {}", state.name());
            }
            let total: u64 = stats.counts.iter().sum();
            assert_eq!(total, self.accepted_counts[queue] - gone[queue], "queue {name}: {stats:?}");
            active_count += ALL_STATES
                .iter()
                .filter(|state| state.is_active())
                .map(|state| stats.counts[state.index()])
                .sum::<u64>();
        }
        // Active messages are held in memory, or ready and left in the catalog.
        assert_eq!(self.broker.active_count() as u64 + self.broker.cold_count(), active_count);
    }
}

/// Content bytes for a fuzzed message, as the HTTP layer would have encoded them.
fn fuzz_content(timing: u8, settings: u8) -> Vec<u8> {
    let headers = vec![("kind".to_string(), "fuzz".to_string())];
    let body = [timing, settings];
    codec::encode_content(&ContentRef {
        headers: &headers,
        body_kind: BodyKind::Bytes,
        body: &body,
    })
}

/// The kinds of a person's action, for predicting their outcome.
#[derive(Clone, Copy, Debug)]
enum Action {
    Delete,
    Retry,
    /// Reschedule or edit: allowed in every state but leased and delivered.
    Move,
}

/// Predicts a person's action from the message's state before it, and checks the result.
fn check_action(
    id: MessageId,
    action: Action,
    before: Option<&MessageMeta>,
    outcome: &Result<Option<MessageMeta>, ControlError>,
) {
    use MessageState::*;
    let expected = match (before.map(|meta| meta.state), action) {
        (None, _) => Err(ControlError::NotFound),
        (Some(Leased), _) => Err(ControlError::Leased),
        (Some(_), Action::Delete) => Ok(()),
        (Some(Dead | Retrying), Action::Retry) => Ok(()),
        (Some(state), Action::Retry) => Err(ControlError::WrongState(state)),
        (Some(Delivered), Action::Move) => Err(ControlError::WrongState(Delivered)),
        (Some(_), Action::Move) => Ok(()),
    };
    let got = outcome.as_ref().map(|_| ()).map_err(|error| *error);
    assert_eq!(got, expected, "{action:?} of {id} in {before:?}");
    if let (Action::Retry, Ok(Some(meta))) = (action, outcome) {
        assert_eq!(meta.state, Ready, "a retried message is ready");
    }
}
