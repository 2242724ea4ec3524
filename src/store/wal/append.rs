//! The appender: frames are encoded straight into one buffer, written with one `write` and made
//! durable with one `fdatasync` per commit (group commit).

use super::file::{self, LogFile};
use super::segment::{
    create_dir_durably, list_segments, next_seq, prepare_segment, publish_segment,
    remove_temp_files, segment_path, sync_dir,
};
use super::{
    WalError, WalPosition, BUFFER_RETAIN_BYTES_MAX, FRAME_HEADER_LEN, FRAME_PAYLOAD_BYTES_MAX,
    SEGMENT_HEADER_BYTES,
};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The appending side of the log: buffers frames in memory and makes them durable on commit.
///
/// Not thread-safe by itself; the storage thread owns it.
pub struct Wal {
    dir: PathBuf,
    segment_bytes_max: u64,
    segment_seq: u64,
    segment_path: PathBuf,
    file: LogFile,
    /// Bytes of the current segment known to be durable (header included).
    committed_offset: u64,
    /// Frames appended since the last commit, already encoded.
    buffer: Vec<u8>,
    /// Where the frame being written (by `begin_frame`) starts in `buffer`.
    open_frame: Option<usize>,
    /// Sizes of all segments except the current one, by seq.
    closed_segment_bytes: BTreeMap<u64, u64>,
    /// The first write or sync failure; once set, nothing more is written.
    poison: Option<WalError>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segment_seq", &self.segment_seq)
            .field("committed_offset", &self.committed_offset)
            .field("buffered_bytes", &self.buffer.len())
            .field("poisoned", &self.poison.is_some())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (creating if absent) the log directory for appending, always in a new segment.
    ///
    /// The new segment's seq is one more than the highest existing one (0 in an empty directory),
    /// so a segment that [`super::replay`] may have truncated is never appended to. Call replay
    /// first: `open` does not validate existing segments. Leftover temporary files from an
    /// interrupted segment creation are deleted. `segment_bytes_max` is a soft limit checked by
    /// [`Wal::rotate_if_full`]; a segment can exceed it by one commit batch.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> Result<Wal, WalError> {
        create_dir_durably(dir)?;
        remove_temp_files(dir)?;
        let mut closed_segment_bytes = BTreeMap::new();
        for (seq, path) in list_segments(dir)? {
            let bytes = fs::metadata(&path).map_err(|e| WalError::io(&path, e))?.len();
            closed_segment_bytes.insert(seq, bytes);
        }
        let segment_seq = match closed_segment_bytes.last_key_value() {
            Some((&highest_seq, _)) => next_seq(dir, highest_seq)?,
            None => 0,
        };
        let (mut file, temp_path, segment_path) = prepare_segment(dir, segment_seq)?;
        publish_segment(dir, &mut file, &temp_path, &segment_path)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segment_seq,
            segment_path,
            file,
            committed_offset: SEGMENT_HEADER_BYTES,
            buffer: Vec::new(),
            open_frame: None,
            closed_segment_bytes,
            poison: None,
        })
    }

    /// Appends one frame to the in-memory batch buffer without any syscall.
    ///
    /// Returns the position just after the frame; it becomes durable only when the next
    /// [`Wal::commit`] succeeds.
    ///
    /// # Panics
    ///
    /// If `payload` is empty or longer than [`FRAME_PAYLOAD_BYTES_MAX`]; callers must validate
    /// request sizes before they reach the log.
    pub fn append(&mut self, payload: &[u8]) -> WalPosition {
        self.begin_frame();
        self.buffer.extend_from_slice(payload);
        self.end_frame()
    }

    /// Starts a frame in the buffer and returns where its payload will be on disk; the caller
    /// writes the payload into [`Wal::frame_buffer`] and ends it with [`Wal::end_frame`] (or
    /// drops it with [`Wal::abort_frame`]).
    pub fn begin_frame(&mut self) -> WalPosition {
        assert!(self.open_frame.is_none(), "a frame is already open");
        self.open_frame = Some(self.buffer.len());
        self.buffer.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        self.pending_position()
    }

    /// The buffer to write the open frame's payload into (append only).
    pub fn frame_buffer(&mut self) -> &mut Vec<u8> {
        assert!(self.open_frame.is_some(), "no frame is open");
        &mut self.buffer
    }

    /// Ends the open frame: fills in its length and crc. Returns the position after it.
    pub fn end_frame(&mut self) -> WalPosition {
        let start = self.open_frame.take().expect("no frame is open");
        let payload = &self.buffer[start + FRAME_HEADER_LEN..];
        assert!(!payload.is_empty(), "log frames must not be empty");
        let payload_len = match u32::try_from(payload.len()) {
            Ok(len) if len <= FRAME_PAYLOAD_BYTES_MAX => len,
            _ => panic!(
                "log frame payload of {} bytes exceeds FRAME_PAYLOAD_BYTES_MAX ({FRAME_PAYLOAD_BYTES_MAX})",
                payload.len()
            ),
        };
        let crc = crc32fast::hash(payload);
        self.buffer[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
        self.buffer[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.pending_position()
    }

    /// Drops the open frame and everything written into it.
    pub fn abort_frame(&mut self) {
        let start = self.open_frame.take().expect("no frame is open");
        self.buffer.truncate(start);
    }

    /// Writes all buffered frames with one `write_all` and then `fdatasync`s the segment.
    ///
    /// Returns the new committed position (unchanged, and no syscall, if nothing was buffered).
    /// On error the log is poisoned: this and every later `commit`, `rotate` and
    /// `rotate_if_full` return the error again (marked as a repeat), because retrying an fsync
    /// after a failure can falsely report success. The buffered frames are discarded.
    pub fn commit(&mut self) -> Result<WalPosition, WalError> {
        assert!(self.open_frame.is_none(), "commit with a frame still open");
        if let Err(error) = self.check_poison() {
            self.buffer.clear();
            return Err(error);
        }
        if self.buffer.is_empty() {
            return Ok(self.committed_position());
        }
        let result = write_and_sync(&self.file, &self.buffer);
        let written_bytes = self.buffer.len() as u64;
        self.buffer.clear();
        if self.buffer.capacity() > BUFFER_RETAIN_BYTES_MAX {
            self.buffer.shrink_to(BUFFER_RETAIN_BYTES_MAX);
        }
        match result {
            Ok(()) => {
                self.committed_offset += written_bytes;
                Ok(self.committed_position())
            }
            Err(source) => {
                let error = WalError::io(&self.segment_path, source);
                self.poison = Some(error.duplicate(""));
                Err(error)
            }
        }
    }

    /// Starts a new segment if the current one has reached `segment_bytes_max`; returns whether it did.
    ///
    /// Frames still buffered are committed into the current segment first (their positions point
    /// into it). A segment holding no frames is never rotated away, so a tiny
    /// `segment_bytes_max` cannot cause a rotation loop.
    pub fn rotate_if_full(&mut self) -> Result<bool, WalError> {
        self.check_poison()?;
        let segment_bytes = self.pending_position().offset;
        if segment_bytes <= SEGMENT_HEADER_BYTES || segment_bytes < self.segment_bytes_max {
            return Ok(false);
        }
        self.rotate()?;
        Ok(true)
    }

    /// Starts a new segment now and returns its first position, `(segment_seq, 16)`.
    ///
    /// Buffered frames are committed into the current segment first, because the positions
    /// already handed out for them point into it. If the new segment cannot be created the
    /// current one stays in use; only a failure after the new file became visible poisons.
    pub fn rotate(&mut self) -> Result<WalPosition, WalError> {
        self.check_poison()?;
        if !self.buffer.is_empty() {
            self.commit()?;
        }
        let segment_seq = next_seq(&self.dir, self.segment_seq)?;
        assert!(segment_seq < u64::from(u32::MAX), "segment numbers fit in content locations");
        let (mut file, temp_path, segment_path) = prepare_segment(&self.dir, segment_seq)?;
        if let Err(error) = publish_segment(&self.dir, &mut file, &temp_path, &segment_path) {
            // The new file may or may not exist now; appending anywhere could be ambiguous.
            self.poison = Some(error.duplicate(""));
            return Err(error);
        }
        self.closed_segment_bytes.insert(self.segment_seq, self.committed_offset);
        self.segment_seq = segment_seq;
        self.segment_path = segment_path;
        self.file = file;
        self.committed_offset = SEGMENT_HEADER_BYTES;
        Ok(self.committed_position())
    }

    /// Returns the position just after the last committed frame.
    pub fn committed_position(&self) -> WalPosition {
        WalPosition::new(self.segment_seq, self.committed_offset)
    }

    /// The segment frames are appended to now.
    pub fn current_segment(&self) -> u64 {
        self.segment_seq
    }

    /// The closed segments (every one but the current), by seq, with their sizes.
    pub fn closed_segments(&self) -> &BTreeMap<u64, u64> {
        &self.closed_segment_bytes
    }

    /// Deletes the given closed segments (the current one is never deleted, nor one not listed);
    /// returns how many it deleted. The directory is fsynced afterwards so the deletions stick.
    /// Not blocked by poisoning: the caller only deletes segments nothing needs any more.
    pub fn remove_segments(&mut self, seqs: &[u64]) -> Result<usize, WalError> {
        let mut removed_count = 0;
        for seq in seqs {
            if !self.closed_segment_bytes.contains_key(seq) {
                continue;
            }
            let path = segment_path(&self.dir, *seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io(&path, e)),
            }
            file::forget(&path);
            self.closed_segment_bytes.remove(seq);
            removed_count += 1;
            crate::failpoint::crash("segments.after_first_remove");
        }
        if removed_count > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed_count)
    }

    /// Deletes every closed segment whose seq is below `position.segment_seq`.
    pub fn remove_before(&mut self, position: WalPosition) -> Result<usize, WalError> {
        let doomed: Vec<u64> =
            self.closed_segment_bytes.range(..position.segment_seq).map(|(&seq, _)| seq).collect();
        self.remove_segments(&doomed)
    }

    /// Returns the total size of all segment files in bytes, for metrics and checkpoint triggering.
    ///
    /// Computed from bookkeeping (no syscall); the current segment counts its committed bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.closed_segment_bytes.values().sum::<u64>() + self.committed_offset
    }

    /// Bytes of committed log after `position`: what a restart replays when the catalog is exact
    /// up to `position`.
    pub fn bytes_after(&self, position: WalPosition) -> u64 {
        let committed = self.committed_position();
        if position >= committed {
            return 0;
        }
        if position.segment_seq == committed.segment_seq {
            return committed.offset - position.offset;
        }
        let first = self
            .closed_segment_bytes
            .get(&position.segment_seq)
            .map_or(0, |bytes| bytes.saturating_sub(position.offset));
        let middle: u64 = self
            .closed_segment_bytes
            .range(position.segment_seq + 1..)
            .map(|(_, bytes)| *bytes)
            .sum();
        first + middle + committed.offset
    }

    /// Returns whether an earlier write or sync failure has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_some()
    }

    /// Returns the log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the position just after the last appended (possibly uncommitted) frame.
    pub fn pending_position(&self) -> WalPosition {
        WalPosition::new(self.segment_seq, self.committed_offset + self.buffer.len() as u64)
    }

    /// Replaces the current segment's file handle (tests make writes fail with a read-only one);
    /// returns the segment's path.
    #[cfg(test)]
    pub(super) fn replace_file_for_test(
        &mut self,
        open: impl FnOnce(&Path) -> fs::File,
    ) -> PathBuf {
        let file = open(&self.segment_path);
        self.file = LogFile::new(file, &self.segment_path, self.committed_offset);
        self.segment_path.clone()
    }

    fn check_poison(&self) -> Result<(), WalError> {
        match &self.poison {
            Some(error) => Err(error.duplicate("log is poisoned by an earlier failure: ")),
            None => Ok(()),
        }
    }
}

/// Writes one commit batch and makes it durable; the fault-injection points sit in front of
/// each syscall so tests can fail either one.
fn write_and_sync(file: &LogFile, bytes: &[u8]) -> io::Result<()> {
    inject("wal.write")?;
    file.write_all(bytes)?;
    inject("wal.sync")?;
    file.sync_data()
}

/// Evaluates the named failpoint; an armed one yields an "injected failure" I/O error.
#[cfg(feature = "testing")]
fn inject(name: &str) -> io::Result<()> {
    fail::fail_point!(name, |_| Err(io::Error::other("injected failure")));
    Ok(())
}

/// Without the `testing` feature failpoints do not exist and this compiles to nothing.
#[cfg(not(feature = "testing"))]
#[inline(always)]
fn inject(_name: &str) -> io::Result<()> {
    Ok(())
}
