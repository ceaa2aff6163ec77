//! Byte streams over Machnet flows for tokio (feature `tokio`): [`MachnetStream`] is
//! `AsyncRead + AsyncWrite` over one flow, [`StreamChannel`] opens and accepts them on one
//! channel, [`MachnetListener`] accepts them on every engine. Programs written for TCP streams
//! (hyper, axum, tonic) run over Machnet unchanged.
//!
//! # Stream semantics
//!
//! * Every write is sent at once as one Machnet message (a write larger than the channel's
//!   maximum message length sends that much and returns the count written). Reads reassemble
//!   the messages in order; what does not fit the caller's buffer stays buffered.
//! * `poll_shutdown` closes this direction only (the peer reads EOF after all data and may
//!   still write back; this side keeps reading). Dropping a stream closes both directions
//!   gracefully; [`MachnetStream::abort`] resets the flow.
//! * A flow reset by the peer reads as `io::ErrorKind::ConnectionReset`, a dead peer as
//!   `TimedOut` (after the data received before).
//!
//! # Demultiplexing
//!
//! Messages of all flows of a channel arrive on the channel, so the flows of one
//! [`StreamChannel`] share its state behind one mutex: each stream's queue of received
//! messages, the accept queue, and the wakers of tasks waiting on them. A reader first drains
//! its own queue; if it is empty, it pumps the channel without blocking (queueing other flows'
//! messages and waking their readers) and only then waits: it arms the channel's eventfd
//! (docs/CHANNEL.md §4) with one shared "router" waker. When the sidecar signals, the router
//! wakes the waiting task directly if it is the only one (a client awaiting its reply: no task
//! hop), else one small driver task per channel (spawned on first need), which pumps the
//! channel and wakes exactly the tasks the new records are for. The driver also arms for ring
//! space when writers wait for room (back-pressure) and writes closes that found the ring
//! full. So a busy stream finds its data without any task switch, a lone waiter is woken
//! directly, several waiters cost one driver wake-up, and no task spins. (Pumping inside the
//! router's wake, on tokio's I/O driver thread, was tried too: no measurable gain on this
//! 2-vCPU machine, so the simpler driver hop stays.)
//!
//! A stream that is never read keeps its messages queued in this process (without bound: the
//! channel has one notification ring for all flows, so refusing one flow's messages would stall
//! every other flow of the channel); its peer's sends are not slowed. Read your streams, or
//! drop them. Accepted flows wait for `accept` in a bounded queue (the backlog, default
//! [`DEFAULT_BACKLOG`] per channel, as the Go adapter's): beyond it a new flow is reset.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use machnet_channel::app::{AppChannel, ConnectTicket, Event, WaitFor};
use machnet_channel::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::channel::{Block, Channel, Flow, Got, PushFail, Want};
use crate::error::{ConnectError, Fault, ListenError, OpenChannelError, RecvError, SendError};
use crate::error_kind::{ClientError, ErrorKind};
use crate::machnet::Machnet;

/// Accepted flows that may wait for `accept` per channel (as `SOMAXCONN`-style listen backlogs
/// and the Go adapter's `StreamConfig.Backlog`): see [`StreamChannel::set_backlog`].
pub const DEFAULT_BACKLOG: usize = 128;

/// An `io::Error` of `kind`'s errno class (ECONNRESET → `ConnectionReset`, ...).
fn io_error(kind: ErrorKind, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(kind.errno()).kind(),
        what.to_string(),
    )
}

fn client_io_error(e: &dyn ClientError) -> io::Error {
    io_error(e.kind(), e)
}

/// How a flow ended, as a read or write reports it.
fn ended_error(code: Option<CloseCode>) -> io::Error {
    let what = match code {
        Some(c) => format!("Machnet flow ended: {}", c.description()),
        None => "Machnet flow ended (unknown reason)".to_string(),
    };
    io_error(ErrorKind::of_close_code(code), what)
}

/// Who holds a flow's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Messages arrived before its connect was claimed (or it waits in the accept queue).
    Unclaimed,
    /// A [`MachnetStream`] reads it.
    Stream,
    /// Its stream was dropped: what still arrives is discarded until the flow ends.
    Gone,
}

