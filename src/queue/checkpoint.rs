//! The checkpoint book: what changed since the last checkpoint, and the snapshot that hands it to
//! the catalog.
//!
//! The catalog keeps message records in pages of [`PAGE_ID_COUNT`] consecutive ids. The broker
//! marks a page's slot dirty whenever a record changes, so a checkpoint writes each changed page
//! once however many times its messages moved since the last one: a message enqueued, leased and
//! acked between two checkpoints costs a share of one page write. The book also holds history
//! events not yet in the catalog, the content bytes each log segment still holds for stored
//! messages (a segment with none left can be deleted once the log before the checkpoint is no
//! longer needed), and the retention deadlines to note in the catalog.
//!
//! Epochs: the book records changes into epoch `epoch`; [`Broker::snapshot`] hands that epoch's
//! changes to the checkpoint writer and opens the next. Until [`Broker::checkpoint_durable`] says
//! the catalog holds an epoch, the broker keeps the terminal records and history events it wrote,
//! so every read stays current; afterwards it drops them and the catalog answers.

use super::message::{ContentLocation, HistoryEvent, MessageId, MessageMeta, MessageState};
use super::records::{IdempotencyRecord, QueueRecord};
use super::{Broker, QueueId, QueueState, Resident, Settled};
use crate::hash::{FastMap, FastSet};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Bits of a message id below its catalog page number.
pub const PAGE_ID_BITS: u32 = 8;
/// Message ids per catalog page.
pub const PAGE_ID_COUNT: usize = 1 << PAGE_ID_BITS;

/// The catalog page that holds a message's record.
pub fn page_of(id: MessageId) -> u64 {
    id.0 >> PAGE_ID_BITS
}

/// Retention deadlines are noted per page and rounded up to this many ms, so that a page gets one
/// note per second of deliveries, not one per message.
const EXPIRY_BUCKET_MS: u64 = 1000;

/// What a log segment still holds for stored messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentUsage {
    /// Stored messages whose content is in the segment.
    pub live_count: u64,
    /// Their content bytes.
    pub live_bytes: u64,
    /// The lowest and highest id whose content was ever placed in the segment, so that the records
    /// pointing into it can be found by id range.
    pub id_low: u64,
    pub id_high: u64,
}

/// A queue's dead and delivered counts (the catalog keeps them; active counts are rebuilt from
/// the active records at startup).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TerminalCounts {
    pub dead: u64,
    pub delivered: u64,
}

/// The changed records of one catalog page, by id; `None` is a removed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageChanges {
    pub page: u64,
    pub records: Vec<(MessageId, Option<MessageMeta>)>,
}

/// Everything one checkpoint writes to the catalog: the changes of one epoch, as of the log
/// position the storage thread took it at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub epoch: u64,
    /// Changed pages, by page number.
    pub pages: Vec<PageChanges>,
    /// New history events, by message id, oldest first per message.
    pub histories: Vec<(MessageId, Vec<HistoryEvent>)>,
    /// How many history events the catalog keeps per message.
    pub history_keep_count: u32,
    /// Queues created or changed.
    pub queues: Vec<(QueueId, QueueRecord)>,
    /// Idempotency keys used since the last snapshot.
    pub new_keys: Vec<(QueueId, String, IdempotencyRecord)>,
    pub next_id: u64,
    /// Per queue (indexed by queue id).
    pub terminal_counts: Vec<TerminalCounts>,
    /// Every segment that still holds content of stored messages, by seq.
    pub segments: Vec<(u32, SegmentUsage)>,
    /// (remove-at second, page) notes: the page holds a terminal message whose retention ends then.
    pub expiry_hints: Vec<(u64, u64)>,
    /// Per queue (indexed by queue id): the retention of delivered and of dead messages, `None`
    /// for "kept until a person acts".
    pub retention: Vec<(Option<u64>, Option<u64>)>,
    /// Queues whose retention changed: every page holding their terminal messages is looked at
    /// again by the next retention sweep.
    pub rearm_queues: Vec<QueueId>,
}

