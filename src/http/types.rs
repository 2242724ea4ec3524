//! Request bodies: JSON shapes, parsing and validation into broker inputs.
//!
//! Every request type rejects unknown fields, so that a misspelt field is an error rather than a
//! silently ignored setting. Parsing borrows from the request bytes: a message body goes from the
//! socket buffer into its encoded content with one copy, and from there into the log with one more.

use super::error::{ApiError, Detail};
use crate::engine::IncomingMessage;
use crate::limits::*;
use crate::queue::{BodyKind, Delivery, ExtendItem, LeaseToken, NackItem};
use crate::store::codec::{encode_content, ContentRef};
use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Limits that apply to requests, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub request_bytes_max: u64,
    pub message_bytes_max: u64,
    pub batch_count_max: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueRequest<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageInput<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(default)]
    body_base64: Option<String>,
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    deliver_at: Option<DeliverAt>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

/// A body of JSON `null` is a body, not a missing one.
pub fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A delivery time as given: epoch milliseconds or an RFC 3339 text.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum DeliverAt {
    EpochMs(u64),
    Text(String),
}

/// Parses any request body, mapping syntax errors to `invalid_json` and shape errors to
/// `invalid_request` with the field's path.
///
/// Every request body is a JSON object. serde's derived structs would also take an array of the
/// fields in order, so anything that does not start with `{` is refused here.
pub fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|error| ApiError::invalid_json(format!("the body is not UTF-8: {error}")))?;
    require_object(text, "the request body")?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(shape_error)?;
    deserializer.end().map_err(|error| ApiError::invalid_json(error.to_string()))?;
    Ok(value)
}

/// Refuses JSON text that is not an object (after leading white space).
fn require_object(text: &str, what: &str) -> Result<(), ApiError> {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => Ok(()),
        None => Err(ApiError::invalid_json(format!("{what} is empty"))),
        Some(_) => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Err(ApiError::invalid_request(format!("{what} must be a JSON object"))),
            Err(error) => Err(ApiError::invalid_json(format!("malformed JSON: {error}"))),
        },
    }
}

/// Parses a nested object item (such as `items[3]`), naming it in errors.
pub fn parse_item<'a, T: Deserialize<'a>>(raw: &'a RawValue, path: &str) -> Result<T, ApiError> {
    require_object(raw.get(), &format!("field {path}"))?;
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let inner_path = error.path().to_string();
        let inner = error.into_inner();
        if inner_path == "." {
            ApiError::invalid_request(format!("field {path}: {inner}"))
        } else {
            ApiError::invalid_request(format!("field {path}.{inner_path}: {inner}"))
        }
    })
}

fn shape_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid_json(format!("malformed JSON: {inner}"));
    }
    if path == "." {
        ApiError::invalid_request(format!("{inner}"))
    } else {
        ApiError::invalid_request(format!("field {path}: {inner}"))
    }
}

/// Parses and validates an enqueue body into broker messages: all valid, or every fault listed.
pub fn parse_enqueue(
    bytes: &[u8],
    limits: &RequestLimits,
    now_ms: u64,
) -> Result<Vec<IncomingMessage>, ApiError> {
    let request: EnqueueRequest = parse(bytes)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid_request("field messages: the batch is empty".into()));
    }
    if request.messages.len() > limits.batch_count_max as usize {
        return Err(ApiError::batch_too_large(request.messages.len(), limits.batch_count_max));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    let mut details = Vec::new();
    let mut too_large = false;
    for (index, raw) in request.messages.iter().enumerate() {
        match parse_message(raw, limits, now_ms) {
            Ok(message) => messages.push(message),
            Err(fault) => {
                too_large |= fault.too_large;
                details.push(Detail {
                    index: Some(index),
                    field: fault.field,
                    message: fault.message,
                });
            }
        }
    }
    if details.is_empty() {
        Ok(messages)
    } else {
        Err(ApiError::invalid_batch(details, too_large))
    }
}

/// Why one message of a batch is invalid.
struct Fault {
    field: String,
    message: String,
    too_large: bool,
}

fn fault(field: &str, message: impl Into<String>) -> Fault {
    Fault { field: field.to_string(), message: message.into(), too_large: false }
}

