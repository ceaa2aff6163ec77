//! Encryption in transit (PROTOCOL.md §12) between two engines: keys and allow-lists, what the
//! wire shows, and what an attacker who sees every packet (and so knows every token) can do.
//! The delivery and lifecycle suites of `machnet-sim` run encrypted as well (CI runs them with
//! `MACHNET_SIM_ENCRYPT=1`).

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use machnet_core::seal::{Encryption, PeerKey, StaticKey};
use machnet_core::wire::{flags, Packet, PacketType, Repr};
use machnet_core::{CloseReason, ConnectError, Datagram, DropReason, EngineConfig, Event};

use common::*;

struct Keys {
    a: StaticKey,
    b: StaticKey,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            a: StaticKey::generate(),
            b: StaticKey::generate(),
        }
    }
}

/// Encryption with `key` that allows `peer` at `ip`.
fn allow(key: &StaticKey, ip: std::net::Ipv4Addr, peer: [u8; 32]) -> Arc<Encryption> {
    Arc::new(Encryption::new(
        key.clone(),
        vec![PeerKey { ip, public: peer }],
    ))
}

/// A pair whose hosts have encryption `ea` and `eb` (`None`: plaintext).
fn pair_with(ea: Option<Arc<Encryption>>, eb: Option<Arc<Encryption>>) -> Pair {
    Pair::asymmetric(
        move |c: &mut EngineConfig| c.encryption = ea.clone(),
        move |c: &mut EngineConfig| c.encryption = eb.clone(),
    )
}

/// Both hosts encrypted, each allowing the other.
fn encrypted_pair(k: &Keys) -> Pair {
    pair_with(
        Some(allow(&k.a, B, k.b.public())),
        Some(allow(&k.b, A, k.a.public())),
    )
}

/// Every datagram put on the wire: (whether it went a → b, its bytes).
type Captured = Rc<RefCell<Vec<(bool, Vec<u8>)>>>;

/// Records every datagram put on the wire, both ways.
fn capture(p: &mut Pair) -> Captured {
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    p.rewrite = Box::new(move |to_b, bytes| s.borrow_mut().push((to_b, bytes.clone())));
    seen
}

fn closed_reason(events: &[Event]) -> Option<CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// A connects to B, which refuses (counting `drop`): A sees `Refused`, B keeps no flow.
fn assert_refused(p: &mut Pair, drop: DropReason, what: &str) {
    p.a.connect(p.now, B, PORT).unwrap();
    run_for(p, Duration::from_secs(2));
    let reason = closed_reason(&p.events_a);
    assert_eq!(
        reason,
        Some(CloseReason::Refused),
        "{what}: {:?}",
        p.events_a
    );
    assert!(p.b.stats().drops_for(drop) >= 1, "{what}");
    assert_eq!(p.b.flow_count(), 0, "{what}");
}

fn run_for(p: &mut Pair, d: Duration) {
    let limit = p.now + d;
    p.run_until(limit, |_| false);
}

#[test]
fn encrypted_flows_deliver_byte_identical_messages_and_the_wire_shows_none_of_them() {
    let k = Keys::new();
    let mut p = encrypted_pair(&k);
    let seen = capture(&mut p);
    // Sizes around fragment boundaries, a 64 KiB and a 1 MiB message.
    transfer(&mut p, &[1, 1400, 1401, 2900, 65_536, 1 << 20, 7]);
    let (fa, fb) = p.connect();
    let secret = Bytes::from_static(b"a marker no encrypted packet may show: 0123456789abcdef");
    p.a.send(p.now, fa, secret.clone()).unwrap();
    p.b.send(p.now, fb, secret.clone()).unwrap();
    run_for(&mut p, Duration::from_millis(50));
    assert_eq!(p.b.recv(fb).unwrap(), Some(secret.clone()));
    assert_eq!(p.a.recv(fa).unwrap(), Some(secret.clone()));
    let seen = seen.borrow();
    let mut sealed = 0;
    for (_, d) in seen.iter() {
        assert!(
            !d.windows(16).any(|w| w == &secret[..16]),
            "plaintext on the wire"
        );
        let repr = Repr::parse(&Packet::new_checked(&d[..]).unwrap()).unwrap();
        match repr.packet_type {
            PacketType::Syn | PacketType::SynAck => {}
            _ => {
                assert_ne!(repr.flags & flags::SEALED, 0, "unsealed {repr:?}");
                sealed += 1;
            }
        }
    }
    assert!(sealed > 500, "{sealed} sealed packets");
    assert_eq!(p.a.stats().drops_for(DropReason::BadSeal), 0);
    assert_eq!(p.b.stats().drops_for(DropReason::BadSeal), 0);
}

