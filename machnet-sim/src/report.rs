//! What a run achieved and what it cost: delivery counts, goodput over simulated time, packets,
//! retransmissions, drops by reason, and the price of connection setup.

use std::fmt;
use std::time::Duration;

use machnet_core::{DropReason, EngineStats};

use crate::link::LinkStats;
use crate::network::{NetStats, Network};

/// Adds `s` to `acc` counter by counter.
pub fn add_engine_stats(acc: &mut EngineStats, s: &EngineStats) {
    acc.packets_received += s.packets_received;
    acc.packets_sent += s.packets_sent;
    acc.bytes_received += s.bytes_received;
    acc.bytes_sent += s.bytes_sent;
    for (a, b) in acc.drops.iter_mut().zip(s.drops.iter()) {
        *a += b;
    }
    acc.syns_sent += s.syns_sent;
    acc.syn_acks_sent += s.syn_acks_sent;
    acc.rsts_sent += s.rsts_sent;
    acc.connects_completed += s.connects_completed;
    acc.accepts_completed += s.accepts_completed;
    acc.syn_batches += s.syn_batches;
    acc.fast_retransmits += s.fast_retransmits;
    acc.timeout_retransmits += s.timeout_retransmits;
    acc.flows_opened += s.flows_opened;
    acc.flows_closed += s.flows_closed;
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Seed of the run.
    pub seed: u64,
    /// Flows the workload used.
    pub flows: usize,
    /// Messages the application received and verified.
    pub messages_delivered: u64,
    /// Their bytes.
    pub bytes_delivered: u64,
    /// Simulated time from the start of the workload to its end.
    pub duration: Duration,
    /// Times the application got `SendError::BufferFull`.
    pub send_buffer_full: u64,
    /// Engine counters summed over every engine of the network.
    pub engines: EngineStats,
    /// Link counters summed over every link direction.
    pub links: LinkStats,
    /// Simulator counters.
    pub net: NetStats,
}

impl Report {
    /// A report on `net` after a workload delivered `messages` messages of `bytes` bytes over
    /// `flows` flows in `duration` of simulated time.
    pub fn collect(
        net: &Network,
        flows: usize,
        messages: u64,
        bytes: u64,
        duration: Duration,
    ) -> Report {
        Report {
            seed: net.seed(),
            flows,
            messages_delivered: messages,
            bytes_delivered: bytes,
            duration,
            send_buffer_full: 0,
            engines: net.total_engine_stats(),
            links: net.total_link_stats(),
            net: *net.stats(),
        }
    }

    /// Delivered payload bits per second of simulated time, in Mbit/s, summed over both
    /// directions of every flow (0 for an instant run).
    pub fn goodput_mbps(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.bytes_delivered as f64 * 8.0 / secs / 1e6
        }
    }

    /// Packets sent by all engines.
    pub fn packets_sent(&self) -> u64 {
        self.engines.packets_sent
    }

    /// Retransmissions of every kind.
    pub fn retransmits(&self) -> u64 {
        self.engines.fast_retransmits + self.engines.timeout_retransmits
    }

    /// Drops counted under `reason`, summed over engines.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.engines.drops_for(reason)
    }

    /// Non-zero drop counters, in declaration order of [`DropReason`].
    pub fn drops_by_reason(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.engines.drops_for(r)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Connections set up (each counted once, on the connecting side).
    pub fn connections(&self) -> u64 {
        self.engines.connects_completed
    }

    /// Handshake packets (SYNs plus SYN-ACKs, both sides) per connection set up.
    pub fn handshake_packets_per_setup(&self) -> f64 {
        let setups = self.connections();
        if setups == 0 {
            0.0
        } else {
            (self.engines.syns_sent + self.engines.syn_acks_sent) as f64 / setups as f64
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed                 {} (0x{:x})", self.seed, self.seed)?;
        writeln!(f, "flows                {}", self.flows)?;
        writeln!(f, "messages delivered   {}", self.messages_delivered)?;
        writeln!(f, "bytes delivered      {}", self.bytes_delivered)?;
        writeln!(
            f,
            "simulated duration   {:.6} s",
            self.duration.as_secs_f64()
        )?;
        writeln!(f, "goodput              {:.1} Mbit/s", self.goodput_mbps())?;
        writeln!(f, "packets sent         {}", self.packets_sent())?;
        writeln!(
            f,
            "retransmits          {} (fast {}, timeout {})",
            self.retransmits(),
            self.engines.fast_retransmits,
            self.engines.timeout_retransmits
        )?;
        writeln!(
            f,
            "connection setups    {} ({:.2} handshake packets each; {} SYN batches)",
            self.connections(),
            self.handshake_packets_per_setup(),
            self.engines.syn_batches
        )?;
        writeln!(f, "send buffer full     {}", self.send_buffer_full)?;
        writeln!(
            f,
            "link                 offered {}, lost {}, queue drops {}, duplicated {}, reordered {}, corrupted {}",
            self.links.offered,
            self.links.lost,
            self.links.queue_drops,
            self.links.duplicated,
            self.links.reordered,
            self.links.corrupted
        )?;
        write!(f, "drops               ")?;
        let drops = self.drops_by_reason();
        if drops.is_empty() {
            write!(f, " none")?;
        }
        for (reason, n) in drops {
            write!(f, " {}={}", reason.name(), n)?;
        }
        Ok(())
    }
}
