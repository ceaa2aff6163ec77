//! The engine half of a channel (docs/CHANNEL.md §3) as a state machine without I/O.
//!
//! A [`Channel`] consumes the request ring, applies the requests to a [`Transport`] the caller
//! provides, keeps the channel's flows, and writes notifications with back-pressure. It performs
//! no syscall, reads no clock and never waits — like `quinn-proto`'s `Connection`, whose driver
//! (`quinn`) owns sockets and timers: here the sidecar owns the transport (`machnet-core`), the
//! eventfds and the scheduling. After each call the caller asks [`Channel::take_wake_app`]
//! whether the app must be woken (the app announced a wait on a ring that changed).
//!
//! Everything read from the shared memory is untrusted and validated by the ring code; a
//! ring-level violation is returned as [`Violation`] and the caller closes the channel. Request
//! errors are answered on the notification ring.
//!
//! Notifications of a flow are written in order: `Connected`/`Accepted`, its messages, then
//! `PeerClosed`, then `Closed`. A message is taken from the transport only when the notification
//! ring has room for it (back-pressure, §3.4); otherwise it stays in the transport, whose receive
//! window closes ([`Transport::peek_len`] before [`Transport::recv`]).

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{fence, Ordering};

use bytes::Bytes;

use crate::ring::record_footprint;
use crate::{
    ChannelViews, CloseCode, ConnectRequest, Consumer, FlowInfo, Peeked, Producer, PushError,
    RecordHeader, RecordKind, RingError,
};

/// Requests consumed per [`Channel::consume`] call (fairness between channels).
const REQUEST_BUDGET: usize = 64;
/// Payload bytes consumed per [`Channel::consume`] call.
const REQUEST_BYTES_BUDGET: usize = 4 << 20;
/// Payload-less notifications (`ConnectFailed`, `RequestFailed`) queued before the channel stops
/// consuming requests until the app reads its notifications.
const MISC_CAP: usize = 1024;
/// Messages delivered from one flow before the channel's other flows get their turn.
const MESSAGES_PER_TURN: usize = 16;

/// What a channel needs from the transport under it (and from its host, which indexes flows to
/// route the transport's events back to [`Channel::on_connected`] and friends).
pub trait Transport {
    /// The transport's flow identifier.
    type Flow: Copy + Eq + Hash + Debug;
    /// A flow's place in its application's flow limit, held as long as the channel keeps the
    /// flow and handed back by [`Channel::finish_detach`].
    type Permit;

    /// A place in the application's flow limit, or `None` if it holds its limit.
    fn admit(&mut self) -> Option<Self::Permit>;
    /// Opens a flow; a refusal is answered with `ConnectFailed` carrying the code.
    fn connect(&mut self, req: ConnectRequest) -> Result<Self::Flow, CloseCode>;
    /// Queues a message on an open flow.
    fn send(&mut self, flow: Self::Flow, msg: Bytes) -> Result<(), SendRefused>;
    /// Length of the next received message of `flow`, if one is waiting.
    fn peek_len(&mut self, flow: Self::Flow) -> Option<usize>;
    /// Takes the next received message of `flow`.
    fn recv(&mut self, flow: Self::Flow) -> Option<Bytes>;
    /// Closes `flow` gracefully (after the messages queued).
    fn close(&mut self, flow: Self::Flow) -> Result<(), UnknownFlow>;
    /// Aborts `flow` (the peer gets a reset).
    fn abort(&mut self, flow: Self::Flow) -> Result<(), UnknownFlow>;
    /// Forgets a flow that ended, and what it still holds.
    fn discard(&mut self, flow: Self::Flow);
    /// Whether the transport still has `flow` (it has not ended).
    fn exists(&self, flow: Self::Flow) -> bool;
    /// `flow` now belongs to `handle` on this channel: route its events here.
    fn adopt(&mut self, flow: Self::Flow, handle: u32);
    /// This channel no longer owns `flow`.
    fn release(&mut self, flow: Self::Flow);
}

/// Why [`Transport::send`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefused {
    /// No room now: the request stays in the ring until [`Channel::on_writable`].
    BufferFull,
    /// Never: answered with `RequestFailed` carrying the code.
    Failed(CloseCode),
}

/// The transport does not know the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownFlow;

/// The app broke the channel protocol; the channel must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The shared ring indices or a record header are inconsistent.
    #[error("ring violation: {0}")]
    Ring(#[from] RingError),
    /// A record of a kind apps may not send.
    #[error("record kind {0:?} is not a request")]
    NotARequest(RecordKind),
}

/// Counters of one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests consumed.
    pub requests: u64,
    /// Notifications written.
    pub notifications: u64,
    /// Requests answered with `ConnectFailed` / `RequestFailed`.
    pub request_errors: u64,
}

/// Where a flow of the channel stands, as far as the engine half knows (for statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPhase {
    /// A `Connect` not established yet.
    Connecting,
    /// Established, both directions open (this side may have closed its own).
    Established,
    /// The peer finished sending.
    PeerClosed,
    /// The transport flow ended (its `Closed` or `ConnectFailed` may still be unwritten).
    Closed,
}

impl FlowPhase {
    /// A stable snake-case name.
    pub fn name(self) -> &'static str {
        match self {
            FlowPhase::Connecting => "connecting",
            FlowPhase::Established => "established",
            FlowPhase::PeerClosed => "peer_closed",
            FlowPhase::Closed => "closed",
        }
    }
}

/// How a flow came to the channel, and what its announcement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Connect { request_id: u32 },
    Accepted { port: u16 },
}

/// Where a flow stands, as far as the app has been told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// A `Connect` the transport has not established yet.
    Connecting,
    /// The connect ended before it was established: `ConnectFailed` to write, then the entry
    /// goes (the app never learns a handle).
    ConnectFailed(CloseCode),
    /// Established; `Connected`/`Accepted` not written yet. `end` is what is known already.
    Unannounced { info: Option<FlowInfo>, end: End },
    /// The app knows the flow.
    Announced(End),
}

/// What is known of a flow's end once it is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both directions open.
    Open,
    /// The peer finished sending: `PeerClosed` to write (after its messages).
    PeerFinished,
    /// `PeerClosed` written.
    PeerFinishedTold,
    /// The transport flow is gone: `Closed` to write (after its messages, and `PeerClosed`
    /// first if `peer_finished`).
    Gone {
        code: CloseCode,
        peer_finished: bool,
    },
}

impl End {
    fn peer_closed(self) -> End {
        match self {
            End::Open => End::PeerFinished,
            other => other,
        }
    }

