//! Two sidecars in one process on the in-memory datapath; the "apps" drive channels directly with
//! machnet-core's Producer/Consumer (see tests/common).

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use machnet_channel::{CloseCode, RecordHeader, RecordKind};
use machnet_sidecar::config::IdleMode;
use machnet_sidecar::datapath::mem::MemHub;
use machnet_sidecar::Sidecar;

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 2);
const PORT: u16 = 7000;

struct Pair {
    _hub: MemHub,
    a: Sidecar,
    b: Sidecar,
    ca: RawClient,
    cb: RawClient,
}

fn pair(tag: &str, engines: u16, tweak: impl Fn(&mut machnet_sidecar::SidecarConfig)) -> Pair {
    pair_on(tag, MemHub::new, engines, tweak)
}

fn pair_on(
    tag: &str,
    hub: impl Fn(u64) -> MemHub,
    engines: u16,
    tweak: impl Fn(&mut machnet_sidecar::SidecarConfig),
) -> Pair {
    let seed = machnet_sidecar::random_seed();
    eprintln!("{tag}: hub seed {seed}");
    let hub = hub(seed);
    let dir = temp_dir(tag);
    let mut ca = test_config(IP_A, engines, &dir.join("a.sock"));
    let mut cb = test_config(IP_B, engines, &dir.join("b.sock"));
    tweak(&mut ca);
    tweak(&mut cb);
    let a = mem_sidecar(&hub, ca);
    let b = mem_sidecar(&hub, cb);
    let ca = RawClient::connect(a.control_socket()).unwrap();
    let cb = RawClient::connect(b.control_socket()).unwrap();
    ca.hello();
    cb.hello();
    Pair {
        _hub: hub,
        a,
        b,
        ca,
        cb,
    }
}

/// Starts an echo server on B listening on `PORT`.
fn start_echo(p: &Pair) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let ch = p.cb.open_channel(None);
    assert_eq!(
        p.cb.listen(ch.id, PORT),
        machnet_channel::control::Response::Ok
    );
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    (stop, std::thread::spawn(move || echo_server(ch, s)))
}

#[test]
fn messages_of_1_byte_to_8_mib_echo_byte_identical_in_order_then_close_gracefully() {
    let p = pair("echo", 2, |_| {});
    let (stop, server) = start_echo(&p);
    let mut app = p.ca.open_channel(None);
    let (flow, info) = app.connect(IP_B, PORT);
    assert_eq!(
        (info.local_ip, info.remote_ip, info.remote_port),
        (IP_A, IP_B, PORT)
    );

    // Each size once, one at a time.
    let max = 8 << 20;
    let sizes = [
        1usize,
        2,
        7,
        100,
        1399,
        1400,
        1472,
        4096,
        65536,
        1 << 20,
        max - 1,
        max,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        let msg = pattern(i as u64, len);
        app.send(flow, &msg);
        let n = app.expect_next();
        assert_eq!((n.kind, n.flow), (RecordKind::Message, flow));
        assert!(n.payload == msg, "message of {len} bytes altered");
    }

    pipelined(&mut app, flow, 400);

    // Close: the echo server closes back; both sides end gracefully.
    app.close_flow(flow);
    let n = app.expect_next();
    assert_eq!((n.kind, n.flow), (RecordKind::PeerClosed, flow));
    let n = app.expect_next();
    assert_eq!((n.kind, n.flow), (RecordKind::Closed, flow));
    assert_eq!(code(&n), Some(CloseCode::Graceful));
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

/// Many messages in flight (a window of 32), random sizes up to 20000 bytes: all come back
/// byte-identical and in order.
fn pipelined(app: &mut AppChannel, flow: u32, count: usize) {
    let seed = machnet_sidecar::random_seed();
    let lens: Vec<usize> = (0..count)
        .map(|i| {
            1 + (pattern(seed ^ i as u64, 4)
                .iter()
                .map(|&b| b as usize)
                .sum::<usize>()
                * 97)
                % 20000
        })
        .collect();
    let (mut sent, mut got) = (0, 0);
    let deadline = Instant::now() + WAIT * 3;
    while got < count {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: stuck at {got}/{count}"
        );
        if sent < count && sent - got < 32 {
            let msg = pattern(seed.wrapping_add(sent as u64), lens[sent]);
            let h = RecordHeader::new(RecordKind::Send, flow);
            if app.try_push(h, &msg).is_ok() {
                sent += 1;
                continue;
            }
        }
        if let Some(n) = app.next(Duration::from_millis(10)) {
            assert_eq!(n.kind, RecordKind::Message, "seed {seed}: {n:?}");
            assert!(
                n.payload == pattern(seed.wrapping_add(got as u64), lens[got]),
                "seed {seed}: message {got} altered or out of order"
            );
            got += 1;
        }
    }
}

