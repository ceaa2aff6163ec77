//! The benchmark report shared by the Machnet, UDP, TCP and Unix-socket modes.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Round-trip times in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// What one client run measured.
pub(crate) struct Report {
    /// "machnet", "udp", "tcp" or "uds".
    pub mode: &'static str,
    pub size: usize,
    pub window: usize,
    pub flows: usize,
    /// Measured interval (after warm-up).
    pub elapsed: Duration,
    /// Round trips completed in the measured interval.
    pub messages: u64,
    /// Echoes that differed from what was sent (must be 0).
    pub mismatches: u64,
    /// Messages given up on (UDP only: lost datagrams).
    pub lost: u64,
    pub rtt: Histogram<u64>,
    /// Echoes completed over the whole run: warm-up, measured interval and the drain at the
    /// end (what was actually moved; `messages` counts the measured interval only).
    pub total_messages: u64,
    /// User + system CPU seconds of this process over its whole life (set by `finish`).
    pub cpu_s: f64,
    /// Wall-clock seconds of this process's whole run (set by `finish`).
    pub wall_s: f64,
}

/// User + system CPU time this process has used so far (`getrusage(RUSAGE_SELF)`), in seconds.
pub(crate) fn process_cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6
        }
        Err(_) => f64::NAN,
    }
}

impl Report {
    /// Records the process's CPU time and the wall time since `started` (the start of `main`).
    pub(crate) fn finish(&mut self, started: Instant) {
        self.cpu_s = process_cpu_seconds();
        self.wall_s = started.elapsed().as_secs_f64();
    }

    fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.messages as f64 / s
        } else {
            0.0
        }
    }

    /// Payload goodput in one direction (each echoed message counted once).
    fn gbits(&self) -> f64 {
        self.rate() * self.size as f64 * 8.0 / 1e9
    }

    fn us(&self, q: f64) -> f64 {
        if self.rtt.is_empty() {
            return 0.0;
        }
        self.rtt.value_at_quantile(q) as f64 / 1000.0
    }

    /// JSON object (one line).
    pub(crate) fn json(&self) -> String {
        serde_json::json!({
            "mode": self.mode,
            "size": self.size,
            "window": self.window,
            "flows": self.flows,
            "duration_s": self.elapsed.as_secs_f64(),
            "messages": self.messages,
            "msgs_per_sec": self.rate(),
            "gbit_per_sec": self.gbits(),
            "mismatches": self.mismatches,
            "lost": self.lost,
            "total_messages": self.total_messages,
            "cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
            "rtt_us": {
                "p50": self.us(0.5),
                "p99": self.us(0.99),
                "p999": self.us(0.999),
                "max": if self.rtt.is_empty() { 0.0 } else { self.rtt.max() as f64 / 1000.0 },
                "mean": self.rtt.mean() / 1000.0,
            },
        })
        .to_string()
    }

    /// Human-readable summary.
    pub(crate) fn human(&self) -> String {
        format!(
            "{mode}: {size} B messages, window {window}, {flows} flow(s), {secs:.2} s measured\n  \
             {msgs} round trips: {rate:.0} msg/s, {gbits:.3} Gbit/s payload each way\n  \
             RTT us: p50 {p50:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}  mean {mean:.1}\n  \
             {total} round trips in the whole run ({wall:.2} s wall, {cpu:.3} s CPU)\n  \
             mismatched echoes: {mm}{lost}",
            mode = self.mode,
            size = self.size,
            window = self.window,
            flows = self.flows,
            secs = self.elapsed.as_secs_f64(),
            msgs = self.messages,
            rate = self.rate(),
            gbits = self.gbits(),
            p50 = self.us(0.5),
            p99 = self.us(0.99),
            p999 = self.us(0.999),
            max = if self.rtt.is_empty() {
                0.0
            } else {
                self.rtt.max() as f64 / 1000.0
            },
            mean = self.rtt.mean() / 1000.0,
            total = self.total_messages,
            wall = self.wall_s,
            cpu = self.cpu_s,
            mm = self.mismatches,
            lost = if self.mode == "udp" {
                format!(", lost datagrams: {}", self.lost)
            } else {
                String::new()
            },
        )
    }
}
