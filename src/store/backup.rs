//! Backups: the file format, taking a consistent snapshot of a store, and restoring one.
//!
//! A backup is a fuzzy copy of the sled trees plus the WAL frames that make it exact, the same
//! pairing recovery relies on. It starts at a WAL position `from` before which every committed
//! change is already in sled, copies every tree while writes go on, then copies the WAL frames from
//! `from` up to a position `to` taken after the copy. Each key's copied value comes from some frame
//! before `to`, and every change is idempotent (a full value, a removal, or a history event that
//! is skipped when already recorded), so replaying the frames over the copied trees yields exactly
//! the state after the frame ending at `to`. Everything acknowledged before the backup started
//! lies before `from`. Restore writes the trees, replays the frames and checkpoints, leaving a
//! data directory a server starts from with nothing to replay.
//!
//! # File layout
//!
//! A magic line, then records, the last of which is the trailer. Integers are little-endian.
//!
//! | bytes | field                                                           |
//! |-------|-----------------------------------------------------------------|
//! | 17    | `OUTBOXD-BACKUP 1\n` (the digit is the format version)          |
//! | per record: 4 | payload length `u32`, `1..=RECORD_PAYLOAD_BYTES_MAX`  |
//! | 4     | crc32 (crc32fast) of the payload                                 |
//! | n     | payload: a kind byte, then the kind's fields                     |
//!
//! | kind | name    | fields                                                              |
//! |------|---------|---------------------------------------------------------------------|
//! | 1    | entry   | tree name length `u8`, tree name, key length `u32`, key, value (rest) |
//! | 2    | frame   | a WAL frame payload (version byte + change list), as in the WAL     |
//! | 3    | trailer | entry count, frame count, from seq, from offset, to seq, to offset, created-at ms: 7 × `u64` |
//! | 4    | failure | UTF-8 text: why the writer stopped (an online backup's server error) |
//!
//! Entries come first, then frames, then the trailer, then the end of the file. A file that ends
//! anywhere else is truncated; a record whose crc does not match is damaged; both are reported
//! with the byte offset of the record.

use super::overlay::ALL_TREES;
use super::wal::{self, WalPosition, FRAME_PAYLOAD_BYTES_MAX};
use super::{codec, keys, Store, StoreError, QUARANTINE_TREE};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

/// The first bytes of every backup file; the digit is the format version.
pub const MAGIC: &[u8; 17] = b"OUTBOXD-BACKUP 1\n";

/// The largest record payload: a WAL frame at its largest plus the kind byte (a stored value is
/// far smaller). A bigger length in a file is damage, and is never allocated.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = FRAME_PAYLOAD_BYTES_MAX + 1;

const RECORD_HEADER_BYTES: u64 = 8;
const KIND_ENTRY: u8 = 1;
const KIND_FRAME: u8 = 2;
const KIND_TRAILER: u8 = 3;
const KIND_FAILURE: u8 = 4;
const TRAILER_BYTES: usize = 1 + 7 * 8;

/// Most sled writes in one batch when restoring (sled holds a batch in memory).
const RESTORE_BATCH_WRITE_COUNT_MAX: usize = 1000;

/// What a complete backup holds, from its trailer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Trailer {
    pub entry_count: u64,
    pub frame_count: u64,
    /// The log position the tree copy started from: every change before it is in the entries.
    pub from: (u64, u64),
    /// The log position the frames end at: restoring yields the state right after it.
    pub to: (u64, u64),
    /// When the backup was taken (Unix epoch ms).
    pub created_at_ms: u64,
}

/// One record of a backup file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry { tree: String, key: Vec<u8>, value: Vec<u8> },
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
    /// The file ends before its trailer (or inside a record) at `offset`.
    Truncated { offset: u64 },
    /// The record at `offset` is damaged or out of place.
    Damaged { offset: u64, reason: String },
    /// The writer stopped and said why (an online backup whose server hit an error).
    WriterFailed { offset: u64, message: String },
    /// Reading the store or its log failed while taking the backup.
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

impl From<sled::Error> for BackupError {
    fn from(error: sled::Error) -> Self {
        BackupError::Store(StoreError::Sled(error))
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
    frame_count: u64,
    /// The record being written: its header, then its payload (a kind byte and fields).
    payload: Vec<u8>,
}

impl<W: Write> BackupWriter<W> {
    /// Starts a backup on `out` by writing the magic line.
    pub fn new(mut out: W) -> io::Result<BackupWriter<W>> {
        out.write_all(MAGIC)?;
        Ok(BackupWriter { out, entry_count: 0, frame_count: 0, payload: Vec::new() })
    }

