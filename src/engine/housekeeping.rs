//! Housekeeping between groups: checkpoints, retention sweeps, log segment deletion, the disk
//! watermark. Each step is bounded and paced, and none of them waits for sled.
//!
//! A checkpoint: when enough changed (records, log bytes) or enough time passed, the broker's
//! snapshot and the committed log position go to the checkpoint writer; the storage thread goes
//! on serving. When the writer reports the catalog durable, the broker drops what it kept for
//! reads, and the log segments that hold nothing still needed are deleted: those before the
//! checkpoint position that no stored message's content is in (as of that checkpoint).
//!
//! A sweep: every `SWEEP_INTERVAL`, the writer reads the catalog's retention notes that are due and
//! names the messages whose retention passed; if the catalog is still at the epoch it read, the
//! broker removes them (one `Remove` op, logged like any other) and the notes are deleted by the
//! next checkpoint.

use super::checkpointer::{Checkpointer, CompactBatch, Job, Outcome};
use super::command::{HeldCheckpoint, Reply};
use super::{CheckpointHold, Engine};
use crate::limits::{CHECKPOINT_DIRTY_COUNT, CHECKPOINT_INTERVAL_MS};
use crate::queue::SegmentUsage;
use crate::store::catalog::{Catalog, CheckpointJob};
use crate::store::wal::{Wal, WalPosition};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the retention sweep looks for expired dead and delivered messages.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
const EVICT_INTERVAL: Duration = Duration::from_millis(crate::limits::EVICT_INTERVAL_MS);
/// How often the free space is looked up (a statvfs call).
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How often memory freed by checkpoints is handed back to the system.
const TRIM_INTERVAL: Duration = Duration::from_secs(30);
/// How often the log's closed segments are looked at for reclaiming.
const COMPACT_INTERVAL: Duration = Duration::from_secs(2);
/// A closed segment is reclaimed when less than 1/`COMPACT_LIVE_FRACTION` of it still holds
/// contents of stored messages: those are copied into the current segment, and it is deleted.
/// Copying at most a quarter of a segment per segment reclaimed bounds the copying to a third of
/// what is written, however long messages are kept.
const COMPACT_LIVE_FRACTION: u64 = 4;

/// The storage thread's housekeeping state.
pub(super) struct Housekeeping {
    checkpointer: Checkpointer,
    /// Running backups: while any holds a pin, no log segment is deleted.
    pub pins: Arc<AtomicUsize>,
    /// Running backups copying the catalog: while any holds one, no checkpoint starts.
    pub holds: Arc<AtomicUsize>,
    /// Holds granted while a checkpoint was being written: answered once it is done.
    pub hold_waiters: Vec<(Reply<HeldCheckpoint>, CheckpointHold)>,
    /// The log position the durable catalog is exact up to.
    pub durable_position: WalPosition,
    /// The segments that held content of stored messages at the durable checkpoint.
    durable_segments: Vec<(u32, SegmentUsage)>,
    /// The checkpoint handed to the writer and not finished yet: its epoch.
    in_flight: Option<u64>,
    sweep_in_flight: bool,
    last_checkpoint: Instant,
    last_sweep: Instant,
    last_evict: Instant,
    last_trim: Instant,
    log_bytes_at_checkpoint: u64,
    /// Retention notes handled since the last checkpoint job (deleted by the next one).
    expiry_done: Vec<(u64, u64)>,
    /// Retention notes to add at the next checkpoint.
    expiry_added: Vec<(u64, u64)>,
    /// Free bytes at the last look, and when that was.
    disk_free_bytes: u64,
    disk_checked_at: Option<Instant>,
    /// A compaction step handed to the writer and not finished yet.
    compact_in_flight: bool,
    /// The segment being reclaimed and the catalog pages still to read for it.
    compacting: Option<(u32, u64, u64)>,
    last_compact: Instant,
}

