//! Fuzzes the sidecar's half of a channel (`machnet_sidecar::engine::channel::Chan`) against a
//! hostile application.
//!
//! A `Chan` runs over real channel memory (a sealed memfd with small rings, so that full rings
//! and wrapped records are reached quickly) and a real `machnet_core::Engine` that talks to a
//! peer engine. The input is a sequence of operations: the application writes records with any
//! kind byte, flags, flow, aux, declared length and payload, rewrites data bytes and publishes
//! arbitrary ring indices (the request ring's tail, the notification ring's head); the engine
//! consumes, routes core events with the worker's own router (`machnet_sidecar::engine::route`),
//! flushes notifications, prepares to
//! sleep, detaches, drains and finishes the detach, or closes the channel.
//!
//! Invariants: no panic and no hang (libFuzzer's `-timeout`); a `Violation` is an acceptable
//! outcome, after which the channel is closed as the worker closes it and the run ends; while
//! the application leaves the notification ring's indices alone, every notification it reads is
//! a well-formed notification (never a request kind, never a ring error).
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use machnet_channel::ring::record_footprint;
use machnet_channel::{
    ChannelLayout, ChannelViews, CloseCode, ConnectRequest, Consumer, RECORD_HEADER_LEN,
};
use machnet_core::{Datagram, Engine, EngineConfig, Event, FlowId, Instant};
use machnet_sidecar::engine::channel::{Chan, ChannelId, Ctx, Flow, Owners, Violation};
use machnet_sidecar::engine::listen::Listeners;
use machnet_sidecar::engine::route::{discard_received, route, Routed};
use machnet_sidecar::engine::{
    AppConnects, ChannelConnects, ConnectLimits, FlowCounter, FlowQuota,
};
use machnet_sidecar::shm::ChannelMem;
use memmap2::{MmapMut, MmapOptions};

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The peer listens here (the app's `Connect` requests aim at it).
const PEER_PORT: u16 = 80;
/// The channel listens here (the peer connects to it).
const CHAN_PORT: u16 = 81;
/// Largest message: a quarter of a ring, so that a few fill it.
const MAX_MESSAGE: u32 = 1000;
/// One page per ring, the smallest layout.
const RING: u64 = 4096;
/// Operations per input (bounds the work of one run).
const MAX_OPS: usize = 256;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = Harness::new() {
        let _ = h.run(&mut Unstructured::new(data));
    }
});

/// The application: writes the request ring by hand (anything goes), reads notifications
/// through the validating consumer.
struct App {
    /// The app's own mapping of the channel's memfd, as a real application has.
    _map: MmapMut,
    /// The request ring's data area in that mapping.
    requests: *mut u8,
    views: ChannelViews,
    /// The request ring's tail as the app tracks it (what it publishes may differ).
    tail: u64,
    notes: Consumer,
    /// Set once the app wrote the notification ring's head: its own reads may then fail.
    scribbled_notes: bool,
}

impl App {
    /// Copies `bytes` into the request ring's data area at position `pos`, wrapping.
    fn write_at(&self, pos: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            let off = (pos + i as u64) % RING;
            // SAFETY: `off < RING`, the data area's length, inside the app's mapping (`_map`).
            unsafe { self.requests.add(off as usize).write_volatile(b) };
        }
    }

    fn publish(&self, tail: u64) {
        self.views
            .to_sidecar
            .control()
            .tail
            .store(tail, Ordering::Release);
    }

    /// Writes a record: `header` as raw bytes, then `payload`, then advances the app's tail by
    /// the footprint of the length the header declares (capped at the ring) and publishes it.
    fn record(&mut self, header: [u8; RECORD_HEADER_LEN], payload: &[u8]) {
        self.write_at(self.tail, &header);
        self.write_at(
            self.tail + RECORD_HEADER_LEN as u64,
            &payload[..payload.len().min(RING as usize)],
        );
        let declared = u32::from_le_bytes(header[0..4].try_into().unwrap());
        self.tail += record_footprint(u64::from(declared)).min(RING);
        self.publish(self.tail);
    }

    /// Reads up to `n` notifications; checks them unless the app broke its own ring.
    fn read(&mut self, n: usize) {
        for _ in 0..n {
            match self.notes.peek() {
                Ok(Some(rec)) => {
                    assert!(
                        self.scribbled_notes || !rec.header.kind.is_request(),
                        "the sidecar wrote a request kind: {:?}",
                        rec.header
                    );
                    let payload = self.notes.payload_to_vec(&rec);
                    assert_eq!(payload.len(), rec.header.len as usize);
                    self.notes.consume(&rec);
                }
                Ok(None) => return,
                Err(e) => {
                    assert!(self.scribbled_notes, "notification ring corrupted: {e}");
                    return;
                }
            }
        }
    }
}

