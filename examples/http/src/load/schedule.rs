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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_at_the_offered_rate() {
        // 1000 req/s over 4 connections: connection k sends at k, k+4, k+8, ... ms.
        let s = Schedule::new(1000, 4, 1, 1_000_000_000);
        assert_eq!(s.intended_ns(0), 1_000_000);
        assert_eq!(s.intended_ns(1), 5_000_000);
        assert_eq!(s.intended_ns(249), 997_000_000);
        assert_eq!(s.total(), 250);
        let all: u64 = (0..4)
            .map(|k| Schedule::new(1000, 4, k, 1_000_000_000).total())
            .sum();
        assert_eq!(
            all, 1000,
            "the connections together offer exactly rate × duration"
        );
    }

    #[test]
    fn rates_that_do_not_divide_a_second_do_not_drift() {
        // 3 req/s: 0, 333_333_333, 666_666_666 ns; the 3000th request is at exactly 1000 s.
        let s = Schedule::new(3, 1, 0, u64::MAX);
        assert_eq!(s.intended_ns(1), 333_333_333);
        assert_eq!(s.intended_ns(2), 666_666_666);
        assert_eq!(s.intended_ns(3000), 1_000_000_000_000);
        // 7 connections at 30 001 req/s for 1.5 s: exactly ceil(1.5 × 30 001) in total.
        let total: u64 = (0..7)
            .map(|k| Schedule::new(30_001, 7, k, 1_500_000_000).total())
            .sum();
        assert_eq!(total, 45_002);
    }

    #[test]
    fn a_late_caller_takes_everything_due_at_once() {
        let mut s = Schedule::new(1000, 1, 0, 10_000_000);
        assert_eq!(s.take_due(0), 0..1, "request 0 is due at the start");
        assert_eq!(s.take_due(500_000), 1..1, "nothing new before 1 ms");
        assert_eq!(s.next_due_ns(), Some(1_000_000));
        // The caller oversleeps to 4.5 ms: requests 1..=4 are all due now.
        assert_eq!(s.take_due(4_500_000), 1..5);
        assert_eq!(s.remaining(), 5);
        assert_eq!(
            s.take_due(u64::MAX),
            5..10,
            "nothing is due after the duration"
        );
        assert_eq!(s.next_due_ns(), None);
        assert_eq!(s.remaining(), 0);
    }
}
