//! End-to-end tests of the command-line client (`outboxd send`, `lease`, `ack`, `nack`, `queues`,
//! `messages`, `message`, `retry`, `delete`, `tail`).
//!
//! Goal: what a person or a script sees from each subcommand is right: the ids, tables and JSON
//! it prints, the state it leaves on the server, and its exit status and error text when the
//! server is missing, refuses a request, or the input is bad. Method: each test starts its own
//! `outboxd serve` with the harness and runs the built binary as a client against it with `--url`,
//! stdin and stdout piped (so no progress bar is drawn), then checks the output and, through the
//! harness's HTTP client, the server's state. The event stream's reconnection is checked against
//! a small fake server on a raw socket, which drops the first connection and records the headers
//! of the second. Replies outboxd never gives (a redirect, a gateway error, a request refused
//! mid-body, a listing that changed between pages, an ack that fails part-way) come from a second
//! fake server that answers each connection with a canned reply.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{assert_message_id, string_array, Server};

/// Longest a client run may take before the test gives up on it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// What one client run left behind.
#[derive(Debug)]
struct Run {
    /// The exit status; `None` if it was killed by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("stdout is not one JSON document ({error}): {self:?}"))
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    #[track_caller]
    fn assert_success(&self) -> &Run {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        self
    }

    #[track_caller]
    fn assert_failure(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "expected exit status {code}: {self:#?}");
        assert!(self.stderr.starts_with("outboxd: "), "errors start with `outboxd: `: {self:#?}");
        self
    }
}

