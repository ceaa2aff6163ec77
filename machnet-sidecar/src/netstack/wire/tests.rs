use super::*;
use proptest::prelude::*;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn ipv4_bytes(payload_len: usize) -> Vec<u8> {
    let mut b = vec![0u8; IPV4_HEADER_LEN + payload_len];
    Ipv4Repr {
        src: A,
        dst: B,
        protocol: ip_protocol::UDP,
        payload_len,
        ttl: 64,
        ident: 7,
    }
    .emit(&mut b, true);
    b
}

fn fix_ipv4_checksum(b: &mut [u8]) {
    let hl = usize::from(b[0] & 0x0f) * 4;
    b[10] = 0;
    b[11] = 0;
    let c = checksum::of(&b[..hl]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn checksum_rfc1071_example() {
    // RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(checksum::fold(checksum::add(0, &d)), 0xddf2);
    assert_eq!(checksum::of(&d), !0xddf2);
    // Odd length pads with zero.
    assert_eq!(checksum::fold(checksum::add(0, &[0x12])), 0x1200);
}

#[test]
fn mac_classes() {
    assert!(MacAddr::BROADCAST.is_broadcast());
    assert!(MacAddr::BROADCAST.is_multicast());
    assert!(!MacAddr::ZERO.is_unicast());
    assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
    assert!(MacAddr([0x02, 0, 0, 0, 0, 1]).is_unicast());
    assert_eq!(
        MacAddr([0x02, 0xab, 0, 0, 0, 1]).to_string(),
        "02:ab:00:00:00:01"
    );
}

#[test]
fn drop_reason_indexes_match_all() {
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r:?}");
    }
}

#[test]
fn ethernet_truncated_and_vlan() {
    assert_eq!(
        EthernetFrame::new_checked(&[0u8; 13]).unwrap_err(),
        DropReason::Truncated
    );
    let mut f = [0u8; 14];
    f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
    let v = EthernetFrame::new_checked(&f).unwrap();
    assert_eq!(EthernetRepr::parse(&v).unwrap_err(), DropReason::VlanTagged);
    f[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
    let v = EthernetFrame::new_checked(&f).unwrap();
    assert_eq!(EthernetRepr::parse(&v).unwrap_err(), DropReason::VlanTagged);
}

#[test]
fn arp_rejects_non_ethernet_ipv4_and_bad_op() {
    let r = ArpRepr {
        op: ArpOp::Request,
        sha: MacAddr([2, 0, 0, 0, 0, 1]),
        spa: A,
        tha: MacAddr::ZERO,
        tpa: B,
    };
    let mut b = [0u8; ARP_LEN];
    r.emit(&mut b);
    assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&b).unwrap()), Ok(r));
    assert_eq!(
        ArpPacket::new_checked(&b[..27]).unwrap_err(),
        DropReason::Truncated
    );
    for (at, val) in [(1usize, 6u8), (3, 0xdd), (4, 8), (5, 16), (7, 3)] {
        let mut c = b;
        c[at] = val;
        assert_eq!(
            ArpRepr::parse(&ArpPacket::new_checked(&c).unwrap()).unwrap_err(),
            DropReason::ArpUnsupported,
            "byte {at}"
        );
    }
}

