//! Which engine of this host owns a Machnet port (PROTOCOL.md §5.3).
//!
//! Engines share nothing, yet each must tell "a packet for a flow of another engine" (drop it)
//! from "a packet for nobody" (answer with RST). Ownership is therefore computable from the port
//! alone: listening ports come from a host-wide table every engine keeps a copy of, and ephemeral
//! ports are striped across engines (`(port - base) % engine_count`).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::PortPool;

/// A fixed 64-bit mixer (splitmix64's finaliser): the same on every engine and every run.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Bit set of engine ids (engines are limited to 64).
pub(crate) type EngineMask = u64;

/// Who owns a port, from one engine's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This engine (listens on it, or it is one of this engine's ephemeral ports).
    Me,
    /// Another engine of this host.
    Other,
    /// A port several engines listen on, this one included: a packet of an unknown flow may
    /// belong to a sibling's flow, so it is dropped, not refused.
    Shared,
    /// Nobody: packets for it are answered with RST.
    Nobody,
}

#[derive(Debug)]
pub(crate) struct PortMap {
    me: u16,
    engines: u16,
    ephemeral: PortPool,
    listeners: HashMap<u16, EngineMask>,
}

impl PortMap {
    pub(crate) fn new(me: u16, engines: u16, ephemeral: PortPool) -> Self {
        PortMap {
            me,
            engines,
            ephemeral,
            listeners: HashMap::new(),
        }
    }

    /// Engines listening on `port`.
    pub(crate) fn listeners(&self, port: u16) -> EngineMask {
        self.listeners.get(&port).copied().unwrap_or(0)
    }

    pub(crate) fn is_ephemeral(&self, port: u16) -> bool {
        self.ephemeral.contains(port)
    }

    /// Records that `engine` listens on `port`. Returns false if it already did.
    pub(crate) fn add(&mut self, port: u16, engine: u16) -> bool {
        let m = self.listeners.entry(port).or_insert(0);
        let bit = 1u64 << engine;
        let fresh = *m & bit == 0;
        *m |= bit;
        fresh
    }

    pub(crate) fn remove(&mut self, port: u16, engine: u16) {
        if let Some(m) = self.listeners.get_mut(&port) {
            *m &= !(1u64 << engine);
            if *m == 0 {
                self.listeners.remove(&port);
            }
        }
    }

    /// Whether this engine accepts SYNs for `port`.
    pub(crate) fn i_listen(&self, port: u16) -> bool {
        self.listeners(port) & (1u64 << self.me) != 0
    }

    /// The engine that accepts a new flow from `remote_ip:remote_port` to `port` when several
    /// engines listen on it (PROTOCOL.md §5.3): a hash of the flow's addresses picks one of
    /// them. Every engine of the host computes the same answer, so exactly one accepts the
    /// client's SYNs, flows spread evenly over the listening engines, and which engine answers
    /// first plays no part. `None` if nobody listens.
    pub(crate) fn designated(
        &self,
        port: u16,
        remote_ip: Ipv4Addr,
        remote_port: u16,
    ) -> Option<u16> {
        let mask = self.listeners(port);
        if mask == 0 {
            return None;
        }
        let n = u64::from(mask.count_ones());
        let key =
            u64::from(u32::from(remote_ip)) << 32 | u64::from(remote_port) << 16 | u64::from(port);
        let mut k = splitmix64(key) % n;
        let mut m = mask;
        // The k-th engine (lowest id first) of the mask.
        while k > 0 {
            m &= m - 1;
            k -= 1;
        }
        Some(m.trailing_zeros() as u16)
    }

    /// The owner of `port` for packets other than SYN.
    pub(crate) fn owner(&self, port: u16) -> Owner {
        let l = self.listeners(port);
        if l != 0 {
            let mine = 1u64 << self.me;
            return match (l & mine != 0, l & !mine != 0) {
                (true, false) => Owner::Me,
                (true, true) => Owner::Shared,
                (false, _) => Owner::Other,
            };
        }
        if self.ephemeral.contains(port) {
            let engine = (port - self.ephemeral.base) % self.engines;
            return if engine == self.me {
                Owner::Me
            } else {
                Owner::Other
            };
        }
        Owner::Nobody
    }

    /// The `i`-th ephemeral port this engine owns, for `i` in `0..self.ephemeral_count()`.
    pub(crate) fn my_ephemeral(&self, i: u32) -> u16 {
        let port =
            u32::from(self.ephemeral.base) + i * u32::from(self.engines) + u32::from(self.me);
        port as u16
    }

    /// How many ephemeral ports this engine owns.
    pub(crate) fn ephemeral_count(&self) -> u32 {
        let count = u32::from(self.ephemeral.count);
        let engines = u32::from(self.engines);
        let me = u32::from(self.me);
        count / engines + u32::from(count % engines > me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_ports_are_striped_and_owned() {
        let pool = PortPool {
            base: 1000,
            count: 10,
        };
        for me in 0..3 {
            let m = PortMap::new(me, 3, pool);
            let n = m.ephemeral_count();
            assert_eq!(n, if me == 0 { 4 } else { 3 });
            for i in 0..n {
                let p = m.my_ephemeral(i);
                assert!(pool.contains(p));
                assert_eq!(m.owner(p), Owner::Me);
            }
        }
        let m = PortMap::new(0, 3, pool);
        assert_eq!(m.owner(1001), Owner::Other);
        assert_eq!(m.owner(80), Owner::Nobody);
    }

    #[test]
    fn listeners_decide_ownership() {
        let mut m = PortMap::new(
            1,
            2,
            PortPool {
                base: 1000,
                count: 10,
            },
        );
        assert!(m.add(80, 0));
        assert!(!m.add(80, 0));
        assert_eq!(m.owner(80), Owner::Other);
        assert!(!m.i_listen(80));
        m.add(80, 1);
        assert_eq!(m.owner(80), Owner::Shared);
        assert!(m.i_listen(80));
        m.add(81, 1);
        assert_eq!(m.owner(81), Owner::Me);
        m.remove(80, 1);
        m.remove(80, 0);
        assert_eq!(m.owner(80), Owner::Nobody);
    }

    #[test]
    fn one_listening_engine_is_designated_per_flow_and_flows_spread_over_them() {
        let pool = PortPool {
            base: 1000,
            count: 10,
        };
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let maps: Vec<PortMap> = (0..4)
            .map(|me| {
                let mut m = PortMap::new(me, 4, pool);
                for e in [0, 2, 3] {
                    m.add(80, e);
                }
                m
            })
            .collect();
        assert_eq!(maps[0].designated(81, ip, 5000), None);
        let mut per_engine = [0usize; 4];
        for client_port in 40000..43000u16 {
            let d = maps[0].designated(80, ip, client_port).unwrap();
            // Every engine agrees.
            assert!(maps
                .iter()
                .all(|m| m.designated(80, ip, client_port) == Some(d)));
            per_engine[usize::from(d)] += 1;
        }
        assert_eq!(per_engine[1], 0, "engine 1 does not listen");
        for e in [0, 2, 3] {
            // 1000 expected each; the hash is fixed, so this is not a flaky bound.
            assert!((900..1100).contains(&per_engine[e]), "{per_engine:?}");
        }
        // A single listener is always the one.
        let mut m = PortMap::new(0, 4, pool);
        m.add(80, 3);
        assert!((0..100).all(|p| m.designated(80, ip, 40000 + p) == Some(3)));
    }
}
