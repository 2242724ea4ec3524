//! Proves that `outboxd bench` end to end delivers what it promises: against a server it spawns
//! itself, every message it enqueued in every phase was leased and acked exactly once, and its
//! JSON report says so with consistent counts. Speed is not asserted (CI machines vary).
//!
//! Method: run the built binary as a user would (`bench --spawn ... --phase all --json`), parse
//! the one JSON object it prints, and check the verdict and the per-phase counts. A second test
//! runs the fsync baseline for a fraction of a second and checks that it measured something.

use serde_json::Value;
use std::process::Command;

const MESSAGE_COUNT: u64 = 3000;

/// Runs `outboxd bench` with `args`; returns the exit success, stdout parsed as JSON, and stderr.
fn bench(args: &[&str]) -> (bool, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("bench")
        .args(args)
        .output()
        .expect("run outboxd bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|error| {
        panic!("stdout is not one JSON object ({error}):\n{stdout}\nstderr:\n{stderr}")
    });
    (output.status.success(), json, stderr)
}

#[test]
fn every_message_of_every_phase_is_consumed_exactly_once() {
    let count = MESSAGE_COUNT.to_string();
    let (success, report, stderr) = bench(&[
        "--spawn",
        "--messages",
        &count,
        "--producers",
        "2",
        "--consumers",
        "2",
        "--batch",
        "50",
        "--phase",
        "all",
        "--json",
    ]);
    let context = format!("report: {report:#}\nstderr:\n{stderr}");
    assert!(success, "bench failed\n{context}");

    let verification = &report["verification"];
    assert_eq!(verification["ok"], Value::Bool(true), "{context}");
    // The enqueue and mixed phases each enqueue MESSAGE_COUNT; consume and mixed ack them.
    let total = 2 * MESSAGE_COUNT;
    assert_eq!(verification["enqueued"], total, "{context}");
    assert_eq!(verification["acked"], total, "{context}");
    assert_eq!(verification["acked_once"], total, "{context}");
    for field in ["duplicates", "missing", "unexpected", "ids_assigned_twice", "redelivered"] {
        assert_eq!(verification[field], 0, "{field}\n{context}");
    }

    let phases = report["phases"].as_array().expect("phases array");
    let names: Vec<&str> = phases.iter().filter_map(|phase| phase["phase"].as_str()).collect();
    assert_eq!(names, ["enqueue", "consume", "mixed"], "{context}");
    for phase in phases {
        assert_eq!(phase["messages"], MESSAGE_COUNT, "{context}");
        assert_eq!(phase["stalled"], Value::Bool(false), "{context}");
        assert_eq!(phase["acks_refused"], 0, "{context}");
        assert!(phase["messages_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{context}");
    }
    // A missing request kind or count is a broken report, not zero requests.
    let requests = |phase: &Value, kind: &str| {
        phase["requests"]
            .as_array()
            .and_then(|requests| requests.iter().find(|request| request["kind"] == kind))
            .and_then(|request| request["count"].as_u64())
            .unwrap_or_else(|| panic!("no {kind} request count in {phase}\n{context}"))
    };
    // 3000 messages in batches of 50 are exactly 60 enqueues; leases and acks come in pairs.
    assert_eq!(requests(&phases[0], "enqueue"), MESSAGE_COUNT / 50, "{context}");
    assert_eq!(requests(&phases[1], "lease"), requests(&phases[1], "ack"), "{context}");
    assert!(requests(&phases[1], "ack") >= MESSAGE_COUNT / 100, "{context}");

    let server = &report["server"];
    assert!(server["vm_hwm_bytes"].as_u64().is_some_and(|bytes| bytes > 0), "{context}");
    assert!(server["data_dir_bytes"].as_u64().is_some_and(|bytes| bytes > 0), "{context}");
}

#[test]
fn fsync_baseline_measures_syncs_in_the_given_directory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let dir_text = dir.path().to_str().expect("UTF-8 temp path");
    let (success, baseline, stderr) =
        bench(&["--fsync-baseline", "--duration-s", "0.3", "--temp-dir", dir_text, "--json"]);
    assert!(success, "{baseline:#}\n{stderr}");
    assert!(baseline["syncs"].as_u64().is_some_and(|count| count > 0), "{baseline:#}");
    assert!(baseline["syncs_per_s"].as_f64().is_some_and(|rate| rate > 0.0), "{baseline:#}");
    assert_eq!(baseline["dir"], dir_text, "{baseline:#}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
    assert!(left.is_empty(), "the scratch file is removed: {left:?}");
}

#[test]
fn a_server_with_tokens_is_measured_with_one_and_refuses_a_run_without() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outboxd.toml");
    std::fs::write(
        &config,
        "[[tokens]]\nname = \"loader\"\nsecret = \"bench-secret-0123456789\"\nroles = [\"produce\", \"consume\"]\n",
    )
    .unwrap();
    let server_arg = format!("--server-arg=--config={}", config.display());
    let common = ["--spawn", &server_arg, "--messages", "200", "--phase", "enqueue", "--json"];
    let (success, report, stderr) =
        bench(&[&common[..], &["--token", "bench-secret-0123456789"]].concat());
    assert!(success, "report: {report:#}\nstderr:\n{stderr}");
    assert_eq!(report["verification"]["enqueued"], 200, "{report:#}");
    assert_eq!(report["plan"]["token"], Value::Bool(true), "the secret is never echoed");

    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("bench")
        .args(common)
        .env_remove("OUTBOXD_TOKEN")
        .output()
        .expect("run outboxd bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("401"), "{stderr}");
}

/// `--rate` paces the producers: 1,000 messages at 2,000 a second cannot take less than half a
/// second (the pacing is a lower bound; a slow machine only makes it longer), and a rate that is
/// not a positive number is a usage error.
#[test]
fn rate_paces_the_producers() {
    let (success, report, stderr) = bench(&[
        "--spawn",
        "--messages",
        "1000",
        "--batch",
        "50",
        "--producers",
        "2",
        "--rate",
        "2000",
        "--phase",
        "enqueue",
        "--json",
    ]);
    assert!(success, "report: {report:#}\nstderr:\n{stderr}");
    assert_eq!(report["verification"]["enqueued"], 1000, "{report:#}");
    assert_eq!(report["plan"]["rate"], 2000.0, "{report:#}");
    let elapsed_s = report["phases"][0]["elapsed_s"].as_f64().expect("elapsed_s");
    assert!(elapsed_s >= 0.45, "1000 messages at 2000/s took only {elapsed_s} s");

    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["bench", "--spawn", "--rate", "0"])
        .output()
        .expect("run outboxd bench");
    assert!(!output.status.success(), "a usage error");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--rate must be a positive number"));
}
