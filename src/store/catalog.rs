//! The catalog: sled, holding the state of every stored message as of the last checkpoint.
//!
//! Everything lives in one sled tree (key layout in `keys.rs`). A checkpoint writes one epoch's
//! changes as one sled batch — changed pages, their indexes, histories, queue records, new
//! idempotency keys, retention notes and the manifest — then flushes sled and fsyncs its files.
//! sled applies a batch atomically, also across a crash, so the catalog is always exactly the
//! state after the log position its manifest names: recovery replays the log from there, applying
//! every op exactly once.
//!
//! Only the checkpoint writer writes the catalog. The storage thread never reads it (a read could
//! wait behind a batch); connection threads read it for what the broker does not hold: dead and
//! delivered messages that did not change since the last checkpoint, their histories, listings.

use super::codec::{self, CodecError, Manifest};
use super::keys;
use super::kv::{Kv, MemoryKv, SledKv, Write};
use super::wal::WalPosition;
use super::StoreError;
use crate::limits::IDEMPOTENCY_WINDOW_MS;
use crate::queue::{
    History, IdempotencyRecord, MessageId, MessageMeta, MessageState, PageChanges, QueueId,
    QueueRecord, SettledView, Snapshot, PAGE_ID_BITS,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the data directory's catalog folder.
pub const CATALOG_DIR: &str = "catalog";

/// The catalog: the key layout of `keys.rs` over an ordered key-value store (sled on disk).
pub struct Catalog {
    kv: Box<dyn Kv>,
    dir: PathBuf,
}

/// One checkpoint's work: a snapshot of the broker's changes, the log position it was taken at,
/// and what the storage thread adds to it.
#[derive(Debug, Default)]
pub struct CheckpointJob {
    pub snapshot: Snapshot,
    /// The catalog will hold exactly the effect of the log before this position.
    pub position: WalPosition,
    /// The wall clock when the job was made (ages out idempotency keys, dates re-armed notes).
    pub now_ms: u64,
    /// Retention notes the sweep handled: deleted.
    pub expiry_done: Vec<(u64, u64)>,
    /// Retention notes to add (for messages whose retention ends later than their note said).
    pub expiry_added: Vec<(u64, u64)>,
    /// Contents moved out of the log into the catalog.
    pub moved_contents: Vec<(MessageId, Vec<u8>)>,
}

/// What a checkpoint wrote, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    pub page_count: usize,
    pub record_count: usize,
    pub batch_bytes: u64,
}

/// What the retention sweep found in the catalog at one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepBatch {
    /// The durable epoch the catalog was read at: the candidates are current only if the broker
    /// still holds that epoch.
    pub epoch: u64,
    /// Terminal messages whose retention has passed, as the catalog holds them.
    pub candidates: Vec<(MessageId, MessageMeta)>,
    /// The retention notes read (to delete once the candidates are handled).
    pub done: Vec<(u64, u64)>,
    /// Notes for the pages' messages whose retention ends later.
    pub added: Vec<(u64, u64)>,
}

fn corrupt(what: String) -> impl FnOnce(CodecError) -> StoreError {
    move |source| StoreError::Corrupt { what, source }
}

fn corrupt_key(kind: &str, key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        what: format!("{kind} key {key:02x?}"),
        source: CodecError::TooShort { length: key.len() },
    }
}

fn count_value(value: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(value.try_into().ok()?))
}

/// Message records, by id.
pub type Records = Vec<(MessageId, MessageMeta)>;

/// The writes of one checkpoint, with their size.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    bytes: u64,
}

impl Batch {
    fn insert(&mut self, key: &[u8], value: Vec<u8>) {
        self.bytes += (key.len() + value.len()) as u64;
        self.writes.push((key.to_vec(), Some(value)));
    }

    fn remove(&mut self, key: &[u8]) {
        self.writes.push((key.to_vec(), None));
    }
}

