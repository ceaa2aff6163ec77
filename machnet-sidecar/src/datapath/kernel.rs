//! Kernel UDP datapath: per engine, one non-blocking UDP socket per port of the pool, all bound to
//! `local_ip:port` with `SO_REUSEPORT`. The kernel spreads the 4-tuples arriving on a port over
//! the sockets of that port (one per engine) with a hash we do not know and keeps each 4-tuple on
//! one socket: an opaque RSS, which RSS-- copes with (PROTOCOL.md §1).
//!
//! Socket I/O goes through `quinn-udp`, which does Linux's batching and offloads:
//! - **Receive**: one `epoll` over the engine's sockets (its descriptor is the readiness fd), then
//!   `recvmmsg` batches; with UDP GRO the kernel hands over several datagrams of one 4-tuple in
//!   one buffer with their segment size, which [`KernelUdp::recv`] splits again.
//! - **Send**: the engine writes datagrams in place into a transmit area ([`Datapath::send_with`]);
//!   consecutive datagrams to the same destination from the same socket, of the same size (the
//!   last may be shorter), form one batch that leaves in one `sendmsg` with UDP GSO
//!   (`UDP_SEGMENT`). Without GSO (old kernel, refused by a device, or switched off), each
//!   datagram is its own batch.
//!
//! GSO and GRO are detected when the sockets are made; a GSO send the kernel refuses is resent
//! datagram by datagram and GSO is switched off for that socket (counted in
//! `tx_gso_fallbacks`).

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use machnet_core::{PortPool, Unreachable};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use socket2::{Domain, Protocol, Socket, Type};

use super::icmp_errors::{self, QueuedError, QUOTE_MAX};
use super::{Datapath, DatapathStats, Received, RecvError, SendError, TxMeta};

/// Socket buffer sizes requested (the kernel caps them at `net.core.{r,w}mem_max`).
const SOCKET_BUFFER: usize = 4 << 20;
/// A receive slot holds any UDP datagram, and any GRO aggregate (the kernel coalesces at most
/// 64 KiB), so nothing is ever truncated.
const RX_SLOT: usize = 1 << 16;
/// Largest payload of one GSO send: an IPv4 packet's 65,535 bytes less the IP and UDP headers.
const GSO_MAX_BYTES: usize = 65_507;
/// Smallest transmit area: enough for a few full GSO batches per flush.
const TX_AREA_MIN: usize = 256 << 10;

/// Why the kernel datapath could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KernelUdpError {
    /// A socket could not be created or configured.
    #[error("cannot create a UDP socket: {0}")]
    Socket(io::Error),
    /// A port could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddrV4,
        /// The error.
        source: io::Error,
    },
    /// A port of the pool is already used by another socket (perhaps another sidecar).
    #[error("UDP {addr} is already in use (another sidecar on this address and port pool?)")]
    InUse {
        /// The address.
        addr: SocketAddrV4,
    },
    /// The epoll instance could not be set up.
    #[error("epoll: {0}")]
    Epoll(io::Error),
}

/// How the kernel datapath uses the kernel's UDP offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelUdpOptions {
    /// Largest datagram sent or received (UDP payload); larger ones received are dropped and
    /// counted in `rx_oversize`.
    pub max_datagram: usize,
    /// Use UDP GSO when the kernel offers it.
    pub gso: bool,
    /// Use UDP GRO when the kernel offers it.
    pub gro: bool,
}

impl KernelUdpOptions {
    /// Offloads on where available, datagrams up to `max_datagram` bytes.
    pub fn new(max_datagram: usize) -> Self {
        KernelUdpOptions {
            max_datagram,
            gso: true,
            gro: true,
        }
    }
}

/// Checks that no socket is bound to any port of `pool` on `ip` yet (a plain bind without
/// `SO_REUSEPORT` fails if one is). Call once per host before building the engines' datapaths:
/// sockets of the same user with `SO_REUSEPORT` would otherwise silently share our ports.
pub fn probe_pool(ip: Ipv4Addr, pool: PortPool) -> Result<(), KernelUdpError> {
    for i in 0..pool.count {
        let addr = SocketAddrV4::new(ip, pool.nth(i));
        match UdpSocket::bind(addr) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(KernelUdpError::InUse { addr })
            }
            Err(source) => return Err(KernelUdpError::Bind { addr, source }),
        }
    }
    Ok(())
}

