//! The server that `outboxd bench --spawn` starts for itself, and what it costs in memory and disk.
//!
//! The bench runs its own executable as `serve --listen 127.0.0.1:0 --data-dir <temp dir>`, so the
//! server under test is exactly the build that measures it, on a port nobody else uses, with an empty
//! data directory that is deleted afterwards. Like the integration tests, it learns the address from
//! the one line the server prints to stdout once it is ready.

use super::BenchError;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// What the server prints once it accepts connections.
const LISTENING_PREFIX: &str = "outboxd listening on ";
/// How long recovery of an empty data directory plus startup may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's stderr kept for error messages (the tail).
const STDERR_KEPT_BYTES_MAX: usize = 16 * 1024;

/// A running server child process with its private data directory.
///
/// Dropping it kills the server, so that no error path of the bench leaves one behind.
pub struct SpawnedServer {
    child: Child,
    /// `127.0.0.1:PORT` as the server announced it.
    pub authority: String,
    /// Deleted when the server is dropped.
    data_dir: tempfile::TempDir,
    /// The tail of the server's stderr, quoted when something goes wrong.
    stderr_tail: Arc<Mutex<String>>,
}

/// The spawned server's memory and disk use, read from `/proc` and the data directory.
#[derive(Clone, Debug, Serialize)]
pub struct ServerStats {
    pub pid: u32,
    /// Peak resident set size (`VmHWM`), if `/proc` could be read.
    pub vm_hwm_bytes: Option<u64>,
    /// Resident set size now (`VmRSS`), if `/proc` could be read.
    pub vm_rss_bytes: Option<u64>,
    /// CPU time (user + system) the server used since it started, in seconds.
    pub cpu_s: Option<f64>,
    /// Bytes allocated on disk under the data directory (blocks, so sparse files count as written).
    pub data_dir_bytes: u64,
    /// Sum of the file lengths under the data directory.
    pub data_dir_apparent_bytes: u64,
    /// Where the data directory was (it is deleted when the bench ends).
    pub data_dir: PathBuf,
}

impl SpawnedServer {
    /// Starts `current_exe serve` with a fresh data directory under `parent`, plus `extra_args`.
    pub fn start(parent: &Path, extra_args: &[String]) -> Result<SpawnedServer, BenchError> {
        let data_dir = tempfile::Builder::new()
            .prefix("outboxd-bench-")
            .tempdir_in(parent)
            .map_err(|source| {
                BenchError::io(format!("creating a data dir in {}", parent.display()), source)
            })?;
        let executable = std::env::current_exe()
            .map_err(|source| BenchError::io("finding the outboxd executable", source))?;
        let mut child = Command::new(&executable)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .args(extra_args)
            // One access line per request would cost the server time and flood the stderr tail
            // kept for errors; a --server-arg=--log=... still wins over the variable.
            .env("OUTBOXD_LOG", "info,outboxd::access=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| {
                BenchError::io(format!("starting {}", executable.display()), source)
            })?;
        let stderr_tail = Arc::new(Mutex::new(String::new()));
        let stderr_thread =
            child.stderr.take().map(|stderr| keep_tail(stderr, stderr_tail.clone()));
        let (sender, receiver) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            watch_stdout(stdout, sender);
        }
        let mut server = SpawnedServer { child, authority: String::new(), data_dir, stderr_tail };
        let authority = match receiver.recv_timeout(STARTUP_TIMEOUT) {
            Ok(authority) => authority,
            Err(error) => {
                // Stopping reaps the server, so its status is known and its stderr reaches its end.
                let status = server.stop();
                if let Some(thread) = stderr_thread {
                    let _ = thread.join();
                }
                let what = match error {
                    mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited ({status}) before it listened")
                    }
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("did not print `{LISTENING_PREFIX}ADDR` within {STARTUP_TIMEOUT:?}")
                    }
                };
                let stderr = server.stderr_tail();
                return Err(BenchError::Server(format!(
                    "the spawned server {what}; its stderr:\n{stderr}"
                )));
            }
        };
        server.authority = authority;
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Memory and disk use right now.
    pub fn stats(&self) -> ServerStats {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok();
        let field = |name: &str| status.as_deref().and_then(|text| proc_status_bytes(text, name));
        let (data_dir_bytes, data_dir_apparent_bytes) = dir_size(self.data_dir.path());
        ServerStats {
            pid: self.pid(),
            vm_hwm_bytes: field("VmHWM"),
            vm_rss_bytes: field("VmRSS"),
            cpu_s: process_cpu_s(&format!("/proc/{}/stat", self.pid())),
            data_dir_bytes,
            data_dir_apparent_bytes,
            data_dir: self.data_dir.path().to_path_buf(),
        }
    }

    /// Whether the server process has exited, and how.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(format!("unknown ({error})")),
        }
    }

    /// The last lines the server wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        match self.stderr_tail.lock() {
            Ok(tail) => tail.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Kills the server (SIGKILL: its data directory is thrown away, so a clean shutdown buys
    /// nothing) and reaps it; returns how it ended.
    pub fn stop(&mut self) -> String {
        if let Some(status) = self.exit_status() {
            return status;
        }
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(error) => format!("unknown ({error})"),
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends the announced address once, then keeps draining stdout so the server never blocks on it.
fn watch_stdout(stdout: impl Read + Send + 'static, sender: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut sender = Some(sender);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(address) = line.trim().strip_prefix(LISTENING_PREFIX) {
                if let Some(sender) = sender.take() {
                    let _ = sender.send(address.to_string());
                }
            }
        }
    });
}

