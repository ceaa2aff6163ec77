//! Packet I/O of one engine: the [`Datapath`] trait and its implementations.
//!
//! - [`kernel::KernelUdp`]: one UDP socket per port of the pool, bound with `SO_REUSEPORT` so the
//!   kernel's hash over the engines' sockets of a port acts as an opaque RSS.
//! - [`mem::MemHub`]: an in-process network joining sidecars (tests), with an opaque hash choosing
//!   the engine.
//! - [`lossy::Lossy`]: a wrapper dropping sent datagrams at random (tests).
//!
//! A datapath belongs to one engine thread. It is told nothing about flows: datagrams in, datagrams
//! out, and a file descriptor that becomes readable when datagrams may be waiting.

#[cfg(feature = "dpdk")]
pub mod dpdk;
mod icmp_errors;
pub mod kernel;
pub mod lossy;
pub mod mem;

#[cfg(test)]
mod conformance;

use machnet_core::rss::RssOracle;
use machnet_core::Unreachable;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;

/// A jumbo frame's UDP payload: the datagram limit examples and tests give in-memory hosts (the
/// kernel datapath takes its limit from the interface MTU, see `sidecar::kernel_max_datagram`).
pub const DEFAULT_MAX_DATAGRAM: usize = 9000;
/// Largest UDP payload over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65507;

/// A received datagram, valid during the [`Datapath::recv`] callback. The receiver may change
/// its bytes (the engine opens sealed packets in place, PROTOCOL.md §12.3).
#[derive(Debug)]
pub struct Received<'a> {
    /// Sender's IPv4 address.
    pub remote_ip: Ipv4Addr,
    /// Sender's UDP port.
    pub src_port: u16,
    /// Our UDP port it arrived on.
    pub dst_port: u16,
    /// The UDP payload.
    pub payload: &'a mut [u8],
}

/// A datagram to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Destination address.
    pub remote_ip: Ipv4Addr,
    /// Our UDP source port (must be in our pool).
    pub src_port: u16,
    /// The destination UDP port.
    pub dst_port: u16,
    /// The UDP payload.
    pub payload: &'a [u8],
}

impl Outgoing<'_> {
    /// The datagram's addresses and length.
    pub fn meta(&self) -> TxMeta {
        TxMeta {
            remote_ip: self.remote_ip,
            src_port: self.src_port,
            dst_port: self.dst_port,
            len: self.payload.len(),
        }
    }
}

/// A datagram written in place by the closure of [`Datapath::send_with`]: where it goes and how
/// many bytes of the datapath's buffer it fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxMeta {
    /// Destination address.
    pub remote_ip: Ipv4Addr,
    /// Our UDP source port (must be in our pool).
    pub src_port: u16,
    /// The destination UDP port.
    pub dst_port: u16,
    /// Bytes written at the start of the buffer.
    pub len: usize,
}

impl TxMeta {
    /// The checks every datapath makes before sending: the datagram fits (in `max_datagram`
    /// and in the `room` the datapath offered) and leaves from one of our pool's ports. A
    /// refusal is counted in `stats.tx_errors`.
    pub fn check(
        &self,
        max_datagram: usize,
        room: usize,
        pool: machnet_core::PortPool,
        stats: &mut DatapathStats,
    ) -> Result<(), SendError> {
        let refusal = if self.len > max_datagram.min(room) || self.len == 0 {
            SendError::Oversize {
                len: self.len,
                max: max_datagram.min(room),
            }
        } else if !pool.contains(self.src_port) {
            SendError::NotOurPort(self.src_port)
        } else {
            return Ok(());
        };
        stats.tx_errors += 1;
        Err(refusal)
    }
}