/// The largest UDP payload the interface holding `ip` carries without fragmentation (its MTU
/// less the IPv4 and UDP headers), if the interface can be found. Every address of 127.0.0.0/8
/// belongs to the loopback interface, whichever address it was configured with.
pub fn interface_max_datagram(ip: Ipv4Addr) -> Option<usize> {
    use nix::net::if_::InterfaceFlags;
    let name = nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let mine = a
            .address
            .and_then(|sa| sa.as_sockaddr_in().map(|sin| sin.ip() == ip))
            .unwrap_or(false);
        let loopback = ip.is_loopback() && a.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        (mine || loopback).then_some(a.interface_name)
    })?;
    let mtu: usize = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(mtu.saturating_sub(28).min(super::MAX_UDP_PAYLOAD))
}

/// One UDP socket of the pool and its quinn-udp state (offload support, fallbacks).
struct PoolSocket {
    socket: UdpSocket,
    state: UdpSocketState,
    /// Datagrams per GSO send on this socket (1: no GSO).
    gso_segments: usize,
    /// The kernel reported an ICMP error on the socket (`EPOLLERR`, or a call failed with
    /// one): its error queue is to be read.
    errors_pending: bool,
}

/// Datagrams in the transmit area that leave in one send call.
#[derive(Debug, Clone, Copy)]
struct Batch {
    socket: usize,
    dest: SocketAddrV4,
    start: usize,
    len: usize,
    /// Size of every datagram but the last.
    segment: usize,
    count: usize,
    /// A shorter datagram ended the batch.
    closed: bool,
}

/// The kernel UDP datapath of one engine.
pub struct KernelUdp {
    pool: PortPool,
    sockets: Vec<PoolSocket>,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    rx: Vec<u8>,
    rx_meta: [RecvMeta; BATCH_SIZE],
    tx: Vec<u8>,
    tx_used: usize,
    batches: Vec<Batch>,
    max_datagram: usize,
    gro: bool,
    stats: DatapathStats,
    /// Where an error-queue entry's quote of our datagram lands.
    quote: Vec<u8>,
}

impl std::fmt::Debug for KernelUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelUdp")
            .field("pool", &self.pool)
            .field("max_datagram", &self.max_datagram)
            .field("gso_segments", &self.gso_segments())
            .field("gro", &self.gro)
            .finish_non_exhaustive()
    }
}

