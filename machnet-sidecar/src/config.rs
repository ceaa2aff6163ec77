//! Sidecar configuration: command-line flags (clap) over an optional TOML file, validated into a
//! [`SidecarConfig`].
//!
//! Every flag has a key of the same name (with `_` instead of `-`) in the file given by
//! `--config`; a flag given on the command line overrides the file's value. The list flags
//! (`--allow-user`, `--allow-group`, `--peer-key`) replace the file's list when given.
//!
//! The binary's two key subcommands (`machnet keygen`, `machnet pubkey`) are [`Command`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use machnet_core::seal::{Encryption, PeerKey};
use machnet_core::{EngineConfig, PortPool};
use nix::unistd::{Gid, Group, Uid, User};
use serde::Deserialize;

use crate::control::limits::{Caps, ControlLimits};

/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/machnet/machnet.sock";
/// Default first UDP port of the pool.
pub const DEFAULT_UDP_PORT_BASE: u16 = 31580;
/// Default number of UDP ports in the pool.
pub const DEFAULT_UDP_PORT_COUNT: u16 = 16;
/// Default largest message (8 MiB).
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 8 << 20;
/// Largest `--max-message-len` accepted (each channel maps two rings of at least this size).
pub const MAX_MAX_MESSAGE_LEN: u32 = 256 << 20;
/// Default idle time before an engine sleeps, in microseconds.
pub const DEFAULT_BUSY_POLL_US: u64 = 50;
/// Default per-flow send and receive buffers.
pub const DEFAULT_FLOW_BUFFER: usize = 16 << 20;

/// Default `--close-linger`: long enough for a peer on any sane network to take what an
/// exiting app sent, short enough that a silent peer does not hold resources for long.
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(30);
/// Default `--shutdown-linger`: a restart waits at most this long for peers to take what apps
/// sent (well inside systemd's default stop timeout).
pub const DEFAULT_SHUTDOWN_LINGER: Duration = Duration::from_secs(5);

/// Default `--memory-budget`: this fraction of the host's physical memory...
pub const DEFAULT_MEMORY_BUDGET_FRACTION: u64 = 4;
/// ...but at least this much...
pub const DEFAULT_MEMORY_BUDGET_FLOOR: u64 = 256 << 20;
/// ...and at most this much (then raised to one `--max-message-len` per engine if smaller).
pub const DEFAULT_MEMORY_BUDGET_CAP: u64 = 16 << 30;

/// The default `--memory-budget` for a host with `physical` bytes of memory (`None`: unknown,
/// the floor is used): a quarter of it, within [`DEFAULT_MEMORY_BUDGET_FLOOR`] and
/// [`DEFAULT_MEMORY_BUDGET_CAP`].
pub fn default_memory_budget(physical: Option<u64>) -> u64 {
    physical
        .map_or(DEFAULT_MEMORY_BUDGET_FLOOR, |p| {
            p / DEFAULT_MEMORY_BUDGET_FRACTION
        })
        .clamp(DEFAULT_MEMORY_BUDGET_FLOOR, DEFAULT_MEMORY_BUDGET_CAP)
}

/// The host's physical memory in bytes, if the system tells.
pub fn physical_memory() -> Option<u64> {
    use nix::unistd::{sysconf, SysconfVar};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok()??;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()??;
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(page).ok()?)
}

/// Smallest `--mtu` accepted (the IPv4 minimum every host must accept).
pub const MIN_MTU: u16 = 576;
/// Largest `--mtu` accepted on DPDK ports (jumbo frames).
pub const MAX_MTU: u16 = 9216;
/// Largest `--mtu` accepted on the kernel-UDP datapath (a loopback interface's 65,536 bytes
/// carry the largest UDP datagram).
pub const MAX_KERNEL_MTU: u16 = u16::MAX;

/// Parses a MAC address `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Which datapath carries the packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatapathKind {
    /// Kernel UDP sockets with SO_REUSEPORT (unprivileged; the kernel's hash is the RSS).
    KernelUdp,
    /// DPDK (builds with the `dpdk` feature): one RX/TX queue pair of `--dpdk-port` per engine,
    /// with the sidecar's own Ethernet/ARP/IPv4/UDP layer.
    Dpdk,
}

/// What an engine does when it has nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleMode {
    /// Poll forever (lowest latency, one full core per engine; an idle engine yields the CPU
    /// to other runnable threads between polls).
    Busy,
    /// Spin for `--busy-poll-us` after the last work, then sleep in epoll until woken.
    Sleep,
}

/// How log lines are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// One line of text per event (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, other fields, `target`).
    Json,
}

/// Which of the kernel's UDP offloads the kernel-UDP datapath uses (where the kernel has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UdpOffload {
    /// Segmentation (GSO) on send and coalescing (GRO) on receive.
    #[default]
    On,
    /// Neither: one system-call slot per datagram both ways.
    Off,
    /// GSO only.
    GsoOnly,
    /// GRO only.
    GroOnly,
}

impl UdpOffload {
    /// Whether GSO is used.
    pub fn gso(self) -> bool {
        matches!(self, UdpOffload::On | UdpOffload::GsoOnly)
    }
    /// Whether GRO is used.
    pub fn gro(self) -> bool {
        matches!(self, UdpOffload::On | UdpOffload::GroOnly)
    }
}

/// `machnet`: the Machnet sidecar. Serves applications over shared-memory channels and carries
/// their messages over its own reliable transport on UDP.
#[derive(Debug, Default, Parser)]
#[command(
    name = "machnet",
    version,
    // A flag given twice takes the last value (scripts append to a base command line);
    // repeatable lists such as --allow-user still collect every value.
    args_override_self = true,
    // `machnet keygen …` takes no sidecar flags.
    args_conflicts_with_subcommands = true,
    about = "machnet: the Machnet sidecar. Serves applications over shared-memory channels and \
             carries their messages over its own reliable transport on UDP.",
    after_long_help = "Every option can also be set in the --config file (TOML, same names with \
                       `_` for `-`, e.g. `engines = 4`, `allow_user = [\"alice\", \"1001\"]`); \
                       command-line flags override it. Stop with SIGINT or SIGTERM."
)]
pub struct Cli {
    /// A key subcommand instead of running the sidecar.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML file with default values for any of the options below (same names, `_` for `-`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// IPv4 address of this host; the sidecar receives on it and sources packets from it.
    /// [default: 127.0.0.1]
    #[arg(long, value_name = "IPV4")]
    pub local_ip: Option<Ipv4Addr>,

    /// Number of engines (threads, each with its own flows and sockets), 1..=64. [default: 1]
    #[arg(long, value_name = "N")]
    pub engines: Option<u16>,

    /// Packet I/O: `kernel-udp` (SO_REUSEPORT sockets) or `dpdk` (builds with the `dpdk`
    /// feature only). [default: kernel-udp]
    #[arg(long, value_enum, value_name = "KIND")]
    pub datapath: Option<DatapathKind>,

    /// First UDP port of the pool this host receives on (RSS-- sprays over the pool).
    /// [default: 31580]
    #[arg(long, value_name = "PORT")]
    pub udp_port_base: Option<u16>,

    /// Number of UDP ports in the pool. [default: 16]
    #[arg(long, value_name = "N")]
    pub udp_port_count: Option<u16>,

    /// Path of the control socket applications attach to (its directory is created).
    /// [default: /run/machnet/machnet.sock]
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Group that owns the control socket (name or numeric id); members of an allowed group can
    /// then connect. [default: the sidecar's group]
    #[arg(long, value_name = "GROUP")]
    pub control_socket_group: Option<String>,

    /// User allowed to attach (name or numeric uid); repeatable. [default: the sidecar's own
    /// user and root, unless users or groups are given]
    #[arg(long = "allow-user", value_name = "USER")]
    pub allow_user: Vec<String>,

    /// Group whose members may attach (name or numeric gid); repeatable.
    #[arg(long = "allow-group", value_name = "GROUP")]
    pub allow_group: Vec<String>,

    /// Log filter (error, warn, info, debug, trace, or a tracing-subscriber directive such as
    /// `machnet_sidecar=debug`). RUST_LOG overrides it. [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log line format: `text`, or `json` (one JSON object per line, for log collectors).
    /// [default: text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Serve Prometheus metrics over HTTP on this address (`GET /metrics`, unauthenticated:
    /// keep it on loopback or a management network), e.g. 127.0.0.1:9464. [default: off]
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// What idle engines do: `busy` spins, `sleep` spins for --busy-poll-us then sleeps in
    /// epoll until a packet, a request or a timer arrives (with `--datapath dpdk`, which has no
    /// readiness fd, a sleeping engine polls the port only every millisecond).
    /// [default: sleep; busy with --datapath dpdk]
    #[arg(long, value_enum, value_name = "MODE")]
    pub idle_mode: Option<IdleMode>,

