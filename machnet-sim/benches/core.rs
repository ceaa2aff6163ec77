//! Engine benchmarks on simulated networks (`cargo bench -p machnet-sim`).
//!
//! (a) 64-byte messages from one single-engine host to another over a lossless, zero-delay
//!     network, with at most 32 messages sent but not yet read (the C++ Machnet's window), in
//!     two harnesses:
//!     - `engine_pair`: the two engines wired directly to each other (a datagram goes from one
//!       engine's `poll_transmit` buffer straight into the other's `handle_datagram`). Almost all
//!       of the time is spent inside engine calls, so this approximates the engine's own cost.
//!     - `simulator`: the full `Network` + `Workload` path (priority queue, RSS hashing, copies,
//!       content generation and verification). The difference to `engine_pair` is simulator
//!       overhead.
//!     Both engines run on one thread, so a message costs one sender-side and one receiver-side
//!     pass on the same core. With each engine on its own core, each core does only half of that
//!     work: the per-core rate is about **2 × the measured messages per second**; the summary
//!     prints both.
//! (b) RSS-- setup cost: handshake packets (SYNs + SYN-ACKs) per connection for 1…8 engines on
//!     each side, averaged over 128 setups each. This is a count, not a timing, and is printed as
//!     a table before the timings.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant as WallInstant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use machnet_core::rss::spray_batch;
use machnet_core::{
    ChecksumMode, DatagramMut, Engine, EngineConfig, Event, FlowId, Instant, SendError,
};
use machnet_sim::workload::SizeMix;
use machnet_sim::{handshake, CloseMode, NetworkBuilder, Workload, WorkloadConfig};

const WINDOW: u64 = 32;
const MESSAGE_LEN: usize = 64;
const BIG_MESSAGE_LEN: usize = 64 << 10;
const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 7000;

/// Two engines joined back to back.
struct EnginePair {
    a: Engine,
    b: Engine,
    fa: FlowId,
    fb: FlowId,
    now: Instant,
    buf: Vec<u8>,
    msg: Bytes,
}

/// Moves every datagram `from` wants to send into `to`; returns how many.
fn shuttle(
    from: &mut Engine,
    from_ip: Ipv4Addr,
    to: &mut Engine,
    now: Instant,
    buf: &mut [u8],
) -> usize {
    let mut n = 0;
    while let Some(t) = from.poll_transmit(now, buf) {
        // As the sidecar does: the receiver may open a sealed packet in place.
        to.handle_datagram_mut(
            now,
            DatagramMut {
                remote_ip: from_ip,
                src_port: t.src_port,
                dst_port: t.dst_port,
                payload: &mut buf[..t.len],
            },
        );
        n += 1;
    }
    n
}

/// Engine configurations of `A` and `B` with `checksum`, both encrypted (each allowing the
/// other) if `encrypted`.
fn pair_configs(encrypted: bool, checksum: ChecksumMode) -> (EngineConfig, EngineConfig) {
    use machnet_core::seal::{Encryption, PeerKey, StaticKey};
    use std::sync::Arc;
    let (mut ca, mut cb) = (EngineConfig::new(A, 0, 1), EngineConfig::new(B, 0, 1));
    (ca.checksum, cb.checksum) = (checksum, checksum);
    if encrypted {
        let (ka, kb) = (StaticKey::generate(), StaticKey::generate());
        let peer = |ip, key: &StaticKey| {
            vec![PeerKey {
                ip,
                public: key.public(),
            }]
        };
        cb.encryption = Some(Arc::new(Encryption::new(kb.clone(), peer(A, &ka))));
        ca.encryption = Some(Arc::new(Encryption::new(ka, peer(B, &kb))));
    }
    (ca, cb)
}

impl EnginePair {
    fn new() -> Self {
        Self::with(MESSAGE_LEN, false, ChecksumMode::Always)
    }

    /// A pair sending messages of `len` bytes, optionally encrypted (PROTOCOL.md §12).
    fn with(len: usize, encrypted: bool, checksum: ChecksumMode) -> Self {
        let (ca, cb) = pair_configs(encrypted, checksum);
        let mut a = Engine::new(ca, 1).expect("valid config");
        let mut b = Engine::new(cb, 2).expect("valid config");
        b.listen(PORT).expect("listen");
        let now = Instant::ZERO;
        let fa = a.connect(now, B, PORT).expect("connect");
        let mut buf = vec![0u8; usize::from(a.config().max_udp_payload)];
        let mut fb = None;
        for _ in 0..10 {
            shuttle(&mut a, A, &mut b, now, &mut buf);
            shuttle(&mut b, B, &mut a, now, &mut buf);
            while let Some(ev) = b.poll_event() {
                if let Event::Accepted { flow, .. } = ev {
                    fb = Some(flow);
                }
            }
            while a.poll_event().is_some() {}
        }
        let fb = fb.expect("handshake completes on a perfect link");
        EnginePair {
            a,
            b,
            fa,
            fb,
            now,
            buf,
            msg: Bytes::from(vec![0x5a; len]),
        }
    }

    fn advance(&mut self) {
        self.now += Duration::from_micros(1);
        let now = self.now;
        for e in [&mut self.a, &mut self.b] {
            if e.poll_timeout().is_some_and(|t| t <= now) {
                e.handle_timeout(now);
            }
        }
    }

