//! Engine threads: one per engine, shared-nothing. Each owns a `machnet_core::Engine`, its
//! datapath and its channels; the only thing it shares is a command queue (control-plane
//! commands, with an eventfd to wake it) and a notice queue back to the control thread.

pub mod channel;
pub mod connect_budget;
pub mod flow_quota;
pub mod listen;
pub mod local;
pub mod route;
mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use machnet_channel::CloseCode;
use machnet_core::{EngineConfig, ListenError};
use nix::sys::eventfd::{EfdFlags, EventFd};

pub use channel::ChannelId;
pub use connect_budget::{AppConnects, ChannelConnects, ConnectLimits, ConnectRefusals};
pub use flow_quota::{FlowCounter, FlowQuota};

use crate::clock::Clock;
use crate::config::IdleMode;
use crate::datapath::Datapath;
use crate::shm::ChannelMem;
use crate::stats::EngineReport;

/// How long a caller waits for an engine's answer before declaring it gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A control-plane command for an engine.
pub enum Command {
    /// Take over a new channel.
    AddChannel {
        /// Its id.
        id: ChannelId,
        /// Its memory and eventfds.
        mem: Box<ChannelMem>,
        /// The flow limits of its application.
        quota: FlowQuota,
        /// Its connect budgets (and its application's).
        connects: ChannelConnects<channel::Flow>,
        /// Answered once the engine serves the channel.
        reply: Sender<()>,
    },
    /// Close a channel: stop listening on its ports, set its `closed` word, and either detach it
    /// gracefully (`linger`: carry out the requests in its ring, close its flows, abort those
    /// still open after the linger; docs/CHANNEL.md §5) or abort its flows at once (`None`).
    CloseChannel {
        /// The channel.
        id: ChannelId,
        /// The code written to the channel header.
        code: CloseCode,
        /// Graceful detach with this linger, or abort (`None`).
        linger: Option<Duration>,
        /// Answered once done (if given).
        reply: Option<Sender<()>>,
    },
    /// A channel of this engine joins the listen group of a Machnet port (the core listens on
    /// it from the first member on).
    Listen {
        /// The channel accepted flows are announced on.
        channel: ChannelId,
        /// The port.
        port: u16,
        /// The outcome.
        reply: Sender<Result<(), EngineListenError>>,
    },
    /// A channel of this engine stops listening on a port (established flows are unaffected;
    /// the core stops listening once the port has no member on this engine).
    Unlisten {
        /// The channel.
        channel: ChannelId,
        /// The port.
        port: u16,
        /// Answered once done.
        reply: Sender<()>,
    },
    /// Another engine of this host listens on `port` (or stopped, with `listening: false`).
    HostListener {
        /// The port.
        port: u16,
        /// The listening engine.
        engine: u16,
        /// Added or removed.
        listening: bool,
        /// Answered once done.
        reply: Sender<()>,
    },
    /// Report statistics.
    Report {
        /// The report.
        reply: Sender<EngineReport>,
    },
    /// A statistics snapshot with at most `max_channels` channels and `max_flows` flows listed
    /// (built when the engine next runs its commands; bounded work).
    Stats {
        /// Most channels to describe.
        max_channels: usize,
        /// Most flows to describe.
        max_flows: usize,
        /// The snapshot.
        reply: Sender<crate::stat::collect::EngineSnapshot>,
    },
    /// Detach every channel with [`CloseCode::Shutdown`], deliver what their apps sent within
    /// the shutdown linger (aborting what is left then), and exit the thread.
    Shutdown,
}

/// Why an engine refused to listen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineListenError {
    /// The channel is not (or no longer) on this engine.
    #[error("no such channel on this engine")]
    NoSuchChannel,
    /// The core refused the port.
    #[error(transparent)]
    Core(#[from] ListenError),
}

/// The engine thread is gone (exited or stuck).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("engine {0} is not responding")]
pub struct EngineGone(pub u16);

/// Something an engine tells the control thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The engine closed a channel on its own (the app broke the channel protocol).
    ChannelClosed {
        /// The channel.
        channel: ChannelId,
        /// Why.
        code: CloseCode,
    },
}

/// The sending side of the notice queue, with the control thread's wake-up eventfd.
#[derive(Clone)]
pub struct Notifier {
    tx: Sender<Notice>,
    wake: Arc<EventFd>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier")
    }
}

impl Notifier {
    /// A notice queue: the notifier for engines, the receiver and eventfd for the control thread.
    pub fn new() -> std::io::Result<(Notifier, Receiver<Notice>, Arc<EventFd>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(new_eventfd()?);
        Ok((
            Notifier {
                tx,
                wake: wake.clone(),
            },
            rx,
            wake,
        ))
    }

    /// Sends a notice and wakes the control thread.
    pub fn notify(&self, n: Notice) {
        if self.tx.send(n).is_ok() {
            let _ = self.wake.write(1);
        }
    }
}

pub(crate) fn new_eventfd() -> std::io::Result<EventFd> {
    EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC).map_err(Into::into)
}

