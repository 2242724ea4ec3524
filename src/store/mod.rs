//! The store: the disk, and nothing else.
//!
//! A data directory holds two things:
//!
//! - `log/`: the write-ahead log ([`wal`]), segment files of checksummed frames. Each request's
//!   ops are one frame, made durable before the reply; message contents are written once, in the
//!   frame that enqueued them, and read back from there. It is both the durability point and the
//!   message store.
//! - `catalog/`: sled ([`catalog`]), the state of every stored message as of the last checkpoint,
//!   in pages of many records per value, written in the background once per checkpoint as one
//!   atomic batch.
//!
//! Recovery ([`recovery`]) loads the catalog and replays the log from the checkpoint position;
//! a data directory of the first storage format is converted first ([`v1`]). [`backup`] and
//! [`check`] copy and verify a data directory. This module imports the domain types
//! of `queue` and nothing of the storage thread or the HTTP side.

pub mod backup;
pub mod catalog;
pub mod check;
pub mod codec;
pub mod keys;
pub mod kv;
#[cfg(any(test, feature = "testing"))]
pub mod model;
pub mod recovery;
pub mod v1;
pub mod wal;

use codec::CodecError;
use std::fmt;
use std::path::{Path, PathBuf};

/// The name of the data directory's log folder.
pub const LOG_DIR: &str = "log";

/// A failure of the store.
#[derive(Debug)]
pub enum StoreError {
    /// sled reported an error (I/O, or its own corruption check).
    Sled(sled::Error),
    /// A file-system operation on the data directory failed.
    Io { path: PathBuf, source: std::io::Error },
    /// A stored record failed its crc or did not decode; `what` names it.
    Corrupt { what: String, source: CodecError },
    /// The log failed or is corrupt.
    Wal(wal::WalError),
    /// The log holds an op that does not fit the state recovery rebuilt (a damaged or foreign
    /// data directory).
    Replay { position: wal::WalPosition, source: crate::queue::ApplyError },
    /// The data directory was written by the first storage format and must be converted first.
    OldFormat { data_dir: PathBuf },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Sled(error) => write!(f, "catalog (sled): {error}"),
            StoreError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            StoreError::Corrupt { what, source } if what.starts_with("catalog page") => write!(
                f,
                "corrupt record {what}: {source} (restore the data directory from a backup, or \
                 start with --quarantine-corrupt to set damaged pages aside)"
            ),
            StoreError::Corrupt { what, source } => write!(
                f,
                "corrupt record {what}: {source} (restore the data directory from a backup)"
            ),
            StoreError::Wal(error) => write!(f, "write-ahead log: {error}"),
            StoreError::Replay { position, source } => write!(
                f,
                "write-ahead log frame ending at segment {} offset {}: {source} (restore the \
                 data directory from a backup)",
                position.segment_seq, position.offset
            ),
            StoreError::OldFormat { data_dir } => write!(
                f,
                "{} holds data in the first storage format (sled/ and wal/): start `outboxd \
                 serve --data-dir {}` once, which converts it, then try again",
                data_dir.display(),
                data_dir.display()
            ),
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
            StoreError::Replay { source, .. } => Some(source),
            StoreError::OldFormat { .. } => None,
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

/// Whether a data directory exists and whether a process has it open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectoryState {
    /// There is no catalog under it (`DATA_DIR/catalog/db` is missing).
    Missing,
    /// It holds data and nobody has it open.
    Free,
    /// A process (a running server, or a backup or check) holds its lock.
    InUse,
}

/// The file whose lock marks a data directory as in use: sled's database file, which sled locks
/// for as long as the catalog is open.
fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join(catalog::CATALOG_DIR).join("db")
}

/// Looks at whether `data_dir` holds data and whether its lock is taken, without opening it.
///
/// sled takes an exclusive `flock` on `DATA_DIR/catalog/db` for as long as the catalog is open,
/// so a lock that cannot be taken means another process is using the directory. The probe's own
/// lock is released at once.
pub fn directory_state(data_dir: &Path) -> Result<DirectoryState, StoreError> {
    use fs2::FileExt;
    let path = lock_path(data_dir);
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DirectoryState::Missing)
        }
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    match file.try_lock_exclusive() {
        Ok(()) => Ok(DirectoryState::Free),
        Err(error) if error.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
            Ok(DirectoryState::InUse)
        }
        Err(source) => Err(StoreError::Io { path, source }),
    }
}

/// Waits until no handle of this process or another holds `data_dir`'s lock. sled's background
/// threads let go of the database a moment after its last handle is dropped, so a directory this
/// process just closed may still look in use to the next opener for a few milliseconds.
pub fn wait_until_released(data_dir: &Path) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + RELEASE_WAIT_MAX;
    while directory_state(data_dir)? == DirectoryState::InUse {
        if std::time::Instant::now() >= deadline {
            let path = lock_path(data_dir);
            let source = std::io::Error::other(format!(
                "still locked {} s after it was closed; is another process using it?",
                RELEASE_WAIT_MAX.as_secs()
            ));
            return Err(StoreError::Io { path, source });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

/// How long [`wait_until_released`] waits.
const RELEASE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `data_dir` holds a data directory of the first storage format (sled trees per record
/// kind under `sled/`, change lists in `wal/`), which must be converted before it is served.
pub fn is_old_format(data_dir: &Path) -> bool {
    data_dir.join("sled").join("db").exists() && !lock_path(data_dir).exists()
}

/// Hands memory that glibc's malloc keeps after frees back to the system.
///
/// sled allocates and frees node copies at a high rate while a checkpoint writes, and glibc keeps
/// the freed memory; called after checkpoints (at most every few seconds), it costs one heap walk.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim is glibc's, takes no pointers, and may be called from any thread at
    // any time; it only returns free memory to the kernel.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() {}
