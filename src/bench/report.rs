//! The bench's results: per-phase throughput, per-request latency percentiles, the delivery
//! verdict and the spawned server's footprint, as a table for people or one JSON object for scripts.

use super::ledger::Verification;
use super::spawn::ServerStats;
use super::Plan;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

/// Longest latency a histogram holds, in microseconds (an hour); longer ones are clamped to it.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits kept by the histograms (0.1 % error).
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// The request kinds whose latencies are recorded separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Enqueue,
    Lease,
    Ack,
}

impl RequestKind {
    pub const ALL: [RequestKind; 3] = [RequestKind::Enqueue, RequestKind::Lease, RequestKind::Ack];

    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Enqueue => "enqueue",
            RequestKind::Lease => "lease",
            RequestKind::Ack => "ack",
        }
    }
}

/// Request latencies in microseconds, one histogram per request kind.
pub struct Latencies {
    histograms: [Histogram<u64>; 3],
}

impl Default for Latencies {
    fn default() -> Self {
        let histogram = || {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid")
        };
        Latencies { histograms: [histogram(), histogram(), histogram()] }
    }
}

impl Latencies {
    /// Records one request of `kind` that took `elapsed`.
    pub fn record(&mut self, kind: RequestKind, elapsed: std::time::Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.histograms[kind as usize].saturating_record(micros.max(1));
    }

    /// Adds another worker's latencies to these.
    pub fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self.histograms.iter_mut().zip(&other.histograms) {
            mine.add(theirs).expect("histograms built with the same bounds always add");
        }
    }

    /// Summaries of the kinds that saw at least one request.
    pub fn summaries(&self) -> Vec<LatencySummary> {
        RequestKind::ALL
            .iter()
            .filter(|kind| !self.histograms[**kind as usize].is_empty())
            .map(|kind| LatencySummary::new(*kind, &self.histograms[*kind as usize]))
            .collect()
    }
}

/// Latency percentiles of one request kind in one phase, in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub kind: &'static str,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    fn new(kind: RequestKind, histogram: &Histogram<u64>) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            kind: kind.name(),
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p99_9_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// What one phase achieved.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// `enqueue`, `consume` or `mixed`.
    pub phase: &'static str,
    pub queue: String,
    /// Messages enqueued (enqueue phase) or acked (consume and mixed phases).
    pub messages: u64,
    /// From the first request until the last message was enqueued or acked.
    pub elapsed_s: f64,
    pub messages_per_s: f64,
    /// Latencies of successful requests; empty leases are counted in `empty_leases` instead.
    pub requests: Vec<LatencySummary>,
    /// Leases that came back empty after waiting `wait_ms`.
    pub empty_leases: u64,
    /// Requests refused with 503 overloaded and retried after `Retry-After`.
    pub overloaded_retries: u64,
    /// Acks answered `lease_expired` or `unknown` instead of `acked`.
    pub acks_refused: u64,
    /// CPU seconds the spawned server used during the phase (`None` with `--url`). Unlike the
    /// rates, this barely moves when other processes compete for the CPU.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds the bench process used during the phase.
    pub bench_cpu_s: Option<f64>,
    /// The spawned server's peak resident set size (`VmHWM`) at the end of the phase.
    pub server_peak_rss_bytes: Option<u64>,
    /// Whether the consumers gave up after `stall_timeout_s` without an ack while messages were
    /// still missing (the verification then counts them).
    pub stalled: bool,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The settings the run used.
    pub plan: Plan,
    /// `host:port` of the server under test.
    pub server_address: String,
    /// Whether the bench started the server itself.
    pub spawned: bool,
    pub phases: Vec<PhaseReport>,
    pub verification: Verification,
    /// The spawned server's memory and disk use at the end of the run (`None` with `--url`).
    pub server: Option<ServerStats>,
    /// CPU seconds the bench process itself used: on a small machine, what it took from the server.
    pub bench_cpu_s: Option<f64>,
}

impl Report {
    /// The report as aligned text tables.
    pub fn to_table(&self) -> String {
        let plan = &self.plan;
        let mut out = format!(
            "outboxd bench --phase {}: {} messages of {} bytes, {} producers (batch {}), {} consumers \
             (lease batch {}), server {}{}\n\n",
            plan.phase.name(),
            plan.messages,
            plan.body_bytes,
            plan.producers,
            plan.batch,
            plan.consumers,
            plan.lease_batch,
            self.server_address,
            if self.spawned { " (spawned)" } else { "" }
        );
        self.write_phase_table(&mut out);
        out.push('\n');
        self.write_latency_table(&mut out);
        out.push('\n');
        let verdict = if self.verification.ok { "ok" } else { "FAILED" };
        let _ = writeln!(out, "verification {verdict}: {}", self.verification.summary());
        if let Some(server) = &self.server {
            let _ = writeln!(out, "{}", server_line(server));
        }
        let _ = writeln!(
            out,
            "cpu seconds in total: server {}, bench {}",
            optional_seconds(self.server.as_ref().and_then(|server| server.cpu_s)),
            optional_seconds(self.bench_cpu_s)
        );
        out
    }

