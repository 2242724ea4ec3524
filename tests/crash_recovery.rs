//! Crash recovery: what outboxd acknowledged survives `kill -9`, exactly once.
//!
//! Property: a 201/200 for an enqueue means the batch is on disk; after SIGKILL and a
//! restart every acknowledged message is present exactly once, a batch is stored whole
//! or not at all, and a retry with the same Idempotency-Key never makes a second copy.
//! Lease state survives too: a message leased at the crash stays leased until its
//! deadline and then comes back with the next attempt number, an acked message never
//! comes back, the attempt count keeps growing across restarts until the message is
//! dead, and idempotency keys are remembered across a crash.
//!
//! Method (sled-style): the real binary runs on a temporary data directory; producer
//! threads post batches continuously while the parent kills the process with SIGKILL
//! at a random moment, then restarts it on the same directory and checks every id it
//! was given by leasing everything: each acknowledged batch whole, each message once with
//! its exact body. After every later crash each earlier round is checked again the same
//! way (every id and body, not a sample), so a crash that damages older data is caught
//! in the round it happens. The kill moments and
//! batch sizes come from a seed that is printed (`OUTBOXD_CRASH_SEED` replays the same
//! choices; the interleaving with the server still varies). `OUTBOXD_CRASH_ROUNDS`
//! sets the number of kill/restart rounds (default 20).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{now_ms, poll_until, string_array, Client, Rng, Server};

/// Producer threads posting batches at the same time.
const PRODUCER_COUNT: u64 = 4;

/// Batches hold 1..=BATCH_SIZE_MAX messages, and each producer pauses 0..=PRODUCER_PAUSE_MS_MAX
/// between batches. After every round every message of every earlier round is read back, which
/// costs time in proportion to rounds² × messages per round; small batches and short pauses keep
/// the messages few (about a thousand a round) while a commit is almost always in flight when
/// the kill comes (four producers, each batch its own commit).
const BATCH_SIZE_MAX: u64 = 5;
const PRODUCER_PAUSE_MS_MAX: u64 = 4;

/// The lease used when a test leases everything to count it: nothing expires meanwhile.
const HOLD_LEASE_MS: u64 = 600_000;

/// Retries after a lease expiry are immediate, so redelivery waits only for the lease.
const NO_BACKOFF: &[&str] =
    &["--backoff-initial-ms", "1", "--backoff-max-ms", "1", "--backoff-jitter", "0"];

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name} must be an integer, got {value:?}")))
}

fn id_of(message: &Value) -> String {
    message["id"].as_str().unwrap_or_else(|| panic!("message without id: {message}")).to_string()
}

fn token(message: &Value) -> String {
    message["lease"]
        .as_str()
        .unwrap_or_else(|| panic!("message without lease: {message}"))
        .to_string()
}

/// One batch a producer sent, identified by (producer, sequence).
struct SentBatch {
    key: String,
    body: String,
    size: usize,
    outcome: Outcome,
}

enum Outcome {
    /// 201 (or 200 on a retry): these ids, in message order, must exist exactly once.
    Stored(Vec<String>),
    /// The connection failed (the kill): the batch may or may not exist, whole.
    InFlight(String),
    /// 503 overloaded: refused, so nothing may exist.
    Refused,
    /// Any other answer breaks the contract; reported at the end of the round.
    Unexpected(String),
}

/// Posts batches until `stop` is set or a request fails at the transport level.
fn produce(
    client: Client,
    queue: String,
    round: u64,
    producer: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<SentBatch> {
    let mut rng = Rng::new(seed ^ (round << 32) ^ (producer << 16) ^ 0x5eed);
    let mut sent = Vec::new();
    for sequence in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let size = rng.range(1, BATCH_SIZE_MAX) as usize;
        let messages: Vec<Value> = (0..size)
            .map(
                |index| json!({ "body": { "r": round, "p": producer, "s": sequence, "i": index } }),
            )
            .collect();
        let body = json!({ "messages": messages }).to_string();
        let key = format!("r{round}-p{producer}-s{sequence}");
        let path = format!("/v1/queues/{queue}/messages");
        let outcome =
            match client.try_request("POST", &path, Some(&body), &[("Idempotency-Key", &key)]) {
                Ok(response)
                    if response.status == 201 && response.body["duplicate"] == json!(false) =>
                {
                    Outcome::Stored(string_array(&response.body["ids"]))
                }
                Ok(response)
                    if response.status == 503
                        && response.body["error"]["code"] == json!("overloaded") =>
                {
                    Outcome::Refused
                }
                Ok(response) => {
                    Outcome::Unexpected(format!("{} {}", response.status, response.body))
                }
                Err(error) => Outcome::InFlight(error),
            };
        let stop_now = matches!(outcome, Outcome::InFlight(_));
        sent.push(SentBatch { key, body, size, outcome });
        if stop_now {
            break;
        }
        thread::sleep(Duration::from_millis(rng.range(0, PRODUCER_PAUSE_MS_MAX)));
    }
    sent
}

