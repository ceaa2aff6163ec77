//! Same-host flows (docs/CHANNEL.md "Same-host flows"): a flow between two channels of this
//! sidecar carries its messages from one channel's request ring to the other's notification
//! ring through queues in the sidecar, without the transport and without packets.
//!
//! One [`LocalHub`] serves the whole sidecar. It holds every local flow: per direction a queue of
//! whole messages (owned [`Bytes`], moved, never copied) bounded by a byte cap, and each end's
//! close state. The two ends of a flow may belong to channels on two engine threads; each end's
//! events ([`LocalEvent`]) go to its engine's inbox, which the engine drains in its loop like the
//! core's events (an eventfd in its epoll wakes it when it sleeps). One mutex guards the flows;
//! every operation is short (queue push/pop, flags), so it is held only briefly.
//!
//! Back-pressure: a send that would take a direction's queued bytes past the cap is refused
//! ([`SendRefused::BufferFull`]); the reader's receive that makes room for it sends the writer
//! a `Writable` event, as the core does when acknowledgements free its send buffer. All local
//! flows together hold at most `budget` bytes (the sidecar's `--memory-budget`): without it,
//! readers that never read would let the sidecar hold a cap per flow, for as many flows as the
//! flow limits allow. A send refused for the budget is retried (`Writable`) when any receive
//! frees bytes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use machnet_channel::engine::{SendRefused, UnknownFlow};
use machnet_channel::{CloseCode, FlowInfo};
use machnet_core::PortPool;
use nix::sys::eventfd::EventFd;

/// Which end of a local flow: the connecting one or the accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The end that connected.
    Client = 0,
    /// The end a listener accepted.
    Server = 1,
}

impl Side {
    fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// One end of a local flow: what a channel holds as its transport flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalEnd {
    flow: u64,
    side: Side,
}

impl LocalEnd {
    fn peer(self) -> LocalEnd {
        LocalEnd {
            flow: self.flow,
            side: self.side.peer(),
        }
    }
}

/// What happened to a local flow end, for the channel owning it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEventKind {
    /// A flow to `port` waits to be accepted by a listener of this engine.
    Accepted {
        /// The listened port.
        port: u16,
    },
    /// The listener accepted the flow this end connected.
    Connected,
    /// Messages are waiting.
    Readable,
    /// A refused send now fits.
    Writable,
    /// The peer closed its direction.
    PeerClosed,
    /// The flow is gone for this end.
    Closed(CloseCode),
}

/// An event of a local flow end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEvent {
    /// The end it is for.
    pub end: LocalEnd,
    /// What happened.
    pub kind: LocalEventKind,
}

/// Counters and gauges of the local flows of one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Local flow ends owned by channels of this engine (not yet discarded).
    pub flows: usize,
    /// Message bytes queued toward ends of this engine (sent, not yet read by their channel).
    pub queued_bytes: usize,
    /// Local connects made by channels of this engine.
    pub connects: u64,
    /// Messages sent on local flows by channels of this engine.
    pub messages: u64,
    /// Bytes of those messages.
    pub bytes: u64,
}

/// One direction's receiving state and one end's close state.
#[derive(Debug)]
struct EndState {
    engine: u16,
    /// Messages toward this end, oldest first, and their total length.
    rx: VecDeque<Bytes>,
    rx_bytes: usize,
    /// This end closed its sending direction.
    fin: bool,
    /// This end was told `Closed` (it may use the flow no more).
    closed: bool,
    /// The channel forgot this end.
    discarded: bool,
    /// A send of this many bytes was refused for lack of room in the peer's queue.
    blocked_need: Option<usize>,
}

impl EndState {
    fn new(engine: u16) -> Self {
        EndState {
            engine,
            rx: VecDeque::new(),
            rx_bytes: 0,
            fin: false,
            closed: false,
            discarded: false,
            blocked_need: None,
        }
    }

    /// Drops the messages toward this end; returns their bytes.
    fn clear_rx(&mut self) -> usize {
        self.rx.clear();
        std::mem::take(&mut self.rx_bytes)
    }
}

