//! Startup recovery: load the catalog, replay the log after its checkpoint, checkpoint again.
//!
//! The catalog is exactly the state after its manifest's log position (checkpoints are atomic
//! sled batches), so recovery is: restore the broker from the catalog (queues, counts, the active
//! messages from the pages the `a` index names, idempotency keys), then apply every op logged after
//! that position, in log order, with the same code that applied it live. An op that touches a dead
//! or delivered message the broker does not hold fetches its record from the catalog first. Then a
//! checkpoint at the start of a fresh segment makes the replayed state the catalog's, and the
//! segments that hold nothing still needed are deleted.
//!
//! Overdue timers are armed as they are and fire on the storage thread's first tick: a message
//! leased when the server died becomes available when its lease would have expired, with its
//! attempt count intact.

use super::catalog::{Catalog, CheckpointJob};
use super::codec;
use super::wal::{self, SegmentFiles, Wal, WalPosition};
use super::{StoreError, LOG_DIR};
use crate::limits::{IDEMPOTENCY_WINDOW_MS, WAL_SEGMENT_BYTES};
use crate::queue::{Broker, BrokerConfig, Op, QueueId};
use std::path::Path;

/// What recovery found, for the startup log line.
#[derive(Debug, Default)]
pub struct RecoverySummary {
    /// Log frames replayed.
    pub frame_count: u64,
    /// Ops applied from them.
    pub op_count: u64,
    /// A torn log tail that was cut off: (segment file, offset, bytes dropped).
    pub truncated: Option<(String, u64, u64)>,
    pub queue_count: u64,
    /// Active messages after recovery.
    pub active_count: u64,
    /// Catalog pages read to restore the active messages.
    pub page_count: u64,
    /// Damaged catalog pages set aside (with `--quarantine-corrupt`).
    pub quarantined_count: u64,
    /// Logged op items dropped because they named a message of a page set aside.
    pub dropped_count: u64,
    /// Log segments deleted after the recovery checkpoint.
    pub removed_segment_count: usize,
}

/// The recovered state, ready for the storage thread.
pub struct Recovered {
    pub broker: Broker,
    pub catalog: Catalog,
    pub wal: Wal,
    pub segments: SegmentFiles,
    pub summary: RecoverySummary,
}

/// Recovers the data directory (creating it if absent).
/// How recovery opens a data directory.
#[derive(Clone, Copy, Debug)]
pub struct RecoveryOptions {
    /// Set damaged catalog pages aside instead of failing (`--quarantine-corrupt`).
    pub quarantine: bool,
    /// Size of a log segment before the next one starts.
    pub segment_bytes: u64,
}

impl Default for RecoveryOptions {
    fn default() -> RecoveryOptions {
        RecoveryOptions { quarantine: false, segment_bytes: WAL_SEGMENT_BYTES }
    }
}

pub fn recover(
    data_dir: &Path,
    config: BrokerConfig,
    now_ms: u64,
    seed: u64,
    options: RecoveryOptions,
) -> Result<Recovered, StoreError> {
    let quarantine = options.quarantine;
    let io = |source| StoreError::Io { path: data_dir.to_path_buf(), source };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    super::v1::convert_if_needed(data_dir, now_ms)?;
    let log_dir = data_dir.join(LOG_DIR);
    std::fs::create_dir_all(&log_dir)
        .map_err(|source| StoreError::Io { path: log_dir.clone(), source })?;
    let catalog = Catalog::open(data_dir)?;
    let segments = SegmentFiles::new(&log_dir);
    let mut summary = RecoverySummary::default();
    let (mut broker, from, restored) = restore(&catalog, config, now_ms, seed, quarantine)?;
    summary.page_count = restored.page_count;
    summary.quarantined_count = restored.quarantined_count;
    check_segments_exist(&broker, &log_dir, from)?;
    let replayed = wal::replay(&log_dir, from, |position: WalPosition, payload: &[u8]| {
        let replayed = replay_frame(&mut broker, &catalog, position, payload, quarantine)?;
        summary.op_count += replayed.op_count;
        summary.dropped_count += replayed.dropped_count;
        Ok::<(), StoreError>(())
    })?;
    summary.frame_count = replayed.frame_count;
    summary.truncated = replayed
        .truncated
        .map(|tail| (tail.segment_path.display().to_string(), tail.offset, tail.dropped_bytes));
    broker.take_notices();
    broker.take_woken();
    refresh_stale_cold_pages(&mut broker, &catalog)?;
    let mut wal = Wal::open(&log_dir, options.segment_bytes)?;
    let position = wal.committed_position();
    let job = CheckpointJob { snapshot: broker.snapshot(), position, now_ms, ..Default::default() };
    catalog.write_checkpoint(&job)?;
    broker.checkpoint_durable(job.snapshot.epoch);
    let removable = removable_segments(&wal, &job.snapshot.segments, position);
    summary.removed_segment_count = wal.remove_segments(&removable)?;
    for seq in &removable {
        segments.forget(*seq as u32);
    }
    summary.queue_count = broker.queue_count() as u64;
    summary.active_count = broker.active_count() as u64;
    Ok(Recovered { broker, catalog, wal, segments, summary })
}

/// What restoring from the catalog read.
#[derive(Clone, Copy, Debug, Default)]
pub struct Restored {
    /// Catalog pages read for the active messages.
    pub page_count: u64,
    /// Damaged pages set aside.
    pub quarantined_count: u64,
}

