//! The whole Machnet pipeline without a kernel network stack, against memcpy bandwidth.
//!
//! Two sidecars (1 engine each, 127.0.0.1 and 127.0.0.2) run in this process on one in-memory
//! datapath ([`MemHub`]); an app thread on sidecar A serves, an app thread on sidecar B drives one
//! flow through the real client library (`machnet`): app → request ring → engine → packets → hub
//! → engine → notification ring → app, and back for the echo. Before each configuration the same
//! process measures single-thread `copy_from_slice` bandwidth (best of five windows) at the
//! message size and at 8 MiB.
//!
//! ```sh
//! cargo run --release -p machnet-sidecar --example mem_pipeline            # all configs, both modes
//! cargo run --release -p machnet-sidecar --example mem_pipeline -- --configs 65536:8 --mode echo
//! ```
//!
//! Modes: `echo` (the server sends every message back; the client keeps `window` messages
//! outstanding) and `oneway` (the server only receives, verifies and counts, and sends a 16-byte
//! cumulative ack every `window/2` messages; the client keeps at most `window` unacked). Goodput
//! is payload one way: msgs/s × size × 8 / 1e9.
//!
//! Verification: every message carries a stamp (sequence number, length, ack interval in the
//! first 16 bytes; sequence number ^ a constant in the last 8), checked on every message with
//! the sequence order; every `--full-check-every`-th message (default 16; 1 = all) is also
//! compared byte for byte against the template. The body outside the stamps is a fixed
//! pseudo-random template written once into the send buffer, so the apps do no per-message
//! payload work besides the checks.
//!
//! Output: a table on stderr, one JSON line per configuration on stdout.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use machnet::{Channel, Event, Machnet, SendError};
use machnet_core::PortPool;
use machnet_sidecar::config::IdleMode;
use machnet_sidecar::datapath::mem::MemHub;
use machnet_sidecar::datapath::{Datapath, DEFAULT_MAX_DATAGRAM};
use machnet_sidecar::{Sidecar, SidecarConfig};

const IP_SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IP_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ECHO_PORT: u16 = 7000;
const SINK_PORT: u16 = 7001;
const MAX_SIZE: usize = 8 << 20;
const STAMP_HEAD: usize = 16;
const STAMP_TAIL: usize = 8;
const MIN_SIZE: usize = STAMP_HEAD + STAMP_TAIL;
const TAIL_XOR: u64 = 0x5a5a_1234_c3c3_9876;
const ACK_LEN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Echo,
    Oneway,
    Both,
}

