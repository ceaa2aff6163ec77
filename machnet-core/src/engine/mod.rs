//! The per-core engine: the sans-IO entry point of the protocol.
//!
//! Datagrams go in through [`Engine::handle_datagram`]; packets come out of
//! [`Engine::poll_transmit`]; the application side learns what happened from
//! [`Engine::poll_event`] and acts through `connect` / `listen` / `send` / `recv` / `close`; time
//! moves through [`Engine::poll_timeout`] and [`Engine::handle_timeout`]. Nothing here reads a
//! clock, touches a socket or spawns a thread, so the same code runs in the sidecar, in the
//! simulator and in benchmarks.

pub mod api;
pub(crate) mod budget;
pub(crate) mod cookie;
pub(crate) mod ports;
pub mod stats;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::Ipv4Addr;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{ChecksumMode, ConfigError, EngineConfig, PortPool};
use crate::flow::recv::MemoryView;
use crate::flow::{
    random_port, rst_repr, CtrlPacket, Ctx, Flow, FlowKeys, AMPLIFICATION_LIMIT, CTRL_QUEUE_CAP,
    SYNACK_LEN,
};
use crate::rss::{self, RssOracle, UdpTuple};
use crate::seal;
use crate::time::Instant;
use crate::wire::{self, ChecksumStatus, Handshake, Packet, PacketType, Repr, UdpPair};
use cookie::{Attempt, CookieJar, CookieRefusal, UsedCookies};

use api::*;
use budget::SprayBudget;
use ports::{Owner, PortMap};
use stats::{DropReason, EngineStats, FlowStats};

/// Peers remembered for spray sizing; the cache is cleared when full.
const PEER_CACHE_CAP: usize = 65536;
/// Random UDP pairs tried when looking for one the RSS oracle places on a given engine.
const ORACLE_TRIES: u32 = 4096;

/// Draws random UDP pairs (source from `src_pool`, destination from `dst_pool`) until `place`
/// puts one on engine `target`. Gives up after `ORACLE_TRIES` draws, or at once when `place`
/// answers `None` (the oracle cannot tell for this host).
fn search_pair(
    rng: &mut ChaCha8Rng,
    src_pool: PortPool,
    dst_pool: PortPool,
    target: u16,
    place: impl Fn(UdpPair) -> Option<u16>,
) -> Option<UdpPair> {
    for _ in 0..ORACLE_TRIES {
        let p = UdpPair {
            src: random_port(rng, src_pool),
            dst: random_port(rng, dst_pool),
        };
        if place(p)? == target {
            return Some(p);
        }
    }
    None
}

/// Most UDP ports of a peer's announced pool that we send to before its handshake is validated.
pub const MAX_REPLY_POOL: u16 = 256;

/// The UDP ports we may answer an unvalidated SYN on (PROTOCOL.md §5.1 step 2): its announced
/// pool, if that holds `src` (the port the SYN came from), cut to at most [`MAX_REPLY_POOL`]
/// ports around `src`. `None`: the pool does not hold `src`.
fn reply_pool(hs: &Handshake, src: u16) -> Option<PortPool> {
    let pool = PortPool {
        base: hs.udp_port_base,
        count: hs.udp_port_count,
    };
    if !pool.contains(src) {
        return None;
    }
    if pool.count <= MAX_REPLY_POOL {
        return Some(pool);
    }
    let end = u32::from(pool.base) + u32::from(pool.count); // exclusive
    let start = u32::from(src)
        .saturating_sub(u32::from(MAX_REPLY_POOL / 2))
        .max(u32::from(pool.base))
        .min(end - u32::from(MAX_REPLY_POOL));
    Some(PortPool {
        base: start as u16,
        count: MAX_REPLY_POOL,
    })
}

/// A flow token (PROTOCOL.md §4.1): 64 random bits from the engine's generator, never 0.
fn fresh_token(rng: &mut ChaCha8Rng) -> u64 {
    loop {
        let t: u64 = rng.random();
        if t != 0 {
            return t;
        }
    }
}

/// What a peer host told us about itself in a handshake block.
#[derive(Debug, Clone, Copy)]
struct PeerInfo {
    engines: u16,
    pool: PortPool,
}

/// A place in the flow table, reused by later flows under a new generation. Besides the flow it
/// holds the engine's bookkeeping about it.
#[derive(Default)]
struct Slot {
    generation: u32,
    flow: Option<Box<Flow>>,
    /// Earliest deadline of the flow registered with the engine's timer heap.
    scheduled: Option<Instant>,
    /// The flow is queued in `Engine::ready`.
    in_ready: bool,
    /// Counted in the engine's half-open total (server flows until they leave `SynReceived`).
    counted_half_open: bool,
    /// The flow's share of the engine's total of send-buffered bytes, as last counted.
    counted_send_bytes: usize,
}

