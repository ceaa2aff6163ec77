//! A token bucket for packets an engine sends *in answer to* someone else's packet during
//! connection setup (SYN-ACK sprays, sprayed refusal RSTs).
//!
//! RSS-- makes a server answer one SYN with a batch of packets; without a budget a stream of
//! forged SYNs would turn the engine into an amplifier. The budget bounds that traffic to a
//! configured rate whatever the input (PROTOCOL.md §5.2).

use std::time::Duration;

use crate::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct SprayBudget {
    tokens: f64,
    rate_per_sec: f64,
    burst: f64,
    last: Instant,
}

impl SprayBudget {
    pub(crate) fn new(rate_per_sec: u32, burst: u32) -> Self {
        SprayBudget {
            tokens: f64::from(burst),
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst),
            last: Instant::ZERO,
        }
    }

    /// Takes one token if available.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.try_take(now).is_ok()
    }

    /// Takes one token, or says how long until one is available.
    pub(crate) fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate_per_sec;
            Err(Duration::from_secs_f64(wait).max(Duration::from_nanos(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let mut b = SprayBudget::new(1000, 10);
        let t0 = Instant::ZERO + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 10);
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!((0..20).filter(|_| b.take(t1)).count(), 5);
        let t2 = t1 + Duration::from_secs(100);
        assert_eq!((0..20).filter(|_| b.take(t2)).count(), 10);
        let wait = b.try_take(t2).unwrap_err();
        assert!(wait <= Duration::from_millis(1) && b.try_take(t2 + wait).is_ok());
    }
}