#[test]
fn a_server_with_another_key_than_the_allow_list_gives_is_not_trusted() {
    let k = Keys::new();
    let impostor = StaticKey::generate();
    // The client expects `impostor`'s key at B; B holds its own.
    let mut p = pair_with(
        Some(allow(&k.a, B, impostor.public())),
        Some(allow(&k.b, A, k.a.public())),
    );
    let fa = p.a.connect(p.now, B, PORT).unwrap();
    p.a.send(p.now, fa, Bytes::from_static(b"never sent"))
        .unwrap();
    run_for(&mut p, Duration::from_secs(2));
    // B cannot read a handshake made for another key: it refuses, or the client gives up.
    let reason = closed_reason(&p.events_a);
    assert!(
        matches!(
            reason,
            Some(CloseReason::Refused | CloseReason::PeerNotAuthenticated)
        ),
        "{:?}",
        p.events_a
    );
    assert!(p.b.stats().drops_for(DropReason::PeerNotAllowed) >= 1);
    assert!(!p
        .events_b
        .iter()
        .any(|e| matches!(e, Event::Accepted { .. })));
}

#[test]
fn a_client_the_server_does_not_list_is_refused() {
    let k = Keys::new();
    let stranger = StaticKey::generate();
    // A knows B's key, but B allows only some other key at A's address.
    let mut p = pair_with(
        Some(allow(&k.a, B, k.b.public())),
        Some(allow(&k.b, A, stranger.public())),
    );
    assert_refused(&mut p, DropReason::PeerNotAllowed, "unlisted client");
}

#[test]
fn no_allow_list_entry_for_the_remote_host_fails_the_connect_at_once() {
    let k = Keys::new();
    let mut p = encrypted_pair(&k);
    let other = std::net::Ipv4Addr::new(10, 0, 0, 99);
    assert_eq!(
        p.a.connect(p.now, other, PORT),
        Err(ConnectError::PeerNotAllowed)
    );
    assert_eq!(p.a.flow_count(), 0);
}

#[test]
fn plaintext_and_encrypted_hosts_refuse_each_other() {
    let k = Keys::new();
    for client_encrypts in [true, false] {
        let mut p = pair_with(
            client_encrypts.then(|| allow(&k.a, B, k.b.public())),
            (!client_encrypts).then(|| allow(&k.b, A, k.a.public())),
        );
        let what = format!("client encrypts: {client_encrypts}");
        assert_refused(&mut p, DropReason::SealMismatch, &what);
    }
}