impl Housekeeping {
    pub(super) fn new(
        catalog: Arc<Catalog>,
        segments: Arc<crate::store::wal::SegmentFiles>,
        wal: &Wal,
    ) -> std::io::Result<Housekeeping> {
        let durable = catalog.manifest().ok().flatten().unwrap_or_default();
        Ok(Housekeeping {
            checkpointer: Checkpointer::spawn(catalog, segments)?,
            pins: Arc::default(),
            holds: Arc::default(),
            hold_waiters: Vec::new(),
            durable_position: durable.position,
            durable_segments: durable.segments,
            in_flight: None,
            sweep_in_flight: false,
            last_checkpoint: Instant::now(),
            last_sweep: Instant::now(),
            last_evict: Instant::now(),
            last_trim: Instant::now(),
            log_bytes_at_checkpoint: wal.disk_bytes(),
            expiry_done: Vec::new(),
            expiry_added: Vec::new(),
            disk_free_bytes: u64::MAX,
            disk_checked_at: None,
            compact_in_flight: false,
            compacting: None,
            last_compact: Instant::now(),
        })
    }
}

impl Engine {
    /// Runs between groups: takes the checkpoint writer's outcomes, starts the next checkpoint or
    /// sweep when due. `stopping` forces a final checkpoint and waits for it.
    pub(super) fn housekeeping(&mut self, stopping: bool) {
        while let Some(outcome) = self.house.checkpointer.try_outcome() {
            self.take_outcome(outcome);
        }
        if self.house.last_sweep.elapsed() >= SWEEP_INTERVAL {
            self.shared.waiters.forget_idle();
        }
        if self.failed().is_none() {
            if self.checkpoint_due() || (stopping && self.house.in_flight.is_none()) {
                self.start_checkpoint();
            }
            if !stopping && !self.house.sweep_in_flight && self.sweep_due() {
                self.start_sweep();
            }
            if !stopping && !self.house.compact_in_flight {
                self.start_compaction();
            }
        }
        if stopping {
            while self.house.in_flight.is_some()
                || self.house.sweep_in_flight
                || self.house.compact_in_flight
            {
                let Some(outcome) = self.house.checkpointer.wait_outcome() else { break };
                self.take_outcome(outcome);
            }
            self.house.checkpointer.stop();
        }
        if !stopping && self.cold.may_evict() && self.house.last_evict.elapsed() >= EVICT_INTERVAL {
            self.house.last_evict = Instant::now();
            self.broker.evict_cold(crate::limits::EVICT_COUNT_MAX);
            // A queue whose oldest cold message came back alone: read its first cold page back
            // so that its oldest ready age is exact again.
            for (queue_id, page) in self.broker.stale_cold_pages() {
                self.ask_for_pages(queue_id, vec![page]);
            }
        }
        let gauges = &self.shared.gauges;
        gauges.cold_count.store(self.broker.cold_count(), Ordering::Relaxed);
        gauges.settled_count.store(self.broker.settled_count() as u64, Ordering::Relaxed);
        gauges.timer_count.store(self.broker.timer_count() as u64, Ordering::Relaxed);
        let replay_bytes = self.wal.bytes_after(self.house.durable_position);
        gauges.replay_bytes.store(replay_bytes, Ordering::Relaxed);
    }

    fn checkpoint_due(&self) -> bool {
        if self.house.in_flight.is_some() || self.house.holds.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let dirty_count = self.broker.dirty_count();
        let grown_bytes = self.wal.disk_bytes().saturating_sub(self.house.log_bytes_at_checkpoint);
        let elapsed_ms = self.house.last_checkpoint.elapsed().as_millis() as u64;
        let anything = dirty_count > 0 || grown_bytes > 0 || !self.house.expiry_done.is_empty();
        dirty_count >= CHECKPOINT_DIRTY_COUNT
            || grown_bytes >= self.config.checkpoint_wal_bytes
            || (anything && elapsed_ms >= CHECKPOINT_INTERVAL_MS)
    }

    fn sweep_due(&self) -> bool {
        self.house.last_sweep.elapsed() >= SWEEP_INTERVAL && self.broker.durable_epoch() > 0
    }

