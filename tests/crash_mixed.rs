//! Crash recovery under mixed load: SIGKILL while producers enqueue and consumers lease,
//! ack and nack on the same queue, round after round on one data directory.
//!
//! Property: whatever outboxd confirmed before a `kill -9` holds after the restart, and
//! what it did not confirm happened whole or not at all. Over the whole test:
//! - every id an enqueue got a 2xx for is stored exactly once (a retry of an unanswered
//!   enqueue with its Idempotency-Key stores it at most once), and nothing else is stored;
//! - a message whose ack got a 2xx is `delivered` and no later lease returns it;
//! - attempts never go down: the stored count is at least every attempt a lease returned,
//!   and each lease of a message has a higher attempt than the one before;
//! - a message never has two live leases: the lease intervals granted for one id
//!   (start = `lease_expires_at` − `lease_ms`, on the server's clock) do not overlap,
//!   where a nack ends an interval at its `next_attempt_at`;
//! - a message leased at the kill and not acked stays leased with the same deadline and
//!   attempt after the restart, leaves the lease no earlier than its deadline and no later
//!   than deadline + backoff (1 ms) + `EXPIRY_SLACK_MS`, is then `ready` with the same
//!   attempt count, and its next lease (in the next round, or the final drain) is attempt + 1;
//! - per-state counts of `GET /v1/queues/{q}` equal what paging through the listing of each
//!   state finds, the per-state listings partition the all-states listing, and the counts
//!   sum to the number of distinct stored ids.
//!
//! Method: the real binary on a temporary data directory, started with a 1 ms backoff.
//! Each round runs 2 producer threads (batches of 1..=30 messages with 64-byte bodies,
//! each with its own Idempotency-Key, a short seeded pause between batches so consumers
//! keep up and messages cycle through leases) and 2 consumer threads (lease 1..=20 for
//! 2000 ms with a 200 ms long poll, then ack 70 %, nack with a 1..=50 ms delay 20 %, leave
//! 10 % leased). Every lease grant, ack and nack is logged with its answer. After a
//! seeded 300..=900 ms the parent kills the server with SIGKILL; a request whose answer
//! did not arrive is "unknown" (it may or may not have happened). The parent restarts the
//! server on the same directory, resends unanswered enqueues with their keys, then polls
//! the `leased` and `retrying` listings until every lease from before the kill has
//! expired (checking each message's deadline and the moment it left), reads back every id
//! enqueued or acked in the round with `GET /v1/messages/{id}`, and, once the queue is
//! quiescent (no consumer runs, so every message is `ready` or `delivered`), lists all
//! states and each state and compares them with the ledger and the counts. After the last
//! round everything `ready` is leased once more to check its attempt number.
//!
//! The seed is printed; `OUTBOXD_CRASH_SEED` replays the kill moments, batch sizes and
//! consumer choices (the interleaving with the server still varies), and
//! `OUTBOXD_CRASH_ROUNDS` sets the number of rounds (default 20). A failure prints the
//! seed and the round.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{now_ms, string_array, Client, Response, Rng, Server};

/// The one queue every round uses, so later rounds lease what earlier rounds left.
const QUEUE: &str = "mixed";

/// Retries are due 1 ms after a failure, so a message held at the kill is ready right after
/// its deadline; no message goes dead, so the quiescent state is only `ready` or `delivered`.
/// At most 500 ready messages stay in memory, so the backlog the producers build goes to the
/// catalog and is read back while the kills come.
const SERVER_ARGS: &[&str] = &[
    "--ready-in-memory-max",
    "500",
    "--backoff-initial-ms",
    "1",
    "--backoff-max-ms",
    "1",
    "--backoff-jitter",
    "0",
    "--max-attempts",
    "1000",
];

/// The backoff the server was started with.
const BACKOFF_MS: u64 = 1;

const PRODUCER_COUNT: u64 = 2;
const CONSUMER_COUNT: u64 = 2;

/// Batches hold 1..=BATCH_SIZE_MAX messages.
const BATCH_SIZE_MAX: u64 = 30;

/// Every message body is a JSON string of exactly this many bytes.
const BODY_BYTES: usize = 64;

/// Producers pause 0..=this between batches: without it two producers outrun two consumers
/// several times over, the backlog grows by thousands each round, and messages left leased at
/// a kill would not be leased again for many rounds.
const PRODUCER_PAUSE_MS_MAX: u64 = 20;

/// Consumers lease 1..=LEASE_COUNT_MAX messages at a time.
const LEASE_COUNT_MAX: u64 = 20;

/// The lease every consumer asks for. It is longer than any round, so no lease expires
/// before the kill that ends its round: every ack and nack of a round must succeed.
const LEASE_MS: u64 = 2000;

/// The consumers' long poll.
const LEASE_WAIT_MS: u64 = 200;

/// Nacks ask for a retry after 1..=NACK_DELAY_MS_MAX ms (never 0, so a re-lease always
/// gets a later deadline than the lease it follows).
const NACK_DELAY_MS_MAX: u64 = 50;

/// The kill comes KILL_AFTER_MS_MIN..=KILL_AFTER_MS_MAX after the round's threads start.
const KILL_AFTER_MS_MIN: u64 = 300;
const KILL_AFTER_MS_MAX: u64 = 900;

/// How late after deadline + backoff a lease may still show. The storage thread wakes at the
/// deadline (six full runs saw at most ~300 ms, poll interval included, on a 2-core machine with a
/// load average of 5-7); the bound is generous because the machine is shared and noisy, and a
/// timer lost in recovery is late for ever, which this still catches.
const EXPIRY_SLACK_MS: u64 = 10_000;

/// How long the parent keeps polling for quiescence beyond the latest possible expiry
/// before it gives up (the per-message checks have failed by then).
const QUIESCENCE_GIVE_UP_MS: u64 = 5000;

/// The pause between two polls of the `leased` listing when there is nothing else to do.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// How many `GET /v1/messages/{id}` the parent sends between two polls of the listings.
const GET_CHUNK_COUNT: usize = 40;

/// The lease the final drain holds messages with: nothing expires while it counts.
const HOLD_LEASE_MS: u64 = 600_000;

/// The states of the listing, in its order.
const STATES: [&str; 6] = ["scheduled", "ready", "leased", "retrying", "dead", "delivered"];

/// How many violations a failure message quotes.
const VIOLATIONS_QUOTED_MAX: usize = 25;

