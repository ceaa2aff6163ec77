//! The Rust runner of `conformance/cases.json` (see `conformance/README.md`): two sidecars in
//! this process on 127.0.0.1 (apps: an echo server and the KV server of `examples/kv`) and
//! 127.0.0.2 (the client), every case on a fresh channel of the client sidecar; then again
//! with the client on the apps' own sidecar, where every flow is a same-host flow.
//!
//! The cases of app `raft` need the Raft cluster of `examples/raft` (Go processes on real
//! sidecars), which this test cannot start. `raft_cases` runs them against such a cluster when
//! `MACHNET_CONFORMANCE_RAFT_PORT`, `MACHNET_CONFORMANCE_SERVER_IP` and
//! `MACHNET_CONFORMANCE_CLIENT_SOCKET` (the control socket of a sidecar that can reach the
//! cluster) are set, as `ci/raft.sh` does (which also checks that they ran); otherwise it prints
//! `SKIPPED <n> raft cases` to the terminal. `every_conformance_case` never runs them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use machnet::{Channel, CloseCode, ConnectError, Event, Flow, Machnet, SendError};
use machnet_sidecar::testing::LoopbackSidecars;
use serde_json::Value;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ECHO_PORT: u16 = 888;
const KV_PORT: u16 = 900;
const T: Duration = Duration::from_secs(20);

/// The payload pattern every runner uses (README: byte `i` of a message of `n` bytes).
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + n) % 256) as u8).collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex in cases.json"))
        .collect()
}

struct World {
    stop: Arc<AtomicBool>,
    apps: Vec<JoinHandle<()>>,
    // Dropped after the apps stopped (see Drop).
    sidecars: LoopbackSidecars,
}

impl World {
    fn start() -> World {
        let sidecars = LoopbackSidecars::start("conformance", &[SERVER_IP, CLIENT_IP], 2);
        let stop = Arc::new(AtomicBool::new(false));
        let server_sock = sidecars.socket(0);
        let apps = vec![
            app(&server_sock, ECHO_PORT, &stop, |ch, stop| {
                let mut buf = vec![0u8; ch.max_message_len() as usize];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some((flow, n))) =
                        ch.recv_into_timeout(&mut buf, Duration::from_millis(100))
                    {
                        let _ = ch.send(&flow, &buf[..n]);
                    }
                }
            }),
            app(&server_sock, KV_PORT, &stop, |ch, stop| {
                let store = machnet_kv::store::Store::in_memory().unwrap();
                let _ = machnet_kv::server::serve_machnet(ch, &store, stop);
            }),
        ];
        World {
            stop,
            apps,
            sidecars,
        }
    }

    /// Where the cases find the in-process apps.
    fn target(&self) -> Target {
        Target {
            client_socket: self.sidecars.socket(1),
            server_socket: Some(self.sidecars.socket(0)),
            server_ip: SERVER_IP,
            echo_port: Some(ECHO_PORT),
            kv_port: Some(KV_PORT),
            raft_port: None,
        }
    }
}

/// The sidecars and app ports one run of the cases uses (`None`: that app is not there).
struct Target {
    client_socket: PathBuf,
    /// The apps' sidecar (for `peer_goes_away` and `peer_closes_after_sending`).
    server_socket: Option<PathBuf>,
    server_ip: Ipv4Addr,
    echo_port: Option<u16>,
    kv_port: Option<u16>,
    raft_port: Option<u16>,
}

impl Target {
    /// An external Raft cluster described by the environment (see the file's header), or None
    /// if `MACHNET_CONFORMANCE_RAFT_PORT` is unset. Panics if it is set but the rest is missing
    /// or malformed.
    fn raft_from_env() -> Option<Target> {
        let port = std::env::var("MACHNET_CONFORMANCE_RAFT_PORT").ok()?;
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("MACHNET_CONFORMANCE_RAFT_PORT is set, {name} is not"))
        };
        Some(Target {
            client_socket: PathBuf::from(var("MACHNET_CONFORMANCE_CLIENT_SOCKET")),
            server_socket: None,
            server_ip: var("MACHNET_CONFORMANCE_SERVER_IP")
                .parse()
                .expect("MACHNET_CONFORMANCE_SERVER_IP: an IPv4 address"),
            echo_port: None,
            kv_port: None,
            raft_port: Some(port.parse().expect("MACHNET_CONFORMANCE_RAFT_PORT: a port")),
        })
    }

    fn client(&self) -> (Machnet, Channel) {
        let m = Machnet::attach_at(&self.client_socket).unwrap();
        let ch = m.open_channel(None).unwrap();
        (m, ch)
    }

    /// The port of the case's app (`kv` and `raft` speak the same request format).
    fn app_port(&self, case: &Value) -> u16 {
        let app = case["app"].as_str();
        let port = match app {
            Some("echo") => self.echo_port,
            Some("kv") => self.kv_port,
            Some("raft") => self.raft_port,
            other => panic!(
                "{}: unknown app {other:?} (update this runner)",
                case["name"]
            ),
        };
        port.unwrap_or_else(|| panic!("{}: app {app:?} is not running here", case["name"]))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for a in self.apps.drain(..) {
            let _ = a.join();
        }
    }
}