    /// Hands the broker's changes since the last checkpoint to the writer.
    fn start_checkpoint(&mut self) {
        let position = self.wal.committed_position();
        debug_assert_eq!(position, self.wal.pending_position(), "frames left uncommitted");
        let job = CheckpointJob {
            snapshot: self.broker.snapshot(),
            position,
            now_ms: self.now_ms(),
            expiry_done: std::mem::take(&mut self.house.expiry_done),
            expiry_added: std::mem::take(&mut self.house.expiry_added),
            moved_contents: Vec::new(),
        };
        self.house.in_flight = Some(job.snapshot.epoch);
        self.house.last_checkpoint = Instant::now();
        self.house.log_bytes_at_checkpoint = self.wal.disk_bytes();
        self.house.checkpointer.submit(Job::Checkpoint(Box::new(job)));
    }

    fn start_sweep(&mut self) {
        self.house.last_sweep = Instant::now();
        self.house.sweep_in_flight = true;
        let job = Job::Sweep {
            now_ms: self.now_ms(),
            retention: self.broker.retention_table(),
            epoch: self.broker.durable_epoch(),
        };
        self.house.checkpointer.submit(job);
    }

    /// Starts (or goes on with) reclaiming a closed segment that is mostly dead.
    fn start_compaction(&mut self) {
        if self.house.compacting.is_none() {
            if self.house.last_compact.elapsed() < COMPACT_INTERVAL
                || self.broker.durable_epoch() == 0
            {
                return;
            }
            self.house.last_compact = Instant::now();
            self.house.compacting = self.segment_to_reclaim();
        }
        let Some((segment, first_page, last_page)) = self.house.compacting else { return };
        self.house.compact_in_flight = true;
        let job = Job::Compact {
            segment,
            first_page,
            last_page,
            epoch: self.broker.durable_epoch(),
            resident: self.broker.resident_contents_in(segment),
        };
        self.house.checkpointer.submit(job);
    }

    /// The closed segment behind the durable checkpoint with the most bytes to gain, among those
    /// less than a quarter of which still holds stored contents; and its catalog pages.
    fn segment_to_reclaim(&self) -> Option<(u32, u64, u64)> {
        let closed = self.wal.closed_segments();
        self.broker
            .segment_usage()
            .iter()
            .filter(|(seq, _)| u64::from(**seq) < self.house.durable_position.segment_seq)
            .filter_map(|(seq, usage)| {
                let size = *closed.get(&u64::from(*seq))?;
                (usage.live_bytes.saturating_mul(COMPACT_LIVE_FRACTION) < size).then_some((
                    size - usage.live_bytes,
                    *seq,
                    *usage,
                ))
            })
            .max_by_key(|(gain, _, _)| *gain)
            .map(|(_, seq, usage)| {
                let page = |id: u64| crate::queue::page_of(crate::queue::MessageId(id));
                (seq, page(usage.id_low), page(usage.id_high))
            })
    }

    /// Copies the contents a compaction step read into a new frame, for the messages that still
    /// point at them.
    fn take_compaction(&mut self, batch: CompactBatch) {
        if batch.epoch != self.broker.durable_epoch() {
            // The catalog moved on while the step read it: read the same pages again.
            return;
        }
        let valid: Vec<(crate::queue::MessageId, Vec<u8>)> = batch
            .items
            .into_iter()
            .filter_map(|(id, stored, old, bytes)| {
                (self.broker.current_content(id, stored) == Some(old)).then_some((id, bytes))
            })
            .collect();
        if !valid.is_empty() {
            if let Some(mut writer) = self.begin_frame(valid.len()) {
                let items = valid
                    .iter()
                    .map(|(id, bytes)| (*id, writer.content(self.wal.frame_buffer(), bytes)))
                    .collect();
                self.broker.move_contents(items, &mut self.ops);
                writer.finish(self.wal.frame_buffer(), &self.ops);
                self.wal.end_frame();
                self.ops.clear();
                crate::failpoint::crash("compaction.before_commit");
                self.finish();
                crate::failpoint::crash("compaction.after_commit");
            }
        }
        self.house.compacting = batch.next_pages.map(|(first, last)| (batch.segment, first, last));
    }

