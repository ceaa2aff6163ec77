//! An off-path attacker against the two-host pair (PROTOCOL.md §4.1, §5.1, §5.2, §8.3, §11): it
//! knows addresses, ports, sequence numbers and even whole captured packets, but not the flow
//! tokens. Nothing it forges may be delivered, reset or close a flow, or make an engine send more
//! than three times what it received to an address that has not completed a handshake.

mod common;

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use machnet_core::wire::{self, flags, Packet, PacketType, Repr};
use machnet_core::{
    CloseReason, Datagram, DropReason, Engine, EngineConfig, Event, Instant, Transmit, Unreachable,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Forged packets of each kind per test.
const FORGERIES: u64 = 2_000;

/// Every datagram the pair puts on the wire, a → b and b → a, in order.
type Capture = Rc<RefCell<Vec<(bool, Vec<u8>)>>>;

fn capturing(p: &mut Pair) -> Capture {
    let cap: Capture = Rc::default();
    let c = cap.clone();
    p.rewrite = Box::new(move |to_b, bytes| c.borrow_mut().push((to_b, bytes.clone())));
    cap
}

fn parse(bytes: &[u8]) -> (Repr, Vec<u8>) {
    let p = Packet::new_checked(bytes).expect("captured packets are valid");
    (Repr::parse(&p).unwrap(), p.payload().to_vec())
}

fn emit(repr: &Repr, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf, payload, true);
    buf
}

fn inject(e: &mut Engine, now: Instant, from: Ipv4Addr, bytes: &[u8]) {
    e.handle_datagram(
        now,
        Datagram {
            remote_ip: from,
            src_port: 31_600,
            dst_port: 31_601,
            payload: bytes,
        },
    );
}

/// The last captured packet of type `ty` going a → b (`to_b`) or b → a.
fn last_of(cap: &Capture, to_b: bool, ty: PacketType) -> (Repr, Vec<u8>) {
    cap.borrow()
        .iter()
        .rev()
        .filter(|(dir, _)| *dir == to_b)
        .map(|(_, b)| parse(b))
        .find(|(r, _)| r.packet_type == ty)
        .unwrap_or_else(|| panic!("no {ty:?} captured"))
}

/// A token that is not `real`.
fn guess(rng: &mut ChaCha8Rng, real: u64) -> u64 {
    loop {
        let t = rng.random();
        if t != real {
            return t;
        }
    }
}

/// Sends `msg` a → b and returns what b received (everything readable on its flow).
fn exchange(
    p: &mut Pair,
    fa: machnet_core::FlowId,
    fb: machnet_core::FlowId,
    msg: Bytes,
) -> Vec<Bytes> {
    p.a.send(p.now, fa, msg).unwrap();
    let limit = p.now + Duration::from_millis(50);
    p.run_until(limit, |_| false);
    let mut got = Vec::new();
    while let Some(m) = p.b.recv(fb).unwrap() {
        got.push(m);
    }
    got
}

