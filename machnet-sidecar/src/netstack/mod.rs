//! A minimal, sans-IO IPv4/UDP network layer for datapaths that own an Ethernet port (DPDK).
//!
//! [`NetStack`] sits between raw Ethernet frames and the engines' UDP datagrams:
//!
//! - [`NetStack::handle_frame`] classifies a received frame: a UDP datagram for one of our ports
//!   ([`Inbound::Datagram`], payload as a range of the frame: zero copy), a frame to transmit in
//!   answer (ARP reply, ICMP echo reply: [`Inbound::Reply`]), or a counted drop.
//! - [`NetStack::build_datagram`] frames a datagram (Ethernet/IPv4/UDP, software checksums unless
//!   offloaded) into the caller's buffer, or queues it while the next hop is being resolved;
//!   [`NetStack::build_headers_in_place`] does the same around a payload already written at
//!   [`DATAGRAM_HEADERS`] (zero-copy send into a packet buffer).
//! - [`NetStack::poll_transmit`] yields ARP requests and datagrams released by a resolution.
//! - [`NetStack::poll_timeout`] / [`NetStack::handle_timeout`] drive ARP retries and aging.
//!
//! Time is always passed in ([`machnet_core::Instant`]); nothing here does I/O.
//!
//! Not supported (dropped and counted): VLAN tags, IP fragments, IP options on send, ICMP other
//! than echo. We do not send ICMP port unreachable for datagrams to ports outside the pool
//! (RFC 1122 §4.1.3.1 says SHOULD; a sidecar sharing nothing with the host keeps silent).

pub mod arp;
pub mod neighbours;
pub mod wire;

use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;

use machnet_core::{Instant, PortPool};

use arp::{ArpCache, ArpConfig, ArpStats, Learn, Learnt};
use neighbours::SharedNeighbours;
use wire::{
    ethertype, ip_protocol, ArpOp, ArpPacket, ArpRepr, DropReason, EthernetFrame, EthernetRepr,
    IcmpPacket, IcmpRepr, Ipv4Packet, Ipv4Repr, MacAddr, UdpChecksum, UdpPacket, UdpRepr, ARP_LEN,
    ETH_HEADER_LEN, ETH_MIN_FRAME_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN,
};

/// Which checksums the port computes or verifies in hardware.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChecksumOffload {
    /// The NIC fills the IPv4 header checksum on transmit (field left zero).
    pub ipv4_tx: bool,
    /// The NIC fills the UDP checksum on transmit (field holds the pseudo-header sum).
    pub udp_tx: bool,
    /// The NIC verified the IPv4 header checksum of received frames (bad ones never reach us).
    pub ipv4_rx: bool,
    /// The NIC verified the UDP checksum of received frames.
    pub udp_rx: bool,
}

/// What the NIC found when it checked one checksum of a received frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HwChecksum {
    /// Not checked: verify in software (unless the port-wide [`ChecksumOffload`] says the NIC
    /// drops bad frames itself).
    #[default]
    Unchecked,
    /// Verified good, or known intact (a virtual device's partial checksum): skip verification.
    Good,
    /// Verified bad: drop.
    Bad,
}

/// The NIC's per-frame checksum verdicts (DPDK `RTE_MBUF_F_RX_*_CKSUM_*` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxChecksums {
    /// The IPv4 header checksum.
    pub ipv4: HwChecksum,
    /// The UDP checksum.
    pub l4: HwChecksum,
}

/// Default MTU (the IP packet, not the Ethernet frame).
pub const DEFAULT_MTU: usize = 1500;
/// Default TTL of packets we send (RFC 1700's recommended 64).
pub const DEFAULT_TTL: u8 = 64;
/// Ethernet + IPv4 + UDP headers: where the payload starts in a frame we build.
pub const DATAGRAM_HEADERS: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;

