//! What a workload does ([`WorkloadConfig`]), how far it got ([`SideProgress`]) and how it
//! fails ([`WorkloadError`]).

use std::fmt;
use std::time::Duration;

use machnet_core::time::Instant;
use machnet_core::CloseReason;

use super::SizeMix;
use crate::network::{EngineAddr, Network};
use crate::seed::SEED_ENV;

/// First port listened on by [`WorkloadConfig::between`]; server engine `e` listens on
/// `LISTEN_PORT_BASE + e`.
pub const LISTEN_PORT_BASE: u16 = 7000;

/// Where one flow runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSpec {
    /// The engine that connects.
    pub client: EngineAddr,
    /// The engine that listens and accepts.
    pub server: EngineAddr,
    /// The port `server` listens on.
    pub port: u16,
}

/// When the application closes a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    /// Never: flows stay open when the exchange is complete.
    Never,
    /// Each side closes once it has sent all its messages and read all of its peer's.
    AfterExchange,
    /// Each side closes as soon as it has queued all its messages and keeps reading until the
    /// peer closes (half-close).
    AfterSending,
}

/// What a workload does.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Seed of message sizes and contents (normally the network's seed).
    pub seed: u64,
    /// The flows.
    pub flows: Vec<FlowSpec>,
    /// Messages per flow in each direction, indexed by [`crate::content::Direction::index`].
    pub messages: [u64; 2],
    /// Message sizes.
    pub sizes: SizeMix,
    /// Messages a side may have sent that its peer has not read yet (`None`: only the engine's
    /// send buffer limits).
    pub max_outstanding: Option<u64>,
    /// When flows are closed; with anything but [`CloseMode::Never`] the run completes only
    /// when every flow has closed gracefully on both sides.
    pub close: CloseMode,
    /// The server side stops reading each flow after this many messages, until
    /// [`super::Workload::resume_reading`].
    pub pause_reading_after: Option<u64>,
    /// The flows [`WorkloadConfig::pause_reading_after`] applies to (`None`: all of them).
    pub paused_flows: Option<Vec<usize>>,
    /// Simulated time after which an incomplete run fails.
    pub time_limit: Duration,
}

impl WorkloadConfig {
    /// `flows` flows from host `client` to host `server` carrying about `total_messages`
    /// messages (split evenly over flows and both directions), with the standard size mix.
    ///
    /// Server engine `e` listens on [`LISTEN_PORT_BASE`]` + e`; flow `k` connects from client
    /// engine `k % Ec` to server engine `(k / Ec) % Es`, so the first `Ec × Es` flows cover every
    /// pair of engines.
    pub fn between(
        net: &Network,
        seed: u64,
        client: usize,
        server: usize,
        flows: usize,
        total_messages: u64,
    ) -> Self {
        let ec = usize::from(net.engine_count(client));
        let es = usize::from(net.engine_count(server));
        let specs = (0..flows)
            .map(|k| {
                let se = ((k / ec) % es) as u16;
                FlowSpec {
                    client: EngineAddr::new(client, (k % ec) as u16),
                    server: EngineAddr::new(server, se),
                    port: LISTEN_PORT_BASE + se,
                }
            })
            .collect();
        let per_direction = total_messages.div_ceil(2 * flows.max(1) as u64);
        WorkloadConfig {
            seed,
            flows: specs,
            messages: [per_direction, per_direction],
            sizes: SizeMix::standard(),
            max_outstanding: None,
            close: CloseMode::AfterExchange,
            pause_reading_after: None,
            paused_flows: None,
            time_limit: Duration::from_secs(600),
        }
    }
}

/// A violated delivery guarantee or an unexpected engine answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadError {
    /// The seed to replay with.
    pub seed: u64,
    /// Simulated time of the failure.
    pub at: Instant,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workload failed at t={:.6} s (seed {seed}; replay with {SEED_ENV}={seed}): {}",
            self.at.as_nanos() as f64 / 1e9,
            self.message,
            seed = self.seed
        )
    }
}

impl std::error::Error for WorkloadError {}

/// Progress of one side of one flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideProgress {
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Messages read and verified.
    pub received: u64,
    /// Their bytes.
    pub bytes_received: u64,
    /// Times `send` answered `BufferFull`.
    pub buffer_full: u64,
    /// Waiting for `Writable`.
    pub blocked: bool,
    /// Whether the peer's FIN was reported.
    pub peer_closed: bool,
    /// How the flow ended on this side, if it did.
    pub closed: Option<CloseReason>,
}
