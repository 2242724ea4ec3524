//! The workers: a producer enqueues batches, a consumer leases a batch and acks it at once.
//!
//! Each worker owns one keep-alive connection and its own latency histograms and id lists, so the
//! hot path takes no lock; the phase merges them when the workers end. Only requests that succeed
//! are timed; a `503 overloaded` is retried after its `Retry-After` and counted separately.

use super::client::{ClientError, Connection};
use super::phase::Shared;
use super::report::{Latencies, RequestKind};
use super::BenchError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause before retrying an overloaded request that named no `Retry-After`.
const OVERLOADED_PAUSE_DEFAULT: Duration = Duration::from_millis(100);
/// Characters of an unexpected response body quoted in the error.
const QUOTED_BODY_CHARS_MAX: usize = 500;

/// What one worker did.
#[derive(Default)]
pub struct WorkerOutcome {
    pub latencies: Latencies,
    pub enqueued_ids: Vec<u64>,
    pub leased_ids: Vec<u64>,
    pub acked_ids: Vec<u64>,
    pub empty_lease_count: u64,
    pub overloaded_retry_count: u64,
    pub ack_refused_count: u64,
}

impl WorkerOutcome {
    /// Adds another worker's outcome to this one.
    pub fn absorb(&mut self, other: WorkerOutcome) {
        self.latencies.merge(&other.latencies);
        self.enqueued_ids.extend(other.enqueued_ids);
        self.leased_ids.extend(other.leased_ids);
        self.acked_ids.extend(other.acked_ids);
        self.empty_lease_count += other.empty_lease_count;
        self.overloaded_retry_count += other.overloaded_retry_count;
        self.ack_refused_count += other.ack_refused_count;
    }
}

#[derive(Deserialize)]
struct EnqueueReply {
    ids: Vec<String>,
}

#[derive(Deserialize)]
struct LeaseReply {
    messages: Vec<LeasedMessage>,
}

/// The fields of a leased message the bench uses; the body and the rest are skipped.
#[derive(Deserialize)]
struct LeasedMessage {
    id: String,
    lease: String,
}

#[derive(Serialize)]
struct AckRequest<'a> {
    leases: Vec<&'a str>,
}

#[derive(Deserialize)]
struct AckReply {
    results: Vec<AckResult>,
}

#[derive(Deserialize)]
struct AckResult {
    result: String,
}

/// Enqueues batches until the phase's count or deadline is used up.
pub async fn produce(
    mut connection: Connection,
    shared: Arc<Shared>,
) -> Result<WorkerOutcome, BenchError> {
    let batch = shared.plan.batch;
    let full_batch = enqueue_body(batch, shared.plan.body_bytes);
    let mut outcome = WorkerOutcome::default();
    // With --rate, this producer's share: its n-th message is due n / share seconds in.
    let share = shared.plan.rate.map(|rate| rate / f64::from(shared.producer_count()));
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    loop {
        if let Some(share) = share {
            let due = started + Duration::from_secs_f64(sent as f64 / share);
            tokio::time::sleep_until(due).await;
        }
        let count = shared.claim(batch);
        if count == 0 {
            break;
        }
        sent += u64::from(count);
        let partial_batch;
        let body = if count == batch {
            &full_batch
        } else {
            partial_batch = enqueue_body(count, shared.plan.body_bytes);
            &partial_batch
        };
        let kind = RequestKind::Enqueue;
        let (reply, elapsed) =
            call(&mut connection, kind, &shared.enqueue_path, body, 201, &mut outcome).await?;
        outcome.latencies.record(kind, elapsed);
        let reply: EnqueueReply = parse(kind, &reply)?;
        if reply.ids.len() != count as usize {
            return Err(protocol(kind, format!("{} ids for {count} messages", reply.ids.len())));
        }
        for id in &reply.ids {
            outcome.enqueued_ids.push(parse_id(kind, id)?);
        }
        shared.record_enqueued(u64::from(count));
    }
    Ok(outcome)
}

/// Leases (long-polling with `wait_ms`) and acks each batch right away, until the phase stops.
pub async fn consume(
    mut connection: Connection,
    shared: Arc<Shared>,
) -> Result<WorkerOutcome, BenchError> {
    let plan = &shared.plan;
    let lease_body = format!(
        r#"{{"max":{},"lease_ms":{},"wait_ms":{}}}"#,
        plan.lease_batch, plan.lease_ms, plan.wait_ms
    )
    .into_bytes();
    let mut stop = shared.stop_signal();
    let mut outcome = WorkerOutcome::default();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        // Only the lease is abandoned on stop: it may be a long-poll that nothing will answer.
        // An ack always completes, so no message the bench holds is left leased.
        let kind = RequestKind::Lease;
        let (reply, elapsed) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            reply = call(&mut connection, kind, &shared.lease_path, &lease_body, 200, &mut outcome) => reply?,
        };
        let reply: LeaseReply = parse(kind, &reply)?;
        if reply.messages.is_empty() {
            outcome.empty_lease_count += 1;
            if shared.stop_after_empty_lease() {
                break;
            }
            continue;
        }
        outcome.latencies.record(kind, elapsed);
        let ids = reply
            .messages
            .iter()
            .map(|message| parse_id(kind, &message.id))
            .collect::<Result<Vec<u64>, BenchError>>()?;
        outcome.leased_ids.extend(&ids);
        let acked_count =
            ack(&mut connection, &shared, &reply.messages, &ids, &mut outcome).await?;
        shared.record_acked(acked_count);
    }
    Ok(outcome)
}

