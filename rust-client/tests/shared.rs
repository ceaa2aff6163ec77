//! `SharedChannel` against the fake sidecar (tests/support): many threads on one channel.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use machnet::{CloseCode, Event, Flow, Machnet, RecvError, SendError, SharedChannel, SharedError};
use machnet_channel::{ChannelLayout, PushError, RecordKind};
use support::{Config, Fake, FakeChannel};

const T: Duration = Duration::from_secs(10);

fn open(cfg: Config) -> (Machnet, Fake, Arc<SharedChannel>, FakeChannel) {
    let (m, fake) = Fake::attach(cfg);
    let ch = m.open_channel(Some(0)).expect("open channel");
    let side = fake.channel();
    (m, fake, Arc::new(SharedChannel::new(ch).unwrap()), side)
}

/// Accepts flows `1..=n` on the fake side and returns the app's handles.
fn accept_flows(sh: &SharedChannel, side: &mut FakeChannel, n: u32) -> Vec<Flow> {
    (1..=n)
        .map(|h| {
            side.accept(h, 5000 + h as u16, 80);
            match sh.with(|ch| ch.next_event(Some(T))).unwrap().unwrap() {
                Some(Event::Accepted { flow, .. }) => flow,
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

fn pair(a: u32, b: u32) -> Vec<u8> {
    [a.to_le_bytes(), b.to_le_bytes()].concat()
}

fn unpair(d: &[u8]) -> (u32, u32) {
    assert_eq!(d.len(), 8, "{d:?}");
    (
        u32::from_le_bytes(d[..4].try_into().unwrap()),
        u32::from_le_bytes(d[4..].try_into().unwrap()),
    )
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: i32, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    r == 1
}

/// Interrupts `sh` until `t` (which blocks on it) has returned, and returns its result.
fn interrupt_until_done<R>(sh: &SharedChannel, t: JoinHandle<R>) -> R {
    while !t.is_finished() {
        sh.interrupt();
        std::thread::sleep(Duration::from_millis(5));
    }
    t.join().unwrap()
}

#[test]
fn a_shared_channel_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SharedChannel>();
}

#[test]
fn many_threads_receive_and_send_on_one_channel_exactly_once_in_flow_order() {
    const FLOWS: u32 = 4;
    const PER_FLOW: u32 = 400;
    const RECEIVERS: u32 = 3;
    const SENDERS: u32 = 3;
    const PER_SENDER: u32 = 400;
    // Small rings: receivers and senders both meet back-pressure and sleep.
    let cfg = Config {
        layout: ChannelLayout::new(8192, 8192, 1000).unwrap(),
        ..Config::default()
    };
    let (_m, _fake, sh, mut side) = open(cfg);
    let flows = accept_flows(&sh, &mut side, FLOWS);

    // The fake engine: publishes messages (round robin over the flows, then one "stop" per
    // receiver) as the ring allows, and consumes the senders' requests, checking each sender's
    // sequence arrives exactly once and in order.
    let engine = std::thread::spawn(move || {
        let mut out: Vec<(u32, Vec<u8>)> = (0..PER_FLOW)
            .flat_map(|seq| (1..=FLOWS).map(move |f| (f, pair(f, seq))))
            .collect();
        out.extend((0..RECEIVERS).map(|_| (1, b"stop".to_vec())));
        let mut next = 0;
        let mut expect = vec![0u32; SENDERS as usize];
        let mut received = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while next < out.len() || received < SENDERS * PER_SENDER {
            assert!(
                Instant::now() < deadline,
                "engine stalled: {next} sent, {received} got"
            );
            while let Some((f, d)) = out.get(next) {
                match side.try_notify(RecordKind::Message, *f, 0, 0, d) {
                    Ok(()) => next += 1,
                    Err(PushError::Full) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            while let Some((h, d)) = side.request(Duration::from_millis(1)) {
                assert_eq!(h.kind, RecordKind::Send);
                let (sender, seq) = unpair(&d);
                assert_eq!(h.flow, sender % FLOWS + 1);
                assert_eq!(seq, expect[sender as usize], "sender {sender}");
                expect[sender as usize] += 1;
                received += 1;
            }
        }
        side
    });

    let receivers: Vec<_> = (0..RECEIVERS)
        .map(|_| {
            let sh = sh.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let (flow, data) = sh.recv(None).unwrap().unwrap();
                    if data == b"stop" {
                        return got;
                    }
                    let (f, seq) = unpair(&data);
                    assert_eq!(flow.handle(), f);
                    got.push((f, seq));
                }
            })
        })
        .collect();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let sh = sh.clone();
            let flow = flows[(s % FLOWS) as usize];
            std::thread::spawn(move || {
                for seq in 0..PER_SENDER {
                    sh.send(&flow, &[&pair(s, seq)], None).unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let mut all: HashMap<u32, Vec<u32>> = HashMap::new();
    for r in receivers {
        let got = r.join().unwrap();
        // Each thread sees each flow's messages in order...
        let mut last: HashMap<u32, u32> = HashMap::new();
        for (f, seq) in got {
            if let Some(prev) = last.insert(f, seq) {
                assert!(seq > prev, "flow {f}: {seq} after {prev}");
            }
            all.entry(f).or_default().push(seq);
        }
    }
    // ... and together they see every message exactly once.
    for f in 1..=FLOWS {
        let mut seqs = all.remove(&f).unwrap_or_default();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..PER_FLOW).collect::<Vec<_>>(), "flow {f}");
    }
    engine.join().unwrap();
}

#[test]
fn interrupt_ends_the_calls_sleeping_then_and_not_later_ones() {
    let (_m, _fake, sh, mut side) = open(Config::default());
    let sleepers: Vec<_> = (0..3)
        .map(|_| {
            let sh = sh.clone();
            std::thread::spawn(move || sh.recv(None))
        })
        .collect();
    let ev = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.next_event(None))
    };
    for t in sleepers {
        let r = interrupt_until_done(&sh, t);
        assert!(matches!(r, Err(SharedError::Interrupted)), "{r:?}");
    }
    let r = interrupt_until_done(&sh, ev);
    assert!(matches!(r, Err(SharedError::Interrupted)), "{r:?}");
    // A call started afterwards is not affected.
    let flow = accept_flows(&sh, &mut side, 1)[0];
    side.message(1, b"after");
    let (f, d) = sh.recv(Some(Instant::now() + T)).unwrap().unwrap();
    assert_eq!((f, &d[..]), (flow, &b"after"[..]));
}

#[test]
fn the_wait_fd_fires_for_messages_and_events_and_rearms_on_an_empty_try_receive() {
    let (_m, _fake, sh, mut side) = open(Config::default());
    let fd = sh.wait_fd();
    let flow = accept_flows(&sh, &mut side, 1)[0];
    // An empty try-receive arms it; nothing is waiting, so it is quiet.
    assert!(sh.recv(Some(Instant::now())).unwrap().is_none());
    assert!(!readable(fd, Duration::ZERO));
    side.message(1, b"one");
    assert!(readable(fd, T));
    let (f, d) = sh.recv(Some(Instant::now())).unwrap().unwrap();
    assert_eq!((f, &d[..]), (flow, &b"one"[..]));
    assert!(sh.recv(Some(Instant::now())).unwrap().is_none());
    assert!(!readable(fd, Duration::ZERO));
    // A flow event wakes it too; the try-receive takes it off the ring and queues it.
    side.notify(RecordKind::Closed, 1, 0, CloseCode::Reset as u8, &[]);
    assert!(readable(fd, T));
    assert!(!sh.has_events(), "still on the ring: not queued yet");
    assert!(sh.recv(Some(Instant::now())).unwrap().is_none());
    assert!(sh.has_events());
    match sh.next_event(Some(Instant::now())).unwrap() {
        Some(Event::Closed { flow: f, reason }) => {
            assert_eq!((f, reason), (flow, Some(CloseCode::Reset)))
        }
        other => panic!("{other:?}"),
    }
    assert!(sh.next_event(Some(Instant::now())).unwrap().is_none());
    assert!(!sh.has_events());
    assert!(!readable(fd, Duration::ZERO));
    // Events another thread's blocking receive queued wake the event loop.
    side.accept(2, 6000, 80);
    side.accept(3, 6001, 80);
    assert!(sh.recv(Some(Instant::now())).unwrap().is_none());
    assert!(!readable(fd, Duration::ZERO));
    let receiver = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.recv(None))
    };
    side.notify(RecordKind::Closed, 2, 0, CloseCode::TimedOut as u8, &[]);
    side.message(3, b"wakes the receiver");
    let r = receiver.join().unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(readable(fd, T));
    assert!(matches!(
        sh.next_event(Some(Instant::now())).unwrap(),
        Some(Event::Closed {
            reason: Some(CloseCode::TimedOut),
            ..
        })
    ));
}