impl Catalog {
    /// Opens (creating if absent) the catalog under `data_dir/catalog`.
    pub fn open(data_dir: &Path) -> Result<Catalog, StoreError> {
        let dir = data_dir.join(CATALOG_DIR);
        Ok(Catalog { kv: Box::new(SledKv::open(&dir)?), dir })
    }

    /// A catalog in memory (tests, simulation, fuzzing): the same code over a `BTreeMap`.
    pub fn in_memory() -> Catalog {
        Catalog { kv: Box::new(MemoryKv::default()), dir: PathBuf::new() }
    }

    /// Visits the entries of one key kind in key order.
    fn scan_kind(
        &self,
        kind: u8,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let (start, end) = keys::kind_range(kind);
        self.kv.scan(&start, &end, false, &mut visit)
    }

    /// The manifest of the last checkpoint, if any was taken.
    pub fn manifest(&self) -> Result<Option<Manifest>, StoreError> {
        let Some(bytes) = self.kv.get(keys::MANIFEST_KEY)? else { return Ok(None) };
        codec::decode_manifest(&bytes).map(Some).map_err(corrupt("the catalog manifest".into()))
    }

    /// The records of a page, by id (empty when the page does not exist).
    pub fn page(&self, page: u64) -> Result<Vec<(MessageId, MessageMeta)>, StoreError> {
        let Some(bytes) = self.kv.get(&keys::page_key(page))? else { return Ok(Vec::new()) };
        codec::decode_page(page, &bytes).map_err(corrupt(format!(
            "catalog page {page} (messages {:016x} to {:016x})",
            page << PAGE_ID_BITS,
            ((page + 1) << PAGE_ID_BITS) - 1
        )))
    }

    /// A message's record as of the last checkpoint.
    pub fn meta(&self, id: MessageId) -> Result<Option<MessageMeta>, StoreError> {
        let records = self.page(crate::queue::page_of(id))?;
        Ok(records
            .binary_search_by_key(&id, |(record_id, _)| *record_id)
            .ok()
            .map(|index| records[index].1.clone()))
    }

    /// A message's recorded history as of the last checkpoint.
    pub fn history(&self, id: MessageId) -> Result<Option<History>, StoreError> {
        let Some(bytes) = self.kv.get(&keys::history_key(id))? else { return Ok(None) };
        codec::decode_history(&bytes).map(Some).map_err(corrupt(format!("history of message {id}")))
    }

