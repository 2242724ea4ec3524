//! The config file, its layering under variables and flags, `outboxd config --print`, and the
//! warning for an open server on a non-loopback address.

mod common;

use common::Server;
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn outboxd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OUTBOXD_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("outboxd.toml");
    std::fs::write(&path, text).expect("write the config file");
    path.display().to_string()
}

fn run(command: &mut Command) -> (bool, String, String) {
    let output = command.output().expect("run outboxd");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stdout, stderr)
}

#[test]
fn print_shows_each_setting_with_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "lease_ms = 5000\nmax_attempts = 4\nretention_ms = 60000\n");
    let (ok, stdout, stderr) = run(outboxd()
        .args(["config", "--print", "--config", &config, "--retention-ms", "1000"])
        .env("OUTBOXD_MAX_ATTEMPTS", "7"));
    assert!(ok, "{stderr}");
    let line = |key: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
            .to_string()
    };
    assert!(line("lease_ms").contains("= 5000") && line("lease_ms").ends_with("# config file"));
    assert!(
        line("max_attempts").contains("= 7") && line("max_attempts").ends_with("# environment")
    );
    assert!(line("retention_ms").contains("= 1000"));
    assert!(line("retention_ms").ends_with("# command line"));
    assert!(line("backoff_jitter").ends_with("# default"));
}

#[test]
fn a_bad_setting_stops_startup_naming_it_its_source_and_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "lease_ms = 0\n");
    let data = dir.path().join("data");
    let (ok, _, stderr) =
        run(outboxd().args(["serve", "--config", &config, "--data-dir"]).arg(&data));
    assert!(!ok);
    assert!(stderr.contains("lease_ms"), "{stderr}");
    assert!(stderr.contains("config file"), "{stderr}");
    assert!(stderr.contains("allowed range 1..="), "{stderr}");
    assert!(!data.exists(), "nothing is written before the config is valid");

    let config = write_config(&dir, "lease_ms = 5000\nlease_msec = 1\n");
    let (ok, _, stderr) = run(outboxd().args(["config", "--config", &config]));
    assert!(!ok);
    assert!(stderr.contains("lease_msec") && stderr.contains("line 2"), "{stderr}");

    let config = write_config(
        &dir,
        "[[tokens]]\nname = \"ops\"\nsecret = \"an-ops\\Qsecret-0123456789\"\nroles = [\"admin\"]\n",
    );
    let (ok, _, stderr) = run(outboxd().args(["config", "--config", &config]));
    assert!(!ok);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(!stderr.contains("secret-0123456789"), "a parse error never quotes the line: {stderr}");

    let (ok, _, stderr) = run(outboxd().args(["config", "--config", "/nonexistent/outboxd.toml"]));
    assert!(!ok);
    assert!(stderr.contains("cannot read the config file /nonexistent/outboxd.toml"), "{stderr}");

    let (ok, _, stderr) = run(outboxd().args(["config"]).env("OUTBOXD_BACKOFF_JITTER", "2"));
    assert!(!ok);
    assert!(
        stderr.contains("OUTBOXD_BACKOFF_JITTER") && stderr.contains("environment"),
        "{stderr}"
    );
}

#[test]
fn settings_from_the_file_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, "max_attempts = 1\nlease_ms = 60000\n");
    let server = Server::start(&["--config", &config]);
    let client = server.client();
    client.enqueue("filed", &json!([{ "body": "x" }]));
    let leased = client.lease("filed", 1, 60_000, 0);
    let lease = leased[0]["lease"].as_str().unwrap().to_string();
    client.nack("filed", &json!([{ "lease": lease, "error": "boom" }]));
    let counts = client.queue_counts("filed");
    assert_eq!(counts["dead"], json!(1), "max_attempts = 1 from the file: {counts}");
}

/// Starts `serve` on `listen` and returns its stderr up to the listening line, then stops it.
fn startup_stderr(listen: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = outboxd()
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir.path().join("data"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outboxd");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("outboxd listening on") {
                let _ = sender.send(());
            }
        }
    });
    let started = receiver.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(started.is_ok(), "the server did not start:\n{stderr}");
    stderr
}

#[test]
fn an_open_server_on_a_public_address_is_announced_loudly() {
    let stderr = startup_stderr("0.0.0.0:0", &[]);
    assert!(stderr.contains("WARNING") && stderr.contains("no API tokens"), "{stderr}");

    let stderr = startup_stderr("127.0.0.1:0", &[]);
    assert!(!stderr.contains("WARNING"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        "[[tokens]]\nname = \"ops\"\nsecret = \"an-ops-secret-0123456789\"\nroles = [\"admin\"]\n",
    );
    let stderr = startup_stderr("0.0.0.0:0", &["--config", &config]);
    assert!(!stderr.contains("WARNING"), "{stderr}");
    assert!(!stderr.contains("an-ops-secret-0123456789"), "{stderr}");
}
