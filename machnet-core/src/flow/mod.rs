//! One connection: handshake phases, reliable delivery, flow and congestion control, timers
//! (PROTOCOL.md §5–§8). The engine demultiplexes packets to flows and drives their output.

pub(crate) mod recv;
pub(crate) mod send;
mod timer;

use std::collections::VecDeque;

use bytes::Bytes;
use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::cc::{CongestionControl, Controller};
use crate::config::{EngineConfig, PortPool};
use crate::engine::api::{CloseReason, Event, FlowId, FlowKey, SendError, Transmit};
use crate::engine::stats::{DropReason, EngineStats, FlowStats};
use crate::rss;
use crate::rtt::RttEstimator;
use crate::seal::{self, Initiator, Sealer};
use crate::seq;
use crate::time::Instant;
use crate::wire::{self, flags, Handshake, PacketType, Repr, SackList, UdpPair};

use recv::{Arrival, MemoryView, RecvState};
use send::{AcceptError, Payload, SendState};
use timer::{Timer, TimerTable};

/// Where a flow is in its life (PROTOCOL.md §8). The deadlines of each phase are in the flow's
/// [`TimerTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Client: SYN batch `attempt` sent, waiting for a SYN-ACK on this engine.
    SynSent { attempt: u8 },
    /// Server: SYN accepted, SYN-ACKs sprayed, waiting for the client's handshake ACK, which
    /// tells us which of our SYN-ACK paths reached the client's engine.
    SynReceived { answered_attempt: u8 },
    /// Data flows both ways (also while either side is closing).
    Established,
    /// Finished; kept briefly to acknowledge a retransmitted FIN. Invisible to the application.
    Lingering,
}

/// How the flow ends; set by the flow, acted on by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Death {
    /// Reported in `Event::Closed`.
    pub(crate) reason: CloseReason,
    /// Report `Event::Closed` (false for flows the application never saw or already closed).
    pub(crate) notify: bool,
    /// Send an RST to the peer.
    pub(crate) send_rst: bool,
}

/// A control packet queued by the engine or a flow: no payload, sent ahead of flow output.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CtrlPacket {
    /// The peer host.
    pub(crate) remote_ip: std::net::Ipv4Addr,
    /// UDP ports to send it on (ours, theirs).
    pub(crate) path: UdpPair,
    /// The header to emit.
    pub(crate) repr: Repr,
    /// The payload of a sealed control packet (an encrypted flow's RST, §12.3): packet number
    /// and tag, computed over `repr` when the packet was made.
    pub(crate) sealed: Option<[u8; seal::OVERHEAD]>,
}

impl CtrlPacket {
    /// An unsealed control packet.
    pub(crate) fn plain(remote_ip: std::net::Ipv4Addr, path: UdpPair, repr: Repr) -> CtrlPacket {
        CtrlPacket {
            remote_ip,
            path,
            repr,
            sealed: None,
        }
    }

    /// Writes the packet into `buf`; the datagram to send.
    pub(crate) fn emit(&self, buf: &mut [u8], with_checksum: bool) -> Transmit {
        let payload: &[u8] = self.sealed.as_ref().map_or(&[], |t| &t[..]);
        let len = self.repr.emit(buf, payload, with_checksum);
        Transmit::new(self.remote_ip, self.path, len)
    }
}

/// Batch of SYNs or SYN-ACKs still to be sprayed.
#[derive(Debug, Clone, Default)]
struct Spray {
    remaining: u32,
    /// Size of the batch.
    total: u32,
    /// Paths to use, one packet each, instead of random ones (RSS hint or oracle); empty: spray.
    fixed_paths: Vec<UdpPair>,
}

impl Spray {
    /// `count` packets on random paths.
    fn random(count: u32) -> Spray {
        Spray {
            remaining: count,
            total: count,
            fixed_paths: Vec::new(),
        }
    }

    /// One packet on each of `paths`.
    fn fixed(paths: Vec<UdpPair>) -> Spray {
        let count = paths.len() as u32;
        Spray {
            remaining: count,
            total: count,
            fixed_paths: paths,
        }
    }
}

/// Control packets (RSTs) waiting to be sent are capped so that a flood of packets for unknown
/// flows cannot grow memory; beyond the cap, replies are simply not sent.
pub(crate) const CTRL_QUEUE_CAP: usize = 4096;

/// At most this many times the bytes an unvalidated address sent us may go back to it
/// (PROTOCOL.md §5.2, as QUIC's RFC 9000 §8.1).
pub(crate) const AMPLIFICATION_LIMIT: usize = 3;
/// Length of every SYN-ACK: fixed header and handshake block.
pub(crate) const SYNACK_LEN: usize = wire::HEADER_LEN + wire::HANDSHAKE_LEN;
/// Most SYN-ACKs one half-open flow saves up allowance for.
const MAX_SYNACK_BATCH: u32 = 512;

/// Zero bytes after a SYN's header (PROTOCOL.md §5.2): enough that the first SYN to reach the
/// server pays, at [`AMPLIFICATION_LIMIT`], for the whole SYN-ACK batch of `attempt` that our
/// engine count asks for, within the datagram every host accepts (later SYNs of the batch that
/// reach it pay for the rest when that is too large).
pub(crate) fn syn_padding(cfg: &EngineConfig, attempt: u8) -> u16 {
    let h = &cfg.handshake;
    let batch =
        rss::spray_batch_for_attempt(cfg.engine_count, h.success_target, attempt, h.max_batch);
    // An encrypted server's SYN-ACKs carry the second Noise message (§12.2).
    let synack = SYNACK_LEN + cfg.encryption.as_ref().map_or(0, |_| seal::MSG2_LEN);
    let want = (batch as usize * synack).div_ceil(AMPLIFICATION_LIMIT);
    let cap = usize::from(cfg.max_udp_payload.min(wire::DEFAULT_MAX_DATAGRAM));
    // The SYN's own header is as long as a plaintext SYN-ACK.
    (want.min(cap).saturating_sub(SYNACK_LEN)) as u16
}

/// Tail-loss probes sent without progress before only the retransmission timer remains.
const MAX_TAIL_PROBES: u32 = 2;

/// Everything a flow needs from its engine while it runs.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a EngineConfig,
    pub(crate) rng: &'a mut ChaCha8Rng,
    pub(crate) events: &'a mut VecDeque<Event>,
    pub(crate) stats: &'a mut EngineStats,
    pub(crate) ctrl: &'a mut VecDeque<CtrlPacket>,
    pub(crate) answer_budget: &'a mut crate::engine::budget::SprayBudget,
    pub(crate) id: FlowId,
    /// Set by the flow when it refused data within its fair share because the engine's memory
    /// budget is exhausted: the engine then reclaims memory from a flow above its share.
    pub(crate) memory_starved: bool,
}

