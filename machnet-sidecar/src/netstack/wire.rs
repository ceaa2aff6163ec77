//! Wire formats: checked read-only views over received bytes plus typed reprs that parse from a
//! view and emit into a buffer (the smoltcp pattern, hand-written for the five formats we need).
//!
//! Every `new_checked` / `parse` validates lengths before any field is read, so parsing arbitrary
//! bytes never panics (property-tested). `emit` functions panic if the caller's buffer is shorter
//! than the repr's `buffer_len()`: sizing the buffer is the caller's job.

use std::fmt;
use std::net::Ipv4Addr;

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    fn from_bytes(b: &[u8]) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        MacAddr(m)
    }
    /// All ones.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    /// Group bit set (includes broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// A usable individual address: not a group address, not all zeros.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::ZERO
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a frame (received) or a datagram (to send) was dropped. Counted per reason by
/// [`super::NetStack`]; [`DropReason::ALL`] lists them in index order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    /// Shorter than the header it claims to carry.
    #[error("truncated")]
    Truncated,
    /// 802.1Q / 802.1ad tagged frame (VLANs are not supported yet).
    #[error("VLAN-tagged frame")]
    VlanTagged,
    /// Neither IPv4 nor ARP (includes 802.3 length fields).
    #[error("unsupported ethertype")]
    UnknownEthertype,
    /// Destination MAC is neither ours nor broadcast.
    #[error("destination MAC not ours")]
    MacNotOurs,
    /// Source MAC is a group address or zero.
    #[error("bad source MAC")]
    BadSourceMac,
    /// ARP for other than Ethernet/IPv4, or an unknown operation.
    #[error("unsupported ARP")]
    ArpUnsupported,
    /// ARP packet neither addressed to us nor about an address we know/resolve.
    #[error("ARP not for us")]
    ArpNotForUs,
    /// ARP claiming our own IP address from another MAC (address conflict), or looped back.
    #[error("ARP address conflict")]
    ArpConflict,
    /// IPv4 version field is not 4.
    #[error("IPv4 bad version")]
    Ipv4BadVersion,
    /// IPv4 IHL < 5 or beyond the buffer.
    #[error("IPv4 bad header length")]
    Ipv4BadHeaderLen,
    /// IPv4 total length shorter than the header or longer than the frame.
    #[error("IPv4 bad total length")]
    Ipv4BadTotalLen,
    /// IPv4 header checksum mismatch.
    #[error("IPv4 bad checksum")]
    Ipv4BadChecksum,
    /// IPv4 fragment (MF set or offset non-zero): we never fragment and do not reassemble.
    #[error("IPv4 fragment")]
    Ipv4Fragment,
    /// IPv4 destination is not our address.
    #[error("IPv4 destination not ours")]
    Ipv4NotOurs,
    /// IPv4 source is broadcast, multicast, unspecified or ours (RFC 1122 §3.2.1.3).
    #[error("IPv4 bad source")]
    Ipv4BadSource,
    /// IPv4 protocol other than UDP or ICMP.
    #[error("unsupported IP protocol")]
    UnknownProtocol,
    /// UDP length below 8 or beyond the IP payload.
    #[error("UDP bad length")]
    UdpBadLength,
    /// UDP checksum mismatch.
    #[error("UDP bad checksum")]
    UdpBadChecksum,
    /// UDP destination port not in our pool.
    #[error("UDP port not ours")]
    UdpPortNotOurs,
    /// ICMP checksum mismatch.
    #[error("ICMP bad checksum")]
    IcmpBadChecksum,
    /// ICMP message other than echo request (echo replies, errors, ...).
    #[error("unsupported ICMP")]
    IcmpUnsupported,
    /// An echo request whose reply would not fit our MTU.
    #[error("ICMP echo too large")]
    IcmpTooLarge,
    /// Send: the datagram would exceed the MTU.
    #[error("exceeds MTU")]
    TooLarge,
    /// Send: the output buffer is too small for the frame.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// Send: the source port is not in our pool.
    #[error("source port not ours")]
    SrcPortNotOurs,
    /// Send: destination unspecified, broadcast, multicast, loopback or our own address.
    #[error("bad destination")]
    BadDestination,
    /// Send: off-subnet destination and no gateway configured.
    #[error("no route")]
    NoRoute,
    /// Send: the per-IP queue of datagrams awaiting ARP resolution is full.
    #[error("ARP queue full")]
    ArpQueueFull,
    /// Send: ARP resolution gave up; the queued datagram is dropped.
    #[error("ARP resolution failed")]
    ArpFailed,
    /// Send: queued datagram dropped because its pending entry was evicted (cache full).
    #[error("ARP entry evicted")]
    ArpEvicted,
}