#[test]
fn a_waiter_with_a_deadline_times_out_while_another_thread_receives() {
    let (_m, _fake, sh, mut side) = open(Config::default());
    let flow = accept_flows(&sh, &mut side, 1)[0];
    let until = Instant::now() + Duration::from_millis(300);
    let events = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.next_event(Some(until)))
    };
    let receiver = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.recv(None))
    };
    side.message(1, b"for the receiver");
    let (f, d) = receiver.join().unwrap().unwrap().unwrap();
    assert_eq!((f, &d[..]), (flow, &b"for the receiver"[..]));
    // The event waiter met the message, held it for the receiver, and times out.
    assert!(events.join().unwrap().unwrap().is_none());
    assert!(Instant::now() >= until);
    // Events behind a held message reach an event waiter once a receive took the message.
    let waiter = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.next_event(Some(Instant::now() + T)))
    };
    side.message(1, b"first");
    side.notify(RecordKind::Closed, 1, 0, CloseCode::Graceful as u8, &[]);
    let (_, d) = sh.recv(Some(Instant::now() + T)).unwrap().unwrap();
    assert_eq!(&d[..], b"first");
    assert!(matches!(
        waiter.join().unwrap().unwrap(),
        Some(Event::Closed {
            reason: Some(CloseCode::Graceful),
            ..
        })
    ));
}

