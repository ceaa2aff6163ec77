//! Two single-engine hosts joined by an in-memory link with simulated time (quinn-style test
//! pair). The full multi-host, multi-engine simulator lives in `machnet-sim`; these tests pin
//! down protocol behaviour at the smallest scale.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use machnet_core::{
    CloseReason, Datagram, Engine, EngineConfig, Event, FlowId, Instant, RecvError, SendError,
};

#[test]
fn handshake_and_small_messages() {
    let mut p = Pair::new(|_| {});
    transfer(&mut p, &[1, 2, 3, 100, 1400, 5000]);
    let s = p.a.stats();
    assert_eq!(s.syns_sent, 1, "one engine each side: one SYN");
    assert_eq!(p.b.stats().syn_acks_sent, 1);
}

#[test]
fn max_size_message_and_many_small_without_loss() {
    let mut p = Pair::new(|_| {});
    let mut sizes = vec![8 << 20];
    sizes.extend((0..2000).map(|i| 1 + i % 700));
    sizes.push(8 << 20);
    transfer(&mut p, &sizes);
    assert_eq!(p.a.stats().timeout_retransmits, 0);
}

#[test]
fn periodic_loss_is_repaired() {
    let mut p = Pair::new(|_| {});
    p.drop = Box::new(|n| n % 7 == 3);
    let sizes: Vec<usize> = (0..3000)
        .map(|i| 1 + (i * 37) % 3000)
        .chain([1 << 20])
        .collect();
    transfer(&mut p, &sizes);
    assert!(p.a.stats().fast_retransmits > 0);
}

#[test]
fn heavy_loss_is_repaired() {
    let mut p = Pair::new(|_| {});
    let mut x: u64 = 0x9E3779B97F4A7C15;
    p.drop = Box::new(move |_| {
        x ^= x << 7;
        x ^= x >> 9;
        x % 100 < 30
    });
    let sizes: Vec<usize> = (0..500).map(|i| 1 + (i * 131) % 9000).collect();
    transfer(&mut p, &sizes);
}

#[test]
fn oversize_and_empty_messages_are_refused() {
    let mut p = Pair::new(|c| c.max_message_len = 1000);
    let (fa, _) = p.connect();
    assert_eq!(
        p.a.send(p.now, fa, Bytes::new()),
        Err(SendError::EmptyMessage)
    );
    assert_eq!(
        p.a.send(p.now, fa, Bytes::from(vec![0u8; 1001])),
        Err(SendError::MessageTooLarge {
            len: 1001,
            max: 1000
        })
    );
}

#[test]
fn refused_when_nobody_listens() {
    let mut p = Pair::new(|_| {});
    let fa = p.a.connect(p.now, B, PORT + 1).unwrap();
    p.run_until(p.now + Duration::from_secs(5), |p| !p.events_a.is_empty());
    assert_eq!(
        p.events_a,
        vec![Event::Closed {
            flow: fa,
            reason: CloseReason::Refused
        }]
    );
}

#[test]
fn graceful_close_delivers_everything_then_closes_both() {
    let mut p = Pair::new(|_| {});
    let (fa, fb) = p.connect();
    for i in 0..50 {
        p.a.send(p.now, fa, message(i, 3000)).unwrap();
    }
    p.a.close(p.now, fa).unwrap();
    assert_eq!(p.a.send(p.now, fa, message(99, 1)), Err(SendError::Closed));
    let mut got = Vec::new();
    let mut all_b = Vec::new();
    p.run_until(p.now + Duration::from_secs(5), |p| {
        all_b.append(&mut p.events_b);
        all_b.contains(&Event::PeerClosed { flow: fb })
    });
    drain(&mut p.b, fb, &mut got);
    assert_eq!(got.len(), 50);
    p.b.close(p.now, fb).unwrap();
    p.run_until(p.now + Duration::from_secs(5), |_| false);
    assert!(
        p.events_a.contains(&Event::Closed {
            flow: fa,
            reason: CloseReason::Graceful
        }),
        "{:?}",
        p.events_a
    );
    assert!(
        p.events_b.contains(&Event::Closed {
            flow: fb,
            reason: CloseReason::Graceful
        }),
        "{:?}",
        p.events_b
    );
    assert_eq!(p.a.flow_count(), 0, "lingering flows expire");
    assert_eq!(p.b.flow_count(), 0);
}

