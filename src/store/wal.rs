//! Append-only write-ahead log (WAL) with group commit, crash recovery and torn-tail repair.
//!
//! Every change is written here first and made durable with one `fdatasync` per batch of requests
//! (group commit) before it is applied to sled, whose own flush does not fsync. A periodic checkpoint
//! makes sled durable and then deletes the WAL segments it covers; on startup [`replay`] re-applies
//! everything from the checkpoint position, and only then is [`Wal::open`] called for new appends.
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
//! The directory holds segment files named `{seq:020}.wal` (zero padded, so lexical order is
//! numeric order). Files with other names are ignored. Every integer is little-endian.
//!
//! | Bytes               | Field          | Meaning                                          |
//! |---------------------|----------------|--------------------------------------------------|
//! | 0..8                | magic          | `b"OBXWAL01"`                                    |
//! | 8..16               | segment seq    | `u64`, equal to the seq in the file name         |
//! | then, per frame:    |                |                                                  |
//! | +0..4               | `payload_len`  | `u32`, `1..=FRAME_PAYLOAD_BYTES_MAX`             |
//! | +4..8               | `crc32`        | `u32`, crc32fast (CRC-32/ISO-HDLC) of payload    |
//! | +8..8+payload_len   | payload        | opaque bytes                                     |
//!
//! A [`WalPosition`] is a segment seq plus a byte offset inside that segment file; it always points
//! at a frame start or at the end of the segment. Zero-length payloads are forbidden so that a file
//! extended with zeros by a crash (common with delayed allocation) can never parse as valid frames.
//!
//! Only one process may use a WAL directory at a time; this module does not lock it.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Largest payload a single frame may carry (256 MiB); bigger lengths on disk are treated as damage.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// Default segment size after which [`Wal::rotate_if_full`] starts a new segment (64 MiB).
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;

/// Magic bytes at the start of every segment file; the trailing `01` is the format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"OBXWAL01";

/// Size of the segment header (magic plus seq); the first frame of a segment starts here.
pub const SEGMENT_HEADER_BYTES: u64 = 16;

/// Size of a frame header (payload length plus crc).
pub const FRAME_HEADER_BYTES: u64 = 8;

const FRAME_HEADER_LEN: usize = 8;
const SEGMENT_HEADER_LEN: usize = 16;
const SEGMENT_SUFFIX: &str = ".wal";
const TEMP_SUFFIX: &str = ".wal.tmp";
/// A batch buffer that grew beyond this is released after commit, so one huge batch does not pin
/// its memory for the rest of the process lifetime.
const BUFFER_RETAIN_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Replay reads through a buffer of this size; memory stays bounded by it plus the largest frame.
const REPLAY_READ_BUFFER_BYTES: usize = 1024 * 1024;

