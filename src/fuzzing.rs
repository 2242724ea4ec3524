//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the corpus replay test.
//!
//! Each target is a `pub fn(&[u8])` that must return normally for every input: a panic is a bug,
//! either in the code under test (a decoder that panics instead of returning an error, a broken
//! broker invariant) or in the target's own model. Keeping the bodies here, behind the `testing`
//! feature, lets `tests/fuzz_corpus.rs` replay the checked-in corpus on stable Rust while
//! `cargo fuzz` (nightly features) explores new inputs with the same code.
//!
//! | target         | what it feeds                         | what it checks beyond "no panic"          |
//! |----------------|---------------------------------------|-------------------------------------------|
//! | `decode_record`| every `store::codec` decoder          | decode → encode → decode round trips      |
//! | `decode_key`   | every `store::keys` decoder           | round trips, byte order = numeric order   |
//! | `http_json`    | every request parser of `http::types` | accepted requests are within the limits   |
//! | `wal_replay`   | a WAL directory built from the bytes  | frames match a model; replay is idempotent|
//! | `queue_ops`    | up to 256 broker and person's actions | counts, lease exclusivity, store = memory |
//!
//! Every target runs in microseconds to a few milliseconds, so that libFuzzer gets thousands of
//! executions per second and the corpus test stays fast in debug builds.