/// One flow's share of the demultiplexer.
struct Slot {
    owner: Owner,
    /// Received messages, oldest first; the first one is read from `head_off` on.
    queue: VecDeque<Vec<u8>>,
    head_off: usize,
    /// The peer closed its side: EOF once `queue` is drained.
    peer_closed: bool,
    /// The flow is gone (`Closed` event) with this code.
    ended: Option<Option<CloseCode>>,
    /// The sidecar failed a send of ours on this flow: data was lost, the stream is broken.
    send_failed: Option<Option<CloseCode>>,
    /// This side closed its sending direction (or the whole stream, `closed_locally`).
    shut_wr: bool,
    /// [`StreamCloser::close`]: reads and writes fail from now on.
    closed_locally: bool,
    read_waker: Option<Waker>,
}

impl Slot {
    fn new(owner: Owner) -> Slot {
        Slot {
            owner,
            queue: VecDeque::new(),
            head_off: 0,
            peer_closed: false,
            ended: None,
            send_failed: None,
            shut_wr: false,
            closed_locally: false,
            read_waker: None,
        }
    }

    /// Wakes the waiting reader; whether there was one.
    fn wake_reader(&mut self) -> bool {
        match self.read_waker.take() {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        }
    }

    /// Copies queued bytes into `buf`; the number copied.
    fn read_into(&mut self, buf: &mut ReadBuf<'_>) -> usize {
        let mut n = 0;
        while buf.remaining() > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let avail = &front[self.head_off..];
            let take = avail.len().min(buf.remaining());
            buf.put_slice(&avail[..take]);
            n += take;
            self.head_off += take;
            if self.head_off == front.len() {
                self.queue.pop_front();
                self.head_off = 0;
            }
        }
        n
    }
}

/// Adds `w` to `list` unless a waker of the same task is there.
fn add_waker(list: &mut Vec<Waker>, w: &Waker) {
    if !list.iter().any(|x| x.will_wake(w)) {
        list.push(w.clone());
    }
}

fn wake_all(list: &mut Vec<Waker>) {
    for w in list.drain(..) {
        w.wake();
    }
}

/// A connect in flight: the task awaiting it and, once read, its answer.
#[derive(Default)]
struct PendingAnswer {
    waker: Option<Waker>,
    answer: Option<Result<Flow, ConnectError>>,
}

/// Where the channel's eventfd wake-up goes. Every task that is about to wait arms the eventfd
/// with this router's waker; when it fires, the router wakes the only waiting task directly if
/// there is exactly one (no task hop on the common request/response path), else the driver
/// task, which pumps the channel and wakes the tasks the records are for.
#[derive(Default)]
struct Router {
    route: Mutex<Route>,
}

#[derive(Default)]
struct Route {
    driver: Option<Waker>,
    sole: Option<Waker>,
}

impl Router {
    fn route(&self) -> MutexGuard<'_, Route> {
        self.route.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::task::Wake for Router {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let (sole, driver) = {
            let mut r = self.route();
            (r.sole.take(), r.driver.clone())
        };
        if let Some(w) = sole.or(driver) {
            w.wake();
        }
    }
}

/// The demultiplexer's state (behind [`Shared::inner`]).
struct Inner {
    ch: Channel,
    /// Largest message (and so largest single write).
    max_write: usize,
    flows: HashMap<u32, Slot>,
    /// Accepted flows not yet taken by `accept`.
    accepted: VecDeque<Flow>,
    /// At most this many flows wait in `accepted`; further ones are reset (as a TCP listener's
    /// backlog bounds what a flood of connections makes it hold).
    backlog: usize,
    /// Flows reset because the backlog was full.
    backlog_resets: u64,
    accept_wakers: Vec<Waker>,
    /// Connects started and not yet claimed by their future, by ticket id.
    connects: HashMap<u32, PendingAnswer>,
    /// Tasks waiting for room in the request ring, and the largest footprint they need.
    space_wakers: Vec<Waker>,
    space_need: u64,
    /// Closes (`true`: aborts) that found the request ring full, written when room appears.
    deferred_ends: Vec<(Flow, bool)>,
    /// The channel failed (sidecar gone, channel closed, corrupt): every operation fails so.
    fault: Option<(ErrorKind, String)>,
    driver_spawned: bool,
    driver_waker: Option<Waker>,
    /// Streams whose reader waits (`Slot::read_waker` set).
    read_waiters: usize,
    router: Arc<Router>,
    router_waker: Waker,
    this: Weak<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent enough state (queues and wakers).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the driver task notice that the channel is gone and end.
        if let Some(w) = self.driver_waker.take() {
            w.wake();
        }
    }
}