/// The client binary with a clean environment for its own variables.
fn client_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    command
        .args(args)
        .env_remove("OUTBOXD_URL")
        .env_remove("OUTBOXD_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the client with `--url` of `server`, feeding `stdin`, and waits for it.
fn run(server: &Server, args: &[&str], stdin: &str) -> Run {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--url", &server.base_url]);
    run_command(client_command(&all), stdin)
}

fn run_command(mut command: Command, stdin: &str) -> Run {
    let mut child = command.spawn().expect("spawn the outboxd client");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_string();
    let writer = thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = wait_with_deadline(child, CLIENT_TIMEOUT);
    let _ = writer.join();
    output
}

/// Waits for a child, killing it at the deadline; collects its output.
fn wait_with_deadline(mut child: Child, timeout: Duration) -> Run {
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the client did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The bodies the harness leases from `queue`, as text (every body here is a JSON string).
fn leased_bodies(server: &Server, queue: &str) -> BTreeSet<String> {
    server
        .lease_all(queue, 60_000, 0)
        .iter()
        .map(|message| message["body"].as_str().unwrap_or("<not a string>").to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// send and queues
// ---------------------------------------------------------------------------------------------

#[test]
fn send_from_arguments_and_stdin_in_batches_then_queues_counts_them() {
    let server = Server::start(&[]);
    let from_arguments = run(&server, &["send", "jobs", "a", "b", "c"], "");
    from_arguments.assert_success();
    let ids = from_arguments.lines();
    assert_eq!(ids.len(), 3, "one id per line: {from_arguments:?}");
    ids.iter().for_each(|id| assert_message_id(id));

    // Five lines and a blank one, two per batch: three batches; --json prints one array.
    let from_stdin = run(&server, &["send", "jobs", "--batch", "2", "--json"], "1\n2\n\n3\r\n4\n5");
    from_stdin.assert_success();
    let stdin_ids = string_array(&from_stdin.json());
    assert_eq!(stdin_ids.len(), 5, "{from_stdin:?}");
    assert!(stdin_ids.iter().all(|id| !ids.contains(&id.as_str())), "new ids");

    let table = run(&server, &["queues"], "");
    table.assert_success();
    let lines = table.lines();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "QUEUE",
            "SCHEDULED",
            "READY",
            "LEASED",
            "RETRYING",
            "DEAD",
            "DELIVERED",
            "PAUSED",
            "OLDEST",
            "READY"
        ],
        "{table:?}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..8], ["jobs", "0", "8", "0", "0", "0", "0", "no"], "{table:?}");

    let json = run(&server, &["queues", "--json"], "");
    json.assert_success();
    let queues = json.json();
    assert_eq!(queues["queues"][0]["name"], json!("jobs"));
    assert_eq!(queues["queues"][0]["counts"]["ready"], json!(8));

    let expected: BTreeSet<String> =
        ["a", "b", "c", "1", "2", "3", "4", "5"].iter().map(|body| body.to_string()).collect();
    assert_eq!(leased_bodies(&server, "jobs"), expected, "text bodies, blank lines skipped");
}

#[test]
fn send_options_reach_every_message_and_keys_are_derived_per_batch() {
    let server = Server::start(&[]);
    let args = [
        "send",
        "orders",
        "--batch",
        "2",
        "--idempotency-key",
        "import-7",
        "-H",
        "tenant=acme",
        "--header",
        "source=cli",
        "--max-attempts",
        "3",
        "--priority",
        "-2",
    ];
    let first = run(&server, &args, "x\ny\nz\n");
    first.assert_success();
    let ids = first.lines().iter().map(|id| id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids.len(), 3, "{first:?}");
    let message = server.get_message(&ids[2]);
    assert_eq!(message["headers"], json!({"source": "cli", "tenant": "acme"}));
    assert_eq!(message["max_attempts"], json!(3));
    assert_eq!(message["priority"], json!(-2));

    // The same input again is a duplicate of each batch: the same ids, no new messages.
    let again = run(&server, &args, "x\ny\nz\n");
    again.assert_success();
    assert_eq!(again.lines(), first.lines(), "{again:?}");
    assert!(again.stderr.contains("batch 1 was already stored with idempotency key import-7-1"));
    assert_eq!(server.queue_counts("orders")["ready"], json!(3));

    // Batch 2 was sent with the key import-7-2 and this exact body.
    let body = r#"{"messages":[{"body":"z","headers":{"source":"cli","tenant":"acme"},"max_attempts":3,"priority":-2}]}"#;
    let replay = server.enqueue_raw("orders", body, Some("import-7-2"));
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body["ids"], json!([ids[2]]));

    // A delay schedules the messages; JSON and base64 bodies are sent as such.
    run(
        &server,
        &["send", "later", "--delay-ms", "600000", "--body-format", "json", r#"{"n": 1}"#],
        "",
    )
    .assert_success();
    assert_eq!(server.queue_counts("later")["scheduled"], json!(1));
    let at = run(&server, &["send", "later", "--deliver-at", "2030-01-31T09:00:00Z", "x"], "");
    at.assert_success();
    assert_eq!(server.get_message(at.lines()[0])["deliver_at"], json!(1_896_080_400_000u64));
    let run_base64 = run(&server, &["send", "bytes", "--body-format", "base64", "AAEC/w=="], "");
    run_base64.assert_success();
    let leased = server.lease("bytes", 1, 60_000, 0);
    assert_eq!(leased[0]["body_base64"], json!("AAEC/w=="));
}

#[test]
fn a_failed_batch_stops_the_send_and_says_where_to_resume() {
    let server = Server::start(&["--message-bytes-max", "8"]);
    let failed = run(&server, &["send", "jobs", "--batch", "2"], "a\nb\nshort\nmuch too long\n");
    failed.assert_failure(1);
    assert_eq!(failed.lines().len(), 2, "the first batch's ids are printed: {failed:?}");
    for expected in [
        "batch 2 was not stored: 413 message_too_large",
        "hint: ",
        "line 4: field body",
        "2 message(s) in 1 batch(es) were stored before it",
        "resume with the input from line 3 on",
    ] {
        assert!(failed.stderr.contains(expected), "stderr lacks {expected:?}: {failed:#?}");
    }
    assert_eq!(server.queue_counts("jobs")["ready"], json!(2), "batch 2 stored nothing");

    // A body that is not JSON stops before its batch is sent; with a key, the advice names the
    // batch number to resume at.
    let args = ["send", "jobs", "--batch", "2", "--body-format", "json", "--idempotency-key", "k"];
    let bad_json = run(&server, &args, "1\n2\n3\n{oops\n");
    bad_json.assert_failure(1);
    assert!(bad_json.stderr.contains("line 4 is not one JSON value"), "{bad_json:#?}");
    assert!(
        bad_json.stderr.contains("from line 3 on and --idempotency-key k --first-batch 2"),
        "{bad_json:#?}"
    );
    // Resuming as advised stores the rest.
    let resumed = run(
        &server,
        &["send", "jobs", "--body-format", "json", "--idempotency-key", "k", "--first-batch", "2"],
        "3\n4\n",
    );
    resumed.assert_success();
    assert_eq!(server.queue_counts("jobs")["ready"], json!(6));
}

// ---------------------------------------------------------------------------------------------
// lease, ack, nack
// ---------------------------------------------------------------------------------------------

#[test]
fn lease_then_ack_round_trip_and_a_second_ack_fails_naming_the_lease() {
    let server = Server::start(&[]);
    run(&server, &["send", "mail", "hello", "line\nbreak"], "").assert_success();

    let leased =
        run(&server, &["lease", "mail", "--max", "2", "--lease-ms", "60000", "--json"], "");
    leased.assert_success();
    let messages = leased.json()["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 2, "{leased:?}");
    let leases: Vec<String> = messages
        .iter()
        .map(|message| message["lease"].as_str().unwrap_or("").to_string())
        .collect();

    let acked = run(&server, &["ack", "mail", &leases[0], &leases[1]], "");
    acked.assert_success();
    assert_eq!(acked.lines()[0].split_whitespace().collect::<Vec<_>>(), ["LEASE", "RESULT"]);
    assert!(acked.lines()[1..].iter().all(|line| line.contains("acked")), "{acked:?}");
    assert_eq!(server.queue_counts("mail")["delivered"], json!(2));

    let again = run(&server, &["ack", "mail", &leases[0], "--json"], "");
    again.assert_failure(1);
    assert_eq!(again.json()["results"][0]["result"], json!("lease_expired"), "results still print");
    assert!(
        again
            .stderr
            .contains(&format!("1 of 1 lease(s) were not acked: {} (lease_expired)", leases[0])),
        "{again:#?}"
    );

    // The table shows bodies on one line.
    run(&server, &["send", "mail", "third"], "").assert_success();
    let table = run(&server, &["lease", "mail"], "");
    table.assert_success();
    let header: Vec<&str> = table.lines()[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "LEASE", "ATTEMPT", "BODY"]);
    assert!(table.lines()[1].ends_with("  1  third"), "{table:?}");
    // A long poll may take longer than --timeout-ms: its wait is added to the timeout.
    let empty = run(&server, &["lease", "mail", "--wait-ms", "1000", "--timeout-ms", "300"], "");
    empty.assert_success();
    assert_eq!(empty.stdout, "", "{empty:?}");
    assert!(empty.stderr.contains("no message of queue mail was ready"), "{empty:?}");
}

#[test]
fn nack_until_dead_then_list_show_retry_and_delete() {
    let server = Server::start(&[]);
    let sent = run(&server, &["send", "hooks", "--max-attempts", "1", "payload"], "");
    sent.assert_success();
    let id = sent.lines()[0].to_string();
    let lease = server.lease("hooks", 1, 60_000, 0)[0]["lease"].as_str().unwrap_or("").to_string();

    let nacked = run(&server, &["nack", "hooks", &lease, "--error", "HTTP 410 gone"], "");
    nacked.assert_success();
    assert!(nacked.lines()[1].contains("dead"), "{nacked:?}");

    // A nack with its own delay: retrying, with the next attempt shown.
    let other = run(&server, &["send", "hooks", "again"], "");
    let lease = server.lease("hooks", 1, 60_000, 0)[0]["lease"].as_str().unwrap_or("").to_string();
    let delayed = run(&server, &["nack", "hooks", &lease, "--delay-ms", "600000"], "");
    delayed.assert_success();
    let row: Vec<&str> = delayed.lines()[1].split_whitespace().collect();
    assert_eq!(row[1], "retrying", "{delayed:?}");
    assert!(row[2].ends_with('Z'), "the next attempt's time: {delayed:?}");
    let retrying = server.get_message(other.lines()[0]);
    assert_eq!(retrying["state"], json!("retrying"));
    assert_eq!(retrying["last_error"]["message"], json!("nacked without an error text"));

    let dead = run(&server, &["messages", "hooks", "--state", "dead"], "");
    dead.assert_success();
    let header: Vec<&str> =
        dead.lines()[0].split("  ").map(str::trim).filter(|cell| !cell.is_empty()).collect();
    assert_eq!(header, ["ID", "STATE", "ATTEMPTS", "ENQUEUED", "UPDATED", "DUE", "LAST ERROR"]);
    assert!(dead.lines()[1].starts_with(&format!("{id}  dead")), "{dead:?}");
    assert!(
        dead.lines()[1].contains("1/1") && dead.lines()[1].ends_with("HTTP 410 gone"),
        "{dead:?}"
    );
    let dead_json = run(&server, &["messages", "hooks", "--state", "dead", "--json"], "");
    assert_eq!(dead_json.json()["messages"][0]["id"], json!(id));

    let shown = run(&server, &["message", &id], "");
    shown.assert_success();
    let lines: Vec<String> = shown
        .lines()
        .iter()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for expected in [
        "id ",
        "state dead",
        "attempts 1 of 1",
        "last error HTTP 410 gone (attempt 1, nacked, ",
        "body payload",
        "AT EVENT ATTEMPT DETAIL",
    ] {
        assert!(
            lines.iter().any(|line| line.starts_with(expected)),
            "lacks {expected:?}: {shown:#?}"
        );
    }
    assert!(
        lines.last().is_some_and(|line| line.ends_with("nacked 1 HTTP 410 gone (dead)")),
        "{shown:#?}"
    );

    let retried = run(&server, &["retry", &id], "");
    retried.assert_success();
    assert_eq!(retried.stdout, format!("{id} is ready (attempts 1 of 1)\n"));
    assert_eq!(server.get_message(&id)["state"], json!("ready"));
    let refused = run(&server, &["retry", &id, "--reset-attempts"], "");
    refused.assert_failure(1);
    assert!(refused.stderr.starts_with("outboxd: 409 invalid_state: "), "{refused:#?}");
    assert!(refused.stderr.contains("\nhint: Retry applies to dead and retrying"), "{refused:#?}");

    run(&server, &["delete", &id], "").assert_success();
    let gone = run(&server, &["message", &id], "");
    gone.assert_failure(1);
    assert!(gone.stderr.starts_with("outboxd: 404 message_not_found: "), "{gone:#?}");
}

#[test]
fn messages_pages_with_a_cursor_and_all_follows_it() {
    let server = Server::start(&[]);
    let sent = run(&server, &["send", "list", "1", "2", "3", "4", "5"], "");
    sent.assert_success();

    let page = run(&server, &["messages", "list", "--limit", "2"], "");
    page.assert_success();
    let lines = page.lines();
    assert_eq!(lines.len(), 4, "header, two rows, the cursor: {page:?}");
    let cursor = lines[3]
        .strip_prefix("next cursor: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cursor line: {page:?}"));
    let next = run(&server, &["messages", "list", "--limit", "2", "--after", cursor, "--json"], "");
    next.assert_success();
    let next_ids = string_array(&json!(next.json()["messages"]
        .as_array()
        .map(|messages| messages.iter().map(|message| message["id"].clone()).collect::<Vec<_>>())));
    assert_eq!(next_ids, sent.lines()[2..4].to_vec());

    let all = run(&server, &["messages", "list", "--limit", "2", "--all", "--json"], "");
    all.assert_success();
    let everything = all.json();
    assert_eq!(everything["messages"].as_array().map(Vec::len), Some(5), "{all:?}");
    assert_eq!(everything["next_cursor"], Value::Null);
    let all_table = run(&server, &["messages", "list", "--limit", "2", "--all"], "");
    assert_eq!(all_table.lines().len(), 6, "header and five rows, no cursor: {all_table:?}");
}

// ---------------------------------------------------------------------------------------------
// tail
// ---------------------------------------------------------------------------------------------

#[test]
fn tail_prints_the_events_produced_while_it_runs() {
    let server = Server::start(&[]);
    server.enqueue("feed", &json!([{"body": "first"}]));
    // Learn the id of that first event: from an id the server no longer holds (0), the stream
    // says so and replays everything it has.
    let first = run(&server, &["tail", "--since", "0", "--count", "1", "--json"], "");
    first.assert_success();
    let lines: Vec<Value> = first
        .lines()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
        .collect();
    assert_eq!(lines[0]["kind"], json!("missed"), "{first:?}");
    assert_eq!(lines[1]["kind"], json!("enqueued"), "{first:?}");
    let first_id = lines[1]["id"].as_u64().unwrap_or_else(|| panic!("no event id: {first:?}"));

    // Follow from that event on, while a message is enqueued, leased and acked.
    let since = first_id.to_string();
    let url = server.base_url.clone();
    let tail = client_command(&[
        "tail", "--queue", "feed", "--since", &since, "--count", "3", "--json", "--url", &url,
    ])
    .spawn()
    .expect("spawn tail");
    let ids = server.enqueue("feed", &json!([{"body": "second"}]));
    // The lease takes the oldest message, the first one.
    let leased = server.lease("feed", 1, 60_000, 0);
    let lease = leased[0]["lease"].as_str().unwrap_or("").to_string();
    let leased_id = leased[0]["id"].clone();
    server.ack("feed", &[&lease]);
    let followed = wait_with_deadline(tail, CLIENT_TIMEOUT);
    followed.assert_success();
    let events: Vec<Value> = followed
        .lines()
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
        .collect();
    let kinds: Vec<&str> =
        events.iter().map(|event| event["kind"].as_str().unwrap_or("?")).collect();
    assert_eq!(kinds, ["enqueued", "leased", "acked"], "{followed:?}");
    assert_eq!(events[0]["message_id"], json!(ids[0]), "{followed:?}");
    assert_eq!(events[1]["message_id"], leased_id, "{followed:?}");
    assert_eq!(events[2]["message_id"], leased_id, "{followed:?}");

    // The human form: one line per event.
    let human = run(
        &server,
        &["tail", "--since", &since, "--count", "2", "--kind", "acked", "--kind", "leased"],
        "",
    );
    human.assert_success();
    assert_eq!(human.lines().len(), 2, "{human:?}");
    assert!(
        human.lines()[0].contains(&format!(
            "leased       feed  {}  attempt 1",
            leased[0]["id"].as_str().unwrap_or("?")
        )),
        "{human:?}"
    );
}

/// A fake event stream: the first connection gets two events and is closed; the second must
/// resume after the last of them. Returns the requests' heads.
fn fake_event_server(listener: TcpListener) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let bodies = [
            "id: 5\nevent: enqueued\ndata: {\"id\":5,\"kind\":\"enqueued\"}\n\n\
             id: 6\nevent: leased\ndata: {\"id\":6,\"kind\":\"leased\"}\n\n",
            ": keep-alive\n\nid: 7\nevent: acked\ndata: {\"id\":7,\"kind\":\"acked\"}\n\n",
        ];
        let mut held = Vec::new();
        for (index, body) in bodies.into_iter().enumerate() {
            let Ok((stream, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone the socket"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let _ = sender.send(head);
            let mut stream: TcpStream = stream;
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
            );
            let _ = stream.write_all(body.as_bytes());
            // The first connection is closed (both handles dropped) at the end of this iteration;
            // the second stays open until the client leaves.
            if index > 0 {
                held.push((stream, reader));
            }
        }
        thread::sleep(CLIENT_TIMEOUT);
    });
    receiver
}