/// The broker's record of what the next checkpoint must write.
pub(super) struct Book {
    /// The epoch changes are recorded into (the next snapshot's); starts at 1.
    pub epoch: u64,
    /// The newest epoch the catalog holds durably (0: none).
    pub durable_epoch: u64,
    /// Changed records: page number → bitmap of the page's ids.
    dirty: FastMap<u64, [u64; PAGE_ID_COUNT / 64]>,
    dirty_count: usize,
    /// History events of this epoch, by message.
    history_new: FastMap<MessageId, Vec<HistoryEvent>>,
    /// History events of snapshots not yet durable, oldest epoch first.
    history_inflight: VecDeque<(u64, FastMap<MessageId, Vec<HistoryEvent>>)>,
    /// The pages of snapshots not yet durable, oldest epoch first.
    pages_inflight: VecDeque<(u64, FastSet<u64>)>,
    segments: BTreeMap<u32, SegmentUsage>,
    expiry: FastSet<(u64, u64)>,
    pub dirty_queues: BTreeSet<QueueId>,
    pub rearm_queues: BTreeSet<QueueId>,
    pub new_keys: Vec<(QueueId, String, IdempotencyRecord)>,
    /// Messages that left a terminal state (a person retried or rescheduled them) since the last
    /// durable checkpoint, with the epoch of that move: the catalog may still list them as dead.
    pub revived: FastMap<MessageId, u64>,
}

impl Default for Book {
    fn default() -> Book {
        Book {
            epoch: 1,
            durable_epoch: 0,
            dirty: FastMap::default(),
            dirty_count: 0,
            history_new: FastMap::default(),
            history_inflight: VecDeque::new(),
            pages_inflight: VecDeque::new(),
            segments: BTreeMap::new(),
            expiry: FastSet::default(),
            dirty_queues: BTreeSet::new(),
            rearm_queues: BTreeSet::new(),
            new_keys: Vec::new(),
            revived: FastMap::default(),
        }
    }
}

impl Book {
    /// Marks a message's record as changed.
    pub fn touch(&mut self, id: MessageId) {
        let slot = (id.0 as usize) & (PAGE_ID_COUNT - 1);
        let bits = self.dirty.entry(page_of(id)).or_default();
        let word = &mut bits[slot / 64];
        let bit = 1u64 << (slot % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.dirty_count += 1;
        }
    }

    /// Whether the catalog holds every record of a page durably and as the broker has it: the
    /// page changed neither since the last snapshot nor in a snapshot not yet durable.
    pub fn is_clean(&self, page: u64) -> bool {
        !self.dirty.contains_key(&page)
            && !self.pages_inflight.iter().any(|(_, pages)| pages.contains(&page))
    }

    /// Counts content newly placed (enqueue, edit, move).
    pub fn add_content(&mut self, id: MessageId, content: ContentLocation) {
        if let ContentLocation::Log { segment, len, .. } = content {
            let usage = self.segments.entry(segment).or_insert(SegmentUsage {
                id_low: id.0,
                id_high: id.0,
                ..SegmentUsage::default()
            });
            usage.live_count += 1;
            usage.live_bytes += u64::from(len);
            usage.id_low = usage.id_low.min(id.0);
            usage.id_high = usage.id_high.max(id.0);
        }
    }

    /// Uncounts content no longer referenced (removal, edit, move).
    pub fn forget_content(&mut self, _id: MessageId, content: ContentLocation) {
        if let ContentLocation::Log { segment, len, .. } = content {
            let Some(usage) = self.segments.get_mut(&segment) else {
                debug_assert!(false, "content in segment {segment} was never counted");
                return;
            };
            usage.live_count -= 1;
            usage.live_bytes -= u64::from(len);
            if usage.live_count == 0 {
                self.segments.remove(&segment);
            }
        }
    }

    /// Adds a history event of this epoch.
    pub fn record_history(&mut self, id: MessageId, event: HistoryEvent) {
        self.history_new.entry(id).or_default().push(event);
    }

