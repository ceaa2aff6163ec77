//! The application half of a channel as a sans-IO state machine (docs/CHANNEL.md §3–5).
//!
//! [`AppChannel`] owns the protocol state of one attached channel: it pushes request records,
//! decodes notification records into [`Event`]s, keeps the flow table, the graveyard of ended
//! flows and the connect requests in flight. Like `quinn-proto`'s `Connection`, it never
//! performs a system call, reads a clock or waits. Operations that cannot proceed say so
//! ([`SubmitError::Full`] with the space needed, `Ok(None)` from [`AppChannel::poll`]); the I/O
//! layer (the `machnet` client crate) decides how to wait, using [`AppChannel::arm`] /
//! [`AppChannel::disarm`] around its sleep and signalling the sidecar's eventfd whenever
//! [`AppChannel::take_sidecar_wakeup`] says so.
//!
//! Everything read from the notification ring is untrusted: a record the protocol does not
//! allow makes the channel report [`ChannelFault::Corrupt`] from then on; nothing here panics
//! because of it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ring::record_footprint;
use crate::{
    ChannelLayout, ChannelViews, CloseCode, ConnectRequest, Consumer, FlowInfo, Producer,
    PushError, RecordHeader, RecordKind, RingError,
};

/// How many recently closed flows a channel remembers to explain later sends on them.
const GRAVEYARD: usize = 4096;

/// How many connect answers nobody has asked for yet (tickets neither polled nor abandoned) a
/// channel keeps; beyond that the oldest is given up (its flow aborted).
const UNCLAIMED_ANSWERS: usize = 1024;

/// Process-wide source of channel tokens (so a [`Flow`] knows its channel).
static NEXT_TOKEN: AtomicU32 = AtomicU32::new(1);

/// A flow: one Machnet connection, identified by a channel-local handle.
///
/// A small `Copy` value. It is only meaningful on the channel that created or accepted it;
/// other channels refuse it. Addresses are host byte order values (`Ipv4Addr`, `u16`);
/// [`Flow::local_ip_u32`] and [`Flow::remote_ip_u32`] give the IP as the host-order `u32` of
/// the C API's `MachnetFlow_t`.
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

/// Something that happened on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message arrived on `flow`.
    Message {
        /// The flow.
        flow: Flow,
        /// The message.
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
    /// `flow` is gone; sends on it fail.
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

/// Where a flow stands, as far as the notifications read so far tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowStatus {
    /// Open both ways.
    Open,
    /// The peer closed its side (no more messages will arrive); this side may still send.
    PeerClosed,
    /// This application closed or aborted the flow; it is not gone yet.
    Closing,
    /// Gone, with the reason if the channel still remembers it.
    Closed(Option<CloseCode>),
}

/// A connect in progress, from [`AppChannel::start_connect`].
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

/// The channel as a whole cannot be used (every later operation fails the same way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelFault {
    /// The sidecar closed the channel (the header's `closed` word; `None`: unknown code).
    #[error("the channel was closed by the sidecar")]
    Closed(Option<CloseCode>),
    /// The sidecar broke the channel protocol.
    #[error("{0}")]
    Corrupt(String),
}

/// Why a new channel's memory cannot be taken over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// A ring of a channel that was just created already holds records.
    #[error("the {ring} ring of a new channel is not empty (tail {tail}, head {head})")]
    RingNotEmpty {
        /// `"request"` or `"notification"`.
        ring: &'static str,
        /// Its tail.
        tail: u64,
        /// Its head.
        head: u64,
    },
}

/// Why a request (connect, send, close, abort) was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The flow belongs to another channel.
    #[error("the flow belongs to another channel")]
    WrongChannel,
    /// Empty messages cannot be sent.
    #[error("empty messages cannot be sent")]
    Empty,
    /// The message exceeds the channel's maximum.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The channel's maximum.
        max: u32,
    },
    /// The flow is gone (with the reason if the channel remembers it).
    #[error("the flow is closed")]
    FlowClosed(Option<CloseCode>),
    /// This application closed or aborted the flow.
    #[error("the flow is being closed by this application")]
    FlowClosing,
    /// The request ring lacks room now: wait until `need` bytes are free and retry.
    #[error("the request ring needs {need} free bytes")]
    Full {
        /// Bytes the record takes in the ring.
        need: u64,
    },
    /// A loan ([`AppChannel::loan`]) is outstanding: the request ring's tail is reserved for
    /// it until it is committed or cancelled.
    #[error("a send loan is outstanding on this channel (commit or cancel it first)")]
    LoanOutstanding,
    /// [`AppChannel::commit`] with 0 bytes or more than were loaned (nothing was published).
    #[error("commit of {used} bytes; the loan was for 1 to {loaned} bytes")]
    BadCommitLength {
        /// The length given to commit.
        used: usize,
        /// The length loaned.
        loaned: usize,
    },
    /// A loan needs a channel whose rings are mirrored (`mirror::MirroredMap`), or a loan
    /// or view of another channel was handed in.
    #[error("zero-copy operations need a channel mapped with mirrored rings")]
    NotMirrored,
    /// The channel is unusable.
    #[error(transparent)]
    Fault(#[from] ChannelFault),
}