fn parse_message(
    raw: &RawValue,
    limits: &RequestLimits,
    now_ms: u64,
) -> Result<IncomingMessage, Fault> {
    if !raw.get().starts_with('{') {
        return Err(fault("", "a message must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let input: MessageInput =
        serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let field = error.path().to_string();
            let field = if field == "." { String::new() } else { field };
            Fault { field, message: error.into_inner().to_string(), too_large: false }
        })?;
    let decoded;
    let (body_kind, body): (BodyKind, &[u8]) = match (&input.body, &input.body_base64) {
        (Some(raw), None) => (BodyKind::Json, raw.get().as_bytes()),
        (None, Some(text)) => {
            decoded = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|error| fault("body_base64", format!("not valid base64: {error}")))?;
            (BodyKind::Bytes, &decoded)
        }
        (Some(_), Some(_)) => return Err(fault("body", "give body or body_base64, not both")),
        (None, None) => return Err(fault("body", "missing: give body or body_base64")),
    };
    let headers = validate_headers(input.headers)?;
    let header_bytes: usize = headers.iter().map(|(name, value)| name.len() + value.len()).sum();
    let size_bytes = (body.len() + header_bytes) as u64;
    if size_bytes > limits.message_bytes_max {
        let message = format!(
            "the message is {size_bytes} bytes (body and headers); at most {} are allowed",
            limits.message_bytes_max
        );
        return Err(Fault { field: "body".into(), message, too_large: true });
    }
    let delivery = validate_delivery(input.delay_ms, input.deliver_at, now_ms)?;
    let attempt_count_max = match input.max_attempts {
        Some(count) if !(1..=ATTEMPT_COUNT_MAX).contains(&count) => {
            return Err(fault("max_attempts", format!("must be 1 to {ATTEMPT_COUNT_MAX}")));
        }
        other => other,
    };
    let content = ContentRef { headers: &headers, body_kind, body };
    Ok(IncomingMessage {
        content: encode_content(&content),
        priority: input.priority.unwrap_or(0),
        attempt_count_max,
        delivery,
    })
}

fn validate_headers(
    headers: Option<std::collections::BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, Fault> {
    let headers: Vec<(String, String)> = headers.unwrap_or_default().into_iter().collect();
    if headers.len() > HEADER_COUNT_MAX {
        return Err(fault("headers", format!("at most {HEADER_COUNT_MAX} headers are allowed")));
    }
    for (name, value) in &headers {
        if name.is_empty() || name.len() > HEADER_NAME_BYTES_MAX {
            let message = format!("header names must be 1 to {HEADER_NAME_BYTES_MAX} bytes");
            return Err(fault("headers", message));
        }
        if value.len() > HEADER_VALUE_BYTES_MAX {
            let message = format!("header values must be at most {HEADER_VALUE_BYTES_MAX} bytes");
            return Err(fault(&format!("headers.{name}"), message));
        }
    }
    Ok(headers)
}

fn validate_delivery(
    delay_ms: Option<u64>,
    deliver_at: Option<DeliverAt>,
    now_ms: u64,
) -> Result<Delivery, Fault> {
    let latest_ms = now_ms.saturating_add(DELAY_MS_MAX);
    match (delay_ms.unwrap_or(0), deliver_at) {
        (0, None) => Ok(Delivery::Now),
        (delay_ms, None) if delay_ms > DELAY_MS_MAX => {
            Err(fault("delay_ms", format!("must be at most {DELAY_MS_MAX} (ten years)")))
        }
        (delay_ms, None) => Ok(Delivery::After { delay_ms }),
        (0, Some(at)) => {
            let deliver_at_ms = match at {
                DeliverAt::EpochMs(ms) => ms,
                DeliverAt::Text(text) => parse_rfc3339_ms(&text).ok_or_else(|| {
                    fault("deliver_at", "not an RFC 3339 time such as 2026-01-31T09:00:00Z")
                })?,
            };
            if deliver_at_ms > latest_ms {
                return Err(fault("deliver_at", "must be at most ten years from now"));
            }
            Ok(Delivery::At { deliver_at_ms })
        }
        (_, Some(_)) => Err(fault("deliver_at", "give delay_ms or deliver_at, not both")),
    }
}

/// Decodes `body_base64`.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|error| {
        ApiError::invalid_request(format!("field body_base64: not valid base64: {error}"))
    })
}