/// Starts an app thread listening on `port` of the server sidecar; returns once it listens.
fn app(
    sock: &Path,
    port: u16,
    stop: &Arc<AtomicBool>,
    serve: impl FnOnce(&mut Channel, &AtomicBool) + Send + 'static,
) -> JoinHandle<()> {
    let (ready, wait) = std::sync::mpsc::channel();
    let sock = sock.to_owned();
    let stop = stop.clone();
    let h = std::thread::spawn(move || {
        let m = Machnet::attach_at(&sock).unwrap();
        let mut ch = m.open_channel(None).unwrap();
        ch.listen(port).unwrap();
        ready.send(()).unwrap();
        serve(&mut ch, &stop);
    });
    wait.recv_timeout(T).expect("app listens");
    h
}

fn recv(ch: &mut Channel) -> (Flow, Vec<u8>) {
    ch.recv_timeout(T)
        .expect("recv")
        .expect("a message in time")
}

/// A channel of the server sidecar listening on `port`, and a flow of `ch` to it that has
/// carried one message (`hello`, not received yet).
fn peer(w: &Target, ch: &mut Channel, port: u16) -> (Channel, Flow) {
    let m = Machnet::attach_at(w.server_socket.as_ref().expect("the server sidecar")).unwrap();
    let mut server = m.open_channel(None).unwrap();
    server.listen(port).unwrap();
    let flow = ch.connect(w.server_ip, port).unwrap();
    ch.send(&flow, b"hello").unwrap();
    (server, flow)
}