    fn take_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Compacted(result) => {
                self.house.compact_in_flight = false;
                match result {
                    Ok(batch) => self.take_compaction(batch),
                    Err(error) => {
                        tracing::warn!(%error, "reading a log segment to reclaim failed");
                        self.house.compacting = None;
                    }
                }
            }
            Outcome::Checkpointed { job, result, elapsed } => {
                self.house.in_flight = None;
                match result {
                    Ok(stats) => {
                        self.checkpointed(&job, elapsed);
                        tracing::debug!(
                            epoch = job.snapshot.epoch,
                            pages = stats.page_count,
                            records = stats.record_count,
                            bytes = stats.batch_bytes,
                            elapsed_ms = elapsed.as_millis() as u64,
                            "checkpoint"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, "checkpoint failed; the log is kept and it is retried");
                        let job = *job;
                        self.house.expiry_done.extend(job.expiry_done);
                        self.house.expiry_added.extend(job.expiry_added);
                        self.broker.checkpoint_failed(job.snapshot);
                    }
                }
            }
            Outcome::Swept(result) => {
                self.house.sweep_in_flight = false;
                match result {
                    Ok(batch) if batch.epoch == self.broker.durable_epoch() => {
                        let now_ms = self.now_ms();
                        let candidates = batch
                            .candidates
                            .into_iter()
                            .map(|(id, meta)| (id, Some(meta)))
                            .collect();
                        self.broker.expire_retained(now_ms, candidates, &mut self.ops);
                        self.append_ops(0, |_, _| {});
                        self.finish();
                        self.house.expiry_done.extend(batch.done);
                        self.house.expiry_added.extend(batch.added);
                    }
                    // The catalog moved on while the sweep read it: the notes are read again.
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "reading the retention notes failed"),
                }
            }
        }
        self.answer_hold_waiters();
    }

    /// Answers the checkpoint holds asked for, once no checkpoint is being written: the catalog
    /// is then at the durable checkpoint and stays there while the holds live.
    pub(super) fn answer_hold_waiters(&mut self) {
        if self.house.in_flight.is_some() {
            return;
        }
        for (reply, hold) in self.house.hold_waiters.drain(..) {
            let held = HeldCheckpoint {
                position: self.house.durable_position,
                epoch: self.broker.durable_epoch(),
                hold,
            };
            drop(reply.send(Ok(held)));
        }
    }

    /// A checkpoint is durable: the broker forgets what the catalog now holds, and the log
    /// segments nothing needs any more are deleted.
    fn checkpointed(&mut self, job: &CheckpointJob, elapsed: Duration) {
        self.broker.checkpoint_durable(job.snapshot.epoch);
        self.house.durable_position = job.position;
        self.house.durable_segments = job.snapshot.segments.clone();
        metrics::histogram!(crate::metrics::CHECKPOINT_DURATION_SECONDS)
            .record(elapsed.as_secs_f64());
        if self.house.pins.load(Ordering::SeqCst) == 0 {
            let removable = crate::store::recovery::removable_segments(
                &self.wal,
                &self.house.durable_segments,
                job.position,
            );
            if !removable.is_empty() {
                crate::failpoint::crash("segments.before_remove");
            }
            match self.wal.remove_segments(&removable) {
                Ok(_) => {
                    for seq in removable {
                        self.shared.segments.forget(seq as u32);
                    }
                }
                Err(error) => tracing::warn!(%error, "deleting log segments failed; retried later"),
            }
        }
        if self.house.last_trim.elapsed() >= TRIM_INTERVAL {
            self.house.last_trim = Instant::now();
            crate::store::release_free_memory();
        }
    }

    /// Whether free disk space is under the watermark, looked up at most every 200 ms.
    ///
    /// Enqueues stop before the disk is full, so that the log and the catalog never meet ENOSPC
    /// (sled cannot recover from a failed write without a restart) and consumers can still lease
    /// and ack.
    pub(super) fn disk_low(&mut self) -> Option<u64> {
        if self.config.disk_free_min_bytes == 0 {
            return None;
        }
        let stale = self.house.disk_checked_at.is_none_or(|at| at.elapsed() >= DISK_CHECK_INTERVAL);
        if stale {
            self.house.disk_checked_at = Some(Instant::now());
            match fs2::available_space(&self.config.data_dir) {
                Ok(free_bytes) => self.house.disk_free_bytes = free_bytes,
                Err(error) => tracing::warn!(%error, "cannot read the free disk space"),
            }
        }
        let free_bytes = self.house.disk_free_bytes;
        (free_bytes < self.config.disk_free_min_bytes).then_some(free_bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::{self, Command, EngineConfig, EngineHandle, IncomingMessage, Shared};
    use crate::events::EventLog;
    use crate::queue::{BodyKind, Broker, BrokerConfig, Delivery};
    use crate::store::catalog::Catalog;
    use crate::store::codec::{encode_content, ContentRef};
    use crate::store::wal::{SegmentFiles, Wal};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn enqueue(engine: &EngineHandle) {
        let content =
            encode_content(&ContentRef { headers: &[], body_kind: BodyKind::Json, body: b"1" });
        let message = IncomingMessage {
            content,
            priority: 0,
            attempt_count_max: None,
            delivery: Delivery::Now,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = Command::Enqueue {
            queue: "q".into(),
            messages: vec![message],
            idempotency: None,
            reply,
        };
        engine.send(command).unwrap();
        answer.blocking_recv().unwrap().unwrap().unwrap();
    }

    fn epoch(catalog: &Catalog) -> u64 {
        catalog.manifest().unwrap().unwrap_or_default().epoch
    }

    /// Waits (bounded) until the catalog's epoch passes `epoch`, enqueueing to give a checkpoint
    /// something to write; returns whether it did.
    fn checkpoint_after(engine: &EngineHandle, catalog: &Catalog, epoch_before: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            enqueue(engine);
            if epoch(catalog) > epoch_before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A checkpoint hold keeps the catalog at the epoch it answered with until it is dropped,
    /// however much is written meanwhile; then checkpoints resume.
    #[test]
    fn a_checkpoint_hold_keeps_the_catalog_at_one_epoch_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::in_memory());
        let wal = Wal::open(dir.path(), 1 << 20).unwrap();
        let shared = Shared {
            catalog: catalog.clone(),
            segments: Arc::new(SegmentFiles::new(dir.path())),
            waiters: Arc::default(),
            events: Arc::new(EventLog::new(16, 1)),
            gauges: Arc::default(),
            queue_names: Arc::default(),
        };
        let config = EngineConfig {
            data_dir: dir.path().to_path_buf(),
            disk_free_min_bytes: 0,
            // Any growth of the log makes a checkpoint due.
            checkpoint_wal_bytes: 1,
            depth: 64,
        };
        let broker = Broker::new(BrokerConfig::default(), crate::clock::now_ms(), 1);
        let (engine, thread) =
            engine::spawn(broker, wal, shared, crate::clock::now_ms, config).unwrap();
        assert!(checkpoint_after(&engine, &catalog, 0), "checkpoints run without a hold");

        let (reply, answer) = tokio::sync::oneshot::channel();
        engine.send(Command::HoldCheckpoints { reply }).unwrap();
        let held = answer.blocking_recv().unwrap().unwrap();
        let manifest = catalog.manifest().unwrap().unwrap();
        assert_eq!((manifest.epoch, manifest.position), (held.epoch, held.position));
        for _ in 0..20 {
            enqueue(&engine);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(epoch(&catalog), held.epoch, "a checkpoint ran while held");

        drop(held.hold);
        assert!(checkpoint_after(&engine, &catalog, held.epoch), "checkpoints resume");
        engine.stop();
        thread.join().unwrap();
    }
}
