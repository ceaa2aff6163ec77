//! The client library against a fake sidecar (tests/support): real control socket, real sealed
//! memfd and eventfds, the engine side played by machnet-core's rings.

mod support;

use std::io::IoSlice;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use machnet::{
    AttachError, Channel, CloseCode, ConnectError, ControlErrorCode, Event, ListenError, Machnet,
    OpenChannelError, RecvError, SendError,
};
use machnet_channel::control::{Request, Response};
use machnet_channel::{ChannelLayout, ConnectRequest, FlowInfo, RecordKind};
use support::{Config, Fake, FakeChannel};

const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const T: Duration = Duration::from_secs(5);

fn open(cfg: Config) -> (Machnet, Fake, Channel, FakeChannel) {
    let (m, fake) = Fake::attach(cfg);
    let ch = m.open_channel(Some(1)).expect("open channel");
    let side = fake.channel();
    (m, fake, ch, side)
}

/// Answers the next Connect request with `Connected` for `handle`.
fn answer_connect(side: &mut FakeChannel, handle: u32) -> FlowInfo {
    let (h, payload) = side.request(T).expect("connect request");
    assert_eq!(h.kind, RecordKind::Connect);
    let req = ConnectRequest::decode(&payload).unwrap();
    let info = FlowInfo {
        local_ip: support::LOCAL_IP,
        local_port: 40000,
        remote_ip: req.remote_ip,
        remote_port: req.remote_port,
    };
    side.notify(RecordKind::Connected, handle, h.aux, 0, &info.encode());
    info
}

/// Connects a flow with handle `handle` (the fake answers from another thread).
fn connect(ch: &mut Channel, side: FakeChannel, handle: u32) -> (machnet::Flow, FakeChannel) {
    let t = std::thread::spawn(move || {
        let mut side = side;
        answer_connect(&mut side, handle);
        side
    });
    let flow = ch.connect(REMOTE, 888).expect("connect");
    (flow, t.join().unwrap())
}

#[test]
fn types_have_the_documented_thread_safety() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Machnet>();
    sync::<Machnet>();
    send::<Channel>();
    send::<machnet::Flow>();
    sync::<machnet::Flow>();
}

#[test]
fn attach_reports_sidecar_info_and_opens_a_validated_channel() {
    let (m, fake, ch, _side) = open(Config::default());
    assert_eq!(m.local_ip(), support::LOCAL_IP);
    assert_eq!(m.engines(), 2);
    assert_eq!(ch.engine(), 1);
    assert_eq!(ch.max_message_len(), 16 * 1024);
    assert!(!m.is_sidecar_gone());
    match fake.requests.recv().unwrap() {
        Request::Hello { version, client } => {
            assert_eq!(version, 1);
            assert!(client.contains("machnet-rs"), "{client}");
        }
        other => panic!("first request was {other:?}"),
    }
    assert_eq!(
        fake.requests.recv().unwrap(),
        Request::OpenChannel { engine: Some(1) }
    );
    let id = ch.id();
    drop(ch);
    assert_eq!(
        fake.requests.recv_timeout(T).unwrap(),
        Request::CloseChannel {
            channel: id,
            abort: false
        },
        "dropping a channel detaches it"
    );
}