    fn closed(self, code: CloseCode) -> End {
        match self {
            End::Open | End::PeerFinishedTold => End::Gone {
                code,
                peer_finished: false,
            },
            End::PeerFinished => End::Gone {
                code,
                peer_finished: true,
            },
            gone @ End::Gone { .. } => gone,
        }
    }
}

impl Lifecycle {
    /// Whether the transport flow may still be open (it has not reported its end).
    fn transport_open(self) -> bool {
        match self {
            Lifecycle::Connecting => true,
            Lifecycle::ConnectFailed(_) => false,
            Lifecycle::Unannounced { end, .. } | Lifecycle::Announced(end) => {
                !matches!(end, End::Gone { .. })
            }
        }
    }

    /// Whether the app may use the flow: announced and not ended.
    fn usable(self) -> bool {
        matches!(self, Lifecycle::Announced(end) if !matches!(end, End::Gone { .. }))
    }
}

#[derive(Debug)]
struct FlowEntry<F, P> {
    id: F,
    origin: Origin,
    state: Lifecycle,
    /// Messages may be waiting in the transport.
    readable: bool,
    /// A message taken from the transport that did not fit in the ring after all.
    pending: Option<Bytes>,
    /// In the channel's dirty list.
    dirty: bool,
    /// The flow's slot in its application's flow limit, given back when the entry goes.
    permit: P,
}

/// A `Send` the transport refused for lack of buffer space; retried when the flow becomes
/// writable.
#[derive(Debug)]
struct Stall<F> {
    flow: F,
    msg: Bytes,
    rec: Peeked,
    retry: bool,
}

/// Outcome of flushing one flow.
enum Flushed {
    /// Nothing left for now.
    Done,
    /// Everything told, `Closed` included: the entry goes.
    Finished,
    /// The ring is full.
    Blocked,
    /// Delivered its share of messages; more may be waiting.
    Yield,
}

/// The notification ring with its bookkeeping.
struct Notes {
    ring: Producer,
    /// Footprint of the notification that did not fit, if one did not.
    blocked_need: Option<u64>,
    /// Something was written in the current flush.
    pushed: bool,
    counters: Counters,
}

impl Notes {
    /// Writes a record; `Ok(false)` if the ring has no room for it.
    fn push(&mut self, h: RecordHeader, payload: &[u8]) -> Result<bool, Violation> {
        match self.ring.push(h, &[payload]) {
            Ok(()) => {
                self.pushed = true;
                self.counters.notifications += 1;
                Ok(true)
            }
            Err(PushError::Full) => {
                self.blocked_need = Some(record_footprint(payload.len() as u64));
                Ok(false)
            }
            // Impossible by construction (rings hold a maximum-size message); never loop.
            Err(PushError::TooLarge(_)) => {
                debug_assert!(false, "notification larger than the ring");
                Ok(true)
            }
            Err(PushError::Corrupt(e)) => Err(Violation::Ring(e)),
        }
    }

    /// Whether a record of `len` payload bytes fits now; notes the need if not.
    fn fits(&mut self, len: usize) -> Result<bool, Violation> {
        let need = record_footprint(len as u64);
        if self.ring.free()? < need {
            self.blocked_need = Some(need);
            return Ok(false);
        }
        Ok(true)
    }
}

fn note(kind: RecordKind, flow: u32, aux: u32, flags: u8) -> RecordHeader {
    RecordHeader {
        len: 0,
        kind,
        flags,
        flow,
        aux,
    }
}

/// One channel's engine half, over transport flows `F` holding permits `P`.
pub struct Channel<F, P> {
    views: ChannelViews,
    requests: Consumer,
    notes: Notes,
    flows: HashMap<u32, FlowEntry<F, P>>,
    next_handle: u32,
    /// Flows with notifications to write, in the order they got them.
    dirty: VecDeque<u32>,
    /// Payload-less answers to requests, written before the flows' notifications.
    misc: VecDeque<RecordHeader>,
    stalled: Option<Stall<F>>,
    /// Set once the channel is detached gracefully (docs/CHANNEL.md §5): it carries out the
    /// requests left in its ring and writes no notifications.
    detaching: bool,
    wake_app: bool,
}

impl<F, P> Debug for Channel<F, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("flows", &self.flows.len())
            .field("detaching", &self.detaching)
            .finish_non_exhaustive()
    }
}

impl<F: Copy + Eq + Hash + Debug, P> Channel<F, P> {
    /// Takes over a freshly created channel (both rings at position 0).
    pub fn new(views: ChannelViews, max_message_len: u32) -> Self {
        Channel {
            requests: Consumer::new(views.to_sidecar, 0, max_message_len),
            notes: Notes {
                ring: Producer::new(views.to_app, 0),
                blocked_need: None,
                pushed: false,
                counters: Counters::default(),
            },
            views,
            flows: HashMap::new(),
            next_handle: 1,
            dirty: VecDeque::new(),
            misc: VecDeque::new(),
            stalled: None,
            detaching: false,
            wake_app: false,
        }
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.notes.counters
    }

    /// Live flows of this channel.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Where flow `handle` stands (`None`: the channel has no such flow).
    pub fn flow_phase(&self, handle: u32) -> Option<FlowPhase> {
        Some(match self.flows.get(&handle)?.state {
            Lifecycle::Connecting => FlowPhase::Connecting,
            Lifecycle::ConnectFailed(_) => FlowPhase::Closed,
            Lifecycle::Unannounced { end, .. } | Lifecycle::Announced(end) => match end {
                End::Open => FlowPhase::Established,
                End::PeerFinished | End::PeerFinishedTold => FlowPhase::PeerClosed,
                End::Gone { .. } => FlowPhase::Closed,
            },
        })
    }

    /// Whether a refused `Send` holds up the request ring.
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Whether the channel is detaching ([`Channel::detach`]).
    pub fn is_detaching(&self) -> bool {
        self.detaching
    }

    /// Message bytes held here (outside the transport and the rings).
    pub fn held_bytes(&self) -> usize {
        self.flows
            .values()
            .filter_map(|e| e.pending.as_ref().map(Bytes::len))
            .sum::<usize>()
            + self.stalled.as_ref().map_or(0, |s| s.msg.len())
    }

    /// Whether the app must be woken (it waits on a ring that changed); clears the flag.
    pub fn take_wake_app(&mut self) -> bool {
        std::mem::take(&mut self.wake_app)
    }

    fn can_consume(&self) -> bool {
        self.stalled.as_ref().is_none_or(|s| s.retry) && self.misc.len() < MISC_CAP
    }

