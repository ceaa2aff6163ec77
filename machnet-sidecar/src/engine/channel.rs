//! One channel as its engine sees it (docs/CHANNEL.md §3): the request ring it consumes, the
//! notification ring it fills, and the flows the channel owns.
//!
//! Everything read from the shared memory is untrusted and validated by the ring code; a
//! ring-level violation is returned as [`Violation`] and the engine closes the channel. Request
//! errors are answered on the notification ring.
//!
//! Notifications of a flow are written in order: `Connected`/`Accepted`, its messages, then
//! `PeerClosed`, then `Closed`. A message is taken from the core only when the notification ring
//! has room for it (back-pressure, §3.4); otherwise it stays in the core and the flow's receive
//! window closes (the engine checks the size with `Engine::peek_len` before `recv`).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use machnet_channel::{
    ring::record_footprint, CloseCode, ConnectRequest, Consumer, FlowInfo, Peeked, Producer,
    PushError, RecordHeader, RecordKind, RingError,
};
use machnet_core::{CloseReason, ConnectError, Engine, FlowId, Instant, SendError};

use super::flow_quota::{FlowPermit, FlowQuota};
use crate::shm::ChannelMem;

/// Channel identifier, unique in the sidecar's lifetime (never 0).
pub type ChannelId = u32;

/// Requests consumed from one channel per engine iteration (fairness between channels).
const REQUEST_BUDGET: usize = 64;
/// Payload bytes consumed from one channel per engine iteration.
const REQUEST_BYTES_BUDGET: usize = 4 << 20;
/// Payload-less notifications (`ConnectFailed`, `RequestFailed`) queued before the engine stops
/// consuming the channel's requests until the app reads its notifications.
const MISC_CAP: usize = 1024;
/// Messages delivered from one flow before the channel's other flows get their turn.
const MESSAGES_PER_TURN: usize = 16;

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

/// What the engine needs from the outside while handling a channel.
pub struct Ctx<'a> {
    /// The protocol engine.
    pub core: &'a mut Engine,
    /// Now.
    pub now: Instant,
    /// Engine-wide map from core flows to (channel, handle).
    pub owners: &'a mut HashMap<FlowId, (ChannelId, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Connect { request_id: u32 },
    Accepted { port: u16 },
}

#[derive(Debug)]
struct FlowEntry {
    id: FlowId,
    origin: Origin,
    info: Option<FlowInfo>,
    established: bool,
    announced: bool,
    readable: bool,
    pending: Option<Bytes>,
    peer_closed: bool,
    peer_closed_sent: bool,
    closed: Option<CloseCode>,
    dirty: bool,
    /// The flow's slot in its application's flow limit, given back when the entry goes.
    permit: FlowPermit,
}

impl FlowEntry {
    fn new(id: FlowId, origin: Origin, permit: FlowPermit) -> Self {
        FlowEntry {
            id,
            origin,
            permit,
            info: None,
            established: false,
            announced: false,
            readable: false,
            pending: None,
            peer_closed: false,
            peer_closed_sent: false,
            closed: None,
            dirty: false,
        }
    }
}

/// A `Send` the core refused for lack of buffer space; retried when the flow becomes writable.
#[derive(Debug)]
struct Stall {
    flow: FlowId,
    msg: Bytes,
    rec: Peeked,
    retry: bool,
}

/// Counters of one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChanCounters {
    /// Requests consumed.
    pub requests: u64,
    /// Notifications written.
    pub notifications: u64,
    /// Requests answered with `ConnectFailed` / `RequestFailed`.
    pub request_errors: u64,
}

/// One channel's engine-side state.
pub struct Chan {
    id: ChannelId,
    mem: ChannelMem,
    requests: Consumer,
    notes: Producer,
    flows: HashMap<u32, FlowEntry>,
    next_handle: u32,
    dirty: VecDeque<u32>,
    misc: VecDeque<RecordHeader>,
    stalled: Option<Stall>,
    /// Machnet ports this channel listens on (on this engine).
    pub ports: Vec<u16>,
    blocked_need: Option<u64>,
    pushed: bool,
    counters: ChanCounters,
    /// Set once the channel is detached gracefully (docs/CHANNEL.md §5): the deadline by which
    /// its flows must have closed. A detaching channel carries out the requests left in its ring
    /// and writes no notifications.
    detach_deadline: Option<Instant>,
    /// The flow limits of the channel's application.
    quota: FlowQuota,
    /// The worker's bookkeeping for this channel (run list, flush list; docs/CHANNEL.md §4).
    pub(super) sched: Sched,
}

