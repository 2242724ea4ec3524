use super::*;
use crate::store::wal::WalPosition;

fn sample() -> Vec<u8> {
    let mut writer = BackupWriter::new(Vec::new()).unwrap();
    writer.entry(b"q\0\0\0\x01", b"value one").unwrap();
    writer.entry(b"m", b"").unwrap();
    writer.segment(3).unwrap();
    writer.frame(b"\x01frame").unwrap();
    writer.segment(5).unwrap();
    let checkpoint = WalPosition::new(5, 16);
    let end = WalPosition::new(5, 99);
    writer.finish(checkpoint, end, 7, 1234).unwrap().1
}

fn read_all(bytes: &[u8]) -> Result<Vec<Record>, BackupError> {
    let mut reader = BackupReader::new(bytes)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok(records)
}

#[test]
fn records_round_trip() {
    let records = read_all(&sample()).unwrap();
    assert_eq!(records.len(), 6);
    assert_eq!(
        records[0],
        Record::Entry { key: b"q\0\0\0\x01".to_vec(), value: b"value one".to_vec() }
    );
    assert_eq!(records[1], Record::Entry { key: b"m".to_vec(), value: vec![] });
    assert_eq!(records[2], Record::Segment(3));
    assert_eq!(records[3], Record::Frame(b"\x01frame".to_vec()));
    assert_eq!(records[4], Record::Segment(5));
    let trailer = Trailer {
        entry_count: 2,
        segment_count: 2,
        frame_count: 1,
        checkpoint: (5, 16),
        end: (5, 99),
        epoch: 7,
        created_at_ms: 1234,
    };
    assert_eq!(records[5], Record::Trailer(trailer));
    assert_eq!(BackupReader::new(sample().as_slice()).unwrap().verify_to_end().unwrap(), trailer);
}

#[test]
fn every_truncation_is_detected() {
    let bytes = sample();
    for length in 0..bytes.len() {
        match read_all(&bytes[..length]) {
            Err(BackupError::Truncated { offset }) => assert!(offset <= length as u64),
            other => panic!("cut at {length}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn every_flipped_bit_is_detected() {
    let bytes = sample();
    for index in 0..bytes.len() {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[index] ^= 1 << bit;
            let result = read_all(&damaged);
            assert!(result.is_err(), "flip at byte {index} bit {bit} went unnoticed");
        }
    }
}

#[test]
fn damage_names_the_record_offset() {
    let mut bytes = sample();
    // The second record starts after the magic and the first record (8 + 1 + 4 + 5 + 9).
    let second = MAGIC.len() + 8 + 1 + 4 + 5 + 9;
    bytes[second + 8] ^= 0xff;
    match read_all(&bytes) {
        Err(error @ BackupError::Damaged { offset, .. }) => {
            assert_eq!(offset, second as u64);
            assert!(error.to_string().contains(&format!("offset {second}")), "{error}");
            assert!(error.to_string().contains("crc mismatch"), "{error}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
}

#[test]
fn misplaced_foreign_and_first_format_content_is_refused() {
    assert!(matches!(read_all(b"hello world, not a backup"), Err(BackupError::NotABackup)));
    let mut old = MAGIC_V1.to_vec();
    old.extend_from_slice(&[0; 40]);
    let error = read_all(&old).unwrap_err();
    assert!(matches!(error, BackupError::FirstFormat), "{error:?}");
    assert!(error.to_string().contains("first storage format"), "{error}");
    let mut extra = sample();
    extra.push(0);
    assert!(matches!(read_all(&extra), Err(BackupError::Damaged { .. })));
    let mut writer = BackupWriter::new(Vec::new()).unwrap();
    writer.segment(1).unwrap();
    writer.entry(b"m", b"v").unwrap();
    let bytes = writer.finish(WalPosition::START, WalPosition::START, 0, 0).unwrap().1;
    let error = read_all(&bytes).unwrap_err();
    assert!(error.to_string().contains("after the log"), "{error}");
    let mut writer = BackupWriter::new(Vec::new()).unwrap();
    writer.frame(b"\x01").unwrap();
    let bytes = writer.finish(WalPosition::START, WalPosition::START, 0, 0).unwrap().1;
    let error = read_all(&bytes).unwrap_err();
    assert!(error.to_string().contains("outside a segment"), "{error}");
    let mut writer = BackupWriter::new(Vec::new()).unwrap();
    writer.segment(4).unwrap();
    writer.segment(4).unwrap();
    let bytes = writer.finish(WalPosition::START, WalPosition::START, 0, 0).unwrap().1;
    let error = read_all(&bytes).unwrap_err();
    assert!(error.to_string().contains("segment 4 after segment 4"), "{error}");
    let mut failed = BackupWriter::new(Vec::new()).unwrap();
    failed.entry(b"m", b"v").unwrap();
    let bytes = failed.fail("disk on fire").unwrap();
    match read_all(&bytes) {
        Err(error @ BackupError::WriterFailed { .. }) => {
            assert!(error.to_string().contains("disk on fire"), "{error}");
        }
        other => panic!("expected WriterFailed, got {other:?}"),
    }
}
