//! The log's file layer: appends and `fdatasync`, and nothing else touches segment bytes on their
//! way to the disk.
//!
//! Test builds (the `testing` feature) track, for every file written through this layer, how many
//! bytes were written and how many the last completed `fdatasync` made durable. [`power_cut`]
//! then does what a power loss does to the log: every byte written after the last completed sync
//! is lost (optionally with a torn prefix of it kept, as a partly written page would be), and the
//! process dies on the spot. Because the durable length only advances inside
//! [`LogFile::sync_data`], a log that stopped syncing loses acknowledged data in such a cut, and
//! the power-cut test fails — which SIGKILL alone can never show, since the page cache survives it.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One log file opened for appending.
pub struct LogFile {
    file: File,
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    path: PathBuf,
}

impl LogFile {
    /// Wraps a file opened for writing at its end; `written_bytes` are already in it (and durable).
    pub fn new(file: File, path: &Path, written_bytes: u64) -> LogFile {
        #[cfg(feature = "testing")]
        tracking::register(path, written_bytes);
        #[cfg(not(feature = "testing"))]
        let _ = written_bytes;
        LogFile { file, path: path.to_path_buf() }
    }

    /// Appends `bytes` (they reach the disk at the next `sync_data`, or at a crash, or never).
    pub fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        #[cfg(feature = "testing")]
        let _guard = tracking::lock();
        (&self.file).write_all(bytes)?;
        #[cfg(feature = "testing")]
        tracking::wrote(&self.path, bytes.len() as u64);
        Ok(())
    }

    /// Makes everything written so far durable (`fdatasync`: the data and the file size).
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()?;
        #[cfg(feature = "testing")]
        tracking::synced(&self.path);
        Ok(())
    }

    /// Makes everything written so far durable, metadata included (`fsync`).
    pub fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()?;
        #[cfg(feature = "testing")]
        tracking::synced(&self.path);
        Ok(())
    }

    /// The underlying file, for reads.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Records that the file was renamed to `path`.
    pub fn renamed(&mut self, path: &Path) {
        #[cfg(feature = "testing")]
        tracking::renamed(&self.path, path);
        self.path = path.to_path_buf();
    }
}

/// Forgets a deleted or renamed file (test builds track every file written).
pub fn forget(path: &Path) {
    #[cfg(feature = "testing")]
    tracking::forget(path);
    #[cfg(not(feature = "testing"))]
    let _ = path;
}

#[cfg(feature = "testing")]
pub use tracking::power_cut;

#[cfg(feature = "testing")]
mod tracking {
    use parking_lot::{Mutex, MutexGuard};
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    /// Written and durable lengths of every tracked file.
    struct Lengths {
        written_bytes: u64,
        durable_bytes: u64,
    }

    static FILES: Mutex<Option<HashMap<PathBuf, Lengths>>> = Mutex::new(None);
    /// Held across each write, so that a power cut never lands in the middle of one.
    static WRITES: Mutex<()> = Mutex::new(());

    pub(super) fn lock() -> MutexGuard<'static, ()> {
        WRITES.lock()
    }

    pub(super) fn register(path: &Path, written_bytes: u64) {
        let mut files = FILES.lock();
        let lengths = Lengths { written_bytes, durable_bytes: written_bytes };
        files.get_or_insert_with(HashMap::new).insert(path.to_path_buf(), lengths);
    }

    pub(super) fn wrote(path: &Path, bytes: u64) {
        if let Some(lengths) = FILES.lock().as_mut().and_then(|files| files.get_mut(path)) {
            lengths.written_bytes += bytes;
        }
    }

    pub(super) fn synced(path: &Path) {
        if let Some(lengths) = FILES.lock().as_mut().and_then(|files| files.get_mut(path)) {
            lengths.durable_bytes = lengths.written_bytes;
        }
    }

    pub(super) fn forget(path: &Path) {
        if let Some(files) = FILES.lock().as_mut() {
            files.remove(path);
        }
    }

    pub(super) fn renamed(from: &Path, to: &Path) {
        if let Some(files) = FILES.lock().as_mut() {
            if let Some(lengths) = files.remove(from) {
                files.insert(to.to_path_buf(), lengths);
            }
        }
    }

    /// Simulates a power loss: cuts every tracked file back to what its last completed sync made
    /// durable — keeping `torn_bytes` more of the unsynced tail when given, as a torn write would —
    /// and kills the process at once, with no destructor, flush or exit handler running.
    pub fn power_cut(torn_bytes: Option<u64>) -> ! {
        let _writes = WRITES.lock();
        let files = FILES.lock();
        for (path, lengths) in files.iter().flatten() {
            let unsynced = lengths.written_bytes.saturating_sub(lengths.durable_bytes);
            let kept = torn_bytes.map_or(0, |torn| torn.min(unsynced));
            if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
                let _ = file.set_len(lengths.durable_bytes + kept);
                let _ = file.sync_all();
            }
        }
        eprintln!("power cut: log files cut back to their last sync");
        std::process::abort();
    }
}
