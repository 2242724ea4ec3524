//! Backup, restore and check, end to end.
//!
//! Goal: a backup taken while the server works holds every write acknowledged before it started
//! and restores to a state the server starts from; damaged backups and damaged records are found
//! and named, never silently used; nothing fights a running server over its data directory.
//! Method: the real binary. Producers and a consumer keep a server busy while `outboxd backup
//! --data-dir` (which goes through the server's `GET /v1/admin/backup`) runs; the backup is
//! restored with `outboxd restore`, checked with `outboxd check`, and a server started on it must
//! return every message enqueued (and every ack made) before the backup began. Damage is made by
//! hand: bytes of a backup file cut off or flipped, a catalog record's byte flipped or an index
//! count changed (through `Catalog::put_raw`, in test builds), a byte of a log segment flipped.
//! A server with API tokens must get the token from `--token` or `OUTBOXD_TOKEN`.

mod common;

use common::{string_array, ConfigFile, Server};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

/// Runs `outboxd ARGS...` to completion.
fn outboxd(args: &[&str]) -> Output {
    outboxd_with_token(args, None)
}

/// Runs `outboxd ARGS...` with `OUTBOXD_TOKEN` set to `token` (or unset).
fn outboxd_with_token(args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    command.args(args).env_remove("OUTBOXD_TOKEN");
    if let Some(token) = token {
        command.env("OUTBOXD_TOKEN", token);
    }
    command.output().expect("run outboxd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `outboxd ARGS...` and asserts it succeeded; returns its stdout.
fn outboxd_ok(args: &[&str]) -> String {
    let output = outboxd(args);
    assert!(
        output.status.success(),
        "outboxd {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Runs `outboxd ARGS...` expecting it to fail; returns (stdout, stderr).
fn outboxd_fails(args: &[&str]) -> (String, String) {
    let output = outboxd(args);
    assert!(
        !output.status.success(),
        "outboxd {args:?} should have failed\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    (text(&output.stdout), text(&output.stderr))
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A stopped server's directory with a few messages in two queues, one of them delivered.
fn stopped_server_with_messages() -> (Server, Vec<String>) {
    let mut server = Server::start(&[]);
    let ids = server
        .enqueue("orders", &json!([{"body": {"n": 1}}, {"body": {"n": 2}}, {"body": {"n": 3}}]));
    server.enqueue("emails", &json!([{"body": "hello"}]));
    let leased = server.lease("orders", 1, 30_000, 0);
    let token = leased[0]["lease"].as_str().unwrap().to_string();
    server.ack("orders", &[&token]);
    assert!(server.terminate().success());
    (server, ids)
}

/// What the load threads saw acknowledged, in order.
#[derive(Default)]
struct Acknowledged {
    /// Enqueued message id → the `n` of its body.
    enqueued: HashMap<String, u64>,
    /// Ids whose ack was answered `acked`.
    acked: HashSet<String>,
    /// Enqueue answers other than 201 or the documented `503 overloaded`.
    unexpected: Vec<String>,
}

/// Every id of a queue's listing (all states), following `next_cursor`.
fn listed_ids(server: &Server, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = format!("/v1/queues/{queue}/messages?limit=1000");
        if let Some(cursor) = &cursor {
            request.push_str(&format!("&cursor={cursor}"));
        }
        let response = server.get(&request);
        assert_eq!(response.status, 200, "GET {request}: {response:?}");
        for message in response.body["messages"].as_array().expect("a messages array") {
            ids.push(message["id"].as_str().expect("an id").to_string());
        }
        match response.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return ids,
        }
    }
}

#[test]
fn a_backup_under_load_holds_every_write_acknowledged_before_it_started() {
    // A small checkpoint threshold, so that checkpoints (which delete log segments) run while the
    // backup copies the log.
    let server = Server::start(&["--checkpoint-wal-bytes", "1048576"]);
    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for producer in 0..2u64 {
        let (client, seen, stop) = (server.client(), seen.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            let pad = "x".repeat(1000);
            let mut n = producer * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Value> =
                    (n..n + 5).map(|k| json!({"body": {"n": k, "pad": pad}})).collect();
                let response =
                    client.enqueue_raw("load", &json!({ "messages": batch }).to_string(), None);
                let mut seen = seen.lock().unwrap();
                if response.status == 201 {
                    let ids = string_array(&response.body["ids"]);
                    for (offset, id) in ids.into_iter().enumerate() {
                        seen.enqueued.insert(id, n + offset as u64);
                    }
                } else if response.status != 503 || response.body["error"]["code"] != "overloaded" {
                    seen.unexpected.push(format!("{response:?}"));
                }
                n += 5;
            }
        }));
    }
    {
        let (client, seen, stop) = (server.client(), seen.clone(), stop.clone());
        threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let leased = client.lease("load", 10, 60_000, 0);
                let tokens: Vec<&str> =
                    leased.iter().map(|message| message["lease"].as_str().unwrap()).collect();
                if tokens.is_empty() {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let results = client.ack("load", &tokens);
                let mut seen = seen.lock().unwrap();
                for (message, result) in leased.iter().zip(results) {
                    if result["result"] == "acked" {
                        seen.acked.insert(message["id"].as_str().unwrap().to_string());
                    }
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(700));
    let (enqueued_before, acked_before) = {
        let seen = seen.lock().unwrap();
        (seen.enqueued.clone(), seen.acked.clone())
    };
    let work = tempfile::TempDir::new().unwrap();
    let backup_file = work.path().join("live.backup");
    let stdout =
        outboxd_ok(&["backup", "--data-dir", path(server.data_dir()), "--out", path(&backup_file)]);
    assert!(stdout.contains("taken through the server"), "{stdout}");
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("load thread");
    }
    assert!(enqueued_before.len() >= 50, "the load made too little: {}", enqueued_before.len());
    assert!(!acked_before.is_empty(), "the consumer acked nothing before the backup");
    let unexpected = seen.lock().unwrap().unexpected.clone();
    assert!(unexpected.is_empty(), "enqueue answers outside the contract: {unexpected:#?}");

    let restored = tempfile::TempDir::new().unwrap();
    outboxd_ok(&["restore", "--backup", path(&backup_file), "--data-dir", path(restored.path())]);
    let report = outboxd_ok(&["check", "--data-dir", path(restored.path())]);
    assert!(report.contains("no problems found"), "{report}");

    let copy = Server::start_in(restored, &[]);
    for (id, n) in &enqueued_before {
        let message = copy.get_message(id);
        assert_eq!(message["body"]["n"], json!(n), "message {id}: {message}");
        if acked_before.contains(id) {
            assert_eq!(message["state"], "delivered", "acked before the backup: {message}");
        }
    }
    // The restored queue holds each message once, and only messages some enqueue was given (by
    // the end of the load), each with its body; nothing acked before the backup comes back.
    let enqueued_after = seen.lock().unwrap().enqueued.clone();
    let listed = listed_ids(&copy, "load");
    let distinct: HashSet<&str> = listed.iter().map(String::as_str).collect();
    assert_eq!(distinct.len(), listed.len(), "a message is listed twice");
    for id in &listed {
        let n = enqueued_after.get(id);
        assert!(n.is_some(), "the restored queue holds {id}, which no enqueue was given");
        assert_eq!(copy.get_message(id)["body"]["n"], json!(n), "message {id}");
    }
    let counts = copy.queue_counts("load");
    let total: u64 = counts.as_object().unwrap().values().filter_map(Value::as_u64).sum();
    assert_eq!(total, listed.len() as u64, "the counts {counts} agree with the listing");
    let leased = copy.lease_all("load", 60_000, 0);
    let leased_ids: Vec<&str> =
        leased.iter().map(|message| message["id"].as_str().unwrap()).collect();
    let distinct: HashSet<&str> = leased_ids.iter().copied().collect();
    assert_eq!(distinct.len(), leased_ids.len(), "a message was leased twice");
    assert!(leased_ids.iter().all(|id| !acked_before.contains(*id)), "an acked message came back");
}

#[test]
fn a_stopped_servers_directory_is_backed_up_and_restored_only_into_an_empty_place() {
    let (server, ids) = stopped_server_with_messages();
    let work = tempfile::TempDir::new().unwrap();
    let backup_file = work.path().join("stopped.backup");
    let stdout =
        outboxd_ok(&["backup", "--data-dir", path(server.data_dir()), "--out", path(&backup_file)]);
    assert!(stdout.contains("read directly"), "{stdout}");

    let target = work.path().join("restored");
    outboxd_ok(&["restore", "--backup", path(&backup_file), "--data-dir", path(&target)]);
    // A data directory is refused without --force, and left as it was.
    let old_log = target.join("log").join("from-before");
    std::fs::write(&old_log, b"old").unwrap();
    let (_, stderr) =
        outboxd_fails(&["restore", "--backup", path(&backup_file), "--data-dir", path(&target)]);
    assert!(stderr.contains("is not empty") && stderr.contains("--force"), "{stderr}");
    assert!(old_log.exists(), "a refused restore must not touch the target");
    let force = ["restore", "--backup", path(&backup_file), "--data-dir", path(&target), "--force"];
    // --force replaces a data directory only: anything else in it is named and kept.
    let marker = target.join("keep-me");
    std::fs::write(&marker, b"mine").unwrap();
    let (_, stderr) = outboxd_fails(&force);
    assert!(stderr.contains("is not an outboxd data directory"), "{stderr}");
    assert!(stderr.contains("keep-me"), "the refusal names what is in the way: {stderr}");
    assert!(marker.exists() && old_log.exists(), "a refused restore must not touch the target");
    std::fs::remove_file(&marker).unwrap();
    outboxd_ok(&force);
    assert!(!old_log.exists(), "--force replaces the data directory");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary directories left behind: {leftovers:?}");

    let moved = tempfile::TempDir::new().unwrap();
    std::fs::remove_dir(moved.path()).unwrap();
    std::fs::rename(&target, moved.path()).unwrap();
    let copy = Server::start_in(moved, &[]);
    assert_eq!(copy.get_message(&ids[0])["state"], "delivered");
    assert_eq!(copy.get_message(&ids[1])["body"], json!({"n": 2}));
    assert_eq!(copy.queue_counts("orders")["ready"], 2);
    assert_eq!(copy.queue_counts("emails")["ready"], 1);
}

#[test]
fn a_truncated_or_damaged_backup_is_refused_naming_the_offset() {
    let (server, _) = stopped_server_with_messages();
    let work = tempfile::TempDir::new().unwrap();
    let backup_file = work.path().join("good.backup");
    outboxd_ok(&["backup", "--data-dir", path(server.data_dir()), "--out", path(&backup_file)]);
    let bytes = std::fs::read(&backup_file).unwrap();

    let truncated = work.path().join("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let target = work.path().join("from-truncated");
    let (_, stderr) =
        outboxd_fails(&["restore", "--backup", path(&truncated), "--data-dir", path(&target)]);
    assert!(stderr.contains("truncated at byte offset"), "{stderr}");
    assert!(!target.exists(), "a failed restore must leave nothing behind");

    let damaged = work.path().join("damaged.backup");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let (_, stderr) =
        outboxd_fails(&["restore", "--backup", path(&damaged), "--data-dir", path(&target)]);
    assert!(stderr.contains("damaged at byte offset"), "{stderr}");
    assert!(!target.exists(), "a failed restore must leave nothing behind");
    let (_, stderr) = outboxd_fails(&["check", "--backup", path(&damaged)]);
    assert!(stderr.contains("damaged at byte offset"), "{stderr}");

    let report = outboxd_ok(&["check", "--backup", path(&backup_file)]);
    assert!(report.contains("no problems found"), "{report}");
}

#[test]
fn check_prints_a_summary_of_a_healthy_directory() {
    let (server, _) = stopped_server_with_messages();
    let report = outboxd_ok(&["check", "--data-dir", path(server.data_dir())]);
    assert!(report.contains("no problems found"), "{report}");
    assert!(report.contains("orders: ") && report.contains("emails: "), "{report}");
    let json: Value = serde_json::from_str(&outboxd_ok(&[
        "check",
        "--data-dir",
        path(server.data_dir()),
        "--json",
    ]))
    .expect("--json prints JSON");
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["queues"]["orders"]["ready"], 2, "{json}");
    assert_eq!(json["queues"]["orders"]["delivered"], 1, "{json}");
    assert_eq!(json["queues"]["emails"]["ready"], 1, "{json}");
    assert_eq!(json["catalog"]["page"], 1, "four messages share one page: {json}");
    assert_eq!(json["catalog"]["queue"], 2, "{json}");
    assert_eq!(json["catalog"]["terminal index"], 1, "{json}");
    assert_eq!(json["log"]["content_count"], 4, "every content was read back: {json}");
    assert_eq!(json["problems"], json!([]), "{json}");
}

/// Opens a stopped server's catalog (test builds write raw entries through it), runs `change`,
/// and waits until sled has let go of the directory again.
#[cfg(feature = "testing")]
fn with_catalog(data_dir: &Path, change: impl FnOnce(&outboxd::store::catalog::Catalog)) {
    let catalog = outboxd::store::catalog::Catalog::open(data_dir).expect("open the catalog");
    change(&catalog);
    drop(catalog);
    outboxd::store::wait_until_released(data_dir).expect("sled lets go of the catalog");
}

#[cfg(feature = "testing")]
fn message_id(text: &str) -> outboxd::queue::MessageId {
    outboxd::queue::MessageId::parse(text).expect("a message id")
}

#[cfg(feature = "testing")]
#[test]
fn check_finds_a_damaged_record_and_says_what_to_do() {
    let (server, ids) = stopped_server_with_messages();
    with_catalog(server.data_dir(), |catalog| {
        let key = outboxd::store::keys::history_key(message_id(&ids[1]));
        catalog.put_raw(&key, b"\x01not a history record").unwrap();
    });
    let (stdout, stderr) = outboxd_fails(&["check", "--data-dir", path(server.data_dir())]);
    assert!(stdout.contains(&format!("history message {}: crc mismatch", ids[1])), "{stdout}");
    assert!(stdout.contains("what to do: the server cannot use it: restore"), "{stdout}");
    assert!(stderr.contains("check found 1 problem"), "{stderr}");

    let output = outboxd(&["check", "--data-dir", path(server.data_dir()), "--json"]);
    assert!(!output.status.success());
    let json: Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    assert_eq!(json["ok"], false, "{json}");
    let problems = json["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{json}");
    assert_eq!(problems[0]["part"], "catalog");
    assert_eq!(problems[0]["key"], json!(format!("history message {}", ids[1])));
}

#[cfg(feature = "testing")]
#[test]
fn check_finds_a_damaged_content_in_a_log_segment() {
    let (server, ids) = stopped_server_with_messages();
    let mut location = None;
    with_catalog(server.data_dir(), |catalog| {
        location = catalog.meta(message_id(&ids[2])).unwrap().map(|meta| meta.content);
    });
    let Some(outboxd::queue::ContentLocation::Log { segment, offset, len }) = location else {
        panic!("the content of {} is in the log: {location:?}", ids[2]);
    };
    let segment_path = server.data_dir().join("log").join(format!("{segment:020}.log"));
    let mut bytes = std::fs::read(&segment_path).unwrap();
    bytes[offset as usize + len as usize - 1] ^= 0x20;
    std::fs::write(&segment_path, bytes).unwrap();
    let output = outboxd(&["check", "--data-dir", path(server.data_dir()), "--json"]);
    assert!(!output.status.success(), "a damaged content is a problem");
    let json: Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    let problems = json["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{json}");
    assert_eq!(problems[0]["part"], "log", "{json}");
    assert_eq!(problems[0]["key"], json!(format!("segment {segment} offset {offset}")), "{json}");
    let problem = problems[0]["problem"].as_str().unwrap();
    assert!(problem.contains(&ids[2]) && problem.contains("crc mismatch"), "{problem}");
}

#[test]
fn check_refuses_a_directory_a_server_runs_on_and_backup_goes_through_the_server() {
    let mut server = Server::start(&[]);
    let ids = server.enqueue("live", &json!([{"body": "a"}, {"body": "b"}]));
    let (_, stderr) = outboxd_fails(&["check", "--data-dir", path(server.data_dir())]);
    assert!(stderr.contains("in use by a running server"), "{stderr}");
    assert!(stderr.contains("outboxd check --backup"), "the refusal says what to do: {stderr}");
    assert!(server.data_dir().join("outboxd.addr").exists());

    let work = tempfile::TempDir::new().unwrap();
    let backup_file = work.path().join("by-url.backup");
    let url = server.base_url.clone();
    let stdout = outboxd_ok(&["backup", "--url", &url, "--out", path(&backup_file)]);
    assert!(stdout.contains("taken through the server"), "{stdout}");
    let json: Value =
        serde_json::from_str(&outboxd_ok(&["check", "--backup", path(&backup_file), "--json"]))
            .expect("--json prints JSON");
    assert_eq!(json["queues"]["live"]["ready"], 2, "{json}");
    assert_eq!(json["backup"]["entry_count"].as_u64().map(|count| count > 0), Some(true), "{json}");
    // The backup taken through the server restores to both messages, body for body.
    let restored = tempfile::TempDir::new().unwrap();
    outboxd_ok(&["restore", "--backup", path(&backup_file), "--data-dir", path(restored.path())]);
    let copy = Server::start_in(restored, &[]);
    for (id, body) in ids.iter().zip(["a", "b"]) {
        let message = copy.get_message(id);
        assert_eq!((&message["body"], &message["state"]), (&json!(body), &json!("ready")));
    }
    drop(copy);

    assert!(server.terminate().success());
    assert!(!server.data_dir().join("outboxd.addr").exists(), "removed at a clean shutdown");
}

#[cfg(feature = "testing")]
#[test]
fn check_finds_indexes_and_counts_that_disagree_with_the_pages() {
    use outboxd::queue::{MessageState, QueueId};
    use outboxd::store::{codec, keys};
    let (server, ids) = stopped_server_with_messages();
    with_catalog(server.data_dir(), |catalog| {
        // ids[0] (orders, queue 0) was delivered; the four messages are in page 0.
        assert_eq!(outboxd::queue::page_of(message_id(&ids[0])), 0);
        let terminal = keys::terminal_key(QueueId(0), MessageState::Delivered, 0);
        catalog.put_raw(&terminal, &5u32.to_le_bytes()).unwrap();
        catalog.put_raw(&keys::active_key(0), &9u32.to_le_bytes()).unwrap();
        let mut manifest = catalog.manifest().unwrap().unwrap();
        manifest.terminal_counts[0].delivered = 7;
        catalog.put_raw(keys::MANIFEST_KEY, &codec::encode_manifest(&manifest)).unwrap();
    });
    let output = outboxd(&["check", "--data-dir", path(server.data_dir()), "--json"]);
    assert!(!output.status.success());
    let json: Value = serde_json::from_slice(&output.stdout).expect("--json prints JSON");
    let problems: Vec<&str> = json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|problem| problem["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        problems,
        ["active index page 0", "terminal index queue 0 delivered page 0", "manifest queue 0"],
        "{json}"
    );
    let text = outboxd_fails(&["check", "--data-dir", path(server.data_dir())]).0;
    assert!(text.contains("the index says 5 messages, the page holds 1"), "{text}");
    assert!(text.contains("the manifest counts 0 dead and 7 delivered"), "{text}");
}

#[test]
fn check_sees_the_log_a_killed_server_left_to_replay() {
    let mut server = Server::start(&[]);
    server.enqueue("crashed", &json!([{"body": 1}, {"body": 2}, {"body": 3}]));
    server.kill9();
    let json: Value = serde_json::from_str(&outboxd_ok(&[
        "check",
        "--data-dir",
        path(server.data_dir()),
        "--json",
    ]))
    .expect("--json prints JSON");
    assert!(json["log"]["pending_frame_count"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["queues"]["crashed"]["ready"], 3, "counted after the replay: {json}");
    assert_eq!(json["ok"], true, "{json}");
    // A backup of the directory copies that log too, and restores it.
    let work = tempfile::TempDir::new().unwrap();
    let backup_file = work.path().join("crashed.backup");
    outboxd_ok(&["backup", "--data-dir", path(server.data_dir()), "--out", path(&backup_file)]);
    let json: Value =
        serde_json::from_str(&outboxd_ok(&["check", "--backup", path(&backup_file), "--json"]))
            .expect("--json prints JSON");
    assert!(json["backup"]["frame_count"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(json["queues"]["crashed"]["ready"], 3, "{json}");
    // Neither changed anything: the server still replays and serves the messages.
    server.restart();
    assert_eq!(server.queue_counts("crashed")["ready"], 3);
}

#[test]
fn a_backup_of_the_first_storage_format_is_refused_saying_what_reads_it() {
    let work = tempfile::TempDir::new().unwrap();
    let old = work.path().join("old.backup");
    std::fs::write(&old, b"OUTBOXD-BACKUP 1\n\x10\0\0\0whatever").unwrap();
    let target = work.path().join("target");
    let (_, stderr) =
        outboxd_fails(&["restore", "--backup", path(&old), "--data-dir", path(&target)]);
    assert!(stderr.contains("first storage format"), "{stderr}");
    assert!(stderr.contains("converts it"), "the refusal says what to do: {stderr}");
    assert!(!target.exists(), "a refused restore leaves nothing behind");
    let (_, stderr) = outboxd_fails(&["check", "--backup", path(&old)]);
    assert!(stderr.contains("first storage format"), "{stderr}");
}

#[test]
fn a_backup_through_a_server_with_tokens_sends_the_token() {
    let config = ConfigFile::new(
        r#"
[[tokens]]
name = "ops"
secret = "ops-secret-5e2b8d1f9a"
roles = ["admin", "produce"]

[[tokens]]
name = "producer"
secret = "producer-secret-3c7a0e4b6d"
roles = ["produce"]
"#,
    );
    let server = Server::start(&["--config", config.path()]);
    let work = tempfile::TempDir::new().unwrap();
    let out = work.path().join("tokens.backup");
    let args = ["backup", "--data-dir", path(server.data_dir()), "--out", path(&out)];
    let (_, stderr) = outboxd_fails(&args);
    assert!(stderr.contains("status 401") && stderr.contains("--token"), "{stderr}");
    let refused = outboxd_with_token(&args, Some("producer-secret-3c7a0e4b6d"));
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("status 403"), "{}", text(&refused.stderr));
    assert!(!out.exists(), "a refused backup writes no file");
    let taken = outboxd_with_token(&args, Some("ops-secret-5e2b8d1f9a"));
    assert!(taken.status.success(), "{}", text(&taken.stderr));
    let mut with_flag = args.to_vec();
    with_flag.extend(["--token", "ops-secret-5e2b8d1f9a"]);
    outboxd_ok(&with_flag);
    outboxd_ok(&["check", "--backup", path(&out)]);
}

/// Makes a file or directory look as old as an interrupted run's leftover.
fn age(path: &Path) {
    let old = SystemTime::now() - Duration::from_secs(600);
    std::fs::File::open(path).unwrap().set_modified(old).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn restore_fills_the_target_in_place_so_a_mount_point_works() {
    let (server, ids) = stopped_server_with_messages();
    let work = tempfile::TempDir::new().unwrap();
    let backup_file = work.path().join("in-place.backup");
    outboxd_ok(&["backup", "--data-dir", path(server.data_dir()), "--out", path(&backup_file)]);
    // An existing directory stands for a mount point: it cannot be renamed or replaced, so the
    // restore must fill it rather than swap a new directory in (which changes its inode).
    let target = tempfile::TempDir::new().unwrap();
    let inode = std::fs::metadata(target.path()).unwrap().ino();
    let restore = ["restore", "--backup", path(&backup_file), "--data-dir", path(target.path())];
    outboxd_ok(&restore);
    assert_eq!(std::fs::metadata(target.path()).unwrap().ino(), inode, "the target was replaced");
    assert_eq!(entries(target.path()), ["catalog", "log"], "nothing else is left in the target");
    let mut with_force = restore.to_vec();
    with_force.push("--force");
    std::fs::write(target.path().join("outboxd.addr"), "127.0.0.1:1\n").unwrap();
    outboxd_ok(&with_force);
    assert_eq!(std::fs::metadata(target.path()).unwrap().ino(), inode, "the target was replaced");
    assert_eq!(entries(target.path()), ["catalog", "log"], "a stale address file goes too");
    let parent = target.path().parent().unwrap();
    let beside: Vec<String> = entries(parent)
        .into_iter()
        .filter(|name| name.starts_with(".outboxd-restore-") || name.contains(".replaced-"))
        .collect();
    assert!(beside.is_empty(), "nothing is built beside the target: {beside:?}");

    let copy = Server::start_in(target, &[]);
    assert_eq!(copy.get_message(&ids[0])["state"], "delivered");
    assert_eq!(copy.queue_counts("orders")["ready"], 2);
}

#[test]
fn restore_refuses_to_replace_a_running_servers_directory() {
    let (stopped, _) = stopped_server_with_messages();
    let work = tempfile::TempDir::new().unwrap();
    let backup_file = work.path().join("for-running.backup");
    outboxd_ok(&["backup", "--data-dir", path(stopped.data_dir()), "--out", path(&backup_file)]);
    let running = Server::start(&[]);
    let ids = running.enqueue("kept", &json!([{"body": "still here"}]));
    let (_, stderr) = outboxd_fails(&[
        "restore",
        "--backup",
        path(&backup_file),
        "--data-dir",
        path(running.data_dir()),
        "--force",
    ]);
    assert!(stderr.contains("in use by a running server"), "{stderr}");
    assert_eq!(running.get_message(&ids[0])["body"], json!("still here"));
    let leftovers: Vec<String> = entries(running.data_dir())
        .into_iter()
        .filter(|name| name.starts_with(".outboxd-"))
        .collect();
    assert!(leftovers.is_empty(), "a refused restore leaves nothing: {leftovers:?}");
}

#[test]
fn leftovers_of_interrupted_runs_are_removed_and_those_of_running_ones_kept() {
    let (server, _) = stopped_server_with_messages();
    let work = tempfile::TempDir::new().unwrap();
    // Backups: an old unlocked temporary is a leftover; a young one, or one a running backup
    // holds locked, is not.
    let stale_backup = work.path().join(".outboxd-backup-interrupted");
    let young_backup = work.path().join(".outboxd-backup-young");
    let locked_backup = work.path().join(".outboxd-backup-running");
    for file in [&stale_backup, &young_backup, &locked_backup] {
        std::fs::write(file, b"OUTBOXD-BACKUP 1\n").unwrap();
    }
    age(&stale_backup);
    age(&locked_backup);
    let lock = std::fs::File::open(&locked_backup).unwrap();
    fs2::FileExt::try_lock_exclusive(&lock).unwrap();
    let backup_file = work.path().join("fresh.backup");
    let output =
        outboxd(&["backup", "--data-dir", path(server.data_dir()), "--out", path(&backup_file)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!stale_backup.exists(), "an interrupted backup's file must be removed");
    assert!(text(&output.stderr).contains("left by an interrupted backup"), "it says so");
    assert!(young_backup.exists() && locked_backup.exists(), "a running backup's file is kept");
    drop(lock);

    // Restores: the same inside the target, which counts as empty with only those in it.
    let target = work.path().join("target");
    let stale_restore = target.join(".outboxd-restore-interrupted");
    let young_restore = target.join(".outboxd-restore-young");
    std::fs::create_dir_all(stale_restore.join("catalog")).unwrap();
    std::fs::write(stale_restore.join("catalog").join("db"), b"half").unwrap();
    std::fs::create_dir_all(&young_restore).unwrap();
    age(&stale_restore);
    let output = outboxd(&["restore", "--backup", path(&backup_file), "--data-dir", path(&target)]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("left by an interrupted restore"), "it says so");
    assert_eq!(entries(&target), [".outboxd-restore-young", "catalog", "log"]);
}

#[test]
fn a_stale_address_file_never_leads_a_backup_to_another_server() {
    let other = Server::start(&[]);
    other.enqueue("elsewhere", &json!([{"body": "not this one"}]));
    let server = Server::start(&[]);
    // As if the server's address file were left by an earlier server, and another one now
    // listened at that address.
    let address = other.base_url.trim_start_matches("http://");
    std::fs::write(server.data_dir().join("outboxd.addr"), format!("{address}\n")).unwrap();
    let work = tempfile::TempDir::new().unwrap();
    let out = work.path().join("wrong.backup");
    let (_, stderr) =
        outboxd_fails(&["backup", "--data-dir", path(server.data_dir()), "--out", path(&out)]);
    assert!(stderr.contains("serves the data directory"), "{stderr}");
    assert!(stderr.contains("may be stale"), "{stderr}");
    assert!(!out.exists(), "a refused backup writes no file");
    let (_, stderr) = outboxd_fails(&[
        "backup",
        "--url",
        &other.base_url,
        "--data-dir",
        path(server.data_dir()),
        "--out",
        path(&out),
    ]);
    assert!(stderr.contains("serves the data directory"), "{stderr}");
    // The right pairing passes, through a path that is not canonical too.
    let indirect = other.data_dir().join("log").join("..");
    outboxd_ok(&[
        "backup",
        "--url",
        &other.base_url,
        "--data-dir",
        path(&indirect),
        "--out",
        path(&out),
    ]);
    let json: Value =
        serde_json::from_str(&outboxd_ok(&["check", "--backup", path(&out), "--json"])).unwrap();
    assert_eq!(json["queues"]["elsewhere"]["ready"], 1, "{json}");
}

/// Sends `GET /v1/admin/backup` on a raw connection, reads the status line and stops reading.
#[cfg(feature = "testing")]
fn start_a_backup_and_stop_reading(server: &Server) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let address = server.base_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /v1/admin/backup HTTP/1.1\r\nHost: outboxd\r\n\r\n").unwrap();
    let mut start = [0u8; 12];
    stream.read_exact(&mut start).unwrap();
    assert_eq!(&start, b"HTTP/1.1 200", "the first backup starts");
    stream
}

#[cfg(feature = "testing")]
#[test]
fn one_backup_at_a_time_and_a_client_that_stops_reading_is_dropped() {
    let server = Server::start(&[]);
    // More data than the socket buffers and the stream's channel hold together, so a client that
    // reads nothing stalls the backup.
    let pad = "x".repeat(2000);
    for batch in 0..10 {
        let messages: Vec<Value> =
            (0..1000).map(|n| json!({"body": {"batch": batch, "n": n, "pad": pad}})).collect();
        server.enqueue("big", &json!(messages));
    }
    server.set_failpoint("backup.client_stall_ms", "return(500)");
    let stalled = start_a_backup_and_stop_reading(&server);

    let second = server.get("/v1/admin/backup");
    assert_eq!(second.status, 409, "{second:?}");
    assert_eq!(second.body["error"]["code"], "backup_in_progress", "{second:?}");
    assert!(second.body["error"]["hint"].as_str().unwrap().contains("wait"), "{second:?}");

    // The stalled backup is abandoned after the stall timeout, which frees the slot; meanwhile
    // `outboxd backup` waits for it instead of failing.
    let work = tempfile::TempDir::new().unwrap();
    let out = work.path().join("after.backup");
    let output = outboxd(&["backup", "--url", &server.base_url, "--out", path(&out)]);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("another backup of") && stderr.contains("waiting"), "{stderr}");
    // The log names the cause.
    server.stderr_containing("took no data for 500 ms");
    drop(stalled);
    let json: Value =
        serde_json::from_str(&outboxd_ok(&["check", "--backup", path(&out), "--json"])).unwrap();
    assert_eq!(json["queues"]["big"]["ready"], 10_000, "{json}");
}

#[cfg(feature = "testing")]
#[test]
fn the_address_file_goes_when_the_server_stops_after_a_storage_failure() {
    let mut server = Server::start(&[]);
    assert!(server.data_dir().join("outboxd.addr").exists());
    server.set_failpoint("wal.sync", "return");
    let failed = server.enqueue_raw("doomed", r#"{"messages": [{"body": 1}]}"#, None);
    assert_eq!(failed.status, 503, "{failed:?}");
    let status = server.terminate();
    let log = server.stderr_text();
    assert!(!status.success(), "a stop after a storage failure exits non-zero:\n{log}");
    let left = server.data_dir().join("outboxd.addr").exists();
    assert!(!left, "the address file is removed ({status}):\n{log}");
}
