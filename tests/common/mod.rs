//! Test harness shared by the end-to-end suites: the real `outboxd` binary on an
//! ephemeral port with a temporary data directory, and a tiny blocking HTTP client.
//!
//! Every test starts its own `Server`, so tests can run in parallel without sharing
//! state. The data directory belongs to the `Server` and outlives `kill9` and
//! `restart`, which is what the crash tests need: a process dies, a new one opens the
//! same files, and the test checks what survived.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How long a freshly spawned server may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of the server's stderr is kept for failure messages (the tail is kept).
const STDERR_KEPT_BYTES_MAX: usize = 64 * 1024;

/// The line the server prints on stdout once it accepts connections.
const LISTENING_PREFIX: &str = "outboxd listening on ";

/// A running `outboxd serve` process plus the directory it stores its data in.
///
/// Dereferences to a [`Client`] bound to the current process, so tests call
/// `server.enqueue(...)` directly. After `restart` the port changes and the client
/// is rebuilt; clients taken earlier with [`Server::client`] point at the old port.
pub struct Server {
    /// The running child, or `None` between `kill9`/`terminate` and `restart`.
    child: Option<Child>,
    /// The data directory; deleted when the `Server` is dropped, never on restart.
    data_dir: tempfile::TempDir,
    /// Flags appended after `serve --listen ... --data-dir ...`, reused on restart.
    extra_args: Vec<String>,
    /// Environment variables set for the process (on top of the test's), reused on restart.
    env: Vec<(String, String)>,
    /// The tail of everything the server wrote to stderr, across restarts.
    stderr: Arc<Mutex<String>>,
    /// A client for the current process.
    client: Client,
}

impl Server {
    /// Spawns the binary on 127.0.0.1:0 with a fresh temporary data directory and waits
    /// until it prints its listening line.
    pub fn start(extra_args: &[&str]) -> Server {
        let data_dir = tempfile::Builder::new()
            .prefix("outboxd-test-")
            .tempdir()
            .expect("create temporary data directory");
        Server::start_in(data_dir, extra_args)
    }

    /// Like [`Server::start`], with environment variables set for the server process (for
    /// example the variable a token's `secret_env` names).
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let data_dir = tempfile::Builder::new()
            .prefix("outboxd-test-")
            .tempdir()
            .expect("create temporary data directory");
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> =
            env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (child, client) = spawn(data_dir.path(), &extra_args, &env, &stderr);
        Server { child: Some(child), data_dir, extra_args, env, stderr, client }
    }

    /// Like [`Server::start`], with a data directory the test prepared (for example on a small
    /// tmpfs); it is deleted when the `Server` is dropped.
    pub fn start_in(data_dir: tempfile::TempDir, extra_args: &[&str]) -> Server {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (child, client) = spawn(data_dir.path(), &extra_args, &[], &stderr);
        Server { child: Some(child), data_dir, extra_args, env: Vec::new(), stderr, client }
    }

    /// Starts a new process on the same data directory with the same flags.
    ///
    /// Meant to follow `kill9` or `terminate`; if the old process is still running it
    /// is killed with SIGKILL first so two processes never share the directory.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        append_stderr(&self.stderr, "\n----- outboxd restarted -----\n");
        let (child, client) =
            spawn(self.data_dir.path(), &self.extra_args, &self.env, &self.stderr);
        self.child = Some(child);
        self.client = client;
    }

    /// Kills the process with SIGKILL (`Child::kill` is SIGKILL on Unix) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to 10 s for the process to exit; returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("terminate: server is not running");
        let pid = child.id().to_string();
        let sent = Command::new("kill").arg(&pid).status().expect("run kill(1)");
        assert!(sent.success(), "kill {pid} failed: {sent}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait for outboxd") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "outboxd did not exit within 10 s of SIGTERM\nstderr:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A clone of the client bound to the current process, for use from other threads.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The kept tail of the server's stderr.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The kept tail of the server's stderr once it contains `needle`. A line the server logged
    /// a moment ago may not have been read from its pipe yet, so this waits for it (up to 10 s,
    /// which only a line that never comes reaches) instead of reading once.
    pub fn stderr_containing(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.stderr_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the server's stderr never showed {needle:?}; it holds:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }
}