#[test]
fn forged_data_rst_and_fin_without_the_token_touch_nothing() {
    let seed = 0xA77AC4;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = Pair::new(|_| {});
    let cap = capturing(&mut p);
    let (fa, fb) = p.connect();
    let first = message(1, 300);
    assert_eq!(exchange(&mut p, fa, fb, first.clone()), vec![first]);

    // The attacker saw the last DATA a → b: it forges the next one (right ports, the exact next
    // sequence number, a complete message), a FIN and an RST, each with a guessed token.
    let (data, _) = last_of(&cap, true, PacketType::Data);
    let next = Repr {
        seq: data.seq.wrapping_add(1),
        flags: flags::FIRST | flags::LAST,
        msg_len: 5,
        payload_len: 5,
        handshake: None,
        ..data
    };
    let fin = Repr {
        packet_type: PacketType::Fin,
        flags: 0,
        msg_len: 0,
        payload_len: 0,
        ..next
    };
    let rst = Repr {
        packet_type: PacketType::Rst,
        ack: 0,
        window: 0,
        ts_val: 0,
        ts_ecr: 0,
        ..fin
    };
    let before = p.b.stats().drops_for(DropReason::BadToken);
    for _ in 0..FORGERIES {
        let real = data.token;
        for (r, payload) in [(next, &b"evil!"[..]), (fin, &[][..]), (rst, &[][..])] {
            let forged = Repr {
                token: guess(&mut rng, real),
                ..r
            };
            inject(&mut p.b, p.now, A, &emit(&forged, payload));
        }
    }
    assert_eq!(
        p.b.stats().drops_for(DropReason::BadToken) - before,
        3 * FORGERIES,
        "every forgery is dropped for its token (seed {seed:#x})"
    );
    assert_eq!(p.b.recv(fb).unwrap(), None, "nothing forged is delivered");
    while let Some(e) = p.b.poll_event() {
        assert!(
            !matches!(e, Event::Closed { .. } | Event::PeerClosed { .. }),
            "the flow lives: {e:?}"
        );
    }
    // The real stream goes on: the next message arrives exactly once, byte for byte.
    let second = message(2, 5);
    assert_eq!(exchange(&mut p, fa, fb, second.clone()), vec![second]);

    // The same against the client: forged packets "from" b.
    let (ack, _) = last_of(&cap, false, PacketType::Ack);
    let rst_a = Repr {
        packet_type: PacketType::Rst,
        sack: Default::default(),
        window: 0,
        ts_val: 0,
        ts_ecr: 0,
        ..ack
    };
    for _ in 0..FORGERIES {
        let forged = Repr {
            token: guess(&mut rng, ack.token),
            ..rst_a
        };
        inject(&mut p.a, p.now, B, &emit(&forged, &[]));
    }
    let third = message(3, 64);
    assert_eq!(exchange(&mut p, fa, fb, third.clone()), vec![third]);
    assert!(!p.events_a.iter().any(|e| matches!(e, Event::Closed { .. })));
}

#[test]
fn an_rst_with_the_token_resets_only_on_the_exact_sequence_number() {
    let mut p = Pair::new(|_| {});
    let cap = capturing(&mut p);
    let (fa, fb) = p.connect();
    let m = message(1, 100);
    assert_eq!(exchange(&mut p, fa, fb, m.clone()), vec![m]);
    let (data, _) = last_of(&cap, true, PacketType::Data);
    let rst = Repr {
        packet_type: PacketType::Rst,
        flags: 0,
        msg_len: 0,
        payload_len: 0,
        handshake: None,
        window: 0,
        ts_val: 0,
        ts_ecr: 0,
        ..data
    };
    // In the window but not the next expected number (RFC 5961 §3.2): a challenge ACK, no reset.
    let sent_before = p.b.stats().packets_sent;
    let in_window = Repr {
        seq: data.seq.wrapping_add(5),
        ..rst
    };
    inject(&mut p.b, p.now, A, &emit(&in_window, &[]));
    assert_eq!(p.b.stats().drops_for(DropReason::RstRejected), 1);
    let mut buf = vec![0u8; 65_507];
    let t = p.b.poll_transmit(p.now, &mut buf).expect("a challenge ACK");
    let (ack, _) = parse(&buf[..t.len]);
    assert_eq!(ack.packet_type, PacketType::Ack);
    assert_eq!(p.b.stats().packets_sent, sent_before + 1);
    assert!(p.b.poll_event().is_none(), "no reset");
    // The exact next sequence number with the token: the flow resets.
    let exact = Repr {
        seq: data.seq.wrapping_add(1),
        ..rst
    };
    inject(&mut p.b, p.now, A, &emit(&exact, &[]));
    let events: Vec<Event> = std::iter::from_fn(|| p.b.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Closed { flow, reason: machnet_core::CloseReason::Reset } if *flow == fb)),
        "{events:?}"
    );
}

