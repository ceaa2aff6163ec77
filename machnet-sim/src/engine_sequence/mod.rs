//! A structure-aware fuzz harness of the whole sans-IO engine (the `engine_sequence` target in
//! `machnet-core/fuzz`; its committed seeds are replayed by `machnet-sim/tests/engine_sequence.rs`).
//!
//! Two engines, A (10.0.0.1) and B (10.0.0.2), both listening on [`LISTEN_PORT`], and an attacker
//! (10.0.0.66 or spoofing either host). The input is a sequence of [`Step`]s: the network
//! delivers, drops, duplicates or reorders the honest packets in flight; time advances; the apps
//! connect, send, receive, close, abort and discard; the attacker sends packets built from typed
//! header fields (ports and sequence numbers taken from the real flows or arbitrary) or raw bytes,
//! to either engine, from the peer's address or its own, on any UDP ports. After every step each
//! engine runs its due timers and its transmissions and events are collected. When the input
//! ends, the network heals: everything in flight is delivered and timers run until both sides
//! are quiet, and the apps read everything.
//!
//! Checked (a panic is a finding):
//! - no panic in the engine;
//! - every message an app receives is byte-identical to one the other app sent on that flow,
//!   delivered at most once, in send order, without gaps (see [`oracle`]); after the final drain,
//!   every message of a flow that ended gracefully was received;
//! - events only for flows the app knows, nothing after `Closed`, no handle handed out twice;
//! - bounded memory: `flow_count ≤ max_flows`, `held_bytes ≤ memory_budget` (and its peak),
//!   `send_buffered_bytes ≤ flow_count × send_buffer` and per flow `≤ send_buffer`,
//!   `leftover_bytes ≤ memory_budget ×` flows ended but not drained by the app;
//! - time moves forward: after `handle_timeout(now)` no timer is due at or before `now`, and an
//!   engine stops transmitting at a fixed instant (no endless output).
//!
//! While attacker packets can still inject data (protocol v1 has no per-flow authentication),
//! the delivery checks skip flows whose key an attacker packet named; [`ASSERT_NO_INJECTION`]
//! turns them on for every flow. [`ASSERT_ANTI_AMPLIFICATION`] adds the 3× bound on what the
//! engines send to the attacker's own address.

mod oracle;
pub mod seeds;
pub mod step;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use machnet_core::wire::{self, Handshake, Packet, PacketType, Repr, SackBlock, SackList, UdpPair};
use machnet_core::{
    ChecksumMode, Datagram, DropReason, Engine, EngineConfig, Event, Instant, PortPool,
};

use oracle::Apps;
pub use step::{decode_all, encode_all, Forge, ForgedHandshake, Side, Step, Target, TOKEN_GUESS};

/// Whether attacker packets must never cause the delivery of bytes that were never sent (nor
/// the loss of bytes that were), on any flow. Protocol v1 let an off-path attacker who knew the
/// ports inject data, so this was off (then flows an attacker packet named were not checked);
/// protocol v2's per-flow tokens (PROTOCOL.md §4.1) make it hold.
pub const ASSERT_NO_INJECTION: bool = true;

/// Whether an engine may send to an address that never completed a handshake at most
/// [`AMPLIFICATION_LIMIT`] times the bytes it received from it (issue 17, anti-amplification).
/// Checked for the attacker's own address until a flow from it is established (its packets
/// carry no tokens it could not know, so that takes a lucky guess).
pub const ASSERT_ANTI_AMPLIFICATION: bool = true;

/// Bytes sent per byte received allowed towards an unvalidated address.
pub const AMPLIFICATION_LIMIT: u64 = 3;

/// Address of host A.
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Address of host B.
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The attacker's own address.
pub const ATTACKER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);
/// Both engines listen here.
pub const LISTEN_PORT: u16 = 80;
/// Nobody listens here.
pub const CLOSED_PORT: u16 = 81;
/// Steps read from one input at most (bounds the work of one run).
pub const MAX_STEPS: usize = 512;
/// Honest packets in flight at most; further ones are lost.
const MAX_IN_FLIGHT: usize = 4096;
/// Packets one engine may send at one instant before it counts as transmitting endlessly.
const MAX_BURST: usize = 50_000;
/// Where the header `token` is (PROTOCOL.md §2).
const TOKEN_AT: std::ops::Range<usize> = 40..48;
/// Offset of the sender's token inside the handshake block (§4).
const HANDSHAKE_TOKEN_AT: usize = 24;
/// Rounds of the final drain.
const HEAL_ROUNDS: usize = 200;

