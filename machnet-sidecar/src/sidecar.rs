//! Starting and stopping a whole sidecar: engines (one thread each, with their datapaths) and
//! the control server.

use std::path::Path;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{DatapathKind, LogFormat, SidecarConfig};
use crate::control::{ControlServer, ControlStartError};
use crate::datapath::kernel::{
    interface_max_datagram, probe_pool, KernelUdp, KernelUdpError, KernelUdpOptions,
};
use crate::datapath::lossy::Lossy;
use crate::datapath::Datapath;
use crate::engine::local::LocalHub;
use crate::engine::{EngineClient, EngineHandle, EngineParams, Notifier, SpawnError};
use crate::metrics::{MetricsServer, MetricsStartError};
use crate::stats::EngineReport;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// DPDK was requested but this build has none.
    #[error(
        "this build of machnet has no DPDK support (rebuild with `--features dpdk`); \
         use --datapath kernel-udp"
    )]
    NoDpdk,
    /// The DPDK datapath could not be set up.
    #[cfg(feature = "dpdk")]
    #[error("DPDK: {0}")]
    Dpdk(#[from] crate::datapath::dpdk::DpdkError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The kernel UDP datapath could not be set up.
    #[error(transparent)]
    KernelUdp(#[from] KernelUdpError),
    /// The number of datapaths given differs from the engine count.
    #[error("{given} datapaths given for {engines} engines")]
    DatapathCount {
        /// Datapaths given.
        given: usize,
        /// Engines configured.
        engines: u16,
    },
    /// An engine could not start.
    #[error("engine {engine}: {source}")]
    Engine {
        /// The engine.
        engine: u16,
        /// The error.
        source: SpawnError,
    },
    /// The control server could not start.
    #[error(transparent)]
    Control(#[from] ControlStartError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] MetricsStartError),
    /// The notice queue could not be created.
    #[error("setup: {0}")]
    Io(#[from] std::io::Error),
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    cfg: Arc<SidecarConfig>,
    engines: Vec<EngineHandle>,
    control: Option<ControlServer>,
    metrics: Option<MetricsServer>,
}

/// Largest datagram of the kernel-UDP datapath: `--mtu` less the IPv4 and UDP headers, else
/// what the interface holding the local address carries (65,507 bytes on loopback), else a
/// 1500-byte MTU's 1,472.
pub(crate) fn kernel_max_datagram(cfg: &SidecarConfig) -> usize {
    match cfg.mtu {
        Some(mtu) => usize::from(mtu.saturating_sub(28)),
        None => interface_max_datagram(cfg.local_ip)
            .unwrap_or(usize::from(machnet_core::wire::DEFAULT_MAX_DATAGRAM)),
    }
}

/// Builds the configured kernel datapaths (wrapped in loss injection if configured).
pub fn kernel_datapaths(cfg: &SidecarConfig) -> Result<Vec<Box<dyn Datapath>>, StartError> {
    match cfg.datapath {
        DatapathKind::Dpdk => return Err(StartError::NoDpdk),
        DatapathKind::KernelUdp => {}
    }
    probe_pool(cfg.local_ip, cfg.udp_ports)?;
    let max_datagram = kernel_max_datagram(cfg);
    if let Some(iface) = interface_max_datagram(cfg.local_ip).filter(|&i| i < max_datagram) {
        // Sockets set don't-fragment: larger datagrams would fail to send (counted, lost).
        tracing::warn!(
            max_datagram,
            interface_max_datagram = iface,
            "--mtu is larger than the MTU of the interface holding --local-ip"
        );
    }
    let opts = KernelUdpOptions {
        max_datagram,
        gso: cfg.udp_offload.gso(),
        gro: cfg.udp_offload.gro(),
    };
    let mut out: Vec<Box<dyn Datapath>> = Vec::new();
    for _ in 0..cfg.engines {
        let dp = KernelUdp::with_options(cfg.local_ip, cfg.udp_ports, opts)?;
        if out.is_empty() {
            tracing::info!(
                max_datagram = dp.max_datagram(),
                gso_segments = dp.gso_segments(),
                gro = dp.gro(),
                "kernel UDP datapath"
            );
        }
        out.push(Box::new(dp));
    }
    Ok(out)
}

impl Sidecar {
    /// Starts a sidecar with the configured datapath.
    pub fn start(cfg: SidecarConfig) -> Result<Sidecar, StartError> {
        cfg.validate()?;
        let dps = match cfg.datapath {
            #[cfg(feature = "dpdk")]
            DatapathKind::Dpdk => crate::datapath::dpdk::dpdk_datapaths(&cfg)?,
            _ => kernel_datapaths(&cfg)?,
        };
        Self::start_with_datapaths(cfg, dps)
    }

    /// Starts a sidecar on the given datapaths (one per engine, in engine order), e.g. the
    /// in-memory datapath of tests. Loss injection (`test_loss`) is applied on top.
    pub fn start_with_datapaths(
        cfg: SidecarConfig,
        datapaths: Vec<Box<dyn Datapath>>,
    ) -> Result<Sidecar, StartError> {
        cfg.validate()?;
        if datapaths.len() != usize::from(cfg.engines) {
            return Err(StartError::DatapathCount {
                given: datapaths.len(),
                engines: cfg.engines,
            });
        }
        if let Some(l) = cfg.test_loss {
            tracing::warn!(
                drop_rate = l.drop_rate,
                seed = l.seed,
                "TEST MODE: dropping sent datagrams at random"
            );
        }
        let cfg = Arc::new(cfg);
        let (notifier, notices, notice_wake) = Notifier::new()?;
        let clock = Clock::new();
        let local = if cfg.same_host_flows {
            let e = cfg.engine_config(0);
            Some(Arc::new(LocalHub::new(
                cfg.engines,
                cfg.local_ip,
                e.ephemeral_ports,
                e.send_buffer.max(e.max_message_len as usize),
                cfg.memory_budget,
            )?))
        } else {
            None
        };
        let mut engines = Vec::new();
        for (i, dp) in datapaths.into_iter().enumerate() {
            let id = i as u16;
            let dp: Box<dyn Datapath> = match cfg.test_loss {
                Some(l) => Box::new(Lossy::new(
                    dp,
                    l.drop_rate,
                    l.seed.wrapping_add(u64::from(id)),
                )),
                None => dp,
            };
            let mut core = cfg.engine_config(id);
            if cfg.mtu.is_none() {
                // Without --mtu, engines send datagrams as large as their datapath carries
                // (each flow then uses the smaller of its two ends' limits).
                core.max_udp_payload = u16::try_from(dp.max_datagram())
                    .unwrap_or(u16::MAX)
                    .clamp(machnet_core::wire::MIN_DATAGRAM as u16, 65_507);
            }
            let params = EngineParams {
                core,
                seed: crate::random_seed(),
                idle_mode: cfg.idle_mode,
                busy_poll: cfg.busy_poll,
                stats_interval: cfg.stats_interval,
                shutdown_linger: cfg.shutdown_linger,
                clock,
                local: local.clone(),
            };
            let h = EngineHandle::spawn(params, dp, notifier.clone())
                .map_err(|source| StartError::Engine { engine: id, source })?;
            engines.push(h);
        }
        let clients: Vec<EngineClient> = engines.iter().map(|e| e.client().clone()).collect();
        let metrics = match cfg.metrics_addr {
            Some(addr) => Some(MetricsServer::spawn(addr, clients.clone())?),
            None => None,
        };
        let control = ControlServer::spawn(cfg.clone(), clients, notices, notice_wake)?;
        tracing::info!(
            local_ip = %cfg.local_ip,
            engines = cfg.engines,
            udp_ports = format!("{}..{}", cfg.udp_ports.base, u32::from(cfg.udp_ports.base) + u32::from(cfg.udp_ports.count)),
            max_message_len = cfg.max_message_len,
            "machnet sidecar running"
        );
        match &cfg.encryption {
            // The public key only: peers need it for their allow-lists.
            Some(enc) => tracing::info!(
                public_key = %crate::keys::encode_key(&enc.public_key()),
                peers = enc.peers().len(),
                "encryption on: flows to and from other hosts are encrypted, only with the listed peers"
            ),
            None => tracing::info!("encryption off: flows to other hosts are plaintext"),
        }
        Ok(Sidecar {
            cfg,
            engines,
            control: Some(control),
            metrics,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SidecarConfig {
        &self.cfg
    }

    /// The control socket path.
    pub fn control_socket(&self) -> &Path {
        &self.cfg.control_socket
    }

    /// Clients of the engines (for statistics or embedding).
    pub fn engines(&self) -> Vec<EngineClient> {
        self.engines.iter().map(|e| e.client().clone()).collect()
    }

    /// A statistics snapshot of every engine that answers.
    pub fn reports(&self) -> Vec<EngineReport> {
        self.engines
            .iter()
            .filter_map(|e| e.client().report().ok())
            .collect()
    }

    /// The address of the Prometheus endpoint, if it is on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Whether every engine thread is still running.
    pub fn healthy(&self) -> bool {
        self.engines.iter().all(|e| !e.is_finished())
    }

    /// Stops the sidecar: engines detach every channel with `Shutdown`, deliver what the apps
    /// sent within the shutdown linger and abort what is left (peers get RSTs), then the control
    /// server drops its connections and removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut m) = self.metrics.take() {
            m.shutdown();
        }
        // All engines drain at once.
        for e in &self.engines {
            e.request_shutdown();
        }
        for e in &mut self.engines {
            e.shutdown();
        }
        if let Some(mut c) = self.control.take() {
            c.shutdown();
            tracing::info!("machnet sidecar stopped");
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs a `tracing` subscriber writing to stderr with `filter` (RUST_LOG overrides it), as
/// text or as one JSON object per line. Does nothing if one is installed already.
pub fn init_logging(filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let f = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