/// Configuration of a [`NetStack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Our MAC.
    pub mac: MacAddr,
    /// Our IPv4 address.
    pub ip: Ipv4Addr,
    /// Largest IP packet sent (the UDP payload can be `mtu - 28`). At least 68 (RFC 791).
    pub mtu: usize,
    /// Subnet mask; `None`: every address is on-link.
    pub netmask: Option<Ipv4Addr>,
    /// Next hop for off-subnet destinations; `None`: they are unreachable.
    pub gateway: Option<Ipv4Addr>,
    /// Our UDP ports: only datagrams to these are delivered, only these may be sources.
    pub udp_ports: PortPool,
    /// Hardware checksum support.
    pub offload: ChecksumOffload,
    /// TTL of packets we send.
    pub ttl: u8,
    /// ARP cache settings.
    pub arp: ArpConfig,
}

impl NetConfig {
    /// A configuration with defaults: MTU 1500, everything on-link, no offload, TTL 64.
    pub fn new(mac: MacAddr, ip: Ipv4Addr, udp_ports: PortPool) -> Self {
        NetConfig {
            mac,
            ip,
            mtu: DEFAULT_MTU,
            netmask: None,
            gateway: None,
            udp_ports,
            offload: ChecksumOffload::default(),
            ttl: DEFAULT_TTL,
            arp: ArpConfig::default(),
        }
    }

    /// Largest UDP payload that fits the MTU.
    pub fn max_payload(&self) -> usize {
        self.mtu.saturating_sub(IPV4_HEADER_LEN + UDP_HEADER_LEN)
    }

    /// Largest frame we emit (without FCS).
    pub fn max_frame(&self) -> usize {
        (ETH_HEADER_LEN + self.mtu).max(ETH_MIN_FRAME_LEN)
    }
}

/// What a received frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A UDP datagram for one of our ports.
    Datagram {
        /// Sender's address.
        remote_ip: Ipv4Addr,
        /// Sender's port.
        src_port: u16,
        /// Our port.
        dst_port: u16,
        /// Where the payload lies in the frame passed to [`NetStack::handle_frame`].
        payload: Range<usize>,
    },
    /// A frame to transmit in answer (ARP reply, ICMP echo reply); valid until the next call.
    Reply(&'a [u8]),
    /// Handled internally (an ARP reply or announcement updated the cache; datagrams it released
    /// now wait in [`NetStack::poll_transmit`]).
    Consumed,
    /// Dropped (counted).
    Drop(DropReason),
}

/// What became of a datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// A frame of this many bytes is ready at the start of the output buffer.
    Frame(usize),
    /// Queued awaiting ARP resolution; requests and, later, the frame come out of
    /// [`NetStack::poll_transmit`].
    Pending,
    /// Dropped (counted).
    Drop(DropReason),
}

/// Counters of a [`NetStack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames passed to `handle_frame`.
    pub rx_frames: u64,
    /// Datagrams delivered.
    pub rx_datagrams: u64,
    /// ARP replies generated.
    pub arp_replies: u64,
    /// ARP packets that updated the cache without needing a reply.
    pub arp_consumed: u64,
    /// ICMP echo replies generated.
    pub echo_replies: u64,
    /// Frames built directly by `build_datagram`.
    pub tx_frames: u64,
    /// Datagrams queued awaiting ARP.
    pub tx_queued: u64,
    /// Frames emitted by `poll_transmit` (released datagrams).
    pub tx_released: u64,
    /// ARP requests emitted by `poll_transmit`.
    pub arp_requests: u64,
    /// Drops per reason, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
    /// ARP cache counters.
    pub arp: ArpStats,
}

impl NetStats {
    /// Drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }
}

/// The network layer of one Ethernet port (see the module docs).
#[derive(Debug)]
pub struct NetStack {
    cfg: NetConfig,
    arp: ArpCache<Vec<u8>>,
    scratch: Vec<u8>,
    ident: u16,
    stats: NetStats,
    /// The table shared with the other engines of the port, and its generation last merged.
    shared: Option<(Arc<SharedNeighbours>, u64)>,
}

