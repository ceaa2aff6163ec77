use super::wire::{checksum, ARP_LEN};
use super::*;
use proptest::prelude::*;
use std::time::Duration;

const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xa]);
const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xb]);
const MAC_X: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xe]);
const MAC_GW: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x1]);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const IP_X: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const IP_GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_FAR: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 7);
const POOL: PortPool = PortPool {
    base: 5000,
    count: 4,
};

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

fn stack(mac: MacAddr, ip: Ipv4Addr) -> NetStack {
    NetStack::new(NetConfig::new(mac, ip, POOL))
}

fn pair() -> (NetStack, NetStack) {
    (stack(MAC_A, IP_A), stack(MAC_B, IP_B))
}

/// Every frame `s` wants to transmit now.
fn drain(s: &mut NetStack, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(n) = s.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn reply_of(i: Inbound<'_>) -> Vec<u8> {
    match i {
        Inbound::Reply(b) => b.to_vec(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn arp_frame(eth_dst: MacAddr, a: ArpRepr) -> Vec<u8> {
    let mut f = vec![0u8; ETH_MIN_FRAME_LEN];
    EthernetRepr {
        dst: eth_dst,
        src: a.sha,
        ethertype: ethertype::ARP,
    }
    .emit(&mut f);
    a.emit(&mut f[ETH_HEADER_LEN..]);
    f
}

fn parse_arp(f: &[u8]) -> (EthernetRepr, ArpRepr) {
    let e = EthernetRepr::parse(&EthernetFrame::new_checked(f).unwrap()).unwrap();
    assert_eq!(e.ethertype, ethertype::ARP);
    let a = ArpRepr::parse(&ArpPacket::new_checked(&f[ETH_HEADER_LEN..]).unwrap()).unwrap();
    (e, a)
}

/// An IPv4 frame from (`src_mac`, `src_ip`) to (`dst_mac`, `dst_ip`) carrying `l4` bytes.
fn ip_frame(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    protocol: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; ETH_HEADER_LEN + IPV4_HEADER_LEN + l4.len()];
    EthernetRepr {
        dst: dst_mac,
        src: src_mac,
        ethertype: ethertype::IPV4,
    }
    .emit(&mut f);
    Ipv4Repr {
        src: src_ip,
        dst: dst_ip,
        protocol,
        payload_len: l4.len(),
        ttl: 64,
        ident: 1,
    }
    .emit(&mut f[ETH_HEADER_LEN..], true);
    f[ETH_HEADER_LEN + IPV4_HEADER_LEN..].copy_from_slice(l4);
    f
}

fn udp_bytes(src: Ipv4Addr, dst: Ipv4Addr, sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; UDP_HEADER_LEN + payload.len()];
    UdpRepr {
        src_port: sp,
        dst_port: dp,
    }
    .emit(&mut b, src, dst, payload, UdpChecksum::Compute);
    b
}

/// A UDP frame from B to A (A's port 5000).
fn udp_b_to_a(payload: &[u8]) -> Vec<u8> {
    ip_frame(
        MAC_B,
        MAC_A,
        IP_B,
        IP_A,
        ip_protocol::UDP,
        &udp_bytes(IP_B, IP_A, 5001, 5000, payload),
    )
}

fn echo_request(data: &[u8]) -> Vec<u8> {
    let r = IcmpRepr::EchoRequest {
        ident: 0xbeef,
        seq: 3,
        data,
    };
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut b);
    ip_frame(MAC_B, MAC_A, IP_B, IP_A, ip_protocol::ICMP, &b)
}

fn expect_drop(s: &mut NetStack, f: &[u8], r: DropReason) {
    let before = s.stats().dropped(r);
    assert_eq!(s.handle_frame(ms(0), f), Inbound::Drop(r));
    assert_eq!(s.stats().dropped(r), before + 1, "{r:?} counted");
}

/// Resolves A → B through a full ARP exchange; returns the frames A released.
fn resolve_a_to_b(a: &mut NetStack, b: &mut NetStack, now: Instant) -> Vec<Vec<u8>> {
    let frames = drain(a, now);
    let req = frames.last().expect("an ARP request").clone();
    let (e, r) = parse_arp(&req);
    assert_eq!(e.dst, MacAddr::BROADCAST);
    assert_eq!(
        (r.op, r.sha, r.spa, r.tha, r.tpa),
        (ArpOp::Request, MAC_A, IP_A, MacAddr::ZERO, IP_B)
    );
    let reply = reply_of(b.handle_frame(now, &req));
    assert_eq!(a.handle_frame(now, &reply), Inbound::Consumed);
    drain(a, now)
}

#[test]
fn datagram_after_arp_resolution() {
    let (mut a, mut b) = pair();
    let mut out = [0u8; 1600];
    assert_eq!(
        a.build_datagram(ms(0), IP_B, 5000, 5002, b"hello", &mut out),
        Outbound::Pending
    );
    let released = resolve_a_to_b(&mut a, &mut b, ms(1));
    assert_eq!(released.len(), 1);
    let f = &released[0];
    assert_eq!(&f[0..6], &MAC_B.0, "destination MAC patched in");
    assert_eq!(f.len(), ETH_MIN_FRAME_LEN, "short frame padded to 60 bytes");
    match b.handle_frame(ms(2), f) {
        Inbound::Datagram {
            remote_ip,
            src_port,
            dst_port,
            payload,
        } => {
            assert_eq!((remote_ip, src_port, dst_port), (IP_A, 5000, 5002));
            assert_eq!(&f[payload], b"hello");
        }
        other => panic!("{other:?}"),
    }
    // Now cached: the next one is a frame right away.
    assert!(matches!(
        a.build_datagram(ms(3), IP_B, 5000, 5002, b"again", &mut out),
        Outbound::Frame(_)
    ));
    // B learnt A from A's request addressed to it (RFC 826): no ARP needed to answer.
    assert!(matches!(
        b.build_datagram(ms(3), IP_A, 5002, 5000, b"back", &mut out),
        Outbound::Frame(_)
    ));
    let s = a.stats();
    assert_eq!(
        (s.tx_queued, s.tx_released, s.tx_frames, s.arp_requests),
        (1, 1, 1, 1)
    );
    assert_eq!(b.stats().arp_replies, 1);
}

#[test]
fn queued_datagrams_released_in_order() {
    let (mut a, mut b) = pair();
    let mut out = [0u8; 1600];
    for i in 0..5u8 {
        assert_eq!(
            a.build_datagram(ms(0), IP_B, 5000, 5001, &[i; 100], &mut out),
            Outbound::Pending
        );
    }
    let released = resolve_a_to_b(&mut a, &mut b, ms(1));
    assert_eq!(released.len(), 5);
    for (i, f) in released.iter().enumerate() {
        let Inbound::Datagram { payload, .. } = b.handle_frame(ms(2), f) else {
            panic!()
        };
        assert_eq!(f[payload], [i as u8; 100]);
    }
}

#[test]
fn arp_queue_bound_drops_and_counts() {
    let mut a = stack(MAC_A, IP_A);
    let mut out = [0u8; 100];
    for _ in 0..16 {
        assert_eq!(
            a.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out),
            Outbound::Pending
        );
    }
    assert_eq!(
        a.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out),
        Outbound::Drop(DropReason::ArpQueueFull)
    );
    assert_eq!(a.stats().dropped(DropReason::ArpQueueFull), 1);
}

