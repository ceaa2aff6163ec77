//! DPDK packet I/O (feature `dpdk`): a safe layer over `dpdk-sys`.
//!
//! - [`Eal`]: `rte_eal_init` once per process, `rte_eal_cleanup` when the last handle goes.
//! - [`Port`]: discovery by name or index, capabilities ([`PortInfo`]: IPv4/UDP checksum
//!   offloads, RSS), [`Port::configure`] (one RX/TX queue pair per engine, 256 descriptors, RSS
//!   when supported, MTU), RSS key and redirection table ([`Port::rss_config`], feeding a
//!   `machnet_core::rss::ToeplitzOracle` through [`RssConfig::to_rss_table`]), stop/close.
//! - [`Mempool`] and [`Mbuf`] (owned packet buffer, freed on drop); [`RxQueue::burst`] and
//!   [`TxQueue::burst`] move mbufs without copying.
//!
//! # Design: `DpdkDatapath`
//!
//! A first slice is implemented in `datapath.rs` ([`DpdkDatapath`], [`dpdk_datapaths`]); its
//! module docs list what differs from the design below (per-engine ARP cache, no RSS oracle
//! yet, software RX checksums).
//!
//! The sidecar's [`Datapath`](super::Datapath) speaks UDP datagrams; a DPDK port speaks Ethernet
//! frames. `DpdkDatapath` (one per engine) will join this layer with `crate::netstack`
//! (Ethernet/ARP/IPv4/UDP framing):
//!
//! - **Queues = engines.** The port is configured with N queue pairs for N engines; engine `i`
//!   owns `RxQueue i` and `TxQueue i` (moved into its thread; bursts need `&mut`, no locks).
//!   With RSS on, the NIC places each 4-tuple on a queue; where the port exposes its key and
//!   table (`rss_config`), the sidecar builds a `ToeplitzOracle` so the core can pick source
//!   ports that land on the right engine instead of spraying (RSS--). Ports without RSS
//!   (net_ring, af_packet with one qpair) run one engine, or rely on spraying.
//! - **Receive.** `recv` bursts up to `max` mbufs, lets the netstack parse each frame (our MAC or
//!   broadcast, IPv4 to our address, UDP to a port of our pool; IPv4 checksum skipped when the
//!   mbuf says `Good`), hands the UDP payload slice to the sink straight from the mbuf (no copy)
//!   and drops the mbuf afterwards. Anything else is counted and freed.
//! - **ARP.** Every engine may receive ARP (RSS hashes non-IP frames to queue 0 on most NICs,
//!   but af_packet/tap spread or duplicate them), so every engine's netstack answers requests for
//!   our address on its own TX queue, and learns replies into a neighbour table shared by all
//!   engines (`Arc<RwLock<..>>`, read-mostly; or per-engine tables filled from a broadcast
//!   channel). A send to an unresolved neighbour queues a few datagrams per destination, emits
//!   an ARP request (rate-limited) and reports `SendError::Full` beyond that, so the transport
//!   retransmits. Static neighbour entries from the config bypass ARP (af_packet flaps the link
//!   and wipes kernel neighbours, so answering ARP ourselves is required either way).
//! - **Send.** `send` allocates an mbuf from the engine's own mempool (one pool per engine, or a
//!   shared one with a per-lcore cache when engines are EAL lcores), writes Ethernet+IPv4+UDP
//!   headers and payload, requests checksum offload when the port enabled it (else computes
//!   them in software), and buffers it; the buffer is flushed with `TxQueue::burst` when it
//!   reaches a batch (32) or at the end of each engine loop iteration, so one datagram per call
//!   still goes out in bursts. Unsent mbufs after a retry are dropped and counted `tx_dropped`.
//! - **Readiness.** DPDK queues have no file descriptor: `readiness_fd` returns `None` and the
//!   engine busy-polls (optionally with `rte_eth_dev_rx_intr_*` later for ports with RX
//!   interrupts).
//! - **Lifecycle.** The sidecar creates the `Eal` (arguments from the config: `--no-pci` plus
//!   `--vdev=net_af_packet0,iface=..,qpairs=N`, or a PCI allow-list on real NICs), the pools
//!   and the port, then moves the queue pairs into the engines; dropping the engines and then
//!   the port stops and closes it, and the last `Eal` handle runs `rte_eal_cleanup`.

mod datapath;
mod eal;
mod mbuf;
mod port;

/// A DPDK flag constant as `u64` (bindgen types them `u32` or `u64` depending on the value).
pub(crate) fn flag<T: Into<u64>>(v: T) -> u64 {
    v.into()
}

pub use datapath::{default_eal_args, dpdk_datapaths, DpdkDatapath, BURST};
pub use eal::{rte_errno, strerror, version, DpdkError, Eal};
pub use mbuf::{ChecksumStatus, Mbuf, Mempool, PoolLayout, DEFAULT_BUF_SIZE, HEADROOM};
pub use port::{
    ChecksumOffloads, Port, PortConfig, PortInfo, PortSetup, PortStats, RssConfig, RxQueue, TxQueue,
};