/// Why a receive did not return anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// [`AppChannel::poll_view`] only: a borrowed message ([`View`]) is still out; release it
    /// first.
    #[error("a borrowed message is still out on this channel (release it first)")]
    ViewOutstanding,
    /// The next message does not fit the caller's buffer; it was not consumed.
    #[error("the next message has {needed} bytes, the buffer {available}")]
    BufferTooSmall {
        /// The message's length.
        needed: usize,
        /// The buffer's length.
        available: usize,
    },
    /// The channel is unusable.
    #[error(transparent)]
    Fault(#[from] ChannelFault),
}

/// Why a connect did not produce a flow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The sidecar answered that the connect failed.
    #[error("connect failed")]
    Failed(Option<CloseCode>),
    /// The channel is unusable.
    #[error(transparent)]
    Fault(#[from] ChannelFault),
}

/// What a receive looks for.
#[derive(Debug)]
pub enum Want<'b> {
    /// Any event.
    Event,
    /// The next message, as a new vector; other events are applied and passed over.
    Message,
    /// The next message, copied into the buffer; other events are applied and passed over.
    Into(&'b mut [u8]),
    /// The next message copied into the buffer, or the next other event, whichever comes first
    /// (one copy for messages, and no event passed over).
    IntoOrEvent(&'b mut [u8]),
}

/// What a receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    /// An event (for [`Want::Event`], and non-message events for [`Want::IntoOrEvent`]).
    Event(Event),
    /// A message (for [`Want::Message`]).
    Message(Flow, Vec<u8>),
    /// A message of this many bytes copied into the buffer (for [`Want::Into`] and
    /// [`Want::IntoOrEvent`]).
    Into(Flow, usize),
}

/// Room reserved at the request ring's tail for one `Send` record of up to [`Loan::len`]
/// payload bytes (from [`AppChannel::loan`]). Write the message at [`Loan::as_mut_ptr`], then
/// [`AppChannel::commit`]; or [`AppChannel::cancel`] to publish nothing. Hand it back to the
/// channel that issued it, exactly once: while it is out, the channel refuses other sends.
#[derive(Debug)]
#[must_use = "a loan must be committed or cancelled, or the channel refuses further sends"]
pub struct Loan {
    token: u32,
    flow: Flow,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a pointer into the channel memory, reserved for the loan's holder alone.
unsafe impl Send for Loan {}

impl Loan {
    /// Where the payload goes: `len()` writable bytes in the channel memory, valid until the
    /// loan is committed or cancelled (and while the mapping lives).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The number of bytes loaned.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (loans are of at least one byte); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The flow the message goes to.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }
}

/// A received message left in place (from [`AppChannel::poll_view`]): its bytes are read from
/// the notification ring, whose space the sidecar cannot reuse until [`AppChannel::release`].
/// Receives of later messages may go on meanwhile. Hand it back exactly once.
#[derive(Debug)]
#[must_use = "a view must be released, or its ring space is never given back"]
pub struct View {
    token: u32,
    data: ViewData,
}

#[derive(Debug)]
enum ViewData {
    /// In the ring (held by the consumer).
    Ring { ptr: *const u8, len: usize },
    /// A message that was already copied out (read while a connect waited, or wrapped in a
    /// ring that is not mirrored).
    Owned(Vec<u8>),
}

// SAFETY: a pointer into the channel memory, which the sidecar does not write until released.
unsafe impl Send for View {}

impl View {
    /// The message's first byte, valid until the view is released (and while the mapping
    /// lives).
    pub fn as_ptr(&self) -> *const u8 {
        match &self.data {
            ViewData::Ring { ptr, .. } => *ptr,
            ViewData::Owned(v) => v.as_ptr(),
        }
    }

    /// The message's length.
    pub fn len(&self) -> usize {
        match &self.data {
            ViewData::Ring { len, .. } => *len,
            ViewData::Owned(v) => v.len(),
        }
    }

