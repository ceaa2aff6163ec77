//! Flow lifecycle: dead peers, simultaneous close, abort, refused connections, and a receiver
//! that stops reading (back-pressure with bounded memory).

mod common;

use std::time::Duration;

use bytes::Bytes;
use machnet_core::time::Instant;
use machnet_core::{CloseReason, EngineConfig, Event, FlowId};
use machnet_sim::content::{self, Direction, MessageId};
use machnet_sim::workload::{SizeClass, SizeMix};
use machnet_sim::{
    seed_from_env, CloseMode, EngineAddr, LinkConfig, Network, NetworkBuilder, SeedGuard, Workload,
    WorkloadConfig,
};

const PORT: u16 = 7000;

fn link() -> LinkConfig {
    LinkConfig::with_delay(Duration::from_micros(10))
}

/// Everything that happened, in order.
#[derive(Default)]
struct Log {
    events: Vec<(Instant, EngineAddr, Event)>,
}

impl Log {
    fn collect(&mut self, net: &mut Network) {
        while let Some((a, ev)) = net.poll_event() {
            self.events.push((net.now(), a, ev));
        }
    }

    fn of(&self, a: EngineAddr, flow: FlowId) -> Vec<(Instant, Event)> {
        self.events
            .iter()
            .filter(|(_, addr, ev)| *addr == a && flow_of(ev) == flow)
            .map(|&(t, _, ev)| (t, ev))
            .collect()
    }

    fn closed(&self, a: EngineAddr, flow: FlowId) -> Option<(Instant, CloseReason)> {
        self.of(a, flow).into_iter().find_map(|(t, ev)| match ev {
            Event::Closed { reason, .. } => Some((t, reason)),
            _ => None,
        })
    }
}

fn flow_of(ev: &Event) -> FlowId {
    match *ev {
        Event::Connected { flow }
        | Event::Accepted { flow, .. }
        | Event::Readable { flow }
        | Event::Writable { flow }
        | Event::PeerClosed { flow }
        | Event::Closed { flow, .. } => flow,
    }
}

/// A connected flow: (client engine, client handle, server engine, server handle).
type Conn = (EngineAddr, FlowId, EngineAddr, FlowId);

/// Listens on `server`, connects from `client` and runs until both ends are established.
fn establish(net: &mut Network, log: &mut Log, client: EngineAddr, server: EngineAddr) -> Conn {
    if net.listener(server.host, PORT).is_none() {
        net.listen(server, PORT).unwrap();
    }
    let cf = net.connect(client, server.host, PORT).unwrap();
    let deadline = net.now() + Duration::from_secs(5);
    let mut sf = None;
    let ok = net.run_until_condition(deadline, |net| {
        let start = log.events.len();
        log.collect(net);
        for &(_, a, ev) in &log.events[start..] {
            if let (true, Event::Accepted { flow, .. }) = (a == server, ev) {
                sf = Some(flow);
            }
        }
        sf.is_some()
            && log
                .of(client, cf)
                .iter()
                .any(|(_, e)| matches!(e, Event::Connected { .. }))
    });
    assert!(
        ok,
        "connection {client} → {server} not established within 5 s"
    );
    (client, cf, server, sf.expect("accepted"))
}

fn message(seed: u64, dir: Direction, index: u64, len: usize) -> Bytes {
    content::generate(
        seed,
        MessageId {
            flow_tag: 0,
            direction: dir,
            index,
        },
        len,
    )
}

/// Reads every message waiting on `flow`, verifying it as message `*next` of `dir`.
fn drain(
    net: &mut Network,
    seed: u64,
    a: EngineAddr,
    flow: FlowId,
    dir: Direction,
    lens: &[usize],
    next: &mut usize,
) {
    while let Ok(Some(m)) = net.recv(a, flow) {
        assert!(
            *next < lens.len(),
            "{a}: extra message of {} B (seed {seed})",
            m.len()
        );
        let id = MessageId {
            flow_tag: 0,
            direction: dir,
            index: *next as u64,
        };
        if let Err(e) = content::verify(seed, id, lens[*next], &m) {
            panic!("{a}: message #{next} of {dir}: {e} (seed {seed})");
        }
        *next += 1;
    }
}