/// An integer from the environment, if set; a value that is not one fails the test.
fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name} must be an integer, got {value:?}")))
}

/// A seed for one thread of one round, derived from the test's seed.
fn thread_seed(seed: u64, round: u64, thread_tag: u64) -> u64 {
    seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ thread_tag.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// Answers that refuse a request without changing anything (the contract's 503 and 507).
fn is_refusal(response: &Response) -> bool {
    let code = &response.body["error"]["code"];
    (response.status == 503 && code == "overloaded")
        || (response.status == 507 && code == "insufficient_storage")
}

// ---------------------------------------------------------------------------------------
// Producers
// ---------------------------------------------------------------------------------------

/// One batch a producer posted, and what came of it.
struct SentBatch {
    /// The Idempotency-Key, unique per batch, so the retry after a restart stores it at most once.
    key: String,
    /// The exact request body: a retry must resend the same bytes.
    request_body: String,
    /// The body text of each message, in order.
    bodies: Vec<String>,
    outcome: Outcome,
}

/// What came of one enqueue.
enum Outcome {
    /// 201 (or 200 duplicate on the retry): these ids, in message order.
    Stored(Vec<String>),
    /// No answer arrived (the kill): the batch may or may not be stored, whole.
    InFlight,
    /// Refused (overloaded, disk low) or answered outside the contract: nothing may be stored.
    Refused,
}

/// What one producer thread did in one round.
#[derive(Default)]
struct ProducerLog {
    batches: Vec<SentBatch>,
    /// Answers outside the contract, for the parent to report.
    violations: Vec<String>,
}

/// A 64-byte body text that names its round, producer, batch and index.
fn body_text(round: u64, producer: u64, sequence: u64, index: u64) -> String {
    let mut text = format!("r{round:04}-p{producer}-s{sequence:06}-i{index:02}-");
    while text.len() < BODY_BYTES {
        text.push('x');
    }
    text
}

/// Posts batches until `stop` is set or a request gets no answer.
fn produce(
    client: Client,
    round: u64,
    producer: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> ProducerLog {
    let mut rng = Rng::new(thread_seed(seed, round, 1 + producer));
    let mut log = ProducerLog::default();
    let path = format!("/v1/queues/{QUEUE}/messages");
    for sequence in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let size = rng.range(1, BATCH_SIZE_MAX);
        let bodies: Vec<String> =
            (0..size).map(|index| body_text(round, producer, sequence, index)).collect();
        let messages: Vec<Value> = bodies.iter().map(|body| json!({ "body": body })).collect();
        let request_body = json!({ "messages": messages }).to_string();
        let key = format!("r{round}-p{producer}-s{sequence}");
        let headers = [("Idempotency-Key", key.as_str())];
        let outcome = match client.try_request("POST", &path, Some(&request_body), &headers) {
            Ok(response) if response.status == 201 && response.body["duplicate"] == false => {
                let ids = string_array(&response.body["ids"]);
                if ids.len() != bodies.len() {
                    log.violations.push(format!("enqueue {key}: {} ids for {size}", ids.len()));
                }
                Outcome::Stored(ids)
            }
            Ok(response) if is_refusal(&response) => Outcome::Refused,
            Ok(response) => {
                let answer = format!("{} {}", response.status, response.body);
                log.violations
                    .push(format!("enqueue {key}: answer outside the contract: {answer}"));
                Outcome::Refused
            }
            Err(_) => Outcome::InFlight,
        };
        let in_flight = matches!(outcome, Outcome::InFlight);
        log.batches.push(SentBatch { key, request_body, bodies, outcome });
        if in_flight {
            break;
        }
        thread::sleep(Duration::from_millis(rng.range(0, PRODUCER_PAUSE_MS_MAX)));
    }
    log
}

// ---------------------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------------------

/// What a consumer did with one lease grant before the kill.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Settlement {
    /// Nothing took effect (nothing sent, or refused): the lease runs to its deadline.
    Held,
    /// The ack answered "acked".
    Acked,
    /// The ack got no answer: the message may be delivered, or leased to its deadline.
    AckUnknown,
    /// The nack answered "retrying": leasable again from `next_attempt_at_ms`.
    Nacked { next_attempt_at_ms: u64 },
    /// The nack got no answer; it was sent at `sent_ms` asking for `delay_ms`.
    NackUnknown { sent_ms: u64, delay_ms: u64 },
}

/// One message a lease returned, and what became of the lease.
#[derive(Debug)]
struct Grant {
    id: String,
    token: String,
    attempt: u64,
    /// When the server granted it: `lease_expires_at` − `LEASE_MS`, on the server's clock.
    start_ms: u64,
    expires_ms: u64,
    settlement: Settlement,
}

/// What one consumer thread did in one round.
#[derive(Default)]
struct ConsumerLog {
    grants: Vec<Grant>,
    /// The `max` of the lease request that got no answer (0 if none): up to this many
    /// messages may have been leased to nobody the test knows of.
    lease_in_flight_count_max: u64,
    ack_count: u64,
    nack_count: u64,
    violations: Vec<String>,
}