fn header(len: u32, kind: u8, flags: u8, reserved: [u8; 2], flow: u32, aux: u32) -> [u8; 16] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = kind;
    h[5] = flags;
    h[6..8].copy_from_slice(&reserved);
    h[8..12].copy_from_slice(&flow.to_le_bytes());
    h[12..16].copy_from_slice(&aux.to_le_bytes());
    h
}

fn engine(ip: Ipv4Addr) -> Engine {
    let mut c = EngineConfig::new(ip, 0, 1);
    c.max_message_len = MAX_MESSAGE;
    Engine::new(c, 7).expect("engine config")
}

/// Where the channel stands.
#[derive(PartialEq, Eq)]
enum State {
    Open,
    Detaching,
    /// Closed or detached: the worker has dropped it; the run ends.
    Gone,
}

/// The channel's id.
const CHAN: ChannelId = 1;

struct Harness {
    /// The engine's channels, as the worker keeps them: the one channel while it is open or
    /// detaching, none once it is gone.
    chans: HashMap<ChannelId, Chan>,
    /// The engine's listeners (the channel's port while it is open).
    listeners: Listeners,
    app: App,
    core: Engine,
    peer: Engine,
    /// The peer's flows (accepted from the channel or connected to it).
    peer_flows: Vec<FlowId>,
    owners: Owners,
    now: Instant,
    state: State,
}

impl Harness {
    fn new() -> Option<Self> {
        let layout = ChannelLayout::new(RING, RING, MAX_MESSAGE).ok()?;
        let mem = ChannelMem::with_layout(layout).ok()?;
        let [memfd, _, _] = mem.dup_app_fds().ok()?;
        // SAFETY: the memfd is sealed against shrinking; the app's accesses go through raw
        // pointers and the validating ring code, as in a real application.
        let mut map = unsafe { MmapOptions::new().map_mut(&std::fs::File::from(memfd)) }.ok()?;
        // SAFETY: the mapping has the layout's length and lives in `App` as long as the views.
        let layout = unsafe { ChannelLayout::read(map.as_ptr(), map.len() as u64) }.ok()?;
        let views = unsafe { layout.views(map.as_mut_ptr()) };
        // SAFETY: the offset is inside the mapping (validated by `read`).
        let requests = unsafe { map.as_mut_ptr().add(layout.to_sidecar_offset as usize) };
        // A small flow limit, so that `Exhausted` answers are reached too.
        let quota = FlowQuota::new(FlowCounter::new(4), FlowCounter::new(6));
        // Small connect budgets, so that their refusals are reached too.
        let limits = ConnectLimits {
            per_channel: 3,
            per_app: 5,
            rate_per_app: 1_000,
            burst_per_app: 8,
        };
        let connects = ChannelConnects::new(limits.per_channel, AppConnects::new(&limits));
        let mut chan = Chan::new(CHAN, mem, quota, connects);
        let mut core = engine(A);
        let mut peer = engine(B);
        peer.listen(PEER_PORT).ok()?;
        core.listen(CHAN_PORT).ok()?;
        chan.ports.push(CHAN_PORT);
        Some(Harness {
            chans: HashMap::from([(CHAN, chan)]),
            listeners: Listeners::from_pairs([(CHAN_PORT, CHAN)]),
            app: App {
                _map: map,
                requests,
                views,
                tail: 0,
                notes: Consumer::new(views.to_app, 0, MAX_MESSAGE),
                scribbled_notes: false,
            },
            core,
            peer,
            peer_flows: Vec::new(),
            owners: HashMap::new(),
            now: Instant::ZERO,
            state: State::Open,
        })
    }

