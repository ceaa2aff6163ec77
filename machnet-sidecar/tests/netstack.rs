//! Two `NetStack`s joined by a simulated Ethernet segment, through the public API only.

use std::net::Ipv4Addr;

use machnet_core::{Instant, PortPool};
use machnet_sidecar::netstack::wire::{DropReason, MacAddr};
use machnet_sidecar::netstack::{Inbound, NetConfig, NetStack, Outbound};

const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xa]);
const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xb]);
const IP_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const POOL: PortPool = PortPool {
    base: 31000,
    count: 8,
};

/// Delivers `frame` to `to`; returns the datagram payload it yielded, if any, and pushes any
/// reply frame (ARP reply, echo reply) onto `replies`, to go back to the sender.
fn deliver(
    to: &mut NetStack,
    now: Instant,
    frame: &[u8],
    replies: &mut Vec<Vec<u8>>,
) -> Option<Vec<u8>> {
    match to.handle_frame(now, frame) {
        Inbound::Datagram { payload, .. } => Some(frame[payload].to_vec()),
        Inbound::Reply(r) => {
            replies.push(r.to_vec());
            None
        }
        Inbound::Consumed | Inbound::Drop(_) => None,
    }
}

#[test]
fn netstack_lost_arp_request_is_retransmitted_and_queue_released_in_order() {
    let mut a = NetStack::new(NetConfig::new(MAC_A, IP_A, POOL));
    let mut b = NetStack::new(NetConfig::new(MAC_B, IP_B, POOL));
    let mut now = Instant::ZERO;
    let mut buf = vec![0u8; 2048];
    for i in 0..3u8 {
        let out = a.build_datagram(now, IP_B, 31000, 31001, &[i; 64], &mut buf);
        assert_eq!(out, Outbound::Pending);
    }
    // The first ARP request is lost on the wire.
    assert!(a.poll_transmit(now, &mut buf).is_some());
    assert!(a.poll_transmit(now, &mut buf).is_none());

    let mut received = Vec::new();
    for _ in 0..10 {
        let Some(t) = a.poll_timeout() else { break };
        now = t;
        a.handle_timeout(now);
        let mut to_a = Vec::new();
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            if let Some(p) = deliver(&mut b, now, &buf[..n], &mut to_a) {
                received.push(p);
            }
        }
        for f in to_a {
            assert!(deliver(&mut a, now, &f, &mut Vec::new()).is_none());
        }
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            if let Some(p) = deliver(&mut b, now, &buf[..n], &mut Vec::new()) {
                received.push(p);
            }
        }
        if received.len() == 3 {
            break;
        }
    }
    assert_eq!(received, (0..3u8).map(|i| vec![i; 64]).collect::<Vec<_>>());
    assert_eq!(
        now,
        Instant::from_nanos(250_000_000),
        "first retransmission at 250 ms"
    );
    let s = a.stats();
    assert_eq!(s.arp.retransmits, 1);
    assert_eq!(s.tx_released, 3);
    assert_eq!(s.dropped(DropReason::ArpFailed), 0);

    // Both directions now go straight out.
    for (from, to, ip) in [(&mut a, IP_B, 1), (&mut b, IP_A, 2)] {
        let out = from.build_datagram(now, to, 31000 + ip, 31000, b"direct", &mut buf);
        assert!(matches!(out, Outbound::Frame(_)), "{out:?}");
    }
}
