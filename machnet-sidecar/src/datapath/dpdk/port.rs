//! Ethernet ports: capabilities, configuration (queues = engines, RSS, MTU, checksum offloads),
//! RSS key and redirection table, and per-queue RX/TX bursts.

use std::ffi::CStr;
use std::sync::Arc;

use dpdk_sys as sys;

use super::flag;

use super::eal::{check, DpdkError, Eal};
use super::mbuf::{Mbuf, Mempool};

/// Checksum offloads of a port (capabilities, or what was enabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChecksumOffloads {
    /// The NIC verifies IPv4 header checksums on receive.
    pub rx_ipv4: bool,
    /// The NIC verifies UDP checksums on receive.
    pub rx_udp: bool,
    /// The NIC fills in IPv4 header checksums on transmit.
    pub tx_ipv4: bool,
    /// The NIC fills in UDP checksums on transmit.
    pub tx_udp: bool,
}

impl ChecksumOffloads {
    fn from_capa(rx: u64, tx: u64) -> Self {
        ChecksumOffloads {
            rx_ipv4: rx & flag(sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM) != 0,
            rx_udp: rx & flag(sys::RTE_ETH_RX_OFFLOAD_UDP_CKSUM) != 0,
            tx_ipv4: tx & flag(sys::RTE_ETH_TX_OFFLOAD_IPV4_CKSUM) != 0,
            tx_udp: tx & flag(sys::RTE_ETH_TX_OFFLOAD_UDP_CKSUM) != 0,
        }
    }

    fn rx_bits(&self) -> u64 {
        let mut b = 0;
        if self.rx_ipv4 {
            b |= flag(sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM);
        }
        if self.rx_udp {
            b |= flag(sys::RTE_ETH_RX_OFFLOAD_UDP_CKSUM);
        }
        b
    }

    fn tx_bits(&self) -> u64 {
        let mut b = 0;
        if self.tx_ipv4 {
            b |= flag(sys::RTE_ETH_TX_OFFLOAD_IPV4_CKSUM);
        }
        if self.tx_udp {
            b |= flag(sys::RTE_ETH_TX_OFFLOAD_UDP_CKSUM);
        }
        b
    }
}

/// Length of a Toeplitz key when the driver does not say (the usual 40 bytes).
const DEFAULT_RSS_KEY_LEN: u8 = 40;

/// What a port can do (`rte_eth_dev_info_get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port id.
    pub id: u16,
    /// Port name (e.g. "net_ring0").
    pub name: String,
    /// Driver name (e.g. "net_ring").
    pub driver: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Most RX queues.
    pub max_rx_queues: u16,
    /// Most TX queues.
    pub max_tx_queues: u16,
    /// Smallest and largest MTU.
    pub mtu_range: (u16, u16),
    /// Checksum offloads the port supports.
    pub checksum_offloads: ChecksumOffloads,
    /// The port can deliver the RSS hash in received mbufs.
    pub rss_hash_offload: bool,
    /// RSS hash functions supported (`RTE_ETH_RSS_*`); 0: no RSS.
    pub rss_flow_types: u64,
    /// Size of the RSS redirection table (0: not exposed).
    pub reta_size: u16,
    /// Size of the RSS hash key in bytes (0: not reported; some drivers still expose a 40-byte
    /// key through [`Port::rss_config`]).
    pub hash_key_size: u8,
}

impl PortInfo {
    /// Whether the port spreads IPv4/UDP over queues with RSS.
    pub fn supports_rss(&self) -> bool {
        self.rss_flow_types & rss_hash_functions() != 0
    }
}

/// The RSS hash functions we ask for: IPv4 and UDP over IPv4 (4-tuple).
fn rss_hash_functions() -> u64 {
    flag(sys::RTE_ETH_RSS_IPV4)
        | flag(sys::RTE_ETH_RSS_NONFRAG_IPV4_UDP)
        | flag(sys::RTE_ETH_RSS_FRAG_IPV4)
        | flag(sys::RTE_ETH_RSS_NONFRAG_IPV4_OTHER)
}