#[test]
fn arp_retry_then_give_up() {
    let mut a = stack(MAC_A, IP_A);
    let mut out = [0u8; 100];
    a.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out);
    a.build_datagram(ms(0), IP_B, 5000, 5001, b"y", &mut out);
    let mut requests = drain(&mut a, ms(0)).len();
    while let Some(t) = a.poll_timeout() {
        if !a.arp_cache().is_pending(IP_B) {
            break;
        }
        a.handle_timeout(t);
        requests += drain(&mut a, t).len();
    }
    assert_eq!(requests, 4);
    assert!(!a.arp_cache().is_pending(IP_B));
    assert_eq!(a.stats().dropped(DropReason::ArpFailed), 2);
    // A late reply is now unsolicited: ignored.
    let late = arp_frame(
        MAC_A,
        ArpRepr {
            op: ArpOp::Reply,
            sha: MAC_B,
            spa: IP_B,
            tha: MAC_A,
            tpa: IP_A,
        },
    );
    expect_drop(&mut a, &late, DropReason::ArpNotForUs);
}

#[test]
fn entries_age_and_traffic_refreshes() {
    let (mut a, mut b) = pair();
    let mut out = [0u8; 100];
    a.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out);
    resolve_a_to_b(&mut a, &mut b, ms(0));
    // A datagram from B (via MAC_B) at 50 s keeps the entry alive past 60 s.
    let f = udp_b_to_a(b"keepalive");
    assert!(matches!(
        a.handle_frame(ms(50_000), &f),
        Inbound::Datagram { .. }
    ));
    assert!(matches!(
        a.build_datagram(ms(100_000), IP_B, 5000, 5001, b"x", &mut out),
        Outbound::Frame(_)
    ));
    // Silence for 60 s: expired, the next datagram resolves again.
    assert_eq!(
        a.build_datagram(ms(110_000), IP_B, 5000, 5001, b"x", &mut out),
        Outbound::Pending
    );
    let frames = drain(&mut a, ms(110_000));
    assert_eq!(parse_arp(&frames[0]).1.tpa, IP_B);
}

#[test]
fn arp_request_for_us_is_answered() {
    let mut a = stack(MAC_A, IP_A);
    let req = arp_frame(
        MacAddr::BROADCAST,
        ArpRepr {
            op: ArpOp::Request,
            sha: MAC_X,
            spa: IP_X,
            tha: MacAddr::ZERO,
            tpa: IP_A,
        },
    );
    let reply = reply_of(a.handle_frame(ms(0), &req));
    assert_eq!(reply.len(), ETH_MIN_FRAME_LEN);
    let (e, r) = parse_arp(&reply);
    assert_eq!((e.dst, e.src), (MAC_X, MAC_A));
    assert_eq!(
        r,
        ArpRepr {
            op: ArpOp::Reply,
            sha: MAC_A,
            spa: IP_A,
            tha: MAC_X,
            tpa: IP_X
        }
    );
    // Truncated ARP (no padding, 27 bytes) is dropped.
    expect_drop(
        &mut a,
        &req[..ETH_HEADER_LEN + ARP_LEN - 1],
        DropReason::Truncated,
    );
}

#[test]
fn arp_for_other_ips_ignored() {
    let mut a = stack(MAC_A, IP_A);
    let req = arp_frame(
        MacAddr::BROADCAST,
        ArpRepr {
            op: ArpOp::Request,
            sha: MAC_X,
            spa: IP_X,
            tha: MacAddr::ZERO,
            tpa: IP_B,
        },
    );
    expect_drop(&mut a, &req, DropReason::ArpNotForUs);
    assert!(
        a.arp_cache().is_empty(),
        "not learnt from a request for someone else"
    );
}

