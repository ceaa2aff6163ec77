//! End to end: the client library against two real sidecars (machnet-sidecar, kernel UDP
//! datapath) on 127.0.0.1 and 127.0.0.2 in this process.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use machnet::{CloseCode, ConnectError, Machnet, RecvError, SendError};
use machnet_sidecar::testing::LoopbackSidecars;

const IP_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PORT: u16 = 888;
const T: Duration = Duration::from_secs(10);

/// Sidecar A (127.0.0.1, index 0) and B (127.0.0.2, index 1).
struct Pair(LoopbackSidecars);

impl Pair {
    fn new(engines: u16) -> Pair {
        Pair(LoopbackSidecars::start(
            "client-e2e",
            &[IP_A, IP_B],
            engines,
        ))
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.0.socket(if name == "a.sock" { 0 } else { 1 })
    }
}

/// An echo server attached to sidecar A; ends (returning its echo count) when its channel or
/// sidecar goes away.
fn echo_server(p: &Pair) -> JoinHandle<u64> {
    let m = Machnet::attach_at(p.sock("a.sock")).expect("server attaches");
    let mut ch = m.open_channel(None).unwrap();
    ch.listen(PORT).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; ch.max_message_len() as usize];
        let mut n_echoed = 0;
        loop {
            let (flow, n) = match ch.recv_into(&mut buf) {
                Ok(r) => r,
                Err(RecvError::ChannelClosed(_) | RecvError::SidecarGone) => return n_echoed,
                Err(e) => panic!("server recv: {e}"),
            };
            match ch.send(&flow, &buf[..n]) {
                Ok(()) => n_echoed += 1,
                Err(SendError::FlowClosed(_) | SendError::FlowClosing) => {}
                Err(SendError::ChannelClosed(_) | SendError::SidecarGone) => return n_echoed,
                Err(e) => panic!("server send: {e}"),
            }
        }
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn messages_of_every_size_up_to_8_mib_round_trip_intact() {
    let p = Pair::new(1);
    let server = echo_server(&p);
    let m = Machnet::attach_at(p.sock("b.sock")).unwrap();
    assert_eq!(m.local_ip(), IP_B);
    let mut ch = m.open_channel(None).unwrap();
    assert_eq!(ch.max_message_len(), 8 << 20);
    let flow = ch.connect(IP_A, PORT).expect("connect");
    assert_eq!(flow.remote_addr(), std::net::SocketAddrV4::new(IP_A, PORT));
    assert_eq!(flow.local_ip(), IP_B);
    for (i, len) in [1usize, 64, 1000, 1500, 9000, 65536, 1 << 20, 8 << 20]
        .into_iter()
        .enumerate()
    {
        let msg = pattern(len, i as u8);
        ch.send(&flow, &msg).unwrap();
        let (f, got) = ch.recv_timeout(T).unwrap().expect("echo in time");
        assert_eq!(f, flow);
        assert!(got == msg, "echo of {len} bytes differs");
    }
    // A buffer too small: the size is reported and the message kept.
    ch.send(&flow, &pattern(1000, 9)).unwrap();
    let mut small = [0u8; 10];
    let deadline = Instant::now() + T;
    loop {
        match ch.recv_into_timeout(&mut small, Duration::from_millis(100)) {
            Err(RecvError::BufferTooSmall { needed: 1000, .. }) => break,
            Ok(None) if Instant::now() < deadline => {}
            other => panic!("{other:?}"),
        }
    }
    let mut buf = vec![0u8; 1000];
    let (_, n) = ch.recv_into(&mut buf).unwrap();
    assert_eq!((n, buf), (1000, pattern(1000, 9)));
    // Ping-pong.
    for i in 0u32..2000 {
        ch.send(&flow, &i.to_le_bytes()).unwrap();
        let (_, got) = ch.recv_timeout(T).unwrap().expect("echo in time");
        assert_eq!(got, i.to_le_bytes());
    }
    // A graceful close completes.
    ch.close(&flow).unwrap();
    let deadline = Instant::now() + T;
    loop {
        match ch.next_event(Some(deadline.saturating_duration_since(Instant::now()))) {
            Ok(Some(machnet::Event::Closed { flow: f, reason })) => {
                assert_eq!(f, flow);
                assert_eq!(reason, Some(CloseCode::Graceful));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    drop(p);
    assert_eq!(server.join().unwrap(), 2009);
}

#[test]
fn connecting_to_a_port_nobody_listens_on_is_refused() {
    let p = Pair::new(1);
    let m = Machnet::attach_at(p.sock("b.sock")).unwrap();
    let mut ch = m.open_channel(None).unwrap();
    match ch.connect(IP_A, 999) {
        Err(ConnectError::Failed(Some(CloseCode::Refused))) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sidecar_shutdown_ends_a_blocked_recv() {
    let mut p = Pair::new(1);
    let m = Machnet::attach_at(p.sock("b.sock")).unwrap();
    let mut ch = m.open_channel(None).unwrap();
    let b = p.0.take(1).unwrap();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        b.shutdown();
    });
    let t0 = Instant::now();
    let err = ch.recv().unwrap_err();
    assert!(
        matches!(
            err,
            RecvError::ChannelClosed(Some(CloseCode::Shutdown)) | RecvError::SidecarGone
        ),
        "{err:?}"
    );
    assert!(t0.elapsed() < T);
    stopper.join().unwrap();
}

#[test]
fn threads_with_their_own_channels_on_several_engines() {
    let p = Pair::new(2);
    let server = echo_server(&p);
    let m = Machnet::attach_at(p.sock("b.sock")).unwrap();
    let clients: Vec<_> = (0..3u16)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut ch = m.open_channel(Some(t % 2)).unwrap();
                assert_eq!(ch.engine(), t % 2);
                let flow = ch.connect(IP_A, PORT).unwrap();
                for i in 0u32..500 {
                    let msg = [t.to_le_bytes().as_slice(), &i.to_le_bytes()].concat();
                    ch.send(&flow, &msg).unwrap();
                    let (f, got) = ch.recv_timeout(T).unwrap().expect("echo in time");
                    assert_eq!((f, got), (flow, msg));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    drop(p);
    assert_eq!(server.join().unwrap(), 1500);
}

#[cfg(feature = "tokio")]
#[test]
fn async_client_against_real_sidecars() {
    let p = Pair::new(1);
    let server = echo_server(&p);
    let m = Machnet::attach_at(p.sock("b.sock")).unwrap();
    let mut ch = m.open_channel(None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    rt.block_on(async {
        let flow = ch.connect_async(IP_A, PORT).await.unwrap();
        for i in 0u32..500 {
            ch.send_async(&flow, &i.to_le_bytes()).await.unwrap();
            let (_, got) = ch.recv_async().await.unwrap();
            assert_eq!(got, i.to_le_bytes());
        }
    });
    drop(p);
    assert_eq!(server.join().unwrap(), 500);
}

#[test]
fn a_peer_that_aborts_its_channel_resets_our_flow_and_sends_fail() {
    let p = Pair::new(1);
    let (_server_machnet, mut server, _m, mut ch) = listener_and_client(&p);
    let flow = ch.connect(IP_A, PORT).expect("connect");
    ch.send(&flow, b"hello").unwrap();
    let (_, got) = server.recv_timeout(T).unwrap().expect("request arrives");
    assert_eq!(got, b"hello");
    // The server aborts its channel: the sidecar aborts its flows, so ours is reset.
    server.abort_channel().unwrap();
    let deadline = Instant::now() + T;
    loop {
        match ch.next_event(Some(Duration::from_millis(50))).unwrap() {
            Some(machnet::Event::Closed { reason, .. }) => {
                assert_eq!(
                    reason,
                    Some(CloseCode::Reset),
                    "the peer's flows are aborted"
                );
                break;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => assert!(Instant::now() < deadline, "no reset within {T:?}"),
        }
    }
    match ch.send(&flow, b"anyone?") {
        Err(SendError::FlowClosed(Some(CloseCode::Reset))) => {}
        other => panic!("send on a reset flow: {other:?}"),
    }
}

/// A channel closed right after sending (or dropped, or its process exiting) still delivers
/// every message whose `send` returned, then the peer sees the flow close (docs/CHANNEL.md §5).
#[test]
fn a_channel_closed_right_after_sending_delivers_everything_then_closes_the_flow() {
    let p = Pair::new(1);
    let (_server_machnet, mut server, _m, mut ch) = listener_and_client(&p);
    let flow = ch.connect(IP_A, PORT).expect("connect");
    let msgs: Vec<Vec<u8>> = (0..64u32)
        .map(|i| machnet_sidecar::testing::pattern(u64::from(i), i as usize * 4099 + 1))
        .collect();
    for msg in &msgs {
        ch.send(&flow, msg).unwrap();
    }
    ch.close_channel().unwrap();
    for (i, want) in msgs.iter().enumerate() {
        let (_, got) = server
            .recv_timeout(T)
            .unwrap()
            .unwrap_or_else(|| panic!("message {i} of {} never arrived", msgs.len()));
        assert!(got == *want, "message {i} differs");
    }
    // The peer closed its side; closing ours ends the flow gracefully.
    let deadline = Instant::now() + T;
    loop {
        match server.next_event(Some(Duration::from_millis(50))).unwrap() {
            Some(machnet::Event::Closed { reason, .. }) => {
                assert_eq!(reason, Some(CloseCode::Graceful));
                break;
            }
            Some(machnet::Event::PeerClosed { flow }) => server.close(&flow).unwrap(),
            Some(other) => panic!("unexpected {other:?}"),
            None => assert!(Instant::now() < deadline, "the flow never closed"),
        }
    }
}

/// The non-blocking connect for event loops: start, poll until answered; a refusal comes back
/// as an error from `poll_connect`; messages that arrive meanwhile are kept.
#[test]
fn start_and_poll_connect_without_waiting() {
    let p = Pair::new(1);
    let (_server_machnet, mut server, _m, mut ch) = listener_and_client(&p);
    let poll = |ch: &mut machnet::Channel, t| {
        let deadline = Instant::now() + T;
        loop {
            match ch.poll_connect(t) {
                Ok(None) => {
                    assert!(Instant::now() < deadline, "no answer within {T:?}");
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => return other,
            }
        }
    };
    let ticket = ch
        .start_connect(IP_A, PORT)
        .unwrap()
        .expect("room in the ring");
    let flow = poll(&mut ch, ticket).expect("connected").expect("a flow");
    ch.send(&flow, b"ping").unwrap();
    let (_, got) = server.recv_timeout(T).unwrap().expect("arrives");
    assert_eq!(got, b"ping");
    let refused = ch.start_connect(IP_A, PORT + 1).unwrap().expect("room");
    match poll(&mut ch, refused) {
        Err(ConnectError::Failed(Some(CloseCode::Refused))) => {}
        other => panic!("connect to a port nobody listens on: {other:?}"),
    }
}

/// A connect beyond a sidecar's connect budget fails at once with `OverBudget`, `Exhausted`,
/// naming the option; the channel's connect in progress still runs (docs/CHANNEL.md §2).
#[test]
fn a_connect_over_the_channel_budget_fails_at_once_with_over_budget() {
    use machnet::{ClientError, ConnectBudget, ErrorKind};
    // Nobody answers on 127.0.0.9.
    const SILENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
    let p = Pair(LoopbackSidecars::start_with(
        "client-budget",
        &[IP_A],
        1,
        |_, c| c.limits.connects.per_channel = 1,
    ));
    let m = Machnet::attach_at(p.sock("a.sock")).unwrap();
    let mut ch = m.open_channel(None).unwrap();
    let first = ch
        .start_connect(SILENT, PORT)
        .unwrap()
        .expect("room in the ring");
    let e = ch
        .connect_timeout(SILENT, PORT, T)
        .expect_err("over the budget of 1 connect in progress");
    assert!(
        matches!(
            e,
            ConnectError::OverBudget(ConnectBudget::ChannelInProgress)
        ),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::Exhausted);
    assert_eq!(e.close_code(), Some(CloseCode::ChannelConnectLimit));
    assert!(
        e.to_string().contains("--max-connecting-per-channel"),
        "{e}"
    );
    assert!(
        matches!(ch.poll_connect(first), Ok(None)),
        "the first connect is still in progress"
    );
    ch.abandon_connect(first);
}

/// A channel listening on `PORT` on sidecar a and a client channel on sidecar b (with their
/// attachments, which must outlive them).
fn listener_and_client(p: &Pair) -> (Machnet, machnet::Channel, Machnet, machnet::Channel) {
    let server_machnet = Machnet::attach_at(p.sock("a.sock")).unwrap();
    let mut server = server_machnet.open_channel(None).unwrap();
    server.listen(PORT).unwrap();
    let m = Machnet::attach_at(p.sock("b.sock")).unwrap();
    let ch = m.open_channel(None).unwrap();
    (server_machnet, server, m, ch)
}

/// An echo server that receives with `recv_zc` and answers with a loan: the view's bytes go
/// straight into the loan (the one copy an echo needs), on sidecar A.
fn zero_copy_echo_server(p: &Pair) -> JoinHandle<u64> {
    let m = Machnet::attach_at(p.sock("a.sock")).expect("server attaches");
    let mut ch = m.open_channel(None).unwrap();
    ch.listen(PORT).unwrap();
    std::thread::spawn(move || {
        let mut n_echoed = 0;
        let mut msg = Vec::new();
        loop {
            let flow = match ch.recv_zc() {
                Ok((flow, view)) => {
                    // The view borrows the channel: keep the bytes while it lives, then send.
                    msg.clear();
                    msg.extend_from_slice(&view);
                    flow
                }
                Err(RecvError::ChannelClosed(_) | RecvError::SidecarGone) => return n_echoed,
                Err(e) => panic!("server recv_zc: {e}"),
            };
            let r = ch.loan(&flow, msg.len()).and_then(|mut loan| {
                loan.copy_from_slice(&msg);
                loan.commit(msg.len())
            });
            match r {
                Ok(()) => n_echoed += 1,
                Err(SendError::FlowClosed(_) | SendError::FlowClosing) => {}
                Err(SendError::ChannelClosed(_) | SendError::SidecarGone) => return n_echoed,
                Err(e) => panic!("server loan/commit: {e}"),
            }
        }
    })
}

#[test]
fn loaned_sends_and_borrowed_receives_of_every_size_up_to_8_mib_round_trip_intact() {
    let p = Pair::new(1);
    let server = zero_copy_echo_server(&p);
    let m = Machnet::attach_at(p.sock("b.sock")).unwrap();
    let mut ch = m.open_channel(None).unwrap();
    let flow = ch.connect(IP_A, PORT).expect("connect");
    // Sizes that wrap the rings at many positions, then the largest message.
    let mut sizes: Vec<usize> = vec![1, 7, 8, 9, 64, 1000, 1500, 4096, 9000, 65536, 1 << 20];
    sizes.extend((0..24).map(|i| 100_000 + i * 77_777));
    sizes.extend([(8 << 20) - 1, 8 << 20]);
    for (i, &len) in sizes.iter().enumerate() {
        let msg = pattern(len, i as u8);
        // Loan a little more than needed and commit exactly the message (a partial commit).
        let loaned = (len + 13).min(8 << 20);
        let mut loan = ch.loan(&flow, loaned).expect("loan");
        assert_eq!(loan.len(), loaned);
        loan[..len].copy_from_slice(&msg);
        loan.commit(len).expect("commit");
        let (f, view) = ch
            .recv_zc_timeout(T)
            .expect("recv_zc")
            .expect("echo in time");
        assert_eq!(f, flow);
        assert_eq!(view.len(), len, "message {i}");
        assert!(*view == msg[..], "message {i} of {len} bytes differs");
    }
    // Exactly once: nothing else arrives.
    assert!(ch.try_recv_zc().unwrap().is_none());
    drop(ch);
    drop(m);
    drop(p);
    assert_eq!(server.join().unwrap(), sizes.len() as u64);
}