impl DropReason {
    /// Every reason, in index order ([`DropReason::index`]).
    pub const ALL: [DropReason; 30] = [
        DropReason::Truncated,
        DropReason::VlanTagged,
        DropReason::UnknownEthertype,
        DropReason::MacNotOurs,
        DropReason::BadSourceMac,
        DropReason::ArpUnsupported,
        DropReason::ArpNotForUs,
        DropReason::ArpConflict,
        DropReason::Ipv4BadVersion,
        DropReason::Ipv4BadHeaderLen,
        DropReason::Ipv4BadTotalLen,
        DropReason::Ipv4BadChecksum,
        DropReason::Ipv4Fragment,
        DropReason::Ipv4NotOurs,
        DropReason::Ipv4BadSource,
        DropReason::UnknownProtocol,
        DropReason::UdpBadLength,
        DropReason::UdpBadChecksum,
        DropReason::UdpPortNotOurs,
        DropReason::IcmpBadChecksum,
        DropReason::IcmpUnsupported,
        DropReason::IcmpTooLarge,
        DropReason::TooLarge,
        DropReason::BufferTooSmall,
        DropReason::SrcPortNotOurs,
        DropReason::BadDestination,
        DropReason::NoRoute,
        DropReason::ArpQueueFull,
        DropReason::ArpFailed,
        DropReason::ArpEvicted,
    ];
    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// Index of this reason in [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The Internet checksum (RFC 1071): one's-complement sum of 16-bit big-endian words.
pub mod checksum {
    use std::net::Ipv4Addr;

    /// Adds `data` to a running (unfolded) sum; an odd trailing byte is padded with zero.
    pub fn add(mut acc: u64, data: &[u8]) -> u64 {
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [b] = chunks.remainder() {
            acc += u64::from(u16::from_be_bytes([*b, 0]));
        }
        acc
    }

    /// Folds a running sum to 16 bits (not complemented).
    pub fn fold(mut acc: u64) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    /// The checksum field value for `data` (complement of the folded sum).
    pub fn of(data: &[u8]) -> u16 {
        !fold(add(0, data))
    }

    /// Unfolded sum of the IPv4 pseudo-header (RFC 768 / RFC 793).
    pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u64 {
        let mut acc = add(0, &src.octets());
        acc = add(acc, &dst.octets());
        acc + u64::from(protocol) + u64::from(len)
    }
}

/// Ethertypes.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad (QinQ) service tag.
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol numbers.
pub mod ip_protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Ethernet II header length.
pub const ETH_HEADER_LEN: usize = 14;
/// Shortest Ethernet frame without FCS (64 with it); shorter frames are zero-padded on emit.
pub const ETH_MIN_FRAME_LEN: usize = 60;
/// ARP (Ethernet/IPv4) packet length.
pub const ARP_LEN: usize = 28;
/// IPv4 header length without options (we never emit options).
pub const IPV4_HEADER_LEN: usize = 20;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// ICMP echo header length.
pub const ICMP_ECHO_HEADER_LEN: usize = 8;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ipv4_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

// ---------------------------------------------------------------------------------------------
// Ethernet II
// ---------------------------------------------------------------------------------------------

/// A checked view of an Ethernet II frame (without FCS).
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<'a> {
    buf: &'a [u8],
}

impl<'a> EthernetFrame<'a> {
    /// Checks the buffer holds at least a header.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, DropReason> {
        if buf.len() < ETH_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        Ok(EthernetFrame { buf })
    }
    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buf[0..6])
    }
    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buf[6..12])
    }
    /// Ethertype (or an 802.3 length if < 0x0600).
    pub fn ethertype(&self) -> u16 {
        be16(self.buf, 12)
    }
    /// Everything after the header (may include trailing padding).
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[ETH_HEADER_LEN..]
    }
}

/// An Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// Ethertype.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Reads the header; VLAN-tagged frames are refused (not supported yet).
    pub fn parse(f: &EthernetFrame<'_>) -> Result<Self, DropReason> {
        let ethertype = f.ethertype();
        if ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
            return Err(DropReason::VlanTagged);
        }
        Ok(EthernetRepr {
            dst: f.dst(),
            src: f.src(),
            ethertype,
        })
    }
    /// Writes the 14-byte header into `buf[..14]`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..6].copy_from_slice(&self.dst.0);
        buf[6..12].copy_from_slice(&self.src.0);
        buf[12..14].copy_from_slice(&self.ethertype.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// ARP (RFC 826), Ethernet/IPv4 only
// ---------------------------------------------------------------------------------------------

/// A checked view of an ARP packet (at least 28 bytes; any trailing padding is ignored).
#[derive(Debug, Clone, Copy)]
pub struct ArpPacket<'a> {
    buf: &'a [u8],
}

