//! One shared-memory channel: a thread's data path to one sidecar engine (docs/CHANNEL.md §3–4).

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::IoSlice;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use machnet_channel::ring::record_footprint;
use machnet_channel::{
    ChannelLayout, ChannelViews, CloseCode, ConnectRequest, Consumer, FlowInfo, Producer,
    PushError, RecordHeader, RecordKind, RingError, HEADER_PAGE,
};

use crate::error::{
    CloseError, ConnectError, Fault, ListenError, OpenChannelError, RecvError, RequestError,
    SendError,
};
use crate::machnet::Machnet;
use crate::sys::{self, Woken};

/// How long [`Channel::connect`] waits for the sidecar's verdict. The sidecar itself gives up
/// much earlier (after its SYN retries) and answers `ConnectFailed`; this is only a safety net.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many recently closed flows a channel remembers to explain later sends on them.
const GRAVEYARD: usize = 4096;

/// How often non-blocking calls that find nothing check whether the sidecar is still there.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(10);

/// Process-wide source of channel tokens (so a [`Flow`] knows its channel).
static NEXT_TOKEN: AtomicU32 = AtomicU32::new(1);

/// A flow: one Machnet connection, identified by a channel-local handle.
///
/// A small `Copy` value. It is only meaningful on the [`Channel`] that created or accepted it;
/// other channels refuse it ([`SendError::WrongChannel`]). Addresses are host byte order values
/// (`Ipv4Addr`, `u16`); [`Flow::local_ip_u32`] and [`Flow::remote_ip_u32`] give the IP as the
/// host-order `u32` of the C API's `MachnetFlow_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    channel: u32,
    handle: u32,
    info: FlowInfo,
}

impl std::hash::Hash for Flow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.channel.hash(state);
        self.handle.hash(state);
    }
}

impl Flow {
    /// The sidecar's handle of this flow (unique within its channel, never 0).
    pub fn handle(&self) -> u32 {
        self.handle
    }
    /// The local (sidecar) IPv4 address.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.info.local_ip
    }
    /// The local Machnet port.
    pub fn local_port(&self) -> u16 {
        self.info.local_port
    }
    /// The remote IPv4 address.
    pub fn remote_ip(&self) -> Ipv4Addr {
        self.info.remote_ip
    }
    /// The remote Machnet port.
    pub fn remote_port(&self) -> u16 {
        self.info.remote_port
    }
    /// The local IP as a host byte order `u32` (`MachnetFlow_t::src_ip`).
    pub fn local_ip_u32(&self) -> u32 {
        u32::from(self.info.local_ip)
    }
    /// The remote IP as a host byte order `u32` (`MachnetFlow_t::dst_ip`).
    pub fn remote_ip_u32(&self) -> u32 {
        u32::from(self.info.remote_ip)
    }
    /// Local address and port.
    pub fn local_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.info.local_ip, self.info.local_port)
    }
    /// Remote address and port.
    pub fn remote_addr(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.info.remote_ip, self.info.remote_port)
    }
    /// The flow's 4-tuple.
    pub fn info(&self) -> FlowInfo {
        self.info
    }
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "flow {} ({} -> {})",
            self.handle,
            self.local_addr(),
            self.remote_addr()
        )
    }
}

/// A request kind named by [`Event::RequestFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// A message send.
    Send,
    /// A graceful close.
    Close,
    /// An abort.
    Abort,
    /// A kind this library does not know (the raw value).
    Other(u32),
}

impl RequestKind {
    fn from_aux(aux: u32) -> Self {
        match u8::try_from(aux).ok().and_then(RecordKind::from_u8) {
            Some(RecordKind::Send) => RequestKind::Send,
            Some(RecordKind::Close) => RequestKind::Close,
            Some(RecordKind::Abort) => RequestKind::Abort,
            _ => RequestKind::Other(aux),
        }
    }
}

/// Something that happened on a channel, as returned by [`Channel::next_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message arrived on `flow`.
    Message {
        /// The flow.
        flow: Flow,
        /// The message (never empty).
        data: Vec<u8>,
    },
    /// A listener of this channel accepted a new flow.
    Accepted {
        /// The new flow.
        flow: Flow,
        /// The port it was accepted on.
        port: u16,
    },
    /// The peer closed `flow`: no further message will arrive on it.
    PeerClosed {
        /// The flow.
        flow: Flow,
    },
    /// `flow` is gone; sends on it fail with [`SendError::FlowClosed`].
    Closed {
        /// The flow.
        flow: Flow,
        /// Why (`None`: a code this library does not know).
        reason: Option<CloseCode>,
    },
    /// The sidecar could not carry out a request on `flow` (it raced with the flow's end, for
    /// instance): the message was not sent.
    RequestFailed {
        /// The flow.
        flow: Flow,
        /// Which request failed.
        request: RequestKind,
        /// Why.
        reason: Option<CloseCode>,
    },
}

