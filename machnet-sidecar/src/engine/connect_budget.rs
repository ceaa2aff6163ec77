//! Budgets for the connects an application makes the sidecar start (docs/CHANNEL.md §2,
//! "Connect budgets").
//!
//! A connect to a silent host sprays doubling SYN batches until it times out
//! (docs/PROTOCOL.md §5), so an application that starts connects without limit makes its
//! sidecar flood the network. Three budgets bound that, each refusing a connect at once with
//! its own [`ConnectBudget`] code, before anything is sent:
//!
//! - connects **in progress** (started, not yet connected or failed) per channel — counted by
//!   the channel's engine alone ([`ChannelConnects`]);
//! - connects in progress per application, on all its channels and engines — a shared
//!   [`FlowCounter`], the mechanism of the per-application flow limit ([`super::flow_quota`]);
//! - connect **starts per second** per application — a lock-free token bucket shared by its
//!   channels ([`StartRate`]).
//!
//! Same-host flows ([`super::local`]) are not counted: they send no packet, and are connected
//! or refused within one pass of the engines.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use machnet_channel::ConnectBudget;
use machnet_core::Instant;

use super::flow_quota::{FlowCounter, FlowSlot};

/// The connect budgets (part of [`crate::control::limits::ControlLimits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectLimits {
    /// Connects in progress per channel (`--max-connecting-per-channel`).
    pub per_channel: usize,
    /// Connects in progress per application (`--max-connecting-per-app`).
    pub per_app: usize,
    /// Connects an application may start per second, on average (`--max-connect-rate-per-app`).
    pub rate_per_app: u32,
    /// Connects an application may start at once after a quiet period
    /// (`--connect-burst-per-app`).
    pub burst_per_app: u32,
}

/// Default connect budgets.
///
/// A connect to a responsive host completes in one round trip (tens of microseconds), so
/// even at the full start rate only a handful are in progress at once; the in-progress caps
/// matter for silent hosts, where each connect lives for the whole SYN schedule (5.1 s by
/// default). 64 per channel lets a channel open a connection pool at once (the listen-group
/// tests pipeline 64 connects on one channel); 128 per application (two such channels)
/// bounds the SYNs it can make the sidecar send to silent hosts to 128 x SYNs-per-connect per
/// 5.1 s (12,800 SYN/s from a 1-engine sidecar, whose connects spray 511 SYNs each: 16x less
/// than the 200,000 SYN/s measured without budgets). The start rate, 10,000 a second with a burst of 128 (so the in-progress
/// cap can be filled at once), bounds the SYN rate toward hosts that answer (or refuse) at
/// once to 10,000 x the first batch while leaving connection-heavy clients (load generators,
/// connection pools refilling) alone.
pub const DEFAULT_CONNECT_LIMITS: ConnectLimits = ConnectLimits {
    per_channel: 64,
    per_app: 128,
    rate_per_app: 10_000,
    burst_per_app: 128,
};

impl Default for ConnectLimits {
    fn default() -> Self {
        DEFAULT_CONNECT_LIMITS
    }
}

/// A token bucket of `burst` tokens refilled at `rate` a second, as the generic cell rate
/// algorithm: one atomic word (the theoretical arrival time of the next start), so engines
/// share it without a lock. Time is the sidecar clock's ([`crate::clock::Clock`]: every
/// engine's instants share one epoch), passed in, so tests simulate it.
#[derive(Debug)]
pub struct StartRate {
    /// Nanoseconds one token takes to come back.
    interval: u64,
    /// How far ahead of now the arrival time may run: `burst` intervals.
    tolerance: u64,
    /// When the bucket is full again (ns of the clock); 0 = full from the start.
    full_at: AtomicU64,
}

impl StartRate {
    /// A full bucket of `burst` tokens refilled at `rate` a second (both at least 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        // Rounded up: never faster than `rate`.
        let interval = 1_000_000_000u64.div_ceil(u64::from(rate.max(1)));
        StartRate {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1))),
            full_at: AtomicU64::new(0),
        }
    }

    /// Takes a token at `now`; `false` if the bucket is empty.
    pub fn try_take(&self, now: Instant) -> bool {
        let now = now.as_nanos();
        self.full_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |full_at| {
                let next = full_at.max(now).saturating_add(self.interval);
                (next - now <= self.tolerance).then_some(next)
            })
            .is_ok()
    }
}

