//! Measures the codec, the CPU paid on every write and read of a message: one content with a
//! 256-byte body (written once into the log, read back by every lease), the log frame of one
//! 100-message enqueue (its contents and its op), the frames of a 100-id lease and of a 100-id ack
//! (the ops a consumer's round trip logs), and a catalog page of 256 records (what a checkpoint
//! writes per changed page, and a reader decodes for a message the broker does not hold).
//!
//! Method: the ops and records come from a real broker (so they have the shape the server
//! writes, whatever fields the formats gain); criterion times each operation in a loop and
//! reports time per operation and per message or record.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use outboxd::queue::{
    BodyKind, Broker, BrokerConfig, ContentLocation, Delivery, MessageId, MessageMeta, NewMessage,
    Op, PAGE_ID_COUNT,
};
use outboxd::store::codec::{self, ContentRef, FrameWriter};
use std::time::Duration;

/// Body size of a content, the bench tool's default message size.
const BODY_BYTES: usize = 256;
/// Messages in the enqueue frame, and ids in the lease and ack frames.
const BATCH_COUNT: usize = 100;
const NOW_MS: u64 = 1_700_000_000_000;
/// The catalog page the page bench encodes.
const PAGE: u64 = 1;
/// Where a segment's first frame payload starts (segment header, then frame header).
const PAYLOAD_OFFSET: u64 = 24;

fn content() -> Vec<u8> {
    let body = vec![b'x'; BODY_BYTES];
    codec::encode_content(&ContentRef { headers: &[], body_kind: BodyKind::Json, body: &body })
}

/// A frame payload: the contents, then the ops.
fn encode_frame(contents: &[Vec<u8>], ops: &[Op], out: &mut Vec<u8>) {
    let mut writer = FrameWriter::begin(out, 0, PAYLOAD_OFFSET, contents.len());
    for content in contents {
        writer.content(out, content);
    }
    writer.finish(out, ops);
}

/// The ops of a real broker's enqueue of `count` messages (into a queue that exists), and of
/// the lease and the ack of all of them.
fn batch_ops(count: usize) -> (Vec<Op>, Vec<Op>, Vec<Op>) {
    let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
    let message = |index: usize| NewMessage {
        content: ContentLocation::Log { segment: 0, offset: (index * 300) as u32, len: 262 },
        priority: 0,
        attempt_count_max: None,
        delivery: Delivery::Now,
    };
    let mut ops = Vec::new();
    broker.enqueue(NOW_MS, "bench", vec![message(0)], None, &mut ops).expect("accepted");
    let mut enqueue = Vec::new();
    let messages = (1..=count).map(message).collect();
    broker.enqueue(NOW_MS, "bench", messages, None, &mut enqueue).expect("accepted");
    let mut lease = Vec::new();
    let grants = broker.lease(NOW_MS, "bench", count as u32 + 1, None, &mut lease);
    let tokens: Vec<_> = grants.iter().skip(1).map(|grant| Some(grant.token)).collect();
    let mut ack = Vec::new();
    broker.ack(NOW_MS + 5, "bench", &tokens, &mut ack);
    assert!(matches!(&enqueue[..], [Op::Enqueue { messages, .. }] if messages.len() == count));
    assert!(matches!(&ack[..], [Op::Ack { ids, .. }] if ids.len() == count));
    (enqueue, lease, ack)
}

/// A full catalog page as a checkpoint writes it (page 1: ids 256 to 511), from a real broker:
/// 256 records, most delivered, a few leased.
fn page_records() -> Vec<(MessageId, MessageMeta)> {
    let count = 2 * PAGE_ID_COUNT - 1;
    let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
    let messages = (0..count)
        .map(|index| NewMessage {
            content: ContentLocation::Log { segment: 3, offset: (index * 300) as u32, len: 262 },
            priority: (index % 3) as i32,
            attempt_count_max: None,
            delivery: Delivery::Now,
        })
        .collect();
    let mut ops = Vec::new();
    broker.enqueue(NOW_MS, "bench", messages, None, &mut ops).expect("accepted");
    let grants = broker.lease(NOW_MS + 1, "bench", count as u32, None, &mut ops);
    let tokens: Vec<_> = grants.iter().skip(16).map(|grant| Some(grant.token)).collect();
    broker.ack(NOW_MS + 2, "bench", &tokens, &mut ops);
    let snapshot = broker.snapshot();
    let page = snapshot.pages.iter().find(|page| page.page == PAGE).expect("page 1 changed");
    let records: Vec<(MessageId, MessageMeta)> = (page.records.iter())
        .map(|(id, meta)| (*id, meta.clone().expect("no message was removed")))
        .collect();
    assert_eq!(records.len(), PAGE_ID_COUNT);
    records
}

fn contents(c: &mut Criterion) {
    let bytes = content();
    let body = vec![b'x'; BODY_BYTES];
    let parts = ContentRef { headers: &[], body_kind: BodyKind::Json, body: &body };
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_content_256B", |b| {
        b.iter(|| codec::encode_content(black_box(&parts)))
    });
    group.bench_function("decode_content_256B", |b| {
        b.iter(|| codec::decode_content(black_box(&bytes)).expect("valid").body.len())
    });
    group.finish();
}

/// A frame bench: its name, the contents the frame carries, the ops.
type FrameCase<'a> = (&'a str, &'a [Vec<u8>], &'a [Op]);

fn frames(c: &mut Criterion) {
    let (enqueue, lease, ack) = batch_ops(BATCH_COUNT);
    let bodies = vec![content(); BATCH_COUNT];
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(BATCH_COUNT as u64));
    let cases: [FrameCase; 3] =
        [("enqueue_100", &bodies, &enqueue), ("lease_100", &[], &lease), ("ack_100", &[], &ack)];
    for (name, contents, ops) in cases {
        let mut frame = Vec::new();
        encode_frame(contents, ops, &mut frame);
        group.bench_function(format!("encode_frame_{name}"), |b| {
            let mut out = Vec::with_capacity(frame.len());
            b.iter(|| {
                out.clear();
                encode_frame(black_box(contents), black_box(ops), &mut out);
                out.len()
            })
        });
        group.bench_function(format!("decode_frame_{name}"), |b| {
            b.iter(|| codec::decode_frame(black_box(&frame), 0, PAYLOAD_OFFSET).expect("valid"))
        });
    }
    group.finish();
}

fn pages(c: &mut Criterion) {
    let records = page_records();
    let bytes = codec::encode_page(PAGE, &records);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("encode_page_256", |b| {
        b.iter(|| codec::encode_page(PAGE, black_box(&records)))
    });
    group.bench_function("decode_page_256", |b| {
        b.iter(|| codec::decode_page(PAGE, black_box(&bytes)).expect("valid"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = contents, frames, pages
}
criterion_main!(benches);