impl Event {
    /// The flow the event is about.
    pub fn flow(&self) -> &Flow {
        match self {
            Event::Message { flow, .. }
            | Event::Accepted { flow, .. }
            | Event::PeerClosed { flow }
            | Event::Closed { flow, .. }
            | Event::RequestFailed { flow, .. } => flow,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    Open,
    /// The application called close or abort.
    Closing,
}

/// Where a flow stands, as far as the notifications read so far tell
/// ([`Channel::flow_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowStatus {
    /// Open both ways.
    Open,
    /// The peer closed its side (no more messages will arrive); this side may still send.
    PeerClosed,
    /// This application called [`Channel::close`] or [`Channel::abort`]; the flow is not gone
    /// yet.
    Closing,
    /// Gone, with the reason if the channel still remembers it.
    Closed(Option<CloseCode>),
}

struct FlowEntry {
    info: FlowInfo,
    state: FlowState,
    peer_closed: bool,
}

/// One consumed notification, translated.
enum Step {
    /// The ring is empty.
    Empty,
    /// A record was consumed that the caller need not see.
    Skipped,
    Event(Event),
    /// A message copied into the caller's buffer.
    Into(Flow, usize),
    /// The next message does not fit the caller's buffer (not consumed).
    TooSmall(usize),
    /// The answer to a connect request.
    Connect {
        id: u32,
        result: Result<Flow, Option<CloseCode>>,
    },
}

/// What a receive loop looks for.
pub(crate) enum Want<'b> {
    Event,
    Message,
    Into(&'b mut [u8]),
}

/// What a receive loop found.
pub(crate) enum Got {
    Event(Event),
    Message(Flow, Vec<u8>),
    Into(Flow, usize),
}

/// Whether a push may wait for ring space.
#[derive(Clone, Copy)]
pub(crate) enum Block {
    No,
    Until(Option<Instant>),
}

/// Why a push did not happen.
pub(crate) enum PushFail {
    WouldBlock,
    TimedOut,
    Fault(Fault),
}

impl From<Fault> for PushFail {
    fn from(f: Fault) -> Self {
        PushFail::Fault(f)
    }
}

/// A connect in progress, from [`Channel::start_connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectTicket(u32);

impl ConnectTicket {
    /// The request's id (what bindings hand to their callers).
    pub fn id(self) -> u32 {
        self.0
    }

