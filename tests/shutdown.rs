//! Graceful shutdown: SIGTERM under load loses no acknowledged write and cuts no answer short.
//!
//! Method: producer threads post batches with Idempotency-Keys while a consumer leases, acks
//! two messages of three and holds the third; the server gets SIGTERM in the middle. Every answer
//! that arrives is checked: an enqueue gets `201` with one id per message or `503 shutting_down`
//! (the documented error shape); a lease `200` with messages or `503 shutting_down`; an ack `200`
//! answering `acked` (leases last 20 s, far beyond the test) or `503 shutting_down`. Anything else,
//! a body that does not parse included, fails the test. A request whose answer never arrived (the
//! listener closed) is "unknown" and ends its thread. The process must exit 0.
//!
//! After a restart: every unknown or refused enqueue is sent again with its key and exact body:
//! a refused one (`shutting_down` means "not run") must be stored now (`201`), an unknown one
//! stored now or found stored (`200` duplicate). Then every id an enqueue acknowledged is read back
//! with its exact body; every acked message is `delivered`; every held message is still `leased`
//! with its deadline unchanged; a message whose ack got no answer is `delivered` or still leased.
//! The listing of the queue holds exactly the acknowledged ids, and a final lease returns exactly
//! the listing's `ready` messages: nothing acked and nothing held comes back.

mod common;

use common::{string_array, Client, Response, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const QUEUE: &str = "drain";

/// Messages per enqueue.
const BATCH_SIZE: usize = 10;

/// The consumer's lease: far longer than the test, so every ack of a live lease must succeed.
const LEASE_MS: u64 = 20_000;

/// One enqueue and what came of it.
struct Batch {
    key: String,
    request_body: String,
    /// The message bodies, in order.
    bodies: Vec<Value>,
    outcome: EnqueueOutcome,
}

enum EnqueueOutcome {
    /// 201: these ids, in message order.
    Stored(Vec<String>),
    /// 503 shutting_down: not run, so nothing may be stored.
    Refused,
    /// No answer arrived: stored whole or not at all.
    Unknown,
}

/// A message the consumer leased, and what became of the lease.
#[derive(Debug)]
struct Held {
    lease_expires_at: u64,
    ack: AckOutcome,
}

#[derive(Debug, PartialEq)]
enum AckOutcome {
    /// Not acked on purpose, or the ack was refused with `shutting_down`: still leased.
    NotAcked,
    Acked,
    /// The ack got no answer: delivered, or still leased.
    Unknown,
}

#[derive(Default)]
struct Seen {
    batches: Vec<Batch>,
    leased: BTreeMap<String, Held>,
    /// Answers outside the contract.
    violations: Vec<String>,
}

/// Whether `response` is the documented `503 shutting_down` refusal; any other error is recorded.
fn is_shutting_down(response: &Response) -> bool {
    let error = &response.body["error"];
    response.status == 503
        && error["code"] == "shutting_down"
        && error["message"].as_str().is_some_and(|text| !text.is_empty())
        && error["hint"].as_str().is_some_and(|text| !text.is_empty())
}

fn produce(client: Client, producer: u64, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    for batch in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let bodies: Vec<Value> = (0..BATCH_SIZE)
            .map(|index| json!({ "producer": producer, "batch": batch, "index": index }))
            .collect();
        let messages: Vec<Value> = bodies.iter().map(|body| json!({ "body": body })).collect();
        let request_body = json!({ "messages": messages }).to_string();
        let key = format!("p{producer}-b{batch}");
        let path = format!("/v1/queues/{QUEUE}/messages");
        let answer =
            client.try_request("POST", &path, Some(&request_body), &[("Idempotency-Key", &key)]);
        let (outcome, violation) = match &answer {
            Ok(response) if response.status == 201 && response.body["duplicate"] == false => {
                let ids = string_array(&response.body["ids"]);
                let violation = (ids.len() != BATCH_SIZE)
                    .then(|| format!("enqueue {key}: {} ids for {BATCH_SIZE}", ids.len()));
                (EnqueueOutcome::Stored(ids), violation)
            }
            Ok(response) if is_shutting_down(response) => (EnqueueOutcome::Refused, None),
            Ok(response) => (EnqueueOutcome::Unknown, Some(format!("enqueue {key}: {response:?}"))),
            Err(_) => (EnqueueOutcome::Unknown, None),
        };
        let mut seen = seen.lock().unwrap();
        seen.violations.extend(violation);
        seen.batches.push(Batch { key, request_body, bodies, outcome });
        if answer.is_err() {
            return;
        }
    }
}

