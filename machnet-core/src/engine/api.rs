//! Types at the engine's boundary: handles, datagrams in and out, events, per-operation errors.

use std::net::Ipv4Addr;

use crate::wire::UdpPair;

/// Handle of a flow inside one engine. Stale handles (of closed flows) are detected, never
/// confused with a newer flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl FlowId {
    /// A compact number for logs and maps; unique among this engine's live and past flows
    /// as long as fewer than 2^32 flows reuse one slot.
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }
}

/// A flow's identity: Machnet ports, independent of the UDP ports the packets travel on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    /// This engine's IPv4 address.
    pub local_ip: Ipv4Addr,
    /// Our Machnet port.
    pub local_port: u16,
    /// The peer's IPv4 address.
    pub remote_ip: Ipv4Addr,
    /// The peer's Machnet port.
    pub remote_port: u16,
}

// The engine looks up a flow for every packet: hash the key as one 16-byte word rather than
// field by field (fewer hasher calls; consistent with `Eq`, which compares the same fields).
impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let ips =
            u128::from(self.local_ip.to_bits()) << 64 | u128::from(self.remote_ip.to_bits()) << 32;
        let ports = u128::from(self.local_port) << 16 | u128::from(self.remote_port);
        state.write_u128(ips | ports);
    }
}

/// A UDP datagram handed to [`crate::Engine::handle_datagram`].
///
/// Its counterpart for output is [`Transmit`]; the two stay separate types because they differ
/// in more than direction: a `Datagram` borrows bytes the caller received, a `Transmit` only
/// says how many bytes the engine wrote into the caller's buffer, and their port fields are
/// named from the sender's point of view.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Sender's IPv4 address.
    pub remote_ip: Ipv4Addr,
    /// Sender's UDP port.
    pub src_port: u16,
    /// Our UDP port it arrived on.
    pub dst_port: u16,
    /// The UDP payload: one Machnet packet.
    pub payload: &'a [u8],
}

impl Datagram<'_> {
    /// The UDP (source, destination) ports as received.
    pub(crate) fn path(&self) -> UdpPair {
        UdpPair {
            src: self.src_port,
            dst: self.dst_port,
        }
    }
}

/// A received datagram whose bytes the engine may change: [`crate::Engine::handle_datagram_mut`]
/// opens a sealed packet (PROTOCOL.md §12.3) in place instead of copying it first.
#[derive(Debug)]
pub struct DatagramMut<'a> {
    /// Sender's IPv4 address.
    pub remote_ip: Ipv4Addr,
    /// Sender's UDP port.
    pub src_port: u16,
    /// Our UDP port it arrived on.
    pub dst_port: u16,
    /// The UDP payload: one Machnet packet. Its contents are unspecified after the call.
    pub payload: &'a mut [u8],
}

/// An ICMP "port unreachable" answering a datagram we sent, handed to
/// [`crate::Engine::handle_unreachable`]: the peer's host says nothing listens on the UDP port
/// any more (its sidecar is gone). Datapaths that learn of such errors report them
/// (PROTOCOL.md §8.4).
#[derive(Debug, Clone, Copy)]
pub struct Unreachable<'a> {
    /// Where the datagram went.
    pub remote_ip: Ipv4Addr,
    /// Our UDP port it left from.
    pub src_port: u16,
    /// The UDP port it went to.
    pub dst_port: u16,
    /// The start of the datagram's UDP payload, as the ICMP message quoted it.
    pub quoted: &'a [u8],
}

/// A datagram written by [`crate::Engine::poll_transmit`] into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The peer's IPv4 address.
    pub remote_ip: Ipv4Addr,
    /// Our UDP source port.
    pub src_port: u16,
    /// The peer's UDP destination port.
    pub dst_port: u16,
    /// Bytes written at the start of the buffer.
    pub len: usize,
}

impl Transmit {
    /// `len` bytes for `remote_ip` on the UDP `path` (our source port, their destination port).
    pub(crate) fn new(remote_ip: Ipv4Addr, path: UdpPair, len: usize) -> Transmit {
        Transmit {
            remote_ip,
            src_port: path.src,
            dst_port: path.dst,
            len,
        }
    }
}