/// One engine: the protocol state of one core. See the module documentation.
pub struct Engine {
    cfg: EngineConfig,
    rng: ChaCha8Rng,
    oracle: Option<Box<dyn RssOracle>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Flows by identity (the local IP is always ours) → slot.
    by_key: HashMap<FlowKey, u32>,
    ports: PortMap,
    ephemeral_cursor: u32,
    peers: HashMap<Ipv4Addr, PeerInfo>,
    /// Engine that accepted our last connection to (ip, port): the target of a predicted SYN.
    remote_listeners: HashMap<(Ipv4Addr, u16), u16>,
    ctrl: VecDeque<CtrlPacket>,
    ready: VecDeque<u32>,
    events: VecDeque<Event>,
    /// Flow deadlines; an entry is stale unless it matches its slot's `scheduled`.
    timers: BinaryHeap<Reverse<(Instant, FlowId)>>,
    stats: EngineStats,
    answer_budget: SprayBudget,
    live: usize,
    half_open: usize,
    /// Bytes all flows hold against `cfg.memory_budget` (sum of `RecvState::held_bytes`).
    held: usize,
    /// Message bytes accepted from applications and not yet acknowledged, all flows (kept up to
    /// date by `settle`).
    send_buffered: usize,
    last_now: Instant,
    /// Complete messages of flows that ended (not by a local abort) before the application
    /// read them: the peer had them acknowledged, so they are still delivered (`recv`).
    leftovers: HashMap<FlowId, VecDeque<Bytes>>,
    /// The secret of this engine's SYN cookies (PROTOCOL.md §5.5).
    cookies: CookieJar,
    /// Attempts that established a flow from a cookie, while their cookies are valid.
    used_cookies: UsedCookies,
    /// Where a sealed packet's payload is opened (PROTOCOL.md §12.3); reused, never shrunk.
    open_buf: Vec<u8>,
    /// Sealed SYNs this engine may still read (PROTOCOL.md §12.5).
    noise_budget: SprayBudget,
    /// Encrypted handshakes this engine may still start (`connect`), kept apart from
    /// `noise_budget` so that a flood of SYNs does not refuse local connects.
    connect_noise_budget: SprayBudget,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("local_ip", &self.cfg.local_ip)
            .field("engine_id", &self.cfg.engine_id)
            .field("flows", &self.live)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds an engine. `seed` drives every random choice (initial sequence numbers, port
    /// choices), so a run is reproducible from it; production callers pass OS randomness.
    pub fn new(config: EngineConfig, seed: u64) -> Result<Engine, ConfigError> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let answer_budget = SprayBudget::new(
            config.handshake.max_answer_rate,
            2 * config.handshake.max_batch,
        );
        let noise_rate = config.handshake.max_encrypted_handshake_rate;
        let noise_budget = SprayBudget::new(noise_rate, noise_rate.div_ceil(10));
        let ports = PortMap::new(
            config.engine_id,
            config.engine_count,
            config.ephemeral_ports,
        );
        let ephemeral_cursor = rng.random_range(0..ports.ephemeral_count());
        let cookies = CookieJar::new(rng.random());
        Ok(Engine {
            cookies,
            used_cookies: UsedCookies::default(),
            ports,
            ephemeral_cursor,
            rng,
            cfg: config,
            oracle: None,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            peers: HashMap::new(),
            remote_listeners: HashMap::new(),
            ctrl: VecDeque::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            stats: EngineStats::default(),
            answer_budget,
            live: 0,
            half_open: 0,
            held: 0,
            send_buffered: 0,
            last_now: Instant::ZERO,
            leftovers: HashMap::new(),
            open_buf: Vec::new(),
            noise_budget,
            connect_noise_budget: SprayBudget::new(noise_rate, noise_rate.div_ceil(10)),
        })
    }

    /// Installs an RSS oracle: where it can predict placement, the engine sends single
    /// handshake packets instead of spraying (PROTOCOL.md §5.4).
    pub fn set_rss_oracle(&mut self, oracle: Box<dyn RssOracle>) {
        self.oracle = Some(oracle);
    }

    /// The configuration the engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The engine's counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Flows this engine holds, including half-open and lingering ones.
    pub fn flow_count(&self) -> usize {
        self.live
    }

    /// Bytes of received data all flows hold (unread and partial messages, out-of-order
    /// packets); never above [`EngineConfig::memory_budget`] (PROTOCOL.md §6.5).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// A flow's fair share of the memory budget: the budget divided among the flows that are
    /// not half-open (those hold no data yet).
    fn fair_share(&self) -> usize {
        self.cfg.memory_budget / (self.live - self.half_open).max(1)
    }

    // ----------------------------------------------------------------------------------------
    // Listening
    // ----------------------------------------------------------------------------------------

    fn check_listen_port(&self, port: u16) -> Result<(), ListenError> {
        if port == 0 {
            return Err(ListenError::PortZero);
        }
        if self.ports.is_ephemeral(port) {
            return Err(ListenError::EphemeralPort(port));
        }
        Ok(())
    }

    /// Accepts connections to `port` on this engine. The host must also announce it to its other
    /// engines with [`Engine::add_host_listener`].
    pub fn listen(&mut self, port: u16) -> Result<(), ListenError> {
        self.check_listen_port(port)?;
        if !self.ports.add(port, self.cfg.engine_id) {
            return Err(ListenError::AlreadyListening(port));
        }
        Ok(())
    }

    /// Stops accepting on `port`; established flows are unaffected.
    pub fn unlisten(&mut self, port: u16) {
        self.ports.remove(port, self.cfg.engine_id);
    }

    /// Records that engine `engine_id` of this host listens on `port`: packets for that port that
    /// RSS puts on this engine are dropped (counted as `WrongEngine`) rather than refused.
    pub fn add_host_listener(&mut self, port: u16, engine_id: u16) -> Result<(), ListenError> {
        if engine_id >= self.cfg.engine_count {
            return Err(ListenError::BadEngine(engine_id));
        }
        self.check_listen_port(port)?;
        self.ports.add(port, engine_id);
        Ok(())
    }