/// A byte position in the WAL: a segment seq and an offset inside that segment file.
///
/// Positions order by segment first, then offset, which matches log order. An offset smaller than
/// [`SEGMENT_HEADER_BYTES`] means "the first frame of the segment".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
    fn io(path: &Path, source: io::Error) -> WalError {
        WalError::Io { path: path.to_path_buf(), source }
    }

    fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
        WalError::Corrupt { path: path.to_path_buf(), offset, reason: reason.into() }
    }

    /// Copies the error; `io::Error` is not `Clone`, so its kind and message are carried over.
    fn duplicate(&self, message_prefix: &str) -> WalError {
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
                write!(f, "WAL I/O error on {}: {source}", path.display())
            }
            WalError::Corrupt { path, offset, reason } => {
                write!(f, "WAL corrupt in {} at offset {offset}: {reason}", path.display())
            }
            WalError::Gap { dir, missing_seq, found_seq } => write!(
                f,
                "WAL gap in {}: segment {missing_seq} is missing but segment {found_seq} exists",
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

/// The appending side of the WAL: buffers frames in memory and makes them durable on commit.
///
/// Not thread-safe by itself; the group-commit task owns it (or wraps it in a mutex).
pub struct Wal {
    dir: PathBuf,
    segment_bytes_max: u64,
    segment_seq: u64,
    segment_path: PathBuf,
    file: File,
    /// Bytes of the current segment known to be durable (header included).
    committed_offset: u64,
    /// Frames appended since the last commit, already encoded.
    buffer: Vec<u8>,
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
    /// Opens (creating if absent) the WAL directory for appending, always in a new segment.
    ///
    /// The new segment's seq is one more than the highest existing one (0 in an empty directory),
    /// so a segment that [`replay`] may have truncated is never appended to. Call [`replay`]
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
        let (file, temp_path, segment_path) = prepare_segment(dir, segment_seq)?;
        publish_segment(dir, &temp_path, &segment_path)?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segment_seq,
            segment_path,
            file,
            committed_offset: SEGMENT_HEADER_BYTES,
            buffer: Vec::new(),
            closed_segment_bytes,
            poison: None,
        })
    }

    /// Appends one frame to the in-memory batch buffer without any syscall.
    ///
    /// Returns the position just after the frame; it becomes durable only when the next
    /// [`Wal::commit`] succeeds. The signature cannot report errors, so on a poisoned `Wal` the
    /// frame is still buffered but the following `commit` fails and discards it.
    ///
    /// # Panics
    ///
    /// If `payload` is empty or longer than [`FRAME_PAYLOAD_BYTES_MAX`]; callers must validate
    /// request sizes before they reach the WAL.
    pub fn append(&mut self, payload: &[u8]) -> WalPosition {
        assert!(!payload.is_empty(), "WAL frames must not be empty");
        let payload_len = match u32::try_from(payload.len()) {
            Ok(len) if len <= FRAME_PAYLOAD_BYTES_MAX => len,
            _ => panic!(
                "WAL frame payload of {} bytes exceeds FRAME_PAYLOAD_BYTES_MAX ({FRAME_PAYLOAD_BYTES_MAX})",
                payload.len()
            ),
        };
        self.buffer.reserve(FRAME_HEADER_LEN + payload.len());
        self.buffer.extend_from_slice(&payload_len.to_le_bytes());
        self.buffer.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.buffer.extend_from_slice(payload);
        self.pending_position()
    }

    /// Writes all buffered frames with one `write_all` and then `fdatasync`s the segment.
    ///
    /// Returns the new committed position (unchanged, and no syscall, if nothing was buffered).
    /// On error the `Wal` is poisoned: this and every later `commit`, `rotate` and
    /// `rotate_if_full` return the error again (marked as a repeat), because retrying an fsync
    /// after a failure can falsely report success. The buffered frames are discarded.
    pub fn commit(&mut self) -> Result<WalPosition, WalError> {
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
    /// Meant to be called after [`Wal::commit`]; if frames are still buffered they are committed
    /// into the current segment first. A segment holding no frames is never rotated away, so a
    /// tiny `segment_bytes_max` cannot cause a rotation loop.
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
        let (file, temp_path, segment_path) = prepare_segment(&self.dir, segment_seq)?;
        if let Err(error) = publish_segment(&self.dir, &temp_path, &segment_path) {
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

    /// Deletes every segment whose seq is below `position.segment_seq`; returns how many it deleted.
    ///
    /// Call it only after a checkpoint that covers everything before `position`. The current
    /// segment is never deleted. The directory is fsynced afterwards so the deletions stick.
    /// Not blocked by poisoning: deleting checkpointed segments cannot lose records.
    pub fn remove_before(&mut self, position: WalPosition) -> Result<usize, WalError> {
        let doomed_seqs: Vec<u64> =
            self.closed_segment_bytes.range(..position.segment_seq).map(|(&seq, _)| seq).collect();
        let mut removed_count = 0;
        for seq in doomed_seqs {
            let path = segment_path(&self.dir, seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io(&path, e)),
            }
            self.closed_segment_bytes.remove(&seq);
            removed_count += 1;
        }
        if removed_count > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed_count)
    }

    /// Returns the total size of all segment files in bytes, for metrics and checkpoint triggering.
    ///
    /// Computed from bookkeeping (no syscall); the current segment counts its committed bytes.
    pub fn disk_bytes(&self) -> u64 {
        self.closed_segment_bytes.values().sum::<u64>() + self.committed_offset
    }

    /// Returns whether an earlier write or sync failure has poisoned this `Wal`.
    pub fn is_poisoned(&self) -> bool {
        self.poison.is_some()
    }

    /// Returns the WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the position just after the last appended (possibly uncommitted) frame.
    fn pending_position(&self) -> WalPosition {
        WalPosition::new(self.segment_seq, self.committed_offset + self.buffer.len() as u64)
    }

    fn check_poison(&self) -> Result<(), WalError> {
        match &self.poison {
            Some(error) => Err(error.duplicate("WAL is poisoned by an earlier failure: ")),
            None => Ok(()),
        }
    }
}

/// Reads every frame at or after `from`, in log order, calling `apply(position_after_frame, payload)`.
///
/// Runs at startup before [`Wal::open`]. The error type is the callback's own `E`, which must
/// absorb [`WalError`] via `From`; callback errors abort the replay and are passed through
/// unchanged. Behaviour:
///
/// * Segments older than `from.segment_seq` are skipped. If `from`'s segment is missing while a
///   later one exists, or the segments after it are not consecutive, that is [`WalError::Gap`].
///   A `from` beyond every segment (or a missing directory) replays nothing.
/// * The start segment is verified from its header, not from `from.offset`, so a `from` that is
///   not a frame boundary is reported as [`WalError::Corrupt`] instead of being misparsed.
/// * In the last segment, a frame whose header or payload runs past end of file, whose length is
///   0 or above [`FRAME_PAYLOAD_BYTES_MAX`], or whose crc mismatches is a torn tail: the file is
///   truncated there (`set_len` + fsync) and reported in [`ReplaySummary::truncated`]. The same
///   damage in an earlier segment, or before `from` in the last one, is [`WalError::Corrupt`].
/// * A segment header that is short, has the wrong magic or names another seq is `Corrupt`.
///
/// Memory use is bounded by a 1 MiB read buffer plus the largest frame.
pub fn replay<E>(
    dir: &Path,
    from: WalPosition,
    mut apply: impl FnMut(WalPosition, &[u8]) -> Result<(), E>,
) -> Result<ReplaySummary, E>
where
    E: From<WalError>,
{
    let segments = select_replay_segments(dir, list_segments(dir)?, from)?;
    let last_seq = segments.last().map(|(seq, _)| *seq);
    let mut summary = ReplaySummary::default();
    let mut payload = Vec::new();
    for (seq, path) in &segments {
        let start_offset = if *seq == from.segment_seq { from.offset } else { 0 };
        let segment = ReplaySegment {
            path,
            seq: *seq,
            start_offset: start_offset.max(SEGMENT_HEADER_BYTES),
            is_last: Some(*seq) == last_seq,
        };
        replay_segment(&segment, &mut payload, &mut summary, &mut apply)?;
    }
    Ok(summary)
}

/// What [`read_range`] read: how many frames it visited, and a torn tail it stopped at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSummary {
    /// Frames passed to the callback.
    pub frame_count: u64,
    /// Damage at the end of the newest segment, where a crash can leave it (only when reading to
    /// the end of the log): the segment, the offset of the damaged frame and why. A server would
    /// cut it off at its next start; the frames before it are complete.
    pub torn_tail: Option<(PathBuf, u64, String)>,
    /// Position just after the last frame read (visited or not), if any.
    pub end_position: Option<WalPosition>,
}