/// An on-path attacker knows the flow's ports, tokens and sequence numbers (they travel in clear
/// headers). Without the keys it can inject nothing: not a message, not an RST, not a FIN, and a
/// sealed packet it changes is dropped.
#[test]
fn an_on_path_attacker_who_knows_the_tokens_cannot_inject_or_reset() {
    let k = Keys::new();
    let mut p = encrypted_pair(&k);
    let seen = capture(&mut p);
    let (fa, fb) = p.connect();
    p.a.send(p.now, fa, message(1, 3000)).unwrap();
    run_for(&mut p, Duration::from_millis(10));
    assert_eq!(p.b.recv(fb).unwrap(), Some(message(1, 3000)));
    // The newest packet a → b tells the attacker everything the header carries.
    let last = {
        let seen = seen.borrow();
        let (_, d) = seen.iter().rev().find(|(to_b, _)| *to_b).unwrap();
        Repr::parse(&Packet::new_checked(&d[..]).unwrap()).unwrap()
    };
    // UDP ports only choose the engine; B has one.
    let udp = p.b.config().udp_ports.base;
    let inject = |p: &mut Pair, repr: Repr, payload: &[u8]| {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf, payload, true);
        p.b.handle_datagram(
            p.now,
            Datagram {
                remote_ip: A,
                src_port: udp,
                dst_port: udp,
                payload: &buf,
            },
        );
    };
    let base = Repr {
        packet_type: PacketType::Data,
        flags: flags::FIRST | flags::LAST,
        seq: last.seq,
        ack: last.ack,
        sack: Default::default(),
        handshake: None,
        msg_len: 5,
        payload_len: 5,
        ..last
    };
    // 1. A plaintext message with the right token and sequence number.
    inject(&mut p, base, b"evil!");
    // 2. The same, marked sealed, with a made-up packet number and tag.
    let mut sealed = base;
    sealed.flags |= flags::SEALED;
    sealed.payload_len = 5 + 24;
    inject(&mut p, sealed, &[7u8; 29]);
    // 3. A plaintext RST and FIN at the exact sequence number.
    for ty in [PacketType::Rst, PacketType::Fin] {
        let r = Repr {
            packet_type: ty,
            flags: 0,
            msg_len: 0,
            payload_len: 0,
            ..base
        };
        inject(&mut p, r, &[]);
        let mut s = r;
        s.flags |= flags::SEALED;
        s.payload_len = 24;
        inject(&mut p, s, &[9u8; 24]);
    }
    assert_eq!(p.b.stats().drops_for(DropReason::SealMismatch), 3);
    assert_eq!(p.b.stats().drops_for(DropReason::BadSeal), 3);
    // A blind (off-path) forgery lacks the token: dropped before any AES is spent on it.
    let blind = Repr {
        token: last.token ^ 1,
        ..sealed
    };
    inject(&mut p, blind, &[7u8; 29]);
    assert_eq!(p.b.stats().drops_for(DropReason::BadToken), 1);
    assert_eq!(p.b.stats().drops_for(DropReason::BadSeal), 3);
    // 4. A real sealed packet with one bit of its header changed.
    {
        let seen = seen.borrow();
        let (_, d) = seen.iter().rev().find(|(to_b, _)| *to_b).unwrap();
        let mut d = d.clone();
        d[20] ^= 1; // the window field
        machnet_core::wire::finish_checksum(&mut d);
        p.b.handle_datagram(
            p.now,
            Datagram {
                remote_ip: A,
                src_port: udp,
                dst_port: udp,
                payload: &d,
            },
        );
    }
    assert_eq!(p.b.stats().drops_for(DropReason::BadSeal), 4);
    // The flow lives on and carries the real next message, and nothing else.
    p.a.send(p.now, fa, message(2, 10)).unwrap();
    run_for(&mut p, Duration::from_millis(10));
    assert_eq!(p.b.recv(fb).unwrap(), Some(message(2, 10)));
    assert_eq!(p.b.recv(fb).unwrap(), None);
    assert!(closed_reason(&p.events_b).is_none(), "{:?}", p.events_b);
}

/// A host that lost a flow (it ended, or the host restarted with the same key) answers the peer's
/// next packet with a stateless reset only it can make (§12.4); the peer's flow ends at once
/// instead of timing out.
#[test]
fn a_peer_that_forgot_the_flow_resets_it_with_its_reset_token() {
    let k = Keys::new();
    let mut p = encrypted_pair(&k);
    let (fa, _fb) = p.connect();
    // B "restarts": a fresh engine with the same key and config.
    let cfg = p.b.config().clone();
    p.b = machnet_core::Engine::new(cfg, 99).unwrap();
    p.b.listen(PORT).unwrap();
    p.a.send(p.now, fa, message(3, 100)).unwrap();
    run_for(&mut p, Duration::from_secs(1));
    assert_eq!(
        closed_reason(&p.events_a),
        Some(CloseReason::Reset),
        "{:?}",
        p.events_a
    );
    assert_eq!(p.a.stats().drops_for(DropReason::BadSeal), 0);
    // The same B with another key cannot.
    let k2 = Keys::new();
    let mut p = encrypted_pair(&k);
    let (fa, _fb) = p.connect();
    let eb = allow(&k2.b, A, k.a.public());
    let mut cfg = p.b.config().clone();
    cfg.encryption = Some(eb);
    p.b = machnet_core::Engine::new(cfg, 99).unwrap();
    p.a.send(p.now, fa, message(3, 100)).unwrap();
    run_for(&mut p, Duration::from_millis(300));
    assert_eq!(closed_reason(&p.events_a), None, "{:?}", p.events_a);
    assert!(p.a.stats().drops_for(DropReason::BadSeal) >= 1);
}