    /// In `sleep` mode: microseconds an engine keeps polling after its last work. [default: 50]
    #[arg(long, value_name = "US")]
    pub busy_poll_us: Option<u64>,

    /// Lower bound of the retransmission timeout, microseconds (docs/PROTOCOL.md §6.3). On a VM
    /// whose vCPUs are oversubscribed an engine can be descheduled for longer than the default,
    /// and every such stall then fires timeouts that are spurious (docs/PERFORMANCE.md §23.4);
    /// a higher floor avoids them but slows recovery from real losses. [default: 2000]
    #[arg(long, value_name = "US")]
    pub rto_min_us: Option<u64>,

    /// Largest message in bytes (suffixes K, M, KiB, MiB accepted). Channels are sized so that a
    /// message of this length always fits. [default: 8MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_message_len: Option<u64>,

    /// Bytes a flow may hold sent-but-unacknowledged before the app's sends are held back
    /// (at least --max-message-len). [default: 16MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub flow_send_buffer: Option<u64>,

    /// Bytes of received, undelivered messages a flow may hold before its receive window
    /// closes (back-pressure on the sender). [default: 16MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub flow_recv_buffer: Option<u64>,

    /// Bytes of received data (unread and partial messages, out-of-order packets) all flows
    /// together may hold; split evenly between engines, and within an engine fairly between its
    /// flows. Data beyond it is refused (the sender resends it later). At least one
    /// --max-message-len per engine. [default: a quarter of physical memory, at least 256MiB,
    /// at most 16GiB, raised to one --max-message-len per engine]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub memory_budget: Option<u64>,

    /// Seconds between per-engine statistics log lines; 0 disables them. [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub stats_interval: Option<f64>,

    /// Seconds the sidecar keeps delivering what an app sent after the app exited or detached
    /// a channel (docs/CHANNEL.md §5); flows still open then are aborted. 0: abort at once.
    /// [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub close_linger: Option<f64>,

    /// Seconds a stopping sidecar (SIGTERM, SIGINT) keeps delivering what apps sent before it
    /// aborts the flows still open (docs/CHANNEL.md §5). 0: abort at once. [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_linger: Option<f64>,

    /// DPDK only: EAL arguments, whitespace-separated, e.g. "--no-pci --no-huge -m 256
    /// --no-shconf --file-prefix=m1 --vdev=net_af_packet0,iface=veth0". [default: --no-pci
    /// --no-huge -m 256 --no-shconf --no-telemetry --file-prefix=machnet-<pid>]
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    // The text above is also the `--help` text, so `<pid>` stays unescaped.
    #[allow(rustdoc::invalid_html_tags)]
    pub dpdk_args: Option<String>,

    /// DPDK only: the port (name such as `net_af_packet0`, or index). [default: the first port]
    #[arg(long, value_name = "NAME|INDEX")]
    pub dpdk_port: Option<String>,

    /// DPDK only: MAC address to use (aa:bb:cc:dd:ee:ff; the port turns promiscuous if it
    /// differs from its own). [default: the port's MAC]
    #[arg(long, value_name = "MAC")]
    pub local_mac: Option<String>,

    /// MTU (the IP packet): engines send and accept UDP payloads of up to MTU - 28 bytes, and
    /// each flow uses the smaller of its two ends' limits. [default: the MTU of the interface
    /// holding --local-ip (65,536 on loopback), or of the DPDK port]
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u16>,

    /// Kernel-UDP datapath: UDP segmentation/coalescing offloads to use where the kernel has
    /// them (detected at start; a refused GSO send falls back to single datagrams).
    /// [default: on]
    #[arg(long, value_name = "MODE")]
    pub udp_offload: Option<UdpOffload>,

    /// Carry flows between two channels of this sidecar (a connect to --local-ip on a port a
    /// channel listens on) from ring to ring inside the sidecar, without the transport and
    /// without packets (docs/CHANNEL.md "Same-host flows"). `false`: they go over the datapath
    /// like any flow. [default: true]
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub same_host_flows: Option<bool>,

    /// Control connections one application (process) may hold. [default: 256]
    #[arg(long, value_name = "N")]
    pub max_connections_per_app: Option<usize>,

    /// Channels one application (process) may hold open. [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_channels_per_app: Option<usize>,

    /// Machnet ports one application (process) may listen on. [default: 256]
    #[arg(long, value_name = "N")]
    pub max_ports_per_app: Option<usize>,

    /// Flows (connected or accepted, not yet closed) one application (process) may hold; a
    /// connect beyond it fails with `Exhausted`, an accepted flow beyond it is reset.
    /// [default: 16384]
    #[arg(long, value_name = "N")]
    pub max_flows_per_app: Option<usize>,

    /// Control connections all processes of one user may hold together. [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_connections_per_user: Option<usize>,

    /// Channels all processes of one user may hold together. [default: 8192]
    #[arg(long, value_name = "N")]
    pub max_channels_per_user: Option<usize>,

    /// Listening ports all processes of one user may hold together. [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_ports_per_user: Option<usize>,

    /// Flows all processes of one user may hold together. [default: 65536]
    #[arg(long, value_name = "N")]
    pub max_flows_per_user: Option<usize>,

    /// Control connections served at once, sidecar-wide. [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Connects one channel may have in progress (started, not yet connected or failed); one
    /// more fails at once with `ChannelConnectLimit` (docs/CHANNEL.md §2, "Connect budgets").
    /// Same-host flows do not count. [default: 64]
    #[arg(long, value_name = "N")]
    pub max_connecting_per_channel: Option<usize>,

    /// Connects one application (process) may have in progress on all its channels; one more
    /// fails at once with `AppConnectLimit`. [default: 128]
    #[arg(long, value_name = "N")]
    pub max_connecting_per_app: Option<usize>,

    /// Connects one application (process) may start per second, on average (a token bucket
    /// of --connect-burst-per-app tokens); one more fails at once with `ConnectRateLimit`.
    /// With the SYNs one connect may send, it bounds the SYN rate an app can cause.
    /// [default: 10000]
    #[arg(long, value_name = "PER_SECOND")]
    pub max_connect_rate_per_app: Option<u32>,

    /// Connects one application may start at once after a quiet period (the bucket of
    /// --max-connect-rate-per-app). [default: 128]
    #[arg(long, value_name = "N")]
    pub connect_burst_per_app: Option<u32>,

    /// Seconds a new control connection has to send `hello` before it is closed. [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub control_hello_timeout: Option<f64>,

    /// Seconds after which a control connection that holds no channel and sends nothing is
    /// closed; 0 = never. A connection holding a channel is never idle. [default: 600]
    #[arg(long, value_name = "SECONDS")]
    pub control_idle_timeout: Option<f64>,

    /// Encrypt every flow to and from other hosts (docs/PROTOCOL.md §12): file holding this
    /// sidecar's X25519 private key in base64 (`machnet keygen` writes one). It must be
    /// readable by its owner only. Needs --peer-key or --peer-keys. [default: no encryption]
    #[arg(long, value_name = "PATH")]
    pub encryption_key: Option<PathBuf>,

    /// With --encryption-key: a peer host's address and its public key in base64
    /// (`machnet pubkey` prints it); repeatable. Flows to and from hosts not listed are
    /// refused.
    #[arg(long = "peer-key", value_name = "IP=BASE64PUB")]
    pub peer_key: Vec<String>,

    /// With --encryption-key: file of peers, one `IP BASE64PUB` per line (`#` comments);
    /// adds to --peer-key. Only its owner may write it.
    #[arg(long, value_name = "PATH")]
    pub peer_keys: Option<PathBuf>,

    /// With --encryption-key: encrypted handshakes each engine reads (sealed SYNs) and,
    /// separately, starts (connects) per second. Each costs X25519 operations (~0.1–0.2 ms) on
    /// the engine's core; SYNs beyond it get a stateless retry, connects fail with `Exhausted`
    /// (docs/PROTOCOL.md §12.5). [default: 2000]
    #[arg(long, value_name = "PER_SECOND")]
    pub max_encrypted_handshake_rate: Option<u32>,

    /// TEST ONLY: drop this fraction of sent datagrams at random (0.0..1.0).
    #[arg(long, hide = true, value_name = "P")]
    pub test_drop_rate: Option<f64>,