#[test]
fn attach_errors_are_explicit() {
    let refuse = Config {
        hello: Some(Response::Error {
            code: ControlErrorCode::Unauthorized,
            message: "uid 1000 is not allowed".into(),
        }),
        ..Config::default()
    };
    let (fd, _fake) = Fake::start(refuse);
    match Machnet::attach_fd(fd) {
        Err(AttachError::Refused { code, message }) => {
            assert_eq!(code, ControlErrorCode::Unauthorized);
            assert!(message.contains("uid"));
        }
        other => panic!("{other:?}"),
    }
    // The sidecar refuses before reading the hello and hangs up: its reason still comes through,
    // whether the hello was sent before or after the hang-up.
    for delay in [0u64, 20] {
        let (fd, _fake) = Fake::start(Config {
            refuse_at_accept: true,
            ..Config::default()
        });
        std::thread::sleep(Duration::from_millis(delay));
        match Machnet::attach_fd(fd) {
            Err(AttachError::Refused { code, .. }) => {
                assert_eq!(code, ControlErrorCode::Unauthorized)
            }
            other => panic!("{other:?}"),
        }
    }
    let wrong_version = Config {
        hello: Some(Response::Hello {
            version: 9,
            local_ip: support::LOCAL_IP,
            engines: 1,
            max_message_len: 100,
        }),
        ..Config::default()
    };
    let (fd, _fake) = Fake::start(wrong_version);
    assert!(matches!(
        Machnet::attach_fd(fd),
        Err(AttachError::Version { ours: 1, theirs: 9 })
    ));
    let (stream, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = Machnet::attach_fd(stream.into()).unwrap_err();
    assert!(err.to_string().contains("SOCK_SEQPACKET"), "{err}");
    let err = Machnet::attach_at("/nonexistent/machnet.sock").unwrap_err();
    assert!(matches!(err, AttachError::Connect { .. }));
    assert!(
        err.to_string().contains("/nonexistent/machnet.sock"),
        "{err}"
    );
}

#[test]
fn unusable_channel_descriptors_are_rejected_and_the_channel_given_back() {
    for (cfg, what) in [
        (
            Config {
                seal: false,
                ..Config::default()
            },
            "sealed",
        ),
        (
            Config {
                len_delta: 4096,
                ..Config::default()
            },
            "announced",
        ),
        (
            Config {
                fds: 2,
                ..Config::default()
            },
            "3 descriptors",
        ),
    ] {
        let (m, fake) = Fake::attach(cfg);
        match m.open_channel(None) {
            Err(e @ OpenChannelError::BadDescriptors(_)) => {
                assert!(e.to_string().contains(what), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let reqs: Vec<Request> = fake.requests.try_iter().collect();
        assert!(
            reqs.iter()
                .any(|r| matches!(r, Request::CloseChannel { .. })),
            "{reqs:?}"
        );
    }
}

#[test]
fn listen_maps_control_errors() {
    let (_m, fake, mut ch, _side) = open(Config::default());
    ch.listen(888).unwrap();
    assert!(matches!(
        ch.listen(support::BUSY_PORT),
        Err(ListenError::PortInUse(support::BUSY_PORT))
    ));
    ch.unlisten(888).unwrap();
    let reqs: Vec<Request> = fake.requests.try_iter().collect();
    assert!(reqs.contains(&Request::Listen {
        channel: ch.id(),
        port: 888
    }));
}

#[test]
fn connect_waits_for_its_answer_and_keeps_other_notifications() {
    let (_m, _fake, mut ch, side) = open(Config::default());
    let t = std::thread::spawn(move || {
        let mut side = side;
        let (h, payload) = side.request(T).unwrap();
        assert_eq!(h.kind, RecordKind::Connect);
        assert_eq!(
            ConnectRequest::decode(&payload).unwrap(),
            ConnectRequest {
                remote_ip: REMOTE,
                remote_port: 888
            }
        );
        // Before the answer: an accepted flow and a message on it.
        side.accept(5, 1234, 80);
        side.message(5, b"early");
        std::thread::sleep(Duration::from_millis(20));
        let info = FlowInfo {
            local_ip: support::LOCAL_IP,
            local_port: 40000,
            remote_ip: REMOTE,
            remote_port: 888,
        };
        side.notify(RecordKind::Connected, 9, h.aux, 0, &info.encode());
        side
    });
    let flow = ch.connect(REMOTE, 888).unwrap();
    let mut side = t.join().unwrap();
    assert_eq!(flow.handle(), 9);
    assert_eq!(flow.remote_ip(), REMOTE);
    assert_eq!(flow.remote_port(), 888);
    assert_eq!(flow.local_port(), 40000);
    assert_eq!(flow.remote_ip_u32(), 0x0a00_0002);
    // The buffered notifications come first, in order.
    match ch.next_event(Some(Duration::ZERO)).unwrap() {
        Some(Event::Accepted { flow, port }) => {
            assert_eq!((flow.handle(), port, flow.remote_port()), (5, 80, 1234))
        }
        other => panic!("{other:?}"),
    }
    let (f, data) = ch.recv().unwrap();
    assert_eq!((f.handle(), &data[..]), (5, &b"early"[..]));
    // And the new flow works.
    ch.send(&flow, b"hi").unwrap();
    let (h, data) = side.request(T).unwrap();
    assert_eq!(
        (h.kind, h.flow, &data[..]),
        (RecordKind::Send, 9, &b"hi"[..])
    );
    assert_eq!(ch.flows().count(), 2);
    assert_eq!(
        ch.flow_by_addrs(flow.local_addr(), flow.remote_addr()),
        Some(flow)
    );
}

#[test]
fn connect_failure_carries_the_reason() {
    let (_m, _fake, mut ch, side) = open(Config::default());
    let t = std::thread::spawn(move || {
        let mut side = side;
        let (h, _) = side.request(T).unwrap();
        side.notify(
            RecordKind::ConnectFailed,
            0,
            h.aux,
            CloseCode::Refused as u8,
            &[],
        );
        side
    });
    let err = ch.connect(REMOTE, 888).unwrap_err();
    t.join().unwrap();
    assert!(
        matches!(err, ConnectError::Failed(Some(CloseCode::Refused))),
        "{err:?}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn connect_timeout_abandons_the_request_and_aborts_a_late_flow() {
    let (_m, _fake, mut ch, mut side) = open(Config::default());
    let t0 = Instant::now();
    let err = ch
        .connect_timeout(REMOTE, 888, Duration::from_millis(50))
        .unwrap_err();
    let waited = t0.elapsed();
    assert!(matches!(err, ConnectError::TimedOut(_)), "{err:?}");
    assert!(waited >= Duration::from_millis(50) && waited < Duration::from_secs(2));
    // The sidecar answers late: the client aborts the flow nobody waits for.
    answer_connect(&mut side, 3);
    assert!(ch.try_recv().unwrap().is_none());
    let (h, _) = side.request(T).expect("abort of the abandoned flow");
    assert_eq!((h.kind, h.flow), (RecordKind::Abort, 3));
}

#[test]
fn messages_round_trip_whole_and_vectored() {
    let (_m, _fake, mut ch, side) = open(Config::default());
    let (flow, mut side) = connect(&mut ch, side, 4);
    ch.send(&flow, b"hello").unwrap();
    ch.send_vectored(
        &flow,
        &[IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")],
    )
    .unwrap();
    let big: Vec<u8> = (0..16 * 1024).map(|i| i as u8).collect();
    ch.send(&flow, &big).unwrap();
    for want in [&b"hello"[..], b"abcde", &big] {
        let (h, data) = side.request(T).unwrap();
        assert_eq!((h.kind, h.flow), (RecordKind::Send, 4));
        assert!(data == want);
    }
    side.message(4, &big);
    let (f, data) = ch.recv().unwrap();
    assert_eq!(f, flow);
    assert!(data == big);
    assert!(matches!(ch.send(&flow, b""), Err(SendError::Empty)));
    assert!(matches!(
        ch.send(&flow, &vec![0; 16 * 1024 + 1]),
        Err(SendError::TooLarge { max: 16384, .. })
    ));
}

#[test]
fn recv_into_reports_the_size_needed_and_keeps_the_message() {
    let (_m, _fake, mut ch, mut side) = open(Config::default());
    side.accept(2, 5000, 80);
    side.message(2, &[7u8; 100]);
    let mut small = [0u8; 10];
    match ch.recv_into(&mut small) {
        Err(RecvError::BufferTooSmall {
            needed: 100,
            available: 10,
        }) => {}
        other => panic!("{other:?}"),
    }
    // Still there, also for the non-blocking flavour.
    assert!(matches!(
        ch.try_recv_into(&mut small),
        Err(RecvError::BufferTooSmall { needed: 100, .. })
    ));
    let mut buf = [0u8; 128];
    let (flow, n) = ch.recv_into(&mut buf).unwrap();
    assert_eq!((flow.handle(), n), (2, 100));
    assert!(buf[..100].iter().all(|&b| b == 7));
    assert!(ch.try_recv_into(&mut buf).unwrap().is_none());
}

#[test]
fn recv_timeout_returns_in_bounded_time() {
    let (_m, _fake, mut ch, _side) = open(Config::default());
    for ms in [0u64, 1, 30] {
        let t0 = Instant::now();
        assert!(ch
            .recv_timeout(Duration::from_millis(ms))
            .unwrap()
            .is_none());
        let el = t0.elapsed();
        assert!(el >= Duration::from_millis(ms), "{el:?}");
        assert!(el < Duration::from_millis(ms + 500), "{el:?}");
    }
    assert!(ch.try_recv().unwrap().is_none());
    assert!(ch
        .next_event(Some(Duration::from_millis(5)))
        .unwrap()
        .is_none());
}

#[test]
fn a_blocked_recv_is_woken_by_a_write_from_another_thread() {
    let (_m, _fake, mut ch, side) = open(Config::default());
    let t = std::thread::spawn(move || {
        let mut side = side;
        side.accept(1, 5000, 80);
        std::thread::sleep(Duration::from_millis(100));
        let sent = Instant::now();
        side.message(1, b"wake up");
        (side, sent)
    });
    let (flow, data) = ch.recv().unwrap();
    let woke = Instant::now();
    let (_side, sent) = t.join().unwrap();
    assert_eq!((flow.handle(), &data[..]), (1, &b"wake up"[..]));
    let latency = woke.saturating_duration_since(sent);
    assert!(
        latency < Duration::from_millis(500),
        "woken after {latency:?}"
    );
}

/// A fake engine echoing every `Send` as a `Message`, sleeping with the wait protocol.
fn echo_engine(mut side: FakeChannel, count: usize) -> std::thread::JoinHandle<FakeChannel> {
    std::thread::spawn(move || {
        for _ in 0..count {
            let (h, data) = side
                .request(Duration::from_secs(20))
                .expect("request within 20 s (lost wake-up?)");
            assert_eq!(h.kind, RecordKind::Send);
            side.notify_blocking(RecordKind::Message, h.flow, &data);
        }
        side
    })
}

#[test]
fn ping_pong_100k_without_lost_wakeups() {
    let (_m, _fake, mut ch, mut side) = open(Config::default());
    side.accept(1, 5000, 80);
    let engine = echo_engine(side, 100_000);
    let mut flow = None;
    let mut buf = [0u8; 64];
    let t0 = Instant::now();
    let first = ch.next_event(Some(T)).unwrap();
    if let Some(Event::Accepted { flow: f, .. }) = first {
        flow = Some(f);
    }
    let flow = flow.expect("accepted");
    for i in 0u64..100_000 {
        ch.send(&flow, &i.to_le_bytes()).unwrap();
        let (f, n) = ch
            .recv_into_timeout(&mut buf, Duration::from_secs(20))
            .unwrap()
            .expect("echo within 20 s (lost wake-up?)");
        assert_eq!(f, flow);
        assert_eq!(&buf[..n], &i.to_le_bytes());
    }
    engine.join().unwrap();
    eprintln!(
        "100k blocking ping-pongs in {:?} ({:.1} us per round trip)",
        t0.elapsed(),
        t0.elapsed().as_secs_f64() * 1e6 / 100_000.0
    );
}

#[test]
fn busy_poll_ping_pong() {
    let (_m, _fake, mut ch, mut side) = open(Config::default());
    side.accept(1, 5000, 80);
    let engine = echo_engine(side, 10_000);
    ch.set_busy_poll(Some(Duration::from_micros(50)));
    let Some(Event::Accepted { flow, .. }) = ch.next_event(Some(T)).unwrap() else {
        panic!("accepted")
    };
    for i in 0u32..10_000 {
        ch.send(&flow, &i.to_le_bytes()).unwrap();
        let (_, data) = ch.recv().unwrap();
        assert_eq!(data, i.to_le_bytes());
    }
    engine.join().unwrap();
}

#[test]
fn send_blocks_on_a_full_ring_until_the_sidecar_consumes() {
    let cfg = Config {
        layout: ChannelLayout::new(8192, 8192, 1000).unwrap(),
        ..Config::default()
    };
    let (_m, _fake, mut ch, mut side) = open(cfg);
    side.accept(1, 5000, 80);
    let Some(Event::Accepted { flow, .. }) = ch.next_event(Some(T)).unwrap() else {
        panic!("accepted")
    };
    let msg = [1u8; 1000];
    let mut sent = 0;
    loop {
        match ch.try_send(&flow, &msg) {
            Ok(()) => sent += 1,
            Err(SendError::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(sent, 8192 / 1016);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        // Consuming one record must wake the blocked sender (space_waiting).
        side.request(T).unwrap();
        side
    });
    let t0 = Instant::now();
    ch.send(&flow, &msg).unwrap();
    let waited = t0.elapsed();
    let mut side = t.join().unwrap();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    for _ in 0..sent {
        let (h, data) = side.request(T).unwrap();
        assert_eq!((h.kind, data.len()), (RecordKind::Send, 1000));
    }
    assert!(side.request(Duration::from_millis(10)).is_none());
}

#[test]
fn closed_flows_fail_sends_with_the_reason_and_show_in_events() {
    let (_m, _fake, mut ch, mut side) = open(Config::default());
    side.accept(1, 5000, 80);
    side.message(1, b"last words");
    side.notify(RecordKind::PeerClosed, 1, 0, 0, &[]);
    side.notify(RecordKind::Closed, 1, 0, CloseCode::Reset as u8, &[]);
    side.accept(2, 5001, 80);
    side.message(2, b"other");
    // recv skips the non-message events but applies them.
    ch.set_auto_close(false);
    let (f1, d) = ch.recv().unwrap();
    assert_eq!((f1.handle(), &d[..]), (1, &b"last words"[..]));
    let (f2, d) = ch.recv().unwrap();
    assert_eq!((f2.handle(), &d[..]), (2, &b"other"[..]));
    assert_eq!(
        ch.flow_status(&f1),
        machnet::FlowStatus::Closed(Some(CloseCode::Reset))
    );
    assert_eq!(ch.flow_status(&f2), machnet::FlowStatus::Open);
    let err = ch.send(&f1, b"x").unwrap_err();
    assert!(
        matches!(err, SendError::FlowClosed(Some(CloseCode::Reset))),
        "{err:?}"
    );
    assert!(err.to_string().contains("reset"), "{err}");
    // close is graceful and idempotent; sends after it fail locally.
    ch.close(&f2).unwrap();
    ch.close(&f2).unwrap();
    assert_eq!(ch.flow_status(&f2), machnet::FlowStatus::Closing);
    assert!(matches!(ch.send(&f2, b"x"), Err(SendError::FlowClosing)));
    let (h, _) = side.request(T).unwrap();
    assert_eq!((h.kind, h.flow), (RecordKind::Close, 2));
    assert!(side.request(Duration::from_millis(10)).is_none());
    side.notify(RecordKind::Closed, 2, 0, CloseCode::Graceful as u8, &[]);
    match ch.next_event(Some(T)).unwrap() {
        Some(Event::Closed { flow, reason }) => {
            assert_eq!((flow, reason), (f2, Some(CloseCode::Graceful)))
        }
        other => panic!("{other:?}"),
    }
    ch.abort(&f2).unwrap(); // already closed: nothing to do
    assert_eq!(ch.flows().count(), 0);
}

#[test]
fn flows_of_another_channel_are_refused() {
    let (m, fake, mut a, mut side) = open(Config::default());
    let mut b = m.open_channel(None).unwrap();
    let _side_b = fake.channel();
    side.accept(1, 5000, 80);
    let Some(Event::Accepted { flow, .. }) = a.next_event(Some(T)).unwrap() else {
        panic!()
    };
    assert!(matches!(b.send(&flow, b"x"), Err(SendError::WrongChannel)));
    assert!(matches!(
        b.close(&flow),
        Err(machnet::CloseError::WrongChannel)
    ));
}

#[test]
fn the_closed_word_ends_blocked_and_later_calls() {
    let (_m, _fake, mut ch, mut side) = open(Config::default());
    side.accept(1, 5000, 80);
    let Some(Event::Accepted { flow, .. }) = ch.next_event(Some(T)).unwrap() else {
        panic!()
    };
    side.message(1, b"queued before the close");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        side.close(CloseCode::ChannelViolation);
        side
    });
    // Queued data is delivered first, then the blocked recv is woken by the close.
    assert_eq!(ch.recv().unwrap().1, b"queued before the close");
    let err = ch.recv().unwrap_err();
    let _side = t.join().unwrap();
    assert!(
        matches!(
            err,
            RecvError::ChannelClosed(Some(CloseCode::ChannelViolation))
        ),
        "{err:?}"
    );
    assert!(matches!(
        ch.send(&flow, b"x"),
        Err(SendError::ChannelClosed(Some(CloseCode::ChannelViolation)))
    ));
    assert!(matches!(
        ch.connect(REMOTE, 1),
        Err(ConnectError::ChannelClosed(_))
    ));
    assert!(ch.arm_wakeup().unwrap());
}

#[test]
fn a_dead_sidecar_ends_blocked_calls_instead_of_hanging() {
    let cfg = Config {
        layout: ChannelLayout::new(8192, 8192, 1000).unwrap(),
        ..Config::default()
    };
    let (m, mut fake, mut ch, mut side) = open(cfg);
    side.accept(1, 5000, 80);
    let Some(Event::Accepted { flow, .. }) = ch.next_event(Some(T)).unwrap() else {
        panic!()
    };
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        fake.kill();
        fake
    });
    let t0 = Instant::now();
    let err = ch.recv().unwrap_err();
    assert!(matches!(err, RecvError::SidecarGone), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));
    let _fake = killer.join().unwrap();
    assert!(m.is_sidecar_gone());
    // A send blocked on a full ring ends too.
    let err = loop {
        match ch.send(&flow, &[0u8; 1000]) {
            Ok(()) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SendError::SidecarGone), "{err:?}");
    // Non-blocking calls notice it as well.
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(ch.try_recv(), Err(RecvError::SidecarGone)));
    assert!(matches!(
        ch.listen(80),
        Err(ListenError::Request(machnet::RequestError::SidecarGone))
    ));
    assert!(matches!(ch.arm_wakeup(), Err(RecvError::SidecarGone)));
    drop(side);
}

/// The bug of issue 14: a send into a ring with room returned `Ok` after the sidecar died (the
/// message was lost). Every call that hands something to the sidecar must fail at once, with no
/// receive in between to notice the death first.
#[test]
fn after_the_sidecar_died_every_call_fails_at_once_even_with_room_in_the_ring() {
    let (m, mut fake, mut ch, mut side) = open(Config::default());
    side.accept(1, 5000, 80);
    side.message(1, b"sent before the death");
    let Some(Event::Accepted { flow, .. }) = ch.next_event(Some(T)).unwrap() else {
        panic!()
    };
    assert!(!m.is_sidecar_gone());
    ch.try_send(&flow, b"while alive")
        .expect("a live sidecar takes a send");
    fake.kill();
    // No receive, no sleep: the ring has room for every one of these.
    for e in [
        ch.try_send(&flow, b"x").unwrap_err(),
        ch.send(&flow, b"x").unwrap_err(),
        ch.try_send_vectored(&flow, &[IoSlice::new(b"a"), IoSlice::new(b"b")])
            .unwrap_err(),
        ch.send_vectored(&flow, &[IoSlice::new(b"a")]).unwrap_err(),
    ] {
        assert!(matches!(e, SendError::SidecarGone), "{e:?}");
    }
    let e = ch.connect(REMOTE, 888).unwrap_err();
    assert!(matches!(e, ConnectError::SidecarGone), "{e:?}");
    let e = ch.close(&flow).unwrap_err();
    assert!(matches!(e, machnet::CloseError::SidecarGone), "{e:?}");
    let e = ch.abort(&flow).unwrap_err();
    assert!(matches!(e, machnet::CloseError::SidecarGone), "{e:?}");
    for e in [ch.listen(81).unwrap_err(), ch.unlisten(80).unwrap_err()] {
        assert!(
            matches!(e, ListenError::Request(machnet::RequestError::SidecarGone)),
            "{e:?}"
        );
    }
    let e = m.open_channel(None).unwrap_err();
    assert!(
        matches!(
            e,
            OpenChannelError::Request(machnet::RequestError::SidecarGone)
        ),
        "{e:?}"
    );
    assert!(m.is_sidecar_gone());
    // What the sidecar delivered before it died is still handed over; then the death shows.
    let (f, data) = ch
        .try_recv()
        .unwrap()
        .expect("the message queued before the death");
    assert_eq!((f, data.as_slice()), (flow, &b"sent before the death"[..]));
    assert!(matches!(ch.try_recv(), Err(RecvError::SidecarGone)));
    // Nothing was written into the request ring after the death.
    let (h, payload) = side
        .request(Duration::ZERO)
        .expect("the send made while alive");
    assert_eq!(
        (h.kind, payload.as_slice()),
        (RecordKind::Send, &b"while alive"[..])
    );
    assert!(side.request(Duration::ZERO).is_none());
    let e = ch.close_channel().unwrap_err();
    assert!(matches!(e, machnet::RequestError::SidecarGone), "{e:?}");
}

#[test]
fn a_corrupt_ring_is_an_error_that_sticks() {
    let (_m, _fake, mut ch, side) = open(Config::default());
    side.views
        .to_app
        .control()
        .tail
        .store(1 << 40, std::sync::atomic::Ordering::SeqCst);
    side.close(CloseCode::Shutdown); // only to wake; the corrupt index is seen first
    let err = ch.recv().unwrap_err();
    assert!(matches!(err, RecvError::Corrupt(_)), "{err:?}");
    assert!(matches!(ch.try_recv(), Err(RecvError::Corrupt(_))));
}

/// Polls `fd` for input for up to `ms` milliseconds.
fn readable_within(fd: std::os::fd::RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[test]
fn arm_wakeup_makes_the_eventfd_pollable() {
    let (_m, _fake, mut ch, side) = open(Config::default());
    assert!(!ch.arm_wakeup().unwrap());
    let fd = ch.as_raw_fd();
    let t = std::thread::spawn(move || {
        let mut side = side;
        std::thread::sleep(Duration::from_millis(30));
        side.accept(1, 5000, 80);
        side
    });
    assert!(readable_within(fd, 5000), "the eventfd became readable");
    let _side = t.join().unwrap();
    assert!(matches!(
        ch.next_event(Some(Duration::ZERO)).unwrap(),
        Some(Event::Accepted { .. })
    ));
}

#[test]
fn arm_send_wakeup_makes_the_eventfd_readable_when_space_frees() {
    let cfg = Config {
        layout: ChannelLayout::new(8192, 8192, 1000).unwrap(),
        ..Config::default()
    };
    let (_m, _fake, mut ch, mut side) = open(cfg);
    side.accept(1, 5000, 80);
    let Some(Event::Accepted { flow, .. }) = ch.next_event(Some(T)).unwrap() else {
        panic!()
    };
    // Room now: no wait needed.
    assert!(ch.arm_send_wakeup(1000).unwrap());
    let mut sent = 0;
    while ch.try_send(&flow, &[7u8; 1000]).is_ok() {
        sent += 1;
    }
    assert!(sent > 0);
    assert!(!ch.arm_send_wakeup(1000).unwrap(), "the ring is full");
    let fd = ch.as_raw_fd();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        assert!(side.request(T).is_some());
        side
    });
    assert!(readable_within(fd, 5000), "the eventfd became readable");
    let _side = t.join().unwrap();
    ch.try_send(&flow, &[8u8; 1000])
        .expect("room after the wake-up");
}

