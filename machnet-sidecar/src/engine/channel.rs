//! One channel as its engine thread sees it: the channel's engine half
//! ([`machnet_channel::engine::Channel`], where the request handling, the flow lifecycle and
//! the notification rules live) over this engine's `machnet_core::Engine`, plus what only the
//! sidecar has: the channel's memory and eventfds, its application's flow limit, its listening
//! ports and its place in the worker's scheduling.

use std::collections::HashMap;

use bytes::Bytes;
use machnet_channel::engine::{self, SendRefused, Transport, UnknownFlow};
use machnet_channel::{CloseCode, ConnectBudget, ConnectRequest, FlowInfo};
use machnet_core::{CloseReason, ConnectError, Engine, FlowId, Instant, SendError};

use super::connect_budget::{ChannelConnects, ConnectRefusals};
use super::flow_quota::{FlowPermit, FlowQuota};
use super::listen::Listeners;
use super::local::{LocalEnd, LocalHub};
use crate::shm::ChannelMem;

pub use machnet_channel::engine::{Counters as ChanCounters, Violation};

/// Channel identifier, unique in the sidecar's lifetime (never 0).
pub type ChannelId = u32;

/// A channel's transport flow: a flow of the core (over the network), or one end of a
/// same-host flow ([`super::local`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// A flow of this engine's `machnet_core::Engine`.
    Net(FlowId),
    /// An end of a local flow.
    Local(LocalEnd),
}

/// Engine-wide map from flows to the (channel, handle) owning them.
pub type Owners = HashMap<Flow, (ChannelId, u32)>;

/// What a channel needs to open and use same-host flows.
#[derive(Clone, Copy)]
pub struct LocalCtx<'a> {
    /// The sidecar's local flows.
    pub hub: &'a LocalHub,
    /// This engine's id.
    pub engine: u16,
    /// This engine's listen groups.
    pub listeners: &'a Listeners,
}

impl LocalCtx<'_> {
    /// Opens a local flow to `port`: a listener on this engine takes it if there is one,
    /// otherwise one on another engine; nobody listening is a refusal, as over the network.
    fn connect(&self, port: u16) -> Result<LocalEnd, CloseCode> {
        if port == 0 {
            return Err(CloseCode::InvalidRequest);
        }
        let server = if !self.listeners.members(port).is_empty() {
            self.engine
        } else {
            self.hub.listening_engine(port).ok_or(CloseCode::Refused)?
        };
        self.hub.connect(self.engine, server, port)
    }
}

/// What the engine needs from the outside while handling a channel.
pub struct Ctx<'a> {
    /// The protocol engine.
    pub core: &'a mut Engine,
    /// Now.
    pub now: Instant,
    /// Engine-wide map from flows to (channel, handle).
    pub owners: &'a mut Owners,
    /// Same-host flows (`None`: off; every flow goes through the core).
    pub local: Option<LocalCtx<'a>>,
}

impl Ctx<'_> {
    /// Aborts `flow` (its peer gets a reset).
    pub fn abort(&mut self, flow: Flow) {
        match flow {
            Flow::Net(id) => {
                let _ = self.core.abort(self.now, id);
            }
            Flow::Local(end) => {
                if let Some(l) = self.local {
                    let _ = l.hub.abort(end);
                }
            }
        }
    }

    /// Forgets a flow that ended, and what it still holds.
    pub fn discard(&mut self, flow: Flow) {
        match flow {
            Flow::Net(id) => self.core.discard(id),
            Flow::Local(end) => {
                if let Some(l) = self.local {
                    l.hub.discard(end);
                }
            }
        }
    }

    /// Reads and drops every message waiting for `flow` (its app is gone).
    pub fn discard_received(&mut self, flow: Flow) {
        match flow {
            Flow::Net(id) => super::route::discard_received(self.core, id),
            Flow::Local(end) => {
                if let Some(l) = self.local {
                    l.hub.discard_received(end);
                }
            }
        }
    }

    /// Message bytes sent on `flow` that the peer does not have yet.
    pub fn undelivered_bytes(&self, flow: Flow) -> usize {
        match flow {
            Flow::Net(id) => self.core.flow_unacked_bytes(id).unwrap_or(0),
            Flow::Local(end) => self.local.map_or(0, |l| l.hub.unread_by_peer(end)),
        }
    }

    /// The addresses of `flow`, as the channel announces them.
    pub fn flow_info(&self, flow: Flow) -> Option<FlowInfo> {
        match flow {
            Flow::Net(id) => self.core.flow_key(id).map(|k| FlowInfo {
                local_ip: k.local_ip,
                local_port: k.local_port,
                remote_ip: k.remote_ip,
                remote_port: k.remote_port,
            }),
            Flow::Local(end) => self.local.and_then(|l| l.hub.info(end)),
        }
    }
}