    /// TEST ONLY: seed of --test-drop-rate (random if absent; logged).
    #[arg(long, hide = true, value_name = "SEED")]
    pub test_seed: Option<u64>,
}

/// The subcommands of `machnet` (instead of running the sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Write a new X25519 private key (base64, mode 0600) for --encryption-key and print its
    /// public key (for the peers' --peer-key). Never overwrites a file.
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Print the public key (base64) of a private key file.
    Pubkey {
        /// The private key file.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Print a running sidecar's statistics (per engine, channel and flow; drops by reason;
    /// memory held), asked for over its control socket (docs/STATS.md).
    Stat {
        /// The sidecar's control socket. [default: the --config file's `control_socket`, else
        /// /run/machnet/machnet.sock]
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
        /// The sidecar's configuration file, to find its control socket.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the versioned JSON document instead of tables.
        #[arg(long)]
        json: bool,
        /// Most flows to list (1..=4096) [default: 256].
        #[arg(long, value_name = "N")]
        max_flows: Option<u32>,
        /// Most channels to list (1..=4096) [default: 256].
        #[arg(long, value_name = "N")]
        max_channels: Option<u32>,
    },
}

/// The configuration file: the same keys as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Cli::local_ip`].
    pub local_ip: Option<Ipv4Addr>,
    /// See [`Cli::engines`].
    pub engines: Option<u16>,
    /// See [`Cli::datapath`].
    pub datapath: Option<DatapathKind>,
    /// See [`Cli::udp_port_base`].
    pub udp_port_base: Option<u16>,
    /// See [`Cli::udp_port_count`].
    pub udp_port_count: Option<u16>,
    /// See [`Cli::control_socket`].
    pub control_socket: Option<PathBuf>,
    /// See [`Cli::control_socket_group`].
    pub control_socket_group: Option<String>,
    /// See [`Cli::allow_user`].
    pub allow_user: Option<Vec<String>>,
    /// See [`Cli::allow_group`].
    pub allow_group: Option<Vec<String>>,
    /// See [`Cli::log_level`].
    pub log_level: Option<String>,
    /// See [`Cli::log_format`].
    pub log_format: Option<LogFormat>,
    /// See [`Cli::metrics_addr`].
    pub metrics_addr: Option<SocketAddr>,
    /// See [`Cli::idle_mode`].
    pub idle_mode: Option<IdleMode>,
    /// See [`Cli::busy_poll_us`].
    pub busy_poll_us: Option<u64>,
    /// See [`Cli::rto_min_us`].
    pub rto_min_us: Option<u64>,
    /// See [`Cli::max_message_len`].
    pub max_message_len: Option<u64>,
    /// See [`Cli::flow_send_buffer`].
    pub flow_send_buffer: Option<u64>,
    /// See [`Cli::flow_recv_buffer`].
    pub flow_recv_buffer: Option<u64>,
    /// See [`Cli::memory_budget`].
    pub memory_budget: Option<u64>,
    /// See [`Cli::stats_interval`].
    pub stats_interval: Option<f64>,
    /// See [`Cli::close_linger`].
    pub close_linger: Option<f64>,
    /// See [`Cli::shutdown_linger`].
    pub shutdown_linger: Option<f64>,
    /// See [`Cli::dpdk_args`].
    pub dpdk_args: Option<String>,
    /// See [`Cli::dpdk_port`].
    pub dpdk_port: Option<String>,
    /// See [`Cli::local_mac`].
    pub local_mac: Option<String>,
    /// See [`Cli::mtu`].
    pub mtu: Option<u16>,
    /// See [`Cli::udp_offload`].
    pub udp_offload: Option<UdpOffload>,
    /// See [`Cli::same_host_flows`].
    pub same_host_flows: Option<bool>,
    /// See [`Cli::max_connections_per_app`].
    pub max_connections_per_app: Option<usize>,
    /// See [`Cli::max_channels_per_app`].
    pub max_channels_per_app: Option<usize>,
    /// See [`Cli::max_ports_per_app`].
    pub max_ports_per_app: Option<usize>,
    /// See [`Cli::max_flows_per_app`].
    pub max_flows_per_app: Option<usize>,
    /// See [`Cli::max_connections_per_user`].
    pub max_connections_per_user: Option<usize>,
    /// See [`Cli::max_channels_per_user`].
    pub max_channels_per_user: Option<usize>,
    /// See [`Cli::max_ports_per_user`].
    pub max_ports_per_user: Option<usize>,
    /// See [`Cli::max_flows_per_user`].
    pub max_flows_per_user: Option<usize>,
    /// See [`Cli::max_connections`].
    pub max_connections: Option<usize>,
    /// See [`Cli::max_connecting_per_channel`].
    pub max_connecting_per_channel: Option<usize>,
    /// See [`Cli::max_connecting_per_app`].
    pub max_connecting_per_app: Option<usize>,
    /// See [`Cli::max_connect_rate_per_app`].
    pub max_connect_rate_per_app: Option<u32>,
    /// See [`Cli::connect_burst_per_app`].
    pub connect_burst_per_app: Option<u32>,
    /// See [`Cli::control_hello_timeout`].
    pub control_hello_timeout: Option<f64>,
    /// See [`Cli::control_idle_timeout`].
    pub control_idle_timeout: Option<f64>,
    /// See [`Cli::encryption_key`].
    pub encryption_key: Option<PathBuf>,
    /// See [`Cli::peer_key`].
    pub peer_key: Option<Vec<String>>,
    /// See [`Cli::peer_keys`].
    pub peer_keys: Option<PathBuf>,
    /// See [`Cli::max_encrypted_handshake_rate`].
    pub max_encrypted_handshake_rate: Option<u32>,
    /// See [`Cli::test_drop_rate`].
    pub test_drop_rate: Option<f64>,
    /// See [`Cli::test_seed`].
    pub test_seed: Option<u64>,
}

/// Who may attach to the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessPolicy {
    /// Allowed user ids.
    pub uids: Vec<u32>,
    /// Allowed group ids (primary or supplementary group of the peer's user).
    pub gids: Vec<u32>,
}

/// Datagram loss injected by the datapath (tests only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestLoss {
    /// Probability of dropping each sent datagram.
    pub drop_rate: f64,
    /// Seed of the loss pattern.
    pub seed: u64,
}

/// The validated sidecar configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarConfig {
    /// This host's address.
    pub local_ip: Ipv4Addr,
    /// Engine count, 1..=64.
    pub engines: u16,
    /// The datapath kind (only meaningful for [`crate::Sidecar::start`]).
    pub datapath: DatapathKind,
    /// UDP port pool.
    pub udp_ports: PortPool,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Group to give the control socket.
    pub control_socket_group: Option<u32>,
    /// Who may attach.
    pub access: AccessPolicy,
    /// Log filter.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Address of the Prometheus endpoint (`None`: off).
    pub metrics_addr: Option<SocketAddr>,
    /// Idle behaviour of engines.
    pub idle_mode: IdleMode,
    /// Busy-poll window in `sleep` mode.
    pub busy_poll: Duration,
    /// Lower bound of the retransmission timeout.
    pub rto_min: Duration,
    /// Largest message in bytes.
    pub max_message_len: u32,
    /// Per-flow send buffer in bytes.
    pub flow_send_buffer: usize,
    /// Per-flow receive buffer in bytes.
    pub flow_recv_buffer: usize,
    /// Bytes of received data all flows may hold; each engine gets `memory_budget / engines`.
    pub memory_budget: usize,
    /// Interval of statistics log lines (`None`: off).
    pub stats_interval: Option<Duration>,
    /// How long a detached channel's flows may take to deliver what the app sent (zero:
    /// abort them at once).
    pub close_linger: Duration,
    /// How long a stopping sidecar keeps delivering what apps sent (zero: abort at once).
    pub shutdown_linger: Duration,
    /// Injected loss (tests only).
    pub test_loss: Option<TestLoss>,
    /// DPDK: EAL arguments (empty: defaults, see `--dpdk-args`).
    pub dpdk_args: Vec<String>,
    /// DPDK: port name or index (`None`: the first port).
    pub dpdk_port: Option<String>,
    /// DPDK: our MAC (`None`: the port's).
    pub local_mac: Option<[u8; 6]>,
    /// MTU: bounds the engines' UDP payloads (MTU - 28); DPDK sets it on the port. `None`: the
    /// interface's (kernel UDP) or the port's (DPDK).
    pub mtu: Option<u16>,
    /// Kernel UDP: the offloads to use.
    pub udp_offload: UdpOffload,
    /// Flows between two channels of this sidecar bypass the transport (docs/CHANNEL.md
    /// "Same-host flows").
    pub same_host_flows: bool,
    /// Per-application and per-user limits, control connection timeouts.
    pub limits: ControlLimits,
    /// Encryption in transit: this host's key and the allow-list of peers, shared by every
    /// engine (`None`: plaintext). Its `Debug` shows public keys only.
    pub encryption: Option<Arc<Encryption>>,
    /// Encrypted handshakes each engine reads, and starts, per second.
    pub encrypted_handshake_rate: u32,
}