#[test]
fn tail_reconnects_with_last_event_id_and_sends_the_token_and_user_agent() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let heads = fake_event_server(listener);
    let mut command = client_command(&["tail", "--count", "3", "--json", "--url", &url]);
    command.env("OUTBOXD_TOKEN", "s3cret-token");
    let run = run_command(command, "");
    run.assert_success();
    let ids: Vec<u64> = run
        .lines()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok()?["id"].as_u64())
        .collect();
    assert_eq!(ids, [5, 6, 7], "{run:?}");
    assert!(run.stderr.contains("reconnecting after event 6"), "{run:#?}");
    assert!(!run.stderr.contains("s3cret-token"), "the token is never printed: {run:#?}");

    let first =
        heads.recv_timeout(Duration::from_secs(1)).expect("first request").to_ascii_lowercase();
    let second =
        heads.recv_timeout(Duration::from_secs(1)).expect("second request").to_ascii_lowercase();
    assert!(first.starts_with("get /v1/events http/1.1"), "{first}");
    assert!(!first.contains("last-event-id"), "{first}");
    assert!(second.contains("last-event-id: 6\r\n"), "{second}");
    for head in [&first, &second] {
        assert!(head.contains("authorization: bearer s3cret-token\r\n"), "{head}");
        assert!(
            head.contains(&format!("user-agent: outboxd-cli/{}\r\n", env!("CARGO_PKG_VERSION"))),
            "{head}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unreachable_server_is_named_with_advice_and_the_token_stays_secret() {
    // A port nobody listens on: bind it, then let it go.
    let port =
        TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [&["queues"][..], &["send", "q", "x"], &["tail"]] {
        let mut command = client_command(args);
        command.env("OUTBOXD_URL", &url).env("OUTBOXD_TOKEN", "s3cret-token");
        let run = run_command(command, "");
        run.assert_failure(1);
        assert!(run.stderr.contains(&format!("cannot reach the server at {url}")), "{run:#?}");
        assert!(run.stderr.contains("--url"), "{run:#?}");
        assert!(!run.stderr.contains("s3cret-token"), "{run:#?}");
    }
}

#[test]
fn a_server_that_does_not_answer_times_out_after_timeout_ms() {
    // A listener that accepts connections (the kernel does) but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    // `run_command` fails the test if the client has not exited by itself within CLIENT_TIMEOUT.
    let run = run_command(client_command(&["queues", "--timeout-ms", "300", "--url", &url]), "");
    run.assert_failure(1);
    assert!(
        run.stderr.contains(&format!("the server at {url} did not answer within 300 ms")),
        "{run:#?}"
    );
    drop(listener);
}

#[test]
fn server_errors_print_status_code_message_and_hint() {
    let server = Server::start(&[]);
    let run = run(&server, &["send", "bad name!", "x"], "");
    run.assert_failure(1);
    let mut lines = run.stderr.lines();
    let first = lines.next().unwrap_or_default();
    assert!(first.starts_with("outboxd: 400 invalid_queue_name: "), "{run:#?}");
    assert!(lines.next().unwrap_or_default().starts_with("hint: "), "{run:#?}");
    assert_eq!(run.stdout, "");
}

#[test]
fn bad_local_input_is_refused_before_any_request() {
    let server = Server::start(&[]);
    let no_equals = run(&server, &["send", "q", "x", "--header", "tenant"], "");
    no_equals.assert_failure_usage();
    assert!(no_equals.stderr.contains("NAME=VALUE"), "{no_equals:#?}");

    let https = run_command(client_command(&["queues", "--url", "https://example.com"]), "");
    https.assert_failure(1);
    assert!(https.stderr.contains("must start with http://"), "{https:#?}");

    let nothing = run(&server, &["send", "q"], "\n\n");
    nothing.assert_failure(1);
    assert!(nothing.stderr.contains("nothing to send"), "{nothing:#?}");

    let not_hex = run(&server, &["send", "q", "--body-format", "base64", "***"], "");
    not_hex.assert_failure(1);
    assert!(not_hex.stderr.contains("argument 1 is not standard base64"), "{not_hex:#?}");
    assert!(server.get("/v1/queues").body["queues"] == json!([]), "nothing was stored");
}

impl Run {
    /// clap's usage errors: status 2, `error: …` on stderr.
    #[track_caller]
    fn assert_failure_usage(&self) {
        assert_eq!(self.code, Some(2), "expected a usage error: {self:#?}");
        assert!(self.stderr.starts_with("error: "), "{self:#?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Closed stdout, refused requests and replies that are not the API's
// ---------------------------------------------------------------------------------------------

/// One reply of [`fake_http_server`], and whether the request's body is read before it is sent.
struct Canned {
    reply: String,
    read_body: bool,
}

/// A reply with a body (`Content-Length` set), after which the connection closes.
fn canned(status: &str, content_type: &str, body: &str) -> Canned {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    Canned { reply, read_body: true }
}

/// An event stream that ends when the connection closes.
fn canned_stream(body: &str) -> Canned {
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n{body}"
    );
    Canned { reply, read_body: true }
}

/// A fake server on a raw socket: one connection per canned reply, in order. Returns its URL and
/// each request (head, then body) as it arrived.
fn fake_http_server(replies: Vec<Canned>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for canned in replies {
            let Ok((stream, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone the socket"));
            let mut request = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                request.push_str(&line);
            }
            let length = request
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0usize);
            if canned.read_body {
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                request.push_str(&String::from_utf8_lossy(&body));
            }
            let _ = sender.send(request);
            let mut stream: TcpStream = stream;
            let _ = stream.write_all(canned.reply.as_bytes());
            // Dropping the socket closes it; with a body left unread, the peer gets a reset.
        }
    });
    (url, receiver)
}

/// Runs the client with its stdout already closed, as behind `| head -1` once head has left.
fn run_with_stdout_closed(args: &[&str], stdin: String) -> Run {
    let mut child = client_command(args).spawn().expect("spawn the outboxd client");
    drop(child.stdout.take());
    let mut input = child.stdin.take().expect("piped stdin");
    let writer = thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break status;
        }
        assert!(Instant::now() < deadline, "the client did not exit in time");
        thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Run { code: status.code(), stdout: String::new(), stderr: stderr.join().expect("stderr") }
}