use crate::http::error::ApiError;
use crate::http::types::{self, RequestLimits};
use crate::limits::{
    ATTEMPT_COUNT_MAX, DELAY_MS_MAX, ERROR_TEXT_BYTES_MAX, HEADER_COUNT_MAX, HEADER_NAME_BYTES_MAX,
    HEADER_VALUE_BYTES_MAX, IDEMPOTENCY_WINDOW_MS, ITEM_COUNT_MAX, LEASE_COUNT_MAX, LEASE_MS_MAX,
    LEASE_MS_MIN, WAIT_MS_MAX,
};
use crate::queue::retry::RetryPolicy;
use crate::queue::{
    BodyKind, Broker, BrokerConfig, Change, ControlError, Delivery, Edit, EnqueueError,
    FailOutcome, Grant, IdempotencyKey, IdempotencyRecord, LeaseToken, MessageContent, MessageId,
    MessageMeta, MessageState, NackItem, NewMessage, QueueId, QueueRecord, QueueSettings,
    ALL_STATES,
};
use crate::store::codec::{self, CodecError, ContentRef};
use crate::store::keys;
use crate::store::wal::{self, WalError, WalPosition, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// decode_record
// ---------------------------------------------------------------------------------------------

/// Feeds `data` to every record decoder, as given and with a valid crc appended.
///
/// Random bytes almost never carry a matching crc32, so without the sealed variant the fuzzer
/// would only ever exercise the crc check; sealing lets it reach the bincode field decoding. Any
/// record that decodes must survive encode → decode → encode unchanged, and its canonical encoding
/// can be no longer than the bytes that were accepted (bincode's varints are minimal when written).
pub fn decode_record(data: &[u8]) {
    decode_every_kind(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    decode_every_kind(&sealed);
}

fn decode_every_kind(bytes: &[u8]) {
    round_trip(bytes, codec::decode_meta, codec::encode_meta);
    round_trip(bytes, codec::decode_content, codec::encode_content);
    round_trip(bytes, codec::decode_history, codec::encode_history);
    round_trip(bytes, codec::decode_queue, codec::encode_queue);
    round_trip(bytes, codec::decode_idempotency, codec::encode_idempotency);
    round_trip(bytes, codec::decode_changes, |changes: &Vec<Change>| encode_changes(changes));
    if let Ok(content) = codec::decode_content(bytes) {
        check_borrowed_content_encoding(&content);
    }
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
    // Compared as bytes, not values: queue settings hold floats, and a NaN is not equal to itself.
    // bincode encodes every field, so equal bytes mean nothing was lost in the round trip.
    assert_eq!(encode(&again), encoded, "a record changed in a round trip: {value:?}");
    assert!(
        encoded.len() <= bytes.len(),
        "the canonical encoding of {value:?} ({} bytes) is longer than the accepted one ({})",
        encoded.len(),
        bytes.len()
    );
}

fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut payload = Vec::new();
    codec::encode_changes_into(changes, &mut payload);
    payload
}

/// The enqueue path encodes content through `ContentRef`; it must produce the owned encoding.
fn check_borrowed_content_encoding(content: &MessageContent) {
    let borrowed =
        ContentRef { headers: &content.headers, body_kind: content.body_kind, body: &content.body };
    assert_eq!(
        codec::encode_content_ref(&borrowed),
        codec::encode_content(content),
        "ContentRef and MessageContent encode differently"
    );
}

// ---------------------------------------------------------------------------------------------
// decode_key
// ---------------------------------------------------------------------------------------------

/// Feeds `data` to every sled key decoder (message, queue, idempotency, terminal, expiry) and
/// checks round trips and ordering.
///
/// A key decodes exactly when it has the right shape, re-encodes to the same bytes (each id has one
/// key), and two keys compare as bytes the way their ids compare as numbers, which is what makes
/// sled's iteration order the enqueue order (and the expiry order the time order).
pub fn decode_key(data: &[u8]) {
    match keys::decode_message_key(data) {
        Some(id) => assert_eq!(keys::message_key(id).as_slice(), data),
        None => assert_ne!(data.len(), 8, "an 8-byte message key was refused"),
    }
    match keys::decode_queue_key(data) {
        Some(queue_id) => assert_eq!(keys::queue_key(queue_id).as_slice(), data),
        None => assert_ne!(data.len(), 4, "a 4-byte queue key was refused"),
    }
    match keys::decode_idempotency_key(data) {
        Some((queue_id, key)) => assert_eq!(keys::idempotency_key(queue_id, &key), data),
        None => assert!(
            data.len() < 4 || std::str::from_utf8(&data[4..]).is_err(),
            "a well-formed idempotency key was refused"
        ),
    }
    match keys::decode_terminal_key(data) {
        // The id is all a terminal key yields: its queue and state come from the prefix it was
        // listed under.
        Some(id) => {
            assert_eq!(data.len(), 13, "a terminal key of {} bytes", data.len());
            assert_eq!(&data[5..], keys::message_key(id).as_slice());
        }
        None => assert_ne!(data.len(), 13, "a 13-byte terminal key was refused"),
    }
    match keys::decode_expiry_key(data) {
        Some((at_ms, id)) => assert_eq!(keys::expiry_key(at_ms, id).as_slice(), data),
        None => assert_ne!(data.len(), 16, "a 16-byte expiry key was refused"),
    }
    check_key_order(data);
}

fn check_key_order(data: &[u8]) {
    if data.len() >= 16 {
        let (left, right) = (&data[..8], &data[8..16]);
        let left_id = keys::decode_message_key(left).expect("8 bytes are a message key");
        let right_id = keys::decode_message_key(right).expect("8 bytes are a message key");
        assert_eq!(left.cmp(right), left_id.cmp(&right_id), "message key order");
    }
    if data.len() >= 8 {
        let (left, right) = (&data[..4], &data[4..8]);
        let left_id = keys::decode_queue_key(left).expect("4 bytes are a queue key");
        let right_id = keys::decode_queue_key(right).expect("4 bytes are a queue key");
        assert_eq!(left.cmp(right), left_id.cmp(&right_id), "queue key order");
    }
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
            for (_, lease_ms) in &items {
                if let Some(lease_ms) = lease_ms {
                    assert!((LEASE_MS_MIN..=LEASE_MS_MAX).contains(lease_ms));
                }
            }
            check_tokens(&texts, items.into_iter().map(|(token, _)| token));
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
fn check_enqueue(messages: &[NewMessage], now_ms: u64) {
    assert!(!messages.is_empty());
    assert!(messages.len() <= FUZZ_LIMITS.batch_count_max as usize);
    for message in messages {
        let content = codec::decode_content(&message.content_record)
            .expect("the parser's content record decodes");
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
            serde_json::from_slice::<serde::de::IgnoredAny>(&content.body)
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

/// Writes the bytes as WAL segment files, replays them, and checks the result against a model.
///
/// The first byte picks the layout (the rest of the input is `body`):
/// - 0: one segment file whose whole content is `body` (header included, so usually refused);
/// - 1: a valid segment header followed by `body` as raw frames;
/// - 2: a valid header followed by frames built from `body` (see [`build_segment`]), whose valid
///   prefix the replay must return exactly, truncating the file at the first damaged frame;
/// - 3: two built segments (the next byte says how many bytes the first one gets): damage in the
///   first is corruption, damage in the second a torn tail.
///
/// Whatever the layout, replay returns `Ok` or `Err` and never panics; after an `Ok` (which may
/// have truncated a torn tail) a second replay succeeds without truncating and returns the same
/// frames, a replay from any frame boundary returns the frames after it, and a replay from inside a
/// frame is refused.
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
        std::fs::write(segment_file(dir, seq as u64), &segment.bytes)
            .expect("writing a scratch WAL segment");
    }
    let first = replay_frames(dir, WalPosition::START);
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

fn segment_file(dir: &Path, seq: u64) -> std::path::PathBuf {
    dir.join(format!("{seq:020}.wal"))
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
        let length =
            std::fs::metadata(segment_file(dir, last_seq)).expect("the segment still exists").len();
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
/// Retention entries one sweep handles, like the storage thread's bounded chunks.
const SWEEP_COUNT_MAX: usize = 64;

/// Interprets the bytes as broker operations with a virtual clock, checking invariants after each.
///
/// Operations: enqueue (with idempotency keys, delays, priorities, attempt limits), lease, ack,
/// nack, extend (with tokens from earlier grants, stale or forged ones too), moving the clock with
/// or without firing timers, restart (a broker rebuilt from the persisted changes, as recovery
/// does), and a person's actions: pause, configure, delete, retry, reschedule, edit, and the
/// retention sweep. A small model predicts the outcomes; the checks are:
/// - every queue's per-state counts equal the states of its messages in the store, and add up to
///   the messages accepted minus those deleted; delivered ones equal the acks not yet removed;
/// - a lease token works exactly while its lease is the message's current one and unexpired, so no
///   message is held by two consumers at once, and an acked or deleted message is never leased
///   again; a person's action never touches a leased message;
/// - ids are handed out consecutively, and idempotent retries return the original ids;
/// - every emitted change survives the WAL codec, and the broker's memory equals what it
///   persisted (checked after the clock moves, after a person's actions and across restarts).
pub fn queue_ops(data: &[u8]) {
    let mut input = Input { bytes: data };
    let mut simulation = Simulation::new();
    for _ in 0..OPERATION_COUNT_MAX {
        let Some(code) = input.byte() else {
            break;
        };
        let done = match code % 21 {
            0..=3 => simulation.enqueue(&mut input),
            4..=6 => simulation.lease(&mut input),
            7 | 8 => simulation.ack(&mut input),
            9 | 10 => simulation.nack(&mut input),
            11 => simulation.extend(&mut input),
            12 | 13 => simulation.advance(&mut input, true),
            14 => simulation.advance(&mut input, false),
            15 => simulation.restart(),
            16 => simulation.pause(&mut input),
            17 => simulation.configure(&mut input),
            18 => simulation.sweep(),
            _ => simulation.act(code % 21 == 19, &mut input),
        };
        if done.is_none() {
            break;
        }
        simulation.check_counts();
    }
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

/// What the store would hold after applying every change: what a restart recovers from.
#[derive(Default)]
struct StoreModel {
    queues: BTreeMap<QueueId, QueueRecord>,
    metas: BTreeMap<MessageId, MessageMeta>,
    /// How many stored messages each (queue, state) has, kept in step with `metas`.
    census: HashMap<(QueueId, MessageState), u64>,
    /// Retention entries: (remove at, id).
    expiry: BTreeSet<(u64, MessageId)>,
    idempotency: BTreeMap<(QueueId, String), IdempotencyRecord>,
    next_id: Option<u64>,
}

impl StoreModel {
    fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            match change.clone() {
                Change::PutQueue { queue_id, record } => {
                    self.queues.insert(queue_id, record);
                }
                Change::PutMeta { id, meta } => {
                    *self.census.entry((meta.queue_id, meta.state)).or_default() += 1;
                    if let Some(old) = self.metas.insert(id, meta) {
                        self.uncount(&old);
                    }
                }
                Change::DeleteMessage { id, .. } => {
                    if let Some(old) = self.metas.remove(&id) {
                        self.uncount(&old);
                    }
                }
                Change::ExpireAt { at_ms, id } => {
                    self.expiry.insert((at_ms, id));
                }
                Change::RemoveExpiry { at_ms, id } => {
                    self.expiry.remove(&(at_ms, id));
                }
                Change::PutIdempotency { queue_id, key, record } => {
                    self.idempotency.insert((queue_id, key), record);
                }
                Change::DeleteIdempotency { queue_id, key } => {
                    self.idempotency.remove(&(queue_id, key));
                }
                Change::SetNextId { next_id } => self.next_id = Some(next_id),
                Change::PutContent { .. }
                | Change::RecordHistory { .. }
                | Change::IndexTerminal { .. }
                | Change::UnindexTerminal { .. } => {}
            }
        }
    }

    fn uncount(&mut self, meta: &MessageMeta) {
        let count = self.census.get_mut(&(meta.queue_id, meta.state)).expect("counted when put");
        *count -= 1;
    }
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

/// The broker under test, the model of what it must do, and the store its changes build.
struct Simulation {
    broker: Broker,
    now_ms: u64,
    restart_count: u64,
    store: StoreModel,
    /// Per queue: whether it exists, its settings and pause flag as last set.
    created: [bool; 2],
    settings: [QueueSettings; 2],
    paused: [bool; 2],
    /// Per queue: messages accepted (duplicates excluded), deleted, acked, and delivered deleted.
    accepted_counts: [u64; 2],
    deleted_counts: [u64; 2],
    acked_counts: [u64; 2],
    delivered_deleted_counts: [u64; 2],
    next_id: u64,
    /// Leased messages: exactly the broker's leased set (expired ones leave at `expire_due`).
    held: HashMap<MessageId, Held>,
    acked: HashSet<MessageId>,
    deleted: HashSet<MessageId>,
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
    }
}

/// SplitMix64's output function: distinct seeds for each restart, as distinct boots would have.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Simulation {
    fn new() -> Simulation {
        Simulation {
            broker: Broker::new(broker_config(), START_MS, mix(0)),
            now_ms: START_MS,
            restart_count: 0,
            store: StoreModel::default(),
            created: [false; 2],
            settings: Default::default(),
            paused: [false; 2],
            accepted_counts: [0; 2],
            deleted_counts: [0; 2],
            acked_counts: [0; 2],
            delivered_deleted_counts: [0; 2],
            next_id: 1,
            held: HashMap::new(),
            acked: HashSet::new(),
            deleted: HashSet::new(),
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

    /// Checks that one operation's changes survive the WAL codec and only delete what may go,
    /// then persists them.
    fn persist(&mut self, changes: &[Change]) {
        let payload = encode_changes(changes);
        let decoded = codec::decode_changes(&payload).expect("the broker's changes decode");
        assert_eq!(decoded, changes, "changes changed in the WAL codec");
        for change in changes {
            match change {
                Change::PutMeta { id, meta } => {
                    assert!(id.0 < self.broker.next_id(), "a change names an unissued id");
                    let record = codec::encode_meta(meta);
                    assert_eq!(&codec::decode_meta(&record).expect("meta decodes"), meta);
                }
                Change::DeleteMessage { id, queue_id, state } => {
                    self.observe_deletion(*id, *queue_id, *state)
                }
                _ => {}
            }
            // One at a time, so that a deletion is checked against the state the changes before
            // it in the same list left.
            self.store.apply(std::slice::from_ref(change));
        }
    }

    /// A deletion names the message's stored queue and state, and never a leased message.
    fn observe_deletion(&mut self, id: MessageId, queue_id: QueueId, state: MessageState) {
        assert!(!self.held.contains_key(&id), "leased {id} was deleted");
        assert_ne!(state, MessageState::Leased, "{id} was deleted as leased");
        let queue = self.queue_index(queue_id);
        if let Some(stored) = self.store.metas.get(&id) {
            assert_eq!((stored.queue_id, stored.state), (queue_id, state), "{id}");
        }
        assert!(self.deleted.insert(id), "{id} was deleted twice");
        self.deleted_counts[queue] += 1;
        if state == MessageState::Delivered {
            self.delivered_deleted_counts[queue] += 1;
        }
    }

    /// Enqueues 1-3 messages, maybe under an idempotency key, and checks the ids handed out.
    fn enqueue(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let count = 1 + usize::from((shape >> 1) % 3);
        let key_choice = (shape >> 3) & 3;
        let request_hash = u64::from(shape >> 5);
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            messages.push(self.new_message(input.byte()?, input.byte()?));
        }
        let key = (key_choice != 0)
            .then(|| IdempotencyKey { key: format!("key-{key_choice}"), request_hash });
        let mut changes = Vec::new();
        let outcome =
            self.broker.enqueue(self.now_ms, QUEUE_NAMES[queue], messages, key, &mut changes);
        match self.keys.get(&(queue, key_choice)).copied() {
            Some(used) if used.request_hash != request_hash => {
                assert_eq!(outcome, Err(EnqueueError::IdempotencyConflict));
                assert!(changes.is_empty(), "a refused batch changed something");
            }
            Some(used) => {
                let outcome = outcome.expect("a repeated request is accepted");
                assert!(outcome.duplicate, "a repeated request was stored twice");
                assert_eq!((outcome.first_id.0, outcome.count), (used.first_id, used.count));
                assert!(changes.is_empty(), "a repeated request changed something");
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
                self.created[queue] = true;
            }
        }
        self.persist(&changes);
        Some(())
    }

    /// A message whose delivery, priority and attempt limit come from two input bytes.
    fn new_message(&self, timing: u8, settings: u8) -> NewMessage {
        let step_ms = u64::from(timing >> 2);
        let delivery = match timing % 4 {
            0 | 1 => Delivery::Now,
            2 => Delivery::After { delay_ms: 1 + step_ms * 37 },
            // Up to 100 ms in the past (ready at once) or about 3 s ahead.
            _ => Delivery::At { deliver_at_ms: (self.now_ms - 100).saturating_add(step_ms * 50) },
        };
        let attempt_choice = u32::from((settings >> 2) % 4);
        NewMessage {
            content_record: codec::encode_content(&MessageContent {
                headers: vec![("kind".into(), "fuzz".into())],
                body_kind: BodyKind::Bytes,
                body: vec![timing, settings],
            }),
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
        let mut changes = Vec::new();
        let grants = self.broker.lease(
            self.now_ms,
            QUEUE_NAMES[queue],
            count_max,
            Some(lease_ms),
            &mut changes,
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
        self.persist(&changes);
        Some(())
    }

    /// A grant is of a message nobody holds, never acked or deleted, and its record is leased.
    fn check_grant(&mut self, queue: usize, grant: &Grant, lease_ms: u64) {
        let meta = &grant.meta;
        assert!(!self.acked.contains(&grant.id), "acked {} leased again", grant.id);
        assert!(!self.deleted.contains(&grant.id), "deleted {} leased", grant.id);
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
        let mut changes = Vec::new();
        let outcomes = self.broker.ack(self.now_ms, QUEUE_NAMES[queue], &tokens, &mut changes);
        assert_eq!(outcomes.len(), tokens.len());
        for (token, outcome) in tokens.iter().zip(&outcomes) {
            let expected = self.holding(queue, *token);
            assert_eq!(outcome.is_ok(), expected.is_some(), "ack of {token:?}: {outcome:?}");
            if let Some((id, _)) = expected {
                self.held.remove(&id);
                self.acked.insert(id);
                self.acked_counts[queue] += 1;
            }
        }
        self.persist(&changes);
        Some(())
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
        let mut changes = Vec::new();
        let outcomes = self.broker.nack(self.now_ms, QUEUE_NAMES[queue], items, &mut changes);
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
                FailOutcome::Dead => assert!(dead, "{id} went dead early"),
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
        self.persist(&changes);
        Some(())
    }

    /// Extends 1-2 leases; a current lease moves to now + lease_ms, others are refused.
    fn extend(&mut self, input: &mut Input) -> Option<()> {
        let shape = input.byte()?;
        let queue = usize::from(shape & 1);
        let mut items = Vec::new();
        for _ in 0..1 + (shape >> 1) % 2 {
            let token = self.pick_token(input.byte()?);
            items.push((token, 1 + u64::from(input.byte()?) * 10));
        }
        let asked: Vec<_> =
            items.iter().map(|(token, lease_ms)| (*token, Some(*lease_ms))).collect();
        let mut changes = Vec::new();
        let outcomes = self.broker.extend(self.now_ms, QUEUE_NAMES[queue], &asked, &mut changes);
        assert_eq!(outcomes.len(), items.len());
        for ((token, lease_ms), outcome) in items.iter().zip(&outcomes) {
            match self.holding(queue, *token) {
                Some((id, mut held)) => {
                    let deadline_ms = self.now_ms + lease_ms;
                    assert_eq!(*outcome, Ok(deadline_ms), "extend of {token:?}");
                    held.deadline_ms = deadline_ms;
                    self.held.insert(id, held);
                }
                None => assert!(outcome.is_err(), "extend of {token:?} succeeded"),
            }
        }
        self.persist(&changes);
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
        let mut changes = Vec::new();
        self.broker.expire_due(self.now_ms, &mut changes);
        // The leases that ran out end first: their messages may be deleted by these changes.
        self.forget_expired();
        self.persist(&changes);
        if let Some(deadline_ms) = self.broker.next_deadline_ms() {
            assert!(deadline_ms > self.now_ms, "a due timer survived expire_due");
        }
        self.check_memory_matches_store(true);
        Some(())
    }

    /// Drops what expiry ends in the model: past leases and idempotency keys out of their window.
    fn forget_expired(&mut self) {
        let now_ms = self.now_ms;
        self.held.retain(|_, held| held.deadline_ms > now_ms);
        self.keys.retain(|_, used| used.created_at_ms + IDEMPOTENCY_WINDOW_MS > now_ms);
    }

    /// Replaces the broker with one rebuilt from the store, the way recovery does, and checks that
    /// nothing the old broker knew was lost.
    fn restart(&mut self) -> Option<()> {
        self.restart_count += 1;
        let mut broker = Broker::new(broker_config(), self.now_ms, mix(self.restart_count));
        for (queue_id, record) in &self.store.queues {
            broker.restore_queue(*queue_id, record.clone());
        }
        for (id, meta) in &self.store.metas {
            broker.restore_message(*id, meta.clone());
        }
        if let Some(next_id) = self.store.next_id {
            broker.restore_next_id(next_id);
        }
        let mut changes = Vec::new();
        for ((queue_id, key), record) in &self.store.idempotency {
            broker.restore_idempotency(self.now_ms, *queue_id, key.clone(), *record, &mut changes);
        }
        broker.finish_restore();
        let old = std::mem::replace(&mut self.broker, broker);
        assert_eq!(self.broker.next_id(), old.next_id(), "the id counter went back");
        for name in QUEUE_NAMES {
            assert_eq!(self.broker.queue_stats(name), old.queue_stats(name), "{name}");
        }
        for id in (1..self.next_id).map(MessageId) {
            assert_eq!(self.broker.active_meta(id), old.active_meta(id), "{id}");
        }
        self.persist(&changes);
        self.keys.retain(|_, used| used.created_at_ms + IDEMPOTENCY_WINDOW_MS > self.now_ms);
        self.check_memory_matches_store(false);
        Some(())
    }

    /// Pauses or resumes a queue: a paused queue leases nothing.
    fn pause(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let queue = usize::from(choice & 1);
        let paused = choice & 2 != 0;
        let mut changes = Vec::new();
        let found = self.broker.set_paused(self.now_ms, QUEUE_NAMES[queue], paused, &mut changes);
        assert_eq!(found, self.created[queue], "set_paused found the wrong queues");
        if found {
            self.paused[queue] = paused;
        }
        self.persist(&changes);
        Some(())
    }

    /// Sets a queue's overrides (creating it), from a few presets.
    fn configure(&mut self, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let queue = usize::from(choice & 1);
        let settings = settings_preset(choice >> 1);
        let mut changes = Vec::new();
        self.broker.configure(self.now_ms, QUEUE_NAMES[queue], settings.clone(), &mut changes);
        let stats = self.broker.queue_stats(QUEUE_NAMES[queue]).expect("configure creates");
        assert_eq!(stats.settings, settings);
        self.created[queue] = true;
        self.settings[queue] = settings;
        self.persist(&changes);
        Some(())
    }

    /// Handles the due retention entries as the storage thread does, predicting each removal.
    fn sweep(&mut self) -> Option<()> {
        let due: Vec<(u64, MessageId)> = self
            .store
            .expiry
            .iter()
            .take_while(|(at_ms, _)| *at_ms <= self.now_ms)
            .take(SWEEP_COUNT_MAX)
            .copied()
            .collect();
        for (at_ms, id) in due {
            let stored = self.stored(id);
            let expected = stored.as_ref().is_some_and(|meta| self.retention_passed(meta));
            let mut changes = Vec::new();
            self.broker.sweep(self.now_ms, at_ms, id, stored, &mut changes);
            let removed =
                changes.iter().any(|change| matches!(change, Change::DeleteMessage { .. }));
            assert_eq!(removed, expected, "sweep of {id} at {at_ms}");
            self.persist(&changes);
        }
        self.check_memory_matches_store(false);
        Some(())
    }

    /// Whether a stored terminal message's retention, under its queue's current settings, passed.
    fn retention_passed(&self, meta: &MessageMeta) -> bool {
        let settings = &self.settings[self.queue_index(meta.queue_id)];
        let retention_ms = match meta.state {
            MessageState::Delivered => Some(settings.retention_ms.unwrap_or(RETENTION_MS)),
            MessageState::Dead => settings.dead_retention_ms,
            _ => None,
        };
        retention_ms.is_some_and(|retention_ms| meta.updated_at_ms + retention_ms <= self.now_ms)
    }

    /// What the storage thread passes as `stored`: the store's record unless the broker holds it.
    fn stored(&self, id: MessageId) -> Option<MessageMeta> {
        if self.broker.active_meta(id).is_some() {
            return None;
        }
        self.store.metas.get(&id).cloned()
    }

    /// A person's action on one message: delete, retry, reschedule or edit (`delete_or_retry`
    /// picks between the first two, the input between the others).
    fn act(&mut self, delete_or_retry: bool, input: &mut Input) -> Option<()> {
        let choice = input.byte()?;
        let detail = input.byte()?;
        let id = MessageId(1 + u64::from(choice) % self.next_id);
        let before = self.store.metas.get(&id).cloned();
        assert_eq!(
            before.as_ref().is_some_and(|meta| meta.state == MessageState::Leased),
            self.held.contains_key(&id),
            "{id}: the model's leases and the store disagree"
        );
        let (stored, now_ms) = (self.stored(id), self.now_ms);
        let mut changes = Vec::new();
        let outcome = match (delete_or_retry, choice & 1 == 0) {
            (true, true) => self.broker.delete(now_ms, id, stored, &mut changes).map(|()| None),
            (true, false) => {
                self.broker.retry(now_ms, id, stored, detail & 1 == 0, &mut changes).map(Some)
            }
            (false, true) => {
                let deliver_at_ms = (now_ms - 500).saturating_add(u64::from(detail) * 10);
                self.broker.reschedule(now_ms, id, stored, deliver_at_ms, &mut changes).map(Some)
            }
            (false, false) => {
                let edit = Edit {
                    priority: Some(i32::from(detail % 5) - 2),
                    fields: vec!["priority"],
                    ..Edit::default()
                };
                self.broker.edit(now_ms, id, stored, edit, &mut changes).map(Some)
            }
        };
        let action = match (delete_or_retry, choice & 1 == 0) {
            (true, true) => Action::Delete,
            (true, false) => Action::Retry,
            _ => Action::Move,
        };
        check_action(id, action, before.as_ref(), &outcome);
        // A dead message that a person retries without a reset, or reschedules, keeps its
        // attempt count, so its next delivery is one past its limit.
        let was_dead = before.as_ref().is_some_and(|meta| meta.state == MessageState::Dead);
        let reset = matches!(action, Action::Retry) && detail & 1 == 0;
        if was_dead && outcome.is_ok() && !reset {
            self.attempts_kept.insert(id);
        }
        if outcome.is_ok() && matches!(action, Action::Delete) {
            let deleted = changes.iter().any(
                |change| matches!(change, Change::DeleteMessage { id: gone, .. } if *gone == id),
            );
            assert!(deleted, "a delete of {id} that succeeded deleted nothing");
        }
        self.persist(&changes);
        self.check_memory_matches_store(false);
        Some(())
    }

    /// Every queue's counts equal its stored messages' states, add up to what was accepted and
    /// not deleted, and its delivered count is the acks not yet removed.
    fn check_counts(&self) {
        let mut active_count = 0;
        for (queue, name) in QUEUE_NAMES.iter().enumerate() {
            let Some(stats) = self.broker.queue_stats(name) else {
                assert!(!self.created[queue], "queue {name} vanished");
                continue;
            };
            let queue_id = self.broker.queue_id(name).expect("the queue exists");
            for state in ALL_STATES {
                let stored = self.store.census.get(&(queue_id, state)).copied().unwrap_or(0);
                assert_eq!(stats.counts[state.index()], stored, "queue {name}, {}", state.name());
            }
            let total: u64 = stats.counts.iter().sum();
            let expected = self.accepted_counts[queue] - self.deleted_counts[queue];
            assert_eq!(total, expected, "queue {name}: {stats:?}");
            let delivered = stats.counts[MessageState::Delivered.index()];
            let expected = self.acked_counts[queue] - self.delivered_deleted_counts[queue];
            assert_eq!(delivered, expected, "queue {name}: {stats:?}");
            active_count += ALL_STATES
                .iter()
                .filter(|state| state.is_active())
                .map(|state| stats.counts[state.index()])
                .sum::<u64>();
        }
        assert_eq!(self.broker.active_count() as u64, active_count);
    }

    /// Every active message in memory is exactly what the store holds, and every message the
    /// store holds as active is in memory: memory never runs ahead of what was persisted. Right
    /// after `expire_due` (`expired`), no active message may be overdue either.
    fn check_memory_matches_store(&self, expired: bool) {
        for id in (1..self.next_id).map(MessageId) {
            let Some(stored) = self.store.metas.get(&id) else {
                assert!(self.deleted.contains(&id), "{id} vanished from the store");
                assert!(self.broker.active_meta(id).is_none(), "deleted {id} is active");
                continue;
            };
            match self.broker.active_meta(id) {
                Some(meta) => {
                    assert_eq!(meta, stored, "{id}: memory and store differ");
                    if expired && meta.state.is_timed() {
                        assert!(meta.due_at_ms > self.now_ms, "{id} is overdue: {meta:?}");
                    }
                }
                None => assert!(!stored.state.is_active(), "{id} is missing: {stored:?}"),
            }
            if self.acked.contains(&id) {
                assert_eq!(stored.state, MessageState::Delivered, "{id} was acked");
            }
        }
    }
}

/// The kinds of a person's action, for predicting their outcome.
#[derive(Clone, Copy, Debug)]
enum Action {
    Delete,
    Retry,
    /// Reschedule or edit: allowed in every state but leased and delivered.
    Move,
}

/// Predicts a person's action from the message's stored state before it, and checks the result.
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