    /// Writes one sled entry.
    pub fn entry(&mut self, tree: &str, key: &[u8], value: &[u8]) -> io::Result<()> {
        let tree_len = u8::try_from(tree.len()).expect("tree names are short");
        let key_len = u32::try_from(key.len()).expect("sled keys are far below 4 GiB");
        self.start_record(KIND_ENTRY);
        self.payload.push(tree_len);
        self.payload.extend_from_slice(tree.as_bytes());
        self.payload.extend_from_slice(&key_len.to_le_bytes());
        self.payload.extend_from_slice(key);
        self.payload.extend_from_slice(value);
        self.entry_count += 1;
        self.write_payload()
    }

    /// Writes one WAL frame payload.
    pub fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.start_record(KIND_FRAME);
        self.payload.extend_from_slice(frame);
        self.frame_count += 1;
        self.write_payload()
    }

    /// Ends the backup with its trailer and flushes; returns the trailer and the stream.
    pub fn finish(
        mut self,
        from: WalPosition,
        to: WalPosition,
        created_at_ms: u64,
    ) -> io::Result<(Trailer, W)> {
        let trailer = Trailer {
            entry_count: self.entry_count,
            frame_count: self.frame_count,
            from: (from.segment_seq, from.offset),
            to: (to.segment_seq, to.offset),
            created_at_ms,
        };
        self.start_record(KIND_TRAILER);
        for value in [
            trailer.entry_count,
            trailer.frame_count,
            trailer.from.0,
            trailer.from.1,
            trailer.to.0,
            trailer.to.1,
            trailer.created_at_ms,
        ] {
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
            .expect("record payloads are bounded by the WAL frame limit");
        header[..4].copy_from_slice(&length.to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.out.write_all(&self.payload)
    }
}

/// Reads and verifies a backup stream record by record.
///
/// Checks the magic line, each record's length and crc, that entries come before frames and
/// the trailer last, that the trailer's counts match, and that nothing follows it.
pub struct BackupReader<R: Read> {
    input: R,
    /// Byte offset of the next record.
    offset: u64,
    entry_count: u64,
    frame_count: u64,
    seen_frame: bool,
    finished: bool,
}

impl<R: Read> BackupReader<R> {
    /// Starts reading; fails unless the stream begins with the magic line.
    pub fn new(mut input: R) -> Result<BackupReader<R>, BackupError> {
        let mut magic = [0u8; MAGIC.len()];
        let read_bytes = read_full(&mut input, &mut magic)?;
        if read_bytes < magic.len() && MAGIC.starts_with(&magic[..read_bytes]) {
            return Err(BackupError::Truncated { offset: read_bytes as u64 });
        }
        if &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        Ok(BackupReader {
            input,
            offset: MAGIC.len() as u64,
            entry_count: 0,
            frame_count: 0,
            seen_frame: false,
            finished: false,
        })
    }

    /// Byte offset of the next record (the file's length once the trailer was read).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record; `Ok(None)` after the trailer once the stream has ended cleanly.
    pub fn next_record(&mut self) -> Result<Option<Record>, BackupError> {
        let offset = self.offset;
        if self.finished {
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
        let record = match kind {
            KIND_ENTRY if self.seen_frame => {
                return Err(damaged("a tree entry after the log frames".into()))
            }
            KIND_ENTRY => {
                self.entry_count += 1;
                decode_entry(fields).ok_or_else(|| damaged("a malformed tree entry".into()))?
            }
            KIND_FRAME => {
                self.seen_frame = true;
                self.frame_count += 1;
                Record::Frame(fields.to_vec())
            }
            KIND_TRAILER => {
                let trailer =
                    decode_trailer(fields).ok_or_else(|| damaged("a malformed trailer".into()))?;
                if (trailer.entry_count, trailer.frame_count)
                    != (self.entry_count, self.frame_count)
                {
                    return Err(damaged(format!(
                        "the trailer counts {} entries and {} frames, the file holds {} and {}",
                        trailer.entry_count,
                        trailer.frame_count,
                        self.entry_count,
                        self.frame_count
                    )));
                }
                self.finished = true;
                Record::Trailer(trailer)
            }
            KIND_FAILURE => {
                let message = String::from_utf8_lossy(fields).into_owned();
                return Err(BackupError::WriterFailed { offset, message });
            }
            other => return Err(damaged(format!("unknown record kind {other}"))),
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
    let (&tree_len, rest) = fields.split_first()?;
    let tree = std::str::from_utf8(rest.get(..tree_len as usize)?).ok()?;
    let rest = &rest[tree_len as usize..];
    let key_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let key = rest.get(4..4 + key_len)?;
    let value = &rest[4 + key_len..];
    Some(Record::Entry { tree: tree.to_string(), key: key.to_vec(), value: value.to_vec() })
}

fn decode_trailer(fields: &[u8]) -> Option<Trailer> {
    if fields.len() != TRAILER_BYTES - 1 {
        return None;
    }
    let field = |index: usize| {
        u64::from_le_bytes(fields[index * 8..index * 8 + 8].try_into().expect("8 bytes"))
    };
    Some(Trailer {
        entry_count: field(0),
        frame_count: field(1),
        from: (field(2), field(3)),
        to: (field(4), field(5)),
        created_at_ms: field(6),
    })
}

/// Every tree a backup copies, by name: the data trees and the quarantine.
fn backup_trees(store: &Store) -> Vec<(&'static str, &sled::Tree)> {
    let mut trees: Vec<(&'static str, &sled::Tree)> =
        ALL_TREES.iter().map(|&tree| (tree.name(), store.tree(tree))).collect();
    trees.push((QUARANTINE_TREE, &store.quarantine));
    trees
}

/// Writes a consistent copy of `store` to `out` (everything but the trailer); returns the log
/// positions the copy starts and ends at, for [`BackupWriter::finish`].
///
/// `from` is a WAL position before which every committed change is staged; the copy first waits
/// until those changes are in sled. `end` is asked after the trees are copied for the position
/// the log copy ends at (`None`: the end of the log, for a directory no server uses). The WAL
/// segments from `from` on must stay while this runs (see [`Store::pin_wal`]). Never holds up
/// the storage thread: it reads sled and the log files only.
pub fn write_backup<W: Write>(
    store: &Store,
    wal_dir: &Path,
    from: WalPosition,
    end: impl FnOnce() -> Result<Option<WalPosition>, BackupError>,
    out: &mut BackupWriter<W>,
) -> Result<(WalPosition, WalPosition), BackupError> {
    store.sync_overlay()?;
    for (name, tree) in backup_trees(store) {
        for entry in tree.iter() {
            let (key, value) = entry?;
            out.entry(name, &key, &value)?;
        }
    }
    let to = end()?;
    let range = wal::read_range(wal_dir, from, to, |_, payload| {
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
    let to = to.or(range.end_position).unwrap_or(from).max(from);
    Ok((from, to))
}

/// What a restore wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreSummary {
    pub trailer: Trailer,
    /// Bytes of the backup read.
    pub byte_count: u64,
}

/// Restores a backup into `data_dir`, which must be new or empty: writes the trees, replays the
/// log frames over them and checkpoints, so a server starts from it with nothing to replay.
///
/// Reads the stream once, verifying every record; an error leaves a partly written directory that
/// the caller discards.
pub fn restore<R: Read>(
    mut reader: BackupReader<R>,
    data_dir: &Path,
) -> Result<RestoreSummary, BackupError> {
    let wal_dir = data_dir.join("wal");
    std::fs::create_dir_all(&wal_dir)
        .map_err(|source| StoreError::Io { path: wal_dir.clone(), source })?;
    let store = Store::open(data_dir)?;
    let mut batch = EntryBatch::default();
    loop {
        let offset = reader.offset();
        let Some(record) = reader.next_record()? else {
            return Err(BackupError::Truncated { offset });
        };
        match record {
            Record::Entry { tree, key, value } => {
                // The checkpoint position belongs to the source's log; the restored one starts anew.
                if tree == super::overlay::TreeId::System.name() && key == keys::CHECKPOINT_KEY {
                    continue;
                }
                let Some(sled_tree) = restore_tree(&store, &tree) else {
                    let reason = format!("an entry of an unknown tree {tree:?}");
                    return Err(BackupError::Damaged { offset, reason });
                };
                batch.add(&tree, sled_tree, key, value)?;
            }
            Record::Frame(payload) => {
                batch.apply()?;
                let changes = codec::decode_changes(&payload).map_err(|error| {
                    BackupError::Damaged { offset, reason: format!("a log frame: {error}") }
                })?;
                store.apply(&changes)?;
            }
            Record::Trailer(trailer) => {
                batch.apply()?;
                // Ends the stream: nothing may follow the trailer.
                let end = reader.offset();
                if reader.next_record()?.is_some() {
                    let reason = "a record after the trailer".to_string();
                    return Err(BackupError::Damaged { offset: end, reason });
                }
                store.checkpoint(WalPosition::START)?;
                // Whoever opens the directory next (a server, `check --backup`) must find it
                // closed: sled lets go of its lock a moment after the last handle is dropped.
                drop(batch);
                drop(store);
                super::wait_until_released(data_dir)?;
                return Ok(RestoreSummary { trailer, byte_count: end });
            }
        }
    }
}

fn restore_tree<'a>(store: &'a Store, name: &str) -> Option<&'a sled::Tree> {
    backup_trees(store).into_iter().find(|(tree, _)| *tree == name).map(|(_, tree)| tree)
}

/// Entries of one tree waiting to be written as one sled batch.
#[derive(Default)]
struct EntryBatch {
    tree: Option<(String, sled::Tree)>,
    batch: sled::Batch,
    count: usize,
}

impl EntryBatch {
    fn add(
        &mut self,
        name: &str,
        tree: &sled::Tree,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), BackupError> {
        let same_tree = self.tree.as_ref().is_some_and(|(current, _)| current == name);
        if !same_tree || self.count == RESTORE_BATCH_WRITE_COUNT_MAX {
            self.apply()?;
            self.tree = Some((name.to_string(), tree.clone()));
        }
        self.batch.insert(key, value);
        self.count += 1;
        Ok(())
    }

    fn apply(&mut self) -> Result<(), BackupError> {
        if let Some((_, tree)) = &self.tree {
            tree.apply_batch(std::mem::take(&mut self.batch))?;
        }
        self.count = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = BackupWriter::new(Vec::new()).unwrap();
        writer.entry("meta", &[0, 0, 0, 0, 0, 0, 0, 1], b"value one").unwrap();
        writer.entry("content", &[0, 0, 0, 0, 0, 0, 0, 1], b"").unwrap();
        writer.frame(b"\x01frame").unwrap();
        let from = WalPosition::new(3, 16);
        let to = WalPosition::new(4, 99);
        writer.finish(from, to, 1234).unwrap().1
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
    fn a_restored_directory_is_released_when_restore_returns() {
        let mut writer = BackupWriter::new(Vec::new()).unwrap();
        writer.entry("queues", &[0, 0, 0, 1], b"not decoded by restore").unwrap();
        let bytes = writer.finish(WalPosition::START, WalPosition::START, 1).unwrap().1;
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            restore(BackupReader::new(bytes.as_slice()).unwrap(), dir.path()).unwrap();
            // The next opener (a server, `check --backup`) must not find it locked: sled's
            // flusher may hold the database a moment after its last handle is dropped, and under
            // load that moment was long enough for `check --backup` to fail.
            let state = super::super::directory_state(dir.path()).unwrap();
            assert_eq!(state, super::super::DirectoryState::Free);
        }
    }

    #[test]
    fn records_round_trip() {
        let records = read_all(&sample()).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(
            records[0],
            Record::Entry {
                tree: "meta".into(),
                key: vec![0, 0, 0, 0, 0, 0, 0, 1],
                value: b"value one".to_vec()
            }
        );
        assert_eq!(
            records[1],
            Record::Entry {
                tree: "content".into(),
                key: vec![0, 0, 0, 0, 0, 0, 0, 1],
                value: vec![]
            }
        );
        assert_eq!(records[2], Record::Frame(b"\x01frame".to_vec()));
        let trailer = Trailer {
            entry_count: 2,
            frame_count: 1,
            from: (3, 16),
            to: (4, 99),
            created_at_ms: 1234,
        };
        assert_eq!(records[3], Record::Trailer(trailer));
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
        // The second record starts after the magic and the first record (8 + 1 + 1 + 4 + 4 + 8 + 9).
        let second = MAGIC.len() + 8 + 1 + 1 + 4 + 4 + 8 + 9;
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
    fn misplaced_and_foreign_content_is_refused() {
        assert!(matches!(read_all(b"hello world, not a backup"), Err(BackupError::NotABackup)));
        let mut extra = sample();
        extra.push(0);
        assert!(matches!(read_all(&extra), Err(BackupError::Damaged { .. })));
        let mut writer = BackupWriter::new(Vec::new()).unwrap();
        writer.frame(b"\x01frame").unwrap();
        writer.entry("meta", b"k", b"v").unwrap();
        let bytes = writer.finish(WalPosition::START, WalPosition::START, 0).unwrap().1;
        let error = read_all(&bytes).unwrap_err();
        assert!(error.to_string().contains("after the log frames"), "{error}");
        let mut failed = BackupWriter::new(Vec::new()).unwrap();
        failed.entry("meta", b"k", b"v").unwrap();
        let bytes = failed.fail("disk on fire").unwrap();
        match read_all(&bytes) {
            Err(error @ BackupError::WriterFailed { .. }) => {
                assert!(error.to_string().contains("disk on fire"), "{error}");
            }
            other => panic!("expected WriterFailed, got {other:?}"),
        }
    }
}