impl<'a> ArpPacket<'a> {
    /// Checks the buffer holds an Ethernet/IPv4-sized ARP packet.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, DropReason> {
        if buf.len() < ARP_LEN {
            return Err(DropReason::Truncated);
        }
        Ok(ArpPacket {
            buf: &buf[..ARP_LEN],
        })
    }
    /// Hardware type (1 = Ethernet).
    pub fn htype(&self) -> u16 {
        be16(self.buf, 0)
    }
    /// Protocol type (0x0800 = IPv4).
    pub fn ptype(&self) -> u16 {
        be16(self.buf, 2)
    }
    /// Hardware address length.
    pub fn hlen(&self) -> u8 {
        self.buf[4]
    }
    /// Protocol address length.
    pub fn plen(&self) -> u8 {
        self.buf[5]
    }
    /// Operation (1 request, 2 reply).
    pub fn op(&self) -> u16 {
        be16(self.buf, 6)
    }
    /// Sender hardware address.
    pub fn sha(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buf[8..14])
    }
    /// Sender protocol address.
    pub fn spa(&self) -> Ipv4Addr {
        ipv4_at(self.buf, 14)
    }
    /// Target hardware address.
    pub fn tha(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buf[18..24])
    }
    /// Target protocol address.
    pub fn tpa(&self) -> Ipv4Addr {
        ipv4_at(self.buf, 24)
    }
}

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    /// Who has `tpa`?
    Request,
    /// `spa` is at `sha`.
    Reply,
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Operation.
    pub op: ArpOp,
    /// Sender MAC.
    pub sha: MacAddr,
    /// Sender IPv4.
    pub spa: Ipv4Addr,
    /// Target MAC (zero in requests).
    pub tha: MacAddr,
    /// Target IPv4.
    pub tpa: Ipv4Addr,
}

impl ArpRepr {
    /// Parses; only htype 1 / ptype 0x0800 / hlen 6 / plen 4 with op 1 or 2 are accepted.
    pub fn parse(p: &ArpPacket<'_>) -> Result<Self, DropReason> {
        if p.htype() != 1 || p.ptype() != ethertype::IPV4 || p.hlen() != 6 || p.plen() != 4 {
            return Err(DropReason::ArpUnsupported);
        }
        let op = match p.op() {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            _ => return Err(DropReason::ArpUnsupported),
        };
        Ok(ArpRepr {
            op,
            sha: p.sha(),
            spa: p.spa(),
            tha: p.tha(),
            tpa: p.tpa(),
        })
    }
    /// Writes the 28-byte packet into `buf[..28]`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..2].copy_from_slice(&1u16.to_be_bytes());
        buf[2..4].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        buf[4] = 6;
        buf[5] = 4;
        let op: u16 = match self.op {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        };
        buf[6..8].copy_from_slice(&op.to_be_bytes());
        buf[8..14].copy_from_slice(&self.sha.0);
        buf[14..18].copy_from_slice(&self.spa.octets());
        buf[18..24].copy_from_slice(&self.tha.0);
        buf[24..28].copy_from_slice(&self.tpa.octets());
    }
}

// ---------------------------------------------------------------------------------------------
// IPv4 (RFC 791)
// ---------------------------------------------------------------------------------------------

/// A checked view of an IPv4 packet, trimmed to its total length (Ethernet padding removed).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    buf: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    /// Checks version, IHL and total length against the buffer.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, DropReason> {
        if buf.len() < IPV4_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        if buf[0] >> 4 != 4 {
            return Err(DropReason::Ipv4BadVersion);
        }
        let hl = usize::from(buf[0] & 0x0f) * 4;
        // RFC 791: IHL counts 32-bit words, minimum 5.
        if hl < IPV4_HEADER_LEN || hl > buf.len() {
            return Err(DropReason::Ipv4BadHeaderLen);
        }
        let total = usize::from(be16(buf, 2));
        if total < hl || total > buf.len() {
            return Err(DropReason::Ipv4BadTotalLen);
        }
        Ok(Ipv4Packet { buf: &buf[..total] })
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buf[0] & 0x0f) * 4
    }
    /// Total length (header + payload).
    pub fn total_len(&self) -> usize {
        self.buf.len()
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.buf, 4)
    }
    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.buf[6] & 0x40 != 0
    }
    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.buf[6] & 0x20 != 0
    }
    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buf, 6) & 0x1fff
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buf[8]
    }
    /// Protocol.
    pub fn protocol(&self) -> u8 {
        self.buf[9]
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf, 10)
    }
    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        ipv4_at(self.buf, 12)
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        ipv4_at(self.buf, 16)
    }
    /// Whether the header checksum (over the whole header, options included) is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::add(0, &self.buf[..self.header_len()])) == 0xffff
    }
    /// The payload (options skipped, padding trimmed).
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len()..]
    }
}