/// One connection's protocol state. Only the engine drives it; its fields are private and the
/// engine reads what it needs through methods.
pub(crate) struct Flow {
    key: FlowKey,
    phase: Phase,
    is_client: bool,
    iss: u32,
    irs: u32,
    send: SendState,
    recv: RecvState,
    cc: Controller,
    rtt: RttEstimator,
    /// UDP (our source, their destination) pair known to reach the peer's engine.
    tx_path: UdpPair,
    /// Client: the server has shown it knows our path; until then our packets carry a
    /// handshake block echoing `confirm_echo`.
    path_confirmed: bool,
    confirm_echo: UdpPair,
    peer_pool: PortPool,
    peer_engines: u16,
    /// Largest message the peer accepts (from its handshake block).
    peer_max_message: u32,
    /// Largest datagram of this flow, both ways: the smaller of the two ends' limits, agreed in
    /// the handshake (PROTOCOL.md §6.4). DATA with more payload than it allows is dropped.
    datagram: u16,
    reply_hint: UdpPair,
    spray: Spray,
    /// When the last SYN/SYN-ACK batch started.
    last_spray: Option<Instant>,
    ack_pending: bool,
    probe_pending: bool,
    /// The timestamp our next packet echoes (PROTOCOL.md §6.3).
    ts_recent: u32,
    /// New data arrived since we last sent a packet: `ts_recent` holds the `ts_val` of the first
    /// such packet and stays until we send.
    echo_held: bool,
    peer_window: u32,
    window_ack: u32,
    window_ts: u32,
    timers: TimerTable,
    /// Tail-loss probes sent since the last progress.
    tail_probes: u32,
    backoff: u32,
    consecutive_timeouts: u32,
    /// Our timestamp at a retransmission timeout (the first of a series), kept until the next
    /// acknowledgement of new data tells whether it was spurious (PROTOCOL.md §6.3): packets
    /// sent before it carry older timestamps.
    timeout_ts: Option<u32>,
    death: Option<Death>,
    peer_closed_reported: bool,
    stats: FlowStats,
    /// Our flow token (PROTOCOL.md §4.1): every packet the peer sends us must carry it.
    rx_token: u64,
    /// The peer's flow token, carried by every packet we send (0 until the handshake told us).
    tx_token: u64,
    /// Server, half-open: bytes of SYN-ACKs we may still send to the unvalidated client — three
    /// times the bytes of its SYNs that reached this flow, less what we sent (§5.2).
    synack_allowance: usize,
    /// Encryption (PROTOCOL.md §12), on for every flow of an engine configured with it; boxed,
    /// so a plaintext flow carries one null pointer.
    crypto: Option<Box<FlowCrypto>>,
}

/// An encrypted flow's handshake and keys.
#[derive(Default)]
struct FlowCrypto {
    /// Client, until the SYN-ACK: the Noise handshake, whose first message every SYN carries.
    initiator: Option<Initiator>,
    /// Server: the second Noise message, carried by every SYN-ACK of the flow.
    noise_reply: Option<[u8; seal::MSG2_LEN]>,
    /// Packet protection, once the handshake gave keys.
    sealer: Option<Sealer>,
    /// The peer's stateless-reset token, from its handshake message (§12.4).
    peer_reset: Option<seal::ResetToken>,
    /// Client: the cookie of the server's stateless answer to our sealed SYN, echoed in our
    /// SYNs from then on (§12.5).
    retry: Option<seal::RetryCookie>,
}

/// What an encrypted flow starts with (PROTOCOL.md §12.2).
pub(crate) enum FlowKeys {
    /// Client: the handshake it starts.
    Initiating(Initiator),
    /// Server: the keys, the answer to send in SYN-ACKs and the client's reset token.
    Answered(Box<seal::Response>),
}

impl Flow {
    fn base(
        cfg: &EngineConfig,
        key: FlowKey,
        iss: u32,
        irs: u32,
        is_client: bool,
        rx_token: u64,
    ) -> Flow {
        let frag = cfg.max_fragment_payload();
        Flow {
            key,
            phase: Phase::Established,
            is_client,
            iss,
            irs,
            send: SendState::new(iss.wrapping_add(1), cfg.send_buffer, frag),
            recv: RecvState::new(
                irs.wrapping_add(1),
                cfg.max_message_len as usize,
                cfg.recv_buffer,
                cfg.max_window_packets,
                frag,
            ),
            cc: cfg.congestion.build(),
            rtt: RttEstimator::new(),
            tx_path: UdpPair::NONE,
            path_confirmed: !is_client,
            confirm_echo: UdpPair::NONE,
            peer_pool: cfg.remote_udp_ports(),
            peer_engines: cfg.engine_count,
            peer_max_message: cfg.max_message_len,
            datagram: wire::agreed_datagram(cfg.max_udp_payload, 0),
            reply_hint: UdpPair::NONE,
            spray: Spray::default(),
            last_spray: None,
            ack_pending: false,
            probe_pending: false,
            ts_recent: 0,
            echo_held: false,
            peer_window: 1,
            window_ack: iss.wrapping_add(1),
            window_ts: 0,
            timers: TimerTable::default(),
            tail_probes: 0,
            backoff: 0,
            timeout_ts: None,
            consecutive_timeouts: 0,
            death: None,
            peer_closed_reported: false,
            stats: FlowStats::default(),
            rx_token,
            tx_token: 0,
            synack_allowance: 0,
            crypto: cfg.encryption.is_some().then(Box::default),
        }
    }

    fn set_keys(&mut self, keys: Option<FlowKeys>) {
        let (Some(keys), Some(c)) = (keys, self.crypto.as_deref_mut()) else {
            return;
        };
        match keys {
            FlowKeys::Initiating(i) => c.initiator = Some(i),
            FlowKeys::Answered(r) => {
                let r = *r;
                c.sealer = Some(r.sealer);
                c.noise_reply = Some(r.msg2);
                c.peer_reset = Some(r.client_reset);
            }
        }
    }

    /// The flow's packet protection, if it has keys.
    pub(crate) fn sealer_mut(&mut self) -> Option<&mut Sealer> {
        self.crypto.as_deref_mut()?.sealer.as_mut()
    }

    /// The peer's stateless-reset token, once its handshake message gave it.
    pub(crate) fn peer_reset(&self) -> Option<&seal::ResetToken> {
        self.crypto.as_deref()?.peer_reset.as_ref()
    }

    /// Whether the flow is encrypted (PROTOCOL.md §12).
    pub(crate) fn is_encrypted(&self) -> bool {
        self.crypto.is_some()
    }

    /// Whether the flow is still in its handshake (an encrypted flow then accepts an unsealed
    /// RST with its token: a refusal, or a client resetting our duplicate half-open flow).
    pub(crate) fn in_handshake(&self) -> bool {
        matches!(
            self.phase,
            Phase::SynSent { .. } | Phase::SynReceived { .. }
        )
    }

