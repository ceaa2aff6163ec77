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

    // Clean shutdown: queues (and their mbufs) first, then the port, the pool and EAL.
    drop(queues);
    port.close().expect("stop and close");
    assert_eq!(pool.in_use(), 0, "every mbuf went back to the pool");
    drop(pool);
    drop(eal);
}
