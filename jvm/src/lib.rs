//! The native half of the JVM binding (`io.github.machnet-rs:machnet`): a uniffi component over
//! the Rust client crate (rust-client/), from which `uniffi-bindgen` generates the Kotlin (JNA)
//! layer in package `io.github.machnetrs.machnet.ffi`. The public API for Java and Kotlin is the
//! hand-written facade in `jvm/src/main/kotlin` (blocking calls, `CompletableFuture`s, one
//! exception class per error kind); this layer is what it calls.
//!
//! - A [`Channel`] is the client's `SharedChannel` (the channel core the C ABI, Python and
//!   Node.js use): any number of JVM threads may use it at once, blocking calls never hold its
//!   lock while they sleep, and closing it wakes every sleeper.
//! - Every failure is one [`MachnetError`] variant per `machnet::ErrorKind`, carrying the kind's
//!   code name (`ERR_MACHNET_…`, as every binding reports it), the errno the C ABI would report,
//!   the close reason (snake_case, as Python reports it) and the message.
//! - Timeouts are milliseconds (`None`: wait as long as needed); a receive that times out
//!   returns `None`, not an error (the facade turns that into its timeout exception where the
//!   call promises a message).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use machnet::{
    ClientError, CloseCode, ErrorKind, Event, RequestError, RequestKind, SendError, SharedChannel,
    SharedError,
};

uniffi::setup_scaffolding!("machnet");

// ----- errors -----