/// How to configure a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// RX/TX queue pairs (one per engine).
    pub queues: u16,
    /// RX descriptors per queue (adjusted to the port's limits).
    pub rx_descriptors: u16,
    /// TX descriptors per queue (adjusted to the port's limits).
    pub tx_descriptors: u16,
    /// Spread received packets over the queues with RSS when the port supports it.
    pub rss: bool,
    /// MTU to set (`None`: the port's default).
    pub mtu: Option<u16>,
    /// Enable whichever IPv4/UDP checksum offloads the port supports.
    pub checksum_offloads: bool,
    /// Receive every frame, not only those to our MAC.
    pub promiscuous: bool,
}

impl PortConfig {
    /// `queues` queue pairs with 256 descriptors each, RSS and checksum offloads where
    /// supported, default MTU, not promiscuous.
    pub fn new(queues: u16) -> Self {
        PortConfig {
            queues,
            rx_descriptors: 256,
            tx_descriptors: 256,
            rss: true,
            mtu: None,
            checksum_offloads: true,
            promiscuous: false,
        }
    }
}

/// What [`Port::configure`] ended up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSetup {
    /// Queue pairs.
    pub queues: u16,
    /// RX and TX descriptors per queue after adjustment.
    pub descriptors: (u16, u16),
    /// RSS is on.
    pub rss: bool,
    /// Checksum offloads enabled.
    pub checksum_offloads: ChecksumOffloads,
    /// The MTU in effect.
    pub mtu: u16,
}

/// The RSS hash key and redirection table of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssConfig {
    /// Toeplitz key.
    pub key: Vec<u8>,
    /// Redirection table: hash % len → queue.
    pub reta: Vec<u16>,
    /// Hash functions on (`RTE_ETH_RSS_*`).
    pub hash_functions: u64,
}

impl RssConfig {
    /// As a `machnet_core` RSS table (for a `ToeplitzOracle`).
    pub fn to_rss_table(&self) -> machnet_core::rss::RssTable {
        machnet_core::rss::RssTable {
            key: self.key.clone(),
            reta: self.reta.clone(),
        }
    }

    /// The table engines may trust to predict where a UDP datagram lands (PROTOCOL.md §5.4),
    /// or `None` when the port's RSS cannot be predicted this way: UDP ports not hashed
    /// (`RTE_ETH_RSS_NONFRAG_IPV4_UDP` off), an empty table, a key too short for the 12-byte
    /// IPv4/UDP input, or a table pointing at queues beyond `queues` (one per engine).
    pub fn udp_table(&self, queues: u16) -> Option<machnet_core::rss::RssTable> {
        let hashes_udp_ports = self.hash_functions & flag(sys::RTE_ETH_RSS_NONFRAG_IPV4_UDP) != 0;
        // Toeplitz needs 4 key bytes beyond the input length.
        let key_ok = self.key.len() >= 16;
        let reta_ok = !self.reta.is_empty() && self.reta.iter().all(|&q| q < queues);
        (hashes_udp_ports && key_ok && reta_ok).then(|| self.to_rss_table())
    }
}

/// Port counters (`rte_eth_stats_get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets dropped by the NIC for lack of RX descriptors.
    pub rx_missed: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_no_mbuf: u64,
}

/// Shared by a port and its queues: stops and closes the port when the last one goes.
#[derive(Debug)]
struct PortShared {
    id: u16,
    started: std::sync::atomic::AtomicBool,
    // Held so RX queues' pool and EAL outlive the port. Dropped after the port is closed
    // (fields drop after Drop::drop).
    _pool: Option<Mempool>,
    _eal: Eal,
}

impl PortShared {
    fn stop(&self) -> Result<(), DpdkError> {
        if self
            .started
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            // SAFETY: valid port id; no queue handle exists or is in use (&self via the last Arc,
            // or Port::stop which requires the queues to be gone).
            check("rte_eth_dev_stop", unsafe {
                sys::rte_eth_dev_stop(self.id)
            })?;
        }
        Ok(())
    }
}

impl Drop for PortShared {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("port {}: {e}", self.id);
        }
        // SAFETY: the port is stopped and nothing refers to it any more (we are the last Arc).
        let ret = unsafe { sys::rte_eth_dev_close(self.id) };
        if ret < 0 {
            tracing::warn!(
                "port {}: {}",
                self.id,
                DpdkError::call("rte_eth_dev_close", ret)
            );
        }
    }
}

