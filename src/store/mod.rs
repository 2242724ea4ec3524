//! The store: sled trees holding the materialized state, behind the write-ahead log.
//!
//! This is the only module that touches sled. The WAL (`wal.rs`) is the durability point: a change
//! reaches sled only after its WAL frame was synced, so sled may lag the WAL but never lead it.
//! sled's own flush does not fsync (it ends in `sync_file_range`), so [`Store::checkpoint`] flushes
//! sled, fsyncs every file under its directory (blobs included) and only then may the WAL segments
//! it covers be deleted. Recovery (`recovery.rs`) replays the WAL from the last checkpoint.

pub mod codec;
pub mod keys;
pub mod recovery;
pub mod wal;
pub mod writer;

use crate::queue::{
    Change, History, IdempotencyRecord, MessageContent, MessageId, MessageMeta, MessageState,
};
use crate::queue::{QueueId, QueueRecord};
use codec::CodecError;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use wal::WalPosition;

/// sled's segment size, its largest (sled refuses more than 16 MiB). sled writes a value larger than
/// a quarter of a segment (4 MiB) to a separate blob file instead of its log; messages up to the
/// default 1 MiB limit stay inline. Blob files are fsynced by checkpoints like everything else.
pub const SLED_SEGMENT_BYTES: usize = 16 * 1024 * 1024;
/// sled's page cache budget.
pub const SLED_CACHE_BYTES: u64 = 128 * 1024 * 1024;

/// A failure of the store.
#[derive(Debug)]
pub enum StoreError {
    /// sled reported an error (I/O, or its own corruption check).
    Sled(sled::Error),
    /// A file-system operation on the data directory failed.
    Io { path: PathBuf, source: std::io::Error },
    /// A stored record failed its crc or did not decode; `what` names the tree and key.
    Corrupt { what: String, source: CodecError },
    /// The WAL failed or is corrupt.
    Wal(wal::WalError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sled(error) => write!(f, "sled: {error}"),
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Corrupt { what, source } if what.starts_with("meta of message") => write!(
                f,
                "corrupt record {what}: {source} (restore the data directory from a backup, or \
                 start with --quarantine-corrupt to set damaged message records aside)"
            ),
            StoreError::Corrupt { what, source } => write!(
                f,
                "corrupt record {what}: {source} (restore the data directory from a backup)"
            ),
            StoreError::Wal(error) => write!(f, "write-ahead log: {error}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Sled(error) => Some(error),
            StoreError::Io { source, .. } => Some(source),
            StoreError::Corrupt { source, .. } => Some(source),
            StoreError::Wal(error) => Some(error),
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Sled(error)
    }
}

impl From<wal::WalError> for StoreError {
    fn from(error: wal::WalError) -> Self {
        StoreError::Wal(error)
    }
}

/// The sled database and its trees.
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    content: sled::Tree,
    history: sled::Tree,
    queues: sled::Tree,
    terminal: sled::Tree,
    expiry: sled::Tree,
    /// Damaged records set aside by `--quarantine-corrupt`, kept byte for byte for inspection.
    quarantine: sled::Tree,
    idempotency: sled::Tree,
    system: sled::Tree,
    sled_dir: PathBuf,
}

impl Store {
    /// Opens (creating if absent) the sled database under `data_dir/sled`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let sled_dir = data_dir.join("sled");
        let db = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .segment_size(SLED_SEGMENT_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(Some(1000))
            .open()?;
        Ok(Store {
            meta: db.open_tree("meta")?,
            content: db.open_tree("content")?,
            history: db.open_tree("history")?,
            queues: db.open_tree("queues")?,
            terminal: db.open_tree("terminal")?,
            expiry: db.open_tree("expiry")?,
            quarantine: db.open_tree("quarantine")?,
            idempotency: db.open_tree("idempotency")?,
            system: db.open_tree("system")?,
            db,
            sled_dir,
        })
    }