/// Leases, acks and nacks until `stop` is set or a request gets no answer.
fn consume(
    client: Client,
    round: u64,
    consumer: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> ConsumerLog {
    let mut rng = Rng::new(thread_seed(seed, round, 100 + consumer));
    let mut log = ConsumerLog::default();
    while !stop.load(Ordering::Relaxed) {
        let count_max = rng.range(1, LEASE_COUNT_MAX);
        let Some(granted) = lease_batch(&client, count_max, &mut log) else { break };
        let (mut acks, mut nacks) = (Vec::new(), Vec::new());
        for index in granted {
            match rng.range(1, 100) {
                1..=70 => acks.push(index),
                71..=90 => nacks.push((index, rng.range(1, NACK_DELAY_MS_MAX))),
                _ => {}
            }
        }
        if !ack_grants(&client, &acks, &mut log) || !nack_grants(&client, &nacks, &mut log) {
            break;
        }
    }
    log
}

/// Sends one lease request; returns the indices of the new grants in `log.grants`, or
/// `None` when no answer arrived.
fn lease_batch(client: &Client, count_max: u64, log: &mut ConsumerLog) -> Option<Range<usize>> {
    let path = format!("/v1/queues/{QUEUE}/lease");
    let request =
        json!({ "max": count_max, "lease_ms": LEASE_MS, "wait_ms": LEASE_WAIT_MS }).to_string();
    let sent_ms = now_ms();
    let Ok(response) = client.try_request("POST", &path, Some(&request), &[]) else {
        log.lease_in_flight_count_max = count_max;
        return None;
    };
    let received_ms = now_ms();
    let first = log.grants.len();
    if response.status != 200 {
        if !is_refusal(&response) {
            log.violations.push(format!("lease: {} {}", response.status, response.body));
        }
        thread::sleep(POLL_PAUSE);
        return Some(first..first);
    }
    let Some(messages) = response.body["messages"].as_array() else {
        log.violations.push(format!("lease answer without messages: {}", response.body));
        return Some(first..first);
    };
    if messages.len() as u64 > count_max {
        log.violations.push(format!("lease of max {count_max} returned {}", messages.len()));
    }
    for message in messages {
        match parse_grant(message, LEASE_MS, sent_ms, received_ms) {
            Ok(grant) => log.grants.push(grant),
            Err(problem) => log.violations.push(problem),
        }
    }
    Some(first..log.grants.len())
}

/// Reads one leased message; the grant must have happened while the request was open.
fn parse_grant(
    message: &Value,
    lease_ms: u64,
    sent_ms: u64,
    received_ms: u64,
) -> Result<Grant, String> {
    let field = |name: &str| message[name].clone();
    let (Some(id), Some(token), Some(attempt), Some(expires_ms)) = (
        field("id").as_str().map(str::to_string),
        field("lease").as_str().map(str::to_string),
        field("attempt").as_u64(),
        field("lease_expires_at").as_u64(),
    ) else {
        return Err(format!("malformed leased message: {message}"));
    };
    let start_ms = expires_ms.saturating_sub(lease_ms);
    if start_ms < sent_ms || start_ms > received_ms || attempt == 0 {
        return Err(format!(
            "lease of {id} (attempt {attempt}) granted at {start_ms}, outside its request \
             {sent_ms}..={received_ms}: {message}"
        ));
    }
    Ok(Grant { id, token, attempt, start_ms, expires_ms, settlement: Settlement::Held })
}

/// Acks the given grants in one request; returns false when no answer arrived.
fn ack_grants(client: &Client, indices: &[usize], log: &mut ConsumerLog) -> bool {
    if indices.is_empty() {
        return true;
    }
    let tokens: Vec<&str> = indices.iter().map(|&index| log.grants[index].token.as_str()).collect();
    let request = json!({ "leases": tokens }).to_string();
    let path = format!("/v1/queues/{QUEUE}/ack");
    let response = match client.try_request("POST", &path, Some(&request), &[]) {
        Ok(response) => response,
        Err(_) => {
            for &index in indices {
                log.grants[index].settlement = Settlement::AckUnknown;
            }
            return false;
        }
    };
    if response.status != 200 {
        if !is_refusal(&response) {
            log.violations.push(format!("ack: {} {}", response.status, response.body));
        }
        return true;
    }
    let results = response.body["results"].as_array().cloned().unwrap_or_default();
    if results.len() != indices.len() {
        log.violations.push(format!("ack of {} tokens: {}", indices.len(), response.body));
        return true;
    }
    for (&index, result) in indices.iter().zip(&results) {
        let grant = &mut log.grants[index];
        // Every lease of the round is younger than LEASE_MS, so every token still holds its message.
        if result["lease"] == grant.token.as_str() && result["result"] == "acked" {
            grant.settlement = Settlement::Acked;
            log.ack_count += 1;
        } else {
            log.violations.push(format!("ack of live lease {grant:?} answered {result}"));
        }
    }
    true
}

/// Nacks the given grants (each with its delay) in one request; returns false when no
/// answer arrived.
fn nack_grants(client: &Client, items: &[(usize, u64)], log: &mut ConsumerLog) -> bool {
    if items.is_empty() {
        return true;
    }
    let request_items: Vec<Value> = items
        .iter()
        .map(|&(index, delay_ms)| {
            json!({ "lease": log.grants[index].token, "error": "crash_mixed", "delay_ms": delay_ms })
        })
        .collect();
    let request = json!({ "items": request_items }).to_string();
    let path = format!("/v1/queues/{QUEUE}/nack");
    let sent_ms = now_ms();
    let response = match client.try_request("POST", &path, Some(&request), &[]) {
        Ok(response) => response,
        Err(_) => {
            for &(index, delay_ms) in items {
                log.grants[index].settlement = Settlement::NackUnknown { sent_ms, delay_ms };
            }
            return false;
        }
    };
    if response.status != 200 {
        if !is_refusal(&response) {
            log.violations.push(format!("nack: {} {}", response.status, response.body));
        }
        return true;
    }
    let results = response.body["results"].as_array().cloned().unwrap_or_default();
    if results.len() != items.len() {
        log.violations.push(format!("nack of {} tokens: {}", items.len(), response.body));
        return true;
    }
    for (&(index, delay_ms), result) in items.iter().zip(&results) {
        let grant = &mut log.grants[index];
        let next_attempt_at_ms = result["next_attempt_at"].as_u64().unwrap_or(0);
        let retrying = result["lease"] == grant.token.as_str() && result["result"] == "retrying";
        if retrying && next_attempt_at_ms >= sent_ms + delay_ms {
            grant.settlement = Settlement::Nacked { next_attempt_at_ms };
            log.nack_count += 1;
        } else {
            log.violations
                .push(format!("nack (delay {delay_ms}) of live lease {grant:?} answered {result}"));
        }
    }
    true
}

// ---------------------------------------------------------------------------------------
// The ledger: what the server confirmed, across all rounds
// ---------------------------------------------------------------------------------------

/// The latest lease grant seen for a message.
#[derive(Clone, Copy, Debug)]
struct LastGrant {
    attempt: u64,
    expires_ms: u64,
    settlement: Settlement,
    round: u64,
}

/// What the test knows about one message id.
#[derive(Default)]
struct MessageRecord {
    /// The body its enqueue sent; `None` while the id is known only from a lease (the
    /// enqueue's answer was lost at the kill and its retry has not answered yet).
    body: Option<String>,
    last_grant: Option<LastGrant>,
    /// The highest attempt any lease returned for it, or any quiescent listing showed.
    attempt_max: u64,
    /// An ack answered "acked" (or an unanswered ack turned out to have happened).
    delivered: bool,
    /// Leased at a kill and not acked: (its attempt then, that round). Its next lease must
    /// be attempt + 1.
    awaiting_redelivery: Option<(u64, u64)>,
}

/// Everything the server confirmed, by id.
#[derive(Default)]
struct Ledger {
    messages: BTreeMap<String, MessageRecord>,
    grant_count: u64,
    /// Messages held at a kill whose next lease came in the next round and was checked to
    /// be exactly attempt + 1.
    redelivery_checked_count: u64,
    /// The rounds at whose kill a message was held that the next round leased again.
    redelivered_rounds: BTreeSet<u64>,
}

impl Ledger {
    /// Records the ids an enqueue (or its retry) returned; an id must never be given twice.
    fn record_enqueued(&mut self, ids: &[String], bodies: &[String], violations: &mut Vec<String>) {
        for (id, body) in ids.iter().zip(bodies) {
            let record = self.messages.entry(id.clone()).or_default();
            if let Some(earlier) = &record.body {
                violations.push(format!("id {id} returned for two messages: {earlier} and {body}"));
            }
            record.body = Some(body.clone());
        }
    }

    /// Checks one grant against the message's earlier grants and records it. Grants must
    /// come in the order of their start.
    fn record_grant(&mut self, grant: &Grant, round: u64, violations: &mut Vec<String>) {
        self.grant_count += 1;
        let id = &grant.id;
        let record = self.messages.entry(id.clone()).or_default();
        if record.delivered {
            violations.push(format!("acked message leased again: {grant:?}"));
        }
        if grant.attempt <= record.attempt_max {
            violations.push(format!(
                "attempt went from {} to {}: {grant:?}",
                record.attempt_max, grant.attempt
            ));
        }
        if let Some(previous) = record.last_grant {
            let free_from_ms = match previous.settlement {
                Settlement::Nacked { next_attempt_at_ms } => next_attempt_at_ms,
                Settlement::NackUnknown { sent_ms, delay_ms } => sent_ms + delay_ms,
                Settlement::Held | Settlement::AckUnknown | Settlement::Acked => {
                    previous.expires_ms
                }
            };
            if grant.start_ms < free_from_ms {
                violations.push(format!(
                    "two live leases of {id}: {previous:?} (free from {free_from_ms}) and {grant:?}"
                ));
            }
        }
        // In the round right after the kill nothing unseen can have leased it first (a lease
        // without an answer holds its messages past the next kill); later, one may have.
        if let Some((attempt, held_round)) = record.awaiting_redelivery.take() {
            if held_round + 1 == round {
                self.redelivery_checked_count += 1;
                self.redelivered_rounds.insert(held_round);
                if grant.attempt != attempt + 1 {
                    violations.push(format!(
                        "held at the kill of round {held_round} with attempt {attempt}, next leased as {grant:?}"
                    ));
                }
            }
        }
        record.attempt_max = record.attempt_max.max(grant.attempt);
        record.delivered |= grant.settlement == Settlement::Acked;
        record.last_grant = Some(LastGrant {
            attempt: grant.attempt,
            expires_ms: grant.expires_ms,
            settlement: grant.settlement,
            round,
        });
    }

    /// The messages whose lease from this round may still be live after the kill.
    fn held_at_kill(&self, round: u64) -> BTreeMap<String, LastGrant> {
        self.messages
            .iter()
            .filter_map(|(id, record)| Some((id, record.last_grant?)))
            .filter(|(_, last)| {
                last.round == round
                    && matches!(
                        last.settlement,
                        Settlement::Held | Settlement::AckUnknown | Settlement::NackUnknown { .. }
                    )
            })
            .map(|(id, last)| (id.clone(), last))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Reading the server back
// ---------------------------------------------------------------------------------------

/// One entry of `GET /v1/queues/{q}/messages`, with the fields the checks read.
#[derive(Clone, Debug, serde::Deserialize)]
struct Summary {
    id: String,
    state: String,
    attempts: u64,
    #[serde(rename = "lease_expires_at")]
    lease_expires_at_ms: Option<u64>,
    #[serde(rename = "deliver_at")]
    deliver_at_ms: Option<u64>,
}

/// One page of `GET /v1/queues/{q}/messages`.
#[derive(serde::Deserialize)]
struct Page {
    messages: Vec<Summary>,
    next_cursor: Option<String>,
}

/// Percent-encodes a query value (cursors are plain ASCII, but nothing is assumed).
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Every entry of the queue's listing (one state, or all), following `next_cursor`.
fn list_messages(client: &Client, state: Option<&str>) -> Vec<Summary> {
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/queues/{QUEUE}/messages?limit=1000");
        if let Some(state) = state {
            path.push_str(&format!("&state={state}"));
        }
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", query_value(cursor)));
        }
        let response = client.get(&path);
        assert_eq!(response.status, 200, "GET {path}: {response:?}");
        let page: Page = serde_json::from_value(response.body)
            .unwrap_or_else(|error| panic!("GET {path}: not a listing page: {error}"));
        entries.extend(page.messages);
        match page.next_cursor {
            Some(next) => {
                assert_ne!(cursor.as_ref(), Some(&next), "the listing cursor did not move");
                cursor = Some(next);
            }
            None => return entries,
        }
    }
}

/// What to check when reading one message back with `GET /v1/messages/{id}`.
#[derive(Default)]
struct ReadBack {
    /// Enqueued this round: it exists, in this queue, with this body.
    body: Option<String>,
    /// Acked this round: it is `delivered`.
    delivered: bool,
    /// Leased by the final drain: it is `leased`.
    drained: bool,
}

/// Reads one message back and checks it against the ledger.
fn read_back(client: &Client, ledger: &Ledger, id: &str, check: &ReadBack) -> Vec<String> {
    let mut problems = Vec::new();
    let response = client.get(&format!("/v1/messages/{id}"));
    if response.status != 200 {
        problems.push(format!("GET of confirmed id {id}: {} {}", response.status, response.body));
        return problems;
    }
    let message = &response.body;
    if message["queue"] != QUEUE {
        problems.push(format!("{id} is in another queue: {message}"));
    }
    if let Some(body) = &check.body {
        if message["body"] != body.as_str() {
            problems.push(format!("{id} has another body than {body:?}: {message}"));
        }
    }
    if check.delivered && message["state"] != "delivered" {
        problems.push(format!("acked {id} is not delivered after the restart: {message}"));
    }
    if check.drained && message["state"] != "leased" {
        problems.push(format!("{id} was neither acked nor drained: {message}"));
    }
    let attempt_max = ledger.messages.get(id).map_or(0, |record| record.attempt_max);
    if message["attempts"].as_u64().is_none_or(|attempts| attempts < attempt_max) {
        problems.push(format!("{id} attempts below the leased attempt {attempt_max}: {message}"));
    }
    problems
}

// ---------------------------------------------------------------------------------------
// After the restart: leases from before the kill run out, then the queue is quiescent
// ---------------------------------------------------------------------------------------

/// What the watch over expiring leases saw.
#[derive(Default)]
struct WatchReport {
    /// A bound on how late a lease left after its deadline: the answer time of the first
    /// poll that no longer listed it, minus its deadline (held leases seen live only).
    lateness_ms_max: u64,
    /// Held leases that a poll still listed as leased (the others expired during the restart).
    held_seen_live: BTreeSet<String>,
    /// Leases nobody was told of: granted to a lease request that got no answer.
    unseen_lease_ids: BTreeSet<String>,
    /// Unanswered acks whose lease was gone before its deadline: the ack must have happened.
    must_be_delivered: BTreeSet<String>,
    poll_count: u64,
}

/// The parent's view of the leases from before the kill running out, poll by poll.
struct ExpiryWatch<'a> {
    ledger: &'a Ledger,
    /// The messages whose lease from the round may have been live at the kill.
    held: &'a BTreeMap<String, LastGrant>,
    kill_ms: u64,
    /// Held messages already seen gone from the `leased` listing.
    gone: BTreeSet<String>,
    /// Messages already reported, so that one bad message makes one violation, not one a poll.
    reported: BTreeSet<String>,
    report: WatchReport,
}

