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
//! was given by leasing everything and reading messages back. The kill moments and
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

/// Batches hold 1..=BATCH_SIZE_MAX messages.
const BATCH_SIZE_MAX: u64 = 50;

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

/// Leases everything in the round's queue and checks it against what was acknowledged.
fn verify_round(server: &Server, queue: &str, batches: &BTreeMap<(u64, u64), SentBatch>) -> usize {
    let leased = server.lease_all(queue, HOLD_LEASE_MS, 0);
    let mut seen_ids = BTreeSet::new();
    let mut found: BTreeMap<(u64, u64), BTreeMap<u64, String>> = BTreeMap::new();
    for message in &leased {
        let id = id_of(message);
        assert!(seen_ids.insert(id.clone()), "id {id} leased twice in one pass");
        let body = &message["body"];
        let key = (body["p"].as_u64().unwrap(), body["s"].as_u64().unwrap());
        let index = body["i"].as_u64().unwrap();
        assert!(batches.contains_key(&key), "leased a message nobody sent: {message}");
        let previous = found.entry(key).or_default().insert(index, id);
        assert!(previous.is_none(), "two copies of message {key:?}[{index}]: {message}");
    }

    let mut stored_count = 0;
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
                for (index, id) in ids.iter().enumerate() {
                    assert_eq!(
                        present.get(&(index as u64)),
                        Some(id),
                        "batch {} index {index} has another id",
                        batch.key
                    );
                }
                stored_count += batch.size;
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
    assert_eq!(leased.len(), stored_count, "messages found beyond the acknowledged batches");
    assert_eq!(server.queue_counts(queue)["leased"], json!(stored_count));
    stored_count
}

/// What a finished round left behind: its queue, how many messages it holds, and a
/// sample of (id, body) pairs to read back.
struct EarlierRound {
    queue: String,
    message_count: usize,
    sample: Vec<(String, Value)>,
}

/// Up to `SAMPLE_COUNT_MAX` acknowledged (id, body) pairs, spread over the round's batches.
fn sample_messages(batches: &BTreeMap<(u64, u64), SentBatch>) -> Vec<(String, Value)> {
    const SAMPLE_COUNT_MAX: usize = 300;
    let mut all = Vec::new();
    for batch in batches.values() {
        if let Outcome::Stored(ids) = &batch.outcome {
            let request: Value = serde_json::from_str(&batch.body).unwrap();
            for (id, message) in ids.iter().zip(request["messages"].as_array().unwrap()) {
                all.push((id.clone(), message["body"].clone()));
            }
        }
    }
    let stride = all.len().div_ceil(SAMPLE_COUNT_MAX).max(1);
    all.into_iter().step_by(stride).collect()
}

#[test]
fn sigkill_during_enqueue_stream_loses_no_acknowledged_message() {
    let seed = env_u64("OUTBOXD_CRASH_SEED").unwrap_or_else(now_ms);
    let rounds = env_u64("OUTBOXD_CRASH_ROUNDS").unwrap_or(20);
    println!(
        "crash_recovery seed = {seed} (replay with OUTBOXD_CRASH_SEED={seed}), rounds = {rounds}"
    );
    let mut rng = Rng::new(seed);
    let mut server = Server::start(&[]);
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

        // Earlier rounds' messages are still there after this round's crash: every count,
        // and a sample of the messages read back.
        for EarlierRound { queue: earlier_queue, message_count: expected_count, sample } in
            &earlier_rounds
        {
            let counts = server.queue_counts(earlier_queue);
            let total: u64 =
                counts.as_object().unwrap().values().map(|count| count.as_u64().unwrap()).sum();
            assert_eq!(
                total as usize, *expected_count,
                "{earlier_queue} after a later crash: {counts}"
            );
            for (id, expected_body) in sample {
                let message = server.get_message(id);
                assert_eq!(&message["queue"], &json!(earlier_queue), "{message}");
                assert_eq!(&message["body"], expected_body, "{message}");
            }
        }
        earlier_rounds.push(EarlierRound {
            queue: queue.clone(),
            message_count: stored,
            sample: sample_messages(&batches),
        });
        println!(
            "round {round}: killed after {kill_after:?}; {} batches, {stored} messages verified; \
             {in_flight} in flight at the kill, {survived} of them had been stored; transport errors: {in_flight_errors:?}",
            batches.len()
        );
        assert!(
            stored > 0,
            "round {round}: no enqueue succeeded before the kill\n{}",
            server.stderr_text()
        );
    }
}

#[test]
fn messages_leased_at_the_crash_come_back_after_their_lease() {
    let mut server = Server::start(NO_BACKOFF);
    let count = 20;
    let messages: Vec<Value> = (0..count).map(|i| json!({ "body": i })).collect();
    let ids: BTreeSet<String> = server.enqueue("held", &json!(messages)).into_iter().collect();
    // Long enough to outlast a restart of a debug build.
    let lease_ms = 3000;
    let leased = server.lease("held", count, lease_ms, 0);
    assert_eq!(leased.len(), count as usize);
    let expires: BTreeMap<String, u64> = leased
        .iter()
        .map(|m| (id_of(m), m["lease_expires_at"].as_u64().expect("lease_expires_at")))
        .collect();
    let first_expiry = *expires.values().min().unwrap();

    server.kill9();
    server.restart();
    assert!(
        now_ms() + 200 < first_expiry,
        "restart took longer than the {lease_ms} ms lease; cannot check that leases survived"
    );
    assert!(
        server.lease("held", count, lease_ms, 0).is_empty(),
        "leased messages were handed out again right after restart"
    );
    let sample = expires.keys().next().unwrap();
    let message = server.get_message(sample);
    assert_eq!(message["state"], json!("leased"), "{message}");
    assert_eq!(
        message["lease_expires_at"],
        json!(expires[sample]),
        "the lease deadline survives: {message}"
    );

    let mut redelivered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_millis(lease_ms + 5000);
    while redelivered.len() < count as usize && Instant::now() < deadline {
        for message in server.lease("held", count, HOLD_LEASE_MS, 1000) {
            let id = id_of(&message);
            assert!(now_ms() >= expires[&id], "{id} redelivered before its lease expired");
            assert_eq!(
                message["attempt"],
                json!(2),
                "redelivery after a crash is the next attempt: {message}"
            );
            assert!(redelivered.insert(id.clone()), "{id} redelivered twice");
        }
    }
    assert_eq!(redelivered, ids, "not every leased message came back after its lease");
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
    let deadline = Instant::now() + Duration::from_millis(lease_ms + 5000);
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
        let leased = server.lease("attempts", 1, 300, 5000);
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
        poll_until(Duration::from_secs(5), "the third expired delivery to go dead", || {
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