impl std::ops::Deref for Server {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawns one process and waits for its listening line.
fn spawn(
    data_dir: &std::path::Path,
    extra_args: &[String],
    env: &[(String, String)],
    stderr: &Arc<Mutex<String>>,
) -> (Child, Client) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn outboxd (built by cargo for this test)");

    // stderr is drained for the whole life of the process so the server never blocks
    // on a full pipe, and the tail is kept for failure messages.
    let mut child_stderr = child.stderr.take().unwrap();
    let stderr_buffer = Arc::clone(stderr);
    thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match child_stderr.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => append_stderr(&stderr_buffer, &String::from_utf8_lossy(&chunk[..n])),
            }
        }
    });

    // stdout: the first listening line is sent back, later lines are drained.
    let child_stdout = child.stdout.take().unwrap();
    let (address_sender, address_receiver) = mpsc::channel::<String>();
    thread::spawn(move || {
        let mut sender = Some(address_sender);
        for line in BufReader::new(child_stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(address) = line.trim().strip_prefix(LISTENING_PREFIX) {
                if let Some(sender) = sender.take() {
                    let _ = sender.send(address.to_string());
                }
            }
        }
    });

    let address = match address_receiver.recv_timeout(STARTUP_TIMEOUT) {
        Ok(address) => address,
        Err(error) => {
            let _ = child.kill();
            let status = child.wait();
            // Give the stderr thread a moment to collect the last lines.
            thread::sleep(Duration::from_millis(200));
            panic!(
                "outboxd did not print `{LISTENING_PREFIX}ADDR` ({error}); exit: {status:?}\nargs: {extra_args:?}\nstderr:\n{}",
                stderr.lock().unwrap()
            );
        }
    };
    assert!(
        address.starts_with("127.0.0.1:") && address.rsplit(':').next().unwrap() != "0",
        "unexpected listening address {address:?}"
    );
    (child, Client::new(&format!("http://{address}"), Arc::clone(stderr)))
}

fn append_stderr(buffer: &Mutex<String>, text: &str) {
    let mut buffer = buffer.lock().unwrap();
    buffer.push_str(text);
    if buffer.len() > STDERR_KEPT_BYTES_MAX {
        let mut cut = buffer.len() - STDERR_KEPT_BYTES_MAX;
        while !buffer.is_char_boundary(cut) {
            cut += 1;
        }
        buffer.drain(..cut);
    }
}

/// One HTTP response: status, parsed JSON body and headers (names lowercased).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The body parsed as JSON; `Value::Null` when empty, `Value::String(raw)` when
    /// the body is not JSON (which fails any shape assertion that follows).
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }
}

/// A blocking HTTP client for one server process.
#[derive(Clone)]
pub struct Client {
    pub base_url: String,
    agent: ureq::Agent,
    /// The server's stderr, quoted when a request fails at the transport level.
    stderr: Arc<Mutex<String>>,
    /// An API token secret sent as `Authorization: Bearer` with every request that does not set
    /// its own `Authorization` header.
    token: Option<String>,
}

impl Client {
    fn new(base_url: &str, stderr: Arc<Mutex<String>>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // Long polls wait up to 30 s on the server.
            .timeout_read(Duration::from_secs(60))
            .timeout_write(Duration::from_secs(30))
            .redirects(0)
            .build();
        Client { base_url: base_url.to_string(), agent, stderr, token: None }
    }

    /// A copy of this client that sends `secret` as its API token.
    pub fn with_token(&self, secret: &str) -> Client {
        Client { token: Some(secret.to_string()), ..self.clone() }
    }

