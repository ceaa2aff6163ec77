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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi";

    fn logic(rate: u64, conns: u64, conn: u64, duration_ns: u64) -> ConnLogic {
        ConnLogic::new(
            Schedule::new(rate, conns, conn, duration_ns),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        )
    }

    fn latencies_ms(stats: &ConnStats) -> Vec<u64> {
        stats
            .latency_ns
            .iter_recorded()
            .flat_map(|v| {
                std::iter::repeat_n(v.value_iterated_to() / MS, v.count_at_value() as usize)
            })
            .collect()
    }

    #[test]
    fn due_requests_are_sent_while_earlier_ones_are_unanswered() {
        // 1000 req/s on one connection: one request per ms, for 10 ms. The clock is injected.
        let mut l = logic(1000, 1, 0, 10 * MS);
        let mut out = Vec::new();
        assert_eq!(l.take_due(0, &mut out), 1);
        // Nothing answered, yet at 3.5 ms the requests of 1, 2 and 3 ms go out (pipelined).
        assert_eq!(l.take_due(3 * MS + MS / 2, &mut out), 3);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n".repeat(4));
        assert_eq!(l.outstanding(), 4);
        assert_eq!(l.next_due_ns(), Some(4 * MS));
    }

    #[test]
    fn latency_is_measured_from_the_intended_send_time() {
        let mut l = logic(1000, 1, 0, 4 * MS);
        let mut out = Vec::new();
        // The sender was late: all four requests (intended at 0, 1, 2, 3 ms) leave at 3 ms.
        assert_eq!(l.take_due(3 * MS, &mut out), 4);
        // The server answers all four at 10 ms: latencies 10, 9, 8, 7 ms, not 7 ms each (the
        // late send is queueing the client would otherwise hide: coordinated omission).
        l.on_bytes(&OK.repeat(4), 10 * MS).unwrap();
        assert!(l.is_done());
        let s = l.finish(None);
        assert_eq!(latencies_ms(&s), vec![7, 8, 9, 10]);
        assert_eq!((s.sent, s.ok, s.lost, s.bad_status), (4, 4, 0, 0));
        assert_eq!(s.last_response_ns, 10 * MS);
    }

    #[test]
    fn responses_match_requests_in_order_across_reads() {
        // Connection 1 of 2 at 1000 req/s: its requests are intended at 1, 3, 5 ms.
        let mut l = logic(1000, 2, 1, 6 * MS);
        let mut out = Vec::new();
        assert_eq!(l.take_due(5 * MS, &mut out), 3);
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let mut bytes = OK.to_vec();
        bytes.extend_from_slice(bad);
        bytes.extend_from_slice(OK);
        // The first response and half the second arrive at 6 ms, the rest at 8 ms.
        l.on_bytes(&bytes[..OK.len() + 10], 6 * MS).unwrap();
        l.on_bytes(&bytes[OK.len() + 10..], 8 * MS).unwrap();
        let s = l.finish(None);
        assert_eq!(latencies_ms(&s), vec![3, 5, 5]);
        assert_eq!((s.ok, s.bad_status), (2, 1));
    }

    #[test]
    fn unanswered_and_unsent_requests_are_lost_and_extra_responses_are_errors() {
        let mut l = logic(1000, 1, 0, 10 * MS);
        let mut out = Vec::new();
        l.take_due(2 * MS, &mut out);
        l.on_bytes(OK, 3 * MS).unwrap();
        // The connection fails at 3 ms: 2 outstanding, 7 never sent.
        let s = l.finish(Some("reset".into()));
        assert_eq!((s.sent, s.ok, s.lost), (3, 1, 9));
        assert_eq!(s.failure.as_deref(), Some("reset"));

        let mut l = logic(1000, 1, 0, 10 * MS);
        assert_eq!(l.on_bytes(OK, 0), Err(ResponseError::Unsolicited));
    }
}
