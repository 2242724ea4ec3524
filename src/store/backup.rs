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

use super::catalog::Catalog;
use super::codec::{self, Manifest};
use super::keys;
use super::wal::{self, WalPosition, FRAME_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES};
use super::StoreError;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

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

/// Writes a backup stream: the magic line, records, and the trailer.
pub struct BackupWriter<W: Write> {
    out: W,
    entry_count: u64,
    segment_count: u64,
    frame_count: u64,
    /// The record being written: its header, then its payload (a kind byte and fields).
    payload: Vec<u8>,
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup on `out` by writing the magic line.
    pub fn new(mut out: W) -> io::Result<BackupWriter<W>> {
        out.write_all(MAGIC)?;
        Ok(BackupWriter {
            out,
            entry_count: 0,
            segment_count: 0,
            frame_count: 0,
            payload: Vec::new(),
        })
    }

    /// Writes one catalog entry.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let key_len = u32::try_from(key.len()).expect("catalog keys are far below 4 GiB");
        self.start_record(KIND_ENTRY);
        self.payload.extend_from_slice(&key_len.to_le_bytes());
        self.payload.extend_from_slice(key);
        self.payload.extend_from_slice(value);
        self.entry_count += 1;
        self.write_payload()
    }

    /// Starts a log segment: the frames written next are its own, from its first.
    pub fn segment(&mut self, seq: u64) -> io::Result<()> {
        self.start_record(KIND_SEGMENT);
        self.payload.extend_from_slice(&seq.to_le_bytes());
        self.segment_count += 1;
        self.write_payload()
    }

    /// Writes one log frame payload.
    pub fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.start_record(KIND_FRAME);
        self.payload.extend_from_slice(frame);
        self.frame_count += 1;
        self.write_payload()
    }

    /// Ends the backup with its trailer and flushes; returns the trailer and the stream.
    pub fn finish(
        mut self,
        checkpoint: WalPosition,
        end: WalPosition,
        epoch: u64,
        created_at_ms: u64,
    ) -> io::Result<(Trailer, W)> {
        let trailer = Trailer {
            entry_count: self.entry_count,
            segment_count: self.segment_count,
            frame_count: self.frame_count,
            checkpoint: (checkpoint.segment_seq, checkpoint.offset),
            end: (end.segment_seq, end.offset),
            epoch,
            created_at_ms,
        };
        self.start_record(KIND_TRAILER);
        for value in trailer_fields(&trailer) {
            self.payload.extend_from_slice(&value.to_le_bytes());
        }
        self.write_payload()?;
        self.out.flush()?;
        Ok((trailer, self.out))
    }

    /// Ends the stream with a failure record saying why it is incomplete; returns the stream.
    pub fn fail(mut self, message: &str) -> io::Result<W> {
        self.start_record(KIND_FAILURE);
        self.payload.extend_from_slice(message.as_bytes());
        self.write_payload()?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Starts the next record in `payload`: room for its header, then its kind byte.
    fn start_record(&mut self, kind: u8) {
        self.payload.clear();
        self.payload.extend_from_slice(&[0; RECORD_HEADER_BYTES as usize]);
        self.payload.push(kind);
    }

    /// Fills in the record's header and writes the record with one `write_all`, so that a sink
    /// that refuses a write has taken none of the record (the online backup's sender relies on
    /// this to end a stream cleanly after its client stalled).
    fn write_payload(&mut self) -> io::Result<()> {
        let (header, payload) = self.payload.split_at_mut(RECORD_HEADER_BYTES as usize);
        let length = u32::try_from(payload.len())
            .ok()
            .filter(|length| *length <= RECORD_PAYLOAD_BYTES_MAX)
            .expect("record payloads are bounded by the log frame limit");
        header[..4].copy_from_slice(&length.to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.out.write_all(&self.payload)
    }
}

fn trailer_fields(trailer: &Trailer) -> [u64; TRAILER_FIELD_COUNT] {
    [
        trailer.entry_count,
        trailer.segment_count,
        trailer.frame_count,
        trailer.checkpoint.0,
        trailer.checkpoint.1,
        trailer.end.0,
        trailer.end.1,
        trailer.epoch,
        trailer.created_at_ms,
    ]
}

/// Where the reader is in the record order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Entries,
    /// In the frames of a segment (its seq).
    Segments(u64),
    Finished,
}

