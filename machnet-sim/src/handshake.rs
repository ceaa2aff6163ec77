//! Connection-setup experiments: open many connections from one host to another and count the
//! handshake packets (SYNs and SYN-ACKs of both sides) they cost. Used by the RSS-- tests and the
//! benchmark's setup table.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use machnet_core::{Event, FlowId};

use crate::link::LinkConfig;
use crate::network::{EngineAddr, Network, NetworkBuilder};

/// Server engine `e` listens on `PORT_BASE + e`.
pub const PORT_BASE: u16 = 7000;
/// Connections [`measure`] opens at once.
pub const WAVE: usize = 8;
/// Simulated time between waves: keeps the server engines' answers well inside the default
/// budget for SYN-ACKs (`HandshakeConfig::max_answer_rate`), so the count is not distorted by
/// abandoned batches (8 setups × at most 28 SYN-ACKs per 5 ms is 45 000 per second).
pub const WAVE_GAP: Duration = Duration::from_millis(5);

/// What a batch of connection setups cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupCost {
    /// Connections set up.
    pub connections: usize,
    /// SYNs sent for them.
    pub syns: u64,
    /// SYN-ACKs sent for them.
    pub syn_acks: u64,
    /// Simulated time the experiment took.
    pub duration: Duration,
}

impl SetupCost {
    /// Handshake packets per connection.
    pub fn per_setup(&self) -> f64 {
        (self.syns + self.syn_acks) as f64 / self.connections.max(1) as f64
    }

    /// SYN-ACKs per connection.
    pub fn syn_acks_per_setup(&self) -> f64 {
        self.syn_acks as f64 / self.connections.max(1) as f64
    }
}

/// A failed setup experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupError {
    /// Seed of the network (the test's `SeedGuard` names the seed that replays the test).
    pub seed: u64,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection setup failed (network seed {}): {}",
            self.seed, self.message
        )
    }
}

impl std::error::Error for SetupError {}

/// A client host (0) with `ec` engines and a server host (1) with `es` engines, 5 µs apart, each
/// server engine listening on its own port. With `oracle`, every engine knows its own NIC's RSS.
pub fn pair(seed: u64, ec: u16, es: u16, oracle: bool) -> Result<Network, SetupError> {
    pair_with(seed, ec, es, oracle, false)
}

