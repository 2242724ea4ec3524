//! The disk in memory, for tests: a log segment held in a buffer, the real catalog over a
//! `BTreeMap`, and recovery's own restore and replay.
//!
//! The simulation, the `queue_ops` fuzz target and the broker's unit tests drive a broker the way
//! the storage thread does — each request's contents and ops become one frame, through the same
//! frame codec — and take checkpoints and restarts through the same catalog and recovery code as
//! the server, so a restart in a test rebuilds exactly what a real restart would, only without
//! files and fsyncs. Checkpoints can stay in flight or fail, as the checkpoint writer's do.
//! [`DiskModel::compare`] is the one check that a broker rebuilt from the disk equals the live
//! one; all three use it.

use super::catalog::{Catalog, CheckpointJob};
use super::codec::{decode_frame, decode_page, FrameWriter};
use super::keys;
use super::recovery;
use super::wal::{WalPosition, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use super::StoreError;
use crate::limits::IDEMPOTENCY_WINDOW_MS;
use crate::queue::{
    page_of, Broker, BrokerConfig, ContentLocation, History, Lookup, MessageId, MessageMeta,
    MessageState, Op, QueueId, Snapshot, ALL_STATES,
};
use std::cell::RefCell;
use std::collections::hash_map::{Entry, HashMap};
use std::collections::{BTreeMap, BTreeSet};

/// The log and the catalog of one data directory, in memory.
pub struct DiskModel {
    catalog: Catalog,
    /// Segment 0's bytes, as the file would hold them (the header's 16 bytes are zeros).
    segment: Vec<u8>,
    /// The frames after the last durable checkpoint: the position after each, and where its
    /// payload is.
    frames: Vec<(WalPosition, std::ops::Range<usize>)>,
    /// The open frame: its writer and where its header starts.
    open: Option<(FrameWriter, usize)>,
    /// Frames written since the model was made.
    pub frame_count: u64,
    /// Retention notes the last sweeps read, and notes they asked for: the next checkpoint
    /// deletes and writes them, as the storage thread's next checkpoint job does.
    expiry_done: Vec<(u64, u64)>,
    expiry_added: Vec<(u64, u64)>,
    /// Catalog pages and histories already decoded: the catalog changes only at a checkpoint,
    /// which drops what it rewrites (decoding pages is most of a long test's time).
    read_cache: RefCell<ReadCache>,
}

/// Decoded catalog records, by page number and by message id.
#[derive(Default)]
struct ReadCache {
    pages: HashMap<u64, Vec<(MessageId, MessageMeta)>>,
    histories: HashMap<MessageId, Option<History>>,
}

/// What a retention sweep read from the catalog: see [`DiskModel::sweep`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepRead {
    /// The messages whose retention passed, as the catalog holds them, for
    /// [`Broker::expire_retained`].
    pub candidates: Vec<(MessageId, Option<MessageMeta>)>,
    /// How many retention notes were due (0: there is nothing left to sweep at this time).
    pub note_count: usize,
}

impl Default for DiskModel {
    fn default() -> DiskModel {
        DiskModel::new()
    }
}

impl DiskModel {
    pub fn new() -> DiskModel {
        DiskModel {
            catalog: Catalog::in_memory(),
            segment: vec![0; SEGMENT_HEADER_BYTES as usize],
            frames: Vec::new(),
            open: None,
            frame_count: 0,
            expiry_done: Vec::new(),
            expiry_added: Vec::new(),
            read_cache: RefCell::default(),
        }
    }

    /// Opens a frame that carries `contents` and returns where each will be.
    pub fn place(&mut self, contents: &[Vec<u8>]) -> Vec<ContentLocation> {
        assert!(self.open.is_none(), "a frame is already open");
        let header_at = self.segment.len();
        self.segment.extend_from_slice(&[0; FRAME_HEADER_BYTES as usize]);
        let payload_offset = self.segment.len() as u64;
        let mut writer = FrameWriter::begin(&mut self.segment, 0, payload_offset, contents.len());
        let locations =
            contents.iter().map(|content| writer.content(&mut self.segment, content)).collect();
        self.open = Some((writer, header_at));
        locations
    }

