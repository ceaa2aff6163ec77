//! The simulated network: hosts with several engines each, links between every pair of hosts,
//! a simulated clock, and a discrete-event loop.
//!
//! # Model
//! - Host `h` has address `198.18.x.y` (the RFC 2544 benchmarking range; nothing leaves the
//!   process) and one [`Nic`] whose secret RSS key picks the engine each arriving datagram goes to.
//! - Datagrams sent by an engine go through the [`Link`] of their (source host, destination host)
//!   direction and wait in a priority queue keyed by (delivery time, insertion counter): equal
//!   times are delivered in send order, so a run depends only on the seed.
//! - [`Network::step`] performs the single earliest action — deliver one datagram or fire one
//!   engine's timer — and then drains that engine's transmissions and events. The application
//!   (a test or a [`crate::workload::Workload`]) reacts to events between steps, at the same
//!   simulated instant.
//! - Engine API calls made through the network ([`Network::send`], [`Network::engine_mut`], ...)
//!   mark the engine dirty; its transmissions and events are collected before the next step.
//!
//! The simulator never reads a wall clock and iterates only over vectors and B-tree maps.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use machnet_core::config::{ConfigError, EngineConfig};
use machnet_core::time::Instant;
use machnet_core::{
    CloseError, ConnectError, Datagram, Engine, EngineStats, Event, FlowId, ListenError, RecvError,
    SendError,
};

use crate::link::{self, Link, LinkConfig, LinkStats};
use crate::nic::Nic;
use crate::seed::{self, SimRng};

/// One engine of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EngineAddr {
    /// Index of the host, `0 .. host_count`.
    pub host: usize,
    /// Engine of that host, `0 .. engine_count(host)`.
    pub engine: u16,
}

impl EngineAddr {
    /// Engine `engine` of host `host`.
    pub fn new(host: usize, engine: u16) -> Self {
        EngineAddr { host, engine }
    }
}

impl fmt::Display for EngineAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} engine {}", self.host, self.engine)
    }
}

/// The address of host `index`: `198.18.0.1`, `198.18.0.2`, ... (RFC 2544 benchmarking range).
pub fn host_ip(index: usize) -> Ipv4Addr {
    let n = index as u32 + 1;
    Ipv4Addr::new(198, 18, (n >> 8) as u8, (n & 0xff) as u8)
}

