//! The fault model of one direction of a link between two hosts.
//!
//! A [`Link`] decides the fate of each datagram handed to it: dropped by a full queue, lost,
//! delivered once or twice, at which time, and whether a copy arrives corrupted. Every decision
//! draws from the caller's seeded generator, in a fixed order, so a run is reproducible.

use std::time::Duration;

use machnet_core::time::Instant;
use rand::Rng;

use crate::seed::SimRng;

/// Extra delay applied to a random subset of datagrams, so they arrive after later ones.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reorder {
    /// Probability that a datagram is held back.
    pub probability: f64,
    /// How long a held-back datagram is delayed on top of the normal delay.
    pub extra_delay: Duration,
}

/// A bottleneck: datagrams are serialised at `bytes_per_sec` behind a drop-tail queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Serialisation rate in bytes per second (must be positive).
    pub bytes_per_sec: u64,
    /// Bytes that may wait for serialisation; a datagram that would exceed it is dropped.
    pub queue_limit: usize,
}

impl Bandwidth {
    /// A rate in Gbit/s with a queue of `queue_limit` bytes.
    pub fn gbit(gbit_per_sec: f64, queue_limit: usize) -> Self {
        Bandwidth {
            bytes_per_sec: (gbit_per_sec * 1e9 / 8.0) as u64,
            queue_limit,
        }
    }

    fn serialisation_time(&self, len: usize) -> Duration {
        let rate = self.bytes_per_sec.max(1);
        Duration::from_nanos((len as u64).saturating_mul(1_000_000_000) / rate)
    }
}

/// Faults and capacity of one link direction. The default is a perfect link: no delay, no loss,
/// unlimited bandwidth.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkConfig {
    /// Propagation delay every datagram incurs.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0 ..= jitter` per datagram copy (reorders close packets).
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice (each copy gets its own delay).
    pub duplicate: f64,
    /// Occasional large extra delay.
    pub reorder: Reorder,
    /// Probability that a delivered copy has 1–3 random bits or bytes changed.
    pub corrupt: f64,
    /// Optional bottleneck; `None` is infinitely fast.
    pub bandwidth: Option<Bandwidth>,
}

impl LinkConfig {
    /// A perfect link with propagation delay `delay`.
    pub fn with_delay(delay: Duration) -> Self {
        LinkConfig {
            delay,
            ..Self::default()
        }
    }

    /// A link that loses every datagram: the peer looks dead.
    pub fn blackhole() -> Self {
        LinkConfig {
            loss: 1.0,
            ..Self::default()
        }
    }

    /// Checks that probabilities are in `0..=1` and the bandwidth is positive.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder.probability", self.reorder.probability),
            ("corrupt", self.corrupt),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("link {name} probability {p} is not in 0..=1"));
            }
        }
        if let Some(b) = self.bandwidth {
            if b.bytes_per_sec == 0 {
                return Err("link bandwidth must be positive".into());
            }
        }
        Ok(())
    }
}

/// Counters of one link direction (or, summed, of the whole network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams handed to the link.
    pub offered: u64,
    /// Dropped because the bottleneck queue was full.
    pub queue_drops: u64,
    /// Lost at random.
    pub lost: u64,
    /// Extra copies created.
    pub duplicated: u64,
    /// Copies that got the reorder delay.
    pub reordered: u64,
    /// Copies corrupted in flight.
    pub corrupted: u64,
    /// Copies scheduled for delivery (including duplicates and corrupted copies).
    pub scheduled: u64,
}

impl LinkStats {
    /// Adds `other` to `self` field by field.
    pub fn add(&mut self, other: &LinkStats) {
        self.offered += other.offered;
        self.queue_drops += other.queue_drops;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.corrupted += other.corrupted;
        self.scheduled += other.scheduled;
    }
}

/// One copy of a datagram that the link will deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Arrival time at the receiving host.
    pub at: Instant,
    /// Whether this copy must be corrupted (see [`corrupt`]).
    pub corrupt: bool,
}

/// What happens to a datagram: up to two deliveries (an original and a duplicate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fate {
    copies: [Option<Delivery>; 2],
}

impl Fate {
    /// The copies that will arrive, in no particular order.
    pub fn deliveries(&self) -> impl Iterator<Item = Delivery> + '_ {
        self.copies.iter().flatten().copied()
    }
}

/// State of one link direction: its configuration, its bottleneck queue and its counters.
#[derive(Debug, Clone)]
pub struct Link {
    config: LinkConfig,
    /// When the bottleneck finishes serialising what is queued.
    busy_until: Instant,
    stats: LinkStats,
}

/// Returns true with probability `p`, drawing nothing when the answer is certain.
fn chance(rng: &mut SimRng, p: f64) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random::<f64>() < p
    }
}

impl Link {
    /// A link direction with `config` and an empty queue.
    pub fn new(config: LinkConfig) -> Self {
        Link {
            config,
            busy_until: Instant::ZERO,
            stats: LinkStats::default(),
        }
    }