impl Inner {
    fn fault_error(&self) -> Option<io::Error> {
        self.fault
            .as_ref()
            .map(|(kind, what)| io_error(*kind, what.as_str()))
    }

    fn set_fault(&mut self, e: &dyn ClientError) {
        if self.fault.is_none() {
            self.fault = Some((e.kind(), e.to_string()));
        }
        for slot in self.flows.values_mut() {
            slot.wake_reader();
        }
        self.read_waiters = 0;
        wake_all(&mut self.accept_wakers);
        for c in self.connects.values_mut() {
            if let Some(w) = c.waker.take() {
                w.wake();
            }
        }
        wake_all(&mut self.space_wakers);
    }

    /// Reads every notification waiting now and hands each to its flow (and each connect
    /// answer to its connect). Returns whether anything was read.
    fn pump(&mut self) -> bool {
        let mut any = self.pump_events();
        if self.connects.values().any(|c| c.answer.is_none()) {
            // The channel keeps connect answers for their tickets: collect them.
            let waiting: Vec<u32> = self
                .connects
                .iter()
                .filter(|(_, c)| c.answer.is_none())
                .map(|(&id, _)| id)
                .collect();
            for id in waiting {
                let r = self.ch.connect_poll(ConnectTicket::from_id(id));
                let answer = match r {
                    Ok(None) => continue,
                    Ok(Some(flow)) => {
                        self.claim(flow);
                        Ok(flow)
                    }
                    Err(e) => Err(e),
                };
                any = true;
                if let Some(c) = self.connects.get_mut(&id) {
                    c.answer = Some(answer);
                    if let Some(w) = c.waker.take() {
                        w.wake();
                    }
                }
            }
            // Notifications read on the way were kept in the channel.
            any |= self.pump_events();
        }
        any
    }

    fn pump_events(&mut self) -> bool {
        if self.fault.is_some() {
            return false;
        }
        let mut any = false;
        loop {
            match self.ch.receive(Want::Event, Some(Instant::now())) {
                Ok(Some(Got::Event(ev))) => {
                    any = true;
                    self.dispatch(ev);
                }
                Ok(_) => return any,
                Err(e) => {
                    self.set_fault(&e);
                    return any;
                }
            }
        }
    }

    fn dispatch(&mut self, ev: Event) {
        match ev {
            Event::Message { flow, data } => {
                let slot = self
                    .flows
                    .entry(flow.handle())
                    .or_insert_with(|| Slot::new(Owner::Unclaimed));
                if slot.owner != Owner::Gone {
                    slot.queue.push_back(data);
                    if slot.wake_reader() {
                        self.read_waiters = self.read_waiters.saturating_sub(1);
                    }
                }
            }
            Event::Accepted { flow, .. } => {
                self.flows
                    .entry(flow.handle())
                    .or_insert_with(|| Slot::new(Owner::Unclaimed));
                if self.accepted.len() >= self.backlog {
                    self.backlog_resets += 1;
                    self.release(flow, true);
                    return;
                }
                self.accepted.push_back(flow);
                wake_all(&mut self.accept_wakers);
            }
            Event::PeerClosed { flow } => {
                let slot = self
                    .flows
                    .entry(flow.handle())
                    .or_insert_with(|| Slot::new(Owner::Unclaimed));
                slot.peer_closed = true;
                if slot.wake_reader() {
                    self.read_waiters = self.read_waiters.saturating_sub(1);
                }
            }
            Event::Closed { flow, reason } => {
                let h = flow.handle();
                let remove = match self.flows.get_mut(&h) {
                    Some(slot) => {
                        slot.ended = Some(reason);
                        if slot.wake_reader() {
                            self.read_waiters = self.read_waiters.saturating_sub(1);
                        }
                        slot.owner == Owner::Gone
                            || (slot.owner == Owner::Unclaimed
                                && self.connects.is_empty()
                                && !self.accepted.contains(&flow))
                    }
                    None => {
                        let mut slot = Slot::new(Owner::Unclaimed);
                        slot.ended = Some(reason);
                        self.flows.insert(h, slot);
                        self.connects.is_empty()
                    }
                };
                if remove {
                    self.flows.remove(&h);
                }
                // Writers of this flow may wait for ring space: let them see the end.
                wake_all(&mut self.space_wakers);
            }
            Event::RequestFailed {
                flow,
                request: crate::RequestKind::Send,
                reason,
            } => {
                if let Some(slot) = self.flows.get_mut(&flow.handle()) {
                    slot.send_failed.get_or_insert(reason);
                    if slot.wake_reader() {
                        self.read_waiters = self.read_waiters.saturating_sub(1);
                    }
                }
            }
            _ => {}
        }
    }