    /// Never true (messages hold at least one byte); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes are in the channel memory (not a copy).
    pub fn is_in_place(&self) -> bool {
        matches!(self.data, ViewData::Ring { .. })
    }
}

/// What [`AppChannel::poll_view_or_event`] found.
#[derive(Debug)]
pub enum Viewed {
    /// A message, borrowed.
    Message(Flow, View),
    /// Any other event (never [`Event::Message`]).
    Event(Event),
}

/// A condition the I/O layer can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitFor {
    /// A notification record in the ring.
    Data,
    /// This many free bytes in the request ring.
    Space(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    Open,
    /// The application called close or abort.
    Closing,
}

struct FlowEntry {
    info: FlowInfo,
    state: FlowState,
    peer_closed: bool,
}

/// Where [`AppChannel::step`] puts a message.
enum Dst<'b> {
    /// A new vector ([`Event::Message`]).
    Vec,
    /// The caller's buffer.
    Into(&'b mut [u8]),
    /// Left in the ring ([`View`]).
    Borrow,
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
    /// A message left in the ring (held) or copied because it wraps.
    Borrowed(Flow, View),
    /// The next message does not fit the caller's buffer (not consumed).
    TooSmall(usize),
    /// The answer to a connect request.
    Connect {
        id: u32,
        result: Result<Flow, Option<CloseCode>>,
    },
}

/// The application half of one attached channel.
pub struct AppChannel {
    token: u32,
    max_message_len: u32,
    tx: Producer,
    rx: Consumer,
    views: ChannelViews,
    flows: HashMap<u32, FlowEntry>,
    by_addrs: HashMap<(SocketAddrV4, SocketAddrV4), u32>,
    /// Recently closed flows and why, to explain sends on them.
    graveyard: VecDeque<(u32, Option<CloseCode>)>,
    /// Notifications read while looking for a connect answer, not yet delivered.
    pending: VecDeque<Event>,
    next_request: u32,
    /// Connect requests in flight (`None`) or answered but not yet claimed (`Some`). An answer
    /// for an id not here (abandoned, already answered, or never issued) is a flow nobody will
    /// use: it is aborted.
    connects: BTreeMap<u32, Option<Result<Flow, Option<CloseCode>>>>,
    unclaimed: usize,
    /// Close/abort requests to write when ring space allows.
    deferred: VecDeque<(RecordKind, u32)>,
    /// Whether message-only receives close flows whose peer closed.
    auto_close: bool,
    /// Set once the sidecar broke the channel protocol: every later call fails with it.
    poisoned: Option<String>,
    /// The sidecar asked to be woken (it sleeps on a ring this side changed).
    wake_sidecar: bool,
    /// A [`Loan`] is out: the request ring's tail is reserved.
    loan_out: bool,
    /// A [`View`] is out.
    view_out: bool,
}

impl std::fmt::Debug for AppChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppChannel")
            .field("flows", &self.flows.len())
            .field("connects", &self.connects.len())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl AppChannel {
    /// Takes over a freshly created channel whose header was validated into `layout` and whose
    /// memory `views` points to. Both rings must be empty.
    pub fn new(layout: &ChannelLayout, views: ChannelViews) -> Result<Self, AttachError> {
        for (ring, view) in [
            ("request", views.to_sidecar),
            ("notification", views.to_app),
        ] {
            let c = view.control();
            let (tail, head) = (
                c.tail.load(Ordering::Acquire),
                c.head.load(Ordering::Acquire),
            );
            if tail != 0 || head != 0 {
                return Err(AttachError::RingNotEmpty { ring, tail, head });
            }
        }
        let max_payload = layout.max_message_len.max(FlowInfo::LEN as u32);
        Ok(AppChannel {
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
            connects: BTreeMap::new(),
            unclaimed: 0,
            deferred: VecDeque::new(),
            auto_close: true,
            poisoned: None,
            wake_sidecar: false,
            loan_out: false,
            view_out: false,
        })
    }

    // ----- information -----

    /// Largest message this channel carries, in bytes.
    pub fn max_message_len(&self) -> u32 {
        self.max_message_len
    }

    /// Number of flows not closed yet.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// The flows not closed yet (as far as the notifications read so far tell).
    pub fn flows(&self) -> impl Iterator<Item = Flow> + '_ {
        self.flows.iter().map(|(&handle, e)| Flow {
            channel: self.token,
            handle,
            info: e.info,
        })
    }

    /// Whether `flow` was created or accepted by this channel.
    #[inline]
    pub fn owns(&self, flow: &Flow) -> bool {
        flow.channel == self.token
    }

    /// Where `flow` stands. A flow of another channel is reported closed.
    pub fn flow_status(&self, flow: &Flow) -> FlowStatus {
        if !self.owns(flow) {
            return FlowStatus::Closed(None);
        }
        match self.flows.get(&flow.handle) {
            Some(e) if e.state == FlowState::Open && e.peer_closed => FlowStatus::PeerClosed,
            Some(e) if e.state == FlowState::Open => FlowStatus::Open,
            Some(_) => FlowStatus::Closing,
            None => FlowStatus::Closed(self.close_reason(flow.handle)),
        }
    }

    /// The open flow with these addresses, if any.
    pub fn flow_by_addrs(&self, local: SocketAddrV4, remote: SocketAddrV4) -> Option<Flow> {
        self.flow(*self.by_addrs.get(&(local, remote))?)
    }

    /// Whether message-only receives close a flow gracefully when they pass over its
    /// [`Event::PeerClosed`] (default: `true`).
    pub fn set_auto_close(&mut self, on: bool) {
        self.auto_close = on;
    }

    /// Whether events read earlier (while looking for a connect answer) wait for delivery.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The bytes a message of `len` bytes takes in the request ring.
    #[inline]
    pub fn footprint(len: usize) -> u64 {
        record_footprint(len as u64)
    }

