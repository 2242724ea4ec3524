//! Measures `Store::apply`, the sled write that follows every WAL sync: the PutMeta and PutContent
//! changes of one 100-message enqueue (200 changes, 256-byte bodies) applied to a store on disk.
//!
//! Method: the changes come from a real broker enqueue; each iteration renumbers them to fresh ids
//! (untimed, `iter_batched`) so that every apply inserts new keys into a growing tree, as the
//! server does. The store lives under `OUTBOXD_BENCH_DIR`, or cargo's target tmp dir. `apply` does
//! not flush; sled's background flusher runs as in the server, so its cost shows up as noise.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use outboxd::queue::{
    BodyKind, Broker, BrokerConfig, Change, Delivery, MessageContent, MessageId, NewMessage,
};
use outboxd::store::{codec, Store};
use std::path::PathBuf;
use std::time::Duration;

const NOW_MS: u64 = 1_700_000_000_000;
const MESSAGE_COUNT: usize = 100;
const BODY_BYTES: usize = 256;

/// Where the store lives: `OUTBOXD_BENCH_DIR` if set, else cargo's per-target temp dir.
fn bench_parent_dir() -> PathBuf {
    std::env::var_os("OUTBOXD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// The PutMeta and PutContent changes of one enqueue of `MESSAGE_COUNT` messages.
fn enqueue_changes() -> Vec<Change> {
    let content = MessageContent {
        headers: Vec::new(),
        body_kind: BodyKind::Json,
        body: vec![b'x'; BODY_BYTES],
    };
    let message = NewMessage {
        content_record: codec::encode_content(&content),
        priority: 0,
        attempt_count_max: None,
        delivery: Delivery::Now,
    };
    let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
    let mut changes = Vec::new();
    broker
        .enqueue(NOW_MS, "bench", vec![message; MESSAGE_COUNT], None, &mut changes)
        .expect("a fresh broker accepts the batch");
    changes.retain(|change| matches!(change, Change::PutMeta { .. } | Change::PutContent { .. }));
    assert_eq!(changes.len(), 2 * MESSAGE_COUNT);
    changes
}

/// `template` with every message id moved up by `offset`.
fn renumbered(template: &[Change], offset: u64) -> Vec<Change> {
    let mut changes = template.to_vec();
    for change in &mut changes {
        match change {
            Change::PutMeta { id, .. } | Change::PutContent { id, .. } => {
                *id = MessageId(id.0 + offset)
            }
            _ => unreachable!("only PutMeta and PutContent were kept"),
        }
    }
    changes
}

fn apply(c: &mut Criterion) {
    let parent = bench_parent_dir();
    std::fs::create_dir_all(&parent).expect("bench dir");
    let dir = tempfile::Builder::new().prefix("sled-bench-").tempdir_in(&parent).expect("temp dir");
    let store = Store::open(dir.path()).expect("open store");
    let template = enqueue_changes();
    let mut offset = 0;
    let mut group = c.benchmark_group("sled");
    group.throughput(Throughput::Elements(MESSAGE_COUNT as u64));
    group.bench_function("apply_100_put_meta_put_content", |b| {
        b.iter_batched(
            || {
                offset += MESSAGE_COUNT as u64;
                renumbered(&template, offset)
            },
            |changes| store.apply(&changes).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = apply
}
criterion_main!(benches);
