//! Writing a backup stream: the magic line, records, the trailer.

use super::*;
use crate::store::wal::WalPosition;
use std::io::{self, Write};

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
