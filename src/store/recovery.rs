//! Startup recovery: open sled, replay the WAL after the last checkpoint, rebuild the broker.
//!
//! After recovery the store holds every change whose WAL frame was synced, the broker's memory (ready
//! indexes, counters, timers, idempotency keys) is rebuilt from the store alone, a checkpoint covers
//! the replayed log and a fresh WAL segment is open for appends. Overdue timers are armed as they
//! are and fire on the storage thread's first tick: a message leased when the server died becomes
//! available when its lease would have expired, with its attempt count intact.

use super::wal::{self, Wal, WalPosition};
use super::{codec, Store, StoreError};
use crate::limits::WAL_SEGMENT_BYTES;
use crate::queue::{Broker, BrokerConfig};
use std::path::Path;

/// What recovery found, for the startup log line.
#[derive(Debug, Default)]
pub struct RecoverySummary {
    /// WAL frames replayed into sled.
    pub frame_count: u64,
    /// A torn WAL tail that was cut off: (segment file, offset, bytes dropped).
    pub truncated: Option<(String, u64, u64)>,
    pub queue_count: u64,
    pub message_count: u64,
    pub active_count: u64,
    /// Damaged message records set aside (with `--quarantine-corrupt`).
    pub quarantined_count: u64,
}

/// The recovered state, ready for the storage thread.
pub struct Recovered {
    pub broker: Broker,
    pub store: Store,
    pub wal: Wal,
    pub summary: RecoverySummary,
}

/// Recovers the data directory (creating it if absent).
///
/// A damaged message record (crc mismatch, undecodable) stops recovery with an error naming the
/// message, unless `quarantine` is set: then the record is moved to the `quarantine` tree, logged,
/// and recovery goes on without it.
pub fn recover(
    data_dir: &Path,
    config: BrokerConfig,
    now_ms: u64,
    seed: u64,
    quarantine: bool,
) -> Result<Recovered, StoreError> {
    let io = |source| StoreError::Io { path: data_dir.to_path_buf(), source };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let wal_dir = data_dir.join("wal");
    std::fs::create_dir_all(&wal_dir)
        .map_err(|source| StoreError::Io { path: wal_dir.clone(), source })?;
    let store = Store::open(data_dir)?;
    let mut summary = RecoverySummary::default();
    let from = store.checkpoint_position()?;
    let replayed = wal::replay(&wal_dir, from, |position: WalPosition, payload: &[u8]| {
        let changes = codec::decode_changes(payload).map_err(|source| StoreError::Corrupt {
            what: format!(
                "WAL frame ending at segment {} offset {}",
                position.segment_seq, position.offset
            ),
            source,
        })?;
        store.apply(&changes)
    })?;
    summary.frame_count = replayed.frame_count;
    summary.truncated = replayed
        .truncated
        .map(|tail| (tail.segment_path.display().to_string(), tail.offset, tail.dropped_bytes));
    let broker = rebuild(&store, config, now_ms, seed, quarantine, &mut summary)?;
    let mut wal = Wal::open(&wal_dir, WAL_SEGMENT_BYTES)?;
    let position = wal.committed_position();
    store.checkpoint(position)?;
    wal.remove_before(position)?;
    Ok(Recovered { broker, store, wal, summary })
}

/// Builds the broker's memory from the store.
fn rebuild(
    store: &Store,
    config: BrokerConfig,
    now_ms: u64,
    seed: u64,
    quarantine: bool,
    summary: &mut RecoverySummary,
) -> Result<Broker, StoreError> {
    let mut broker = Broker::new(config, now_ms, seed);
    store.for_each_queue(|queue_id, record| {
        broker.restore_queue(queue_id, record);
        summary.queue_count += 1;
    })?;
    summary.quarantined_count = store.for_each_meta(quarantine, |id, meta| {
        summary.message_count += 1;
        summary.active_count += u64::from(meta.state.is_active());
        broker.restore_message(id, meta);
    })?;
    if let Some(next_id) = store.next_id()? {
        broker.restore_next_id(next_id);
    }
    let mut expired = Vec::new();
    store.for_each_idempotency(|queue_id, key, record| {
        broker.restore_idempotency(now_ms, queue_id, key, record, &mut expired);
    })?;
    broker.finish_restore();
    // Forgetting expired keys needs no WAL frame: losing the delete only means forgetting again.
    store.apply(&expired)?;
    Ok(broker)
}
