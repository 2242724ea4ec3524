//! Response bodies that embed stored bytes: written by hand so that a message body goes from its
//! store record into the response without being parsed or re-encoded.

use crate::queue::{BodyKind, History, LeaseToken, MessageId, MessageMeta, MessageState};
use crate::store::codec::ContentView;
use base64::Engine;
use std::io::Write;

/// Appends `text` as a JSON string (quoted and escaped).
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *out, text).expect("writing a string into a Vec cannot fail");
}

/// Appends `"key":` to an object being written.
fn write_key(out: &mut Vec<u8>, key: &str) {
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

fn write_u64(out: &mut Vec<u8>, key: &str, value: u64) {
    write_key(out, key);
    let _ = write!(out, "{value}");
    out.push(b',');
}

/// Appends the headers object and the body field (`body` or `body_base64`) of a message.
pub fn write_content(out: &mut Vec<u8>, content: &ContentView<'_>) {
    write_key(out, "headers");
    out.push(b'{');
    for (index, (name, value)) in content.headers.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_str(out, value);
    }
    out.extend_from_slice(b"},");
    match content.body_kind {
        BodyKind::Json => {
            write_key(out, "body");
            out.extend_from_slice(content.body);
        }
        BodyKind::Bytes => {
            write_key(out, "body_base64");
            out.push(b'"');
            let encoded = base64::engine::general_purpose::STANDARD.encode(content.body);
            out.extend_from_slice(encoded.as_bytes());
            out.push(b'"');
        }
    }
}

/// Appends one leased message of a lease response.
pub fn write_grant(
    out: &mut Vec<u8>,
    id: MessageId,
    lease: LeaseToken,
    meta: &MessageMeta,
    content: &ContentView<'_>,
) {
    out.push(b'{');
    // Ids and tokens are hex digits: written in place, nothing to escape.
    write_key(out, "id");
    let _ = write!(out, "\"{id}\",");
    write_key(out, "lease");
    let _ = write!(out, "\"{lease}\",");
    write_u64(out, "attempt", u64::from(meta.attempt_count));
    write_u64(out, "lease_expires_at", meta.due_at_ms);
    write_u64(out, "enqueued_at", meta.enqueued_at_ms);
    write_key(out, "priority");
    let _ = write!(out, "{},", meta.priority);
    write_content(out, content);
    out.push(b'}');
}

/// Appends the fields every view of a message shares (no body, no history), without braces.
fn write_summary_fields(out: &mut Vec<u8>, id: MessageId, queue: &str, meta: &MessageMeta) {
    write_key(out, "id");
    write_str(out, &id.to_string());
    out.push(b',');
    write_key(out, "queue");
    write_str(out, queue);
    out.push(b',');
    write_key(out, "state");
    write_str(out, meta.state.name());
    out.push(b',');
    write_key(out, "priority");
    let _ = write!(out, "{},", meta.priority);
    write_u64(out, "attempts", u64::from(meta.attempt_count));
    write_u64(out, "max_attempts", u64::from(meta.attempt_count_max));
    write_u64(out, "enqueued_at", meta.enqueued_at_ms);
    write_u64(out, "updated_at", meta.updated_at_ms);
    let waiting = matches!(meta.state, MessageState::Scheduled | MessageState::Retrying);
    write_optional(out, "deliver_at", waiting.then_some(meta.due_at_ms));
    let leased = meta.state == MessageState::Leased;
    write_optional(out, "lease_expires_at", leased.then_some(meta.due_at_ms));
}