    /// Forgets the events of a removed message that the catalog does not hold yet (the catalog
    /// drops its history): this epoch's, and those of snapshots in flight, which a failed
    /// checkpoint would otherwise hand back to the next one. A snapshot already taken keeps its
    /// own copy, and the checkpoint after it removes the history with the message.
    pub fn drop_history(&mut self, id: MessageId) {
        self.history_new.remove(&id);
        for (_, events) in &mut self.history_inflight {
            events.remove(&id);
        }
    }

    /// Notes that `id`'s page holds a terminal message to remove at `at_ms`.
    pub fn expire_at(&mut self, at_ms: u64, id: MessageId) {
        let bucket_ms = at_ms.div_ceil(EXPIRY_BUCKET_MS).saturating_mul(EXPIRY_BUCKET_MS);
        self.expiry.insert((bucket_ms, page_of(id)));
    }
}

impl Broker {
    /// How many records changed since the last snapshot (a checkpoint trigger).
    pub fn dirty_count(&self) -> usize {
        self.book.dirty_count
    }

    /// How many records the broker holds only until the catalog has them (terminal and removed
    /// messages changed since the last durable checkpoint): a bound on memory.
    pub fn settled_count(&self) -> usize {
        self.settled.len()
    }

    /// The newest checkpoint epoch the catalog holds.
    pub fn durable_epoch(&self) -> u64 {
        self.book.durable_epoch
    }

    /// The segments that still hold content of stored messages.
    pub fn segment_usage(&self) -> &BTreeMap<u32, SegmentUsage> {
        &self.book.segments
    }

    /// History events of a message that the catalog may not hold yet, oldest first.
    pub fn pending_history(&self, id: MessageId) -> Vec<HistoryEvent> {
        let mut events = Vec::new();
        for (_, epoch_events) in &self.book.history_inflight {
            if let Some(list) = epoch_events.get(&id) {
                events.extend(list.iter().cloned());
            }
        }
        if let Some(list) = self.book.history_new.get(&id) {
            events.extend(list.iter().cloned());
        }
        events
    }

    /// Takes what changed since the last snapshot, for a checkpoint at the log position the caller
    /// is at, and starts a new epoch. The broker keeps everything a read needs until
    /// [`Broker::checkpoint_durable`] is called with the snapshot's epoch.
    pub fn snapshot(&mut self) -> Snapshot {
        let epoch = self.book.epoch;
        self.book.epoch += 1;
        let mut dirty: Vec<(u64, [u64; PAGE_ID_COUNT / 64])> =
            std::mem::take(&mut self.book.dirty).into_iter().collect();
        self.book.dirty_count = 0;
        dirty.sort_unstable_by_key(|(page, _)| *page);
        self.book.pages_inflight.push_back((epoch, dirty.iter().map(|(page, _)| *page).collect()));
        let pages = dirty.into_iter().map(|(page, bits)| self.page_changes(page, &bits)).collect();
        let new_history = std::mem::take(&mut self.book.history_new);
        let mut histories: Vec<(MessageId, Vec<HistoryEvent>)> =
            new_history.iter().map(|(id, events)| (*id, events.clone())).collect();
        histories.sort_unstable_by_key(|(id, _)| *id);
        self.book.history_inflight.push_back((epoch, new_history));
        let queues = std::mem::take(&mut self.book.dirty_queues)
            .into_iter()
            .map(|queue_id| (queue_id, self.queue_record(queue_id)))
            .collect();
        let mut expiry_hints: Vec<(u64, u64)> = self.book.expiry.drain().collect();
        expiry_hints.sort_unstable();
        Snapshot {
            epoch,
            pages,
            histories,
            history_keep_count: self.config.history_keep_count,
            queues,
            new_keys: std::mem::take(&mut self.book.new_keys),
            next_id: self.next_id,
            terminal_counts: self.queues.iter().map(terminal_counts).collect(),
            segments: self.book.segments.iter().map(|(seq, usage)| (*seq, *usage)).collect(),
            expiry_hints,
            retention: self.retention_table(),
            rearm_queues: std::mem::take(&mut self.book.rearm_queues).into_iter().collect(),
        }
    }