fn field(case: &Value, name: &str) -> u64 {
    case[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: field {name}", case["name"]))
}

/// Runs one case; panics (naming it) on any mismatch.
fn run(w: &Target, case: &Value) {
    let name = case["name"].as_str().unwrap();
    let (_m, mut ch) = w.client();
    let server_ip = w.server_ip;
    let echo = |ch: &mut Channel| {
        ch.connect(server_ip, w.app_port(case))
            .expect("connect to echo")
    };
    match case["do"].as_str().unwrap() {
        "echo" => {
            let flow = echo(&mut ch);
            for size in case["sizes"].as_array().unwrap() {
                let msg = payload(size.as_u64().unwrap() as usize);
                ch.send(&flow, &msg).unwrap();
                let (f, got) = recv(&mut ch);
                assert_eq!(f, flow, "{name}: echo on the same flow");
                assert!(got == msg, "{name}: echo of {} bytes differs", msg.len());
            }
        }
        "echo_pipelined" => {
            let (size, count) = (field(case, "size") as usize, field(case, "count") as u32);
            let flow = echo(&mut ch);
            let msg = |k: u32| {
                let mut m = payload(size);
                m[..4].copy_from_slice(&k.to_le_bytes());
                m
            };
            for k in 0..count {
                ch.send(&flow, &msg(k)).unwrap();
            }
            for k in 0..count {
                assert!(recv(&mut ch).1 == msg(k), "{name}: message {k} in order");
            }
        }
        "echo_flows" => {
            let (flows, size, count) = (
                field(case, "flows"),
                field(case, "size") as usize,
                field(case, "count"),
            );
            let fl: Vec<Flow> = (0..flows).map(|_| echo(&mut ch)).collect();
            let msg = payload(size);
            for _ in 0..count {
                for f in &fl {
                    ch.send(f, &msg).unwrap();
                }
                let mut got: Vec<Flow> = (0..flows)
                    .map(|_| {
                        let (f, m) = recv(&mut ch);
                        assert!(m == msg, "{name}: echo differs");
                        f
                    })
                    .collect();
                got.sort_by_key(Flow::handle);
                let mut want = fl.clone();
                want.sort_by_key(Flow::handle);
                assert_eq!(got, want, "{name}: one echo per flow");
            }
        }
        "recv_timeout" => {
            let t = Duration::from_millis(field(case, "timeout_ms"));
            let start = Instant::now();
            assert!(ch.recv_timeout(t).unwrap().is_none(), "{name}: nothing");
            assert!(start.elapsed() >= t, "{name}: returned early");
        }
        "connect_error" => {
            let port = field(case, "port") as u16;
            match (ch.connect(server_ip, port), case["error"].as_str().unwrap()) {
                (Err(ConnectError::Failed(Some(CloseCode::Refused))), "refused") => {}
                (other, want) => panic!("{name}: connect gave {other:?}, want {want}"),
            }
        }
        "send_error" => {
            let flow = echo(&mut ch);
            let msg = vec![1u8; field(case, "size") as usize];
            match (ch.send(&flow, &msg), case["error"].as_str().unwrap()) {
                (Err(SendError::Empty), "invalid_argument") => {}
                (Err(SendError::TooLarge { .. }), "too_large") => {}
                (other, want) => panic!("{name}: send gave {other:?}, want {want}"),
            }
            ch.send(&flow, b"x").unwrap();
            assert_eq!(recv(&mut ch).1, b"x", "{name}: the flow still works");
        }
        "peer_goes_away" => {
            let port = field(case, "port") as u16;
            let (mut server, flow) = peer(w, &mut ch, port);
            assert_eq!(recv(&mut server).1, b"hello");
            server.abort_channel().unwrap();
            let deadline = Instant::now() + T;
            loop {
                match ch.next_event(Some(Duration::from_millis(50))).unwrap() {
                    Some(ev @ Event::Closed { .. }) => {
                        assert_eq!(event_name(&ev), case["event"].as_str().unwrap(), "{name}");
                        break;
                    }
                    Some(other) => panic!("{name}: unexpected {other:?}"),
                    None => assert!(Instant::now() < deadline, "{name}: no reset"),
                }
            }
            assert!(
                matches!(ch.send(&flow, b"more"), Err(SendError::FlowClosed(_))),
                "{name}: send after the reset"
            );
        }
        "peer_closes_after_sending" => {
            let port = field(case, "port") as u16;
            let sizes: Vec<usize> = case["sizes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_u64().unwrap() as usize)
                .collect();
            let (mut server, flow) = peer(w, &mut ch, port);
            let (sflow, hello) = recv(&mut server);
            assert_eq!(hello, b"hello");
            for &n in &sizes {
                server.send(&sflow, &payload(n)).unwrap();
            }
            server.close_channel().unwrap();
            let mut next = || ch.next_event(Some(T)).unwrap();
            for &n in &sizes {
                match next() {
                    Some(Event::Message { flow: f, data }) => {
                        assert_eq!(f, flow, "{name}: on the flow");
                        assert!(data == payload(n), "{name}: message of {n} bytes differs");
                    }
                    other => panic!("{name}: {other:?} instead of the message of {n} bytes"),
                }
            }
            match next() {
                Some(ev @ Event::PeerClosed { .. }) if *ev.flow() == flow => {
                    assert_eq!(event_name(&ev), case["event"].as_str().unwrap(), "{name}");
                }
                other => panic!("{name}: {other:?} instead of PeerClosed"),
            }
            ch.close(&flow).unwrap();
            match ch.next_event(Some(T)).unwrap() {
                Some(Event::Closed { flow: f, reason }) if f == flow => {
                    assert_eq!(reason, Some(CloseCode::Graceful), "{name}")
                }
                other => panic!("{name}: {other:?} instead of Closed"),
            }
            match (ch.send(&flow, b"more"), case["error"].as_str().unwrap()) {
                (Err(SendError::FlowClosed(Some(CloseCode::Graceful))), "closed") => {}
                (other, want) => panic!("{name}: send after the end gave {other:?}, want {want}"),
            }
        }
        "kv" => {
            let flow = ch
                .connect(server_ip, w.app_port(case))
                .expect("connect to kv");
            for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
                ch.send(&flow, &hex(step["request"].as_str().unwrap()))
                    .unwrap();
                let (_, resp) = recv(&mut ch);
                let status = match step["status"].as_str().unwrap() {
                    "ok" => 0,
                    "not_found" => 1,
                    "bad_request" => 2,
                    _ => 3,
                };
                assert!(resp.len() >= 5, "{name} step {i}: short response");
                assert_eq!(resp[0], status, "{name} step {i}: status");
                let id = u32::from_le_bytes(resp[1..5].try_into().unwrap());
                assert_eq!(u64::from(id), field(step, "id"), "{name} step {i}: id");
                let body = &resp[5..];
                if let Some(b) = step["body"].as_str() {
                    assert_eq!(body, hex(b), "{name} step {i}: body");
                }
                if let Some(s) = step["body_contains"].as_str() {
                    let text = String::from_utf8_lossy(body);
                    assert!(text.contains(s), "{name} step {i}: {text:?} lacks {s:?}");
                }
            }
        }
        "kv_pipelined" => {
            let count = field(case, "count") as u32;
            let prefix = case["key_prefix"].as_str().unwrap();
            let flow = ch
                .connect(server_ip, w.app_port(case))
                .expect("connect to kv");
            let req = |op: u8, id: u32, value: &[u8]| {
                let key = format!("{prefix}{id}");
                let mut r = vec![op];
                r.extend_from_slice(&id.to_le_bytes());
                r.extend_from_slice(&(key.len() as u16).to_le_bytes());
                r.extend_from_slice(key.as_bytes());
                r.extend_from_slice(value);
                r
            };
            for (op, with_value) in [(2u8, true), (1u8, false)] {
                for id in 0..count {
                    let v = if with_value {
                        id.to_le_bytes().to_vec()
                    } else {
                        vec![]
                    };
                    ch.send(&flow, &req(op, id, &v)).unwrap();
                }
                for id in 0..count {
                    let (_, resp) = recv(&mut ch);
                    assert_eq!(resp[0], 0, "{name}: op {op} id {id} status");
                    assert_eq!(resp[1..5], id.to_le_bytes(), "{name}: in order");
                    if op == 1 {
                        assert_eq!(resp[5..], id.to_le_bytes(), "{name}: value of {id}");
                    }
                }
            }
        }
        other => panic!("{name}: unknown `do` {other:?} (update this runner)"),
    }
}

/// The cases of `cases.json` (or `$MACHNET_CONFORMANCE_CASES`).
fn cases() -> Vec<Value> {
    let path = std::env::var_os("MACHNET_CONFORMANCE_CASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../cases.json"));
    let cases: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("cases.json")).expect("valid JSON");
    assert_eq!(cases["version"], 1);
    let list = cases["cases"].as_array().unwrap().clone();
    assert!(list.len() >= 10);
    list
}