    /// One line per phase: throughput, counters, CPU and memory.
    fn write_phase_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>10} {:>12} {:>8} {:>10} {:>13} {:>12} {:>13}",
            "phase",
            "messages",
            "elapsed_s",
            "msgs/s",
            "empty",
            "overloaded",
            "server_cpu_s",
            "bench_cpu_s",
            "peak_rss_MiB"
        );
        for phase in &self.phases {
            let peak_rss = phase.server_peak_rss_bytes.map(mib);
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>10.2} {:>12.0} {:>8} {:>10} {:>13} {:>12} {:>13}",
                phase.phase,
                phase.messages,
                phase.elapsed_s,
                phase.messages_per_s,
                phase.empty_leases,
                phase.overloaded_retries,
                optional_seconds(phase.server_cpu_s),
                optional_seconds(phase.bench_cpu_s),
                peak_rss.map_or("n/a".to_string(), |mib| format!("{mib:.1}"))
            );
        }
    }

    /// One line per phase and request kind: latency percentiles.
    fn write_latency_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<8} {:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "phase", "request", "count", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"
        );
        for phase in &self.phases {
            for summary in &phase.requests {
                let _ = writeln!(
                    out,
                    "{:<8} {:<8} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    phase.phase,
                    summary.kind,
                    summary.count,
                    summary.p50_ms,
                    summary.p90_ms,
                    summary.p99_ms,
                    summary.p99_9_ms,
                    summary.max_ms
                );
            }
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn optional_seconds(seconds: Option<f64>) -> String {
    seconds.map_or("n/a".to_string(), |seconds| format!("{seconds:.2}"))
}

fn server_line(server: &ServerStats) -> String {
    let optional_mib =
        |bytes: Option<u64>| bytes.map_or("n/a".to_string(), |b| format!("{:.1} MiB", mib(b)));
    format!(
        "server pid {}: peak RSS (VmHWM) {}, RSS now {}, data dir {:.1} MiB on disk ({:.1} MiB apparent)",
        server.pid,
        optional_mib(server.vm_hwm_bytes),
        optional_mib(server.vm_rss_bytes),
        mib(server.data_dir_bytes),
        mib(server.data_dir_apparent_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::ledger::{Expectations, Ledger};
    use crate::bench::PhaseChoice;
    use std::time::Duration;

    fn report() -> Report {
        let mut latencies = Latencies::default();
        latencies.record(RequestKind::Enqueue, Duration::from_millis(3));
        let phase = PhaseReport {
            phase: "enqueue",
            queue: "q".into(),
            messages: 100,
            elapsed_s: 0.5,
            messages_per_s: 200.0,
            requests: latencies.summaries(),
            empty_leases: 0,
            overloaded_retries: 0,
            acks_refused: 0,
            server_cpu_s: Some(0.25),
            bench_cpu_s: None,
            server_peak_rss_bytes: Some(64 << 20),
            stalled: false,
        };
        let plan = Plan {
            phase: PhaseChoice::Enqueue,
            queue: "q".into(),
            messages: 100,
            body_bytes: 256,
            producers: 1,
            consumers: 1,
            batch: 100,
            lease_batch: 100,
            duration_s: None,
            rate: None,
            wait_ms: 1000,
            lease_ms: 300_000,
            stall_timeout_s: 10,
            token: None,
        };
        let expectations = Expectations { all_consumed: false, only_own: false };
        Report {
            plan,
            server_address: "127.0.0.1:1".into(),
            spawned: false,
            phases: vec![phase],
            verification: Ledger::default().verify(expectations),
            server: None,
            bench_cpu_s: None,
        }
    }

    #[test]
    fn table_rows_have_as_many_columns_as_their_headers() {
        let table = report().to_table();
        let lines: Vec<&str> = table.lines().collect();
        let columns = |line: &str| line.split_whitespace().count();
        let phase_header =
            lines.iter().position(|line| line.starts_with("phase ")).expect("header");
        assert_eq!(columns(lines[phase_header]), columns(lines[phase_header + 1]), "{table}");
        assert!(lines[phase_header + 1].ends_with("64.0"), "{table}");
        let latency_header = phase_header + 3;
        assert!(lines[latency_header].contains("p99.9_ms"), "{table}");
        assert_eq!(columns(lines[latency_header]), columns(lines[latency_header + 1]), "{table}");
        assert!(table.contains("verification ok"), "{table}");
    }

    #[test]
    fn summaries_skip_unused_kinds_and_report_milliseconds() {
        let mut latencies = Latencies::default();
        for millis in 1..=100 {
            latencies.record(RequestKind::Ack, Duration::from_millis(millis));
        }
        let mut other = Latencies::default();
        other.record(RequestKind::Ack, Duration::from_secs(2));
        latencies.merge(&other);
        let summaries = latencies.summaries();
        assert_eq!(summaries.len(), 1);
        let ack = &summaries[0];
        assert_eq!(ack.kind, "ack");
        assert_eq!(ack.count, 101);
        assert!((49.0..=51.5).contains(&ack.p50_ms), "{ack:?}");
        assert!((1990.0..=2010.0).contains(&ack.max_ms), "{ack:?}");
    }
}