/// Sends a batch whose first attempt failed in flight again, with the same key and body:
/// the answer must be 201 (it was lost) or 200 duplicate (it was stored before the kill).
fn retry_in_flight(server: &Server, queue: &str, batch: &mut SentBatch) -> bool {
    let response = server.enqueue_raw(queue, &batch.body, Some(&batch.key));
    let duplicate = match response.status {
        201 => false,
        200 => true,
        _ => panic!("retrying {} after restart: {response:?}", batch.key),
    };
    assert_eq!(response.body["duplicate"], json!(duplicate), "{response:?}");
    batch.outcome = Outcome::Stored(string_array(&response.body["ids"]));
    duplicate
}

/// Leases everything in the round's queue and checks it against what was acknowledged: every
/// acknowledged batch whole, with its ids in order and each message's exact body, and nothing
/// else. Returns every stored message (id → body), then sends them back to `ready`.
fn verify_round(
    server: &Server,
    queue: &str,
    batches: &BTreeMap<(u64, u64), SentBatch>,
) -> BTreeMap<String, Value> {
    let leased = server.lease_all(queue, HOLD_LEASE_MS, 0);
    let mut seen_ids = BTreeSet::new();
    let mut found: BTreeMap<(u64, u64), BTreeMap<u64, String>> = BTreeMap::new();
    for message in &leased {
        let id = id_of(message);
        assert!(seen_ids.insert(id.clone()), "id {id} leased twice in one pass");
        assert_eq!(message["attempt"], json!(1), "a new message's first lease: {message}");
        let body = &message["body"];
        let key = (body["p"].as_u64().unwrap(), body["s"].as_u64().unwrap());
        let index = body["i"].as_u64().unwrap();
        assert!(batches.contains_key(&key), "leased a message nobody sent: {message}");
        let previous = found.entry(key).or_default().insert(index, id);
        assert!(previous.is_none(), "two copies of message {key:?}[{index}]: {message}");
    }

    let mut stored = BTreeMap::new();
    for (key, batch) in batches {
        let present = found.get(key);
        match &batch.outcome {
            Outcome::Stored(ids) => {
                let present =
                    present.unwrap_or_else(|| panic!("acknowledged batch {} lost", batch.key));
                assert_eq!(
                    present.len(),
                    batch.size,
                    "acknowledged batch {} partly lost",
                    batch.key
                );
                for (index, (id, body)) in ids.iter().zip(batch_bodies(batch)).enumerate() {
                    assert_eq!(
                        present.get(&(index as u64)),
                        Some(id),
                        "batch {} index {index} has another id",
                        batch.key
                    );
                    stored.insert(id.clone(), body);
                }
            }
            Outcome::Refused => {
                assert!(present.is_none(), "refused batch {} was stored", batch.key)
            }
            Outcome::InFlight(_) => {
                unreachable!("in-flight batches are retried before verification")
            }
            Outcome::Unexpected(answer) => {
                panic!("batch {} got an answer outside the contract: {answer}", batch.key)
            }
        }
    }
    assert_eq!(leased.len(), stored.len(), "messages found beyond the acknowledged batches");
    // The body each lease returned is the one its enqueue sent.
    for message in &leased {
        assert_eq!(Some(&message["body"]), stored.get(&id_of(message)), "{message}");
    }
    assert_eq!(server.queue_counts(queue)["leased"], json!(stored.len()));
    release(server, queue, &leased);
    stored
}

