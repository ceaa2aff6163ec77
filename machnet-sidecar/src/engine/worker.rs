//! The engine loop: datagrams → core, requests → core, core events → notifications, core output
//! → datapath, timers; sleeping in epoll when idle without losing wake-ups (docs/CHANNEL.md §4).
//!
//! # Finding channels with work in O(active)
//!
//! An engine may hold thousands of channels, most of them idle. It never walks them all in its
//! loop (only [`Worker::report`] does). Each channel is either
//!
//! - **active**: on the run list (`Worker::active`). Every iteration consumes its requests and,
//!   if a notification waits for room, checks whether the app made room; or
//! - **armed**: it had no work for [`PARK_AFTER`], so the engine announced a wait on it exactly
//!   as a sleeping consumer does (§4: `data_waiting` on its request ring — `space_waiting` on its
//!   notification ring too if a notification waits for room —, full fence, re-check; a re-check
//!   that finds work leaves it active) and took it off the run list.
//!
//! An armed channel becomes active again when (a) the app rings its sidecar eventfd — it does
//! so for a request published while `data_waiting` was set, or for room freed while
//! `space_waiting` was set; every sidecar eventfd is in the engine's epoll, which the loop polls
//! with timeout 0 every iteration while any channel is armed, and waits on when sleeping — or
//! (b) the engine routes a core event to it ([`Worker::route`]: messages, connects, closes,
//! writable flows). Notifications are written only for channels on the flush list
//! (`Worker::flush`), which `route` and the run list feed. Sleeping arms the active channels
//! only: armed ones already are.
//!
//! No wake-up is lost: an armed channel's flag was set (SeqCst) and fenced before the re-check
//! found nothing, and only the app clears it — by swapping it to 0, after which it writes the
//! eventfd. So a request published after the re-check rings the eventfd, which stays readable
//! (level-triggered epoll) until the engine activates the channel and drains it; activation is
//! followed in the same iteration by a look at the rings. Work the engine itself creates (core
//! events) activates the channel directly. A channel that cannot consume (a flow's send buffer
//! is full) does not set `data_waiting`: what it waits for is a `Writable` core event.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use machnet_channel::CloseCode;
use machnet_core::{DatagramMut, Engine, Event, Instant};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use super::channel::{Chan, ChannelId, Ctx, Flow, LocalCtx, Violation};
use super::flow_quota::FlowPermit;
use super::listen::{Joined, Listeners};
use super::local::{LocalEvent, LocalHub, LocalStats};
use super::route::{self, Routed};
use super::{Command, EngineListenError, EngineParams, Notice, Notifier, SpawnError};
use crate::clock::Clock;
use crate::config::IdleMode;
use crate::datapath::{Datapath, TxMeta};
use crate::stat::collect::{self, EngineSnapshot};
use crate::stats::{EngineReport, LoopStats};

/// The [`Ctx`] of a worker (a macro, so that it borrows the worker's fields, not the worker).
macro_rules! ctx {
    ($w:expr, $now:expr) => {
        Ctx {
            core: &mut $w.core,
            now: $now,
            owners: &mut $w.owners,
            local: $w.local.as_deref().map(|hub| LocalCtx {
                hub,
                engine: $w.id,
                listeners: &$w.listeners,
            }),
        }
    };
}

const TOKEN_DATAPATH: u64 = 0;
const TOKEN_COMMAND: u64 = 1;
const TOKEN_TIMER: u64 = 2;
const TOKEN_LOCAL: u64 = 3;
/// Channel `c` uses token `TOKEN_CHANNEL_BASE + c`.
const TOKEN_CHANNEL_BASE: u64 = 16;

/// Datagrams received per loop iteration.
const RX_BUDGET: usize = 256;
/// Datagrams sent per loop iteration.
const TX_BUDGET: usize = 256;
/// Longest nap of an idle engine whose datapath has no readiness fd (DPDK queues): short
/// enough that a peer's tail-loss probe (≥ 100 µs, PROTOCOL.md §7) rarely fires spuriously.
const POLLED_NAP: Duration = Duration::from_micros(50);
/// A channel without work for this long is armed and leaves the run list. Arming makes the
/// app's next request cost an eventfd write (and the engine an epoll report and a read), so a
/// channel in a request/response exchange should stay active across one round trip; an idle
/// channel costs an active engine a few ring reads per iteration until then.
const PARK_AFTER: Duration = Duration::from_micros(200);