    /// Applies changes that the WAL already holds durably, one sled batch per tree.
    ///
    /// Atomicity across trees is not needed here: after a crash the WAL is replayed from the last
    /// checkpoint and every change is idempotent (a full value, a removal, or a history event that
    /// is skipped when already recorded), so a half-applied list is completed.
    pub fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut batches = Batches::default();
        let mut histories: HashMap<MessageId, Option<History>> = HashMap::new();
        for change in changes {
            self.stage(change, &mut batches, &mut histories)?;
        }
        for (id, history) in histories {
            match history {
                Some(history) => {
                    batches.history.insert(&keys::message_key(id), codec::encode_history(&history))
                }
                None => batches.history.remove(&keys::message_key(id)),
            }
        }
        self.content.apply_batch(batches.content)?;
        self.meta.apply_batch(batches.meta)?;
        self.history.apply_batch(batches.history)?;
        self.queues.apply_batch(batches.queues)?;
        self.terminal.apply_batch(batches.terminal)?;
        self.expiry.apply_batch(batches.expiry)?;
        self.idempotency.apply_batch(batches.idempotency)?;
        self.system.apply_batch(batches.system)?;
        Ok(())
    }

    /// Adds one change to the batches. History events are read-modify-write, so the histories
    /// touched by this list are kept in `histories` until the end.
    fn stage(
        &self,
        change: &Change,
        batches: &mut Batches,
        histories: &mut HashMap<MessageId, Option<History>>,
    ) -> Result<(), StoreError> {
        match change {
            Change::PutQueue { queue_id, record } => {
                batches.queues.insert(&keys::queue_key(*queue_id), codec::encode_queue(record));
            }
            Change::PutMeta { id, meta } => {
                batches.meta.insert(&keys::message_key(*id), codec::encode_meta(meta));
            }
            Change::PutContent { id, record } => {
                batches.content.insert(&keys::message_key(*id), record.as_slice());
            }
            Change::RecordHistory { id, event, keep_count } => {
                if !histories.contains_key(id) {
                    histories.insert(*id, Some(self.history(*id)?.unwrap_or_default()));
                }
                let history = histories.get_mut(id).expect("inserted above");
                let history = history.get_or_insert_with(History::default);
                history.record(event.clone(), *keep_count as usize);
            }
            Change::DeleteMessage { id, queue_id, state } => {
                let key = keys::message_key(*id);
                batches.meta.remove(&key);
                batches.content.remove(&key);
                histories.insert(*id, None);
                batches.terminal.remove(&keys::terminal_key(*queue_id, *state, *id));
            }
            Change::IndexTerminal { queue_id, state, id } => {
                batches.terminal.insert(&keys::terminal_key(*queue_id, *state, *id), &[]);
            }
            Change::UnindexTerminal { queue_id, state, id } => {
                batches.terminal.remove(&keys::terminal_key(*queue_id, *state, *id));
            }
            Change::ExpireAt { at_ms, id } => {
                batches.expiry.insert(&keys::expiry_key(*at_ms, *id), &[]);
            }
            Change::RemoveExpiry { at_ms, id } => {
                batches.expiry.remove(&keys::expiry_key(*at_ms, *id));
            }
            Change::PutIdempotency { queue_id, key, record } => {
                let key = keys::idempotency_key(*queue_id, key);
                batches.idempotency.insert(key, codec::encode_idempotency(record));
            }
            Change::DeleteIdempotency { queue_id, key } => {
                batches.idempotency.remove(keys::idempotency_key(*queue_id, key));
            }
            Change::SetNextId { next_id } => {
                batches.system.insert(keys::NEXT_ID_KEY, &next_id.to_le_bytes());
            }
        }
        Ok(())
    }

    /// The scheduling record of a message.
    pub fn meta(&self, id: MessageId) -> Result<Option<MessageMeta>, StoreError> {
        let Some(bytes) = self.meta.get(keys::message_key(id))? else {
            return Ok(None);
        };
        codec::decode_meta(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt { what: format!("meta of message {id}"), source })
    }

    /// The headers and body of a message.
    pub fn content(&self, id: MessageId) -> Result<Option<MessageContent>, StoreError> {
        let Some(bytes) = self.content.get(keys::message_key(id))? else {
            return Ok(None);
        };
        codec::decode_content(&bytes).map(Some).map_err(|source| StoreError::Corrupt {
            what: format!("content of message {id}"),
            source,
        })
    }

    /// The recorded history of a message.
    pub fn history(&self, id: MessageId) -> Result<Option<History>, StoreError> {
        let Some(bytes) = self.history.get(keys::message_key(id))? else { return Ok(None) };
        codec::decode_history(&bytes).map(Some).map_err(|source| StoreError::Corrupt {
            what: format!("history of message {id}"),
            source,
        })
    }

    /// Up to `limit` ids of a queue's dead or delivered messages, after (or before, when
    /// `descending`) the cursor id, in id order.
    pub fn list_terminal(
        &self,
        queue_id: QueueId,
        state: MessageState,
        after: Option<MessageId>,
        descending: bool,
        limit: usize,
    ) -> Result<Vec<MessageId>, StoreError> {
        let low = keys::terminal_key(queue_id, state, MessageId(0));
        let high = keys::terminal_key(queue_id, state, MessageId(u64::MAX));
        let range = match (descending, after) {
            (false, Some(cursor)) if cursor.0 == u64::MAX => return Ok(Vec::new()),
            (false, Some(cursor)) => {
                let start = keys::terminal_key(queue_id, state, MessageId(cursor.0 + 1));
                self.terminal.range(start..=high)
            }
            (true, Some(cursor)) => {
                self.terminal.range(low..keys::terminal_key(queue_id, state, cursor))
            }
            (_, None) => self.terminal.range(low..=high),
        };
        let entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if descending { Box::new(range.rev()) } else { Box::new(range) };
        let mut ids = Vec::with_capacity(limit.min(1024));
        for entry in entries.take(limit) {
            let (key, _) = entry?;
            ids.push(keys::decode_terminal_key(&key).ok_or_else(|| corrupt_key("terminal", &key))?);
        }
        Ok(ids)
    }

    /// Up to `limit` retention entries due at or before `now_ms`, oldest first.
    pub fn expired(&self, now_ms: u64, limit: usize) -> Result<Vec<(u64, MessageId)>, StoreError> {
        let end = keys::expiry_key(now_ms, MessageId(u64::MAX));
        let mut due = Vec::new();
        for entry in self.expiry.range(..=end).take(limit) {
            let (key, _) = entry?;
            due.push(keys::decode_expiry_key(&key).ok_or_else(|| corrupt_key("expiry", &key))?);
        }
        Ok(due)
    }

    /// The name of a queue.
    pub fn queue_name(&self, queue_id: QueueId) -> Result<Option<String>, StoreError> {
        let Some(bytes) = self.queues.get(keys::queue_key(queue_id))? else { return Ok(None) };
        let record = codec::decode_queue(&bytes).map_err(|source| StoreError::Corrupt {
            what: format!("queue {}", queue_id.0),
            source,
        })?;
        Ok(Some(record.name))
    }

    /// The WAL position the last checkpoint covers, or the start of the WAL if none was taken.
    pub fn checkpoint_position(&self) -> Result<WalPosition, StoreError> {
        let Some(bytes) = self.system.get(keys::CHECKPOINT_KEY)? else {
            return Ok(WalPosition { segment_seq: 0, offset: 0 });
        };
        let decoded: Option<[u8; 16]> = bytes.as_ref().try_into().ok();
        let Some(raw) = decoded else {
            let source = CodecError::TooShort { length: bytes.len() };
            return Err(StoreError::Corrupt { what: "checkpoint position".into(), source });
        };
        let segment_seq = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(raw[8..].try_into().expect("8 bytes"));
        Ok(WalPosition { segment_seq, offset })
    }

    /// Makes everything applied so far durable and records that it covers the WAL up to `position`.
    ///
    /// The position is written into sled before the flush, so it becomes durable together with the
    /// data it describes. sled's flush alone does not reach the disk, hence the fsync of every file.
    pub fn checkpoint(&self, position: WalPosition) -> Result<(), StoreError> {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&position.segment_seq.to_le_bytes());
        raw[8..].copy_from_slice(&position.offset.to_le_bytes());
        self.system.insert(keys::CHECKPOINT_KEY, &raw)?;
        self.db.flush()?;
        sync_tree(&self.sled_dir)
    }

    /// Bytes on disk under the sled directory.
    pub fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Visits every queue record, in id order.
    pub fn for_each_queue(
        &self,
        mut visit: impl FnMut(QueueId, QueueRecord),
    ) -> Result<(), StoreError> {
        for entry in self.queues.iter() {
            let (key, value) = entry?;
            let queue_id =
                keys::decode_queue_key(&key).ok_or_else(|| corrupt_key("queues", &key))?;
            let record = codec::decode_queue(&value).map_err(|source| StoreError::Corrupt {
                what: format!("queue {}", queue_id.0),
                source,
            })?;
            visit(queue_id, record);
        }
        Ok(())
    }

    /// Visits every message's scheduling record, oldest first.
    pub fn for_each_meta(
        &self,
        quarantine: bool,
        mut visit: impl FnMut(MessageId, MessageMeta),
    ) -> Result<u64, StoreError> {
        let mut quarantined_count = 0;
        for entry in self.meta.iter() {
            let (key, value) = entry?;
            let id = keys::decode_message_key(&key).ok_or_else(|| corrupt_key("meta", &key))?;
            match codec::decode_meta(&value) {
                Ok(meta) => visit(id, meta),
                Err(source) if quarantine => {
                    tracing::error!(%id, error = %source, "quarantined a damaged message record");
                    self.quarantine.insert(&key, value)?;
                    self.meta.remove(&key)?;
                    quarantined_count += 1;
                }
                Err(source) => {
                    return Err(StoreError::Corrupt {
                        what: format!("meta of message {id}"),
                        source,
                    })
                }
            }
        }
        Ok(quarantined_count)
    }

    /// Writes raw bytes into a tree, bypassing the codec: tests use it to plant damaged records.
    #[cfg(feature = "testing")]
    pub fn put_raw(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.open_tree(tree)?.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Visits every remembered idempotency key.
    pub fn for_each_idempotency(
        &self,
        mut visit: impl FnMut(QueueId, String, IdempotencyRecord),
    ) -> Result<(), StoreError> {
        for entry in self.idempotency.iter() {
            let (key, value) = entry?;
            let (queue_id, name) = keys::decode_idempotency_key(&key)
                .ok_or_else(|| corrupt_key("idempotency", &key))?;
            let record = codec::decode_idempotency(&value).map_err(|source| {
                StoreError::Corrupt { what: format!("idempotency key {name:?}"), source }
            })?;
            visit(queue_id, name, record);
        }
        Ok(())
    }

    /// The persisted id counter, if any.
    pub fn next_id(&self) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.system.get(keys::NEXT_ID_KEY)? else {
            return Ok(None);
        };
        let raw: [u8; 8] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            what: "next id".into(),
            source: CodecError::TooShort { length: bytes.len() },
        })?;
        Ok(Some(u64::from_le_bytes(raw)))
    }
}

/// One sled batch per tree, filled by `Store::stage`.
#[derive(Default)]
struct Batches {
    meta: sled::Batch,
    content: sled::Batch,
    history: sled::Batch,
    queues: sled::Batch,
    terminal: sled::Batch,
    expiry: sled::Batch,
    idempotency: sled::Batch,
    system: sled::Batch,
}

fn corrupt_key(tree: &str, key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        what: format!("key {key:02x?} in tree {tree}"),
        source: CodecError::TooShort { length: key.len() },
    }
}

/// Fsyncs every file and directory under `dir`, so that what sled wrote survives a power loss.
fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io(&path))?.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path).and_then(|file| file.sync_all()).map_err(io(&path))?;
        }
    }
    std::fs::File::open(dir).and_then(|file| file.sync_all()).map_err(io(dir))
}
