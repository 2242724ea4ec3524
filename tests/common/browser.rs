//! A headless Chromium driven over the W3C WebDriver protocol, for the outbox page's tests.
//!
//! WebDriver is JSON over HTTP, so the client is a few calls of `ureq` (already a dependency):
//! no WebDriver crate and its dependency tree to compile. Each [`Browser`] starts its own
//! `chromedriver` on a free loopback port and one Chromium session with a fresh profile, and
//! ends both when dropped, so tests run in parallel without sharing a browser.
//!
//! Chromium comes from Debian's `chromium` and `chromium-driver` packages. When they are missing,
//! the first test installs them with apt-get (once per machine: a lock file keeps concurrent test
//! processes from running apt at the same time); where that is impossible the test fails and says
//! what to install. It never passes without a browser. `OUTBOXD_CHROMIUM` and
//! `OUTBOXD_CHROMEDRIVER` point at other binaries.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a test waits for something to appear on the page.
pub const WAIT: Duration = Duration::from_secs(15);

/// The key WebDriver uses for element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The flags from the tests' brief: headless, and none of the background connections Chromium
/// would otherwise open (and pile up) on a machine without an outside network.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,900",
    "--lang=en-US",
];

/// The Chromium and chromedriver binaries, installed if need be.
struct Binaries {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let chromium = std::env::var_os("OUTBOXD_CHROMIUM")
            .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        let chromedriver = std::env::var_os("OUTBOXD_CHROMEDRIVER")
            .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from);
        if !chromium.exists() || !chromedriver.exists() {
            install_chromium(&chromium, &chromedriver);
        }
        Binaries { chromium, chromedriver }
    })
}

/// Installs Debian's `chromium` and `chromium-driver`, under a machine-wide lock so that test
/// binaries running at the same time do not run apt-get concurrently.
fn install_chromium(chromium: &Path, chromedriver: &Path) {
    use fs2::FileExt;
    let lock_path = std::env::temp_dir().join("outboxd-chromium-install.lock");
    let lock = std::fs::File::create(&lock_path)
        .unwrap_or_else(|error| panic!("create {}: {error}", lock_path.display()));
    lock.lock_exclusive().unwrap_or_else(|error| panic!("lock {}: {error}", lock_path.display()));
    if chromium.exists() && chromedriver.exists() {
        return;
    }
    let how = "install Debian's chromium and chromium-driver packages (apt-get install chromium \
               chromium-driver), or set OUTBOXD_CHROMIUM and OUTBOXD_CHROMEDRIVER";
    eprintln!("the outbox page's tests need Chromium: installing it with apt-get");
    for args in [
        &["update"][..],
        &["install", "-y", "--no-install-recommends", "chromium", "chromium-driver"][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|error| {
                panic!(
                    "no Chromium at {} and apt-get cannot run ({error}): {how}",
                    chromium.display()
                )
            });
        assert!(
            status.success(),
            "apt-get {} failed ({status}); the browser tests cannot run: {how}",
            args.join(" ")
        );
    }
    assert!(
        chromium.exists() && chromedriver.exists(),
        "apt-get ran but {} or {} is still missing: {how}",
        chromium.display(),
        chromedriver.display()
    );
}

/// Where screenshots go: `target/ui-screenshots/`, kept as test artifacts.
pub fn screenshot_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory holds tmp/")
        .to_path_buf();
    target.join("ui-screenshots")
}

/// One Chromium session and the chromedriver that runs it.
pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