#[test]
fn gratuitous_arp_policy() {
    let (mut a, mut b) = pair();
    let garp = |ip: Ipv4Addr, mac: MacAddr| {
        arp_frame(
            MacAddr::BROADCAST,
            ArpRepr {
                op: ArpOp::Request,
                sha: mac,
                spa: ip,
                tha: MacAddr::ZERO,
                tpa: ip,
            },
        )
    };
    // Unknown address: ignored (no poisoning of future lookups).
    expect_drop(&mut a, &garp(IP_X, MAC_X), DropReason::ArpNotForUs);
    assert!(a.arp_cache().is_empty());
    // Known address: updated (B moved to MAC_X, e.g. failover).
    let mut out = [0u8; 100];
    a.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out);
    resolve_a_to_b(&mut a, &mut b, ms(0));
    assert_eq!(a.handle_frame(ms(1), &garp(IP_B, MAC_X)), Inbound::Consumed);
    assert_eq!(
        a.build_datagram(ms(2), IP_B, 5000, 5001, b"x", &mut out),
        Outbound::Frame(ETH_MIN_FRAME_LEN)
    );
    assert_eq!(&out[0..6], &MAC_X.0);
    // Someone claiming our own address: conflict, dropped.
    expect_drop(&mut a, &garp(IP_A, MAC_X), DropReason::ArpConflict);
}

#[test]
fn ethernet_filtering() {
    let mut a = stack(MAC_A, IP_A);
    let mut f = udp_b_to_a(b"x");
    f[0..6].copy_from_slice(&MAC_X.0);
    expect_drop(&mut a, &f, DropReason::MacNotOurs);
    f[0..6].copy_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
    expect_drop(&mut a, &f, DropReason::MacNotOurs);
    let mut f = udp_b_to_a(b"x");
    f[6..12].copy_from_slice(&MacAddr::BROADCAST.0);
    expect_drop(&mut a, &f, DropReason::BadSourceMac);
    let mut f = udp_b_to_a(b"x");
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    expect_drop(&mut a, &f, DropReason::UnknownEthertype);
    f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
    expect_drop(&mut a, &f, DropReason::VlanTagged);
    expect_drop(&mut a, &f[..13], DropReason::Truncated);
    // Broadcast MAC carrying an IPv4 packet to our address is accepted.
    let mut f = udp_b_to_a(b"x");
    f[0..6].copy_from_slice(&MacAddr::BROADCAST.0);
    assert!(matches!(
        a.handle_frame(ms(0), &f),
        Inbound::Datagram { .. }
    ));
}

#[test]
fn ipv4_filtering() {
    let mut a = stack(MAC_A, IP_A);
    let udp = udp_bytes(IP_B, IP_X, 5001, 5000, b"x");
    let f = ip_frame(MAC_B, MAC_A, IP_B, IP_X, ip_protocol::UDP, &udp);
    expect_drop(&mut a, &f, DropReason::Ipv4NotOurs);
    for src in [
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 5),
        Ipv4Addr::UNSPECIFIED,
        IP_A,
    ] {
        let udp = udp_bytes(src, IP_A, 5001, 5000, b"x");
        let f = ip_frame(MAC_B, MAC_A, src, IP_A, ip_protocol::UDP, &udp);
        expect_drop(&mut a, &f, DropReason::Ipv4BadSource);
    }
    let f = ip_frame(MAC_B, MAC_A, IP_B, IP_A, 6, &[0; 20]);
    expect_drop(&mut a, &f, DropReason::UnknownProtocol);

    let good = udp_b_to_a(b"payload");
    let mut v = good.clone();
    v[14] = 0x65;
    expect_drop(&mut a, &v, DropReason::Ipv4BadVersion);
    let mut v = good.clone();
    v[14] = 0x43;
    expect_drop(&mut a, &v, DropReason::Ipv4BadHeaderLen);
    let mut v = good.clone();
    v[16..18].copy_from_slice(&200u16.to_be_bytes());
    expect_drop(&mut a, &v, DropReason::Ipv4BadTotalLen);
    let mut v = good.clone();
    v[22] ^= 0x10; // TTL
    expect_drop(&mut a, &v, DropReason::Ipv4BadChecksum);
    expect_drop(&mut a, &good[..ETH_HEADER_LEN + 19], DropReason::Truncated);
    // Fragment with a correct checksum.
    let mut v = good.clone();
    v[20] |= 0x20; // MF
    let hdr = &mut v[ETH_HEADER_LEN..ETH_HEADER_LEN + 20];
    hdr[10] = 0;
    hdr[11] = 0;
    let c = checksum::of(hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    expect_drop(&mut a, &v, DropReason::Ipv4Fragment);
}

#[test]
fn subnet_broadcast_source_rejected() {
    let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
    cfg.netmask = Some(Ipv4Addr::new(255, 255, 255, 0));
    let mut a = NetStack::new(cfg);
    let bc = Ipv4Addr::new(10, 0, 0, 255);
    let udp = udp_bytes(bc, IP_A, 5001, 5000, b"x");
    let f = ip_frame(MAC_B, MAC_A, bc, IP_A, ip_protocol::UDP, &udp);
    expect_drop(&mut a, &f, DropReason::Ipv4BadSource);
    let mut out = [0u8; 100];
    assert_eq!(
        a.build_datagram(ms(0), bc, 5000, 5001, b"x", &mut out),
        Outbound::Drop(DropReason::BadDestination)
    );
}