/// Why the configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys / wrong types.
    #[error("invalid configuration file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid value for {option}: {why}")]
    Invalid {
        /// The option (flag name).
        option: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A key file or peer key is unusable.
    #[error("invalid value for {option}: {source}")]
    Key {
        /// The option (flag name).
        option: &'static str,
        /// What is wrong.
        source: crate::keys::KeyFileError,
    },
    /// A user or group name does not exist.
    #[error("unknown {kind} `{name}`")]
    UnknownName {
        /// "user" or "group".
        kind: &'static str,
        /// The name.
        name: String,
    },
}

/// A linger in seconds, 0..=3600.
fn linger_secs(v: f64, option: &'static str) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && (0.0..=3_600.0).contains(&v)) {
        return Err(invalid(option, "must be 0..=3600 seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn invalid(option: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        why: why.into(),
    }
}

/// Parses a byte size: a number with an optional K/M/G (or KiB/MiB/GiB, powers of 1024) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 8388608, 8MiB, 512K)"))?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size suffix `{other}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn resolve_user(name: &str) -> Result<u32, ConfigError> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(ConfigError::UnknownName {
            kind: "user",
            name: name.to_owned(),
        }),
    }
}

fn resolve_group(name: &str) -> Result<u32, ConfigError> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(ConfigError::UnknownName {
            kind: "group",
            name: name.to_owned(),
        }),
    }
}

/// The control socket `machnet stat` asks: `flag`, else the configuration file's, else the
/// default.
pub fn stat_socket(flag: Option<&Path>, file: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    let from_file = match file {
        Some(f) => read_file(f)?.control_socket,
        None => None,
    };
    Ok(from_file.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)))
}

