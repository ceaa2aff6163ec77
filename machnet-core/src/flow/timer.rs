//! A flow's timers in one table: one deadline slot per kind, so the next deadline is a minimum
//! over a small array and no timer can be forgotten when the engine asks when to wake the flow.

use crate::time::Instant;

/// The timers of one flow. Which ones can run depends on the flow's phase; a phase change stops
/// those that no longer apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Client: resend the SYN batch. Server: give up on a half-open flow.
    Handshake = 0,
    /// Server: the SYN-ACK batch waits for the engine's answer budget to refill.
    SprayPause = 1,
    /// Finished flow: stop acknowledging retransmitted FINs and disappear.
    Linger = 2,
    /// The peer fell silent too long: the flow times out.
    Idle = 3,
    /// Retransmission timeout.
    Rto = 4,
    /// Time-based loss detection: a suspect packet becomes due.
    Loss = 5,
    /// Tail-loss probe.
    Probe = 6,
    /// Ask the peer for an acknowledgement after a quiet spell.
    Keepalive = 7,
}

impl Timer {
    /// Every timer, in the order [`TimerTable::expired`] reports them (the order the flow must
    /// handle them in: a flow that timed out does not retransmit first).
    const ALL: [Timer; 8] = [
        Timer::Handshake,
        Timer::SprayPause,
        Timer::Linger,
        Timer::Idle,
        Timer::Rto,
        Timer::Loss,
        Timer::Probe,
        Timer::Keepalive,
    ];
}

/// Deadlines of a flow's timers; `None` is a stopped timer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; Timer::ALL.len()],
}

impl TimerTable {
    /// Starts `timer` (or moves it) to fire at `at`.
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    /// Stops `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    /// When `timer` fires, if it runs.
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer as usize]
    }

    /// Whether `timer` runs and is due at `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.deadlines[timer as usize].is_some_and(|d| d <= now)
    }

    /// The earliest deadline of any running timer.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().copied().min()
    }

    /// The timers due at `now`, in handling order. A snapshot: a handler that stops or moves a
    /// later timer must be checked with [`TimerTable::is_expired`] before that timer is handled.
    pub(crate) fn expired(&self, now: Instant) -> impl Iterator<Item = Timer> {
        let table = *self;
        Timer::ALL
            .into_iter()
            .filter(move |&t| table.is_expired(t, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    #[test]
    fn empty_table_has_no_expiry() {
        let t = TimerTable::default();
        assert_eq!(t.next_expiry(), None);
        assert_eq!(t.expired(at(u64::MAX)).count(), 0);
    }

    #[test]
    fn next_expiry_is_the_earliest_running_timer() {
        let mut t = TimerTable::default();
        t.set(Timer::Keepalive, at(50));
        t.set(Timer::Rto, at(20));
        t.set(Timer::Idle, at(90));
        assert_eq!(t.next_expiry(), Some(at(20)));
        t.stop(Timer::Rto);
        assert_eq!(t.next_expiry(), Some(at(50)));
        assert_eq!(t.get(Timer::Rto), None);
        assert_eq!(t.get(Timer::Idle), Some(at(90)));
    }

    #[test]
    fn set_moves_a_running_timer() {
        let mut t = TimerTable::default();
        t.set(Timer::Probe, at(10));
        t.set(Timer::Probe, at(30));
        assert_eq!(t.next_expiry(), Some(at(30)));
        assert!(!t.is_expired(Timer::Probe, at(29)));
        assert!(t.is_expired(Timer::Probe, at(30)));
    }

    #[test]
    fn expired_lists_due_timers_in_handling_order() {
        let mut t = TimerTable::default();
        t.set(Timer::Keepalive, at(5));
        t.set(Timer::Rto, at(10));
        t.set(Timer::Idle, at(10));
        t.set(Timer::Loss, at(11));
        let due: Vec<Timer> = t.expired(at(10)).collect();
        assert_eq!(due, [Timer::Idle, Timer::Rto, Timer::Keepalive]);
    }

    #[test]
    fn a_deadline_at_the_end_of_time_still_runs() {
        let mut t = TimerTable::default();
        t.set(Timer::Idle, at(u64::MAX));
        assert_eq!(t.next_expiry(), Some(at(u64::MAX)));
        assert!(t.is_expired(Timer::Idle, at(u64::MAX)));
    }
}