/// An IPv4 header as we use it (options are skipped on parse and never emitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub protocol: u8,
    /// Payload length.
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// Identification.
    pub ident: u16,
}

impl Ipv4Repr {
    /// Parses; verifies the header checksum unless `verify_checksum` is false (NIC verified it),
    /// and refuses fragments. TTL is not checked: RFC 1122 §3.2.1.7, a host MUST NOT discard a
    /// datagram just because its TTL is low.
    pub fn parse(p: &Ipv4Packet<'_>, verify_checksum: bool) -> Result<Self, DropReason> {
        if verify_checksum && !p.verify_checksum() {
            return Err(DropReason::Ipv4BadChecksum);
        }
        // We never fragment (DF on emit) and keep no reassembly state: drop any fragment.
        if p.more_frags() || p.frag_offset() != 0 {
            return Err(DropReason::Ipv4Fragment);
        }
        Ok(Ipv4Repr {
            src: p.src(),
            dst: p.dst(),
            protocol: p.protocol(),
            payload_len: p.payload().len(),
            ttl: p.ttl(),
            ident: p.ident(),
        })
    }
    /// Header plus payload length.
    pub fn total_len(&self) -> usize {
        IPV4_HEADER_LEN + self.payload_len
    }
    /// Writes a 20-byte header (DF set, TOS 0) into `buf[..20]`. With `checksum` false the field
    /// is left zero for the NIC to fill (TX IPv4 checksum offload).
    pub fn emit(&self, buf: &mut [u8], checksum: bool) {
        let h = &mut buf[..IPV4_HEADER_LEN];
        h[0] = 0x45;
        h[1] = 0;
        h[2..4].copy_from_slice(&(self.total_len() as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.ident.to_be_bytes());
        h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
        h[8] = self.ttl;
        h[9] = self.protocol;
        h[10..12].copy_from_slice(&[0, 0]);
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        if checksum {
            let c = checksum::of(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// UDP (RFC 768)
// ---------------------------------------------------------------------------------------------

/// A checked view of a UDP datagram, trimmed to its UDP length.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<'a> {
    buf: &'a [u8],
}

impl<'a> UdpPacket<'a> {
    /// Checks the header and that 8 ≤ UDP length ≤ the IP payload (`buf`).
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, DropReason> {
        if buf.len() < UDP_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let len = usize::from(be16(buf, 4));
        if len < UDP_HEADER_LEN || len > buf.len() {
            return Err(DropReason::UdpBadLength);
        }
        Ok(UdpPacket { buf: &buf[..len] })
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buf, 0)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buf, 2)
    }
    /// UDP length (header + payload).
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Never true: a checked datagram holds at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf, 6)
    }
    /// Payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[UDP_HEADER_LEN..]
    }
    /// Verifies the checksum with the pseudo-header; a zero field means "no checksum" (RFC 768,
    /// allowed over IPv4) and passes.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let acc = checksum::pseudo_header(src, dst, ip_protocol::UDP, self.buf.len() as u16);
        checksum::fold(checksum::add(acc, self.buf)) == 0xffff
    }
}

/// How the UDP checksum field is filled on emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpChecksum {
    /// Compute it in software.
    Compute,
    /// The NIC computes it (TX L4 offload): the field holds the folded, non-complemented
    /// pseudo-header sum, which is what DPDK's `RTE_MBUF_F_TX_UDP_CKSUM` expects
    /// (`rte_ipv4_phdr_cksum`).
    Offload,
    /// Leave it zero ("no checksum", RFC 768).
    None,
}