/// A client whose SYNs get no answer (b is not reachable), and b's listening SYN-ACK it will
/// never see: returns the pair, the client's flow and its (first) SYN.
fn client_waiting() -> (Pair, machnet_core::FlowId, Repr) {
    let mut p = Pair::new(|_| {});
    p.drop = Box::new(|_| true);
    let fa = p.a.connect(p.now, B, PORT).unwrap();
    let mut buf = vec![0u8; 65_507];
    let t = p.a.poll_transmit(p.now, &mut buf).expect("a SYN");
    let (syn, _) = parse(&buf[..t.len]);
    assert_eq!(syn.packet_type, PacketType::Syn);
    (p, fa, syn)
}

#[test]
fn forged_syn_acks_and_refusals_do_not_complete_or_fail_a_connect() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5A5A);
    let (mut p, fa, syn) = client_waiting();
    let client_token = syn.handshake.unwrap().token;
    let hs = wire::Handshake {
        echo_path: wire::UdpPair {
            src: 31_580,
            dst: 31_580,
        },
        token: 0x1234,
        isn: 77,
        ..syn.handshake.unwrap()
    };
    // The attacker knows the client's ISN (say, from a captured SYN) but not its token.
    let syn_ack = Repr {
        packet_type: PacketType::SynAck,
        src_port: syn.dst_port,
        dst_port: syn.src_port,
        seq: 77,
        ack: syn.seq.wrapping_add(1),
        handshake: Some(hs),
        payload_len: 0,
        ..syn
    };
    let refusal = Repr {
        packet_type: PacketType::Rst,
        handshake: None,
        seq: 0,
        ..syn_ack
    };
    for _ in 0..FORGERIES {
        for r in [syn_ack, refusal] {
            let forged = Repr {
                token: guess(&mut rng, client_token),
                ..r
            };
            inject(&mut p.a, p.now, B, &emit(&forged, &[]));
        }
    }
    assert_eq!(p.a.stats().drops_for(DropReason::BadToken), 2 * FORGERIES);
    assert!(p.a.poll_event().is_none(), "neither connected nor refused");
    // The real handshake still completes once the network works.
    p.drop = Box::new(|_| false);
    let limit = p.now + Duration::from_secs(2);
    p.run_until(limit, |p| {
        p.events_a.contains(&Event::Connected { flow: fa })
    });
    assert!(
        p.events_a.contains(&Event::Connected { flow: fa }),
        "{:?}",
        p.events_a
    );
}

/// Bytes `e` sends in answer to what it was just given, with their destination ports.
fn answers(e: &mut Engine, now: Instant) -> Vec<(u16, usize)> {
    let mut buf = vec![0u8; 65_507];
    let mut out = Vec::new();
    while let Some(t) = e.poll_transmit(now, &mut buf) {
        out.push((t.dst_port, t.len));
    }
    out
}

/// A SYN as an amplification attacker would send it: no padding, the largest engine count and
/// attempt the wire allows, a huge port pool "from" a victim.
fn greedy_syn(port: u16, seq: u32) -> Repr {
    Repr {
        packet_type: PacketType::Syn,
        flags: 0,
        src_port: 50_000,
        dst_port: port,
        seq,
        ack: 0,
        window: 4096,
        ts_val: 1,
        ts_ecr: 0,
        msg_len: 0,
        sack: Default::default(),
        handshake: Some(wire::Handshake {
            engine_count: u16::MAX,
            engine_id: 0,
            udp_port_base: 1,
            udp_port_count: u16::MAX,
            echo_path: wire::UdpPair::NONE,
            reply_hint: wire::UdpPair::NONE,
            attempt: 0,
            max_message_len: 8 << 20,
            max_datagram: 0,
            token: 0xDEAD,
            isn: seq,
        }),
        payload_len: 0,
        token: 0,
    }
}

fn syn_datagram(e: &mut Engine, now: Instant, victim: Ipv4Addr, syn: &Repr, src_udp: u16) -> usize {
    let bytes = emit(syn, &vec![0u8; usize::from(syn.payload_len)]);
    e.handle_datagram(
        now,
        Datagram {
            remote_ip: victim,
            src_port: src_udp,
            dst_port: 31_580,
            payload: &bytes,
        },
    );
    bytes.len()
}

