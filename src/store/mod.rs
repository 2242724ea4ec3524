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

use crate::queue::{Change, IdempotencyRecord, LastError, MessageContent, MessageId, MessageMeta};
use crate::queue::{QueueId, QueueRecord};
use codec::CodecError;
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
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
            StoreError::Corrupt { what, source } => write!(f, "corrupt record {what}: {source}"),
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
    errors: sled::Tree,
    queues: sled::Tree,
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
            errors: db.open_tree("errors")?,
            queues: db.open_tree("queues")?,
            idempotency: db.open_tree("idempotency")?,
            system: db.open_tree("system")?,
            db,
            sled_dir,
        })
    }

    /// Applies changes that the WAL already holds durably, one sled batch per tree.
    ///
    /// Atomicity across trees is not needed here: after a crash the WAL is replayed from the last
    /// checkpoint and every change carries its full value, so a half-applied list is completed.
    pub fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let mut meta = sled::Batch::default();
        let mut content = sled::Batch::default();
        let mut errors = sled::Batch::default();
        let mut queues = sled::Batch::default();
        let mut idempotency = sled::Batch::default();
        let mut system = sled::Batch::default();
        for change in changes {
            match change {
                Change::PutQueue { queue_id, record } => {
                    queues.insert(&keys::queue_key(*queue_id), codec::encode_queue(record));
                }
                Change::PutMeta { id, meta: record } => {
                    meta.insert(&keys::message_key(*id), codec::encode_meta(record));
                }
                Change::PutContent { id, record } => {
                    content.insert(&keys::message_key(*id), record.as_slice());
                }
                Change::PutError { id, error } => {
                    errors.insert(&keys::message_key(*id), codec::encode_error(error));
                }
                Change::PutIdempotency {
                    queue_id,
                    key,
                    record,
                } => {
                    let key = keys::idempotency_key(*queue_id, key);
                    idempotency.insert(key, codec::encode_idempotency(record));
                }
                Change::DeleteIdempotency { queue_id, key } => {
                    idempotency.remove(keys::idempotency_key(*queue_id, key));
                }
                Change::SetNextId { next_id } => {
                    system.insert(keys::NEXT_ID_KEY, &next_id.to_le_bytes());
                }
            }
        }
        self.content.apply_batch(content)?;
        self.meta.apply_batch(meta)?;
        self.errors.apply_batch(errors)?;
        self.queues.apply_batch(queues)?;
        self.idempotency.apply_batch(idempotency)?;
        self.system.apply_batch(system)?;
        Ok(())
    }

    /// The scheduling record of a message.
    pub fn meta(&self, id: MessageId) -> Result<Option<MessageMeta>, StoreError> {
        let Some(bytes) = self.meta.get(keys::message_key(id))? else {
            return Ok(None);
        };
        codec::decode_meta(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                what: format!("meta of message {id}"),
                source,
            })
    }

    /// The headers and body of a message.
    pub fn content(&self, id: MessageId) -> Result<Option<MessageContent>, StoreError> {
        let Some(bytes) = self.content.get(keys::message_key(id))? else {
            return Ok(None);
        };
        codec::decode_content(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                what: format!("content of message {id}"),
                source,
            })
    }

    /// The latest failure of a message.
    pub fn last_error(&self, id: MessageId) -> Result<Option<LastError>, StoreError> {
        let Some(bytes) = self.errors.get(keys::message_key(id))? else {
            return Ok(None);
        };
        codec::decode_error(&bytes)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                what: format!("last error of message {id}"),
                source,
            })
    }

    /// The name of a queue.
    pub fn queue_name(&self, queue_id: QueueId) -> Result<Option<String>, StoreError> {
        let Some(bytes) = self.queues.get(keys::queue_key(queue_id))? else {
            return Ok(None);
        };
        let record = codec::decode_queue(&bytes).map_err(|source| StoreError::Corrupt {
            what: format!("queue {}", queue_id.0),
            source,
        })?;
        Ok(Some(record.name))
    }

    /// The WAL position the last checkpoint covers, or the start of the WAL if none was taken.
    pub fn checkpoint_position(&self) -> Result<WalPosition, StoreError> {
        let Some(bytes) = self.system.get(keys::CHECKPOINT_KEY)? else {
            return Ok(WalPosition {
                segment_seq: 0,
                offset: 0,
            });
        };
        let decoded: Option<[u8; 16]> = bytes.as_ref().try_into().ok();
        let Some(raw) = decoded else {
            let source = CodecError::TooShort {
                length: bytes.len(),
            };
            return Err(StoreError::Corrupt {
                what: "checkpoint position".into(),
                source,
            });
        };
        let segment_seq = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(raw[8..].try_into().expect("8 bytes"));
        Ok(WalPosition {
            segment_seq,
            offset,
        })
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
        mut visit: impl FnMut(MessageId, MessageMeta),
    ) -> Result<(), StoreError> {
        for entry in self.meta.iter() {
            let (key, value) = entry?;
            let id = keys::decode_message_key(&key).ok_or_else(|| corrupt_key("meta", &key))?;
            let meta = codec::decode_meta(&value).map_err(|source| StoreError::Corrupt {
                what: format!("meta of message {id}"),
                source,
            })?;
            visit(id, meta);
        }
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
            let record =
                codec::decode_idempotency(&value).map_err(|source| StoreError::Corrupt {
                    what: format!("idempotency key {name:?}"),
                    source,
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
            source: CodecError::TooShort {
                length: bytes.len(),
            },
        })?;
        Ok(Some(u64::from_le_bytes(raw)))
    }
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
            std::fs::File::open(&path)
                .and_then(|file| file.sync_all())
                .map_err(io(&path))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io(dir))
}