fn echo_in_mode(tag: &str, engines: u16, mode: IdleMode, busy_poll: Duration) {
    let p = pair(tag, engines, |c| {
        c.idle_mode = mode;
        c.busy_poll = busy_poll;
    });
    let (stop, server) = start_echo(&p);
    let mut app = p.ca.open_channel(None);
    let (flow, _) = app.connect(IP_B, PORT);
    pipelined(&mut app, flow, 300);
    // Ping-pong: every exchange needs both engines to wake up from sleep.
    for i in 0..200u64 {
        let msg = pattern(i, 1 + (i as usize * 37) % 3000);
        app.send(flow, &msg);
        let n = app.expect_next();
        assert!(n.payload == msg, "exchange {i}");
    }
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn engines_that_sleep_as_soon_as_idle_lose_no_wakeups() {
    echo_in_mode("sleepy", 2, IdleMode::Sleep, Duration::ZERO);
}

#[test]
fn busy_polling_engines_work_too() {
    echo_in_mode("busy", 1, IdleMode::Busy, Duration::ZERO);
}

#[test]
fn connect_to_a_port_nobody_listens_on_fails_with_refused() {
    let p = pair("refused", 2, |_| {});
    let mut app = p.ca.open_channel(None);
    let req = app.connect_request(IP_B, 9999);
    let n = app.expect_next();
    assert_eq!((n.kind, n.aux), (RecordKind::ConnectFailed, req), "{n:?}");
    assert_eq!(code(&n), Some(CloseCode::Refused));
}

#[test]
fn request_errors_are_answered_and_the_channel_goes_on() {
    let p = pair("reqerr", 1, |_| {});
    let (stop, server) = start_echo(&p);
    let mut app = p.ca.open_channel(None);
    // Send on a flow that does not exist.
    app.send(42, b"x");
    let n = app.expect_next();
    assert_eq!(
        (n.kind, n.flow, n.aux),
        (RecordKind::RequestFailed, 42, RecordKind::Send as u32)
    );
    assert_eq!(code(&n), Some(CloseCode::UnknownFlow));
    // Connect with a malformed payload, and to an invalid address.
    let mut h = RecordHeader::new(RecordKind::Connect, 0);
    h.aux = 77;
    app.push(h, &[1, 2, 3]);
    let n = app.expect_next();
    assert_eq!((n.kind, n.aux), (RecordKind::ConnectFailed, 77));
    assert_eq!(code(&n), Some(CloseCode::InvalidRequest));
    let req = app.connect_request(Ipv4Addr::UNSPECIFIED, PORT);
    let n = app.expect_next();
    assert_eq!((n.kind, n.aux), (RecordKind::ConnectFailed, req));
    assert_eq!(code(&n), Some(CloseCode::InvalidRequest));
    // The channel still works.
    let (flow, _) = app.connect(IP_B, PORT);
    // An empty message is refused.
    app.push(RecordHeader::new(RecordKind::Send, flow), &[]);
    let n = app.expect_next();
    assert_eq!(
        (n.kind, code(&n)),
        (RecordKind::RequestFailed, Some(CloseCode::InvalidRequest))
    );
    app.send(flow, b"still alive");
    let n = app.expect_next();
    assert_eq!(
        (n.kind, n.payload.as_slice()),
        (RecordKind::Message, &b"still alive"[..])
    );
    assert_eq!(app.closed(), 0);
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn a_channel_cannot_touch_another_channels_flow() {
    let p = pair("owner", 1, |_| {});
    let (stop, server) = start_echo(&p);
    let mut owner = p.ca.open_channel(Some(0));
    let mut intruder = p.ca.open_channel(Some(0));
    let (flow, _) = owner.connect(IP_B, PORT);
    // Same engine, same handle number: the intruder's table has no such flow.
    intruder.abort_flow(flow);
    intruder.send(flow, b"injected");
    for _ in 0..2 {
        let n = intruder.expect_next();
        assert_eq!(
            (n.kind, code(&n)),
            (RecordKind::RequestFailed, Some(CloseCode::UnknownFlow))
        );
    }
    owner.send(flow, b"mine");
    let n = owner.expect_next();
    assert_eq!(
        (n.kind, n.payload.as_slice()),
        (RecordKind::Message, &b"mine"[..])
    );
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn garbage_over_a_request_ring_closes_only_that_channel() {
    let p = pair("garbage", 1, |_| {});
    let (stop, server) = start_echo(&p);
    let mut good = p.ca.open_channel(Some(0));
    let mut bad = p.ca.open_channel(Some(0));
    let (gflow, _) = good.connect(IP_B, PORT);
    let (bflow, _) = bad.connect(IP_B, PORT);
    assert_eq!(
        p.ca.listen(bad.id, 7100),
        machnet_channel::control::Response::Ok
    );

    // Scribble over the bad channel's request ring: a record header with an unknown kind,
    // published.
    let off = bad.layout.to_sidecar_offset as usize;
    bad.map[off..off + 16].copy_from_slice(&[0xAB; 16]);
    let views = unsafe { bad.layout.views(bad.map.as_mut_ptr()) };
    views.to_sidecar.control().tail.store(16, Ordering::SeqCst);
    bad.sidecar_efd.write(1).unwrap();
    assert_eq!(
        bad.wait_closed(WAIT),
        Some(CloseCode::ChannelViolation as u32)
    );
    let _ = bflow;

    // The other channel on the same engine keeps working.
    good.send(gflow, b"after the violation");
    let n = good.expect_next();
    assert_eq!(
        (n.kind, n.payload.as_slice()),
        (RecordKind::Message, &b"after the violation"[..])
    );
    assert_eq!(good.closed(), 0);

    // A tail index beyond the ring is a violation too.
    let mut bad2 = p.ca.open_channel(Some(0));
    let v2 = unsafe { bad2.layout.views(bad2.map.as_mut_ptr()) };
    v2.to_sidecar
        .control()
        .tail
        .store(u64::MAX / 2, Ordering::SeqCst);
    bad2.sidecar_efd.write(1).unwrap();
    assert_eq!(
        bad2.wait_closed(WAIT),
        Some(CloseCode::ChannelViolation as u32)
    );
    good.send(gflow, b"still");
    assert_eq!(good.expect_next().payload, b"still");

    // The engine counted both; the sidecar is healthy.
    let r = p.a.reports();
    assert_eq!(r[0].engine_loop.channel_violations, 2);
    assert!(p.a.healthy());
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn an_app_that_stops_reading_slows_only_its_sender_with_bounded_memory() {
    // Small flow buffers so the test fills them quickly.
    let p = pair("backpressure", 1, |c| {
        c.max_message_len = 1 << 20;
        c.flow_send_buffer = 2 << 20;
        c.flow_recv_buffer = 2 << 20;
    });
    let mut server = p.cb.open_channel(None);
    assert_eq!(
        p.cb.listen(server.id, PORT),
        machnet_channel::control::Response::Ok
    );
    let mut app = p.ca.open_channel(None);
    let (flow, _) = app.connect(IP_B, PORT);
    let accepted = server.expect_next();
    assert_eq!(accepted.kind, RecordKind::Accepted);
    assert_eq!(accepted.aux, u32::from(PORT));

    // The server never reads. Push 64 KiB messages until nothing moves any more: the request
    // ring stays full (the app sees back-pressure) for 300 ms while the engine reports the
    // channel stalled on the flow's full send buffer.
    let msg_len = 64 << 10;
    let mut sent = 0u64;
    let deadline = Instant::now() + WAIT;
    let mut last_progress = Instant::now();
    loop {
        assert!(
            Instant::now() < deadline,
            "sender never settled into back-pressure"
        );
        let msg = pattern(sent, msg_len);
        match app.try_push(RecordHeader::new(RecordKind::Send, flow), &msg) {
            Ok(()) => {
                sent += 1;
                last_progress = Instant::now();
            }
            Err(_) => {
                if last_progress.elapsed() > Duration::from_millis(300)
                    && p.a.reports()[0].stalled_channels == 1
                {
                    break;
                }
                let _ = app.requests.prepare_wait();
                if wait_readable(&app.app_efd, Duration::from_millis(20)) {
                    let _ = app.app_efd.read();
                }
            }
        }
        assert!(sent < 100_000, "unbounded acceptance: {sent} messages");
    }
    // Memory held on the receiving side is bounded by its buffers: the notification ring, the
    // flow's receive buffer (plus at most one window of packets), nothing else.
    let rb = p.b.reports();
    eprintln!(
        "accepted {sent} messages; receiver holds core {} sidecar {}; sender core {:?}",
        rb[0].core_held_bytes,
        rb[0].sidecar_held_bytes,
        p.a.reports()[0].flows
    );
    let ring = server.layout.to_app_capacity as usize;
    let bound = (2 << 20) + (4 << 20);
    assert!(
        rb[0].core_held_bytes + rb[0].sidecar_held_bytes <= bound,
        "receiver holds {} + {} bytes (bound {bound})",
        rb[0].core_held_bytes,
        rb[0].sidecar_held_bytes
    );
    let accepted_bytes = sent as usize * msg_len;
    assert!(
        accepted_bytes
            <= ring + bound + app.layout.to_sidecar_capacity as usize + (2 << 20) + msg_len,
        "sender accepted {accepted_bytes} bytes with a stopped reader"
    );
    assert!(
        rb[0].core_held_bytes >= 2 << 20,
        "the receiver's flow buffer is full (window closed): {} bytes",
        rb[0].core_held_bytes
    );

    // The reader resumes: every message arrives, in order, and the sender gets going again.
    let mut got = 0u64;
    let deadline = Instant::now() + WAIT * 2;
    while got < sent {
        assert!(Instant::now() < deadline, "stuck at {got}/{sent}");
        let n = server.expect_next();
        assert_eq!(n.kind, RecordKind::Message);
        assert!(n.payload == pattern(got, msg_len), "message {got} altered");
        got += 1;
    }
    app.send(flow, b"unblocked");
    let n = server.expect_next();
    assert_eq!(n.payload, b"unblocked");
}

#[test]
fn an_app_that_disconnects_has_its_messages_delivered_then_its_flows_closed() {
    let p = pair("disconnect", 2, |_| {});
    let mut server = p.cb.open_channel(None);
    assert_eq!(
        p.cb.listen(server.id, PORT),
        machnet_channel::control::Response::Ok
    );
    let client = RawClient::connect(p.a.control_socket()).unwrap();
    client.hello();
    let mut app = client.open_channel(None);
    let (flow, _) = app.connect(IP_B, PORT);
    let acc = server.expect_next();
    assert_eq!(acc.kind, RecordKind::Accepted);
    // The app sends and "exits" at once: its control connection closes with the messages
    // still in its ring (docs/CHANNEL.md §5).
    let msgs = send_32_messages(&mut app, flow, 997);
    drop(client);
    assert_eq!(app.wait_closed(WAIT), Some(CloseCode::Detached as u32));
    expect_messages_then_peer_closed(&mut server, acc.flow, &msgs);
    server.close_flow(acc.flow);
    let n = server.expect_next();
    assert_eq!((n.kind, n.flow), (RecordKind::Closed, acc.flow), "{n:?}");
    assert_eq!(code(&n), Some(CloseCode::Graceful));
}

/// A sidecar told to stop (SIGTERM) delivers what its apps sent before it exits: the peer gets
/// every message, then `PeerClosed` (docs/CHANNEL.md §5).
#[test]
fn a_stopping_sidecar_delivers_what_its_apps_sent() {
    let Pair {
        _hub,
        a,
        b: _b,
        ca,
        cb,
    } = pair("stop", 2, |_| {});
    let mut server = cb.open_channel(None);
    assert_eq!(
        cb.listen(server.id, PORT),
        machnet_channel::control::Response::Ok
    );
    let mut app = ca.open_channel(None);
    let (flow, _) = app.connect(IP_B, PORT);
    let acc = server.expect_next();
    assert_eq!(acc.kind, RecordKind::Accepted);
    let msgs = send_32_messages(&mut app, flow, 2039);
    a.shutdown();
    assert_eq!(app.wait_closed(WAIT), Some(CloseCode::Shutdown as u32));
    expect_messages_then_peer_closed(&mut server, acc.flow, &msgs);
}

/// Sends 32 messages on `flow`, message `i` of `1 + step * i` bytes `i`; returns them.
fn send_32_messages(app: &mut AppChannel, flow: u32, step: usize) -> Vec<Vec<u8>> {
    let msgs: Vec<Vec<u8>> = (0..32u8)
        .map(|i| vec![i; 1 + step * usize::from(i)])
        .collect();
    for m in &msgs {
        app.send(flow, m);
    }
    msgs
}

/// The next notifications of `server` are `msgs` on `flow`, in order, then `PeerClosed`.
fn expect_messages_then_peer_closed(server: &mut AppChannel, flow: u32, msgs: &[Vec<u8>]) {
    for (i, m) in msgs.iter().enumerate() {
        let n = server.expect_next();
        assert_eq!((n.kind, n.flow), (RecordKind::Message, flow), "message {i}");
        assert!(n.payload == *m, "message {i} differs");
    }
    let n = server.expect_next();
    assert_eq!((n.kind, n.flow), (RecordKind::PeerClosed, flow), "{n:?}");
}

#[test]
fn an_app_that_aborts_its_channel_resets_its_peers() {
    let p = pair("abort", 2, |_| {});
    let mut server = p.cb.open_channel(None);
    assert_eq!(
        p.cb.listen(server.id, PORT),
        machnet_channel::control::Response::Ok
    );
    let client = RawClient::connect(p.a.control_socket()).unwrap();
    client.hello();
    let mut app = client.open_channel(None);
    app.connect(IP_B, PORT);
    let acc = server.expect_next();
    assert_eq!(acc.kind, RecordKind::Accepted);
    assert_eq!(
        client.request(&machnet_channel::control::Request::CloseChannel {
            channel: app.id,
            abort: true,
        }),
        machnet_channel::control::Response::Ok
    );
    assert_eq!(app.wait_closed(WAIT), Some(CloseCode::Detached as u32));
    let n = server.expect_next();
    assert_eq!((n.kind, n.flow), (RecordKind::Closed, acc.flow), "{n:?}");
    assert_eq!(code(&n), Some(CloseCode::Reset));
}

#[test]
fn messages_survive_injected_loss() {
    let p = pair("loss", 2, |c| {
        c.test_loss = Some(machnet_sidecar::config::TestLoss {
            drop_rate: 0.05,
            seed: 1234,
        });
    });
    let (stop, server) = start_echo(&p);
    let mut app = p.ca.open_channel(None);
    let (flow, _) = app.connect(IP_B, PORT);
    for (i, len) in [10usize, 3000, 200_000, 1 << 20].into_iter().enumerate() {
        let msg = pattern(100 + i as u64, len);
        app.send(flow, &msg);
        let n = app.expect_next();
        assert!(
            n.kind == RecordKind::Message && n.payload == msg,
            "{len} bytes"
        );
    }
    let dropped: u64 =
        p.a.reports()
            .iter()
            .chain(p.b.reports().iter())
            .map(|r| r.datapath.injected_drops)
            .sum();
    assert!(dropped > 0, "the loss injector dropped nothing");
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn shutdown_closes_channels_with_shutdown_and_removes_the_socket() {
    let p = pair("shutdown", 1, |_| {});
    let mut ch = p.ca.open_channel(None);
    let path = p.a.control_socket().to_owned();
    assert!(path.exists());
    let Pair { a, ca, .. } = p;
    a.shutdown();
    assert_eq!(ch.wait_closed(WAIT), Some(CloseCode::Shutdown as u32));
    assert!(!path.exists(), "socket file removed");
    assert!(ca.hung_up(WAIT));
}

/// Connects 4 flows from each of A's 4 engines to B's echo server and echoes one message on
/// each; returns how many SYN-ACKs B's engines sent in all.
fn syn_acks_for_16_connections(p: &Pair) -> u64 {
    let (stop, server) = start_echo(p);
    for engine in 0..4 {
        let mut app = p.ca.open_channel(Some(engine));
        for i in 0..4u64 {
            let (flow, _) = app.connect(IP_B, PORT);
            let msg = pattern(u64::from(engine) * 10 + i, 100);
            app.send(flow, &msg);
            assert_eq!(app.expect_next().payload, msg, "echo on engine {engine}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    p.b.reports().iter().map(|r| r.core.syn_acks_sent).sum()
}

#[test]
fn a_datapath_that_reveals_its_rss_makes_connection_setup_single_packet() {
    // PROTOCOL.md §5.4: A's engines know where replies land, so they pick their UDP port and
    // B answers with exactly one SYN-ACK per connection (no spray).
    let p = pair_on("rss-oracle", MemHub::revealing_rss, 4, |_| {});
    assert_eq!(syn_acks_for_16_connections(&p), 16);
    // The same over an opaque hub sprays (RSS--): the oracle above is what made the difference.
    let p = pair("rss-opaque", 4, |_| {});
    let sprayed = syn_acks_for_16_connections(&p);
    assert!(
        sprayed > 16,
        "{sprayed} SYN-ACKs for 16 connections without an oracle"
    );
}