#[test]
fn an_unvalidated_address_gets_at_most_three_times_its_bytes() {
    const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
    for (port, what) in [(PORT, "a listening port"), (PORT + 1, "a closed port")] {
        let mut b = Engine::new(EngineConfig::new(B, 0, 4), 7).unwrap();
        b.listen(PORT).unwrap();
        let mut now = Instant::ZERO;
        let (mut received, mut sent) = (0usize, 0usize);
        // The first SYN, then "retries" with rising attempts, spaced past the SYN timeout.
        for attempt in 0u8..20 {
            let mut syn = greedy_syn(port, 1000);
            syn.handshake.as_mut().unwrap().attempt = attempt.saturating_mul(13);
            received += syn_datagram(&mut b, now, VICTIM, &syn, 40_000 + u16::from(attempt));
            for (dst, len) in answers(&mut b, now) {
                assert!(
                    dst.abs_diff(40_000) <= 256,
                    "{what}: answers stay near the ports SYNs came from (got {dst})"
                );
                sent += len;
            }
            now += Duration::from_millis(50);
            b.handle_timeout(now);
            sent += answers(&mut b, now).iter().map(|&(_, l)| l).sum::<usize>();
        }
        assert!(sent > 0, "{what}: the SYNs are answered");
        assert!(
            sent <= 3 * received,
            "{what}: {sent} bytes sent for {received} received"
        );
    }
}

#[test]
fn the_client_pads_its_syns_to_pay_for_the_syn_ack_batch_it_needs() {
    // A client with 8 engines needs b(8) = 28 SYN-ACKs; one SYN that reaches the server must
    // pay for them at three times its size.
    let mut cfg = EngineConfig::new(A, 0, 8);
    cfg.max_udp_payload = 1472;
    let mut a = Engine::new(cfg, 3).unwrap();
    a.connect(Instant::ZERO, B, PORT).unwrap();
    let mut buf = vec![0u8; 65_507];
    let t = a.poll_transmit(Instant::ZERO, &mut buf).unwrap();
    let batch = machnet_core::rss::spray_batch(8, 0.95) as usize;
    let synack = wire::HEADER_LEN + wire::HANDSHAKE_LEN;
    assert!(
        3 * t.len >= batch * synack,
        "SYN of {} bytes for {batch} SYN-ACKs",
        t.len
    );
    assert!(t.len < batch * synack, "and not much more");
}

#[test]
fn a_forged_syn_teaches_the_peer_cache_nothing() {
    // A SYN "from" a to b's listening port claiming a pool a does not have; b never hears more.
    let mut p = Pair::new(|_| {});
    let mut syn = greedy_syn(PORT, 5);
    syn.handshake.as_mut().unwrap().udp_port_base = 44_000;
    syn.handshake.as_mut().unwrap().udp_port_count = 1;
    syn_datagram(&mut p.b, p.now, A, &syn, 44_000);
    let _ = answers(&mut p.b, p.now);
    // Later b connects to a: its SYNs go to the pool b is configured with, not the forged one.
    p.a.listen(PORT).unwrap();
    p.b.connect(p.now, A, PORT).unwrap();
    let sent = answers(&mut p.b, p.now);
    let pool = p.b.config().remote_udp_ports();
    assert!(!sent.is_empty());
    for (dst, _) in sent {
        assert!(
            pool.contains(dst),
            "SYN to {dst}, outside b's own idea of a's pool"
        );
    }
}