impl NetStack {
    /// A stack with an empty ARP cache. An MTU below 68 is raised to 68 (RFC 791 minimum).
    pub fn new(mut cfg: NetConfig) -> Self {
        cfg.mtu = cfg.mtu.clamp(68, 65535);
        let scratch = vec![0u8; cfg.max_frame()];
        NetStack {
            arp: ArpCache::new(cfg.arp),
            cfg,
            scratch,
            ident: 0,
            shared: None,
            stats: NetStats {
                rx_frames: 0,
                rx_datagrams: 0,
                arp_replies: 0,
                arp_consumed: 0,
                echo_replies: 0,
                tx_frames: 0,
                tx_queued: 0,
                tx_released: 0,
                arp_requests: 0,
                drops: [0; DropReason::COUNT],
                arp: ArpStats::default(),
            },
        }
    }

    /// A stack that shares what its ARP handling learns with the other engines of the same port
    /// (`neighbours.rs`: a reply may land on another engine's queue).
    pub fn with_shared_neighbours(cfg: NetConfig, shared: Arc<SharedNeighbours>) -> Self {
        let mut s = NetStack::new(cfg);
        s.shared = Some((shared, u64::MAX));
        s
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// The ARP cache (inspection).
    pub fn arp_cache(&self) -> &ArpCache<Vec<u8>> {
        &self.arp
    }

    /// Counters. ARP queue-full / give-up / eviction drops are also reported under
    /// [`DropReason::ArpQueueFull`], [`DropReason::ArpFailed`] and [`DropReason::ArpEvicted`].
    pub fn stats(&self) -> NetStats {
        let mut s = self.stats;
        s.arp = self.arp.stats();
        s.drops[DropReason::ArpQueueFull.index()] += s.arp.queue_full_drops;
        s.drops[DropReason::ArpFailed.index()] += s.arp.failed_drops;
        s.drops[DropReason::ArpEvicted.index()] += s.arp.evicted_drops;
        s
    }

    fn drop_rx<'a>(&mut self, r: DropReason) -> Inbound<'a> {
        self.stats.drops[r.index()] += 1;
        Inbound::Drop(r)
    }

    fn drop_tx(&mut self, r: DropReason) -> Outbound {
        self.stats.drops[r.index()] += 1;
        Outbound::Drop(r)
    }

    /// Whether `ip` is on our subnet (always, without a netmask).
    fn on_link(&self, ip: Ipv4Addr) -> bool {
        match self.cfg.netmask {
            None => true,
            Some(m) => {
                let m = u32::from(m);
                u32::from(ip) & m == u32::from(self.cfg.ip) & m
            }
        }
    }

    /// Whether `ip` is a valid source for a datagram to us (RFC 1122 §3.2.1.3: discard
    /// broadcast/multicast sources; ours would be a loop or a spoof).
    fn valid_source(&self, ip: Ipv4Addr) -> bool {
        arp::learnable_ip(ip) && ip != self.cfg.ip && !self.is_subnet_broadcast(ip)
    }

    fn is_subnet_broadcast(&self, ip: Ipv4Addr) -> bool {
        match self.cfg.netmask {
            // /31 and /32 have no broadcast address (RFC 3021).
            Some(m) if u32::from(m).leading_ones() < 31 => {
                let m = u32::from(m);
                u32::from(ip) & !m == !m && self.on_link(ip)
            }
            _ => false,
        }
    }

    /// Classifies one received frame (without FCS). Never panics, whatever the bytes.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Inbound<'_> {
        self.handle_frame_checked(now, frame, RxChecksums::default())
    }

