use super::*;

const IP1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const IP3: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const M1: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const M2: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

fn ms(n: u64) -> Instant {
    Instant::from_nanos(n * 1_000_000)
}

fn cache() -> ArpCache<u32> {
    ArpCache::new(ArpConfig::default())
}

fn drain_requests(c: &mut ArpCache<u32>) -> Vec<Ipv4Addr> {
    std::iter::from_fn(|| c.poll_request()).collect()
}

#[test]
fn resolve_releases_queue_in_order() {
    let mut c = cache();
    assert_eq!(c.lookup(IP1, ms(0)), None);
    for i in 0..5 {
        c.enqueue(IP1, i, ms(i as u64)).unwrap();
    }
    // One request, not one per datagram.
    assert_eq!(drain_requests(&mut c), vec![IP1]);
    assert!(c.is_pending(IP1));
    assert_eq!(
        c.learn(IP1, M1, Learn::UpdateOnly, ms(10)),
        Learnt::Resolved
    );
    let out: Vec<_> = std::iter::from_fn(|| c.poll_released()).collect();
    assert_eq!(out, (0..5).map(|i| (M1, i)).collect::<Vec<_>>());
    assert_eq!(c.lookup(IP1, ms(11)), Some(M1));
    assert_eq!(c.stats().resolved, 1);
    assert_eq!(c.stats().requests, 1);
}

#[test]
fn queue_is_bounded() {
    let mut c = cache();
    for i in 0..16 {
        c.enqueue(IP1, i, ms(0)).unwrap();
    }
    assert_eq!(c.enqueue(IP1, 99, ms(0)), Err(99));
    assert_eq!(c.stats().queue_full_drops, 1);
    // Another address has its own queue.
    c.enqueue(IP2, 0, ms(0)).unwrap();
}

#[test]
fn retries_with_backoff_then_gives_up() {
    let mut c = cache(); // 250 ms initial, 4 requests
    c.enqueue(IP1, 1, ms(0)).unwrap();
    c.enqueue(IP1, 2, ms(0)).unwrap();
    assert_eq!(drain_requests(&mut c), vec![IP1]);
    let mut sent_at = vec![0u64];
    let mut t = 0;
    while let Some(d) = c.poll_timeout() {
        t = d.as_nanos() / 1_000_000;
        c.handle_timeout(d);
        if !drain_requests(&mut c).is_empty() {
            sent_at.push(t);
        }
        if !c.is_pending(IP1) {
            break;
        }
        // Nothing happens just before the deadline.
        assert!(c.poll_timeout().unwrap() > d);
    }
    // Requests at 0, 250, 750, 1750; give up at 3750.
    assert_eq!(sent_at, vec![0, 250, 750, 1750]);
    assert_eq!(t, 3750);
    assert!(!c.is_pending(IP1));
    let s = c.stats();
    assert_eq!(
        (s.requests, s.retransmits, s.failures, s.failed_drops),
        (4, 3, 1, 2)
    );
    assert_eq!(c.poll_released(), None);
    // A later datagram starts afresh.
    c.enqueue(IP1, 3, ms(5000)).unwrap();
    assert_eq!(drain_requests(&mut c), vec![IP1]);
}

#[test]
fn early_timeout_call_does_nothing() {
    let mut c = cache();
    c.enqueue(IP1, 1, ms(0)).unwrap();
    drain_requests(&mut c);
    c.handle_timeout(ms(100));
    assert!(drain_requests(&mut c).is_empty());
    assert_eq!(c.poll_timeout(), Some(ms(250)));
}

#[test]
fn entries_age_out_and_traffic_refreshes() {
    let mut c = cache();
    assert_eq!(c.learn(IP1, M1, Learn::Create, ms(0)), Learnt::Created);
    assert_eq!(c.learn(IP2, M2, Learn::Create, ms(0)), Learnt::Created);
    // Traffic from IP1 via M1 at 50 s refreshes; a different MAC does not.
    assert!(c.refresh(IP1, M1, ms(50_000)));
    assert!(!c.refresh(IP2, M1, ms(50_000)));
    assert!(!c.refresh(IP3, M1, ms(50_000)));
    assert_eq!(c.lookup(IP1, ms(59_999)), Some(M1));
    assert_eq!(c.lookup(IP2, ms(59_999)), Some(M2));
    assert_eq!(c.lookup(IP2, ms(60_000)), None, "expired at the timeout");
    assert_eq!(c.lookup(IP1, ms(109_999)), Some(M1));
    assert_eq!(c.lookup(IP1, ms(110_000)), None);
    assert_eq!(c.stats().expired, 2);
    assert!(c.is_empty());
}

#[test]
fn sweep_removes_expired_entries() {
    let mut c = cache();
    c.learn(IP1, M1, Learn::Create, ms(0));
    assert_eq!(c.poll_timeout(), Some(ms(15_000)));
    c.handle_timeout(ms(15_000));
    assert_eq!(c.len(), 1);
    let mut now = ms(15_000);
    while let Some(t) = c.poll_timeout() {
        now = t;
        c.handle_timeout(t);
    }
    assert!(c.is_empty());
    assert_eq!(now, ms(60_000));
    assert_eq!(c.stats().expired, 1);
}