#[test]
fn handshakes_complete_through_syn_cookies() {
    // Cookies from the first SYN on: no half-open flow is ever made, and messages flow.
    let mut p = Pair::asymmetric(|_| {}, |c| c.handshake.syn_cookies_after = 0);
    let (fa, fb) = p.connect();
    let stats = p.b.stats().clone();
    assert!(stats.syn_cookies_sent >= 1, "{stats:?}");
    assert_eq!(stats.cookie_accepts, 1);
    for i in 0..20 {
        let m = message(i, 10_000 * i as usize + 1);
        assert_eq!(exchange(&mut p, fa, fb, m.clone()), vec![m]);
    }
    // A forged handshake ACK with a guessed cookie makes no flow.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let forged = Repr {
        packet_type: PacketType::Ack,
        flags: flags::ACK_REQ,
        src_port: 60_000,
        dst_port: PORT,
        seq: 11,
        ack: rng.random(),
        window: 16,
        ts_val: 1,
        ts_ecr: 0,
        msg_len: 0,
        sack: Default::default(),
        handshake: Some(wire::Handshake {
            engine_count: 1,
            engine_id: 0,
            udp_port_base: 31_600,
            udp_port_count: 1,
            echo_path: wire::UdpPair {
                src: 31_580,
                dst: 31_600,
            },
            reply_hint: wire::UdpPair::NONE,
            attempt: 0,
            max_message_len: 1 << 20,
            max_datagram: 0,
            token: 5,
            isn: 10,
        }),
        payload_len: 0,
        token: rng.random(),
    };
    for _ in 0..FORGERIES {
        let f = Repr {
            token: rng.random(),
            ack: rng.random(),
            ..forged
        };
        inject(&mut p.b, p.now, A, &emit(&f, &[]));
    }
    assert_eq!(p.b.stats().cookie_accepts, 1);
    assert_eq!(p.b.flow_count(), 1);
}

/// One datagram on the simulated wire of the flood test.
struct Wire {
    at: Instant,
    to_b: bool,
    src: u16,
    dst: u16,
    bytes: Vec<u8>,
}

#[test]
fn legitimate_connects_succeed_during_a_syn_flood_from_spoofed_sources() {
    syn_flood(false);
}

/// The same against encrypted hosts (PROTOCOL.md §12.5): the forged SYNs are sealed (their
/// Noise messages junk), so each would cost the server X25519 operations; beyond the handshake
/// budget they get stateless retries, which the legitimate client echoes.
#[test]
fn legitimate_encrypted_connects_succeed_during_a_flood_of_sealed_syns() {
    syn_flood(true);
}