    /// Writes closes that found the ring full earlier.
    fn flush_deferred_ends(&mut self) {
        while let Some(&(flow, abort)) = self.deferred_ends.first() {
            match self.ch.try_end_flow(&flow, abort) {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) => {
                    if matches!(e.kind(), ErrorKind::SidecarGone | ErrorKind::ChannelClosed) {
                        self.set_fault(&e);
                        return;
                    }
                }
            }
            self.deferred_ends.remove(0);
        }
    }

    /// Closes (or aborts) `flow` now, or as soon as the request ring has room.
    fn end_flow(&mut self, flow: Flow, abort: bool) {
        if self.fault.is_some() {
            return;
        }
        if !self.deferred_ends.is_empty() {
            self.flush_deferred_ends();
        }
        if self.deferred_ends.is_empty() {
            match self.ch.try_end_flow(&flow, abort) {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => return, // the channel is failing: the flow ends with it
            }
        }
        self.deferred_ends.push((flow, abort));
        self.wait_space(AppChannel::footprint(0), None);
    }

    /// Registers `waker` (if any) for ring space of `need` bytes and has the driver arm for it.
    fn wait_space(&mut self, need: u64, waker: Option<&Waker>) {
        if let Some(w) = waker {
            add_waker(&mut self.space_wakers, w);
        }
        self.space_need = self.space_need.max(need);
        self.router.route().sole = None;
        self.kick_driver();
    }

    /// Makes sure the driver task runs (spawned, and polled again to re-arm).
    fn kick_driver(&mut self) {
        if !self.driver_spawned {
            self.driver_spawned = true;
            tokio::spawn(drive(self.this.clone()));
        } else if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    /// Pumps, then arms the eventfd with the router's waker. `Ready` once the channel failed.
    fn turn(&mut self) -> Poll<()> {
        let waker = self.router_waker.clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            if self.fault.is_some() {
                return Poll::Ready(());
            }
            self.pump();
            if !self.deferred_ends.is_empty() {
                self.flush_deferred_ends();
            }
            let space = if self.space_wakers.is_empty() && self.deferred_ends.is_empty() {
                None
            } else {
                Some(self.space_need.max(AppChannel::footprint(0)))
            };
            if let Some(need) = space {
                match self.ch.app.is_ready(WaitFor::Space(need)) {
                    Ok(true) => {
                        wake_all(&mut self.space_wakers);
                        self.space_need = 0;
                        if !self.deferred_ends.is_empty() {
                            continue;
                        }
                    }
                    Ok(false) => {}
                    Err(f) => {
                        self.set_fault(&RecvError::from(Fault::from(f)));
                        continue;
                    }
                }
            }
            match self.ch.app.arm(WaitFor::Data) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(f) => {
                    self.set_fault(&RecvError::from(Fault::from(f)));
                    continue;
                }
            }
            if let Some(need) = space.filter(|_| !self.space_wakers.is_empty()) {
                match self.ch.app.arm(WaitFor::Space(need)) {
                    Ok(false) => {}
                    Ok(true) => {
                        self.ch.app.disarm(WaitFor::Data);
                        continue;
                    }
                    Err(f) => {
                        self.ch.app.disarm(WaitFor::Data);
                        self.set_fault(&RecvError::from(Fault::from(f)));
                        continue;
                    }
                }
            }
            match self.ch.poll_wakeup(&mut cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => {
                    self.ch.app.disarm(WaitFor::Data);
                    self.ch.app.disarm(WaitFor::Space(0));
                    if let Err(f) = r {
                        self.set_fault(&RecvError::from(f));
                    }
                }
            }
        }
    }

    fn claim(&mut self, flow: Flow) {
        let slot = self
            .flows
            .entry(flow.handle())
            .or_insert_with(|| Slot::new(Owner::Stream));
        slot.owner = Owner::Stream;
    }

    /// The stream of `flow` is dropped (`abort`: reset instead of a graceful close).
    fn release(&mut self, flow: Flow, abort: bool) {
        let h = flow.handle();
        let Some(slot) = self.flows.get_mut(&h) else {
            return;
        };
        slot.owner = Owner::Gone;
        slot.queue.clear();
        if slot.read_waker.take().is_some() {
            self.read_waiters = self.read_waiters.saturating_sub(1);
        }
        if slot.ended.is_some() {
            self.flows.remove(&h);
            return;
        }
        let already_closed = slot.shut_wr;
        if abort || !already_closed {
            self.end_flow(flow, abort);
        }
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Flow>> {
        let mut pumped = false;
        loop {
            if let Some(flow) = self.accepted.pop_front() {
                self.claim(flow);
                return Poll::Ready(Ok(flow));
            }
            if let Some(e) = self.fault_error() {
                return Poll::Ready(Err(e));
            }
            if pumped || !self.pump() {
                break;
            }
            pumped = true;
        }
        add_waker(&mut self.accept_wakers, cx.waker());
        self.go_pending(cx.waker());
        Poll::Pending
    }

    /// Called by a task that registered its waker and is about to return `Pending`: routes the
    /// next eventfd wake-up to it if it is the only waiting task (else to the driver), and
    /// arms the eventfd (pumping what arrived meanwhile).
    fn go_pending(&mut self, waker: &Waker) {
        if !self.driver_spawned {
            self.kick_driver();
        }
        let waiting = self.read_waiters
            + self.accept_wakers.len()
            + self.connects.values().filter(|c| c.waker.is_some()).count();
        let alone = waiting == 1 && self.space_wakers.is_empty() && self.deferred_ends.is_empty();
        self.router.route().sole = alone.then(|| waker.clone());
        let _ = self.turn();
    }
}

