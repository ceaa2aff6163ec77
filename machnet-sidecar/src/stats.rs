//! Per-engine statistics: the core's counters, the datapath's, and the engine's own.

use std::fmt;

use machnet_core::{DropReason, EngineStats};

use crate::datapath::DatapathStats;
use crate::engine::local::LocalStats;
use crate::engine::ConnectRefusals;

/// The engine loop's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Loop iterations.
    pub iterations: u64,
    /// Times the engine slept in epoll.
    pub sleeps: u64,
    /// Channels closed because the app broke the protocol.
    pub channel_violations: u64,
    /// Channels opened on this engine.
    pub channels_opened: u64,
    /// Channels closed on this engine (any reason).
    pub channels_closed: u64,
    /// Requests consumed from all channels.
    pub requests: u64,
    /// Notifications written to all channels.
    pub notifications: u64,
    /// Flows accepted for a port no channel listens on any more (aborted).
    pub orphan_accepts: u64,
    /// Armed channels made active again by their app ringing the sidecar eventfd.
    pub doorbells: u64,
    /// Times a channel without work was armed and left the run list.
    pub parks: u64,
    /// Channels detached gracefully (their app exited or closed them; docs/CHANNEL.md §5).
    pub channels_detached: u64,
    /// Flows of detached channels aborted because the linger expired before they closed.
    pub linger_aborts: u64,
    /// Connects refused at once by a connect budget, per budget (docs/CHANNEL.md §2).
    pub connect_refusals: ConnectRefusals,
}

/// A snapshot of one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineReport {
    /// Engine id.
    pub engine: u16,
    /// Protocol counters.
    pub core: EngineStats,
    /// Packet I/O counters.
    pub datapath: DatapathStats,
    /// Engine loop counters.
    pub engine_loop: LoopStats,
    /// Open channels.
    pub channels: usize,
    /// Channels on the run list (the others are armed: they wait for their doorbell).
    pub active_channels: usize,
    /// Flows in the core (including half-open and lingering ones).
    pub flows: usize,
    /// Connects of this engine's channels in progress (over the network; docs/CHANNEL.md §2).
    pub connects_in_progress: usize,
    /// Bytes the core holds for all flows (unread, partial and out-of-order data), counted
    /// against `memory_budget`; the peak is `core.held_bytes_peak`.
    pub core_held_bytes: usize,
    /// This engine's part of `--memory-budget`.
    pub memory_budget: usize,
    /// Message bytes held by the sidecar outside the core and the rings.
    pub sidecar_held_bytes: usize,
    /// Channels whose request ring is held up by a flow's full send buffer.
    pub stalled_channels: usize,
    /// Flows of detached channels still delivering what their app sent (docs/CHANNEL.md §5).
    pub orphan_flows: usize,
    /// Same-host flows of this engine's channels (docs/CHANNEL.md "Same-host flows").
    pub local: LocalStats,
}

impl fmt::Display for EngineReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.core;
        let d = &self.datapath;
        write!(
            f,
            "engine {}: channels {} (active {}) flows {} | rx {} pkts {} B, tx {} pkts {} B | \
             retransmits fast {} timeout {} (spurious timeouts {}) probes {} | connects {} accepts {} rsts {} syns {} | \
             port unreachable {} resets {} ignored {} | \
             connecting {} budget refusals channel {} app {} rate {} | \
             held core {} B (peak {} B, budget {} B, reclaims {}) sidecar {} B, stalled {} | dp rx_oversize {} tx_dropped {} \
             tx_errors {} injected {} gso_batches {} gso_fallbacks {} gro_batches {} | violations {} sleeps {} doorbells {} parks {} | detached {} orphans {} linger_aborts {} | \
             local flows {} queued {} B connects {} msgs {} bytes {}",
            self.engine,
            self.channels,
            self.active_channels,
            self.flows,
            d.rx_packets,
            d.rx_bytes,
            d.tx_packets,
            d.tx_bytes,
            c.fast_retransmits,
            c.timeout_retransmits,
            c.spurious_timeouts,
            c.tail_probes,
            c.connects_completed,
            c.accepts_completed,
            c.rsts_sent,
            c.syns_sent,
            d.rx_port_unreachable,
            c.unreachable_resets,
            c.unreachable_ignored,
            self.connects_in_progress,
            self.engine_loop.connect_refusals.channel,
            self.engine_loop.connect_refusals.app,
            self.engine_loop.connect_refusals.rate,
            self.core_held_bytes,
            c.held_bytes_peak,
            self.memory_budget,
            c.memory_reclaims,
            self.sidecar_held_bytes,
            self.stalled_channels,
            d.rx_oversize,
            d.tx_dropped,
            d.tx_errors,
            d.injected_drops,
            d.tx_gso_batches,
            d.tx_gso_fallbacks,
            d.rx_gro_batches,
            self.engine_loop.channel_violations,
            self.engine_loop.sleeps,
            self.engine_loop.doorbells,
            self.engine_loop.parks,
            self.engine_loop.channels_detached,
            self.orphan_flows,
            self.engine_loop.linger_aborts,
            self.local.flows,
            self.local.queued_bytes,
            self.local.connects,
            self.local.messages,
            self.local.bytes,
        )?;
        let drops: Vec<String> = DropReason::ALL
            .iter()
            .filter_map(|&r| {
                let n = c.drops[r as usize];
                (n > 0).then(|| format!("{}={n}", r.name()))
            })
            .collect();
        if !drops.is_empty() {
            write!(f, " | drops {}", drops.join(" "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_only_nonzero_drop_reasons() {
        let mut r = EngineReport {
            engine: 3,
            core: EngineStats::default(),
            datapath: DatapathStats::default(),
            engine_loop: LoopStats::default(),
            channels: 1,
            active_channels: 1,
            flows: 2,
            connects_in_progress: 0,
            core_held_bytes: 0,
            memory_budget: 1 << 30,
            sidecar_held_bytes: 0,
            stalled_channels: 0,
            orphan_flows: 0,
            local: LocalStats::default(),
        };
        assert!(!r.to_string().contains("drops"));
        r.core.drops[DropReason::WrongEngine as usize] = 5;
        let s = r.to_string();
        assert!(s.starts_with("engine 3:"), "{s}");
        assert!(s.contains("drops wrong_engine=5"), "{s}");
        r.local.flows = 2;
        r.local.queued_bytes = 77;
        let s = r.to_string();
        assert!(s.contains("local flows 2 queued 77 B"), "{s}");
        r.core.syns_sent = 9;
        r.connects_in_progress = 4;
        r.engine_loop.connect_refusals = ConnectRefusals {
            channel: 1,
            app: 2,
            rate: 3,
        };
        let s = r.to_string();
        assert!(s.contains("syns 9 |"), "{s}");
        assert!(
            s.contains("connecting 4 budget refusals channel 1 app 2 rate 3"),
            "{s}"
        );
    }
}