/// Acks one leased batch; returns how many acks the server confirmed.
async fn ack(
    connection: &mut Connection,
    shared: &Shared,
    messages: &[LeasedMessage],
    ids: &[u64],
    outcome: &mut WorkerOutcome,
) -> Result<u64, BenchError> {
    let kind = RequestKind::Ack;
    let request =
        AckRequest { leases: messages.iter().map(|message| message.lease.as_str()).collect() };
    let body = serde_json::to_vec(&request).expect("a list of strings serializes");
    let (reply, elapsed) = call(connection, kind, &shared.ack_path, &body, 200, outcome).await?;
    outcome.latencies.record(kind, elapsed);
    let reply: AckReply = parse(kind, &reply)?;
    if reply.results.len() != ids.len() {
        return Err(protocol(
            kind,
            format!("{} results for {} leases", reply.results.len(), ids.len()),
        ));
    }
    let mut acked_count = 0;
    for (id, result) in ids.iter().zip(&reply.results) {
        if result.result == "acked" {
            outcome.acked_ids.push(*id);
            acked_count += 1;
        } else {
            outcome.ack_refused_count += 1;
        }
    }
    Ok(acked_count)
}

/// Posts `body` until it gets `expected_status`, retrying `503 overloaded`; returns the reply body
/// and how long the successful request took.
async fn call(
    connection: &mut Connection,
    kind: RequestKind,
    path: &str,
    body: &[u8],
    expected_status: u16,
    outcome: &mut WorkerOutcome,
) -> Result<(Vec<u8>, Duration), BenchError> {
    loop {
        let started = Instant::now();
        let response = connection
            .post(path, body)
            .await
            .map_err(|source: ClientError| BenchError::Http { request: kind.name(), source })?;
        let elapsed = started.elapsed();
        if response.status == expected_status {
            return Ok((response.body, elapsed));
        }
        if response.status == 503 && error_code(&response.body).as_deref() == Some("overloaded") {
            outcome.overloaded_retry_count += 1;
            let pause =
                response.retry_after_s.map_or(OVERLOADED_PAUSE_DEFAULT, Duration::from_secs);
            tokio::time::sleep(pause).await;
            continue;
        }
        let text: String =
            String::from_utf8_lossy(&response.body).chars().take(QUOTED_BODY_CHARS_MAX).collect();
        return Err(BenchError::Status {
            request: kind.name(),
            status: response.status,
            body: text,
        });
    }
}

/// The `error.code` of an error body, if it is one.
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["error"]["code"].as_str().map(str::to_string)
}

/// `{"messages":[{"body":"xx…"}, …]}` with `count` messages whose JSON body text is `body_bytes`
/// long (a string of `body_bytes - 2` characters plus its quotes).
pub fn enqueue_body(count: u32, body_bytes: usize) -> Vec<u8> {
    let text = "x".repeat(body_bytes.saturating_sub(2));
    let message = format!(r#"{{"body":"{text}"}}"#);
    let mut out = Vec::with_capacity(16 + (message.len() + 1) * count as usize);
    out.extend_from_slice(br#"{"messages":["#);
    for index in 0..count {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

fn parse<'a, T: Deserialize<'a>>(kind: RequestKind, body: &'a [u8]) -> Result<T, BenchError> {
    serde_json::from_slice(body).map_err(|error| protocol(kind, format!("reply body: {error}")))
}

/// A message id's wire form (16 lowercase hex digits) as a number.
fn parse_id(kind: RequestKind, text: &str) -> Result<u64, BenchError> {
    let valid =
        text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then(|| u64::from_str_radix(text, 16).ok()).flatten().ok_or_else(|| {
        protocol(kind, format!("message id {text:?} is not 16 lowercase hex digits"))
    })
}

fn protocol(kind: RequestKind, message: String) -> BenchError {
    BenchError::Protocol { request: kind.name(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueue_bodies_are_valid_json_with_exact_body_sizes() {
        let body = enqueue_body(3, 256);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        let messages = value["messages"].as_array().expect("messages array");
        assert_eq!(messages.len(), 3);
        for message in messages {
            assert_eq!(message["body"].to_string().len(), 256);
        }
    }

    #[test]
    fn ids_must_be_16_lowercase_hex_digits() {
        assert_eq!(parse_id(RequestKind::Lease, "00000000000000ff").ok(), Some(255));
        for bad in ["ff", "00000000000000FF", "+000000000000000", "000000000000000g"] {
            assert!(parse_id(RequestKind::Lease, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_codes_are_read_from_error_bodies_only() {
        let body = br#"{"error":{"code":"overloaded","message":"m","hint":"h"}}"#;
        assert_eq!(error_code(body).as_deref(), Some("overloaded"));
        assert_eq!(error_code(b"not json"), None);
        assert_eq!(error_code(br#"{"ids":[]}"#), None);
    }
}