/// The address of a side's host.
pub fn ip(side: Side) -> Ipv4Addr {
    match side {
        Side::A => A_IP,
        Side::B => B_IP,
    }
}

/// The engines' configuration: small limits so that full buffers, closed windows, memory
/// reclaim, flow and half-open limits, port exhaustion and fragmentation are reached quickly.
pub fn config(side: Side) -> EngineConfig {
    let mut c = EngineConfig::new(ip(side), 0, 1);
    c.udp_ports = PortPool {
        base: 31580,
        count: 4,
    };
    c.ephemeral_ports = PortPool {
        base: 49152,
        count: 4,
    };
    c.max_message_len = 2048;
    c.max_udp_payload = 256;
    c.send_buffer = 4096;
    c.recv_buffer = 4096;
    c.max_window_packets = 16;
    c.memory_budget = 8192;
    c.max_flows = 8;
    c.handshake.max_half_open = 4;
    c.handshake.syn_cookies_after = 2;
    c.handshake.max_batch = 4;
    c.handshake.max_answer_rate = 1000;
    c.checksum = ChecksumMode::Always;
    c
}

/// What a run did (for tests that check seeds reach what they were written for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Steps executed.
    pub steps: usize,
    /// Messages delivered and checked.
    pub delivered: u64,
    /// Messages delivered on flows the attacker aimed at (not checked).
    pub unchecked: u64,
    /// Connections established (Connected events).
    pub connected: u64,
    /// Flows that ended, by reason name.
    pub closed: Vec<String>,
    /// Attacker packets sent.
    pub attacker_packets: u64,
    /// Bytes the engines sent to the attacker's own address, and received from it.
    pub attacker_bytes: (u64, u64),
    /// Packets both engines dropped, by reason (those that occurred).
    pub drops: Vec<(&'static str, u64)>,
    /// Flows aborted to reclaim memory, both engines.
    pub memory_reclaims: u64,
}

/// An honest packet on the wire.
#[derive(Debug, Clone)]
struct InFlight {
    to: Side,
    src_port: u16,
    dst_port: u16,
    bytes: Vec<u8>,
}

/// Last sequence and acknowledgement numbers seen on a flow direction (sender side, its
/// Machnet source and destination port): what an attacker who knows "roughly where" a flow is
/// can aim at.
type Observed = std::collections::HashMap<(Side, u16, u16), (u32, u32)>;

/// The whole world of one run.
pub struct Harness {
    engines: [Engine; 2],
    now: Instant,
    in_flight: Vec<InFlight>,
    apps: Apps,
    observed: Observed,
    /// Tokens seen on the honest path (header and handshake blocks): an off-path attacker cannot
    /// know them, so guesses equal to one are altered (libFuzzer's comparison tracing can
    /// solve a 64-bit equality, which would be an on-path attack).
    honest_tokens: HashSet<u64>,
    /// A flow with the attacker's own address was established (the address is validated).
    attacker_validated: bool,
    outcome: Outcome,
    buf: Vec<u8>,
}

/// Runs one fuzz input: decodes it and executes it. Panics on a finding.
pub fn run(data: &[u8]) -> Outcome {
    let steps = decode_all(data, MAX_STEPS);
    run_steps(&steps)
}

/// Runs one fuzz input with both engines encrypted (PROTOCOL.md §12), each allowing the other.
pub fn run_encrypted(data: &[u8]) -> Outcome {
    let steps = decode_all(data, MAX_STEPS);
    let mut h = Harness::with_encryption(true);
    for s in &steps {
        h.step(s);
    }
    h.finish()
}