/// The driver task of one channel: waits on its eventfd and dispatches what arrives; ends when
/// the channel is gone or failed.
async fn drive(shared: Weak<Shared>) {
    poll_fn(|cx| {
        let Some(shared) = shared.upgrade() else {
            return Poll::Ready(());
        };
        let mut inner = shared.lock();
        if !inner
            .driver_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.driver_waker = Some(cx.waker().clone());
            inner.router.route().driver = Some(cx.waker().clone());
        }
        inner.turn()
    })
    .await
}

/// One Machnet channel plus the demultiplexer that turns its flows into byte streams
/// ([`MachnetStream`]). Cheap to clone (all clones share the channel); `Send + Sync`, usable
/// from any task of a multi-thread tokio runtime. The channel is closed (gracefully) when the
/// last clone and the last stream of it are dropped.
///
/// Operations that wait need a tokio runtime with I/O enabled; the channel registers with the
/// runtime of its first wait (keep using it there).
#[derive(Clone)]
pub struct StreamChannel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.shared.lock();
        f.debug_struct("StreamChannel")
            .field("channel", &inner.ch)
            .field("streams", &inner.flows.len())
            .finish_non_exhaustive()
    }
}

impl StreamChannel {
    /// Opens a channel on `engine` (`None`: the sidecar chooses) for byte streams. Auto-close
    /// is turned off on it: streams handle the peer's close themselves (half-close).
    pub fn open(machnet: &Machnet, engine: Option<u16>) -> Result<StreamChannel, OpenChannelError> {
        let mut ch = machnet.open_channel(engine)?;
        ch.set_auto_close(false);
        let max_write = ch.max_message_len() as usize;
        let router = Arc::new(Router::default());
        let shared = Arc::new_cyclic(|this| Shared {
            inner: Mutex::new(Inner {
                ch,
                max_write,
                flows: HashMap::new(),
                accepted: VecDeque::new(),
                backlog: DEFAULT_BACKLOG,
                backlog_resets: 0,
                accept_wakers: Vec::new(),
                connects: HashMap::new(),
                space_wakers: Vec::new(),
                space_need: 0,
                deferred_ends: Vec::new(),
                fault: None,
                driver_spawned: false,
                driver_waker: None,
                read_waiters: 0,
                router_waker: Waker::from(router.clone()),
                router,
                this: this.clone(),
            }),
        });
        Ok(StreamChannel { shared })
    }

    /// The engine serving this channel.
    pub fn engine(&self) -> u16 {
        self.shared.lock().ch.engine()
    }

