//! Rebuilding a data directory from a backup.

use super::*;
use crate::store::catalog::Catalog;
use crate::store::wal::{self};
use crate::store::StoreError;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

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
    let log_dir = data_dir.join(crate::store::LOG_DIR);
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
    crate::store::wait_until_released(data_dir)?;
    let now_ms = crate::clock::now_ms();
    let config = crate::queue::BrokerConfig::default();
    let options = crate::store::recovery::RecoveryOptions::default();
    let recovered = crate::store::recovery::recover(data_dir, config, now_ms, now_ms, options)?;
    let replayed_frame_count = recovered.summary.frame_count;
    // Whoever opens the directory next (a server, `check --backup`) must find it closed: sled
    // lets go of its lock a moment after the last handle is dropped.
    drop(recovered);
    crate::store::wait_until_released(data_dir)?;
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
