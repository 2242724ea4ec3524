//! A log frame's payload: the message contents it carries, then the ops of one request.
//!
//! | bytes | field                                                                   |
//! |-------|-------------------------------------------------------------------------|
//! | 1     | payload version (`FRAME_VERSION`)                                       |
//! | v     | content count, varint                                                   |
//! |       | per content: its length (varint), then the content (see `content.rs`)   |
//! | v     | op count, varint                                                        |
//! |       | per op: a tag byte, then its fields (below)                             |
//!
//! Contents come first so that the storage thread can copy each request body straight into the
//! log's buffer and know where it will be on disk before the broker decides anything; the ops then
//! use them in order (an enqueue takes one per message, an edit with a new body takes one, a
//! content move takes one per message it moves). A
//! message's [`ContentLocation`] is the segment, the byte offset of its content in the segment file,
//! and the content's length: exactly what a lease needs to read it back.
//!
//! Integers are LEB128 varints; ids after the first of a list are zigzag deltas from the previous
//! one; times after the op's `at_ms` are deltas from it. So a lease or an ack of 100 consecutive
//! messages costs about one byte per message.

use super::varint::{put_bytes, put_i64, put_u64, Reader};
use super::CodecError;
use crate::queue::{
    Accepted, ContentLocation, EditFields, FailOutcome, Failed, HistoryKind, MessageId, Op,
    QueueId, QueueSettings,
};

/// The frame payload's version (1 was the bincode change list of the first storage format).
pub const FRAME_VERSION: u8 = 2;

const TAG_CREATE_QUEUE: u8 = 0;
const TAG_PAUSE_QUEUE: u8 = 1;
const TAG_CONFIGURE_QUEUE: u8 = 2;
const TAG_ENQUEUE: u8 = 3;
const TAG_LEASE: u8 = 4;
const TAG_EXTEND: u8 = 5;
const TAG_ACK: u8 = 6;
const TAG_FAIL: u8 = 7;
const TAG_DUE: u8 = 8;
const TAG_REMOVE: u8 = 9;
const TAG_RETRY: u8 = 10;
const TAG_RESCHEDULE: u8 = 11;
const TAG_EDIT: u8 = 12;
const TAG_MOVE_CONTENT: u8 = 13;

/// Writes one frame payload into a buffer that will land at a known place in a segment.
pub struct FrameWriter {
    segment: u32,
    /// Byte offset in the segment file of the payload's first byte.
    payload_offset: u64,
    /// Index in the buffer of the payload's first byte.
    payload_start: usize,
    contents_left: usize,
}

impl FrameWriter {
    /// Starts a payload at the end of `out`; it will be at byte `payload_offset` of segment
    /// `segment`, and `content_count` contents follow.
    pub fn begin(
        out: &mut Vec<u8>,
        segment: u32,
        payload_offset: u64,
        content_count: usize,
    ) -> FrameWriter {
        let payload_start = out.len();
        out.push(FRAME_VERSION);
        put_u64(out, content_count as u64);
        FrameWriter { segment, payload_offset, payload_start, contents_left: content_count }
    }

    /// Appends one content and returns where it will be on disk.
    ///
    /// Panics beyond the announced number of contents, or when the content would end beyond 4 GiB
    /// into the segment (the storage thread starts a new segment long before).
    pub fn content(&mut self, out: &mut Vec<u8>, content: &[u8]) -> ContentLocation {
        assert!(self.contents_left > 0, "more contents than announced");
        self.contents_left -= 1;
        put_u64(out, content.len() as u64);
        let offset = self.payload_offset + (out.len() - self.payload_start) as u64;
        out.extend_from_slice(content);
        let offset = u32::try_from(offset).expect("segments stay below 4 GiB");
        let len = u32::try_from(content.len()).expect("contents are bounded by limits");
        assert!(offset.checked_add(len).is_some(), "segments stay below 4 GiB");
        ContentLocation::Log { segment: self.segment, offset, len }
    }

    /// Appends the ops and ends the payload.
    pub fn finish(self, out: &mut Vec<u8>, ops: &[Op]) {
        assert_eq!(self.contents_left, 0, "fewer contents than announced");
        put_u64(out, ops.len() as u64);
        for op in ops {
            encode_op(out, op);
        }
    }
}