#[test]
fn udp_filtering() {
    let mut a = stack(MAC_A, IP_A);
    // Port outside the pool.
    let udp = udp_bytes(IP_B, IP_A, 5001, 6000, b"x");
    let f = ip_frame(MAC_B, MAC_A, IP_B, IP_A, ip_protocol::UDP, &udp);
    expect_drop(&mut a, &f, DropReason::UdpPortNotOurs);
    // Bad checksum.
    let mut f = udp_b_to_a(b"payload");
    let n = f.len();
    f[n - 1] ^= 1;
    expect_drop(&mut a, &f, DropReason::UdpBadChecksum);
    // ... accepted when the NIC verified it.
    let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
    cfg.offload.udp_rx = true;
    let mut off = NetStack::new(cfg);
    assert!(matches!(
        off.handle_frame(ms(0), &f),
        Inbound::Datagram { .. }
    ));
    // Bad UDP length (beyond the IP payload).
    let mut f = udp_b_to_a(b"payload");
    let at = ETH_HEADER_LEN + IPV4_HEADER_LEN + 4;
    f[at..at + 2].copy_from_slice(&100u16.to_be_bytes());
    expect_drop(&mut a, &f, DropReason::UdpBadLength);
    // Truncated UDP header.
    let f = ip_frame(MAC_B, MAC_A, IP_B, IP_A, ip_protocol::UDP, &[0; 7]);
    expect_drop(&mut a, &f, DropReason::Truncated);
    // No checksum (zero) accepted; Ethernet padding not part of the payload.
    let mut udp = udp_bytes(IP_B, IP_A, 5001, 5003, b"ab");
    udp[6] = 0;
    udp[7] = 0;
    let mut f = ip_frame(MAC_B, MAC_A, IP_B, IP_A, ip_protocol::UDP, &udp);
    f.resize(ETH_MIN_FRAME_LEN, 0xee);
    let Inbound::Datagram {
        payload, dst_port, ..
    } = a.handle_frame(ms(0), &f)
    else {
        panic!()
    };
    assert_eq!((&f[payload], dst_port), (&b"ab"[..], 5003));
}

#[test]
fn icmp_echo_reply() {
    let mut a = stack(MAC_A, IP_A);
    let data: Vec<u8> = (0..=255).collect();
    let req = echo_request(&data);
    let reply = reply_of(a.handle_frame(ms(0), &req));
    let e = EthernetRepr::parse(&EthernetFrame::new_checked(&reply).unwrap()).unwrap();
    assert_eq!((e.dst, e.src, e.ethertype), (MAC_B, MAC_A, ethertype::IPV4));
    let ip = Ipv4Packet::new_checked(&reply[ETH_HEADER_LEN..]).unwrap();
    let ipr = Ipv4Repr::parse(&ip, true).expect("valid IPv4 checksum");
    assert_eq!(
        (ipr.src, ipr.dst, ipr.protocol),
        (IP_A, IP_B, ip_protocol::ICMP)
    );
    let icmp = IcmpRepr::parse(&IcmpPacket::new_checked(ip.payload()).unwrap())
        .expect("valid ICMP checksum");
    assert_eq!(
        icmp,
        IcmpRepr::EchoReply {
            ident: 0xbeef,
            seq: 3,
            data: &data
        }
    );
    assert_eq!(a.stats().echo_replies, 1);
    // Tiny echo: reply padded to 60 bytes, still parses.
    let reply = reply_of(a.handle_frame(ms(0), &echo_request(b"")));
    assert_eq!(reply.len(), ETH_MIN_FRAME_LEN);
}

#[test]
fn icmp_drops() {
    let mut a = stack(MAC_A, IP_A);
    let mut req = echo_request(b"abcd");
    let n = req.len();
    req[n - 1] ^= 1;
    expect_drop(&mut a, &req, DropReason::IcmpBadChecksum);
    // An echo reply (type 0) is not for us to answer.
    let r = IcmpRepr::EchoReply {
        ident: 1,
        seq: 1,
        data: b"",
    };
    let mut b = vec![0u8; r.buffer_len()];
    r.emit(&mut b);
    let f = ip_frame(MAC_B, MAC_A, IP_B, IP_A, ip_protocol::ICMP, &b);
    expect_drop(&mut a, &f, DropReason::IcmpUnsupported);
    // A request whose reply would exceed our MTU.
    let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
    cfg.mtu = 576;
    let mut small = NetStack::new(cfg);
    let big = echo_request(&[7; 600]);
    expect_drop(&mut small, &big, DropReason::IcmpTooLarge);
    let ok = echo_request(&[7; 576 - 28]);
    assert!(matches!(small.handle_frame(ms(0), &ok), Inbound::Reply(_)));
}