/// Sends messages `*next ..` of `lens` on `flow` until the send buffer is full.
fn send_all(
    net: &mut Network,
    seed: u64,
    a: EngineAddr,
    flow: FlowId,
    dir: Direction,
    lens: &[usize],
    next: &mut usize,
) {
    while *next < lens.len() {
        match net.send(a, flow, message(seed, dir, *next as u64, lens[*next])) {
            Ok(()) => *next += 1,
            Err(machnet_core::SendError::BufferFull) => break,
            Err(e) => panic!("{a}: send failed: {e} (seed {seed})"),
        }
    }
}

// ----- dead peer -------------------------------------------------------------------------------

/// After the network stops delivering anything between the hosts, both ends must give up with
/// `TimedOut` within a bounded time, and release the flow.
fn dead_peer(seed: u64, with_data_in_flight: bool, host_down: bool) {
    let mut net = NetworkBuilder::new(seed)
        .host(2)
        .host(3)
        .link(link())
        .build()
        .unwrap();
    let mut log = Log::default();
    let (c, cf, s, sf) = establish(
        &mut net,
        &mut log,
        EngineAddr::new(0, 1),
        EngineAddr::new(1, 2),
    );
    // Some traffic first, so the flow has RTT samples.
    for i in 0..10 {
        net.send(c, cf, message(seed, Direction::ClientToServer, i, 1000))
            .unwrap();
        net.send(s, sf, message(seed, Direction::ServerToClient, i, 1000))
            .unwrap();
    }
    net.run_for(Duration::from_millis(5));
    log.collect(&mut net);
    let config = net.engine(c).config().clone();
    let t0 = net.now();
    if host_down {
        net.set_host_down(1, true);
    } else {
        net.set_link_pair(0, 1, LinkConfig::blackhole());
    }
    if with_data_in_flight {
        net.send(c, cf, message(seed, Direction::ClientToServer, 10, 50_000))
            .unwrap();
        if !host_down {
            net.send(s, sf, message(seed, Direction::ServerToClient, 10, 50_000))
                .unwrap();
        }
    }
    // Either the retransmission timer gives up or the idle timer fires; the latter bounds both.
    let bound = config.idle_timeout + config.keepalive_interval;
    let survivors: Vec<(EngineAddr, FlowId)> = if host_down {
        vec![(c, cf)]
    } else {
        vec![(c, cf), (s, sf)]
    };
    let done = net.run_until_condition(t0 + bound + Duration::from_secs(1), |net| {
        log.collect(net);
        survivors.iter().all(|&(a, f)| log.closed(a, f).is_some())
    });
    for &(a, f) in &survivors {
        let closed = log.closed(a, f);
        assert!(
            done && closed.is_some(),
            "{a}: no Closed event within {bound:?} of the peer dying (seed {seed})"
        );
        let (t, reason) = closed.unwrap_or((t0, CloseReason::Graceful));
        let after = t - t0;
        eprintln!("{a}: {reason} after {:.3} s (data in flight: {with_data_in_flight}, host down: {host_down})", after.as_secs_f64());
        assert_eq!(reason, CloseReason::TimedOut, "{a} (seed {seed})");
        assert!(
            after <= bound,
            "{a}: took {after:?}, bound {bound:?} (seed {seed})"
        );
        if with_data_in_flight && a == c {
            // The retransmission timer (at most max_retries backed-off RTOs) must fire first.
            let rto_bound = config.rto.max * (config.rto.max_retries + 1);
            assert!(
                after <= rto_bound,
                "{a}: took {after:?} with data in flight, RTO bound {rto_bound:?}"
            );
        }
    }
    // The flows are released, not leaked.
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.engine(c).flow_count(),
        0,
        "client flows left (seed {seed})"
    );
    if !host_down {
        assert_eq!(
            net.engine(s).flow_count(),
            0,
            "server flows left (seed {seed})"
        );
    }
}

#[test]
fn dead_peer_with_data_in_flight_times_out() {
    let seed = seed_from_env(0x3001);
    let _g = SeedGuard::new(seed);
    dead_peer(seed, true, false);
}

#[test]
fn dead_peer_on_idle_flow_times_out() {
    let seed = seed_from_env(0x3002);
    let _g = SeedGuard::new(seed);
    dead_peer(seed, false, false);
}

