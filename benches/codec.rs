//! Measures the record codec, the CPU paid on every write and read of a message: encoding and
//! decoding one scheduling record (meta), one content record with a 256-byte body, and one WAL
//! frame of 100 changes (the PutMeta + PutContent pairs of a 50-message enqueue).
//!
//! Method: the records come from a real broker enqueue (so they have the shape the server writes,
//! whatever fields `MessageMeta` gains); criterion times each operation in a loop, and reports
//! time per operation (and per change for the frame).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use outboxd::queue::{
    BodyKind, Broker, BrokerConfig, Change, Delivery, MessageContent, NewMessage,
};
use outboxd::store::codec;
use std::time::Duration;

/// Body size of the content record, the bench tool's default message size.
const BODY_BYTES: usize = 256;
/// Messages in the frame; each contributes a PutMeta and a PutContent.
const FRAME_MESSAGE_COUNT: usize = 50;
const NOW_MS: u64 = 1_700_000_000_000;

fn content() -> MessageContent {
    MessageContent { headers: Vec::new(), body_kind: BodyKind::Json, body: vec![b'x'; BODY_BYTES] }
}

/// The PutMeta and PutContent changes of one enqueue of `count` messages.
fn enqueue_changes(count: usize) -> Vec<Change> {
    let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
    let message = NewMessage {
        content_record: codec::encode_content(&content()),
        priority: 0,
        attempt_count_max: None,
        delivery: Delivery::Now,
    };
    let mut changes = Vec::new();
    broker
        .enqueue(NOW_MS, "bench", vec![message; count], None, &mut changes)
        .expect("a fresh broker accepts the batch");
    changes.retain(|change| matches!(change, Change::PutMeta { .. } | Change::PutContent { .. }));
    assert_eq!(changes.len(), 2 * count, "one PutMeta and one PutContent per message");
    changes
}

fn records(c: &mut Criterion) {
    let changes = enqueue_changes(FRAME_MESSAGE_COUNT);
    let meta = changes
        .iter()
        .find_map(|change| match change {
            Change::PutMeta { meta, .. } => Some(meta.clone()),
            _ => None,
        })
        .expect("the enqueue wrote a meta");
    let meta_bytes = codec::encode_meta(&meta);
    let content = content();
    let content_bytes = codec::encode_content(&content);

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_meta", |b| b.iter(|| codec::encode_meta(black_box(&meta))));
    group.bench_function("decode_meta", |b| {
        b.iter(|| codec::decode_meta(black_box(&meta_bytes)).expect("valid"))
    });
    group.bench_function("encode_content_256B", |b| {
        b.iter(|| codec::encode_content(black_box(&content)))
    });
    group.bench_function("decode_content_256B", |b| {
        b.iter(|| codec::decode_content(black_box(&content_bytes)).expect("valid"))
    });

    let mut frame = Vec::new();
    codec::encode_changes_into(&changes, &mut frame);
    group.throughput(Throughput::Elements(changes.len() as u64));
    group.bench_function("encode_changes_into_100", |b| {
        let mut out = Vec::with_capacity(frame.len());
        b.iter(|| {
            out.clear();
            codec::encode_changes_into(black_box(&changes), &mut out);
            out.len()
        })
    });
    group.bench_function("decode_changes_100", |b| {
        b.iter(|| codec::decode_changes(black_box(&frame)).expect("valid"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = records
}
criterion_main!(benches);