    /// Ends the open frame (opening one without contents if none is) with `ops`, or drops it
    /// when there are none, as the storage thread does. Panics when the frame does not decode to
    /// `ops` (the ops must use exactly the contents placed, in order).
    pub fn log(&mut self, ops: &[Op]) {
        if self.open.is_none() {
            if ops.is_empty() {
                return;
            }
            self.place(&[]);
        }
        let (writer, header_at) = self.open.take().expect("opened above");
        if ops.is_empty() {
            self.segment.truncate(header_at);
            return;
        }
        writer.finish(&mut self.segment, ops);
        let payload = header_at + FRAME_HEADER_BYTES as usize..self.segment.len();
        // What replay will read: the ops exactly, their contents where they were placed.
        match decode_frame(&self.segment[payload.clone()], 0, payload.start as u64) {
            Ok(decoded) => assert_eq!(decoded, ops, "a frame decodes to other ops"),
            Err(error) => {
                panic!("a frame does not decode ({error}): its ops must use its contents {ops:?}")
            }
        }
        let length = u32::try_from(payload.len()).expect("small frames");
        let crc = crc32fast::hash(&self.segment[payload.clone()]);
        self.segment[header_at..header_at + 4].copy_from_slice(&length.to_le_bytes());
        self.segment[header_at + 4..header_at + 8].copy_from_slice(&crc.to_le_bytes());
        let position = WalPosition { segment_seq: 0, offset: self.segment.len() as u64 };
        self.frames.push((position, payload));
        self.frame_count += 1;
    }

    /// The bytes of a content the model holds.
    pub fn content(&self, id: MessageId, location: ContentLocation) -> Option<Vec<u8>> {
        match location {
            ContentLocation::Log { segment: 0, offset, len } => {
                let start = offset as usize;
                self.segment.get(start..start + len as usize).map(<[u8]>::to_vec)
            }
            ContentLocation::Log { .. } => None,
            ContentLocation::Catalog { .. } => self.catalog.content(id).ok().flatten(),
        }
    }

    /// Takes a checkpoint of `broker` at the end of the log, as the server does, at once.
    pub fn checkpoint(&mut self, broker: &mut Broker, now_ms: u64) -> Result<(), StoreError> {
        let job = self.begin_checkpoint(broker, now_ms);
        self.finish_checkpoint(broker, job)
    }

    /// Starts a checkpoint as the storage thread does: the broker's snapshot at the end of the
    /// log, with the retention notes the sweeps handled since the last one, for the checkpoint
    /// writer. The broker goes on meanwhile; the catalog is as it was until
    /// [`DiskModel::finish_checkpoint`] (or [`DiskModel::fail_checkpoint`]).
    pub fn begin_checkpoint(&mut self, broker: &mut Broker, now_ms: u64) -> CheckpointJob {
        assert!(self.open.is_none(), "checkpoint with a frame open");
        CheckpointJob {
            snapshot: broker.snapshot(),
            position: WalPosition { segment_seq: 0, offset: self.segment.len() as u64 },
            now_ms,
            expiry_done: std::mem::take(&mut self.expiry_done),
            expiry_added: std::mem::take(&mut self.expiry_added),
            moved_contents: Vec::new(),
        }
    }

    /// Writes a checkpoint begun earlier and tells the broker the catalog holds it, as the
    /// storage thread does when the writer reports it durable: a restart no longer replays the
    /// log before its position.
    pub fn finish_checkpoint(
        &mut self,
        broker: &mut Broker,
        job: CheckpointJob,
    ) -> Result<(), StoreError> {
        self.forget_read(&job.snapshot);
        self.catalog.write_checkpoint(&job)?;
        broker.checkpoint_durable(job.snapshot.epoch);
        self.frames.retain(|(position, _)| *position > job.position);
        Ok(())
    }

    /// A checkpoint begun earlier fails, as when the catalog cannot be written: nothing is
    /// written, and its changes and retention notes go into the next one.
    pub fn fail_checkpoint(&mut self, broker: &mut Broker, job: CheckpointJob) {
        self.expiry_done.splice(0..0, job.expiry_done);
        self.expiry_added.splice(0..0, job.expiry_added);
        broker.checkpoint_failed(job.snapshot);
    }

    /// A broker rebuilt the way a restart rebuilds it: restored from the catalog, then every
    /// frame after the checkpoint replayed.
    pub fn recover(
        &self,
        config: BrokerConfig,
        now_ms: u64,
        seed: u64,
    ) -> Result<Broker, StoreError> {
        let (mut broker, from, _) = recovery::restore(&self.catalog, config, now_ms, seed, false)?;
        for (position, payload) in &self.frames {
            if *position <= from {
                continue;
            }
            recovery::replay_frame(
                &mut broker,
                &self.catalog,
                *position,
                &self.segment[payload.clone()],
                false,
            )?;
        }
        broker.take_notices();
        broker.take_woken();
        recovery::refresh_stale_cold_pages(&mut broker, &self.catalog)?;
        Ok(broker)
    }

