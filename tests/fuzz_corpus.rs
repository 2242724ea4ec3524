#![cfg(any())] // PORT-V2
//! Replays the fuzz corpus on stable Rust, so that `cargo test` keeps what fuzzing once proved.
//!
//! Property: every fuzz target body in `outboxd::fuzzing` returns normally (no panic, no failed
//! invariant) on every checked-in input (`fuzz/corpus/<target>/`, which also holds the crashes that
//! fuzzing found and `fuzz/regressions/<target>/` keeps), on seeds generated here from the current
//! record formats and request shapes, and on a few thousand mutations of them.
//!
//! Method: each target gets its own test (so the two cores share the work). The mutations come from
//! a fixed-seed SplitMix64 (bit flips, byte overwrites, truncations, insertions, deletions, chunk
//! copies and splices between seeds), so a run always sees the same inputs. A failing input is
//! written to `target/tmp/fuzz-failures/` and named in the panic, ready to be copied into
//! `fuzz/regressions/<target>/` and the corpus. Another test checks that the generated seeds are
//! meaningful (they decode, parse and replay), so the corpus really reaches past the first check.
//!
//! After a format change, `OUTBOXD_WRITE_FUZZ_CORPUS=1 cargo test --features testing --test
//! fuzz_corpus` rewrites the generated seeds into `fuzz/corpus/`.

use outboxd::fuzzing;
use outboxd::queue::{
    BodyKind, Change, History, HistoryEvent, HistoryKind, IdempotencyRecord, MessageContent,
    MessageId, MessageMeta, MessageState, QueueId, QueueRecord, QueueSettings,
};
use outboxd::store::codec;
use outboxd::store::keys;
use outboxd::store::wal::{Wal, WalPosition};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Mutated inputs per target; together the five targets stay well under the 15 s budget.
const MUTATION_COUNT: usize = 4000;
/// Mutated inputs never grow past this, so that a run's time stays predictable.
const MUTATED_BYTES_MAX: usize = 4096;
/// The checked-in corpus must stay small: it lives in the repository.
const CORPUS_BYTES_MAX: u64 = 200 * 1024;

type Target = fn(&[u8]);

/// A named input.
type Seed = (String, Vec<u8>);

#[test]
fn decode_record_survives_its_corpus() {
    replay_corpus("decode_record", fuzzing::decode_record, record_seeds());
}

#[test]
fn decode_key_survives_its_corpus() {
    replay_corpus("decode_key", fuzzing::decode_key, key_seeds());
}

#[test]
fn http_json_survives_its_corpus() {
    replay_corpus("http_json", fuzzing::http_json, http_seeds());
}

#[test]
fn wal_replay_survives_its_corpus() {
    replay_corpus("wal_replay", fuzzing::wal_replay, wal_seeds());
}

#[test]
fn queue_ops_survives_its_corpus() {
    replay_corpus("queue_ops", fuzzing::queue_ops, queue_seeds());
}

#[test]
fn checked_in_corpus_is_present_and_small() {
    let mut total_bytes = 0;
    for target in ["decode_record", "decode_key", "http_json", "wal_replay", "queue_ops"] {
        let files = read_dir_seeds(&fuzz_dir().join("corpus").join(target));
        assert!(files.len() >= 10, "fuzz/corpus/{target} holds {} seeds", files.len());
        total_bytes += files.iter().map(|(_, bytes)| bytes.len() as u64).sum::<u64>();
    }
    assert!(
        total_bytes <= CORPUS_BYTES_MAX,
        "fuzz/corpus holds {total_bytes} bytes: run the fuzzer with a scratch corpus (.ci/fuzz.sh)"
    );
}

