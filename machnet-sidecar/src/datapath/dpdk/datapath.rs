//! [`DpdkDatapath`]: the [`Datapath`] of one engine over one RX/TX queue pair of a DPDK port,
//! with a [`NetStack`] doing Ethernet/ARP/IPv4/UDP/ICMP; and [`dpdk_datapaths`], which brings
//! up EAL, the mempool and the port for a sidecar.
//!
//! Scope of this first slice (issue 4):
//!
//! - **ARP across queues.** Every engine has its own `NetStack` (its own ARP cache, answering
//!   the requests that land on its queue), and the engines of a port share one
//!   [`SharedNeighbours`] table: an ARP reply may land on any queue, and whichever engine receives
//!   it completes the resolution for the engine that asked (`netstack/neighbours.rs`).
//! - **Busy-poll.** Queues have no file descriptor: [`Datapath::readiness_fd`] is `None`, so
//!   DPDK engines default to `--idle-mode busy` (spinning, yielding the CPU to runnable threads
//!   when idle); in `--idle-mode sleep` they nap at most 50 µs at a time (the engine's
//!   `POLLED_NAP`). ARP timers run on each `recv`. (RX interrupts would let them sleep longer;
//!   af_packet and af_xdp offer none.)
//! - **Checksums.** Computed in software unless the port enabled both IPv4 and UDP TX checksum
//!   offloads (then requested per mbuf). Received checksums the NIC vouched for (per-mbuf
//!   `RTE_MBUF_F_RX_*_CKSUM_GOOD`/`_NONE`) are not verified again, frames it found bad are
//!   dropped, and the rest (af_packet, af_xdp) are verified in software.
//! - **Batching.** Sent frames are buffered and handed to the queue in bursts of [`BURST`] or on
//!   [`Datapath::flush`] (end of each engine transmit round) and at the end of each `recv`.
//! - **RSS oracle.** Where the port exposes a Toeplitz key and redirection table that hash UDP
//!   ports onto our queues ([`RssConfig::udp_table`](super::RssConfig::udp_table)), each engine
//!   gets a [`ToeplitzOracle`] and picks UDP ports deterministically (PROTOCOL.md §5.4);
//!   otherwise (af_packet, af_xdp, most vNICs) RSS is opaque and RSS-- sprays.

use std::os::fd::BorrowedFd;

use machnet_core::rss::{RssOracle, RssTable, ToeplitzOracle};

use super::HEADROOM;
use super::{
    ChecksumStatus, DpdkError, Eal, Mbuf, Mempool, Port, PortConfig, RxQueue, TxQueue,
    DEFAULT_BUF_SIZE,
};
use crate::clock::Clock;
use crate::config::SidecarConfig;
use crate::datapath::{Datapath, DatapathStats, Received, RecvError, SendError, TxMeta};
use crate::netstack::neighbours::SharedNeighbours;
use crate::netstack::wire::{DropReason, MacAddr};
use crate::netstack::{
    ChecksumOffload, HwChecksum, Inbound, NetConfig, NetStack, NetStats, Outbound, RxChecksums,
};
use std::sync::Arc;

/// Frames per RX or TX burst.
pub const BURST: usize = 32;
/// Ethernet + IPv4 + UDP headers.
const HEADERS: usize = 14 + 20 + 8;
/// Smallest Ethernet frame without FCS.
const MIN_FRAME: usize = 60;
/// Mbufs `net_af_xdp` (DPDK 22.11) puts in each queue's UMEM fill ring at set-up
/// (`XSK_RING_CONS__DEFAULT_NUM_DESCS`); they stay there, replaced one for one as frames arrive.
const AF_XDP_FILL_MBUFS: u32 = 2048;