/// Validates headers given to an edit.
pub fn check_headers(
    headers: std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ApiError> {
    validate_headers(Some(headers)).map_err(|fault| {
        ApiError::invalid_request(format!("field {}: {}", fault.field, fault.message))
    })
}

/// Checks an edited message against the size limit.
pub fn check_message_size(
    headers: &[(String, String)],
    body: &[u8],
    message_bytes_max: u64,
) -> Result<(), ApiError> {
    let header_bytes: usize = headers.iter().map(|(name, value)| name.len() + value.len()).sum();
    let size_bytes = (body.len() + header_bytes) as u64;
    if size_bytes > message_bytes_max {
        let detail = Detail {
            index: None,
            field: "body".into(),
            message: format!(
                "the message is {size_bytes} bytes; at most {message_bytes_max} are allowed"
            ),
        };
        return Err(ApiError::invalid_batch(vec![detail], true));
    }
    Ok(())
}

/// A delivery time for a reschedule or an edit, checked against the ten-year bound.
pub fn deliver_at_ms(at: DeliverAt, now_ms: u64) -> Result<u64, ApiError> {
    let deliver_at_ms = match at {
        DeliverAt::EpochMs(ms) => ms,
        DeliverAt::Text(text) => parse_rfc3339_ms(&text).ok_or_else(|| {
            ApiError::invalid_request(
                "field deliver_at: not an RFC 3339 time such as 2026-01-31T09:00:00Z".into(),
            )
        })?,
    };
    if deliver_at_ms > now_ms.saturating_add(DELAY_MS_MAX) {
        return Err(ApiError::invalid_request(
            "field deliver_at: must be at most ten years from now".into(),
        ));
    }
    Ok(deliver_at_ms)
}

/// Parses an RFC 3339 time into Unix epoch milliseconds.
///
/// humantime reads only UTC (`Z`) times, so a numeric offset (`+02:00`, `-05:30`) is taken off,
/// the local time is read as UTC, and the offset is subtracted.
///
/// RFC 3339 allows lowercase `t` and `z`; a time before 1970 is in the past, so it is read as 0
/// (deliver at once).
fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let text = text.to_ascii_uppercase();
    if let Some(year) = text.get(..4).and_then(|year| year.parse::<u32>().ok()) {
        if year < 1970 && text.as_bytes().get(4) == Some(&b'-') {
            // humantime reads no year before 1970: check the rest of the form in a leap year.
            let probe = format!("1972{}", &text[4..]);
            return parse_rfc3339_ms(&probe).map(|_| 0);
        }
    }
    let (local, offset_ms) = split_offset(&text)?;
    let time = humantime::parse_rfc3339_weak(&local).ok()?;
    let local_ms = match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(since_epoch) => i64::try_from(since_epoch.as_millis()).ok()?,
        Err(before_epoch) => -i64::try_from(before_epoch.duration().as_millis()).ok()?,
    };
    Some(u64::try_from(local_ms.checked_sub(offset_ms)?).unwrap_or(0))
}

/// Splits `2026-01-31T09:00:00+02:00` into (`2026-01-31T09:00:00Z`, +2 h in ms).
fn split_offset(text: &str) -> Option<(String, i64)> {
    if text.ends_with('Z') || text.ends_with('z') {
        return Some((text.to_string(), 0));
    }
    let split = text.len().checked_sub(6)?;
    let (local, offset) = text.split_at_checked(split)?;
    let bytes = offset.as_bytes();
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Some((text.to_string(), 0)),
    };
    if bytes[3] != b':' || !local.contains('T') && !local.contains('t') && !local.contains(' ') {
        return None;
    }
    let hours: i64 = offset.get(1..3)?.parse().ok()?;
    let minutes: i64 = offset.get(4..6)?.parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((format!("{local}Z"), sign * (hours * 60 + minutes) * 60_000))
}

/// A lease request; every field is optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    pub max: Option<u32>,
    pub lease_ms: Option<u64>,
    pub wait_ms: Option<u64>,
}

