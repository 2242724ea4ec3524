//! Measures the write-ahead log, the durability point of every write: one group commit of 100
//! request frames, each the frame of a one-message enqueue with a 256-byte body (begin_frame, the
//! content and the op written straight into the log's buffer, end_frame; then one `write` and one
//! `fdatasync`), and the same 100 frames alone (the in-memory framing and crc, no syscall).
//!
//! Method: a log in a temporary directory under `OUTBOXD_BENCH_DIR`, or cargo's target tmp dir
//! (a real disk, unlike a tmpfs `/tmp`). The commit figure is dominated by the disk's sync latency;
//! compare it with `outboxd bench --fsync-baseline` on the same file system. The frames-only
//! variant commits every `FRAMES_ONLY_COMMIT_EVERY` iterations outside the timed section, so that
//! its buffer stays bounded. Throughput is per frame.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use outboxd::limits::WAL_SEGMENT_BYTES;
use outboxd::queue::{Accepted, BodyKind, MessageId, Op, QueueId};
use outboxd::store::codec::{self, ContentRef, FrameWriter};
use outboxd::store::wal::Wal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const FRAME_COUNT: usize = 100;
const BODY_BYTES: usize = 256;
const NOW_MS: u64 = 1_700_000_000_000;
/// Iterations of the frames-only variant between (untimed) commits: about 3 MiB of buffer.
const FRAMES_ONLY_COMMIT_EVERY: u64 = 100;

/// Where the log lives: `OUTBOXD_BENCH_DIR` if set, else cargo's per-target temp dir.
fn bench_parent_dir() -> PathBuf {
    std::env::var_os("OUTBOXD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// Appends one request's frame as the storage thread does: the content first, then the op
/// that uses its location.
fn append_request(wal: &mut Wal, content: &[u8], id: u64) {
    let position = wal.begin_frame();
    let segment = position.segment_seq as u32;
    let mut writer = FrameWriter::begin(wal.frame_buffer(), segment, position.offset, 1);
    let location = writer.content(wal.frame_buffer(), content);
    let op = Op::Enqueue {
        queue_id: QueueId(0),
        first_id: MessageId(id),
        at_ms: NOW_MS,
        idempotency: None,
        messages: vec![Accepted {
            priority: 0,
            attempt_count_max: 5,
            due_at_ms: 0,
            content: location,
        }],
    };
    writer.finish(wal.frame_buffer(), std::slice::from_ref(&op));
    wal.end_frame();
}

fn wal(c: &mut Criterion) {
    let parent = bench_parent_dir();
    std::fs::create_dir_all(&parent).expect("bench dir");
    let dir = tempfile::Builder::new().prefix("wal-bench-").tempdir_in(&parent).expect("temp dir");
    let mut wal = Wal::open(dir.path(), WAL_SEGMENT_BYTES).expect("open the log");
    let body = vec![b'x'; BODY_BYTES];
    let content =
        codec::encode_content(&ContentRef { headers: &[], body_kind: BodyKind::Json, body: &body });
    let mut id = 1;

    let mut group = c.benchmark_group("wal");
    group.throughput(Throughput::Elements(FRAME_COUNT as u64));
    group.bench_function("enqueue_frames_100x256B_commit_fdatasync", |b| {
        b.iter(|| {
            for _ in 0..FRAME_COUNT {
                append_request(&mut wal, black_box(&content), id);
                id += 1;
            }
            let position = wal.commit().expect("commit");
            wal.rotate_if_full().expect("rotate");
            position
        })
    });
    group.bench_function("enqueue_frames_100x256B_no_commit", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for iteration in 0..iterations {
                let started = Instant::now();
                for _ in 0..FRAME_COUNT {
                    append_request(&mut wal, black_box(&content), id);
                    id += 1;
                }
                timed += started.elapsed();
                if iteration % FRAMES_ONLY_COMMIT_EVERY == FRAMES_ONLY_COMMIT_EVERY - 1 {
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