/// Messages and bytes a channel's app sent and was delivered (for `machnet stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Messages the app sent that a flow took.
    pub messages_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Messages taken from flows for the app.
    pub messages_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
}

/// The core (and the same-host flows) as one channel's transport: the [`Transport`] the
/// engine half drives. Each call goes where its flow lives; a connect to the sidecar's own
/// address opens a local flow when same-host flows are on.
struct CoreTransport<'a, 'c> {
    ctx: &'a mut Ctx<'c>,
    channel: ChannelId,
    quota: &'a FlowQuota,
    connects: &'a mut ChannelConnects<Flow>,
    traffic: &'a mut Traffic,
}

impl CoreTransport<'_, '_> {
    /// Counts a message a flow took from the app.
    fn sent(&mut self, len: usize) {
        self.traffic.messages_out += 1;
        self.traffic.bytes_out += len as u64;
    }

    /// Counts a message taken from a flow for the app.
    fn received(&mut self, msg: Option<Bytes>) -> Option<Bytes> {
        if let Some(m) = &msg {
            self.traffic.messages_in += 1;
            self.traffic.bytes_in += m.len() as u64;
        }
        msg
    }
}

impl Transport for CoreTransport<'_, '_> {
    type Flow = Flow;
    type Permit = FlowPermit;

    fn admit(&mut self) -> Option<FlowPermit> {
        self.quota.acquire().ok()
    }

    fn connect(&mut self, req: ConnectRequest) -> Result<Flow, CloseCode> {
        let ctx = &mut *self.ctx;
        // Same-host flows send no packets: outside the connect budgets.
        if let Some(l) = ctx.local.filter(|l| l.hub.local_ip() == req.remote_ip) {
            return l.connect(req.remote_port).map(Flow::Local);
        }
        // A connect the core then refuses (no ephemeral port...) has used its start token:
        // the bucket counts attempts, and the refusal is as cheap as the budget's.
        let slot = self
            .connects
            .admit(ctx.now)
            .map_err(ConnectBudget::close_code)?;
        let flow = ctx
            .core
            .connect(ctx.now, req.remote_ip, req.remote_port)
            .map(Flow::Net)
            .map_err(|e| match e {
                ConnectError::NoEphemeralPort
                | ConnectError::TooManyFlows
                | ConnectError::HandshakeRate => CloseCode::Exhausted,
                ConnectError::InvalidRemoteAddress | ConnectError::InvalidRemotePort => {
                    CloseCode::InvalidRequest
                }
                ConnectError::PeerNotAllowed => CloseCode::PeerNotAllowed,
            })?;
        self.connects.started(flow, slot);
        Ok(flow)
    }