    /// Opens a stream to `addr`. Dropping the future before it completes abandons the connect
    /// (a flow established later is aborted).
    pub async fn connect(&self, addr: SocketAddrV4) -> Result<MachnetStream, ConnectError> {
        let need = AppChannel::footprint(machnet_channel::ConnectRequest::LEN);
        let ticket = poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if let Some((kind, what)) = &inner.fault {
                return Poll::Ready(Err(ConnectError::Io(io_error(*kind, what.as_str()))));
            }
            match inner.ch.connect_start(*addr.ip(), addr.port(), Block::No) {
                Ok(ticket) => {
                    inner.connects.insert(ticket.id(), PendingAnswer::default());
                    Poll::Ready(Ok(ticket))
                }
                Err(PushFail::Fault(f)) => Poll::Ready(Err(f.into())),
                Err(PushFail::WouldBlock | PushFail::TimedOut | PushFail::Rejected(_)) => {
                    inner.wait_space(need, Some(cx.waker()));
                    Poll::Pending
                }
            }
        })
        .await?;
        let mut pending = PendingConnect {
            shared: &self.shared,
            ticket,
            done: false,
        };
        let flow = poll_fn(|cx| pending.poll(cx)).await?;
        Ok(MachnetStream::new(self.shared.clone(), flow))
    }

    /// Accepts connections to Machnet `port` on this channel (see
    /// [`Channel::listen`](crate::Channel::listen): other channels of this application may
    /// listen on it too and form a listen group).
    pub fn listen(&self, port: u16) -> Result<(), ListenError> {
        self.shared.lock().ch.listen(port)
    }

    /// Sets how many accepted flows may wait for [`StreamChannel::accept`] (default
    /// [`DEFAULT_BACKLOG`]; at least 1). A flow accepted while that many wait is reset: its
    /// peer reads `ConnectionReset`. Lowering it leaves flows already waiting alone.
    pub fn set_backlog(&self, backlog: usize) {
        self.shared.lock().backlog = backlog.max(1);
    }

    /// How many flows were reset because the backlog was full.
    pub fn backlog_resets(&self) -> u64 {
        self.shared.lock().backlog_resets
    }

    /// The next flow accepted on this channel, as a stream.
    pub async fn accept(&self) -> io::Result<MachnetStream> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next accepted flow (registers the task for a wake-up when there is none).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<MachnetStream>> {
        let r = self.shared.lock().poll_accept(cx);
        r.map_ok(|flow| MachnetStream::new(self.shared.clone(), flow))
    }
}

/// A connect waiting for its answer; abandoned if dropped before.
struct PendingConnect<'a> {
    shared: &'a Arc<Shared>,
    ticket: ConnectTicket,
    done: bool,
}

impl PendingConnect<'_> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Flow, ConnectError>> {
        let mut inner = self.shared.lock();
        let id = self.ticket.id();
        let mut pumped = false;
        loop {
            if let Some(answer) = inner.connects.get_mut(&id).and_then(|c| c.answer.take()) {
                inner.connects.remove(&id);
                self.done = true;
                return Poll::Ready(answer);
            }
            if let Some((kind, what)) = &inner.fault {
                return Poll::Ready(Err(ConnectError::Io(io_error(*kind, what.as_str()))));
            }
            if pumped {
                break;
            }
            inner.pump();
            pumped = true;
        }
        if let Some(c) = inner.connects.get_mut(&id) {
            if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                c.waker = Some(cx.waker().clone());
            }
        }
        inner.go_pending(cx.waker());
        Poll::Pending
    }
}

impl Drop for PendingConnect<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.shared.lock();
            match inner.connects.remove(&self.ticket.id()) {
                // Established after all: nobody will use it.
                Some(PendingAnswer {
                    answer: Some(Ok(flow)),
                    ..
                }) => inner.release(flow, true),
                _ => inner.ch.abandon_connect(self.ticket),
            }
        }
    }
}

/// Why [`MachnetListener::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A channel could not be opened.
    #[error("cannot open a channel for the listener: {0}")]
    Open(#[from] OpenChannelError),
    /// Listening on the port failed.
    #[error("cannot listen: {0}")]
    Listen(#[from] ListenError),
}

impl ClientError for BindError {
    fn kind(&self) -> ErrorKind {
        match self {
            BindError::Open(e) => e.kind(),
            BindError::Listen(e) => e.kind(),
        }
    }
}

/// A listener over one [`StreamChannel`] per sidecar engine, all listening on one port (a
/// listen group, docs/CHANNEL.md §2): flows accepted on any engine come out of
/// [`MachnetListener::accept`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MachnetListener {
    channels: Arc<Vec<StreamChannel>>,
    local: SocketAddrV4,
}