#[test]
fn dead_peer_times_out_with_an_error() {
    let mut p = Pair::new(|_| {});
    let (fa, _) = p.connect();
    p.drop = Box::new(|_| true);
    p.a.send(p.now, fa, message(1, 10)).unwrap();
    p.run_until(p.now + Duration::from_secs(30), |p| !p.events_a.is_empty());
    assert_eq!(
        p.events_a,
        vec![Event::Closed {
            flow: fa,
            reason: CloseReason::TimedOut
        }]
    );
}

#[test]
fn abort_resets_the_peer() {
    let mut p = Pair::new(|_| {});
    let (fa, fb) = p.connect();
    p.a.abort(p.now, fa).unwrap();
    p.run_until(p.now + Duration::from_secs(1), |p| !p.events_b.is_empty());
    assert_eq!(
        p.events_b,
        vec![Event::Closed {
            flow: fb,
            reason: CloseReason::Reset
        }]
    );
}

/// Messages the receiver acknowledged stay readable after the flow is reset (they were
/// accepted: the sender was told they arrived); a local abort discards them.
#[test]
fn messages_received_before_a_reset_stay_readable_until_read() {
    let mut p = Pair::new(|_| {});
    let (fa, fb) = p.connect();
    let msgs: Vec<Bytes> = (0..5).map(|i| message(i, 3000 * i as usize + 1)).collect();
    for m in &msgs {
        p.a.send(p.now, fa, m.clone()).unwrap();
    }
    let total: usize = msgs.iter().map(Bytes::len).sum();
    assert_eq!(p.a.send_buffered_bytes(), total);
    // Delivered and acknowledged, but not read by b's application.
    p.run_until(p.now + Duration::from_secs(1), |p| {
        p.a.flow_unacked_bytes(fa) == Some(0)
    });
    assert_eq!(p.a.flow_unacked_bytes(fa), Some(0));
    assert_eq!(p.a.send_buffered_bytes(), 0);
    p.a.abort(p.now, fa).unwrap();
    p.run_until(p.now + Duration::from_secs(1), |p| {
        p.events_b.iter().any(|e| matches!(e, Event::Closed { .. }))
    });
    assert!(p.events_b.contains(&Event::Closed {
        flow: fb,
        reason: CloseReason::Reset
    }));
    assert!(p.b.leftover_bytes() > 0);
    let mut got = Vec::new();
    drain(&mut p.b, fb, &mut got);
    assert_eq!(got, msgs, "every acknowledged message, in order");
    assert_eq!(
        p.b.recv(fb),
        Err(RecvError::UnknownFlow),
        "then the handle is dead"
    );
    assert_eq!(p.b.leftover_bytes(), 0);

    // The side that aborts keeps nothing.
    let mut p = Pair::new(|_| {});
    let (fa, fb) = p.connect();
    p.b.send(p.now, fb, message(1, 100)).unwrap();
    p.run_until(p.now + Duration::from_secs(1), |p| {
        p.b.flow_unacked_bytes(fb) == Some(0)
    });
    p.a.abort(p.now, fa).unwrap();
    assert_eq!(p.a.recv(fa), Err(RecvError::UnknownFlow));
    assert_eq!(p.a.leftover_bytes(), 0);
}

