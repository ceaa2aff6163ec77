//! DPDK (feature `dpdk`): frames sent on a net_ring port come back intact on the same queue.
//! EAL initialises once per process, hence one test per file.

#[cfg(feature = "dpdk")]
mod dpdk_common;

#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_ring_loopback() {
    eprintln!(
        "skipped: built without the `dpdk` feature (cargo test -p machnet-sidecar --features dpdk)"
    );
}

#[cfg(feature = "dpdk")]
#[test]
fn dpdk_ring_loopback() {
    use machnet_sidecar::datapath::dpdk::{Mempool, Port, PortConfig, DEFAULT_BUF_SIZE};

    let Some(eal) = dpdk_common::init_eal(&["net_ring0"]) else {
        return;
    };
    eprintln!("{}", machnet_sidecar::datapath::dpdk::version());
    let id = eal.find_port("net_ring0").expect("net_ring0 exists");
    assert_eq!(
        eal.find_port(&id.to_string()).unwrap(),
        id,
        "lookup by index"
    );
    let pool = Mempool::new(&eal, None, 2047, 32, DEFAULT_BUF_SIZE).expect("mempool");
    let mut port = Port::open(&eal, id).expect("open port");
    assert_eq!(port.info().driver, "net_ring");
    let setup = port
        .configure(&PortConfig::new(2), &pool)
        .expect("configure 2 queues");
    assert_eq!(setup.queues, 2);
    assert!(!setup.rss, "net_ring has no RSS");
    port.start().expect("start");
    let mut queues = port.take_queues().expect("queues");
    assert_eq!(queues.len(), 2);
    assert!(port.take_queues().is_err(), "queues are handed out once");

    // A burst of frames of different sizes and contents on each queue.
    let frame = |q: usize, i: usize| -> Vec<u8> {
        (0..60 + i * 37)
            .map(|b| (b * 7 + i * 13 + q * 101) as u8)
            .collect()
    };
    const N: usize = 40;
    for (q, (_, tx)) in queues.iter_mut().enumerate() {
        let mut pkts: Vec<_> = (0..N)
            .map(|i| pool.alloc_from(&frame(q, i)).expect("mbuf"))
            .collect();
        let mut sent = 0;
        for _ in 0..100 {
            sent += tx.burst(&mut pkts);
            if pkts.is_empty() {
                break;
            }
        }
        assert_eq!(sent, N, "queue {q}: all frames sent");
    }
    let mut kept = Vec::new();
    for (q, (rx, _)) in queues.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..100 {
            rx.burst(&mut got, 32);
            if got.len() >= N {
                break;
            }
        }
        assert_eq!(got.len(), N, "queue {q}: all frames received");
        for (i, m) in got.iter().enumerate() {
            assert_eq!(
                m.data(),
                &frame(q, i)[..],
                "queue {q} frame {i} intact and in order"
            );
            assert_eq!(m.pkt_len(), m.len());
            assert_eq!(m.segments(), 1);
        }
        // Writable, and trimming the front works.
        let m = &mut got[0];
        m.data_mut()[0] = 0xAB;
        assert!(m.adj(14));
        assert_eq!(m.len(), frame(q, 0).len() - 14);
        kept.append(&mut got);
    }
    let in_flight = pool.in_use();
    assert!(
        in_flight >= 2 * N as u32,
        "received mbufs are ours until dropped: {in_flight}"
    );
    drop(kept);
    assert_eq!(pool.in_use(), 0, "dropping the mbufs freed them");
    let stats = port.stats().expect("stats");
    assert_eq!(stats.tx_packets, 2 * N as u64);
    assert_eq!(stats.rx_packets, 2 * N as u64);

    // DpdkDatapath's zero-copy send on queue 1, with a pool of its own: pool exhaustion (the
    // closure still writes, into the scratch buffer; the datagram is dropped and counted), then
    // a datagram to an unresolved neighbour (queued as a copy; the ARP request loops back and
    // is ignored), and no mbuf leaks.
    {
        use machnet_core::PortPool;
        use machnet_sidecar::datapath::dpdk::DpdkDatapath;
        use machnet_sidecar::datapath::{Datapath, Outgoing, SendError, TxMeta};
        use machnet_sidecar::netstack::neighbours::SharedNeighbours;
        use machnet_sidecar::netstack::wire::MacAddr;
        use machnet_sidecar::netstack::NetConfig;
        use std::net::Ipv4Addr;
        use std::sync::Arc;

        let (rx, tx) = queues.pop().expect("queue 1");
        let dp_pool = Mempool::new(&eal, Some("dp_tx"), 63, 0, DEFAULT_BUF_SIZE).expect("pool");
        let net = NetConfig::new(
            MacAddr([2, 0, 0, 0, 0, 1]),
            Ipv4Addr::new(10, 0, 0, 1),
            PortPool {
                base: 5000,
                count: 4,
            },
        );
        let neighbours = Arc::new(SharedNeighbours::new(net.arp.max_entries, net.arp.timeout));
        let mut dp = DpdkDatapath::new(rx, tx, dp_pool.clone(), net, false, neighbours);
        let peer = Ipv4Addr::new(10, 0, 0, 2);
        let held: Vec<_> = std::iter::from_fn(|| dp_pool.alloc()).collect();
        assert_eq!(dp_pool.available(), 0);
        let mut written = 0;
        let r = dp.send_with(&mut |buf| {
            buf[..100].fill(9);
            written = buf.len();
            Some(TxMeta {
                remote_ip: peer,
                src_port: 5000,
                dst_port: 6000,
                len: 100,
            })
        });
        assert!(matches!(r, Err(SendError::Full)), "{r:?}");
        assert_eq!(
            written,
            dp.max_datagram(),
            "the closure got a full-size buffer"
        );
        assert_eq!(dp.stats().tx_dropped, 1);
        drop(held);
        let payload = [7u8; 300];
        dp.send(Outgoing {
            remote_ip: peer,
            src_port: 5000,
            dst_port: 6000,
            payload: &payload,
        })
        .expect("queued while ARP resolves");
        dp.flush();
        let mut delivered = 0;
        for _ in 0..10 {
            dp.recv(32, &mut |_| delivered += 1).expect("recv");
        }
        assert_eq!(delivered, 0);
        let st = dp.stats();
        assert_eq!((st.tx_packets, st.tx_dropped, st.tx_errors), (1, 1, 0));
        assert!(dp.net_stats().arp_requests >= 1, "an ARP request went out");
        drop(dp);
        assert_eq!(dp_pool.in_use(), 0, "no mbuf leaked");
    }

    // Clean shutdown: queues (and their mbufs) first, then the port, the pool and EAL.
    drop(queues);
    port.close().expect("stop and close");
    assert_eq!(pool.in_use(), 0, "every mbuf went back to the pool");
    drop(pool);
    drop(eal);
}
