//! Putting a statistics snapshot together: each engine describes itself, its channels and a
//! bounded number of its flows ([`EngineSnapshot`], built on the engine thread when it runs
//! its command queue); the control thread adds what only it knows (each channel's
//! application) and fits the whole into one control packet ([`assemble`]).

use std::time::Duration;

use machnet_channel::control::{Response, MAX_STATS_RESPONSE};
use machnet_channel::engine::FlowPhase;
use machnet_core::{DropReason, Engine};

use super::schema::{
    drop_map, ChannelStat, EngineStat, FlowStat, FlowTransport, Memory, SidecarInfo, Stats,
    STATS_VERSION,
};
use crate::engine::channel::{Chan, Flow};
use crate::engine::local::LocalHub;
use crate::stats::EngineReport;

/// What one engine answers to a statistics request.
#[derive(Debug, Clone)]
pub struct EngineSnapshot {
    /// The engine's counters (as logged).
    pub report: EngineReport,
    /// Some of its channels (`pid` and `uid` left 0 for the control thread to fill in).
    pub channels: Vec<ChannelStat>,
    /// Some of its channels' flows.
    pub flows: Vec<FlowStat>,
    /// All flows of its channels (listed or not).
    pub flows_total: usize,
    /// Shared memory of all its channels.
    pub channel_memory: u64,
}

/// A channel as [`ChannelStat`] (without its application, which the engine does not know).
pub fn channel_stat(engine: u16, c: &Chan) -> ChannelStat {
    let t = c.traffic();
    let n = c.counters();
    let mut ports = c.ports.clone();
    ports.sort_unstable();
    ChannelStat {
        channel: c.id(),
        engine,
        pid: 0,
        uid: 0,
        flows: c.flow_count() as u64,
        messages_out: t.messages_out,
        bytes_out: t.bytes_out,
        messages_in: t.messages_in,
        bytes_in: t.bytes_in,
        requests: n.requests,
        notifications: n.notifications,
        request_errors: n.request_errors,
        held_bytes: c.held_bytes() as u64,
        memory_bytes: c.mem().layout().total_len,
        ports,
        stalled: c.is_stalled(),
    }
}

/// A flow of channel `channel` (handle `handle`, at `phase` as its channel sees it) as
/// [`FlowStat`].
pub fn flow_stat(
    engine: u16,
    core: &Engine,
    local: Option<&LocalHub>,
    flow: Flow,
    (channel, handle): (u32, u32),
    phase: Option<FlowPhase>,
) -> FlowStat {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let (kind, info, transport) = match flow {
        Flow::Net(id) => {
            let info = core
                .flow_key(id)
                .map(|k| (k.local_ip, k.local_port, k.remote_ip, k.remote_port));
            let transport = core.flow_stats(id).map(|s| FlowTransport {
                messages_sent: s.messages_sent,
                messages_received: s.messages_received,
                bytes_sent: s.bytes_sent,
                bytes_received: s.bytes_received,
                packets_sent: s.packets_sent,
                packets_received: s.packets_received,
                fast_retransmits: s.fast_retransmits,
                timeout_retransmits: s.timeout_retransmits,
                srtt_us: s.srtt.map(micros),
                min_rtt_us: s.min_rtt.map(micros),
                congestion_window: s.congestion_window,
                packets_in_flight: s.packets_in_flight,
                unacked_bytes: core.flow_unacked_bytes(id).unwrap_or(0) as u64,
                held_bytes: core.flow_held_bytes(id).unwrap_or(0) as u64,
            });
            ("network", info, transport)
        }
        Flow::Local(end) => {
            let info = local
                .and_then(|l| l.info(end))
                .map(|i| (i.local_ip, i.local_port, i.remote_ip, i.remote_port));
            ("same_host", info, None)
        }
    };
    let state = phase.map_or("unknown", FlowPhase::name);
    FlowStat {
        engine,
        channel,
        handle,
        kind: kind.to_owned(),
        state: state.to_owned(),
        local_ip: info.map(|i| i.0),
        local_port: info.map(|i| i.1),
        remote_ip: info.map(|i| i.2),
        remote_port: info.map(|i| i.3),
        transport,
    }
}

/// The control thread's part: the sidecar's identity, and each channel's application.
pub struct ControlView<'a> {
    /// The sidecar.
    pub sidecar: SidecarInfo,
    /// `(pid, uid)` of the application owning a channel, if the control thread knows it.
    pub owner: &'a dyn Fn(u32) -> Option<(u32, u32)>,
}