    /// The current record (or removal) of every id marked in one page's bitmap.
    fn page_changes(&self, page: u64, bits: &[u64; PAGE_ID_COUNT / 64]) -> PageChanges {
        let mut records = Vec::new();
        for (word_index, word) in bits.iter().enumerate() {
            let mut word = *word;
            while word != 0 {
                let bit = word.trailing_zeros() as u64;
                word &= word - 1;
                let id = MessageId((page << PAGE_ID_BITS) | (word_index as u64 * 64) | bit);
                let record = match (self.active.get(&id), self.settled.get(&id)) {
                    (Some(resident), _) => Some(resident.meta.clone()),
                    (None, Some(settled)) => settled.meta.clone(),
                    (None, None) => {
                        debug_assert!(false, "dirty message {id} is not resident");
                        continue;
                    }
                };
                records.push((id, record));
            }
        }
        PageChanges { page, records }
    }

    /// Per queue id: how long delivered and dead messages are kept (`None`: until a person acts).
    pub fn retention_table(&self) -> Vec<(Option<u64>, Option<u64>)> {
        (0..self.queues.len() as u32)
            .map(|index| {
                let queue_id = QueueId(index);
                (
                    self.retention_of(queue_id, MessageState::Delivered),
                    self.retention_of(queue_id, MessageState::Dead),
                )
            })
            .collect()
    }

    /// The catalog record of a queue.
    pub fn queue_record(&self, queue_id: QueueId) -> QueueRecord {
        let queue = &self.queues[queue_id.0 as usize];
        QueueRecord {
            name: queue.name.clone(),
            paused: queue.paused,
            settings: queue.settings.clone(),
        }
    }

    /// The catalog holds epoch `epoch` durably: forget the terminal records and history events it
    /// holds, unless they changed again since.
    pub fn checkpoint_durable(&mut self, epoch: u64) {
        debug_assert!(epoch < self.book.epoch, "epoch {epoch} was never snapshotted");
        self.book.durable_epoch = self.book.durable_epoch.max(epoch);
        self.settled.retain(|_, settled| settled.epoch > epoch);
        self.book.revived.retain(|_, revived_epoch| *revived_epoch > epoch);
        while self.book.history_inflight.front().is_some_and(|(first, _)| *first <= epoch) {
            self.book.history_inflight.pop_front();
        }
        while self.book.pages_inflight.front().is_some_and(|(first, _)| *first <= epoch) {
            self.book.pages_inflight.pop_front();
        }
    }

    /// A checkpoint failed: its changes go into the next snapshot again.
    ///
    /// The snapshot's epoch is rolled into the current one, so the records and events it covered
    /// stay in memory until a later checkpoint is durable.
    pub fn checkpoint_failed(&mut self, snapshot: Snapshot) {
        let epoch = self.book.epoch;
        for settled in self.settled.values_mut() {
            if settled.epoch == snapshot.epoch {
                settled.epoch = epoch;
            }
        }
        for revived_epoch in self.book.revived.values_mut() {
            if *revived_epoch == snapshot.epoch {
                *revived_epoch = epoch;
            }
        }
        for page in &snapshot.pages {
            for (id, _) in &page.records {
                self.book.touch(*id);
            }
        }
        self.book.pages_inflight.retain(|(first, _)| *first != snapshot.epoch);
        if let Some(position) =
            self.book.history_inflight.iter().position(|(first, _)| *first == snapshot.epoch)
        {
            let (_, events) = self.book.history_inflight.remove(position).expect("found above");
            for (id, list) in events {
                let current = self.book.history_new.entry(id).or_default();
                let mut merged = list;
                merged.append(current);
                *current = merged;
            }
        }
        self.book.dirty_queues.extend(snapshot.queues.iter().map(|(queue_id, _)| *queue_id));
        self.book.new_keys.splice(0..0, snapshot.new_keys);
        self.book.expiry.extend(snapshot.expiry_hints);
        self.book.rearm_queues.extend(snapshot.rearm_queues);
    }

    /// Restores a queue from the catalog at startup.
    pub fn restore_queue(&mut self, queue_id: QueueId, record: QueueRecord) {
        let index = queue_id.0 as usize;
        while self.queues.len() <= index {
            self.queues.push(QueueState::new(String::new()));
        }
        self.queue_ids.insert(record.name.clone(), queue_id);
        let queue = &mut self.queues[index];
        queue.name = record.name;
        queue.paused = record.paused;
        queue.settings = record.settings;
    }