/// The generated seeds get past the first check of what they target: they are worth mutating.
#[test]
fn generated_seeds_reach_past_the_first_check() {
    for (name, bytes) in record_seeds() {
        let sealed = [bytes.as_slice(), &crc32fast::hash(&bytes).to_le_bytes()].concat();
        let decodes = |bytes: &[u8]| {
            codec::decode_meta(bytes).is_ok()
                || codec::decode_content(bytes).is_ok()
                || codec::decode_history(bytes).is_ok()
                || codec::decode_queue(bytes).is_ok()
                || codec::decode_idempotency(bytes).is_ok()
                || codec::decode_changes(bytes).is_ok()
        };
        assert!(decodes(&bytes) || decodes(&sealed), "record seed {name} decodes nowhere");
    }
    for (name, bytes) in http_seeds().into_iter().filter(|(name, _)| name.starts_with("ok-")) {
        let accepted =
            outboxd::http::types::parse_enqueue(&bytes, &fuzzing::FUZZ_LIMITS, 1_800_000_000_000)
                .is_ok()
                || outboxd::http::types::parse_lease(&bytes).is_ok()
                || outboxd::http::types::parse_ack(&bytes).is_ok()
                || outboxd::http::types::parse_nack(&bytes).is_ok()
                || outboxd::http::types::parse_extend(&bytes).is_ok();
        assert!(accepted, "request seed {name} is accepted by no parser");
    }
    let real_segment = wal_seeds().into_iter().find(|(name, _)| name == "real-segment");
    let (_, bytes) = real_segment.expect("the real segment seed exists");
    let directory = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(directory.path().join(format!("{:020}.wal", 0)), &bytes[1..])
        .expect("writing the segment");
    let mut frame_count = 0;
    outboxd::store::wal::replay(directory.path(), WalPosition::START, |_, payload: &[u8]| {
        codec::decode_changes(payload).expect("the real segment holds change frames");
        frame_count += 1;
        Ok::<(), outboxd::store::wal::WalError>(())
    })
    .expect("the real segment replays");
    assert!(frame_count >= 3, "the real segment holds {frame_count} frames");
}

/// Runs `target` over the checked-in corpus, the generated seeds and their mutations.
fn replay_corpus(name: &str, target: Target, generated: Vec<Seed>) {
    let corpus_dir = fuzz_dir().join("corpus").join(name);
    if std::env::var_os("OUTBOXD_WRITE_FUZZ_CORPUS").is_some() {
        write_seeds(&corpus_dir, &generated);
    }
    let mut seeds = read_dir_seeds(&corpus_dir);
    seeds.extend(read_dir_seeds(&fuzz_dir().join("regressions").join(name)));
    seeds.extend(generated);
    assert!(!seeds.is_empty(), "no seeds for {name}");
    for (label, bytes) in &seeds {
        run_one(name, target, label, bytes);
    }
    let mut rng = SplitMix64(0x5eed_0000 ^ name.len() as u64);
    for index in 0..MUTATION_COUNT {
        let (label, bytes) = &seeds[rng.below(seeds.len())];
        let (_, other) = &seeds[rng.below(seeds.len())];
        let mutated = mutate(&mut rng, bytes, other);
        run_one(name, target, &format!("mutation-{index}-of-{label}"), &mutated);
    }
}

/// Runs one input; on a panic, saves the input where it can be replayed and names it.
fn run_one(target_name: &str, target: Target, label: &str, bytes: &[u8]) {
    let result = panic::catch_unwind(AssertUnwindSafe(|| target(bytes)));
    if result.is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        std::fs::create_dir_all(&dir).expect("creating the failure directory");
        let path = dir.join(format!("{target_name}-{}", label.replace('/', "_")));
        std::fs::write(&path, bytes).expect("saving the failing input");
        panic!(
            "fuzz target {target_name} failed on {label}; input saved to {} (replay: copy it to \
             fuzz/regressions/{target_name}/ and fuzz/corpus/{target_name}/)",
            path.display()
        );
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every regular file of `dir`, sorted by name; a missing directory holds none.
fn read_dir_seeds(dir: &Path) -> Vec<Seed> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut seeds: Vec<Seed> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| {
            let bytes = std::fs::read(entry.path()).expect("reading a corpus file");
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    seeds.sort();
    seeds
}

fn write_seeds(dir: &Path, seeds: &[Seed]) {
    std::fs::create_dir_all(dir).expect("creating the corpus directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("writing a seed");
    }
}

/// SplitMix64: a tiny deterministic generator, so every run mutates the same way.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        const INTERESTING: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfb, 0xff];
        if self.below(4) == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.next() as u8
        }
    }
}