fn put_ids(out: &mut Vec<u8>, ids: &[MessageId]) {
    put_u64(out, ids.len() as u64);
    let mut previous = 0u64;
    for (index, id) in ids.iter().enumerate() {
        if index == 0 {
            put_u64(out, id.0);
        } else {
            put_i64(out, id.0.wrapping_sub(previous) as i64);
        }
        previous = id.0;
    }
}

/// Appends a queue's settings: a presence bitmap, then each present value.
pub(super) fn put_settings(out: &mut Vec<u8>, settings: &QueueSettings) {
    let present = [
        settings.max_attempts.is_some(),
        settings.lease_ms.is_some(),
        settings.backoff_initial_ms.is_some(),
        settings.backoff_multiplier.is_some(),
        settings.backoff_max_ms.is_some(),
        settings.backoff_jitter.is_some(),
        settings.retention_ms.is_some(),
        settings.dead_retention_ms.is_some(),
    ];
    out.push(present.iter().enumerate().fold(0u8, |bits, (i, on)| bits | (u8::from(*on) << i)));
    let mut put_opt = |value: Option<u64>| {
        if let Some(value) = value {
            put_u64(out, value);
        }
    };
    put_opt(settings.max_attempts.map(u64::from));
    put_opt(settings.lease_ms);
    put_opt(settings.backoff_initial_ms);
    put_opt(settings.backoff_multiplier.map(f64::to_bits));
    put_opt(settings.backoff_max_ms);
    put_opt(settings.backoff_jitter.map(f64::to_bits));
    put_opt(settings.retention_ms);
    put_opt(settings.dead_retention_ms);
}

fn encode_op(out: &mut Vec<u8>, op: &Op) {
    match op {
        Op::CreateQueue { queue_id, name } => {
            out.push(TAG_CREATE_QUEUE);
            put_u64(out, u64::from(queue_id.0));
            put_bytes(out, name.as_bytes());
        }
        Op::PauseQueue { queue_id, paused } => {
            out.push(TAG_PAUSE_QUEUE);
            put_u64(out, u64::from(queue_id.0));
            out.push(u8::from(*paused));
        }
        Op::ConfigureQueue { queue_id, settings } => {
            out.push(TAG_CONFIGURE_QUEUE);
            put_u64(out, u64::from(queue_id.0));
            put_settings(out, settings);
        }
        Op::Enqueue { queue_id, first_id, at_ms, idempotency, messages } => {
            out.push(TAG_ENQUEUE);
            put_u64(out, u64::from(queue_id.0));
            put_u64(out, first_id.0);
            put_u64(out, *at_ms);
            match idempotency {
                Some((key, hash)) => {
                    out.push(1);
                    put_bytes(out, key.as_bytes());
                    out.extend_from_slice(&hash.to_le_bytes());
                }
                None => out.push(0),
            }
            put_u64(out, messages.len() as u64);
            for message in messages {
                put_i64(out, i64::from(message.priority));
                put_u64(out, u64::from(message.attempt_count_max));
                // 0: ready at once; else 1 + how long after `at_ms` it becomes ready.
                let due = if message.due_at_ms == 0 {
                    0
                } else {
                    message.due_at_ms.saturating_sub(*at_ms).saturating_add(1)
                };
                put_u64(out, due);
            }
        }
        Op::Lease { at_ms, deadline_ms, nonce_seed, ids } => {
            out.push(TAG_LEASE);
            put_u64(out, *at_ms);
            put_u64(out, deadline_ms.saturating_sub(*at_ms));
            out.extend_from_slice(&nonce_seed.to_le_bytes());
            put_ids(out, ids);
        }
        Op::Extend { at_ms, items } => {
            out.push(TAG_EXTEND);
            put_u64(out, *at_ms);
            let ids: Vec<MessageId> = items.iter().map(|(id, _)| *id).collect();
            put_ids(out, &ids);
            for (_, deadline_ms) in items {
                put_u64(out, deadline_ms.saturating_sub(*at_ms));
            }
        }
        Op::Ack { at_ms, ids } => {
            out.push(TAG_ACK);
            put_u64(out, *at_ms);
            put_ids(out, ids);
        }
        Op::Fail { at_ms, items } => {
            out.push(TAG_FAIL);
            put_u64(out, *at_ms);
            let ids: Vec<MessageId> = items.iter().map(|item| item.id).collect();
            put_ids(out, &ids);
            for item in items {
                out.push(match item.kind {
                    HistoryKind::LeaseExpired => 1,
                    _ => 0,
                });
                put_bytes(out, item.error.as_bytes());
                match item.outcome {
                    FailOutcome::Dead => put_u64(out, 0),
                    FailOutcome::Retrying { next_attempt_at_ms } => {
                        put_u64(out, next_attempt_at_ms.saturating_sub(*at_ms).saturating_add(1));
                    }
                }
            }
        }
        Op::Due { at_ms, ids } | Op::Remove { at_ms, ids } | Op::Retry { at_ms, ids, .. } => {
            out.push(match op {
                Op::Due { .. } => TAG_DUE,
                Op::Remove { .. } => TAG_REMOVE,
                _ => TAG_RETRY,
            });
            put_u64(out, *at_ms);
            if let Op::Retry { reset_attempts, .. } = op {
                out.push(u8::from(*reset_attempts));
            }
            put_ids(out, ids);
        }
        Op::Reschedule { at_ms, id, deliver_at_ms } => {
            out.push(TAG_RESCHEDULE);
            put_u64(out, *at_ms);
            put_u64(out, id.0);
            put_u64(out, *deliver_at_ms);
        }
        Op::Edit { at_ms, id, fields, priority, content, deliver_at_ms } => {
            out.push(TAG_EDIT);
            put_u64(out, *at_ms);
            put_u64(out, id.0);
            out.push(fields.0);
            let present = u8::from(priority.is_some())
                | (u8::from(content.is_some()) << 1)
                | (u8::from(deliver_at_ms.is_some()) << 2);
            out.push(present);
            if let Some(priority) = priority {
                put_i64(out, i64::from(*priority));
            }
            if let Some(deliver_at_ms) = deliver_at_ms {
                put_u64(out, *deliver_at_ms);
            }
        }
        Op::MoveContent { items } => {
            // The contents are in the frame, in order: the locations are implied.
            out.push(TAG_MOVE_CONTENT);
            let ids: Vec<MessageId> = items.iter().map(|(id, _)| *id).collect();
            put_ids(out, &ids);
        }
    }
}

