//! Counters per engine and per flow.

use std::time::Duration;

use crate::wire::ParseError;

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $metric:literal),* $(,)?) => {
        /// Why an incoming packet was dropped. Every drop is counted under exactly one reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum DropReason { $($(#[$doc])* $name),* }

        impl DropReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name),*];
            /// A stable snake-case name for metrics.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$name => $metric),* }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than the fixed header.
    Truncated => "truncated",
    /// Wrong magic number.
    BadMagic => "bad_magic",
    /// Unsupported version.
    BadVersion => "bad_version",
    /// Unknown packet type.
    BadType => "bad_type",
    /// Undefined flag bits set.
    BadFlags => "bad_flags",
    /// More SACK blocks than allowed.
    TooManySackBlocks => "too_many_sack_blocks",
    /// Lengths disagree with the datagram.
    LengthMismatch => "length_mismatch",
    /// Checksum present and wrong.
    BadChecksum => "bad_checksum",
    /// Checksum required but absent.
    MissingChecksum => "missing_checksum",
    /// Fields inconsistent with the packet type.
    Malformed => "malformed",
    /// The flow belongs to another engine of this host (RSS put it here).
    WrongEngine => "wrong_engine",
    /// No flow and no reason to answer (e.g. an ACK for a flow that is gone, an RST).
    UnknownFlow => "unknown_flow",
    /// A SYN for a port nobody on this engine listens on (answered with RST if no engine does).
    NoListener => "no_listener",
    /// A repeated SYN or SYN-ACK of a handshake already answered.
    DuplicateHandshake => "duplicate_handshake",
    /// A handshake packet that does not match the flow's state (stale or forged).
    StaleHandshake => "stale_handshake",
    /// Sequence number outside the receive window.
    OutOfWindow => "out_of_window",
    /// A sequenced packet already received.
    Duplicate => "duplicate",
    /// An ACK for data never sent.
    InvalidAck => "invalid_ack",
    /// An RST whose sequence number is not acceptable.
    RstRejected => "rst_rejected",
    /// A packet without the flow's token (PROTOCOL.md §4.1): forged, or from an old flow.
    BadToken => "bad_token",
    /// A packet for a flow that is closing and can no longer accept it.
    FlowClosing => "flow_closing",
    /// A SYN refused because the engine holds its maximum of flows or half-open flows.
    FlowLimit => "flow_limit",
    /// A DATA packet larger than the datagram size agreed for its flow (PROTOCOL.md §6.4).
    Oversize => "oversize",
    /// A DATA packet refused because its flow holds its fair share of the engine's memory
    /// budget, or the engine holds all of it (PROTOCOL.md §6.5).
    MemoryBudget => "memory_budget",
    /// Encryption (PROTOCOL.md §12.3): a sealed packet that failed to authenticate (forged,
    /// changed on path, or sealed with other keys).
    BadSeal => "bad_seal",
    /// Encryption: a plaintext packet where the flow or engine requires sealed ones, or a sealed
    /// one where plaintext was expected (§12.4).
    SealMismatch => "seal_mismatch",
    /// Encryption: a handshake from a host outside the allow-list, with another key, or whose
    /// Noise message failed (§12.2).
    PeerNotAllowed => "peer_not_allowed",
}