/// One to four random edits of `bytes`, the way libFuzzer's simplest mutators work.
fn mutate(rng: &mut SplitMix64, bytes: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(4) {
        let position = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let index = position.min(out.len() - 1);
                out[index] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let index = position.min(out.len() - 1);
                out[index] = rng.byte();
            }
            2 => out.truncate(position),
            3 => {
                let inserted: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.byte()).collect();
                out.splice(position..position, inserted);
            }
            4 => {
                let end = (position + 1 + rng.below(8)).min(out.len());
                out.drain(position.min(end)..end);
            }
            5 => {
                let end = (position + 1 + rng.below(16)).min(out.len());
                let chunk = out[position.min(end)..end].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, chunk);
            }
            _ => {
                let from = rng.below(other.len() + 1);
                out.truncate(position);
                out.extend_from_slice(&other[from..]);
            }
        }
    }
    out.truncate(MUTATED_BYTES_MAX);
    out
}

// ---------------------------------------------------------------------------------------------
// Seed generation: real records, requests, WAL segments and operation sequences.
// ---------------------------------------------------------------------------------------------

fn meta(state: MessageState) -> MessageMeta {
    let leased = state == MessageState::Leased;
    MessageMeta {
        queue_id: QueueId(1),
        state,
        priority: -3,
        attempt_count: 2,
        attempt_count_max: 10,
        enqueued_at_ms: 1_800_000_000_000,
        updated_at_ms: 1_800_000_000_500,
        due_at_ms: if state.is_timed() { 1_800_000_030_500 } else { 0 },
        lease_nonce: if leased { 0xdead_beef_0000_0001 } else { 0 },
        leased_at_ms: 1_800_000_000_400,
        event_seq: 1,
    }
}

fn history_event(kind: HistoryKind, seq: u32) -> HistoryEvent {
    HistoryEvent {
        seq,
        kind,
        at_ms: 1_800_000_001_000,
        attempt: 2,
        leased_at_ms: 1_800_000_000_400,
        detail: "SMTP 451 try later".into(),
        dead: kind == HistoryKind::Nacked && seq > 2,
    }
}

fn change_frames() -> Vec<Vec<Change>> {
    let id = MessageId(42);
    let queue_id = QueueId(1);
    let record = QueueRecord { name: "emails".into(), paused: false, settings: settings() };
    let content = codec::encode_content(&MessageContent {
        headers: vec![("kind".into(), "welcome".into())],
        body_kind: BodyKind::Json,
        body: br#"{"to":"a@example.com"}"#.to_vec(),
    });
    let key_record = IdempotencyRecord {
        request_hash: 7,
        first_id: 42,
        count: 1,
        created_at_ms: 1_800_000_000_000,
    };
    vec![
        vec![
            Change::PutQueue { queue_id, record },
            Change::PutContent { id, record: content },
            Change::PutMeta { id, meta: meta(MessageState::Ready) },
            Change::SetNextId { next_id: 43 },
            Change::PutIdempotency { queue_id, key: "order-42".into(), record: key_record },
        ],
        vec![Change::PutMeta { id, meta: meta(MessageState::Leased) }],
        vec![
            Change::RecordHistory {
                id,
                event: history_event(HistoryKind::Nacked, 0),
                keep_count: 20,
            },
            Change::PutMeta { id, meta: meta(MessageState::Retrying) },
        ],
        vec![
            Change::PutMeta { id, meta: meta(MessageState::Delivered) },
            Change::IndexTerminal { queue_id, state: MessageState::Delivered, id },
            Change::ExpireAt { at_ms: 1_800_086_400_000, id },
        ],
        vec![
            Change::RemoveExpiry { at_ms: 1_800_086_400_000, id },
            Change::UnindexTerminal { queue_id, state: MessageState::Dead, id },
            Change::DeleteMessage { id, queue_id, state: MessageState::Delivered },
            Change::DeleteIdempotency { queue_id, key: "order-42".into() },
        ],
    ]
}