#[test]
fn crashed_host_is_detected() {
    let seed = seed_from_env(0x3003);
    let _g = SeedGuard::new(seed);
    dead_peer(seed, true, true);
    dead_peer(seed, false, true);
}

// ----- simultaneous close ----------------------------------------------------------------------

/// Both ends queue their messages and close at the same instant: each must read every message of
/// its peer, then see `PeerClosed`, then `Closed { Graceful }`, and both flows must disappear.
fn simultaneous_close(seed: u64, engines: (u16, u16), link: LinkConfig) {
    let mut net = NetworkBuilder::new(seed)
        .host(engines.0)
        .host(engines.1)
        .link(link)
        .engine_config(|_, c: &mut EngineConfig| c.rto.max_retries = 40)
        .build()
        .unwrap();
    let mut log = Log::default();
    let client = EngineAddr::new(0, engines.0 - 1);
    let server = EngineAddr::new(1, engines.1 - 1);
    let (c, cf, s, sf) = establish(&mut net, &mut log, client, server);
    let lens: Vec<usize> = (0..60)
        .map(|i| [1usize, 100, 1500, 20_000, 300_000][i % 5])
        .collect();
    let (mut c_sent, mut s_sent, mut c_read, mut s_read) = (0, 0, 0, 0);
    send_all(
        &mut net,
        seed,
        c,
        cf,
        Direction::ClientToServer,
        &lens,
        &mut c_sent,
    );
    send_all(
        &mut net,
        seed,
        s,
        sf,
        Direction::ServerToClient,
        &lens,
        &mut s_sent,
    );
    assert_eq!(
        (c_sent, s_sent),
        (lens.len(), lens.len()),
        "the messages fit in the send buffers"
    );
    net.close(c, cf).unwrap();
    net.close(s, sf).unwrap();
    let t0 = net.now();
    let mut seen = 0;
    let done = net.run_until_condition(t0 + Duration::from_secs(60), |net| {
        log.collect(net);
        for &(_, a, ev) in &log.events[seen..] {
            match (a == c, ev) {
                (true, Event::Readable { .. } | Event::PeerClosed { .. }) => drain(
                    net,
                    seed,
                    c,
                    cf,
                    Direction::ServerToClient,
                    &lens,
                    &mut c_read,
                ),
                (false, Event::Readable { .. } | Event::PeerClosed { .. }) => drain(
                    net,
                    seed,
                    s,
                    sf,
                    Direction::ClientToServer,
                    &lens,
                    &mut s_read,
                ),
                _ => {}
            }
        }
        seen = log.events.len();
        log.closed(c, cf).is_some() && log.closed(s, sf).is_some()
    });
    assert!(done, "both ends must close within 60 s (seed {seed})");
    for (a, f, read) in [(c, cf, c_read), (s, sf, s_read)] {
        assert_eq!(read, lens.len(), "{a}: messages read (seed {seed})");
        let kinds: Vec<&str> = log
            .of(a, f)
            .iter()
            .filter_map(|(_, ev)| match ev {
                Event::PeerClosed { .. } => Some("PeerClosed"),
                Event::Closed {
                    reason: CloseReason::Graceful,
                    ..
                } => Some("Closed(Graceful)"),
                Event::Closed { .. } => Some("Closed(other)"),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            ["PeerClosed", "Closed(Graceful)"],
            "{a}: close events (seed {seed})"
        );
    }
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        net.engine(c).flow_count() + net.engine(s).flow_count(),
        0,
        "flows left after linger (seed {seed})"
    );
}

#[test]
fn simultaneous_close_delivers_everything() {
    let seed = seed_from_env(0x3004);
    let _g = SeedGuard::new(seed);
    simultaneous_close(seed, (1, 1), link());
}

#[test]
fn simultaneous_close_under_loss_and_reordering() {
    let seed = seed_from_env(0x3005);
    let _g = SeedGuard::new(seed);
    let faulty = LinkConfig {
        loss: 0.1,
        duplicate: 0.02,
        jitter: Duration::from_micros(30),
        ..link()
    };
    simultaneous_close(seed, (3, 4), faulty);
}

// ----- abort -----------------------------------------------------------------------------------