    /// A client flow that sprays its first SYN batch (PROTOCOL.md §5.1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_client(
        cfg: &EngineConfig,
        key: FlowKey,
        iss: u32,
        rx_token: u64,
        now: Instant,
        peer_pool: PortPool,
        peer_engines: u16,
        syn_paths: Vec<UdpPair>,
        reply_hint: UdpPair,
        keys: Option<FlowKeys>,
    ) -> Flow {
        let mut f = Flow::base(cfg, key, iss, 0, true, rx_token);
        f.set_keys(keys);
        f.peer_pool = peer_pool;
        f.peer_engines = peer_engines;
        f.reply_hint = reply_hint;
        f.phase = Phase::SynSent { attempt: 0 };
        f.timers
            .set(Timer::Handshake, now + cfg.handshake.syn_timeout);
        f.spray = if syn_paths.is_empty() {
            Spray::random(Self::batch(cfg, peer_engines, 0))
        } else {
            Spray::fixed(syn_paths)
        };
        f
    }

    /// A server flow for an accepted SYN: sprays SYN-ACKs (PROTOCOL.md §5.1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_server(
        cfg: &EngineConfig,
        key: FlowKey,
        iss: u32,
        rx_token: u64,
        syn: &Repr,
        hs: &Handshake,
        syn_path: UdpPair,
        now: Instant,
        synack_path: Option<UdpPair>,
        keys: Option<FlowKeys>,
    ) -> Flow {
        let mut f = Flow::base(cfg, key, iss, syn.seq, false, rx_token);
        f.set_keys(keys);
        f.learn_peer(hs, cfg);
        f.add_synack_allowance(syn);
        f.ts_recent = syn.ts_val;
        f.peer_window = syn.window;
        f.window_ack = f.send.una;
        f.window_ts = syn.ts_val;
        f.phase = Phase::SynReceived {
            answered_attempt: hs.attempt,
        };
        f.timers
            .set(Timer::Handshake, now + cfg.handshake.half_open_timeout);
        // SYN-ACKs echo the SYN's path: it is known to reach this engine.
        f.confirm_echo = syn_path;
        f.start_synack_spray(cfg, hs.attempt, synack_path);
        f
    }

    /// A server flow established by a handshake ACK that carried a valid SYN cookie (PROTOCOL.md
    /// §5.5): everything a half-open flow would have learned comes from that packet's handshake
    /// block (`hs`, its pool already cut to the reply pool) and header; the SYN-ACK we sent
    /// without keeping state promised `window`.
    pub(crate) fn new_cookie_server(
        cfg: &EngineConfig,
        key: FlowKey,
        cookie: crate::engine::cookie::Cookie,
        hs: &Handshake,
        ack: &Repr,
        window: u32,
        now: Instant,
    ) -> Flow {
        let mut f = Flow::base(cfg, key, cookie.isn, hs.isn, false, cookie.token);
        f.learn_peer(hs, cfg);
        f.recv.honour_window(window);
        f.tx_path = hs.echo_path;
        f.ts_recent = ack.ts_val;
        f.peer_window = ack.window;
        f.window_ack = ack.ack;
        f.window_ts = ack.ts_val;
        f.establish(now, cfg);
        f
    }

    /// The window a stateless SYN-ACK promises (what a new flow's receive buffer holds).
    pub(crate) fn cookie_window(cfg: &EngineConfig) -> u32 {
        (cfg.recv_buffer.div_ceil(cfg.max_fragment_payload().max(1)))
            .min(cfg.max_window_packets as usize) as u32
    }

    /// A SYN of our client reached this half-open flow: it may be answered with up to three
    /// times its bytes (PROTOCOL.md §5.2, anti-amplification).
    fn add_synack_allowance(&mut self, syn: &Repr) {
        let cap = self.synack_len() * MAX_SYNACK_BATCH as usize;
        self.synack_allowance =
            (self.synack_allowance + AMPLIFICATION_LIMIT * syn.buffer_len()).min(cap);
    }

    /// Length of this flow's SYN-ACKs: an encrypted one carries the second Noise message.
    fn synack_len(&self) -> usize {
        let reply = self.crypto.as_deref().and_then(|c| c.noise_reply);
        SYNACK_LEN + reply.map_or(0, |r| r.len())
    }

    fn batch(cfg: &EngineConfig, engines: u16, attempt: u8) -> u32 {
        let h = &cfg.handshake;
        rss::spray_batch_for_attempt(engines, h.success_target, attempt, h.max_batch)
    }

    fn start_synack_spray(&mut self, cfg: &EngineConfig, attempt: u8, path: Option<UdpPair>) {
        self.spray = match path {
            Some(p) => Spray::fixed(vec![p]),
            None => Spray::random(Self::batch(cfg, self.peer_engines, attempt)),
        };
    }

    fn learn_peer(&mut self, hs: &Handshake, cfg: &EngineConfig) {
        // Both ends compute the same limit from the two announcements (PROTOCOL.md §6.4); nothing
        // has been cut into fragments yet, so the new size applies to every packet of the flow.
        self.datagram = wire::agreed_datagram(cfg.max_udp_payload, hs.max_datagram);
        let overhead = if self.is_encrypted() {
            seal::OVERHEAD
        } else {
            0
        };
        let fragment = crate::config::fragment_payload(self.datagram).saturating_sub(overhead);
        self.send.set_fragment_payload(fragment);
        self.recv.set_fragment_payload(fragment);
        self.peer_pool = PortPool {
            base: hs.udp_port_base,
            count: hs.udp_port_count,
        };
        // An unvalidated claim sizes nothing beyond what we support (§5.2).
        self.peer_engines = hs.engine_count.min(crate::MAX_ENGINES);
        self.peer_max_message = hs.max_message_len;
        self.tx_token = hs.token;
    }

    /// What the peer's handshake told us about its host: engine count and UDP pool (the
    /// engine's peer cache learns them once the handshake is validated, §5.4).
    pub(crate) fn peer_host(&self) -> (u16, PortPool) {
        (self.peer_engines, self.peer_pool)
    }

    /// Whether `repr` carries the token this flow expects (PROTOCOL.md §4.1). An RST may also
    /// carry the peer's own token: a peer that lost the flow echoes the token of the packet it
    /// answers, which only the two ends (and on-path observers) know (§8.3).
    pub(crate) fn token_ok(&self, repr: &Repr) -> bool {
        match repr.packet_type {
            // SYNs carry no token; a retried SYN proves itself by its handshake block.
            PacketType::Syn => true,
            PacketType::Rst => {
                repr.token == self.rx_token || (self.tx_token != 0 && repr.token == self.tx_token)
            }
            _ => repr.token == self.rx_token,
        }
    }

    /// The flow's identity.
    pub(crate) fn key(&self) -> FlowKey {
        self.key
    }

    /// How the flow ends, once it has.
    pub(crate) fn death(&self) -> Option<Death> {
        self.death
    }

    /// A server flow still waiting for the client's handshake ACK.
    pub(crate) fn is_half_open(&self) -> bool {
        matches!(self.phase, Phase::SynReceived { .. })
    }

    /// Message bytes accepted from the application and not yet acknowledged.
    pub(crate) fn send_buffered(&self) -> usize {
        self.send.buffered()
    }

    /// Bytes held for the application (unread, partial and out-of-order data).
    pub(crate) fn held_bytes(&self) -> usize {
        self.recv.held_bytes()
    }

    /// Tells the receive side how much of the engine's memory budget it may use.
    pub(crate) fn set_memory(&mut self, view: MemoryView) {
        self.recv.set_memory(view);
    }

    /// Length of the next complete message, if any.
    pub(crate) fn peek_len(&self) -> Option<usize> {
        self.recv.peek_len()
    }

    /// Takes every complete message not yet read (the flow is ending).
    pub(crate) fn take_unread(&mut self) -> VecDeque<Bytes> {
        self.recv.take_ready()
    }

    /// Takes the next complete message; a window that reopens is announced.
    pub(crate) fn read(&mut self, now: Instant, ctx: &mut Ctx) -> Option<Bytes> {
        let msg = self.recv.read()?;
        self.on_read(now, ctx);
        Some(msg)
    }

    /// Queues one non-empty message from the application; `engine_limit` is this side's
    /// maximum message length, the peer's announced maximum applies too.
    pub(crate) fn queue_message(&mut self, msg: Bytes, engine_limit: u32) -> Result<(), SendError> {
        let max = self.peer_max_message.min(engine_limit) as usize;
        if msg.len() > max {
            return Err(SendError::MessageTooLarge {
                len: msg.len(),
                max,
            });
        }
        self.send.accept(msg).map_err(|e| match e {
            AcceptError::Closed => SendError::Closed,
            AcceptError::BufferFull => SendError::BufferFull,
        })
    }

    /// Whether the application may use this flow (not half-open, not finished).
    pub(crate) fn is_visible(&self) -> bool {
        matches!(self.phase, Phase::SynSent { .. } | Phase::Established)
    }

    pub(crate) fn die(&mut self, reason: CloseReason, notify: bool, send_rst: bool) {
        if self.death.is_none() {
            self.death = Some(Death {
                reason,
                notify,
                send_rst,
            });
        }
    }

    /// Aborts the flow on the application's request.
    pub(crate) fn abort(&mut self) {
        let established = self.phase == Phase::Established;
        self.die(CloseReason::Aborted, true, established);
    }

    /// Graceful close: FIN after the queued data (idempotent).
    pub(crate) fn close(&mut self) {
        match self.phase {
            Phase::SynSent { .. } => self.die(CloseReason::Aborted, true, false),
            Phase::Established => self.send.fin_queued = true,
            _ => {}
        }
    }

    // ----------------------------------------------------------------------------------------
    // Input
    // ----------------------------------------------------------------------------------------

    /// Handles a packet routed to this flow. `path` is the datagram's UDP (src, dst) as received.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        repr: &Repr,
        payload: &[u8],
        path: UdpPair,
        ctx: &mut Ctx,
    ) -> Result<(), DropReason> {
        // Larger than the two ends agreed (PROTOCOL.md §6.4): never delivered, whatever it
        // carries, so a peer cannot make us hold more per window slot than the window allows.
        if repr.packet_type == PacketType::Data
            && repr.header_len() + payload.len() > usize::from(self.datagram)
        {
            return Err(DropReason::Oversize);
        }
        if !self.token_ok(repr) {
            return Err(DropReason::BadToken);
        }
        match self.phase {
            Phase::SynSent { .. } => self.handle_syn_sent(now, repr, payload, path, ctx),
            Phase::SynReceived {
                answered_attempt, ..
            } => self.handle_syn_received(now, repr, payload, path, answered_attempt, ctx),
            Phase::Established => self.handle_established(now, repr, payload, path, ctx),
            Phase::Lingering => self.handle_lingering(repr, ctx.cfg),
        }
    }

    /// An ICMP port unreachable quoting a packet of ours with `token` on UDP `path`
    /// (PROTOCOL.md §8.4): an established flow whose token and path it names ends as if the
    /// peer had reset it; a lingering one is removed silently. Flows in their handshake ignore
    /// it: their SYNs carry no token, and a SYN sprayed to one port nobody binds says nothing
    /// about the others. Returns whether the flow ended.
    pub(crate) fn handle_unreachable(&mut self, token: u64, path: UdpPair) -> bool {
        let ours = self.tx_token != 0 && token == self.tx_token && path == self.tx_path;
        if !ours || self.death.is_some() {
            return false;
        }
        match self.phase {
            Phase::Established => self.die(CloseReason::Reset, true, false),
            Phase::Lingering => self.die(CloseReason::Reset, false, false),
            Phase::SynSent { .. } | Phase::SynReceived { .. } => return false,
        }
        true
    }

    fn handle_syn_sent(
        &mut self,
        now: Instant,
        repr: &Repr,
        payload: &[u8],
        path: UdpPair,
        ctx: &mut Ctx,
    ) -> Result<(), DropReason> {
        match repr.packet_type {
            PacketType::Rst if repr.ack == self.iss.wrapping_add(1) => {
                self.die(CloseReason::Refused, true, false);
                Ok(())
            }
            PacketType::Rst => Err(DropReason::RstRejected),
            PacketType::SynAck if repr.ack == self.iss.wrapping_add(1) => {
                let hs = repr
                    .handshake
                    .expect("parse guarantees a handshake block on SYN-ACK");
                let cfg = ctx.cfg;
                // The echo must be one of our SYNs' paths: our pool to the peer's pool.
                let peer_pool = PortPool {
                    base: hs.udp_port_base,
                    count: hs.udp_port_count,
                };
                if !cfg.udp_ports.contains(hs.echo_path.src)
                    || !peer_pool.contains(hs.echo_path.dst)
                {
                    return Err(DropReason::StaleHandshake);
                }
                if let Some(c) = self.crypto.as_deref_mut() {
                    if repr.flags & flags::SEALED == 0 {
                        // A stateless answer of a loaded server (§12.5): our SYNs echo its
                        // cookie from now on, starting with a batch right away.
                        return self.take_retry(&hs, ctx);
                    }
                    // The server's answer completes the Noise handshake (§12.2). It reached us
                    // with our token, so a failure means it was changed on path or comes from an
                    // impersonator (a server with another key cannot read our SYN and refuses it).
                    let Some(initiator) = c.initiator.take() else {
                        return Err(DropReason::StaleHandshake);
                    };
                    match initiator.finish(payload) {
                        Ok((sealer, reset)) => {
                            c.sealer = Some(sealer);
                            c.peer_reset = Some(reset);
                        }
                        Err(_) => {
                            self.die(CloseReason::PeerNotAuthenticated, true, false);
                            return Err(DropReason::PeerNotAllowed);
                        }
                    }
                } else if repr.flags & flags::SEALED != 0 {
                    return Err(DropReason::SealMismatch);
                }
                self.irs = repr.seq;
                let memory = self.recv.memory();
                self.recv = RecvState::new(
                    repr.seq.wrapping_add(1),
                    cfg.max_message_len as usize,
                    cfg.recv_buffer,
                    cfg.max_window_packets,
                    cfg.max_fragment_payload(),
                );
                self.recv.set_memory(memory);
                self.learn_peer(&hs, cfg);
                // The SYN advertised a full window relative to the peer's first sequence number.
                self.recv.advertise();
                if self.send.largest_queued() > hs.max_message_len as usize {
                    // Queued before the peer's limit was known; it can never be delivered.
                    self.tx_path = hs.echo_path;
                    self.die(CloseReason::MessageTooLarge, true, true);
                    return Ok(());
                }
                self.tx_path = hs.echo_path;
                // The server needs to learn which of its SYN-ACK paths reached us.
                self.confirm_echo = path;
                self.path_confirmed = false;
                self.peer_window = repr.window;
                self.window_ack = repr.ack;
                self.window_ts = repr.ts_val;
                self.ts_recent = repr.ts_val;
                if let Some(sample) = rtt_sample(now, repr.ts_ecr) {
                    self.rtt.update(sample);
                }
                self.spray = Spray::default();
                self.establish(now, ctx.cfg);
                self.probe_pending = true;
                self.timers.set(Timer::Rto, now + self.rto(ctx.cfg));
                ctx.stats.connects_completed += 1;
                ctx.events.push_back(Event::Connected { flow: ctx.id });
                Ok(())
            }
            PacketType::SynAck => Err(DropReason::StaleHandshake),
            _ => Err(DropReason::StaleHandshake),
        }
    }

    /// Client, encrypted: a plaintext SYN-ACK is a retry (§12.5). Its cookie goes into our next
    /// SYNs; a batch of them leaves now. A repeated cookie (the rest of its batch) is ignored.
    fn take_retry(&mut self, hs: &Handshake, ctx: &mut Ctx) -> Result<(), DropReason> {
        let cookie = (hs.token, hs.isn);
        let Some(c) = self.crypto.as_deref_mut() else {
            return Err(DropReason::SealMismatch);
        };
        if c.retry == Some(cookie) {
            return Err(DropReason::DuplicateHandshake);
        }
        c.retry = Some(cookie);
        let Phase::SynSent { attempt } = self.phase else {
            return Err(DropReason::StaleHandshake);
        };
        self.spray = Spray::random(Self::batch(ctx.cfg, self.peer_engines, attempt));
        self.timers.stop(Timer::SprayPause);
        ctx.stats.syn_batches += 1;
        Ok(())
    }

    fn handle_syn_received(
        &mut self,
        now: Instant,
        repr: &Repr,
        payload: &[u8],
        path: UdpPair,
        answered_attempt: u8,
        ctx: &mut Ctx,
    ) -> Result<(), DropReason> {
        match repr.packet_type {
            PacketType::Syn => {
                let hs = repr
                    .handshake
                    .expect("parse guarantees a handshake block on SYN");
                if repr.seq != self.irs {
                    return Err(DropReason::StaleHandshake);
                }
                if hs.token != self.tx_token {
                    return Err(DropReason::BadToken);
                }
                // Answers go only to the pool we accepted, which holds the first SYN's port.
                if !self.peer_pool.contains(path.src) {
                    return Err(DropReason::StaleHandshake);
                }
                // Another SYN of our client's batches: it pays for more SYN-ACKs.
                self.add_synack_allowance(repr);
                if hs.attempt <= answered_attempt || self.spray.remaining > 0 {
                    return Err(DropReason::DuplicateHandshake);
                }
                // Answer at most one retry per SYN timeout: a forged stream of "retries" must not
                // turn one half-open flow into a SYN-ACK cannon.
                if self
                    .last_spray
                    .is_some_and(|t| now.saturating_since(t) < ctx.cfg.handshake.syn_timeout)
                {
                    return Err(DropReason::DuplicateHandshake);
                }
                self.ts_recent = repr.ts_val;
                // The client retried: its SYN-ACKs missed. Answer the new attempt.
                self.phase = Phase::SynReceived {
                    answered_attempt: hs.attempt,
                };
                self.timers
                    .set(Timer::Handshake, now + ctx.cfg.handshake.half_open_timeout);
                self.confirm_echo = path;
                let hint = (!hs.reply_hint.is_none()).then_some(hs.reply_hint);
                self.start_synack_spray(ctx.cfg, hs.attempt, hint);
                Ok(())
            }
            PacketType::Rst if repr.seq == self.recv.nxt => {
                self.die(CloseReason::Reset, false, false);
                Ok(())
            }
            PacketType::Rst => Err(DropReason::RstRejected),
            PacketType::SynAck => Err(DropReason::StaleHandshake),
            PacketType::Ack | PacketType::Data | PacketType::Fin => {
                let Some(hs) = repr.handshake else {
                    return Err(DropReason::StaleHandshake);
                };
                if repr.ack != self.iss.wrapping_add(1)
                    || !ctx.cfg.udp_ports.contains(hs.echo_path.src)
                    || !self.peer_pool.contains(hs.echo_path.dst)
                {
                    return Err(DropReason::StaleHandshake);
                }
                self.tx_path = hs.echo_path;
                self.spray = Spray::default();
                self.establish(now, ctx.cfg);
                ctx.stats.accepts_completed += 1;
                ctx.events.push_back(Event::Accepted {
                    flow: ctx.id,
                    // A server flow's local port is the listening port that accepted it.
                    listen_port: self.key.local_port,
                });
                self.handle_established(now, repr, payload, path, ctx)
            }
        }
    }

    fn handle_lingering(&mut self, repr: &Repr, cfg: &EngineConfig) -> Result<(), DropReason> {
        match repr.packet_type {
            PacketType::Fin | PacketType::Data => {
                self.ack_pending = true;
                Err(DropReason::Duplicate)
            }
            PacketType::Rst if repr.seq == self.recv.nxt => {
                self.die(CloseReason::Reset, false, false);
                Ok(())
            }
            PacketType::Rst => {
                self.challenge_rst(repr.seq, cfg);
                Err(DropReason::RstRejected)
            }
            _ => Err(DropReason::FlowClosing),
        }
    }

    fn handle_established(
        &mut self,
        now: Instant,
        repr: &Repr,
        payload: &[u8],
        path: UdpPair,
        ctx: &mut Ctx,
    ) -> Result<(), DropReason> {
        match repr.packet_type {
            PacketType::Syn => return Err(DropReason::DuplicateHandshake),
            PacketType::SynAck => {
                if repr.seq != self.irs && self.is_client && repr.ack == self.iss.wrapping_add(1) {
                    // Another server engine also accepted one of our SYNs: reset its half-open
                    // flow on the path its SYN-ACK proves reaches it (PROTOCOL.md §5.1).
                    if let Some(hs) = repr.handshake.filter(|_| ctx.ctrl.len() < CTRL_QUEUE_CAP) {
                        // Unsealed: we hold no keys of that engine's handshake (§12.4).
                        ctx.ctrl.push_back(CtrlPacket::plain(
                            self.key.remote_ip,
                            hs.echo_path,
                            rst_repr(
                                self.key.local_port,
                                self.key.remote_port,
                                self.iss.wrapping_add(1),
                                repr.seq.wrapping_add(1),
                                hs.token,
                            ),
                        ));
                    }
                    return Err(DropReason::StaleHandshake);
                }
                return Err(DropReason::DuplicateHandshake);
            }
            PacketType::Rst if repr.seq == self.recv.nxt => {
                if self.recv.fin_received && self.send.fin_acked_by_reset() {
                    // Both directions were finished; the peer just forgot the flow before our
                    // last ACK reached it. Not a failure: finish as a graceful close.
                    self.timers.stop(Timer::Rto);
                    self.check_finished(now, ctx);
                    if self.phase == Phase::Lingering {
                        self.die(CloseReason::Graceful, false, false);
                    }
                    return Ok(());
                }
                self.die(CloseReason::Reset, true, false);
                return Ok(());
            }
            PacketType::Rst => {
                self.challenge_rst(repr.seq, ctx.cfg);
                return Err(DropReason::RstRejected);
            }
            PacketType::Ack | PacketType::Data | PacketType::Fin => {}
        }
        let _ = path;

        // Acknowledgement processing (PROTOCOL.md §6.1–6.2).
        let Some(out) = self.send.on_ack(repr.ack, repr.sack.as_slice()) else {
            return Err(DropReason::InvalidAck);
        };
        self.heard(now, ctx.cfg);
        self.consecutive_timeouts = 0;
        self.path_confirmed = true;
        self.stats.packets_received += 1;
        if seq::gt(repr.ack, self.window_ack)
            || (repr.ack == self.window_ack && !seq::lt(repr.ts_val, self.window_ts))
        {
            self.peer_window = repr.window;
            self.window_ack = repr.ack;
            self.window_ts = repr.ts_val;
        }
        if out.newly_acked > 0 {
            let sample = rtt_sample(now, repr.ts_ecr);
            let spurious = self
                .timeout_ts
                .take()
                .is_some_and(|ts| self.undo_spurious_timeout(ts, repr.ts_ecr, ctx));
            match sample {
                Some(s) if spurious => self.rtt.on_spurious_timeout(s),
                Some(s) => self.rtt.update(s),
                None => {}
            }
            self.cc.on_ack(now, out.newly_acked, sample);
            self.backoff = 0;
            self.timers.stop(Timer::Rto);
            self.timers.stop(Timer::Probe);
            self.tail_probes = 0;
            self.detect_losses(now, ctx);
        }
        self.stats.messages_sent += u64::from(out.messages_acked);
        if self.send.take_writable() {
            ctx.events.push_back(Event::Writable { flow: ctx.id });
        }

        // Sequenced data (PROTOCOL.md §6.4).
        // Without new data since our last packet, echo the newest timestamp (a reordered old
        // packet must not inflate RTT samples); see also `hold_echo` below.
        if !self.echo_held && !seq::lt(repr.ts_val, self.ts_recent) {
            self.ts_recent = repr.ts_val;
        }
        if repr.flags & flags::ACK_REQ != 0 {
            self.ack_pending = true;
        }
        let mut drop = None;
        if repr.packet_type.is_sequenced() {
            self.ack_pending = true;
            let had_ready = self.recv.has_ready();
            let arrival = match repr.packet_type {
                PacketType::Data => self
                    .recv
                    .on_data(repr.seq, repr.flags, repr.msg_len, payload),
                _ => self.recv.on_fin(repr.seq),
            };
            match arrival {
                Err(_) => {
                    self.die(CloseReason::ProtocolViolation, true, true);
                    return Ok(());
                }
                Ok(Arrival::InOrder | Arrival::Buffered) => {
                    self.stats.bytes_received += payload.len() as u64;
                    self.hold_echo(repr.ts_val);
                }
                Ok(Arrival::Duplicate) => {
                    self.stats.duplicates_received += 1;
                    drop = Some(DropReason::Duplicate);
                }
                Ok(Arrival::OutOfWindow) => drop = Some(DropReason::OutOfWindow),
                Ok(Arrival::OverBudget { engine_full }) => {
                    ctx.memory_starved |= engine_full;
                    drop = Some(DropReason::MemoryBudget);
                }
            }
            self.stats.messages_received = self.recv.messages_completed;
            if !had_ready && self.recv.has_ready() {
                ctx.events.push_back(Event::Readable { flow: ctx.id });
            }
            if self.recv.fin_received && !self.peer_closed_reported {
                self.peer_closed_reported = true;
                ctx.events.push_back(Event::PeerClosed { flow: ctx.id });
            }
        }
        self.check_finished(now, ctx);
        drop.map_or(Ok(()), Err)
    }

    /// An RST with the right token whose sequence number is in our receive window but not the
    /// next expected one (RFC 5961 §3.2, PROTOCOL.md §8.3): answer with an ACK (a peer that
    /// really reset answers it with an exact RST); outside the window: ignore.
    fn challenge_rst(&mut self, s: u32, cfg: &EngineConfig) {
        let nxt = self.recv.nxt;
        if seq::lt(nxt, s) && seq::lt(s, nxt.wrapping_add(cfg.max_window_packets)) {
            self.ack_pending = true;
        }
    }

    /// Moves to `Lingering` once both directions are finished and every message was read.
    pub(crate) fn check_finished(&mut self, now: Instant, ctx: &mut Ctx) {
        if self.phase == Phase::Established
            && self.send.is_done()
            && self.recv.fin_received
            && !self.recv.has_ready()
        {
            self.phase = Phase::Lingering;
            // Only the linger timer runs from now on.
            self.timers = TimerTable::default();
            self.timers.set(Timer::Linger, now + ctx.cfg.linger);
            ctx.events.push_back(Event::Closed {
                flow: ctx.id,
                reason: CloseReason::Graceful,
            });
        }
    }

    /// The application read a message; a window that reopens is announced.
    fn on_read(&mut self, now: Instant, ctx: &mut Ctx) {
        let w = self.recv.window();
        if self.recv.last_advertised < w / 2 || (self.recv.last_advertised == 0 && w > 0) {
            self.ack_pending = true;
        }
        self.check_finished(now, ctx);
    }

    // ----------------------------------------------------------------------------------------
    // Timers
    // ----------------------------------------------------------------------------------------

    /// The first packet of new data since our last packet fixes the echoed timestamp until we
    /// send (PROTOCOL.md §6.3): an acknowledgement that covers a batch echoes its oldest new
    /// packet, not a retransmission that arrived in the same batch, so the peer can tell a
    /// spurious timeout (and its RTT samples include the time the acknowledgement waited).
    fn hold_echo(&mut self, ts_val: u32) {
        if !self.echo_held {
            self.echo_held = true;
            self.ts_recent = ts_val;
        }
    }

    /// Eifel detection (RFC 3522), PROTOCOL.md §6.3: the first acknowledgement of new data
    /// after a timeout echoes a packet sent before the timeout, so the originals were only late.
    /// The packets the timeout deemed lost and that were not resent yet are in flight again
    /// (no go-back-N), and the caller makes the RTO outlast the delay. The congestion window
    /// stays cut: on a shared link a late acknowledgement usually means a queue. Returns whether
    /// the timeout was spurious.
    fn undo_spurious_timeout(&mut self, timeout_ts: u32, ts_ecr: u32, ctx: &mut Ctx) -> bool {
        if ts_ecr == 0 || !seq::lt(ts_ecr, timeout_ts) {
            return false;
        }
        self.send.undo_timeout();
        self.stats.spurious_timeouts += 1;
        ctx.stats.spurious_timeouts += 1;
        true
    }

    fn rto(&self, cfg: &EngineConfig) -> Duration {
        let base = self.rtt.rto(&cfg.rto);
        base.checked_mul(1u32 << self.backoff.min(16))
            .unwrap_or(cfg.rto.max)
            .min(cfg.rto.max)
    }

    /// Runs loss detection (PROTOCOL.md §6.2) and reacts to newly lost packets.
    fn detect_losses(&mut self, now: Instant, ctx: &mut Ctx) {
        let srtt = self.rtt.smoothed().unwrap_or(ctx.cfg.rto.initial);
        let (lost, next) = self.send.detect_losses(now, srtt + srtt / 4);
        match next {
            Some(t) => self.timers.set(Timer::Loss, t),
            None => self.timers.stop(Timer::Loss),
        }
        if lost > 0 {
            self.cc.on_loss(now);
            self.stats.fast_retransmits += u64::from(lost);
            ctx.stats.fast_retransmits += u64::from(lost);
        }
    }

    /// Tail-loss probe timeout: twice the smoothed RTT, at least `rto.min_probe`, doubled per
    /// probe already sent.
    fn probe_timeout(&self, cfg: &EngineConfig) -> Duration {
        let base = self
            .rtt
            .smoothed()
            .map_or(cfg.rto.initial, |s| (s * 2).max(cfg.rto.min_probe));
        base * (1 << self.tail_probes.min(4))
    }

    /// Whether the retransmission timer must run although nothing is in flight: an unconfirmed
    /// handshake ACK or a zero window with data waiting (persist probe).
    fn needs_probe_timer(&self) -> bool {
        self.phase == Phase::Established
            && !self.send.has_unacked()
            && (!self.path_confirmed || (self.peer_window == 0 && self.send.has_new()))
    }

    /// Arms the retransmission timer if something needs it and it is not running.
    pub(crate) fn arm_timers(&mut self, now: Instant, cfg: &EngineConfig) {
        if self.phase != Phase::Established {
            return;
        }
        if self.send.has_unacked() || self.needs_probe_timer() {
            if self.timers.get(Timer::Rto).is_none() {
                self.timers.set(Timer::Rto, now + self.rto(cfg));
            }
        } else {
            self.timers.stop(Timer::Rto);
        }
        if self.send.has_unacked() {
            if self.timers.get(Timer::Probe).is_none() && self.tail_probes < MAX_TAIL_PROBES {
                self.timers.set(Timer::Probe, now + self.probe_timeout(cfg));
            }
        } else {
            self.timers.stop(Timer::Probe);
            self.timers.stop(Timer::Loss);
        }
    }

    /// Leaves the handshake: the handshake timers stop, the idle and keepalive timers start.
    fn establish(&mut self, now: Instant, cfg: &EngineConfig) {
        self.phase = Phase::Established;
        self.timers.stop(Timer::Handshake);
        self.timers.stop(Timer::SprayPause);
        self.heard(now, cfg);
    }

    /// The peer proved alive at `now`: the idle timeout restarts, and the next keepalive comes
    /// one interval after `now` at the earliest.
    fn heard(&mut self, now: Instant, cfg: &EngineConfig) {
        self.timers.set(Timer::Idle, now + cfg.idle_timeout);
        let keepalive = now + cfg.keepalive_interval;
        let next = self
            .timers
            .get(Timer::Keepalive)
            .map_or(keepalive, |k| k.max(keepalive));
        self.timers.set(Timer::Keepalive, next);
    }

    /// The earliest instant at which [`Flow::on_timeout`] has work.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_expiry()
    }

    /// Runs every timer that is due at `now`, in the order of [`Timer`].
    pub(crate) fn on_timeout(&mut self, now: Instant, ctx: &mut Ctx) {
        for timer in self.timers.expired(now) {
            // An earlier handler may have stopped or moved this timer.
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            self.timers.stop(timer);
            self.fire(timer, now, ctx);
            if self.death.is_some() {
                return;
            }
        }
    }

    fn fire(&mut self, timer: Timer, now: Instant, ctx: &mut Ctx) {
        let cfg = ctx.cfg;
        match timer {
            Timer::Handshake => match self.phase {
                Phase::SynSent { attempt } => self.retry_syn(attempt, now, ctx),
                _ => self.die(CloseReason::TimedOut, false, false),
            },
            Timer::SprayPause => {}
            Timer::Linger => self.die(CloseReason::Graceful, false, false),
            Timer::Idle => self.die(CloseReason::TimedOut, true, true),
            Timer::Rto => {
                self.consecutive_timeouts += 1;
                if self.consecutive_timeouts > cfg.rto.max_retries {
                    self.die(CloseReason::TimedOut, true, true);
                    return;
                }
                if self.send.has_unacked() {
                    self.timeout_ts.get_or_insert(now_ts(now));
                    let n = self.send.on_timeout();
                    self.cc.on_timeout(now);
                    self.stats.timeout_retransmits += u64::from(n);
                    ctx.stats.timeout_retransmits += u64::from(n);
                } else {
                    self.probe_pending = true;
                }
                self.backoff = (self.backoff + 1).min(16);
                self.tail_probes = 0;
                self.timers.stop(Timer::Probe);
                if self.send.has_unacked() || self.needs_probe_timer() {
                    self.timers.set(Timer::Rto, now + self.rto(cfg));
                }
            }
            Timer::Loss => self.detect_losses(now, ctx),
            Timer::Probe => {
                if self.send.probe() {
                    self.tail_probes += 1;
                    self.stats.tail_probes += 1;
                    ctx.stats.tail_probes += 1;
                }
            }
            Timer::Keepalive => {
                self.probe_pending = true;
                self.timers
                    .set(Timer::Keepalive, now + cfg.keepalive_interval);
            }
        }
    }

    /// The SYN batch `attempt` went unanswered: spray the next one, or give up.
    fn retry_syn(&mut self, attempt: u8, now: Instant, ctx: &mut Ctx) {
        let cfg = ctx.cfg;
        let next = attempt.saturating_add(1);
        if next >= cfg.handshake.max_syn_attempts {
            self.die(CloseReason::TimedOut, true, false);
            return;
        }
        let wait = cfg
            .handshake
            .syn_timeout
            .checked_mul(1 << next.min(16))
            .unwrap_or(Duration::MAX);
        self.phase = Phase::SynSent { attempt: next };
        self.timers.set(Timer::Handshake, now + wait);
        if next >= 2 {
            // A predicted reply path that did not work: let the server spray.
            self.reply_hint = UdpPair::NONE;
        }
        let paths = std::mem::take(&mut self.spray.fixed_paths);
        self.spray = if paths.is_empty() || next >= 2 {
            // Predicted paths that failed twice: fall back to spraying.
            Spray::random(Self::batch(cfg, self.peer_engines, next))
        } else {
            Spray::fixed(paths)
        };
        ctx.stats.syn_batches += 1;
    }

    // ----------------------------------------------------------------------------------------
    // Output
    // ----------------------------------------------------------------------------------------

    /// Whether [`Flow::poll_transmit`] would produce a packet now.
    pub(crate) fn has_output(&self) -> bool {
        if self.death.is_some() {
            return false;
        }
        match self.phase {
            Phase::SynSent { .. } => {
                self.spray.remaining > 0 && self.timers.get(Timer::SprayPause).is_none()
            }
            // Paused while the client's SYN bytes do not pay for the next SYN-ACK.
            Phase::SynReceived { .. } => {
                self.spray.remaining > 0
                    && self.timers.get(Timer::SprayPause).is_none()
                    && self.synack_allowance >= self.synack_len()
            }
            Phase::Lingering => self.ack_pending,
            Phase::Established => {
                self.ack_pending
                    || self.probe_pending
                    || (self.can_send() && (self.send.has_retransmit() || self.may_send_new()))
            }
        }
    }

    fn can_send(&self) -> bool {
        self.send.in_flight() < self.cc.window().max(1)
    }

    fn may_send_new(&self) -> bool {
        self.send.has_new() && seq::dist(self.send.una, self.send.nxt) < self.peer_window
    }

    /// Writes this flow's next packet into `buf`.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        ctx: &mut Ctx,
    ) -> Option<Transmit> {
        if self.death.is_some() {
            return None;
        }
        match self.phase {
            Phase::SynSent { attempt, .. } => {
                self.transmit_spray(now, buf, ctx, PacketType::Syn, attempt)
            }
            Phase::SynReceived {
                answered_attempt, ..
            } => self.transmit_spray(now, buf, ctx, PacketType::SynAck, answered_attempt),
            Phase::Lingering if self.ack_pending => Some(self.transmit_ack(now, buf, ctx)),
            Phase::Lingering => None,
            Phase::Established => self.transmit_established(now, buf, ctx),
        }
    }

    fn transmit_spray(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        ctx: &mut Ctx,
        ty: PacketType,
        attempt: u8,
    ) -> Option<Transmit> {
        if self.spray.remaining == 0 {
            return None;
        }
        let is_syn = ty == PacketType::Syn;
        let synack_len = self.synack_len();
        if !is_syn {
            if self.synack_allowance < synack_len {
                return None;
            }
            if let Err(wait) = ctx.answer_budget.try_take(now) {
                // Over the answer budget: pace the batch instead of dropping it.
                self.timers.set(Timer::SprayPause, now + wait);
                return None;
            }
            self.synack_allowance -= synack_len;
        }
        if self.spray.remaining == self.spray.total {
            self.last_spray = Some(now);
        }
        let sent = (self.spray.total - self.spray.remaining) as usize;
        self.spray.remaining -= 1;
        let cfg = ctx.cfg;
        // SYN-ACKs go to the client's pool, which the server checked contains the port the SYN
        // came from and capped in size (§5.1 step 2).
        let path = self
            .spray
            .fixed_paths
            .get(sent)
            .copied()
            .unwrap_or_else(|| UdpPair {
                src: random_port(ctx.rng, cfg.udp_ports),
                dst: random_port(ctx.rng, self.peer_pool),
            });
        let ts_val = now_ts(now);
        // An encrypted flow's SYNs carry the first Noise message (the padding follows it), its
        // SYN-ACKs the second (§12.2).
        let crypto = self.crypto.as_deref();
        let noise: &[u8] = match crypto.map(|c| (&c.initiator, &c.noise_reply)) {
            Some((Some(i), _)) if is_syn => i.msg1(),
            Some((_, Some(r))) if !is_syn => r,
            _ => &[],
        };
        let retry = crypto.and_then(|c| c.retry);
        let retry_len = if retry.is_some() {
            seal::RETRY_COOKIE_LEN
        } else {
            0
        };
        let payload_len = if is_syn {
            syn_padding(cfg, attempt).max((noise.len() + retry_len) as u16)
        } else {
            noise.len() as u16
        };
        let repr = Repr {
            packet_type: ty,
            flags: if noise.is_empty() { 0 } else { flags::SEALED },
            src_port: self.key.local_port,
            dst_port: self.key.remote_port,
            seq: self.iss,
            ack: if is_syn { 0 } else { self.irs.wrapping_add(1) },
            window: self.recv.advertise(),
            ts_val,
            ts_ecr: if is_syn { 0 } else { self.ts_recent },
            msg_len: 0,
            sack: SackList::new(),
            handshake: Some(Handshake {
                engine_count: cfg.engine_count,
                engine_id: cfg.engine_id,
                udp_port_base: cfg.udp_ports.base,
                udp_port_count: cfg.udp_ports.count,
                echo_path: if is_syn {
                    UdpPair::NONE
                } else {
                    self.confirm_echo
                },
                reply_hint: if is_syn {
                    self.reply_hint
                } else {
                    UdpPair::NONE
                },
                attempt,
                max_message_len: cfg.max_message_len,
                max_datagram: cfg.max_udp_payload,
                token: self.rx_token,
                isn: self.iss,
            }),
            payload_len,
            token: if is_syn { 0 } else { self.tx_token },
        };
        if is_syn {
            ctx.stats.syns_sent += 1;
        } else {
            ctx.stats.syn_acks_sent += 1;
        }
        self.stats.handshake_packets += 1;
        let with_checksum = cfg.checksum == crate::config::ChecksumMode::Always;
        let len = repr.emit_zero_padded(buf, with_checksum);
        if !noise.is_empty() {
            let hl = repr.header_len();
            buf[hl..hl + noise.len()].copy_from_slice(noise);
            if let Some(cookie) = retry.filter(|_| is_syn) {
                seal::write_retry_cookie(&mut buf[hl..len], cookie);
            }
            if with_checksum {
                wire::finish_checksum(&mut buf[..len]);
            }
        }
        self.stats.packets_sent += 1;
        Some(Transmit::new(self.key.remote_ip, path, len))
    }

    fn transmit_established(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        ctx: &mut Ctx,
    ) -> Option<Transmit> {
        // SACK information travels only in ACK packets: send one before data when holes exist.
        if self.ack_pending && self.recv.has_holes() {
            return Some(self.transmit_ack(now, buf, ctx));
        }
        if self.can_send() {
            let next = match self.send.next_retransmit(now) {
                Some(p) => Some(p),
                None if self.may_send_new() => self.send.next_new(now),
                None => None,
            };
            if let Some(s) = next {
                return Some(self.transmit_sequenced(now, buf, ctx, s));
            }
        }
        if self.ack_pending || self.probe_pending {
            return Some(self.transmit_ack(now, buf, ctx));
        }
        None
    }

    fn header(&mut self, now: Instant, ty: PacketType, cfg: &EngineConfig) -> Repr {
        let window = self.recv.advertise();
        let handshake = (!self.path_confirmed).then_some(Handshake {
            engine_count: cfg.engine_count,
            engine_id: cfg.engine_id,
            udp_port_base: cfg.udp_ports.base,
            udp_port_count: cfg.udp_ports.count,
            echo_path: self.confirm_echo,
            reply_hint: UdpPair::NONE,
            attempt: 0,
            max_message_len: cfg.max_message_len,
            max_datagram: cfg.max_udp_payload,
            token: self.rx_token,
            isn: self.iss,
        });
        let mut f = 0;
        if self.probe_pending {
            f |= flags::ACK_REQ;
            self.probe_pending = false;
        }
        self.ack_pending = false;
        self.echo_held = false;
        Repr {
            packet_type: ty,
            flags: f,
            src_port: self.key.local_port,
            dst_port: self.key.remote_port,
            seq: self.send.nxt,
            ack: self.recv.nxt,
            window,
            ts_val: now_ts(now),
            ts_ecr: self.ts_recent,
            msg_len: 0,
            sack: SackList::new(),
            handshake,
            payload_len: 0,
            token: self.tx_token,
        }
    }

    fn transmit_ack(&mut self, now: Instant, buf: &mut [u8], ctx: &mut Ctx) -> Transmit {
        let mut repr = self.header(now, PacketType::Ack, ctx.cfg);
        repr.sack = self.recv.sack_blocks();
        self.finish(buf, &repr, &[], self.tx_path, ctx)
    }

    /// Sends outstanding packet `s` (first transmission or retransmission).
    fn transmit_sequenced(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        ctx: &mut Ctx,
        s: u32,
    ) -> Transmit {
        let ty = match self.send.payload(s) {
            Payload::Data { .. } => PacketType::Data,
            Payload::Fin => PacketType::Fin,
        };
        let mut repr = self.header(now, ty, ctx.cfg);
        repr.seq = s;
        if self.timers.get(Timer::Rto).is_none() {
            self.timers.set(Timer::Rto, now + self.rto(ctx.cfg));
        }
        // Borrow the payload in place: no copy or refcount traffic per packet.
        let bytes: &[u8] = match self.send.payload(s) {
            Payload::Data {
                bytes,
                flags: f,
                msg_len,
            } => {
                repr.flags |= f;
                repr.msg_len = *msg_len;
                repr.payload_len = bytes.len() as u16;
                bytes
            }
            Payload::Fin => &[],
        };
        self.stats.bytes_sent += bytes.len() as u64;
        self.stats.packets_sent += 1;
        let with_checksum = ctx.cfg.checksum == crate::config::ChecksumMode::Always;
        // Disjoint fields: the payload borrows the send state, the keys live in `crypto`.
        let sealer = self.crypto.as_deref_mut().and_then(|c| c.sealer.as_mut());
        let len = match sealer {
            Some(sealer) => seal::emit_sealed(&mut repr, buf, bytes, sealer, with_checksum),
            None => repr.emit(buf, bytes, with_checksum),
        };
        Transmit::new(self.key.remote_ip, self.tx_path, len)
    }

    fn finish(
        &mut self,
        buf: &mut [u8],
        repr: &Repr,
        payload: &[u8],
        path: UdpPair,
        ctx: &mut Ctx,
    ) -> Transmit {
        let with_checksum = ctx.cfg.checksum == crate::config::ChecksumMode::Always;
        let mut repr = *repr;
        let len = match self.sealer_mut() {
            Some(sealer) => seal::emit_sealed(&mut repr, buf, payload, sealer, with_checksum),
            None => repr.emit(buf, payload, with_checksum),
        };
        self.stats.packets_sent += 1;
        Transmit::new(self.key.remote_ip, path, len)
    }

    /// A snapshot of this flow's counters and estimates.
    pub(crate) fn snapshot(&self) -> FlowStats {
        let mut s = self.stats.clone();
        s.srtt = self.rtt.smoothed();
        s.min_rtt = self.rtt.min();
        s.congestion_window = self.cc.window();
        s.peer_window = self.peer_window;
        s.packets_in_flight = self.send.in_flight();
        s
    }

    /// The RST to send when this flow dies with `send_rst`; sealed if the flow has keys.
    pub(crate) fn rst(&mut self) -> Option<CtrlPacket> {
        if self.tx_path.is_none() {
            return None;
        }
        let mut repr = rst_repr(
            self.key.local_port,
            self.key.remote_port,
            self.send.nxt,
            self.recv.nxt,
            self.tx_token,
        );
        let sealed = self.sealer_mut().map(|sealer| {
            let mut packet = [0u8; wire::MAX_HEADER_LEN + seal::OVERHEAD];
            let len = seal::emit_sealed(&mut repr, &mut packet, &[], sealer, false);
            let mut trailer = [0u8; seal::OVERHEAD];
            trailer.copy_from_slice(&packet[len - seal::OVERHEAD..len]);
            trailer
        });
        Some(CtrlPacket {
            remote_ip: self.key.remote_ip,
            path: self.tx_path,
            repr,
            sealed,
        })
    }
}