fn consume(client: Client, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let lease_path = format!("/v1/queues/{QUEUE}/lease");
    let ack_path = format!("/v1/queues/{QUEUE}/ack");
    while !stop.load(Ordering::Relaxed) {
        let request = json!({ "max": 10, "lease_ms": LEASE_MS, "wait_ms": 50 }).to_string();
        let Ok(response) = client.try_request("POST", &lease_path, Some(&request), &[]) else {
            return;
        };
        if is_shutting_down(&response) {
            continue;
        }
        let Some(messages) =
            response.body["messages"].as_array().filter(|_| response.status == 200)
        else {
            seen.lock().unwrap().violations.push(format!("lease: {response:?}"));
            return;
        };
        for (index, message) in messages.iter().enumerate() {
            let (Some(id), Some(lease), Some(lease_expires_at)) = (
                message["id"].as_str(),
                message["lease"].as_str(),
                message["lease_expires_at"].as_u64(),
            ) else {
                seen.lock().unwrap().violations.push(format!("leased message: {message}"));
                continue;
            };
            let held = Held { lease_expires_at, ack: AckOutcome::NotAcked };
            seen.lock().unwrap().leased.insert(id.to_string(), held);
            if index % 3 == 2 {
                continue;
            }
            let request = json!({ "leases": [lease] }).to_string();
            let answer = client.try_request("POST", &ack_path, Some(&request), &[]);
            let mut seen = seen.lock().unwrap();
            let ack = match &answer {
                Ok(response)
                    if response.status == 200
                        && response.body["results"]
                            == json!([{ "lease": lease, "result": "acked" }]) =>
                {
                    AckOutcome::Acked
                }
                Ok(response) if is_shutting_down(response) => AckOutcome::NotAcked,
                Ok(response) => {
                    seen.violations.push(format!("ack of {id}: {response:?}"));
                    AckOutcome::Unknown
                }
                Err(_) => AckOutcome::Unknown,
            };
            seen.leased.get_mut(id).expect("recorded above").ack = ack;
            if answer.is_err() {
                return;
            }
        }
    }
}

/// Every entry of the queue's listing, all states: id → (state, lease_expires_at).
fn list_all(server: &Server) -> BTreeMap<String, (String, Option<u64>)> {
    let mut listed = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/queues/{QUEUE}/messages?limit=1000");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let response = server.get(&path);
        assert_eq!(response.status, 200, "GET {path}: {response:?}");
        for entry in response.body["messages"].as_array().expect("a messages array") {
            let id = entry["id"].as_str().expect("an id").to_string();
            let state = entry["state"].as_str().expect("a state").to_string();
            let previous = listed.insert(id, (state, entry["lease_expires_at"].as_u64()));
            assert!(previous.is_none(), "listed twice: {entry}");
        }
        match response.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return listed,
        }
    }
}