/// A validated lease request.
pub struct LeaseParams {
    pub count_max: u32,
    /// `None` takes the queue's default.
    pub lease_ms: Option<u64>,
    pub wait_ms: u64,
}

pub fn parse_lease(bytes: &[u8]) -> Result<LeaseParams, ApiError> {
    let request: LeaseRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        LeaseRequest::default()
    } else {
        parse(bytes)?
    };
    let count_max = request.max.unwrap_or(1);
    if !(1..=LEASE_COUNT_MAX).contains(&count_max) {
        let message = format!("field max: must be 1 to {LEASE_COUNT_MAX}, got {count_max}");
        return Err(ApiError::invalid_request(message));
    }
    let lease_ms = validate_lease_ms(request.lease_ms)?;
    let wait_ms = request.wait_ms.unwrap_or(0);
    if wait_ms > WAIT_MS_MAX {
        let message = format!("field wait_ms: must be 0 to {WAIT_MS_MAX}, got {wait_ms}");
        return Err(ApiError::invalid_request(message));
    }
    Ok(LeaseParams { count_max, lease_ms, wait_ms })
}

fn validate_lease_ms(lease_ms: Option<u64>) -> Result<Option<u64>, ApiError> {
    match lease_ms {
        Some(lease_ms) if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) => {
            let message =
                format!("field lease_ms: must be {LEASE_MS_MIN} to {LEASE_MS_MAX}, got {lease_ms}");
            Err(ApiError::invalid_request(message))
        }
        other => Ok(other),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    leases: Vec<String>,
}