fn settings() -> QueueSettings {
    QueueSettings {
        max_attempts: Some(5),
        lease_ms: Some(60_000),
        backoff_initial_ms: Some(500),
        backoff_multiplier: Some(1.5),
        backoff_max_ms: Some(60_000),
        backoff_jitter: Some(0.1),
        retention_ms: Some(0),
        dead_retention_ms: None,
    }
}

fn encode_changes(changes: &[Change]) -> Vec<u8> {
    let mut payload = Vec::new();
    codec::encode_changes_into(changes, &mut payload);
    payload
}

/// Every record kind, both sealed (decodes as is) and without its crc (decodes once the target
/// seals it, which lets the fuzzer mutate fields behind a valid crc).
fn record_seeds() -> Vec<Seed> {
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for state in [MessageState::Scheduled, MessageState::Leased, MessageState::Dead] {
        records.push((format!("meta-{}", state.name()), codec::encode_meta(&meta(state))));
    }
    let json = MessageContent {
        headers: vec![("kind".into(), "welcome".into()), ("trace".into(), "a1".into())],
        body_kind: BodyKind::Json,
        body: br#"{"to":"a@example.com","n":[1,2.5,null]}"#.to_vec(),
    };
    let bytes =
        MessageContent { headers: Vec::new(), body_kind: BodyKind::Bytes, body: vec![0, 255] };
    records.push(("content-json".into(), codec::encode_content(&json)));
    records.push(("content-bytes".into(), codec::encode_content(&bytes)));
    let events = vec![
        history_event(HistoryKind::Nacked, 0),
        history_event(HistoryKind::LeaseExpired, 1),
        history_event(HistoryKind::Retried, 2),
    ];
    records.push(("history".into(), codec::encode_history(&History { events })));
    let paused = QueueRecord { name: "webhooks".into(), paused: true, settings: settings() };
    let plain = QueueRecord { name: "emails".into(), paused: false, settings: Default::default() };
    records.push(("queue-configured".into(), codec::encode_queue(&paused)));
    records.push(("queue-plain".into(), codec::encode_queue(&plain)));
    let key =
        IdempotencyRecord { request_hash: u64::MAX, first_id: 1, count: 1000, created_at_ms: 5 };
    records.push(("idempotency".into(), codec::encode_idempotency(&key)));
    let mut seeds = Vec::new();
    for (name, record) in records {
        seeds.push((format!("{name}-unsealed"), record[..record.len() - 4].to_vec()));
        seeds.push((name, record));
    }
    for (index, changes) in change_frames().iter().enumerate() {
        seeds.push((format!("changes-{index}"), encode_changes(changes)));
    }
    seeds
}

