//! Measures the timer wheel that drives scheduled delivery, retries and lease expiry: inserting
//! 1M timers, expiring 1M timers in one jump of time, and the steady state of a wheel holding 1M
//! timers where each millisecond inserts 33 leases of 30 s and fires the 33 that fall due.
//!
//! Method: deadlines come from a fixed-seed generator; the 1M-timer wheels are built outside the
//! timed section (criterion `iter_batched`), so each figure is the operation alone. Throughput is
//! reported per timer.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use outboxd::timer::TimerWheel;
use std::time::Duration;

const NOW_MS: u64 = 1_700_000_000_000;
const TIMER_COUNT: u64 = 1_000_000;
/// The spread of deadlines: the default 30 s lease.
const SPREAD_MS: u64 = 30_000;
/// Timers inserted (and fired) per millisecond in the steady state: 1M over 30 s.
const STEADY_PER_MS: u64 = TIMER_COUNT / SPREAD_MS;

/// A fixed-seed SplitMix64, so that every run inserts the same deadlines.
struct Deadlines(u64);

impl Deadlines {
    /// A deadline in (`now_ms`, `now_ms + SPREAD_MS`].
    fn next_after(&mut self, now_ms: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        now_ms + 1 + (z ^ (z >> 31)) % SPREAD_MS
    }
}

fn deadlines(count: u64) -> Vec<u64> {
    let mut generator = Deadlines(7);
    (0..count).map(|_| generator.next_after(NOW_MS)).collect()
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