/// Reading a sealed SYN costs X25519 operations; a flood of them (here: forged, unreadable) is
/// read at most at `max_encrypted_handshake_rate`, the rest answered statelessly with a retry
/// (PROTOCOL.md §12.5) — and a legitimate client connects in the middle of the flood, the retry
/// costing it one round trip more.
#[test]
fn a_flood_of_sealed_syns_is_read_only_within_the_handshake_budget() {
    let k = Keys::new();
    let mut p = encrypted_pair(&k);
    // A real SYN to copy from.
    let fa = p.a.connect(p.now, B, PORT).unwrap();
    let out = take_output(&mut p.a, p.now);
    p.a.abort(p.now, fa).unwrap();
    let (udp_src, udp_dst, syn) = out[0].clone();
    let repr = Repr::parse(&Packet::new_checked(&syn[..]).unwrap()).unwrap();
    let hl = repr.header_len();
    let forge = |i: u16, retry: Option<[u8; 12]>| {
        let mut forged = repr;
        forged.src_port = 20_000 + i;
        let mut payload = syn[hl..].to_vec();
        payload[40] ^= (i as u8) | 1; // the encrypted static key: unreadable
        if let Some(cookie) = retry {
            payload.resize(payload.len().max(124), 0);
            payload[112..124].copy_from_slice(&cookie);
            forged.payload_len = payload.len() as u16;
        }
        let mut buf = vec![0u8; forged.buffer_len()];
        forged.emit(&mut buf, &payload, true);
        buf
    };
    let flood = |p: &mut Pair, n: u16, retry: Option<[u8; 12]>| {
        for i in 0..n {
            let buf = forge(i, retry);
            let d = Datagram {
                remote_ip: A,
                src_port: udp_src,
                dst_port: udp_dst,
                payload: &buf,
            };
            p.b.handle_datagram(p.now, d);
        }
    };
    const FLOOD: u16 = 5_000;
    flood(&mut p, FLOOD, None);
    let read = p.b.stats().drops_for(DropReason::PeerNotAllowed);
    let retries = p.b.stats().syn_cookies_sent;
    let rate = p.b.config().handshake.max_encrypted_handshake_rate;
    assert_eq!(read + retries, u64::from(FLOOD));
    assert!(
        read <= u64::from(rate.div_ceil(10)),
        "{read} read in no time"
    );
    // Made-up retry cookies buy nothing: answered with a retry, never read.
    flood(&mut p, 1_000, Some([0x55; 12]));
    assert_eq!(p.b.stats().drops_for(DropReason::PeerNotAllowed), read);
    assert_eq!(p.b.flow_count(), 0);
    // The budget is spent: a real client gets a retry, echoes it and connects.
    p.wire.clear();
    p.events_a.clear();
    let retries = p.b.stats().syn_cookies_sent;
    let (fa, fb) = p.connect();
    assert!(
        p.b.stats().syn_cookies_sent > retries,
        "the connect went through a retry"
    );
    assert_eq!(p.b.stats().drops_for(DropReason::PeerNotAllowed), read);
    p.a.send(p.now, fa, message(4, 5000)).unwrap();
    run_for(&mut p, Duration::from_millis(10));
    assert_eq!(p.b.recv(fb).unwrap(), Some(message(4, 5000)));
}

/// Starting a handshake costs X25519 operations on the engine's core too: an application that
/// connects faster than `max_encrypted_handshake_rate` is refused at once with a clear error,
/// and may connect again once the budget refills.
#[test]
fn encrypted_connects_beyond_the_handshake_rate_fail_at_once() {
    let k = Keys::new();
    let mut p = encrypted_pair(&k);
    let burst =
        p.a.config()
            .handshake
            .max_encrypted_handshake_rate
            .div_ceil(10);
    let mut started = 0;
    let mut refused = 0;
    for _ in 0..burst + 50 {
        match p.a.connect(p.now, B, PORT) {
            Ok(_) => started += 1,
            Err(ConnectError::HandshakeRate) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((started, refused), (burst, 50));
    p.now += Duration::from_secs(1);
    assert!(p.a.connect(p.now, B, PORT).is_ok());
}
