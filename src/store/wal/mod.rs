//! The write-ahead log: append-only segment files of checksummed frames, written with group commit,
//! replayed after a crash, and read back for message contents.
//!
//! The log is both the durability point and the message store. Every request's ops (and the
//! contents of the messages it enqueues) are appended as one frame and made durable with one
//! `fdatasync` per batch of requests before any reply; the contents stay where they were written,
//! and a lease reads them back from the segment file ([`SegmentFiles`]). A checkpoint writes the
//! catalog; afterwards the log before the checkpoint is needed only for the contents it holds, and a
//! segment whose contents all belong to removed messages is deleted.
//!
//! - `file.rs`: the file layer (writes and fdatasync; in test builds it can simulate a power cut).
//! - `segment.rs`: segment files: names, atomic creation, the validating frame reader.
//! - `append.rs`: [`Wal`], the appender (frames, commit, rotation, deletion).
//! - `replay.rs`: [`replay`] at startup and [`read_range`] for backups.
//! - `read.rs`: [`SegmentFiles`], positioned reads of contents by any thread.
//!
//! # Guarantees
//!
//! * A frame whose [`Wal::commit`] returned `Ok` is never lost and never handed back corrupted:
//!   every frame carries a CRC-32 of its payload and replay verifies it.
//! * A crash in the middle of a commit can only damage the tail of the newest segment. Replay cuts
//!   such a torn tail off (and reports it); the same damage anywhere else is reported as
//!   [`WalError::Corrupt`], because synced data went bad and silently skipping it would lose records.
//! * After any failed write or sync the [`Wal`] is poisoned and refuses further commits: after a
//!   failed `fsync` the kernel may have dropped the dirty pages, so retrying could report success
//!   for data that is not on disk.
//! * Segment files are created atomically (header written and synced under a temporary name, then
//!   renamed and the directory synced), so a segment file always starts with an intact header.
//! * [`Wal::open`] always starts a fresh segment, so a segment that recovery may have truncated is
//!   never appended to.
//!
//! # On-disk layout
//!
//! The directory holds segment files named `{seq:020}.log` (zero padded, so lexical order is
//! numeric order). Files with other names are ignored. Every integer is little-endian.
//!
//! | Bytes               | Field          | Meaning                                          |
//! |---------------------|----------------|--------------------------------------------------|
//! | 0..8                | magic          | `b"OBXWAL02"`                                    |
//! | 8..16               | segment seq    | `u64`, equal to the seq in the file name         |
//! | then, per frame:    |                |                                                  |
//! | +0..4               | `payload_len`  | `u32`, `1..=FRAME_PAYLOAD_BYTES_MAX`             |
//! | +4..8               | `crc32`        | `u32`, crc32fast (CRC-32/ISO-HDLC) of payload    |
//! | +8..8+payload_len   | payload        | see `store::codec::op`                           |
//!
//! A [`WalPosition`] is a segment seq plus a byte offset inside that segment file; it always points
//! at a frame start or at the end of the segment. Zero-length payloads are forbidden so that a file
//! extended with zeros by a crash (common with delayed allocation) can never parse as valid frames.
//!
//! Only one process may use a log directory at a time; this module does not lock it.

mod append;
pub mod file;
mod read;
mod replay;
mod segment;

pub use append::Wal;
pub use read::SegmentFiles;
pub use replay::{read_range, replay, RangeSummary};
pub use segment::{list_segments, segment_path};

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Largest payload a single frame may carry (256 MiB); bigger lengths on disk are treated as damage.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// Default segment size after which [`Wal::rotate_if_full`] starts a new segment (64 MiB).
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Magic bytes at the start of every segment file; the trailing `02` is the format version (`01`
/// was the first storage format, whose frames held change lists).
pub const SEGMENT_MAGIC: [u8; 8] = *b"OBXWAL02";

/// Size of the segment header (magic plus seq); the first frame of a segment starts here.
pub const SEGMENT_HEADER_BYTES: u64 = 16;

/// Size of a frame header (payload length plus crc).
pub const FRAME_HEADER_BYTES: u64 = 8;

const FRAME_HEADER_LEN: usize = 8;
const SEGMENT_HEADER_LEN: usize = 16;
const SEGMENT_SUFFIX: &str = ".log";
const TEMP_SUFFIX: &str = ".log.tmp";
/// A batch buffer that grew beyond this is released after commit, so one huge batch does not pin
/// its memory for the rest of the process lifetime.
const BUFFER_RETAIN_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Replay reads through a buffer of this size; memory stays bounded by it plus the largest frame.
const REPLAY_READ_BUFFER_BYTES: usize = 1024 * 1024;

/// A byte position in the WAL: a segment seq and an offset inside that segment file.
///
/// Positions order by segment first, then offset, which matches log order. An offset smaller than
/// [`SEGMENT_HEADER_BYTES`] means "the first frame of the segment".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition {
    /// Sequence number of the segment file (`{segment_seq:020}.wal`).
    pub segment_seq: u64,
    /// Byte offset inside the segment file, pointing at a frame start or at the segment end.
    pub offset: u64,
}

