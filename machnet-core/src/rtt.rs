//! Round-trip time estimation and the retransmission timeout (RFC 6298, PROTOCOL.md §6.3).

use std::time::Duration;

use crate::config::RtoConfig;

/// Smoothed RTT, RTT variance, minimum RTT and the resulting RTO.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Option<Duration>,
}

impl RttEstimator {
    pub(crate) fn new() -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: None,
        }
    }

    /// Feeds one RTT sample.
    pub(crate) fn update(&mut self, sample: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(sample, |m| m.min(sample)));
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(sample);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + sample) / 8);
            }
        }
    }

    /// A retransmission timeout proved spurious and `sample` is the RTT that caused it: make the
    /// next RTO outlast such a delay (RFC 4015 §4.2: SRTT ≥ sample, RTTVAR ≥ sample / 2).
    pub(crate) fn on_spurious_timeout(&mut self, sample: Duration) {
        self.srtt = Some(self.srtt.map_or(sample, |s| s.max(sample)));
        self.rttvar = self.rttvar.max(sample / 2);
    }

    /// Smoothed RTT, if any sample was taken.
    pub(crate) fn smoothed(&self) -> Option<Duration> {
        self.srtt
    }

    /// Lowest RTT seen.
    pub(crate) fn min(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The retransmission timeout before backoff: `srtt + 4 * rttvar`, clamped to `[min, max]`.
    pub(crate) fn rto(&self, cfg: &RtoConfig) -> Duration {
        match self.srtt {
            None => cfg.initial,
            Some(srtt) => (srtt + self.rttvar * 4).clamp(cfg.min, cfg.max),
        }
    }
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rto_follows_samples_within_bounds() {
        let cfg = RtoConfig::default();
        let mut r = RttEstimator::new();
        assert_eq!(r.rto(&cfg), cfg.initial);
        for _ in 0..50 {
            r.update(Duration::from_micros(30));
        }
        assert_eq!(r.rto(&cfg), cfg.min);
        for _ in 0..50 {
            r.update(Duration::from_millis(100));
        }
        let rto = r.rto(&cfg);
        assert!(
            rto >= Duration::from_millis(100) && rto <= cfg.max,
            "{rto:?}"
        );
        assert_eq!(r.min(), Some(Duration::from_micros(30)));
    }
}