/// Builds the broker from the catalog; returns it, the log position to replay from, and what it
/// read. With `quarantine`, a damaged page of active messages is set aside instead of failing.
pub fn restore(
    catalog: &Catalog,
    config: BrokerConfig,
    now_ms: u64,
    seed: u64,
    quarantine: bool,
) -> Result<(Broker, WalPosition, Restored), StoreError> {
    let mut broker = Broker::new(config, now_ms, seed);
    catalog.for_each_queue(|queue_id, record| broker.restore_queue(queue_id, record))?;
    let manifest = catalog.manifest()?.unwrap_or_default();
    for (index, counts) in manifest.terminal_counts.iter().enumerate() {
        if index < broker.queue_count() {
            broker.restore_terminal_counts(QueueId(index as u32), *counts);
        }
    }
    for (seq, usage) in &manifest.segments {
        broker.restore_segment(*seq, *usage);
    }
    broker.restore_counters(manifest.next_id, manifest.epoch);
    let (page_count, quarantined_count) =
        catalog.for_each_active(quarantine, |id, meta| broker.restore_active(id, meta))?;
    let since_ms = now_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS);
    catalog.for_each_idempotency(since_ms, |queue_id, key, record| {
        broker.restore_idempotency(now_ms, queue_id, key, record);
    })?;
    broker.finish_restore();
    Ok((broker, manifest.position, Restored { page_count, quarantined_count }))
}

/// What replaying one frame did.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayedFrame {
    pub op_count: u64,
    /// Op items dropped because their message does not exist (its page was set aside).
    pub dropped_count: u64,
}

/// Applies one replayed log frame (whose end is at `position`) to the broker. Messages the
/// frame's ops touch that the broker does not hold are fetched from the catalog first. With
/// `quarantine`, op items naming a message that does not exist (its page was set aside) are
/// dropped instead of failing the replay.
pub fn replay_frame(
    broker: &mut Broker,
    catalog: &Catalog,
    position: WalPosition,
    payload: &[u8],
    quarantine: bool,
) -> Result<ReplayedFrame, StoreError> {
    let payload_offset = position.offset - payload.len() as u64;
    let segment = u32::try_from(position.segment_seq).map_err(|_| StoreError::Corrupt {
        what: format!("log segment {}", position.segment_seq),
        source: codec::CodecError::Layout { offset: 0, what: "segment number beyond 2^32" },
    })?;
    let ops = codec::decode_frame(payload, segment, payload_offset).map_err(|source| {
        StoreError::Corrupt {
            what: format!(
                "log frame ending at segment {} offset {}",
                position.segment_seq, position.offset
            ),
            source,
        }
    })?;
    let mut replayed = ReplayedFrame::default();
    for mut op in ops {
        fetch_touched(broker, catalog, &op)?;
        if quarantine {
            replayed.dropped_count += op.retain_touched(|id| broker.is_resident(id));
        }
        broker.apply(&op).map_err(|source| StoreError::Replay { position, source })?;
        replayed.op_count += 1;
    }
    Ok(replayed)
}

/// Reads back the cold pages whose oldest message came back alone during replay, so that every
/// queue's oldest ready age is exact again (`queue/cold.rs`); recovery does it before its
/// checkpoint, as the storage thread does later in the background.
pub fn refresh_stale_cold_pages(broker: &mut Broker, catalog: &Catalog) -> Result<(), StoreError> {
    for (queue_id, page) in broker.stale_cold_pages() {
        let records = catalog.page(page)?;
        broker.load_cold(queue_id, page, records);
    }
    Ok(())
}

/// Fails when a segment that stored messages point into is missing (it was deleted or lost:
/// their contents are gone).
fn check_segments_exist(
    broker: &Broker,
    log_dir: &Path,
    from: WalPosition,
) -> Result<(), StoreError> {
    let existing: std::collections::BTreeSet<u64> =
        wal::list_segments(log_dir)?.into_iter().map(|(seq, _)| seq).collect();
    for seq in broker.segment_usage().keys() {
        let seq = u64::from(*seq);
        if !existing.contains(&seq) && seq < from.segment_seq {
            let path = wal::segment_path(log_dir, seq);
            let source = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "this log segment holds message contents but is missing (restore the data \
                 directory from a backup)",
            );
            return Err(StoreError::Io { path, source });
        }
    }
    Ok(())
}

/// Makes resident every dead or delivered message an op touches that the broker does not hold.
fn fetch_touched(broker: &mut Broker, catalog: &Catalog, op: &Op) -> Result<(), StoreError> {
    let mut ids = Vec::new();
    op.touched_ids(&mut ids);
    for id in ids {
        if broker.is_resident(id) {
            continue;
        }
        if let Some(meta) = catalog.meta(id)? {
            // A record the broker cannot take (an active one it should hold) leaves the message
            // missing, and applying the op reports it.
            broker.ensure_resident(id, meta);
        }
    }
    Ok(())
}

/// The closed log segments nothing needs any more: before the checkpoint position (no replay
/// reads them) and holding no content of a stored message as of that checkpoint (`live`, by seq).
pub fn removable_segments(
    wal: &Wal,
    live: &[(u32, crate::queue::SegmentUsage)],
    checkpoint: WalPosition,
) -> Vec<u64> {
    wal.closed_segments()
        .keys()
        .copied()
        .filter(|seq| *seq < checkpoint.segment_seq)
        .filter(|seq| live.binary_search_by_key(seq, |(live_seq, _)| u64::from(*live_seq)).is_err())
        .collect()
}