/// An Ethernet port. Stopped and closed (`rte_eth_dev_close`) when it and all its queues are
/// dropped; a closed port (a vdev in particular) is released and cannot be opened again, so keep
/// the `Port` for the life of the datapath.
#[derive(Debug)]
pub struct Port {
    info: PortInfo,
    shared: Arc<PortShared>,
    setup: Option<PortSetup>,
    queues_taken: bool,
}

impl Port {
    /// Opens the port with this id (see [`Eal::find_port`]).
    pub fn open(eal: &Eal, id: u16) -> Result<Port, DpdkError> {
        // SAFETY: EAL is initialised; any id may be asked about.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(DpdkError::NoSuchPort(
                id.to_string(),
                format!("{:?}", eal.port_ids()),
            ));
        }
        let info = query_info(eal, id)?;
        Ok(Port {
            info,
            shared: Arc::new(PortShared {
                id,
                started: false.into(),
                _pool: None,
                _eal: eal.clone(),
            }),
            setup: None,
            queues_taken: false,
        })
    }

    /// Port id.
    pub fn id(&self) -> u16 {
        self.shared.id
    }

    /// Capabilities.
    pub fn info(&self) -> &PortInfo {
        &self.info
    }

    /// The configuration in effect, once configured.
    pub fn setup(&self) -> Option<&PortSetup> {
        self.setup.as_ref()
    }

    /// Configures `cfg.queues` RX/TX queue pairs receiving into `pool`, RSS (if asked for and
    /// supported, with a round-robin redirection table), checksum offloads and MTU. Must be
    /// called before [`Port::start`] and before the queues are taken.
    pub fn configure(&mut self, cfg: &PortConfig, pool: &Mempool) -> Result<PortSetup, DpdkError> {
        if self.queues_taken
            || self
                .shared
                .started
                .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(DpdkError::InvalidArgument(
                "port already started; configure before start".into(),
            ));
        }
        let info = &self.info;
        let id = self.id();
        if cfg.queues == 0 || cfg.queues > info.max_rx_queues || cfg.queues > info.max_tx_queues {
            return Err(DpdkError::Unsupported(format!(
                "{} queues (port {} has at most {} RX / {} TX)",
                cfg.queues, info.name, info.max_rx_queues, info.max_tx_queues
            )));
        }
        if let Some(mtu) = cfg.mtu {
            if mtu < info.mtu_range.0 || mtu > info.mtu_range.1 {
                return Err(DpdkError::Unsupported(format!(
                    "MTU {mtu} outside {}..={} of port {}",
                    info.mtu_range.0, info.mtu_range.1, info.name
                )));
            }
        }
        let rss = cfg.rss && cfg.queues > 1 && info.supports_rss();
        let offloads = if cfg.checksum_offloads {
            info.checksum_offloads
        } else {
            ChecksumOffloads::default()
        };

        // SAFETY: rte_eth_conf is a plain C struct for which all-zero is the documented default.
        let mut conf: sys::rte_eth_conf = unsafe { std::mem::zeroed() };
        conf.rxmode.offloads = offloads.rx_bits();
        conf.txmode.offloads = offloads.tx_bits();
        if let Some(mtu) = cfg.mtu {
            conf.rxmode.mtu = u32::from(mtu);
        }
        if rss {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hash_functions() & info.rss_flow_types;
            if info.rss_hash_offload {
                conf.rxmode.offloads |= flag(sys::RTE_ETH_RX_OFFLOAD_RSS_HASH);
            }
        }
        // SAFETY: valid port, stopped; conf is fully initialised.
        check("rte_eth_dev_configure", unsafe {
            sys::rte_eth_dev_configure(id, cfg.queues, cfg.queues, &conf)
        })?;
        let (mut nrx, mut ntx) = (cfg.rx_descriptors, cfg.tx_descriptors);
        // SAFETY: valid port; nrx/ntx are valid in/out pointers.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut nrx, &mut ntx)
        })?;
        // SAFETY: valid port id.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let socket = u32::try_from(socket).unwrap_or(sys::SOCKET_ID_ANY as u32);
        for q in 0..cfg.queues {
            // SAFETY: valid configured port and queue index; NULL rx_conf means the driver's
            // defaults; the pool outlives the port (PortShared holds a clone).
            check("rte_eth_rx_queue_setup", unsafe {
                sys::rte_eth_rx_queue_setup(id, q, nrx, socket, std::ptr::null(), pool.as_ptr())
            })?;
            // SAFETY: as above; NULL tx_conf means the driver's defaults.
            check("rte_eth_tx_queue_setup", unsafe {
                sys::rte_eth_tx_queue_setup(id, q, ntx, socket, std::ptr::null())
            })?;
        }
        if cfg.promiscuous {
            // SAFETY: valid port.
            check("rte_eth_promiscuous_enable", unsafe {
                sys::rte_eth_promiscuous_enable(id)
            })?;
        }
        let mut mtu = 0u16;
        // SAFETY: valid port; mtu is a valid out-pointer.
        check("rte_eth_dev_get_mtu", unsafe {
            sys::rte_eth_dev_get_mtu(id, &mut mtu)
        })?;
        // Remember the pool (the Arc is not shared yet: no queues were handed out).
        match Arc::get_mut(&mut self.shared) {
            Some(s) => s._pool = Some(pool.clone()),
            None => {
                return Err(DpdkError::InvalidArgument(
                    "port queues are still in use".into(),
                ))
            }
        }
        let setup = PortSetup {
            queues: cfg.queues,
            descriptors: (nrx, ntx),
            rss,
            checksum_offloads: offloads,
            mtu,
        };
        self.setup = Some(setup.clone());
        Ok(setup)
    }

    /// Starts the port and, when RSS is on and the table is exposed, programs a round-robin
    /// redirection table over the queues (best effort).
    pub fn start(&mut self) -> Result<(), DpdkError> {
        let Some(setup) = &self.setup else {
            return Err(DpdkError::InvalidArgument(
                "configure the port before starting it".into(),
            ));
        };
        let id = self.id();
        if self
            .shared
            .started
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        // SAFETY: valid, configured port with all queues set up.
        check("rte_eth_dev_start", unsafe { sys::rte_eth_dev_start(id) })?;
        self.shared
            .started
            .store(true, std::sync::atomic::Ordering::Release);
        if setup.rss && self.info.reta_size > 0 {
            let queues = setup.queues;
            let entries: Vec<u16> = (0..self.info.reta_size).map(|i| i % queues).collect();
            if let Err(e) = self.set_reta(&entries) {
                tracing::debug!("port {}: cannot program the RSS table: {e}", self.info.name);
            }
        }
        Ok(())
    }

    /// Hands out the queue pairs (once), index = engine. The port must be started.
    pub fn take_queues(&mut self) -> Result<Vec<(RxQueue, TxQueue)>, DpdkError> {
        let Some(setup) = &self.setup else {
            return Err(DpdkError::InvalidArgument("port not configured".into()));
        };
        if self.queues_taken {
            return Err(DpdkError::InvalidArgument("queues already taken".into()));
        }
        self.queues_taken = true;
        Ok((0..setup.queues)
            .map(|q| {
                (
                    RxQueue {
                        port: self.shared.clone(),
                        queue: q,
                    },
                    TxQueue {
                        port: self.shared.clone(),
                        queue: q,
                    },
                )
            })
            .collect())
    }

    /// The port's RSS key and redirection table, when it exposes them (`None` otherwise).
    pub fn rss_config(&self) -> Result<Option<RssConfig>, DpdkError> {
        let id = self.id();
        if self.info.hash_key_size == 0 && self.info.reta_size == 0 {
            return Ok(None);
        }
        // Room for any key size a driver may write (they copy their own key length).
        let mut key = vec![0u8; 256];
        // SAFETY: all-zero is a valid rte_eth_rss_conf.
        let mut conf: sys::rte_eth_rss_conf = unsafe { std::mem::zeroed() };
        conf.rss_key = key.as_mut_ptr();
        conf.rss_key_len = self.info.hash_key_size;
        // SAFETY: valid port; rss_key points at 256 writable bytes (≥ any key, at most 255).
        let ret = unsafe { sys::rte_eth_dev_rss_hash_conf_get(id, &mut conf) };
        if ret == -95 {
            // -ENOTSUP
            return Ok(None);
        }
        check("rte_eth_dev_rss_hash_conf_get", ret)?;
        // Some drivers (net_null) report no key size but copy a standard 40-byte Toeplitz key.
        let key_len = if conf.rss_key_len > 0 {
            conf.rss_key_len
        } else if self.info.hash_key_size > 0 {
            self.info.hash_key_size
        } else {
            DEFAULT_RSS_KEY_LEN
        };
        key.truncate(usize::from(key_len));
        let reta = self.reta()?;
        Ok(Some(RssConfig {
            key,
            reta: reta.unwrap_or_default(),
            hash_functions: conf.rss_hf,
        }))
    }

    /// The redirection table (`None`: not exposed).
    pub fn reta(&self) -> Result<Option<Vec<u16>>, DpdkError> {
        let size = self.info.reta_size;
        if size == 0 {
            return Ok(None);
        }
        let group = sys::RTE_ETH_RETA_GROUP_SIZE as u16;
        let groups = usize::from(size.div_ceil(group));
        // SAFETY: all-zero is a valid rte_eth_rss_reta_entry64.
        let mut entries: Vec<sys::rte_eth_rss_reta_entry64> =
            (0..groups).map(|_| unsafe { std::mem::zeroed() }).collect();
        for e in &mut entries {
            e.mask = u64::MAX;
        }
        // SAFETY: valid port; `entries` holds ceil(size / 64) groups as the API requires.
        let ret = unsafe { sys::rte_eth_dev_rss_reta_query(self.id(), entries.as_mut_ptr(), size) };
        if ret == -95 {
            return Ok(None);
        }
        check("rte_eth_dev_rss_reta_query", ret)?;
        Ok(Some(
            (0..usize::from(size))
                .map(|i| entries[i / usize::from(group)].reta[i % usize::from(group)])
                .collect(),
        ))
    }

    /// Programs the redirection table (`entries.len()` must be the port's table size).
    pub fn set_reta(&self, entries: &[u16]) -> Result<(), DpdkError> {
        let size = self.info.reta_size;
        if entries.len() != usize::from(size) || size == 0 {
            return Err(DpdkError::InvalidArgument(format!(
                "redirection table of {} entries for a port with {size}",
                entries.len()
            )));
        }
        let group = usize::from(sys::RTE_ETH_RETA_GROUP_SIZE as u16);
        // SAFETY: all-zero is a valid rte_eth_rss_reta_entry64.
        let mut conf: Vec<sys::rte_eth_rss_reta_entry64> = (0..entries.len().div_ceil(group))
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (i, &q) in entries.iter().enumerate() {
            conf[i / group].mask |= 1 << (i % group);
            conf[i / group].reta[i % group] = q;
        }
        // SAFETY: valid port; conf holds ceil(size / 64) groups.
        check("rte_eth_dev_rss_reta_update", unsafe {
            sys::rte_eth_dev_rss_reta_update(self.id(), conf.as_mut_ptr(), size)
        })?;
        Ok(())
    }

    /// Port counters.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        // SAFETY: all-zero is a valid rte_eth_stats.
        let mut s: sys::rte_eth_stats = unsafe { std::mem::zeroed() };
        // SAFETY: valid port; s is a valid out-pointer.
        check("rte_eth_stats_get", unsafe {
            sys::rte_eth_stats_get(self.id(), &mut s)
        })?;
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
        })
    }

    /// Stops the port (it can be started again). Fails while queues are out.
    pub fn stop(&mut self) -> Result<(), DpdkError> {
        if Arc::strong_count(&self.shared) > 1 {
            return Err(DpdkError::InvalidArgument(
                "drop the port's queues before stopping it".into(),
            ));
        }
        self.shared.stop()
    }

    /// Stops and closes the port now (dropping it does the same, logging errors); the queues
    /// must have been dropped.
    pub fn close(mut self) -> Result<(), DpdkError> {
        self.stop()?;
        Ok(())
        // PortShared::drop closes it.
    }
}