/// Counters of one datapath.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathStats {
    /// Datagrams delivered to the engine.
    pub rx_packets: u64,
    /// Payload bytes delivered to the engine.
    pub rx_bytes: u64,
    /// Datagrams dropped on receive because they exceeded the largest datagram.
    pub rx_oversize: u64,
    /// Receive errors other than "nothing waiting".
    pub rx_errors: u64,
    /// Datagrams handed to the network.
    pub tx_packets: u64,
    /// Payload bytes handed to the network.
    pub tx_bytes: u64,
    /// Datagrams not sent: full socket buffer or queue (the transport retransmits).
    pub tx_dropped: u64,
    /// Send errors (oversize, bad source port, I/O errors).
    pub tx_errors: u64,
    /// Datagrams dropped on purpose by loss injection.
    pub injected_drops: u64,
    /// Send calls that carried several datagrams with UDP segmentation offload (GSO).
    pub tx_gso_batches: u64,
    /// GSO sends the kernel refused; their datagrams were resent one by one and GSO was
    /// switched off for the socket.
    pub tx_gso_fallbacks: u64,
    /// Receive buffers that held several datagrams coalesced by UDP GRO.
    pub rx_gro_batches: u64,
    /// ICMP port-unreachable reports about our datagrams handed to the engine.
    pub rx_port_unreachable: u64,
}

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The operating system reported an error.
    #[error("receive failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The datagram exceeds the largest datagram of this datapath.
    #[error("datagram of {len} bytes exceeds the maximum of {max}")]
    Oversize {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The source port is not in this host's pool.
    #[error("source UDP port {0} is not in this host's pool")]
    NotOurPort(u16),
    /// No room right now (socket buffer or queue full); the datagram was dropped.
    #[error("no room to send; datagram dropped")]
    Full,
    /// Nobody is reachable at the destination (in-memory datapath only; the kernel reports
    /// nothing for UDP).
    #[error("destination unreachable")]
    Unreachable,
    /// The operating system reported an error.
    #[error("send failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The packet I/O of one engine.
pub trait Datapath: Send {
    /// Receives up to `max` waiting datagrams, calling `sink` for each; returns how many were
    /// delivered (0: nothing waiting). Never blocks.
    fn recv(&mut self, max: usize, sink: &mut dyn FnMut(Received<'_>)) -> Result<usize, RecvError>;

    /// Lets `fill` write the next datagram straight into the datapath's own transmit memory (a
    /// buffer of at least [`Datapath::max_datagram`] bytes: a slot of a batch, a NIC buffer) and
    /// queues it, as smoltcp's `TxToken` does: no intermediate copy. `fill` returns where the
    /// datagram goes and how long it is, or `None` when it has nothing to send (then nothing is
    /// queued and the result is `Ok(false)`). Never blocks. Queued datagrams leave at the latest
    /// at [`Datapath::flush`]; failures found only then (a full socket buffer) are counted in
    /// the stats, not returned: the transport recovers from the loss.
    fn send_with(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>,
    ) -> Result<bool, SendError>;

    /// Sends one datagram, copying it in (tests and control traffic; the engine writes in place
    /// with [`Datapath::send_with`]).
    fn send(&mut self, d: Outgoing<'_>) -> Result<(), SendError> {
        self.send_with(&mut |buf| {
            if let Some(dst) = buf.get_mut(..d.payload.len()) {
                dst.copy_from_slice(d.payload);
            }
            // Too long for the buffer: the datapath's check refuses it unsent.
            Some(d.meta())
        })
        .map(|_| ())
    }

    /// Hands `sink` each ICMP "port unreachable" the network sent back about our datagrams
    /// (PROTOCOL.md §8.4), with the start of the datagram it quotes; returns how many. Never
    /// blocks. The engine calls it after [`Datapath::recv`]. The default is a datapath that
    /// learns of no such errors.
    fn recv_unreachable(&mut self, _sink: &mut dyn FnMut(Unreachable<'_>)) -> usize {
        0
    }

    /// A file descriptor that is readable whenever [`Datapath::recv`] (or
    /// [`Datapath::recv_unreachable`]) may find something (level-triggered). `None`: the
    /// datapath must be polled.
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Counters.
    fn stats(&self) -> DatapathStats;

    /// Largest datagram sent or received.
    fn max_datagram(&self) -> usize;

    /// Hands queued datagrams to the network. The engine calls it after each round of sends.
    fn flush(&mut self) {}

    /// What the NIC reveals about its receive-side scaling, as an oracle telling on which
    /// engine a datagram lands. With it the engine chooses UDP ports deterministically instead
    /// of spraying (PROTOCOL.md §5.4). `None` (the default): RSS is opaque, RSS-- it is.
    fn rss_oracle(&self) -> Option<Box<dyn RssOracle>> {
        None
    }
}

impl<T: Datapath + ?Sized> Datapath for Box<T> {
    fn recv(&mut self, max: usize, sink: &mut dyn FnMut(Received<'_>)) -> Result<usize, RecvError> {
        (**self).recv(max, sink)
    }
    fn send_with(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>,
    ) -> Result<bool, SendError> {
        (**self).send_with(fill)
    }
    fn send(&mut self, d: Outgoing<'_>) -> Result<(), SendError> {
        (**self).send(d)
    }
    fn recv_unreachable(&mut self, sink: &mut dyn FnMut(Unreachable<'_>)) -> usize {
        (**self).recv_unreachable(sink)
    }
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).readiness_fd()
    }
    fn stats(&self) -> DatapathStats {
        (**self).stats()
    }
    fn max_datagram(&self) -> usize {
        (**self).max_datagram()
    }
    fn flush(&mut self) {
        (**self).flush()
    }
    fn rss_oracle(&self) -> Option<Box<dyn RssOracle>> {
        (**self).rss_oracle()
    }
}
