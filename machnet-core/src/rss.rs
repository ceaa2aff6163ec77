//! RSS-- support (PROTOCOL.md §5): spray batch sizes, the Toeplitz hash, and the hook through
//! which a caller that *can* predict RSS placement avoids spraying.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Packets one side must spray so that, with `engines` equally likely RX queues on the receiving
/// host, at least one lands on the intended queue with probability `sqrt(success_target)`.
///
/// Both directions of the handshake spray, so the connection is set up by one round with
/// probability `success_target` (paper §4.2.1: 13 per side for 4 engines, 28 for 8 at 0.95).
pub fn spray_batch(engines: u16, success_target: f64) -> u32 {
    if engines <= 1 {
        return 1;
    }
    let per_side = success_target.sqrt();
    let miss = 1.0 - 1.0 / f64::from(engines);
    let n = ((1.0 - per_side).ln() / miss.ln()).ceil();
    (n as u32).max(1)
}

/// Batch for retry number `attempt` (0 = first): doubles each time, bounded by `max_batch`.
pub fn spray_batch_for_attempt(
    engines: u16,
    success_target: f64,
    attempt: u8,
    max_batch: u32,
) -> u32 {
    let base = spray_batch(engines, success_target);
    let scaled = u64::from(base) << u32::from(attempt.min(20));
    scaled.min(u64::from(max_batch)).max(1) as u32
}

/// The 4-tuple of one UDP datagram, as the receiving NIC hashes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpTuple {
    /// Sender's IPv4 address.
    pub src_ip: Ipv4Addr,
    /// Receiver's IPv4 address.
    pub dst_ip: Ipv4Addr,
    /// Sender's UDP port.
    pub src_port: u16,
    /// Receiver's UDP port.
    pub dst_port: u16,
}

impl UdpTuple {
    /// The 12-byte RSS input for IPv4/UDP: source address, destination address, source port,
    /// destination port, all in network byte order (Microsoft RSS specification).
    pub fn rss_input(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.src_ip.octets());
        b[4..8].copy_from_slice(&self.dst_ip.octets());
        b[8..10].copy_from_slice(&self.src_port.to_be_bytes());
        b[10..12].copy_from_slice(&self.dst_port.to_be_bytes());
        b
    }
}

/// The Toeplitz hash used by NIC RSS. `key` must be at least `input.len() + 4` bytes long
/// (40-byte keys are standard); shorter keys are treated as zero-extended.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let key_bit = |i: usize| -> u32 {
        key.get(i / 8)
            .map_or(0, |b| u32::from((b >> (7 - i % 8)) & 1))
    };
    // `window` holds key bits [i, i+32) for the input bit currently examined.
    let mut window: u32 = (0..32).fold(0, |w, i| (w << 1) | key_bit(i));
    let mut hash = 0u32;
    for (byte_index, byte) in input.iter().enumerate() {
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | key_bit(byte_index * 8 + bit + 32);
        }
    }
    hash
}

/// A caller's knowledge of RSS placement, for NICs that expose their RSS key and redirection table
/// (PROTOCOL.md §5.4). With it the core sends single packets instead of spraying where it can.
pub trait RssOracle: Send {
    /// The local engine a datagram with this tuple (arriving at this host) lands on, if known.
    fn local_engine(&self, tuple: &UdpTuple) -> Option<u16>;

    /// The engine of the remote host a datagram with this tuple (sent by us) lands on, if known.
    fn remote_engine(&self, _tuple: &UdpTuple) -> Option<u16> {
        None
    }

    /// How many engines (RX queues) the remote host has, if known.
    fn remote_engine_count(&self, _remote_ip: Ipv4Addr) -> Option<u16> {
        None
    }
}

/// A NIC's RSS configuration: Toeplitz key and redirection table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssTable {
    /// Toeplitz hash key.
    pub key: Vec<u8>,
    /// Redirection table: hash % len → queue (= engine).
    pub reta: Vec<u16>,
}

impl RssTable {
    /// The queue a tuple lands on under this key and table.
    pub fn queue(&self, tuple: &UdpTuple) -> Option<u16> {
        if self.reta.is_empty() {
            return None;
        }
        let h = toeplitz(&self.key, &tuple.rss_input());
        Some(self.reta[h as usize % self.reta.len()])
    }

    /// Number of queues the table spreads over.
    pub fn queues(&self) -> u16 {
        self.reta.iter().max().map_or(0, |m| m + 1)
    }
}

/// An [`RssOracle`] for a NIC whose [`RssTable`] is known, optionally with the tables of remote
/// hosts (e.g. VMs of one provider that all use the same fixed key).
#[derive(Debug, Clone, Default)]
pub struct ToeplitzOracle {
    /// This host's table, if known.
    pub local: Option<RssTable>,
    /// Tables of remote hosts, by address.
    pub remotes: HashMap<Ipv4Addr, RssTable>,
}

impl ToeplitzOracle {
    /// An oracle that knows only this host's table.
    pub fn local(table: RssTable) -> Self {
        ToeplitzOracle {
            local: Some(table),
            remotes: HashMap::new(),
        }
    }

    /// Adds knowledge of a remote host's table.
    pub fn with_remote(mut self, ip: Ipv4Addr, table: RssTable) -> Self {
        self.remotes.insert(ip, table);
        self
    }
}

impl RssOracle for ToeplitzOracle {
    fn local_engine(&self, tuple: &UdpTuple) -> Option<u16> {
        self.local.as_ref()?.queue(tuple)
    }

    fn remote_engine(&self, tuple: &UdpTuple) -> Option<u16> {
        self.remotes.get(&tuple.dst_ip)?.queue(tuple)
    }

    fn remote_engine_count(&self, remote_ip: Ipv4Addr) -> Option<u16> {
        Some(self.remotes.get(&remote_ip)?.queues())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_match_the_paper() {
        assert_eq!(spray_batch(1, 0.95), 1);
        // Paper §4.2.1: 25 packets in total for 4 engines, 55 for 8 (it rounds; we round up).
        assert_eq!(spray_batch(4, 0.95), 13);
        assert_eq!(spray_batch(8, 0.95), 28);
        assert_eq!(spray_batch_for_attempt(8, 0.95, 3, 512), 224);
        assert_eq!(spray_batch_for_attempt(8, 0.95, 9, 512), 512);
    }

    /// Test vectors from the Microsoft RSS specification ("Verifying the RSS hash calculation").
    #[test]
    fn toeplitz_matches_microsoft_vectors() {
        let key: [u8; 40] = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
            0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
            0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ];
        let cases = [
            (
                [66, 9, 149, 187],
                2794,
                [161, 142, 100, 80],
                1766,
                0x51cc_c178u32,
            ),
            (
                [199, 92, 111, 2],
                14230,
                [65, 69, 140, 83],
                4739,
                0xc626_b0ea,
            ),
            (
                [24, 19, 198, 95],
                12898,
                [12, 22, 207, 184],
                38024,
                0x5c2b_394a,
            ),
            (
                [38, 27, 205, 30],
                48228,
                [209, 142, 163, 6],
                2217,
                0xafc7_327f,
            ),
            (
                [153, 39, 163, 191],
                44251,
                [202, 188, 127, 2],
                1303,
                0x10e8_28a2,
            ),
        ];
        for (src, sport, dst, dport, want) in cases {
            let t = UdpTuple {
                src_ip: Ipv4Addr::from(src),
                dst_ip: Ipv4Addr::from(dst),
                src_port: sport,
                dst_port: dport,
            };
            assert_eq!(toeplitz(&key, &t.rss_input()), want, "{t:?}");
        }
    }
}