pub(super) struct Worker {
    id: u16,
    core: Engine,
    dp: Box<dyn Datapath>,
    clock: Clock,
    cmds: Receiver<Command>,
    wake: Arc<EventFd>,
    notifier: Notifier,
    epoll: Epoll,
    timer: TimerFd,
    events: Vec<EpollEvent>,
    chans: HashMap<ChannelId, Chan>,
    /// The run list: channels looked at every iteration (the others are armed).
    active: Vec<ChannelId>,
    /// Channels with notifications to write that are not known to be blocked.
    flush: Vec<ChannelId>,
    /// The flush list being worked through (kept to reuse its allocation).
    flushing: Vec<ChannelId>,
    owners: super::channel::Owners,
    /// Same-host flows (`None`: off).
    local: Option<Arc<LocalHub>>,
    /// Local flow events being routed (kept to reuse its allocation).
    local_events: Vec<LocalEvent>,
    /// Port → the channels of this engine listening on it.
    listeners: Listeners,
    /// Channels being detached gracefully (docs/CHANNEL.md §5); they stay on the run list.
    detaching: Vec<ChannelId>,
    /// Flows of detached channels, closing on their own, with the deadline after which they
    /// are aborted (and their place in their application's flow limits). Messages that arrive
    /// for them are discarded.
    orphans: HashMap<Flow, (Instant, FlowPermit)>,
    /// The earliest deadline of `detaching` and `orphans`.
    next_linger: Option<Instant>,
    /// How long a stop may take to deliver what apps sent.
    shutdown_linger: Duration,
    /// Set once a stop began: the deadline by which the thread exits.
    stopping: Option<Instant>,
    idle_mode: IdleMode,
    busy_poll: Duration,
    stats_interval: Option<Duration>,
    next_stats: Option<Instant>,
    counters: LoopStats,
    dp_registered: bool,
    trimmer: crate::memory::Trimmer,
}

