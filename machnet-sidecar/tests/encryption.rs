//! Encryption in transit between two real sidecars over loopback (docs/CHANNEL.md §7,
//! docs/PROTOCOL.md §12): encrypted flows deliver every message byte-identical, in order,
//! exactly once; a wrong key, a missing allow-list entry on either side and a plaintext peer
//! each make the connect fail (`PermissionDenied` at once without an entry for the server,
//! else `Refused` by the server), never a hang.
//! A relay between the sidecars shows that no piece of an encrypted message crosses the wire
//! readable (and that the same check reads a plaintext flow's), and, changing SYN-ACKs on the
//! path, that a server that does not prove its key fails the connect with `PermissionDenied`.
//! The sidecars run in this process (`LoopbackSidecars`); the last test runs the `machnet`
//! binary with the flags and the key subcommands.

mod common;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use machnet::{Channel, ClientError, CloseCode, ConnectError, ErrorKind, Event, Flow, Machnet};
use machnet_core::seal::{Encryption, PeerKey, StaticKey};
use machnet_core::DropReason;
use machnet_sidecar::testing::{pattern, LoopbackSidecars};

const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// An address in the allow-lists that no sidecar has.
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const PORT: u16 = 7100;
/// Generous wait for anything (slow CI machines); never a speed assertion.
const WAIT: Duration = Duration::from_secs(30);

/// Key pairs of the two hosts.
struct Keys {
    server: StaticKey,
    client: StaticKey,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            server: StaticKey::generate(),
            client: StaticKey::generate(),
        }
    }

    /// The server's configuration: its key and these peers.
    fn server_with(&self, peers: Vec<PeerKey>) -> Option<Arc<Encryption>> {
        Some(Arc::new(Encryption::new(self.server.clone(), peers)))
    }

    /// The client's configuration: its key and these peers.
    fn client_with(&self, peers: Vec<PeerKey>) -> Option<Arc<Encryption>> {
        Some(Arc::new(Encryption::new(self.client.clone(), peers)))
    }

    /// Both hosts list each other with the right keys.
    fn mutual(&self) -> (Option<Arc<Encryption>>, Option<Arc<Encryption>>) {
        (
            self.server_with(vec![peer(CLIENT, &self.client)]),
            self.client_with(vec![peer(SERVER, &self.server)]),
        )
    }
}

fn peer(ip: Ipv4Addr, key: &StaticKey) -> PeerKey {
    PeerKey {
        ip,
        public: key.public(),
    }
}

/// A server sidecar (index 0) and a client sidecar (index 1) with these encryption settings.
fn sidecars(
    tag: &str,
    engines: u16,
    server: Option<Arc<Encryption>>,
    client: Option<Arc<Encryption>>,
) -> LoopbackSidecars {
    LoopbackSidecars::start_with(tag, &[SERVER, CLIENT], engines, move |i, c| {
        c.encryption = if i == 0 {
            server.clone()
        } else {
            client.clone()
        };
    })
}

/// [`echo_server`] for the length of a test: stopped and joined when dropped.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(sidecars: &LoopbackSidecars) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = Some(echo_server(sidecars, stop.clone()));
        EchoServer { stop, thread }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let joined = t.join();
            if !std::thread::panicking() {
                joined.expect("echo server");
            }
        }
    }
}

/// An echo server on the server sidecar: every message comes back on its flow, a peer close is
/// answered with a close. Runs until `stop`.
fn echo_server(sidecars: &LoopbackSidecars, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let m = Machnet::attach_at(sidecars.socket(0)).expect("attach server");
    let mut ch = m.open_channel(None).expect("server channel");
    ch.listen(PORT).expect("listen");
    std::thread::spawn(move || {
        let _m = m;
        while !stop.load(Ordering::SeqCst) {
            match ch.next_event(Some(Duration::from_millis(50))) {
                Ok(Some(Event::Message { flow, data })) => {
                    ch.send(&flow, &data).expect("echo");
                }
                Ok(Some(Event::PeerClosed { flow })) => {
                    let _ = ch.close(&flow);
                }
                Ok(_) => {}
                // The test's own assertions tell what went wrong (a failed test drops the
                // sidecars before it stops this thread).
                Err(e) => {
                    eprintln!("echo server: {e}");
                    return;
                }
            }
        }
    })
}

fn client_channel(sidecars: &LoopbackSidecars) -> (Machnet, Channel) {
    let m = Machnet::attach_at(sidecars.socket(1)).expect("attach client");
    let ch = m.open_channel(None).expect("client channel");
    (m, ch)
}