/// Decodes a frame payload that sits at byte `payload_offset` of segment `segment`: its ops, with
/// the locations of the contents they use.
pub fn decode_frame(
    payload: &[u8],
    segment: u32,
    payload_offset: u64,
) -> Result<Vec<Op>, CodecError> {
    let mut reader = Reader::new(payload);
    let fail = CodecError::layout("log frame");
    let version = reader.u8().map_err(&fail)?;
    if version != FRAME_VERSION {
        return Err(CodecError::Version { found: version, expected: FRAME_VERSION });
    }
    let content_count = reader.u64().map_err(&fail)?;
    if content_count > reader.remaining() as u64 {
        return Err(CodecError::Layout { offset: 1, what: "content count" });
    }
    let mut contents = Vec::with_capacity(content_count as usize);
    for _ in 0..content_count {
        let content = reader.bytes().map_err(&fail)?;
        let offset = payload_offset + (reader.offset() - content.len()) as u64;
        let location = u32::try_from(offset)
            .ok()
            .filter(|offset| offset.checked_add(content.len() as u32).is_some())
            .map(|offset| ContentLocation::Log { segment, offset, len: content.len() as u32 })
            .ok_or(CodecError::Layout { offset: reader.offset(), what: "content offset" })?;
        contents.push(location);
    }
    let mut contents = contents.into_iter();
    let op_count = reader.u64().map_err(&fail)?;
    if op_count > reader.remaining() as u64 {
        return Err(CodecError::Layout { offset: reader.offset(), what: "op count" });
    }
    let mut ops = Vec::with_capacity(op_count as usize);
    for _ in 0..op_count {
        ops.push(decode_op(&mut reader, &mut contents)?);
    }
    if !reader.is_empty() || contents.next().is_some() {
        return Err(CodecError::Layout { offset: reader.offset(), what: "frame end" });
    }
    Ok(ops)
}