/// Reads a configuration file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl SidecarConfig {
    /// A configuration with every default (loopback address, one engine, kernel UDP).
    pub fn new() -> Self {
        let me = Uid::current().as_raw();
        let mut uids = vec![me];
        if me != 0 {
            uids.push(0);
        }
        SidecarConfig {
            local_ip: Ipv4Addr::LOCALHOST,
            engines: 1,
            datapath: DatapathKind::KernelUdp,
            udp_ports: PortPool {
                base: DEFAULT_UDP_PORT_BASE,
                count: DEFAULT_UDP_PORT_COUNT,
            },
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            control_socket_group: None,
            access: AccessPolicy {
                uids,
                gids: Vec::new(),
            },
            log_level: "info".into(),
            log_format: LogFormat::Text,
            metrics_addr: None,
            idle_mode: IdleMode::Sleep,
            busy_poll: Duration::from_micros(DEFAULT_BUSY_POLL_US),
            rto_min: machnet_core::config::RtoConfig::default().min,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            flow_send_buffer: DEFAULT_FLOW_BUFFER,
            flow_recv_buffer: DEFAULT_FLOW_BUFFER,
            memory_budget: usize::try_from(default_memory_budget(physical_memory()))
                .unwrap_or(usize::MAX),
            stats_interval: Some(Duration::from_secs(10)),
            close_linger: DEFAULT_CLOSE_LINGER,
            shutdown_linger: DEFAULT_SHUTDOWN_LINGER,
            test_loss: None,
            dpdk_args: Vec::new(),
            dpdk_port: None,
            local_mac: None,
            mtu: None,
            udp_offload: UdpOffload::On,
            same_host_flows: true,
            limits: ControlLimits::default(),
            encryption: None,
            encrypted_handshake_rate: machnet_core::config::HandshakeConfig::default()
                .max_encrypted_handshake_rate,
        }
    }

    /// Builds the configuration from parsed flags, reading `--config` if given.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Parses the process arguments (exits with a usage message on bad flags) and builds the
    /// configuration.
    pub fn from_args() -> Result<Self, ConfigError> {
        Self::from_cli(&Cli::parse())
    }

    /// Merges flags over file values over defaults, then validates.
    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let mut c = SidecarConfig::new();
        macro_rules! pick {
            ($field:ident) => {
                cli.$field.clone().or(file.$field.clone())
            };
        }
        if let Some(v) = pick!(local_ip) {
            c.local_ip = v;
        }
        if let Some(v) = pick!(engines) {
            c.engines = v;
        }
        if let Some(v) = pick!(datapath) {
            c.datapath = v;
        }
        if let Some(v) = pick!(udp_port_base) {
            c.udp_ports.base = v;
        }
        if let Some(v) = pick!(udp_port_count) {
            c.udp_ports.count = v;
        }
        if let Some(v) = pick!(control_socket) {
            c.control_socket = v;
        }
        if let Some(g) = pick!(control_socket_group) {
            c.control_socket_group = Some(resolve_group(&g)?);
        }
        let users = if cli.allow_user.is_empty() {
            file.allow_user.clone().unwrap_or_default()
        } else {
            cli.allow_user.clone()
        };
        let groups = if cli.allow_group.is_empty() {
            file.allow_group.clone().unwrap_or_default()
        } else {
            cli.allow_group.clone()
        };
        if !users.is_empty() || !groups.is_empty() {
            c.access = AccessPolicy {
                uids: users
                    .iter()
                    .map(|u| resolve_user(u))
                    .collect::<Result<_, _>>()?,
                gids: groups
                    .iter()
                    .map(|g| resolve_group(g))
                    .collect::<Result<_, _>>()?,
            };
        }
        if let Some(v) = pick!(log_level) {
            c.log_level = v;
        }
        if let Some(v) = pick!(log_format) {
            c.log_format = v;
        }
        c.metrics_addr = pick!(metrics_addr);
        if let Some(v) = pick!(idle_mode) {
            c.idle_mode = v;
        } else if c.datapath == DatapathKind::Dpdk {
            // DPDK queues have no readiness fd: a sleeping engine would only poll them every
            // millisecond, which the peers' loss-probe timers (100 µs) take for loss.
            c.idle_mode = IdleMode::Busy;
        }
        if let Some(v) = pick!(busy_poll_us) {
            if v > 1_000_000 {
                return Err(invalid("--busy-poll-us", "must be at most 1000000"));
            }
            c.busy_poll = Duration::from_micros(v);
        }
        if let Some(v) = pick!(rto_min_us) {
            // Up to the RTO's upper bound (500 ms); the initial RTO is raised to it if lower.
            if !(100..=500_000).contains(&v) {
                return Err(invalid("--rto-min-us", "must be 100..=500000 microseconds"));
            }
            c.rto_min = Duration::from_micros(v);
        }
        if let Some(v) = pick!(max_message_len) {
            c.max_message_len = u32::try_from(v)
                .ok()
                .filter(|&m| (1..=MAX_MAX_MESSAGE_LEN).contains(&m))
                .ok_or_else(|| {
                    invalid(
                        "--max-message-len",
                        format!("must be 1..={MAX_MAX_MESSAGE_LEN} bytes"),
                    )
                })?;
        }
        // The send buffer must hold one maximum-size message.
        c.flow_send_buffer = c.flow_send_buffer.max(c.max_message_len as usize);
        if let Some(v) = pick!(flow_send_buffer) {
            c.flow_send_buffer =
                usize::try_from(v).map_err(|_| invalid("--flow-send-buffer", "too large"))?;
        }
        if let Some(v) = pick!(flow_recv_buffer) {
            c.flow_recv_buffer =
                usize::try_from(v).map_err(|_| invalid("--flow-recv-buffer", "too large"))?;
        }
        if let Some(v) = pick!(memory_budget) {
            c.memory_budget =
                usize::try_from(v).map_err(|_| invalid("--memory-budget", "too large"))?;
        } else {
            // The host-sized default still lets every engine receive one maximum-size message.
            let least = usize::from(c.engines).saturating_mul(c.max_message_len as usize);
            c.memory_budget = c.memory_budget.max(least);
        }
        if let Some(v) = pick!(stats_interval) {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(invalid("--stats-interval", "must be 0..=86400 seconds"));
            }
            c.stats_interval = (v > 0.0).then(|| Duration::from_secs_f64(v));
        }
        if let Some(v) = pick!(close_linger) {
            c.close_linger = linger_secs(v, "--close-linger")?;
        }
        if let Some(v) = pick!(shutdown_linger) {
            c.shutdown_linger = linger_secs(v, "--shutdown-linger")?;
        }
        if let Some(v) = pick!(dpdk_args) {
            c.dpdk_args = v.split_whitespace().map(str::to_owned).collect();
        }
        if let Some(v) = pick!(dpdk_port) {
            c.dpdk_port = Some(v);
        }
        if let Some(v) = pick!(local_mac) {
            c.local_mac = Some(parse_mac(&v).ok_or_else(|| {
                invalid(
                    "--local-mac",
                    format!("`{v}` is not a MAC (aa:bb:cc:dd:ee:ff)"),
                )
            })?);
        }
        if let Some(v) = pick!(mtu) {
            c.mtu = Some(v);
        }
        if let Some(v) = pick!(udp_offload) {
            c.udp_offload = v;
        }
        if let Some(v) = pick!(same_host_flows) {
            c.same_host_flows = v;
        }
        let caps = [
            (
                &mut c.limits.app.connections,
                pick!(max_connections_per_app),
            ),
            (&mut c.limits.app.channels, pick!(max_channels_per_app)),
            (&mut c.limits.app.ports, pick!(max_ports_per_app)),
            (&mut c.limits.app.flows, pick!(max_flows_per_app)),
            (
                &mut c.limits.user.connections,
                pick!(max_connections_per_user),
            ),
            (&mut c.limits.user.channels, pick!(max_channels_per_user)),
            (&mut c.limits.user.ports, pick!(max_ports_per_user)),
            (&mut c.limits.user.flows, pick!(max_flows_per_user)),
            (&mut c.limits.max_connections, pick!(max_connections)),
            (
                &mut c.limits.connects.per_channel,
                pick!(max_connecting_per_channel),
            ),
            (
                &mut c.limits.connects.per_app,
                pick!(max_connecting_per_app),
            ),
        ];
        for (field, v) in caps {
            if let Some(v) = v {
                *field = v;
            }
        }
        if let Some(v) = pick!(max_connect_rate_per_app) {
            c.limits.connects.rate_per_app = v;
        }
        if let Some(v) = pick!(connect_burst_per_app) {
            c.limits.connects.burst_per_app = v;
        }
        if let Some(v) = pick!(control_hello_timeout) {
            c.limits.hello_timeout = seconds("--control-hello-timeout", v, 0.001, 3600.0)?;
        }
        if let Some(v) = pick!(control_idle_timeout) {
            let d = seconds("--control-idle-timeout", v, 0.0, 7.0 * 86_400.0)?;
            c.limits.idle_timeout = (!d.is_zero()).then_some(d);
        }
        c.encryption = encryption(cli, &file)?;
        if let Some(v) = pick!(max_encrypted_handshake_rate) {
            if !(1..=MAX_CONNECT_RATE).contains(&v) {
                return Err(invalid(
                    "--max-encrypted-handshake-rate",
                    format!("must be 1..={MAX_CONNECT_RATE} a second"),
                ));
            }
            c.encrypted_handshake_rate = v;
        }
        if let Some(p) = pick!(test_drop_rate) {
            let seed = pick!(test_seed).unwrap_or_else(crate::random_seed);
            c.test_loss = Some(TestLoss { drop_rate: p, seed });
        }
        c.validate()?;
        Ok(c)
    }

    /// The core configuration of engine `engine_id`.
    pub fn engine_config(&self, engine_id: u16) -> EngineConfig {
        let mut e = EngineConfig::new(self.local_ip, engine_id, self.engines);
        e.udp_ports = self.udp_ports;
        e.max_message_len = self.max_message_len;
        e.send_buffer = self.flow_send_buffer;
        e.recv_buffer = self.flow_recv_buffer;
        e.memory_budget = self.memory_budget / usize::from(self.engines.max(1));
        e.checksum = machnet_core::ChecksumMode::Datapath;
        if let Some(mtu) = self.mtu {
            e.max_udp_payload = mtu.saturating_sub(28);
        }
        e.encryption = self.encryption.clone();
        e.handshake.max_encrypted_handshake_rate = self.encrypted_handshake_rate;
        e.rto.min = self.rto_min;
        e.rto.initial = e.rto.initial.max(self.rto_min);
        e
    }

    /// Checks every value; errors name the flag.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ip = self.local_ip;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(invalid("--local-ip", "must be a unicast address"));
        }
        if !(1..=64).contains(&self.engines) {
            return Err(invalid("--engines", "must be 1..=64"));
        }
        if self.udp_ports.count == 0 {
            return Err(invalid("--udp-port-count", "must be at least 1"));
        }
        if !self.udp_ports.is_valid() {
            return Err(invalid(
                "--udp-port-base",
                "the pool must not contain port 0 nor run past 65535",
            ));
        }
        if !(1..=MAX_MAX_MESSAGE_LEN).contains(&self.max_message_len) {
            return Err(invalid(
                "--max-message-len",
                format!("must be 1..={MAX_MAX_MESSAGE_LEN} bytes"),
            ));
        }
        if self.flow_send_buffer < self.max_message_len as usize {
            return Err(invalid(
                "--flow-send-buffer",
                "must hold at least one message of --max-message-len bytes",
            ));
        }
        if self.flow_recv_buffer == 0 {
            return Err(invalid("--flow-recv-buffer", "must be at least 1"));
        }
        if self.memory_budget / usize::from(self.engines.max(1)) < self.max_message_len as usize {
            return Err(invalid(
                "--memory-budget",
                format!(
                    "must hold one message of --max-message-len ({} bytes) per engine ({})",
                    self.max_message_len, self.engines
                ),
            ));
        }
        if let Some(mtu) = self.mtu {
            let max = match self.datapath {
                DatapathKind::KernelUdp => MAX_KERNEL_MTU,
                _ => MAX_MTU,
            };
            if !(MIN_MTU..=max).contains(&mtu) {
                return Err(invalid("--mtu", format!("must be {MIN_MTU}..={max}")));
            }
        }
        if let Some(mac) = self.local_mac {
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(invalid("--local-mac", "must be a unicast MAC"));
            }
        }
        if let Some(l) = self.test_loss {
            if !(l.drop_rate.is_finite() && (0.0..1.0).contains(&l.drop_rate)) {
                return Err(invalid("--test-drop-rate", "must be in 0.0..1.0"));
            }
        }
        if self.control_socket.as_os_str().is_empty() {
            return Err(invalid("--control-socket", "must not be empty"));
        }
        // Unix socket paths are limited to 107 bytes.
        if self.control_socket.as_os_str().len() > 107 {
            return Err(invalid("--control-socket", "path longer than 107 bytes"));
        }
        validate_limits(&self.limits)?;
        machnet_channel::ChannelLayout::for_messages(self.max_message_len, 1 << 20)
            .map_err(|e| invalid("--max-message-len", e.to_string()))?;
        for id in 0..self.engines {
            self.engine_config(id)
                .validate()
                .map_err(|e| invalid("engine configuration", e.to_string()))?;
        }
        Ok(())
    }

    /// Whether a peer with these credentials may attach: its uid is allowed, or its primary
    /// group or one of its user's supplementary groups is.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        let a = &self.access;
        if a.uids.contains(&uid) || a.gids.contains(&gid) {
            return true;
        }
        if a.gids.is_empty() {
            return false;
        }
        let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
            return false;
        };
        let Ok(name) = std::ffi::CString::new(user.name) else {
            return false;
        };
        nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
            .map(|gs| gs.iter().any(|g| a.gids.contains(&g.as_raw())))
            .unwrap_or(false)
    }
}