/// Aborts one end of a busy flow (the server end if `by_server`); the other end must get
/// `Closed { Reset }`. With `lose_rst`, the link drops everything sent at the instant of the
/// abort — the abort's own RST included — so the peer can only learn from the answers to its
/// retransmissions, which must reach the peer engine holding the flow whatever engine RSS picks
/// for the reversed UDP pair.
fn abort(seed: u64, link: LinkConfig, engines: (u16, u16), lose_rst: bool, by_server: bool) {
    let mut net = NetworkBuilder::new(seed)
        .host(engines.0)
        .host(engines.1)
        .link(link.clone())
        .build()
        .unwrap();
    let mut log = Log::default();
    let (c, cf, s, sf) = establish(
        &mut net,
        &mut log,
        EngineAddr::new(0, 0),
        EngineAddr::new(1, engines.1 - 1),
    );
    for i in 0..20 {
        net.send(s, sf, message(seed, Direction::ServerToClient, i, 10_000))
            .unwrap();
        net.send(c, cf, message(seed, Direction::ClientToServer, i, 10_000))
            .unwrap();
    }
    net.run_for(Duration::from_micros(30));
    let ((me, mine), (peer, theirs)) = if by_server {
        ((s, sf), (c, cf))
    } else {
        ((c, cf), (s, sf))
    };
    let what = format!(
        "{}x{} abort by {}, abort RST lost: {lose_rst} (seed {seed})",
        engines.0,
        engines.1,
        if by_server { "server" } else { "client" }
    );
    if lose_rst {
        net.set_link_pair(0, 1, LinkConfig::blackhole());
    }
    net.abort(me, mine).unwrap();
    log.collect(&mut net); // flushes the aborting engine: its RST meets the link now
    if lose_rst {
        assert!(
            net.total_engine_stats().rsts_sent >= 1,
            "the abort must send an RST"
        );
        net.set_link_pair(0, 1, link);
    }
    let t0 = net.now();
    let done = net.run_until_condition(t0 + Duration::from_secs(5), |net| {
        log.collect(net);
        log.closed(peer, theirs).is_some()
    });
    assert!(
        done,
        "{what}: the peer of an aborted flow must learn within 5 s"
    );
    assert_eq!(
        log.closed(me, mine).map(|(_, r)| r),
        Some(CloseReason::Aborted),
        "{what}: aborting side"
    );
    let (t, reason) = log.closed(peer, theirs).expect("closed");
    eprintln!(
        "{what}: peer {reason} after {:.6} s",
        (t - t0).as_secs_f64()
    );
    assert_eq!(
        reason,
        CloseReason::Reset,
        "{what}: peer of the aborted flow"
    );
    assert!(
        net.recv(me, mine).is_err() && net.send(me, mine, Bytes::from_static(b"x")).is_err(),
        "{what}: dead handle"
    );
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.engine(c).flow_count() + net.engine(s).flow_count(),
        0,
        "{what}: flows left"
    );
}

#[test]
fn abort_resets_the_peer() {
    let seed = seed_from_env(0x3006);
    let _g = SeedGuard::new(seed);
    for by_server in [false, true] {
        abort(seed, link(), (1, 1), false, by_server);
        abort(seed, link(), (2, 2), false, by_server);
        abort(
            seed,
            LinkConfig {
                loss: 0.3,
                ..link()
            },
            (1, 1),
            false,
            by_server,
        );
    }
}

/// The abort's RST is lost: the peer must still be reset by the answers to its retransmissions.
#[test]
fn abort_with_lost_rst_resets_the_peer_1x1() {
    let seed = seed_from_env(0x3007);
    let _g = SeedGuard::new(seed);
    for k in 0..5 {
        for by_server in [false, true] {
            abort(
                machnet_sim::seed::derive(seed, "abort", k),
                link(),
                (1, 1),
                true,
                by_server,
            );
        }
    }
}

/// As above with several engines per host.
#[test]
fn abort_with_lost_rst_resets_the_peer_multi_engine() {
    let seed = seed_from_env(0x300a);
    let _g = SeedGuard::new(seed);
    for k in 0..5 {
        for engines in [(2, 2), (3, 5), (8, 8)] {
            for by_server in [false, true] {
                let run_seed = machnet_sim::seed::derive(seed, "abort", k);
                abort(
                    run_seed,
                    LinkConfig {
                        loss: 0.05,
                        ..link()
                    },
                    engines,
                    true,
                    by_server,
                );
            }
        }
    }
}

