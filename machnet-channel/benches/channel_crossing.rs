//! Shared-memory crossing latency of a channel (docs/CHANNEL.md §3) against a plain cache-line
//! ping-pong between the same two threads, measured in the same run (PERFORMANCE.md).
//!
//! Both tests bounce a token between two busy-polling threads; the one-way latency is half the
//! round-trip time. The channel test sends a 64-byte record through the request ring and gets one
//! back through the notification ring, exactly as an application and an engine would (header
//! validation included). Run: `cargo bench -p machnet-core --bench channel_crossing`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use machnet_channel::{ChannelLayout, Consumer, Producer, RecordHeader, RecordKind};

const ROUNDS: usize = 200_000;
const WARMUP: usize = 20_000;

/// Page-aligned zeroed memory standing in for the memfd mapping.
struct Region {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}
unsafe impl Send for Region {}
unsafe impl Sync for Region {}
impl Drop for Region {
    fn drop(&mut self) {
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Round-trip times in nanoseconds of a plain cache-line ping-pong.
fn cache_line_ping_pong() -> Vec<u64> {
    #[repr(align(64))]
    struct Line(AtomicU64);
    let ping = Arc::new(Line(AtomicU64::new(0)));
    let pong = Arc::new(Line(AtomicU64::new(0)));
    let (pi, po) = (ping.clone(), pong.clone());
    let echo = std::thread::spawn(move || {
        for i in 1..=(ROUNDS + WARMUP) as u64 {
            while pi.0.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            po.0.store(i, Ordering::Release);
        }
    });
    let mut rtts = Vec::with_capacity(ROUNDS);
    for i in 1..=(ROUNDS + WARMUP) as u64 {
        let t = Instant::now();
        ping.0.store(i, Ordering::Release);
        while pong.0.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        if i as usize > WARMUP {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    echo.join().unwrap();
    rtts
}

/// Round-trip times in nanoseconds of a 64-byte record through both rings of a channel.
fn channel_ping_pong() -> Vec<u64> {
    let layout = ChannelLayout::for_messages(8 << 20, 1 << 20).unwrap();
    let alloc = std::alloc::Layout::from_size_align(layout.total_len as usize, 4096).unwrap();
    let region = Arc::new(Region {
        ptr: unsafe { std::alloc::alloc_zeroed(alloc) },
        layout: alloc,
    });
    unsafe { layout.init(region.ptr) };
    let views = unsafe { layout.views(region.ptr) };
    let max = layout.max_message_len;
    let r2 = region.clone();
    let echo = std::thread::spawn(move || {
        let _keep = r2;
        let mut requests = Consumer::new(views.to_sidecar, 0, max);
        let mut notes = Producer::new(views.to_app, 0);
        let mut buf = [0u8; 64];
        for _ in 0..ROUNDS + WARMUP {
            let rec = loop {
                if let Some(r) = requests.peek().unwrap() {
                    break r;
                }
                std::hint::spin_loop();
            };
            requests.read_payload(&rec, &mut buf);
            requests.consume(&rec);
            notes
                .push(
                    RecordHeader::new(RecordKind::Message, rec.header.flow),
                    &[&buf],
                )
                .unwrap();
        }
    });
    let mut requests = Producer::new(views.to_sidecar, 0);
    let mut notes = Consumer::new(views.to_app, 0, max);
    let payload = [7u8; 64];
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS + WARMUP {
        let t = Instant::now();
        requests
            .push(RecordHeader::new(RecordKind::Send, 1), &[&payload])
            .unwrap();
        let rec = loop {
            if let Some(r) = notes.peek().unwrap() {
                break r;
            }
            std::hint::spin_loop();
        };
        notes.read_payload(&rec, &mut buf);
        notes.consume(&rec);
        if i >= WARMUP {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    echo.join().unwrap();
    assert_eq!(buf, payload);
    rtts
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("channel_crossing: bench");
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        println!("channel_crossing: needs 2 CPUs to busy-poll on both sides; skipped");
        return;
    }
    let report = |name: &str, mut rtts: Vec<u64>| {
        rtts.sort_unstable();
        let (p50, p99) = (percentile(&rtts, 0.50), percentile(&rtts, 0.99));
        println!(
            "{name:<28} one-way p50 {:>6.1} ns  p99 {:>7.1} ns",
            p50 as f64 / 2.0,
            p99 as f64 / 2.0
        );
        p50
    };
    // Interleave to expose both to the same machine conditions.
    let base = report("cache-line ping-pong", cache_line_ping_pong());
    let chan = report("channel record (64 B)", channel_ping_pong());
    let base2 = report("cache-line ping-pong (again)", cache_line_ping_pong());
    let baseline = base.min(base2);
    println!(
        "ratio channel / cache line (p50): {:.2}x  (goal <= 1.5x; C++ original ~250 ns one-way)",
        chan as f64 / baseline as f64
    );
}