/// Keeps the last `STDERR_KEPT_BYTES_MAX` bytes of the server's stderr.
fn keep_tail(
    stderr: impl Read + Send + 'static,
    tail: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Ok(mut tail) = tail.lock() else { break };
            tail.push_str(&line);
            tail.push('\n');
            if tail.len() > STDERR_KEPT_BYTES_MAX {
                let mut cut = tail.len() - STDERR_KEPT_BYTES_MAX;
                while !tail.is_char_boundary(cut) {
                    cut += 1;
                }
                tail.drain(..cut);
            }
        }
    })
}

/// A `/proc/<pid>/status` field given in kB (such as `VmHWM:   1234 kB`), in bytes.
pub fn proc_status_bytes(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.split(':').next() == Some(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Clock ticks per second of the times in `/proc/<pid>/stat`: `USER_HZ`, which Linux fixes at 100
/// for this interface on every common architecture (it is not the kernel's internal `HZ`).
const PROC_TICKS_PER_S: f64 = 100.0;

/// User plus system CPU seconds of a process, from its `/proc/<pid>/stat` (or `/proc/self/stat`).
pub fn process_cpu_s(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    parse_stat_cpu_s(&stat)
}

/// The CPU seconds in a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and
/// may hold spaces, so fields are counted after its closing parenthesis: `utime` and `stime` are
/// fields 14 and 15 of the line, the 12th and 13th after it.
fn parse_stat_cpu_s(stat: &str) -> Option<f64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: u64 = fields.next()?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    Some((user_ticks + system_ticks) as f64 / PROC_TICKS_PER_S)
}

/// Allocated and apparent bytes of every file under `dir` (0 for what cannot be read).
pub fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut allocated_bytes = 0;
    let mut apparent_bytes = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                // st_blocks counts 512-byte units whatever the file system's block size.
                allocated_bytes += metadata.blocks() * 512;
                apparent_bytes += metadata.len();
            }
        }
    }
    (allocated_bytes, apparent_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_fields_are_read_in_bytes() {
        let status = "Name:\toutboxd\nVmHWM:\t   20480 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(proc_status_bytes(status, "VmHWM"), Some(20 * 1024 * 1024));
        assert_eq!(proc_status_bytes(status, "VmRSS"), Some(1024 * 1024));
        assert_eq!(proc_status_bytes(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_seconds_are_read_after_the_command_name() {
        let stat = "42 (out box) S 1 42 42 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat_cpu_s(stat), Some(3.8));
        assert_eq!(parse_stat_cpu_s("42 (x) S 1"), None);
        assert!(process_cpu_s("/proc/self/stat").is_some());
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("nested")).expect("mkdir");
        std::fs::write(dir.path().join("a"), [1u8; 5000]).expect("write");
        std::fs::write(dir.path().join("nested/b"), [1u8; 3000]).expect("write");
        let (allocated_bytes, apparent_bytes) = dir_size(dir.path());
        assert_eq!(apparent_bytes, 8000);
        assert!(allocated_bytes >= 8000, "{allocated_bytes}");
    }
}