impl ExpiryWatch<'_> {
    /// Checks one poll: the `leased` and `retrying` listings, asked for at `sent_ms` and
    /// answered by `received_ms`.
    fn check_poll(
        &mut self,
        leased: &[Summary],
        retrying: &[Summary],
        (sent_ms, received_ms): (u64, u64),
        violations: &mut Vec<String>,
    ) {
        self.report.poll_count += 1;
        for entry in leased {
            self.check_leased_entry(entry, sent_ms, violations);
        }
        let leased_ids: BTreeSet<&str> = leased.iter().map(|entry| entry.id.as_str()).collect();
        for (id, last) in self.held {
            if leased_ids.contains(id.as_str()) {
                self.report.held_seen_live.insert(id.clone());
            } else {
                self.check_held_gone(id, last, received_ms, violations);
            }
        }
        for entry in retrying {
            let due_ms = entry.deliver_at_ms.unwrap_or(0);
            if sent_ms > due_ms + EXPIRY_SLACK_MS && self.reported.insert(entry.id.clone()) {
                violations
                    .push(format!("still retrying at {sent_ms}, past due + slack: {entry:?}"));
            }
        }
    }

    /// Checks one entry of the `leased` listing: a lease from before the kill, unchanged,
    /// not past its deadline + slack; or one a lease request without an answer may have made.
    fn check_leased_entry(&mut self, entry: &Summary, sent_ms: u64, violations: &mut Vec<String>) {
        if let Some(problem) = self.leased_entry_problem(entry, sent_ms) {
            // Every poll lists it again; one violation per message keeps the report readable.
            if self.reported.insert(entry.id.clone()) {
                violations.push(problem);
            }
        }
    }

    /// The violation one `leased` entry shows, if any.
    fn leased_entry_problem(&mut self, entry: &Summary, sent_ms: u64) -> Option<String> {
        let expires_ms = entry.lease_expires_at_ms.unwrap_or(0);
        // Every lease was granted before the kill; nobody has leased since the restart.
        if expires_ms > self.kill_ms + LEASE_MS {
            return Some(format!(
                "a lease outlasts every lease granted before the kill: {entry:?}"
            ));
        }
        if sent_ms > expires_ms + BACKOFF_MS + EXPIRY_SLACK_MS {
            return Some(format!("still leased at {sent_ms}, past deadline + slack: {entry:?}"));
        }
        if let Some(last) = self.held.get(&entry.id) {
            if expires_ms == last.expires_ms && entry.attempts == last.attempt {
                return None;
            }
            // Only a nack that happened can have freed it for a lease without an answer.
            if !matches!(last.settlement, Settlement::NackUnknown { .. }) {
                return Some(format!("held at the kill as {last:?}, now {entry:?}"));
            }
        }
        self.report.unseen_lease_ids.insert(entry.id.clone());
        let record = self.ledger.messages.get(&entry.id);
        let attempt_max = record.map_or(0, |record| record.attempt_max);
        (entry.attempts <= attempt_max).then(|| {
            format!(
                "leased by nobody the test knows of, yet not past attempt {attempt_max}: {entry:?}"
            )
        })
    }

    /// A held message missing from a `leased` listing answered at `received_ms`: before its
    /// deadline only a nack or ack without an answer may have ended the lease.
    fn check_held_gone(
        &mut self,
        id: &str,
        last: &LastGrant,
        received_ms: u64,
        violations: &mut Vec<String>,
    ) {
        if !self.gone.insert(id.to_string()) {
            return;
        }
        if received_ms < last.expires_ms {
            match last.settlement {
                Settlement::Held => violations.push(format!(
                    "{id} lost its lease from before the kill ahead of its deadline: {last:?}"
                )),
                Settlement::AckUnknown => {
                    self.report.must_be_delivered.insert(id.to_string());
                }
                _ => {}
            }
        }
        if last.settlement == Settlement::Held && self.report.held_seen_live.contains(id) {
            let lateness_ms = received_ms.saturating_sub(last.expires_ms);
            self.report.lateness_ms_max = self.report.lateness_ms_max.max(lateness_ms);
        }
    }
}