/// Executes decoded steps, then heals the network and runs the final checks.
pub fn run_steps(steps: &[Step]) -> Outcome {
    let mut h = Harness::new();
    for s in steps {
        h.step(s);
    }
    h.finish()
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Two fresh engines listening on [`LISTEN_PORT`].
    pub fn new() -> Harness {
        Harness::with_encryption(false)
    }

    /// Two fresh engines listening on [`LISTEN_PORT`], encrypted if `encrypted` (fixed keys:
    /// a run depends on its input alone).
    pub fn with_encryption(encrypted: bool) -> Harness {
        let keys = encrypted.then(encryption_pair);
        let mk = |side: Side, seed| {
            let mut c = config(side);
            c.encryption = keys.as_ref().map(|k| k[side.index()].clone());
            let mut e = Engine::new(c, seed).expect("valid fuzz config");
            e.listen(LISTEN_PORT).expect("listen");
            e
        };
        Harness {
            engines: [mk(Side::A, 1), mk(Side::B, 2)],
            now: Instant::from_nanos(1_000_000_000),
            in_flight: Vec::new(),
            apps: Apps::default(),
            observed: Observed::new(),
            honest_tokens: HashSet::new(),
            attacker_validated: false,
            outcome: Outcome::default(),
            buf: vec![0u8; 65536],
        }
    }

    /// One line about both engines (for debugging a scenario).
    pub fn debug_line(&self) -> String {
        let e = |s: Side| {
            let e = &self.engines[s.index()];
            format!(
                "flows {} held {} sendbuf {} leftover {} drops {} reclaims {}",
                e.flow_count(),
                e.held_bytes(),
                e.send_buffered_bytes(),
                e.leftover_bytes(),
                e.stats().total_drops(),
                e.stats().memory_reclaims
            )
        };
        format!(
            "t={}ms inflight {} | A: {} | B: {} | delivered {}",
            self.now.as_nanos() / 1_000_000,
            self.in_flight.len(),
            e(Side::A),
            e(Side::B),
            self.apps.delivered
        )
    }

    /// One line per endpoint the apps know (for debugging a scenario).
    pub fn describe_endpoints(&self) -> String {
        let mut out = String::new();
        for (i, e) in self.apps.endpoints.iter().enumerate() {
            let key = e.key.map(|k| {
                format!(
                    "{}:{}→{}:{}",
                    k.local_ip, k.local_port, k.remote_ip, k.remote_port
                )
            });
            out += &format!(
                "  endpoint {i}: {:?} {:?} {} sent {} received {} from {:?} closed {:?}\n",
                e.side,
                e.flow,
                key.unwrap_or_default(),
                e.sent.len(),
                e.recv_next,
                e.bound_sender,
                e.closed
            );
        }
        out
    }

    fn engine(&mut self, side: Side) -> &mut Engine {
        &mut self.engines[side.index()]
    }

    /// Executes one step, then lets both engines run their timers, transmit and report.
    pub fn step(&mut self, step: &Step) {
        self.outcome.steps += 1;
        match step {
            Step::Deliver { index } => {
                if let Some(i) = self.index(*index) {
                    let p = self.in_flight.remove(i);
                    self.deliver(&p);
                }
            }
            Step::Drop { index } => {
                if let Some(i) = self.index(*index) {
                    self.in_flight.remove(i);
                }
            }
            Step::Duplicate { index } => {
                if let Some(i) = self.index(*index) {
                    let p = self.in_flight[i].clone();
                    self.deliver(&p);
                }
            }
            Step::DeliverAll => {
                for p in std::mem::take(&mut self.in_flight) {
                    self.deliver(&p);
                }
            }
            Step::Advance { amount, unit } => {
                let unit = match unit % 3 {
                    0 => Duration::from_micros(1),
                    1 => Duration::from_millis(1),
                    _ => Duration::from_millis(100),
                };
                self.now += unit * u32::from(*amount);
            }
            Step::AdvanceToTimer => {
                let next = self
                    .engines
                    .iter_mut()
                    .filter_map(Engine::poll_timeout)
                    .min();
                if let Some(t) = next {
                    self.now = self.now.max(t);
                }
            }
            Step::Connect { side, target } => {
                let port = match target {
                    Target::Listener => LISTEN_PORT,
                    Target::Closed => CLOSED_PORT,
                    Target::Port(p) => *p,
                };
                let now = self.now;
                let e = self.engine(*side);
                if let Ok(flow) = e.connect(now, ip(side.peer()), port) {
                    let key = e.flow_key(flow);
                    self.apps.add(*side, flow, key);
                }
            }
            Step::Send {
                side,
                flow,
                len,
                fill,
            } => {
                if let Some(ep) = self.apps.pick(*side, *flow) {
                    let len = len % 4096;
                    let msg = self.apps.next_message(ep, len, *fill);
                    let (now, id) = (self.now, self.apps.endpoints[ep].flow);
                    if self.engine(*side).send(now, id, msg.clone()).is_ok() {
                        self.apps.endpoints[ep].sent.push(msg);
                    }
                }
            }
            Step::Recv { side, flow, max } => {
                if let Some(ep) = self.apps.pick(*side, *flow) {
                    self.read(ep, usize::from(*max));
                }
            }
            Step::Close { side, flow } => {
                if let Some(ep) = self.apps.pick(*side, *flow) {
                    let (now, id) = (self.now, self.apps.endpoints[ep].flow);
                    let _ = self.engine(*side).close(now, id);
                }
            }
            Step::Abort { side, flow } => {
                if let Some(ep) = self.apps.pick(*side, *flow) {
                    let (now, id) = (self.now, self.apps.endpoints[ep].flow);
                    if self.engine(*side).abort(now, id).is_ok() {
                        self.apps.endpoints[ep].dropped_by_app = true;
                    }
                }
            }
            Step::Discard { side, flow } => {
                if let Some(ep) = self.apps.pick(*side, *flow) {
                    let id = self.apps.endpoints[ep].flow;
                    self.engine(*side).discard(id);
                    let e = &mut self.apps.endpoints[ep];
                    if e.closed.is_some() {
                        e.drained = true;
                        e.dropped_by_app = true;
                    }
                }
            }
            Step::Forge(f) => self.forge(f),
            Step::Raw { how, udp, bytes } => {
                let to = if how & 1 == 0 { Side::A } else { Side::B };
                let from = if how & 2 != 0 {
                    ip(to.peer())
                } else {
                    ATTACKER_IP
                };
                self.attack(to, from, *udp, bytes);
            }
        }
        self.pump();
    }

    /// In-flight index for a step's `index`, if anything is in flight.
    fn index(&self, index: u16) -> Option<usize> {
        (!self.in_flight.is_empty()).then(|| usize::from(index) % self.in_flight.len())
    }

    fn deliver(&mut self, p: &InFlight) {
        let now = self.now;
        let from = ip(p.to.peer());
        self.engine(p.to).handle_datagram(
            now,
            Datagram {
                remote_ip: from,
                src_port: p.src_port,
                dst_port: p.dst_port,
                payload: &p.bytes,
            },
        );
    }

    /// Reads up to `max` messages of endpoint `ep` and checks each.
    fn read(&mut self, ep: usize, max: usize) {
        let (side, id) = (self.apps.endpoints[ep].side, self.apps.endpoints[ep].flow);
        for _ in 0..max {
            match self.engine(side).recv(id) {
                Ok(Some(msg)) => self.apps.on_message(ep, &msg, ASSERT_NO_INJECTION, ip),
                Ok(None) | Err(_) => {
                    if self.apps.endpoints[ep].closed.is_some() {
                        self.apps.endpoints[ep].drained = true;
                    }
                    break;
                }
            }
        }
    }

    /// A token guess the attacker may use: one seen on the honest path is altered.
    fn blind(&self, mut token: u64) -> u64 {
        while token != 0 && self.honest_tokens.contains(&token) {
            token = token.wrapping_add(1);
        }
        token
    }

    /// Feeds an attacker datagram to `to`, remembering which flow key it names.
    fn attack(&mut self, to: Side, from: Ipv4Addr, udp: (u16, u16), bytes: &[u8]) {
        let mut bytes = bytes.to_vec();
        if let Ok(p) = Packet::new_checked(&bytes[..]) {
            self.apps
                .tainted
                .insert((to, from, p.src_port(), p.dst_port()));
            // Raw bytes must not carry an honest token either (header or handshake block).
            let token = p.token();
            let hs = p
                .handshake()
                .map(|h| (h.token, p.header_len() - wire::HANDSHAKE_LEN));
            let blind = self.blind(token);
            if blind != token {
                bytes[TOKEN_AT].copy_from_slice(&blind.to_be_bytes());
            }
            if let Some((t, at)) = hs {
                let blind = self.blind(t);
                if blind != t {
                    let at = at + HANDSHAKE_TOKEN_AT;
                    bytes[at..at + 8].copy_from_slice(&blind.to_be_bytes());
                }
            }
        }
        let bytes = &bytes[..];
        self.outcome.attacker_packets += 1;
        if from == ATTACKER_IP {
            self.outcome.attacker_bytes.1 += bytes.len() as u64;
        }
        let now = self.now;
        self.engine(to).handle_datagram(
            now,
            Datagram {
                remote_ip: from,
                src_port: udp.0,
                dst_port: udp.1,
                payload: bytes,
            },
        );
    }

    /// Builds and sends an attacker packet from typed fields.
    fn forge(&mut self, f: &Forge) {
        let to = if f.how & 1 == 0 { Side::A } else { Side::B };
        let from = if f.how & 2 != 0 {
            ip(to.peer())
        } else {
            ATTACKER_IP
        };
        let udp = if f.how & 4 != 0 {
            let pool = config(to).udp_ports;
            (
                pool.nth(f.udp.0 % pool.count),
                pool.nth(f.udp.1 % pool.count),
            )
        } else {
            f.udp
        };
        // Machnet ports: those of a live flow of the target (the attacker knows both), or raw.
        let keys: Vec<_> = self.apps.order[to.index()]
            .iter()
            .filter_map(|&i| self.apps.endpoints[i].key)
            .collect();
        let (src_port, dst_port) = if f.ports_from < 128 && !keys.is_empty() {
            let k = keys[usize::from(f.ports_from) % keys.len()];
            (k.remote_port, k.local_port)
        } else {
            f.ports
        };
        // Sequence numbers near what the flow's real sender last used, or raw.
        let (seq0, ack0) = self
            .observed
            .get(&(to.peer(), src_port, dst_port))
            .copied()
            .unwrap_or((0, 0));
        let near = |on: bool, base: u32, v: u32| {
            if on {
                base.wrapping_add(i32::from(v as i16) as u32)
            } else {
                v
            }
        };
        let seq = near(f.near & 1 != 0, seq0, f.seq);
        let ack = near(f.near & 2 != 0, ack0, f.ack);
        let mut sack = SackList::new();
        for &(start, len) in &f.sack {
            let start = ack.wrapping_add(u32::from(start));
            sack.push(SackBlock {
                start,
                end: start.wrapping_add(u32::from(len)),
            });
        }
        let handshake = f.handshake.map(|h| Handshake {
            engine_count: h.engine_count,
            engine_id: h.engine_id,
            udp_port_base: h.udp_port_base,
            udp_port_count: h.udp_port_count,
            echo_path: UdpPair {
                src: h.echo_path.0,
                dst: h.echo_path.1,
            },
            reply_hint: UdpPair {
                src: h.reply_hint.0,
                dst: h.reply_hint.1,
            },
            attempt: h.attempt,
            max_message_len: h.max_message_len,
            max_datagram: h.max_datagram,
            token: self.blind(h.token),
            isn: h.isn,
        });
        let packet_type = PacketType::from_u8(f.packet_type % 6 + 1).expect("1..=6");
        let repr = Repr {
            packet_type,
            flags: f.flags & (wire::flags::FIRST | wire::flags::LAST | wire::flags::ACK_REQ),
            src_port,
            dst_port,
            seq,
            ack,
            window: f.window,
            ts_val: f.ts_val,
            ts_ecr: f.ts_ecr,
            msg_len: f.msg_len,
            sack,
            handshake,
            payload_len: f.payload.len() as u16,
            token: self.blind(f.token),
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf, &f.payload, f.how & 8 == 0);
        buf.truncate(n);
        self.attack(to, from, udp, &buf);
    }

    /// Lets both engines run due timers, collects their transmissions and events, checks bounds.
    fn pump(&mut self) {
        let now = self.now;
        for side in [Side::A, Side::B] {
            let e = &mut self.engines[side.index()];
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
            if let Some(t) = e.poll_timeout() {
                assert!(
                    t > now,
                    "{side:?}: a timer is still due after handle_timeout"
                );
            }
            let mut burst = 0;
            while let Some(t) = e.poll_transmit(now, &mut self.buf) {
                burst += 1;
                assert!(
                    burst <= MAX_BURST,
                    "{side:?}: endless output at one instant"
                );
                let bytes = &self.buf[..t.len];
                if t.remote_ip == ip(side.peer()) {
                    if let Ok(p) = Packet::new_checked(bytes) {
                        self.observed
                            .insert((side, p.src_port(), p.dst_port()), (p.seq(), p.ack()));
                        self.honest_tokens.insert(p.token());
                        if let Some(h) = p.handshake() {
                            self.honest_tokens.insert(h.token);
                        }
                    }
                    if self.in_flight.len() < MAX_IN_FLIGHT {
                        self.in_flight.push(InFlight {
                            to: side.peer(),
                            src_port: t.src_port,
                            dst_port: t.dst_port,
                            bytes: bytes.to_vec(),
                        });
                    }
                } else if t.remote_ip == ATTACKER_IP {
                    let (sent, received) = &mut self.outcome.attacker_bytes;
                    *sent += t.len as u64;
                    assert!(
                        !ASSERT_ANTI_AMPLIFICATION
                            || self.attacker_validated
                            || *sent <= AMPLIFICATION_LIMIT * *received,
                        "{side:?}: sent {sent} bytes to an unvalidated address that sent {received}"
                    );
                }
            }
            while let Some(ev) = e.poll_event() {
                match ev {
                    Event::Connected { .. } => self.outcome.connected += 1,
                    Event::Accepted { flow, .. }
                        if e.flow_key(flow).is_some_and(|k| k.remote_ip == ATTACKER_IP) =>
                    {
                        self.attacker_validated = true;
                    }
                    Event::Closed { reason, .. } => self.outcome.closed.push(format!("{reason:?}")),
                    _ => {}
                }
                self.apps.on_event(side, ev, |f| e.flow_key(f));
            }
        }
        self.check_bounds();
    }

    /// The memory bounds of both engines.
    fn check_bounds(&self) {
        for side in [Side::A, Side::B] {
            let e = &self.engines[side.index()];
            let c = e.config();
            let flows = e.flow_count();
            assert!(flows <= c.max_flows, "{side:?}: {flows} flows > max_flows");
            assert!(
                e.held_bytes() <= c.memory_budget,
                "{side:?}: held {} > memory budget",
                e.held_bytes()
            );
            assert!(e.stats().held_bytes_peak <= c.memory_budget as u64);
            assert!(
                e.send_buffered_bytes() <= flows * c.send_buffer,
                "{side:?}: {} bytes send-buffered by {flows} flows",
                e.send_buffered_bytes()
            );
            for &i in &self.apps.order[side.index()] {
                if let Some(b) = e.flow_unacked_bytes(self.apps.endpoints[i].flow) {
                    assert!(b <= c.send_buffer, "{side:?}: a flow buffers {b} bytes");
                }
            }
            let undrained = self.apps.undrained_closed(side);
            assert!(
                e.leftover_bytes() <= undrained * c.memory_budget,
                "{side:?}: {} leftover bytes for {undrained} undrained flows",
                e.leftover_bytes()
            );
        }
    }

    /// Ends the run: the network heals (everything in flight is delivered, timers run until only
    /// keepalives are left, the apps read everything), then the completeness check.
    pub fn finish(mut self) -> Outcome {
        self.heal();
        self.outcome.delivered = self.apps.delivered;
        self.outcome.unchecked = self.apps.unchecked;
        for &reason in DropReason::ALL {
            let n: u64 = self
                .engines
                .iter()
                .map(|e| e.stats().drops_for(reason))
                .sum();
            if n > 0 {
                self.outcome.drops.push((reason.name(), n));
            }
        }
        self.outcome.memory_reclaims = self.engines.iter().map(|e| e.stats().memory_reclaims).sum();
        self.outcome
    }

    fn heal(&mut self) {
        for _ in 0..HEAL_ROUNDS {
            for p in std::mem::take(&mut self.in_flight) {
                self.deliver(&p);
            }
            for ep in 0..self.apps.endpoints.len() {
                self.read(ep, usize::MAX);
            }
            self.pump();
            if self.in_flight.is_empty() {
                let next = self
                    .engines
                    .iter_mut()
                    .filter_map(Engine::poll_timeout)
                    .min();
                match next {
                    // Keepalives run forever on open flows: stop once only they are left.
                    Some(t) if t <= self.now + config(Side::A).rto.max => {
                        self.now = self.now.max(t)
                    }
                    _ => break,
                }
            }
        }
        self.apps.check_graceful_complete(ASSERT_NO_INJECTION, ip);
    }
}

/// Encryption configurations of A and B, each allowing the other, from fixed keys.
fn encryption_pair() -> [std::sync::Arc<machnet_core::seal::Encryption>; 2] {
    use machnet_core::seal::{Encryption, PeerKey, StaticKey};
    let key = |b: u8| StaticKey::from_private(&[b; 32]).expect("32 bytes");
    let (ka, kb) = (key(0xA1), key(0xB2));
    let enc = |own: &StaticKey, peer_ip, peer: &StaticKey| {
        std::sync::Arc::new(Encryption::new(
            own.clone(),
            vec![PeerKey {
                ip: peer_ip,
                public: peer.public(),
            }],
        ))
    };
    [enc(&ka, B_IP, &kb), enc(&kb, A_IP, &ka)]
}