/// The packet I/O of one engine on one queue pair of a DPDK port.
pub struct DpdkDatapath {
    /// An mbuf allocated for a `send_with` whose closure had nothing to send (or whose
    /// datagram went nowhere): the next `send_with` writes into it. Empty (no data).
    spare: Option<Mbuf>,
    rx: RxQueue,
    tx: TxQueue,
    pool: Mempool,
    stack: NetStack,
    clock: Clock,
    /// The port computes IPv4 and UDP checksums of the datagrams we send.
    tx_offload: bool,
    rx_mbufs: Vec<Mbuf>,
    tx_mbufs: Vec<Mbuf>,
    /// Frames out of `NetStack::poll_transmit`.
    scratch: Vec<u8>,
    /// Where `send_with`'s closure writes when no mbuf is to be had (pool exhausted): the
    /// datagram is then dropped and counted.
    tx_payload: Vec<u8>,
    stats: DatapathStats,
    max_datagram: usize,
    /// The port's RSS, when it can be predicted.
    rss: Option<RssTable>,
}

impl std::fmt::Debug for DpdkDatapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpdkDatapath")
            .field("queue", &self.rx.index())
            .field("mac", &self.stack.config().mac)
            .field("ip", &self.stack.config().ip)
            .field("tx_offload", &self.tx_offload)
            .finish_non_exhaustive()
    }
}

impl DpdkDatapath {
    /// A datapath on this queue pair, allocating sent frames from `pool`, sharing neighbours
    /// with the port's other engines through `neighbours`. `net.offload` is overridden:
    /// software checksums, except on transmit when `tx_offload` (the port enabled both IPv4
    /// and UDP TX checksum offloads).
    pub fn new(
        rx: RxQueue,
        tx: TxQueue,
        pool: Mempool,
        mut net: NetConfig,
        tx_offload: bool,
        neighbours: Arc<SharedNeighbours>,
    ) -> Self {
        net.offload = ChecksumOffload {
            ipv4_tx: tx_offload,
            udp_tx: tx_offload,
            ipv4_rx: false,
            udp_rx: false,
        };
        let stack = NetStack::with_shared_neighbours(net, neighbours);
        let max_datagram = stack.config().max_payload();
        let scratch = vec![0u8; stack.config().max_frame().max(MIN_FRAME)];
        DpdkDatapath {
            spare: None,
            rx,
            tx,
            pool,
            stack,
            clock: Clock::new(),
            tx_offload,
            rx_mbufs: Vec::with_capacity(BURST),
            tx_mbufs: Vec::with_capacity(2 * BURST),
            scratch,
            tx_payload: vec![0u8; max_datagram],
            stats: DatapathStats::default(),
            max_datagram,
            rss: None,
        }
    }

    /// Takes back an mbuf that carried nothing out, emptied, for the next `send_with`.
    fn keep_spare(&mut self, mut m: Mbuf) {
        let len = m.len();
        if m.trim(len) {
            self.spare = Some(m);
        }
    }

    /// `send_with` without an mbuf (the pool is exhausted, or its buffers cannot hold a frame:
    /// `oversize`): the closure writes into the scratch buffer, and a datagram that passes the
    /// checks is dropped and counted.
    fn send_without_mbuf(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>,
        oversize: bool,
    ) -> Result<bool, SendError> {
        let mut payload = std::mem::take(&mut self.tx_payload);
        let res = match fill(&mut payload) {
            None => Ok(false),
            Some(meta) => match meta.check(
                self.max_datagram,
                payload.len(),
                self.stack.config().udp_ports,
                &mut self.stats,
            ) {
                Err(e) => Err(e),
                Ok(()) if oversize => {
                    self.stats.tx_errors += 1;
                    Err(SendError::Oversize {
                        len: meta.len,
                        max: self.max_datagram,
                    })
                }
                Ok(()) => {
                    self.stats.tx_dropped += 1;
                    Err(SendError::Full)
                }
            },
        };
        self.tx_payload = payload;
        res
    }

    /// Lets the engine predict the queue of received datagrams with this table (see the module
    /// docs); the caller checked it maps onto the port's queues.
    pub fn with_rss_table(mut self, table: RssTable) -> Self {
        self.rss = Some(table);
        self
    }

    /// Counters of the network layer (ARP, ICMP, drops per reason).
    pub fn net_stats(&self) -> NetStats {
        self.stack.stats()
    }