/// Machnet pipeline on the in-memory datapath against memcpy bandwidth, in one process.
#[derive(Debug, Parser)]
struct Args {
    /// Configurations as size:window, comma-separated.
    #[arg(long, default_value = "64:32,8192:32,65536:8,1048576:4,8388608:2")]
    configs: String,
    /// Which traffic to run.
    #[arg(long, value_enum, default_value = "both")]
    mode: Mode,
    /// Measured seconds per configuration.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Warm-up seconds per configuration (not counted).
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    /// Seconds of copy_from_slice per memcpy figure (best of five windows).
    #[arg(long, default_value_t = 0.25)]
    memcpy_secs: f64,
    /// Compare every N-th message byte for byte (stamps are checked on all); 1 = every message.
    #[arg(long, default_value_t = 16)]
    full_check_every: u16,
    /// Engine idle mode of both sidecars (the sidecar's default is sleep).
    #[arg(long, value_enum, default_value = "sleep")]
    idle_mode: IdleMode,
    /// Sidecar --mtu (unset: the engine's default 1472-byte UDP payloads).
    #[arg(long)]
    mtu: Option<u16>,
    /// Repeat the whole set of configurations this many times.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

fn template() -> Arc<Vec<u8>> {
    Arc::new(machnet_sidecar::testing::pattern(1, MAX_SIZE))
}

/// Writes the stamps of message `seq` into `buf` (the rest of `buf` holds the template).
fn stamp(buf: &mut [u8], seq: u64, ack_every: u16, full_every: u16) {
    let n = buf.len();
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&(n as u32).to_le_bytes());
    buf[12..14].copy_from_slice(&ack_every.to_le_bytes());
    buf[14..16].copy_from_slice(&full_every.to_le_bytes());
    buf[n - STAMP_TAIL..].copy_from_slice(&(seq ^ TAIL_XOR).to_le_bytes());
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// Checks message `seq`: stamps always, the whole body if `seq` is a multiple of `full_every`.
fn check(got: &[u8], seq: u64, tmpl: &[u8], full_every: u16) -> bool {
    let n = got.len();
    if n < MIN_SIZE
        || u64_at(got, 0) != seq
        || u32::from_le_bytes(got[8..12].try_into().expect("4")) as usize != n
        || u64_at(got, n - STAMP_TAIL) != seq ^ TAIL_XOR
    {
        return false;
    }
    if seq.is_multiple_of(u64::from(full_every.max(1))) {
        return got[STAMP_HEAD..n - STAMP_TAIL] == tmpl[STAMP_HEAD..n - STAMP_TAIL];
    }
    true
}

fn start_sidecar(hub: &MemHub, ip: Ipv4Addr, sock: PathBuf, a: &Args) -> Sidecar {
    let mut c = SidecarConfig::new();
    c.local_ip = ip;
    c.engines = 1;
    c.control_socket = sock;
    c.stats_interval = None;
    c.udp_ports = PortPool {
        base: 31580,
        count: 8,
    };
    c.idle_mode = a.idle_mode;
    c.mtu = a.mtu;
    let dps: Vec<Box<dyn Datapath>> = hub
        .add_host(ip, 1, c.udp_ports, DEFAULT_MAX_DATAGRAM)
        .expect("add host to the hub")
        .into_iter()
        .map(|d| Box::new(d) as Box<dyn Datapath>)
        .collect();
    Sidecar::start_with_datapaths(c, dps).expect("sidecar starts")
}

/// The server app: echoes on ECHO_PORT; on SINK_PORT verifies, counts and acks.
fn server(sock: PathBuf, tmpl: Arc<Vec<u8>>, stop: Arc<AtomicBool>) -> Result<(), String> {
    let m = Machnet::attach_at(&sock).map_err(|e| e.to_string())?;
    let mut ch = m.open_channel(None).map_err(|e| e.to_string())?;
    ch.listen(ECHO_PORT).map_err(|e| e.to_string())?;
    ch.listen(SINK_PORT).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; MAX_SIZE];
    // Sink state of the current flow: (handle, received, mismatches).
    let mut sink = (0u32, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let Some((flow, n)) = ch
            .recv_into_timeout(&mut buf, Duration::from_millis(50))
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let res = if flow.local_port() == ECHO_PORT {
            ch.send(&flow, &buf[..n])
        } else {
            if sink.0 != flow.handle() {
                sink = (flow.handle(), 0, 0);
            }
            let msg = &buf[..n];
            let ok = n >= MIN_SIZE && check(msg, sink.1, &tmpl, u16_at(msg, 14));
            sink.2 += u64::from(!ok);
            sink.1 += 1;
            let ack_every = if n >= MIN_SIZE {
                u64::from(u16_at(msg, 12).max(1))
            } else {
                1
            };
            if sink.1.is_multiple_of(ack_every) {
                let mut ack = [0u8; ACK_LEN];
                ack[..8].copy_from_slice(&sink.1.to_le_bytes());
                ack[8..].copy_from_slice(&sink.2.to_le_bytes());
                ch.send(&flow, &ack)
            } else {
                Ok(())
            }
        };
        match res {
            Ok(()) | Err(SendError::FlowClosed(_) | SendError::FlowClosing) => {}
            Err(e) => return Err(format!("server send on {flow}: {e}")),
        }
    }
    Ok(())
}

struct RunResult {
    messages: u64,
    elapsed: f64,
    total: u64,
    mismatches: u64,
}

