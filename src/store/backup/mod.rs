//! Backups: the file format, copying a data directory into one, and restoring one.
//!
//! A backup is the catalog at one checkpoint plus the log segments that go with it. The catalog is
//! exact up to the log position its manifest names (the checkpoint, `P`), so the pairing is the one
//! recovery relies on: the catalog's entries as they stand at that checkpoint, every segment that
//! still holds contents of stored messages (the manifest lists them), and every log frame from the
//! start of `P`'s segment up to an end position `E`. Restoring writes the entries and the segment
//! files byte for byte (contents are read at their segment and offset, so the frames keep their
//! offsets), and the first open replays the frames from `P` to `E`: the result is the state right
//! after `E`. Everything acknowledged before the backup started lies before `E`.
//!
//! The catalog must be copied at one epoch: a checkpoint is one atomic sled batch, but a scan that
//! runs while one is written can see part of it. A stopped directory does not change; a running
//! server holds its checkpoints while the entries are copied (see `http/admin.rs`), and the copy's
//! manifest is compared with the epoch it was promised.
//!
//! # File layout
//!
//! A magic line, then records, the last of which is the trailer. Integers are little-endian.
//!
//! | bytes | field                                                           |
//! |-------|-----------------------------------------------------------------|
//! | 17    | `OUTBOXD-BACKUP 2\n` (the digit is the format version)          |
//! | per record: 4 | payload length `u32`, `1..=RECORD_PAYLOAD_BYTES_MAX`  |
//! | 4     | crc32 (crc32fast) of the payload                                 |
//! | n     | payload: a kind byte, then the kind's fields                     |
//!
//! | kind | name    | fields                                                              |
//! |------|---------|---------------------------------------------------------------------|
//! | 1    | entry   | key length `u32`, key, value (the rest): one catalog entry          |
//! | 2    | segment | segment seq `u64`: the frames that follow are this segment's         |
//! | 3    | frame   | a log frame's payload, as in the segment                           |
//! | 4    | trailer | entry count, segment count, frame count, checkpoint seq, checkpoint offset, end seq, end offset, epoch, created-at ms: 9 × `u64` |
//! | 5    | failure | UTF-8 text: why the writer stopped (an online backup's server error) |
//!
//! Entries come first, then segments in increasing seq, each followed by all of its frames from
//! its first (a segment before the checkpoint's is whole), then the trailer, then the end of the
//! file. A file that ends anywhere else is truncated; a record whose crc does not match is
//! damaged; both are reported with the byte offset of the record. Version 1 (the first storage
//! format's sled trees and change lists) is refused with a message saying what reads it.
//!
//! Files: `writer.rs` and `reader.rs` the record stream, `copy.rs` copying a data directory into
//! one, `restore.rs` rebuilding a data directory from one.

mod copy;
mod reader;
mod restore;
#[cfg(test)]
mod tests;
mod writer;

pub use copy::*;
pub use reader::*;
pub use restore::*;
pub use writer::*;

use super::wal::{self, FRAME_PAYLOAD_BYTES_MAX};
use super::StoreError;
use std::fmt;
use std::io;

/// The first bytes of every backup file; the digit is the format version.
pub const MAGIC: &[u8; 17] = b"OUTBOXD-BACKUP 2\n";
/// The magic line of the first storage format's backups.
pub const MAGIC_V1: &[u8; 17] = b"OUTBOXD-BACKUP 1\n";

/// The largest record payload: a log frame at its largest plus the kind byte (a catalog entry is
/// far smaller). A bigger length in a file is damage, and is never allocated.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = FRAME_PAYLOAD_BYTES_MAX + 1;

const RECORD_HEADER_BYTES: u64 = 8;
const KIND_ENTRY: u8 = 1;
const KIND_SEGMENT: u8 = 2;
const KIND_FRAME: u8 = 3;
const KIND_TRAILER: u8 = 4;
const KIND_FAILURE: u8 = 5;
const TRAILER_FIELD_COUNT: usize = 9;

/// Most catalog writes in one sled batch when restoring (sled holds a batch in memory).
const RESTORE_BATCH_WRITE_COUNT_MAX: usize = 1000;

/// What a complete backup holds, from its trailer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Trailer {
    pub entry_count: u64,
    pub segment_count: u64,
    pub frame_count: u64,
    /// The checkpoint the catalog entries are exact up to: (segment, offset).
    pub checkpoint: (u64, u64),
    /// The log position the frames end at: restoring yields the state right after it.
    pub end: (u64, u64),
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// When the backup was taken (Unix epoch ms).
    pub created_at_ms: u64,
}

/// One record of a backup file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry { key: Vec<u8>, value: Vec<u8> },
    Segment(u64),
    Frame(Vec<u8>),
    Trailer(Trailer),
}

/// Why a backup could not be written, read or restored.
#[derive(Debug)]
pub enum BackupError {
    /// Reading or writing the backup stream failed.
    Io(io::Error),
    /// The file does not start with the backup magic line.
    NotABackup,
    /// A backup of the first storage format (`OUTBOXD-BACKUP 1`).
    FirstFormat,
    /// The file ends before its trailer (or inside a record) at `offset`.
    Truncated { offset: u64 },
    /// The record at `offset` is damaged or out of place.
    Damaged { offset: u64, reason: String },
    /// The writer stopped and said why (an online backup whose server hit an error).
    WriterFailed { offset: u64, message: String },
    /// The catalog changed while it was copied (a checkpoint ran: the server was stopping).
    CatalogMoved { expected_epoch: u64, found_epoch: u64 },
    /// Reading the store or its log failed while taking or restoring the backup.
    Store(StoreError),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::Io(error) => write!(f, "backup I/O: {error}"),
            BackupError::NotABackup => write!(
                f,
                "not an outboxd backup (the file does not start with {:?}); pass a file written \
                 by `outboxd backup`",
                String::from_utf8_lossy(MAGIC).trim_end()
            ),
            BackupError::FirstFormat => write!(
                f,
                "this is a backup of the first storage format (it starts with {:?}), which this \
                 outboxd does not read: restore it with an outboxd of the first storage format \
                 (0.1.0 before storage v2), then start this outboxd on the restored data \
                 directory, which converts it",
                String::from_utf8_lossy(MAGIC_V1).trim_end()
            ),
            BackupError::Truncated { offset } => write!(
                f,
                "the backup is truncated at byte offset {offset}: it ends before its trailer \
                 (the copy is incomplete; take the backup again)"
            ),
            BackupError::Damaged { offset, reason } => write!(
                f,
                "the backup is damaged at byte offset {offset}: {reason} (the file changed \
                 after it was written; use another backup)"
            ),
            BackupError::WriterFailed { offset, message } => write!(
                f,
                "the backup stopped at byte offset {offset} because taking it failed: {message} \
                 (see the server's log, fix the cause and take the backup again)"
            ),
            BackupError::CatalogMoved { expected_epoch, found_epoch } => write!(
                f,
                "the catalog moved from checkpoint {expected_epoch} to {found_epoch} while it was \
                 copied (the server is stopping); take the backup again"
            ),
            BackupError::Store(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for BackupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BackupError::Io(error) => Some(error),
            BackupError::Store(error) => Some(error),
            _ => None,
        }
    }
}

impl From<io::Error> for BackupError {
    fn from(error: io::Error) -> Self {
        BackupError::Io(error)
    }
}

impl From<StoreError> for BackupError {
    fn from(error: StoreError) -> Self {
        BackupError::Store(error)
    }
}

impl From<wal::WalError> for BackupError {
    fn from(error: wal::WalError) -> Self {
        BackupError::Store(StoreError::Wal(error))
    }
}