/// 100,000 forged SYNs a second from random addresses (each a valid SYN for the listening port)
/// for 1.5 s, and a legitimate connect every 10 ms meanwhile.
fn syn_flood(encrypted: bool) {
    const FLOOD_PER_SEC: u64 = 100_000;
    const LEGIT: usize = 100;
    let seed = 0xF100D;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut ca, mut cb) = (EngineConfig::new(A, 0, 1), EngineConfig::new(B, 0, 1));
    if encrypted {
        use machnet_core::seal::{Encryption, PeerKey, StaticKey};
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        let allow = |own: &StaticKey, ip, peer: &StaticKey| {
            let peers = vec![PeerKey {
                ip,
                public: peer.public(),
            }];
            Some(std::sync::Arc::new(Encryption::new(own.clone(), peers)))
        };
        ca.encryption = allow(&ka, B, &kb);
        cb.encryption = allow(&kb, A, &ka);
    }
    let mut a = Engine::new(ca, 1).unwrap();
    let mut b = Engine::new(cb, 2).unwrap();
    b.listen(PORT).unwrap();
    let mut wire: std::collections::VecDeque<Wire> = Default::default();
    let mut buf = vec![0u8; 65_507];
    let mut now = Instant::ZERO;
    let step = Duration::from_nanos(1_000_000_000 / FLOOD_PER_SEC);
    let end = Instant::ZERO + Duration::from_millis(1500);
    let mut started = Vec::new(); // (flow, when)
    let mut connected = std::collections::HashMap::new();
    let mut failed = 0;
    let (mut forged, mut spoofed_bytes) = (0u64, 0usize);
    while now < end + Duration::from_secs(6) {
        if now < end {
            // One forged SYN per step, from a random address and port.
            let ip = Ipv4Addr::new(198, 18, rng.random(), rng.random());
            let mut syn = greedy_syn(PORT, rng.random());
            let src = rng.random_range(1024..65_000);
            let hs = syn.handshake.as_mut().unwrap();
            (hs.udp_port_base, hs.udp_port_count, hs.engine_count) = (src, 1, 1);
            hs.token = rng.random::<u64>() | 1;
            if encrypted {
                // A sealed SYN whose Noise message is junk.
                syn.flags |= wire::flags::SEALED;
                syn.payload_len = 112;
            }
            syn_datagram(&mut b, now, ip, &syn, src);
            forged += 1;
            if forged % (FLOOD_PER_SEC / 100) == 0 && started.len() < LEGIT {
                started.push((a.connect(now, B, PORT).unwrap(), now));
            }
        }
        for (from_a, e) in [(true, &mut a), (false, &mut b)] {
            while let Some(t) = e.poll_transmit(now, &mut buf) {
                if !from_a && t.remote_ip != A {
                    spoofed_bytes += t.len;
                    continue;
                }
                wire.push_back(Wire {
                    at: now + Duration::from_micros(10),
                    to_b: from_a,
                    src: t.src_port,
                    dst: t.dst_port,
                    bytes: buf[..t.len].to_vec(),
                });
            }
        }
        while let Some(e) = a.poll_event() {
            match e {
                Event::Connected { flow } => {
                    connected.insert(flow, now);
                }
                Event::Closed { .. } => failed += 1,
                _ => {}
            }
        }
        while b.poll_event().is_some() {}
        now += step;
        while wire.front().is_some_and(|w| w.at <= now) {
            let w = wire.pop_front().unwrap();
            let (e, from) = if w.to_b { (&mut b, A) } else { (&mut a, B) };
            e.handle_datagram(
                now,
                Datagram {
                    remote_ip: from,
                    src_port: w.src,
                    dst_port: w.dst,
                    payload: &w.bytes,
                },
            );
        }
        a.handle_timeout(now);
        b.handle_timeout(now);
        if now >= end && connected.len() + failed >= started.len() {
            break;
        }
    }
    let mut times: Vec<f64> = started
        .iter()
        .filter_map(|(f, t0)| {
            connected
                .get(f)
                .map(|t| (t.as_nanos() - t0.as_nanos()) as f64 / 1e6)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let stats = b.stats();
    eprintln!(
        "flood (encrypted: {encrypted}): {forged} forged SYNs, {} legitimate connects: {} succeeded (ms p50 {:.2}, p99 {:.2}, max {:.2}), {failed} failed; server: {} SYN-ACKs, {} cookie SYNs, {} cookie accepts, {} half-open drops; {} bytes to spoofed addresses (seed {seed:#x})",
        started.len(),
        times.len(),
        times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
        times.get(times.len() * 99 / 100).copied().unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN),
        stats.syn_acks_sent,
        stats.syn_cookies_sent,
        stats.cookie_accepts,
        stats.drops_for(DropReason::FlowLimit),
        spoofed_bytes,
    );
    assert_eq!(started.len(), LEGIT);
    assert!(
        times.len() * 100 >= LEGIT * 99,
        "{} of {LEGIT} legitimate connects succeeded (seed {seed:#x})",
        times.len()
    );
    assert!(
        stats.syn_cookies_sent > 0,
        "the flood switched the engine to cookies"
    );
}

// ----- ICMP port unreachable (PROTOCOL.md §8.4) -----

/// Lets `a` send `msg` on `fa` and returns the first datagram it puts on the wire (not delivered).
fn next_datagram(p: &mut Pair, fa: machnet_core::FlowId, msg: Bytes) -> (Transmit, Vec<u8>) {
    p.a.send(p.now, fa, msg).unwrap();
    let mut buf = vec![0u8; 65_507];
    let t =
        p.a.poll_transmit(p.now, &mut buf)
            .expect("a datagram to send");
    buf.truncate(t.len);
    (t, buf)
}

/// An ICMP port unreachable at `a` quoting `quoted` as sent on `t`'s path.
fn unreachable(p: &mut Pair, t: &Transmit, dst_port: u16, quoted: &[u8]) -> bool {
    p.a.handle_unreachable(
        p.now,
        Unreachable {
            remote_ip: B,
            src_port: t.src_port,
            dst_port,
            quoted,
        },
    )
}

