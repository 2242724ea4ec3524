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
    BodyKind, Broker, BrokerConfig, ContentLocation, Delivery, Edit, EditFields, ExtendItem,
    History, HistoryEvent, HistoryKind, IdempotencyKey, IdempotencyRecord, MessageId, MessageState,
    NackItem, NewMessage, Op, QueueId, QueueRecord, QueueSettings, SegmentUsage, TerminalCounts,
    ALL_STATES,
};
use outboxd::random::SplitMix64;
use outboxd::store::codec::{self, ContentRef, FrameWriter, Manifest};
use outboxd::store::keys;
use outboxd::store::model::DiskModel;
use outboxd::store::wal::{self, Wal, WalPosition};
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
    let (segment, payload_offset) = (0, fuzzing::FIRST_PAYLOAD_OFFSET);
    for (name, bytes) in record_seeds() {
        let crc = crc32fast::hash(&bytes).to_le_bytes();
        let decodes = |bytes: &[u8]| {
            codec::decode_content(bytes).is_ok()
                || codec::decode_frame(bytes, segment, payload_offset).is_ok()
                || codec::decode_page(0, bytes).is_ok()
                || codec::decode_manifest(bytes).is_ok()
                || codec::decode_queue(bytes).is_ok()
                || codec::decode_history(bytes).is_ok()
                || codec::decode_idempotency(bytes).is_ok()
        };
        let sealed = [&bytes[..], &crc].concat();
        let prefixed = [&crc[..], &bytes].concat();
        let decoded = decodes(&bytes) || decodes(&sealed) || decodes(&prefixed);
        assert!(decoded, "record seed {name} decodes nowhere");
    }
    for (name, bytes) in key_seeds().into_iter().filter(|(name, _)| !name.starts_with("pair")) {
        let decodes = keys::decode_queue_key(&bytes).is_some()
            || keys::decode_page_key(&bytes).is_some()
            || keys::decode_active_key(&bytes).is_some()
            || keys::decode_expiry_key(&bytes).is_some()
            || keys::decode_idempotency_key(&bytes).is_some()
            || (0..3).any(|queue| {
                ALL_STATES.iter().any(|state| {
                    keys::decode_terminal_key(&bytes, QueueId(queue), *state).is_some()
                })
            })
            || [keys::MANIFEST, keys::HISTORY, keys::CONTENT].contains(&bytes[0]);
        assert!(decodes, "key seed {name} is no key");
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
    std::fs::write(wal::segment_path(directory.path(), 0), &bytes[1..])
        .expect("writing the segment");
    let mut op_count = 0;
    wal::replay(directory.path(), WalPosition::START, |position, payload: &[u8]| {
        let payload_offset = position.offset - payload.len() as u64;
        let ops = codec::decode_frame(payload, 0, payload_offset).expect("the frames hold ops");
        op_count += ops.len();
        Ok::<(), wal::WalError>(())
    })
    .expect("the real segment replays");
    assert!(op_count >= 10, "the real segment holds {op_count} ops");
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
    let mut rng = Mutator(SplitMix64(0x5eed_0000 ^ name.len() as u64));
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

/// The mutations' generator (SplitMix64, fixed seed), so every run mutates the same way.
struct Mutator(SplitMix64);

impl Mutator {
    /// A number in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: usize) -> usize {
        self.0.below(bound as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        const INTERESTING: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfb, 0xff];
        if self.below(4) == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.0.next() as u8
        }
    }
}