/// The message bodies a batch sent, in order.
fn batch_bodies(batch: &SentBatch) -> Vec<Value> {
    let request: Value = serde_json::from_str(&batch.body).unwrap();
    request["messages"].as_array().unwrap().iter().map(|message| message["body"].clone()).collect()
}

/// Nacks leased messages with no delay, so that the next check leases them again (and reads
/// their bodies) in one pass: the queue's messages are always all `ready` between checks.
fn release(server: &Server, queue: &str, leased: &[Value]) {
    for chunk in leased.chunks(1000) {
        let items: Vec<Value> =
            chunk.iter().map(|message| json!({ "lease": token(message), "delay_ms": 0 })).collect();
        for (message, result) in chunk.iter().zip(server.nack(queue, &json!(items))) {
            assert_eq!(result["result"], json!("retrying"), "nack of {message}: {result}");
        }
    }
}

/// What a finished round left behind: its queue, every message it stored (id → body), and the
/// attempt its messages' next lease must have.
struct EarlierRound {
    queue: String,
    messages: BTreeMap<String, Value>,
    next_attempt: u64,
}

/// Re-checks an earlier round after a later crash: a lease pass over its queue returns every
/// stored id exactly once, with its exact body and the next attempt number, and nothing else;
/// then the messages go back to `ready`.
fn recheck_round(server: &Server, round: &mut EarlierRound) {
    let EarlierRound { queue, messages, next_attempt } = round;
    let mut leased: Vec<Value> = Vec::with_capacity(messages.len());
    let mut seen = BTreeSet::new();
    // A nack with no delay makes a message due at once; wait (generously) for any still retrying.
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < messages.len() {
        assert!(
            Instant::now() < deadline,
            "{queue} after a later crash: {} of {} acknowledged messages leasable; counts {}",
            seen.len(),
            messages.len(),
            server.queue_counts(queue)
        );
        for message in server.lease(queue, 1000, HOLD_LEASE_MS, 100) {
            let id = id_of(&message);
            let expected = messages.get(&id);
            assert_eq!(Some(&message["body"]), expected, "{queue} after a later crash: {message}");
            assert_eq!(message["attempt"], json!(*next_attempt), "{queue}: {message}");
            assert!(seen.insert(id), "{queue}: leased twice in one pass: {message}");
            leased.push(message);
        }
    }
    let counts = server.queue_counts(queue);
    assert_eq!(counts["leased"], json!(messages.len()), "{queue}: nothing else stored: {counts}");
    release(server, queue, &leased);
    *next_attempt += 1;
}

#[test]
fn sigkill_during_enqueue_stream_loses_no_acknowledged_message() {
    let seed = env_u64("OUTBOXD_CRASH_SEED").unwrap_or_else(now_ms);
    let rounds = env_u64("OUTBOXD_CRASH_ROUNDS").unwrap_or(20);
    println!(
        "crash_recovery seed = {seed} (replay with OUTBOXD_CRASH_SEED={seed}), rounds = {rounds}"
    );
    let mut rng = Rng::new(seed);
    // Every check leases each message once more, so attempts grow by one per round. At most 300
    // ready messages stay in memory: the rest wait in the catalog across the kills.
    let mut server = Server::start(&["--max-attempts", "1000", "--ready-in-memory-max", "300"]);
    // Earlier rounds, re-checked after every later crash.
    let mut earlier_rounds: Vec<EarlierRound> = Vec::new();

    for round in 0..rounds {
        let queue = format!("crash-{round}");
        let kill_after = Duration::from_millis(rng.range(200, 800));
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCER_COUNT)
            .map(|producer| {
                let (client, queue, stop) = (server.client(), queue.clone(), Arc::clone(&stop));
                thread::spawn(move || produce(client, queue, round, producer, seed, stop))
            })
            .collect();
        thread::sleep(kill_after);
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        let mut batches = BTreeMap::new();
        for (producer, handle) in producers.into_iter().enumerate() {
            for (sequence, batch) in
                handle.join().expect("producer panicked").into_iter().enumerate()
            {
                batches.insert((producer as u64, sequence as u64), batch);
            }
        }

        server.restart();
        let mut in_flight_errors = BTreeSet::new();
        let (mut in_flight, mut survived) = (0, 0);
        for batch in batches.values_mut() {
            if let Outcome::InFlight(error) = &batch.outcome {
                in_flight_errors.insert(error.clone());
                in_flight += 1;
                survived += usize::from(retry_in_flight(&server, &queue, batch));
            }
        }
        let stored = verify_round(&server, &queue, &batches);

        // Every earlier round's messages are still there after this round's crash: each id
        // exactly once, with its body.
        let rechecked: usize = earlier_rounds
            .iter_mut()
            .map(|earlier| {
                recheck_round(&server, earlier);
                earlier.messages.len()
            })
            .sum();
        let stored_count = stored.len();
        earlier_rounds.push(EarlierRound {
            queue: queue.clone(),
            messages: stored,
            next_attempt: 2,
        });
        println!(
            "round {round}: killed after {kill_after:?}; {} batches, {stored_count} messages verified, \
             {rechecked} of earlier rounds re-checked; {in_flight} in flight at the kill, {survived} \
             of them had been stored; transport errors: {in_flight_errors:?}",
            batches.len()
        );
        assert!(
            stored_count > 0,
            "round {round}: no enqueue succeeded before the kill\n{}",
            server.stderr_text()
        );
    }
}