#[test]
fn a_blocked_sender_and_receiver_end_when_the_sidecar_dies_or_the_channel_is_detached() {
    let cfg = Config {
        layout: ChannelLayout::new(8192, 8192, 1000).unwrap(),
        ..Config::default()
    };
    let (_m, mut fake, sh, mut side) = open(cfg);
    let flow = accept_flows(&sh, &mut side, 1)[0];
    // Fill the request ring so that the next send blocks.
    while sh.send(&flow, &[&[7u8; 900]], Some(Instant::now())).is_ok() {}
    let sender = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.send(&flow, &[&[7u8; 900]], None))
    };
    let receiver = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.recv(None))
    };
    fake.kill();
    let r = sender.join().unwrap();
    assert!(
        matches!(r, Err(SharedError::Op(SendError::SidecarGone))),
        "{r:?}"
    );
    let r = receiver.join().unwrap();
    assert!(
        matches!(r, Err(SharedError::Op(RecvError::SidecarGone))),
        "{r:?}"
    );
    // Detaching wakes sleepers too (and later calls fail the same way).
    let receiver = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.next_event(None))
    };
    while !receiver.is_finished() {
        if let Some(ch) = sh.detach() {
            drop(ch);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = receiver.join().unwrap();
    assert!(
        matches!(
            r,
            Err(SharedError::Detached | SharedError::Op(RecvError::SidecarGone))
        ),
        "{r:?}"
    );
    assert!(matches!(sh.recv(None), Err(SharedError::Detached)));
    assert!(sh.with(|_| ()).is_err());
}

#[test]
fn next_any_hands_over_messages_and_every_event_in_ring_order_and_leaves_peer_closed_flows_open() {
    let (_m, _fake, sh, mut side) = open(Config::default());
    let fd = sh.wait_fd();
    // Nothing yet: the one look arms the wait fd.
    assert!(sh.next_any(Some(Instant::now())).unwrap().is_none());
    assert!(!readable(fd, Duration::ZERO));
    side.accept(1, 5001, 80);
    side.message(1, b"one");
    side.notify(RecordKind::PeerClosed, 1, 0, 0, &[]);
    assert!(readable(fd, T));
    let flow = match sh.next_any(Some(Instant::now())).unwrap() {
        Some(Event::Accepted { flow, port: 80 }) => flow,
        other => panic!("{other:?}"),
    };
    match sh.next_any(Some(Instant::now())).unwrap() {
        Some(Event::Message { flow: f, data }) => assert_eq!((f, &data[..]), (flow, &b"one"[..])),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        sh.next_any(Some(Instant::now())).unwrap(),
        Some(Event::PeerClosed { flow: f }) if f == flow
    ));
    // Handed over as it is: the caller decides when to close.
    assert_eq!(
        sh.with(|ch| ch.flow_status(&flow)).unwrap(),
        machnet::FlowStatus::PeerClosed
    );
    assert!(sh.next_any(Some(Instant::now())).unwrap().is_none());
    // A blocking next_any wakes for a message as for an event.
    side.accept(2, 5002, 80);
    let waiter = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.next_any(Some(Instant::now() + T)))
    };
    assert!(matches!(
        waiter.join().unwrap().unwrap(),
        Some(Event::Accepted { .. })
    ));
    let waiter = {
        let sh = sh.clone();
        std::thread::spawn(move || sh.next_any(Some(Instant::now() + T)))
    };
    side.message(2, b"two");
    assert!(matches!(
        waiter.join().unwrap().unwrap(),
        Some(Event::Message { .. })
    ));
}