/// Polls the `leased` and `retrying` listings until both are empty, checking every lease
/// from before the kill, and reads back `read_backs` between polls.
fn watch_expiries(
    client: &Client,
    ledger: &Ledger,
    held: &BTreeMap<String, LastGrant>,
    kill_ms: u64,
    read_backs: &BTreeMap<String, ReadBack>,
    violations: &mut Vec<String>,
) -> WatchReport {
    let mut watch = ExpiryWatch {
        ledger,
        held,
        kill_ms,
        gone: BTreeSet::new(),
        reported: BTreeSet::new(),
        report: WatchReport::default(),
    };
    let mut unread = read_backs.iter();
    let give_up_ms = kill_ms + LEASE_MS + BACKOFF_MS + EXPIRY_SLACK_MS + QUIESCENCE_GIVE_UP_MS;
    loop {
        let sent_ms = now_ms();
        let leased = list_messages(client, Some("leased"));
        let retrying = list_messages(client, Some("retrying"));
        let received_ms = now_ms();
        watch.check_poll(&leased, &retrying, (sent_ms, received_ms), violations);
        let chunk: Vec<_> = unread.by_ref().take(GET_CHUNK_COUNT).collect();
        for (id, check) in &chunk {
            violations.extend(read_back(client, ledger, id, check));
        }
        if leased.is_empty() && retrying.is_empty() && chunk.is_empty() {
            return watch.report;
        }
        if received_ms > give_up_ms {
            violations.push(format!(
                "not quiescent {QUIESCENCE_GIVE_UP_MS} ms after the last lease could expire: \
                 leased {leased:?}, retrying {retrying:?}"
            ));
            return watch.report;
        }
        if chunk.is_empty() {
            thread::sleep(POLL_PAUSE);
        }
    }
}

