//! One conformance suite for every datapath: each test is generic over a [`Net`] that builds
//! hosts, and runs once per datapath kind.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use machnet_core::PortPool;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::kernel::{KernelUdp, KernelUdpOptions};
use super::lossy::Lossy;
use super::mem::MemHub;
use super::{Datapath, Outgoing, SendError};

/// Builds hosts of one kind of datapath.
trait Net {
    /// A fresh pool of `count` ports usable by hosts at `ips`.
    fn pool(&mut self, ips: &[Ipv4Addr], count: u16) -> PortPool;
    /// One datapath per engine of a host.
    fn host(
        &mut self,
        ip: Ipv4Addr,
        engines: u16,
        pool: PortPool,
        max_datagram: usize,
    ) -> Vec<Box<dyn Datapath>>;
}

/// Kernel UDP hosts with these offload choices (`max_datagram` is taken from each host).
struct Kernel(KernelUdpOptions);

impl Net for Kernel {
    fn pool(&mut self, ips: &[Ipv4Addr], count: u16) -> PortPool {
        crate::testing::free_udp_pool(ips, count)
    }
    fn host(
        &mut self,
        ip: Ipv4Addr,
        engines: u16,
        pool: PortPool,
        max_datagram: usize,
    ) -> Vec<Box<dyn Datapath>> {
        (0..engines)
            .map(|_| {
                let opts = KernelUdpOptions {
                    max_datagram,
                    ..self.0
                };
                Box::new(KernelUdp::with_options(ip, pool, opts).expect("bind"))
                    as Box<dyn Datapath>
            })
            .collect()
    }
}

struct Mem(MemHub, u16);

impl Net for Mem {
    fn pool(&mut self, _ips: &[Ipv4Addr], count: u16) -> PortPool {
        self.1 += 100;
        PortPool {
            base: 1000 + self.1,
            count,
        }
    }
    fn host(
        &mut self,
        ip: Ipv4Addr,
        engines: u16,
        pool: PortPool,
        max_datagram: usize,
    ) -> Vec<Box<dyn Datapath>> {
        self.0
            .add_host(ip, engines, pool, max_datagram)
            .expect("add host")
            .into_iter()
            .map(|d| Box::new(d) as Box<dyn Datapath>)
            .collect()
    }
}

/// The mem datapath wrapped in a loss injector that drops nothing: the wrapper must be
/// transparent.
struct LosslessWrapper(Mem);

impl Net for LosslessWrapper {
    fn pool(&mut self, ips: &[Ipv4Addr], count: u16) -> PortPool {
        self.0.pool(ips, count)
    }
    fn host(
        &mut self,
        ip: Ipv4Addr,
        engines: u16,
        pool: PortPool,
        max_datagram: usize,
    ) -> Vec<Box<dyn Datapath>> {
        self.0
            .host(ip, engines, pool, max_datagram)
            .into_iter()
            .map(|d| Box::new(Lossy::new(d, 0.0, 1)) as Box<dyn Datapath>)
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    engine: usize,
    remote_ip: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: Vec<u8>,
}

/// Receives on all `dps` until `want` datagrams arrived or `timeout` passed (waiting on the
/// readiness descriptors, not sleeping).
fn collect(dps: &mut [Box<dyn Datapath>], want: usize, timeout: Duration) -> Vec<Got> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        for (engine, dp) in dps.iter_mut().enumerate() {
            dp.recv(64, &mut |r| {
                out.push(Got {
                    engine,
                    remote_ip: r.remote_ip,
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    payload: r.payload.to_vec(),
                })
            })
            .expect("recv");
        }
        let now = Instant::now();
        if out.len() >= want || now >= deadline {
            return out;
        }
        let left = (deadline - now).as_millis().min(1000) as u16;
        let mut fds: Vec<PollFd<'_>> = dps
            .iter()
            .map(|d| PollFd::new(d.readiness_fd().expect("pollable"), PollFlags::POLLIN))
            .collect();
        let _ = nix::poll::poll(&mut fds, PollTimeout::from(left.max(1)));
    }
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 31 + i * 7) as u8).collect()
}

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const WAIT: Duration = Duration::from_secs(5);