/// Reads and verifies a backup stream record by record.
///
/// Checks the magic line, each record's length and crc, the record order (entries, then segments
/// in increasing seq with their frames, then the trailer), that the trailer's counts match, and
/// that nothing follows it.
pub struct BackupReader<R: Read> {
    input: R,
    /// Byte offset of the next record.
    offset: u64,
    entry_count: u64,
    segment_count: u64,
    frame_count: u64,
    section: Section,
}

impl<R: Read> BackupReader<R> {
    /// Starts reading; fails unless the stream begins with the magic line.
    pub fn new(mut input: R) -> Result<BackupReader<R>, BackupError> {
        let mut magic = [0u8; MAGIC.len()];
        let read_bytes = read_full(&mut input, &mut magic)?;
        if read_bytes < magic.len() && MAGIC.starts_with(&magic[..read_bytes]) {
            return Err(BackupError::Truncated { offset: read_bytes as u64 });
        }
        if &magic == MAGIC_V1 {
            return Err(BackupError::FirstFormat);
        }
        if &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        Ok(BackupReader {
            input,
            offset: MAGIC.len() as u64,
            entry_count: 0,
            segment_count: 0,
            frame_count: 0,
            section: Section::Entries,
        })
    }

    /// Byte offset of the next record (the file's length once the trailer was read).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record; `Ok(None)` after the trailer once the stream has ended cleanly.
    pub fn next_record(&mut self) -> Result<Option<Record>, BackupError> {
        let offset = self.offset;
        if self.section == Section::Finished {
            let mut extra = [0u8; 1];
            if read_full(&mut self.input, &mut extra)? > 0 {
                let reason = "bytes follow the trailer".to_string();
                return Err(BackupError::Damaged { offset, reason });
            }
            return Ok(None);
        }
        let payload = self.read_payload()?;
        let damaged = |reason: String| BackupError::Damaged { offset, reason };
        let (&kind, fields) = payload.split_first().expect("lengths of 0 are refused");
        let record = match (kind, self.section) {
            (KIND_ENTRY, Section::Entries) => {
                self.entry_count += 1;
                decode_entry(fields).ok_or_else(|| damaged("a malformed catalog entry".into()))?
            }
            (KIND_ENTRY, _) => return Err(damaged("a catalog entry after the log".into())),
            (KIND_SEGMENT, section) => {
                let seq = <[u8; 8]>::try_from(fields)
                    .map(u64::from_le_bytes)
                    .map_err(|_| damaged("a malformed segment record".into()))?;
                if let Section::Segments(previous) = section {
                    if seq <= previous {
                        return Err(damaged(format!("segment {seq} after segment {previous}")));
                    }
                }
                self.section = Section::Segments(seq);
                self.segment_count += 1;
                Record::Segment(seq)
            }
            (KIND_FRAME, Section::Segments(_)) => {
                if fields.is_empty() || fields.len() > FRAME_PAYLOAD_BYTES_MAX as usize {
                    return Err(damaged("a log frame of an impossible length".into()));
                }
                self.frame_count += 1;
                Record::Frame(fields.to_vec())
            }
            (KIND_FRAME, _) => return Err(damaged("a log frame outside a segment".into())),
            (KIND_TRAILER, _) => {
                let trailer =
                    decode_trailer(fields).ok_or_else(|| damaged("a malformed trailer".into()))?;
                let found = (self.entry_count, self.segment_count, self.frame_count);
                let said = (trailer.entry_count, trailer.segment_count, trailer.frame_count);
                if found != said {
                    return Err(damaged(format!(
                        "the trailer counts {} entries, {} segments and {} frames, the file \
                         holds {}, {} and {}",
                        said.0, said.1, said.2, found.0, found.1, found.2
                    )));
                }
                self.section = Section::Finished;
                Record::Trailer(trailer)
            }
            (KIND_FAILURE, _) => {
                let message = String::from_utf8_lossy(fields).into_owned();
                return Err(BackupError::WriterFailed { offset, message });
            }
            (other, _) => return Err(damaged(format!("unknown record kind {other}"))),
        };
        Ok(Some(record))
    }