/// A UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl UdpRepr {
    /// Parses; verifies the checksum (if non-zero) unless `verify_checksum` is false.
    pub fn parse(
        p: &UdpPacket<'_>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        verify_checksum: bool,
    ) -> Result<Self, DropReason> {
        if verify_checksum && !p.verify_checksum(src, dst) {
            return Err(DropReason::UdpBadChecksum);
        }
        Ok(UdpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
        })
    }
    /// Writes header and payload into `buf[..8 + payload.len()]`.
    pub fn emit(
        &self,
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
        mode: UdpChecksum,
    ) {
        buf[UDP_HEADER_LEN..UDP_HEADER_LEN + payload.len()].copy_from_slice(payload);
        self.emit_header(buf, src, dst, payload.len(), mode);
    }

    /// Writes the header into `buf[..8]` for the `payload_len` bytes of payload already at
    /// `buf[8..]` (the checksum covers them).
    pub fn emit_header(
        &self,
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload_len: usize,
        mode: UdpChecksum,
    ) {
        let len = UDP_HEADER_LEN + payload_len;
        let b = &mut buf[..len];
        b[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        b[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        b[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        b[6..8].copy_from_slice(&[0, 0]);
        let phdr = checksum::pseudo_header(src, dst, ip_protocol::UDP, len as u16);
        let c = match mode {
            UdpChecksum::None => 0,
            UdpChecksum::Offload => checksum::fold(phdr),
            UdpChecksum::Compute => match !checksum::fold(checksum::add(phdr, b)) {
                // RFC 768: a computed zero is transmitted as all ones.
                0 => 0xffff,
                c => c,
            },
        };
        b[6..8].copy_from_slice(&c.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// ICMP echo (RFC 792)
// ---------------------------------------------------------------------------------------------

/// A checked view of an ICMP message (at least the 8-byte echo header).
#[derive(Debug, Clone, Copy)]
pub struct IcmpPacket<'a> {
    buf: &'a [u8],
}

impl<'a> IcmpPacket<'a> {
    /// Checks the buffer holds at least 8 bytes.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, DropReason> {
        if buf.len() < ICMP_ECHO_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        Ok(IcmpPacket { buf })
    }
    /// Type.
    pub fn msg_type(&self) -> u8 {
        self.buf[0]
    }
    /// Code.
    pub fn code(&self) -> u8 {
        self.buf[1]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buf, 2)
    }
    /// Echo identifier.
    pub fn ident(&self) -> u16 {
        be16(self.buf, 4)
    }
    /// Echo sequence number.
    pub fn seq(&self) -> u16 {
        be16(self.buf, 6)
    }
    /// Echo data.
    pub fn data(&self) -> &'a [u8] {
        &self.buf[ICMP_ECHO_HEADER_LEN..]
    }
    /// Whether the checksum over the whole message is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::add(0, self.buf)) == 0xffff
    }
}

/// An ICMP echo message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRepr<'a> {
    /// Type 8 code 0.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
        /// Data, echoed back verbatim.
        data: &'a [u8],
    },
    /// Type 0 code 0.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
        /// Data.
        data: &'a [u8],
    },
}

impl<'a> IcmpRepr<'a> {
    /// Parses an echo request or reply, verifying the checksum.
    pub fn parse(p: &IcmpPacket<'a>) -> Result<Self, DropReason> {
        if !p.verify_checksum() {
            return Err(DropReason::IcmpBadChecksum);
        }
        match (p.msg_type(), p.code()) {
            (8, 0) => Ok(IcmpRepr::EchoRequest {
                ident: p.ident(),
                seq: p.seq(),
                data: p.data(),
            }),
            (0, 0) => Ok(IcmpRepr::EchoReply {
                ident: p.ident(),
                seq: p.seq(),
                data: p.data(),
            }),
            _ => Err(DropReason::IcmpUnsupported),
        }
    }
    /// Message length.
    pub fn buffer_len(&self) -> usize {
        match self {
            IcmpRepr::EchoRequest { data, .. } | IcmpRepr::EchoReply { data, .. } => {
                ICMP_ECHO_HEADER_LEN + data.len()
            }
        }
    }
    /// Writes the message (checksum computed) into `buf[..buffer_len()]`.
    pub fn emit(&self, buf: &mut [u8]) {
        let (ty, ident, seq, data) = match *self {
            IcmpRepr::EchoRequest { ident, seq, data } => (8u8, ident, seq, data),
            IcmpRepr::EchoReply { ident, seq, data } => (0u8, ident, seq, data),
        };
        let b = &mut buf[..ICMP_ECHO_HEADER_LEN + data.len()];
        b[0] = ty;
        b[1] = 0;
        b[2..4].copy_from_slice(&[0, 0]);
        b[4..6].copy_from_slice(&ident.to_be_bytes());
        b[6..8].copy_from_slice(&seq.to_be_bytes());
        b[ICMP_ECHO_HEADER_LEN..].copy_from_slice(data);
        let c = checksum::of(b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests;