    /// A content kept in the catalog (moved out of the log).
    pub fn content(&self, id: MessageId) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(&keys::content_key(id))
    }

    /// Visits every queue record, in id order.
    pub fn for_each_queue(
        &self,
        mut visit: impl FnMut(QueueId, QueueRecord),
    ) -> Result<(), StoreError> {
        self.scan_kind(keys::QUEUE, |key, value| {
            let queue_id = keys::decode_queue_key(key).ok_or_else(|| corrupt_key("queue", key))?;
            let record =
                codec::decode_queue(value).map_err(corrupt(format!("queue {}", queue_id.0)))?;
            visit(queue_id, record);
            Ok(true)
        })
    }

    /// Visits every active message (the pages the `a` index names), in id order; returns how
    /// many pages it read and how many damaged ones it set aside.
    ///
    /// A damaged page stops the visit with an error naming it, unless `quarantine`: then it is
    /// moved to the `x` kind byte for byte (its messages no longer exist for the server), logged,
    /// and the visit goes on.
    pub fn for_each_active(
        &self,
        quarantine: bool,
        mut visit: impl FnMut(MessageId, MessageMeta),
    ) -> Result<(u64, u64), StoreError> {
        let mut pages = Vec::new();
        self.scan_kind(keys::ACTIVE, |key, _| {
            pages.push(keys::decode_active_key(key).ok_or_else(|| corrupt_key("active", key))?);
            Ok(true)
        })?;
        let mut quarantined_count = 0;
        for page in &pages {
            let records = match self.page(*page) {
                Ok(records) => records,
                Err(StoreError::Corrupt { what, source }) if quarantine => {
                    tracing::error!(%what, error = %source, "quarantined a damaged catalog page");
                    self.quarantine_page(*page)?;
                    quarantined_count += 1;
                    continue;
                }
                Err(error) => return Err(error),
            };
            for (id, meta) in records {
                if meta.state.is_active() {
                    visit(id, meta);
                }
            }
        }
        Ok((pages.len() as u64, quarantined_count))
    }

    /// Moves a damaged page aside (`x` kind) with its index entries.
    fn quarantine_page(&self, page: u64) -> Result<(), StoreError> {
        let Some(bytes) = self.kv.get(&keys::page_key(page))? else { return Ok(()) };
        let writes = vec![
            (keys::quarantine_key(page).to_vec(), Some(bytes)),
            (keys::page_key(page).to_vec(), None),
            (keys::active_key(page).to_vec(), None),
        ];
        self.kv.apply(writes)?;
        self.kv.make_durable()
    }

    /// Visits every idempotency key created at or after `since_ms`.
    pub fn for_each_idempotency(
        &self,
        since_ms: u64,
        mut visit: impl FnMut(QueueId, String, IdempotencyRecord),
    ) -> Result<(), StoreError> {
        let start = keys::idempotency_key(since_ms, QueueId(0), "");
        let (_, end) = keys::kind_range(keys::IDEMPOTENCY);
        self.kv.scan(&start, &end, false, &mut |key, value| {
            let (_, queue_id, name) =
                keys::decode_idempotency_key(key).ok_or_else(|| corrupt_key("idempotency", key))?;
            let record = codec::decode_idempotency(value)
                .map_err(corrupt(format!("idempotency key {name:?}")))?;
            visit(queue_id, name, record);
            Ok(true)
        })
    }

    /// Up to `limit` dead or delivered messages of a queue after (or before, when `descending`)
    /// the cursor id, in id order, with what the broker holds merged in (`view`: its records win,
    /// and messages it holds in another state or removed are left out).
    pub fn list_terminal(
        &self,
        queue_id: QueueId,
        state: MessageState,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
        view: &SettledView,
    ) -> Result<Vec<(MessageId, MessageMeta)>, StoreError> {
        let in_range = |id: MessageId| match (after, descending) {
            (None, _) => true,
            (Some(cursor), false) => id > cursor,
            (Some(cursor), true) => id < cursor,
        };
        let overridden = |id: &MessageId| {
            view.elsewhere.binary_search(id).is_ok()
                || view.in_state.binary_search_by_key(id, |(held, _)| *held).is_ok()
        };
        let mut found: Vec<(MessageId, MessageMeta)> = Vec::new();
        let cursor_page = after.map(|cursor| cursor.0 >> PAGE_ID_BITS);
        let (start, end) = match (cursor_page, descending) {
            (Some(page), false) => (page, u64::MAX),
            (Some(page), true) => (0, page),
            (None, _) => (0, u64::MAX),
        };
        let start = keys::terminal_key(queue_id, state, start);
        // Inclusive of the end page: the key after it is the next (queue, state) prefix's first.
        let mut end = keys::terminal_key(queue_id, state, end).to_vec();
        end.push(0);
        let mut pages = Vec::new();
        self.kv.scan(&start, &end, descending, &mut |key, _| {
            let page = keys::decode_terminal_key(key, queue_id, state)
                .ok_or_else(|| corrupt_key("terminal", key))?;
            pages.push(page);
            Ok(pages.len() < PAGES_PER_LISTING_MAX)
        })?;
        for page in pages {
            if found.len() >= limit {
                break;
            }
            let mut records: Vec<(MessageId, MessageMeta)> = self
                .page(page)?
                .into_iter()
                .filter(|(id, meta)| {
                    meta.queue_id == queue_id
                        && meta.state == state
                        && in_range(*id)
                        && !overridden(id)
                })
                .collect();
            if descending {
                records.reverse();
            }
            found.extend(records);
        }
        found.truncate(limit);
        let held = view.in_state.iter().filter(|(id, _)| in_range(*id)).cloned();
        found.extend(held);
        if descending {
            found.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
        } else {
            found.sort_unstable_by_key(|(id, _)| *id);
        }
        found.truncate(limit);
        Ok(found)
    }

    /// The dead and delivered messages whose content is in log segment `segment`, among the
    /// pages `first_page..=last_page` (at most `page_limit` pages are read); also returns the next
    /// page to look at when it stopped early.
    pub fn contents_in(
        &self,
        segment: u32,
        first_page: u64,
        last_page: u64,
        page_limit: usize,
    ) -> Result<(Records, Option<u64>), StoreError> {
        let mut pages = Vec::new();
        let start = keys::page_key(first_page);
        let end = keys::page_key(last_page.saturating_add(1));
        let mut next = None;
        self.kv.scan(&start, &end, false, &mut |key, _| {
            let page = keys::decode_page_key(key).ok_or_else(|| corrupt_key("page", key))?;
            if pages.len() == page_limit {
                next = Some(page);
                return Ok(false);
            }
            pages.push(page);
            Ok(true)
        })?;
        let mut found = Vec::new();
        for page in pages {
            for (id, meta) in self.page(page)? {
                if !meta.state.is_active() && meta.content.segment() == Some(segment) {
                    found.push((id, meta));
                }
            }
        }
        Ok((found, next))
    }

    /// Finds the retained messages whose retention has passed, from the notes due at `now_ms`
    /// (at most `page_limit` pages). `retention` is, per queue id, the retention of delivered and
    /// of dead messages.
    pub fn sweep(
        &self,
        now_ms: u64,
        retention: &[(Option<u64>, Option<u64>)],
        page_limit: usize,
        epoch: u64,
    ) -> Result<SweepBatch, StoreError> {
        let mut batch = SweepBatch { epoch, ..SweepBatch::default() };
        let (start, _) = keys::kind_range(keys::EXPIRY);
        let end = keys::expiry_key(now_ms.saturating_add(1), 0);
        let mut due = Vec::new();
        self.kv.scan(&start, &end, false, &mut |key, _| {
            due.push(keys::decode_expiry_key(key).ok_or_else(|| corrupt_key("expiry", key))?);
            Ok(due.len() < page_limit)
        })?;
        for (at_ms, page) in due {
            batch.done.push((at_ms, page));
            let mut later_ms = None::<u64>;
            for (id, meta) in self.page(page)? {
                let retention_ms =
                    retention.get(meta.queue_id.0 as usize).and_then(|queue| match meta.state {
                        MessageState::Delivered => queue.0,
                        MessageState::Dead => queue.1,
                        _ => None,
                    });
                let Some(retention_ms) = retention_ms else { continue };
                let remove_at_ms = meta.updated_at_ms.saturating_add(retention_ms);
                if remove_at_ms <= now_ms {
                    batch.candidates.push((id, meta));
                } else {
                    later_ms = Some(later_ms.map_or(remove_at_ms, |at| at.min(remove_at_ms)));
                }
            }
            if let Some(later_ms) = later_ms {
                batch.added.push((later_ms.div_ceil(1000).saturating_mul(1000), page));
            }
        }
        Ok(batch)
    }

    /// Writes one checkpoint: the job's changes and its manifest, as one atomic batch, then makes
    /// everything durable (sled's flush does not fsync, so every file under the catalog is
    /// fsynced after it).
    pub fn write_checkpoint(&self, job: &CheckpointJob) -> Result<CheckpointStats, StoreError> {
        let mut batch = Batch::default();
        let snapshot = &job.snapshot;
        let mut stats = CheckpointStats::default();
        for changes in &snapshot.pages {
            stats.page_count += 1;
            stats.record_count += changes.records.len();
            self.write_page(&mut batch, changes)?;
        }
        for (id, events) in &snapshot.histories {
            let mut history = match self.history(*id) {
                Ok(history) => history.unwrap_or_default(),
                Err(StoreError::Corrupt { what, source }) => {
                    // Losing old history events beats refusing every checkpoint after.
                    tracing::error!(%what, error = %source, "replacing a damaged history record");
                    History::default()
                }
                Err(error) => return Err(error),
            };
            for event in events {
                history.record(event.clone(), snapshot.history_keep_count as usize);
            }
            batch.insert(&keys::history_key(*id), codec::encode_history(&history));
        }
        for (id, content) in &job.moved_contents {
            batch.insert(&keys::content_key(*id), content.clone());
        }
        for (queue_id, record) in &snapshot.queues {
            batch.insert(&keys::queue_key(*queue_id), codec::encode_queue(record));
        }
        for (queue_id, key, record) in &snapshot.new_keys {
            let catalog_key = keys::idempotency_key(record.created_at_ms, *queue_id, key);
            batch.insert(&catalog_key, codec::encode_idempotency(record));
        }
        self.forget_idempotency(&mut batch, job.now_ms)?;
        // The notes the sweep handled go first: a note this checkpoint writes may have the same
        // key (the same second and page), and it must stay.
        for (at_ms, page) in &job.expiry_done {
            batch.remove(&keys::expiry_key(*at_ms, *page));
        }
        let now_bucket_ms = job.now_ms.div_ceil(1000).saturating_mul(1000);
        for queue_id in &snapshot.rearm_queues {
            // The pages the catalog lists for the queue, and those this checkpoint writes (a
            // message may have become dead or delivered since the last one).
            let mut pages = std::collections::BTreeSet::new();
            for state in [MessageState::Dead, MessageState::Delivered] {
                pages.extend(self.terminal_pages(*queue_id, state)?);
            }
            for changes in &snapshot.pages {
                let holds = changes.records.iter().any(|(_, record)| {
                    record
                        .as_ref()
                        .is_some_and(|meta| meta.queue_id == *queue_id && !meta.state.is_active())
                });
                if holds {
                    pages.insert(changes.page);
                }
            }
            for page in pages {
                batch.insert(&keys::expiry_key(now_bucket_ms, page), Vec::new());
            }
        }
        for (at_ms, page) in snapshot.expiry_hints.iter().chain(&job.expiry_added) {
            batch.insert(&keys::expiry_key(*at_ms, *page), Vec::new());
        }
        let manifest = Manifest {
            epoch: snapshot.epoch,
            position: job.position,
            next_id: snapshot.next_id,
            terminal_counts: snapshot.terminal_counts.clone(),
            segments: snapshot.segments.clone(),
        };
        batch.insert(keys::MANIFEST_KEY, codec::encode_manifest(&manifest));
        stats.batch_bytes = batch.bytes;
        self.kv.apply(batch.writes)?;
        self.kv.make_durable()?;
        Ok(stats)
    }

    /// Merges one page's changes into the stored page and adds its writes to the batch.
    fn write_page(&self, batch: &mut Batch, changes: &PageChanges) -> Result<(), StoreError> {
        let page = changes.page;
        let old = self.page(page)?;
        let mut merged: BTreeMap<MessageId, MessageMeta> = old.iter().cloned().collect();
        for (id, record) in &changes.records {
            let previous = match record {
                Some(meta) => merged.insert(*id, meta.clone()),
                None => merged.remove(id),
            };
            let Some(previous) = previous else { continue };
            if record.is_none() && previous.event_seq > 0 {
                batch.remove(&keys::history_key(*id));
            }
            let kept_in_catalog = record.as_ref().is_some_and(|meta| {
                matches!(meta.content, crate::queue::ContentLocation::Catalog { .. })
            });
            if matches!(previous.content, crate::queue::ContentLocation::Catalog { .. })
                && !kept_in_catalog
            {
                batch.remove(&keys::content_key(*id));
            }
        }
        let records: Vec<(MessageId, MessageMeta)> = merged.into_iter().collect();
        if records.is_empty() {
            batch.remove(&keys::page_key(page));
        } else {
            batch.insert(&keys::page_key(page), codec::encode_page(page, &records));
        }
        let count_of = |records: &[(MessageId, MessageMeta)]| {
            let mut active = 0u32;
            let mut terminal: BTreeMap<(QueueId, u8), u32> = BTreeMap::new();
            for (_, meta) in records {
                if meta.state.is_active() {
                    active += 1;
                } else {
                    *terminal.entry((meta.queue_id, meta.state as u8)).or_default() += 1;
                }
            }
            (active, terminal)
        };
        let (old_active, old_terminal) = count_of(&old);
        let (new_active, new_terminal) = count_of(&records);
        if new_active > 0 {
            batch.insert(&keys::active_key(page), new_active.to_le_bytes().to_vec());
        } else if old_active > 0 {
            batch.remove(&keys::active_key(page));
        }
        let state_of = |byte: u8| {
            crate::queue::ALL_STATES.into_iter().find(|state| *state as u8 == byte).expect("state")
        };
        for (queue_id, state) in old_terminal.keys() {
            if !new_terminal.contains_key(&(*queue_id, *state)) {
                batch.remove(&keys::terminal_key(*queue_id, state_of(*state), page));
            }
        }
        for ((queue_id, state), count) in new_terminal {
            if old_terminal.get(&(queue_id, state)) != Some(&count) {
                let key = keys::terminal_key(queue_id, state_of(state), page);
                batch.insert(&key, count.to_le_bytes().to_vec());
            }
        }
        Ok(())
    }

    /// The pages holding a queue's messages in a (dead or delivered) state.
    fn terminal_pages(
        &self,
        queue_id: QueueId,
        state: MessageState,
    ) -> Result<Vec<u64>, StoreError> {
        let start = keys::terminal_key(queue_id, state, 0);
        let mut end = keys::terminal_key(queue_id, state, u64::MAX).to_vec();
        end.push(0);
        let mut pages = Vec::new();
        self.kv.scan(&start, &end, false, &mut |key, value| {
            let page = keys::decode_terminal_key(key, queue_id, state)
                .ok_or_else(|| corrupt_key("terminal", key))?;
            if count_value(value).is_none_or(|count| count > 0) {
                pages.push(page);
            }
            Ok(true)
        })?;
        Ok(pages)
    }

    /// Deletes idempotency keys whose window passed.
    fn forget_idempotency(&self, batch: &mut Batch, now_ms: u64) -> Result<(), StoreError> {
        let (start, _) = keys::kind_range(keys::IDEMPOTENCY);
        let end =
            keys::idempotency_key(now_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS), QueueId(0), "");
        self.kv.scan(&start, &end, false, &mut |key, _| {
            batch.remove(key);
            Ok(true)
        })
    }

    /// Bytes on disk under the catalog directory.
    pub fn disk_bytes(&self) -> u64 {
        self.kv.disk_bytes()
    }

    /// The catalog directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Visits every key and value, in key order (backups copy the catalog this way).
    pub fn for_each_entry(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.kv.scan(&[], &[u8::MAX], false, &mut |key, value| {
            visit(key, value)?;
            Ok(true)
        })
    }

    /// Writes raw entries (restore writes a backup's catalog this way) as one batch.
    pub fn insert_raw(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        self.kv.apply(entries.into_iter().map(|(key, value)| (key, Some(value))).collect())
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.kv.make_durable()
    }

    /// Writes raw bytes under a key, bypassing the codec: tests use it to plant damaged records.
    #[cfg(feature = "testing")]
    pub fn put_raw(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.kv.apply(vec![(key.to_vec(), Some(value.to_vec()))])?;
        self.kv.make_durable()
    }
}

/// Pages of `t` entries one listing reads at most before it stops (each page holds at most 256
/// messages; a listing returns at most 1000).
const PAGES_PER_LISTING_MAX: usize = 4096;