    /// What the storage thread's housekeeping does for ready messages over the budget after
    /// every group: evicts them (`queue/cold.rs`), and reads back the cold pages whose oldest
    /// message came back alone. Returns how many left memory.
    pub fn housekeeping(&self, broker: &mut Broker) -> Result<usize, StoreError> {
        let evicted = broker.evict_cold(usize::MAX);
        recovery::refresh_stale_cold_pages(broker, &self.catalog)?;
        Ok(evicted)
    }

    /// A message's record as a reader sees it: the broker's, else the catalog's.
    pub fn observe(&self, broker: &Broker, id: MessageId) -> Option<MessageMeta> {
        match broker.lookup(id) {
            Lookup::Found(meta) => Some(meta),
            Lookup::Removed => None,
            Lookup::InCatalog { .. } => self.stored_meta(id).ok().flatten(),
        }
    }

    /// The catalog (for listings and histories).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Reads the retention notes due at `now_ms` (at most `page_limit` pages) at the broker's
    /// durable checkpoint, as the storage thread's sweep does, and returns the messages to hand to
    /// [`Broker::expire_retained`]. The next [`DiskModel::checkpoint`] deletes the notes read and
    /// writes the later ones their pages still need.
    pub fn sweep(
        &mut self,
        broker: &Broker,
        now_ms: u64,
        page_limit: usize,
    ) -> Result<SweepRead, StoreError> {
        let retention = broker.retention_table();
        let batch = self.catalog.sweep(now_ms, &retention, page_limit, broker.durable_epoch())?;
        let note_count = batch.done.len();
        self.expiry_done.extend(batch.done);
        self.expiry_added.extend(batch.added);
        let candidates = batch.candidates.into_iter().map(|(id, meta)| (id, Some(meta))).collect();
        Ok(SweepRead { candidates, note_count })
    }

    /// Every message's record as a reader sees it ([`DiskModel::observe`]), for the ids 1 up to
    /// the broker's next id (at index `id - 1`).
    pub fn observe_all(&self, broker: &Broker) -> Result<Vec<Option<MessageMeta>>, StoreError> {
        let ids: Vec<MessageId> = (1..broker.next_id()).map(MessageId).collect();
        self.observe_many(broker, &ids)
    }

    /// The records of `ids` as a reader sees them ([`DiskModel::observe`]).
    pub fn observe_many(
        &self,
        broker: &Broker,
        ids: &[MessageId],
    ) -> Result<Vec<Option<MessageMeta>>, StoreError> {
        let observe = |id: MessageId| match broker.lookup(id) {
            Lookup::Found(meta) => Ok(Some(meta)),
            Lookup::Removed => Ok(None),
            Lookup::InCatalog { .. } => self.stored_meta(id),
        };
        ids.iter().map(|id| observe(*id)).collect()
    }