    /// Reads one record's header and payload, checking its length and crc.
    fn read_payload(&mut self) -> Result<Vec<u8>, BackupError> {
        let offset = self.offset;
        let mut header = [0u8; RECORD_HEADER_BYTES as usize];
        if read_full(&mut self.input, &mut header)? < header.len() {
            return Err(BackupError::Truncated { offset });
        }
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if length == 0 || length > RECORD_PAYLOAD_BYTES_MAX {
            let reason = format!("record length {length} is out of range");
            return Err(BackupError::Damaged { offset, reason });
        }
        let mut payload = Vec::new();
        let read_bytes = (&mut self.input).take(u64::from(length)).read_to_end(&mut payload)?;
        if read_bytes < length as usize {
            return Err(BackupError::Truncated { offset });
        }
        let computed_crc = crc32fast::hash(&payload);
        if computed_crc != stored_crc {
            let reason =
                format!("crc mismatch (stored {stored_crc:08x}, computed {computed_crc:08x})");
            return Err(BackupError::Damaged { offset, reason });
        }
        self.offset += RECORD_HEADER_BYTES + u64::from(length);
        Ok(payload)
    }

    /// Reads the rest of the stream, verifying it; returns the trailer.
    pub fn verify_to_end(mut self) -> Result<Trailer, BackupError> {
        let mut trailer = None;
        while let Some(record) = self.next_record()? {
            if let Record::Trailer(found) = record {
                trailer = Some(found);
            }
        }
        Ok(trailer.expect("next_record ends only after the trailer"))
    }
}

/// Reads until `buffer` is full or the stream ends; returns how many bytes were read.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn decode_entry(fields: &[u8]) -> Option<Record> {
    let key_len = u32::from_le_bytes(fields.get(..4)?.try_into().ok()?) as usize;
    let key = fields.get(4..4usize.checked_add(key_len)?)?;
    if key.is_empty() {
        return None;
    }
    let value = &fields[4 + key_len..];
    Some(Record::Entry { key: key.to_vec(), value: value.to_vec() })
}

fn decode_trailer(fields: &[u8]) -> Option<Trailer> {
    if fields.len() != TRAILER_FIELD_COUNT * 8 {
        return None;
    }
    let field = |index: usize| {
        u64::from_le_bytes(fields[index * 8..index * 8 + 8].try_into().expect("8 bytes"))
    };
    Some(Trailer {
        entry_count: field(0),
        segment_count: field(1),
        frame_count: field(2),
        checkpoint: (field(3), field(4)),
        end: (field(5), field(6)),
        epoch: field(7),
        created_at_ms: field(8),
    })
}

/// Visits every catalog entry in key order and returns the manifest among them (the default one
/// of a catalog that never had a checkpoint). The caller makes sure the catalog does not change
/// meanwhile.
pub fn copy_catalog(
    catalog: &Catalog,
    mut visit: impl FnMut(&[u8], &[u8]) -> io::Result<()>,
) -> Result<Manifest, BackupError> {
    let mut manifest = None;
    let mut failure = None;
    catalog
        .for_each_entry(|key, value| {
            if key == keys::MANIFEST_KEY {
                let decoded = codec::decode_manifest(value).map_err(|source| {
                    StoreError::Corrupt { what: "the catalog manifest".into(), source }
                })?;
                manifest = Some(decoded);
            }
            visit(key, value).map_err(|error| {
                let message = error.to_string();
                failure = Some(error);
                StoreError::Io {
                    path: PathBuf::from("<backup stream>"),
                    source: io::Error::other(message),
                }
            })
        })
        .map_err(|error| match failure.take() {
            Some(io_error) => BackupError::Io(io_error),
            None => BackupError::Store(error),
        })?;
    Ok(manifest.unwrap_or_default())
}

