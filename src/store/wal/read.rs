//! Reading message contents back from segment files, from any thread.

use crate::hash::FastMap;
use parking_lot::RwLock;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Read-only handles of segment files, opened on first use and shared by every reader.
///
/// Contents are read with positioned reads (`pread`), so readers never share a file offset and
/// never wait for each other; a freshly written content is served from the page cache. A segment is
/// only deleted once no stored message's content is in it, so a reader can only miss a file that
/// belonged to messages removed meanwhile (it then answers as for a removed message).
pub struct SegmentFiles {
    dir: PathBuf,
    open: RwLock<FastMap<u32, Arc<File>>>,
}

/// More open handles than this are closed all at once (they reopen on demand).
const OPEN_FILE_COUNT_MAX: usize = 1024;

impl SegmentFiles {
    /// Handles for the segments in the log directory `dir`.
    pub fn new(dir: &Path) -> SegmentFiles {
        SegmentFiles { dir: dir.to_path_buf(), open: RwLock::new(FastMap::default()) }
    }

    fn handle(&self, segment: u32) -> io::Result<Arc<File>> {
        if let Some(file) = self.open.read().get(&segment) {
            return Ok(file.clone());
        }
        let path = super::segment_path(&self.dir, u64::from(segment));
        let file = Arc::new(File::open(&path)?);
        let mut open = self.open.write();
        if open.len() >= OPEN_FILE_COUNT_MAX {
            open.clear();
        }
        open.insert(segment, file.clone());
        Ok(file)
    }

    /// Reads `len` bytes at `offset` of segment `segment`.
    pub fn read(&self, segment: u32, offset: u32, len: u32) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; len as usize];
        self.handle(segment)?.read_exact_at(&mut bytes, u64::from(offset))?;
        Ok(bytes)
    }

    /// Closes the handle of a deleted segment.
    pub fn forget(&self, segment: u32) {
        self.open.write().remove(&segment);
    }
}
