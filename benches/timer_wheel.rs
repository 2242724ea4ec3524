//! Measures the timer wheel that drives scheduled delivery, retries and lease expiry: inserting
//! 1M timers, expiring 1M timers in one jump of time, the steady state of a wheel holding 1M
//! timers where each millisecond inserts 33 leases of 30 s and fires the 33 that fall due, and the
//! steady state of 1M leases that are all acked before their deadline, where each millisecond
//! inserts 33 leases and cancels the 33 oldest (an ack cancels its lease's timer).
//!
//! Method: deadlines come from a fixed-seed SplitMix64; the 1M-timer wheels are built outside the
//! timed section (criterion `iter_batched`, or before the steady states start), so each figure is
//! the operation alone. Throughput is reported per timer.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use outboxd::random::SplitMix64;
use outboxd::timer::{TimerHandle, TimerWheel};
use std::collections::VecDeque;
use std::time::Duration;

const NOW_MS: u64 = 1_700_000_000_000;
const TIMER_COUNT: u64 = 1_000_000;
/// The spread of deadlines: the default 30 s lease.
const SPREAD_MS: u64 = 30_000;
/// Timers inserted (and fired) per millisecond in the steady state: 1M over 30 s.
const STEADY_PER_MS: u64 = TIMER_COUNT / SPREAD_MS;

/// `count` deadlines in (`NOW_MS`, `NOW_MS + SPREAD_MS`], the same in every run.
fn deadlines(count: u64) -> Vec<u64> {
    let mut generator = SplitMix64(7);
    (0..count).map(|_| NOW_MS + 1 + generator.below(SPREAD_MS)).collect()
}

fn filled_wheel(deadlines: &[u64]) -> TimerWheel {
    let mut wheel = TimerWheel::new(NOW_MS);
    for (key, deadline_ms) in deadlines.iter().enumerate() {
        wheel.insert(*deadline_ms, key as u64);
    }
    wheel
}

fn wheel(c: &mut Criterion) {
    let deadlines = deadlines(TIMER_COUNT);
    let mut group = c.benchmark_group("timer_wheel");
    group.throughput(Throughput::Elements(TIMER_COUNT));
    group.bench_function("insert_1M", |b| {
        b.iter_batched(
            || TimerWheel::new(NOW_MS),
            |mut wheel| {
                for (key, deadline_ms) in deadlines.iter().enumerate() {
                    wheel.insert(*deadline_ms, key as u64);
                }
                wheel
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("expire_1M", |b| {
        b.iter_batched(
            || (filled_wheel(&deadlines), Vec::with_capacity(TIMER_COUNT as usize)),
            |(mut wheel, mut fired)| {
                wheel.expire(NOW_MS + SPREAD_MS + 1, &mut fired);
                assert_eq!(fired.len() as u64, TIMER_COUNT);
                (wheel, fired)
            },
            BatchSize::PerIteration,
        )
    });

    // One iteration is one millisecond of a busy server: STEADY_PER_MS new 30 s leases, and the
    // ones that fall due. The initial 1M deadlines are spread over the same 30 s, so the wheel
    // holds about 1M timers throughout.
    group.throughput(Throughput::Elements(STEADY_PER_MS));
    group.bench_function("insert_expire_steady_1M", |b| {
        let mut wheel = filled_wheel(&deadlines);
        let mut fired = Vec::new();
        let mut now_ms = NOW_MS;
        let mut key = TIMER_COUNT;
        b.iter(|| {
            now_ms += 1;
            for _ in 0..STEADY_PER_MS {
                wheel.insert(now_ms + SPREAD_MS, key);
                key += 1;
            }
            fired.clear();
            wheel.expire(now_ms, &mut fired);
            black_box(fired.len())
        })
    });

    // One iteration is one millisecond of a busy server whose consumers ack every lease: 33 new
    // 60 s leases, and the 33 oldest of the 1M held cancelled by their acks, 30 s into their
    // lease. Nothing ever fires; the wheel holds 1M timers throughout.
    group.bench_function("insert_cancel_steady_1M", |b| {
        const LEASE_MS: u64 = 2 * SPREAD_MS;
        let mut wheel = TimerWheel::new(NOW_MS);
        let mut held: VecDeque<TimerHandle> = (0..TIMER_COUNT)
            .map(|key| {
                let leased_at_ms = NOW_MS - SPREAD_MS + key * SPREAD_MS / TIMER_COUNT;
                wheel.insert(leased_at_ms + LEASE_MS, key)
            })
            .collect();
        let mut fired = Vec::new();
        let mut now_ms = NOW_MS;
        let mut key = TIMER_COUNT;
        b.iter(|| {
            now_ms += 1;
            for _ in 0..STEADY_PER_MS {
                held.push_back(wheel.insert(now_ms + LEASE_MS, key));
                key += 1;
                let oldest = held.pop_front().expect("1M leases are held");
                assert!(wheel.cancel(oldest), "a held lease's timer fired");
            }
            wheel.expire(now_ms, &mut fired);
            black_box(fired.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = wheel
}
criterion_main!(benches);