/// What an engine thread runs with.
pub struct EngineParams {
    /// The core's configuration (engine id, pools, limits).
    pub core: EngineConfig,
    /// Seed of the core's random choices.
    pub seed: u64,
    /// Idle behaviour.
    pub idle_mode: IdleMode,
    /// Busy-poll window before sleeping (sleep mode).
    pub busy_poll: Duration,
    /// Statistics log interval.
    pub stats_interval: Option<Duration>,
    /// How long a stopping engine keeps delivering what apps sent (zero: abort at once).
    pub shutdown_linger: Duration,
    /// The sidecar's clock.
    pub clock: Clock,
    /// The sidecar's same-host flows (`None`: `--same-host-flows false`).
    pub local: Option<Arc<local::LocalHub>>,
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The core refused the configuration.
    #[error("engine configuration: {0}")]
    Config(#[from] machnet_core::ConfigError),
    /// A descriptor (epoll, eventfd, timerfd) could not be created.
    #[error("engine setup: {0}")]
    Io(#[from] std::io::Error),
    /// The engine would send datagrams larger than its datapath carries.
    #[error("engine datagrams of {engine} bytes exceed the datapath's maximum of {datapath}")]
    DatagramTooLarge {
        /// The engine's `max_udp_payload`.
        engine: usize,
        /// The datapath's `max_datagram`.
        datapath: usize,
    },
}

/// A cheap, clonable way to talk to an engine thread.
#[derive(Clone)]
pub struct EngineClient {
    id: u16,
    tx: Sender<Command>,
    wake: Arc<EventFd>,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient")
            .field("id", &self.id)
            .finish()
    }
}

impl EngineClient {
    /// The engine's id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Queues a command and wakes the engine.
    pub fn send(&self, cmd: Command) -> Result<(), EngineGone> {
        self.tx.send(cmd).map_err(|_| EngineGone(self.id))?;
        let _ = self.wake.write(1);
        Ok(())
    }

    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, EngineGone> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(make(tx))?;
        rx.recv_timeout(CALL_TIMEOUT)
            .map_err(|_| EngineGone(self.id))
    }

    /// Hands a channel, whose flows count against `quota` and connects against `connects`, to
    /// the engine; returns once the engine serves it.
    pub fn add_channel(
        &self,
        id: ChannelId,
        mem: ChannelMem,
        quota: FlowQuota,
        connects: ChannelConnects<channel::Flow>,
    ) -> Result<(), EngineGone> {
        self.call(|reply| Command::AddChannel {
            id,
            mem: Box::new(mem),
            quota,
            connects,
            reply,
        })
    }

    /// Closes a channel (gracefully with `linger`, else aborting its flows) and waits until the
    /// engine has taken the command.
    pub fn close_channel(
        &self,
        id: ChannelId,
        code: CloseCode,
        linger: Option<Duration>,
    ) -> Result<(), EngineGone> {
        self.call(|reply| Command::CloseChannel {
            id,
            code,
            linger,
            reply: Some(reply),
        })
    }

    /// Listens on `port` for `channel`.
    pub fn listen(
        &self,
        channel: ChannelId,
        port: u16,
    ) -> Result<Result<(), EngineListenError>, EngineGone> {
        self.call(|reply| Command::Listen {
            channel,
            port,
            reply,
        })
    }

    /// `channel` stops listening on `port`.
    pub fn unlisten(&self, channel: ChannelId, port: u16) -> Result<(), EngineGone> {
        self.call(|reply| Command::Unlisten {
            channel,
            port,
            reply,
        })
    }

    /// Records that `engine` listens (or stopped listening) on `port`.
    pub fn host_listener(&self, port: u16, engine: u16, listening: bool) -> Result<(), EngineGone> {
        self.call(|reply| Command::HostListener {
            port,
            engine,
            listening,
            reply,
        })
    }

    /// A statistics snapshot.
    pub fn report(&self) -> Result<EngineReport, EngineGone> {
        self.call(|reply| Command::Report { reply })
    }

    /// A snapshot for `machnet stat`: counters, and at most `max_channels` channels and
    /// `max_flows` flows described.
    pub fn stats(
        &self,
        max_channels: usize,
        max_flows: usize,
    ) -> Result<crate::stat::collect::EngineSnapshot, EngineGone> {
        self.call(|reply| Command::Stats {
            max_channels,
            max_flows,
            reply,
        })
    }
}

/// An engine thread.
pub struct EngineHandle {
    client: EngineClient,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("id", &self.client.id)
            .finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Starts an engine thread.
    pub fn spawn(
        params: EngineParams,
        datapath: Box<dyn Datapath>,
        notifier: Notifier,
    ) -> Result<EngineHandle, SpawnError> {
        let id = params.core.engine_id;
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake = Arc::new(new_eventfd()?);
        let worker = worker::Worker::new(params, datapath, rx, wake.clone(), notifier)?;
        let thread = std::thread::Builder::new()
            .name(format!("machnet-engine-{id}"))
            .spawn(move || worker.run())?;
        Ok(EngineHandle {
            client: EngineClient { id, tx, wake },
            thread: Some(thread),
        })
    }

    /// A client for this engine.
    pub fn client(&self) -> &EngineClient {
        &self.client
    }

    /// Asks the engine to shut down (see [`Command::Shutdown`]) without waiting.
    pub fn request_shutdown(&self) {
        let _ = self.client.send(Command::Shutdown);
    }

    /// Asks the engine to shut down and waits for the thread.
    pub fn shutdown(&mut self) {
        self.request_shutdown();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(engine = self.client.id, "engine thread panicked");
            }
        }
    }

    /// Whether the thread has exited.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
