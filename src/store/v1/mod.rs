//! The first storage format, read-only: enough to convert a data directory of it.
//!
//! A data directory of the first format holds `sled/` (one sled tree per record kind, each value a
//! version byte, bincode fields and a crc32) and `wal/` (segments `{seq:020}.wal` of frames whose
//! payload is a version byte and the bincode of a change list). Its state is sled's with the frames
//! after the checkpoint (`system/checkpoint`) applied on top, every change being a full value or a
//! removal, as that format's recovery did. This module reads it that way without writing anything
//! of outboxd's: the frames are applied to an overlay in memory, not to sled.
//!
//! - `record.rs`: the first format's records and change lists, and their codec.
//! - `log.rs`: its log reader.
//! - `convert.rs`: the conversion into a catalog of the current format, crash-safe.
//!
//! The record types that did not change (queue records and settings, histories, idempotency
//! records) are decoded into the current types: their serde layout is the same field for field,
//! and the conversion test reads a real directory of the first format to keep it so.

mod convert;
mod log;
mod record;

pub use convert::{convert_if_needed, ConversionSummary};

use super::StoreError;
use crate::queue::{History, IdempotencyRecord, MessageId, QueueId, QueueRecord};
use record::{Change, ContentV1, MetaV1};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The folder a conversion moves the first format's files into (`DATA_DIR/format-1/`).
pub const KEPT_DIR: &str = "format-1";

/// The first format's sled folder and log folder.
pub const SLED_DIR: &str = "sled";
pub const WAL_DIR: &str = "wal";

/// The first format's sled settings: its segment size must match the one the files were written
/// with.
const SLED_SEGMENT_BYTES: usize = 1024 * 1024;
const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The sled trees read (the terminal and expiry indexes are derived again, not read).
const META: &str = "meta";
const CONTENT: &str = "content";
const HISTORY: &str = "history";
const QUEUES: &str = "queues";
const IDEMPOTENCY: &str = "idempotency";
const SYSTEM: &str = "system";
const TREES: [&str; 6] = [META, CONTENT, HISTORY, QUEUES, IDEMPOTENCY, SYSTEM];

const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const NEXT_ID_KEY: &[u8] = b"next_id";

/// A data directory of the first format, opened read-only, with its log after the checkpoint
/// applied in memory.
pub struct V1Store {
    trees: HashMap<&'static str, sled::Tree>,
    /// Net writes of the frames after the checkpoint, per tree (`None`: removed).
    overlay: HashMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Log frames applied to the overlay.
    pub replayed_frame_count: u64,
    /// A torn tail the log ends in (left as it is).
    pub torn_tail: Option<(PathBuf, u64)>,
    _db: sled::Db,
}

fn corrupt(what: String) -> impl FnOnce(super::codec::CodecError) -> StoreError {
    move |source| StoreError::Corrupt { what, source }
}