/// Parses an ack body: the tokens as given (for the reply) and parsed (`None` if malformed).
pub fn parse_ack(bytes: &[u8]) -> Result<(Vec<String>, Vec<Option<LeaseToken>>), ApiError> {
    let request: AckRequest = parse(bytes)?;
    check_item_count("leases", request.leases.len())?;
    let tokens = request.leases.iter().map(|text| LeaseToken::parse(text)).collect();
    Ok((request.leases, tokens))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NackRequest<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NackInput {
    lease: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    dead: Option<bool>,
}

/// Parses a nack body into the tokens as given and the broker's items.
pub fn parse_nack(bytes: &[u8]) -> Result<(Vec<String>, Vec<NackItem>), ApiError> {
    let request: NackRequest = parse(bytes)?;
    check_item_count("items", request.items.len())?;
    let mut leases = Vec::with_capacity(request.items.len());
    let mut items = Vec::with_capacity(request.items.len());
    for (index, raw) in request.items.into_iter().enumerate() {
        let input: NackInput = parse_item(raw, &format!("items[{index}]"))?;
        if input.delay_ms.is_some_and(|delay_ms| delay_ms > DELAY_MS_MAX) {
            let message = format!("field items[{index}].delay_ms: must be at most {DELAY_MS_MAX}");
            return Err(ApiError::invalid_request(message));
        }
        let error = input.error.unwrap_or_else(|| "nacked without an error text".to_string());
        items.push(NackItem {
            token: LeaseToken::parse(&input.lease),
            error: truncate_to_boundary(error, ERROR_TEXT_BYTES_MAX),
            delay_ms: input.delay_ms,
            dead: input.dead.unwrap_or(false),
        });
        leases.push(input.lease);
    }
    Ok((leases, items))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendRequest<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendInput {
    lease: String,
    #[serde(default)]
    lease_ms: Option<u64>,
}

/// Parses an extend body into the tokens as given and the items to extend.
pub fn parse_extend(bytes: &[u8]) -> Result<(Vec<String>, Vec<ExtendItem>), ApiError> {
    let request: ExtendRequest = parse(bytes)?;
    check_item_count("items", request.items.len())?;
    let mut leases = Vec::with_capacity(request.items.len());
    let mut items = Vec::with_capacity(request.items.len());
    for (index, raw) in request.items.into_iter().enumerate() {
        let input: ExtendInput = parse_item(raw, &format!("items[{index}]"))?;
        let lease_ms = validate_lease_ms(input.lease_ms)?;
        items.push(ExtendItem { token: LeaseToken::parse(&input.lease), lease_ms });
        leases.push(input.lease);
    }
    Ok((leases, items))
}

fn check_item_count(field: &str, count: usize) -> Result<(), ApiError> {
    if count == 0 || count > ITEM_COUNT_MAX {
        let message = format!("field {field}: must hold 1 to {ITEM_COUNT_MAX} items, got {count}");
        return Err(ApiError::invalid_request(message));
    }
    Ok(())
}

/// Cuts `text` to at most `bytes_max` bytes without splitting a character.
pub fn truncate_to_boundary(mut text: String, bytes_max: usize) -> String {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Checks a queue name from a path: 1-128 characters of `[A-Za-z0-9._-]`.
///
/// `.` and `..` are refused: clients that normalise URLs cannot address them.
pub fn valid_queue_name(name: &str) -> bool {
    name != "."
        && name != ".."
        && !name.is_empty()
        && name.len() <= QUEUE_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks an `Idempotency-Key` header value: 1-255 visible ASCII characters.
pub fn valid_idempotency_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX
        && key.iter().all(u8::is_ascii_graphic)
}

/// A 64-bit digest of a request body, to tell a retried request from a different one.
pub fn request_hash(bytes: &[u8]) -> u64 {
    let low = crc32fast::hash(bytes);
    let mut hasher = crc32fast::Hasher::new_with_initial(0x5bd1_e995);
    hasher.update(&(bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
    (u64::from(hasher.finalize()) << 32) | u64::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits =
        RequestLimits { request_bytes_max: 1 << 20, message_bytes_max: 1024, batch_count_max: 10 };

    #[test]
    fn every_bad_message_is_named_by_index_and_field() {
        let body = br#"{"messages": [{"body": 1}, {"body": 2, "priority": "high"},
            {"body": 3, "body_base64": "AA=="}, {"headers": {}}, {"body": null, "dela": 1}]}"#;
        let error = parse_enqueue(body, &LIMITS, 0).unwrap_err();
        assert_eq!(error.code, "invalid_batch");
        let named: Vec<(Option<usize>, &str)> =
            error.details.iter().map(|detail| (detail.index, detail.field.as_str())).collect();
        assert_eq!(
            named,
            vec![(Some(1), "priority"), (Some(2), "body"), (Some(3), "body"), (Some(4), "dela")]
        );
        assert!(error.details[3].message.contains("dela"), "{:?}", error.details[3]);
    }

    #[test]
    fn a_null_body_is_a_body_and_bodies_are_kept_verbatim() {
        let body = br#"{"messages": [{"body": null}, {"body": {"b": [1, 2.50, "\u00e9"]}}]}"#;
        let messages = parse_enqueue(body, &LIMITS, 0).unwrap();
        assert_eq!(messages.len(), 2);
        let content = crate::store::codec::decode_content(&messages[1].content).unwrap();
        assert_eq!(content.body, br#"{"b": [1, 2.50, "\u00e9"]}"#);
    }

    #[test]
    fn oversized_messages_and_batches_are_refused() {
        let big = "x".repeat(2000);
        let body = format!(r#"{{"messages": [{{"body": "{big}"}}]}}"#);
        assert_eq!(
            parse_enqueue(body.as_bytes(), &LIMITS, 0).unwrap_err().code,
            "message_too_large"
        );
        let many = format!(r#"{{"messages": [{}]}}"#, [r#"{"body": 1}"#; 11].join(","));
        assert_eq!(parse_enqueue(many.as_bytes(), &LIMITS, 0).unwrap_err().code, "batch_too_large");
        assert_eq!(
            parse_enqueue(br#"{"messages": []}"#, &LIMITS, 0).unwrap_err().code,
            "invalid_request"
        );
    }

    #[test]
    fn delivery_times_are_validated() {
        let at = r#"{"messages": [{"body": 1, "deliver_at": "2030-01-01T00:00:00Z"}]}"#;
        let now_ms = 1_800_000_000_000;
        let messages = parse_enqueue(at.as_bytes(), &LIMITS, now_ms).unwrap();
        assert_eq!(messages[0].delivery, Delivery::At { deliver_at_ms: 1_893_456_000_000 });
        let both = r#"{"messages": [{"body": 1, "delay_ms": 5, "deliver_at": 7}]}"#;
        assert!(parse_enqueue(both.as_bytes(), &LIMITS, 0).is_err());
        let zero_and_null = r#"{"messages": [{"body": 1, "delay_ms": 0, "deliver_at": null}]}"#;
        assert_eq!(
            parse_enqueue(zero_and_null.as_bytes(), &LIMITS, 0).unwrap()[0].delivery,
            Delivery::Now
        );
        let bad = r#"{"messages": [{"body": 1, "deliver_at": "tomorrow"}]}"#;
        assert!(parse_enqueue(bad.as_bytes(), &LIMITS, 0).is_err());
        let offset = r#"{"messages": [{"body": 1, "deliver_at": "2030-01-01T02:30:00+02:30"}]}"#;
        let messages = parse_enqueue(offset.as_bytes(), &LIMITS, now_ms).unwrap();
        assert_eq!(messages[0].delivery, Delivery::At { deliver_at_ms: 1_893_456_000_000 });
        let west = r#"{"messages": [{"body": 1, "deliver_at": "2029-12-31T19:00:00-05:00"}]}"#;
        let messages = parse_enqueue(west.as_bytes(), &LIMITS, now_ms).unwrap();
        assert_eq!(messages[0].delivery, Delivery::At { deliver_at_ms: 1_893_456_000_000 });
        let lower = r#"{"messages": [{"body": 1, "deliver_at": "2030-01-01t00:00:00z"}]}"#;
        let messages = parse_enqueue(lower.as_bytes(), &LIMITS, now_ms).unwrap();
        assert_eq!(messages[0].delivery, Delivery::At { deliver_at_ms: 1_893_456_000_000 });
        let old = r#"{"messages": [{"body": 1, "deliver_at": "1969-07-20T20:17:00Z"}]}"#;
        let messages = parse_enqueue(old.as_bytes(), &LIMITS, now_ms).unwrap();
        assert_eq!(messages[0].delivery, Delivery::At { deliver_at_ms: 0 });
        let array = r#"{"messages": [[null, null]]}"#;
        assert!(parse_enqueue(array.as_bytes(), &LIMITS, now_ms).is_err());
        assert!(parse_ack(br#"[["x"]]"#).is_err());
        assert!(parse_nack(br#"{"items": [["x", "y"]]}"#).is_err());
        assert!(parse_extend(br#"{"items": [["x", 5]]}"#).is_err());
        let bad_offset =
            r#"{"messages": [{"body": 1, "deliver_at": "2030-01-01T00:00:00+25:00"}]}"#;
        assert!(parse_enqueue(bad_offset.as_bytes(), &LIMITS, now_ms).is_err());
        let too_far = r#"{"messages": [{"body": 1, "deliver_at": "2040-01-01T00:00:00Z"}]}"#;
        assert!(parse_enqueue(too_far.as_bytes(), &LIMITS, now_ms).is_err());
    }

    #[test]
    fn malformed_and_mistyped_bodies_get_distinct_codes() {
        assert_eq!(parse_ack(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(parse_ack(b"\xff\xfe").unwrap_err().code, "invalid_json");
        assert_eq!(parse_ack(br#"{"leases": 5}"#).unwrap_err().code, "invalid_request");
        assert_eq!(parse_ack(br#"{"leases": []}"#).unwrap_err().code, "invalid_request");
        assert_eq!(parse_ack(br#"{"leases": ["a"]} x"#).unwrap_err().code, "invalid_json");
        assert!(parse_lease(b"").is_ok());
        assert_eq!(parse_lease(br#"{"max": 0}"#).err().map(|e| e.code), Some("invalid_request"));
        assert_eq!(
            parse_lease(br#"{"wait_ms": 30001}"#).err().map(|e| e.code),
            Some("invalid_request")
        );
    }

    #[test]
    fn names_keys_and_truncation() {
        assert!(valid_queue_name("emails.v2_prod-1"));
        assert!(!valid_queue_name(""));
        assert!(!valid_queue_name("a/b"));
        assert!(!valid_queue_name(&"a".repeat(129)));
        assert!(valid_idempotency_key(b"order-42"));
        assert!(!valid_idempotency_key(b"has space"));
        assert_eq!(truncate_to_boundary("ééé".into(), 3), "é");
        assert_ne!(request_hash(b"a"), request_hash(b"b"));
    }
}