/// An element of the page, by its WebDriver reference.
#[derive(Clone)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub fn start() -> Browser {
        let binaries = binaries();
        let mut driver = Command::new(&binaries.chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", binaries.chromedriver.display()));
        let port = driver_port(&mut driver);
        let profile = tempfile::Builder::new()
            .prefix("outboxd-chromium-")
            .tempdir()
            .expect("create a Chromium profile directory");
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| flag.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                // An alert stays open (and fails the next command) instead of being dismissed
                // quietly, so that a test cannot miss one.
                "unhandledPromptBehavior": "ignore",
                "goog:chromeOptions": {
                    "binary": binaries.chromium.display().to_string(),
                    "args": args,
                },
            }}
        });
        let base = format!("http://127.0.0.1:{port}");
        let created = call(&agent, "POST", &format!("{base}/session"), Some(&capabilities));
        let session_id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id from chromedriver: {created}"))
            .to_string();
        Browser {
            driver,
            session: format!("{base}/session/{session_id}"),
            agent,
            _profile: profile,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        call(&self.agent, method, &format!("{}{path}", self.session), body)
    }

    fn try_command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Value> {
        try_call(&self.agent, method, &format!("{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs a script in the page (`arguments[0]`… are `args`) and returns its value.
    pub fn script(&self, script: &str, args: &[Value]) -> Value {
        self.command("POST", "/execute/sync", Some(&json!({ "script": script, "args": args })))
    }

    /// Like [`Browser::script`], with WebDriver's error (e.g. a stale element argument) returned.
    pub fn try_script(&self, script: &str, args: &[Value]) -> Result<Value, Value> {
        self.try_command("POST", "/execute/sync", Some(&json!({ "script": script, "args": args })))
    }

    /// Runs an asynchronous script: it ends by calling its last argument with the result.
    pub fn script_async(&self, script: &str, args: &[Value]) -> Value {
        self.command("POST", "/execute/async", Some(&json!({ "script": script, "args": args })))
    }

    /// Every element matching a CSS selector, now.
    pub fn find_all(&self, selector: &str) -> Vec<Element<'_>> {
        let found = self.command(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": selector})),
        );
        found
            .as_array()
            .map(|elements| {
                elements
                    .iter()
                    .map(|element| Element {
                        browser: self,
                        id: element[ELEMENT_KEY].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `selector` that is displayed, waiting for one to appear.
    pub fn find(&self, selector: &str) -> Element<'_> {
        self.wait_for(&format!("a displayed element {selector:?}"), || {
            self.find_all(selector).into_iter().find(Element::displayed)
        })
    }

    /// Waits until an element matching `selector` shows `text` (a substring of its text).
    pub fn find_text(&self, selector: &str, text: &str) -> Element<'_> {
        self.wait_for(&format!("{selector:?} showing {text:?}"), || {
            self.find_all(selector)
                .into_iter()
                .find(|element| element.displayed() && element.text().contains(text))
        })
    }

    /// Clicks the displayed element matching `selector`. If the page replaced the element between
    /// finding and clicking it (its data changed), it is found again, as a person would click
    /// again.
    pub fn click(&self, selector: &str) {
        self.wait_for(&format!("a click on {selector:?}"), || {
            let element = self.find(selector);
            let clicked = self.try_command("POST", &element.path("click"), Some(&json!({})));
            match clicked {
                Ok(_) => Some(()),
                Err(error) if error["error"] == "stale element reference" => None,
                Err(error) => panic!("clicking {selector:?} failed: {error}"),
            }
        });
    }

    /// Calls `probe` until it returns `Some`, or fails the test with `what`, a screenshot and the
    /// page's text.
    pub fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot(&format!("failure-{}", std::process::id()));
                let text = self.script("return document.body.innerText", &[]);
                panic!(
                    "timed out after {WAIT:?} waiting for {what}\nscreenshot: {}\npage text:\n{}",
                    shot.display(),
                    text.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resizes the window (screenshots show the window, not the whole page).
    pub fn resize(&self, width: u32, height: u32) {
        self.command("POST", "/window/rect", Some(&json!({"width": width, "height": height})));
    }

    /// Saves a PNG of the window under `target/ui-screenshots/<name>.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let encoded = self.command("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("chromedriver sends screenshots in base64");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create target/ui-screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("write a screenshot");
        path
    }

    /// The text of an open alert, confirm or prompt dialog, if one is open.
    pub fn open_dialog_text(&self) -> Option<String> {
        match self.try_command("GET", "/alert/text", None) {
            Ok(text) => Some(text.as_str().unwrap_or_default().to_string()),
            Err(error) if error["error"] == "no such alert" => None,
            Err(error) => panic!("asking for an open dialog failed: {error}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = try_call(&self.agent, "DELETE", &self.session, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    fn path(&self, action: &str) -> String {
        format!("/element/{}/{action}", self.id)
    }

    pub fn click(&self) {
        self.browser.command("POST", &self.path("click"), Some(&json!({})));
    }

    /// The element as a script argument (`arguments[i]` is the DOM element).
    pub fn as_argument(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// Types `text` into the element (after clearing it).
    pub fn type_text(&self, text: &str) {
        self.browser.command("POST", &self.path("clear"), Some(&json!({})));
        self.browser.command("POST", &self.path("value"), Some(&json!({ "text": text })));
    }

    pub fn text(&self) -> String {
        match self.browser.try_command("GET", &self.path("text"), None) {
            Ok(text) => text.as_str().unwrap_or_default().to_string(),
            // The page re-rendered under our feet: the element is gone, and has no text.
            Err(_) => String::new(),
        }
    }

    pub fn displayed(&self) -> bool {
        let displayed = self.browser.try_command("GET", &self.path("displayed"), None);
        displayed.is_ok_and(|value| value == json!(true))
    }

    /// A DOM property (`value`, `checked`, `disabled`…).
    pub fn property(&self, name: &str) -> Value {
        self.browser.command("GET", &self.path(&format!("property/{name}")), None)
    }
}

/// Reads chromedriver's `ChromeDriver was started successfully on port N.` line.
fn driver_port(driver: &mut Child) -> u16 {
    let stdout = driver.stdout.take().expect("chromedriver's stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("started successfully on port ").nth(1) {
            let port = rest.trim_end_matches('.').trim().parse().expect("chromedriver's port");
            // The rest of its output is drained so that it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return port;
        }
    }
    let _ = driver.kill();
    panic!("chromedriver did not say which port it listens on");
}

fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<&Value>) -> Value {
    try_call(agent, method, url, body)
        .unwrap_or_else(|error| panic!("WebDriver {method} {url} failed: {error}"))
}

/// One WebDriver command: the reply's `value`, or its error object.
fn try_call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, Value> {
    let request = agent.request(method, url);
    let result = match body {
        Some(body) => request.send_json(body.clone()),
        None => request.call(),
    };
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(ureq::Error::Transport(transport)) => {
            return Err(json!({"error": "transport", "message": transport.to_string()}))
        }
    };
    let ok = response.status() < 400;
    let reply: Value = response.into_json().unwrap_or(Value::Null);
    let value = reply.get("value").cloned().unwrap_or(Value::Null);
    if ok {
        Ok(value)
    } else {
        Err(value)
    }
}
