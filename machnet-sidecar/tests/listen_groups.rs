//! Listen groups (docs/CHANNEL.md §2): the channels of one application listening on one port.
//! Another application (another process, another user) is refused the port; each new flow is
//! announced on the member of the engine that accepted it; a member that leaves ends only its
//! own flows.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use machnet_channel::control::{ControlError, Request, Response};
use machnet_channel::{CloseCode, RecordKind};
use machnet_sidecar::datapath::mem::MemHub;
use machnet_sidecar::{Sidecar, SidecarConfig};

const IP_A: Ipv4Addr = Ipv4Addr::new(10, 6, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 6, 0, 2);
const PORT: u16 = 7100;

/// Environment of the other application (see [`other_app_role`]).
const SOCK_ENV: &str = "MACHNET_GROUPS_SOCK";
const PORT_ENV: &str = "MACHNET_GROUPS_PORT";
const USER_ENV: &str = "MACHNET_GROUPS_USER";

fn err_code(r: &Response) -> Option<ControlError> {
    match r {
        Response::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// The other application: a separate process (so another pid) that attaches, opens a channel
/// and tries to listen on `MACHNET_GROUPS_PORT`. With `MACHNET_GROUPS_USER`, it first listens
/// on the port as itself (root), then becomes that user and tries again over a new connection:
/// same pid, another uid. Does nothing unless run by [`other_app_listen`].
#[test]
#[ignore = "an application role, run in a child process by another test of this file"]
fn other_app_role() {
    let Ok(sock) = std::env::var(SOCK_ENV) else {
        return;
    };
    let port: u16 = std::env::var(PORT_ENV).unwrap().parse().unwrap();
    let attach_and_listen = || {
        let c = RawClient::connect(sock.as_ref()).expect("connect");
        assert!(matches!(c.hello(), Response::Hello { .. }), "hello");
        let ch = c.open_channel(None);
        let r = c.listen(ch.id, port);
        (c, r)
    };
    let mut kept = None;
    if let Ok(name) = std::env::var(USER_ENV) {
        let (c, r) = attach_and_listen();
        assert_eq!(r, Response::Ok, "the first listen, as root");
        kept = Some(c);
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the user exists");
        nix::unistd::setgroups(&[]).unwrap();
        nix::unistd::setgid(user.gid).unwrap();
        nix::unistd::setuid(user.uid).unwrap();
    }
    let (_c, r) = attach_and_listen();
    match r {
        Response::Ok => println!("OTHER-APP listen ok"),
        r => println!("OTHER-APP listen {:?}", err_code(&r)),
    }
    drop(kept);
}

/// Runs [`other_app_role`] (switching to `user` after a first listen if given); returns what
/// its (last) listen got: `None` for success, else the error.
fn other_app_listen(sock: &std::path::Path, port: u16, user: Option<&str>) -> Option<ControlError> {
    let mut env = vec![
        (SOCK_ENV, sock.display().to_string()),
        (PORT_ENV, port.to_string()),
    ];
    if let Some(u) = user {
        env.push((USER_ENV, u.to_owned()));
    }
    let lines = common::run_other_app(&env);
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("listen ").map(str::to_owned))
        .unwrap_or_else(|| panic!("no outcome from the other app: {lines:?}"));
    match line.as_str() {
        "ok" => None,
        "Some(PortInUse)" => Some(ControlError::PortInUse),
        other => panic!("other app: unexpected outcome {other}"),
    }
}

/// The user the other-uid case runs as (tests run as root; otherwise the case is skipped).
fn other_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the other-user case is skipped");
        return None;
    }
    let user = nix::unistd::User::from_name("nobody").ok().flatten();
    if user.is_none() {
        eprintln!("no user `nobody`: the other-user case is skipped");
    }
    user
}