#[derive(Debug)]
struct LocalFlow {
    /// The listened port, and the client's ephemeral one.
    port: u16,
    client_port: u16,
    ends: [EndState; 2],
}

impl LocalFlow {
    fn end(&mut self, side: Side) -> &mut EndState {
        &mut self.ends[side as usize]
    }
}

#[derive(Debug, Default)]
struct Inbox {
    events: Vec<LocalEvent>,
    /// The eventfd was written since the engine last took the events.
    signalled: bool,
}

#[derive(Debug)]
struct Hub {
    flows: HashMap<u64, LocalFlow>,
    next_flow: u64,
    /// Ephemeral ports of live client ends.
    ports_in_use: HashSet<u16>,
    next_port: u16,
    /// Engines with a channel listening on a port.
    listening: HashMap<u16, Vec<u16>>,
    stats: Vec<LocalStats>,
    /// Bytes queued on all local flows.
    queued: usize,
    /// Ends whose send was refused for the budget: told `Writable` when a receive frees bytes.
    budget_waiters: Vec<LocalEnd>,
}

/// The sidecar's local flows and the engines' inboxes for their events.
pub struct LocalHub {
    hub: Mutex<Hub>,
    inboxes: Vec<(Mutex<Inbox>, EventFd)>,
    local_ip: Ipv4Addr,
    ephemeral: PortPool,
    cap: usize,
    budget: usize,
}

impl std::fmt::Debug for LocalHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHub")
            .field("local_ip", &self.local_ip)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

impl LocalHub {
    /// A hub for `engines` engines of the sidecar at `local_ip`, handing clients ports of
    /// `ephemeral`, with at most `cap` queued bytes per flow direction (at least one
    /// maximum-size message) and `budget` bytes on all flows together (at least `cap`).
    pub fn new(
        engines: u16,
        local_ip: Ipv4Addr,
        ephemeral: PortPool,
        cap: usize,
        budget: usize,
    ) -> std::io::Result<Self> {
        let inboxes = (0..engines)
            .map(|_| Ok((Mutex::new(Inbox::default()), super::new_eventfd()?)))
            .collect::<std::io::Result<_>>()?;
        Ok(LocalHub {
            hub: Mutex::new(Hub {
                flows: HashMap::new(),
                next_flow: 1,
                ports_in_use: HashSet::new(),
                next_port: ephemeral.base,
                listening: HashMap::new(),
                stats: vec![LocalStats::default(); usize::from(engines)],
                queued: 0,
                budget_waiters: Vec::new(),
            }),
            inboxes,
            local_ip,
            ephemeral,
            cap,
            budget: budget.max(cap),
        })
    }