/// An RST carrying `seq`, `ack` and the receiver's `token` (§8.3).
pub(crate) fn rst_repr(src_port: u16, dst_port: u16, seq: u32, ack: u32, token: u64) -> Repr {
    Repr {
        packet_type: PacketType::Rst,
        flags: 0,
        src_port,
        dst_port,
        seq,
        ack,
        window: 0,
        ts_val: 0,
        ts_ecr: 0,
        msg_len: 0,
        sack: SackList::new(),
        handshake: None,
        payload_len: 0,
        token,
    }
}

/// A uniformly random port of `pool`.
pub(crate) fn random_port(rng: &mut ChaCha8Rng, pool: PortPool) -> u16 {
    pool.nth(rng.random_range(0..pool.count))
}

/// The header timestamp for `now`; never zero, since zero means "no timestamp to echo".
fn now_ts(now: Instant) -> u32 {
    now.wire_micros().max(1)
}

/// An RTT sample from an echoed timestamp, if it is present and plausible (under 60 s).
fn rtt_sample(now: Instant, ts_ecr: u32) -> Option<Duration> {
    if ts_ecr == 0 {
        return None;
    }
    let us = now_ts(now).wrapping_sub(ts_ecr);
    (us < 60_000_000).then(|| Duration::from_micros(u64::from(us.max(1))))
}