/// Why a call failed: one variant per error kind of the client (`machnet::ErrorKind`). Every
/// variant carries the same fields.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[allow(missing_docs)] // the variants are the kinds, documented on `machnet::ErrorKind`
pub enum MachnetError {
    #[error("{detail}")]
    WouldBlock {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    TimedOut {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    Interrupted {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    InvalidArgument {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    MessageTooLarge {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    BufferTooSmall {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    FlowClosed {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    FlowReset {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    ConnectionRefused {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    ChannelClosed {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    SidecarUnreachable {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    SidecarGone {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    Refused {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    PermissionDenied {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    VersionMismatch {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    Exhausted {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    AddressInUse {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    Protocol {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
    #[error("{detail}")]
    Io {
        detail: String,
        code: String,
        errno: i32,
        reason: Option<String>,
    },
}

impl MachnetError {
    /// The error of `kind` (the one table from the client's error model to this enum).
    fn new(kind: ErrorKind, detail: String, errno: i32, reason: Option<CloseCode>) -> Self {
        let code = kind.code_name().to_string();
        let reason = reason.map(close_code_name);
        macro_rules! build {
            ($($k:ident),*) => {
                match kind {
                    $(ErrorKind::$k => MachnetError::$k { detail, code, errno, reason },)*
                    // ErrorKind is non_exhaustive: a kind added later is reported as I/O
                    // with its own code name.
                    _ => MachnetError::Io { detail, code, errno, reason },
                }
            };
        }
        build!(
            WouldBlock,
            TimedOut,
            Interrupted,
            InvalidArgument,
            MessageTooLarge,
            BufferTooSmall,
            FlowClosed,
            FlowReset,
            ConnectionRefused,
            ChannelClosed,
            SidecarUnreachable,
            SidecarGone,
            Refused,
            PermissionDenied,
            VersionMismatch,
            Exhausted,
            AddressInUse,
            Protocol,
            Io
        )
    }

    /// An error of `kind` raised by this binding itself (argument checks).
    fn of_kind(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self::new(kind, detail.into(), kind.errno(), None)
    }
}

/// Any client error, through the one error model (`ClientError`).
fn client_err(e: impl ClientError) -> MachnetError {
    MachnetError::new(e.kind(), e.to_string(), e.errno(), e.close_code())
}

/// A failed shared-channel call; a detached channel reads "the channel is closed".
fn shared_err<E: ClientError>(e: SharedError<E>) -> MachnetError {
    match e {
        SharedError::Detached => closed_error(),
        e => client_err(e),
    }
}

fn closed_error() -> MachnetError {
    MachnetError::new(
        ErrorKind::ChannelClosed,
        "the channel is closed".into(),
        ErrorKind::ChannelClosed.errno(),
        Some(CloseCode::Detached),
    )
}

/// The snake_case name of a close code (`"refused"`, `"reset"`, ...), as Python reports it.
fn close_code_name(c: CloseCode) -> String {
    let camel = format!("{c:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// A deadline `ms` milliseconds from now (`None`, or too far to represent: no deadline).
fn deadline(ms: Option<u64>) -> Option<Instant> {
    ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

// ----- the attachment -----

/// The library's version (`CARGO_PKG_VERSION`), to check the jar's classes and library agree.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The socket path `attach` uses without one: `$MACHNET_SOCKET`, else
/// `/run/machnet/machnet.sock`.
#[uniffi::export]
pub fn default_socket_path() -> String {
    machnet::default_socket_path().display().to_string()
}

/// Describes a close code by its snake_case name (`"reset"` → "reset by the remote host");
/// `None` if unknown.
#[uniffi::export]
pub fn describe_close_code(name: String) -> Option<String> {
    (0..=u8::MAX)
        .filter_map(CloseCode::from_u8)
        .find(|c| close_code_name(*c) == name)
        .map(|c| c.description().to_string())
}

/// A process's attachment to the sidecar (its control connection).
#[derive(uniffi::Object)]
pub struct Machnet {
    inner: machnet::Machnet,
    path: String,
}

#[uniffi::export]
impl Machnet {
    /// Attaches to the sidecar at `socket_path` (`None`: `$MACHNET_SOCKET` or the default).
    #[uniffi::constructor]
    pub fn attach(socket_path: Option<String>) -> Result<Arc<Self>, MachnetError> {
        let path = match socket_path {
            None => machnet::default_socket_path(),
            Some(p) if p.is_empty() || p.contains('\0') => {
                return Err(MachnetError::of_kind(
                    ErrorKind::InvalidArgument,
                    format!("invalid socket path {p:?}"),
                ))
            }
            Some(p) => p.into(),
        };
        let inner = machnet::Machnet::attach_at(&path).map_err(client_err)?;
        Ok(Arc::new(Machnet {
            inner,
            path: path.display().to_string(),
        }))
    }

    /// The control socket path.
    pub fn socket_path(&self) -> String {
        self.path.clone()
    }

    /// The sidecar's IPv4 address (the local address of every flow).
    pub fn local_ip(&self) -> String {
        self.inner.local_ip().to_string()
    }

    /// Number of sidecar engines.
    pub fn engines(&self) -> u16 {
        self.inner.engines()
    }

    /// Largest message the sidecar carries, in bytes.
    pub fn max_message_len(&self) -> u32 {
        self.inner.max_message_len()
    }

    /// Whether the sidecar is gone (the control connection hung up). Never blocks.
    pub fn is_sidecar_gone(&self) -> bool {
        self.inner.is_sidecar_gone()
    }

    /// Opens a channel on `engine` (`None`: the sidecar picks one).
    pub fn open_channel(&self, engine: Option<u16>) -> Result<Arc<Channel>, MachnetError> {
        let ch = self.inner.open_channel(engine).map_err(client_err)?;
        let (id, engine, max) = (ch.id(), ch.engine(), ch.max_message_len());
        let shared = SharedChannel::new(ch).map_err(|e| {
            MachnetError::new(
                ErrorKind::Io,
                format!("cannot share the channel: {e}"),
                e.raw_os_error().unwrap_or(libc_eio()),
                None,
            )
        })?;
        Ok(Arc::new(Channel {
            shared,
            id,
            engine,
            max_message_len: max,
        }))
    }
}

fn libc_eio() -> i32 {
    ErrorKind::Io.errno()
}

// ----- flows, messages, events -----

/// One Machnet connection: a handle valid on the channel that created or accepted it.
#[derive(uniffi::Object, Debug, PartialEq, Eq, Hash)]
#[uniffi::export(Eq, Hash, Display)]
pub struct Flow(machnet::Flow);

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Flow(handle={}, local={}, remote={})",
            self.0.handle(),
            self.0.local_addr(),
            self.0.remote_addr()
        )
    }
}

#[uniffi::export]
impl Flow {
    /// The sidecar's handle of the flow (unique within its channel, never 0).
    pub fn handle(&self) -> u32 {
        self.0.handle()
    }
    /// The local (sidecar) IPv4 address.
    pub fn local_ip(&self) -> String {
        self.0.local_ip().to_string()
    }
    /// The local Machnet port.
    pub fn local_port(&self) -> u16 {
        self.0.local_port()
    }
    /// The remote IPv4 address.
    pub fn remote_ip(&self) -> String {
        self.0.remote_ip().to_string()
    }
    /// The remote Machnet port.
    pub fn remote_port(&self) -> u16 {
        self.0.remote_port()
    }
}

/// A received message and the flow it arrived on.
#[derive(uniffi::Record)]
pub struct Message {
    /// The flow (equal to the one `connect` returned, or an accepted one).
    pub flow: Arc<Flow>,
    /// The flow's handle (saves a call to `Flow::handle`).
    pub handle: u32,
    /// The message, whole.
    pub data: Vec<u8>,
}

/// What happened to a flow.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEventKind {
    /// A listener of this channel accepted the flow (`port`: the port it listens on).
    Accepted,
    /// The peer closed the flow gracefully: no further message will arrive on it.
    PeerClosed,
    /// The flow was reset (the peer aborted or went away).
    Reset,
    /// The peer stopped answering.
    TimedOut,
    /// The peer refused the flow.
    Refused,
    /// The flow ended (gracefully, or for the `reason` given).
    Closed,
    /// The sidecar could not carry out a request on the flow (`request`, `reason`).
    RequestFailed,
}

/// A flow event.
#[derive(uniffi::Record)]
pub struct FlowEvent {
    /// What happened.
    pub kind: FlowEventKind,
    /// The flow.
    pub flow: Arc<Flow>,
    /// The flow's handle.
    pub handle: u32,
    /// The close reason's snake_case name (`graceful`, `reset`, ...), if any.
    pub reason: Option<String>,
    /// `Accepted`: the listening port.
    pub port: Option<u16>,
    /// `RequestFailed`: `send`, `close`, `abort` or `other`.
    pub request: Option<String>,
}

/// A flow event of the client as this binding reports it (`None`: a message, which receives
/// hand out instead).
fn flow_event(ev: Event) -> Option<FlowEvent> {
    let make = |kind, flow: machnet::Flow, reason: Option<CloseCode>, port, request| FlowEvent {
        kind,
        handle: flow.handle(),
        flow: Arc::new(Flow(flow)),
        reason: reason.map(close_code_name),
        port,
        request,
    };
    Some(match ev {
        Event::Message { .. } => return None,
        Event::Accepted { flow, port } => {
            make(FlowEventKind::Accepted, flow, None, Some(port), None)
        }
        Event::PeerClosed { flow } => make(FlowEventKind::PeerClosed, flow, None, None, None),
        Event::Closed { flow, reason } => {
            let kind = match reason {
                Some(CloseCode::Reset) => FlowEventKind::Reset,
                Some(CloseCode::TimedOut) => FlowEventKind::TimedOut,
                Some(CloseCode::Refused) => FlowEventKind::Refused,
                _ => FlowEventKind::Closed,
            };
            make(kind, flow, reason, None, None)
        }
        Event::RequestFailed {
            flow,
            request,
            reason,
        } => {
            let req = match request {
                RequestKind::Send => "send",
                RequestKind::Close => "close",
                RequestKind::Abort => "abort",
                _ => "other",
            };
            make(
                FlowEventKind::RequestFailed,
                flow,
                reason,
                None,
                Some(req.to_string()),
            )
        }
        // Event is non_exhaustive: an event this binding does not know yet is skipped.
        _ => return None,
    })
}

// ----- the channel -----

/// A shared-memory channel to one sidecar engine, usable from any number of threads.
#[derive(uniffi::Object)]
pub struct Channel {
    shared: SharedChannel,
    id: u32,
    engine: u16,
    max_message_len: u32,
}

impl Channel {
    /// Runs `f` on the channel (calls that wait inside the channel, or not at all).
    fn with<T, E: ClientError>(
        &self,
        f: impl FnOnce(&mut machnet::Channel) -> Result<T, E>,
    ) -> Result<T, MachnetError> {
        match self.shared.with(f) {
            Ok(r) => r.map_err(client_err),
            Err(_) => Err(closed_error()),
        }
    }

    fn send_until(
        &self,
        flow: &Flow,
        data: &[u8],
        until: Option<Instant>,
    ) -> Result<bool, MachnetError> {
        match self.shared.send(&flow.0, &[data], until) {
            Ok(()) => Ok(true),
            Err(SharedError::Op(SendError::WouldBlock)) => Ok(false),
            Err(e) => Err(shared_err(e)),
        }
    }
}

fn port_arg(port: u16) -> Result<u16, MachnetError> {
    if port == 0 {
        return Err(MachnetError::of_kind(
            ErrorKind::InvalidArgument,
            "port must be in 1..=65535, got 0",
        ));
    }
    Ok(port)
}

#[uniffi::export]
impl Channel {
    /// The sidecar's id of this channel.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The engine serving this channel.
    pub fn engine(&self) -> u16 {
        self.engine
    }

    /// Largest message this channel carries, in bytes.
    pub fn max_message_len(&self) -> u32 {
        self.max_message_len
    }

    /// Whether `close` or `abort` was called.
    pub fn is_closed(&self) -> bool {
        self.shared.with(|_| ()).is_err()
    }

    /// Accepts flows to `port` of the sidecar's address on this channel.
    pub fn listen(&self, port: u16) -> Result<(), MachnetError> {
        let port = port_arg(port)?;
        self.with(|ch| ch.listen(port))
    }

    /// Stops accepting flows to `port`.
    pub fn unlisten(&self, port: u16) -> Result<(), MachnetError> {
        let port = port_arg(port)?;
        self.with(|ch| ch.unlisten(port))
    }

    /// Opens a flow to `ip`:`port`, waiting up to `timeout_ms` (`None`: the client's default,
    /// 30 s) for the peer to answer.
    pub fn connect(
        &self,
        ip: String,
        port: u16,
        timeout_ms: Option<u64>,
    ) -> Result<Arc<Flow>, MachnetError> {
        let ip: Ipv4Addr = ip.parse().map_err(|_| {
            MachnetError::of_kind(
                ErrorKind::InvalidArgument,
                format!("not an IPv4 address: {ip:?}"),
            )
        })?;
        let port = port_arg(port)?;
        // Longer than ~49 days means "as long as needed" (and never overflows an Instant).
        let timeout = timeout_ms.map_or(machnet::DEFAULT_CONNECT_TIMEOUT, |ms| {
            Duration::from_millis(ms.min(u64::from(u32::MAX)))
        });
        self.with(|ch| ch.connect_timeout(ip, port, timeout))
            .map(|f| Arc::new(Flow(f)))
    }

    /// Sends `data` as one message on `flow` (zero-copy from a direct `ByteBuffer`: its
    /// bytes between position and limit), waiting for ring space as long as needed.
    pub fn send(&self, flow: &Arc<Flow>, data: &[u8]) -> Result<(), MachnetError> {
        self.send_until(flow, data, None).map(|_| ())
    }

    /// Like `send`, waiting for ring space up to `timeout_ms` (0: not at all). Returns whether
    /// the message was sent (`false`: the ring stayed full).
    pub fn send_timeout(
        &self,
        flow: &Arc<Flow>,
        data: &[u8],
        timeout_ms: u64,
    ) -> Result<bool, MachnetError> {
        // A timeout too long for an Instant waits as long as needed.
        self.send_until(flow, data, deadline(Some(timeout_ms)))
    }

    /// The next message, waiting up to `timeout_ms` (`None`: as long as needed; 0: only a
    /// look). `None`: nothing came in time.
    pub fn recv(&self, timeout_ms: Option<u64>) -> Result<Option<Message>, MachnetError> {
        let until = deadline(timeout_ms);
        match self.shared.recv(until) {
            Ok(Some((flow, data))) => Ok(Some(Message {
                handle: flow.handle(),
                flow: Arc::new(Flow(flow)),
                data,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(shared_err(e)),
        }
    }

    /// The next message copied into `buf` (zero-copy into a direct `ByteBuffer`, from its
    /// position), waiting as `recv` does. Returns the message's flow and length; `None`:
    /// nothing came in time. A message longer than `buf` stays queued: `BufferTooSmall` tells
    /// its size.
    pub fn recv_into(
        &self,
        buf: &mut [u8],
        timeout_ms: Option<u64>,
    ) -> Result<Option<Received>, MachnetError> {
        let until = deadline(timeout_ms);
        match self.shared.recv_into(buf, until) {
            Ok(Some((flow, len))) => Ok(Some(Received {
                handle: flow.handle(),
                flow: Arc::new(Flow(flow)),
                len: len as u32,
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(shared_err(e)),
        }
    }

    /// The next flow event (accepted, peer closed, reset, timed out, refused, closed, request
    /// failed), waiting up to `timeout_ms` as `recv` does. Events behind a message wait until
    /// a receive took it. `None`: none came in time.
    pub fn next_event(&self, timeout_ms: Option<u64>) -> Result<Option<FlowEvent>, MachnetError> {
        let until = deadline(timeout_ms);
        loop {
            match self.shared.next_event(until) {
                Ok(Some(ev)) => {
                    if let Some(ev) = flow_event(ev) {
                        return Ok(Some(ev));
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(shared_err(e)),
            }
        }
    }

    /// Where `flow` stands: `open`, `peer_closed`, `closing` or `closed`.
    pub fn flow_status(&self, flow: &Arc<Flow>) -> Result<String, MachnetError> {
        let st = self
            .shared
            .with(|ch| ch.flow_status(&flow.0))
            .map_err(|_| closed_error())?;
        Ok(match st {
            machnet::FlowStatus::Open => "open",
            machnet::FlowStatus::PeerClosed => "peer_closed",
            machnet::FlowStatus::Closing => "closing",
            _ => "closed",
        }
        .to_string())
    }

    /// Closes `flow` gracefully (what was sent is delivered first).
    pub fn close_flow(&self, flow: &Arc<Flow>) -> Result<(), MachnetError> {
        self.with(|ch| ch.close(&flow.0))
    }

    /// Aborts `flow` (the peer sees a reset).
    pub fn abort_flow(&self, flow: &Arc<Flow>) -> Result<(), MachnetError> {
        self.with(|ch| ch.abort(&flow.0))
    }

    /// Makes every call sleeping on this channel right now fail with `Interrupted`.
    pub fn interrupt(&self) {
        self.shared.interrupt();
    }

    /// Detaches the channel gracefully: the sidecar delivers what was sent, then closes its
    /// flows. Calls sleeping on the channel fail with `ChannelClosed`. Closing twice does
    /// nothing.
    pub fn close_channel(&self) -> Result<(), MachnetError> {
        self.detach(machnet::Channel::close_channel)
    }

    /// Detaches the channel and aborts its flows at once (their peers see a reset).
    pub fn abort_channel(&self) -> Result<(), MachnetError> {
        self.detach(machnet::Channel::abort_channel)
    }
}

impl Channel {
    fn detach(
        &self,
        release: fn(machnet::Channel) -> Result<(), RequestError>,
    ) -> Result<(), MachnetError> {
        match self.shared.detach() {
            None => Ok(()),
            Some(ch) => release(ch).or_else(|e| match e {
                // A dead sidecar (or a broken control connection) releases the channel itself
                // when the connection closes: nothing is left to do.
                RequestError::SidecarGone | RequestError::Broken(_) => Ok(()),
                e => Err(client_err(e)),
            }),
        }
    }
}

/// What `recv_into` received: the flow and the message length.
#[derive(uniffi::Record)]
pub struct Received {
    /// The flow the message arrived on.
    pub flow: Arc<Flow>,
    /// The flow's handle.
    pub handle: u32,
    /// The message length (the bytes written into the buffer).
    pub len: u32,
}