#[cfg(feature = "tokio")]
mod async_tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap()
    }

    #[test]
    fn recv_async_is_woken_and_its_future_is_send() {
        let (_m, _fake, mut ch, side) = open(Config::default());
        fn is_send<T: Send>(_: &T) {}
        is_send(&ch.recv_async());
        let t = std::thread::spawn(move || {
            let mut side = side;
            side.accept(1, 5000, 80);
            for i in 0..1000u32 {
                let (h, data) = side.request(T).unwrap();
                assert_eq!(data, i.to_le_bytes());
                side.notify_blocking(RecordKind::Message, h.flow, &data);
            }
            side
        });
        rt().block_on(async {
            let Event::Accepted { flow, .. } = ch.next_event_async().await.unwrap() else {
                panic!()
            };
            for i in 0..1000u32 {
                ch.send_async(&flow, &i.to_le_bytes()).await.unwrap();
                let (f, data) = ch.recv_async().await.unwrap();
                assert_eq!((f, data), (flow, i.to_le_bytes().to_vec()));
            }
        });
        t.join().unwrap();
    }

    #[test]
    fn connect_async_and_sidecar_gone() {
        let (_m, mut fake, mut ch, side) = open(Config::default());
        let t = std::thread::spawn(move || {
            let mut side = side;
            answer_connect(&mut side, 6);
            side
        });
        let rt = rt();
        let flow = rt.block_on(ch.connect_async(REMOTE, 888)).unwrap();
        assert_eq!(flow.handle(), 6);
        let _side = t.join().unwrap();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            fake.kill();
            fake
        });
        let err = rt.block_on(ch.recv_async()).unwrap_err();
        assert!(matches!(err, RecvError::SidecarGone), "{err:?}");
        killer.join().unwrap();
    }
}

