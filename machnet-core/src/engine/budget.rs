//! A token bucket for packets an engine sends *in answer to* someone else's packet during
//! connection setup (SYN-ACK sprays, sprayed refusal RSTs).
//!
//! RSS-- makes a server answer one SYN with a batch of packets; without a budget a stream of
//! forged SYNs would turn the engine into an amplifier. The budget bounds that traffic to a
//! configured rate whatever the input (PROTOCOL.md §5.2).

use crate::time::Instant;

#[derive(Debug, Clone)]
pub struct SprayBudget {
    tokens: f64,
    rate_per_sec: f64,
    burst: f64,
    last: Instant,
}

impl SprayBudget {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        SprayBudget {
            tokens: f64::from(burst),
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst),
            last: Instant::ZERO,
        }
    }

    /// Takes one token if available.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_rate_up_to_burst() {
        let mut b = SprayBudget::new(1000, 10);
        let t0 = Instant::ZERO + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.take(t0)).count(), 10);
        let t1 = t0 + Duration::from_millis(5);
        assert_eq!((0..20).filter(|_| b.take(t1)).count(), 5);
        let t2 = t1 + Duration::from_secs(100);
        assert_eq!((0..20).filter(|_| b.take(t2)).count(), 10);
    }
}