    /// Restores a queue's dead and delivered counts from the catalog at startup.
    pub fn restore_terminal_counts(&mut self, queue_id: QueueId, counts: TerminalCounts) {
        let queue = &mut self.queues[queue_id.0 as usize];
        queue.counts[MessageState::Dead.index()] = counts.dead;
        queue.counts[MessageState::Delivered.index()] = counts.delivered;
    }

    /// Restores an active message from the catalog at startup: counts it, indexes it and arms its
    /// timer. (Its content is already counted in the restored segment usage.)
    ///
    /// Overdue deadlines are armed as they are and fire on the first `expire_due`, so a message that
    /// was leased when the server stopped becomes available when its lease would have expired.
    ///
    /// Ready messages beyond `ready_resident_max` stay in the catalog, counted as cold.
    pub fn restore_active(&mut self, id: MessageId, meta: MessageMeta) {
        assert!(meta.state.is_active(), "message {id} restored as active is {:?}", meta.state);
        assert!(
            (meta.queue_id.0 as usize) < self.queues.len(),
            "message {id} names queue {} that was not restored",
            meta.queue_id.0
        );
        self.next_id = self.next_id.max(id.0 + 1);
        if meta.state == MessageState::Ready {
            if self.restored_ready >= self.config.ready_resident_max {
                self.restore_cold(id, &meta);
                return;
            }
            self.restored_ready += 1;
        }
        let queue = &mut self.queues[meta.queue_id.0 as usize];
        queue.counts[meta.state.index()] += 1;
        if meta.state == MessageState::Ready {
            queue.ready.insert((Reverse(meta.priority), id));
        }
        queue.members[meta.state.index()].insert(id);
        let timer = meta.state.is_timed().then(|| self.timers.insert(meta.due_at_ms, id.0));
        self.active.insert(id, Resident { meta, timer });
    }

    /// Restores what a log segment holds, from the catalog at startup.
    pub fn restore_segment(&mut self, seq: u32, usage: SegmentUsage) {
        self.book.segments.insert(seq, usage);
    }

    /// Restores an idempotency key at startup; keys past their window are skipped.
    pub fn restore_idempotency(
        &mut self,
        now_ms: u64,
        queue_id: QueueId,
        key: String,
        record: IdempotencyRecord,
    ) {
        if record.created_at_ms.saturating_add(crate::limits::IDEMPOTENCY_WINDOW_MS) <= now_ms {
            return;
        }
        self.idempotency_order.push_back((record.created_at_ms, queue_id, key.clone()));
        self.idempotency.insert((queue_id, key), record);
    }

    /// Restores the id counter and the checkpoint epoch at startup (neither ever goes down).
    pub fn restore_counters(&mut self, next_id: u64, durable_epoch: u64) {
        self.next_id = self.next_id.max(next_id);
        self.book.durable_epoch = durable_epoch;
        self.book.epoch = durable_epoch + 1;
    }

    /// Ends the restore (call once, after the catalog is loaded and before replaying the log):
    /// sorts the idempotency keys by age and forgets what restoring recorded as new.
    pub fn finish_restore(&mut self) {
        self.idempotency_order.make_contiguous().sort_unstable_by_key(|entry| entry.0);
        self.book.dirty.clear();
        self.book.dirty_count = 0;
        self.book.dirty_queues.clear();
        self.book.new_keys.clear();
        self.notices.clear();
        self.woken.clear();
        self.restored_ready = 0;
    }
}

fn terminal_counts(queue: &QueueState) -> TerminalCounts {
    TerminalCounts {
        dead: queue.counts[MessageState::Dead.index()],
        delivered: queue.counts[MessageState::Delivered.index()],
    }
}

impl Settled {
    /// Whether the catalog already holds this record (it was read from there, not changed).
    #[allow(dead_code)]
    pub(super) fn is_clean(&self) -> bool {
        self.epoch == 0
    }
}