fn is_raft(case: &Value) -> bool {
    case["app"].as_str() == Some("raft")
}

/// Every case except the Raft app's, against the in-process sidecars and apps.
#[test]
fn every_conformance_case() {
    let w = World::start();
    for case in cases().iter().filter(|c| !is_raft(c)) {
        eprintln!("conformance: {}", case["name"]);
        run(&w.target(), case);
    }
}

/// Every case except the Raft app's with the client attached to the apps' own sidecar, so that
/// every flow is a same-host flow (docs/CHANNEL.md "Same-host flows"): same results, and the
/// sidecar's datapath sends no packet.
#[test]
fn every_conformance_case_over_same_host_flows() {
    let w = World::start();
    let mut target = w.target();
    target.client_socket = w.sidecars.socket(0);
    let list: Vec<Value> = cases().into_iter().filter(|c| !is_raft(c)).collect();
    for case in &list {
        eprintln!("conformance (same host): {}", case["name"]);
        run(&target, case);
    }
    let reports = w.sidecars.reports(0);
    let connects: u64 = reports.iter().map(|r| r.local.connects).sum();
    let tx: u64 = reports.iter().map(|r| r.datapath.tx_packets).sum();
    assert!(
        connects >= list.len() as u64,
        "{connects} local connects for {} cases",
        list.len()
    );
    assert_eq!(tx, 0, "the same-host cases sent packets");
}

/// The Raft app's cases, against the external cluster the environment names (or skipped,
/// saying so).
#[test]
fn raft_cases() {
    let list: Vec<Value> = cases().into_iter().filter(is_raft).collect();
    let Some(target) = Target::raft_from_env() else {
        // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip must
        // be seen.
        let _ = writeln!(
            std::io::stderr(),
            "conformance: SKIPPED {} raft cases (no cluster: set MACHNET_CONFORMANCE_RAFT_PORT, \
             MACHNET_CONFORMANCE_SERVER_IP and MACHNET_CONFORMANCE_CLIENT_SOCKET; ci/raft.sh does)",
            list.len()
        );
        return;
    };
    assert!(!list.is_empty(), "no raft cases in cases.json");
    for case in &list {
        eprintln!("conformance: {}", case["name"]);
        run(&target, case);
    }
    eprintln!("conformance: ran {} raft cases", list.len());
}

/// The conformance name of a flow event (the `event` field of cases.json).
fn event_name(ev: &Event) -> &'static str {
    match ev {
        Event::PeerClosed { .. } => "peer_closed",
        Event::Closed { reason, .. } => match reason {
            Some(CloseCode::Reset) => "reset",
            Some(CloseCode::TimedOut) => "timed_out",
            Some(CloseCode::Refused) => "refused",
            _ => "closed",
        },
        _ => "other",
    }
}