/// Reads the frames from `from` up to `to` (or to the end of the log when `None`) without
/// changing any file, calling `visit(position_after_frame, payload)` for each.
///
/// Unlike [`replay`] it is safe on a log that a running server appends to: it opens segments
/// read-only and stops exactly at `to`, which the caller got as a committed position, so frames
/// being written after it are never looked at. Frames in `from`'s segment before `from.offset`
/// are verified but not visited. Damage is [`WalError::Corrupt`], except at the end of the last
/// segment when reading to the end of the log, where it is reported as a torn tail.
pub fn read_range<E>(
    dir: &Path,
    from: WalPosition,
    to: Option<WalPosition>,
    mut visit: impl FnMut(WalPosition, &[u8]) -> Result<(), E>,
) -> Result<RangeSummary, E>
where
    E: From<WalError>,
{
    let mut segments = select_replay_segments(dir, list_segments(dir)?, from)?;
    if let Some(to) = to {
        segments.retain(|(seq, _)| *seq <= to.segment_seq);
        let reaches_end = segments.last().is_some_and(|(seq, _)| *seq == to.segment_seq);
        if to > from && !reaches_end {
            let reason =
                format!("segment {} holding the end of the range is missing", to.segment_seq);
            return Err(WalError::corrupt(dir, to.offset, reason).into());
        }
    }
    let last_seq = segments.last().map(|(seq, _)| *seq);
    let mut summary = RangeSummary::default();
    let mut payload = Vec::new();
    for (seq, path) in &segments {
        let start_offset = if *seq == from.segment_seq { from.offset } else { 0 };
        let end_offset = to.filter(|to| to.segment_seq == *seq).map(|to| to.offset);
        let mut reader = SegmentReader::open(path, *seq, false)?;
        loop {
            let frame_offset = reader.offset;
            if end_offset == Some(frame_offset) {
                break;
            }
            match reader.next_frame(&mut payload)? {
                FrameRead::End if end_offset.is_some() => {
                    let reason =
                        format!("the segment ends at {frame_offset}, before the range end");
                    return Err(WalError::corrupt(path, frame_offset, reason).into());
                }
                FrameRead::End => break,
                FrameRead::Damaged(reason) if to.is_none() && Some(*seq) == last_seq => {
                    summary.torn_tail = Some((path.clone(), frame_offset, reason));
                    break;
                }
                FrameRead::Damaged(reason) => {
                    return Err(WalError::corrupt(path, frame_offset, reason).into());
                }
                FrameRead::Frame => {
                    let position = WalPosition::new(*seq, reader.offset);
                    summary.end_position = Some(position);
                    if end_offset.is_some_and(|end| reader.offset > end) {
                        let reason = "the range end is inside a frame".to_string();
                        return Err(WalError::corrupt(path, frame_offset, reason).into());
                    }
                    if frame_offset >= start_offset {
                        visit(position, &payload)?;
                        summary.frame_count += 1;
                    } else if reader.offset > start_offset {
                        let reason =
                            format!("the range start is inside the frame at {frame_offset}");
                        return Err(WalError::corrupt(path, start_offset, reason).into());
                    }
                }
            }
        }
    }
    Ok(summary)
}

/// One segment as seen by [`replay`].
struct ReplaySegment<'a> {
    path: &'a Path,
    seq: u64,
    /// Frames starting before this offset are verified but not applied.
    start_offset: u64,
    /// Only the newest segment may have a torn tail.
    is_last: bool,
}

/// Keeps the segments at or after `from` and checks that they are consecutive from it.
fn select_replay_segments(
    dir: &Path,
    segments: Vec<(u64, PathBuf)>,
    from: WalPosition,
) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let selected: Vec<(u64, PathBuf)> =
        segments.into_iter().filter(|(seq, _)| *seq >= from.segment_seq).collect();
    let mut expected_seq = from.segment_seq;
    for (seq, _) in &selected {
        if *seq != expected_seq {
            return Err(WalError::Gap {
                dir: dir.to_path_buf(),
                missing_seq: expected_seq,
                found_seq: *seq,
            });
        }
        // Wrapping is harmless: a segment with seq u64::MAX is necessarily the last one.
        expected_seq = seq.wrapping_add(1);
    }
    Ok(selected)
}