/// Something the application side must learn about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A flow created by `connect` is established; it can send and receive.
    Connected {
        /// The flow.
        flow: FlowId,
    },
    /// A listener on `listen_port` accepted a new flow.
    Accepted {
        /// The new flow.
        flow: FlowId,
        /// The port it was accepted on.
        listen_port: u16,
    },
    /// The flow's receive queue went from empty to non-empty; call `recv` until it returns `None`.
    Readable {
        /// The flow.
        flow: FlowId,
    },
    /// `send` returned `BufferFull` earlier and there is room again.
    Writable {
        /// The flow.
        flow: FlowId,
    },
    /// The peer closed its direction: no messages will follow those already readable.
    PeerClosed {
        /// The flow.
        flow: FlowId,
    },
    /// The flow is gone: it can no longer send or be closed. Complete messages it received
    /// before it ended stay readable with `recv` until it returns `None` (unless this side
    /// aborted it: then they are discarded); after that, or after `Engine::discard`, the
    /// handle is dead.
    Closed {
        /// The flow.
        flow: FlowId,
        /// Why it ended.
        reason: CloseReason,
    },
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CloseReason {
    /// Both sides closed and every message was acknowledged.
    #[error("closed gracefully")]
    Graceful,
    /// The connection could not be set up: nobody listens on the remote port.
    #[error("connection refused")]
    Refused,
    /// The peer aborted the connection (RST).
    #[error("connection reset by peer")]
    Reset,
    /// No answer from the peer: connect timed out, retransmissions were exhausted, or the peer
    /// fell silent past the idle timeout.
    #[error("peer timed out")]
    TimedOut,
    /// The peer sent packets that break the protocol (framing, lengths); we reset the flow.
    #[error("protocol violation by peer")]
    ProtocolViolation,
    /// This side aborted the flow.
    #[error("aborted locally")]
    Aborted,
    /// A message queued before the connection was established exceeds the maximum message size
    /// the peer announced; it could never be delivered.
    #[error("a queued message exceeds the peer's maximum message size")]
    MessageTooLarge,
    /// Encryption: the server did not prove the static key this host's allow-list gives for it
    /// (PROTOCOL.md §12.2); nothing was sent to it but the handshake.
    #[error("the peer did not authenticate with the key in the allow-list")]
    PeerNotAuthenticated,
}

/// Errors of [`crate::Engine::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The remote address is unspecified, broadcast or multicast.
    #[error("remote address must be a unicast IPv4 address")]
    InvalidRemoteAddress,
    /// The remote port is 0.
    #[error("remote port must not be 0")]
    InvalidRemotePort,
    /// Every ephemeral port is in use towards this destination.
    #[error("no free ephemeral port for this destination")]
    NoEphemeralPort,
    /// The engine holds `max_flows` flows.
    #[error("the engine holds its maximum number of flows")]
    TooManyFlows,
    /// Encryption is on and the remote host has no key in the allow-list (PROTOCOL.md §12).
    #[error("encryption is on and the remote host is not in the allow-list of peer keys")]
    PeerNotAllowed,
    /// Encryption is on and the engine starts `handshake.max_encrypted_handshake_rate`
    /// handshakes a second already: each costs X25519 operations on the engine's core
    /// (PROTOCOL.md §12.5). Try again later.
    #[error("the engine starts its maximum of encrypted handshakes per second")]
    HandshakeRate,
}

/// Errors of [`crate::Engine::listen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// Port 0 was given.
    #[error("port 0 cannot be listened on")]
    PortZero,
    /// The port belongs to the ephemeral range.
    #[error("port {0} is in the ephemeral range reserved for outgoing flows")]
    EphemeralPort(u16),
    /// This engine already listens on the port.
    #[error("port {0} is already listened on by this engine")]
    AlreadyListening(u16),
    /// The engine id is not below the engine count.
    #[error("engine id {0} is out of range")]
    BadEngine(u16),
}

/// Errors of [`crate::Engine::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The handle does not name a live flow.
    #[error("unknown or closed flow")]
    UnknownFlow,
    /// The flow was closed for sending (`close`): it sends nothing more.
    #[error("the flow was closed for sending")]
    Closed,
    /// Empty messages are not allowed.
    #[error("messages must be at least 1 byte long")]
    EmptyMessage,
    /// The message is longer than this side's or the peer's maximum message size.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The message's length.
        len: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// Back-pressure: the flow's send buffer is full. Retry after [`Event::Writable`].
    #[error("send buffer full; wait for the flow to become writable")]
    BufferFull,
}

/// Errors of [`crate::Engine::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The handle does not name a live flow or one with unread messages.
    #[error("unknown or closed flow")]
    UnknownFlow,
}

/// Errors of [`crate::Engine::close`] and [`crate::Engine::abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    /// The handle does not name a live flow.
    #[error("unknown or closed flow")]
    UnknownFlow,
}
