//! Two in-process sidecars on loopback (kernel UDP) whose datagram limits and UDP offloads
//! differ: messages of every size still echo byte-identical and in order, and each flow keeps to
//! the smaller datagram limit of its two ends (PROTOCOL.md §6.4).

use std::net::Ipv4Addr;
use std::time::Duration;

use machnet::{Event, Machnet};
use machnet_sidecar::config::{SidecarConfig, UdpOffload};
use machnet_sidecar::testing::{pattern, LoopbackSidecars};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 6100;
const WAIT: Duration = Duration::from_secs(20);

/// (MTU or interface default, offloads) of sidecar A (server) and sidecar B (client).
type Setup = [(Option<u16>, UdpOffload); 2];

/// Echoes every size through A and B; returns the datagram payload bytes per packet the client
/// sidecar's engine sent, on average, and the largest limit either side could use.
fn echo_every_size(setup: Setup) -> f64 {
    let sidecars = LoopbackSidecars::start_with("dgram", &[A, B], 1, |i, c: &mut SidecarConfig| {
        c.mtu = setup[i].0;
        c.udp_offload = setup[i].1;
    });
    let server = Machnet::attach_at(sidecars.socket(0)).expect("attach A");
    let mut sch = server.open_channel(None).expect("server channel");
    sch.listen(PORT).expect("listen");
    let echo = std::thread::spawn(move || {
        let _m = server;
        loop {
            match sch.next_event(Some(WAIT)) {
                Ok(Some(Event::Message { flow, data })) => sch.send(&flow, &data).expect("echo"),
                Ok(Some(Event::PeerClosed { flow })) => {
                    let _ = sch.close(&flow);
                }
                Ok(Some(Event::Closed { .. })) => return,
                Ok(_) => {}
                Err(e) => panic!("server: {e}"),
            }
        }
    });
    let client = Machnet::attach_at(sidecars.socket(1)).expect("attach B");
    let mut ch = client.open_channel(None).expect("client channel");
    let flow = ch.connect(A, PORT).expect("connect");
    let sizes = [
        1usize,
        1400,
        1472,
        1473,
        8972,
        9000,
        65_443,
        65_536,
        1 << 20,
        3,
        8 << 20,
    ];
    // A window of 3 messages in flight: datagrams of several messages share batches.
    let mut sent = std::collections::VecDeque::new();
    for (i, &len) in sizes.iter().cycle().take(3 * sizes.len()).enumerate() {
        let msg = pattern(i as u64, len);
        ch.send(&flow, &msg).expect("send");
        sent.push_back(msg);
        if sent.len() == 3 {
            let (from, got) = ch.recv_timeout(WAIT).expect("recv").expect("echo in time");
            assert_eq!(from, flow);
            let want = sent.pop_front().expect("outstanding");
            assert!(
                got == want,
                "{setup:?}: echo of {} bytes altered or out of order",
                want.len()
            );
        }
    }
    while let Some(want) = sent.pop_front() {
        let (_, got) = ch.recv_timeout(WAIT).expect("recv").expect("echo in time");
        assert!(
            got == want,
            "{setup:?}: echo of {} bytes altered",
            want.len()
        );
    }
    ch.close(&flow).expect("close");
    let _ = ch.next_event(Some(Duration::from_secs(2)));
    echo.join().expect("server thread");
    let mut sidecars = sidecars;
    let b = sidecars.take(1).expect("sidecar B");
    let r = &b.reports()[0];
    assert_eq!(
        r.core.drops_for(machnet_core::DropReason::Oversize),
        0,
        "{setup:?}"
    );
    let avg = r.core.bytes_sent as f64 / r.core.packets_sent as f64;
    b.shutdown();
    avg
}

#[test]
fn a_peer_with_a_smaller_limit_interoperates_and_sets_the_flows_datagram_size() {
    // A's MTU 1500 (limit 1472), B's loopback default (65,507): every datagram B sends fits 1472.
    let avg = echo_every_size([(Some(1500), UdpOffload::On), (None, UdpOffload::On)]);
    assert!(
        avg <= 1472.0,
        "client sent {avg:.0} bytes per datagram on average"
    );
    // Both at loopback's limit: large messages travel in datagrams far above 1472.
    let avg = echo_every_size([(None, UdpOffload::On), (None, UdpOffload::On)]);
    assert!(
        avg > 9000.0,
        "client sent only {avg:.0} bytes per datagram on average"
    );
}

#[test]
fn offloads_on_and_off_deliver_byte_identical_streams() {
    for offload in [UdpOffload::Off, UdpOffload::GsoOnly, UdpOffload::GroOnly] {
        // Small datagrams make GSO batches (and GRO coalescing) likely on the sender that has it.
        echo_every_size([(Some(1500), offload), (Some(1500), UdpOffload::On)]);
        echo_every_size([(Some(9000), UdpOffload::On), (Some(1500), offload)]);
    }
}