fn key_seeds() -> Vec<Seed> {
    let id = MessageId(0x0102_0304_0506_0708);
    let pair = [keys::message_key(MessageId(255)), keys::message_key(MessageId(256))].concat();
    let queues = [keys::queue_key(QueueId(1)), keys::queue_key(QueueId(u32::MAX))].concat();
    vec![
        ("message-zero".into(), keys::message_key(MessageId(0)).to_vec()),
        ("message".into(), keys::message_key(id).to_vec()),
        ("message-max".into(), keys::message_key(MessageId(u64::MAX)).to_vec()),
        ("message-pair".into(), pair),
        ("queue".into(), keys::queue_key(QueueId(7)).to_vec()),
        ("queue-pair".into(), queues),
        ("idempotency".into(), keys::idempotency_key(QueueId(3), "order-42")),
        ("idempotency-utf8".into(), keys::idempotency_key(QueueId(3), "clé-é")),
        ("terminal".into(), keys::terminal_key(QueueId(2), MessageState::Dead, id).to_vec()),
        ("expiry".into(), keys::expiry_key(1_800_000_000_000, id).to_vec()),
        ("checkpoint".into(), keys::CHECKPOINT_KEY.to_vec()),
        ("next-id".into(), keys::NEXT_ID_KEY.to_vec()),
    ]
}

