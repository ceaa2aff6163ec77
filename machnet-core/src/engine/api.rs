//! Types at the engine's boundary: handles, datagrams in and out, events, per-operation errors.

use std::net::Ipv4Addr;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub local_ip: Ipv4Addr,
    pub local_port: u16,
    pub remote_ip: Ipv4Addr,
    pub remote_port: u16,
}

/// A UDP datagram handed to [`crate::Engine::handle_datagram`].
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

/// A datagram written by [`crate::Engine::poll_transmit`] into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub remote_ip: Ipv4Addr,
    /// Our UDP source port.
    pub src_port: u16,
    /// The peer's UDP destination port.
    pub dst_port: u16,
    /// Bytes written at the start of the buffer.
    pub len: usize,
}

/// Something the application side must learn about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A flow created by `connect` is established; it can send and receive.
    Connected { flow: FlowId },
    /// A listener on `listen_port` accepted a new flow.
    Accepted { flow: FlowId, listen_port: u16 },
    /// The flow's receive queue went from empty to non-empty; call `recv` until it returns `None`.
    Readable { flow: FlowId },
    /// `send` returned `BufferFull` earlier and there is room again.
    Writable { flow: FlowId },
    /// The peer closed its direction: no messages will follow those already readable.
    PeerClosed { flow: FlowId },
    /// The flow is gone: it can no longer send or be closed. Complete messages it received
    /// before it ended stay readable with `recv` until it returns `None` (unless this side
    /// aborted it: then they are discarded); after that, or after `Engine::discard`, the
    /// handle is dead.
    Closed { flow: FlowId, reason: CloseReason },
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
}

/// Errors of [`crate::Engine::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("remote address must be a unicast IPv4 address")]
    InvalidRemoteAddress,
    #[error("remote port must not be 0")]
    InvalidRemotePort,
    #[error("no free ephemeral port for this destination")]
    NoEphemeralPort,
    #[error("the engine holds its maximum number of flows")]
    TooManyFlows,
}

/// Errors of [`crate::Engine::listen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("port 0 cannot be listened on")]
    PortZero,
    #[error("port {0} is in the ephemeral range reserved for outgoing flows")]
    EphemeralPort(u16),
    #[error("port {0} is already listened on by this engine")]
    AlreadyListening(u16),
    #[error("engine id {0} is out of range")]
    BadEngine(u16),
}

/// Errors of [`crate::Engine::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("unknown or closed flow")]
    UnknownFlow,
    #[error("the flow was closed for sending")]
    Closed,
    #[error("messages must be at least 1 byte long")]
    EmptyMessage,
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    /// Back-pressure: the flow's send buffer is full. Retry after [`Event::Writable`].
    #[error("send buffer full; wait for the flow to become writable")]
    BufferFull,
}

/// Errors of [`crate::Engine::recv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("unknown or closed flow")]
    UnknownFlow,
}

/// Errors of [`crate::Engine::close`] and [`crate::Engine::abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseError {
    #[error("unknown or closed flow")]
    UnknownFlow,
}