#[test]
fn bounded_size_evicts_oldest() {
    let mut c: ArpCache<u32> = ArpCache::new(ArpConfig {
        max_entries: 3,
        ..ArpConfig::default()
    });
    for i in 0..3u8 {
        let ip = Ipv4Addr::new(10, 0, 1, i + 1);
        c.learn(
            ip,
            MacAddr([2, 0, 0, 0, 1, i]),
            Learn::Create,
            ms(u64::from(i)),
        );
    }
    // Refresh the oldest so the second becomes the least recently confirmed.
    c.learn(
        Ipv4Addr::new(10, 0, 1, 1),
        MacAddr([2, 0, 0, 0, 1, 0]),
        Learn::UpdateOnly,
        ms(10),
    );
    c.learn(IP1, M1, Learn::Create, ms(20));
    assert_eq!(c.len(), 3);
    assert_eq!(c.lookup(Ipv4Addr::new(10, 0, 1, 2), ms(21)), None);
    assert!(c.lookup(Ipv4Addr::new(10, 0, 1, 1), ms(21)).is_some());
    assert_eq!(c.stats().evicted, 1);
}

#[test]
fn eviction_of_pending_drops_its_queue() {
    let mut c: ArpCache<u32> = ArpCache::new(ArpConfig {
        max_entries: 2,
        ..ArpConfig::default()
    });
    c.enqueue(IP1, 1, ms(0)).unwrap();
    c.enqueue(IP1, 2, ms(0)).unwrap();
    c.enqueue(IP2, 3, ms(1)).unwrap();
    c.enqueue(IP3, 4, ms(2)).unwrap();
    assert!(!c.is_pending(IP1));
    assert!(c.is_pending(IP2) && c.is_pending(IP3));
    assert_eq!(c.stats().evicted_drops, 2);
}

#[test]
fn poisoning_policy() {
    let mut c = cache();
    // Unsolicited reply / gratuitous ARP for an unknown address: ignored.
    assert_eq!(c.learn(IP1, M1, Learn::UpdateOnly, ms(0)), Learnt::Ignored);
    assert_eq!(c.lookup(IP1, ms(0)), None);
    assert_eq!(c.stats().ignored, 1);
    // For an address being resolved: accepted (that is the answer we wait for).
    c.enqueue(IP2, 7, ms(0)).unwrap();
    assert_eq!(c.learn(IP2, M2, Learn::UpdateOnly, ms(1)), Learnt::Resolved);
    // For a known address: accepted, including a MAC change (failover announcement).
    assert_eq!(c.learn(IP2, M1, Learn::UpdateOnly, ms(2)), Learnt::Updated);
    assert_eq!(c.lookup(IP2, ms(3)), Some(M1));
    assert_eq!(c.stats().mac_changes, 1);
    // Bad sender addresses are never learnt, whatever the policy.
    for (ip, mac) in [
        (Ipv4Addr::UNSPECIFIED, M1),
        (Ipv4Addr::BROADCAST, M1),
        (Ipv4Addr::new(224, 0, 0, 1), M1),
        (IP3, MacAddr::BROADCAST),
        (IP3, MacAddr::ZERO),
        (IP3, MacAddr([1, 0, 0x5e, 0, 0, 1])),
    ] {
        assert_eq!(
            c.learn(ip, mac, Learn::Create, ms(4)),
            Learnt::Ignored,
            "{ip} {mac}"
        );
    }
}

#[test]
fn enqueue_over_stale_entry_restarts_resolution() {
    let mut c = cache();
    c.learn(IP1, M1, Learn::Create, ms(0));
    assert_eq!(c.lookup(IP1, ms(60_000)), None);
    c.enqueue(IP1, 1, ms(60_000)).unwrap();
    assert_eq!(c.len(), 1);
    assert!(c.is_pending(IP1));
}

#[test]
fn use_near_expiry_reconfirms_without_stalling() {
    let mut c = cache(); // timeout 60 s, refresh_before 15 s
    c.learn(IP1, M1, Learn::Create, ms(0));
    assert_eq!(c.lookup(IP1, ms(44_999)), Some(M1));
    assert!(drain_requests(&mut c).is_empty());
    // From 45 s on, a hit still answers and asks once.
    assert_eq!(c.lookup(IP1, ms(45_000)), Some(M1));
    assert_eq!(c.lookup(IP1, ms(46_000)), Some(M1));
    assert_eq!(drain_requests(&mut c), vec![IP1]);
    assert_eq!(c.stats().refreshes, 1);
    // The reply (an update of a known entry) extends it.
    assert_eq!(
        c.learn(IP1, M1, Learn::UpdateOnly, ms(46_500)),
        Learnt::Updated
    );
    assert_eq!(c.lookup(IP1, ms(100_000)), Some(M1));
    // ... and re-arms the refresh.
    assert_eq!(drain_requests(&mut c), vec![IP1]);
    // Disabled with zero.
    let mut d: ArpCache<u32> = ArpCache::new(ArpConfig {
        refresh_before: Duration::ZERO,
        ..ArpConfig::default()
    });
    d.learn(IP1, M1, Learn::Create, ms(0));
    assert_eq!(d.lookup(IP1, ms(59_999)), Some(M1));
    assert_eq!(d.poll_request(), None);
}
