//! The catalog's hot records: pages of message records, and the manifest.
//!
//! A page holds the records of the stored messages whose ids share `id >> PAGE_ID_BITS`, sorted by
//! id:
//!
//! | bytes | field                                          |
//! |-------|------------------------------------------------|
//! | 1     | page version (`PAGE_VERSION`)                  |
//! | v     | record count, varint                           |
//! |       | the records (below)                            |
//! | 4     | crc32 of everything before it, LE              |
//!
//! A record is coded against the one before it in the page (the first against an all-zero record),
//! since neighbours mostly share their queue, priority and attempt limit, were enqueued within
//! milliseconds of each other and have their contents side by side in one log segment:
//!
//! - the id's low byte;
//! - a flags byte: bits 0-2 say the queue id, priority and attempt limit equal the previous
//!   record's (and are then left out); bits 3-4 say where the content is (0: in the log, segment
//!   and offset given; 1: in the log, same segment as the previous record's content, offset given
//!   as a zigzag delta from where that content ends, used whenever that is no longer than segment
//!   and offset; 2: in the catalog); bits 5-7 the state (its `repr`);
//! - the queue id (varint), the priority (zigzag) and the attempt limit (varint), those not equal
//!   to the previous record's; the attempts (varint);
//! - the enqueue time as a zigzag delta from the previous record's; the last change as a zigzag
//!   delta from the enqueue time; the due time (0 for none, else 1 + zigzag delta from the last
//!   change); the lease nonce (8 bytes LE, only when leased); the lease time (0 for none, else 1 +
//!   zigzag delta from the enqueue time); the history event count (varint);
//! - the content: segment and offset (varints) or the offset delta, as the flags say (nothing for
//!   content in the catalog); its length (varint).
//!
//! About 15 bytes for a delivered message among others of its batch.
//!
//! The manifest is one record naming the checkpoint: its epoch, the log position the catalog is
//! exact up to, the next message id, each queue's dead and delivered counts, and every log segment
//! that still holds content of stored messages (so that the others can be deleted).

use super::op::{get_settings, put_settings};
use super::varint::{i64_len, put_i64, put_u64, u64_len, Reader};
use super::{check_crc_trailer, CodecError};
use crate::queue::{
    ContentLocation, MessageId, MessageMeta, MessageState, QueueId, QueueRecord, SegmentUsage,
    TerminalCounts, ALL_STATES, PAGE_ID_BITS,
};
use crate::store::wal::WalPosition;

/// The page layout's version.
pub const PAGE_VERSION: u8 = 2;
/// The manifest layout's version.
pub const MANIFEST_VERSION: u8 = 1;

