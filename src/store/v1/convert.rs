//! Converting a data directory of the first storage format, at the first start on it.
//!
//! The state the first format holds (its sled trees with its log after the checkpoint applied in
//! memory, see [`V1Store`]) is written as catalog checkpoints into a work folder inside the data
//! directory: pages of message records with their leases, deadlines, nonces, attempts and history
//! counts as they were, histories, queue records, the idempotency keys still in their window, the
//! next id, each queue's dead and delivered counts, and retention notes for every page of dead or
//! delivered messages (the first sweep looks at them). Message contents are kept in the catalog
//! (`ContentLocation::Catalog`), so the new log starts empty and the catalog is exact up to its
//! very start. The first open of the result is an ordinary recovery.
//!
//! Crash safety: nothing of the old files is changed until the new catalog is complete and
//! durable; then one rename moves it into place, and only after that are `sled/` and `wal/` moved
//! into `format-1/`. A crash before the rename leaves the directory of the first format, the work
//! folder is deleted and the conversion starts over at the next start; a crash after it leaves a
//! directory of the current format, and the next start finishes moving the old files aside.

use super::{V1Store, KEPT_DIR, SLED_DIR, WAL_DIR};
use crate::limits::IDEMPOTENCY_WINDOW_MS;
use crate::queue::{
    page_of, ContentLocation, MessageId, MessageMeta, PageChanges, QueueId, Snapshot,
    TerminalCounts, ALL_STATES,
};
use crate::store::catalog::{Catalog, CheckpointJob, CATALOG_DIR};
use crate::store::codec::{encode_content, ContentRef};
use crate::store::wal::WalPosition;
use crate::store::StoreError;
use std::path::Path;

/// The work folder a conversion builds the new catalog in.
const WORK_DIR: &str = ".converting-format-1";
/// Most catalog pages (256 ids each) one checkpoint of a conversion writes.
const CHUNK_PAGE_COUNT_MAX: usize = 64;
/// Most content bytes one checkpoint of a conversion writes (its sled batch is held in memory).
const CHUNK_CONTENT_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// What a conversion converted, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversionSummary {
    pub queue_count: u64,
    pub message_count: u64,
    /// Messages per state, indexed by `MessageState::index()`.
    pub state_counts: [u64; 6],
    pub history_count: u64,
    /// Idempotency keys carried over (those still in their window).
    pub key_count: u64,
    pub content_bytes: u64,
    /// Frames of the old log after its checkpoint, applied before converting.
    pub replayed_frame_count: u64,
}

/// Converts `data_dir` if it holds the first storage format, and finishes a conversion that a
/// crash interrupted after its new catalog was in place. Logs what it did.
pub fn convert_if_needed(
    data_dir: &Path,
    now_ms: u64,
) -> Result<Option<ConversionSummary>, StoreError> {
    if crate::store::is_old_format(data_dir) {
        let started = std::time::Instant::now();
        let summary = convert(data_dir, now_ms)?;
        crash_point("convert.after_switch");
        keep_aside(data_dir)?;
        log_summary(data_dir, &summary, started.elapsed());
        return Ok(Some(summary));
    }
    let catalog_exists = data_dir.join(CATALOG_DIR).join("db").exists();
    let left = data_dir.join(SLED_DIR).exists() || data_dir.join(WAL_DIR).exists();
    if catalog_exists && left {
        keep_aside(data_dir)?;
        tracing::info!(
            kept = %data_dir.join(KEPT_DIR).display(),
            "finished a conversion of the first storage format that was interrupted after the \
             new catalog was in place: moved its old files aside; they can be deleted once the \
             conversion is verified"
        );
    }
    Ok(None)
}

fn log_summary(data_dir: &Path, summary: &ConversionSummary, elapsed: std::time::Duration) {
    let states: Vec<String> = ALL_STATES
        .iter()
        .map(|state| format!("{} {}", summary.state_counts[state.index()], state.name()))
        .collect();
    tracing::info!(
        data_dir = %data_dir.display(),
        kept = %data_dir.join(KEPT_DIR).display(),
        elapsed_ms = elapsed.as_millis() as u64,
        "converted a data directory of the first storage format: {} messages ({}) in {} queues, \
         {} histories, {} idempotency keys, {} content bytes, {} frames of its log replayed first; \
         the old files are kept in {} and can be deleted once the conversion is verified (for \
         example with `outboxd check` on a backup)",
        summary.message_count,
        states.join(", "),
        summary.queue_count,
        summary.history_count,
        summary.key_count,
        summary.content_bytes,
        summary.replayed_frame_count,
        data_dir.join(KEPT_DIR).display(),
    );
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|file| file.sync_all()).map_err(io_error(dir))
}