#[test]
fn slow_reader_gets_back_pressure_not_loss() {
    let mut p = Pair::new(|c| {
        c.recv_buffer = 64 << 10;
        c.send_buffer = 8 << 20;
        c.max_message_len = 1 << 20;
    });
    let (fa, fb) = p.connect();
    let mut sent = 0u32;
    let fill = |p: &mut Pair, sent: &mut u32| {
        let mut accepted = 0;
        loop {
            match p.a.send(p.now, fa, message(*sent, 10_000)) {
                Ok(()) => {
                    *sent += 1;
                    accepted += 1;
                }
                Err(SendError::BufferFull) => return accepted,
                Err(e) => panic!("{e}"),
            }
        }
    };
    // The receiver does not read: its window closes, the sender stops, and after the first
    // round trips the send buffer stays full.
    for _ in 0..3 {
        fill(&mut p, &mut sent);
        p.run_until(p.now + Duration::from_secs(2), |_| false);
    }
    assert_eq!(
        fill(&mut p, &mut sent),
        0,
        "steady state: no room at the sender"
    );
    assert_eq!(p.a.flow_stats(fa).unwrap().peer_window, 0);
    // Unread messages reach the buffer size plus at most the message that crossed it, and a
    // partial message counts with its buffer's full capacity (here the message length).
    let held = p.b.flow_held_bytes(fb).unwrap();
    assert!(
        held <= (64 << 10) + 2 * 10_000,
        "receiver holds {held} bytes"
    );
    // Still alive after seconds of zero window: probes keep the flow up.
    p.events_a.clear();
    p.run_until(p.now + Duration::from_secs(20), |_| false);
    assert!(
        p.a.flow_stats(fa).is_some(),
        "flow died under zero window: {:?}",
        p.events_a
    );
    assert!(
        !p.events_a.iter().any(|e| matches!(e, Event::Closed { .. })),
        "{:?}",
        p.events_a
    );
    // Reading resumes the transfer; everything arrives in order.
    let mut got = Vec::new();
    let deadline = p.now + Duration::from_secs(60);
    while (got.len() as u32) < sent {
        drain(&mut p.b, fb, &mut got);
        p.run_until(deadline, |p| {
            p.events_b
                .drain(..)
                .any(|e| matches!(e, Event::Readable { .. }))
        });
        assert!(p.now < deadline, "stalled at {}/{sent}", got.len());
    }
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &message(i as u32, 10_000));
    }
}

#[test]
fn fixed_window_bounds_packets_in_flight() {
    let mut p =
        Pair::new(|c| c.congestion = machnet_core::cc::CongestionConfig::Fixed { window: 4 });
    let (fa, fb) = p.connect();
    for i in 0..20 {
        p.a.send(p.now, fa, message(i, 5000)).unwrap();
    }
    let mut peak = 0;
    let mut got = Vec::new();
    p.run_until(p.now + Duration::from_secs(5), |p| {
        let s = p.a.flow_stats(fa).unwrap();
        peak = peak.max(s.packets_in_flight);
        assert_eq!(s.congestion_window, 4);
        drain(&mut p.b, fb, &mut got);
        got.len() == 20
    });
    assert_eq!(got.len(), 20);
    assert_eq!(
        peak, 4,
        "in flight never exceeds the fixed window, and fills it"
    );
}

#[test]
fn peek_len_reports_the_next_message_without_taking_it() {
    let mut p = Pair::new(|_| {});
    let (fa, fb) = p.connect();
    assert_eq!(p.b.peek_len(fb), Ok(None));
    p.a.send(p.now, fa, message(1, 300)).unwrap();
    p.a.send(p.now, fa, message(2, 7)).unwrap();
    p.run_until(p.now + Duration::from_secs(1), |p| {
        p.b.peek_len(fb) == Ok(Some(300))
    });
    assert_eq!(p.b.peek_len(fb), Ok(Some(300)));
    assert_eq!(p.b.recv(fb).unwrap().unwrap().len(), 300);
    p.run_until(p.now + Duration::from_secs(1), |p| {
        p.b.peek_len(fb) == Ok(Some(7))
    });
    assert_eq!(p.b.recv(fb).unwrap().unwrap(), message(2, 7));
}

#[test]
fn half_open_flows_are_bounded_and_reclaimed() {
    let a = EngineConfig::new(A, 0, 1);
    let mut cb = EngineConfig::new(B, 0, 1);
    cb.handshake.max_half_open = 2;
    cb.handshake.syn_cookies_after = 2;
    let mut a = Engine::new(a, 1).unwrap();
    let mut b = Engine::new(cb, 2).unwrap();
    b.listen(PORT).unwrap();
    let mut buf = vec![0u8; 1500];
    let now = Instant::ZERO;
    // Five SYNs reach b; its SYN-ACKs are never delivered, so its flows stay half-open.
    for _ in 0..5 {
        a.connect(now, B, PORT).unwrap();
    }
    while let Some(t) = a.poll_transmit(now, &mut buf) {
        b.handle_datagram(
            now,
            Datagram {
                remote_ip: A,
                src_port: t.src_port,
                dst_port: t.dst_port,
                payload: &buf[..t.len],
            },
        );
    }
    // The other three got stateless SYN cookies (PROTOCOL.md §5.5): no more state.
    assert_eq!(b.flow_count(), 2);
    assert_eq!(b.stats().syn_cookies_sent, 3);
    assert_eq!(b.stats().drops_for(machnet_core::DropReason::FlowLimit), 0);
    // They expire after the half-open timeout; then SYNs are accepted again.
    let later = now + b.config().handshake.half_open_timeout + Duration::from_millis(1);
    while b.poll_timeout().is_some_and(|t| t <= later) {
        b.handle_timeout(later);
    }
    assert_eq!(b.flow_count(), 0);
    a.connect(later, B, PORT).unwrap();
    while let Some(t) = a.poll_transmit(later, &mut buf) {
        b.handle_datagram(
            later,
            Datagram {
                remote_ip: A,
                src_port: t.src_port,
                dst_port: t.dst_port,
                payload: &buf[..t.len],
            },
        );
    }
    assert_eq!(b.flow_count(), 1);
}

