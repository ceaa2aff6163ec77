//! Congestion control (PROTOCOL.md §7): a trait, a delay-based default modelled on Swift
//! (Kumar et al., SIGCOMM 2020) driven by the header timestamps, and a fixed window.

use std::time::Duration;

use crate::time::Instant;

/// A congestion controller for one flow. Windows are in packets.
pub trait CongestionControl: Send + std::fmt::Debug {
    /// Packets that may be in flight.
    fn window(&self) -> u32;
    /// `newly_acked` packets were acknowledged (cumulatively or selectively); `rtt` is the sample
    /// the acknowledgement produced, if any.
    fn on_ack(&mut self, now: Instant, newly_acked: u32, rtt: Option<Duration>);
    /// A loss was detected through SACK (fast retransmit).
    fn on_loss(&mut self, now: Instant);
    /// The retransmission timer expired.
    fn on_timeout(&mut self, now: Instant);
}

/// Which controller new flows get.
#[derive(Debug, Clone, PartialEq)]
pub enum CongestionConfig {
    /// The Swift-like delay-based controller (the default).
    Swift(SwiftConfig),
    /// A constant window, as in the C++ original (which used 32). Flow control still applies.
    Fixed {
        /// Packets allowed in flight.
        window: u32,
    },
}

impl Default for CongestionConfig {
    fn default() -> Self {
        CongestionConfig::Swift(SwiftConfig::default())
    }
}

impl CongestionConfig {
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        match self {
            CongestionConfig::Fixed { window } if *window == 0 => {
                Err("fixed window must be positive")
            }
            CongestionConfig::Fixed { .. } => Ok(()),
            CongestionConfig::Swift(s) => s.validate(),
        }
    }

    /// A controller for a new flow.
    pub fn build(&self) -> Controller {
        match self {
            CongestionConfig::Swift(c) => Controller::Swift(Swift::new(c.clone())),
            CongestionConfig::Fixed { window } => {
                Controller::Fixed(FixedWindow { window: *window })
            }
        }
    }
}

/// Static dispatch over the built-in controllers (no allocation or virtual call per ACK).
#[derive(Debug, Clone)]
pub enum Controller {
    /// See [`Swift`].
    Swift(Swift),
    /// See [`FixedWindow`].
    Fixed(FixedWindow),
}

impl CongestionControl for Controller {
    fn window(&self) -> u32 {
        match self {
            Controller::Swift(c) => c.window(),
            Controller::Fixed(c) => c.window(),
        }
    }
    fn on_ack(&mut self, now: Instant, newly_acked: u32, rtt: Option<Duration>) {
        match self {
            Controller::Swift(c) => c.on_ack(now, newly_acked, rtt),
            Controller::Fixed(c) => c.on_ack(now, newly_acked, rtt),
        }
    }
    fn on_loss(&mut self, now: Instant) {
        match self {
            Controller::Swift(c) => c.on_loss(now),
            Controller::Fixed(c) => c.on_loss(now),
        }
    }
    fn on_timeout(&mut self, now: Instant) {
        match self {
            Controller::Swift(c) => c.on_timeout(now),
            Controller::Fixed(c) => c.on_timeout(now),
        }
    }
}

/// A constant window.
#[derive(Debug, Clone)]
pub struct FixedWindow {
    /// Packets allowed in flight.
    pub window: u32,
}

impl CongestionControl for FixedWindow {
    fn window(&self) -> u32 {
        self.window
    }
    fn on_ack(&mut self, _: Instant, _: u32, _: Option<Duration>) {}
    fn on_loss(&mut self, _: Instant) {}
    fn on_timeout(&mut self, _: Instant) {}
}

/// Parameters of the Swift-like controller.
#[derive(Debug, Clone, PartialEq)]
pub struct SwiftConfig {
    /// Queuing delay tolerated above the lowest RTT seen before the window shrinks.
    pub target_queuing_delay: Duration,
    /// Packets added to the window per round trip while below target.
    pub additive_increase: f64,
    /// Multiplicative-decrease gain: the cut is `beta * (delay - target) / delay`.
    pub beta: f64,
    /// Largest fraction of the window removed by one decrease.
    pub max_decrease: f64,
    /// Window of a new flow, in packets.
    pub initial_window: f64,
    /// The window never shrinks below this many packets.
    pub min_window: f64,
    /// The window never grows beyond this many packets.
    pub max_window: f64,
    /// Consecutive timeouts after which the window collapses to `min_window`.
    pub timeouts_to_reset: u32,
}

impl Default for SwiftConfig {
    fn default() -> Self {
        SwiftConfig {
            target_queuing_delay: Duration::from_micros(100),
            additive_increase: 1.0,
            beta: 0.8,
            max_decrease: 0.5,
            initial_window: 32.0,
            min_window: 1.0,
            max_window: 4096.0,
            timeouts_to_reset: 2,
        }
    }
}