    /// Moves frames waiting in the netstack (ARP requests, datagrams released by a resolution)
    /// into the TX buffer.
    fn drain_stack(&mut self) {
        let now = self.clock.now();
        while let Some(n) = self.stack.poll_transmit(now, &mut self.scratch) {
            let frame = &self.scratch[..n];
            match self.pool.alloc_from(frame) {
                Some(mut m) => {
                    // Released datagrams were built for offload; ARP requests need none.
                    if self.tx_offload && frame[12..14] == [0x08, 0x00] {
                        m.request_ipv4_udp_checksums(14, 20);
                    }
                    self.tx_mbufs.push(m);
                }
                None => self.stats.tx_dropped += 1,
            }
        }
    }

    /// Hands the TX buffer to the queue (one retry); what still does not fit is dropped.
    fn flush_tx(&mut self) {
        if self.tx_mbufs.is_empty() {
            return;
        }
        self.tx.burst(&mut self.tx_mbufs);
        if !self.tx_mbufs.is_empty() {
            self.tx.burst(&mut self.tx_mbufs);
        }
        if !self.tx_mbufs.is_empty() {
            self.stats.tx_dropped += self.tx_mbufs.len() as u64;
            self.tx_mbufs.clear();
        }
    }
}

impl Datapath for DpdkDatapath {
    fn recv(&mut self, max: usize, sink: &mut dyn FnMut(Received<'_>)) -> Result<usize, RecvError> {
        let now = self.clock.now();
        if self.stack.poll_timeout().is_some_and(|t| t <= now) {
            self.stack.handle_timeout(now);
        }
        let mut delivered = 0;
        let want = max.min(BURST) as u16;
        let mut mbufs = std::mem::take(&mut self.rx_mbufs);
        if want > 0 {
            self.rx.burst(&mut mbufs, want);
        }
        for mut m in mbufs.drain(..) {
            if m.segments() != 1 {
                // Larger than one mbuf: larger than our MTU.
                self.stats.rx_oversize += 1;
                continue;
            }
            let checksums = rx_checksums(&m);
            let datagram = match self.stack.handle_frame_checked(now, m.data(), checksums) {
                Inbound::Datagram {
                    remote_ip,
                    src_port,
                    dst_port,
                    payload,
                } => Some((remote_ip, src_port, dst_port, payload)),
                Inbound::Reply(frame) => {
                    match self.pool.alloc_from(frame) {
                        Some(r) => self.tx_mbufs.push(r),
                        None => self.stats.tx_dropped += 1,
                    }
                    None
                }
                Inbound::Consumed | Inbound::Drop(_) => None,
            };
            if let Some((remote_ip, src_port, dst_port, range)) = datagram {
                // The receiver may open a sealed packet where it lies (PROTOCOL.md §12.3).
                let payload = &mut m.data_mut()[range];
                self.stats.rx_packets += 1;
                self.stats.rx_bytes += payload.len() as u64;
                delivered += 1;
                sink(Received {
                    remote_ip,
                    src_port,
                    dst_port,
                    payload,
                });
            }
        }
        self.rx_mbufs = mbufs;
        self.drain_stack();
        self.flush_tx();
        Ok(delivered)
    }

    /// Zero copy: the closure writes the payload straight into an mbuf, after room for the
    /// headers, which the netstack then writes around it; the mbuf is trimmed to the frame.
    fn send_with(
        &mut self,
        fill: &mut dyn FnMut(&mut [u8]) -> Option<TxMeta>,
    ) -> Result<bool, SendError> {
        let Some(mut m) = self.spare.take().or_else(|| self.pool.alloc()) else {
            return self.send_without_mbuf(fill, false);
        };
        let room = self.max_datagram;
        let cap = (HEADERS + room).max(MIN_FRAME);
        let Some(frame) = m.append_unzeroed(cap) else {
            // The pool's buffers are smaller than a frame (its data room was sized for the MTU,
            // so this does not happen).
            self.keep_spare(m);
            return self.send_without_mbuf(fill, true);
        };
        let Some(meta) = fill(&mut frame[HEADERS..HEADERS + room]) else {
            self.keep_spare(m);
            return Ok(false);
        };
        if let Err(e) = meta.check(room, room, self.stack.config().udp_ports, &mut self.stats) {
            self.keep_spare(m);
            return Err(e);
        }
        let now = self.clock.now();
        let out = self.stack.build_headers_in_place(
            now,
            meta.remote_ip,
            meta.src_port,
            meta.dst_port,
            frame,
            meta.len,
        );
        match out {
            Outbound::Frame(n) => {
                debug_assert_eq!(n, (HEADERS + meta.len).max(MIN_FRAME));
                let trimmed = m.trim(cap - n);
                debug_assert!(trimmed);
                if self.tx_offload {
                    m.request_ipv4_udp_checksums(14, 20);
                }
                self.tx_mbufs.push(m);
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += meta.len as u64;
                if self.tx_mbufs.len() >= BURST {
                    self.flush_tx();
                }
                Ok(true)
            }
            Outbound::Pending => {
                // Copied into the ARP queue; the request goes out with the next flush.
                self.keep_spare(m);
                self.drain_stack();
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += meta.len as u64;
                Ok(true)
            }
            Outbound::Drop(reason) => {
                self.keep_spare(m);
                Err(match reason {
                    DropReason::ArpQueueFull => {
                        self.stats.tx_dropped += 1;
                        SendError::Full
                    }
                    DropReason::TooLarge => {
                        self.stats.tx_errors += 1;
                        SendError::Oversize {
                            len: meta.len,
                            max: room,
                        }
                    }
                    _ => {
                        self.stats.tx_errors += 1;
                        SendError::Unreachable
                    }
                })
            }
        }
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn stats(&self) -> DatapathStats {
        self.stats
    }

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    fn flush(&mut self) {
        self.drain_stack();
        self.flush_tx();
    }

    fn rss_oracle(&self) -> Option<Box<dyn RssOracle>> {
        let table = self.rss.clone()?;
        Some(Box::new(ToeplitzOracle::local(table)))
    }
}

/// The NIC's checksum verdicts on a received frame.
fn rx_checksums(m: &Mbuf) -> RxChecksums {
    let map = |s: ChecksumStatus| match s {
        // NONE: "not correct in the packet data, but the integrity is verified" (virtio).
        ChecksumStatus::Good | ChecksumStatus::None => HwChecksum::Good,
        ChecksumStatus::Bad => HwChecksum::Bad,
        ChecksumStatus::Unknown => HwChecksum::Unchecked,
    };
    let (ipv4, l4) = m.rx_checksums();
    RxChecksums {
        ipv4: map(ipv4),
        l4: map(l4),
    }
}

/// EAL arguments used when `--dpdk-args` is not given: no PCI probing, no hugepages, private
/// runtime directory (no port: give `--vdev=...` or a PCI allow-list in `--dpdk-args`).
pub fn default_eal_args() -> Vec<String> {
    [
        "--no-pci",
        "--no-huge",
        "-m",
        "256",
        "--no-shconf",
        "--no-telemetry",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--file-prefix=machnet-{}", std::process::id())])
    .collect()
}

/// Brings up EAL, a mempool and the configured port with one queue pair per engine, and
/// returns one [`DpdkDatapath`] per engine (in engine order). The port is closed when the last
/// datapath is dropped; EAL is cleaned up after that.
pub fn dpdk_datapaths(cfg: &SidecarConfig) -> Result<Vec<Box<dyn Datapath>>, DpdkError> {
    let args = if cfg.dpdk_args.is_empty() {
        default_eal_args()
    } else {
        cfg.dpdk_args.clone()
    };
    tracing::info!(args = %args.join(" "), "{}: initialising EAL", super::version());
    // rte_eal_init pins the calling thread to the main lcore; engines and the control server
    // are spawned from this thread and would inherit that. Restore the original affinity.
    let pid = nix::unistd::Pid::from_raw(0);
    let affinity = nix::sched::sched_getaffinity(pid).ok();
    let eal = Eal::init(&args)?;
    if let Some(set) = affinity {
        if let Err(e) = nix::sched::sched_setaffinity(pid, &set) {
            tracing::warn!("cannot restore the CPU affinity after EAL init: {e}");
        }
    }
    let id = match &cfg.dpdk_port {
        Some(name) => eal.find_port(name)?,
        None => *eal.port_ids().first().ok_or_else(|| {
            DpdkError::NoSuchPort(
                "0".into(),
                "none; pass --vdev=... or a PCI allow-list in --dpdk-args".into(),
            )
        })?,
    };
    let mut port = Port::open(&eal, id)?;
    let info = port.info().clone();
    let mac = cfg.local_mac.unwrap_or(info.mac);
    if mac == [0; 6] || mac[0] & 1 != 0 {
        tracing::warn!(mac = %MacAddr(mac), "the port has no unicast MAC; set --local-mac");
    }
    let queues = cfg.engines;
    let mut pc = PortConfig::new(queues);
    pc.mtu = cfg.mtu;
    pc.promiscuous = mac != info.mac;
    // Room for the largest frame in one segment.
    let mtu_hint = usize::from(cfg.mtu.unwrap_or(1500));
    let data_room = u16::try_from(usize::from(HEADROOM) + mtu_hint + 14 + 4)
        .unwrap_or(u16::MAX)
        .max(DEFAULT_BUF_SIZE);
    // Per queue: a full RX ring, a full TX ring, and bursts in flight. net_af_xdp also parks
    // AF_XDP_FILL_MBUFS of the pool in each queue's UMEM fill ring for the kernel to receive
    // into, and needs the pool packed (see Mempool::new_packed).
    let af_xdp = info.driver == "net_af_xdp";
    let per_queue = 2 * 1024 + 4 * BURST as u32 + if af_xdp { AF_XDP_FILL_MBUFS } else { 0 };
    let count = (u32::from(queues) * per_queue).max(4096) - 1;
    let pool = if af_xdp {
        Mempool::new_packed(&eal, None, count, 256, data_room)?
    } else {
        Mempool::new(&eal, None, count, 256, data_room)?
    };
    let layout = pool.layout();
    tracing::debug!(
        objects = layout.objects,
        stride = layout.stride,
        span = layout.span,
        chunks = layout.chunks,
        packed = layout.is_packed(),
        "mbuf pool layout"
    );
    let setup = port.configure(&pc, &pool)?;
    port.start()?;
    let rss_table = match port.rss_config() {
        Ok(Some(rss)) if setup.rss => {
            let table = rss.udp_table(setup.queues);
            tracing::info!(
                key_len = rss.key.len(),
                reta_len = rss.reta.len(),
                predictable = table.is_some(),
                "port exposes its RSS key and table{}",
                if table.is_some() {
                    ": engines choose UDP ports deterministically"
                } else {
                    " but UDP ports are not hashed onto our queues: RSS--"
                }
            );
            table
        }
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("RSS configuration unavailable: {e}");
            None
        }
    };
    let tx_offload = setup.checksum_offloads.tx_ipv4 && setup.checksum_offloads.tx_udp;
    let mut net = NetConfig::new(MacAddr(mac), cfg.local_ip, cfg.udp_ports);
    net.mtu = usize::from(setup.mtu);
    tracing::info!(
        port = %info.name,
        driver = %info.driver,
        mac = %MacAddr(mac),
        mtu = setup.mtu,
        queues = setup.queues,
        rss = setup.rss,
        tx_checksum_offload = tx_offload,
        "DPDK port started"
    );
    let engine_payload = usize::from(cfg.engine_config(0).max_udp_payload);
    if engine_payload > net.max_payload() {
        tracing::warn!(
            engine_payload,
            port_payload = net.max_payload(),
            "engines send datagrams larger than the port's MTU allows; set --mtu"
        );
    }
    let neighbours = Arc::new(SharedNeighbours::new(net.arp.max_entries, net.arp.timeout));
    let out = port
        .take_queues()?
        .into_iter()
        .map(|(rx, tx)| {
            let dp = DpdkDatapath::new(
                rx,
                tx,
                pool.clone(),
                net.clone(),
                tx_offload,
                neighbours.clone(),
            );
            Box::new(match &rss_table {
                Some(t) => dp.with_rss_table(t.clone()),
                None => dp,
            }) as Box<dyn Datapath>
        })
        .collect();
    // The queues keep the port open; it is stopped and closed when the last one goes.
    drop(port);
    Ok(out)
}