// ----- refused ---------------------------------------------------------------------------------

#[test]
fn connect_to_a_port_nobody_listens_on_is_refused() {
    let seed = seed_from_env(0x3008);
    let _g = SeedGuard::new(seed);
    for (ec, es) in [(1u16, 1u16), (2, 3), (8, 8)] {
        let mut net = NetworkBuilder::new(seed)
            .host(ec)
            .host(es)
            .link(link())
            .build()
            .unwrap();
        // Another port is listened on, so the host is alive and has listeners.
        net.listen(EngineAddr::new(1, 0), PORT).unwrap();
        let mut log = Log::default();
        let flows: Vec<(EngineAddr, FlowId)> = (0..ec)
            .map(|e| {
                let a = EngineAddr::new(0, e);
                (a, net.connect(a, 1, PORT + 1).unwrap())
            })
            .collect();
        let t0 = net.now();
        let done = net.run_until_condition(t0 + Duration::from_secs(5), |net| {
            log.collect(net);
            flows.iter().all(|&(a, f)| log.closed(a, f).is_some())
        });
        assert!(
            done,
            "{ec}x{es}: every connect must fail within 5 s (seed {seed})"
        );
        for &(a, f) in &flows {
            let (t, reason) = log.closed(a, f).expect("closed");
            assert_eq!(reason, CloseReason::Refused, "{ec}x{es} {a} (seed {seed})");
            assert!(
                !log.of(a, f)
                    .iter()
                    .any(|(_, e)| matches!(e, Event::Connected { .. })),
                "a refused connect must not report Connected"
            );
            eprintln!(
                "{ec}x{es} {a}: refused after {:.6} s",
                (t - t0).as_secs_f64()
            );
        }
        assert!(
            log.events.iter().all(|(_, a, _)| a.host == 0),
            "the server must not accept anything"
        );
        net.run_for(Duration::from_secs(1));
        for e in 0..ec {
            assert_eq!(
                net.engine(EngineAddr::new(0, e)).flow_count(),
                0,
                "refused flows must be released"
            );
        }
    }
}

// ----- a receiver that stops reading -----------------------------------------------------------

