//! Per-application limits and a control plane no local app can lock up (docs/CHANNEL.md §2):
//! an app over its caps gets a clear error while another process still attaches; silent and
//! idle control connections are closed; running out of descriptors neither spins nor floods
//! the log, and the sidecar serves again once descriptors are free.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use machnet_channel::control::{ControlError, Request, Response};
use machnet_channel::{CloseCode, RecordKind};
use machnet_sidecar::datapath::mem::MemHub;
use machnet_sidecar::{Sidecar, SidecarConfig};

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 2);
const IP_C: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 3);
const PORT: u16 = 7000;

/// Environment of the helper process (see [`other_app_role`]).
const SOCK_ENV: &str = "MACHNET_LIMITS_SOCK";
const CONNS_ENV: &str = "MACHNET_LIMITS_CONNS";

fn sidecar(
    hub: &MemHub,
    ip: Ipv4Addr,
    tag: &str,
    tweak: impl FnOnce(&mut SidecarConfig),
) -> Sidecar {
    let mut cfg = test_config(ip, 1, &temp_dir(tag).join("m.sock"));
    tweak(&mut cfg);
    mem_sidecar(hub, cfg)
}

fn refusal(r: &Response) -> (ControlError, &str) {
    match r {
        Response::Error { code, message } => (*code, message.as_str()),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// What the helper process reports, one line per connection it tried, then whether it opened
/// a channel on its first one.
fn run_other_app(sock: &std::path::Path, conns: usize) -> Vec<String> {
    common::run_other_app(&[
        (SOCK_ENV, sock.display().to_string()),
        (CONNS_ENV, conns.to_string()),
    ])
}

/// The other application: a separate process (so a separate pid to the sidecar) that opens
/// `MACHNET_LIMITS_CONNS` control connections, says hello on each, and opens a channel on the
/// first. Does nothing unless run by [`one_app_over_its_limits_gets_clear_errors_another_still_attaches`].
#[test]
#[ignore = "an application role, run in a child process by another test of this file"]
fn other_app_role() {
    let Ok(sock) = std::env::var(SOCK_ENV) else {
        return;
    };
    let n: usize = std::env::var(CONNS_ENV).unwrap().parse().unwrap();
    let mut kept = Vec::new();
    for _ in 0..n {
        let c = RawClient::connect(sock.as_ref()).expect("connect");
        // A refused connection gets its error unasked: look for one before saying hello (the
        // sidecar drops what a refused peer sent, so a hello racing the refusal is harmless
        // too, unless it lands between that and the close).
        if let Some((Response::Error { code, message }, _)) = c.recv(Duration::from_millis(300)) {
            println!("OTHER-APP refused {code:?}: {message}");
            continue;
        }
        c.send_raw(
            &Request::Hello {
                version: 1,
                client: "other-app".into(),
            }
            .encode(),
        )
        .ok();
        match c.recv(WAIT).map(|(r, _)| r) {
            Some(Response::Hello { .. }) => println!("OTHER-APP hello"),
            Some(Response::Error { code, message }) => {
                println!("OTHER-APP refused {code:?}: {message}")
            }
            other => println!("OTHER-APP unexpected {other:?}"),
        }
        kept.push(c);
    }
    let ch = kept[0].open_channel(None);
    println!("OTHER-APP channel {}", ch.id);
}

#[test]
fn one_app_over_its_limits_gets_clear_errors_another_still_attaches() {
    let hub = MemHub::new(1);
    let s = sidecar(&hub, IP_A, "lim-app", |c| {
        c.limits.app.connections = 4;
        c.limits.app.channels = 2;
        c.limits.app.ports = 1;
        c.limits.user.connections = 6;
    });
    let sock = s.control_socket().to_owned();

    // This process: 4 connections attach, the 5th is refused at accept and hung up.
    let mine: Vec<RawClient> = (0..4)
        .map(|_| {
            let c = RawClient::connect(&sock).unwrap();
            assert!(matches!(c.hello(), Response::Hello { .. }));
            c
        })
        .collect();
    let fifth = RawClient::connect(&sock).unwrap();
    let (r, _) = fifth.recv(WAIT).expect("an error before the hang-up");
    let (code, msg) = refusal(&r);
    assert_eq!(code, ControlError::ConnectionLimit, "{msg}");
    assert!(msg.contains("application") && msg.contains('4'), "{msg}");
    assert!(fifth.hung_up(WAIT));

    // Another process of the same user: 2 more fit under the user's cap of 6, the third not;
    // it opens a channel and so works.
    let lines = run_other_app(&sock, 3);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(&lines[..2], ["hello", "hello"], "{lines:?}");
    assert!(
        lines[2].starts_with("refused ConnectionLimit") && lines[2].contains("user"),
        "{lines:?}"
    );
    assert!(lines[3].starts_with("channel "), "{lines:?}");

    // Its connections are gone with it: this app still may not exceed its own cap.
    let c = &mine[0];
    let a = c.open_channel(None);
    let _b = c.open_channel(None);
    let r = c.request(&Request::OpenChannel { engine: None });
    let (code, msg) = refusal(&r);
    assert_eq!(code, ControlError::ChannelLimit, "{msg}");
    // Channels count per application, not per connection.
    let r = mine[1].request(&Request::OpenChannel { engine: None });
    assert_eq!(refusal(&r).0, ControlError::ChannelLimit);

    assert_eq!(c.listen(a.id, 80), Response::Ok);
    let r = c.listen(a.id, 81);
    let (code, msg) = refusal(&r);
    assert_eq!(code, ControlError::PortLimit, "{msg}");
    // Closing the channel gives back the channel and its port.
    assert_eq!(
        c.request(&Request::CloseChannel {
            channel: a.id,
            abort: false,
        }),
        Response::Ok
    );
    let d = c.open_channel(None);
    assert_eq!(c.listen(d.id, 81), Response::Ok);
    // The refused requests did not close the connection.
    assert!(!c.hung_up(Duration::ZERO));
}

/// Waits for the end of connect request `id`: `Closed` (after `Connected`) or `ConnectFailed`.
fn connect_outcome(ch: &mut AppChannel, id: u32) -> Note {
    let mut handle = None;
    loop {
        let n = ch.expect_next();
        match n.kind {
            RecordKind::Connected if n.aux == id => handle = Some(n.flow),
            RecordKind::ConnectFailed if n.aux == id => return n,
            RecordKind::Closed if Some(n.flow) == handle => return n,
            _ => {}
        }
    }
}

#[test]
fn flows_beyond_the_app_limit_fail_to_connect_or_are_reset_and_slots_come_back() {
    let hub = MemHub::new(1);
    let a = sidecar(&hub, IP_A, "lim-flows-a", |c| c.limits.app.flows = 2);
    let b = sidecar(&hub, IP_B, "lim-flows-b", |c| c.limits.app.flows = 1);
    let c = sidecar(&hub, IP_C, "lim-flows-c", |_| {});
    let (ca, cb, cc) = (
        RawClient::connect(a.control_socket()).unwrap(),
        RawClient::connect(b.control_socket()).unwrap(),
        RawClient::connect(c.control_socket()).unwrap(),
    );
    for x in [&ca, &cb, &cc] {
        assert!(matches!(x.hello(), Response::Hello { .. }));
    }
    let mut on_b = cb.open_channel(None);
    assert_eq!(cb.listen(on_b.id, PORT), Response::Ok);
    let mut on_c = cc.open_channel(None);
    assert_eq!(cc.listen(on_c.id, PORT), Response::Ok);
    let mut client = ca.open_channel(None);

    // Accepting: B's app may hold one flow; B resets the second.
    let (f1, _) = client.connect(IP_B, PORT);
    assert_eq!(on_b.expect_next().kind, RecordKind::Accepted);
    let id = client.connect_request(IP_B, PORT);
    let n = connect_outcome(&mut client, id);
    assert!(
        matches!(code(&n), Some(CloseCode::Reset | CloseCode::Refused)),
        "B must refuse the flow over its app's limit: {n:?}"
    );
    assert!(
        on_b.try_next().is_none(),
        "B announced a flow over its app's limit"
    );

    // Connecting: A's app holds f1 (the reset one gave its slot back); one more fits, the
    // next fails at once with Exhausted.
    let (g1, _) = client.connect(IP_C, PORT);
    let id = client.connect_request(IP_C, PORT);
    let n = connect_outcome(&mut client, id);
    assert_eq!(n.kind, RecordKind::ConnectFailed, "{n:?}");
    assert_eq!(code(&n), Some(CloseCode::Exhausted), "{n:?}");

    // A closed flow gives its slot back.
    client.abort_flow(f1);
    let n = client.expect_next();
    assert_eq!((n.kind, n.flow), (RecordKind::Closed, f1), "{n:?}");
    let (_g2, _) = client.connect(IP_C, PORT);
    let _ = g1;
    assert_eq!(on_c.expect_next().kind, RecordKind::Accepted);
}

#[test]
fn silent_and_idle_connections_are_closed_those_holding_channels_are_not() {
    let hub = MemHub::new(1);
    let s = sidecar(&hub, IP_A, "lim-timeout", |c| {
        c.limits.hello_timeout = Duration::from_millis(200);
        c.limits.idle_timeout = Some(Duration::from_millis(400));
    });
    let sock = s.control_socket();
    let holder = RawClient::connect(sock).unwrap();
    assert!(matches!(holder.hello(), Response::Hello { .. }));
    let _ch = holder.open_channel(None);
    // Said hello after the holder's last request: idle no earlier than the holder would be.
    let idle = RawClient::connect(sock).unwrap();
    assert!(matches!(idle.hello(), Response::Hello { .. }));
    let silent = RawClient::connect(sock).unwrap();

    let (r, _) = silent.recv(WAIT).expect("a timeout error");
    let (code, msg) = refusal(&r);
    assert_eq!(code, ControlError::TimedOut, "{msg}");
    assert!(msg.contains("hello"), "{msg}");
    assert!(silent.hung_up(WAIT));

    let (r, _) = idle.recv(WAIT).expect("a timeout error");
    let (code, msg) = refusal(&r);
    assert_eq!(code, ControlError::TimedOut, "{msg}");
    assert!(msg.contains("idle"), "{msg}");
    assert!(idle.hung_up(WAIT));

    // The holder has been quiet at least as long, but holds a channel: still served.
    assert!(
        !holder.hung_up(Duration::ZERO),
        "a connection holding a channel was closed"
    );
    let _ch2 = holder.open_channel(None);
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// Sets the soft `RLIMIT_NOFILE` of process `pid` (keeping its hard limit).
fn set_soft_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on valid pointers.
    unsafe {
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old),
            0,
            "prlimit get: {}",
            std::io::Error::last_os_error()
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()),
            0,
            "prlimit set: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn out_of_descriptors_the_sidecar_backs_off_logs_little_and_serves_again_once_freed() {
    let ip = Ipv4Addr::LOCALHOST;
    let pool = machnet_sidecar::testing::free_udp_pool(&[ip], 4);
    let dir = temp_dir("lim-emfile");
    let mut p = Proc::start(
        ip,
        1,
        pool,
        &dir,
        &["--log-level", "info", "--stats-interval", "0"],
    );
    let pid = p.child.as_ref().unwrap().id();
    // Room for 10 more descriptors: a few connections, then accept fails with EMFILE.
    set_soft_nofile(pid, open_fds(pid) + 10);
    let start = Instant::now();
    let clients: Vec<RawClient> = (0..64)
        .map(|_| RawClient::connect(&p.sock).expect("connect (queued in the backlog)"))
        .collect();
    // Let the sidecar run into the limit for a while (pending connections stay queued).
    let deadline = Instant::now() + WAIT;
    while count_lines(&p.log_text(), "control accept") == 0 {
        assert!(
            Instant::now() < deadline,
            "accept never failed:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let log = p.log_text();
    let secs = start.elapsed().as_secs() as usize;
    let accept_lines = count_lines(&log, "control accept");
    // Rate-limited to 5 lines a second per call site (and the listener is polled 10 times a
    // second at most): without back-off this was ~220,000 lines a second.
    assert!(
        accept_lines <= 5 * (secs + 2),
        "{accept_lines} accept lines in {secs} s:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(
        log.len() < 64 << 10,
        "the log grew to {} bytes in {secs} s",
        log.len()
    );

    // Descriptors come back when the connections go; a new app attaches and opens a channel.
    drop(clients);
    let c = RawClient::connect(&p.sock).unwrap();
    assert!(
        matches!(c.hello(), Response::Hello { .. }),
        "no hello after descriptors were freed:\n{}",
        p.log_text()
    );
    let _ch = c.open_channel(None);
    assert!(p.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert!(p.terminate().success());
}

/// Flows an application left behind (its channel detached, the peer not yet closed: orphans,
/// docs/CHANNEL.md §5) still count against its flow limit until they end — here by the linger.
#[test]
fn orphan_flows_count_against_the_app_limit_until_the_linger_ends() {
    let hub = MemHub::new(1);
    let a = sidecar(&hub, IP_A, "lim-orphans-a", |c| {
        c.limits.app.flows = 2;
        c.close_linger = Duration::from_millis(500);
    });
    let b = sidecar(&hub, IP_B, "lim-orphans-b", |_| {});
    let (ca, cb) = (
        RawClient::connect(a.control_socket()).unwrap(),
        RawClient::connect(b.control_socket()).unwrap(),
    );
    for x in [&ca, &cb] {
        assert!(matches!(x.hello(), Response::Hello { .. }));
    }
    let mut on_b = cb.open_channel(None);
    assert_eq!(cb.listen(on_b.id, PORT), Response::Ok);
    let mut client = ca.open_channel(None);
    client.connect(IP_B, PORT);
    client.connect(IP_B, PORT);
    for _ in 0..2 {
        assert_eq!(on_b.expect_next().kind, RecordKind::Accepted);
    }
    // Detach: B's app never closes its side, so both flows live on as orphans.
    assert_eq!(
        ca.request(&machnet_channel::control::Request::CloseChannel {
            channel: client.id,
            abort: false,
        }),
        Response::Ok
    );
    for _ in 0..2 {
        assert_eq!(on_b.expect_next().kind, RecordKind::PeerClosed);
    }
    let mut again = ca.open_channel(None);
    let id = again.connect_request(IP_B, PORT);
    let n = connect_outcome(&mut again, id);
    assert_eq!(
        (n.kind, code(&n)),
        (RecordKind::ConnectFailed, Some(CloseCode::Exhausted)),
        "the orphans still hold the app's two flows: {n:?}"
    );
    // The linger ends: B sees resets, and the app's slots come back.
    for _ in 0..2 {
        let n = on_b.expect_next();
        assert_eq!(
            (n.kind, code(&n)),
            (RecordKind::Closed, Some(CloseCode::Reset))
        );
    }
    again.connect(IP_B, PORT);
}
