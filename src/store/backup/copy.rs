//! Copying a data directory into a backup: the catalog at one checkpoint, then the log.

use super::*;
use crate::store::catalog::Catalog;
use crate::store::codec::{self, Manifest};
use crate::store::keys;
use crate::store::wal::{self, WalPosition, SEGMENT_HEADER_BYTES};
use crate::store::StoreError;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