/// A count that cannot exceed the bytes left (each item takes at least one byte).
fn count(reader: &mut Reader<'_>) -> Result<usize, CodecError> {
    let offset = reader.offset();
    let count = reader.u64().map_err(CodecError::layout("count"))?;
    if count > reader.remaining() as u64 {
        return Err(CodecError::Layout { offset, what: "count beyond the frame" });
    }
    Ok(count as usize)
}

fn get_ids(reader: &mut Reader<'_>) -> Result<Vec<MessageId>, CodecError> {
    let fail = CodecError::layout("id list");
    let count = count(reader)?;
    let mut ids = Vec::with_capacity(count);
    let mut previous = 0u64;
    for index in 0..count {
        let id = if index == 0 {
            reader.u64().map_err(&fail)?
        } else {
            previous.wrapping_add(reader.i64().map_err(&fail)? as u64)
        };
        ids.push(MessageId(id));
        previous = id;
    }
    Ok(ids)
}

/// Reads a queue's settings written by [`put_settings`].
pub(super) fn get_settings(reader: &mut Reader<'_>) -> Result<QueueSettings, CodecError> {
    let fail = CodecError::layout("queue settings");
    let present = reader.u8().map_err(&fail)?;
    let mut values = [None; 8];
    for (bit, value) in values.iter_mut().enumerate() {
        if present & (1 << bit) != 0 {
            *value = Some(reader.u64().map_err(&fail)?);
        }
    }
    let float = |value: Option<u64>| value.map(f64::from_bits);
    let max_attempts =
        match values[0] {
            Some(value) => Some(u32::try_from(value).map_err(|_| CodecError::Layout {
                offset: reader.offset(),
                what: "max attempts",
            })?),
            None => None,
        };
    Ok(QueueSettings {
        max_attempts,
        lease_ms: values[1],
        backoff_initial_ms: values[2],
        backoff_multiplier: float(values[3]),
        backoff_max_ms: values[4],
        backoff_jitter: float(values[5]),
        retention_ms: values[6],
        dead_retention_ms: values[7],
    })
}

fn next_content(
    contents: &mut impl Iterator<Item = ContentLocation>,
    offset: usize,
) -> Result<ContentLocation, CodecError> {
    contents.next().ok_or(CodecError::Layout { offset, what: "op uses more contents than sent" })
}

