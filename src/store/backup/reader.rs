//! Reading a backup stream back, record by record, checking each and the order they come in.

use super::*;
use crate::store::wal::FRAME_PAYLOAD_BYTES_MAX;
use std::io::{self, Read};

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