#[test]
fn message_only_receives_close_flows_whose_peer_closed() {
    let (_m, _fake, mut ch, mut side) = open(Config::default());
    side.accept(1, 5000, 80);
    side.message(1, b"bye");
    side.notify(RecordKind::PeerClosed, 1, 0, 0, &[]);
    side.accept(2, 5001, 80);
    side.message(2, b"x");
    side.notify(RecordKind::PeerClosed, 2, 0, 0, &[]);
    let (f1, _) = ch.recv().unwrap();
    // Passing over flow 1's PeerClosed closes it on our side (auto-close, the default).
    let (f2, _) = ch.recv().unwrap();
    assert_eq!(ch.flow_status(&f1), machnet::FlowStatus::Closing);
    let (h, _) = side.request(T).expect("automatic close");
    assert_eq!((h.kind, h.flow), (RecordKind::Close, 1));
    // With auto-close off, the flow stays half-open and says so.
    ch.set_auto_close(false);
    assert!(ch.try_recv().unwrap().is_none());
    assert_eq!(ch.flow_status(&f2), machnet::FlowStatus::PeerClosed);
    ch.send(&f2, b"still allowed").unwrap();
    let (h, _) = side.request(T).unwrap();
    assert_eq!((h.kind, h.flow), (RecordKind::Send, 2));
}