#[test]
fn port_unreachable_quoting_the_flows_packet_resets_it_at_once() {
    let mut p = Pair::new(|_| {});
    let (fa, _fb) = p.connect();
    let (t, sent) = next_datagram(&mut p, fa, message(1, 2000));
    // Linux quotes at most 576 bytes of ICMP: the start of the datagram.
    assert!(unreachable(
        &mut p,
        &t,
        t.dst_port,
        &sent[..sent.len().min(520)]
    ));
    p.run_until(p.now + Duration::from_millis(1), |_| false);
    assert!(
        p.events_a.contains(&Event::Closed {
            flow: fa,
            reason: CloseReason::Reset
        }),
        "{:?}",
        p.events_a
    );
    assert_eq!(p.a.stats().unreachable_resets, 1);
    assert_eq!(p.a.flow_count(), 0, "the flow is gone");
    // A second report for the same (now gone) flow changes nothing.
    assert!(!unreachable(&mut p, &t, t.dst_port, &sent));
    assert_eq!(p.a.stats().unreachable_ignored, 1);
}

#[test]
fn forged_port_unreachables_touch_nothing() {
    let seed = 0x1C3B;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = Pair::new(|_| {});
    let (fa, fb) = p.connect();
    let (t, sent) = next_datagram(&mut p, fa, message(1, 300));
    let real = Packet::new_checked(&sent[..]).unwrap().token();
    let mut forged = 0;
    // A guessed token, right ports and path.
    for _ in 0..FORGERIES {
        let mut q = sent.clone();
        q[40..48].copy_from_slice(&guess(&mut rng, real).to_be_bytes());
        assert!(!unreachable(&mut p, &t, t.dst_port, &q), "seed {seed:#x}");
        forged += 1;
    }
    // The real packet, but reported for another UDP path of the flow's hosts.
    for dst in [t.dst_port.wrapping_add(1), t.dst_port.wrapping_sub(1), 0] {
        assert!(!unreachable(&mut p, &t, dst, &sent));
        forged += 1;
    }
    // Quotes too short for the fixed header, or not a Machnet packet.
    for q in [&sent[..wire::HEADER_LEN - 1], &[][..], &[0xFFu8; 64][..]] {
        assert!(!unreachable(&mut p, &t, t.dst_port, q));
        forged += 1;
    }
    assert_eq!(p.a.stats().unreachable_resets, 0);
    assert_eq!(p.a.stats().unreachable_ignored, forged);
    // The flow works: the message queued before the forgeries arrives, and another one after it.
    p.run_until(p.now + Duration::from_millis(50), |_| false);
    let mut got = Vec::new();
    drain(&mut p.b, fb, &mut got);
    assert_eq!(got, vec![message(1, 300)]);
    let second = message(2, 700);
    assert_eq!(exchange(&mut p, fa, fb, second.clone()), vec![second]);
    assert!(p
        .events_a
        .iter()
        .all(|e| !matches!(e, Event::Closed { .. })));
}

#[test]
fn port_unreachable_for_a_syn_leaves_the_connect_to_its_timeout() {
    let mut p = Pair::new(|_| {});
    let fa = p.a.connect(p.now, B, PORT).unwrap();
    let mut buf = vec![0u8; 65_507];
    let t = p.a.poll_transmit(p.now, &mut buf).expect("a SYN");
    let syn = &buf[..t.len];
    assert_eq!(
        Packet::new_checked(syn).unwrap().packet_type(),
        PacketType::Syn
    );
    // SYNs carry no token, and one sprayed port nobody binds says nothing about the others.
    assert!(!unreachable(&mut p, &t, t.dst_port, syn));
    p.run_until(p.now + Duration::from_secs(5), |p| {
        p.events_a.contains(&Event::Connected { flow: fa })
    });
    assert!(p.events_a.contains(&Event::Connected { flow: fa }));
}