/// One application's connect budgets, shared by all its channels (on any engine).
#[derive(Debug)]
pub struct AppConnects {
    in_progress: Arc<FlowCounter>,
    starts: StartRate,
}

impl AppConnects {
    /// Budgets of one application.
    pub fn new(limits: &ConnectLimits) -> Arc<Self> {
        Arc::new(AppConnects {
            in_progress: FlowCounter::new(limits.per_app),
            starts: StartRate::new(limits.rate_per_app, limits.burst_per_app),
        })
    }

    /// Connects of the application in progress now.
    pub fn in_progress(&self) -> usize {
        self.in_progress.used()
    }
}

/// Refused connects, per budget (the engine's stats line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectRefusals {
    /// By the per-channel in-progress budget.
    pub channel: u64,
    /// By the per-application in-progress budget.
    pub app: u64,
    /// By the per-application start rate.
    pub rate: u64,
}

impl ConnectRefusals {
    fn count(&mut self, b: ConnectBudget) {
        match b {
            ConnectBudget::ChannelInProgress => self.channel += 1,
            ConnectBudget::AppInProgress => self.app += 1,
            ConnectBudget::AppStartRate => self.rate += 1,
        }
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: ConnectRefusals) {
        self.channel += other.channel;
        self.app += other.app;
        self.rate += other.rate;
    }
}

/// One channel's connects in progress (over the network), keyed by their transport flow `F`,
/// each holding its place in the application's in-progress budget until it connects, fails
/// or leaves the channel.
#[derive(Debug)]
pub struct ChannelConnects<F> {
    per_channel: usize,
    app: Arc<AppConnects>,
    in_progress: HashMap<F, FlowSlot>,
    refusals: ConnectRefusals,
}

impl<F: Hash + Eq> ChannelConnects<F> {
    /// A channel allowed `per_channel` connects in progress, of an application with budgets
    /// `app`.
    pub fn new(per_channel: usize, app: Arc<AppConnects>) -> Self {
        ChannelConnects {
            per_channel,
            app,
            in_progress: HashMap::new(),
            refusals: ConnectRefusals::default(),
        }
    }

    /// Without limits (unit tests of a channel).
    pub fn unlimited() -> Self {
        let limits = ConnectLimits {
            per_channel: usize::MAX,
            per_app: usize::MAX,
            rate_per_app: u32::MAX,
            burst_per_app: u32::MAX,
        };
        ChannelConnects::new(usize::MAX, AppConnects::new(&limits))
    }

    /// Admits a connect at `now`, or names the budget it would exceed. Budgets are checked
    /// channel, application, rate: a connect refused for being in progress takes no token.
    /// The connect is counted once [`ChannelConnects::started`] names its flow.
    pub fn admit(&mut self, now: Instant) -> Result<FlowSlot, ConnectBudget> {
        let res = if self.in_progress.len() >= self.per_channel {
            Err(ConnectBudget::ChannelInProgress)
        } else {
            match self.app.in_progress.take_slot() {
                None => Err(ConnectBudget::AppInProgress),
                Some(slot) if self.app.starts.try_take(now) => Ok(slot),
                Some(_) => Err(ConnectBudget::AppStartRate),
            }
        };
        if let Err(b) = res {
            self.refusals.count(b);
        }
        res
    }

    /// The connect admitted with `slot` became `flow`.
    pub fn started(&mut self, flow: F, slot: FlowSlot) {
        self.in_progress.insert(flow, slot);
    }

    /// `flow` connected, failed, or left the channel: if it was a connect in progress, its
    /// places come back.
    pub fn ended(&mut self, flow: F) {
        self.in_progress.remove(&flow);
    }

    /// Connects of this channel in progress.
    pub fn in_progress(&self) -> usize {
        self.in_progress.len()
    }

