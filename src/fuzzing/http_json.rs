//! `http_json`: every request parser of `http::types`; accepted requests are within the limits.

use crate::engine::IncomingMessage;
use crate::http::error::ApiError;
use crate::http::types::{self, RequestLimits};
use crate::limits::{
    ATTEMPT_COUNT_MAX, DELAY_MS_MAX, ERROR_TEXT_BYTES_MAX, HEADER_COUNT_MAX, HEADER_NAME_BYTES_MAX,
    HEADER_VALUE_BYTES_MAX, ITEM_COUNT_MAX, LEASE_COUNT_MAX, LEASE_MS_MAX, LEASE_MS_MIN,
    WAIT_MS_MAX,
};
use crate::queue::{BodyKind, Delivery, LeaseToken};
use crate::store::codec::{self};

/// The request limits `http_json` parses enqueues with: small, so that the fuzzer reaches the
/// "too many" and "too large" branches quickly.
pub const FUZZ_LIMITS: RequestLimits =
    RequestLimits { request_bytes_max: 64 * 1024, message_bytes_max: 256, batch_count_max: 8 };

/// Clock readings for enqueue: the epoch, a realistic time, and the end of time (saturation).
const FUZZ_NOW_MS: [u64; 3] = [0, 1_800_000_000_000, u64::MAX];

/// Feeds `data` to every request parser: each returns a value within the limits or a 4xx refusal.
pub fn http_json(data: &[u8]) {
    for now_ms in FUZZ_NOW_MS {
        match types::parse_enqueue(data, &FUZZ_LIMITS, now_ms) {
            Ok(messages) => check_enqueue(&messages, now_ms),
            Err(error) => check_refusal(&error),
        }
    }
    match types::parse_lease(data) {
        Ok(params) => {
            assert!((1..=LEASE_COUNT_MAX).contains(&params.count_max));
            if let Some(lease_ms) = params.lease_ms {
                assert!((LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms));
            }
            assert!(params.wait_ms <= WAIT_MS_MAX);
        }
        Err(error) => check_refusal(&error),
    }
    match types::parse_ack(data) {
        Ok((texts, tokens)) => check_tokens(&texts, tokens.into_iter()),
        Err(error) => check_refusal(&error),
    }
    match types::parse_nack(data) {
        Ok((texts, items)) => {
            for item in &items {
                assert!(item.error.len() <= ERROR_TEXT_BYTES_MAX);
                if let Some(delay_ms) = item.delay_ms {
                    assert!(delay_ms <= DELAY_MS_MAX);
                }
            }
            check_tokens(&texts, items.into_iter().map(|item| item.token));
        }
        Err(error) => check_refusal(&error),
    }
    match types::parse_extend(data) {
        Ok((texts, items)) => {
            for item in &items {
                if let Some(lease_ms) = item.lease_ms {
                    assert!((LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms));
                }
            }
            check_tokens(&texts, items.into_iter().map(|item| item.token));
        }
        Err(error) => check_refusal(&error),
    }
}

/// A refusal of a request body is the client's fault (4xx) and has a JSON body with a code.
fn check_refusal(error: &ApiError) {
    assert!(
        error.status.is_client_error(),
        "a request body was refused with {} ({})",
        error.status,
        error.code
    );
    assert!(!error.code.is_empty());
    let body: serde_json::Value =
        serde_json::from_slice(&error.body()).expect("an error body is JSON");
    assert_eq!(body["error"]["code"], error.code);
}

/// Every accepted message respects the limits, and its stored content decodes and can be served.
fn check_enqueue(messages: &[IncomingMessage], now_ms: u64) {
    assert!(!messages.is_empty());
    assert!(messages.len() <= FUZZ_LIMITS.batch_count_max as usize);
    for message in messages {
        let content =
            codec::decode_content(&message.content).expect("the parser's content decodes");
        assert!(content.headers.len() <= HEADER_COUNT_MAX);
        let mut size_bytes = content.body.len();
        for (name, value) in &content.headers {
            assert!(!name.is_empty() && name.len() <= HEADER_NAME_BYTES_MAX);
            assert!(value.len() <= HEADER_VALUE_BYTES_MAX);
            size_bytes += name.len() + value.len();
        }
        assert!(size_bytes as u64 <= FUZZ_LIMITS.message_bytes_max);
        if content.body_kind == BodyKind::Json {
            // The body is returned verbatim inside a JSON response, so it must be JSON itself.
            serde_json::from_slice::<serde::de::IgnoredAny>(content.body)
                .expect("an accepted JSON body is JSON");
        }
        if let Some(count) = message.attempt_count_max {
            assert!((1..=ATTEMPT_COUNT_MAX).contains(&count));
        }
        match message.delivery {
            Delivery::Now => {}
            Delivery::After { delay_ms } => assert!((1..=DELAY_MS_MAX).contains(&delay_ms)),
            Delivery::At { deliver_at_ms } => {
                assert!(deliver_at_ms <= now_ms.saturating_add(DELAY_MS_MAX));
            }
        }
    }
}

/// The echoed texts and the parsed tokens line up, and a parsed token is the text it came from.
fn check_tokens(texts: &[String], tokens: impl Iterator<Item = Option<LeaseToken>>) {
    assert!((1..=ITEM_COUNT_MAX).contains(&texts.len()));
    let mut count = 0;
    for (text, token) in texts.iter().zip(tokens) {
        if let Some(token) = token {
            assert_eq!(&token.to_string(), text, "a token parsed from another spelling");
        }
        count += 1;
    }
    assert_eq!(count, texts.len(), "texts and tokens differ in number");
}