fn query_info(eal: &Eal, id: u16) -> Result<PortInfo, DpdkError> {
    // SAFETY: all-zero is a valid rte_eth_dev_info.
    let mut di: sys::rte_eth_dev_info = unsafe { std::mem::zeroed() };
    // SAFETY: valid port; di is a valid out-pointer.
    check("rte_eth_dev_info_get", unsafe {
        sys::rte_eth_dev_info_get(id, &mut di)
    })?;
    let driver = if di.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: driver_name points at the driver's static NUL-terminated name.
        unsafe { CStr::from_ptr(di.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: all-zero is a valid rte_ether_addr.
    let mut mac: sys::rte_ether_addr = unsafe { std::mem::zeroed() };
    // SAFETY: valid port; mac is a valid out-pointer.
    check("rte_eth_macaddr_get", unsafe {
        sys::rte_eth_macaddr_get(id, &mut mac)
    })?;
    Ok(PortInfo {
        id,
        name: eal.port_name(id)?,
        driver,
        mac: mac.addr_bytes,
        max_rx_queues: di.max_rx_queues,
        max_tx_queues: di.max_tx_queues,
        mtu_range: (di.min_mtu, di.max_mtu),
        checksum_offloads: ChecksumOffloads::from_capa(di.rx_offload_capa, di.tx_offload_capa),
        rss_hash_offload: di.rx_offload_capa & flag(sys::RTE_ETH_RX_OFFLOAD_RSS_HASH) != 0,
        rss_flow_types: di.flow_type_rss_offloads,
        reta_size: di.reta_size,
        hash_key_size: di.hash_key_size,
    })
}

/// The receive side of one queue (one engine). Not shareable between threads (`!Sync`); send it
/// to the engine thread that polls it.
#[derive(Debug)]
pub struct RxQueue {
    port: Arc<PortShared>,
    queue: u16,
}

/// The transmit side of one queue (one engine).
#[derive(Debug)]
pub struct TxQueue {
    port: Arc<PortShared>,
    queue: u16,
}

// Each queue handle is unique (take_queues hands it out once) and DPDK allows one thread at a
// time per queue: bursts take &mut self, so only the owner (e.g. one engine thread) polls it.
impl RxQueue {
    /// The queue index (= engine).
    pub fn index(&self) -> u16 {
        self.queue
    }

    /// Receives up to `max` packets, appending them to `out`; returns how many.
    pub fn burst(&mut self, out: &mut Vec<Mbuf>, max: u16) -> usize {
        out.reserve(usize::from(max));
        let len = out.len();
        // SAFETY: the spare capacity holds at least `max` slots; Mbuf is repr(transparent) over
        // a non-null mbuf pointer, and the driver writes exactly `n` valid mbuf pointers whose
        // ownership passes to us. The queue is set up and the port started or stopped (rx_burst
        // on a stopped port returns 0). &mut self: one caller per queue.
        unsafe {
            let slots = out.as_mut_ptr().add(len).cast::<*mut sys::rte_mbuf>();
            let n = sys::rte_eth_rx_burst(self.port.id, self.queue, slots, max);
            out.set_len(len + usize::from(n));
            usize::from(n)
        }
    }
}

impl TxQueue {
    /// The queue index (= engine).
    pub fn index(&self) -> u16 {
        self.queue
    }

    /// Sends packets from the front of `pkts`; the sent ones are removed (the NIC frees them),
    /// the rest stay for a retry. Returns how many were sent.
    pub fn burst(&mut self, pkts: &mut Vec<Mbuf>) -> usize {
        let count = u16::try_from(pkts.len()).unwrap_or(u16::MAX);
        // SAFETY: pkts holds `count` owned valid mbufs (Mbuf is repr(transparent) over the
        // pointer); the driver takes ownership of the first `n`, which we then forget.
        let n = unsafe {
            sys::rte_eth_tx_burst(
                self.port.id,
                self.queue,
                pkts.as_mut_ptr().cast::<*mut sys::rte_mbuf>(),
                count,
            )
        };
        let n = usize::from(n);
        pkts.drain(..n).for_each(std::mem::forget);
        n
    }
}
