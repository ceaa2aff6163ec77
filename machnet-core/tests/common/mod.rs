//! The two-host test pair shared by the integration tests: two single-engine hosts joined by an
//! in-memory link with simulated time (quinn-style). The full multi-host, multi-engine simulator
//! lives in `machnet-sim`.
#![allow(dead_code)] // each test binary uses a part

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use machnet_core::{Datagram, Engine, EngineConfig, Event, FlowId, Instant, SendError};

pub(crate) const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(crate) const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub(crate) const PORT: u16 = 7000;
pub(crate) const LATENCY: Duration = Duration::from_micros(10);

pub(crate) struct InFlight {
    pub(crate) at: Instant,
    pub(crate) to_b: bool,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) bytes: Vec<u8>,
}

/// Rewrites a datagram in flight: (whether it goes a → b, its bytes).
pub(crate) type Rewrite = dyn FnMut(bool, &mut Vec<u8>);

pub(crate) struct Pair {
    pub(crate) a: Engine,
    pub(crate) b: Engine,
    pub(crate) now: Instant,
    pub(crate) wire: VecDeque<InFlight>,
    /// Decides, per datagram number, whether the link drops it.
    pub(crate) drop: Box<dyn FnMut(u64) -> bool>,
    pub(crate) sent: u64,
    pub(crate) events_a: Vec<Event>,
    pub(crate) events_b: Vec<Event>,
    /// Largest datagram put on the wire so far, a → b and b → a.
    pub(crate) largest: [usize; 2],
    /// Rewrites datagrams in flight, after `drop`.
    pub(crate) rewrite: Box<Rewrite>,
}

impl Pair {
    pub(crate) fn new(tweak: impl Fn(&mut EngineConfig)) -> Pair {
        Pair::asymmetric(&tweak, &tweak)
    }

    /// A pair whose two hosts are configured differently.
    pub(crate) fn asymmetric(
        tweak_a: impl Fn(&mut EngineConfig),
        tweak_b: impl Fn(&mut EngineConfig),
    ) -> Pair {
        let mut ca = EngineConfig::new(A, 0, 1);
        let mut cb = EngineConfig::new(B, 0, 1);
        tweak_a(&mut ca);
        tweak_b(&mut cb);
        let a = Engine::new(ca, 1).unwrap();
        let mut b = Engine::new(cb, 2).unwrap();
        b.listen(PORT).unwrap();
        Pair {
            a,
            b,
            now: Instant::ZERO,
            wire: VecDeque::new(),
            drop: Box::new(|_| false),
            sent: 0,
            events_a: Vec::new(),
            events_b: Vec::new(),
            largest: [0; 2],
            rewrite: Box::new(|_, _| {}),
        }
    }