fn bind_one(addr: SocketAddrV4, opts: &KernelUdpOptions) -> Result<PoolSocket, KernelUdpError> {
    let s = Socket::new(
        Domain::IPV4,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(KernelUdpError::Socket)?;
    s.set_reuse_port(true).map_err(KernelUdpError::Socket)?;
    // Larger buffers absorb bursts; the kernel caps them at its limits, which is fine.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&addr.into())
        .map_err(|source| KernelUdpError::Bind { addr, source })?;
    let socket: UdpSocket = s.into();
    // Turns on GRO, packet info and don't-fragment, and probes GSO.
    let state = UdpSocketState::new(UdpSockRef::from(&socket)).map_err(KernelUdpError::Socket)?;
    if !opts.gro {
        let _ = setsockopt(&socket, sockopt::UdpGroSegment, &false);
    }
    // quinn-udp also asks for each datagram's destination address and TOS byte; nothing here
    // reads them, and every control message costs the kernel time per datagram.
    let _ = setsockopt(&socket, sockopt::Ipv4PacketInfo, &false);
    let _ = setsockopt(&socket, sockopt::IpRecvTos, &false);
    // ICMP errors about our datagrams go to the socket's error queue, where
    // `recv_unreachable` finds a dead peer sidecar's "port unreachable" (PROTOCOL.md §8.4).
    let _ = setsockopt(&socket, sockopt::Ipv4RecvErr, &true);
    let gso_segments = if opts.gso {
        state.max_gso_segments().max(1)
    } else {
        1
    };
    Ok(PoolSocket {
        socket,
        state,
        gso_segments,
        errors_pending: false,
    })
}

impl KernelUdp {
    /// Binds one socket per port of `pool` on `ip` (with `SO_REUSEPORT`, so every engine of the
    /// host can do the same), with GSO and GRO where the kernel has them.
    pub fn new(ip: Ipv4Addr, pool: PortPool, max_datagram: usize) -> Result<Self, KernelUdpError> {
        Self::with_options(ip, pool, KernelUdpOptions::new(max_datagram))
    }

    /// [`KernelUdp::new`] with explicit offload choices.
    pub fn with_options(
        ip: Ipv4Addr,
        pool: PortPool,
        opts: KernelUdpOptions,
    ) -> Result<Self, KernelUdpError> {
        let max_datagram = opts.max_datagram.clamp(1, super::MAX_UDP_PAYLOAD);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| KernelUdpError::Epoll(e.into()))?;
        let mut sockets = Vec::with_capacity(usize::from(pool.count));
        for i in 0..pool.count {
            let s = bind_one(SocketAddrV4::new(ip, pool.nth(i)), &opts)?;
            epoll
                .add(
                    s.socket.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, u64::from(i)),
                )
                .map_err(|e| KernelUdpError::Epoll(e.into()))?;
            sockets.push(s);
        }
        let gro = opts.gro && sockets.iter().all(|s| s.state.gro_segments() > 1);
        Ok(KernelUdp {
            pool,
            events: vec![EpollEvent::empty(); sockets.len()],
            sockets,
            epoll,
            rx: vec![0u8; BATCH_SIZE * RX_SLOT],
            rx_meta: [RecvMeta::default(); BATCH_SIZE],
            tx: vec![0u8; TX_AREA_MIN.max(4 * max_datagram)],
            tx_used: 0,
            batches: Vec::new(),
            max_datagram,
            gro,
            stats: DatapathStats::default(),
            quote: vec![0u8; QUOTE_MAX],
        })
    }

    /// Datagrams per GSO send (1: GSO unavailable or off).
    pub fn gso_segments(&self) -> usize {
        self.sockets
            .iter()
            .map(|s| s.gso_segments)
            .min()
            .unwrap_or(1)
    }

    /// Whether every socket receives with GRO.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Reads one batch from socket `idx` and hands its datagrams to `sink`; returns how many
    /// were delivered and whether the socket may hold more.
    fn drain(
        &mut self,
        idx: usize,
        sink: &mut dyn FnMut(Received<'_>),
    ) -> Result<(usize, bool), RecvError> {
        /// Receive calls that may each report one earlier ICMP error before the data: the
        /// kernel reports a pending error ahead of queued datagrams, so a stream of ICMP errors
        /// must not keep the datagrams from being read.
        const ICMP_RETRIES: usize = 8;
        let sock = &mut self.sockets[idx];
        let mut slots = self.rx.chunks_mut(RX_SLOT);
        let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().expect("BATCH_SIZE slots")));
        let mut attempts = 0;
        let got = loop {
            match sock
                .state
                .recv(UdpSockRef::from(&sock.socket), &mut bufs, &mut self.rx_meta)
            {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((0, false)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok((0, true)),
                Err(e) if icmp_errors::is_icmp_error(&e) => {
                    // Reported once, the details wait in the error queue; the datagrams are
                    // readable now.
                    sock.errors_pending = true;
                    attempts += 1;
                    if attempts > ICMP_RETRIES {
                        return Ok((0, false)); // the next round reads on
                    }
                }
                Err(e) => {
                    self.stats.rx_errors += 1;
                    return Err(RecvError::Io(e));
                }
            }
        };
        let dst_port = self.pool.nth(idx as u16);
        let mut delivered = 0;
        let (rx, stats, max_datagram) = (&mut self.rx, &mut self.stats, self.max_datagram);
        for (i, meta) in self.rx_meta[..got].iter().enumerate() {
            let SocketAddr::V4(from) = meta.addr else {
                stats.rx_errors += 1;
                continue;
            };
            if from.port() == 0 {
                continue;
            }
            let data = &mut rx[i * RX_SLOT..i * RX_SLOT + meta.len];
            let stride = meta.stride.max(1);
            if meta.len > stride {
                stats.rx_gro_batches += 1;
            }
            for payload in data.chunks_mut(stride) {
                if payload.len() > max_datagram {
                    stats.rx_oversize += 1;
                    continue;
                }
                stats.rx_packets += 1;
                stats.rx_bytes += payload.len() as u64;
                delivered += 1;
                sink(Received {
                    remote_ip: *from.ip(),
                    src_port: from.port(),
                    dst_port,
                    payload,
                });
            }
        }
        Ok((delivered, got == BATCH_SIZE))
    }

    /// Sends every queued batch; failures are counted (the transport retransmits).
    fn flush_tx(&mut self) {
        for b in std::mem::take(&mut self.batches) {
            let sock = &mut self.sockets[b.socket];
            let contents = &self.tx[b.start..b.start + b.len];
            let t = Transmit {
                destination: SocketAddr::V4(b.dest),
                ecn: None,
                contents,
                segment_size: (b.count > 1).then_some(b.segment),
                src_ip: None,
            };
            let mut sent = sock.state.try_send(UdpSockRef::from(&sock.socket), &t);
            if sent.as_ref().is_err_and(icmp_errors::is_icmp_error) {
                // An earlier datagram's ICMP error, reported by this call once (IP_RECVERR): it
                // says nothing about this batch, which goes out on the second try.
                sock.errors_pending = true;
                sent = sock.state.try_send(UdpSockRef::from(&sock.socket), &t);
            }
            match sent {
                Ok(()) => {
                    self.stats.tx_packets += b.count as u64;
                    self.stats.tx_bytes += b.len as u64;
                    self.stats.tx_gso_batches += u64::from(b.count > 1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.stats.tx_dropped += b.count as u64;
                }
                Err(_) if b.count > 1 => {
                    // The kernel or the device refused segmentation: quinn-udp has switched it
                    // off for this socket; send these datagrams one by one.
                    self.stats.tx_gso_fallbacks += 1;
                    sock.gso_segments = 1;
                    for one in contents.chunks(b.segment) {
                        let t = Transmit {
                            contents: one,
                            segment_size: None,
                            ..t
                        };
                        match sock.state.try_send(UdpSockRef::from(&sock.socket), &t) {
                            Ok(()) => {
                                self.stats.tx_packets += 1;
                                self.stats.tx_bytes += one.len() as u64;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.stats.tx_dropped += 1
                            }
                            Err(_) => self.stats.tx_errors += 1,
                        }
                    }
                }
                Err(_) => self.stats.tx_errors += 1,
            }
        }
        self.tx_used = 0;
    }
}

