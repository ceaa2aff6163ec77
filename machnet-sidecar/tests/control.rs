//! The control protocol over a real socket, with a raw test client (tests/common).

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use machnet_channel::control::{ControlError, Request, Response, MAX_CONTROL_MESSAGE};
use machnet_channel::{CloseCode, HEADER_PAGE};
use machnet_sidecar::config::AccessPolicy;
use machnet_sidecar::datapath::mem::MemHub;
use machnet_sidecar::{Sidecar, SidecarConfig, StartError};

const IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

fn sidecar(tag: &str, engines: u16) -> (MemHub, Sidecar) {
    sidecar_with(tag, engines, |_| {})
}

fn sidecar_with(
    tag: &str,
    engines: u16,
    tweak: impl FnOnce(&mut SidecarConfig),
) -> (MemHub, Sidecar) {
    let hub = MemHub::new(1);
    let mut cfg = test_config(IP, engines, &temp_dir(tag).join("m.sock"));
    tweak(&mut cfg);
    let s = mem_sidecar(&hub, cfg);
    (hub, s)
}

fn err_code(r: &Response) -> Option<ControlError> {
    match r {
        Response::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn hello_then_open_channel_delivers_three_fds_and_a_valid_layout() {
    let (_hub, s) = sidecar("hello", 2);
    let c = RawClient::connect(s.control_socket()).unwrap();
    match c.hello() {
        Response::Hello {
            version,
            local_ip,
            engines,
            max_message_len,
        } => {
            assert_eq!((version, local_ip, engines), (1, IP, 2));
            assert_eq!(max_message_len, 8 << 20);
        }
        r => panic!("expected hello, got {r:?}"),
    }
    // Round-robin over engines when none is named; an explicit engine is honoured.
    let a = c.open_channel(None);
    let b = c.open_channel(None);
    assert_ne!(a.engine, b.engine);
    let mut d = c.open_channel(Some(1));
    assert_eq!(d.engine, 1);
    assert!(a.id != b.id && b.id != d.id);
    // The layout fits an 8 MiB message each way and the memfd is sealed.
    assert!(d.layout.to_app_capacity >= (8 << 20) + 16);
    assert!(d.layout.to_sidecar_capacity >= (8 << 20) + 16);
    assert_eq!(d.layout.to_sidecar_offset, HEADER_PAGE);
    let f = std::fs::File::from(d.memfd.try_clone().unwrap());
    assert!(
        f.set_len(HEADER_PAGE).is_err(),
        "memfd must be sealed against shrinking"
    );
    assert_eq!(d.closed(), 0);
    // An engine that does not exist.
    let r = c.request(&Request::OpenChannel { engine: Some(2) });
    assert_eq!(err_code(&r), Some(ControlError::NoSuchEngine));
    // Closing a channel sets its header's closed word; its id is then unknown.
    assert_eq!(
        c.request(&Request::CloseChannel {
            channel: d.id,
            abort: false
        }),
        Response::Ok
    );
    assert_eq!(d.wait_closed(WAIT), Some(CloseCode::Detached as u32));
    let r = c.request(&Request::CloseChannel {
        channel: d.id,
        abort: true,
    });
    assert_eq!(err_code(&r), Some(ControlError::NoSuchChannel));
}

#[test]
fn requests_before_hello_and_wrong_versions_are_refused_and_hung_up() {
    let (_hub, s) = sidecar("nohello", 1);
    let c = RawClient::connect(s.control_socket()).unwrap();
    let r = c.request(&Request::OpenChannel { engine: None });
    assert_eq!(err_code(&r), Some(ControlError::NoHello));
    assert!(c.hung_up(WAIT));

    let c = RawClient::connect(s.control_socket()).unwrap();
    let r = c.request(&Request::Hello {
        version: 99,
        client: "future".into(),
    });
    assert_eq!(err_code(&r), Some(ControlError::Version));
    assert!(c.hung_up(WAIT));
}

#[test]
fn listen_ports_form_groups_of_one_application() {
    // Both connections come from this process: one application (docs/CHANNEL.md §2, "Listen
    // groups"). Other applications are refused its ports: tests/listen_groups.rs.
    let (_hub, s) = sidecar("listen", 2);
    let c1 = RawClient::connect(s.control_socket()).unwrap();
    let c2 = RawClient::connect(s.control_socket()).unwrap();
    c1.hello();
    c2.hello();
    let a = c1.open_channel(Some(0));
    let b = c2.open_channel(Some(1));
    assert_eq!(c1.listen(a.id, 8080), Response::Ok);
    // Another channel of the same application (another engine, another connection): joins.
    assert_eq!(c2.listen(b.id, 8080), Response::Ok);
    // Same channel twice: refused.
    assert_eq!(
        err_code(&c1.listen(a.id, 8080)),
        Some(ControlError::PortInUse)
    );
    // Port 0 and the ephemeral range are refused.
    assert_eq!(
        err_code(&c2.listen(b.id, 0)),
        Some(ControlError::InvalidPort)
    );
    assert_eq!(
        err_code(&c2.listen(b.id, 50000)),
        Some(ControlError::InvalidPort)
    );
    // A channel of another connection cannot be used.
    assert_eq!(
        err_code(&c2.listen(a.id, 9090)),
        Some(ControlError::NoSuchChannel)
    );
    assert_eq!(
        err_code(&c2.request(&Request::Unlisten {
            channel: a.id,
            port: 8080
        })),
        Some(ControlError::NoSuchChannel)
    );
    // Each member leaves on its own; a channel that does not listen cannot unlisten.
    let unlisten = |c: &RawClient, channel, port| c.request(&Request::Unlisten { channel, port });
    assert_eq!(unlisten(&c2, b.id, 8080), Response::Ok);
    assert_eq!(
        err_code(&unlisten(&c2, b.id, 8080)),
        Some(ControlError::InvalidPort)
    );
    assert_eq!(unlisten(&c1, a.id, 8080), Response::Ok);
    assert_eq!(c2.listen(b.id, 8080), Response::Ok);
    // When a connection closes, its channels leave their groups; the others stay members.
    assert_eq!(c1.listen(a.id, 8080), Response::Ok);
    drop(c1);
    let deadline = Instant::now() + WAIT;
    while s.reports()[0].channels != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed connection's channel never closed"
        );
        std::thread::yield_now();
    }
    assert_eq!(unlisten(&c2, b.id, 8080), Response::Ok);
}

