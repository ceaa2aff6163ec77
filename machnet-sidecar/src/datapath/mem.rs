//! In-memory datapath: a [`MemHub`] joins any number of hosts (sidecars) inside one process.
//!
//! Each host registers its address, engine count and UDP port pool and gets one [`MemDatapath`]
//! per engine. A datagram sent to `(ip, port)` of a registered host is queued on the engine picked
//! by a seeded hash of the 4-tuple: deterministic per 4-tuple, opaque to the sender, like a NIC's
//! RSS. Each engine queue has an eventfd that is readable while datagrams wait.
//!
//! A hub made with [`MemHub::revealing_rss`] plays a NIC whose RSS function is known: its
//! datapaths hand the engines an [`RssOracle`] computing the same hash, so connection setup
//! takes single packets instead of sprays (the DPDK datapath does this with a port's Toeplitz
//! key and redirection table).

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use machnet_core::rss::{RssOracle, UdpTuple};
use machnet_core::PortPool;
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Datapath, DatapathStats, Outgoing, Received, RecvError, SendError, TxMeta};

/// Datagrams an engine queue holds before it drops (like a NIC ring).
pub const DEFAULT_QUEUE_CAP: usize = 65536;

/// Why a host could not join the hub.
#[derive(Debug, thiserror::Error)]
pub enum MemHubError {
    /// Another host already uses this address.
    #[error("address {0} is already on the hub")]
    AddressInUse(Ipv4Addr),
    /// Engine count or port pool invalid.
    #[error("invalid host: {0}")]
    Invalid(&'static str),
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

struct Packet {
    src_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    data: Vec<u8>,
}

struct EngineQueue {
    queue: Mutex<VecDeque<Packet>>,
    /// Whether the eventfd was written since the consumer last cleared it.
    signalled: AtomicBool,
    efd: EventFd,
    cap: usize,
    max_datagram: usize,
    rx_oversize: std::sync::atomic::AtomicU64,
    overflow: std::sync::atomic::AtomicU64,
}

struct Host {
    pool: PortPool,
    engines: Vec<Arc<EngineQueue>>,
}

/// An in-process network of hosts. Cheap to clone (shared).
#[derive(Clone)]
pub struct MemHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    seed: u64,
    reveal_rss: bool,
    hosts: RwLock<HashMap<Ipv4Addr, Host>>,
}

impl std::fmt::Debug for MemHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemHub")
            .field("seed", &self.inner.seed)
            .finish_non_exhaustive()
    }
}