#[test]
fn messages_leased_at_the_crash_stay_leased_and_come_back_after_their_lease() {
    let mut server = Server::start(NO_BACKOFF);
    let count = 20;
    let messages: Vec<Value> = (0..count).map(|i| json!({ "body": i })).collect();
    let ids: Vec<String> = server.enqueue("held", &json!(messages));
    // Half are held far longer than any restart takes, so that they must still be leased after
    // it whatever the machine's speed; the other half for a few seconds, so that they come back
    // (through the rebuilt timers when the restart is quick, through recovery when it is not).
    let (long_count, short_lease_ms) = (count / 2, 3000);
    let long = server.lease("held", long_count, HOLD_LEASE_MS, 0);
    let short = server.lease("held", count - long_count, short_lease_ms, 0);
    assert_eq!((long.len(), short.len()), (long_count as usize, (count - long_count) as usize));
    let deadline_of = |message: &Value| message["lease_expires_at"].as_u64().expect("a deadline");
    let long_deadlines: BTreeMap<String, u64> =
        long.iter().map(|message| (id_of(message), deadline_of(message))).collect();
    let short_deadlines: BTreeMap<String, u64> =
        short.iter().map(|message| (id_of(message), deadline_of(message))).collect();

    server.kill9();
    server.restart();
    let short_already_expired = now_ms() >= *short_deadlines.values().min().unwrap();
    for (id, deadline) in &long_deadlines {
        let message = server.get_message(id);
        assert_eq!(message["state"], json!("leased"), "{message}");
        assert_eq!(
            message["lease_expires_at"],
            json!(deadline),
            "the deadline survives: {message}"
        );
        assert_eq!(message["attempts"], json!(1), "{message}");
    }

    // The short leases come back, each no earlier than its deadline, as attempt 2, once; the
    // long ones do not. The wait is bounded generously: a lost timer never fires at all.
    let mut redelivered = BTreeSet::new();
    let wait_deadline = Instant::now() + Duration::from_millis(short_lease_ms + 30_000);
    while redelivered.len() < short_deadlines.len() && Instant::now() < wait_deadline {
        for message in server.lease("held", count, HOLD_LEASE_MS, 1000) {
            let id = id_of(&message);
            let deadline = short_deadlines.get(&id);
            assert!(deadline.is_some(), "a message held for ten minutes came back: {message}");
            assert!(now_ms() >= deadline.copied().unwrap(), "{id} came back before its deadline");
            assert_eq!(message["attempt"], json!(2), "redelivery is the next attempt: {message}");
            assert_eq!(message["body"], json!(ids.iter().position(|x| *x == id).unwrap()));
            assert!(redelivered.insert(id.clone()), "{id} redelivered twice");
        }
    }
    let expected: BTreeSet<String> = short_deadlines.keys().cloned().collect();
    assert_eq!(redelivered, expected, "every short lease held at the crash came back");
    for id in long_deadlines.keys() {
        assert_eq!(server.get_message(id)["state"], json!("leased"), "{id} is still held");
    }
    println!(
        "short leases {} at the restart",
        if short_already_expired { "had expired" } else { "were live" }
    );
}