/// Why a network could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// No hosts were added.
    NoHosts,
    /// More hosts than the address plan supports (65 000).
    TooManyHosts(usize),
    /// An engine rejected its configuration.
    Engine {
        /// The engine.
        addr: EngineAddr,
        /// What its configuration check said.
        error: ConfigError,
    },
    /// The link configuration is invalid.
    Link(String),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoHosts => f.write_str("a network needs at least one host"),
            BuildError::TooManyHosts(n) => write!(f, "{n} hosts exceed the address plan"),
            BuildError::Engine { addr, error } => write!(f, "{addr}: {error}"),
            BuildError::Link(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for BuildError {}

type ConfigureFn = Box<dyn Fn(EngineAddr, &mut EngineConfig)>;

/// Describes a network before it is built.
pub struct NetworkBuilder {
    seed: u64,
    engines_per_host: Vec<u16>,
    link: LinkConfig,
    configure: Option<ConfigureFn>,
    rss_oracle: bool,
    rss_oracle_remote: bool,
    start: Instant,
    replay_seed: Option<u64>,
    encrypted: bool,
}

impl NetworkBuilder {
    /// An empty network whose every random choice derives from `seed`.
    pub fn new(seed: u64) -> Self {
        NetworkBuilder {
            seed,
            engines_per_host: Vec::new(),
            link: LinkConfig::default(),
            configure: None,
            rss_oracle: false,
            rss_oracle_remote: false,
            start: Instant::ZERO,
            replay_seed: None,
            encrypted: std::env::var_os("MACHNET_SIM_ENCRYPT").is_some_and(|v| v == "1"),
        }
    }

    /// Encryption in transit (PROTOCOL.md §12) on every engine: each host gets a static key
    /// derived from the seed and allows every other host's. Default: off, or on when the
    /// environment has `MACHNET_SIM_ENCRYPT=1` (to run any suite encrypted).
    pub fn encrypted(mut self, on: bool) -> Self {
        self.encrypted = on;
        self
    }

    /// The seed that replays the whole test when it differs from the network's own (a test that
    /// derives one network seed per scenario from its seed). Failure messages name it in the
    /// `MACHNET_SIM_SEED=` hint.
    pub fn replay_seed(mut self, seed: u64) -> Self {
        self.replay_seed = Some(seed);
        self
    }

    /// Adds a host with `engines` engines.
    pub fn host(mut self, engines: u16) -> Self {
        self.engines_per_host.push(engines);
        self
    }

    /// The link configuration of every direction between every pair of hosts (changeable later
    /// with [`Network::set_link`]).
    pub fn link(mut self, config: LinkConfig) -> Self {
        self.link = config;
        self
    }

    /// Adjusts each engine's configuration after [`EngineConfig::new`] filled in the defaults.
    pub fn engine_config(mut self, f: impl Fn(EngineAddr, &mut EngineConfig) + 'static) -> Self {
        self.configure = Some(Box::new(f));
        self
    }

    /// Installs the deterministic RSS hook: every engine gets a [`machnet_core::rss::ToeplitzOracle`]
    /// for its own host's NIC.
    pub fn rss_oracle(mut self, enabled: bool) -> Self {
        self.rss_oracle = enabled;
        self
    }

    /// With [`NetworkBuilder::rss_oracle`]: the oracle also knows every other host's RSS table
    /// (as when all VMs of a provider share one fixed key), so SYNs need no spraying either.
    pub fn rss_oracle_remote(mut self, enabled: bool) -> Self {
        self.rss_oracle_remote = enabled;
        self
    }

    /// The simulated time at which the network starts (default: the epoch).
    pub fn start_time(mut self, start: Instant) -> Self {
        self.start = start;
        self
    }

    /// Creates the engines.
    pub fn build(self) -> Result<Network, BuildError> {
        if self.engines_per_host.is_empty() {
            return Err(BuildError::NoHosts);
        }
        if self.engines_per_host.len() > 65_000 {
            return Err(BuildError::TooManyHosts(self.engines_per_host.len()));
        }
        self.link.validate().map_err(BuildError::Link)?;
        let mut hosts = Vec::with_capacity(self.engines_per_host.len());
        let mut slots = Vec::new();
        let mut ip_to_host = BTreeMap::new();
        let mut max_payload = 0usize;
        let mut nics: Vec<Option<Nic>> = (0..self.engines_per_host.len())
            .map(|h| {
                Some(Nic::new(
                    self.engines_per_host[h],
                    &mut seed::rng(self.seed, "rss-key", h as u64),
                ))
            })
            .collect();
        let tables: Vec<_> = nics.iter().flatten().map(Nic::table).collect();
        let encryption = self
            .encrypted
            .then(|| host_encryption(self.seed, self.engines_per_host.len()));
        for (h, &count) in self.engines_per_host.iter().enumerate() {
            let ip = host_ip(h);
            let nic = nics[h].take().expect("one NIC per host");
            let mut engines = Vec::with_capacity(usize::from(count));
            for e in 0..count {
                let addr = EngineAddr::new(h, e);
                let mut config = EngineConfig::new(ip, e, count);
                if let Some(keys) = &encryption {
                    config.encryption = Some(keys[h].clone());
                    // The simulator does not charge the CPU an X25519 handshake costs, which is
                    // what this budget protects; its own tests are in machnet-core.
                    config.handshake.max_encrypted_handshake_rate = 1_000_000;
                }
                if let Some(f) = &self.configure {
                    f(addr, &mut config);
                }
                max_payload = max_payload.max(usize::from(config.max_udp_payload));
                let engine_seed = seed::derive(self.seed, "engine", slots.len() as u64);
                let mut engine = Engine::new(config, engine_seed)
                    .map_err(|error| BuildError::Engine { addr, error })?;
                if self.rss_oracle {
                    let mut oracle = nic.oracle();
                    if self.rss_oracle_remote {
                        for (j, table) in tables.iter().enumerate().filter(|&(j, _)| j != h) {
                            oracle = oracle.with_remote(host_ip(j), table.clone());
                        }
                    }
                    engine.set_rss_oracle(Box::new(oracle));
                }
                engines.push(Slot {
                    engine,
                    timeout: None,
                    dirty: true,
                    stuck: 0,
                });
                slots.push(addr);
            }
            ip_to_host.insert(ip, h);
            hosts.push(Host {
                ip,
                nic,
                engines,
                down: false,
                listeners: BTreeMap::new(),
            });
        }
        let dirty = (0..slots.len()).collect();
        let host_base = hosts
            .iter()
            .scan(0usize, |acc, h| {
                let base = *acc;
                *acc += h.engines.len();
                Some(base)
            })
            .collect();
        Ok(Network {
            seed: self.seed,
            replay_seed: self.replay_seed.unwrap_or(self.seed),
            now: self.start,
            hosts,
            slots,
            host_base,
            ip_to_host,
            links: BTreeMap::new(),
            default_link: self.link,
            link_rng: seed::rng(self.seed, "links", 0),
            in_flight: BinaryHeap::new(),
            next_seq: 0,
            events: VecDeque::new(),
            record: None,
            dirty,
            tx_buf: vec![0; max_payload],
            pool: Vec::new(),
            stats: NetStats::default(),
        })
    }
}

/// Counters of the simulator itself (link-level counters are in [`LinkStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Steps taken.
    pub steps: u64,
    /// Datagrams handed to engines.
    pub delivered: u64,
    /// Of those, datagrams the links corrupted.
    pub corrupted_delivered: u64,
    /// Datagrams that arrived at a host that is down.
    pub to_down_host: u64,
    /// Datagrams a down host's engines tried to send.
    pub from_down_host: u64,
    /// Datagrams addressed to an IP no host has.
    pub unroutable: u64,
    /// Engine timers fired.
    pub timers_fired: u64,
}