#[test]
fn mtu_enforced() {
    for mtu in [DEFAULT_MTU, 9000] {
        let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
        cfg.mtu = mtu;
        let mut a = NetStack::new(cfg);
        a.arp.learn(IP_B, MAC_B, Learn::Create, ms(0));
        let mut out = vec![0u8; 10_000];
        let max = mtu - 28;
        assert_eq!(a.config().max_payload(), max);
        assert_eq!(
            a.build_datagram(ms(0), IP_B, 5000, 5001, &vec![1; max], &mut out),
            Outbound::Frame(mtu + ETH_HEADER_LEN)
        );
        assert_eq!(
            a.build_datagram(ms(0), IP_B, 5000, 5001, &vec![1; max + 1], &mut out),
            Outbound::Drop(DropReason::TooLarge)
        );
        assert_eq!(a.stats().dropped(DropReason::TooLarge), 1);
        // The receiving side takes the full-size frame.
        let mut b = NetStack::new(NetConfig {
            mac: MAC_B,
            ip: IP_B,
            ..a.config().clone()
        });
        assert!(matches!(
            a.build_datagram(ms(0), IP_B, 5000, 5001, &vec![1; max], &mut out),
            Outbound::Frame(_)
        ));
        let f = &out[..mtu + ETH_HEADER_LEN];
        let Inbound::Datagram { payload, .. } = b.handle_frame(ms(0), f) else {
            panic!()
        };
        assert_eq!(&f[payload], &vec![1u8; max][..]);
    }
}

#[test]
fn build_errors() {
    let mut a = stack(MAC_A, IP_A);
    let mut out = [0u8; 100];
    let e = |r| Outbound::Drop(r);
    assert_eq!(
        a.build_datagram(ms(0), IP_B, 4999, 1, b"x", &mut out),
        e(DropReason::SrcPortNotOurs)
    );
    assert_eq!(
        a.build_datagram(ms(0), IP_B, 5000, 1, &[0; 100], &mut out),
        e(DropReason::BufferTooSmall)
    );
    assert_eq!(
        a.build_datagram(ms(0), IP_B, 5000, 1, b"x", &mut out[..59]),
        e(DropReason::BufferTooSmall)
    );
    for bad in [
        IP_A,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::new(239, 1, 1, 1),
    ] {
        assert_eq!(
            a.build_datagram(ms(0), bad, 5000, 1, b"x", &mut out),
            e(DropReason::BadDestination),
            "{bad}"
        );
    }
    // Off-subnet without a gateway.
    let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
    cfg.netmask = Some(Ipv4Addr::new(255, 255, 255, 0));
    let mut s = NetStack::new(cfg);
    assert_eq!(
        s.build_datagram(ms(0), IP_FAR, 5000, 1, b"x", &mut out),
        e(DropReason::NoRoute)
    );
    assert_eq!(s.stats().dropped(DropReason::NoRoute), 1);
}

#[test]
fn off_subnet_goes_through_gateway() {
    let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
    cfg.netmask = Some(Ipv4Addr::new(255, 255, 255, 0));
    cfg.gateway = Some(IP_GW);
    let mut a = NetStack::new(cfg);
    let mut out = [0u8; 200];
    assert_eq!(
        a.build_datagram(ms(0), IP_FAR, 5000, 7, b"far", &mut out),
        Outbound::Pending
    );
    let frames = drain(&mut a, ms(0));
    assert_eq!(parse_arp(&frames[0]).1.tpa, IP_GW, "resolves the gateway");
    let reply = arp_frame(
        MAC_A,
        ArpRepr {
            op: ArpOp::Reply,
            sha: MAC_GW,
            spa: IP_GW,
            tha: MAC_A,
            tpa: IP_A,
        },
    );
    assert_eq!(a.handle_frame(ms(1), &reply), Inbound::Consumed);
    let frames = drain(&mut a, ms(1));
    assert_eq!(frames.len(), 1);
    assert_eq!(&frames[0][0..6], &MAC_GW.0);
    let ip = Ipv4Packet::new_checked(&frames[0][ETH_HEADER_LEN..]).unwrap();
    assert_eq!(ip.dst(), IP_FAR);
    // On-link destinations are still resolved directly; no second gateway lookup needed.
    assert!(matches!(
        a.build_datagram(ms(2), Ipv4Addr::new(8, 8, 8, 8), 5000, 7, b"x", &mut out),
        Outbound::Frame(_)
    ));
    assert_eq!(&out[0..6], &MAC_GW.0);
    // Traffic from far away via the gateway refreshes the gateway's entry.
    let udp = udp_bytes(IP_FAR, IP_A, 7, 5000, b"r");
    let f = ip_frame(MAC_GW, MAC_A, IP_FAR, IP_A, ip_protocol::UDP, &udp);
    assert!(matches!(
        a.handle_frame(ms(59_000), &f),
        Inbound::Datagram { .. }
    ));
    assert!(matches!(
        a.build_datagram(ms(100_000), IP_FAR, 5000, 7, b"x", &mut out),
        Outbound::Frame(_)
    ));
}

#[test]
fn tx_checksum_offload_fields() {
    let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
    cfg.offload.ipv4_tx = true;
    cfg.offload.udp_tx = true;
    let mut a = NetStack::new(cfg);
    a.arp.learn(IP_B, MAC_B, Learn::Create, ms(0));
    let mut out = [0u8; 200];
    let Outbound::Frame(n) = a.build_datagram(ms(0), IP_B, 5000, 5001, &[3; 100], &mut out) else {
        panic!()
    };
    let ip = &out[ETH_HEADER_LEN..n];
    assert_eq!(&ip[10..12], &[0, 0], "IPv4 checksum left to the NIC");
    let udp_csum = u16::from_be_bytes([ip[26], ip[27]]);
    let phdr = checksum::fold(checksum::pseudo_header(IP_A, IP_B, ip_protocol::UDP, 108));
    assert_eq!(udp_csum, phdr, "pseudo-header sum for the NIC");
}

