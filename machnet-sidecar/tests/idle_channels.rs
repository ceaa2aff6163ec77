//! An engine carrying thousands of channels finds the few with work through their doorbells
//! (docs/CHANNEL.md §4, the engine's run list) — and loses no wake-up doing so.
//!
//! Two `machnet` processes (kernel UDP on 127.0.0.1 and 127.0.0.2, one engine each); the real
//! client library opens 4,096 channels on the client sidecar's only engine, each with a flow to
//! an echo server on the other sidecar, then sends messages one channel at a time in a seeded
//! random order, each verified byte for byte against its echo. Every message goes to a channel
//! that has been idle (and so armed) for a while; a lost wake-up shows up as an echo that never
//! comes, which fails the test after a timeout instead of hanging it.
//!
//! `MACHNET_IDLE_SEED` replays a seed (printed at the start and in every failure);
//! `MACHNET_IDLE_MESSAGES` changes the number of messages (default 100,000).

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pattern, temp_dir, Proc};
use machnet::{Channel, Event, Flow, Machnet};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 7100;
const CHANNELS: usize = 4096;
/// Small channels (rings of ~1 MiB + 8 KiB): 4,096 of them map ~8 GiB of address space per
/// process, of which only the pages touched are memory.
const MAX_MESSAGE: usize = 4096;
/// How long one echo may take before the test calls it a lost wake-up.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// Every this many messages, the server holds the echo back for a millisecond: the client's
/// channel is armed again by then, and the echo must wake it through the engine's routing of
/// the core event rather than through the app's doorbell.
const SLOW_ECHO_EVERY: u64 = 64;

/// Sidecar flags: small channels, quiet logs, the final report at shutdown (info), and a
/// connect burst of `CHANNELS` (the app connects them all as fast as it can: under the default
/// start rate, whether it passed would depend on the machine's speed).
const SIDECAR_ARGS: &[&str] = &[
    "--max-message-len",
    "4096",
    "--connect-burst-per-app",
    "4096",
    "--stats-interval",
    "0",
    "--log-level",
    "info",
];

/// Raises the soft descriptor limit to the hard one (the client side needs 2 per channel, the
/// client sidecar, which inherits the limit, 3).
fn raise_fd_limit(need: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    assert!(
        hard >= need,
        "this test needs {need} file descriptors per process; RLIMIT_NOFILE's hard limit is {hard}"
    );
}

/// The echo server: one channel accepting every flow, echoing until `stop`; counts echoes.
fn echo_server(
    sock: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let m = Machnet::attach_at(&sock).expect("attach server");
    let mut ch = m.open_channel(None).expect("server channel");
    ch.listen(PORT).expect("listen");
    std::thread::spawn(move || {
        let _m = m;
        while !stop.load(Ordering::SeqCst) {
            match ch.next_event(Some(Duration::from_millis(50))) {
                Ok(Some(Event::Message { flow, data })) => {
                    let seq = u64::from_le_bytes(data[..8].try_into().expect("8-byte header"));
                    if seq % SLOW_ECHO_EVERY == SLOW_ECHO_EVERY - 1 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    ch.send(&flow, &data).expect("echo");
                    echoed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Some(Event::PeerClosed { flow })) => {
                    let _ = ch.close(&flow);
                }
                Ok(_) => {}
                Err(e) => panic!("echo server: {e}"),
            }
        }
    })
}