/// Writes the log segments that go with a catalog at `manifest`'s checkpoint: each segment before
/// the checkpoint's that still holds contents (whole), then every segment from the checkpoint's
/// on, from its first frame, up to `end` (`None`: the end of the log, for a directory no server
/// uses; a torn tail there is left out). Returns the position the copy ends at.
///
/// The segments must stay while this runs (a running server is asked to pin them). Reads the
/// files only, never changing them.
pub fn write_log<W: Write>(
    log_dir: &Path,
    manifest: &Manifest,
    end: Option<WalPosition>,
    out: &mut BackupWriter<W>,
) -> Result<WalPosition, BackupError> {
    let checkpoint = manifest.position;
    let segments = wal::list_segments(log_dir)?;
    let path_of = |seq: u64| wal::segment_path(log_dir, seq);
    for (seq, _) in &manifest.segments {
        let seq = u64::from(*seq);
        if seq >= checkpoint.segment_seq {
            continue;
        }
        if !segments.iter().any(|(found, _)| *found == seq) {
            let source = io::Error::new(
                io::ErrorKind::NotFound,
                "this log segment holds message contents but is missing",
            );
            return Err(StoreError::Io { path: path_of(seq), source }.into());
        }
        copy_segment(log_dir, seq, Some(segment_end(seq, &path_of(seq))?), out)?;
    }
    let last_seq = match end {
        Some(end) => end.segment_seq,
        None => segments.last().map_or(checkpoint.segment_seq, |(seq, _)| *seq),
    };
    let mut end_position = checkpoint;
    let mut expected_seq = checkpoint.segment_seq;
    for (seq, path) in segments.iter().filter(|(seq, _)| *seq >= checkpoint.segment_seq) {
        if *seq > last_seq {
            break;
        }
        if *seq != expected_seq {
            let error = wal::WalError::Gap {
                dir: log_dir.to_path_buf(),
                missing_seq: expected_seq,
                found_seq: *seq,
            };
            return Err(error.into());
        }
        expected_seq = seq + 1;
        let to = match end {
            Some(end) if end.segment_seq == *seq => Some(end),
            // A segment before the end one is closed: it ends where its file does.
            Some(_) => Some(segment_end(*seq, path)?),
            None if *seq < last_seq => Some(segment_end(*seq, path)?),
            None => None,
        };
        if let Some(position) = copy_segment(log_dir, *seq, to, out)? {
            end_position = end_position.max(position);
        }
    }
    if let Some(end) = end {
        if end > checkpoint && end_position < end {
            let reason = format!("the log ends before the position {end:?} the server named");
            return Err(wal::WalError::corrupt(log_dir, end.offset, reason).into());
        }
        end_position = end_position.max(end);
    }
    Ok(end_position)
}

/// The position at the end of a segment file.
fn segment_end(seq: u64, path: &Path) -> Result<WalPosition, BackupError> {
    let bytes = std::fs::metadata(path)
        .map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?
        .len();
    Ok(WalPosition::new(seq, bytes.max(SEGMENT_HEADER_BYTES)))
}

/// Writes one segment record and the segment's frames from its first up to `to` (the end of the
/// log when `None`); returns the position after the last frame, if any.
fn copy_segment<W: Write>(
    log_dir: &Path,
    seq: u64,
    to: Option<WalPosition>,
    out: &mut BackupWriter<W>,
) -> Result<Option<WalPosition>, BackupError> {
    out.segment(seq)?;
    let from = WalPosition::new(seq, 0);
    let range = wal::read_range(log_dir, from, to, |_, payload| {
        out.frame(payload).map_err(BackupError::Io)
    })?;
    if let Some((segment, offset, reason)) = &range.torn_tail {
        tracing::warn!(
            segment = %segment.display(),
            offset,
            %reason,
            "the log ends in a torn write; the backup stops before it (it was never acknowledged)"
        );
    }
    Ok(range.end_position)
}

/// Backs up a data directory that no process uses (the caller holds it: `catalog` is open):
/// the catalog, then the log from its checkpoint to its end. Returns the trailer.
pub fn backup_stopped<W: Write>(
    catalog: &Catalog,
    log_dir: &Path,
    out: W,
    created_at_ms: u64,
) -> Result<(Trailer, W), BackupError> {
    let mut writer = BackupWriter::new(out)?;
    let manifest = copy_catalog(catalog, |key, value| writer.entry(key, value))?;
    let end = write_log(log_dir, &manifest, None, &mut writer)?;
    Ok(writer.finish(manifest.position, end, manifest.epoch, created_at_ms)?)
}

/// What a restore wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreSummary {
    pub trailer: Trailer,
    /// Bytes of the backup read.
    pub byte_count: u64,
    /// Log frames the first open replayed (those after the checkpoint).
    pub replayed_frame_count: u64,
}