impl Datapath for KernelUdp {
    fn recv(&mut self, max: usize, sink: &mut dyn FnMut(Received<'_>)) -> Result<usize, RecvError> {
        let ready = match self.epoll.wait(&mut self.events, 0u8) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => {
                self.stats.rx_errors += 1;
                return Err(RecvError::Io(e.into()));
            }
        };
        let mut total = 0;
        for k in 0..ready {
            let idx = self.events[k].data() as usize;
            if idx >= self.sockets.len() {
                continue;
            }
            if self.events[k].events().contains(EpollFlags::EPOLLERR) {
                self.sockets[idx].errors_pending = true;
            }
            // One batch may split into more datagrams than `max` (GRO): the budget is soft.
            while total < max {
                let (n, more) = self.drain(idx, sink)?;
                total += n;
                if !more {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn send_with(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>,
    ) -> Result<bool, SendError> {
        if self.tx_used + self.max_datagram > self.tx.len() {
            self.flush_tx();
        }
        let start = self.tx_used;
        let Some(meta) = fill(&mut self.tx[start..start + self.max_datagram]) else {
            return Ok(false);
        };
        meta.check(
            self.max_datagram,
            self.max_datagram,
            self.pool,
            &mut self.stats,
        )?;
        let socket = usize::from(meta.src_port - self.pool.base);
        let dest = SocketAddrV4::new(meta.remote_ip, meta.dst_port);
        let limit = self.sockets[socket].gso_segments;
        self.tx_used += meta.len;
        if let Some(b) = self.batches.last_mut() {
            let joins = b.socket == socket
                && b.dest == dest
                && !b.closed
                && b.count < limit
                && meta.len <= b.segment
                && b.len + meta.len <= GSO_MAX_BYTES;
            if joins {
                b.len += meta.len;
                b.count += 1;
                b.closed = meta.len < b.segment;
                return Ok(true);
            }
        }
        self.batches.push(Batch {
            socket,
            dest,
            start,
            len: meta.len,
            segment: meta.len,
            count: 1,
            closed: false,
        });
        Ok(true)
    }

    fn recv_unreachable(&mut self, sink: &mut dyn FnMut(Unreachable<'_>)) -> usize {
        /// Entries read per socket and call: a flood of ICMP cannot hold the engine here.
        const PER_SOCKET: usize = 64;
        let mut reported = 0;
        for (i, sock) in self.sockets.iter_mut().enumerate() {
            if !sock.errors_pending {
                continue;
            }
            let mut emptied = false;
            for _ in 0..PER_SOCKET {
                match icmp_errors::read_one(&sock.socket, &mut self.quote) {
                    Ok(Some(QueuedError::PortUnreachable { dest, len })) => {
                        self.stats.rx_port_unreachable += 1;
                        reported += 1;
                        sink(Unreachable {
                            remote_ip: *dest.ip(),
                            src_port: self.pool.nth(i as u16),
                            dst_port: dest.port(),
                            quoted: &self.quote[..len.min(QUOTE_MAX)],
                        });
                    }
                    Ok(Some(QueuedError::Other)) => {}
                    Ok(None) => {
                        emptied = true;
                        break;
                    }
                    Err(_) => {
                        self.stats.rx_errors += 1;
                        emptied = true;
                        break;
                    }
                }
            }
            // Not emptied: the rest waits for the next call (EPOLLERR stays set until then).
            sock.errors_pending = !emptied;
        }
        reported
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.epoll.0.as_fd())
    }

    fn stats(&self) -> DatapathStats {
        self.stats
    }

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    fn flush(&mut self) {
        if !self.batches.is_empty() {
            self.flush_tx();
        }
    }
}
