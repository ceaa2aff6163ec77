//! The statistics document (`machnet stat --json`, the control socket's `stats` answer): a
//! versioned JSON schema, described field by field in docs/STATS.md.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use machnet_core::DropReason;
use serde::{Deserialize, Serialize};

use crate::stats::EngineReport;

/// Version of the document; bumped when a field changes meaning or goes away (new fields may
/// appear without a bump).
pub const STATS_VERSION: u32 = 1;
/// Flows listed when the request does not say.
pub const DEFAULT_MAX_FLOWS: u32 = 256;
/// Channels listed when the request does not say.
pub const DEFAULT_MAX_CHANNELS: u32 = 256;

/// The whole document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// [`STATS_VERSION`].
    pub version: u32,
    /// The sidecar process.
    pub sidecar: SidecarInfo,
    /// Memory held, over all engines.
    pub memory: Memory,
    /// Packets dropped, by reason (every reason, zeros included), over all engines.
    pub drops: BTreeMap<String, u64>,
    /// One entry per engine, in engine order.
    pub engines: Vec<EngineStat>,
    /// Open channels (at most the request's `max_channels`), by id.
    pub channels: Vec<ChannelStat>,
    /// Open channels not listed.
    pub channels_omitted: u64,
    /// Flows of open channels (at most the request's `max_flows`), by channel and handle.
    pub flows: Vec<FlowStat>,
    /// Flows not listed.
    pub flows_omitted: u64,
}

/// The sidecar process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarInfo {
    /// Its process id.
    pub pid: u32,
    /// Its version (the crate's).
    pub build: String,
    /// `--local-ip`.
    pub local_ip: Ipv4Addr,
    /// Control connections open (this one included).
    pub control_connections: u64,
}

/// Memory held, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Received message data the engines' cores hold (unread, partial, out of order).
    pub core_held_bytes: u64,
    /// Message bytes held by the sidecar outside the cores and the rings.
    pub sidecar_held_bytes: u64,
    /// Same-host flow data queued between channels.
    pub local_queued_bytes: u64,
    /// Shared memory of the open channels (their rings).
    pub channel_memory_bytes: u64,
    /// `--memory-budget` (for the cores' held bytes).
    pub memory_budget_bytes: u64,
}

/// One engine: the counters of its statistics log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Named after the log line; docs/STATS.md describes each.
pub struct EngineStat {
    pub engine: u16,
    pub channels: u64,
    pub active_channels: u64,
    pub flows: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub fast_retransmits: u64,
    pub timeout_retransmits: u64,
    pub spurious_timeouts: u64,
    pub tail_probes: u64,
    pub connects: u64,
    pub accepts: u64,
    pub rsts: u64,
    pub syns: u64,
    pub port_unreachable: u64,
    pub unreachable_resets: u64,
    pub unreachable_ignored: u64,
    pub connecting: u64,
    pub refusals_channel: u64,
    pub refusals_app: u64,
    pub refusals_rate: u64,
    pub held_core_bytes: u64,
    pub held_core_peak_bytes: u64,
    pub memory_budget_bytes: u64,
    pub memory_reclaims: u64,
    pub held_sidecar_bytes: u64,
    pub stalled_channels: u64,
    pub dp_rx_oversize: u64,
    pub dp_rx_errors: u64,
    pub dp_tx_dropped: u64,
    pub dp_tx_errors: u64,
    pub dp_injected_drops: u64,
    pub dp_gso_batches: u64,
    pub dp_gso_fallbacks: u64,
    pub dp_gro_batches: u64,
    pub violations: u64,
    pub iterations: u64,
    pub sleeps: u64,
    pub doorbells: u64,
    pub parks: u64,
    pub requests: u64,
    pub notifications: u64,
    pub detached: u64,
    pub orphan_flows: u64,
    pub linger_aborts: u64,
    pub local_flows: u64,
    pub local_queued_bytes: u64,
    pub local_connects: u64,
    pub local_messages: u64,
    pub local_bytes: u64,
    /// Every drop reason, zeros included.
    pub drops: BTreeMap<String, u64>,
}

/// One open channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelStat {
    /// Its id.
    pub channel: u32,
    /// Its engine.
    pub engine: u16,
    /// Process id of the application that opened it (its control connection's peer).
    pub pid: u32,
    /// That application's user id.
    pub uid: u32,
    /// Its open flows.
    pub flows: u64,
    /// Messages the app sent that flows took.
    pub messages_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Messages delivered to the app.
    pub messages_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Requests read from its ring.
    pub requests: u64,
    /// Notifications written to its ring.
    pub notifications: u64,
    /// Requests answered with an error.
    pub request_errors: u64,
    /// Message bytes the sidecar holds for it outside the core and the rings.
    pub held_bytes: u64,
    /// Size of its shared memory.
    pub memory_bytes: u64,
    /// Ports it listens on.
    pub ports: Vec<u16>,
    /// Whether a flow's full send buffer holds up its requests.
    pub stalled: bool,
}

