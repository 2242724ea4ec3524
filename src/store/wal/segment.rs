//! Segment files: their names, their atomic creation, and the validating frame reader.

use super::file::LogFile;
use super::{
    WalError, FRAME_HEADER_BYTES, FRAME_HEADER_LEN, FRAME_PAYLOAD_BYTES_MAX,
    REPLAY_READ_BUFFER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
    SEGMENT_SUFFIX, TEMP_SUFFIX,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// The outcome of reading one frame.
pub(super) enum FrameRead {
    /// A valid frame; its payload is in the caller's buffer.
    Frame,
    /// Clean end of the segment.
    End,
    /// The frame at the reader's offset is damaged, for the given reason.
    Damaged(String),
}

/// Sequential, validating reader over one segment file.
pub(super) struct SegmentReader {
    pub(super) path: PathBuf,
    pub(super) reader: BufReader<File>,
    /// Offset of the next unread frame; stays at a damaged frame's start.
    pub(super) offset: u64,
    /// File length when opened.
    pub(super) file_bytes: u64,
}

impl SegmentReader {
    /// Opens a segment (writable if it may need truncating) and validates its header.
    pub(super) fn open(path: &Path, seq: u64, writable: bool) -> Result<SegmentReader, WalError> {
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
    pub(super) fn next_frame(&mut self, payload: &mut Vec<u8>) -> Result<FrameRead, WalError> {
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
pub(super) fn array4(bytes: &[u8]) -> [u8; 4] {
    [bytes[0], bytes[1], bytes[2], bytes[3]]
}

pub(super) fn array8(bytes: &[u8]) -> [u8; 8] {
    [bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]
}

/// Path of the segment file with the given seq.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

/// Parses `{seq:020}.log`; any other name is not a segment.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Lists the segment files in `dir` sorted by seq; a missing directory has no segments.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
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
pub(super) fn next_seq(dir: &Path, seq: u64) -> Result<u64, WalError> {
    seq.checked_add(1)
        .ok_or_else(|| WalError::io(dir, io::Error::other("WAL segment sequence number exhausted")))
}

/// Creates `dir` if needed and fsyncs its parent so the new directory entry survives a crash.
pub(super) fn create_dir_durably(dir: &Path) -> Result<(), WalError> {
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
pub(super) fn remove_temp_files(dir: &Path) -> Result<(), WalError> {
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
pub(super) fn prepare_segment(
    dir: &Path,
    seq: u64,
) -> Result<(LogFile, PathBuf, PathBuf), WalError> {
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
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp_path)
        .and_then(|mut file| {
            file.write_all(&header)?;
            file.sync_all()?;
            Ok(file)
        });
    match created {
        Ok(file) => {
            Ok((LogFile::new(file, &temp_path, SEGMENT_HEADER_BYTES), temp_path, final_path))
        }
        Err(e) => {
            // Best effort: a leftover temp file is also cleaned up by the next open().
            let _ = fs::remove_file(&temp_path);
            Err(WalError::io(&temp_path, e))
        }
    }
}

/// Gives a prepared segment its final name and makes the rename durable.
pub(super) fn publish_segment(
    dir: &Path,
    file: &mut LogFile,
    temp_path: &Path,
    final_path: &Path,
) -> Result<(), WalError> {
    fs::rename(temp_path, final_path).map_err(|e| WalError::io(final_path, e))?;
    file.renamed(final_path);
    sync_dir(dir)
}

/// Fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| WalError::io(dir, e))
}