/// Message `seq`: its number, then a pattern of a length that depends on it.
fn message(seq: u64, len: usize) -> Vec<u8> {
    let mut m = seq.to_le_bytes().to_vec();
    m.extend_from_slice(&pattern(seq, len - 8));
    m
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

#[test]
fn four_thousand_idle_channels_one_active_at_a_time_in_random_order() {
    let seed = env_u64("MACHNET_IDLE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    });
    let total = env_u64("MACHNET_IDLE_MESSAGES").unwrap_or(100_000);
    eprintln!(
        "idle channels: seed {seed} (replay with MACHNET_IDLE_SEED={seed}), {total} messages"
    );
    let fail = |what: String| -> ! {
        panic!("{what} (seed {seed}; replay with MACHNET_IDLE_SEED={seed})")
    };

    raise_fd_limit(3 * CHANNELS as u64 + 256);
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("idle");
    let mut client_side = Proc::start(A, 1, pool, &dir, SIDECAR_ARGS);
    let mut server_side = Proc::start(B, 1, pool, &dir, SIDECAR_ARGS);
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let server = echo_server(server_side.sock.clone(), stop.clone(), echoed.clone());

    // 4,096 channels on the client sidecar's engine, each with a flow to the echo server.
    let started = Instant::now();
    let m = Machnet::attach_at(&client_side.sock).expect("attach");
    let mut chans: Vec<(Channel, Flow)> = Vec::with_capacity(CHANNELS);
    for i in 0..CHANNELS {
        let mut ch = m
            .open_channel(Some(0))
            .unwrap_or_else(|e| fail(format!("opening channel {i}: {e}")));
        let flow = ch
            .connect_timeout(B, PORT, ECHO_TIMEOUT)
            .unwrap_or_else(|e| fail(format!("connect on channel {i}: {e}")));
        chans.push((ch, flow));
    }
    eprintln!(
        "idle channels: {CHANNELS} channels connected in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // One channel at a time, in random order; one to three messages each, window 1.
    let mut rng = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut seq = 0u64;
    let mut steps = 0u64;
    while seq < total {
        steps += 1;
        let i = rng.random_range(0..CHANNELS);
        let burst = rng.random_range(1..=3u64).min(total - seq);
        let (ch, flow) = &mut chans[i];
        for _ in 0..burst {
            let len = rng.random_range(8..=MAX_MESSAGE.min(600));
            let msg = message(seq, len);
            ch.send(flow, &msg)
                .unwrap_or_else(|e| fail(format!("send #{seq} on channel {i}: {e}")));
            match ch.next_event(Some(ECHO_TIMEOUT)) {
                Ok(Some(Event::Message { flow: f, data })) => {
                    if f != *flow || data != msg {
                        fail(format!(
                            "channel {i}: message #{seq} ({len} B) came back as {} B on {f} \
                             (expected {flow}); first bytes {:?}",
                            data.len(),
                            &data[..data.len().min(8)]
                        ));
                    }
                }
                Ok(Some(other)) => {
                    fail(format!("channel {i}: unexpected {other:?} awaiting #{seq}"))
                }
                Ok(None) => fail(format!(
                    "channel {i}: no echo of message #{seq} within {ECHO_TIMEOUT:?} — a lost \
                     wake-up (sidecar log: {})",
                    client_side.log.display()
                )),
                Err(e) => fail(format!("channel {i}: receive awaiting #{seq}: {e}")),
            }
            seq += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "idle channels: {total} messages in {steps} turns, {secs:.1} s ({:.0} msgs/s)",
        total as f64 / secs
    );

    // Exactly once: nothing more arrives anywhere, and the server echoed each message once.
    std::thread::sleep(Duration::from_millis(100));
    for (i, (ch, _)) in chans.iter_mut().enumerate() {
        match ch.next_event(Some(Duration::ZERO)) {
            Ok(None) => {}
            other => fail(format!("channel {i}: {other:?} after the last echo")),
        }
    }
    assert_eq!(echoed.load(Ordering::SeqCst), total, "server echoes");

    drop(chans);
    drop(m);
    stop.store(true, Ordering::SeqCst);
    server.join().expect("echo server");
    assert!(server_side.terminate().success(), "server sidecar exit");
    assert!(client_side.terminate().success(), "client sidecar exit");
    // The client engine's final report: requests reached it through doorbells (the channels
    // were armed between their turns), not through a walk over every channel.
    let log = client_side.log_text();
    let report = log
        .lines()
        .find(|l| l.contains("final: engine 0"))
        .unwrap_or_else(|| fail(format!("no final report in the client sidecar log:\n{log}")));
    let doorbells: u64 = report
        .split(" doorbells ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fail(format!("no doorbell count in {report:?}")));
    eprintln!("idle channels: {report}");
    assert!(
        doorbells >= steps / 2,
        "{doorbells} doorbells for {steps} turns on armed channels: {report}"
    );
}