    /// Sends `n` messages from `a` to `b`, at most [`WINDOW`] unread at a time.
    fn transfer(&mut self, n: u64) {
        let (mut sent, mut read) = (0u64, 0u64);
        while read < n {
            while sent < n && sent - read < WINDOW {
                match self.a.send(self.now, self.fa, self.msg.clone()) {
                    Ok(()) => sent += 1,
                    Err(SendError::BufferFull) => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
            let moved = shuttle(&mut self.a, A, &mut self.b, self.now, &mut self.buf);
            while let Some(ev) = self.b.poll_event() {
                if let Event::Readable { .. } = ev {
                    while let Ok(Some(_)) = self.b.recv(self.fb) {
                        read += 1;
                    }
                }
            }
            let back = shuttle(&mut self.b, B, &mut self.a, self.now, &mut self.buf);
            while self.a.poll_event().is_some() {}
            if moved + back == 0 {
                self.advance();
            }
        }
        // Let the last acknowledgements settle so the next batch starts from an idle flow.
        shuttle(&mut self.b, B, &mut self.a, self.now, &mut self.buf);
    }
}

/// Sends `n` messages through the full simulator and workload.
fn simulate(n: u64) {
    let mut net = NetworkBuilder::new(7)
        .host(1)
        .host(1)
        .build()
        .expect("network");
    let mut config = WorkloadConfig::between(&net, 7, 0, 1, 1, 0);
    config.messages = [n, 0];
    config.sizes = SizeMix::fixed(MESSAGE_LEN as u32);
    config.max_outstanding = Some(WINDOW);
    config.close = CloseMode::Never;
    let mut wl = Workload::new(config, &net);
    wl.run(&mut net).unwrap_or_else(|e| panic!("{e}"));
}

fn rss_table() {
    println!("RSS-- handshake packets per connection setup (SYNs + SYN-ACKs, 128 setups each, peer known)");
    print!("client\\server");
    for es in 1..=8 {
        print!("{es:>7}");
    }
    println!();
    for ec in 1..=8u16 {
        print!("{ec:>13}");
        for es in 1..=8u16 {
            let cost = handshake::measure(u64::from(ec * 16 + es), ec, es, false, true, 128)
                .unwrap_or_else(|e| panic!("{e}"));
            print!("{:>7.2}", cost.per_setup());
        }
        println!();
    }
    println!("n×n, one round (paper: 2 × spray batch; 25 and 55 for 4 and 8 engines, rounded down there):");
    for n in 1..=8u16 {
        print!("  {n}×{n}: {}", 2 * spray_batch(n, 0.95));
    }
    println!();
    println!("with the RSS oracle (SYN-ACK batch of 1):");
    for n in [2u16, 4, 8] {
        let cost = handshake::measure(u64::from(n), n, n, true, true, 128)
            .unwrap_or_else(|e| panic!("{e}"));
        print!("  {n}×{n}: {:.2}", cost.per_setup());
    }
    println!("\n");
}

fn summary() {
    const N: u64 = 1_000_000;
    let mut pair = EnginePair::new();
    pair.transfer(10_000);
    let t = WallInstant::now();
    pair.transfer(N);
    let direct = N as f64 / t.elapsed().as_secs_f64();
    let t = WallInstant::now();
    simulate(N / 4);
    let sim = (N / 4) as f64 / t.elapsed().as_secs_f64();
    println!("64 B messages, window {WINDOW}, one thread running both engines:");
    println!(
        "  engine pair: {:>10.0} msg/s  (≈ {:.0} msg/s per engine core)",
        direct,
        2.0 * direct
    );
    println!(
        "  simulator:   {:>10.0} msg/s  (includes simulator and verification overhead)\n",
        sim
    );
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("64B_window32");
    group.throughput(Throughput::Elements(1));
    group.bench_function("engine_pair", |bench| {
        let mut pair = EnginePair::new();
        bench.iter_custom(|iters| {
            let t = WallInstant::now();
            pair.transfer(iters);
            t.elapsed()
        });
    });
    group.bench_function("simulator", |bench| {
        bench.iter_custom(|iters| {
            let t = WallInstant::now();
            simulate(iters);
            t.elapsed()
        });
    });
    group.finish();
    // Encryption's cost where it shows most: 64 KiB messages (46 full fragments each), the same
    // pair plaintext and encrypted, and a memcpy of the same bytes as the floor. Checksums as in
    // the sidecar: left to the datapath (UDP), not CRC32C in the engine.
    let mut group = c.benchmark_group("64KiB_window32");
    group.throughput(Throughput::Bytes(BIG_MESSAGE_LEN as u64));
    for (name, encrypted) in [
        ("engine_pair_plain", false),
        ("engine_pair_encrypted", true),
    ] {
        group.bench_function(name, |bench| {
            let mut pair = EnginePair::with(BIG_MESSAGE_LEN, encrypted, ChecksumMode::Datapath);
            bench.iter_custom(|iters| {
                let t = WallInstant::now();
                pair.transfer(iters);
                t.elapsed()
            });
        });
    }
    group.bench_function("memcpy", |bench| {
        let src = vec![0x5au8; BIG_MESSAGE_LEN];
        let mut dst = vec![0u8; BIG_MESSAGE_LEN];
        bench.iter(|| {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
        });
    });
    group.finish();
}

fn main() {
    rss_table();
    summary();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
}