/// Builds the catalog in the work folder and moves it into place.
fn convert(data_dir: &Path, now_ms: u64) -> Result<ConversionSummary, StoreError> {
    let work = data_dir.join(WORK_DIR);
    if work.exists() {
        // Left by a conversion a crash interrupted before its catalog was in place.
        std::fs::remove_dir_all(&work).map_err(io_error(&work))?;
    }
    std::fs::create_dir_all(&work).map_err(io_error(&work))?;
    let old = V1Store::open(data_dir)?;
    let mut builder = Builder::new(Catalog::open(&work)?, now_ms, old.replayed_frame_count);
    let queues = old.queues()?;
    builder.summary.queue_count = queues.len() as u64;
    let queue_count = queues.last().map_or(0, |(queue_id, _)| queue_id.0 as usize + 1);
    builder.terminal_counts = vec![TerminalCounts::default(); queue_count];
    old.for_each_meta(|id, meta| builder.add(&old, id, meta))?;
    builder.write_chunk()?;
    let window_start_ms = now_ms.saturating_sub(IDEMPOTENCY_WINDOW_MS);
    let keys: Vec<_> = old
        .idempotency_keys()?
        .into_iter()
        .filter(|(_, _, record)| record.created_at_ms >= window_start_ms)
        .collect();
    builder.summary.key_count = keys.len() as u64;
    let rearm_queues = (0..queue_count as u32)
        .map(QueueId)
        .filter(|queue_id| {
            let counts = builder.terminal_counts[queue_id.0 as usize];
            counts.dead + counts.delivered > 0
        })
        .collect();
    let next_id = old.next_id()?.max(builder.next_id);
    let snapshot =
        Snapshot { queues, new_keys: keys, next_id, rearm_queues, ..Snapshot::default() };
    builder.write(snapshot, Vec::new())?;
    let summary = builder.summary.clone();
    drop(builder);
    drop(old);
    crate::store::wait_until_released(&work)?;
    crash_point("convert.before_switch");
    let built = work.join(CATALOG_DIR);
    let target = data_dir.join(CATALOG_DIR);
    if target.exists() {
        // An empty catalog folder (without its `db`) a failed start may have left.
        std::fs::remove_dir_all(&target).map_err(io_error(&target))?;
    }
    std::fs::rename(&built, &target).map_err(io_error(&target))?;
    sync_dir(data_dir)?;
    Ok(summary)
}

/// Moves the first format's `sled/` and `wal/` into `format-1/`, then removes the work folder.
fn keep_aside(data_dir: &Path) -> Result<(), StoreError> {
    let kept = data_dir.join(KEPT_DIR);
    std::fs::create_dir_all(&kept).map_err(io_error(&kept))?;
    for name in [SLED_DIR, WAL_DIR] {
        let from = data_dir.join(name);
        let to = kept.join(name);
        if from.exists() && !to.exists() {
            std::fs::rename(&from, &to).map_err(io_error(&to))?;
        }
    }
    sync_dir(&kept)?;
    let work = data_dir.join(WORK_DIR);
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io_error(&work))?;
    }
    sync_dir(data_dir)
}

/// Gathers converted records into catalog checkpoints of bounded size.
struct Builder {
    catalog: Catalog,
    now_ms: u64,
    epoch: u64,
    pages: Vec<PageChanges>,
    histories: Vec<(MessageId, Vec<crate::queue::HistoryEvent>)>,
    contents: Vec<(MessageId, Vec<u8>)>,
    content_bytes: u64,
    terminal_counts: Vec<TerminalCounts>,
    next_id: u64,
    summary: ConversionSummary,
}

impl Builder {
    fn new(catalog: Catalog, now_ms: u64, replayed_frame_count: u64) -> Builder {
        Builder {
            catalog,
            now_ms,
            epoch: 0,
            pages: Vec::new(),
            histories: Vec::new(),
            contents: Vec::new(),
            content_bytes: 0,
            terminal_counts: Vec::new(),
            next_id: 0,
            summary: ConversionSummary { replayed_frame_count, ..ConversionSummary::default() },
        }
    }