fn datagrams_arrive_intact_and_addressed(net: &mut dyn Net) {
    let pa = net.pool(&[A], 4);
    let pb = net.pool(&[B], 4);
    let mut a = net.host(A, 1, pa, 9000);
    let mut b = net.host(B, 2, pb, 9000);
    let sizes = [1usize, 2, 40, 1472, 1500, 4000, 8999, 9000];
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let src_port = pa.nth((i % 4) as u16);
        let dst_port = pb.nth(((i / 2) % 4) as u16);
        let p = payload(i, len);
        a[0].send(Outgoing {
            remote_ip: B,
            src_port,
            dst_port,
            payload: &p,
        })
        .expect("send");
        sent.push((src_port, dst_port, p));
    }
    flush(&mut a);
    let got = collect(&mut b, sent.len(), WAIT);
    assert_eq!(got.len(), sent.len(), "every datagram arrives exactly once");
    for (src_port, dst_port, p) in &sent {
        let g = got
            .iter()
            .find(|g| &g.payload == p)
            .unwrap_or_else(|| panic!("datagram of {} bytes missing or altered", p.len()));
        assert_eq!(
            (g.remote_ip, g.src_port, g.dst_port),
            (A, *src_port, *dst_port)
        );
    }
    assert_eq!(a[0].stats().tx_packets, sent.len() as u64);
    let rx: u64 = b.iter().map(|d| d.stats().rx_packets).sum();
    assert_eq!(rx, sent.len() as u64);
}

fn one_tuple_always_reaches_one_engine(net: &mut dyn Net) {
    let pa = net.pool(&[A], 2);
    let pb = net.pool(&[B], 2);
    let mut a = net.host(A, 1, pa, 2048);
    let mut b = net.host(B, 4, pb, 2048);
    for tuple in 0..4u16 {
        let (src_port, dst_port) = (pa.nth(tuple % 2), pb.nth(tuple / 2));
        for i in 0..30 {
            a[0].send(Outgoing {
                remote_ip: B,
                src_port,
                dst_port,
                payload: &payload(i, 64),
            })
            .expect("send");
        }
        flush(&mut a);
        let got = collect(&mut b, 30, WAIT);
        assert_eq!(got.len(), 30);
        let engines: HashSet<usize> = got.iter().map(|g| g.engine).collect();
        assert_eq!(
            engines.len(),
            1,
            "tuple {src_port}->{dst_port} split: {engines:?}"
        );
    }
}

fn different_tuples_spread_over_engines(net: &mut dyn Net) {
    let pa = net.pool(&[A], 16);
    let pb = net.pool(&[B], 16);
    let mut a = net.host(A, 1, pa, 2048);
    let mut b = net.host(B, 4, pb, 2048);
    for s in 0..16 {
        for d in 0..16 {
            a[0].send(Outgoing {
                remote_ip: B,
                src_port: pa.nth(s),
                dst_port: pb.nth(d),
                payload: &[s as u8, d as u8],
            })
            .expect("send");
        }
    }
    flush(&mut a);
    let got = collect(&mut b, 256, WAIT);
    assert_eq!(got.len(), 256);
    let mut per_engine: HashMap<usize, usize> = HashMap::new();
    for g in &got {
        *per_engine.entry(g.engine).or_default() += 1;
    }
    assert_eq!(
        per_engine.len(),
        4,
        "256 tuples should reach all 4 engines: {per_engine:?}"
    );
}