#[test]
fn ipv4_edges() {
    let good = ipv4_bytes(8);
    let p = Ipv4Packet::new_checked(&good).unwrap();
    assert!(p.verify_checksum());
    assert!(p.dont_frag());
    assert_eq!(p.ttl(), 64);
    assert_eq!(Ipv4Repr::parse(&p, true).unwrap().payload_len, 8);

    assert_eq!(
        Ipv4Packet::new_checked(&good[..19]).unwrap_err(),
        DropReason::Truncated
    );

    let mut v6 = good.clone();
    v6[0] = 0x65;
    assert_eq!(
        Ipv4Packet::new_checked(&v6).unwrap_err(),
        DropReason::Ipv4BadVersion
    );

    let mut ihl4 = good.clone();
    ihl4[0] = 0x44;
    assert_eq!(
        Ipv4Packet::new_checked(&ihl4).unwrap_err(),
        DropReason::Ipv4BadHeaderLen
    );
    // IHL 15 (60 bytes) beyond a 28-byte buffer.
    let mut ihl15 = good.clone();
    ihl15[0] = 0x4f;
    assert_eq!(
        Ipv4Packet::new_checked(&ihl15).unwrap_err(),
        DropReason::Ipv4BadHeaderLen
    );

    // Total length beyond the buffer, and below the header.
    let mut long = good.clone();
    long[2..4].copy_from_slice(&29u16.to_be_bytes());
    assert_eq!(
        Ipv4Packet::new_checked(&long).unwrap_err(),
        DropReason::Ipv4BadTotalLen
    );
    let mut short = good.clone();
    short[2..4].copy_from_slice(&19u16.to_be_bytes());
    assert_eq!(
        Ipv4Packet::new_checked(&short).unwrap_err(),
        DropReason::Ipv4BadTotalLen
    );

    // Ethernet padding after the total length is trimmed.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0xaa; 18]);
    let p = Ipv4Packet::new_checked(&padded).unwrap();
    assert_eq!(p.total_len(), 28);
    assert_eq!(p.payload().len(), 8);

    let mut bad = good.clone();
    bad[8] ^= 1;
    let p = Ipv4Packet::new_checked(&bad).unwrap();
    assert_eq!(
        Ipv4Repr::parse(&p, true).unwrap_err(),
        DropReason::Ipv4BadChecksum
    );
    // With RX offload the checksum is not looked at.
    assert!(Ipv4Repr::parse(&p, false).is_ok());

    // Fragments: MF set, or a non-zero offset (checksum fixed so that is not the reason).
    for flags in [0x2000u16, 0x0001, 0x4001, 0x3fff] {
        let mut f = good.clone();
        f[6..8].copy_from_slice(&flags.to_be_bytes());
        fix_ipv4_checksum(&mut f);
        let p = Ipv4Packet::new_checked(&f).unwrap();
        assert_eq!(
            Ipv4Repr::parse(&p, true).unwrap_err(),
            DropReason::Ipv4Fragment,
            "flags {flags:#x}"
        );
    }

    // TTL 0 or 1 is accepted by a host (RFC 1122 §3.2.1.7).
    let mut t = good.clone();
    t[8] = 0;
    fix_ipv4_checksum(&mut t);
    assert!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&t).unwrap(), true).is_ok());
}

#[test]
fn ipv4_options_are_skipped() {
    // IHL 6: one word of options (NOPs), then 8 bytes of payload.
    let mut b = vec![0u8; 24 + 8];
    b[0] = 0x46;
    b[2..4].copy_from_slice(&32u16.to_be_bytes());
    b[8] = 64;
    b[9] = ip_protocol::UDP;
    b[12..16].copy_from_slice(&A.octets());
    b[16..20].copy_from_slice(&B.octets());
    b[20..24].copy_from_slice(&[1, 1, 1, 0]);
    b[24..].copy_from_slice(&[9; 8]);
    fix_ipv4_checksum(&mut b);
    let p = Ipv4Packet::new_checked(&b).unwrap();
    assert!(p.verify_checksum());
    assert_eq!(p.header_len(), 24);
    assert_eq!(p.payload(), &[9; 8]);
}