impl SwiftConfig {
    fn validate(&self) -> Result<(), &'static str> {
        let ok = self.additive_increase > 0.0
            && self.beta > 0.0
            && self.max_decrease > 0.0
            && self.max_decrease < 1.0
            && self.min_window >= 1.0
            && self.min_window <= self.initial_window
            && self.initial_window <= self.max_window;
        if ok {
            Ok(())
        } else {
            Err("swift needs positive gains, 0 < max_decrease < 1 and 1 <= min <= initial <= max window")
        }
    }
}

/// Delay-based AIMD: grow additively while the measured RTT stays within `target_queuing_delay`
/// of the lowest RTT seen; shrink in proportion to the excess at most once per RTT; halve on loss.
#[derive(Debug, Clone)]
pub struct Swift {
    cfg: SwiftConfig,
    cwnd: f64,
    base_rtt: Option<Duration>,
    last_rtt: Duration,
    last_decrease: Option<Instant>,
    consecutive_timeouts: u32,
}

impl Swift {
    /// A controller starting at `cfg.initial_window`.
    pub fn new(cfg: SwiftConfig) -> Self {
        Swift {
            cwnd: cfg.initial_window,
            cfg,
            base_rtt: None,
            last_rtt: Duration::ZERO,
            last_decrease: None,
            consecutive_timeouts: 0,
        }
    }

    /// The current (fractional) window.
    pub fn cwnd(&self) -> f64 {
        self.cwnd
    }

    fn can_decrease(&self, now: Instant) -> bool {
        self.last_decrease
            .is_none_or(|t| now.saturating_since(t) >= self.last_rtt)
    }

    fn decrease(&mut self, now: Instant, factor: f64) {
        if self.can_decrease(now) {
            self.cwnd =
                (self.cwnd * (1.0 - factor)).clamp(self.cfg.min_window, self.cfg.max_window);
            self.last_decrease = Some(now);
        }
    }
}

impl CongestionControl for Swift {
    fn window(&self) -> u32 {
        self.cwnd as u32
    }

    fn on_ack(&mut self, now: Instant, newly_acked: u32, rtt: Option<Duration>) {
        if newly_acked == 0 {
            return;
        }
        self.consecutive_timeouts = 0;
        let Some(rtt) = rtt else {
            return;
        };
        self.last_rtt = rtt;
        let base = *self.base_rtt.get_or_insert(rtt);
        let base = base.min(rtt);
        self.base_rtt = Some(base);
        let target = base + self.cfg.target_queuing_delay;
        if rtt <= target {
            self.cwnd += self.cfg.additive_increase * f64::from(newly_acked) / self.cwnd;
            self.cwnd = self.cwnd.min(self.cfg.max_window);
        } else {
            let excess = (rtt - target).as_secs_f64() / rtt.as_secs_f64();
            self.decrease(now, (self.cfg.beta * excess).min(self.cfg.max_decrease));
        }
    }

    fn on_loss(&mut self, now: Instant) {
        self.decrease(now, self.cfg.max_decrease);
    }

    fn on_timeout(&mut self, now: Instant) {
        self.consecutive_timeouts += 1;
        if self.consecutive_timeouts >= self.cfg.timeouts_to_reset {
            self.cwnd = self.cfg.min_window;
            self.last_decrease = Some(now);
        } else {
            self.decrease(now, self.cfg.max_decrease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64) -> Instant {
        Instant::from_nanos(us * 1000)
    }

    #[test]
    fn swift_grows_below_target_and_shrinks_above() {
        let mut s = Swift::new(SwiftConfig::default());
        let w0 = s.cwnd();
        for i in 0..100 {
            s.on_ack(at(i * 10), 1, Some(Duration::from_micros(20)));
        }
        assert!(s.cwnd() > w0 + 2.0, "grew to {}", s.cwnd());
        let grown = s.cwnd();
        // 1 ms RTT against a 20 µs base: far above target, cut by max_decrease.
        s.on_ack(at(10_000), 1, Some(Duration::from_millis(1)));
        assert!((s.cwnd() - grown * 0.5).abs() < 1e-9);
        // At most one decrease per RTT.
        s.on_ack(at(10_100), 1, Some(Duration::from_millis(1)));
        assert!((s.cwnd() - grown * 0.5).abs() < 1e-9);
    }

    #[test]
    fn swift_timeouts_collapse_the_window() {
        let mut s = Swift::new(SwiftConfig::default());
        s.on_timeout(at(1));
        assert_eq!(s.window(), 16);
        s.on_timeout(at(2));
        assert_eq!(s.window(), 1);
    }
}