    /// [`NetStack::handle_frame`] for a frame whose checksums the NIC already checked: good
    /// ones are not verified again, bad ones are dropped (counted as bad checksums).
    pub fn handle_frame_checked(
        &mut self,
        now: Instant,
        frame: &[u8],
        hw: RxChecksums,
    ) -> Inbound<'_> {
        self.stats.rx_frames += 1;
        let eth = match EthernetFrame::new_checked(frame).and_then(|f| EthernetRepr::parse(&f)) {
            Ok(e) => e,
            Err(r) => return self.drop_rx(r),
        };
        if eth.dst != self.cfg.mac && !eth.dst.is_broadcast() {
            return self.drop_rx(DropReason::MacNotOurs);
        }
        if !eth.src.is_unicast() {
            return self.drop_rx(DropReason::BadSourceMac);
        }
        let payload = &frame[ETH_HEADER_LEN..];
        match eth.ethertype {
            ethertype::ARP => self.handle_arp(now, payload),
            ethertype::IPV4 => self.handle_ipv4(now, &eth, payload, hw),
            _ => self.drop_rx(DropReason::UnknownEthertype),
        }
    }

    fn handle_arp<'a>(&'a mut self, now: Instant, p: &[u8]) -> Inbound<'a> {
        let a = match ArpPacket::new_checked(p).and_then(|p| ArpRepr::parse(&p)) {
            Ok(a) => a,
            Err(r) => return self.drop_rx(r),
        };
        if a.sha == self.cfg.mac || a.spa == self.cfg.ip {
            // Our own packet looped back, or someone else claims our address (RFC 5227 conflict).
            return self.drop_rx(DropReason::ArpConflict);
        }
        let for_us = a.tpa == self.cfg.ip;
        // RFC 826 merge: update a known sender; create it only if the packet is a request to us
        // (see arp.rs for the anti-poisoning policy). A probe (spa 0.0.0.0, RFC 5227) learns
        // nothing but is still answered.
        // With a shared table, "known" means known to any engine of the port (a reply to
        // another engine's request may land here).
        let shared_accepts = !a.spa.is_unspecified()
            && self
                .shared
                .as_ref()
                .is_some_and(|(t, _)| t.accepts(a.spa, now));
        let policy = if (for_us && a.op == ArpOp::Request) || shared_accepts {
            Learn::Create
        } else {
            Learn::UpdateOnly
        };
        let learnt = if a.spa.is_unspecified() {
            Learnt::Ignored
        } else {
            self.arp.learn(a.spa, a.sha, policy, now)
        };
        if learnt != Learnt::Ignored {
            if let Some((t, _)) = &self.shared {
                t.publish(a.spa, a.sha, now);
            }
        }
        if for_us && a.op == ArpOp::Request {
            let reply = ArpRepr {
                op: ArpOp::Reply,
                sha: self.cfg.mac,
                spa: self.cfg.ip,
                tha: a.sha,
                tpa: a.spa,
            };
            // Reply to the requester's hardware address (RFC 826).
            let len = ETH_MIN_FRAME_LEN;
            let buf = &mut self.scratch[..len];
            buf.fill(0);
            EthernetRepr {
                dst: a.sha,
                src: self.cfg.mac,
                ethertype: ethertype::ARP,
            }
            .emit(buf);
            reply.emit(&mut buf[ETH_HEADER_LEN..ETH_HEADER_LEN + ARP_LEN]);
            self.stats.arp_replies += 1;
            return Inbound::Reply(&self.scratch[..len]);
        }
        match learnt {
            Learnt::Resolved | Learnt::Updated | Learnt::Created => {
                self.stats.arp_consumed += 1;
                Inbound::Consumed
            }
            Learnt::Ignored => self.drop_rx(DropReason::ArpNotForUs),
        }
    }

    fn handle_ipv4<'a>(
        &'a mut self,
        now: Instant,
        eth: &EthernetRepr,
        p: &[u8],
        hw: RxChecksums,
    ) -> Inbound<'a> {
        if hw.ipv4 == HwChecksum::Bad {
            return self.drop_rx(DropReason::Ipv4BadChecksum);
        }
        let verify_ip = !self.cfg.offload.ipv4_rx && hw.ipv4 == HwChecksum::Unchecked;
        let ip = match Ipv4Packet::new_checked(p)
            .and_then(|pk| Ipv4Repr::parse(&pk, verify_ip).map(|r| (pk, r)))
        {
            Ok(x) => x,
            Err(r) => return self.drop_rx(r),
        };
        let (pkt, repr) = ip;
        if repr.dst != self.cfg.ip {
            return self.drop_rx(DropReason::Ipv4NotOurs);
        }
        if !self.valid_source(repr.src) {
            return self.drop_rx(DropReason::Ipv4BadSource);
        }
        let ip_payload = pkt.payload();
        // Offset of the IP payload in the frame.
        let base = ETH_HEADER_LEN + pkt.header_len();
        match repr.protocol {
            ip_protocol::UDP => {
                if hw.l4 == HwChecksum::Bad {
                    return self.drop_rx(DropReason::UdpBadChecksum);
                }
                let verify_udp = !self.cfg.offload.udp_rx && hw.l4 == HwChecksum::Unchecked;
                let u = match UdpPacket::new_checked(ip_payload).and_then(|u| {
                    UdpRepr::parse(&u, repr.src, repr.dst, verify_udp).map(|r| (u, r))
                }) {
                    Ok(x) => x,
                    Err(r) => return self.drop_rx(r),
                };
                let (up, ur) = u;
                if !self.cfg.udp_ports.contains(ur.dst_port) {
                    return self.drop_rx(DropReason::UdpPortNotOurs);
                }
                self.refresh_peer(now, repr.src, eth.src);
                self.stats.rx_datagrams += 1;
                let start = base + UDP_HEADER_LEN;
                Inbound::Datagram {
                    remote_ip: repr.src,
                    src_port: ur.src_port,
                    dst_port: ur.dst_port,
                    payload: start..start + up.payload().len(),
                }
            }
            ip_protocol::ICMP => {
                let icmp =
                    match IcmpPacket::new_checked(ip_payload).and_then(|p| IcmpRepr::parse(&p)) {
                        Ok(i) => i,
                        Err(r) => return self.drop_rx(r),
                    };
                let IcmpRepr::EchoRequest { ident, seq, data } = icmp else {
                    return self.drop_rx(DropReason::IcmpUnsupported);
                };
                // RFC 792 / RFC 1122 §3.2.2.6: echo the identifier, sequence and data.
                let reply = IcmpRepr::EchoReply { ident, seq, data };
                let ip_len = IPV4_HEADER_LEN + reply.buffer_len();
                if ip_len > self.cfg.mtu {
                    return self.drop_rx(DropReason::IcmpTooLarge);
                }
                self.refresh_peer(now, repr.src, eth.src);
                let ident_ip = self.next_ident();
                let len = (ETH_HEADER_LEN + ip_len).max(ETH_MIN_FRAME_LEN);
                let buf = &mut self.scratch[..len];
                buf.fill(0);
                // Answer the MAC the request came from (the peer, or its router): no ARP needed.
                EthernetRepr {
                    dst: eth.src,
                    src: self.cfg.mac,
                    ethertype: ethertype::IPV4,
                }
                .emit(buf);
                Ipv4Repr {
                    src: self.cfg.ip,
                    dst: repr.src,
                    protocol: ip_protocol::ICMP,
                    payload_len: reply.buffer_len(),
                    ttl: self.cfg.ttl,
                    ident: ident_ip,
                }
                // The reply frame carries no offload request: always compute in software.
                .emit(&mut buf[ETH_HEADER_LEN..], true);
                reply.emit(&mut buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..]);
                self.stats.echo_replies += 1;
                Inbound::Reply(&self.scratch[..len])
            }
            _ => self.drop_rx(DropReason::UnknownProtocol),
        }
    }

    /// Traffic from `ip` via `mac` refreshes the next hop's ARP entry if it matches.
    fn refresh_peer(&mut self, now: Instant, ip: Ipv4Addr, mac: MacAddr) {
        let hop = if self.on_link(ip) {
            Some(ip)
        } else {
            self.cfg.gateway
        };
        if let Some(hop) = hop {
            self.arp.refresh(hop, mac, now);
        }
    }

    fn next_ident(&mut self) -> u16 {
        // RFC 6864: with DF set the ID carries no meaning; a counter is as good as anything.
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    fn next_hop(&self, remote: Ipv4Addr) -> Result<Ipv4Addr, DropReason> {
        if !arp::learnable_ip(remote)
            || remote.is_loopback()
            || remote == self.cfg.ip
            || self.is_subnet_broadcast(remote)
        {
            return Err(DropReason::BadDestination);
        }
        if self.on_link(remote) {
            Ok(remote)
        } else {
            self.cfg.gateway.ok_or(DropReason::NoRoute)
        }
    }

    /// Frames a UDP datagram into `out`. With the next hop's MAC cached the frame is ready
    /// ([`Outbound::Frame`]); otherwise it is copied into the ARP queue ([`Outbound::Pending`]) and
    /// comes out of [`NetStack::poll_transmit`] once resolved. `out` must hold
    /// `max(14 + 28 + payload.len(), 60)` bytes.
    pub fn build_datagram(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        payload: &[u8],
        out: &mut [u8],
    ) -> Outbound {
        // Copy the payload into place when it can be sent; build_headers_in_place repeats these
        // checks (counting the drop) when it cannot.
        let at = DATAGRAM_HEADERS;
        if payload.len() <= self.cfg.max_payload() && out.len() >= at + payload.len() {
            out[at..at + payload.len()].copy_from_slice(payload);
        }
        self.build_headers_in_place(now, remote_ip, src_port, dst_port, out, payload.len())
    }

    /// Like [`NetStack::build_datagram`], for a payload already in place: `frame[42..42 +
    /// payload_len]` (after the Ethernet, IPv4 and UDP headers) holds it, and the headers are
    /// written around it (the UDP checksum, unless offloaded, is computed over it in place), the
    /// frame padded to 60 bytes. `frame` must be at least that long: the frame is
    /// `frame[..max(42 + payload_len, 60)]`. Outcomes, drops and counters are those of
    /// `build_datagram` (a datagram waiting for ARP is copied into the queue).
    pub fn build_headers_in_place(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        frame: &mut [u8],
        payload_len: usize,
    ) -> Outbound {
        let out = frame;
        if !self.cfg.udp_ports.contains(src_port) {
            return self.drop_tx(DropReason::SrcPortNotOurs);
        }
        if payload_len > self.cfg.max_payload() {
            return self.drop_tx(DropReason::TooLarge);
        }
        let ip_len = IPV4_HEADER_LEN + UDP_HEADER_LEN + payload_len;
        let len = (ETH_HEADER_LEN + ip_len).max(ETH_MIN_FRAME_LEN);
        if out.len() < len {
            return self.drop_tx(DropReason::BufferTooSmall);
        }
        let hop = match self.next_hop(remote_ip) {
            Ok(h) => h,
            Err(r) => return self.drop_tx(r),
        };
        let mac = self
            .arp
            .lookup(hop, now)
            .or_else(|| self.import_shared(hop, now));
        let ident = self.next_ident();
        let buf = &mut out[..len];
        if len > ETH_HEADER_LEN + ip_len {
            buf[ETH_HEADER_LEN + ip_len..].fill(0);
        }
        EthernetRepr {
            dst: mac.unwrap_or(MacAddr::ZERO),
            src: self.cfg.mac,
            ethertype: ethertype::IPV4,
        }
        .emit(buf);
        Ipv4Repr {
            src: self.cfg.ip,
            dst: remote_ip,
            protocol: ip_protocol::UDP,
            payload_len: UDP_HEADER_LEN + payload_len,
            ttl: self.cfg.ttl,
            ident,
        }
        .emit(&mut buf[ETH_HEADER_LEN..], !self.cfg.offload.ipv4_tx);
        let mode = if self.cfg.offload.udp_tx {
            UdpChecksum::Offload
        } else {
            UdpChecksum::Compute
        };
        UdpRepr { src_port, dst_port }.emit_header(
            &mut buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..],
            self.cfg.ip,
            remote_ip,
            payload_len,
            mode,
        );
        if mac.is_some() {
            self.stats.tx_frames += 1;
            return Outbound::Frame(len);
        }
        let new_resolution = !self.arp.is_pending(hop);
        match self.arp.enqueue(hop, buf.to_vec(), now) {
            Ok(()) => {
                if let (true, Some((t, _))) = (new_resolution, &self.shared) {
                    t.want(hop, now, now + self.arp.resolution_span());
                }
                self.stats.tx_queued += 1;
                Outbound::Pending
            }
            // Counted by the ARP cache (reported under ArpQueueFull).
            Err(_) => Outbound::Drop(DropReason::ArpQueueFull),
        }
    }

    /// The next frame to transmit: datagrams released by a resolution first (in queueing
    /// order), then ARP requests. Returns its length in `buf`, or `None` if nothing is waiting.
    /// A released frame that does not fit `buf` is dropped ([`DropReason::BufferTooSmall`]);
    /// ARP requests wait for a buffer of at least 60 bytes.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.merge_shared(now);
        while let Some((mac, frame)) = self.arp.poll_released() {
            if buf.len() < frame.len() {
                self.stats.drops[DropReason::BufferTooSmall.index()] += 1;
                continue;
            }
            buf[..frame.len()].copy_from_slice(&frame);
            buf[0..6].copy_from_slice(&mac.0);
            self.stats.tx_released += 1;
            return Some(frame.len());
        }
        if buf.len() < ETH_MIN_FRAME_LEN {
            return None;
        }
        let target = self.arp.poll_request()?;
        let b = &mut buf[..ETH_MIN_FRAME_LEN];
        b.fill(0);
        // RFC 826 request: broadcast, target hardware address unknown (zero).
        EthernetRepr {
            dst: MacAddr::BROADCAST,
            src: self.cfg.mac,
            ethertype: ethertype::ARP,
        }
        .emit(b);
        ArpRepr {
            op: ArpOp::Request,
            sha: self.cfg.mac,
            spa: self.cfg.ip,
            tha: MacAddr::ZERO,
            tpa: target,
        }
        .emit(&mut b[ETH_HEADER_LEN..]);
        self.stats.arp_requests += 1;
        Some(ETH_MIN_FRAME_LEN)
    }

    /// On a cache miss, a binding another engine of the port published (cached here too).
    fn import_shared(&mut self, hop: Ipv4Addr, now: Instant) -> Option<MacAddr> {
        let b = self.shared.as_ref()?.0.get(hop, now)?;
        match self.arp.learn(hop, b.mac, Learn::Create, b.confirmed) {
            Learnt::Ignored => None,
            _ => Some(b.mac),
        }
    }

    /// Merges what the other engines published since the last call (one atomic load when
    /// nothing changed): completes resolutions whose reply landed on another queue.
    fn merge_shared(&mut self, now: Instant) {
        let Some((table, seen)) = &mut self.shared else {
            return;
        };
        let generation = table.generation();
        if generation == *seen {
            return;
        }
        *seen = generation;
        for (ip, b) in table.snapshot(now) {
            self.arp.merge(ip, b.mac, b.confirmed);
        }
    }

    /// When [`NetStack::handle_timeout`] should next run (ARP retries, aging).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.arp.poll_timeout()
    }

    /// Runs due timers: request retransmissions and give-ups, entry aging.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.arp.handle_timeout(now);
    }
}

#[cfg(test)]
mod tests;