#[test]
fn send_stores_all_of_stdin_when_stdout_closes_and_lease_fails_then() {
    let server = Server::start(&[]);
    let url = server.base_url.clone();
    let lines: String = (1..=2000).map(|number| format!("{number}\n")).collect();
    let sent = run_with_stdout_closed(&["send", "jobs", "--batch", "100", "--url", &url], lines);
    assert_eq!(sent.code, Some(0), "{sent:#?}");
    assert_eq!(
        sent.stderr.matches("stdout closed; sending the rest without printing ids").count(),
        1,
        "{sent:#?}"
    );
    assert_eq!(server.queue_counts("jobs")["ready"], json!(2000), "every line was stored");

    // With --json the ids are printed at the end: all is stored, and the note says so.
    let json = run_with_stdout_closed(&["send", "other", "--json", "--url", &url], "a\nb\n".into());
    assert_eq!(json.code, Some(0), "{json:#?}");
    assert!(json.stderr.contains("all 2 message(s) were stored"), "{json:#?}");

    // A lease whose tokens cannot be printed is lost work: status 1, not a quiet 0.
    let lease = run_with_stdout_closed(&["lease", "jobs", "--url", &url], String::new());
    lease.assert_failure(1);
    assert!(lease.stderr.contains("writing the output"), "{lease:#?}");
    // A listing loses nothing: quiet, status 0.
    let listing = run_with_stdout_closed(&["queues", "--url", &url], String::new());
    assert_eq!((listing.code, listing.stderr.as_str()), (Some(0), ""), "{listing:#?}");
}