impl MachnetListener {
    /// Listens on Machnet `port` from every engine of the sidecar `machnet` is attached to.
    pub fn bind(machnet: &Machnet, port: u16) -> Result<MachnetListener, BindError> {
        let mut channels = Vec::new();
        for engine in 0..machnet.engines().max(1) {
            let ch = StreamChannel::open(machnet, Some(engine))?;
            ch.listen(port)?;
            channels.push(ch);
        }
        Ok(MachnetListener {
            channels: Arc::new(channels),
            local: SocketAddrV4::new(machnet.local_ip(), port),
        })
    }

    /// The next accepted stream and its peer's address.
    pub async fn accept(&self) -> io::Result<(MachnetStream, SocketAddrV4)> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next accepted stream (registers the task with every channel when there is
    /// none).
    pub fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<(MachnetStream, SocketAddrV4)>> {
        for ch in self.channels.iter() {
            if let Poll::Ready(r) = ch.poll_accept(cx) {
                return Poll::Ready(r.map(|s| {
                    let peer = s.peer_addr();
                    (s, peer)
                }));
            }
        }
        Poll::Pending
    }

    /// Sets the backlog of each channel (see [`StreamChannel::set_backlog`]): up to
    /// `backlog` flows per engine wait for `accept`.
    pub fn set_backlog(&self, backlog: usize) {
        for ch in self.channels.iter() {
            ch.set_backlog(backlog);
        }
    }

    /// The address peers connect to (the sidecar's IP and the port).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The channels, one per engine.
    pub fn channels(&self) -> &[StreamChannel] {
        &self.channels
    }
}

/// A Machnet flow as a byte stream: tokio `AsyncRead + AsyncWrite + Unpin + Send + 'static`.
///
/// `poll_shutdown` closes this direction only (the peer reads EOF; this side can still read).
/// Dropping the stream closes the flow gracefully (data written before is delivered; what
/// still arrives is discarded). A reset by the peer reads as `io::ErrorKind::ConnectionReset`.
pub struct MachnetStream {
    shared: Arc<Shared>,
    flow: Flow,
    released: bool,
}

impl std::fmt::Debug for MachnetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachnetStream")
            .field("flow", &self.flow)
            .finish_non_exhaustive()
    }
}

impl MachnetStream {
    fn new(shared: Arc<Shared>, flow: Flow) -> MachnetStream {
        MachnetStream {
            shared,
            flow,
            released: false,
        }
    }

    /// This side's address (the sidecar's IP and the flow's local port).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.flow.local_addr()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.flow.remote_addr()
    }

    /// The underlying flow.
    pub fn flow(&self) -> Flow {
        self.flow
    }

    /// Resets the flow at once: the peer sees `ConnectionReset`; data not yet delivered is
    /// discarded.
    pub fn abort(mut self) {
        self.released = true;
        self.shared.lock().release(self.flow, true);
    }

    /// A handle that closes this stream from another task ([`StreamCloser`]).
    pub fn closer(&self) -> StreamCloser {
        StreamCloser {
            shared: Arc::downgrade(&self.shared),
            flow: self.flow,
        }
    }

    fn poll_write_parts(
        &mut self,
        cx: &mut Context<'_>,
        parts: &[&[u8]],
    ) -> Poll<io::Result<usize>> {
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let Some(slot) = inner.flows.get(&self.flow.handle()) else {
            return Poll::Ready(Err(ended_error(None)));
        };
        if slot.closed_locally {
            return Poll::Ready(Err(closed_locally()));
        }
        if slot.shut_wr {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if let Some(code) = slot.send_failed.or(slot.ended) {
            return Poll::Ready(Err(ended_error(code)));
        }
        if let Some(e) = inner.fault_error() {
            return Poll::Ready(Err(e));
        }
        // Take what fits one message.
        let mut room = inner.max_write;
        let mut take: Vec<&[u8]> = Vec::with_capacity(parts.len());
        for p in parts {
            if room == 0 {
                break;
            }
            if p.is_empty() {
                continue;
            }
            let n = p.len().min(room);
            take.push(&p[..n]);
            room -= n;
        }
        let n = inner.max_write - room;
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        match inner.ch.send_parts(&self.flow, &take, Block::No) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(SendError::WouldBlock) => {
                inner.wait_space(AppChannel::footprint(n), Some(cx.waker()));
                Poll::Pending
            }
            Err(SendError::FlowClosed(code)) => Poll::Ready(Err(ended_error(code))),
            Err(e) => {
                if matches!(
                    e.kind(),
                    ErrorKind::SidecarGone | ErrorKind::ChannelClosed | ErrorKind::Protocol
                ) {
                    inner.set_fault(&e);
                }
                Poll::Ready(Err(client_io_error(&e)))
            }
        }
    }
}

