//! The raw fsync baseline: how many 4 KiB append + `fdatasync` rounds the disk does per second.
//!
//! Every acknowledged write in outboxd waits for one WAL `fdatasync`, shared by the whole group
//! commit. The disk's own sync rate is therefore the ceiling for sequential, unbatched writes and
//! the yardstick for batched ones: quoting server figures as a ratio to it (messages per sync,
//! requests per sync) makes them comparable across machines whose disks differ by orders of
//! magnitude. The file is appended to, like a WAL segment, so each sync also persists a new length.

use super::report::{Latencies, LatencySummary, RequestKind};
use super::BenchError;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes written before each sync: one page, about one enqueue of ten 256-byte messages.
pub const WRITE_BYTES: usize = 4096;

/// What the fsync loop measured.
#[derive(Clone, Debug, Serialize)]
pub struct FsyncBaseline {
    /// The directory holding the scratch file (its file system is what was measured).
    pub dir: PathBuf,
    pub write_bytes: usize,
    pub elapsed_s: f64,
    /// Rounds of write + `fdatasync` completed.
    pub syncs: u64,
    pub syncs_per_s: f64,
    /// Latency of one write + `fdatasync` round.
    pub latency: LatencySummary,
}

/// Appends `WRITE_BYTES` and `fdatasync`s, in a loop, for `duration`, on a scratch file in `dir`.
pub fn measure(dir: &Path, duration: Duration) -> Result<FsyncBaseline, BenchError> {
    let mut file = tempfile::Builder::new()
        .prefix("outboxd-fsync-baseline-")
        .tempfile_in(dir)
        .map_err(|source| {
            BenchError::io(format!("creating a scratch file in {}", dir.display()), source)
        })?;
    let page = [0x5a_u8; WRITE_BYTES];
    let mut latencies = Latencies::default();
    let mut syncs = 0_u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let round_started = Instant::now();
        file.write_all(&page)
            .and_then(|()| file.as_file().sync_data())
            .map_err(|source| BenchError::io("append + fdatasync of the scratch file", source))?;
        // The enqueue kind slot is reused: the baseline measures one kind of operation only.
        latencies.record(RequestKind::Enqueue, round_started.elapsed());
        syncs += 1;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let mut latency = latencies
        .summaries()
        .pop()
        .ok_or_else(|| BenchError::Usage("the fsync baseline needs a duration above 0".into()))?;
    latency.kind = "fdatasync";
    Ok(FsyncBaseline {
        dir: dir.to_path_buf(),
        write_bytes: WRITE_BYTES,
        elapsed_s,
        syncs,
        syncs_per_s: syncs as f64 / elapsed_s,
        latency,
    })
}

impl FsyncBaseline {
    /// The result as text for people.
    pub fn to_table(&self) -> String {
        let latency = &self.latency;
        format!(
            "fsync baseline in {}: {} rounds of {}-byte append + fdatasync in {:.2} s = {:.0} syncs/s\n\
             latency ms: mean {:.3}, p50 {:.3}, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3}\n",
            self.dir.display(),
            self.syncs,
            self.write_bytes,
            self.elapsed_s,
            self.syncs_per_s,
            latency.mean_ms,
            latency.p50_ms,
            latency.p90_ms,
            latency.p99_ms,
            latency.p99_9_ms,
            latency.max_ms
        )
    }
}