    /// Sends a request; panics with the server's stderr on a transport error.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Response {
        self.request_bytes(method, path, body.map(str::as_bytes), headers)
    }

    /// Like [`Client::request`] with a raw byte body (for invalid UTF-8 and the like).
    pub fn request_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Response {
        match self.try_request_bytes(method, path, body, headers) {
            Ok(response) => response,
            Err(error) => panic!(
                "{method} {path}: transport error: {error}\nserver stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Sends a request; a transport error (refused, reset, timeout) is returned as text.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        self.try_request_bytes(method, path, body.map(str::as_bytes), headers)
    }

    pub fn try_request_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        let mut request = self.agent.request(method, &format!("{}{}", self.base_url, path));
        if let Some(secret) = &self.token {
            request = request.set("Authorization", &format!("Bearer {secret}"));
        }
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(bytes) => request.send_bytes(bytes),
            None => request.call(),
        };
        match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => read_response(response),
            Err(ureq::Error::Transport(transport)) => Err(transport.to_string()),
        }
    }

    /// Sends a body with chunked transfer encoding (no Content-Length).
    pub fn request_chunked(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let mut request = self.agent.request(method, &format!("{}{}", self.base_url, path));
        if let Some(secret) = &self.token {
            request = request.set("Authorization", &format!("Bearer {secret}"));
        }
        match request.send(std::io::Cursor::new(body.to_vec())) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => read_response(response)
                .unwrap_or_else(|error| panic!("{method} {path}: reading response: {error}")),
            Err(ureq::Error::Transport(transport)) => panic!(
                "{method} {path} (chunked): transport error: {transport}\nserver stderr:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(&body.to_string()), &[])
    }

    /// POST /v1/queues/{queue}/messages with `{"messages": messages}`; asserts 201.
    pub fn enqueue(&self, queue: &str, messages: &Value) -> Vec<String> {
        self.enqueue_with_key(queue, messages, None)
    }

    /// Like [`Client::enqueue`] with an optional Idempotency-Key; asserts 201.
    pub fn enqueue_with_key(
        &self,
        queue: &str,
        messages: &Value,
        key: Option<&str>,
    ) -> Vec<String> {
        let response = self.enqueue_raw(queue, &json!({ "messages": messages }).to_string(), key);
        assert_eq!(response.status, 201, "enqueue to {queue}: {response:?}");
        assert_eq!(response.body["duplicate"], json!(false), "{response:?}");
        let ids = string_array(&response.body["ids"]);
        assert_eq!(
            Some(ids.len()),
            messages.as_array().map(Vec::len),
            "one id per message: {response:?}"
        );
        ids
    }

    /// POST /v1/queues/{queue}/messages with a raw body; returns whatever came back.
    pub fn enqueue_raw(&self, queue: &str, body: &str, key: Option<&str>) -> Response {
        let headers: Vec<(&str, &str)> =
            key.map(|key| ("Idempotency-Key", key)).into_iter().collect();
        self.request("POST", &format!("/v1/queues/{queue}/messages"), Some(body), &headers)
    }

    /// POST /v1/queues/{queue}/lease; asserts 200 and returns the messages.
    pub fn lease(&self, queue: &str, max: u32, lease_ms: u64, wait_ms: u64) -> Vec<Value> {
        let response = self.post(
            &format!("/v1/queues/{queue}/lease"),
            &json!({ "max": max, "lease_ms": lease_ms, "wait_ms": wait_ms }),
        );
        assert_eq!(response.status, 200, "lease from {queue}: {response:?}");
        response.body["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("lease response without messages array: {response:?}"))
            .clone()
    }

    /// Leases until a lease with `wait_ms` comes back empty; returns everything leased.
    /// Every message is held for `lease_ms`, so nothing comes back twice meanwhile.
    pub fn lease_all(&self, queue: &str, lease_ms: u64, wait_ms: u64) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let batch = self.lease(queue, 1000, lease_ms, wait_ms);
            if batch.is_empty() {
                return all;
            }
            all.extend(batch);
        }
    }

    /// POST /v1/queues/{queue}/ack; asserts 200 and returns the results.
    pub fn ack(&self, queue: &str, leases: &[&str]) -> Vec<Value> {
        let response = self.post(&format!("/v1/queues/{queue}/ack"), &json!({ "leases": leases }));
        assert_eq!(response.status, 200, "ack on {queue}: {response:?}");
        results(&response, leases.len())
    }

    /// POST /v1/queues/{queue}/nack with the given items; asserts 200 and returns the results.
    pub fn nack(&self, queue: &str, items: &Value) -> Vec<Value> {
        let response = self.post(&format!("/v1/queues/{queue}/nack"), &json!({ "items": items }));
        assert_eq!(response.status, 200, "nack on {queue}: {response:?}");
        results(&response, items.as_array().map_or(0, Vec::len))
    }

    /// POST /v1/queues/{queue}/extend with the given items; asserts 200 and returns the results.
    pub fn extend(&self, queue: &str, items: &Value) -> Vec<Value> {
        let response = self.post(&format!("/v1/queues/{queue}/extend"), &json!({ "items": items }));
        assert_eq!(response.status, 200, "extend on {queue}: {response:?}");
        results(&response, items.as_array().map_or(0, Vec::len))
    }

    /// GET /v1/messages/{id}; asserts 200.
    pub fn get_message(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/messages/{id}"));
        assert_eq!(response.status, 200, "get message {id}: {response:?}");
        response.body
    }

    /// GET /v1/queues/{queue}; asserts 200 and returns the `counts` object.
    pub fn queue_counts(&self, queue: &str) -> Value {
        let response = self.get(&format!("/v1/queues/{queue}"));
        assert_eq!(response.status, 200, "get queue {queue}: {response:?}");
        assert_eq!(response.body["name"], json!(queue), "{response:?}");
        response.body["counts"].clone()
    }

    /// Arms a failpoint (`testing` builds only); asserts the documented 200 reply.
    pub fn set_failpoint(&self, name: &str, action: &str) {
        let response = self.request("PUT", &format!("/debug/failpoints/{name}"), Some(action), &[]);
        assert_eq!(response.status, 200, "arm failpoint {name}={action}: {response:?}");
        assert_eq!(response.body["name"], json!(name), "{response:?}");
        assert_eq!(response.body["action"], json!(action), "{response:?}");
    }
}