    /// Whether the sidecar must be woken (its eventfd written) since the last call; clears the
    /// request. The I/O layer calls this after every operation that may have published or
    /// consumed a record, whatever its result.
    #[inline]
    pub fn take_sidecar_wakeup(&mut self) -> bool {
        std::mem::take(&mut self.wake_sidecar)
    }

    // ----- health -----

    /// The header's `closed` word, if set (`Some(None)`: a code this library does not know).
    #[inline]
    pub fn closed_code(&self) -> Option<Option<CloseCode>> {
        match self.views.closed().load(Ordering::Acquire) {
            0 => None,
            c => Some(u8::try_from(c).ok().and_then(CloseCode::from_u8)),
        }
    }

    /// Fails if the sidecar closed the channel.
    #[inline]
    pub fn check_closed(&self) -> Result<(), ChannelFault> {
        match self.closed_code() {
            None => Ok(()),
            Some(c) => Err(ChannelFault::Closed(c)),
        }
    }

    /// Fails if the sidecar broke the protocol earlier.
    #[inline]
    pub fn check_poisoned(&self) -> Result<(), ChannelFault> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(ChannelFault::Corrupt(why.clone())),
        }
    }

    /// Both checks: the channel is usable.
    #[inline]
    pub fn check_usable(&self) -> Result<(), ChannelFault> {
        self.check_poisoned()?;
        self.check_closed()
    }

    // ----- waiting (docs/CHANNEL.md §4) -----

    /// Whether `cond` holds now (for busy polling; announces nothing).
    #[inline]
    pub fn is_ready(&mut self, cond: WaitFor) -> Result<bool, ChannelFault> {
        let r = match cond {
            WaitFor::Data => self.rx.has_data(),
            WaitFor::Space(need) => self.tx.free().map(|f| f >= need),
        };
        r.map_err(|e| self.corrupt(e))
    }

    /// Announces a wait for `cond` (sets the ring's `data_waiting` / `space_waiting` flag, full
    /// fence) and re-checks. `Ok(true)`: the condition already holds (the flag is withdrawn; do
    /// not sleep). `Ok(false)`: sleep on the app eventfd, then call [`AppChannel::disarm`].
    /// If the sidecar has closed the channel meanwhile, the flag is withdrawn and the fault
    /// returned (it will never write the eventfd again).
    #[inline]
    pub fn arm(&mut self, cond: WaitFor) -> Result<bool, ChannelFault> {
        let ready = match cond {
            WaitFor::Data => self.rx.prepare_wait(),
            WaitFor::Space(need) => self.tx.prepare_wait().map(|f| f >= need),
        };
        let ready = ready.map_err(|e| self.corrupt(e));
        match ready {
            Ok(false) => match self.check_closed() {
                Ok(()) => Ok(false),
                Err(f) => {
                    self.disarm(cond);
                    Err(f)
                }
            },
            other => {
                self.disarm(cond);
                other
            }
        }
    }

    /// Withdraws the announcement of [`AppChannel::arm`] (after waking up).
    #[inline]
    pub fn disarm(&mut self, cond: WaitFor) {
        match cond {
            WaitFor::Data => self.rx.cancel_wait(),
            WaitFor::Space(_) => self.tx.cancel_wait(),
        }
    }

    // ----- requests -----

    /// Writes a `Connect` request to `ip`:`port`; follow with [`AppChannel::poll_connect`].
    pub fn start_connect(&mut self, ip: Ipv4Addr, port: u16) -> Result<ConnectTicket, SubmitError> {
        self.check_usable()?;
        let mut id = self.next_request;
        while id == 0 || self.connects.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        let mut h = RecordHeader::new(RecordKind::Connect, 0);
        h.aux = id;
        let req = ConnectRequest {
            remote_ip: ip,
            remote_port: port,
        };
        self.push(h, &[&req.encode()])?;
        self.next_request = id.wrapping_add(1);
        self.connects.insert(id, None);
        Ok(ConnectTicket(id))
    }

    /// Reads notifications until the answer to `ticket`: `Some(flow)` once established, `None`
    /// if it has not come yet (other notifications are kept for [`AppChannel::poll`]).
    pub fn poll_connect(&mut self, ticket: ConnectTicket) -> Result<Option<Flow>, ConnectError> {
        self.check_poisoned()?;
        if let Some(Some(_)) = self.connects.get(&ticket.0) {
            self.unclaimed -= 1;
            if let Some(Some(answer)) = self.connects.remove(&ticket.0) {
                return answer.map(Some).map_err(ConnectError::Failed);
            }
        }
        loop {
            match self.step(Dst::Vec)? {
                Step::Connect { id, result }
                    if id == ticket.0 && self.connects.get(&id) == Some(&None) =>
                {
                    self.connects.remove(&id);
                    return result.map(Some).map_err(ConnectError::Failed);
                }
                Step::Connect { id, result } => self.settle_connect(id, result),
                Step::Event(ev) => self.pending.push_back(ev),
                Step::Empty => return Ok(None),
                Step::Skipped | Step::Into(..) | Step::TooSmall(_) | Step::Borrowed(..) => {}
            }
        }
    }

    /// Gives up on a connect: should the flow be established later (or have been already,
    /// unclaimed), it is aborted. Unknown tickets are ignored.
    pub fn abandon_connect(&mut self, ticket: ConnectTicket) {
        if let Some(Some(answer)) = self.connects.remove(&ticket.0) {
            self.unclaimed -= 1;
            if let Ok(flow) = answer {
                self.abort_unwanted(flow.handle);
            }
        }
    }

    /// Number of connect requests tracked (in flight or answered and unclaimed).
    pub fn connects_tracked(&self) -> usize {
        self.connects.len()
    }

    /// The checks [`AppChannel::send`] makes before touching the ring, for I/O layers that
    /// must check something of their own (the sidecar's liveness) before writing.
    #[inline]
    pub fn check_send(&self, flow: &Flow, len: usize) -> Result<(), SubmitError> {
        if !self.owns(flow) {
            return Err(SubmitError::WrongChannel);
        }
        if len == 0 {
            return Err(SubmitError::Empty);
        }
        if len > self.max_message_len as usize {
            return Err(SubmitError::TooLarge {
                len,
                max: self.max_message_len,
            });
        }
        Ok(self.check_usable()?)
    }

    /// Writes a `Send` request carrying the concatenation of `parts` as one message.
    #[inline]
    pub fn send(&mut self, flow: &Flow, parts: &[&[u8]]) -> Result<(), SubmitError> {
        self.check_send(flow, parts.iter().map(|p| p.len()).sum())?;
        match self.flows.get(&flow.handle) {
            None => return Err(SubmitError::FlowClosed(self.close_reason(flow.handle))),
            Some(e) if e.state == FlowState::Closing => return Err(SubmitError::FlowClosing),
            Some(_) => {}
        }
        self.push(RecordHeader::new(RecordKind::Send, flow.handle), parts)
    }

    /// Closes this side of `flow` gracefully (`abort`: aborts it). Closing a closed flow, or
    /// closing a flow being closed, does nothing.
    pub fn end_flow(&mut self, flow: &Flow, abort: bool) -> Result<(), SubmitError> {
        if !self.owns(flow) {
            return Err(SubmitError::WrongChannel);
        }
        self.check_usable()?;
        let kind = if abort {
            RecordKind::Abort
        } else {
            RecordKind::Close
        };
        match self.flows.get(&flow.handle) {
            None => return Ok(()),
            Some(e) if e.state == FlowState::Closing && !abort => return Ok(()),
            Some(_) => {}
        }
        if self.loan_out {
            // Written after the loaned record (commit or cancel flushes it).
            self.deferred.push_back((kind, flow.handle));
        } else {
            self.push(RecordHeader::new(kind, flow.handle), &[])?;
        }
        if let Some(e) = self.flows.get_mut(&flow.handle) {
            e.state = FlowState::Closing;
        }
        Ok(())
    }

    // ----- zero-copy -----

    /// Reserves room at the request ring's tail for one message of up to `len` bytes on `flow`
    /// (a loaned send: iceoryx2's `loan_uninit`, Aeron's `try_claim`). Write the message at
    /// [`Loan::as_mut_ptr`], then [`AppChannel::commit`] it (or [`AppChannel::cancel`]). Until
    /// then other sends and connects fail with [`SubmitError::LoanOutstanding`]; closes and
    /// aborts are queued behind the loan. Fails as [`AppChannel::send`] does, with
    /// [`SubmitError::Full`] when the ring lacks room now; needs mirrored rings.
    pub fn loan(&mut self, flow: &Flow, len: usize) -> Result<Loan, SubmitError> {
        if self.loan_out {
            return Err(SubmitError::LoanOutstanding);
        }
        self.check_send(flow, len)?;
        if !self.views.to_sidecar.is_mirrored() {
            return Err(SubmitError::NotMirrored);
        }
        self.check_flow_sendable(flow)?;
        if !self.deferred.is_empty() {
            self.flush_deferred()?;
            if !self.deferred.is_empty() {
                // Queued closes go first; they need the ring too.
                let queued = self.deferred.len() as u64 * Self::footprint(0);
                return Err(SubmitError::Full {
                    need: Self::footprint(len) + queued,
                });
            }
        }
        match self.tx.reserve(len as u64) {
            Ok(Some(ptr)) => {
                self.loan_out = true;
                Ok(Loan {
                    token: self.token,
                    flow: *flow,
                    ptr,
                    len,
                })
            }
            Ok(None) => Err(SubmitError::NotMirrored),
            Err(PushError::Full) => Err(SubmitError::Full {
                need: Self::footprint(len),
            }),
            Err(PushError::TooLarge(n)) => Err(self
                .poison(format!(
                    "a record of {n} bytes does not fit the request ring, \
                     although the layout promised room for the largest message"
                ))
                .into()),
            Err(PushError::Corrupt(e)) => Err(self.corrupt(e).into()),
        }
    }

    /// Publishes the first `used` bytes of `loan` as one message (1 ≤ `used` ≤ its length; the
    /// rest of the room is given back). On any error nothing is published and the loan is
    /// over (as if cancelled): [`SubmitError::BadCommitLength`], the flow ended meanwhile
    /// ([`SubmitError::FlowClosed`]), the channel closed. A returned commit promises what a
    /// returned [`AppChannel::send`] does (docs/CHANNEL.md §5).
    pub fn commit(&mut self, loan: Loan, used: usize) -> Result<(), SubmitError> {
        if loan.token != self.token || !self.loan_out {
            return Err(SubmitError::NotMirrored);
        }
        self.loan_out = false;
        let r = self.commit_checked(&loan, used);
        // Closes queued behind the loan; a fault here shows on the next call.
        let _ = self.flush_deferred();
        r
    }

    fn commit_checked(&mut self, loan: &Loan, used: usize) -> Result<(), SubmitError> {
        if used == 0 || used > loan.len {
            return Err(SubmitError::BadCommitLength {
                used,
                loaned: loan.len,
            });
        }
        self.check_usable()?;
        self.check_flow_sendable(&loan.flow)?;
        let mut h = RecordHeader::new(RecordKind::Send, loan.flow.handle);
        h.len = used as u32;
        self.tx.commit_reserved(h);
        self.wake_sidecar |= self.tx.consumer_needs_wakeup();
        Ok(self.check_published()?)
    }

    /// Ends `loan` without publishing anything (its room is simply not taken).
    pub fn cancel(&mut self, loan: Loan) {
        if loan.token == self.token && self.loan_out {
            self.loan_out = false;
            let _ = self.flush_deferred();
        }
    }

    /// Whether a loan is outstanding.
    pub fn has_loan(&self) -> bool {
        self.loan_out
    }

    /// The bytes of `loan` (of this channel), to fill.
    pub fn loan_bytes(&mut self, loan: &Loan) -> &mut [u8] {
        assert!(
            loan.token == self.token && self.loan_out,
            "a loan of another channel"
        );
        // SAFETY: the loan's room is reserved in the (mirrored) request ring, which the
        // views' contract keeps mapped; only the loan's holder writes it until commit.
        unsafe { std::slice::from_raw_parts_mut(loan.ptr, loan.len) }
    }

    /// The next message left in place in the notification ring (a borrowed receive), or
    /// `Ok(None)` if none is waiting. Flow events met on the way are handled as a
    /// message-only [`AppChannel::poll`] handles them. The view must be given back with
    /// [`AppChannel::release`]; until then its ring space stays taken, and another
    /// `poll_view` fails with [`PollError::ViewOutstanding`] (other receives go on).
    pub fn poll_view(&mut self) -> Result<Option<(Flow, View)>, PollError> {
        loop {
            match self.poll_view_or_event()? {
                None => return Ok(None),
                Some(Viewed::Message(flow, view)) => return Ok(Some((flow, view))),
                Some(Viewed::Event(ev)) => self.skipped(&ev),
            }
        }
    }

    /// [`AppChannel::poll_view`], returning the other events met first instead of passing over
    /// them (each call returns one thing).
    pub fn poll_view_or_event(&mut self) -> Result<Option<Viewed>, PollError> {
        self.check_poisoned()?;
        if self.view_out {
            return Err(PollError::ViewOutstanding);
        }
        if let Some(ev) = self.pending.pop_front() {
            return Ok(Some(match ev {
                Event::Message { flow, data } => {
                    self.view_out = true;
                    let view = View {
                        token: self.token,
                        data: ViewData::Owned(data),
                    };
                    Viewed::Message(flow, view)
                }
                ev => Viewed::Event(ev),
            }));
        }
        loop {
            match self.step(Dst::Borrow)? {
                Step::Empty => return Ok(None),
                Step::Borrowed(flow, view) => {
                    self.view_out = true;
                    return Ok(Some(Viewed::Message(flow, view)));
                }
                Step::Connect { id, result } => self.settle_connect(id, result),
                Step::Event(ev) => return Ok(Some(Viewed::Event(ev))),
                Step::Skipped | Step::Into(..) | Step::TooSmall(_) => {}
            }
        }
    }

    /// Gives `view` back: its ring space is released to the sidecar (woken if it waits).
    pub fn release(&mut self, view: View) {
        if view.token != self.token || !self.view_out {
            return;
        }
        self.view_out = false;
        if view.is_in_place() {
            self.rx.release_held();
            self.wake_sidecar |= self.rx.producer_needs_wakeup();
        }
    }

    /// Whether a view is outstanding.
    pub fn has_view(&self) -> bool {
        self.view_out
    }

    /// The bytes of `view` (of this channel).
    pub fn view_bytes<'a>(&'a self, view: &'a View) -> &'a [u8] {
        assert!(view.token == self.token, "a view of another channel");
        match &view.data {
            // SAFETY: the record is held: the sidecar cannot reuse its bytes before release,
            // and the views' contract keeps them mapped.
            ViewData::Ring { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
            ViewData::Owned(v) => v,
        }
    }

    fn check_flow_sendable(&self, flow: &Flow) -> Result<(), SubmitError> {
        match self.flows.get(&flow.handle) {
            None => Err(SubmitError::FlowClosed(self.close_reason(flow.handle))),
            Some(e) if e.state == FlowState::Closing => Err(SubmitError::FlowClosing),
            Some(_) => Ok(()),
        }
    }

    /// Pushes one request record (after any deferred ones).
    fn push(&mut self, h: RecordHeader, parts: &[&[u8]]) -> Result<(), SubmitError> {
        if self.loan_out {
            return Err(SubmitError::LoanOutstanding);
        }
        if !self.deferred.is_empty() {
            self.flush_deferred()?;
        }
        match self.tx.push(h, parts) {
            Ok(()) => {
                // Its SeqCst fence also orders the publication before `check_published`.
                self.wake_sidecar |= self.tx.consumer_needs_wakeup();
                Ok(self.check_published()?)
            }
            Err(PushError::Full) => Err(SubmitError::Full {
                need: Self::footprint(parts.iter().map(|p| p.len()).sum()),
            }),
            Err(PushError::TooLarge(n)) => Err(self
                .poison(format!(
                    "a record of {n} bytes does not fit the request ring, \
                     although the layout promised room for the largest message"
                ))
                .into()),
            Err(PushError::Corrupt(e)) => Err(self.corrupt(e).into()),
        }
    }

    /// After publishing a record: if the sidecar has begun closing the channel, the record
    /// counts only if the sidecar consumed it. The sidecar sets `closed` before it drains the
    /// ring one last time (docs/CHANNEL.md §5), so a record published before `closed` was set
    /// is consumed, and one published after it may never be: the request must not be reported
    /// done. (The sidecar may still consume it: the error means "not promised".)
    pub fn check_published(&self) -> Result<(), ChannelFault> {
        let Some(code) = self.closed_code() else {
            return Ok(());
        };
        let head = self.tx.ring().control().head.load(Ordering::Acquire);
        if head >= self.tx.position() {
            Ok(())
        } else {
            Err(ChannelFault::Closed(code))
        }
    }

    fn flush_deferred(&mut self) -> Result<(), ChannelFault> {
        if self.loan_out {
            // The tail is reserved: they go after the loaned record.
            return Ok(());
        }
        while let Some(&(kind, handle)) = self.deferred.front() {
            match self.tx.push(RecordHeader::new(kind, handle), &[]) {
                Ok(()) => {
                    self.deferred.pop_front();
                    self.wake_sidecar |= self.tx.consumer_needs_wakeup();
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

    /// The next thing `want` asks for: buffered events first, then the ring. `Ok(None)`: the
    /// ring is empty (wait for [`WaitFor::Data`] and call again). Events a message-only
    /// receive passes over still update the channel's state.
    #[inline]
    pub fn poll(&mut self, want: &mut Want<'_>) -> Result<Option<Got>, PollError> {
        self.check_poisoned()?;
        while let Some(ev) = self.pending.pop_front() {
            match (&mut *want, ev) {
                (Want::Event, ev) => return Ok(Some(Got::Event(ev))),
                (Want::Message, Event::Message { flow, data }) => {
                    return Ok(Some(Got::Message(flow, data)))
                }
                (Want::Into(buf) | Want::IntoOrEvent(buf), Event::Message { flow, data }) => {
                    if data.len() > buf.len() {
                        let (needed, available) = (data.len(), buf.len());
                        self.pending.push_front(Event::Message { flow, data });
                        return Err(PollError::BufferTooSmall { needed, available });
                    }
                    buf[..data.len()].copy_from_slice(&data);
                    return Ok(Some(Got::Into(flow, data.len())));
                }
                (Want::IntoOrEvent(_), ev) => return Ok(Some(Got::Event(ev))),
                (_, ev) => self.skipped(&ev),
            }
        }
        loop {
            let (dst, available) = match want {
                Want::Into(b) | Want::IntoOrEvent(b) => {
                    let n = b.len();
                    (Dst::Into(b), n)
                }
                _ => (Dst::Vec, 0),
            };
            match self.step(dst)? {
                Step::Empty => return Ok(None),
                Step::Skipped => {}
                Step::Connect { id, result } => self.settle_connect(id, result),
                Step::TooSmall(needed) => {
                    return Err(PollError::BufferTooSmall { needed, available })
                }
                Step::Into(flow, n) => return Ok(Some(Got::Into(flow, n))),
                Step::Borrowed(..) => unreachable!("only poll_view borrows"),
                Step::Event(ev) => match (&*want, ev) {
                    (Want::Event | Want::IntoOrEvent(_), ev) => return Ok(Some(Got::Event(ev))),
                    (Want::Message, Event::Message { flow, data }) => {
                        return Ok(Some(Got::Message(flow, data)))
                    }
                    (_, ev) => self.skipped(&ev),
                },
            }
        }
    }

    /// Consumes and translates the next notification. A message for a known flow goes where
    /// `dst` says: a new vector, the caller's buffer (left in place if it does not fit), or
    /// borrowed in the ring.
    fn step(&mut self, dst: Dst<'_>) -> Result<Step, ChannelFault> {
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
            RecordKind::Message => match self.flow(h.flow) {
                // A message for a flow we gave up on (or never knew): nobody can take it.
                None => Step::Skipped,
                Some(flow) => match dst {
                    Dst::Into(buf) if len > buf.len() => return Ok(Step::TooSmall(len)),
                    Dst::Into(buf) => {
                        self.rx.read_payload(&rec, &mut buf[..len]);
                        Step::Into(flow, len)
                    }
                    Dst::Vec => {
                        let mut data = vec![0u8; len];
                        self.rx.read_payload(&rec, &mut data);
                        Step::Event(Event::Message { flow, data })
                    }
                    Dst::Borrow => {
                        let data = match self.rx.payload_ptr(&rec) {
                            Some(ptr) if self.rx.consume_held(&rec) => {
                                // Consumed, but its bytes stay ours until `release`.
                                return Ok(Step::Borrowed(
                                    flow,
                                    View {
                                        token: self.token,
                                        data: ViewData::Ring { ptr, len },
                                    },
                                ));
                            }
                            _ => ViewData::Owned(self.rx.payload_to_vec(&rec)),
                        };
                        Step::Borrowed(
                            flow,
                            View {
                                token: self.token,
                                data,
                            },
                        )
                    }
                },
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
                let flow = self.insert_flow(h.flow, info);
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
            RecordKind::Closed => match self.remove_flow(h.flow, code) {
                Some(flow) => Step::Event(Event::Closed { flow, reason: code }),
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
        self.wake_sidecar |= self.rx.producer_needs_wakeup();
        Ok(step)
    }

    fn insert_flow(&mut self, handle: u32, info: FlowInfo) -> Flow {
        self.flows.insert(
            handle,
            FlowEntry {
                info,
                state: FlowState::Open,
                peer_closed: false,
            },
        );
        let flow = Flow {
            channel: self.token,
            handle,
            info,
        };
        self.by_addrs
            .insert((flow.local_addr(), flow.remote_addr()), handle);
        flow
    }

    fn remove_flow(&mut self, handle: u32, code: Option<CloseCode>) -> Option<Flow> {
        let e = self.flows.remove(&handle)?;
        let flow = Flow {
            channel: self.token,
            handle,
            info: e.info,
        };
        self.by_addrs
            .remove(&(flow.local_addr(), flow.remote_addr()));
        if self.graveyard.len() >= GRAVEYARD {
            self.graveyard.pop_front();
        }
        self.graveyard.push_back((handle, code));
        Some(flow)
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

    /// A connect answer nobody is polling for right now: kept for its ticket if one is in
    /// flight, otherwise (abandoned, duplicate, forged id) its flow is aborted.
    fn settle_connect(&mut self, id: u32, result: Result<Flow, Option<CloseCode>>) {
        match self.connects.get_mut(&id) {
            Some(slot @ None) => {
                *slot = Some(result);
                self.unclaimed += 1;
                if self.unclaimed > UNCLAIMED_ANSWERS {
                    self.drop_oldest_unclaimed();
                }
            }
            _ => {
                if let Ok(flow) = result {
                    self.abort_unwanted(flow.handle);
                }
            }
        }
    }

    fn drop_oldest_unclaimed(&mut self) {
        let oldest = self
            .connects
            .iter()
            .find(|(_, a)| a.is_some())
            .map(|(&id, _)| id);
        if let Some(id) = oldest {
            self.abandon_connect(ConnectTicket(id));
        }
    }

    /// Aborts a flow nobody will use (written when ring space allows).
    fn abort_unwanted(&mut self, handle: u32) {
        if let Some(e) = self.flows.get_mut(&handle) {
            e.state = FlowState::Closing;
            self.deferred.push_back((RecordKind::Abort, handle));
        }
    }

    #[inline]
    fn flow(&self, handle: u32) -> Option<Flow> {
        self.flows.get(&handle).map(|e| Flow {
            channel: self.token,
            handle,
            info: e.info,
        })
    }

    fn close_reason(&self, handle: u32) -> Option<CloseCode> {
        self.graveyard
            .iter()
            .rev()
            .find(|(h, _)| *h == handle)
            .and_then(|(_, c)| *c)
    }

    fn corrupt(&mut self, e: RingError) -> ChannelFault {
        self.poison(e.to_string())
    }

    fn poison(&mut self, why: String) -> ChannelFault {
        let why = format!("the sidecar broke the channel protocol: {why}");
        self.poisoned = Some(why.clone());
        ChannelFault::Corrupt(why)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod zero_copy_tests;
