//! The ordered key-value store under the catalog: sled on disk, or a `BTreeMap` in memory.
//!
//! The catalog's logic (page merging, indexes, the manifest, recovery's reads) is written once
//! against this trait. Production uses [`SledKv`]; the simulation, the fuzz targets and the broker's
//! tests use [`MemoryKv`], so they exercise the same catalog code without touching a disk.

use super::StoreError;
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

/// One write of a batch: a value, or a removal (`None`).
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// What a scan calls with each key and value; it returns whether to go on.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// An ordered map of byte keys to byte values, with atomic batches.
pub trait Kv: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Visits the entries with `start <= key < end` (in reverse order when `reverse`) until
    /// `visit` returns false.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;

    /// Applies every write or none, also across a crash.
    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError>;

    /// Makes everything applied so far durable.
    fn make_durable(&self) -> Result<(), StoreError>;

    /// Bytes on disk (0 in memory).
    fn disk_bytes(&self) -> u64;
}

/// The catalog in a sled tree.
pub struct SledKv {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
}

/// sled's segment size. sled keeps several segment-sized write buffers in memory, so large
/// segments cost resident memory directly. A value larger than a quarter of a segment goes to a
/// separate blob file; checkpoints fsync blobs too.
pub const SLED_SEGMENT_BYTES: usize = 4 * 1024 * 1024;
/// sled's page cache budget.
pub const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledKv {
    /// Opens (creating if absent) a sled database in `dir` and its catalog tree.
    pub fn open(dir: &Path) -> Result<SledKv, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .segment_size(SLED_SEGMENT_BYTES)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let tree = db.open_tree("catalog")?;
        Ok(SledKv { db, tree, dir: dir.to_path_buf() })
    }
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key)?.map(|value| value.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let range = self.tree.range(start..end);
        let entries: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if reverse { Box::new(range.rev()) } else { Box::new(range) };
        for entry in entries {
            let (key, value) = entry?;
            if !visit(&key, &value)? {
                break;
            }
        }
        Ok(())
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Flushes sled and fsyncs every file and directory under it: sled's own flush ends in
    /// `sync_file_range`, which neither flushes the drive's cache nor persists file sizes and new
    /// files.
    fn make_durable(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        sync_tree(&self.dir)
    }

    fn disk_bytes(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// The catalog in memory (tests, simulation, fuzzing).
#[derive(Default)]
pub struct MemoryKv {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Kv for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.read().get(key).cloned())
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let map = self.map.read();
        let range = map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let entries: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> =
            if reverse { Box::new(range.rev()) } else { Box::new(range) };
        for (key, value) in entries {
            if !visit(key, value)? {
                break;
            }
        }
        Ok(())
    }

    fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut map = self.map.write();
        for (key, value) in writes {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn make_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
    }
}

/// Fsyncs every file and directory under `dir`, so that what sled wrote survives a power loss.
pub fn sync_tree(dir: &Path) -> Result<(), StoreError> {
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