/// Puts the engines' snapshots together: at most `max_channels` channels and `max_flows`
/// flows, fewer if the answer would exceed [`MAX_STATS_RESPONSE`] (the longer of the two lists
/// is halved until it fits; the document says how many were left out). Returns the `Stats`
/// response.
pub fn assemble(
    snaps: Vec<EngineSnapshot>,
    view: ControlView<'_>,
    max_channels: usize,
    max_flows: usize,
) -> Response {
    let mut memory = Memory::default();
    let mut drops = [0u64; DropReason::COUNT];
    let (mut channels, mut flows) = (Vec::new(), Vec::new());
    let (mut channels_total, mut flows_total) = (0u64, 0u64);
    let mut engines = Vec::with_capacity(snaps.len());
    for s in snaps {
        let r = &s.report;
        memory.core_held_bytes += r.core_held_bytes as u64;
        memory.sidecar_held_bytes += r.sidecar_held_bytes as u64;
        memory.local_queued_bytes += r.local.queued_bytes as u64;
        memory.channel_memory_bytes += s.channel_memory;
        memory.memory_budget_bytes += r.memory_budget as u64;
        for (d, n) in drops.iter_mut().zip(r.core.drops.iter()) {
            *d += n;
        }
        channels_total += r.channels as u64;
        flows_total += s.flows_total as u64;
        engines.push(EngineStat::from(r));
        channels.extend(s.channels);
        flows.extend(s.flows);
    }
    for c in &mut channels {
        if let Some((pid, uid)) = (view.owner)(c.channel) {
            (c.pid, c.uid) = (pid, uid);
        }
    }
    channels.sort_by_key(|c| c.channel);
    channels.truncate(max_channels);
    flows.sort_by_key(|f| (f.channel, f.handle));
    flows.truncate(max_flows);
    let mut doc = Stats {
        version: STATS_VERSION,
        sidecar: view.sidecar,
        memory,
        drops: drop_map(&drops),
        engines,
        channels_omitted: 0,
        channels,
        flows_omitted: 0,
        flows,
    };
    loop {
        doc.channels_omitted = channels_total.saturating_sub(doc.channels.len() as u64);
        doc.flows_omitted = flows_total.saturating_sub(doc.flows.len() as u64);
        let response = Response::Stats {
            stats: serde_json::to_value(&doc).expect("statistics always serialise"),
        };
        if response.encode().len() <= MAX_STATS_RESPONSE {
            return response;
        }
        // Halve the longer list, so that both keep their first entries.
        if !doc.flows.is_empty() && doc.flows.len() >= doc.channels.len() {
            doc.flows.truncate(doc.flows.len() / 2);
        } else if !doc.channels.is_empty() {
            doc.channels.truncate(doc.channels.len() / 2);
        } else {
            // Engines alone take ~2 KiB each: only a sidecar with far more engines than
            // configurable would get here.
            doc.engines.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::DatapathStats;
    use crate::engine::local::LocalStats;
    use crate::stats::LoopStats;
    use machnet_core::EngineStats;
    use std::net::Ipv4Addr;

    fn report(engine: u16, channels: usize) -> EngineReport {
        EngineReport {
            engine,
            core: EngineStats::default(),
            datapath: DatapathStats::default(),
            engine_loop: LoopStats::default(),
            channels,
            active_channels: 0,
            flows: 0,
            connects_in_progress: 0,
            core_held_bytes: 10,
            memory_budget: 1000,
            sidecar_held_bytes: 1,
            stalled_channels: 0,
            orphan_flows: 0,
            local: LocalStats::default(),
        }
    }

    fn flow(engine: u16, channel: u32, handle: u32) -> FlowStat {
        FlowStat {
            engine,
            channel,
            handle,
            kind: "network".into(),
            state: "established".into(),
            local_ip: Some(Ipv4Addr::LOCALHOST),
            local_port: Some(40_000),
            remote_ip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            remote_port: Some(80),
            transport: Some(FlowTransport {
                messages_sent: 1,
                messages_received: 2,
                bytes_sent: 3,
                bytes_received: 4,
                packets_sent: 5,
                packets_received: 6,
                fast_retransmits: 7,
                timeout_retransmits: 8,
                srtt_us: Some(9),
                min_rtt_us: None,
                congestion_window: 10,
                packets_in_flight: 11,
                unacked_bytes: 12,
                held_bytes: 13,
            }),
        }
    }

    fn channel(engine: u16, id: u32) -> ChannelStat {
        ChannelStat {
            channel: id,
            engine,
            pid: 0,
            uid: 0,
            flows: 1,
            messages_out: 0,
            bytes_out: 0,
            messages_in: 0,
            bytes_in: 0,
            requests: 0,
            notifications: 0,
            request_errors: 0,
            held_bytes: 0,
            memory_bytes: 4096,
            ports: vec![80],
            stalled: false,
        }
    }

    fn view(owner: &dyn Fn(u32) -> Option<(u32, u32)>) -> ControlView<'_> {
        ControlView {
            sidecar: SidecarInfo {
                pid: 1,
                build: "test".into(),
                local_ip: Ipv4Addr::LOCALHOST,
                control_connections: 1,
            },
            owner,
        }
    }

    fn decode(r: Response) -> Stats {
        let Response::Stats { stats } = r else {
            panic!("not a stats answer");
        };
        serde_json::from_value(stats).expect("a version-1 document")
    }

    /// Many flows and channels: the answer stays within one packet, sorted, and counts what it
    /// left out; owners are filled in; totals add up over engines.
    #[test]
    fn a_large_snapshot_fits_one_packet_and_counts_what_it_leaves_out() {
        let (per_engine, engines) = (4096u32, 2u16);
        let snaps: Vec<EngineSnapshot> = (0..engines)
            .map(|e| EngineSnapshot {
                report: report(e, 4096),
                channels: (0..per_engine)
                    .map(|c| channel(e, c * 2 + u32::from(e)))
                    .collect(),
                flows: (0..per_engine)
                    .map(|h| flow(e, u32::from(e), per_engine - h))
                    .collect(),
                flows_total: 5000,
                channel_memory: 7,
            })
            .collect();
        let owner = |ch: u32| (ch == 3).then_some((42, 1000));
        let response = assemble(snaps, view(&owner), 4096, 4096);
        assert!(response.encode().len() <= MAX_STATS_RESPONSE);
        let doc = decode(response);
        assert_eq!(doc.version, STATS_VERSION);
        assert!(!doc.flows.is_empty() && doc.flows.len() < 8192);
        assert!(!doc.channels.is_empty() && doc.channels.len() < 8192);
        assert_eq!(doc.flows.len() as u64 + doc.flows_omitted, 10_000);
        assert_eq!(doc.channels.len() as u64 + doc.channels_omitted, 8192);
        assert!(doc
            .flows
            .windows(2)
            .all(|w| (w[0].channel, w[0].handle) < (w[1].channel, w[1].handle)));
        assert_eq!(doc.engines.len(), 2);
        assert_eq!(doc.memory.core_held_bytes, 20);
        assert_eq!(doc.memory.channel_memory_bytes, 14);
        assert_eq!(doc.memory.memory_budget_bytes, 2000);
        if let Some(c) = doc.channels.iter().find(|c| c.channel == 3) {
            assert_eq!((c.pid, c.uid), (42, 1000));
        }
    }

    /// The request's caps apply across engines: the lowest ids are kept.
    #[test]
    fn caps_keep_the_first_channels_and_flows() {
        let snaps: Vec<EngineSnapshot> = (0..2u16)
            .map(|e| EngineSnapshot {
                report: report(e, 3),
                channels: (0..3).map(|c| channel(e, 10 * u32::from(e) + c)).collect(),
                flows: (0..3).map(|h| flow(e, 10 * u32::from(e), h)).collect(),
                flows_total: 3,
                channel_memory: 0,
            })
            .collect();
        let mut snaps = snaps;
        snaps[0].report.core.drops[DropReason::BadToken as usize] = 4;
        snaps[1].report.core.drops[DropReason::BadToken as usize] = 1;
        let doc = decode(assemble(snaps, view(&|_| None), 2, 4));
        let ids: Vec<u32> = doc.channels.iter().map(|c| c.channel).collect();
        assert_eq!(ids, [0, 1]);
        assert_eq!(doc.channels_omitted, 4);
        let flows: Vec<(u32, u32)> = doc.flows.iter().map(|f| (f.channel, f.handle)).collect();
        assert_eq!(flows, [(0, 0), (0, 1), (0, 2), (10, 0)]);
        assert_eq!(doc.flows_omitted, 2);
        assert_eq!(doc.drops["bad_token"], 5);
        assert_eq!(doc.drops.len(), DropReason::COUNT);
    }
}