/// Requests of every kind: `ok-` seeds are valid, the others each break one rule.
fn http_seeds() -> Vec<Seed> {
    let token = "00000000000000010123456789abcdef";
    let texts = [
        ("ok-enqueue-json", r#"{"messages":[{"body":{"to":"a@example.com"}}]}"#.to_string()),
        ("ok-enqueue-null", r#"{"messages":[{"body":null},{"body":[1,"\u00e9",2.5e3]}]}"#.into()),
        (
            "ok-enqueue-full",
            r#"{"messages":[{"body":"x","headers":{"kind":"email"},"priority":-2,"max_attempts":5,"delay_ms":1000}]}"#.into(),
        ),
        ("ok-enqueue-base64", r#"{"messages":[{"body_base64":"AAEC/w==","deliver_at":"2027-01-31T09:00:00Z"}]}"#.into()),
        ("ok-enqueue-epoch", r#"{"messages":[{"body":1,"deliver_at":1800000000000}]}"#.into()),
        ("ok-lease-empty", String::new()),
        ("ok-lease", r#"{"max":10,"lease_ms":60000,"wait_ms":500}"#.into()),
        ("ok-ack", format!(r#"{{"leases":["{token}","not-a-token"]}}"#)),
        (
            "ok-nack",
            format!(r#"{{"items":[{{"lease":"{token}","error":"SMTP 451","delay_ms":5000}},{{"lease":"{token}","dead":true}}]}}"#),
        ),
        ("ok-extend", format!(r#"{{"items":[{{"lease":"{token}","lease_ms":30000}},{{"lease":"{token}"}}]}}"#)),
        ("bad-both-bodies", r#"{"messages":[{"body":1,"body_base64":"AA=="}]}"#.into()),
        ("bad-unknown-field", r#"{"messages":[{"body":1,"dela_ms":5}]}"#.into()),
        ("bad-empty-batch", r#"{"messages":[]}"#.into()),
        ("bad-too-large", format!(r#"{{"messages":[{{"body":"{}"}}]}}"#, "x".repeat(300))),
        ("bad-base64", r#"{"messages":[{"body_base64":"!!"}]}"#.into()),
        ("bad-far-future", r#"{"messages":[{"body":1,"deliver_at":"9999-12-31T23:59:59Z"}]}"#.into()),
        ("bad-lease-max", r#"{"max":0,"lease_ms":0}"#.into()),
        ("bad-trailing", r#"{"leases":["a"]} x"#.into()),
        ("bad-truncated", r#"{"items":[{"lease":"#.into()),
        ("bad-deep", "[".repeat(200)),
    ];
    let mut seeds: Vec<Seed> =
        texts.into_iter().map(|(name, text)| (name.to_string(), text.into_bytes())).collect();
    seeds.push(("bad-utf8".into(), b"{\"leases\":[\"\xff\xfe\"]}".to_vec()));
    seeds
}

/// A segment written by the real `Wal`, and segments in the target's built-frame layouts.
fn wal_seeds() -> Vec<Seed> {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let mut wal = Wal::open(directory.path(), 1 << 20).expect("opening a WAL");
    for changes in change_frames() {
        wal.append(&encode_changes(&changes));
        wal.commit().expect("committing a frame");
    }
    drop(wal);
    let segment = std::fs::read(directory.path().join(format!("{:020}.wal", 0)))
        .expect("reading the segment");
    let frames = segment[16..].to_vec();
    let mut torn = frames.clone();
    torn.truncate(frames.len() - 3);
    let built = |chunks: &[&[u8]]| -> Vec<u8> {
        chunks.iter().flat_map(|chunk| [&[chunk.len() as u8][..], chunk].concat()).collect()
    };
    let small = built(&[b"a", b"bc", b"def"]);
    vec![
        ("real-segment".into(), [&[0][..], &segment].concat()),
        ("real-frames".into(), [&[1][..], &frames].concat()),
        ("real-frames-torn".into(), [&[1][..], &torn].concat()),
        ("short-header".into(), vec![0, b'O', b'B', b'X']),
        ("built".into(), [&[2][..], &small].concat()),
        ("built-zero-length".into(), [&[2][..], &small, &[0, 1, 2]].concat()),
        ("built-bad-crc".into(), [&[2][..], &small, &[0x82, 9, 9]].concat()),
        ("built-torn".into(), [&[2][..], &small, &[20, 1, 2]].concat()),
        ("two-segments".into(), [&[3, small.len() as u8][..], &small, &small].concat()),
        ("two-segments-damaged-first".into(), [&[3, 2][..], &[0x81, 1], &small].concat()),
    ]
}

/// Operation bytes for `fuzzing::queue_ops` (see its match on `code % 21`).
mod op {
    pub const ENQUEUE: u8 = 0;
    pub const LEASE: u8 = 4;
    pub const ACK: u8 = 7;
    pub const NACK: u8 = 9;
    pub const EXTEND: u8 = 11;
    pub const ADVANCE: u8 = 12;
    /// Moves the clock without firing timers.
    pub const TICK: u8 = 14;
    pub const RESTART: u8 = 15;
    pub const PAUSE: u8 = 16;
    pub const CONFIGURE: u8 = 17;
    pub const SWEEP: u8 = 18;
    /// Delete (even id choice) or retry (odd).
    pub const DELETE_OR_RETRY: u8 = 19;
    /// Reschedule (even id choice) or edit the priority (odd).
    pub const MOVE: u8 = 20;
}

/// Scenarios that walk every operation and the interesting paths, plus two long random runs.
fn queue_seeds() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = consumer_scenarios()
        .into_iter()
        .chain(person_scenarios())
        .map(|(name, ops)| (name.to_string(), ops.concat()))
        .collect();
    for run in 0..2u64 {
        let mut rng = SplitMix64(run);
        seeds.push((format!("random-{run}"), (0..400).map(|_| rng.next() as u8).collect()));
    }
    seeds
}

/// A named operation sequence, one operation (code and parameter bytes) per slice.
type Scenario = (&'static str, Vec<&'static [u8]>);

/// Producers and consumers: enqueue, lease, ack, nack, extend, the clock and restarts.
#[rustfmt::skip]
fn consumer_scenarios() -> Vec<Scenario> {
    use op::*;
    vec![
        ("basic", vec![&[ENQUEUE, 0, 0, 0], &[LEASE, 0, 100], &[ACK, 0, 0]]),
        ("expiry", vec![
            &[ENQUEUE, 0, 0, 0], &[LEASE, 0, 1], &[ADVANCE, 20], &[ADVANCE, 0x42],
            &[LEASE, 0, 100], &[ACK, 2, 0, 1],
        ]),
        ("until-dead", vec![
            &[ENQUEUE, 0, 0, 8], &[LEASE, 0, 50], &[NACK, 0, 0, 0], &[ADVANCE, 0x82],
            &[LEASE, 0, 50], &[NACK, 0, 1, 0], &[LEASE, 0, 50],
        ]),
        ("nack-options", vec![
            &[ENQUEUE, 4, 0, 0, 0, 0], &[LEASE, 2, 50], &[NACK, 2, 0, 2, 1, 0x41],
            &[ADVANCE, 0x7f], &[LEASE, 0, 50],
        ]),
        ("idempotency", vec![
            &[ENQUEUE, 8, 0, 0], &[ENQUEUE, 8, 0, 0], &[ENQUEUE, 40, 0, 0], &[ADVANCE, 0xd9],
            &[ENQUEUE, 40, 0, 0], &[ENQUEUE, 40, 0, 0],
        ]),
        ("scheduled", vec![
            &[ENQUEUE, 2, 0x12, 0, 0x23, 1], &[LEASE, 2, 10], &[ADVANCE, 0x50], &[LEASE, 2, 10],
            &[ACK, 2, 0, 1],
        ]),
        ("extend", vec![
            &[ENQUEUE, 0, 0, 0], &[LEASE, 0, 2], &[EXTEND, 0, 0, 200], &[ADVANCE, 30], &[ACK, 0, 0],
        ]),
        ("deadline-boundary", vec![
            &[ENQUEUE, 0, 0, 0], &[LEASE, 0, 0], &[TICK, 1], &[ACK, 0, 0], &[EXTEND, 0, 0, 5],
            &[ADVANCE, 0], &[LEASE, 0, 0],
        ]),
        ("restart", vec![
            &[ENQUEUE, 4, 0, 0, 2, 1, 3, 2], &[LEASE, 2, 100], &[RESTART], &[ACK, 0, 0],
            &[LEASE, 0, 1], &[ADVANCE, 0x45], &[RESTART], &[LEASE, 6, 100], &[ADVANCE, 0xff],
            &[RESTART],
        ]),
        ("two-queues", vec![
            &[ENQUEUE, 0, 0, 0], &[ENQUEUE, 1, 0, 0], &[LEASE, 1, 100], &[ACK, 0, 0], &[ACK, 1, 0],
        ]),
        ("priorities", vec![&[ENQUEUE, 4, 0, 0, 0, 3, 0, 2], &[LEASE, 6, 100], &[NACK, 2, 0, 1, 1, 1]]),
        ("forged-tokens", vec![
            &[ACK, 0, 7], &[ENQUEUE, 0, 0, 0], &[LEASE, 0, 9], &[ACK, 4, 15, 23, 31],
            &[EXTEND, 2, 7, 9, 0, 9],
        ]),
    ]
}

/// A person's actions: pause, configure, delete, retry, reschedule, edit, the retention sweep.
#[rustfmt::skip]
fn person_scenarios() -> Vec<Scenario> {
    use op::*;
    vec![
        ("control", vec![
            &[ENQUEUE, 4, 0, 0, 0, 0], &[LEASE, 0, 10], &[PAUSE, 2], &[LEASE, 0, 10],
            &[DELETE_OR_RETRY, 0, 0], &[DELETE_OR_RETRY, 1, 0], &[PAUSE, 0], &[NACK, 0, 0, 2],
            &[DELETE_OR_RETRY, 1, 1], &[MOVE, 2, 200], &[MOVE, 3, 4], &[LEASE, 2, 10],
            &[ACK, 0, 1], &[MOVE, 1, 0], &[DELETE_OR_RETRY, 2, 0],
        ]),
        ("retention", vec![
            &[CONFIGURE, 2], &[ENQUEUE, 2, 0, 0, 0, 0], &[LEASE, 2, 10], &[ACK, 0, 0],
            &[NACK, 0, 1, 2], &[CONFIGURE, 4], &[ENQUEUE, 0, 0, 0], &[LEASE, 0, 0], &[TICK, 0x41],
            &[ADVANCE, 0x45], &[SWEEP], &[ADVANCE, 0xcc], &[SWEEP], &[RESTART], &[SWEEP],
        ]),
    ]
}