/// Where a channel stands in its engine's scheduling (docs/CHANNEL.md §4). Kept by the worker.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Sched {
    /// In the engine's run list (looked at every iteration). Otherwise *armed*: its request
    /// ring's `data_waiting` (and, if a notification waits for room, its notification ring's
    /// `space_waiting`) is set, so the app rings the sidecar eventfd when it has work for us.
    pub active: bool,
    /// In the engine's flush list (notifications to write that are not known to be blocked).
    pub queued: bool,
    /// Last time the engine found work on this channel.
    pub last_work: Instant,
}

impl std::fmt::Debug for Chan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chan")
            .field("id", &self.id)
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
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

/// Outcome of flushing one flow.
enum Flushed {
    /// Nothing left for now.
    Done,
    /// The ring is full.
    Blocked,
    /// Delivered its share of messages; more may be waiting.
    Yield,
}

/// Outcome of trying to write a record.
enum Pushed {
    Done,
    Full,
}

impl Chan {
    /// Takes over a freshly created channel (both rings at position 0) whose flows count
    /// against `quota`.
    pub fn new(id: ChannelId, mut mem: ChannelMem, quota: FlowQuota) -> Self {
        let views = mem.views();
        let max = mem.layout().max_message_len;
        Chan {
            id,
            requests: Consumer::new(views.to_sidecar, 0, max),
            notes: Producer::new(views.to_app, 0),
            mem,
            flows: HashMap::new(),
            next_handle: 1,
            dirty: VecDeque::new(),
            misc: VecDeque::new(),
            stalled: None,
            ports: Vec::new(),
            blocked_need: None,
            pushed: false,
            counters: ChanCounters::default(),
            detach_deadline: None,
            quota,
            sched: Sched::default(),
        }
    }

    /// The channel id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// The channel's memory and eventfds.
    pub fn mem(&self) -> &ChannelMem {
        &self.mem
    }

    /// Counters.
    pub fn counters(&self) -> ChanCounters {
        self.counters
    }