    /// Adds one message: its record, content and history.
    fn add(&mut self, old: &V1Store, id: MessageId, meta: super::MetaV1) -> Result<(), StoreError> {
        let Some(content) = old.content(id)? else {
            return Err(StoreError::Corrupt {
                what: format!("first-format message {id}: it has a record but no content"),
                source: crate::store::codec::CodecError::TooShort { length: 0 },
            });
        };
        let encoded = encode_content(&ContentRef {
            headers: &content.headers,
            body_kind: content.body_kind,
            body: &content.body,
        });
        let len = u32::try_from(encoded.len()).expect("message contents are far below 4 GiB");
        let meta = MessageMeta {
            queue_id: meta.queue_id,
            state: meta.state,
            priority: meta.priority,
            attempt_count: meta.attempt_count,
            attempt_count_max: meta.attempt_count_max,
            enqueued_at_ms: meta.enqueued_at_ms,
            updated_at_ms: meta.updated_at_ms,
            due_at_ms: meta.due_at_ms,
            lease_nonce: meta.lease_nonce,
            leased_at_ms: meta.leased_at_ms,
            event_seq: meta.event_seq,
            content: ContentLocation::Catalog { len },
        };
        let Some(counts) = self.terminal_counts.get_mut(meta.queue_id.0 as usize) else {
            return Err(StoreError::Corrupt {
                what: format!(
                    "first-format message {id}: its queue {} has no record",
                    meta.queue_id.0
                ),
                source: crate::store::codec::CodecError::TooShort { length: 0 },
            });
        };
        match meta.state {
            crate::queue::MessageState::Dead => counts.dead += 1,
            crate::queue::MessageState::Delivered => counts.delivered += 1,
            _ => {}
        }
        if let Some(history) = old.history(id)? {
            if !history.events.is_empty() {
                self.summary.history_count += 1;
                self.histories.push((id, history.events));
            }
        }
        self.summary.message_count += 1;
        self.summary.state_counts[meta.state.index()] += 1;
        self.summary.content_bytes += u64::from(len);
        self.next_id = self.next_id.max(id.0 + 1);
        let page = page_of(id);
        if self.pages.last().is_none_or(|last| last.page != page) {
            if self.pages.len() >= CHUNK_PAGE_COUNT_MAX
                || self.content_bytes >= CHUNK_CONTENT_BYTES_MAX
            {
                self.write_chunk()?;
            }
            self.pages.push(PageChanges { page, records: Vec::new() });
        }
        self.pages.last_mut().expect("pushed above").records.push((id, Some(meta)));
        self.content_bytes += u64::from(len);
        self.contents.push((id, encoded));
        Ok(())
    }

    /// Writes the pages, histories and contents gathered so far as one checkpoint.
    fn write_chunk(&mut self) -> Result<(), StoreError> {
        if self.pages.is_empty() {
            return Ok(());
        }
        let snapshot = Snapshot {
            pages: std::mem::take(&mut self.pages),
            histories: std::mem::take(&mut self.histories),
            ..Snapshot::default()
        };
        let contents = std::mem::take(&mut self.contents);
        self.content_bytes = 0;
        self.write(snapshot, contents)?;
        if self.epoch == 1 {
            crash_point("convert.halfway");
        }
        Ok(())
    }

    /// Writes one checkpoint; the builder fills in what every one carries.
    fn write(
        &mut self,
        mut snapshot: Snapshot,
        moved_contents: Vec<(MessageId, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        self.epoch += 1;
        snapshot.epoch = self.epoch;
        // The first format kept at most its configured count; nothing more is trimmed here.
        snapshot.history_keep_count = u32::MAX;
        snapshot.next_id = snapshot.next_id.max(self.next_id);
        snapshot.terminal_counts = self.terminal_counts.clone();
        let job = CheckpointJob {
            snapshot,
            position: WalPosition::START,
            now_ms: self.now_ms,
            moved_contents,
            ..CheckpointJob::default()
        };
        self.catalog.write_checkpoint(&job)?;
        Ok(())
    }
}

/// Kills the process at a named point of a conversion when `OUTBOXD_CONVERT_CRASH_AT` names it
/// (test builds): the conversion tests interrupt it there.
#[cfg(feature = "testing")]
fn crash_point(name: &str) {
    if std::env::var("OUTBOXD_CONVERT_CRASH_AT").is_ok_and(|at| at == name) {
        eprintln!("crash injected at {name}");
        std::process::abort();
    }
}

#[cfg(not(feature = "testing"))]
#[inline(always)]
fn crash_point(_name: &str) {}