    fn send(&mut self, flow: Flow, msg: Bytes) -> Result<(), SendRefused> {
        let len = msg.len();
        let id = match flow {
            Flow::Net(id) => id,
            Flow::Local(end) => {
                let r = match self.ctx.local {
                    Some(l) => l.hub.send(end, msg),
                    None => Err(SendRefused::Failed(CloseCode::UnknownFlow)),
                };
                if r.is_ok() {
                    self.sent(len);
                }
                return r;
            }
        };
        self.ctx
            .core
            .send(self.ctx.now, id, msg)
            .map(|()| self.sent(len))
            .map_err(|e| match e {
                SendError::BufferFull => SendRefused::BufferFull,
                SendError::UnknownFlow => SendRefused::Failed(CloseCode::UnknownFlow),
                SendError::MessageTooLarge { .. } => {
                    SendRefused::Failed(CloseCode::MessageTooLarge)
                }
                SendError::Closed | SendError::EmptyMessage => {
                    SendRefused::Failed(CloseCode::InvalidRequest)
                }
            })
    }

    fn peek_len(&mut self, flow: Flow) -> Option<usize> {
        match flow {
            Flow::Net(id) => self.ctx.core.peek_len(id).ok().flatten(),
            Flow::Local(end) => self.ctx.local?.hub.peek_len(end),
        }
    }

    fn recv(&mut self, flow: Flow) -> Option<Bytes> {
        let msg = match flow {
            Flow::Net(id) => self.ctx.core.recv(id).ok().flatten(),
            Flow::Local(end) => self.ctx.local?.hub.recv(end),
        };
        self.received(msg)
    }

    fn close(&mut self, flow: Flow) -> Result<(), UnknownFlow> {
        match flow {
            Flow::Net(id) => self
                .ctx
                .core
                .close(self.ctx.now, id)
                .map_err(|_| UnknownFlow),
            Flow::Local(end) => self.ctx.local.ok_or(UnknownFlow)?.hub.close(end),
        }
    }

    fn abort(&mut self, flow: Flow) -> Result<(), UnknownFlow> {
        match flow {
            Flow::Net(id) => self
                .ctx
                .core
                .abort(self.ctx.now, id)
                .map_err(|_| UnknownFlow),
            Flow::Local(end) => self.ctx.local.ok_or(UnknownFlow)?.hub.abort(end),
        }
    }

    fn discard(&mut self, flow: Flow) {
        self.ctx.discard(flow);
    }

    fn exists(&self, flow: Flow) -> bool {
        match flow {
            Flow::Net(id) => self.ctx.core.flow_key(id).is_some(),
            Flow::Local(end) => self.ctx.local.is_some_and(|l| l.hub.exists(end)),
        }
    }

    fn adopt(&mut self, flow: Flow, handle: u32) {
        self.ctx.owners.insert(flow, (self.channel, handle));
    }

    fn release(&mut self, flow: Flow) {
        self.ctx.owners.remove(&flow);
        self.connects.ended(flow);
    }
}

/// One channel's engine-side state.
pub struct Chan {
    id: ChannelId,
    mem: ChannelMem,
    half: engine::Channel<Flow, FlowPermit>,
    /// Machnet ports this channel listens on (on this engine).
    pub ports: Vec<u16>,
    /// Set once the channel is detached gracefully (docs/CHANNEL.md §5): the deadline by which
    /// its flows must have closed.
    detach_deadline: Option<Instant>,
    /// The flow limits of the channel's application.
    quota: FlowQuota,
    /// The channel's connects in progress, and its application's connect budgets.
    connects: ChannelConnects<Flow>,
    /// The worker's bookkeeping for this channel (run list, flush list; docs/CHANNEL.md §4).
    pub(super) sched: Sched,
    /// Messages and bytes through this channel.
    traffic: Traffic,
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
            .field("half", &self.half)
            .finish_non_exhaustive()
    }
}

impl Chan {
    /// Takes over a freshly created channel (both rings at position 0) whose flows count
    /// against `quota` and whose connects against `connects`.
    pub fn new(
        id: ChannelId,
        mut mem: ChannelMem,
        quota: FlowQuota,
        connects: ChannelConnects<Flow>,
    ) -> Self {
        let half = engine::Channel::new(mem.views(), mem.layout().max_message_len);
        Chan {
            id,
            mem,
            half,
            ports: Vec::new(),
            detach_deadline: None,
            quota,
            connects,
            sched: Sched::default(),
            traffic: Traffic::default(),
        }
    }