    /// Moves packets and time until nothing is in flight and no timer is due before `limit`.
    pub(crate) fn run_until(&mut self, limit: Instant, mut stop: impl FnMut(&mut Pair) -> bool) {
        let mut buf = vec![0u8; 65_507];
        loop {
            for from_a in [true, false] {
                loop {
                    let e = if from_a { &mut self.a } else { &mut self.b };
                    let Some(t) = e.poll_transmit(self.now, &mut buf) else {
                        break;
                    };
                    self.sent += 1;
                    let dir = usize::from(!from_a);
                    self.largest[dir] = self.largest[dir].max(t.len);
                    if !(self.drop)(self.sent) {
                        let mut bytes = buf[..t.len].to_vec();
                        (self.rewrite)(from_a, &mut bytes);
                        self.wire.push_back(InFlight {
                            at: self.now + LATENCY,
                            to_b: from_a,
                            src_port: t.src_port,
                            dst_port: t.dst_port,
                            bytes,
                        });
                    }
                }
            }
            while let Some(e) = self.a.poll_event() {
                self.events_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.events_b.push(e);
            }
            if stop(self) {
                return;
            }
            let next_wire = self.wire.front().map(|p| p.at);
            let next = [next_wire, self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { return };
            if next > limit {
                return;
            }
            self.now = self.now.max(next);
            while self.wire.front().is_some_and(|p| p.at <= self.now) {
                let p = self.wire.pop_front().unwrap();
                let (e, from) = if p.to_b {
                    (&mut self.b, A)
                } else {
                    (&mut self.a, B)
                };
                e.handle_datagram(
                    self.now,
                    Datagram {
                        remote_ip: from,
                        src_port: p.src_port,
                        dst_port: p.dst_port,
                        payload: &p.bytes,
                    },
                );
            }
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
        }
    }

    pub(crate) fn connect(&mut self) -> (FlowId, FlowId) {
        let fa = self.a.connect(self.now, B, PORT).unwrap();
        let deadline = self.now + Duration::from_secs(5);
        self.run_until(deadline, |p| {
            p.events_b
                .iter()
                .any(|e| matches!(e, Event::Accepted { .. }))
        });
        assert!(
            self.events_a.contains(&Event::Connected { flow: fa }),
            "{:?}",
            self.events_a
        );
        let fb = self
            .events_b
            .iter()
            .find_map(|e| match e {
                Event::Accepted { flow, .. } => Some(*flow),
                _ => None,
            })
            .expect("accepted");
        self.events_a.clear();
        self.events_b.clear();
        (fa, fb)
    }
}

pub(crate) fn message(i: u32, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    let mut x = i.wrapping_mul(2654435761).wrapping_add(len as u32) | 1;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    Bytes::from(v)
}

pub(crate) fn drain(e: &mut Engine, flow: FlowId, out: &mut Vec<Bytes>) {
    while let Some(m) = e.recv(flow).unwrap() {
        out.push(m);
    }
}

/// Sends `sizes` from a to b under the pair's drop pattern and checks byte-identical in-order
/// delivery.
pub(crate) fn transfer(p: &mut Pair, sizes: &[usize]) {
    let (fa, fb) = p.connect();
    let msgs: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| message(i as u32, n))
        .collect();
    let mut next = 0;
    let mut got = Vec::new();
    let deadline = p.now + Duration::from_secs(600);
    while got.len() < msgs.len() {
        while next < msgs.len() {
            match p.a.send(p.now, fa, msgs[next].clone()) {
                Ok(()) => next += 1,
                Err(SendError::BufferFull) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        let before = got.len();
        p.run_until(deadline, |p| {
            let mut any = false;
            for e in p.events_b.drain(..) {
                any |= matches!(e, Event::Readable { .. });
            }
            any || p
                .events_a
                .drain(..)
                .any(|e| matches!(e, Event::Writable { .. }))
        });
        drain(&mut p.b, fb, &mut got);
        assert!(
            p.now < deadline,
            "transfer stalled at {} of {} messages",
            got.len(),
            msgs.len()
        );
        if got.len() == before
            && next == msgs.len()
            && p.wire.is_empty()
            && p.a.poll_timeout().is_none()
        {
            panic!("no progress");
        }
    }
    assert_eq!(got.len(), msgs.len());
    for (i, (g, m)) in got.iter().zip(&msgs).enumerate() {
        assert!(
            g == m,
            "message {i} differs (len {} vs {})",
            g.len(),
            m.len()
        );
    }
}

/// Datagrams one engine has to send now, taken instead of put on the wire.
pub(crate) fn take_output(e: &mut Engine, now: Instant) -> Vec<(u16, u16, Vec<u8>)> {
    let mut buf = vec![0u8; 1500];
    let mut out = Vec::new();
    while let Some(t) = e.poll_transmit(now, &mut buf) {
        out.push((t.src_port, t.dst_port, buf[..t.len].to_vec()));
    }
    out
}

pub(crate) fn deliver(
    e: &mut Engine,
    now: Instant,
    from: Ipv4Addr,
    datagrams: &[(u16, u16, Vec<u8>)],
) {
    for (src_port, dst_port, bytes) in datagrams {
        e.handle_datagram(
            now,
            Datagram {
                remote_ip: from,
                src_port: *src_port,
                dst_port: *dst_port,
                payload: bytes,
            },
        );
    }
}