/// Replays (or, before the start offset, only verifies) every frame of one segment.
fn replay_segment<E>(
    segment: &ReplaySegment<'_>,
    payload: &mut Vec<u8>,
    summary: &mut ReplaySummary,
    apply: &mut impl FnMut(WalPosition, &[u8]) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<WalError>,
{
    let mut reader = SegmentReader::open(segment.path, segment.seq, segment.is_last)?;
    loop {
        let frame_offset = reader.offset;
        match reader.next_frame(payload)? {
            FrameRead::End if frame_offset < segment.start_offset => {
                let reason =
                    format!("replay start offset is beyond the segment end {frame_offset}");
                return Err(WalError::corrupt(segment.path, segment.start_offset, reason).into());
            }
            FrameRead::End => return Ok(()),
            FrameRead::Damaged(reason) => {
                summary.truncated = Some(handle_damage(segment, &reader, reason)?);
                return Ok(());
            }
            FrameRead::Frame if frame_offset >= segment.start_offset => {
                let position = WalPosition::new(segment.seq, reader.offset);
                apply(position, payload)?;
                summary.frame_count += 1;
                summary.byte_count += payload.len() as u64;
                summary.last_position = Some(position);
            }
            FrameRead::Frame if reader.offset > segment.start_offset => {
                let reason = format!("replay start offset is inside the frame at {frame_offset}");
                return Err(WalError::corrupt(segment.path, segment.start_offset, reason).into());
            }
            FrameRead::Frame => {}
        }
    }
}

/// Truncates a torn tail in the last segment, or reports the damage as corruption anywhere else.
fn handle_damage(
    segment: &ReplaySegment<'_>,
    reader: &SegmentReader,
    reason: String,
) -> Result<TruncatedTail, WalError> {
    let frame_offset = reader.offset;
    if !segment.is_last {
        return Err(WalError::corrupt(segment.path, frame_offset, reason));
    }
    if frame_offset < segment.start_offset {
        // The checkpoint already covers this frame, so it was synced once: this is not a torn
        // write but damaged durable data, and cutting it off would hide that.
        let reason = format!("{reason} (before the replay start offset {})", segment.start_offset);
        return Err(WalError::corrupt(segment.path, frame_offset, reason));
    }
    let file = reader.reader.get_ref();
    file.set_len(frame_offset).map_err(|e| WalError::io(segment.path, e))?;
    file.sync_all().map_err(|e| WalError::io(segment.path, e))?;
    Ok(TruncatedTail {
        segment_path: segment.path.to_path_buf(),
        offset: frame_offset,
        dropped_bytes: reader.file_bytes - frame_offset,
    })
}

/// The outcome of reading one frame.
enum FrameRead {
    /// A valid frame; its payload is in the caller's buffer.
    Frame,
    /// Clean end of the segment.
    End,
    /// The frame at the reader's offset is damaged, for the given reason.
    Damaged(String),
}

/// Sequential, validating reader over one segment file.
struct SegmentReader {
    path: PathBuf,
    reader: BufReader<File>,
    /// Offset of the next unread frame; stays at a damaged frame's start.
    offset: u64,
    /// File length when opened.
    file_bytes: u64,
}

impl SegmentReader {
    /// Opens a segment (writable if it may need truncating) and validates its header.
    fn open(path: &Path, seq: u64, writable: bool) -> Result<SegmentReader, WalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| WalError::io(path, e))?;
        let file_bytes = file.metadata().map_err(|e| WalError::io(path, e))?.len();
        if file_bytes < SEGMENT_HEADER_BYTES {
            let reason = format!("segment header truncated: file is {file_bytes} bytes");
            return Err(WalError::corrupt(path, 0, reason));
        }
        let mut reader = BufReader::with_capacity(REPLAY_READ_BUFFER_BYTES, file);
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        reader.read_exact(&mut header).map_err(|e| WalError::io(path, e))?;
        if header[..8] != SEGMENT_MAGIC {
            return Err(WalError::corrupt(path, 0, "bad segment magic"));
        }
        let header_seq = u64::from_le_bytes(array8(&header[8..16]));
        if header_seq != seq {
            let reason =
                format!("segment header seq {header_seq} does not match file name seq {seq}");
            return Err(WalError::corrupt(path, 8, reason));
        }
        Ok(SegmentReader {
            path: path.to_path_buf(),
            reader,
            offset: SEGMENT_HEADER_BYTES,
            file_bytes,
        })
    }

    /// Reads and verifies the next frame into `payload` (reusing its allocation).
    fn next_frame(&mut self, payload: &mut Vec<u8>) -> Result<FrameRead, WalError> {
        let remaining_bytes = self.file_bytes.saturating_sub(self.offset);
        if remaining_bytes == 0 {
            return Ok(FrameRead::End);
        }
        if remaining_bytes < FRAME_HEADER_BYTES {
            let reason =
                format!("frame header runs past end of file ({remaining_bytes} bytes left)");
            return Ok(FrameRead::Damaged(reason));
        }
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.reader.read_exact(&mut header).map_err(|e| WalError::io(&self.path, e))?;
        let payload_len = u32::from_le_bytes(array4(&header[0..4]));
        let stored_crc = u32::from_le_bytes(array4(&header[4..8]));
        if payload_len == 0 {
            return Ok(FrameRead::Damaged("frame length is 0".to_string()));
        }
        if payload_len > FRAME_PAYLOAD_BYTES_MAX {
            let reason = format!("frame length {payload_len} exceeds {FRAME_PAYLOAD_BYTES_MAX}");
            return Ok(FrameRead::Damaged(reason));
        }
        // Checked before reading so a damaged length never makes us allocate for data that is
        // not there.
        if u64::from(payload_len) > remaining_bytes - FRAME_HEADER_BYTES {
            let reason = format!("frame payload of {payload_len} bytes runs past end of file");
            return Ok(FrameRead::Damaged(reason));
        }
        payload.clear();
        let read_bytes = (&mut self.reader)
            .take(u64::from(payload_len))
            .read_to_end(payload)
            .map_err(|e| WalError::io(&self.path, e))?;
        if read_bytes as u64 != u64::from(payload_len) {
            let source =
                io::Error::new(io::ErrorKind::UnexpectedEof, "segment shrank during replay");
            return Err(WalError::io(&self.path, source));
        }
        let computed_crc = crc32fast::hash(payload);
        if computed_crc != stored_crc {
            let reason =
                format!("crc mismatch: stored {stored_crc:#010x}, computed {computed_crc:#010x}");
            return Ok(FrameRead::Damaged(reason));
        }
        self.offset += FRAME_HEADER_BYTES + u64::from(payload_len);
        Ok(FrameRead::Frame)
    }
}

fn array4(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

fn array8(bytes: &[u8]) -> [u8; 8] {
    [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]
}

/// Path of the segment file with the given seq.
fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

/// Parses `{seq:020}.wal`; any other name is not a segment.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Lists the segment files in `dir` sorted by seq; a missing directory has no segments.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(WalError::io(dir, e)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push((seq, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(segments)
}

