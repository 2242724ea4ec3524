//! `wal_replay`: a log directory built from the bytes and replayed: frames match a model, a torn
//! tail is cut only at the end, replay is idempotent and agrees with `read_range`.

use crate::store::wal::{self, WalError, WalPosition, SEGMENT_HEADER_BYTES, SEGMENT_MAGIC};
use std::path::Path;

/// Writes the bytes as log segment files, replays them, and checks the result against a model.
///
/// The first byte picks the layout (the rest of the input is `body`):
/// - 0: one segment file whose whole content is `body` (header included, so usually refused);
/// - 1: a valid segment header followed by `body` as raw frames;
/// - 2: a valid header followed by frames built from `body` (see [`build_segment`]), whose valid
///   prefix the replay must return exactly, truncating the file at the first damaged frame;
/// - 3: two built segments (the next byte says how many bytes the first one gets): damage in the
///   first is corruption, damage in the second a torn tail.
///
/// Whatever the layout, replay returns `Ok` or `Err` and never panics. `read_range` (the read-only
/// reader backups use), run first, changes no file and agrees with the replay: the same frames, its
/// torn tail where the replay truncates, an error where the replay fails. After an `Ok` (which may
/// have truncated a torn tail) a second replay succeeds without truncating and returns the same
/// frames, a replay from any frame boundary returns the frames after it, a range up to a frame
/// boundary returns the frames before it, and a replay from inside a frame is refused.
pub fn wal_replay(data: &[u8]) {
    let Some((&layout, body)) = data.split_first() else {
        return;
    };
    let scratch = scratch_dir();
    let dir = scratch.path();
    let segments = match layout % 4 {
        0 => vec![SegmentPlan::unknown(body.to_vec())],
        1 => vec![SegmentPlan::unknown(segment_header(0, body))],
        2 => vec![build_segment(0, body)],
        _ => {
            let (split, rest) = body.split_first().map_or((0, body), |(&byte, rest)| (byte, rest));
            let (first, second) = rest.split_at(usize::from(split).min(rest.len()));
            vec![build_segment(0, first), build_segment(1, second)]
        }
    };
    for (seq, segment) in segments.iter().enumerate() {
        std::fs::write(wal::segment_path(dir, seq as u64), &segment.bytes)
            .expect("writing a scratch log segment");
    }
    let lengths = file_lengths(dir, segments.len());
    let read = read_frames(dir, WalPosition::START, None);
    assert_eq!(file_lengths(dir, segments.len()), lengths, "read_range changed a segment");
    let first = replay_frames(dir, WalPosition::START);
    check_read_agrees(&read, &first);
    check_against_plan(dir, &segments, &first);
    match first {
        Ok((frames, _)) => check_replay_again(dir, &frames, body.len()),
        Err(_) => assert!(
            replay_frames(dir, WalPosition::START).is_err(),
            "a refused WAL was accepted on the second replay"
        ),
    }
}

/// One segment file to write, with what replay must make of it when the model knows.
struct SegmentPlan {
    bytes: Vec<u8>,
    /// The model's expectation: (valid frames in order, offset of the first damaged frame).
    expected: Option<(Vec<Vec<u8>>, Option<u64>)>,
}

impl SegmentPlan {
    fn unknown(bytes: Vec<u8>) -> SegmentPlan {
        SegmentPlan { bytes, expected: None }
    }
}

/// Frames returned by a replay, each with the position just after it.
type Frames = Vec<(WalPosition, Vec<u8>)>;

fn replay_frames(dir: &Path, from: WalPosition) -> Result<(Frames, wal::ReplaySummary), WalError> {
    let mut frames = Vec::new();
    let summary = wal::replay(dir, from, |position, payload: &[u8]| {
        frames.push((position, payload.to_vec()));
        Ok::<(), WalError>(())
    })?;
    Ok((frames, summary))
}

/// Frames returned by `read_range`, and the offset of the torn tail it stopped at.
type RangeRead = (Frames, Option<u64>);

fn read_frames(
    dir: &Path,
    from: WalPosition,
    to: Option<WalPosition>,
) -> Result<RangeRead, WalError> {
    let mut frames = Vec::new();
    let summary = wal::read_range(dir, from, to, |position, payload: &[u8]| {
        frames.push((position, payload.to_vec()));
        Ok::<(), WalError>(())
    })?;
    assert_eq!(summary.frame_count, frames.len() as u64);
    Ok((frames, summary.torn_tail.map(|(_, offset, _)| offset)))
}

fn file_lengths(dir: &Path, count: usize) -> Vec<u64> {
    (0..count as u64)
        .map(|seq| std::fs::metadata(wal::segment_path(dir, seq)).map_or(0, |meta| meta.len()))
        .collect()
}

/// `read_range` over the whole log reads what the replay replays and stops where it truncates.
fn check_read_agrees(
    read: &Result<RangeRead, WalError>,
    replayed: &Result<(Frames, wal::ReplaySummary), WalError>,
) {
    match (read, replayed) {
        (Ok((frames, torn_at)), Ok((replayed_frames, summary))) => {
            assert_eq!(frames, replayed_frames, "read_range and replay read other frames");
            let truncated_at = summary.truncated.as_ref().map(|tail| tail.offset);
            assert_eq!(*torn_at, truncated_at, "read_range and replay disagree on the torn tail");
        }
        (Err(_), Err(_)) => {}
        (read, replayed) => {
            panic!("read_range gave {read:?} but replay gave {replayed:?}")
        }
    }
}