/// Lists every state at once while the queue is quiescent and checks it against the ledger:
/// each confirmed id exactly once, nothing else; returns the listing.
fn check_quiescent(
    client: &Client,
    ledger: &mut Ledger,
    held: &BTreeMap<String, LastGrant>,
    report: &WatchReport,
    round: u64,
    violations: &mut Vec<String>,
) -> Vec<Summary> {
    let all = list_messages(client, None);
    let mut seen = BTreeSet::new();
    for entry in &all {
        if !seen.insert(entry.id.as_str()) {
            violations.push(format!("listed twice: {entry:?}"));
        }
        match ledger.messages.get_mut(&entry.id) {
            Some(record) => {
                let held = held.get(&entry.id);
                check_quiescent_entry(record, entry, held, report, round, violations);
            }
            None => violations.push(format!("stored, yet no enqueue returned it: {entry:?}")),
        }
    }
    for (id, record) in &ledger.messages {
        if !seen.contains(id.as_str()) {
            violations.push(format!(
                "confirmed message {id} is missing (last lease {:?})",
                record.last_grant
            ));
        }
    }
    all
}

/// Checks one message of the quiescent listing: `delivered` if acked, else `ready`, with no
/// fewer attempts than seen. Settles what the kill left unknown, and marks a message held at
/// the kill as awaiting its next lease.
fn check_quiescent_entry(
    record: &mut MessageRecord,
    entry: &Summary,
    held: Option<&LastGrant>,
    report: &WatchReport,
    round: u64,
    violations: &mut Vec<String>,
) {
    if entry.attempts < record.attempt_max {
        violations.push(format!("attempts below {}: {entry:?}", record.attempt_max));
    }
    // Leases without an answer may have counted attempts the ledger never saw; from now on
    // the stored count may not go below them either.
    record.attempt_max = record.attempt_max.max(entry.attempts);
    let last = record.last_grant;
    let ack_unknown = last.is_some_and(|last| last.settlement == Settlement::AckUnknown);
    let delivered = entry.state == "delivered";
    let expected = match (record.delivered, ack_unknown) {
        (true, _) => "delivered",
        (false, true) if delivered => "delivered",
        (false, true) if report.must_be_delivered.contains(&entry.id) => "delivered",
        _ => "ready",
    };
    if entry.state != expected {
        violations.push(format!("expected {expected} once quiescent ({last:?}): {entry:?}"));
    }
    if let Some(last) = record.last_grant.as_mut().filter(|_| ack_unknown) {
        last.settlement = if delivered { Settlement::Acked } else { Settlement::Held };
        record.delivered = delivered;
    }
    // Leased at the kill and not acked (an unanswered ack that did not happen included):
    // ready with the same attempt count, so the next lease is attempt + 1.
    let still_held = |held: &&LastGrant| match held.settlement {
        Settlement::Held => true,
        Settlement::AckUnknown => !delivered,
        _ => false,
    };
    if let Some(held) = held.filter(still_held) {
        if entry.attempts != held.attempt {
            violations.push(format!("held at the kill with attempt {}: {entry:?}", held.attempt));
        }
        record.awaiting_redelivery = Some((held.attempt, round));
    }
}

/// Lists each state on its own and checks it against the counts and the all-states listing;
/// returns the counts.
fn check_counts(client: &Client, all: &[Summary], violations: &mut Vec<String>) -> Value {
    let counts = client.queue_counts(QUEUE);
    let mut count_sum = 0;
    for state in STATES {
        let listed = list_messages(client, Some(state));
        let listed_ids: BTreeSet<&str> = listed.iter().map(|entry| entry.id.as_str()).collect();
        let expected_ids: BTreeSet<&str> = all
            .iter()
            .filter(|entry| entry.state == state)
            .map(|entry| entry.id.as_str())
            .collect();
        let count = counts[state].as_u64().unwrap_or(u64::MAX);
        count_sum += count;
        if listed.len() != listed_ids.len() || listed.iter().any(|entry| entry.state != state) {
            violations.push(format!("listing of state {state} repeats ids or mixes states"));
        }
        if listed.len() as u64 != count {
            violations
                .push(format!("count of {state} is {count}, its listing has {}", listed.len()));
        }
        if listed_ids != expected_ids {
            let differ: Vec<_> = listed_ids.symmetric_difference(&expected_ids).take(10).collect();
            violations.push(format!(
                "listing of {state} differs from the all-states listing: {differ:?}"
            ));
        }
    }
    if count_sum != all.len() as u64 {
        violations
            .push(format!("counts {counts} sum to {count_sum}, {} distinct ids stored", all.len()));
    }
    counts
}