#[test]
fn messages_acked_before_the_crash_never_come_back() {
    let mut server = Server::start(NO_BACKOFF);
    let count = 20;
    let messages: Vec<Value> = (0..count).map(|i| json!({ "body": i })).collect();
    server.enqueue("acked", &json!(messages));
    let lease_ms = 1000;
    let leased = server.lease("acked", count, lease_ms, 0);
    assert_eq!(leased.len(), count as usize);
    let (to_ack, to_keep) = leased.split_at(count as usize / 2);
    let tokens: Vec<String> = to_ack.iter().map(token).collect();
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    for result in server.ack("acked", &token_refs) {
        assert_eq!(result["result"], json!("acked"), "{result}");
    }
    let acked_ids: BTreeSet<String> = to_ack.iter().map(id_of).collect();
    let kept_ids: BTreeSet<String> = to_keep.iter().map(id_of).collect();

    server.kill9();
    server.restart();
    for id in &acked_ids {
        assert_eq!(server.get_message(id)["state"], json!("delivered"), "acked {id} lost its ack");
    }

    let mut returned = BTreeSet::new();
    // Bounded generously: a lease that never expires after recovery fails here.
    let deadline = Instant::now() + Duration::from_millis(lease_ms + 30_000);
    while returned.len() < kept_ids.len() && Instant::now() < deadline {
        for message in server.lease("acked", count, HOLD_LEASE_MS, 1000) {
            let id = id_of(&message);
            assert!(!acked_ids.contains(&id), "acked message {id} came back: {message}");
            returned.insert(id);
        }
    }
    assert_eq!(returned, kept_ids, "unacked messages should come back after their lease");
    let late = server.lease("acked", count, HOLD_LEASE_MS, 500);
    assert!(late.is_empty(), "more messages came back: {late:?}");
    assert_eq!(server.queue_counts("acked")["delivered"], json!(acked_ids.len()));
}

#[test]
fn attempt_count_survives_restarts_until_dead() {
    let mut server = Server::start(NO_BACKOFF);
    let ids = server.enqueue("attempts", &json!([{ "body": "flaky", "max_attempts": 3 }]));
    for attempt in 1..=3 {
        let leased = server.lease("attempts", 1, 300, 30_000);
        assert_eq!(leased.len(), 1, "delivery {attempt} never came");
        assert_eq!(
            leased[0]["attempt"],
            json!(attempt),
            "attempt number after {} restarts",
            attempt - 1
        );
        server.kill9();
        server.restart();
    }
    let message =
        poll_until(Duration::from_secs(30), "the third expired delivery to go dead", || {
            let message = server.get_message(&ids[0]);
            (message["state"] == json!("dead")).then_some(message)
        });
    assert_eq!(message["attempts"], json!(3), "{message}");
    assert!(
        server.lease("attempts", 1, HOLD_LEASE_MS, 500).is_empty(),
        "a dead message was delivered again"
    );
}

#[test]
fn idempotency_keys_survive_a_crash() {
    let mut server = Server::start(&[]);
    let body = json!({ "messages": [{ "body": "a" }, { "body": "b" }] }).to_string();
    let first = server.enqueue_raw("idem", &body, Some("order-7"));
    assert_eq!(first.status, 201, "{first:?}");

    server.kill9();
    server.restart();
    let again = server.enqueue_raw("idem", &body, Some("order-7"));
    assert_eq!(again.status, 200, "the key is remembered across a crash: {again:?}");
    assert_eq!(again.body["duplicate"], json!(true), "{again:?}");
    assert_eq!(again.body["ids"], first.body["ids"]);
    let other = json!({ "messages": [{ "body": "c" }] }).to_string();
    let conflict = server.enqueue_raw("idem", &other, Some("order-7"));
    assert_eq!(conflict.status, 409, "{conflict:?}");
    assert_eq!(server.lease_all("idem", HOLD_LEASE_MS, 0).len(), 2, "one copy of the batch");
}
