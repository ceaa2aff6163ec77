//! Seed scenarios of the `engine_sequence` fuzz target, one per corner of the engine: written to
//! `machnet-core/fuzz/seeds-engine_sequence/` and replayed by `machnet-sim/tests/engine_sequence.rs`.

use super::step::{Forge, ForgedHandshake, Side, Step, Target, TOKEN_GUESS};

use Side::{A, B};

/// A few rounds of a perfect network: deliver everything, let a millisecond pass.
fn settle(rounds: usize) -> Vec<Step> {
    let mut v = Vec::new();
    for _ in 0..rounds {
        v.push(Step::DeliverAll);
        v.push(Step::Advance { amount: 1, unit: 1 });
    }
    v
}

fn send(side: Side, flow: u8, len: u16) -> Step {
    Step::Send {
        side,
        flow,
        len,
        fill: len as u8,
    }
}

fn recv(side: Side, flow: u8) -> Step {
    Step::Recv {
        side,
        flow,
        max: 255,
    }
}

fn connect(side: Side) -> Step {
    Step::Connect {
        side,
        target: Target::Listener,
    }
}

/// A's flow to B, established.
fn established() -> Vec<Step> {
    let mut v = vec![connect(A)];
    v.extend(settle(4));
    v
}

/// An attacker packet aimed at B's first flow, sequence and acknowledgement near the real ones,
/// from A's address, with a guessed token.
fn forged(packet_type: u8, flags: u8, payload: Vec<u8>) -> Step {
    Step::Forge(Box::new(Forge {
        how: 1 | 2 | 4 | TOKEN_GUESS,
        token: 0x1234_5678_9abc_def0 ^ u64::from(packet_type),
        packet_type: packet_type - 1,
        flags,
        ports_from: 0,
        near: 3,
        seq: 1,
        window: 64,
        msg_len: payload.len() as u32,
        payload,
        ..Forge::default()
    }))
}

/// The named seed inputs, as steps.
pub fn scenarios() -> Vec<(&'static str, Vec<Step>)> {
    let mut out = Vec::new();

    // Messages both ways (one of many fragments), read, then a graceful close from both sides.
    let mut v = established();
    v.extend([send(A, 0, 5), send(A, 0, 1500), send(A, 0, 100)]);
    v.extend(settle(6));
    v.extend([recv(B, 0), send(B, 0, 300)]);
    v.extend(settle(4));
    v.extend([recv(A, 0), Step::Close { side: A, flow: 0 }]);
    v.extend(settle(3));
    v.push(Step::Close { side: B, flow: 0 });
    v.extend(settle(3));
    v.push(Step::Advance { amount: 3, unit: 2 });
    v.extend(settle(2));
    out.push(("messages_and_close", v));

    // A lossy, reordering, duplicating network: retransmissions and SACK.
    let mut v = established();
    v.extend([send(A, 0, 2000), send(A, 0, 2000), send(B, 0, 700)]);
    v.extend([
        Step::Drop { index: 0 },
        Step::Deliver { index: 5 },
        Step::Duplicate { index: 3 },
        Step::Deliver { index: 1 },
        Step::Drop { index: 7 },
        Step::AdvanceToTimer,
        Step::Deliver { index: 2 },
        Step::Deliver { index: 0 },
        Step::AdvanceToTimer,
    ]);
    v.extend(settle(10));
    v.extend([recv(A, 0), recv(B, 0)]);
    out.push(("lossy_reorder", v));

    // Connect to a port nobody listens on: refused; then one whose SYNs are all lost: timeout.
    let mut v = vec![Step::Connect {
        side: B,
        target: Target::Closed,
    }];
    v.extend(settle(3));
    v.push(connect(B));
    for _ in 0..12 {
        v.extend([Step::Drop { index: 0 }, Step::AdvanceToTimer]);
    }
    out.push(("refused_and_timeout", v));

    // Several flows, the receiver never reads: windows close, memory budget, reclaim, aborts.
    let mut v = Vec::new();
    for _ in 0..4 {
        v.push(connect(A));
    }
    v.extend(settle(4));
    for i in 0..24u8 {
        v.push(send(A, i % 4, 2000));
        v.extend(settle(1));
    }
    v.extend([
        Step::Abort { side: A, flow: 1 },
        Step::Close { side: B, flow: 2 },
    ]);
    v.extend(settle(4));
    v.push(Step::Advance {
        amount: 150,
        unit: 2,
    });
    v.extend(settle(2));
    out.push(("no_reader", v));

    // Blind-attack packets on a live flow: DATA, FIN, RST, ACK, a SYN-ACK.
    let mut v = established();
    v.push(send(A, 0, 50));
    v.extend(settle(2));
    v.extend([
        forged(4, 3, b"forged message".to_vec()),
        forged(5, 0, Vec::new()),
        forged(3, 4, Vec::new()),
        forged(6, 0, Vec::new()),
    ]);
    v.extend(settle(3));
    v.extend([recv(B, 0), send(B, 0, 10), send(A, 0, 10)]);
    v.extend(settle(3));
    v.extend([recv(A, 0), recv(B, 0)]);
    out.push(("blind_injection", v));

    // SYNs from the attacker's address claiming many engines and a huge port pool; raw garbage.
    let mut v = Vec::new();
    for i in 0..6u16 {
        v.push(Step::Forge(Box::new(Forge {
            how: 1 | 4,
            udp: (i, i),
            packet_type: 0,
            ports_from: 200,
            ports: (1000 + i, if i % 2 == 0 { 80 } else { 81 }),
            seq: u32::from(i) * 77,
            handshake: Some(ForgedHandshake {
                engine_count: 64,
                engine_id: 3,
                udp_port_base: 1,
                udp_port_count: 65535,
                attempt: 5,
                max_message_len: 1 << 20,
                token: 0xfeed_0000 + u64::from(i),
                ..ForgedHandshake::default()
            }),
            ..Forge::default()
        })));
    }
    v.push(Step::Raw {
        how: 1,
        udp: (5, 31580),
        bytes: b"MN\x01\x04 not a real packet at all, not at all.".to_vec(),
    });
    v.extend(settle(3));
    v.push(Step::Advance {
        amount: 60,
        unit: 2,
    });
    v.extend(settle(2));
    out.push(("syn_flood", v));

    // B's app connects to A, messages both ways, B aborts; leftovers read and discarded.
    let mut v = vec![connect(B)];
    v.extend(settle(4));
    v.extend([send(B, 0, 20), send(A, 0, 30), send(A, 0, 40)]);
    v.extend(settle(4));
    v.extend([
        recv(A, 0),
        Step::Close { side: B, flow: 0 },
        Step::Abort { side: A, flow: 0 },
    ]);
    v.extend(settle(3));
    v.extend([
        recv(B, 0),
        Step::Discard { side: B, flow: 0 },
        Step::Advance {
            amount: 20,
            unit: 2,
        },
    ]);
    out.push(("abort_and_leftovers", v));

    // An established flow falls silent: keepalives, then the idle timeout.
    let mut v = established();
    for _ in 0..30 {
        v.extend([
            Step::AdvanceToTimer,
            Step::Drop { index: 0 },
            Step::Drop { index: 0 },
        ]);
    }
    out.push(("idle_timeout", v));

    out
}