impl V1Store {
    /// Opens `data_dir/sled` and applies `data_dir/wal` from the checkpoint on, in memory. Fails
    /// while another process (a server of the first format) has the directory open.
    pub fn open(data_dir: &Path) -> Result<V1Store, StoreError> {
        let db = sled::Config::new()
            .path(data_dir.join(SLED_DIR))
            .cache_capacity(SLED_CACHE_BYTES)
            .segment_size(SLED_SEGMENT_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let mut trees = HashMap::new();
        for name in TREES {
            trees.insert(name, db.open_tree(name)?);
        }
        let mut store = V1Store {
            trees,
            overlay: TREES.iter().map(|name| (*name, BTreeMap::new())).collect(),
            replayed_frame_count: 0,
            torn_tail: None,
            _db: db,
        };
        let from = store.checkpoint_position()?;
        let wal_dir = data_dir.join(WAL_DIR);
        let summary = log::replay(&wal_dir, from, |position, payload| {
            let changes = record::decode_changes(payload).map_err(corrupt(format!(
                "first-format log frame ending at segment {} offset {}",
                position.0, position.1
            )))?;
            for change in changes {
                store.apply(change)?;
            }
            Ok(())
        })?;
        store.replayed_frame_count = summary.frame_count;
        store.torn_tail = summary.torn_tail;
        Ok(store)
    }

    fn checkpoint_position(&self) -> Result<(u64, u64), StoreError> {
        let Some(bytes) = self.trees[SYSTEM].get(CHECKPOINT_KEY)? else { return Ok((0, 0)) };
        let raw: [u8; 16] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            what: "the first format's checkpoint position".into(),
            source: super::codec::CodecError::TooShort { length: bytes.len() },
        })?;
        let segment = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
        let offset = u64::from_le_bytes(raw[8..].try_into().expect("8 bytes"));
        Ok((segment, offset))
    }

    /// The current value of a key: the overlay's, else sled's.
    fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.overlay[tree].get(key) {
            return Ok(value.clone());
        }
        Ok(self.trees[tree].get(key)?.map(|value| value.to_vec()))
    }

    fn put(&mut self, tree: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.overlay.get_mut(tree).expect("every tree has an overlay").insert(key, value);
    }

    /// Applies one change as the first format's store did (the derived indexes are skipped).
    fn apply(&mut self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::PutQueue { queue_id, record } => {
                let value = record::encode(record::QUEUE_VERSION, &record);
                self.put(QUEUES, queue_id.0.to_be_bytes().to_vec(), Some(value));
            }
            Change::PutMeta { id, meta } => {
                let value = record::encode(record::META_VERSION, &meta);
                self.put(META, id.0.to_be_bytes().to_vec(), Some(value));
            }
            Change::PutContent { id, record } => {
                self.put(CONTENT, id.0.to_be_bytes().to_vec(), Some(record));
            }
            Change::RecordHistory { id, event, keep_count } => {
                let key = id.0.to_be_bytes().to_vec();
                // A damaged history was replaced by a fresh one in the first format too.
                let mut history = match self.get(HISTORY, &key)? {
                    Some(bytes) => record::decode::<History>(record::HISTORY_VERSION, &bytes)
                        .unwrap_or_default(),
                    None => History::default(),
                };
                history.record(event, keep_count as usize);
                let value = record::encode(record::HISTORY_VERSION, &history);
                self.put(HISTORY, key, Some(value));
            }
            Change::DeleteMessage { id, .. } => {
                let key = id.0.to_be_bytes().to_vec();
                self.put(META, key.clone(), None);
                self.put(CONTENT, key.clone(), None);
                self.put(HISTORY, key, None);
            }
            Change::PutIdempotency { queue_id, key, record } => {
                let value = record::encode(record::IDEMPOTENCY_VERSION, &record);
                self.put(IDEMPOTENCY, idempotency_key(queue_id, &key), Some(value));
            }
            Change::DeleteIdempotency { queue_id, key } => {
                self.put(IDEMPOTENCY, idempotency_key(queue_id, &key), None);
            }
            Change::SetNextId { next_id } => {
                self.put(SYSTEM, NEXT_ID_KEY.to_vec(), Some(next_id.to_le_bytes().to_vec()));
            }
            Change::IndexTerminal { .. }
            | Change::UnindexTerminal { .. }
            | Change::ExpireAt { .. }
            | Change::RemoveExpiry { .. } => {}
        }
        Ok(())
    }

    /// Visits a tree's current entries in key order: sled's, with the overlay's writes over them.
    fn for_each(
        &self,
        tree: &'static str,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let overlay = &self.overlay[tree];
        let mut pending = overlay.iter().peekable();
        for entry in self.trees[tree].iter() {
            let (key, value) = entry?;
            while let Some((overlay_key, overlay_value)) = pending.peek() {
                if overlay_key.as_slice() >= key.as_ref() {
                    break;
                }
                if let Some(value) = overlay_value {
                    visit(overlay_key, value)?;
                }
                pending.next();
            }
            match pending.peek() {
                Some((overlay_key, overlay_value)) if overlay_key.as_slice() == key.as_ref() => {
                    if let Some(value) = overlay_value {
                        visit(overlay_key, value)?;
                    }
                    pending.next();
                }
                _ => visit(&key, &value)?,
            }
        }
        for (key, value) in pending {
            if let Some(value) = value {
                visit(key, value)?;
            }
        }
        Ok(())
    }

    /// Every queue record, in id order.
    pub fn queues(&self) -> Result<Vec<(QueueId, QueueRecord)>, StoreError> {
        let mut queues = Vec::new();
        self.for_each(QUEUES, |key, value| {
            let queue_id = <[u8; 4]>::try_from(key)
                .map(u32::from_be_bytes)
                .map_err(|_| key_error("queue", key))?;
            let record = record::decode(record::QUEUE_VERSION, value)
                .map_err(corrupt(format!("first-format queue {queue_id}")))?;
            queues.push((QueueId(queue_id), record));
            Ok(())
        })?;
        Ok(queues)
    }

    /// Visits every message's scheduling record, in id order.
    pub fn for_each_meta(
        &self,
        mut visit: impl FnMut(MessageId, MetaV1) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each(META, |key, value| {
            let id = message_id(key)?;
            let meta = record::decode(record::META_VERSION, value)
                .map_err(corrupt(format!("first-format record of message {id}")))?;
            visit(id, meta)
        })
    }

    /// A message's headers and body.
    pub fn content(&self, id: MessageId) -> Result<Option<ContentV1>, StoreError> {
        let Some(bytes) = self.get(CONTENT, &id.0.to_be_bytes())? else { return Ok(None) };
        record::decode(record::CONTENT_VERSION, &bytes)
            .map(Some)
            .map_err(corrupt(format!("first-format content of message {id}")))
    }

    /// A message's history.
    pub fn history(&self, id: MessageId) -> Result<Option<History>, StoreError> {
        let Some(bytes) = self.get(HISTORY, &id.0.to_be_bytes())? else { return Ok(None) };
        record::decode(record::HISTORY_VERSION, &bytes)
            .map(Some)
            .map_err(corrupt(format!("first-format history of message {id}")))
    }

    /// Every idempotency key with its queue.
    pub fn idempotency_keys(
        &self,
    ) -> Result<Vec<(QueueId, String, IdempotencyRecord)>, StoreError> {
        let mut found = Vec::new();
        self.for_each(IDEMPOTENCY, |key, value| {
            if key.len() < 4 {
                return Err(key_error("idempotency", key));
            }
            let queue_id = u32::from_be_bytes(key[..4].try_into().expect("4 bytes"));
            let name =
                String::from_utf8(key[4..].to_vec()).map_err(|_| key_error("idempotency", key))?;
            let record = record::decode(record::IDEMPOTENCY_VERSION, value)
                .map_err(corrupt(format!("first-format idempotency key {name:?}")))?;
            found.push((QueueId(queue_id), name, record));
            Ok(())
        })?;
        Ok(found)
    }

    /// The next message id to hand out, as recorded (0 when none was).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        let Some(bytes) = self.get(SYSTEM, NEXT_ID_KEY)? else { return Ok(0) };
        let raw: [u8; 8] = bytes.as_slice().try_into().map_err(|_| key_error("next id", &bytes))?;
        Ok(u64::from_le_bytes(raw))
    }
}

fn idempotency_key(queue_id: QueueId, key: &str) -> Vec<u8> {
    let mut bytes = queue_id.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn message_id(key: &[u8]) -> Result<MessageId, StoreError> {
    <[u8; 8]>::try_from(key)
        .map(|bytes| MessageId(u64::from_be_bytes(bytes)))
        .map_err(|_| key_error("message", key))
}

fn key_error(kind: &str, key: &[u8]) -> StoreError {
    StoreError::Corrupt {
        what: format!("first-format {kind} key {key:02x?}"),
        source: super::codec::CodecError::TooShort { length: key.len() },
    }
}