fn read_response(response: ureq::Response) -> Result<Response, String> {
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .filter_map(|name| {
            let value = response.header(&name)?.to_string();
            Some((name.to_ascii_lowercase(), value))
        })
        .collect();
    let text = response.into_string().map_err(|error| format!("reading body: {error}"))?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok(Response { status, body, headers })
}

fn results(response: &Response, expected_count: usize) -> Vec<Value> {
    let results = response.body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("response without results array: {response:?}"))
        .clone();
    assert_eq!(results.len(), expected_count, "one result per item: {response:?}");
    results
}

/// Asserts the documented error shape: the status, `error.code`, and non-empty
/// `error.message` and `error.hint` strings.
pub fn assert_error(response: &Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "expected {status} {code}, got {response:?}");
    let error = &response.body["error"];
    assert_eq!(error["code"], json!(code), "error code: {response:?}");
    for field in ["message", "hint"] {
        let text = error[field]
            .as_str()
            .unwrap_or_else(|| panic!("error.{field} is not a string: {response:?}"));
        assert!(!text.trim().is_empty(), "error.{field} is empty: {response:?}");
    }
}

/// The `details` array of an error response; panics if it is missing.
pub fn error_details(response: &Response) -> Vec<Value> {
    response.body["error"]["details"]
        .as_array()
        .unwrap_or_else(|| panic!("error without details: {response:?}"))
        .clone()
}

/// A JSON array of strings as a `Vec<String>`; panics on anything else.
pub fn string_array(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of strings, got {value}"))
        .iter()
        .map(|item| {
            item.as_str().unwrap_or_else(|| panic!("expected a string, got {item}")).to_string()
        })
        .collect()
}

/// Wall-clock time as Unix epoch milliseconds, the unit of every API timestamp.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Calls `probe` every 20 ms until it returns `Some`, or panics with `what` at the deadline.
pub fn poll_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A message id is 16 lowercase hex characters.
pub fn assert_message_id(id: &str) {
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "not a 16-lowercase-hex message id: {id:?}"
    );
}

/// A small deterministic generator (SplitMix64) so a failing run can be replayed by seed.
pub struct Rng(outboxd::random::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(outboxd::random::SplitMix64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next()
    }

    /// A value in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.0.below(high - low + 1)
    }
}

/// A config file in its own temporary directory (deleted on drop), for `--config`.
pub struct ConfigFile {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl ConfigFile {
    /// Writes `text` (TOML) to `outboxd.toml` in a fresh temporary directory.
    pub fn new(text: &str) -> ConfigFile {
        let dir = tempfile::Builder::new()
            .prefix("outboxd-config-")
            .tempdir()
            .expect("create temporary config directory");
        let path = dir.path().join("outboxd.toml");
        std::fs::write(&path, text).expect("write the config file");
        ConfigFile { _dir: dir, path }
    }

    /// The file's path, as a flag value.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8")
    }
}