fn every_port_of_the_peer_pool_is_reachable_both_ways(net: &mut dyn Net) {
    let pa = net.pool(&[A], 8);
    let pb = net.pool(&[B], 8);
    let mut a = net.host(A, 2, pa, 2048);
    let mut b = net.host(B, 2, pb, 2048);
    for i in 0..8u16 {
        a[usize::from(i % 2)]
            .send(Outgoing {
                remote_ip: B,
                src_port: pa.nth(i),
                dst_port: pb.nth(i),
                payload: &i.to_le_bytes(),
            })
            .expect("send");
    }
    flush(&mut a);
    let got = collect(&mut b, 8, WAIT);
    let ports: HashSet<u16> = got.iter().map(|g| g.dst_port).collect();
    assert_eq!(ports.len(), 8, "every pool port receives: {got:?}");
    // Answer each on the reverse tuple: it reaches A.
    for g in &got {
        b[g.engine]
            .send(Outgoing {
                remote_ip: g.remote_ip,
                src_port: g.dst_port,
                dst_port: g.src_port,
                payload: &g.payload,
            })
            .expect("reply");
    }
    flush(&mut b);
    let back = collect(&mut a, 8, WAIT);
    assert_eq!(back.len(), 8);
    for r in &back {
        assert_eq!(r.remote_ip, B);
        assert_eq!(r.src_port - pb.base, r.dst_port - pa.base);
    }
}

fn oversize_is_refused_on_send_and_dropped_on_receive(net: &mut dyn Net) {
    let pa = net.pool(&[A], 1);
    let pb = net.pool(&[B], 1);
    let mut a = net.host(A, 1, pa, 4000);
    let mut b = net.host(B, 1, pb, 1500);
    let bufs: Vec<Vec<u8>> = [4001usize, 3000, 1500, 10]
        .iter()
        .map(|&n| vec![7u8; n])
        .collect();
    let out = |i: usize| Outgoing {
        remote_ip: B,
        src_port: pa.base,
        dst_port: pb.base,
        payload: &bufs[i],
    };
    assert!(matches!(
        a[0].send(out(0)),
        Err(SendError::Oversize {
            len: 4001,
            max: 4000
        })
    ));
    // Too large for the receiver: never delivered (not even truncated), counted.
    a[0].send(out(1)).expect("send");
    a[0].send(out(2)).expect("send");
    flush(&mut a);
    let got = collect(&mut b, 1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.len(), 1500);
    // Anything left over would be the oversize one delivered late.
    assert!(collect(&mut b, 1, Duration::from_millis(50)).is_empty());
    assert_eq!(b[0].stats().rx_oversize, 1);
    // A source port outside the pool is refused.
    let mut bad = out(3);
    bad.src_port = pa.base.wrapping_add(1);
    assert!(matches!(a[0].send(bad), Err(SendError::NotOurPort(_))));
}

/// Hands every queued datagram of `hosts` to the network.
fn flush(hosts: &mut [Box<dyn Datapath>]) {
    for d in hosts {
        d.flush();
    }
}

/// Runs of equal-size datagrams on one 4-tuple (what a datapath may batch with GSO and the
/// receiver may coalesce with GRO), broken by shorter and longer ones: they arrive one by one,
/// byte-identical and in order (one 4-tuple stays on one socket and one engine). Returns the
/// sender for datapath-specific checks.
fn mixed_size_runs_arrive_in_order_byte_identical(net: &mut dyn Net) -> Box<dyn Datapath> {
    let pa = net.pool(&[A], 1);
    let pb = net.pool(&[B], 1);
    let mut a = net.host(A, 1, pa, 9000);
    let mut b = net.host(B, 1, pb, 9000);
    let mut sizes = Vec::new();
    for (count, len) in [
        (60, 1400),
        (1, 300),
        (45, 1472),
        (3, 9000),
        (1, 1),
        (70, 64),
        (5, 8999),
    ] {
        sizes.extend(std::iter::repeat_n(len, count));
    }
    let sent: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| payload(i, len))
        .collect();
    for p in &sent {
        a[0].send(Outgoing {
            remote_ip: B,
            src_port: pa.base,
            dst_port: pb.base,
            payload: p,
        })
        .expect("send");
    }
    flush(&mut a);
    let got = collect(&mut b, sent.len(), WAIT);
    assert_eq!(got.len(), sent.len(), "every datagram, exactly once");
    for (i, (g, p)) in got.iter().zip(&sent).enumerate() {
        assert!(
            g.payload == *p,
            "datagram {i} ({} bytes sent, {} received) differs or is out of order",
            p.len(),
            g.payload.len()
        );
    }
    a.remove(0)
}