/// A [`pair`] whose engines' oracles also know the other host's RSS table (`remote`).
pub fn pair_with(
    seed: u64,
    ec: u16,
    es: u16,
    oracle: bool,
    remote: bool,
) -> Result<Network, SetupError> {
    let err = |message: String| SetupError { seed, message };
    let mut net = NetworkBuilder::new(seed)
        .host(ec)
        .host(es)
        .link(LinkConfig::with_delay(Duration::from_micros(5)))
        .rss_oracle(oracle)
        .rss_oracle_remote(remote)
        .build()
        .map_err(|e| err(e.to_string()))?;
    for e in 0..es {
        net.listen(EngineAddr::new(1, e), PORT_BASE + e)
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(net)
}

/// Opens connections `first .. first + count` from host 0 to host 1 of a [`pair`] network:
/// connection `i` from client engine `i % Ec` to server port `PORT_BASE + (i / Ec) % Es`, so
/// consecutive connections cover every pair of engines. Runs until each is established on both
/// ends (at most 30 s of simulated time) and returns the handles of both ends.
pub fn connect_all(
    net: &mut Network,
    first: usize,
    count: usize,
) -> Result<Vec<(EngineAddr, FlowId)>, SetupError> {
    let seed = net.seed();
    let err = |message: String| SetupError { seed, message };
    let (ec, es) = (
        usize::from(net.engine_count(0)),
        usize::from(net.engine_count(1)),
    );
    let mut clients = BTreeMap::new();
    for i in first..first + count {
        let a = EngineAddr::new(0, (i % ec) as u16);
        let port = PORT_BASE + ((i / ec) % es) as u16;
        let flow = net
            .connect(a, 1, port)
            .map_err(|e| err(format!("connect {i}: {e}")))?;
        clients.insert((a, flow), i);
    }
    let mut connected = BTreeMap::new();
    let mut accepted = Vec::new();
    let mut failure = None;
    let deadline = net.now() + Duration::from_secs(30);
    let done = net.run_until_condition(deadline, |net| {
        while let Some((a, ev)) = net.poll_event() {
            match ev {
                Event::Connected { flow } => match clients.get(&(a, flow)) {
                    Some(&i) if connected.insert(i, (a, flow)).is_none() => {}
                    _ => failure = Some(format!("{a}: unexpected {ev:?}")),
                },
                Event::Accepted { flow, listen_port }
                    if a.host == 1 && listen_port == PORT_BASE + a.engine =>
                {
                    accepted.push((a, flow));
                }
                other => failure = Some(format!("{ec}x{es}: unexpected event at {a}: {other:?}")),
            }
        }
        failure.is_some() || (connected.len() == count && accepted.len() == count)
    });
    if let Some(message) = failure {
        return Err(err(message));
    }
    if !done {
        return Err(err(format!(
            "{ec}x{es}: only {} connected and {} accepted of {count} within 30 s",
            connected.len(),
            accepted.len()
        )));
    }
    Ok(connected.into_values().chain(accepted).collect())
}

/// Sets up `connections` connections on a fresh [`pair`] network, [`WAVE`] at a time with
/// [`WAVE_GAP`] between waves, and counts their handshake packets. With `warm_up`, every client
/// engine first connects once (not counted), so that it knows the server's engine count and port
/// pool, as in the paper's steady state; without, only the first wave is first contact.
///
/// Also checks that the flows' own handshake counters add up to the engines' counters.
pub fn measure(
    seed: u64,
    ec: u16,
    es: u16,
    oracle: bool,
    warm_up: bool,
    connections: usize,
) -> Result<SetupCost, SetupError> {
    let mut net = pair(seed, ec, es, oracle)?;
    let mut first = 0;
    if warm_up {
        first = usize::from(ec);
        connect_all(&mut net, 0, first)?;
        net.run_for(WAVE_GAP);
    }
    let before = net.total_engine_stats();
    let t0 = net.now();
    let mut flows = Vec::with_capacity(2 * connections);
    let mut opened = 0;
    while opened < connections {
        let n = WAVE.min(connections - opened);
        flows.extend(connect_all(&mut net, first + opened, n)?);
        opened += n;
        net.run_for(WAVE_GAP);
    }
    finish(&net, seed, ec, es, connections, before, t0, &flows)
}

/// Sets up `per_network` connections at once on each of `networks` fresh [`pair`] networks, so
/// every setup is a first contact: the client engines have not heard from the server host yet.
pub fn measure_first_contact(
    seed: u64,
    ec: u16,
    es: u16,
    networks: u64,
    per_network: usize,
) -> Result<SetupCost, SetupError> {
    let mut total = SetupCost {
        connections: 0,
        syns: 0,
        syn_acks: 0,
        duration: Duration::ZERO,
    };
    for n in 0..networks {
        let net_seed = crate::seed::derive(seed, "first-contact", n);
        let mut net = pair(net_seed, ec, es, false)?;
        let before = net.total_engine_stats();
        let t0 = net.now();
        let flows = connect_all(&mut net, 0, per_network)?;
        let c = finish(&net, net_seed, ec, es, per_network, before, t0, &flows)?;
        total.connections += c.connections;
        total.syns += c.syns;
        total.syn_acks += c.syn_acks;
        total.duration += c.duration;
    }
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    net: &Network,
    seed: u64,
    ec: u16,
    es: u16,
    connections: usize,
    before: machnet_core::EngineStats,
    t0: machnet_core::Instant,
    flows: &[(EngineAddr, FlowId)],
) -> Result<SetupCost, SetupError> {
    let after = net.total_engine_stats();
    let cost = SetupCost {
        connections,
        syns: after.syns_sent - before.syns_sent,
        syn_acks: after.syn_acks_sent - before.syn_acks_sent,
        duration: net.now() - t0,
    };
    let per_flow: u64 = flows
        .iter()
        .map(|&(a, f)| {
            net.engine(a)
                .flow_stats(f)
                .map_or(0, |s| s.handshake_packets)
        })
        .sum();
    if per_flow != cost.syns + cost.syn_acks {
        return Err(SetupError {
            seed,
            message: format!(
                "{ec}x{es}: flows count {per_flow} handshake packets, engines {}",
                cost.syns + cost.syn_acks
            ),
        });
    }
    Ok(cost)
}