    /// A violation closes the channel, as the worker does.
    fn check<T>(&mut self, res: std::result::Result<T, Violation>) -> Option<T> {
        match res {
            Ok(v) => Some(v),
            Err(_) => {
                self.close(CloseCode::ChannelViolation);
                None
            }
        }
    }

    /// The channel (open or detaching).
    fn chan(&mut self) -> &mut Chan {
        self.chans.get_mut(&CHAN).expect("the channel is not gone")
    }

    /// The worker's `remove_channel`: no listening any more, the channel leaves the engine.
    fn remove(&mut self) -> Chan {
        self.unlisten();
        self.state = State::Gone;
        self.chans.remove(&CHAN).expect("the channel is not gone")
    }

    fn unlisten(&mut self) {
        if self.listeners.leave(CHAN_PORT, CHAN) {
            self.core.unlisten(CHAN_PORT);
        }
    }

    fn close(&mut self, code: CloseCode) {
        let mut chan = self.remove();
        let mut ctx = Ctx {
            core: &mut self.core,
            now: self.now,
            owners: &mut self.owners,
            local: None,
        };
        chan.close_all(&mut ctx, code);
    }

    fn run(mut self, u: &mut Unstructured<'_>) -> Result<()> {
        for _ in 0..MAX_OPS {
            if u.is_empty() || self.state == State::Gone {
                break;
            }
            self.op(u)?;
        }
        Ok(())
    }