    /// A message's record in the catalog (read through the cache of decoded pages).
    fn stored_meta(&self, id: MessageId) -> Result<Option<MessageMeta>, StoreError> {
        let mut cache = self.read_cache.borrow_mut();
        let records = match cache.pages.entry(page_of(id)) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(self.catalog.page(page_of(id))?),
        };
        let index = records.binary_search_by_key(&id, |(stored_id, _)| *stored_id);
        Ok(index.ok().map(|index| records[index].1.clone()))
    }

    /// A catalog page's records ([`Catalog::page`], read through the cache of decoded pages).
    pub fn stored_page(&self, page: u64) -> Result<Vec<(MessageId, MessageMeta)>, StoreError> {
        let mut cache = self.read_cache.borrow_mut();
        match cache.pages.entry(page) {
            Entry::Occupied(entry) => Ok(entry.get().clone()),
            Entry::Vacant(entry) => Ok(entry.insert(self.catalog.page(page)?).clone()),
        }
    }

    /// Drops what a checkpoint of `snapshot` rewrites from the cache: its pages, and the histories
    /// of its messages.
    fn forget_read(&self, snapshot: &Snapshot) {
        let mut cache = self.read_cache.borrow_mut();
        for changes in &snapshot.pages {
            cache.pages.remove(&changes.page);
            for (id, _) in &changes.records {
                cache.histories.remove(id);
            }
        }
        for (id, _) in &snapshot.histories {
            cache.histories.remove(id);
        }
    }

    /// A message's history in the catalog (read through the cache).
    fn stored_history(&self, id: MessageId) -> Result<Option<History>, StoreError> {
        let mut cache = self.read_cache.borrow_mut();
        match cache.histories.entry(id) {
            Entry::Occupied(entry) => Ok(entry.get().clone()),
            Entry::Vacant(entry) => Ok(entry.insert(self.catalog.history(id)?).clone()),
        }
    }

    /// A message's history as a reader sees it: the catalog's, with the events the broker holds
    /// that the catalog may not have yet (merged as the HTTP layer merges them).
    pub fn history(
        &self,
        broker: &Broker,
        id: MessageId,
        meta: &MessageMeta,
    ) -> Result<History, StoreError> {
        let mut history = match meta.event_seq {
            0 => History::default(),
            _ => self.stored_history(id)?.unwrap_or_default(),
        };
        let keep_count = broker.config().history_keep_count as usize;
        for event in broker.pending_history(id) {
            history.record(event, keep_count);
        }
        Ok(history)
    }

    /// Checks that `recovered`, a broker rebuilt from this disk, shows readers and clients exactly
    /// what `live` shows at `now_ms`; returns the first difference.
    ///
    /// Compared: the next id; every queue's stats (counts, pause, settings, oldest ready message);
    /// every message's record, and the history of each that exists ([`DiskModel::observe_all`],
    /// [`DiskModel::history`]); the idempotency keys still within their window (a restart forgets
    /// the others, as the storage thread's first tick would); every queue's listing of every
    /// state, active ones from the broker and dead or delivered ones from the catalog merged with
    /// the broker's [`Broker::settled_of`] view, as the HTTP layer lists them; and what the next
    /// checkpoint will record: the log segments' content usage, the durable epoch, the armed
    /// timers. Ready messages left in the catalog (`queue/cold.rs`) count as listed and active
    /// whether a broker holds them or not.
    pub fn compare(&self, live: &Broker, recovered: &Broker, now_ms: u64) -> Result<(), String> {
        let read = |error: StoreError| format!("reading the catalog failed: {error}");
        same("next id", &live.next_id(), &recovered.next_id())?;
        same("queue stats", &live.all_queue_stats(), &recovered.all_queue_stats())?;
        let live_records = self.observe_all(live).map_err(read)?;
        let recovered_records = self.observe_all(recovered).map_err(read)?;
        for (index, (record, other)) in live_records.iter().zip(&recovered_records).enumerate() {
            let id = MessageId(index as u64 + 1);
            same(&format!("message {id}"), record, other)?;
            let Some(meta) = record else { continue };
            let history = self.history(live, id, meta).map_err(read)?.events;
            let other = self.history(recovered, id, meta).map_err(read)?.events;
            same(&format!("history of message {id}"), &history, &other)?;
        }
        let within_window = |broker: &Broker| {
            let mut keys = broker.idempotency_keys();
            keys.retain(|(_, _, record)| record.created_at_ms + IDEMPOTENCY_WINDOW_MS > now_ms);
            keys
        };
        same("idempotency keys", &within_window(live), &within_window(recovered))?;
        for queue_id in (0..live.queue_count() as u32).map(QueueId) {
            for state in ALL_STATES {
                let terminal = !state.is_active();
                if terminal
                    && live.settled_of(queue_id, state) == recovered.settled_of(queue_id, state)
                {
                    // The same catalog merged with the same view lists the same messages.
                    continue;
                }
                let listed = self.list(live, queue_id, state).map_err(read)?;
                let other = self.list(recovered, queue_id, state).map_err(read)?;
                same(&format!("queue {} {} listing", queue_id.0, state.name()), &listed, &other)?;
            }
        }
        same("segment usage", live.segment_usage(), recovered.segment_usage())?;
        same("durable epoch", &live.durable_epoch(), &recovered.durable_epoch())?;
        // Which ready messages are held in memory depends on the budget's history, not on what
        // readers see: the active ones, held or left in the catalog, are compared.
        let active = |broker: &Broker| broker.active_count() as u64 + broker.cold_count();
        same("active messages", &active(live), &active(recovered))?;
        same("armed timers", &live.timer_count(), &recovered.timer_count())
    }

    /// Checks that the catalog agrees with itself: its `a` and `t` index entries count exactly
    /// the records its pages hold, it keeps a history exactly for the messages whose record
    /// counts history events, and a content exactly for those whose content is kept there.
    pub fn check_catalog(&self) -> Result<(), String> {
        let mut pages = Vec::new();
        let (mut active, mut terminal) = (BTreeMap::new(), BTreeMap::new());
        let (mut histories, mut contents) = (BTreeSet::new(), BTreeSet::new());
        let count = |value: &[u8]| value.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
        let number = |bytes: &[u8]| bytes.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
        self.catalog
            .for_each_entry(|key, value| {
                match key[0] {
                    keys::PAGE => pages.push((number(&key[1..]), value.to_vec())),
                    keys::ACTIVE => drop(active.insert(number(&key[1..]), count(value))),
                    keys::TERMINAL if key.len() == 14 => {
                        let queue = u32::from_be_bytes(key[1..5].try_into().expect("4 bytes"));
                        terminal.insert((queue, key[5], number(&key[6..])), count(value));
                    }
                    keys::HISTORY => drop(histories.insert(number(&key[1..]))),
                    keys::CONTENT => drop(contents.insert(number(&key[1..]))),
                    _ => {}
                }
                Ok(())
            })
            .map_err(|error| format!("reading the catalog failed: {error}"))?;
        let (mut expected_active, mut expected_terminal) = (BTreeMap::new(), BTreeMap::new());
        let (mut expected_histories, mut expected_contents) = (BTreeSet::new(), BTreeSet::new());
        for (page, bytes) in pages {
            let records =
                decode_page(page, &bytes).map_err(|error| format!("page {page}: {error}"))?;
            for (id, meta) in records {
                if meta.state.is_active() {
                    *expected_active.entry(page).or_insert(0) += 1;
                } else {
                    let entry = (meta.queue_id.0, meta.state as u8, page);
                    *expected_terminal.entry(entry).or_insert(0) += 1;
                }
                if meta.event_seq > 0 {
                    expected_histories.insert(id.0);
                }
                if matches!(meta.content, ContentLocation::Catalog { .. }) {
                    expected_contents.insert(id.0);
                }
            }
        }
        fn agree<T: PartialEq + std::fmt::Debug>(
            what: &str,
            found: T,
            pages: T,
        ) -> Result<(), String> {
            if found == pages {
                return Ok(());
            }
            Err(format!("{what}: the catalog has {found:?}, its pages say {pages:?}"))
        }
        agree("active page index", active, expected_active)?;
        agree("dead and delivered page index", terminal, expected_terminal)?;
        agree("messages with a history", histories, expected_histories)?;
        agree("messages with a content in the catalog", contents, expected_contents)
    }

    /// Every message of a queue in `state`, in id order, listed as the HTTP layer lists them:
    /// active states from the broker, dead and delivered ones from the catalog merged with what
    /// the broker holds.
    pub fn list(
        &self,
        broker: &Broker,
        queue_id: QueueId,
        state: MessageState,
    ) -> Result<Vec<(MessageId, MessageMeta)>, StoreError> {
        if state.is_active() {
            let mut listed = broker.list_active(queue_id, state, None, false, usize::MAX);
            if state == MessageState::Ready {
                // Ready messages left in the catalog, as the storage thread reads them back.
                for page in broker.cold_pages(queue_id) {
                    for (id, meta) in self.catalog.page(page)? {
                        let cold = meta.queue_id == queue_id
                            && meta.state == MessageState::Ready
                            && !broker.is_resident(id);
                        if cold {
                            listed.push((id, meta));
                        }
                    }
                }
                listed.sort_unstable_by_key(|(id, _)| *id);
            }
            return Ok(listed);
        }
        let view = broker.settled_of(queue_id, state);
        self.catalog.list_terminal(queue_id, state, None, false, usize::MAX, &view)
    }
}

/// `Ok` when the live and the recovered values are the same, else an `Err` naming `what`.
fn same<T: PartialEq + std::fmt::Debug + ?Sized>(
    what: &str,
    live: &T,
    recovered: &T,
) -> Result<(), String> {
    if live == recovered {
        return Ok(());
    }
    Err(format!("{what}: live {live:?}, recovered {recovered:?}"))
}
