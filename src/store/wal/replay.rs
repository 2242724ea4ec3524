//! Reading the log back: [`replay`] at startup (which cuts a torn tail), and [`read_range`], which
//! reads a log that a running server appends to (for backups).

use super::segment::{list_segments, FrameRead, SegmentReader};
use super::{ReplaySummary, TruncatedTail, WalError, WalPosition, SEGMENT_HEADER_BYTES};
use std::path::{Path, PathBuf};

/// Reads every frame at or after `from`, in log order, calling `apply(position_after_frame, payload)`.
///
/// Runs at startup before [`super::Wal::open`]. The error type is the callback's own `E`, which must
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