/// A's message is sent; nothing comes back until A's retransmission timeout has fired and A has
/// resent. Then B receives `first` (and the resent packets after them, in the same batch, as a
/// stalled receiver reading its socket would) and its acknowledgement reaches A. Returns A's
/// flow, B's flow and the message.
fn timeout_then_batch(p: &mut Pair, originals_arrive: bool) -> (FlowId, FlowId, Bytes) {
    let (fa, fb) = p.connect();
    let msg = message(7, 30 * 1400);
    p.a.send(p.now, fa, msg.clone()).unwrap();
    let originals = take_output(&mut p.a, p.now);
    assert!(originals.len() >= 10, "{} packets sent", originals.len());
    // Far beyond the RTO (a few ms after a 20 µs handshake): the timer fires and A resends.
    p.now += Duration::from_millis(50);
    p.a.handle_timeout(p.now);
    assert!(p.a.stats().timeout_retransmits > 0, "the RTO fired");
    let resent = take_output(&mut p.a, p.now);
    assert!(!resent.is_empty(), "A resends after the timeout");
    p.now += LATENCY;
    if originals_arrive {
        deliver(&mut p.b, p.now, A, &originals);
    }
    deliver(&mut p.b, p.now, A, &resent);
    let acks = take_output(&mut p.b, p.now);
    assert!(!acks.is_empty(), "B acknowledges");
    p.now += LATENCY;
    deliver(&mut p.a, p.now, B, &acks);
    (fa, fb, msg)
}

fn finish_and_check(p: &mut Pair, fb: FlowId, msg: &Bytes) {
    let deadline = p.now + Duration::from_secs(5);
    p.run_until(deadline, |p| p.b.peek_len(fb).unwrap().is_some());
    let mut got = Vec::new();
    drain(&mut p.b, fb, &mut got);
    assert_eq!(got.len(), 1, "delivered exactly once");
    assert!(got[0] == *msg, "delivered byte-identical");
}

/// PROTOCOL.md §6.3: the receiver's acknowledgement of a batch echoes the first new packet's
/// timestamp, not that of a retransmission in the same batch, so the sender sees that the
/// originals were only late and counts the timeout as spurious.
#[test]
fn late_originals_make_the_timeout_spurious() {
    let mut p = Pair::new(|_| {});
    let (fa, fb, msg) = timeout_then_batch(&mut p, true);
    assert_eq!(p.a.stats().spurious_timeouts, 1);
    assert_eq!(p.a.flow_stats(fa).unwrap().spurious_timeouts, 1);
    // The RTO now outlasts the delay that caused it (RFC 4015 §4.2).
    let srtt = p.a.flow_stats(fa).unwrap().srtt.unwrap();
    assert!(srtt >= Duration::from_millis(50), "srtt {srtt:?}");
    finish_and_check(&mut p, fb, &msg);
}

/// The originals were really lost: the acknowledgement echoes a retransmission, and the
/// timeout stands.
#[test]
fn lost_originals_keep_the_timeout() {
    let mut p = Pair::new(|_| {});
    let (fa, fb, msg) = timeout_then_batch(&mut p, false);
    assert_eq!(p.a.stats().spurious_timeouts, 0);
    assert_eq!(p.a.flow_stats(fa).unwrap().spurious_timeouts, 0);
    finish_and_check(&mut p, fb, &msg);
}

// ------------------------------------------------------------------------------------------------
// Datagram size agreement (PROTOCOL.md §4, §6.4)
// ------------------------------------------------------------------------------------------------

fn messages_of_every_size() -> Vec<usize> {
    vec![1, 1400, 1500, 9000, 70_000, 1 << 20, 3, 65_000]
}