struct Slot {
    engine: Engine,
    /// The engine's `poll_timeout`, refreshed after every interaction with it.
    timeout: Option<Instant>,
    dirty: bool,
    /// Consecutive timer firings after which the engine still wanted a timer at or before now.
    stuck: u32,
}

struct Host {
    ip: Ipv4Addr,
    nic: Nic,
    engines: Vec<Slot>,
    down: bool,
    /// Port → the engine listening on it.
    listeners: BTreeMap<u16, u16>,
}

/// A datagram on the wire.
struct InFlight {
    at: Instant,
    seq: u64,
    src_ip: Ipv4Addr,
    to_host: usize,
    src_port: u16,
    dst_port: u16,
    corrupted: bool,
    payload: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Firings of one engine's timer at one instant, without the engine moving its deadline past
/// that instant, after which the simulator declares a livelock.
const LIVELOCK_LIMIT: u32 = 100_000;

/// The whole simulated network. See the module documentation for the model.
pub struct Network {
    seed: u64,
    replay_seed: u64,
    now: Instant,
    hosts: Vec<Host>,
    /// Global engine index → address (host-major order).
    slots: Vec<EngineAddr>,
    /// Global index of each host's engine 0.
    host_base: Vec<usize>,
    ip_to_host: BTreeMap<Ipv4Addr, usize>,
    /// Link directions created on first use from `default_link`.
    links: BTreeMap<(usize, usize), Link>,
    default_link: LinkConfig,
    link_rng: SimRng,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    next_seq: u64,
    events: VecDeque<(EngineAddr, Event)>,
    /// Every event ever produced, with its time, when recording is on.
    record: Option<Vec<(Instant, EngineAddr, Event)>>,
    /// Global indices of engines touched by the application since their last flush.
    dirty: Vec<usize>,
    tx_buf: Vec<u8>,
    /// Recycled datagram buffers.
    pool: Vec<Vec<u8>>,
    stats: NetStats,
}

impl Network {
    /// The seed the network was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The seed that replays the test this network belongs to (see
    /// [`NetworkBuilder::replay_seed`]); the network's own seed by default.
    pub fn replay_seed(&self) -> u64 {
        self.replay_seed
    }