    /// Runs `f` on the engine half over the core, then wakes the app if it asked to be.
    fn with<R>(
        &mut self,
        ctx: &mut Ctx<'_>,
        f: impl FnOnce(&mut engine::Channel<Flow, FlowPermit>, &mut CoreTransport<'_, '_>) -> R,
    ) -> R {
        let mut t = CoreTransport {
            ctx,
            channel: self.id,
            quota: &self.quota,
            connects: &mut self.connects,
            traffic: &mut self.traffic,
        };
        let r = f(&mut self.half, &mut t);
        self.wake_if_asked();
        r
    }

    fn wake_if_asked(&mut self) {
        if self.half.take_wake_app() {
            self.mem.wake_app();
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
        self.half.counters()
    }

    /// Messages and bytes through this channel so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Where flow `handle` of this channel stands (`None`: no such flow).
    pub fn flow_phase(&self, handle: u32) -> Option<engine::FlowPhase> {
        self.half.flow_phase(handle)
    }

    /// Live flows of this channel.
    pub fn flow_count(&self) -> usize {
        self.half.flow_count()
    }

    /// Whether a refused `Send` holds up the request ring.
    pub fn is_stalled(&self) -> bool {
        self.half.is_stalled()
    }

    /// Message bytes held in the sidecar for this channel (outside the core and the rings).
    pub fn held_bytes(&self) -> usize {
        self.half.held_bytes()
    }

    /// Consumes requests (within a budget) and applies them to the core. Returns how many were
    /// consumed.
    pub fn consume(&mut self, ctx: &mut Ctx<'_>) -> Result<usize, Violation> {
        self.with(ctx, |half, t| half.consume(t))
    }

    /// `flow` of this channel connected or ended: if it was a connect in progress, its places
    /// in the connect budgets come back.
    pub fn connect_ended(&mut self, flow: Flow) {
        self.connects.ended(flow);
    }

    /// Connects of this channel in progress (over the network).
    pub fn connects_in_progress(&self) -> usize {
        self.connects.in_progress()
    }

    /// Connects refused by a budget since the last call.
    pub fn take_connect_refusals(&mut self) -> ConnectRefusals {
        self.connects.take_refusals()
    }

    /// The transport established a flow this channel connected.
    pub fn on_connected(&mut self, handle: u32, info: Option<FlowInfo>) {
        self.half.on_connected(handle, info);
    }

    /// A listener of this channel accepted `id` on `port`. Returns false if the channel cannot
    /// take more flows, or its application holds its flow limit (the caller aborts it).
    pub fn on_accepted(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: Flow,
        port: u16,
        info: Option<FlowInfo>,
    ) -> bool {
        self.with(ctx, |half, t| half.on_accepted(t, id, port, info))
    }

    /// Messages are waiting in the core for `handle`.
    pub fn on_readable(&mut self, handle: u32) {
        self.half.on_readable(handle);
    }

    /// The peer closed its direction of `handle`.
    pub fn on_peer_closed(&mut self, handle: u32) {
        self.half.on_peer_closed(handle);
    }

    /// The core flow behind `handle` is gone.
    pub fn on_closed(&mut self, handle: u32, id: Flow, code: CloseCode) {
        self.half.on_closed(handle, id, code);
    }

    /// The core can take more data on `id`: retry a stalled send.
    pub fn on_writable(&mut self, id: Flow) {
        self.half.on_writable(id);
    }

    /// Writes pending notifications while they fit, taking messages from the core as room
    /// allows. Returns whether anything was written.
    pub fn flush(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, Violation> {
        self.with(ctx, |half, t| half.flush(t))
    }

    /// Announces that the engine is about to sleep (docs/CHANNEL.md §4). Returns `Ok(false)` if
    /// there is work after all (a request to consume, or room for a blocked notification).
    pub fn prepare_sleep(&mut self) -> Result<bool, Violation> {
        self.half.prepare_sleep()
    }

    /// Withdraws the announcements of [`Chan::prepare_sleep`] after waking.
    pub fn cancel_sleep(&mut self) {
        self.half.cancel_sleep();
    }

    /// Whether a notification waits for room that the app has since made.
    pub fn has_room_for_blocked(&mut self) -> bool {
        self.half.has_room_for_blocked()
    }

    /// Whether flushing could make progress (something queued and not known to be blocked).
    pub fn wants_flush(&self) -> bool {
        self.half.wants_flush()
    }

    /// Starts a graceful detach (docs/CHANNEL.md §5; [`engine::Channel::detach`]): the requests
    /// still in the ring are carried out ([`Chan::consume`]) and the flows closed once it is
    /// drained ([`Chan::finish_detach`]), all by `deadline`.
    pub fn detach(&mut self, ctx: &mut Ctx<'_>, code: CloseCode, deadline: Instant) {
        self.detach_deadline = Some(deadline);
        self.with(ctx, |half, t| half.detach(t, code));
    }

    /// The deadline of a graceful detach, if the channel is detaching.
    pub fn detach_deadline(&self) -> Option<Instant> {
        self.detach_deadline
    }

    /// Whether a detaching channel has carried out every request its app published.
    pub fn is_drained(&mut self) -> Result<bool, Violation> {
        self.half.is_drained()
    }

    /// Ends a drained detach: closes each remaining flow gracefully and hands them over with
    /// their permits; the caller keeps them as orphans until they close or the deadline passes.
    pub fn finish_detach(&mut self, ctx: &mut Ctx<'_>) -> Vec<(Flow, FlowPermit)> {
        self.with(ctx, |half, t| half.finish_detach(t))
    }

    /// A flow of a detaching channel ended: forget it and what it still holds.
    pub fn forget(&mut self, ctx: &mut Ctx<'_>, handle: u32) {
        self.with(ctx, |half, t| half.forget(t, handle));
    }

    /// Closes the channel: aborts its live flows (peers get RST), sets the header's `closed`
    /// word to `code` and wakes the app.
    pub fn close_all(&mut self, ctx: &mut Ctx<'_>, code: CloseCode) {
        self.with(ctx, |half, t| half.close_all(t, code));
    }
}

/// The channel's name for why a core flow ended.
pub fn close_code(reason: CloseReason) -> CloseCode {
    use CloseReason as R;
    match reason {
        R::Graceful => CloseCode::Graceful,
        R::Refused => CloseCode::Refused,
        R::Reset => CloseCode::Reset,
        R::TimedOut => CloseCode::TimedOut,
        R::ProtocolViolation => CloseCode::ProtocolViolation,
        R::Aborted => CloseCode::Aborted,
        R::MessageTooLarge => CloseCode::MessageTooLarge,
        R::PeerNotAuthenticated => CloseCode::PeerNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::super::listen::Listeners;
    use super::super::route::Routed;
    use super::*;
    use machnet_channel::{ChannelLayout, ChannelViews};
    use machnet_channel::{Consumer, Producer, RecordHeader, RecordKind};
    use machnet_core::{Datagram, EngineConfig};
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
        let connects = ChannelConnects::unlimited();
        (Chan::new(id, mem, FlowQuota::unlimited(), connects), app)
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

    /// What the worker does with events: [`route::route`] to the engine's channels.
    fn route(
        core: &mut Engine,
        chans: &mut HashMap<ChannelId, Chan>,
        listeners: &mut Listeners,
        owners: &mut Owners,
    ) {
        while let Some(ev) = core.poll_event() {
            let mut ctx = Ctx {
                core: &mut *core,
                now: Instant::ZERO,
                owners: &mut *owners,
                local: None,
            };
            let routed = super::super::route::route(ev, &mut ctx, listeners, chans);
            assert!(
                !matches!(routed, Routed::AcceptRefused | Routed::Unowned(_)),
                "{ev:?}: {routed:?}"
            );
        }
    }

    fn flush(chan: &mut Chan, core: &mut Engine, owners: &mut Owners) {
        let mut ctx = Ctx {
            core,
            now: Instant::ZERO,
            owners,
            local: None,
        };
        chan.flush(&mut ctx).unwrap();
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
            local: None,
        };
        assert_eq!(chan.consume(&mut ctx).unwrap(), 3);
        flush(&mut chan, &mut core, &mut owners);
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
            local: None,
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
            local: None,
        };
        assert!(matches!(chan.consume(&mut ctx), Err(Violation::Ring(_))));
    }

    #[test]
    fn messages_stay_in_the_core_until_they_fit_and_notifications_keep_flow_order() {
        let max = 600 << 10;
        let (mut a, mut b) = (engine(A, max), engine(B, max));
        b.listen(80).unwrap();
        let (ca, mut app_a) = channel(1, max);
        let (cb, mut app_b) = channel(2, max);
        let (mut chans_a, mut chans_b) = (HashMap::from([(1, ca)]), HashMap::from([(2, cb)]));
        let (mut no_listeners, mut listeners_b) =
            (Listeners::new(), Listeners::from_pairs([(80, 2)]));
        let (mut oa, mut ob) = (HashMap::new(), HashMap::new());
        let now = Instant::ZERO;
        let req = ConnectRequest {
            remote_ip: B,
            remote_port: 80,
        };
        app_a.push(RecordKind::Connect, 0, 11, &req.encode());
        let consume = |chans: &mut HashMap<ChannelId, Chan>, core: &mut Engine, o: &mut Owners| {
            let ctx = &mut Ctx {
                core,
                now,
                owners: o,
                local: None,
            };
            chans.get_mut(&1).unwrap().consume(ctx).unwrap()
        };
        assert_eq!(consume(&mut chans_a, &mut a, &mut oa), 1);
        shuttle(&mut a, &mut b, now);
        route(&mut a, &mut chans_a, &mut no_listeners, &mut oa);
        route(&mut b, &mut chans_b, &mut listeners_b, &mut ob);
        flush(chans_a.get_mut(&1).unwrap(), &mut a, &mut oa);
        flush(chans_b.get_mut(&2).unwrap(), &mut b, &mut ob);
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
            consume(&mut chans_a, &mut a, &mut oa);
        }
        app_a.push(RecordKind::Close, flow, 0, &[]);
        consume(&mut chans_a, &mut a, &mut oa);
        shuttle(&mut a, &mut b, now);
        route(&mut b, &mut chans_b, &mut listeners_b, &mut ob);
        flush(chans_b.get_mut(&2).unwrap(), &mut b, &mut ob);
        let Some(&Flow::Net(fid)) = ob.keys().next() else {
            panic!("a core flow")
        };
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
        let cb = chans_b.get_mut(&2).unwrap();
        assert!(!cb.wants_flush(), "blocked on the full ring");
        // The app made room: the last message, then PeerClosed.
        assert!(cb.has_room_for_blocked());
        flush(cb, &mut b, &mut ob);
        shuttle(&mut a, &mut b, now);
        let (h, p) = app_b.next().unwrap();
        assert_eq!(h.kind, RecordKind::Message);
        got.push(p);
        assert!(got == msgs, "messages intact and in order");
        route(&mut b, &mut chans_b, &mut listeners_b, &mut ob);
        flush(chans_b.get_mut(&2).unwrap(), &mut b, &mut ob);
        let (h, _) = app_b.next().unwrap();
        assert_eq!((h.kind, h.flow), (RecordKind::PeerClosed, bflow));
        assert_eq!(b.flow_held_bytes(fid), Some(0));
    }
}
