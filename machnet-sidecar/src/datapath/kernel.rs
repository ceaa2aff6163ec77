//! Kernel UDP datapath: per engine, one non-blocking UDP socket per port of the pool, all bound to
//! `local_ip:port` with `SO_REUSEPORT`. The kernel spreads the 4-tuples arriving on a port over
//! the sockets of that port (one per engine) with a hash we do not know and keeps each 4-tuple on
//! one socket: an opaque RSS, which RSS-- copes with (PROTOCOL.md §1).
//!
//! Receiving uses one `epoll` over the engine's sockets (its descriptor is the readiness fd) and
//! `recvmmsg` batches; sending uses `sendto` on the socket bound to the source port.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use machnet_core::PortPool;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Datapath, DatapathStats, Outgoing, Received, RecvError, SendError};

/// Datagrams taken per `recvmmsg` call.
const BATCH: usize = 32;
/// Socket buffer sizes requested (the kernel may cap them).
const SOCKET_BUFFER: usize = 4 << 20;

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

/// `recvmmsg` headers, preallocated once.
struct Headers(MultiHeaders<SockaddrIn>);

// SAFETY: the raw pointers inside `MultiHeaders` point into its own boxed address buffers (and,
// during a `recvmmsg` call only, into buffers borrowed for that call). Nothing else aliases
// them, so moving the whole structure to another thread is sound.
unsafe impl Send for Headers {}

/// The kernel UDP datapath of one engine.
pub struct KernelUdp {
    pool: PortPool,
    sockets: Vec<UdpSocket>,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    headers: Headers,
    buf: Vec<u8>,
    max_datagram: usize,
    stats: DatapathStats,
}

impl std::fmt::Debug for KernelUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelUdp")
            .field("pool", &self.pool)
            .field("max_datagram", &self.max_datagram)
            .finish_non_exhaustive()
    }
}

fn bind_one(addr: SocketAddrV4) -> Result<UdpSocket, KernelUdpError> {
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
    Ok(s.into())
}

impl KernelUdp {
    /// Binds one socket per port of `pool` on `ip` (with `SO_REUSEPORT`, so every engine of the
    /// host can do the same). Datagrams longer than `max_datagram` are neither sent nor received.
    pub fn new(ip: Ipv4Addr, pool: PortPool, max_datagram: usize) -> Result<Self, KernelUdpError> {
        let max_datagram = max_datagram.clamp(1, super::MAX_UDP_PAYLOAD);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| KernelUdpError::Epoll(e.into()))?;
        let mut sockets = Vec::with_capacity(usize::from(pool.count));
        for i in 0..pool.count {
            let s = bind_one(SocketAddrV4::new(ip, pool.nth(i)))?;
            epoll
                .add(
                    s.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, u64::from(i)),
                )
                .map_err(|e| KernelUdpError::Epoll(e.into()))?;
            sockets.push(s);
        }
        Ok(KernelUdp {
            pool,
            events: vec![EpollEvent::empty(); sockets.len()],
            sockets,
            epoll,
            headers: Headers(MultiHeaders::preallocate(BATCH, None)),
            buf: vec![0u8; BATCH * max_datagram],
            max_datagram,
            stats: DatapathStats::default(),
        })
    }

    /// Drains up to `max` datagrams from socket `idx`; returns how many were delivered and
    /// whether the socket may hold more.
    fn drain(
        &mut self,
        idx: usize,
        max: usize,
        sink: &mut dyn FnMut(Received<'_>),
    ) -> Result<(usize, bool), RecvError> {
        let fd = self.sockets[idx].as_raw_fd();
        let dst_port = self.pool.nth(idx as u16);
        let slot = self.max_datagram;
        let want = max.min(BATCH);
        let mut meta: [(Ipv4Addr, u16, usize, bool); BATCH] =
            [(Ipv4Addr::UNSPECIFIED, 0, 0, false); BATCH];
        let got = {
            let mut iovs: Vec<[io::IoSliceMut<'_>; 1]> = self
                .buf
                .chunks_mut(slot)
                .take(want)
                .map(|c| [io::IoSliceMut::new(c)])
                .collect();
            let res = recvmmsg(
                fd,
                &mut self.headers.0,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            );
            match res {
                Ok(msgs) => {
                    let mut n = 0;
                    for m in msgs {
                        let (ip, port) = m
                            .address
                            .map(|a| (a.ip(), a.port()))
                            .unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
                        meta[n] = (ip, port, m.bytes, m.flags.contains(MsgFlags::MSG_TRUNC));
                        n += 1;
                    }
                    n
                }
                Err(Errno::EAGAIN) => return Ok((0, false)),
                Err(Errno::EINTR) => return Ok((0, true)),
                Err(e) => {
                    self.stats.rx_errors += 1;
                    return Err(RecvError::Io(e.into()));
                }
            }
        };
        let mut delivered = 0;
        for (i, &(ip, port, len, truncated)) in meta[..got].iter().enumerate() {
            if truncated || port == 0 {
                self.stats.rx_oversize += u64::from(truncated);
                continue;
            }
            let payload = &self.buf[i * slot..i * slot + len];
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += len as u64;
            delivered += 1;
            sink(Received {
                remote_ip: ip,
                src_port: port,
                dst_port,
                payload,
            });
        }
        Ok((delivered, got == want))
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
            loop {
                if total >= max {
                    return Ok(total);
                }
                let (n, more) = self.drain(idx, max - total, sink)?;
                total += n;
                if !more {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn send(&mut self, d: Outgoing<'_>) -> Result<(), SendError> {
        d.check(self.max_datagram, self.pool, &mut self.stats)?;
        let sock = &self.sockets[usize::from(d.src_port - self.pool.base)];
        match sock.send_to(d.payload, SocketAddrV4::new(d.remote_ip, d.dst_port)) {
            Ok(_) => {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += d.payload.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.stats.tx_dropped += 1;
                Err(SendError::Full)
            }
            Err(e) => {
                self.stats.tx_errors += 1;
                Err(SendError::Io(e))
            }
        }
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
}