/// One to four random edits of `bytes`, the way libFuzzer's simplest mutators work.
fn mutate(rng: &mut Mutator, bytes: &[u8], other: &[u8]) -> Vec<u8> {
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
// Seed generation: real records, keys, requests, log segments and operation sequences.
// ---------------------------------------------------------------------------------------------

const NOW_MS: u64 = 1_800_000_000_000;

/// A content as the HTTP layer encodes it.
fn content(headers: &[(&str, &str)], body_kind: BodyKind, body: &[u8]) -> Vec<u8> {
    let headers: Vec<(String, String)> =
        headers.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
    codec::encode_content(&ContentRef { headers: &headers, body_kind, body })
}

/// A short but complete life of two queues on a real broker, driven as the storage thread
/// drives it; the disk it wrote (checkpointed at the end) and each request's contents and ops.
struct Life {
    disk: DiskModel,
    requests: Vec<(Vec<Vec<u8>>, Vec<Op>)>,
}

impl Life {
    fn new() -> Life {
        let config = BrokerConfig::default();
        let mut broker = Broker::new(config, NOW_MS, 7);
        let mut life = Life { disk: DiskModel::new(), requests: Vec::new() };
        let settings = QueueSettings {
            max_attempts: Some(2),
            backoff_multiplier: Some(1.5),
            backoff_jitter: Some(0.0),
            dead_retention_ms: Some(86_400_000),
            ..QueueSettings::default()
        };
        life.request(&mut broker, &[], |broker, _, ops| {
            broker.configure(NOW_MS, "emails", settings, ops);
        });
        let json = content(&[("kind", "welcome")], BodyKind::Json, br#"{"to":"a@example.com"}"#);
        let bytes = content(&[], BodyKind::Bytes, &[0, 255]);
        let key = IdempotencyKey { key: "order-42".into(), request_hash: 7 };
        life.request(&mut broker, &[json.clone(), bytes, json.clone()], |broker, contents, ops| {
            let deliveries = [
                Delivery::Now,
                Delivery::After { delay_ms: 5000 },
                Delivery::At { deliver_at_ms: 1 },
            ];
            let messages = (contents.iter().zip(deliveries))
                .map(|(content, delivery)| NewMessage {
                    content: *content,
                    priority: -3,
                    attempt_count_max: None,
                    delivery,
                })
                .collect();
            broker.enqueue(NOW_MS, "emails", messages, Some(key), ops).expect("accepted");
        });
        let mut grants = Vec::new();
        life.request(&mut broker, &[], |broker, _, ops| {
            grants = broker.lease(NOW_MS + 1, "emails", 10, Some(30_000), ops);
        });
        let tokens: Vec<_> = grants.iter().map(|grant| Some(grant.token)).collect();
        life.request(&mut broker, &[], |broker, _, ops| {
            let items = [ExtendItem { token: tokens[0], lease_ms: Some(60_000) }];
            broker.extend(NOW_MS + 2, "emails", &items, ops);
        });
        life.request(&mut broker, &[], |broker, _, ops| {
            broker.ack(NOW_MS + 3, "emails", &tokens[..1], ops);
        });
        life.request(&mut broker, &[], |broker, _, ops| {
            let nack =
                |token, dead| NackItem { token, error: "SMTP 451".into(), delay_ms: None, dead };
            broker.nack(NOW_MS + 4, "emails", vec![nack(tokens[1], false)], ops);
        });
        life.request(&mut broker, &[], |broker, _, ops| broker.expire_due(NOW_MS + 10_000, ops));
        life.request(&mut broker, &[], |broker, _, ops| {
            broker.set_paused(NOW_MS + 10_001, "emails", true, ops);
        });
        life.request(&mut broker, &[], |broker, _, ops| {
            broker.set_paused(NOW_MS + 10_002, "emails", false, ops);
        });
        life.request(&mut broker, &[], |broker, _, ops| {
            let grants = broker.lease(NOW_MS + 10_003, "emails", 10, None, ops);
            let items = grants
                .iter()
                .map(|grant| NackItem {
                    token: Some(grant.token),
                    error: "gave up".into(),
                    delay_ms: None,
                    dead: true,
                })
                .collect();
            broker.nack(NOW_MS + 10_003, "emails", items, ops);
        });
        let dead = grants[1].id;
        life.request(&mut broker, &[], |broker, _, ops| {
            broker.retry(NOW_MS + 10_004, dead, None, true, ops).expect("dead");
        });
        life.request(&mut broker, &[], |broker, _, ops| {
            broker.reschedule(NOW_MS + 10_005, dead, None, NOW_MS + 20_000, ops).expect("ready");
        });
        let edited = content(&[("kind", "edited")], BodyKind::Json, b"[1,2.5,null]");
        life.request(&mut broker, &[edited], |broker, contents, ops| {
            let fields = EditFields::default().with(EditFields::BODY).with(EditFields::PRIORITY);
            let edit =
                Edit { content: Some(contents[0]), priority: Some(9), deliver_at_ms: None, fields };
            broker.edit(NOW_MS + 10_006, dead, None, edit, ops).expect("scheduled");
        });
        life.request(&mut broker, &[json], |broker, contents, ops| {
            let message = NewMessage {
                content: contents[0],
                priority: 0,
                attempt_count_max: Some(1),
                delivery: Delivery::Now,
            };
            broker.enqueue(NOW_MS + 10_007, "webhooks", vec![message], None, ops).expect("new");
        });
        life.request(&mut broker, &[], |broker, _, ops| {
            broker.delete(NOW_MS + 10_008, grants[0].id, None, ops).expect("delivered");
        });
        life.disk.checkpoint(&mut broker, NOW_MS + 10_009).expect("an in-memory checkpoint");
        life
    }

    /// One request: its contents placed in a frame first, then what the broker decides.
    fn request(
        &mut self,
        broker: &mut Broker,
        contents: &[Vec<u8>],
        run: impl FnOnce(&mut Broker, &[ContentLocation], &mut Vec<Op>),
    ) {
        let locations = self.disk.place(contents);
        let mut ops = Vec::new();
        run(broker, &locations, &mut ops);
        self.disk.log(&ops);
        self.requests.push((contents.to_vec(), ops));
    }

    /// Each request's frame payload, as the first frame of a segment holds it, and a frame that
    /// moves contents (which only the storage thread writes).
    fn frames(&self) -> Vec<Vec<u8>> {
        let (segment, payload_offset) = (0, fuzzing::FIRST_PAYLOAD_OFFSET);
        let mut frames: Vec<Vec<u8>> = (self.requests.iter())
            .map(|(contents, ops)| {
                let contents: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
                fuzzing::encode_frame(segment, payload_offset, &contents, ops)
            })
            .collect();
        let moved = Op::MoveContent {
            items: vec![
                (MessageId(2), ContentLocation::Catalog { len: 31 }),
                (MessageId(3), ContentLocation::Log { segment: 4, offset: 1 << 20, len: 31 }),
            ],
        };
        frames.push(fuzzing::encode_frame(segment, payload_offset, &[], &[moved]));
        frames
    }
}

/// Every record kind the catalog and the log hold, taken from a real broker's life: each both
/// sealed (decodes as is) and without its crc (decodes once the target seals it, which lets the
/// fuzzer mutate fields behind a valid crc).
fn record_seeds() -> Vec<Seed> {
    let life = Life::new();
    let catalog = life.disk.catalog();
    let mut trailed: Vec<(String, Vec<u8>)> = Vec::new();
    let manifest = catalog.manifest().expect("readable").expect("checkpointed");
    trailed.push(("manifest".into(), codec::encode_manifest(&manifest)));
    let many_segments = Manifest {
        terminal_counts: vec![TerminalCounts { dead: 3, delivered: u64::MAX }; 3],
        segments: vec![(
            9,
            SegmentUsage { live_count: 2, live_bytes: 70, id_low: 5, id_high: 900 },
        )],
        ..manifest
    };
    trailed.push(("manifest-segments".into(), codec::encode_manifest(&many_segments)));
    let page = catalog.page(0).expect("readable");
    assert!(page.len() >= 3, "the life's page holds {} records", page.len());
    trailed.push(("page".into(), codec::encode_page(0, &page)));
    trailed.push(("page-one".into(), codec::encode_page(0, &page[..1])));
    catalog
        .for_each_queue(|queue_id, record| {
            trailed.push((format!("queue-{}", queue_id.0), codec::encode_queue(&record)));
        })
        .expect("readable");
    let paused = QueueRecord { name: "webhooks".into(), paused: true, settings: settings() };
    trailed.push(("queue-configured".into(), codec::encode_queue(&paused)));
    for (id, _) in &page {
        if let Some(history) = catalog.history(*id).expect("readable") {
            trailed.push((format!("history-{}", id.0), codec::encode_history(&history)));
        }
    }
    let events = vec![
        history_event(HistoryKind::Nacked, 0),
        history_event(HistoryKind::LeaseExpired, 1),
        history_event(HistoryKind::Retried, 2),
    ];
    trailed.push(("history-three".into(), codec::encode_history(&History { events })));
    catalog
        .for_each_idempotency(0, |_, key, record| {
            trailed.push((format!("idempotency-{key}"), codec::encode_idempotency(&record)));
        })
        .expect("readable");
    let key =
        IdempotencyRecord { request_hash: u64::MAX, first_id: 1, count: 1000, created_at_ms: 5 };
    trailed.push(("idempotency-max".into(), codec::encode_idempotency(&key)));
    let mut seeds = Vec::new();
    for (name, record) in trailed {
        seeds.push((format!("{name}-unsealed"), record[..record.len() - 4].to_vec()));
        seeds.push((name, record));
    }
    let json = content(&[("kind", "welcome"), ("trace", "a1")], BodyKind::Json, b"{\"n\":[1]}");
    let bytes = content(&[], BodyKind::Bytes, &[0, 255]);
    for (name, record) in [("content-json", json), ("content-bytes", bytes)] {
        seeds.push((format!("{name}-unsealed"), record[4..].to_vec()));
        seeds.push((name.to_string(), record));
    }
    for (index, frame) in life.frames().into_iter().enumerate() {
        seeds.push((format!("frame-{index}"), frame));
    }
    seeds
}

fn history_event(kind: HistoryKind, seq: u32) -> HistoryEvent {
    HistoryEvent {
        seq,
        kind,
        at_ms: NOW_MS + 1000,
        attempt: 2,
        leased_at_ms: NOW_MS + 400,
        detail: "SMTP 451 try later".into(),
        dead: kind == HistoryKind::Nacked && seq > 2,
    }
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

/// Every key the life's catalog holds (each kind), and pairs of numbers and names that the
/// target builds keys from to check their order.
fn key_seeds() -> Vec<Seed> {
    let life = Life::new();
    let mut seeds: Vec<Seed> = Vec::new();
    let mut kinds = std::collections::BTreeMap::<u8, usize>::new();
    life.disk
        .catalog()
        .for_each_entry(|key, _| {
            let count = kinds.entry(key[0]).or_default();
            *count += 1;
            if *count <= 2 {
                seeds.push((format!("{}-{count}", key[0] as char), key.to_vec()));
            }
            Ok(())
        })
        .expect("readable");
    for kind in
        [keys::MANIFEST, keys::QUEUE, keys::PAGE, keys::ACTIVE, keys::TERMINAL, keys::HISTORY]
    {
        assert!(kinds.contains_key(&kind), "the life's catalog holds no {} key", kind as char);
    }
    let numbers = |a: u64, b: u64| [a.to_be_bytes(), b.to_be_bytes()].concat();
    seeds.push(("pair-pages".into(), numbers(255, 256)));
    seeds.push(("pair-max".into(), numbers(u64::MAX, 0)));
    seeds.push(("pair-names".into(), [numbers(7, 7), b"order-1order-2".to_vec()].concat()));
    seeds.push(("pair-utf8".into(), [numbers(1 << 40, 3), "clé-é".as_bytes().to_vec()].concat()));
    seeds.push(("expiry".into(), keys::expiry_key(NOW_MS, 3).to_vec()));
    seeds.push((
        "terminal-delivered".into(),
        keys::terminal_key(QueueId(2), MessageState::Delivered, 9).to_vec(),
    ));
    seeds
}

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

/// A segment written by the real `Wal` with the life's frames, and segments in the target's
/// built-frame layouts.
fn wal_seeds() -> Vec<Seed> {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let mut wal = Wal::open(directory.path(), 1 << 20).expect("opening a log");
    for (contents, ops) in Life::new().requests {
        let position = wal.begin_frame();
        let mut writer = FrameWriter::begin(wal.frame_buffer(), 0, position.offset, contents.len());
        for content in &contents {
            writer.content(wal.frame_buffer(), content);
        }
        writer.finish(wal.frame_buffer(), &ops);
        wal.end_frame();
        wal.commit().expect("committing a frame");
    }
    drop(wal);
    let segment =
        std::fs::read(wal::segment_path(directory.path(), 0)).expect("reading the segment");
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

/// Operation bytes for `fuzzing::queue_ops` (see its match on `code % 22`).
mod op {
    pub const ENQUEUE: u8 = 0;
    pub const LEASE: u8 = 4;
    pub const ACK: u8 = 7;
    pub const NACK: u8 = 9;
    pub const EXTEND: u8 = 11;
    pub const ADVANCE: u8 = 12;
    /// Moves the clock without firing timers.
    pub const TICK: u8 = 14;
    /// Its byte: bit 0 checkpoints before the restart, bit 1 after it.
    pub const RESTART: u8 = 15;
    pub const PAUSE: u8 = 16;
    pub const CONFIGURE: u8 = 17;
    pub const SWEEP: u8 = 18;
    /// Its byte: 0 writes at once (or the one in flight), 1 leaves one in flight, 2 fails one.
    pub const CHECKPOINT: u8 = 19;
    /// Delete (even id choice) or retry (odd).
    pub const DELETE_OR_RETRY: u8 = 20;
    /// Reschedule (even id choice) or edit the priority (odd; bit 1 also replaces the content).
    pub const MOVE: u8 = 21;
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

/// Producers and consumers: enqueue, lease, ack, nack, extend, the clock, checkpoints, restarts.
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
            &[ENQUEUE, 4, 0, 0, 2, 1, 3, 2], &[LEASE, 2, 100], &[RESTART, 0], &[ACK, 0, 0],
            &[LEASE, 0, 1], &[ADVANCE, 0x45], &[RESTART, 1], &[LEASE, 6, 100], &[ADVANCE, 0xff],
            &[RESTART, 2],
        ]),
        ("checkpoints", vec![
            &[ENQUEUE, 12, 0, 0, 2, 1, 3, 2], &[CHECKPOINT, 0], &[LEASE, 6, 100],
            &[NACK, 0, 0, 2], &[CHECKPOINT, 0], &[ACK, 0, 1], &[RESTART, 0],
            &[DELETE_OR_RETRY, 1, 0], &[CHECKPOINT, 0],
            &[RESTART, 2], &[LEASE, 6, 100],
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
            &[ADVANCE, 0x45], &[CHECKPOINT, 0], &[SWEEP], &[ADVANCE, 0xcc], &[SWEEP],
            &[CHECKPOINT, 0],
            &[SWEEP], &[RESTART, 3], &[SWEEP],
        ]),
        ("checkpoints-in-flight", vec![
            &[ENQUEUE, 4, 0, 0, 0, 0], &[LEASE, 2, 100], &[NACK, 0, 0, 1], &[CHECKPOINT, 1],
            &[ACK, 0, 1], &[DELETE_OR_RETRY, 0, 0], &[CHECKPOINT, 2], &[CHECKPOINT, 0],
            &[CHECKPOINT, 1], &[ENQUEUE, 0, 0, 0], &[RESTART, 0], &[CHECKPOINT, 1],
            &[LEASE, 0, 100], &[CHECKPOINT, 0], &[RESTART, 2],
        ]),
        ("dead-from-the-catalog", vec![
            &[ENQUEUE, 0, 0, 4], &[LEASE, 0, 10], &[NACK, 0, 0, 2], &[CHECKPOINT, 0],
            &[MOVE, 3, 7], &[CHECKPOINT, 0], &[DELETE_OR_RETRY, 1, 1], &[RESTART, 0],
            &[LEASE, 0, 10], &[ACK, 0, 1], &[CHECKPOINT, 0], &[DELETE_OR_RETRY, 0, 0],
            &[RESTART, 1],
        ]),
    ]
}
