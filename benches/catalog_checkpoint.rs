//! Measures a checkpoint, the catalog write that replaced the per-request sled write: the
//! checkpoint of 100k messages just enqueued (100k new ready records in 391 pages, their `a` index
//! entries, the manifest), and the checkpoint of the same 100k messages once delivered (the same
//! pages rewritten, their `t` index entries and retention notes), each written as one sled batch,
//! flushed and fsynced.
//!
//! Method: a real broker (server defaults) and `Catalog::open` on a directory under
//! `OUTBOXD_BENCH_DIR`, or cargo's target tmp dir (a real disk, unlike a tmpfs `/tmp`).
//! `iter_custom` times only `Catalog::write_checkpoint`: each iteration first enqueues 100k new
//! messages (and, for the delivered case, checkpoints them, then leases and acks them all) and
//! takes the broker's snapshot, untimed. The catalog grows by 100k messages per iteration, as a
//! server's does. Throughput is per record.

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use outboxd::queue::{Broker, BrokerConfig, ContentLocation, Delivery, LeaseToken, NewMessage};
use outboxd::store::catalog::{Catalog, CheckpointJob};
use outboxd::store::wal::WalPosition;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NOW_MS: u64 = 1_700_000_000_000;
const MESSAGE_COUNT: usize = 100_000;
const BATCH_COUNT: usize = 1000;
const QUEUE: &str = "bench";

/// Where the catalog lives: `OUTBOXD_BENCH_DIR` if set, else cargo's per-target temp dir.
fn bench_parent_dir() -> PathBuf {
    std::env::var_os("OUTBOXD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// A broker and the catalog it checkpoints into, with the log position and clock moving on.
struct Server {
    broker: Broker,
    catalog: Catalog,
    now_ms: u64,
    position: WalPosition,
    /// Contents lie one after the other in segment 0 (their bytes are not needed here).
    next_offset: u32,
}

impl Server {
    fn new(dir: &std::path::Path) -> Server {
        Server {
            broker: Broker::new(BrokerConfig::default(), NOW_MS, 1),
            catalog: Catalog::open(dir).expect("open the catalog"),
            now_ms: NOW_MS,
            position: WalPosition::new(0, 16),
            next_offset: 16,
        }
    }

    /// Enqueues 100k messages of 262-byte contents in batches of 1000.
    fn enqueue(&mut self) {
        let mut ops = Vec::new();
        for _ in 0..MESSAGE_COUNT / BATCH_COUNT {
            let messages = (0..BATCH_COUNT)
                .map(|_| {
                    let offset = self.next_offset;
                    self.next_offset = self.next_offset.wrapping_add(300) % (1 << 30);
                    NewMessage {
                        content: ContentLocation::Log { segment: 0, offset, len: 262 },
                        priority: 0,
                        attempt_count_max: None,
                        delivery: Delivery::Now,
                    }
                })
                .collect();
            ops.clear();
            self.broker.enqueue(self.now_ms, QUEUE, messages, None, &mut ops).expect("accepted");
        }
        self.now_ms += 1;
    }

    /// Leases and acks every ready message.
    fn deliver(&mut self) {
        let mut ops = Vec::new();
        loop {
            ops.clear();
            let grants = self.broker.lease(self.now_ms, QUEUE, BATCH_COUNT as u32, None, &mut ops);
            if grants.is_empty() {
                break;
            }
            let tokens: Vec<Option<LeaseToken>> =
                grants.iter().map(|grant| Some(grant.token)).collect();
            self.broker.ack(self.now_ms, QUEUE, &tokens, &mut ops);
        }
        self.now_ms += 1;
    }

    /// The job the storage thread would hand the checkpoint writer now.
    fn job(&mut self) -> CheckpointJob {
        self.position.offset += 1;
        CheckpointJob {
            snapshot: self.broker.snapshot(),
            position: self.position,
            now_ms: self.now_ms,
            ..CheckpointJob::default()
        }
    }

    /// Writes a checkpoint; returns how long the catalog write took and how many records it held.
    fn checkpoint(&mut self) -> (Duration, u64) {
        let job = self.job();
        let started = Instant::now();
        let stats = self.catalog.write_checkpoint(&job).expect("write the checkpoint");
        let elapsed = started.elapsed();
        self.broker.checkpoint_durable(job.snapshot.epoch);
        (elapsed, stats.record_count as u64)
    }
}

fn checkpoints(c: &mut Criterion) {
    let parent = bench_parent_dir();
    std::fs::create_dir_all(&parent).expect("bench dir");
    let mut group = c.benchmark_group("catalog");
    group.throughput(Throughput::Elements(MESSAGE_COUNT as u64));
    // An iteration's untimed part (enqueueing and delivering 100k messages) is several times its
    // timed write: a few iterations per sample are plenty.
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    let dir = tempfile::Builder::new().prefix("catalog-bench-").tempdir_in(&parent).expect("dir");
    let mut server = Server::new(dir.path());
    group.bench_function("checkpoint_100k_enqueued", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                server.enqueue();
                let (elapsed, record_count) = server.checkpoint();
                assert_eq!(record_count, MESSAGE_COUNT as u64);
                timed += elapsed;
                server.deliver();
                server.checkpoint();
            }
            timed
        })
    });
    let dir = tempfile::Builder::new().prefix("catalog-bench-").tempdir_in(&parent).expect("dir");
    let mut server = Server::new(dir.path());
    group.bench_function("checkpoint_100k_delivered", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                server.enqueue();
                server.checkpoint();
                server.deliver();
                let (elapsed, record_count) = server.checkpoint();
                assert_eq!(record_count, MESSAGE_COUNT as u64);
                timed += elapsed;
            }
            timed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(2));
    targets = checkpoints
}
criterion_main!(benches);