#[test]
fn a_request_refused_while_its_body_is_sent_names_the_request_size_not_a_dead_server() {
    // The server answers 413 from the head and closes with the body unread, as outboxd does for
    // a request above its --request-bytes-max.
    let mut refused = canned("413 Payload Too Large", "application/json", "{}");
    refused.read_body = false;
    let (url, requests) = fake_http_server(vec![refused]);
    let line = format!("{}\n", "x".repeat(1024 * 1024));
    let run = run_command(
        client_command(&["send", "big", "--batch-bytes", "67108864", "--url", &url]),
        &line.repeat(24),
    );
    run.assert_failure(1);
    assert!(requests.recv_timeout(Duration::from_secs(5)).is_ok(), "the request arrived");
    for expected in ["probably refused", "--request-bytes-max", "--batch-bytes", "--batch"] {
        assert!(run.stderr.contains(expected), "stderr lacks {expected:?}: {run:#?}");
    }
    assert!(!run.stderr.contains("outboxd serve"), "not a server that is down: {run:#?}");

    let too_small = run_command(client_command(&["send", "q", "--batch-bytes", "1000", "x"]), "");
    too_small.assert_failure_usage();
}

#[test]
fn redirects_foreign_replies_and_non_streams_are_failures() {
    let id = "0000000000000001";
    let (url, _requests) = fake_http_server(vec![
        Canned {
            reply: "HTTP/1.1 301 Moved Permanently\r\nLocation: http://elsewhere:7070/v1/x\r\n\
                    Content-Length: 0\r\nConnection: close\r\n\r\n"
                .into(),
            read_body: true,
        },
        canned("200 OK", "application/json", r#"{"ok":true}"#),
        canned("200 OK", "application/json", r#"{"queues":[]}"#),
    ]);
    let redirected = run_command(client_command(&["delete", id, "--url", &url]), "");
    redirected.assert_failure(1);
    assert_eq!(redirected.stdout, "", "nothing is reported deleted: {redirected:#?}");
    assert!(redirected.stderr.starts_with("outboxd: 301: "), "{redirected:#?}");
    assert!(
        redirected.stderr.contains("redirects to http://elsewhere:7070/v1/x")
            && redirected.stderr.contains("does not follow redirects"),
        "{redirected:#?}"
    );

    let not_deleted = run_command(client_command(&["delete", id, "--url", &url]), "");
    not_deleted.assert_failure(1);
    assert_eq!(not_deleted.stdout, "", "{not_deleted:#?}");
    assert!(not_deleted.stderr.contains("the reply to the delete is not"), "{not_deleted:#?}");

    let not_a_stream = run_command(client_command(&["tail", "--url", &url]), "");
    not_a_stream.assert_failure(1);
    assert!(
        not_a_stream
            .stderr
            .contains("answered with Content-Type \"application/json\", not text/event-stream"),
        "{not_a_stream:#?}"
    );
}

#[test]
fn an_ack_of_many_tokens_that_fails_part_way_prints_what_was_done() {
    let done: Vec<Value> = (0..1000).map(|_| json!({"result": "acked"})).collect();
    let (url, requests) = fake_http_server(vec![
        canned("200 OK", "application/json", &json!({ "results": done }).to_string()),
        canned(
            "503 Service Unavailable",
            "application/json",
            r#"{"error":{"code":"unavailable","message":"shutting down"}}"#,
        ),
    ]);
    let tokens: Vec<String> = (0..1001).map(|index| format!("{index:032x}")).collect();
    let mut args = vec!["ack", "q"];
    args.extend(tokens.iter().map(String::as_str));
    args.extend(["--url", &url]);
    let run = run_command(client_command(&args), "");
    run.assert_failure(1);
    assert_eq!(run.lines().len(), 1001, "the header and 1000 results: {}", run.stderr);
    assert!(run.lines()[1000].starts_with(&format!("{}  acked", tokens[999])));
    for expected in [
        "the first 1000 of 1001 lease token(s) were processed",
        "503 unavailable: shutting down",
        "tokens from number 1001 on",
    ] {
        assert!(run.stderr.contains(expected), "stderr lacks {expected:?}: {}", run.stderr);
    }
    assert_eq!(requests.iter().count(), 2);
}

#[test]
fn messages_all_lists_a_message_that_moved_between_pages_once() {
    let message = |id: &str, state: &str| json!({"id": id, "state": state});
    let (url, requests) = fake_http_server(vec![
        canned(
            "200 OK",
            "application/json",
            &json!({"messages": [message("a", "ready"), message("b", "ready")], "next_cursor": "ready.b"})
                .to_string(),
        ),
        canned(
            "200 OK",
            "application/json",
            &json!({"messages": [message("b", "leased"), message("c", "leased")], "next_cursor": null})
                .to_string(),
        ),
    ]);
    let run = run_command(client_command(&["messages", "q", "--all", "--json", "--url", &url]), "");
    run.assert_success();
    let listing = run.json();
    let ids: Vec<&str> = listing["messages"]
        .as_array()
        .map(|messages| messages.iter().filter_map(|message| message["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["a", "b", "c"], "{run:#?}");
    let second = requests.iter().nth(1).unwrap_or_default();
    assert!(second.contains("cursor=ready.b"), "{second}");
}

#[test]
fn tail_retries_a_gateway_error_while_reconnecting() {
    let (url, _requests) = fake_http_server(vec![
        canned_stream("id: 1\nevent: acked\ndata: {\"id\":1}\n\n"),
        canned("503 Service Unavailable", "text/html", "<html>upstream restarting</html>"),
        canned("502 Bad Gateway", "text/html", "<html>bad gateway</html>"),
        canned_stream("id: 2\nevent: acked\ndata: {\"id\":2}\n\n"),
    ]);
    let run = run_command(client_command(&["tail", "--count", "2", "--json", "--url", &url]), "");
    run.assert_success();
    assert_eq!(run.lines(), ["{\"id\":1}", "{\"id\":2}"], "{run:#?}");
    assert!(run.stderr.contains("answered 503; retrying"), "{run:#?}");
    assert!(run.stderr.contains("answered 502; retrying"), "{run:#?}");
}

#[test]
fn empty_tokens_are_refused_locally_and_url_passwords_are_never_printed() {
    // A port nobody listens on: a request would fail with `cannot reach`.
    let port =
        TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
    let url = format!("http://127.0.0.1:{port}");
    for verb in ["ack", "nack"] {
        let run = run_command(client_command(&[verb, "q", "00ab", "", "--url", &url]), "");
        run.assert_failure(1);
        assert!(run.stderr.contains("lease token 2 of 2 is empty"), "{run:#?}");
    }

    let with_password = format!("http://ann:hunter2@127.0.0.1:{port}");
    let unreachable = run_command(client_command(&["queues", "--url", &with_password]), "");
    unreachable.assert_failure(1);
    assert!(
        unreachable
            .stderr
            .contains(&format!("cannot reach the server at http://ann:***@127.0.0.1:{port}")),
        "{unreachable:#?}"
    );
    let not_http =
        run_command(client_command(&["queues", "--url", "https://ann:hunter2@host"]), "");
    not_http.assert_failure(1);
    for run in [&unreachable, &not_http] {
        assert!(!run.stderr.contains("hunter2"), "{run:#?}");
    }
}