impl MemHub {
    /// A hub whose engine-selection hash is keyed by `seed`.
    pub fn new(seed: u64) -> Self {
        MemHub {
            inner: Arc::new(HubInner {
                seed,
                reveal_rss: false,
                hosts: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Like [`MemHub::new`], but each datapath reveals the hash to its engine through
    /// [`Datapath::rss_oracle`] (the local host's only, like a NIC reporting its own RSS
    /// configuration).
    pub fn revealing_rss(seed: u64) -> Self {
        MemHub {
            inner: Arc::new(HubInner {
                seed,
                reveal_rss: true,
                hosts: RwLock::new(HashMap::new()),
            }),
        }
    }

    /// Registers a host with `engines` engines receiving on `pool`; returns one datapath per
    /// engine, in engine order. Datagrams longer than `max_datagram` are refused on send and
    /// dropped on receive.
    pub fn add_host(
        &self,
        ip: Ipv4Addr,
        engines: u16,
        pool: PortPool,
        max_datagram: usize,
    ) -> Result<Vec<MemDatapath>, MemHubError> {
        if engines == 0 {
            return Err(MemHubError::Invalid("no engines"));
        }
        if !pool.is_valid() {
            return Err(MemHubError::Invalid("bad port pool"));
        }
        let mut hosts = self.inner.hosts.write().unwrap_or_else(|e| e.into_inner());
        if hosts.contains_key(&ip) {
            return Err(MemHubError::AddressInUse(ip));
        }
        let mut queues = Vec::new();
        for _ in 0..engines {
            let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .map_err(|e| MemHubError::EventFd(e.into()))?;
            queues.push(Arc::new(EngineQueue {
                queue: Mutex::new(VecDeque::new()),
                signalled: AtomicBool::new(false),
                efd,
                cap: DEFAULT_QUEUE_CAP,
                max_datagram,
                rx_oversize: Default::default(),
                overflow: Default::default(),
            }));
        }
        hosts.insert(
            ip,
            Host {
                pool,
                engines: queues.clone(),
            },
        );
        Ok(queues
            .into_iter()
            .map(|q| MemDatapath {
                hub: self.clone(),
                ip,
                pool,
                queue: q,
                max_datagram,
                scratch: vec![0u8; max_datagram],
                stats: DatapathStats::default(),
            })
            .collect())
    }

    /// Removes a host: datagrams to it are dropped from now on.
    pub fn remove_host(&self, ip: Ipv4Addr) {
        self.inner
            .hosts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }

    /// The engine of the host that a datagram with this 4-tuple reaches (the opaque hash).
    fn pick(&self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), engines: usize) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.inner.seed, src, dst).hash(&mut h);
        (h.finish() % engines as u64) as usize
    }

    fn deliver(&self, src_ip: Ipv4Addr, d: Outgoing<'_>) -> Result<(), SendError> {
        let hosts = self.inner.hosts.read().unwrap_or_else(|e| e.into_inner());
        let host = hosts.get(&d.remote_ip).ok_or(SendError::Unreachable)?;
        if !host.pool.contains(d.dst_port) {
            return Err(SendError::Unreachable);
        }
        let e = self.pick(
            (src_ip, d.src_port),
            (d.remote_ip, d.dst_port),
            host.engines.len(),
        );
        let q = &host.engines[e];
        if d.payload.len() > q.max_datagram {
            q.rx_oversize.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        {
            let mut queue = q.queue.lock().unwrap_or_else(|e| e.into_inner());
            if queue.len() >= q.cap {
                q.overflow.fetch_add(1, Ordering::Relaxed);
                return Err(SendError::Full);
            }
            queue.push_back(Packet {
                src_ip,
                src_port: d.src_port,
                dst_port: d.dst_port,
                data: d.payload.to_vec(),
            });
        }
        if !q.signalled.swap(true, Ordering::SeqCst) {
            let _ = q.efd.write(1);
        }
        Ok(())
    }
}

/// The in-memory datapath of one engine.
pub struct MemDatapath {
    hub: MemHub,
    ip: Ipv4Addr,
    pool: PortPool,
    queue: Arc<EngineQueue>,
    max_datagram: usize,
    /// Where `send_with`'s closure writes; the hub copies from it.
    scratch: Vec<u8>,
    stats: DatapathStats,
}

impl std::fmt::Debug for MemDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDatapath")
            .field("ip", &self.ip)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Datapath for MemDatapath {
    fn recv(&mut self, max: usize, sink: &mut dyn FnMut(Received<'_>)) -> Result<usize, RecvError> {
        let q = &self.queue;
        // Clear the wake-up first: a datagram queued after this point writes the eventfd again.
        if q.signalled.load(Ordering::SeqCst) {
            let _ = q.efd.read();
            q.signalled.store(false, Ordering::SeqCst);
        }
        let mut taken = VecDeque::new();
        {
            let mut queue = q.queue.lock().unwrap_or_else(|e| e.into_inner());
            let n = queue.len().min(max);
            taken.extend(queue.drain(..n));
            if !queue.is_empty() && !q.signalled.swap(true, Ordering::SeqCst) {
                let _ = q.efd.write(1);
            }
        }
        let n = taken.len();
        for mut p in taken {
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += p.data.len() as u64;
            sink(Received {
                remote_ip: p.src_ip,
                src_port: p.src_port,
                dst_port: p.dst_port,
                payload: &mut p.data,
            });
        }
        Ok(n)
    }

    fn send_with(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>,
    ) -> Result<bool, SendError> {
        // The hub queues its own copy of each datagram, so the closure writes into a scratch
        // buffer of ours.
        let Some(meta) = fill(&mut self.scratch) else {
            return Ok(false);
        };
        meta.check(
            self.max_datagram,
            self.scratch.len(),
            self.pool,
            &mut self.stats,
        )?;
        let d = Outgoing {
            remote_ip: meta.remote_ip,
            src_port: meta.src_port,
            dst_port: meta.dst_port,
            payload: &self.scratch[..meta.len],
        };
        match self.hub.deliver(self.ip, d) {
            Ok(()) => {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += meta.len as u64;
                Ok(true)
            }
            Err(SendError::Unreachable) => {
                // Like UDP: the sender learns nothing; count it as sent.
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += meta.len as u64;
                Ok(true)
            }
            Err(SendError::Full) => {
                self.stats.tx_dropped += 1;
                Err(SendError::Full)
            }
            Err(e) => {
                self.stats.tx_errors += 1;
                Err(e)
            }
        }
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.queue.efd.as_fd())
    }

    fn stats(&self) -> DatapathStats {
        let mut s = self.stats;
        s.rx_oversize = self.queue.rx_oversize.load(Ordering::Relaxed);
        s
    }

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    fn rss_oracle(&self) -> Option<Box<dyn RssOracle>> {
        if !self.hub.inner.reveal_rss {
            return None;
        }
        let engines = self
            .hub
            .inner
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.ip)?
            .engines
            .len();
        Some(Box::new(MemRssOracle {
            hub: self.hub.clone(),
            ip: self.ip,
            engines,
        }))
    }
}

/// The hub's engine-selection hash for datagrams arriving at one host.
struct MemRssOracle {
    hub: MemHub,
    ip: Ipv4Addr,
    engines: usize,
}

impl RssOracle for MemRssOracle {
    fn local_engine(&self, t: &UdpTuple) -> Option<u16> {
        if t.dst_ip != self.ip {
            return None;
        }
        let e = self
            .hub
            .pick((t.src_ip, t.src_port), (t.dst_ip, t.dst_port), self.engines);
        u16::try_from(e).ok()
    }
}
