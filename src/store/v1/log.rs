//! The first format's log, read without changing it: segments `{seq:020}.wal` starting with the
//! magic `OBXWAL01` and their seq, then frames (length `u32`, crc32 `u32`, payload), little-endian.
//!
//! As that format's replay did, frames from the checkpoint on are applied in order; damage at the
//! end of the newest segment is a torn tail (a commit a crash interrupted, never acknowledged) and
//! ends the replay, here without cutting the file; damage anywhere else is an error.

use crate::store::wal::WalError;
use crate::store::StoreError;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"OBXWAL01";
const SEGMENT_HEADER_BYTES: u64 = 16;
const FRAME_HEADER_BYTES: u64 = 8;
const FRAME_PAYLOAD_BYTES_MAX: u32 = 256 * 1024 * 1024;

/// What a replay applied.
#[derive(Debug, Default)]
pub struct Replayed {
    pub frame_count: u64,
    /// The segment and offset of a torn tail the log ends in.
    pub torn_tail: Option<(PathBuf, u64)>,
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path: dir.to_path_buf(), source }),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(digits) = name.strip_suffix(".wal") else { continue };
        if digits.len() == 20 && digits.bytes().all(|byte| byte.is_ascii_digit()) {
            if let Ok(seq) = digits.parse() {
                found.push((seq, entry.path()));
            }
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Wal(WalError::Corrupt { path: path.to_path_buf(), offset, reason: reason.into() })
}

/// Applies every frame at or after `from` (segment, offset), in order.
pub fn replay(
    dir: &Path,
    from: (u64, u64),
    mut apply: impl FnMut((u64, u64), &[u8]) -> Result<(), StoreError>,
) -> Result<Replayed, StoreError> {
    let selected: Vec<(u64, PathBuf)> =
        segments(dir)?.into_iter().filter(|(seq, _)| *seq >= from.0).collect();
    let mut replayed = Replayed::default();
    for (index, (seq, path)) in selected.iter().enumerate() {
        if *seq != from.0 + index as u64 {
            let error = WalError::Gap {
                dir: dir.to_path_buf(),
                missing_seq: from.0 + index as u64,
                found_seq: *seq,
            };
            return Err(StoreError::Wal(error));
        }
        let is_last = index + 1 == selected.len();
        let start =
            if *seq == from.0 { from.1.max(SEGMENT_HEADER_BYTES) } else { SEGMENT_HEADER_BYTES };
        let io = |source| StoreError::Io { path: path.clone(), source };
        let file = File::open(path).map_err(io)?;
        let file_bytes = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; 16];
        if file_bytes < SEGMENT_HEADER_BYTES || reader.read_exact(&mut header).is_err() {
            return Err(corrupt(path, 0, "segment header truncated"));
        }
        if &header[..8] != MAGIC || header[8..] != seq.to_le_bytes() {
            return Err(corrupt(path, 0, "not a first-format log segment of this seq"));
        }
        let mut offset = SEGMENT_HEADER_BYTES;
        let mut payload = Vec::new();
        while offset < file_bytes {
            let frame_start = offset;
            let damage = read_frame(&mut reader, file_bytes - offset, &mut payload).err();
            if let Some(reason) = damage {
                if is_last && offset >= start {
                    replayed.torn_tail = Some((path.clone(), offset));
                    break;
                }
                return Err(corrupt(path, offset, reason));
            }
            offset += FRAME_HEADER_BYTES + payload.len() as u64;
            if frame_start >= start {
                apply((*seq, offset), &payload)?;
                replayed.frame_count += 1;
            }
        }
    }
    Ok(replayed)
}

/// Reads one frame into `payload`, or says why it is damaged.
fn read_frame(reader: &mut impl Read, remaining: u64, payload: &mut Vec<u8>) -> Result<(), String> {
    if remaining < FRAME_HEADER_BYTES {
        return Err("frame header runs past the end of the file".into());
    }
    let mut header = [0u8; 8];
    reader.read_exact(&mut header).map_err(|error| error.to_string())?;
    let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let stored = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if length == 0 || length > FRAME_PAYLOAD_BYTES_MAX {
        return Err(format!("frame length {length} is out of range"));
    }
    if u64::from(length) > remaining - FRAME_HEADER_BYTES {
        return Err("frame payload runs past the end of the file".into());
    }
    payload.resize(length as usize, 0);
    reader.read_exact(payload).map_err(|error| error.to_string())?;
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(format!("crc mismatch (stored {stored:08x}, computed {computed:08x})"));
    }
    Ok(())
}
