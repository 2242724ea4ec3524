//! Measures the broker, the in-memory core the storage thread runs for every request: an enqueue
//! of 100 messages, a lease of 100 and an ack of 100 on a queue holding 100k ready messages, and
//! a mixed steady state where each iteration enqueues, leases and acks 100 messages and the
//! broker hands its changes to a checkpoint every 200k changed records, as the server does.
//!
//! Method: a broker with the server's default settings, driven as the storage thread drives it
//! (each request's ops go into a `Vec<Op>`; the log frame itself is the codec bench's), with
//! virtual time. `iter_custom` times only the operation under test: the enqueue bench starts a
//! fresh broker every `ENQUEUE_RESET_EVERY` batches (untimed) so memory stays bounded; the lease
//! and ack benches refill the queue with 100 messages after each iteration (untimed), so it always
//! holds 100k ready ones, and move time 1 ms per iteration, firing timers as the server would.
//! Throughput is per message.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use outboxd::limits::CHECKPOINT_DIRTY_COUNT;
use outboxd::queue::{Broker, BrokerConfig, ContentLocation, Delivery, LeaseToken, NewMessage};
use std::time::{Duration, Instant};

const NOW_MS: u64 = 1_700_000_000_000;
const BATCH_COUNT: usize = 100;
const READY_COUNT: usize = 100_000;
/// The log location of each content: a 256-byte body and its framing.
const CONTENT_BYTES: u32 = 262;
/// Batches enqueued into one broker before the enqueue bench starts a fresh one (100k messages).
const ENQUEUE_RESET_EVERY: u64 = 1000;
const QUEUE: &str = "bench";

/// A batch of new messages whose contents sit one after the other in a log segment.
fn batch(first_offset: u32) -> Vec<NewMessage> {
    (0..BATCH_COUNT as u32)
        .map(|index| NewMessage {
            content: ContentLocation::Log {
                segment: 0,
                offset: first_offset + index * CONTENT_BYTES,
                len: CONTENT_BYTES,
            },
            priority: 0,
            attempt_count_max: None,
            delivery: Delivery::Now,
        })
        .collect()
}

/// A broker holding `READY_COUNT` ready messages, checkpointed (nothing left to write).
fn filled_broker() -> Broker {
    let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
    let mut ops = Vec::new();
    for _ in 0..READY_COUNT / BATCH_COUNT {
        broker.enqueue(NOW_MS, QUEUE, batch(0), None, &mut ops).expect("accepted");
    }
    checkpoint(&mut broker);
    broker
}

/// What the storage thread and the checkpoint writer do with the broker at a checkpoint.
fn checkpoint(broker: &mut Broker) {
    let snapshot = broker.snapshot();
    broker.checkpoint_durable(black_box(snapshot).epoch);
}

fn enqueue(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker");
    group.throughput(Throughput::Elements(BATCH_COUNT as u64));
    group.bench_function("enqueue_100", |b| {
        b.iter_custom(|iterations| {
            let mut broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
            let mut ops = Vec::new();
            let mut timed = Duration::ZERO;
            for iteration in 0..iterations {
                if iteration % ENQUEUE_RESET_EVERY == ENQUEUE_RESET_EVERY - 1 {
                    broker = Broker::new(BrokerConfig::default(), NOW_MS, 1);
                }
                let messages = batch(0);
                ops.clear();
                let started = Instant::now();
                let outcome = broker.enqueue(NOW_MS, QUEUE, messages, None, &mut ops);
                timed += started.elapsed();
                black_box(outcome).expect("accepted");
            }
            timed
        })
    });
    group.finish();
}

/// Which part of a consumer's round trip a bench times.
#[derive(Clone, Copy)]
enum Timed {
    Lease,
    Ack,
}

/// Leases 100 and acks them, timing one of the two; then refills and fires timers (untimed).
fn round_trip(broker: &mut Broker, now_ms: &mut u64, timed: Timed) -> Duration {
    let mut ops = Vec::new();
    *now_ms += 1;
    let started = Instant::now();
    let grants = broker.lease(*now_ms, QUEUE, BATCH_COUNT as u32, None, &mut ops);
    let lease_elapsed = started.elapsed();
    let tokens: Vec<Option<LeaseToken>> = grants.iter().map(|grant| Some(grant.token)).collect();
    let started = Instant::now();
    let outcomes = broker.ack(*now_ms, QUEUE, &tokens, &mut ops);
    let ack_elapsed = started.elapsed();
    assert_eq!(outcomes.len(), BATCH_COUNT, "the queue never runs dry");
    broker.expire_due(*now_ms, &mut ops);
    broker.enqueue(*now_ms, QUEUE, batch(0), None, &mut ops).expect("accepted");
    if broker.dirty_count() >= CHECKPOINT_DIRTY_COUNT {
        checkpoint(broker);
    }
    match timed {
        Timed::Lease => lease_elapsed,
        Timed::Ack => ack_elapsed,
    }
}

fn lease_ack(c: &mut Criterion) {
    let mut broker = filled_broker();
    let mut now_ms = NOW_MS;
    let mut group = c.benchmark_group("broker");
    group.throughput(Throughput::Elements(BATCH_COUNT as u64));
    for (name, timed) in
        [("lease_100_of_100k_ready", Timed::Lease), ("ack_100_of_100k_ready", Timed::Ack)]
    {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                (0..iterations).map(|_| round_trip(&mut broker, &mut now_ms, timed)).sum()
            })
        });
    }
    group.finish();
}

/// One iteration: 100 messages enqueued, leased and acked, timers fired, and a checkpoint's
/// snapshot whenever 200k records changed (so delivered messages leave memory as they do in the
/// server).
fn mixed(c: &mut Criterion) {
    let mut broker = filled_broker();
    let mut now_ms = NOW_MS;
    let mut offset = 0u32;
    let mut ops = Vec::new();
    let mut group = c.benchmark_group("broker");
    group.throughput(Throughput::Elements(BATCH_COUNT as u64));
    group.bench_function("mixed_enqueue_lease_ack_100", |b| {
        b.iter(|| {
            now_ms += 1;
            offset = offset.wrapping_add(BATCH_COUNT as u32 * CONTENT_BYTES) % (1 << 30);
            ops.clear();
            broker.expire_due(now_ms, &mut ops);
            broker.enqueue(now_ms, QUEUE, batch(offset), None, &mut ops).expect("accepted");
            let grants = broker.lease(now_ms, QUEUE, BATCH_COUNT as u32, None, &mut ops);
            let tokens: Vec<Option<LeaseToken>> =
                grants.iter().map(|grant| Some(grant.token)).collect();
            let outcomes = broker.ack(now_ms, QUEUE, &tokens, &mut ops);
            if broker.dirty_count() >= CHECKPOINT_DIRTY_COUNT {
                checkpoint(&mut broker);
            }
            black_box(outcomes.len())
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
    targets = enqueue, lease_ack, mixed
}
criterion_main!(benches);