#[test]
fn each_flow_uses_the_smaller_datagram_limit_of_its_two_ends() {
    for (a_max, b_max) in [
        (65_507, 8_972),
        (8_972, 65_507),
        (1_472, 65_507),
        (65_507, 65_507),
    ] {
        let mut p = Pair::asymmetric(|c| c.max_udp_payload = a_max, |c| c.max_udp_payload = b_max);
        transfer(&mut p, &messages_of_every_size());
        let agreed = usize::from(a_max.min(b_max));
        assert_eq!(
            p.largest[0], agreed,
            "a ({a_max}) -> b ({b_max}): large messages fill datagrams of the agreed size"
        );
        assert!(p.largest[1] <= agreed, "b -> a stays within the limit too");
        assert_eq!(p.b.stats().drops_for(machnet_core::DropReason::Oversize), 0);
    }
}

/// Offset of the handshake block's `max_datagram` in a SYN (no SACK blocks): header + 18.
const SYN_MAX_DATAGRAM: usize = machnet_core::wire::HEADER_LEN + 18;

#[test]
fn a_peer_that_announces_nothing_gets_the_default_1472() {
    // A SYN whose limit field is 0 is what a peer predating the field sends.
    let mut p = Pair::asymmetric(
        |c| c.checksum = machnet_core::ChecksumMode::Datapath,
        |c| c.checksum = machnet_core::ChecksumMode::Datapath,
    );
    p.rewrite = Box::new(|to_b, bytes| {
        if to_b && bytes[3] == 1 {
            bytes[SYN_MAX_DATAGRAM..SYN_MAX_DATAGRAM + 2].fill(0);
            bytes[36..40].fill(0); // checksum absent: the datapath guards (§2.5)
        }
    });
    transfer(&mut p, &messages_of_every_size());
    assert!(
        p.largest[1] <= 1472,
        "b sends at most 1472 to a silent peer"
    );
}

#[test]
fn data_larger_than_the_agreed_datagram_is_dropped_and_counted_never_delivered() {
    // a really accepts 9000 but its SYN is rewritten to announce 1472: b holds the flow to 1472
    // while a, believing 9000, sends larger DATA — b must drop every such packet.
    let cfg = |c: &mut EngineConfig| {
        c.max_udp_payload = 9_000;
        c.checksum = machnet_core::ChecksumMode::Datapath;
    };
    let mut p = Pair::asymmetric(cfg, cfg);
    p.rewrite = Box::new(|to_b, bytes| {
        if to_b && bytes[3] == 1 {
            bytes[SYN_MAX_DATAGRAM..SYN_MAX_DATAGRAM + 2].copy_from_slice(&1472u16.to_be_bytes());
            bytes[36..40].fill(0);
        }
    });
    let (fa, fb) = p.connect();
    p.a.send(p.now, fa, message(1, 50_000)).unwrap();
    let limit = p.now + Duration::from_millis(20);
    p.run_until(limit, |_| false);
    assert!(p.b.stats().drops_for(machnet_core::DropReason::Oversize) > 0);
    assert_eq!(p.b.recv(fb).unwrap(), None, "nothing oversize is delivered");
    assert!(
        !p.events_b
            .iter()
            .any(|e| matches!(e, Event::Readable { .. })),
        "{:?}",
        p.events_b
    );
}

// ------------------------------------------------------------------------------------------------
// Memory budget (PROTOCOL.md §6.5)
// ------------------------------------------------------------------------------------------------

/// What an attacker flow's link withholds from b, forever.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Withheld {
    /// Every FIRST fragment: b only ever holds out-of-order data.
    First,
    /// Every LAST fragment: b only ever holds partial messages.
    Last,
}

const BUDGET: usize = 4 << 20;
const ATTACK_MSG: usize = 512 << 10;