    /// Live flows of this channel.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Whether a refused `Send` holds up the request ring.
    pub fn is_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Message bytes held in the sidecar for this channel (outside the core and the rings).
    pub fn held_bytes(&self) -> usize {
        self.flows
            .values()
            .filter_map(|e| e.pending.as_ref().map(Bytes::len))
            .sum::<usize>()
            + self.stalled.as_ref().map_or(0, |s| s.msg.len())
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
        self.counters.request_errors += 1;
        // Nobody reads the answers of a detaching channel.
        if self.detach_deadline.is_none() {
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

    fn mark_dirty(&mut self, handle: u32) {
        if let Some(e) = self.flows.get_mut(&handle) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push_back(handle);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Requests
    // ------------------------------------------------------------------------------------------

    /// Consumes requests (within a budget) and applies them to the core. Returns how many were
    /// consumed.
    pub fn consume(&mut self, ctx: &mut Ctx<'_>) -> Result<usize, Violation> {
        let mut n = 0;
        if let Some(stall) = self.stalled.as_mut() {
            if !stall.retry {
                return Ok(0);
            }
            stall.retry = false;
            match ctx.core.send(ctx.now, stall.flow, stall.msg.clone()) {
                Err(SendError::BufferFull) => return Ok(0),
                res => {
                    let stall = self.stalled.take().expect("checked");
                    let req = stall.rec.header;
                    self.requests.consume(&stall.rec);
                    n += 1;
                    if let Err(e) = res {
                        self.request_failed(&req, send_error_code(e));
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
            if !h.kind.is_request() {
                return Err(Violation::NotARequest(h.kind));
            }
            bytes += h.len as usize;
            let consumed = match h.kind {
                // A detaching channel opens no flows: nobody would use them.
                RecordKind::Connect if self.detach_deadline.is_some() => true,
                RecordKind::Connect => {
                    self.connect(ctx, &rec);
                    true
                }
                RecordKind::Send => self.send(ctx, &rec),
                RecordKind::Close | RecordKind::Abort => {
                    self.close(ctx, &h);
                    true
                }
                _ => return Err(Violation::NotARequest(h.kind)),
            };
            if !consumed {
                break;
            }
            self.requests.consume(&rec);
            n += 1;
        }
        self.counters.requests += n as u64;
        if n > 0 && self.requests.producer_needs_wakeup() {
            self.mem.wake_app();
        }
        Ok(n)
    }

    fn connect(&mut self, ctx: &mut Ctx<'_>, rec: &Peeked) {
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
        let Ok(permit) = self.quota.acquire() else {
            return fail(self, CloseCode::Exhausted);
        };
        match ctx.core.connect(ctx.now, req.remote_ip, req.remote_port) {
            Ok(id) => {
                ctx.owners.insert(id, (self.id, handle));
                self.flows.insert(
                    handle,
                    FlowEntry::new(id, Origin::Connect { request_id: h.aux }, permit),
                );
            }
            Err(ConnectError::NoEphemeralPort | ConnectError::TooManyFlows) => {
                fail(self, CloseCode::Exhausted)
            }
            Err(ConnectError::InvalidRemoteAddress | ConnectError::InvalidRemotePort) => {
                fail(self, CloseCode::InvalidRequest)
            }
        }
    }

    /// Returns false if the record must stay in the ring (the core's send buffer is full).
    fn send(&mut self, ctx: &mut Ctx<'_>, rec: &Peeked) -> bool {
        let h = rec.header;
        if h.flags != 0 || h.aux != 0 || h.len == 0 {
            self.request_failed(&h, CloseCode::InvalidRequest);
            return true;
        }
        let Some(id) = self.live_flow(h.flow) else {
            self.request_failed(&h, CloseCode::UnknownFlow);
            return true;
        };
        let msg = Bytes::from(self.requests.payload_to_vec(rec));
        match ctx.core.send(ctx.now, id, msg.clone()) {
            Ok(()) => true,
            Err(SendError::BufferFull) => {
                self.stalled = Some(Stall {
                    flow: id,
                    msg,
                    rec: *rec,
                    retry: false,
                });
                false
            }
            Err(e) => {
                self.request_failed(&h, send_error_code(e));
                true
            }
        }
    }

    fn close(&mut self, ctx: &mut Ctx<'_>, h: &RecordHeader) {
        if h.flags != 0 || h.aux != 0 || h.len != 0 {
            return self.request_failed(h, CloseCode::InvalidRequest);
        }
        let Some(id) = self.live_flow(h.flow) else {
            return self.request_failed(h, CloseCode::UnknownFlow);
        };
        let res = if h.kind == RecordKind::Abort {
            ctx.core.abort(ctx.now, id)
        } else {
            ctx.core.close(ctx.now, id)
        };
        if res.is_err() {
            self.request_failed(h, CloseCode::UnknownFlow);
        }
    }

    /// The core flow of a handle the app may still use.
    fn live_flow(&self, handle: u32) -> Option<FlowId> {
        self.flows
            .get(&handle)
            .filter(|e| e.closed.is_none() && e.announced)
            .map(|e| e.id)
    }

    // ------------------------------------------------------------------------------------------
    // Core events (routed here by the engine)
    // ------------------------------------------------------------------------------------------

    /// The core established a flow this channel connected.
    pub fn on_connected(&mut self, handle: u32, info: Option<FlowInfo>) {
        if let Some(e) = self.flows.get_mut(&handle) {
            e.established = true;
            e.info = info;
            self.mark_dirty(handle);
        }
    }

    /// A listener of this channel accepted `id` on `port`. Returns false if the channel cannot
    /// take more flows, or its application holds its flow limit (the caller aborts it).
    pub fn on_accepted(
        &mut self,
        id: FlowId,
        port: u16,
        info: Option<FlowInfo>,
        owners: &mut HashMap<FlowId, (ChannelId, u32)>,
    ) -> bool {
        let Some(handle) = self.alloc_handle() else {
            return false;
        };
        let Ok(permit) = self.quota.acquire() else {
            return false;
        };
        let mut e = FlowEntry::new(id, Origin::Accepted { port }, permit);
        e.established = true;
        e.info = info;
        self.flows.insert(handle, e);
        owners.insert(id, (self.id, handle));
        self.mark_dirty(handle);
        true
    }

    /// Messages are waiting in the core for `handle`.
    pub fn on_readable(&mut self, handle: u32) {
        if let Some(e) = self.flows.get_mut(&handle) {
            e.readable = true;
            self.mark_dirty(handle);
        }
    }

    /// The peer closed its direction of `handle`.
    pub fn on_peer_closed(&mut self, handle: u32) {
        if let Some(e) = self.flows.get_mut(&handle) {
            e.peer_closed = true;
            self.mark_dirty(handle);
        }
    }

    /// The core flow behind `handle` is gone.
    pub fn on_closed(&mut self, handle: u32, id: FlowId, code: CloseCode) {
        if let Some(e) = self.flows.get_mut(&handle) {
            e.closed = Some(code);
            self.mark_dirty(handle);
        }
        self.on_writable(id);
    }

    /// The core can take more data on `id`: retry a stalled send.
    pub fn on_writable(&mut self, id: FlowId) {
        if let Some(s) = self.stalled.as_mut() {
            if s.flow == id {
                s.retry = true;
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Notifications
    // ------------------------------------------------------------------------------------------

    fn push(&mut self, h: RecordHeader, payload: &[u8]) -> Result<Pushed, Violation> {
        match self.notes.push(h, &[payload]) {
            Ok(()) => {
                self.pushed = true;
                self.counters.notifications += 1;
                Ok(Pushed::Done)
            }
            Err(PushError::Full) => {
                self.blocked_need = Some(record_footprint(payload.len() as u64));
                Ok(Pushed::Full)
            }
            Err(PushError::TooLarge(len)) => {
                // Impossible by construction (rings hold a maximum-size message); never loop.
                crate::limited!(
                    error,
                    channel = self.id,
                    len,
                    "notification larger than the ring"
                );
                Ok(Pushed::Done)
            }
            Err(PushError::Corrupt(e)) => Err(Violation::Ring(e)),
        }
    }

    /// Writes pending notifications while they fit, taking messages from the core as room
    /// allows. Returns whether anything was written.
    pub fn flush(&mut self, core: &mut Engine) -> Result<bool, Violation> {
        self.pushed = false;
        self.blocked_need = None;
        let mut blocked = false;
        let mut yields = 0;
        while let Some(&h) = self.misc.front() {
            if let Pushed::Full = self.push(h, &[])? {
                blocked = true;
                break;
            }
            self.misc.pop_front();
        }
        while !blocked {
            let Some(&handle) = self.dirty.front() else {
                break;
            };
            match self.flush_flow(handle, core)? {
                Flushed::Done => {
                    self.dirty.pop_front();
                    if let Some(e) = self.flows.get_mut(&handle) {
                        e.dirty = false;
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
        let pushed = self.pushed;
        if pushed && self.notes.consumer_needs_wakeup() {
            self.mem.wake_app();
        }
        Ok(pushed)
    }

    /// Flushes one flow: everything it has, up to [`MESSAGES_PER_TURN`] messages.
    fn flush_flow(&mut self, handle: u32, core: &mut Engine) -> Result<Flushed, Violation> {
        let Some(e) = self.flows.get(&handle) else {
            return Ok(Flushed::Done);
        };
        if !e.announced {
            if e.established {
                let (kind, aux) = match e.origin {
                    Origin::Connect { request_id } => (RecordKind::Connected, request_id),
                    Origin::Accepted { port } => (RecordKind::Accepted, u32::from(port)),
                };
                let info = e.info.map(|i| i.encode()).unwrap_or([0u8; FlowInfo::LEN]);
                if let Pushed::Full = self.push(note(kind, handle, aux, 0), &info)? {
                    return Ok(Flushed::Blocked);
                }
                self.flows.get_mut(&handle).expect("present").announced = true;
            } else if let Some(code) = e.closed {
                // Never established: a failed connect (accepted flows are established at birth).
                if let Origin::Connect { request_id } = e.origin {
                    if let Pushed::Full = self.push(
                        note(RecordKind::ConnectFailed, 0, request_id, code as u8),
                        &[],
                    )? {
                        return Ok(Flushed::Blocked);
                    }
                }
                self.flows.remove(&handle);
                return Ok(Flushed::Done);
            } else {
                return Ok(Flushed::Done);
            }
        }
        // Messages: the one held here first, then from the core while they fit.
        let e = self.flows.get_mut(&handle).expect("present");
        if let Some(m) = e.pending.take() {
            if let Pushed::Full = self.push(note(RecordKind::Message, handle, 0, 0), &m)? {
                self.flows.get_mut(&handle).expect("present").pending = Some(m);
                return Ok(Flushed::Blocked);
            }
        }
        let mut delivered = 0;
        loop {
            let e = self.flows.get_mut(&handle).expect("present");
            if !e.readable {
                break;
            }
            if delivered == MESSAGES_PER_TURN {
                return Ok(Flushed::Yield);
            }
            delivered += 1;
            let id = e.id;
            // Take a message from the core only if it fits in the ring now (§3.4): otherwise it
            // stays there and the flow's receive window closes.
            let len = match core.peek_len(id) {
                Ok(Some(len)) => len,
                Ok(None) | Err(_) => {
                    self.flows.get_mut(&handle).expect("present").readable = false;
                    break;
                }
            };
            let need = record_footprint(len as u64);
            if self.notes.free()? < need {
                self.blocked_need = Some(need);
                return Ok(Flushed::Blocked);
            }
            match core.recv(id) {
                Ok(Some(m)) => {
                    if let Pushed::Full = self.push(note(RecordKind::Message, handle, 0, 0), &m)? {
                        self.flows.get_mut(&handle).expect("present").pending = Some(m);
                        return Ok(Flushed::Blocked);
                    }
                }
                Ok(None) | Err(_) => {
                    self.flows.get_mut(&handle).expect("present").readable = false;
                }
            }
        }
        let e = self.flows.get(&handle).expect("present");
        if e.peer_closed && !e.peer_closed_sent {
            if let Pushed::Full = self.push(note(RecordKind::PeerClosed, handle, 0, 0), &[])? {
                return Ok(Flushed::Blocked);
            }
            self.flows
                .get_mut(&handle)
                .expect("present")
                .peer_closed_sent = true;
        }
        let e = self.flows.get(&handle).expect("present");
        if let Some(code) = e.closed {
            if let Pushed::Full = self.push(note(RecordKind::Closed, handle, 0, code as u8), &[])? {
                return Ok(Flushed::Blocked);
            }
            if let Some(e) = self.flows.remove(&handle) {
                // Normally all read by now (`readable` was set while any was left).
                core.discard(e.id);
            }
        }
        Ok(Flushed::Done)
    }

    // ------------------------------------------------------------------------------------------
    // Sleeping and closing
    // ------------------------------------------------------------------------------------------

    /// Announces that the engine is about to sleep (docs/CHANNEL.md §4). Returns `Ok(false)` if
    /// there is work after all (a request to consume, or room for a blocked notification).
    pub fn prepare_sleep(&mut self) -> Result<bool, Violation> {
        if self.can_consume() && self.requests.prepare_wait()? {
            return Ok(false);
        }
        if let Some(need) = self.blocked_need {
            if self.notes.prepare_wait()? >= need {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Withdraws the announcements of [`Chan::prepare_sleep`] after waking.
    pub fn cancel_sleep(&mut self) {
        self.requests.cancel_wait();
        self.notes
            .ring()
            .control()
            .space_waiting
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a notification waits for room that the app has since made.
    pub fn has_room_for_blocked(&mut self) -> bool {
        match self.blocked_need {
            Some(need) => self.notes.free().map(|f| f >= need).unwrap_or(true),
            None => false,
        }
    }

    /// Whether flushing could make progress (something queued and not known to be blocked).
    pub fn wants_flush(&self) -> bool {
        (!self.misc.is_empty() || !self.dirty.is_empty()) && self.blocked_need.is_none()
    }

    /// Starts a graceful detach (docs/CHANNEL.md §5): sets the header's `closed` word to `code`
    /// and wakes the app; aborts the flows the app never saw (connects in progress, accepted
    /// flows not yet announced) and forgets closed ones; drops queued notifications. The
    /// requests still in the ring are carried out from now on ([`Chan::consume`]) and the
    /// flows closed once it is drained ([`Chan::finish_detach`]), all by `deadline`.
    pub fn detach(&mut self, ctx: &mut Ctx<'_>, code: CloseCode, deadline: Instant) {
        self.detach_deadline = Some(deadline);
        self.flows.retain(|_, e| {
            let keep = e.announced && e.closed.is_none();
            if !keep {
                ctx.owners.remove(&e.id);
                if e.closed.is_none() {
                    let _ = ctx.core.abort(ctx.now, e.id);
                }
                ctx.core.discard(e.id);
            }
            keep
        });
        for e in self.flows.values_mut() {
            e.pending = None;
            e.dirty = false;
        }
        self.dirty.clear();
        self.misc.clear();
        self.blocked_need = None;
        self.set_closed_word(code);
    }

    /// The deadline of a graceful detach, if the channel is detaching.
    pub fn detach_deadline(&self) -> Option<Instant> {
        self.detach_deadline
    }

    /// Whether a detaching channel has carried out every request its app published.
    pub fn is_drained(&mut self) -> Result<bool, Violation> {
        Ok(self.stalled.is_none() && self.requests.peek()?.is_none())
    }

    /// Ends a drained detach: closes each remaining flow gracefully (its FIN follows the
    /// messages already queued) and hands them over with their permits (an orphan still counts
    /// against its application's flow limits); the caller keeps them as orphans until they
    /// close or the deadline passes.
    pub fn finish_detach(&mut self, ctx: &mut Ctx<'_>) -> Vec<(FlowId, FlowPermit)> {
        let mut orphans = Vec::with_capacity(self.flows.len());
        for (_, e) in self.flows.drain() {
            ctx.owners.remove(&e.id);
            // Closing a flow the app closed already changes nothing; one the core no longer
            // knows has ended.
            let _ = ctx.core.close(ctx.now, e.id);
            if ctx.core.flow_key(e.id).is_some() {
                orphans.push((e.id, e.permit));
            }
        }
        orphans
    }

    /// A flow of a detaching channel ended: forget it and what it still holds.
    pub fn forget(&mut self, handle: u32, core: &mut Engine) {
        if let Some(e) = self.flows.remove(&handle) {
            core.discard(e.id);
        }
    }

    fn set_closed_word(&mut self, code: CloseCode) {
        self.mem
            .views()
            .closed()
            .store(code as u32, std::sync::atomic::Ordering::SeqCst);
        // Orders the store before the drain's reads of the ring's `tail`: a record the app
        // published before it saw `closed` is consumed (docs/CHANNEL.md §5; the client's
        // `check_published` is the other half).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem.wake_app();
    }

    /// Closes the channel: aborts its live flows (peers get RST), sets the header's `closed`
    /// word to `code` and wakes the app.
    pub fn close_all(&mut self, ctx: &mut Ctx<'_>, code: CloseCode) {
        for e in self.flows.values() {
            ctx.owners.remove(&e.id);
            if e.closed.is_none() {
                let _ = ctx.core.abort(ctx.now, e.id);
            }
            ctx.core.discard(e.id);
        }
        self.flows.clear();
        self.dirty.clear();
        self.stalled = None;
        self.set_closed_word(code);
    }
}

fn send_error_code(e: SendError) -> CloseCode {
    match e {
        SendError::UnknownFlow => CloseCode::UnknownFlow,
        SendError::MessageTooLarge { .. } => CloseCode::MessageTooLarge,
        SendError::Closed | SendError::EmptyMessage | SendError::BufferFull => {
            CloseCode::InvalidRequest
        }
    }
}

/// The channel's name for why a core flow ended.
pub(crate) fn close_code(reason: CloseReason) -> CloseCode {
    use CloseReason as R;
    match reason {
        R::Graceful => CloseCode::Graceful,
        R::Refused => CloseCode::Refused,
        R::Reset => CloseCode::Reset,
        R::TimedOut => CloseCode::TimedOut,
        R::ProtocolViolation => CloseCode::ProtocolViolation,
        R::Aborted => CloseCode::Aborted,
        R::MessageTooLarge => CloseCode::MessageTooLarge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machnet_channel::{ChannelLayout, ChannelViews};
    use machnet_core::{Datagram, EngineConfig, Event};
    use memmap2::{MmapMut, MmapOptions};
    use std::net::Ipv4Addr;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// The app's side of a channel: its own mapping of the memfd.
    struct App {
        _map: MmapMut,
        views: ChannelViews,
        layout: ChannelLayout,
        req: Producer,
        notes: Consumer,
    }

    impl App {
        fn push(&mut self, kind: RecordKind, flow: u32, aux: u32, payload: &[u8]) {
            let mut h = RecordHeader::new(kind, flow);
            h.aux = aux;
            self.req
                .push(h, &[payload])
                .expect("room in the request ring");
        }
        fn next(&mut self) -> Option<(RecordHeader, Vec<u8>)> {
            let rec = self.notes.peek().unwrap()?;
            let mut p = vec![0u8; rec.header.len as usize];
            self.notes.read_payload(&rec, &mut p);
            self.notes.consume(&rec);
            Some((rec.header, p))
        }
    }

    fn channel(id: ChannelId, max: u32) -> (Chan, App) {
        let mem = ChannelMem::create(max).unwrap();
        let fd = mem.dup_app_fds().unwrap();
        let file = std::fs::File::from(fd[0].try_clone().unwrap());
        let mut map = unsafe { MmapOptions::new().map_mut(&file) }.unwrap();
        let layout = unsafe { ChannelLayout::read(map.as_ptr(), map.len() as u64) }.unwrap();
        let views = unsafe { layout.views(map.as_mut_ptr()) };
        let app = App {
            req: Producer::new(views.to_sidecar, 0),
            notes: Consumer::new(views.to_app, 0, layout.max_message_len),
            views,
            layout,
            _map: map,
        };
        (Chan::new(id, mem, FlowQuota::unlimited()), app)
    }

    fn engine(ip: Ipv4Addr, max: u32) -> Engine {
        let mut c = EngineConfig::new(ip, 0, 1);
        c.max_message_len = max;
        Engine::new(c, 7).unwrap()
    }

    /// Moves datagrams both ways until quiet.
    fn shuttle(a: &mut Engine, b: &mut Engine, now: Instant) {
        let mut buf = vec![0u8; 2048];
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(t) = a.poll_transmit(now, &mut buf) {
                moved = true;
                b.handle_datagram(
                    now,
                    Datagram {
                        remote_ip: A,
                        src_port: t.src_port,
                        dst_port: t.dst_port,
                        payload: &buf[..t.len],
                    },
                );
            }
            while let Some(t) = b.poll_transmit(now, &mut buf) {
                moved = true;
                a.handle_datagram(
                    now,
                    Datagram {
                        remote_ip: B,
                        src_port: t.src_port,
                        dst_port: t.dst_port,
                        payload: &buf[..t.len],
                    },
                );
            }
            if !moved {
                return;
            }
        }
        panic!("the engines never went quiet");
    }

    /// What the worker does with events, for one channel.
    fn route(core: &mut Engine, chan: &mut Chan, owners: &mut HashMap<FlowId, (ChannelId, u32)>) {
        while let Some(ev) = core.poll_event() {
            let h = |f: FlowId| owners.get(&f).map(|&(_, h)| h);
            match ev {
                Event::Connected { flow } => {
                    let info = core.flow_key(flow).map(|k| FlowInfo {
                        local_ip: k.local_ip,
                        local_port: k.local_port,
                        remote_ip: k.remote_ip,
                        remote_port: k.remote_port,
                    });
                    if let Some(h) = h(flow) {
                        chan.on_connected(h, info);
                    }
                }
                Event::Accepted { flow, listen_port } => {
                    assert!(chan.on_accepted(flow, listen_port, None, owners));
                }
                Event::Readable { flow } => {
                    if let Some(h) = h(flow) {
                        chan.on_readable(h)
                    }
                }
                Event::Writable { flow } => chan.on_writable(flow),
                Event::PeerClosed { flow } => {
                    if let Some(h) = h(flow) {
                        chan.on_peer_closed(h)
                    }
                }
                Event::Closed { flow, reason } => {
                    if let Some((_, h)) = owners.remove(&flow) {
                        chan.on_closed(h, flow, close_code(reason));
                    }
                }
            }
        }
    }

    #[test]
    fn request_errors_are_answered_and_ring_violations_reported() {
        let mut core = engine(A, 1 << 16);
        let mut owners = HashMap::new();
        let (mut chan, mut app) = channel(1, 1 << 16);
        let now = Instant::ZERO;
        app.push(RecordKind::Send, 9, 0, b"x");
        app.push(RecordKind::Connect, 0, 5, &[1, 2, 3]);
        app.push(RecordKind::Close, 3, 0, &[]);
        let mut ctx = Ctx {
            core: &mut core,
            now,
            owners: &mut owners,
        };
        assert_eq!(chan.consume(&mut ctx).unwrap(), 3);
        chan.flush(&mut core).unwrap();
        let (h, _) = app.next().unwrap();
        assert_eq!((h.kind, h.flow, h.aux), (RecordKind::RequestFailed, 9, 2));
        assert_eq!(h.flags, CloseCode::UnknownFlow as u8);
        let (h, _) = app.next().unwrap();
        assert_eq!(
            (h.kind, h.aux, h.flags),
            (
                RecordKind::ConnectFailed,
                5,
                CloseCode::InvalidRequest as u8
            )
        );
        let (h, _) = app.next().unwrap();
        assert_eq!(
            (h.kind, h.aux),
            (RecordKind::RequestFailed, RecordKind::Close as u32)
        );
        assert!(app.next().is_none());

        // A notification kind written by the app is a ring violation.
        app.push(RecordKind::Message, 1, 0, b"forged");
        let mut ctx = Ctx {
            core: &mut core,
            now,
            owners: &mut owners,
        };
        assert_eq!(
            chan.consume(&mut ctx),
            Err(Violation::NotARequest(RecordKind::Message))
        );

        // So is a tail index past the ring.
        let (mut chan, app) = channel(2, 1 << 16);
        app.views.to_sidecar.control().tail.store(
            app.layout.to_sidecar_capacity + 8,
            std::sync::atomic::Ordering::SeqCst,
        );
        let mut ctx = Ctx {
            core: &mut core,
            now,
            owners: &mut owners,
        };
        assert!(matches!(chan.consume(&mut ctx), Err(Violation::Ring(_))));
        // And a notification ring head moved past what was written, seen when the engine
        // looks for room (the producer re-reads the shared head only then).
        let (mut chan, app) = channel(3, 1 << 16);
        app.views
            .to_app
            .control()
            .head
            .store(4096, std::sync::atomic::Ordering::SeqCst);
        chan.blocked_need = Some(32);
        assert!(matches!(chan.prepare_sleep(), Err(Violation::Ring(_))));
    }

    #[test]
    fn messages_stay_in_the_core_until_they_fit_and_notifications_keep_flow_order() {
        let max = 600 << 10;
        let (mut a, mut b) = (engine(A, max), engine(B, max));
        b.listen(80).unwrap();
        let (mut ca, mut app_a) = channel(1, max);
        let (mut cb, mut app_b) = channel(2, max);
        let (mut oa, mut ob) = (HashMap::new(), HashMap::new());
        let now = Instant::ZERO;
        let req = ConnectRequest {
            remote_ip: B,
            remote_port: 80,
        };
        app_a.push(RecordKind::Connect, 0, 11, &req.encode());
        let ctx = &mut Ctx {
            core: &mut a,
            now,
            owners: &mut oa,
        };
        assert_eq!(ca.consume(ctx).unwrap(), 1);
        shuttle(&mut a, &mut b, now);
        route(&mut a, &mut ca, &mut oa);
        route(&mut b, &mut cb, &mut ob);
        ca.flush(&mut a).unwrap();
        cb.flush(&mut b).unwrap();
        let (h, p) = app_a.next().expect("connected");
        assert_eq!((h.kind, h.aux), (RecordKind::Connected, 11));
        assert_eq!(FlowInfo::decode(&p).unwrap().remote_ip, B);
        let flow = h.flow;
        let (h, _) = app_b.next().expect("accepted");
        assert_eq!((h.kind, h.aux), (RecordKind::Accepted, 80));
        let bflow = h.flow;

        // Three messages the size of the largest; the receiving ring holds only one at a time
        // (its capacity is one maximum-size record plus 1 MiB of slack).
        let msgs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; max as usize]).collect();
        for m in &msgs {
            app_a.push(RecordKind::Send, flow, 0, m);
            let ctx = &mut Ctx {
                core: &mut a,
                now,
                owners: &mut oa,
            };
            ca.consume(ctx).unwrap();
        }
        app_a.push(RecordKind::Close, flow, 0, &[]);
        let ctx = &mut Ctx {
            core: &mut a,
            now,
            owners: &mut oa,
        };
        ca.consume(ctx).unwrap();
        shuttle(&mut a, &mut b, now);
        route(&mut b, &mut cb, &mut ob);
        cb.flush(&mut b).unwrap();
        let fid = *ob.keys().next().unwrap();
        // Two messages fit in the ring (1.6 MiB); the third stays in the core, with the FIN
        // behind it: no PeerClosed yet.
        let held = b.flow_held_bytes(fid).unwrap();
        assert_eq!(held, max as usize, "the third message waits in the core");
        let mut got = Vec::new();
        while let Some((h, p)) = app_b.next() {
            assert_eq!((h.kind, h.flow), (RecordKind::Message, bflow));
            got.push(p);
        }
        assert_eq!(got.len(), 2);
        assert!(cb.blocked_need.is_some());
        // The app made room: the last message, then PeerClosed.
        route(&mut b, &mut cb, &mut ob);
        assert!(cb.has_room_for_blocked());
        cb.flush(&mut b).unwrap();
        shuttle(&mut a, &mut b, now);
        let (h, p) = app_b.next().unwrap();
        assert_eq!(h.kind, RecordKind::Message);
        got.push(p);
        assert!(got == msgs, "messages intact and in order");
        route(&mut b, &mut cb, &mut ob);
        cb.flush(&mut b).unwrap();
        let (h, _) = app_b.next().unwrap();
        assert_eq!((h.kind, h.flow), (RecordKind::PeerClosed, bflow));
        assert_eq!(b.flow_held_bytes(fid), Some(0));
    }
}