/// The encryption configuration of `--encryption-key`, `--peer-key` and `--peer-keys` (flags
/// over file keys; `--peer-key` given on the command line replaces the file's list). A key
/// without peers, peers without a key, and two keys for one address are errors.
fn encryption(cli: &Cli, file: &FileConfig) -> Result<Option<Arc<Encryption>>, ConfigError> {
    use crate::keys;
    let key_err = |option| move |source| ConfigError::Key { option, source };
    let flag_peers = if cli.peer_key.is_empty() {
        file.peer_key.clone().unwrap_or_default()
    } else {
        cli.peer_key.clone()
    };
    let mut peers: Vec<PeerKey> = flag_peers
        .iter()
        .map(|p| keys::parse_peer_flag(p))
        .collect::<Result<_, _>>()
        .map_err(key_err("--peer-key"))?;
    let peers_file = cli.peer_keys.clone().or(file.peer_keys.clone());
    if let Some(path) = &peers_file {
        peers.extend(keys::read_peer_keys(path).map_err(key_err("--peer-keys"))?);
    }
    let key_path = cli.encryption_key.clone().or(file.encryption_key.clone());
    let Some(key_path) = key_path else {
        if !flag_peers.is_empty() {
            return Err(invalid("--peer-key", "needs --encryption-key"));
        }
        if peers_file.is_some() {
            return Err(invalid("--peer-keys", "needs --encryption-key"));
        }
        return Ok(None);
    };
    if peers.is_empty() {
        return Err(invalid(
            "--encryption-key",
            "needs at least one peer (--peer-key or --peer-keys): encrypted flows go only to \
             listed peers",
        ));
    }
    keys::check_unique(&peers).map_err(key_err("--peer-key"))?;
    let key = keys::read_private_key(&key_path).map_err(key_err("--encryption-key"))?;
    Ok(Some(Arc::new(Encryption::new(key, peers))))
}