#[test]
fn a_port_belongs_to_one_application_other_processes_and_users_are_refused() {
    let hub = MemHub::new(1);
    let nobody = other_user();
    let mut cfg = test_config(IP_A, 2, &temp_dir("groups-iso").join("m.sock"));
    cfg.limits.app.ports = 1;
    if let Some(u) = &nobody {
        // Let the other user reach the socket and attach.
        cfg.control_socket_group = Some(u.gid.as_raw());
        cfg.access.uids.push(u.uid.as_raw());
    }
    let s = mem_sidecar(&hub, cfg);
    let sock = s.control_socket().to_owned();
    let c = RawClient::connect(&sock).unwrap();
    c.hello();
    let (a, b) = (c.open_channel(Some(0)), c.open_channel(Some(1)));
    let c2 = RawClient::connect(&sock).unwrap();
    c2.hello();
    let d = c2.open_channel(Some(1));
    assert_eq!(c.listen(a.id, PORT), Response::Ok);
    // Channels of this process join, on any engine and over any of its connections; the
    // group counts as one port against `max_ports_per_app` (1 here).
    assert_eq!(c.listen(b.id, PORT), Response::Ok);
    assert_eq!(c2.listen(d.id, PORT), Response::Ok);
    assert_eq!(
        err_code(&c.listen(a.id, PORT + 1)),
        Some(ControlError::PortLimit),
        "a second port is over the cap"
    );
    // Another process is refused.
    assert_eq!(
        other_app_listen(&sock, PORT, None),
        Some(ControlError::PortInUse)
    );
    // So is another user, even from the same process: a child listens on a free port as root,
    // then becomes `nobody` and tries to join over a new connection.
    if nobody.is_some() {
        assert_eq!(
            other_app_listen(&sock, PORT + 2, Some("nobody")),
            Some(ControlError::PortInUse)
        );
    }
    // Members leave one by one: the port stays the application's while one is left.
    let unlisten = |c: &RawClient, channel, port| c.request(&Request::Unlisten { channel, port });
    assert_eq!(unlisten(&c, a.id, PORT), Response::Ok);
    assert_eq!(unlisten(&c, b.id, PORT), Response::Ok);
    assert_eq!(
        other_app_listen(&sock, PORT, None),
        Some(ControlError::PortInUse)
    );
    // The last member leaves when its connection closes: the port is free for anyone.
    drop(c2);
    let deadline = Instant::now() + WAIT;
    while other_app_listen(&sock, PORT, None).is_some() {
        assert!(Instant::now() < deadline, "the port was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And its cap is free again.
    assert_eq!(c.listen(a.id, PORT + 1), Response::Ok);
}

/// A group member serving flows: echoes messages, answers a peer close with a close, and counts
/// the flows it accepted.
struct Member {
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Member {
    fn start(mut ch: AppChannel) -> Member {
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Some(note) = ch.next(Duration::from_millis(20)) else {
                    continue;
                };
                match note.kind {
                    RecordKind::Accepted => {
                        assert_eq!(note.aux, u32::from(PORT), "accepted on the group's port");
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    RecordKind::Message => ch.send(note.flow, &note.payload),
                    RecordKind::PeerClosed => ch.close_flow(note.flow),
                    _ => {}
                }
            }
        });
        Member {
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Hosts {
    _hub: MemHub,
    client: Sidecar,
    server: Sidecar,
}

fn hosts(tag: &str, engines: u16) -> Hosts {
    let seed = machnet_sidecar::random_seed();
    eprintln!("{tag}: hub seed {seed}");
    let hub = MemHub::new(seed);
    let dir = temp_dir(tag);
    let cfg = |ip, name: &str| -> SidecarConfig { test_config(ip, engines, &dir.join(name)) };
    let client = mem_sidecar(&hub, cfg(IP_A, "a.sock"));
    let server = mem_sidecar(&hub, cfg(IP_B, "b.sock"));
    Hosts {
        _hub: hub,
        client,
        server,
    }
}

/// Opens `n` flows to the group at once; returns their handles (all must connect).
fn connect_all(app: &mut AppChannel, n: usize) -> Vec<u32> {
    let ids: Vec<u32> = (0..n).map(|_| app.connect_request(IP_B, PORT)).collect();
    let mut flows = HashMap::new();
    while flows.len() < n {
        let note = app.expect_next();
        assert_eq!(note.kind, RecordKind::Connected, "{note:?}");
        assert!(ids.contains(&note.aux));
        flows.insert(note.aux, note.flow);
    }
    ids.iter().map(|id| flows[id]).collect()
}

/// Sends one message on each flow and checks that each comes back on its flow.
fn echo_each(app: &mut AppChannel, flows: &[u32], round: u64) {
    for (i, &f) in flows.iter().enumerate() {
        app.send(f, &pattern(round * 1000 + i as u64, 64 + i));
    }
    let mut back = 0;
    while back < flows.len() {
        let note = app.expect_next();
        assert_eq!(note.kind, RecordKind::Message, "{note:?}");
        let i = flows
            .iter()
            .position(|&f| f == note.flow)
            .expect("a flow of ours");
        assert!(note.payload == pattern(round * 1000 + i as u64, 64 + i));
        back += 1;
    }
}

/// A server with one member per engine; `flows` connects from another host: every flow is
/// announced on the member of the engine that accepted it, and every member gets some.
fn spread(engines: u16, flows: usize) {
    let h = hosts(&format!("groups-spread{engines}"), engines);
    let server = RawClient::connect(h.server.control_socket()).unwrap();
    server.hello();
    let members: Vec<Member> = (0..engines)
        .map(|e| {
            let ch = server.open_channel(Some(e));
            assert_eq!(ch.engine, e);
            assert_eq!(server.listen(ch.id, PORT), Response::Ok);
            Member::start(ch)
        })
        .collect();
    let client = RawClient::connect(h.client.control_socket()).unwrap();
    client.hello();
    let mut app = client.open_channel(None);
    let handles = connect_all(&mut app, flows);
    echo_each(&mut app, &handles, 1);
    // Every flow echoed, so every Accepted was read before its messages.
    let per_member: Vec<usize> = members.iter().map(Member::accepted).collect();
    let per_engine: Vec<u64> = h
        .server
        .reports()
        .iter()
        .map(|r| r.core.accepts_completed)
        .collect();
    eprintln!("accepted per member {per_member:?}, per engine {per_engine:?}");
    assert_eq!(per_member.iter().sum::<usize>(), flows);
    for (e, (&m, &c)) in per_member.iter().zip(&per_engine).enumerate() {
        assert_eq!(
            m as u64, c,
            "engine {e} accepted {c} flows, its member was given {m}"
        );
        // The accepting engine is a hash of the flow's addresses (PROTOCOL.md §5.3) and the
        // client's ports start at a random point: with 16 flows per engine, one engine getting
        // none has a probability below 1e-5.
        assert!(m > 0, "engine {e}'s member got no flow: {per_member:?}");
    }
}

#[test]
fn flows_are_announced_on_the_member_of_the_engine_that_accepted_them_2_engines() {
    spread(2, 32);
}

#[test]
fn flows_are_announced_on_the_member_of_the_engine_that_accepted_them_4_engines() {
    spread(4, 64);
}

/// Waits for the Closed notification of each of `flows` (other notifications of them are
/// skipped); returns their codes.
fn wait_closed(app: &mut AppChannel, flows: &[u32]) -> Vec<Option<CloseCode>> {
    let mut codes: HashMap<u32, Option<CloseCode>> = HashMap::new();
    while codes.len() < flows.len() {
        let note = app.expect_next();
        assert!(flows.contains(&note.flow), "unexpected {note:?}");
        if note.kind == RecordKind::Closed {
            codes.insert(note.flow, code(&note));
        }
    }
    flows.iter().map(|f| codes[f]).collect()
}

/// One member of a two-engine group leaves (`abort`: its flows are reset; otherwise they close
/// gracefully); the other member's flows keep exchanging messages and new flows still connect,
/// all to the remaining member.
fn member_leaves(abort: bool) {
    let h = hosts(
        if abort {
            "groups-abort"
        } else {
            "groups-detach"
        },
        2,
    );
    let server = RawClient::connect(h.server.control_socket()).unwrap();
    server.hello();
    let (c0, c1) = (server.open_channel(Some(0)), server.open_channel(Some(1)));
    let leaving_id = c0.id;
    for ch in [&c0, &c1] {
        assert_eq!(server.listen(ch.id, PORT), Response::Ok);
    }
    let (leaving, staying) = (Member::start(c0), Member::start(c1));
    let client = RawClient::connect(h.client.control_socket()).unwrap();
    client.hello();
    let mut app = client.open_channel(None);
    let handles = connect_all(&mut app, 32);
    echo_each(&mut app, &handles, 1);
    assert!(leaving.accepted() > 0 && staying.accepted() > 0);

    // Which client flows the leaving member serves: those it no longer answers afterwards.
    let n_leaving = leaving.accepted();
    assert_eq!(
        server.request(&Request::CloseChannel {
            channel: leaving_id,
            abort,
        }),
        Response::Ok
    );
    drop(leaving);
    // The client learns the leaving member's flows ended: a gracefully detached member's
    // flows are closed (PeerClosed, then Closed once we close too), an aborted one's reset.
    let mut ended = Vec::new();
    let mut codes = Vec::new();
    while ended.len() < n_leaving {
        let note = app.expect_next();
        match note.kind {
            RecordKind::PeerClosed => app.close_flow(note.flow),
            RecordKind::Closed => {
                ended.push(note.flow);
                codes.push(code(&note));
            }
            _ => panic!("unexpected {note:?}"),
        }
    }
    let want = if abort {
        CloseCode::Reset
    } else {
        CloseCode::Graceful
    };
    assert!(
        codes.iter().all(|&c| c == Some(want)),
        "codes of the leaving member's flows: {codes:?}"
    );
    let remaining: Vec<u32> = handles
        .iter()
        .copied()
        .filter(|f| !ended.contains(f))
        .collect();
    assert_eq!(remaining.len(), staying.accepted());
    echo_each(&mut app, &remaining, 2);
    // New flows all reach the remaining member (engine 0 has no member: its SYNs are dropped,
    // the spray finds engine 1).
    let before = staying.accepted();
    let fresh = connect_all(&mut app, 8);
    echo_each(&mut app, &fresh, 3);
    assert_eq!(staying.accepted(), before + 8);
    let mut all = remaining;
    all.extend(&fresh);
    for &f in &all {
        app.close_flow(f);
    }
    let codes = wait_closed(&mut app, &all);
    assert!(
        codes.iter().all(|&c| c == Some(CloseCode::Graceful)),
        "{codes:?}"
    );
}

#[test]
fn a_member_that_aborts_resets_only_its_flows_the_others_continue() {
    member_leaves(true);
}

#[test]
fn a_member_that_detaches_closes_only_its_flows_the_others_continue() {
    member_leaves(false);
}
