//! Measures the broker, the in-memory core the storage thread runs for every request: an enqueue
//! of 100 messages, and a lease of 100 followed by the ack of those 100 on a queue holding 100k
//! ready messages.
//!
//! Method: a broker with the server's default settings and fixed `now_ms`-style virtual time.
//! `iter_custom` times only the operation: the enqueue bench starts a fresh broker every
//! `ENQUEUE_RESET_EVERY` batches (untimed) so memory stays bounded; the lease + ack bench refills
//! the queue with 100 messages after each iteration (untimed), so it always holds 100k ready ones,
//! and advances time 1 ms per iteration, firing the (stale) lease timers as the server would.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use outboxd::queue::{BodyKind, Broker, BrokerConfig, Delivery, MessageContent, NewMessage};
use outboxd::store::codec;
use std::time::{Duration, Instant};

const NOW_MS: u64 = 1_700_000_000_000;
const BATCH_COUNT: usize = 100;
const READY_COUNT: usize = 100_000;
const BODY_BYTES: usize = 256;
/// Batches enqueued into one broker before the enqueue bench starts a fresh one (100k messages).
const ENQUEUE_RESET_EVERY: u64 = 1000;
const QUEUE: &str = "bench";

fn batch() -> Vec<NewMessage> {
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
    vec![message; BATCH_COUNT]
}

fn enqueue(c: &mut Criterion) {
    let template = batch();
    let mut group = c.benchmark_group("broker");
    group.throughput(Throughput::Elements(BATCH_COUNT as u64));
    group.bench_function("enqueue_100", |b| {
        b.iter_custom(|iterations| {
            let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
            let mut changes = Vec::new();
            let mut timed = Duration::ZERO;
            for iteration in 0..iterations {
                if iteration % ENQUEUE_RESET_EVERY == ENQUEUE_RESET_EVERY - 1 {
                    broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
                }
                let messages = template.clone();
                changes.clear();
                let started = Instant::now();
                let outcome = broker.enqueue(NOW_MS, QUEUE, messages, None, &mut changes);
                timed += started.elapsed();
                black_box(outcome).expect("accepted");
            }
            timed
        })
    });
    group.finish();
}

fn lease_ack(c: &mut Criterion) {
    let template = batch();
    let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
    let mut changes = Vec::new();
    for _ in 0..READY_COUNT / BATCH_COUNT {
        broker.enqueue(NOW_MS, QUEUE, template.clone(), None, &mut changes).expect("accepted");
    }
    let mut now_ms = NOW_MS;
    let mut group = c.benchmark_group("broker");
    group.throughput(Throughput::Elements(BATCH_COUNT as u64));
    group.bench_function("lease_100_ack_100_of_100k_ready", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                now_ms += 1;
                changes.clear();
                let started = Instant::now();
                let grants = broker.lease(now_ms, QUEUE, BATCH_COUNT as u32, None, &mut changes);
                let tokens: Vec<_> = grants.iter().map(|grant| Some(grant.token)).collect();
                let outcomes = broker.ack(now_ms, QUEUE, &tokens, &mut changes);
                timed += started.elapsed();
                assert_eq!(outcomes.len(), BATCH_COUNT, "the queue never runs dry");
                changes.clear();
                broker.expire_due(now_ms, &mut changes);
                broker
                    .enqueue(now_ms, QUEUE, template.clone(), None, &mut changes)
                    .expect("accepted");
            }
            timed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = enqueue, lease_ack
}
criterion_main!(benches);