/// A duration given in seconds, within `min..=max`.
fn seconds(option: &'static str, v: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && (min..=max).contains(&v)) {
        return Err(invalid(option, format!("must be {min}..={max} seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Largest `--max-connect-rate-per-app`: a million connects a second is far beyond what one
/// engine can set up, and keeps the token interval at a microsecond or more.
const MAX_CONNECT_RATE: u32 = 1_000_000;

/// Every cap at least 1 (a per-application cap above its per-user one is allowed: the smaller
/// applies). Caps at or above the sidecar-wide one leave no room for other users, so are
/// refused for connections, where the sidecar-wide cap is configured.
fn validate_limits(l: &ControlLimits) -> Result<(), ConfigError> {
    let named = |c: &Caps, who: &'static str| {
        [
            (c.connections, who, "connections"),
            (c.channels, who, "channels"),
            (c.ports, who, "ports"),
            (c.flows, who, "flows"),
        ]
    };
    for (v, who, what) in named(&l.app, "app")
        .into_iter()
        .chain(named(&l.user, "user"))
    {
        if v == 0 {
            let option = match (who, what) {
                ("app", "connections") => "--max-connections-per-app",
                ("app", "channels") => "--max-channels-per-app",
                ("app", "ports") => "--max-ports-per-app",
                ("app", _) => "--max-flows-per-app",
                (_, "connections") => "--max-connections-per-user",
                (_, "channels") => "--max-channels-per-user",
                (_, "ports") => "--max-ports-per-user",
                _ => "--max-flows-per-user",
            };
            return Err(invalid(option, "must be at least 1"));
        }
    }
    if l.max_connections == 0 {
        return Err(invalid("--max-connections", "must be at least 1"));
    }
    let c = &l.connects;
    for (v, option) in [
        (c.per_channel, "--max-connecting-per-channel"),
        (c.per_app, "--max-connecting-per-app"),
        (c.rate_per_app as usize, "--max-connect-rate-per-app"),
        (c.burst_per_app as usize, "--connect-burst-per-app"),
    ] {
        if v == 0 {
            return Err(invalid(option, "must be at least 1"));
        }
    }
    if c.rate_per_app > MAX_CONNECT_RATE {
        return Err(invalid(
            "--max-connect-rate-per-app",
            format!("must be 1..={MAX_CONNECT_RATE} a second"),
        ));
    }
    if l.user.connections > l.max_connections {
        return Err(invalid(
            "--max-connections-per-user",
            format!(
                "must not exceed --max-connections ({}); keep it lower to leave room for other \
                 users",
                l.max_connections
            ),
        ));
    }
    if l.hello_timeout.is_zero() {
        return Err(invalid("--control-hello-timeout", "must be positive"));
    }
    Ok(())
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<SidecarConfig, ConfigError> {
        let mut v = vec!["machnet"];
        v.extend_from_slice(args);
        SidecarConfig::from_cli(&Cli::try_parse_from(v).expect("flags parse"))
    }

    #[test]
    fn a_repeated_flag_takes_the_last_value_and_lists_collect() {
        let c = parse(&["--stats-interval", "0", "--stats-interval", "5"]).unwrap();
        assert_eq!(c.stats_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.close_linger, DEFAULT_CLOSE_LINGER);
        let c = parse(&["--close-linger", "0.5"]).unwrap();
        assert_eq!(c.close_linger, Duration::from_millis(500));
        let cli = Cli::try_parse_from(["machnet", "--allow-user", "0", "--allow-user", "1"])
            .expect("flags parse");
        assert_eq!(cli.allow_user, ["0", "1"]);
    }

    #[test]
    fn defaults_are_valid_and_documented() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.local_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(c.engines, 1);
        assert_eq!(c.udp_ports.count, 16);
        assert_eq!(c.max_message_len, 8 << 20);
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert!(c.access.uids.contains(&0));
        assert!(c.access.uids.contains(&Uid::current().as_raw()));
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--local-ip",
            "--engines",
            "--datapath",
            "--udp-port-base",
            "--udp-port-count",
            "--control-socket",
            "--allow-user",
            "--allow-group",
            "--log-level",
            "--idle-mode",
            "--busy-poll-us",
            "--max-message-len",
            "--memory-budget",
            "--stats-interval",
            "--config",
            "--encryption-key",
            "--peer-key",
            "--peer-keys",
        ] {
            assert!(help.contains(flag), "help lacks {flag}");
        }
        assert!(!help.contains("--test-drop-rate"), "test flags are hidden");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("machnet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(
            &path,
            "local_ip = \"10.1.2.3\"\nengines = 4\nmax_message_len = 1048576\nallow_user = [\"0\"]\nidle_mode = \"busy\"\ndatapath = \"kernel-udp\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p, "--engines", "2"]).unwrap();
        assert_eq!(c.local_ip, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(c.engines, 2);
        assert_eq!(c.max_message_len, 1 << 20);
        assert_eq!(c.idle_mode, IdleMode::Busy);
        assert_eq!(c.access.uids, vec![0]);
        let c = parse(&["--config", p, "--allow-user", "4242"]).unwrap();
        assert_eq!(c.access.uids, vec![4242]);

        std::fs::write(&path, "bogus_key = 1\n").unwrap();
        assert!(matches!(
            parse(&["--config", p]),
            Err(ConfigError::ParseFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_rejected_naming_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--engines", "0"], "--engines"),
            (&["--engines", "65"], "--engines"),
            (&["--udp-port-count", "0"], "--udp-port-count"),
            (
                &["--udp-port-base", "65530", "--udp-port-count", "16"],
                "--udp-port-base",
            ),
            (&["--udp-port-base", "0"], "--udp-port-base"),
            (&["--local-ip", "0.0.0.0"], "--local-ip"),
            (&["--max-message-len", "0"], "--max-message-len"),
            (&["--max-message-len", "1GiB"], "--max-message-len"),
            (&["--test-drop-rate", "1.5"], "--test-drop-rate"),
            (&["--stats-interval", "90000"], "--stats-interval"),
            (&["--close-linger=-1"], "--close-linger"),
            (&["--close-linger", "inf"], "--close-linger"),
            (&["--shutdown-linger", "3601"], "--shutdown-linger"),
            (&["--flow-send-buffer", "1K"], "--flow-send-buffer"),
            (&["--max-channels-per-app", "0"], "--max-channels-per-app"),
            (&["--max-flows-per-user", "0"], "--max-flows-per-user"),
            (&["--max-connections", "0"], "--max-connections"),
            (
                &[
                    "--max-connections",
                    "10",
                    "--max-connections-per-user",
                    "11",
                ],
                "--max-connections-per-user",
            ),
            (&["--control-hello-timeout", "0"], "--control-hello-timeout"),
            (
                &["--control-hello-timeout", "NaN"],
                "--control-hello-timeout",
            ),
            (&["--control-idle-timeout=-1"], "--control-idle-timeout"),
            (&["--memory-budget", "1MiB"], "--memory-budget"),
            (
                &["--memory-budget", "24MiB", "--engines", "4"],
                "--memory-budget",
            ),
        ];
        for (args, flag) in cases {
            match parse(args) {
                Err(ConfigError::Invalid { option, .. }) => assert_eq!(option, *flag, "{args:?}"),
                other => panic!("{args:?}: expected an error naming {flag}, got {other:?}"),
            }
        }
        assert!(matches!(
            parse(&["--allow-user", "no-such-user-hopefully"]),
            Err(ConfigError::UnknownName { kind: "user", .. })
        ));
    }

    #[test]
    fn memory_budget_is_sized_from_the_host_and_split_between_engines() {
        assert_eq!(default_memory_budget(None), DEFAULT_MEMORY_BUDGET_FLOOR);
        assert_eq!(default_memory_budget(Some(8 << 30)), 2 << 30);
        assert_eq!(default_memory_budget(Some(1 << 30)), 256 << 20, "floor");
        assert_eq!(default_memory_budget(Some(1 << 40)), 16 << 30, "cap");
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.memory_budget as u64,
            default_memory_budget(physical_memory())
        );
        // The default grows to one maximum-size message per engine.
        let c = parse(&["--engines", "64", "--max-message-len", "64MiB"]).unwrap();
        assert!(c.memory_budget >= 64 * (64 << 20));
        let c = parse(&["--memory-budget", "1GiB", "--engines", "4"]).unwrap();
        assert_eq!(c.memory_budget, 1 << 30);
        assert_eq!(c.engine_config(3).memory_budget, 256 << 20);
    }

    #[test]
    fn dpdk_flags_parse() {
        let c = parse(&[
            "--datapath",
            "dpdk",
            "--dpdk-args",
            "--no-pci  --vdev=net_af_packet0,iface=v0",
            "--dpdk-port",
            "net_af_packet0",
            "--local-mac",
            "02:00:00:00:00:01",
            "--mtu",
            "9000",
        ])
        .unwrap();
        assert_eq!(c.datapath, DatapathKind::Dpdk);
        assert_eq!(c.idle_mode, IdleMode::Busy, "DPDK defaults to busy polling");
        assert_eq!(c.dpdk_args, ["--no-pci", "--vdev=net_af_packet0,iface=v0"]);
        assert_eq!(c.dpdk_port.as_deref(), Some("net_af_packet0"));
        assert_eq!(c.local_mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.engine_config(0).max_udp_payload, 9000 - 28);
        let c = parse(&["--datapath", "dpdk", "--idle-mode", "sleep"]).unwrap();
        assert_eq!(c.idle_mode, IdleMode::Sleep);
        assert_eq!(
            parse_mac("aa-bb-cc-dd-ee-0f"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f])
        );
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fff",
            "x",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        for (args, flag) in [
            (&["--mtu", "100"][..], "--mtu"),
            (&["--local-mac", "01:00:5e:00:00:01"][..], "--local-mac"),
            (&["--local-mac", "zz"][..], "--local-mac"),
        ] {
            match parse(args) {
                Err(ConfigError::Invalid { option, .. }) => assert_eq!(option, flag),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("8XB").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn max_message_len_is_reachable_and_send_buffer_follows() {
        let c = parse(&["--max-message-len", "32MiB"]).unwrap();
        assert_eq!(c.max_message_len, 32 << 20);
        assert!(c.flow_send_buffer >= 32 << 20);
        let l = machnet_channel::ChannelLayout::for_messages(c.max_message_len, 1 << 20).unwrap();
        assert!(l.to_app_capacity >= (32 << 20) + 16 && l.to_sidecar_capacity >= (32 << 20) + 16);
    }

    #[test]
    fn limits_have_documented_defaults_and_come_from_flags_or_file() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.limits, ControlLimits::default());
        assert_eq!(c.limits.app.connections, 256);
        assert_eq!(c.limits.user.connections, 1024);
        assert_eq!(c.limits.max_connections, 4096);
        assert_eq!(c.limits.hello_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(600)));
        let c = parse(&[
            "--max-connections-per-app",
            "3",
            "--max-channels-per-user",
            "7",
            "--max-flows-per-app",
            "9",
            "--control-hello-timeout",
            "0.25",
            "--control-idle-timeout",
            "0",
        ])
        .unwrap();
        assert_eq!(c.limits.app.connections, 3);
        assert_eq!(c.limits.user.channels, 7);
        assert_eq!(c.limits.app.flows, 9);
        assert_eq!(c.limits.hello_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.idle_timeout, None, "0 = never");
        let file: FileConfig =
            toml::from_str("max_ports_per_app = 2\ncontrol_idle_timeout = 30\n").unwrap();
        let c = SidecarConfig::merge(&Cli::try_parse_from(["machnet"]).unwrap(), file).unwrap();
        assert_eq!(c.limits.app.ports, 2);
        assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn connect_budgets_have_documented_defaults_and_are_validated() {
        let c = parse(&[]).unwrap();
        let d = c.limits.connects;
        assert_eq!(
            (d.per_channel, d.per_app, d.rate_per_app, d.burst_per_app),
            (64, 128, 10_000, 128)
        );
        let c = parse(&[
            "--max-connecting-per-channel",
            "4",
            "--max-connecting-per-app",
            "6",
            "--max-connect-rate-per-app",
            "50",
            "--connect-burst-per-app",
            "7",
        ])
        .unwrap();
        let d = c.limits.connects;
        assert_eq!(
            (d.per_channel, d.per_app, d.rate_per_app, d.burst_per_app),
            (4, 6, 50, 7)
        );
        for (flag, v) in [
            ("--max-connecting-per-channel", "0"),
            ("--max-connecting-per-app", "0"),
            ("--max-connect-rate-per-app", "0"),
            ("--max-connect-rate-per-app", "1000001"),
            ("--connect-burst-per-app", "0"),
        ] {
            let e = parse(&[flag, v]).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag} {v}: {e}");
        }
        let file: FileConfig =
            toml::from_str("max_connecting_per_app = 9\nconnect_burst_per_app = 3\n").unwrap();
        let c = SidecarConfig::merge(&Cli::try_parse_from(["machnet"]).unwrap(), file).unwrap();
        assert_eq!(
            (c.limits.connects.per_app, c.limits.connects.burst_per_app),
            (9, 3)
        );
    }

    #[test]
    fn rto_floor_reaches_every_engine_and_is_checked() {
        let d = parse(&[]).unwrap();
        assert_eq!(
            d.engine_config(0).rto,
            machnet_core::config::RtoConfig::default()
        );
        let c = parse(&["--engines", "2", "--rto-min-us", "30000"]).unwrap();
        for e in 0..2 {
            let rto = c.engine_config(e).rto;
            assert_eq!(rto.min, Duration::from_millis(30));
            // The initial RTO (20 ms by default) is raised to the floor.
            assert_eq!(rto.initial, Duration::from_millis(30));
            c.engine_config(e).validate().unwrap();
        }
        let file: FileConfig = toml::from_str("rto_min_us = 5000\n").unwrap();
        let c = SidecarConfig::merge(&Cli::try_parse_from(["machnet"]).unwrap(), file).unwrap();
        assert_eq!(c.engine_config(0).rto.min, Duration::from_millis(5));
        for v in ["0", "99", "500001"] {
            let e = parse(&["--rto-min-us", v]).unwrap_err().to_string();
            assert!(e.contains("--rto-min-us"), "{v}: {e}");
        }
    }

    #[test]
    fn encrypted_handshake_rate_reaches_every_engine() {
        let d = parse(&[]).unwrap();
        assert_eq!(
            d.engine_config(0).handshake.max_encrypted_handshake_rate,
            2_000
        );
        let c = parse(&["--engines", "2", "--max-encrypted-handshake-rate", "500"]).unwrap();
        for e in 0..2 {
            assert_eq!(
                c.engine_config(e).handshake.max_encrypted_handshake_rate,
                500
            );
        }
        for v in ["0", "1000001"] {
            let e = parse(&["--max-encrypted-handshake-rate", v])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--max-encrypted-handshake-rate"), "{v}: {e}");
        }
    }

    /// A fresh directory for key files.
    fn key_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("machnet-keys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `text` to `dir/name` with permission bits `mode`; returns the path as a string.
    fn write_mode(dir: &Path, name: &str, text: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn key_error(args: &[&str]) -> (&'static str, String) {
        match parse(args) {
            Err(e @ (ConfigError::Key { .. } | ConfigError::Invalid { .. })) => {
                let option = match &e {
                    ConfigError::Key { option, .. } | ConfigError::Invalid { option, .. } => {
                        *option
                    }
                    _ => unreachable!(),
                };
                (option, e.to_string())
            }
            other => panic!("{args:?}: expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn encryption_keys_come_from_files_and_flags_and_reach_every_engine() {
        use crate::keys::encode_key;
        use machnet_core::seal::StaticKey;
        let dir = key_dir("ok");
        let private = [7u8; 32];
        let key = StaticKey::from_private(&private).unwrap();
        let key_file = write_mode(&dir, "k", &format!("  {}\n", encode_key(&private)), 0o600);
        let peer_a = StaticKey::generate().public();
        let peer_b = StaticKey::generate().public();
        let peer_c = StaticKey::generate().public();
        let peers_file = write_mode(
            &dir,
            "peers",
            &format!(
                "# the rack\n\n10.0.0.2 {}  # b\n   10.0.0.3\t{}\n",
                encode_key(&peer_b),
                encode_key(&peer_c)
            ),
            0o644,
        );
        let peer_flag = format!("10.0.0.1={}", encode_key(&peer_a));
        let c = parse(&[
            "--engines",
            "3",
            "--encryption-key",
            &key_file,
            "--peer-key",
            &peer_flag,
            "--peer-keys",
            &peers_file,
        ])
        .unwrap();
        let enc = c.encryption.clone().expect("encryption on");
        assert_eq!(enc.public_key(), key.public());
        assert_eq!(enc.peers().len(), 3);
        assert_eq!(enc.peer_key(Ipv4Addr::new(10, 0, 0, 1)), Some(&peer_a));
        assert_eq!(enc.peer_key(Ipv4Addr::new(10, 0, 0, 2)), Some(&peer_b));
        assert_eq!(enc.peer_key(Ipv4Addr::new(10, 0, 0, 3)), Some(&peer_c));
        assert_eq!(enc.peer_key(Ipv4Addr::new(10, 0, 0, 4)), None);
        for id in 0..3 {
            let e = c
                .engine_config(id)
                .encryption
                .expect("every engine encrypts");
            assert!(
                Arc::ptr_eq(&e, &enc),
                "one Encryption shared by the engines"
            );
        }
        // The private key never shows in the configuration's Debug form.
        let debug = format!("{c:?}");
        assert!(!debug.contains(&encode_key(&private)), "{debug}");
        assert!(!debug.contains("7, 7, 7, 7"), "{debug}");
        assert_eq!(parse(&[]).unwrap().encryption, None, "off by default");

        // The same keys from the configuration file; a --peer-key flag replaces its list.
        let toml = dir.join("m.toml");
        std::fs::write(
            &toml,
            format!(
                "encryption_key = \"{key_file}\"\npeer_key = [\"{peer_flag}\"]\npeer_keys = \"{peers_file}\"\n"
            ),
        )
        .unwrap();
        let toml = toml.to_str().unwrap();
        let c = parse(&["--config", toml]).unwrap();
        assert_eq!(c.encryption.as_ref().unwrap().peers().len(), 3);
        let other = format!("10.0.0.9={}", encode_key(&peer_a));
        let c = parse(&["--config", toml, "--peer-key", &other]).unwrap();
        let enc = c.encryption.unwrap();
        assert_eq!(enc.peer_key(Ipv4Addr::new(10, 0, 0, 9)), Some(&peer_a));
        assert_eq!(enc.peer_key(Ipv4Addr::new(10, 0, 0, 1)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_keys_and_peers_are_rejected_naming_the_flag() {
        use crate::keys::{encode_key, KeyFileError};
        let dir = key_dir("bad");
        let good = encode_key(&[9u8; 32]);
        let key = write_mode(&dir, "k", &good, 0o600);
        let peer = format!("10.0.0.2={good}");
        let world = write_mode(&dir, "world", &good, 0o604);
        let group = write_mode(&dir, "group", &good, 0o620);
        let not_b64 = write_mode(&dir, "nb", "not base64!\n", 0o600);
        let short = write_mode(&dir, "short", &encode_key(&[1u8; 32])[..40], 0o400);
        let long = write_mode(
            &dir,
            "long",
            &base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8; 33]),
            0o600,
        );
        let bad_peers = write_mode(
            &dir,
            "peers",
            &format!("10.0.0.2 {good}\n10.0.0.3\n"),
            0o644,
        );
        let bad_peer_key = write_mode(&dir, "peers2", "10.0.0.2 AAAA\n", 0o644);
        let writable_peers = write_mode(&dir, "peers3", &format!("10.0.0.2 {good}\n"), 0o664);
        let missing = dir.join("missing").to_str().unwrap().to_owned();
        let dir_s = dir.to_str().unwrap().to_owned();
        let host = format!("host={good}");
        let zero = format!("0.0.0.0={good}");
        let cases: Vec<(Vec<&str>, &str, &str)> = vec![
            (
                vec!["--peer-key", &peer],
                "--peer-key",
                "needs --encryption-key",
            ),
            (vec!["--peer-keys", &bad_peers], "--peer-keys", ""),
            (
                vec!["--encryption-key", &key],
                "--encryption-key",
                "at least one peer",
            ),
            (
                vec!["--encryption-key", &world, "--peer-key", &peer],
                "--encryption-key",
                "too open",
            ),
            (
                vec!["--encryption-key", &group, "--peer-key", &peer],
                "--encryption-key",
                "0620",
            ),
            (
                vec!["--encryption-key", &not_b64, "--peer-key", &peer],
                "--encryption-key",
                "base64",
            ),
            (
                vec!["--encryption-key", &short, "--peer-key", &peer],
                "--encryption-key",
                "32 bytes, got 30",
            ),
            (
                vec!["--encryption-key", &long, "--peer-key", &peer],
                "--encryption-key",
                "32 bytes, got 33",
            ),
            (
                vec!["--encryption-key", &missing, "--peer-key", &peer],
                "--encryption-key",
                "cannot read",
            ),
            (
                vec!["--encryption-key", &dir_s, "--peer-key", &peer],
                "--encryption-key",
                "regular file",
            ),
            (
                vec!["--encryption-key", &key, "--peer-key", "10.0.0.2"],
                "--peer-key",
                "IP=BASE64PUB",
            ),
            (
                vec!["--encryption-key", &key, "--peer-key", "10.0.0.2=AAAA"],
                "--peer-key",
                "got 3",
            ),
            (
                vec!["--encryption-key", &key, "--peer-key", "10.0.0.2=%%%"],
                "--peer-key",
                "base64",
            ),
            (
                vec!["--encryption-key", &key, "--peer-key", &host],
                "--peer-key",
                "IPv4",
            ),
            (
                vec!["--encryption-key", &key, "--peer-key", &zero],
                "--peer-key",
                "unicast",
            ),
            (
                vec![
                    "--encryption-key",
                    &key,
                    "--peer-key",
                    &peer,
                    "--peer-key",
                    &peer,
                ],
                "--peer-key",
                "listed twice",
            ),
            (
                vec!["--encryption-key", &key, "--peer-keys", &bad_peers],
                "--peer-keys",
                "line 2",
            ),
            (
                vec!["--encryption-key", &key, "--peer-keys", &writable_peers],
                "--peer-keys",
                "chmod go-w",
            ),
            (
                vec!["--encryption-key", &key, "--peer-keys", &bad_peer_key],
                "--peer-keys",
                "line 1",
            ),
        ];
        for (args, flag, says) in &cases {
            let (option, message) = key_error(args);
            assert_eq!(option, *flag, "{args:?}: {message}");
            assert!(message.contains(flag), "{args:?}: {message}");
            assert!(message.contains(says), "{args:?}: {message} lacks `{says}`");
            assert!(
                !message.contains(&good[..20]),
                "no key in errors: {message}"
            );
        }
        assert!(matches!(
            crate::keys::decode_key("AAAA"),
            Err(KeyFileError::Key(machnet_core::seal::KeyError::Length(3)))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keygen_writes_an_owner_only_key_once_and_pubkey_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = key_dir("gen");
        let path = dir.join("k");
        let key = crate::keys::write_new_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(crate::keys::read_private_key(&path).unwrap(), key);
        assert_ne!(
            crate::keys::write_new_key(&dir.join("k2")).unwrap(),
            key,
            "random"
        );
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            crate::keys::write_new_key(&path),
            Err(crate::keys::KeyFileError::Exists { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), before, "not overwritten");
        let cli = Cli::try_parse_from(["machnet", "keygen", "--out", "/x/y"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Keygen {
                out: PathBuf::from("/x/y")
            })
        );
        let cli = Cli::try_parse_from(["machnet", "pubkey", "/x/y"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Pubkey {
                path: PathBuf::from("/x/y")
            })
        );
        assert!(
            Cli::try_parse_from(["machnet", "--engines", "2", "keygen", "--out", "k"]).is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn access_policy_checks_uid_and_gid() {
        let mut c = SidecarConfig::new();
        c.access = AccessPolicy {
            uids: vec![1000],
            gids: vec![2000],
        };
        assert!(c.allows(1000, 5));
        assert!(c.allows(77777, 2000));
        assert!(!c.allows(77777, 77777));
    }
}