fn decode_op(
    reader: &mut Reader<'_>,
    contents: &mut impl Iterator<Item = ContentLocation>,
) -> Result<Op, CodecError> {
    let fail = CodecError::layout("op");
    let tag_offset = reader.offset();
    let op = match reader.u8().map_err(&fail)? {
        TAG_CREATE_QUEUE => Op::CreateQueue {
            queue_id: QueueId(reader.u32().map_err(&fail)?),
            name: reader.str().map_err(&fail)?.to_string(),
        },
        TAG_PAUSE_QUEUE => Op::PauseQueue {
            queue_id: QueueId(reader.u32().map_err(&fail)?),
            paused: reader.u8().map_err(&fail)? != 0,
        },
        TAG_CONFIGURE_QUEUE => Op::ConfigureQueue {
            queue_id: QueueId(reader.u32().map_err(&fail)?),
            settings: get_settings(reader)?,
        },
        TAG_ENQUEUE => {
            let queue_id = QueueId(reader.u32().map_err(&fail)?);
            let first_id = MessageId(reader.u64().map_err(&fail)?);
            let at_ms = reader.u64().map_err(&fail)?;
            let idempotency = match reader.u8().map_err(&fail)? {
                0 => None,
                _ => {
                    let key = reader.str().map_err(&fail)?.to_string();
                    Some((key, reader.u64_le().map_err(&fail)?))
                }
            };
            let message_count = count(reader)?;
            let mut messages = Vec::with_capacity(message_count);
            for _ in 0..message_count {
                let priority = reader.i32().map_err(&fail)?;
                let attempt_count_max = reader.u32().map_err(&fail)?;
                let due = reader.u64().map_err(&fail)?;
                let due_at_ms = if due == 0 { 0 } else { at_ms.saturating_add(due - 1) };
                let content = next_content(contents, reader.offset())?;
                messages.push(Accepted { priority, attempt_count_max, due_at_ms, content });
            }
            if messages.is_empty() || first_id.0.checked_add(messages.len() as u64).is_none() {
                return Err(CodecError::Layout { offset: tag_offset, what: "enqueue ids" });
            }
            Op::Enqueue { queue_id, first_id, at_ms, idempotency, messages }
        }
        TAG_LEASE => {
            let at_ms = reader.u64().map_err(&fail)?;
            let deadline_ms = at_ms.saturating_add(reader.u64().map_err(&fail)?);
            let nonce_seed = reader.u64_le().map_err(&fail)?;
            Op::Lease { at_ms, deadline_ms, nonce_seed, ids: get_ids(reader)? }
        }
        TAG_EXTEND => {
            let at_ms = reader.u64().map_err(&fail)?;
            let ids = get_ids(reader)?;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                items.push((id, at_ms.saturating_add(reader.u64().map_err(&fail)?)));
            }
            Op::Extend { at_ms, items }
        }
        TAG_ACK => Op::Ack { at_ms: reader.u64().map_err(&fail)?, ids: get_ids(reader)? },
        TAG_FAIL => {
            let at_ms = reader.u64().map_err(&fail)?;
            let ids = get_ids(reader)?;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                let kind = match reader.u8().map_err(&fail)? {
                    0 => HistoryKind::Nacked,
                    1 => HistoryKind::LeaseExpired,
                    _ => return Err(CodecError::Layout { offset: reader.offset(), what: "kind" }),
                };
                let error = reader.str().map_err(&fail)?.to_string();
                let outcome = match reader.u64().map_err(&fail)? {
                    0 => FailOutcome::Dead,
                    delta => FailOutcome::Retrying {
                        next_attempt_at_ms: at_ms.saturating_add(delta - 1),
                    },
                };
                items.push(Failed { id, kind, error, outcome });
            }
            Op::Fail { at_ms, items }
        }
        TAG_DUE => Op::Due { at_ms: reader.u64().map_err(&fail)?, ids: get_ids(reader)? },
        TAG_REMOVE => Op::Remove { at_ms: reader.u64().map_err(&fail)?, ids: get_ids(reader)? },
        TAG_RETRY => Op::Retry {
            at_ms: reader.u64().map_err(&fail)?,
            reset_attempts: reader.u8().map_err(&fail)? != 0,
            ids: get_ids(reader)?,
        },
        TAG_RESCHEDULE => Op::Reschedule {
            at_ms: reader.u64().map_err(&fail)?,
            id: MessageId(reader.u64().map_err(&fail)?),
            deliver_at_ms: reader.u64().map_err(&fail)?,
        },
        TAG_EDIT => {
            let at_ms = reader.u64().map_err(&fail)?;
            let id = MessageId(reader.u64().map_err(&fail)?);
            let fields = EditFields(reader.u8().map_err(&fail)?);
            let present = reader.u8().map_err(&fail)?;
            let priority = if present & 1 != 0 { Some(reader.i32().map_err(&fail)?) } else { None };
            let deliver_at_ms =
                if present & 4 != 0 { Some(reader.u64().map_err(&fail)?) } else { None };
            let content = if present & 2 != 0 {
                Some(next_content(contents, reader.offset())?)
            } else {
                None
            };
            Op::Edit { at_ms, id, fields, priority, content, deliver_at_ms }
        }
        TAG_MOVE_CONTENT => {
            let ids = get_ids(reader)?;
            let mut items = Vec::with_capacity(ids.len());
            for id in ids {
                items.push((id, next_content(contents, reader.offset())?));
            }
            Op::MoveContent { items }
        }
        _ => return Err(CodecError::Layout { offset: tag_offset, what: "op tag" }),
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ops(contents: &[ContentLocation]) -> Vec<Op> {
        let settings = QueueSettings {
            max_attempts: Some(3),
            backoff_multiplier: Some(1.5),
            dead_retention_ms: Some(0),
            ..QueueSettings::default()
        };
        vec![
            Op::CreateQueue { queue_id: QueueId(2), name: "emails".into() },
            Op::ConfigureQueue { queue_id: QueueId(2), settings },
            Op::PauseQueue { queue_id: QueueId(2), paused: true },
            Op::Enqueue {
                queue_id: QueueId(2),
                first_id: MessageId(1000),
                at_ms: 1_700_000_000_000,
                idempotency: Some(("signup-1".into(), 0xfeed_beef_dead_0001)),
                messages: vec![
                    Accepted {
                        priority: -3,
                        attempt_count_max: 10,
                        due_at_ms: 0,
                        content: contents[0],
                    },
                    Accepted {
                        priority: 7,
                        attempt_count_max: 1,
                        due_at_ms: 1_700_000_005_000,
                        content: contents[1],
                    },
                ],
            },
            Op::Lease {
                at_ms: 1_700_000_000_010,
                deadline_ms: 1_700_000_030_010,
                nonce_seed: u64::MAX,
                ids: vec![MessageId(1001), MessageId(1000), MessageId(5)],
            },
            Op::Extend { at_ms: 7, items: vec![(MessageId(9), 70), (MessageId(3), 7)] },
            Op::Ack { at_ms: 8, ids: vec![MessageId(u64::MAX), MessageId(0)] },
            Op::Fail {
                at_ms: 9,
                items: vec![
                    Failed {
                        id: MessageId(4),
                        kind: HistoryKind::Nacked,
                        error: "SMTP 451 désolé".into(),
                        outcome: FailOutcome::Retrying { next_attempt_at_ms: 9 },
                    },
                    Failed {
                        id: MessageId(5),
                        kind: HistoryKind::LeaseExpired,
                        error: String::new(),
                        outcome: FailOutcome::Dead,
                    },
                ],
            },
            Op::Due { at_ms: 10, ids: vec![MessageId(1)] },
            Op::Remove { at_ms: 11, ids: vec![] },
            Op::Retry { at_ms: 12, reset_attempts: true, ids: vec![MessageId(2), MessageId(3)] },
            Op::Reschedule { at_ms: 13, id: MessageId(6), deliver_at_ms: 1 },
            Op::Edit {
                at_ms: 14,
                id: MessageId(7),
                fields: EditFields(EditFields::BODY | EditFields::PRIORITY),
                priority: Some(i32::MIN),
                content: Some(contents[2]),
                deliver_at_ms: Some(u64::MAX),
            },
            Op::MoveContent {
                items: vec![(MessageId(8), contents[3]), (MessageId(9), contents[4])],
            },
        ]
    }

    #[test]
    fn every_op_round_trips_with_its_content_locations() {
        let payload_offset = 4096;
        let mut out = vec![0xaa; 10];
        let mut writer = FrameWriter::begin(&mut out, 7, payload_offset, 5);
        let bodies: [&[u8]; 5] = [b"first", b"", b"third content", b"moved", b"m2"];
        let contents: Vec<ContentLocation> =
            bodies.iter().map(|body| writer.content(&mut out, body)).collect();
        let ops = sample_ops(&contents);
        writer.finish(&mut out, &ops);
        let payload = &out[10..];
        assert_eq!(decode_frame(payload, 7, payload_offset).unwrap(), ops);
        // Each location points at its content's bytes, as the segment file will hold them.
        for (location, body) in contents.iter().zip(bodies) {
            let ContentLocation::Log { segment, offset, len } = *location else { panic!() };
            assert_eq!(segment, 7);
            let start = offset as usize - payload_offset as usize;
            assert_eq!(&payload[start..start + len as usize], body);
        }
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let mut out = Vec::new();
        let mut writer = FrameWriter::begin(&mut out, 0, 16, 5);
        let contents: Vec<ContentLocation> =
            (0..5).map(|_| writer.content(&mut out, b"body")).collect();
        writer.finish(&mut out, &sample_ops(&contents));
        for length in 0..out.len() {
            assert!(decode_frame(&out[..length], 0, 16).is_err(), "prefix of {length} bytes");
        }
        for index in 0..out.len() {
            let mut damaged = out.clone();
            damaged[index] ^= 0xff;
            let _ = decode_frame(&damaged, 0, 16);
        }
        assert!(decode_frame(&[FRAME_VERSION + 1, 0, 0], 0, 16).is_err());
        // An op that uses a content the frame does not carry.
        let mut out = Vec::new();
        FrameWriter::begin(&mut out, 0, 16, 0)
            .finish(&mut out, &sample_ops(&[ContentLocation::Catalog { len: 0 }; 5])[3..4]);
        assert!(decode_frame(&out, 0, 16).is_err());
    }
}
