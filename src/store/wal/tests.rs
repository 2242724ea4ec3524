//! Tests of the log: append, commit, rotation, replay, torn tails, damage, poisoning.

use super::segment::list_segments;
use super::*;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
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
    let file_bytes: u64 = segment_files(&dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
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
        assert!(matches!(err, WalError::Corrupt { offset, .. } if offset == from.offset), "{err}");
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
    fs::write(tmp.path().join("00000000000000000001.log.tmp"), b"junk").unwrap();

    let mut wal = Wal::open(tmp.path(), SEGMENT_BYTES_MAX_DEFAULT).unwrap();
    assert_eq!(wal.committed_position(), WalPosition::new(1, SEGMENT_HEADER_BYTES));
    let second = write_frames(&mut wal, 2, 2);
    assert_eq!(second[0].0.segment_seq, 1);
    drop(wal);
    assert_eq!(fs::read(&first_file).unwrap(), first_bytes);
    assert!(!tmp.path().join("00000000000000000001.log.tmp").exists());
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
    let segment_path = wal.replace_file_for_test(|path| File::open(path).unwrap());
    wal.append(b"doomed");
    let err = wal.commit().unwrap_err();
    assert!(matches!(err, WalError::Io { ref path, .. } if *path == segment_path), "{err}");
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