    /// Forgets that engine `engine_id` of this host listens on `port` (see [`Engine::add_host_listener`]).
    pub fn remove_host_listener(&mut self, port: u16, engine_id: u16) {
        if engine_id < self.cfg.engine_count {
            self.ports.remove(port, engine_id);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Application operations
    // ----------------------------------------------------------------------------------------

    /// Opens a flow to `remote_ip:remote_port` (Machnet port). Completion is reported by
    /// [`Event::Connected`], failure by [`Event::Closed`]. Messages may be sent right away;
    /// they leave once the flow is established.
    pub fn connect(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        remote_port: u16,
    ) -> Result<FlowId, ConnectError> {
        self.last_now = now;
        if remote_ip.is_unspecified() || remote_ip.is_broadcast() || remote_ip.is_multicast() {
            return Err(ConnectError::InvalidRemoteAddress);
        }
        if remote_port == 0 {
            return Err(ConnectError::InvalidRemotePort);
        }
        if self.live >= self.cfg.max_flows {
            return Err(ConnectError::TooManyFlows);
        }
        // Encrypted: only to a host whose key the allow-list gives (PROTOCOL.md §12.1).
        let server_key = match &self.cfg.encryption {
            Some(enc) => Some(
                *enc.peer_key(remote_ip)
                    .ok_or(ConnectError::PeerNotAllowed)?,
            ),
            None => None,
        };
        if server_key.is_some() && !self.connect_noise_budget.take(now) {
            return Err(ConnectError::HandshakeRate);
        }
        let local_port = self
            .pick_ephemeral(remote_ip, remote_port)
            .ok_or(ConnectError::NoEphemeralPort)?;
        let key = self.key(remote_ip, remote_port, local_port);
        let peer = self.peers.get(&remote_ip).copied().unwrap_or(PeerInfo {
            engines: self.cfg.engine_count,
            pool: self.cfg.remote_udp_ports(),
        });
        let syn_paths = self.predict_syn_paths(remote_ip, remote_port, peer.pool);
        let reply_hint = self
            .predict_reply_hint(remote_ip, peer.pool)
            .unwrap_or(UdpPair::NONE);
        let iss = self.rng.random();
        let token = fresh_token(&mut self.rng);
        let keys = server_key.map(|server| {
            let binding = seal::Binding {
                client_port: local_port,
                server_port: remote_port,
                client_token: token,
                client_isn: iss,
            };
            let enc = self.cfg.encryption.as_deref().expect("checked above");
            let reset = enc.reset_token(local_port, remote_ip, remote_port, token);
            FlowKeys::Initiating(seal::Initiator::start(enc, &server, binding, &reset))
        });
        let flow = Flow::new_client(
            &self.cfg,
            key,
            iss,
            token,
            now,
            peer.pool,
            peer.engines,
            syn_paths,
            reply_hint,
            keys,
        );
        self.stats.syn_batches += 1;
        Ok(self.insert(flow, now))
    }

    fn pick_ephemeral(&mut self, remote_ip: Ipv4Addr, remote_port: u16) -> Option<u16> {
        let n = self.ports.ephemeral_count();
        for _ in 0..n {
            let i = self.ephemeral_cursor % n;
            self.ephemeral_cursor = (i + 1) % n;
            let port = self.ports.my_ephemeral(i);
            if !self
                .by_key
                .contains_key(&self.key(remote_ip, remote_port, port))
            {
                return Some(port);
            }
        }
        None
    }

    /// SYN paths the oracle can predict (PROTOCOL.md §5.4): one to the engine that accepted our
    /// last connection to this listener if known, else one to each engine of the remote host;
    /// empty (spray) when the oracle knows nothing of the remote host.
    fn predict_syn_paths(
        &mut self,
        remote_ip: Ipv4Addr,
        remote_port: u16,
        pool: PortPool,
    ) -> Vec<UdpPair> {
        let Some(oracle) = self.oracle.as_deref() else {
            return Vec::new();
        };
        let Some(engines) = oracle.remote_engine_count(remote_ip) else {
            return Vec::new();
        };
        let targets: Vec<u16> = match self.remote_listeners.get(&(remote_ip, remote_port)) {
            Some(&e) => vec![e],
            None => (0..engines).collect(),
        };
        let paths: Option<Vec<UdpPair>> = targets
            .into_iter()
            .map(|e| self.path_to_remote_engine(remote_ip, pool, e))
            .collect();
        paths.unwrap_or_default()
    }

    /// A UDP pair (our pool → `pool`) the oracle places on engine `target` of the remote host.
    fn path_to_remote_engine(
        &mut self,
        remote_ip: Ipv4Addr,
        pool: PortPool,
        target: u16,
    ) -> Option<UdpPair> {
        let oracle = self.oracle.as_deref()?;
        let local = self.cfg.local_ip;
        search_pair(&mut self.rng, self.cfg.udp_ports, pool, target, |p| {
            oracle.remote_engine(&UdpTuple {
                src_ip: local,
                dst_ip: remote_ip,
                src_port: p.src,
                dst_port: p.dst,
            })
        })
    }

    /// A (peer source, our destination) UDP pair the oracle places on this engine.
    fn predict_reply_hint(&mut self, remote_ip: Ipv4Addr, peer_pool: PortPool) -> Option<UdpPair> {
        let oracle = self.oracle.as_deref()?;
        let local = self.cfg.local_ip;
        search_pair(
            &mut self.rng,
            peer_pool,
            self.cfg.udp_ports,
            self.cfg.engine_id,
            |p| {
                oracle.local_engine(&UdpTuple {
                    src_ip: remote_ip,
                    dst_ip: local,
                    src_port: p.src,
                    dst_port: p.dst,
                })
            },
        )
    }

    /// Queues one message. Fails with [`SendError::BufferFull`] (back-pressure) when the flow's
    /// send buffer cannot take it; [`Event::Writable`] follows once it can.
    pub fn send(&mut self, now: Instant, flow: FlowId, msg: Bytes) -> Result<(), SendError> {
        self.last_now = now;
        let idx = self.visible(flow).ok_or(SendError::UnknownFlow)?;
        if msg.is_empty() {
            return Err(SendError::EmptyMessage);
        }
        let limit = self.cfg.max_message_len;
        self.flow_mut(idx).queue_message(msg, limit)?;
        self.settle(idx, now);
        Ok(())
    }

    /// Takes the next complete message of `flow`, if any. Works on a flow that ended (after
    /// [`Event::Closed`]) until its messages are all read.
    pub fn recv(&mut self, flow: FlowId) -> Result<Option<Bytes>, RecvError> {
        let Some(idx) = self.visible(flow) else {
            return self.recv_leftover(flow);
        };
        let now = self.last_now;
        let msg = self.run(idx, |f, ctx| f.read(now, ctx));
        if msg.is_some() {
            self.settle(idx, now);
        }
        Ok(msg)
    }

    /// Length of the next complete message of `flow`, if any, without taking it: lets the caller
    /// check that it fits where it must go (e.g. an application's ring) before calling `recv`.
    pub fn peek_len(&self, flow: FlowId) -> Result<Option<usize>, RecvError> {
        match self.visible(flow) {
            Some(idx) => Ok(self.flow_ref(idx).peek_len()),
            None => match self.leftovers.get(&flow) {
                Some(q) => Ok(q.front().map(Bytes::len)),
                None => Err(RecvError::UnknownFlow),
            },
        }
    }

    fn recv_leftover(&mut self, flow: FlowId) -> Result<Option<Bytes>, RecvError> {
        let q = self
            .leftovers
            .get_mut(&flow)
            .ok_or(RecvError::UnknownFlow)?;
        let msg = q.pop_front();
        // The `None` that ends the reading is the last answer for this handle.
        if msg.is_none() {
            self.leftovers.remove(&flow);
        }
        Ok(msg)
    }

    /// Message bytes all flows accepted from applications that their peers have not yet
    /// acknowledged.
    pub fn send_buffered_bytes(&self) -> usize {
        self.send_buffered
    }

    /// Drops what an ended flow still holds for the application (nobody will read it).
    pub fn discard(&mut self, flow: FlowId) {
        self.leftovers.remove(&flow);
    }

    /// Bytes of messages held for flows that ended (see [`Event::Closed`]).
    pub fn leftover_bytes(&self) -> usize {
        // (An entry read to the end but not yet answered with `None` holds nothing.)
        self.leftovers.values().flatten().map(Bytes::len).sum()
    }

    /// Closes the sending direction: a FIN follows the queued messages. The flow ends (with
    /// [`Event::Closed`] `Graceful`) once the peer has closed too and every message was read.
    pub fn close(&mut self, now: Instant, flow: FlowId) -> Result<(), CloseError> {
        self.last_now = now;
        let idx = self.visible(flow).ok_or(CloseError::UnknownFlow)?;
        self.flow_mut(idx).close();
        self.settle(idx, now);
        Ok(())
    }

    /// Aborts the flow: queued and unread messages are discarded and the peer gets an RST.
    pub fn abort(&mut self, now: Instant, flow: FlowId) -> Result<(), CloseError> {
        self.last_now = now;
        let idx = self.visible(flow).ok_or(CloseError::UnknownFlow)?;
        self.flow_mut(idx).abort();
        self.settle(idx, now);
        Ok(())
    }

    /// Counters and estimates of a live flow.
    pub fn flow_stats(&self, flow: FlowId) -> Option<FlowStats> {
        self.visible(flow).map(|i| self.flow_ref(i).snapshot())
    }

    /// Identity of a live flow.
    pub fn flow_key(&self, flow: FlowId) -> Option<FlowKey> {
        self.visible(flow).map(|i| self.flow_ref(i).key())
    }

    /// Message bytes a live flow accepted from the application that the peer has not yet
    /// acknowledged (0: the peer has every message sent on it).
    pub fn flow_unacked_bytes(&self, flow: FlowId) -> Option<usize> {
        self.visible(flow).map(|i| self.flow_ref(i).send_buffered())
    }

    /// Bytes a live flow holds for the application: unread messages, partial messages and
    /// out-of-order packets (for memory accounting).
    pub fn flow_held_bytes(&self, flow: FlowId) -> Option<usize> {
        self.visible(flow).map(|i| self.flow_ref(i).held_bytes())
    }

    // ----------------------------------------------------------------------------------------
    // Sans-IO driving
    // ----------------------------------------------------------------------------------------

    /// Processes one received UDP datagram. Invalid packets are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, d: Datagram<'_>) {
        let from = (d.remote_ip, d.path());
        self.receive(now, from, Received::Shared(d.payload));
    }

    /// [`Engine::handle_datagram`] for a datagram whose bytes the caller gives up: a sealed
    /// packet is opened where it lies, saving a copy of its payload (PROTOCOL.md §12.3).
    pub fn handle_datagram_mut(&mut self, now: Instant, d: DatagramMut<'_>) {
        let path = UdpPair {
            src: d.src_port,
            dst: d.dst_port,
        };
        self.receive(now, (d.remote_ip, path), Received::Mut(d.payload));
    }

    /// An ICMP port unreachable answering a datagram we sent (PROTOCOL.md §8.4). It ends the
    /// established flow whose packet it quotes if the quote carries the flow's ports, the
    /// peer's token for the flow and the flow's UDP path: only the peer (or an on-path observer)
    /// knows the token, so nobody else can reset a flow this way. Anything else is counted in
    /// `unreachable_ignored` and changes nothing. Returns whether a flow ended.
    pub fn handle_unreachable(&mut self, now: Instant, u: Unreachable<'_>) -> bool {
        self.last_now = now;
        let ended = wire::QuotedHeader::parse(u.quoted)
            .ok()
            .and_then(|h| {
                let key = self.key(u.remote_ip, h.dst_port, h.src_port);
                let idx = *self.by_key.get(&key)?;
                let path = UdpPair {
                    src: u.src_port,
                    dst: u.dst_port,
                };
                let ended = self.flow_mut(idx).handle_unreachable(h.token, path);
                self.settle(idx, now);
                Some(ended)
            })
            .unwrap_or(false);
        if ended {
            self.stats.unreachable_resets += 1;
        } else {
            self.stats.unreachable_ignored += 1;
        }
        ended
    }

    fn receive(&mut self, now: Instant, from: (Ipv4Addr, UdpPair), bytes: Received<'_>) {
        self.last_now = now;
        self.stats.packets_received += 1;
        self.stats.bytes_received += bytes.as_slice().len() as u64;
        if let Err(reason) = self.process(now, from, bytes) {
            self.stats.count_drop(reason);
        }
    }

    fn process(
        &mut self,
        now: Instant,
        (remote_ip, path): (Ipv4Addr, UdpPair),
        received: Received<'_>,
    ) -> Result<(), DropReason> {
        let bytes = received.as_slice();
        // Checksum first (it needs only the fixed header): corruption is then counted as such
        // rather than as whatever malformation the flipped bits happen to produce.
        if bytes.len() < wire::HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        match (wire::verify_checksum(bytes), self.cfg.checksum) {
            (ChecksumStatus::Invalid, _) => return Err(DropReason::BadChecksum),
            (ChecksumStatus::Absent, ChecksumMode::Always) => {
                return Err(DropReason::MissingChecksum)
            }
            _ => {}
        }
        let packet = Packet::new_checked(bytes).map_err(DropReason::from_parse)?;
        let repr = Repr::parse(&packet).map_err(DropReason::from_parse)?;
        let payload = packet.payload();
        let key = self.key(remote_ip, repr.src_port, repr.dst_port);
        if let Some(&idx) = self.by_key.get(&key) {
            let mut opened = std::mem::take(&mut self.open_buf);
            let result = match self.unseal(idx, &repr, received, &mut opened) {
                Ok(payload) => self.run(idx, |f, ctx| f.handle(now, &repr, payload, path, ctx)),
                Err(reason) => Err(reason),
            };
            self.open_buf = opened;
            // Learn about the peer only from a SYN-ACK our flow accepted, never from unchecked input.
            if let (Ok(()), PacketType::SynAck, Some(hs)) =
                (result, repr.packet_type, &repr.handshake)
            {
                let peer = PeerInfo {
                    engines: hs.engine_count.min(crate::MAX_ENGINES),
                    pool: PortPool {
                        base: hs.udp_port_base,
                        count: hs.udp_port_count,
                    },
                };
                self.learn_peer(remote_ip, peer, Some((repr.src_port, hs.engine_id)));
            }
            self.settle(idx, now);
            return result;
        }
        if let Some(result) = self.accept_cookie(now, remote_ip, &repr, payload, path) {
            return result;
        }
        match repr.packet_type {
            PacketType::Syn => self.accept_syn(now, remote_ip, &repr, payload, path),
            PacketType::Rst => Err(DropReason::UnknownFlow),
            _ => match self.ports.owner(repr.dst_port) {
                Owner::Other | Owner::Shared => Err(DropReason::WrongEngine),
                Owner::Me | Owner::Nobody => {
                    // Echo the packet's token: only its sender (and on-path observers) know it,
                    // so the RST convinces the flow that sent it and nobody else (§8.3).
                    let mut rst = rst_repr(
                        repr.dst_port,
                        repr.src_port,
                        repr.ack,
                        repr.seq.wrapping_add(1),
                        repr.token,
                    );
                    let sealed = self.stateless_reset(remote_ip, &repr, &mut rst);
                    self.answer_unknown_flow(now, remote_ip, path, bytes.len(), rst, sealed);
                    Err(DropReason::UnknownFlow)
                }
            },
        }
    }

    /// The payload flow `idx` is to see of a packet `received` (PROTOCOL.md §12.3–§12.4): a
    /// handshake packet's as it is, a sealed packet's opened (in place, or in `opened` when the
    /// bytes are the caller's); a packet sealed where plaintext is expected or the other way
    /// round is refused. An encrypted flow accepts no plaintext but a handshake-phase RST (its
    /// token proves it: §12.4).
    fn unseal<'b>(
        &mut self,
        idx: u32,
        repr: &Repr,
        received: Received<'b>,
        opened: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], DropReason> {
        let hl = repr.header_len();
        let sealed = repr.flags & wire::flags::SEALED != 0;
        if matches!(repr.packet_type, PacketType::Syn | PacketType::SynAck) {
            // The Noise messages they carry are the flow's to read.
            return Ok(&received.into_slice()[hl..]);
        }
        let flow = self.flow_mut(idx);
        if !flow.token_ok(repr) {
            // The cheap check first (§12.3): a blind forgery costs no AES.
            return Err(DropReason::BadToken);
        }
        let stateless_reset = repr.packet_type == PacketType::Rst
            && flow
                .peer_reset()
                .is_some_and(|t| seal::is_stateless_reset(t, &received.as_slice()[hl..]));
        let (encrypted, in_handshake) = (flow.is_encrypted(), flow.in_handshake());
        match flow.sealer_mut() {
            Some(sealer) if sealed => {
                let mut aad = [0u8; wire::MAX_HEADER_LEN];
                let aad = wire::sealed_aad(received.as_slice(), hl, &mut aad);
                let body: &'b mut [u8] = match received {
                    Received::Mut(bytes) => &mut bytes[hl..],
                    Received::Shared(bytes) => {
                        opened.clear();
                        opened.extend_from_slice(&bytes[hl..]);
                        opened
                    }
                };
                match sealer.open(aad, body) {
                    Ok(plain) => Ok(plain),
                    // The peer lost the flow and answered one of our packets (§12.4).
                    Err(_) if stateless_reset => Ok(&[]),
                    Err(_) => Err(DropReason::BadSeal),
                }
            }
            _ if sealed => Err(DropReason::SealMismatch),
            _ if !encrypted => Ok(&received.into_slice()[hl..]),
            _ if repr.packet_type == PacketType::Rst && in_handshake => {
                Ok(&received.into_slice()[hl..])
            }
            _ => Err(DropReason::SealMismatch),
        }
    }

    /// Tells a peer that the flow its packet belongs to is gone (PROTOCOL.md §8.3). The peer's
    /// flow lives on one of its engines, which the reverse UDP pair reaches only by chance; for a
    /// peer whose engine count we learned in a validated handshake, more RSTs go to the same UDP
    /// port from other source ports, within the answer budget. Never more than
    /// [`AMPLIFICATION_LIMIT`] times the bytes of the packet answered, and only to the address
    /// and port it came from.
    fn answer_unknown_flow(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        path: UdpPair,
        received: usize,
        rst: Repr,
        sealed: Option<[u8; seal::OVERHEAD]>,
    ) {
        let affordable = (AMPLIFICATION_LIMIT * received / rst.buffer_len()).max(1) as u32;
        let packet = |path| CtrlPacket {
            remote_ip,
            path,
            repr: rst,
            sealed,
        };
        let Some(peer) = self.peers.get(&remote_ip).copied() else {
            self.queue_ctrl_packet(packet(path.reversed()));
            return;
        };
        let n = rss::spray_batch(peer.engines, self.cfg.handshake.success_target).min(affordable);
        for i in 0..n {
            if !self.answer_budget.take(now) {
                break;
            }
            let p = if i == 0 {
                path.reversed()
            } else {
                UdpPair {
                    src: random_port(&mut self.rng, self.cfg.udp_ports),
                    dst: path.src,
                }
            };
            self.queue_ctrl_packet(packet(p));
        }
    }

    /// For a sealed packet of a flow this host no longer has: makes `rst` a stateless reset
    /// (§12.4) — sealed-looking, ending with the flow's reset token, which only this host can
    /// compute and which its peer learned, encrypted, in the handshake. Its payload.
    fn stateless_reset(
        &mut self,
        remote_ip: Ipv4Addr,
        packet: &Repr,
        rst: &mut Repr,
    ) -> Option<[u8; seal::OVERHEAD]> {
        let enc = self.cfg.encryption.as_deref()?;
        if packet.flags & wire::flags::SEALED == 0 {
            return None;
        }
        let token = enc.reset_token(packet.dst_port, remote_ip, packet.src_port, packet.token);
        let mut payload = [0u8; seal::OVERHEAD];
        self.rng.fill(&mut payload[..seal::PN_LEN]);
        payload[seal::PN_LEN..].copy_from_slice(&token);
        rst.flags |= wire::flags::SEALED;
        rst.payload_len = seal::OVERHEAD as u16;
        Some(payload)
    }

    /// Records what a validated handshake taught about a peer host (PROTOCOL.md §5.4) and,
    /// with `listener`, which of its engines accepted a connection to a (Machnet) port.
    fn learn_peer(&mut self, ip: Ipv4Addr, peer: PeerInfo, listener: Option<(u16, u16)>) {
        if self.peers.len() >= PEER_CACHE_CAP {
            self.peers.clear();
        }
        self.peers.insert(ip, peer);
        if let Some((port, engine)) = listener {
            if self.remote_listeners.len() >= PEER_CACHE_CAP {
                self.remote_listeners.clear();
            }
            self.remote_listeners.insert((ip, port), engine);
        }
    }

    /// Answers a SYN without keeping state (PROTOCOL.md §5.5): a SYN-ACK batch whose ISN and
    /// token are the attempt's SYN cookie, within three times the SYN's bytes and the answer
    /// budget, to the reply pool.
    fn answer_with_cookie(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        syn: &Repr,
        hs: &Handshake,
        path: UdpPair,
        pool: PortPool,
    ) {
        let attempt = Attempt::of(remote_ip, syn, hs.token, syn.seq);
        let cookie = self.cookies.issue(&attempt, now);
        let h = &self.cfg.handshake;
        let engines = hs.engine_count.min(crate::MAX_ENGINES);
        let batch =
            rss::spray_batch_for_attempt(engines, h.success_target, hs.attempt, h.max_batch);
        let affordable = (AMPLIFICATION_LIMIT * syn.buffer_len() / SYNACK_LEN) as u32;
        let cfg = &self.cfg;
        let synack = Repr {
            packet_type: PacketType::SynAck,
            flags: 0,
            src_port: syn.dst_port,
            dst_port: syn.src_port,
            seq: cookie.isn,
            ack: syn.seq.wrapping_add(1),
            window: Flow::cookie_window(cfg),
            ts_val: now.wire_micros().max(1),
            ts_ecr: syn.ts_val,
            msg_len: 0,
            sack: wire::SackList::new(),
            handshake: Some(Handshake {
                engine_count: cfg.engine_count,
                engine_id: cfg.engine_id,
                udp_port_base: cfg.udp_ports.base,
                udp_port_count: cfg.udp_ports.count,
                echo_path: path,
                reply_hint: UdpPair::NONE,
                attempt: hs.attempt,
                max_message_len: cfg.max_message_len,
                max_datagram: cfg.max_udp_payload,
                token: cookie.token,
                isn: cookie.isn,
            }),
            payload_len: 0,
            token: hs.token,
        };
        self.stats.syn_cookies_sent += 1;
        for _ in 0..batch.min(affordable) {
            if !self.answer_budget.take(now) {
                break;
            }
            let p = UdpPair {
                src: random_port(&mut self.rng, self.cfg.udp_ports),
                dst: random_port(&mut self.rng, pool),
            };
            self.stats.syn_acks_sent += 1;
            self.queue_ctrl(remote_ip, p, synack);
        }
    }

    /// A handshake ACK/DATA/FIN for no flow that carries a valid SYN cookie of this engine
    /// establishes its flow (PROTOCOL.md §5.5) and is then handled by it. `None`: not such a
    /// packet (the caller goes on with the unknown-flow rules).
    fn accept_cookie(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        repr: &Repr,
        payload: &[u8],
        path: UdpPair,
    ) -> Option<Result<(), DropReason>> {
        let mut hs = repr.handshake?;
        // An encrypted engine's cookies are retries, echoed in a SYN (§12.5), never in an ACK:
        // its handshake state cannot be rebuilt from a cookie.
        if self.cfg.encryption.is_some()
            || !matches!(
                repr.packet_type,
                PacketType::Ack | PacketType::Data | PacketType::Fin
            )
            || self
                .ports
                .designated(repr.dst_port, remote_ip, repr.src_port)
                != Some(self.cfg.engine_id)
        {
            return None;
        }
        let attempt = Attempt::of(remote_ip, repr, hs.token, hs.isn);
        let cookie = self
            .cookies
            .check(&attempt, now, repr.token, repr.ack.wrapping_sub(1))?;
        // As a half-open flow checks a handshake ACK (§5.1 step 5): the echo is one of our
        // SYN-ACK paths, into the client's pool (cut as for its SYN).
        let pool = reply_pool(&hs, path.src)?;
        (hs.udp_port_base, hs.udp_port_count) = (pool.base, pool.count);
        if !self.cfg.udp_ports.contains(hs.echo_path.src) || !pool.contains(hs.echo_path.dst) {
            return None;
        }
        if self.live >= self.cfg.max_flows {
            return Some(Err(DropReason::FlowLimit));
        }
        // Once per attempt: a duplicate or replay of a handshake packet after the flow ended
        // must not establish it again and deliver its message twice.
        match self.used_cookies.take(hs.token, now) {
            Ok(()) => {}
            Err(CookieRefusal::Used) => return Some(Err(DropReason::StaleHandshake)),
            Err(CookieRefusal::Full) => return Some(Err(DropReason::FlowLimit)),
        }
        let key = self.key(remote_ip, repr.src_port, repr.dst_port);
        let window = Flow::cookie_window(&self.cfg);
        let flow = Flow::new_cookie_server(&self.cfg, key, cookie, &hs, repr, window, now);
        let idx = self.insert(flow, now).index;
        self.stats.cookie_accepts += 1;
        let listen_port = repr.dst_port;
        let result = self.run(idx, |f, ctx| {
            ctx.stats.accepts_completed += 1;
            ctx.events.push_back(Event::Accepted {
                flow: ctx.id,
                listen_port,
            });
            f.handle(now, repr, payload, path, ctx)
        });
        let peer = PeerInfo {
            engines: hs.engine_count.min(crate::MAX_ENGINES),
            pool,
        };
        self.learn_peer(remote_ip, peer, None);
        self.settle(idx, now);
        Some(result)
    }

    fn queue_ctrl(&mut self, remote_ip: Ipv4Addr, path: UdpPair, repr: Repr) {
        self.queue_ctrl_packet(CtrlPacket::plain(remote_ip, path, repr));
    }

    fn queue_ctrl_packet(&mut self, packet: CtrlPacket) {
        if self.ctrl.len() < CTRL_QUEUE_CAP {
            self.ctrl.push_back(packet);
        }
    }

    /// A SYN for no existing flow (PROTOCOL.md §5.1).
    fn accept_syn(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        syn: &Repr,
        payload: &[u8],
        path: UdpPair,
    ) -> Result<(), DropReason> {
        let mut hs = syn
            .handshake
            .expect("parse guarantees a handshake block on SYN");
        // Everything we send to this unvalidated address goes to UDP ports of its announced
        // pool, which must hold the port this SYN came from and is cut to a window around it.
        let pool = reply_pool(&hs, path.src).ok_or(DropReason::Malformed)?;
        (hs.udp_port_base, hs.udp_port_count) = (pool.base, pool.count);
        if !self.ports.i_listen(syn.dst_port) {
            if self.ports.listeners(syn.dst_port) != 0 {
                return Err(DropReason::WrongEngine);
            }
            // Nobody on this host listens: refuse.
            self.refuse_syn(now, remote_ip, syn, &hs, pool);
            return Err(DropReason::NoListener);
        }
        // Several engines listen: the flow's designated one accepts it, the others drop its SYNs
        // (the client's spray reaches the designated engine as it would a single listener).
        if self.ports.designated(syn.dst_port, remote_ip, syn.src_port) != Some(self.cfg.engine_id)
        {
            return Err(DropReason::WrongEngine);
        }
        let sealed = syn.flags & wire::flags::SEALED != 0;
        if sealed != self.cfg.encryption.is_some() {
            // A plaintext client of an encrypted host, or the other way round (§12.4).
            self.refuse_syn(now, remote_ip, syn, &hs, pool);
            return Err(DropReason::SealMismatch);
        }
        // A sealed SYN that echoes our retry cookie comes from an address that receives our
        // packets (§12.5): it gets its handshake whatever the load.
        let retried = sealed && self.retry_cookie_ok(now, remote_ip, syn, &hs, payload);
        if !retried
            && (self.half_open >= self.cfg.handshake.syn_cookies_after
                || (sealed && !self.noise_budget.take(now)))
        {
            // Under load, answer without state: a SYN cookie (§5.5), or for a sealed SYN a
            // retry — the same SYN-ACK, which the client echoes in its next SYNs — before any
            // Diffie-Hellman is spent on it (§12.5).
            self.answer_with_cookie(now, remote_ip, syn, &hs, path, pool);
            return Ok(());
        }
        if self.live >= self.cfg.max_flows || self.half_open >= self.cfg.handshake.max_half_open {
            return Err(DropReason::FlowLimit);
        }
        if retried {
            // One half-open flow per retried attempt: a replay after it ended gets none.
            match self.used_cookies.take(hs.token, now) {
                Ok(()) => {}
                Err(CookieRefusal::Used) => return Err(DropReason::StaleHandshake),
                Err(CookieRefusal::Full) => return Err(DropReason::FlowLimit),
            }
        }
        let iss = self.rng.random();
        let token = fresh_token(&mut self.rng);
        let keys = match &self.cfg.encryption {
            Some(enc) => {
                let reset = enc.reset_token(syn.dst_port, remote_ip, syn.src_port, token);
                let binding = seal::Binding {
                    client_port: syn.src_port,
                    server_port: syn.dst_port,
                    client_token: hs.token,
                    client_isn: syn.seq,
                };
                match seal::respond(enc, remote_ip, binding, &payload[..seal::MSG1_LEN], &reset) {
                    Ok(response) => Some(FlowKeys::Answered(Box::new(response))),
                    Err(_) => {
                        self.refuse_syn(now, remote_ip, syn, &hs, pool);
                        return Err(DropReason::PeerNotAllowed);
                    }
                }
            }
            None => None,
        };
        let key = self.key(remote_ip, syn.src_port, syn.dst_port);
        // We answer only inside the client's pool, which `syn_reply_pool` checked (§5.1).
        let synack_path = if !hs.reply_hint.is_none() && pool.contains(hs.reply_hint.dst) {
            Some(hs.reply_hint)
        } else {
            self.path_to_remote_engine(remote_ip, pool, hs.engine_id)
        };
        let flow = Flow::new_server(
            &self.cfg,
            key,
            iss,
            token,
            syn,
            &hs,
            path,
            now,
            synack_path,
            keys,
        );
        self.insert(flow, now);
        Ok(())
    }

    /// Whether sealed `syn` echoes a retry cookie this engine gave its attempt (§12.5).
    fn retry_cookie_ok(
        &self,
        now: Instant,
        remote_ip: Ipv4Addr,
        syn: &Repr,
        hs: &Handshake,
        payload: &[u8],
    ) -> bool {
        let Some((token, isn)) = seal::retry_cookie(payload) else {
            return false;
        };
        let attempt = Attempt::of(remote_ip, syn, hs.token, syn.seq);
        self.cookies.check(&attempt, now, token, isn).is_some()
    }

    /// Refuses a SYN with RSTs (PROTOCOL.md §5.2). The client's flow lives on one of its engines,
    /// which our RST reaches only by chance, so the RST is sprayed like a SYN-ACK: one batch
    /// sized for the first attempt, within the answer budget and three times the SYN's bytes, to
    /// the reply pool. They carry the client's token.
    fn refuse_syn(
        &mut self,
        now: Instant,
        remote_ip: Ipv4Addr,
        syn: &Repr,
        hs: &Handshake,
        pool: PortPool,
    ) {
        let rst = rst_repr(
            syn.dst_port,
            syn.src_port,
            0,
            syn.seq.wrapping_add(1),
            hs.token,
        );
        let affordable = (AMPLIFICATION_LIMIT * syn.buffer_len() / rst.buffer_len()) as u32;
        let engines = hs.engine_count.min(crate::MAX_ENGINES);
        let n = rss::spray_batch(engines, self.cfg.handshake.success_target).min(affordable);
        for _ in 0..n {
            if !self.answer_budget.take(now) {
                break;
            }
            let p = UdpPair {
                src: random_port(&mut self.rng, self.cfg.udp_ports),
                dst: random_port(&mut self.rng, pool),
            };
            self.queue_ctrl(remote_ip, p, rst);
        }
    }

    /// Writes the next packet to send into `buf` (at least `max_udp_payload` bytes long).
    ///
    /// # Panics
    /// If `buf` is shorter than [`EngineConfig::max_udp_payload`].
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        assert!(
            buf.len() >= usize::from(self.cfg.max_udp_payload),
            "transmit buffer too small"
        );
        self.last_now = now;
        let t = self.next_transmit(now, buf)?;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += t.len as u64;
        Some(t)
    }

    fn next_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(c) = self.ctrl.pop_front() {
            if c.repr.packet_type == PacketType::Rst {
                self.stats.rsts_sent += 1;
            }
            return Some(c.emit(buf, self.cfg.checksum == ChecksumMode::Always));
        }
        while let Some(idx) = self.ready.pop_front() {
            let slot = &mut self.slots[idx as usize];
            if slot.flow.is_none() {
                continue;
            }
            slot.in_ready = false;
            let t = self.run(idx, |f, ctx| f.poll_transmit(now, buf, ctx));
            self.settle(idx, now);
            if t.is_some() {
                return t;
            }
        }
        None
    }

    /// The next event for the application side.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`Engine::handle_timeout`] has work (may be early).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if self.scheduled_at(id) == Some(t) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    fn scheduled_at(&self, id: FlowId) -> Option<Instant> {
        let slot = &self.slots[id.index as usize];
        if slot.generation != id.generation || slot.flow.is_none() {
            return None;
        }
        slot.scheduled
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        while let Some(&Reverse((t, id))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.scheduled_at(id) != Some(t) {
                continue;
            }
            let idx = id.index;
            self.slots[idx as usize].scheduled = None;
            self.run(idx, |f, ctx| f.on_timeout(now, ctx));
            self.settle(idx, now);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Flow table
    // ----------------------------------------------------------------------------------------

    /// The identity of the flow between our `local_port` and `remote_ip:remote_port`.
    fn key(&self, remote_ip: Ipv4Addr, remote_port: u16, local_port: u16) -> FlowKey {
        FlowKey {
            local_ip: self.cfg.local_ip,
            local_port,
            remote_ip,
            remote_port,
        }
    }

    fn insert(&mut self, flow: Flow, now: Instant) -> FlowId {
        let key = flow.key();
        let half_open = flow.is_half_open();
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[idx as usize];
        *slot = Slot {
            generation: slot.generation,
            flow: Some(Box::new(flow)),
            counted_half_open: half_open,
            ..Slot::default()
        };
        if half_open {
            self.half_open += 1;
        }
        self.by_key.insert(key, idx);
        self.live += 1;
        self.stats.flows_opened += 1;
        self.settle(idx, now);
        FlowId {
            index: idx,
            generation: self.slots[idx as usize].generation,
        }
    }

    /// The slot of a flow the application may use.
    fn visible(&self, id: FlowId) -> Option<u32> {
        let slot = self.slots.get(id.index as usize)?;
        let f = slot.flow.as_ref()?;
        (slot.generation == id.generation && f.is_visible() && f.death().is_none())
            .then_some(id.index)
    }

    fn flow_mut(&mut self, idx: u32) -> &mut Flow {
        self.slots[idx as usize].flow.as_mut().expect("live flow")
    }

    fn flow_ref(&self, idx: u32) -> &Flow {
        self.slots[idx as usize].flow.as_ref().expect("live flow")
    }

    /// Runs `f` on a live flow with access to the engine's shared pieces, and keeps the
    /// engine's count of held bytes up to date with what the flow holds afterwards.
    fn run<R>(&mut self, idx: u32, f: impl FnOnce(&mut Flow, &mut Ctx) -> R) -> R {
        let share = self.fair_share();
        let slot = &mut self.slots[idx as usize];
        let id = FlowId {
            index: idx,
            generation: slot.generation,
        };
        let flow = slot.flow.as_mut().expect("live flow");
        let before = flow.held_bytes();
        flow.set_memory(MemoryView {
            share,
            free: self.cfg.memory_budget.saturating_sub(self.held),
        });
        let mut ctx = Ctx {
            cfg: &self.cfg,
            rng: &mut self.rng,
            events: &mut self.events,
            stats: &mut self.stats,
            ctrl: &mut self.ctrl,
            answer_budget: &mut self.answer_budget,
            id,
            memory_starved: false,
        };
        let r = f(flow, &mut ctx);
        let starved = ctx.memory_starved;
        self.held = self.held - before + flow.held_bytes();
        self.stats.held_bytes_peak = self.stats.held_bytes_peak.max(self.held as u64);
        if starved {
            self.reclaim(idx, share);
        }
        r
    }

    /// A flow within its fair share was refused data because the engine's budget is spent:
    /// the flow holding the most, if above its share, is aborted so that the refused data
    /// fits when the peer resends it (PROTOCOL.md §6.5). Held data cannot be given back
    /// otherwise: out-of-order packets were selectively acknowledged (the peer will not resend
    /// them) and partial messages cumulatively.
    fn reclaim(&mut self, starved: u32, share: usize) {
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i as u32 != starved)
            .filter_map(|(i, s)| Some((i as u32, s.flow.as_ref()?.held_bytes())))
            .max_by_key(|&(_, held)| held);
        let Some((idx, held)) = victim else { return };
        if held <= share {
            return;
        }
        self.stats.memory_reclaims += 1;
        let f = self.flow_mut(idx);
        let visible = f.is_visible();
        f.die(CloseReason::Aborted, visible, true);
        self.settle(idx, self.last_now);
    }

    /// After any change to a flow: reap it if it died, else re-arm its timers, register its
    /// deadline and queue it for output.
    fn settle(&mut self, idx: u32, now: Instant) {
        let slot = &mut self.slots[idx as usize];
        let generation = slot.generation;
        let Some(flow) = slot.flow.as_mut() else {
            return;
        };
        let send_bytes = flow.send_buffered();
        self.send_buffered = self.send_buffered - slot.counted_send_bytes + send_bytes;
        slot.counted_send_bytes = send_bytes;
        if slot.counted_half_open && (flow.death().is_some() || !flow.is_half_open()) {
            slot.counted_half_open = false;
            self.half_open -= 1;
            if flow.death().is_none() {
                // The client answered our SYN-ACK with our token: what its SYN said about its
                // host may now size and aim our packets to it (PROTOCOL.md §5.4).
                let (engines, pool) = flow.peer_host();
                let ip = flow.key().remote_ip;
                self.learn_peer(ip, PeerInfo { engines, pool }, None);
                return self.settle(idx, now);
            }
        }
        if let Some(death) = flow.death() {
            let mut flow = slot.flow.take().expect("checked");
            self.held -= flow.held_bytes();
            self.send_buffered -= slot.counted_send_bytes;
            slot.counted_send_bytes = 0;
            slot.generation = slot.generation.wrapping_add(1);
            self.free.push(idx);
            self.by_key.remove(&flow.key());
            self.live -= 1;
            self.stats.flows_closed += 1;
            if death.send_rst {
                if let Some(rst) = flow.rst() {
                    self.queue_ctrl_packet(rst);
                }
            }
            if death.notify {
                let id = FlowId {
                    index: idx,
                    generation,
                };
                if death.reason != CloseReason::Aborted {
                    let ready = flow.take_unread();
                    if !ready.is_empty() {
                        self.leftovers.insert(id, ready);
                    }
                }
                self.events.push_back(Event::Closed {
                    flow: id,
                    reason: death.reason,
                });
            }
            return;
        }
        flow.arm_timers(now, &self.cfg);
        if let Some(d) = flow.next_deadline() {
            if slot.scheduled.is_none_or(|s| d < s) {
                slot.scheduled = Some(d);
                let id = FlowId {
                    index: idx,
                    generation,
                };
                self.timers.push(Reverse((d, id)));
            }
        }
        if !slot.in_ready && flow.has_output() {
            slot.in_ready = true;
            self.ready.push_back(idx);
        }
    }
}

/// The bytes of a received datagram: the caller's, or given up to be opened in place.
enum Received<'a> {
    Shared(&'a [u8]),
    Mut(&'a mut [u8]),
}

impl<'a> Received<'a> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Received::Shared(b) => b,
            Received::Mut(b) => b,
        }
    }

    fn into_slice(self) -> &'a [u8] {
        match self {
            Received::Shared(b) => b,
            Received::Mut(b) => b,
        }
    }
}