/// Appends `"last_error": {...}|null` from a history.
fn write_last_error(out: &mut Vec<u8>, history: &History) {
    write_key(out, "last_error");
    match history.last_failure() {
        Some(event) => {
            let value = serde_json::json!({
                "message": event.detail, "at": event.at_ms, "attempt": event.attempt,
                "kind": event.kind.name(),
            });
            serde_json::to_writer(&mut *out, &value).expect("writing into a Vec cannot fail");
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// One entry of a listing: the summary, the last error, and optionally the headers.
pub fn message_summary(
    out: &mut Vec<u8>,
    id: MessageId,
    queue: &str,
    meta: &MessageMeta,
    history: &History,
) {
    out.push(b'{');
    write_summary_fields(out, id, queue, meta);
    write_last_error(out, history);
    out.push(b'}');
}

/// The attempt log: the recorded events, with the ordinary ones (enqueue, each delivery, the ack)
/// filled in from the scheduling record.
pub fn history_entries(meta: &MessageMeta, history: &History) -> Vec<serde_json::Value> {
    use serde_json::json;
    let mut entries = vec![json!({"event": "enqueued", "at": meta.enqueued_at_ms})];
    for event in &history.events {
        if event.kind.is_failure() {
            entries.push(
                json!({"event": "leased", "at": event.leased_at_ms, "attempt": event.attempt}),
            );
            entries.push(json!({
                "event": event.kind.name(), "at": event.at_ms, "attempt": event.attempt,
                "error": event.detail, "dead": event.dead,
            }));
        } else {
            entries.push(json!({
                "event": event.kind.name(), "at": event.at_ms, "attempt": event.attempt,
                "detail": event.detail,
            }));
        }
    }
    if matches!(meta.state, MessageState::Leased | MessageState::Delivered) {
        let attempt = meta.attempt_count;
        entries.push(json!({"event": "leased", "at": meta.leased_at_ms, "attempt": attempt}));
    }
    if meta.state == MessageState::Delivered {
        entries.push(
            json!({"event": "acked", "at": meta.updated_at_ms, "attempt": meta.attempt_count}),
        );
    }
    entries
}

/// Writes the full view of one message for `GET /v1/messages/{id}`.
pub fn message_view(
    id: MessageId,
    queue: &str,
    meta: &MessageMeta,
    history: &History,
    content: &ContentView<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + content.body.len());
    out.push(b'{');
    write_summary_fields(&mut out, id, queue, meta);
    write_last_error(&mut out, history);
    out.push(b',');
    write_key(&mut out, "history");
    let entries = history_entries(meta, history);
    serde_json::to_writer(&mut out, &entries).expect("writing into a Vec cannot fail");
    out.push(b',');
    let dropped = history.events.first().map_or(meta.event_seq, |event| event.seq);
    write_u64(&mut out, "history_dropped", u64::from(dropped));
    write_content(&mut out, content);
    out.push(b'}');
    out
}

fn write_optional(out: &mut Vec<u8>, key: &str, value: Option<u64>) {
    match value {
        Some(value) => write_u64(out, key, value),
        None => {
            write_key(out, key);
            out.extend_from_slice(b"null,");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{MessageState, QueueId};

    #[test]
    fn views_are_valid_json_with_the_body_verbatim() {
        let meta = MessageMeta {
            queue_id: QueueId(0),
            state: MessageState::Leased,
            priority: -2,
            attempt_count: 1,
            attempt_count_max: 10,
            enqueued_at_ms: 5,
            updated_at_ms: 6,
            due_at_ms: 7,
            lease_nonce: 9,
            leased_at_ms: 6,
            event_seq: 1,
            content: crate::queue::ContentLocation::Catalog { len: 0 },
        };
        let content = ContentView {
            headers: vec![("k\"", "v\n")],
            body_kind: BodyKind::Json,
            body: br#"{"a": [1, 2.50]}"#,
        };
        let history = History {
            events: vec![crate::queue::HistoryEvent {
                seq: 0,
                kind: crate::queue::HistoryKind::Nacked,
                at_ms: 1,
                attempt: 1,
                leased_at_ms: 0,
                detail: "boom".into(),
                dead: false,
            }],
        };
        let view = message_view(MessageId(1), "q", &meta, &history, &content);
        let value: serde_json::Value = serde_json::from_slice(&view).unwrap();
        assert_eq!(value["state"], "leased");
        assert_eq!(value["lease_expires_at"], 7);
        assert_eq!(value["deliver_at"], serde_json::Value::Null);
        assert_eq!(value["headers"]["k\""], "v\n");
        assert_eq!(value["last_error"]["message"], "boom");
        let events: Vec<&str> = value["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(events, vec!["enqueued", "leased", "nacked", "leased"]);
        assert_eq!(value["history_dropped"], 0);
        let text = String::from_utf8(view).unwrap();
        assert!(text.contains(r#""body":{"a": [1, 2.50]}"#), "{text}");

        let bytes = ContentView { body_kind: BodyKind::Bytes, body: &[0, 255], ..content };
        let mut out = Vec::new();
        let lease = LeaseToken { id: MessageId(1), nonce: 0xabc };
        write_grant(&mut out, MessageId(1), lease, &meta, &bytes);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["id"], "0000000000000001");
        assert_eq!(value["lease"], "00000000000000010000000000000abc");
        assert_eq!(value["body_base64"], "AP8=");
        assert_eq!(value["attempt"], 1);
        assert_eq!(value["priority"], -2);
    }
}