#[test]
fn udp_edges() {
    let repr = UdpRepr {
        src_port: 1000,
        dst_port: 2000,
    };
    let payload = b"hello udp";
    let mut b = vec![0u8; 8 + payload.len()];
    repr.emit(&mut b, A, B, payload, UdpChecksum::Compute);
    let p = UdpPacket::new_checked(&b).unwrap();
    assert_eq!(p.payload(), payload);
    assert_eq!(UdpRepr::parse(&p, A, B, true), Ok(repr));
    // Wrong pseudo-header (another destination) fails.
    assert_eq!(
        UdpRepr::parse(&p, A, Ipv4Addr::new(10, 0, 0, 3), true).unwrap_err(),
        DropReason::UdpBadChecksum
    );
    // Corrupted payload fails; with RX offload it is not checked.
    let mut c = b.clone();
    c[10] ^= 0x40;
    let p = UdpPacket::new_checked(&c).unwrap();
    assert_eq!(
        UdpRepr::parse(&p, A, B, true).unwrap_err(),
        DropReason::UdpBadChecksum
    );
    assert!(UdpRepr::parse(&p, A, B, false).is_ok());
    // A zero checksum means none (RFC 768).
    let mut z = c.clone();
    z[6] = 0;
    z[7] = 0;
    assert!(UdpRepr::parse(&UdpPacket::new_checked(&z).unwrap(), A, B, true).is_ok());

    // Lengths: header truncated; length < 8; length > IP payload.
    assert_eq!(
        UdpPacket::new_checked(&b[..7]).unwrap_err(),
        DropReason::Truncated
    );
    let mut l = b.clone();
    l[4..6].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(
        UdpPacket::new_checked(&l).unwrap_err(),
        DropReason::UdpBadLength
    );
    l[4..6].copy_from_slice(&((b.len() + 1) as u16).to_be_bytes());
    assert_eq!(
        UdpPacket::new_checked(&l).unwrap_err(),
        DropReason::UdpBadLength
    );
    // Shorter than the IP payload: trimmed to the UDP length.
    let mut t = b.clone();
    t[4..6].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(UdpPacket::new_checked(&t).unwrap().payload(), b"he");
}

#[test]
fn udp_computed_zero_is_sent_as_ffff() {
    // Find a payload whose checksum computes to zero: adjust two bytes until it does.
    let repr = UdpRepr {
        src_port: 1,
        dst_port: 2,
    };
    let mut b = [0u8; 10];
    repr.emit(&mut b, A, B, &[0, 0], UdpChecksum::Compute);
    let c = u16::from_be_bytes([b[6], b[7]]);
    // Adding `c` to the data makes the complement sum zero: payload word = c.
    let payload = c.to_be_bytes();
    repr.emit(&mut b, A, B, &payload, UdpChecksum::Compute);
    assert_eq!(&b[6..8], &[0xff, 0xff]);
    assert!(UdpPacket::new_checked(&b).unwrap().verify_checksum(A, B));
}

#[test]
fn udp_offload_writes_pseudo_header_sum() {
    let repr = UdpRepr {
        src_port: 5,
        dst_port: 6,
    };
    let mut b = [0u8; 12];
    repr.emit(&mut b, A, B, &[1, 2, 3, 4], UdpChecksum::Offload);
    let expect = checksum::fold(checksum::pseudo_header(A, B, ip_protocol::UDP, 12));
    assert_eq!(u16::from_be_bytes([b[6], b[7]]), expect);
    // What the NIC then does: complement of the sum over the datagram (field holding the
    // pseudo-header sum) yields a valid checksum.
    let nic = !checksum::fold(checksum::add(0, &b));
    b[6..8].copy_from_slice(&nic.to_be_bytes());
    assert!(UdpPacket::new_checked(&b).unwrap().verify_checksum(A, B));
    repr.emit(&mut b, A, B, &[1, 2, 3, 4], UdpChecksum::None);
    assert_eq!(&b[6..8], &[0, 0]);
}

#[test]
fn icmp_edges() {
    let req = IcmpRepr::EchoRequest {
        ident: 0x1234,
        seq: 9,
        data: b"abc",
    };
    let mut b = vec![0u8; req.buffer_len()];
    req.emit(&mut b);
    assert_eq!(
        IcmpRepr::parse(&IcmpPacket::new_checked(&b).unwrap()),
        Ok(req)
    );
    assert_eq!(
        IcmpPacket::new_checked(&b[..7]).unwrap_err(),
        DropReason::Truncated
    );
    let mut bad = b.clone();
    bad[9] ^= 1;
    assert_eq!(
        IcmpRepr::parse(&IcmpPacket::new_checked(&bad).unwrap()).unwrap_err(),
        DropReason::IcmpBadChecksum
    );
    // Destination unreachable (type 3) with a valid checksum: unsupported.
    let mut du = b.clone();
    du[0] = 3;
    du[2] = 0;
    du[3] = 0;
    let c = checksum::of(&du);
    du[2..4].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        IcmpRepr::parse(&IcmpPacket::new_checked(&du).unwrap()).unwrap_err(),
        DropReason::IcmpUnsupported
    );
}