#[test]
fn poll_transmit_small_buffer() {
    let mut a = stack(MAC_A, IP_A);
    let mut out = [0u8; 100];
    a.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out);
    let mut tiny = [0u8; 59];
    assert_eq!(a.poll_transmit(ms(0), &mut tiny), None);
    // The request is still there for a proper buffer.
    assert_eq!(drain(&mut a, ms(0)).len(), 1);
}

#[test]
fn timeout_is_reported() {
    let mut a = stack(MAC_A, IP_A);
    assert_eq!(a.poll_timeout(), None);
    let mut out = [0u8; 100];
    a.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out);
    assert_eq!(a.poll_timeout(), Some(ms(0) + Duration::from_millis(250)));
}

fn arb_frame_prefix() -> impl Strategy<Value = Vec<u8>> {
    // Valid-looking prefixes reach the deeper parsers; the rest is arbitrary.
    prop_oneof![
        Just(vec![]),
        Just(udp_b_to_a(b"0123456789")),
        Just(echo_request(b"ping")),
        Just(arp_frame(
            MacAddr::BROADCAST,
            ArpRepr {
                op: ArpOp::Request,
                sha: MAC_B,
                spa: IP_B,
                tha: MacAddr::ZERO,
                tpa: IP_A
            }
        )),
    ]
}

