//! DPDK (feature `dpdk`): port configuration with 2 queues and RSS on net_null (which exposes
//! its RSS key and redirection table), capabilities, and 2 queues on net_ring.
//! EAL initialises once per process, hence one test per file.

#[cfg(feature = "dpdk")]
mod dpdk_common;

#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_port_configuration() {
    eprintln!(
        "skipped: built without the `dpdk` feature (cargo test -p machnet-sidecar --features dpdk)"
    );
}

#[cfg(feature = "dpdk")]
#[test]
fn dpdk_port_configuration() {
    use machnet_sidecar::datapath::dpdk::{Mempool, Port, PortConfig, RssConfig, DEFAULT_BUF_SIZE};

    let Some(eal) = dpdk_common::init_eal(&["net_null0", "net_ring0"]) else {
        return;
    };
    assert_eq!(eal.port_count(), 2);
    let pool = Mempool::new(&eal, Some("ports_test"), 4095, 32, DEFAULT_BUF_SIZE).expect("mempool");
    assert_eq!(pool.name(), "ports_test");

    // net_null: RSS with a key and a 128-entry table.
    let id = eal.find_port("net_null0").expect("net_null0");
    let mut null = Port::open(&eal, id).expect("open net_null0");
    let info = null.info().clone();
    eprintln!("net_null0: {info:?}");
    assert!(info.supports_rss());
    assert!(info.reta_size > 0);
    let mut cfg = PortConfig::new(2);
    cfg.mtu = Some(1500);
    let setup = null.configure(&cfg, &pool).expect("configure net_null0");
    eprintln!("net_null0 setup: {setup:?}");
    assert_eq!(setup.queues, 2);
    assert!(setup.rss, "RSS on with 2 queues");
    assert_eq!(setup.mtu, 1500);
    assert!(setup.descriptors.0 > 0 && setup.descriptors.1 > 0);
    null.start().expect("start net_null0");
    let rss = null
        .rss_config()
        .expect("rss query")
        .expect("net_null exposes RSS");
    // net_null reports no key size but has the usual 40-byte key.
    assert_eq!(rss.key.len(), 40);
    eprintln!("net_null0 RSS key {:02x?}", rss.key);
    assert_eq!(
        rss.key[..4],
        [0x6d, 0x5a, 0x56, 0xda],
        "the usual Microsoft Toeplitz key"
    );
    assert!(rss.key.iter().any(|&b| b != 0), "a real key");
    assert_eq!(rss.reta.len(), usize::from(info.reta_size));
    // start() programmed a round-robin table over the 2 queues.
    assert!(
        rss.reta
            .iter()
            .enumerate()
            .all(|(i, &q)| q == (i % 2) as u16),
        "{:?}",
        rss.reta
    );
    let table = rss.to_rss_table();
    assert_eq!(table.queues(), 2);
    // UDP ports are hashed, so the engines can trust the table — for 2 queues, not for 1.
    assert_eq!(rss.udp_table(2), Some(table.clone()));
    assert_eq!(rss.udp_table(1), None, "table points beyond one queue");
    let l3_only = RssConfig {
        hash_functions: rss.hash_functions & !u64::from(dpdk_sys::RTE_ETH_RSS_NONFRAG_IPV4_UDP),
        ..rss.clone()
    };
    assert_eq!(
        l3_only.udp_table(2),
        None,
        "ports not hashed: unpredictable"
    );
    // A custom table reads back.
    let custom: Vec<u16> = (0..info.reta_size).map(|i| u16::from(i % 3 == 0)).collect();
    null.set_reta(&custom).expect("reta update");
    assert_eq!(null.reta().unwrap().unwrap(), custom);
    // The null PMD produces packets on every RX burst and swallows TX.
    let mut queues = null.take_queues().expect("queues");
    let mut got = Vec::new();
    let n = queues[1].0.burst(&mut got, 8);
    assert!(n > 0 && got.iter().all(|m| !m.data().is_empty()));
    let sent = queues[0].1.burst(&mut got);
    assert_eq!(sent, n);
    assert!(got.is_empty());
    drop(queues);
    null.close().expect("close net_null0");

    // net_ring: two queues, no RSS, and the configuration guards.
    let id = eal.find_port("net_ring0").expect("net_ring0");
    let mut ring = Port::open(&eal, id).expect("open net_ring0");
    let info = ring.info().clone();
    eprintln!("net_ring0: {info:?}");
    let too_many = PortConfig::new(info.max_rx_queues.saturating_add(1));
    let e = ring.configure(&too_many, &pool).unwrap_err();
    assert!(e.to_string().contains("queues"), "{e}");
    assert!(ring.start().is_err(), "start before configure is refused");
    let setup = ring
        .configure(&PortConfig::new(2), &pool)
        .expect("configure net_ring0");
    assert!(!setup.rss);
    assert_eq!(ring.rss_config().expect("rss query"), None);
    ring.start().expect("start net_ring0");
    assert!(
        ring.configure(&PortConfig::new(1), &pool).is_err(),
        "configure after start"
    );
    drop(ring);
    assert_eq!(pool.in_use(), 0);
}