#[test]
fn sigterm_under_load_loses_nothing_acknowledged_and_cuts_no_answer() {
    let mut server = Server::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut threads = Vec::new();
    for producer in 0..2 {
        let (client, stop, seen) = (server.client(), stop.clone(), seen.clone());
        threads.push(thread::spawn(move || produce(client, producer, stop, seen)));
    }
    {
        let (client, stop, seen) = (server.client(), stop.clone(), seen.clone());
        threads.push(thread::spawn(move || consume(client, stop, seen)));
    }
    thread::sleep(Duration::from_millis(700));
    let status = server.terminate();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("a load thread panicked");
    }
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.violations.is_empty(), "answers outside the contract: {:#?}", seen.violations);
    let stored_count =
        seen.batches.iter().filter(|b| matches!(b.outcome, EnqueueOutcome::Stored(_))).count();
    let acked_count = seen.leased.values().filter(|held| held.ack == AckOutcome::Acked).count();
    assert!(
        stored_count >= 1 && acked_count >= 1,
        "the load ran: {stored_count} batches stored, {acked_count} acks"
    );

    let count_of = |wanted: fn(&EnqueueOutcome) -> bool| {
        seen.batches.iter().filter(|batch| wanted(&batch.outcome)).count()
    };
    println!(
        "before the restart: {stored_count} batches stored, {} refused, {} unanswered; {} leased, \
         {acked_count} acked, {} acks unanswered",
        count_of(|outcome| matches!(outcome, EnqueueOutcome::Refused)),
        count_of(|outcome| matches!(outcome, EnqueueOutcome::Unknown)),
        seen.leased.len(),
        seen.leased.values().filter(|held| held.ack == AckOutcome::Unknown).count(),
    );

    server.restart();
    // Refused and unknown enqueues, sent again with their key and exact body.
    for batch in &mut seen.batches {
        let expected_statuses: &[u16] = match batch.outcome {
            EnqueueOutcome::Stored(_) => continue,
            EnqueueOutcome::Refused => &[201],
            EnqueueOutcome::Unknown => &[200, 201],
        };
        let response = server.enqueue_raw(QUEUE, &batch.request_body, Some(&batch.key));
        assert!(
            expected_statuses.contains(&response.status),
            "resending {}: {response:?}",
            batch.key
        );
        assert_eq!(response.body["duplicate"], json!(response.status == 200), "{response:?}");
        batch.outcome = EnqueueOutcome::Stored(string_array(&response.body["ids"]));
    }

    // Every acknowledged id, body for body, in the state its last answer said.
    let mut acknowledged = BTreeSet::new();
    for batch in &seen.batches {
        let EnqueueOutcome::Stored(ids) = &batch.outcome else { unreachable!("resent above") };
        assert_eq!(ids.len(), batch.bodies.len(), "{}", batch.key);
        for (id, body) in ids.iter().zip(&batch.bodies) {
            let message = server.get_message(id);
            assert_eq!(&message["body"], body, "{id} of {}: {message}", batch.key);
            assert_eq!(message["queue"], QUEUE, "{message}");
            assert!(acknowledged.insert(id.clone()), "{id} given to two messages");
        }
    }
    let listed = list_all(&server);
    let listed_ids: BTreeSet<String> = listed.keys().cloned().collect();
    assert_eq!(listed_ids, acknowledged, "the queue holds exactly the acknowledged messages");
    for (id, held) in &seen.leased {
        let (state, lease_expires_at) = &listed[id];
        let still_leased = state == "leased" && *lease_expires_at == Some(held.lease_expires_at);
        let fine = match held.ack {
            AckOutcome::Acked => state == "delivered",
            AckOutcome::NotAcked => still_leased,
            AckOutcome::Unknown => state == "delivered" || still_leased,
        };
        assert!(
            fine,
            "{id} leased before the shutdown as {held:?} is now {state} {lease_expires_at:?}"
        );
    }

    // Nothing acked or held is handed out again: a lease returns exactly the ready messages.
    let ready: BTreeSet<String> = listed
        .iter()
        .filter(|(_, (state, _))| state == "ready")
        .map(|(id, _)| id.clone())
        .collect();
    let leasable: BTreeSet<String> = server
        .lease_all(QUEUE, 60_000, 0)
        .iter()
        .map(|message| message["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(leasable, ready, "a lease after the restart returns exactly the ready messages");
    assert!(leasable.iter().all(|id| !seen.leased.contains_key(id)), "a leased message came back");
}