/// The server reads 100 messages of each flow, then stops. The client must be pushed back
/// (`BufferFull`), the memory held on the server stay bounded while the client keeps trying for
/// longer than the idle timeout, the flow stay alive, and everything arrive once reading resumes.
#[test]
fn stopped_receiver_pushes_back_and_loses_nothing() {
    let seed = seed_from_env(0x3009);
    let _g = SeedGuard::new(seed);
    const MAX_MESSAGE: usize = 256 << 10;
    const SEND_BUFFER: usize = 1 << 20;
    const RECV_BUFFER: usize = 128 << 10;
    let mut net = NetworkBuilder::new(seed)
        .host(2)
        .host(2)
        .link(LinkConfig {
            loss: 0.01,
            ..link()
        })
        .engine_config(|_, c: &mut EngineConfig| {
            c.max_message_len = MAX_MESSAGE as u32;
            c.send_buffer = SEND_BUFFER;
            c.recv_buffer = RECV_BUFFER;
        })
        .build()
        .unwrap();
    let fragment = net
        .engine(EngineAddr::new(0, 0))
        .config()
        .max_fragment_payload();
    let mut config = WorkloadConfig::between(&net, seed, 0, 1, 2, 0);
    config.messages = [3000, 50];
    config.sizes = SizeMix {
        classes: vec![
            SizeClass {
                weight: 9,
                min: 1,
                max: 4096,
            },
            SizeClass {
                weight: 1,
                min: 4097,
                max: MAX_MESSAGE as u32,
            },
        ],
        max_size_messages: 2,
        edge_sizes: true,
    };
    config.pause_reading_after = Some(100);
    config.close = CloseMode::AfterExchange;
    let mut wl = Workload::new(config, &net);
    let planned = wl.plan().total_messages();
    let t0 = net.now();
    // Memory the server may hold per flow: unread messages up to the receive buffer plus the
    // window still open when it filled, a partial message, and the reorder buffer.
    let held_bound = 3 * RECV_BUFFER + MAX_MESSAGE + 2 * fragment;
    let mut max_held = 0;
    let mut sent_at_stall = Vec::new();
    for step in 0..1500 {
        // 15 simulated seconds in 10 ms slices: longer than the 10 s idle timeout.
        let done = wl
            .run_until(&mut net, t0 + Duration::from_millis(10 * (step + 1)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!done, "cannot complete while the server does not read");
        for f in 0..wl.flow_count() {
            if let Some((a, h)) = wl.handle(f, true) {
                let held = net.engine(a).flow_held_bytes(h).expect("server flow alive");
                max_held = max_held.max(held);
                assert!(
                    held <= held_bound,
                    "flow {f}: server holds {held} B > {held_bound} (seed {seed})"
                );
            }
            let (client, server) = (wl.progress(f, false), wl.progress(f, true));
            let outstanding = client.bytes_sent - server.bytes_received;
            assert!(
                outstanding as usize <= SEND_BUFFER + held_bound,
                "flow {f}: {outstanding} B accepted but unread (seed {seed})"
            );
            assert!(
                server.received <= 100,
                "the server reads at most 100 messages while paused"
            );
        }
        if step == 499 {
            sent_at_stall = (0..wl.flow_count())
                .map(|f| wl.progress(f, false).sent)
                .collect();
        }
    }
    for (f, &stalled_at) in sent_at_stall.iter().enumerate() {
        let p = wl.progress(f, false);
        assert!(
            p.buffer_full > 0 && p.blocked,
            "flow {f}: the client must be pushed back: {p:?} (seed {seed})"
        );
        assert!(
            p.sent < 3000,
            "flow {f}: the client cannot have sent everything"
        );
        assert_eq!(
            p.sent, stalled_at,
            "flow {f}: the client kept sending into a stalled flow"
        );
        assert!(
            p.closed.is_none(),
            "flow {f}: a stalled reader must not kill the flow"
        );
    }
    eprintln!("max held while paused: {max_held} B (bound {held_bound} B)");
    wl.resume_reading(&mut net)
        .unwrap_or_else(|e| panic!("{e}"));
    let report = wl.run(&mut net).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    assert_eq!(report.messages_delivered, planned);
}

/// One application that stops reading slows only its own flow: the other flows on the same
/// engines complete while it is stalled, and it completes once it reads again.
#[test]
fn a_stopped_reader_does_not_block_other_flows() {
    let seed = seed_from_env(0x300b);
    let _g = SeedGuard::new(seed);
    let mut net = NetworkBuilder::new(seed)
        .host(1)
        .host(1)
        .link(LinkConfig {
            loss: 0.01,
            ..link()
        })
        .engine_config(|_, c: &mut EngineConfig| {
            c.max_message_len = 256 << 10;
            c.send_buffer = 1 << 20;
            c.recv_buffer = 128 << 10;
        })
        .build()
        .unwrap();
    let mut config = WorkloadConfig::between(&net, seed, 0, 1, 4, 0);
    config.messages = [2000, 200];
    config.sizes = SizeMix {
        classes: vec![
            SizeClass {
                weight: 9,
                min: 1,
                max: 4096,
            },
            SizeClass {
                weight: 1,
                min: 4097,
                max: 64 << 10,
            },
        ],
        max_size_messages: 1,
        edge_sizes: true,
    };
    config.pause_reading_after = Some(50);
    config.paused_flows = Some(vec![0]);
    let mut wl = Workload::new(config, &net);
    let t0 = net.now();
    let done = wl
        .run_until(&mut net, t0 + Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!done, "flow 0 cannot complete while its reader is stopped");
    assert!(!wl.flow_done(0));
    for f in 1..4 {
        assert!(
            wl.flow_done(f),
            "flow {f} must complete while flow 0 is stalled (seed {seed}): {}",
            wl.progress_summary()
        );
    }
    let p = wl.progress(0, false);
    assert!(
        p.blocked && p.buffer_full > 0,
        "flow 0's sender must be pushed back: {p:?}"
    );
    assert_eq!(wl.progress(0, true).received, 50);
    wl.resume_reading(&mut net)
        .unwrap_or_else(|e| panic!("{e}"));
    let report = wl.run(&mut net).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.messages_delivered, wl.plan().total_messages());
}