    /// Refusals counted since the last call.
    pub fn take_refusals(&mut self) -> ConnectRefusals {
        std::mem::take(&mut self.refusals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn at(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    #[test]
    fn the_start_rate_allows_a_burst_then_one_start_per_interval() {
        // 1,000 a second (one per ms), burst 4.
        let r = StartRate::new(1_000, 4);
        let t0 = 10 * MS;
        for i in 0..4 {
            assert!(r.try_take(at(t0)), "start {i} of the burst");
        }
        assert!(!r.try_take(at(t0)), "the burst is spent");
        assert!(
            !r.try_take(at(t0 + MS - 1)),
            "a token takes a full interval"
        );
        assert!(r.try_take(at(t0 + MS)));
        assert!(!r.try_take(at(t0 + MS)));
        // Quiet for long: the bucket refills to the burst, not beyond.
        let t1 = t0 + 1_000 * MS;
        let n = (0..100).filter(|_| r.try_take(at(t1))).count();
        assert_eq!(n, 4);
        // Over a long run at a high attempt rate, starts = burst + elapsed x rate.
        let r = StartRate::new(1_000, 8);
        let mut ok = 0u64;
        for step in 0..100_000u64 {
            // An attempt every 10 µs for 1 s.
            if r.try_take(at(step * 10_000)) {
                ok += 1;
            }
        }
        assert_eq!(ok, 8 + 999, "burst + one per ms over 999.99 ms");
    }

    #[test]
    fn the_start_rate_never_exceeds_its_rate_when_it_does_not_divide_a_second() {
        // 3 a second: an interval of 333,333,334 ns (rounded up).
        let r = StartRate::new(3, 1);
        let mut ok = 0;
        for ms in 0..10_000u64 {
            if r.try_take(at(ms * MS)) {
                ok += 1;
            }
        }
        assert_eq!(ok, 30, "1 + 29 refills in 9.999 s");
    }

    #[test]
    fn the_start_rate_survives_extreme_values_and_instants_out_of_order() {
        // The largest rate: one token a nanosecond, a bucket of 2^32 - 1.
        let r = StartRate::new(u32::MAX, u32::MAX);
        assert!((0..10_000).all(|_| r.try_take(at(5))));
        // Engines read the clock at slightly different times: an instant before the last
        // start finds the bucket as the last start left it (no underflow, no refill).
        let r = StartRate::new(1, 1);
        assert!(r.try_take(at(10_000 * MS)));
        assert!(!r.try_take(at(5_000 * MS)));
        assert!(r.try_take(at(11_000 * MS)));
    }

    fn flow(n: u32) -> u32 {
        n
    }

    #[test]
    fn in_progress_budgets_count_per_channel_and_per_app_and_come_back() {
        let limits = ConnectLimits {
            per_channel: 2,
            per_app: 3,
            rate_per_app: 1,
            burst_per_app: 4,
        };
        let app = AppConnects::new(&limits);
        let mut a = ChannelConnects::new(2, app.clone());
        let mut b = ChannelConnects::new(2, app.clone());
        let now = at(0);
        for i in 0..2 {
            let s = a.admit(now).unwrap();
            a.started(flow(i), s);
        }
        assert_eq!(a.admit(now).err(), Some(ConnectBudget::ChannelInProgress));
        let s = b.admit(now).unwrap();
        b.started(flow(10), s);
        assert_eq!(b.admit(now).err(), Some(ConnectBudget::AppInProgress));
        assert_eq!(app.in_progress(), 3);
        // One connects: its places come back; ending it again changes nothing.
        a.ended(flow(0));
        a.ended(flow(0));
        assert_eq!((a.in_progress(), app.in_progress()), (1, 2));
        let s = b.admit(now).unwrap();
        b.started(flow(11), s);
        // Four tokens spent, none back within the second: the rate refuses, and gives the
        // in-progress place back.
        a.ended(flow(1));
        assert_eq!(a.admit(now).err(), Some(ConnectBudget::AppStartRate));
        assert_eq!(app.in_progress(), 2);
        assert!(a.admit(at(1_000 * MS)).is_ok());
        // A channel that goes gives back its places.
        drop(b);
        assert_eq!(app.in_progress(), 0);
        assert_eq!(
            a.take_refusals(),
            ConnectRefusals {
                channel: 1,
                app: 0,
                rate: 1
            }
        );
        assert_eq!(a.take_refusals(), ConnectRefusals::default());
    }
}
