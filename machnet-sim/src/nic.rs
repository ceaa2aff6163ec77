//! A host's NIC as RSS sees it: a secret Toeplitz key and a redirection table that pick the
//! engine (RX queue) each arriving datagram is handed to.
//!
//! The engines never see the key unless the test installs the deterministic hook
//! ([`Nic::oracle`]): by default RSS is opaque, as on a cloud vNIC, which is what RSS-- is for.

use std::net::Ipv4Addr;

use machnet_core::rss::{toeplitz, RssTable, ToeplitzOracle, UdpTuple};
use rand::Rng;

use crate::seed::SimRng;

/// Length of the RSS key (the standard 40 bytes).
pub const RSS_KEY_LEN: usize = 40;
/// Entries in the redirection table.
pub const RETA_LEN: usize = 128;

/// Bytes of the IPv4/UDP RSS input (addresses and ports).
const INPUT_LEN: usize = 12;

/// The RSS state of one host's NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    key: [u8; RSS_KEY_LEN],
    reta: Vec<u16>,
    /// `table[i][b]`: the Toeplitz hash contribution of byte value `b` at input position `i`
    /// (the hash is linear over XOR), so a hash costs 12 lookups instead of 96 bit steps.
    table: Vec<[u32; 256]>,
}

impl Nic {
    /// A NIC spreading over `engines` queues with a random key drawn from `rng`; the table is
    /// `0, 1, .., engines-1` repeated, as NIC drivers set it up by default.
    pub fn new(engines: u16, rng: &mut SimRng) -> Self {
        let mut key = [0u8; RSS_KEY_LEN];
        rng.fill(&mut key[..]);
        let engines = engines.max(1);
        let reta = (0..RETA_LEN)
            .map(|i| (i % usize::from(engines)) as u16)
            .collect();
        let table = (0..INPUT_LEN)
            .map(|i| {
                let mut row = [0u32; 256];
                let mut input = [0u8; INPUT_LEN];
                for (b, slot) in row.iter_mut().enumerate() {
                    input[i] = b as u8;
                    *slot = toeplitz(&key, &input);
                }
                row
            })
            .collect();
        Nic { key, reta, table }
    }

    /// The engine a datagram from `src_ip:src_port` to `dst_ip:dst_port` is delivered to.
    pub fn queue(&self, src_ip: Ipv4Addr, dst_ip: Ipv4Addr, src_port: u16, dst_port: u16) -> u16 {
        let input = UdpTuple {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
        }
        .rss_input();
        let hash = input
            .iter()
            .zip(&self.table)
            .fold(0u32, |h, (&b, row)| h ^ row[usize::from(b)]);
        self.reta[hash as usize % self.reta.len()]
    }

    /// The deterministic hook: an oracle that knows this NIC's key and table.
    pub fn oracle(&self) -> ToeplitzOracle {
        ToeplitzOracle::local(self.table())
    }

    /// This NIC's key and redirection table.
    pub fn table(&self) -> RssTable {
        RssTable {
            key: self.key.to_vec(),
            reta: self.reta.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machnet_core::rss::RssOracle;
    use rand::SeedableRng;

    #[test]
    fn spreads_over_all_engines_and_agrees_with_its_oracle() {
        let nic = Nic::new(4, &mut SimRng::seed_from_u64(3));
        let oracle = nic.oracle();
        let a = Ipv4Addr::new(198, 18, 0, 1);
        let b = Ipv4Addr::new(198, 18, 0, 2);
        let mut hits = [0u32; 4];
        for sport in 31580..31644u16 {
            for dport in 31580..31644u16 {
                let q = nic.queue(a, b, sport, dport);
                hits[usize::from(q)] += 1;
                let t = UdpTuple {
                    src_ip: a,
                    dst_ip: b,
                    src_port: sport,
                    dst_port: dport,
                };
                assert_eq!(oracle.local_engine(&t), Some(q));
            }
        }
        // 4096 tuples over 4 queues: each should get roughly a quarter.
        assert!(hits.iter().all(|&h| (700..1400).contains(&h)), "{hits:?}");
    }
}