/// One flow of an open channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStat {
    /// Its engine.
    pub engine: u16,
    /// The channel that owns it.
    pub channel: u32,
    /// Its handle on that channel.
    pub handle: u32,
    /// `network` (through the core and the datapath) or `same_host` (ring to ring).
    pub kind: String,
    /// As its channel sees it: `connecting`, `established`, `peer_closed` (the peer finished
    /// sending) or `closed` (the transport flow ended; its last notifications may be unwritten).
    pub state: String,
    /// This end's address (absent while unknown).
    pub local_ip: Option<Ipv4Addr>,
    /// This end's port.
    pub local_port: Option<u16>,
    /// The peer's address.
    pub remote_ip: Option<Ipv4Addr>,
    /// The peer's port.
    pub remote_port: Option<u16>,
    /// Counters of network flows the core shows (established, not yet torn down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<FlowTransport>,
}

/// The transport's counters and estimates for one network flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTransport {
    /// Messages the peer acknowledged completely.
    pub messages_sent: u64,
    /// Messages received completely.
    pub messages_received: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes received, duplicates excluded.
    pub bytes_received: u64,
    /// Packets sent (every kind).
    pub packets_sent: u64,
    /// Packets accepted from the peer.
    pub packets_received: u64,
    /// Retransmissions after loss detection.
    pub fast_retransmits: u64,
    /// Retransmissions after a timeout.
    pub timeout_retransmits: u64,
    /// Smoothed round-trip time in microseconds (absent before the first sample).
    pub srtt_us: Option<u64>,
    /// Lowest round-trip time seen, in microseconds.
    pub min_rtt_us: Option<u64>,
    /// Congestion window, in packets.
    pub congestion_window: u32,
    /// Packets in flight.
    pub packets_in_flight: u32,
    /// Bytes sent that the peer has not acknowledged.
    pub unacked_bytes: u64,
    /// Received bytes the core holds for this flow.
    pub held_bytes: u64,
}

/// Every drop reason with its count.
pub fn drop_map(drops: &[u64; DropReason::COUNT]) -> BTreeMap<String, u64> {
    DropReason::ALL
        .iter()
        .map(|&r| (r.name().to_owned(), drops[r as usize]))
        .collect()
}

impl From<&EngineReport> for EngineStat {
    fn from(r: &EngineReport) -> Self {
        let (c, d, l) = (&r.core, &r.datapath, &r.engine_loop);
        let n = |v: usize| v as u64;
        EngineStat {
            engine: r.engine,
            channels: n(r.channels),
            active_channels: n(r.active_channels),
            flows: n(r.flows),
            rx_packets: d.rx_packets,
            rx_bytes: d.rx_bytes,
            tx_packets: d.tx_packets,
            tx_bytes: d.tx_bytes,
            fast_retransmits: c.fast_retransmits,
            timeout_retransmits: c.timeout_retransmits,
            spurious_timeouts: c.spurious_timeouts,
            tail_probes: c.tail_probes,
            connects: c.connects_completed,
            accepts: c.accepts_completed,
            rsts: c.rsts_sent,
            syns: c.syns_sent,
            port_unreachable: d.rx_port_unreachable,
            unreachable_resets: c.unreachable_resets,
            unreachable_ignored: c.unreachable_ignored,
            connecting: n(r.connects_in_progress),
            refusals_channel: l.connect_refusals.channel,
            refusals_app: l.connect_refusals.app,
            refusals_rate: l.connect_refusals.rate,
            held_core_bytes: n(r.core_held_bytes),
            held_core_peak_bytes: c.held_bytes_peak,
            memory_budget_bytes: n(r.memory_budget),
            memory_reclaims: c.memory_reclaims,
            held_sidecar_bytes: n(r.sidecar_held_bytes),
            stalled_channels: n(r.stalled_channels),
            dp_rx_oversize: d.rx_oversize,
            dp_rx_errors: d.rx_errors,
            dp_tx_dropped: d.tx_dropped,
            dp_tx_errors: d.tx_errors,
            dp_injected_drops: d.injected_drops,
            dp_gso_batches: d.tx_gso_batches,
            dp_gso_fallbacks: d.tx_gso_fallbacks,
            dp_gro_batches: d.rx_gro_batches,
            violations: l.channel_violations,
            iterations: l.iterations,
            sleeps: l.sleeps,
            doorbells: l.doorbells,
            parks: l.parks,
            requests: l.requests,
            notifications: l.notifications,
            detached: l.channels_detached,
            orphan_flows: n(r.orphan_flows),
            linger_aborts: l.linger_aborts,
            local_flows: n(r.local.flows),
            local_queued_bytes: n(r.local.queued_bytes),
            local_connects: r.local.connects,
            local_messages: r.local.messages,
            local_bytes: r.local.bytes,
            drops: drop_map(&c.drops),
        }
    }
}