/// `attackers` flows from a send messages whose FIRST or LAST fragments the link drops (so b
/// holds out-of-order data or partial messages that can never complete); then returns the pair
/// and the attackers' a-side flows, with b's memory as full as the attack can make it.
/// `staggered`: each attacker sends before the next connects (early ones take large shares);
/// else all connect first.
fn attacked_pair(attackers: usize, datagram: u16, staggered: bool) -> (Pair, Vec<FlowId>) {
    let mut p = Pair::asymmetric(
        |c| {
            c.max_udp_payload = datagram;
            c.max_message_len = ATTACK_MSG as u32;
            c.send_buffer = 4 * ATTACK_MSG;
            // Attackers ignore congestion: a window that losses do not shrink.
            c.congestion = machnet_core::cc::CongestionConfig::Fixed { window: 4096 };
        },
        |c| {
            c.max_udp_payload = datagram;
            c.max_message_len = ATTACK_MSG as u32;
            c.memory_budget = BUDGET;
        },
    );
    let mut flows = Vec::new();
    let withheld = std::rc::Rc::new(std::cell::RefCell::new(std::collections::HashMap::new()));
    let w = withheld.clone();
    p.rewrite = Box::new(move |to_b, bytes| {
        let port = u16::from_be_bytes([bytes[6], bytes[7]]);
        let w = w.borrow();
        let (Some(how), true) = (w.get(&port), to_b) else {
            return;
        };
        let is_data = bytes[3] == machnet_core::wire::PacketType::Data as u8;
        let f = bytes[4];
        let drop = match how {
            Withheld::First => f & machnet_core::wire::flags::FIRST != 0,
            Withheld::Last => f & machnet_core::wire::flags::LAST != 0,
        };
        if is_data && drop {
            bytes[0] = 0; // bad magic: b drops it
        }
    });
    let attack = |p: &mut Pair, i: usize, fa: FlowId| {
        for m in 0..3 {
            p.a.send(p.now, fa, message((i * 10 + m) as u32, ATTACK_MSG))
                .unwrap();
        }
        p.run_until(p.now + Duration::from_millis(200), |_| false);
    };
    for i in 0..attackers {
        let (fa, _) = p.connect();
        let port = p.a.flow_key(fa).unwrap().local_port;
        let how = if i % 2 == 0 {
            Withheld::First
        } else {
            Withheld::Last
        };
        withheld.borrow_mut().insert(port, how);
        flows.push(fa);
        if staggered {
            attack(&mut p, i, fa);
        }
    }
    if !staggered {
        for (i, &fa) in flows.clone().iter().enumerate() {
            attack(&mut p, i, fa);
        }
    }
    (p, flows)
}

/// b's memory never went beyond its budget.
fn assert_within_budget(p: &Pair) {
    let peak = p.b.stats().held_bytes_peak as usize;
    assert!(
        peak <= BUDGET,
        "b held {peak} bytes at its peak, budget {BUDGET}"
    );
    assert!(p.b.held_bytes() <= BUDGET);
}

#[test]
fn attacker_flows_cannot_exceed_the_budget_whatever_the_datagram_size() {
    for datagram in [1_472u16, 9_000, 65_507] {
        let attackers = 12;
        let (p, _) = attacked_pair(attackers, datagram, false);
        assert_within_budget(&p);
        assert!(
            p.b.held_bytes() > BUDGET / 2,
            "{datagram}: the attack should fill b's memory, held {}",
            p.b.held_bytes()
        );
        assert!(
            p.b.stats()
                .drops_for(machnet_core::DropReason::MemoryBudget)
                > 0,
            "{datagram}: packets beyond the shares are refused and counted"
        );
        assert_eq!(p.b.flow_count(), attackers);
    }
}

#[test]
fn a_legit_flow_completes_byte_identical_while_attackers_hold_the_budget() {
    for datagram in [1_472u16, 65_507] {
        let (mut p, _) = attacked_pair(8, datagram, true);
        let full = p.b.held_bytes();
        assert!(full > BUDGET * 2 / 3, "b is mostly full: {full}");
        let reclaims = p.b.stats().memory_reclaims;
        let (fa, fb) = p.connect();
        let sizes: Vec<usize> = (0..30).map(|i| 1 + (i * 7_919) % (128 << 10)).collect();
        let msgs: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| message(1000 + i as u32, n))
            .collect();
        for m in &msgs {
            p.a.send(p.now, fa, m.clone()).unwrap();
        }
        let mut got = Vec::new();
        let deadline = p.now + Duration::from_secs(5);
        while got.len() < msgs.len() {
            p.run_until(deadline, |p| p.b.peek_len(fb).unwrap().is_some());
            drain(&mut p.b, fb, &mut got);
            assert!(
                p.now < deadline,
                "{datagram}: stalled at {}/{}",
                got.len(),
                msgs.len()
            );
        }
        assert!(
            got == msgs,
            "{datagram}: delivered byte-identical and in order"
        );
        assert_within_budget(&p);
        assert!(
            p.b.stats().memory_reclaims > reclaims,
            "{datagram}: the newcomer's share was taken from an attacker above its own"
        );
    }
}