/// Leases everything `ready` once more: each comes back with attempt = its attempts + 1,
/// none was acked, none overlaps an earlier lease, and nothing else comes back. Returns how
/// many were leased.
fn final_drain(
    client: &Client,
    ledger: &mut Ledger,
    all: &[Summary],
    round: u64,
    violations: &mut Vec<String>,
) -> usize {
    let ready: BTreeMap<&str, u64> = all
        .iter()
        .filter(|entry| entry.state == "ready")
        .map(|entry| (entry.id.as_str(), entry.attempts))
        .collect();
    let mut drained = BTreeSet::new();
    loop {
        let sent_ms = now_ms();
        let messages = client.lease(QUEUE, 1000, HOLD_LEASE_MS, 0);
        let received_ms = now_ms();
        if messages.is_empty() {
            break;
        }
        let mut grants = Vec::new();
        for message in &messages {
            let id = message["id"].as_str().unwrap_or_default();
            let body = ledger.messages.get(id).and_then(|record| record.body.as_deref());
            if body.is_none() || message["body"].as_str() != body {
                violations.push(format!("drained {message}, enqueued with body {body:?}"));
            }
            match parse_grant(message, HOLD_LEASE_MS, sent_ms, received_ms) {
                Ok(grant) => grants.push(grant),
                Err(problem) => violations.push(problem),
            }
        }
        for grant in grants {
            let listed_attempts = ready.get(grant.id.as_str());
            if listed_attempts.map(|attempts| attempts + 1) != Some(grant.attempt) {
                violations
                    .push(format!("drained {grant:?}, listed ready with {listed_attempts:?}"));
            }
            if !drained.insert(grant.id.clone()) {
                violations.push(format!("drained twice: {grant:?}"));
            }
            ledger.record_grant(&grant, round, violations);
        }
    }
    if drained.len() != ready.len() {
        violations.push(format!(
            "{} listed ready, {} leased by the drain",
            ready.len(),
            drained.len()
        ));
    }
    drained.len()
}

/// After the final drain, reads back every id the server ever confirmed: each is in the queue with
/// the body its enqueue sent, `delivered` if its ack was confirmed (or turned out to have
/// happened), and otherwise `leased` by the drain. Returns how many were read.
fn read_back_everything(client: &Client, ledger: &Ledger, violations: &mut Vec<String>) -> usize {
    for (id, record) in &ledger.messages {
        if record.body.is_none() {
            violations.push(format!("{id} is in the ledger without the body of its enqueue"));
        }
        let check = ReadBack {
            body: record.body.clone(),
            delivered: record.delivered,
            drained: !record.delivered,
        };
        violations.extend(read_back(client, ledger, id, &check));
    }
    ledger.messages.len()
}

// ---------------------------------------------------------------------------------------
// Rounds
// ---------------------------------------------------------------------------------------

/// Fails the round, quoting the first violations, if there are any.
fn fail_on(violations: &[String], phase: &str) {
    if violations.is_empty() {
        return;
    }
    let quoted: Vec<&str> =
        violations.iter().take(VIOLATIONS_QUOTED_MAX).map(String::as_str).collect();
    panic!("{} violation(s) {phase}:\n  {}", violations.len(), quoted.join("\n  "));
}

/// The last lines of the server's stderr, for a failure message.
fn stderr_tail(text: &str) -> &str {
    const TAIL_BYTES: usize = 4000;
    let mut cut = text.len().saturating_sub(TAIL_BYTES);
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    &text[cut..]
}

/// What the round's threads did, merged.
struct Load {
    batches: Vec<SentBatch>,
    grants: Vec<Grant>,
    lease_in_flight_count_max: u64,
    ack_count: u64,
    nack_count: u64,
}

/// Runs producers and consumers for `kill_after_ms`, kills the server, and gathers the logs;
/// returns them with the moment the process was gone.
fn load_and_kill(server: &mut Server, seed: u64, round: u64, kill_after_ms: u64) -> (Load, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCER_COUNT)
        .map(|producer| {
            let (client, stop) = (server.client(), Arc::clone(&stop));
            thread::spawn(move || produce(client, round, producer, seed, stop))
        })
        .collect();
    let consumers: Vec<_> = (0..CONSUMER_COUNT)
        .map(|consumer| {
            let (client, stop) = (server.client(), Arc::clone(&stop));
            thread::spawn(move || consume(client, round, consumer, seed, stop))
        })
        .collect();
    thread::sleep(Duration::from_millis(kill_after_ms));
    server.kill9();
    // The process is reaped: every change it made happened before this instant.
    let kill_ms = now_ms();
    stop.store(true, Ordering::Relaxed);
    let mut load = Load {
        batches: Vec::new(),
        grants: Vec::new(),
        lease_in_flight_count_max: 0,
        ack_count: 0,
        nack_count: 0,
    };
    let mut violations = Vec::new();
    for handle in producers {
        let log = handle.join().expect("producer thread panicked");
        load.batches.extend(log.batches);
        violations.extend(log.violations);
    }
    for handle in consumers {
        let log = handle.join().expect("consumer thread panicked");
        load.grants.extend(log.grants);
        load.lease_in_flight_count_max += log.lease_in_flight_count_max;
        load.ack_count += log.ack_count;
        load.nack_count += log.nack_count;
        violations.extend(log.violations);
    }
    fail_on(&violations, "in the answers before the kill");
    (load, kill_ms)
}

/// The enqueues resent after a restart.
struct Retried {
    /// Their positions in the round's batches.
    indices: Vec<usize>,
    /// How many had been stored before the kill (answered 200 duplicate).
    stored_before_count: usize,
}

/// Resends each enqueue that got no answer with its key and exact body: 201 means it was
/// lost whole, 200 duplicate that it had been stored.
fn retry_in_flight(server: &Server, batches: &mut [SentBatch]) -> Retried {
    let mut retried = Retried { indices: Vec::new(), stored_before_count: 0 };
    for (index, batch) in batches.iter_mut().enumerate() {
        if !matches!(batch.outcome, Outcome::InFlight) {
            continue;
        }
        let response = server.enqueue_raw(QUEUE, &batch.request_body, Some(&batch.key));
        let duplicate = match response.status {
            201 => false,
            200 => true,
            _ => panic!("retrying {} after the restart: {response:?}", batch.key),
        };
        assert_eq!(response.body["duplicate"], json!(duplicate), "{response:?}");
        let ids = string_array(&response.body["ids"]);
        assert_eq!(ids.len(), batch.bodies.len(), "retry of {}: {response:?}", batch.key);
        retried.stored_before_count += usize::from(duplicate);
        retried.indices.push(index);
        batch.outcome = Outcome::Stored(ids);
    }
    retried
}

/// Enters the round's confirmed enqueues, then its grants in the order the server granted
/// them (so each is checked against the one before), into the ledger; returns the acked
/// ids, to be read back as `delivered`.
fn record_load(
    ledger: &mut Ledger,
    load: &mut Load,
    round: u64,
    violations: &mut Vec<String>,
) -> BTreeMap<String, ReadBack> {
    for batch in &load.batches {
        if let Outcome::Stored(ids) = &batch.outcome {
            ledger.record_enqueued(ids, &batch.bodies, violations);
        }
    }
    load.grants.sort_by_key(|grant| grant.start_ms);
    let mut read_backs: BTreeMap<String, ReadBack> = BTreeMap::new();
    for grant in &load.grants {
        ledger.record_grant(grant, round, violations);
        if grant.settlement == Settlement::Acked {
            read_backs.entry(grant.id.clone()).or_default().delivered = true;
        }
    }
    read_backs
}