/// Encodes a page from its records, which must be sorted by id and all belong to `page`.
pub fn encode_page(page: u64, records: &[(MessageId, MessageMeta)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + records.len() * 32);
    out.push(PAGE_VERSION);
    put_u64(&mut out, records.len() as u64);
    let mut previous: Option<(MessageId, &MessageMeta)> = None;
    for (id, meta) in records {
        assert_eq!(id.0 >> PAGE_ID_BITS, page, "record {id} is not in page {page}");
        assert!(previous.map(|(id, _)| id) < Some(*id), "page records are sorted and unique");
        put_record(&mut out, *id, meta, previous.map_or(&ZERO_RECORD, |(_, meta)| meta));
        previous = Some((*id, meta));
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn delta(value: u64, base: u64) -> i64 {
    value.wrapping_sub(base) as i64
}

/// A record with every field zero: what the first record of a page is coded against.
const ZERO_RECORD: MessageMeta = MessageMeta {
    queue_id: QueueId(0),
    state: MessageState::Ready,
    priority: 0,
    attempt_count: 0,
    attempt_count_max: 0,
    enqueued_at_ms: 0,
    updated_at_ms: 0,
    due_at_ms: 0,
    lease_nonce: 0,
    leased_at_ms: 0,
    event_seq: 0,
    content: ContentLocation::Catalog { len: 0 },
};

const SAME_QUEUE: u8 = 1;
const SAME_PRIORITY: u8 = 1 << 1;
const SAME_ATTEMPT_LIMIT: u8 = 1 << 2;
const CONTENT_SHIFT: u32 = 3;
const CONTENT_LOG: u8 = 0;
const CONTENT_LOG_NEXT: u8 = 1;
const CONTENT_CATALOG: u8 = 2;
const STATE_SHIFT: u32 = 5;

/// Where the previous record's content ends, when it is in the log: (segment, end offset).
fn log_end(meta: &MessageMeta) -> Option<(u32, u64)> {
    match meta.content {
        ContentLocation::Log { segment, offset, len } => {
            Some((segment, u64::from(offset) + u64::from(len)))
        }
        ContentLocation::Catalog { .. } => None,
    }
}

fn put_record(out: &mut Vec<u8>, id: MessageId, meta: &MessageMeta, previous: &MessageMeta) {
    out.push(id.0 as u8);
    let mut flags = (meta.state as u8) << STATE_SHIFT;
    if meta.queue_id == previous.queue_id {
        flags |= SAME_QUEUE;
    }
    if meta.priority == previous.priority {
        flags |= SAME_PRIORITY;
    }
    if meta.attempt_count_max == previous.attempt_count_max {
        flags |= SAME_ATTEMPT_LIMIT;
    }
    // The offset as a delta from where the previous content ends, unless that is longer than
    // segment and offset (a content that moved or was edited lies far from its neighbour's): the
    // shorter form is the one and only encoding of a record.
    let content = match (meta.content, log_end(previous)) {
        (ContentLocation::Catalog { .. }, _) => CONTENT_CATALOG,
        (ContentLocation::Log { segment, offset, .. }, Some((previous_segment, end)))
            if segment == previous_segment
                && i64_len(delta(u64::from(offset), end))
                    <= u64_len(u64::from(segment)) + u64_len(u64::from(offset)) =>
        {
            CONTENT_LOG_NEXT
        }
        (ContentLocation::Log { .. }, _) => CONTENT_LOG,
    };
    flags |= content << CONTENT_SHIFT;
    out.push(flags);
    if flags & SAME_QUEUE == 0 {
        put_u64(out, u64::from(meta.queue_id.0));
    }
    if flags & SAME_PRIORITY == 0 {
        put_i64(out, i64::from(meta.priority));
    }
    if flags & SAME_ATTEMPT_LIMIT == 0 {
        put_u64(out, u64::from(meta.attempt_count_max));
    }
    put_u64(out, u64::from(meta.attempt_count));
    put_i64(out, delta(meta.enqueued_at_ms, previous.enqueued_at_ms));
    put_i64(out, delta(meta.updated_at_ms, meta.enqueued_at_ms));
    put_optional_delta(out, meta.due_at_ms, meta.updated_at_ms);
    if meta.state == MessageState::Leased {
        out.extend_from_slice(&meta.lease_nonce.to_le_bytes());
    }
    put_optional_delta(out, meta.leased_at_ms, meta.enqueued_at_ms);
    put_u64(out, u64::from(meta.event_seq));
    match meta.content {
        ContentLocation::Log { segment, offset, len } => {
            match log_end(previous) {
                Some((_, end)) if content == CONTENT_LOG_NEXT => {
                    put_i64(out, delta(u64::from(offset), end));
                }
                _ => {
                    put_u64(out, u64::from(segment));
                    put_u64(out, u64::from(offset));
                }
            }
            put_u64(out, u64::from(len));
        }
        ContentLocation::Catalog { len } => put_u64(out, u64::from(len)),
    }
}

/// A time that is 0 for "none", as 0 or 1 + the zigzag of its delta from `base`.
fn put_optional_delta(out: &mut Vec<u8>, value: u64, base: u64) {
    if value == 0 {
        put_u64(out, 0);
    } else {
        let zigzag = {
            let delta = delta(value, base);
            ((delta << 1) ^ (delta >> 63)) as u64
        };
        put_u64(out, zigzag.saturating_add(1));
    }
}

fn get_optional_delta(reader: &mut Reader<'_>, base: u64) -> Result<u64, CodecError> {
    let raw = reader.u64().map_err(CodecError::layout("page time"))?;
    if raw == 0 {
        return Ok(0);
    }
    let zigzag = raw - 1;
    let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
    Ok(base.wrapping_add(delta as u64))
}

/// Decodes a page; `page` is the number it is stored under (records carry only their low byte).
pub fn decode_page(page: u64, bytes: &[u8]) -> Result<Vec<(MessageId, MessageMeta)>, CodecError> {
    let body = check_crc_trailer(bytes, 2)?;
    if body[0] != PAGE_VERSION {
        return Err(CodecError::Version { found: body[0], expected: PAGE_VERSION });
    }
    let mut reader = Reader::new(&body[1..]);
    let fail = CodecError::layout("page");
    let count = reader.u64().map_err(&fail)?;
    if count > (1 << PAGE_ID_BITS) {
        return Err(CodecError::Layout { offset: 1, what: "page record count" });
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let low = reader.u8().map_err(&fail)?;
        let id = MessageId((page << PAGE_ID_BITS) | u64::from(low));
        if records.last().is_some_and(|(previous, _)| *previous >= id) {
            return Err(CodecError::Layout { offset: reader.offset(), what: "page record order" });
        }
        let previous = records.last().map_or(&ZERO_RECORD, |(_, meta)| meta);
        let meta = get_record(&mut reader, previous)?;
        records.push((id, meta));
    }
    if !reader.is_empty() {
        return Err(CodecError::Layout { offset: reader.offset(), what: "page end" });
    }
    Ok(records)
}

fn get_record(reader: &mut Reader<'_>, previous: &MessageMeta) -> Result<MessageMeta, CodecError> {
    let fail = CodecError::layout("page record");
    let flags = reader.u8().map_err(&fail)?;
    let state_byte = flags >> STATE_SHIFT;
    let state = ALL_STATES
        .into_iter()
        .find(|state| *state as u8 == state_byte)
        .ok_or(CodecError::Layout { offset: reader.offset(), what: "message state" })?;
    let queue_id = if flags & SAME_QUEUE != 0 {
        previous.queue_id
    } else {
        QueueId(reader.u32().map_err(&fail)?)
    };
    let priority =
        if flags & SAME_PRIORITY != 0 { previous.priority } else { reader.i32().map_err(&fail)? };
    let attempt_count_max = if flags & SAME_ATTEMPT_LIMIT != 0 {
        previous.attempt_count_max
    } else {
        reader.u32().map_err(&fail)?
    };
    let attempt_count = reader.u32().map_err(&fail)?;
    let enqueued_at_ms = previous.enqueued_at_ms.wrapping_add(reader.i64().map_err(&fail)? as u64);
    let updated_at_ms = enqueued_at_ms.wrapping_add(reader.i64().map_err(&fail)? as u64);
    let due_at_ms = get_optional_delta(reader, updated_at_ms)?;
    let lease_nonce =
        if state == MessageState::Leased { reader.u64_le().map_err(&fail)? } else { 0 };
    let leased_at_ms = get_optional_delta(reader, enqueued_at_ms)?;
    let event_seq = reader.u32().map_err(&fail)?;
    let content = match (flags >> CONTENT_SHIFT) & 0b11 {
        CONTENT_LOG => {
            let segment = reader.u32().map_err(&fail)?;
            let offset = reader.u32().map_err(&fail)?;
            ContentLocation::Log { segment, offset, len: reader.u32().map_err(&fail)? }
        }
        CONTENT_LOG_NEXT => {
            let (segment, end) = log_end(previous).ok_or(CodecError::Layout {
                offset: reader.offset(),
                what: "content location (no previous content in the log)",
            })?;
            let offset = end.wrapping_add(reader.i64().map_err(&fail)? as u64);
            let offset = u32::try_from(offset).map_err(|_| CodecError::Layout {
                offset: reader.offset(),
                what: "content offset",
            })?;
            ContentLocation::Log { segment, offset, len: reader.u32().map_err(&fail)? }
        }
        CONTENT_CATALOG => ContentLocation::Catalog { len: reader.u32().map_err(&fail)? },
        _ => return Err(CodecError::Layout { offset: reader.offset(), what: "content location" }),
    };
    Ok(MessageMeta {
        queue_id,
        state,
        priority,
        attempt_count,
        attempt_count_max,
        enqueued_at_ms,
        updated_at_ms,
        due_at_ms,
        lease_nonce,
        leased_at_ms,
        event_seq,
        content,
    })
}

/// The catalog's description of one checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint's number; each checkpoint's is one more than the last.
    pub epoch: u64,
    /// The catalog holds exactly the effect of the log before this position.
    pub position: WalPosition,
    pub next_id: u64,
    /// Indexed by queue id.
    pub terminal_counts: Vec<TerminalCounts>,
    /// Every segment that still holds content of stored messages, by seq.
    pub segments: Vec<(u32, SegmentUsage)>,
}

/// Encodes the manifest.
pub fn encode_manifest(manifest: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + manifest.segments.len() * 16);
    out.push(MANIFEST_VERSION);
    put_u64(&mut out, manifest.epoch);
    put_u64(&mut out, manifest.position.segment_seq);
    put_u64(&mut out, manifest.position.offset);
    put_u64(&mut out, manifest.next_id);
    put_u64(&mut out, manifest.terminal_counts.len() as u64);
    for counts in &manifest.terminal_counts {
        put_u64(&mut out, counts.dead);
        put_u64(&mut out, counts.delivered);
    }
    put_u64(&mut out, manifest.segments.len() as u64);
    for (seq, usage) in &manifest.segments {
        put_u64(&mut out, u64::from(*seq));
        put_u64(&mut out, usage.live_count);
        put_u64(&mut out, usage.live_bytes);
        put_u64(&mut out, usage.id_low);
        put_u64(&mut out, usage.id_high);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the manifest.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, CodecError> {
    let body = check_crc_trailer(bytes, 1)?;
    if body[0] != MANIFEST_VERSION {
        return Err(CodecError::Version { found: body[0], expected: MANIFEST_VERSION });
    }
    let mut reader = Reader::new(&body[1..]);
    let fail = CodecError::layout("manifest");
    let epoch = reader.u64().map_err(&fail)?;
    let segment_seq = reader.u64().map_err(&fail)?;
    let offset = reader.u64().map_err(&fail)?;
    let next_id = reader.u64().map_err(&fail)?;
    let queue_count = reader.u64().map_err(&fail)?;
    if queue_count > reader.remaining() as u64 {
        return Err(CodecError::Layout { offset: reader.offset(), what: "manifest queue count" });
    }
    let mut terminal_counts = Vec::with_capacity(queue_count as usize);
    for _ in 0..queue_count {
        let dead = reader.u64().map_err(&fail)?;
        let delivered = reader.u64().map_err(&fail)?;
        terminal_counts.push(TerminalCounts { dead, delivered });
    }
    let segment_count = reader.u64().map_err(&fail)?;
    if segment_count > reader.remaining() as u64 {
        return Err(CodecError::Layout { offset: reader.offset(), what: "manifest segment count" });
    }
    let mut segments = Vec::with_capacity(segment_count as usize);
    for _ in 0..segment_count {
        let seq = reader.u32().map_err(&fail)?;
        let usage = SegmentUsage {
            live_count: reader.u64().map_err(&fail)?,
            live_bytes: reader.u64().map_err(&fail)?,
            id_low: reader.u64().map_err(&fail)?,
            id_high: reader.u64().map_err(&fail)?,
        };
        segments.push((seq, usage));
    }
    if !reader.is_empty() {
        return Err(CodecError::Layout { offset: reader.offset(), what: "manifest end" });
    }
    Ok(Manifest {
        epoch,
        position: WalPosition { segment_seq, offset },
        next_id,
        terminal_counts,
        segments,
    })
}

/// Encodes a queue record: name, paused flag, settings (as in ops), crc.
pub fn encode_queue(record: &QueueRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + record.name.len());
    out.push(MANIFEST_VERSION);
    super::varint::put_bytes(&mut out, record.name.as_bytes());
    out.push(u8::from(record.paused));
    put_settings(&mut out, &record.settings);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a queue record written by [`encode_queue`].
pub fn decode_queue(bytes: &[u8]) -> Result<QueueRecord, CodecError> {
    let body = check_crc_trailer(bytes, 1)?;
    if body[0] != MANIFEST_VERSION {
        return Err(CodecError::Version { found: body[0], expected: MANIFEST_VERSION });
    }
    let mut reader = Reader::new(&body[1..]);
    let fail = CodecError::layout("queue record");
    let name = reader.str().map_err(&fail)?.to_string();
    let paused = reader.u8().map_err(&fail)? != 0;
    let settings = get_settings(&mut reader)?;
    if !reader.is_empty() {
        return Err(CodecError::Layout { offset: reader.offset(), what: "queue record end" });
    }
    Ok(QueueRecord { name, paused, settings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: MessageState) -> MessageMeta {
        MessageMeta {
            queue_id: QueueId(300),
            state,
            priority: -7,
            attempt_count: 2,
            attempt_count_max: 10,
            enqueued_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_500,
            due_at_ms: if state.is_timed() { 1_699_000_000_000 } else { 0 },
            lease_nonce: if state == MessageState::Leased { 0xdead_beef } else { 0 },
            leased_at_ms: 1_700_000_000_400,
            event_seq: 3,
            content: ContentLocation::Log { segment: 9, offset: 123_456, len: 300 },
        }
    }

    #[test]
    fn pages_round_trip_every_state_and_detect_damage() {
        let page = 77;
        let records: Vec<(MessageId, MessageMeta)> = ALL_STATES
            .into_iter()
            .enumerate()
            .map(|(index, state)| {
                (MessageId((page << PAGE_ID_BITS) + index as u64 * 40), meta(state))
            })
            .chain(std::iter::once((
                MessageId((page << PAGE_ID_BITS) | 255),
                MessageMeta {
                    content: ContentLocation::Catalog { len: 4 },
                    updated_at_ms: 5,
                    leased_at_ms: 0,
                    ..meta(MessageState::Dead)
                },
            )))
            .collect();
        let bytes = encode_page(page, &records);
        assert_eq!(decode_page(page, &bytes).unwrap(), records);
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            assert!(decode_page(page, &damaged).is_err(), "flip at byte {index}");
        }
        assert!(decode_page(page, &[]).is_err());
        assert_eq!(decode_page(page, &encode_page(page, &[])).unwrap(), vec![]);
    }

    /// Each field coded against the previous record round-trips when it differs from it: queue,
    /// priority, attempt limit, segment, an offset before the previous content's end, content in
    /// the catalog before and after content in the log.
    #[test]
    fn records_coded_against_their_neighbour_round_trip_whatever_changes() {
        let page = 3;
        let base = meta(MessageState::Delivered);
        let log = |segment, offset| ContentLocation::Log { segment, offset, len: 300 };
        let variants = [
            base.clone(),
            MessageMeta { queue_id: QueueId(0), ..base.clone() },
            MessageMeta { priority: i32::MIN, ..base.clone() },
            MessageMeta { attempt_count_max: u32::MAX, ..base.clone() },
            MessageMeta { content: log(10, 0), ..base.clone() },
            MessageMeta { content: log(10, 5), ..base.clone() },
            MessageMeta { content: ContentLocation::Catalog { len: 9 }, ..base.clone() },
            MessageMeta { content: log(10, u32::MAX - 300), ..base.clone() },
            MessageMeta { enqueued_at_ms: 0, updated_at_ms: 0, leased_at_ms: 0, ..base.clone() },
            MessageMeta { enqueued_at_ms: u64::MAX, ..meta(MessageState::Leased) },
            base,
        ];
        let records: Vec<(MessageId, MessageMeta)> = variants
            .into_iter()
            .enumerate()
            .map(|(index, meta)| (MessageId((page << PAGE_ID_BITS) + index as u64), meta))
            .collect();
        assert_eq!(decode_page(page, &encode_page(page, &records)).unwrap(), records);
    }

    /// A content far behind its neighbour's in the same segment (moved or edited) is written as
    /// segment and offset when the delta would be longer, so that no accepted encoding of a page
    /// is shorter than the one the encoder writes.
    #[test]
    fn a_content_far_behind_its_neighbour_takes_the_shorter_form() {
        let page = 0;
        let log = |offset, len| ContentLocation::Log { segment: 1, offset, len };
        let records = vec![
            (MessageId(2), MessageMeta { content: log(2, 20_007), ..meta(MessageState::Dead) }),
            (MessageId(5), MessageMeta { content: log(2, 40), ..meta(MessageState::Dead) }),
        ];
        let bytes = encode_page(page, &records);
        assert_eq!(decode_page(page, &bytes).unwrap(), records);
        let mut next_form = records.clone();
        next_form[1].1.content = log(20_009 + 5, 40);
        let next_bytes = encode_page(page, &next_form);
        assert_eq!(decode_page(page, &next_bytes).unwrap(), next_form);
        // A delta of +5 takes one byte; segment and offset two; a delta of -20,007 would take three.
        assert_eq!(bytes.len(), next_bytes.len() + 1);
        for (value, signed) in [(0u64, 0i64), (127, -64), (128, 64), (u64::MAX, i64::MIN)] {
            let mut out = Vec::new();
            crate::store::codec::varint::put_u64(&mut out, value);
            assert_eq!(crate::store::codec::varint::u64_len(value), out.len(), "{value}");
            out.clear();
            crate::store::codec::varint::put_i64(&mut out, signed);
            assert_eq!(crate::store::codec::varint::i64_len(signed), out.len(), "{signed}");
        }
    }

    /// A page of messages delivered together, as a batch leaves them, costs about 15 bytes a
    /// record: the catalog stays a small fraction of the bodies it describes.
    #[test]
    fn neighbours_of_one_batch_cost_a_few_bytes_each() {
        let page = 9;
        let records: Vec<(MessageId, MessageMeta)> = (0..256u32)
            .map(|index| {
                let id = MessageId((page << PAGE_ID_BITS) + u64::from(index));
                let meta = MessageMeta {
                    enqueued_at_ms: 1_700_000_000_000 + u64::from(index / 100),
                    updated_at_ms: 1_700_000_001_250 + u64::from(index),
                    leased_at_ms: 1_700_000_001_200 + u64::from(index),
                    attempt_count: 1,
                    event_seq: 0,
                    content: ContentLocation::Log {
                        segment: 4,
                        offset: 1000 + index * 300,
                        len: 290,
                    },
                    ..meta(MessageState::Delivered)
                };
                (id, meta)
            })
            .collect();
        let bytes = encode_page(page, &records);
        assert_eq!(decode_page(page, &bytes).unwrap(), records);
        assert!(bytes.len() <= 256 * 16, "{} bytes for 256 records", bytes.len());
    }

    #[test]
    fn manifests_and_queue_records_round_trip() {
        let manifest = Manifest {
            epoch: 42,
            position: WalPosition { segment_seq: 3, offset: 65_536 },
            next_id: 1_000_001,
            terminal_counts: vec![TerminalCounts { dead: 2, delivered: 900 }; 3],
            segments: vec![(
                3,
                SegmentUsage { live_count: 5, live_bytes: 1500, id_low: 7, id_high: 999 },
            )],
        };
        assert_eq!(decode_manifest(&encode_manifest(&manifest)).unwrap(), manifest);
        let record = QueueRecord {
            name: "emails".into(),
            paused: true,
            settings: crate::queue::QueueSettings {
                backoff_jitter: Some(0.25),
                retention_ms: Some(0),
                ..Default::default()
            },
        };
        assert_eq!(decode_queue(&encode_queue(&record)).unwrap(), record);
        let mut damaged = encode_manifest(&manifest);
        damaged[3] ^= 1;
        assert!(decode_manifest(&damaged).is_err());
    }
}