/// Reads events until a message arrives; it must be the next one expected on its flow.
fn expect_message(ch: &mut Channel, flows: &[Flow], expected: &mut [VecDeque<Vec<u8>>]) {
    match ch.next_event(Some(WAIT)).expect("client channel") {
        Some(Event::Message { flow, data }) => {
            let i = flows
                .iter()
                .position(|f| *f == flow)
                .expect("a flow of ours");
            let want = expected[i]
                .pop_front()
                .unwrap_or_else(|| panic!("flow {i}: a message never sent ({} B)", data.len()));
            assert!(
                data == want,
                "flow {i}: message of {} B altered or out of order",
                want.len()
            );
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Sum of one drop counter over a sidecar's engines.
fn drops(sidecars: &LoopbackSidecars, i: usize, reason: DropReason) -> u64 {
    sidecars
        .reports(i)
        .iter()
        .map(|r| r.core.drops[reason as usize])
        .sum()
}

fn accepts(sidecars: &LoopbackSidecars, i: usize) -> u64 {
    sidecars
        .reports(i)
        .iter()
        .map(|r| r.core.accepts_completed)
        .sum()
}

fn syns_sent(sidecars: &LoopbackSidecars, i: usize) -> u64 {
    sidecars.reports(i).iter().map(|r| r.core.syns_sent).sum()
}

/// A connect to `ip` fails with `code`, which bindings report as `kind` (`what` names the case).
fn assert_connect_fails(
    ch: &mut Channel,
    ip: Ipv4Addr,
    code: CloseCode,
    kind: ErrorKind,
    what: &str,
) {
    let e = connect_error(ch, ip);
    assert!(
        matches!(e, ConnectError::Failed(Some(c)) if c == code),
        "{what}: {e:?}"
    );
    assert_eq!(e.kind(), kind, "{what}: {e}");
}

/// The connect's error, which must come within the wait (never a hang).
fn connect_error(ch: &mut Channel, ip: Ipv4Addr) -> ConnectError {
    match ch.connect_timeout(ip, PORT, WAIT) {
        Ok(flow) => panic!("connect to {ip} succeeded: {flow:?}"),
        Err(ConnectError::TimedOut(d)) => panic!("connect to {ip} hung for {d:?}"),
        Err(e) => e,
    }
}

#[test]
fn encrypted_flows_carry_1_byte_to_8_mib_both_ways_identical_in_order_exactly_once() {
    const FLOWS: usize = 3;
    let keys = Keys::new();
    let (server_enc, client_enc) = keys.mutual();
    let sidecars = sidecars("enc-echo", 2, server_enc, client_enc);
    let _echo = EchoServer::start(&sidecars);
    let (_m, mut ch) = client_channel(&sidecars);
    let flows: Vec<Flow> = (0..FLOWS)
        .map(|_| ch.connect_timeout(SERVER, PORT, WAIT).expect("connect"))
        .collect();
    let mut expected: Vec<VecDeque<Vec<u8>>> = vec![VecDeque::new(); FLOWS];

    // Each size on every flow, the flows interleaved (at most one message of each in flight).
    for (s, len) in [1usize, 1 << 10, 64 << 10, 1 << 20, 8 << 20]
        .into_iter()
        .enumerate()
    {
        for (i, flow) in flows.iter().enumerate() {
            let msg = pattern((s * FLOWS + i) as u64, len);
            ch.send(flow, &msg).expect("send");
            expected[i].push_back(msg);
        }
        for _ in 0..FLOWS {
            expect_message(&mut ch, &flows, &mut expected);
        }
    }
    // Then many small messages pipelined on every flow.
    let seed = machnet_sidecar::random_seed();
    eprintln!("pipelined sizes: seed {seed}");
    let sizes = pattern(seed, 3 * 200);
    for (k, chunk) in sizes.chunks(3).enumerate() {
        for (i, flow) in flows.iter().enumerate() {
            let len = 1 + usize::from(chunk[i]) * 37;
            let msg = pattern(seed ^ ((k * FLOWS + i) as u64) << 20, len);
            ch.send(flow, &msg).expect("send");
            expected[i].push_back(msg);
        }
    }
    while expected.iter().any(|q| !q.is_empty()) {
        expect_message(&mut ch, &flows, &mut expected);
    }

    // Exactly once: closing brings PeerClosed, then a graceful Closed, and no other message.
    for flow in &flows {
        ch.close(flow).expect("close");
    }
    let mut graceful = 0;
    while graceful < FLOWS {
        match ch.next_event(Some(WAIT)).expect("client channel") {
            Some(Event::PeerClosed { .. }) => {}
            Some(Event::Closed { reason, .. }) => {
                assert_eq!(reason, Some(CloseCode::Graceful));
                graceful += 1;
            }
            other => panic!("after the last echo: {other:?}"),
        }
    }
    for i in 0..2 {
        for reason in DropReason::ALL {
            if reason.name().contains("seal") || reason.name() == "peer_not_allowed" {
                assert_eq!(drops(&sidecars, i, *reason), 0, "sidecar {i}: {reason:?}");
            }
        }
    }
}

/// A client whose allow-list gives the server a wrong key encrypts its handshake to that key:
/// the server cannot read it and refuses, as it refuses a client it does not list (Noise IK:
/// nothing tells the two apart). The connect fails with `Refused`, the server counts a
/// `peer_not_allowed` drop, and nothing is ever delivered. (`PeerNotAllowed` after a handshake is
/// for a SYN-ACK that fails to authenticate: forged or changed on path; machnet-core's tests.)
#[test]
fn a_client_with_a_wrong_key_for_the_server_is_refused() {
    let keys = Keys::new();
    let wrong = StaticKey::generate();
    let server_enc = keys.server_with(vec![peer(CLIENT, &keys.client)]);
    let client_enc = keys.client_with(vec![peer(SERVER, &wrong)]);
    let sidecars = sidecars("enc-wrong", 1, server_enc, client_enc);
    let _echo = EchoServer::start(&sidecars);
    let (_m, mut ch) = client_channel(&sidecars);
    for _ in 0..3 {
        assert_connect_fails(
            &mut ch,
            SERVER,
            CloseCode::Refused,
            ErrorKind::ConnectionRefused,
            "",
        );
    }
    assert!(drops(&sidecars, 0, DropReason::PeerNotAllowed) >= 3);
    assert_eq!(accepts(&sidecars, 0), 0);
}

#[test]
fn a_server_that_does_not_list_the_client_refuses_it() {
    let keys = Keys::new();
    let stranger = StaticKey::generate();
    for (tag, server_peers) in [
        // The client's address is missing.
        ("enc-unlisted", vec![peer(OTHER, &keys.client)]),
        // The client's address is listed with another key.
        ("enc-otherkey", vec![peer(CLIENT, &stranger)]),
    ] {
        let server_enc = keys.server_with(server_peers);
        let client_enc = keys.client_with(vec![peer(SERVER, &keys.server)]);
        let sidecars = sidecars(tag, 1, server_enc, client_enc);
        let _echo = EchoServer::start(&sidecars);
        let (_m, mut ch) = client_channel(&sidecars);
        assert_connect_fails(
            &mut ch,
            SERVER,
            CloseCode::Refused,
            ErrorKind::ConnectionRefused,
            tag,
        );
        // Refused for the handshake, not for want of a listener.
        assert!(
            drops(&sidecars, 0, DropReason::PeerNotAllowed) >= 1,
            "{tag}"
        );
        assert_eq!(accepts(&sidecars, 0), 0, "{tag}");
    }
}

#[test]
fn a_connect_to_a_host_without_an_allow_list_entry_fails_before_any_packet() {
    let keys = Keys::new();
    let server_enc = keys.server_with(vec![peer(CLIENT, &keys.client)]);
    let client_enc = keys.client_with(vec![peer(OTHER, &keys.server)]);
    let sidecars = sidecars("enc-noentry", 1, server_enc, client_enc);
    let _echo = EchoServer::start(&sidecars);
    let (_m, mut ch) = client_channel(&sidecars);
    for _ in 0..3 {
        assert_connect_fails(
            &mut ch,
            SERVER,
            CloseCode::PeerNotAllowed,
            ErrorKind::PermissionDenied,
            "",
        );
    }
    // Refused locally: not one SYN left the client's sidecar.
    assert_eq!(syns_sent(&sidecars, 1), 0);
}

#[test]
fn encrypted_and_plaintext_sidecars_refuse_each_other_cleanly() {
    let keys = Keys::new();
    let (server_enc, client_enc) = keys.mutual();
    for (tag, server, client) in [
        ("enc-to-plain", None, client_enc),
        ("plain-to-enc", server_enc, None),
    ] {
        let sidecars = sidecars(tag, 1, server, client);
        let _echo = EchoServer::start(&sidecars);
        let (_m, mut ch) = client_channel(&sidecars);
        assert_connect_fails(
            &mut ch,
            SERVER,
            CloseCode::Refused,
            ErrorKind::ConnectionRefused,
            tag,
        );
        // The server refused the SYN for its (missing or unexpected) seal.
        assert!(drops(&sidecars, 0, DropReason::SealMismatch) >= 1, "{tag}");
        assert_eq!(accepts(&sidecars, 0), 0, "{tag}");
    }
}

/// The relay's address: the sidecars reach each other through it (their allow-lists name it).
const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 33);

/// A bump in the wire at [`RELAY`]: every datagram the client sidecar sends to the relay's port
/// `k` goes to the server's port `k`, from the relay's port equal to the client's source port,
/// and the other way round; so each sidecar sees the other at `RELAY` on its own ports. It
/// records every datagram, and can change the last byte of every SYN-ACK (an on-path attacker).
struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Relay {
    fn start(pool: machnet_core::PortPool, tamper_syn_acks: bool) -> Relay {
        use std::net::{SocketAddrV4, UdpSocket};
        let sockets: Arc<Vec<UdpSocket>> = Arc::new(
            (0..pool.count)
                .map(|i| {
                    let s = UdpSocket::bind((RELAY, pool.base + i)).expect("relay port");
                    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                    s
                })
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..usize::from(pool.count))
            .map(|i| {
                let (sockets, stop, seen) = (sockets.clone(), stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    let port = pool.base + i as u16;
                    let mut buf = vec![0u8; 65_536];
                    while !stop.load(Ordering::SeqCst) {
                        let Ok((n, std::net::SocketAddr::V4(from))) =
                            sockets[i].recv_from(&mut buf)
                        else {
                            continue;
                        };
                        let to = match *from.ip() {
                            CLIENT => SERVER,
                            SERVER => CLIENT,
                            _ => continue,
                        };
                        let Some(out) = from
                            .port()
                            .checked_sub(pool.base)
                            .and_then(|k| sockets.get(usize::from(k)))
                        else {
                            continue;
                        };
                        let packet = &mut buf[..n];
                        // Byte 3 is the packet type; 2 is SYN-ACK (PROTOCOL.md §2.1).
                        if tamper_syn_acks && to == CLIENT && n > 4 && packet[3] == 2 {
                            packet[n - 1] ^= 0x01;
                        }
                        seen.lock().unwrap().push(packet.to_vec());
                        let _ = out.send_to(packet, SocketAddrV4::new(to, port));
                    }
                })
            })
            .collect();
        Relay {
            stop,
            threads,
            seen,
        }
    }

    /// Whether any datagram carried any 16-byte piece of `msg` (taken every 256 bytes).
    fn carried_any_of(&self, msg: &[u8]) -> bool {
        let pieces: std::collections::HashSet<&[u8]> =
            msg.chunks_exact(256).map(|c| &c[..16]).collect();
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .any(|d| d.windows(16).any(|w| pieces.contains(w)))
    }

    fn bytes_carried(&self) -> usize {
        self.seen.lock().unwrap().iter().map(Vec::len).sum()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sidecars whose allow-lists name the relay for each other (or plaintext ones), the relay
/// between them, and an echo server; echoes `count` messages of 64 KiB through the relay and
/// returns the relay and the messages.
fn echo_through_relay(tag: &str, encrypt: bool, count: usize) -> (Relay, Vec<Vec<u8>>) {
    let keys = Keys::new();
    let (server_enc, client_enc) = if encrypt {
        (
            keys.server_with(vec![peer(RELAY, &keys.client)]),
            keys.client_with(vec![peer(RELAY, &keys.server)]),
        )
    } else {
        (None, None)
    };
    let sidecars = sidecars(tag, 1, server_enc, client_enc);
    let relay = Relay::start(sidecars.udp_ports(0).expect("server"), false);
    let _echo = EchoServer::start(&sidecars);
    let (_m, mut ch) = client_channel(&sidecars);
    let flow = ch.connect_timeout(RELAY, PORT, WAIT).expect("connect");
    let seed = machnet_sidecar::random_seed();
    eprintln!("{tag}: message seed {seed}");
    let msgs: Vec<Vec<u8>> = (0..count)
        .map(|i| pattern(seed.wrapping_add(i as u64), 64 << 10))
        .collect();
    for msg in &msgs {
        ch.send(&flow, msg).expect("send");
        let (from, got) = ch.recv_timeout(WAIT).expect("recv").expect("an echo");
        assert_eq!(from, flow);
        assert!(got == *msg, "{tag}: echo altered");
    }
    (relay, msgs)
}

#[test]
fn the_wire_carries_no_plaintext_of_encrypted_messages() {
    let (relay, msgs) = echo_through_relay("enc-wire", true, 8);
    let total: usize = msgs.iter().map(Vec::len).sum();
    assert!(
        relay.bytes_carried() > 2 * total,
        "the relay carried the flow both ways"
    );
    for (i, msg) in msgs.iter().enumerate() {
        assert!(
            !relay.carried_any_of(msg),
            "message {i} is readable on the wire"
        );
    }
    // The same check sees plaintext flows' messages: it can fail.
    let (relay, msgs) = echo_through_relay("plain-wire", false, 2);
    assert!(msgs.iter().all(|m| relay.carried_any_of(m)));
}

#[test]
fn a_syn_ack_changed_on_path_fails_the_connect_with_permission_denied() {
    let keys = Keys::new();
    let server_enc = keys.server_with(vec![peer(RELAY, &keys.client)]);
    let client_enc = keys.client_with(vec![peer(RELAY, &keys.server)]);
    let sidecars = sidecars("enc-tamper", 1, server_enc, client_enc);
    let _relay = Relay::start(sidecars.udp_ports(0).expect("server"), true);
    let _echo = EchoServer::start(&sidecars);
    let (_m, mut ch) = client_channel(&sidecars);
    assert_connect_fails(
        &mut ch,
        RELAY,
        CloseCode::PeerNotAllowed,
        ErrorKind::PermissionDenied,
        "",
    );
    assert!(drops(&sidecars, 1, DropReason::PeerNotAllowed) >= 1);
}

/// Runs the `machnet` binary with `args`; returns (exit code, stdout, stderr).
fn machnet(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(common::MACHNET_BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run machnet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn the_binary_makes_keys_and_runs_encrypted_sidecars_from_its_flags() {
    use std::os::unix::fs::PermissionsExt;
    let dir = common::temp_dir("enc-bin");
    let (sk, ck) = (dir.join("server.key"), dir.join("client.key"));
    let (rc, server_pub, err) = machnet(&["keygen", "--out", path_str(&sk)]);
    assert_eq!(rc, 0, "{err}");
    let (rc, client_pub, err) = machnet(&["keygen", "--out", path_str(&ck)]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (server_pub, client_pub) = (server_pub.trim(), client_pub.trim());
    assert_ne!(server_pub, client_pub);
    let (rc, again, _) = machnet(&["pubkey", path_str(&sk)]);
    assert_eq!((rc, again.trim()), (0, server_pub));
    let text = std::fs::read_to_string(&sk).unwrap();
    assert!(!text.contains(server_pub), "the file holds the private key");
    let (rc, _, err) = machnet(&["keygen", "--out", path_str(&sk)]);
    assert_eq!(rc, 1, "keygen must not overwrite");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&sk).unwrap(), text);

    // The client lists the server on the command line; the server reads a peer-keys file.
    let peers = dir.join("server.peers");
    std::fs::write(&peers, format!("# the client\n{CLIENT} {client_pub}\n")).unwrap();
    // Only its owner may write an allow-list (whatever the umask).
    std::fs::set_permissions(&peers, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server_peer = format!("{SERVER}={server_pub}");
    let pool = machnet_sidecar::testing::free_udp_pool(&[SERVER, CLIENT], 8);
    let server_args = [
        "--encryption-key",
        path_str(&sk),
        "--peer-keys",
        path_str(&peers),
    ];
    let client_args = [
        "--encryption-key",
        path_str(&ck),
        "--peer-key",
        &server_peer,
    ];
    let _server = common::Proc::start(SERVER, 1, pool, &dir, &server_args);
    let client = common::Proc::start(CLIENT, 1, pool, &dir, &client_args);
    let m = Machnet::attach_at(dir.join(format!("{SERVER}.sock"))).expect("attach server");
    let mut srv = m.open_channel(None).expect("server channel");
    srv.listen(PORT).expect("listen");
    let c = Machnet::attach_at(&client.sock).expect("attach client");
    let mut ch = c.open_channel(None).expect("client channel");
    let flow = ch.connect_timeout(SERVER, PORT, WAIT).expect("connect");
    let msg = pattern(17, 100_000);
    ch.send(&flow, &msg).expect("send");
    let (_, got) = srv.recv_timeout(WAIT).expect("recv").expect("a message");
    assert!(got == msg, "message altered");
    // No private key in the logs (the client's is read from its file).
    let private = std::fs::read_to_string(&ck).unwrap();
    assert!(!client.log_text().contains(private.trim()));

    // A key file others can read is refused, naming the flag.
    std::fs::set_permissions(&ck, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (rc, _, err) = machnet(&[
        "--control-socket",
        path_str(&dir.join("x.sock")),
        "--encryption-key",
        path_str(&ck),
        "--peer-key",
        &server_peer,
    ]);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("--encryption-key") && err.contains("too open"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