    /// The simulated clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of hosts.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Engines of host `host`.
    pub fn engine_count(&self, host: usize) -> u16 {
        self.hosts[host].engines.len() as u16
    }

    /// The IPv4 address of host `host`.
    pub fn host_ip(&self, host: usize) -> Ipv4Addr {
        self.hosts[host].ip
    }

    /// The host with address `ip`, if any.
    pub fn host_by_ip(&self, ip: Ipv4Addr) -> Option<usize> {
        self.ip_to_host.get(&ip).copied()
    }

    /// Every engine, host by host.
    pub fn engine_addrs(&self) -> impl Iterator<Item = EngineAddr> + '_ {
        self.slots.iter().copied()
    }

    /// The NIC of host `host` (for tests that need to predict RSS placement).
    pub fn nic(&self, host: usize) -> &Nic {
        &self.hosts[host].nic
    }

    /// Simulator counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Datagrams currently on the wire.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn global(&self, a: EngineAddr) -> usize {
        assert!(
            a.host < self.hosts.len() && usize::from(a.engine) < self.hosts[a.host].engines.len(),
            "{a} does not exist"
        );
        self.host_base[a.host] + usize::from(a.engine)
    }

    /// Read access to an engine (stats, flow keys, configuration).
    pub fn engine(&self, a: EngineAddr) -> &Engine {
        &self.hosts[a.host].engines[usize::from(a.engine)].engine
    }

    /// Mutable access to an engine for API calls not wrapped here; pass [`Network::now`] as the
    /// time. The engine's output is collected before the next step.
    pub fn engine_mut(&mut self, a: EngineAddr) -> &mut Engine {
        let g = self.global(a);
        let slot = &mut self.hosts[a.host].engines[usize::from(a.engine)];
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(g);
        }
        &mut slot.engine
    }

    /// Summed counters of every engine.
    pub fn total_engine_stats(&self) -> EngineStats {
        let mut total = EngineStats::default();
        for h in &self.hosts {
            for s in &h.engines {
                crate::report::add_engine_stats(&mut total, s.engine.stats());
            }
        }
        total
    }

    // ----- application-facing engine API -------------------------------------------------

    /// Listens on `port` on engine `a`, and tells the host's other engines so (they drop
    /// misrouted SYNs for the port instead of refusing them).
    pub fn listen(&mut self, a: EngineAddr, port: u16) -> Result<(), ListenError> {
        self.engine_mut(a).listen(port)?;
        for e in 0..self.engine_count(a.host) {
            if e != a.engine {
                self.engine_mut(EngineAddr::new(a.host, e))
                    .add_host_listener(port, a.engine)?;
            }
        }
        self.hosts[a.host].listeners.insert(port, a.engine);
        Ok(())
    }

    /// Stops listening on `port` on engine `a` and tells the host's other engines.
    pub fn unlisten(&mut self, a: EngineAddr, port: u16) {
        self.engine_mut(a).unlisten(port);
        for e in 0..self.engine_count(a.host) {
            if e != a.engine {
                self.engine_mut(EngineAddr::new(a.host, e))
                    .remove_host_listener(port, a.engine);
            }
        }
        self.hosts[a.host].listeners.remove(&port);
    }

    /// The engine of `host` listening on `port`, if any.
    pub fn listener(&self, host: usize, port: u16) -> Option<EngineAddr> {
        self.hosts[host]
            .listeners
            .get(&port)
            .map(|&e| EngineAddr::new(host, e))
    }

    /// Connects engine `a` to `port` on host `remote_host`.
    pub fn connect(
        &mut self,
        a: EngineAddr,
        remote_host: usize,
        port: u16,
    ) -> Result<FlowId, ConnectError> {
        let now = self.now;
        let ip = self.host_ip(remote_host);
        self.engine_mut(a).connect(now, ip, port)
    }

    /// Queues a message on a flow of engine `a`.
    pub fn send(&mut self, a: EngineAddr, flow: FlowId, msg: Bytes) -> Result<(), SendError> {
        let now = self.now;
        self.engine_mut(a).send(now, flow, msg)
    }

    /// Takes the next whole message of a flow of engine `a`.
    pub fn recv(&mut self, a: EngineAddr, flow: FlowId) -> Result<Option<Bytes>, RecvError> {
        self.engine_mut(a).recv(flow)
    }

    /// Closes a flow gracefully.
    pub fn close(&mut self, a: EngineAddr, flow: FlowId) -> Result<(), CloseError> {
        let now = self.now;
        self.engine_mut(a).close(now, flow)
    }

    /// Aborts a flow (RST).
    pub fn abort(&mut self, a: EngineAddr, flow: FlowId) -> Result<(), CloseError> {
        let now = self.now;
        self.engine_mut(a).abort(now, flow)
    }

    // ----- events --------------------------------------------------------------------------

    /// The oldest event not yet taken, of any engine.
    pub fn poll_event(&mut self) -> Option<(EngineAddr, Event)> {
        self.flush_dirty();
        self.events.pop_front()
    }

    /// Takes the pending events of engine `a`, oldest first, leaving other engines' events.
    pub fn take_events(&mut self, a: EngineAddr) -> Vec<Event> {
        self.flush_dirty();
        let mut mine = Vec::new();
        self.events.retain(|(addr, ev)| {
            if *addr == a {
                mine.push(*ev);
                false
            } else {
                true
            }
        });
        mine
    }

    /// Starts (or stops and discards) recording every event with its time, in addition to
    /// queueing it.
    pub fn record_events(&mut self, on: bool) {
        self.record = on.then(Vec::new);
    }

    /// The events recorded since [`Network::record_events`] turned recording on.
    pub fn recorded_events(&self) -> &[(Instant, EngineAddr, Event)] {
        self.record.as_deref().unwrap_or(&[])
    }

    // ----- links and hosts -------------------------------------------------------------------

    /// Sets the link direction `from → to` (affects datagrams sent from now on).
    pub fn set_link(&mut self, from: usize, to: usize, config: LinkConfig) {
        if let Err(why) = config.validate() {
            panic!("invalid link configuration: {why}");
        }
        self.links
            .entry((from, to))
            .or_insert_with(|| Link::new(config.clone()))
            .set_config(config);
    }

    /// Sets both directions between hosts `a` and `b`.
    pub fn set_link_pair(&mut self, a: usize, b: usize, config: LinkConfig) {
        self.set_link(a, b, config.clone());
        self.set_link(b, a, config);
    }

    /// Sets every link direction, existing and future.
    pub fn set_all_links(&mut self, config: LinkConfig) {
        if let Err(why) = config.validate() {
            panic!("invalid link configuration: {why}");
        }
        for link in self.links.values_mut() {
            link.set_config(config.clone());
        }
        self.default_link = config;
    }

    /// Counters of the link direction `from → to`.
    pub fn link_stats(&self, from: usize, to: usize) -> LinkStats {
        self.links
            .get(&(from, to))
            .map(|l| *l.stats())
            .unwrap_or_default()
    }

    /// Counters of all links summed.
    pub fn total_link_stats(&self) -> LinkStats {
        let mut total = LinkStats::default();
        for link in self.links.values() {
            total.add(link.stats());
        }
        total
    }

    /// Takes a host down (its engines freeze: no timers, nothing sent or received) or up again.
    pub fn set_host_down(&mut self, host: usize, down: bool) {
        self.hosts[host].down = down;
    }

    // ----- the event loop --------------------------------------------------------------------

    /// The earliest pending timer of an engine of a host that is up: (deadline, global index).
    fn earliest_timer(&self) -> Option<(Instant, usize)> {
        let mut best: Option<(Instant, usize)> = None;
        for (h, host) in self.hosts.iter().enumerate() {
            if host.down {
                continue;
            }
            for (e, slot) in host.engines.iter().enumerate() {
                if let Some(t) = slot.timeout {
                    let g = self.host_base[h] + e;
                    if best.is_none_or(|(bt, _)| t < bt) {
                        best = Some((t, g));
                    }
                }
            }
        }
        best
    }

    /// When the next step will happen, if anything is pending.
    pub fn next_event_time(&mut self) -> Option<Instant> {
        self.flush_dirty();
        let delivery = self.in_flight.peek().map(|Reverse(d)| d.at);
        let timer = self.earliest_timer().map(|(t, _)| t);
        let next = match (delivery, timer) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        next.map(|t| t.max(self.now))
    }

    /// Performs the earliest pending action: delivers one datagram or fires one engine timer,
    /// advancing the clock to its time. Returns the new time, or `None` if nothing is pending
    /// (no datagram in flight and no engine wants a timer).
    pub fn step(&mut self) -> Option<Instant> {
        self.flush_dirty();
        let delivery = self.in_flight.peek().map(|Reverse(d)| d.at);
        let timer = self.earliest_timer();
        let deliver = match (delivery, timer) {
            (None, None) => return None,
            (Some(d), Some((t, _))) => d <= t,
            (d, _) => d.is_some(),
        };
        self.stats.steps += 1;
        if deliver {
            self.deliver_next();
        } else if let Some((t, g)) = timer {
            self.fire_timer(t, g);
        }
        Some(self.now)
    }

    /// Steps until nothing is pending before `deadline`, then sets the clock to `deadline`.
    pub fn run_until(&mut self, deadline: Instant) {
        while self.next_event_time().is_some_and(|t| t <= deadline) {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Steps until `done` returns true (checked before each step) or the clock would pass
    /// `deadline`. Returns whether `done` became true.
    pub fn run_until_condition(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&mut Network) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match self.next_event_time() {
                Some(t) if t <= deadline => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self);
                }
            }
        }
    }

    fn deliver_next(&mut self) {
        let Some(Reverse(d)) = self.in_flight.pop() else {
            return;
        };
        self.now = self.now.max(d.at);
        let host = &mut self.hosts[d.to_host];
        if host.down {
            self.stats.to_down_host += 1;
            self.pool.push(d.payload);
            return;
        }
        let engine = host.nic.queue(d.src_ip, host.ip, d.src_port, d.dst_port);
        self.stats.delivered += 1;
        self.stats.corrupted_delivered += u64::from(d.corrupted);
        let slot = &mut host.engines[usize::from(engine)];
        slot.engine.handle_datagram(
            self.now,
            Datagram {
                remote_ip: d.src_ip,
                src_port: d.src_port,
                dst_port: d.dst_port,
                payload: &d.payload,
            },
        );
        slot.stuck = 0;
        let g = self.host_base[d.to_host] + usize::from(engine);
        self.flush(g);
        self.pool.push(d.payload);
    }

    fn fire_timer(&mut self, deadline: Instant, g: usize) {
        self.now = self.now.max(deadline);
        let now = self.now;
        let a = self.slots[g];
        self.stats.timers_fired += 1;
        self.hosts[a.host].engines[usize::from(a.engine)]
            .engine
            .handle_timeout(now);
        self.flush(g);
        let (seed, slot) = (
            self.seed,
            &mut self.hosts[a.host].engines[usize::from(a.engine)],
        );
        if slot.timeout.is_some_and(|t| t <= now) {
            slot.stuck += 1;
            assert!(
                slot.stuck < LIVELOCK_LIMIT,
                "livelock: {a} asked for a timer at or before {now:?} {LIVELOCK_LIMIT} times in a row \
                 (seed {seed}; replay with {}={seed})",
                seed::SEED_ENV
            );
        } else {
            slot.stuck = 0;
        }
    }

    fn flush_dirty(&mut self) {
        while let Some(g) = self.dirty.pop() {
            self.flush(g);
        }
    }

    /// Drains engine `g`'s transmissions into the links and its events into the event queue,
    /// and refreshes its cached timer.
    fn flush(&mut self, g: usize) {
        let a = self.slots[g];
        let Network {
            hosts,
            ip_to_host,
            links,
            default_link,
            link_rng,
            in_flight,
            next_seq,
            events,
            record,
            tx_buf,
            pool,
            stats,
            now,
            seed,
            ..
        } = self;
        let now = *now;
        let src_ip = hosts[a.host].ip;
        let down = hosts[a.host].down;
        let slot = &mut hosts[a.host].engines[usize::from(a.engine)];
        slot.dirty = false;
        let limit = usize::from(slot.engine.config().max_udp_payload);
        let buf = &mut tx_buf[..limit];
        while let Some(t) = slot.engine.poll_transmit(now, buf) {
            assert!(
                t.len <= limit,
                "{a} reported a {}-byte datagram in a {limit}-byte buffer (seed {seed})",
                t.len
            );
            if down {
                stats.from_down_host += 1;
                continue;
            }
            let Some(&to) = ip_to_host.get(&t.remote_ip) else {
                stats.unroutable += 1;
                continue;
            };
            let link = links
                .entry((a.host, to))
                .or_insert_with(|| Link::new(default_link.clone()));
            let fate = link.transmit(now, t.len, link_rng);
            for delivery in fate.deliveries() {
                let mut payload = pool.pop().unwrap_or_default();
                payload.clear();
                payload.extend_from_slice(&buf[..t.len]);
                if delivery.corrupt {
                    link::corrupt(&mut payload, link_rng);
                }
                in_flight.push(Reverse(InFlight {
                    at: delivery.at,
                    seq: *next_seq,
                    src_ip,
                    to_host: to,
                    src_port: t.src_port,
                    dst_port: t.dst_port,
                    corrupted: delivery.corrupt,
                    payload,
                }));
                *next_seq += 1;
            }
        }
        while let Some(ev) = slot.engine.poll_event() {
            if let Some(log) = record.as_mut() {
                log.push((now, a, ev));
            }
            events.push_back((a, ev));
        }
        slot.timeout = slot.engine.poll_timeout();
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("hosts", &self.hosts.len())
            .field("engines", &self.slots.len())
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish()
    }
}

/// One encryption configuration per host: a key derived from `seed`, and every other host in the
/// allow-list.
fn host_encryption(seed: u64, hosts: usize) -> Vec<std::sync::Arc<machnet_core::seal::Encryption>> {
    use machnet_core::seal::{Encryption, PeerKey, StaticKey};
    use rand::RngCore;
    let keys: Vec<StaticKey> = (0..hosts)
        .map(|h| {
            let mut private = [0u8; 32];
            seed::rng(seed, "static-key", h as u64).fill_bytes(&mut private);
            StaticKey::from_private(&private).expect("32 bytes")
        })
        .collect();
    (0..hosts)
        .map(|h| {
            let peers = (0..hosts)
                .filter(|&j| j != h)
                .map(|j| PeerKey {
                    ip: host_ip(j),
                    public: keys[j].public(),
                })
                .collect();
            std::sync::Arc::new(Encryption::new(keys[h].clone(), peers))
        })
        .collect()
}
