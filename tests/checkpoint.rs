//! Checkpoints keep the write-ahead log bounded under steady writes.
//!
//! Property: with `--checkpoint-wal-bytes N`, the log on disk never holds much more than N plus
//! what is written while one checkpoint runs, however much is written in total; so the replay
//! after a crash is bounded too.
//!
//! Method: the real binary with a 1 MiB threshold takes 60 enqueues of about 1 MiB each; the test
//! samples the size of `wal/` after every request and checks the largest sample. (A trigger that
//! counted growth from the log's size before the previous checkpoint's deletions let the log
//! ratchet up by one threshold per checkpoint, to about 15 MiB here.)

mod common;

use common::Server;
use serde_json::json;

fn wal_bytes(server: &Server) -> u64 {
    std::fs::read_dir(server.data_dir().join("wal"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn the_log_stays_near_the_checkpoint_threshold_under_steady_writes() {
    let threshold_bytes: u64 = 1024 * 1024;
    let server = Server::start(&["--checkpoint-wal-bytes", &threshold_bytes.to_string()]);
    let body = "x".repeat(2000);
    let batch = json!((0..500).map(|_| json!({"body": body})).collect::<Vec<_>>());
    let mut largest_bytes = 0;
    for _ in 0..60 {
        server.enqueue("churn", &batch);
        largest_bytes = largest_bytes.max(wal_bytes(&server));
    }
    let written_bytes = 60 * 500 * 2000;
    assert!(
        largest_bytes < 6 * threshold_bytes,
        "the log reached {largest_bytes} bytes of {written_bytes} written"
    );
    assert_eq!(server.queue_counts("churn")["ready"], 30_000);
}