/// Restores a backup into `data_dir`, which must be new or empty: writes the catalog entries and
/// the log segments, then opens the directory as a server would (recovery replays the frames after
/// the checkpoint and checkpoints), so a server starts from it with nothing to replay.
///
/// Reads the stream once, verifying every record; an error leaves a partly written directory that
/// the caller discards.
pub fn restore<R: Read>(
    mut reader: BackupReader<R>,
    data_dir: &Path,
) -> Result<RestoreSummary, BackupError> {
    let log_dir = data_dir.join(super::LOG_DIR);
    std::fs::create_dir_all(&log_dir)
        .map_err(|source| StoreError::Io { path: log_dir.clone(), source })?;
    let catalog = Catalog::open(data_dir)?;
    let mut batch = Vec::new();
    let mut segment: Option<SegmentWriter> = None;
    let trailer = loop {
        let offset = reader.offset();
        let Some(record) = reader.next_record()? else {
            return Err(BackupError::Truncated { offset });
        };
        match record {
            Record::Entry { key, value } => {
                batch.push((key, value));
                if batch.len() == RESTORE_BATCH_WRITE_COUNT_MAX {
                    catalog.insert_raw(std::mem::take(&mut batch))?;
                }
            }
            Record::Segment(seq) => {
                catalog.insert_raw(std::mem::take(&mut batch))?;
                if let Some(done) = segment.take() {
                    done.finish()?;
                }
                segment = Some(SegmentWriter::create(&log_dir, seq)?);
            }
            Record::Frame(payload) => {
                segment.as_mut().expect("the reader puts frames in segments").frame(&payload)?;
            }
            Record::Trailer(trailer) => break trailer,
        }
    };
    // Nothing may follow the trailer.
    let end_offset = reader.offset();
    if reader.next_record()?.is_some() {
        let reason = "a record after the trailer".to_string();
        return Err(BackupError::Damaged { offset: end_offset, reason });
    }
    catalog.insert_raw(batch)?;
    if let Some(done) = segment.take() {
        done.finish()?;
    }
    let manifest = catalog.manifest()?.unwrap_or_default();
    let checkpoint = (manifest.position.segment_seq, manifest.position.offset);
    if checkpoint != trailer.checkpoint || manifest.epoch != trailer.epoch {
        let reason = format!(
            "the catalog's manifest names checkpoint {} at {checkpoint:?}, the trailer {} at {:?}",
            manifest.epoch, trailer.epoch, trailer.checkpoint
        );
        return Err(BackupError::Damaged { offset: end_offset, reason });
    }
    catalog.flush()?;
    File::open(&log_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StoreError::Io { path: log_dir.clone(), source })?;
    drop(catalog);
    super::wait_until_released(data_dir)?;
    let now_ms = crate::clock::now_ms();
    let config = crate::queue::BrokerConfig::default();
    let options = super::recovery::RecoveryOptions::default();
    let recovered = super::recovery::recover(data_dir, config, now_ms, now_ms, options)?;
    let replayed_frame_count = recovered.summary.frame_count;
    // Whoever opens the directory next (a server, `check --backup`) must find it closed: sled
    // lets go of its lock a moment after the last handle is dropped.
    drop(recovered);
    super::wait_until_released(data_dir)?;
    Ok(RestoreSummary { trailer, byte_count: end_offset, replayed_frame_count })
}