fn arb_mac() -> impl Strategy<Value = MacAddr> {
    any::<[u8; 6]>().prop_map(MacAddr)
}
fn arb_ip() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

proptest! {
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(f) = EthernetFrame::new_checked(&bytes) {
            let _ = EthernetRepr::parse(&f);
            let _ = f.payload();
        }
        if let Ok(p) = ArpPacket::new_checked(&bytes) {
            let _ = ArpRepr::parse(&p);
        }
        if let Ok(p) = Ipv4Packet::new_checked(&bytes) {
            let _ = Ipv4Repr::parse(&p, true);
            let _ = p.payload();
        }
        if let Ok(p) = UdpPacket::new_checked(&bytes) {
            let _ = UdpRepr::parse(&p, A, B, true);
            let _ = p.payload();
        }
        if let Ok(p) = IcmpPacket::new_checked(&bytes) {
            let _ = IcmpRepr::parse(&p);
        }
    }

    #[test]
    fn ethernet_round_trip(dst in arb_mac(), src in arb_mac(), et in any::<u16>()) {
        prop_assume!(et != ethertype::VLAN && et != ethertype::QINQ);
        let r = EthernetRepr { dst, src, ethertype: et };
        let mut b = [0u8; 14];
        r.emit(&mut b);
        prop_assert_eq!(EthernetRepr::parse(&EthernetFrame::new_checked(&b).unwrap()), Ok(r));
    }

    #[test]
    fn arp_round_trip(req in any::<bool>(), sha in arb_mac(), spa in arb_ip(), tha in arb_mac(), tpa in arb_ip()) {
        let r = ArpRepr { op: if req { ArpOp::Request } else { ArpOp::Reply }, sha, spa, tha, tpa };
        let mut b = [0u8; ARP_LEN];
        r.emit(&mut b);
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&b).unwrap()), Ok(r));
    }

    #[test]
    fn ipv4_udp_round_trip(
        src in arb_ip(), dst in arb_ip(), ttl in any::<u8>(), ident in any::<u16>(),
        sp in any::<u16>(), dp in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let udp_len = UDP_HEADER_LEN + payload.len();
        let ip = Ipv4Repr { src, dst, protocol: ip_protocol::UDP, payload_len: udp_len, ttl, ident };
        let mut b = vec![0u8; ip.total_len()];
        ip.emit(&mut b, true);
        let u = UdpRepr { src_port: sp, dst_port: dp };
        u.emit(&mut b[IPV4_HEADER_LEN..], src, dst, &payload, UdpChecksum::Compute);
        let p = Ipv4Packet::new_checked(&b).unwrap();
        prop_assert_eq!(Ipv4Repr::parse(&p, true), Ok(ip));
        let up = UdpPacket::new_checked(p.payload()).unwrap();
        prop_assert_ne!(up.checksum(), 0);
        prop_assert_eq!(UdpRepr::parse(&up, src, dst, true), Ok(u));
        prop_assert_eq!(up.payload(), &payload[..]);
    }

    #[test]
    fn icmp_round_trip(ident in any::<u16>(), seq in any::<u16>(), reply in any::<bool>(),
                       data in proptest::collection::vec(any::<u8>(), 0..100)) {
        let r = if reply {
            IcmpRepr::EchoReply { ident, seq, data: &data }
        } else {
            IcmpRepr::EchoRequest { ident, seq, data: &data }
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b);
        prop_assert_eq!(IcmpRepr::parse(&IcmpPacket::new_checked(&b).unwrap()), Ok(r));
    }

    #[test]
    fn single_bit_flip_breaks_udp_checksum(
        payload in proptest::collection::vec(any::<u8>(), 1..64), bit in any::<usize>(),
    ) {
        let u = UdpRepr { src_port: 10, dst_port: 20 };
        let mut b = vec![0u8; UDP_HEADER_LEN + payload.len()];
        u.emit(&mut b, A, B, &payload, UdpChecksum::Compute);
        // Flip one payload bit: the one's-complement sum always detects it.
        let i = UDP_HEADER_LEN * 8 + bit % (payload.len() * 8);
        b[i / 8] ^= 1 << (i % 8);
        prop_assert!(!UdpPacket::new_checked(&b).unwrap().verify_checksum(A, B));
    }
}
