//! When each request of one connection is due: the offered rate spread over the connections.

use std::ops::Range;

/// The intended send times of one connection's requests, in nanoseconds from the start of the
/// run. Request `i` of connection `k` (of `conns`) is the run's request number `i * conns + k`,
/// due at `(i * conns + k) / rate` seconds: the connections interleave evenly and together
/// offer exactly `rate` requests per second, with no drift from rounding.
#[derive(Debug, Clone)]
pub struct Schedule {
    rate: u64,
    conns: u64,
    conn: u64,
    duration_ns: u64,
    next: u64,
}

impl Schedule {
    /// Connection `conn` of `conns` at `rate` requests/s in total, for `duration_ns`.
    ///
    /// # Panics
    /// If `rate` or `conns` is 0 or `conn >= conns` (the caller validates its arguments).
    pub fn new(rate: u64, conns: u64, conn: u64, duration_ns: u64) -> Schedule {
        assert!(rate > 0 && conns > 0 && conn < conns, "invalid schedule");
        Schedule {
            rate,
            conns,
            conn,
            duration_ns,
            next: 0,
        }
    }

    /// The intended send time of this connection's request `i`.
    pub fn intended_ns(&self, i: u64) -> u64 {
        let n = u128::from(i) * u128::from(self.conns) + u128::from(self.conn);
        u64::try_from(n * 1_000_000_000 / u128::from(self.rate)).unwrap_or(u64::MAX)
    }

    /// When the next request not yet taken is due; `None` once the run's duration is over.
    pub fn next_due_ns(&self) -> Option<u64> {
        let t = self.intended_ns(self.next);
        (t < self.duration_ns).then_some(t)
    }

    /// Takes every request due at `now_ns` that was not taken before (maybe none, maybe many
    /// when the caller is late: they are all sent at once, keeping their intended times).
    pub fn take_due(&mut self, now_ns: u64) -> Range<u64> {
        let start = self.next;
        while let Some(t) = self.next_due_ns() {
            if t > now_ns {
                break;
            }
            self.next += 1;
        }
        start..self.next
    }

    /// Requests still to be taken before the run ends.
    pub fn remaining(&self) -> u64 {
        self.total().saturating_sub(self.next)
    }

    /// This connection's requests in the whole run: the `i` with `(i * conns + conn) * 1e9 /
    /// rate < duration`, i.e. run-wide numbers below `ceil(duration * rate / 1e9)`.
    pub fn total(&self) -> u64 {
        let run = (u128::from(self.duration_ns) * u128::from(self.rate)).div_ceil(1_000_000_000);
        let run = u64::try_from(run).unwrap_or(u64::MAX);
        if run > self.conn {
            (run - self.conn).div_ceil(self.conns)
        } else {
            0
        }
    }
}