/// A log segment file being rebuilt from a backup: its header, then its frames as they were.
struct SegmentWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl SegmentWriter {
    fn create(log_dir: &Path, seq: u64) -> Result<SegmentWriter, BackupError> {
        let path = wal::segment_path(log_dir, seq);
        let io = |source| StoreError::Io { path: path.clone(), source };
        let file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io)?;
        let mut file = BufWriter::new(file);
        file.write_all(&wal::SEGMENT_MAGIC).map_err(io)?;
        file.write_all(&seq.to_le_bytes()).map_err(io)?;
        Ok(SegmentWriter { path, file })
    }

    fn frame(&mut self, payload: &[u8]) -> Result<(), BackupError> {
        let length = u32::try_from(payload.len()).expect("the reader bounds frame lengths");
        let io = |source| StoreError::Io { path: self.path.clone(), source };
        self.file.write_all(&length.to_le_bytes()).map_err(io)?;
        self.file.write_all(&crc32fast::hash(payload).to_le_bytes()).map_err(io)?;
        self.file.write_all(payload).map_err(io)?;
        Ok(())
    }

    fn finish(self) -> Result<(), BackupError> {
        let path = self.path;
        let io = |source| StoreError::Io { path: path.clone(), source };
        let file = self.file.into_inner().map_err(|error| io(error.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = BackupWriter::new(Vec::new()).unwrap();
        writer.entry(b"q\0\0\0\x01", b"value one").unwrap();
        writer.entry(b"m", b"").unwrap();
        writer.segment(3).unwrap();
        writer.frame(b"\x01frame").unwrap();
        writer.segment(5).unwrap();
        let checkpoint = WalPosition::new(5, 16);
        let end = WalPosition::new(5, 99);
        writer.finish(checkpoint, end, 7, 1234).unwrap().1
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, BackupError> {
        let mut reader = BackupReader::new(bytes)?;
        let mut records = Vec::new();
        while let Some(record) = reader.next_record()? {
            records.push(record);
        }
        Ok(records)
    }

    #[test]
    fn records_round_trip() {
        let records = read_all(&sample()).unwrap();
        assert_eq!(records.len(), 6);
        assert_eq!(
            records[0],
            Record::Entry { key: b"q\0\0\0\x01".to_vec(), value: b"value one".to_vec() }
        );
        assert_eq!(records[1], Record::Entry { key: b"m".to_vec(), value: vec![] });
        assert_eq!(records[2], Record::Segment(3));
        assert_eq!(records[3], Record::Frame(b"\x01frame".to_vec()));
        assert_eq!(records[4], Record::Segment(5));
        let trailer = Trailer {
            entry_count: 2,
            segment_count: 2,
            frame_count: 1,
            checkpoint: (5, 16),
            end: (5, 99),
            epoch: 7,
            created_at_ms: 1234,
        };
        assert_eq!(records[5], Record::Trailer(trailer));
        assert_eq!(
            BackupReader::new(sample().as_slice()).unwrap().verify_to_end().unwrap(),
            trailer
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = sample();
        for length in 0..bytes.len() {
            match read_all(&bytes[..length]) {
                Err(BackupError::Truncated { offset }) => assert!(offset <= length as u64),
                other => panic!("cut at {length}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = sample();
        for index in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[index] ^= 1 << bit;
                let result = read_all(&damaged);
                assert!(result.is_err(), "flip at byte {index} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn damage_names_the_record_offset() {
        let mut bytes = sample();
        // The second record starts after the magic and the first record (8 + 1 + 4 + 5 + 9).
        let second = MAGIC.len() + 8 + 1 + 4 + 5 + 9;
        bytes[second + 8] ^= 0xff;
        match read_all(&bytes) {
            Err(error @ BackupError::Damaged { offset, .. }) => {
                assert_eq!(offset, second as u64);
                assert!(error.to_string().contains(&format!("offset {second}")), "{error}");
                assert!(error.to_string().contains("crc mismatch"), "{error}");
            }
            other => panic!("expected Damaged, got {other:?}"),
        }
    }

    #[test]
    fn misplaced_foreign_and_first_format_content_is_refused() {
        assert!(matches!(read_all(b"hello world, not a backup"), Err(BackupError::NotABackup)));
        let mut old = MAGIC_V1.to_vec();
        old.extend_from_slice(&[0; 40]);
        let error = read_all(&old).unwrap_err();
        assert!(matches!(error, BackupError::FirstFormat), "{error:?}");
        assert!(error.to_string().contains("first storage format"), "{error}");
        let mut extra = sample();
        extra.push(0);
        assert!(matches!(read_all(&extra), Err(BackupError::Damaged { .. })));
        let mut writer = BackupWriter::new(Vec::new()).unwrap();
        writer.segment(1).unwrap();
        writer.entry(b"m", b"v").unwrap();
        let bytes = writer.finish(WalPosition::START, WalPosition::START, 0, 0).unwrap().1;
        let error = read_all(&bytes).unwrap_err();
        assert!(error.to_string().contains("after the log"), "{error}");
        let mut writer = BackupWriter::new(Vec::new()).unwrap();
        writer.frame(b"\x01").unwrap();
        let bytes = writer.finish(WalPosition::START, WalPosition::START, 0, 0).unwrap().1;
        let error = read_all(&bytes).unwrap_err();
        assert!(error.to_string().contains("outside a segment"), "{error}");
        let mut writer = BackupWriter::new(Vec::new()).unwrap();
        writer.segment(4).unwrap();
        writer.segment(4).unwrap();
        let bytes = writer.finish(WalPosition::START, WalPosition::START, 0, 0).unwrap().1;
        let error = read_all(&bytes).unwrap_err();
        assert!(error.to_string().contains("segment 4 after segment 4"), "{error}");
        let mut failed = BackupWriter::new(Vec::new()).unwrap();
        failed.entry(b"m", b"v").unwrap();
        let bytes = failed.fail("disk on fire").unwrap();
        match read_all(&bytes) {
            Err(error @ BackupError::WriterFailed { .. }) => {
                assert!(error.to_string().contains("disk on fire"), "{error}");
            }
            other => panic!("expected WriterFailed, got {other:?}"),
        }
    }
}