    /// The current configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Replaces the configuration; datagrams already in flight keep their fate.
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Counters so far.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// Decides the fate of a `len`-byte datagram sent at `now`.
    pub fn transmit(&mut self, now: Instant, len: usize, rng: &mut SimRng) -> Fate {
        self.stats.offered += 1;
        let c = &self.config;
        let mut departure = now;
        if let Some(bw) = c.bandwidth {
            let start = self.busy_until.max(now);
            let backlog_time = start - now;
            let backlog_bytes =
                backlog_time.as_nanos() * u128::from(bw.bytes_per_sec) / 1_000_000_000;
            if backlog_bytes + len as u128 > bw.queue_limit as u128 {
                self.stats.queue_drops += 1;
                return Fate::default();
            }
            departure = start + bw.serialisation_time(len);
            self.busy_until = departure;
        }
        if chance(rng, c.loss) {
            self.stats.lost += 1;
            return Fate::default();
        }
        let copies = if chance(rng, c.duplicate) { 2 } else { 1 };
        let mut fate = Fate::default();
        for slot in fate.copies.iter_mut().take(copies) {
            let mut at = departure + c.delay;
            if !c.jitter.is_zero() {
                let nanos = u64::try_from(c.jitter.as_nanos()).unwrap_or(u64::MAX);
                at += Duration::from_nanos(rng.random_range(0..=nanos));
            }
            if chance(rng, c.reorder.probability) {
                at += c.reorder.extra_delay;
                self.stats.reordered += 1;
            }
            let corrupt = chance(rng, c.corrupt);
            self.stats.corrupted += u64::from(corrupt);
            self.stats.scheduled += 1;
            *slot = Some(Delivery { at, corrupt });
        }
        self.stats.duplicated += (copies - 1) as u64;
        fate
    }
}

/// Changes 1–3 distinct positions of `bytes`: each either has one bit flipped or is replaced by
/// a different random byte. The result always differs from the input (if it is non-empty).
pub fn corrupt(bytes: &mut [u8], rng: &mut SimRng) {
    if bytes.is_empty() {
        return;
    }
    let count = rng.random_range(1..=3usize).min(bytes.len());
    let mut chosen = [usize::MAX; 3];
    for i in 0..count {
        let pos = loop {
            let p = rng.random_range(0..bytes.len());
            if !chosen[..i].contains(&p) {
                break p;
            }
        };
        chosen[i] = pos;
        if rng.random_bool(0.5) {
            bytes[pos] ^= 1 << rng.random_range(0..8u32);
        } else {
            bytes[pos] ^= rng.random_range(1..=255u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> SimRng {
        SimRng::seed_from_u64(7)
    }

    #[test]
    fn perfect_link_delivers_once_after_delay() {
        let mut link = Link::new(LinkConfig::with_delay(Duration::from_micros(5)));
        let fate = link.transmit(Instant::from_nanos(100), 1000, &mut rng());
        let d: Vec<_> = fate.deliveries().collect();
        assert_eq!(
            d,
            vec![Delivery {
                at: Instant::from_nanos(5_100),
                corrupt: false
            }]
        );
    }

    #[test]
    fn loss_rate_is_respected() {
        let mut link = Link::new(LinkConfig {
            loss: 0.3,
            ..Default::default()
        });
        let mut r = rng();
        let delivered: usize = (0..100_000)
            .map(|_| {
                link.transmit(Instant::ZERO, 100, &mut r)
                    .deliveries()
                    .count()
            })
            .sum();
        assert!((68_000..72_000).contains(&delivered), "{delivered}");
        assert_eq!(link.stats().lost + link.stats().scheduled, 100_000);
    }

    #[test]
    fn bandwidth_serialises_and_drops_tail() {
        let bw = Bandwidth {
            bytes_per_sec: 1_000_000_000,
            queue_limit: 3000,
        };
        let mut link = Link::new(LinkConfig {
            bandwidth: Some(bw),
            ..Default::default()
        });
        let mut r = rng();
        let at: Vec<_> = (0..4)
            .map(|_| {
                link.transmit(Instant::ZERO, 1000, &mut r)
                    .deliveries()
                    .next()
                    .map(|d| d.at)
            })
            .collect();
        // 1000 B at 1 GB/s = 1 µs each; the fourth finds 3000 B queued and is dropped.
        assert_eq!(
            at,
            vec![
                Some(Instant::from_nanos(1000)),
                Some(Instant::from_nanos(2000)),
                Some(Instant::from_nanos(3000)),
                None
            ]
        );
        assert_eq!(link.stats().queue_drops, 1);
    }

    #[test]
    fn corruption_always_changes_the_bytes() {
        let mut r = rng();
        for len in [1usize, 2, 3, 64, 1500] {
            for _ in 0..200 {
                let orig: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut b = orig.clone();
                corrupt(&mut b, &mut r);
                let changed = orig.iter().zip(&b).filter(|(a, b)| a != b).count();
                assert!(
                    (1..=3).contains(&changed),
                    "len {len}: {changed} bytes changed"
                );
            }
        }
    }
}