proptest! {
    #[test]
    fn handle_frame_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let mut a = stack(MAC_A, IP_A);
        let _ = a.handle_frame(ms(0), &bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        base in arb_frame_prefix(),
        muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let mut f = base;
        if !f.is_empty() {
            for (i, v) in muts {
                let n = f.len();
                f[i % n] = v;
            }
            f.truncate(cut % (f.len() + 1));
        }
        let mut a = stack(MAC_A, IP_A);
        if let Inbound::Datagram { payload, .. } = a.handle_frame(ms(0), &f) {
            prop_assert!(payload.end <= f.len());
        }
    }

    #[test]
    fn build_then_receive_round_trip(
        payload in proptest::collection::vec(any::<u8>(), 0..1473),
        sp in 5000u16..5004, dp in 5000u16..5004, offload_rx in any::<bool>(),
    ) {
        let (mut a, mut b) = pair();
        a.arp.learn(IP_B, MAC_B, Learn::Create, ms(0));
        if offload_rx {
            b.cfg.offload.udp_rx = true;
            b.cfg.offload.ipv4_rx = true;
        }
        let mut out = vec![0u8; 1600];
        let Outbound::Frame(n) = a.build_datagram(ms(0), IP_B, sp, dp, &payload, &mut out) else {
            panic!("not a frame")
        };
        prop_assert!((ETH_MIN_FRAME_LEN..=ETH_HEADER_LEN + DEFAULT_MTU).contains(&n));
        match b.handle_frame(ms(0), &out[..n]) {
            Inbound::Datagram { remote_ip, src_port, dst_port, payload: r } => {
                prop_assert_eq!((remote_ip, src_port, dst_port), (IP_A, sp, dp));
                prop_assert_eq!(&out[r], &payload[..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn echo_reply_always_verifies(data in proptest::collection::vec(any::<u8>(), 0..1472)) {
        let mut a = stack(MAC_A, IP_A);
        let reply = reply_of(a.handle_frame(ms(0), &echo_request(&data)));
        let ip = Ipv4Packet::new_checked(&reply[ETH_HEADER_LEN..]).unwrap();
        prop_assert!(Ipv4Repr::parse(&ip, true).is_ok());
        let icmp = IcmpRepr::parse(&IcmpPacket::new_checked(ip.payload()).unwrap()).unwrap();
        prop_assert_eq!(icmp, IcmpRepr::EchoReply { ident: 0xbeef, seq: 3, data: &data });
    }
}

#[test]
fn arp_probe_answered_but_not_learnt() {
    // RFC 5227 probe: sender IP 0.0.0.0, asking for our address.
    let mut a = stack(MAC_A, IP_A);
    let probe = arp_frame(
        MacAddr::BROADCAST,
        ArpRepr {
            op: ArpOp::Request,
            sha: MAC_X,
            spa: Ipv4Addr::UNSPECIFIED,
            tha: MacAddr::ZERO,
            tpa: IP_A,
        },
    );
    let reply = reply_of(a.handle_frame(ms(0), &probe));
    let (e, r) = parse_arp(&reply);
    assert_eq!(
        (e.dst, r.op, r.spa, r.tha),
        (MAC_X, ArpOp::Reply, IP_A, MAC_X)
    );
    assert!(a.arp_cache().is_empty());
}

#[test]
fn slash31_has_no_broadcast() {
    // RFC 3021: both addresses of a /31 are hosts.
    let mut cfg = NetConfig::new(MAC_A, Ipv4Addr::new(10, 9, 9, 0), POOL);
    cfg.netmask = Some(Ipv4Addr::new(255, 255, 255, 254));
    let mut a = NetStack::new(cfg);
    let peer = Ipv4Addr::new(10, 9, 9, 1);
    let mut out = [0u8; 100];
    assert_eq!(
        a.build_datagram(ms(0), peer, 5000, 5001, b"x", &mut out),
        Outbound::Pending
    );
}

/// Two engines of host A (one port, two queues) sharing a neighbour table.
fn engines_sharing() -> (NetStack, NetStack, Arc<SharedNeighbours>) {
    let shared = Arc::new(SharedNeighbours::new(64, Duration::from_secs(60)));
    let cfg = NetConfig::new(MAC_A, IP_A, POOL);
    (
        NetStack::with_shared_neighbours(cfg.clone(), shared.clone()),
        NetStack::with_shared_neighbours(cfg, shared.clone()),
        shared,
    )
}

fn arp_reply(from_mac: MacAddr, from_ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        MAC_A,
        ArpRepr {
            op: ArpOp::Reply,
            sha: from_mac,
            spa: from_ip,
            tha: MAC_A,
            tpa: IP_A,
        },
    )
}

#[test]
fn arp_reply_on_another_engines_queue_completes_the_resolution() {
    let (mut e0, mut e1, _) = engines_sharing();
    let mut b = stack(MAC_B, IP_B);
    let mut out = [0u8; 1600];
    for i in 0..3u8 {
        assert_eq!(
            e0.build_datagram(ms(0), IP_B, 5000, 5001, &[i; 40], &mut out),
            Outbound::Pending
        );
    }
    let frames = drain(&mut e0, ms(0));
    assert_eq!(frames.len(), 1, "one ARP request");
    let reply = reply_of(b.handle_frame(ms(1), &frames[0]));
    // The NIC steers B's reply to engine 1's queue: engine 1 accepts it for engine 0.
    assert_eq!(e1.handle_frame(ms(1), &reply), Inbound::Consumed);
    // Engine 0 releases its queue on its next poll, in order, to B's MAC, without retrying.
    let released = drain(&mut e0, ms(2));
    assert_eq!(released.len(), 3);
    for (i, f) in released.iter().enumerate() {
        assert_eq!(&f[0..6], &MAC_B.0);
        let Inbound::Datagram { payload, .. } = b.handle_frame(ms(3), f) else {
            panic!("not a datagram")
        };
        assert_eq!(f[payload], [i as u8; 40]);
    }
    assert_eq!(e0.stats().arp.requests, 1, "no retransmission needed");
    // Engine 1 sends to B without asking again.
    assert!(matches!(
        e1.build_datagram(ms(4), IP_B, 5002, 5001, b"x", &mut out),
        Outbound::Frame(_)
    ));
    assert_eq!(drain(&mut e1, ms(4)).len(), 0, "engine 1 sent no request");
}

#[test]
fn request_learnt_on_one_engine_serves_the_others() {
    let (mut e0, mut e1, _) = engines_sharing();
    let mut b = stack(MAC_B, IP_B);
    let mut out = [0u8; 1600];
    // B resolves A; its broadcast request lands on engine 0, which answers and learns B.
    assert_eq!(
        b.build_datagram(ms(0), IP_A, 5000, 5001, b"hi", &mut out),
        Outbound::Pending
    );
    let req = drain(&mut b, ms(0)).pop().unwrap();
    let reply = reply_of(e0.handle_frame(ms(0), &req));
    assert_eq!(b.handle_frame(ms(0), &reply), Inbound::Consumed);
    // Engine 1 never saw B's ARP, yet sends to B straight away.
    assert_eq!(
        e1.build_datagram(ms(1), IP_B, 5001, 5000, b"x", &mut out),
        Outbound::Frame(ETH_MIN_FRAME_LEN)
    );
    assert_eq!(&out[0..6], &MAC_B.0);
}

#[test]
fn mac_change_announced_on_one_engine_reaches_the_others() {
    let (mut e0, mut e1, _) = engines_sharing();
    let mut b = stack(MAC_B, IP_B);
    let mut out = [0u8; 1600];
    e0.build_datagram(ms(0), IP_B, 5000, 5001, b"x", &mut out);
    let req = drain(&mut e0, ms(0)).pop().unwrap();
    let reply = reply_of(b.handle_frame(ms(0), &req));
    assert_eq!(e0.handle_frame(ms(0), &reply), Inbound::Consumed);
    drain(&mut e0, ms(0));
    // B fails over to MAC_X and announces it; the announcement lands on engine 1.
    let garp = arp_frame(
        MacAddr::BROADCAST,
        ArpRepr {
            op: ArpOp::Request,
            sha: MAC_X,
            spa: IP_B,
            tha: MacAddr::ZERO,
            tpa: IP_B,
        },
    );
    assert_eq!(e1.handle_frame(ms(5), &garp), Inbound::Consumed);
    drain(&mut e0, ms(6));
    assert_eq!(
        e0.build_datagram(ms(6), IP_B, 5000, 5001, b"x", &mut out),
        Outbound::Frame(ETH_MIN_FRAME_LEN)
    );
    assert_eq!(&out[0..6], &MAC_X.0, "engine 0 follows the new MAC");
}

#[test]
fn unsolicited_reply_is_ignored_by_every_engine() {
    let (mut e0, mut e1, shared) = engines_sharing();
    expect_drop(&mut e1, &arp_reply(MAC_X, IP_X), DropReason::ArpNotForUs);
    let mut out = [0u8; 1600];
    // Nobody adopted X: engine 0 must still ask.
    assert_eq!(
        e0.build_datagram(ms(1), IP_X, 5000, 5001, b"x", &mut out),
        Outbound::Pending
    );
    assert!(shared.get(IP_X, ms(1)).is_none());
    // A wish lapses with the resolution: a late reply after it gave up is unsolicited again.
    let late = ms(0) + e0.arp_cache().resolution_span() + Duration::from_millis(1);
    assert_eq!(
        e1.handle_frame(late, &arp_reply(MAC_X, IP_X)),
        Inbound::Drop(DropReason::ArpNotForUs)
    );
    // While wanted, the same reply is accepted for engine 0.
    assert_eq!(
        e1.handle_frame(ms(2), &arp_reply(MAC_X, IP_X)),
        Inbound::Consumed
    );
    assert_eq!(
        drain(&mut e0, ms(3)).len(),
        2,
        "the ARP request, then the released datagram"
    );
}

#[test]
fn nic_checksum_verdicts_replace_software_verification() {
    let mut a = stack(MAC_A, IP_A);
    let mut f = udp_b_to_a(b"payload");
    // Corrupt the UDP checksum field: software verification would drop the frame.
    let udp_sum = ETH_HEADER_LEN + IPV4_HEADER_LEN + 6;
    f[udp_sum] ^= 0x55;
    let good = RxChecksums {
        ipv4: HwChecksum::Good,
        l4: HwChecksum::Good,
    };
    assert!(matches!(
        a.handle_frame_checked(ms(0), &f, good),
        Inbound::Datagram { .. }
    ));
    expect_drop(&mut a, &f, DropReason::UdpBadChecksum);
    // The NIC's "bad" verdicts drop even frames that software would accept.
    let intact = udp_b_to_a(b"payload");
    for (hw, reason) in [
        (
            RxChecksums {
                ipv4: HwChecksum::Bad,
                l4: HwChecksum::Good,
            },
            DropReason::Ipv4BadChecksum,
        ),
        (
            RxChecksums {
                ipv4: HwChecksum::Good,
                l4: HwChecksum::Bad,
            },
            DropReason::UdpBadChecksum,
        ),
    ] {
        assert_eq!(
            a.handle_frame_checked(ms(0), &intact, hw),
            Inbound::Drop(reason)
        );
    }
    // Unchecked: software verifies as before.
    assert!(matches!(
        a.handle_frame_checked(ms(0), &intact, RxChecksums::default()),
        Inbound::Datagram { .. }
    ));
}

/// The in-place path writes exactly the frame `build_datagram` writes (headers, checksums,
/// padding), whatever was in the buffer before, with and without checksum offload; and it
/// queues a copy while ARP is pending, as `build_datagram` does.
#[test]
fn headers_in_place_match_build_datagram() {
    for offload in [false, true] {
        let mk = || {
            let mut cfg = NetConfig::new(MAC_A, IP_A, POOL);
            cfg.offload.ipv4_tx = offload;
            cfg.offload.udp_tx = offload;
            let mut s = NetStack::new(cfg);
            s.arp.learn(IP_B, MAC_B, Learn::Create, ms(0));
            s
        };
        let (mut copy, mut in_place) = (mk(), mk());
        for len in [0usize, 1, 17, 18, 19, 64, 255, 1000, 1471, 1472] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut expect = vec![0u8; 1600];
            let Outbound::Frame(n) =
                copy.build_datagram(ms(1), IP_B, 5001, 5002, &payload, &mut expect)
            else {
                panic!("build_datagram, {len} bytes")
            };
            // Garbage around the payload: headers and padding must all be written.
            let mut frame = vec![0xa5u8; n.max(DATAGRAM_HEADERS + len)];
            frame[DATAGRAM_HEADERS..DATAGRAM_HEADERS + len].copy_from_slice(&payload);
            assert_eq!(
                in_place.build_headers_in_place(ms(1), IP_B, 5001, 5002, &mut frame, len),
                Outbound::Frame(n),
                "{len} bytes"
            );
            assert_eq!(n, (DATAGRAM_HEADERS + len).max(ETH_MIN_FRAME_LEN));
            assert_eq!(&frame[..n], &expect[..n], "{len} bytes, offload {offload}");
            if !offload {
                // The receiver's software checksums accept it.
                let mut b = stack(MAC_B, IP_B);
                match b.handle_frame(ms(1), &frame[..n]) {
                    Inbound::Datagram { payload: r, .. } => assert_eq!(&frame[r], &payload[..]),
                    other => panic!("{len} bytes: {other:?}"),
                }
            }
        }
        assert_eq!(copy.stats(), in_place.stats());
    }
    // Errors are those of build_datagram, in the same order.
    let mut a = stack(MAC_A, IP_A);
    let mut f = vec![0u8; 2000];
    assert_eq!(
        a.build_headers_in_place(ms(0), IP_B, 4999, 5002, &mut f, 10),
        Outbound::Drop(DropReason::SrcPortNotOurs)
    );
    assert_eq!(
        a.build_headers_in_place(ms(0), IP_B, 5000, 5002, &mut f, 1473),
        Outbound::Drop(DropReason::TooLarge)
    );
    assert_eq!(
        a.build_headers_in_place(ms(0), IP_B, 5000, 5002, &mut f[..59], 10),
        Outbound::Drop(DropReason::BufferTooSmall)
    );
    // Unresolved: a copy is queued and released with the resolved MAC, padded.
    let mut b = stack(MAC_B, IP_B);
    f[DATAGRAM_HEADERS..DATAGRAM_HEADERS + 5].copy_from_slice(b"early");
    assert_eq!(
        a.build_headers_in_place(ms(0), IP_B, 5000, 5002, &mut f, 5),
        Outbound::Pending
    );
    f.fill(0xee); // the queue holds its own copy
    let released = resolve_a_to_b(&mut a, &mut b, ms(1));
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].len(), ETH_MIN_FRAME_LEN);
    match b.handle_frame(ms(2), &released[0]) {
        Inbound::Datagram { payload, .. } => assert_eq!(&released[0][payload], b"early"),
        other => panic!("{other:?}"),
    }
}
