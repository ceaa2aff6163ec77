//! End to end: the real `machnet` binary (two processes, kernel UDP on 127.0.0.1 and 127.0.0.2)
//! and the real client library (`machnet` crate).

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, temp_dir, Proc, WAIT};
use machnet::{CloseCode, Event, Machnet, RecvError};

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// An echo server on sidecar `sock`, port `port`, in its own thread, until `stop`.
fn echo(sock: std::path::PathBuf, port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let m = Machnet::attach_at(&sock).expect("attach server");
    let mut ch = m.open_channel(None).expect("server channel");
    ch.listen(port).expect("listen");
    std::thread::spawn(move || {
        let _m = m;
        while !stop.load(Ordering::SeqCst) {
            match ch.next_event(Some(Duration::from_millis(50))) {
                Ok(Some(Event::Message { flow, data })) => ch.send(&flow, &data).expect("echo"),
                Ok(Some(Event::PeerClosed { flow })) => {
                    let _ = ch.close(&flow);
                }
                Ok(_) => {}
                Err(e) => panic!("server: {e}"),
            }
        }
    })
}

#[test]
fn the_client_library_talks_through_two_sidecar_processes() {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("e2e");
    let mut sa = Proc::start(A, 2, pool, &dir, &[]);
    let mut sb = Proc::start(B, 2, pool, &dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo(sb.sock.clone(), 6000, stop.clone());

    let m = Machnet::attach_at(&sa.sock).expect("attach");
    assert_eq!(m.local_ip(), A);
    assert_eq!(m.engines(), 2);
    // Several threads, each with its own channel and flow.
    let workers: Vec<_> = (0..3u64)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut ch = m.open_channel(None).expect("channel");
                let flow = ch.connect(B, 6000).expect("connect");
                assert_eq!(flow.remote_ip(), B);
                let sizes: &[usize] = if t == 0 {
                    &[1, 1472, 65536, 1 << 20, 8 << 20]
                } else {
                    &[1, 100, 5000, 70000]
                };
                for (i, &len) in sizes.iter().enumerate() {
                    for k in 0..5u64 {
                        let msg = pattern(t * 1000 + i as u64 * 10 + k, len);
                        ch.send(&flow, &msg).expect("send");
                        let (from, got) = ch.recv().expect("recv");
                        assert_eq!(from, flow);
                        assert!(got == msg, "thread {t}: {len} bytes altered");
                    }
                }
                ch.close(&flow).expect("close");
                loop {
                    match ch.next_event(Some(WAIT)).expect("event") {
                        Some(Event::Closed { reason, .. }) => {
                            assert_eq!(reason, Some(CloseCode::Graceful));
                            break;
                        }
                        Some(Event::PeerClosed { .. }) => {}
                        other => panic!("thread {t}: unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }

    // The sidecar dies (SIGKILL): a blocked receive ends with SidecarGone instead of hanging.
    let mut ch = m.open_channel(None).expect("channel");
    let _flow = ch.connect(B, 6000).expect("connect");
    let killer = {
        let pid = sa.child.as_ref().unwrap().id() as i32;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        })
    };
    match ch.recv() {
        Err(RecvError::SidecarGone) => {}
        other => panic!("expected SidecarGone, got {other:?}"),
    }
    killer.join().unwrap();
    let _ = sa.child.take().map(|mut c| c.wait());

    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert!(sb.terminate().success());
}

/// Issue 14: after the sidecar process is SIGKILLed, every call that hands something to it
/// fails with `SidecarGone` at once — a send into a ring with room included (it used to return
/// `Ok` and the message was lost).
#[test]
fn after_a_sigkill_of_the_sidecar_every_call_fails_with_sidecar_gone() {
    use machnet::{
        CloseError, ConnectError, ListenError, OpenChannelError, RequestError, SendError,
    };
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("e2e-gone");
    let mut sa = Proc::start(A, 1, pool, &dir, &[]);
    let mut sb = Proc::start(B, 1, pool, &dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo(sb.sock.clone(), 6001, stop.clone());

    let m = Machnet::attach_at(&sa.sock).expect("attach");
    let mut ch = m.open_channel(None).expect("channel");
    let flow = ch.connect(B, 6001).expect("connect");
    ch.send(&flow, b"ping").expect("send while alive");
    assert_eq!(ch.recv().expect("echo").1, b"ping");

    let mut child = sa.child.take().unwrap();
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // The process is dead; no receive has noticed it yet, and the request ring has room.
    let e = ch.try_send(&flow, b"lost?").unwrap_err();
    assert!(matches!(e, SendError::SidecarGone), "{e:?}");
    let e = ch.send(&flow, b"lost?").unwrap_err();
    assert!(matches!(e, SendError::SidecarGone), "{e:?}");
    let e = ch.connect(B, 6001).unwrap_err();
    assert!(matches!(e, ConnectError::SidecarGone), "{e:?}");
    let e = ch.listen(6002).unwrap_err();
    assert!(
        matches!(e, ListenError::Request(RequestError::SidecarGone)),
        "{e:?}"
    );
    let e = ch.close(&flow).unwrap_err();
    assert!(matches!(e, CloseError::SidecarGone), "{e:?}");
    let e = m.open_channel(None).unwrap_err();
    assert!(
        matches!(e, OpenChannelError::Request(RequestError::SidecarGone)),
        "{e:?}"
    );
    assert!(matches!(ch.try_recv(), Err(RecvError::SidecarGone)));
    assert!(m.is_sidecar_gone());

    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    assert!(sb.terminate().success());
}

/// Issue 20: when the peer's whole sidecar dies, its host answers our next datagram with an ICMP
/// port unreachable quoting the packet and its flow token; the flow ends as reset by the peer
/// then, not at the protocol's timeout (which would end it as `TimedOut`; PROTOCOL.md §8.4).
/// One engine: with several, the kernel hands the ICMP error to the engine its hash of the
/// reversed path picks, which need not be the flow's (§8.4 says so; forwarding is open).
#[test]
fn a_flow_whose_peer_sidecar_was_killed_ends_as_reset_on_the_next_send() {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("e2e-peer-gone");
    let sa = Proc::start(A, 1, pool, &dir, &[]);
    let mut sb = Proc::start(B, 1, pool, &dir, &[]);
    // An echo server that keeps its channel until its sidecar dies: a server that detached
    // would close the flow gracefully first.
    let server_app = Machnet::attach_at(&sb.sock).expect("attach server");
    let mut server = server_app.open_channel(None).expect("server channel");
    server.listen(6003).expect("listen");
    let server = std::thread::spawn(move || {
        let _app = server_app;
        while let Ok(event) = server.next_event(Some(Duration::from_millis(50))) {
            if let Some(Event::Message { flow, data }) = event {
                let _ = server.send(&flow, &data);
            }
        }
    });

    let m = Machnet::attach_at(&sa.sock).expect("attach");
    let mut ch = m.open_channel(None).expect("channel");
    let flow = ch.connect(B, 6003).expect("connect");
    for i in 0..10u64 {
        let msg = pattern(i, 1000 + i as usize);
        ch.send(&flow, &msg).expect("send");
        assert!(ch.recv().expect("echo").1 == msg, "echo {i} altered");
    }

    let mut child = sb.child.take().unwrap();
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    server
        .join()
        .expect("the server thread ends with its sidecar");

    ch.send(&flow, b"anyone there?").expect("send");
    match ch.next_event(Some(WAIT)).expect("event") {
        Some(Event::Closed { flow: f, reason }) => {
            assert_eq!(f, flow);
            assert_eq!(
                reason,
                Some(CloseCode::Reset),
                "ended by the ICMP, not a timeout"
            );
        }
        other => panic!("expected the flow to close, got {other:?}"),
    }
    drop(sa);
}

/// The README's Rust example ("Using it yourself"), line for line but for the socket (README:
/// `attach()`, the default socket) and the address (README: 10.0.0.2), against real sidecars.
#[test]
fn the_readme_example_runs() -> Result<(), Box<dyn std::error::Error>> {
    let pool = machnet_sidecar::testing::free_udp_pool(&[A, B], 8);
    let dir = temp_dir("e2e-readme");
    let sa = Proc::start(A, 1, pool, &dir, &[]);
    let mut sb = Proc::start(B, 1, pool, &dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let server = echo(sb.sock.clone(), 888, stop.clone());

    let machnet = machnet::Machnet::attach_at(&sa.sock)?; // or attach_at(path)
    let mut ch = machnet.open_channel(None)?; // one channel per thread
    let flow = ch.connect("127.0.0.2".parse()?, 888)?;
    ch.send(&flow, b"hello")?;
    let (from, reply) = ch.recv()?; // blocks; try_recv / recv_timeout too
    assert_eq!((from, &reply[..]), (flow, &b"hello"[..]));

    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
    drop(sa);
    assert!(sb.terminate().success());
    Ok(())
}