impl Worker {
    pub(super) fn new(
        params: EngineParams,
        dp: Box<dyn Datapath>,
        cmds: Receiver<Command>,
        wake: Arc<EventFd>,
        notifier: Notifier,
    ) -> Result<Self, SpawnError> {
        let id = params.core.engine_id;
        let (engine, datapath) = (usize::from(params.core.max_udp_payload), dp.max_datagram());
        if engine > datapath {
            return Err(SpawnError::DatagramTooLarge { engine, datapath });
        }
        let mut core = Engine::new(params.core, params.seed)?;
        if let Some(oracle) = dp.rss_oracle() {
            tracing::debug!(
                engine = id,
                "datapath reveals its RSS: deterministic UDP ports"
            );
            core.set_rss_oracle(oracle);
        }
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(std::io::Error::from)?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let dp_registered = match dp.readiness_fd() {
            Some(fd) => {
                epoll
                    .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_DATAPATH))
                    .map_err(std::io::Error::from)?;
                true
            }
            None => false,
        };
        epoll
            .add(
                wake.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_COMMAND),
            )
            .map_err(std::io::Error::from)?;
        epoll
            .add(
                timer.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_TIMER),
            )
            .map_err(std::io::Error::from)?;
        if let Some(fd) = params.local.as_deref().and_then(|l| l.wake_fd(id)) {
            epoll
                .add(
                    fd.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LOCAL),
                )
                .map_err(std::io::Error::from)?;
        }
        let now = params.clock.now();
        Ok(Worker {
            id,
            core,
            dp,
            clock: params.clock,
            cmds,
            wake,
            notifier,
            epoll,
            timer,
            events: vec![EpollEvent::empty(); 64],
            chans: HashMap::new(),
            active: Vec::new(),
            flush: Vec::new(),
            flushing: Vec::new(),
            owners: HashMap::new(),
            local: params.local,
            local_events: Vec::new(),
            listeners: Listeners::new(),
            detaching: Vec::new(),
            orphans: HashMap::new(),
            next_linger: None,
            shutdown_linger: params.shutdown_linger,
            stopping: None,
            idle_mode: params.idle_mode,
            busy_poll: params.busy_poll,
            stats_interval: params.stats_interval,
            next_stats: params.stats_interval.map(|d| now + d),
            counters: LoopStats::default(),
            dp_registered,
            trimmer: crate::memory::Trimmer::default(),
        })
    }

    pub(super) fn run(mut self) {
        tracing::debug!(engine = self.id, "engine started");
        // Timer wake-ups (protocol timers, polled-datapath naps) on time instead of up to the
        // default 50 µs slack late.
        if let Err(e) = nix::sys::prctl::set_timerslack(1_000) {
            tracing::debug!(engine = self.id, "PR_SET_TIMERSLACK: {e}");
        }
        let mut last_work = self.clock.now();
        loop {
            self.counters.iterations += 1;
            let now = self.clock.now();
            let mut work = false;
            match self.commands(now) {
                Some(w) => work |= w,
                None => break,
            }
            work |= self.receive(now);
            if self.core.poll_timeout().is_some_and(|t| t <= now) {
                self.core.handle_timeout(now);
                work = true;
            }
            self.doorbells(now);
            work |= self.consume_requests(now);
            work |= self.finish_detaches(now);
            self.expire_lingers(now);
            work |= self.deliver(now);
            work |= self.transmit(now);
            self.park_idle(now);
            self.stats_tick(now);
            self.trimmer.tick(self.memory_in_use());
            if self.stop_done(now) {
                break;
            }
            if work {
                last_work = now;
            } else if self.idle_mode == IdleMode::Sleep && now - last_work >= self.busy_poll {
                self.sleep();
                last_work = self.clock.now();
            } else {
                // Polling without work: let any runnable thread on this CPU (an application,
                // another engine) go first. Costs well under a microsecond when there is none,
                // and keeps busy-polling engines from starving apps on an oversubscribed host.
                std::thread::yield_now();
            }
        }
        self.shutdown();
        tracing::debug!(engine = self.id, "engine stopped");
    }

    // ------------------------------------------------------------------------------------------
    // Steps of one iteration
    // ------------------------------------------------------------------------------------------

    /// Runs queued commands. `None`: exit now.
    fn commands(&mut self, now: Instant) -> Option<bool> {
        let mut work = false;
        loop {
            match self.cmds.try_recv() {
                Ok(Command::Shutdown) if !self.shutdown_linger.is_zero() => {
                    work = true;
                    self.begin_stop(now);
                }
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return None,
                Ok(cmd) => {
                    work = true;
                    self.command(cmd, now);
                }
                Err(TryRecvError::Empty) => return Some(work),
            }
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::AddChannel {
                id,
                mem,
                quota,
                connects,
                reply,
            } => {
                let token = TOKEN_CHANNEL_BASE + u64::from(id);
                if let Err(e) = self.epoll.add(
                    mem.sidecar_efd().as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, token),
                ) {
                    crate::limited!(error, engine = self.id, channel = id, "epoll add: {e}");
                }
                let mut chan = Chan::new(id, *mem, quota, connects);
                // Active until it has been idle for a while (its app may have pushed already).
                activate(&mut chan, &mut self.active, now);
                self.chans.insert(id, chan);
                self.counters.channels_opened += 1;
                if self.stopping.is_some() {
                    self.close_channel(id, CloseCode::Shutdown, now);
                }
                let _ = reply.send(());
            }
            Command::CloseChannel {
                id,
                code,
                linger,
                reply,
            } => {
                match linger.filter(|l| !l.is_zero()) {
                    Some(l) => self.detach_channel(id, code, now + l, now),
                    None => self.close_channel(id, code, now),
                }
                if let Some(r) = reply {
                    let _ = r.send(());
                }
            }
            Command::Listen {
                channel,
                port,
                reply,
            } => {
                let res = self.listen(channel, port);
                let _ = reply.send(res);
            }
            Command::Unlisten {
                channel,
                port,
                reply,
            } => {
                self.unlisten(channel, port);
                let _ = reply.send(());
            }
            Command::HostListener {
                port,
                engine,
                listening,
                reply,
            } => {
                if listening {
                    if let Err(e) = self.core.add_host_listener(port, engine) {
                        crate::limited!(warn, engine = self.id, port, "add_host_listener: {e}");
                    }
                } else {
                    self.core.remove_host_listener(port, engine);
                }
                let _ = reply.send(());
            }
            Command::Report { reply } => {
                let _ = reply.send(self.report());
            }
            Command::Stats {
                max_channels,
                max_flows,
                reply,
            } => {
                let _ = reply.send(self.snapshot(max_channels, max_flows));
            }
            Command::Shutdown => {}
        }
    }

    /// `channel` joins the listen group of `port`; the core listens from the first member on.
    fn listen(&mut self, channel: ChannelId, port: u16) -> Result<(), EngineListenError> {
        let Some(chan) = self.chans.get_mut(&channel) else {
            return Err(EngineListenError::NoSuchChannel);
        };
        if chan.detach_deadline().is_some() {
            return Err(EngineListenError::NoSuchChannel);
        }
        match self.listeners.join(port, channel) {
            Joined::Already => return Ok(()),
            Joined::Another => {}
            Joined::First => {
                if let Err(e) = self.core.listen(port) {
                    self.listeners.leave(port, channel);
                    return Err(e.into());
                }
                if let Some(l) = &self.local {
                    l.set_listening(port, self.id, true);
                }
            }
        }
        chan.ports.push(port);
        Ok(())
    }

    /// `channel` leaves the listen group of `port`; the core stops with the last member.
    fn unlisten(&mut self, channel: ChannelId, port: u16) {
        if self.listeners.leave(port, channel) {
            self.stop_listening(port);
        }
        if let Some(chan) = self.chans.get_mut(&channel) {
            chan.ports.retain(|&p| p != port);
        }
    }

    /// The last member of `port` on this engine left: the core and the same-host hub stop
    /// treating this engine as a listener.
    fn stop_listening(&mut self, port: u16) {
        self.core.unlisten(port);
        if let Some(l) = &self.local {
            l.set_listening(port, self.id, false);
        }
    }

    /// Starts a graceful stop: every channel is detached (code `Shutdown`) with the shutdown
    /// linger; the loop ends once they and their flows are done ([`Worker::stop_done`]).
    fn begin_stop(&mut self, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        let deadline = now + self.shutdown_linger;
        self.stopping = Some(deadline);
        tracing::debug!(engine = self.id, "stopping: delivering what apps sent");
        let ids: Vec<ChannelId> = self.chans.keys().copied().collect();
        for id in ids {
            self.detach_channel(id, CloseCode::Shutdown, deadline, now);
        }
    }

    /// Whether a stop is complete: its deadline passed, or every ring is drained and the peers
    /// acknowledged every message the orphans sent. (Their FINs and the peers' own closes are
    /// not waited for: a peer that already went away would hold every stop for the whole
    /// linger, and it has all our messages.)
    fn stop_done(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.stopping else {
            return false;
        };
        now >= deadline || (self.detaching.is_empty() && self.orphans_delivered())
    }

    /// Whether the peers have every message the orphan flows were given.
    fn orphans_delivered(&mut self) -> bool {
        let orphans = &self.orphans;
        let ctx = ctx!(self, Instant::ZERO);
        orphans.keys().all(|&f| ctx.undelivered_bytes(f) == 0)
    }

    /// Stops listening on every port of `chan`.
    fn unlisten_all(&mut self, chan: &mut Chan) {
        for port in std::mem::take(&mut chan.ports) {
            if self.listeners.leave(port, chan.id()) {
                self.stop_listening(port);
            }
        }
    }

    /// Removes a channel from the engine (its lists, epoll) and returns it.
    fn remove_channel(&mut self, id: ChannelId) -> Option<Chan> {
        let mut chan = self.chans.remove(&id)?;
        if chan.sched.active {
            self.active.retain(|&c| c != id);
        }
        if chan.sched.queued {
            self.flush.retain(|&c| c != id);
        }
        if chan.detach_deadline().is_some() {
            self.detaching.retain(|&c| c != id);
        }
        self.unlisten_all(&mut chan);
        let _ = self.epoll.delete(chan.mem().sidecar_efd().as_fd());
        Some(chan)
    }

    /// Detaches a channel gracefully (docs/CHANNEL.md §5): no more listening or notifications;
    /// the requests in its ring are carried out, then its flows close, all by `deadline`.
    fn detach_channel(&mut self, id: ChannelId, code: CloseCode, deadline: Instant, now: Instant) {
        let Some(mut chan) = self.chans.remove(&id) else {
            return;
        };
        if chan.detach_deadline().is_some() {
            self.chans.insert(id, chan);
            return;
        }
        self.unlisten_all(&mut chan);
        if chan.sched.queued {
            chan.sched.queued = false;
            self.flush.retain(|&c| c != id);
        }
        let mut ctx = ctx!(self, now);
        chan.detach(&mut ctx, code, deadline);
        // Active until drained: its app (gone, most likely) will not ring the doorbell.
        activate(&mut chan, &mut self.active, now);
        self.chans.insert(id, chan);
        self.detaching.push(id);
        self.next_linger = Some(self.next_linger.map_or(deadline, |d| d.min(deadline)));
        self.counters.channels_detached += 1;
        tracing::debug!(engine = self.id, channel = id, ?code, "channel detaching");
    }

    /// Ends the detaches whose ring is drained: their flows become orphans, their channel
    /// memory is released. Returns whether any ended.
    fn finish_detaches(&mut self, now: Instant) -> bool {
        if self.detaching.is_empty() {
            return false;
        }
        let mut done = Vec::new();
        let mut bad = Vec::new();
        for &id in &self.detaching {
            let Some(chan) = self.chans.get_mut(&id) else {
                continue;
            };
            match chan.is_drained() {
                Ok(true) => done.push(id),
                Ok(false) => {}
                Err(v) => bad.push((id, v)),
            }
        }
        for (id, v) in bad {
            self.violation(id, v, now);
        }
        for &id in &done {
            let Some(mut chan) = self.remove_channel(id) else {
                continue;
            };
            let deadline = chan.detach_deadline().unwrap_or(now);
            let mut ctx = ctx!(self, now);
            for (flow, permit) in chan.finish_detach(&mut ctx) {
                ctx.discard_received(flow);
                self.orphans.insert(flow, (deadline, permit));
            }
            self.counters.channels_closed += 1;
            tracing::debug!(engine = self.id, channel = id, "channel detached");
        }
        !done.is_empty()
    }

    /// Aborts what is left of detaches whose linger expired: channels still draining (their
    /// flows with them) and orphan flows still open.
    fn expire_lingers(&mut self, now: Instant) {
        if self.next_linger.is_none_or(|d| d > now) {
            return;
        }
        let expired: Vec<ChannelId> = self
            .detaching
            .iter()
            .copied()
            .filter(|id| {
                self.chans
                    .get(id)
                    .and_then(Chan::detach_deadline)
                    .is_some_and(|d| d <= now)
            })
            .collect();
        for id in expired {
            let flows = self.chans.get(&id).map_or(0, Chan::flow_count);
            self.counters.linger_aborts += flows as u64;
            tracing::debug!(engine = self.id, channel = id, flows, "linger expired");
            self.close_channel(id, CloseCode::Detached, now);
        }
        let counters = &mut self.counters;
        let orphans = &mut self.orphans;
        let mut ctx = ctx!(self, now);
        orphans.retain(|&flow, (deadline, _)| {
            if *deadline > now {
                return true;
            }
            counters.linger_aborts += 1;
            ctx.abort(flow);
            false
        });
        self.next_linger = self
            .detaching
            .iter()
            .filter_map(|id| self.chans.get(id).and_then(Chan::detach_deadline))
            .chain(self.orphans.values().map(|(d, _)| *d))
            .min();
    }

    fn close_channel(&mut self, id: ChannelId, code: CloseCode, now: Instant) {
        let Some(mut chan) = self.remove_channel(id) else {
            return;
        };
        let mut ctx = ctx!(self, now);
        chan.close_all(&mut ctx, code);
        self.counters.channels_closed += 1;
        tracing::debug!(engine = self.id, channel = id, ?code, "channel closed");
    }

    /// Closes a channel whose app broke the protocol and tells the control thread.
    fn violation(&mut self, id: ChannelId, v: Violation, now: Instant) {
        crate::limited!(warn, engine = self.id, channel = id, "closing channel: {v}");
        self.counters.channel_violations += 1;
        self.close_channel(id, CloseCode::ChannelViolation, now);
        self.notifier.notify(Notice::ChannelClosed {
            channel: id,
            code: CloseCode::ChannelViolation,
        });
    }

    fn receive(&mut self, now: Instant) -> bool {
        let core = &mut self.core;
        let datagrams = match self.dp.recv(RX_BUDGET, &mut |r| {
            core.handle_datagram_mut(
                now,
                DatagramMut {
                    remote_ip: r.remote_ip,
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    payload: r.payload,
                },
            )
        }) {
            Ok(n) => n > 0,
            Err(e) => {
                crate::limited!(warn, engine = self.id, "datapath receive: {e}");
                false
            }
        };
        // Every round: an unread error queue keeps the datapath's readiness fd readable.
        let unreachable = self.receive_unreachable(now);
        datagrams || unreachable
    }

    /// ICMP port unreachables for our datagrams: flows whose peer sidecar is gone end now
    /// instead of at their timeout (PROTOCOL.md §8.4).
    fn receive_unreachable(&mut self, now: Instant) -> bool {
        let core = &mut self.core;
        self.dp.recv_unreachable(&mut |u| {
            core.handle_unreachable(now, u);
        }) > 0
    }

    fn consume_requests(&mut self, now: Instant) -> bool {
        let mut work = false;
        let mut bad = Vec::new();
        let mut ctx = ctx!(self, now);
        for &id in &self.active {
            let Some(chan) = self.chans.get_mut(&id) else {
                continue;
            };
            match chan.consume(&mut ctx) {
                Ok(n) => {
                    self.counters.requests += n as u64;
                    if n > 0 {
                        work = true;
                        chan.sched.last_work = now;
                        self.counters
                            .connect_refusals
                            .add(chan.take_connect_refusals());
                    }
                    // Answers to requests, or room the app made for a blocked notification.
                    if chan.wants_flush() || chan.has_room_for_blocked() {
                        queue_flush(chan, &mut self.flush);
                    }
                }
                Err(v) => bad.push((id, v)),
            }
        }
        for (id, v) in bad {
            self.violation(id, v, now);
        }
        work
    }

    /// Activates the armed channels whose app rang the sidecar eventfd (epoll, no waiting).
    fn doorbells(&mut self, now: Instant) {
        if self.active.len() >= self.chans.len() {
            return;
        }
        match self.epoll.wait(&mut self.events, EpollTimeout::ZERO) {
            Ok(n) => self.ready(n, now),
            Err(Errno::EINTR) => {}
            Err(e) => crate::limited!(error, engine = self.id, "epoll_wait: {e}"),
        }
    }

    /// Handles the first `n` epoll events: drains what was reported and activates the channels
    /// whose eventfd rang.
    fn ready(&mut self, n: usize, now: Instant) {
        for i in 0..n {
            match self.events[i].data() {
                // The loop reads the datapath every iteration anyway.
                TOKEN_DATAPATH => {}
                // Commands are taken from the queue every iteration; the eventfd only wakes.
                TOKEN_COMMAND => {
                    let _ = self.wake.read();
                }
                TOKEN_LOCAL => {
                    // Read by `LocalHub::take_events`, which `deliver` calls every iteration.
                }
                TOKEN_TIMER => {
                    let mut b = [0u8; 8];
                    let _ = nix::unistd::read(self.timer.as_fd(), &mut b);
                }
                t => {
                    let ch = (t - TOKEN_CHANNEL_BASE) as ChannelId;
                    if let Some(c) = self.chans.get_mut(&ch) {
                        // Drain first: a ring after this belongs to a later arming and must
                        // stay readable. The rings are looked at after this in any case.
                        c.mem().drain_sidecar_efd();
                        if !c.sched.active {
                            self.counters.doorbells += 1;
                        }
                        activate(c, &mut self.active, now);
                    }
                }
            }
        }
    }

    /// Arms the channels of the run list that had no work for [`PARK_AFTER`] and takes them
    /// off the list (those whose re-check finds work stay).
    fn park_idle(&mut self, now: Instant) {
        self.park(now, false);
    }

    /// Arms channels of the run list and takes them off it: those idle for [`PARK_AFTER`], or
    /// with `all` every one without notifications queued. Returns whether a channel stayed
    /// because its re-check found work, or broke the protocol (and was closed).
    fn park(&mut self, now: Instant, all: bool) -> bool {
        let chans = &mut self.chans;
        let counters = &mut self.counters;
        let mut found_work = false;
        let mut bad = Vec::new();
        self.active.retain(|&id| {
            let Some(c) = chans.get_mut(&id) else {
                return false;
            };
            // A detaching channel stays until drained: its app will not ring.
            if c.sched.queued
                || c.detach_deadline().is_some()
                || (!all && now - c.sched.last_work < PARK_AFTER)
            {
                return true;
            }
            match arm(c) {
                Ok(true) => {
                    counters.parks += 1;
                    false
                }
                Ok(false) => {
                    found_work = true;
                    c.sched.last_work = now;
                    true
                }
                Err(v) => {
                    bad.push((id, v));
                    true
                }
            }
        });
        found_work |= !bad.is_empty();
        for (id, v) in bad {
            self.violation(id, v, now);
        }
        found_work
    }

    /// Routes core events to channels and writes notifications.
    fn deliver(&mut self, now: Instant) -> bool {
        let mut work = false;
        // Reading messages can finish flows (new events); a few rounds settle it.
        for _ in 0..4 {
            let mut events = false;
            while let Some(ev) = self.core.poll_event() {
                events = true;
                self.route(ev, now);
            }
            if let Some(l) = &self.local {
                let mut evs = std::mem::take(&mut self.local_events);
                l.take_events(self.id, &mut evs);
                for ev in evs.drain(..) {
                    events = true;
                    self.route_local(ev, now);
                }
                self.local_events = evs;
            }
            let mut bad = Vec::new();
            std::mem::swap(&mut self.flush, &mut self.flushing);
            for &id in &self.flushing {
                let Some(chan) = self.chans.get_mut(&id) else {
                    continue;
                };
                chan.sched.queued = false;
                let before = chan.counters().notifications;
                let mut ctx = ctx!(self, now);
                match chan.flush(&mut ctx) {
                    Ok(_) => {
                        let n = chan.counters().notifications - before;
                        self.counters.notifications += n;
                        if n > 0 {
                            work = true;
                            chan.sched.last_work = now;
                        }
                        // More than its turn allowed: again next round. Blocked: the run list
                        // (or, once armed, the app's doorbell) notices the room.
                        if chan.wants_flush() {
                            queue_flush(chan, &mut self.flush);
                        }
                    }
                    Err(v) => bad.push((id, v)),
                }
            }
            self.flushing.clear();
            for (id, v) in bad {
                self.violation(id, v, now);
            }
            work |= events;
            if !events {
                break;
            }
        }
        work
    }

    /// Hands a core event to the channel owning the flow ([`route::route`]), and makes that
    /// channel active and queued for flushing: this is how channels learn of work the engine
    /// itself produced.
    fn route(&mut self, ev: Event, now: Instant) {
        let mut ctx = ctx!(self, now);
        let routed = route::route(ev, &mut ctx, &self.listeners, &mut self.chans);
        self.routed(routed, now);
    }

    /// [`Worker::route`] for an event of a local flow ([`route::route_local`]).
    fn route_local(&mut self, ev: LocalEvent, now: Instant) {
        let mut ctx = ctx!(self, now);
        let routed = route::route_local(ev, &mut ctx, &self.listeners, &mut self.chans);
        self.routed(routed, now);
    }

    /// Schedules the channel an event was routed to.
    fn routed(&mut self, routed: Routed, now: Instant) {
        match routed {
            Routed::Delivered { channel, flush } => {
                if let Some(c) = self.chans.get_mut(&channel) {
                    activate(c, &mut self.active, now);
                    if flush {
                        queue_flush(c, &mut self.flush);
                    }
                }
            }
            Routed::Absorbed => {}
            Routed::AcceptRefused => self.counters.orphan_accepts += 1,
            Routed::Unowned(ev) => {
                let (flow, closed) = match ev {
                    Event::Readable { flow } => (flow, false),
                    Event::Closed { flow, .. } => (flow, true),
                    _ => return,
                };
                self.orphan_event(Flow::Net(flow), closed, now);
            }
            Routed::UnownedLocal(ev) => {
                use super::local::LocalEventKind as K;
                let closed = match ev.kind {
                    K::Readable => false,
                    K::Closed(_) => true,
                    _ => return,
                };
                self.orphan_event(Flow::Local(ev.end), closed, now);
            }
        }
    }

    /// A `Readable` (or, with `closed`, a `Closed`) event for a flow no channel owns: an
    /// orphan's messages are discarded, its end is noted.
    fn orphan_event(&mut self, flow: Flow, closed: bool, now: Instant) {
        let is_orphan = self.orphans.contains_key(&flow);
        let mut ctx = ctx!(self, now);
        if !closed {
            if is_orphan {
                ctx.discard_received(flow);
            }
            return;
        }
        // Whether it was an orphan or a flow whose channel is gone, nobody reads it.
        ctx.discard(flow);
        self.orphans.remove(&flow);
    }

    /// Moves the core's packets to the datapath: each is written straight into the datapath's
    /// transmit memory (no intermediate buffer), and the whole round leaves in one flush, where
    /// the datapath batches it (GSO, bursts).
    fn transmit(&mut self, now: Instant) -> bool {
        let core = &mut self.core;
        let mut n = 0;
        while n < TX_BUDGET {
            let res = self.dp.send_with(&mut |buf| {
                core.poll_transmit(now, buf).map(|t| TxMeta {
                    remote_ip: t.remote_ip,
                    src_port: t.src_port,
                    dst_port: t.dst_port,
                    len: t.len,
                })
            });
            match res {
                Ok(false) => break,
                // Failures are counted by the datapath; the transport recovers from the loss.
                Ok(true) | Err(_) => n += 1,
            }
        }
        if n > 0 {
            self.dp.flush();
        }
        n > 0
    }

    fn stats_tick(&mut self, now: Instant) {
        let (Some(due), Some(every)) = (self.next_stats, self.stats_interval) else {
            return;
        };
        if now < due {
            return;
        }
        self.next_stats = Some(now + every);
        tracing::info!("{}", self.report());
    }

    // ------------------------------------------------------------------------------------------
    // Sleeping
    // ------------------------------------------------------------------------------------------

    /// Sleeps in epoll until a datagram, a request, room in a notification ring, a command or
    /// a timer — after arming the channels of the run list so no wake-up is lost (the others
    /// are armed already; see the module documentation).
    fn sleep(&mut self) {
        let now = self.clock.now();
        self.trimmer.idle(self.memory_in_use(), now);
        // Channels with notifications queued stay active: a non-empty flush list cancels the
        // sleep anyway.
        let mut abort = !self.flush.is_empty();
        abort |= self.park(now, true);
        if !abort && !self.cmds.is_empty() {
            abort = true;
        }
        // Local flow events posted by this engine itself do not ring its eventfd.
        if !abort && self.local.as_ref().is_some_and(|l| l.has_events(self.id)) {
            abort = true;
        }
        // A datapath without a readiness fd (DPDK) must be polled: nap at most POLLED_NAP.
        let poll_due = (!self.dp_registered).then(|| now + POLLED_NAP);
        let deadline = [
            self.core.poll_timeout(),
            self.next_stats,
            poll_due,
            self.next_linger,
            self.stopping,
        ]
        .into_iter()
        .flatten()
        .min();
        if !abort {
            if let Some(d) = deadline {
                let wait = d - now;
                // A due timer, or a timer that cannot be armed: do not sleep.
                abort = wait.is_zero()
                    || self
                        .timer
                        .set(
                            Expiration::OneShot(TimeSpec::from_duration(wait)),
                            TimerSetTimeFlags::empty(),
                        )
                        .is_err();
            }
        }
        if !abort {
            self.counters.sleeps += 1;
            let n = match self.epoll.wait(&mut self.events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    crate::limited!(error, engine = self.id, "epoll_wait: {e}");
                    0
                }
            };
            // Channels whose eventfd rang become active; the others stay armed.
            let now = self.clock.now();
            self.ready(n, now);
            if deadline.is_some() {
                let _ = self.timer.unset();
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // Reports and shutdown
    // ------------------------------------------------------------------------------------------

    /// Message bytes this engine holds (received, and sent but unacknowledged), for the
    /// trimmer: a sender's buffers are as large as a receiver's.
    fn memory_in_use(&self) -> usize {
        self.core.held_bytes()
            + self.core.send_buffered_bytes()
            + self.core.leftover_bytes()
            + self.local_stats().queued_bytes
    }

    fn local_stats(&self) -> LocalStats {
        self.local
            .as_ref()
            .map_or_else(LocalStats::default, |l| l.stats(self.id))
    }

    fn report(&self) -> EngineReport {
        EngineReport {
            engine: self.id,
            core: self.core.stats().clone(),
            datapath: self.dp.stats(),
            engine_loop: self.counters,
            channels: self.chans.len(),
            active_channels: self.active.len(),
            flows: self.core.flow_count(),
            connects_in_progress: self.chans.values().map(Chan::connects_in_progress).sum(),
            core_held_bytes: self.core.held_bytes() + self.core.leftover_bytes(),
            memory_budget: self.core.config().memory_budget,
            sidecar_held_bytes: self.chans.values().map(Chan::held_bytes).sum(),
            stalled_channels: self.chans.values().filter(|c| c.is_stalled()).count(),
            orphan_flows: self.orphans.len(),
            local: self.local_stats(),
        }
    }

    /// The report, with at most `max_channels` channels and `max_flows` flows described (in
    /// no particular order: taking the first ones keeps the work bounded).
    fn snapshot(&self, max_channels: usize, max_flows: usize) -> EngineSnapshot {
        let channels = self
            .chans
            .values()
            .take(max_channels)
            .map(|c| collect::channel_stat(self.id, c))
            .collect();
        let flows = self
            .owners
            .iter()
            .take(max_flows)
            .map(|(&flow, &owner)| {
                let phase = self.chans.get(&owner.0).and_then(|c| c.flow_phase(owner.1));
                let local = self.local.as_deref();
                collect::flow_stat(self.id, &self.core, local, flow, owner, phase)
            })
            .collect();
        EngineSnapshot {
            report: self.report(),
            channels,
            flows,
            flows_total: self.owners.len(),
            channel_memory: self
                .chans
                .values()
                .map(|c| c.mem().layout().total_len)
                .sum(),
        }
    }

    fn shutdown(&mut self) {
        let now = self.clock.now();
        let ids: Vec<ChannelId> = self.chans.keys().copied().collect();
        for id in ids {
            self.close_channel(id, CloseCode::Shutdown, now);
        }
        // Orphans whose peer has everything are left alone (a reset could make the peer's
        // sidecar discard messages its app has not read yet); the others are aborted.
        let orphans = std::mem::take(&mut self.orphans);
        let mut ctx = ctx!(self, now);
        for (flow, _) in orphans {
            if ctx.undelivered_bytes(flow) > 0 {
                ctx.abort(flow);
            }
        }
        // Let the peers know (RSTs for the aborted flows).
        while self.transmit(now) {}
        tracing::info!("final: {}", self.report());
    }
}

/// Puts `chan` on the run list (withdrawing its wait announcements if it was armed) and notes
/// that it has work now.
fn activate(chan: &mut Chan, active: &mut Vec<ChannelId>, now: Instant) {
    chan.sched.last_work = now;
    if !chan.sched.active {
        chan.sched.active = true;
        chan.cancel_sleep();
        active.push(chan.id());
    }
}

/// Puts `chan` on the flush list.
fn queue_flush(chan: &mut Chan, flush: &mut Vec<ChannelId>) {
    if !chan.sched.queued {
        chan.sched.queued = true;
        flush.push(chan.id());
    }
}

/// Arms an active channel (docs/CHANNEL.md §4: flags, fence, re-check). `Ok(true)`: armed, it
/// may leave the run list; `Ok(false)`: the re-check found work, it stays active (its flags
/// withdrawn).
fn arm(chan: &mut Chan) -> Result<bool, Violation> {
    if chan.prepare_sleep()? {
        chan.sched.active = false;
        Ok(true)
    } else {
        chan.cancel_sleep();
        Ok(false)
    }
}