#[cfg(test)]
#[test]
fn drop_reason_names_are_snake_case_and_unique() {
    let names: std::collections::BTreeSet<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
    assert_eq!(names.len(), DropReason::COUNT);
    assert_eq!(DropReason::WrongEngine.name(), "wrong_engine");
    assert!(names
        .iter()
        .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
}

impl DropReason {
    /// Number of reasons (size of the counter array).
    pub const COUNT: usize = Self::ALL.len();

    /// The drop reason for a parse failure.
    pub fn from_parse(e: ParseError) -> Self {
        match e {
            ParseError::Truncated => Self::Truncated,
            ParseError::BadMagic => Self::BadMagic,
            ParseError::BadVersion => Self::BadVersion,
            ParseError::BadType => Self::BadType,
            ParseError::BadFlags => Self::BadFlags,
            ParseError::TooManySackBlocks => Self::TooManySackBlocks,
            ParseError::LengthMismatch => Self::LengthMismatch,
            ParseError::BadChecksum => Self::BadChecksum,
            ParseError::Malformed => Self::Malformed,
        }
    }
}

/// Per-engine counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Datagrams handed to `handle_datagram`.
    pub packets_received: u64,
    /// Datagrams returned by `poll_transmit`.
    pub packets_sent: u64,
    /// Bytes of datagrams handed to `handle_datagram`.
    pub bytes_received: u64,
    /// Bytes of datagrams returned by `poll_transmit`.
    pub bytes_sent: u64,
    /// Drops indexed by `DropReason as usize`.
    pub drops: [u64; DropReason::COUNT],
    /// SYNs sent.
    pub syns_sent: u64,
    /// SYN-ACKs sent.
    pub syn_acks_sent: u64,
    /// SYNs answered with stateless SYN cookies (PROTOCOL.md §5.5).
    pub syn_cookies_sent: u64,
    /// Flows established from a handshake ACK carrying a valid SYN cookie.
    pub cookie_accepts: u64,
    /// RSTs sent.
    pub rsts_sent: u64,
    /// Connections this engine initiated that became established.
    pub connects_completed: u64,
    /// Connections this engine accepted.
    pub accepts_completed: u64,
    /// SYN batches sent by `connect` (first batches and retries).
    pub syn_batches: u64,
    /// Packets retransmitted after loss detection (SACK or time based).
    pub fast_retransmits: u64,
    /// Packets retransmitted after a retransmission timeout.
    pub timeout_retransmits: u64,
    /// Retransmission timeouts found spurious and undone (PROTOCOL.md §6.3).
    pub spurious_timeouts: u64,
    /// Tail-loss probes sent (retransmissions that elicit SACK information, PROTOCOL.md §6.2).
    pub tail_probes: u64,
    /// Flows created (connected or accepted, half-open included).
    pub flows_opened: u64,
    /// Flows removed from the flow table.
    pub flows_closed: u64,
    /// Flows aborted to give their memory to flows within their fair share (PROTOCOL.md §6.5).
    pub memory_reclaims: u64,
    /// Flows reset by an ICMP port unreachable that quoted one of their packets with the
    /// peer's token (PROTOCOL.md §8.4): the peer's sidecar is gone.
    pub unreachable_resets: u64,
    /// ICMP port-unreachable reports that ended no flow: unparsable quote, no such flow, wrong
    /// token or path, or a flow still in its handshake.
    pub unreachable_ignored: u64,
    /// Bytes the engine's flows held for applications at most so far (received data: unread,
    /// partial and out-of-order; see [`crate::Engine::held_bytes`]).
    pub held_bytes_peak: u64,
}

impl EngineStats {
    /// Drops counted under `reason`.
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

/// Per-flow counters and estimates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowStats {
    /// Packets sent (every kind, retransmissions included).
    pub packets_sent: u64,
    /// Packets accepted from the peer (handshake and invalid acknowledgements excluded).
    pub packets_received: u64,
    /// Messages the peer has acknowledged completely.
    pub messages_sent: u64,
    /// Messages received completely.
    pub messages_received: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes received, duplicates excluded.
    pub bytes_received: u64,
    /// Packets retransmitted after loss detection.
    pub fast_retransmits: u64,
    /// Packets retransmitted after a retransmission timeout.
    pub timeout_retransmits: u64,
    /// Retransmission timeouts found spurious and undone.
    pub spurious_timeouts: u64,
    /// Tail-loss probes sent.
    pub tail_probes: u64,
    /// Data or FIN packets received again.
    pub duplicates_received: u64,
    /// Packets this flow's handshake cost on this side (SYNs or SYN-ACKs sprayed).
    pub handshake_packets: u64,
    /// Smoothed RTT, once there is a sample.
    pub srtt: Option<Duration>,
    /// Lowest RTT seen.
    pub min_rtt: Option<Duration>,
    /// Congestion window, in packets.
    pub congestion_window: u32,
    /// Receive window the peer last announced, in packets.
    pub peer_window: u32,
    /// Packets sent and not yet acknowledged.
    pub packets_in_flight: u32,
}