/// A directory for one replay, on tmpfs when there is one: replay fsyncs after truncating.
fn scratch_dir() -> tempfile::TempDir {
    let shared_memory = Path::new("/dev/shm");
    let parent =
        if shared_memory.is_dir() { shared_memory.to_path_buf() } else { std::env::temp_dir() };
    tempfile::Builder::new()
        .prefix("outboxd-fuzz-wal-")
        .tempdir_in(parent)
        .expect("creating a scratch directory")
}

fn segment_header(seq: u64, rest: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES as usize + rest.len());
    bytes.extend_from_slice(&SEGMENT_MAGIC);
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(rest);
    bytes
}

/// Builds a segment from `body` read as chunks of `[control, payload...]`.
///
/// `control & 0x7f` is the payload length and bit 7 asks for a wrong crc. A length of 0 (a frame
/// the format forbids), a wrong crc, or a payload cut short by the end of `body` (a torn write) is
/// damage: the model's valid frames stop there.
fn build_segment(seq: u64, body: &[u8]) -> SegmentPlan {
    let mut bytes = segment_header(seq, &[]);
    let mut frames = Vec::new();
    let mut damaged_at = None;
    let mut rest = body;
    while let Some((&control, after)) = rest.split_first() {
        let declared_len = usize::from(control & 0x7f);
        let payload = &after[..declared_len.min(after.len())];
        rest = &after[payload.len()..];
        let mut crc = crc32fast::hash(payload);
        if control & 0x80 != 0 {
            crc ^= 1;
        }
        let valid = declared_len > 0 && payload.len() == declared_len && control & 0x80 == 0;
        if !valid && damaged_at.is_none() {
            damaged_at = Some(bytes.len() as u64);
        }
        if damaged_at.is_none() {
            frames.push(payload.to_vec());
        }
        bytes.extend_from_slice(&(declared_len as u32).to_le_bytes());
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(payload);
    }
    SegmentPlan { bytes, expected: Some((frames, damaged_at)) }
}

/// Compares the first replay with the model, when every segment was built by the model.
fn check_against_plan(
    dir: &Path,
    segments: &[SegmentPlan],
    result: &Result<(Frames, wal::ReplaySummary), WalError>,
) {
    let Some(plans) =
        segments.iter().map(|segment| segment.expected.as_ref()).collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let (last_plan, earlier_plans) = plans.split_last().expect("at least one segment");
    if earlier_plans.iter().any(|(_, damaged_at)| damaged_at.is_some()) {
        assert!(
            matches!(result, Err(WalError::Corrupt { .. })),
            "damage in an earlier segment must be corruption, got {result:?}"
        );
        return;
    }
    let (frames, summary) = result.as_ref().expect("a modelled WAL replays");
    let expected: Vec<&Vec<u8>> = plans.iter().flat_map(|(frames, _)| frames).collect();
    let replayed: Vec<&Vec<u8>> = frames.iter().map(|(_, payload)| payload).collect();
    assert_eq!(replayed, expected, "replay returned other frames than were written");
    let last_seq = (plans.len() - 1) as u64;
    let truncated_at = summary.truncated.as_ref().map(|tail| tail.offset);
    assert_eq!(truncated_at, last_plan.1, "the torn tail was cut elsewhere");
    if let Some(offset) = truncated_at {
        let length = std::fs::metadata(wal::segment_path(dir, last_seq))
            .expect("the segment still exists")
            .len();
        assert_eq!(length, offset, "the file was not truncated to the torn frame");
    }
}

/// After a successful replay: the log is stable, and replays from every kind of start agree.
fn check_replay_again(dir: &Path, frames: &Frames, choice: usize) {
    let (again, summary) = replay_frames(dir, WalPosition::START).unwrap_or_else(|error| {
        panic!("a second replay failed after the first succeeded: {error}")
    });
    assert_eq!(&again, frames, "a second replay returned other frames");
    assert!(summary.truncated.is_none(), "a second replay truncated again");
    assert_eq!(summary.frame_count, frames.len() as u64);
    let byte_count: usize = frames.iter().map(|(_, payload)| payload.len()).sum();
    assert_eq!(summary.byte_count, byte_count as u64);
    assert_eq!(summary.last_position, frames.last().map(|(position, _)| *position));
    for pair in frames.windows(2) {
        assert!(pair[0].0 < pair[1].0, "frame positions do not increase");
    }
    if frames.is_empty() {
        return;
    }
    let index = choice % frames.len();
    let boundary = frames[index].0;
    let (after, _) = replay_frames(dir, boundary)
        .unwrap_or_else(|error| panic!("replay from the frame boundary {boundary:?}: {error}"));
    assert_eq!(after.as_slice(), &frames[index + 1..], "replay from {boundary:?}");
    let (before, torn_at) = read_frames(dir, WalPosition::START, Some(boundary))
        .unwrap_or_else(|error| panic!("reading up to the frame boundary {boundary:?}: {error}"));
    assert_eq!(before.as_slice(), &frames[..=index], "range up to {boundary:?}");
    assert_eq!(torn_at, None, "a bounded range reported a torn tail");
    // The position just before a frame's end is inside that frame: never a frame start.
    let inside = WalPosition::new(boundary.segment_seq, boundary.offset - 1);
    assert!(
        matches!(replay_frames(dir, inside), Err(WalError::Corrupt { .. })),
        "a replay starting inside a frame was not refused"
    );
}