#[test]
fn malformed_messages_close_only_that_connection() {
    let (_hub, s) = sidecar("malformed", 1);
    let good = RawClient::connect(s.control_socket()).unwrap();
    good.hello();
    let mut ch = good.open_channel(None);
    let bad_inputs: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        b"{\"op\":\"listen\",\"channel\":1}".to_vec(),
        b"{\"op\":\"open_channel\",\"engine\":null,\"extra\":1}".to_vec(),
        b"\xff\xfe\x00".to_vec(),
        vec![b' '; MAX_CONTROL_MESSAGE + 100],
    ];
    for input in bad_inputs {
        let bad = RawClient::connect(s.control_socket()).unwrap();
        bad.hello();
        let mut bad_ch = bad.open_channel(None);
        bad.send_raw(&input).unwrap();
        let (r, _) = bad.recv(WAIT).expect("an error reply");
        assert_eq!(err_code(&r), Some(ControlError::Malformed));
        assert!(
            bad.hung_up(WAIT),
            "connection closed after a malformed message"
        );
        // Its channels are reclaimed with it.
        assert_eq!(bad_ch.wait_closed(WAIT), Some(CloseCode::Detached as u32));
    }
    // The sidecar and the well-behaved connection carry on.
    assert_eq!(good.listen(ch.id, 4242), Response::Ok);
    assert_eq!(ch.closed(), 0);
    assert!(matches!(good.hello(), Response::Hello { .. }));
    assert!(s.healthy());
}

#[test]
fn unauthorised_users_are_refused_at_accept() {
    // Allow only some other uid: this process (whatever its uid) is not allowed.
    let me = nix::unistd::Uid::current().as_raw();
    let other = if me == 12345 { 12346 } else { 12345 };
    let (_hub, s) = sidecar_with("unauth", 1, |c| {
        c.access = AccessPolicy {
            uids: vec![other],
            gids: vec![],
        }
    });
    let c = RawClient::connect(s.control_socket()).unwrap();
    let (r, fds) = c.recv(WAIT).expect("an unsolicited error");
    assert_eq!(err_code(&r), Some(ControlError::Unauthorized));
    assert!(fds.is_empty());
    assert!(c.hung_up(WAIT));
}

#[test]
fn the_socket_is_mode_0660_and_a_second_sidecar_on_it_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (hub, s) = sidecar("twice", 1);
    let mode = std::fs::metadata(s.control_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let cfg = test_config(Ipv4Addr::new(10, 9, 0, 2), 1, s.control_socket());
    let dps = hub
        .add_host(cfg.local_ip, 1, cfg.udp_ports, 9000)
        .unwrap()
        .into_iter()
        .map(|d| Box::new(d) as Box<dyn machnet_sidecar::datapath::Datapath>)
        .collect();
    match Sidecar::start_with_datapaths(cfg, dps) {
        Err(StartError::Control(e)) => assert!(e.to_string().contains("already"), "{e}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // A stale socket file (no sidecar behind it) is replaced.
    let path = s.control_socket().to_owned();
    drop(s);
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale); // file stays, nobody listens
    assert!(path.exists());
    let mut cfg = test_config(Ipv4Addr::new(10, 9, 0, 3), 1, &path);
    cfg.control_socket = path.clone();
    let hub2 = MemHub::new(2);
    let s2 = mem_sidecar(&hub2, cfg);
    let c = RawClient::connect(s2.control_socket()).unwrap();
    assert!(matches!(c.hello(), Response::Hello { .. }));
}

// Builds with the `dpdk` feature start the DPDK datapath instead.
#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_is_refused_with_a_clear_message() {
    let mut cfg = SidecarConfig::new();
    cfg.datapath = machnet_sidecar::config::DatapathKind::Dpdk;
    cfg.control_socket = temp_dir("dpdk").join("m.sock");
    let e = Sidecar::start(cfg).map(|_| ()).unwrap_err();
    assert!(matches!(e, StartError::NoDpdk));
    assert!(e.to_string().contains("no DPDK support"), "{e}");
}

#[test]
fn a_kernel_udp_sidecar_serves_the_control_protocol() {
    let pool = machnet_sidecar::testing::free_udp_pool(&[Ipv4Addr::LOCALHOST], 4);
    let mut cfg = test_config(Ipv4Addr::LOCALHOST, 2, &temp_dir("kernel").join("m.sock"));
    cfg.udp_ports = pool;
    let s = Sidecar::start(cfg).expect("kernel sidecar starts");
    let c = RawClient::connect(s.control_socket()).unwrap();
    assert!(matches!(c.hello(), Response::Hello { engines: 2, .. }));
    let _ch = c.open_channel(None);
    // The pool is taken: a second sidecar on the same address and ports is refused.
    let mut cfg2 = test_config(Ipv4Addr::LOCALHOST, 1, &temp_dir("kernel2").join("m.sock"));
    cfg2.udp_ports = pool;
    assert!(matches!(
        Sidecar::start(cfg2).map(|_| ()),
        Err(StartError::KernelUdp(_))
    ));
    let _ = Duration::ZERO;
}