    /// The ticket of request `id` (as returned by [`ConnectTicket::id`]).
    pub fn from_id(id: u32) -> Self {
        ConnectTicket(id)
    }
}

/// A shared-memory channel to one sidecar engine.
///
/// Opened with [`Machnet::open_channel`]. A channel is used by one thread at a time: it is
/// `Send` (it can move to another thread) but not `Sync`, and its operations take `&mut self`.
/// Open one channel per thread that does network I/O; flows belong to the channel that created
/// or accepted them.
///
/// Dropping the channel (or [`Channel::close_channel`]) detaches it gracefully, as does the
/// process exiting: the sidecar still delivers every message whose `send` returned, then
/// closes the channel's flows (within its linger) and releases its memory
/// (docs/CHANNEL.md §5). [`Channel::abort_channel`] aborts the flows instead.
///
/// ```compile_fail
/// fn shared_between_threads<T: Sync>() {}
/// shared_between_threads::<machnet::Channel>(); // a Channel is not Sync
/// ```
pub struct Channel {
    machnet: Machnet,
    id: u32,
    engine: u16,
    token: u32,
    max_message_len: u32,
    pub(crate) tx: Producer,
    pub(crate) rx: Consumer,
    views: ChannelViews,
    flows: HashMap<u32, FlowEntry>,
    by_addrs: HashMap<(SocketAddrV4, SocketAddrV4), u32>,
    /// Recently closed flows and why, to explain sends on them.
    graveyard: VecDeque<(u32, Option<CloseCode>)>,
    /// Notifications read while waiting for a connect answer, not yet delivered.
    pending: VecDeque<Event>,
    next_request: u32,
    /// Connect requests whose caller gave up; a late success is aborted.
    abandoned: HashSet<u32>,
    /// Close/abort requests to write when ring space allows.
    deferred: VecDeque<(RecordKind, u32)>,
    /// Whether message-only receives close flows whose peer closed (see `set_auto_close`).
    auto_close: bool,
    /// Set once the sidecar broke the channel protocol: every later call fails with it.
    poisoned: Option<String>,
    busy_poll: Option<Duration>,
    last_liveness: Instant,
    detached: bool,
    #[cfg(feature = "tokio")]
    pub(crate) async_fds: Option<crate::tokio_support::AsyncFds>,
    // Keep the descriptors and the mapping after everything that refers to them.
    pub(crate) app_efd: OwnedFd,
    sidecar_efd: OwnedFd,
    _map: memmap2::MmapRaw,
    _not_sync: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("engine", &self.engine)
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Builds a channel from the descriptors the sidecar sent, validating all of them.
    pub(crate) fn from_parts(
        machnet: Machnet,
        id: u32,
        engine: u16,
        len: u64,
        memfd: OwnedFd,
        app_efd: OwnedFd,
        sidecar_efd: OwnedFd,
    ) -> Result<Channel, OpenChannelError> {
        let bad = |s: String| OpenChannelError::BadDescriptors(s);
        let size = sys::file_size(memfd.as_fd())
            .map_err(|e| bad(format!("cannot stat the channel memory: {e}")))?;
        if size != len {
            return Err(bad(format!(
                "channel memory is {size} bytes, the sidecar announced {len}"
            )));
        }
        if len < HEADER_PAGE || usize::try_from(len).is_err() {
            return Err(bad(format!("impossible channel length {len}")));
        }
        // Without F_SEAL_SHRINK the file could be truncated under the mapping, turning accesses
        // into SIGBUS (docs/CHANNEL.md §2).
        let seals = sys::seals(memfd.as_raw_fd())
            .map_err(|e| bad(format!("channel memory is not a sealable memfd: {e}")))?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("channel memory is not sealed against shrinking".into()));
        }
        let map = memmap2::MmapOptions::new()
            .len(len as usize)
            .map_raw(&memfd)
            .map_err(OpenChannelError::Map)?;
        drop(memfd);
        let mem = map.as_mut_ptr();
        // SAFETY: `mem` is a page-aligned shared mapping of `len` readable bytes that `map` keeps
        // alive for as long as the channel.
        let layout = unsafe { ChannelLayout::read(mem, len) }.map_err(OpenChannelError::Layout)?;
        // SAFETY: as above; the views are stored next to `map` and never outlive it.
        let views = unsafe { layout.views(mem) };
        for (name, ring) in [
            ("request", views.to_sidecar),
            ("notification", views.to_app),
        ] {
            let c = ring.control();
            let (t, h) = (
                c.tail.load(Ordering::Acquire),
                c.head.load(Ordering::Acquire),
            );
            if t != 0 || h != 0 {
                return Err(bad(format!(
                    "the {name} ring of a new channel is not empty (tail {t}, head {h})"
                )));
            }
        }
        sys::set_nonblocking(app_efd.as_raw_fd()).map_err(|e| bad(format!("app eventfd: {e}")))?;
        let max_payload = layout.max_message_len.max(FlowInfo::LEN as u32);
        Ok(Channel {
            machnet,
            id,
            engine,
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            max_message_len: layout.max_message_len,
            tx: Producer::new(views.to_sidecar, 0),
            rx: Consumer::new(views.to_app, 0, max_payload),
            views,
            flows: HashMap::new(),
            by_addrs: HashMap::new(),
            graveyard: VecDeque::new(),
            pending: VecDeque::new(),
            next_request: 1,
            abandoned: HashSet::new(),
            deferred: VecDeque::new(),
            auto_close: true,
            poisoned: None,
            busy_poll: None,
            last_liveness: Instant::now(),
            detached: false,
            #[cfg(feature = "tokio")]
            async_fds: None,
            app_efd,
            sidecar_efd,
            _map: map,
            _not_sync: PhantomData,
        })
    }

    // ----- information -----

    /// The sidecar's id of this channel (valid on this process's control connection).
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

    /// The attachment this channel belongs to.
    pub fn machnet(&self) -> &Machnet {
        &self.machnet
    }

    /// The flows of this channel that are not closed yet (as far as the notifications read so
    /// far tell).
    pub fn flows(&self) -> impl Iterator<Item = Flow> + '_ {
        self.flows.iter().map(|(&handle, e)| Flow {
            channel: self.token,
            handle,
            info: e.info,
        })
    }

    /// Where `flow` stands. Receive calls apply close notifications even when they skip them,
    /// so an application that only calls [`Channel::recv`] can learn here that a flow ended.
    /// A flow of another channel is reported closed.
    pub fn flow_status(&self, flow: &Flow) -> FlowStatus {
        if flow.channel != self.token {
            return FlowStatus::Closed(None);
        }
        match self.flows.get(&flow.handle) {
            Some(e) if e.state == FlowState::Open && e.peer_closed => FlowStatus::PeerClosed,
            Some(e) if e.state == FlowState::Open => FlowStatus::Open,
            Some(_) => FlowStatus::Closing,
            None => FlowStatus::Closed(self.close_reason(flow.handle)),
        }
    }

    /// The open flow with these addresses, if any (the C API names flows by their 4-tuple).
    pub fn flow_by_addrs(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Option<Flow> {
        let handle = *self.by_addrs.get(&(local, remote))?;
        let e = self.flows.get(&handle)?;
        Some(Flow {
            channel: self.token,
            handle,
            info: e.info,
        })
    }

    /// Poll for up to `spin` checking the ring before sleeping on the eventfd (`None`: sleep at
    /// once, the default). Polling trades a CPU core for latency: a cross-core wake-up costs
    /// tens of microseconds on many VMs. Between checks the thread yields the CPU, so a poller
    /// does not starve the sidecar engine or peer it waits for on a crowded host.
    pub fn set_busy_poll(&mut self, spin: Option<Duration>) {
        self.busy_poll = spin.filter(|d| !d.is_zero());
    }

    /// Whether the message-only receives ([`Channel::recv`], [`Channel::recv_into`] and their
    /// `try_`/`_timeout`/async flavours) close a flow gracefully when they pass over its
    /// [`Event::PeerClosed`] (default: `true`). Such an application never sees the event, and
    /// without this the flow would stay half-closed (and held by the sidecar) forever. Messages
    /// sent before are still delivered. Turn it off to keep sending after the peer closed, and
    /// watch [`Channel::flow_status`] or use [`Channel::next_event`] instead.
    pub fn set_auto_close(&mut self, on: bool) {
        self.auto_close = on;
    }

    // ----- control -----

    /// Accepts connections to Machnet `port` on this channel: accepted flows appear as
    /// [`Event::Accepted`] (and implicitly in [`Channel::recv`]). One owner per port per host.
    pub fn listen(&mut self, port: u16) -> Result<(), ListenError> {
        self.machnet.listen(self.id, port)
    }

    /// Stops listening on `port`; flows already accepted are unaffected.
    pub fn unlisten(&mut self, port: u16) -> Result<(), ListenError> {
        self.machnet.unlisten(self.id, port)
    }

    /// Detaches the channel gracefully (docs/CHANNEL.md §5): the sidecar carries out what was
    /// sent on it — every message whose `send` returned is delivered — then closes its flows
    /// (FIN) and releases it; flows still open after the sidecar's linger are aborted. Dropping
    /// the channel does the same but ignores errors.
    pub fn close_channel(mut self) -> Result<(), RequestError> {
        self.detached = true;
        self.machnet.close_channel_id(self.id, false)
    }

    /// Detaches the channel and aborts its flows at once: peers see a reset, and messages not
    /// yet delivered are discarded.
    pub fn abort_channel(mut self) -> Result<(), RequestError> {
        self.detached = true;
        self.machnet.close_channel_id(self.id, true)
    }

    // ----- connecting and closing flows -----

    /// Opens a flow to `ip`:`port`, waiting until the sidecar reports success or failure (at
    /// most [`DEFAULT_CONNECT_TIMEOUT`]). Notifications that arrive meanwhile are kept for
    /// [`Channel::recv`] / [`Channel::next_event`].
    pub fn connect(&mut self, ip: Ipv4Addr, port: u16) -> Result<Flow, ConnectError> {
        self.connect_timeout(ip, port, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Like [`Channel::connect`] with a timeout. If the timeout passes first, the request is
    /// abandoned: should the flow be established later, it is aborted.
    pub fn connect_timeout(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> Result<Flow, ConnectError> {
        let deadline = Instant::now().checked_add(timeout);
        let id = match self.connect_start(ip, port, Block::Until(deadline)) {
            Ok(id) => id,
            Err(PushFail::Fault(f)) => return Err(f.into()),
            Err(PushFail::WouldBlock | PushFail::TimedOut) => {
                return Err(ConnectError::TimedOut(timeout))
            }
        };
        loop {
            match self.connect_poll(id) {
                Ok(Some(flow)) => return Ok(flow),
                Ok(None) => {}
                Err(e) => {
                    self.abandon(id);
                    return Err(e);
                }
            }
            match self.wait_data(deadline) {
                Ok(true) => {}
                Ok(false) => {
                    self.abandon(id);
                    return Err(ConnectError::TimedOut(timeout));
                }
                Err(f) => {
                    self.abandon(id);
                    return Err(f.into());
                }
            }
        }
    }

    /// Starts opening a flow to `ip`:`port` without waiting, for event loops that wait on the
    /// channel's fd themselves (Python asyncio, other reactors). `Ok(None)`: the request ring is
    /// full now; try again later. Follow with [`Channel::poll_connect`] whenever the channel's
    /// fd turns readable, and [`Channel::abandon_connect`] if you give up.
    pub fn start_connect(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
    ) -> Result<Option<ConnectTicket>, ConnectError> {
        match self.connect_start(ip, port, Block::No) {
            Ok(id) => Ok(Some(ConnectTicket(id))),
            Err(PushFail::WouldBlock | PushFail::TimedOut) => Ok(None),
            Err(PushFail::Fault(f)) => Err(f.into()),
        }
    }

    /// Reads notifications until the answer to `ticket`: `Some(flow)` once established,
    /// `None` if it has not come yet (other notifications are kept for [`Channel::recv`] and
    /// [`Channel::next_event`]), `Err` if the connect failed. Never waits.
    pub fn poll_connect(&mut self, ticket: ConnectTicket) -> Result<Option<Flow>, ConnectError> {
        self.connect_poll(ticket.0)
    }

    /// Gives up on a connect started with [`Channel::start_connect`] that has not been
    /// answered: should the flow be established later, it is aborted.
    pub fn abandon_connect(&mut self, ticket: ConnectTicket) {
        self.abandon(ticket.0);
    }

    /// Writes a `Connect` record; returns its request id.
    pub(crate) fn connect_start(
        &mut self,
        ip: Ipv4Addr,
        port: u16,
        block: Block,
    ) -> Result<u32, PushFail> {
        self.check_usable()?;
        self.check_sidecar()?;
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        let mut h = RecordHeader::new(RecordKind::Connect, 0);
        h.aux = id;
        let req = ConnectRequest {
            remote_ip: ip,
            remote_port: port,
        };
        self.push(h, &[&req.encode()], block)?;
        Ok(id)
    }

    /// Reads notifications until the answer to connect request `id` (`Some`) or the ring is
    /// empty (`None`); others are kept for later.
    pub(crate) fn connect_poll(&mut self, id: u32) -> Result<Option<Flow>, ConnectError> {
        loop {
            match self.step(None)? {
                Step::Connect { id: got, result } if got == id => {
                    return result.map(Some).map_err(ConnectError::Failed)
                }
                Step::Connect { id, result } => self.settle_late_connect(id, result),
                Step::Event(ev) => self.pending.push_back(ev),
                Step::Empty => return Ok(None),
                Step::Skipped | Step::Into(..) | Step::TooSmall(_) => {}
            }
        }
    }

    /// Gives up on connect request `id`.
    pub(crate) fn abandon(&mut self, id: u32) {
        self.abandoned.insert(id);
    }

    /// Closes this side of `flow` gracefully: messages already sent are delivered first. Sends
    /// on it fail from now on; messages the peer still sends are delivered. The flow ends
    /// ([`Event::Closed`] with [`CloseCode::Graceful`]) once the peer has closed its side too
    /// (an application that only calls `recv` does so automatically: see
    /// [`Channel::set_auto_close`]). Closing a closed flow does nothing.
    pub fn close(&mut self, flow: &Flow) -> Result<(), CloseError> {
        self.end_flow(flow, RecordKind::Close)
    }

    /// Aborts `flow` at once (the peer sees a reset). Aborting a closed flow does nothing.
    pub fn abort(&mut self, flow: &Flow) -> Result<(), CloseError> {
        self.end_flow(flow, RecordKind::Abort)
    }

    fn end_flow(&mut self, flow: &Flow, kind: RecordKind) -> Result<(), CloseError> {
        if flow.channel != self.token {
            return Err(CloseError::WrongChannel);
        }
        self.check_usable()?;
        self.check_sidecar()?;
        let state = match self.flows.get(&flow.handle) {
            None => return Ok(()),
            Some(e) => e.state,
        };
        if state == FlowState::Closing && kind == RecordKind::Close {
            return Ok(());
        }
        match self.push(
            RecordHeader::new(kind, flow.handle),
            &[],
            Block::Until(None),
        ) {
            Ok(()) => {}
            Err(PushFail::Fault(f)) => return Err(f.into()),
            Err(PushFail::WouldBlock | PushFail::TimedOut) => {
                return Err(CloseError::Io(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )))
            }
        }
        if let Some(e) = self.flows.get_mut(&flow.handle) {
            e.state = FlowState::Closing;
        }
        Ok(())
    }

    // ----- sending -----

    /// Sends `data` as one message on `flow`, waiting for ring space if the sidecar applies
    /// back-pressure (it never drops a message silently).
    pub fn send(&mut self, flow: &Flow, data: &[u8]) -> Result<(), SendError> {
        self.send_parts(flow, &[data], Block::Until(None))
    }

    /// Sends the concatenation of `parts` as one message on `flow` (waits for space like
    /// [`Channel::send`]).
    pub fn send_vectored(&mut self, flow: &Flow, parts: &[IoSlice<'_>]) -> Result<(), SendError> {
        with_slices(parts, |p| self.send_parts(flow, p, Block::Until(None)))
    }

    /// Sends `data` on `flow` if the request ring has room now; [`SendError::WouldBlock`]
    /// otherwise.
    pub fn try_send(&mut self, flow: &Flow, data: &[u8]) -> Result<(), SendError> {
        self.send_parts(flow, &[data], Block::No)
    }

    /// Vectored [`Channel::try_send`].
    pub fn try_send_vectored(
        &mut self,
        flow: &Flow,
        parts: &[IoSlice<'_>],
    ) -> Result<(), SendError> {
        with_slices(parts, |p| self.send_parts(flow, p, Block::No))
    }

    pub(crate) fn send_parts(
        &mut self,
        flow: &Flow,
        parts: &[&[u8]],
        block: Block,
    ) -> Result<(), SendError> {
        if flow.channel != self.token {
            return Err(SendError::WrongChannel);
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return Err(SendError::Empty);
        }
        if len > self.max_message_len as usize {
            return Err(SendError::TooLarge {
                len,
                max: self.max_message_len,
            });
        }
        self.check_usable()?;
        self.check_sidecar()?;
        match self.flows.get(&flow.handle) {
            None => return Err(SendError::FlowClosed(self.close_reason(flow.handle))),
            Some(e) if e.state == FlowState::Closing => return Err(SendError::FlowClosing),
            Some(_) => {}
        }
        match self.push(
            RecordHeader::new(RecordKind::Send, flow.handle),
            parts,
            block,
        ) {
            Ok(()) => Ok(()),
            Err(PushFail::WouldBlock | PushFail::TimedOut) => Err(SendError::WouldBlock),
            Err(PushFail::Fault(f)) => Err(f.into()),
        }
    }

    /// The bytes a message of `len` bytes takes in the request ring.
    pub(crate) fn footprint(len: usize) -> u64 {
        record_footprint(len as u64)
    }

    /// Pushes one request record, waking the engine if it sleeps.
    fn push(&mut self, h: RecordHeader, parts: &[&[u8]], block: Block) -> Result<(), PushFail> {
        self.flush_deferred()?;
        let need = Self::footprint(parts.iter().map(|p| p.len()).sum());
        loop {
            match self.tx.push(h, parts) {
                Ok(()) => {
                    // Its SeqCst fence also orders the publication before the check below.
                    self.wake_sidecar()?;
                    return self.check_published();
                }
                Err(PushError::Full) => match block {
                    Block::No => {
                        self.liveness_check()?;
                        return Err(PushFail::WouldBlock);
                    }
                    Block::Until(deadline) => {
                        if !self.wait_space(need, deadline)? {
                            return Err(PushFail::TimedOut);
                        }
                    }
                },
                Err(PushError::TooLarge(n)) => {
                    return Err(self
                        .poison(format!(
                            "a record of {n} bytes does not fit the request ring, \
                             although the layout promised room for the largest message"
                        ))
                        .into())
                }
                Err(PushError::Corrupt(e)) => return Err(self.corrupt(e).into()),
            }
        }
    }

    /// After publishing a record: if the sidecar has begun closing the channel, the record
    /// counts only if the sidecar consumed it. The sidecar sets `closed` before it drains the
    /// ring one last time (docs/CHANNEL.md §5), so a record published before `closed` was set
    /// is consumed, and one published after it may never be: `send` must not return `Ok`
    /// for it. (The sidecar may still consume it: the error means "not promised".)
    fn check_published(&self) -> Result<(), PushFail> {
        let Some(code) = self.closed_code() else {
            return Ok(());
        };
        let head = self.tx.ring().control().head.load(Ordering::Acquire);
        if head >= self.tx.position() {
            Ok(())
        } else {
            Err(PushFail::Fault(Fault::Closed(code)))
        }
    }

    fn wake_sidecar(&mut self) -> Result<(), Fault> {
        if self.tx.consumer_needs_wakeup() {
            sys::signal_eventfd(self.sidecar_efd.as_raw_fd()).map_err(Fault::Io)?;
        }
        Ok(())
    }

    fn flush_deferred(&mut self) -> Result<(), Fault> {
        while let Some(&(kind, handle)) = self.deferred.front() {
            match self.tx.push(RecordHeader::new(kind, handle), &[]) {
                Ok(()) => {
                    self.deferred.pop_front();
                    self.wake_sidecar()?;
                }
                Err(PushError::Full) => return Ok(()),
                Err(PushError::TooLarge(_)) => {
                    return Err(self.poison("the request ring cannot hold an empty record".into()))
                }
                Err(PushError::Corrupt(e)) => return Err(self.corrupt(e)),
            }
        }
        Ok(())
    }

    // ----- receiving -----

    /// Waits for the next message on any flow of this channel. Other notifications update the
    /// channel's state on the way: accepted flows appear implicitly (the first message of an
    /// accepted flow names it), closed flows make later sends on them fail
    /// ([`Channel::flow_status`] tells), and a flow whose peer closed is closed on this side too
    /// ([`Channel::set_auto_close`]). Use [`Channel::next_event`] to see the events.
    pub fn recv(&mut self) -> Result<(Flow, Vec<u8>), RecvError> {
        loop {
            if let Some(Got::Message(flow, data)) = self.receive(Want::Message, None)? {
                return Ok((flow, data));
            }
        }
    }

    /// The next message if one is waiting now.
    pub fn try_recv(&mut self) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        self.recv_deadline(Some(Instant::now()))
    }

    /// Waits up to `timeout` for the next message (`None`: the timeout passed).
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        self.recv_deadline(Instant::now().checked_add(timeout))
    }

    fn recv_deadline(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<(Flow, Vec<u8>)>, RecvError> {
        match self.receive(Want::Message, deadline)? {
            Some(Got::Message(flow, data)) => Ok(Some((flow, data))),
            _ => Ok(None),
        }
    }

    /// Waits for the next message and copies it into `buf`; returns its flow and length. A
    /// message longer than `buf` is not consumed: [`RecvError::BufferTooSmall`] tells the size
    /// needed, and the next call with a large enough buffer returns it.
    pub fn recv_into(&mut self, buf: &mut [u8]) -> Result<(Flow, usize), RecvError> {
        loop {
            if let Some(Got::Into(flow, n)) = self.receive(Want::Into(buf), None)? {
                return Ok((flow, n));
            }
        }
    }

    /// [`Channel::recv_into`] if a message is waiting now.
    pub fn try_recv_into(&mut self, buf: &mut [u8]) -> Result<Option<(Flow, usize)>, RecvError> {
        self.recv_into_deadline(buf, Some(Instant::now()))
    }

    /// [`Channel::recv_into`] waiting at most `timeout` (`None`: the timeout passed).
    pub fn recv_into_timeout(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<(Flow, usize)>, RecvError> {
        self.recv_into_deadline(buf, Instant::now().checked_add(timeout))
    }

    fn recv_into_deadline(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> Result<Option<(Flow, usize)>, RecvError> {
        match self.receive(Want::Into(buf), deadline)? {
            Some(Got::Into(flow, n)) => Ok(Some((flow, n))),
            _ => Ok(None),
        }
    }

    /// The next event of any kind, waiting up to `timeout` (`None`: wait as long as needed;
    /// `Some(Duration::ZERO)`: do not wait). Returns `Ok(None)` when the timeout passed.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, RecvError> {
        let deadline = match timeout {
            None => None,
            Some(t) => Instant::now().checked_add(t),
        };
        loop {
            match self.receive(Want::Event, deadline)? {
                Some(Got::Event(ev)) => return Ok(Some(ev)),
                None => return Ok(None),
                Some(_) => {}
            }
        }
    }

    /// Announces that the caller is about to wait for the app eventfd (the channel's [`AsRawFd`]
    /// descriptor) in its own poll loop. Returns `true` if events are already waiting (do not wait: call a
    /// `try_` function instead). Otherwise the eventfd becomes readable when something arrives
    /// (or the channel closes). Any other call on the channel in between cancels the
    /// announcement. Also poll [`Machnet`]'s descriptor for hang-up to notice a dead sidecar.
    pub fn arm_wakeup(&mut self) -> Result<bool, RecvError> {
        self.check_poisoned()?;
        if !self.pending.is_empty() || self.closed_code().is_some() {
            return Ok(true);
        }
        sys::drain_eventfd(self.app_efd.as_raw_fd()).map_err(Fault::Io)?;
        let ready = match self.rx.prepare_wait() {
            Ok(r) => r,
            Err(e) => return Err(self.corrupt(e).into()),
        };
        if ready {
            self.rx.cancel_wait();
            return Ok(true);
        }
        if !self.machnet.sidecar_alive() {
            self.rx.cancel_wait();
            return Err(RecvError::SidecarGone);
        }
        Ok(self.closed_code().is_some())
    }

    /// The sending counterpart of [`Channel::arm_wakeup`]: announces that the caller is about to
    /// wait for the app eventfd until the request ring has room for a message of `len` bytes
    /// (after [`Channel::try_send`] reported [`SendError::WouldBlock`]). Returns `true` if such
    /// a message fits already (do not wait: try again). Otherwise the eventfd becomes readable
    /// when the sidecar frees space. Unlike `arm_wakeup` this does not drain the eventfd, so a
    /// thread may call it while another thread waits on the same eventfd (the C ABI does).
    pub fn arm_send_wakeup(&mut self, len: usize) -> Result<bool, SendError> {
        self.check_usable()?;
        let need = Self::footprint(len);
        match self.tx.prepare_wait() {
            Ok(free) if free >= need => {
                self.tx.cancel_wait();
                Ok(true)
            }
            Ok(_) => Ok(self.closed_code().is_some()),
            Err(e) => Err(self.corrupt(e).into()),
        }
    }

    /// The receive loop shared by every receive flavour: buffered events first, then the
    /// ring, then wait (docs/CHANNEL.md §4) until `deadline`.
    pub(crate) fn receive(
        &mut self,
        mut want: Want<'_>,
        deadline: Option<Instant>,
    ) -> Result<Option<Got>, RecvError> {
        self.check_poisoned()?;
        loop {
            while let Some(ev) = self.pending.pop_front() {
                match (&mut want, ev) {
                    (Want::Event, ev) => return Ok(Some(Got::Event(ev))),
                    (Want::Message, Event::Message { flow, data }) => {
                        return Ok(Some(Got::Message(flow, data)))
                    }
                    (Want::Into(buf), Event::Message { flow, data }) => {
                        if data.len() > buf.len() {
                            let (needed, available) = (data.len(), buf.len());
                            self.pending.push_front(Event::Message { flow, data });
                            return Err(RecvError::BufferTooSmall { needed, available });
                        }
                        buf[..data.len()].copy_from_slice(&data);
                        return Ok(Some(Got::Into(flow, data.len())));
                    }
                    (_, ev) => self.skipped(&ev),
                }
            }
            let into = match &mut want {
                Want::Into(b) => Some(&mut **b),
                _ => None,
            };
            let available = into.as_ref().map_or(0, |b| b.len());
            match self.step(into)? {
                Step::Empty => {}
                Step::Skipped => continue,
                Step::Connect { id, result } => {
                    self.settle_late_connect(id, result);
                    continue;
                }
                Step::TooSmall(needed) => {
                    return Err(RecvError::BufferTooSmall { needed, available })
                }
                Step::Into(flow, n) => return Ok(Some(Got::Into(flow, n))),
                Step::Event(ev) => match (&want, ev) {
                    (Want::Event, ev) => return Ok(Some(Got::Event(ev))),
                    (Want::Message, Event::Message { flow, data }) => {
                        return Ok(Some(Got::Message(flow, data)))
                    }
                    (_, ev) => {
                        self.skipped(&ev);
                        continue;
                    }
                },
            }
            if !self.wait_data(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Consumes and translates the next notification. With `into`, a message for a known
    /// flow is copied there instead of into a new vector (or left in place if it does not fit).
    fn step(&mut self, into: Option<&mut [u8]>) -> Result<Step, Fault> {
        if !self.deferred.is_empty() {
            self.flush_deferred()?;
        }
        let rec = match self.rx.peek() {
            Ok(Some(rec)) => rec,
            Ok(None) => return Ok(Step::Empty),
            Err(e) => return Err(self.corrupt(e)),
        };
        let h = rec.header;
        let len = h.len as usize;
        let code = CloseCode::from_u8(h.flags);
        let step = match h.kind {
            RecordKind::Message => match self.flows.get(&h.flow) {
                // A message for a flow we gave up on (or never knew): nobody can take it.
                None => Step::Skipped,
                Some(e) => {
                    let flow = Flow {
                        channel: self.token,
                        handle: h.flow,
                        info: e.info,
                    };
                    match into {
                        Some(buf) if len > buf.len() => return Ok(Step::TooSmall(len)),
                        Some(buf) => {
                            self.rx.read_payload(&rec, &mut buf[..len]);
                            Step::Into(flow, len)
                        }
                        None => {
                            let mut data = vec![0u8; len];
                            self.rx.read_payload(&rec, &mut data);
                            Step::Event(Event::Message { flow, data })
                        }
                    }
                }
            },
            RecordKind::Accepted | RecordKind::Connected => {
                let mut raw = [0u8; FlowInfo::LEN];
                if len != FlowInfo::LEN {
                    return Err(self.poison(format!(
                        "{:?} record with a payload of {len} bytes (expected {})",
                        h.kind,
                        FlowInfo::LEN
                    )));
                }
                self.rx.read_payload(&rec, &mut raw);
                let Some(info) = FlowInfo::decode(&raw) else {
                    return Err(self.poison("undecodable flow 4-tuple".into()));
                };
                if h.flow == 0 || self.flows.contains_key(&h.flow) {
                    return Err(self.poison(format!(
                        "{:?} record names flow handle {}, which is zero or already in use",
                        h.kind, h.flow
                    )));
                }
                self.flows.insert(
                    h.flow,
                    FlowEntry {
                        info,
                        state: FlowState::Open,
                        peer_closed: false,
                    },
                );
                self.by_addrs.insert(
                    (
                        SocketAddrV4::new(info.local_ip, info.local_port),
                        SocketAddrV4::new(info.remote_ip, info.remote_port),
                    ),
                    h.flow,
                );
                let flow = Flow {
                    channel: self.token,
                    handle: h.flow,
                    info,
                };
                if h.kind == RecordKind::Accepted {
                    Step::Event(Event::Accepted {
                        flow,
                        port: h.aux as u16,
                    })
                } else {
                    Step::Connect {
                        id: h.aux,
                        result: Ok(flow),
                    }
                }
            }
            RecordKind::ConnectFailed => Step::Connect {
                id: h.aux,
                result: Err(code),
            },
            RecordKind::PeerClosed => match self.flows.get_mut(&h.flow) {
                Some(e) => {
                    e.peer_closed = true;
                    Step::Event(Event::PeerClosed {
                        flow: Flow {
                            channel: self.token,
                            handle: h.flow,
                            info: e.info,
                        },
                    })
                }
                None => Step::Skipped,
            },
            RecordKind::Closed => match self.flows.remove(&h.flow) {
                Some(e) => {
                    let flow = Flow {
                        channel: self.token,
                        handle: h.flow,
                        info: e.info,
                    };
                    self.by_addrs
                        .remove(&(flow.local_addr(), flow.remote_addr()));
                    if self.graveyard.len() >= GRAVEYARD {
                        self.graveyard.pop_front();
                    }
                    self.graveyard.push_back((h.flow, code));
                    Step::Event(Event::Closed { flow, reason: code })
                }
                None => Step::Skipped,
            },
            RecordKind::RequestFailed => match self.flow(h.flow) {
                Some(flow) => Step::Event(Event::RequestFailed {
                    flow,
                    request: RequestKind::from_aux(h.aux),
                    reason: code,
                }),
                None => Step::Skipped,
            },
            RecordKind::Connect | RecordKind::Send | RecordKind::Close | RecordKind::Abort => {
                return Err(self.poison(format!(
                    "request record {:?} in the notification ring",
                    h.kind
                )))
            }
        };
        self.rx.consume(&rec);
        if self.rx.producer_needs_wakeup() {
            sys::signal_eventfd(self.sidecar_efd.as_raw_fd()).map_err(Fault::Io)?;
        }
        Ok(step)
    }

    /// A message-only receive passed over `ev`: with auto-close, a flow whose peer closed is
    /// closed on our side too (nobody else will learn that it should be).
    fn skipped(&mut self, ev: &Event) {
        if let Event::PeerClosed { flow } = ev {
            if self.auto_close {
                if let Some(e) = self.flows.get_mut(&flow.handle) {
                    if e.state == FlowState::Open {
                        e.state = FlowState::Closing;
                        self.deferred.push_back((RecordKind::Close, flow.handle));
                    }
                }
            }
        }
    }

    fn flow(&self, handle: u32) -> Option<Flow> {
        self.flows.get(&handle).map(|e| Flow {
            channel: self.token,
            handle,
            info: e.info,
        })
    }

    /// A connect answer nobody waits for: abort a flow that nobody will use.
    fn settle_late_connect(&mut self, id: u32, result: Result<Flow, Option<CloseCode>>) {
        self.abandoned.remove(&id);
        if let Ok(flow) = result {
            if let Some(e) = self.flows.get_mut(&flow.handle) {
                e.state = FlowState::Closing;
            }
            self.deferred.push_back((RecordKind::Abort, flow.handle));
        }
    }

    fn close_reason(&self, handle: u32) -> Option<CloseCode> {
        self.graveyard
            .iter()
            .rev()
            .find(|(h, _)| *h == handle)
            .and_then(|(_, c)| *c)
    }

    // ----- waiting (docs/CHANNEL.md §4) -----

    /// Called when the notification ring was found empty. Returns `false` if `deadline` has
    /// passed, `true` after a wait (or on finding data), after which the caller looks again.
    fn wait_data(&mut self, deadline: Option<Instant>) -> Result<bool, Fault> {
        self.check_closed()?;
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            self.liveness_check_at(now)?;
            return Ok(false);
        }
        if let Some(spin) = self.busy_poll {
            let until = earliest(deadline, now.checked_add(spin));
            loop {
                for _ in 0..64 {
                    match self.rx.has_data() {
                        Ok(true) => return Ok(true),
                        Ok(false) => std::thread::yield_now(),
                        Err(e) => return Err(self.corrupt(e)),
                    }
                }
                self.check_closed()?;
                let now = Instant::now();
                self.liveness_check_at(now)?;
                if until.is_some_and(|u| now >= u) {
                    break;
                }
            }
        }
        // 1. Announce, full fence, re-check (Consumer::prepare_wait).
        match self.rx.prepare_wait() {
            Ok(true) => {
                self.rx.cancel_wait();
                return Ok(true);
            }
            Ok(false) => {}
            Err(e) => return Err(self.corrupt(e)),
        }
        if let Err(f) = self.check_closed() {
            self.rx.cancel_wait();
            return Err(f);
        }
        // 2. Sleep on the eventfd and the control socket.
        let woken = sys::wait(
            self.app_efd.as_raw_fd(),
            self.machnet.control_fd(),
            deadline,
        );
        self.rx.cancel_wait();
        self.woken(woken)
    }

    /// Called when the request ring lacks `need` bytes. Like [`Channel::wait_data`].
    fn wait_space(&mut self, need: u64, deadline: Option<Instant>) -> Result<bool, Fault> {
        self.check_closed()?;
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(false);
        }
        if let Some(spin) = self.busy_poll {
            let until = earliest(deadline, now.checked_add(spin));
            loop {
                for _ in 0..64 {
                    match self.tx.free() {
                        Ok(free) if free >= need => return Ok(true),
                        Ok(_) => std::thread::yield_now(),
                        Err(e) => return Err(self.corrupt(e)),
                    }
                }
                self.check_closed()?;
                let now = Instant::now();
                self.liveness_check_at(now)?;
                if until.is_some_and(|u| now >= u) {
                    break;
                }
            }
        }
        let clear = |tx: &Producer| tx.cancel_wait();
        match self.tx.prepare_wait() {
            Ok(free) if free >= need => {
                clear(&self.tx);
                return Ok(true);
            }
            Ok(_) => {}
            Err(e) => return Err(self.corrupt(e)),
        }
        if let Err(f) = self.check_closed() {
            clear(&self.tx);
            return Err(f);
        }
        let woken = sys::wait(
            self.app_efd.as_raw_fd(),
            self.machnet.control_fd(),
            deadline,
        );
        clear(&self.tx);
        self.woken(woken)
    }

    // ----- health -----

    /// The header's `closed` word, if set.
    pub(crate) fn closed_code(&self) -> Option<Option<CloseCode>> {
        match self.views.closed().load(Ordering::Acquire) {
            0 => None,
            c => Some(u8::try_from(c).ok().and_then(CloseCode::from_u8)),
        }
    }

    pub(crate) fn check_closed(&self) -> Result<(), Fault> {
        match self.closed_code() {
            None => Ok(()),
            Some(c) => Err(Fault::Closed(c)),
        }
    }

    pub(crate) fn check_poisoned(&self) -> Result<(), Fault> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(Fault::Corrupt(why.clone())),
        }
    }

    fn check_usable(&self) -> Result<(), Fault> {
        self.check_poisoned()?;
        self.check_closed()
    }

    /// Fails with `SidecarGone` if the sidecar is dead. Every call that hands something to the
    /// sidecar makes this check (one zero-timeout `poll` of the control socket, none once the
    /// death is known): a request written into the ring of a dead sidecar would be lost
    /// silently (docs/CHANNEL.md §4, "A dead sidecar").
    pub(crate) fn check_sidecar(&self) -> Result<(), Fault> {
        if self.machnet.sidecar_alive() {
            Ok(())
        } else {
            Err(Fault::SidecarGone)
        }
    }

    /// Translates the outcome of a sleep on the eventfd and the control socket.
    fn woken(&self, woken: std::io::Result<Woken>) -> Result<bool, Fault> {
        match woken.map_err(Fault::Io)? {
            Woken::SidecarGone => {
                self.machnet.mark_gone();
                Err(Fault::SidecarGone)
            }
            Woken::Event | Woken::TimedOut => Ok(true),
        }
    }

    fn liveness_check(&mut self) -> Result<(), Fault> {
        self.liveness_check_at(Instant::now())
    }

    /// For calls that found nothing to do: polls the control socket for hang-up, at most every
    /// [`LIVENESS_INTERVAL`] (non-blocking receives never sleep, so they would otherwise never
    /// notice a dead sidecar; polling on every empty look would slow busy-polling receivers).
    /// A death already known fails at once.
    fn liveness_check_at(&mut self, now: Instant) -> Result<(), Fault> {
        if self.machnet.is_known_gone() {
            return Err(Fault::SidecarGone);
        }
        if now.duration_since(self.last_liveness) < LIVENESS_INTERVAL {
            return Ok(());
        }
        self.last_liveness = now;
        self.check_sidecar()
    }

    pub(crate) fn corrupt(&mut self, e: RingError) -> Fault {
        self.poison(e.to_string())
    }

    fn poison(&mut self, why: String) -> Fault {
        let why = format!("the sidecar broke the channel protocol: {why}");
        self.poisoned = Some(why.clone());
        Fault::Corrupt(why)
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn control_fd(&self) -> RawFd {
        self.machnet.control_fd()
    }
}

/// The app eventfd: readable when the sidecar has woken this channel (see
/// [`Channel::arm_wakeup`]). Do not read from or write to it.
impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.app_efd.as_raw_fd()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.machnet.close_channel_id(self.id, false);
        }
    }
}

/// The earlier of two optional deadlines (`None`: never).
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Calls `f` with `parts` as byte slices (on the stack for up to 16 parts).
fn with_slices<R>(parts: &[IoSlice<'_>], f: impl FnOnce(&[&[u8]]) -> R) -> R {
    const N: usize = 16;
    if parts.len() <= N {
        let mut arr: [&[u8]; N] = [&[]; N];
        for (a, p) in arr.iter_mut().zip(parts) {
            *a = p;
        }
        f(&arr[..parts.len()])
    } else {
        let v: Vec<&[u8]> = parts.iter().map(|p| &**p).collect();
        f(&v)
    }
}