    /// The sidecar's address: a connect to it is a local flow.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local_ip
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        // Nothing under the lock can panic half-way through a change that matters more than
        // the sidecar staying up.
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `kind` for `end`, whose engine is `to`; `from` is the engine calling (its own
    /// inbox needs no wake-up: it drains it before sleeping).
    fn post(&self, from: u16, to: u16, end: LocalEnd, kind: LocalEventKind) {
        let Some((inbox, efd)) = self.inboxes.get(usize::from(to)) else {
            return;
        };
        let mut ib = inbox.lock().unwrap_or_else(|p| p.into_inner());
        ib.events.push(LocalEvent { end, kind });
        if from != to && !ib.signalled {
            ib.signalled = true;
            let _ = efd.write(1);
        }
    }

    /// The eventfd that becomes readable when events wait for `engine`.
    pub fn wake_fd(&self, engine: u16) -> Option<&EventFd> {
        self.inboxes.get(usize::from(engine)).map(|(_, e)| e)
    }

    /// Moves the events waiting for `engine` into `out` (in the order they were posted).
    pub fn take_events(&self, engine: u16, out: &mut Vec<LocalEvent>) {
        let Some((inbox, efd)) = self.inboxes.get(usize::from(engine)) else {
            return;
        };
        let mut ib = inbox.lock().unwrap_or_else(|p| p.into_inner());
        if ib.events.is_empty() {
            return;
        }
        out.append(&mut ib.events);
        if std::mem::take(&mut ib.signalled) {
            let _ = efd.read();
        }
    }

    /// Whether events wait for `engine`.
    pub fn has_events(&self, engine: u16) -> bool {
        self.inboxes
            .get(usize::from(engine))
            .is_some_and(|(ib, _)| {
                !ib.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .events
                    .is_empty()
            })
    }

    /// `engine` listens (or stopped listening) on `port`.
    pub fn set_listening(&self, port: u16, engine: u16, listening: bool) {
        let mut hub = self.lock();
        let engines = hub.listening.entry(port).or_default();
        engines.retain(|&e| e != engine);
        if listening {
            engines.push(engine);
        }
        if engines.is_empty() {
            hub.listening.remove(&port);
        }
    }

    /// An engine with a channel listening on `port`, if any.
    pub fn listening_engine(&self, port: u16) -> Option<u16> {
        self.lock()
            .listening
            .get(&port)
            .and_then(|e| e.first().copied())
    }

    /// Opens a local flow from a channel of engine `client` to `port`, listened on by engine
    /// `server`: the server's engine gets `Accepted`; the client end gets `Connected` once a
    /// channel took it ([`LocalHub::established`]) or `Closed(Refused)` ([`LocalHub::refused`]).
    pub fn connect(&self, client: u16, server: u16, port: u16) -> Result<LocalEnd, CloseCode> {
        let mut hub = self.lock();
        let client_port = self.alloc_port(&mut hub).ok_or(CloseCode::Exhausted)?;
        let flow = hub.next_flow;
        hub.next_flow += 1;
        hub.flows.insert(
            flow,
            LocalFlow {
                port,
                client_port,
                ends: [EndState::new(client), EndState::new(server)],
            },
        );
        if let Some(s) = hub.stats.get_mut(usize::from(client)) {
            s.connects += 1;
        }
        let server_end = LocalEnd {
            flow,
            side: Side::Server,
        };
        self.post(
            client,
            server,
            server_end,
            LocalEventKind::Accepted { port },
        );
        Ok(LocalEnd {
            flow,
            side: Side::Client,
        })
    }

    fn alloc_port(&self, hub: &mut Hub) -> Option<u16> {
        let PortPool { base, count } = self.ephemeral;
        for _ in 0..count {
            let p = hub.next_port;
            hub.next_port = if u32::from(p) + 1 >= u32::from(base) + u32::from(count) {
                base
            } else {
                p + 1
            };
            if hub.ports_in_use.insert(p) {
                return Some(p);
            }
        }
        None
    }

    /// A channel accepted the server end `end`: its client learns it is connected.
    pub fn established(&self, end: LocalEnd) {
        let mut hub = self.lock();
        let Some(f) = hub.flows.get_mut(&end.flow) else {
            return;
        };
        let (me, client) = (f.end(end.side).engine, f.end(Side::Client));
        if !client.closed {
            let to = client.engine;
            self.post(me, to, end.peer(), LocalEventKind::Connected);
        }
    }

    /// No channel takes the server end `end`: the connect fails with `Refused`.
    pub fn refused(&self, end: LocalEnd) {
        let mut hub = self.lock();
        let Some(f) = hub.flows.get_mut(&end.flow) else {
            return;
        };
        f.end(end.side).closed = true;
        let me = f.end(end.side).engine;
        let client = f.end(Side::Client);
        if !client.closed {
            client.closed = true;
            let to = client.engine;
            self.post(
                me,
                to,
                end.peer(),
                LocalEventKind::Closed(CloseCode::Refused),
            );
        }
        self.discard_locked(&mut hub, end);
    }

    /// The addresses of `end`, as its channel announces them.
    pub fn info(&self, end: LocalEnd) -> Option<FlowInfo> {
        let hub = self.lock();
        let f = hub.flows.get(&end.flow)?;
        let (local_port, remote_port) = match end.side {
            Side::Client => (f.client_port, f.port),
            Side::Server => (f.port, f.client_port),
        };
        Some(FlowInfo {
            local_ip: self.local_ip,
            local_port,
            remote_ip: self.local_ip,
            remote_port,
        })
    }

    /// Queues `msg` toward the peer of `end`.
    pub fn send(&self, end: LocalEnd, msg: Bytes) -> Result<(), SendRefused> {
        let mut hub = self.lock();
        let hub = &mut *hub;
        let Some(f) = hub.flows.get_mut(&end.flow) else {
            return Err(SendRefused::Failed(CloseCode::UnknownFlow));
        };
        let mine = f.end(end.side);
        if mine.closed || mine.discarded {
            return Err(SendRefused::Failed(CloseCode::UnknownFlow));
        }
        if mine.fin {
            return Err(SendRefused::Failed(CloseCode::InvalidRequest));
        }
        let me = mine.engine;
        let len = msg.len();
        let peer = f.end(end.side.peer());
        if peer.rx_bytes > 0 && peer.rx_bytes + len > self.cap {
            f.end(end.side).blocked_need = Some(len);
            return Err(SendRefused::BufferFull);
        }
        if hub.queued > 0 && hub.queued + len > self.budget {
            if !hub.budget_waiters.contains(&end) {
                hub.budget_waiters.push(end);
            }
            return Err(SendRefused::BufferFull);
        }
        let was_empty = peer.rx.is_empty();
        peer.rx.push_back(msg);
        peer.rx_bytes += len;
        hub.queued += len;
        let to = peer.engine;
        if let Some(s) = hub.stats.get_mut(usize::from(me)) {
            s.messages += 1;
            s.bytes += len as u64;
        }
        if was_empty {
            self.post(me, to, end.peer(), LocalEventKind::Readable);
        }
        Ok(())
    }

    /// Length of the next message waiting for `end`.
    pub fn peek_len(&self, end: LocalEnd) -> Option<usize> {
        let mut hub = self.lock();
        let f = hub.flows.get_mut(&end.flow)?;
        f.end(end.side).rx.front().map(Bytes::len)
    }

    /// Takes the next message waiting for `end`; a writer held back for room hears it has some.
    pub fn recv(&self, end: LocalEnd) -> Option<Bytes> {
        let mut hub = self.lock();
        let hub = &mut *hub;
        let f = hub.flows.get_mut(&end.flow)?;
        let mine = f.end(end.side);
        let msg = mine.rx.pop_front()?;
        mine.rx_bytes -= msg.len();
        hub.queued -= msg.len();
        let (me, queued) = (mine.engine, mine.rx_bytes);
        let writer = f.end(end.side.peer());
        if let Some(need) = writer.blocked_need {
            if queued == 0 || queued + need <= self.cap {
                writer.blocked_need = None;
                let to = writer.engine;
                if !writer.closed {
                    self.post(me, to, end.peer(), LocalEventKind::Writable);
                }
            }
        }
        self.wake_budget_waiters(hub, me);
        Some(msg)
    }

    /// Bytes were freed: every end refused for the budget retries its send.
    fn wake_budget_waiters(&self, hub: &mut Hub, me: u16) {
        for w in std::mem::take(&mut hub.budget_waiters) {
            if let Some(e) = hub.flows.get_mut(&w.flow).map(|f| f.end(w.side)) {
                if !e.closed {
                    self.post(me, e.engine, w, LocalEventKind::Writable);
                }
            }
        }
    }

    /// Drops the messages waiting for `end` (nobody will read them).
    pub fn discard_received(&self, end: LocalEnd) {
        while self.recv(end).is_some() {}
    }

    /// Bytes `end` sent that its peer's channel has not taken yet.
    pub fn unread_by_peer(&self, end: LocalEnd) -> usize {
        let mut hub = self.lock();
        hub.flows
            .get_mut(&end.flow)
            .map_or(0, |f| f.end(end.side.peer()).rx_bytes)
    }

    /// Whether `end` has not ended.
    pub fn exists(&self, end: LocalEnd) -> bool {
        let mut hub = self.lock();
        hub.flows.get_mut(&end.flow).is_some_and(|f| {
            let e = f.end(end.side);
            !e.closed && !e.discarded
        })
    }

    /// Closes `end`'s direction after what it sent: the peer gets `PeerClosed` (after its
    /// messages); once both ends closed, both get `Closed(Graceful)`. `Err` if it ended.
    pub fn close(&self, end: LocalEnd) -> Result<(), UnknownFlow> {
        let mut hub = self.lock();
        let Some(f) = hub.flows.get_mut(&end.flow) else {
            return Err(UnknownFlow);
        };
        let mine = f.end(end.side);
        if mine.closed || mine.discarded {
            return Err(UnknownFlow);
        }
        if mine.fin {
            return Ok(());
        }
        mine.fin = true;
        let me = mine.engine;
        let peer = f.end(end.side.peer());
        if peer.closed {
            return Ok(());
        }
        let to = peer.engine;
        self.post(me, to, end.peer(), LocalEventKind::PeerClosed);
        if peer.fin {
            for side in [Side::Client, Side::Server] {
                let e = f.end(side);
                if !e.closed {
                    e.closed = true;
                    let to = e.engine;
                    let who = LocalEnd {
                        flow: end.flow,
                        side,
                    };
                    self.post(me, to, who, LocalEventKind::Closed(CloseCode::Graceful));
                }
            }
        }
        Ok(())
    }

    /// Aborts `end`: it gets `Closed(Aborted)` and what it had not read is dropped; its peer
    /// gets `Closed(Reset)` after the messages already queued for it (as a receiving sidecar
    /// delivers what it acknowledged before a reset, docs/CHANNEL.md §5). `Err` if it ended.
    pub fn abort(&self, end: LocalEnd) -> Result<(), UnknownFlow> {
        let mut hub = self.lock();
        let hub = &mut *hub;
        let Some(f) = hub.flows.get_mut(&end.flow) else {
            return Err(UnknownFlow);
        };
        let mine = f.end(end.side);
        if mine.closed || mine.discarded {
            return Err(UnknownFlow);
        }
        mine.closed = true;
        hub.queued -= mine.clear_rx();
        let me = mine.engine;
        self.post(me, me, end, LocalEventKind::Closed(CloseCode::Aborted));
        Self::reset_peer(self, f, end, me);
        self.wake_budget_waiters(hub, me);
        Ok(())
    }

    fn reset_peer(&self, f: &mut LocalFlow, end: LocalEnd, me: u16) {
        let peer = f.end(end.side.peer());
        if !peer.closed {
            peer.closed = true;
            let to = peer.engine;
            self.post(me, to, end.peer(), LocalEventKind::Closed(CloseCode::Reset));
        }
    }

    /// The channel of `end` forgets it (and what it still holds). A live end is reset first.
    pub fn discard(&self, end: LocalEnd) {
        let mut hub = self.lock();
        self.discard_locked(&mut hub, end);
    }

    fn discard_locked(&self, hub: &mut Hub, end: LocalEnd) {
        let Some(f) = hub.flows.get_mut(&end.flow) else {
            return;
        };
        let mine = f.end(end.side);
        if mine.discarded {
            return;
        }
        mine.discarded = true;
        let freed = mine.clear_rx();
        let me = mine.engine;
        if !std::mem::replace(&mut mine.closed, true) {
            self.reset_peer(f, end, me);
        }
        if f.ends.iter().all(|e| e.discarded) {
            let port = f.client_port;
            hub.flows.remove(&end.flow);
            hub.ports_in_use.remove(&port);
        }
        hub.queued -= freed;
        if freed > 0 {
            self.wake_budget_waiters(hub, me);
        }
    }

    /// Statistics of `engine`'s local flows.
    pub fn stats(&self, engine: u16) -> LocalStats {
        let hub = self.lock();
        let mut s = hub
            .stats
            .get(usize::from(engine))
            .copied()
            .unwrap_or_default();
        for f in hub.flows.values() {
            for e in &f.ends {
                if e.engine == engine && !e.discarded {
                    s.flows += 1;
                    s.queued_bytes += e.rx_bytes;
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(cap: usize) -> LocalHub {
        hub_with_budget(cap, usize::MAX)
    }

    fn hub_with_budget(cap: usize, budget: usize) -> LocalHub {
        LocalHub::new(
            2,
            Ipv4Addr::new(10, 0, 0, 1),
            PortPool {
                base: 50_000,
                count: 4,
            },
            cap,
            budget,
        )
        .unwrap()
    }

    fn events(h: &LocalHub, engine: u16) -> Vec<(LocalEnd, LocalEventKind)> {
        let mut v = Vec::new();
        h.take_events(engine, &mut v);
        v.into_iter().map(|e| (e.end, e.kind)).collect()
    }

    /// A flow from engine 0 to a listener on engine 1, accepted.
    fn open(h: &LocalHub) -> (LocalEnd, LocalEnd) {
        let c = h.connect(0, 1, 80).unwrap();
        let ev = events(h, 1);
        assert_eq!(ev.len(), 1);
        let (s, kind) = ev[0];
        assert_eq!(kind, LocalEventKind::Accepted { port: 80 });
        h.established(s);
        assert_eq!(events(h, 0), vec![(c, LocalEventKind::Connected)]);
        (c, s)
    }

    #[test]
    fn messages_arrive_whole_in_order_and_the_cap_holds_the_writer_back() {
        let h = hub(10);
        let (c, s) = open(&h);
        assert!(!h.has_events(1));
        h.send(c, Bytes::from_static(b"12345")).unwrap();
        assert_eq!(events(&h, 1), vec![(s, LocalEventKind::Readable)]);
        h.send(c, Bytes::from_static(b"678")).unwrap();
        assert!(
            events(&h, 1).is_empty(),
            "Readable only when the queue was empty"
        );
        assert_eq!(
            h.send(c, Bytes::from_static(b"9abc")),
            Err(SendRefused::BufferFull)
        );
        assert_eq!(h.stats(1).queued_bytes, 8);
        assert_eq!(h.peek_len(s), Some(5));
        assert_eq!(h.recv(s).unwrap(), &b"12345"[..]);
        assert_eq!(events(&h, 0), vec![(c, LocalEventKind::Writable)]);
        h.send(c, Bytes::from_static(b"9abc")).unwrap();
        assert_eq!(h.recv(s).unwrap(), &b"678"[..]);
        assert_eq!(h.recv(s).unwrap(), &b"9abc"[..]);
        assert_eq!(h.recv(s), None);
        // A message larger than the cap still goes through an empty queue.
        h.send(c, Bytes::from(vec![7u8; 25])).unwrap();
        assert_eq!(h.recv(s).map(|m| m.len()), Some(25));
        let st = h.stats(0);
        assert_eq!(
            (st.flows, st.connects, st.messages, st.bytes),
            (1, 1, 4, 37)
        );
    }

    #[test]
    fn all_flows_together_stay_within_the_budget_and_a_refused_writer_retries_when_any_frees() {
        // Each direction may hold 100 bytes; all flows together 150.
        let h = hub_with_budget(100, 150);
        h.set_listening(80, 1, true);
        let (c1, s1) = open(&h);
        let (c2, s2) = open(&h);
        h.send(c1, Bytes::from(vec![1u8; 100])).unwrap();
        h.send(c2, Bytes::from(vec![2u8; 40])).unwrap();
        let _ = events(&h, 1);
        // Within flow 2's cap, beyond the budget.
        assert_eq!(
            h.send(c2, Bytes::from(vec![3u8; 20])),
            Err(SendRefused::BufferFull)
        );
        assert_eq!(h.stats(1).queued_bytes, 140);
        // Flow 1's reader frees bytes: flow 2's writer hears it may retry, and now fits.
        assert_eq!(h.recv(s1).map(|m| m.len()), Some(100));
        assert_eq!(events(&h, 0), vec![(c2, LocalEventKind::Writable)]);
        h.send(c2, Bytes::from(vec![3u8; 20])).unwrap();
        assert_eq!(h.recv(s2).map(|m| m[0]), Some(2));
        assert_eq!(h.recv(s2).map(|m| m[0]), Some(3));
        // Discarding an end with unread bytes gives them back to the budget too.
        h.send(c1, Bytes::from(vec![4u8; 100])).unwrap();
        h.send(c2, Bytes::from(vec![5u8; 40])).unwrap();
        assert_eq!(
            h.send(c2, Bytes::from(vec![6u8; 40])),
            Err(SendRefused::BufferFull)
        );
        let _ = events(&h, 0);
        h.discard(s1);
        assert!(events(&h, 0).contains(&(c2, LocalEventKind::Writable)));
        h.send(c2, Bytes::from(vec![6u8; 40])).unwrap();
        assert_eq!(h.stats(1).queued_bytes, 80);
    }

    #[test]
    fn close_from_both_sides_ends_gracefully_and_abort_resets_the_peer() {
        let h = hub(1 << 20);
        let (c, s) = open(&h);
        h.send(s, Bytes::from_static(b"x")).unwrap();
        h.close(s).unwrap();
        assert_eq!(
            events(&h, 0),
            vec![
                (c, LocalEventKind::Readable),
                (c, LocalEventKind::PeerClosed)
            ]
        );
        assert_eq!(
            h.send(s, Bytes::from_static(b"y")),
            Err(SendRefused::Failed(CloseCode::InvalidRequest))
        );
        h.send(c, Bytes::from_static(b"z")).unwrap();
        h.close(c).unwrap();
        let ev1 = events(&h, 1);
        assert_eq!(
            ev1.last(),
            Some(&(s, LocalEventKind::Closed(CloseCode::Graceful)))
        );
        assert_eq!(
            events(&h, 0),
            vec![(c, LocalEventKind::Closed(CloseCode::Graceful))]
        );
        // Messages stay readable after the close, until the ends are discarded.
        assert_eq!(h.recv(c).unwrap(), &b"x"[..]);
        h.discard(c);
        h.discard(s);
        assert_eq!(h.stats(0).flows + h.stats(1).flows, 0);
        assert!(h.lock().flows.is_empty() && h.lock().ports_in_use.is_empty());

        let (c, s) = open(&h);
        h.send(c, Bytes::from_static(b"kept")).unwrap();
        h.send(s, Bytes::from_static(b"lost")).unwrap();
        h.abort(c).unwrap();
        assert_eq!(
            events(&h, 0),
            vec![
                (c, LocalEventKind::Readable),
                (c, LocalEventKind::Closed(CloseCode::Aborted))
            ]
        );
        assert_eq!(
            events(&h, 1),
            vec![
                (s, LocalEventKind::Readable),
                (s, LocalEventKind::Closed(CloseCode::Reset))
            ]
        );
        // The aborting end's unread messages are gone; what it sent is still delivered.
        assert_eq!(h.recv(c), None);
        assert_eq!(h.recv(s).unwrap(), &b"kept"[..]);
        assert_eq!(h.recv(s), None);
        assert!(h.abort(c).is_err() && h.close(s).is_err());
    }

    #[test]
    fn a_refused_accept_fails_the_connect_and_ports_are_reused() {
        let h = hub(1 << 20);
        for _ in 0..10 {
            let c = h.connect(0, 1, 80).unwrap();
            let (s, _) = events(&h, 1)[0];
            h.refused(s);
            assert_eq!(
                events(&h, 0),
                vec![(c, LocalEventKind::Closed(CloseCode::Refused))]
            );
            h.discard(c);
        }
        // Four ephemeral ports: the fifth live connect finds none.
        let live: Vec<_> = (0..4).map(|_| h.connect(0, 1, 80).unwrap()).collect();
        assert_eq!(h.connect(0, 1, 80), Err(CloseCode::Exhausted));
        let ports: HashSet<u16> = events(&h, 1)
            .iter()
            .map(|(s, _)| h.info(*s).unwrap().remote_port)
            .collect();
        assert_eq!(ports.len(), 4);
        assert_eq!(h.info(live[0]).unwrap().remote_port, 80);
    }

    #[test]
    fn a_discarded_live_end_resets_its_peer() {
        let h = hub(1 << 20);
        let (c, s) = open(&h);
        h.discard(s);
        assert_eq!(
            events(&h, 0),
            vec![(c, LocalEventKind::Closed(CloseCode::Reset))]
        );
        assert!(!h.exists(c));
        h.discard(c);
        assert!(h.lock().flows.is_empty());
    }
}
