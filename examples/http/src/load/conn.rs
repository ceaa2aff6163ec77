//! One load-generating connection as a state machine driven by the caller's clock: which
//! requests to send now, and the latency of each response from its intended send time.

use std::collections::VecDeque;

use hdrhistogram::Histogram;

use super::response::{ResponseError, ResponseReader};
use super::schedule::Schedule;

/// Latencies are recorded in nanoseconds up to this (longer ones are clamped).
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// What one connection measured.
#[derive(Debug, Clone)]
pub struct ConnStats {
    /// Latency (response complete − intended send time) of every response, in nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// Requests written.
    pub sent: u64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses with another status.
    pub bad_status: u64,
    /// Requests that got no response: outstanding when the connection failed or the run's
    /// drain time ended, or never sent because the connection had failed.
    pub lost: u64,
    /// Why the connection ended early, if it did.
    pub failure: Option<String>,
    /// When the last response completed (ns from the start of the run).
    pub last_response_ns: u64,
}

impl ConnStats {
    fn new() -> ConnStats {
        ConnStats {
            latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid bounds"),
            sent: 0,
            ok: 0,
            bad_status: 0,
            lost: 0,
            failure: None,
            last_response_ns: 0,
        }
    }

    /// Adds another connection's figures to these.
    pub fn merge(&mut self, other: &ConnStats) {
        self.latency_ns.add(&other.latency_ns).expect("same bounds");
        self.sent += other.sent;
        self.ok += other.ok;
        self.bad_status += other.bad_status;
        self.lost += other.lost;
        if self.failure.is_none() {
            self.failure.clone_from(&other.failure);
        }
        self.last_response_ns = self.last_response_ns.max(other.last_response_ns);
    }

    /// Empty figures (to merge into).
    pub fn empty() -> ConnStats {
        ConnStats::new()
    }
}

/// The pure logic of one connection. Times are nanoseconds from the start of the run, given by
/// the caller (the driver reads a monotonic clock; tests inject times).
#[derive(Debug)]
pub struct ConnLogic {
    schedule: Schedule,
    request: Vec<u8>,
    /// Intended send times of the requests written and not yet answered, oldest first.
    outstanding: VecDeque<u64>,
    reader: ResponseReader,
    stats: ConnStats,
}

impl ConnLogic {
    /// A connection sending `request` (one complete HTTP/1.1 request) on `schedule`.
    pub fn new(schedule: Schedule, request: Vec<u8>) -> ConnLogic {
        ConnLogic {
            schedule,
            request,
            outstanding: VecDeque::new(),
            reader: ResponseReader::new(),
            stats: ConnStats::new(),
        }
    }

    /// Appends to `out` every request due at `now_ns` and not sent yet — whether or not
    /// earlier ones were answered (open loop, pipelined) — and returns how many.
    pub fn take_due(&mut self, now_ns: u64, out: &mut Vec<u8>) -> u64 {
        let due = self.schedule.take_due(now_ns);
        let n = due.end - due.start;
        for i in due {
            self.outstanding.push_back(self.schedule.intended_ns(i));
            out.extend_from_slice(&self.request);
        }
        self.stats.sent += n;
        n
    }

    /// When the next request is due, or `None` when all were taken.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.schedule.next_due_ns()
    }

    /// Consumes bytes read at `now_ns`; each completed response is matched with the oldest
    /// outstanding request and its latency measured from that request's intended time.
    pub fn on_bytes(&mut self, data: &[u8], now_ns: u64) -> Result<(), ResponseError> {
        let outstanding = &mut self.outstanding;
        let stats = &mut self.stats;
        let mut unexpected = false;
        self.reader.feed(data, |status| {
            let Some(intended) = outstanding.pop_front() else {
                unexpected = true;
                return;
            };
            let latency = now_ns.saturating_sub(intended).clamp(1, MAX_LATENCY_NS);
            stats
                .latency_ns
                .record(latency)
                .expect("clamped into bounds");
            stats.last_response_ns = stats.last_response_ns.max(now_ns);
            if (200..300).contains(&status) {
                stats.ok += 1;
            } else {
                stats.bad_status += 1;
            }
        })?;
        if unexpected {
            return Err(ResponseError::Unsolicited);
        }
        Ok(())
    }

    /// Requests written and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// True when every request was sent and answered.
    pub fn is_done(&self) -> bool {
        self.next_due_ns().is_none() && self.outstanding.is_empty()
    }

    /// Ends the connection (`failure`: why, if it failed): what is still outstanding or unsent
    /// is counted as lost. Returns the figures.
    pub fn finish(mut self, failure: Option<String>) -> ConnStats {
        self.stats.lost += self.outstanding.len() as u64 + self.schedule.remaining();
        self.stats.failure = failure;
        self.stats
    }
}