/// Returns `seq + 1`, or an error in the (practically unreachable) case of overflow.
fn next_seq(dir: &Path, seq: u64) -> Result<u64, WalError> {
    seq.checked_add(1)
        .ok_or_else(|| WalError::io(dir, io::Error::other("WAL segment sequence number exhausted")))
}

/// Creates `dir` if needed and fsyncs its parent so the new directory entry survives a crash.
fn create_dir_durably(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Deletes temporary segment files left by a crash during segment creation.
fn remove_temp_files(dir: &Path) -> Result<(), WalError> {
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let is_temp = entry.file_name().to_str().is_some_and(|name| name.ends_with(TEMP_SUFFIX));
        if is_temp {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Writes and syncs a new segment's header under a temporary name.
///
/// Returns the open file (positioned after the header), the temporary path and the final path.
/// On failure the temporary file is removed, leaving no trace.
fn prepare_segment(dir: &Path, seq: u64) -> Result<(File, PathBuf, PathBuf), WalError> {
    let final_path = segment_path(dir, seq);
    // rename() would silently replace an existing segment, losing its records.
    if final_path.exists() {
        let source = io::Error::new(io::ErrorKind::AlreadyExists, "segment file already exists");
        return Err(WalError::io(&final_path, source));
    }
    let temp_path = dir.join(format!("{seq:020}{TEMP_SUFFIX}"));
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..].copy_from_slice(&seq.to_le_bytes());
    let created =
        OpenOptions::new().write(true).create(true).truncate(true).open(&temp_path).and_then(
            |mut file| {
                file.write_all(&header)?;
                file.sync_all()?;
                Ok(file)
            },
        );
    match created {
        Ok(file) => Ok((file, temp_path, final_path)),
        Err(e) => {
            // Best effort: a leftover temp file is also cleaned up by the next open().
            let _ = fs::remove_file(&temp_path);
            Err(WalError::io(&temp_path, e))
        }
    }
}

/// Gives a prepared segment its final name and makes the rename durable.
fn publish_segment(dir: &Path, temp_path: &Path, final_path: &Path) -> Result<(), WalError> {
    fs::rename(temp_path, final_path).map_err(|e| WalError::io(final_path, e))?;
    sync_dir(dir)
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| WalError::io(dir, e))
}

/// Writes one commit batch and makes it durable; the fault-injection points sit in front of
/// each syscall so tests can fail either one.
fn write_and_sync(mut file: &File, bytes: &[u8]) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{RwLock, RwLockReadGuard};
    use tempfile::TempDir;

    /// Failpoints are process-global: tests that arm one take the write lock, all others a read
    /// lock, so an armed failpoint never leaks into a concurrently running test.
    static FAILPOINTS: RwLock<()> = RwLock::new(());

    fn shared() -> RwLockReadGuard<'static, ()> {
        FAILPOINTS.read().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(feature = "testing")]
    fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
        FAILPOINTS.write().unwrap_or_else(|e| e.into_inner())
    }

    type Frames = Vec<(WalPosition, Vec<u8>)>;

    fn payload(i: usize) -> Vec<u8> {
        // Varying lengths so frames do not line up with round offsets.
        format!("record-{i}-{}", "x".repeat(i % 13)).into_bytes()
    }

    fn read_all(dir: &Path, from: WalPosition) -> Result<(Frames, ReplaySummary), WalError> {
        let mut frames = Vec::new();
        let summary = replay(dir, from, |position, bytes: &[u8]| {
            frames.push((position, bytes.to_vec()));
            Ok::<(), WalError>(())
        })?;
        Ok((frames, summary))
    }

    /// Appends `count` frames, committing each, and returns what was written.
    fn write_frames(wal: &mut Wal, first: usize, count: usize) -> Frames {
        let mut written = Vec::new();
        for i in first..first + count {
            let bytes = payload(i);
            let position = wal.append(&bytes);
            assert_eq!(wal.commit().unwrap(), position);
            written.push((position, bytes));
        }
        written
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir).unwrap().into_iter().map(|(_, path)| path).collect()
    }

    fn copy_dir(from: &Path, to: &Path) {
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[offset as usize] ^= 0xff;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn round_trip_across_rotations() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("wal");
        let mut wal = Wal::open(&dir, 200).unwrap();
        assert_eq!(wal.committed_position(), WalPosition::new(0, SEGMENT_HEADER_BYTES));
        let mut written = Vec::new();
        let mut rotations = 0;
        for batch in 0..10 {
            // Group commit: several appends, one commit.
            let mut last = None;
            for i in batch * 3..batch * 3 + 3 {
                let bytes = payload(i);
                last = Some(wal.append(&bytes));
                written.push((last.unwrap(), bytes));
            }
            assert_eq!(wal.commit().unwrap(), last.unwrap());
            if wal.rotate_if_full().unwrap() {
                rotations += 1;
            }
        }
        let forced = wal.rotate().unwrap();
        assert_eq!(forced.offset, SEGMENT_HEADER_BYTES);
        written.extend(write_frames(&mut wal, 100, 2));
        assert!(rotations >= 2, "expected several rotations, got {rotations}");
        let file_bytes: u64 =
            segment_files(&dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
        assert_eq!(wal.disk_bytes(), file_bytes);
        let committed = wal.committed_position();
        drop(wal);

        let (frames, summary) = read_all(&dir, WalPosition::START).unwrap();
        assert_eq!(frames, written);
        assert_eq!(summary.frame_count, written.len() as u64);
        let payload_bytes: usize = written.iter().map(|(_, b)| b.len()).sum();
        assert_eq!(summary.byte_count, payload_bytes as u64);
        assert_eq!(summary.truncated, None);
        assert_eq!(summary.last_position, Some(committed));
        assert_eq!(segment_files(&dir).len(), rotations + 2);
    }

    fn read_range_frames(
        dir: &Path,
        from: WalPosition,
        to: Option<WalPosition>,
    ) -> Result<(Frames, RangeSummary), WalError> {
        let mut frames = Vec::new();
        let summary = read_range(dir, from, to, |position, bytes: &[u8]| {
            frames.push((position, bytes.to_vec()));
            Ok::<(), WalError>(())
        })?;
        Ok((frames, summary))
    }

    #[test]
    fn read_range_stops_at_the_end_position_and_changes_nothing() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let mut written = write_frames(&mut wal, 0, 3);
        wal.rotate().unwrap();
        written.extend(write_frames(&mut wal, 3, 3));
        // A later append that the range must not look at, as on a live log.
        wal.append(b"uncommitted");
        let (frames, summary) =
            read_range_frames(tmp.path(), written[0].0, Some(written[4].0)).unwrap();
        assert_eq!(frames, written[1..5].to_vec());
        assert_eq!(summary.frame_count, 4);
        assert_eq!(summary.end_position, Some(written[4].0));
        // An empty range reads nothing.
        let (frames, _) = read_range_frames(tmp.path(), written[2].0, Some(written[2].0)).unwrap();
        assert!(frames.is_empty());
        let inside = WalPosition::new(1, written[4].0.offset - 1);
        let err = read_range_frames(tmp.path(), written[0].0, Some(inside)).unwrap_err();
        assert!(err.to_string().contains("inside a frame"), "{err}");
        let beyond = WalPosition::new(1, written[5].0.offset + 100);
        let err = read_range_frames(tmp.path(), written[0].0, Some(beyond)).unwrap_err();
        assert!(err.to_string().contains("before the range end"), "{err}");
        drop(wal);

        // To the end of the log: a torn tail is reported and left in place.
        let path = segment_files(tmp.path()).pop().unwrap();
        let last = written.last().unwrap().0.offset;
        OpenOptions::new().write(true).open(&path).unwrap().set_len(last + 5).unwrap();
        let (frames, summary) = read_range_frames(tmp.path(), WalPosition::START, None).unwrap();
        assert_eq!(frames, written);
        assert_eq!(summary.torn_tail.as_ref().map(|tail| tail.1), Some(last));
        assert_eq!(fs::metadata(&path).unwrap().len(), last + 5, "read_range never truncates");
        // The same damage in an earlier segment is corruption.
        flip_byte(&segment_files(tmp.path())[0], written[0].0.offset + 9);
        let err = read_range_frames(tmp.path(), WalPosition::START, None).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn replay_from_mid_segment_position() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let mut written = write_frames(&mut wal, 0, 5);
        wal.rotate().unwrap();
        written.extend(write_frames(&mut wal, 5, 3));
        drop(wal);
        for k in 0..written.len() {
            let (frames, summary) = read_all(tmp.path(), written[k].0).unwrap();
            assert_eq!(frames, written[k + 1..].to_vec(), "from after frame {k}");
            assert_eq!(summary.frame_count, (written.len() - k - 1) as u64);
        }
        // The end of segment 0 and the start of segment 1 replay the same frames.
        let end_of_first = read_all(tmp.path(), written[4].0).unwrap().0;
        let start_of_second = read_all(tmp.path(), WalPosition::new(1, 0)).unwrap().0;
        assert_eq!(end_of_first, start_of_second);
    }

    #[test]
    fn torn_tail_at_every_offset_of_final_frame() {
        let _g = shared();
        let template = TempDir::new().unwrap();
        let mut wal = Wal::open(template.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        write_frames(&mut wal, 0, 2);
        wal.rotate().unwrap();
        let mut written = write_frames(&mut wal, 2, 3);
        let final_frame = written.pop().unwrap();
        drop(wal);
        let last_file = segment_files(template.path()).pop().unwrap();
        let frame_start = written.last().unwrap().0.offset;
        let frame_end = final_frame.0.offset;
        let (all_before, _) = read_all(template.path(), WalPosition::START).unwrap();
        let expected: Frames = all_before[..all_before.len() - 1].to_vec();

        for cut in frame_start + 1..frame_end {
            let tmp = TempDir::new().unwrap();
            copy_dir(template.path(), tmp.path());
            let path = tmp.path().join(last_file.file_name().unwrap());
            OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();

            let (frames, summary) = read_all(tmp.path(), WalPosition::START).unwrap();
            assert_eq!(frames, expected, "cut at {cut}");
            let tail = summary.truncated.expect("torn tail reported");
            assert_eq!((tail.segment_path, tail.offset), (path.clone(), frame_start));
            assert_eq!(tail.dropped_bytes, cut - frame_start);
            assert_eq!(fs::metadata(&path).unwrap().len(), frame_start);

            let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
            let new_position = wal.append(b"after recovery");
            wal.commit().unwrap();
            drop(wal);
            let (frames, summary) = read_all(tmp.path(), WalPosition::START).unwrap();
            assert_eq!(summary.truncated, None);
            assert_eq!(frames.len(), expected.len() + 1);
            assert_eq!(frames.last().unwrap(), &(new_position, b"after recovery".to_vec()));
        }
    }

    #[test]
    fn zero_filled_tail_is_truncated() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let written = write_frames(&mut wal, 0, 3);
        drop(wal);
        let path = segment_files(tmp.path()).pop().unwrap();
        let end = written.last().unwrap().0.offset;
        // What a crash with delayed allocation can leave behind: size grew, data is zeros.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(end + 4096).unwrap();
        let (frames, summary) = read_all(tmp.path(), WalPosition::START).unwrap();
        assert_eq!(frames, written);
        let tail = summary.truncated.unwrap();
        assert_eq!((tail.offset, tail.dropped_bytes), (end, 4096));
    }

    #[test]
    fn crc_flip_in_last_frame_of_last_segment_is_truncated() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let mut written = write_frames(&mut wal, 0, 4);
        drop(wal);
        let last = written.pop().unwrap();
        let frame_start = written.last().unwrap().0.offset;
        let path = segment_files(tmp.path()).pop().unwrap();
        flip_byte(&path, last.0.offset - 1); // last payload byte
        let (frames, summary) = read_all(tmp.path(), WalPosition::START).unwrap();
        assert_eq!(frames, written);
        let tail = summary.truncated.unwrap();
        assert_eq!(tail.offset, frame_start);
        assert_eq!(tail.dropped_bytes, last.0.offset - frame_start);
        assert_eq!(summary.last_position, Some(written.last().unwrap().0));
    }

    #[test]
    fn damage_in_earlier_segment_is_corrupt() {
        let _g = shared();
        for (flip_crc, name) in [(true, "crc"), (false, "length")] {
            let tmp = TempDir::new().unwrap();
            let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
            let first = write_frames(&mut wal, 0, 3);
            wal.rotate().unwrap();
            write_frames(&mut wal, 3, 2);
            drop(wal);
            let path = segment_files(tmp.path()).remove(0);
            let damaged_frame = first[0].0.offset; // start of the second frame
            let damaged_byte = if flip_crc { damaged_frame + 4 } else { damaged_frame + 3 };
            flip_byte(&path, damaged_byte);
            let before = fs::read(&path).unwrap();
            match read_all(tmp.path(), WalPosition::START) {
                Err(WalError::Corrupt { path: p, offset, reason }) => {
                    assert_eq!((p, offset), (path.clone(), damaged_frame), "{name}: {reason}");
                }
                other => panic!("{name}: expected Corrupt, got {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), before, "{name}: earlier segment untouched");
        }
    }

    #[test]
    fn damage_before_replay_start_is_corrupt_not_truncated() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let written = write_frames(&mut wal, 0, 4);
        drop(wal);
        let path = segment_files(tmp.path()).pop().unwrap();
        flip_byte(&path, SEGMENT_HEADER_BYTES + 8); // first payload byte of frame 0
        let err = read_all(tmp.path(), written[2].0).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { offset: 16, .. }), "{err}");
        assert_eq!(fs::metadata(&path).unwrap().len(), written[3].0.offset);
    }

    #[test]
    fn bad_start_offset_is_corrupt() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let written = write_frames(&mut wal, 0, 3);
        drop(wal);
        let inside = WalPosition::new(0, written[0].0.offset + 3);
        let beyond = WalPosition::new(0, written[2].0.offset + 1);
        for from in [inside, beyond] {
            let err = read_all(tmp.path(), from).unwrap_err();
            assert!(
                matches!(err, WalError::Corrupt { offset, .. } if offset == from.offset),
                "{err}"
            );
        }
        let end = read_all(tmp.path(), written[2].0).unwrap();
        assert_eq!(end.1.frame_count, 0);
    }

    #[test]
    fn bad_header_is_an_error_naming_the_file() {
        let _g = shared();
        type Damage = fn(&Path);
        let cases: [(&str, Damage); 3] = [
            ("magic", |p| flip_byte(p, 0)),
            ("seq", |p| flip_byte(p, 8)),
            ("short", |p| OpenOptions::new().write(true).open(p).unwrap().set_len(10).unwrap()),
        ];
        for (name, damage) in cases {
            let tmp = TempDir::new().unwrap();
            let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
            write_frames(&mut wal, 0, 2);
            drop(wal);
            let path = segment_files(tmp.path()).pop().unwrap();
            damage(&path);
            match read_all(tmp.path(), WalPosition::START) {
                Err(err @ WalError::Corrupt { .. }) => {
                    assert!(err.to_string().contains(&path.display().to_string()), "{name}: {err}");
                }
                other => panic!("{name}: expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn remove_before_deletes_only_older_segments() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let mut written = Vec::new();
        for segment in 0..4 {
            written.extend(write_frames(&mut wal, segment * 2, 2));
            wal.rotate().unwrap();
        }
        let checkpoint = written[5].0; // end of segment 2
        assert_eq!(checkpoint.segment_seq, 2);
        let bytes_before = wal.disk_bytes();
        assert_eq!(wal.remove_before(checkpoint).unwrap(), 2);
        assert_eq!(wal.remove_before(checkpoint).unwrap(), 0);
        let seqs: Vec<u64> = list_segments(tmp.path()).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        assert!(wal.disk_bytes() < bytes_before);
        // The current segment survives even a position far in the future.
        assert_eq!(wal.remove_before(WalPosition::new(99, 0)).unwrap(), 2);
        assert_eq!(segment_files(tmp.path()).len(), 1);
        assert_eq!(wal.disk_bytes(), SEGMENT_HEADER_BYTES);
    }

    #[test]
    fn replay_after_remove_before_and_gap_detection() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let mut written = Vec::new();
        for segment in 0..3 {
            written.extend(write_frames(&mut wal, segment * 2, 2));
            wal.rotate().unwrap();
        }
        wal.remove_before(written[1].0).unwrap(); // deletes nothing: checkpoint is in segment 0
        wal.remove_before(written[3].0).unwrap(); // deletes segment 0
        drop(wal);
        let (frames, _) = read_all(tmp.path(), written[3].0).unwrap();
        assert_eq!(frames, written[4..].to_vec());
        match read_all(tmp.path(), WalPosition::START) {
            Err(WalError::Gap { missing_seq: 0, found_seq: 1, .. }) => {}
            other => panic!("expected gap, got {other:?}"),
        }
        fs::remove_file(segment_path(tmp.path(), 2)).unwrap();
        match read_all(tmp.path(), written[3].0) {
            Err(WalError::Gap { missing_seq: 2, found_seq: 3, .. }) => {}
            other => panic!("expected middle gap, got {other:?}"),
        }
        // Beyond everything: nothing to replay, not an error.
        let (frames, summary) = read_all(tmp.path(), WalPosition::new(50, 16)).unwrap();
        assert!(frames.is_empty());
        assert_eq!(summary, ReplaySummary::default());
    }

    #[test]
    fn missing_directory_replays_nothing() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let (frames, summary) = read_all(&tmp.path().join("absent"), WalPosition::START).unwrap();
        assert!(frames.is_empty());
        assert_eq!(summary.last_position, None);
    }

    #[test]
    fn open_never_appends_to_an_existing_segment() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let first = write_frames(&mut wal, 0, 2);
        drop(wal);
        let first_file = segment_files(tmp.path()).pop().unwrap();
        let first_bytes = fs::read(&first_file).unwrap();
        fs::write(tmp.path().join("00000000000000000001.wal.tmp"), b"junk").unwrap();

        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        assert_eq!(wal.committed_position(), WalPosition::new(1, SEGMENT_HEADER_BYTES));
        let second = write_frames(&mut wal, 2, 2);
        assert_eq!(second[0].0.segment_seq, 1);
        drop(wal);
        assert_eq!(fs::read(&first_file).unwrap(), first_bytes);
        assert!(!tmp.path().join("00000000000000000001.wal.tmp").exists());
        let (frames, _) = read_all(tmp.path(), WalPosition::START).unwrap();
        assert_eq!(frames, [first, second].concat());
    }

    #[test]
    fn rotate_if_full_rotates_only_non_empty_full_segments() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), 1).unwrap();
        assert!(!wal.rotate_if_full().unwrap(), "empty segment must not rotate");
        let position = wal.append(b"pending");
        // Buffered frames are committed into the old segment before rotating.
        assert!(wal.rotate_if_full().unwrap());
        assert_eq!(wal.committed_position(), WalPosition::new(1, SEGMENT_HEADER_BYTES));
        assert!(!wal.rotate_if_full().unwrap());
        drop(wal);
        let (frames, _) = read_all(tmp.path(), WalPosition::START).unwrap();
        assert_eq!(frames, vec![(position, b"pending".to_vec())]);
    }

    #[test]
    fn apply_errors_are_passed_through() {
        #[derive(Debug)]
        enum AppError {
            Wal,
            Rejected(usize),
        }
        impl From<WalError> for AppError {
            fn from(_: WalError) -> AppError {
                AppError::Wal
            }
        }
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        write_frames(&mut wal, 0, 5);
        drop(wal);
        let mut seen = 0;
        let result = replay(tmp.path(), WalPosition::START, |_, _| {
            seen += 1;
            if seen == 3 {
                Err(AppError::Rejected(seen))
            } else {
                Ok(())
            }
        });
        assert!(matches!(result, Err(AppError::Rejected(3))));
        fs::write(segment_path(tmp.path(), 7), b"garbage header").unwrap();
        let result = replay(tmp.path(), WalPosition::new(7, 0), |_, _| Ok::<(), AppError>(()));
        assert!(matches!(result, Err(AppError::Wal)));
    }

    #[test]
    #[should_panic(expected = "must not be empty")]
    fn empty_payload_panics() {
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        wal.append(b"");
    }

    /// Checks that a `Wal` whose last commit failed refuses all further work.
    fn assert_poisoned(wal: &mut Wal, committed: WalPosition) {
        assert!(wal.is_poisoned());
        wal.append(b"later");
        let err = wal.commit().unwrap_err();
        assert!(err.to_string().contains("poisoned"), "{err}");
        assert!(matches!(wal.rotate(), Err(WalError::Io { .. })));
        assert!(wal.rotate_if_full().is_err());
        assert_eq!(wal.committed_position(), committed);
    }

    #[test]
    fn failed_write_poisons_the_wal() {
        let _g = shared();
        let tmp = TempDir::new().unwrap();
        let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
        let written = write_frames(&mut wal, 0, 2);
        let committed = wal.committed_position();
        // A read-only handle makes the real write() syscall fail (works even as root).
        wal.file = File::open(&wal.segment_path).unwrap();
        wal.append(b"doomed");
        let err = wal.commit().unwrap_err();
        assert!(matches!(err, WalError::Io { ref path, .. } if *path == wal.segment_path), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert_poisoned(&mut wal, committed);
        drop(wal);
        let (frames, _) = read_all(tmp.path(), WalPosition::START).unwrap();
        assert_eq!(frames, written);
    }

    #[cfg(feature = "testing")]
    #[test]
    fn injected_failures_poison_the_wal() {
        let _g = exclusive();
        for failpoint in ["wal.write", "wal.sync"] {
            let tmp = TempDir::new().unwrap();
            let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
            let written = write_frames(&mut wal, 0, 2);
            let committed = wal.committed_position();
            fail::cfg(failpoint, "return").unwrap();
            wal.append(b"doomed");
            let err = wal.commit();
            fail::remove(failpoint);
            let err = err.unwrap_err();
            assert!(err.to_string().contains("injected failure"), "{failpoint}: {err}");
            // Disarmed now, yet the Wal must still refuse: never retry after a failed fsync.
            assert_poisoned(&mut wal, committed);
            drop(wal);
            let (frames, summary) = read_all(tmp.path(), WalPosition::START).unwrap();
            assert_eq!(summary.truncated, None, "{failpoint}");
            if failpoint == "wal.sync" {
                // The unsynced frame reached the page cache, so replay returns it. That is fine:
                // it was never acknowledged. Only acknowledged frames must survive.
                assert_eq!(frames.len(), written.len() + 1);
                assert!(frames.starts_with(&written));
            } else {
                assert_eq!(frames, written);
            }
        }
    }
}
