//! Same-host flows (docs/CHANNEL.md "Same-host flows"): one `machnet` process on 127.0.0.1 and
//! applications (threads of this process, through the real client library) connecting to a
//! port of that same sidecar. The flows must behave as network flows do — messages whole, in
//! order, exactly once; back-pressure; close; reset — while the sidecar's datapath sends no
//! packet for them (its statistics lines show it). `--same-host-flows false` sends the same
//! traffic over UDP.
//!
//! Every test prints its seed; rerun with `MACHNET_TEST_SEED=<seed>` to repeat it.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{temp_dir, Proc, WAIT};
use machnet::{CloseCode, ConnectError, Event, Flow, Machnet, SendError};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const MIB: usize = 1 << 20;

fn seed(test: &str) -> u64 {
    let s = match std::env::var("MACHNET_TEST_SEED") {
        Ok(v) => v.parse().expect("MACHNET_TEST_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("{test}: seed {s} (rerun with MACHNET_TEST_SEED={s})");
    s
}

/// Message `seq` of length `len`: its bytes depend on the seed, the sequence number and the
/// length, so a reordered, truncated or duplicated message is noticed.
fn message(seed: u64, seq: u64, len: usize) -> Vec<u8> {
    let mut rng =
        SmallRng::seed_from_u64(seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// One sidecar process on 127.0.0.1 with `engines` engines (statistics every second).
fn sidecar(tag: &str, engines: u16, extra: &[&str]) -> (Proc, PathBuf) {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A], 8);
    let dir = temp_dir(tag);
    let p = Proc::start(A, engines, pool, &dir, extra);
    (p, dir)
}

/// The figures of one engine's latest statistics line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Figures {
    rx_pkts: u64,
    tx_pkts: u64,
    stalled: u64,
    local_flows: u64,
    local_queued: u64,
    local_connects: u64,
    local_msgs: u64,
    local_bytes: u64,
}

impl std::ops::Add for Figures {
    type Output = Figures;
    fn add(self, o: Figures) -> Figures {
        Figures {
            rx_pkts: self.rx_pkts + o.rx_pkts,
            tx_pkts: self.tx_pkts + o.tx_pkts,
            stalled: self.stalled + o.stalled,
            local_flows: self.local_flows + o.local_flows,
            local_queued: self.local_queued + o.local_queued,
            local_connects: self.local_connects + o.local_connects,
            local_msgs: self.local_msgs + o.local_msgs,
            local_bytes: self.local_bytes + o.local_bytes,
        }
    }
}

/// The number after `key` in `line`.
fn after(line: &str, key: &str) -> Option<u64> {
    line.split_once(key)?
        .1
        .split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

/// The latest statistics of each engine in a sidecar log, and how many lines were read.
fn figures(log: &str) -> (HashMap<u32, Figures>, usize) {
    let mut out = HashMap::new();
    let mut lines = 0;
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("engine ") else {
            continue;
        };
        let Some((engine, rest)) = rest.split_once(": channels ") else {
            continue;
        };
        let Ok(engine) = engine.trim().parse() else {
            continue;
        };
        let f = || -> Option<Figures> {
            let local = rest.split_once("| local flows ")?.1;
            Some(Figures {
                rx_pkts: after(rest, "| rx ")?,
                tx_pkts: after(rest, " tx ")?,
                stalled: after(rest, " stalled ")?,
                local_flows: local.split_whitespace().next()?.parse().ok()?,
                local_queued: after(local, " queued ")?,
                local_connects: after(local, " connects ")?,
                local_msgs: after(local, " msgs ")?,
                local_bytes: after(local, " bytes ")?,
            })
        };
        if let Some(f) = f() {
            out.insert(engine, f);
            lines += 1;
        }
    }
    (out, lines)
}

/// Waits for statistics lines logged after this call (of all `engines`) whose sum satisfies
/// `ok`; returns that sum.
fn wait_figures(p: &Proc, engines: u16, what: &str, ok: impl Fn(&Figures) -> bool) -> Figures {
    let (_, start) = figures(&p.log_text());
    let deadline = Instant::now() + WAIT;
    loop {
        let (stats, lines) = figures(&p.log_text());
        let sum = stats.values().fold(Figures::default(), |a, &b| a + b);
        if lines >= start + usize::from(engines) && stats.len() == usize::from(engines) && ok(&sum)
        {
            return sum;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: statistics never matched (last: {sum:?}):\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An echo server on a channel of engine `engine` listening on `port`, in its own thread,
/// until `stop`; closes a flow when its peer does. Returns the flows it accepted.
fn echo_server(
    m: &Machnet,
    engine: u16,
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Flow>> {
    let mut ch = m.open_channel(Some(engine)).expect("server channel");
    ch.listen(port).expect("listen");
    std::thread::spawn(move || {
        let mut accepted = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            match ch.next_event(Some(Duration::from_millis(20))) {
                Ok(Some(Event::Accepted { flow, .. })) => accepted.push(flow),
                Ok(Some(Event::Message { flow, data })) => ch.send(&flow, &data).expect("echo"),
                Ok(Some(Event::PeerClosed { flow })) => {
                    let _ = ch.close(&flow);
                }
                Ok(Some(Event::Closed { reason, .. })) => {
                    assert_eq!(reason, Some(CloseCode::Graceful), "server flow end")
                }
                Ok(_) => {}
                Err(e) => panic!("server: {e}"),
            }
        }
        accepted
    })
}

fn next_event(ch: &mut machnet::Channel, what: &str) -> Event {
    match ch.next_event(Some(WAIT)) {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("{what}: no event within {WAIT:?}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn expect_message(ch: &mut machnet::Channel, flow: &Flow, want: &[u8], what: &str) {
    match next_event(ch, what) {
        Event::Message { flow: f, data } => {
            assert_eq!(f, *flow, "{what}: message on another flow");
            assert!(
                data == want,
                "{what}: {} bytes received, {} sent, or content differs",
                data.len(),
                want.len()
            );
        }
        other => panic!("{what}: expected a message, got {other:?}"),
    }
}

/// Closes `flow` and waits for its graceful end (a `PeerClosed` first is fine).
fn close_gracefully(ch: &mut machnet::Channel, flow: &Flow, what: &str) {
    ch.close(flow).expect("close");
    loop {
        match next_event(ch, what) {
            Event::PeerClosed { flow: f } if f == *flow => {}
            Event::Closed { flow: f, reason } if f == *flow => {
                assert_eq!(reason, Some(CloseCode::Graceful), "{what}");
                return;
            }
            other => panic!("{what}: unexpected {other:?} while closing"),
        }
    }
}

/// Echo of 1 B … 8 MiB messages (one at a time, then a pipelined burst) between a client
/// channel on `client_engine` and a server channel on engine 0.
fn echo_run(engines: u16, client_engine: u16, same_host: bool) {
    let seed = seed("same_host_echo");
    let flag = if same_host { "true" } else { "false" };
    let (mut p, _dir) = sidecar("local-echo", engines, &["--same-host-flows", flag]);
    let m = Machnet::attach_at(&p.sock).expect("attach");
    let stop = Arc::new(AtomicBool::new(false));
    const PORT: u16 = 6100;
    let server = echo_server(&m, 0, PORT, stop.clone());
    let mut ch = m.open_channel(Some(client_engine)).expect("client channel");
    let flow = ch.connect(A, PORT).expect("connect to our own sidecar");
    assert_eq!((flow.remote_ip(), flow.remote_port()), (A, PORT));
    assert_ne!(flow.local_port(), 0);

    let mut sizes = vec![1, 2, 100, 1500, 9000, 65_536, 1 << 20, 8 << 20];
    let mut rng = SmallRng::seed_from_u64(seed);
    sizes.extend((0..20).map(|_| rng.random_range(1..=256 * 1024)));
    let mut bytes = 0u64;
    for (seq, &len) in sizes.iter().enumerate() {
        let msg = message(seed, seq as u64, len);
        ch.send(&flow, &msg).expect("send");
        expect_message(&mut ch, &flow, &msg, &format!("echo {seq} ({len} B)"));
        bytes += len as u64;
    }
    // A burst without reading in between: still in order, exactly once.
    let burst: Vec<Vec<u8>> = (0..64u64)
        .map(|i| message(seed, 1000 + i, rng.random_range(1..=64 * 1024)))
        .collect();
    for m in &burst {
        ch.send(&flow, m).expect("burst send");
    }
    for (i, m) in burst.iter().enumerate() {
        expect_message(&mut ch, &flow, m, &format!("burst {i}"));
        bytes += m.len() as u64;
    }
    close_gracefully(&mut ch, &flow, "client close");
    let msgs = (sizes.len() + burst.len()) as u64;
    // Both ends gone, and what carried the messages.
    let f = wait_figures(&p, engines, "after the echo", |f| f.local_flows == 0);
    println!("{engines} engine(s), client on engine {client_engine}, same-host {same_host}: {f:?}");
    if same_host {
        assert_eq!(f.local_connects, 1);
        assert_eq!(f.local_msgs, 2 * msgs, "both ways, exactly once");
        assert_eq!(f.local_bytes, 2 * bytes);
        assert_eq!((f.tx_pkts, f.rx_pkts), (0, 0), "no packet for a local flow");
    } else {
        assert_eq!(f.local_connects + f.local_msgs, 0);
        assert!(f.tx_pkts > 2 * msgs, "the echo went over UDP");
    }
    stop.store(true, Ordering::SeqCst);
    let accepted = server.join().expect("server");
    assert_eq!(accepted.len(), 1);
    // The 4-tuple: the server sees the client's ephemeral port as the remote one.
    let s = &accepted[0];
    assert_eq!((s.remote_ip(), s.remote_port()), (A, flow.local_port()));
    assert_eq!(s.local_port(), PORT);
    drop((ch, m));
    assert!(p.terminate().success());
}

#[test]
fn echo_over_a_local_flow_on_one_engine_is_intact_and_sends_no_packets() {
    echo_run(1, 0, true);
}

#[test]
fn echo_over_a_local_flow_across_two_engines_is_intact_and_sends_no_packets() {
    echo_run(2, 1, true);
}

#[test]
fn with_same_host_flows_off_the_same_echo_goes_over_udp() {
    echo_run(2, 1, false);
}

/// Connecting to a port of our own sidecar that nobody listens on fails as over the network
/// (with the flag on and off alike).
#[test]
fn a_connect_to_an_unlistened_local_port_is_refused() {
    for flag in ["true", "false"] {
        let (mut p, _dir) = sidecar("local-refused", 2, &["--same-host-flows", flag]);
        let m = Machnet::attach_at(&p.sock).expect("attach");
        for engine in 0..2 {
            let mut ch = m.open_channel(Some(engine)).unwrap();
            match ch.connect(A, 6200) {
                Err(ConnectError::Failed(Some(CloseCode::Refused))) => {}
                other => panic!("same-host-flows {flag}: connect to nobody: {other:?}"),
            }
        }
        drop(m);
        assert!(p.terminate().success());
    }
}

/// Either side closes after sending: the other gets every message, then `PeerClosed`; it
/// closes too and both see `Closed(Graceful)`. An abort resets the peer (after what was sent
/// before it); so does an aborted channel.
#[test]
fn local_flows_close_and_reset_as_network_flows_do() {
    let seed = seed("local_close");
    let (mut p, _dir) = sidecar("local-close", 2, &[]);
    let m = Machnet::attach_at(&p.sock).expect("attach");
    const PORT: u16 = 6300;
    let mut srv = m.open_channel(Some(1)).unwrap();
    srv.listen(PORT).unwrap();
    for (round, server_closes) in [(0u64, true), (1, false)] {
        let mut cli = m.open_channel(Some(0)).unwrap();
        let cflow = cli.connect(A, PORT).unwrap();
        let sflow = match next_event(&mut srv, "accept") {
            Event::Accepted { flow, port } => {
                assert_eq!(port, PORT);
                flow
            }
            other => panic!("expected Accepted, got {other:?}"),
        };
        let msgs: Vec<Vec<u8>> = (0..5)
            .map(|i| message(seed, round * 10 + i, 1 + (i as usize) * 300_000))
            .collect();
        let ((closer, cf), (other, of)) = if server_closes {
            ((&mut srv, &sflow), (&mut cli, &cflow))
        } else {
            ((&mut cli, &cflow), (&mut srv, &sflow))
        };
        for msg in &msgs {
            closer.send(cf, msg).unwrap();
        }
        closer.close(cf).unwrap();
        for (i, msg) in msgs.iter().enumerate() {
            expect_message(other, of, msg, &format!("round {round} message {i}"));
        }
        match next_event(other, "peer closed") {
            Event::PeerClosed { flow } => assert_eq!(flow, *of),
            other => panic!("round {round}: expected PeerClosed, got {other:?}"),
        }
        // Half-closed: the other side may still send.
        other.send(of, b"last word").unwrap();
        expect_message(closer, cf, b"last word", "after the peer's close");
        close_gracefully(other, of, "second closer");
        match next_event(closer, "first closer: the peer's close") {
            Event::PeerClosed { flow } => assert_eq!(flow, *cf),
            other => panic!("round {round}: expected PeerClosed, got {other:?}"),
        }
        match next_event(closer, "first closer's end") {
            Event::Closed { flow, reason } => {
                assert_eq!(flow, *cf);
                assert_eq!(reason, Some(CloseCode::Graceful));
            }
            other => panic!("round {round}: expected Closed, got {other:?}"),
        }
        assert!(matches!(
            closer.send(cf, b"x"),
            Err(SendError::FlowClosed(_))
        ));
    }

    // An abort: the peer sees a reset.
    let mut cli = m.open_channel(Some(0)).unwrap();
    let cflow = cli.connect(A, PORT).unwrap();
    let sflow = match next_event(&mut srv, "accept") {
        Event::Accepted { flow, .. } => flow,
        other => panic!("expected Accepted, got {other:?}"),
    };
    // What was sent before the abort still arrives, then the reset.
    cli.send(&cflow, b"before the abort").unwrap();
    cli.abort(&cflow).unwrap();
    expect_message(
        &mut srv,
        &sflow,
        b"before the abort",
        "sent before the abort",
    );
    match next_event(&mut srv, "reset") {
        Event::Closed { flow, reason } => {
            assert_eq!(flow, sflow);
            assert_eq!(reason, Some(CloseCode::Reset));
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    // An aborted channel resets its flows' peers.
    let cflow = cli.connect(A, PORT).unwrap();
    match next_event(&mut srv, "accept") {
        Event::Accepted { .. } => {}
        other => panic!("expected Accepted, got {other:?}"),
    }
    srv.abort_channel().unwrap();
    loop {
        match next_event(&mut cli, "reset by an aborted channel") {
            Event::Closed { flow, reason } if flow == cflow => {
                assert_eq!(reason, Some(CloseCode::Reset));
                break;
            }
            Event::Closed { .. } => {} // the aborted flow's own end
            other => panic!("expected a reset, got {other:?}"),
        }
    }
    drop(cli);
    let f = wait_figures(&p, 2, "all flows gone", |f| f.local_flows == 0);
    assert_eq!((f.tx_pkts, f.local_connects), (0, 4));
    drop(m);
    assert!(p.terminate().success());
}

/// A reader that stops: the writer's `try_send` reports `WouldBlock` and its `send` blocks;
/// the sidecar holds at most its per-flow cap (the flow send buffer) queued for the flow; once
/// the reader resumes everything arrives in order.
#[test]
fn a_local_reader_that_stops_holds_the_writer_back_with_bounded_queues() {
    let seed = seed("local_backpressure");
    const CAP: usize = 4 * MIB;
    let (mut p, _dir) = sidecar(
        "local-bp",
        2,
        &["--flow-send-buffer", "4MiB", "--max-message-len", "1MiB"],
    );
    let m = Machnet::attach_at(&p.sock).expect("attach");
    const PORT: u16 = 6400;
    let mut srv = m.open_channel(Some(1)).unwrap();
    srv.listen(PORT).unwrap();
    let mut cli = m.open_channel(Some(0)).unwrap();
    let flow = cli.connect(A, PORT).unwrap();
    let sflow = match next_event(&mut srv, "accept") {
        Event::Accepted { flow, .. } => flow,
        other => panic!("expected Accepted, got {other:?}"),
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let sizes: Vec<usize> = (0..200)
        .map(|_| rng.random_range(64 * 1024..=MIB))
        .collect();
    let total: usize = sizes.iter().sum();
    let accepted = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicBool::new(false));
    let sender = {
        let (accepted, blocked, sizes) = (accepted.clone(), blocked.clone(), sizes.clone());
        std::thread::spawn(move || {
            let mut would_block = 0;
            for (i, &len) in sizes.iter().enumerate() {
                let msg = message(seed, i as u64, len);
                match cli.try_send(&flow, &msg) {
                    Ok(()) => {}
                    Err(SendError::WouldBlock) => {
                        would_block += 1;
                        blocked.store(true, Ordering::SeqCst);
                        cli.send(&flow, &msg).expect("blocking send");
                        blocked.store(false, Ordering::SeqCst);
                    }
                    Err(e) => panic!("try_send {i}: {e}"),
                }
                accepted.fetch_add(len as u64, Ordering::SeqCst);
            }
            close_gracefully(&mut cli, &flow, "sender");
            would_block
        })
    };
    // The writer is held back: blocked, and the sidecar's statistics show one stalled channel
    // and at most the cap queued.
    let deadline = Instant::now() + WAIT;
    while !blocked.load(Ordering::SeqCst) {
        assert!(
            !sender.is_finished(),
            "the sender finished while nobody read"
        );
        assert!(Instant::now() < deadline, "the sender was never held back");
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = wait_figures(&p, 2, "stalled", |f| f.stalled == 1 && f.local_queued > 0);
    let at_stall = accepted.load(Ordering::SeqCst) as usize;
    println!(
        "held back after {:.1} of {:.1} MiB; queued in the sidecar {} B (cap {CAP}): {f:?}",
        at_stall as f64 / MIB as f64,
        total as f64 / MIB as f64,
        f.local_queued
    );
    assert!(f.local_queued as usize <= CAP, "queued beyond the cap");
    assert!(at_stall < total, "all accepted while nobody read");
    assert_eq!(f.tx_pkts, 0);

    // Resume: everything, in order.
    for (i, &len) in sizes.iter().enumerate() {
        expect_message(
            &mut srv,
            &sflow,
            &message(seed, i as u64, len),
            &format!("message {i}"),
        );
    }
    match next_event(&mut srv, "sender's close") {
        Event::PeerClosed { flow } => assert_eq!(flow, sflow),
        other => panic!("expected PeerClosed, got {other:?}"),
    }
    close_gracefully(&mut srv, &sflow, "receiver");
    let would_block = sender.join().expect("sender");
    assert!(would_block > 0);
    let f = wait_figures(&p, 2, "after the transfer", |f| f.local_flows == 0);
    assert_eq!((f.local_queued, f.stalled), (0, 0));
    assert_eq!(f.local_bytes, total as u64);
    drop(m);
    assert!(p.terminate().success());
}