fn close_flow(ch: &mut Channel, flow: &machnet::Flow) {
    let _ = ch.close(flow);
    let end = Instant::now() + Duration::from_secs(1);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match ch.next_event(Some(left)) {
            Ok(Some(Event::Closed { .. })) => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

struct Load<'a> {
    size: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
    full_every: u16,
    tmpl: &'a [u8],
}

fn run_echo(ch: &mut Channel, l: &Load<'_>) -> Result<RunResult, String> {
    let flow = ch
        .connect_timeout(IP_SERVER, ECHO_PORT, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    let mut sbuf = l.tmpl[..l.size].to_vec();
    let mut rbuf = vec![0u8; l.size];
    let (mut next_send, mut next_recv) = (0u64, 0u64);
    let mut mismatches = 0u64;
    let start = Instant::now();
    let warm_end = start + l.warmup;
    let end = warm_end + l.duration;
    for _ in 0..l.window {
        stamp(&mut sbuf, next_send, 0, l.full_every);
        ch.send(&flow, &sbuf).map_err(|e| format!("send: {e}"))?;
        next_send += 1;
    }
    let (mut counted, mut first, mut last) = (0u64, None, warm_end);
    let mut now = Instant::now();
    while now < end {
        let got = ch
            .recv_into_timeout(&mut rbuf, Duration::from_secs(5))
            .map_err(|e| format!("recv: {e}"))?;
        now = Instant::now();
        let Some((_, n)) = got else {
            return Err(format!("no echo for 5 s ({next_recv} received)"));
        };
        mismatches += u64::from(!check(&rbuf[..n], next_recv, l.tmpl, l.full_every));
        next_recv += 1;
        if now >= warm_end {
            // Count from the first echo after the warm-up to the last one before the end.
            if first.is_none() {
                first = Some((now, next_recv));
            } else {
                last = now;
                counted = next_recv;
            }
        }
        if now < end {
            stamp(&mut sbuf, next_send, 0, l.full_every);
            ch.send(&flow, &sbuf).map_err(|e| format!("send: {e}"))?;
            next_send += 1;
        }
    }
    while next_recv < next_send {
        match ch.recv_into_timeout(&mut rbuf, Duration::from_secs(5)) {
            Ok(Some((_, n))) => {
                mismatches += u64::from(!check(&rbuf[..n], next_recv, l.tmpl, l.full_every));
                next_recv += 1;
            }
            Ok(None) => return Err("echoes missing after the run".into()),
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    close_flow(ch, &flow);
    let (t0, n0) = first.ok_or("no echo after the warm-up")?;
    Ok(RunResult {
        messages: counted.saturating_sub(n0),
        elapsed: last.saturating_duration_since(t0).as_secs_f64(),
        total: next_recv,
        mismatches,
    })
}

fn run_oneway(ch: &mut Channel, l: &Load<'_>) -> Result<RunResult, String> {
    let flow = ch
        .connect_timeout(IP_SERVER, SINK_PORT, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    let ack_every = if l.window.is_multiple_of(2) {
        l.window / 2
    } else {
        1
    };
    let ack_every16 = u16::try_from(ack_every).map_err(|_| "window too large")?;
    let mut sbuf = l.tmpl[..l.size].to_vec();
    let mut abuf = [0u8; ACK_LEN];
    let (mut sent, mut acked, mut server_mismatches) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    let warm_end = start + l.warmup;
    let end = warm_end + l.duration;
    let (mut first, mut last) = (None, (warm_end, 0u64));
    let mut now = Instant::now();
    while now < end {
        while sent - acked < l.window as u64 {
            stamp(&mut sbuf, sent, ack_every16, l.full_every);
            ch.send(&flow, &sbuf).map_err(|e| format!("send: {e}"))?;
            sent += 1;
        }
        let got = ch
            .recv_into_timeout(&mut abuf, Duration::from_secs(5))
            .map_err(|e| format!("recv: {e}"))?;
        now = Instant::now();
        let Some((_, n)) = got else {
            return Err(format!("no ack for 5 s ({acked} acked)"));
        };
        if n != ACK_LEN {
            return Err(format!("ack of {n} bytes"));
        }
        acked = u64_at(&abuf, 0);
        server_mismatches = u64_at(&abuf, 8);
        if now >= warm_end && now < end {
            if first.is_none() {
                first = Some((now, acked));
            } else {
                last = (now, acked);
            }
        }
    }
    // The last acks: everything up to the last multiple of the ack interval.
    let want = sent - sent % ack_every as u64;
    while acked < want {
        match ch.recv_into_timeout(&mut abuf, Duration::from_secs(5)) {
            Ok(Some((_, ACK_LEN))) => {
                acked = u64_at(&abuf, 0);
                server_mismatches = u64_at(&abuf, 8);
            }
            Ok(Some((_, n))) => return Err(format!("ack of {n} bytes")),
            Ok(None) => return Err("acks missing after the run".into()),
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
    close_flow(ch, &flow);
    let (t0, n0) = first.ok_or("no ack after the warm-up")?;
    Ok(RunResult {
        messages: last.1.saturating_sub(n0),
        elapsed: last.0.saturating_duration_since(t0).as_secs_f64(),
        total: acked,
        mismatches: server_mismatches,
    })
}

/// Single-thread `copy_from_slice` bandwidth at `size` bytes per copy, Gbit/s: the best of five
/// windows of `secs / 5` (a window in which a neighbour preempted us does not count).
fn memcpy_gbps(size: usize, tmpl: &[u8], secs: f64) -> f64 {
    let src = tmpl[..size].to_vec();
    let mut dst = vec![0u8; size];
    let batch = (1usize << 22).div_ceil(size).max(1);
    // Warm up (page faults, caches).
    for _ in 0..batch {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut copies = 0u64;
        while start.elapsed().as_secs_f64() < secs / 5.0 {
            for _ in 0..batch {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            }
            copies += batch as u64;
        }
        let gbps = copies as f64 * size as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9;
        best = best.max(gbps);
    }
    best
}

/// Payload copies one message makes in one direction (see docs/PERFORMANCE.md §14): app →
/// request ring, ring → engine buffer, → packet, → hub queue, → segment, (→ reassembly buffer
/// if the message has more than one fragment), → notification ring, → app.
fn copies_one_way(size: usize, frag: usize) -> u32 {
    if size > frag {
        8
    } else {
        7
    }
}

fn human(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

fn main() {
    let a = Args::parse();
    let configs: Vec<(usize, usize)> = a
        .configs
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (size, window) = s.trim().split_once(':').expect("size:window");
            (
                size.parse().expect("size in bytes"),
                window.parse().expect("window"),
            )
        })
        .collect();
    for &(size, window) in &configs {
        assert!(
            (MIN_SIZE..=MAX_SIZE).contains(&size) && window > 0,
            "sizes must be {MIN_SIZE}..={MAX_SIZE} bytes, windows >= 1"
        );
    }
    let modes = match a.mode {
        Mode::Both => vec![Mode::Echo, Mode::Oneway],
        m => vec![m],
    };
    let tmpl = template();
    let dir = std::env::temp_dir().join(format!("machnet-mem-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let hub = MemHub::new(machnet_sidecar::random_seed());
    let sa = start_sidecar(&hub, IP_SERVER, dir.join("a.sock"), &a);
    let sb = start_sidecar(&hub, IP_CLIENT, dir.join("b.sock"), &a);
    let mut probe = SidecarConfig::new();
    probe.mtu = a.mtu;
    let frag = probe.engine_config(0).max_fragment_payload();

    let stop = Arc::new(AtomicBool::new(false));
    let server_thread = {
        let (sock, tmpl, stop) = (sa.control_socket().to_owned(), tmpl.clone(), stop.clone());
        std::thread::Builder::new()
            .name("server-app".into())
            .spawn(move || server(sock, tmpl, stop))
            .expect("spawn")
    };
    let machnet = Machnet::attach_at(sb.control_socket()).expect("attach");
    let mut ch = machnet.open_channel(None).expect("open channel");

    eprintln!(
        "mem_pipeline: 2 sidecars x 1 engine on a MemHub, idle mode {:?}, fragment payload {frag} B, \
         {} s (+{} s warm-up) per config, full compare every {} message(s)",
        a.idle_mode, a.duration, a.warmup, a.full_check_every
    );
    eprintln!(
        "{:<7} {:>6} {:>6} {:>11} {:>9} {:>11} {:>11} {:>8} {:>7} {:>10} {:>8} {:>5}",
        "mode",
        "size",
        "window",
        "msgs/s",
        "Gbit/s",
        "memcpy@sz",
        "memcpy@8M",
        "ratio",
        "copies",
        "copy-eq",
        "eq/mcpy",
        "bad"
    );
    let mut failed = false;
    for round in 0..a.repeat {
        for &(size, window) in &configs {
            let memcpy = memcpy_gbps(size, &tmpl, a.memcpy_secs);
            let memcpy_8m = memcpy_gbps(MAX_SIZE, &tmpl, a.memcpy_secs);
            for &mode in &modes {
                let load = Load {
                    size,
                    window,
                    warmup: Duration::from_secs_f64(a.warmup),
                    duration: Duration::from_secs_f64(a.duration),
                    full_every: a.full_check_every.max(1),
                    tmpl: &tmpl,
                };
                let drops0: u64 = [&sa, &sb]
                    .iter()
                    .flat_map(|s| s.reports())
                    .map(|r| r.datapath.tx_dropped)
                    .sum();
                let res = match mode {
                    Mode::Echo => run_echo(&mut ch, &load),
                    _ => run_oneway(&mut ch, &load),
                };
                let drops: u64 = [&sa, &sb]
                    .iter()
                    .flat_map(|s| s.reports())
                    .map(|r| r.datapath.tx_dropped)
                    .sum::<u64>()
                    - drops0;
                let r = match res {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("{mode:?} {size}:{window}: FAILED: {e}");
                        failed = true;
                        continue;
                    }
                };
                let mode_name = if mode == Mode::Echo { "echo" } else { "oneway" };
                let msgs = r.messages as f64 / r.elapsed.max(1e-9);
                let gbps = msgs * size as f64 * 8.0 / 1e9;
                let copies = copies_one_way(size, frag) * if mode == Mode::Echo { 2 } else { 1 };
                let copy_eq = gbps * f64::from(copies);
                eprintln!(
                    "{:<7} {:>6} {:>6} {:>11.0} {:>9.3} {:>11.1} {:>11.1} {:>7.3}x {:>7} {:>10.2} {:>7.3}x {:>5}",
                    mode_name,
                    human(size),
                    window,
                    msgs,
                    gbps,
                    memcpy,
                    memcpy_8m,
                    gbps / memcpy,
                    copies,
                    copy_eq,
                    copy_eq / memcpy,
                    r.mismatches
                );
                println!(
                    "{}",
                    serde_json::json!({
                        "round": round,
                        "mode": mode_name,
                        "size": size,
                        "window": window,
                        "msgs_per_s": msgs,
                        "gbit_s": gbps,
                        "memcpy_gbit_s": memcpy,
                        "memcpy_8mib_gbit_s": memcpy_8m,
                        "ratio": gbps / memcpy,
                        "ratio_memcpy_8mib": gbps / memcpy_8m,
                        "payload_copies": copies,
                        "copies_equiv_gbit_s": copy_eq,
                        "copies_equiv_ratio": copy_eq / memcpy,
                        "messages": r.messages,
                        "elapsed_s": r.elapsed,
                        "total_messages": r.total,
                        "mismatches": r.mismatches,
                        "hub_drops": drops,
                        "fragment_payload": frag,
                        "idle_mode": format!("{:?}", a.idle_mode).to_lowercase(),
                        "full_check_every": a.full_check_every,
                    })
                );
                failed |= r.mismatches > 0;
            }
        }
    }
    drop(ch);
    drop(machnet);
    stop.store(true, Ordering::SeqCst);
    match server_thread.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("server: {e}");
            failed = true;
        }
        Err(_) => failed = true,
    }
    sb.shutdown();
    sa.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    if failed {
        std::process::exit(1);
    }
}