/// Both sides close and every message is delivered, but the acknowledgements of the server's FIN
/// are lost for a while (a 300 ms outage in the client → server direction right after the client
/// got the FIN). The client ends gracefully and lingers; the server keeps retransmitting its FIN.
/// When the outage ends, the server must still end with `Graceful`: every message was delivered
/// and both sides closed, so a `Reset` (the client having forgotten the flow) would tell the
/// server's application that something was lost when nothing was.
#[test]
fn a_lost_final_ack_does_not_turn_a_graceful_close_into_a_reset() {
    let seed = seed_from_env(0x300c);
    let _g = SeedGuard::new(seed);
    let mut net = NetworkBuilder::new(seed)
        .host(1)
        .host(1)
        .link(link())
        .build()
        .unwrap();
    let mut log = Log::default();
    let (c, cf, s, sf) = establish(
        &mut net,
        &mut log,
        EngineAddr::new(0, 0),
        EngineAddr::new(1, 0),
    );
    let lens = [100usize, 5000, 1];
    let (mut c_sent, mut s_sent, mut c_read, mut s_read) = (0, 0, 0, 0);
    send_all(
        &mut net,
        seed,
        c,
        cf,
        Direction::ClientToServer,
        &lens,
        &mut c_sent,
    );
    send_all(
        &mut net,
        seed,
        s,
        sf,
        Direction::ServerToClient,
        &lens,
        &mut s_sent,
    );
    // The client closes first; the server reads everything, sees PeerClosed, then closes.
    net.close(c, cf).unwrap();
    let t0 = net.now();
    let mut seen = 0;
    let peer_closed = net.run_until_condition(t0 + Duration::from_secs(1), |net| {
        log.collect(net);
        for &(_, a, ev) in &log.events[seen..] {
            if a == s && matches!(ev, Event::Readable { .. } | Event::PeerClosed { .. }) {
                drain(
                    net,
                    seed,
                    s,
                    sf,
                    Direction::ClientToServer,
                    &lens,
                    &mut s_read,
                );
            }
            if a == c && matches!(ev, Event::Readable { .. }) {
                drain(
                    net,
                    seed,
                    c,
                    cf,
                    Direction::ServerToClient,
                    &lens,
                    &mut c_read,
                );
            }
        }
        seen = log.events.len();
        log.of(s, sf)
            .iter()
            .any(|(_, e)| matches!(e, Event::PeerClosed { .. }))
    });
    assert!(
        peer_closed && s_read == lens.len(),
        "server must see all messages and the FIN"
    );
    // The outage starts as the server sends its FIN: nothing from the client reaches it.
    net.set_link(0, 1, LinkConfig::blackhole());
    net.close(s, sf).unwrap();
    let outage_end = net.now() + Duration::from_millis(300);
    net.run_until_condition(outage_end, |net| {
        log.collect(net);
        for &(_, a, ev) in &log.events[seen..] {
            if a == c && matches!(ev, Event::Readable { .. } | Event::PeerClosed { .. }) {
                drain(
                    net,
                    seed,
                    c,
                    cf,
                    Direction::ServerToClient,
                    &lens,
                    &mut c_read,
                );
            }
        }
        seen = log.events.len();
        false
    });
    assert_eq!(c_read, lens.len(), "client must read every message");
    assert_eq!(
        log.closed(c, cf).map(|(_, r)| r),
        Some(CloseReason::Graceful),
        "the client got the server's FIN and its own FIN was acknowledged"
    );
    assert!(
        log.closed(s, sf).is_none(),
        "the server cannot finish without an ACK of its FIN"
    );
    net.set_link(0, 1, link());
    let done = net.run_until_condition(outage_end + Duration::from_secs(10), |net| {
        log.collect(net);
        log.closed(s, sf).is_some()
    });
    assert!(done, "the server flow must end (seed {seed})");
    let (t, reason) = log.closed(s, sf).expect("closed");
    eprintln!(
        "server: {reason} {:.3} s after the outage ended",
        (t - outage_end).as_secs_f64()
    );
    assert_eq!(
        reason,
        CloseReason::Graceful,
        "server end of a completed exchange (seed {seed})"
    );
}