/// After the restart: resends the unanswered enqueues and enters them into the ledger, adds
/// every id enqueued in the round to `read_backs`, and checks that every leased id is one an
/// enqueue returned.
fn settle_enqueues(
    server: &Server,
    ledger: &mut Ledger,
    batches: &mut [SentBatch],
    read_backs: &mut BTreeMap<String, ReadBack>,
    violations: &mut Vec<String>,
) -> Retried {
    let retried = retry_in_flight(server, batches);
    for &index in &retried.indices {
        if let Outcome::Stored(ids) = &batches[index].outcome {
            ledger.record_enqueued(ids, &batches[index].bodies, violations);
        }
    }
    for batch in batches.iter() {
        if let Outcome::Stored(ids) = &batch.outcome {
            for (id, body) in ids.iter().zip(&batch.bodies) {
                read_backs.entry(id.clone()).or_default().body = Some(body.clone());
            }
        }
    }
    for (id, record) in &ledger.messages {
        if record.body.is_none() {
            violations.push(format!("{id} was leased, yet no enqueue returned it"));
        }
    }
    retried
}

/// One kill/restart round with every check; returns the all-states listing and a line for
/// the log.
fn run_round(
    server: &mut Server,
    ledger: &mut Ledger,
    seed: u64,
    round: u64,
    kill_after_ms: u64,
) -> (Vec<Summary>, String) {
    let round_started = Instant::now();
    let (mut load, kill_ms) = load_and_kill(server, seed, round, kill_after_ms);
    let mut violations = Vec::new();
    let mut read_backs = record_load(ledger, &mut load, round, &mut violations);
    let restart_started = Instant::now();
    server.restart();
    let restart_duration = restart_started.elapsed();
    let retried =
        settle_enqueues(server, ledger, &mut load.batches, &mut read_backs, &mut violations);
    fail_on(&violations, "in the ledger before the restart checks");

    let held = ledger.held_at_kill(round);
    let client = server.client();
    let report = watch_expiries(&client, ledger, &held, kill_ms, &read_backs, &mut violations);
    let unseen_count = report.unseen_lease_ids.len() as u64;
    if unseen_count > load.lease_in_flight_count_max {
        violations.push(format!(
            "{unseen_count} leases nobody was told of, but unanswered lease requests asked for \
             at most {}: {:?}",
            load.lease_in_flight_count_max, report.unseen_lease_ids
        ));
    }
    fail_on(&violations, "while leases from before the kill ran out");
    let all = check_quiescent(&client, ledger, &held, &report, round, &mut violations);
    fail_on(&violations, "in the quiescent listing");
    let counts = check_counts(&client, &all, &mut violations);
    fail_on(&violations, "in the counts");

    let line = format!(
        "round {round}: killed after {kill_after_ms} ms; {} batches ({} unanswered, {} of them \
         had been stored), {} grants, {} acked, {} nacked; {} held at the kill ({} seen leased \
         after the restart), {unseen_count} unseen leases; restart {restart_duration:?}; \
         expiry lateness <= {} ms over {} polls; {} read back; counts {counts}; round {:?}",
        load.batches.len(),
        retried.indices.len(),
        retried.stored_before_count,
        load.grants.len(),
        load.ack_count,
        load.nack_count,
        held.len(),
        report.held_seen_live.len(),
        report.lateness_ms_max,
        report.poll_count,
        read_backs.len(),
        round_started.elapsed(),
    );
    (all, line)
}

#[test]
fn sigkill_under_mixed_load_keeps_every_confirmed_change() {
    let seed = env_u64("OUTBOXD_CRASH_SEED").unwrap_or_else(now_ms);
    let rounds = env_u64("OUTBOXD_CRASH_ROUNDS").unwrap_or(20);
    println!(
        "crash_mixed seed = {seed} (replay with OUTBOXD_CRASH_SEED={seed}), rounds = {rounds}"
    );
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut server = Server::start(SERVER_ARGS);
    let mut ledger = Ledger::default();
    let mut last_listing = Vec::new();
    for round in 0..rounds {
        let kill_after_ms = rng.range(KILL_AFTER_MS_MIN, KILL_AFTER_MS_MAX);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            run_round(&mut server, &mut ledger, seed, round, kill_after_ms)
        }));
        match outcome {
            Ok((listing, line)) => {
                println!("{line}");
                last_listing = listing;
            }
            Err(cause) => {
                eprintln!(
                    "crash_mixed FAILED in round {round} of seed {seed} (replay with \
                     OUTBOXD_CRASH_SEED={seed}); server stderr tail:\n{}",
                    stderr_tail(&server.stderr_text())
                );
                panic::resume_unwind(cause);
            }
        }
    }
    let mut violations = Vec::new();
    let drained =
        final_drain(&server.client(), &mut ledger, &last_listing, rounds, &mut violations);
    if !violations.is_empty() {
        eprintln!("crash_mixed FAILED in the final drain, seed {seed} (replay with OUTBOXD_CRASH_SEED={seed})");
    }
    fail_on(&violations, "in the final drain");
    let read_count = read_back_everything(&server.client(), &ledger, &mut violations);
    fail_on(&violations, "reading every confirmed message back at the end");
    println!(
        "crash_mixed: {rounds} rounds, {} messages, {} grants, {} first leases after a kill checked to be attempt + 1 \
         (held at the kills of rounds {:?}), {drained} drained at the end, {read_count} read back, in {:?}",
        ledger.messages.len(),
        ledger.grant_count,
        ledger.redelivery_checked_count,
        ledger.redelivered_rounds,
        started.elapsed()
    );
    assert!(ledger.grant_count > 0, "no lease was granted in {rounds} rounds");
    // The test exists to see messages held at a kill come back: if that happened in too few
    // rounds, it proved little about it, whatever else passed. (Runs so far saw it in every
    // round; a quarter leaves room for short rounds on a slow machine.)
    let wanted_count = (rounds as usize / 4).max(1);
    assert!(
        ledger.redelivered_rounds.len() >= wanted_count,
        "messages held at a kill were leased again after only {} of {rounds} kills (rounds {:?}); \
         at least {wanted_count} wanted",
        ledger.redelivered_rounds.len(),
        ledger.redelivered_rounds
    );
}