impl WalPosition {
    /// The very beginning of the log; use it as the replay start when no checkpoint exists yet.
    ///
    /// The first segment ever created in an empty directory has seq 0, so this position replays
    /// everything. If segment 0 has already been removed, replaying from here is a gap error.
    pub const START: WalPosition = WalPosition { segment_seq: 0, offset: 0 };

    /// Builds a position from a segment seq and a byte offset.
    pub const fn new(segment_seq: u64, offset: u64) -> WalPosition {
        WalPosition { segment_seq, offset }
    }
}

/// An error from the WAL.
#[derive(Debug)]
pub enum WalError {
    /// An operating-system I/O call failed on `path`.
    Io {
        /// The file or directory the failing call touched.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Data on disk failed validation at `offset` inside `path`.
    Corrupt {
        /// The segment file (or directory) holding the bad data.
        path: PathBuf,
        /// Byte offset of the bad frame or header inside the file.
        offset: u64,
        /// Human-readable description of what failed to validate.
        reason: String,
    },
    /// A segment needed for replay is missing while a later one exists, so records were lost.
    Gap {
        /// The WAL directory.
        dir: PathBuf,
        /// The seq of the segment that should exist but does not.
        missing_seq: u64,
        /// The next seq that does exist.
        found_seq: u64,
    },
}

impl WalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> WalError {
        WalError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt { path: path.to_path_buf(), offset, reason: reason.into() }
    }

    /// Copies the error; `io::Error` is not `Clone`, so its kind and message are carried over.
    pub(crate) fn duplicate(&self, message_prefix: &str) -> WalError {
        match self {
            WalError::Io { path, source } => WalError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), format!("{message_prefix}{source}")),
            },
            WalError::Corrupt { path, offset, reason } => WalError::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: format!("{message_prefix}{reason}"),
            },
            WalError::Gap { dir, missing_seq, found_seq } => {
                WalError::Gap { dir: dir.clone(), missing_seq: *missing_seq, found_seq: *found_seq }
            }
        }
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { path, source } => {
                write!(f, "log I/O error on {}: {source}", path.display())
            }
            WalError::Corrupt { path, offset, reason } => {
                write!(f, "log corrupt in {} at offset {offset}: {reason}", path.display())
            }
            WalError::Gap { dir, missing_seq, found_seq } => write!(
                f,
                "log gap in {}: segment {missing_seq} is missing but segment {found_seq} exists",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            WalError::Corrupt { .. } | WalError::Gap { .. } => None,
        }
    }
}

/// What [`replay`] did: how much it applied and whether it cut off a torn tail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Number of frames passed to the callback.
    pub frame_count: u64,
    /// Total payload bytes passed to the callback (frame headers not included).
    pub byte_count: u64,
    /// The torn tail removed from the last segment, if there was one.
    pub truncated: Option<TruncatedTail>,
    /// Position just after the last frame passed to the callback; `None` if nothing was applied.
    pub last_position: Option<WalPosition>,
}

/// A damaged tail that [`replay`] removed from the newest segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncatedTail {
    /// The segment file that was truncated.
    pub segment_path: PathBuf,
    /// The new length of the file: the start of the first damaged frame.
    pub offset: u64,
    /// How many bytes were cut off.
    pub dropped_bytes: u64,
}

#[cfg(test)]
mod tests;