fn run_suite(make: &dyn Fn() -> Box<dyn Net>) {
    mixed_size_runs_arrive_in_order_byte_identical(&mut *make());
    datagrams_arrive_intact_and_addressed(&mut *make());
    one_tuple_always_reaches_one_engine(&mut *make());
    different_tuples_spread_over_engines(&mut *make());
    every_port_of_the_peer_pool_is_reachable_both_ways(&mut *make());
    oversize_is_refused_on_send_and_dropped_on_receive(&mut *make());
}

#[test]
fn kernel_udp_conforms() {
    run_suite(&|| Box::new(Kernel(KernelUdpOptions::new(0))));
}

#[test]
fn kernel_udp_conforms_with_every_offload_setting() {
    for (gso, gro) in [(false, false), (true, false), (false, true)] {
        let opts = KernelUdpOptions {
            max_datagram: 0,
            gso,
            gro,
        };
        run_suite(&|| Box::new(Kernel(opts)));
    }
}

#[test]
fn kernel_udp_batches_with_gso_where_the_kernel_has_it() {
    let sender =
        mixed_size_runs_arrive_in_order_byte_identical(&mut Kernel(KernelUdpOptions::new(0)));
    let probe = KernelUdp::new(A, crate::testing::free_udp_pool(&[A], 1), 1500).expect("bind");
    let s = sender.stats();
    if probe.gso_segments() > 1 {
        assert!(
            s.tx_gso_batches > 0,
            "runs of equal sizes share sends: {s:?}"
        );
        assert!(s.tx_gso_batches < s.tx_packets, "{s:?}");
    } else {
        assert_eq!(s.tx_gso_batches, 0);
    }
    assert_eq!(s.tx_packets, 185, "every datagram counted once");
    let off = mixed_size_runs_arrive_in_order_byte_identical(&mut Kernel(KernelUdpOptions {
        max_datagram: 0,
        gso: false,
        gro: false,
    }));
    assert_eq!(
        off.stats().tx_gso_batches,
        0,
        "GSO off: one datagram per send"
    );
}

#[test]
fn mem_conforms() {
    run_suite(&|| Box::new(Mem(MemHub::new(42), 0)));
}

#[test]
fn lossless_wrapper_conforms() {
    run_suite(&|| Box::new(LosslessWrapper(Mem(MemHub::new(7), 0))));
}

#[test]
fn lossy_wrapper_drops_the_configured_fraction_reproducibly() {
    let seed = crate::random_seed();
    let run = |seed: u64| {
        let hub = MemHub::new(1);
        let pool = PortPool {
            base: 100,
            count: 1,
        };
        let a = hub.add_host(A, 1, pool, 2048).unwrap().remove(0);
        let mut b: Vec<Box<dyn Datapath>> = hub
            .add_host(B, 1, pool, 2048)
            .unwrap()
            .into_iter()
            .map(|d| Box::new(d) as Box<dyn Datapath>)
            .collect();
        let mut a = Lossy::new(a, 0.3, seed);
        for i in 0..2000u32 {
            a.send(Outgoing {
                remote_ip: B,
                src_port: 100,
                dst_port: 100,
                payload: &i.to_le_bytes(),
            })
            .unwrap();
        }
        a.flush();
        let got = collect(&mut b, 2000, Duration::from_millis(200));
        assert_eq!(
            got.len() as u64 + a.stats().injected_drops,
            2000,
            "seed {seed}"
        );
        got.into_iter().map(|g| g.payload).collect::<Vec<_>>()
    };
    let first = run(seed);
    assert!(
        (1200..=1600).contains(&first.len()),
        "seed {seed}: {} of 2000 arrived with 30% loss",
        first.len()
    );
    assert_eq!(first, run(seed), "seed {seed}: same seed, same losses");
}
