//! Measures the write-ahead log, the durability point of every write: one group commit of 100
//! frames of 300 bytes (append + one `write` + `fdatasync`), and the same 100 appends alone (the
//! in-memory framing and crc, no syscall).
//!
//! Method: a WAL in a temporary directory under `OUTBOXD_BENCH_DIR`, or cargo's target tmp dir
//! (a real disk, unlike a tmpfs `/tmp`). The commit figure is dominated by the disk's sync latency;
//! compare it with `outboxd bench --fsync-baseline` on the same file system. The append-only
//! variant commits every `APPEND_ONLY_COMMIT_EVERY` iterations outside the timed section, so that
//! its buffer stays bounded.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use outboxd::limits::WAL_SEGMENT_BYTES;
use outboxd::store::wal::Wal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const FRAME_COUNT: usize = 100;
const FRAME_BYTES: usize = 300;
/// Iterations of the append-only variant between (untimed) commits: about 3 MiB of buffer.
const APPEND_ONLY_COMMIT_EVERY: u64 = 100;

/// Where the WAL lives: `OUTBOXD_BENCH_DIR` if set, else cargo's per-target temp dir.
fn bench_parent_dir() -> PathBuf {
    std::env::var_os("OUTBOXD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn wal(c: &mut Criterion) {
    let parent = bench_parent_dir();
    std::fs::create_dir_all(&parent).expect("bench dir");
    let dir = tempfile::Builder::new().prefix("wal-bench-").tempdir_in(&parent).expect("temp dir");
    let mut wal = Wal::open(dir.path(), WAL_SEGMENT_BYTES).expect("open WAL");
    let frame = vec![0xa5_u8; FRAME_BYTES];

    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(FRAME_COUNT as u64));
    group.bench_function("append_100x300B_commit_fdatasync", |b| {
        b.iter(|| {
            for _ in 0..FRAME_COUNT {
                wal.append(black_box(&frame));
            }
            let position = wal.commit().expect("commit");
            wal.rotate_if_full().expect("rotate");
            position
        })
    });
    group.bench_function("append_100x300B_no_commit", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for iteration in 0..iterations {
                let started = Instant::now();
                for _ in 0..FRAME_COUNT {
                    black_box(wal.append(black_box(&frame)));
                }
                timed += started.elapsed();
                if iteration % APPEND_ONLY_COMMIT_EVERY == APPEND_ONLY_COMMIT_EVERY - 1 {
                    wal.commit().expect("commit");
                    wal.rotate_if_full().expect("rotate");
                }
            }
            wal.commit().expect("commit");
            timed
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
    targets = wal
}
criterion_main!(benches);