#[test]
fn a_receive_closes_a_peer_closed_flow_only_with_auto_close() {
    let (_m, _fake, sh, mut side) = open(Config::default());
    let flows = accept_flows(&sh, &mut side, 2);
    sh.set_auto_close(false);
    side.notify(RecordKind::PeerClosed, 1, 0, 0, &[]);
    side.message(2, b"x");
    assert!(sh.recv(Some(Instant::now() + T)).unwrap().is_some());
    assert_eq!(
        sh.with(|ch| ch.flow_status(&flows[0])).unwrap(),
        machnet::FlowStatus::PeerClosed
    );
    sh.set_auto_close(true);
    side.notify(RecordKind::PeerClosed, 2, 0, 0, &[]);
    side.message(1, b"y");
    assert!(sh.recv(Some(Instant::now() + T)).unwrap().is_some());
    assert_eq!(
        sh.with(|ch| ch.flow_status(&flows[1])).unwrap(),
        machnet::FlowStatus::Closing
    );
    // Both events were queued for next_event.
    for f in &flows {
        assert!(matches!(
            sh.next_event(Some(Instant::now())).unwrap(),
            Some(Event::PeerClosed { flow }) if flow == *f
        ));
    }
}

#[test]
fn arm_wait_fd_reports_what_is_waiting_or_arms_the_fd() {
    let (_m, _fake, sh, mut side) = open(Config::default());
    let fd = sh.wait_fd();
    accept_flows(&sh, &mut side, 1);
    assert!(!sh.arm_wait_fd().unwrap());
    assert!(!readable(fd, Duration::ZERO));
    side.message(1, b"m");
    assert!(readable(fd, T));
    assert!(sh.arm_wait_fd().unwrap());
    assert!(sh.recv(Some(Instant::now())).unwrap().is_some());
    assert!(!sh.arm_wait_fd().unwrap());
    sh.detach();
    assert!(matches!(sh.arm_wait_fd(), Err(SharedError::Detached)));
}