fn closed_locally() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the stream was closed")
}

impl AsyncRead for MachnetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let h = self.flow.handle();
        let mut inner = self.shared.lock();
        let mut pumped = false;
        loop {
            let fault = inner.fault_error();
            let Some(slot) = inner.flows.get_mut(&h) else {
                return Poll::Ready(Err(ended_error(None)));
            };
            if slot.closed_locally {
                return Poll::Ready(Err(closed_locally()));
            }
            if slot.read_into(buf) > 0 {
                return Poll::Ready(Ok(()));
            }
            if slot.peer_closed {
                return Poll::Ready(Ok(())); // EOF
            }
            if let Some(code) = slot.ended {
                return Poll::Ready(match code {
                    Some(CloseCode::Graceful) => Ok(()),
                    _ => Err(ended_error(code)),
                });
            }
            if let Some(e) = fault {
                return Poll::Ready(Err(e));
            }
            if pumped || !inner.pump() {
                let inner = &mut *inner;
                let slot = inner.flows.get_mut(&h).expect("slot present above");
                match &slot.read_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    Some(_) => slot.read_waker = Some(cx.waker().clone()),
                    None => {
                        slot.read_waker = Some(cx.waker().clone());
                        inner.read_waiters += 1;
                    }
                }
                inner.go_pending(cx.waker());
                return Poll::Pending;
            }
            pumped = true;
        }
    }
}

impl AsyncWrite for MachnetStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_parts(cx, &[buf])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let parts: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        self.poll_write_parts(cx, &parts)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Every write is handed to the sidecar at once: nothing to flush.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Closes this direction (the peer reads EOF after everything written); reading goes on.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        let Some(slot) = inner.flows.get_mut(&self.flow.handle()) else {
            return Poll::Ready(Ok(()));
        };
        if slot.shut_wr || slot.ended.is_some() {
            return Poll::Ready(Ok(()));
        }
        match inner.ch.try_end_flow(&self.flow, false) {
            Ok(true) => {
                if let Some(slot) = inner.flows.get_mut(&self.flow.handle()) {
                    slot.shut_wr = true;
                }
                Poll::Ready(Ok(()))
            }
            Ok(false) => {
                inner.wait_space(AppChannel::footprint(0), Some(cx.waker()));
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(client_io_error(&e))),
        }
    }
}

impl Drop for MachnetStream {
    fn drop(&mut self) {
        if !self.released {
            self.shared.lock().release(self.flow, false);
        }
    }
}

/// Closes a [`MachnetStream`] from another task (Go's `Conn.Close` from another goroutine):
/// the stream's pending and later reads and writes fail with `NotConnected`, and the flow is
/// closed gracefully (the peer reads EOF after what was written). Does nothing once the stream
/// is dropped.
#[derive(Debug, Clone)]
pub struct StreamCloser {
    shared: Weak<Shared>,
    flow: Flow,
}

impl StreamCloser {
    /// Closes the stream (see [`StreamCloser`]).
    pub fn close(&self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut guard = shared.lock();
        let inner = &mut *guard;
        let Some(slot) = inner.flows.get_mut(&self.flow.handle()) else {
            return;
        };
        if slot.owner != Owner::Stream || slot.closed_locally {
            return;
        }
        slot.closed_locally = true;
        slot.queue.clear();
        if slot.wake_reader() {
            inner.read_waiters = inner.read_waiters.saturating_sub(1);
        }
        let shut = std::mem::replace(&mut slot.shut_wr, true);
        let ended = slot.ended.is_some();
        // Writers waiting for room see the close when woken.
        wake_all(&mut inner.space_wakers);
        if !shut && !ended {
            inner.end_flow(self.flow, false);
        }
    }
}