    fn alloc_handle(&mut self) -> Option<u32> {
        let h = self.next_handle;
        self.next_handle = h.checked_add(1)?;
        Some(h)
    }

    fn fail(&mut self, kind: RecordKind, flow: u32, aux: u32, code: CloseCode) {
        self.notes.counters.request_errors += 1;
        // Nobody reads the answers of a detaching channel.
        if !self.detaching {
            self.misc.push_back(note(kind, flow, aux, code as u8));
        }
    }

    fn request_failed(&mut self, req: &RecordHeader, code: CloseCode) {
        self.fail(
            RecordKind::RequestFailed,
            req.flow,
            u32::from(req.kind as u8),
            code,
        );
    }

    /// Applies `change` to the entry of `handle`, if any, and queues it for flushing.
    fn update(&mut self, handle: u32, change: impl FnOnce(&mut FlowEntry<F, P>)) {
        if let Some(e) = self.flows.get_mut(&handle) {
            change(e);
            if !e.dirty {
                e.dirty = true;
                self.dirty.push_back(handle);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Requests
    // ------------------------------------------------------------------------------------------

    /// Consumes requests (within a budget) and applies them to the transport. Returns how many
    /// were consumed.
    pub fn consume<T>(&mut self, t: &mut T) -> Result<usize, Violation>
    where
        T: Transport<Flow = F, Permit = P>,
    {
        let mut n = 0;
        if let Some(stall) = self.stalled.as_mut() {
            if !stall.retry {
                return Ok(0);
            }
            stall.retry = false;
            match t.send(stall.flow, stall.msg.clone()) {
                Err(SendRefused::BufferFull) => return Ok(0),
                res => {
                    let stall = self.stalled.take().expect("checked");
                    self.requests.consume(&stall.rec);
                    n += 1;
                    if let Err(SendRefused::Failed(code)) = res {
                        self.request_failed(&stall.rec.header, code);
                    }
                }
            }
        }
        let mut bytes = 0usize;
        while n < REQUEST_BUDGET && bytes < REQUEST_BYTES_BUDGET && self.can_consume() {
            let Some(rec) = self.requests.peek()? else {
                break;
            };
            let h = rec.header;
            bytes += h.len as usize;
            let consumed = match h.kind {
                // A detaching channel opens no flows: nobody would use them.
                RecordKind::Connect if self.detaching => true,
                RecordKind::Connect => {
                    self.connect(t, &rec);
                    true
                }
                RecordKind::Send => self.send(t, &rec),
                RecordKind::Close | RecordKind::Abort => {
                    self.close(t, &h);
                    true
                }
                kind => return Err(Violation::NotARequest(kind)),
            };
            if !consumed {
                break;
            }
            self.requests.consume(&rec);
            n += 1;
        }
        self.notes.counters.requests += n as u64;
        if n > 0 && self.requests.producer_needs_wakeup() {
            self.wake_app = true;
        }
        Ok(n)
    }

    fn connect<T: Transport<Flow = F, Permit = P>>(&mut self, t: &mut T, rec: &Peeked) {
        let h = rec.header;
        let fail = |this: &mut Self, code| this.fail(RecordKind::ConnectFailed, 0, h.aux, code);
        if h.flow != 0 || h.flags != 0 || h.len as usize != ConnectRequest::LEN {
            return fail(self, CloseCode::InvalidRequest);
        }
        let mut buf = [0u8; ConnectRequest::LEN];
        self.requests.read_payload(rec, &mut buf);
        let Some(req) = ConnectRequest::decode(&buf) else {
            return fail(self, CloseCode::InvalidRequest);
        };
        let Some(handle) = self.alloc_handle() else {
            return fail(self, CloseCode::Exhausted);
        };
        // The application's flow limit (docs/CHANNEL.md §2).
        let Some(permit) = t.admit() else {
            return fail(self, CloseCode::Exhausted);
        };
        match t.connect(req) {
            Ok(id) => {
                t.adopt(id, handle);
                let origin = Origin::Connect { request_id: h.aux };
                let entry = FlowEntry::new(id, origin, Lifecycle::Connecting, permit);
                self.flows.insert(handle, entry);
            }
            Err(code) => fail(self, code),
        }
    }

    /// Returns false if the record must stay in the ring (the transport's buffer is full).
    fn send<T: Transport<Flow = F, Permit = P>>(&mut self, t: &mut T, rec: &Peeked) -> bool {
        let h = rec.header;
        if h.flags != 0 || h.aux != 0 || h.len == 0 {
            self.request_failed(&h, CloseCode::InvalidRequest);
            return true;
        }
        let Some(id) = self.usable_flow(h.flow) else {
            self.request_failed(&h, CloseCode::UnknownFlow);
            return true;
        };
        let msg = Bytes::from(self.requests.payload_to_vec(rec));
        match t.send(id, msg.clone()) {
            Ok(()) => true,
            Err(SendRefused::BufferFull) => {
                self.stalled = Some(Stall {
                    flow: id,
                    msg,
                    rec: *rec,
                    retry: false,
                });
                false
            }
            Err(SendRefused::Failed(code)) => {
                self.request_failed(&h, code);
                true
            }
        }
    }

    fn close<T: Transport<Flow = F, Permit = P>>(&mut self, t: &mut T, h: &RecordHeader) {
        if h.flags != 0 || h.aux != 0 || h.len != 0 {
            return self.request_failed(h, CloseCode::InvalidRequest);
        }
        let Some(id) = self.usable_flow(h.flow) else {
            return self.request_failed(h, CloseCode::UnknownFlow);
        };
        let res = if h.kind == RecordKind::Abort {
            t.abort(id)
        } else {
            t.close(id)
        };
        if res.is_err() {
            self.request_failed(h, CloseCode::UnknownFlow);
        }
    }

    /// The transport flow of a handle the app may still use.
    fn usable_flow(&self, handle: u32) -> Option<F> {
        self.flows
            .get(&handle)
            .filter(|e| e.state.usable())
            .map(|e| e.id)
    }

    // ------------------------------------------------------------------------------------------
    // Transport events (routed here by the host)
    // ------------------------------------------------------------------------------------------

    /// The transport established a flow this channel connected.
    pub fn on_connected(&mut self, handle: u32, info: Option<FlowInfo>) {
        self.update(handle, |e| {
            if e.state == Lifecycle::Connecting {
                e.state = Lifecycle::Unannounced {
                    info,
                    end: End::Open,
                };
            }
        });
    }

    /// A listener of this channel accepted `id` on `port`. Returns false if the channel takes
    /// no more flows (it is detaching, out of handles, or its application holds its flow
    /// limit): the caller aborts the flow.
    pub fn on_accepted<T>(&mut self, t: &mut T, id: F, port: u16, info: Option<FlowInfo>) -> bool
    where
        T: Transport<Flow = F, Permit = P>,
    {
        if self.detaching {
            return false;
        }
        let Some(handle) = self.alloc_handle() else {
            return false;
        };
        let Some(permit) = t.admit() else {
            return false;
        };
        let state = Lifecycle::Unannounced {
            info,
            end: End::Open,
        };
        let entry = FlowEntry::new(id, Origin::Accepted { port }, state, permit);
        self.flows.insert(handle, entry);
        t.adopt(id, handle);
        self.update(handle, |_| {});
        true
    }

    /// Messages are waiting in the transport for `handle`.
    pub fn on_readable(&mut self, handle: u32) {
        self.update(handle, |e| e.readable = true);
    }

    /// The peer closed its direction of `handle`.
    pub fn on_peer_closed(&mut self, handle: u32) {
        self.update(handle, |e| match &mut e.state {
            Lifecycle::Unannounced { end, .. } | Lifecycle::Announced(end) => {
                *end = end.peer_closed()
            }
            Lifecycle::Connecting | Lifecycle::ConnectFailed(_) => {}
        });
    }

    /// The transport flow `id` behind `handle` is gone, for `code`.
    pub fn on_closed(&mut self, handle: u32, id: F, code: CloseCode) {
        self.update(handle, |e| {
            e.state = match e.state {
                Lifecycle::Connecting => Lifecycle::ConnectFailed(code),
                Lifecycle::Unannounced { info, end } => Lifecycle::Unannounced {
                    info,
                    end: end.closed(code),
                },
                Lifecycle::Announced(end) => Lifecycle::Announced(end.closed(code)),
                failed @ Lifecycle::ConnectFailed(_) => failed,
            }
        });
        self.on_writable(id);
    }

    /// The transport can take more data on `id`: retry a stalled send.
    pub fn on_writable(&mut self, id: F) {
        if let Some(s) = self.stalled.as_mut() {
            if s.flow == id {
                s.retry = true;
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Notifications
    // ------------------------------------------------------------------------------------------

    /// Writes pending notifications while they fit, taking messages from the transport as room
    /// allows. Returns whether anything was written.
    pub fn flush<T>(&mut self, t: &mut T) -> Result<bool, Violation>
    where
        T: Transport<Flow = F, Permit = P>,
    {
        self.notes.pushed = false;
        self.notes.blocked_need = None;
        let mut blocked = false;
        let mut yields = 0;
        while let Some(&h) = self.misc.front() {
            if !self.notes.push(h, &[])? {
                blocked = true;
                break;
            }
            self.misc.pop_front();
        }
        while !blocked {
            let Some(&handle) = self.dirty.front() else {
                break;
            };
            let Some(e) = self.flows.get_mut(&handle) else {
                self.dirty.pop_front();
                continue;
            };
            match flush_flow(&mut self.notes, handle, e, t)? {
                Flushed::Done => {
                    e.dirty = false;
                    self.dirty.pop_front();
                }
                Flushed::Finished => {
                    self.dirty.pop_front();
                    if let Some(e) = self.flows.remove(&handle) {
                        // A failed connect has nothing to forget; a closed flow may have
                        // messages left only if it was never readable.
                        if !matches!(e.state, Lifecycle::ConnectFailed(_)) {
                            t.discard(e.id);
                        }
                    }
                }
                Flushed::Yield => {
                    // Its turn is over: let the other flows of the channel deliver too.
                    self.dirty.pop_front();
                    self.dirty.push_back(handle);
                    yields += 1;
                    if yields > self.dirty.len() * 64 {
                        break;
                    }
                }
                Flushed::Blocked => blocked = true,
            }
        }
        let pushed = self.notes.pushed;
        if pushed && self.notes.ring.consumer_needs_wakeup() {
            self.wake_app = true;
        }
        Ok(pushed)
    }

    // ------------------------------------------------------------------------------------------
    // Sleeping
    // ------------------------------------------------------------------------------------------

    /// Announces that the engine is about to sleep (docs/CHANNEL.md §4). Returns `Ok(false)` if
    /// there is work after all (a request to consume, or room for a blocked notification).
    pub fn prepare_sleep(&mut self) -> Result<bool, Violation> {
        if self.can_consume() && self.requests.prepare_wait()? {
            return Ok(false);
        }
        if let Some(need) = self.notes.blocked_need {
            if self.notes.ring.prepare_wait()? >= need {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Withdraws the announcements of [`Channel::prepare_sleep`] after waking.
    pub fn cancel_sleep(&mut self) {
        self.requests.cancel_wait();
        self.notes.ring.cancel_wait();
    }

    /// Whether a notification waits for room that the app has since made.
    pub fn has_room_for_blocked(&mut self) -> bool {
        match self.notes.blocked_need {
            Some(need) => self.notes.ring.free().map(|f| f >= need).unwrap_or(true),
            None => false,
        }
    }

    /// Whether flushing could make progress (something queued and not known to be blocked).
    pub fn wants_flush(&self) -> bool {
        (!self.misc.is_empty() || !self.dirty.is_empty()) && self.notes.blocked_need.is_none()
    }

    // ------------------------------------------------------------------------------------------
    // Detaching and closing
    // ------------------------------------------------------------------------------------------

    /// Starts a graceful detach (docs/CHANNEL.md §5): sets the header's `closed` word to `code`
    /// and wakes the app; aborts the flows the app never saw (connects in progress, accepted
    /// flows not yet announced) and forgets ended ones; drops queued notifications. The
    /// requests still in the ring are carried out from now on ([`Channel::consume`]) and the
    /// flows closed once it is drained ([`Channel::finish_detach`]).
    pub fn detach<T>(&mut self, t: &mut T, code: CloseCode)
    where
        T: Transport<Flow = F, Permit = P>,
    {
        self.detaching = true;
        self.flows.retain(|_, e| {
            let keep = e.state.usable();
            if !keep {
                t.release(e.id);
                if e.state.transport_open() {
                    let _ = t.abort(e.id);
                }
                t.discard(e.id);
            }
            keep
        });
        for e in self.flows.values_mut() {
            e.pending = None;
            e.dirty = false;
        }
        self.dirty.clear();
        self.misc.clear();
        self.notes.blocked_need = None;
        self.set_closed_word(code);
    }

    /// Whether a detaching channel has carried out every request its app published.
    pub fn is_drained(&mut self) -> Result<bool, Violation> {
        Ok(self.stalled.is_none() && self.requests.peek()?.is_none())
    }

    /// Ends a drained detach: closes each remaining flow gracefully (its FIN follows the
    /// messages already queued) and hands those the transport still has over with their
    /// permits (an orphan still counts against its application's flow limits).
    pub fn finish_detach<T>(&mut self, t: &mut T) -> Vec<(F, P)>
    where
        T: Transport<Flow = F, Permit = P>,
    {
        let mut orphans = Vec::with_capacity(self.flows.len());
        for (_, e) in self.flows.drain() {
            t.release(e.id);
            // Closing a flow the app closed already changes nothing; one the transport no
            // longer knows has ended.
            let _ = t.close(e.id);
            if t.exists(e.id) {
                orphans.push((e.id, e.permit));
            }
        }
        orphans
    }

    /// A flow of a detaching channel ended: forget it and what it still holds.
    pub fn forget<T>(&mut self, t: &mut T, handle: u32)
    where
        T: Transport<Flow = F, Permit = P>,
    {
        if let Some(e) = self.flows.remove(&handle) {
            t.discard(e.id);
        }
    }

    /// Closes the channel: aborts its live flows (peers get a reset), sets the header's
    /// `closed` word to `code` and wakes the app.
    pub fn close_all<T>(&mut self, t: &mut T, code: CloseCode)
    where
        T: Transport<Flow = F, Permit = P>,
    {
        for (_, e) in self.flows.drain() {
            t.release(e.id);
            if e.state.transport_open() {
                let _ = t.abort(e.id);
            }
            t.discard(e.id);
        }
        self.dirty.clear();
        self.stalled = None;
        self.set_closed_word(code);
    }

    fn set_closed_word(&mut self, code: CloseCode) {
        self.views.closed().store(code as u32, Ordering::SeqCst);
        // Orders the store before the drain's reads of the ring's `tail`: a record the app
        // published before it saw `closed` is consumed (docs/CHANNEL.md §5; the client's
        // `check_published` is the other half).
        fence(Ordering::SeqCst);
        self.wake_app = true;
    }
}

impl<F, P> FlowEntry<F, P> {
    fn new(id: F, origin: Origin, state: Lifecycle, permit: P) -> Self {
        FlowEntry {
            id,
            origin,
            state,
            readable: false,
            pending: None,
            dirty: false,
            permit,
        }
    }
}

/// Flushes one flow: its announcement, its messages (up to [`MESSAGES_PER_TURN`]), then its end.
fn flush_flow<F, P, T>(
    notes: &mut Notes,
    handle: u32,
    e: &mut FlowEntry<F, P>,
    t: &mut T,
) -> Result<Flushed, Violation>
where
    F: Copy,
    T: Transport<Flow = F, Permit = P>,
{
    match e.state {
        Lifecycle::Connecting => return Ok(Flushed::Done),
        Lifecycle::ConnectFailed(code) => {
            let Origin::Connect { request_id } = e.origin else {
                // Accepted flows are established at birth.
                return Ok(Flushed::Finished);
            };
            let h = note(RecordKind::ConnectFailed, 0, request_id, code as u8);
            return Ok(if notes.push(h, &[])? {
                Flushed::Finished
            } else {
                Flushed::Blocked
            });
        }
        Lifecycle::Unannounced { info, end } => {
            let (kind, aux) = match e.origin {
                Origin::Connect { request_id } => (RecordKind::Connected, request_id),
                Origin::Accepted { port } => (RecordKind::Accepted, u32::from(port)),
            };
            let info = info.map(|i| i.encode()).unwrap_or([0u8; FlowInfo::LEN]);
            if !notes.push(note(kind, handle, aux, 0), &info)? {
                return Ok(Flushed::Blocked);
            }
            e.state = Lifecycle::Announced(end);
        }
        Lifecycle::Announced(_) => {}
    }
    // Messages: the one held here first, then from the transport while they fit.
    if let Some(m) = e.pending.take() {
        if !notes.push(note(RecordKind::Message, handle, 0, 0), &m)? {
            e.pending = Some(m);
            return Ok(Flushed::Blocked);
        }
    }
    let mut delivered = 0;
    while e.readable {
        if delivered == MESSAGES_PER_TURN {
            return Ok(Flushed::Yield);
        }
        delivered += 1;
        // Take a message only if it fits in the ring now (§3.4): otherwise it stays in the
        // transport and the flow's receive window closes.
        let Some(len) = t.peek_len(e.id) else {
            e.readable = false;
            break;
        };
        if !notes.fits(len)? {
            return Ok(Flushed::Blocked);
        }
        match t.recv(e.id) {
            Some(m) => {
                if !notes.push(note(RecordKind::Message, handle, 0, 0), &m)? {
                    e.pending = Some(m);
                    return Ok(Flushed::Blocked);
                }
            }
            None => e.readable = false,
        }
    }
    let Lifecycle::Announced(end) = &mut e.state else {
        unreachable!("announced above");
    };
    match *end {
        End::Open | End::PeerFinishedTold => Ok(Flushed::Done),
        End::PeerFinished => {
            if !notes.push(note(RecordKind::PeerClosed, handle, 0, 0), &[])? {
                return Ok(Flushed::Blocked);
            }
            *end = End::PeerFinishedTold;
            Ok(Flushed::Done)
        }
        End::Gone {
            code,
            peer_finished,
        } => {
            if peer_finished {
                if !notes.push(note(RecordKind::PeerClosed, handle, 0, 0), &[])? {
                    return Ok(Flushed::Blocked);
                }
                *end = End::Gone {
                    code,
                    peer_finished: false,
                };
            }
            if !notes.push(note(RecordKind::Closed, handle, 0, code as u8), &[])? {
                return Ok(Flushed::Blocked);
            }
            Ok(Flushed::Finished)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_memory::Region;
    use crate::ChannelLayout;
    use std::net::Ipv4Addr;

    type Handle = u32;
    type Flow = u32;
    /// A permit names the flow-limit slot it holds (tests check they come back).
    type Permit = u32;

    /// A transport flow of the fake.
    #[derive(Default)]
    struct FakeFlow {
        inbox: VecDeque<Bytes>,
        sent: Vec<Bytes>,
        closed: bool,
        aborted: bool,
    }

    /// A transport that does what it is told and records what it was asked.
    #[derive(Default)]
    struct Fake {
        next: Flow,
        flows: HashMap<Flow, FakeFlow>,
        owners: HashMap<Flow, Handle>,
        discarded: Vec<Flow>,
        /// Flow-limit slots left.
        permits: u32,
        refuse_connect: Option<CloseCode>,
        /// Messages `send` takes before answering `BufferFull`.
        send_room: usize,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                permits: 100,
                send_room: usize::MAX,
                ..Fake::default()
            }
        }

        fn open_flow(&mut self) -> Flow {
            self.next += 1;
            self.flows.insert(self.next, FakeFlow::default());
            self.next
        }

        fn deliver(&mut self, flow: Flow, msg: &[u8]) {
            let f = self.flows.get_mut(&flow).unwrap();
            f.inbox.push_back(Bytes::copy_from_slice(msg));
        }
    }

    impl Transport for Fake {
        type Flow = Flow;
        type Permit = Permit;

        fn admit(&mut self) -> Option<Permit> {
            self.permits = self.permits.checked_sub(1)?;
            Some(self.permits)
        }
        fn connect(&mut self, req: ConnectRequest) -> Result<Flow, CloseCode> {
            assert_eq!(req.remote_ip, Ipv4Addr::new(10, 0, 0, 2));
            match self.refuse_connect {
                Some(code) => Err(code),
                None => Ok(self.open_flow()),
            }
        }
        fn send(&mut self, flow: Flow, msg: Bytes) -> Result<(), SendRefused> {
            let f = self
                .flows
                .get_mut(&flow)
                .ok_or(SendRefused::Failed(CloseCode::UnknownFlow))?;
            if self.send_room == 0 {
                return Err(SendRefused::BufferFull);
            }
            self.send_room -= 1;
            f.sent.push(msg);
            Ok(())
        }
        fn peek_len(&mut self, flow: Flow) -> Option<usize> {
            self.flows.get(&flow)?.inbox.front().map(Bytes::len)
        }
        fn recv(&mut self, flow: Flow) -> Option<Bytes> {
            self.flows.get_mut(&flow)?.inbox.pop_front()
        }
        fn close(&mut self, flow: Flow) -> Result<(), UnknownFlow> {
            self.flows.get_mut(&flow).ok_or(UnknownFlow)?.closed = true;
            Ok(())
        }
        fn abort(&mut self, flow: Flow) -> Result<(), UnknownFlow> {
            self.flows.get_mut(&flow).ok_or(UnknownFlow)?.aborted = true;
            Ok(())
        }
        fn discard(&mut self, flow: Flow) {
            self.flows.remove(&flow);
            self.discarded.push(flow);
        }
        fn exists(&self, flow: Flow) -> bool {
            self.flows.get(&flow).is_some_and(|f| !f.aborted)
        }
        fn adopt(&mut self, flow: Flow, handle: Handle) {
            assert!(self.owners.insert(flow, handle).is_none(), "adopted twice");
        }
        fn release(&mut self, flow: Flow) {
            self.owners.remove(&flow);
        }
    }

    /// A channel with rings of `ring` bytes, its engine half and the app's ends of the rings.
    struct Rig {
        chan: Channel<Flow, Permit>,
        req: Producer,
        notes: Consumer,
        views: ChannelViews,
        _mem: Region,
    }

    const MAX: u32 = 1000;

    fn rig(ring: u64) -> Rig {
        let l = ChannelLayout::new(ring, ring, MAX).unwrap();
        let mut mem = Region::zeroed(l.total_len);
        let ptr = mem.as_mut_ptr();
        // SAFETY: zeroed, page-aligned, `total_len` bytes; the region outlives the views (both
        // live in `Rig`).
        let views = unsafe {
            l.init(ptr);
            l.views(ptr)
        };
        Rig {
            chan: Channel::new(views, MAX),
            req: Producer::new(views.to_sidecar, 0),
            notes: Consumer::new(views.to_app, 0, MAX),
            views,
            _mem: mem,
        }
    }

    impl Rig {
        fn push(&mut self, kind: RecordKind, flow: Handle, aux: u32, flags: u8, payload: &[u8]) {
            let mut h = RecordHeader::new(kind, flow);
            h.aux = aux;
            h.flags = flags;
            self.req.push(h, &[payload]).expect("room for the request");
        }

        fn connect(&mut self, request_id: u32) {
            let req = ConnectRequest {
                remote_ip: Ipv4Addr::new(10, 0, 0, 2),
                remote_port: 80,
            };
            self.push(RecordKind::Connect, 0, request_id, 0, &req.encode());
        }

        /// Every notification the app can read now.
        fn read(&mut self) -> Vec<(RecordHeader, Vec<u8>)> {
            let mut out = Vec::new();
            while let Some(rec) = self.notes.peek().unwrap() {
                out.push((rec.header, self.notes.payload_to_vec(&rec)));
                self.notes.consume(&rec);
            }
            out
        }

        fn kinds(&mut self) -> Vec<(RecordKind, Handle, u32, u8)> {
            self.read()
                .into_iter()
                .map(|(h, _)| (h.kind, h.flow, h.aux, h.flags))
                .collect()
        }

        /// An accepted, announced flow: its transport id and handle.
        fn accepted(&mut self, t: &mut Fake) -> (Flow, Handle) {
            let f = t.open_flow();
            assert!(self.chan.on_accepted(t, f, 81, None));
            self.chan.flush(t).unwrap();
            let notes = self.read();
            assert_eq!(notes.len(), 1);
            assert_eq!(
                (notes[0].0.kind, notes[0].0.aux),
                (RecordKind::Accepted, 81)
            );
            (f, notes[0].0.flow)
        }
    }

    #[test]
    fn a_flows_notifications_follow_its_lifecycle() {
        let (mut r, mut t) = (rig(16384), Fake::new());
        r.connect(7);
        assert_eq!(r.chan.consume(&mut t).unwrap(), 1);
        let (&f, &h) = t.owners.iter().next().expect("the connect adopted a flow");
        assert_eq!(r.chan.flow_phase(h), Some(FlowPhase::Connecting));
        assert_eq!(r.chan.flow_phase(h + 1), None);
        // Connecting: nothing to tell, and the handle is not usable yet.
        r.chan.flush(&mut t).unwrap();
        assert!(r.read().is_empty());
        r.push(RecordKind::Send, h, 0, 0, b"early");
        r.chan.consume(&mut t).unwrap();
        r.chan.flush(&mut t).unwrap();
        assert_eq!(
            r.kinds(),
            [(
                RecordKind::RequestFailed,
                h,
                2,
                CloseCode::UnknownFlow as u8
            )]
        );
        assert!(t.flows[&f].sent.is_empty());

        // Everything happens before the next flush: it still comes out in lifecycle order.
        let info = FlowInfo {
            local_ip: Ipv4Addr::new(10, 0, 0, 1),
            local_port: 5000,
            remote_ip: Ipv4Addr::new(10, 0, 0, 2),
            remote_port: 80,
        };
        r.chan.on_connected(h, Some(info));
        assert_eq!(r.chan.flow_phase(h), Some(FlowPhase::Established));
        for m in [b"one", b"two", b"six"] {
            t.deliver(f, m);
        }
        r.chan.on_readable(h);
        r.chan.on_peer_closed(h);
        assert_eq!(r.chan.flow_phase(h), Some(FlowPhase::PeerClosed));
        r.chan.on_closed(h, f, CloseCode::Reset);
        assert_eq!(r.chan.flow_phase(h), Some(FlowPhase::Closed));
        assert_eq!(FlowPhase::PeerClosed.name(), "peer_closed");
        r.chan.flush(&mut t).unwrap();
        let notes = r.read();
        let kinds: Vec<_> = notes.iter().map(|(n, _)| (n.kind, n.flow)).collect();
        assert_eq!(
            kinds,
            [
                (RecordKind::Connected, h),
                (RecordKind::Message, h),
                (RecordKind::Message, h),
                (RecordKind::Message, h),
                (RecordKind::PeerClosed, h),
                (RecordKind::Closed, h),
            ]
        );
        assert_eq!(notes[0].0.aux, 7);
        assert_eq!(FlowInfo::decode(&notes[0].1), Some(info));
        let msgs: Vec<&[u8]> = notes[1..4].iter().map(|(_, p)| &p[..]).collect();
        assert_eq!(msgs, [b"one", b"two", b"six"]);
        assert_eq!(notes[5].0.flags, CloseCode::Reset as u8);
        // The entry is gone, the transport told to forget the flow; the handle is dead.
        assert_eq!(r.chan.flow_count(), 0);
        assert_eq!(t.discarded, [f]);
        r.push(RecordKind::Close, h, 0, 0, &[]);
        r.chan.consume(&mut t).unwrap();
        r.chan.flush(&mut t).unwrap();
        assert_eq!(
            r.kinds(),
            [(
                RecordKind::RequestFailed,
                h,
                3,
                CloseCode::UnknownFlow as u8
            )]
        );
    }

    #[test]
    fn peer_closed_is_told_once_and_before_closed() {
        let (mut r, mut t) = (rig(16384), Fake::new());
        let (f, h) = r.accepted(&mut t);
        r.chan.on_peer_closed(h);
        r.chan.flush(&mut t).unwrap();
        assert_eq!(r.kinds(), [(RecordKind::PeerClosed, h, 0, 0)]);
        // Told already: the close says only Closed.
        r.chan.on_peer_closed(h);
        r.chan.on_closed(h, f, CloseCode::Graceful);
        r.chan.flush(&mut t).unwrap();
        assert_eq!(
            r.kinds(),
            [(RecordKind::Closed, h, 0, CloseCode::Graceful as u8)]
        );
    }

    #[test]
    fn a_connect_that_never_established_is_answered_with_connect_failed() {
        let (mut r, mut t) = (rig(16384), Fake::new());
        r.connect(42);
        r.chan.consume(&mut t).unwrap();
        let (&f, &h) = t.owners.iter().next().unwrap();
        r.chan.on_peer_closed(h); // meaningless before establishment; ignored
        r.chan.on_closed(h, f, CloseCode::Refused);
        r.chan.flush(&mut t).unwrap();
        assert_eq!(
            r.kinds(),
            [(RecordKind::ConnectFailed, 0, 42, CloseCode::Refused as u8)]
        );
        assert_eq!(r.chan.flow_count(), 0);
        // A late event for the gone handle changes nothing.
        r.chan.on_connected(h, None);
        r.chan.flush(&mut t).unwrap();
        assert!(r.read().is_empty());
    }

    #[test]
    fn a_message_stays_in_the_transport_until_it_fits() {
        // One page per ring: three 1000-byte messages fit at a time.
        let (mut r, mut t) = (rig(4096), Fake::new());
        let (f, h) = r.accepted(&mut t);
        let msgs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; MAX as usize]).collect();
        for m in &msgs {
            t.deliver(f, m);
        }
        r.chan.on_readable(h);
        r.chan.on_closed(h, f, CloseCode::Graceful);
        let mut got = Vec::new();
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 20, "no progress");
            r.chan.flush(&mut t).unwrap();
            let notes = r.read();
            let done = notes.iter().any(|(n, _)| n.kind == RecordKind::Closed);
            got.extend(
                notes
                    .into_iter()
                    .filter(|(n, _)| n.kind == RecordKind::Message)
                    .map(|(_, p)| p),
            );
            if done {
                break;
            }
            // What did not fit is still in the transport, not held here; the channel waits for
            // room (which the app made by reading).
            assert_eq!(got.len() + t.flows[&f].inbox.len(), msgs.len());
            assert_eq!(r.chan.held_bytes(), 0);
            assert!(!r.chan.wants_flush());
            assert!(r.chan.has_room_for_blocked());
        }
        // A 1000-byte message takes 1016 bytes of ring: four fit in a page, so ten take three
        // rounds.
        assert_eq!(rounds, 3);
        assert!(got == msgs, "all messages, in order");
        assert_eq!(t.discarded, [f]);
    }

    #[test]
    fn hostile_requests_are_answered_not_obeyed() {
        let (mut r, mut t) = (rig(16384), Fake::new());
        let (f, h) = r.accepted(&mut t);
        let good = ConnectRequest {
            remote_ip: Ipv4Addr::new(10, 0, 0, 2),
            remote_port: 80,
        }
        .encode();
        use RecordKind::{Abort, Close, Connect, ConnectFailed, RequestFailed, Send};
        let (bad, unknown) = (
            CloseCode::InvalidRequest as u8,
            CloseCode::UnknownFlow as u8,
        );
        r.push(Send, 99, 0, 0, b"x");
        r.push(Send, h, 0, 1, b"flags");
        r.push(Send, h, 5, 0, b"aux");
        r.push(Send, h, 0, 0, b"");
        r.push(Connect, 0, 1, 0, &good[..3]);
        r.push(Connect, 3, 2, 0, &good);
        r.push(Connect, 0, 3, 9, &good);
        r.push(Close, h, 0, 0, b"payload");
        r.push(Abort, 0, 0, 0, &[]);
        assert_eq!(r.chan.consume(&mut t).unwrap(), 9);
        r.chan.flush(&mut t).unwrap();
        assert_eq!(
            r.kinds(),
            [
                (RequestFailed, 99, Send as u32, unknown),
                (RequestFailed, h, Send as u32, bad),
                (RequestFailed, h, Send as u32, bad),
                (RequestFailed, h, Send as u32, bad),
                (ConnectFailed, 0, 1, bad),
                (ConnectFailed, 0, 2, bad),
                (ConnectFailed, 0, 3, bad),
                (RequestFailed, h, Close as u32, bad),
                (RequestFailed, 0, Abort as u32, unknown),
            ]
        );
        assert_eq!(r.chan.counters().request_errors, 9);
        let ff = &t.flows[&f];
        assert!(ff.sent.is_empty() && !ff.closed && !ff.aborted);
        assert_eq!(t.flows.len(), 1, "no flow opened");

        // Resources: the flow limit, then the transport's own refusal.
        t.permits = 0;
        r.connect(4);
        t.permits = 1;
        t.refuse_connect = Some(CloseCode::Exhausted);
        r.connect(5);
        r.chan.consume(&mut t).unwrap();
        r.chan.flush(&mut t).unwrap();
        let exhausted = CloseCode::Exhausted as u8;
        assert_eq!(
            r.kinds(),
            [
                (ConnectFailed, 0, 4, exhausted),
                (ConnectFailed, 0, 5, exhausted)
            ]
        );

        // A notification kind from the app breaks the channel protocol.
        r.push(RecordKind::Closed, h, 0, 0, &[]);
        assert_eq!(
            r.chan.consume(&mut t),
            Err(Violation::NotARequest(RecordKind::Closed))
        );
    }

    #[test]
    fn answers_beyond_the_cap_stop_consumption_until_the_app_reads() {
        let (mut r, mut t) = (rig(1 << 20), Fake::new());
        for _ in 0..MISC_CAP + 10 {
            r.push(RecordKind::Close, 7, 0, 0, &[]);
        }
        let mut consumed = 0;
        while let n @ 1.. = r.chan.consume(&mut t).unwrap() {
            consumed += n;
        }
        assert_eq!(consumed, MISC_CAP, "no more answers queued than the cap");
        r.chan.flush(&mut t).unwrap();
        assert_eq!(r.read().len(), MISC_CAP);
        assert_eq!(r.chan.consume(&mut t).unwrap(), 10);
    }

    #[test]
    fn a_send_the_transport_cannot_take_stays_in_the_ring_until_writable() {
        let (mut r, mut t) = (rig(16384), Fake::new());
        let (f, h) = r.accepted(&mut t);
        t.send_room = 0;
        r.push(RecordKind::Send, h, 0, 0, b"hello");
        r.push(RecordKind::Send, h, 0, 0, b"world");
        assert_eq!(r.chan.consume(&mut t).unwrap(), 0);
        assert!(r.chan.is_stalled());
        assert_eq!(r.chan.held_bytes(), 5);
        // Not retried before the transport says so, even with room.
        t.send_room = 10;
        assert_eq!(r.chan.consume(&mut t).unwrap(), 0);
        r.chan.on_writable(f + 1); // another flow: not ours
        assert_eq!(r.chan.consume(&mut t).unwrap(), 0);
        r.chan.on_writable(f);
        assert_eq!(r.chan.consume(&mut t).unwrap(), 2);
        assert!(!r.chan.is_stalled());
        assert_eq!(t.flows[&f].sent, [&b"hello"[..], &b"world"[..]]);
    }

    #[test]
    fn detach_carries_out_published_requests_then_hands_the_flows_over() {
        let (mut r, mut t) = (rig(16384), Fake::new());
        let (f, h) = r.accepted(&mut t);
        r.connect(1); // in progress at detach: the app never saw it
        r.chan.consume(&mut t).unwrap();
        let connecting = *t.owners.keys().find(|&&k| k != f).unwrap();
        t.deliver(f, b"unread");
        r.chan.on_readable(h);
        // Published before the detach: carried out after it.
        r.push(RecordKind::Send, h, 0, 0, b"last words");
        r.connect(2);
        r.push(RecordKind::Send, 77, 0, 0, b"nobody");
        assert!(!r.chan.take_wake_app());

        r.chan.detach(&mut t, CloseCode::Detached);
        assert!(r.chan.take_wake_app());
        assert_eq!(
            r.views.closed().load(Ordering::SeqCst),
            CloseCode::Detached as u32
        );
        assert!(t.discarded.contains(&connecting), "unannounced flows go");
        assert!(!t.owners.contains_key(&connecting));
        assert!(!r.chan.is_drained().unwrap());
        assert_eq!(r.chan.consume(&mut t).unwrap(), 3);
        assert!(r.chan.is_drained().unwrap());
        assert_eq!(t.flows[&f].sent, [&b"last words"[..]]);
        assert_eq!(t.flows.len(), 1, "a detaching channel opens no flows");
        r.chan.flush(&mut t).unwrap();
        assert!(r.read().is_empty(), "a detaching channel writes nothing");
        assert!(!r.chan.on_accepted(&mut t, 99, 81, None));

        let orphans = r.chan.finish_detach(&mut t);
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].0, f);
        assert!(t.flows[&f].closed && !t.flows[&f].aborted);
        assert!(t.owners.is_empty());
        assert_eq!(r.chan.flow_count(), 0);
    }

    #[test]
    fn close_all_aborts_open_flows_and_forgets_them() {
        let (mut r, mut t) = (rig(16384), Fake::new());
        let (f, _) = r.accepted(&mut t);
        let (g, hg) = r.accepted(&mut t);
        r.chan.on_closed(hg, g, CloseCode::Reset);
        r.chan.close_all(&mut t, CloseCode::Shutdown);
        assert!(r.chan.take_wake_app());
        assert_eq!(
            r.views.closed().load(Ordering::SeqCst),
            CloseCode::Shutdown as u32
        );
        assert_eq!(t.discarded.len(), 2);
        assert!(t.owners.is_empty());
        assert_eq!((r.chan.flow_count(), t.flows.len()), (0, 0));
        let _ = f;
    }

    #[test]
    fn a_scribbled_notification_head_is_a_violation() {
        let (mut r, _t) = (rig(4096), Fake::new());
        r.views.to_app.control().head.store(4096, Ordering::SeqCst);
        // The producer re-reads the shared head only when it looks for room.
        r.chan.notes.blocked_need = Some(32);
        assert!(matches!(r.chan.prepare_sleep(), Err(Violation::Ring(_))));
    }
}