    fn op(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0u8..=17)? {
            // A valid-looking request of a request kind, on a small handle.
            0 => {
                let kind = *u.choose(&[1u8, 2, 3, 4])?;
                let flow = u.int_in_range(0u32..=6)?;
                let len = u.int_in_range(0u32..=MAX_MESSAGE)?;
                let payload = vec![u.arbitrary::<u8>()?; len as usize];
                self.app
                    .record(header(len, kind, 0, [0, 0], flow, 0), &payload);
            }
            // A connect to the peer (or to a port nobody listens on).
            1 => {
                let port = if u.arbitrary()? {
                    PEER_PORT
                } else {
                    u.arbitrary()?
                };
                let req = ConnectRequest {
                    remote_ip: B,
                    remote_port: port,
                };
                let aux = u.arbitrary()?;
                self.app
                    .record(header(6, 1, 0, [0, 0], 0, aux), &req.encode());
            }
            // Anything at all in a header, and a payload of any length.
            2 => {
                let raw: [u8; RECORD_HEADER_LEN] = u.arbitrary()?;
                let n = u.int_in_range(0usize..=64)?;
                let payload = u.bytes(n)?.to_vec();
                self.app.record(raw, &payload);
            }
            // A header with chosen fields (any kind byte, flags, reserved bytes, length).
            3 => {
                let h = header(
                    u.arbitrary()?,
                    u.arbitrary()?,
                    u.arbitrary()?,
                    u.arbitrary()?,
                    u.int_in_range(0u32..=8)?,
                    u.arbitrary()?,
                );
                self.app.record(h, &[]);
            }
            // Rewrite bytes anywhere in the request data area (published or not).
            4 => {
                let pos = u.arbitrary::<u16>()?;
                let n = u.int_in_range(1usize..=16)?;
                let bytes = u.bytes(n)?.to_vec();
                self.app.write_at(u64::from(pos), &bytes);
            }
            // Publish a tail near the app's, or any tail at all; the app may believe it.
            5 => {
                let delta = i64::from(u.int_in_range(-64i16..=4096)?);
                let tail = self.app.tail.saturating_add_signed(delta);
                self.app.publish(tail);
                if u.arbitrary()? {
                    self.app.tail = tail;
                }
            }
            6 => self.app.publish(u.arbitrary()?),
            // Move the notification ring's head: near the app's position, or anywhere.
            7 => {
                let head = if u.arbitrary()? {
                    self.app.notes.position() + u64::from(u.int_in_range(0u16..=8192)?)
                } else {
                    u.arbitrary()?
                };
                self.app
                    .views
                    .to_app
                    .control()
                    .head
                    .store(head, Ordering::Release);
                self.app.scribbled_notes = true;
            }
            // The wait flags, which the app may set or clear at will.
            8 => {
                let c = self.app.views.to_sidecar.control();
                c.space_waiting.store(u.arbitrary()?, Ordering::SeqCst);
                self.app
                    .views
                    .to_app
                    .control()
                    .data_waiting
                    .store(u.arbitrary()?, Ordering::SeqCst);
            }
            // The engine consumes requests (a detaching channel drains its ring).
            9 | 10 => {
                let mut ctx = Ctx {
                    core: &mut self.core,
                    now: self.now,
                    owners: &mut self.owners,
                    local: None,
                };
                let chan = self.chans.get_mut(&CHAN).expect("not gone");
                let res = chan.consume(&mut ctx);
                self.check(res);
                if self.state == State::Detaching {
                    self.finish_detach_if_drained();
                }
            }
            // Packets both ways, then the events of both engines.
            11 => self.shuttle(),
            12 => {
                if self.state == State::Open {
                    let mut ctx = Ctx {
                        core: &mut self.core,
                        now: self.now,
                        owners: &mut self.owners,
                        local: None,
                    };
                    let chan = self.chans.get_mut(&CHAN).expect("open");
                    let res = chan.flush(&mut ctx);
                    self.check(res);
                }
            }
            13 => {
                let n = u.int_in_range(1usize..=32)?;
                self.app.read(n);
            }
            // Time passes (retransmissions, timeouts, idle flows).
            14 => {
                self.now += Duration::from_millis(u64::from(u.int_in_range(1u32..=20_000)?));
                self.core.handle_timeout(self.now);
                self.peer.handle_timeout(self.now);
                self.shuttle();
            }
            // The peer acts on one of its flows.
            15 => {
                if let Ok(i) = u.choose_index(self.peer_flows.len()) {
                    let f = self.peer_flows[i];
                    let _ = match u.int_in_range(0u8..=3)? {
                        0 => self.peer.close(self.now, f),
                        1 => self.peer.abort(self.now, f),
                        _ => {
                            let len = u.int_in_range(1usize..=MAX_MESSAGE as usize)?;
                            let _ = self.peer.send(self.now, f, vec![7u8; len].into());
                            Ok(())
                        }
                    };
                } else {
                    let _ = self.peer.connect(self.now, A, CHAN_PORT);
                }
                self.shuttle();
            }
            // The sleep protocol.
            16 => {
                if self.state == State::Open {
                    let res = self.chan().prepare_sleep();
                    if self.check(res).is_some() {
                        let chan = self.chan();
                        let _ = chan.has_room_for_blocked();
                        let _ = chan.wants_flush();
                        chan.cancel_sleep();
                    }
                }
            }
            // The app detaches (gracefully or not), or the sidecar shuts the channel.
            _ => match (u.int_in_range(0u8..=2)?, &self.state) {
                (0, State::Open) => {
                    let deadline = self.now + Duration::from_secs(5);
                    self.unlisten();
                    let mut ctx = Ctx {
                        core: &mut self.core,
                        now: self.now,
                        owners: &mut self.owners,
                        local: None,
                    };
                    let chan = self.chans.get_mut(&CHAN).expect("open");
                    chan.detach(&mut ctx, CloseCode::Detached, deadline);
                    self.state = State::Detaching;
                    self.finish_detach_if_drained();
                }
                (1, _) => self.close(CloseCode::Detached),
                (_, State::Detaching) => {
                    // The linger expired.
                    if self.chan().detach_deadline().is_some_and(|d| d <= self.now) {
                        self.close(CloseCode::Detached);
                    }
                }
                _ => self.close(CloseCode::Shutdown),
            },
        }
        Ok(())
    }

    /// What the worker does for a detaching channel after consuming.
    fn finish_detach_if_drained(&mut self) {
        if self.state == State::Gone {
            return;
        }
        let res = self.chan().is_drained();
        if self.check(res) == Some(true) {
            let mut chan = self.remove();
            let mut ctx = Ctx {
                core: &mut self.core,
                now: self.now,
                owners: &mut self.owners,
                local: None,
            };
            // The worker keeps the orphans until they close; dropping them gives back permits.
            let orphans = chan.finish_detach(&mut ctx);
            for (flow, _permit) in orphans {
                let Flow::Net(flow) = flow else {
                    panic!("a local flow without same-host flows");
                };
                assert!(
                    self.core.flow_key(flow).is_some(),
                    "an orphan the core does not know"
                );
            }
        }
    }

    /// Moves datagrams both ways until quiet (bounded), then hands out the engines' events.
    fn shuttle(&mut self) {
        let mut buf = vec![0u8; 2048];
        for _ in 0..64 {
            let mut moved = false;
            while let Some(t) = self.core.poll_transmit(self.now, &mut buf) {
                moved = true;
                self.peer.handle_datagram(
                    self.now,
                    Datagram {
                        remote_ip: A,
                        src_port: t.src_port,
                        dst_port: t.dst_port,
                        payload: &buf[..t.len],
                    },
                );
            }
            while let Some(t) = self.peer.poll_transmit(self.now, &mut buf) {
                moved = true;
                self.core.handle_datagram(
                    self.now,
                    Datagram {
                        remote_ip: B,
                        src_port: t.src_port,
                        dst_port: t.dst_port,
                        payload: &buf[..t.len],
                    },
                );
            }
            self.peer_events();
            self.route();
            if !moved {
                break;
            }
        }
    }

    /// The peer accepts everything and reads every message.
    fn peer_events(&mut self) {
        while let Some(ev) = self.peer.poll_event() {
            match ev {
                Event::Accepted { flow, .. } | Event::Connected { flow } => {
                    self.peer_flows.push(flow)
                }
                Event::Readable { flow } => while let Ok(Some(_)) = self.peer.recv(flow) {},
                Event::Closed { flow, .. } => {
                    self.peer_flows.retain(|&f| f != flow);
                    self.peer.discard(flow);
                }
                Event::Writable { .. } | Event::PeerClosed { .. } => {}
            }
        }
    }

    /// The engine's events, through the worker's router; what no channel owns is read and
    /// dropped (the worker's orphan handling).
    fn route(&mut self) {
        while let Some(ev) = self.core.poll_event() {
            let mut ctx = Ctx {
                core: &mut self.core,
                now: self.now,
                owners: &mut self.owners,
                local: None,
            };
            match route(ev, &mut ctx, &self.listeners, &mut self.chans) {
                Routed::Unowned(Event::Readable { flow }) => discard_received(&mut self.core, flow),
                Routed::Unowned(Event::Closed { flow, .. }) => self.core.discard(flow),
                Routed::Unowned(_)
                | Routed::Delivered { .. }
                | Routed::Absorbed
                | Routed::AcceptRefused
                | Routed::UnownedLocal(_) => {}
            }
        }
    }
}
